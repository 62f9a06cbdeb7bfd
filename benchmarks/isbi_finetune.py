#!/usr/bin/env python
"""Fine-tuning a model on more annotations (``train --init``, the widget's *continue from the current model*): which learning rate?

    python benchmarks/isbi_finetune.py                                  # 1e-3,3e-4,1e-4 x seeds 1,2,3, 200 steps, + scratch
    python benchmarks/isbi_finetune.py --learning-rates 1e-3,1e-4 --seeds 1 --steps 50 --start-steps 50 --name smoke-isbi-finetune

Data: ``../shared/data/isbi2012`` (0 = membrane, 255 = cell). Slices 15-19 are held out: nothing trains on them,
they only judge.

Start model: the default preset trained ``--start-steps`` steps (seed 0) on slices 0-4 only, as a user's first model
on a first few annotated slices; saved as ``benchmarks/results/NAME-start.keras`` and reused by the next run of the
same ``--name``. Fine-tunes: ``train_events(..., init=start)`` on slices 0-14 with the default preset's training
(its cosine schedule, validation, weight averaging) for ``--steps`` steps (epochs of 25 steps) at each learning rate
and seed, as ``train --init`` runs it. Control: the same training from scratch (``init=None``) at the preset's 1e-3,
same seeds. Steps, not minutes, so the table does not depend on what else the CPU ran.

Judging: ``predict(tta=False)`` of slices 15-19 with the model's membrane rule, ``napari_unet.metrics.evaluate``
(V_rand, V_info, pixel error: means over the slices). The table: per run kind mean (min-max) over seeds, and the
differences to the 1e-3 fine-tune of the same seed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from isbi_merging import DATA, ROOT, write_results  # noqa: E402
from isbi_retrain import read_volume  # noqa: E402

HELD = list(range(15, 20))  # never trained on
START_SLICES = list(range(0, 5))
FINETUNE_SLICES = list(range(0, 15))
STEPS_PER_EPOCH = 25  # the default preset's


def train(image, labels, steps: int, seed: int, learning_rate: float, init=None):
    """The default preset's training for ``steps`` steps (rounded up to epochs of 25); (model, facts)."""
    from napari_unet.config import preset
    from napari_unet.train import TrainingFinished, train_events

    epochs = max(1, -(-steps // STEPS_PER_EPOCH))
    config = preset("default").train.replace(epochs=epochs, steps_per_epoch=STEPS_PER_EPOCH, max_minutes=None,
                                             seed=seed, learning_rate=learning_rate)
    model_config = None if init is not None else preset("default").model_for(config)
    started = time.perf_counter()
    for event in train_events(image, labels, model_config, config, init=init):
        if isinstance(event, TrainingFinished):
            finished = event
    return finished.model, {"steps": finished.steps, "reason": finished.reason, "train_s": round(time.perf_counter() - started, 1)}


def judge(model, image, labels) -> dict:
    from napari_unet.metrics import evaluate
    from napari_unet.predict import predict

    predicted = predict(model, image[HELD], tta=False).labels
    scores = evaluate(predicted, labels[HELD])
    return {k: round(float(scores[k]), 4) for k in ("v_rand", "v_info", "pixel_error")}


METRICS = (("V_rand", "v_rand", 3), ("V_info", "v_info", 3), ("pixel err", "pixel_error", 4))


def summarize(runs: list, start: dict) -> tuple[dict, str]:
    groups = {}
    for r in runs:
        groups.setdefault(r["kind"], []).append(r)
    reference = {r["seed"]: r for r in groups.get("fine-tune lr=0.001", [])}
    lines = [f"start model (slices {START_SLICES[0]}-{START_SLICES[-1]}): held-out V_rand {start['v_rand']:.3f}, "
             f"V_info {start['v_info']:.3f}, pixel err {start['pixel_error']:.4f}", "",
             "Held-out slices 15-19, mean (min-max) over seeds; paired: mean difference to the 1e-3 fine-tune of the same seed", "",
             "| run | seeds | " + " | ".join(name for name, _, _ in METRICS) + " | paired V_rand | paired V_info | s per run |",
             "|---" * (5 + len(METRICS)) + "|"]
    summary = {}
    for kind, rs in groups.items():
        entry = {"runs": len(rs)}
        cells = []
        for name, key, digits in METRICS:
            v = np.array([r["held"][key] for r in rs])
            entry[key] = {"mean": round(float(v.mean()), 4), "min": float(v.min()), "max": float(v.max())}
            cells.append(f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})")
        paired = []
        for key in ("v_rand", "v_info"):
            d = [r["held"][key] - reference[r["seed"]]["held"][key] for r in rs if r["seed"] in reference]
            paired.append(f"{np.mean(d):+.4f}" if d else "-")
            if d:
                entry[f"paired_{key}"] = round(float(np.mean(d)), 4)
        summary[kind] = entry
        seconds = np.median([r["train_s"] for r in rs])
        lines.append(f"| {kind} | {len(rs)} | " + " | ".join(cells) + f" | {paired[0]} | {paired[1]} | {seconds:.0f} |")
    return summary, "\n".join(lines)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-steps", type=int, default=200, help="training steps of the start model (slices 0-4)")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each fine-tune and scratch control")
    parser.add_argument("--learning-rates", default="1e-3,3e-4,1e-4", help="comma-separated fine-tune learning rates")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds of the fine-tunes and the controls")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch controls")
    parser.add_argument("--name", default="isbi-finetune")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0
    learning_rates = [float(x) for x in args.learning_rates.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]

    C.use_src()  # this checkout's napari_unet
    from napari_unet.model_io import load_model, save_model

    image, labels = read_volume()
    payload = C.run_header({"start_steps": args.start_steps, "steps": args.steps, "learning_rates": learning_rates,
                            "seeds": seeds, "held_out": HELD, "start_slices": START_SLICES, "finetune_slices": FINETUNE_SLICES})
    start_path = ROOT / "benchmarks" / "results" / f"{args.name}-start.keras"
    if start_path.exists():
        print(f"start model: reusing {start_path} (delete it to train a new one)", flush=True)
        payload["start_model"] = {"path": str(start_path), "trained": False}
    else:
        print(f"start model: default preset, {args.start_steps} steps on slices {START_SLICES}, seed 0 ...", flush=True)
        model, facts = train(image[START_SLICES], labels[START_SLICES], args.start_steps, 0, 1e-3)
        save_model(model, start_path)
        payload["start_model"] = {"path": str(start_path), "trained": True, **facts}
    start_model = load_model(start_path)
    payload["start"] = judge(start_model, image, labels)
    print(f"start: {json.dumps(payload['start'])}", flush=True)

    jobs = [(f"fine-tune lr={lr:g}", lr, start_model) for lr in learning_rates]
    if not args.no_scratch:
        jobs.append(("scratch lr=0.001", 1e-3, None))
    runs = payload["runs"] = []
    for seed in seeds:  # seed-major: an interrupted run still has complete pairs
        for kind, lr, init in jobs:
            model, facts = train(image[FINETUNE_SLICES], labels[FINETUNE_SLICES], args.steps, seed, lr, init=init)
            record = {"kind": kind, "lr": lr, "seed": seed, **facts, "held": judge(model, image, labels)}
            runs.append(record)
            print(json.dumps(record), flush=True)
            write_results(args.name, payload)  # partial results survive an interrupted run
    payload["summary"], table = summarize(runs, payload["start"])
    write_results(args.name, payload)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
