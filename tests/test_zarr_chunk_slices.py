"""A damaged chunk of a zarr store read lazily names the store's slices it holds (``err.slices``, a range) where it is
read: a lazy result computed by its user (``predict_chunked(...).labels.compute()``) names them too, and
``data.read_planes`` and the command line keep them (named once, spelled by ``data.slices_text``)."""

import numpy as np
import pytest

from _helpers import damaged_zarr, run_cli, stripes, tiny_model

zarr = pytest.importorskip("zarr")

#: 12 slices in chunks of 4; slice 5 damaged: chunk 4-7
N_SLICES, DAMAGED, DEPTH, CHUNK = 12, 5, 4, range(4, 8)


@pytest.fixture
def store(tmp_path):
    image = stripes(n_slices=N_SLICES, size=32)[0]
    return damaged_zarr(str(tmp_path / "img.zarr"), image, DAMAGED, depth=DEPTH)


def _raised(read):
    from napari_unet.zarr_io import ZarrReadError

    with pytest.raises(ZarrReadError) as caught:
        read()
    return caught.value


def test_the_reader_names_the_slices_of_the_damaged_chunk(store):
    from napari_unet.data import slices_text
    from napari_unet.zarr_io import read_zarr

    lazy = read_zarr(store).data
    err = _raised(lambda: np.asarray(lazy[DAMAGED]))
    assert err.slices == CHUNK and slices_text(err.slices) == "slices 4-7"
    assert "slice" not in str(err)  # in the attribute only: front-ends prefix it, once
    assert _raised(lambda: read_zarr(store, lazy=False)).slices == CHUNK


def test_read_planes_keeps_the_reader_s_slices_without_reading_again(store, monkeypatch):
    from napari_unet import data
    from napari_unet.zarr_io import read_zarr

    lazy = read_zarr(store).data
    monkeypatch.setattr(data, "_failing_slices", lambda *a, **k: pytest.fail("read again"))
    for read in (lambda: data.read_planes(lazy), lambda: data.read_planes(lazy, [1, DAMAGED, 9]),
                 lambda: data.read_plane(lazy, DAMAGED)):
        err = _raised(read)
        assert (err.role, err.slices) == ("image", CHUNK)  # a plane's read names its chunk whole, as the stack's does


def test_a_lazy_chunked_prediction_computed_by_its_user_names_the_slices(store):
    from napari_unet.chunked import predict_chunked
    from napari_unet.zarr_io import read_zarr

    prediction = predict_chunked(tiny_model(), read_zarr(store).data, tta=False)
    assert _raised(lambda: prediction.labels.compute()).slices == CHUNK


@pytest.mark.parametrize("shape, chunks, damaged, slices", [
    ((32, 32), (16, 32), 1, None),  # a (Y, X) image: no slices
    ((1, 32, 32), (1, 16, 32), 1, None),  # its one slice: a (Y, X) image too
    ((6, 32, 32, 1), (2, 32, 32, 1), 1, range(2, 4)),  # a trailing channel of one: slices along Z
    ((1, 6, 32, 32), (1, 3, 32, 32), 1, range(3, 6)),  # a leading axis of one
    ((2, 3, 32, 32), (1, 1, 32, 32), 4, None),  # two axes besides Y and X (T, Z): which is a slice is not known
])
def test_slices_are_named_only_along_the_one_stack_axis(tmp_path, shape, chunks, damaged, slices):
    from _helpers import garble_zarr_chunk

    from napari_unet.zarr_io import read_zarr

    path = tmp_path / "s.zarr"
    zarr.open_array(str(path), mode="w", shape=shape, dtype="u1", chunks=chunks)[:] = 3
    garble_zarr_chunk(str(path), damaged)
    assert getattr(_raised(lambda: np.asarray(read_zarr(path).data)), "slices", None) == slices


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_predict_names_the_damaged_chunk_whole_into_tiff_and_into_zarr(tmp_path, store, capsys, output):
    from napari_unet.model_io import save_model

    save_model(tiny_model(), tmp_path / "m.keras")
    code, _, err = run_cli(capsys, "predict", tmp_path / "m.keras", store, "-o", tmp_path / output, "--no-tta")
    assert code == 2, err
    [line] = [line for line in err.splitlines() if line.startswith("napari-unet: error:")]
    assert line.startswith("napari-unet: error: image img.zarr, slices 4-7: damaged or unreadable chunk"), line
    assert line.count("slice") == 1, line  # (was "slice 5", the plane its intensity check read first)


def test_store_events_keeps_the_reader_s_slices(store, tmp_path):
    # (control: chunked's own search, reading the task's chunks again, found the same range)
    from napari_unet.chunked import predict_chunked, store_events
    from napari_unet.zarr_io import create_zarr, read_zarr

    prediction = predict_chunked(tiny_model(), read_zarr(store).data, tta=False)
    out = create_zarr(tmp_path / "out.zarr", (N_SLICES, 32, 32), np.uint8, (1, 32, 32))
    err = _raised(lambda: list(store_events(prediction, out)))
    assert (err.role, err.slices) == ("image", CHUNK) and "slice" not in str(err)
