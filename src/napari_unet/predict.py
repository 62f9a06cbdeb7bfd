"""Tiled prediction of 2-D images and (Z, Y, X) stacks as a stream of progress events."""

from __future__ import annotations

import operator
import threading
import time
import weakref
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from . import hardware
from ._interrupts import interrupts_deferred
from .data import (
    MIN_IMAGE_SIZE,
    PROFILE_LEVELS,
    PROFILE_SHIFT,
    InputError,
    as_stack,
    check_image,
    check_is_array,
    downscale_image,
    intensity_profile,
    neighbour_slices,
    normalize,
    profile_distance,
    read_plane,
    upscale_probabilities,
)
from .labels import from_indices, smallest_dtype
from .model import fold_batch_norm, folds_to_copy
from .model_io import UNetModel, as_model
from .postprocess import candidate_closings, order_layers, rule_windows, tiled_boundary_mask


@dataclass(frozen=True)
class PredictionProgress:
    """``done`` of ``total`` tiles are predicted."""

    done: int
    total: int
    elapsed: float
    eta: float


@dataclass(frozen=True)
class Prediction:
    """Result for an input of shape S = (Y, X) or (Z, Y, X); with ``slices=``, S = (len(slices), Y, X).

    ``labels``: shape S, class values of the training labels (e.g. 0/255), smallest fitting dtype.
    ``probabilities``: S + (n_classes,) float32, or None when not requested.
    ``blank_slices``: the predicted slices (stack indices) whose image holds one value only (a blank frame): their
    labels mean nothing.
    """

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    stopped: bool = False
    blank_slices: tuple = ()


def blank_slices_note(blank_slices) -> Optional[str]:
    """A note naming :attr:`Prediction.blank_slices`, or None when there are none."""
    if not blank_slices:
        return None
    shown = ", ".join(str(z) for z in blank_slices[:10]) + (" ..." if len(blank_slices) > 10 else "")
    many = len(blank_slices) > 1
    return (f"{len(blank_slices)} slice{'s' if many else ''} of the image {'are' if many else 'is'} blank (one grey value: "
            f"slice{'s' if many else ''} {shown}): {'their' if many else 'its'} predicted labels mean nothing")


class PredictionError(ValueError):
    """The network's output cannot be turned into labels (non-finite probabilities)."""


def tile_starts(length: int, tile: int, step: int, multiple: int = 1) -> list[int]:
    """Start offsets of the fewest tiles of size ``tile`` covering ``length`` with at most ``step`` between starts,
    spread evenly: on multiples of ``multiple`` (``step`` and ``length - tile`` should be multiples of it), the gaps
    differing by at most one ``multiple``.

    Neighbours so overlap by as much as that number of tiles allows: a last tile put at ``length - tile`` after full
    steps overlapped its neighbour by up to a step more while the others kept the least overlap (256-px tiles on a
    512² slice at 0, 208, 256 overlapped by 48 and 208 px, now at 0, 128, 256 by 128 and 128; with :func:`blend_ramp`
    the largest difference from predicting the slice as one tile fell from 0.81 to 0.12 on ISBI,
    benchmarks/bench_tile_seams.py).
    """
    if length <= tile:
        return [0]
    gaps, units = -(-(length - tile) // step), (length - tile) // multiple
    # round(i * units / gaps), halves up, in whole numbers
    return [min(length - tile, (2 * i * units + gaps) // (2 * gaps) * multiple) for i in range(gaps)] + [length - tile]


#: Least weight of a tile's pixel along an axis (so that every covered pixel has some weight).
BLEND_FLOOR = 1e-4


def blend_ramp(size: int, before: int, after: int) -> np.ndarray:
    """(size,) float32 blending weights along one axis of a tile whose neighbours overlap its first ``before`` and last
    ``after`` pixels (0: no neighbour there, e.g. the image's border).

    Over each overlap of ``a`` pixels: no weight (:data:`BLEND_FLOOR`) on its outer ``a // 4``, where the tile's
    zero-padded edge leaves the network the least context, then a raised-cosine ramp up to 1 over the middle, reached
    ``a // 4`` before the overlap ends. The neighbour's ramp over the same pixels is the mirror image: the two add up
    to 1, and each pixel of the overlap is taken mostly from the tile it lies deeper in. Elsewhere 1. (A trained ISBI
    network's output still differs from the whole image's by p99 0.05 at 32-48 px from a tile's edge: overlaps of
    48 px gain nothing measurable over a ramp from the very edge, wider ones most of their seams.)
    """
    window = np.ones(size, np.float64)
    for overlap, flip in ((before, False), (after, True)):
        overlap = min(max(int(overlap), 0), size)
        margin = overlap // 4
        ramp_length = overlap - 2 * margin
        ramp = np.ones(size)
        ramp[:margin] = 0.0
        ramp[margin : margin + ramp_length] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_length) + 0.5) / max(ramp_length, 1))
        window *= ramp[::-1] if flip else ramp
    return np.maximum(window, BLEND_FLOOR).astype(np.float32)


