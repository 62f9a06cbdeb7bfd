"""Segmentation metrics: pixel error, Dice/IoU and the ISBI 2012 scores.

The ISBI 2012 EM challenge (Arganda-Carreras et al. 2015, Front. Neuroanat.
9:142) ranks membrane predictions with the *foreground-restricted Rand score
after border thinning* (V_rand) and the *foreground-restricted information
theoretic score after border thinning* (V_info).  This module follows the
reference implementation in Fiji's Trainable Weka Segmentation
(``trainableSegmentation.metrics.RandError.getMaximalVRandAfterThinning`` and
``VariationOfInformation.getMaximalVInfoAfterThinning``, as called by the
official ISBI evaluation script):

* truth: binary membrane image; truth segments are the 4-connected components
  of the cell interior (``Utils.connectedComponents(..., 4)``).  Truth membrane
  pixels are ignored (foreground restriction): only the ``n`` pixels inside
  truth cells are counted.
* proposal: binarized cell/membrane image; the interior's 4-connected
  components are flooded over the membrane with Fiji's 4-connected watershed
  (``WatershedTransform2D``, transcribed pixel for pixel: :func:`segment_cells`),
  so borders are thinned to watershed lines.  Pixels left on those lines are
  each counted as their own singleton segment.
* with ``p_ij`` the joint distribution of (proposal segment i, truth segment
  j) over the truth-foreground pixels and ``s_i``/``t_j`` its marginals::

      V_rand_split = sum p_ij^2 / sum t_j^2      V_info_split = I(S;T) / H(S)
      V_rand_merge = sum p_ij^2 / sum s_i^2      V_info_merge = I(S;T) / H(T)
      V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2)
      V_info = I(S;T) / (0.5 H(S) + 0.5 H(T))

  i.e. the harmonic means (F-scores, alpha = 0.5) of split and merge scores.
  Fiji calls the merge score "precision" and the split score "recall".
* stacks: scores are computed per 2-D slice and averaged over slices (a macro
  average), as the official script does: it calls
  ``getMaximalVRandAfterThinning(0.0, maxThres, 0.1, true)``, whose last argument
  ``perSliceAverage`` averages the slices' F-scores (false would pool their pair
  counts, weighing a bad slice more: on ISBI slices 15-19 a 10-minute model
  scored V_rand 0.9498 averaged and 0.9444 pooled), and
  ``getMaximalVInfoAfterThinning`` always averages the slices.  Unlike Fiji, a
  slice without truth cells is skipped (Fiji counts it as 0 in the V_rand mean
  and gets NaN for V_info).
* probability maps: the proposal is binarized at each threshold of a sweep
  (Fiji: cell = value > threshold) and the best mean score is kept (V_rand and
  V_info are maximized independently, as in Fiji).

The 2012 leaderboard, and the U-Net paper's table, also gave a *pixel error*:
1 - the maximal F-score of pixel similarity (Fiji's
``PixelError.getPixelErrorMaximalFScore``; :func:`isbi_pixel_error`), with
cell interior as the positive class and the counts summed over the stack.  It
is not the fraction of mismatched pixels (:func:`pixel_error`): with about
78 % cell pixels the same labels score about two thirds of it.

All functions take the prediction first, never modify their inputs and use
numpy / scipy / scikit-image only.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from skimage.measure import label

from .labels import layer_order, layer_order_steps, positions_in, to_indices, unique_values

__all__ = [
    "DEFAULT_THRESHOLDS",
    "InfoScores",
    "RandScores",
    "UnknownValuesWarning",
    "dice_per_class",
    "evaluate",
    "info_scores",
    "iou_per_class",
    "isbi_pixel_error",
    "layer_boundary_errors",
    "layer_boundary_rows",
    "isbi_scores",
    "pixel_error",
    "rand_scores",
    "segment_cells",
    "truth_segments",
    "v_info",
    "v_rand",
    "EVALUATE_BLOCK_PIXELS",
    "MAX_PIXEL_HEIGHT_UM",
    "RARER_CLASS_PIXELS",
    "slice_blocks",
    "stack_view",
]

#: Default binarization thresholds of the probability sweep (0.1, ..., 0.9).
#: Fiji's ISBI script sweeps ``for (th = 0.0; th <= 1.0; th += 0.1)``, i.e. also 0.0 and
#: 0.9999999999999999 (cell = value > 0, cell = value == 1.0 for float32 maps); those two end points
#: are left out by default (pass ``thresholds`` to add them: on a 10-minute model's judge slices both
#: scored V_rand 0.09 and V_info 0, one segment, so the maximum is the same).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))

_CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity


class RandScores(NamedTuple):
    """Foreground-restricted Rand scores (each in [0, 1], 1 is perfect)."""

    v_rand: float
    split: float
    merge: float


class InfoScores(NamedTuple):
    """Foreground-restricted information theoretic scores (1 is perfect)."""

    v_info: float
    split: float
    merge: float


# ---------------------------------------------------------------------------
# Pixel-wise metrics
# ---------------------------------------------------------------------------


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs truth {truth.shape}")
    if pred.size == 0:
        raise ValueError("empty arrays")


def pixel_error(pred, truth) -> float:
    """Fraction of pixels whose class value differs.

    Parameters
    ----------
    pred, truth : ndarray, any shape (equal), arrays of class values.

    Returns
    -------
    float in [0, 1].
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    _check_same_shape(pred, truth)
    return float(np.count_nonzero(pred != truth) / pred.size)


