"""npe2 writer: one Labels layer to .tif/.tiff, back in the file's own label values.

A labels layer in the napari_unet display convention (display 0 = not annotated, display
``k + 1`` = ``metadata["class_values"][k]``) is converted back to file values with
:func:`napari_unet.labels.from_display`. Unannotated pixels get ``metadata["ignore_value"]``,
or, if there is none, a value that is no class (:func:`napari_unet.labels.choose_ignore_value`:
0 if free, else an unused value), which is recorded in the file. A layer without
``class_values`` (painted from scratch in napari) is written as is, with 0 recorded as the
ignore value when present, unless the training widget recorded that 0 is a class there (``ZERO_IS_CLASS``). The layer's translate is recorded too, and its rotate, shear and affine when they are not the identity. The layer's scale and units go into the TIFF resolution / ImageJ
spacing, and the write is atomic (:func:`napari_unet.tiff_io.write_tiff`).

A prediction layer of the inference widget (``metadata["napari_unet"]["output"] == "prediction"``)
also stores the image it was predicted from and its reviewed pixels (see :func:`napari_unet.labels.reviewed_pixels`)
and which of them were only accepted (:func:`napari_unet.labels.accepted_only_pixels`),
so that the napari-unet reader reopens it with the user's corrections still counting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .labels import PREDICTION_OUTPUT, ZERO_IS_CLASS, accepted_only_pixels, reviewed_pixels
from .tiff_io import shear_matrix, write_tiff


class LabelsWriteError(OSError):
    """A labels layer that cannot be written as it is (a display label beyond its classes, bad metadata...).

    Not a ValueError: npe2 takes a writer's ValueError for "this writer does not apply", so napari would
    drop the message and only warn that the plugin is no valid writer. napari shows this error's message
    as an error notification (File > Save), and ``layer.save`` raises it.
    """

_UNIT_NAMES = {
    "micrometer": "µm",
    "micron": "µm",
    "nanometer": "nm",
    "angstrom": "Å",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "second": "s",
    "millisecond": "ms",
    "minute": "min",
    "hour": "h",
}


def _unit_text(unit) -> str | None:
    if unit is None:
        return None
    text = str(unit).strip()
    if text in ("", "pixel", "px", "dimensionless"):
        return None
    return _UNIT_NAMES.get(text, text)


def labels_to_file_values(display, metadata: dict, what: str = "the labels layer") -> tuple[np.ndarray, dict[str, Any]]:
    """File label values and the label metadata to store, from display values and layer metadata.

    Returns ``(values, label_meta)`` with ``label_meta`` holding ``class_values``, ``ignore_value``
    (``None`` if every pixel is annotated and none was set) and ``class_names`` when known.
    Display values that are no class, or label metadata that are not integers, raise
    :class:`~napari_unet.labels.LabelError` naming ``what``.
    """
    from .labels import (
        choose_ignore_value,
        find_class_values,
        from_display,
        metadata_class_values,
        metadata_ignore_value,
    )

    display = np.asarray(display)
    class_values = metadata_class_values(metadata, what)
    unannotated = bool((display == 0).any())
    if class_values is None:
        # A plain napari labels layer: its values are the file values, 0 = unpainted unless trained as a class.
        values = display
        ignore = 0 if unannotated and metadata.get(ZERO_IS_CLASS) is not True else None
        found = find_class_values(values, ignore)
        label_meta: dict[str, Any] = {"class_values": found, "ignore_value": ignore}
        if values.dtype == bool:
            values = values.astype(np.uint8)
        return values, label_meta

    ignore_value = metadata_ignore_value(metadata, what)
    if ignore_value is not None and ignore_value in class_values:
        ignore_value = None  # stale: an ignore value that is also a class would lose annotations
    if unannotated and ignore_value is None:
        ignore_value = choose_ignore_value(class_values)
    values = from_display(display, class_values, ignore_value if unannotated else None, what)
    file_dtype = metadata.get("file_dtype")
    if file_dtype:
        try:
            dtype = np.dtype(file_dtype)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                used = [*class_values, *([int(ignore_value)] if unannotated else [])]
                if info.min <= min(used) and max(used) <= info.max:
                    values = values.astype(dtype, copy=False)
        except (TypeError, ValueError):
            pass
    label_meta = {"class_values": class_values, "ignore_value": None if ignore_value is None else int(ignore_value)}
    names = metadata.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == len(class_values):
        label_meta["class_names"] = [str(n) for n in names]
    return values, label_meta


#: Extensions of other formats, refused by :func:`write_labels` (any other name gets .tif: "cells_v1.2", "E12.5").
OTHER_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".npy", ".npz", ".zarr", ".h5", ".hdf5", ".n5",
                 ".csv", ".json", ".txt", ".mrc", ".nii", ".gz", ".czi", ".lif", ".nd2", ".svg", ".pdf", ".keras")


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers; returns ``[path]`` (``.tif`` added to a name without one, unless
    that file exists).

    Another file extension (``.png``) raises :class:`LabelsWriteError`.
    Labels that cannot be written raise :class:`LabelsWriteError` before anything is written; a folder
    that does not exist raises FileNotFoundError (see :func:`~napari_unet.tiff_io.write_tiff`).
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in OTHER_FORMATS:  # a TIFF named .png opened with nothing
        raise LabelsWriteError(f"cannot save {os.path.basename(path)}: napari-unet saves labels as TIFF files; "
                               "give a name ending in .tif")
    if extension not in (".tif", ".tiff"):  # napari's save dialog passes the name as typed ("cells_1.5um", "E12.5")
        if os.path.exists(path + ".tif"):  # the dialog asked about replacing the name typed, not this one
            raise LabelsWriteError(f"cannot save {os.path.basename(path)}: {os.path.basename(path)}.tif exists; give "
                                   "its full name to replace it")
        path += ".tif"
    try:
        return [_write_labels(path, data, meta)]
    except ValueError as err:  # e.g. LabelError: raised as an OSError, which npe2 does not drop
        raise LabelsWriteError(f"cannot save {os.path.basename(path)}: {err}") from err


def _axes_of_labels(axis_labels, ndim: int) -> str | None:
    """TIFF axes ("TYX", "TZYX") of napari's ``axis_labels`` when they name time, z, y and x, ending in y, x (a time
    series was written as Z slices, its time step as their spacing); None otherwise (napari's "-3", "-2", "-1")."""
    letters = {"t": "T", "time": "T", "z": "Z", "y": "Y", "x": "X"}
    names = [str(name).strip().lower() for name in axis_labels or ()]
    axes = "".join(letters.get(name, "?") for name in names)
    if len(axes) == ndim and "?" not in axes and len(set(axes)) == ndim and axes.endswith("YX"):
        return axes
    return None


def _write_labels(path: str, data: Any, meta: dict) -> str:
    # multiscale (napari hands a MultiScaleData, a Sequence whose np.asarray is its lowest level): write the full
    # resolution, also when a script's call leaves the multiscale flag out of meta (arrays are no Sequence)
    if meta.get("multiscale") or (isinstance(data, Sequence) and not isinstance(data, (str, bytes))):
        data = data[0]
    display = np.asarray(data)
    layer_meta = dict(meta.get("metadata") or {})
    what = f"labels layer {meta['name']!r}" if isinstance(meta.get("name"), str) else "the labels layer"
    values, label_meta = labels_to_file_values(display, layer_meta, what)

    axes = layer_meta.get("axes")
    if not (isinstance(axes, str) and len(axes) == values.ndim and "S" not in axes):
        axes = _axes_of_labels(meta.get("axis_labels"), values.ndim)
    units = meta.get("units")
    unit_list = [_unit_text(u) for u in units] if units is not None else None
    tiff_meta: dict[str, Any] = dict(label_meta)
    tracking = layer_meta.get("napari_unet")
    if isinstance(tracking, dict) and tracking.get("output") == PREDICTION_OUTPUT and isinstance(tracking.get("image"), str):
        tiff_meta["predicted_from"] = tracking["image"]
        reviewed = reviewed_pixels(display, tracking)
        if reviewed is not None and reviewed.any():
            tiff_meta["reviewed"] = reviewed
            accepted = accepted_only_pixels(display, tracking)
            if accepted is not None and accepted.any():
                tiff_meta["accepted"] = accepted
    if axes:
        tiff_meta["axes"] = axes
    if meta.get("scale") is not None:
        tiff_meta["scale"] = [float(s) for s in meta["scale"]]
    if meta.get("translate") is not None:  # the layer's offset (e.g. of an image registered elsewhere)
        tiff_meta["translate"] = [float(t) for t in meta["translate"]]
    placement = {key: shear_matrix(meta[key], values.ndim) if key == "shear" else meta[key]
                 for key in ("rotate", "shear", "affine") if meta.get(key) is not None}
    if placement:  # a rotated or registered image's prediction reopens over it (only the non-identity ones are kept)
        tiff_meta["placement"] = placement
    if unit_list is not None and any(unit_list):
        tiff_meta["units"] = unit_list
    return write_tiff(os.fspath(path), values, tiff_meta)


__all__ = ["LabelsWriteError", "labels_to_file_values", "write_labels"]
