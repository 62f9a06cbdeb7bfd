"""The check of a finished model's use (session 62, review 1 of 1b3a58a): a Retrain judges its model on the slices it
was corrected on, with the prediction that scores the corrections (the training's own check is off: it named focus
copies and cost a third of a Retrain); labels no better than chance are flagged (Cohen's kappa), not only one class
everywhere; the membrane rule runs on a window of at most 512² a plane; the wordings of every path."""

import dataclasses
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from _helpers import stripes, tiny_configs, tiny_model
from napari_unet.train import TrainingFinished, TrainingStarted, TrainingStep, train_events

HINT = "try a lower learning rate, more annotations of every class, or longer training"


def _predict_only(network, k: int, share: float = 1.0) -> None:
    """Make ``network`` give class index ``k`` everywhere (its last convolution's kernel 0, its bias favouring ``k``:
    probability ``share`` for a 2-class network when below 1, else all but 1)."""
    layer = [layer for layer in network.layers if layer.get_weights()][-1]
    kernel, bias = layer.get_weights()
    favoured = np.full_like(bias, -10.0)
    favoured[k] = 10.0
    if share < 1:
        favoured[:] = 0.0
        favoured[k] = np.log(share / (1 - share))
    layer.set_weights([np.zeros_like(kernel), favoured])


def _sabotaged(events, at_step: int, k: int = 1, share: float = 1.0):
    """``events`` of training, the network made to predict class index ``k`` after step ``at_step`` (its last)."""
    network = None
    for event in events:
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == at_step:
            _predict_only(network, k, share)
        yield event


def _one_class_note(where: str, value=255, subject: str = "the model") -> str:
    return (f"{subject} predicts class {value} on every pixel of {where}, where classes 0 and 255 are annotated: it has "
            f"not learnt to tell them apart, whatever its scores; {HINT}")


# ---- Retrain: the verdict of the prediction that scores the corrections (M1, S1) -----------------------------------

def _retrain_job(flat: bool, monkeypatch, sabotage: bool = True):
    """A Retrain as the widget runs it (prepare_retrain's data and check, jobs.train_job), corrections on slice 2 of
    6 (or on a 2-D image), the network made to predict cells everywhere at its last step; its events, and the
    predictions the training core made after its steps."""
    import napari_unet.train as train_module
    from napari_unet._widgets.jobs import train_job
    from napari_unet.retrain import correction_check, retrain_config, retrain_data

    model = tiny_model()
    image, values = stripes(n_slices=6, size=64)
    annotated, corrected = np.ones(values.shape, bool), np.zeros(values.shape, bool)
    corrected[2, 10:20, 10:20] = True
    if flat:
        image, values, annotated, corrected = image[2], values[2], annotated[2], corrected[2]
    data = retrain_data(image, values, annotated, corrected, 64)
    assert data.extra_slices > 0  # focus copies: the stack trained on is not the image's
    config = retrain_config(model.train_config, model.config, model.train_config, steps=2, patch_size=64)
    events = train_module.train_events
    if sabotage:
        monkeypatch.setattr(train_module, "train_events", lambda *a, **k: _sabotaged(events(*a, **k), at_step=2))
    core_predictions = []
    predict = train_module.predict
    monkeypatch.setattr(train_module, "predict", lambda *a, **k: core_predictions.append(k) or predict(*a, **k))
    job = train_job(data.image, data.labels, None, config.replace(ignore_value=data.ignore), init=model,
                    pixel_weights=data.pixel_weights, check=correction_check(image, values, corrected, annotated))
    return list(job), core_predictions


@pytest.mark.slow
@pytest.mark.parametrize("flat, where", [(False, "the corrected slice 2"), (True, "the image")])
def test_a_retrain_names_the_slices_of_the_image_not_its_focus_copies(flat, where, monkeypatch):
    # 1b3a58a: "...on every pixel of the training slices 0, 8, 16 and 24" of a 6-slice stack ("0-1 and 3-4" of a 2-D
    # image), from a prediction of up to 4 copies of one slice made besides the one scoring the corrections
    from napari_unet._widgets.jobs import CorrectionsLearned

    events, core_predictions = _retrain_job(flat, monkeypatch)
    finished, learned = events[-2], events[-1]
    assert isinstance(finished, TrainingFinished) and isinstance(learned, CorrectionsLearned)
    assert finished.one_class_note == "" and finished.kappa is None  # the core's check is off for a Retrain
    assert core_predictions == []  # no prediction after the steps but the corrections' (S1: +35-40 % of a Retrain)
    assert learned.one_class_note == _one_class_note(where, subject="the retrained model")
    assert learned.agreement.pixels == 100