def _overlap_counts(pred, truth, class_values):
    """Per class value: (|pred == v & truth == v|, |pred == v|, |truth == v|)."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    _check_same_shape(pred, truth)
    if class_values is None:
        class_values = np.unique(truth)
    out = {}
    for value in class_values:
        p = pred == value
        t = truth == value
        key = value.item() if isinstance(value, np.generic) else value
        out[key] = (
            int(np.count_nonzero(p & t)),
            int(np.count_nonzero(p)),
            int(np.count_nonzero(t)),
        )
    return out


def dice_per_class(pred, truth, class_values=None) -> dict[int, float]:
    """Dice coefficient 2|P & T| / (|P| + |T|) per class value.

    Parameters
    ----------
    pred, truth : ndarray, any shape (equal), arrays of class values.
    class_values : iterable of values, optional
        Classes to score; default: the values present in ``truth``.

    Returns
    -------
    dict mapping class value -> Dice in [0, 1] (1.0 if the class is absent
    from both arrays).
    """
    counts = _overlap_counts(pred, truth, class_values)
    return {
        value: (2.0 * inter / (n_pred + n_true) if n_pred + n_true else 1.0)
        for value, (inter, n_pred, n_true) in counts.items()
    }


def iou_per_class(pred, truth, class_values=None) -> dict[int, float]:
    """Intersection over union |P & T| / |P | T| per class value.

    Same parameters as :func:`dice_per_class`; 1.0 if the class is absent
    from both arrays.
    """
    counts = _overlap_counts(pred, truth, class_values)
    return {
        value: (
            inter / (n_pred + n_true - inter) if n_pred + n_true else 1.0
        )
        for value, (inter, n_pred, n_true) in counts.items()
    }


# ---------------------------------------------------------------------------
# Segmentation of binary membrane images
# ---------------------------------------------------------------------------


def truth_segments(cell_mask) -> np.ndarray:
    """Label ground-truth cells: 4-connected components of the interior.

    Parameters
    ----------
    cell_mask : (Y, X) array, True/nonzero = cell interior.

    Returns
    -------
    (Y, X) int label image, 0 = membrane (excluded from the ISBI scores).
    """
    cell_mask = np.asarray(cell_mask, dtype=bool)
    if cell_mask.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {cell_mask.shape}")
    return label(cell_mask, connectivity=1)


def segment_cells(cell_mask) -> np.ndarray:
    """Segment a binary proposal with borders thinned to watershed lines, exactly as Fiji's ISBI evaluation.

    The 4-connected components of the cell interior are flooded over the membrane pixels by
    Fiji's ``trainableSegmentation.utils.WatershedTransform2D(image, 4)`` (Soille-Vincent flooding
    with a FIFO queue, as ``RandError`` and ``VariationOfInformation`` call it on the thresholded
    proposal), transcribed pixel for pixel (:func:`_fiji_flood`): every membrane pixel joins a cell
    except the watershed lines, mostly one pixel wide (a two-pixel membrane keeps its right-hand or
    lower column as the line), a little wider where a membrane pixel is reached only through line
    pixels.  Another watershed places some line pixels elsewhere: scikit-image's flood did, and scored
    the ISBI judge slices of a 10-minute model 0.0001-0.0002 V_rand lower.  A mask without any
    interior is one single segment (Fiji's behaviour).

    Parameters
    ----------
    cell_mask : (Y, X) array, True/nonzero = cell interior.

    Returns
    -------
    (Y, X) int label image, 0 = watershed line pixels (scored as singletons).
    """
    cell_mask = np.asarray(cell_mask, dtype=bool)
    if cell_mask.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {cell_mask.shape}")
    markers = label(cell_mask, connectivity=1)
    if not cell_mask.any():
        return np.ones(cell_mask.shape, dtype=markers.dtype)
    if cell_mask.all():
        return markers
    return np.ascontiguousarray(_fiji_flood(cell_mask, markers), dtype=markers.dtype)


# WatershedTransform2D's pixel states (0 = WSHED, a line pixel; > 0 = basin label), and outside the image
_MASK, _INQUEUE, _OUTSIDE = -2, -3, -4


def _fiji_flood(cell_mask: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Fiji's ``WatershedTransform2D(binary, 4).apply()`` of a cell mask (cells at level 0, membrane at 255).

    Level 0 labels the 4-connected cells (``markers``).  Level 255 queues, in Fiji's pixel-list order
    (x outer, y inner: column by column), the membrane pixels with a cell 4-neighbour, then takes
    pixels first in, first out; each looks at its neighbours in the order (x-1, y), (x, y-1),
    (x+1, y), (x, y+1): a labelled neighbour gives its label to a pixel still unlabelled (or a line
    pixel made so by a line neighbour, while Fiji's shared ``flag`` says so), a second label makes it a
    line pixel (0), a line neighbour makes an unlabelled pixel a line pixel, and unqueued membrane
    neighbours join the queue.  The state lives in a column-major padded int32 array (index
    x * (Y + 2) + y), read and written through a memoryview: no Python list of the image.
    """
    height, width = cell_mask.shape
    step = height + 2  # the padded column length: neighbours are at -step, -1, +step, +1
    state = np.full((width + 2, height + 2), _OUTSIDE, dtype=np.int32)  # labels and states (fewer than 2**31 cells)
    inside = state[1:-1, 1:-1]
    inside[...] = _MASK
    np.copyto(inside, markers.T, casting="unsafe", where=cell_mask.T)  # no int64 temporary of the slice
    cells = np.zeros(state.shape, dtype=bool)
    cells[1:-1, 1:-1] = cell_mask.T
    queued = np.flatnonzero((state == _MASK) & ndi.binary_dilation(cells, structure=_CROSS))  # ascending: column-major
    del cells
    flat = state.reshape(-1)
    flat[queued] = _INQUEUE
    tab = memoryview(flat)
    fifo = deque(queued.tolist())
    del queued
    popleft, append = fifo.popleft, fifo.append
    flag = False  # Fiji's: True while the pixel at hand is a line pixel only because of a line neighbour
    while fifo:
        p = popleft()
        s = _INQUEUE
        for u in (p - step, p - 1, p + step, p + 1):
            v = tab[u]
            if v > 0:  # a labelled neighbour
                if s == _INQUEUE or (s == 0 and flag):
                    s = v
                elif s > 0 and s != v:
                    s = 0
                    flag = False
            elif v == 0:  # a line neighbour
                if s == _INQUEUE:
                    s = 0
                    flag = True
            elif v == _MASK:
                tab[u] = _INQUEUE
                append(u)
        tab[p] = s
    return state[1:-1, 1:-1].T


# ---------------------------------------------------------------------------
# Scores on label images
# ---------------------------------------------------------------------------


class _Contingency(NamedTuple):
    n: int  # truth-foreground pixels
    n_singletons: int  # of which proposal label 0
    truth_sizes: np.ndarray  # counts per truth segment (> 0 only)
    proposal_sizes: np.ndarray  # counts per proposal segment != 0 (> 0 only)
    overlaps: np.ndarray  # nonzero n_ij, proposal label != 0


def _as_labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.intp)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"{name} must be an integer label image")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must not contain negative labels")
    return a


