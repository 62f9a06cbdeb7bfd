#!/usr/bin/env python
"""Where the ISBI errors are: per-slice scores on the unseen slices 15-19, each model alone and all averaged.

    python benchmarks/isbi_slices.py seed0.keras [seed1.keras ...] [--figure docs/isbi-worst-slice.png]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14): predicts slices
12-19 as ``predict`` does on this CPU (its default test-time augmentation and precision), chooses the membrane
rule on 12-14 from those probabilities (training chooses it without TTA; on the 8 models of session 12 both gave
the same rule), and reports V_rand (with its split and merge parts), V_info and pixel error of every judged
slice, for each model and, given several, for the mean probability of all of them (an ensemble). ``--figure``
draws the worst slice of the ensemble (or of the one model): the image with the true membranes, the membrane
probability, and the predicted membranes with the region borders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, ROOT, parse_saved_models, read_isbi_volume  # noqa: E402

SLICES = range(12, 20)
JUDGED = list(SLICES)[N_VAL:]


def per_slice_scores(predicted_cells, cells) -> list[dict]:
    """Scores of each (Y, X) slice of the bool ``predicted_cells`` against the bool ``cells``."""
    from napari_unet.metrics import isbi_pixel_error, isbi_scores, pixel_error

    rows = []
    for prediction, truth in zip(predicted_cells, cells):
        s = isbi_scores(prediction, truth)
        rows.append({key: round(float(s[key]), 4) for key in ("v_rand", "v_rand_split", "v_rand_merge", "v_info")}
                    | {"pixel_error": round(float(pixel_error(prediction, truth)), 4),
                       "isbi_pixel_error": round(float(isbi_pixel_error(prediction, truth)), 4)})
    return rows


def draw_slice(path: Path, image, cells, probability, rule, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_unet.postprocess import boundary_mask

    borders = boundary_mask(probability, **rule)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(cells, [0.5], colors="red", linewidths=0.6)
    axes[0].set_title("image, true membranes (red)")
    axes[1].imshow(probability, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("membrane probability")
    axes[2].imshow(image, cmap="gray")
    axes[2].imshow(np.ma.masked_equal(borders, 0), cmap="autumn", alpha=0.8)
    axes[2].set_title("predicted membranes and region borders")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=60)
    tmp.replace(path)


def main(argv=None) -> int:
    def add_figure(parser):
        parser.add_argument("--figure", type=Path, help="PNG of the ensemble's worst judged slice")

    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-slices", add_figure)
    if args is None:
        return 0

    from napari_unet.metrics import isbi_pixel_error
    from napari_unet.model_io import load_model
    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule
    from napari_unet.predict import predict

    image, cells = read_isbi_volume()
    probabilities, report = [], {}

    def judge(name: str, probability) -> dict:
        rule, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=CANDIDATE_CLOSINGS)
        predicted_cells = np.stack([~boundary_mask(plane, **rule) for plane in probability[N_VAL:]])
        rows = per_slice_scores(predicted_cells, cells[N_VAL:])
        entry = {"rule": rule, "slices": dict(zip(JUDGED, rows)),
                 "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}}
        # ISBI's pixel error sums its counts over the stack rather than averaging slices
        entry["mean"]["isbi_pixel_error"] = round(float(isbi_pixel_error(predicted_cells, cells[N_VAL:])), 4)
        print(name, "V_rand per slice", [r["v_rand"] for r in rows], "mean", entry["mean"], flush=True)
        return entry

    for path in args.models:
        model = load_model(path)
        result = predict(model, image, close_boundaries=False, slices=SLICES)
        probabilities.append(result.probabilities[..., model.class_values.index(0)].astype(np.float32))
        report[path.stem] = judge(path.stem, probabilities[-1])
    ensemble = np.mean(probabilities, axis=0)
    if len(probabilities) > 1:
        report["ensemble"] = judge(f"ensemble of {len(probabilities)}", ensemble)
    shown = "ensemble" if len(probabilities) > 1 else args.models[0].stem

    if args.figure:
        slices = report[shown]["slices"]
        worst = min(slices, key=lambda z: slices[z]["v_rand"])
        i = JUDGED.index(worst)
        s = slices[worst]
        networks = f"mean of {len(probabilities)} networks" if len(probabilities) > 1 else f"network {shown}"
        title = (f"ISBI slice {worst}, {networks}: V_rand {s['v_rand']:.3f} "
                 f"(split {s['v_rand_split']:.3f}, merge {s['v_rand_merge']:.3f}), V_info {s['v_info']:.3f}")
        draw_slice(args.figure, image[worst], cells[N_VAL + i], ensemble[N_VAL + i], report[shown]["rule"], title)
        print(f"wrote {args.figure}", file=sys.stderr)

    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"models": [str(p) for p in args.models], "judged": JUDGED, "report": report}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
