"""Re-choose the membrane rule of saved ISBI models and score them on the unseen slices 15-19.

    python benchmarks/isbi_rescore.py m-10min.keras [more.keras ...]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-14, validation 12-14): predicts
slices 12-19 once, tunes the rule with the current ``postprocess.tune_boundary_rule`` on 12-14 as training
does, and prints the rule stored in the file, the newly chosen rule and their scores on 15-19. Lets a
post-processing change be judged on the same networks without retraining them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
VAL_SLICES, JUDGE_SLICES = slice(12, 15), slice(15, 20)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0

    import tifffile

    from napari_unet.metrics import isbi_scores
    from napari_unet.model_io import load_model
    from napari_unet.postprocess import boundary_mask, tune_boundary_rule
    from napari_unet.predict import predict

    image = tifffile.imread(DATA / "train-volume.tif")
    cells = tifffile.imread(DATA / "train-labels.tif") != 0
    for path in args.models:
        model = load_model(path)
        if model.boundary_value != 0:
            print(f"{path}: not an ISBI membrane model (boundary class {model.boundary_value})", file=sys.stderr)
            continue
        membrane_index = model.class_values.index(0)
        both = slice(VAL_SLICES.start, JUDGE_SLICES.stop)
        probability = predict(model, image[both], close_boundaries=False).probabilities[..., membrane_index]
        n_val = VAL_SLICES.stop - VAL_SLICES.start
        new_rule, val_v_rand = tune_boundary_rule(probability[:n_val], cells[VAL_SLICES])
        for name, rule in (("stored", model.boundary_rule), ("re-chosen", new_rule)):
            if rule is None:
                continue
            predicted_cells = np.stack([~boundary_mask(plane, **rule) for plane in probability[n_val:]])
            scores = isbi_scores(predicted_cells, cells[JUDGE_SLICES])
            row = {
                "model": str(path),
                "rule": name,
                "boundary_rule": rule,
                "pixel_error": round(float(np.mean(predicted_cells != cells[JUDGE_SLICES])), 4),
                "v_rand": round(scores["v_rand"], 4),
                "v_rand_split": round(scores["v_rand_split"], 4),
                "v_rand_merge": round(scores["v_rand_merge"], 4),
                "v_info": round(scores["v_info"], 4),
            }
            if name == "re-chosen":
                row["validation_v_rand"] = round(val_v_rand, 4)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
