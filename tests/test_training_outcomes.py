"""Training outcomes (session 62): a model of one class everywhere is flagged; divergences that keep weights end as
"diverged" in every front end; running out of memory after the model file is written says so."""

import threading
import time

import numpy as np
import pytest
import tifffile

from _helpers import finite_weights, stripes, tiny_configs, train_poisoned
from napari_unet.cli import main
from napari_unet.model_io import load_model
from napari_unet.train import TrainingFinished, TrainingStarted, TrainingStep, train_events



def _predict_only(network, k: int) -> None:
    """Make ``network`` give class index ``k`` everywhere (its last convolution's kernel 0, its bias favouring ``k``),
    as a learning rate of 0.99 left a model of cells everywhere."""
    layer = [layer for layer in network.layers if layer.get_weights()][-1]
    kernel, bias = layer.get_weights()
    favoured = np.full_like(bias, -10.0)
    favoured[k] = 10.0
    layer.set_weights([np.zeros_like(kernel), favoured])


def _one_class_events(events, at_step: int, k: int = 1):
    """``events`` of training, the network made to predict class index ``k`` after step ``at_step`` (its last)."""
    network = None
    for event in events:
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == at_step:
            _predict_only(network, k)
        yield event


def _tiff_pair(folder, image, labels):
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, photometric="minisblack")
    return str(folder / "image.tif"), str(folder / "labels.tif")


TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2", "--depth", "2"]


# ---- a model of one class everywhere -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("val_fraction, where", [(0.25, "the validation slice 3"), (0.0, "the training slices 0-3")])
def test_a_model_that_predicts_one_class_everywhere_is_flagged(val_fraction, where):
    # it completed with its validation scores (Dice 0 for membranes) and no other word
    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=val_fraction)
    final = list(_one_class_events(train_events(image, labels, model_config, train_config), at_step=2))[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "completed"
    assert final.one_class == 255
    assert final.one_class_note == (f"the model predicts class 255 on every pixel of {where}, where classes 0 and 255 are "
                                    "annotated: it has not learnt to tell them apart, whatever its scores; try a lower "
                                    "learning rate, more annotations of every class, or longer training")


@pytest.mark.slow
def test_one_class_annotated_where_the_model_is_checked_is_not_flagged():
    # the validation slice is all cell: a model of cells everywhere may be right there
    image, labels = stripes(n_slices=4, size=64)
    labels[3] = 255
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2)
    final = list(_one_class_events(train_events(image, labels, model_config, train_config), at_step=2))[-1]
    assert final.reason == "completed" and final.one_class is None and final.one_class_note == ""
    # nor is a model that learnt (tiny_model's run)
    image, labels = stripes()
    final = list(train_events(image, labels, *tiny_configs()))[-1]
    assert final.reason == "completed" and final.one_class is None and final.one_class_note == ""


def _only_class(probabilities, truth, boundary_index, rule):
    """The one-class verdict of (n, Y, X, 2) ``probabilities`` labelled as the finished-model check labels them."""
    from napari_unet.train import _check_labels, _plane_labels, useless_verdict

    labels = (_plane_labels(plane, boundary_index, rule) for plane in probabilities)
    return useless_verdict(*_check_labels(labels, truth, 2, early_stop=False), [0, 1], "the test slice")[0]


def test_the_one_class_check_counts_annotated_classes_and_the_membrane_rule():
    cells = np.zeros((1, 4, 4, 2), np.float32)
    cells[..., 1] = 0.9
    cells[..., 0] = 0.1
    truth = np.array([[[0, 1, -1, -1]] * 4], np.int8)
    assert _only_class(cells, truth, None, None) == 1
    assert _only_class(cells, np.where(truth == 0, -1, truth), None, None) is None  # one class annotated there
    two = cells.copy()
    two[0, 0, 0] = [0.8, 0.2]
    assert _only_class(two, truth, None, None) is None
    # labelled as predict labels them: membrane (class 0) everywhere by the most probable class, cells by the rule
    membranes = cells[..., ::-1] * np.float32(0.65 / 0.9)
    membranes[..., 1] = 1 - membranes[..., 0]
    assert _only_class(membranes, truth, None, None) == 0
    assert _only_class(membranes, truth, 0, {"threshold": 0.7}) == 1
    membranes[0, 0, 0] = [0.9, 0.1]
    assert _only_class(membranes, truth, 0, {"threshold": 0.7}) is None


