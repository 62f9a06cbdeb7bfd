import numpy as np
import pytest

from napari_unet.data import (
    Augmentation,
    InputError,
    PatchSampler,
    augment,
    centre_tiles,
    check_pair,
    class_weights,
    elastic_deform,
    local_contrast,
    neighbour_slices,
    normalize,
    prefetch,
)


def test_normalize_maps_percentiles_per_slice_and_keeps_input():
    image = np.stack([np.arange(100, dtype=np.uint8).reshape(10, 10), 2 * np.arange(100, dtype=np.uint8).reshape(10, 10)])
    before = image.copy()
    out = normalize(image, (0, 100))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out[0].min() == 0 and out[0].max() == 1 and out[1].min() == 0 and out[1].max() == 1
    np.testing.assert_array_equal(image, before)


def test_normalize_constant_image_does_not_divide_by_zero():
    out = normalize(np.full((8, 8), 7, np.uint8))
    assert np.all(np.isfinite(out)) and np.all(out == 0)
    flat = normalize(np.full((2, 64, 64), 7, np.uint8), local_contrast_sigma=8)
    assert flat.dtype == np.float32 and np.all(flat == 0.5)  # the local mean, no NaN


def test_local_contrast_gives_faint_patterns_the_contrast_of_strong_ones():
    rng = np.random.default_rng(0)
    rows = np.sin(np.arange(128) / 2.0)[:, None] * np.ones((1, 256))
    image = np.where(np.arange(256) < 128, 100 + 80 * rows, 200 + 16 * rows) + rng.normal(0, 1, (128, 256))
    before = image.copy()
    plain = normalize(image)
    local = normalize(image, local_contrast_sigma=12)
    np.testing.assert_array_equal(image, before)
    assert local.dtype == np.float32 and local.shape == image.shape and 0 <= local.min() and local.max() <= 1
    strong, faint = (lambda a: a[16:-16, 16:80].std()), (lambda a: a[16:-16, 176:240].std())  # away from the step
    assert faint(plain) < 0.25 * strong(plain)  # percentiles keep the pale half's stripes faint
    assert faint(local) > 0.7 * strong(local)  # locally standardised (above a small floor), both halves alike
    assert abs(float(np.median(local)) - 0.5) < 0.05


@pytest.mark.parametrize("sigma", [4.0, 24.0, 40.0])
@pytest.mark.parametrize("shape", [(200, 230), (9, 70)])
def test_local_contrast_matches_a_full_resolution_gaussian(sigma, shape):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    plane = ndimage.gaussian_filter(rng.random(shape), 3).astype(np.float32) * 4 + rng.random(shape).astype(np.float32) * 0.2
    mean = ndimage.gaussian_filter(plane, sigma)
    std = np.sqrt(ndimage.gaussian_filter((plane - mean) ** 2, sigma)) + 0.02
    exact = np.clip(0.5 + (plane - mean) / (6 * std), 0, 1)
    assert np.abs(local_contrast(plane, sigma) - exact).max() < 0.01


def test_a_large_plane_is_normalised_with_one_float32_copy_of_temporaries_and_the_same_values_band_by_band(monkeypatch):
    # a 4096² section peaked at 20 bytes a pixel (the plane, its float32 copy, four whole-plane temporaries)
    import tracemalloc

    import napari_unet.data as data

    rng = np.random.default_rng(3)
    image = (rng.random((1030, 1500)) * 180 + np.linspace(0, 60, 1500)).astype(np.uint8)
    tracemalloc.start()
    try:
        banded = normalize(image, local_contrast_sigma=30)  # bands of 256 rows: five
        peak = tracemalloc.get_traced_memory()[1] / image.size
    finally:
        tracemalloc.stop()
    assert peak < 14, peak  # result 4 + squares 4 + block sums and a band's temporaries: 12.1 measured
    monkeypatch.setattr(data, "LOCAL_CONTRAST_ROWS", 4096)
    np.testing.assert_array_equal(normalize(image, local_contrast_sigma=30), banded)  # one band: the same values
    plane = normalize(image)
    expected = local_contrast(plane, 30)
    assert local_contrast(plane, 30, out=plane) is plane  # in place, band by band
    np.testing.assert_array_equal(plane, expected)


@pytest.mark.parametrize(
    "image, labels, words",
    [
        (np.zeros((4, 8, 8)), np.zeros((4, 8, 9)), "differ"),
        (np.full((8, 8), np.nan), np.zeros((8, 8)), "NaN"),
        (np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)), "expected a 2-D image"),
        (np.zeros((8, 8), complex), np.zeros((8, 8)), "real numbers"),
        (np.zeros((8, 8)), np.zeros((2, 8, 8)), "differ"),
    ],
)
def test_bad_pairs_are_refused_with_clear_messages(image, labels, words):
    with pytest.raises(InputError, match=words):
        check_pair(image, labels)


