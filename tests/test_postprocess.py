import numpy as np
import pytest

from napari_unet.postprocess import (
    tiled_boundary_mask,
    BORDER_REACH,
    MERGE_SIGMA,
    boundary_mask,
    candidate_closings,
    close_boundaries,
    find_boundary_class,
    merge_regions,
    region_borders,
    segment_instances,
    tune_boundary_rule,
    watershed_regions,
)


def two_cells_with_a_gap():
    """A vertical membrane (probability 0.9) splitting two cells, with a weak gap (0.45) in the middle."""
    probability = np.full((40, 40), 0.05, np.float32)
    probability[:, 19:21] = 0.9
    probability[17:23, 19:21] = 0.45
    return probability


def test_thresholding_merges_cells_but_closed_boundaries_separate_them():
    from skimage.measure import label

    probability = two_cells_with_a_gap()
    assert label(probability <= 0.5, connectivity=1).max() == 1  # the gap merges the two cells
    closed = close_boundaries(probability)
    assert label(~closed, connectivity=1).max() == 2
    assert closed[:, 19:21].any(axis=1).all(), "every row of the membrane is closed"
    assert closed.sum() < 40 * 4, "the membrane is not thickened beyond its width"


def test_segment_instances_labels_each_cell_once():
    instances = segment_instances(two_cells_with_a_gap())
    left, right = instances[20, 5], instances[20, 35]
    assert left > 0 and right > 0 and left != right
    assert set(np.unique(instances)) == {0, left, right}


def test_find_boundary_class_calls_a_band_across_the_image_no_boundary():
    from napari_unet.synthetic import make_oct_stack

    _, layers = make_oct_stack(2, (96, 128), seed=3)
    band = (layers == 8).astype(np.int64)  # one thin layer down every column: no cells to close
    assert find_boundary_class(band, 2) is None
    edges = band.copy()
    edges[:, :, :40] = -1  # manual OCT annotations often leave the edge columns out
    assert find_boundary_class(edges, 2) is None
    assert find_boundary_class(np.swapaxes(band, 1, 2), 2) == 1  # side by side: thin lines crossing every row


def test_find_boundary_class_tells_thin_lines_from_blobs():
    membranes = np.ones((1, 64, 64), np.int32)
    membranes[:, ::16, :] = 0
    membranes[:, :, ::16] = 0
    assert find_boundary_class(membranes, 2) == 0
    blobs = np.ones((1, 64, 64), np.int32)
    blobs[:, 10:40, 10:40] = 0
    assert find_boundary_class(blobs, 2) is None
    assert find_boundary_class(np.zeros((1, 8, 8), np.int32), 3) is None


def test_find_boundary_class_of_scribbles_needs_a_thin_class_between_thicker_ones():
    """Cell blobs fewer than the membrane strokes were the "boundary" (thin against the unannotated pixels around them):
    border weights went to cells and the advice to close gaps on the cell class raised the pixel error 0.17 -> 0.36."""
    yy, xx = np.mgrid[:128, :128]
    blobs = np.full((1, 128, 128), -1, np.int8)
    for y, x in ((30, 30), (90, 30), (60, 100)):
        blobs[0][(yy - y) ** 2 + (xx - x) ** 2 <= 25] = 1  # small cell blobs, 243 pixels
    blobs[0, 10:120, 60:64] = 0  # a longer membrane stroke, 440 pixels, half as wide as the blobs
    assert find_boundary_class(blobs, 2) == 0
    blobs[0, 10:120, 58:66] = 0  # a stroke as wide as the blobs: which class bounds the other cannot be told
    assert find_boundary_class(blobs, 2) is None
    between = np.full((1, 128, 128), -1, np.int8)
    between[0, 30:90, 40:60] = between[0, 30:90, 64:84] = 1  # cell strokes on both sides of a membrane stroke
    between[0, 30:90, 60:64] = 0
    assert find_boundary_class(between, 2) == 0
    assert find_boundary_class(np.where(between == 1, -1, between), 2) is None  # a stroke of one class alone
    thin_cells = between.copy()
    thin_cells[0, 30:90, 40:56] = thin_cells[0, 30:90, 68:84] = -1  # cell strokes as thin as the membrane's
    assert find_boundary_class(thin_cells, 2) is None


