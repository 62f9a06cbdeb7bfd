#!/usr/bin/env python
"""Test-time augmentation on saved ISBI models: labels on the unseen slices 15-19 with and without it, paired.

    python benchmarks/isbi_tta.py m10.keras ...     # ~10 s per model; results/isbi-tta.json
    python benchmarks/isbi_tta.py --transforms d4 --name isbi-tta-d4 m10.keras ...   # other sets of transforms

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14): predicts slices
12-19 once plainly and once with test-time augmentation (``predict(..., tta=True)``: the four quarter turns;
``--transforms`` swaps in another set for this run: ``d4`` = all 8 rotations and flips, ``flips4`` = identity,
half turn and the two flips, ``flip2`` = identity and one flip, ``half2`` = identity and the half turn, which is
also ``predict(..., tta=2)``), in the precision ``predict`` picks for this CPU. For each, the membrane rule is
chosen on 12-14 as training chooses it (``tune_boundary_rule`` over ``CANDIDATE_CLOSINGS``) and the labels of
15-19 are scored. ``tta_with_plain_rule`` applies the rule chosen here on the plain probabilities to the TTA
ones. ``model_rule`` and ``tta_with_model_rule`` apply the rule saved in the model file, which training chose from
its own candidates (merge levels up to 0.7 after 30-minute budgets); ``tta_as_predicted`` applies the rule that
``predict`` derives from it for TTA (``predict.effective_boundary_rule``: merge level at most
``TTA_MAX_MERGE_LEVEL``, 0.65). ``model_rule`` and ``tta_as_predicted`` are what ``napari-unet predict`` writes
without and with TTA.
Also reports the network seconds per slice.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, parse_saved_models, read_isbi_volume, write_results  # noqa: E402

SLICES = range(12, 20)
TRANSFORMS = {
    "rot4": [(k, False) for k in range(4)],
    "d4": [(k, flip) for k in range(4) for flip in (False, True)],
    "flips4": [(0, False), (2, False), (0, True), (2, True)],
    "flip2": [(0, False), (0, True)],
    "half2": [(0, False), (2, False)],
}


def use_transforms(name: str) -> None:
    """Make ``predict(..., tta=True)`` average over the named set of (quarter turns, flip) pairs (square tiles);
    plain prediction (one view) stays plain."""
    import napari_unet.predict as predict_module

    shipped = predict_module._transforms
    predict_module._transforms = lambda h, w, views, upright=None: TRANSFORMS[name] if views > 1 and h == w and upright is None else shipped(h, w, views, upright)


def main(argv=None) -> int:
    def add_transforms(parser):
        parser.add_argument("--transforms", choices=sorted(TRANSFORMS), default="rot4")

    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-tta", add_transforms)
    if args is None:
        return 0
    use_transforms(args.transforms)

    from napari_unet.model_io import load_model
    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule
    from napari_unet.predict import effective_boundary_rule, predict

    image, cells = read_isbi_volume()

    def scores(probability, truth, rule) -> dict:
        return cell_scores(np.stack([~boundary_mask(plane, **rule) for plane in probability]), truth)

    rows = []
    for path in args.models:
        model = load_model(path)
        membrane = model.class_values.index(0)
        row = {"model": str(path)}
        rules = {}
        for tta in (False, True):
            started = time.perf_counter()
            result = predict(model, image, close_boundaries=False, slices=SLICES, tta=tta)
            seconds = (time.perf_counter() - started) / len(SLICES)
            probability = result.probabilities[..., membrane]
            val, judge = probability[:N_VAL], probability[N_VAL:]
            rule, val_v_rand = tune_boundary_rule(val, cells[:N_VAL], closings=CANDIDATE_CLOSINGS)
            rules[tta] = rule
            name = "tta" if tta else "plain"
            row[name] = {"rule": rule, "val_v_rand": round(val_v_rand, 4), "judge": scores(judge, cells[N_VAL:], rule),
                         "network_seconds_per_slice": round(seconds, 3)}
            if tta:
                row["tta_with_plain_rule"] = scores(judge, cells[N_VAL:], rules[False])
            if model.boundary_rule and not tta:
                row["model_rule"] = scores(judge, cells[N_VAL:], model.boundary_rule)
            elif model.boundary_rule:
                row["tta_with_model_rule"] = scores(judge, cells[N_VAL:], model.boundary_rule)
                predicted_rule = effective_boundary_rule(model, tta_views=len(TRANSFORMS[args.transforms]))
                row["tta_as_predicted"] = scores(judge, cells[N_VAL:], predicted_rule)
        rows.append(row)
        print(json.dumps(row), flush=True)
    judged = {key: [r[key]["judge"] for r in rows] for key in ("plain", "tta")}
    judged["tta_with_plain_rule"] = [r["tta_with_plain_rule"] for r in rows]
    for key in ("model_rule", "tta_with_model_rule", "tta_as_predicted"):
        if all(key in r for r in rows):
            judged[key] = [r[key] for r in rows]
    mean = {key: {m: round(float(np.mean([j[m] for j in scores_])), 4) for m in ("pixel_error", "isbi_pixel_error", "v_rand", "v_info")}
            for key, scores_ in judged.items()}
    print("mean", json.dumps(mean))
    write_results(args.name, {"transforms": args.transforms, "slices": list(SLICES), "validation": list(SLICES)[:N_VAL], "rows": rows, "mean": mean})
    return 0


if __name__ == "__main__":
    sys.exit(main())
