"""Prediction of chunked stacks (dask arrays, zarr stores) in one process or across a dask cluster.

Every task predicts whole (Y, X) slices, because the membrane rule needs a slice entire; a model with
``context_slices`` gets its neighbouring slices in the task too, so the result equals :func:`~napari_unet.predict.predict`'s.
Tasks may run in other processes or on other machines: the model travels as its file (a path every worker
can read, or the file's bytes for a model in memory) and is loaded once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import numbers
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .data import InputError
from .predict import PredictionProgress

#: (model key, mixed precision) -> UNetModel whose network has batch norm folded in; the last few only
_LOADED: "OrderedDict" = OrderedDict()
_LOADED_MAX = 2
_LOAD_LOCK = threading.Lock()
#: One network call runs at a time per process: TensorFlow already spreads one over every core. The rest of a
#: task (reading, normalising, the membrane rule, writing) runs beside the network calls of other tasks.
_NETWORK_LOCK = threading.Lock()
_COUNTER = itertools.count()
#: Default tasks take a dask image's chunks along Z, cut to at most this much input; other images this many slices
#: (also the command line's for TIFF images, whose lazy chunks are single pages).
MAX_TASK_INPUT_BYTES = 2**28
DEFAULT_SLICES_PER_CHUNK = 8
#: Seconds a stopped run waits for the tasks running on a cluster to stop writing (and for a worker's "auto" choice).
STOP_TIMEOUT = 300
#: Chunks computed at once without a cluster: while one chunk's last membrane rule runs, the next chunk's network does.
LOCAL_CHUNKS_IN_FLIGHT = 2
#: Temporary folders of a model file on its way to or from bytes: this prefix, the creating process's PID, "-",
#: mkdtemp's random part; those a process killed meanwhile left are removed as model loading removes its own.
_TEMP_PREFIX = "napari-unet-chunks-"
_TEMP_FOLDER = re.compile(re.escape(_TEMP_PREFIX) + r"(\d+)-[a-z0-9_]+")


class ModelSource:
    """A model that tasks in other processes can load: a ``.keras`` path, or a :class:`UNetModel` in memory.

    Pickling a model in memory sends its file's bytes (written once); a path sends the path, which every worker
    must be able to read (a shared file system). Each process loads a model once.
    """

    def __init__(self, model):
        from .model_io import UNetModel, check_model_file

        self._model = model if isinstance(model, UNetModel) else None
        self._bytes: Optional[bytes] = None
        if self._model is not None:
            self.path = None
            self.config, self.class_values = model.config, list(model.class_values)
            self.train_config, self.boundary_value = model.train_config, model.boundary_value
            self.percentiles, self.intensity_profile, self.intensity_spread = tuple(model.percentiles), model.intensity_profile, model.intensity_spread
            self.profile_above_floor, self.spread_above_floor = model.profile_above_floor, model.spread_above_floor
            self.pixel_size = model.pixel_size
            self.key = f"memory-{os.getpid()}-{next(_COUNTER)}-{time.time_ns()}"
        else:
            path = Path(os.fspath(model)).resolve()
            checked = check_model_file(path)  # a clear error before any task runs, without TensorFlow
            self.path = str(path)
            self.config, self.train_config = checked["config"], checked["train_config"]
            self.class_values = [int(v) for v in checked["class_values"]]
            self.boundary_value = checked["boundary_value"]
            self.percentiles, self.intensity_profile = checked["percentiles"], checked["intensity_profile"]
            self.intensity_spread, self.profile_above_floor = checked["intensity_spread"], checked["profile_above_floor"]
            self.spread_above_floor, self.pixel_size = checked["spread_above_floor"], checked["pixel_size"]
            stat = path.stat()
            self.key = f"{path}-{stat.st_mtime_ns}-{stat.st_size}"

    def __dask_tokenize__(self):  # without it dask would pickle the model to name the task graph's node
        return ("napari-unet-model", self.key)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._model is not None and self._bytes is None:
            self._bytes = state["_bytes"] = _model_file_bytes(self._model)
        state["_model"] = None
        return state

    def load(self, mixed_precision: bool, jit_compile: Optional[bool] = None):
        """The model with batch norm folded into its convolutions (bfloat16 with ``mixed_precision``), cached per process;
        ``jit_compile=False``: never compiled with XLA (None: as Keras chooses, XLA where a GPU is listed)."""
        from .model import fold_batch_norm
        from .predict import without_xla

        key = (self.key, bool(mixed_precision), jit_compile is False)
        with _LOAD_LOCK:
            if key not in _LOADED:
                model = self._model if self._model is not None else self._load_file()
                folded = fold_batch_norm(model.keras_model, model.config, mixed_precision)
                if jit_compile is False:
                    folded = without_xla(folded)
                _LOADED[key] = dataclasses.replace(model, keras_model=_OneCallAtATime(folded))
                while len(_LOADED) > _LOADED_MAX:
                    _LOADED.popitem(last=False)
            _LOADED.move_to_end(key)
            return _LOADED[key]

    def _load_file(self):
        from .model_io import load_model

        if self.path is not None:
            return load_model(self.path)
        with _temporary_folder() as folder:
            path = Path(folder) / "model.keras"
            path.write_bytes(self._bytes)
            return load_model(path)


@contextlib.contextmanager
def _temporary_folder():
    """A temporary folder named for this process (:data:`_TEMP_PREFIX`), once stale ones of dead processes are removed."""
    from .model_io import _remove_stale_link_folders

    _remove_stale_link_folders(tempfile.gettempdir(), _TEMP_FOLDER)
    with tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{os.getpid()}-") as folder:
        yield folder


class _OneCallAtATime:
    """A Keras model's ``predict_on_batch`` (all :func:`~napari_unet.predict.predict` calls with ``folded=False``)
    under :data:`_NETWORK_LOCK`."""

    def __init__(self, keras_model):
        self.keras_model = keras_model

    def predict_on_batch(self, batch):
        with _NETWORK_LOCK:
            return self.keras_model.predict_on_batch(batch)


def _model_file_bytes(model) -> bytes:
    from .model_io import save_model

    with _temporary_folder() as folder:
        return save_model(model, Path(folder) / "model.keras").read_bytes()


@dataclass(frozen=True)
class ChunkedPrediction:
    """Lazy results of :func:`predict_chunked` for an input of shape S = (Y, X) or (Z, Y, X).

    ``labels``: dask array of shape S in the training labels' values, chunked (k, Y, X) (``k`` slices per task).
    ``probabilities``: dask array S + (n_classes,) float32, or None. Each task computes both (compute them together).
    ``chunks``: the (first, stop) slice range of each task. The rest is what :func:`store_events` needs to run the
    same tasks writing into zarr stores slice by slice instead.
    """

    labels: object
    probabilities: Optional[object]
    chunks: tuple
    source: ModelSource
    stack: object  # the input as a (Z, Y, X) dask array of whole slices
    options: dict


def default_slices_per_chunk(shape, dtype, z_chunk: Optional[int] = None) -> int:
    """Slices per task for a (Z, Y, X) image of ``dtype``: its own chunks along Z (``z_chunk``, a zarr store's) or
    :data:`DEFAULT_SLICES_PER_CHUNK`, cut to as many as fit in :data:`MAX_TASK_INPUT_BYTES` (at least 1)."""
    fitting = MAX_TASK_INPUT_BYTES // max(1, int(shape[-2]) * int(shape[-1]) * np.dtype(dtype).itemsize)
    return max(1, min(z_chunk or DEFAULT_SLICES_PER_CHUNK, fitting))


def predict_chunked(
    model,
    image,
    slices_per_chunk: Optional[int] = None,
    return_probabilities: bool = False,
    tile_size: int = 512,
    overlap: int = 48,
    batch_size: int = 2,
    tta: Union[bool, int, str] = "auto",
    close_boundaries: Optional[bool] = None,
    mixed_precision: Optional[bool] = None,
    client=None,
    jit_compile: Optional[bool] = None,
) -> ChunkedPrediction:
    """Lazily predict ``image`` ((Y, X) or (Z, Y, X), numpy or dask) in tasks of ``slices_per_chunk`` slices.

    ``model``: a ``.keras`` path (read by every worker: keep it on a shared file system), a :class:`UNetModel`
    or a :class:`ModelSource`. ``slices_per_chunk``: default the image's own chunks along Z (dask; thinner tasks
    read each input chunk once per task), else 8; either cut to 256 MiB of input (:func:`default_slices_per_chunk`).
    Nothing runs until the result is computed, with any dask scheduler (``dask.distributed`` too); each task
    returns what :func:`~napari_unet.predict.predict` gives for its slices. The ``"auto"`` choices (test-time
    augmentation, bfloat16) are made once, so every chunk follows the same convention: on a worker of ``client``
    (a ``dask.distributed`` client whose workers compute the result; this machine need not have TensorFlow's
    speed, or load it), else here. ``jit_compile=False``: no XLA (None: as Keras chooses, XLA where a GPU is listed).
    The other arguments are those of :func:`predict`.
    """
    import dask.array as da

    from .predict import labels_dtype_for

    if not hasattr(image, "shape"):  # nested lists
        image = np.asarray(image)
    shape = tuple(np.shape(image))
    colour = len(shape) == 3 and shape[-1] in (3, 4)
    if len(shape) not in (2, 3) or colour:
        raise InputError(
            f"image has shape {shape}; chunked prediction takes one-channel (Y, X) images or (Z, Y, X) stacks"
            + (" (if it is an RGB image with colours last, convert it to grayscale)" if colour else "")
        )
    if 0 in shape:
        raise InputError(f"image has shape {shape}: it holds no pixels")
    source = model if isinstance(model, ModelSource) else ModelSource(model)
    if client is None:
        views, mixed_precision = resolve_auto_choices(tta, mixed_precision)
    else:
        views, mixed_precision = client.submit(resolve_auto_choices, tta, mixed_precision, pure=False).result(timeout=STOP_TIMEOUT)
    options = dict(
        tile_size=tile_size, overlap=overlap, batch_size=batch_size, tta=views,
        close_boundaries=close_boundaries, mixed_precision=mixed_precision, return_probabilities=return_probabilities,
        jit_compile=jit_compile, flat=len(shape) == 2,
    )
    stack = da.asarray(image if len(shape) == 3 else image[np.newaxis])
    n_slices, height, width = stack.shape
    if slices_per_chunk is None:
        z_chunk = stack.chunks[0][0] if isinstance(image, da.Array) and len(shape) == 3 else None
        slices_per_chunk = default_slices_per_chunk(stack.shape, stack.dtype, z_chunk)
    if isinstance(slices_per_chunk, bool) or not isinstance(slices_per_chunk, numbers.Integral) or slices_per_chunk < 1:
        raise ValueError(f"slices_per_chunk must be a whole number of at least 1, got {slices_per_chunk!r}")
    slices_per_chunk = int(slices_per_chunk)
    stack = stack.rechunk({1: -1, 2: -1})  # a task needs whole slices
    label_dtype = labels_dtype_for(source.class_values)
    n_classes = source.config.n_classes
    chunks = tuple((z, min(z + slices_per_chunk, n_slices)) for z in range(0, n_slices, slices_per_chunk))
    prediction = ChunkedPrediction(None, None, chunks, source, stack, options)
    labels, probabilities = [], []
    for (first, stop), task in zip(chunks, _tasks(prediction, _predict_block, pure=True)):
        labels.append(da.from_delayed(task[0], (stop - first, height, width), label_dtype))
        if return_probabilities:
            probabilities.append(da.from_delayed(task[1], (stop - first, height, width, n_classes), np.float32))
    labels = da.concatenate(labels)
    probabilities = da.concatenate(probabilities) if return_probabilities else None
    if len(shape) == 2:
        labels = labels[0]
        probabilities = None if probabilities is None else probabilities[0]
    return dataclasses.replace(prediction, labels=labels, probabilities=probabilities)


def _tasks(prediction: ChunkedPrediction, function, *extra, pure: bool = False) -> list:
    """One delayed ``function(model, block, first, stop, z, *extra, options)`` per chunk of ``prediction``: ``block``
    holds the chunk's slices and their context slices, ``first:stop`` the chunk's within it, ``z`` its first in the stack."""
    import dask

    model_node = dask.delayed(prediction.source, pure=True, traverse=False)  # sent to each worker once, not with every task
    context, n_slices = prediction.source.config.context_slices, prediction.stack.shape[0]
    tasks = []
    for first, stop in prediction.chunks:
        lo, hi = max(0, first - context), min(n_slices, stop + context)
        block = prediction.stack[lo:hi]
        tasks.append(dask.delayed(function, pure=pure)(model_node, block, first - lo, stop - lo, first, *extra, prediction.options))
    return tasks


def resolve_auto_choices(tta: Union[bool, int, str], mixed_precision: Optional[bool]) -> tuple[int, bool]:
    """(network passes per tile, bfloat16 or not) that ``tta`` and ``mixed_precision`` (None: auto) mean on this machine."""
    from . import hardware
    from .predict import resolve_tta_views

    if mixed_precision is None:
        mixed_precision = hardware.resolve_mixed_precision(hardware.AUTO)
    return resolve_tta_views(tta), bool(mixed_precision)


def _predict_block(source: ModelSource, block: np.ndarray, begin: int, end: int, z: int, options: dict, **outputs) -> tuple:
    """(labels, probabilities or None) of slices ``begin:end`` of ``block`` (their context slices around them);
    ``outputs``: ``labels_out`` / ``probabilities_out`` / ``stop`` of :func:`~napari_unet.predict.predict_events`.
    ``options["flat"]``: the block is a (Y, X) image's one slice."""
    from .predict import predict

    options = dict(options)
    flat = options.pop("flat", False)
    model = source.load(options["mixed_precision"], options.get("jit_compile"))
    try:
        result = predict(model, np.asarray(block), slices=range(begin, end), folded=False, **options, **outputs)
    except InputError as err:  # "slice 2: image contains NaN ...": numbered in the block, which starts at slice z - begin
        match = re.match(r"slice (\d+): ", str(err))
        if match is None:
            raise
        # a (Y, X) image has no slices to name, as predict says of it in memory
        raise InputError(str(err)[match.end():] if flat else f"slice {int(match.group(1)) + z - begin}: {str(err)[match.end():]}") from None
    return result.labels, result.probabilities