def _compact(a: np.ndarray) -> np.ndarray:
    """Relabel to 0..k (keeping 0) when label values are too large to index."""
    if a.size == 0 or int(a.max()) <= 4 * a.size + 16:
        return a
    uniq, inverse = np.unique(a, return_inverse=True)
    if uniq[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(a.shape)


def _contingency(proposal_cells, truth_cells) -> _Contingency:
    proposal = _as_labels(proposal_cells, "proposal_cells")
    truth = _as_labels(truth_cells, "truth_cells")
    _check_same_shape(proposal, truth)
    fg = truth != 0
    t = _compact(truth[fg].ravel())
    s = _compact(proposal[fg].ravel())
    if t.size == 0:
        empty = np.zeros(0)
        return _Contingency(0, 0, empty, empty, empty)
    assigned = s != 0
    s_in, t_in = s[assigned], t[assigned]
    truth_sizes = np.bincount(t)
    proposal_sizes = np.bincount(s_in)
    table = sparse.coo_matrix(
        (np.ones(s_in.size, dtype=np.int64), (s_in, t_in)),
        shape=(max(proposal_sizes.size, 1), truth_sizes.size),
    ).tocsr()  # duplicate (i, j) entries are summed
    table.eliminate_zeros()
    return _Contingency(
        n=int(t.size),
        n_singletons=int(s.size - s_in.size),
        truth_sizes=truth_sizes[truth_sizes > 0].astype(np.float64),
        proposal_sizes=proposal_sizes[proposal_sizes > 0].astype(np.float64),
        overlaps=table.data.astype(np.float64),
    )


def _rand(c: _Contingency) -> RandScores:
    if c.n == 0:
        return RandScores(math.nan, math.nan, math.nan)
    # sums of squared counts (= n^2 * sums of squared probabilities);
    # each singleton adds 1 to the proposal and joint sums.
    sum_t2 = float(np.sum(c.truth_sizes**2))
    sum_s2 = float(np.sum(c.proposal_sizes**2)) + c.n_singletons
    sum_p2 = float(np.sum(c.overlaps**2)) + c.n_singletons
    split = sum_p2 / sum_t2
    merge = sum_p2 / sum_s2
    return RandScores(2.0 * sum_p2 / (sum_s2 + sum_t2), split, merge)


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts / n
    return float(-np.sum(p * np.log(p)))


def _info(c: _Contingency) -> InfoScores:
    if c.n == 0:
        return InfoScores(math.nan, math.nan, math.nan)
    n = c.n
    singletons = c.n_singletons / n * math.log(n)  # each: -(1/n) log(1/n)
    h_t = _entropy(c.truth_sizes, n)
    h_s = _entropy(c.proposal_sizes, n) + singletons
    h_st = _entropy(c.overlaps, n) + singletons
    mutual = min(max(h_s + h_t - h_st, 0.0), h_s, h_t)
    # A trivial partition (entropy 0) cannot split (resp. merge) anything:
    # 0/0 is read as a perfect component.  This gives Fiji's V_info = 0 when
    # exactly one of H(S), H(T) is 0; identical trivial partitions give 1.
    merge = mutual / h_t if h_t > 0 else 1.0
    split = mutual / h_s if h_s > 0 else 1.0
    total = merge + split
    v = 2.0 * merge * split / total if total > 0 else 0.0
    return InfoScores(v, split, merge)


def rand_scores(proposal_cells, truth_cells) -> RandScores:
    """Foreground-restricted Rand scores of a 2-D (or N-D) segmentation.

    Parameters
    ----------
    proposal_cells : int array, proposal segments; label 0 = unassigned
        (border) pixels, each counted as its own singleton segment.
    truth_cells : int array (same shape), truth segments; label 0 =
        background, excluded from the score.

    Returns
    -------
    RandScores(v_rand, split, merge); NaN if ``truth_cells`` is all 0.
    """
    return _rand(_contingency(proposal_cells, truth_cells))


def info_scores(proposal_cells, truth_cells) -> InfoScores:
    """Foreground-restricted information theoretic scores.

    Same conventions as :func:`rand_scores`.  As in Fiji, a single truth
    segment (H(T) = 0) or a single proposal segment (H(S) = 0) gives
    ``v_info = 0``, unless both are single segments (then 1.0; Fiji: 0).

    Returns
    -------
    InfoScores(v_info, split, merge); NaN if ``truth_cells`` is all 0.
    """
    return _info(_contingency(proposal_cells, truth_cells))


# ---------------------------------------------------------------------------
# ISBI 2012 evaluation of binary masks / probability maps
# ---------------------------------------------------------------------------


def _as_stack(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be (Y, X) or (Z, Y, X), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a[np.newaxis] if a.ndim == 2 else a


def _cell_mask(a: np.ndarray, membrane_value) -> np.ndarray:
    """Cell interior of a class-value image (a bool image: True = cell)."""
    return a if a.dtype == bool else a != membrane_value


def _proposal_masks(proposal, membrane_value, probability, thresholds):
    """Yield (threshold or None, (Z, Y, X) cell mask)."""
    proposal = _as_stack(np.asarray(proposal), "proposal")
    if probability is None:
        if np.issubdtype(proposal.dtype, np.floating) and not np.all(
            np.mod(proposal, 1) == 0
        ):
            raise ValueError(
                "proposal looks like a probability map: pass "
                "probability='cell' or probability='membrane'"
            )
        yield None, _cell_mask(proposal, membrane_value)
        return
    if probability not in ("cell", "membrane"):
        raise ValueError("probability must be None, 'cell' or 'membrane'")
    if not np.isfinite(proposal).all():  # NaN compares false: it would count as membrane (or cell) at every threshold
        raise ValueError("the probability map holds NaN or Inf")
    for t in DEFAULT_THRESHOLDS if thresholds is None else thresholds:
        t = float(t)
        yield t, (proposal > t) if probability == "cell" else (proposal < t)


def _score_slice(args):
    cell_mask, truth_seg = args
    c = _contingency(segment_cells(cell_mask), truth_seg)
    return _rand(c), _info(c)


def _score_cells(args):
    """_score_slice of (proposal cell mask, truth cell mask): a slice's truth segments only while it is scored."""
    cell_mask, truth_cells = args
    return _score_slice((cell_mask, truth_segments(truth_cells)))


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def isbi_scores(
    proposal,
    truth,
    *,
    membrane_value=0,
    probability: str | None = None,
    thresholds: Iterable[float] | None = None,
    workers: int | None = None,
) -> dict:
    """ISBI 2012 V_rand and V_info (after thinning) of a 2-D image or a stack.

    Parameters
    ----------
    proposal : (Y, X) or (Z, Y, X) array
        With ``probability=None``: class values, cell interior =
        ``proposal != membrane_value``, or a bool mask (True = cell).
        With ``probability='cell'``: float map, high = cell interior;
        cell = ``proposal > t``.  With ``probability='membrane'``: float map,
        high = membrane; cell = ``proposal < t``.
    truth : array, same shape as ``proposal``
        Membrane labels; cell interior = ``truth != membrane_value``
        (ISBI: 0 = membrane, 255 = cell), or a bool mask (True = cell).
    membrane_value : scalar
        Membrane class value of ``truth`` (and of a label ``proposal``).
    probability : None, 'cell' or 'membrane'
        What a float ``proposal`` is the probability of (see above).
    thresholds : iterable of float, optional
        Sweep for probability maps; default :data:`DEFAULT_THRESHOLDS`.
    workers : int, optional
        Threads over the slices (labelling and counting run in parallel, the watershed flood holds
        the GIL); default ``os.cpu_count()``.

    Returns
    -------
    dict with floats ``v_rand``, ``v_rand_split``, ``v_rand_merge``,
    ``v_info``, ``v_info_split``, ``v_info_merge`` (per-slice means at the
    best threshold of each score), ``v_rand_threshold``, ``v_info_threshold``
    (None for label proposals) and ``threshold`` (= ``v_rand_threshold``).
    Slices without truth cells are skipped; all-empty truth gives NaN.
    """
    truth = _as_stack(np.asarray(truth), "truth")
    truth_segs = [truth_segments(sl) for sl in _cell_mask(truth, membrane_value)]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), truth.shape[0]))

    per_threshold = []  # (threshold, slice-mean RandScores, slice-mean InfoScores)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for t, masks in _proposal_masks(
            proposal, membrane_value, probability, thresholds
        ):
            if masks.shape != truth.shape:
                raise ValueError(
                    f"shape mismatch: proposal {masks.shape} vs truth {truth.shape}"
                )
            if workers > 1:
                results = list(pool.map(_score_slice, zip(masks, truth_segs)))
            else:
                results = [_score_slice(job) for job in zip(masks, truth_segs)]
            rand = RandScores(*map(_nanmean, zip(*(r for r, _ in results))))
            info = InfoScores(*map(_nanmean, zip(*(i for _, i in results))))
            per_threshold.append((t, rand, info))
    if not per_threshold:
        raise ValueError("no thresholds given")

    def best(index: int):
        # first maximum wins (Fiji keeps the first strictly larger score)
        values = [entry[index][0] for entry in per_threshold]
        if all(math.isnan(v) for v in values):
            return per_threshold[0][0], per_threshold[0][index]
        k = int(np.nanargmax(values))
        return per_threshold[k][0], per_threshold[k][index]

    rand_t, rand = best(1)
    info_t, info = best(2)
    return {
        "v_rand": rand.v_rand,
        "v_rand_split": rand.split,
        "v_rand_merge": rand.merge,
        "v_rand_threshold": rand_t,
        "v_info": info.v_info,
        "v_info_split": info.split,
        "v_info_merge": info.merge,
        "v_info_threshold": info_t,
        "threshold": rand_t,
    }


