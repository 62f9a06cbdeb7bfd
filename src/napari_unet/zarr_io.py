"""Zarr stores (chunked arrays in a folder, readable from every machine of a cluster) as lazy dask arrays.

Reading gives a :class:`~napari_unet.tiff_io.TiffData` like a TIFF: a plain zarr array, the only array of a
group, or the full-resolution level of an OME-Zarr image, with axes and pixel sizes from its OME metadata.
Writing creates the array in a hidden partial folder beside the target, which tasks on any machine fill chunk
by chunk; :func:`commit_zarr` then renames it into place (a failed write never leaves a half-written store).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np

from ._interrupts import interrupts_deferred
from .tiff_io import (METADATA_KEY, TiffData, _default_axes, _normalise_unit, _one_line, check_memory, lengths_in_one_unit,
                      name_suggests_labels)

ZARR_SUFFIX = ".zarr"
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
_LABEL_KEYS = ("class_values", "ignore_value", "class_names")


class ZarrReadError(ValueError):
    """A zarr store that is missing, unreadable or holds no single image; the message is one line."""


def is_zarr_name(path) -> bool:
    """Whether ``path``'s name ends in ``.zarr`` (what outputs must be called to be written as zarr stores)."""
    return Path(os.fspath(path)).name.lower().endswith(ZARR_SUFFIX)


def is_zarr_path(path) -> bool:
    """Whether ``path`` names a zarr store: a name ending in ``.zarr``, or a folder holding zarr metadata."""
    return is_zarr_name(path) or holds_zarr_metadata(path)


def holds_zarr_metadata(path) -> bool:
    """Whether ``path`` is a folder with zarr metadata (an array or a group)."""
    path = Path(os.fspath(path))
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


def is_zarr_array_store(path) -> bool:
    """Whether ``path`` is a folder holding one zarr array (v2 or v3), not a group."""
    import zarr

    if not holds_zarr_metadata(path):
        return False
    try:
        return isinstance(zarr.open(str(path), mode="r"), zarr.Array)
    except Exception:  # damaged metadata: not an array napari-unet may replace
        return False


def _guess_axes(shape) -> str:
    """Axes of an array that records none: a trailing length-1 axis of 3 or more is a channel, as numpy and Keras keep
    one-channel stacks ((Z, Y, X, 1)); else the TIFF defaults ("ZYX", "TZYX"...)."""
    if len(shape) >= 3 and shape[-1] == 1:
        return _default_axes(len(shape) - 1) + "C"
    return _default_axes(len(shape))


