#!/usr/bin/env python
"""Time of a Retrain when the compiled training network of the previous run is kept, against building it anew.

In one process (as a napari session is): a short training makes the model to fine-tune, then Retrains as the
training widget does them by default (1 epoch of 20 steps of 2 x 128², no validation, batch-norm statistics
recomputed), each from the previous Retrain's model. Rounds alternate

- ``rebuilt``: ``clear_trainer_cache()`` first, so the run builds, compiles and traces its training network (what
  every run did before session 21);
- ``kept``: the run takes the network the previous run left (``napari_unet.train._Trainer``).

Per run: seconds from the call to the first step, the median step and the whole run; the ratio of medians.

    python benchmarks/bench_retrain.py                    # 4 rounds, ~3 min
    python benchmarks/bench_retrain.py --rounds 6 --steps 20
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


def timed_run(image, labels, config, init) -> dict:
    from napari_unet.train import TrainingFinished, TrainingStep, train_events

    start = last = time.perf_counter()
    steps = []
    for event in train_events(image, labels, train_config=config, init=init):
        if isinstance(event, TrainingStep):
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        elif isinstance(event, TrainingFinished):
            model = event.model
    total = time.perf_counter() - start
    return {"to_first_step_s": steps[0], "median_step_s": statistics.median(steps[1:]), "total_s": total, "model": model}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="steps of one Retrain")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "retrain-reuse.json")
    args = ap.parse_args()
    C.use_src()
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    from napari_unet.config import preset
    from napari_unet.synthetic import make_em_stack
    from napari_unet.train import clear_trainer_cache, train

    image, labels = make_em_stack(4, (256, 256), seed=1)
    default = preset("default")
    first = default.train.replace(epochs=1, steps_per_epoch=5, val_fraction=0.0)
    model = train(image, labels, default.model, first).model
    retrain = default.train.replace(epochs=1, steps_per_epoch=args.steps, patch_size=128, batch_size=2, val_fraction=0.0)
    runs: dict = {"rebuilt": [], "kept": []}
    for round_index in range(args.rounds):
        for variant in ("rebuilt", "kept"):
            if variant == "rebuilt":
                clear_trainer_cache()
            result = timed_run(image, labels, retrain.replace(seed=round_index), model)
            model = result.pop("model")
            runs[variant].append(result)
            print(f"round {round_index + 1} {variant}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    summary = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]} for variant, results in runs.items()
    }
    summary["kept_vs_rebuilt_total"] = summary["rebuilt"]["total_s"] / summary["kept"]["total_s"]
    summary["kept_vs_rebuilt_first_step"] = summary["rebuilt"]["to_first_step_s"] / summary["kept"]["to_first_step_s"]
    report = {
        "command": "python benchmarks/bench_retrain.py " + " ".join(sys.argv[1:]),
        "machine": C.machine_info(),
        "libraries": C.library_versions(),
        "retrain": {"epochs": 1, "steps": args.steps, "patch": 128, "batch": 2},
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
