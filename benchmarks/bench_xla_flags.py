#!/usr/bin/env python
"""XLA's CPU code generation options: the training step and the compiled prediction under each ``XLA_FLAGS``.

XLA compiles the default training run on CPUs without AVX-512 (``napari_unet.hardware``). By default XLA:CPU
runs convolutions through its own (Eigen) kernels; these flags route them, or whole fusions, to oneDNN or XNNPACK,
the libraries TensorFlow's own kernels use. Each variant is a fresh process (the flags are read once per process),
variants alternate round by round (this machine's speed drifts over minutes):

- ``train``: ``train_events`` of the default preset, ``jit_compile=True``, batch 4 x 256², ``--steps`` steps on a
  synthetic EM stack (seed 1); seconds to the first step (data, tracing, XLA compile), median step after the first
  two, and the loss after the last step (same seed, so variants that compute the same get the same loss);
- ``predict``: a network trained 3 steps by the first run and saved (every variant predicts with the same weights),
  its XLA-compiled prediction of 6 synthetic 512² slices; median seconds per slice after the first, and the largest
  probability difference from the ``default`` variant of the same round (float32 rounding differs between kernels).

    python benchmarks/bench_xla_flags.py                       # all variants, 2 rounds, ~12 min
    python benchmarks/bench_xla_flags.py --variants default,onednn --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VARIANTS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusions": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "xnn_graph": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}


def worker(spec: dict) -> None:
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    from napari_unet.config import preset
    from napari_unet.model_io import load_model, save_model
    from napari_unet.predict import PredictionProgress, predict_events
    from napari_unet.synthetic import make_em_stack
    from napari_unet.train import TrainingFinished, TrainingStep, train, train_events

    default = preset("default")
    result = {}
    if "train" in spec["tasks"]:
        image, labels = make_em_stack(4, (256, 256), seed=1)
        config = default.train.replace(epochs=1, steps_per_epoch=spec["steps"], val_fraction=0.0, jit_compile=True, seed=1)
        last = time.perf_counter()
        steps, loss = [], None
        for event in train_events(image, labels, default.model, config):
            if isinstance(event, TrainingStep):
                now = time.perf_counter()
                steps.append(now - last)
                last, loss = now, event.loss
            elif isinstance(event, TrainingFinished):
                assert event.model.train_config.jit_compile is True
        result.update(to_first_step_s=steps[0], median_step_s=statistics.median(steps[2:]), last_loss=loss)
    if "predict" in spec["tasks"]:
        image, labels = make_em_stack(6, (512, 512), seed=2)
        model_file = Path(spec["model"])
        if not model_file.exists():  # the first run trains it; every variant then predicts with the same weights
            save_model(train(image[:2], labels[:2], default.model, default.train.replace(
                epochs=1, steps_per_epoch=3, val_fraction=0.0, jit_compile=False, seed=0)).model, model_file)
        model = load_model(model_file)
        times, last = [], time.perf_counter()
        for event in predict_events(model, image, jit_compile=True, close_boundaries=False, tta=False, batch_size=1):
            if isinstance(event, PredictionProgress):
                now = time.perf_counter()
                times.append(now - last)
                last = now
            else:
                probabilities = event.probabilities
        np.save(spec["probabilities"], probabilities.astype(np.float32))
        result.update(predict_first_s=times[0], predict_per_slice_s=statistics.median(times[1:]))
    C.emit(result)


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--tasks", default="train,predict")
    ap.add_argument("--rounds", type=C.at_least(1), default=2)
    ap.add_argument("--steps", type=C.at_least(3, "the median step leaves out the first two"), default=14,
                    help="training steps per run (at least 3)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "xla-flags.json")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(json.loads(args._worker))
        return 0
    names = args.variants.split(",")
    if "default" not in names:
        names.insert(0, "default")
    raw: dict = {name: [] for name in names}
    scratch = Path(tempfile.mkdtemp(prefix="bench-xla-flags-"))
    for round_ in range(args.rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            spec = {"tasks": args.tasks.split(","), "steps": args.steps, "probabilities": str(scratch / f"{name}.npy"),
                    "model": str(scratch / "model.keras")}
            payloads, status, seconds = C.run_child(Path(__file__), spec, {"XLA_FLAGS": VARIANTS[name]}, timeout=1800)
            if status != "ok" or not payloads:
                print(f"round {round_ + 1} {name}: {status}", flush=True)
                raw[name].append({"status": status})
                continue
            raw[name].append({**payloads[-1], "wall_s": seconds})
        reference = scratch / "default.npy"
        for name in names:
            row = raw[name][-1]
            if "predict" in args.tasks and "status" not in row and reference.exists():
                row["max_probability_difference"] = float(np.abs(np.load(scratch / f"{name}.npy") - np.load(reference)).max())
            print(f"round {round_ + 1} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    fields = ("to_first_step_s", "median_step_s", "last_loss", "predict_first_s", "predict_per_slice_s", "max_probability_difference")
    summary = {}
    for name, rows in raw.items():
        ok = [r for r in rows if "status" not in r]
        summary[name] = {f: round(C.median([r[f] for r in ok]), 4) for f in fields if ok and f in ok[0]}
    base = summary.get("default", {})
    for name, values in summary.items():
        for field in ("median_step_s", "predict_per_slice_s"):
            if field in values and base.get(field):
                values[f"{field}_speedup"] = round(base[field] / values[field], 3)
        print(name, values)
    C.write_report(args.out, {"variants": {n: VARIANTS[n] for n in names}, "rounds": args.rounds, "steps": args.steps, "summary": summary, "raw": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
