"""Post-processing of boundary (membrane) probabilities into closed boundaries and cell instances."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import h_minima, remove_small_objects
from skimage.segmentation import find_boundaries, watershed

from .config import MERGE_LEVELS
from .labels import count_classes
from .metrics import isbi_scores, segment_cells


def _as_probability(membrane_probability, ndim: int = 2) -> np.ndarray:
    """The map as float32, or ValueError if it is not a non-empty ``ndim``-D array ((Y, X) for 2, (Z, Y, X) for 3)
    or holds NaN or Inf (skimage's h_minima corrupts memory on NaN)."""
    probability = np.asarray(membrane_probability, dtype=np.float32)
    if probability.ndim != ndim or probability.size == 0:
        axes = "(Y, X)" if ndim == 2 else "(Z, Y, X)"
        raise ValueError(f"expected a non-empty {axes} probability map, got shape {probability.shape}")
    if not np.isfinite(probability).all():
        raise ValueError("the membrane probability holds NaN or Inf values; expected finite values in [0, 1]")
    return probability


def segment_instances(membrane_probability, seed_level: float = 0.2, sigma: float = 1.0, min_seed_size: int = 16):
    """Cells separated by one-pixel watershed lines, for a (Y, X) membrane probability in [0, 1].

    Seeds are connected regions where the smoothed probability is below ``seed_level`` (cell cores,
    at least ``min_seed_size`` pixels); a watershed of the smoothed probability grows them until they
    meet. Returns int32 (Y, X) labels, 0 on the watershed lines.
    """
    probability = _as_probability(membrane_probability)
    smooth = ndimage.gaussian_filter(probability, sigma) if sigma > 0 else probability
    cores = smooth < seed_level
    if min_seed_size > 1:
        cores = remove_small_objects(cores, max_size=min_seed_size - 1, connectivity=1)
    seeds = label(cores, connectivity=1)
    if seeds.max() == 0:
        return np.ones(probability.shape, np.int32)
    return watershed(smooth, seeds, connectivity=1, watershed_line=True).astype(np.int32)


def close_boundaries(membrane_probability, threshold: float = 0.5, **kwargs) -> np.ndarray:
    """Boolean (Y, X) membrane mask: thresholded probability plus watershed lines that close its gaps.

    A gap in a predicted membrane merges two cells, which the ISBI Rand score punishes hard; the
    watershed lines between cell cores (see :func:`segment_instances`) close such gaps.
    """
    probability = _as_probability(membrane_probability)
    return (probability > threshold) | (segment_instances(probability, **kwargs) == 0)


def _merged_boundary(graph, src, dst, neighbour) -> dict:
    """Edge from a merged region to ``neighbour``: the pixel-count-weighted mean of the two old boundaries."""
    empty = {"weight": 0.0, "count": 0}
    old = graph[src].get(neighbour, empty), graph[dst].get(neighbour, empty)
    count = old[0]["count"] + old[1]["count"]
    return {"count": count, "weight": (old[0]["count"] * old[0]["weight"] + old[1]["count"] * old[1]["weight"]) / count}


def _keep_node(graph, src, dst) -> None:
    """Nothing to update on the merged node: boundary means live on the edges."""


def watershed_regions(membrane_probability, minima_depth: float = 0.02, sigma: float = 1.0) -> np.ndarray:
    """Int32 (Y, X) over-segmentation of a (Y, X) membrane probability: the watershed of the probability smoothed
    by ``sigma`` from its local minima at least ``minima_depth`` deep (no watershed lines)."""
    probability = _as_probability(membrane_probability)
    smooth = ndimage.gaussian_filter(probability, sigma) if sigma > 0 else probability
    markers = label(h_minima(smooth, minima_depth), connectivity=1)
    return watershed(smooth, markers, connectivity=1).astype(np.int32)


def merge_regions(
    membrane_probability, merge_below: float = 0.6, minima_depth: float = 0.02, sigma: float = 1.0, hierarchical: bool = True
) -> np.ndarray:
    """Int32 (Y, X) cell regions for a (Y, X) membrane probability in [0, 1] (watershed + merging).

    A watershed of the smoothed probability from its local minima (at least ``minima_depth``
    deep) over-segments; adjacent regions then merge where the mean probability along their shared
    boundary is below ``merge_below``. A split inside a cell has a faint boundary and merges; two
    cells keep their membrane even where it has a gap, because most of it is strong.
    ``hierarchical`` (default) merges the faintest boundary first and recomputes the mean boundary of
    the merged region to each neighbour before the next merge (skimage ``merge_hierarchical``);
    otherwise every boundary is judged once, on the initial over-segmentation (``cut_threshold``).
    On unseen ISBI slices the hierarchical merge scores higher at every setting (BENCHMARKS.md).
    """
    # Imported here: skimage.graph imports networkx (0.6 s), which `predict` then loads in the rule's thread,
    # beside the network, instead of before its first tile.
    from skimage.graph import cut_threshold, merge_hierarchical, rag_boundary

    probability = _as_probability(membrane_probability)
    regions = watershed_regions(probability, minima_depth, sigma)
    if regions.max() < 2:
        return regions
    graph = rag_boundary(regions, probability)
    if hierarchical:
        merged = merge_hierarchical(
            regions, graph, merge_below, rag_copy=False, in_place_merge=True,
            merge_func=_keep_node, weight_func=_merged_boundary,
        )
    else:
        merged = cut_threshold(regions, graph, merge_below, in_place=True)
    return merged.astype(np.int32)


#: Thresholds tried by :func:`tune_boundary_rule`; the one with the lowest pixel error is kept.
CANDIDATE_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)