def test_class_weights_favour_the_rare_class():
    indices = np.array([0] * 10 + [1] * 90 + [-1] * 50)
    weights = class_weights(indices, 2)
    assert weights[0] > weights[1]
    assert np.isclose((weights * [0.1, 0.9]).sum(), 1.0)
    np.testing.assert_array_equal(class_weights(indices, 2, "none"), [1, 1])


def test_augment_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    indices = np.zeros((64, 64), np.int32)
    indices[20:30, 10:50] = 1
    image = indices.astype(np.float32)
    for _ in range(5):
        out_image, out_indices = augment(image, indices, rng, Augmentation(intensity=False))
        assert out_image.shape == (64, 64) and out_indices.dtype == np.int32
        inside = out_indices == 1
        # the deformed bright bar and the deformed label bar coincide (up to interpolation at edges)
        assert np.mean(out_image[inside] > 0.5) > 0.9
        assert set(np.unique(out_indices)) <= {-1, 0, 1}


def test_noise_augmentation_adds_pixel_noise_of_a_random_strength_and_keeps_labels():
    # ISBI's slices 15-19 and test volume carry ~1.5x the pixel noise of slices 0-14 (BENCHMARKS.md, session 29)
    rng = np.random.default_rng(0)
    image = np.full((64, 64), 0.5, np.float32)
    indices = (np.arange(64)[:, None] > 31).repeat(64, 1).astype(np.int32)
    plain = Augmentation(flips=False, rotations=False, elastic=False, intensity=False)
    out, out_indices = augment(image, indices, rng, plain)
    assert np.array_equal(out, image)  # off by default
    noisy = Augmentation(flips=False, rotations=False, elastic=False, intensity=False, noise=0.1)
    stds = []
    for _ in range(50):
        out, out_indices = augment(image, indices, rng, noisy)
        assert out.dtype == np.float32 and np.array_equal(out_indices, indices)
        assert abs(float(out.mean()) - 0.5) < 0.01
        stds.append(float(out.std()))
    assert 0 <= min(stds) < 0.03 and 0.08 < max(stds) < 0.105  # std drawn per patch from [0, 0.1)
    assert np.all(image == 0.5)  # input untouched
    context = np.full((64, 64, 3), 0.5, np.float32)  # context slices: each channel gets its own noise
    out, _ = augment(context, indices, np.random.default_rng(1), noisy)
    assert not np.array_equal(out[..., 0], out[..., 1])


