"""The correction loop in the GUI: train -> predict -> paint corrections -> retrain -> predict."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import tifffile

from conftest import em_data, em_labels_layer_data, run_and_wait, tiny_settings

pytestmark = pytest.mark.gui

SQUARE = (0, slice(40, 64), slice(40, 64))
MEMBRANE, CELL = 1, 2  # display values of the EM classes (file values 0 and 255)
_YY, _XX = np.mgrid[:128, :128]
DISK = (_YY - 52) ** 2 + (_XX - 52) ** 2 <= 11**2  # on slice 0: a dark organelle inside a cell


@pytest.fixture
def loop_viewer(make_napari_viewer):
    """EM stack with a dark, membrane-like disk that is really cell interior (like a mitochondrion).

    The annotations cover slices 0-1 except the disk; slice 2 is not annotated (display 0).
    """
    image, labels = em_data(3, 128, seed=1)
    rng = np.random.default_rng(0)
    image, labels = image.copy(), labels.copy()
    image[0][DISK] = np.clip(70 + rng.normal(0, 8, DISK.sum()), 0, 255).astype(np.uint8)
    labels[0][DISK] = 255
    display, meta = em_labels_layer_data(labels)
    display[0][DISK] = 0
    display[2] = 0
    viewer = make_napari_viewer()
    viewer.add_image(image, name="EM")
    viewer.add_labels(display, name="EM labels", metadata=meta)
    return viewer


@pytest.fixture
def loop(loop_viewer, qtbot):
    from napari_unet._widgets import InferenceWidget, TrainingWidget, get_session

    training, inference = TrainingWidget(loop_viewer), InferenceWidget(loop_viewer)
    loop_viewer.window.add_dock_widget(training)
    loop_viewer.window.add_dock_widget(inference)
    yield training, inference, get_session(loop_viewer)
    training.stop()
    inference.stop()
    qtbot.waitUntil(lambda: training._run is None and inference._job is None, timeout=120_000)


def paint_disk(layer, label, brush=6):
    """Brush strokes inside DISK through the layer's paint API (fires ``events.paint``)."""
    layer.brush_size = brush
    with layer.block_history():  # one stroke = one undo step, like a mouse drag
        for y, x in np.argwhere(DISK)[::7]:
            if (y - 52) ** 2 + (x - 52) ** 2 <= (11 - brush // 2) ** 2:
                layer.paint((0, y, x), label, refresh=False)
    layer.refresh()


def tracked_prediction(make_napari_viewer, data):
    """A viewer with an image "EM" and a tracked prediction layer of display values ``data`` (classes 0/255)."""
    from napari_unet._widgets import get_session

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros(data.shape, np.uint8), name="EM")
    prediction = viewer.add_labels(data, name="EM prediction", metadata={"class_values": [0, 255]})
    session = get_session(viewer)
    session.track(prediction, image)
    return viewer, image, prediction, session


