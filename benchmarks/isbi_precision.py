#!/usr/bin/env python
"""Prediction in bfloat16 against float32: the same saved models' labels on the unseen ISBI slices 15-19.

    python benchmarks/isbi_precision.py m10.keras ...     # ~10 s per model; results/isbi-precision.json

Each model predicts slices 15-19 with its membrane rule twice, ``mixed_precision=False`` and ``True``
(on a CPU without bfloat16 instructions the bfloat16 pass is slow but still correct). Reports pixel error,
V_rand and V_info of both, the share of label pixels that differ and the largest probability change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import DATA, ROOT, parse_saved_models  # noqa: E402

JUDGED = range(15, 20)


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-precision")
    if args is None:
        return 0
    import tifffile

    from napari_unet.metrics import evaluate
    from napari_unet.model_io import load_model
    from napari_unet.predict import predict

    image = tifffile.imread(DATA / "train-volume.tif")
    truth = tifffile.imread(DATA / "train-labels.tif")[JUDGED.start : JUDGED.stop]
    rows = []
    for path in args.models:
        model = load_model(path)
        results = {mixed: predict(model, image, slices=JUDGED, mixed_precision=mixed, tta=False) for mixed in (False, True)}
        row = {"model": str(path)}
        for mixed, result in results.items():
            scores = evaluate(result.labels, truth, model.class_values)
            row["bfloat16" if mixed else "float32"] = {k: round(scores[k], 4) for k in ("pixel_error", "v_rand", "v_info")}
        row["label_pixels_differing"] = float(np.mean(results[True].labels != results[False].labels))
        row["max_abs_probability_change"] = float(np.abs(results[True].probabilities - results[False].probabilities).max())
        rows.append(row)
        print(json.dumps(row))
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"judged_slices": list(JUDGED), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
