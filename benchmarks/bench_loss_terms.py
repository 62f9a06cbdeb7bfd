#!/usr/bin/env python
"""Training-step time of loss variants of the default preset, interleaved in one process (ratios to the shipped loss).

    python benchmarks/bench_loss_terms.py [--rounds 8] [--batch 4] [--size 256] [--cldice-weights 0.5]
        [--name bench-loss-terms]

Each variant compiles the default preset's model as training does (XLA where "auto" picks it) with
``masked_loss`` (cross-entropy + 0.5 Dice) and optionally the clDice term on class 0; the variants then take
turns, one ``train_on_batch`` of synthetic data each per round, so load drift hits all alike. Reports median step
times and the median per-round ratio to the shipped loss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cldice-weights", default="0.5", help="comma-separated clDice weights to time against none")
    parser.add_argument("--name", default="bench-loss-terms")
    args = parser.parse_args(argv)

    from napari_unet import hardware
    from napari_unet.config import preset
    from napari_unet.model import build_unet, import_keras, masked_loss

    keras = import_keras()
    chosen = preset("default")
    jit = hardware.resolve_jit_compile(chosen.train.jit_compile, hardware.resolve_mixed_precision(chosen.train.mixed_precision))
    variants = {"shipped": 0.0, **{f"cldice {w}": float(w) for w in args.cldice_weights.split(",")}}
    models = {}
    for name, weight in variants.items():
        model = build_unet(chosen.model)
        loss = masked_loss(chosen.model, chosen.train.dice_weight, cldice_weight=weight, cldice_class=0,
                           cldice_iterations=chosen.train.cldice_iterations)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=jit)
        models[name] = model
    x, y = C.random_training_batch(np.random.default_rng(0), args.batch, args.size, chosen.model.network_channels)
    for model in models.values():  # compile and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - started)
    shipped = np.array(times["shipped"])
    report = {name: {"median_step_s": round(float(np.median(t)), 4),
                     "ratio_to_shipped": round(float(np.median(np.array(t) / shipped)), 3)} for name, t in times.items()}
    for name, row in report.items():
        print(f"{name:12s} {row['median_step_s']:.3f} s/step  x{row['ratio_to_shipped']:.3f}")
    C.write_report(C.RESULTS_DIR / f"{args.name}.json",
                   {"batch": args.batch, "size": args.size, "rounds": args.rounds, "jit_compile": jit, "variants": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