def test_dense_labels_of_small_cells_with_some_pixels_left_out_keep_their_boundary_class():
    """The scribbles' rules are for mostly unannotated planes: one dense image of small cells, whose validation columns
    training leaves out, or a stack with an erased box, lost its membranes (no border weights, no membrane rule)."""
    from napari_unet.synthetic import make_em_stack

    _, labels = make_em_stack(2, (256, 256), n_cells=200)
    cells = (labels == 255).astype(np.int8)
    one = cells[:1].copy()
    one[:, :, 230:] = -1  # one image's validation columns
    erased = cells.copy()
    erased[:, 100:140, 100:140] = -1
    assert find_boundary_class(cells, 2) == find_boundary_class(one, 2) == find_boundary_class(erased, 2) == 0
    empty = np.full((2, 64, 64), -1, np.int8)  # a plane with no pixel of the other class is no thin one
    empty[0, 10:40, 10:40] = 0
    empty[1, :, :] = 1
    empty[1, 20:50, 20:50] = -1
    assert find_boundary_class(empty, 2) is None


def test_boundary_mask_thresholds_or_closes():
    probability = two_cells_with_a_gap()
    np.testing.assert_array_equal(boundary_mask(probability, threshold=0.5), probability > 0.5)
    np.testing.assert_array_equal(boundary_mask(probability, threshold=0.4), probability > 0.4)
    closed = boundary_mask(probability, threshold=0.5, seed_level=0.1)
    assert np.all(closed[probability > 0.5]) and closed[17:23, 19:21].any(axis=1).all()


def test_tuning_closes_gaps_on_the_threshold_with_the_lowest_pixel_error():
    truth_cells = np.ones((1, 40, 40), bool)
    truth_cells[:, :, 19:21] = False
    gap = two_cells_with_a_gap()[None]
    gap[:, 17:23, 19:21] = 0.2  # below every threshold: only closing separates the cells
    gap[:, :, 18] = 0.55  # a halo that every threshold below 0.6 adds to the membrane
    original = gap.copy()
    rule, score = tune_boundary_rule(gap, truth_cells)
    assert rule["merge_below"] is not None and score > 0.99
    assert rule["threshold"] == 0.6, "the lowest threshold without the halo"
    np.testing.assert_array_equal(gap, original)
    rule, score = tune_boundary_rule(gap, truth_cells, closings=())
    assert rule == {"threshold": 0.6, "seed_level": None, "merge_below": None} and score < 0.9


def test_tuned_rules_carry_their_smoothing_and_stored_rules_without_one_keep_theirs():
    truth_cells = np.ones((1, 40, 40), bool)
    truth_cells[:, :, 19:21] = False
    probability = two_cells_with_a_gap()[None]
    rule, _ = tune_boundary_rule(probability, truth_cells)
    assert rule["merge_below"] is not None and rule["sigma"] == MERGE_SIGMA
    rng = np.random.default_rng(0)
    noisy = np.clip(probability[0] + rng.normal(0, 0.1, probability[0].shape), 0, 1).astype(np.float32)
    stored = {key: value for key, value in rule.items() if key != "sigma"}  # a rule saved before sigma was tuned
    np.testing.assert_array_equal(boundary_mask(noisy, **stored), boundary_mask(noisy, **stored, sigma=1.0))
    unmerged = {sigma: len(np.unique(merge_regions(noisy, merge_below=0.0, sigma=sigma))) for sigma in (1.0, MERGE_SIGMA)}
    assert unmerged[MERGE_SIGMA] < unmerged[1.0], "a smoother map has fewer spurious minima to merge"