def test_elastic_deformation_moves_pixels_but_keeps_label_values():
    rng = np.random.default_rng(1)
    indices = (np.indices((48, 48)).sum(0) // 8 % 2).astype(np.int32)
    image = indices.astype(np.float32)
    warped, warped_indices, _ = elastic_deform(image, indices, rng, alpha=6.0, grid=3)
    assert not np.array_equal(warped_indices, indices)
    assert set(np.unique(warped_indices)) <= {-1, 0, 1}


def test_elastic_deformation_keeps_each_pixels_weight_with_its_label():
    # weights were resampled linearly, labels by nearest neighbour: cell pixels beside a membrane got border weight
    rng = np.random.default_rng(0)
    indices = (np.indices((96, 96)).sum(0) // 6 % 2).astype(np.int32)  # class 0 carries the extra weight
    extra = np.where(indices == 0, 7.0, 0.0).astype(np.float32)
    for _ in range(5):
        _, warped_indices, warped_extra = elastic_deform(indices.astype(np.float32), indices, rng, 8.0, 3, extra=extra)
        inside = warped_indices >= 0
        assert np.array_equal(warped_extra[inside], np.where(warped_indices[inside] == 0, 7.0, 0.0))


def test_elastic_deformation_never_folds_a_small_patch(monkeypatch):
    # 10 px on a 3 x 3 grid folded 45 % of 64-px patches (a fold mirrors pixels: an OCT patch's layers reversed)
    from napari_unet import data

    maps, map_coordinates = [], data.ndimage.map_coordinates
    monkeypatch.setattr(data.ndimage, "map_coordinates", lambda a, coords, **k: maps.append(coords) or map_coordinates(a, coords, **k))
    rng = np.random.default_rng(0)
    for size in (32, 64, 256):
        maps.clear()
        for _ in range(30):
            elastic_deform(np.zeros((size, size), np.float32), np.zeros((size, size), np.int32), rng, alpha=10.0, grid=3)
        for wy, wx in maps[::2]:  # where each pixel comes from (the labels' call reads the same map)
            jacobian = np.diff(wy, axis=0)[:, :-1] * np.diff(wx, axis=1)[:-1] - np.diff(wy, axis=1)[:-1] * np.diff(wx, axis=0)[:, :-1]
            assert (jacobian > 0).all(), size


def test_the_elastic_warp_reads_the_slice_around_a_patch_and_keeps_labels_on_their_pixels():
    # warped after the cut, a patch's border was pulled in "not annotated": 5 % of a 256-px patch, 10 % of a 128-px one
    indices = (np.indices((2, 400, 400)).sum(0) // 8 % 2).astype(np.int8)  # every pixel annotated, 8-px blocks
    images = indices.astype(np.float32)
    aug = Augmentation(intensity=False)
    sampler = PatchSampler(images, indices, 128, np.ones(2, np.float32), aug, 1.0, seed=0)
    x, y = sampler.batch(32)
    annotated = y[..., 1] > 0
    assert annotated.mean() > 0.97
    agree = np.abs(x[..., 0] - y[..., 0]) < 0.5  # the linearly resampled image against the nearest labels
    assert agree[annotated].mean() > 0.95


def test_intensity_jitter_keeps_the_negative_values_predict_gives_the_network():
    # clipped at 0 before the gamma: the darkest 1 % (normalised to -0.4 on ISBI) never reached training
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1.0, 2.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    aug = Augmentation(flips=False, rotations=False, elastic=False, intensity=True)
    for _ in range(10):
        out, _ = augment(ramp, np.zeros((64, 64), np.int32), rng, aug)
        assert (np.diff(out.ravel()) > 0).all()  # the order of all values kept: no run of equal values below 0


def test_patch_sampler_centres_patches_on_annotations():
    images = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    indices = np.full((3, 128, 128), -1, np.int32)
    indices[1, 100:110, 100:110] = 1
    indices[1, 110:120, 100:110] = 0
    sampler = PatchSampler(images, indices, 32, np.ones(2, np.float32), Augmentation(elastic=False), 1.0, seed=0)
    x, y = sampler.batch(8)
    assert x.shape == (8, 32, 32, 1) and y.shape == (8, 32, 32, 2)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert np.all((y[..., 1] > 0).reshape(8, -1).any(axis=1)), "every patch holds annotated pixels"
    assert np.all(y[..., 1][y[..., 0] == 1] >= 0)


def test_dense_annotations_are_drawn_without_a_list_of_positions_and_as_before():
    # an int64 position per annotated pixel was the largest array of a training: 1.25 GiB for 40 x 2048²
    rng = np.random.default_rng(0)
    images = rng.random((2, 96, 96)).astype(np.float32)
    full = rng.integers(0, 2, (2, 96, 96)).astype(np.int32)
    still = Augmentation(elastic=False, flips=False, rotations=False, intensity=False)
    sampler = PatchSampler(images, full, 32, np.ones(2, np.float32), still, 1.0, seed=3)
    assert sampler.annotated_positions is None
    listed = PatchSampler(images, full, 32, np.ones(2, np.float32), still, 1.0, seed=3)
    listed.annotated_positions = np.arange(full.size)  # the list it kept before: the same patches
    for (x1, y1), (x2, y2) in zip((sampler.batch(4) for _ in range(3)), (listed.batch(4) for _ in range(3))):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    half = full.copy()
    half[:, :, :60] = -1  # dense enough to be drawn by rejection: every patch centred on an annotated pixel
    sampler = PatchSampler(images, half, 16, np.ones(2, np.float32), still, 1.0, seed=0)
    assert sampler.annotated_positions is None
    _, y = sampler.batch(64)
    assert np.all((y[..., 1] > 0).reshape(64, -1).any(axis=1))


def test_neighbour_slices_repeat_the_edge_slices():
    assert neighbour_slices(0, 5, 1) == [0, 0, 1]
    assert neighbour_slices(2, 5, 2) == [0, 1, 2, 3, 4]
    assert neighbour_slices(4, 5, 1) == [3, 4, 4]
    assert neighbour_slices(0, 1, 2) == [0, 0, 0, 0, 0]
    assert neighbour_slices(3, 5, 0) == [3]


def test_patch_sampler_gives_context_slices_as_channels():
    images = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 64, 64)).copy()
    indices = np.full((4, 64, 64), -1, np.int32)
    indices[0, 10:20, 10:20] = 1  # annotated: the first slice (edge) and the third
    indices[2, 30:40, 30:40] = 0
    still = Augmentation(flips=False, rotations=False, elastic=False, intensity=False)
    sampler = PatchSampler(images, indices, 32, np.ones(2, np.float32), still, 1.0, seed=0, context=1)
    x, y = sampler.batch(16)
    assert x.shape == (16, 32, 32, 3) and y.shape == (16, 32, 32, 2)
    channels = {tuple(patch[0, 0]) for patch in x}
    assert channels == {(0.0, 0.0, 1.0), (1.0, 2.0, 3.0)}, "centre slice in the middle, neighbours around it"
    moved, _ = augment(x[0], np.zeros((32, 32), np.int32), np.random.default_rng(0), Augmentation())
    assert moved.shape == (32, 32, 3)


def test_patch_sampler_pads_images_smaller_than_the_patch():
    images = np.zeros((1, 20, 30), np.float32)
    indices = np.zeros((1, 20, 30), np.int32)
    sampler = PatchSampler(images, indices, 64, np.ones(2, np.float32), Augmentation(), seed=0)
    x, y = sampler.batch(2)
    assert x.shape == (2, 64, 64, 1)
    assert (y[..., 1] == 0).any(), "padding is not annotated"


def test_patch_sampler_without_annotations_is_refused():
    with pytest.raises(InputError, match="no annotated"):
        PatchSampler(np.zeros((1, 32, 32), np.float32), np.full((1, 32, 32), -1, np.int32), 32, [1, 1], Augmentation())


def test_prefetch_yields_in_order_and_reraises_errors():
    counter = iter(range(5))
    assert list(prefetch(lambda: next(counter), 5)) == [0, 1, 2, 3, 4]

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(prefetch(broken, 3))


def test_border_weights_are_highest_on_thin_membranes_between_cells():
    from napari_unet.data import border_weights

    indices = np.ones((64, 64), np.int32)
    indices[:, 30:32] = 0  # thin membrane between two cells
    indices[:, 50:] = 0  # thick background region touching one cell only
    weights = border_weights(indices, boundary_index=0, weight=10.0, sigma=5.0)
    assert weights.dtype == np.float32 and weights.shape == indices.shape
    assert weights[:, 30:32].min() > 8  # d1 + d2 = 2: 10 * exp(-4 / 50)
    assert np.all(weights[indices == 1] == 0)
    assert weights[:, 60].max() < 0.01  # far from any second cell
    stack = border_weights(np.stack([indices, indices]), 0)
    np.testing.assert_array_equal(stack[1], weights)


def test_border_weights_of_seen_planes_come_from_the_cache_and_stay_correct(monkeypatch):
    import napari_unet.data as data

    stack = np.ones((3, 48, 48), np.int32)
    for z in range(3):  # three different slices
        stack[z, :, 18 + 2 * z : 20 + 2 * z] = 0
    stack[:, 30:32, :] = 0
    stack[2, 5:9, 5:40] = -1  # unannotated pixels
    data._BORDER_WEIGHTS.clear()
    computed = []
    plane_weights = data._plane_border_weights
    monkeypatch.setattr(data, "_plane_border_weights", lambda *a: computed.append(1) or plane_weights(*a))
    first = data.border_weights(stack, 0)
    painted = stack.copy()
    painted[1, 10:12, 22:] = 0  # a correction painted on slice 1: a membrane splitting a cell
    second = data.border_weights(painted, 0)
    assert len(computed) == 3 + 1  # only the painted slice again
    for z in range(3):
        np.testing.assert_array_equal(second[z], plane_weights(painted[z], 0, 10.0, 5.0))
    assert not np.array_equal(first[1], second[1])
    data.border_weights(painted, 0, weight=20.0)  # other settings: computed anew
    assert len(computed) == 4 + 3
    second[0] += 1  # the result is the caller's: the cache does not change with it
    np.testing.assert_array_equal(data.border_weights(stack, 0), first)
    small = data._PlaneCache(max_bytes=2 * 48 * 48 * 4)
    for key in range(3):
        small.put(key, np.zeros((48, 48), np.float32))
    assert small.get(0) is None and small.get(2) is not None and small.nbytes == 2 * 48 * 48 * 4


def test_augment_moves_extra_maps_with_the_labels():
    rng = np.random.default_rng(0)
    indices = np.zeros((48, 48), np.int32)
    indices[10:20, 5:40] = 1
    extra = indices.astype(np.float32) * 3
    image = indices.astype(np.float32)
    _, out_indices, out_extra = augment(image, indices, rng, Augmentation(intensity=False), extra)
    inside = out_indices == 1
    assert inside.any() and np.median(out_extra[inside]) == 3 and np.median(out_extra[out_indices == 0]) == 0


def test_downscale_and_upscale_round_trip_shapes_and_values():
    from napari_unet.data import downscale_image, downscale_labels, upscale_probabilities

    image = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    small = downscale_image(image, 2)
    assert small.shape == (2, 3, 4) and small.dtype == np.float32
    assert small[0, 0, 0] == np.mean(image[0, :2, :2])
    assert small[0, 2, 3] == image[0, 4, 6]  # edge block padded by repetition
    np.testing.assert_array_equal(downscale_image(image, 1), image)
    labels = np.zeros((5, 7), np.int32)
    labels[::2, ::2] = 1
    small_labels = downscale_labels(labels, 2)
    assert small_labels.shape == (3, 4) and small_labels.dtype == np.int32
    assert small_labels[0, 0] == 0 and small_labels[2, 3] == 1  # 3 of 4 zeros; the padded corner block has one pixel
    probabilities = np.random.default_rng(0).random((3, 4, 2)).astype(np.float32)
    full = upscale_probabilities(probabilities, 2, (5, 7))
    assert full.shape == (5, 7, 2) and full.dtype == np.float32
    assert probabilities.min() - 1e-6 <= full.min() and full.max() <= probabilities.max() + 1e-6


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downscaled_labels_stay_centred_on_the_downscaled_image(factor):
    """A disc's downscaled label and its downscaled image have the same centre; upsampled back, it has not moved."""
    from napari_unet.data import downscale_image, downscale_labels, upscale_probabilities

    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 47.5) ** 2 + (xx - 47.5) ** 2 < 20**2).astype(np.int32)
    before = disc.copy()
    small_labels = downscale_labels(disc, factor)
    small_image = downscale_image(disc, factor)
    np.testing.assert_array_equal(disc, before)
    label_centre = np.argwhere(small_labels == 1).mean(axis=0)
    image_centre = (np.argwhere(small_image > 0) * small_image[small_image > 0][:, None]).sum(0) / small_image.sum()
    np.testing.assert_allclose(label_centre, image_centre, atol=0.05)
    one_hot = np.stack([small_labels == 0, small_labels == 1], axis=-1).astype(np.float32)
    back = upscale_probabilities(one_hot, factor, disc.shape).argmax(-1)
    np.testing.assert_allclose(np.argwhere(back == 1).mean(axis=0), [47.5, 47.5], atol=0.25)


