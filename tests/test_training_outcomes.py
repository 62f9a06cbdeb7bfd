"""Training outcomes (session 62): divergences that keep weights end as "diverged" in every front end; running out
of memory after the model file is written says so."""

import numpy as np
import pytest
import tifffile

from _helpers import stripes, tiny_configs
from napari_unet.cli import main
from napari_unet.model_io import load_model
from napari_unet.train import TrainingFinished, TrainingStarted, TrainingStep, train_events


def _finite(model) -> bool:
    return all(np.isfinite(w).all() for w in model.keras_model.get_weights())


def _tiff_pair(folder, image, labels):
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, photometric="minisblack")
    return str(folder / "image.tif"), str(folder / "labels.tif")


TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2", "--depth", "2"]


# ---- divergences -------------------------------------------------------------------------------------------------

def _poison(network) -> None:
    network.set_weights([np.full_like(w, np.nan) if np.issubdtype(w.dtype, np.floating) else w for w in network.get_weights()])


@pytest.mark.slow
def test_a_divergence_in_an_epoch_without_validation_keeps_the_finite_epochs_before_it():
    # val_every 2: epoch 1 is not validated; a NaN loss in epoch 2 raised FloatingPointError, epoch 1's weights lost
    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(epochs=3, steps_per_epoch=3, val_every=2)
    events, network = [], None
    for event in train_events(image, labels, model_config, train_config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == 4:
            _poison(network)
    final = events[-1]
    assert isinstance(final, TrainingFinished) and final.reason == "diverged"
    assert final.divergence == "the loss was nan at step 5" and final.steps == 4
    assert final.best_epoch == 1 and final.kept == "best epoch 1" and final.history[0]["val_loss"] is None
    assert _finite(final.model)


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
    model = tmp_path / "demo-model.keras"
    if existing:  # an earlier demo's model is not replaced by a failed run's
        model.write_bytes(b"an earlier model")
        model = tmp_path / "demo-model.diverged.keras"
    code = main(["demo", "--output-dir", str(tmp_path), "--headless"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert (f"napari-unet: error: training diverged (the loss was nan at step 26) and stopped; {model} holds the best epoch 1 "
            "from before it; the demo wrote nothing else") in err, err
    assert _finite(load_model(model)) and not (tmp_path / "demo-prediction.tif").exists()
    if existing:
        assert (tmp_path / "demo-model.keras").read_bytes() == b"an earlier model"


@pytest.mark.slow
def test_demo_diverged_before_any_epoch_says_nothing_was_written(tmp_path, capsys, monkeypatch):
    from napari_unet import cli
    from napari_unet.train import DIVERGED_HINT

    def diverged(*args, **kwargs):
        raise FloatingPointError(f"training diverged: the loss was nan at step 3, before any epoch's weights were kept; {DIVERGED_HINT}")

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
