from dataclasses import replace

import numpy as np
import pytest

from _helpers import stripes, tiny_configs
from napari_unet.config import ConfigError
from napari_unet.data import InputError, normalize
from napari_unet.labels import LabelError
from napari_unet.metrics import dice_per_class
from napari_unet.predict import predict
from napari_unet.train import (
    EpochEnd,
    TrainingFinished,
    TrainingFinishing,
    TrainingStarted,
    TrainingStep,
    clear_trainer_cache,
    split_validation,
    train,
    train_events,
    validation_column,
    validation_window,
)


def test_split_validation_holds_out_whole_trailing_slices():
    assert split_validation(list(range(20)), 0.25) == (list(range(15)), [15, 16, 17, 18, 19])
    assert split_validation([3], 0.2) == ([3], [])
    assert split_validation([0, 1], 0.0) == ([0, 1], [])


def test_split_validation_keeps_at_most_the_slices_validation_needs():
    # 200 slices: 40 validated before, 16 now; the other 24 train
    assert split_validation(list(range(200)), 0.2, max_val_slices=16) == (list(range(184)), list(range(184, 200)))
    assert split_validation(list(range(20)), 0.2, max_val_slices=16) == (list(range(16)), [16, 17, 18, 19])
    assert split_validation(list(range(5)), 0.5, max_val_slices=0) == (list(range(4)), [4])  # at least one


def test_the_validation_window_bounds_the_pixels_and_sits_on_the_annotations():
    assert validation_window(np.ones((4, 512, 512), bool)) is None  # ISBI: whole slices
    assert validation_window(np.ones((4, 2048, 2048), bool)) == (512, 1536, 512, 1536)  # 4 x 1024², centred
    assert validation_window(np.ones((1, 16384, 300), bool)) == (1200, 15181, 0, 300)  # narrow: the rows get the rest
    assert validation_window(np.ones((64, 600, 600), bool), min_side=512) == (48, 560, 48, 560)  # never narrower
    assert validation_window(np.ones((64, 600, 600), bool)) == (0, 600, 0, 600)  # than VALIDATION_MIN_SIDE or the slice
    sparse = np.zeros((2, 4096, 4096), bool)
    sparse[:, 3000:3100, 100:300] = True  # annotations off centre stay inside the window
    y0, y1, x0, x1 = validation_window(sparse)
    assert (y0, y1, x0, x1) == (1664, 3112, 96, 1544) and sparse[:, y0:y1, x0:x1].sum() == sparse.sum()
    corners = np.zeros((1, 4096, 4096), bool)
    corners[0, :40, :40] = corners[0, -40:, -40:] = True  # a window centred on both held none of them
    y0, y1, x0, x1 = validation_window(corners)
    assert corners[:, y0:y1, x0:x1].sum() == 1600
    for height, width in ((4100, 4100), (4100, 2048), (2048, 4111)):  # annotated only in the last, partial 16-pixel block
        edge = np.zeros((1, height, width), bool)
        edge[0, -3:, -3:] = True
        y0, y1, x0, x1 = validation_window(edge)
        assert edge[:, y0:y1, x0:x1].sum() == 9, (height, width)
    rng = np.random.default_rng(0)
    for _ in range(100):  # scattered scribbles: the window holds some, and lies inside the slice
        shape = (int(rng.integers(1, 5)), int(rng.integers(100, 3000)), int(rng.integers(100, 3000)))
        scribbles = np.zeros(shape, bool)
        for z, y, x in zip(rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3), rng.integers(0, shape[2], 3)):
            scribbles[z, y : y + 20, x : x + 20] = True
        window = validation_window(scribbles, 200_000, 64)
        if window is not None:
            y0, y1, x0, x1 = window
            assert 0 <= y0 < y1 <= shape[1] and 0 <= x0 < x1 <= shape[2] and scribbles[:, y0:y1, x0:x1].any()


def test_one_image_validates_on_its_last_columns_at_a_network_size_multiple():
    assert validation_column(768, 0.2, 16) == 608  # round(614.4) = 614, down to a multiple of 16
    assert validation_column(100, 0.25, 1) == 75
    assert validation_column(67, 0.01, 16) == 48  # at least 16 validation columns, however small the fraction
    assert validation_column(64, 0.2, 64) == 0  # no room for both parts


@pytest.mark.slow
def test_a_short_training_learns_the_synthetic_task():
    image, labels = stripes(n_slices=5, size=96, seed=0)
    # XLA forced: "auto" would not compile so short a run, and the compiled training step must learn too
    model_config, train_config = tiny_configs(epochs=4, steps_per_epoch=25, val_fraction=0.2, jit_compile=True)
    events = list(train_events(image, labels, model_config, train_config))
    assert isinstance(events[0], TrainingStarted) and events[0].val_slices == [4]
    steps = [e for e in events if isinstance(e, TrainingStep)]
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "completed"
    assert final.model.train_config.jit_compile is True
    assert len(steps) == 100 and len(epochs) == 4
    assert steps[-1].eta == pytest.approx(0.0, abs=1e-6) and steps[1].eta > 0
    # the first step traces and XLA-compiles the network: no ETA from it (spread over the run it said hours, not minutes)
    assert steps[0].eta is None
    # after step 50: the mean time of steps 2-50 times the 50 steps left (the rate of the steps after them, which it
    # was compared with at rel=0.5, is the machine's load: that failed on a busy CI machine)
    rate = (steps[49].elapsed - steps[0].elapsed) / 49
    assert steps[49].eta == pytest.approx(rate * 50, rel=1e-6), "the ETA follows the rate of the steps after the first"
    finishing = events[-2]
    assert isinstance(finishing, TrainingFinishing) and finishing.reason == "completed" and finishing.steps == 100
    assert finishing.tunes_rule and final.model.boundary_rule is not None  # membranes: the rule is chosen after it
    assert np.mean([s.loss for s in steps[-10:]]) < np.mean([s.loss for s in steps[:10]])
    test_image, test_labels = stripes(n_slices=2, size=128, seed=99)
    predicted = predict(final.model, test_image).labels
    dice = dice_per_class(predicted, test_labels, [0, 255])
    assert dice[0] >= 0.9 and dice[255] >= 0.9, dice


def _count_traces(monkeypatch, step_name: str = "train_step") -> list:
    """Patch training so that every trace of a network's ``step_name`` (train_step, predict_step) appends to the
    returned list."""
    import napari_unet.train as train_module

    traces = []
    real_build = train_module.build_unet

    def counting_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        step = getattr(model, step_name)
        setattr(model, step_name, lambda data: traces.append(1) or step(data))
        return model

    monkeypatch.setattr(train_module, "build_unet", counting_build)
    return traces


def test_validation_runs_the_training_network_and_traces_it_once(monkeypatch):
    """Each epoch's validation predicts with the training network itself: no folded copy is built per epoch, its
    predict step is traced once for all epochs, and it predicts what the folded copy would."""
    import napari_unet.predict as predict_module

    clear_trainer_cache()
    predict_traces, folds = _count_traces(monkeypatch, "predict_step"), []
    real_fold = predict_module.fold_batch_norm
    monkeypatch.setattr(predict_module, "fold_batch_norm", lambda *a: folds.append(1) or real_fold(*a))
    image, labels = stripes()
    # Trained and predicted in float32 on every CPU: in bfloat16 (auto with AMX) folding rounds differently (~0.02).
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=2, jit_compile=False, mixed_precision=False)
    events = list(train_events(image, labels, model_config, train_config))
    assert [e.val_loss is not None for e in events if isinstance(e, EpochEnd)] == [True] * 3
    assert len(predict_traces) == 1
    assert len(folds) == 1  # only the final model's rule tuning, after training
    model = events[-1].model
    np.testing.assert_allclose(
        predict(model, image, folded=False).probabilities,
        predict(model, image, mixed_precision=False).probabilities,
        atol=2e-5,
    )


def test_the_training_step_is_traced_once(monkeypatch):
    """Optimizer variables exist before the first step, so TensorFlow traces the step once, not twice."""
    clear_trainer_cache()
    traces = _count_traces(monkeypatch)
    image, labels = stripes()
    train(image, labels, *tiny_configs(epochs=1, steps_per_epoch=3, jit_compile=False, val_fraction=0.0))
    assert len(traces) == 1