def read_zarr(path, lazy: bool = True) -> TiffData:
    """Open the image of a zarr store: ``data`` is a dask array with the store's chunks (``lazy=False``: numpy).

    A chunk that cannot be read or decoded raises :class:`ZarrReadError` when it is read, its ``slices`` (a range,
    as :func:`napari_unet.data.read_planes` sets them) the store's slices that the chunk holds, when the image is a
    stack of (Y, X) slices (one axis besides Y and X longer than 1; else None). Raises
    :class:`ZarrReadError` for a missing or unreadable store, a group with no image or several (other than
    OME-Zarr levels), or damaged OME metadata.
    """
    import dask.array as da
    import zarr

    path = Path(os.fspath(path))
    if not path.exists():
        raise ZarrReadError(f"{path}: not found")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # FileNotFoundError, GroupNotFoundError, JSON errors...
        raise ZarrReadError(f"{path}: not a readable zarr store ({type(exc).__name__}: {_one_line(exc)})") from exc
    attributes = _attributes(node)
    ome_axes, ome_scale, ome_translate = None, None, None
    if isinstance(node, zarr.Group):
        array, ome_axes, ome_scale, ome_translate = _image_of_group(path, node, attributes)
    else:
        array = node
    own = _attributes(array).get(METADATA_KEY) or attributes.get(METADATA_KEY) or {}
    if not isinstance(own, dict):  # another tool's attribute of that name
        raise ZarrReadError(f"{path}: its {METADATA_KEY!r} attribute is {type(own).__name__}, not an object; remove or rename it")
    ndim = len(array.shape)
    if ndim < 2:  # an image has Y and X (a 1-D array was read with axes "YX", and napari's reader failed on it)
        raise ZarrReadError(f"{path}: holds a {ndim}-D array of shape {tuple(array.shape)}, not an image; images have at "
                            "least two axes (Y, X)")
    if ome_axes is not None:
        axes = "".join(name for name, _ in ome_axes)
        units = tuple(unit for _, unit in ome_axes)
    else:  # napari-unet's own outputs record axes and the image's pixel sizes
        axes = own.get("axes") if isinstance(own.get("axes"), str) and len(own["axes"]) == ndim else _guess_axes(array.shape)
        units = own.get("units", own.get("unit"))
        if isinstance(units, str):  # one unit for the lengths, as write_tiff takes it
            units = [units if axis in "XYZ" else None for axis in axes]
        units = tuple(units) if isinstance(units, list) and len(units) == ndim else (None,) * ndim
        units = tuple(_normalise_unit(u) for u in units)
        if isinstance(own.get("scale"), list) and len(own["scale"]) == ndim:
            # napari-unet's own: a negative size is napari's mirrored axis (of an image read from a mirrored layer's file)
            ome_scale = _ome_values([{"type": "scale", "scale": own["scale"]}], ndim, "scale", 1.0, lambda size: size != 0)
    scale = tuple(ome_scale) if ome_scale is not None else (1.0,) * ndim
    scale, units, factors = lengths_in_one_unit(scale, units)  # as TIFFs are read: an OME-Zarr's nm beside µm drew Z 1000x thin
    data = da.from_array(_CheckedChunks(array, str(path), _stack_axis(array.shape, axes)), chunks=array.chunks,
                         asarray=True, fancy=False)
    if not lazy:
        # the declared shape, before its chunks are read: a store of a few files may declare terabytes (chunks never
        # written read as the fill value), and the system fills memory below its total before it refuses
        # (refused beyond the machine's memory and swap; a warning beyond the share of the memory available now)
        check_memory(path, array.shape, array.dtype, advice="crop it or open it lazily", error=ZarrReadError)
        data = np.asarray(data)
    metadata: dict[str, Any] = {"source": str(path), "format": "ome-zarr" if ome_axes is not None else "zarr", "dtype": str(data.dtype)}
    metadata.update({key: own[key] for key in _LABEL_KEYS if own.get(key) is not None})
    own_translate = own.get("translate")  # napari-unet's outputs of an image that lies elsewhere
    if isinstance(own_translate, list) and len(own_translate) == ndim and all(isinstance(t, (int, float)) for t in own_translate):
        metadata["translate"] = [float(t) * f for t, f in zip(own_translate, factors)]
    elif ome_translate is not None and any(ome_translate):  # where the volume lies
        metadata["translate"] = [float(t) * f for t, f in zip(ome_translate, factors)]
    if ome_axes is not None:
        metadata.update(_ome_label_names(node))
    _check_label_metadata(metadata, path)
    # labels only by their metadata, OME mark or name: a lazy store's values would have to be read (a blank first slice is no label)
    integer = np.issubdtype(data.dtype, np.integer) or data.dtype == bool
    # OME-Zarr's own mark of a label image (a "labels/<name>" group): napari-ome-zarr opens it as Labels too
    image_label = "image-label" in attributes or "image-label" in (attributes.get("ome") or {})
    labels_hint = "class_values" in metadata or (integer and (name_suggests_labels(path.name) or image_label))
    return TiffData(data=data, axes=axes, scale=scale, units=units, metadata=metadata, is_labels_hint=labels_hint)


def _stack_axis(shape, axes: str):
    """The axis of a stack of (Y, X) slices (its slices numbered along it, as the command line and widgets keep them:
    axes of length 1 dropped, Y and X last), else None."""
    kept = [i for i, (n, axis) in enumerate(zip(shape, axes)) if n != 1 or axis in "YX"]
    if len(kept) == 3 and "".join(axes[i] for i in kept).endswith("YX"):
        return kept[0]
    return None


