"""Input checks, normalisation, patch sampling and augmentation (numpy/scipy; no TensorFlow)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import numbers
import queue
import threading
import traceback
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
from scipy import ndimage

from .labels import IGNORE_INDEX, count_classes


class InputError(ValueError):
    """Image or labels that cannot be used; the message says what is wrong and what to do."""


def check_is_array(image, name: str = "image") -> None:
    """:class:`InputError` for an object that holds an array without being one (``read_tiff``'s TiffData: numpy made it
    an array of shape (), and the message said the image had shape ())."""
    if not hasattr(image, "shape") and hasattr(getattr(image, "data", None), "shape"):
        raise InputError(f"{name} is a {type(image).__name__}, not an array: give its .data")


def as_stack(image, name: str = "image") -> np.ndarray:
    """View a (Y, X) or (Z, Y, X) array as (Z, Y, X); other shapes raise :class:`InputError`."""
    check_is_array(image, name)
    array = np.asarray(image)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        return array
    raise InputError(
        f"{name} has shape {array.shape}; expected a 2-D image (Y, X) or a stack (Z, Y, X) of one channel"
    )


#: Images narrower or lower than this (pixels) are refused for training and prediction.
MIN_IMAGE_SIZE = 4


def check_image(image, name: str = "image") -> np.ndarray:
    """The image as a (Z, Y, X) stack after checking dtype and finiteness."""
    stack = as_stack(image, name)
    if not (np.issubdtype(stack.dtype, np.number) or stack.dtype == bool) or np.iscomplexobj(stack):
        raise InputError(f"{name} has dtype {stack.dtype}; expected real numbers")
    if np.issubdtype(stack.dtype, np.floating) and not np.all(np.isfinite(stack)):
        raise InputError(f"{name} contains NaN or Inf values; replace them (e.g. with 0) before training or predicting")
    if np.ndim(image) == 3 and stack.shape[-1] in (3, 4):  # as predict refuses it: not a stack of 4-pixel-wide slices
        raise InputError(f"{name} has shape {stack.shape}; napari-unet takes one-channel 2-D images or (Z, Y, X) stacks "
                         "(if it is an RGB image with colours last, convert it to grayscale)")
    if min(stack.shape[-2:]) < MIN_IMAGE_SIZE:
        raise InputError(f"{name} of shape {stack.shape} is too small; need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
    return stack


def check_pair(image, labels) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels as (Z, Y, X) stacks of identical shape, or :class:`InputError`."""
    image_stack = check_image(image)
    labels_array = np.asarray(labels)
    if labels_array.shape != tuple(np.shape(image)):  # np.shape: a lazy image is not read again
        raise InputError(
            f"image shape {tuple(np.shape(image))} and labels shape {labels_array.shape} differ; "
            "labels must have exactly the image's shape"
        )
    return image_stack, as_stack(labels_array, "labels")


def slices_to_read(image, labels, ignore_value=None, every_slice: bool = False) -> list[int]:
    """The slices of (Z, Y, X) ``image`` and ``labels`` that :func:`read_annotated_slices` holds: those whose labels hold
    a pixel other than ``ignore_value``; all of them (``range(Z)``; ``[0]`` for a (Y, X) image) when every or no slice is
    annotated, with ``every_slice`` (context slices need their neighbours) or no ignore value, and for in-memory arrays
    of which more than half are annotated (a copy of those would not be smaller). Only the labels are read, a slice (or
    a dask chunk) at a time; a lazy stack with no annotated pixel is refused (:class:`InputError`)."""
    shape = _check_shapes(image, labels)
    every = list(range(shape[0] if len(shape) == 3 else 1))
    slices = []
    if len(shape) == 3 and ignore_value is not None and not every_slice:
        slices = [z for z, annotated in enumerate(slices_holding(labels, ignore_value, other=True)) if annotated]
        if not slices and not in_memory(image, labels):
            raise InputError(f"the labels contain no annotated pixel (every pixel has the ignore value {ignore_value}); "
                             "annotate at least two classes")
    if not slices or len(slices) == shape[0] or in_memory(image, labels) and len(slices) > shape[0] / 2:
        return every
    return slices


def _check_shapes(image, labels) -> tuple:
    """The shape of ``image``, after the checks of :func:`check_pair` that read nothing: both are arrays, the image is
    (Y, X) or (Z, Y, X) (:func:`as_stack`'s message), the labels have its shape; else :class:`InputError`."""
    check_is_array(image)
    check_is_array(labels, "labels")
    shape = tuple(np.shape(image))
    if len(shape) not in (2, 3):  # as check_pair's as_stack said it (the memory estimate needs Y and X)
        raise InputError(f"image has shape {shape}; expected a 2-D image (Y, X) or a stack (Z, Y, X) of one channel")
    if tuple(np.shape(labels)) != shape:
        raise InputError(f"image shape {shape} and labels shape {tuple(np.shape(labels))} differ; "
                         "labels must have exactly the image's shape")
    return shape


def in_memory(*arrays) -> bool:
    """Whether every one of ``arrays`` is an in-memory numpy array (not memory-mapped, not lazy)."""
    return all(isinstance(a, np.ndarray) and not isinstance(a, np.memmap) for a in arrays)


def read_annotated_slices(image, labels, ignore_value=None, pixel_weights=None, every_slice: bool = False, slices=None):
    """``(image, labels, pixel_weights, slices)``: (Z', Y, X) stacks of the ``slices`` of (Z, Y, X) ``image`` and
    ``labels`` that hold a pixel other than ``ignore_value`` (:func:`slices_to_read`, unless given), and their numbers
    in the stack. Memory-mapped and dask arrays are read only there (a stack larger than memory, annotated on a few
    slices, trains in the memory of those); all slices give the whole checked stacks (:func:`check_pair`), views of
    in-memory arrays. A read error of a lazy array's file (a damaged page or chunk) names its slices
    (:func:`read_planes`). ``pixel_weights``: the labels' shape, or None."""
    if slices is None:
        slices = slices_to_read(image, labels, ignore_value, every_slice)
        shape = tuple(np.shape(image))
    else:  # the checks slices_to_read makes (given slices: no misaligned stacks)
        shape = _check_shapes(image, labels)
    if len(slices) == (shape[0] if len(shape) == 3 else 1):
        if not in_memory(image):
            image = read_planes(image, name="image")
        if not in_memory(labels):
            labels = read_planes(labels, name="labels")
        image_stack, label_stack = check_pair(image, labels)
        weights = None
        if pixel_weights is not None:
            if not in_memory(pixel_weights) and tuple(np.shape(pixel_weights)) == shape:
                pixel_weights = read_planes(pixel_weights, name="pixel weights")
            weights = check_pixel_weights(pixel_weights, labels)
        return image_stack, label_stack, weights, list(range(len(label_stack)))
    image_stack = check_image(read_planes(image, slices, "image"), f"image (slices {slices} of {shape})")
    label_stack = read_planes(labels, slices, "labels")
    weights = None
    if pixel_weights is not None:
        if tuple(np.shape(pixel_weights)) != shape:
            raise InputError(f"pixel weights shape {tuple(np.shape(pixel_weights))} and labels shape {shape} differ")
        weights = check_pixel_weights(read_planes(pixel_weights, slices, "pixel weights"), label_stack)
    return image_stack, label_stack, weights, list(slices)


