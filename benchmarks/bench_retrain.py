#!/usr/bin/env python
"""Time of a Retrain when the compiled training network of the previous run is kept, against building it anew.

In one process (as a napari session is): a short training makes the model to fine-tune, then Retrains as the
training widget does them by default (1 epoch of 20 steps of 2 x 128², no validation, batch-norm statistics
recomputed), each from the previous Retrain's model. Rounds alternate

- ``rebuilt``: ``clear_trainer_cache()`` first, so the run builds, compiles and traces its training network (what
  every run did before session 21);
- ``kept``: the run takes the network the previous run left (``napari_unet.train._Trainer``);
- ``kept-bn16`` (with ``--data isbi``): ``kept`` with the batch-norm statistics recomputed on up to 16 tiles, as
  before session 21 (now ``train.BATCH_NORM_TILES`` = 4; the synthetic stack has 4 slices, so no difference there).

``--data synthetic``: a 4-slice 256² synthetic EM stack; ``--data isbi``: the 20 ISBI training slices (512²), as a
user who loaded them and painted corrections would Retrain (needs ../shared/data).
Per run: seconds from the call to the first step, the median step and the whole run; the ratio of medians.

``--sequence``: no alternation, just a 5-step training and three Retrains one after another, each timed, with
napari_unet imported from ``--src`` (another checkout's src/, e.g. an older commit's worktree) to compare code versions.

    python benchmarks/bench_retrain.py                    # 4 rounds, ~3 min
    python benchmarks/bench_retrain.py --data isbi --out benchmarks/results/retrain-reuse-isbi.json   # ~6 min
    git worktree add /tmp/old 1187761 && python benchmarks/bench_retrain.py --data isbi --sequence --src /tmp/old/src
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
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=C.at_least(1), default=4)
    ap.add_argument("--steps", type=C.at_least(2, "the median step leaves out the first"), default=20,
                    help="steps of one Retrain (at least 2)")
    ap.add_argument("--data", choices=("synthetic", "isbi"), default="synthetic")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "retrain-reuse.json")
    ap.add_argument("--sequence", action="store_true", help="time one training and three Retrains, no alternation")
    ap.add_argument("--src", type=Path, default=C.SRC, help="the src/ folder to import napari_unet from")
    args = ap.parse_args()
    C.use_src(args.src)
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    import napari_unet.train as train_module
    from napari_unet.config import preset
    from napari_unet.synthetic import make_em_stack
    from napari_unet.train import train

    if args.data == "isbi":
        folder = C.SHARED_DATA / "isbi2012"
        if not folder.is_dir():
            print(f"skipped: {folder} not found (needs the project's shared data beside the repo)")
            return 0
        image, labels = C.read_tif(folder / "train-volume.tif"), C.read_tif(folder / "train-labels.tif")
        variants = ("rebuilt", "kept", "kept-bn16")
    else:
        image, labels = make_em_stack(4, (256, 256), seed=1)
        variants = ("rebuilt", "kept")
    shipped_tiles = getattr(train_module, "BATCH_NORM_TILES", None)  # absent before session 21 (--src)
    default = preset("default")
    first = default.train.replace(epochs=1, steps_per_epoch=5, val_fraction=0.0)
    model = train(image, labels, default.model, first).model
    retrain = default.train.replace(epochs=1, steps_per_epoch=args.steps, patch_size=128, batch_size=2, val_fraction=0.0)
    if args.sequence:
        times = []
        for index in range(3):
            start = time.perf_counter()
            model = train(image, labels, train_config=retrain.replace(seed=index), init=model).model
            times.append(round(time.perf_counter() - start, 2))
        print(json.dumps({"src": str(args.src), "imported": train_module.__file__, "data": args.data, "retrains_s": times}))
        return 0
    runs: dict = {variant: [] for variant in variants}
    for round_index in range(args.rounds):
        for variant in variants:
            if variant == "rebuilt":
                train_module.clear_trainer_cache()
            train_module.BATCH_NORM_TILES = 16 if variant == "kept-bn16" else shipped_tiles
            result = timed_run(image, labels, retrain.replace(seed=round_index), model)
            model = result.pop("model")
            runs[variant].append(result)
            print(f"round {round_index + 1} {variant}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    summary = {
        variant: {key: statistics.median(r[key] for r in results) for key in results[0]} for variant, results in runs.items()
    }
    summary["kept_vs_rebuilt_total"] = summary["rebuilt"]["total_s"] / summary["kept"]["total_s"]
    summary["kept_vs_rebuilt_first_step"] = summary["rebuilt"]["to_first_step_s"] / summary["kept"]["to_first_step_s"]
    if "kept-bn16" in summary:
        summary["kept_vs_kept_bn16_total"] = summary["kept-bn16"]["total_s"] / summary["kept"]["total_s"]
    C.write_report(args.out, {
        "data": args.data,
        "image_shape": list(image.shape),
        "batch_norm_tiles": shipped_tiles,
        "retrain": {"epochs": 1, "steps": args.steps, "patch": 128, "batch": 2},
        "runs": runs,
        "summary": summary,
    })
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
