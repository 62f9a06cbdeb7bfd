"""Read errors in the napari widgets (session 63): a damaged page or chunk of a lazily read file (a zarr store opened
by the napari-unet reader, a large TIFF read page by page, a dask array layer) found while predicting or while Train /
Retrain reads a layer names the file, its role and slice, and says what happened to the user's layers and model: one
notification and the status line, never an unexpected error with a traceback.

Damaged files are made as in tests/test_training_reads.py: a zarr store of one chunk a slice with one chunk file
overwritten with garbage; a zlib-compressed TIFF whose one page's stream is garbled."""

import logging

import numpy as np
import pytest

from _helpers import damaged_tiff, damaged_zarr, garble_zarr_chunk, stripes, tiny_model
from conftest import run_and_wait

pytestmark = pytest.mark.gui


def _opened(viewer, path):
    """``path`` opened as napari's open dialog does with the napari-unet reader: one lazy image layer."""
    from napari_unet._reader import read_layers

    [(data, kwargs, kind)] = read_layers(str(path))
    assert kind == "image" and hasattr(data, "dask"), (kind, type(data))  # read lazily, as large files are
    return viewer.add_image(data, **kwargs)


def _snapshot(viewer, skip):
    return [(x.name, type(x).__name__, None if x is skip else np.array(x.data, copy=True)) for x in viewer.layers]


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_predicting_a_lazy_image_with_a_damaged_chunk_names_the_image_and_slice_and_changes_no_layer(
        widgets, notifications, qtbot, tmp_path, monkeypatch, caplog, kind):
    # old: "Prediction failed: ZarrReadError: /.../img.zarr: damaged or unreadable chunk (...)" (TiffReadError for the
    # TIFF), a traceback in the log, no slice and nothing said of the layers
    from napari_unet import _reader

    viewer, inference = widgets.viewer, widgets.inference
    image, _ = stripes()  # 4 x 96 x 96: the intensity note reads every slice before the network does
    if kind == "zarr":  # slice 7 of 10: one the intensity note does not read (of 8 spread slices), the network does
        image, _ = stripes(n_slices=10)
        path, z, words = damaged_zarr(tmp_path / "img.zarr", image, 7), 7, "damaged or unreadable chunk ("
    else:
        monkeypatch.setattr(_reader, "LAZY_IMAGE_BYTES", 1)  # read page by page, as a TIFF of 4 GiB or more is
        path, z, words = damaged_tiff(tmp_path / "img.tif", image, 3), 3, "corrupt"
    layer = _opened(viewer, path)
    widgets.session.model = tiny_model()
    inference.image.setCurrentText(layer.name)
    assert inference.image.layer() is layer
    before = _snapshot(viewer, layer)
    caplog.set_level(logging.ERROR, logger="napari_unet")
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    status = inference.progress.status.text()
    assert status.startswith(f"Prediction failed: image {layer.name!r}, slice {z}: {path}: {words}"), status
    assert status.endswith("; no layer was changed"), status
    assert [text for severity, text in notifications if severity == "error"] == [
        f"napari-unet: prediction failed: {status.removeprefix('Prediction failed: ')}"], notifications
    assert not [r for r in caplog.records if r.name == "napari_unet"], "an unexpected error (its traceback logged)"
    after = _snapshot(viewer, layer)
    assert [x[:2] for x in after] == [x[:2] for x in before]  # no prediction layer was added
    assert all(b[2] is None or np.array_equal(a[2], b[2]) for a, b in zip(after, before)), "a layer was modified"


def test_the_prediction_job_of_one_slice_names_it_when_its_intensities_are_read(tmp_path, monkeypatch):
    # one slice (the inference widget's "current slice"): the job's first read is that 2-D slice (its intensity note)
    from napari_unet._widgets import jobs
    from napari_unet.zarr_io import read_zarr

    image, _ = stripes()
    lazy = read_zarr(damaged_zarr(tmp_path / "img.zarr", image, 1)).data
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)  # (this thread runs the tests)
    events = list(jobs.predict_job(tiny_model(), lazy, False, False, z=1))
    failed = events[-1]
    assert isinstance(failed, jobs.Failed) and failed.read_error, events
    assert failed.message.startswith(f"image, slice 1: {tmp_path / 'img.zarr'}: damaged or unreadable chunk ("), failed.message
    assert not any(isinstance(e, jobs.PredictionResult) for e in events)


