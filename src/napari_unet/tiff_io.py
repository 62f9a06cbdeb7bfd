"""TIFF reading and atomic writing with axes, physical pixel size and label metadata (no napari).

* :func:`read_tiff` reads the one series of a TIFF (ImageJ hyperstack, OME-TIFF, tifffile
  "shaped" or plain multi-page) into a :class:`TiffData` with normalised axes (letters from
  ``TZCYXS``), the physical pixel size per axis and its unit, and any label metadata written by
  :func:`write_tiff`.
* :func:`read_folder` / :func:`read_slices` stack 2-D slices (one file each) in natural order.
* :func:`write_tiff` writes atomically (temporary file in the same folder + ``os.replace``),
  zlib-compressed, ImageJ-compatible whenever the dtype and axes allow it.

Label metadata (``class_values``, ``ignore_value``, ``class_names``) is stored as one JSON entry
``napari_unet={...}``: a line of the ImageJ description, or a key of tifffile's JSON description
for dtypes ImageJ cannot hold. :func:`read_tiff` returns these keys at the top level of
``TiffData.metadata``. A prediction layer saved from napari also stores the name of the image it was
predicted from (``predicted_from``), the pixels the user painted or accepted (``reviewed``, a bool
mask of the array's shape, stored as zlib-compressed bits) and those of them only accepted with *Mark slice
reviewed* (``accepted``, the same form), so that its corrections still count after the file is reopened. A mask
recorded but unreadable (damaged, or of another shape) is named in ``damaged_masks`` instead.

Every failure to read raises :class:`TiffReadError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import math
import os
import re
import tempfile
import threading
import warnings
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from ._files import fsync_folder, target_mode, temporary_prefix, write_target
from .hardware import MEMORY_SHARE, memory_shortfall, size_text  # (the memory policy's names, also importable here)


__all__ = [
    "LABEL_NAME_HINTS",
    "MAX_LABEL_CLASSES",
    "METADATA_KEY",
    "TIFF_SUFFIXES",
    "TiffData",
    "TiffReadError",
    "decode_mask",
    "detect_labels",
    "distinct_values",
    "shear_matrix",
    "encode_mask",
    "is_tiff_path",
    "length_um",
    "lengths_in_one_unit",
    "name_suggests_labels",
    "natural_sort_key",
    "pixel_size_um",
    "read_folder",
    "read_slices",
    "read_tiff",
    "write_tiff",
    "BIGTIFF_BYTES",
    "LAZY_READ_BYTES",
    "MAX_NAMED_8BIT_LABELS",
    "MEMORY_SHARE",
    "MIN_JUDGED_PIXELS",
    "MIN_LABEL_REGION_SHARE",
    "SPARSE_LABEL_SHARE",
    "is_lazy",
    "memory_shortfall",
    "check_memory",
    "pixels_text",
    "n_bytes",
    "tiff_files_in",
]

#: Key of the JSON entry holding label metadata in files written by :func:`write_tiff`.
METADATA_KEY = "napari_unet"
#: File suffixes handled (compared case-insensitively).
TIFF_SUFFIXES = (".tif", ".tiff")
#: Integer images with at most this many distinct values are taken for labels.
MAX_LABEL_CLASSES = 16
#: At most this many distinct values in an 8-bit file named like labels (a B-scan or EM slice has ~256).
MAX_NAMED_8BIT_LABELS = 128
#: Words in a file name that mark a label image.
LABEL_NAME_HINTS = ("label", "mask", "seg", "annot", "groundtruth", "ground_truth", "ground-truth")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LABEL_KEYS = ("class_values", "ignore_value", "class_names")
_UNIT_ALIASES = {
    "micron": "µm",
    "microns": "µm",
    "um": "µm",
    "µm": "µm",
    "μm": "µm",  # Greek mu
    "\\u00b5m": "µm",  # ImageJ writes the escape sequence literally
    "micrometer": "µm",
    "micrometre": "µm",
    "nm": "nm",
    "nanometer": "nm",
    "å": "Å",  # ångström (EM calibrations), kept as nm: napari's pint units and ImageJ's
    "\u212b": "Å",
    "\\u00c5": "Å",  # ImageJ writes the escape sequence literally
    "angstrom": "Å",
    "angstroms": "Å",
    "nanometre": "nm",
    "mm": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "cm": "cm",
    "centimeter": "cm",
    "m": "m",
    "meter": "m",
    "inch": "in",
    "in": "in",
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "ms": "ms",
    "millisecond": "ms",
    "min": "min",
    "minute": "min",
    "h": "h",
    "hour": "h",
}
# Physical size of one ResolutionUnit in micrometres (TIFF tag 296; 4 and 5 are tifffile extensions).
_RESUNIT_UM = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
# Print/screen defaults that carry no physical meaning (72 dpi from most image editors...).
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)


class TiffReadError(ValueError):
    """A TIFF that is missing, unreadable, not a TIFF or corrupt; the message is one line."""


#: What to do with a file tifffile cannot decode (damaged, cut short, or in a compression it does not read).
_DAMAGED_ADVICE = "save it again from the program that made it, or use an intact copy"


@dataclass
class TiffData:
    """An array read from TIFF with its axes, physical pixel size and metadata.

    Attributes
    ----------
    data : the pixels, shaped like ``axes``.
    axes : one letter per axis from ``TZCYX`` (plus ``S`` for RGB(A) samples, always last), e.g.
        ``"ZYX"``, ``"TZCYX"``, ``"YXS"``.
    scale : physical size of a pixel along each axis in ``units`` (1.0 where unknown, and for
        ``C`` and ``S``).
    units : unit per axis (``"µm"``, ``"nm"``, ``"s"``...) or ``None`` where unknown.
    metadata : ``source`` (path), ``format`` ("imagej", "ome", "shaped", "tiff" or "folder"),
        ``dtype``, ``tiff_axes`` (tifffile's axes), ``n_series``, ``description``; ``imagej``
        (ImageJ description dict) and ``channel_names`` when present; and the label keys
        ``class_values`` / ``ignore_value`` / ``class_names`` if the file carries them.
    is_labels_hint : the file looks like labels: label metadata, a name like ``*label*``,
        ``*mask*``, ``*gt*``, ``*seg*``, or integer data with at most 16 distinct values.
    """

    data: np.ndarray
    axes: str
    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    is_labels_hint: bool = False

    @property
    def path(self) -> str:
        return str(self.metadata.get("source", ""))

    @property
    def name(self) -> str:
        """File (or folder) name without TIFF / OME suffixes."""
        return _stem(self.path) if self.path else "image"

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S")

    @property
    def has_physical_size(self) -> bool:
        return any(u is not None for u in self.units)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def is_tiff_path(path) -> bool:
    """True if ``path`` ends with .tif or .tiff (any case)."""
    return str(path).lower().endswith(TIFF_SUFFIXES)


def natural_sort_key(name) -> list:
    """Sort key putting ``slice2`` before ``slice10``."""
    parts = re.split(r"(\d+)", os.fspath(name).lower())
    return [(0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts]


def name_suggests_labels(name) -> bool:
    """True for file names like ``train-labels.tif``, ``mask_01.tif``, ``gt.tif``, ``cells_seg.tif``."""
    stem = re.sub(r"(?<![a-z])un[-_]?label", "", _stem(os.fspath(name)).lower())  # "unlabeled-bscans" are images
    if any(hint in stem for hint in LABEL_NAME_HINTS):
        return True
    return re.search(r"(^|[^a-z])gt([^a-z]|$)", stem) is not None


def distinct_values(data, limit: int | None = None) -> list[int] | None:
    """Sorted distinct values of an integer/bool array; ``None`` if there are more than ``limit``.

    O(n) for 8/16-bit data; other integer types are sampled first to give up early.
    Returns ``None`` for non-integer data.
    """
    array = np.asarray(data)
    if array.dtype == bool:
        array = array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        return None
    if array.size == 0:
        return []
    if array.dtype in (np.uint8, np.uint16, np.int8, np.int16):
        # plane by plane: bincount copies its input as int64, 8x an 8-bit image
        offset = 32768 if array.dtype.kind == "i" else 0
        planes = array.reshape(-1, *array.shape[-2:]) if array.ndim > 2 else array.reshape(1, -1)
        seen = np.zeros(65536, bool)
        for plane in planes:
            seen[np.flatnonzero(np.bincount(plane.ravel().astype(np.int32) + offset))] = True
            if limit is not None and np.count_nonzero(seen) > limit:  # an intensity stack: its first plane says so
                return None
        values = np.flatnonzero(seen) - offset
    else:
        if limit is not None and array.size > 100_000:
            sample = np.unique(array.ravel()[:: max(1, array.size // 100_000)])
            if len(sample) > limit:
                return None
        values = np.unique(array)
    if limit is not None and len(values) > limit:
        return None
    return [int(v) for v in values]


def detect_labels(data, name: str = "", metadata: dict | None = None) -> bool:
    """Whether an array read from ``name`` is a label image rather than an intensity image.

    Labels if the metadata carries ``class_values`` (or ``labels: true``), or the data are
    integers and either the name says so (:func:`name_suggests_labels`) or there are at most
    :data:`MAX_LABEL_CLASSES` distinct values, in regions or sparsely when more than two (:func:`_in_regions`, up to 4
    planes of at least :data:`MIN_JUDGED_PIXELS`). An 8-bit EM image has ~256 values, a quantised one few that change from pixel to
    pixel: not labels. Named like labels,
    an 8-bit file is labels with at most :data:`MAX_NAMED_8BIT_LABELS` values, a wider one (instance masks) with more
    values only if up to 4 of its planes hold them in regions or sparsely (an intensity image's values change from
    pixel to pixel). Float data are labels only through metadata.
    """
    metadata = metadata or {}
    if metadata.get("class_values") is not None or metadata.get("labels") is True:
        return True
    array = np.asarray(data) if not hasattr(data, "dtype") else data
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        return False
    if array.size == 0:
        return bool(name) and name_suggests_labels(name)
    if is_lazy(array) and array.ndim > 2:  # judged on the first plane: reading all of a big file takes long
        array = array[(0,) * (array.ndim - 2)]
    planes = array.reshape(-1, *array.shape[-2:]) if array.ndim > 2 else array[None]
    picks = np.unique(np.linspace(0, len(planes) - 1, min(4, len(planes))).round().astype(int))
    if name and name_suggests_labels(name):
        # An 8-bit image using most of its range is an intensity image whatever its name ("scans-for-segmentation.tif").
        # Wider instance masks may have many values, but come in regions of one value: a 16-bit image of hundreds of
        # grey levels named "em_for_segmentation.tif" does not.
        if distinct_values(array, MAX_NAMED_8BIT_LABELS) is not None:
            return True
        if array.dtype.itemsize == 1:
            return False
        return all(_in_regions(planes[z]) for z in picks)
    values = distinct_values(array, MAX_LABEL_CLASSES)
    if values is None:
        return False
    # a quantised intensity image (a 4-bit scan, a posterised picture) has few values too, changing pixel to pixel;
    # two values are a mask (thin traced membranes hold few runs), and a plane under 64 x 64 pixels is too small to judge
    if len(values) <= 2 or planes.shape[-1] * planes.shape[-2] < MIN_JUDGED_PIXELS:
        return True
    return all(_in_regions(planes[z]) for z in picks)


#: Planes with fewer pixels are labels by their value count alone (:func:`detect_labels`).
MIN_JUDGED_PIXELS = 64 * 64
#: Share of a label image's pixels, outside its most common value, whose right neighbour has the same value: at least
#: this. ISBI and OCT label images 0.78-0.99, cellpose-like instance masks ~0.9; EM and OCT intensity images 0.02-0.12.
MIN_LABEL_REGION_SHARE = 0.5
#: Planes with fewer pixels outside their most common value than this share are sparse annotations (seeds, traced
#: lines) or empty, never judged as images: intensity images have 25 % (an OCT scan's saturated background) to 99 %.
SPARSE_LABEL_SHARE = 0.05


def _in_regions(plane) -> bool:
    """Whether the (Y, X) integer ``plane`` may be a label image: sparse (:data:`SPARSE_LABEL_SHARE`), or holding its
    values in regions (:data:`MIN_LABEL_REGION_SHARE`); an intensity image's values change from pixel to pixel."""
    rows, columns = (max(0, (n - 1024) // 2) for n in plane.shape)
    plane = np.asarray(plane[rows:rows + 1024, columns:columns + 1024])  # a large plane judged on its centre
    values, counts = np.unique(plane, return_counts=True)
    left, right = plane[:, :-1], plane[:, 1:]
    counted = left != values[counts.argmax()]  # the background of instance masks would count for any image
    if counted.mean() < SPARSE_LABEL_SHARE:
        return True
    return float((left == right)[counted].mean()) >= MIN_LABEL_REGION_SHARE


def is_lazy(array) -> bool:
    """Whether ``array`` reads its pixels only when indexed (a ``np.memmap`` or a dask array)."""
    return isinstance(array, np.memmap) or not isinstance(array, np.ndarray) and hasattr(array, "dtype") and hasattr(array, "shape")


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _normalise_unit(unit) -> str | None:
    if unit is None:
        return None
    text = str(unit).strip()
    if not text or text.lower() in ("pixel", "pixels", "px", "none", "unit", "units"):
        return None
    return _UNIT_ALIASES.get(text.lower(), _UNIT_ALIASES.get(text, text))


def _to_micrometres(value: float, unit: str | None) -> tuple[float, str | None]:
    """Convert inch/cm/mm/m lengths to µm so every length in a file shares one unit (ångström to nm)."""
    factors = {"in": 25400.0, "cm": 10000.0, "mm": 1000.0, "m": 1e6}
    if unit in factors:
        return value * factors[unit], "µm"
    if unit == "Å":
        return value * 0.1, "nm"
    return value, unit


def lengths_in_one_unit(scale, units) -> tuple[tuple, tuple, tuple]:
    """(scale, units, factors) of a file's axes with inch/cm/mm/m in µm, Å in nm, and nm in µm where µm lengths are
    beside them (an OME-TIFF's 0.05 µm slices of 4 nm pixels): napari draws from the numbers alone, and drew Z 1000
    times too thin. ``factors``: what each axis's numbers were multiplied by; world positions along it (a translate, an
    affine) convert alike."""
    pairs = [_to_micrometres(value, unit) for value, unit in zip(scale, units)]
    factors = [_to_micrometres(1.0, unit)[0] for unit in units]
    if any(unit == "µm" for _, unit in pairs):
        factors = [factor / 1000.0 if unit == "nm" else factor for factor, (_, unit) in zip(factors, pairs)]
        pairs = [(value / 1000.0, "µm") if unit == "nm" else (value, unit) for value, unit in pairs]
    return tuple(value for value, _ in pairs), tuple(unit for _, unit in pairs), tuple(factors)


def length_um(value, unit) -> float | None:
    """The size ``value`` in ``unit`` as µm (units as files name them, "µm", "mm", or as napari does, "micrometer"; a
    negative value, napari's mirrored axis, as its size), or None when ``unit`` is no length ("pixel", None, "s") or
    the size is 0."""
    value, unit = _to_micrometres(abs(float(value)), _normalise_unit(unit))  # a mirrored axis (negative scale) too
    if unit == "nm":
        value, unit = value / 1000, "µm"
    return value if unit == "µm" and np.isfinite(value) and value > 0 else None


def pixel_size_um(scale, units) -> list | None:
    """[Y, X] pixel size in µm from the last two axes' ``scale`` and ``units`` (:func:`length_um`), or None unless both
    are lengths."""
    if scale is None or units is None or len(scale) < 2 or len(units) < 2:
        return None
    sizes = [length_um(value, unit) for value, unit in zip(list(scale)[-2:], list(units)[-2:])]
    return None if None in sizes else sizes


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TiffReadError(f"{path}: file not found")
    if path.is_dir():
        raise TiffReadError(f"{path}: is a folder, not a TIFF file (open it as a folder of slices)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise TiffReadError(f"{path}: cannot open ({_one_line(exc)})") from exc
    if len(head) < 4:
        raise TiffReadError(f"{path}: not a TIFF file (only {len(head)} bytes)")
    if head not in _TIFF_MAGIC:
        raise TiffReadError(f"{path}: not a TIFF file (no TIFF signature at the start)")


#: Lazy reads leave data of at least this many bytes on disk; smaller data are read at once (faster, and no dask).
LAZY_READ_BYTES = 2**28


def n_bytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (also for lazy arrays, which have no ``nbytes`` of their own)."""
    return math.prod(shape) * np.dtype(dtype).itemsize


#: The largest ratio of pixel bytes to file bytes each TIFF compression can reach (zlib packs a blank slice about
#: 1000-fold, TIFF's LZW about 1350-fold, PackBits 64-fold): a header declaring more pixels than that is damaged or
#: forged. Other codecs (zstd, LZMA, JPEG XL...) pack a nearly empty label mask further; they get no verdict.
_MAX_PACKING = {1: 1, 32773: 64, 8: 1032, 32946: 1032, 5: 1400}


def _max_packing(tif, series) -> int | None:
    """:data:`_MAX_PACKING` of the series' compression, or None for another codec or a series spread over files."""
    with contextlib.suppress(Exception):
        packing = _MAX_PACKING.get(int(series.keyframe.compression))
        if packing is not None and all(page is not None and getattr(page, "parent", tif) is tif for page in series.pages):
            return packing
    return None


def pixels_text(shape, dtype, whole: bool) -> str:
    """"reading its 16 x 512 x 512 uint8 pixels whole", or "one slice of 512 x 512 uint8 pixels" (not ``whole``)."""
    dims = " x ".join(str(n) for n in shape)
    return f"reading its {dims} {np.dtype(dtype)} pixels whole" if whole else f"one slice of {dims} {np.dtype(dtype)} pixels"


def check_memory(where, shape, dtype, whole: bool = True, advice: str | None = None, error: type = None,
                 what: str | None = None, held: str = "", damaged: bool = False, warn: bool = True) -> None:
    """The memory policy (:mod:`napari_unet.hardware`) for pixels of ``shape`` and ``dtype`` about to be read whole
    (``whole``) or a slice of them at a time: ``error`` (:class:`TiffReadError`) when they cannot fit in the machine's
    or container's memory and swap (:func:`~napari_unet.hardware.memory_excess`); a
    :class:`~napari_unet.hardware.LowMemoryWarning` (unless not ``warn``) when they take more than
    :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory available now, and the read goes ahead. ``what``
    replaces :func:`pixels_text`; ``held`` (" (the file holds 2.1 KB)") follows the size, and ``damaged`` says its
    header may be forged."""
    from . import hardware

    needed = n_bytes(shape, dtype)
    what = what or pixels_text(shape, dtype, whole)
    excess = hardware.memory_excess(needed)
    if excess is not None:
        advice = advice or ("crop it or save it as smaller files" if whole else "cut it into smaller images")
        advice = f"use an intact copy, or {advice}" if damaged else advice
        raise (error or TiffReadError)(f"{where}: {what} {excess}{held}; {advice}")
    if warn:
        shortfall = hardware.memory_shortfall(needed)
        if shortfall is not None:
            warnings.warn(f"{where}: {what} {shortfall}{held}; reading it anyway (close other programs if the system "
                          "slows down)", hardware.LowMemoryWarning, stacklevel=3)


def _refuse_if_too_large(path: Path, shape, dtype, whole: bool, packing: int | None = None, warn: bool = True) -> None:
    """:func:`check_memory` for ``path``'s pixels of ``shape``, read whole (``whole``) or a slice (a page) at a time;
    a size beyond ``packing`` times the file's (:func:`_max_packing`) says its header may be damaged or forged."""
    try:
        on_disk = path.stat().st_size if path.is_file() else None  # (a folder of slices: its files' sizes are not summed)
    except OSError:
        on_disk = None
    damaged = on_disk is not None and packing is not None and n_bytes(shape, dtype) > packing * on_disk
    held = f" (the file holds {size_text(on_disk)}{': its header may be damaged or forged' if damaged else ''})" if on_disk is not None else ""
    check_memory(path, shape, dtype, whole, held=held, damaged=damaged, warn=warn)


def read_tiff(path, lazy: bool = False, lazy_from_bytes: int | None = None, memory_map: bool = True) -> TiffData:
    """Read the image series of a TIFF file (files of several series are refused).

    ``lazy=True``: for data larger than memory, ``data`` of ``lazy_from_bytes`` (default :data:`LAZY_READ_BYTES`)
    or more reads pixels only when indexed: a read-only ``np.memmap`` of uncompressed contiguous data (unless
    ``memory_map=False``: tasks of a dask cluster read pages by path), else a dask array with one chunk per TIFF
    page (a corrupt page raises :class:`TiffReadError` when it is read); a series stored in one page is read at once.
    Data over :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory available now are read lazily whenever
    ``lazy=True``; read whole they get a :class:`~napari_unet.hardware.LowMemoryWarning`, and are refused only beyond
    the machine's (or container's) memory and swap (:func:`check_memory`). Raises :class:`TiffReadError` for a
    missing, unreadable, non-TIFF or corrupt file.
    """
    path = Path(os.fspath(path))
    _check_file(path)
    with _tifffile_errors(path) as errors:
        with _open_tiff(path) as (tif, appended):
            series = _only_series(tif, path)
            size = n_bytes(series.shape, series.dtype)
            # small data are read at once, unless they do not fit in the memory available now
            lazy = lazy and (size >= (LAZY_READ_BYTES if lazy_from_bytes is None else lazy_from_bytes)
                             or memory_shortfall(size) is not None)
            # tifffile.memmap would map the first slice's series of an appended stack: its pages are read one by one
            data = _lazy_series(path, series, memory_map and not appended) if lazy else None
            packing = _max_packing(tif, series)
            if data is None:  # the header's shape, before numpy takes memory it may not have (or tifffile fills it)
                _refuse_if_too_large(path, series.shape, series.dtype, whole=True, packing=packing)
                data = np.asarray(series.asarray())
            else:  # label detection reads a page now (a dask chunk; a memory map's plane), napari and predict whole ones
                # (no warning: napari's reader warns of a slice it must show whole, check_showable)
                _refuse_if_too_large(path, tuple(series.keyframe.shape), series.dtype, whole=False, packing=packing, warn=False)
            errors.raise_any()
            info = _series_info(tif, series, data)

    axes, data, axis_units, scale = info["axes"], info["data"], info["units"], info["scale"]
    metadata = info["metadata"]
    metadata["source"] = str(path)
    return TiffData(
        data=data,
        axes=axes,
        scale=tuple(scale),
        units=tuple(axis_units),
        metadata=metadata,
        is_labels_hint=detect_labels(data, path.name, metadata),
    )


class _CollectErrors(logging.Handler):
    def __init__(self, path: Path):
        super().__init__(level=logging.ERROR)
        self.path = path
        self.messages: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record):
        if record.thread == self.thread:  # another plugin's or the user's read of a damaged file is not this one's error
            self.messages.append(" ".join(record.getMessage().split())[:200])

    def raise_any(self) -> None:
        """tifffile logs (rather than raises) some decoding failures and fills zeros: those mean "corrupt"."""
        if self.messages:
            raise TiffReadError(f"{self.path}: corrupt TIFF ({self.messages[0]}); {_DAMAGED_ADVICE}")


@contextlib.contextmanager
def _tifffile_errors(path: Path):
    """Collect what tifffile logs while reading ``path``; any exception inside becomes a :class:`TiffReadError`."""
    tiff_logger = logging.getLogger("tifffile")
    errors = _CollectErrors(path)
    tiff_logger.addHandler(errors)  # (the logger is shared: the handler hears only this thread)
    try:  # (no warnings.catch_warnings: it changes the filters of every thread, and left them muted for good)
        yield errors
    except TiffReadError:
        raise
    except MemoryError as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        raise TiffReadError(f"{path}: not enough memory to read the image{detail}; close other programs, or crop it or "
                            "save it as smaller files") from exc
    except Exception as exc:  # tifffile, zlib, imagecodecs, struct... anything means "corrupt"
        if isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):  # (EINVAL: a seek past a damaged end)
            # the file system's error (a network share's I/O error, a path too long), not the file's
            raise TiffReadError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
        raise TiffReadError(f"{path}: corrupt or unsupported TIFF ({type(exc).__name__}: {_one_line(exc)}); "
                            f"{_DAMAGED_ADVICE}") from exc
    finally:
        tiff_logger.removeHandler(errors)


@contextlib.contextmanager
def _open_tiff(path: Path):
    """Yield ``(TiffFile, appended)``. ``appended``: the file holds a stack written one slice at a time
    (``tifffile.imwrite(..., append=True)`` per slice: several series of one 2-D page each, all of one shape and
    dtype); it is then opened again with ``is_shaped=False``, which gives them as one (Z, Y, X) series, as a folder of
    those slices would be read. Other files are opened once."""
    with tifffile.TiffFile(path) as tif:
        full = [series for series in tif.series if not getattr(series.keyframe, "is_reduced", False)]
        appended = (len(full) > 1 and tif.is_shaped and all(len(series.pages) == 1 and len(series.shape) == 2 for series in full)
                    and len({(tuple(series.shape), series.dtype) for series in full}) == 1)
        if not appended:
            yield tif, False
            return
    with tifffile.TiffFile(path, is_shaped=False) as tif:
        yield tif, True


def _only_series(tif: tifffile.TiffFile, path: Path):
    """The one full-resolution image series of ``tif`` (reduced-resolution thumbnails aside); :class:`TiffReadError`
    for none, or for several (an OME-TIFF of several positions), of which reading the first one silently dropped the
    others."""
    if not tif.series:
        raise TiffReadError(f"{path}: corrupt TIFF (no readable image in the file); {_DAMAGED_ADVICE}")
    full = [series for series in tif.series if not getattr(series.keyframe, "is_reduced", False)]  # not thumbnails
    if len(full) > 1:
        shapes = ", ".join(str(tuple(series.shape)) for series in full[:4]) + (", ..." if len(full) > 4 else "")
        raise TiffReadError(f"{path}: holds {len(full)} image series of shapes {shapes}; napari-unet reads one image "
                            "per file: save the series you want as a file of its own")
    return full[0] if full else tif.series[0]


def _lazy_series(path: Path, series, memory_map: bool = True):
    """``series`` as a read-only memory map or a dask array of one chunk per page; None if neither fits."""
    if memory_map and series.dataoffset is not None:  # uncompressed and contiguous in the file
        with contextlib.suppress(ValueError, OSError):
            return tifffile.memmap(path, series=0, mode="r")
    page_shape = tuple(series.keyframe.shape)
    n_pages = len(series.pages)
    if n_pages * math.prod(page_shape) != math.prod(series.shape):
        return None
    import dask
    import dask.array as da

    read = dask.delayed(_read_page, pure=True)
    offsets = [page.offset for page in series.pages]  # where each page's header is: no re-parse of the file per read
    planes = [da.from_delayed(read(path, i, offset), page_shape, series.dtype) for i, offset in enumerate(offsets)]
    return da.stack(planes).reshape(series.shape)


def _read_page(path: Path, index: int, offset: int) -> np.ndarray:
    """Page ``index`` of the first series of ``path``, its header at byte ``offset`` (a chunk of :func:`_lazy_series`)."""
    with _tifffile_errors(path) as errors:
        with tifffile.TiffFile(path) as tif:
            tif.filehandle.seek(offset)
            page = tifffile.TiffPage(tif, index=index).asarray()
        errors.raise_any()
    return page


def _series_info(tif: tifffile.TiffFile, series, data: np.ndarray) -> dict:
    page = series.keyframe if hasattr(series, "keyframe") else tif.pages.first
    tiff_axes = series.axes
    between = tiff_axes[tiff_axes.find("Y") + 1:tiff_axes.find("X")] if "Y" in tiff_axes and "X" in tiff_axes else ""
    if data.ndim != len(tiff_axes) or set(between) == {"Q"}:  # tifffile's "YQX" for a (Z, 1, 1) stack: (Z, Y, X)
        tiff_axes = "Q" * (data.ndim - 2) + "YX"
    if tiff_axes == "SYX" and _stack_as_colour_planes(tif, page):
        tiff_axes = "QYX"
    axes = _normalise_axes(tiff_axes, data.shape, data.dtype)
    metadata: dict[str, Any] = {
        "dtype": str(data.dtype),
        "tiff_axes": tiff_axes,
        "n_series": len(tif.series),
        "format": "imagej" if tif.is_imagej else "ome" if tif.is_ome else "shaped" if tif.is_shaped else "tiff",
    }
    description = page.description if hasattr(page, "description") else ""
    if description and not tif.is_ome:
        metadata["description"] = description
    label_meta: dict[str, Any] = {}
    scale = [1.0] * len(axes)
    units: list[str | None] = [None] * len(axes)

    def set_axis(letter: str, value, unit) -> None:
        value = _positive_number(value)
        if letter not in axes or value is None:
            return
        unit = _normalise_unit(unit)
        value, unit = _to_micrometres(value, unit)
        i = axes.index(letter)
        scale[i] = value
        units[i] = unit

    # 1. TIFF resolution tags (X/Y), used when nothing better is found below.
    x_res, y_res, res_unit = _resolution(page)
    if x_res and y_res:
        if res_unit in _RESUNIT_UM:
            ignore = res_unit == 2 and x_res == y_res and x_res in _DEFAULT_DPI
            if not ignore:
                set_axis("X", _RESUNIT_UM[res_unit] / x_res, "µm")
                set_axis("Y", _RESUNIT_UM[res_unit] / y_res, "µm")
        elif (x_res, y_res) != (1.0, 1.0):
            # unit-less resolution: keep the aspect ratio, no unit
            for letter, res in (("X", x_res), ("Y", y_res)):
                if letter in axes:
                    scale[axes.index(letter)] = 1.0 / res

    # 2. ImageJ: the unit is in the description, X/Y from the resolution tags, Z from spacing.
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij:
        metadata["imagej"] = {k: v for k, v in ij.items() if isinstance(v, (str, int, float, bool))}
        ij_unit = _normalise_unit(ij.get("unit"))
        # ImageJ writes yunit / zunit when Y or Z is calibrated in another unit than X (50 nm slices of 4 µm pixels)
        y_unit, z_unit = (_normalise_unit(ij.get(key)) or ij_unit for key in ("yunit", "zunit"))
        if ij_unit is not None and x_res and y_res:
            set_axis("X", 1.0 / x_res, ij_unit)
            set_axis("Y", 1.0 / y_res, y_unit)
        if "spacing" in ij:
            if z_unit is None:
                if "Z" in axes:
                    scale[axes.index("Z")] = float(ij["spacing"]) if float(ij["spacing"]) > 0 else 1.0
            else:
                set_axis("Z", ij["spacing"], z_unit)
        if "finterval" in ij:
            set_axis("T", ij["finterval"], ij.get("tunit", "s"))
        if isinstance(ij.get(METADATA_KEY), str):
            label_meta.update(_parse_json_entry(ij[METADATA_KEY]))
        labels = ij.get("Labels")
        if "C" in axes and isinstance(labels, (list, tuple)) and len(labels) == data.shape[axes.index("C")]:
            metadata["channel_names"] = [str(v) for v in labels]

    # 3. OME-XML: PhysicalSizeX/Y/Z with units, TimeIncrement, channel names.
    if tif.is_ome and tif.ome_metadata:
        _apply_ome(tif.ome_metadata, axes, data.shape, set_axis, metadata)

    # 4. tifffile JSON ("shaped") description, incl. label metadata written by write_tiff.
    shaped = tif.shaped_metadata if tif.is_shaped else None
    if shaped:
        entry = shaped[0].get(METADATA_KEY)
        if isinstance(entry, dict):
            label_meta.update({k: v for k, v in entry.items()})
        elif isinstance(entry, str):
            label_meta.update(_parse_json_entry(entry))
        for key in _LABEL_KEYS:
            if key in shaped[0] and key not in label_meta:
                label_meta[key] = shaped[0][key]

    # Scale / units of every axis, stored by write_tiff in the JSON entry of non-ImageJ files
    # (the resolution tags hold only X and Y, rounded to rationals): they take precedence.
    json_scale, json_units = label_meta.pop("scale", None), label_meta.pop("units", None)
    json_axes = label_meta.pop("axes", None)
    if isinstance(json_scale, list) and json_axes == axes and len(json_scale) == len(axes):
        if not (isinstance(json_units, list) and len(json_units) == len(axes)):
            json_units = [None] * len(axes)
        for i, letter in enumerate(axes):
            value = json_scale[i]
            if letter in "CS" or not isinstance(value, (int, float)) or not value > 0:
                continue
            scale[i], units[i] = float(value), None
            set_axis(letter, value, json_units[i])
    scale, units, factors = map(list, lengths_in_one_unit(scale, units))
    flipped = label_meta.pop("flipped", None)
    if isinstance(flipped, list) and len(flipped) >= len(axes) and all(isinstance(f, bool) for f in flipped):
        flipped = flipped[len(flipped) - len(axes):]  # (a one-slice stack: Y, X, as the translate)
        scale = [-v if f and letter not in "CS" else v for v, f, letter in zip(scale, flipped, axes)]  # napari's mirror
    for key in _LABEL_KEYS:
        if key in label_meta:
            metadata[key] = label_meta[key]
    translate = label_meta.get("translate")
    if isinstance(translate, list) and len(translate) >= len(axes) and all(isinstance(t, (int, float)) for t in translate):
        offsets = [float(t) for t in translate[len(translate) - len(axes):]]  # (a one-slice stack: Y, X)
        metadata["translate"] = [t * f for t, f in zip(offsets, factors)]
    placement = _placement_entry(label_meta.get("placement"), len(axes))
    if "affine" in placement:  # in world units as well
        placement["affine"] = _affine_in_units(placement["affine"], factors)
    if placement:
        metadata["placement"] = placement
    if isinstance(label_meta.get("predicted_from"), str):
        metadata["predicted_from"] = label_meta["predicted_from"]
        for key in ("reviewed", "accepted"):
            mask = decode_mask(label_meta.get(key), data.shape)
            if mask is not None:
                metadata[key] = mask
            elif key in label_meta:  # recorded but unreadable: not the same as "nothing painted"
                metadata.setdefault("damaged_masks", []).append(key)
    if isinstance(metadata.get("class_values"), list):
        values = [int(v) for v in metadata["class_values"]]
        names = metadata.get("class_names")
        if isinstance(names, list) and len(names) == len(values):  # names follow their values into sorted order
            metadata["class_names"] = [str(name) for _, name in sorted(zip(values, names), key=lambda pair: pair[0])]
        metadata["class_values"] = sorted(values)
    if metadata.get("ignore_value") is not None:
        metadata["ignore_value"] = int(metadata["ignore_value"])
    return {"axes": axes, "data": data, "scale": scale, "units": units, "metadata": metadata}


def _resolution(page) -> tuple[float | None, float | None, int]:
    tags = page.tags
    try:
        xr = tags.valueof(282)
        yr = tags.valueof(283)
        unit = int(tags.valueof(296, default=2))
    except Exception:
        return None, None, 1
    if xr is None or yr is None:
        return None, None, unit

    def rational(value) -> float | None:
        try:
            if isinstance(value, tuple):
                return value[0] / value[1] if value[1] else None
            return float(value)
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    x, y = rational(xr), rational(yr)
    if not x or not y or x <= 0 or y <= 0 or not math.isfinite(x) or not math.isfinite(y):
        return None, None, unit
    return x, y, unit


def encode_mask(mask: np.ndarray) -> dict:
    """A bool array as JSON-able text: ``{"shape": [...], "zlib_bits": base64 of zlib of packed bits}``."""
    mask = np.asarray(mask, bool)
    packed = zlib.compress(np.packbits(mask, axis=None).tobytes(), 6)
    return {"shape": list(mask.shape), "zlib_bits": base64.b64encode(packed).decode("ascii")}


def decode_mask(entry, shape) -> np.ndarray | None:
    """The bool array of an :func:`encode_mask` entry, or None if it is missing, damaged or not of ``shape``
    (length-1 axes aside: a (1, Y, X) prediction is read back as (Y, X))."""
    try:
        recorded = [int(n) for n in entry["shape"]]
    except (KeyError, TypeError, ValueError):
        return None
    if [n for n in recorded if n != 1] != [n for n in shape if n != 1]:
        return None
    try:
        bits = np.frombuffer(zlib.decompress(base64.b64decode(entry["zlib_bits"], validate=True)), np.uint8)
    except (KeyError, TypeError, ValueError, zlib.error):
        return None
    size = math.prod(shape)
    if bits.size != (size + 7) // 8:
        return None
    return np.unpackbits(bits, count=size).astype(bool).reshape(shape)


def _parse_json_entry(text: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _apply_ome(xml: str, axes: str, shape, set_axis, metadata: dict) -> None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return
    for letter in "XYZ":
        size = pixels.get(f"PhysicalSize{letter}")
        if size is not None:
            set_axis(letter, size, pixels.get(f"PhysicalSize{letter}Unit", "µm"))
    if pixels.get("TimeIncrement") is not None:
        set_axis("T", pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s"))
    names = [ch.get("Name") for ch in pixels if ch.tag.rsplit("}", 1)[-1] == "Channel"]
    if "C" in axes and names and all(names) and len(names) == shape[axes.index("C")]:
        metadata["channel_names"] = [str(n) for n in names]


def _stack_as_colour_planes(tif: tifffile.TiffFile, page) -> bool:
    """Whether a (3 or 4, Y, X) RGB(A) page of separate colour planes is a stack of slices as ``tifffile.imwrite`` (and
    so napari's own writer) stores a (3, Y, X) or (4, Y, X) uint8 array by default: a shaped description without
    axes. napari's own reader gives such a file as one stack, and its labels saved beside it are one."""
    if not (tif.is_shaped and page.photometric == tifffile.PHOTOMETRIC.RGB
            and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE):
        return False
    shaped = tif.shaped_metadata
    return bool(shaped) and isinstance(shaped[0], dict) and "axes" not in shaped[0]


def shear_matrix(shear, ndim: int) -> np.ndarray:
    """napari's layer ``shear`` as an (ndim, ndim) float64 matrix: its upper-triangular coefficients (ndim (ndim - 1) / 2
    of them), or the matrix itself."""
    shear = np.asarray(shear, dtype=np.float64)
    if shear.ndim == 1 and len(shear) == ndim * (ndim - 1) // 2:
        matrix = np.eye(ndim)
        matrix[np.triu_indices(ndim, 1)] = shear
        return matrix
    return shear


def _affine_in_units(affine, factors) -> list:
    """napari's (ndim + 1) x (ndim + 1) world ``affine`` after each world axis was multiplied by its ``factors`` entry
    (nm to µm: 1/1000): D A D^-1, with D = diag(factors, 1); its offsets alone scaled put a coupling of two axes of other
    units elsewhere."""
    outer = np.append(np.asarray(factors, dtype=np.float64), 1.0)
    return (outer[:, None] * np.asarray(affine, dtype=np.float64) / outer[None, :]).tolist()


def _placement_entry(placement, ndim: int) -> dict:
    """napari's ``rotate`` (ndim x ndim), ``shear`` (ndim x ndim) and ``affine`` ((ndim + 1) x (ndim + 1)) matrices of
    ``placement`` that are finite, of those shapes and not the identity, as lists ({} for none)."""
    out = {}
    if not isinstance(placement, dict):
        return out
    for key, size in (("rotate", ndim), ("shear", ndim), ("affine", ndim + 1)):
        try:
            matrix = np.asarray(placement.get(key), dtype=np.float64)
        except (TypeError, ValueError):
            continue
        extra = matrix.shape[0] - size if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] else -1
        linear = matrix[:-1, :-1] if key == "affine" and extra > 0 else matrix  # an affine's offset column may move Z
        if extra > 0 and not (linear[:extra, extra:].any() or linear[extra:, :extra].any()):
            matrix = matrix[extra:, extra:]  # leading axes of length 1 read away (a one-slice stack), not mixed in
        if matrix.shape == (size, size) and np.isfinite(matrix).all() and not np.array_equal(matrix, np.eye(size)):
            out[key] = matrix.tolist()
    return out


def _normalise_axes(tiff_axes: str, shape, dtype) -> str:
    """Map tifffile axes to letters from TZCYX (+ trailing S for RGB)."""
    axes = list(tiff_axes.upper())
    n = len(axes)
    # RGB(A) samples stay "S" when last with 3 or 4 entries of 8/16-bit data; otherwise channels.
    for i, letter in enumerate(axes):
        if letter == "S":
            is_rgb = i == n - 1 and shape[i] in (3, 4) and np.dtype(dtype) in (np.uint8, np.uint16)
            axes[i] = "S" if is_rgb else "C" if "C" not in axes else "?"
    known = set("TZCYXS")
    free = [c for c in "ZTC" if c not in axes]
    for i in range(n - 1, -1, -1):  # unknown axes, right to left: Z, then T, then C
        if axes[i] not in known or axes.count(axes[i]) > 1:
            axes[i] = free.pop(0) if free else "Q"
    return "".join(axes)


def _positive_number(value) -> float | None:
    """``value`` as a float if it is a finite number above 0 (e.g. an ImageJ ``spacing``), else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def read_slices(paths: Sequence, source=None, lazy: bool = False, lazy_from_bytes: int | None = None) -> TiffData:
    """Stack 2-D TIFF files (one slice each, same shape) in the given order along a new Z axis.

    A slice with an extra leading axis of length 1 is accepted. Raises :class:`TiffReadError`
    naming the first slice whose shape differs. ``lazy=True``: from ``lazy_from_bytes`` (default
    :data:`LAZY_READ_BYTES`) of data on, a dask array that reads a file when its slice is indexed (see :func:`read_tiff`).
    """
    paths = [Path(os.fspath(p)) for p in paths]
    if not paths:
        raise TiffReadError(f"{source or 'slices'}: no TIFF files to stack")
    first = read_tiff(paths[0])
    first_data, first_axes = _squeeze_slice(first)
    size = len(paths) * first_data.nbytes
    lazy = lazy and (size >= (LAZY_READ_BYTES if lazy_from_bytes is None else lazy_from_bytes) or memory_shortfall(size) is not None)
    if not lazy:  # the stack of them all, before their pixels are read
        _refuse_if_too_large(Path(os.fspath(source)) if source is not None else paths[0].parent,
                             (len(paths), *first_data.shape), first_data.dtype, whole=True)
    arrays = [first_data]
    for p in paths[1:]:  # lazily: only the headers now (shape, dtype), each file's pixels when its slice is indexed
        data = _slice_header(p) if lazy else _squeeze_slice(read_tiff(p))[0]
        if data.shape != first_data.shape:
            raise TiffReadError(
                f"{p}: shape {data.shape} differs from {paths[0].name} {first_data.shape}; "
                "all slices must have the same size"
            )
        arrays.append(data)
    dtype = np.result_type(*[a.dtype for a in arrays])
    if lazy:
        import dask
        import dask.array as da

        read = dask.delayed(_read_slice, pure=True)
        planes = [da.from_array(first_data.astype(dtype, copy=False), chunks=first_data.shape)]
        planes += [da.from_delayed(read(p, dtype), first_data.shape, dtype) for p in paths[1:]]
        stack = da.stack(planes)
    else:
        stack = np.stack([a.astype(dtype, copy=False) for a in arrays])
    new_axis = "Z" if "Z" not in first_axes else "T" if "T" not in first_axes else "Q"
    axes = new_axis + first_axes
    kept = [i for i, letter in enumerate(first.axes) if letter in first_axes]
    scale = (1.0, *[first.scale[i] for i in kept])
    units = (None, *[first.units[i] for i in kept])
    metadata = {k: v for k, v in first.metadata.items() if k in _LABEL_KEYS or k == "imagej"}
    spacing = _positive_number(first.metadata.get("imagej", {}).get("spacing"))  # as set_axis takes one file's
    if new_axis == "Z" and spacing is not None:
        z_unit = _normalise_unit(first.metadata["imagej"].get("unit"))
        scale = (spacing, *scale[1:])
        units = (_to_micrometres(scale[0], z_unit)[1] if z_unit else None, *units[1:])
        if z_unit:
            scale = (_to_micrometres(scale[0], z_unit)[0], *scale[1:])
    metadata.update(
        {
            "source": str(source if source is not None else paths[0].parent),
            "format": "folder",
            "dtype": str(stack.dtype),
            "files": [str(p) for p in paths],
        }
    )
    name = os.path.basename(os.path.normpath(str(metadata["source"])))
    return TiffData(
        data=stack,
        axes=axes,
        scale=tuple(scale),
        units=tuple(units),
        metadata=metadata,
        is_labels_hint=detect_labels(stack, name, metadata)
        or all(name_suggests_labels(p.name) for p in paths),
    )


def _slice_header(path: Path) -> np.ndarray:
    """A zero-strided stand-in with the shape (leading length-1 axes dropped) and dtype of ``path``'s first series."""
    _check_file(path)
    with _tifffile_errors(path):
        with tifffile.TiffFile(path) as tif:
            series = _only_series(tif, path)
            shape, dtype = tuple(series.shape), series.dtype
    return np.broadcast_to(np.zeros((), dtype), _without_leading_ones(shape))


def _read_slice(path: Path, dtype) -> np.ndarray:
    """The pixels of one slice file (a chunk of a lazy :func:`read_slices`): no metadata, no label detection."""
    with _tifffile_errors(path) as errors:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
        errors.raise_any()
    return data.reshape(_without_leading_ones(data.shape)).astype(dtype, copy=False)


def _without_leading_ones(shape: tuple) -> tuple:
    """``shape`` without the length-1 axes in front of a slice's last two (as :func:`_squeeze_slice` drops them)."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _squeeze_slice(item: TiffData) -> tuple[np.ndarray, str]:
    data, axes = item.data, item.axes
    while data.ndim > 2 and data.shape[0] == 1 and axes[0] not in "YX":
        data, axes = data[0], axes[1:]
    return data, axes


def tiff_files_in(folder) -> list[Path]:
    """TIFF files directly in ``folder`` in natural order (hidden files such as ``._x.tif`` skipped)."""
    folder = Path(os.fspath(folder))
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and is_tiff_path(p.name) and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def read_folder(path, lazy: bool = False, lazy_from_bytes: int | None = None) -> TiffData:
    """Stack the 2-D TIFF slices of a folder in natural sort order (``z2`` before ``z10``); ``lazy`` as in
    :func:`read_slices`.

    Raises :class:`TiffReadError` if the folder is missing, has no TIFF, slices differ in size, or its files are
    stacks (a folder of one stack is that stack).
    """
    folder = Path(os.fspath(path))
    if not folder.exists():
        raise TiffReadError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise TiffReadError(f"{folder}: not a folder")
    try:
        files = tiff_files_in(folder)
    except OSError as exc:
        raise TiffReadError(f"{folder}: cannot list the folder ({_one_line(exc)})") from exc
    if not files:
        raise TiffReadError(f"{folder}: no .tif/.tiff files in the folder")
    shape = _slice_header(files[0]).shape  # the header only
    if len(shape) > 3 or len(shape) == 3 and shape[-1] not in (3, 4):  # stacks (an RGB slice is Y, X, 3 or 4)
        if len(files) == 1:
            return read_tiff(files[0], lazy=lazy, lazy_from_bytes=lazy_from_bytes)
        kind = "stacks, not slices" if len(shape) > 3 or shape[0] > 4 else "stacks or colour planes, not slices of one channel"
        raise TiffReadError(f"{folder}: its files are {kind} ({files[0].name} has shape {shape}); a folder is read as "
                            f"the slices of one stack: open its {len(files)} files one by one")
    return read_slices(files, source=folder, lazy=lazy, lazy_from_bytes=lazy_from_bytes)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)
_IMAGEJ_UNIT = {"µm": "um", "nm": "nm", "mm": "mm", "cm": "cm", "m": "m"}
_RESUNIT_CM_FACTOR = {"µm": 1e4, "nm": 1e7, "mm": 10.0, "cm": 1.0, "m": 0.01}


def _default_axes(ndim: int) -> str:
    """Axes assumed when none are given (colour images need an explicit ``axes="YXS"``)."""
    return {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}.get(ndim, "Q" * (ndim - 2) + "YX")


def _imagej_compatible(axes: str, dtype) -> bool:
    if np.dtype(dtype) not in [np.dtype(d) for d in _IMAGEJ_DTYPES]:
        return False
    if "S" in axes and np.dtype(dtype) != np.uint8:
        return False
    order = "TZCYXS"
    if any(a not in order for a in axes) or len(set(axes)) != len(axes):
        return False
    positions = [order.index(a) for a in axes]
    return positions == sorted(positions) and axes.endswith(("YX", "YXS"))


#: Arrays of at least this many bytes are written as BigTIFF (4 GiB minus room for tags and compression overhead).
BIGTIFF_BYTES = 2**32 - 2**25


def write_tiff(path, array, metadata: dict | None = None) -> str:
    """Write ``array`` to ``path`` atomically; returns the path written.

    ``metadata`` (all optional):

    * ``axes``: letters per axis (default YX / ZYX / TZYX / TZCYX by ndim);
    * ``scale``: pixel size per axis (or per spatial axis ``Y, X`` / ``Z, Y, X``);
    * ``units`` (or ``unit``): one unit for all lengths or one per axis ("µm", "nm"...);
    * ``translate``: offset per axis in world units (napari's layer translate), returned by :func:`read_tiff`;
    * ``placement``: {"rotate", "shear", "affine"}: napari's matrices of a rotated, sheared or affine-placed layer,
      returned by :func:`read_tiff` (the identity is not stored);
    * ``class_values``, ``ignore_value``, ``class_names``: label metadata, stored as the JSON
      entry ``napari_unet`` and returned by :func:`read_tiff`;
    * ``predicted_from`` (an image name), ``reviewed`` and ``accepted`` (bool masks of ``array``'s shape: the pixels
      the user painted or accepted, and those of them only accepted): the same, for prediction layers; the masks are
      stored only with ``predicted_from``.

    A ``np.memmap`` or dask array is written page by page (memory stays at one page).
    The data go to a temporary file in the same folder, which then replaces ``path`` in one
    ``os.replace``; on any error the temporary file is removed and an existing ``path`` is left
    untouched. zlib compression; ImageJ hyperstack format when the dtype is uint8, uint16, int16
    or float32 and the axes are in ImageJ order (TZCYXS), else a tifffile JSON ("shaped") TIFF, which
    is BigTIFF from :data:`BIGTIFF_BYTES` of data on.
    """
    path = write_target(path)  # a symbolic link's target; never a device or pipe
    metadata = dict(metadata or {})
    streamed = is_lazy(array)
    data = array if streamed else np.asarray(array)
    if data.dtype == bool:  # 0/1 bytes; a view or a lazy conversion keeps a large array out of memory
        data = data.view(np.uint8) if isinstance(data, np.ndarray) else data.astype(np.uint8)
    if data.dtype == object or data.dtype.kind not in "uif" or data.ndim < 2 or 0 in data.shape:
        raise ValueError(  # a zero-size array was written as a TIFF that read_tiff called corrupt
            f"cannot write an array of dtype {data.dtype} and shape {data.shape} to TIFF; "
            "need a 2-D or larger array of integers or floats, holding pixels"
        )
    axes = str(metadata.get("axes") or _default_axes(data.ndim)).upper()
    if len(axes) != data.ndim:
        raise ValueError(f"axes {axes!r} do not match the array's {data.ndim} dimensions {data.shape}")

    scale, units, factors, flipped = _axis_scale_units(axes, metadata)
    label_entry: dict[str, Any] = {}
    if any(flipped):  # sizes go to the tags (ImageJ and others know no mirrored axis); napari-unet reads the sign here
        label_entry["flipped"] = flipped
    # checked as napari's reader checks them: [0.5, 255] was stored as [0, 255], an ignore value of 2**70 made the
    # file unreadable as labels
    from .labels import metadata_class_values, metadata_ignore_value

    numbers = {"class_values": metadata_class_values(metadata, "write_tiff's metadata"),
               "ignore_value": metadata_ignore_value(metadata, "write_tiff's metadata")}
    limits = np.iinfo(np.int64)
    if any(not limits.min <= v <= limits.max for v in [*(numbers["class_values"] or []), numbers["ignore_value"] or 0]):
        raise ValueError(f"label values must lie within int64, got class_values {numbers['class_values']} and ignore_value "
                         f"{numbers['ignore_value']}")
    for key in _LABEL_KEYS:
        if metadata.get(key) is not None:
            label_entry[key] = numbers[key] if key in numbers else [str(v) for v in metadata[key]]
    translate = metadata.get("translate")
    if translate is not None and len(translate) == data.ndim and any(float(t) != 0.0 for t in translate):
        # the layer's offset in world units (napari's translate), in the units the scale is written in
        label_entry["translate"] = [float(t) * f for t, f in zip(translate, factors)]
    placement = _placement_entry(metadata.get("placement"), data.ndim)
    if "affine" in placement:  # in world units too
        placement["affine"] = _affine_in_units(placement["affine"], factors)
    if placement:
        label_entry["placement"] = placement
    if metadata.get("predicted_from") is not None:
        label_entry["predicted_from"] = str(metadata["predicted_from"])
        for key in ("reviewed", "accepted"):
            mask = metadata.get(key)
            if mask is not None:
                if np.shape(mask) != data.shape:
                    raise ValueError(f"{key} mask of shape {np.shape(mask)} does not match the array's {data.shape}")
                label_entry[key] = encode_mask(mask)

    kwargs: dict[str, Any] = {"compression": "zlib"}
    # Classic TIFF offsets end at 4 GiB, and ImageJ hyperstacks cannot be BigTIFF: large arrays (e.g. the
    # float32 probabilities of a big stack, which hardly compress) become BigTIFF with tifffile's JSON metadata.
    big = n_bytes(data.shape, data.dtype) >= BIGTIFF_BYTES
    # ImageJ has one length unit for X, Y and Z: an axis without a size (an OME file with PhysicalSizeX only) would be
    # written with the others' and read back at 1 µm, so such arrays take the JSON metadata, which keeps each axis's
    xy_units = {units[i] for i, a in enumerate(axes) if a in "XY"}
    z_unit = units[axes.index("Z")] if "Z" in axes else None
    z_scale = scale[axes.index("Z")] if "Z" in axes else 1.0
    one_unit = len(xy_units) <= 1 and (xy_units == {z_unit} or z_unit is None and (z_scale == 1.0 or xy_units == {None}))
    imagej = _imagej_compatible(axes, data.dtype) and not big and one_unit
    if big:
        kwargs["bigtiff"] = True
    sx = scale[axes.index("X")] if "X" in axes else 1.0
    sy = scale[axes.index("Y")] if "Y" in axes else 1.0
    length_unit = next((units[i] for i, a in enumerate(axes) if a in "XYZ" and units[i]), None)
    if imagej:
        ij_meta: dict[str, Any] = {"axes": axes}
        if (sx, sy) != (1.0, 1.0) or length_unit:
            kwargs["resolution"] = (1.0 / sx, 1.0 / sy)
        if length_unit:
            ij_meta["unit"] = _IMAGEJ_UNIT.get(length_unit, length_unit)
        if "Z" in axes and (scale[axes.index("Z")] != 1.0 or z_unit):  # an unknown spacing stays unwritten
            ij_meta["spacing"] = scale[axes.index("Z")]
        if "T" in axes and units[axes.index("T")]:
            ij_meta["finterval"] = scale[axes.index("T")]
            ij_meta["tunit"] = units[axes.index("T")]
        elif "T" in axes and scale[axes.index("T")] != 1.0:  # a time step without a unit: ImageJ has no place for it
            label_entry = {**label_entry, "axes": axes, "scale": list(scale), "units": list(units)}
        if label_entry:
            ij_meta[METADATA_KEY] = json.dumps(label_entry, separators=(",", ":"))
        kwargs.update(imagej=True, metadata=ij_meta)
    else:
        entry = dict(label_entry)
        if any(s != 1.0 for s in scale) or any(units):
            entry.update(axes=axes, scale=list(scale), units=list(units))
        shaped: dict[str, Any] = {"axes": axes}
        if entry:
            shaped[METADATA_KEY] = entry
        if length_unit in _RESUNIT_CM_FACTOR and (sx, sy) != (1.0, 1.0):
            factor = _RESUNIT_CM_FACTOR[length_unit]
            kwargs.update(resolution=(factor / sx, factor / sy), resolutionunit="CENTIMETER")
        elif (sx, sy) != (1.0, 1.0):
            kwargs.update(resolution=(1.0 / sx, 1.0 / sy), resolutionunit="NONE")
        if "S" in axes:
            kwargs["photometric"] = "rgb"
        elif data.ndim >= 3:
            kwargs["photometric"] = "minisblack"
        kwargs.update(metadata=shaped)

    folder = path.parent if str(path.parent) else Path(".")
    # Name the file asked for, not the hidden temporary file an OSError of mkstemp would name.
    if not folder.is_dir():
        if folder.exists():
            raise NotADirectoryError(f"cannot write {path.name}: {str(folder)!r} is not a folder")
        raise FileNotFoundError(f"cannot write {path.name}: folder {str(folder)!r} does not exist")
    mode = target_mode(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=folder)
    except OSError as err:  # e.g. a read-only folder
        raise OSError(err.errno, f"cannot write {path.name} in folder {str(folder)!r}: {err.strerror}") from None
    try:
        os.close(fd)
        with open(tmp_name, "r+b") as fh:
            if streamed:
                page_ndim = 3 if "S" in axes else 2
                tifffile.imwrite(fh, _pages(data, page_ndim), shape=data.shape, dtype=data.dtype, **kwargs)
            else:
                tifffile.imwrite(fh, data, **kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_folder(folder)
    return str(path)


def _pages(array, page_ndim: int) -> Iterator[np.ndarray]:
    """The pages of ``array`` (its last ``page_ndim`` axes) in file order, each read into memory on its own."""
    for index in np.ndindex(*array.shape[:-page_ndim]):
        yield np.ascontiguousarray(array[index])


def _axis_scale_units(axes: str, metadata: dict) -> tuple[list[float], list[str | None], list[float], list[bool]]:
    """(scale, units, factors, flipped) of each axis from ``metadata``: lengths converted to µm (ångström to nm),
    ``factors`` what each axis's numbers were multiplied by (world positions along it convert alike: translate, affine),
    ``flipped`` the axes of a negative scale (napari's mirror of an axis), whose ``scale`` is its size."""
    n = len(axes)
    scale = [1.0] * n
    flipped = [False] * n
    raw_scale = metadata.get("scale")
    if raw_scale is not None:
        values = [float(v) for v in raw_scale]
        spatial = [i for i, a in enumerate(axes) if a not in "CS"]
        if len(values) == n:
            targets = list(range(n))
        elif len(values) == len(spatial):
            targets = spatial
        elif len(values) <= n:
            targets = list(range(n - len(values), n))
        else:
            targets = list(range(n))
            values = values[-n:]
        for i, v in zip(targets, values):
            if axes[i] not in "CS" and math.isfinite(v) and v != 0:
                scale[i], flipped[i] = abs(v), v < 0
    raw_units = metadata.get("units", metadata.get("unit"))
    units: list[str | None] = [None] * n
    if isinstance(raw_units, (list, tuple)):
        values = [_normalise_unit(u) for u in raw_units]
        spatial = [i for i, a in enumerate(axes) if a not in "CS"]
        targets = list(range(n)) if len(values) == n else spatial if len(values) == len(spatial) else []
        for i, u in zip(targets, values):
            units[i] = u
    elif raw_units is not None:
        unit = _normalise_unit(raw_units)
        for i, a in enumerate(axes):
            if a in "XYZ":
                units[i] = unit
    factors = [1.0] * n
    for i in range(n):
        if axes[i] in "CS":
            units[i] = None
        elif units[i] is not None and (axes[i] in "XYZ" or units[i] == "Å"):  # lengths in µm (Å in nm: ImageJ and napari know it)
            factors[i] = _to_micrometres(1.0, units[i])[0]
            scale[i], units[i] = _to_micrometres(scale[i], units[i])
    return scale, units, factors, flipped