def test_a_retrain_reuses_the_traced_step_and_leaves_the_previous_model_intact(monkeypatch):
    clear_trainer_cache()
    traces = _count_traces(monkeypatch)
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=3, jit_compile=False, val_fraction=0.0)
    first = train(image, labels, model_config, train_config).model
    before = [w.copy() for w in first.keras_model.get_weights()]
    second = train(image, labels, train_config=train_config.replace(seed=1), init=first).model
    assert len(traces) == 1  # the second run trained the first run's compiled network, traced already
    assert second.keras_model is not first.keras_model
    assert all(np.array_equal(a, b) for a, b in zip(before, first.keras_model.get_weights()))
    assert any(not np.array_equal(a, b) for a, b in zip(before, second.keras_model.get_weights()))
    # a fine-tuning normalises as its model does; its file recorded the caller's percentiles beside the model's own
    tuned = train(image, labels, train_config=train_config.replace(seed=2, percentiles=(5.0, 95.0)), init=first).model
    assert tuple(tuned.percentiles) == tuple(first.percentiles) == tuple(tuned.train_config.percentiles)
    assert getattr(second.keras_model, "optimizer", None) is None  # no optimizer handed out (smaller model files)
    # A failing run leaves its start model intact too, and the kept network serves the next run.
    calls = []

    def fail_after_a_step():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the worker died")
        return False

    with pytest.raises(RuntimeError, match="worker died"):
        train(image, labels, train_config=train_config, init=first, stop=fail_after_a_step)
    assert all(np.array_equal(a, b) for a, b in zip(before, first.keras_model.get_weights()))
    train(image, labels, train_config=train_config, init=first)
    assert len(traces) == 1
    # a network given beside init was ignored without a word; its own network is accepted
    with pytest.raises(ConfigError, match=r"model_config differs from the network of init \(base_filters 16 vs 8\)"):
        train(image, labels, replace(model_config, base_filters=16), train_config, init=first)
    train(image, labels, first.config, train_config.replace(epochs=1, steps_per_epoch=1), init=first)


def test_a_fine_tuned_models_history_follows_its_start_models_with_steps_across_runs():
    # a model file kept only its last run's epochs, without steps: a loaded Retrain had one point and no curves before it
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=3, jit_compile=False)
    first = train(image, labels, model_config, train_config).model
    assert [(r["epoch"], r["step"], r["run"]) for r in first.history] == [(1, 3, 0), (2, 6, 0)]
    finished = train(image, labels, train_config=train_config.replace(epochs=1, steps_per_epoch=4, val_fraction=0.0), init=first)
    assert [(r["epoch"], r["step"], r["run"]) for r in finished.history] == [(1, 4, 1)]  # the run's own epochs
    tuned = finished.model
    assert [(r["epoch"], r["step"], r["run"]) for r in tuned.history] == [(1, 3, 0), (2, 6, 0), (1, 4, 1)]
    assert tuned.history_steps() == [3, 6, 10]
    assert tuned.history[:2] == first.history and first.history_steps() == [3, 6], "the start model is not modified"
    again = train(image, labels, train_config=train_config.replace(epochs=1, steps_per_epoch=2, val_fraction=0.0), init=tuned).model
    assert again.history_steps() == [3, 6, 10, 12] and [r["run"] for r in again.history] == [0, 0, 1, 2]


def test_history_steps_of_files_before_steps_were_recorded():
    from napari_unet.model_io import UNetModel

    _, train_config = tiny_configs(steps_per_epoch=5)
    old = UNetModel(None, None, [0, 255], train_config=train_config, history=[{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}])
    assert old.history_steps() == [5, 10]
    odd = UNetModel(None, None, [0, 255], train_config=train_config, history=[
        {"epoch": "x", "step": "y"}, {"step": 7.0, "epoch": 1}, {"epoch": True}, {"step": 10**30, "run": -1}, {"step": 3, "run": 10**30}])
    assert odd.history_steps() == [0, 5, 0, 0, 3]  # malformed values from a file count as missing: no exception
    assert [r["run"] for r in odd.history_records()] == [0, 0, 0, 0, 0]
    first = train(*stripes(), *tiny_configs(epochs=1, steps_per_epoch=2, jit_compile=False, val_fraction=0.0)).model
    legacy = replace(first, history=[{"epoch": 1, "loss": 0.5}])  # a file written before session 59
    tuned = train(*stripes(), train_config=first.train_config.replace(steps_per_epoch=3), init=legacy).model
    assert tuned.history_steps() == [2, 5] and [r["run"] for r in tuned.history] == [0, 1]


def test_a_kept_trainer_starts_as_a_new_one(monkeypatch):
    """Same seed and settings: the same weights whether the run builds its trainer or reuses a kept one."""
    traces = _count_traces(monkeypatch)
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=4, jit_compile=False, val_fraction=0.0)
    clear_trainer_cache()
    fresh = train(image, labels, model_config, train_config).model.keras_model.get_weights()
    train(image, labels, model_config, train_config.replace(seed=5, learning_rate=1e-2))  # moves the kept trainer
    reused = train(image, labels, model_config, train_config).model.keras_model.get_weights()
    assert len(traces) == 1  # the later runs did train the kept network
    for a, b in zip(fresh, reused):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stop_request_yields_a_usable_model():
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=5, steps_per_epoch=10)
    steps = []

    def stop():
        return len(steps) >= 3

    for event in train_events(image, labels, model_config, train_config, stop=stop):
        if isinstance(event, TrainingStep):
            steps.append(event)
        final = event
    assert final.reason == "stopped" and len(steps) == 3 and final.steps == 3
    assert final.best_epoch == 1 and final.history[0]["val_loss"] is not None
    assert predict(final.model, image[0]).labels.shape == image.shape[1:]


def test_time_budget_ends_training():
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1000, steps_per_epoch=5, max_minutes=0.1)
    final = train(image, labels, model_config, train_config)
    assert final.reason == "time budget"
    assert final.history[-1]["elapsed"] < 6 + 30  # budget plus compile and one validation


def test_training_is_deterministic_under_a_seed():
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=5, augment_elastic=True)
    runs = [[e.loss for e in train_events(image, labels, model_config, train_config) if isinstance(e, TrainingStep)] for _ in range(2)]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def _first_batch_norm_mean_on_training_tiles(model, image, slices=range(3)):
    """What the first batch norm's moving mean must be after recomputation: the mean output of the first
    convolution over the unaugmented tiles of ``slices`` of ``image`` (training slices 0-2; slice 3 validates)."""
    from napari_unet.data import centre_tiles, normalize
    from napari_unet.model import import_keras

    keras_model = model.keras_model
    tiles = centre_tiles(normalize(image, model.percentiles), slices, 512, model.config.size_multiple)
    first_conv = import_keras().Model(keras_model.input, keras_model.get_layer("down0_conv1").output)
    # float32 sums: a bfloat16 network (mixed precision) outputs bfloat16, whose long sums lose the small terms
    return np.mean([np.asarray(first_conv.predict_on_batch(t), np.float32).mean(axis=(0, 1, 2)) for t in tiles], axis=0)


def test_batch_norm_statistics_are_recomputed_on_unaugmented_training_tiles():
    clear_trainer_cache()  # the trainer below traces its recomputation for these tiles only
    image, labels = stripes(n_slices=4, size=96)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=5, recompute_batch_norm=True)
    final = train(image, labels, model_config, train_config)
    model = final.model.keras_model
    expected = _first_batch_norm_mean_on_training_tiles(final.model, image)
    np.testing.assert_allclose(model.get_layer("down0_bn1").moving_mean.numpy(), expected, rtol=1e-4, atol=1e-5)
    import napari_unet.train as train_module

    forward = train_module._idle_trainers[-1].batch_norm._forward
    again = train(image, labels, model_config, train_config.replace(seed=3)).model  # kept trainer, kept recomputation
    assert train_module._idle_trainers[-1].batch_norm._forward is forward and forward.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(
        again.keras_model.get_layer("down0_bn1").moving_mean.numpy(),
        _first_batch_norm_mean_on_training_tiles(again, image), rtol=1e-4, atol=1e-5,
    )
    kept = train(image, labels, model_config, train_config.replace(recompute_batch_norm=False)).model.keras_model
    assert not np.allclose(kept.get_layer("down0_bn1").moving_mean.numpy(), expected, rtol=1e-2)
    # on its own it takes the raw images, as predict does, and normalises them as the model does
    from napari_unet.train import recompute_batch_norm

    raw = image.copy()
    kept_model = train(image, labels, model_config, train_config.replace(recompute_batch_norm=False)).model
    recompute_batch_norm(kept_model, raw, range(3))
    np.testing.assert_array_equal(raw, image)
    np.testing.assert_allclose(
        kept_model.keras_model.get_layer("down0_bn1").moving_mean.numpy(),
        _first_batch_norm_mean_on_training_tiles(kept_model, image), rtol=1e-4, atol=1e-5,
    )
    recompute_batch_norm(kept_model, raw, [0, 1, 2, 3], max_tiles=2)  # evenly chosen: slices 0 and 3
    np.testing.assert_allclose(
        kept_model.keras_model.get_layer("down0_bn1").moving_mean.numpy(),
        _first_batch_norm_mean_on_training_tiles(kept_model, image, [0, 3]), rtol=1e-4, atol=1e-5,
    )


