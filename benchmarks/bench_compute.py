#!/usr/bin/env python
"""Which compute settings pay on this CPU: the evidence behind ``mixed_precision`` / ``jit_compile = "auto"``.

The default preset's network (or ``--preset classic``) under four settings -- float32 or bfloat16 mixed
precision, each with and without XLA -- interleaved round by round in ONE process, so load drift hits all
alike. Training: ``train_on_batch`` of the napari-unet loss on a batch of patches (default 4 x 256²).
Inference: the batch-norm-folded network ``predict`` runs (:func:`napari_unet.model.fold_batch_norm`) on
one 512² tile. Reports median seconds and the ratio to float32 + XLA (the default before session 11) and
names what ``"auto"`` picks here (:mod:`napari_unet.hardware`).

    python benchmarks/bench_compute.py                      # default preset, ~2 min -> results/compute-default-<cpu kind>.json
    python benchmarks/bench_compute.py --preset classic --batch 2 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SETTINGS = {"fp32": (False, False), "fp32_xla": (False, True), "bf16": (True, False), "bf16_xla": (True, True)}
REFERENCE = "fp32_xla"


def cpu_kind(flags) -> str:
    """Short name of the CPU's widest matrix instructions: "amx", "avx512bf16", "avx512", "avx2" or "cpu"."""
    for flag, kind in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "cpu"


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch", type=int, default=4, help="training patches per step")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--tile", type=int, default=512, help="inference tile size")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, help="JSON output (default results/compute-<preset>-<cpu kind>.json)")
    args = ap.parse_args()

    C.use_src()
    import numpy as np
    import tensorflow as tf

    from napari_unet import hardware
    from napari_unet.config import preset
    from napari_unet.model import build_unet, fold_batch_norm, import_keras
    from napari_unet.train import masked_loss

    keras = import_keras()
    config = preset(args.preset).model
    rng = np.random.default_rng(0)
    x, y = C.random_training_batch(rng, args.batch, args.patch, config.network_channels)
    tile = rng.random((1, args.tile, args.tile, config.network_channels), dtype=np.float32)

    keras.utils.set_random_seed(0)
    reference = build_unet(config)
    trainers, forwards = {}, {}
    for name, (mixed, jit) in SETTINGS.items():
        model = build_unet(config, mixed_precision=mixed)
        model.set_weights(reference.get_weights())
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=masked_loss(config, 0.5), jit_compile=jit)
        for _ in range(3):  # trace / compile and warm up
            model.train_on_batch(x, y)
        trainers[name] = model
        folded = fold_batch_norm(reference, config, mixed)
        forward = tf.function(lambda batch, net=folded: net(batch, training=False), jit_compile=True) if jit else folded.predict_on_batch
        for _ in range(2):
            np.asarray(forward(tile))
        forwards[name] = forward

    train_s = {name: [] for name in SETTINGS}
    infer_s = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name in SETTINGS:
            start = time.perf_counter()
            trainers[name].train_on_batch(x, y)
            train_s[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            np.asarray(forwards[name](tile))
            infer_s[name].append(time.perf_counter() - start)

    mixed_auto = hardware.resolve_mixed_precision(hardware.AUTO)
    auto = {(False, False): "fp32", (False, True): "fp32_xla", (True, False): "bf16", (True, True): "bf16_xla"}[
        (mixed_auto, hardware.resolve_jit_compile(hardware.AUTO, mixed_auto))
    ]
    rows = {}
    print(f"{args.preset} preset, training {args.batch} x {args.patch}², inference 1 x {args.tile}², {args.rounds} rounds; "
          f"auto here = {auto} ({hardware.describe()})")
    print(f"{'setting':10s} {'train s/step':>12s} {'x fp32_xla':>10s} {'infer s/tile':>12s} {'x fp32_xla':>10s}")
    for name in SETTINGS:
        train_median, infer_median = C.median(train_s[name]), C.median(infer_s[name])
        rows[name] = {
            "train_s_per_step": train_median,
            "train_speedup_vs_fp32_xla": C.median(train_s[REFERENCE]) / train_median,
            "infer_s_per_tile": infer_median,
            "infer_speedup_vs_fp32_xla": C.median(infer_s[REFERENCE]) / infer_median,
            "train_times": train_s[name],
            "infer_times": infer_s[name],
        }
        row = rows[name]
        print(f"{name:10s} {train_median:12.3f} {row['train_speedup_vs_fp32_xla']:10.2f} {infer_median:12.3f} {row['infer_speedup_vs_fp32_xla']:10.2f}")
    fields = {
        "preset": args.preset,
        "batch": args.batch,
        "patch": args.patch,
        "tile": args.tile,
        "auto_picks": auto,
        "settings": rows,
    }
    # one file per CPU kind: a run on another machine must not overwrite the evidence for this one
    out = args.out or C.RESULTS_DIR / f"compute-{args.preset}-{cpu_kind(hardware.cpu_flags())}.json"
    C.write_report(out, fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