@pytest.mark.slow
def test_a_retrain_that_learnt_is_not_flagged(monkeypatch):
    from napari_unet._widgets.jobs import CorrectionsLearned

    events, _ = _retrain_job(False, monkeypatch, sabotage=False)
    assert isinstance(events[-1], CorrectionsLearned) and events[-1].one_class_note == ""


def test_the_retrain_score_judges_the_annotated_pixels_of_the_corrected_slices(monkeypatch):
    """score_retrained: one prediction gives the corrections' agreement (as predict.agreement) and the verdict."""
    import napari_unet.predict as predict_module
    from napari_unet.retrain import correction_check, score_retrained

    model = tiny_model()
    image, values = stripes(n_slices=3, size=64)
    corrected = np.zeros(values.shape, bool)
    corrected[1, :8, :8] = True
    annotated = np.zeros(values.shape, bool)
    annotated[1] = True
    calls = []
    predict = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: calls.append(k) or predict(*a, **k))
    score = score_retrained(model, correction_check(image, values, corrected, annotated))
    assert len(calls) == 1 and calls[0]["slices"] == [1]
    expected = predict_module.agreement(model, image, values[[1]], corrected[[1]], [1])
    assert score.agreement == expected
    assert score.kappa > 0.5 and score.one_class is None and score.one_class_note == ""
    # labels the other way round: worse than chance
    swapped = np.where(values == 0, 255, 0).astype(values.dtype)
    score = score_retrained(model, correction_check(image, swapped, corrected, annotated))
    assert score.kappa < 0 and score.one_class is None
    assert score.one_class_note.startswith("the retrained model's labels of the corrected slice 1 agree with the "
                                           "annotations there (classes 0 and 255) no better than chance (Cohen's kappa -")
    # no annotated mask (an older caller): the agreement alone
    assert score_retrained(model, correction_check(image, values, corrected)).one_class_note == ""


@pytest.mark.gui
def test_the_training_widget_warns_of_a_retrained_model_of_one_class(widgets, notifications):
    from napari_unet._widgets.jobs import CorrectionsLearned
    from napari_unet._widgets.training import _Run
    from napari_unet.predict import Agreement
    from napari_unet.retrain import CorrectionCheck

    training = widgets.training
    widgets.session.set_model(tiny_model(), "the model before")
    run = _Run(kind="retraining", worker=None, stop=threading.Event(), budget=None, names=None, colormap=None,
               started=time.perf_counter(), steps_per_epoch=2)
    training._run = run
    try:
        training._handle(TrainingFinished(model=dataclasses.replace(tiny_model()), reason="completed", best_epoch=1, steps=2))
        note = _one_class_note("the corrected slice 2", subject="the retrained model")
        check = CorrectionCheck(None, np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool), 16, (2,))
        training._handle(CorrectionsLearned(Agreement(16, 0.25, 0.25), check, False, note))
    finally:
        training._run = None
    status = training.progress.status.text()
    said = f"{note} (the Retrain learning rate and steps in the settings). Previous model brings back the model before it"
    assert f"as you painted them. Warning: {said}." in status, status
    assert ("warning", f"napari-unet: {said}") in notifications


# ---- chance-level labels (S2) --------------------------------------------------------------------------------------

def test_cohen_kappa_and_the_verdict_of_chance_level_labels():
    from napari_unet.train import CHANCE_KAPPA, _check_labels, cohen_kappa, confusion_counts, useless_verdict

    rng = np.random.default_rng(0)
    truth = (rng.random((2, 64, 64)) < 0.2).astype(np.int8)  # 20 % of class 1
    assert cohen_kappa(confusion_counts(truth, truth, 2)) == 1.0
    assert cohen_kappa(confusion_counts(np.zeros_like(truth), truth, 2)) == 0.0  # one class everywhere
    assert cohen_kappa(confusion_counts(1 - truth, truth, 2)) < -0.3
    assert cohen_kappa(np.zeros((2, 2))) is None and cohen_kappa(np.array([[5, 0], [0, 0]])) is None
    at_random = (rng.random(truth.shape) < 0.04).astype(np.int8)  # membrane lines drawn at random (lr 0.99, seed 1)
    only, counts = _check_labels(iter(at_random), truth, 2)
    assert only is None and abs(cohen_kappa(counts)) < CHANCE_KAPPA
    one_class, kappa, note = useless_verdict(only, counts, [0, 255], "the validation slice 5")
    assert one_class is None and kappa == cohen_kappa(counts)
    assert note == ("the model's labels of the validation slice 5 agree with the annotations there (classes 0 and 255) "
                    f"no better than chance (Cohen's kappa {round(kappa, 2) + 0.0:.2f}): it has not learnt to tell the "
                    f"classes apart, whatever its scores; {HINT}")
    assert "-0.00" not in useless_verdict(None, np.array([[100, 100], [101, 99]]), [0, 255], "x")[2]
    only, counts = _check_labels(iter(np.zeros_like(truth)), truth, 2)
    assert useless_verdict(only, counts, [0, 255], "the image") == (0, 0.0, _one_class_note("the image", value=0))
    # a weak but better-than-chance model (a short run) is not flagged
    noisy = np.where(rng.random(truth.shape) < 0.3, 1 - truth, truth)
    only, counts = _check_labels(iter(noisy), truth, 2, early_stop=False)
    assert useless_verdict(only, counts, [0, 255], "x")[2] == ""
    # one class annotated where it is checked: no sign, no kappa
    assert useless_verdict(None, confusion_counts(at_random, np.zeros_like(truth), 2), [0, 255], "x") == (None, None, "")


