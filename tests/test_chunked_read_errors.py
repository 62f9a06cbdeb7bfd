"""A damaged chunk or page of the image met by chunked prediction (``predict ... -o LABELS.zarr``): the error names the
file and the slices, the status is that of the other read errors, and no output is written or lost."""

import os

import numpy as np
import pytest

from _helpers import damaged_tiff, damaged_zarr, run_cli, stripes, tiny_model

zarr = pytest.importorskip("zarr")

#: 12 slices, the prediction's intensity check reads 0, 2, 3, 5, 6, 8, 9, 11 (up to 8 evenly spaced ones): the damaged
#: slice 4 is first read by a task
N_SLICES, DAMAGED = 12, 4


@pytest.fixture
def lazy_tiffs(monkeypatch):
    from napari_unet import tiff_io

    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # the test stack is small: read page by page, as a large one


def _files(folder) -> list:
    return sorted(os.listdir(folder))


def _old_store(path):
    store = zarr.open_array(str(path), mode="w", shape=(2, 3), dtype="u1")
    store[:] = 7
    return path


@pytest.mark.parametrize("kind, extra, slices", [
    ("zarr", [], f"slice {DAMAGED}"),  # tasks of the store's chunks: one slice
    ("zarr", ["--slices-per-chunk", "3"], f"slice {DAMAGED}"),  # the task of slices 3-5 reads chunk by chunk again
    ("tiff", [], f"slice {DAMAGED}"),  # tasks of 8 pages
])
def test_a_damaged_chunk_met_by_a_task_names_its_slice_and_nothing_is_written(tmp_path, tiny_model_file, capsys, lazy_tiffs,
                                                                              kind, extra, slices):
    image = stripes(n_slices=N_SLICES, size=64)[0]
    name = "img.zarr" if kind == "zarr" else "img.tif"
    (damaged_zarr if kind == "zarr" else damaged_tiff)(str(tmp_path / name), image, DAMAGED)
    before = _files(tmp_path)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / name, "-o", tmp_path / "out.zarr",
                           "--probabilities", tmp_path / "p.zarr", "--no-tta", *extra)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"napari-unet: error: image {name}, {slices}: "), lines
    assert lines[0].endswith("; no prediction written"), lines
    assert _files(tmp_path) == before  # no store, complete-looking or partial, and no hidden partial beside it


def test_a_damaged_chunk_leaves_the_stores_already_there_as_they_were(tmp_path, tiny_model_file, capsys):
    image = stripes(n_slices=N_SLICES, size=64)[0]
    damaged_zarr(str(tmp_path / "img.zarr"), image, DAMAGED)
    _old_store(tmp_path / "out.zarr")
    _old_store(tmp_path / "p.zarr")
    before = _files(tmp_path)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.zarr", "-o", tmp_path / "out.zarr",
                           "--probabilities", tmp_path / "p.zarr", "--no-tta")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert line.startswith(f"napari-unet: error: image img.zarr, slice {DAMAGED}: damaged or unreadable chunk"), line
    assert line.endswith(f"; no prediction written ({tmp_path / 'out.zarr'} and {tmp_path / 'p.zarr'} are unchanged)"), line
    assert _files(tmp_path) == before
    for store in ("out.zarr", "p.zarr"):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / store), mode="r")[:], np.full((2, 3), 7, np.uint8))


def test_a_damaged_chunk_met_on_a_dask_cluster_names_its_slice(tmp_path, tiny_model_file, capsys):
    distributed = pytest.importorskip("distributed")
    image = stripes(n_slices=N_SLICES, size=64)[0]
    damaged_zarr(str(tmp_path / "img.zarr"), image, DAMAGED)
    before = _files(tmp_path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.zarr", "-o", tmp_path / "out.zarr", "--no-tta",
                               "--slices-per-chunk", "3", "--scheduler", cluster.scheduler_address)
    assert code == 2, err
    [line] = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert line.startswith(f"napari-unet: error: image img.zarr, slice {DAMAGED}: damaged or unreadable chunk"), line
    assert line.endswith("; no prediction written"), line
    assert _files(tmp_path) == before