@pytest.mark.slow
def test_train_warns_of_a_model_of_one_class_and_still_writes_it(tmp_path, capsys, monkeypatch):
    import napari_unet.train as train_module

    events = train_module.train_events
    monkeypatch.setattr(train_module, "train_events", lambda *a, **k: _one_class_events(events(*a, **k), at_step=2))
    image, labels = _tiff_pair(tmp_path, *stripes(n_slices=4, size=64))
    code = main(["train", image, labels, "-o", str(tmp_path / "m.keras"), *TINY])
    err = capsys.readouterr().err
    assert code == 0 and load_model(tmp_path / "m.keras") is not None, err  # a valid model, if a useless one: status 0
    assert ("warning: the model predicts class 255 on every pixel of the validation slice 3, where classes 0 and 255 are "
            "annotated: it has not learnt to tell them apart, whatever its scores; try a lower learning rate, more "
            "annotations of every class, or longer training (--learning-rate, now 0.001; --epochs or --max-minutes)") in err, err


@pytest.mark.gui
def test_the_training_widget_warns_of_a_model_of_one_class(widgets, notifications):
    from _helpers import tiny_model

    from napari_unet._widgets.training import _Run

    training = widgets.training
    note = "the model predicts class 255 on every pixel of the validation slice 3, where classes 0 and 255 are annotated"
    for kind, settings in (("training", "the learning rate, epochs x steps and time budget"),
                           ("retraining", "the Retrain learning rate and steps")):
        run = _Run(kind=kind, worker=None, stop=threading.Event(), budget=None, names=None, colormap=None,
                   started=time.perf_counter(), steps_per_epoch=2)
        event = TrainingFinished(model=tiny_model(), reason="completed", best_epoch=1, steps=2, one_class=255, one_class_note=note)
        training._finished_model(run, event)
        status = training.progress.status.text()
        assert f"Warning: {note} ({settings} in the settings)." in status, status
        assert widgets.session.model is event.model  # kept (Previous model undoes it)
    assert sum(severity == "warning" and note in message for severity, message in notifications) == 2


