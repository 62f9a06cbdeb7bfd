"""Read errors the widgets show name the layer read, one way (review of session 64, finding 6): "image 'stack A',
slice 7: <file>: damaged or unreadable chunk (...)", "labels layer 'lab', slice 2: ...", whether the inference
widget's prediction, Train / Retrain's job or their start-up finds the damaged page or chunk of a lazily read file.
Before, the training job named the image layer but the prediction job did not ("image, slice 7: ..."), and the
training job's labels were "labels, slice 2" where the start-up said "labels layer 'lab', slice 2".

The layer is renamed from its file's name, so the message shows the layer's name, not the file's."""

import numpy as np
import pytest

from _helpers import damaged_tiff, damaged_zarr, stripes, tiny_model
from conftest import run_and_wait, tiny_settings

pytestmark = pytest.mark.gui

NAME = "stack A"


def _damaged_layer(viewer, tmp_path, monkeypatch, kind, n_slices=10, z=7, visible=True):
    """A lazily read image layer named :data:`NAME` whose slice ``z`` is unreadable: ``(layer, path, z, words)``.
    ``kind``: "zarr" (napari-unet's reader of a zarr store), "tiff" (a TIFF read page by page, as one of 4 GiB or
    more is), "da.from_zarr" (another reader: a dask array of a zarr v3 store, Zstd chunks). ``z`` must not be the
    slice napari draws (the middle one) unless not ``visible``: napari's own drawing would fail first."""
    import dask.array as da

    from napari_unet import _reader

    image, _ = stripes(n_slices=n_slices)
    if kind == "da.from_zarr":
        path = damaged_zarr(tmp_path / "img.zarr", image, z, zarr_format=3)
        return viewer.add_image(da.from_zarr(str(path)), name=NAME, visible=visible), path, z, "unreadable data (RuntimeError: "
    if kind == "zarr":
        path, words = damaged_zarr(tmp_path / "img.zarr", image, z), "damaged or unreadable chunk ("
    else:
        monkeypatch.setattr(_reader, "LAZY_IMAGE_BYTES", 1)
        path, words = damaged_tiff(tmp_path / "img.tif", image, z), "corrupt"
    [(data, kwargs, _)] = _reader.read_layers(str(path))
    assert hasattr(data, "dask"), type(data)  # read lazily
    layer = viewer.add_image(data, **{**kwargs, "name": NAME, "visible": visible})
    return layer, path, z, f"{path}: {words}"


@pytest.mark.parametrize("scope", ["stack", "slice"])
@pytest.mark.parametrize("kind", ["zarr", "tiff", "da.from_zarr"])
def test_predicting_a_damaged_lazy_image_in_the_inference_widget_names_the_layer(
        widgets, notifications, qtbot, tmp_path, monkeypatch, kind, scope):
    # old: "Prediction failed: image, slice 7: ..." (the training job's errors named the layer, this one not)
    from napari_unet._widgets.inference import CURRENT

    viewer, inference = widgets.viewer, widgets.inference
    layer, path, z, words = _damaged_layer(viewer, tmp_path, monkeypatch, kind, visible=scope == "stack")
    names = [x.name for x in viewer.layers]
    widgets.session.model = tiny_model()
    inference.image.setCurrentText(NAME)
    assert inference.image.layer() is layer
    if scope == "slice":  # the one slice at the slider (hidden): the job's first read is that 2-D slice (its intensity note)
        inference.scope.setCurrentText(CURRENT)
        viewer.dims.set_current_step(0, z)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    status = inference.progress.status.text()
    assert status.startswith(f"Prediction failed: image {NAME!r}, slice {z}: {words}"), status
    assert status.endswith("; no layer was changed"), status
    assert ("error", f"napari-unet: prediction failed: {status.removeprefix('Prediction failed: ')}") in notifications
    assert [x.name for x in viewer.layers] == names  # no prediction layer added


@pytest.mark.parametrize("retrain", [False, True], ids=["train", "retrain"])
@pytest.mark.parametrize("kind", ["zarr", "tiff"])
def test_training_on_a_damaged_lazy_image_names_the_layer_as_prediction_does(
        widgets, notifications, qtbot, tmp_path, monkeypatch, kind, retrain):
    # the training job read the image in its worker; it named the layer before this change too (3390b1a), and now
    # with the same words as the prediction (old, before 3390b1a: "image, slice 1: ...")
    viewer, training, session = widgets.viewer, widgets.training, widgets.session
    layer, path, z, words = _damaged_layer(viewer, tmp_path, monkeypatch, kind, n_slices=4, z=3)
    _, labels = stripes()
    viewer.add_labels((labels > 0).astype(np.uint8) + 1, name="lab", metadata={"class_values": [0, 255]})
    training.image.setCurrentText(NAME)
    training.labels.refresh()
    training.labels.setCurrentText("lab")
    tiny_settings(training)
    session.set_model(tiny_model(), "a tiny model")
    model = session.model
    if retrain:  # corrections on slice 3, the damaged one: the Retrain reads it (and its focus copies)
        prediction = viewer.add_labels(np.full(labels.shape, 2, np.uint8), name=f"{NAME} prediction", metadata={"class_values": [0, 255]})
        session.track(prediction, layer)
        prediction.brush_size = 6
        prediction.paint((3, 20, 20), 1)
    run_and_wait(qtbot, lambda: training.start(retrain=retrain), lambda: training._run is not None)
    kind_ = "Retraining" if retrain else "Training"
    status = training.progress.status.text()
    assert status.startswith(f"{kind_} failed: image {NAME!r}, slice {z}: {words}"), status
    assert status.endswith("; the current model is unchanged"), status
    assert ("error", f"napari-unet: {kind_.lower()} failed: {status.removeprefix(f'{kind_} failed: ')}") in notifications
    assert session.model is model


def test_the_training_jobs_labels_are_named_as_the_start_up_names_them(tmp_path, monkeypatch):
    # the training job's labels were "labels, slice 2" where Train's start-up (reading a labels layer) says
    # "labels layer 'lab', slice 2" (test_widgets_reads.py); a tracked prediction layer trained on is a "prediction layer"
    from napari.layers import Image, Labels

    from _helpers import tiny_configs
    from napari_unet._widgets import jobs
    from napari_unet._widgets.layers import read_roles
    from napari_unet.zarr_io import read_zarr

    image, labels = stripes()
    lazy = read_zarr(damaged_zarr(tmp_path / "lab.zarr", (labels > 0).astype(np.uint8), 2)).data
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2)
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)  # (this thread runs the tests)
    image_layer, labels_layer = Image(image, name="img"), Labels(np.zeros(image.shape, np.uint8), name="lab")
    for role, said in [("labels", "labels layer 'lab'"), ("prediction", "prediction layer 'lab'")]:
        names = read_roles(image_layer, labels_layer, role)
        assert names == {"image": "image 'img'", "labels": said}
        events = list(jobs.train_job(image, lazy, model_config, train_config, names=names))
        failed = events[-1]
        assert isinstance(failed, jobs.Failed) and failed.read_error, events
        assert failed.message.startswith(f"{said}, slice 2: {tmp_path / 'lab.zarr'}: damaged or unreadable chunk ("), failed.message