#: Smoothing (pixels) of the membrane probability whose minima and watershed make the regions that
#: :func:`merge_regions` merges, in tuned rules. On unseen ISBI slices (15-19, 16 saved models) 3 beat the
#: functions' default 1: V_info +0.0029 (better on 15 of 16 models), V_rand +0.0037, pixel error -0.0003;
#: 2, 4 and 5 less (BENCHMARKS.md, session 18). A smoother map has fewer spurious minima inside cells (225 -> 134
#: watershed regions per 512² slice before merging). The functions keep 1 so that rules stored without a
#: ``sigma`` keep their labels.
MERGE_SIGMA = 3.0


#: Pixels above the threshold count as membrane only this close (pixels) to a border of the merged regions, in
#: tuned rules (:func:`boundary_mask`'s ``border_reach``; None keeps every pixel above the threshold). A membrane
#: is ~5 pixels wide around its border; what lies farther out is a speck or a stretch of false membrane that the
#: merge already judged to be inside a cell. On unseen ISBI slices (15-19) reach 4 was better in V_rand and V_info
#: on each of 17 saved Zen 4 networks (+0.0016 / +0.0017) at the same pixel error, and on two fresh ones
#: (BENCHMARKS.md, session 31); 2 and 3 thin the membranes (pixel error +0.006 / +0.001), 6 gains less.
BORDER_REACH = 4.0


def candidate_closings(merge_levels=MERGE_LEVELS, border_reach=BORDER_REACH) -> tuple[dict, ...]:
    """Gap closings (keyword arguments of :func:`boundary_mask` but the threshold) for each merge level."""
    closing = {"seed_level": None, "minima_depth": 0.02, "sigma": MERGE_SIGMA, "hierarchical": True}
    if border_reach is not None:
        closing["border_reach"] = float(border_reach)
    return tuple({**closing, "merge_below": float(m)} for m in merge_levels)