def axis_blend_ramps(starts: Sequence[int], tile: int) -> list[np.ndarray]:
    """:func:`blend_ramp` of each of the tiles of size ``tile`` at ``starts`` (sorted) along an axis: each is
    overlapped by the tile before and the tile after it (the first tile's start and the last tile's end lie on the
    image's border: full weight there)."""
    ramps = []
    for i, start in enumerate(starts):
        before = starts[i - 1] + tile - start if i > 0 else 0
        after = start + tile - starts[i + 1] if i + 1 < len(starts) else 0
        ramps.append(blend_ramp(tile, before, after))
    return ramps


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _dihedral(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(batch, k, axes=(1, 2))
    return out[:, :, ::-1] if flip else out


def _undo_dihedral(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    if flip:
        batch = batch[:, :, ::-1]
    return np.rot90(batch, -k, axes=(1, 2))


#: Network pixels (tiles x tile area x TTA transforms) from which ``predict_events`` compiles the forward
#: pass with XLA by default: 13 % faster per 512² tile on a 2-core CPU, but ~2.4 s to compile (BENCHMARKS.md).
XLA_MIN_PIXELS = 64 * 512 * 512

#: Threads that run the membrane rule of finished slices beside the network (two were no faster on a
#: 2-core CPU: the network keeps both cores busy, BENCHMARKS.md, session 17).
RULE_WORKERS = 1


#: Network passes per tile that test-time augmentation can make (``tta``): 1 = off, 2 = identity and
#: half turn, 4 = the four quarter turns (for models trained upright: :func:`upright_views`, at most 2).
TTA_VIEWS = (1, 2, 4)


def resolve_tta_views(tta: Union[bool, int, str], model: Optional[UNetModel] = None) -> int:
    """Network passes per tile for a ``tta`` value: False -> 1, True -> 4, 1 / 2 / 4 as given, "auto" by hardware.

    ``"auto"`` is True where the network is cheap (:func:`napari_unet.hardware.resolve_tta`). With a ``model`` trained
    upright (:func:`upright_views`), at most the views it has: 2 (the tile and its mirror image) or 1.
    """
    if isinstance(tta, (bool, np.bool_, str)):
        views = 4 if hardware.resolve_tta(tta) else 1
    elif isinstance(tta, (int, np.integer)) and int(tta) in TTA_VIEWS:
        views = int(tta)
    else:
        raise ValueError(f"tta must be True, False, 'auto' or a number of views in {TTA_VIEWS}, got {tta!r}")
    upright = upright_views(model) if model is not None else None
    return views if upright is None else min(views, len(upright))


def upright_views(model: UNetModel) -> Optional[list[tuple[int, bool]]]:
    """The views of a tile that keep it upright, for a model trained without 90-degree rotations (layered labels such
    as OCT layers, which a half turn puts upside down: it halved the mean Dice of OCT models); None for other models.

    The identity, and the left-right mirror image where training flipped patches too.
    """
    config = getattr(model, "train_config", None)
    if config is None or config.augment_rotations is not False:
        return None
    return [(0, False), (0, True)] if config.augment_flips else [(0, False)]


def _transforms(height: int, width: int, views: int, upright: Optional[list] = None) -> list[tuple[int, bool]]:
    """(quarter turns, flip) pairs applied to tiles of (height, width) for ``views`` network passes.

    4: the four quarter turns of square tiles (on ISBI as accurate as all eight rotations and flips at
    half the cost, BENCHMARKS.md); non-square tiles get the shape-keeping identity, half turn and flips.
    2: identity and half turn (on ISBI about two thirds of the gain of 4 for a third of their extra passes).
    ``upright``: the model's :func:`upright_views`, which replace all these.
    """
    if upright is not None:
        return upright[:views]
    if views == 4 and height == width:
        return [(k, False) for k in range(4)]
    return [(0, False), (2, False), (0, True), (2, True)][:views]  # the shape-keeping ones


def _forward_pass(
    model: UNetModel, jit_compile: bool, batch_size: int = 1, mixed_precision: bool = False, folded: bool = True
) -> Callable[[np.ndarray], np.ndarray]:
    """The network as a function of a (B, T, T, C) float32 batch; with ``jit_compile`` an XLA-compiled one.

    Batch normalisation is folded into the convolutions first (:func:`~napari_unet.model.fold_batch_norm`),
    which computes in bfloat16 with ``mixed_precision``; the folded copy is kept with the network for later calls
    with the same settings while its weights stay the same (:func:`weights_checksum`). The compiled function pads
    smaller batches to ``batch_size``, so a stack compiles once. ``folded=False``: the network itself, its own ``predict_on_batch``
    (as compiled: Keras keeps that traced function with the network, so later calls do not trace again).
    """
    if not folded:
        return lambda batch: np.asarray(model.keras_model.predict_on_batch(batch))
    if not folds_to_copy(model.keras_model, model.config, mixed_precision):
        return _compiled_forward(model.keras_model, jit_compile, batch_size)
    key = (model.config, jit_compile, batch_size if jit_compile else None, mixed_precision)
    checksum = weights_checksum(model.keras_model)
    with _FORWARD_CACHE_LOCK:
        cached = _FORWARD_CACHE.get(model.keras_model)
    if cached is not None and cached[:2] == (key, checksum):
        return cached[2]
    with interrupts_deferred(second_at_once=True):  # Ctrl-C or SIGTERM comes after the copy is built
        forward = _compiled_forward(fold_batch_norm(model.keras_model, model.config, mixed_precision), jit_compile, batch_size)
    with _FORWARD_CACHE_LOCK:
        _FORWARD_CACHE[model.keras_model] = (key, checksum, forward)
    return forward


#: The latest inference function of each network (WeakKeyDictionary: forgotten with the network), with the settings
#: and the :func:`weights_checksum` it was built for. Building the folded copy and tracing it took 0.3 s of each call
#: on a 128² image against 0.05 s for the network (BENCHMARKS.md, session 50): scripts predict image by image.
_FORWARD_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FORWARD_CACHE_LOCK = threading.Lock()


def weights_checksum(keras_model) -> int:
    """CRC-32 of the bytes of every weight of ``keras_model`` (trainable or not, e.g. batch-norm statistics).

    Any change of a weight (training, ``set_weights``, ``load_weights``, an edited element) changes it.
    """
    checksum = 0
    for variable in keras_model.weights:
        checksum = zlib.crc32(np.ascontiguousarray(variable.numpy()), checksum)
    return checksum


def _compiled_forward(keras_model, jit_compile: bool, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """``keras_model`` as a function of a (B, T, T, C) float32 batch (see :func:`_forward_pass`)."""
    if not jit_compile:
        keras_model = without_xla(keras_model)
        return lambda batch: np.asarray(keras_model.predict_on_batch(batch))
    import tensorflow as tf

    compiled = tf.function(lambda batch: keras_model(batch, training=False), jit_compile=True, reduce_retracing=True, autograph=False)

    def run(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], batch.dtype)])
        return compiled(tf.constant(batch)).numpy()[:n]

    return run


