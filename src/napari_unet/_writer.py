"""npe2 writer: one Labels layer to .tif/.tiff, back in the file's own label values.

A labels layer in the napari_unet display convention (display 0 = not annotated, display
``k + 1`` = ``metadata["class_values"][k]``) is converted back to file values with
:func:`napari_unet.labels.from_display`. Unannotated pixels get ``metadata["ignore_value"]``,
or, if there is none, a value that is no class (:func:`napari_unet.labels.choose_ignore_value`:
0 if free, else an unused value), which is recorded in the file. A layer without
``class_values`` (painted from scratch in napari) is written as is, with 0 recorded as the
ignore value when present. The layer's scale and units go into the TIFF resolution / ImageJ
spacing, and the write is atomic (:func:`napari_unet.tiff_io.write_tiff`).

A prediction layer of the inference widget (``metadata["napari_unet"]["output"] == "prediction"``)
also stores the image it was predicted from and its reviewed pixels (see :func:`napari_unet.labels.reviewed_pixels`),
so that the napari-unet reader reopens it with the user's corrections still counting.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .labels import PREDICTION_OUTPUT, reviewed_pixels
from .tiff_io import write_tiff

_UNIT_NAMES = {
    "micrometer": "µm",
    "micron": "µm",
    "nanometer": "nm",
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


def labels_to_file_values(display, metadata: dict) -> tuple[np.ndarray, dict[str, Any]]:
    """File label values and the label metadata to store, from display values and layer metadata.

    Returns ``(values, label_meta)`` with ``label_meta`` holding ``class_values``, ``ignore_value``
    (``None`` if every pixel is annotated and none was set) and ``class_names`` when known.
    """
    from .labels import choose_ignore_value, find_class_values, from_display

    display = np.asarray(display)
    class_values = metadata.get("class_values")
    ignore_value = metadata.get("ignore_value")
    unannotated = bool((display == 0).any())
    if class_values is None:
        # A plain napari labels layer: its values are the file values, 0 = unpainted.
        values = display
        found = find_class_values(values, 0 if unannotated else None)
        label_meta: dict[str, Any] = {"class_values": found, "ignore_value": 0 if unannotated else None}
        if values.dtype == bool:
            values = values.astype(np.uint8)
        return values, label_meta

    class_values = [int(v) for v in class_values]
    if ignore_value is not None and int(ignore_value) in class_values:
        ignore_value = None  # stale: an ignore value that is also a class would lose annotations
    if unannotated and ignore_value is None:
        ignore_value = choose_ignore_value(class_values)
    values = from_display(display, class_values, ignore_value if unannotated else None)
    file_dtype = metadata.get("file_dtype")
    if file_dtype:
        try:
            dtype = np.dtype(file_dtype)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                used = [*class_values, *([int(ignore_value)] if unannotated else [])]
                if info.min <= min(used) and max(used) <= info.max:
                    values = values.astype(dtype, copy=False)
        except TypeError:
            pass
    label_meta = {"class_values": class_values, "ignore_value": None if ignore_value is None else int(ignore_value)}
    names = metadata.get("class_names")
    if names is not None and len(names) == len(class_values):
        label_meta["class_names"] = [str(n) for n in names]
    return values, label_meta


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers; returns ``[path]``."""
    if isinstance(data, (list, tuple)):  # multiscale: write the full-resolution level
        data = data[0]
    display = np.asarray(data)
    layer_meta = dict(meta.get("metadata") or {})
    values, label_meta = labels_to_file_values(display, layer_meta)

    axes = layer_meta.get("axes")
    if not (isinstance(axes, str) and len(axes) == values.ndim and "S" not in axes):
        axes = None
    units = meta.get("units")
    unit_list = [_unit_text(u) for u in units] if units is not None else None
    tiff_meta: dict[str, Any] = dict(label_meta)
    tracking = layer_meta.get("napari_unet")
    if isinstance(tracking, dict) and tracking.get("output") == PREDICTION_OUTPUT and isinstance(tracking.get("image"), str):
        tiff_meta["predicted_from"] = tracking["image"]
        reviewed = reviewed_pixels(display, tracking)
        if reviewed is not None and reviewed.any():
            tiff_meta["reviewed"] = reviewed
    if axes:
        tiff_meta["axes"] = axes
    if meta.get("scale") is not None:
        tiff_meta["scale"] = [float(s) for s in meta["scale"]]
    if unit_list is not None and any(unit_list):
        tiff_meta["units"] = unit_list
    written = write_tiff(os.fspath(path), values, tiff_meta)
    return [written]


__all__ = ["labels_to_file_values", "write_labels"]
