"""The correction loop's core (napari_unet.retrain): Retrain's data, config and check of the corrections, without Qt."""

import numpy as np
import pytest


def test_retrain_says_how_many_patches_centre_near_the_corrections():
    """The status said "about half of the patches"; the sampler put 15-22 % there on ISBI."""
    from napari_unet.retrain import retrain_data

    image = np.zeros((3, 64, 64), np.uint8)
    values = np.where(np.arange(64) % 8 == 0, 0, 255)[None, None, :].repeat(64, 1).repeat(3, 0)
    annotated = np.zeros(values.shape, bool)
    annotated[:2] = True  # two labelled slices; the user corrected 16 pixels on the third
    corrected = np.zeros(values.shape, bool)
    corrected[2, 30:34, 30:34] = True
    annotated |= corrected
    data = retrain_data(image, values, annotated, corrected, patch_size=32)
    assert data.extra_slices > 0 and 0 < data.focus_share < 0.5
    # the core's sampler, drawing from these labels: each slice's image is its index, so a patch tells its slice
    from napari_unet.data import Augmentation, PatchSampler

    planes = np.broadcast_to(np.arange(len(data.labels), dtype=np.float32)[:, None, None], data.labels.shape).copy()
    indices = np.where(data.labels == data.ignore, -1, (data.labels == 255).astype(np.int32))
    off = Augmentation(flips=False, rotations=False, elastic=False, intensity=False)
    sampler = PatchSampler(planes, indices, 32, np.ones(2, np.float32), off, seed=0)
    drawn = np.array([sampler.patch()[0][0, 0, 0] for _ in range(4000)])
    assert np.mean(drawn >= len(image)) == pytest.approx(data.focus_share, abs=0.03)
    only = retrain_data(image, values, corrected, corrected, patch_size=32)  # the corrections are all the annotations
    assert only.extra_slices == 0 and only.focus_share == pytest.approx(1.0), "every patch centres on them (it said 0 %)"


def test_retrain_weighs_the_corrected_pixels_in_the_loss():
    """Weighted corrections: a Retrain learned more of them in 14 of 14 paired ISBI runs (BENCHMARKS.md, session 41)."""
    from napari_unet.retrain import CORRECTION_WEIGHT, retrain_data

    image = np.zeros((3, 64, 64), np.uint8)
    values = np.where(np.arange(64) % 8 == 0, 0, 255)[None, None, :].repeat(64, 1).repeat(3, 0)
    annotated = np.zeros(values.shape, bool)
    annotated[:2] = True
    corrected = np.zeros(values.shape, bool)
    corrected[2, 30:34, 30:34] = True
    annotated |= corrected
    data = retrain_data(image, values, annotated, corrected, patch_size=32)
    assert data.correction_weight == CORRECTION_WEIGHT == 8
    assert data.pixel_weights.shape == data.labels.shape and data.pixel_weights.dtype == np.float16
    focus = data.labels[3:] != data.ignore  # the focus copies weigh their corrected pixels too
    expected = np.concatenate([corrected, np.repeat(corrected[2:], data.extra_slices, axis=0)])
    assert np.array_equal(data.pixel_weights, np.where(expected, 8.0, 0.0)) and focus.any()
    # many corrections (a whole slice painted over): their extra weight, focus copies included, is at most the count of
    # the other annotated pixels
    painted = np.zeros(values.shape, bool)
    painted[2] = True
    whole = retrain_data(image, values, annotated | painted, painted, patch_size=32)
    weighted = whole.pixel_weights > 0
    others = int(np.count_nonzero(whole.labels != whole.ignore)) - int(weighted.sum())
    assert 0 < whole.correction_weight < 8 and whole.pixel_weights.max() == pytest.approx(whole.correction_weight, rel=1e-3)
    assert whole.pixel_weights.astype(np.float64).sum() == pytest.approx(others, rel=1e-3)
    assert whole.extra_slices > 0 and weighted[3:].any(), "the focus copies' corrections are weighted and counted"
    flat = retrain_data(image[0], values[0], annotated[0], corrected[2], patch_size=32)  # a 2-D image gets focus copies
    assert flat.pixel_weights.shape == flat.labels.shape and np.array_equal(flat.pixel_weights[0], np.where(corrected[2], 8.0, 0.0))
    only = retrain_data(image, values, corrected, corrected, patch_size=32)  # nothing else to outweigh
    assert only.pixel_weights is None and only.correction_weight == 0
    off = retrain_data(image, values, annotated, corrected, patch_size=32, correction_weight=0)
    assert off.pixel_weights is None


