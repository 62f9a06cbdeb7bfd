"""Training failure modes (session 61's hunt): a diverging run, classes the training part never sees, tiny slices and budgets."""

import numpy as np
import pytest
import tifffile

from _helpers import finite_weights, stripes, tiny_configs, train_poisoned
from napari_unet.cli import main
from napari_unet.model_io import load_model
from napari_unet.train import EpochEnd, TrainingFinished, TrainingStarted, TrainingStep, train_events


@pytest.mark.slow
def test_a_run_that_diverges_keeps_its_best_epoch_from_before_and_says_so():
    # NaN weights after step 4: step 5's loss is NaN. The run ended with a FloatingPointError, its epoch lost.
    events = train_poisoned(at_step=4)
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged"
    assert final.divergence == "the loss was nan at step 5" and final.steps == 4
    assert final.best_epoch == 1 and final.kept == "best epoch 1" and len(final.history) == 1
    assert finite_weights(final.model)
    probabilities = final.model.keras_model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0)
    assert np.isfinite(probabilities).all()


@pytest.mark.slow
def test_weights_that_become_nan_on_an_epochs_last_step_are_never_averaged_into_the_model():
    # The last step's update made the weights NaN, its loss (computed before it) finite: the NaN epoch was averaged
    # into the model handed out (and saved by train, exit 0: a file load_model refuses).
    events = train_poisoned(at_step=6, epochs=2, average_weights_from=0.3)
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged", final.reason
    assert final.divergence == "the weights became NaN or infinite at step 6"
    assert final.best_epoch == 1 and final.averaged_epochs == 0 and finite_weights(final.model)
    assert not any(isinstance(e, EpochEnd) and e.epoch == 2 for e in events)  # no NaN validation of it


@pytest.mark.slow
def test_a_run_that_diverges_before_any_epoch_is_kept_is_an_error():
    from napari_unet.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="the loss was nan at step 2, before any epoch's weights were kept; lower the learning rate") as raised:
        train_poisoned(at_step=1)
    # its type and field tell it (the widget and the command line name the setting after the message), not the text
    assert isinstance(raised.value, FloatingPointError) and raised.value.divergence == "the loss was nan at step 2"


@pytest.mark.slow
def test_finite_weights_whose_network_gives_nan_are_never_averaged_into_the_model():
    # Huge finite weights overflow the activations: NaN probabilities, a NaN validation loss. That epoch was averaged
    # into the model, and choosing the membrane rule on it failed ("its weights are damaged"): the run was lost.
    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(epochs=2, steps_per_epoch=3, average_weights_from=0.3)
    events, network = [], None
    for event in train_events(image, labels, model_config, train_config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == 6:
            network.set_weights([w * np.float32(1e30) if np.issubdtype(w.dtype, np.floating) else w for w in network.get_weights()])
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged", final.reason
    assert final.divergence == "the network gave NaN or Inf probabilities in validation after step 6"
    assert final.best_epoch == 1 and finite_weights(final.model)


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True])
def test_train_writes_the_weights_from_before_a_divergence_and_exits_with_status_1(tmp_path, capsys, monkeypatch, existing):
    import napari_unet.train as train_module

    image, labels = stripes(n_slices=4, size=64)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    prefetch = train_module.prefetch

    def nan_images_from_step_7(make_batch, n_batches, *args, **kwargs):  # the loss of step 7 on is NaN
        for k, (x, y) in enumerate(prefetch(make_batch, n_batches, *args, **kwargs)):
            yield (np.full_like(x, np.nan) if k >= 6 else x), y

    monkeypatch.setattr(train_module, "prefetch", nan_images_from_step_7)
    output, model = tmp_path / "m.keras", tmp_path / "m.diverged.keras"  # never m.keras (Make's finished target)
    if existing:  # a failed run (status 1) does not replace the model it was to replace: it writes beside it
        output.write_bytes(b"the user's earlier model")
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(output), "--epochs", "3",
                 "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2", "--depth", "2"])
    err = capsys.readouterr().err
    if existing:
        assert output.read_bytes() == b"the user's earlier model"
        # a second diverged run replaces neither file (nor an --init model named so)
        code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(output), "--epochs", "3",
                     "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2", "--depth", "2"])
        assert code == 1 and f"{tmp_path / 'm.diverged-2.keras'} holds the best epoch 1" in capsys.readouterr().err
        assert output.read_bytes() == b"the user's earlier model" and finite_weights(load_model(model))
    assert code == 1 and "Traceback" not in err, err
    assert existing or not output.exists()
    assert "training diverged after 1 epoch (6 steps); kept the best epoch 1" in err, err
    assert (f"error: training diverged (the loss was nan at step 7) and stopped; {model} holds the best epoch 1 from "
            "before it; lower the learning rate (--learning-rate, now 0.001)") in err, err
    assert finite_weights(load_model(model))  # (load_model refuses NaN weights)