def two_cells_with_a_gap_and_a_false_split():
    """Two cells as in :func:`two_cells_with_a_gap`; the left one has a faint (0.3) line across it."""
    probability = two_cells_with_a_gap()
    probability[:, 9] = 0.3
    return probability


def test_merge_regions_keeps_gapped_membranes_and_merges_faint_splits():
    probability = two_cells_with_a_gap_and_a_false_split()
    original = probability.copy()
    regions = merge_regions(probability, merge_below=0.6, minima_depth=0.05)
    assert regions.dtype == np.int32 and regions.shape == probability.shape
    assert regions[20, 3] == regions[20, 15], "the faint line inside the left cell is merged away"
    assert regions[20, 3] != regions[20, 35], "the membrane with a gap still separates the cells"
    assert len(np.unique(regions)) == 2
    np.testing.assert_array_equal(probability, original)


def test_boundary_mask_with_merging_closes_the_gap_and_only_adds_boundary_pixels():
    from skimage.measure import label

    probability = two_cells_with_a_gap_and_a_false_split()
    mask = boundary_mask(probability, threshold=0.5, merge_below=0.6, minima_depth=0.05)
    assert np.all(mask[probability > 0.5])
    assert label(~mask, connectivity=1).max() == 2
    assert not mask[:, 5:13].any(), "no boundary is drawn along the faint split"


def test_watershed_regions_are_what_merging_starts_from():
    probability = two_cells_with_a_gap_and_a_false_split()
    regions = watershed_regions(probability, minima_depth=0.02, sigma=1.0)
    assert regions.dtype == np.int32 and regions.shape == probability.shape and regions.min() >= 1  # no watershed lines
    assert len(np.unique(regions)) >= 3  # both cells and the false split's two halves
    unmerged = merge_regions(probability, merge_below=0.0, sigma=1.0)  # same partition, labels from 0
    assert len(np.unique(regions)) == len(np.unique(unmerged)) == len(np.unique(regions * 1000 + unmerged))
    with pytest.raises(ValueError, match=r"non-empty \(Y, X\) probability map"):
        watershed_regions(probability[None])


def test_merge_regions_of_a_flat_map_is_one_region():
    regions = merge_regions(np.full((16, 16), 0.1, np.float32))
    assert len(np.unique(regions)) == 1


def two_cells_with_a_weak_membrane_stretch_and_faint_splits():
    """(40, 40) float32: a membrane (0.9) between two cells, weak (0.4) along its top 12 rows; a faint line (0.2) splits both cells."""
    probability = np.full((40, 40), 0.05, np.float32)
    probability[:, 19:21] = 0.9
    probability[:12, 19:21] = 0.4
    probability[11:13, :19] = 0.2
    probability[11:13, 21:] = 0.2
    return probability


@pytest.mark.parametrize("minima_depth", [0.02, 0.05])
def test_hierarchical_merging_judges_a_weak_stretch_with_the_whole_membrane(minima_depth):
    probability = two_cells_with_a_weak_membrane_stretch_and_faint_splits()
    top_left, bottom_left, top_right, bottom_right = (5, 5), (30, 5), (5, 30), (30, 30)
    regions = merge_regions(probability, merge_below=0.6, minima_depth=minima_depth)
    assert regions[top_left] == regions[bottom_left] and regions[top_right] == regions[bottom_right]
    assert regions[top_left] != regions[top_right], "the cells' whole shared membrane (mean 0.75) keeps them apart"
    one_shot = merge_regions(probability, merge_below=0.6, minima_depth=minima_depth, hierarchical=False)
    assert len(np.unique(one_shot)) == 1, "judged alone, the weak top stretch (0.4) merges the two cells"


def a_pale_cell_behind_a_gapped_membrane():
    """(40, 40) float32: a dark cell (0.05) and a pale cell (0.3) apart by a membrane (0.9) whose top 10 rows are a gap (0.38)."""
    probability = np.full((40, 40), 0.05, np.float32)
    probability[:, 21:] = 0.3
    probability[:, 19:21] = 0.9
    probability[:10, 19:21] = 0.38
    return probability


