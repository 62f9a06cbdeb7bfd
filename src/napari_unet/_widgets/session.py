"""State shared by the training and inference widgets of one viewer.

:func:`get_session` returns the one :class:`Session` of a viewer (module-level registry, weak
on the viewer), so a model trained in the training widget is used by the inference widget
without a file round trip. The session also tracks the prediction layers it wrote: for each,
the values the user painted at each pixel (from ``Labels.events.paint``) or accepted with
*Mark slice reviewed*; a pixel holding one of them is *reviewed*. Only reviewed pixels of a prediction layer count as ground truth. The marks live
in the layer's ``metadata["napari_unet"]``, so the Labels writer saves the reviewed pixels with the
prediction, and a saved prediction layer opened again (it names its image) is tracked again with them.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
from psygnal import Signal

from napari_unet.labels import (
    PREDICTION_OUTPUT,
    accepted_only_pixels,
    holds_marked_value,
    marks_dtype,
    reviewed_pixels,
    value_marks,
)
from napari_unet.model_io import UNetModel

_SESSIONS: "weakref.WeakKeyDictionary[Any, Session]" = weakref.WeakKeyDictionary()


def unwrap(obj):
    """The napari object behind a plugin ``PublicOnlyProxy`` (identity checks need the real one)."""
    return getattr(obj, "__wrapped__", obj)


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
        viewer.layers.events.removed.connect(session._on_layer_removed)
        viewer.layers.events.inserted.connect(lambda event: session.adopt(event.value))
        for layer in viewer.layers:
            session.adopt(layer)
    return session


#: Ties of confirmed stroke pixels to napari history atoms above which those of atoms napari dropped are forgotten.
CONFIRMED_PRUNE_AT = 256


@dataclass
class Tracked:
    """A prediction layer written by the inference widget, and the pixels the user painted or accepted.

    A pixel counts as reviewed while it holds one of the values the user painted or accepted there, so undo, redo
    and later predictions that overwrite it (or restore it) need no bookkeeping of their own: undoing a stroke
    gives back the correction or acceptance under it. Erasing (label 0) marks nothing, so an erased pixel is
    predicted again. Painted values are *corrections* (Retrain weighs them more); accepted ones are kept apart so
    that *Unmark slice* can take them back. Both are published in ``layer.metadata["napari_unet"]`` for the Labels
    writer, which saves the reviewed pixels and which of them were only accepted.
    """

    layer: Any
    image: Any  # weakref to the image layer it was predicted from, or None while only its name is known
    image_name: str
    marks: np.ndarray  # unsigned, layer shape: bit v - 1 set = display value v was painted here
    muted: bool = False  # our own writes are no corrections
    accepted: Optional[np.ndarray] = None  # as marks, for values accepted with Mark slice reviewed (made on first use)
    # pixels a stroke painted with the value they held already (napari's paint events leave them out): marked at once,
    # then kept per napari history atom of the stroke, so that undo and redo take them back and give them again
    pending: list = field(default_factory=list)  # (region, pixels, value) not yet tied to an atom
    confirmed: dict = field(default_factory=dict)  # id(atom) -> (atom, [(region, pixels, value), ...])

    @classmethod
    def new(cls, layer, image_layer=None) -> "Tracked":
        """Track ``layer``; marks it already carries (a reopened file, a duplicated layer) count as reviewed."""
        meta = layer.metadata.get("napari_unet")
        reviewed = reviewed_pixels(layer.data, meta) if isinstance(meta, dict) else None
        accepted_only = accepted_only_pixels(layer.data, meta) if reviewed is not None else None
        marks, accepted = cls.no_marks(layer), None
        if reviewed is not None:
            painted = reviewed if accepted_only is None else reviewed & ~accepted_only
            marks[painted] = value_marks(np.asarray(layer.data)[painted], marks.dtype)
        if accepted_only is not None and accepted_only.any():
            accepted = np.zeros_like(marks)
            accepted[accepted_only] = value_marks(np.asarray(layer.data)[accepted_only], marks.dtype)
        if image_layer is None:
            image, image_name = None, str(meta.get("image") or "") if isinstance(meta, dict) else ""
        else:
            image, image_name = weakref.ref(unwrap(image_layer)), image_layer.name
        record = cls(layer, image, image_name, marks, accepted=accepted)
        record.publish()
        return record

    @staticmethod
    def no_marks(layer) -> np.ndarray:
        """Empty marks for ``layer``'s data, wide enough for its classes' display values."""
        n_values = len(layer.metadata.get("class_values") or ()) if isinstance(layer.metadata, dict) else 0
        data = np.asarray(layer.data)
        n_values = max(n_values, int(data.max()) if data.size else 0)
        return np.zeros(layer.data.shape, marks_dtype(n_values))

    def publish(self) -> None:
        """Put the prediction marker and the live mark arrays into the layer's metadata (replacing a reopened
        file's ``reviewed`` mask): what the Labels writer saves."""
        meta = self.layer.metadata.get("napari_unet")
        meta = {k: v for k, v in meta.items() if k not in ("reviewed", "accepted_mask", "accepted")} if isinstance(meta, dict) else {}
        accepted = {} if self.accepted is None else {"accepted": self.accepted}
        self.layer.metadata["napari_unet"] = {**meta, "output": PREDICTION_OUTPUT, "image": self.image_name, "marks": self.marks, **accepted}

    def belongs_to(self, image_layer) -> bool:
        """Whether this layer was predicted from ``image_layer``: by identity, or by name once that layer is gone
        (or for a reopened file)."""
        image = self.image() if self.image is not None else None
        if image is not None:
            return image is unwrap(image_layer)
        return bool(self.image_name) and self.image_name == image_layer.name

    def mark(self, region, where=None, values=None) -> None:
        """Mark ``region`` (an index into the layer's data), or its pixels ``where`` is True, with ``values``
        (those pixels' new values: napari announces a paint before it writes it), by default their current values."""
        if values is None:
            values = np.asarray(self.layer.data[region])
        if where is None:
            self.marks[region] |= value_marks(values, self.marks.dtype)
            return
        marks = self.marks[region]  # a view: region is a tuple of slices here
        marks[where] |= value_marks(values if np.ndim(values) == 0 else np.asarray(values)[where], marks.dtype)

    def unmark(self, region, where) -> None:
        """Forget, at the pixels of ``region`` where ``where`` is True, that the user gave them their current values
        (a prediction wrote them: an erased or rejected value must not count again); their other marks stay."""
        written = value_marks(np.asarray(self.layer.data[region])[where], self.marks.dtype)
        for all_marks in (self.marks, self.accepted):
            if all_marks is not None:
                marks = all_marks[region]  # a view: region is a tuple of slices / indices here
                marks[where] &= ~written

    def confirm(self, region, where, value) -> None:
        """Mark the pixels of ``region`` (a tuple of slices) where ``where`` is True, which held ``value`` when a stroke
        painted it over them; only the marks this sets are kept for :meth:`tie` (earlier ones outlive an undo)."""
        bit = value_marks(np.asarray(value), self.marks.dtype)
        marks = self.marks[region]  # a view
        new = where & ((marks & bit) == 0)
        if new.any():
            marks[new] |= bit
            self.pending.append((region, new, value))

    def tie(self, atom) -> None:
        """Tie the pending confirmed pixels to napari history ``atom`` (undone and redone with it)."""
        if self.pending:
            _, ties = self.confirmed.setdefault(id(atom), (atom, []))  # the atom is kept: its id is not reused
            ties.extend(self.pending)
            self.pending = []
            if len(self.confirmed) > CONFIRMED_PRUNE_AT:
                self._forget_lost_atoms()

    def _forget_lost_atoms(self) -> None:
        """Drop ties to atoms napari no longer keeps (beyond its undo limit, a discarded redo branch)."""
        layer = self.layer
        items = [*getattr(layer, "_undo_history", ()), *getattr(layer, "_redo_history", ()), getattr(layer, "_staged_history", ())]
        live = {id(atom) for item in items for atom in item}
        self.confirmed = {key: tie for key, tie in self.confirmed.items() if key in live}

    def drop_pending(self) -> None:
        """Take back the confirmed pixels not yet tied to an atom (a stroke napari aborted)."""
        self._set_marks(self.pending, False)
        self.pending = []

    def replay(self, history_item, undoing: bool) -> None:
        """Take back (``undoing``) or give again the confirmed pixels tied to the atoms of a napari history item."""
        for atom in history_item:
            self._set_marks(self.confirmed.get(id(atom), (None, ()))[1], not undoing)

    def _set_marks(self, ties, on: bool) -> None:
        """Set (``on``) or clear the mark of ``value`` at ``pixels`` of ``region`` for each (region, pixels, value)."""
        for region, pixels, value in ties:
            bit = value_marks(np.asarray(value), self.marks.dtype)
            marks = self.marks[region]  # a view: region is a tuple of slices
            marks[pixels] = (marks[pixels] | bit) if on else (marks[pixels] & ~bit)

    def accept(self, region) -> None:
        """Accept the current values of ``region`` (Mark slice reviewed)."""
        if self.accepted is None:
            self.accepted = np.zeros_like(self.marks)
            self.publish()
        self.accepted[region] |= value_marks(np.asarray(self.layer.data[region]), self.marks.dtype)

    def unaccept(self, region) -> Optional[int]:
        """Take back what :meth:`accept` accepted in ``region`` (painted values stay); returns how many pixels that
        still held an accepted value were not painted, or None if nothing there was accepted."""
        if self.accepted is None or not self.accepted[region].any():
            return None
        data = np.asarray(self.layer.data[region])
        count = int(np.count_nonzero(holds_marked_value(data, self.accepted[region]) & ~holds_marked_value(data, self.marks[region])))
        self.accepted[region] = 0
        return count

    def painted(self, region=...) -> np.ndarray:
        """Bool mask of ``region`` (default: the whole layer): pixels holding a value the user painted there."""
        return holds_marked_value(np.asarray(self.layer.data[region]), self.marks[region])

    def reviewed(self, region=...) -> np.ndarray:
        """Bool mask of ``region`` (default: the whole layer): pixels holding a value painted or accepted there."""
        marks = self.marks[region] if self.accepted is None else self.marks[region] | self.accepted[region]
        return holds_marked_value(np.asarray(self.layer.data[region]), marks)