#: Gap closings tried by :func:`tune_boundary_rule` by default (training offers the levels of
#: ``TrainConfig.merge_levels``): watershed regions merged hierarchically across faint boundaries
#: (:func:`merge_regions`). On unseen ISBI slices (15-19, four 10- and 30-minute models)
#: merging beat every plain threshold by 0.03-0.08 V_rand and the seeded watershed lines of
#: :func:`close_boundaries` by 0.01-0.05. Level 0.7 merged real cells in float32 networks of 10-minute runs
#: (15 of 18) and split fewer cells in networks of 30-minute runs (10 of 11; BENCHMARKS.md, sessions 19, 30). Minima depth 0.02
#: only: a pale cell whose lowest gap is less than the depth above its interior gets no marker, and the
#: watershed floods it from its neighbour without any boundary being judged. The three
#: validation slices cannot see it (0.05 scored the same or higher there on all 11 models measured and
#: was picked); on the unseen slices 0.02 was ahead on 9 and level on 2, by 0.021 V_rand on average
#: (BENCHMARKS.md, "Minima depth").
CANDIDATE_CLOSINGS: tuple[dict, ...] = candidate_closings(MERGE_LEVELS)


def region_borders(
    membrane_probability, merge_below: float = 0.6, minima_depth: float = 0.02, sigma: float = 1.0, hierarchical: bool = True
) -> np.ndarray:
    """Boolean (Y, X) one-pixel borders between the regions of :func:`merge_regions` (same arguments)."""
    regions = merge_regions(membrane_probability, merge_below, minima_depth, sigma, hierarchical)
    return find_boundaries(regions, connectivity=1, mode="inner")


def describe_rule(rule: Optional[dict]) -> str:
    """A boundary rule (:func:`boundary_mask`'s keyword arguments) in words for messages, e.g. "membrane where its
    probability is above 0.7, and between cell regions whose shared border averages 0.6 or more (gaps closed)"."""
    if not rule:
        return "the most probable class"
    text = f"membrane where its probability is above {rule.get('threshold', 0.5):g}"
    if rule.get("merge_below") is not None:
        text += (f", and between cell regions whose shared border averages {rule['merge_below']:g} or more "
                 "(gaps closed)")
        if rule.get("border_reach") is not None:
            text += f"; above the threshold only within {rule['border_reach']:g} px of such a border"
    elif rule.get("seed_level") is not None:
        text += f", and on the watershed lines between cell cores below {rule['seed_level']:g} (gaps closed)"
    return text


def boundary_mask(
    membrane_probability,
    threshold: float = 0.5,
    seed_level=None,
    sigma: float = 1.0,
    min_seed_size: int = 16,
    merge_below=None,
    minima_depth: float = 0.02,
    hierarchical: bool = True,
    border_reach=None,
):
    """Boolean (Y, X) boundary mask from a (Y, X) boundary probability by a boundary rule.

    ``probability > threshold``; with a ``seed_level``, also the watershed lines between cell
    cores (:func:`close_boundaries`); with ``merge_below``, also the borders between the merged
    watershed regions of :func:`merge_regions`. Both keep a faint gap in a membrane from merging
    two cells. With ``merge_below`` and a ``border_reach`` (pixels), pixels above the threshold
    count only within that distance of a border: what the merge judged to be inside a cell stays
    cell. Rules stored before ``hierarchical`` existed merge hierarchically too.
    """
    probability = _as_probability(membrane_probability)
    if merge_below is not None:
        borders = region_borders(probability, merge_below, minima_depth, sigma, hierarchical)
        membrane = probability > threshold
        if border_reach is not None:
            near = ndimage.distance_transform_edt(~borders) <= border_reach if borders.any() else False
            membrane &= near
        return membrane | borders
    if seed_level is None:
        return probability > threshold
    return close_boundaries(probability, threshold, seed_level=seed_level, sigma=sigma, min_seed_size=min_seed_size)