def store_events(
    prediction: ChunkedPrediction, labels_store, probabilities_store=None, client=None
) -> Iterator[PredictionProgress]:
    """Run the tasks of ``prediction``, each writing its slices into zarr arrays at the given paths as it predicts
    them (its outputs held one slice at a time), and yield progress in slices written (here: every second it grew;
    on a cluster: per finished task).

    The stores (see :func:`napari_unet.zarr_io.create_zarr`) must exist with the prediction's shapes and dtypes,
    probabilities stored (Z, C, Y, X), one plane per class, and chunks along Z that no two tasks share (one slice per
    chunk always works); else ValueError. Chunks of :func:`~napari_unet.predict.store_chunk_rows` rows (of whole
    width) let the bands of a tall slice each write whole chunks, none read back and written again. ``client``: a
    ``dask.distributed`` client whose workers (which must reach the stores' paths) run the tasks in parallel; None
    runs them here, two at a time (one network call at a time: TensorFlow spreads each over the cores). Closing the
    generator early (an error, an interrupt) stops the tasks running at their next tile and returns once none of them
    writes any more.
    """
    if (probabilities_store is None) != (prediction.probabilities is None):
        raise ValueError("give a probabilities store exactly when the prediction has probabilities")
    stores = (os.path.abspath(labels_store), None if probabilities_store is None else os.path.abspath(probabilities_store))
    _check_store(stores[0], prediction.labels.shape, prediction.labels.dtype, prediction.chunks)
    if stores[1] is not None:
        probabilities_shape = (*prediction.labels.shape[:-2], prediction.probabilities.shape[-1], *prediction.labels.shape[-2:])
        _check_store(stores[1], probabilities_shape, np.float32, prediction.chunks)
    start = time.perf_counter()

    total = sum(stop - first for first, stop in prediction.chunks)

    def progress(done: int) -> PredictionProgress:
        elapsed = time.perf_counter() - start
        return PredictionProgress(done, total, elapsed, elapsed / max(done, 1) * (total - done))

    if client is None:
        stop, written = threading.Event(), _SliceCount()
        tasks = _tasks(prediction, _predict_into_stores, stores, stop.is_set, written.add)
        yield from _compute_here(tasks, stop, written, progress, lambda err, task: _name_read_error(err, prediction, task))
        return
    from distributed import Event, as_completed, wait

    stop = Event(f"napari-unet-stop-{os.getpid()}-{next(_COUNTER)}-{time.time_ns()}", client=client)
    futures = client.compute(_tasks(prediction, _predict_into_stores, stores, _ClusterStop(stop.name), None))
    sizes = {future.key: stop - first for future, (first, stop) in zip(futures, prediction.chunks)}
    tasks = {future.key: task for task, future in enumerate(futures)}
    done = 0
    try:
        for future in as_completed(futures):
            try:
                future.result()  # re-raises a task's error here
            except Exception as err:
                stop.set()  # first, as here: the running tasks stop while the failed one's chunks are read again
                _name_read_error(err, prediction, tasks[future.key])
                raise
            done += sizes[future.key]
            yield progress(done)
    finally:
        # Nothing is cancelled (a cancelled running task would go on writing unseen): told to stop, the tasks not
        # started end at their first tile and the running ones at their next, and the stores are left alone after.
        stop.set()
        with contextlib.suppress(Exception):
            wait(futures, timeout=STOP_TIMEOUT)


