"""Tests for napari_unet.metrics (small synthetic, hand-computed cases)."""

import json
import math
from collections import deque

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.segmentation import find_boundaries

from napari_unet import metrics as M

LN2 = math.log(2.0)


def _h(*counts):
    """Entropy (nats) of a distribution given by pixel counts."""
    n = sum(counts)
    return -sum(c / n * math.log(c / n) for c in counts)


# ---------------------------------------------------------------------------
# pixel error, Dice, IoU
# ---------------------------------------------------------------------------

# pred  = 0 0 1     truth = 0 1 1
#         1 2 2             1 2 0
PRED = np.array([[0, 0, 1], [1, 2, 2]])
TRUTH = np.array([[0, 1, 1], [1, 2, 0]])


def test_pixel_error_hand_case():
    # differing pixels: (0, 1) 0 vs 1 and (1, 2) 2 vs 0 -> 2 / 6
    assert M.pixel_error(PRED, TRUTH) == pytest.approx(1 / 3)
    assert M.pixel_error(TRUTH, TRUTH) == 0.0
    with pytest.raises(ValueError):
        M.pixel_error(PRED, TRUTH[:, :2])


def test_dice_and_iou_hand_case():
    # class 0: |P|=2 |T|=2 |P&T|=1 -> dice 2/4,  iou 1/3
    # class 1: |P|=2 |T|=3 |P&T|=2 -> dice 4/5,  iou 2/3
    # class 2: |P|=2 |T|=1 |P&T|=1 -> dice 2/3,  iou 1/2
    dice = M.dice_per_class(PRED, TRUTH)
    iou = M.iou_per_class(PRED, TRUTH)
    assert set(dice) == {0, 1, 2} and all(type(k) is int for k in dice)
    assert dice == pytest.approx({0: 0.5, 1: 0.8, 2: 2 / 3})
    assert iou == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 0.5})


def test_dice_iou_explicit_classes_empty_and_missing():
    # 7 is absent from both -> 1.0; 2 only in pred -> 0.0
    pred = np.array([[0, 2], [1, 1]])
    truth = np.array([[0, 1], [1, 1]])
    dice = M.dice_per_class(pred, truth, class_values=[2, 7])
    iou = M.iou_per_class(pred, truth, class_values=[2, 7])
    assert dice == {2: 0.0, 7: 1.0}
    assert iou == {2: 0.0, 7: 1.0}


# ---------------------------------------------------------------------------
# Rand / information scores on label images (hand-computed contingency)
# ---------------------------------------------------------------------------

# two truth cells of 4 pixels each
TRUTH_2 = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])


def test_perfect_labels_score_one():
    relabelled = np.array([[5, 5, 3, 3], [5, 5, 3, 3]])
    r = M.rand_scores(relabelled, TRUTH_2)
    i = M.info_scores(relabelled, TRUTH_2)
    assert tuple(r) == pytest.approx((1.0, 1.0, 1.0))
    assert tuple(i) == pytest.approx((1.0, 1.0, 1.0))


def test_merge_of_two_cells():
    # proposal: one segment over both cells.  n = 8
    # n_ij = [[4, 4]]  sum n_ij^2 = 32, sum t^2 = 16 + 16 = 32, sum s^2 = 64
    # split = 32/32 = 1, merge = 32/64 = 1/2, V = 2*32/(64+32) = 2/3
    merged = np.ones((2, 4), int)
    r = M.rand_scores(merged, TRUTH_2)
    assert r.v_rand == pytest.approx(2 / 3)
    assert r.split == pytest.approx(1.0)
    assert r.merge == pytest.approx(0.5)
    # H(S) = 0 -> I = 0: V_info = 0 (as in Fiji), nothing is split.
    i = M.info_scores(merged, TRUTH_2)
    assert i.v_info == pytest.approx(0.0)
    assert i.split == pytest.approx(1.0)
    assert i.merge == pytest.approx(0.0)


def test_split_of_one_cell():
    # proposal splits truth cell 1 into two columns:
    #   1 3 2 2      n_ij: (1,1)=2 (3,1)=2 (2,2)=4
    #   1 3 2 2      sum n_ij^2 = 24, sum t^2 = 32, sum s^2 = 24
    # split = 24/32 = 3/4, merge = 1, V = 48/56 = 6/7
    split = np.array([[1, 3, 2, 2], [1, 3, 2, 2]])
    r = M.rand_scores(split, TRUTH_2)
    assert tuple(r) == pytest.approx((6 / 7, 0.75, 1.0))
    # H(T) = ln 2, H(S) = H(2,2,4) = 1.5 ln 2, S refines T -> I = H(T)
    # split = I/H(S) = 2/3, merge = 1, V = 2I/(H(S)+H(T)) = 0.8
    i = M.info_scores(split, TRUTH_2)
    assert tuple(i) == pytest.approx((0.8, 2 / 3, 1.0))


def test_singleton_border_pixels():
    # proposal label 0 (border) pixels inside truth cells are singletons:
    #   1 0 2 2      n_ij: (1,1)=3 (2,2)=3 + 2 singletons
    #   1 1 2 0      sum n_ij^2 = 9 + 9 + 2 = 20, sum s^2 = 20, sum t^2 = 32
    # split = 20/32, merge = 1, V = 40/52 = 10/13
    proposal = np.array([[1, 0, 2, 2], [1, 1, 2, 0]])
    r = M.rand_scores(proposal, TRUTH_2)
    assert tuple(r) == pytest.approx((10 / 13, 0.625, 1.0))
    # H(S) = H(3, 3, 1, 1) (singletons are segments), I = H(T) = ln 2
    h_s = _h(3, 3, 1, 1)
    assert h_s == pytest.approx(0.75 * math.log(8 / 3) + 0.25 * math.log(8))
    i = M.info_scores(proposal, TRUTH_2)
    assert i.split == pytest.approx(LN2 / h_s)
    assert i.merge == pytest.approx(1.0)
    assert i.v_info == pytest.approx(2 * LN2 / (h_s + LN2))
    # all singletons: sum n_ij^2 = sum s^2 = 8 -> split 8/32, V = 16/40
    r0 = M.rand_scores(np.zeros((2, 4), int), TRUTH_2)
    assert tuple(r0) == pytest.approx((0.4, 0.25, 1.0))


