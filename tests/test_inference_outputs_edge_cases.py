"""Inference widget edge cases: output layers the user kept, and layers that change while a prediction runs."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest

from conftest import assert_layers_unchanged, layers_snapshot, run_and_wait

pytestmark = pytest.mark.gui


def warnings_of(notifications):
    return [message for severity, message in notifications if severity.lower().endswith("warning")]


@pytest.fixture
def inference(em_viewer, qtbot):
    """The inference widget docked in ``em_viewer``, with the shared tiny model (no training per test)."""
    from _helpers import tiny_model

    from napari_unet._widgets import InferenceWidget, get_session

    session = get_session(em_viewer)
    session.set_model(tiny_model(), "tiny test model")
    widget = InferenceWidget(em_viewer)
    em_viewer.window.add_dock_widget(widget, name="U-Net inference", area="right")
    yield widget
    widget.stop()
    qtbot.waitUntil(lambda: widget._job is None and not session.busy, timeout=120_000)


def duplicate(viewer, layer):
    """What Layers > Duplicate does: a deep copy named ``<name> copy``, with the same metadata."""
    from napari.layers import Layer

    data, state, kind = layer.as_layer_data_tuple()
    state["name"] = f"{layer.name} copy"
    return viewer.add_layer(Layer.create(copy.deepcopy(data), copy.deepcopy(state), kind))


def predict(qtbot, inference):
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)


def probability_layer_name(viewer):
    [name] = [x.name for x in viewer.layers if " P(" in x.name]  # "EM P(<class>)"
    return name


def test_renamed_or_duplicated_probability_maps_are_never_overwritten(em_viewer, inference, qtbot):
    viewer = em_viewer
    inference.probabilities.setChecked(True)
    predict(qtbot, inference)
    name = probability_layer_name(viewer)
    ours = viewer.layers[name]
    predict(qtbot, inference)  # our own output layer is updated in place
    assert viewer.layers[name] is ours and len(viewer.layers) == 4
    # Renamed to keep this run's map: the next Run makes a new one.
    ours.name = f"{name} before retrain"
    ours.data = np.full(ours.data.shape, 0.25, np.float32)  # (as an older model's map would differ)
    predict(qtbot, inference)
    assert np.all(ours.data == 0.25) and viewer.layers[name] is not ours
    # Duplicated, the original deleted and the copy (same metadata) given its name: the copy is the user's.
    kept = duplicate(viewer, viewer.layers[name])
    kept.data = np.full(kept.data.shape, 0.5, np.float32)
    viewer.layers.remove(name)
    kept.name = name
    predict(qtbot, inference)
    assert np.all(kept.data == 0.5)
    [new] = [x for x in viewer.layers if x.name.startswith(name) and x not in (ours, kept)]
    assert new.data.max() > 0.5


def test_a_users_cells_layer_is_left_alone_and_the_status_names_the_outputs(em_viewer, inference, qtbot):
    viewer = em_viewer
    mine = viewer.add_labels(np.ones((3, 128, 128), np.int32), name="EM cells")  # the user's own instance labels
    inference.probabilities.setChecked(True)
    inference.cells.setChecked(True)
    predict(qtbot, inference)
    name = probability_layer_name(viewer)
    assert np.all(mine.data == 1)
    [cells] = [x for x in viewer.layers if x.name.startswith("EM cells") and x is not mine]
    assert cells.data.max() > 1
    status = inference.progress.status.text()
    assert f"Also written: {name!r}, {cells.name!r}" in status, status
    predict(qtbot, inference)  # our "EM cells [1]" is ours to update; no third cells layer
    assert [x.name for x in viewer.layers].count(cells.name) == 1
    assert len([x for x in viewer.layers if x.name.startswith("EM cells")]) == 2 and np.all(mine.data == 1)


def test_one_slices_cells_are_written_without_copying_the_cells_stack(make_napari_viewer):
    # finding the largest id of the other slices copied the whole int32 cells layer: 3.2 GB and a 9-39 s freeze for
    # one slice of a 200 x 2048² stack
    import tracemalloc

    from napari_unet._widgets import get_session
    from napari_unet._widgets.outputs import write_cells

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 256, 256), np.uint8), name="EM")
    session = get_session(viewer)
    stack = np.zeros(image.data.shape, np.int32)
    stack[:, :128] = 1
    stack[:, 128:] = 2
    stack[5, 0, 0] = 70  # the largest id, in another slice than the one written
    cells = write_cells(viewer, session, image, stack, None)
    instances = np.zeros((256, 256), np.int32)
    instances[:, 100:] = 1
    tracemalloc.start()
    write_cells(viewer, session, image, instances, 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < stack.nbytes / 4, peak  # a few slices' worth, not the stack
    assert set(np.unique(cells.data[3])) == {0, 71} and cells.data[5, 0, 0] == 70


@pytest.mark.parametrize("change", ["crop", "remove"])
def test_image_changed_during_prediction_writes_nothing_and_says_so(em_viewer, inference, qtbot, notifications, change):
    viewer = em_viewer
    image = viewer.layers["EM"]
    assert inference.run()
    if change == "crop":  # e.g. by another plugin or the console, while the worker runs
        image.data = image.data[:, :100, :100]
    else:
        viewer.layers.remove(image)
    before = layers_snapshot(viewer)
    qtbot.waitUntil(lambda: inference._job is None, timeout=120_000)
    assert_layers_unchanged(viewer, before)  # no prediction layer either
    expected = "the image changed shape while predicting" if change == "crop" else "the image layer was removed"
    status = inference.progress.status.text()
    assert "Predicting" not in status and expected in status and "not written" in status, status
    assert any(expected in m and "nothing was written" in m for m in warnings_of(notifications)), notifications
    assert inference.run_button.isEnabled() and not inference.progress.active


def test_closing_and_deleting_the_inference_dock_mid_run_clears_the_busy_flag(em_viewer, qtbot):
    from _helpers import tiny_model
    from qtpy.QtCore import QThreadPool

    from napari_unet._widgets import InferenceWidget, get_session

    session = get_session(em_viewer)
    session.set_model(tiny_model(), "tiny test model")
    widget = InferenceWidget(em_viewer)
    em_viewer.window.add_dock_widget(widget, name="U-Net inference", area="right")
    assert widget.run() and session.busy == {"prediction"}
    em_viewer.window.remove_dock_widget(widget)  # the dock's close button: the run stops
    del widget
    gc.collect()  # nothing holds the widget any more
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=120_000)
    qtbot.wait(200)  # the worker's queued finished signal
    assert not session.busy


def test_outputs_that_would_not_fit_in_memory_are_refused_before_the_run(em_viewer, inference, qtbot, notifications, monkeypatch):
    from napari_unet import hardware

    viewer = em_viewer
    labels_bytes = 3 * 128 * 128  # uint8 class values 0/255
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 4 * labels_bytes)
    whole = hardware.MemoryCapacity(4 * labels_bytes, "this machine's memory and swap")  # the labels and their copy fit
    monkeypatch.setattr(hardware, "memory_capacity", lambda: whole)
    inference.probabilities.setChecked(True)  # 2 classes x float32: 8 bytes a pixel, twice
    before = layers_snapshot(viewer)
    assert not inference.run()
    status = inference.progress.status.text()
    assert "more than the 192 KB of this machine's memory and swap" in status and "napari-unet predict" in status, status
    assert_layers_unchanged(viewer, before)
    inference.probabilities.setChecked(False)
    predict(qtbot, inference)
    assert "EM prediction" in [layer.name for layer in viewer.layers]


def test_a_deleted_prediction_layer_is_said_and_the_next_run_makes_a_new_one(em_viewer, inference, qtbot):
    """Deleting the prediction layer deleted its painted corrections without a word; a run going on, or the next one,
    must not write into the deleted layer."""
    from napari_unet._widgets import get_session
    from napari_unet._widgets.prepare import prepare_retrain
    from napari_unet.labels import LabelError

    viewer, session = em_viewer, get_session(em_viewer)
    image = viewer.layers["EM"]
    predict(qtbot, inference)
    prediction = viewer.layers["EM prediction"]
    with prediction.block_history():
        prediction.paint((0, 20, 20), 1 if prediction.data[0, 20, 20] != 1 else 2, refresh=False)
    assert session.reviewed(prediction).sum() > 0
    assert inference.run()
    viewer.layers.remove(prediction)  # while a run goes on
    deleted = prediction.data.copy()
    qtbot.waitUntil(lambda: "was deleted" in inference.progress.status.text(), timeout=5_000)
    status = inference.progress.status.text()
    assert "Prediction layer 'EM prediction' was deleted with your corrections" in status, status
    assert "napari cannot undo a layer's deletion" in status and "The next Run makes a new prediction layer" in status, status
    qtbot.waitUntil(lambda: inference._job is None, timeout=120_000)
    new = viewer.layers["EM prediction"]
    assert new is not prediction and np.array_equal(prediction.data, deleted)
    assert "(a new layer)" in inference.progress.status.text()
    with pytest.raises(LabelError, match="the corrections on 'EM prediction' went with that layer when it was deleted"):
        prepare_retrain(viewer, session, image, None, False, lambda *config: None)
    new.paint((0, 30, 30), 1 if new.data[0, 30, 30] != 1 else 2)
    new.undo()  # corrections painted anew and taken back: no word of the deleted layer's any more
    with pytest.raises(LabelError, match="^no corrections to learn from: run inference"):
        prepare_retrain(viewer, session, image, None, False, lambda *config: None)
    viewer.layers.remove(new)  # no corrections: said in a few words
    qtbot.waitUntil(lambda: inference.progress.status.text() == "Prediction layer 'EM prediction' was deleted; the next Run "
                    "makes a new one.", timeout=5_000)
    predict(qtbot, inference)
    assert viewer.layers["EM prediction"] is not new


def test_closing_the_viewer_tells_no_prediction_layer_deleted(make_napari_viewer, qtbot):
    # closing removes every layer: each corrected prediction was told as deleted, in a popup while a training ran
    from napari_unet._widgets import get_session
    from napari_unet.labels import PREDICTION_OUTPUT

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 64, 64), np.float32), name="EM")
    layer = viewer.add_labels(np.ones((2, 64, 64), np.uint8), name="EM prediction",
                              metadata={"napari_unet": {"output": PREDICTION_OUTPUT, "image": "EM"}})
    session = get_session(viewer)
    layer.brush_size = 5
    layer.paint((0, 20, 20), 2)
    assert session.reviewed(layer).sum() > 0
    notices = []
    session.notice.connect(lambda text, notified: notices.append(text))
    viewer.close()
    qtbot.wait(50)
    assert notices == []
