"""Errors of another reader's lazy array (a dask array, a zarr array, a memory map) read by
:func:`napari_unet.data.read_planes` (review of session 64).

* Only what a damaged chunk or file raises (:data:`~napari_unet.data.DAMAGED_DATA_ERRORS`, e.g. zarr's codecs) becomes a
  :class:`~napari_unet.data.LazyReadError` "its file may be damaged". A program's error (an IndexError of a slice out of
  range, a TypeError of a lazy filter's bug) propagates as it was raised: it was said to be a damaged file, and the
  widget's training job logged no traceback for it.
* After a whole read fails, the bad chunk of a regularly chunked array (a zarr array, not only a dask array) is found
  by reading it again a chunk at a time, and all of its slices are named: it was read again slice by slice (each slice
  decoding its whole chunk again: 1.1 s instead of 0.06 s for 256 slices of 512² in chunks of 64) and only the first
  slice of the bad chunk was named.
"""

import numpy as np
import pytest

from _helpers import damaged_zarr, stripes
from napari_unet.data import LazyReadError, read_plane, read_planes

da = pytest.importorskip("dask.array")


def test_a_slice_out_of_range_of_a_dask_array_or_memory_map_is_an_index_error_not_a_damaged_file(tmp_path):
    with pytest.raises(IndexError):
        read_plane(da.zeros((4, 8, 8), chunks=(1, 8, 8)), 9)
    mapped = np.memmap(tmp_path / "m.dat", dtype=np.uint8, mode="w+", shape=(4, 8, 8))
    with pytest.raises(IndexError):
        read_plane(mapped, 7)


@pytest.mark.parametrize("error", [TypeError, AttributeError, ZeroDivisionError, AssertionError, NotImplementedError,
                                   KeyError])
def test_a_bug_in_a_lazy_filter_propagates_unchanged(error):
    def buggy(block):
        raise error("a bug in the filter")

    lazy = da.zeros((4, 8, 8), chunks=(1, 8, 8)).map_blocks(buggy, dtype=np.float32)
    for read in (lambda: read_planes(lazy), lambda: read_planes(lazy, [0, 2]), lambda: read_plane(lazy, 1)):
        with pytest.raises(error, match="a bug in the filter"):
            read()


def test_training_on_a_lazily_filtered_image_with_a_bug_raises_the_bug_not_a_read_error():
    # the review's example: a filter indexing a block's shape with a str
    from _helpers import tiny_configs
    from napari_unet.train import train_events

    image, labels = stripes()
    lazy = da.from_array(image, chunks=(1,) + image.shape[1:]).map_blocks(lambda b: b / b.shape["z"], dtype=np.float32)
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1)
    with pytest.raises(TypeError, match="tuple indices"):
        list(train_events(lazy, labels, model_config, train_config))


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("compressor", ["default", "none", "gzip"])
def test_a_damaged_zarr_chunk_is_still_a_lazy_read_error(tmp_path, zarr_format, compressor):
    # what the codecs raise: RuntimeError (Zstd), ValueError (an uncompressed chunk of the wrong size), zlib.error (v2
    # zlib) or gzip.BadGzipFile (v3 gzip, an OSError)
    zarr = pytest.importorskip("zarr")
    image = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    path = tmp_path / "s.zarr"
    if compressor == "default":
        damaged_zarr(path, image, 4, zarr_format=zarr_format)
    else:
        from _helpers import garble_zarr_chunk

        if compressor == "none":
            codecs = None
        elif zarr_format == 2:
            from numcodecs import Zlib
            codecs = Zlib()
        else:
            from zarr.codecs import GzipCodec
            codecs = GzipCodec()
        store = zarr.create_array(path, shape=image.shape, dtype=image.dtype, chunks=(1, 8, 8), zarr_format=zarr_format,
                                  compressors=codecs)
        store[:] = image
        garble_zarr_chunk(path, 4, n_chunks=6)
    for lazy in (da.from_zarr(str(path)), zarr.open_array(path, mode="r")):
        with pytest.raises(LazyReadError, match="its file may be damaged") as caught:
            read_planes(lazy, name="labels")
        assert caught.value.role == "labels" and list(caught.value.slices) == [4]
        with pytest.raises(LazyReadError):
            read_plane(lazy, 4)
        assert read_planes(lazy, [0, 5]).shape == (2, 8, 8)


@pytest.mark.parametrize("n_slices, bad, named", [(12, 9, [8, 9, 10, 11]), (10, 9, [8, 9]), (12, 0, [0, 1, 2, 3])])
def test_the_bad_chunk_of_a_zarr_array_read_whole_is_named_by_all_its_slices(tmp_path, n_slices, bad, named):
    # old: "slice 8" (the first slice of the chunk of slices 8-11), found by reading slices 0-8 one by one
    zarr = pytest.importorskip("zarr")
    image, _ = stripes(n_slices=n_slices, size=32)
    lazy = zarr.open_array(damaged_zarr(tmp_path / "s.zarr", image.astype(np.uint8), bad, depth=4), mode="r")
    assert lazy.chunks[0] == 4
    with pytest.raises(LazyReadError) as caught:
        read_planes(lazy)
    assert list(caught.value.slices) == named


