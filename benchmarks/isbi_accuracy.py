"""Time-to-quality on ISBI 2012: train on slices 0-14, judge on the unseen slices 15-19.

    python benchmarks/isbi_accuracy.py --minutes 10 [--set base_filters=16 --set batch_size=8 ...]

Training runs through the same ``train_events`` as ``napari-unet train`` (its own validation split is
taken from slices 0-14 only). Weights are snapshotted at checkpoints while training and scored after it,
so scoring never eats the training budget. Writes JSON to benchmarks/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
TRAIN_SLICES, JUDGE_SLICES = slice(0, 15), slice(15, 20)


def parse_value(text: str, current=None):
    """A --set value: text for string fields (so class_weighting=none stays "none"), else number, bool or None."""
    if isinstance(current, str) and current != "auto":  # "auto" fields also take numbers and booleans
        return text
    if "," in text:  # tuples, e.g. merge_levels=0.5,0.6 (or 0.7, for one level)
        return tuple(parse_value(part) for part in text.split(",") if part)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps (whole epochs) instead of --minutes: A/B runs that a machine whose "
                        "speed drifts cannot bias (checkpoints still in minutes)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], help="config override NAME=VALUE (model or train field)")
    parser.add_argument("--checkpoints", default="1,2,3,5,7.5,10,15,20,30",
                        help="minutes at which to snapshot, or 'epochs' to snapshot after every epoch")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default="auto",
                        help="test-time augmentation of the judged slices (default: as predict decides on this machine)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--save-probabilities", type=Path, default=None, metavar="DIR",
                        help="also save each checkpoint's membrane probability of slices 15-19 and of the validation slices (float16 .npy)")
    parser.add_argument("--save-model", type=Path, default=None, metavar="FILE.keras", help="also save the final model")
    parser.add_argument("--compare-batch-norm", action="store_true",
                        help="also score the snapshots of the last third of the budget with their training-time batch-norm statistics")
    parser.add_argument("--average-from", default="", metavar="F1,F2",
                        help="also score the average of the weights at every epoch end after each given fraction of the budget (weight averaging)")
    parser.add_argument("--src", type=Path, default=None,
                        help="import napari_unet from this src/ folder (e.g. an older commit's worktree) to compare code versions")
    args = parser.parse_args(argv)
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0

    import tifffile

    from napari_unet import hardware
    from napari_unet.config import preset
    from napari_unet.metrics import evaluate, isbi_pixel_error, isbi_scores
    from napari_unet.postprocess import candidate_closings, tune_boundary_rule
    from napari_unet.predict import predict
    from napari_unet.train import EpochEnd, TrainingFinished, TrainingStarted, TrainingStep, WeightAverage, recompute_batch_norm, train_events

    image = tifffile.imread(DATA / "train-volume.tif")
    labels = tifffile.imread(DATA / "train-labels.tif")
    chosen = preset(args.preset)
    model_fields = {f.name for f in dataclasses.fields(chosen.model)}
    model_over, train_over = {}, {}
    for item in args.set:
        key, value = item.split("=", 1)
        target, config = (model_over, chosen.model) if key in model_fields else (train_over, chosen.train)
        target[key] = parse_value(value, getattr(config, key, None))
    train_config = chosen.train.replace(**train_over)
    if args.steps:
        train_config = train_config.replace(epochs=-(-args.steps // train_config.steps_per_epoch), max_minutes=None)
    else:
        train_config = train_config.replace(epochs=100_000, max_minutes=args.minutes)
    model_config = dataclasses.replace(chosen.model_for(train_config), **model_over)  # depth as `napari-unet train` picks it

    def budget_fraction(elapsed: float, n_steps: int) -> float:
        """Share of the training budget (steps or minutes) used after ``elapsed`` seconds and ``n_steps`` steps."""
        return n_steps / args.steps if args.steps else elapsed / (args.minutes * 60)

    every_epoch = args.checkpoints == "epochs"
    if args.save_probabilities is not None:
        args.save_probabilities.mkdir(parents=True, exist_ok=True)
    checkpoints = [] if every_epoch else [float(c) for c in args.checkpoints.split(",") if args.steps or float(c) <= args.minutes]

    average_from = sorted(float(f) for f in args.average_from.split(",") if f)
    snapshots, epoch_weights, live, final = [], [], None, None
    started = time.perf_counter()
    steps = 0
    for event in train_events(image[TRAIN_SLICES], labels[TRAIN_SLICES], model_config, train_config):
        if isinstance(event, TrainingStarted):
            live, train_slices, val_slices = event.model, event.train_slices, event.val_slices
        elif isinstance(event, TrainingStep):
            steps = event.step
        elif isinstance(event, EpochEnd):
            if average_from:
                epoch_weights.append((event.elapsed, steps, live.keras_model.get_weights()))
            if every_epoch:
                snapshots.append((round(event.elapsed / 60, 2), event.elapsed, steps, live.keras_model.get_weights()))
            while checkpoints and event.elapsed >= checkpoints[0] * 60:
                snapshots.append((checkpoints.pop(0), event.elapsed, steps, live.keras_model.get_weights()))
            print(f"epoch {event.epoch} {event.elapsed:6.0f}s loss {event.loss:.4f} val {event.val_loss}", file=sys.stderr)
        elif isinstance(event, TrainingFinished):
            final = event
    wall = time.perf_counter() - started

    rows = []
    model = final.model
    delivered_weights = model.keras_model.get_weights()
    entries = [(m, e, s, w) for m, e, s, w in snapshots] + [("final (as delivered)", wall, steps, delivered_weights)]
    for fraction in average_from:  # as train_events averages with average_weights_from=fraction
        late_epochs = WeightAverage()
        for epoch_elapsed, epoch_steps, weights in epoch_weights:
            if budget_fraction(epoch_elapsed, epoch_steps) >= fraction:
                late_epochs.add(weights)
        if late_epochs.count:
            entries.append((f"average of {late_epochs.count} epochs from {fraction:g}", wall, steps, late_epochs.mean(delivered_weights)))
    train_image, train_labels = image[TRAIN_SLICES], labels[TRAIN_SLICES]
    final_rule = final.model.boundary_rule
    closings = candidate_closings(final.model.train_config.merge_levels)  # the levels training resolved and tuned from
    mode = "recomputed" if train_config.recompute_batch_norm else "training"
    variants = []  # (minute, elapsed, steps, weights, batch-norm statistics)
    for minute, elapsed, n_steps, weights in entries:
        late_snapshot = isinstance(minute, (int, float)) and budget_fraction(elapsed, n_steps) >= 0.65
        if args.compare_batch_norm and mode == "recomputed" and late_snapshot:
            variants.append((minute, elapsed, n_steps, weights, "training"))
        variants.append((minute, elapsed, n_steps, weights, mode))
    for minute, elapsed, n_steps, weights, batch_norm in variants:
        model.keras_model.set_weights(weights)
        if batch_norm == "recomputed":  # as train_events does when it stops here (the final weights: same again)
            recompute_batch_norm(model, train_image, train_slices)
        val_v_rand = None
        if minute == "final (as delivered)":
            model.boundary_rule, val_v_rand = final_rule, final.boundary_v_rand
        elif model.boundary_value is not None:
            # as if training had stopped here: tune the boundary rule on the training's validation slices
            b = model.class_values.index(model.boundary_value)
            val_probs = predict(model, train_image, slices=val_slices, close_boundaries=False, tta=False).probabilities[..., b]
            model.boundary_rule, val_v_rand = tune_boundary_rule(val_probs, train_labels[val_slices] != model.boundary_value, closings=closings)
            if args.save_probabilities is not None and batch_norm == "recomputed":
                np.save(args.save_probabilities / f"validation-membrane-{minute}.npy", val_probs.astype(np.float16))
        result = predict(model, image, slices=range(20)[JUDGE_SLICES], tta=args.tta)  # context slices (if any) from the volume
        scores = evaluate(result.labels, labels[JUDGE_SLICES], model.class_values)
        membrane = result.probabilities[..., model.class_values.index(0)]
        sweep = isbi_scores(membrane, labels[JUDGE_SLICES], probability="membrane")
        if args.save_probabilities is not None and batch_norm == "recomputed":
            tag = str(minute).replace(" ", "-").replace("(", "").replace(")", "")
            np.save(args.save_probabilities / f"membrane-{tag}.npy", membrane.astype(np.float16))
        row = {
            "checkpoint_minutes": minute,
            "batch_norm": batch_norm,
            "elapsed_s": round(elapsed, 1),
            "steps": n_steps,
            "pixel_error": round(scores["pixel_error"], 4),
            "isbi_pixel_error": round(scores["isbi_pixel_error"], 4),
            "isbi_pixel_error_prob_sweep": round(isbi_pixel_error(membrane, labels[JUDGE_SLICES], probability="membrane"), 4),
            "v_rand": round(scores["v_rand"], 4),
            "v_info": round(scores["v_info"], 4),
            "v_rand_prob_sweep": round(sweep["v_rand"], 4),
            "v_info_prob_sweep": round(sweep["v_info"], 4),
            "boundary_rule": model.boundary_rule,
            "val_v_rand": None if val_v_rand is None else round(float(val_v_rand), 4),
        }
        rows.append(row)
        print(json.dumps(row))
    if args.save_model is not None:
        from napari_unet.model_io import save_model

        model.keras_model.set_weights(delivered_weights)
        save_model(model, args.save_model)
    name = args.name or f"isbi-{args.preset}-{args.minutes:g}min"
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "name": name,
        "minutes": None if args.steps else args.minutes,
        "steps_budget": args.steps,
        "napari_unet_from": sys.modules["napari_unet"].__file__,
        "model_config": dataclasses.asdict(model_config),
        "train_config": {k: v for k, v in dataclasses.asdict(train_config).items()},
        "train_config_as_run": dataclasses.asdict(model.train_config),  # "auto" resolved for this CPU
        "bfloat16_cpu": hardware.cpu_has_fast_bfloat16(),
        "tta": hardware.resolve_tta(args.tta),
        "boundary_value": model.boundary_value,
        "history": final.history,
        "rows": rows,
    }
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