def test_painted_corrections_retrain_the_model(loop_viewer, loop, qtbot, notifications):
    viewer = loop_viewer
    training, inference, session = loop
    tiny_settings(training, epochs=3, steps=15)
    training.settings.retrain_steps.setValue(60)
    training.settings.retrain_batch.setValue(4)
    inference.tta.setCurrentText("off")  # "auto" differs by CPU; the thresholds below were set for one view
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    first_model = session.model
    assert first_model is not None and first_model.class_values == [0, 255]

    # Predict the stack: display values + class metadata, so the layer works as training labels.
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    prediction = viewer.layers["EM prediction"]
    assert prediction.metadata["class_values"] == [0, 255]
    assert set(np.unique(prediction.data)) <= {MEMBRANE, CELL}
    assert session.reviewed(prediction) is not None and not session.reviewed(prediction).any()
    original = viewer.layers["EM labels"].data
    annotated = original > 0
    disk_before = np.mean(prediction.data[0][DISK] == CELL)
    agreement_before = np.mean(prediction.data[annotated] == original[annotated])

    # The user paints the disk as cell, and a few pixels on the unannotated slice 2.
    before_paint = prediction.data.copy()
    paint_disk(prediction, CELL)
    prediction.brush_size = 3
    prediction.paint((2, 100, 100), CELL if before_paint[2, 100, 100] != CELL else MEMBRANE)
    painted = before_paint != prediction.data
    reviewed = session.reviewed(prediction)
    assert painted[0][DISK].sum() > 100 and painted[2].any()
    assert reviewed[painted].all(), "every pixel a stroke changed counts as reviewed"
    under_brush = np.zeros_like(reviewed)
    under_brush[0][(_YY - 52) ** 2 + (_XX - 52) ** 2 <= 12**2], under_brush[2, 99:102, 99:102] = True, True
    assert not reviewed[~under_brush].any(), "only pixels under the user's brush count as reviewed"
    assert (prediction.data[0][reviewed[0]] == CELL).all()  # also those that were cell already (no paint event)

    # Retrain labels: original annotations, overridden by painted pixels; unpainted predictions unused.
    job = training.prepare(retrain=True)
    labels, ignore = job.labels[:3], job.train_config.ignore_value
    assert job.init is first_model and job.model_config is None
    assert job.train_config.val_fraction == 0 and job.train_config.epochs == 1
    assert np.all(labels[reviewed] == np.where(prediction.data[reviewed] == CELL, 255, 0))
    assert np.array_equal(labels[2] != ignore, reviewed[2])  # slice 2: painted pixels only
    unpainted = annotated & ~reviewed
    assert np.array_equal(labels[unpainted], np.where(original[unpainted] == MEMBRANE, 0, 255))
    assert np.all(labels[~annotated & ~reviewed] == ignore)  # unreviewed predictions are not ground truth
    assert len(job.labels) > 3  # extra focus slices: the corrections are oversampled

    # Retrain (fine-tune from the current weights) and predict again without keeping corrections.
    seconds = run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    print(f"\nfirst retrain (tiny model, {training.settings.retrain_steps.value()} steps): {seconds:.1f} s")
    assert session.model is not first_model and "retrained" in session.info.description
    after_paint = prediction.data.copy()
    inference.keep.setChecked(False)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    painted_cell = reviewed & (after_paint == CELL)
    follows = np.mean(prediction.data[painted_cell] == CELL)
    disk_after = np.mean(prediction.data[0][DISK] == CELL)
    agreement = np.mean(prediction.data[annotated] == original[annotated])
    # The network learned the correction; the widget's labels also follow the membrane rule the model keeps from its
    # first training (retraining has no validation slices to tune one), which draws some borders inside the disk.
    from napari_unet.predict import predict

    plain = predict(session.model, viewer.layers["EM"].data, tta=False, close_boundaries=False).labels
    follows_plain = np.mean(plain[painted_cell] == 255)
    assert session.model.boundary_rule == first_model.boundary_rule
    print(f"painted pixels predicted as painted: {np.mean(before_paint[painted_cell] == CELL):.2f} before, {follows:.2f} after retraining "
          f"({follows_plain:.2f} without the membrane rule {session.model.boundary_rule})")
    print(f"whole disk predicted as cell: {disk_before:.2f} before the correction, {disk_after:.2f} after retraining")
    print(f"agreement with the annotations elsewhere: {agreement_before:.3f} before, {agreement:.3f} after")
    assert follows_plain >= 0.9, "the network's prediction of the painted pixels follows the correction"
    # the status says how much of the corrections the retrained network learned (before: none, by definition)
    import re

    # (the rule's share too when it differs: "...; its membrane rule, which the next prediction applies, L%")
    said = re.search(r"retrained (?:network|model) labels (\d+)% of your (\d+) corrected pixels as you painted them",
                     training.progress.status.text())
    assert said, training.progress.status.text()
    painted_values = np.where(after_paint[reviewed] == CELL, 255, 0)
    assert int(said.group(2)) == reviewed.sum()
    assert int(said.group(1)) == pytest.approx(100 * np.mean(plain[reviewed] == painted_values), abs=1.5)
    assert follows >= 0.8, "the labels of the painted pixels follow the correction"
    assert disk_after > disk_before + 0.2
    assert agreement > agreement_before - 0.05  # the original annotations still hold
    # Overwritten corrections are predictions again, not ground truth.
    assert not np.any(session.reviewed(prediction) & (after_paint != prediction.data))

    # The update of the existing layer is one undo step: Ctrl+Z brings the painted state back, corrections included.
    prediction.undo()
    assert np.array_equal(prediction.data, after_paint)
    assert np.array_equal(session.reviewed(prediction), reviewed), "undone overwrites give the corrections back"
    assert not [m for s, m in notifications if s.lower().endswith("error")]


def predict_and_paint_the_square_wrong(viewer, training, inference, qtbot):
    """Train a tiny model, predict, then set SQUARE to the opposite class (one data_setitem edit).

    Returns the prediction layer and the values written into SQUARE.
    """
    tiny_settings(training, epochs=1, steps=5)
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    prediction = viewer.layers["EM prediction"]
    wrong = np.where(prediction.data[SQUARE] == MEMBRANE, CELL, MEMBRANE)  # the opposite of the prediction
    z, rows, cols = SQUARE
    ys, xs = np.mgrid[rows, cols]
    prediction.data_setitem((np.full(ys.size, z), ys.ravel(), xs.ravel()), wrong.ravel())
    return prediction, wrong