def test_downscaled_labels_keep_sparse_annotations_and_unannotated_blocks():
    from napari_unet.data import downscale_labels

    indices = np.full((8, 8), -1, np.int32)
    indices[3, :] = 1  # a one-pixel scribble: every block it crosses keeps it
    indices[6, 6] = 0
    small = downscale_labels(indices, 2)
    assert np.all(small[1] == 1) and small[3, 3] == 0
    assert np.all(small[0] == -1) and small[2, 0] == -1
    assert np.all(downscale_labels(np.full((4, 4), -1, np.int32), 2) == -1)


def test_centre_tiles_cut_the_middle_of_evenly_chosen_slices():
    images = np.arange(20 * 40 * 70, dtype=np.float32).reshape(20, 40, 70)
    before = images.copy()
    tiles = centre_tiles(images, range(20), tile_size=32, multiple=16, max_tiles=4)
    assert len(tiles) == 4 and all(t.shape == (1, 32, 32, 1) and t.dtype == np.float32 for t in tiles)
    np.testing.assert_array_equal(tiles[0][0, ..., 0], images[0, 4:36, 19:51])
    np.testing.assert_array_equal(tiles[-1][0, ..., 0], images[19, 4:36, 19:51])
    np.testing.assert_array_equal(images, before)
    # Sides smaller than the tile are rounded up to the multiple (reflect-padded); context adds channels.
    small = centre_tiles(images[:, :20, :24], [5], tile_size=512, multiple=16, context=1)
    assert len(small) == 1 and small[0].shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(small[0][0, :20, :24, 0], images[4, :20, :24])


