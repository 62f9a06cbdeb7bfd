"""Hierarchical against one-shot region merging on saved ISBI models: every setting, and the rule chosen on 12-14.

    python benchmarks/isbi_merging.py A.keras [B.keras ...] [--name isbi-merging]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14): predicts slices
12-19 once (cached beside each model as ``MODEL.p12-19.npy``), then for both merging modes of
``postprocess.merge_regions`` scores every minima depth x merge level on the validation slices 12-14 and the
unseen slices 15-19, and the rule ``tune_boundary_rule`` picks on 12-14 from each mode's candidates (the
model's threshold rule as training chooses it). The comparison is paired: same networks, same probabilities.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "isbi2012"
N_VAL = 3  # slices 12-14 of the 12-19 block; 15-19 are judged
DEPTHS, LEVELS = (0.02, 0.05), (0.4, 0.5, 0.6, 0.7)


def membrane_probabilities(model_path: Path, image, tta: bool = False) -> np.ndarray:
    """(8, Y, X) float32 membrane probability of slices 12-19, cached as float16 beside the model; ``tta``: the mean
    over the four quarter turns, as ``predict(..., tta=True)`` writes it."""
    cache = model_path.with_suffix(".tta-p12-19.npy" if tta else ".p12-19.npy")
    if cache.exists():
        return np.load(cache).astype(np.float32)
    from napari_unet.model_io import load_model
    from napari_unet.predict import predict

    model = load_model(model_path)
    result = predict(model, image, close_boundaries=False, slices=range(12, 20), tta=tta)
    probability = result.probabilities[..., model.class_values.index(0)]
    np.save(cache, probability.astype(np.float16))
    return probability.astype(np.float32)


def parse_saved_models(argv, description: str, default_name: str, add_arguments=None):
    """Command-line arguments (``models``, ``name``, and what ``add_arguments(parser)`` adds), or None when the
    shared ISBI data is absent."""
    parser = C.argument_parser(description=description)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--name", default=default_name)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return None
    return args


def add_merge_levels_argument(parser) -> None:
    parser.add_argument("--merge-levels", default=None,
                        help="comma-separated merge levels training may pick (default: the levels each model recorded)")


def merge_levels_for(path: Path, text) -> tuple:
    """The merge levels ``text`` lists (comma-separated), else those the training of the model at ``path`` recorded."""
    if text:
        return tuple(float(level) for level in text.split(","))
    from napari_unet.model_io import load_model

    return load_model(path).train_config.merge_levels  # files written before session 30 load as (0.5, 0.6)


def read_isbi_volume() -> tuple[np.ndarray, np.ndarray]:
    """The (20, 512, 512) uint8 training volume and the (8, 512, 512) bool cell mask of slices 12-19."""
    import tifffile

    return tifffile.imread(DATA / "train-volume.tif"), tifffile.imread(DATA / "train-labels.tif")[12:20] != 0


def write_results(name: str, payload) -> Path:
    """``payload`` as benchmarks/results/NAME.json (written to a temporary file, then renamed); its path."""
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    partial = out.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=1))
    partial.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return out


def cell_scores(cell_prediction: np.ndarray, cells: np.ndarray) -> dict:
    """Pixel error (mismatch fraction and ISBI's 1 - pixel F-score), V_rand and V_info (4 digits) of a (Z, Y, X)
    bool cell prediction against the truth."""
    from napari_unet.metrics import isbi_pixel_error, isbi_scores, pixel_error

    s = isbi_scores(cell_prediction, cells)
    return {"v_rand": round(float(s["v_rand"]), 4), "v_info": round(float(s["v_info"]), 4),
            "pixel_error": round(float(pixel_error(cell_prediction, cells)), 4),
            "isbi_pixel_error": round(float(isbi_pixel_error(cell_prediction, cells)), 4)}


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-merging")
    if args is None:
        return 0

    from napari_unet.metrics import isbi_scores
    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule

    image, cells = read_isbi_volume()

    def scores(probability, truth, rule) -> dict:
        s = isbi_scores(np.stack([~boundary_mask(plane, **rule) for plane in probability]), truth)
        return {"v_rand": round(float(s["v_rand"]), 4), "v_info": round(float(s["v_info"]), 4)}

    report = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        val, judge = probability[:N_VAL], probability[N_VAL:]
        threshold = tune_boundary_rule(val, cells[:N_VAL], closings=())[0]["threshold"]
        rows = []
        for hierarchical in (False, True):
            for depth in DEPTHS:
                for level in LEVELS:
                    rule = {"threshold": threshold, "merge_below": level, "minima_depth": depth, "hierarchical": hierarchical}
                    started = time.perf_counter()
                    row = {**rule, "val": scores(val, cells[:N_VAL], rule), "judge": scores(judge, cells[N_VAL:], rule)}
                    row["seconds_per_slice"] = round((time.perf_counter() - started) / len(probability), 3)
                    rows.append(row)
                    print(path.stem, json.dumps(row), flush=True)
        chosen = {}
        for hierarchical in (False, True):
            closings = [{**c, "hierarchical": hierarchical} for c in CANDIDATE_CLOSINGS]
            rule, val_v_rand = tune_boundary_rule(val, cells[:N_VAL], closings=closings)
            chosen["hierarchical" if hierarchical else "one-shot"] = {
                "rule": rule, "val_v_rand": round(val_v_rand, 4), "judge": scores(judge, cells[N_VAL:], rule)}
        print(path.stem, "chosen on 12-14:", json.dumps(chosen), flush=True)
        report[path.stem] = {"threshold": threshold, "rows": rows, "chosen": chosen}
    write_results(args.name, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
