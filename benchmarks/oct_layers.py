#!/usr/bin/env python
"""Retinal layers of the OCT circular scan: saved models scored on the columns training held out.

    napari-unet train ../shared/data/oct/circular-scan.tif ../shared/data/oct/circular-scan-layers.tif \\
        -o oct-lc24.keras --epochs 8 --steps-per-epoch 25 --seed 0 [--local-contrast SIGMA]
    python benchmarks/oct_layers.py oct-lc24.keras oct-lc12.keras --name oct-local-contrast

Training on the single B-scan validates on its last 20 % of columns (rounded down to the network's size
multiple); this script predicts the whole scan (no TTA; ``--tta auto`` also as `napari-unet predict` does by default)
and scores exactly those columns: pixel error and the Dice of each of the 10 classes (0 = vitreous, 1-8 retinal
layers, 9 = choroid and below) and their mean, and the mean absolute position error of each of the 9 layer boundaries
in µm (3.872 µm per row, the scan's axial pixel size per ../shared/data/README.md) and its mean over the boundaries.
Writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

OCT = C.SHARED_DATA / "oct"
AXIAL_MICRONS = 3.872  # the B-scan's pixel height (the file's resolution tag says inches where it means mm)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="models trained on circular-scan.tif (.keras)")
    parser.add_argument("--name", default="oct-layers", help="results/<name>.json")
    parser.add_argument("--tta", choices=("off", "auto"), default="off", help="auto: also score predict's default test-time augmentation")
    parser.add_argument("--layers", choices=("model", "both"), default="model", help="both: also score the most probable "
                        "class per pixel against the labelling that keeps the layers in order (models trained before layer "
                        "orders were recorded get the order of the scan's labels, as training records it now)")
    parser.add_argument("--margins", default="0", help="comma-separated margins (px) of the scan mirrored on every side "
                        "before predicting (then cropped): the U-Net paper's extrapolation at the image border")
    args = parser.parse_args(argv)
    margins = [int(m) for m in args.margins.split(",")]
    if not (OCT / "circular-scan.tif").exists():
        print(f"skipped: {OCT} not found (needs ../shared/data beside the repository)")
        return 0
    C.use_src()
    import tifffile

    from napari_unet.labels import layer_order, to_indices
    from napari_unet.metrics import dice_per_class, layer_boundary_errors, pixel_error
    from napari_unet.model_io import load_model
    from napari_unet.predict import predict, resolve_tta_views
    from napari_unet.train import validation_column

    image = tifffile.imread(OCT / "circular-scan.tif")
    truth = tifffile.imread(OCT / "circular-scan-layers.tif")
    rows = []
    for path in args.models:
        model = load_model(path)
        val_fraction = model.train_config.val_fraction if model.train_config else 0.2
        first = validation_column(image.shape[-1], val_fraction, model.config.size_multiple)
        if args.layers == "both" and model.layer_order is None:
            order = layer_order(to_indices(truth, model.class_values))
            model.layer_order = None if order is None else [model.class_values[k] for k in order]
        variants = [(tta, close) for tta in ((False, "auto") if args.tta == "auto" else (False,))
                    for close in ((None, False) if args.layers == "both" else (None,))]
        for (tta, close), margin in ((v, m) for v in variants for m in margins):
            padded = np.pad(image, margin, mode="reflect") if margin else image
            labels = predict(model, padded, tta=tta, return_probabilities=False, close_boundaries=close).labels
            labels = labels[margin : labels.shape[0] - margin, margin : labels.shape[1] - margin]
            pred, true = labels[:, first:], truth[:, first:]
            dice = dice_per_class(pred, true, list(range(10)))
            boundary_um = layer_boundary_errors(pred, true, list(range(10))) * AXIAL_MICRONS
            row = {
                "model": str(path), "local_contrast_sigma": model.config.local_contrast_sigma, "columns": [first, image.shape[-1]],
                "rotations": model.train_config.augment_rotations if model.train_config else None,
                "tta_views": resolve_tta_views(tta, model), "margin": margin,
                "labels": "most probable class" if close is False or not model.layer_order else "layers in order",
                "pixel_error": round(pixel_error(pred, true), 4), "mean_dice": round(float(np.mean(list(dice.values()))), 4),
                "dice": {str(k): round(v, 3) for k, v in dice.items()},
                "mean_boundary_error_um": round(float(np.mean(boundary_um)), 2),
                "boundary_error_um": {f"{k}|{k + 1}": round(float(e), 2) for k, e in enumerate(boundary_um)},
            }
            rows.append(row)
            print(row, flush=True)
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