def test_elastic_displacements_are_the_cubic_zoom_of_the_coarse_grid():
    from scipy import ndimage

    from napari_unet.data import _cubic_zoom_matrix

    coarse = np.random.default_rng(3).normal(0, 10, (3, 3))
    for shape in [(256, 256), (37, 50)]:
        expected = ndimage.zoom(coarse, (shape[0] / 3, shape[1] / 3), order=3, mode="nearest")[: shape[0], : shape[1]]
        separable = _cubic_zoom_matrix(shape[0], 3) @ coarse @ _cubic_zoom_matrix(shape[1], 3).T
        np.testing.assert_allclose(separable, expected, atol=1e-9)


def test_nan_image_message_fits_prediction_as_well_as_training():
    from napari_unet.data import check_image

    with pytest.raises(InputError, match="before training or predicting"):
        check_image(np.full((8, 8), np.nan, np.float32))


@pytest.mark.parametrize("dtype, offset", [(np.float64, 1e9), (np.int64, 2**30), (np.uint32, 2**30)])
def test_normalize_keeps_the_contrast_of_wide_types_with_a_large_offset(dtype, offset):
    # a float32 copy of these values kept 3-5 distinct values of 256, and predictions changed
    image = np.random.default_rng(0).integers(0, 256, (2, 32, 32)).astype(np.uint8)
    shifted = image.astype(dtype) + dtype(offset)
    np.testing.assert_allclose(normalize(shifted), normalize(image), atol=1e-6)
    assert normalize(shifted).dtype == np.float32