def without_xla(keras_model):
    """``keras_model``, or a model of the same layers (weights shared, nothing copied; one a network, kept while it
    lives), whose ``predict_on_batch`` runs without XLA: Keras's own "auto" compiles with XLA wherever TensorFlow
    lists a GPU, which ``jit_compile=False`` (``--no-xla``: an XLA that fails on the machine) must not do. The network's
    layers and weights are not changed (reading its ``jit_compile`` lets Keras record the choice it makes anyway)."""
    if not getattr(keras_model, "jit_compile", False):
        return keras_model
    with _FORWARD_CACHE_LOCK:
        view = _XLA_FREE_VIEWS.get(keras_model)
    if view is None:
        import keras

        view = keras.Model(keras_model.inputs, keras_model.outputs, name=keras_model.name)
        view.jit_compile = False
        with _FORWARD_CACHE_LOCK:
            view = _XLA_FREE_VIEWS.setdefault(keras_model, view)
    return view


_XLA_FREE_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _run_model(
    model: UNetModel, tiles: np.ndarray, views: int, forward: Callable[[np.ndarray], np.ndarray], batch_size: int
) -> np.ndarray:
    """(B, T, T, n_classes) float32 class probabilities for (B, T, T, C) float32 tiles (``forward``: the network).

    The transformed copies of the tiles go through the network in batches of ``batch_size`` images.
    """
    transforms = _transforms(tiles.shape[1], tiles.shape[2], views, upright_views(model))
    batch = np.concatenate([_dihedral(tiles, k, flip) for k, flip in transforms])
    outputs = []
    for i in range(0, len(batch), batch_size):
        with interrupts_deferred(second_at_once=True):  # Ctrl-C or SIGTERM comes after the network call (the first traces it)
            outputs.append(forward(np.ascontiguousarray(batch[i : i + batch_size])))
    out = np.concatenate(outputs).astype(np.float32, copy=False)
    n = len(tiles)
    probs = sum(_undo_dihedral(out[i * n : (i + 1) * n], k, flip) for i, (k, flip) in enumerate(transforms))
    probs = probs / len(transforms)
    if model.config.head == "sigmoid":
        probs = np.concatenate([1.0 - probs, probs], axis=-1)
    return probs


#: Gap closing used when ``close_boundaries=True`` and the model's own rule does not close gaps: a tuned rule's
#: closing at merge level 0.6.
FORCED_CLOSING = candidate_closings((0.6,))[0]


#: Highest merge level of a rule applied to test-time-augmented probabilities. Training chooses the rule on plain
#: probabilities; on the averaged ones the level 0.7 that long budgets may choose merged real cells, and 0.65
#: scored at least as well as 0.6 on all nine Zen 5 networks measured (six in session 33, three fresh 30-minute
#: networks in session 34; BENCHMARKS.md, "Session 34").
TTA_MAX_MERGE_LEVEL = 0.65


def effective_boundary_rule(model: UNetModel, close_boundaries: Optional[bool] = None, tta_views: int = 1) -> Optional[dict]:
    """The keyword arguments of :func:`boundary_mask` that prediction applies to ``model``'s membrane probability,
    or None for argmax labels. ``tta_views`` > 1: probabilities averaged over that many views (merge level capped
    at :data:`TTA_MAX_MERGE_LEVEL`)."""
    if close_boundaries is False or model.boundary_value not in model.class_values:
        return None
    rule = model.boundary_rule
    closes_gaps = rule is not None and (rule.get("seed_level") is not None or rule.get("merge_below") is not None)
    if close_boundaries and not closes_gaps:
        rule = {"threshold": (rule or {}).get("threshold", 0.5), **FORCED_CLOSING}
    if rule is not None and tta_views > 1 and (rule.get("merge_below") or 0) > TTA_MAX_MERGE_LEVEL:
        rule = {**rule, "merge_below": TTA_MAX_MERGE_LEVEL}
    return rule


def row_bands(height: int) -> list[tuple[int, int, int, int]]:
    """The bands of rows :func:`predict_events` predicts a slice of ``height`` rows in: ``(core start, core stop, window
    start, window stop)`` of the membrane rule's windows (:func:`napari_unet.postprocess.rule_windows`), each band's core
    rows written at once into ``labels_out`` / ``probabilities_out``, in order; one band of all rows for a slice that
    fits one window. Layered classes (OCT), ordered down whole columns, go in one band of all rows whatever the height."""
    return rule_windows(height)


def store_chunk_rows(height: int) -> int:
    """Rows per chunk of a store that :func:`predict_events` fills band by band (:func:`row_bands`) for slices of
    ``height`` rows: the shortest band's, so each band's rows cover whole chunks and at most a few rows (fewer than
    there are bands) of the next, and no chunk is written twice when those rows wait for the next band (the bands'
    cores are equal to a row: ``height`` rows in ``n`` bands start at ``round(k * height / n)``); ``height`` for a slice
    of one band (one chunk per slice)."""
    return min(stop - start for start, stop, _top, _bottom in row_bands(height))


def _finished_unless_stopped(future: Future, stop: Optional[Callable[[], bool]]) -> bool:
    """Wait for ``future`` (its error raised here); False as soon as ``stop()`` is True (asked 5 times a second)."""
    while True:
        try:
            future.result(timeout=0.2)
            return True
        except TimeoutError:
            if stop is not None and stop():
                return False


def _store_boundary_labels(labels: np.ndarray, band: tuple, membrane: Future, boundary_index: int, class_values) -> None:
    """Labels of the core rows of ``band`` = (plane, core start, core stop, window start) from the rule's window mask."""
    i, start, stop, top = band
    indices = np.where(membrane.result()[start - top : stop - top], boundary_index, 1 - boundary_index)
    labels[i, start:stop] = from_indices(indices, class_values, labels.dtype)