def slices_text(slices) -> str:
    """``slices`` (a range or list of slice numbers; None) as messages name them: "slice 2", "slices 2-4" or ""."""
    if not slices:
        return ""
    return f"slice {slices[0]}" if len(slices) == 1 else f"slices {slices[0]}-{slices[-1]}"


class LazyReadError(ValueError):
    """A lazy array of another reader (a dask array of napari's own zarr reader or of ``da.from_zarr``, a zarr array)
    that failed to read with one of :data:`DAMAGED_DATA_ERRORS`, with no file named; :func:`read_planes` raises this
    instead, its ``role`` and ``slices`` set."""


#: What another reader's lazy array raises for a damaged chunk or file (zarr 3.1 with numcodecs 0.16, formats 2 and 3,
#: through zarr and ``da.from_zarr``): RuntimeError (Zstd, Blosc), zlib.error, gzip's BadGzipFile (an OSError) and
#: EOFError (a cut gzip chunk), ValueError (an uncompressed chunk of the wrong size: "cannot reshape array...", "When
#: changing to a larger dtype..."); OSError of a file that cannot be read. A missing chunk file reads as the fill value,
#: no error. Anything else (IndexError of a slice out of range, TypeError of a lazy filter's bug...) is a program's error
#: and propagates; so does a ValueError not raised in a reader's code (:data:`_READER_PACKAGES`).
DAMAGED_DATA_ERRORS = (OSError, EOFError, RuntimeError, ValueError, zlib.error)
#: ... but not these, which are a program's: RuntimeErrors, and numpy's AxisError (an IndexError and a ValueError).
_PROGRAM_ERRORS = (NotImplementedError, RecursionError, IndexError, TypeError)
#: Packages that read and decode files' chunks: a ValueError is a damaged chunk's only when raised in their code (its
#: innermost Python frame outside :data:`_PASSED_THROUGH`; zarr's reshape of a chunk of the wrong size, through dask
#: too), not a lazy filter's own (a broadcast, a reshape of the wrong shape), which is a program's error.
_READER_PACKAGES = frozenset({"zarr", "numcodecs", "tifffile", "imagecodecs", "h5py", "fsspec"})
#: Packages whose frames say nothing of whose code failed: numpy's Python-level functions that a reader or a filter
#: calls (np.reshape raises in numpy's fromnumeric), and the schedulers that run a chunk's task.
_PASSED_THROUGH = frozenset({"numpy", "dask", "toolz", "tlz", "concurrent", "threading"})


def _raised_in_reader(err: BaseException) -> bool:
    modules = [str(frame.f_globals.get("__name__", "")).partition(".")[0] for frame, _ in traceback.walk_tb(err.__traceback__)]
    caller = next((module for module in reversed(modules) if module not in _PASSED_THROUGH), "")
    return caller in _READER_PACKAGES


def _damaged_data(err: BaseException) -> bool:
    """Whether ``err``, raised reading another reader's lazy array, is one a damaged chunk or file raises."""
    return (isinstance(err, DAMAGED_DATA_ERRORS) and not isinstance(err, _PROGRAM_ERRORS)
            and (not isinstance(err, ValueError) or _raised_in_reader(err)))


def reader_errors() -> tuple:
    """The errors about a file's contents: the readers' (:class:`~napari_unet.tiff_io.TiffReadError`,
    :class:`~napari_unet.zarr_io.ZarrReadError`), imported when one is raised, and :class:`LazyReadError`."""
    from .tiff_io import TiffReadError
    from .zarr_io import ZarrReadError

    return TiffReadError, ZarrReadError, LazyReadError


def _lazy_read_error(array, err: Exception) -> Optional[LazyReadError]:
    """``err`` raised reading the lazy ``array`` as a :class:`LazyReadError`; None for a reader's error, a numpy
    array's (none: it is in memory) or an error a damaged file does not raise (:data:`DAMAGED_DATA_ERRORS`: a lack of
    memory, a program's error)."""
    if (isinstance(err, reader_errors()) or not _damaged_data(err)
            or isinstance(array, np.ndarray) and not isinstance(array, np.memmap)):
        return None
    what = " ".join(str(err).split())[:300]
    return LazyReadError(f"unreadable data ({type(err).__name__}{': ' + what if what else ''}); its file may be damaged")


def chunks_along_z(array, planes: list) -> list:
    """``(start, stop, planes)`` of ``planes`` of (Z, ...) ``array`` grouped by the chunks holding them along Z (slices
    start..stop - 1): a dask array's, or a regular chunking's (a zarr or HDF5 array: ``chunks`` a tuple of ints); one
    slice a block for other arrays."""
    try:
        chunks = getattr(array, "chunks", None)
    except Exception:  # (a sharded zarr array may not tell)
        chunks = None
    if not chunks or not (hasattr(array, "dask") or isinstance(chunks[0], numbers.Integral) and int(chunks[0]) > 0):
        return [(z, z + 1, [z]) for z in planes]
    from dask.array.core import normalize_chunks  # a regular chunking as dask's sizes: (64, 64, 64, 64)

    sizes = np.asarray(normalize_chunks(tuple(chunks), shape=tuple(np.shape(array)))[0])
    ends = np.cumsum(sizes)
    blocks: dict = {}
    for z in planes:
        blocks.setdefault(int(np.searchsorted(ends, z, side="right")), []).append(z)
    return [(int(ends[k] - sizes[k]), int(ends[k]), zs) for k, zs in sorted(blocks.items())]


@contextlib.contextmanager
def _slices_named(array, name: str, planes: Optional[list]):
    """Give a reader's error raised inside (a damaged page or chunk of ``array``'s file) ``role`` = ``name`` and
    ``slices``: the slices of the page or chunk that fails again when ``planes`` of the (Z, Y, X) ``array`` are read a
    chunk at a time (a range), else None."""
    try:
        yield
    except Exception as err:
        foreign = _lazy_read_error(array, err)  # another reader's lazy array: any error of its read
        if foreign is None and not isinstance(err, reader_errors()):
            raise
        named = err if foreign is None else foreign
        if getattr(named, "role", None) is None:
            named.role = name
        if getattr(named, "slices", None) is None and planes and np.ndim(array) == 3:
            try:  # diagnostic only: its own failure (memory, a vanished file) must not replace err
                named.slices = _failing_slices(array, planes, foreign is not None)
            except Exception:
                named.slices = None
        if foreign is None:
            raise
        raise foreign from err


