#!/usr/bin/env python
"""Successive "Retrain on corrections" on ISBI: does a Retrain keep the model, and does it learn the corrections?

    python benchmarks/isbi_retrain.py                     # start model (2 min), then 2 modes x 2 lr x 2 seeds x 4 Retrains
    python benchmarks/isbi_retrain.py --model benchmarks/results/isbi-retrain-start.keras    # reuse that model
    python benchmarks/isbi_retrain.py --learning-rates 1e-3,1e-4 --seeds 1,2 --rounds 4      # the defaults, spelled out
    python benchmarks/isbi_retrain.py --modes default,s035,s05,control --learning-rates 1e-4 --seeds 1,2,3
    python benchmarks/isbi_retrain.py --modes w0,w4,w8,w16 --learning-rates 1e-4 --seeds 1,2,3,4,5,6,7 --rounds 2  # weights
    python benchmarks/isbi_retrain.py --minutes 0.3 --rounds 1 --seeds 1 --learning-rates 1e-4 --steps 3 --name smoke-isbi-retrain

Data: ``../shared/data/isbi2012`` (0 = membrane, 255 = cell). Slices 15-19 are held out: no training or Retrain sees
them, they only judge.

Start model: ``--model M.keras``; without it, the default preset trained ``--minutes`` (2) with seed 0 on the fully
annotated slices 0, 5 and 10 (every other slice unannotated), saved as ``benchmarks/results/NAME-start.keras`` and
reused from there by the next run of the same ``--name``.

Simulated corrections: in the prediction of slice 12 the user sees (``tta="auto"``, the model's membrane rule), the
wrong pixels of the 4 worst 48 x 48 windows (mean error, windows not overlapping) are set to the truth. Slices 0, 5,
10 keep their annotations.

Chains: for every mode x learning rate x seed, ``--rounds`` successive Retrains (each starts from the model the
previous one made, with the same corrections). A Retrain is the training widget's path: ``retrain_data(image,
values, corrected | annotated, corrected, 128)`` (the widget's defaults ``share=0.5, max_extra=32``), then
``train_events(..., init=model)`` with ``napari_unet.retrain.retrain_config``'s TrainConfig as the widget makes it:
``preset("default").train`` as one epoch of STEPS steps, 128² patches, batch 2, no validation, ``seed=100 * SEED + ROUND``,
``learning_rate=LR``. Modes:

- ``default``  the widget as it is: ``retrain_data`` defaults (the copy cap puts ~0.22 of the patches on corrections;
  corrected pixels weigh ``CORRECTION_WEIGHT`` = 8 more in the loss, passed as ``train_events(pixel_weights=...)``);
- ``s035``, ``s05``, ``s08``  ``retrain_data(share=0.35 / 0.5 / 0.8, max_extra=1000)`` (more focus copies);
- ``w0``, ``w4``, ``w8``, ``w16``, ``w64``  ``retrain_data(correction_weight=0 / 4 / 8 / 16 / 64)`` (w0: session 40's Retrain);
- ``control``  the same fine-tune on the original annotations only (no corrections, no focus copies), same seeds, so
  every (seed, round) of a mode is paired with the control's.

Judging after every Retrain (``tta=False`` throughout): ``napari_unet.metrics.evaluate`` of slices 15-19 with the
model's membrane rule (V_rand, V_info, pixel error; mean over the slices) and the fraction of painted pixels the model
now predicts as painted, with the rule (what the user sees) and with plain argmax (``close_boundaries=False``); and
the seconds of the Retrain (data preparation + training, not judging). The table: per (mode, lr) mean (min-max) over
all rounds and seeds, then the paired differences (mode - control, same seed and round).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from isbi_merging import DATA, ROOT, write_results  # noqa: E402

HELD = list(range(15, 20))  # never trained on
BASE = [0, 5, 10]  # fully annotated slices of the start model
CORRECTED_SLICE = 12
WINDOW, N_WINDOWS = 48, 4
PATCH, BATCH = 128, 2  # the widget's Retrain patch and batch defaults
MODES = {  # retrain_data keyword arguments; None = the no-correction control
    "default": {},
    "s035": {"share": 0.35, "max_extra": 1000},
    "s05": {"share": 0.5, "max_extra": 1000},
    "s08": {"share": 0.8, "max_extra": 1000},
    "w0": {"correction_weight": 0.0},
    "w4": {"correction_weight": 4.0},
    "w8": {"correction_weight": 8.0},
    "w16": {"correction_weight": 16.0},
    "w64": {"correction_weight": 64.0},
    "control": None,
}


def read_volume() -> tuple[np.ndarray, np.ndarray]:
    """(20, 512, 512) uint8 image and labels (0 membrane, 255 cell)."""
    import tifffile

    return tifffile.imread(DATA / "train-volume.tif"), tifffile.imread(DATA / "train-labels.tif")


def train_start_model(image, labels, minutes: float):
    """The default preset, ``minutes`` with seed 0, on fully annotated slices 0, 5, 10 (the rest unannotated)."""
    from napari_unet.config import preset
    from napari_unet.labels import choose_ignore_value
    from napari_unet.train import TrainingFinished, train_events

    ignore = choose_ignore_value([0, 255])
    sparse = np.full(labels.shape, ignore, np.uint8)
    sparse[BASE] = labels[BASE]
    config = preset("default").train.replace(max_minutes=minutes, ignore_value=ignore, seed=0)
    for event in train_events(image, sparse, None, config):
        if isinstance(event, TrainingFinished):
            finished = event
    return finished.model, {"steps": finished.steps, "reason": finished.reason, "boundary_rule": finished.model.boundary_rule}


def painted_mask(model, image, labels) -> np.ndarray:
    """(Y, X) bool: the wrong pixels of the 4 worst 48 x 48 windows of slice 12 in the prediction the user sees."""
    from scipy import ndimage

    from napari_unet.predict import predict

    seen = predict(model, image, slices=[CORRECTED_SLICE], tta="auto").labels[0]
    wrong = seen != labels[CORRECTED_SLICE]
    score = ndimage.uniform_filter(wrong.astype(np.float32), WINDOW)
    painted = np.zeros(wrong.shape, bool)
    half = WINDOW // 2
    for _ in range(N_WINDOWS):
        y, x = np.unravel_index(np.argmax(score), score.shape)
        window = (slice(max(0, y - half), max(0, y - half) + WINDOW), slice(max(0, x - half), max(0, x - half) + WINDOW))
        painted[window] = wrong[window]
        score[max(0, y - WINDOW):y + WINDOW, max(0, x - WINDOW):x + WINDOW] = -1
    return painted


class Experiment:
    def __init__(self, image, labels, painted):
        self.image, self.labels, self.painted = image, labels, painted
        self.base_values = np.zeros(labels.shape, np.int64)
        self.base_values[BASE] = labels[BASE]
        self.base_annotated = np.zeros(labels.shape, bool)
        self.base_annotated[BASE] = True
        self.corrected = np.zeros(labels.shape, bool)
        self.corrected[CORRECTED_SLICE] = painted
        self.values = np.where(self.corrected, labels, self.base_values)
        self.truth_painted = labels[CORRECTED_SLICE][painted]

    def judge(self, model) -> dict:
        from napari_unet.metrics import evaluate
        from napari_unet.predict import predict

        started = time.perf_counter()
        rule = predict(model, self.image, slices=HELD + [CORRECTED_SLICE], tta=False).labels
        argmax = predict(model, self.image, slices=[CORRECTED_SLICE], tta=False, close_boundaries=False).labels[0]
        scores = evaluate(rule[:-1], self.labels[HELD])
        held = {k: round(float(scores[k]), 4) for k in ("v_rand", "v_info", "pixel_error", "isbi_pixel_error")}
        to_membrane = self.truth_painted == 0
        right_rule = rule[-1][self.painted] == self.truth_painted
        right_argmax = argmax[self.painted] == self.truth_painted
        unpainted = ~self.painted
        return {
            "held": held,
            "painted_rule": round(float(right_rule.mean()), 4),
            "painted_argmax": round(float(right_argmax.mean()), 4),
            "painted_rule_to_membrane": round(float(right_rule[to_membrane].mean()), 4) if to_membrane.any() else None,
            "painted_argmax_to_membrane": round(float(right_argmax[to_membrane].mean()), 4) if to_membrane.any() else None,
            "slice12_unpainted_error_rule": round(float(np.mean(rule[-1][unpainted] != self.labels[CORRECTED_SLICE][unpainted])), 4),
            "judge_s": round(time.perf_counter() - started, 1),
        }

    def retrain(self, model, mode: str, learning_rate: float, steps: int, seed: int):
        """One Retrain as the widget does it; (new model, facts)."""
        from napari_unet.retrain import retrain_config, retrain_data
        from napari_unet.config import preset
        from napari_unet.labels import choose_ignore_value
        from napari_unet.train import TrainingFinished, TrainingStep, train_events

        started = time.perf_counter()
        kwargs = MODES[mode]
        if kwargs is None:
            ignore = choose_ignore_value([0, 255])
            image, labels, share, extra = self.image, np.where(self.base_annotated, self.labels, ignore).astype(np.uint8), 0.0, 0
            weights = None
        else:
            data = retrain_data(self.image, self.values, self.corrected | self.base_annotated, self.corrected, PATCH, **kwargs)
            image, labels, ignore, share, extra = data.image, data.labels, data.ignore, data.focus_share, data.extra_slices
            weights = data.pixel_weights
        data_s = time.perf_counter() - started
        config = retrain_config(preset("default").train, model.config, steps=steps, patch_size=PATCH, batch_size=BATCH, seed=seed,
                                learning_rate=learning_rate).replace(ignore_value=ignore)
        first = None
        for event in train_events(image, labels, None, config, init=model, pixel_weights=weights):
            if isinstance(event, TrainingStep) and first is None:
                first = time.perf_counter() - started
            elif isinstance(event, TrainingFinished):
                finished = event
        return finished.model, {"focus_share": round(float(share), 3), "focus_copies": int(extra), "data_s": round(data_s, 1),
                                "first_step_s": round(first, 1) if first is not None else None,
                                "retrain_s": round(time.perf_counter() - started, 1), "steps": finished.steps}


# --------------------------------------------------------------------------- tables


def _spread(values, digits=3) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def _diff(values) -> str:
    v = np.asarray(values, float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():+.4f} ± {se:.4f} [{v.min():+.3f}, {v.max():+.3f}]"


METRICS = (("V_rand", lambda r: r["held"]["v_rand"], 3), ("V_info", lambda r: r["held"]["v_info"], 3),
           ("pixel err", lambda r: r["held"]["pixel_error"], 4), ("painted right rule", lambda r: r["painted_rule"], 3),
           ("painted right argmax", lambda r: r["painted_argmax"], 3),
           ("slice 12 unpainted err", lambda r: r["slice12_unpainted_error_rule"], 4))


def summarize(rounds: list, start: dict, reference: str = "control") -> tuple[dict, str]:
    """Per (mode, lr): spreads over all rounds and paired differences to the ``reference`` mode; (JSON summary, markdown)."""
    groups = {}
    for r in rounds:
        groups.setdefault((r["mode"], r["lr"], r["steps"]), []).append(r)
    by_key = {(r["mode"], r["lr"], r["steps"], r["seed"], r["round"]): r for r in rounds}
    lines = [f"start model: held-out V_rand {start['held']['v_rand']:.3f}, V_info {start['held']['v_info']:.3f}, "
             f"pixel err {start['held']['pixel_error']:.4f}; painted right rule {start['painted_rule']:.3f}, "
             f"argmax {start['painted_argmax']:.3f}", "",
             "Held-out slices 15-19 and painted pixels of slice 12, mean (min-max) over all rounds and seeds:", "",
             "| mode | lr | steps | Retrains | focus share | " + " | ".join(name for name, _, _ in METRICS) + " | s per Retrain (median, min-max) |",
             "|---" * (6 + len(METRICS)) + "|"]
    summary = {}
    order = sorted(groups, key=lambda k: (k[0] == "control", k[0], -k[1], k[2]))
    for key in order:
        rs = groups[key]
        secs = [r["retrain_s"] for r in rs]
        entry = {"retrains": len(rs), "focus_share": rs[0]["focus_share"], "retrain_s_median": statistics.median(secs),
                 **{name: {"mean": round(float(np.mean([f(r) for r in rs])), 4), "min": min(f(r) for r in rs),
                           "max": max(f(r) for r in rs)} for name, f, _ in METRICS}}
        summary[f"{key[0]} lr={key[1]:g} steps={key[2]}"] = entry
        lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | {len(rs)} | {rs[0]['focus_share']:.2f} | "
                     + " | ".join(_spread([f(r) for r in rs], d) for _, f, d in METRICS)
                     + f" | {statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) |")
    lines += ["", f"Paired with {reference!r} (same lr, steps, seed and round): mean ± standard error [min, max] of mode - {reference}:", "",
              "| mode | lr | steps | pairs | " + " | ".join(name for name, _, _ in METRICS) + f" | pairs with rule-painted > {reference} |",
              "|---" * (5 + len(METRICS)) + "|"]
    paired_rows = 0
    for key in order:
        if key[0] == reference:
            continue
        pairs = [(r, by_key[(reference, r["lr"], r["steps"], r["seed"], r["round"])]) for r in groups[key]
                 if (reference, r["lr"], r["steps"], r["seed"], r["round"]) in by_key]
        if not pairs:
            continue
        paired_rows += 1
        wins = sum(a["painted_rule"] > b["painted_rule"] for a, b in pairs)
        diffs = {name: [f(a) - f(b) for a, b in pairs] for name, f, _ in METRICS}
        summary[f"{key[0]} lr={key[1]:g} steps={key[2]}"][f"paired_vs_{reference}"] = {
            "pairs": len(pairs), f"rule_painted_above_{reference}": wins,
            **{name: {"mean": round(float(np.mean(v)), 4), "min": round(float(min(v)), 4), "max": round(float(max(v)), 4)}
               for name, v in diffs.items()}}
        lines.append(f"| {key[0]} | {key[1]:g} | {key[2]} | {len(pairs)} | " + " | ".join(_diff(v) for v in diffs.values())
                     + f" | {wins}/{len(pairs)} |")
    if not paired_rows:
        lines.append(f"| (no mode with a {reference} run of the same lr, steps and seeds) |" + " |" * (4 + len(METRICS)))
    return summary, "\n".join(lines)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="start model (.keras); default: train one (see --minutes)")
    parser.add_argument("--minutes", type=float, default=2.0, help="training time of the start model when --model is not given")
    parser.add_argument("--rounds", type=int, default=4, help="successive Retrains per chain")
    parser.add_argument("--learning-rates", default="1e-3,1e-4", help="comma-separated Retrain learning rates")
    parser.add_argument("--steps", type=int, default=20, help="training steps of one Retrain (the widget's default)")
    parser.add_argument("--seeds", default="1,2", help="comma-separated chain seeds; Retrain k of seed s uses seed 100*s+k")
    parser.add_argument("--modes", default="default,control", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--reference", default="control", help="the mode every other mode is paired with in the table")
    parser.add_argument("--name", default="isbi-retrain")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    learning_rates = [float(x) for x in args.learning_rates.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]

    C.use_src()  # this checkout's napari_unet
    from napari_unet.model_io import load_model, save_model

    image, labels = read_volume()
    payload = C.run_header({"rounds": args.rounds, "learning_rates": learning_rates, "steps": args.steps, "seeds": seeds,
                            "modes": modes, "patch_size": PATCH, "batch_size": BATCH, "held_out": HELD,
                            "base_slices": BASE, "corrected_slice": CORRECTED_SLICE})
    start_path = args.model
    if start_path is None:
        start_path = ROOT / "benchmarks" / "results" / f"{args.name}-start.keras"
        if start_path.exists():
            print(f"start model: reusing {start_path} (delete it to train a new one)", flush=True)
            payload["start_model"] = {"path": str(start_path), "trained": False}
        else:
            print(f"start model: default preset, {args.minutes:g} min on slices {BASE}, seed 0 ...", flush=True)
            started = time.perf_counter()
            model, facts = train_start_model(image, labels, args.minutes)
            save_model(model, start_path)
            payload["start_model"] = {"path": str(start_path), "trained": True, "minutes": args.minutes,
                                      "seconds": round(time.perf_counter() - started, 1), **facts}
            print(f"start model: {facts['steps']} steps, saved {start_path}", flush=True)
    else:
        payload["start_model"] = {"path": str(start_path), "trained": False}
    start_model = load_model(start_path)
    payload["start_model"]["boundary_rule"] = start_model.boundary_rule

    painted = painted_mask(start_model, image, labels)
    truth = labels[CORRECTED_SLICE][painted]
    payload["corrections"] = {"pixels": int(painted.sum()), "to_membrane": int((truth == 0).sum()), "to_cell": int((truth != 0).sum())}
    print(f"corrections: {json.dumps(payload['corrections'])}", flush=True)
    experiment = Experiment(image, labels, painted)
    payload["start"] = experiment.judge(start_model)
    print(f"start: {json.dumps(payload['start'])}", flush=True)

    rounds = payload["rounds"] = []
    for learning_rate in learning_rates:
        for mode in modes:
            for seed in seeds:
                model = start_model
                for k in range(1, args.rounds + 1):
                    model, facts = experiment.retrain(model, mode, learning_rate, args.steps, 100 * seed + k)
                    record = {"mode": mode, "lr": learning_rate, "steps": args.steps, "seed": seed, "round": k, **facts,
                              **experiment.judge(model)}
                    rounds.append(record)
                    print(json.dumps(record), flush=True)
                    write_results(args.name, payload)  # partial results survive an interrupted run
    payload["summary"], table = summarize(rounds, payload["start"], args.reference)
    write_results(args.name, payload)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
