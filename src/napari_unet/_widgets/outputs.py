"""Writing predictions into napari layers (main thread only).

Labels outputs are written into an existing layer with ``Labels.data_setitem`` inside
``Labels.block_history()``: one undo step (Ctrl+Z) restores the previous contents. Pixels the
user corrected on a prediction layer are kept unless asked otherwise. Probability and cell outputs are
written again only into the layer this plugin added, while it keeps the name it was given: a renamed or
duplicated copy (or a user's layer of that name) is the user's, and is left alone.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning

from napari_unet._reader import label_features
from napari_unet.labels import PREDICTION_OUTPUT, to_display
from napari_unet.tiff_io import shear_matrix

PREDICTION, PROBABILITIES, CELLS = PREDICTION_OUTPUT, "probabilities", "cells"

_ADDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # output layers we added -> (output name, name given)
_LAST_CELLS_STEP: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # cells layer -> the undo step of its latest run


#: A layer the docks write to keeps at most this many bytes of undo steps besides its latest (napari keeps 100 steps
#: of any size): each run into a retrained stack keeps its changed planes' boxes, old and new values, 2 bytes a pixel
#: of a uint8 layer: +10 MB a run on ISBI's 20 x 512², 800 MB on a 100 x 2048² stack, whose 30th run filled 24 GB.
#: The oldest steps go first; the latest run (or stroke) always stays undoable.
UNDO_BYTES = 1 << 30


def _atom_bytes(atom) -> int:
    """Bytes of the arrays in one of napari's undo atoms (a mask-based edit or an (indices, old, new) tuple)."""
    if isinstance(atom, np.ndarray):
        return atom.nbytes
    if isinstance(atom, (tuple, list)):
        return sum(_atom_bytes(part) for part in atom)
    return 0


def bound_undo_memory(layer, limit: Optional[int] = None) -> int:
    """Drop ``layer``'s oldest undo steps until those before its latest hold at most ``limit`` bytes (default
    :data:`UNDO_BYTES`); returns the number of steps dropped."""
    limit = UNDO_BYTES if limit is None else limit
    history = getattr(layer, "_undo_history", None)
    if not history or len(history) < 2:
        return 0
    sizes = [_atom_bytes(item) for item in history]
    total, dropped = sum(sizes[:-1]), 0
    while total > limit and len(history) > 1:
        history.popleft()
        total -= sizes[dropped]
        dropped += 1
    return dropped


def _region(z: Optional[int], ndim: int) -> tuple:
    return (slice(None),) * ndim if z is None else (z,)


def write_labels_undoable(layer, z: Optional[int], new: np.ndarray, keep: Optional[np.ndarray] = None) -> np.ndarray:
    """Write ``new`` into slice ``z`` (or all) of ``layer`` as one undoable edit, except where ``keep`` (a bool
    mask of ``new``'s shape).

    Returns the boolean mask (over the region) of the pixels that changed.
    """
    region = _region(z, layer.data.ndim)
    old = np.asarray(layer.data[region])
    new = np.asarray(new, dtype=layer.data.dtype)
    if keep is not None:
        new = np.where(keep, old, new)
    changed = old != new
    if not changed.any():
        return changed
    if not hasattr(layer, "_save_history") or layer.data.ndim not in (2, 3) or not isinstance(layer.data, np.ndarray):
        where = np.nonzero(changed)  # napari's public record: int64 indices of every changed pixel
        indices = where if z is None else (np.full(where[0].shape, z, np.intp), *where)
        with layer.block_history():
            layer.data_setitem(indices, new[where])
        return changed
    # napari's data_setitem keeps int64 indices of every changed pixel in the undo history, 26 bytes a pixel with the
    # values: a whole-stack run kept 286 MB for a 12 x 1024² layer of 12 MB (20 GB for 200 x 2048²). Napari's undo
    # assigns an atom's old values at its index, slices as well: each changed plane keeps the box of its changed
    # pixels, old and new values, 2 bytes a pixel of a uint8 layer.
    planes = [(z, changed, old, new)] if z is not None or layer.data.ndim == 2 else \
        [(k, changed[k], old[k], new[k]) for k in np.flatnonzero(changed.any(axis=(1, 2)))]
    with layer.block_history():
        for k, plane_changed, plane_old, plane_new in planes:
            rows, columns = np.flatnonzero(plane_changed.any(axis=1)), np.flatnonzero(plane_changed.any(axis=0))
            box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
            key = box if k is None else (int(k), *box)
            before, after = plane_old[box].copy(), plane_new[box].copy()  # (old may be a view of the layer's data)
            layer._save_history((key, before, after))
            layer.data[key] = after
    bound_undo_memory(layer)
    layer.refresh()
    return changed