def test_truth_background_is_excluded():
    # a truth membrane column (label 0) where the proposal merges both cells
    # does not change anything: only truth-foreground pixels are counted.
    truth = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    proposal = np.array([[4, 4, 4, 6, 6], [4, 4, 0, 6, 6]])
    assert tuple(M.rand_scores(proposal, truth)) == pytest.approx((1.0, 1.0, 1.0))
    assert tuple(M.info_scores(proposal, truth)) == pytest.approx((1.0, 1.0, 1.0))
    # no truth foreground at all -> undefined
    assert math.isnan(M.rand_scores(proposal, np.zeros_like(truth)).v_rand)
    assert math.isnan(M.info_scores(proposal, np.zeros_like(truth)).v_info)


def test_label_values_are_arbitrary():
    split = np.array([[1, 3, 2, 2], [1, 3, 2, 2]])
    huge = split.astype(np.int64) * 10**12
    assert tuple(M.rand_scores(huge, TRUTH_2 * 7)) == pytest.approx((6 / 7, 0.75, 1.0))
    assert tuple(M.info_scores(huge, TRUTH_2 * 7)) == pytest.approx((0.8, 2 / 3, 1.0))
    with pytest.raises(ValueError):
        M.rand_scores(split - 2, TRUTH_2)


# ---------------------------------------------------------------------------
# Border thinning
# ---------------------------------------------------------------------------


def _two_cells(width, gap_row=None, shape=(6, 7), left=3):
    """Cell mask: two cells separated by a vertical membrane band."""
    cell = np.ones(shape, bool)
    cell[:, left : left + width] = False
    if gap_row is not None:
        cell[gap_row, left : left + width] = True
    return cell


def test_segment_cells_thins_thick_border_to_one_line():
    # 3-pixel wide membrane (columns 2-4): columns 2 and 4 join their cell,
    # column 3 is the one-pixel watershed line.
    seg = M.segment_cells(_two_cells(3, left=2))
    assert np.all(seg[:, 3] == 0)
    assert len(np.unique(seg[:, :3])) == 1 and len(np.unique(seg[:, 4:])) == 1
    assert seg[0, 0] != seg[0, 6] and seg[0, 0] > 0 and seg[0, 6] > 0


def test_segment_cells_even_width_border():
    # 2-pixel wide membrane: one line pixel per row separates the two cells
    seg = M.segment_cells(_two_cells(2, shape=(5, 8)))
    assert np.all((seg == 0).sum(axis=1) == 1)
    assert np.all(seg[:, 0] == seg[0, 0]) and np.all(seg[:, -1] == seg[0, -1])
    assert set(np.unique(seg)) == {0, seg[0, 0], seg[0, -1]}


def test_segment_cells_absorbs_membrane_that_separates_nothing():
    cell = np.ones((7, 7), bool)
    cell[2:5, 2:5] = False  # membrane blob inside a single cell
    assert np.all(M.segment_cells(cell) == 1)
    # no interior at all: one segment (Fiji's behaviour)
    assert np.all(M.segment_cells(np.zeros((4, 4), bool)) == 1)


def _fiji_watershed_transform_2d(cell_mask):
    """Literal transcription of Fiji's trainableSegmentation.utils.WatershedTransform2D(binary, 4).apply()
    (fiji/Trainable_Segmentation, as RandError/VariationOfInformation call it on the thresholded proposal:
    cells 0, membrane 255): levels in ascending order, pixel list x outer / y inner, FIFO queue,
    neighbours (x-1, y), (x, y-1), (x+1, y), (x, y+1), one shared ``flag``.  Slow; a reference only."""
    INIT, MASK, WSHED, INQUEUE = -1, -2, 0, -3
    image = np.where(np.asarray(cell_mask, bool), 0, 255)
    height, width = image.shape
    tab = [[INIT] * height for _ in range(width)]  # tabLabels[x][y]

    def neighbours(x, y):
        return [(u, v) for u, v in ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1)) if 0 <= u < width and 0 <= v < height]

    current_label, flag = 0, False
    for h in sorted(set(image.ravel().tolist())):
        level = [(x, y) for x in range(width) for y in range(height) if image[y, x] == h]
        fifo = deque()
        for x, y in level:
            tab[x][y] = MASK
            if any(tab[u][v] >= WSHED for u, v in neighbours(x, y)):
                fifo.append((x, y))
                tab[x][y] = INQUEUE
        while fifo:
            x, y = fifo.popleft()
            for u, v in neighbours(x, y):
                if tab[u][v] > 0:
                    if tab[x][y] == INQUEUE or (tab[x][y] == WSHED and flag):
                        tab[x][y] = tab[u][v]
                    elif tab[x][y] > 0 and tab[x][y] != tab[u][v]:
                        tab[x][y] = WSHED
                        flag = False
                elif tab[u][v] == WSHED:
                    if tab[x][y] == INQUEUE:
                        tab[x][y] = WSHED
                        flag = True
                elif tab[u][v] == MASK:
                    tab[u][v] = INQUEUE
                    fifo.append((u, v))
        for x, y in level:
            if tab[x][y] == MASK:
                current_label += 1
                tab[x][y] = current_label
                fifo.append((x, y))
                while fifo:
                    p, q = fifo.popleft()
                    for u, v in neighbours(p, q):
                        if tab[u][v] == MASK:
                            tab[u][v] = current_label
                            fifo.append((u, v))
    return np.array(tab).T


