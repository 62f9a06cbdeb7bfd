#!/usr/bin/env python
"""Border reach of the membrane rule on saved ISBI models: how far from a kept region border a pixel above the
threshold may lie and still count as membrane (validation 12-14 vs unseen 15-19).

    python benchmarks/isbi_border_reach.py A.keras [B.keras ...] [--reaches none,2,3,4,6]
        [--merge-levels 0.5,0.6,0.7] [--name isbi-border-reach]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model: for every reach ("none" keeps
every pixel above the threshold), the rule is tuned on 12-14 as training tunes it (``tune_boundary_rule`` over
``candidate_closings(levels, reach)``; levels: ``--merge-levels``, else those the model's training recorded) and
the labels of 12-14 and of the unseen 15-19 are scored; then the mean over models and, per reach, on how many
models it beats the first reach given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, add_merge_levels_argument, cell_scores, membrane_probabilities, merge_levels_for, parse_saved_models, read_isbi_volume, write_results  # noqa: E402
from isbi_rule_smoothing import METRICS, PARTS, better  # noqa: E402


def add_arguments(parser) -> None:
    parser.add_argument("--reaches", default="none,2,3,4,6",
                        help="comma-separated reaches in pixels, 'none' for no limit; the first is the reference")
    add_merge_levels_argument(parser)


def parse_reach(text: str):
    return None if text.strip().lower() == "none" else float(text)


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-border-reach", add_arguments)
    if args is None:
        return 0

    from napari_unet.postprocess import boundary_mask, candidate_closings, tune_boundary_rule

    reaches = [parse_reach(text) for text in args.reaches.split(",")]
    names = [str(reach) for reach in reaches]
    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        levels = merge_levels_for(path, args.merge_levels)
        rows = {}
        for name, reach in zip(names, reaches):
            rule, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=candidate_closings(levels, reach))
            cell_prediction = np.stack([~boundary_mask(plane, **rule) for plane in probability])
            rows[name] = {"rule": rule, **{part: cell_scores(cell_prediction[where], cells[where]) for part, where in PARTS.items()}}
        per_model[path.stem] = {"merge_levels": list(levels), "reaches": rows}
        print(path.stem, *(f"reach {n}: level {r['rule']['merge_below']} {r['judge']['isbi_pixel_error']:.4f} / "
                           f"{r['judge']['v_rand']:.4f} / {r['judge']['v_info']:.4f}" for n, r in rows.items()), flush=True)

    reference = names[0]
    mean, wins, losses = {}, {}, {}
    for name in names:
        rows = [r["reaches"][name] for r in per_model.values()]
        base = [r["reaches"][reference] for r in per_model.values()]
        mean[name] = {part: {m: round(float(np.mean([row[part][m] for row in rows])), 4) for m in METRICS} for part in PARTS}
        wins[name] = {m: sum(better(m, row["judge"][m], b["judge"][m]) for row, b in zip(rows, base)) for m in METRICS}
        losses[name] = {m: sum(better(m, b["judge"][m], row["judge"][m]) for row, b in zip(rows, base)) for m in METRICS}
    print(f"reach  validation 12-14 (ISBI pixel error, V_rand, V_info)  unseen 15-19  "
          f"models better / worse than reach {reference} (of {len(per_model)})")
    for name, row in mean.items():
        print(name, *(" ".join(f"{row[p][m]:.4f}" for m in METRICS) for p in PARTS), wins[name], losses[name])
    write_results(args.name, {"models": list(per_model), "reaches": names, "mean": mean, "better_than_reference": wins,
                               "worse_than_reference": losses, "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