class _BlendedRows:
    """The blended class probabilities of one network plane, produced a few rows at a time: tiles run in batches
    in row-major order, and the rows no later tile covers are final. Only the rows of unfinished tiles and the final
    rows not yet forgotten are held, so memory follows the rows of a band, not the plane."""

    def __init__(self, plane: np.ndarray, starts: list, tile: tuple, ramps: tuple, net_shape: tuple, n_classes: int,
                 run: Callable[[np.ndarray], np.ndarray]):
        self.plane, self.starts, self.run = plane, starts, run
        (self.tile_y, self.tile_x), (self.ramps_y, self.ramps_x) = tile, ramps
        self.net_h, self.net_w = net_shape
        self.next_tile = 0
        self.accumulated = np.zeros((0, plane.shape[1], n_classes), np.float32)  # rows from self.top on
        self.weights = np.zeros((0, plane.shape[1], 1), np.float32)
        self.top = 0
        self.rows = np.zeros((0, self.net_w, n_classes), np.float32)  # final rows from self.first on
        self.first = 0

    @property
    def final_stop(self) -> int:
        """Network rows before this one are final."""
        return self.first + len(self.rows)

    def run_batch(self, count: int) -> int:
        """Run the next ``count`` tiles through the network and blend them in; returns the number of tiles run."""
        chunk = self.starts[self.next_tile : self.next_tile + count]
        out = self.run(np.stack([self.plane[y : y + self.tile_y, x : x + self.tile_x] for y, x in chunk]))
        grow = max(y for y, _ in chunk) + self.tile_y - self.top - len(self.accumulated)
        if grow > 0:
            self.accumulated = np.concatenate([self.accumulated, np.zeros((grow, *self.accumulated.shape[1:]), np.float32)])
            self.weights = np.concatenate([self.weights, np.zeros((grow, *self.weights.shape[1:]), np.float32)])
        for (y, x), tile_probs in zip(chunk, out):
            window = np.outer(self.ramps_y[y], self.ramps_x[x])[..., None]
            y -= self.top
            self.accumulated[y : y + self.tile_y, x : x + self.tile_x] += tile_probs * window
            self.weights[y : y + self.tile_y, x : x + self.tile_x] += window
        self.next_tile += len(chunk)
        final = self.net_h if self.next_tile == len(self.starts) else min(self.starts[self.next_tile][0], self.net_h)
        if final > self.top:
            done = final - self.top
            blended = np.divide(self.accumulated[:done, : self.net_w], self.weights[:done, : self.net_w])
            self.rows = blended if not len(self.rows) else np.concatenate([self.rows, blended])
            self.accumulated, self.weights = self.accumulated[done:].copy(), self.weights[done:].copy()
            self.top = final
        return len(chunk)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Final rows ``start:stop`` (network rows), (rows, net_w, n_classes) float32."""
        return self.rows[start - self.first : stop - self.first]

    def forget_before(self, row: int) -> None:
        if row > self.first:
            self.rows = self.rows[row - self.first :].copy()
            self.first = row


def predict_events(
    model: UNetModel,
    image,
    tile_size: int = 512,
    overlap: int = 48,
    batch_size: int = 2,
    tta: Union[bool, int, str] = "auto",
    return_probabilities: bool = True,
    close_boundaries: Optional[bool] = None,
    stop: Optional[Callable[[], bool]] = None,
    jit_compile: Optional[bool] = None,
    slices: Optional[Sequence[int]] = None,
    mixed_precision: Optional[bool] = None,
    folded: bool = True,
    labels_out: Optional[np.ndarray] = None,
    probabilities_out: Optional[np.ndarray] = None,
    normalized: bool = False,
    kept=None,
) -> Iterator[Union[PredictionProgress, Prediction]]:
    """Predict ``image`` ((Y, X) or (Z, Y, X), any real dtype, numpy or dask) tile by tile with ``model`` (a
    :class:`UNetModel` or the path of its file).

    Yields :class:`PredictionProgress` after each batch of tiles and finally one :class:`Prediction`.
    Tiles of ``tile_size`` (network pixels, rounded up to the network's size multiple; one tile if the image is no
    larger) overlap their neighbours by at least ``overlap`` pixels, an ``overlap`` above a quarter of the tile being
    cut to a quarter (which bounds the extra tiles). The tiles of an axis are spread evenly (:func:`tile_starts`), so
    neighbours often overlap by more; the tiles covering a pixel are blended with weights that follow their actual
    overlaps (:func:`blend_ramp`): a tile's outer quarter of each overlap, where its zero-padded edge leaves the network
    less context, gets no weight, the image's own border full weight;
    memory for the network stays bounded by ``batch_size`` images per call (tiles or their TTA copies).
    ``stop()`` returning True ends early with ``Prediction.stopped`` set (rows not reached, and those of up to two bands
    whose membrane rule was still running, hold 0, a class value or not; a slice taller than a rule window,
    :func:`napari_unet.postprocess.rule_windows`, goes band by band of rows, which bounds its memory; in ``labels_out`` / ``probabilities_out`` they keep what those
    arrays held).
    For a model with a thin boundary class (``model.boundary_value``, e.g. EM membranes) the labels
    follow ``model.boundary_rule``, the threshold / watershed closing / region merging chosen on
    validation slices after training (:mod:`napari_unet.postprocess`). ``close_boundaries=True``
    forces closing of membrane gaps (watershed regions merged across faint boundaries), ``False``
    gives plain argmax labels. A model of layered classes (``model.layer_order``, OCT) gets, unless ``False``, the most
    likely labelling that keeps its layers in order down each column (:func:`napari_unet.postprocess.order_layers`),
    and ``kept`` (int class indices of the image's shape, or one plane per entry of ``slices``; negative = free; None: all
    free) the pixels whose class a user gave (corrections put back over the prediction): the ordered labelling keeps them
    where they are in order. ``tta``: test-time augmentation, the mean over the four quarter turns of
    each tile (True or 4) or over the tile and its half turn (2, half the network time of 4; see
    :func:`_transforms`); a model trained without rotations gets at most its :func:`upright_views` (the tile and its
    mirror image, or the tile alone if it was trained without flips); ``"auto"`` (default) is True where the network is cheap: on a GPU, a CPU
    with AMX, or one whose bfloat16 convolutions reach :data:`napari_unet.hardware.FAST_CONV_GFLOPS`
    (:func:`napari_unet.hardware.resolve_tta`). ``mixed_precision``: run the network in bfloat16; None (default) does so
    on CPUs with bfloat16 instructions (:mod:`napari_unet.hardware`). ``jit_compile``: XLA-compile the
    network; None (default) does so for inputs of at least :data:`XLA_MIN_PIXELS` network pixels, where the
    faster tiles repay the compile time, on float32 CPUs without AVX-512.
    ``slices``: predict only these slices of a (Z, Y, X) stack (the result has one plane per entry); a
    model with ``context_slices`` still sees their neighbours in the whole stack.
    ``folded=False`` runs ``model.keras_model`` as it is, in its own precision and compilation, instead of
    an inference copy with batch norm folded in (validation while training: no copy built and traced each epoch).
    ``labels_out`` / ``probabilities_out``: arrays of the result's shapes (dtype :func:`labels_dtype` / float32) to
    write into instead of new ones, e.g. ``np.memmap`` files for stacks larger than memory; the
    :class:`Prediction` then holds them. ``probabilities_out`` implies ``return_probabilities``.
    ``normalized=True``: ``image`` is float32 already normalised as the model normalises it (:func:`napari_unet.data.normalize`
    of whole planes with ``model.percentiles`` and its local contrast), e.g. validation windows cut from whole slices.
    """
    model = as_model(model)
    check_is_array(image)
    if not hasattr(image, "shape"):  # nested lists
        image = np.asarray(image)
    shape = tuple(np.shape(image))
    colour = bool(shape) and shape[-1] in (3, 4)  # (Y, X, 3|4) would otherwise pass for a stack of narrow slices
    channel = len(shape) == 3 and shape[-1] == 1 and min(shape[:2]) >= MIN_IMAGE_SIZE  # (Y, X, 1): "too small" before
    if len(shape) not in (2, 3) or (len(shape) == 3 and (colour or channel)):
        raise InputError(
            f"image has shape {shape}; the model expects one-channel 2-D images or (Z, Y, X) stacks"
            + (" (if it is an RGB image with colours last, convert it to grayscale)" if colour else "")
            + (" (a channel axis last: give image[..., 0])" if channel else "")
        )
    if model.config.input_channels != 1:
        raise InputError(f"the model expects {model.config.input_channels} channels; napari-unet images have one")
    if min(shape[-2:]) < MIN_IMAGE_SIZE:  # said of the whole image, not of the slice that would fail (a (4, 1, 128) stack)
        raise InputError(f"image of shape {shape} is too small; need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (tile_size, batch_size, overlap)):
        raise ValueError(f"tile_size, batch_size and overlap must be whole numbers, "
                         f"got {tile_size!r}, {batch_size!r}, {overlap!r}")
    if tile_size < 1 or batch_size < 1 or overlap < 0:
        raise ValueError(f"tile_size and batch_size must be at least 1 and overlap at least 0, got {tile_size}, {batch_size}, {overlap}")
    if normalized and np.dtype(image.dtype) != np.float32:  # a raw image would be predicted without its normalisation
        raise ValueError(f"normalized=True takes float32 planes normalised as the model does, got dtype {image.dtype}")
    n_slices = 1 if len(shape) == 2 else shape[0]
    try:
        selected = list(range(n_slices)) if slices is None else [operator.index(z) for z in slices]
    except TypeError:
        raise InputError(f"slices {list(slices)} must be whole numbers") from None
    if any(not 0 <= z < n_slices for z in selected):
        raise InputError(f"slices {selected} are not all within the stack's {n_slices} slices")
    planes_shape = (len(selected), *shape[-2:]) if slices is not None and len(shape) == 3 else None
    if kept is not None and not hasattr(kept, "shape"):  # nested lists
        kept = np.asarray(kept)
    if kept is not None and (tuple(kept.shape) not in (shape, planes_shape) or np.dtype(kept.dtype).kind not in "iu"):
        raise ValueError(f"kept must be integer class indices of the image's shape {shape} (or one plane per entry of "
                         f"slices), got {np.dtype(kept.dtype)} {tuple(kept.shape)}")
    context = model.config.context_slices
    height, width = shape[-2:]
    factor = model.config.downscale
    net_h, net_w = -(-height // factor), -(-width // factor)  # the network's view of a slice
    multiple = model.config.size_multiple
    tile_y = min(_round_up(tile_size, multiple), _round_up(net_h, multiple))
    tile_x = min(_round_up(tile_size, multiple), _round_up(net_w, multiple))
    overlap = min(overlap, tile_y // 4, tile_x // 4)
    # Every tile starts on a multiple of the network's pooling grid (the plane is padded to whole multiples and
    # the steps are multiples): a tile on a shifted grid is a different network view, and blending it changed
    # labels far from the seams.
    padded_h, padded_w = max(_round_up(net_h, multiple), tile_y), max(_round_up(net_w, multiple), tile_x)
    step_y = max(multiple, (tile_y - overlap) // multiple * multiple)
    step_x = max(multiple, (tile_x - overlap) // multiple * multiple)
    starts_y, starts_x = tile_starts(padded_h, tile_y, step_y, multiple), tile_starts(padded_w, tile_x, step_x, multiple)
    starts = [(y, x) for y in starts_y for x in starts_x]
    # each tile's weights follow its actual overlaps (tile_starts spreads the tiles, so they are often wider than
    # `overlap`): a tile's edge pixels, where its zero padding shows, count only where no other tile covers them
    ramps_y = dict(zip(starts_y, axis_blend_ramps(starts_y, tile_y)))
    ramps_x = dict(zip(starts_x, axis_blend_ramps(starts_x, tile_x)))
    n_classes = model.config.n_classes
    total = len(selected) * len(starts)
    if mixed_precision is None:
        mixed_precision = hardware.resolve_mixed_precision(hardware.AUTO)
    views = resolve_tta_views(tta, model)
    n_transforms = len(_transforms(tile_y, tile_x, views, upright_views(model)))
    if jit_compile is None:
        large = total * tile_y * tile_x * n_transforms >= XLA_MIN_PIXELS
        jit_compile = large and hardware.resolve_jit_compile(hardware.AUTO, mixed_precision)
    # batch_size bounds the images per network call; test-time augmentation's copies count
    tiles_per_batch = max(1, batch_size // n_transforms)
    network_batch = min(batch_size, len(starts) * n_transforms)
    forward = _forward_pass(model, jit_compile, network_batch, mixed_precision, folded)
    rule = effective_boundary_rule(model, close_boundaries, n_transforms)
    boundary_index = model.class_values.index(model.boundary_value) if rule is not None else None
    layers = None  # layered classes (OCT): the labelling that keeps them in order down each column
    if getattr(model, "layer_order", None) and close_boundaries is not False and boundary_index is None:
        layers = [model.class_values.index(v) for v in model.layer_order]

    label_dtype = labels_dtype(model)
    labels_shape = (len(selected), height, width)
    labels = _output_array(labels_out, labels_shape, label_dtype, len(shape) == 2, "labels_out")
    probabilities = None
    if return_probabilities or probabilities_out is not None:
        probabilities = _output_array(probabilities_out, (*labels_shape, n_classes), np.float32, len(shape) == 2, "probabilities_out")

    def network_plane(z: int) -> np.ndarray:
        """Slice z normalised, downscaled and padded to (padded_h, padded_w) float32."""
        # a reader's error (a damaged page or chunk of a lazily read file) names its slice, as training's reads do
        plane = read_plane(image, z)
        try:
            plane = check_image(plane)[0]
        except InputError as err:  # found when the slice is reached: an hour into a large stack, say which one
            raise InputError(f"slice {z}: {err}" if len(shape) == 3 else str(err)) from None
        if z in selected_set and plane.size and plane.min() == plane.max():  # a blank frame (Duke stacks hold some)
            blank.add(z)
        if not normalized:
            plane = normalize(plane, model.percentiles, model.config.local_contrast_sigma)
        plane = downscale_image(plane, factor)
        if padded_h > net_h or padded_w > net_w:
            mode = "reflect" if min(net_h, net_w) > 1 else "edge"
            plane = np.pad(plane, ((0, padded_h - net_h), (0, padded_w - net_w)), mode=mode)
        return plane

    # A slice goes band by band of rows, as the membrane rule splits it (rule_windows: cores with margins), so the
    # network's blended probabilities and their weights are held for a band's window, not the slice: 12 bytes a pixel of a
    # large section less (20 at downscale > 1). Layered classes are ordered down whole columns: one band.
    if layers is not None:
        bands = [(0, height, 0, height)]
    else:
        bands = [band if boundary_index is not None else (*band[:2], *band[:2]) for band in row_bands(height)]

    def network_rows(top: int, bottom: int) -> tuple[int, int]:
        """The network rows the image rows ``top:bottom`` are upscaled from, with one more each side for the bilinear
        interpolation (none at factor 1)."""
        extra = 1 if factor > 1 else 0
        return max(top // factor - extra, 0), min(-(-bottom // factor) + extra, net_h)

    start_time = time.perf_counter()
    done = 0
    stopped = False
    selected_set, blank = set(selected), set()
    # The membrane rule of a band runs in a thread while the network (which releases the GIL) predicts the next
    # band or slice; at most two bands wait, so memory stays bounded.
    pool = ThreadPoolExecutor(max_workers=RULE_WORKERS, thread_name_prefix="napari-unet-boundary-rule")
    pending: list[tuple[tuple, Future]] = []  # ((plane, core start, core stop, window start), rule mask)
    prepared: dict[int, np.ndarray] = {}  # the network planes of the current slice and its context
    try:
        for i, z in enumerate(selected):
            planes = neighbour_slices(z, n_slices, context)
            prepared = {k: prepared[k] if k in prepared else network_plane(k) for k in planes}
            # (padded_h, padded_w, network channels); one channel is a view (a copy was 4 bytes a pixel more)
            plane = prepared[z][..., None] if len(planes) == 1 else np.stack([prepared[k] for k in planes], axis=-1)
            rows = _BlendedRows(plane, starts, (tile_y, tile_x), (ramps_y, ramps_x), (net_h, net_w), n_classes,
                                lambda tiles: _run_model(model, tiles, views, forward, network_batch))
            for band, (start, stop_row, top, bottom) in enumerate(bands):
                first_row, end_row = network_rows(top, bottom)
                while rows.final_stop < end_row:
                    if stop is not None and stop():
                        stopped = True
                        break
                    done += rows.run_batch(tiles_per_batch)
                    elapsed = time.perf_counter() - start_time
                    yield PredictionProgress(done, total, elapsed, elapsed / done * (total - done))
                if stopped:
                    break
                upscaled = upscale_probabilities(rows.take(first_row, end_row), factor, ((end_row - first_row) * factor, width))
                window_probs = upscaled[top - first_row * factor : bottom - first_row * factor]
                if band + 1 < len(bands):
                    rows.forget_before(network_rows(*bands[band + 1][2:])[0])
                if not np.isfinite(window_probs).all():
                    raise PredictionError(f"the network gave NaN or Inf probabilities on slice {z}: its weights are damaged "
                                          "(NaN or Inf); retrain it or load an earlier model file")
                core = window_probs[start - top : stop_row - top]
                if layers is not None:  # one band: the whole slice
                    kept_here = None if kept is None else np.asarray(kept if len(shape) == 2 else kept[z] if kept.shape == shape else kept[i])
                    labels[i] = from_indices(order_layers(core, layers, kept_here), model.class_values, label_dtype)
                elif boundary_index is None:
                    labels[i, start:stop_row] = from_indices(np.argmax(core, axis=-1), model.class_values, label_dtype)
                else:  # boundary classes exist in two-class models only
                    while len(pending) >= 2 and not stopped:
                        stopped = not _finished_unless_stopped(pending[0][1], stop)
                        if not stopped:
                            _store_boundary_labels(labels, *pending.pop(0), boundary_index, model.class_values)
                    if stopped:
                        break
                    membrane = np.ascontiguousarray(window_probs[..., boundary_index])
                    pending.append(((i, start, stop_row, top), pool.submit(tiled_boundary_mask, membrane, **rule)))
                if probabilities is not None:
                    probabilities[i, start:stop_row] = core
            if stopped:
                break
        # stopped: the rules still running are not waited for (7 s a 2048² slice; Stop ends "at the next tile")
        for band, future in [] if stopped else pending:
            stopped = not _finished_unless_stopped(future, stop)
            if stopped:
                break
            _store_boundary_labels(labels, band, future, boundary_index, model.class_values)
    finally:  # also when the consumer closes this generator early
        pool.shutdown(wait=False, cancel_futures=True)
    if len(shape) == 2:
        labels = labels[0]
        probabilities = None if probabilities is None else probabilities[0]
    labels = labels if labels_out is None else labels_out
    probabilities = probabilities if probabilities_out is None else probabilities_out
    yield Prediction(labels=labels, probabilities=probabilities, stopped=stopped, blank_slices=tuple(sorted(blank)))


def labels_dtype(model: UNetModel) -> np.dtype:
    """The dtype of the labels :func:`predict_events` returns: the smallest holding the model's class values."""
    return labels_dtype_for(model.class_values)