def test_predictions_keep_corrections_and_mark_slice_reviewed(loop_viewer, loop, qtbot):
    viewer = loop_viewer
    training, inference, session = loop
    prediction, wrong = predict_and_paint_the_square_wrong(viewer, training, inference, qtbot)
    assert session.reviewed(prediction)[SQUARE].all()
    prediction.undo()  # a wrong correction taken back is not a correction
    assert not session.reviewed(prediction)[SQUARE].any()
    prediction.redo()
    assert session.reviewed(prediction)[SQUARE].all()
    # Re-running keeps the corrected pixels (default) and writes into the same layer.
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    assert len(viewer.layers) == n_layers
    assert np.array_equal(prediction.data[SQUARE], wrong)
    # Accepting a whole slice makes its predicted pixels count for Retrain.
    viewer.dims.set_current_step(0, 2)
    viewer.layers.selection.active = prediction
    assert inference.mark_reviewed()
    assert session.reviewed(prediction)[2].all() and not session.reviewed(prediction)[1].any()
    # Retrain: accepted pixels are annotations; only painted ones are corrections, focused on and weighed more
    painted = session.painted(prediction)
    assert painted[0].any() and not painted[2].any()
    weights = training.prepare(retrain=True).pixel_weights
    assert (weights[0][painted[0]] > 0).all() and not weights[0][~painted[0]].any() and not weights[1:3].any()
    # Unmark slice takes the acceptance back (there is no undo for it)...
    assert inference.unmark_reviewed()
    assert not session.reviewed(prediction)[2].any()
    assert not inference.unmark_reviewed(), "nothing left to take back"
    assert inference.mark_reviewed()
    # ...and keeps the pixels painted on that slice
    viewer.dims.set_current_step(0, 0)
    assert inference.mark_reviewed() and session.reviewed(prediction)[0].all()
    assert inference.unmark_reviewed()
    np.testing.assert_array_equal(session.reviewed(prediction)[0], painted[0])
    assert session.mark_reviewed(prediction, (0, SQUARE[1], SQUARE[2]))  # only painted pixels accepted: still unmarkable
    assert inference.unmark_reviewed() and "no longer marked reviewed: 0 pixels" in inference.progress.status.text()
    viewer.dims.set_current_step(0, 2)
    # Unlabelled pixels (never predicted, or erased) are not accepted: a later Run must fill them.
    erased = (1, slice(0, 4), slice(0, 4))
    prediction.data[erased] = 0
    viewer.dims.set_current_step(0, 1)
    assert inference.mark_reviewed()
    assert not session.reviewed(prediction)[erased].any() and session.reviewed(prediction)[1].sum() == prediction.data[1].size - 16
    prediction.data[1] = 0  # no longer the accepted values: not reviewed any more
    assert not inference.mark_reviewed(), "a slice without labels has nothing to review"
    assert not session.reviewed(prediction)[1].any()
    labels = training.prepare(retrain=True).labels
    assert np.array_equal(labels[2], np.where(prediction.data[2] == MEMBRANE, 0, 255))


@pytest.mark.slow
def test_first_retrain_on_the_default_preset_is_quick(loop_viewer, loop, qtbot):
    """Default preset architecture: the first Retrain must take well under a minute."""
    from napari_unet.config import preset

    viewer = loop_viewer
    training, inference, session = loop
    settings = training.settings
    settings.preset.setCurrentText("default")
    settings.epochs.setValue(1)
    settings.steps.setValue(2)
    settings.patch.setValue(128)
    settings.batch.setValue(2)
    settings.validation.setValue(0)
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    assert session.model.config == dataclasses.replace(preset("default").model, n_classes=2)
    inference.scope.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 0)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    paint_disk(viewer.layers["EM prediction"], CELL)
    t0 = time.perf_counter()
    seconds = run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    print(
        f"\nfirst retrain on the default preset ({settings.retrain_steps.value()} steps, patch "
        f"{settings.retrain_patch.value()}, batch {settings.retrain_batch.value()}): {seconds:.1f} s"
    )
    assert "retrained" in session.info.description
    assert time.perf_counter() - t0 < 60


def test_saved_prediction_reopens_with_its_corrections(loop_viewer, loop, qtbot, tmp_path, notifications):
    """Paint, save the prediction layer (Save prediction: the napari-unet writer), close it, open the file
    again: the painted pixels still count for Retrain and are still kept by a new prediction."""
    viewer = loop_viewer
    training, inference, session = loop
    prediction, wrong = predict_and_paint_the_square_wrong(viewer, training, inference, qtbot)
    assert session.reviewed(prediction).sum() == wrong.size
    viewer.dims.set_current_step(0, 2)
    viewer.layers.selection.active = prediction
    assert inference.mark_reviewed()  # accepted, not painted: the file keeps the difference
    painted, reviewed = session.painted(prediction), session.reviewed(prediction)
    assert painted.sum() == wrong.size and reviewed[2].all()
    assert inference.save_prediction(tmp_path / "missing folder" / "x.tif") is None
    assert any("could not save" in message for _, message in notifications), notifications
    viewer.layers["EM"].name = "EM stack"  # after predicting: the file must name the image as it is called now
    path = tmp_path / "EM prediction.tif"
    assert inference.save_prediction(path) == str(path)
    assert "Saved 'EM prediction'" in inference.progress.status.text()
    assert inference.save_prediction(tmp_path / "typed without suffix") == str(tmp_path / "typed without suffix.tif")
    assert inference.save_prediction(tmp_path / "typed without suffix") is None  # never replaced unasked
    assert any("typed without suffix.tif exists" in message for _, message in notifications)
    assert inference.save_prediction(tmp_path / "x.png") is None and not (tmp_path / "x.png.tif").exists()  # as napari's dialog
    assert "give a name ending in .tif" in inference.progress.status.text()
    np.testing.assert_array_equal(tifffile.imread(path)[SQUARE], np.where(wrong == MEMBRANE, 0, 255))  # file values
    viewer.layers.remove(prediction)
    assert session.corrected_layers(viewer.layers["EM stack"]) == []

    [reopened] = viewer.open(str(path), plugin="napari-unet")
    assert reopened.name == "EM prediction"
    np.testing.assert_array_equal(session.reviewed(reopened), reviewed)
    np.testing.assert_array_equal(session.painted(reopened), painted)
    viewer.layers.selection.active = reopened
    assert inference.unmark_reviewed() and not session.reviewed(reopened)[2].any()
    assert session.corrected_layers(viewer.layers["EM stack"]) == [reopened]
    reopened.paint((1, 5, 5), CELL if reopened.data[1, 5, 5] == MEMBRANE else MEMBRANE, refresh=False)  # corrections too
    assert session.reviewed(reopened)[1, 5, 5]

    n_layers = len(viewer.layers)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    assert len(viewer.layers) == n_layers, "the new prediction goes into the reopened layer"
    np.testing.assert_array_equal(reopened.data[SQUARE], wrong)
    labels = training.prepare(retrain=True).labels
    np.testing.assert_array_equal(labels[SQUARE], np.where(wrong == MEMBRANE, 0, 255))
    # A duplicate (Layers > Duplicate: a shallow copy of the metadata) is tracked on its own.
    from napari.layers import Layer

    data, state, kind = reopened.as_layer_data_tuple()
    copy = viewer.add_layer(Layer.create(data.copy(), {**state, "name": "EM prediction copy"}, kind))
    np.testing.assert_array_equal(session.reviewed(copy), session.reviewed(reopened))
    copy.paint((2, 60, 60), CELL if copy.data[2, 60, 60] == MEMBRANE else MEMBRANE, refresh=False)
    assert session.reviewed(copy)[2, 60, 60] and not session.reviewed(reopened)[2, 60, 60]