def test_sparse_labels_and_fine_tuning_keep_classes():
    image, labels = stripes()
    sparse = np.full_like(labels, 7)
    sparse[:, 20:60, 20:60] = labels[:, 20:60, 20:60]
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=5, ignore_value=7)
    finished = train(image, sparse, model_config, train_config)
    first = finished.model
    assert first.class_values == [0, 255]
    # membranes without fully annotated validation slices: no rule, and the run says so (predictions were argmax unsaid)
    assert first.boundary_rule is None and "no membrane rule was chosen" in finished.untuned_rule_note
    tuned = train(image, sparse, None, train_config, init=first).model
    assert tuned.config == first.config and tuned.class_values == [0, 255]
    assert not all(np.array_equal(a, b) for a, b in zip(first.keras_model.get_weights(), tuned.keras_model.get_weights()))
    with pytest.raises(LabelError, match="does not know"):
        train(image, np.where(labels == 0, 3, labels), None, train_config.replace(ignore_value=None), init=first)


def test_fine_tuning_keeps_the_membrane_rule_it_cannot_tune_again_and_reports_steps():
    """Retrain has no validation: its model must keep the rule the first training chose (else plain argmax)."""
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=3)
    first = train(image, labels, model_config, train_config).model
    first.boundary_rule = {"threshold": 0.7, "seed_level": None, "merge_below": 0.6}  # as tuned on real data
    tuned = train(image, labels, None, train_config.replace(val_fraction=0.0), init=first)
    assert tuned.model.boundary_rule == first.boundary_rule and tuned.steps == 3 and tuned.untuned_rule_note is None
    untouched = train(image, labels, None, train_config, init=first, stop=lambda: True)
    assert untouched.reason == "stopped" and untouched.steps == 0


def test_instance_labels_are_refused_as_classes():
    image, _ = stripes()
    objects = np.arange(image.size, dtype=np.int32).reshape(image.shape) // 50  # one id per 50 pixels
    with pytest.raises(LabelError, match="distinct values; a U-Net learns at most 64 classes"):
        train(image, objects, *tiny_configs(epochs=1, steps_per_epoch=1))


def test_single_image_validates_on_held_out_columns():
    image, labels = stripes(n_slices=1, size=128)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=3)
    events = list(train_events(image[0], labels[0], model_config, train_config))
    assert events[0].val_slices == []
    assert events[-1].history[0]["val_loss"] is not None


def test_one_image_validates_on_its_last_columns_normalised_with_the_whole_image(monkeypatch):
    # The last columns were normalised on their own: the OCT scan's last fifth has its 99.8th percentile at 149 where
    # the scan's is at 200, so validation (and the membrane rule tuned there) saw another contrast than predict gives.
    import napari_unet.train as train_module

    image, labels = stripes(n_slices=1, size=128)
    image = image[0].astype(np.float32)
    image[:, :40] *= 3.0  # bright left columns: percentiles of the whole image, not of the last columns
    seen = []

    def spy(model, images, **kwargs):
        seen.append((np.array(images), kwargs.get("normalized"), list(kwargs.get("slices"))))
        return predict(model, images, **kwargs)

    monkeypatch.setattr(train_module, "predict", spy)
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=2)
    events = list(train_events(image, labels[0], model_config, train_config))
    cut = events[0].val_column
    whole = normalize(image, events[-1].model.percentiles)
    assert cut == 96 and len(seen) >= 2  # each epoch, and the membrane rule
    assert all(normalized and slices == [0] and np.array_equal(array, whole[None, :, cut:]) for array, normalized, slices in seen)
    assert not np.allclose(whole[:, cut:], normalize(image[:, cut:], events[-1].model.percentiles), atol=0.05)


def test_large_slices_validate_on_a_window_and_the_membrane_rule_is_tuned_there(monkeypatch):
    # 20 x 2048² slices: every epoch's validation predicted whole slices (22 s, 1.5 GB), the rule 68 s more
    import napari_unet.train as train_module

    monkeypatch.setattr(train_module, "VALIDATION_PIXELS", 4 * 48 * 48)
    monkeypatch.setattr(train_module, "VALIDATION_MIN_SIDE", 48)
    scored = []
    real_scores = train_module._validation_scores
    windows = []
    monkeypatch.setattr(train_module, "_validation_scores", lambda m, images, planes, indices, w: scored.append(
        (images.shape, list(planes), indices.shape)) or windows.append((np.array(images), m.percentiles))
        or real_scores(m, images, planes, indices, w))
    image, labels = stripes(n_slices=8, size=96)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.75)
    events = list(train_events(image, labels, model_config, train_config))
    started, final = events[0], events[-1]
    # at most VALIDATION_PIXELS // 48² = 4 slices (not the 6 asked for), each a 48 x 48 window of the 96² slice
    assert started.val_slices == [4, 5, 6, 7] and started.train_slices == [0, 1, 2, 3]
    assert started.val_window == (16, 64, 16, 64) and "a window of 48 x 48 pixels, rows 16-63" in started.validation
    assert scored == [((4, 48, 48), [0, 1, 2, 3], (4, 48, 48))]  # the windows of the 4 validation slices
    seen, percentiles = windows[0]  # cut from the whole normalised slices, not normalised on their own
    np.testing.assert_array_equal(seen, normalize(image[4:], percentiles)[:, 16:64, 16:64])
    assert final.model.boundary_rule is not None  # tuned on the window, which is fully annotated


def test_one_large_image_validates_on_a_window_of_its_last_columns(monkeypatch):
    import napari_unet.train as train_module

    monkeypatch.setattr(train_module, "VALIDATION_PIXELS", 48 * 24)
    monkeypatch.setattr(train_module, "VALIDATION_MIN_SIDE", 16)
    image, labels = stripes(n_slices=1, size=128)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2)
    started = next(iter(train_events(image[0], labels[0], model_config, train_config)))
    y0, y1, x0, x1 = started.val_window
    assert started.val_column == 96 and (x0, x1) == (96, 128) and (y1 - y0) * (x1 - x0) <= 48 * 24
    assert started.validation.startswith("validating on columns 96 and up (a window of 36 x 32 pixels")


def test_preparing_a_training_holds_no_int32_indices_nor_two_normalised_copies():
    # 20 x 2048² slices took 2.2 GB before the first step (int32 indices, copies of them and of the normalised stack)
    import tracemalloc

    from napari_unet import data

    image, labels = stripes(n_slices=8, size=512)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1)
    data._BORDER_WEIGHTS.clear()
    events = train_events(image, labels, model_config, train_config)
    tracemalloc.start()
    try:
        assert isinstance(next(events), TrainingStarted)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        events.close()
    # now: indices 1 byte, training and validation copies of them 1, normalised training slices 3, border weights 3
    # (and their cache 3) per pixel of the stack: 12 measured, 19 at the peak; it was 22, and 25 at the peak
    assert held / image.size < 14 and peak / image.size < 22, (held / image.size, peak / image.size)


def test_multiclass_labels_train_a_softmax_model():
    image, labels = stripes()
    three = np.where(labels == 0, 0, np.where(np.arange(96)[None, None, :] < 48, 1, 2)).astype(np.uint8)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=3)
    model = train(image, three, model_config, train_config).model
    assert model.config.n_classes == 3 and model.class_values == [0, 1, 2]
    assert predict(model, image[0]).probabilities.shape == (96, 96, 3)


