"""The inference widget's check of its output layers follows the memory policy of reading data (session 64): refused
only beyond the machine's (or container's) memory and swap; beyond 3/4 of the memory available now the prediction
runs, with a warning notification. It refused layers beyond the memory free now (page cache, other programs).

Memory figures are faked (:func:`napari_unet.hardware.available_memory_bytes`, :func:`~napari_unet.hardware.memory_capacity`)."""

import pytest

from _helpers import tiny_model
from conftest import run_and_wait


def test_output_layers_within_memory_and_swap_but_beyond_the_memory_available_now_get_a_warning(memory):
    # old: InputError "predicting 'EM' (64, 1024, 1024) needs about 2.2 GB for its output layers, more than the 1.0 GB free"
    from napari_unet.predict import check_layer_memory

    model, shape = tiny_model(), (64, 1024, 1024)  # 2.2 GB with probabilities and cell instances
    memory(available=2**30, capacity=64 * 2**30)
    warning = check_layer_memory(model, shape, "EM", True, True)
    assert warning.startswith("predicting 'EM' (64, 1024, 1024) into output layers (with the viewer's copies and an undo "
                              "record) needs 2.2 GB of memory, more than 3/4 of the 1.0 GB available now; predicting "
                              "anyway (close other programs if the system slows down, or leave out"), warning
    memory(available=4 * 2**30, capacity=64 * 2**30)
    assert check_layer_memory(model, shape, "EM", True, True) is None


@pytest.mark.gui
def test_the_inference_widget_predicts_beyond_the_memory_available_now_with_a_warning(em_viewer, qtbot, notifications, memory):
    # old: "Not started: predicting 'EM' (3, 128, 128) needs about 0.0 GB for its output layers, more than the 0.0 GB free"
    from napari_unet._widgets import InferenceWidget, get_session

    session = get_session(em_viewer)
    session.set_model(tiny_model(), "tiny test model")
    widget = InferenceWidget(em_viewer)
    em_viewer.window.add_dock_widget(widget, name="U-Net inference", area="right")
    try:
        memory(available=3 * 128 * 128, capacity=64 * 2**30)  # less than the labels and their copy
        run_and_wait(qtbot, widget.run, lambda: widget._job is not None)
        warned = [text for severity, text in notifications if severity == "warning" and "into output layers" in text]
        assert len(warned) == 1 and warned[0].startswith("napari-unet: predicting 'EM' (3, 128, 128) into output layers"), notifications
        assert "EM prediction" in [layer.name for layer in em_viewer.layers], widget.progress.status.text()
    finally:
        widget.stop()
        qtbot.waitUntil(lambda: widget._job is None and not session.busy, timeout=120_000)