class _ClusterStop:
    """``stop()`` for tasks on a cluster: whether the client set its ``distributed.Event`` (asked at most once a second)."""

    def __init__(self, name: str):
        self.name, self._event, self._asked, self._set = name, None, 0.0, False

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"])

    def __call__(self) -> bool:
        if not self._set and time.monotonic() - self._asked > 1.0:
            from distributed import Event

            self._event = self._event or Event(self.name)
            self._set, self._asked = self._event.is_set(), time.monotonic()
        return self._set


def _check_store(path: str, shape: tuple, dtype, chunks: tuple) -> None:
    """ValueError unless the zarr array at ``path`` has ``shape`` and ``dtype`` and no Z chunk shared by two tasks."""
    import zarr

    store = zarr.open_array(path, mode="r")
    if tuple(store.shape) != tuple(shape) or np.dtype(store.dtype) != np.dtype(dtype):
        raise ValueError(f"store {path} has shape {tuple(store.shape)} and dtype {store.dtype}; the prediction needs {tuple(shape)} {np.dtype(dtype)}")
    if len(shape) in (3, 4):  # stores with a Z axis
        z_chunk = store.chunks[0]
        if any(first % z_chunk or (stop % z_chunk and stop != shape[0]) for first, stop in chunks):
            raise ValueError(f"store {path} has chunks of {z_chunk} slices, which tasks of slices {list(chunks)[:3]}... would share (give it one slice per chunk)")


