"""The pixels a user painted or accepted on a prediction layer, and the napari stroke hooks that count them.

:class:`Tracked` keeps, per pixel, the display values the user painted (corrections) or accepted there; a pixel
holding one of them is *reviewed*. :func:`watch_strokes` makes napari's brush, fill and polygon report every pixel a
stroke paints, also those that held its value already.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from napari_unet.labels import (
    PREDICTION_OUTPUT,
    accepted_only_pixels,
    holds_marked_value,
    marks_dtype,
    reviewed_pixels,
    value_marks,
)


def unwrap(obj):
    """The napari object behind a plugin ``PublicOnlyProxy`` (identity checks need the real one)."""
    return getattr(obj, "__wrapped__", obj)


#: Ties of confirmed stroke pixels to napari history atoms above which those of atoms napari dropped are forgotten.
CONFIRMED_PRUNE_AT = 256

#: Pixels of an in-memory image :func:`image_identity` reads (evenly spaced): a few microseconds.
IDENTITY_SAMPLES = 4096


def image_identity(image_layer) -> tuple:
    """What tells an image layer from another of the same name: its shape, and the file it was opened from or, for
    in-memory data, a hash of :data:`IDENTITY_SAMPLES` evenly spaced pixels (lazy data without a file: shape only)."""
    import zlib

    data = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
    shape = tuple(int(n) for n in data.shape)
    path = getattr(getattr(image_layer, "source", None), "path", None)
    if path:
        return shape, str(path)
    if not isinstance(data, np.ndarray) or not data.size:
        return shape, None
    picks = np.unique(np.linspace(0, data.size - 1, min(IDENTITY_SAMPLES, data.size)).astype(np.int64))
    return shape, zlib.crc32(np.ascontiguousarray(data[np.unravel_index(picks, shape)]).tobytes())  # no copy of a view


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
    image_key: Optional[tuple] = None  # image_identity of that image layer, when known
    prune_at: int = CONFIRMED_PRUNE_AT  # ties above which the lost atoms' are dropped (doubling: amortised pruning)

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
            image, image_name, image_key = None, str(meta.get("image") or "") if isinstance(meta, dict) else "", None
        else:
            image, image_name, image_key = weakref.ref(unwrap(image_layer)), image_layer.name, image_identity(image_layer)
        record = cls(layer, image, image_name, marks, accepted=accepted, image_key=image_key)
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
        """Whether this layer was predicted from ``image_layer``: by identity, or once that layer is gone (or for a
        reopened file) by name and, when known, :func:`image_identity`: another file or other pixels of the same name
        (``a/image.tif`` after ``b/image.tif``) got the old image's prediction and its corrections."""
        image = self.image() if self.image is not None else None
        if image is not None:
            return image is unwrap(image_layer)
        if not (self.image_name and self.image_name == image_layer.name):
            return False
        return self.image_key is None or self.image_key == image_identity(image_layer)

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
        """Mark the pixels of ``region`` (a tuple of slices) where ``where`` is True, which a stroke painted ``value``
        (changing them, or over that value); only the marks this sets are kept for :meth:`tie` (earlier ones outlive an
        undo)."""
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
            if len(self.confirmed) > self.prune_at:
                # every atom of a stroke is tied: pruning at a fixed count scanned the whole history at each tie
                # once the live atoms passed it (a 4.6 s freeze at a stroke's end)
                self._forget_lost_atoms()
                self.prune_at = max(CONFIRMED_PRUNE_AT, 2 * len(self.confirmed))

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


def watch_strokes(layer, record: Callable[[], Optional[Tracked]]) -> None:
    """Count every pixel a stroke paints, also those that held its value already (napari's paint events carry
    only changed pixels: a membrane drawn across a gap counted only where it was missing, and a new prediction
    then overwrote the rest of the user's line).

    Wraps the layer's ``_apply_mask_to_data`` (napari >= 0.6: brush, polygon and fill), ``_commit_staged_history``
    (a stroke's end), ``_abort_stroke`` (napari 0.9: a stroke cancelled), ``undo`` and ``redo``; with another
    napari, strokes count where they change pixels. ``record()`` gives the layer's :class:`Tracked` record, or None
    once it is no longer tracked.
    """
    names = ("_apply_mask_to_data", "_commit_staged_history", "_abort_stroke", "undo", "redo", "_undo_history",
             "_redo_history", "_staged_history", "_block_history")
    if not all(hasattr(layer, name) for name in names) or getattr(layer._apply_mask_to_data, "_napari_unet", False):
        return
    apply_mask, commit, abort = layer._apply_mask_to_data, layer._commit_staged_history, layer._abort_stroke
    undo, redo = layer.undo, layer.redo

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


__all__ = ["CONFIRMED_PRUNE_AT", "IDENTITY_SAMPLES", "Tracked", "image_identity", "unwrap", "watch_strokes"]