@pytest.mark.parametrize("retrain", [False, True])
def test_train_and_retrain_on_a_lazy_labels_layer_with_a_damaged_chunk_say_so_and_start_nothing(
        widgets, notifications, tmp_path, retrain):
    # old: the reader's ZarrReadError escaped TrainingWidget.start (a Qt slot: an uncaught exception with a traceback),
    # the status still said what it said before, the buttons as if nothing happened
    from napari_unet.zarr_io import read_zarr

    viewer, training, session = widgets.viewer, widgets.training, widgets.session
    image, labels = stripes()
    image_layer = viewer.add_image(image, name="img")
    display = (labels > 0).astype(np.uint8) + 1  # display 1 = class 0, 2 = class 255
    lazy = read_zarr(damaged_zarr(tmp_path / "lab.zarr", display, 2)).data  # a dask array layer, as a script adds it
    viewer.add_labels(lazy, name="lab", metadata={"class_values": [0, 255]})
    training.image.setCurrentText("img")
    training.labels.refresh()
    training.labels.setCurrentText("lab")
    assert training.labels.layer().name == "lab"
    session.set_model(tiny_model(), "a tiny model")
    model = session.model
    if retrain:  # corrections painted on the image's prediction layer
        prediction = viewer.add_labels(np.full(image.shape, 2, np.uint8), name="img prediction", metadata={"class_values": [0, 255]})
        session.track(prediction, image_layer)
        prediction.brush_size = 6
        prediction.paint((1, 20, 20), 1)
    kind = "retraining" if retrain else "training"
    assert training.start(retrain=retrain) is False
    status = training.progress.status.text()
    assert status.startswith(f"Not started: labels layer 'lab', slice 2: {tmp_path / 'lab.zarr'}: damaged or unreadable chunk ("), status
    assert status.endswith("; the current model is unchanged"), status
    assert ("error", f"napari-unet: {kind} not started: {status.removeprefix('Not started: ')}") in notifications, notifications
    assert training._run is None and session.model is model and not session.busy
    assert training.train_button.isEnabled() and training.retrain_button.isEnabled()


def test_predict_names_a_damaged_slice_that_only_the_network_reads(tmp_path, capsys):
    # the command line's predict (which the widget's message follows): old "image img.zarr: damaged or unreadable
    # chunk (...)" without the slice when the intensity note did not read it
    from napari_unet import cli
    from napari_unet.model_io import save_model

    image, _ = stripes(n_slices=10)
    path = damaged_zarr(tmp_path / "img.zarr", image, 7)
    save_model(tiny_model(), tmp_path / "m.keras")
    code = cli.main(["predict", str(tmp_path / "m.keras"), str(path), "-o", str(tmp_path / "p.tif"), "--no-tta"])
    assert code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("napari-unet: error:")]
    assert line.startswith("napari-unet: error: image img.zarr, slice 7: damaged or unreadable chunk ("), line
    assert not (tmp_path / "p.tif").exists()


@pytest.mark.parametrize("retrain", [False, True], ids=["train", "retrain"])
@pytest.mark.parametrize("reader", ["da.from_zarr v2", "da.from_zarr v3", "napari's zarr reader"])
def test_train_and_retrain_on_a_damaged_labels_layer_of_another_reader_say_so_from_the_button(
        widgets, notifications, qtbot, tmp_path, caplog, reader, retrain):
    # old: the RuntimeError of the zstd codec ("Zstd decompression error: invalid input data") escaped the button's Qt
    # slot (TrainingWidget.start caught only napari-unet's own readers' errors); nothing was said in the widget
    import dask.array as da

    viewer, training, session = widgets.viewer, widgets.training, widgets.session
    image, labels = stripes()
    image_layer = viewer.add_image(image, name="img")
    display = (labels > 0).astype(np.uint8) + 1
    path = damaged_zarr(tmp_path / "lab.zarr", display, 2, zarr_format=2 if reader.endswith("v2") else 3)
    if reader.startswith("da.from_zarr"):
        viewer.add_labels(da.from_zarr(str(path)), name="lab", metadata={"class_values": [0, 255]})
    else:
        [layer] = viewer.open(str(path), plugin="napari", layer_type="labels", name="lab")
        assert hasattr(layer.data, "dask"), type(layer.data)
    training.image.setCurrentText("img")
    training.labels.refresh()
    training.labels.setCurrentText("lab")
    assert training.labels.layer().name == "lab"
    session.set_model(tiny_model(), "a tiny model")
    model = session.model
    if retrain:
        prediction = viewer.add_labels(np.full(image.shape, 2, np.uint8), name="img prediction", metadata={"class_values": [0, 255]})
        session.track(prediction, image_layer)
        prediction.brush_size = 6
        prediction.paint((1, 20, 20), 1)
    caplog.set_level(logging.ERROR, logger="napari_unet")
    (training.retrain_button if retrain else training.train_button).click()  # an exception out of the slot fails the test
    status = training.progress.status.text()
    assert status.startswith("Not started: labels layer 'lab', slice 2: unreadable data (RuntimeError: Zstd decompression "
                             "error: invalid input data); its file may be damaged"), status
    assert status.endswith("; the current model is unchanged"), status
    kind = "retraining" if retrain else "training"
    assert ("error", f"napari-unet: {kind} not started: {status.removeprefix('Not started: ')}") in notifications, notifications
    assert training._run is None and session.model is model and not session.busy
    assert training.train_button.isEnabled() and training.retrain_button.isEnabled()
    assert not caplog.records


