"""The docks used live: keys, layers and models that change while a prediction runs (session 51's GUI hunt)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import run_and_wait

pytestmark = pytest.mark.gui


@pytest.fixture
def gated(widgets, monkeypatch):
    """Predictions of ``widgets.inference`` wait for ``gate.set()`` before they start: the test acts while one runs."""
    import napari_unet._widgets.inference as inference_module

    from _helpers import tiny_model

    gate = threading.Event()
    original = inference_module.predict_job

    def waiting(*args, **kwargs):
        gate.wait(60)
        yield from original(*args, **kwargs)

    monkeypatch.setattr(inference_module, "predict_job", waiting)
    widgets.session.set_model(tiny_model(), "tiny A")
    yield gate
    gate.set()


def test_space_twice_on_run_stops_the_run_instead_of_marking_a_slice_reviewed(widgets, qtbot, gated):
    """Run was disabled before Stop was enabled: the focus went to Mark slice reviewed, and a second Space accepted the
    old prediction's whole slice as annotations, which the running prediction then kept."""
    from qtpy.QtCore import Qt

    inference = widgets.inference
    gated.set()
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)  # a prediction layer to review
    gated.clear()
    _press(widgets, qtbot, inference.run_button)
    assert inference._job is not None and inference.stop_button.hasFocus()
    qtbot.keyClick(inference.stop_button, Qt.Key.Key_Space)  # the second press stops the run
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    assert widgets.session.reviewed(widgets.viewer.layers["EM prediction"]).sum() == 0
    assert "no layer was changed" in inference.progress.status.text() and inference.run_button.hasFocus()


def test_a_run_keeps_the_corrections_as_keep_was_when_it_started(widgets, qtbot, gated):
    """Unticking "keep my corrections" during a run (meant for the next one) overwrote the painted corrections."""
    viewer, inference = widgets.viewer, widgets.inference
    gated.set()
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    prediction = viewer.layers["EM prediction"]
    prediction.brush_size = 1
    with prediction.block_history():  # one stroke: a membrane (display 1) across slice 1
        for x in range(prediction.data.shape[-1]):
            prediction.paint((1, 15, x), 1, refresh=False)
    painted = prediction.data[1, 15].copy()
    assert (painted == 1).all() and widgets.session.reviewed(prediction)[1, 15].all()
    gated.clear()
    assert inference.keep.isChecked() and inference.run()
    inference.keep.setChecked(False)  # for the next run
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    np.testing.assert_array_equal(prediction.data[1, 15], painted)
    assert widgets.session.reviewed(prediction)[1, 15].all()


def test_a_prediction_of_replaced_image_data_is_not_written(widgets, qtbot, gated, notifications):
    viewer, inference = widgets.viewer, widgets.inference
    image = viewer.layers["EM"]
    assert inference.run()
    image.data = 255 - image.data  # a filter of another plugin: new pixels, the same shape
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    assert "EM prediction" not in viewer.layers
    assert any("the image's data was replaced while predicting" in message for _, message in notifications)


def test_a_prediction_written_after_the_model_changed_names_the_model_that_made_it(widgets, qtbot, gated):
    import dataclasses

    from _helpers import tiny_model

    inference = widgets.inference
    assert inference.run()
    widgets.session.set_model(dataclasses.replace(tiny_model()), "tiny B")  # a training that ended meanwhile
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    assert "Predicted with the model current at Run (tiny A); Run again for the current one." in inference.progress.status.text()


def test_load_buttons_are_off_while_a_load_would_be_refused_and_busy_counts_every_job(widgets, qtbot, gated):
    training, inference, session = widgets.training, widgets.inference, widgets.session
    assert inference.load_button.isEnabled() and training.load_button.isEnabled()
    assert inference.run()
    assert not inference.load_button.isEnabled() and not training.load_button.isEnabled()
    session.set_busy("prediction", True)  # a second inference dock's run
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    assert "prediction" in session.busy and not session.can_load(), "the other dock still predicts"
    session.set_busy("prediction", False)
    assert session.can_load() and inference.load_button.isEnabled() and training.load_button.isEnabled()