def labels_dtype_for(class_values: Sequence[int]) -> np.dtype:
    """The smallest dtype holding ``class_values`` (that of predicted labels)."""
    return smallest_dtype(list(class_values))


def _output_array(out, shape: tuple, dtype, is_2d: bool, name: str) -> np.ndarray:
    """``out`` viewed as ``shape`` (a 2-D result gets a leading axis of 1), or new zeros when ``out`` is None."""
    if out is None:
        return np.zeros(shape, dtype)
    expected = shape[1:] if is_2d else shape
    if tuple(out.shape) != expected or out.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have shape {expected} and dtype {np.dtype(dtype)}, got {tuple(out.shape)} {out.dtype}")
    if not getattr(getattr(out, "flags", None), "writeable", True):  # found only after the network had run
        raise ValueError(f"{name} is read-only; give a writeable array (e.g. np.memmap mode 'w+' or 'r+')")
    return out[np.newaxis] if is_2d else out


def check_layer_memory(model: UNetModel, shape: tuple, name: str, probabilities: bool, instances: bool) -> Optional[str]:
    """The memory policy of reading data (:mod:`napari_unet.hardware`) for the in-memory outputs of predicting an image
    of ``shape`` (labels; ``probabilities``, float32 per class; cell ``instances``, int32), twice over for the viewer's
    copies, with the undo record of a layer written again (old and new labels): :class:`InputError` beyond the
    machine's (or container's) memory and swap (better a message than a viewer the system kills with the user's
    layers); beyond :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory available now, the warning for the caller
    to show (the widget calls this on napari's thread, where a Python warning may go to the terminal), else None."""
    labels = labels_dtype(model).itemsize + (4 if instances else 0)
    per_pixel = labels + (4 * model.config.n_classes if probabilities else 0)
    needed = int(np.prod(shape)) * (2 * per_pixel + 2 * labels)  # and a rewrite's undo record: old and new values
    what = f"predicting {name!r} {tuple(shape)} into output layers (with the viewer's copies and an undo record)"
    advice = "leave out the probabilities or cell instances, or use `napari-unet predict`, which streams a stack of any size to disk"
    excess = hardware.memory_excess(needed)
    if excess is not None:
        raise InputError(f"{what} {excess}; {advice}")
    shortfall = hardware.memory_shortfall(needed)
    if shortfall is None:
        return None
    return f"{what} {shortfall}; predicting anyway (close other programs if the system slows down, or {advice})"


