"""State shared by the training and inference widgets of one viewer.

:func:`get_session` returns the one :class:`Session` of a viewer (module-level registry, weak
on the viewer), so a model trained in the training widget is used by the inference widget
without a file round trip. The session also tracks the prediction layers it wrote: for each,
the values the user painted at each pixel (from ``Labels.events.paint``) or accepted with
*Mark slice reviewed*; a pixel holding one of them is *reviewed*. Only reviewed pixels of a prediction layer count as ground truth. The marks live
in the layer's ``metadata["napari_unet"]``, so the Labels writer saves the reviewed pixels with the
prediction, and a saved prediction layer opened again (it names its image) is tracked again with them
(:mod:`napari_unet._widgets.tracked`).
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Optional

import numpy as np
from psygnal import Signal

from napari_unet.labels import PREDICTION_OUTPUT
from napari_unet.model_io import UNetModel

from .tracked import CONFIRMED_PRUNE_AT, Tracked, image_identity, unwrap, watch_strokes

_SESSIONS: "weakref.WeakKeyDictionary[Any, Session]" = weakref.WeakKeyDictionary()


def disconnect_when_destroyed(widget, *connections) -> None:
    """Disconnect ``(signal, callback)`` pairs when the Qt ``widget`` is deleted.

    Signals of the session and of napari outlive a closed dock widget; a callback into a deleted
    widget would raise. A plain function (not a method of the dying widget) receives ``destroyed``.
    """

    def disconnect(*_):
        for signal, callback in connections:
            try:
                signal.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):  # already gone
                pass

    widget.destroyed.connect(disconnect)


def get_session(viewer) -> "Session":
    """The session of ``viewer``, created on first use."""
    viewer = unwrap(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
        session.viewer = weakref.ref(viewer)  # its load and save workers belong to this viewer's window
        viewer.layers.events.removed.connect(session._on_layer_removed)
        viewer.layers.events.inserted.connect(lambda event: session.adopt(event.value))
        for layer in viewer.layers:
            session.adopt(layer)
    return session


def class_colors_of(colormap, n_classes: int) -> list:
    """RGBA of each class index (display values 1..n_classes) of a display-convention labels colormap."""
    return np.asarray(colormap.map(np.arange(1, n_classes + 1)), np.float64).tolist()


def colormap_of(class_colors) -> Any:
    """A display-convention DirectLabelColormap (0 = no label) from one RGBA per class index."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: "transparent", 0: "transparent", **{k + 1: rgba for k, rgba in enumerate(class_colors)}}
    return DirectLabelColormap(color_dict=colors)


#: The busy name of a prediction whose result waits for a brush stroke to end before it is written.
WAITING_FOR_STROKE = "prediction waiting for a brush stroke"


@dataclass
class ModelInfo:
    description: str = ""
    class_names: Optional[list] = None
    colormap: Any = None


class _Deleted(NamedTuple):
    """A prediction layer deleted with corrections: its name and its image (a weak reference, else the image's name)."""

    name: str
    image: Optional[weakref.ref]
    image_name: str

    def of(self, image_layer) -> bool:
        """Whether it was a prediction of ``image_layer`` (by identity while that image lives, else by name)."""
        image = self.image() if self.image is not None else None
        return image is image_layer if image is not None else self.image_name == image_layer.name