def test_membrane_training_records_a_tuned_boundary_rule(monkeypatch):
    import napari_unet.train as train_module

    image, labels = stripes(n_slices=5, size=96, seed=0)
    # with the clDice term (off by default), which training must point at the detected boundary class
    losses = []
    real_loss = train_module.masked_loss
    monkeypatch.setattr(train_module, "masked_loss", lambda *a, **k: losses.append(k) or real_loss(*a, **k))
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=10, val_fraction=0.2, cldice_weight=0.5)
    final = train(image, labels, model_config, train_config)
    assert final.model.boundary_value == 0  # the thin stripes are the boundary class
    assert [(k["cldice_weight"], k["cldice_class"]) for k in losses] == [(0.5, 0)]  # class index of value 0
    assert final.model.train_config.cldice_weight == 0.5 and np.isfinite(final.history[-1]["loss"])
    assert final.model.boundary_rule is not None and 0 <= final.boundary_v_rand <= 1
    plain = predict(final.model, image[4], close_boundaries=False)
    ruled = predict(final.model, image[4])
    expected = np.where(plain.probabilities[..., 0] > final.model.boundary_rule["threshold"], 0, 255)
    rule = final.model.boundary_rule
    if rule["seed_level"] is None and rule.get("merge_below") is None:
        np.testing.assert_array_equal(ruled.labels, expected)
    else:  # gap closing: the rule on the same probabilities (borders added, specks far from them dropped)
        from napari_unet.postprocess import boundary_mask

        membrane = boundary_mask(plain.probabilities[..., 0], **rule)
        np.testing.assert_array_equal(ruled.labels, np.where(membrane, 0, 255))
        assert rule["border_reach"] == 4.0


def test_bfloat16_without_hardware_support_warns(monkeypatch):
    from napari_unet import hardware

    monkeypatch.setattr(hardware, "has_fast_bfloat16", lambda: False)
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1, mixed_precision=True, jit_compile=False)
    with pytest.warns(RuntimeWarning, match="bfloat16"):
        final = train(image, labels, model_config, train_config)
    assert final.reason == "completed"


def test_ema_trains_and_keeps_the_averaged_weights_of_the_best_epoch():
    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=5, ema_momentum=0.9, jit_compile=False, recompute_batch_norm=False, average_weights_from=0.0)
    seen = []
    for event in train_events(image, labels, model_config, train_config):
        if isinstance(event, TrainingStarted):
            live = event.model.keras_model
        elif isinstance(event, EpochEnd):
            seen.append([w.copy() for w in live.get_weights()])
        final = event
    assert final.reason == "completed" and final.best_epoch in (1, 2)
    kept = final.model.keras_model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(kept, seen[final.best_epoch - 1]))


def _train_recording_epochs(train_config):
    """Train on :func:`stripes`; returns the final event and the trainable weights at every epoch end."""
    image, labels = stripes()
    seen = []
    for event in train_events(image, labels, tiny_configs()[0], train_config):
        if isinstance(event, TrainingStarted):
            live = event.model.keras_model
        elif isinstance(event, EpochEnd):
            seen.append([v.numpy().copy() for v in live.trainable_variables])
        final = event
    return final, seen


def test_weight_averaging_delivers_the_mean_of_the_late_epochs():
    # averaged weights get their own batch-norm statistics even when recomputation is off for single epochs
    train_config = tiny_configs(epochs=4, steps_per_epoch=3, average_weights_from=0.5, recompute_batch_norm=False, jit_compile=False)[1]
    final, seen = _train_recording_epochs(train_config)
    # epochs end at 1/4, 2/4, 3/4 and 4/4 of the run: the last three are averaged
    assert final.averaged_epochs == 3 and final.kept == "mean of the last 3 epochs"
    kept = [v.numpy() for v in final.model.keras_model.trainable_variables]
    for index, value in enumerate(kept):
        np.testing.assert_allclose(value, np.mean([epoch[index] for epoch in seen[1:]], axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(kept[0], seen[-1][0])
    image = stripes()[0]
    moving_mean = final.model.keras_model.get_layer("down0_bn1").moving_mean.numpy()
    np.testing.assert_allclose(moving_mean, _first_batch_norm_mean_on_training_tiles(final.model, image), rtol=1e-4, atol=1e-5)
    assert predict(final.model, image[0]).labels.shape == image.shape[1:]


def test_weight_average_means_float_arrays_and_keeps_the_latest_of_others():
    from napari_unet.train import WeightAverage

    average = WeightAverage()
    first = [np.array([1.0, 2.0], np.float32), np.array([7], np.uint32)]
    second = [np.array([3.0, 6.0], np.float32), np.array([9], np.uint32)]
    average.add(first)
    average.add(second)
    mean = average.mean(second)
    assert average.count == 2 and mean[0].dtype == np.float32
    np.testing.assert_array_equal(mean[0], [2.0, 4.0])
    np.testing.assert_array_equal(mean[1], [9])
    np.testing.assert_array_equal(first[0], [1.0, 2.0])  # inputs untouched


def test_weight_averaging_of_a_single_epoch_keeps_the_best_epoch():
    final, seen = _train_recording_epochs(tiny_configs(epochs=2, steps_per_epoch=3, average_weights_from=0.9, jit_compile=False)[1])
    assert final.averaged_epochs == 0 and final.kept == f"best epoch {final.best_epoch}"
    kept = [v.numpy() for v in final.model.keras_model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(kept, seen[final.best_epoch - 1]))


def test_downscaled_model_trains_on_shrunk_slices_and_predicts_full_size():
    from dataclasses import replace

    image, labels = stripes(n_slices=4, size=128, seed=0)
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=10)
    final = train(image, labels, replace(model_config, downscale=2), train_config)
    assert final.model.config.downscale == 2
    result = predict(final.model, image[3])
    assert result.labels.shape == (128, 128) and result.probabilities.shape == (128, 128, 2)
    assert dice_per_class(result.labels, labels[3], [0, 255])[255] > 0.8


def test_context_model_learns_from_the_neighbouring_slice():
    from dataclasses import replace

    # the labels of slice z are the stripes of slice z + 1: only a network that sees its neighbours can learn them
    image, stripes_of = stripes(n_slices=6, size=96, seed=2)
    labels = np.full_like(stripes_of, 7)  # 7 = not annotated (last slice)
    labels[:-1] = stripes_of[1:]
    model_config, train_config = tiny_configs(epochs=4, steps_per_epoch=15, ignore_value=7, val_fraction=0.2)
    final = train(image, labels, replace(model_config, context_slices=1), train_config)
    assert final.model.config.network_channels == 3
    held_out = 4  # the validation slice
    result = predict(final.model, image, slices=[held_out])
    assert dice_per_class(result.labels[0], labels[held_out], [0, 255])[0] > 0.6


def test_local_contrast_model_learns_a_pale_region_and_validates_on_whole_normalised_slices(monkeypatch):
    from dataclasses import replace

    import napari_unet.train as train_module

    image, labels = stripes(n_slices=5, size=96, seed=3)
    pale = (200 + (image.astype(np.float32) - 190) * 0.15).clip(0, 255).astype(np.uint8)
    image[:, :, 48:] = pale[:, :, 48:]  # the right half's stripes have 15 % of the contrast
    seen = []

    def spy(model, images, **kwargs):
        seen.append((np.array(images), kwargs.get("normalized"), list(kwargs.get("slices"))))
        return predict(model, images, **kwargs)

    monkeypatch.setattr(train_module, "predict", spy)
    model_config, train_config = tiny_configs(epochs=4, steps_per_epoch=15, val_fraction=0.2)
    final = train(image, labels, replace(model_config, local_contrast_sigma=8.0), train_config)
    assert final.model.config.local_contrast_sigma == 8.0
    # validation and the membrane rule see slice 4 as a user's predict does: normalised once, local contrast included
    once = normalize(image[4], final.model.percentiles, 8.0)
    assert seen and all(normalized and slices == [0] and np.array_equal(array, once[None]) for array, normalized, slices in seen)
    result = predict(final.model, image[4], tta=False)
    assert dice_per_class(result.labels[:, 48:], labels[4, :, 48:], [0, 255])[0] > 0.6


def test_the_membrane_rule_is_tuned_from_the_runs_merge_levels(monkeypatch):
    import napari_unet.train

    offered = []
    tune = napari_unet.train.tune_boundary_rule
    monkeypatch.setattr(napari_unet.train, "tune_boundary_rule",
                        lambda *a, closings, **k: offered.append([c["merge_below"] for c in closings]) or tune(*a, closings=closings, **k))
    image, labels = stripes()
    for minutes, levels in ((30, "auto"), (None, "auto"), (None, (0.55, 0.45))):
        model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, max_minutes=minutes, merge_levels=levels)
        model = train(image, labels, model_config, train_config).model
        assert model.boundary_rule["merge_below"] in offered[-1]
    assert offered == [[0.5, 0.6, 0.7], [0.5, 0.6], [0.45, 0.55]]