def intensity_note(image, model) -> Optional[str]:
    """A warning when ``image`` ((Y, X) or (Z, Y, X), numpy or dask; up to 8 slices are read) has intensities unlike
    ``model``'s training images, else None. ``model``: a :class:`UNetModel` or anything with its ``intensity_profile``,
    ``intensity_spread`` and ``percentiles`` (:class:`napari_unet.chunked.ModelSource`).

    Unlike means :func:`napari_unet.data.profile_distance` above :data:`~napari_unet.data.PROFILE_SHIFT` plus the spread
    of the training slices: e.g. an inverted, gamma- or log-scaled image. The percentile normalisation absorbs linear
    rescaling only, so the network would see another kind of image, and its labels could be wrong without any error.
    None for older model files (no profile) and for images the profile cannot describe (NaN, empty: refused later,
    with their own message): the note never fails a prediction.
    """
    shape = tuple(np.shape(image))
    too_small = len(shape) < 2 or min(shape[-2:]) < MIN_IMAGE_SIZE
    reference, spread = getattr(model, "profile_above_floor", None), getattr(model, "spread_above_floor", 0.0)
    above_floor = reference is not None  # files before session 51: the profile of all pixels
    if not above_floor:
        reference, spread = model.intensity_profile, model.intensity_spread
    if reference is None or np.dtype(image.dtype).kind not in "biuf" or too_small:  # refused later
        return None
    try:
        profile = intensity_profile(image, model.percentiles, above_floor=above_floor)
    except InputError:
        return None
    distance, allowed = profile_distance(profile, reference), PROFILE_SHIFT + spread
    if not distance > allowed:  # also NaN
        return None
    # the level where they differ most: an OCT scan's median above its black background says little (0.01 of the range)
    level = int(np.argmax(np.abs(np.asarray(profile) - np.asarray(reference))))  # (levels 5, 10, ... 95: all "th")
    within = f", the training slices within {spread:.2f}" if spread >= 0.005 else ""  # (one training slice: none)
    return (
        f"the image's intensities are unlike the training images' (its {PROFILE_LEVELS[level]}th percentile grey "
        f"lies at {profile[level]:.2f} of its range, the training images' at {reference[level]:.2f}; profile distance "
        f"{distance:.2f}{within}): if it is inverted or on another brightness scale (log, dB, gamma), convert it to look "
        "like the training images; else check the predicted labels carefully"
    )