#: Slices larger than this side plus :data:`RULE_MARGIN` on each side get the membrane rule window by window
#: (:func:`tiled_boundary_mask`): its watershed and region graph took 120 bytes per pixel of a slice, 1.9 GB for a 4096²
#: section, 30 GB for 16384². The margin is several cells wide (ISBI cells: 30-150 pixels), so regions at a window's
#: core see their neighbours nearly as on the whole slice: 0-94 pixels of 4-45 million differed in the review's checks
#: (V_rand 1.00000 between them); a long membrane strong in one window and faint in the next can open at the seam.
RULE_TILE = 2048
RULE_MARGIN = 256


def tiled_boundary_mask(membrane_probability, tile: Optional[int] = None, margin: Optional[int] = None, **rule) -> np.ndarray:
    """:func:`boundary_mask` (same keyword ``rule``) of a (Y, X) probability, computed on windows of ``tile``² plus
    ``margin`` on each side (default :data:`RULE_TILE`, :data:`RULE_MARGIN`), each keeping its core
    (:func:`rule_windows`). Only an axis longer than ``tile + 2 * margin`` is split (into equal cores); a slice short
    enough on both is computed whole, the same result as :func:`boundary_mask`. Memory is bounded by one window instead
    of the slice."""
    probability = _as_probability(membrane_probability)
    height, width = probability.shape
    rows, columns = rule_windows(height, tile, margin), rule_windows(width, tile, margin)
    if len(rows) == 1 and len(columns) == 1:
        return boundary_mask(probability, **rule)
    out = np.zeros((height, width), bool)
    for y0, y1, top, bottom in rows:
        for x0, x1, left, right in columns:
            out[y0:y1, x0:x1] = boundary_mask(probability[top:bottom, left:right], **rule)[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


def rule_windows(length: int, tile: Optional[int] = None, margin: Optional[int] = None) -> list[tuple[int, int, int, int]]:
    """``(core start, core stop, window start, window stop)`` along an axis of ``length`` pixels, as
    :func:`tiled_boundary_mask` splits it: one window of the whole axis when it is at most ``tile + 2 * margin`` long
    (default :data:`RULE_TILE`, :data:`RULE_MARGIN`), else equal cores of at most ``tile`` (no sliver of a core at the
    end), each window reaching ``margin`` beyond its core within the axis. A rule applied to a window of rows and kept
    on its core gives the rows :func:`tiled_boundary_mask` of the whole slice gives."""
    tile = RULE_TILE if tile is None else tile
    margin = RULE_MARGIN if margin is None else margin
    if tile < 1 or margin < 0:
        raise ValueError(f"tile must be >= 1 and margin >= 0, got {tile} and {margin}")
    if length <= tile + 2 * margin:
        return [(0, length, 0, length)]
    n_cores = -(-length // tile)
    bounds = np.linspace(0, length, n_cores + 1).round().astype(int).tolist()
    return [(start, stop, max(start - margin, 0), min(stop + margin, length)) for start, stop in zip(bounds[:-1], bounds[1:])]


def tune_boundary_rule(
    membrane_probability, cell_mask, thresholds=CANDIDATE_THRESHOLDS, closings=CANDIDATE_CLOSINGS
) -> tuple[dict, float]:
    """The boundary rule (keyword arguments of :func:`boundary_mask`) with the best ISBI V_rand, and that V_rand.

    ``membrane_probability``: (Z, Y, X) float in [0, 1]; ``cell_mask``: (Z, Y, X) bool ground truth,
    True inside cells (fully annotated slices). The threshold is the one of ``thresholds`` with
    the lowest pixel error; on top of it each of ``closings`` is tried (``closings=()`` tunes a
    plain threshold). Ties keep the earlier rule.
    """
    probability = _as_probability(membrane_probability, ndim=3)
    cell_mask = np.asarray(cell_mask, bool)
    if cell_mask.shape != probability.shape:
        raise ValueError(f"cell_mask {cell_mask.shape} and membrane_probability {probability.shape} shapes differ")
    if not len(thresholds):
        raise ValueError("thresholds is empty; give at least one")
    pixel_errors = [np.mean((probability <= t) != cell_mask) for t in thresholds]
    threshold = float(thresholds[int(np.argmin(pixel_errors))])
    candidates = [{"threshold": threshold, **closing} for closing in closings]
    candidates = candidates or [{"threshold": threshold, "seed_level": None, "merge_below": None}]
    best_rule, best_score = None, -1.0
    for rule in candidates:
        cells = np.stack([~boundary_mask(plane, **rule) for plane in probability])
        score = isbi_scores(cells, cell_mask)["v_rand"]
        if score > best_score:
            best_rule, best_score = rule, float(score)
    return best_rule, best_score


#: :func:`find_boundary_class` measures widths on evenly chosen inner planes holding at most this many pixels (at least
#: one plane): 16 of ISBI's 512² slices, 4 of 2048² (whose 16 training slices took 11 s).
BOUNDARY_CHECK_PIXELS = 16 * 512 * 512


#: :func:`find_boundary_class`: a thin minority class forming one run down at least this share of the columns is a
#: band (an OCT layer), not a boundary network (ISBI membranes: about 4 runs a column of 512 rows).
BAND_COLUMNS = 0.9


def find_boundary_class(indices, n_classes: int, max_width: float = 6.0):
    """Index of a thin boundary class (e.g. EM membranes) in (Z, Y, X) int class indices, or None.

    Only two-class problems qualify: the minority class (over all planes) is a boundary class when 90 % of its
    annotated pixels lie within ``max_width`` pixels of the other class's (thin lines, not blobs;
    ISBI 2012 membranes: 5 pixels), measured on up to :data:`BOUNDARY_CHECK_PIXELS` of evenly chosen planes holding it,
    and it is no band across the image (one run down nearly every column: an OCT layer such as the RPE, which has
    no cells to close). Where most pixels of those planes are not annotated (negative: scribbles), the other class
    must also have an interior (90 % of its pixels no closer than that to the minority), or, for strokes that lie
    apart, the boundary is the class whose strokes are :data:`SCRIBBLE_WIDTH_RATIO` times thinner than the other's:
    small cell blobs beside longer membrane strokes made the cells the "boundary".
    """
    if n_classes != 2:
        return None
    indices = np.asarray(indices)
    indices = indices[None] if indices.ndim == 2 else indices
    if indices.size == 0:
        return None
    counts = count_classes(indices, 2)
    if counts.min() == 0:
        return None
    minority = int(np.argmin(counts))
    holding = [z for z in range(len(indices)) if (indices[z] == minority).any()]
    n_planes = max(1, BOUNDARY_CHECK_PIXELS // (indices.shape[1] * indices.shape[2]))
    if len(holding) > n_planes:
        holding = [holding[i] for i in np.linspace(0, len(holding) - 1, n_planes + 2)[1:-1].round().astype(int)]  # inner planes
    planes = indices[holding]
    boundary = minority if _width(planes, minority, 1 - minority) <= max_width else None
    if np.mean(planes >= 0) < 0.5:  # scribbles: most pixels not annotated
        if boundary is not None and _width(planes, 1 - minority, minority) <= max_width:
            boundary = None  # the other class is as thin against it
        if boundary is None:  # strokes apart: the class whose own strokes are clearly thinner
            own = [_width(planes, k) for k in (0, 1)]
            thinner = int(np.argmin(own))
            if own[thinner] <= max_width and own[1 - thinner] >= SCRIBBLE_WIDTH_RATIO * own[thinner]:
                boundary = thinner
    if boundary is None:
        return None
    columns = np.moveaxis(planes == boundary, 1, -1).reshape(-1, indices.shape[1])  # (columns, Y)
    annotated = np.moveaxis(planes >= 0, 1, -1).reshape(-1, indices.shape[1]).any(axis=1)  # (edges left out)
    starts = np.count_nonzero(columns[:, 1:] & ~columns[:, :-1], axis=1) + columns[:, 0]  # runs per column
    band = np.mean(starts[annotated] == 1) >= BAND_COLUMNS
    return None if band else boundary


#: :func:`find_boundary_class` on scribbles whose strokes of the two classes lie apart: a class is the boundary when
#: its strokes are at most ``max_width`` wide and the other class's at least this many times wider (traced membranes
#: beside cell disks of radius 10: 2.2x; equally thin strokes, or disks of radius 5 beside strokes: none).
SCRIBBLE_WIDTH_RATIO = 2.0


def _width(planes: np.ndarray, inner: int, outer: Optional[int] = None) -> float:
    """90th percentile of the distances (pixels) from the pixels of class ``inner`` to the nearest pixel of class
    ``outer`` (None: any other pixel, annotated or not) in (Z, Y, X) class indices, plane by plane (the plane's
    diagonal where it holds no ``outer``)."""
    distances = []
    for plane in planes:
        pixels = plane == inner
        if not pixels.any():
            continue
        if outer is None:
            distances.append(ndimage.distance_transform_edt(pixels)[pixels])
        elif (plane == outer).any():
            distances.append(ndimage.distance_transform_edt(plane != outer)[pixels])
        else:
            distances.append(np.full(np.count_nonzero(pixels), float(np.hypot(*plane.shape))))  # (inf: a NaN percentile)
    return float(np.percentile(np.concatenate(distances), 90)) if distances else float("inf")


#: :func:`order_layers`: the log-likelihood cost of giving a kept pixel another class than the one kept: as if the
#: network were certain of it (probabilities are floored at 1e-7). A correction in order is kept at the cost of a few
#: rows around it; one that no order can hold (vitreous painted into the choroid) does not relabel its whole column.
KEPT_PENALTY = float(np.log(1e-7))


def order_layers(probabilities, order, kept=None) -> np.ndarray:
    """Class indices (int64, (Y, X)) of (Y, X, C) class ``probabilities`` with the layers in ``order`` down every column.

    ``order``: the class indices top to bottom (distinct). Each column gets the labelling of highest
    likelihood (sum of log probabilities) in which the classes follow ``order`` downwards, each at most once; a layer
    may be absent. Stray islands (a patch of vitreous in the choroid) and swapped layers cannot occur. Classes left out
    of ``order`` are pockets (fluid, :func:`napari_unet.labels.layer_order`): the layers are ordered as if a pocket's
    probability belonged to whichever layer holds it, then each pixel where a pocket is the most probable class gets it.
    ``kept`` ((Y, X) int class indices, negative = free): pixels whose class is given (a user's kept corrections),
    scored as if the network were certain of them (:data:`KEPT_PENALTY`), so that corrections put back over the
    labelling leave no layer out of order. Dynamic programming over the rows: O(Y x X x C).
    """
    probabilities = np.asarray(probabilities, np.float32)
    order = np.asarray(order, np.int64)
    if probabilities.ndim != 3 or probabilities.shape[0] == 0 or probabilities.shape[1] == 0:
        raise ValueError(f"probabilities must be a non-empty (Y, X, C) array, got shape {probabilities.shape}")
    if order.ndim != 1 or not order.size or len(set(order.tolist())) != order.size or not (0 <= order.min() and order.max() < probabilities.shape[-1]):
        raise ValueError(f"order must list distinct class indices of 0..{probabilities.shape[-1] - 1}, got {order.tolist()}")
    if not np.isfinite(probabilities).all():  # NaN compares false: the back pointers would be arbitrary
        raise ValueError("probabilities hold NaN or Inf")
    n_rows, n_cols, n_layers = probabilities.shape[0], probabilities.shape[1], len(order)
    pockets = np.setdiff1d(np.arange(probabilities.shape[-1]), order)
    if kept is not None:
        kept = np.asarray(kept)
        if kept.shape != probabilities.shape[:2] or kept.dtype == bool or not np.issubdtype(kept.dtype, np.integer):
            raise ValueError(f"kept must be integer class indices of the probabilities' (Y, X) shape {probabilities.shape[:2]}, "
                             f"got {kept.dtype} {kept.shape}")
        kept = kept.astype(np.int64)  # (uint8's 255 for "none": -1 wrapped around in its own dtype)
        kept = np.where((kept >= 0) & (kept < probabilities.shape[-1]), kept, -1)  # -1: free
        rank_of = np.full(probabilities.shape[-1] + 1, -1, np.int64)  # class index -> rank in order; -1: free
        rank_of[order] = np.arange(n_layers)
        kept_ranks = rank_of[kept]  # a kept pocket is free here: any layer may hold it

    def row_scores(y):  # log probabilities of row y in layer order, (X, K): one row at a time bounds the memory
        layers = probabilities[y][:, order]
        if len(pockets):
            layers = layers + probabilities[y][:, pockets].sum(axis=1, keepdims=True)
        scores = np.log(np.maximum(layers, 1e-7))
        if kept is not None:
            given = np.flatnonzero(kept_ranks[y] >= 0)
            if given.size:
                scores[given] = KEPT_PENALTY
                scores[given, kept_ranks[y, given]] = 0.0
        return scores

    ranks = np.arange(n_layers)
    best = row_scores(0)
    back = np.empty((n_rows, n_cols, n_layers), np.int8 if n_layers <= 127 else np.int16)
    for y in range(1, n_rows):
        running = np.maximum.accumulate(best, axis=1)  # the best labelling of the rows above ending at a layer <= k
        back[y] = np.maximum.accumulate(np.where(best == running, ranks, 0), axis=1)
        best = running + row_scores(y)
    ranked = np.empty((n_rows, n_cols), np.int64)
    ranked[-1] = best.argmax(axis=1)
    columns = np.arange(n_cols)
    for y in range(n_rows - 1, 0, -1):
        ranked[y - 1] = back[y, columns, ranked[y]]
    labels = order[ranked]
    if len(pockets):
        most_probable = probabilities.argmax(axis=-1)
        pocket = np.isin(most_probable, pockets)
        if kept is not None:
            pocket &= kept < 0  # a kept pixel holds against the pockets; a kept pocket (fluid the user painted) stays
            labels = np.where(np.isin(kept, pockets), kept, labels)
        labels = np.where(pocket, most_probable, labels)
    return labels


def cell_instances(labels: np.ndarray, membrane_value) -> np.ndarray:
    """int32 cell labels of (Y, X) or (Z, Y, X) predicted class labels, unique over the stack.

    Per slice: :func:`napari_unet.metrics.segment_cells` of the non-membrane pixels, i.e. the cells the
    ISBI scores see in these labels: each connected cell region is one cell, membranes are shared out
    to the cells beside them, with 0 on the watershed lines between cells (mostly one pixel wide).
    """
    labels = np.asarray(labels)
    stack = labels[None] if labels.ndim == 2 else labels
    out = np.zeros(stack.shape, np.int32)
    offset = 0
    for z, plane in enumerate(stack):
        cells = segment_cells(plane != membrane_value)
        out[z] = np.where(cells > 0, cells + offset, 0)
        offset = int(out[z].max(initial=offset))
    return out[0] if labels.ndim == 2 else out


__all__ = [
    "segment_instances",
    "close_boundaries",
    "watershed_regions",
    "merge_regions",
    "CANDIDATE_THRESHOLDS",
    "MERGE_SIGMA",
    "BORDER_REACH",
    "candidate_closings",
    "CANDIDATE_CLOSINGS",
    "region_borders",
    "describe_rule",
    "boundary_mask",
    "RULE_TILE",
    "RULE_MARGIN",
    "tiled_boundary_mask",
    "rule_windows",
    "tune_boundary_rule",
    "BOUNDARY_CHECK_PIXELS",
    "BAND_COLUMNS",
    "SCRIBBLE_WIDTH_RATIO",
    "find_boundary_class",
    "KEPT_PENALTY",
    "order_layers",
    "cell_instances",
]
