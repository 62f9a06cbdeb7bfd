#!/usr/bin/env python
"""Training throughput of a preset at several batch sizes, interleaved round by round in one process.

Converts a time budget into equal-time step budgets for ``isbi_accuracy.py --steps`` (a batch-size A/B that a
machine whose speed drifts cannot bias): steps at batch B = steps at the reference batch x (s per reference step /
s per step at B). The network trains as the core trains it (XLA where ``"auto"`` picks it, the napari-unet loss,
``train_on_batch`` on random patches and labels; the input pipeline is not included).

    python benchmarks/bench_batch.py                            # default preset, batches 2, 4, 8 at 256², ~2 min
    python benchmarks/bench_batch.py --batches 1,2,4 --reference-steps 550
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batches", default="2,4,8", help="comma-separated batch sizes")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reference", type=int, default=4, help="batch size the step budgets are converted from")
    ap.add_argument("--reference-steps", type=int, default=550, help="steps the reference batch makes in the budget")
    ap.add_argument("--out", type=Path, help="JSON output (default results/batch-<preset>.json)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.reference not in batches:
        ap.error(f"--reference {args.reference} must be one of --batches {batches}")

    C.use_src()
    import numpy as np

    from napari_unet import hardware
    from napari_unet.config import preset
    from napari_unet.model import build_unet, import_keras
    from napari_unet.train import masked_loss

    keras = import_keras()
    config = preset(args.preset).model
    jit = hardware.resolve_jit_compile(hardware.AUTO, hardware.resolve_mixed_precision(hardware.AUTO))
    rng = np.random.default_rng(0)
    models, data = {}, {}
    for batch in batches:
        keras.utils.set_random_seed(0)
        model = build_unet(config)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_loss(config, 0.5), jit_compile=jit)
        x, y = C.random_training_batch(rng, batch, args.patch, config.network_channels)
        for _ in range(3):  # trace / compile, warm up
            model.train_on_batch(x, y)
        models[batch], data[batch] = model, (x, y)

    times = {batch: [] for batch in batches}
    largest = max(batches)
    for _ in range(args.rounds):
        for batch in batches:
            repeats = max(1, largest // batch)  # about the same wall time per batch size and round
            start = time.perf_counter()
            for _ in range(repeats):
                models[batch].train_on_batch(*data[batch])
            times[batch].append((time.perf_counter() - start) / repeats)

    reference_s = C.median(times[args.reference])
    print(f"{args.preset} preset, {args.patch}² patches, XLA {'on' if jit else 'off'}, {args.rounds} rounds; "
          f"equal-time steps for {args.reference_steps} steps at batch {args.reference}")
    print(f"{'batch':>5s} {'s/step':>8s} {'img/s':>7s} {'equal-time steps':>16s}")
    rows = {}
    for batch in batches:
        seconds = C.median(times[batch])
        rows[batch] = {"s_per_step": seconds, "images_per_s": batch / seconds,
                       "equal_time_steps": round(args.reference_steps * reference_s / seconds), "times": times[batch]}
        print(f"{batch:5d} {seconds:8.3f} {batch / seconds:7.2f} {rows[batch]['equal_time_steps']:16d}")
    fields = {"preset": args.preset, "patch": args.patch, "xla": jit, "reference": args.reference,
              "reference_steps": args.reference_steps, "batches": rows}
    C.write_report(args.out or C.RESULTS_DIR / f"batch-{args.preset}.json", fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