def _same_segmentation(a, b):
    """Same line pixels (0) and the same partition of the rest, whatever the label numbers."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_segment_cells_is_fijis_watershed_pixel_for_pixel():
    # scikit-image's flood (used before) placed other line pixels on 168 of 200 random 16x16 masks
    rng = np.random.default_rng(7)
    for k in range(60):
        shape = tuple(rng.integers(3, 14, 2))
        cell = rng.random(shape) < (0.45, 0.6, 0.75)[k % 3]
        assert _same_segmentation(M.segment_cells(cell), _fiji_watershed_transform_2d(cell)), k


def test_segment_cells_two_pixel_membrane_keeps_the_right_and_lower_line():
    # Fiji floods column by column: the left (upper) membrane column (row) takes its cell first, the
    # other one meets both cells and is the line; scikit-image's flood zig-zagged between the two.
    vertical = _two_cells(2, shape=(5, 8))  # membrane columns 3-4
    seg = M.segment_cells(vertical)
    assert np.all(seg[:, 4] == 0) and np.count_nonzero(seg == 0) == 5
    horizontal = vertical.T.copy()  # membrane rows 3-4
    seg = M.segment_cells(horizontal)
    assert np.all(seg[4, :] == 0) and np.count_nonzero(seg == 0) == 5


def test_two_pixel_membrane_scores_as_in_fiji():
    # truth: 5x8, membrane column 3, cells 15 px (columns 0-2) and 20 px (columns 4-7), n = 35.
    # proposal: membrane columns 3-4; Fiji's line is column 4, inside the right truth cell: 5 singletons.
    # sum n_ij^2 = 15^2 + 15^2 + 5 = 455 = sum s^2, sum t^2 = 15^2 + 20^2 = 625
    # V_rand = 910 / 1080 = 91/108, split 455/625, merge 1; S refines T: I = H(T)
    truth = _two_cells(1, shape=(5, 8))
    proposal = _two_cells(2, shape=(5, 8))
    s = M.isbi_scores(proposal, truth)
    assert s["v_rand"] == pytest.approx(91 / 108)
    assert s["v_rand_split"] == pytest.approx(455 / 625)
    assert s["v_rand_merge"] == pytest.approx(1.0)
    h_t, h_s = _h(15, 20), _h(15, 15, 1, 1, 1, 1, 1)
    assert s["v_info"] == pytest.approx(2 * h_t / (h_s + h_t))


# ---------------------------------------------------------------------------
# ISBI scores on binary images, stacks and probability maps
# ---------------------------------------------------------------------------

# truth: 6x7, cells = columns 0-2 and 4-6 (18 px each), membrane column 3
TRUTH_IMG = np.where(_two_cells(1), 255, 0).astype(np.uint8)


def test_thick_predicted_border_is_not_penalised_after_thinning():
    proposal = np.where(_two_cells(3, left=2), 255, 0).astype(np.uint8)
    s = M.isbi_scores(proposal, TRUTH_IMG)
    assert s["v_rand"] == pytest.approx(1.0)
    assert s["v_info"] == pytest.approx(1.0)
    assert s["threshold"] is None and s["v_rand_threshold"] is None
    # without thinning the two extra border columns (12 px) are singletons:
    # sum n_ij^2 = 144 + 144 + 12 = 300 = sum s^2, sum t^2 = 2 * 18^2 = 648
    unthinned = label(proposal == 255, connectivity=1)
    truth_cells = M.truth_segments(TRUTH_IMG)
    assert M.rand_scores(unthinned, truth_cells).v_rand == pytest.approx(600 / 948)


def test_gap_in_border_merges_two_cells():
    # one missing membrane pixel connects both cells -> one segment.
    # n = 36: sum n_ij^2 = 2 * 18^2 = 648 = sum t^2, sum s^2 = 36^2
    # V_rand = 1296 / 1944 = 2/3, split 1, merge 1/2; V_info = 0
    proposal = np.where(_two_cells(1, gap_row=0), 255, 0).astype(np.uint8)
    s = M.isbi_scores(proposal, TRUTH_IMG)
    assert s["v_rand"] == pytest.approx(2 / 3)
    assert s["v_rand_split"] == pytest.approx(1.0)
    assert s["v_rand_merge"] == pytest.approx(0.5)
    assert s["v_info"] == pytest.approx(0.0)
    assert M.v_rand(proposal, TRUTH_IMG) == pytest.approx(2 / 3)
    assert M.v_info(proposal, TRUTH_IMG) == pytest.approx(0.0)


def test_extra_border_splits_a_cell():
    # an extra membrane row (row 3) across the left cell splits it into
    # 9 px (rows 0-2) + 6 px (rows 4-5); its 3 pixels become line singletons.
    # n = 36: sum n_ij^2 = 81 + 36 + 3 + 324 = 444 = sum s^2, sum t^2 = 648
    # split = 444/648 = 37/54, merge = 1, V_rand = 888/1092 = 74/91
    cell = _two_cells(1)
    cell[3, :3] = False
    assert np.all(M.segment_cells(cell)[3, :3] == 0)
    s = M.isbi_scores(cell, TRUTH_IMG == 255)
    assert s["v_rand"] == pytest.approx(74 / 91)
    assert s["v_rand_split"] == pytest.approx(37 / 54)
    assert s["v_rand_merge"] == pytest.approx(1.0)
    # S refines T: I = H(T) = ln 2, H(S) = H(9, 6, 1, 1, 1, 18)
    h_s = _h(9, 6, 1, 1, 1, 18)
    assert s["v_info_split"] == pytest.approx(LN2 / h_s)
    assert s["v_info_merge"] == pytest.approx(1.0)
    assert s["v_info"] == pytest.approx(2 * LN2 / (LN2 + h_s))


def test_stack_is_mean_over_slices():
    perfect = TRUTH_IMG
    merged = np.where(_two_cells(1, gap_row=0), 255, 0).astype(np.uint8)
    s = M.isbi_scores(np.stack([perfect, merged]), np.stack([TRUTH_IMG, TRUTH_IMG]))
    assert s["v_rand"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert s["v_rand_merge"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["v_info"] == pytest.approx((1.0 + 0.0) / 2)
    # a slice without truth cells is skipped
    empty = np.zeros_like(TRUTH_IMG)
    s2 = M.isbi_scores(np.stack([merged, merged]), np.stack([TRUTH_IMG, empty]), workers=1)
    assert s2["v_rand"] == pytest.approx(2 / 3)


def _probability_map():
    # P(cell): cells 0.85, membrane column 0.35 but 0.55 at row 0 (weak spot)
    p = np.where(_two_cells(1), 0.85, 0.35)
    p[0, 3] = 0.55
    return p


def test_threshold_sweep_picks_the_right_threshold():
    # cell = p > t:  t <= 0.5 the weak spot connects the cells (merge, 2/3),
    # t in 0.6..0.8 perfect, t = 0.9 nothing is cell (one segment, 2/3).
    p = _probability_map()
    s = M.isbi_scores(p, TRUTH_IMG, probability="cell")
    assert s["v_rand"] == pytest.approx(1.0)
    assert s["v_info"] == pytest.approx(1.0)
    assert s["v_rand_threshold"] == pytest.approx(0.6)
    assert s["v_info_threshold"] == pytest.approx(0.6)
    # restricted sweep without a good threshold keeps the best (first) one
    s_bad = M.isbi_scores(p, TRUTH_IMG, probability="cell", thresholds=[0.2, 0.5, 0.9])
    assert s_bad["v_rand"] == pytest.approx(2 / 3)
    assert s_bad["threshold"] == pytest.approx(0.2)
    # membrane probability: cell = m < t, m = 0.15 / 0.45 / 0.65 -> t = 0.2
    s_m = M.isbi_scores(1.0 - p, TRUTH_IMG, probability="membrane")
    assert s_m["v_rand"] == pytest.approx(1.0)
    assert s_m["threshold"] == pytest.approx(0.2)


def test_probability_map_requires_explicit_meaning():
    with pytest.raises(ValueError, match="probability"):
        M.isbi_scores(_probability_map(), TRUTH_IMG)
    with pytest.raises(ValueError):
        M.isbi_scores(_probability_map(), TRUTH_IMG, probability="cells")


def test_perfect_prediction_scores_one_and_evaluate_report():
    rng = np.random.default_rng(1)
    truth = np.stack([np.where(_voronoi_cells(rng, 48, 12), 255, 0) for _ in range(2)])
    truth = truth.astype(np.uint8)
    r = M.evaluate(truth.copy(), truth)
    assert r["pixel_error"] == 0.0
    assert r["dice"] == {"0": 1.0, "255": 1.0} and r["iou"] == {"0": 1.0, "255": 1.0}
    for key in ("v_rand", "v_rand_split", "v_rand_merge"):
        assert r[key] == pytest.approx(1.0)
    for key in ("v_info", "v_info_split", "v_info_merge"):
        assert r[key] == pytest.approx(1.0)
    json.dumps(r)  # JSON-ready


def test_evaluate_hand_case_and_multiclass():
    # binary ISBI-like case: the merged proposal from above
    merged = np.where(_two_cells(1, gap_row=0), 255, 0).astype(np.uint8)
    r = M.evaluate(merged, TRUTH_IMG)
    # one membrane pixel wrong out of 42; membrane: |P|=5, |T|=6 -> dice 10/11
    assert r["pixel_error"] == pytest.approx(1 / 42)
    assert r["dice"]["0"] == pytest.approx(10 / 11)
    assert r["iou"]["0"] == pytest.approx(5 / 6)
    assert r["dice"]["255"] == pytest.approx(2 * 36 / 73)
    assert r["v_rand"] == pytest.approx(2 / 3)
    assert r["v_rand_merge"] == pytest.approx(0.5)
    assert r["v_info"] == pytest.approx(0.0)
    # cells: |P| = 37, |T| = 36, |P & T| = 36 -> F = 72 / 73
    assert r["isbi_pixel_error"] == pytest.approx(1 / 73)
    # explicit membrane value with other class values
    pred1, truth1 = (merged > 0).astype(int) + 1, (TRUTH_IMG > 0).astype(int) + 1
    r1 = M.evaluate(pred1, truth1, membrane_value=1)
    assert r1["v_rand"] == pytest.approx(2 / 3)
    # bool masks are read as True = cell whatever the membrane value
    s_bool = M.isbi_scores(merged > 0, TRUTH_IMG > 0, membrane_value=255)
    assert s_bool["v_rand"] == pytest.approx(2 / 3)
    # multi-class (e.g. OCT layers): no ISBI scores
    r3 = M.evaluate(PRED, TRUTH)
    assert set(r3) == {"pixel_error", "dice", "iou"}
    assert r3["dice"] == pytest.approx({"0": 0.5, "1": 0.8, "2": 2 / 3})
    # no truth cells: undefined ISBI scores are None (JSON null)
    r4 = M.evaluate(merged, np.zeros_like(merged), class_values=[0, 255])
    assert r4["v_rand"] is None and r4["v_info"] is None
    json.dumps(r4)


def test_isbi_pixel_error_is_one_minus_the_pixel_f_score():
    truth = np.full((2, 10, 10), 255, np.uint8)
    truth[:, 4:6, :] = 0  # 20 membrane, 80 cell pixels per slice
    # slice 0 perfect; slice 1 thickens the membrane by two rows (20 cell pixels called membrane)
    pred = truth.copy()
    pred[1, 3, :] = pred[1, 6, :] = 0
    # counts summed over the stack (Fiji), not a mean of per-slice scores:
    # TP = 80 + 60, |P| = 140, |T| = 160 -> F = 280 / 300
    assert M.isbi_pixel_error(pred, truth) == pytest.approx(1 - 280 / 300)
    assert M.pixel_error(pred, truth) == pytest.approx(20 / 200)  # the mismatch fraction is larger
    assert M.isbi_pixel_error(truth, truth) == 0.0
    assert M.isbi_pixel_error(pred > 0, truth > 0) == pytest.approx(1 - 280 / 300)
    # a probability map is binarised at the best threshold of the sweep
    membrane = np.where(truth == 0, 0.9, 0.1)
    membrane[1, 3, :] = 0.6  # a true cell row: right from threshold 0.7 on, membrane below it
    assert M.isbi_pixel_error(membrane, truth, probability="membrane") == 0.0
    assert M.isbi_pixel_error(membrane, truth, probability="membrane", thresholds=[0.5]) == pytest.approx(
        1 - 2 * 150 / 310
    )
    assert M.isbi_pixel_error(1 - membrane, truth, probability="cell") == 0.0
    # nothing is cell on either side: agreement
    assert M.isbi_pixel_error(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        M.isbi_pixel_error(pred[:, :5], truth)
    with pytest.raises(ValueError, match="probability"):
        M.isbi_pixel_error(membrane, truth)


def test_inputs_are_not_modified():
    p = _probability_map()
    truth = TRUTH_IMG.copy()
    mask = _two_cells(3, left=2)
    labels = np.array([[1, 0, 2, 2], [1, 1, 2, 0]])
    copies = [a.copy() for a in (p, truth, mask, labels)]
    M.isbi_scores(p, truth, probability="cell")
    M.isbi_scores(mask, truth > 0)
    M.segment_cells(mask)
    M.rand_scores(labels, TRUTH_2)
    M.info_scores(labels, TRUTH_2)
    M.evaluate(np.where(mask, 255, 0), truth)
    M.dice_per_class(labels, TRUTH_2)
    for before, after in zip(copies, (p, truth, mask, labels)):
        assert np.array_equal(before, after)


# ---------------------------------------------------------------------------
# Agreement with Fiji's watershed thinning (Vincent-Soille flooding)
# ---------------------------------------------------------------------------


def _voronoi_cells(rng, size, n_cells, width=1):
    pts = rng.integers(0, size, (n_cells, 2))
    seeds = np.zeros((size, size), bool)
    seeds[pts[:, 0], pts[:, 1]] = True
    _, idx = ndi.distance_transform_edt(~seeds, return_indices=True)
    regions = label(seeds)[idx[0], idx[1]]
    membrane = find_boundaries(regions, mode="inner")
    if width > 1:
        membrane = ndi.binary_dilation(membrane, iterations=width - 1)
    return ~membrane


def _fiji_thinning(cell):
    """Slow port of Fiji's WatershedTransform2D(4) on the inverted binary
    proposal (trainableSegmentation.utils), used only as a reference."""
    h, w = cell.shape
    MASK, WSHED, INQUEUE = -2, 0, -3
    lab = np.full((h, w), -1)
    order = [(y, x) for x in range(w) for y in range(h)]  # Fiji: x outer

    def neighbours(y, x):
        for v, u in ((y, x - 1), (y - 1, x), (y, x + 1), (y + 1, x)):
            if 0 <= v < h and 0 <= u < w:
                yield v, u

    current, flag = 0, False
    for level in (True, False):  # cell pixels (0) first, then borders (255)
        pixels = [(y, x) for y, x in order if cell[y, x] == level]
        fifo = deque()
        for y, x in pixels:
            lab[y, x] = MASK
            if any(lab[v, u] >= WSHED for v, u in neighbours(y, x)):
                lab[y, x] = INQUEUE
                fifo.append((y, x))
        while fifo:
            y, x = fifo.popleft()
            for v, u in neighbours(y, x):
                if lab[v, u] > 0:
                    if lab[y, x] == INQUEUE or (lab[y, x] == WSHED and flag):
                        lab[y, x] = lab[v, u]
                    elif lab[y, x] > 0 and lab[y, x] != lab[v, u]:
                        lab[y, x], flag = WSHED, False
                elif lab[v, u] == WSHED and lab[y, x] == INQUEUE:
                    lab[y, x], flag = WSHED, True
                elif lab[v, u] == MASK:
                    lab[v, u] = INQUEUE
                    fifo.append((v, u))
        for y, x in pixels:
            if lab[y, x] == MASK:  # new minimum
                current += 1
                lab[y, x] = current
                queue = deque([(y, x)])
                while queue:
                    for v, u in neighbours(*queue.popleft()):
                        if lab[v, u] == MASK:
                            lab[v, u] = current
                            queue.append((v, u))
    return lab


def test_thinning_matches_fiji_reference_closely():
    rng = np.random.default_rng(0)
    for _ in range(3):
        truth = _voronoi_cells(rng, 64, 14, width=3)
        noise = ndi.gaussian_filter(rng.normal(0, 0.8, truth.shape), 1.0)
        proposal = ndi.gaussian_filter(truth.astype(float), 1.0) + noise > 0.5
        truth_cells = M.truth_segments(truth)
        ours, fiji = M.segment_cells(proposal), _fiji_thinning(proposal)
        # same cells; only the placement of some line pixels may differ
        assert ours.max() == fiji.max()
        assert abs(int((ours == 0).sum()) - int((fiji == 0).sum())) <= 0.05 * (fiji == 0).sum()
        r_ours, r_fiji = M.rand_scores(ours, truth_cells), M.rand_scores(fiji, truth_cells)
        i_ours, i_fiji = M.info_scores(ours, truth_cells), M.info_scores(fiji, truth_cells)
        assert r_ours.v_rand == pytest.approx(r_fiji.v_rand, abs=2e-3)
        assert i_ours.v_info == pytest.approx(i_fiji.v_info, abs=2e-3)
    # on a thick straight border both put the line in the same place
    cell = _two_cells(3, left=2)
    assert np.array_equal(M.segment_cells(cell) == 0, _fiji_thinning(cell) == 0)


def test_evaluate_scores_values_that_are_no_class_as_wrong_in_every_score():
    # a 0/1 prediction of 0/255 truth: pixel error and Dice called it wrong, the ISBI scores called it perfect
    truth = np.full((32, 32), 255, np.uint8)
    truth[:, 15:17] = 0
    perfect = M.evaluate(truth, truth)
    for pred in (np.where(truth == 255, 1, 0).astype(np.uint8),):  # (a bool mask is refused: see below)
        with pytest.warns(M.UnknownValuesWarning, match="values that are no class of the truth"):  # it said nothing
            scores = M.evaluate(pred, truth)
        assert scores["dice"]["255"] == 0.0 and scores["pixel_error"] > 0.5
        assert scores["v_rand"] < perfect["v_rand"] == 1.0 and scores["isbi_pixel_error"] > 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.5])
def test_evaluate_refuses_labels_that_are_not_class_values(bad):
    truth = np.zeros((8, 8), np.float32)
    truth[:, 4:] = 255
    broken = truth.copy()
    broken[0, 0] = bad
    for pred, ground in ((broken, truth), (truth, broken)):
        with pytest.raises(ValueError, match="class values"):
            M.evaluate(pred, ground)


# ---------------------------------------------------------------------------
# Layer boundaries (retinal OCT)
# ---------------------------------------------------------------------------


def _layered_scan(n_rows=60, n_cols=40, seed=0):
    """(boundaries (3, X) float rows, labels (Y, X) uint8 0..3) of four wavy layers."""
    from napari_unet.synthetic import oct_labels_from_boundaries

    x = np.arange(n_cols)
    rng = np.random.default_rng(seed)
    base = np.array([12.0, 25.0, 40.0])[:, None] + 3 * np.sin(x / 7.0)[None] + rng.uniform(-0.4, 0.4, (3, n_cols))
    return base, oct_labels_from_boundaries(base, n_rows)


def test_layer_boundary_rows_are_the_first_row_below_each_traced_boundary():
    boundaries, labels = _layered_scan()
    rows = M.layer_boundary_rows(labels, [0, 1, 2, 3])
    assert rows.shape == (3, labels.shape[1]) and rows.dtype == np.float64
    assert np.array_equal(rows, np.ceil(boundaries))  # the first row at or below the boundary
    stack_rows = M.layer_boundary_rows(np.stack([labels, labels[:, ::-1]]), [0, 1, 2, 3])
    assert stack_rows.shape == (2, 3, labels.shape[1]) and np.array_equal(stack_rows[1], rows[:, ::-1])


def test_a_boundary_next_to_unannotated_rows_is_not_shown_by_the_truth():
    _, labels = _layered_scan()
    sparse = labels.copy()
    sparse[:, :10][sparse[:, :10] == 0] = 255  # vitreous not annotated in the first 10 columns
    rows = M.layer_boundary_rows(sparse, [0, 1, 2, 3])
    assert np.isnan(rows[0, :10]).all() and np.isfinite(rows[0, 10:]).all() and np.isfinite(rows[1:]).all()
    errors = M.layer_boundary_errors(labels, sparse, [0, 1, 2, 3])
    assert np.array_equal(errors, [0.0, 0.0, 0.0])


def test_layer_boundary_errors_are_mean_absolute_row_shifts_and_count_islands():
    _, truth = _layered_scan()
    n_cols = truth.shape[1]
    shifted = truth.copy()
    for x in range(n_cols // 2):  # the second boundary 3 rows deeper in half the columns
        column = shifted[:, x]
        start = int(np.argmax(column >= 2))
        column[start : start + 3] = 1
    errors = M.layer_boundary_errors(shifted, truth, [0, 1, 2, 3])
    assert errors == pytest.approx([0.0, 1.5, 0.0])
    island = truth.copy()
    island[2, 5] = 3  # a speck of the lowest layer in the vitreous of one column
    errors = M.layer_boundary_errors(island, truth, [0, 1, 2, 3])
    true_rows = M.layer_boundary_rows(truth, [0, 1, 2, 3])[:, 5]
    assert errors == pytest.approx((true_rows - 2) / n_cols)


def test_layer_boundary_functions_refuse_bad_orders_and_nan():
    _, labels = _layered_scan()
    for order in ([0], [0, 0, 1], [[0, 1]]):
        with pytest.raises(ValueError, match="layer_order"):
            M.layer_boundary_rows(labels, order)
    with pytest.raises(ValueError, match="NaN"):
        M.layer_boundary_rows(np.where(labels == 1, np.nan, labels), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        M.layer_boundary_errors(labels[:-1], labels, [0, 1, 2, 3])


def test_evaluate_gives_layered_truths_boundary_errors_in_rows_and_microns():
    _, truth = _layered_scan()
    pred = np.concatenate([truth[:2], truth[:-2]])  # every boundary 2 rows deeper
    pred_before = pred.copy()
    result = M.evaluate(pred, truth, pixel_height=3.5)
    assert np.array_equal(pred, pred_before)
    assert result["layer_order"] == [0, 1, 2, 3]
    assert result["boundary_error_px"] == {"0|1": 2.0, "1|2": 2.0, "2|3": 2.0, "mean": 2.0}
    assert result["boundary_error_um"] == {"0|1": 7.0, "1|2": 7.0, "2|3": 7.0, "mean": 7.0}
    json.dumps(result)
    assert "boundary_error_um" not in M.evaluate(pred, truth)
    rng = np.random.default_rng(0)
    cells = np.where(rng.random((64, 64)) < 0.2, 0, 255).astype(np.uint8)  # not layered: no boundary errors
    assert "layer_order" not in M.evaluate(cells, cells) and "v_rand" in M.evaluate(cells, cells)


def test_evaluate_scores_only_annotated_pixels_of_a_sparse_truth():
    _, truth = _layered_scan()
    sparse = truth.copy()
    sparse[:, 20:] = 255
    pred = truth.copy()
    pred[:, 20:] = 3 - pred[:, 20:]  # wrong only where the truth is not annotated
    result = M.evaluate(pred, sparse, ignore_value=255)
    assert result["pixel_error"] == 0.0 and result["annotated_pixels"] == 20 * truth.shape[0]
    assert result["boundary_error_px"]["mean"] == 0.0 and set(result["dice"]) == {"0", "1", "2", "3"}
    with pytest.raises(ValueError, match="no annotated pixel"):
        M.evaluate(pred, np.full_like(sparse, 255), ignore_value=255)


def test_metrics_refuse_nan_maps_empty_stacks_wrong_dimensions_and_a_membrane_value_that_is_no_class():
    rng = np.random.default_rng(0)
    truth = np.where(rng.random((2, 32, 32)) < 0.2, 0, 255).astype(np.uint8)
    wrong = truth.copy()
    wrong[:, :10] = 255 - wrong[:, :10]
    # every pixel counted as cell in both: V_rand 1.0 and pixel error 0.0 for a prediction with 30 % wrong pixels
    with pytest.raises(ValueError, match="membrane_value 7 is not one of the class values"):
        M.evaluate(wrong, truth, membrane_value=7)
    nan_map = np.full(truth.shape, np.nan, np.float32)
    for score in (M.isbi_scores, M.isbi_pixel_error):
        with pytest.raises(ValueError, match="NaN"):
            score(nan_map, truth, probability="membrane")
        with pytest.raises(ValueError, match="empty"):
            score(truth[:0], truth[:0])
    for shape in ((32,), (1, 2, 8, 8)):
        with pytest.raises(ValueError, match=r"\(Y, X\) or \(Z, Y, X\)"):
            M.evaluate(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))


def test_evaluate_of_some_classes_and_of_boolean_layers():
    _, truth = _layered_scan()
    some = M.evaluate(truth, truth, class_values=[1, 2])  # a LabelError from the layer check, which has all classes
    assert set(some["dice"]) == {"1", "2"} and "layer_order" not in some
    mask = np.zeros((40, 30), bool)
    mask[25:] = True  # below, in every column: a layered boolean mask
    result = M.evaluate(np.concatenate([mask[:2], mask[:-2]]), mask)  # the boundary 2 rows deeper
    assert result["layer_order"] == [0, 1] and result["boundary_error_px"]["mean"] == 2.0  # int("False") failed


def test_evaluate_refuses_class_values_the_truth_does_not_hold_and_pixel_heights_that_are_no_size():
    # class values [7, 8] of 0..3 labels scored Dice 1.0 and ISBI pixel error 0.0 for a prediction 77 % wrong; a negative
    # pixel height gave negative errors in µm, 1e308 gave Infinity (not JSON)
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, (2, 32, 32)), rng.integers(0, 4, (2, 32, 32))
    with pytest.raises(ValueError, match=r"none of the class values \['7', '8'\] occurs in the truth"):
        M.evaluate(pred, truth, class_values=[7, 8])
    for bad in (-1.0, 0.0, float("nan"), float("inf"), 1e308, "1"):
        with pytest.raises(ValueError, match="pixel_height must be a size in µm"):
            M.evaluate(pred, truth, pixel_height=bad)
    some = M.evaluate(pred, truth, class_values=[0, 1])  # two of the four classes: their Dice, no membrane reading
    assert set(some["dice"]) == {"0", "1"} and "isbi_pixel_error" not in some and "v_rand" not in some
    two = M.evaluate(np.where(pred > 1, 255, 0), np.where(truth > 1, 255, 0))  # a membrane truth still gets the ISBI scores
    assert "isbi_pixel_error" in two and two["v_rand"] is not None


# ---------------------------------------------------------------------------
# evaluate, a block of slices at a time
# ---------------------------------------------------------------------------


class _CountingStack:
    """A (Z, Y, X) array read when indexed, like a zarr store or a memory map: records how many pixels each read took."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.reads.append(out.size)
        return out