def isbi_pixel_error(
    proposal,
    truth,
    *,
    membrane_value=0,
    probability: str | None = None,
    thresholds: Iterable[float] | None = None,
) -> float:
    """ISBI 2012 pixel error: 1 - maximal F-score of pixel similarity.

    As Fiji's ``PixelError.getPixelErrorMaximalFScore`` (the 2012 leaderboard's
    "pixel error", e.g. 0.0611 for the U-Net paper): the positive class is the
    cell interior, true/false positives and negatives are summed over all
    slices, F = 2 TP / (2 TP + FP + FN), and for a probability map the best
    threshold of the sweep is kept.

    Parameters
    ----------
    proposal, truth, membrane_value, probability, thresholds
        As in :func:`isbi_scores`: labels (class values or bool, True = cell)
        or, with ``probability='cell'`` / ``'membrane'``, a float map.

    Returns
    -------
    float in [0, 1]; 0 when neither has a cell pixel.
    """
    truth_cells = _cell_mask(_as_stack(np.asarray(truth), "truth"), membrane_value)
    n_truth = int(np.count_nonzero(truth_cells))
    best = None
    for _, masks in _proposal_masks(proposal, membrane_value, probability, thresholds):
        if masks.shape != truth_cells.shape:
            raise ValueError(
                f"shape mismatch: proposal {masks.shape} vs truth {truth_cells.shape}"
            )
        true_positives = int(np.count_nonzero(masks & truth_cells))
        n_proposed = int(np.count_nonzero(masks))
        # 2 TP + FP + FN = |proposal cells| + |truth cells|
        denominator = n_proposed + n_truth
        f_score = 1.0 if denominator == 0 else 2 * true_positives / denominator
        best = f_score if best is None else max(best, f_score)
    if best is None:
        raise ValueError("no thresholds given")
    return 1.0 - best