def _failing_slices(array, planes: list, foreign: bool = False) -> Optional[range]:
    """The slices of the page or chunk of ``array`` that fails again, read a chunk at a time (serially, up to the bad
    one: after a failed whole-stack read of a large stack, about as long as the read), else None. ``foreign``: the
    failure was another reader's (:class:`LazyReadError`), so one of :data:`DAMAGED_DATA_ERRORS` marks the chunk."""
    if len(planes) == 1:
        return range(planes[0], planes[0] + 1)
    blocks = chunks_along_z(array, planes)
    if len(blocks) == 1:
        return range(blocks[0][0], blocks[0][1])
    for start, stop, zs in blocks:  # read again a chunk at a time, only after a failure
        try:
            np.asarray(array[zs[0]:zs[-1] + 1])  # a slice: any array takes it (a zarr array no list), one decode a chunk
        except reader_errors():
            return range(start, stop)
        except Exception as err:  # another failure: the bad chunk is not known (unless it is another reader's damage)
            return range(start, stop) if foreign and _damaged_data(err) else None
    return None


def read_planes(array, planes=None, name: str = "image") -> np.ndarray:
    """Planes ``planes`` (a list; None: all) of the (Z, Y, X) ``array`` as a numpy (Z', Y, X) stack (a (Y, X) array
    whole), read a plane at a time (all: at once, a dask array in one computation). A reader's error
    (:class:`~napari_unet.tiff_io.TiffReadError`, :class:`~napari_unet.zarr_io.ZarrReadError`: a damaged page or chunk
    of a lazily read file; one of :data:`DAMAGED_DATA_ERRORS` of another reader's lazy array, as
    :class:`LazyReadError`) is raised with ``role`` = ``name`` and ``slices``: the range of slices of the page or
    chunk that fails (None if not found). Other errors (a slice out of range, a lazy filter's bug) propagate."""
    if np.ndim(array) == 2:
        with _slices_named(array, name, None):
            return np.asarray(array)
    if planes is None or list(planes) == list(range(np.shape(array)[0])):
        with _slices_named(array, name, list(range(np.shape(array)[0]))):
            return np.asarray(array)  # a dask array in one computation (chunks decoded in parallel)
    return np.stack([read_plane(array, int(z), name) for z in planes])


def read_plane(array, z: Optional[int] = None, name: str = "image") -> np.ndarray:
    """Slice ``z`` of the (Z, Y, X) ``array`` (a (Y, X) array whole, ``z`` unused) as a numpy array (a view of an
    in-memory one); a reader's error names it as :func:`read_planes` does."""
    if np.ndim(array) == 2:
        with _slices_named(array, name, None):
            return np.asarray(array)
    with _slices_named(array, name, [int(z)]):
        return np.asarray(array[z])


def slices_holding(labels, value, other: bool = False) -> Iterator[bool]:
    """Per slice of (Z, Y, X) ``labels``: whether it holds a pixel equal to ``value`` (``other``: a pixel other than
    it). Read a slice at a time, a dask array chunk by chunk (each decoded once); lazy, so ``any()`` stops early."""
    compare = np.not_equal if other else np.equal
    if hasattr(labels, "dask"):
        with _slices_named(labels, "labels", list(range(np.shape(labels)[0]))):
            found = compare(labels, value).any(axis=(1, 2)).compute()
        yield from (bool(b) for b in found)
        return
    for z in range(np.shape(labels)[0]):
        with _slices_named(labels, "labels", [z]):
            plane = np.asarray(labels[z])
        yield bool(compare(plane, value).any())


def check_pixel_weights(weights, labels) -> np.ndarray:
    """Extra loss weights of ``labels``' shape as a (Z, Y, X) stack (a view, in their own dtype), or :class:`InputError`."""
    array = np.asarray(weights)
    if array.shape != tuple(np.shape(labels)):
        raise InputError(f"pixel weights shape {array.shape} and labels shape {tuple(np.shape(labels))} differ")
    if array.dtype.kind not in "buif":
        raise InputError(f"pixel weights must be numbers, got dtype {array.dtype}")
    if array.size and ((array.dtype.kind == "f" and not np.isfinite(array).all()) or array.min() < 0):
        raise InputError("pixel weights must be finite and >= 0")
    # 1e300 became inf in float32: "training diverged" at step 1 (float(): float16's max against 1e6 warned of an overflow)
    if array.size and float(array.max()) > MAX_PIXEL_WEIGHT:
        raise InputError(f"pixel weights must be at most {MAX_PIXEL_WEIGHT:g} (the class weights are about 1; Retrain "
                         f"weighs corrections 8), got {float(array.max()):g}")
    return as_stack(array, "pixel weights")


#: Largest extra loss weight of a pixel: far above any useful one, and far from float32's overflow in the loss.
MAX_PIXEL_WEIGHT = 1e6


#: Normalised values are clipped to this range: a few outlier pixels (a hot pixel of 65535 in a 10-bit stack, a
#: "no data" value of 1e6) otherwise flattened the local contrast of about 200 x 200 pixels around each. ISBI's and
#: the OCT scans' values stay within -0.33..1.51, so clipping leaves such images as they were.
NORMALIZED_RANGE = (-1.0, 2.0)


def normalize(image, percentiles=(1.0, 99.8), local_contrast_sigma: float = 0.0) -> np.ndarray:
    """Per-slice percentile normalisation of (Z, Y, X) or (Y, X) to float32 (low -> 0, high -> 1), clipped to
    :data:`NORMALIZED_RANGE`.

    ``local_contrast_sigma`` > 0 then standardises every pixel by its neighbourhood
    (:func:`local_contrast`), so faint membranes in pale regions get the contrast of the rest.
    """
    low, high = (float(p) for p in percentiles)
    if not 0 <= low < high <= 100:  # (99, 1) inverted the image without a word
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {tuple(percentiles)}")
    if not local_contrast_sigma >= 0:
        raise ValueError(f"local_contrast_sigma must be >= 0, got {local_contrast_sigma}")
    stack = as_stack(image)
    if stack.size == 0:
        raise InputError(f"image of shape {np.shape(image)} holds no pixels")
    out = np.empty(stack.shape, np.float32)
    for z, plane in enumerate(stack):  # one plane at a time: the temporaries of a whole stack took 4 times its float32 size
        if stack.dtype.itemsize > 2 and stack.dtype != np.float32:
            out[z] = _normalize_wide(plane, percentiles)
        else:
            _normalize_narrow(plane, percentiles, out=out[z])
        if local_contrast_sigma > 0:
            local_contrast(out[z], local_contrast_sigma, out=out[z])
    return out.reshape(np.shape(image))


def normalize_window(image, slices, window, percentiles=(1.0, 99.8), local_contrast_sigma: float = 0.0,
                     context: int = 0) -> tuple[np.ndarray, list[int]]:
    """``(stack, planes)`` for ``predict(model, stack, slices=planes, normalized=True)``: the ``window``
    ``(y0, y1, x0, x1)`` of ``slices`` of the (Z, Y, X) ``image``, each normalised as a whole plane (:func:`normalize`), as
    ``predict`` normalises slices (a window normalised on its own had other percentiles). ``stack`` is float32,
    (len(slices), y1 - y0, x1 - x0) with ``planes`` 0, 1, ...; with ``context`` > 0 it is (Z, ...), holding the slices and
    their neighbours, ``planes`` = ``slices`` (the other planes stay zero, their memory uncommitted by np.zeros)."""
    stack = as_stack(image) if isinstance(image, np.ndarray) else image
    y0, y1, x0, x1 = window
    slices = [int(z) for z in slices]
    needed = sorted({n for z in slices for n in neighbour_slices(z, len(stack), context)}) if context else slices
    out = np.zeros((len(stack) if context else len(slices), y1 - y0, x1 - x0), np.float32)
    for k, z in enumerate(needed):
        out[z if context else k] = normalize(np.asarray(stack[z]), percentiles, local_contrast_sigma)[y0:y1, x0:x1]
    return out, (slices if context else list(range(len(slices))))