def test_retrain_config_is_one_short_epoch_seeded_from_the_model():
    """The seed was a count of Retrain clicks kept in the training dock: scripts and a second dock could not repeat it."""
    from napari_unet.config import ConfigError, ModelConfig, TrainConfig, preset
    from napari_unet.retrain import RETRAIN_BATCH_SIZE, RETRAIN_LEARNING_RATE, RETRAIN_PATCH_SIZE, RETRAIN_STEPS, retrain_config

    form = preset("default").train.replace(augment_elastic=False)
    config = retrain_config(form, ModelConfig(), TrainConfig(seed=6))
    assert (config.epochs, config.steps_per_epoch, config.patch_size, config.batch_size) == (1, RETRAIN_STEPS, RETRAIN_PATCH_SIZE, RETRAIN_BATCH_SIZE)
    assert config.learning_rate == RETRAIN_LEARNING_RATE and config.val_fraction == 0 and config.max_minutes is None
    assert config.seed == 7 and config.augment_elastic is False, "the previous seed + 1; the form's augmentation kept"
    assert retrain_config(form, ModelConfig()).seed == 1, "a model without its training config (older files)"
    assert retrain_config(form, ModelConfig(), TrainConfig(seed=6), seed=42).seed == 42
    with pytest.raises(ConfigError):  # a patch side the network cannot halve down to its bottom
        retrain_config(form, ModelConfig(depth=4), patch_size=40)


def test_correction_check_takes_the_slices_holding_most_corrections():
    from napari_unet import retrain

    values = np.zeros((6, 32, 32), np.uint8)
    corrected = np.zeros(values.shape, bool)
    for z, n in enumerate([0, 5, 40, 1, 30, 12]):
        corrected[z].flat[:n] = True
    check = retrain.correction_check(values, values, corrected)
    assert check.slices == (1, 2, 4, 5) and check.total == 88 and check.values.shape == (4, 32, 32)
    assert retrain.correction_check(values, values, np.zeros(values.shape, bool)) is None
    flat = retrain.correction_check(values[2], values[2], corrected[2])
    assert flat.slices is None and flat.total == 40


def test_class_values_are_counted_without_sorting_every_pixel():
    from napari_unet.labels import find_class_values, unique_values

    for array in (np.array([3, -2**40, 7, 3]), np.array([70000, 5, 5]), np.array([True, True]), np.array([2.0, 7.0, 2.0]),
                  np.array([2**63 + 5, 2**63 + 1], np.uint64), np.arange(10) % 4, np.zeros(0, np.uint8)):
        assert unique_values(array, block=3).tolist() == np.unique(array).tolist()
    assert find_class_values(np.array([[255, 0], [0, 7]], np.uint8), ignore_value=7) == [0, 255]


def test_retrain_data_refuses_misfit_inputs_with_a_message():
    # values of another shape gave an IndexError in the focus copies; share NaN "cannot convert float NaN to integer";
    # patch size 0 was taken
    from napari_unet.data import InputError
    from napari_unet.retrain import retrain_data

    image = np.zeros((2, 32, 32), np.uint8)
    values = np.where(np.arange(32) % 8 == 0, 0, 255)[None, None, :].repeat(32, 1).repeat(2, 0)
    annotated, corrected = np.ones(values.shape, bool), np.zeros(values.shape, bool)
    corrected[1, :4, :4] = True
    with pytest.raises(InputError, match="must share one shape"):
        retrain_data(image, values[:, :, :31], annotated, corrected, patch_size=16)
    for patch_size, share in ((0, 0.5), (16.5, 0.5), (16, float("nan")), (16, 1.5)):
        with pytest.raises(ValueError, match="patch_size must be a whole number >= 1 and share within 0..1"):
            retrain_data(image, values, annotated, corrected, patch_size=patch_size, share=share)
    assert retrain_data(image, values, annotated, corrected, patch_size=16).n_corrected == 16


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 5), (0, 0)])
def test_a_stack_without_pixels_has_no_corrections_to_check(shape):
    from napari_unet.retrain import correction_check

    assert correction_check(np.zeros(shape, np.float32), np.zeros(shape, np.uint8), np.zeros(shape, bool)) is None