# ---- divergences -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_divergence_in_an_epoch_without_validation_keeps_the_finite_epochs_before_it():
    # val_every 2: epoch 1 is not validated; a NaN loss in epoch 2 raised FloatingPointError, epoch 1's weights lost
    final = train_poisoned(at_step=4, val_every=2)[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged"
    assert final.divergence == "the loss was nan at step 5" and final.steps == 4
    assert final.best_epoch == 1 and final.kept == "best epoch 1 by training loss" and final.history[0]["val_loss"] is None
    assert finite_weights(final.model)


def _fake_final(reason="diverged"):
    from _helpers import tiny_model

    history = [{"epoch": 1, "step": 20, "run": 0, "loss": 0.5, "val_loss": 0.4, "elapsed": 1.0}]
    return TrainingFinished(model=tiny_model(), reason=reason, best_epoch=1, history=history, steps=25,
                            divergence="the loss was nan at step 26")


@pytest.mark.slow
@pytest.mark.parametrize("existing", [False, True])
def test_demo_exits_with_status_1_after_a_diverged_run_as_train_does(tmp_path, capsys, monkeypatch, existing):
    from napari_unet import cli

    monkeypatch.setattr(cli, "run_training", lambda *a, **k: (None, _fake_final()))
    model = tmp_path / "demo-model.diverged.keras"  # never demo-model.keras (a finished target to Make)
    if existing:  # an earlier demo's model is not replaced by a failed run's
        (tmp_path / "demo-model.keras").write_bytes(b"an earlier model")
    code = main(["demo", "--output-dir", str(tmp_path), "--headless"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert (f"napari-unet: error: training diverged (the loss was nan at step 26) and stopped; {model} holds the best epoch 1 "
            "from before it; the demo wrote nothing else") in err, err
    assert finite_weights(load_model(model)) and not (tmp_path / "demo-prediction.tif").exists()
    if existing:
        assert (tmp_path / "demo-model.keras").read_bytes() == b"an earlier model"
    else:
        assert not (tmp_path / "demo-model.keras").exists()


@pytest.mark.slow
def test_demo_diverged_before_any_epoch_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    from napari_unet import cli
    from napari_unet.train import TrainingDiverged

    def diverged(*args, **kwargs):
        raise TrainingDiverged("the loss was nan at step 3")

    monkeypatch.setattr(cli, "run_training", diverged)
    code = main(["demo", "--output-dir", str(tmp_path), "--headless"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().endswith("lower the learning rate (the demo trains the default preset; another --seed?); "
                                              "nothing written"), err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_fine_tuning_that_diverges_before_any_epoch_says_no_model_was_written_and_init_is_unchanged(tmp_path, capsys, monkeypatch):
    # it said only "training diverged: ..., before any epoch's weights were kept; lower the learning rate"
    from _helpers import tiny_model

    import napari_unet.train as train_module
    from napari_unet.model_io import save_model

    init = save_model(tiny_model(), tmp_path / "init.keras")
    before = init.read_bytes()
    prefetch = train_module.prefetch

    def nan_images(make_batch, n_batches, *args, **kwargs):
        for x, y in prefetch(make_batch, n_batches, *args, **kwargs):
            yield np.full_like(x, np.nan), y

    monkeypatch.setattr(train_module, "prefetch", nan_images)
    image, labels = _tiff_pair(tmp_path, *stripes(n_slices=4, size=64))
    code = main(["train", image, labels, "-o", str(tmp_path / "m.keras"), "--init", str(init), "--epochs", "1",
                 "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert ("napari-unet: error: training diverged: the loss was nan at step 1, before any epoch's weights were kept; lower "
            f"the learning rate (--learning-rate, now 0.001); no model written; the --init model {init} is unchanged") in err, err
    assert not (tmp_path / "m.keras").exists() and init.read_bytes() == before


# ---- out of memory after the model file is written ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("error", ["MemoryError", "ResourceExhaustedError"])
def test_running_out_of_memory_after_the_model_was_written_says_it_was(tmp_path, capsys, monkeypatch, error):
    # scoring the validation (predict with test-time augmentation) ran out: "train on a crop or on fewer slices"
    import napari_unet.predict as predict_module

    def out_of_memory(*args, **kwargs):
        if error == "MemoryError":
            raise MemoryError("Unable to allocate 1.25 GiB for an array with shape (167772160,) and data type int64")
        import tensorflow as tf

        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[8,64,512,512]")

    monkeypatch.setattr(predict_module, "predict", out_of_memory)  # the command's scoring (training's own is train's)
    image, labels = _tiff_pair(tmp_path, *stripes(n_slices=4, size=64))
    output = tmp_path / "m.keras"
    code = main(["train", image, labels, "-o", str(output), *TINY])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err and load_model(output) is not None, err
    assert last.startswith("napari-unet: error: not enough memory"), last
    assert last.endswith(f"; {output} was written before it ran out: the model is complete, only scoring its validation "
                         "needed more (napari-unet predict, with a lower --tile-size or --no-tta, and napari-unet evaluate "
                         "score it)"), last
    assert "train on a crop" not in last and "--patch-size" not in last, last