class _SliceCount:
    """Slices written by the tasks running in this process (a task of 64 slices was minutes without progress)."""

    def __init__(self):
        self.value, self._lock = 0, threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def _compute_here(tasks: list, stop: threading.Event, written: _SliceCount, progress, failed=None) -> Iterator[PredictionProgress]:
    """Compute ``tasks`` in this process, :data:`LOCAL_CHUNKS_IN_FLIGHT` at a time (memory stays bounded), yielding
    ``progress(slices written)`` when it grew (looked at every second); when the consumer stops early, ``stop`` is
    set, so running tasks end at their next tile. ``failed(error, task number)`` sees a task's error before it is raised."""
    import dask
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(LOCAL_CHUNKS_IN_FLIGHT, thread_name_prefix="napari-unet-chunk")
    queue, running, shown, numbers = list(enumerate(tasks)), set(), 0, {}
    try:
        while queue or running:
            while queue and len(running) < LOCAL_CHUNKS_IN_FLIGHT:
                number, task = queue.pop(0)
                future = pool.submit(dask.compute, task, scheduler="sync")
                running.add(future)
                numbers[future] = number
            finished, running = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    future.result()  # re-raises a task's error here
                except Exception as err:
                    stop.set()  # first: the other running task ends at its next tile instead of running beside the re-read
                    if failed is not None:
                        failed(err, numbers[future])
                    raise
            if written.value > shown:
                shown = written.value
                yield progress(shown)
    finally:  # also when the consumer closes the generator: chunks not started never start
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _name_read_error(err: Exception, prediction: ChunkedPrediction, task: int) -> None:
    """Give a reader's error (:func:`napari_unet.data.reader_errors`: a damaged page or chunk of the image's file) that
    task number ``task`` of ``prediction`` met reading its slices ``role`` "image" and ``slices`` (as
    :func:`napari_unet.data.read_planes` does): the slices of the page or chunk of the stack that fails again, read a
    chunk at a time, else those the task read (with its context slices). A (Y, X) image has no slices to name."""
    from .data import chunks_along_z, reader_errors

    if not isinstance(err, reader_errors()):
        return
    if getattr(err, "role", None) is None:
        err.role = "image"
    if getattr(err, "slices", None) is not None or len(prediction.labels.shape) != 3:
        return
    first, stop = prediction.chunks[task]
    context, stack = prediction.source.config.context_slices, prediction.stack
    lo, hi = max(0, first - context), min(stack.shape[0], stop + context)
    err.slices = range(lo, hi)
    for start, end, read in chunks_along_z(stack, list(range(lo, hi))):  # the stack's chunks along Z the task read
        # (the slices it read of each: memory as the task's; a chunk that fails fails whole, all its slices named)
        try:  # diagnostic only: another failure (memory, a vanished file) leaves the task's slices named
            np.asarray(stack[read[0]:read[-1] + 1])
        except reader_errors():
            err.slices = range(start, end)
            return
        except Exception:
            return