def _normalize_narrow(plane: np.ndarray, percentiles, out: Optional[np.ndarray] = None) -> np.ndarray:
    """One (Y, X) plane of float32 or of at most 16-bit values (exact in float32) normalised and clipped in float32,
    into ``out`` (a float32 array of its shape) if given: no float32 copy of the plane besides it."""
    if out is None:
        out = np.empty(plane.shape, np.float32)
    if plane.dtype == np.float32:
        values = plane
    else:
        out[...] = plane  # exact: at most 16 bits
        values = out
    lo, hi = np.percentile(values, percentiles)
    if hi - lo > np.finfo(np.float32).max:  # float32 values near its limit (±1e38): the range overflowed, NaN came out
        out[...] = _normalize_wide(plane, percentiles)
        return out
    scale = np.float32(hi - lo if hi > lo else 1.0)
    with np.errstate(over="ignore"):  # float32 outliers beyond its range: inf, clipped below
        np.subtract(values, np.float32(lo), out=out)
        np.divide(out, scale, out=out)
    return np.clip(out, *NORMALIZED_RANGE, out=out)


def _normalize_wide(plane: np.ndarray, percentiles) -> np.ndarray:
    """One (Y, X) plane of float64 or 32/64-bit integers normalised and clipped in float64, returned as float32: an
    offset of 1e9 left a float32 copy with a handful of distinct values. One plane at a time bounds the float64 copy."""
    plane = plane.astype(np.float64)
    with np.errstate(over="ignore"):
        spans_too_far = not np.isfinite(plane.max() - plane.min())
    if spans_too_far:  # finite values beyond ±9e307 ("no data" markers): their differences overflowed to inf, then NaN
        plane *= 0.25  # exact (a power of two), and normalising does not depend on the scale
    lo, hi = np.percentile(plane, percentiles)
    out = np.clip((plane - lo) / (hi - lo if hi > lo else 1.0), *NORMALIZED_RANGE)
    return out.astype(np.float32)


#: Quantile levels (percent) of an intensity profile: :func:`intensity_profile`.
PROFILE_LEVELS = tuple(range(5, 100, 5))
#: Profile distance (:func:`profile_distance`) above which images look unlike a model's training images, added to the
#: spread of the training slices themselves (:func:`intensity_reference`: single slices of one acquisition differ more
#: than medians of 8). Calibrated on ISBI 2012 and the OCT scans (``benchmarks/intensity_profiles.py``): stacks of one
#: acquisition differ by at most 0.03 (ISBI's training and test slices 0.011-0.014, noise of 8 % of the range added
#: 0.030); inverted 0.08, gamma 0.7 0.048, logarithmic (dB) OCT 0.049, log ISBI 0.18.
PROFILE_SHIFT = 0.04


#: Share of a slice's pixels above its floor (its low normalisation percentile: its darkest 1 %, or the black
#: background of an OCT scan) from which :func:`intensity_profile` describes those pixels alone.
PROFILE_ABOVE_FLOOR_SHARE = 0.05


def _slice_quantiles(image, percentiles, max_slices: int, kinds: tuple) -> list:
    """For each ``above_floor`` flag of ``kinds``, the (S, len(PROFILE_LEVELS)) quantiles of up to ``max_slices`` evenly
    spaced, percentile-normalised slices (each slice read once), blank ones (one grey value: a missing frame, which
    prediction names) left out unless all are: one of 3 slices made a stack "unlike the training images"."""
    shape = tuple(np.shape(image))
    if len(shape) not in (2, 3) or 0 in shape:
        raise InputError(f"image of shape {shape} is not a (Y, X) image or (Z, Y, X) stack with pixels")
    n_slices = 1 if len(shape) == 2 else shape[0]
    picks = np.unique(np.linspace(0, n_slices - 1, min(max_slices, n_slices)).round().astype(int))
    quantiles, blank = [[] for _ in kinds], [[] for _ in kinds]
    for z in picks:  # a lazy stack reads only these
        raw = read_plane(image, int(z))
        plane = normalize(raw, percentiles)
        with np.errstate(invalid="ignore"):
            is_blank = bool(raw.min() == raw.max())  # (NaN: not blank; refused elsewhere)
        for above_floor, found in zip(kinds, blank if is_blank else quantiles):
            values = plane
            if above_floor:
                above = plane[plane > 0]  # above the low percentile, which normalises to 0
                values = above if above.size >= PROFILE_ABOVE_FLOOR_SHARE * plane.size else plane
            found.append(np.percentile(values, PROFILE_LEVELS))
    return [np.array(found if found else blanks) for found, blanks in zip(quantiles, blank)]


def intensity_profile(image, percentiles=(1.0, 99.8), max_slices: int = 8, above_floor: bool = True) -> tuple:
    """Shape of the intensity distribution of (Y, X) or (Z, Y, X) ``image`` (numpy or dask) after the percentile
    normalisation: the median over up to ``max_slices`` evenly spaced slices of their quantiles at
    :data:`PROFILE_LEVELS`, as floats. Linear rescaling leaves it unchanged; inversion, gamma or log scaling do not.

    ``above_floor``: of the pixels above each slice's normalised floor (model files before session 51: all pixels).
    75 % of an OCT scan is black background, which left 15 of the 19 quantiles at 0 for any brightness scale that
    keeps black black: a linear-intensity export of the training scan lay at 0.005, now 0.048 (BENCHMARKS.md).
    """
    return intensity_reference(image, percentiles, max_slices, above_floor)[0]


def intensity_reference(image, percentiles=(1.0, 99.8), max_slices: int = 8, above_floor: bool = True) -> tuple:
    """(:func:`intensity_profile` of ``image``, the largest :func:`profile_distance` of one of its sampled slices
    from it): what a model records of its training images, so that one slice of the same kind is not called unlike."""
    return intensity_references(image, percentiles, max_slices, (above_floor,))[0]


def intensity_references(image, percentiles=(1.0, 99.8), max_slices: int = 8, kinds: tuple = (False, True)) -> list:
    """:func:`intensity_reference` for each ``above_floor`` flag of ``kinds``, the sampled slices read once."""
    references = []
    for quantiles in _slice_quantiles(image, percentiles, max_slices, kinds):
        profile = tuple(float(q) for q in np.median(quantiles, axis=0))
        references.append((profile, max(profile_distance(profile, q) for q in quantiles)))
    return references


def profile_distance(profile, other) -> float:
    """Mean absolute difference of two :func:`intensity_profile` results (the 1-Wasserstein distance of the
    normalised intensities, from their quantiles), in units of the normalised range."""
    return float(np.mean(np.abs(np.asarray(profile, float) - np.asarray(other, float))))


