"""Synthetic EM and OCT stacks: shapes, dtypes, determinism, plausible classes and appearance."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize

from napari_unet.synthetic import (
    EM_CLASS_NAMES,
    EM_CLASS_VALUES,
    OCT_CLASS_NAMES,
    OCT_CLASS_VALUES,
    make_em_stack,
    make_oct_boundaries,
    make_oct_stack,
)


@pytest.fixture(scope="module")
def em():
    return make_em_stack()


@pytest.fixture(scope="module")
def oct_stack():
    return make_oct_stack(return_boundaries=True)


# ---------------------------------------------------------------------------------------- EM


def test_em_shapes_dtypes_and_values(em):
    image, labels = em
    assert image.shape == labels.shape == (8, 256, 256)
    assert image.dtype == np.uint8 and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 255}
    assert EM_CLASS_VALUES == (0, 255) and EM_CLASS_NAMES == ("membrane", "cell")
    assert image.std() > 20  # not a flat image


def test_em_custom_shape_and_cells():
    image, labels = make_em_stack(n_slices=3, shape=(96, 128), n_cells=20, seed=5)
    assert image.shape == labels.shape == (3, 96, 128)
    assert set(np.unique(labels).tolist()) == {0, 255}


def test_em_deterministic(em):
    image, labels = make_em_stack()
    np.testing.assert_array_equal(image, em[0])
    np.testing.assert_array_equal(labels, em[1])
    other_image, other_labels = make_em_stack(seed=1)
    assert not np.array_equal(other_labels, labels)
    assert not np.array_equal(other_image, image)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_membrane_fraction_like_isbi(seed):
    _, labels = make_em_stack(seed=seed)
    fraction = float(np.mean(labels == 0))
    assert 0.15 <= fraction <= 0.35, fraction


def test_em_membranes_are_dark(em):
    image, labels = em
    membrane = image[labels == 0].astype(float)
    cell = image[labels == 255].astype(float)
    assert cell.mean() - membrane.mean() > 50
    # ... but not trivially separable by a threshold: noise and organelles overlap the ranges
    assert np.percentile(membrane, 95) > np.percentile(cell, 2)


def test_em_membrane_width_2_to_4_px(em):
    _, labels = em
    widths = []
    for z in range(labels.shape[0]):
        membrane = labels[z] == 0
        dist = ndimage.distance_transform_edt(membrane)
        skeleton = skeletonize(membrane)
        widths.append(2 * dist[skeleton])  # ~ full width (distance to the background, both sides)
    widths = np.concatenate(widths)
    assert 2.0 <= np.median(widths) <= 4.0, np.median(widths)
    assert np.percentile(widths, 90) <= 5.0  # only junctions are thicker


def test_em_cells_change_slowly_between_slices(em):
    _, labels = em
    adjacent = np.mean(labels[0] == labels[1])
    far = np.mean(labels[0] == labels[-1])
    assert adjacent > 0.75  # neighbouring sections look alike (ISBI 2012 labels: ~0.72)
    assert far < adjacent  # ... and the tissue drifts through the stack
    assert not np.array_equal(labels[0], labels[1])


def test_em_cells_are_closed_regions(em):
    _, labels = em
    n_cells = [ndimage.label(labels[z] == 255)[1] for z in range(labels.shape[0])]
    assert min(n_cells) >= 50  # ~100 cells per 256x256 section by default


def test_em_is_fast():
    make_em_stack(n_slices=1, shape=(64, 64))  # warm-up (imports, caches)
    start = time.perf_counter()
    make_em_stack()
    elapsed = time.perf_counter() - start
    # ~0.5 s on one idle core; the bound leaves room for loaded CI machines
    assert elapsed < 3.0, f"make_em_stack took {elapsed:.2f} s (target < 1 s)"


@pytest.mark.parametrize(
    "kwargs", [{"n_slices": 0}, {"shape": (10, 10)}, {"shape": (64,)}, {"n_cells": 1}]
)
def test_em_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_em_stack(**kwargs)


# ---------------------------------------------------------------------------------------- OCT


def test_oct_shapes_dtypes_and_classes(oct_stack):
    image, labels, boundaries = oct_stack
    assert image.shape == labels.shape == (4, 248, 384)
    assert image.dtype == np.uint8 and labels.dtype == np.uint8
    assert boundaries.shape == (4, 9, 384) and boundaries.dtype == np.float32
    assert np.unique(labels).tolist() == list(OCT_CLASS_VALUES)
    assert len(OCT_CLASS_NAMES) == 10


def test_oct_default_returns_pair():
    result = make_oct_stack(n_scans=2, shape=(64, 96), seed=3)
    assert len(result) == 2
    assert result[0].shape == result[1].shape == (2, 64, 96)


def test_oct_deterministic(oct_stack):
    image, labels, boundaries = make_oct_stack(return_boundaries=True)
    np.testing.assert_array_equal(image, oct_stack[0])
    np.testing.assert_array_equal(labels, oct_stack[1])
    np.testing.assert_array_equal(boundaries, oct_stack[2])
    np.testing.assert_array_equal(make_oct_boundaries(), boundaries)
    assert not np.array_equal(make_oct_stack(seed=1)[1], labels)


def test_oct_boundaries_ordered_and_match_labels(oct_stack):
    _, labels, boundaries = oct_stack
    assert np.all(np.diff(boundaries, axis=1) >= 0)  # never cross
    assert np.all(labels[:, 0, :] == 0)  # vitreous on top
    assert np.all(labels[:, -1, :] == 9)  # choroid at the bottom
    # labels are monotone down every A-scan: 0, 1, ..., 9
    assert np.all(np.diff(labels.astype(int), axis=1) >= 0)
    # the label of a pixel counts the boundaries above its row
    z, x = 1, 200
    for k in range(9):
        row = int(np.ceil(boundaries[z, k, x]))
        assert labels[z, row, x] >= k + 1
        assert labels[z, row - 1, x] <= k


def test_oct_class_fractions_plausible(oct_stack):
    _, labels, _ = oct_stack
    fractions = np.bincount(labels.ravel(), minlength=10) / labels.size
    assert 0.1 < fractions[0] < 0.5  # vitreous
    assert 0.2 < fractions[9] < 0.7  # choroid and below
    assert np.all(fractions[1:9] > 0.005)  # every retinal layer visible
    assert 0.15 < fractions[1:9].sum() < 0.45  # the retina is a band across the scan


def test_oct_reflectivity_like_real_oct(oct_stack):
    image, labels, _ = oct_stack
    mean = np.array([image[labels == k].mean() for k in range(10)])
    assert mean[8] == mean[1:9].max()  # RPE is the brightest layer
    assert mean[1] > mean[5] + 40  # RNFL bright, ONL dark
    assert mean[5] < mean[4] and mean[3] < mean[2]  # nuclear layers darker than plexiform
    assert mean[0] < mean[1:9].min()  # vitreous darkest


def test_oct_has_speckle(oct_stack):
    image, labels, _ = oct_stack
    rpe = image[labels == 8].astype(float)
    # multiplicative speckle: strong relative variation even inside one bright layer
    assert rpe.std() / rpe.mean() > 0.2


def test_oct_foveal_pit(oct_stack):
    _, _, boundaries = oct_stack
    thickness = boundaries[:, 8] - boundaries[:, 0]  # ILM to Bruch's membrane
    middle = thickness[thickness.shape[0] // 2]
    assert middle.min() < 0.8 * np.median(middle)  # the retina thins in the pit


def test_oct_is_fast():
    start = time.perf_counter()
    make_oct_stack()
    assert time.perf_counter() - start < 1.5  # ~0.1 s on one idle core


def test_labels_from_the_boundaries_of_one_b_scan():
    # a manual (9, X) boundaries.npy raised an IndexError
    from napari_unet.synthetic import oct_labels_from_boundaries

    boundaries = np.array([[2.0, 2.0, 3.0], [5.0, 6.0, 6.0]])  # two boundaries, three columns
    labels = oct_labels_from_boundaries(boundaries, 8)
    assert labels.shape == (8, 3) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:, 0], [0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(oct_labels_from_boundaries(boundaries[None], 8)[0], labels)
    with pytest.raises(ValueError, match="boundaries must be"):
        oct_labels_from_boundaries(np.zeros(4), 8)


def test_untraced_boundaries_leave_their_rows_unannotated_instead_of_shifting_the_layers_below():
    # one NaN boundary moved every layer under it up one class (INL vanished, class 9 never appeared), without a word
    from napari_unet.synthetic import oct_labels_from_boundaries

    _, labels, boundaries = make_oct_stack(1, (96, 64), seed=1, return_boundaries=True)
    np.testing.assert_array_equal(oct_labels_from_boundaries(boundaries, 96), labels)
    traced = boundaries.copy()
    traced[0, 3, 10] = np.nan  # boundary 3 not traced in column 10
    traced[0, 8, 20:23] = np.nan  # nor the last one in columns 20-22
    result = oct_labels_from_boundaries(traced[0], 96)
    column = result[:, 10]
    rows = np.arange(96)
    ambiguous = (rows >= boundaries[0, 2, 10]) & (rows < boundaries[0, 4, 10])
    assert ambiguous.any() and (column[ambiguous] == 255).all()
    np.testing.assert_array_equal(column[~ambiguous], labels[0][~ambiguous, 10])  # the rest as traced
    assert (result[rows >= boundaries[0, 7, 21], 21] == 255).all()  # below the last traced boundary: unknown
    untouched = np.ones(64, bool)
    untouched[[10, 20, 21, 22]] = False
    np.testing.assert_array_equal(result[:, untouched], labels[0][:, untouched])
    with pytest.raises(ValueError, match="unannotated"):
        oct_labels_from_boundaries(traced, 96, unannotated=5)