@pytest.mark.parametrize("dtype, outlier", [(np.float64, 1e300), (np.float32, 3e38), (np.uint16, 65535), (np.float32, 1e6)])
def test_a_few_outlier_pixels_leave_the_rest_of_the_normalised_image_as_it_was(dtype, outlier):
    # a hot pixel (65535 in a 10-bit stack) or a "no data" value flattened the local contrast of ~200 x 200 pixels
    # around it; 1e300 had to be clipped by the user; 3e38 overflowed float32
    from _helpers import stripes

    image = (stripes(1, 128, seed=3)[0][0].astype(np.float64) * 4).astype(dtype)  # 10-bit values
    hot = image.copy()
    hot[[20, 60, 100], [30, 90, 50]] = outlier
    near = np.zeros(image.shape, bool)
    near[[20, 60, 100], [30, 90, 50]] = True
    for sigma in (0.0, 24.0):
        plain, spoilt = normalize(image, local_contrast_sigma=sigma), normalize(hot, local_contrast_sigma=sigma)
        assert np.isfinite(spoilt).all() and spoilt.dtype == np.float32
        changed = np.abs(spoilt - plain) > 0.05 * np.ptp(plain)
        assert changed[~near].mean() < 0.002, f"{changed[~near].mean():.3f} of the other pixels changed (sigma {sigma})"
    assert hot[20, 30] == dtype(outlier)  # the input stays as it was


def test_intensity_profile_ignores_linear_rescaling_but_not_inversion_or_log_scaling():
    from _helpers import PlanesOnly, stripes
    from napari_unet.data import PROFILE_LEVELS, PROFILE_SHIFT, intensity_profile, profile_distance

    image = stripes(n_slices=12, size=96)[0]
    profile = intensity_profile(image)
    assert len(profile) == len(PROFILE_LEVELS) and list(profile) == sorted(profile)
    rescaled = intensity_profile(image.astype(np.float64) * 7.5 + 1e4)
    assert profile_distance(profile, rescaled) < 1e-6
    assert profile_distance(profile, intensity_profile(stripes(n_slices=3, size=96, seed=5)[0])) < PROFILE_SHIFT / 2
    assert profile_distance(profile, intensity_profile(255 - image)) > PROFILE_SHIFT
    assert profile_distance(profile, intensity_profile(np.log1p(image.astype(np.float32)))) > PROFILE_SHIFT
    lazy = PlanesOnly(image)
    assert intensity_profile(lazy, max_slices=4) == intensity_profile(image, max_slices=4)
    assert lazy.reads == [0, 4, 7, 11], "a lazy stack is read only at the slices sampled"
    assert intensity_profile(image[5]) == intensity_profile(image[5:6])
    with pytest.raises(InputError, match="no pixels|not a"):
        intensity_profile(np.zeros((0, 4, 4)))
    assert image.dtype == np.uint8 and image.max() > 1, "the input is not modified"


def test_normalisation_helpers_refuse_empty_images_wrong_dimensions_and_bad_factors():
    from napari_unet.data import downscale_image, normalize

    for empty in (np.zeros((0, 4, 4), np.float32), np.zeros((4, 0), np.uint8)):
        with pytest.raises(InputError, match="holds no pixels"):
            normalize(empty)
    plane = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    for bad, sigma in ((plane[None], 24.0), (plane, -1.0)):  # sigma -1 was accepted
        with pytest.raises(ValueError, match=r"local_contrast takes a \(Y, X\) plane and sigma > 0"):
            local_contrast(bad, sigma)
    for factor in (0, 1.5):
        with pytest.raises(ValueError, match="factor must be a whole number >= 1"):
            downscale_image(plane, factor)


def test_normalising_float32_values_near_its_limit_gives_no_nan():
    # a float32 image spanning ±3e38 (finite, so accepted) came out NaN: its percentile range overflowed float32
    from napari_unet.data import normalize

    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(0, 1, (2, 50, 50)) * 1e38, -3e38, 3e38).astype(np.float32)
    for sigma in (0.0, 20.0):
        out = normalize(image, (1.0, 99.8), sigma)
        assert out.dtype == np.float32 and np.isfinite(out).all()
    scaled = normalize(image, (1.0, 99.8))
    np.testing.assert_allclose(scaled, normalize(image.astype(np.float64) / 1e38, (1.0, 99.8)), atol=1e-5)


def test_a_window_is_normalised_as_part_of_its_whole_plane_with_its_context_slices():
    from napari_unet.data import normalize, normalize_window

    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (5, 40, 60)).astype(np.uint16)
    image[:, :, :20] += 900  # bright left columns: a window of the right ones normalised alone looks otherwise
    before = image.copy()
    out, planes = normalize_window(image, [2], (10, 30, 30, 60), (1.0, 99.8), 4.0, context=1)
    assert out.shape == (5, 20, 30) and out.dtype == np.float32 and planes == [2] and np.array_equal(image, before)
    for z in (1, 2, 3):  # the slice and its neighbours
        np.testing.assert_array_equal(out[z], normalize(image[z], (1.0, 99.8), 4.0)[10:30, 30:60])
    assert not out[[0, 4]].any()
    assert not np.allclose(out[2], normalize(image[2, 10:30, 30:60], (1.0, 99.8), 4.0), atol=0.05)
    compact, planes = normalize_window(image, [4, 1], (10, 30, 30, 60), (1.0, 99.8), 4.0)  # no context: those slices only
    assert planes == [0, 1] and np.array_equal(compact, normalize(image[[4, 1]], (1.0, 99.8), 4.0)[:, 10:30, 30:60])