def test_undoing_a_stroke_gives_back_the_corrections_and_acceptance_under_it(make_napari_viewer):
    _, _, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 64, 64), CELL, np.uint8))

    def stroke(label, y, x):
        with prediction.block_history():
            prediction.paint((0, y, x), label, refresh=False)

    prediction.brush_size = 10
    stroke(MEMBRANE, 20, 20)  # a correction A
    first = session.reviewed(prediction).copy()
    assert first[0].sum() > 50
    stroke(CELL, 24, 24)  # a stroke B over part of A, then taken back
    prediction.undo()
    np.testing.assert_array_equal(session.reviewed(prediction), first)  # only B's own pixels were dropped before
    assert session.mark_reviewed(prediction, (1,)) == 64 * 64
    stroke(MEMBRANE, 30, 30)  # a wrong stroke on an accepted slice, taken back: the slice is accepted as it was
    prediction.undo()
    assert session.reviewed(prediction)[1].all()
    # erasing is no correction: the erased pixels are predicted again, and undoing the erase restores A
    stroke(0, 20, 20)
    assert not session.reviewed(prediction)[0][prediction.data[0] == 0].any()
    prediction.undo()
    np.testing.assert_array_equal(session.reviewed(prediction)[0], first[0])


def test_an_image_opened_again_finds_its_prediction_at_once(make_napari_viewer):
    # the removed image layer lives on in reference cycles until the garbage collector runs; until then its
    # prediction (and the corrections on it) belonged to the removed layer only: Retrain found no corrections
    import gc

    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 32, 32), CELL, np.uint8))
    gc.disable()
    try:
        viewer.layers.remove(image)
        again = viewer.add_image(np.zeros((2, 32, 32), np.uint8), name="EM")
        assert session.tracked_layers(again) == [prediction]
        other = viewer.add_image(np.zeros((2, 32, 32), np.uint8), name="other")
        assert session.tracked_layers(other) == []
    finally:
        gc.enable()


def test_a_prediction_that_ends_during_a_brush_stroke_waits_for_the_mouse_release(make_napari_viewer, qtbot):
    # napari groups a drag's edits until the mouse is released; the prediction was written into that group, so the
    # stroke's first part was overwritten (or, on another slice, committed as the widget's write: no correction)
    from _helpers import tiny_model
    from napari_unet._widgets import InferenceWidget, get_session

    viewer = make_napari_viewer()
    image, _ = em_data(3, 64, seed=2)
    viewer.add_image(image, name="EM")
    session = get_session(viewer)
    session.set_model(tiny_model(), "tiny")
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    prediction = viewer.layers["EM prediction"]
    predicted = prediction.data[2].copy()
    prediction.data[2] = 0  # slice 2 to be predicted again (as if erased)
    before = prediction.data.copy()
    viewer.dims.set_current_step(0, 2)
    inference.scope.setCurrentText("current slice")
    prediction.brush_size = 5
    stroke = prediction.block_history()  # the mouse goes down on slice 0 while slice 2 is predicted
    stroke.__enter__()
    try:
        assert inference.run()
        label = MEMBRANE if prediction.data[0, 20, 20] == CELL else CELL
        prediction.paint((0, 20, 20), label)
        qtbot.waitUntil(lambda: "brush stroke ends" in inference.progress.status.text(), timeout=120_000)
        qtbot.wait(300)
        np.testing.assert_array_equal(prediction.data[2], before[2])  # not written while the button is down
        assert inference._job is not None and not inference.run_button.isEnabled() and session.busy  # still running
        prediction.paint((0, 20, 30), label)
    finally:
        stroke.__exit__(None, None, None)  # released
    qtbot.waitUntil(lambda: "pixels updated" in inference.progress.status.text(), timeout=10_000)
    qtbot.waitUntil(lambda: inference._job is None and not session.busy, timeout=10_000)
    assert inference.run_button.isEnabled()
    np.testing.assert_array_equal(prediction.data[2], predicted)
    rows, cols = np.indices(prediction.data.shape[1:])
    painted = np.zeros(prediction.data.shape, bool)  # the brush's two dabs (pixels between them may be predicted as label)
    painted[0] = ((rows - 20) ** 2 + (cols - 20) ** 2 <= 4) | ((rows - 20) ** 2 + (cols - 30) ** 2 <= 4)
    assert (prediction.data[painted] == label).all()
    assert painted.sum() > 20 and session.reviewed(prediction)[painted].all()  # the whole stroke is a correction
    # Stop while the result waits: "no layer will be changed" (it was written when the stroke ended)
    prediction.data[2] = 0
    before = prediction.data.copy()
    stroke = prediction.block_history()
    stroke.__enter__()
    try:
        assert inference.run()
        qtbot.waitUntil(lambda: "brush stroke ends" in inference.progress.status.text(), timeout=120_000)
        inference.stop()
    finally:
        stroke.__exit__(None, None, None)
    qtbot.waitUntil(lambda: inference._job is None and not session.busy, timeout=10_000)
    np.testing.assert_array_equal(prediction.data, before)
    assert inference.progress.status.text() == "Prediction stopped; no layer was changed." and inference.run_button.isEnabled()