def class_colors_of(colormap, n_classes: int) -> list:
    """RGBA of each class index (display values 1..n_classes) of a display-convention labels colormap."""
    return np.asarray(colormap.map(np.arange(1, n_classes + 1)), np.float64).tolist()


def colormap_of(class_colors) -> Any:
    """A display-convention DirectLabelColormap (0 = no label) from one RGBA per class index."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: "transparent", 0: "transparent", **{k + 1: rgba for k, rgba in enumerate(class_colors)}}
    return DirectLabelColormap(color_dict=colors)


@dataclass
class ModelInfo:
    description: str = ""
    class_names: Optional[list] = None
    colormap: Any = None


class Session:
    """The current model and the tracked prediction layers of one viewer."""

    model_changed = Signal(object)  # the new UNetModel (or None)
    busy_changed = Signal()
    notice = Signal(str)  # a status message for the widgets (model loaded/saved, ...)

    def __init__(self):
        self.model: Optional[UNetModel] = None
        self.info = ModelInfo()
        self._tracked: dict[int, Tracked] = {}
        self.busy: set = set()  # names of running jobs ("training", "prediction", "loading", "saving", inference.WAITING)

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
        self.model = model
        self.info = ModelInfo(description, list(model.class_names) if model.class_names else None, colormap)
        self.model_changed.emit(model)

    def load(self, path):
        """Load a ``.keras`` model in a worker; it becomes the current model (or a notification says why not).

        Returns the worker, or None while another load or a training runs.
        """
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        from .jobs import load_job

        if "loading" in self.busy:  # two loads would race for the current model, the last one to finish winning
            self.notice.emit(f"Not loading {Path(path).name}: another model is still loading.")
            return None
        if "training" in self.busy:  # the training's model would replace it when the run ends
            show_warning(f"napari-unet: not loading {Path(path).name} while a training runs; its model becomes the current one when it ends (Stop it first)")
            self.notice.emit(f"Not loading {Path(path).name}: a training is running.")
            return None
        self.set_busy("loading", True)
        self.notice.emit(f"Loading {Path(path).name}...")
        worker = create_worker(load_job, str(path))
        worker.returned.connect(lambda result: self._loaded(Path(path), result))
        worker.finished.connect(lambda: self.set_busy("loading", False))
        worker.start()
        return worker

    def _loaded(self, path: Path, result) -> None:
        from napari.utils.notifications import show_error

        if isinstance(result, UNetModel):
            self.set_model(result, f"loaded from {path.name}; classes {list(result.class_values)}")
            self.notice.emit(f"Model loaded from {path}; classes {list(result.class_values)}.")
        else:
            show_error(f"napari-unet: {result.message}")
            self.notice.emit(f"Model not loaded: {result.message}")

    def save(self, path):
        """Save the current model in a worker (atomic write)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        from .jobs import Failed, save_job

        def saved(result):
            if isinstance(result, Failed):
                show_error(f"napari-unet: {result.message}")
                self.notice.emit(f"Not saved: {result.message}")
            else:
                self.notice.emit(f"Model saved to {result}.")

        self.set_busy("saving", True)
        worker = create_worker(save_job, self.model, str(path))
        worker.returned.connect(saved)
        worker.finished.connect(lambda: self.set_busy("saving", False))
        worker.start()
        return worker

    def set_busy(self, name: str, busy: bool) -> None:
        (self.busy.add if busy else self.busy.discard)(name)
        self.busy_changed.emit()

    # ---- reviewed pixels ---------------------------------------------------------------------
    def track(self, layer, image_layer) -> Tracked:
        """Track paints on prediction ``layer`` of ``image_layer`` (keeping its marks if it is tracked already, or
        taking those its metadata carries)."""
        unwrap(image_layer).events.name.connect(self._on_image_renamed)  # the saved file names the image
        record = self.record(layer)
        if record is None:
            return self._start(unwrap(layer), image_layer)
        record.image, record.image_name = weakref.ref(unwrap(image_layer)), image_layer.name
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
        self._watch_strokes(layer)
        return record

    def _watch_strokes(self, layer) -> None:
        """Count every pixel a stroke paints, also those that held its value already (napari's paint events carry
        only changed pixels: a membrane drawn across a gap counted only where it was missing, and a new prediction
        then overwrote the rest of the user's line).

        Wraps the layer's ``_apply_mask_to_data`` (napari >= 0.6: brush, polygon and fill), ``_commit_staged_history``
        (a stroke's end), ``_abort_stroke`` (napari 0.9: a stroke cancelled), ``undo`` and ``redo``; with another
        napari, strokes count where they change pixels.
        """
        names = ("_apply_mask_to_data", "_commit_staged_history", "_abort_stroke", "undo", "redo", "_undo_history",
                 "_redo_history", "_staged_history", "_block_history")
        if not all(hasattr(layer, name) for name in names) or getattr(layer._apply_mask_to_data, "_napari_unet", False):
            return
        apply_mask, commit, abort = layer._apply_mask_to_data, layer._commit_staged_history, layer._abort_stroke
        undo, redo = layer.undo, layer.redo
        session = weakref.ref(self)

        def record():
            live = session()
            return None if live is None else live.record(layer)

        def apply_mask_to_data(data, mask, new_label, volume_slice, *args, **kwargs):
            tracked = record()
            unchanged = None
            if tracked is not None and not tracked.muted and new_label:
                unchanged = np.asarray(mask, bool) & (np.asarray(data) == new_label)
            staged, last = len(layer._staged_history), (layer._undo_history[-1] if layer._undo_history else None)
            effective = apply_mask(data, mask, new_label, volume_slice, *args, **kwargs)
            if unchanged is None or tracked.marks.shape != layer.data.shape:
                return effective
            if unchanged.any():
                tracked.confirm(volume_slice, unchanged, new_label)
            if len(layer._staged_history) > staged:  # a stroke in progress: the atom this call made
                tracked.tie(layer._staged_history[-1])
            elif layer._undo_history and layer._undo_history[-1] is not last:  # a single click: its own history item
                tracked.tie(layer._undo_history[-1][-1])
            elif not layer._block_history:  # a click that changed nothing: nothing to undo, the marks stay
                tracked.pending = []
            return effective

        def abort_stroke(*args, **kwargs):  # napari rolls back an unfinished stroke (Escape during an encircle)
            staged = list(layer._staged_history)
            abort(*args, **kwargs)
            tracked = record()
            if tracked is not None and tracked.marks.shape == layer.data.shape:
                tracked.replay(staged, undoing=True)
                tracked.drop_pending()

        def commit_staged_history(*args, **kwargs):
            commit(*args, **kwargs)  # its paint event ties what is pending to the stroke's history item
            tracked = record()
            if tracked is not None:  # a stroke that changed nothing: no history item, the marks stay
                tracked.pending = []

        def replaying(original, history_name: str, undoing: bool):
            def run():
                history = getattr(layer, history_name)
                item = list(history[-1]) if history else []
                original()
                tracked = record()
                if tracked is not None and tracked.marks.shape == layer.data.shape:
                    tracked.replay(item, undoing)
            return run

        apply_mask_to_data._napari_unet = True
        layer._apply_mask_to_data = apply_mask_to_data
        layer._commit_staged_history = commit_staged_history
        layer._abort_stroke = abort_stroke
        layer.undo = replaying(undo, "_undo_history", True)
        layer.redo = replaying(redo, "_redo_history", False)

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
            record.pending, record.confirmed = [], {}
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
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # napari >= 0.6: bounding box + mask of the changed pixels, one label
                record.mark(atom.slice_key, None if atom.mask is None else np.asarray(atom.mask, bool), atom.new_value)
            else:  # (indices, old values, new values)
                record.mark(atom[0], None, atom[2])

    def _on_layer_removed(self, event) -> None:
        layer = unwrap(event.value)
        record = self._tracked.pop(id(layer), None)
        if record is not None:
            layer.events.paint.disconnect(self._on_paint)
        for other in self._tracked.values():  # its predictions now go by its name: the same image opened again
            if other.image is not None and other.image() is layer:  # (the removed layer lives on until gc runs)
                other.image = None


__all__ = ["Session", "Tracked", "disconnect_when_destroyed", "get_session", "unwrap"]