def test_pixel_weights_make_a_fine_tuning_learn_the_weighted_pixels():
    """Retrain weighs the user's corrections this way (BENCHMARKS.md, session 41); without the weights the same
    fine-tuning (same seed, same patches) learns them less. Slice 0 is unannotated and slice 3 validates, so the
    weights must follow the training slices [1, 2]."""
    from _helpers import tiny_model

    start = tiny_model()
    image, labels = stripes(n_slices=4, size=96, seed=5)
    taught = labels.copy()
    taught[0] = 7  # not annotated
    square = (1, slice(40, 64), slice(40, 64))
    taught[square] = 0  # a "correction": background inside the square is called line
    changed = (taught != labels) & (taught != 7)
    _, config = tiny_configs(epochs=1, steps_per_epoch=20, val_fraction=0.34, learning_rate=3e-3, seed=3, ignore_value=7)
    weights = np.where(changed, 30.0, 0.0)
    before = weights.copy()

    def line_probability(pixel_weights):
        events = list(train_events(image, taught, None, config, init=start, pixel_weights=pixel_weights))
        assert events[0].train_slices == [1, 2] and events[0].val_slices == [3]
        probability = predict(events[-1].model, image[1], tta=False, close_boundaries=False).probabilities[..., 0]
        return float(probability[changed[1]].mean())

    plain, weighted = line_probability(None), line_probability(weights)
    assert weighted > plain + 0.1, (plain, weighted)
    assert np.array_equal(weights, before), "the weights are not modified"


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.ones((2, 96, 95)), "shape"),
        (np.full((2, 96, 96), np.nan), "finite"),
        (-np.ones((2, 96, 96)), ">= 0"),
        (np.full((2, 96, 96), "a"), "numbers"),
        (np.full((2, 96, 96), 1e300), "at most 1e\\+06"),  # inf in float32: "training diverged ... lower the learning rate"
    ],
)
def test_bad_pixel_weights_are_refused_before_training(weights, message):
    image, labels = stripes(n_slices=2, size=96)
    model_config, train_config = tiny_configs()
    with pytest.raises(InputError, match=f"pixel weights.*{message}"):
        next(train_events(image, labels, model_config, train_config, pixel_weights=weights))


def test_validation_while_training_scores_the_network_as_it_will_predict():
    """Validation runs the training network with its moving batch-norm statistics. At Keras's momentum 0.99 those still
    held mostly their initial values after a few hundred steps: the epoch lines scored a network that called every
    pixel one class (0.20 logged here against 0.07 for the finished model), and the best epoch was picked on that."""
    from napari_unet.model import BATCH_NORM_MOMENTUM

    assert BATCH_NORM_MOMENTUM == 0.9
    image, labels = stripes(n_slices=5, size=96, seed=0)
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=10, val_fraction=0.2, average_weights_from=0, seed=0)
    events = list(train_events(image, labels, model_config, train_config))
    final = events[-1]
    logged = [e for e in events if isinstance(e, EpochEnd)][final.best_epoch - 1].val_metrics["pixel_error"]
    finished = np.mean(predict(final.model, image, slices=[4], tta=False, close_boundaries=False).labels[0] != labels[4])
    assert final.kept == f"best epoch {final.best_epoch}"  # its weights, with batch-norm statistics recomputed
    assert logged == pytest.approx(finished, abs=0.03)


def test_layered_labels_train_without_rotations_and_say_so():
    # OCT layers: rotated patches put the vitreous under the choroid (both dark); the real scan's held-out mean Dice
    # was 0.45 with them (BENCHMARKS.md, "Session 42")
    from napari_unet.synthetic import make_oct_stack
    from napari_unet.train import TrainingStarted, train_events

    image, labels = make_oct_stack(2, (64, 64), seed=1)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0)
    assert train_config.augment_rotations == "auto"

    def run(labels, config, init=None):
        events = list(train_events(image, labels, model_config, config, init=init))
        started = next(e for e in events if isinstance(e, TrainingStarted))
        return started.notes, events[-1].model

    notes, model = run(labels, train_config)
    assert model.train_config.augment_rotations is False  # recorded in the model file: prediction keeps tiles upright
    assert len(notes) == 1 and notes[0].setting == "augment_rotations" and "layered top to bottom" in str(notes[0])
    notes, tuned = run(labels, train_config, init=model)  # fine-tuning keeps the model's choice, silently
    assert tuned.train_config.augment_rotations is False and notes == ()
    notes, forced = run(labels, train_config.replace(augment_rotations=True))
    assert forced.train_config.augment_rotations is True and notes == ()
    em_image, em_labels = stripes(2, 64)
    events = list(train_events(em_image, em_labels, model_config, train_config))
    assert events[-1].model.train_config.augment_rotations is True
    assert next(e for e in events if isinstance(e, TrainingStarted)).notes == ()
    # OCT layers annotated in a few columns: layered or not cannot be told; rotations stay on, and a note says so
    few = np.full_like(labels, 255)
    few[..., ::16] = labels[..., ::16]  # 4 columns a scan, 8 in all
    few[1] = 255
    notes, sparse = run(few, train_config.replace(ignore_value=255))
    assert sparse.train_config.augment_rotations is True
    said = [str(note) for note in notes if note.setting == "augment_rotations"]
    assert len(said) == 1 and "too few annotated columns" in said[0], notes


def test_layered_labels_give_a_model_that_predicts_its_layers_in_order(tmp_path):
    from napari_unet.model_io import load_model, save_model
    from napari_unet.synthetic import make_oct_stack

    image, labels = make_oct_stack(2, (64, 64), seed=1)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0)
    model = train(image, labels, model_config, train_config).model
    assert model.layer_order == list(range(10))
    assert load_model(save_model(model, tmp_path / "m.keras")).layer_order == list(range(10))
    assert train(image, labels, model_config, train_config, init=model).model.layer_order == list(range(10))
    import dataclasses

    older = dataclasses.replace(model, layer_order=None)  # a model file from before layer orders: fine-tuning adds it
    assert train(image, labels, model_config, train_config, init=older).model.layer_order == list(range(10))
    ordered = predict(model, image, tta=False).labels  # a barely trained network: its argmax is not in order
    rank = np.diff(ordered.astype(np.int64), axis=1)
    assert (rank >= 0).all()  # down every column the layers keep their order (class values 0..9 top to bottom)
    plain = predict(model, image, tta=False, close_boundaries=False).labels
    np.testing.assert_array_equal(plain, np.argmax(predict(model, image, tta=False).probabilities, axis=-1))
    em_image, em_labels = stripes(2, 64)
    assert train(em_image, em_labels, model_config, train_config).model.layer_order is None


def test_a_fluid_pocket_class_stays_out_of_the_layer_order_and_is_predicted_where_most_probable(tmp_path):
    # DME fluid (a class inside a layer) was recorded below the choroid: the ordered prediction erased it
    from napari_unet.model_io import load_model, save_model
    from napari_unet.synthetic import make_oct_stack

    image, labels = make_oct_stack(2, (64, 64), seed=1)
    labels = labels.copy()
    thick = labels == 9
    labels[:, 50:54, 10:14] = np.where(thick[:, 50:54, 10:14], 12, labels[:, 50:54, 10:14])  # fluid in the choroid
    image = image.copy()
    image[labels == 12] = 0
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0)
    events = list(train_events(image, labels, model_config, train_config))
    model = events[-1].model
    assert model.class_values == [*range(10), 12] and model.layer_order == list(range(10))
    assert "12 is a pocket inside them" in str(events[0].notes[0])  # the user sees which class the order leaves out
    assert model.train_config.augment_rotations is False
    assert load_model(save_model(model, tmp_path / "m.keras")).layer_order == list(range(10))
    from napari_unet.model_io import read_metadata

    meta = read_metadata(tmp_path / "m.keras")  # the pocket at the end: older versions read it as a layer, not damage
    assert meta["layer_order"] == [*range(10), 12] and meta["layer_pockets"] == [12]
    assert meta["format_version"] == 2  # older versions ask to upgrade (they read the pocket as a layer: never predicted)
    prediction = predict(model, image, tta=False)
    most_probable = np.asarray(model.class_values)[prediction.probabilities.argmax(axis=-1)]
    np.testing.assert_array_equal(prediction.labels == 12, most_probable == 12)


