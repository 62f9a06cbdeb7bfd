#!/usr/bin/env python
"""Pixel noise of the ISBI slices, and what it costs saved models on the unseen slices 15-19.

    python benchmarks/isbi_noise.py                       # noise per slice only (seconds); results/isbi-noise.json
    python benchmarks/isbi_noise.py m30.keras ...         # + each model on 15-19 as they are and lightly blurred

Noise per slice: the standard deviation of ``x - gaussian(x, 1 px)`` (the finest scale, where membranes are wider
than the filter and noise is not), of the raw slices and of the slices as the default preset normalises them
(percentiles, local contrast), for the training volume (0-19) and the test volume. ``noise_for_normalised_std``
adds white Gaussian noise of a known std to the normalised slices 10-14 and measures them the same way, so the
measure reads as "white noise of std s".

With models (saved by ``isbi_accuracy.py --save-model``: trained on 0-11, validation 12-14): slices 15-19 are
predicted as they are and after a Gaussian blur of each sigma in ``--sigmas`` (which removes pixel noise and some
detail; 12-14 stay as they are); the membrane rule is chosen on 12-14 as training chooses it and the labels of 15-19
are scored. A model that gains from the blur is hurt by the noise it did not see in training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from isbi_merging import DATA, N_VAL, cell_scores, read_isbi_volume, write_results  # noqa: E402

SLICES = range(12, 20)


def fine_noise(plane) -> float:
    """Std of a (Y, X) plane minus its 1-pixel Gaussian blur."""
    from scipy import ndimage

    plane = np.asarray(plane, np.float32)
    return float((plane - ndimage.gaussian_filter(plane, 1.0)).std())


def noise_table() -> dict:
    import tifffile

    from napari_unet.config import preset
    from napari_unet.data import normalize

    config = preset("default")
    percentiles, sigma = config.train.percentiles, config.model.local_contrast_sigma
    out = {}
    for name in ("train-volume", "test-volume"):
        raw = tifffile.imread(DATA / f"{name}.tif")
        normalised = normalize(raw, percentiles, sigma)
        out[name] = {"raw": [round(fine_noise(p), 2) for p in raw], "normalised": [round(fine_noise(p), 4) for p in normalised]}
        if name == "train-volume":
            rng = np.random.default_rng(0)
            out["noise_for_normalised_std"] = {
                str(std): round(float(np.mean([fine_noise(p + rng.normal(0, std, p.shape)) for p in normalised[10:15]])), 4)
                for std in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1)
            }
    return out


def blurred_scores(paths, sigmas) -> list:
    from scipy import ndimage

    from napari_unet.model_io import load_model
    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule
    from napari_unet.predict import predict

    image, cells = read_isbi_volume()
    rows = []
    for path in paths:
        model = load_model(path)
        membrane = model.class_values.index(0)
        row = {"model": str(path)}
        for sigma in (0.0, *sigmas):
            stack = image.astype(np.float32)
            if sigma:
                stack[15:20] = [ndimage.gaussian_filter(plane, sigma) for plane in stack[15:20]]
            probability = predict(model, stack, close_boundaries=False, slices=SLICES, tta=False).probabilities[..., membrane]
            rule, _ = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=CANDIDATE_CLOSINGS)
            labels = np.stack([~boundary_mask(plane, **rule) for plane in probability[N_VAL:]])
            row[f"sigma {sigma:g}"] = cell_scores(labels, cells[N_VAL:])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--sigmas", default="0.5,0.7", help="comma-separated blur sigmas (pixels) for slices 15-19")
    parser.add_argument("--name", default="isbi-noise")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (needs the project's shared data beside the repo)")
        return 0
    payload = {"noise": noise_table()}
    for name in ("train-volume", "test-volume"):
        values = payload["noise"][name]["normalised"]
        print(name, "normalised fine-scale noise per slice:", " ".join(f"{v:.3f}" for v in values))
    print("white noise std -> measure:", json.dumps(payload["noise"]["noise_for_normalised_std"]))
    if args.models:
        sigmas = [float(s) for s in args.sigmas.split(",") if s]
        payload["models"] = blurred_scores(args.models, sigmas)
        keys = [k for k in payload["models"][0] if k.startswith("sigma")]
        payload["mean"] = {k: {m: round(float(np.mean([r[k][m] for r in payload["models"]])), 4)
                               for m in ("isbi_pixel_error", "v_rand", "v_info")} for k in keys}
        print("mean", json.dumps(payload["mean"]))
    write_results(args.name, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