class _CheckedChunks:
    """A zarr array for ``dask.array.from_array`` whose read errors (damaged chunks, codecs) are :class:`ZarrReadError`,
    naming the slices of the chunk read along ``stack_axis`` (None: none named)."""

    def __init__(self, array, path: str, stack_axis=None):
        self.array, self.path, self.stack_axis = array, path, stack_axis
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)

    def __dask_tokenize__(self):
        return ("napari-unet-zarr", self.path, self.shape, str(self.dtype))

    def __getitem__(self, index):
        # a store missing here (no shared file system on a cluster's machine) would read as zeros without this
        if not holds_zarr_metadata(self.path):
            raise ZarrReadError(f"{self.path}: not found on {socket.gethostname()} (on a dask cluster every worker must read the image at this path)")
        try:
            return self.array[index]
        except MemoryError as exc:
            raise ZarrReadError(f"{self.path}: not enough memory to read a chunk") from exc
        except Exception as exc:  # zarr, numcodecs, the file system: anything means a damaged store
            error = ZarrReadError(f"{self.path}: damaged or unreadable chunk ({type(exc).__name__}: {_one_line(exc)})")
            # named here, where the chunk is known: a lazy result computed by its user (predict_chunked's) has no
            # read_planes around it, and read_planes keeps these instead of reading the stack again to find them
            error.slices = self._slices(index)
            raise error from exc

    def _slices(self, index):
        """The range of slices along :attr:`stack_axis` that ``index`` (dask's: a tuple of slices) reads, or None."""
        if self.stack_axis is None or not isinstance(index, tuple) or len(index) != self.ndim:
            return None
        where = index[self.stack_axis]
        if isinstance(where, slice) and where.step in (None, 1):
            start, stop, _ = where.indices(self.shape[self.stack_axis])
            return range(start, stop) if stop > start else None
        if isinstance(where, (int, np.integer)):
            return range(int(where) % self.shape[self.stack_axis], int(where) % self.shape[self.stack_axis] + 1)
        return None


def _check_label_metadata(metadata: dict, path) -> None:
    """:class:`ZarrReadError` unless the store's class values are distinct whole numbers and its ignore value one
    (checked as napari layers' metadata are)."""
    from .labels import LabelError, metadata_class_values, metadata_ignore_value

    for key, check, what in (("class_values", metadata_class_values, "a list of distinct whole numbers"),
                              ("ignore_value", metadata_ignore_value, "a whole number")):
        try:
            check(metadata, str(path))
        except LabelError:
            raise ZarrReadError(f"{path}: its {METADATA_KEY}.{key} {metadata[key]!r:.80} is not {what}") from None


def _attributes(node) -> dict:
    try:
        return dict(node.attrs)
    except Exception:  # pragma: no cover - damaged attributes read as none
        return {}


def _multiscales(attributes: dict):
    return attributes.get("multiscales") or (attributes.get("ome") or {}).get("multiscales")


def _image_of_group(path: Path, group, attributes: dict):
    """(array, OME axes [(letter, unit)] or None, OME scale or None) of a group's image."""
    multiscales = _multiscales(attributes)
    if not multiscales and not list(group.array_keys()):
        # bioformats2raw layout: the image is the only child group ("0") holding the multiscales
        children = [name for name, _ in group.groups()]
        if len(children) == 1 and _multiscales(_attributes(group[children[0]])):
            group = group[children[0]]
            multiscales = _multiscales(_attributes(group))
    if multiscales:
        try:
            first = multiscales[0]
            dataset = first["datasets"][0]
            array = group[dataset["path"]]
            axes = [_ome_axis(axis) for axis in first.get("axes") or []] or None
            scale = _ome_scale(dataset.get("coordinateTransformations"), len(array.shape))
            overall = _ome_scale(first.get("coordinateTransformations"), len(array.shape))  # applies to every level
            shift = _ome_translation(dataset.get("coordinateTransformations"), len(array.shape))
            overall_shift = _ome_translation(first.get("coordinateTransformations"), len(array.shape))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ZarrReadError(f"{path}: damaged OME-Zarr metadata ({type(exc).__name__}: {_one_line(exc)})") from exc
        ndim = len(array.shape)
        if axes is not None and len(axes) != ndim:
            raise ZarrReadError(f"{path}: OME-Zarr names {len(axes)} axes for an array of {ndim} dimensions")
        if axes is not None and len({a for a, _ in axes}) != ndim:
            raise ZarrReadError(f"{path}: OME-Zarr axes {[a for a, _ in axes]}: napari-unet reads axes named t, c, z, y, x and at most one other")
        translate = None
        if shift is not None or overall_shift is not None:  # x = (i * s + t) * S + T: the level's offset scaled too
            translate = tuple(t * f + u for t, f, u in zip(shift or (0.0,) * ndim, overall or (1.0,) * ndim, overall_shift or (0.0,) * ndim))
        if scale is not None or overall is not None:
            scale = tuple(a * b for a, b in zip(scale or (1.0,) * ndim, overall or (1.0,) * ndim))
        return array, axes, scale, translate
    names = sorted(group.array_keys())
    if len(names) != 1:
        found = f"arrays {names[:5]}" if names else "no array"
        raise ZarrReadError(f"{path}: a zarr group with {found}; give the path of one array inside it")
    return group[names[0]], None, None, None