def test_a_network_of_several_channels_and_a_colour_like_stack_are_refused_before_training():
    from dataclasses import replace

    image, labels = stripes(n_slices=2, size=64)
    model_config, train_config = tiny_configs()
    with pytest.raises(InputError, match="the model expects 3 channels; napari-unet images have one"):  # a Keras error
        next(train_events(image, labels, replace(model_config, input_channels=3), train_config))
    narrow = np.zeros((3, 64, 4), np.uint8)  # trained an epoch, then its validation refused it as RGB
    with pytest.raises(InputError, match="RGB image with colours last"):
        next(train_events(narrow, narrow, model_config, train_config))


def test_a_network_too_large_for_the_memory_left_is_refused_before_it_is_built(monkeypatch):
    # depth 6 with 128 filters (2 billion weights) grew to 24 GB, and the system killed the process: in napari, the
    # viewer with the user's unsaved layers
    from dataclasses import replace

    import napari_unet.model
    import napari_unet.train as train_module
    from napari_unet.config import ConfigError

    built = []
    monkeypatch.setattr(train_module, "build_unet", lambda *a, **k: built.append(a) or napari_unet.model.build_unet(*a, **k))
    monkeypatch.setattr(train_module.hardware, "available_memory_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(train_module.hardware, "memory_capacity",
                        lambda: train_module.hardware.MemoryCapacity(8 * 2**30, "this machine's memory and swap"))
    image, labels = stripes(n_slices=2, size=128)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1, patch_size=128)
    with pytest.raises(ConfigError, match=r"depth 6, 128 filters: 1,990.8 million weights.*more than the 8.0 GB of this "
                                          r"machine's memory and swap.*depth"):
        train(image, labels, replace(model_config, depth=6, base_filters=128), train_config)
    with pytest.raises(ConfigError, match=r"8 filters: 29,810 weights\) on batches of 100000 .*lower the batch size"):
        train(image, labels, model_config, train_config.replace(batch_size=100_000))  # was killed at 19 GB
    assert built == []
    assert train(image, labels, model_config, train_config).model is not None  # a small network fits
    assert built, "the spy on build_unet saw no build: 'built == []' above proved nothing"
    # a kept trainer of the same network (its step traced for these settings) does not exempt a larger batch
    with pytest.raises(ConfigError, match=r"on batches of 100000 .*lower the batch size"):
        train(image, labels, model_config, train_config.replace(batch_size=100_000))


def test_durations_read_the_same_in_the_command_line_and_the_widgets():
    from napari_unet.train import format_seconds

    # the command line truncated (0:59 for 59.6 s) and had no hours (61:40), the widgets rounded and had them
    assert [format_seconds(s) for s in (None, -3, 0.4, 59.6, 61, 3700, 36000)] == ["?", "0:00", "0:00", "1:00", "1:01", "1:01:40", "10:00:00"]


def test_a_stack_annotated_on_a_few_slices_trains_on_those_without_reading_it_whole():
    from _helpers import PlanesOnly

    image, labels = stripes(n_slices=8, size=96)
    sparse = np.full(labels.shape, 7, np.uint8)
    sparse[[2, 5, 6]] = labels[[2, 5, 6]]
    lazy_image, lazy_labels = PlanesOnly(image), PlanesOnly(sparse)
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=10, ignore_value=7, val_fraction=0.34)
    events = list(train_events(lazy_image, lazy_labels, model_config, train_config))
    started, final = events[0], events[-1]
    assert started.train_slices == [2, 5] and started.val_slices == [6]  # the stack's slice numbers
    # PlanesOnly refuses a whole read; besides the annotated slices, only the intensity profile's 8 samples
    assert {2, 5, 6} <= {index for index in lazy_image.reads if not isinstance(index, tuple)}
    assert len(lazy_image.reads) <= 3 + 8
    assert final.steps == 20 and all(np.isfinite(h["val_loss"]) for h in final.history) and final.model.class_values == [0, 255]


def test_the_memory_check_counts_what_the_process_holds_already_and_a_gpus_activations_apart(monkeypatch, memory):
    # the estimate includes TensorFlow's 0.8 GB, which a process training in napari holds already: compared with the
    # memory available now, it warned of trainings that fit (refused them, before session 64)
    import warnings

    from napari_unet import hardware
    from napari_unet.config import ConfigError, ModelConfig
    from napari_unet.model import TRAINING_BASE_BYTES, training_memory_bytes
    from napari_unet.train import check_training_memory

    config = ModelConfig(depth=4, base_filters=16)
    needed = training_memory_bytes(config, 4, 256, True)
    base = int(TRAINING_BASE_BYTES)
    memory(int((needed - base) / hardware.MEMORY_SHARE) + 1, 10**12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_training_memory(config, 4, 256, True, in_use=base) is False  # fits beside what is held
    memory(int((needed - base - 2**20) / hardware.MEMORY_SHARE), 10**12)
    with pytest.warns(hardware.LowMemoryWarning, match=r"more than 3/4 of the .* available now \(besides the 763 MB "
                                                       r"this process holds already\); training anyway"):
        assert check_training_memory(config, 4, 256, True, in_use=base) is True
    huge_batch = training_memory_bytes(config, 400, 256, True)
    memory(10**12, needed)
    check_training_memory(config, 400, 256, True, activations_here=False)  # the activations on a GPU
    with pytest.raises(ConfigError, match="lower the batch size"):
        check_training_memory(config, 400, 256, True, in_use=base)  # held or not, it must fit in memory and swap
    memory(None, huge_batch)  # (the capacity alone is known)
    check_training_memory(config, 400, 256, True)
    monkeypatch.setattr(hardware, "memory_capacity", lambda: None)
    monkeypatch.setattr(hardware, "physical_memory", lambda: None)
    check_training_memory(config, 400, 256, True)  # unknown: never refused nor warned of


def test_reading_only_the_annotated_slices_leaves_the_models_intensity_reference_as_it_was():
    from napari_unet.data import intensity_references

    image, labels = stripes(n_slices=8, size=64)
    image[5:] = (image[5:] * 0.5).astype(np.uint8)  # darker unannotated slices: the whole stack's profile differs
    sparse = np.full(labels.shape, 7, np.uint8)
    sparse[[1, 3]] = labels[[1, 3]]
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1, ignore_value=7, val_fraction=0.0)
    model = train(image, sparse, model_config, train_config).model
    assert [(model.intensity_profile, model.intensity_spread), (model.profile_above_floor, model.spread_above_floor)] == \
        intensity_references(image, model.percentiles)
    nan_image = image.astype(np.float32)
    nan_image[6] = np.nan  # a slice training never reads: the annotated slices give the reference
    model = train(nan_image, sparse, model_config, train_config).model
    assert [(model.intensity_profile, model.intensity_spread), (model.profile_above_floor, model.spread_above_floor)] == \
        intensity_references(nan_image[[1, 3]], model.percentiles)


def test_patches_larger_than_the_slices_shrink_to_cover_them_and_say_so():
    # a 1024-pixel patch of a 128-pixel slice was a mirror mosaic of it, at 64 times the compute
    from napari_unet.config import ModelConfig
    from napari_unet.train import TrainingStarted, fit_patch_size, train_events

    config = ModelConfig(depth=2, base_filters=8)  # size multiple 4
    assert fit_patch_size(1024, (40, 30), config) == 40 and fit_patch_size(1024, (38, 30), config) == 40
    assert fit_patch_size(256, (248, 384), config) == 256  # the OCT sample: its columns are wider than a patch
    assert fit_patch_size(256, (100, 90), ModelConfig(depth=2, base_filters=8, downscale=2)) == 52  # network pixels
    image, labels = stripes(4, 40)  # (a quarter held out for validation: no note of it)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, patch_size=256)
    events = list(train_events(image, labels, model_config, train_config))
    notes = next(e for e in events if isinstance(e, TrainingStarted)).notes
    assert [n.setting for n in notes] == ["patch_size"] and "patches of 40 pixels" in str(notes[0])
    assert events[-1].model.train_config.patch_size == 40  # the model file records the patches that ran
    events = list(train_events(image, labels, model_config, train_config.replace(patch_size=40)))
    assert next(e for e in events if isinstance(e, TrainingStarted)).notes == ()