def test_normalising_float64_values_beyond_half_its_range_gives_no_nan():
    # rows of -1.7e308 and +1.7e308 ("no data" markers, finite) overflowed to inf - inf = NaN in the normalisation:
    # training said "diverged ... lower the learning rate", predict wrote labels computed from NaN
    from napari_unet.data import normalize

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, 64, 64)).astype(np.float64)
    image[:, :4], image[:, -4:] = -1.7e308, 1.7e308
    before = image.copy()
    out = normalize(image, (1.0, 99.8))
    assert np.isfinite(out).all() and np.array_equal(image, before)
    assert (out[:, :4] == 0).all() and (out[:, -4:] == 1).all()  # the markers at the ends of the range
    np.testing.assert_allclose(out, normalize(image / 4, (1.0, 99.8)), atol=1e-6)  # the same as at a quarter of the scale


def test_only_the_annotated_slices_are_read_for_training():
    # a stack larger than memory annotated on a few slices was read whole (and its labels twice over as indices)
    from _helpers import PlanesOnly
    from napari_unet.data import read_annotated_slices

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 32, 32)).astype(np.uint8)
    labels = np.full(image.shape, 7, np.uint8)
    labels[1, :4], labels[4, 10:12] = 0, 255
    weights = rng.random(image.shape).astype(np.float32)
    lazy_image, lazy_labels, lazy_weights = PlanesOnly(image), PlanesOnly(labels), PlanesOnly(weights)
    image_stack, label_stack, weight_stack, slices = read_annotated_slices(lazy_image, lazy_labels, 7, lazy_weights)
    assert slices == [1, 4]
    np.testing.assert_array_equal(image_stack, image[[1, 4]])
    np.testing.assert_array_equal(label_stack, labels[[1, 4]])
    np.testing.assert_array_equal(weight_stack, weights[[1, 4]])
    assert set(lazy_image.reads) == {1, 4} and set(lazy_weights.reads) == {1, 4}
    # the labels: every slice scanned once, the annotated ones read again for the stack
    assert sorted(z for z in lazy_labels.reads if not isinstance(z, tuple)) == [0, 1, 1, 2, 3, 4, 4, 5]
    # every slice, or none, annotated; no ignore value; context slices: the whole checked stacks
    for ignore, every in ((None, False), (7, True), (9, False)):
        stacks = read_annotated_slices(image, labels, ignore, every_slice=every)
        assert stacks[3] == list(range(6)) and stacks[0].shape == image.shape
    with pytest.raises(InputError, match="differ"):
        read_annotated_slices(image, labels[:5], 7)
    with pytest.raises(InputError, match="pixel weights shape"):
        read_annotated_slices(image, labels, 7, weights[:, :31])


def test_normalize_refuses_reversed_percentiles_and_a_negative_sigma():
    # (99, 1) inverted the image without a word; a negative sigma was taken
    from napari_unet.data import normalize

    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for percentiles in ((99.0, 1.0), (5.0, 5.0), (-1.0, 50.0), (1.0, 101.0)):
        with pytest.raises(ValueError, match="percentiles must be"):
            normalize(image, percentiles)
    for sigma in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="local_contrast_sigma must be >= 0"):
            normalize(image, (1.0, 99.0), sigma)


def test_annotated_slices_of_in_memory_dask_and_unannotated_stacks():
    import dask.array as da

    from _helpers import PlanesOnly
    from napari_unet.data import read_annotated_slices

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (6, 16, 16)).astype(np.uint8)
    labels = np.full(image.shape, 7, np.uint8)
    labels[[0, 1, 2, 4], :2] = 255
    # in memory, most slices annotated: the stacks as they are (a copy of 4 of 6 slices would be a second stack)
    image_stack, label_stack, _, slices = read_annotated_slices(image, labels, 7)
    assert slices == list(range(6)) and np.shares_memory(image_stack, image) and np.shares_memory(label_stack, labels)
    # dask (zarr) labels are reduced chunk by chunk, each chunk decoded once, not once per slice
    source = PlanesOnly(labels)
    chunked = da.from_array(source, chunks=(3, 16, 16), asarray=False)
    assert read_annotated_slices(da.from_array(image, chunks=(3, 16, 16)), chunked, 7)[3] == [0, 1, 2, 4]
    chunk_reads = [r for r in source.reads if isinstance(r[0], slice) and r[0].stop - r[0].start == 3]
    assert sorted(r[0].start for r in chunk_reads) == [0, 3]  # the scan: each of its 2 chunks decoded once
    # a lazy stack without an annotated pixel is refused before anything is read whole
    with pytest.raises(InputError, match="no annotated pixel .*ignore value 7"):
        read_annotated_slices(PlanesOnly(image), PlanesOnly(np.full(image.shape, 7, np.uint8)), 7)


