#!/usr/bin/env python
"""Time of the validation that ends every training epoch: a new batch-norm-folded network per epoch (before
session 21) against one folded network refreshed in place (``train._validation_view``), alternated in one process.

Validation predicts the validation slices (here 3 ISBI slices of 512², as the 10-minute ISBI runs validate on
12-14; a synthetic 512² stack without ../shared/data) with the default network and scores them, as training does
after each epoch. Each round validates once each way; medians over rounds.

    python benchmarks/bench_validation.py                 # 6 rounds, ~1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "validation-view.json")
    args = ap.parse_args()
    C.use_src()
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow()
    import numpy as np

    from napari_unet.config import preset
    from napari_unet.labels import to_indices
    from napari_unet.synthetic import make_em_stack
    from napari_unet.train import _validation_scores, _validation_view, train

    folder = C.SHARED_DATA / "isbi2012"
    if folder.is_dir():
        image, labels, data = C.read_tif(folder / "train-volume.tif")[:15], C.read_tif(folder / "train-labels.tif")[:15], "isbi 0-14"
    else:
        image, labels = make_em_stack(15, (512, 512), seed=1)
        data = "synthetic"
    default = preset("default")
    model = train(image[:12], labels[:12], default.model, default.train.replace(epochs=1, steps_per_epoch=5, val_fraction=0.0)).model
    indices = to_indices(labels, model.class_values, None)[12:15]
    weights = np.ones(len(model.class_values), np.float32)
    times: dict = {"new network": [], "refreshed view": []}
    folded = None
    scores = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        scores["new network"] = _validation_scores(model, image, [12, 13, 14], indices, weights)
        times["new network"].append(time.perf_counter() - start)
        start = time.perf_counter()
        view = _validation_view(model, folded)
        folded = view.keras_model
        scores["refreshed view"] = _validation_scores(view, image, [12, 13, 14], indices, weights)
        times["refreshed view"].append(time.perf_counter() - start)
    summary = {name: statistics.median(values[1:]) for name, values in times.items()}  # the first round traces
    summary["new_vs_refreshed"] = summary["new network"] / summary["refreshed view"]
    summary["validation_loss"] = {name: value[0] for name, value in scores.items()}
    C.write_report(args.out, {"data": data, "seconds": times, "summary": summary})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