def _sparse_stack():
    """Stripes on 5 slices, annotated sparsely (7 = not annotated): cells on every slice, membranes on the last only."""
    image, labels = stripes(n_slices=5, size=64)
    sparse = np.full(labels.shape, 7, np.uint8)
    sparse[:, 40:50, 40:50] = np.where(labels[:, 40:50, 40:50] == 255, 255, 7)
    sparse[4][labels[4] == 0] = 0
    return image, sparse


def _started(image, labels, **overrides) -> TrainingStarted:
    model_config, train_config = tiny_configs(**{"ignore_value": 7, **overrides})
    events = train_events(image, labels, model_config, train_config)
    try:
        return next(event for event in events if isinstance(event, TrainingStarted))
    finally:
        events.close()


@pytest.mark.slow
def test_a_class_annotated_only_in_the_validation_slices_is_named():
    image, labels = _sparse_stack()
    started = _started(image, labels)
    assert started.val_slices == [4]
    notes = [note for note in started.notes if note.setting == "val_fraction"]
    assert [str(note) for note in notes] == [
        "class 0 is annotated only in the validation slice 4, which is held out, not trained on: the network never "
        "learns it; annotate it on other slices too, or train on every slice with a validation share of 0"]
    # trained on every slice: no such note
    assert not [note for note in _started(image, labels, val_fraction=0.0).notes if note.setting == "val_fraction"]


@pytest.mark.slow
def test_a_class_annotated_only_in_the_held_out_columns_of_one_image_is_named(tmp_path, capsys):
    image, labels = stripes(n_slices=1, size=128)
    labels = labels[0].copy()
    labels[:, :100] = np.where(labels[:, :100] == 0, 7, labels[:, :100])  # membranes only in the last columns
    tifffile.imwrite(tmp_path / "image.tif", image[0], photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(tmp_path / "m.keras"),
                 "--ignore-value", "7", "--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "64", "--batch-size", "1",
                 "--depth", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("note: class 0 is annotated only in the image's validation columns (100 and up), which are held out, not "
            "trained on: the network never learns it; annotate it in the columns before 100 too, or train on the whole "
            "image with a validation share of 0 (--val-fraction to choose)") in err, err


def test_slices_smaller_than_the_smallest_patch_get_the_smallest_patch():
    from napari_unet.config import MIN_PATCH_SIZE, ModelConfig
    from napari_unet.train import fit_patch_size

    # 5 x 5 slices and a depth-2 network: patches of 8, refused with "--patch-size must be 16..4096, got 8"
    assert fit_patch_size(64, (5, 5), ModelConfig(depth=2)) == MIN_PATCH_SIZE == 16
    assert fit_patch_size(256, (5, 300), ModelConfig(depth=1)) == 256
    assert fit_patch_size(256, (5, 5), ModelConfig(depth=6)) == 64  # (the network's multiple)
    assert fit_patch_size(64, (40, 40), ModelConfig(depth=2)) == 40


@pytest.mark.slow
def test_train_takes_an_image_of_5_x_5_pixels_with_a_shallow_network(tmp_path, capsys):
    image, labels = stripes(n_slices=1, size=5)
    labels[0, 0, :] = 0
    tifffile.imwrite(tmp_path / "image.tif", image[0], photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels[0], photometric="minisblack")
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(tmp_path / "m.keras"),
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--depth", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "patches of 16 pixels" in err and (tmp_path / "m.keras").exists(), err


@pytest.mark.slow
def test_a_budget_that_ends_before_the_first_step_says_only_that_no_model_is_written(tmp_path, capsys):
    image, labels = stripes(n_slices=2, size=32)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(tmp_path / "m.keras"),
                 "--max-minutes", "1e-300", "--depth", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "before its first step; no model written" in err and not (tmp_path / "m.keras").exists(), err
    assert "kept the last weights" not in err, err  # (said before "no model written")



def test_train_init_without_validation_keeps_the_start_models_membrane_rule_and_writes_the_model(tmp_path, capsys):
    # the rule line formatted the validation V_rand of a rule that was not tuned again (None): a TypeError, no model
    from _helpers import tiny_model

    from napari_unet.model_io import save_model

    start = tiny_model()
    assert start.boundary_rule is not None
    init = save_model(start, tmp_path / "init.keras")
    image, labels = stripes(n_slices=4, size=64)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    output = tmp_path / "m.keras"
    code = main(["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(output), "--init", str(init),
                 "--val-fraction", "0", "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    assert "the --init model's, not tuned again: no fully annotated validation slices with both classes; the model file holds it" in err, err
    assert load_model(output).boundary_rule == start.boundary_rule