def _evaluation_cases():
    from napari_unet.synthetic import make_em_stack, make_oct_stack

    _, em = make_em_stack(n_slices=5, shape=(96, 96), seed=3)
    em = em.astype(np.uint8)
    em_pred = em.copy()
    em_pred[::2] = np.roll(em_pred[::2], 2, axis=1)
    _, layers = make_oct_stack(n_scans=4, shape=(96, 128), seed=1)
    layers_pred = np.roll(layers, 3, axis=1)
    sparse = em.copy()
    sparse[:, 30:60] = 7
    sparse[1] = 7  # a slice with nothing annotated
    return [
        (em_pred, em, {}),
        (layers_pred, layers, {"pixel_height": 3.87}),
        (em_pred, sparse, {"ignore_value": 7}),
        (layers_pred, layers, {"class_values": [1, 2, 3]}),
    ]


def _flat(scores: dict, prefix="") -> dict:
    """{"dice/0": 0.9, ...}: nested score dicts as one level (pytest.approx compares no nested dicts)."""
    out = {}
    for key, value in scores.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: Scores of :func:`_evaluation_cases` from evaluate as it was before it read blocks of slices (cac1301).
WHOLE_STACK_SCORES = [
    # V_rand/V_info with Fiji's watershed (a literal port of the Fiji evaluation gave the same to 2e-16);
    # scikit-image's flood, used before, scored 0.926258676030059 / 0.9379921731918908
    {"v_rand": 0.9281204541967641, "v_info": 0.9396660093650743, "pixel_error": 0.11323784722222222},
    {"pixel_error": 0.2559407552083333, "boundary_error_px/mean": 45.31141493055556, "boundary_error_um/mean": 175.35517578125,
     "dice/1": 0.15731785944551901},
    {"pixel_error": 0.14543876262626262, "annotated_pixels": 25344},
    {"pixel_error": 0.2559407552083333, "dice/1": 0.15731785944551901},
]


