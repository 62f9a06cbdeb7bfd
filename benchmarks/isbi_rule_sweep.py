"""Sweep the membrane rule's minima depth x merge level x threshold on saved ISBI models (validation vs unseen).

    python benchmarks/isbi_rule_sweep.py A.keras [B.keras ...] [--name isbi-rule-sweep]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model: for every setting, V_rand,
V_info and pixel error of the labels (``probability > threshold`` plus the borders of the hierarchically
merged regions) on the validation slices 12-14 and on the unseen slices 15-19, then the mean over models.
It asks whether what the validation slices prefer is what the unseen slices prefer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402

DEPTHS = (0.005, 0.01, 0.02, 0.05)
LEVELS = (0.4, 0.5, 0.6, 0.7)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PARTS = {"val": slice(0, N_VAL), "judge": slice(N_VAL, None)}


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-rule-sweep")
    if args is None:
        return 0

    from napari_unet.postprocess import region_borders

    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        settings = {}
        for depth in DEPTHS:
            for level in LEVELS:
                # boundary_mask(threshold=t, merge_below=level, minima_depth=depth) for every t, merging once
                borders = np.stack([region_borders(plane, merge_below=level, minima_depth=depth) for plane in probability])
                for threshold in THRESHOLDS:
                    cell_prediction = ~((probability > threshold) | borders)
                    row = {part: cell_scores(cell_prediction[where], cells[where]) for part, where in PARTS.items()}
                    settings[f"{depth}/{level}/{threshold}"] = row
            print(path.stem, "depth", depth, "done", flush=True)
        per_model[path.stem] = settings
    mean = {}
    for key in next(iter(per_model.values())):
        mean[key] = {part: {metric: round(float(np.mean([m[key][part][metric] for m in per_model.values()])), 4)
                            for metric in ("v_rand", "v_info", "pixel_error")} for part in PARTS}
    print("depth/level/threshold  validation 12-14 (V_rand V_info pixel)  unseen 15-19")
    for key, row in mean.items():
        print(key, *(f"{row[p]['v_rand']:.3f} {row[p]['v_info']:.3f} {row[p]['pixel_error']:.3f}" for p in PARTS))
    write_results(args.name, {"models": list(per_model), "mean": mean, "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