def _weights_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("leave", ["break", "interrupt"])
def test_leaving_the_events_early_keeps_the_weights_reached_not_the_untrained_network(leave):
    # a notebook user breaks out of the loop (or interrupts it): the model in hand held the untrained network again
    from napari_unet.model import build_unet

    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=4)
    untrained = build_unet(model_config, seed=train_config.seed).get_weights()
    events = train_events(image, labels, model_config, train_config)
    started, ends = next(events), []
    try:
        for event in events:
            if isinstance(event, EpochEnd):
                ends.append(started.model.keras_model.get_weights())
            if isinstance(event, TrainingStep) and event.step == 6:
                if leave == "break":
                    break
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    events.close()
    kept = started.model.keras_model.get_weights()
    assert not _weights_equal(kept, untrained)
    assert len(ends) == 1 and _weights_equal(kept, ends[0])  # the best (only) validated epoch
    assert len(started.model.history) == 1


def test_leaving_before_the_first_epoch_ends_keeps_the_last_steps_weights():
    from napari_unet.model import build_unet

    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=10)
    untrained = build_unet(model_config, seed=train_config.seed).get_weights()
    events = train_events(image, labels, model_config, train_config)
    started = next(events)
    for event in events:
        if isinstance(event, TrainingStep) and event.step == 3:
            live = started.model.keras_model.get_weights()
            break
    events.close()
    kept = started.model.keras_model.get_weights()
    assert _weights_equal(kept, live) and not _weights_equal(kept, untrained)


def test_settings_given_as_a_dict_are_refused_with_the_class_to_use():
    image, labels = stripes()
    with pytest.raises(TypeError, match="train_config must be a TrainConfig"):
        train(image, labels, None, {"epochs": 1})
    with pytest.raises(TypeError, match="model_config must be a ModelConfig"):
        train(image, labels, {"depth": 2}, None)


def test_ctrl_c_during_a_training_step_comes_after_the_step(monkeypatch):
    """A KeyboardInterrupt raised inside TensorFlow's Python code (the first step's graph being traced) left it broken:
    a SystemError instead of the interrupt, or a segmentation fault at exit (1 SIGTERM in 50 in session 51)."""
    import signal

    import keras

    image, labels = stripes()
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=4)
    original = keras.Model.train_on_batch
    steps_finished = []

    def interrupted_inside(self, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the step runs
        result = original(self, *args, **kwargs)
        steps_finished.append(True)
        return result

    monkeypatch.setattr(keras.Model, "train_on_batch", interrupted_inside)
    events = train_events(image, labels, model_config, train_config)
    started = next(events)
    with pytest.raises(KeyboardInterrupt):
        for _event in events:
            pass
    assert steps_finished == [True]  # the step ran to its end, then the interrupt came
    assert not any(np.isnan(w).any() for w in started.model.keras_model.get_weights())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("floatx", ["float64", "float16"])
def test_keras_global_settings_of_a_neighbour_change_nothing(tmp_path, floatx):
    """Another plugin (or ~/.keras/keras.json) setting channels_first stopped every build and load; floatx float64
    failed the first training step, float16 rounded the images of every prediction (0.026 in probabilities)."""
    from _helpers import tiny_model
    from napari_unet.model import import_keras
    from napari_unet.model_io import load_model, save_model

    keras = import_keras()
    image, labels = stripes(n_slices=2, size=64, seed=5)
    path = save_model(tiny_model(), tmp_path / "m.keras")
    expected = predict(load_model(path), image, tta=False, mixed_precision=False).probabilities
    clear_trainer_cache()
    before = keras.config.image_data_format(), keras.config.floatx()
    keras.config.set_image_data_format("channels_first")
    keras.config.set_floatx(floatx)
    try:
        loaded = load_model(path)
        np.testing.assert_allclose(predict(loaded, image, tta=False, mixed_precision=False).probabilities, expected, atol=1e-6)
        finished = train(image, labels, *tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0), init=loaded)
        assert finished.steps == 2 and np.isfinite(finished.history[-1]["loss"]), finished.history
    finally:
        keras.config.set_image_data_format(before[0])
        keras.config.set_floatx(before[1])
        clear_trainer_cache()


def _note_texts(labels, values):
    from napari_unet.labels import to_indices
    from napari_unet.train import _class_notes

    return [str(note) for note in _class_notes(to_indices(labels, values, None), values)]


def _em_mask():
    from napari_unet.synthetic import make_em_stack

    return make_em_stack(2, (128, 128), seed=0)[1]


def _jpeg(mask, quality):
    import io

    from PIL import Image

    planes = []
    for plane in mask:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="JPEG", quality=quality)
        planes.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    return np.stack(planes)


def _resized_twice(mask):
    from skimage.transform import rescale

    return np.rint(rescale(mask.astype(float), (1, 2, 2), order=1, preserve_range=True)).astype(np.uint8)


def _off_by_one_to_three(mask):
    rng = np.random.default_rng(0)
    lossy = mask.copy()
    hit = rng.random(mask.shape) < 0.02
    lossy[hit] = np.where(mask[hit] == 0, rng.integers(1, 4, hit.sum()), 255 - rng.integers(1, 4, hit.sum()))
    return lossy


@pytest.mark.parametrize("export", [_off_by_one_to_three, lambda m: _jpeg(m, 95), lambda m: _jpeg(m, 90), _resized_twice],
                         ids=["off by 1-3", "JPEG 95", "JPEG 90", "resized 2x bilinear"])
def test_fringe_classes_of_a_lossy_or_resized_mask_are_named(export):
    # 2 % of a 0/255 mask off by 1-3 (a JPEG or resampled export) trained an 8-class model without a word
    mask = _em_mask()
    lossy = export(mask)
    values = sorted(np.unique(lossy).tolist())
    assert len(values) > 2
    fringe = [text for text in _note_texts(lossy, values) if "lie only along the borders" in text]
    assert len(fringe) == 1 and "of the classes 0 and 255, with values between theirs" in fringe[0], _note_texts(lossy, values)
    assert set(np.unique(mask)) == {0, 255}  # inputs untouched
    assert _note_texts(mask, [0, 255]) == []


@pytest.mark.parametrize("case", ["oct layers 0-9", "rare foreground 0/1", "rare third class 0/1/2", "instances 1-40",
                                  "organelles 0/1/2/255", "a blob of 254 in 0/255", "scribbles 1/2/200",
                                  "nuclei 0/255 with 1-px boundaries of 128", "nuclei with 2-px boundaries of 128"])
def test_legitimate_small_or_adjacent_classes_are_not_called_lossy(case):
    from napari_unet.labels import to_indices
    from napari_unet.synthetic import make_oct_stack
    from napari_unet.train import _class_notes

    rng = np.random.default_rng(1)
    ignore = None
    if case == "oct layers 0-9":
        _, labels = make_oct_stack(2, (248, 384), seed=0)
    elif case == "rare foreground 0/1":
        labels = (rng.random((2, 128, 128)) < 0.003).astype(np.uint8)
    elif case == "rare third class 0/1/2":
        labels = np.where(rng.random((2, 128, 128)) < 0.5, 0, 1).astype(np.uint8)
        labels[0, :5, :5] = 2
    elif case == "instances 1-40":
        labels = rng.integers(1, 41, (2, 128, 128)).astype(np.uint8)
        labels[:, :, :100] = 1  # one large instance beside small ones
    elif case == "organelles 0/1/2/255":
        labels = _em_mask()
        labels[:, 20:26, 20:26], labels[:, 60:64, 90:95] = 1, 2  # small, but with an interior
    elif case == "a blob of 254 in 0/255":
        labels = _em_mask()
        labels[:, 40:46, 40:46] = 254
    elif case.startswith("nuclei"):  # the classic 3-class nucleus mask: background, boundary, interior
        from skimage.segmentation import find_boundaries

        objects = np.zeros((2, 128, 128), np.int32)
        for n, (y, x) in enumerate([(20, 20), (20, 80), (70, 40), (90, 100)], start=1):
            yy, xx = np.ogrid[:128, :128]
            objects[:, (yy - y) ** 2 + (xx - x) ** 2 < 15**2] = n
        labels = np.where(objects > 0, 255, 0).astype(np.uint8)
        labels[find_boundaries(objects, mode="thick" if "2-px" in case else "inner")] = 128
    else:  # crossing strokes of three classes on unannotated pixels (0)
        labels, ignore = np.zeros((2, 128, 128), np.uint8), 0
        labels[:, 10, 5:120], labels[:, 5:120, 60], labels[:, 100:103, 5:120] = 1, 2, 200
    values = sorted(set(np.unique(labels).tolist()) - {ignore})
    notes = _class_notes(to_indices(labels, values, ignore), values)
    assert not [note for note in notes if note.setting == "labels"], notes


