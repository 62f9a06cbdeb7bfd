"""npe2 reader for TIFF files, lists of TIFF slices, folders of TIFF slices and zarr stores.

Over napari's built-in TIFF reader it adds: normalised axes (T/Z/C/Y/X) as ``axis_labels``,
the physical pixel size as ``scale`` and ``units``, a ``channel_axis`` for multi-channel data,
and label detection. Label images become a ``labels`` layer in the napari_unet *display*
convention: display 0 = not annotated, display ``k + 1`` = class ``class_values[k]``; the file
values are kept in ``layer.metadata["class_values"]`` (see :mod:`napari_unet.labels`), so a
class 0 (ISBI membrane, OCT vitreous) stays visible and paintable.

Reading never raises: an unreadable file shows a napari error notification and the reader
declines it (``get_reader`` returns ``None``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .tiff_io import (
    MAX_LABEL_CLASSES,
    TiffData,
    TiffReadError,
    check_memory,
    is_lazy,
    is_tiff_path,
    memory_shortfall,
    n_bytes,
    read_folder,
    read_slices,
    read_tiff,
    tiff_files_in,
)
from .zarr_io import ZarrReadError, is_zarr_path, read_zarr

LayerDataTuple = tuple  # (data, kwargs, layer_type)
ReaderFunction = Callable[[Any], list]

#: Units napari (pint) understands, keyed by the units tiff_io produces.
_PINT_UNITS = {
    "µm": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "s": "second",
    "ms": "millisecond",
    "min": "minute",
    "h": "hour",
}
#: Display labels are uint16 at most (see labels.to_display).
_MAX_DISPLAY_CLASSES = 65534


def _notify(severity: str, message: str) -> None:
    """Show ``message`` as a napari notification of ``severity`` ("error", "warning" or "info"); falls back to a
    Python warning."""
    try:
        from napari.utils import notifications

        getattr(notifications, f"show_{severity}")(message)
    except Exception:  # pragma: no cover - napari missing or notification machinery failing
        import warnings

        warnings.warn(message, stacklevel=3)


def _notify_error(message: str) -> None:
    _notify("error", message)


def _notify_warning(message: str) -> None:
    _notify("warning", message)


def _notify_info(message: str) -> None:
    _notify("info", message)


def _claims(path) -> bool:
    """Whether this reader is meant for ``path`` (a TIFF file, a folder of TIFFs, a list of TIFFs, a zarr store)."""
    if isinstance(path, (list, tuple)):
        return len(path) > 0 and all(isinstance(p, (str, os.PathLike)) and is_tiff_path(p) for p in path)
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(os.fspath(path))
    if is_zarr_path(p):
        return p.is_dir()
    if p.is_dir():
        try:
            return bool(tiff_files_in(p))
        except OSError:
            return False
    return is_tiff_path(p)


#: Images of at least this many bytes of pixels open lazily: napari reads the slices it shows (labels are
#: read whole: painting needs them in memory).
LAZY_IMAGE_BYTES = 2**32


def read_path(path) -> TiffData:
    """Read a TIFF file, a folder of TIFF slices, or a list of TIFF slices (stacked along Z); images of
    :data:`LAZY_IMAGE_BYTES` or more as a memory map or dask array (see :func:`~napari_unet.tiff_io.read_tiff`).
    :class:`~napari_unet.tiff_io.TiffReadError` for data napari cannot show (:func:`check_showable`)."""
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return read_path(path[0])
        source = Path(os.fspath(path[0])).parent
        return _labels_in_memory(read_slices(path, source=source, lazy=True, lazy_from_bytes=LAZY_IMAGE_BYTES), lambda: read_slices(path, source=source))
    if is_zarr_path(path):  # always lazy: napari reads the chunks it shows
        return _labels_in_memory(read_zarr(path), lambda: read_zarr(path, lazy=False))
    if Path(os.fspath(path)).is_dir():
        return _labels_in_memory(read_folder(path, lazy=True, lazy_from_bytes=LAZY_IMAGE_BYTES), lambda: read_folder(path))
    return _labels_in_memory(read_tiff(path, lazy=True, lazy_from_bytes=LAZY_IMAGE_BYTES), lambda: read_tiff(path))


def check_showable(tiff: TiffData) -> None:
    """:class:`~napari_unet.tiff_io.TiffReadError` (one line: the file, what is wrong, what to do) for data napari fails
    on when the layer is added, after the reader has returned: no pixels (an axis of length 0), values that are not
    numbers (complex, dates, text, records), or slices larger than the machine's (or container's) memory and swap
    (napari reads the slice it shows whole); a slice over :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory
    available now gets a warning only."""
    data, where = tiff.data, tiff.path or tiff.name
    if 0 in data.shape or data.ndim < 2:
        raise TiffReadError(f"{where}: holds no pixels (shape {tuple(data.shape)}); nothing to show")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        hint = ", e.g. numpy.abs of the complex values" if dtype.kind == "c" else ""
        raise TiffReadError(f"{where}: holds values of type {dtype}, which napari cannot show as an image; save it as "
                            f"integers or floating-point numbers{hint}")
    if is_lazy(data):
        plane = tuple(data.shape[-3:] if tiff.rgb and data.ndim >= 3 else data.shape[-2:])
        what = f"one slice of {' x '.join(map(str, plane))} {dtype} pixels, which napari reads whole to show it,"
        check_memory(where, plane, dtype, whole=False, what=what, warn=False)  # refused beyond memory and swap
        shortfall = memory_shortfall(n_bytes(plane, dtype))
        if shortfall is not None:  # it may fit: shown, with a warning
            _notify_warning(f"napari-unet: {where}: {what} {shortfall}; showing it anyway (close other programs if the "
                            "system slows down)")


def _labels_in_memory(tiff: TiffData, read_eagerly: Callable[[], TiffData]) -> TiffData:
    """``tiff``, read again at once if it is a lazy label image (painting needs labels in memory; float data with
    class values, such as probability maps, open as images and stay lazy). Labels whose pixels and display copy do not
    fit in the memory available open as an image (lazy if read lazily), with a warning, rather than fill memory."""
    import dataclasses

    check_showable(tiff)
    integer = np.issubdtype(tiff.data.dtype, np.integer) or tiff.data.dtype == bool
    if not (tiff.is_labels_hint and integer):
        return tiff
    # the file's values (unless in memory already) and the labels layer's display values (uint8 up to 254 classes)
    display = n_bytes(tiff.data.shape, np.uint8 if tiff.data.dtype.itemsize == 1 else np.uint16)
    shortfall = memory_shortfall(display + (n_bytes(tiff.data.shape, tiff.data.dtype) if is_lazy(tiff.data) else 0))
    if shortfall is not None:
        _notify_warning(f"napari-unet: {tiff.name} looks like labels, but opening them as a labels layer {shortfall}; "
                        "opened as an image (crop it to paint on it)")
        return dataclasses.replace(tiff, is_labels_hint=False)
    return read_eagerly() if is_lazy(tiff.data) else tiff


def get_reader(path) -> ReaderFunction | None:
    """npe2 reader command: a reader function for TIFF files / folders of slices, else ``None``.

    The file is read here (the reader function returns the cached result), so a corrupt file
    is reported at once with a napari notification and declined with ``None``.
    """
    try:
        if not _claims(path):
            return None
        tiff = read_path(path)
        layers = layer_data_from_tiff(tiff)
    except (TiffReadError, ZarrReadError) as exc:
        _notify_error(f"napari-unet: {exc}")
        return None
    except MemoryError as exc:  # (estimates aside: memory taken meanwhile, or a limit the system does not report)
        _notify_error(_out_of_memory(path, exc))
        return None
    except Exception as exc:  # never raise out of the plugin
        _notify_error(f"napari-unet: could not read {path}: {type(exc).__name__}: {exc}")
        return None

    def reader_function(path_again=None) -> list[LayerDataTuple]:
        if path_again is None or _same_path(path_again, path):
            return layers
        return read_layers(path_again)

    return reader_function


def _out_of_memory(path, exc: MemoryError) -> str:
    detail = " ".join(str(exc).split())
    return (f"napari-unet: not enough memory to open {path}{f' ({detail})' if detail else ''}; close other programs, or "
            "crop it or save it as smaller files")


def _same_path(a, b) -> bool:
    def norm(p):
        if isinstance(p, (list, tuple)):
            return tuple(os.fspath(x) for x in p)
        return os.fspath(p)

    try:
        return norm(a) == norm(b)
    except TypeError:
        return False


def read_layers(path) -> list[LayerDataTuple]:
    """Layer data tuples for ``path``; on error a notification and ``[]`` (never raises)."""
    try:
        tiff = read_path(path)
        names = tiff.metadata.get("ome_labels")
        if names:  # read only on request: which label image goes with which training?
            store = Path(os.fspath(path)).name
            _notify_info(f"napari-unet: {store} also holds the label image{'s' if len(names) > 1 else ''} {', '.join(names)}: "
                         f"open {store}/labels/<name> with the napari U-Net reader to train on one or to correct it")
        return layer_data_from_tiff(tiff)
    except (TiffReadError, ZarrReadError) as exc:
        _notify_error(f"napari-unet: {exc}")
    except MemoryError as exc:
        _notify_error(_out_of_memory(path, exc))
    except Exception as exc:
        _notify_error(f"napari-unet: could not read {path}: {type(exc).__name__}: {exc}")
    return []


# --------------------------------------------------------------------------------------------------
# TiffData -> layer data tuples
# --------------------------------------------------------------------------------------------------


def layer_data_from_tiff(tiff: TiffData) -> list[LayerDataTuple]:
    """napari layer data tuples for a :class:`~napari_unet.tiff_io.TiffData`."""
    tiff = _with_yx_last(tiff)
    if tiff.is_labels_hint:
        labels = _labels_layer(tiff)
        if labels is not None:
            return [labels]
    return _image_layers(tiff)


def _with_yx_last(tiff: TiffData) -> TiffData:
    """``tiff`` with Y and X as its last axes (before RGB samples) when its file records them before another: B-scans
    stored side by side as YXZ opened as 496 images of 768 x N pixels, which the inference widget predicted (the
    command line refuses such files, naming the fix)."""
    import dataclasses

    samples = len(tiff.axes) - len(tiff.axes.rstrip("S"))
    core = tiff.axes[: len(tiff.axes) - samples]
    if "Y" not in core or "X" not in core or core.endswith("YX"):
        return tiff
    order = [i for i, axis in enumerate(core) if axis not in "YX"] + [core.index("Y"), core.index("X")]
    order += list(range(len(core), len(tiff.axes)))
    metadata = dict(tiff.metadata)
    translate = metadata.get("translate")
    if isinstance(translate, (list, tuple)) and len(translate) == len(order):
        metadata["translate"] = [translate[i] for i in order]
    axes = "".join(tiff.axes[i] for i in order)
    _notify_warning(f"napari-unet: {tiff.name} records its axes as {tiff.axes} (shape {tuple(tiff.data.shape)}); opened as "
                    f"{axes}, with Y and X last, so that its slices are images")
    return dataclasses.replace(tiff, data=np.transpose(tiff.data, order), axes=axes, metadata=metadata,
                               scale=tuple(tiff.scale[i] for i in order), units=tuple(tiff.units[i] for i in order))


def _spatial_kwargs(axes: str, scale, units, drop: str, translate=None) -> dict[str, Any]:
    keep = [i for i, a in enumerate(axes) if a not in drop]
    kwargs: dict[str, Any] = {
        "scale": tuple(float(scale[i]) for i in keep),
        "axis_labels": tuple(axes[i].lower() for i in keep),
    }
    if isinstance(translate, (list, tuple)) and len(translate) == len(axes):  # as the napari-unet writer records it
        kwargs["translate"] = tuple(float(translate[i]) for i in keep)
    if any(units[i] is not None for i in keep):
        kwargs["units"] = tuple(_PINT_UNITS.get(units[i], "pixel") if units[i] else "pixel" for i in keep)
    return kwargs


def _base_metadata(tiff: TiffData) -> dict[str, Any]:
    meta = {
        "source": tiff.path,
        "axes": tiff.axes,
        "file_dtype": str(tiff.data.dtype),
        "format": tiff.metadata.get("format"),
    }
    if tiff.has_physical_size:
        meta["units"] = [u for u in tiff.units]
    return meta


def _image_layers(tiff: TiffData) -> list[LayerDataTuple]:
    data, axes = tiff.data, tiff.axes
    kwargs = _spatial_kwargs(axes, tiff.scale, tiff.units, drop="CS", translate=tiff.metadata.get("translate"))
    kwargs["name"] = tiff.name
    kwargs["metadata"] = _base_metadata(tiff)
    if tiff.rgb:
        kwargs["rgb"] = True
    c = tiff.channel_axis
    if c is not None and data.shape[c] > 1:
        n = data.shape[c]
        names = tiff.metadata.get("channel_names") or _class_channel_names(tiff.metadata, n) or [f"ch{i}" for i in range(n)]
        kwargs["channel_axis"] = c
        kwargs["name"] = [f"{tiff.name} [{names[i]}]" for i in range(n)]
        kwargs["metadata"] = [dict(kwargs["metadata"], channel=i) for i in range(n)]
    elif c is not None:  # a single channel: drop the axis
        data = np.take(data, 0, axis=c)
    return [(data, kwargs, "image")]


def _class_channel_names(metadata: dict, n_channels: int) -> list[str] | None:
    """``P(<class>)`` per channel of a probability file (one channel per class value it records), or None."""
    values, names = metadata.get("class_values"), metadata.get("class_names")
    if not isinstance(values, (list, tuple)) or len(values) != n_channels:
        return None
    labels = names if isinstance(names, (list, tuple)) and len(names) == n_channels else values
    return [f"P({label})" for label in labels]


def _instance_labels_layer(tiff: TiffData, data) -> LayerDataTuple:
    """Object ids (more than :data:`~napari_unet.labels.MAX_CLASSES` values: cellpose or stardist masks, napari-unet's
    cells) as they are in the file: 0 = background shows as napari's no label. Read as classes,
    the background was label 1 and every id was shown one higher."""
    kwargs = _spatial_kwargs(tiff.axes, tiff.scale, tiff.units, drop="S", translate=tiff.metadata.get("translate"))
    kwargs["name"] = tiff.name
    kwargs["metadata"] = _base_metadata(tiff)
    return (data, kwargs, "labels")


def _labels_layer(tiff: TiffData) -> LayerDataTuple | None:
    from .labels import MAX_CLASSES, PREDICTION_OUTPUT, LabelError, find_class_values, to_display

    data = tiff.data
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        if is_lazy(data):  # a lazy float store (probabilities carry class values) stays a lazy image, not read whole
            return None
        rounded = np.rint(data) if np.issubdtype(data.dtype, np.floating) else None
        if rounded is None or not np.all(np.isfinite(data)) or not np.array_equal(rounded, data):
            return None  # float data that are not integer classes: show as an image
        data = rounded.astype(np.int64)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if tiff.rgb:
        return None
    meta = tiff.metadata
    ignore_value = meta.get("ignore_value")
    try:
        found = find_class_values(data, ignore_value)
    except LabelError:
        return None
    class_values = meta.get("class_values")
    if len(found) > MAX_CLASSES and found[0] >= 0 and ignore_value in (None, 0):  # as napari-unet's writer saves them too
        return _instance_labels_layer(tiff, data)
    class_values = sorted(set(int(v) for v in class_values) | set(found)) if class_values else found
    if len(class_values) > _MAX_DISPLAY_CLASSES:
        _notify_warning(
            f"napari-unet: {tiff.name} has {len(class_values)} label values; too many for classes, "
            "opened as an image"
        )
        return None
    if class_values:
        display = to_display(data, class_values, ignore_value)
    else:  # nothing annotated (every pixel has the ignore value)
        display = np.zeros(data.shape, np.uint8)

    names = meta.get("class_names")
    known = list(meta.get("class_values") or [])
    if names and known and len(names) == len(known):
        by_value = dict(zip((int(v) for v in known), (str(n) for n in names)))
        class_names = [by_value.get(v, str(v)) for v in class_values]
    else:
        class_names = None

    layer_meta = _base_metadata(tiff)
    layer_meta.update(class_values=[int(v) for v in class_values], ignore_value=ignore_value)
    if class_names:
        layer_meta["class_names"] = class_names
    if isinstance(meta.get("predicted_from"), str):  # a saved prediction layer: tracked again, corrections kept
        layer_meta["napari_unet"] = {"output": PREDICTION_OUTPUT, "image": meta["predicted_from"]}
        reviewed, accepted = meta.get("reviewed"), meta.get("accepted")
        if isinstance(reviewed, np.ndarray) and reviewed.shape == display.shape:
            layer_meta["napari_unet"]["reviewed"] = reviewed
            if isinstance(accepted, np.ndarray) and accepted.shape == display.shape:
                layer_meta["napari_unet"]["accepted_mask"] = accepted
        if "reviewed" in meta.get("damaged_masks", ()):
            _notify_warning(
                f"napari-unet: {tiff.name}: the record of the pixels painted or marked reviewed before it was saved is "
                "damaged; they count as unreviewed predictions until painted or marked reviewed again"
            )
    kwargs = _spatial_kwargs(tiff.axes, tiff.scale, tiff.units, drop="S", translate=meta.get("translate"))
    if "S" not in tiff.axes:  # a rotated, sheared or affine-placed layer as the napari-unet writer records it
        kwargs.update(meta.get("placement") or {})
    kwargs["name"] = tiff.name
    kwargs["metadata"] = layer_meta
    kwargs["features"] = label_features(class_values, class_names, ignore_value)
    return (display, kwargs, "labels")


def label_features(class_values: Sequence[int], class_names: Sequence[str] | None = None, ignore_value=None) -> dict:
    """Features table of a display-convention labels layer (row = display value).

    Columns: ``index`` (display value), ``class_value`` (file value; the ignore value, or -1 if
    none, for display 0) and ``class_name`` ("not annotated" for display 0).
    """
    values = [int(v) for v in class_values]
    names = list(class_names) if class_names else [str(v) for v in values]
    return {
        "index": np.arange(len(values) + 1),
        "class_value": np.asarray([-1 if ignore_value is None else int(ignore_value), *values], dtype=np.int64),
        "class_name": np.asarray(["not annotated", *names], dtype=object),
    }


__all__ = [
    "MAX_LABEL_CLASSES",
    "check_showable",
    "get_reader",
    "label_features",
    "layer_data_from_tiff",
    "read_layers",
    "read_path",
]