def test_evaluate_block_by_block_equals_whole_stack(monkeypatch):
    whole = [M.evaluate(pred, truth, **kwargs) for pred, truth, kwargs in _evaluation_cases()]
    for scores, pinned in zip(whole, WHOLE_STACK_SCORES):
        assert {key: _flat(scores)[key] for key in pinned} == pytest.approx(pinned, rel=1e-12)
    assert "v_rand" not in whole[2] and "boundary_error_px" not in whole[3]  # sparse truth; classes of the truth only
    monkeypatch.setattr(M, "EVALUATE_BLOCK_PIXELS", 1)  # one slice at a time
    for (pred, truth, kwargs), expected in zip(_evaluation_cases(), whole):
        assert _flat(M.evaluate(pred, truth, **kwargs)) == pytest.approx(_flat(expected), rel=1e-12)


def test_evaluate_reads_a_lazy_stack_a_block_at_a_time(monkeypatch):
    pred, truth, _ = _evaluation_cases()[1]
    expected = M.evaluate(pred, truth)
    monkeypatch.setattr(M, "EVALUATE_BLOCK_PIXELS", 2 * truth[0].size)
    lazy_pred, lazy_truth = _CountingStack(pred), _CountingStack(truth)
    before = (pred.copy(), truth.copy())
    assert _flat(M.evaluate(lazy_pred, lazy_truth)) == pytest.approx(_flat(expected), rel=1e-12)
    assert max(lazy_pred.reads) == 2 * truth[0].size  # never more than a block (two slices)
    # the truth also gives the columns its layer order is judged on: a strided sample, at most the whole stack once
    assert sorted(lazy_truth.reads)[-2] <= 2 * truth[0].size and sum(lazy_truth.reads) <= 3 * truth.size
    np.testing.assert_array_equal(before[0], pred)
    np.testing.assert_array_equal(before[1], truth)
    # the truth's values given (the command line reads them for its own checks): its blocks are read once, to score
    block = 2 * truth[0].size
    blocks_read = sum(1 for size in lazy_truth.reads if size == block)
    assert blocks_read == 2 * -(-len(truth) // 2)  # class values, then scores
    lazy_truth.reads.clear()
    given = M.evaluate(_CountingStack(pred), lazy_truth, truth_values=np.unique(truth).tolist())
    assert _flat(given) == pytest.approx(_flat(expected), rel=1e-12)
    assert sum(1 for size in lazy_truth.reads if size == block) == blocks_read // 2


def test_evaluate_keeps_its_answers_on_edge_inputs():
    """As before the block-by-block rewrite: bool classes keep their names, a (1, Y, X) prediction of a (Y, X) truth
    is a shape mismatch; float labels beyond int64 are refused (they raised OverflowError)."""
    truth = np.zeros((20, 20), bool)
    truth[:, 10:] = True
    assert set(M.evaluate(truth, truth)["dice"]) == {"False", "True"}
    with pytest.raises(ValueError, match="shape mismatch"):
        M.evaluate(truth[None], truth)
    big = np.where(truth, 2.0**70, 0.0)
    with pytest.raises(ValueError, match="beyond the 64-bit integers"):
        M.evaluate(big, big)


def test_evaluate_of_layers_with_a_pocket_gives_the_layers_boundaries():
    # a fluid pocket (class 9) inside layer 2: a boundary "3|9" below the choroid was scored, or none at all
    _, truth = _layered_scan()
    truth = truth.copy()
    truth[33:36, 5:9] = np.where(truth[33:36, 5:9] == 2, 9, truth[33:36, 5:9])
    assert (truth == 9).any()
    pred = np.concatenate([truth[:1], truth[:-1]])  # every boundary 1 row deeper
    result = M.evaluate(pred, truth)
    assert result["layer_order"] == [0, 1, 2, 3]
    assert result["boundary_error_px"]["mean"] == 1.0


def test_evaluate_without_a_membrane_class_gives_no_isbi_scores():
    rng = np.random.default_rng(0)
    cells = np.where(rng.random((64, 64)) < 0.2, 0, 255).astype(np.uint8)
    assert "v_rand" in M.evaluate(cells, cells)
    plain = M.evaluate(cells, cells, membrane_value=False)
    assert "v_rand" not in plain and "isbi_pixel_error" not in plain and plain["dice"] == {"0": 1.0, "255": 1.0}


def test_evaluate_refuses_a_bool_prediction_of_other_classes():
    # a perfect cell mask scored V_rand 0.22 and ISBI pixel error 1.0 against its 0/255 truth, without a word
    truth = np.where(np.random.default_rng(0).random((64, 64)) < 0.2, 0, 255).astype(np.uint8)
    with pytest.raises(ValueError, match="bool mask"):
        M.evaluate(truth != 0, truth)
    assert M.evaluate(truth != 0, truth != 0)["pixel_error"] == 0.0  # a bool truth: bool classes


def test_evaluate_takes_the_rarer_of_two_classes_as_the_membrane_whichever_value_marks_it():
    # 1 = membrane, 0 = cell (a common boundary-mask convention) was scored with 0 as membrane: V_rand 0.91 and V_info
    # 0.08 for a prediction whose true scores were 0.79 and 0.92, with no word
    truth = np.full((2, 64, 64), 255, np.uint8)
    truth[:, ::16], truth[:, :, ::16] = 0, 0  # membranes of a grid of cells
    pred = truth.copy()
    pred[0, 16, 5:30] = 255  # a gap: two cells merge
    pred[1, 40:44, 40:44] = 0  # a speck of membrane inside a cell
    isbi = M.evaluate(pred, truth)
    inverted = M.evaluate(np.where(pred == 0, 1, 0).astype(np.uint8), np.where(truth == 0, 1, 0).astype(np.uint8))
    assert isbi["membrane_value"] == 0 and inverted["membrane_value"] == 1
    for name in ("v_rand", "v_info", "isbi_pixel_error", "pixel_error"):
        assert inverted[name] == pytest.approx(isbi[name]), name
    assert isbi["v_rand"] < 1.0
    assert M.evaluate(pred, truth, membrane_value=255)["membrane_value"] == 255  # named: as named
    # a grid of membranes in step with a column stride: counted on every n-th column, its membranes were the majority
    grid = np.full((16, 128, 1024), 255, np.uint8)
    grid[:, :, ::8], grid[:, ::8] = 0, 0
    assert M._rarer_class(grid, [0, 255]) == 0
