"""Shared test data: small synthetic tasks and one tiny trained model per test session."""

import contextlib
import functools
import subprocess
import sys
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_SHARED_DATA = "../shared/data not found: real-data tests need the project's shared data beside the repo"


def stripes(n_slices=4, size=96, seed=0):
    """Noisy dark lines on a bright background; labels 0 = line ("membrane"), 255 = background."""
    rng = np.random.default_rng(seed)
    image = np.full((n_slices, size, size), 190.0)
    labels = np.full((n_slices, size, size), 255, np.uint8)
    for z in range(n_slices):
        for _ in range(size // 16):
            r, c = rng.integers(0, size - 3, 2)
            image[z, r : r + 3], labels[z, r : r + 3] = 60, 0
            image[z, :, c : c + 3], labels[z, :, c : c + 3] = 60, 0
    image += rng.normal(0, 25, image.shape)
    return image.clip(0, 255).astype(np.uint8), labels


def tiny_configs(**train_overrides):
    from napari_unet.config import ModelConfig, TrainConfig

    train = dict(epochs=2, steps_per_epoch=10, batch_size=4, patch_size=64, val_fraction=0.25, learning_rate=3e-3)
    train.update(train_overrides)
    return ModelConfig(depth=2, base_filters=8), TrainConfig(**train)


@functools.lru_cache(maxsize=None)
def tiny_model():
    """A depth-2, 8-filter U-Net trained for a few seconds on :func:`stripes` (shared by tests)."""
    from napari_unet.train import train

    image, labels = stripes()
    model_config, train_config = tiny_configs()
    return train(image, labels, model_config, train_config).model


def record_tta(monkeypatch) -> list:
    """Network passes per tile (1 / 2 / 4) of every network run ``predict`` makes from now on (appended to the returned list)."""
    from napari_unet import predict as predict_module

    seen = []
    run_model = predict_module._run_model
    monkeypatch.setattr(predict_module, "_run_model", lambda m, tiles, views, *rest: seen.append(views) or run_model(m, tiles, views, *rest))
    return seen


class PlanesOnly:
    """An array-like that hands out planes (or pixels) but refuses to be read whole, and records what was read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim, self.reads = array, array.shape, array.dtype, array.ndim, []

    def __getitem__(self, index):
        self.reads.append(index)
        return self.array[index]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was read")


def assert_two_runs_never_mix(script: str, folder) -> None:
    """Run the Python ``script`` in two processes at once (its arguments: ``folder`` and 1 or 2); each prints
    "mixed N", the times it saw one run's output beside the other's, which must be 0."""
    import subprocess
    import sys

    runs = [subprocess.Popen([sys.executable, "-c", script, str(folder), str(me)], stdout=subprocess.PIPE, text=True)
            for me in (1, 2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(output.strip().endswith("mixed 0") for output in outputs), outputs


@contextlib.contextmanager
def dead_and_live_pids():
    """(PID of a process that has exited, PID of one that sleeps until the block ends) for stale-folder tests."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield int(dead.stdout), live.pid
    finally:
        live.kill()
        live.wait()


def write_stripes_stack(folder, n_slices=4, size=64):
    """``image.tif`` and ``labels.tif`` of :func:`stripes` written into ``folder``; returns ``folder``."""
    import tifffile

    image, labels = stripes(n_slices=n_slices, size=size)
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, photometric="minisblack")
    return folder


def run_cli(capsys, *argv):
    """``napari_unet.cli.main`` of ``argv`` in this process: (exit status, stdout, stderr)."""
    from napari_unet.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def finite_weights(model) -> bool:
    """Whether every weight of ``model`` (a napari_unet Model) is finite."""
    return all(np.isfinite(w).all() for w in model.keras_model.get_weights())


def poison_weights(network) -> None:
    """Make ``network``'s weights NaN, as an update whose gradient overflowed leaves them."""
    network.set_weights([np.full_like(w, np.nan) if np.issubdtype(w.dtype, np.floating) else w for w in network.get_weights()])


def train_poisoned(at_step: int, **overrides) -> list:
    """Train the tiny network on stripes, its weights made NaN after step ``at_step``; returns the events."""
    from napari_unet.train import TrainingStarted, TrainingStep, train_events

    image, labels = stripes(n_slices=4, size=64)
    model_config, train_config = tiny_configs(**{"epochs": 3, "steps_per_epoch": 3, **overrides})
    events, network = [], None
    for event in train_events(image, labels, model_config, train_config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            network = event.model.keras_model  # the network being trained
        if isinstance(event, TrainingStep) and event.step == at_step:
            poison_weights(network)
    return events


def zarr_chunk_files(path) -> list:
    """The chunk files of the zarr store at ``path`` (format 2 or 3), by number: chunk 10 after 9, not after 1."""
    import os
    import re

    return sorted((os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if not name.startswith(".") and name != "zarr.json"),
                  key=lambda chunk: [int(part) for part in re.findall(r"\d+", os.path.relpath(chunk, path))])


def garble_zarr_chunk(path, k, n_chunks=None):
    """Overwrite chunk file ``k`` (:func:`zarr_chunk_files`'s order) of the store at ``path`` with garbage; ``n_chunks``:
    how many the store must have."""
    chunks = zarr_chunk_files(path)
    assert n_chunks is None or len(chunks) == n_chunks, chunks
    with open(chunks[k], "wb") as fh:
        fh.write(b"not a chunk" * 3)


def damaged_zarr(path, array, z, zarr_format=None, depth=1):
    """``array`` as a zarr store (format ``zarr_format``: 2, 3, None: zarr's default) of chunks of ``depth`` slices,
    the chunk holding slice ``z`` overwritten with garbage."""
    import pytest

    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(path, mode="w", shape=array.shape, dtype=array.dtype, chunks=(depth,) + array.shape[1:],
                            **({} if zarr_format is None else {"zarr_format": zarr_format}))
    store[:] = array
    garble_zarr_chunk(path, z // depth, -(-len(array) // depth))
    return path


def damaged_tiff(path, array, z):
    """``array`` as a zlib-compressed TIFF of one page a slice, page ``z``'s compressed stream garbled (the header is
    fine)."""
    import tifffile

    tifffile.imwrite(path, array, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[z].dataoffsets[0]
    with open(path, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\xff" * 32)
    return path


def error_line(capsys) -> str:
    """The one ``napari-unet: error:`` line the command wrote to stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("napari-unet: error:")]
    assert len(lines) == 1, lines
    return lines[0]