#: How many times larger or smaller than the training image's an image's pixels may be along an axis before
#: :func:`pixel_size_note` speaks: the network learned structures (layer thicknesses, cell sizes) in pixels.
PIXEL_SIZE_RATIO = 1.25


def pixel_size_note(model, pixel_size) -> Optional[str]:
    """A warning when ``pixel_size`` ([Y, X] µm of the image's pixels, None if unknown) differs from ``model``'s training
    pixel size by more than :data:`PIXEL_SIZE_RATIO` along an axis (a scan from another device), else None; also None
    when either is unknown. ``model``: a :class:`UNetModel` or anything with its ``pixel_size``
    (:class:`napari_unet.chunked.ModelSource`). Prediction still runs: the note never fails it.
    """
    trained = getattr(model, "pixel_size", None)
    if trained is None or pixel_size is None:
        return None
    ratios = [float(size) / float(base) for size, base in zip(pixel_size, trained)]
    differing = [axis for axis, ratio in zip("YX", ratios) if not 1 / PIXEL_SIZE_RATIO <= ratio <= PIXEL_SIZE_RATIO]
    if not differing:
        return None
    sizes = (f"the image's pixels are {pixel_size[0]:.4g} x {pixel_size[1]:.4g} µm (Y x X), the model was trained on "
             f"pixels of {trained[0]:.4g} x {trained[1]:.4g} µm")
    factor = _unit_factor(ratios)
    if factor is not None:  # circular-scan.tif's tag says inches for mm: its own training image was told to zoom 25.4x
        return (f"{sizes}: {factor:g} times {'larger' if ratios[0] > 1 else 'smaller'} on both axes, a ratio of length "
                "units, so the image's pixel size is probably in the wrong unit; if so, give the image its right pixel "
                "size and predict again, else resample it to the training pixel size")
    return (
        f"{sizes}: along {' and '.join(differing)} the network sees structures at another "
        f"size than it learned, and its labels can be wrong without any error. Resample the image to the training pixel "
        f"size (zoom Y by {ratios[0]:.3g} and X by {ratios[1]:.3g}) and predict that"
    )


