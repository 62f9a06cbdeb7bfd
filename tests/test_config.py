import numpy as np
import pytest

from napari_unet.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    from_dict,
    from_json,
    preset,
    to_dict,
    to_json,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    chosen = preset(name)
    assert from_json(ModelConfig, to_json(chosen.model)) == chosen.model
    assert from_json(TrainConfig, to_json(chosen.train)) == chosen.train


def test_classic_preset_is_the_seed_architecture():
    model = preset("classic").model
    assert (model.depth, model.base_filters, model.batch_norm) == (4, 64, False)
    assert (model.head, model.pre_head_filters, model.dropout) == ("sigmoid", 2, 0.5)
    train = preset("classic").train
    assert train.learning_rate == 1e-4 and train.loss == "ce" and train.lr_schedule == "constant"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"depth": 0}, "depth"),
        ({"n_classes": 1}, "n_classes"),
        ({"head": "sigmoid", "n_classes": 3}, "sigmoid"),
        ({"dropout": 1.0}, "dropout"),
        ({"upsampling": "bilinear"}, "upsampling"),
        ({"local_contrast_sigma": -1}, "local_contrast_sigma"),
        ({"kernel_initializer": "foo"}, "kernel_initializer must be one of"),  # failed later inside Keras
    ],
)
def test_model_config_rejects_bad_values_with_a_clear_message(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"patch_size": 8}, "patch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"loss": "focal"}, "loss"),
        ({"percentiles": (50, 10)}, "percentiles"),
        ({"max_minutes": 0}, "max_minutes"),
        ({"max_minutes": float("inf")}, "max_minutes must be a positive number"),  # trained, then crashed unsaved
        ({"augment_rotations": "sometimes"}, "augment_rotations"),
        ({"average_weights_from": 1.0}, "average_weights_from"),
        ({"augment_noise": -0.1}, "augment_noise"),
        ({"augment_noise": "loud"}, "augment_noise"),
        # each was accepted, then failed deep in numpy or Keras, or trained on garbage
        ({"val_every": 0}, "val_every must be >= 1"),
        ({"elastic_grid": 1}, "elastic_grid must be >= 2"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"border_sigma": float("inf")}, "border_sigma must be a finite number"),
        ({"border_weight": float("inf")}, "border_weight must be a finite number"),
        ({"cldice_weight": float("inf")}, "cldice_weight must be a finite number"),
        ({"dice_weight": float("nan")}, "dice_weight must be a finite number"),
        ({"dice_weight": -1.0}, "dice_weight must be a finite number >= 0"),
        ({"elastic_alpha": float("inf")}, "elastic_alpha must be a finite number"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**kwargs)


def test_unknown_fields_are_refused():
    data = to_dict(ModelConfig())
    data["filters_per_level"] = 3
    with pytest.raises(ConfigError, match="filters_per_level"):
        from_dict(ModelConfig, data)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="default"):
        preset("huge")


def test_model_configs_saved_before_local_contrast_load_without_it():
    saved = to_dict(ModelConfig())
    del saved["local_contrast_sigma"]
    assert from_dict(ModelConfig, saved).local_contrast_sigma == 0.0


def test_models_saved_before_noise_augmentation_load_as_trained_without_it(tmp_path):
    from _helpers import tiny_model
    from napari_unet.model_io import load_model, save_model

    import copy

    model = copy.copy(tiny_model())  # tiny_model() is shared by tests: change a copy
    model.train_config = TrainConfig(augment_noise=0.1)
    save_model(model, tmp_path / "new.keras")
    assert load_model(tmp_path / "new.keras").train_config.augment_noise == 0.1
    older = model.metadata()
    del older["train_config"]["augment_noise"]  # as napari-unet wrote it before session 29
    del older["train_config"]["merge_levels"]  # ... and before session 30
    model.metadata = lambda: older
    save_model(model, tmp_path / "old.keras")
    old = load_model(tmp_path / "old.keras").train_config
    assert old.augment_noise == 0.0 and old.merge_levels == (0.5, 0.6)  # not today's "auto"