def name_with_suffix(path, suffixes: tuple, progress, ignore_case: bool = False) -> Optional[str]:
    """``path`` from a save dialog, with ``suffixes[0]`` added unless it ends in one of ``suffixes``; None (with a
    warning and a status line) when the name with the added suffix exists: the dialog asked about replacing the name
    as typed, not that file."""
    path = str(path)
    if (path.lower() if ignore_case else path).endswith(suffixes):
        return path
    named = path + suffixes[0]
    if os.path.exists(named):
        show_warning(f"napari-unet: {named} exists; choose it with its {suffixes[0]} to replace it")
        progress.set_status(f"Not saved: {named} exists.")
        return None
    return named


def prediction_layer_of(viewer, session, image_layer, accept=lambda layer: True):
    """The prediction layer of ``image_layer`` that Run, Mark slice reviewed and Save act on: the selected one of
    its tracked prediction layers (``accept`` filters them), else the first; None if there is none.

    A napari duplicate (a snapshot the user keeps) is tracked too; it was the target of the next Run as the
    newest layer, while the selected original was left alone.
    """
    layers = [x for x in session.tracked_layers(image_layer) if accept(x)]
    selected = [x for x in layers if x in viewer.layers.selection]
    return (selected or layers or [None])[0]


def _added_output(viewer, name: str, shape: tuple, accept):
    """The layer we added as output ``name`` if it still has the name napari gave it (e.g. ``name [1]`` beside a
    user's layer ``name``), or None: never a renamed or duplicated copy, nor a layer of the user's."""
    for layer in viewer.layers:
        if _ADDED.get(layer) == (name, layer.name) and tuple(layer.data.shape) == shape and accept(layer):
            return layer
    return None


def _remember(layer, name: str):
    """Note ``layer`` as the output ``name`` we added."""
    _ADDED[layer] = (name, layer.name)
    return layer


def _spatial(image_layer, extra_axes: int = 0) -> dict:
    """Placement (scale, translation, rotation, shear, affine), units and axis labels of ``image_layer``, after
    ``extra_axes`` leading unitless axes (the class axis of probabilities): outputs line up with the image, also a
    rotated or registered one, and are saved in its units (µm)."""

    def leading_identity(matrix):  # a square matrix of the image's axes, with the extra axes in front
        out = np.eye(extra_axes + len(matrix))
        out[extra_axes:, extra_axes:] = matrix
        return out

    shear = shear_matrix(image_layer.shear, image_layer.ndim)
    spatial = {
        "scale": (1.0,) * extra_axes + tuple(image_layer.scale),
        "translate": (0.0,) * extra_axes + tuple(image_layer.translate),
        "rotate": leading_identity(np.asarray(image_layer.rotate, float)),
        "shear": leading_identity(shear),
        "affine": leading_identity(np.asarray(image_layer.affine.affine_matrix, float)),
    }
    units, axis_labels = getattr(image_layer, "units", None), getattr(image_layer, "axis_labels", None)
    if units is not None and axis_labels is not None:  # napari >= 0.6
        spatial["units"] = ("pixel",) * extra_axes + tuple(units)
        spatial["axis_labels"] = tuple(f"class{i or ''}" for i in range(extra_axes)) + tuple(axis_labels)
    return spatial