def test_shallow_minima_keep_a_pale_cell_for_the_merge_to_judge():
    probability = a_pale_cell_behind_a_gapped_membrane()
    dark, pale = (30, 5), (30, 35)
    regions = merge_regions(probability, merge_below=0.6)
    assert regions[dark] != regions[pale], "default depth 0.02: the pale cell has a marker; its mostly strong membrane keeps it"
    deep = merge_regions(probability, merge_below=0.6, minima_depth=0.05)
    assert len(np.unique(deep)) == 1, "depth 0.05: the gap is ~0.03 above the pale cell, which is flooded without a judged boundary"
    from skimage.measure import label

    borders = region_borders(probability, merge_below=0.6)
    assert borders[:10, 18:22].any() and not borders[:, :17].any(), "a one-pixel border closes the gap, nowhere else"
    assert label(~boundary_mask(probability, threshold=0.5, merge_below=0.6), connectivity=1).max() == 2


def test_importing_prediction_leaves_the_region_graph_library_for_the_rule():
    """skimage.graph loads networkx (~0.6 s); `predict` imports it in the membrane rule's thread, not at start-up."""
    import subprocess
    import sys

    code = "import sys, napari_unet.predict; print('networkx' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_wider_set_of_merge_levels_can_merge_a_stronger_false_split():
    truth_cells = np.ones((1, 40, 40), bool)
    truth_cells[:, :, 19:21] = False
    probability = two_cells_with_a_gap()[None]
    probability[:, :, 8:11] = 0.65  # a false line across the left cell, stronger than the short-run levels
    original = probability.copy()
    short, short_score = tune_boundary_rule(probability, truth_cells)  # candidate levels 0.5, 0.6
    wide, wide_score = tune_boundary_rule(probability, truth_cells, closings=candidate_closings((0.5, 0.6, 0.7)))
    assert wide["merge_below"] == 0.7 and wide_score > 0.99 > short_score
    assert wide["threshold"] == short["threshold"] == 0.7, "the line is no membrane at the threshold"
    np.testing.assert_array_equal(probability, original)
    assert [c["merge_below"] for c in candidate_closings((0.5, 0.6))] == [0.5, 0.6]


def two_cells_and_a_dark_speck():
    """(40, 40) float32: two cells apart by a membrane (0.9) and, inside the left cell, a speck the network is sure
    of (0.8, 3x3 pixels, e.g. a vesicle) that no region border runs through."""
    probability = two_cells_with_a_gap()
    probability[:, 19:21] = 0.9  # no gap
    probability[19:22, 7:10] = 0.8
    return probability


def test_border_reach_keeps_the_membrane_and_drops_what_the_merge_left_inside_a_cell():
    probability = two_cells_and_a_dark_speck()
    original = probability.copy()
    rule = {"threshold": 0.5, "merge_below": 0.6, "sigma": MERGE_SIGMA}
    plain = boundary_mask(probability, **rule)
    reached = boundary_mask(probability, **rule, border_reach=4.0)
    assert plain[19:22, 7:10].all() and not reached[19:22, 7:10].any(), "the speck is 10 pixels from any border"
    np.testing.assert_array_equal(reached[:, 12:], plain[:, 12:])
    assert reached[:, 19:21].all(), "the real membrane lies on the border"
    np.testing.assert_array_equal(probability, original)
    flat = np.full((40, 40), 0.05, np.float32)
    flat[19:22, 7:10] = 0.8
    assert not boundary_mask(flat, **rule, border_reach=4.0).any(), "one region, no border: nothing is membrane"