def test_the_bad_chunk_of_a_chunked_array_is_found_reading_a_chunk_at_a_time():
    # any array with a regular chunking along Z (zarr, HDF5): one read a chunk, not one a slice
    reads = []

    class Chunked:
        shape, dtype, ndim, chunks = (12, 8, 8), np.dtype(np.uint8), 3, (4, 8, 8)

        def __getitem__(self, index):  # (Z indices only)
            zs = np.atleast_1d(np.arange(12)[index])
            reads.append((int(zs[0]), int(zs[-1]) + 1))
            if set(zs.tolist()) & {8, 9, 10, 11}:
                raise RuntimeError("error during blosc decompression: -1")
            return np.zeros((len(zs), 8, 8), np.uint8)

        def __array__(self, dtype=None, copy=None):
            return self[:]

    with pytest.raises(LazyReadError) as caught:
        read_planes(Chunked())
    assert list(caught.value.slices) == [8, 9, 10, 11]
    assert reads == [(0, 12), (0, 4), (4, 8), (8, 12)], reads  # old: (0, 12), then slice by slice up to slice 8


@pytest.mark.parametrize("bug", ["axis", "broadcast", "reshape"])
def test_a_lazy_filters_value_error_propagates_unchanged(bug):
    # review 2 of s64, 4: numpy's AxisError (a ValueError and an IndexError) and any ValueError of a lazy filter were
    # "unreadable data (...); its file may be damaged", slice 0 named and the bug's traceback gone. A ValueError is a
    # damaged chunk's only when raised in a reader's code (zarr's reshape of a chunk of the wrong size).
    filters = {"axis": lambda b: np.moveaxis(b, 5, 0), "broadcast": lambda b: b + np.zeros((3, 3)),
               "reshape": lambda b: b.reshape(3, -1)}
    errors = {"axis": np.exceptions.AxisError if hasattr(np, "exceptions") else np.AxisError, "broadcast": ValueError,
              "reshape": ValueError}
    lazy = da.zeros((4, 8, 8), chunks=(1, 8, 8)).map_blocks(filters[bug], dtype=np.float64)
    for read in (lambda: read_planes(lazy), lambda: read_planes(lazy, [0, 1]), lambda: read_plane(lazy, 1)):
        with pytest.raises(errors[bug]) as caught:
            read()
        assert not isinstance(caught.value, LazyReadError), caught.value


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_damaged_uncompressed_zarr_chunk_is_a_lazy_read_error_chained_to_zarrs(tmp_path, zarr_format):
    # zarr's ValueError (its reshape of a chunk of the wrong size), filtered lazily or not; the LazyReadError keeps
    # zarr's error as its cause, so its traceback stays in a log
    zarr = pytest.importorskip("zarr")
    from _helpers import garble_zarr_chunk

    image = np.arange(6 * 8 * 8, dtype=np.uint16).reshape(6, 8, 8)
    store = zarr.create_array(tmp_path / "s.zarr", shape=image.shape, dtype=image.dtype, chunks=(2, 8, 8),
                              zarr_format=zarr_format, compressors=None)
    store[:] = image
    garble_zarr_chunk(tmp_path / "s.zarr", 1, n_chunks=3)
    for lazy in (da.from_zarr(str(tmp_path / "s.zarr")), da.from_zarr(str(tmp_path / "s.zarr")).map_blocks(lambda b: b * 2)):
        with pytest.raises(LazyReadError, match=r"\(ValueError: .*its file may be damaged") as caught:
            read_planes(lazy)
        assert list(caught.value.slices) == [2, 3]
        assert type(caught.value.__cause__) is ValueError and caught.value.__cause__.__traceback__ is not None


def test_a_value_error_a_reader_raises_through_a_numpy_function_is_still_a_damaged_chunk():
    # review 3 of s64, 8: the reader's frame was the innermost only; a reader calling np.reshape (a Python function of
    # numpy's) made numpy's frame the innermost, and a chunk of the wrong size was a program's error, with a traceback
    codec = {"__name__": "zarr._fake_codec", "np": np}  # (a reader's module, as its frames name it)
    exec(compile("def decode(buffer):\n    return np.reshape(buffer, (2, 8, 8))\n", "<fake zarr codec>", "exec"), codec)
    lazy = da.zeros((4, 8, 8), chunks=(2, 8, 8), dtype=np.uint8).map_blocks(
        lambda block, block_info=None: codec["decode"](block.ravel()[: 100 if block_info[0]["chunk-location"][0] else None]),
        dtype=np.uint8)
    with pytest.raises(LazyReadError, match=r"\(ValueError: cannot reshape .*its file may be damaged") as caught:
        read_planes(lazy)
    assert list(caught.value.slices) == [2, 3]
    with pytest.raises(ValueError) as caught:  # (control: a filter's own np.reshape stays a program's error)
        read_planes(da.zeros((4, 8, 8), chunks=(2, 8, 8)).map_blocks(lambda block: np.reshape(block, (3, -1)), dtype=float))
    assert not isinstance(caught.value, LazyReadError)