def v_rand(proposal, truth, **kwargs) -> float:
    """ISBI V_rand (after thinning); see :func:`isbi_scores` for arguments."""
    return isbi_scores(proposal, truth, **kwargs)["v_rand"]


def v_info(proposal, truth, **kwargs) -> float:
    """ISBI V_info (after thinning); see :func:`isbi_scores` for arguments."""
    return isbi_scores(proposal, truth, **kwargs)["v_info"]


# ---------------------------------------------------------------------------
# Summary for reports
# ---------------------------------------------------------------------------


def _json_float(x: float):
    x = float(x)
    return None if math.isnan(x) else x


def _key(value) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _class_value_array(labels, name: str) -> np.ndarray:
    """``labels`` as an array of class values, or ValueError for NaN, Inf or fractional values."""
    array = np.asarray(labels)
    if np.issubdtype(array.dtype, np.floating) and not (np.isfinite(array).all() and (np.mod(array, 1) == 0).all()):
        raise ValueError(f"{name} holds NaN, Inf or fractional values; evaluate takes labels of class values (whole numbers)")
    if np.issubdtype(array.dtype, np.floating) and array.size and np.abs(array).max() >= 2.0**63:
        raise ValueError(f"{name} holds values beyond the 64-bit integers; evaluate takes labels of class values")
    return array


# ---------------------------------------------------------------------------
# Layered labels (retinal OCT layers)
# ---------------------------------------------------------------------------


def _layer_ranks(labels: np.ndarray, layer_order) -> np.ndarray:
    """(Z, Y, X) int32 rank of each pixel's layer in ``layer_order`` (0 = top), -1 for values that are no layer."""
    order = np.asarray(layer_order)
    if order.ndim != 1 or len(order) < 2 or len(np.unique(order)) != len(order):
        raise ValueError(f"layer_order must list two or more distinct class values, got {order.tolist()}")
    if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
        raise ValueError("labels hold NaN or Inf; layer boundaries need class values")
    return positions_in(order, labels[None] if labels.ndim == 2 else labels)


def _first_rows_below(ranks: np.ndarray, k: int) -> np.ndarray:
    """(Z, X): in each column of (Z, Y, X) ``ranks``, the first row of a layer below layer k (Y if there is none)."""
    below = ranks > k
    return np.where(below.any(axis=1), below.argmax(axis=1), ranks.shape[1])