def test_tuned_rules_reach_four_pixels_and_rules_stored_without_a_reach_keep_their_labels():
    assert all("border_reach" not in closing for closing in candidate_closings((0.5, 0.6), None))
    assert [c["border_reach"] for c in candidate_closings((0.5, 0.6))] == [BORDER_REACH, BORDER_REACH] == [4.0, 4.0]
    truth_cells = np.ones((1, 40, 40), bool)
    truth_cells[:, :, 19:21] = False
    probability = two_cells_and_a_dark_speck()[None]
    rule, score = tune_boundary_rule(probability, truth_cells)
    assert rule["border_reach"] == 4.0 and score > 0.99
    stored = {key: value for key, value in rule.items() if key != "border_reach"}  # a rule saved before session 31
    assert boundary_mask(probability[0], **stored)[19:22, 7:10].all(), "the old rule keeps the speck"
    assert not boundary_mask(probability[0], **rule)[19:22, 7:10].any()


@pytest.mark.parametrize("function", [segment_instances, close_boundaries, watershed_regions, merge_regions, boundary_mask])
def test_non_finite_probabilities_are_refused_not_segmented(function):
    # skimage's h_minima corrupted memory on NaN and killed the process (segmentation fault / abort)
    probability = two_cells_with_a_gap()
    probability[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        function(probability)
    with pytest.raises(ValueError, match="NaN or Inf"):
        tune_boundary_rule(np.full((1, 40, 40), np.inf, np.float32), (probability < 0.5)[None])


def test_order_layers_keeps_the_layers_in_order_with_the_most_likely_labelling():
    # OCT: the most probable class per pixel left islands (vitreous inside the choroid) and swapped thin layers
    import itertools

    from napari_unet.postprocess import order_layers

    rng = np.random.default_rng(0)
    for _ in range(20):  # each column's labelling is the most likely of all ordered ones (brute force)
        probabilities = rng.dirichlet(np.ones(3), size=(5, 2)).astype(np.float32)
        order = [int(c) for c in rng.permutation(3)]
        rank = {c: i for i, c in enumerate(order)}
        result = order_layers(probabilities, order)
        for x in range(2):
            ordered = [labels for labels in itertools.product(range(3), repeat=5)
                       if all(rank[a] <= rank[b] for a, b in zip(labels, labels[1:]))]
            likelihood = [sum(np.log(probabilities[y, x, c]) for y, c in enumerate(labels)) for labels in ordered]
            assert tuple(result[:, x]) == ordered[int(np.argmax(likelihood))]
    layered = np.repeat(np.repeat(np.arange(4), 8)[:, None], 6, axis=1)  # rows of classes 0..3, 8 each
    probabilities = np.full((32, 6, 4), 0.02, np.float32)
    np.put_along_axis(probabilities, layered[..., None], 0.94, axis=-1)
    probabilities[28, 2] = [0.9, 0.02, 0.02, 0.06]  # an island of the top class in the bottom layer
    before = probabilities.copy()
    result = order_layers(probabilities, [0, 1, 2, 3])
    np.testing.assert_array_equal(result, layered)
    np.testing.assert_array_equal(probabilities, before)
    assert np.argmax(probabilities, axis=-1)[28, 2] == 0  # what the most probable class gave


def test_order_layers_refuses_nan_and_bad_orders():
    from napari_unet.postprocess import order_layers

    probabilities = np.full((6, 4, 3), 1 / 3, np.float32)
    nan = probabilities.copy()
    nan[2, 1, 0] = np.nan  # NaN compares false: the labelling of that column was arbitrary
    with pytest.raises(ValueError, match="NaN"):
        order_layers(nan, [0, 1, 2])
    for order in ([0, 0, 1], [0, 3], []):
        with pytest.raises(ValueError, match="distinct class indices of 0..2"):
            order_layers(probabilities, order)
    with pytest.raises(ValueError, match="non-empty"):
        order_layers(probabilities[0], [0, 1, 2])
    assert set(np.unique(order_layers(probabilities, [2, 0]))) <= {0, 2}  # a class left out is given only where most probable


def test_order_layers_gives_a_pocket_left_out_of_the_order_where_it_is_most_probable():
    # DME fluid inside a layer: recorded as a layer below the choroid, the ordered labelling could never give it
    from napari_unet.postprocess import order_layers

    layered = np.repeat(np.repeat(np.arange(4), 8)[:, None], 6, axis=1)  # rows of classes 0..3, 8 each
    truth = layered.copy()
    truth[10:14, 2:4] = 4  # a pocket of class 4 inside layer 1
    probabilities = np.full((32, 6, 5), 0.1 / 4, np.float32)
    np.put_along_axis(probabilities, truth[..., None], 0.9, axis=-1)
    np.testing.assert_array_equal(order_layers(probabilities, [0, 1, 2, 3]), truth)
    assert not (order_layers(probabilities, [0, 1, 2, 3, 4]) == 4).any()  # in the order, below layer 3: never
    probabilities[30, 0] = [0.02, 0.02, 0.02, 0.04, 0.9]  # a pocket below the layers stays where it is most probable
    assert order_layers(probabilities, [0, 1, 2, 3])[30, 0] == 4


def test_postprocessing_refuses_empty_maps_wrong_dimensions_and_mismatched_truth():
    probability = two_cells_with_a_gap()
    for function in (segment_instances, boundary_mask, watershed_regions):
        with pytest.raises(ValueError, match=r"non-empty \(Y, X\) probability map"):
            function(np.zeros((0, 5), np.float32))
    with pytest.raises(ValueError, match=r"non-empty \(Z, Y, X\)"):  # it segmented the rows as 1-D planes
        tune_boundary_rule(probability, probability < 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        tune_boundary_rule(probability[None], (probability < 0.5)[None, :10])
    with pytest.raises(ValueError, match="thresholds is empty"):
        tune_boundary_rule(probability[None], (probability < 0.5)[None], thresholds=())


def test_find_boundary_class_measures_widths_on_a_sample_of_large_planes(monkeypatch):
    # every 2048² training slice's distance transform took 11 s for 16 of them; the class counts still see every plane
    from scipy import ndimage

    from napari_unet import postprocess

    stack = np.ones((6, 64, 64), np.int8)
    stack[:, ::16, :] = 0
    stack[:, :, ::16] = 0
    stack[5] = -1  # unannotated
    measured = []
    transform = ndimage.distance_transform_edt
    monkeypatch.setattr(postprocess.ndimage, "distance_transform_edt", lambda a, *k: measured.append(1) or transform(a, *k))
    monkeypatch.setattr(postprocess, "BOUNDARY_CHECK_PIXELS", 2 * 64 * 64)
    assert find_boundary_class(stack, 2) == 0 and len(measured) == 2
    blobs = np.ones((6, 64, 64), np.int8)
    blobs[:, 10:40, 10:40] = 0
    assert find_boundary_class(blobs, 2) is None
    assert find_boundary_class(stack[0], 2) == 0  # one (Y, X) plane


def test_the_membrane_rule_of_a_large_slice_runs_window_by_window_with_the_same_result(monkeypatch):
    # a 4096² section took 1.9 GB in the rule's watershed and region graph (120 bytes per pixel), 16384² would take 30
    from scipy import ndimage

    from napari_unet import postprocess
    from napari_unet.synthetic import make_em_stack

    _, labels = make_em_stack(1, (300, 340), seed=3)
    rng = np.random.default_rng(0)
    probability = ndimage.gaussian_filter((labels[0] == 0).astype(np.float32), 1.5) + rng.normal(0, 0.05, labels[0].shape)
    probability = np.clip(probability, 0, 1).astype(np.float32)
    probability[150:153, 100:140] *= 0.3  # a faint gap the merge must judge
    rule = {"threshold": 0.5, "seed_level": None, "merge_below": 0.6, "minima_depth": 0.02, "sigma": 2.0,
            "hierarchical": True, "border_reach": 4.0}
    windows = []
    whole_rule = postprocess.boundary_mask
    monkeypatch.setattr(postprocess, "boundary_mask", lambda p, **r: windows.append(p.shape) or whole_rule(p, **r))
    tiled = tiled_boundary_mask(probability, tile=96, margin=48, **rule)
    assert len(windows) == 16 and max(max(shape) for shape in windows) <= 96 + 2 * 48
    whole = whole_rule(probability, **rule)
    assert np.mean(tiled != whole) < 1e-3, np.mean(tiled != whole)
    windows.clear()
    np.testing.assert_array_equal(tiled_boundary_mask(probability, tile=300, margin=20, **rule), whole)  # fits: whole
    assert windows == [(300, 340)]
    with pytest.raises(ValueError, match="tile must be"):
        tiled_boundary_mask(probability, tile=0, **rule)


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 5), (0, 0)])
def test_labels_without_pixels_have_no_boundary_class(shape):
    assert find_boundary_class(np.zeros(shape, np.int64), 2) is None


