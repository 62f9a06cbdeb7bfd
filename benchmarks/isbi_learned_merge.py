#!/usr/bin/env python
"""The membrane rule's merge decided by a learned edge classifier (GALA / ilastik multicut style), and the ceiling.

    pip install scikit-learn   # benchmark-only (the "bench" extra)
    python benchmarks/isbi_learned_merge.py A.keras [B.keras ...] [--base-levels 0.4,0.5] [--name isbi-learned-merge]

For models saved by ``isbi_accuracy.py --save-model`` (trained on slices 0-11, validation 12-14), with the
probabilities of slices 12-19 that ``isbi_merging.py`` caches beside each model. The shipped rule merges watershed
regions hierarchically while the mean membrane probability along their boundary is below 0.6 (``merge_regions``).
Here the regions after a conservative mean merge (``--base-levels``) are merged further by a classifier:

- every boundary gets 17 features: mean, standard deviation, min, 10/25/50/75/90 % quantiles and max of the
  boundary's probability, its log length, mean and min of the smoothed probability the watershed ran on, log sizes
  and mean interior probability of the two regions (smaller, larger), length / sqrt(smaller size);
- a boundary's truth is "merge" when both regions cover most of the same truth cell;
- a random forest and a logistic regression learn it on the validation slices 12-14 (as training tunes the rule there);
- on all slices the regions then merge hierarchically, the likeliest merge first, recomputing the features of the
  merged region's boundaries, while P(merge) > ``t``; ``max mean`` forbids merges across boundaries whose mean
  probability is that high.

``oracle`` merges the base regions wherever the truth says so: what a perfect merge decision would score with these
regions. Labels are ``probability > threshold`` plus the merged regions' borders; V_rand, V_info and pixel error of
the unseen 15-19, then means over models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isbi_merging import N_VAL, cell_scores, membrane_probabilities, parse_saved_models, read_isbi_volume, write_results  # noqa: E402
from isbi_merge_criterion import boundary_pixels  # noqa: E402
from isbi_rule_smoothing import METRICS  # noqa: E402

#: (P(merge) threshold, max mean) settings of the learned merge.
SETTINGS = ((0.5, 1.0), (0.7, 1.0), (0.5, 0.7), (0.8, 0.7))


def add_arguments(parser) -> None:
    parser.add_argument("--base-levels", default="0.4,0.5")


def edge_features(values, smooth_values, size_a, size_b, interior_a, interior_b) -> list[float]:
    quantiles = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    smaller, larger = min(size_a, size_b), max(size_a, size_b)
    return [values.mean(), values.std(), values.min(), *quantiles, values.max(), np.log(len(values)),
            smooth_values.mean(), smooth_values.min(), np.log(smaller), np.log(larger),
            min(interior_a, interior_b), max(interior_a, interior_b), len(values) / np.sqrt(smaller)]


def region_graph(regions: np.ndarray, probability: np.ndarray, smooth: np.ndarray):
    """skimage RAG of ``regions``: nodes carry size and probability sum, edges their boundary pixel values."""
    from skimage.graph import RAG

    n = int(regions.max()) + 1
    sizes = np.bincount(regions.ravel(), minlength=n).astype(float)
    sums = np.bincount(regions.ravel(), probability.ravel(), minlength=n)
    graph = RAG()
    for node in np.unique(regions):
        graph.add_node(int(node), labels=[int(node)], size=sizes[node], sum=sums[node])
    for (a, b), pixels in boundary_pixels(regions, np.stack([probability, smooth], axis=-1)).items():
        graph.add_edge(a, b, values=pixels[:, 0], smooth=pixels[:, 1])
    return graph


def features_of(graph, a, b, edge) -> list[float]:
    na, nb = graph.nodes[a], graph.nodes[b]
    return edge_features(edge["values"], edge["smooth"], na["size"], nb["size"], na["sum"] / na["size"], nb["sum"] / nb["size"])


def edge_truth(regions: np.ndarray, cells: np.ndarray, pairs) -> np.ndarray:
    """Per pair: 1 when both regions' majority truth cell is the same, 0 when not, -1 when a region covers no cell."""
    from skimage.metrics import contingency_table

    from napari_unet.metrics import truth_segments

    overlap = contingency_table(truth_segments(cells), regions, ignore_labels=[0], sparse_type="array").tocsc()  # cells x regions
    majority = np.asarray(overlap.argmax(axis=0)).ravel()
    majority[np.asarray(overlap.sum(axis=0)).ravel() == 0] = -1
    return np.array([-1 if min(majority[a], majority[b]) < 0 else int(majority[a] == majority[b]) for a, b in pairs])


