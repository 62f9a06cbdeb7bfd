#!/usr/bin/env python
"""Merge level of the membrane rule on saved ISBI models: each level, and the level tuned from candidate sets.

    python benchmarks/isbi_merge_levels.py A.keras [B.keras ...] [--levels 0.5,0.55,0.6,0.65,0.7,0.75]
        [--candidates 0.5,0.6 --candidates 0.5,0.6,0.7 ...] [--tta] [--name isbi-merge-levels]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model. With the model's threshold as
training tunes it and the tuned rules' smoothing (``postprocess.MERGE_SIGMA``), every merge level is scored on
the validation slices 12-14 and the unseen slices 15-19. Then, for each candidate set, the level training would
pick from it (best V_rand on 12-14, ties to the earlier level, as ``tune_boundary_rule``) is judged on 15-19;
the first set is the reference whose wins are counted. ``--tta`` does all of this on the probabilities of
test-time augmentation (the four quarter turns, cached apart), which ``predict`` writes where TTA is on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402
from isbi_rule_smoothing import METRICS, PARTS, better  # noqa: E402


DEFAULT_CANDIDATES = ("0.5,0.6", "0.5,0.6,0.7", "0.5,0.55,0.6,0.65,0.7", "0.6,0.65,0.7")


def add_arguments(parser) -> None:
    parser.add_argument("--levels", default="0.5,0.55,0.6,0.65,0.7,0.75", help="comma-separated merge levels to score")
    # One set per flag: a list-valued option would swallow the model paths that follow it.
    parser.add_argument("--candidates", action="append", default=None, metavar="LEVELS",
                        help="a candidate set (comma-separated levels, each in --levels), repeat the flag for more; "
                             f"the first is the reference (default: {' '.join(DEFAULT_CANDIDATES)})")
    parser.add_argument("--tta", action="store_true", help="score the probabilities of test-time augmentation")


def pick_level(rows: dict, candidates: list[str]) -> str:
    """The candidate level with the best validation V_rand (ties to the earlier one)."""
    return max(candidates, key=lambda level: (rows[level]["val"]["v_rand"], -candidates.index(level)))


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-merge-levels", add_arguments)
    if args is None:
        return 0

    from napari_unet.postprocess import CANDIDATE_CLOSINGS, MERGE_SIGMA, boundary_mask, tune_boundary_rule

    levels = [str(float(level)) for level in args.levels.split(",")]
    candidate_sets = {text: [str(float(level)) for level in text.split(",")] for text in args.candidates or DEFAULT_CANDIDATES}
    unknown = {level for levels_ in candidate_sets.values() for level in levels_} - set(levels)
    if unknown:
        raise SystemExit(f"candidate levels {sorted(unknown)} are not in --levels")
    closing = CANDIDATE_CLOSINGS[0]  # the tuned rules' smoothing and minima depth
    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image, tta=args.tta)
        threshold = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=())[0]["threshold"]
        rows = {}
        for level in levels:
            rule = {**closing, "threshold": threshold, "merge_below": float(level)}
            cell_prediction = np.stack([~boundary_mask(plane, **rule) for plane in probability])
            rows[level] = {part: cell_scores(cell_prediction[where], cells[where]) for part, where in PARTS.items()}
        picks = {name: pick_level(rows, members) for name, members in candidate_sets.items()}
        per_model[path.stem] = {"threshold": threshold, "levels": rows, "picked": picks}
        print(path.stem, "threshold", threshold, "picked", picks,
              *(f"{level}: {row['judge']['v_rand']:.4f}/{row['judge']['v_info']:.4f}" for level, row in rows.items()), flush=True)

    def mean_of(scores) -> dict:
        return {part: {m: round(float(np.mean([s[part][m] for s in scores])), 4) for m in METRICS} for part in PARTS}

    fixed = {level: mean_of([r["levels"][level] for r in per_model.values()]) for level in levels}
    tuned = {}
    reference = next(iter(candidate_sets))
    for name in candidate_sets:
        chosen = [r["levels"][r["picked"][name]] for r in per_model.values()]
        base = [r["levels"][r["picked"][reference]] for r in per_model.values()]
        tuned[name] = {**mean_of(chosen),
                       "better_than_reference": {m: sum(better(m, c["judge"][m], b["judge"][m]) for c, b in zip(chosen, base)) for m in METRICS},
                       "worse_than_reference": {m: sum(better(m, b["judge"][m], c["judge"][m]) for c, b in zip(chosen, base)) for m in METRICS}}
    print(f"fixed level  validation 12-14 (pixel V_rand V_info)  unseen 15-19   ({len(per_model)} models)")
    for level, row in fixed.items():
        print(level, *(" ".join(f"{row[p][m]:.4f}" for m in METRICS) for p in PARTS))
    print(f"tuned from   validation 12-14  unseen 15-19  better / worse than {reference}")
    for name, row in tuned.items():
        print(name, *(" ".join(f"{row[p][m]:.4f}" for m in METRICS) for p in PARTS), row["better_than_reference"], row["worse_than_reference"])
    write_results(args.name, {"models": list(per_model), "tta": args.tta, "sigma": MERGE_SIGMA, "fixed": fixed, "tuned": tuned,
                               "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