def test_a_stroke_counts_every_pixel_it_paints_also_those_that_held_its_label(make_napari_viewer):
    # napari's paint events carry only changed pixels: a membrane line drawn across a gap counted where the gap was,
    # and the next prediction with "keep my corrections" broke the user's line again
    from napari_unet._widgets.tracked import CONFIRMED_PRUNE_AT

    data = np.full((2, 32, 32), CELL, np.uint8)
    data[0, :, :16] = MEMBRANE
    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, data)
    prediction.brush_size = 1

    def stroke(label, y, xs):
        with prediction.block_history():  # one drag
            for x in xs:
                prediction.paint((0, y, x), label, refresh=False)

    stroke(MEMBRANE, 10, range(2, 30))  # across the membrane half and the cell half
    line = np.zeros((2, 32, 32), bool)
    line[0, 10, 2:30] = True
    np.testing.assert_array_equal(session.reviewed(prediction), line)
    prediction.undo()
    assert not session.reviewed(prediction).any()  # an undone stroke is no correction, also where nothing changed
    prediction.redo()
    np.testing.assert_array_equal(session.reviewed(prediction), line)
    stroke(MEMBRANE, 20, range(2, 10))  # only over pixels that were membrane: no napari history item, still a correction
    assert session.reviewed(prediction)[0, 20, 2:10].all()
    stroke(MEMBRANE, 10, range(0, 32))  # over the first line again, then taken back: the first line still counts
    prediction.undo()
    np.testing.assert_array_equal(session.reviewed(prediction)[0, 10], line[0, 10])
    assert session.reviewed(prediction)[0, 20, 2:10].all()  # not part of the stroke taken back
    prediction.paint((1, 5, 5), CELL)  # a click outside a drag, over its own label
    assert session.reviewed(prediction)[1, 5, 5]
    reviewed = session.reviewed(prediction).copy()
    prediction._begin_stroke()  # a stroke napari 0.9 cancels (Escape during an encircle): no correction
    for x in range(2, 30):
        prediction.paint((0, 25, x), MEMBRANE, refresh=False)
    prediction._abort_stroke()
    np.testing.assert_array_equal(session.reviewed(prediction), reviewed)
    record = session.record(prediction)
    prediction.brush_size = 3
    for x in range(400):  # each click over the last one's membrane and new cell: ties beyond napari's undo limit go
        prediction.paint((1, 1 + (x // 30) % 30, 1 + x % 30), MEMBRANE if (x // 30) % 2 else CELL)
    assert CONFIRMED_PRUNE_AT // 2 < len(record.confirmed) <= CONFIRMED_PRUNE_AT
    from types import SimpleNamespace

    from napari_unet._widgets.outputs import write_prediction
    from napari_unet._widgets.session import ModelInfo

    cell = np.full((2, 32, 32), 255, np.uint8)
    write_prediction(viewer, session, image, cell, SimpleNamespace(class_values=[0, 255]), ModelInfo(), None, keep_corrections=True)
    assert (prediction.data[0, 10, 2:30] == MEMBRANE).all()  # the whole line kept, not only the part that was cell


def test_values_a_prediction_writes_are_no_longer_the_users(make_napari_viewer):
    # the marks keep every value the user gave a pixel; a prediction writing one of them back made an erased or
    # rejected value count as reviewed again
    from types import SimpleNamespace

    from napari_unet._widgets import get_session
    from napari_unet._widgets.outputs import write_prediction
    from napari_unet._widgets.session import ModelInfo

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((1, 16, 16), np.uint8), name="EM")
    session, model = get_session(viewer), SimpleNamespace(class_values=[0, 255])
    cell = np.full((1, 16, 16), 255, np.uint8)
    prediction, _ = write_prediction(viewer, session, image, cell, model, ModelInfo(), None)
    assert session.mark_reviewed(prediction, (0,)) == 256
    with prediction.block_history():
        prediction.paint((0, 2, 2), 0)  # erased: not annotated, to be predicted again
        prediction.paint((0, 12, 12), MEMBRANE)  # a correction, to be overwritten with "keep my corrections" off
    erased, corrected = prediction.data[0] == 0, prediction.data[0] == MEMBRANE
    write_prediction(viewer, session, image, cell, model, ModelInfo(), None, keep_corrections=True)
    reviewed = session.reviewed(prediction)[0]
    assert not reviewed[erased].any() and reviewed[corrected].all() and np.all(prediction.data[0][erased] == CELL)
    write_prediction(viewer, session, image, cell, model, ModelInfo(), None, keep_corrections=False)
    assert not session.reviewed(prediction)[0][corrected].any(), "the value the user rejected counted again"
    assert session.reviewed(prediction)[0][~(erased | corrected)].all()  # the accepted rest is untouched
    prediction.undo()  # the overwrite taken back: the correction counts again
    assert session.reviewed(prediction)[0][corrected].all()


def test_retrain_names_a_painted_display_label_beyond_the_classes(make_napari_viewer):
    # Labels above 8 leave no correction mark (the marks of a 2-class layer are 8 bits wide), so Retrain said "no
    # corrections to learn from ... paint the right classes", not which label is wrong.
    from _helpers import tiny_model
    from napari_unet._widgets.prepare import prepare_retrain
    from napari_unet.labels import LabelError

    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, np.ones((2, 32, 32), np.uint8))
    session.set_model(tiny_model(), "tiny")
    prediction.paint((0, 10, 10), 9, refresh=False)
    with pytest.raises(LabelError, match="prediction layer .* holds display label 9, which is no class: it has 2 classes"):
        prepare_retrain(viewer, session, image, None, False, lambda config: None)
    prediction.paint((0, 10, 10), 3, refresh=False)  # within the marks: read as a correction, named the same way
    with pytest.raises(LabelError, match="prediction layer .* holds display label 3, which is no class"):
        prepare_retrain(viewer, session, image, None, False, lambda config: None)
    prediction.paint((0, 10, 10), 0, refresh=False)  # erased: back to the plain message
    with pytest.raises(LabelError, match="no corrections to learn from"):
        prepare_retrain(viewer, session, image, None, False, lambda config: None)


def test_retrain_on_corrections_of_one_class_alone_is_refused(make_napari_viewer):
    # A model loaded for a new volume, one membrane stroke painted, Retrain: it trained, and the network's membrane share
    # went from 0.26 to 0.37 without a word (Train refuses labels of one class).
    from _helpers import stripes, tiny_model
    from napari_unet._widgets.prepare import prepare_retrain
    from napari_unet.labels import LabelError
    from napari_unet.config import TrainConfig
    from napari_unet.retrain import retrain_config

    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 96, 96), 2, np.uint8))
    image.data = stripes(n_slices=2)[0]
    session.set_model(tiny_model(), "tiny", class_names=["membrane", "cell"])
    prediction.brush_size = 3
    with prediction.block_history():
        for x in range(10, 60):
            prediction.paint((0, 30, x), 1, refresh=False)
    with pytest.raises(LabelError, match=r"hold only the class 0 \(membrane, label 1 in napari\): a Retrain on one class .* Mark slice reviewed"):
        prepare_retrain(viewer, session, image, None, False, lambda config, previous: retrain_config(TrainConfig(), config, previous))
    with prediction.block_history():
        prediction.paint((0, 60, 60), 2, refresh=False)  # a cell pixel painted too: two classes
    job = prepare_retrain(viewer, session, image, None, False, lambda config, previous: retrain_config(TrainConfig(), config, previous))
    assert set(np.unique(job.labels)) >= {0, 255}


