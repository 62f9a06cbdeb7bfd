#!/usr/bin/env python
"""Ensembles of independently trained ISBI models: labels on the unseen slices 15-19 of averaged probabilities.

    python benchmarks/isbi_ensemble.py seed0.keras seed1.keras ... [--sizes 1,2,3] [--name isbi-ensemble]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14): predicts slices
12-19 once per model, plainly and with test-time augmentation, in the precision ``predict`` picks for this CPU.
For every combination of ``--sizes`` models it averages their membrane probabilities, chooses the membrane rule
on 12-14 as training chooses it (``tune_boundary_rule`` over ``CANDIDATE_CLOSINGS``) and scores the labels of
15-19; then the mean and range over the combinations of each size. It asks whether N networks of T minutes
each beat one network: a 30-minute budget spent as three 10-minute seeds.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, ROOT, cell_scores, parse_saved_models, read_isbi_volume  # noqa: E402

SLICES = range(12, 20)
METRICS = ("pixel_error", "v_rand", "v_info")


def main(argv=None) -> int:
    def add_sizes(parser):
        parser.add_argument("--sizes", default="1,2,3", help="ensemble sizes to score, comma-separated")

    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-ensemble", add_sizes)
    if args is None:
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]

    from napari_unet.model_io import load_model
    from napari_unet.postprocess import CANDIDATE_CLOSINGS, boundary_mask, tune_boundary_rule
    from napari_unet.predict import predict

    image, cells = read_isbi_volume()
    probabilities = {False: [], True: []}  # tta -> one (8, Y, X) membrane probability per model
    for path in args.models:
        model = load_model(path)
        membrane = model.class_values.index(0)
        for tta in (False, True):
            result = predict(model, image, close_boundaries=False, slices=SLICES, tta=tta)
            probabilities[tta].append(result.probabilities[..., membrane].astype(np.float32))
        print("predicted", path.name, flush=True)

    rows = []
    for size in sizes:
        for members in itertools.combinations(range(len(args.models)), size):
            row = {"size": size, "members": [args.models[i].stem for i in members]}
            for tta in (False, True):
                probability = np.mean([probabilities[tta][i] for i in members], axis=0)
                val, judge = probability[:N_VAL], probability[N_VAL:]
                rule, _ = tune_boundary_rule(val, cells[:N_VAL], closings=CANDIDATE_CLOSINGS)
                labels = np.stack([~boundary_mask(plane, **rule) for plane in judge])
                row["tta" if tta else "plain"] = {"rule": rule, "judge": cell_scores(labels, cells[N_VAL:])}
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary = {}
    for size in sizes:
        for key in ("plain", "tta"):
            judged = [r[key]["judge"] for r in rows if r["size"] == size]
            summary[f"{size}/{key}"] = {
                m: {"mean": round(float(np.mean([j[m] for j in judged])), 4),
                    "min": round(float(np.min([j[m] for j in judged])), 4),
                    "max": round(float(np.max([j[m] for j in judged])), 4)} for m in METRICS}
    print("size/prediction  pixel error  V_rand  V_info  (mean over combinations; min-max)")
    for key, row in summary.items():
        print(key, *(f"{row[m]['mean']:.4f} ({row[m]['min']:.3f}-{row[m]['max']:.3f})" for m in METRICS))
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"models": [str(p) for p in args.models], "slices": list(SLICES),
                               "validation": list(SLICES)[:N_VAL], "rows": rows, "summary": summary}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