@pytest.mark.parametrize("failures, slices", [
    (99, range(3, 4)),  # read again a chunk at a time, chunk 3 fails again: its slice
    (1, range(1, 5)),  # it does not (a fault of the moment): the slices the task read, its context slices with them
])
def test_store_events_names_the_slices_of_a_read_error(tmp_path, monkeypatch, failures, slices):
    import dask.array as da

    from napari_unet import chunked
    from napari_unet.chunked import predict_chunked, store_events
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel
    from napari_unet.zarr_io import ZarrReadError, create_zarr

    config = ModelConfig(depth=2, base_filters=4, context_slices=1)
    model = UNetModel(build_unet(config), config, [0, 255])
    image = stripes(n_slices=6, size=64)[0]
    left = [failures]

    def read(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3 and left[0]:
            left[0] -= 1
            raise ZarrReadError("img.zarr: damaged or unreadable chunk (test)")
        return block

    lazy = da.from_array(image, chunks=(1, 64, 64)).map_blocks(read, dtype=image.dtype)
    prediction = predict_chunked(model, lazy, slices_per_chunk=2, tta=False)  # tasks 0-1, 2-3 (reads 1-4), 4-5
    store = create_zarr(tmp_path / "out.zarr", image.shape, np.uint8, (1, 64, 64))
    monkeypatch.setattr(chunked, "LOCAL_CHUNKS_IN_FLIGHT", 1)  # task 2-3 meets chunk 3 first, not task 4-5
    with pytest.raises(ZarrReadError) as caught:
        list(store_events(prediction, store))
    assert caught.value.role == "image" and caught.value.slices == slices


@pytest.mark.parametrize("output", ["out.zarr", "out.tif"])
def test_a_slice_refused_by_a_task_is_named_by_its_number_in_the_stack(tmp_path, tiny_model_file, capsys, output):
    import tifffile

    image = stripes(n_slices=N_SLICES, size=64)[0].astype(np.float32)
    image[10, 5, 5] = np.nan  # in the task of slices 8-11, its slice 2 (named so into zarr stores)
    tifffile.imwrite(tmp_path / "nan.tif", image, photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "nan.tif", "-o", tmp_path / output, "--no-tta")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert line.startswith("napari-unet: error: image nan.tif, slice 10: contains NaN or Inf values"), line
    assert sorted(os.listdir(tmp_path)) == ["nan.tif"]


@pytest.mark.parametrize("output", ["out.zarr", "out.tif"])
def test_a_flat_image_refused_names_no_slice_into_zarr_as_into_tiff(tmp_path, tiny_model_file, capsys, output):
    import tifffile

    image = stripes(n_slices=1, size=64)[0][0].astype(np.float32)
    image[5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan2d.tif", image, photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "nan2d.tif", "-o", tmp_path / output, "--no-tta")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert line.startswith("napari-unet: error: image nan2d.tif contains NaN or Inf values;"), line  # (was ", slice 0:" into zarr)
    assert sorted(os.listdir(tmp_path)) == ["nan2d.tif"]


def test_the_running_tasks_are_told_to_stop_before_a_failed_task_s_chunks_are_read_again(tmp_path, monkeypatch):
    import threading
    import time

    from napari_unet import chunked, zarr_io
    from napari_unet.chunked import predict_chunked, store_events
    from napari_unet.zarr_io import ZarrReadError, create_zarr

    image = stripes(n_slices=2, size=64)[0]
    lazy = zarr_io.read_zarr(damaged_zarr(str(tmp_path / "img.zarr"), image, 1)).data
    prediction = predict_chunked(tiny_model(), lazy, slices_per_chunk=1, tta=False)  # task 0 good, task 1 fails reading
    store = create_zarr(tmp_path / "out.zarr", image.shape, np.uint8, (1, 64, 64))
    running, seen = threading.Event(), {}

    def the_good_task(source, block, first, stop, z, stores, stopped, written, options):
        seen["stopped"] = stopped
        running.set()
        deadline = time.monotonic() + 30
        while not stopped() and time.monotonic() < deadline:  # a long prediction, which ends at its next tile
            time.sleep(0.01)
        return stop - first

    def diagnosis(err, prediction, task):
        assert running.wait(30)
        seen["stop set when the re-read began"] = seen["stopped"]()
        return name_read_error(err, prediction, task)

    name_read_error = chunked._name_read_error
    monkeypatch.setattr(chunked, "_predict_into_stores", the_good_task)
    monkeypatch.setattr(chunked, "_name_read_error", diagnosis)
    with pytest.raises(ZarrReadError):
        list(store_events(prediction, store))
    assert seen["stop set when the re-read began"]