def test_a_3d_view_is_refused_with_advice_that_fits_the_action(make_napari_viewer):
    # Mark slice reviewed advised "or choose the whole stack", a choice only Run has
    from napari_unet._widgets.layers import current_slice
    from napari_unet.data import InputError

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((3, 16, 16), np.uint8))
    assert current_slice(viewer, layer) == 1  # napari opens a stack at its middle slice
    viewer.dims.ndisplay = 3
    with pytest.raises(InputError, match="Y-X plane$"):
        current_slice(viewer, layer)
    with pytest.raises(InputError, match="Y-X plane, or choose the whole stack$"):
        current_slice(viewer, layer, ", or choose the whole stack")


def test_a_reopened_prediction_of_an_image_now_named_otherwise_is_used_once_selected(make_napari_viewer, tmp_path):
    # Day 2, the stack open as "EM_v2": Retrain said "no corrections to learn from: run inference..." also with the
    # reopened prediction selected, and never named it or the name it records
    from _helpers import tiny_model
    from napari_unet._widgets.prepare import prepare_retrain
    from napari_unet.config import TrainConfig
    from napari_unet.labels import LabelError

    data = np.full((2, 64, 64), CELL, np.uint8)
    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, data)
    with prediction.block_history():
        prediction.paint((0, 20, 20), MEMBRANE, refresh=False)
    with prediction.block_history():
        prediction.paint((0, 40, 40), CELL, refresh=False)  # two classes: a Retrain on one is refused
    painted = session.painted(prediction).sum()
    path = tmp_path / "pred.tif"
    viewer.layers.selection = {prediction}
    viewer.layers.save(str(path), selected=True, plugin="napari-unet")
    viewer.layers.remove(prediction)
    image.name = "EM_v2"
    [reopened] = viewer.open(str(path), plugin="napari-unet")
    session.set_model(tiny_model(), "tiny")
    viewer.layers.selection = {image}
    with pytest.raises(LabelError, match="prediction layer 'pred' were made on image 'EM'.*select 'pred'"):
        prepare_retrain(viewer, session, image, None, False, lambda config: None)
    viewer.layers.selection = {reopened}
    job = prepare_retrain(viewer, session, image, None, False, lambda model_config, previous: TrainConfig(patch_size=32))
    assert f"{painted} corrected pixels of 'pred'" in job.note and "(of it and" not in job.note
    assert job.pairs is reopened and session.corrected_layers(image) == []  # paired when the Retrain starts:
    session.track(job.pairs, image)  # as TrainingWidget.start does
    assert session.corrected_layers(image) == [reopened]  # paired with "EM_v2" from now on
    labels = viewer.add_labels(np.full(data.shape, 2, np.uint8), name="EM labels", metadata={"class_values": [0, 255]})
    job = prepare_retrain(viewer, session, image, labels, False, lambda model_config, previous: TrainConfig(patch_size=32))
    assert "other annotated pixels (of it and 'EM labels')" in job.note  # Retrain names the labels it pairs the image with
    assert job.pairs is None