def _scribbles_at_chance(per_class: tuple) -> tuple:
    """(truth, labels): 2 slices of 64² whose annotated pixels are ``per_class`` pixels of classes 0 and 255 (strokes
    across the first slice), labelled half 0 and half 255 whatever their class (Cohen's kappa 0), 0 elsewhere."""
    truth = np.full((2, 64, 64), -1, np.int16)
    labels = np.zeros((2, 64, 64), np.uint8)
    flat_truth, flat_labels = truth.reshape(-1), labels.reshape(-1)
    start = 0
    for value, n in zip((0, 255), per_class):
        flat_truth[start:start + n] = value
        flat_labels[start:start + n:2] = 255
        start += n
    return truth, labels


def test_the_chance_verdict_needs_enough_annotated_pixels_of_two_classes():
    # review 3 S1: 2 annotated pixels, 1 labelled right, gave kappa 0 and the chance-level warning: a few strokes or
    # painted corrections are noise, not a sign (the one-class verdict stays)
    from napari_unet.train import CHANCE_MIN_PIXELS, confusion_counts, labels_verdict, useless_verdict

    def verdict(per_class):
        truth, labels = _scribbles_at_chance(per_class)
        return labels_verdict(labels, truth, truth >= 0, [0, 255], "the validation slices 0-1")

    assert useless_verdict(None, np.array([[1, 0], [1, 0]]), [0, 255], "x") == (None, 0.0, "")
    for few in [(2, 2), (CHANCE_MIN_PIXELS - 1, CHANCE_MIN_PIXELS - 1), (4000, CHANCE_MIN_PIXELS - 1)]:
        one_class, kappa, note = verdict(few)
        assert one_class is None and abs(kappa) < 0.01 and note == "", few
    one_class, kappa, note = verdict((CHANCE_MIN_PIXELS, CHANCE_MIN_PIXELS))
    assert one_class is None and kappa == 0.0
    assert note.startswith("the model's labels of the validation slices 0-1 agree with the annotations there (classes "
                           "0 and 255) no better than chance (Cohen's kappa 0.00)")
    # one class everywhere is flagged on however few pixels
    truth = np.array([[[0, 1, -1]]])
    only, counts = 0, confusion_counts(np.zeros_like(truth), truth, 2)
    assert useless_verdict(only, counts, [0, 255], "the image") == (0, 0.0, _one_class_note("the image", value=0))


@pytest.mark.slow
def test_a_model_whose_labels_are_at_chance_is_flagged(monkeypatch):
    # 1b3a58a flagged one class everywhere only: lr 0.99 gave models whose membrane rule drew lines at random (kappa
    # -0.007 and 0.000 on the validation; V_rand 0.02-0.07) with no word
    import napari_unet.train as train_module

    predict = train_module.predict
    rng = np.random.default_rng(1)

    def at_random(*args, **kwargs):
        result = predict(*args, **kwargs)
        noise = rng.random(result.probabilities.shape[:-1], np.float32) < 0.1
        probabilities = np.stack([noise, ~noise], -1).astype(np.float32)
        return SimpleNamespace(probabilities=probabilities)

    monkeypatch.setattr(train_module, "predict", at_random)
    image, labels = stripes(n_slices=4, size=64)
    final = list(train_events(image, labels, *tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0)))[-1]
    assert final.reason == "completed" and final.one_class is None and abs(final.kappa) < 0.05
    assert final.one_class_note.startswith("the model's labels of the training slices 0-3 agree with the annotations "
                                           "there (classes 0 and 255) no better than chance (Cohen's kappa ")


@pytest.mark.slow
def test_the_check_can_be_turned_off():
    import napari_unet.train as train_module

    image, labels = stripes(n_slices=4, size=64)
    events = train_events(image, labels, *tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0), check_one_class=False)
    final = list(_sabotaged(events, at_step=2))[-1]
    assert final.one_class is None and final.one_class_note == "" and final.kappa is None
    assert "check_one_class" in train_module.train.__code__.co_varnames