#: Ratios of length units (inch : mm; mm : µm and µm : nm) that a wrong unit gives both axes; 10 and 2.54 (cm : mm,
#: inch : cm) are left out: an objective or a scanner setting can give them.
UNIT_FACTORS = (25.4, 1000.0)


def _unit_factor(ratios) -> Optional[float]:
    """The factor of :data:`UNIT_FACTORS` that both ``ratios`` (image / training pixel size per axis) equal, or its
    inverse, within 1 %; None if none does."""
    for factor in UNIT_FACTORS:
        for target in (factor, 1 / factor):
            if all(abs(ratio / target - 1) <= 0.01 for ratio in ratios):
                return factor
    return None


def predict(model: UNetModel, image, **kwargs) -> Prediction:
    """Drain :func:`predict_events` and return the :class:`Prediction` (same keyword arguments)."""
    result = None
    for event in predict_events(model, image, **kwargs):
        result = event
    return result


@dataclass(frozen=True)
class Agreement:
    """How many of ``pixels`` given pixels a model labels with their given values: the share in its predicted labels
    (``labels``, its membrane rule applied) and in its network's most probable class (``network``)."""

    pixels: int
    labels: float
    network: float


def agreement(model: UNetModel, image, values, where, slices: Optional[Sequence[int]] = None, stop=None) -> Optional[Agreement]:
    """Share of the ``where`` pixels (bool) that ``model`` labels with their ``values`` (class values), e.g. how much of
    a user's corrections a Retrain learned. ``image``: (Y, X) or (Z, Y, X); ``values`` and ``where``: its shape, or
    (len(slices), Y, X) for the ``slices`` of a stack given (neighbouring slices stay at hand for context models).
    Only slices holding ``where`` pixels are predicted, without test-time augmentation (memory: their probabilities).
    None when ``where`` is empty or ``stop()`` ended the prediction."""
    found = agreement_labels(model, image, values, where, slices, stop)
    return None if found is None else found[0]


def agreement_labels(model: UNetModel, image, values, where, slices: Optional[Sequence[int]] = None,
                     stop=None) -> Optional[tuple]:
    """:func:`agreement` (same arguments and checks) with the prediction it made: ``(agreement, held, labels)``, the
    indices of the planes of ``where`` that hold pixels (the ones predicted) and their (len(held), Y, X) labels.
    None when ``where`` is empty or ``stop()`` ended the prediction."""
    flat = np.ndim(where) == 2
    where_stack, value_stack = as_stack(np.asarray(where, bool), "where"), as_stack(values, "values")
    planes = list(range(len(where_stack))) if slices is None else [int(z) for z in slices]
    if len(planes) != len(where_stack):
        raise ValueError(f"{len(planes)} slices given for {len(where_stack)} planes of values")
    plane_shape = tuple(np.shape(image))[-2:]
    if value_stack.shape != where_stack.shape or where_stack.shape[1:] != plane_shape or (flat and np.ndim(image) != 2):
        raise ValueError(f"values {tuple(np.shape(values))} and where {tuple(np.shape(where))} must have the image's shape "
                         f"{tuple(np.shape(image))}, or ({len(planes)}, Y, X) for the slices given")
    held = [i for i in range(len(where_stack)) if where_stack[i].any()]
    if not held:
        return None
    result = predict(model, image, tta=False, stop=stop, **({} if flat else {"slices": [planes[i] for i in held]}))
    if result.stopped:
        return None
    labels = as_stack(result.labels)
    network = as_stack(from_indices(result.probabilities.argmax(axis=-1), model.class_values))
    mask = where_stack[held]
    given = value_stack[held][mask]
    learned = Agreement(int(mask.sum()), float(np.mean(labels[mask] == given)), float(np.mean(network[mask] == given)))
    return learned, held, labels


__all__ = [
    "PredictionProgress",
    "Prediction",
    "blank_slices_note",
    "PredictionError",
    "tile_starts",
    "without_xla",
    "BLEND_FLOOR",
    "blend_ramp",
    "axis_blend_ramps",
    "XLA_MIN_PIXELS",
    "RULE_WORKERS",
    "TTA_VIEWS",
    "resolve_tta_views",
    "upright_views",
    "weights_checksum",
    "FORCED_CLOSING",
    "TTA_MAX_MERGE_LEVEL",
    "effective_boundary_rule",
    "row_bands",
    "store_chunk_rows",
    "predict_events",
    "labels_dtype",
    "labels_dtype_for",
    "check_layer_memory",
    "intensity_note",
    "PIXEL_SIZE_RATIO",
    "UNIT_FACTORS",
    "pixel_size_note",
    "predict",
    "Agreement",
    "agreement",
    "agreement_labels",
]