def learned_merge(regions, probability, smooth, classifier, threshold: float, max_mean: float) -> np.ndarray:
    """Hierarchical merging of ``regions``, likeliest first, while the classifier's P(merge) exceeds ``threshold``."""
    from skimage.graph import merge_hierarchical

    graph = region_graph(regions, probability, smooth)

    def weight(a, b, edge) -> float:
        if edge["values"].mean() >= max_mean:
            return 1.0
        return 1.0 - float(classifier.predict_proba(np.array([features_of(graph, a, b, edge)]))[0, 1])

    for a, b in graph.edges:
        graph[a][b]["weight"] = weight(a, b, graph[a][b])

    def merge_nodes(graph, src, dst):
        graph.nodes[dst]["size"] += graph.nodes[src]["size"]
        graph.nodes[dst]["sum"] += graph.nodes[src]["sum"]

    def merged_edge(graph, src, dst, neighbour):
        parts = [graph[node][neighbour] for node in (src, dst) if neighbour in graph[node]]
        edge = {key: np.concatenate([part[key] for part in parts]) for key in ("values", "smooth")}
        return {**edge, "weight": weight(dst, neighbour, edge)}

    return merge_hierarchical(regions, graph, 1.0 - threshold, rag_copy=False, in_place_merge=True,
                              merge_func=merge_nodes, weight_func=merged_edge)


def oracle_merge(regions: np.ndarray, pairs, truth: np.ndarray) -> np.ndarray:
    """``regions`` with every truly-same pair merged (connected components of those pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(regions.max()) + 1
    same = np.array([pair for pair, t in zip(pairs, truth) if t == 1]).reshape(-1, 2)
    adjacency = coo_matrix((np.ones(len(same)), (same[:, 0], same[:, 1])), shape=(n, n))
    return connected_components(adjacency, directed=False)[1][regions]


def main(argv=None) -> int:
    args = parse_saved_models(argv, __doc__.splitlines()[0], "isbi-learned-merge", add_arguments)
    if args is None:
        return 0
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        print("skipped: scikit-learn is not installed (pip install scikit-learn)")
        return 0
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    from napari_unet.postprocess import MERGE_SIGMA, merge_regions, tune_boundary_rule

    image, cells = read_isbi_volume()
    per_model = {}
    for path in args.models:
        probability = membrane_probabilities(path, image)
        smooth = ndimage.gaussian_filter(probability, (0, MERGE_SIGMA, MERGE_SIGMA))
        threshold = tune_boundary_rule(probability[:N_VAL], cells[:N_VAL], closings=())[0]["threshold"]
        rows = {}

        def score(name, merged) -> None:
            borders = np.stack([find_boundaries(m, connectivity=1, mode="inner") for m in merged])
            rows[name] = cell_scores(~((probability > threshold) | borders)[N_VAL:], cells[N_VAL:])
            print(path.stem, name, rows[name], flush=True)

        score("shipped (mean, 0.6)", [merge_regions(p, 0.6, 0.02, MERGE_SIGMA) for p in probability])
        for base_level in (float(level) for level in args.base_levels.split(",")):
            base = [merge_regions(p, base_level, 0.02, MERGE_SIGMA) for p in probability]
            graphs = [region_graph(r, p, s) for r, p, s in zip(base, probability, smooth)]
            pairs = [list(graph.edges) for graph in graphs]
            truths = [edge_truth(r, c, p) for r, c, p in zip(base, cells, pairs)]
            score(f"mean {base_level}", base)
            score(f"mean {base_level} + oracle", [oracle_merge(r, p, t) for r, p, t in zip(base, pairs, truths)])
            features = np.array([features_of(g, a, b, g[a][b]) for g, p in zip(graphs[:N_VAL], pairs) for a, b in p])
            truth = np.concatenate(truths[:N_VAL])
            known = truth >= 0
            classifiers = {
                "forest": RandomForestClassifier(100, min_samples_leaf=3, random_state=0),
                "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
            }
            for name, classifier in classifiers.items():
                classifier.fit(features[known], truth[known])
                for p_merge, max_mean in SETTINGS:
                    merged = [learned_merge(r.copy(), p, s, classifier, p_merge, max_mean) for r, p, s in zip(base, probability, smooth)]
                    score(f"mean {base_level} + {name} P>{p_merge} max mean {max_mean}", merged)
        per_model[path.stem] = {"threshold": threshold, "rows": rows}

    mean = {key: {m: round(float(np.mean([r["rows"][key][m] for r in per_model.values()])), 4) for m in METRICS}
            for key in next(iter(per_model.values()))["rows"]}
    print(f"unseen 15-19, mean of {len(per_model)} models: ISBI pixel error, V_rand, V_info")
    for key, row in mean.items():
        print(f"{key:48s}", " ".join(f"{row[m]:.4f}" for m in METRICS))
    write_results(args.name, {"models": list(per_model), "sigma": MERGE_SIGMA, "mean": mean, "per_model": per_model})
    return 0


if __name__ == "__main__":
    sys.exit(main())