def _ome_label_names(group) -> dict:
    """``{"ome_labels": [names]}`` of an OME-Zarr image's label images (its ``labels`` group), else ``{}``."""
    try:
        labels = group["labels"]
        attributes = _attributes(labels)
        names = attributes.get("labels") or (attributes.get("ome") or {}).get("labels") or []
    except Exception:  # no labels group, or not a group: an image without labels
        return {}
    return {"ome_labels": [str(name) for name in names]} if isinstance(names, list) and names else {}


def _ome_scale(transformations, ndim: int):
    """The ``scale`` transformation of an OME-Zarr list as floats (unusable sizes become 1.0), or None if there is none."""
    return _ome_values(transformations, ndim, "scale", 1.0, lambda size: size > 0)


def _ome_translation(transformations, ndim: int):
    """The ``translation`` of an OME-Zarr transformation list as floats (unusable values become 0.0), or None. One given
    by "path" (in a file of its own) is not read: the image opens unshifted."""
    return _ome_values(transformations, ndim, "translation", 0.0, lambda shift: True)


def _ome_values(transformations, ndim: int, kind: str, fallback: float, usable):
    """The numbers of the first ``kind`` transformation of an OME-Zarr list, each a finite ``usable`` float or else
    ``fallback``; None if there is none. ValueError if there are not ``ndim`` of them."""
    found = [t[kind] for t in transformations or [] if t.get("type") == kind and kind in t]
    if not found:
        return None
    if len(found[0]) != ndim:
        raise ValueError(f"{kind} {found[0]} does not fit an array of {ndim} dimensions")
    values = []
    for value in found[0]:
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = fallback
        values.append(value if math.isfinite(value) and usable(value) else fallback)
    return tuple(values)


def _ome_axis(axis) -> tuple[str, str | None]:
    """An OME-Zarr axis ({"name": "z", "unit": "micrometer"} or a bare name) as (letter of TZCYX, unit)."""
    name = axis["name"] if isinstance(axis, dict) else str(axis)
    letter = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(name.lower(), "Q")
    unit = axis.get("unit") if isinstance(axis, dict) else None
    return letter, _normalise_unit(unit)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def partial_path(path) -> Path:
    """The hidden folder beside ``path`` (absolute: workers elsewhere write it) that :func:`create_zarr` fills
    before :func:`commit_zarr`."""
    from ._files import hidden_sibling

    return hidden_sibling(os.path.abspath(os.fspath(path)), "partial", unique=True)


def create_zarr(path, shape: tuple, dtype, chunks: tuple, metadata: dict | None = None) -> Path:
    """Create an empty zarr array (zeros) of ``shape``/``dtype``/``chunks`` in :func:`partial_path` of ``path``.

    ``metadata`` (JSON-able: ``class_values``, ``axes``...) is stored under the ``napari_unet`` attribute.
    Returns the partial folder, which workers fill (``zarr.open_array(partial, mode="r+")``).
    """
    import zarr

    partial = partial_path(path)
    discard_zarr(partial)
    zarr.create_array(
        store=str(partial), shape=tuple(int(n) for n in shape), chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype), fill_value=0, attributes={METADATA_KEY: dict(metadata or {})},
    )
    return partial


def commit_zarr(partial: Path, path) -> Path | None:
    """Move the finished ``partial`` store to ``path``; an existing zarr array there is replaced (not merged), and
    anything else there (a group, which may hold other data, a file, another folder) is refused.

    Returns the replaced store, moved aside to a hidden folder, for the caller to :func:`discard_zarr` once every
    output is in place (deleting a large store takes long), or None."""
    return commit_zarr_stores([(partial, path)])[0]