def _place_like(layer, image_layer, extra_axes: int = 0) -> None:
    """Give an existing output ``layer`` the image's current placement (:func:`_spatial`): a pixel size fixed or a
    registration applied since the last run would leave it drawn apart from the image, and saved so."""
    for name, value in _spatial(image_layer, extra_axes).items():
        current = getattr(layer, name)
        current = current.affine_matrix if name == "affine" else shear_matrix(current, layer.ndim) if name == "shear" else current
        if np.shape(current) != np.shape(value) or not np.array_equal(np.asarray(current), np.asarray(value)):
            setattr(layer, name, value)


def _prediction_layer_for(viewer, session, image_layer, class_values: list):
    """The prediction layer :func:`write_prediction` writes into, or None (it adds one)."""
    shape = tuple(image_layer.data.shape)
    return prediction_layer_of(
        viewer, session, image_layer,
        lambda x: list(x.metadata.get("class_values") or []) == class_values and tuple(x.data.shape) == shape,
    )


def kept_indices(viewer, session, image_layer, model, z: Optional[int] = None) -> Optional[np.ndarray]:
    """int16 class indices (-1 elsewhere) of the pixels :func:`write_prediction` keeps with ``keep_corrections``: of the
    image's shape, or (1, Y, X) for slice ``z`` (``predict(kept=...)`` with ``slices=[z]``); None if it keeps none. A
    layer ordering told them keeps its layers in order around them."""
    pixels = kept_pixels(viewer, session, image_layer, model, z)
    if pixels is None:
        return None
    shape = tuple(image_layer.data.shape)
    kept = np.full(shape if z is None else shape[1:], -1, np.int16)
    kept.reshape(-1)[pixels[0]] = pixels[1]
    return kept if z is None else kept[None]


def kept_pixels(viewer, session, image_layer, model, z: Optional[int] = None) -> Optional[tuple]:
    """The pixels :func:`write_prediction` keeps with ``keep_corrections``, sparsely: (int64 flat indices into the image's
    shape, or into slice ``z``'s; their int16 class indices), or None if it keeps none. For the cells, which must split
    where a kept membrane splits (a dense stack of indices held 2 bytes a pixel for the whole run)."""
    layer = _prediction_layer_for(viewer, session, image_layer, [int(v) for v in model.class_values])
    region = _region(z, len(image_layer.data.shape))
    reviewed = None if layer is None else session.reviewed(layer, region)
    if reviewed is None or not reviewed.any():
        return None
    where = np.flatnonzero(reviewed)
    return where, (np.asarray(layer.data[region]).reshape(-1)[where].astype(np.int16) - 1)  # display k + 1: class k


def write_prediction(viewer, session, image_layer, labels, model, info, z, keep_corrections=True):
    """Show class-value ``labels`` as a display-convention Labels layer ``<image> prediction``.

    ``info``: the model's :class:`~.session.ModelInfo` (class names and colours, when known).
    Returns the layer and the number of pixels written.
    """
    class_values = [int(v) for v in model.class_values]
    names = info.class_names
    display = to_display(labels, class_values)
    shape = tuple(image_layer.data.shape)
    name = f"{image_layer.name} {PREDICTION}"
    # only a prediction layer (ours, or a saved one reopened): a user's layer that merely has the name is left alone
    layer = _prediction_layer_for(viewer, session, image_layer, class_values)
    metadata = {
        "class_values": class_values,
        "class_names": names or [str(v) for v in class_values],
        "ignore_value": None,
        "source": f"napari-unet prediction of {image_layer.name}",
        "napari_unet": {"output": PREDICTION, "image": image_layer.name},
    }
    region = _region(z, len(shape))
    if layer is None:
        data = np.zeros(shape, display.dtype)
        data[region] = display
        kwargs = {"colormap": info.colormap} if info.colormap is not None else {}
        layer = viewer.add_labels(
            data, name=name, metadata=metadata, features=label_features(class_values, names),
            opacity=0.6, **_spatial(image_layer), **kwargs,
        )
        session.track(layer, image_layer)
        return layer, int(display.size)
    layer.metadata.update(metadata)
    _place_like(layer, image_layer)
    session.track(layer, image_layer)  # (re)publishes its marks into the metadata just replaced
    with session.muted(layer):  # overwritten corrections no longer hold their value: predictions again, until undone
        changed = write_labels_undoable(layer, z, display, session.reviewed(layer, region) if keep_corrections else None)
    session.record(layer).unmark(region, changed)  # a written value is the model's, even one the user once gave there
    return layer, int(changed.sum())


