#!/usr/bin/env python
"""What the membrane rule's merging compares with its level: mean boundary probability vs quantiles, raw vs smoothed.

    python benchmarks/isbi_merge_criterion.py A.keras [B.keras ...] [--levels 0.4,0.5,0.6,0.7]
        [--criteria mean,smooth-mean,q0.25,q0.5,q0.75] [--name isbi-merge-criterion]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model. The watershed regions are the
tuned rules' (``postprocess.MERGE_SIGMA``, minima depth 0.02); adjacent regions merge hierarchically, faintest
first, while their boundary's statistic is below the level:

- ``mean``: mean probability of the boundary pixels (what ``postprocess.merge_regions`` does; checked equal);
- ``smooth-mean``: the same on the smoothed probability the watershed ran on;
- ``qF``: the F-quantile of the boundary pixels (0.5 = median): a gap pulls it down less than it pulls the mean.

Labels are ``probability > threshold`` (the model's threshold as training tunes it) plus the merged regions'
borders; V_rand, V_info and pixel error on 12-14 and on the unseen 15-19, per criterion and level, then means.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402
from isbi_rule_smoothing import METRICS, PARTS  # noqa: E402


def add_arguments(parser) -> None:
    parser.add_argument("--levels", default="0.4,0.5,0.6,0.7")
    parser.add_argument("--criteria", default="mean,smooth-mean,q0.25,q0.5,q0.75")


def boundary_pixels(regions: np.ndarray, values: np.ndarray) -> dict:
    """{(a, b): values of the boundary pixels} for adjacent regions a < b of (Y, X) int ``regions``: the pixels
    ``skimage.graph.rag_boundary`` uses (8-connected erosion and dilation). ``values``: (Y, X) or (Y, X, K) maps;
    each entry is (n,) or (n, K)."""
    from scipy import ndimage

    footprint = ndimage.generate_binary_structure(2, 2)
    eroded, dilated = ndimage.grey_erosion(regions, footprint=footprint), ndimage.grey_dilation(regions, footprint=footprint)
    inner, outer = eroded != regions, dilated != regions
    small = np.concatenate((eroded[inner], regions[outer])).astype(np.int64)
    large = np.concatenate((regions[inner], dilated[outer])).astype(np.int64)
    data = np.concatenate((values[inner], values[outer]))
    key = small * (int(regions.max()) + 1) + large
    order = np.argsort(key, kind="stable")
    key, data, small, large = key[order], data[order], small[order], large[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return {(int(small[a]), int(large[a])): data[a:b] for a, b in zip(starts, np.r_[starts[1:], len(key)])}


def boundary_graph(regions: np.ndarray, values: np.ndarray, statistic):
    """skimage RAG of (Y, X) int ``regions`` whose edges carry every boundary pixel value (``values``), their
    ``count`` and ``weight`` = statistic(values). Boundary pixels as ``skimage.graph.rag_boundary`` finds them."""
    from skimage.graph import RAG

    graph = RAG()
    for (a, b), pixels in boundary_pixels(regions, values).items():
        graph.add_edge(a, b, values=pixels, count=len(pixels), weight=float(statistic(pixels)))
    for node in graph.nodes():
        graph.nodes[node]["labels"] = [node]
    return graph


def merge_by(regions: np.ndarray, values: np.ndarray, level: float, statistic) -> np.ndarray:
    """Hierarchical merging of ``regions`` while the boundary statistic is below ``level``."""
    from skimage.graph import merge_hierarchical

    def merged_edge(graph, src, dst, neighbour):
        parts = [graph[node][neighbour]["values"] for node in (src, dst) if neighbour in graph[node]]
        pixels = np.concatenate(parts)
        return {"values": pixels, "count": len(pixels), "weight": float(statistic(pixels))}

    graph = boundary_graph(regions, values, statistic)
    return merge_hierarchical(regions, graph, level, rag_copy=False, in_place_merge=True,
                              merge_func=lambda graph, src, dst: None, weight_func=merged_edge)


def statistic_of(criterion: str):
    if criterion in ("mean", "smooth-mean"):
        return np.mean
    if criterion.startswith("q"):
        quantile = float(criterion[1:])
        return lambda pixels: np.quantile(pixels, quantile)
    raise SystemExit(f"unknown criterion {criterion!r}")


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-merge-criterion", add_arguments)
    if args is None:
        return 0

    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    from napari_unet.postprocess import MERGE_SIGMA, merge_regions, tune_boundary_rule, watershed_regions

    levels = [float(level) for level in args.levels.split(",")]
    statistics = {criterion: statistic_of(criterion) for criterion in args.criteria.split(",")}
    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        threshold = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=())[0]["threshold"]
        regions = np.stack([watershed_regions(plane, 0.02, MERGE_SIGMA) for plane in probability])
        rows = {}
        for criterion, statistic in statistics.items():
            values = ndimage.gaussian_filter(probability, (0, MERGE_SIGMA, MERGE_SIGMA)) if criterion == "smooth-mean" else probability
            for level in levels:
                merged = np.stack([merge_by(r, v, level, statistic) for r, v in zip(regions, values)])
                if criterion == "mean" and level == levels[0]:  # the reimplementation is the shipped merge
                    shipped = merge_regions(probability[0], level, 0.02, MERGE_SIGMA)
                    assert np.array_equal(find_boundaries(shipped, connectivity=1, mode="inner"),
                                          find_boundaries(merged[0], connectivity=1, mode="inner"))
                borders = np.stack([find_boundaries(m, connectivity=1, mode="inner") for m in merged])
                cell_prediction = ~((probability > threshold) | borders)
                rows[f"{criterion}/{level}"] = {part: cell_scores(cell_prediction[where], cells[where]) for part, where in PARTS.items()}
                print(path.stem, criterion, level, rows[f"{criterion}/{level}"]["judge"], flush=True)
        per_model[path.stem] = {"threshold": threshold, "rows": rows}

    mean = {key: {part: {m: round(float(np.mean([r["rows"][key][part][m] for r in per_model.values()])), 4) for m in METRICS}
                  for part in PARTS} for key in next(iter(per_model.values()))["rows"]}
    print(f"criterion/level  validation 12-14 (pixel V_rand V_info)  unseen 15-19   ({len(per_model)} models)")
    for key, row in mean.items():
        print(key, *(" ".join(f"{row[p][m]:.4f}" for m in METRICS) for p in PARTS))
    write_results(args.name, {"models": list(per_model), "sigma": MERGE_SIGMA, "mean": mean, "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