def commit_zarr_stores(commits, written: list | None = None) -> list[Path | None]:
    """:func:`commit_zarr` for each ``(partial, path)`` of ``commits``, all or none: every path is checked before the
    first rename, a failed rename puts the earlier ones back, Ctrl-C and SIGTERM wait until the renames are done, and
    the folders stay locked meanwhile, so that two runs writing the same stores (labels and probabilities) never leave
    one run's labels beside the other's probabilities. The paths are appended to ``written`` once all are in place.
    An interrupt that came during the renames is delivered after them, the replaced stores then deleted first (a caller
    interrupted never sees them)."""
    from ._files import folder_locks, fsync_folder

    commits = [(Path(os.fspath(partial)), Path(os.fspath(path))) for partial, path in commits]
    steps: list[tuple[Path, Path]] = []  # renames done (source, destination), undone in reverse on failure
    olds: list[Path | None] = []
    # locked: two commits to one path interleaved gave a raw OSError and a hidden old store
    with folder_locks(path for _, path in commits) as folders:
        for _, path in commits:
            if path.exists() and not is_zarr_array_store(path):
                raise FileExistsError(f"{path} exists and is not a zarr array; not replaced")
        with interrupts_deferred() as received:
            try:
                for partial, path in commits:
                    olds.append(_replace_store(partial, path, steps))
            except BaseException:
                _undo_renames(steps)
                raise
            if written is not None:
                written.extend(path for _, path in commits)
            if received:  # the interrupt comes next: the replaced stores would be left behind
                for old in olds:
                    if old is not None:
                        discard_zarr(old)
    for folder in folders:
        fsync_folder(folder)
    return olds


def _replace_store(partial: Path, path: Path, steps: list) -> Path | None:
    """Rename ``partial`` to ``path``, moving a zarr array there aside first (returned, else None); each rename is
    appended to ``steps`` as ``(source, destination)``."""
    from ._files import hidden_sibling

    old = None
    if path.exists():
        os.chmod(partial, path.stat().st_mode & 0o7777)  # the replaced store's permissions
        old = hidden_sibling(path, "replaced")
        discard_zarr(old)
        os.replace(path, old)
        steps.append((path, old))
    os.replace(partial, path)
    steps.append((partial, path))
    return old


def _undo_renames(steps: list) -> None:
    """Rename each ``(source, destination)`` of ``steps`` back, the last first, as far as each can be."""
    for source, destination in reversed(steps):
        with contextlib.suppress(OSError):  # the others are still put back; the caller raises the first error
            os.replace(destination, source)


def discard_zarr(partial: Path) -> None:
    """Remove a partial (or replaced) store, if there is one."""
    if Path(partial).exists():
        shutil.rmtree(partial, ignore_errors=True)


def write_zarr(path, array, metadata: dict | None = None, chunks: tuple | None = None) -> Path:
    """Write ``array`` (numpy or dask) to a zarr store at ``path``, atomically (partial folder, then rename).

    ``chunks`` default: one chunk per plane of the leading axes (whole (Y, X) images).
    """
    import dask.array as da

    if chunks is None:
        chunks = (1,) * (array.ndim - 2) + tuple(array.shape[-2:]) if array.ndim > 2 else tuple(array.shape)
    partial = create_zarr(path, array.shape, array.dtype, chunks, metadata)
    try:
        import zarr

        target = zarr.open_array(str(partial), mode="r+")
        da.store(da.asarray(array).rechunk(chunks), target, lock=False)
        replaced = commit_zarr(partial, path)
        if replaced is not None:
            discard_zarr(replaced)
    finally:
        discard_zarr(partial)
    return Path(path)


__all__ = [
    "ZARR_SUFFIX",
    "ZarrReadError",
    "is_zarr_name",
    "is_zarr_path",
    "holds_zarr_metadata",
    "is_zarr_array_store",
    "read_zarr",
    "partial_path",
    "create_zarr",
    "commit_zarr",
    "commit_zarr_stores",
    "discard_zarr",
    "write_zarr",
]
