#!/usr/bin/env python
"""Smoothing of the membrane rule's watershed (sigma) on saved ISBI models: validation 12-14 vs unseen 15-19.

    python benchmarks/isbi_rule_smoothing.py A.keras [B.keras ...] [--sigmas 1,2,3,4,5] [--name isbi-rule-smoothing]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model: for every sigma, the rule is
tuned on 12-14 as training tunes it (``tune_boundary_rule`` over ``CANDIDATE_CLOSINGS`` with that sigma), and
the labels of 12-14 and of the unseen 15-19 are scored; then the mean over models and, per sigma, on how
many models it beats the first sigma given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402

PARTS = {"val": slice(0, N_VAL), "judge": slice(N_VAL, None)}
METRICS = ("isbi_pixel_error", "v_rand", "v_info")


def better(metric: str, score: float, reference: float) -> bool:
    """Whether ``score`` beats ``reference`` (lower pixel error, higher V_rand / V_info)."""
    return score < reference if metric == "isbi_pixel_error" else score > reference


def add_arguments(parser) -> None:
    parser.add_argument("--sigmas", default="1,2,3,4,5", help="comma-separated smoothing sigmas (pixels); the first is the reference")


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-rule-smoothing", add_arguments)
    if args is None:
        return 0

    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule

    sigmas = [float(s) for s in args.sigmas.split(",")]
    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        rows = {}
        for sigma in sigmas:
            closings = tuple({**closing, "sigma": sigma} for closing in CANDIDATE_CLOSINGS)
            rule, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=closings)
            cell_prediction = np.stack([~boundary_mask(plane, **rule) for plane in probability])
            rows[str(sigma)] = {"rule": rule, **{part: cell_scores(cell_prediction[where], cells[where]) for part, where in PARTS.items()}}
        per_model[path.stem] = rows
        print(path.stem, *(f"sigma {s}: {r['judge']['v_rand']:.4f} / {r['judge']['v_info']:.4f}" for s, r in rows.items()), flush=True)

    reference = str(sigmas[0])
    mean, wins = {}, {}
    for sigma in map(str, sigmas):
        mean[sigma] = {part: {m: round(float(np.mean([r[sigma][part][m] for r in per_model.values()])), 4) for m in METRICS} for part in PARTS}
        wins[sigma] = {m: sum(better(m, r[sigma]["judge"][m], r[reference]["judge"][m]) for r in per_model.values()) for m in METRICS}
    print(f"sigma  validation 12-14 (pixel V_rand V_info)  unseen 15-19  models better than sigma {reference} (of {len(per_model)})")
    for sigma, row in mean.items():
        print(sigma, *(" ".join(f"{row[p][m]:.4f}" for m in METRICS) for p in PARTS), wins[sigma])
    write_results(args.name, {"models": list(per_model), "sigmas": sigmas, "mean": mean, "better_than_reference": wins,
                               "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