#: Local standard deviation added before dividing (in units of the percentile range): flat regions stay flat.
LOCAL_CONTRAST_FLOOR = 0.02


def _blurred_blocks(plane: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-weighted local mean of a (Y, X) float32 plane (``scipy.ndimage.gaussian_filter``, edges
    reflected) for ``sigma`` >= 12, as blurred blocks that :func:`_expanded_rows` turns into rows of pixels.

    From sigma 12 on, the Gaussian is smooth on the scale of blocks of sigma // 6 pixels: the plane, reflected by
    the filter's reach, is averaged in blocks, the block means are blurred and interpolated back to the pixels
    (within 1 % of the range of the full-resolution blur, tested), at a fraction of its cost. The averaging and
    the interpolation are sparse matrices along each axis (:func:`_block_operators`).
    """
    factor = int(sigma // 6)
    reduce_rows, reduce_cols = (_block_operators(n, factor, float(sigma))[0] for n in plane.shape)
    blocks = (reduce_cols @ (reduce_rows @ plane).T).T
    return ndimage.gaussian_filter(blocks, sigma / factor, mode="nearest")


def _expanded_rows(blocks: np.ndarray, shape: tuple, sigma: float, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the local mean of a plane of ``shape`` from its :func:`_blurred_blocks`, (rows, X)
    float32; the same values as those rows of the whole mean (every row is its own sparse product)."""
    factor = int(sigma // 6)
    expand_rows, expand_cols = (_block_operators(n, factor, float(sigma))[1] for n in shape)
    return np.ascontiguousarray((expand_cols @ (expand_rows[start:stop] @ blocks).T).T, dtype=np.float32)


#: Rows of a plane :func:`local_contrast` computes at a time (its temporaries are a few rows' worth).
LOCAL_CONTRAST_ROWS = 256


@functools.lru_cache(maxsize=16)
def _block_operators(length: int, factor: int, sigma: float):
    """Sparse float32 matrices along one axis of ``length`` pixels: (blocks, length) ``reduce`` averages blocks of
    ``factor`` pixels of the axis reflected ("symmetric") by the filter's reach (4 sigma); (length, blocks)
    ``expand`` interpolates block values linearly at the pixel centres."""
    from scipy import sparse

    margin = factor * int(np.ceil(4 * sigma / factor))
    padded = length + 2 * margin + -length % factor
    source = np.mod(np.arange(padded) - margin, 2 * length)
    source = np.where(source >= length, 2 * length - 1 - source, source)
    blocks = padded // factor
    reduce = sparse.csr_matrix(
        (np.full(padded, 1.0 / factor, np.float32), (np.arange(padded) // factor, source)), shape=(blocks, length)
    )  # duplicate entries (reflected pixels) are summed
    centres = (np.arange(length) + margin + 0.5) / factor - 0.5  # pixel centres in block coordinates
    below = np.clip(np.floor(centres).astype(int), 0, blocks - 2)
    above = np.clip(centres - below, 0.0, 1.0).astype(np.float32)
    rows = np.repeat(np.arange(length), 2)
    cols = np.stack([below, below + 1], axis=1).ravel()
    expand = sparse.csr_matrix((np.stack([1 - above, above], axis=1).ravel(), (rows, cols)), shape=(length, blocks))
    return reduce, expand


def local_contrast(plane, sigma: float, out: Optional[np.ndarray] = None) -> np.ndarray:
    """A (Y, X) float plane standardised by its Gaussian neighbourhood (``sigma`` pixels), as float32 in [0, 1].

    ``0.5 + (x - mean) / (std + LOCAL_CONTRAST_FLOOR) / 6``, clipped: 0.5 is the local mean and the ends are
    3 local standard deviations away. The percentile normalisation leaves pale, low-contrast regions (e.g. ISBI's
    obliquely cut cells) with faint membranes; this gives every region the same contrast. ``out``: a float32 array of
    the plane's shape to write into, the plane itself included (from ``sigma`` 12 on, a large section then needs one
    more float32 copy of it at the peak besides small bands of rows, not four).
    """
    plane = np.asarray(plane, dtype=np.float32)
    if plane.ndim != 2 or not sigma > 0:
        raise ValueError(f"local_contrast takes a (Y, X) plane and sigma > 0, got shape {plane.shape} and sigma {sigma}")
    out = np.empty(plane.shape, np.float32) if out is None else out
    if sigma < 12:
        centred = plane - ndimage.gaussian_filter(plane, sigma, mode="reflect")
        variance = ndimage.gaussian_filter(centred * centred, sigma, mode="reflect")
        return np.clip(0.5 + centred / (6.0 * (np.sqrt(np.maximum(variance, 0.0)) + LOCAL_CONTRAST_FLOOR)), 0.0, 1.0, out=out)
    # the local mean and variance are smooth: held as blurred blocks and expanded a band of rows at a time
    bands = [(start, min(start + LOCAL_CONTRAST_ROWS, len(plane))) for start in range(0, len(plane), LOCAL_CONTRAST_ROWS)]
    mean = _blurred_blocks(plane, sigma)
    squares = np.empty(plane.shape, np.float32)
    for start, stop in bands:
        centred = plane[start:stop] - _expanded_rows(mean, plane.shape, sigma, start, stop)
        np.multiply(centred, centred, out=squares[start:stop])
    variance = _blurred_blocks(squares, sigma)
    del squares
    for start, stop in bands:  # each band reads its own rows of the plane before writing them (out may be the plane)
        centred = plane[start:stop] - _expanded_rows(mean, plane.shape, sigma, start, stop)
        std = np.sqrt(np.maximum(_expanded_rows(variance, plane.shape, sigma, start, stop), 0.0)) + LOCAL_CONTRAST_FLOOR
        np.clip(0.5 + centred / (6.0 * std), 0.0, 1.0, out=out[start:stop])
    return out


def downscale_image(image, factor: int) -> np.ndarray:
    """Block means of ``factor`` x ``factor`` pixels over the last two axes (edges padded by repetition).

    (..., Y, X) -> (..., ceil(Y / factor), ceil(X / factor)) float32; ``factor`` 1 returns float32 as is.
    """
    array = np.asarray(image, dtype=np.float32)
    if not (isinstance(factor, (int, np.integer)) and factor >= 1):
        raise ValueError(f"factor must be a whole number >= 1, got {factor!r}")
    if factor == 1:
        return array
    return _blocks(array, factor, mode="edge").mean(axis=(-3, -1), dtype=np.float32)


def _blocks(array: np.ndarray, factor: int, **pad) -> np.ndarray:
    """(..., Y, X) -> (..., ceil(Y / factor), factor, ceil(X / factor), factor) view of ``factor`` x ``factor``
    blocks; the bottom/right edges are padded to whole blocks with ``np.pad(**pad)``."""
    pad_y, pad_x = -array.shape[-2] % factor, -array.shape[-1] % factor
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_y), (0, pad_x)]
    padded = np.pad(array, widths, **pad) if pad_y or pad_x else array
    y, x = padded.shape[-2] // factor, padded.shape[-1] // factor
    return padded.reshape(padded.shape[:-2] + (y, factor, x, factor))


def downscale_labels(indices, factor: int) -> np.ndarray:
    """Majority class of each ``factor`` x ``factor`` block of (..., Y, X) class indices (-1 = unannotated).

    Returns :func:`downscale_image`'s shape, same dtype. Only annotated pixels vote (a block is -1 only if none of
    its pixels is annotated); ties go to the lower class index. A block's vote sits at the block centre, as the
    block mean of :func:`downscale_image` and the upsampling of :func:`upscale_probabilities` do: sampling the block
    corner instead shifted every predicted label by (factor - 1) / 2 pixels.
    """
    array = np.asarray(indices)
    if factor == 1:
        return array
    blocks = _blocks(array, factor, constant_values=-1)
    n_classes = int(array.max(initial=-1)) + 1
    votes = np.stack([(blocks == c).sum(axis=(-3, -1), dtype=np.int32) for c in range(max(n_classes, 1))])
    majority = votes.argmax(axis=0).astype(array.dtype)
    return np.where(votes.max(axis=0) > 0, majority, np.asarray(-1, array.dtype))


def upscale_probabilities(probabilities, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """(y, x, C) probabilities of a downscaled image back to (Y, X, C) = ``shape`` (bilinear, float32)."""
    if factor == 1:
        return probabilities[: shape[0], : shape[1]]
    from skimage.transform import resize

    y, x, channels = probabilities.shape
    full = resize(probabilities, (y * factor, x * factor, channels), order=1, mode="edge", anti_aliasing=False)
    return full[: shape[0], : shape[1]].astype(np.float32, copy=False)


def neighbour_slices(z: int, n_slices: int, context: int) -> list[int]:
    """Indices of slices ``z - context`` .. ``z + context`` of a stack of ``n_slices``; the edge slices repeat."""
    return [min(max(z + offset, 0), n_slices - 1) for offset in range(-context, context + 1)]


def class_weights(indices: np.ndarray, n_classes: int, mode: str = "balanced") -> np.ndarray:
    """Per-class loss weights (float32, mean 1 over annotated pixels): inverse sqrt frequency."""
    counts = count_classes(indices, n_classes).astype(np.float64)
    if mode == "none" or counts.sum() == 0:
        return np.ones(n_classes, np.float32)
    freq = np.maximum(counts / counts.sum(), 1e-4)
    weights = 1.0 / np.sqrt(freq)
    weights /= (weights * freq).sum()
    return weights.astype(np.float32)


@dataclass(frozen=True)
class Augmentation:
    flips: bool = True
    rotations: bool = True
    elastic: bool = True
    intensity: bool = True
    elastic_alpha: float = 10.0
    elastic_grid: int = 3
    noise: float = 0.0  # > 0: Gaussian pixel noise, its std drawn per patch from [0, noise) (normalised units)


def border_weights(indices, boundary_index: int, weight: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The U-Net paper's separation weights for (Y, X) or (Z, Y, X) int class indices (-1 = unannotated).

    Cells are the 4-connected regions of annotated non-boundary pixels. Each boundary pixel gets
    ``weight * exp(-(d1 + d2)**2 / (2 sigma**2))`` with d1, d2 its distances to the nearest and the
    second-nearest cell, so thin membranes between touching cells weigh most (others get 0).
    Returns float32 of the input's shape, to be added to the class weights. Planes seen before (same
    indices and settings) come from a cache: a Retrain after painting on one slice recomputes only that one. The
    planes of a stack whose weights outgrow the cache are not cached (each would push out one the next run needs
    first, while holding a second copy of the weights).
    """
    stack = np.asarray(indices)
    planes = stack[None] if stack.ndim == 2 else stack
    out = np.zeros(planes.shape, np.float32)
    cached_run = out.nbytes <= _BORDER_WEIGHTS.max_bytes
    for z, plane in enumerate(planes):
        key = (hashlib.blake2b(np.ascontiguousarray(plane).view(np.uint8), digest_size=16).digest(), plane.shape,
               plane.dtype.str, int(boundary_index), float(weight), float(sigma))
        cached = _BORDER_WEIGHTS.get(key)
        if cached is None:
            cached = _plane_border_weights(plane, boundary_index, weight, sigma)
            if cached_run:
                _BORDER_WEIGHTS.put(key, cached)
        out[z] = cached
    return out.reshape(stack.shape)


class _PlaneCache:
    """Thread-safe least-recently-used cache of read-only arrays, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.nbytes = max_bytes, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        value.flags.writeable = False
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


#: Border weights of recently seen label planes (256 MB: 256 planes of 512², 16 of 2048²).
_BORDER_WEIGHTS = _PlaneCache(256 * 2**20)


def clear_border_weights_cache() -> None:
    """Forget the border weights kept for label planes seen lately (:func:`border_weights`; frees up to 256 MB)."""
    _BORDER_WEIGHTS.clear()


def _plane_border_weights(plane: np.ndarray, boundary_index: int, weight: float, sigma: float) -> np.ndarray:
    """:func:`border_weights` of one (Y, X) plane of class indices."""
    from skimage.measure import label as label_regions

    out = np.zeros(plane.shape, np.float32)
    boundary = plane == boundary_index
    if not boundary.any():
        return out
    margin = int(np.ceil(3 * sigma))
    cells = label_regions((plane >= 0) & ~boundary, connectivity=1)
    nearest = np.full((2,) + plane.shape, np.inf, np.float32)
    for region, bbox in enumerate(ndimage.find_objects(cells), start=1):
        if bbox is None:
            continue
        window = tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(bbox, plane.shape))
        distance = ndimage.distance_transform_edt(cells[window] != region).astype(np.float32)
        first, second = nearest[0][window], nearest[1][window]
        nearest[1][window] = np.minimum(second, np.maximum(first, distance))
        nearest[0][window] = np.minimum(first, distance)
    total = nearest[0] + nearest[1]
    return np.where(boundary & np.isfinite(total), weight * np.exp(-(total**2) / (2 * sigma**2)), 0.0).astype(np.float32)


#: Intensity jitter of :func:`augment`: gamma exp(U(-a, a)), contrast U(low, high), brightness U(-b, b) in units of the
#: normalised range.
INTENSITY_LOG_GAMMA, INTENSITY_CONTRAST, INTENSITY_BRIGHTNESS = 0.3, (0.8, 1.2), 0.1


def augment(image, indices, rng: np.random.Generator, aug: Augmentation, extra=None, margin: int = 0):
    """A randomly augmented (Y, X) or (Y, X, C) float32 patch and its (Y, X) int32 class indices, from a patch and its
    signed integer class indices (int8 in training). The inputs are never modified; when no augmentation applies and
    they have these dtypes already, they may be returned themselves.

    ``extra``: an optional (Y, X) float32 map (e.g. pixel weights) moved with the labels; it is
    returned as a third array when given. ``margin``: pixels the inputs hold around the patch on each side (the
    elastic warp reads them); the outputs are the patch.
    """
    if aug.flips and rng.random() < 0.5:
        image, indices = image[:, ::-1], indices[:, ::-1]
        extra = None if extra is None else extra[:, ::-1]
    if aug.rotations and image.shape[0] == image.shape[1]:
        k = int(rng.integers(4))
        image, indices = np.rot90(image, k), np.rot90(indices, k)
        extra = None if extra is None else np.rot90(extra, k)
    if aug.elastic and aug.elastic_alpha > 0:
        image, indices, extra = elastic_deform(image, indices, rng, aug.elastic_alpha, aug.elastic_grid, extra, margin)
    elif margin:
        inside = (slice(margin, -margin), slice(margin, -margin))
        image, indices, extra = image[inside], indices[inside], None if extra is None else extra[inside]
    image = np.ascontiguousarray(image, dtype=np.float32)
    if aug.intensity:
        gamma = float(np.exp(rng.uniform(-INTENSITY_LOG_GAMMA, INTENSITY_LOG_GAMMA)))
        contrast = float(rng.uniform(*INTENSITY_CONTRAST))
        brightness = float(rng.uniform(-INTENSITY_BRIGHTNESS, INTENSITY_BRIGHTNESS))
        # the power of |x| with x's sign: clipping at 0 took away the negative values predict gives the network
        image = np.sign(image) * np.abs(image) ** gamma * contrast + brightness
    if aug.noise > 0:
        # float64 draws and a cast: numpy's float32 normal draws take ~5x as long (1 vs 5 ms per 256² patch)
        image = image + rng.normal(0.0, rng.uniform(0.0, aug.noise), image.shape).astype(np.float32)
    image, indices = image.astype(np.float32, copy=False), np.ascontiguousarray(indices, dtype=np.int32)
    if extra is None:
        return image, indices
    return image, indices, np.ascontiguousarray(extra, dtype=np.float32)


#: Largest displacement std of :func:`elastic_deform` as a share of its control points' spacing (about the share 10 px
#: are of a 128-px patch's; 256-px patches keep 10 px).
ELASTIC_MAX_SHARE = 0.15


def elastic_deform(image, indices, rng, alpha: float, grid: int, extra=None, margin: int = 0):
    """Smooth elastic deformation (random displacements on a coarse grid, cubic upsampling).

    As in the U-Net paper: displacement vectors drawn per control point (std ``alpha`` pixels, at most
    :data:`ELASTIC_MAX_SHARE` of the control points' spacing), interpolated bicubically; image linearly
    resampled, labels and ``extra`` pixel weights by nearest neighbour. ``margin``: pixels the inputs hold around the patch on each side, which
    the warp may read (else the patch's border is filled from its reflection, its labels "not annotated"); the
    outputs are the patch.
    """
    full = image.shape
    shape = (full[0] - 2 * margin, full[1] - 2 * margin) + full[2:]
    # the paper's 10 px on its 572-px tiles: on 64-px patches 10 px folded 45 % of them (an OCT patch's layers reversed)
    spacing = (min(shape[:2]) - 1) / max(grid - 1, 1)
    coarse = rng.normal(0.0, min(alpha, ELASTIC_MAX_SHARE * spacing), size=(2, grid, grid))
    # = ndimage.zoom(coarse[k], shape / grid, order=3, mode="nearest"), which is separable: 0.2 ms instead of 18 per patch
    displacement = np.einsum("yi,kij,xj->kyx", _cubic_zoom_matrix(shape[0], grid), coarse, _cubic_zoom_matrix(shape[1], grid), optimize=True)
    coords = displacement + np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")) + margin
    channels = image.reshape(full[:2] + (-1,))  # (Y, X) or (Y, X, C): all channels move together
    warped = np.stack([ndimage.map_coordinates(channels[..., c], coords, order=1, mode="reflect") for c in range(channels.shape[2])], -1)
    warped = warped.reshape(shape)
    warped_indices = ndimage.map_coordinates(indices, coords, order=0, mode="constant", cval=IGNORE_INDEX)
    # by nearest neighbour as the labels, so that each pixel keeps its label's weight (linearly, 11 % of the cell pixels
    # beside a membrane got up to 6.5 of its border weight and the membrane pixels less)
    warped_extra = None if extra is None else ndimage.map_coordinates(extra, coords, order=0, mode="constant")
    return warped.astype(np.float32), warped_indices.astype(np.int32), warped_extra


@functools.lru_cache(maxsize=16)
def _cubic_zoom_matrix(length: int, grid: int) -> np.ndarray:
    """(length, grid) float64 read-only: ``ndimage.zoom(values, length / grid, order=3, mode="nearest")`` of
    ``grid`` values as a matrix."""
    matrix = np.stack([ndimage.zoom(unit, length / grid, order=3, mode="nearest")[:length] for unit in np.eye(grid)], axis=1)
    matrix.flags.writeable = False
    return matrix


def centre_tiles(images, slices, tile_size: int, multiple: int, context: int = 0, max_tiles: int = 16):
    """(1, T, T', C) float32 network inputs: the centre of up to ``max_tiles`` evenly chosen ``slices``.

    ``images``: (Z, Y, X) float32 normalised; C = 2 * ``context`` + 1 neighbouring slices as channels.
    Each side is ``tile_size`` or the slice's own size, rounded up to ``multiple`` (reflect-padded).
    """
    slices = list(slices)
    if len(slices) > max_tiles:
        slices = [slices[i] for i in np.linspace(0, len(slices) - 1, max_tiles).round().astype(int)]
    _, height, width = images.shape
    tile_y, tile_x = (-(-min(tile_size, n) // multiple) * multiple for n in (height, width))
    y0, x0 = max(0, (height - tile_y) // 2), max(0, (width - tile_x) // 2)
    tiles = []
    for z in slices:
        planes = neighbour_slices(int(z), len(images), context)
        tile = np.moveaxis(images[planes, y0 : y0 + tile_y, x0 : x0 + tile_x], 0, -1)
        pad = ((0, tile_y - tile.shape[0]), (0, tile_x - tile.shape[1]), (0, 0))
        if pad[0][1] or pad[1][1]:
            tile = np.pad(tile, pad, mode="reflect" if min(tile.shape[:2]) > 1 else "edge")
        tiles.append(np.ascontiguousarray(tile[None], dtype=np.float32))
    return tiles


#: Share of training patches holding an annotated pixel (anywhere in them); the rest lie anywhere on a slice with annotations.
ANNOTATED_FRACTION = 0.9


#: From this share of annotated pixels on, :class:`PatchSampler` draws annotated positions by rejection (at most 4 draws
#: per patch on average) instead of keeping their list.
DENSE_ANNOTATION_SHARE = 0.25


class PatchSampler:
    """Random training patches from normalised slices, favouring annotated pixels.

    ``images``: (Z, Y, X) float32 normalised; ``indices``: (Z, Y, X) signed integer class indices (int8 in
    training), -1 = not annotated. Slices with no annotated pixel are never sampled. Smaller slices are reflect-padded
    (labels padded as not annotated). ``pixel_weights``: optional (Z, Y, X) float32 weights added to
    the class weights of annotated pixels (see :func:`border_weights`). ``context``: neighbouring
    slices on each side given as extra channels (any slice may serve as context, annotated or not).
    """

    def __init__(
        self, images, indices, patch_size, weights, aug: Augmentation, annotated_fraction=ANNOTATED_FRACTION, seed=0,
        pixel_weights=None, context=0
    ):
        pad_y = max(0, patch_size - images.shape[1])
        pad_x = max(0, patch_size - images.shape[2])
        if pad_y or pad_x:
            widths = ((0, 0), (0, pad_y), (0, pad_x))
            images = np.pad(images, widths, mode="reflect" if min(images.shape[1:]) > 1 else "edge")
            indices = np.pad(indices, widths, constant_values=IGNORE_INDEX)
            if pixel_weights is not None:
                pixel_weights = np.pad(pixel_weights, widths)
        self.images, self.indices, self.pixel_weights = images, indices, pixel_weights
        self.patch_size, self.context = patch_size, context
        self.weights = np.asarray(weights, np.float32)
        self.aug = aug
        self.annotated_fraction = annotated_fraction
        self.rng = np.random.default_rng(seed)
        annotated = indices >= 0
        n_annotated = int(np.count_nonzero(annotated))
        if n_annotated == 0:
            raise InputError("no annotated pixel to train on")
        # Sparse annotations keep their flat positions (not argwhere's (N, 3) coordinates: a third of the memory);
        # dense ones are drawn by rejection from all pixels (the same draws as before where every pixel of slices at
        # least a patch large is annotated, as in ISBI): an int64
        # position per pixel was 8 bytes per pixel of the stack, the largest array of a training (1.25 GiB for 40 x 2048²).
        sparse = n_annotated < DENSE_ANNOTATION_SHARE * annotated.size
        self.annotated_positions = np.flatnonzero(annotated) if sparse else None
        self.slices_with_labels = np.flatnonzero(annotated.reshape(len(annotated), -1).any(axis=1))

    def patch(self) -> tuple[np.ndarray, np.ndarray]:
        """One (P, P, C) image patch (C = 2 * context + 1) and its (P, P, 2) target: class index and pixel weight."""
        rng, p = self.rng, self.patch_size
        _, height, width = self.images.shape
        if rng.random() < self.annotated_fraction:
            if self.annotated_positions is not None:
                position = self.annotated_positions[rng.integers(len(self.annotated_positions))]
            else:
                position = rng.integers(self.indices.size)
                while self.indices.flat[position] < 0:
                    position = rng.integers(self.indices.size)
            z, cy, cx = np.unravel_index(position, self.indices.shape)
            y0 = int(np.clip(cy - rng.integers(p), 0, height - p))
            x0 = int(np.clip(cx - rng.integers(p), 0, width - p))
        else:
            z = int(rng.choice(self.slices_with_labels))
            y0, x0 = int(rng.integers(height - p + 1)), int(rng.integers(width - p + 1))
        planes = neighbour_slices(int(z), len(self.images), self.context)
        # the elastic warp reads around the patch: cut from the patch alone, its border pulled in "not annotated" (5 %
        # of a 256-px patch, most patches of an annotation at the slice's edge)
        m = int(math.ceil(3 * self.aug.elastic_alpha)) if self.aug.elastic and self.aug.elastic_alpha > 0 else 0
        image = np.moveaxis(_window(self.images, planes, y0 - m, x0 - m, p + 2 * m, None), 0, -1)
        indices = _window(self.indices, z, y0 - m, x0 - m, p + 2 * m, IGNORE_INDEX)
        if self.pixel_weights is None:
            image, indices = augment(image, indices, rng, self.aug, margin=m)
            extra = 0.0
        else:
            weights = _window(self.pixel_weights, z, y0 - m, x0 - m, p + 2 * m, 0)
            image, indices, extra = augment(image, indices, rng, self.aug, weights, margin=m)
        weight = np.where(indices >= 0, self.weights[np.maximum(indices, 0)] + extra, 0.0).astype(np.float32)
        target = np.stack([np.maximum(indices, 0).astype(np.float32), weight], axis=-1)
        return image, target

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, P, P, C) float32 images (C = 2 * context + 1) and (B, P, P, 2) float32 targets."""
        pairs = [self.patch() for _ in range(batch_size)]
        images = np.stack([im for im, _ in pairs])
        targets = np.stack([t for _, t in pairs])
        return images, targets


def _window(stack, z, y0: int, x0: int, size: int, fill):
    """``stack[z, y0:y0+size, x0:x0+size]`` (``z`` an int or a list of planes), padded where it leaves the planes: by
    reflection (``fill`` None) or with ``fill``."""
    _, height, width = stack.shape
    cut = stack[z, max(y0, 0) : max(min(y0 + size, height), 0), max(x0, 0) : max(min(x0 + size, width), 0)]
    before_y, before_x = max(-y0, 0), max(-x0, 0)
    widths = [(before_y, size - cut.shape[-2] - before_y), (before_x, size - cut.shape[-1] - before_x)]
    if not any(sum(w) for w in widths):
        return cut
    widths = [(0, 0)] * (cut.ndim - 2) + widths
    if fill is not None:
        return np.pad(cut, widths, constant_values=fill)
    return np.pad(cut, widths, mode="reflect" if min(cut.shape[-2:]) > 1 else "edge")


def prefetch(make_batch, n_batches: int, depth: int = 4):
    """Iterate over ``n_batches`` results of ``make_batch()`` built ahead in a background thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for _ in range(n_batches):
                if stop.is_set():
                    return
                results.put(make_batch())
        except BaseException as err:  # handed to the consumer, raised there
            results.put(err)

    thread = threading.Thread(target=work, daemon=True, name="napari-unet-batches")
    thread.start()
    try:
        for _ in range(n_batches):
            item = results.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(0.05)


__all__ = [
    "DAMAGED_DATA_ERRORS",
    "chunks_along_z",
    "ELASTIC_MAX_SHARE",
    "LazyReadError",
    "clear_border_weights_cache",
    "INTENSITY_BRIGHTNESS",
    "INTENSITY_CONTRAST",
    "INTENSITY_LOG_GAMMA",
    "InputError",
    "check_is_array",
    "as_stack",
    "MIN_IMAGE_SIZE",
    "check_image",
    "check_pair",
    "slices_to_read",
    "read_annotated_slices",
    "read_planes",
    "read_plane",
    "reader_errors",
    "in_memory",
    "slices_text",
    "slices_holding",
    "check_pixel_weights",
    "MAX_PIXEL_WEIGHT",
    "NORMALIZED_RANGE",
    "normalize",
    "normalize_window",
    "PROFILE_LEVELS",
    "PROFILE_SHIFT",
    "PROFILE_ABOVE_FLOOR_SHARE",
    "intensity_profile",
    "intensity_reference",
    "intensity_references",
    "profile_distance",
    "LOCAL_CONTRAST_FLOOR",
    "LOCAL_CONTRAST_ROWS",
    "local_contrast",
    "downscale_image",
    "downscale_labels",
    "upscale_probabilities",
    "neighbour_slices",
    "class_weights",
    "Augmentation",
    "border_weights",
    "augment",
    "elastic_deform",
    "centre_tiles",
    "ANNOTATED_FRACTION",
    "DENSE_ANNOTATION_SHARE",
    "PatchSampler",
    "prefetch",
]