def write_probabilities(viewer, image_layer, probabilities, model, names, z):
    """Probability maps: of class index 1 for two classes, else a (class, ...) stack."""
    shape = tuple(image_layer.data.shape)
    if model.config.n_classes == 2:
        label = names[1] if names else str(model.class_values[1])
        data, extra, name = probabilities[..., 1], 0, f"{image_layer.name} P({label})"
    else:
        data, extra, name = np.moveaxis(probabilities, -1, 0), 1, f"{image_layer.name} {PROBABILITIES}"
    full_shape = (model.config.n_classes,) * extra + shape
    layer = _added_output(viewer, name, full_shape, lambda x: isinstance(x, Image))
    if layer is None:
        if z is None and extra:  # the prediction's own maps, a view: copying 110 OCT B-scans' took the GUI 3.7 s
            full = data if data.dtype == np.float32 else data.astype(np.float32)
        elif z is None:  # one class's map of two: a copy, so that the other's is freed
            full = np.ascontiguousarray(data, np.float32)
        else:
            full = np.zeros(full_shape, np.float32)
            full[(slice(None),) * extra + _region(z, len(shape))] = data
        meta = {"napari_unet": {"output": PROBABILITIES, "image": image_layer.name}}
        layer = viewer.add_image(full, name=name, metadata=meta, colormap="magma", contrast_limits=(0, 1), blending="additive", visible=False, **_spatial(image_layer, extra))
        return _remember(layer, name)
    _place_like(layer, image_layer, extra)
    if z is None:
        layer.data = np.asarray(data, np.float32)
    else:
        layer.data[(slice(None),) * extra + (z,)] = data
        layer.refresh()
    return layer


def write_cells(viewer, session, image_layer, instances, z):
    """Cell instance labels ``<image> cells`` (undoable when written into an existing layer)."""
    shape = tuple(image_layer.data.shape)
    name = f"{image_layer.name} {CELLS}"
    layer = _added_output(viewer, name, shape, lambda x: isinstance(x, Labels) and x.data.dtype == np.int32)
    if layer is None:
        data = np.zeros(shape, np.int32)
        data[_region(z, len(shape))] = instances
        meta = {"napari_unet": {"output": CELLS, "image": image_layer.name}}
        layer = viewer.add_labels(data, name=name, metadata=meta, opacity=0.4, **_spatial(image_layer))
        return _remember(layer, name)
    _place_like(layer, image_layer)
    if z is not None:  # keep ids unique over the stack (the other slices' views: a copy of the stack took 3.2 GB)
        data = np.asarray(layer.data)
        largest = max(int(data[:z].max(initial=0)), int(data[z + 1 :].max(initial=0)))
        instances = np.where(instances > 0, instances + largest, 0)
    # Each run numbers the cells anew (94 % of the pixels change after a Retrain): its undo step kept 8 bytes a pixel
    # of the whole stack, up to napari's 100 steps. Only the latest run stays undoable, unless the user edited the
    # layer after it (their edits and the runs before them stay).
    history = getattr(layer, "_undo_history", None)
    if history and history[-1] is _LAST_CELLS_STEP.get(layer) and hasattr(layer, "_reset_history"):
        layer._reset_history()
    with session.muted(layer):
        changed = write_labels_undoable(layer, z, instances)
    history = getattr(layer, "_undo_history", None)
    if changed.any() and history:  # a run that changed nothing left the user's last step last
        _LAST_CELLS_STEP[layer] = history[-1]
    return layer