def test_corrections_on_another_images_prediction_are_named_when_retrain_finds_none(make_napari_viewer):
    # painted on the test volume's prediction with the training widget still on the training volume: "run inference
    # on 'train-volume', paint..." sent the user to make a new prediction
    from _helpers import tiny_model
    from napari_unet._widgets.prepare import prepare_retrain
    from napari_unet.labels import LabelError

    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 64, 64), CELL, np.uint8))
    with prediction.block_history():
        prediction.paint((0, 20, 20), MEMBRANE, refresh=False)
    other = viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="train-volume")
    session.set_model(tiny_model(), "tiny")
    with pytest.raises(LabelError, match="the corrections on 'EM prediction' belong to image 'EM': choose 'EM'"):
        prepare_retrain(viewer, session, other, None, False, lambda config: None)


def test_undoing_a_stroke_and_then_an_earlier_prediction_run_leaves_no_correction(make_napari_viewer):
    # the stroke's mark outlived its undo: undoing the run before it gave the value back, and Retrain weighed the
    # pixels as corrections the user had taken back
    from napari_unet._widgets.outputs import write_labels_undoable

    _, _, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 64, 64), CELL, np.uint8))
    second_run = prediction.data.copy()
    second_run[1, 10:50, 10:50] = MEMBRANE
    with session.muted(prediction):  # a second prediction run, without keeping corrections, as write_prediction does
        changed = write_labels_undoable(prediction, None, second_run)
    session.record(prediction).unmark(..., changed)
    prediction.brush_size = 10
    with prediction.block_history():  # a stroke giving back the first run's value
        prediction.paint((1, 30, 30), CELL, refresh=False)
    assert session.reviewed(prediction)[1].sum() > 50
    prediction.undo()  # the stroke
    assert not session.reviewed(prediction).any()
    prediction.undo()  # the second run
    np.testing.assert_array_equal(prediction.data, np.full((2, 64, 64), CELL, np.uint8))
    assert not session.reviewed(prediction).any()
    prediction.redo()
    prediction.redo()  # the stroke again: its correction again
    assert session.reviewed(prediction)[1].sum() > 50


def test_a_prediction_written_over_a_stack_keeps_2_bytes_a_changed_pixel_of_undo_history(make_napari_viewer):
    # napari's data_setitem kept int64 indices of every changed pixel, 26 bytes a pixel: a whole-stack run kept 286 MB
    # for a 12 x 1024² layer of 12 MB, and a 200 x 2048² stack would have kept 20 GB
    from napari_unet._widgets.outputs import write_labels_undoable

    rng = np.random.default_rng(0)
    first = rng.integers(1, 3, (4, 128, 128)).astype(np.uint8)
    _, _, prediction, session = tracked_prediction(make_napari_viewer, first.copy())
    second = np.where(rng.random(first.shape) < 0.5, 3 - first, first).astype(np.uint8)
    second[2] = first[2]  # an unchanged slice
    one_slice = np.full((128, 128), MEMBRANE, np.uint8)
    keep = np.zeros(first.shape, bool)
    keep[1, :10] = True  # kept corrections
    expected = np.where(keep, first, second)

    def history_bytes() -> int:  # indices (arrays, or slices of no size), old and new values
        parts = [part for atom in prediction._undo_history[-1] for part in (*atom[0], *atom[1:])]
        return sum(part.nbytes for part in parts if isinstance(part, np.ndarray))

    with session.muted(prediction):
        changed = write_labels_undoable(prediction, None, second, keep)
    np.testing.assert_array_equal(prediction.data, expected)
    assert changed.sum() == np.count_nonzero(expected != first)
    assert history_bytes() <= 2 * first[[0, 1, 3]].size  # the changed planes' boxes, old and new values
    with session.muted(prediction):
        write_labels_undoable(prediction, 3, one_slice)
    assert history_bytes() <= 2 * one_slice.size
    np.testing.assert_array_equal(prediction.data[3], one_slice)
    prediction.undo()
    np.testing.assert_array_equal(prediction.data, expected)
    prediction.undo()
    np.testing.assert_array_equal(prediction.data, first)
    prediction.redo()
    np.testing.assert_array_equal(prediction.data, expected)
    prediction.redo()
    np.testing.assert_array_equal(prediction.data[3], one_slice)


