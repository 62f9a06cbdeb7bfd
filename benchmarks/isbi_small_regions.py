#!/usr/bin/env python
"""Small enclosed regions on saved ISBI models: cell regions below a size turned to membrane, paired.

    python benchmarks/isbi_small_regions.py A.keras [B.keras ...] [--name isbi-small-regions]   # ~1 min per model

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14): predicts slices
12-19 once (cached beside each model, as ``isbi_merging.py`` does), applies the membrane rule training picks on
12-14, then turns every 4-connected cell region smaller than ``min_region_size`` pixels into membrane, so ISBI's
border thinning (and a user's instance labelling) hands it to the regions around it: a mitochondrion or vesicle
outlined inside a cell stops being a cell of its own. Reports pixel error (both definitions), V_rand and V_info on
12-14 and on the unseen 15-19 for every size, and the size chosen on 12-14 by V_rand and by V_info.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402

SIZES = (0, 16, 32, 64, 128, 256, 512)


def absorb_small_regions(membrane, min_region_size: int) -> np.ndarray:
    """(Y, X) bool membrane with the 4-connected non-membrane regions below ``min_region_size`` pixels added."""
    from skimage.morphology import remove_small_objects

    if min_region_size <= 0:
        return membrane.copy()
    return ~remove_small_objects(~membrane, max_size=min_region_size - 1, connectivity=1)


def _best(candidates, key):
    """The first candidate (lowest merge level, then smallest size) with the highest validation ``key``."""
    return max(candidates, key=lambda c: (key(c["validation"]), -c["merge_below"], -c["min_region_size"]))


STRATEGIES = {
    "shipped (V_rand, no size)": lambda cs: _best([c for c in cs if c["min_region_size"] == 0], lambda v: v["v_rand"]),
    "V_rand over sizes": lambda cs: _best(cs, lambda v: v["v_rand"]),
    "V_info over sizes": lambda cs: _best(cs, lambda v: v["v_info"]),
    "V_rand + V_info over sizes": lambda cs: _best(cs, lambda v: v["v_rand"] + v["v_info"]),
}


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-small-regions")
    if args is None:
        return 0

    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule

    image, cells = read_isbi_volume()
    rows = []
    for path in args.models:
        probability = membrane_probabilities(path, image)
        shipped, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=CANDIDATE_CLOSINGS)
        row = {"model": str(path), "shipped_rule": shipped, "candidates": []}
        for closing in CANDIDATE_CLOSINGS:
            rule = {"threshold": shipped["threshold"], **closing}
            membrane = np.stack([boundary_mask(plane, **rule) for plane in probability])
            for size in SIZES:
                predicted_cells = ~np.stack([absorb_small_regions(plane, size) for plane in membrane])
                row["candidates"].append({"merge_below": closing["merge_below"], "min_region_size": size,
                                          "validation": cell_scores(predicted_cells[:N_VAL], cells[:N_VAL]),
                                          "judged": cell_scores(predicted_cells[N_VAL:], cells[N_VAL:])})
        for name, choose in STRATEGIES.items():
            row[name] = choose(row["candidates"])
        rows.append(row)
        print(path.name, {name: (row[name]["merge_below"], row[name]["min_region_size"], row[name]["judged"])
                          for name in STRATEGIES}, flush=True)
    metrics = ("pixel_error", "isbi_pixel_error", "v_rand", "v_info")
    mean = {name: {m: round(float(np.mean([r[name]["judged"][m] for r in rows])), 4) for m in metrics}
            for name in STRATEGIES}
    for size in SIZES:  # every size with the shipped merge level
        mean[f"size {size}, shipped merge level"] = {
            m: round(float(np.mean([next(c for c in r["candidates"] if c["min_region_size"] == size
                                         and c["merge_below"] == r["shipped_rule"]["merge_below"])["judged"][m]
                                    for r in rows])), 4) for m in metrics}
    print("mean on 15-19", json.dumps(mean, indent=1))
    write_results(args.name, {"sizes": SIZES, "rows": rows, "mean": mean})
    return 0


if __name__ == "__main__":
    sys.exit(main())