def _predict_into_stores(source: ModelSource, block: np.ndarray, first: int, stop: int, z: int, stores: tuple, stopped,
                         written, options: dict) -> int:
    """Predict slices ``first:stop`` of ``block`` into slices ``z:`` of the zarr stores at ``stores`` (labels,
    probabilities or None), until ``stopped()``; ``written()``, if given, after each slice's labels are written."""
    labels_out = _SliceWriter(stores[0], z, stop - first, written=written)
    probabilities_out = None if stores[1] is None else _SliceWriter(stores[1], z, stop - first, classes_first=True)
    options = {**options, "return_probabilities": False}
    _predict_block(source, block, first, stop, z, options, labels_out=labels_out, probabilities_out=probabilities_out, stop=stopped)
    # only after a task that ran to its end: a failed or stopped one's stores are discarded, its waiting rows with them
    for out in (labels_out, probabilities_out):
        if out is not None:
            out.flush()
    return stop - first


class _SliceWriter:
    """Slices ``first:first + n`` of a zarr array, as an output array that :func:`~napari_unet.predict.predict_events`
    fills one slice, or one band of a slice's rows, at a time: ``out[i] = plane`` or ``out[i, start:stop] = rows``.
    ``classes_first``: slices arrive (Y, X, C) and are stored (C, Y, X). A store without the Z axis ((Y, X) or
    (C, Y, X)) takes the one slice of a 2-D image. ``written()`` is called when a slice's last rows are written.

    Rows are written in whole chunks of the store: a band's rows past its last chunk boundary (a few, in stores chunked
    by :func:`~napari_unet.predict.store_chunk_rows`) wait for the next band of the slice, which completes their chunk,
    so no chunk is read back, changed and written again; rows that do not continue the waiting ones (another slice)
    write those first as they are. :meth:`flush` writes what still waits once the prediction is done."""

    def __init__(self, path: str, first: int, n: int, classes_first: bool = False, written=None):
        import zarr

        self.written = written

        self.store = zarr.open_array(path, mode="r+")
        self.path, self.first, self.classes_first = path, first, classes_first
        plane_ndim = 3 if classes_first else 2
        self.has_z = self.store.ndim > plane_ndim
        plane = tuple(self.store.shape[-plane_ndim:])
        self.shape = (n, *plane[1:], plane[0]) if classes_first else (n, *plane)
        self.dtype = np.dtype(self.store.dtype)
        self.chunk_rows = int(self.store.chunks[-2])
        self._waiting: Optional[tuple[int, int, np.ndarray]] = None  # (plane, first row, rows as stored)

    def __setitem__(self, index, value: np.ndarray) -> None:
        plane, rows = index if isinstance(index, tuple) else (index, slice(None))
        start, stop, step = rows.indices(self.shape[1])
        if step != 1:
            raise ValueError(f"rows {rows} are not a contiguous range")
        value = np.moveaxis(value, -1, 0) if self.classes_first else value
        height = self.shape[1]
        if self._waiting is not None:
            waiting_plane, waiting_start, waiting = self._waiting
            if waiting_plane == plane and waiting_start + waiting.shape[-2] == start:
                # the waiting rows' chunk, completed by this band's first rows (one chunk copied, not the band)
                self._waiting = None
                head = min(waiting_start + self.chunk_rows, height) - start
                joined = np.concatenate([waiting, np.asarray(value[..., : min(head, stop - start), :], self.dtype)], axis=-2)
                if stop - start < head and stop < height:  # (a band shorter than the rest of the chunk: wait on)
                    self._waiting = (plane, waiting_start, joined)
                    return
                self._write(plane, waiting_start, waiting_start + joined.shape[-2], joined)
                value, start = value[..., head:, :], start + head
                if start >= stop:
                    return
            else:
                self.flush()
        # up to the last chunk boundary (or the slice's end); the rest waits for the rows after it
        end = stop if stop == height else max(start, stop // self.chunk_rows * self.chunk_rows)
        if end < stop:
            self._waiting = (plane, end, np.array(value[..., end - start :, :], self.dtype))  # a copy: not a view of a band
        if end > start:
            self._write(plane, start, end, value[..., : end - start, :])

    def flush(self) -> None:
        """Write the rows that wait for the next band of their slice."""
        if self._waiting is not None:
            plane, start, rows = self._waiting
            self._waiting = None
            self._write(plane, start, start + rows.shape[-2], rows)

    def _write(self, plane: int, start: int, stop: int, value: np.ndarray) -> None:
        if not os.path.isdir(self.path):  # discarded by a stopped run: zarr would create the folder again
            raise FileNotFoundError(f"{self.path} was removed while the prediction wrote it")
        where = ((slice(None),) if self.classes_first else ()) + (slice(start, stop),)
        self.store[((self.first + plane,) if self.has_z else ()) + where] = value
        if self.written is not None and stop == self.shape[1]:
            self.written()


__all__ = [
    "MAX_TASK_INPUT_BYTES",
    "DEFAULT_SLICES_PER_CHUNK",
    "STOP_TIMEOUT",
    "LOCAL_CHUNKS_IN_FLIGHT",
    "ModelSource",
    "ChunkedPrediction",
    "default_slices_per_chunk",
    "predict_chunked",
    "resolve_auto_choices",
    "store_events",
]