class Session:
    """The current model and the tracked prediction layers of one viewer."""

    model_changed = Signal(object)  # the new UNetModel (or None)
    busy_changed = Signal()
    notice = Signal(str, bool)  # a status message for the widgets (model loaded/saved, ...); True: notified already

    def __init__(self):
        self.viewer: Optional[weakref.ref] = None  # set by get_session
        self.model: Optional[UNetModel] = None
        self.info = ModelInfo()
        self.previous: Optional[tuple] = None  # (model, info) that the current model replaced: use_previous
        self._tracked: dict[int, Tracked] = {}
        self._deleted: list[_Deleted] = []  # the prediction layers deleted with corrections
        self._running: dict = {}  # how many jobs of each name run (two inference docks predict at once)
        # the docks' settings (settings.form_values): a dock closed and opened again has them
        self.training_form: dict = {}
        self.inference_form: dict = {}

    # ---- model -------------------------------------------------------------------------------
    def set_model(self, model: UNetModel, description: str, class_names=None, colormap=None) -> None:
        """Make ``model`` the current one; class names and colours given (or stored in a loaded model) go with it
        into saved files. ``model`` itself is not changed: given names or colours, the current model is a copy of it
        that carries them (sharing its network); else ``model`` itself."""
        changes = {"class_names": list(class_names)} if class_names else {}
        if colormap is not None:
            changes["class_colors"] = class_colors_of(colormap, len(model.class_values))
        model = replace(model, **changes) if changes else model
        if colormap is None and model.class_colors:
            colormap = colormap_of(model.class_colors)
        if self.model is not None and self.model is not model:
            self.previous = (self.model, self.info)
        self.model = model
        self.info = ModelInfo(description, list(model.class_names) if model.class_names else None, colormap)
        self.model_changed.emit(model)

    def use_previous(self) -> bool:
        """Make the model that the current one replaced (the one before the last Train, Retrain or Load) current again;
        the current one becomes the previous (a second call swaps back). False when there is none, or while a job
        would use or replace the model."""
        if self.previous is None or not self.can_load():
            return False
        (model, info), self.previous = self.previous, (self.model, self.info)
        self.model, self.info = model, info
        self.model_changed.emit(model)
        self.notice.emit(f"Current model: {info.description or 'the previous model'} (the previous one; Previous model swaps back).")
        return True

    def can_load(self) -> bool:
        """Whether :meth:`load` would start now: no load, training or prediction runs (the Load buttons follow it)."""
        return not self.busy & {"loading", "training", "prediction", WAITING_FOR_STROKE}

    def load(self, path):
        """Load a ``.keras`` model in a worker; it becomes the current model (or a notification says why not).

        Returns the worker, or None while another load, a training or a prediction runs.
        """
        from napari.utils.notifications import show_warning

        from .jobs import load_job

        if "loading" in self.busy:  # two loads would race for the current model, the last one to finish winning
            self.notice.emit(f"Not loading {Path(path).name}: another model is still loading.")
            return None
        if "training" in self.busy:  # the training's model would replace it when the run ends
            show_warning(f"napari-unet: not loading {Path(path).name} while a training runs; its model becomes the current one when it ends (Stop it first)")
            self.notice.emit(f"Not loading {Path(path).name}: a training is running.", True)
            return None
        if self.busy & {"prediction", WAITING_FOR_STROKE}:  # the layer would be the old model's, the widget naming the new
            show_warning(f"napari-unet: not loading {Path(path).name} while a prediction runs; load it when the prediction "
                         "ends (or Stop it first)")
            self.notice.emit(f"Not loading {Path(path).name}: a prediction is running.", True)
            return None
        self.set_busy("loading", True)
        self.notice.emit(f"Loading {Path(path).name}...")
        worker = self._create_worker(load_job, str(path), task=f"loading U-Net model {Path(path).name}")
        session = weakref.ref(self)  # (see when_done)
        worker.returned.connect(lambda result: session() is not None and session()._loaded(Path(path), result))
        worker.finished.connect(self.when_done("loading"))
        worker.start()
        return worker

    def _loaded(self, path: Path, result) -> None:
        from napari.utils.notifications import show_error

        if isinstance(result, UNetModel):
            self.set_model(result, f"loaded from {path.name}; classes {list(result.class_values)}")
            self.notice.emit(f"Model loaded from {path}; classes {list(result.class_values)}.")
        else:
            show_error(f"napari-unet: {result.message}")
            self.notice.emit(f"Model not loaded: {result.message}", True)

    def save(self, path):
        """Save the current model in a worker (atomic write)."""
        from napari.utils.notifications import show_error

        from .jobs import Failed, Handoff, save_job

        session = weakref.ref(self)  # (see when_done)

        def saved(result):
            alive = session()
            if isinstance(result, Failed):
                show_error(f"napari-unet: {result.message}")
                if alive is not None:
                    alive.notice.emit(f"Not saved: {result.message}", True)
            elif alive is not None:
                alive.notice.emit(f"Model saved to {result}.")

        self.set_busy("saving", True)
        worker = self._create_worker(save_job, Handoff(self.model), str(path), task=f"saving U-Net model {Path(path).name}")
        worker.returned.connect(saved)
        worker.finished.connect(self.when_done("saving"))
        worker.start()
        return worker

    def _create_worker(self, func, *args, task: str | None = None):
        """A worker of the session's viewer (closing another viewer dropped a load: no model, no message)."""
        from .workers import create_worker_of

        return create_worker_of(self.viewer() if self.viewer is not None else None, func, *args, task=task)

    @property
    def busy(self) -> set:
        """Names of running jobs ("training", "prediction", "loading", "saving", WAITING_FOR_STROKE)."""
        return {name for name, count in self._running.items() if count}

    def set_busy(self, name: str, busy: bool) -> None:
        """One job of ``name`` starts (``busy``) or ends; ``name`` stays in :attr:`busy` until the last one ends."""
        self._running[name] = max(self._running.get(name, 0) + (1 if busy else -1), 0)
        self.busy_changed.emit()

    def when_done(self, name: str):
        """A callback for a worker's ``finished`` that ends one job of ``name``, holding the session weakly: napari
        keeps every worker of a window, and a strong hold kept a closed viewer's models in memory for good."""
        session = weakref.ref(self)

        def done(*_) -> None:
            alive = session()
            if alive is not None:
                alive.set_busy(name, False)

        return done

    # ---- reviewed pixels ---------------------------------------------------------------------
    def track(self, layer, image_layer) -> Tracked:
        """Track paints on prediction ``layer`` of ``image_layer`` (keeping its marks if it is tracked already, or
        taking those its metadata carries)."""
        unwrap(image_layer).events.name.connect(self._on_image_renamed)  # the saved file names the image
        record = self.record(layer)
        if record is None:
            return self._start(unwrap(layer), image_layer)
        record.image, record.image_name = weakref.ref(unwrap(image_layer)), image_layer.name
        record.image_key = image_identity(image_layer)
        record.publish()
        return record

    def _on_image_renamed(self, event) -> None:
        image = unwrap(event.source)
        for record in list(self._tracked.values()):
            if record.image is not None and record.image() is image:
                record.image_name = image.name
                record.publish()

    def _start(self, layer, image_layer=None) -> Tracked:
        record = self._tracked[id(layer)] = Tracked.new(layer, image_layer)
        layer.events.paint.connect(self._on_paint)
        session = weakref.ref(self)

        def live_record():
            live = session()
            return None if live is None else live.record(layer)

        watch_strokes(layer, live_record)
        return record

    def adopt(self, layer) -> Optional[Tracked]:
        """Track a prediction layer that came back (a saved prediction reopened, a duplicate) with its marks.

        Layers without the inference widget's prediction marker, or tracked already, are left alone.
        """
        layer = unwrap(layer)
        meta = layer.metadata.get("napari_unet") if isinstance(getattr(layer, "metadata", None), dict) else None
        if id(layer) in self._tracked or not isinstance(meta, dict) or meta.get("output") != PREDICTION_OUTPUT:
            return None
        if not (isinstance(meta.get("image"), str) and hasattr(getattr(layer, "events", None), "paint")):
            return None
        return self._start(layer)

    def record(self, layer) -> Optional[Tracked]:
        record = self._tracked.get(id(unwrap(layer)))
        if record is not None and record.marks.shape != record.layer.data.shape:  # data replaced: start over
            record.marks, record.accepted = Tracked.no_marks(record.layer), None
            record.pending, record.confirmed, record.prune_at = [], {}, CONFIRMED_PRUNE_AT
            record.publish()
        return record

    def reviewed(self, layer, region=...) -> Optional[np.ndarray]:
        """The reviewed mask (a new bool array) of ``region`` of a tracked prediction layer (default: all of it),
        or None for any other layer."""
        record = self.record(layer)
        return None if record is None else record.reviewed(region)

    def painted(self, layer, region=...) -> Optional[np.ndarray]:
        """The mask of pixels painted (corrected, not only accepted) in ``region`` of a tracked prediction layer, or
        None for any other layer."""
        record = self.record(layer)
        return None if record is None else record.painted(region)

    def tracked_layers(self, image_layer) -> list:
        """Tracked prediction layers of ``image_layer`` (oldest first)."""
        return [r.layer for r in list(self._tracked.values()) if r.belongs_to(image_layer) and self.record(r.layer) is not None]

    def corrected_layers(self, image_layer) -> list:
        """Tracked prediction layers of ``image_layer`` with at least one reviewed pixel."""
        return [layer for layer in self.tracked_layers(image_layer) if self.reviewed(layer).any()]

    def _corrected_records(self):
        """``(record, its live image layer or None)`` of the tracked prediction layers with a reviewed pixel."""
        for record in list(self._tracked.values()):
            if self.record(record.layer) is not None and self.reviewed(record.layer).any():
                yield record, (record.image() if record.image is not None else None)

    def corrected_layers_of_other_images(self, image_layer) -> list:
        """``(layer, image name)`` of tracked prediction layers with reviewed pixels that belong to another open image."""
        image_layer = unwrap(image_layer)
        return [(r.layer, image.name) for r, image in self._corrected_records() if image is not None and image is not image_layer]

    def deleted_corrected_layers(self, image_layer) -> list:
        """Names of the prediction layers of ``image_layer`` deleted with reviewed pixels (their corrections are gone)."""
        image_layer = unwrap(image_layer)
        return [deleted.name for deleted in self._deleted if deleted.of(image_layer)]

    def unpaired_corrected_layers(self, viewer) -> list:
        """``(layer, image name)`` of reopened prediction layers with reviewed pixels whose image is not open under
        the name they record (renamed, or opened from another file name)."""
        names = {layer.name for layer in unwrap(viewer).layers}
        return [(r.layer, r.image_name) for r, image in self._corrected_records() if image is None and r.image_name not in names]

    @contextlib.contextmanager
    def muted(self, layer):
        """Paint events of ``layer`` inside the block are our own writes, not user corrections."""
        record = self.record(layer)
        if record is None:
            yield
            return
        previous, record.muted = record.muted, True
        try:
            yield
        finally:
            record.muted = previous

    def mark_reviewed(self, layer, region) -> int:
        """Mark the labelled pixels of ``region`` of a tracked layer reviewed; returns how many that region has.

        Label 0 (never predicted, or erased) is not marked (marks have no bit for it): a later prediction with
        "keep my corrections" would otherwise keep it empty for good.
        """
        record = self.record(layer)
        if record is None:
            return 0
        record.accept(region)
        return int(np.count_nonzero(record.layer.data[region]))

    def unmark_reviewed(self, layer, region) -> Optional[int]:
        """Take back *Mark slice reviewed* in ``region`` of a tracked layer (its painted pixels stay reviewed);
        returns how many pixels were reviewed by that mark alone, or None if nothing there was marked."""
        record = self.record(layer)
        return None if record is None else record.unaccept(region)

    def _on_paint(self, event) -> None:
        record = self.record(event.source)
        if record is None or record.muted:
            return
        if record.pending and event.value:  # a stroke whose last brush positions changed nothing
            record.tie(event.value[-1])
        image = record.image() if record.image is not None else None
        if self._deleted and image is not None:  # corrections painted anew: a deleted layer's are old news
            self._deleted = [deleted for deleted in self._deleted if not deleted.of(image)]
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # napari >= 0.6: bounding box + mask of the changed pixels, one label
                changed = np.ones(record.marks[atom.slice_key].shape, bool) if atom.mask is None else np.asarray(atom.mask, bool)
                # tied to the atom: undoing the stroke takes back the marks it set (kept, a later undo of an earlier
                # prediction run gave the value back and the undone stroke counted as a correction again)
                record.confirm(atom.slice_key, changed, atom.new_value)
                record.tie(atom)
            else:  # (indices, old values, new values)
                record.mark(atom[0], None, atom[2])

    def _on_layer_removed(self, event) -> None:
        layer = unwrap(event.value)
        record = self._tracked.pop(id(layer), None)
        if record is not None:
            layer.events.paint.disconnect(self._on_paint)
            self._say_deleted(record)
        for other in self._tracked.values():  # its predictions now go by its name: the same image opened again
            if other.image is not None and other.image() is layer:  # (the removed layer lives on until gc runs)
                other.image = None
                other.image_key = image_identity(layer)  # as it is now: its data may have been edited in place

    def _say_deleted(self, record: Tracked) -> None:
        """Tell the docks that the prediction layer of ``record`` was deleted, and what went with it."""
        from napari_unet.train import format_count

        name = record.layer.name
        reviewed = int(np.count_nonzero(record.reviewed())) if record.marks.shape == record.layer.data.shape else 0
        if not reviewed:
            self._tell_unless_closing(f"Prediction layer {name!r} was deleted; the next Run makes a new one.")
            return
        image = record.image() if record.image is not None else None
        self._deleted.append(_Deleted(name, None if image is None else weakref.ref(image), record.image_name))
        # napari undoes edits of a layer's data only, not the deletion of a layer
        self._tell_unless_closing(
            f"Prediction layer {name!r} was deleted with your corrections ({format_count(reviewed, 'pixel')} painted or "
            "marked reviewed): napari cannot undo a layer's deletion, so Retrain no longer has them (unless you saved "
            "them with Save prediction and open that file again). The next Run makes a new prediction layer.")

    def _tell_unless_closing(self, text: str) -> None:
        """Emit ``text`` as a notice once the event loop runs again, unless the viewer was closed meanwhile: closing
        removes every layer (each corrected one was told as deleted, in a popup while a training ran)."""
        from qtpy.QtCore import QTimer

        session = weakref.ref(self)

        def tell():
            alive = session()
            viewer = alive.viewer() if alive is not None and alive.viewer is not None else None
            if viewer is not None and getattr(viewer.window, "_qt_window", None) is not None:  # napari deletes it at close
                alive.notice.emit(text, False)

        QTimer.singleShot(0, tell)


__all__ = ["WAITING_FOR_STROKE", "Session", "Tracked", "disconnect_when_destroyed", "get_session", "unwrap"]