def test_the_cells_layer_keeps_only_its_latest_run_undoable_unless_the_user_edited_it(widgets):
    """Each run numbers the cells anew: every run's undo step kept 8 bytes a pixel of the stack (up to 100 steps)."""
    from napari_unet._widgets.outputs import write_cells

    viewer, session = widgets.viewer, widgets.session
    image = viewer.layers["EM"]
    rng = np.random.default_rng(0)
    for _ in range(4):
        write_cells(viewer, session, image, rng.integers(0, 50, image.data.shape).astype(np.int32), None)
    cells = viewer.layers["EM cells"]
    assert len(cells._undo_history) == 1  # the first write made the layer, three runs wrote into it: the latest stays
    cells.paint((0, 5, 5), 7)  # the user's edit
    write_cells(viewer, session, image, rng.integers(0, 50, image.data.shape).astype(np.int32), None)
    assert len(cells._undo_history) == 3  # the run before, the user's edit, the new run
    write_cells(viewer, session, image, rng.integers(0, 50, image.data.shape).astype(np.int32), None)
    assert len(cells._undo_history) == 1


def test_space_on_train_gives_the_focus_to_stop(widgets, qtbot):
    """After Space on Retrain the focus went to Save model..., whose dialog a second Space opened during the run."""
    from conftest import tiny_settings

    training = widgets.training
    tiny_settings(training, epochs=1, steps=3)
    _press(widgets, qtbot, training.train_button)
    assert training._run is not None and training.stop_button.hasFocus()
    qtbot.waitUntil(lambda: training._run is None, timeout=120_000)
    assert training.train_button.hasFocus()


def test_a_closing_notification_leaves_the_keyboard_focus_on_the_dock(widgets, qtbot):
    """napari focuses its canvas when a notification closes (4 s after a run's note showed): the next Space, meant
    for Stop, went to the canvas. A click on the canvas still takes the focus."""
    from qtpy.QtCore import Qt

    training, inference = widgets.training, widgets.inference
    canvas = widgets.viewer.window._qt_viewer.canvas.native
    for button in (training.train_button, inference.run_button):
        _press(widgets, qtbot, button, key=Qt.Key.Key_Shift)  # focused, nothing pressed
        assert button.hasFocus()
        canvas.setFocus()  # what napari's notification does as it closes
        qtbot.waitUntil(button.hasFocus, timeout=2000)
    canvas.setFocus(Qt.FocusReason.MouseFocusReason)  # a click
    qtbot.wait(50)
    assert canvas.hasFocus() and not inference.run_button.hasFocus()

    """A Retrain that made the model worse could not be undone without a saved file."""
    import dataclasses

    from _helpers import tiny_model

    training, inference, session = widgets.training, widgets.inference, widgets.session
    assert not training.previous_button.isEnabled()
    first, second = tiny_model(), dataclasses.replace(tiny_model())
    session.set_model(first, "model A")
    session.set_model(second, "model B (retrained)")
    assert training.previous_button.isEnabled()
    qtbot.mouseClick(training.previous_button, _left())
    assert session.model is first and "model A" in inference.model_label.text()
    qtbot.mouseClick(training.previous_button, _left())
    assert session.model is second and session.previous[0] is first
    session.set_busy("training", True)  # a run would replace the model when it ends
    assert not training.previous_button.isEnabled() and not session.use_previous()
    session.set_busy("training", False)


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _press(widgets, qtbot, button, key=None) -> None:
    """``key`` (default Space) on ``button``, focused in the viewer's window made active (keys go to the active window)."""
    from qtpy.QtCore import Qt

    window = widgets.viewer.window._qt_window
    window.show()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    button.setFocus()
    qtbot.keyClick(button, Qt.Key.Key_Space if key is None else key)


def test_return_and_enter_press_the_focused_button_as_space_does(widgets, qtbot, gated):
    """Outside a dialog Qt gives a push button Space only: Return on a focused Run did nothing."""
    from qtpy.QtCore import Qt

    inference, training = widgets.inference, widgets.training
    _press(widgets, qtbot, inference.run_button, Qt.Key.Key_Return)
    assert inference._job is not None and inference.stop_button.hasFocus()
    qtbot.keyClick(inference.stop_button, Qt.Key.Key_Enter)  # the keypad's
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)
    assert "no layer was changed" in inference.progress.status.text()
    assert all(button.autoDefault() for button in (training.train_button, training.previous_button, inference.save_button))
    # a held key presses once: its repeats pressed Stop, which had taken the focus
    from qtpy.QtCore import QEvent
    from qtpy.QtGui import QKeyEvent
    from qtpy.QtWidgets import QApplication

    gated.clear()
    _press(widgets, qtbot, inference.run_button, Qt.Key.Key_Return)
    assert inference._job is not None and inference.stop_button.hasFocus()
    repeat = QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.KeyboardModifier.NoModifier, "\r", True)
    QApplication.sendEvent(inference.stop_button, repeat)
    assert inference._job is not None and not inference._job.stop.is_set()
    gated.set()
    qtbot.waitUntil(lambda: inference._job is None, timeout=60_000)


