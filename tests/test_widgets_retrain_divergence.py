"""A Retrain (fine-tuning, one epoch) that diverges in its first epoch, before it keeps any weights (session 64): the
current model stays, unchanged and usable (it predicts, and the next Retrain trains it), and the widget says the
retrain diverged, what to try (a lower Retrain learning rate, the corrections), with no traceback.

The divergence is made as in tests/test_training_outcomes.py: the network being trained gets NaN weights after a step
(:func:`_helpers.poison_weights`), as an update whose gradient overflowed leaves them."""

import logging

import numpy as np
import pytest

from _helpers import finite_weights, poison_weights, tiny_model
from conftest import run_and_wait, tiny_settings

pytestmark = pytest.mark.gui


def _poisoned_after(monkeypatch, at_step: int) -> None:
    """The next training runs (napari_unet.train.train_events) get NaN weights after step ``at_step``."""
    import napari_unet.train as train_module

    train_events = train_module.train_events

    def poisoned(*args, **kwargs):
        network = None
        for event in train_events(*args, **kwargs):
            if isinstance(event, train_module.TrainingStarted):
                network = event.model.keras_model  # the network being trained
            yield event
            if isinstance(event, train_module.TrainingStep) and event.step == at_step:
                poison_weights(network)

    monkeypatch.setattr(train_module, "train_events", poisoned)


def _corrections(widgets):
    """Corrections painted on a prediction layer of the image "EM", tracked as the inference widget's would be."""
    viewer, session = widgets.viewer, widgets.session
    prediction = viewer.add_labels(np.full(viewer.layers["EM"].data.shape, 2, np.uint8), name="EM prediction",
                                   metadata={"class_values": [0, 255]})
    session.track(prediction, viewer.layers["EM"])
    prediction.brush_size = 6
    prediction.paint((1, 20, 20), 1)
    return prediction


def test_a_retrain_diverging_in_its_first_epoch_keeps_the_current_model_usable_and_says_what_to_try(
        widgets, notifications, qtbot, monkeypatch, caplog):
    viewer, training, inference, session = widgets.viewer, widgets.training, widgets.inference, widgets.session
    tiny_settings(training)
    training.settings.retrain_steps.setValue(4)
    session.set_model(tiny_model(), "a tiny model")
    model, weights = session.model, [w.copy() for w in tiny_model().keras_model.get_weights()]
    curves = (list(training.plot.steps), list(training.plot.losses))
    _corrections(widgets)
    _poisoned_after(monkeypatch, 2)  # step 3's loss is NaN: in the one epoch of 4 steps, none kept
    caplog.set_level(logging.ERROR, logger="napari_unet")
    notifications.clear()
    run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    status = training.progress.status.text()
    assert status == ("Retraining failed: the retrain diverged (the loss was nan at step 3) before it kept any weights; the "
                      "current model is unchanged and still in use: lower the Retrain learning rate (settings), or check the "
                      "corrections, and Retrain again"), status
    assert [text for severity, text in notifications if severity == "error"] == [
        f"napari-unet: retraining failed: {status.removeprefix('Retraining failed: ')}"], notifications
    assert not [r for r in caplog.records if r.name == "napari_unet"], "an unexpected error (its traceback logged)"
    assert "failed" in training.progress.bar.format()
    # unchanged: the same model, its weights finite and as before, its curves back in the plot
    assert session.model is model and session.previous is None
    assert all(np.array_equal(a, b) for a, b in zip(model.keras_model.get_weights(), weights))
    assert (list(training.plot.steps), list(training.plot.losses)) == curves
    assert training.train_button.isEnabled() and training.retrain_button.isEnabled()
    # and usable: it predicts, and the next Retrain (no longer poisoned) fine-tunes it into a finite model
    monkeypatch.undo()
    inference.image.setCurrentText("EM")
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    viewer.layers["EM prediction"].paint((1, 40, 40), 1)  # the prediction, into the layer of the corrections
    run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    assert training.progress.status.text().startswith("Model retrained at "), training.progress.status.text()
    assert session.model is not model and session.previous[0] is model and finite_weights(session.model)