def test_training_a_damaged_lazy_image_of_another_reader_names_the_image_and_slice(tmp_path, monkeypatch):
    # the image is read by the training job (its worker): old "RuntimeError: Zstd decompression error: ..." with a
    # traceback in the log (an unexpected error), no slice
    import dask.array as da

    from _helpers import tiny_configs
    from napari_unet._widgets import jobs

    image, labels = stripes()
    lazy = da.from_zarr(str(damaged_zarr(tmp_path / "img.zarr", image, 1, zarr_format=3)))
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2)
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)
    events = list(jobs.train_job(lazy, labels, model_config, train_config, names={"image": "image 'img'"}))
    failed = events[-1]
    assert isinstance(failed, jobs.Failed) and failed.read_error, events
    assert failed.message.startswith("image 'img', slice 1: unreadable data (RuntimeError: Zstd decompression error"), failed.message


def _garble_tiff_page(path, z):
    """Garble page ``z``'s compressed stream of the zlib TIFF ``path`` in place (as :func:`damaged_tiff` does)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[z].dataoffsets[0]
    with open(path, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\xff" * 32)


@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_a_read_error_in_the_check_of_a_finished_retrain_is_said_and_the_new_model_kept(
        widgets, notifications, qtbot, tmp_path, monkeypatch, caplog, kind):
    # old: the check's read error was only logged with a traceback ("scoring the corrections on the retrained model
    # failed"); the status said the model was retrained, never that the check of the corrections was lost.
    # Train/Retrain read a labels layer whole before the run, so only the lazily read image is read by the check: its
    # corrected slice, read by the training, is made unreadable between the training and the check (a file changed
    # or dropped by a network share)
    import tifffile

    import napari_unet.retrain
    from conftest import tiny_settings
    from napari_unet import _reader
    from napari_unet.zarr_io import write_zarr

    viewer, training, session = widgets.viewer, widgets.training, widgets.session
    image, labels = stripes()
    if kind == "zarr":
        path = tmp_path / "img.zarr"
        write_zarr(path, image, chunks=(1, 96, 96))

        def damage():
            garble_zarr_chunk(path, 1, n_chunks=4)
        words = "damaged or unreadable chunk ("
    else:
        monkeypatch.setattr(_reader, "LAZY_IMAGE_BYTES", 1)  # read page by page, as a TIFF of 4 GiB or more is
        path = tmp_path / "img.tif"
        tifffile.imwrite(path, image, photometric="minisblack", compression="zlib")

        def damage():
            _garble_tiff_page(path, 1)
        words = "corrupt"
    image_layer = _opened(viewer, path)
    viewer.add_labels((labels > 0).astype(np.uint8) + 1, name="lab", metadata={"class_values": [0, 255]})
    training.image.setCurrentText(image_layer.name)
    training.labels.refresh()
    training.labels.setCurrentText("lab")
    tiny_settings(training)
    training.settings.retrain_steps.setValue(2)
    session.set_model(tiny_model(), "a tiny model")
    model = session.model
    prediction = viewer.add_labels(np.full(image.shape, 2, np.uint8), name=f"{image_layer.name} prediction",
                                   metadata={"class_values": [0, 255]})
    session.track(prediction, image_layer)
    prediction.brush_size = 6
    prediction.paint((1, 20, 20), 1)
    score_retrained = napari_unet.retrain.score_retrained

    def damaged_first(*args, **kwargs):
        damage()
        return score_retrained(*args, **kwargs)

    monkeypatch.setattr(napari_unet.retrain, "score_retrained", damaged_first)
    caplog.set_level(logging.ERROR, logger="napari_unet")
    run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    status = training.progress.status.text()
    assert status.startswith("Model retrained at "), status
    lost = f"the check of your corrections could not be made: image {image_layer.name!r}, slice 1: {path}: {words}"
    assert f" Warning: {lost}" in status, status
    assert status.endswith("; the retrained model is kept (Previous model brings back the one before it)."), status
    warnings = [text for severity, text in notifications if severity == "warning"]
    assert any(text.startswith(f"napari-unet: the retrained model is kept, but {lost}") for text in warnings), notifications
    assert session.model is not model and session.previous is not None  # the retrained model is the current one
    assert not [r for r in caplog.records if r.name == "napari_unet"], "logged as an unexpected error (a traceback)"


def test_predicting_a_damaged_lazy_image_of_another_reader_names_the_slice(tmp_path, monkeypatch):
    # the inference widget's job: old "RuntimeError: Zstd decompression error: ..." as an unexpected error (traceback)
    import dask.array as da

    from napari_unet._widgets import jobs

    image, _ = stripes(n_slices=10)
    lazy = da.from_zarr(str(damaged_zarr(tmp_path / "img.zarr", image, 7, zarr_format=2)))  # one the intensity note does not read
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)
    events = list(jobs.predict_job(tiny_model(), lazy, False, False, names={"image": "image 'img'"}))
    failed = events[-1]
    assert isinstance(failed, jobs.Failed) and failed.read_error, events
    assert failed.message.startswith("image 'img', slice 7: unreadable data (RuntimeError: "), failed.message
    assert not any(isinstance(e, jobs.PredictionResult) for e in events)
