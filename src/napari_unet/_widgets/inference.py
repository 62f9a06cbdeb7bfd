"""Inference dock widget: apply the session model (last trained or loaded) to an image layer."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QPushButton, QWidget

from napari_unet._writer import write_labels
from napari_unet.data import InputError
from napari_unet.hardware import FAST_CONV_GFLOPS, explain_auto_tta
from napari_unet.predict import PredictionProgress, check_layer_memory
from napari_unet.train import format_count

from .jobs import NETWORK_LABELS, Failed, Note, PredictionResult, predict_job, relay
from .layers import Image, LayerCombo, current_slice, image_array, pixel_size_of, read_roles
from .outputs import kept_indices, kept_pixels, prediction_layer_of, write_cells, write_prediction, write_probabilities
from .progress import WORKER_FINISHED, InOrder, ProgressRow, WrappingLabel, keep_focus_from_notifications, press_on_return, swap_buttons
from .session import WAITING_FOR_STROKE, disconnect_when_destroyed, get_session, unwrap
from .settings import form_values, on_form_change, restore_form
from .style import scrolling_layout, show_keyboard_focus
from .workers import create_worker_of

_log = logging.getLogger("napari_unet")

CURRENT, STACK = "current slice", "whole stack"
#: Milliseconds between looks whether the user still holds the mouse on a brush stroke, before a prediction is written.
STROKE_WAIT_MS = 100


@dataclass
class _Job:
    worker: Any
    stop: threading.Event
    image_layer: Any
    shape: tuple  # the image's shape when the job started: the shape the prediction has
    z: Optional[int]
    model: Any
    info: Any  # the session's ModelInfo (class names, colours) when the job started
    data: Any = None  # the image layer's data when the job started: the data predicted
    keep: bool = True  # "keep my corrections" when the job started (unticked during a run: for the next run)
    notes: list = field(default_factory=list)  # warnings of the job, repeated in the final status
    waiting: bool = False  # its result waits for a brush stroke on a layer it writes to end
    ended: bool = False  # its worker finished while the result waited


TTA_CHOICES = {"auto": "auto", "on": True, "2 views": 2, "off": False}
#: Membranes of models with a thin boundary class -> ``close_boundaries`` of the core's prediction
MEMBRANE_CHOICES = {"the model's rule": None, "always close gaps": True, NETWORK_LABELS: False}
#: Layers of models trained on layered labels (retinal OCT) -> ``close_boundaries`` of the core's prediction
LAYER_CHOICES = {"kept in order": None, NETWORK_LABELS: False}


class InferenceWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.session = get_session(self.viewer)
        self.model_label = WrappingLabel()
        self.load_button = QPushButton("Load model...")
        self.load_button.setToolTip("use a model file instead of the last trained model")
        self.image = LayerCombo(self.viewer, Image)
        self.scope = QComboBox()
        self.scope.addItems([CURRENT, STACK])
        self.scope.setCurrentText(STACK)
        self.scope.setToolTip("predict only the slice shown in the viewer (quick to check) or every slice of the stack")
        self.image.setToolTip("the image layer to predict")
        self.tta = QComboBox()
        self.tta.addItems(list(TTA_CHOICES))
        self.tta_hint = WrappingLabel()
        self.tta.setToolTip(
            "test-time augmentation: average the network over the four 90-degree rotations of each tile "
            "(4 network passes, better membranes); 2 views = the tile and its half turn (2 passes, most of the "
            "gain); auto = on where the network is cheap: with a GPU, a CPU with AMX, or one whose bfloat16 convolutions reach "
            f"{FAST_CONV_GFLOPS:g} GFLOP/s. Tiles that are not square: the tile, its half turn and their mirror images. "
            "A model trained without rotations "
            "(OCT layers) keeps tiles upright: the tile and its mirror image (2 passes) at most"
        )
        self.probabilities = QCheckBox("probability map")
        self.probabilities.setToolTip("also write each class's probability (0 to 1) as an image layer")
        self.cells = QCheckBox("cell instances (2 classes: cells split by membranes)")
        self.cells.setToolTip("one label per cell region of the predicted labels, membranes shared out to the cells beside them (as the ISBI scores see them); the membrane is the model's boundary class, else the class named 'membrane', else the first class (value 0 in ISBI masks); not offered for layered (OCT) models")
        self.membranes = QComboBox()
        self.membranes.addItems(list(MEMBRANE_CHOICES))
        self.membranes.setToolTip(
            "for models with a thin boundary class (EM membranes). The model's rule: chosen on its validation slices after "
            "training (a threshold, and gaps closed where that scored better). Always close gaps: watershed regions of the "
            "membrane probability, merged across faint boundaries, keep their borders; membrane specks far from them become "
            f"cell. {NETWORK_LABELS[0].upper() + NETWORK_LABELS[1:]}: the network's own labels, no rule (gaps in membranes merge cells)"
        )
        self.layers = QComboBox()
        self.layers.addItems(list(LAYER_CHOICES))
        self.layers.setToolTip(
            "for models trained on layers stacked top to bottom (retinal OCT). Kept in order: each column gets the most "
            "likely labelling that keeps the layers in the order of the training labels, each layer once (no islands, no "
            "swapped thin layers), around your kept corrections; a pocket class (fluid inside a layer) where it is most "
            f"probable. {NETWORK_LABELS[0].upper() + NETWORK_LABELS[1:]}: the network's own label per pixel"
        )
        self.keep = QCheckBox("keep my corrections")
        self.keep.setChecked(True)
        self.keep.setToolTip("when updating a prediction layer, leave the pixels you painted (or marked reviewed) as they are")
        self.run_button, self.stop_button = QPushButton("Run"), QPushButton("Stop")
        self.run_button.setToolTip("predict the image with the current model into its prediction layer (Ctrl+Z on that layer undoes it)")
        self.stop_button.setToolTip("stop predicting; no layer is changed")
        self.review_button = QPushButton("Mark slice reviewed")
        self.review_button.setToolTip("accept the current slice of the prediction layer as correct: its pixels count as annotations for Retrain")
        self.unreview_button = QPushButton("Unmark slice")
        self.unreview_button.setToolTip("take back Mark slice reviewed on the current slice (the pixels you painted there still count)")
        self.save_button = QPushButton("Save prediction...")
        self.save_button.setToolTip(
            "write the prediction layer to TIFF in the training labels' values (e.g. 0/255), with the pixels you painted "
            "or reviewed, so that they still count when you open the file again (File > Save uses napari's own writer "
            "unless you pick the napari-unet file type)"
        )
        self.progress = ProgressRow("prediction")
        options = {"scope": self.scope, "tta": self.tta, "membranes": self.membranes, "layers": self.layers,
                   "probabilities": self.probabilities, "cells": self.cells, "keep": self.keep}
        restore_form(options, self.session.inference_form)  # a dock closed and opened again starts where it was
        on_form_change(options, lambda: setattr(self.session, "inference_form", form_values(options)))

        form = QFormLayout()
        form.addRow("model", self.model_label)
        form.addRow("", self.load_button)
        form.addRow("image", self.image)
        form.addRow("apply to", self.scope)
        form.addRow("test-time augmentation", self.tta)
        form.addRow("", self.tta_hint)
        form.addRow("membranes", self.membranes)
        form.addRow("layers", self.layers)
        layout = scrolling_layout(self)
        layout.addLayout(form)
        for box in (self.probabilities, self.cells, self.keep):
            layout.addWidget(box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        review = QHBoxLayout()
        review.addWidget(self.review_button)
        review.addWidget(self.unreview_button)
        review.addWidget(self.save_button)
        layout.addLayout(review)
        layout.addStretch(1)
        press_on_return(self)
        keep_focus_from_notifications(self)
        show_keyboard_focus(self, self.viewer)

        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.load_button.clicked.connect(self._ask_load)
        self.review_button.clicked.connect(self.mark_reviewed)
        self.unreview_button.clicked.connect(self.unmark_reviewed)
        self.save_button.clicked.connect(lambda: self.save_prediction())
        self.session.model_changed.connect(self._on_model_changed)
        self.session.notice.connect(self.progress.set_status)
        self.session.busy_changed.connect(self._update_buttons)
        disconnect_when_destroyed(
            self, (self.session.model_changed, self._on_model_changed), (self.session.notice, self.progress.set_status),
            (self.session.busy_changed, self._update_buttons),
        )
        self._job: Optional[_Job] = None
        self._in_order = InOrder()
        self._on_model_changed(self.session.model)

    def _explain_auto_tta(self) -> None:
        """Say what "auto" resolves to here (TensorFlow is asked for a GPU only once a model imported it)."""
        self.tta_hint.setText(f"auto = {explain_auto_tta()}")

    def _on_model_changed(self, model) -> None:
        self._explain_auto_tta()
        if model is None:
            self.model_label.setText("none yet: train one or load a .keras file")
        else:
            self.model_label.setText(self.session.info.description or "current model")
        # a layered model's (an OCT band's) regions are no cells between membranes
        self.cells.setEnabled(model is not None and model.config.n_classes == 2 and not getattr(model, "layer_order", None))
        self.membranes.setEnabled(model is not None and getattr(model, "boundary_value", None) is not None)
        self.layers.setEnabled(model is not None and bool(getattr(model, "layer_order", None)))
        self._update_buttons()

    def _update_buttons(self) -> None:
        running = getattr(self, "_job", None) is not None  # (busy_changed may come before __init__ ends)
        swap_buttons(self.run_button, self.stop_button, running)
        if not running:  # a prediction would be of the model the load replaces
            self.run_button.setEnabled("loading" not in self.session.busy)
        self.load_button.setEnabled(self.session.can_load())  # a click would only be refused

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load U-Net model", "", "Keras model (*.keras)")
        if path:
            self.session.load(path)

    # ---- running -----------------------------------------------------------------------------
    def run(self) -> bool:
        """Check the inputs and start prediction in a worker; False (and a notification) if they are bad."""
        if self._job is not None:
            return False
        model = self.session.model
        try:
            if "loading" in self.session.busy:  # (the prediction would be of the model the load replaces)
                raise InputError("a model file is loading; run once it is loaded (it becomes the current model)")
            if model is None:
                raise InputError("no model yet: train one in the U-Net training widget or load a .keras file")
            image_layer = self.image.layer()
            data = image_array(image_layer)
            if model.config.input_channels != 1:
                raise InputError(f"this model expects {model.config.input_channels} input channels; napari-unet images have one")
            z = current_slice(self.viewer, image_layer, f", or choose the {STACK}") if self.scope.currentText() == CURRENT else None
            # output layers span the stack, also for one slice
            low_memory = check_layer_memory(model, data.shape, image_layer.name, self.probabilities.isChecked(),
                                            self.cells.isChecked() and self.cells.isEnabled())
        except InputError as err:
            show_error(f"napari-unet: {err}")
            self.progress.set_status(f"Not started: {err}")
            return False
        if low_memory:
            show_warning(f"napari-unet: {low_memory}")
        membrane = self._membrane_value(model) if self.cells.isChecked() and self.cells.isEnabled() else None
        stop = threading.Event()
        close = (MEMBRANE_CHOICES[self.membranes.currentText()] if self.membranes.isEnabled()
                 else LAYER_CHOICES[self.layers.currentText()] if self.layers.isEnabled() else None)
        ordered = bool(model.layer_order) and self.layers.isEnabled() and close is not False
        # the kept corrections go into the layer ordering, and into the cells (a painted membrane splits a cell)
        keep = self.keep.isChecked()
        kept = kept_indices(self.viewer, self.session, image_layer, model, z) if ordered and keep else None
        kept_cells = kept_pixels(self.viewer, self.session, image_layer, model, z) if membrane is not None and keep else None
        events = predict_job(model, data, TTA_CHOICES[self.tta.currentText()], self.probabilities.isChecked(), membrane, close,
                             stop=stop.is_set, z=z, kept=kept, pixel_size=pixel_size_of(image_layer), kept_cells=kept_cells,
                             names=read_roles(image_layer))
        worker = create_worker_of(self.viewer, relay, events, stop=stop, task="U-Net prediction")
        worker.aborted.connect(lambda: (stop.set(), events.close()))  # napari aborts workers when the viewer closes
        self._job = _Job(worker, stop, image_layer, tuple(image_layer.data.shape), z, model, self.session.info,
                         data=image_layer.data, keep=keep)
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        worker.finished.connect(self.session.when_done("prediction"))  # not through self: a deleted dock gets no signal
        where = f"slice {z} of " if z is not None else ""
        self.progress.start("U-Net prediction")
        self.progress.set_status(f"Predicting {where}{image_layer.name!r}...")
        self.session.set_busy("prediction", True)
        self._update_buttons()
        worker.start()
        return True

    def _membrane_value(self, model):
        """The model's boundary class value if it records one, else a class named membrane, else the first."""
        boundary = getattr(model, "boundary_value", None)
        if boundary in model.class_values:
            return boundary
        names = [str(n).lower() for n in (self.session.info.class_names or [])]
        return model.class_values[names.index("membrane") if "membrane" in names else 0]

    def stop(self) -> None:
        if self._job is not None:
            self._job.stop.set()
            self.progress.set_status("Stopping; no layer will be changed.")

    def _on_event(self, event) -> None:
        self._in_order.handle(event, self._handle)  # in order, also when a handler pumps Qt events

    def _handle(self, event) -> None:
        if event is WORKER_FINISHED:
            self._finish_job()
            return
        job = self._job
        if job is None:
            return
        if isinstance(event, PredictionProgress):
            self.progress.update(event.done / max(event.total, 1), event.eta, f"{event.done}/{event.total} tiles")
        elif isinstance(event, Note):
            show_warning(f"napari-unet: {event.message}")
            job.notes.append(event.message)
        elif isinstance(event, Failed):
            message = event.message
            if event.read_error:  # found before the result: a prediction is written only once it is whole
                message += "; no layer was changed"
            show_error(f"napari-unet: prediction failed: {message}")
            self.progress.finish("prediction failed")
            self.progress.set_status(f"Prediction failed: {message}")
        elif isinstance(event, PredictionResult):
            self._write_after_strokes(job, event)

    def _write_after_strokes(self, job: _Job, result: PredictionResult) -> None:
        """Write ``result`` once no brush stroke is in progress on a layer it writes to. napari groups a drag's edits
        until the mouse is released: written during one, the stroke's first part was committed with the prediction as
        the widget's own write, and counted as no correction. The job stays running (Run and Retrain wait) meanwhile.
        A stopped job writes nothing: Stop during the last slices' post-processing, or during the stroke."""
        try:
            self.objectName()
        except RuntimeError:  # the dock was closed while the stroke went on (its Qt object is deleted)
            self._end_wait(job)
            return
        stopped = result.stopped or job.stop.is_set()
        if not stopped and self._stroke_in_progress(job):
            if not job.waiting:
                job.waiting = True
                self.session.set_busy(WAITING_FOR_STROKE, True)
                self.progress.set_status("Prediction ready; it is written when your brush stroke ends.")
            QTimer.singleShot(STROKE_WAIT_MS, lambda: self._write_after_strokes(job, result))
            return
        self._end_wait(job)
        if stopped:
            self.progress.finish("prediction stopped")
            self.progress.set_status("Prediction stopped; no layer was changed.")
        else:
            try:
                self._show(job, result)
            except Exception as err:  # a layer that refuses the write (read-only data, a plugin's array type...)
                _log.exception("napari-unet: writing the prediction failed")
                show_error(f"napari-unet: the prediction could not be written completely: {err}")
                self.progress.finish("prediction not written")
                self.progress.set_status(f"Prediction not written completely (see the layers): {err}")
        if job.ended and self._job is job:
            self._finish_job()

    def _end_wait(self, job: _Job) -> None:
        """The end of ``job``'s wait for a brush stroke, if it waited (busy counts the waits of every dock)."""
        if job.waiting:
            job.waiting = False
            self.session.set_busy(WAITING_FOR_STROKE, False)

    def _stroke_in_progress(self, job: _Job) -> bool:
        """Whether the user is painting on a layer the prediction may write: a prediction layer or the image's cells."""
        cells = f"{job.image_layer.name} cells"
        return any(
            getattr(layer, "_block_history", False) and (self.session.record(layer) is not None or layer.name == cells)
            for layer in self.viewer.layers
        )

    def _not_writable(self, job: _Job) -> Optional[str]:
        """Why the prediction no longer fits its image layer, or None."""
        if job.image_layer not in self.viewer.layers:
            return "the image layer was removed during prediction"
        if tuple(job.image_layer.data.shape) != job.shape:
            return f"the image changed shape while predicting (from {job.shape} to {tuple(job.image_layer.data.shape)})"
        if job.image_layer.data is not job.data:  # a filter or a script gave the layer new pixels of the same shape
            return "the image's data was replaced while predicting (Run again to predict the new one)"
        return None

    def _show(self, job: _Job, result: PredictionResult) -> None:
        problem = self._not_writable(job)
        if problem is not None:
            show_warning(f"napari-unet: {problem}; nothing was written")
            self.progress.finish("prediction not written")
            self.progress.set_status(f"Prediction not written: {problem}.")
            return
        before = len(self.viewer.layers)
        layer, changed = write_prediction(self.viewer, self.session, job.image_layer, result.labels, job.model, job.info, job.z,
                                          job.keep)
        if len(self.viewer.layers) > before:
            updated = f"{changed} pixels updated (a new layer)"
        elif changed:
            updated = f"{format_count(changed, 'pixel')} updated (Ctrl+Z on the layer undoes it)"
        else:  # no undo step was made: Ctrl+Z would undo the user's last stroke
            updated = "no pixel changed (it held this prediction already)"
        others = []
        if result.probabilities is not None:
            others.append(write_probabilities(self.viewer, job.image_layer, result.probabilities, job.model, job.info.class_names, job.z))
        if result.instances is not None:
            others.append(write_cells(self.viewer, self.session, job.image_layer, result.instances, job.z))
        also = f" Also written: {', '.join(repr(x.name) for x in others)}." if others else ""
        also += "".join(f" Note: {note}." for note in job.notes)
        if self.session.model is not job.model:  # a training ended (or a model was loaded) while this one predicted
            also += f" Predicted with the model current at Run ({job.info.description or 'an earlier model'}); Run again for the current one."
        self.progress.finish("prediction done", complete=True)
        self.progress.set_status(
            f"{layer.name!r}: {updated}.{also} Paint corrections "
            "on it, then Retrain in the training widget."
        )

    def _on_finished(self) -> None:
        self._on_event(WORKER_FINISHED)

    def _finish_job(self) -> None:
        if self._job is not None and self._job.waiting:  # the worker ended; its result waits for a stroke to end
            self._job.ended = True
            return
        if self.progress.active:
            self.progress.finish("prediction ended")
        self._job = None
        self._update_buttons()

    # ---- review ------------------------------------------------------------------------------
    def _prediction_layer(self):
        """The selected prediction layer, else the image's (the first if several), or None after a warning."""
        active = self.viewer.layers.selection.active
        if active is not None and self.session.record(active) is not None:  # whatever image the box shows now
            return active
        image_layer = self.image.layer()
        layer = prediction_layer_of(self.viewer, self.session, image_layer) if image_layer is not None else None
        if layer is None:
            show_warning("napari-unet: no prediction layer for this image yet; Run first")
        return layer

    def mark_reviewed(self) -> bool:
        """Mark the current slice of the image's prediction layer (or the selected one) as reviewed."""
        found = self._current_region()
        if found is None:
            return False
        layer, region, where = found
        if not self.session.mark_reviewed(layer, region):
            show_warning(f"napari-unet: {where} of {layer.name!r} has no labels to review; Run on it first")
            return False
        self.progress.set_status(f"{where} of {layer.name!r} marked reviewed: its labelled pixels count as annotations for "
                                 "Retrain (Unmark slice takes this back)")
        return True

    def unmark_reviewed(self) -> bool:
        """Take back Mark slice reviewed on the current slice (painted pixels stay reviewed)."""
        found = self._current_region()
        if found is None:
            return False
        layer, region, where = found
        released = self.session.unmark_reviewed(layer, region)
        if released is None:
            show_warning(f"napari-unet: {where} of {layer.name!r} is not marked reviewed (pixels you painted count until "
                         "you undo or erase them)")
            return False
        self.progress.set_status(f"{where} of {layer.name!r} no longer marked reviewed: {released} pixels stop counting as "
                                 "annotations (the ones you painted still count)")
        return True

    def _current_region(self):
        """(prediction layer, index of its current slice, "slice z" / "the image"), or None after a warning."""
        layer = self._prediction_layer()
        if layer is None:
            return None
        try:
            z = current_slice(self.viewer, layer)
        except InputError as err:
            show_warning(f"napari-unet: {err}")
            return None
        return layer, (slice(None),) * layer.ndim if z is None else (z,), f"slice {z}" if z is not None else "the image"

    def save_prediction(self, path=None) -> Optional[str]:
        """Write the image's prediction layer with the napari-unet writer (asks for ``path`` if not given).

        Returns the path written, or None (cancelled, or a notification says why not).
        """
        layer = self._prediction_layer()
        if layer is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save prediction", f"{layer.name}.tif", "TIFF (*.tif *.tiff)")
            if not path:
                return None
        # the Labels writer's own rule, as napari's save dialog gets it: .tif added (never replacing a file unasked),
        # other formats' names (x.png) refused
        data, state, _ = layer.as_layer_data_tuple()
        try:
            [written] = write_labels(str(path), data, state)
        except (OSError, ValueError) as err:  # the write is atomic: an existing file is left as it was
            show_error(f"napari-unet: could not save {layer.name!r} to {path}: {err}")
            self.progress.set_status(f"Not saved: {err}")
            return None
        reviewed = self.session.reviewed(layer)
        self.progress.set_status(f"Saved {layer.name!r} to {written} ({int(reviewed.sum())} painted or reviewed pixels kept with it).")
        return written

    def closeEvent(self, event) -> None:
        self.stop()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari's close button on a dock (remove_dock_widget) only takes the widget out of its parent; it never
        # closes it. A run must not go on unseen (and a reopened widget would start a second one).
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and getattr(self, "_job", None) is not None:
            self.stop()
        return super().event(event)