def test_auto_noise_augmentation_is_on_for_long_budgets_only():
    from napari_unet.config import NOISE_AUGMENTATION, resolve_augment_noise

    assert TrainConfig().augment_noise == "auto"
    assert resolve_augment_noise("auto", 30) == resolve_augment_noise("auto", 120) == NOISE_AUGMENTATION
    assert resolve_augment_noise("auto", 10) == resolve_augment_noise("auto", None) == 0.0  # no budget: epochs only
    assert resolve_augment_noise(0.05, None) == 0.05 and resolve_augment_noise(0, 60) == 0.0
    assert TrainConfig(augment_noise=0.2).augment_noise == 0.2
    for bad in (None, True, "loud", 1.5):
        with pytest.raises(ConfigError, match="augment_noise"):
            TrainConfig(augment_noise=bad)


def test_auto_merge_levels_reach_0_7_for_long_budgets_only():
    from napari_unet.config import resolve_merge_levels

    assert TrainConfig().merge_levels == "auto"
    assert resolve_merge_levels("auto", 30) == resolve_merge_levels("auto", 90) == (0.5, 0.6, 0.7)
    assert resolve_merge_levels("auto", 10) == resolve_merge_levels("auto", None) == (0.5, 0.6)  # Retrain: no budget
    assert resolve_merge_levels((0.4, 0.6), 60) == (0.4, 0.6)
    assert TrainConfig(merge_levels=[0.5, 0.7]).merge_levels == (0.5, 0.7)  # as JSON gives it back
    assert TrainConfig(merge_levels=(0.7, 0.5, 0.5)).merge_levels == (0.5, 0.7)  # sorted: a tie keeps the lower level
    assert TrainConfig(merge_levels=(np.float64(0.6),)).merge_levels == (0.6,) and from_json(TrainConfig, to_json(TrainConfig(merge_levels=(0.55,)))).merge_levels == (0.55,)
    assert from_dict(TrainConfig, {"merge_levels": [0.6]}).merge_levels == (0.6,)
    for bad in (None, "wide", (), (0.5, 1.0), (True,), (float("nan"),), 0.6, np.array([0.5, 0.6])):
        with pytest.raises(ConfigError, match="merge_levels"):
            TrainConfig(merge_levels=bad)


@pytest.mark.parametrize(
    "cls, changes, words",
    [
        (ModelConfig, {"depth": 2.5}, "depth must be a whole number"),
        (ModelConfig, {"base_filters": "8"}, "base_filters must be a whole number"),
        (ModelConfig, {"n_classes": True}, "n_classes must be a whole number"),
        (ModelConfig, {"batch_norm": 1}, "batch_norm must be true or false"),
        (TrainConfig, {"batch_size": 2.5}, "batch_size must be a whole number"),
        (TrainConfig, {"ignore_value": 0.5}, "ignore_value must be a whole number"),  # was truncated to 0
        (TrainConfig, {"learning_rate": "fast"}, "learning_rate must be a number"),
        (TrainConfig, {"percentiles": (1,)}, "percentiles must be two numbers"),
    ],
)
def test_values_of_the_wrong_type_are_config_errors(cls, changes, words):
    with pytest.raises(ConfigError, match=words):
        cls(**changes)
    with pytest.raises(ConfigError, match=words):  # model files and --set go through from_dict
        from_dict(cls, {**to_dict(cls()), **changes})


def test_numbers_are_stored_as_python_numbers_and_bad_json_is_a_config_error():
    import numpy as np

    config = TrainConfig(border_weight=10, batch_size=np.int64(2), ignore_value=None)
    assert type(config.border_weight) is float and type(config.batch_size) is int
    for text in ("nope", "[]", "null"):
        with pytest.raises(ConfigError):
            from_json(ModelConfig, text)