def layer_boundary_rows(labels, layer_order) -> np.ndarray:
    """Row of each boundary between consecutive layers, in every column.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) array of class values, layers stacked down Y (retinal OCT B-scans).
    layer_order : sequence of the N layers' class values, top to bottom.

    Returns
    -------
    float64 (N-1, X) or (Z, N-1, X): for boundary k, between ``layer_order[k]`` and ``layer_order[k+1]``, the
    first row of a layer below layer k (Y when there is none: the lower layers are absent there). NaN where the pixel
    above that row holds no layer (unannotated), so a truth with untraced gaps is not read as a boundary.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (Y, X) or (Z, Y, X) array, got shape {labels.shape}")
    ranks = _layer_ranks(labels, layer_order)
    rows = np.empty((len(ranks), len(layer_order) - 1, ranks.shape[2]))
    for k in range(len(layer_order) - 1):
        row = _first_rows_below(ranks, k)
        above = np.take_along_axis(ranks, np.maximum(row - 1, 0)[:, None, :], axis=1)[:, 0]
        rows[:, k] = np.where((row == 0) | (above >= 0), row, np.nan)
    return rows[0] if labels.ndim == 2 else rows


def layer_boundary_errors(pred_labels, truth_labels, layer_order) -> np.ndarray:
    """Mean absolute boundary position error of each layer boundary, in rows (pixels along Y).

    Parameters
    ----------
    pred_labels, truth_labels : (Y, X) or (Z, Y, X) arrays of class values (equal shapes).
    layer_order : sequence of the N layers' class values, top to bottom.

    Returns
    -------
    float64 (N-1,): for each boundary (see :func:`layer_boundary_rows`) the mean of |predicted row - true row| over
    the columns where the truth shows it (NaN if none). A predicted island of a lower layer above the true boundary
    moves that column's predicted boundary up to it: the error counts disorder too.
    """
    return _boundary_means(*_boundary_error_sums(pred_labels, truth_labels, layer_order))


def _boundary_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums / counts of :func:`_boundary_error_sums`, NaN for boundaries never shown."""
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _boundary_error_sums(pred_labels, truth_labels, layer_order) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts), float64 and int64 (N-1,): per boundary, the summed |predicted row - true row| and the number of
    columns where the truth shows it (:func:`layer_boundary_errors` = sums / counts; slices add up)."""
    pred = np.asarray(pred_labels)
    truth = np.asarray(truth_labels)
    _check_same_shape(pred, truth)
    true_rows = layer_boundary_rows(truth, layer_order)
    ranks = _layer_ranks(pred, layer_order)
    sums, counts = np.zeros(len(layer_order) - 1), np.zeros(len(layer_order) - 1, np.int64)
    for k in range(len(sums)):
        pred_row = _first_rows_below(ranks, k)
        true_row = true_rows[..., k, :].reshape(pred_row.shape)
        shown = np.isfinite(true_row)
        sums[k] = float(np.abs(pred_row[shown] - true_row[shown]).sum())
        counts[k] = int(shown.sum())
    return sums, counts


class UnknownValuesWarning(UserWarning):
    """:func:`evaluate`: the prediction holds values that are no class of the truth (scored as wrong)."""


#: Largest pixel height :func:`evaluate` takes (µm): a metre; 1e308 overflowed the errors in µm to inf (not JSON).
MAX_PIXEL_HEIGHT_UM = 1e6


#: Pixels :func:`evaluate` reads at a time (whole slices, at least one): stacks larger than memory (memory-mapped
#: TIFFs, zarr, dask) are scored a block of slices at a time, with temporaries of about 40 MB.
EVALUATE_BLOCK_PIXELS = 1 << 22


def slice_blocks(n_slices: int, slice_pixels: int, block_pixels: int = EVALUATE_BLOCK_PIXELS) -> list[slice]:
    """Slices of at most ``block_pixels`` pixels (at least one slice each) covering ``range(n_slices)``."""
    per_block = max(1, block_pixels // max(1, slice_pixels))
    return [slice(start, min(start + per_block, n_slices)) for start in range(0, n_slices, per_block)]


def stack_view(labels):
    """``labels`` as (Z, Y, X), read when indexed if it is lazy (zarr, dask, memory map); a (Y, X) image is read."""
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype") or not hasattr(labels, "__getitem__"):
        labels = np.asarray(labels)
    if len(labels.shape) == 2:
        return np.asarray(labels)[np.newaxis]
    return labels


#: Pixels of whole truth slices :func:`_rarer_class` counts (evenly spaced slices; every column of them).
RARER_CLASS_PIXELS = 1 << 24


def _rarer_class(truth, class_values):
    """Of two ``class_values``, the one of fewer pixels in evenly spaced whole slices of the (Z, Y, X) ``truth`` (the
    smaller value on a tie, or when the other is absent there): EM membranes, whichever value marks them (the smaller
    value was taken: a 1 = membrane mask scored V_rand 0.91 and V_info 0.08 for a prediction whose true scores were
    0.79 and 0.92). Whole slices: every n-th column of a membrane grid of period n was all membrane."""
    n_slices = truth.shape[0]
    count = max(1, min(n_slices, RARER_CLASS_PIXELS // max(1, truth.shape[1] * truth.shape[2])))
    low, high = sorted(class_values)
    n_low = n_high = 0
    for z in np.unique(np.linspace(0, n_slices - 1, count).round().astype(int)):
        plane = np.asarray(truth[int(z)])
        n_low, n_high = n_low + np.count_nonzero(plane == low), n_high + np.count_nonzero(plane == high)
    return high if 0 < n_high < n_low else low


def evaluate(pred_labels, truth_labels, class_values=None, membrane_value=None, ignore_value=None,
             pixel_height=None, truth_values=None) -> dict:
    """Evaluate a class-value prediction against ground truth (JSON-ready).

    Parameters
    ----------
    pred_labels, truth_labels : (Y, X) or (Z, Y, X) arrays of class values; numpy, or read when indexed (zarr, dask,
        memory maps): stacks are read :data:`EVALUATE_BLOCK_PIXELS` at a time: the truth twice (class values, then
        scores; once with ``truth_values``), an integer prediction once (a float one is checked for whole numbers first).
    class_values : sequence, optional
        Classes for Dice/IoU; default: values present in ``truth_labels`` (except ``ignore_value``).
    membrane_value : scalar or False, optional
        Membrane class.  ISBI scores are computed when it is given or when
        there are exactly two class values (then the one of fewer truth pixels is the
        membrane, as in ISBI: 0 = membrane, 255 = cell), every truth pixel is annotated and holds one of the
        class values. False: no membrane class (no ISBI scores), e.g. for a model that has none.
    ignore_value : scalar, optional
        Truth value of unannotated pixels (sparse truth): only the other pixels are scored.
    pixel_height : float, optional
        Pixel size along Y in µm: layer boundary errors also in µm.
    truth_values : iterable, optional
        The distinct values of ``truth_labels`` (``ignore_value`` included), when the caller has read them already
        (the command line, which checks them first): the truth is then read once.

    Returns
    -------
    dict: ``pixel_error`` (fraction of mismatched pixels), ``dice`` and
    ``iou`` ({str(value): float}); with ``ignore_value`` in the truth, ``annotated_pixels``; for membrane problems,
    ``membrane_value`` (the class scored as membrane), ``isbi_pixel_error`` (:func:`isbi_pixel_error`), ``v_rand``,
    ``v_rand_split``, ``v_rand_merge``, ``v_info``, ``v_info_split``,
    ``v_info_merge``; for truths of layers stacked down Y (retinal OCT, :func:`napari_unet.labels.layer_order`),
    ``layer_order`` (class values, top to bottom) and ``boundary_error_px`` (and ``boundary_error_um``):
    {"upper|lower": mean absolute row error of that boundary (:func:`layer_boundary_errors`), "mean": their mean}.
    Undefined scores (no truth cells, a boundary the truth never shows) are None. ValueError when no class value
    occurs in the scored truth, or ``pixel_height`` is no size in µm (above 0, at most :data:`MAX_PIXEL_HEIGHT_UM`).
    """
    if tuple(np.shape(pred_labels)) != tuple(np.shape(truth_labels)):
        raise ValueError(f"shape mismatch: pred {tuple(np.shape(pred_labels))} vs truth {tuple(np.shape(truth_labels))}")
    pred, truth = stack_view(pred_labels), stack_view(truth_labels)
    if len(np.shape(truth_labels)) not in (2, 3):
        raise ValueError(f"labels must be (Y, X) or (Z, Y, X), got shape {tuple(np.shape(truth_labels))}")
    if math.prod(truth.shape) == 0:
        raise ValueError("empty arrays")
    is_size = isinstance(pixel_height, (int, float, np.number)) and 0 < pixel_height <= MAX_PIXEL_HEIGHT_UM
    if pixel_height is not None and not is_size:
        raise ValueError(f"pixel_height must be a size in µm above 0 and at most {MAX_PIXEL_HEIGHT_UM:g}, got {pixel_height!r}")
    blocks = slice_blocks(truth.shape[0], truth.shape[1] * truth.shape[2], EVALUATE_BLOCK_PIXELS)

    # pass 1: the truth's values (and the NaN / fraction checks of both arrays), unless given
    scan_truth, scan_pred = truth_values is None, np.dtype(pred.dtype).kind == "f"  # integer predictions: not read here
    truth_values = set() if scan_truth else set(truth_values)
    for block in blocks if scan_truth or scan_pred else ():
        if scan_pred:
            _class_value_array(pred[block], "pred_labels")
        if scan_truth:
            plane = _class_value_array(truth[block], "truth_labels")
            # the values as np.unique gives them (bool stays bool: Dice keys "False"/"True"), integers counted fast
            truth_values.update((np.unique(plane) if plane.dtype == bool else unique_values(plane)).tolist())
    has_ignored = ignore_value is not None and ignore_value in truth_values
    scored_values = sorted(v for v in truth_values if not (has_ignored and v == ignore_value))
    if not scored_values:
        raise ValueError(f"truth_labels has no annotated pixel (all are the ignore value {ignore_value})")
    class_values = list(scored_values if class_values is None else class_values)
    if np.dtype(pred.dtype) == bool and not set(class_values) <= {0, 1}:  # True/False scored as classes 1/0: all wrong
        raise ValueError(f"pred_labels is a bool mask and the classes are {[_key(v) for v in class_values[:10]]}: give the "
                         "prediction in class values (e.g. np.where(mask, 255, 0)); isbi_scores and v_rand take a cell mask")
    if not any(v in truth_values and not (has_ignored and v == ignore_value) for v in class_values):
        # Dice 1.0 and ISBI pixel error 0 for a prediction 77 % wrong
        raise ValueError(f"none of the class values {[_key(v) for v in class_values]} occurs in the truth, whose values are "
                         f"{[_key(v) for v in scored_values[:10]]}{' ...' if len(scored_values) > 10 else ''}")
    order = None
    known = set(class_values) | ({ignore_value} if ignore_value is not None else set())
    if len(class_values) >= 2 and truth_values <= known:  # else: scores of some of the truth's classes only
        z_step, x_step = layer_order_steps(truth.shape)
        sample = to_indices(np.asarray(truth[::z_step, :, ::x_step]), class_values, ignore_value)
        order = layer_order(sample, max_columns=sample.shape[0] * sample.shape[2])  # the columns a whole stack gives
    layers = None if order is None else [class_values[k] for k in order]
    if membrane_value is False or membrane_value is np.False_:
        membrane_value = None
    elif membrane_value is None and len(class_values) == 2:
        membrane_value = _rarer_class(truth, class_values)
    elif membrane_value is not None and membrane_value not in class_values:  # every pixel would be cell: perfect scores
        raise ValueError(f"membrane_value {membrane_value} is not one of the class values {class_values}")
    # (a truth with other classes too has no membrane-and-cell reading: they would all count as membrane)
    membrane_problem = membrane_value is not None and not has_ignored and truth_values <= set(class_values)

    # pass 2: counts that add up over slices
    n_scored = n_wrong = 0
    overlaps = {v: np.zeros(3, np.int64) for v in class_values}  # |P & T|, |P|, |T|
    boundary_sums = boundary_counts = None
    cells_true_positive = cells_proposed = cells_true = 0
    slice_scores = []
    with ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, truth.shape[0]))) as pool:
        for block in blocks:
            pred_block, truth_block = np.asarray(pred[block]), np.asarray(truth[block])
            if has_ignored:
                annotated = truth_block != ignore_value
                scored_pred, scored_truth = pred_block[annotated], truth_block[annotated]
            else:
                scored_pred, scored_truth = pred_block, truth_block
            if scored_truth.size:
                n_scored += scored_truth.size
                n_wrong += int(np.count_nonzero(scored_pred != scored_truth))
                for value, (inter, n_pred, n_true) in _overlap_counts(scored_pred, scored_truth, class_values).items():
                    overlaps[value] += (inter, n_pred, n_true)
            if layers is not None:
                sums, counts = _boundary_error_sums(pred_block, truth_block, layers)
                boundary_sums = sums if boundary_sums is None else boundary_sums + sums
                boundary_counts = counts if boundary_counts is None else boundary_counts + counts
            if membrane_problem:
                # values that are no class (a 0/1 prediction of 0/255 truth) are wrong here as in the pixel error and
                # Dice above, not cell: cell = a class other than the membrane
                pred_cells = np.isin(pred_block, class_values) & (pred_block != membrane_value)
                truth_cells = truth_block != membrane_value
                cells_true_positive += int(np.count_nonzero(pred_cells & truth_cells))
                cells_proposed += int(np.count_nonzero(pred_cells))
                cells_true += int(np.count_nonzero(truth_cells))
                slice_scores += list(pool.map(_score_cells, zip(pred_cells, truth_cells)))
    unknown = n_scored - sum(int(n_pred) for _, n_pred, _ in overlaps.values())
    if unknown and set(scored_values) <= set(class_values):  # (a subset of the classes scored: the others are known)
        warnings.warn(f"pred_labels holds {unknown} pixels ({unknown / n_scored:.1%}) of values that are no class of the "
                      f"truth {[_key(v) for v in class_values[:10]]}: scored as wrong (a 0/1 mask of 0/255 truth?)",
                      UnknownValuesWarning, stacklevel=2)
    result = {
        "pixel_error": n_wrong / n_scored,
        "dice": {_key(v): float(2.0 * i / (p + t) if p + t else 1.0) for v, (i, p, t) in overlaps.items()},
        "iou": {_key(v): float(i / (p + t - i) if p + t else 1.0) for v, (i, p, t) in overlaps.items()},
    }
    if has_ignored:
        result["annotated_pixels"] = int(n_scored)
    if layers is not None:
        errors = _boundary_means(boundary_sums, boundary_counts)
        names = [f"{_key(upper)}|{_key(lower)}" for upper, lower in zip(layers, layers[1:])]
        result["layer_order"] = [int(v) for v in layers]
        for unit, factor in (("px", 1.0), ("um", pixel_height)):
            if factor is not None:
                scaled = errors * float(factor)
                mean = np.nanmean(scaled) if np.isfinite(scaled).any() else np.nan
                result[f"boundary_error_{unit}"] = {**{n: _json_float(e) for n, e in zip(names, scaled)}, "mean": _json_float(mean)}
    if membrane_problem:
        result["membrane_value"] = membrane_value.item() if isinstance(membrane_value, np.generic) else membrane_value
        denominator = cells_proposed + cells_true  # 2 TP + FP + FN (isbi_pixel_error)
        result["isbi_pixel_error"] = 1.0 - (1.0 if denominator == 0 else 2 * cells_true_positive / denominator)
        rand = RandScores(*map(_nanmean, zip(*(r for r, _ in slice_scores))))
        info = InfoScores(*map(_nanmean, zip(*(i for _, i in slice_scores))))
        for name, value in (("v_rand", rand.v_rand), ("v_rand_split", rand.split), ("v_rand_merge", rand.merge),
                            ("v_info", info.v_info), ("v_info_split", info.split), ("v_info_merge", info.merge)):
            result[name] = _json_float(value)
    return result