def test_order_layers_keeps_the_kept_pixels_and_the_order_around_them():
    # corrections put back over an ordered labelling left layer 1 inside layer 3 (37 columns out of order)
    from napari_unet.postprocess import order_layers

    layered = np.repeat(np.repeat(np.arange(4), 8)[:, None], 6, axis=1)  # rows of classes 0..3, 8 each
    probabilities = np.full((32, 6, 4), 0.02, np.float32)
    np.put_along_axis(probabilities, layered[..., None], 0.94, axis=-1)
    kept = np.full((32, 6), -1, np.int16)
    kept[18:21, 2] = 1  # the user grew layer 1 down over layer 2 in column 2
    result = order_layers(probabilities, [0, 1, 2, 3], kept)
    assert (result[18:21, 2] == 1).all() and (np.diff(result, axis=0) >= 0).all()
    np.testing.assert_array_equal(np.delete(result, 2, axis=1), np.delete(layered, 2, axis=1))
    kept[:] = -1
    kept[28, 4] = 0  # vitreous painted into the choroid: no order holds it, its column is not relabelled for it
    kept[29, 4] = 5  # and a class index no layer has is free
    np.testing.assert_array_equal(order_layers(probabilities, [0, 1, 2, 3], kept)[:, 4], layered[:, 4])
    with pytest.raises(ValueError, match="kept must be integer class indices"):
        order_layers(probabilities, [0, 1, 2, 3], kept[:10])
    with pytest.raises(ValueError, match="kept must be integer class indices"):
        order_layers(probabilities, [0, 1, 2, 3], kept.astype(float))
    unsigned = np.full((32, 6), 255, np.uint8)  # 255 for "none" in a uint8 mask: free, not an IndexError
    np.testing.assert_array_equal(order_layers(probabilities, [0, 1, 2, 3], unsigned), layered)


def test_order_layers_keeps_kept_pixels_against_pockets_and_kept_pockets():
    from napari_unet.postprocess import order_layers

    layered = np.repeat(np.repeat(np.arange(4), 8)[:, None], 6, axis=1)
    truth = layered.copy()
    truth[10:14, 2] = 4  # the network sees a pocket (class 4) inside layer 1
    probabilities = np.full((32, 6, 5), 0.1 / 4, np.float32)
    np.put_along_axis(probabilities, truth[..., None], 0.9, axis=-1)
    kept = np.full((32, 6), -1, np.int16)
    kept[10:14, 2] = 1  # the user erased that false fluid: layer 1 kept
    kept[18:20, 5] = 4  # and painted fluid into layer 2 elsewhere
    result = order_layers(probabilities, [0, 1, 2, 3], kept)
    assert (result[10:14, 2] == 1).all() and (result[18:20, 5] == 4).all()
    np.testing.assert_array_equal(np.delete(result, [2, 5], axis=1), np.delete(layered, [2, 5], axis=1))