def test_real_oct_layers_are_not_called_lossy():
    from _helpers import SHARED_DATA

    path = SHARED_DATA / "oct" / "circular-scan-layers.tif"
    if not path.exists():
        pytest.skip(f"needs ../shared/data ({path} not found)")
    import tifffile

    labels = tifffile.imread(path)[None]
    values = sorted(np.unique(labels).tolist())
    from napari_unet.labels import to_indices
    from napari_unet.train import _class_notes

    assert not [note for note in _class_notes(to_indices(labels, values, None), values) if note.setting == "labels"]


def test_slices_filled_with_one_value_are_named_and_validation_of_one_class_tunes_no_rule():
    """Slices left blank in a mask (0 in a 0/255 mask; napari's own writer's 0) were learnt, and validated on, as all
    of one class without a word; a validation slice all cell tuned the membrane rule (validation V_rand 0.02) and one
    all membrane kept none with a note saying the run had no fully annotated validation."""
    from napari_unet.train import TrainingFinishing, TrainingStarted, train_events

    image, labels = stripes(6, 64)
    labels[[1, 2, 5]] = 255
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.1)
    events = list(train_events(image, labels, model_config, train_config))
    started = next(e for e in events if isinstance(e, TrainingStarted))
    assert started.val_slices == [5] and [n.setting for n in started.notes] == ["ignore_value"]
    assert str(started.notes[0]) == ("slices 1-2 and 5 of the labels hold only the value 255, on every pixel: each is "
                                     "learnt as all class 255; if the value marks slices that are not annotated, train "
                                     "with it as not annotated")
    finished = events[-1]
    assert finished.model.boundary_value == 0 and finished.model.boundary_rule is None  # validation: all cell
    assert not next(e for e in events if isinstance(e, TrainingFinishing)).tunes_rule
    assert "validation of one class" in finished.untuned_rule_note
    labels[5] = 0  # validation all membrane
    events = list(train_events(image, labels, model_config, train_config))
    notes = next(e for e in events if isinstance(e, TrainingStarted)).notes
    assert [str(n).split(",")[0] for n in notes] == ["slice 5 of the labels holds only the value 0",
                                                     "slices 1-2 of the labels hold only the value 255"]
    assert events[-1].model.boundary_rule is None and "validation of one class" in events[-1].untuned_rule_note


def test_holding_out_a_third_or_more_of_the_annotated_slices_is_named():
    """Two annotated slices held one out (half the annotations) with no word of the trade-off."""
    from napari_unet.train import TrainingStarted, train_events

    image, labels = stripes(2, 64)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.2)
    started = next(e for e in train_events(image, labels, model_config, train_config) if isinstance(e, TrainingStarted))
    assert started.val_slices == [1] and [str(n) for n in started.notes if n.setting == "val_fraction"] == [
        "1 of the 2 annotated slices is held out for validation, not trained on; a validation share of 0 trains on all 2, "
        "without validation (no best epoch, no membrane rule)"]
    image, labels = stripes(4, 64)
    started = next(e for e in train_events(image, labels, model_config, train_config) if isinstance(e, TrainingStarted))
    assert started.val_slices == [3] and started.notes == ()  # a quarter


def test_few_annotated_pixels_and_one_image_annotated_on_one_side_only_are_named():
    """100 painted pixels trained without a word; one image annotated only left of its validation columns trained
    with no validation, and nothing said why."""
    from napari_unet.train import TrainingStarted, train_events

    image, labels = stripes(1, 96)
    sparse = np.full_like(labels, 7)
    sparse[:, 10:20, 10:20] = labels[:, 10:20, 10:20]  # 100 pixels, both classes, left of the validation columns
    sparse[:, 40, 10:20], sparse[:, 41, 10:20] = 0, 255  # (both classes surely)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1, ignore_value=7, val_fraction=0.2)
    started = next(e for e in train_events(image[0], sparse[0], model_config, train_config) if isinstance(e, TrainingStarted))
    texts = [str(n) for n in started.notes]
    assert started.validation == "no validation"
    assert any(t.startswith("only 120 pixels are annotated (") and "of class 0 and" in t and "strokes over more objects" in t
               for t in texts), texts
    assert any(t.startswith("no validation: one annotated image validates on its columns ") and "they hold no annotations" in t
               for t in texts), texts
    right = np.full_like(labels, 7)
    right[:, 30:40, 80:90], right[:, 50, 80:90], right[:, 51, 80:90] = labels[:, 30:40, 80:90], 0, 255  # right of them only
    started = next(e for e in train_events(image[0], right[0], model_config, train_config) if isinstance(e, TrainingStarted))
    texts = [str(n) for n in started.notes]
    assert started.validation == "no validation"
    assert any(t.startswith("no validation: one annotated image validates on its columns ") and
               "and the columns before" in t and "hold no annotations" in t for t in texts), texts
    # a dense mask of a tiny image: few pixels, but no strokes to add
    tiny_image, tiny_labels = stripes(1, 24)
    started = next(e for e in train_events(tiny_image[0], tiny_labels[0], model_config, train_config.replace(ignore_value=None))
                   if isinstance(e, TrainingStarted))
    texts = [str(n) for n in started.notes]
    assert any(t.startswith("only 576 pixels are annotated (") and "more or larger images teach it more" in t for t in texts), texts
    assert not any("strokes" in t for t in texts), texts
    # dense labels: neither note
    started = next(e for e in train_events(image[0], labels[0], model_config, train_config) if isinstance(e, TrainingStarted))
    assert started.val_column is not None and not [n for n in started.notes if "only" in str(n) or "no validation" in str(n)]


def test_two_trainers_are_kept_unless_their_variables_outgrow_the_budget(monkeypatch):
    # one was kept: a Train (XLA) and the Retrains after it (no XLA) built theirs in turn, and each replaced one left
    # 15-66 MB of traced steps in TensorFlow's registries
    import napari_unet.data as data
    import napari_unet.train as train_module

    clear_trainer_cache()
    built = []
    new_trainer = train_module._new_trainer
    monkeypatch.setattr(train_module, "_new_trainer", lambda *a: built.append(a[0]) or new_trainer(*a))
    monkeypatch.setattr(train_module, "KEPT_TRAINERS", 2)
    image, labels = stripes(n_slices=2, size=64)
    small, _ = tiny_configs()
    runs = [replace(small, base_filters=4), replace(small, base_filters=6)] * 2
    _, train_config = tiny_configs(epochs=1, steps_per_epoch=1, val_fraction=0.0, jit_compile=False)
    for model_config in runs:
        train(image, labels, model_config, train_config)
    assert len(built) == 2 and len(train_module._idle_trainers) == 2
    monkeypatch.setattr(train_module, "KEPT_TRAINER_BYTES", 1)  # as a classic preset's 0.37 GB against 256 MB
    for model_config in runs:
        train(image, labels, model_config, train_config)
    assert len(built) == 5 and len(train_module._idle_trainers) == 1  # the first reuses its kept one; then only the latest stays
    assert len(data._BORDER_WEIGHTS._items) > 0
    clear_trainer_cache()
    assert not train_module._idle_trainers and len(data._BORDER_WEIGHTS._items) == 0 and data._BORDER_WEIGHTS.nbytes == 0
