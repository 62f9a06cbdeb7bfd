"""Training dock widget: train, stop, retrain on corrections, save and load the session model."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QCheckBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from napari_unet.config import ConfigError
from napari_unet.data import InputError, reader_errors
from napari_unet.labels import ZERO_IS_CLASS, LabelError
from napari_unet.train import EpochEnd, TrainingFinished, TrainingFinishing, TrainingStarted, TrainingStep, format_count, format_seconds

from .jobs import CheckLost, CorrectionsLearned, Failed, read_error_text, relay, train_job
from .layers import Image, Labels, LayerCombo, read_roles
from .outputs import name_with_suffix
from .prepare import ZERO_BOX, TrainJob, prepare_retrain, prepare_train, remember_zero_convention
from .plot import FINE_TUNE_MARK, LossPlot
from .progress import WORKER_FINISHED, InOrder, ProgressRow, keep_focus_from_notifications, press_on_return, swap_buttons
from .session import disconnect_when_destroyed, get_session, unwrap
from .settings import TrainSettings
from .style import scrolling_layout, show_keyboard_focus
from .workers import create_worker_of

_REFUSED_FOR_ANOTHER = "Not started: another training of this viewer is running"

ZERO_TIP = (
    "Only for labels layers WITHOUT napari-unet class metadata (painted from scratch or opened by "
    "napari's own reader). Checked: value 0 means not annotated (ignored by the loss) and every "
    "nonzero value is a class. Unchecked: 0 is a class too (e.g. a raw 0/255 mask) and every pixel "
    "is annotated. Layers from the napari-unet reader, sample data or predictions always use "
    "0 = not annotated; on prediction layers only pixels you painted count. Ticking or unticking records the choice in "
    "the layer at once, and the napari-unet writer saves its 0s as it says."
)


@dataclass
class _Run:
    kind: str  # "training" or "retraining"
    worker: Any
    stop: threading.Event
    budget: Optional[float]
    names: Optional[dict]  # class value -> name, when known
    colormap: Any  # (class values, colormap) of the labels layer, when known
    note: str = ""
    warning: str = ""  # said again in the final status
    last_step: int = 0
    started: float = 0.0
    steps_per_epoch: int = 0
    finishing: bool = False  # the steps are over; the model is being finished (no Stop)
    kept_model: bool = False  # its model became the session's
    continues: str = ""  # the loss plot's label where this run's curves follow the current model's ("" : a new plot)


class TrainingWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.session = get_session(self.viewer)
        self.image = LayerCombo(self.viewer, Image)
        self.labels = LayerCombo(self.viewer, Labels, accept=self._fits_image)
        self.image.setToolTip("the image layer to train on")
        self.labels.setToolTip("the labels layer of the classes to learn: only labels layers of the image's shape are offered")
        self.image.currentIndexChanged.connect(lambda *_: self.labels.refresh())
        self.zero_unannotated = QCheckBox(ZERO_BOX)
        self.zero_unannotated.setChecked(True)
        self.zero_unannotated.setToolTip(ZERO_TIP)
        self.zero_unannotated.toggled.connect(self._zero_box_toggled)
        self.labels.currentIndexChanged.connect(lambda *_: self._labels_chosen())
        self.settings = TrainSettings()
        self.settings.restore(self.session.training_form)  # a dock closed and opened again starts where it was
        self.settings.changed.connect(lambda: setattr(self.session, "training_form", self.settings.values()))
        self.continue_box = QCheckBox("continue from the current model")
        self.continue_box.setToolTip("fine-tune the current model (its architecture and classes) instead of starting anew")
        self.continue_box.toggled.connect(lambda on: (self.settings.depth.setEnabled(not on), self.settings.filters.setEnabled(not on)))
        self.train_button, self.stop_button = QPushButton("Train"), QPushButton("Stop")
        self.retrain_button = QPushButton("Retrain on corrections")
        self.retrain_button.setToolTip(
            "Fine-tune the current model on the original annotations (labels layer above), overridden "
            "by the pixels you painted on the image's prediction layer; unpainted predictions are not used"
        )
        self.save_button, self.load_button = QPushButton("Save model..."), QPushButton("Load model...")
        self.previous_button = QPushButton("Previous model")
        for button, tip in ((self.train_button, "train a new model on the image and labels above, in the background"),
                            (self.stop_button, "stop the run after its current step and finish the model from what it learned so far "
                                              "(a run stopped in its first epoch keeps no model)"),
                            (self.save_button, "write the current model to a .keras file (weights, classes, settings)"),
                            (self.load_button, "make a .keras model file the current model (to predict or retrain)"),
                            (self.previous_button, "make the model before the last Train, Retrain or Load current again "
                                                   "(press again to swap back)")):
            button.setToolTip(tip)
        self.progress = ProgressRow("training")
        self.plot = LossPlot(self.viewer)

        data = QFormLayout()
        data.addRow("image", self.image)
        data.addRow("labels", self.labels)
        data.addRow("", self.zero_unannotated)
        retrain = QGroupBox("correction loop (Retrain)")
        retrain_layout = QVBoxLayout(retrain)
        retrain_layout.addWidget(self.settings.retrain_form)
        retrain_layout.addWidget(self.retrain_button)
        layout = scrolling_layout(self)
        layout.addLayout(data)
        layout.addWidget(self.settings)
        layout.addWidget(self.continue_box)
        layout.addLayout(_hbox(self.train_button, self.stop_button))
        layout.addWidget(self.progress)
        layout.addWidget(self.plot, 1)  # a dock taller than its controls draws a larger plot, not a blank below them
        layout.addWidget(retrain)
        layout.addLayout(_hbox(self.save_button, self.load_button, self.previous_button))
        press_on_return(self)
        keep_focus_from_notifications(self)
        show_keyboard_focus(self, self.viewer)

        self.train_button.clicked.connect(lambda: self.start(retrain=False))
        self.retrain_button.clicked.connect(lambda: self.start(retrain=True))
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._ask_save)
        self.load_button.clicked.connect(self._ask_load)
        self.previous_button.clicked.connect(self.session.use_previous)
        self.session.model_changed.connect(self._on_model_changed)
        self.session.notice.connect(self._on_notice)
        self.session.busy_changed.connect(self._update_buttons)
        disconnect_when_destroyed(self, (self.session.model_changed, self._on_model_changed), (self.session.notice, self._on_notice),
                                  (self.session.busy_changed, self._update_buttons))
        self._run: Optional[_Run] = None
        self._show_model_curves(self.session.model)  # a dock opened after a training or a load
        self._retraining = False  # what the latest run was: the focus goes back to its button
        self._in_order = InOrder()
        self._update_buttons()
        self.progress.set_status("Choose an image and its labels, then Train.")

    # ---- starting ----------------------------------------------------------------------------
    def _fits_image(self, labels_layer) -> bool:
        image_layer = self.image.layer() if hasattr(self, "image") else None
        return image_layer is not None and tuple(labels_layer.data.shape) == tuple(image_layer.data.shape)

    def _read_names(self, retrain: bool) -> dict:
        """The layers a run reads, as its read errors name them (:func:`~.layers.read_roles`); a Retrain's labels merge
        the corrections with the labels layer (read before the run), so they are no one layer."""
        labels = None if retrain else self.labels.layer()
        reviewed = labels is not None and self.session.record(labels) is not None  # (a tracked prediction layer)
        return read_roles(self.image.layer(), labels, "prediction" if reviewed else "labels")

    def start(self, retrain: bool = False) -> bool:
        """Check the inputs and start (re)training in a worker; False (and a notification) if they are bad."""
        if self._run is not None:
            return False
        self._retraining = retrain
        if "training" in self.session.busy:  # another training widget of this viewer (a second dock) runs
            show_error("napari-unet: another training of this viewer is running; stop it or wait for it to end")
            self.progress.set_status(f"{_REFUSED_FOR_ANOTHER}.")
            return False
        if "loading" in self.session.busy:  # the run would start from the model before it and then replace it
            show_error("napari-unet: a model file is loading; train once it is loaded (it becomes the current model)")
            self.progress.set_status("Not started: a model file is loading; train once it is loaded.")
            return False
        try:
            job = self.prepare(retrain)
        except (InputError, LabelError, ConfigError) as err:
            show_error(f"napari-unet: {err}")
            self.progress.reset(f"{'retraining' if retrain else 'training'} not started")
            self.progress.set_status(f"Not started: {err}")
            return False
        except reader_errors() as err:  # a damaged page or chunk of a lazily read layer (read here)
            message = read_error_text(err, self._read_names(retrain)) + self._model_kept()
            show_error(f"napari-unet: {'retraining' if retrain else 'training'} not started: {message}")
            self.progress.reset(f"{'retraining' if retrain else 'training'} not started")
            self.progress.set_status(f"Not started: {message}")
            return False
        if not retrain and self.labels.layer() is not None:  # its file keeps 0 as trained: a class or "not annotated"
            remember_zero_convention(self.labels.layer(), self.zero_unannotated.isChecked())
        if job.pairs is not None:  # a reopened prediction of this image under its former name: its image from now on
            self.session.track(job.pairs, self.image.layer())
        stop = threading.Event()
        events = train_job(
            job.image, job.labels, job.model_config, job.train_config, init=job.init, stop=stop.is_set, auto_depth=job.auto_depth,
            pixel_weights=job.pixel_weights, check=job.check, pixel_size=job.pixel_size, data_name=job.data_name,
            names=self._read_names(retrain),
        )
        kind = "retraining" if retrain else "training"
        worker = create_worker_of(self.viewer, relay, events, stop=stop, task=f"U-Net {kind}")
        budget = job.train_config.max_minutes * 60 if job.train_config.max_minutes else None
        self._run = _Run(kind, worker, stop, budget, job.names, job.colormap, job.note, job.warning, started=time.perf_counter(),
                         steps_per_epoch=job.train_config.steps_per_epoch,
                         continues=FINE_TUNE_MARK if retrain or job.init is not None else "")
        if job.warning:
            show_warning(f"napari-unet: {job.warning}")
        worker.yielded.connect(self._on_event)
        worker.aborted.connect(self._on_aborted)  # a bound method: disconnected when the widget is deleted
        worker.aborted.connect(lambda: (stop.set(), events.close()))  # not through self: also after the viewer closed
        # first (the buttons then see no other training), and not through self: a deleted dock gets no signal
        worker.finished.connect(self.session.when_done("training"))
        worker.finished.connect(self._on_finished)
        self.progress.start(f"U-Net {kind}")
        loading = "" if "tensorflow" in sys.modules else " (the first run also loads TensorFlow)"
        self.progress.set_status(f"Preparing {kind} on {job.note}{loading}...")
        self.session.set_busy("training", True)
        self._update_buttons()
        worker.start()
        return True

    def _zero_box_toggled(self, checked: bool) -> None:
        """The box says what 0 is in the chosen labels layer: recorded there, so that saving it before any training
        writes its 0s as the box says (the writer follows the record)."""
        if self.labels.layer() is not None:
            # (a layer with malformed class metadata, another plugin's, gets none: Train names the metadata)
            with contextlib.suppress(LabelError):
                remember_zero_convention(self.labels.layer(), checked)

    def _labels_chosen(self) -> None:
        """A chosen layer that records what its 0 is (trained, or the box toggled on it) sets the box; choosing
        writes nothing (a layer only looked at keeps its record)."""
        layer = self.labels.layer()
        if layer is not None and isinstance(layer.metadata.get(ZERO_IS_CLASS), bool):
            self.zero_unannotated.blockSignals(True)
            self.zero_unannotated.setChecked(not layer.metadata[ZERO_IS_CLASS])
            self.zero_unannotated.blockSignals(False)

    def prepare(self, retrain: bool = False) -> TrainJob:
        """The job the widget's current layers and settings describe (raises on bad input)."""
        zero = self.zero_unannotated.isChecked()
        if not retrain:
            configs = self.settings.configs()
            continue_ = self.continue_box.isChecked()
            job = prepare_train(self.viewer, self.session, self.image.layer(), self.labels.layer(), zero, configs, continue_)
            job.auto_depth = job.init is None and self.settings.depth_waits_for_gpu_query()
            return job
        return prepare_retrain(self.viewer, self.session, self.image.layer(), self.labels.layer(), zero, self.settings.retrain_config)

    # ---- running -----------------------------------------------------------------------------
    def stop(self) -> None:
        run = self._run
        if run is None:
            return
        run.stop.set()
        if run.kept_model:  # only the check of the corrections was left: it ends, the status stays the model's
            return
        if run.finishing:
            self.progress.set_status("Finishing the model; this takes seconds and cannot be stopped...")
        elif run.last_step < run.steps_per_epoch:
            first = " (TensorFlow prepares or compiles the network in the first step: up to a minute)" if run.last_step == 0 else ""
            kept = "; the current model stays (a run stopped in its first epoch does not replace it)" if self.session.model is not None else ""
            self.progress.set_status(f"Stopping after the current step{first}{kept}...")
        else:
            self.progress.set_status("Stopping after the current step (the best weights are kept)...")

    def _on_event(self, event) -> None:
        self._in_order.handle(event, self._handle)  # in order, also when a handler pumps Qt events

    def _handle(self, event) -> None:
        if event is WORKER_FINISHED:
            self._finish_run()
            return
        run = self._run
        if run is None:
            return
        if isinstance(event, TrainingStarted):
            run.steps_per_epoch = event.steps_per_epoch  # the core's (the form's, unless the core chose another)
            # here, not at the click: a run refused by the core leaves the current model's curves; a run fine-tuning
            # the current model adds its curves after that model's
            self.plot.start_run(run.continues)
            where = f"slices {event.train_slices}, {event.validation}" if run.kind == "training" else run.note
            boxes = {"augment_rotations": "the rotations box", "patch_size": "the patch box" if run.kind == "training" else "Retrain's patch box",
                     "val_fraction": "the validation box"}
            notes = "".join(f" Note: {note}" + (f" ({boxes[note.setting]} chooses)." if note.setting in boxes else ".")
                            for note in event.notes)
            for note in event.notes:
                show_info(f"napari-unet: {note}")
            self.progress.set_status(f"{run.kind.capitalize()} on {where}; classes {event.class_values}.{notes}")
        elif isinstance(event, TrainingStep):
            run.last_step = event.step
            fraction = event.step / event.total_steps
            if run.budget:
                fraction = max(fraction, event.elapsed / run.budget)
            self.progress.update(fraction, event.eta, f"epoch {event.epoch}")
            self.plot.add_step(event.step, event.loss)
        elif isinstance(event, EpochEnd):
            self.plot.add_epoch(run.last_step, event.val_loss, event.val_metrics)
            val = f", validation loss {event.val_loss:.4f}" if event.val_loss is not None else ""
            dice = f", Dice {event.val_metrics['dice']:.3f}" if "dice" in event.val_metrics else ""
            best = " (best)" if event.is_best else ""
            self.progress.set_status(f"Epoch {event.epoch}/{event.epochs}: loss {event.loss:.4f}{val}{dice}{best}")
        elif isinstance(event, TrainingFinishing):
            run.finishing = True
            rule = " and choosing the membrane rule on the validation slices" if event.tunes_rule else ""
            # a stopped run's bar stays where it stopped (it jumped to 100 %)
            done = 1.0 if event.reason not in ("stopped", "diverged") else self.progress.bar.value() / self.progress.bar.maximum()
            self.progress.update(done, None, f"{run.kind} {event.reason}, finishing")
            self.progress.set_status(f"Finishing the model after {format_count(event.steps, 'step')}: its weights{rule} (seconds)...")
        elif isinstance(event, TrainingFinished):
            self._finished_model(run, event)
        elif isinstance(event, CorrectionsLearned) and run.kept_model:
            warning = f" Warning: {self._useless(run, event.one_class_note)}." if event.one_class_note else ""
            self.progress.set_status(f"{self.progress.status.text()} {event.text()}{warning}")
        elif isinstance(event, CheckLost) and run.kept_model:  # the model is in use already: only the check is lost
            lost = f"the check of your corrections could not be made: {event.message}"
            show_warning(f"napari-unet: the retrained model is kept, but {lost}")
            self.progress.set_status(f"{self.progress.status.text()} Warning: {lost}; the retrained model is kept"
                                     f"{' (Previous model brings back the one before it)' if self.session.previous is not None else ''}.")
        elif isinstance(event, Failed):
            message = event.message
            if event.diverged and run.kind == "retraining":  # one epoch: diverged before it kept any weights
                when = f" ({event.divergence})" if event.divergence else ""
                message = (f"the retrain diverged{when} before it kept any weights; the current model is unchanged and still "
                           "in use: lower the Retrain learning rate (settings), or check the corrections, and Retrain again")
            elif event.diverged:  # before it kept any weights
                unchanged = "; the current model is unchanged" if self.session.model is not None else ""
                message += f" (the learning rate in the settings){unchanged}"
            elif event.read_error:  # nothing trained yet: the file's damage is the news, and what stays
                message += self._model_kept()
            show_error(f"napari-unet: {run.kind} failed: {message}")
            self.progress.finish(f"{run.kind} failed")
            self.plot.discard_run()  # the model is unchanged: so are its curves
            self.progress.set_status(f"{run.kind.capitalize()} failed: {message}")

    def _model_kept(self) -> str:
        """What a training that failed before it made a model leaves: the end of its message."""
        return "; the current model is unchanged" if self.session.model is not None else "; no model was made"

    def _finished_model(self, run: _Run, event: TrainingFinished) -> None:
        seconds = time.perf_counter() - run.started
        ended = {"stopped": "stopped", "time budget": "reached its time budget"}.get(event.reason, f"ended ({event.reason})")
        unchanged = "the current model is unchanged" if self.session.model is not None else "no model was made"
        warning = f" Note: {run.warning}." if run.warning else ""
        if event.steps == 0:  # stopped while TensorFlow started: the network is untrained (or init's, without news)
            self.progress.finish(f"{run.kind} {event.reason}", complete=False)
            self.plot.discard_run()
            self.progress.set_status(f"{run.kind.capitalize()} {ended} before its first step; {unchanged}.{warning}")
            return
        first_epoch = event.steps < run.steps_per_epoch
        if event.reason in ("stopped", "time budget") and first_epoch and self.session.model is not None:
            # cancelled, or a budget that TensorFlow's start-up mostly used: a network of a few steps would replace
            # a model that took minutes
            self.progress.finish(f"{run.kind} {event.reason}", complete=False)
            self.plot.discard_run()  # the current model's curves again, not those of a run whose network was discarded
            more = "" if event.reason == "stopped" else "; a larger time budget trains a new one"
            self.progress.set_status(f"{run.kind.capitalize()} {ended} after {event.steps} of the first "
                                     f"epoch's {run.steps_per_epoch} steps; the current model is unchanged{more}.{warning}")
            return
        when = time.strftime("%H:%M:%S")
        best = f", {event.kept}" if event.kept else ""
        # the steps say how much a time budget gave (a busy machine gives fewer; the model is then weaker)
        description = f"{run.kind.replace('ing', 'ed')} at {when} ({format_count(event.steps, 'step')}, {event.reason}{best}); classes {list(event.model.class_values)}"
        classes = list(event.model.class_values)
        names = [run.names.get(v) for v in classes] if run.names else None
        colormap = run.colormap[1] if run.colormap and run.colormap[0] == classes else None
        self.session.set_model(event.model, description, names if names and None not in names else None, colormap)
        run.kept_model = True
        self.plot.keep_run()
        self.progress.finish(f"{run.kind} {event.reason}", complete=event.reason == "completed")
        note = f" Note: {event.untuned_rule_note} (the inference widget's membranes: 'always close gaps')." if event.untuned_rule_note else ""
        if event.reason == "time budget" and first_epoch:
            note += (f" Note: the time budget ended after {event.steps} of the first epoch's {run.steps_per_epoch} steps: "
                     "the model has barely learnt (TensorFlow's start-up alone can take a minute).")
        if event.reason == "diverged":  # the loss or weights stopped being finite: the model is from before that
            setting = "Retrain learning rate" if run.kind == "retraining" else "learning rate"
            diverged = (f"{run.kind} diverged ({event.divergence}) and stopped; the model holds the {event.kept or 'weights'} "
                        f"from before it: lower the {setting} (settings) and train again")
            show_warning(f"napari-unet: {diverged}")
            note += f" Note: {diverged}."
        if event.one_class_note:  # a useless model, whatever its validation scores: it is still kept (Previous model undoes it)
            note += f" Warning: {self._useless(run, event.one_class_note)}."
        note += warning
        self.progress.set_status(f"Model {description}, in {format_seconds(seconds)}. It is now used by the inference widget.{note}")

    def _useless(self, run: _Run, one_class_note: str) -> str:
        """Warn (a notification) of a kept model of one class or chance-level labels; the status line's words.
        Called once the model is the session's: *Previous model* brings back the one it replaced, if any."""
        settings = ("the Retrain learning rate and steps" if run.kind == "retraining" else
                    "the learning rate, epochs x steps and time budget")
        useless = f"{one_class_note} ({settings} in the settings)"
        if self.session.previous is not None:
            useless += ". Previous model brings back the model before it"
        show_warning(f"napari-unet: {useless}")
        return useless

    def _on_aborted(self) -> None:
        kind = self._run.kind if self._run is not None else "training"
        self.progress.set_status(f"{kind.capitalize()} cancelled; the current model is unchanged.")

    def _on_finished(self) -> None:
        self._on_event(WORKER_FINISHED)

    def _finish_run(self) -> None:
        if self._run is not None and self.progress.active:
            self.progress.finish(f"{self._run.kind} ended")
        self._run = None
        self._update_buttons()

    def _update_buttons(self, *_) -> None:
        running = getattr(self, "_run", None) is not None  # (busy_changed may come before __init__ ends)
        # the focus goes back to the button that started the run: after a Retrain, a second Space on Train trained anew
        swap_buttons(self.retrain_button if getattr(self, "_retraining", False) else self.train_button, self.stop_button, running)
        loading = "loading" in self.session.busy  # (a run would start from the model the load replaces)
        # another dock's run (one closed while its run stops, too): a click would only be refused
        others = not running and "training" in self.session.busy
        progress = getattr(self, "progress", None)
        if not others and progress is not None and progress.status.text().startswith(_REFUSED_FOR_ANOTHER):
            progress.set_status("The other training of this viewer has ended.")
        self.train_button.setEnabled(not running and not loading and not others)
        # a run keeps the layers and settings it started with: edits during it would look as if it used them
        for choice in (self.image, self.labels, self.zero_unannotated, self.settings, self.settings.retrain_form):
            choice.setEnabled(not running)
        self.continue_box.setEnabled(not running and self.session.model is not None)  # (nothing to continue from)
        self.retrain_button.setEnabled(not running and not loading and not others and self.session.model is not None)
        self.save_button.setEnabled(self.session.model is not None and not loading)  # (it saved the model before the load)
        self.load_button.setEnabled(not running and self.session.can_load())  # a click would only be refused
        self.previous_button.setEnabled(not running and self.session.can_load() and self.session.previous is not None)

    def _on_notice(self, text: str, notified: bool = False) -> None:
        """A session message (model saved, loaded...): in the status line, or, while a run reports there, a notification
        (unless the session ``notified`` it already)."""
        if self._run is None:
            self.progress.set_status(text)
        elif not notified:
            show_info(f"napari-unet: {text}")

    def _show_model_curves(self, model) -> None:
        if model is None:
            self.plot.clear()
        else:
            self.plot.show_history(model.history_records(), model.history_steps())

    def _on_model_changed(self, model) -> None:
        if self._run is None:  # loaded, previous (or trained by another dock): its curves from its history
            self._show_model_curves(model)
            if model is not None:  # "Not started: another training ... is running" outlived that run (a load says more)
                self.progress.set_status(f"Current model: {self.session.info.description}.")
        self._update_buttons()

    # ---- files -------------------------------------------------------------------------------
    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save U-Net model", "unet.keras", "Keras model (*.keras)")
        path = name_with_suffix(path, (".keras",), self.progress) if path else None  # the loader opens .keras names only
        if path is not None:
            self.save_model(path)

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load U-Net model", "", "Keras model (*.keras)")
        if path:
            self.session.load(path)

    def save_model(self, path) -> None:
        if self.session.model is None:
            show_warning("napari-unet: no model to save yet; train or load one")
            return
        self.session.save(path)

    def closeEvent(self, event) -> None:
        self.stop()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari's close button on a dock (remove_dock_widget) only takes the widget out of its parent; it never
        # closes it. A run must not go on unseen (and a reopened widget would start a second one).
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and getattr(self, "_run", None) is not None:
            self.stop()
        return super().event(event)


def _hbox(*widgets) -> QHBoxLayout:
    layout = QHBoxLayout()
    for widget in widgets:
        layout.addWidget(widget)
    return layout


__all__ = ["TrainingWidget"]