# ---- the paths and their wordings (S4, N2) ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("case, where", [
    ("context slices", "the training slices 0, 2-3 and 5"),  # the whole stack predicted, its chosen planes checked
    ("2-D image", "the image"),
    ("2-D image, validation columns", "the validation columns (96 and up)"),
    ("large validation slice", "a window of the validation slice 1 (rows 32-543 and columns 32-543)"),
    ("large training slices", "a window of the training slices 0-1 (rows 32-543 and columns 32-543)"),
])
def test_the_note_names_what_was_checked(case, where):
    from napari_unet.config import ModelConfig

    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2, val_fraction=0.0)
    image, labels = stripes(n_slices=6, size=64)
    if case == "context slices":
        model_config = ModelConfig(depth=2, base_filters=8, context_slices=1)
    elif case.startswith("2-D"):
        image, labels = stripes(n_slices=1, size=128)
        image, labels = image[0], labels[0]
        if "validation" in case:
            train_config = train_config.replace(val_fraction=0.25)
    else:  # a window of 512² of each plane checked (the membrane rule: 8.1 s on a whole 2048² plane)
        image, labels = stripes(n_slices=2, size=576)
        if "validation" in case:
            train_config = train_config.replace(val_fraction=0.5)
    final = list(_sabotaged(train_events(image, labels, model_config, train_config), at_step=2))[-1]
    assert final.one_class_note == _one_class_note(where)
    assert final.one_class == 255 and final.kappa == 0.0


@pytest.mark.slow
def test_with_a_tuned_membrane_rule_the_flagged_class_is_the_one_predict_writes():
    # argmax says membrane (0.65) everywhere; the rule tuned on the validation decides what predict writes
    from napari_unet.predict import predict

    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=2)
    final = list(_sabotaged(train_events(image, labels, model_config, train_config), at_step=2, k=0, share=0.65))[-1]
    assert final.model.boundary_rule is not None  # tuned on the validation slice
    written = np.unique(predict(final.model, image[3], tta=False).labels)
    assert np.unique(predict(final.model, image[3], tta=False, close_boundaries=False).labels).tolist() == [0]
    assert written.tolist() == [255] and final.one_class == 255  # the rule (threshold 0.7) turned it
    assert final.one_class_note == _one_class_note("the validation slice 3", value=written[0])
    assert final.kappa == 0.0


def test_the_membrane_rule_runs_on_a_window_of_at_most_512_squared_a_plane(monkeypatch):
    # 1b3a58a applied it to the whole validation plane: 8.1 s at 2048², with the rule the lr-0.99 runs tuned
    import napari_unet.train as train_module

    shapes = []
    monkeypatch.setattr(train_module, "tiled_boundary_mask", lambda plane, **rule: shapes.append(plane.shape) or np.zeros(plane.shape, bool))
    model = SimpleNamespace(boundary_value=0, class_values=[0, 255], boundary_rule={"threshold": 0.7, "merge_below": 0.5})
    probabilities = np.zeros((1, 2048, 2048, 2), np.float32)
    probabilities[..., 0] = 0.9  # membrane everywhere by argmax; cells by this rule (never membrane)
    probabilities[..., 1] = 0.1
    truth = np.zeros((1, 2048, 2048), np.int8)
    truth[:, ::4] = 1
    verdict = train_module._check_model(model, None, [0], truth, probabilities, [5], "validation", (0, 0), False, None, 0,
                                        [0, 255], 0, None)
    assert shapes == [(512, 512)]
    assert verdict == (255, 0.0, _one_class_note("a window of the validation slice 5 (rows 768-1279 and columns 768-1279)"))


# ---- divergences in epochs that validation skipped (fb3824c; N7) -------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("average, kept", [(None, "best epoch 3 by training loss"), (0.3, "mean of the last 2 epochs")])
def test_a_divergence_after_several_unvalidated_epochs_keeps_the_lowest_training_loss_or_the_average(average, kept):
    # a validated run whose epoch was chosen by training loss said "best epoch 3", as if validation had chosen it
    image, labels = stripes(n_slices=4, size=64)
    extra = {} if average is None else {"average_weights_from": average}
    model_config, train_config = tiny_configs(epochs=5, steps_per_epoch=3, val_every=5, **extra)
    network, final = None, None
    for event in train_events(image, labels, model_config, train_config):
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model
        if isinstance(event, TrainingStep) and event.step == 10:  # epoch 4: nothing validated yet
            network.set_weights([np.full_like(w, np.nan) if np.issubdtype(w.dtype, np.floating) else w
                                 for w in network.get_weights()])
        final = event
    assert final.reason == "diverged" and final.kept == kept
    assert all(np.isfinite(w).all() for w in final.model.keras_model.get_weights())
    losses = [record["loss"] for record in final.history]
    if average is None:
        assert final.best_epoch == 1 + int(np.argmin(losses)) and final.by_training_loss and final.averaged_epochs == 0
    else:
        assert final.averaged_epochs == 2 and not final.by_training_loss