def test_after_a_retrain_started_with_space_the_focus_goes_back_to_retrain(widgets, qtbot, gated):
    """It went to Train: a second Space trained a model from scratch."""
    from conftest import tiny_settings

    training, inference = widgets.training, widgets.inference
    gated.set()
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)  # a prediction to retrain on
    viewer = widgets.viewer
    viewer.dims.set_current_step(0, 1)
    assert inference.mark_reviewed()  # its slice 1 accepted: corrections to learn from
    tiny_settings(training, epochs=1, steps=3)
    _press(widgets, qtbot, training.retrain_button)
    assert training._run is not None and training.stop_button.hasFocus(), training.progress.status.text()
    qtbot.waitUntil(lambda: training._run is None, timeout=120_000)
    assert training.retrain_button.hasFocus()


def test_a_cells_run_that_changes_nothing_keeps_the_users_last_edit_undoable(widgets):
    from napari_unet._widgets.outputs import write_cells

    viewer, session = widgets.viewer, widgets.session
    image = viewer.layers["EM"]
    cells_of_run = np.random.default_rng(0).integers(1, 50, image.data.shape).astype(np.int32)
    write_cells(viewer, session, image, cells_of_run, None)
    cells = viewer.layers["EM cells"]
    cells.paint((0, 5, 5), 77)  # the user's edit
    write_cells(viewer, session, image, np.asarray(cells.data).copy(), None)  # a run giving the same cells: no step
    write_cells(viewer, session, image, cells_of_run, None)  # the next run: the user's edit stays undoable
    cells.undo()
    assert cells.data[0, 5, 5] == 77


def test_closing_napari_while_a_model_loads_ends_the_process_cleanly(tmp_path):
    """A script that closed its viewer while a model loaded aborted at exit (SIGABRT, "wrapped C/C++ object of type
    WorkerBaseSignals has been deleted"): the load's thread outlived the Qt objects of its signals; waiting for it, h5py
    (imported by the load during the exit) then crashed the exit (SIGSEGV)."""
    import os
    import subprocess
    import sys
    import time

    from napari_unet._widgets.workers import EXIT_WAIT_SECONDS

    script = f"""
import time
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
_dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "U-Net training")
assert widget.session.load({str(tmp_path / "missing.keras")!r}) is not None
for _ in range(10):
    QApplication.processEvents()
    time.sleep(0.02)
viewer.close()
print("closed", flush=True)
"""
    environment = dict(os.environ, NAPARI_CONFIG=str(tmp_path / "settings.yaml"))  # no confirmation dialog of the user's
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0 and "closed" in result.stdout, (result.returncode, result.stderr[-3000:])
    assert time.monotonic() - started < EXIT_WAIT_SECONDS / 2  # the load ended; no wait for the bound
    assert "has been deleted" not in result.stderr, result.stderr[-3000:]


def test_the_exit_wait_names_the_tasks_it_waits_for_after_a_second(qapp, capsys):
    """The line said "1 background task(s)"; the tasks are napari's thread pool's (another plugin's count too)."""
    import time

    from napari.qt.threading import create_worker

    from napari_unet._widgets.workers import _stop_and_wait_for_workers

    worker = create_worker(time.sleep, 1.5)  # a plain function: asking it to stop does not end it
    worker.start()
    started = time.monotonic()
    _stop_and_wait_for_workers()
    assert 1.4 < time.monotonic() - started < 30
    assert "napari-unet: waiting for 1 napari background task to end (at most 60 s)" in capsys.readouterr().err


def test_a_training_that_diverges_before_it_keeps_weights_names_the_learning_rate(widgets, qtbot, monkeypatch):
    """Told by the job's Failed.diverged (the core's TrainingDiverged), no longer by the message's last words: the
    widget adds which setting to lower, and no model is made."""
    import napari_unet.train as train_module
    from conftest import tiny_settings

    prefetch = train_module.prefetch

    def nan_images(make_batch, n_batches, *args, **kwargs):  # the first step's loss is NaN: no epoch to keep
        for x, y in prefetch(make_batch, n_batches, *args, **kwargs):
            yield np.full_like(x, np.nan), y

    monkeypatch.setattr(train_module, "prefetch", nan_images)
    training = widgets.training
    tiny_settings(training, epochs=1, steps=3)
    assert widgets.session.model is None
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    assert training.progress.status.text() == (
        "Training failed: training diverged: the loss was nan at step 1, before any epoch's weights were kept; lower the "
        "learning rate (the learning rate in the settings)")
    assert widgets.session.model is None