def test_float16_pixel_weights_pass_without_an_overflow_warning():
    # retrain_data returns float16 weights; comparing their max with 1e6 overflowed in NumPy 2 (RuntimeWarning)
    import warnings

    from napari_unet.data import check_pixel_weights

    weights = np.full((2, 8, 8), 8.0, np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_pixel_weights(weights, np.zeros((2, 8, 8), np.uint8)).dtype == np.float16


def test_the_intensity_profile_of_a_mostly_black_scan_sees_a_linear_export():
    """75 % of an OCT scan is black: with its quantiles of all pixels a linear-intensity export (x^4) of the training
    scan lay at 0.005, a gamma-0.7 one at 0.009 (allowance 0.04): boundaries 21 times worse, without a note."""
    from napari_unet.data import PROFILE_SHIFT, intensity_profile, profile_distance

    rng = np.random.default_rng(0)
    scan = np.zeros((4, 128, 128), np.float32)
    scan[:, 48:60] = rng.uniform(0.15, 1.0, (4, 12, 128))  # the retina's band, black above and below
    for export in (scan**4, scan**0.7):
        assert profile_distance(intensity_profile(scan, above_floor=False), intensity_profile(export, above_floor=False)) < PROFILE_SHIFT
        assert profile_distance(intensity_profile(scan), intensity_profile(export)) > PROFILE_SHIFT
    flipped = scan[:, ::-1, ::-1] * 3 + 2  # the same scan, mirrored and linearly rescaled
    assert profile_distance(intensity_profile(scan), intensity_profile(flipped)) < 1e-6


def test_given_slices_the_annotated_slices_keep_the_shape_checks():
    # read_annotated_slices(slices=...) read planes of mismatched arrays without a word (misaligned stacks)
    from napari_unet.data import read_annotated_slices

    image = np.zeros((4, 16, 16), np.uint8)
    with pytest.raises(InputError, match="image shape .* and labels shape .* differ"):
        read_annotated_slices(image, np.zeros((4, 16, 12), np.uint8), 7, slices=[1, 2])
    with pytest.raises(InputError, match=r"image has shape \(4, 16, 16, 2\); expected a 2-D image"):
        read_annotated_slices(np.zeros((4, 16, 16, 2), np.uint8), np.zeros((4, 16, 16, 2), np.uint8), 7, slices=[1])
    assert read_annotated_slices(image, image, 7, slices=[1, 2])[3] == [1, 2]


def test_a_failure_while_searching_for_the_damaged_chunk_never_replaces_the_read_error():
    # a re-read of the chunks that raised OSError (the file gone) replaced the damaged-chunk error
    import itertools

    import dask.array as da

    from napari_unet.data import read_planes
    from napari_unet.zarr_io import ZarrReadError

    for later in (OSError(5, "Input/output error"), MemoryError(), RuntimeError("anything")):
        calls = itertools.count()

        def block(x, block_info=None, later=later, calls=calls):
            if block_info[0]["chunk-location"][0] == 2:
                if next(calls) == 0:
                    raise ZarrReadError("/d/img.zarr: damaged or unreadable chunk (x)")
                raise later
            return x

        stack = da.zeros((6, 8, 8), np.uint8, chunks=(1, 8, 8)).map_blocks(block, dtype=np.uint8)
        with pytest.raises(ZarrReadError, match="damaged or unreadable chunk") as caught:
            read_planes(stack, name="labels")
        assert caught.value.role == "labels" and caught.value.slices is None


def test_read_plane_reads_one_slice_and_names_its_read_error():
    from napari_unet.data import read_plane
    from napari_unet.zarr_io import ZarrReadError

    class Damaged:
        shape, dtype, ndim = (3, 4, 4), np.dtype(np.uint8), 3

        def __getitem__(self, z):
            if z == 1:
                raise ZarrReadError("/d/img.zarr: damaged or unreadable chunk (x)")
            return np.full((4, 4), z, np.uint8)

    assert read_plane(Damaged(), 2).tolist() == np.full((4, 4), 2).tolist()
    with pytest.raises(ZarrReadError) as caught:
        read_plane(Damaged(), 1, "labels")
    assert caught.value.role == "labels" and list(caught.value.slices) == [1]
    plane = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert read_plane(plane) is not None and np.shares_memory(read_plane(plane), plane)
