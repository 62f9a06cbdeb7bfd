#!/usr/bin/env python
"""Whether XLA pays for a training run of a given length: compile time against faster steps.

Each run is a fresh process (as a user's first Train or Retrain is) that trains the default preset with
``train_events`` on a synthetic EM stack, with ``jit_compile`` on and off, alternated round by round (this
machine's speed drifts over minutes). Per run: seconds from the call to the first step (data, model, tracing
and, with XLA, compiling), the median step after the first two, and the whole run.

- ``retrain``: what the training widget's Retrain does by default (1 epoch of 20 steps of 2 x 128², no validation);
- ``train``: the default training batch (4 x 256²) for ``--steps`` steps, no validation;
- ``retrain-late-optimizer`` (not by default; without XLA only): ``retrain`` with the optimizer's variables made
  inside the first step, as before session 20 (TensorFlow then traces the step twice).

    python benchmarks/bench_xla_training.py                  # both runs, 2 rounds, ~8 min
    python benchmarks/bench_xla_training.py --runs retrain --rounds 3
    python benchmarks/bench_xla_training.py --runs retrain,retrain-late-optimizer --out benchmarks/results/optimizer-build.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RUNS = {
    "retrain": {"patch": 128, "batch": 2, "steps": 20},
    "train": {"patch": 256, "batch": 4, "steps": 30},
    "retrain-late-optimizer": {"patch": 128, "batch": 2, "steps": 20, "late_optimizer": True, "xla": [False]},
}


def worker(spec: dict) -> None:
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    from napari_unet.config import preset
    from napari_unet.synthetic import make_em_stack
    from napari_unet.train import TrainingFinished, TrainingStep, train_events

    if spec.get("late_optimizer"):
        import keras

        build = keras.optimizers.Adam.build

        def build_in_first_step(self, variables):  # skip train_events' early call; the step's own call builds
            if getattr(self, "_skipped_early_build", False):
                return build(self, variables)
            self._skipped_early_build = True

        keras.optimizers.Adam.build = build_in_first_step
    image, labels = make_em_stack(4, (256, 256), seed=1)
    default = preset("default")
    config = default.train.replace(epochs=1, steps_per_epoch=spec["steps"], patch_size=spec["patch"], batch_size=spec["batch"],
                                   val_fraction=0.0, jit_compile=spec["jit"])
    start = last = time.perf_counter()
    steps = []
    for event in train_events(image, labels, default.model, config):
        if isinstance(event, TrainingStep):
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        elif isinstance(event, TrainingFinished):
            total = time.perf_counter() - start
            assert event.model.train_config.jit_compile is spec["jit"]
    C.emit({"to_first_step_s": steps[0], "median_step_s": statistics.median(steps[2:]), "total_s": total, "steps": len(steps)})


def main() -> int:
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="retrain,train")
    ap.add_argument("--rounds", type=C.at_least(1), default=2)
    ap.add_argument("--steps", type=C.at_least(3, "the median step leaves out the first two"), default=RUNS["train"]["steps"],
                    help="steps of the 'train' run (at least 3)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "xla-training.json")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(json.loads(args._worker))
        return 0
    runs = {name: dict(RUNS[name]) for name in args.runs.split(",")}
    if "train" in runs:
        runs["train"]["steps"] = args.steps
    results = {f"{name}/xla={jit}": [] for name, run in runs.items() for jit in run.get("xla", (True, False))}
    for round_ in range(args.rounds):
        for name, run in runs.items():
            settings = tuple(run.get("xla", (True, False)))
            for jit in settings if round_ % 2 == 0 else settings[::-1]:
                payloads, status, _ = C.run_child(Path(__file__), {**run, "jit": jit}, None, timeout=1800)
                if status != "ok" or not payloads:
                    raise SystemExit(f"{name} jit={jit}: {status}")
                results[f"{name}/xla={jit}"].append(payloads[-1])
                print(name, f"xla={jit}", {k: round(v, 3) for k, v in payloads[-1].items()}, flush=True)
    summary = {key: {field: round(C.median([r[field] for r in rows]), 3) for field in ("to_first_step_s", "median_step_s", "total_s")}
               for key, rows in results.items()}
    for name in runs:
        if f"{name}/xla=True" not in summary:
            continue
        on, off = summary[f"{name}/xla=True"], summary[f"{name}/xla=False"]
        saved_per_step = off["median_step_s"] - on["median_step_s"]
        summary[f"{name}/ratio"] = {
            "compile_extra_s": round(on["to_first_step_s"] - off["to_first_step_s"], 2),
            "step_speedup": round(off["median_step_s"] / on["median_step_s"], 3),
            # steps after which XLA's faster steps have repaid its compile time (None: its steps are not faster)
            "break_even_steps": round((on["to_first_step_s"] - off["to_first_step_s"]) / saved_per_step, 1) if saved_per_step > 0 else None,
            "total_ratio_off_over_on": round(off["total_s"] / on["total_s"], 3),
        }
        print(name, summary[f"{name}/xla=True"], summary[f"{name}/xla=False"], summary[f"{name}/ratio"])
    C.write_report(args.out, {"runs": runs, "rounds": args.rounds, "summary": summary, "raw": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