def test_another_image_of_the_same_name_gets_no_old_prediction_or_corrections(make_napari_viewer, tmp_path):
    # sampleB/image.tif opened after sampleA/image.tif was closed took A's prediction layer and its corrections:
    # Retrain trained B on A's painted labels
    viewer, image, prediction, session = tracked_prediction(make_napari_viewer, np.full((2, 32, 32), CELL, np.uint8))
    prediction.paint((0, 5, 5), MEMBRANE, refresh=False)
    viewer.layers.remove(image)
    other = viewer.add_image(np.ones((2, 32, 32), np.uint8), name="EM")  # other pixels, the same name
    assert session.tracked_layers(other) == []
    viewer.layers.remove(other)
    same = viewer.add_image(np.zeros((2, 32, 32), np.uint8), name="EM")  # the same pixels again: its prediction
    assert session.tracked_layers(same) == [prediction]
    session.track(prediction, same)
    same.data[0, :4] = 9  # edited in place (a filter, the console) before it is closed and opened again
    viewer.layers.remove(same)
    assert session.tracked_layers(viewer.add_image(same.data, name="EM")) == [prediction]
    # images opened from files: told apart by their files
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "image.tif", np.zeros((2, 32, 32), np.uint8))
    first = viewer.open(str(tmp_path / "a" / "image.tif"), plugin="napari-unet")[0]
    session.track(prediction, first)
    viewer.layers.remove(first)
    second = viewer.open(str(tmp_path / "b" / "image.tif"), plugin="napari-unet")[0]
    assert second.name == first.name and session.tracked_layers(second) == []
    viewer.layers.remove(second)
    again = viewer.open(str(tmp_path / "a" / "image.tif"), plugin="napari-unet")[0]
    assert session.tracked_layers(again) == [prediction]


def test_long_strokes_prune_their_history_ties_rarely(make_napari_viewer, monkeypatch):
    # every atom of a stroke is tied to napari's history; pruning at a fixed count then scanned the whole history at
    # each tie once the live atoms passed it: a stroke's end froze the GUI for seconds
    from napari_unet._widgets.tracked import Tracked

    _, _, prediction, session = tracked_prediction(make_napari_viewer, np.full((1, 256, 256), CELL, np.uint8))
    prunes = []
    forget = Tracked._forget_lost_atoms
    monkeypatch.setattr(Tracked, "_forget_lost_atoms", lambda self: (prunes.append(1), forget(self))[1])
    prediction.brush_size = 1
    for stroke in range(4):
        with prediction.block_history():
            for x in range(200):
                prediction.paint((0, 10 + stroke * 20 + x % 7, x), MEMBRANE if stroke % 2 == 0 else CELL, refresh=False)
    assert len(session.record(prediction).confirmed) > 256 and len(prunes) <= 4, len(prunes)
    assert session.reviewed(prediction).sum() > 500


def test_a_run_that_changes_no_pixel_does_not_offer_ctrl_z(make_napari_viewer, qtbot):
    """The status said "0 pixels updated (Ctrl+Z on the layer undoes it)" of a run that made no undo step: Ctrl+Z then
    undid the user's last correction stroke, whose pixels stopped counting as corrections."""
    from _helpers import tiny_model
    from napari_unet._widgets import InferenceWidget, get_session

    viewer = make_napari_viewer()
    image, _ = em_data(2, 64, seed=2)
    viewer.add_image(image, name="EM")
    get_session(viewer).set_model(tiny_model(), "tiny")
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference)
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    assert "pixels updated (a new layer)" in inference.progress.status.text()
    prediction = viewer.layers["EM prediction"]
    prediction.data[1, :4, :4] = 0  # as if erased: the next run changes these 16 pixels back
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    assert "'EM prediction': 16 pixels updated (Ctrl+Z on the layer undoes it)." in inference.progress.status.text()
    run_and_wait(qtbot, inference.run, lambda: inference._job is not None)
    status = inference.progress.status.text()
    assert "'EM prediction': no pixel changed (it held this prediction already)." in status and "Ctrl+Z" not in status


def test_the_undo_steps_of_runs_into_a_layer_are_bounded_in_bytes_and_the_latest_stays_undoable(make_napari_viewer, monkeypatch):
    """Each run into a retrained stack kept 2 bytes a changed pixel of undo (+10 MB a run on ISBI, 800 MB on a
    100 x 2048² stack), bounded by napari's 100 steps alone: an afternoon's loop on a large stack ran out of memory."""
    from napari_unet._widgets import outputs

    rng = np.random.default_rng(0)
    first = rng.integers(1, 3, (2, 64, 64)).astype(np.uint8)
    _, _, prediction, session = tracked_prediction(make_napari_viewer, first.copy())
    monkeypatch.setattr(outputs, "UNDO_BYTES", 3 * 2 * first.nbytes)  # three whole-stack runs besides the latest
    runs = [first]
    for _ in range(6):
        runs.append((3 - runs[-1]).astype(np.uint8))  # every pixel changes: 2 bytes a pixel of undo
        with session.muted(prediction):
            outputs.write_labels_undoable(prediction, None, runs[-1])
        prediction.paint((0, 5, 5), MEMBRANE)  # a stroke between runs (a few bytes)
    assert 4 <= len(prediction._undo_history) <= 8
    assert sum(outputs._atom_bytes(item) for item in prediction._undo_history) <= 4 * 2 * first.nbytes + 4096
    prediction.undo()  # the stroke, then the latest run: still undoable
    prediction.undo()
    np.testing.assert_array_equal(prediction.data[1], runs[-2][1])  # (slice 0 holds the stroke before it)
    steps = len(prediction._undo_history)
    assert outputs.bound_undo_memory(prediction, limit=0) == steps - 1 and len(prediction._undo_history) == 1
