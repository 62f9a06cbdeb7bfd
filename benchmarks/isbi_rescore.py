"""Re-choose the membrane rule of saved ISBI models and score them on the unseen slices 15-19.

    python benchmarks/isbi_rescore.py m-10min.keras [more.keras ...]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-14, validation 12-14): predicts
slices 12-19 once, tunes the rule with the current ``postprocess.tune_boundary_rule`` on 12-14 as training
does, and prints the rule stored in the file, the newly chosen rule and their scores on 15-19. Lets a
post-processing change be judged on the same networks without retraining them. ``--recompute-batch-norm``
scores each network again after recomputing its batch-norm statistics as training now ends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
VAL_SLICES, JUDGE_SLICES = slice(12, 15), slice(15, 20)
TRAINING_SLICES = range(0, 12)  # what isbi_accuracy.py models trained on (0-14 minus validation 12-14)
FIXED_RULE = {"threshold": 0.7, "seed_level": None, "merge_below": 0.6, "minima_depth": 0.05}  # the most chosen rule


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--recompute-batch-norm", action="store_true",
                        help="also score each network after recomputing its batch-norm statistics on unaugmented "
                             "centre tiles of its training slices 0-11, as training now ends; adds a fixed rule")
    parser.add_argument("--batch-norm-tiles", default="",
                        help="comma-separated tile counts (e.g. 12,4,2,1): score each network after recomputing its "
                             "batch-norm statistics on that many 512² centre tiles of evenly chosen slices of 0-11 "
                             "(rule re-chosen on 12-14, as training does)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0

    import tifffile

    from napari_unet.metrics import isbi_scores
    from napari_unet.model_io import load_model
    from napari_unet.postprocess import boundary_mask, tune_boundary_rule
    from napari_unet.predict import predict
    from napari_unet.train import recompute_batch_norm

    image = tifffile.imread(DATA / "train-volume.tif")
    cells = tifffile.imread(DATA / "train-labels.tif") != 0
    both = slice(VAL_SLICES.start, JUDGE_SLICES.stop)
    n_val = VAL_SLICES.stop - VAL_SLICES.start

    def score(model, path, batch_norm: str) -> None:
        membrane_index = model.class_values.index(0)
        probability = predict(model, image, close_boundaries=False, slices=range(both.start, both.stop), tta=False).probabilities[..., membrane_index]
        new_rule, val_v_rand = tune_boundary_rule(probability[:n_val], cells[VAL_SLICES])
        rules = [("stored", model.boundary_rule), ("re-chosen", new_rule)]
        if args.recompute_batch_norm:
            rules.append(("fixed", FIXED_RULE))
        for name, rule in rules:
            if rule is None:
                continue
            predicted_cells = np.stack([~boundary_mask(plane, **rule) for plane in probability[n_val:]])
            scores = isbi_scores(predicted_cells, cells[JUDGE_SLICES])
            row = {
                "model": str(path),
                "batch_norm": batch_norm,
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

    for path in args.models:
        model = load_model(path)
        if model.boundary_value != 0:
            print(f"{path}: not an ISBI membrane model (boundary class {model.boundary_value})", file=sys.stderr)
            continue
        if args.batch_norm_tiles:
            for tiles in [int(t) for t in args.batch_norm_tiles.split(",")]:
                model = load_model(path)
                recompute_batch_norm(model, image, TRAINING_SLICES, max_tiles=tiles)
                score(model, path, f"{tiles} tiles")
            continue
        score(model, path, "as saved")
        if args.recompute_batch_norm and model.config.batch_norm:
            recompute_batch_norm(model, image, TRAINING_SLICES)
            score(model, path, "recomputed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
