"""Malformed and hostile input files: each gets one clear line (what is wrong with which file, what to do), never a
crash, a traceback, a hang or memory filled by a header that declares more pixels than the file holds. (Model files:
test_malformed_model_files.py.)

Memory-dependent cases patch :func:`napari_unet.hardware.available_memory_bytes` and
:func:`~napari_unet.hardware.memory_capacity` (or point them at a fake /proc and cgroup tree), so they do not depend on
the machine; the declared sizes of the cases that old code would have tried to allocate are beyond any machine's memory (numpy
refuses them at once).
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet import _reader, hardware
from napari_unet.tiff_io import TiffReadError, is_lazy, read_folder, read_tiff
from napari_unet.zarr_io import ZarrReadError, read_zarr

MB = 2**20


def hand_made_tiff(path, pages):
    """A little-endian classic TIFF of single-strip grayscale pages, written by hand so that a header may declare what
    the file does not hold. ``pages``: (width, height, bits, compression, strip bytes or (offset, count))."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    link = 4
    for width, height, bits, compression, strip in pages:
        if isinstance(strip, tuple):
            offset, count = strip
        else:
            offset, count = len(out), len(strip)
            out += strip + b"\x00" * (len(strip) % 2)
        tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, compression), (262, 3, 1), (273, 4, offset),
                (277, 3, 1), (278, 4, height), (279, 4, count)]
        struct.pack_into("<I", out, link, len(out))
        out += struct.pack("<H", len(tags))
        for code, kind, value in tags:
            out += struct.pack("<HHIHH", code, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", code, kind, 1, value)
        link = len(out)
        out += b"\x00\x00\x00\x00"
    path.write_bytes(bytes(out))
    return path


def huge_tiff(path):
    """1000 pages of 200000 x 200000 uint16 (80 GB each, 80 TB in all) in 100 KB: one 16-byte strip they all share."""
    return hand_made_tiff(path, [(200000, 200000, 16, 8, (8, 16))] * 1000)


def zlib_bomb(path, n_pages, size):
    """``n_pages`` valid pages of ``size`` x ``size`` zeros (uint8) sharing one zlib stream."""
    stream = zlib.compress(bytes(size * size), 9)
    return hand_made_tiff(path, [(size, size, 8, 8, stream)] + [(size, size, 8, 8, (8, len(stream)))] * (n_pages - 1))


@pytest.fixture
def memory(monkeypatch):
    """Set the memory the system reports as available now, and its capacity (memory and swap; the same by default):
    ``memory(bytes, capacity=None)``."""
    def set_available(n_bytes, capacity=None):
        monkeypatch.setattr(hardware, "available_memory_bytes", lambda: n_bytes)
        if hasattr(hardware, "MemoryCapacity"):  # (so that these tests show what f550658's code did)
            whole = hardware.MemoryCapacity(n_bytes if capacity is None else capacity, "this machine's memory and swap")
            monkeypatch.setattr(hardware, "memory_capacity", lambda: whole)
    return set_available


@pytest.fixture
def notes(monkeypatch):
    """napari notifications of the reader, as (severity, message)."""
    seen: list = []
    monkeypatch.setattr(_reader, "_notify", lambda severity, message: seen.append((severity, message)))
    return seen


# ------------------------------------------------------------------------------------------------ TIFF


def test_a_header_declaring_terabytes_is_refused_before_anything_is_allocated(tmp_path, memory):
    # old: "not enough memory to read the image" (numpy's refusal), no size, nothing to do; below the machine's memory
    # numpy does not refuse, and tifffile filled the array
    memory(16 * 2**30)
    path = huge_tiff(tmp_path / "huge.tif")
    with pytest.raises(TiffReadError) as whole:
        read_tiff(path)
    assert "reading its 1000 x 200000 x 200000 uint16 pixels whole needs 72.8 TB of memory, more than the 16.0 GB of this " \
           "machine's memory and swap (the file holds 111 KB: its header may be damaged or forged); use an intact copy, or crop it" in str(whole.value), whole.value
    assert "\n" not in str(whole.value)
    with pytest.raises(TiffReadError, match=r"one slice of 200000 x 200000 uint16 pixels needs 74.5 GB of memory, more "
                                            r"than the 16.0 GB of this machine's memory and swap .*may be damaged or forged\); use an intact copy, "
                                            r"or cut it into smaller images$"):
        read_tiff(path, lazy=True)  # label detection reads the first page: 80 GB


def test_the_command_line_names_the_declared_size_in_one_line(tmp_path, memory, capsys):
    from napari_unet.cli import main

    memory(16 * 2**30)
    path = huge_tiff(tmp_path / "huge.tif")
    code = main(["evaluate", str(path), str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "prediction huge.tif: one slice of 200000 x 200000 uint16 pixels needs 74.5 GB" in err, err


def test_a_stack_that_does_not_fit_in_memory_is_read_lazily_or_refused_not_read(tmp_path, memory):
    # 16 valid pages of 512 x 512 zeros (4 MB) in a file of a few KB: a "TIFF bomb" (or a real stack) larger than the
    # memory left was read whole below the lazy threshold
    path = zlib_bomb(tmp_path / "bomb.tif", 16, 512)
    assert os.path.getsize(path) < 100_000
    memory(2 * MB)
    lazy = read_tiff(path, lazy=True, lazy_from_bytes=2**40)  # "read it whole if small": it does not fit
    assert is_lazy(lazy.data) and lazy.data.shape == (16, 512, 512)
    with pytest.raises(TiffReadError, match=r"reading its 16 x 512 x 512 uint8 pixels whole needs 4.0 MB of memory, more "
                                            r"than the 2.0 MB of this machine's memory and swap \(the file holds 2.1 KB: its "
                                            r"header may be damaged or forged\); use an intact copy, or crop it or save it as "
                                            r"smaller files$"):
        read_tiff(path)
    memory(64 * MB)
    assert read_tiff(path).data.shape == (16, 512, 512)  # it fits: read as before


def test_a_read_that_fits_the_machine_but_not_the_memory_free_now_goes_ahead_with_a_warning(tmp_path, memory):
    # old: refused ("needs 4.0 MB of memory, and 2.0 MB are available"): a legitimate 2-3 GB plane on a busy laptop,
    # which the system can make room for (swap, caches, idle programs), could not be opened at all
    path = zlib_bomb(tmp_path / "stack.tif", 16, 512)
    memory(2 * MB, capacity=2**30)
    with pytest.warns(hardware.LowMemoryWarning, match=r"reading its 16 x 512 x 512 uint8 pixels whole needs 4.0 MB of "
                                                      r"memory, more than 3/4 of the 2.0 MB available now .*reading it anyway"):
        assert read_tiff(path).data.shape == (16, 512, 512)
    assert is_lazy(read_tiff(path, lazy=True, lazy_from_bytes=2**40).data)  # lazily where the caller allows it
    memory(4.5 * MB, capacity=2**30)  # 4 MB fit in what is available, not in 3/4 of it: the message says so
    with pytest.warns(hardware.LowMemoryWarning, match=r"needs 4.0 MB of memory, more than 3/4 of the 4.5 MB available"):
        read_tiff(path)
    path = tmp_path / "stack.zarr"
    zarr.open_array(str(path), mode="w", shape=(4, 256, 256), dtype="u1", chunks=(1, 256, 256), zarr_format=3)
    memory(100_000, capacity=2**30)
    with pytest.warns(hardware.LowMemoryWarning, match=r"stack.zarr: reading its 4 x 256 x 256 uint8 pixels whole"):
        assert read_zarr(path, lazy=False).data.shape == (4, 256, 256)


def test_a_sparse_mask_packed_past_zlibs_limit_by_zstd_is_not_called_forged(tmp_path, memory):
    # old: "(the file holds 37.4 KB: its header may be damaged or forged); use an intact copy" for a real stroke mask
    # saved with zstd (1753:1); zstd and LZMA pack nearly empty masks past zlib's 1032:1
    mask = np.zeros((4, 2048, 2048), np.uint8)
    mask[:, 1000:1003, 200:1800] = 1
    path = tmp_path / "strokes.tif"
    tifffile.imwrite(path, mask, compression="zstd", photometric="minisblack")
    assert mask.nbytes > 1032 * os.path.getsize(path)
    memory(8 * MB)
    with pytest.raises(TiffReadError) as refused:
        read_tiff(path)
    assert "needs 16.0 MB of memory" in str(refused.value) and "forged" not in str(refused.value), refused.value
    assert "use an intact copy" not in str(refused.value)


def test_a_container_whose_memory_is_all_page_cache_refuses_nothing(tmp_path, monkeypatch):
    # the real measurement (a fake /proc and cgroup v2 tree): a 1 GB limit, usage at the limit, 900 MB of it inactive
    # file cache, which the kernel reclaims. Old: 0 bytes "available", every file refused ("one slice of 64 x 64 uint8
    # pixels needs 4.0 KB of memory, and 0 bytes are available")
    (tmp_path / "job").mkdir()
    for name, text in {"memory.max": "1073741824", "memory.current": "1073741824", "memory.swap.max": "0",
                       "memory.stat": "anon 100000000\nfile 973741824\ninactive_file 943718400\n"}.items():
        (tmp_path / "job" / name).write_text(text + "\n")
    (tmp_path / "cgroup").write_text("0::/job\n")
    (tmp_path / "meminfo").write_text("MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\nSwapTotal: 0 kB\n")
    where = dict(meminfo=str(tmp_path / "meminfo"), proc_cgroup=str(tmp_path / "cgroup"), cgroup_root=str(tmp_path))
    monkeypatch.setattr(hardware, "available_memory_bytes",
                        functools.partial(hardware.available_memory_bytes, **where) if hasattr(hardware, "memory_capacity")
                        else lambda: hardware._cgroup_memory_left(where["proc_cgroup"], where["cgroup_root"]))
    if hasattr(hardware, "memory_capacity"):  # (f550658's code had none)
        monkeypatch.setattr(hardware, "memory_capacity", functools.partial(hardware.memory_capacity, **where))
    stack = np.arange(8 * 64 * 64, dtype=np.uint8).reshape(8, 64, 64)
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        read = read_tiff(tmp_path / "stack.tif", lazy=True, lazy_from_bytes=2**40)
    assert not is_lazy(read.data)
    np.testing.assert_array_equal(read.data, stack)


def test_an_imagej_stack_larger_than_memory_is_mapped_plane_by_plane(tmp_path, memory):
    # one page describes the whole contiguous stack: the check is of a plane, not of the stack
    stack = np.arange(8 * 64 * 64, dtype=np.uint16).reshape(8, 64, 64)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True)
    memory(40_000)  # a plane (8 KB) fits, the stack (64 KB) does not
    read = read_tiff(tmp_path / "ij.tif", lazy=True, lazy_from_bytes=2**40)
    assert isinstance(read.data, np.memmap)
    np.testing.assert_array_equal(read.data[5], stack[5])


def test_a_folder_of_slices_that_does_not_fit_is_read_lazily_or_refused(tmp_path, memory):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(8):
        tifffile.imwrite(folder / f"z{z}.tif", np.full((256, 256), z, np.uint8), compression="zlib")
    memory(300_000)  # one slice fits, the eight do not
    assert is_lazy(read_folder(folder, lazy=True, lazy_from_bytes=2**40).data)
    with pytest.raises(TiffReadError, match=r"slices: reading its 8 x 256 x 256 uint8 pixels whole needs 512 KB of memory, "
                                            r"more than the 293 KB of this machine's memory and swap; crop it or save it "
                                            r"as smaller files$"):
        read_folder(folder)
    memory(300_000, capacity=2**30)  # the machine could hold them
    with pytest.warns(hardware.LowMemoryWarning, match="more than 3/4 of the 293 KB available now"):
        assert read_folder(folder).data.shape == (8, 256, 256)


def test_a_damaged_tiff_says_what_to_do(tmp_path):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64), compression="zlib",
                     photometric="minisblack")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: os.path.getsize(full) // 2])
    with pytest.raises(TiffReadError, match=r"cut.tif: corrupt .*; save it again from the program that made it, or use an "
                                            r"intact copy$"):
        read_tiff(cut)


# ------------------------------------------------------------------------------------------------ napari reader


@pytest.mark.parametrize("case, words", [
    ("zero.tif", "holds no pixels (shape (256, 0)); nothing to show"),
    ("empty.zarr", "holds no pixels (shape (0, 64, 64)); nothing to show"),
    ("complex.tif", "holds values of type complex64, which napari cannot show as an image; save it as integers or "
                    "floating-point numbers, e.g. numpy.abs of the complex values"),
    ("complex.zarr", "holds values of type complex64"),
    ("dates.zarr", "holds values of type datetime64[s]"),
    ("text.zarr", "which napari cannot show as an image"),
    ("line.zarr", "holds a 1-D array of shape (1000,), not an image; images have at least two axes (Y, X)"),
])
def test_the_reader_declines_what_napari_fails_on_with_one_clear_line(tmp_path, notes, case, words):
    # old: the reader returned these, and napari failed as it added the layer (NotImplementedError without a message,
    # "cannot convert float NaN to integer", "'NoneType' object has no attribute 'decode'"); a 1-D store: IndexError
    path = tmp_path / case
    if case == "zero.tif":
        hand_made_tiff(path, [(0, 256, 8, 1, b"")])
    elif case == "complex.tif":
        tifffile.imwrite(path, np.ones((2, 32, 32), np.complex64))
    else:
        shape, dtype = {"empty.zarr": ((0, 64, 64), "u1"), "complex.zarr": ((2, 32, 32), "c8"),
                        "dates.zarr": ((2, 32, 32), "M8[s]"), "text.zarr": ((2, 32, 32), str),
                        "line.zarr": ((1000,), "u1")}[case]
        zarr.open_array(str(path), mode="w", shape=shape, dtype=dtype, zarr_format=2)
    assert _reader.get_reader(str(path)) is None
    assert len(notes) == 1 and notes[0][0] == "error" and case in notes[0][1] and words in notes[0][1], notes


def test_the_reader_declines_slices_larger_than_memory(tmp_path, notes, memory):
    # a store of a few files declaring 100000 x 100000 slices (unwritten chunks read as the fill value): napari read a
    # whole slice to show it
    path = tmp_path / "huge.zarr"
    zarr.open_array(str(path), mode="w", shape=(3, 100000, 100000), dtype="u2", chunks=(1, 4096, 4096), zarr_format=3)
    memory(8 * 2**30)
    assert _reader.get_reader(str(path)) is None
    assert notes == [("error", f"napari-unet: {path}: one slice of 100000 x 100000 uint16 pixels, which napari reads whole "
                               "to show it, needs 18.6 GB of memory, more than the 8.0 GB of this machine's memory and "
                               "swap; cut it into smaller images")]


def test_the_reader_shows_a_slice_that_fits_the_machine_but_not_the_memory_free_now_with_a_warning(tmp_path, notes, memory):
    # old: refused ("needs 18.6 GB of memory, and 8.0 GB are available") on a machine of 32 GB that could hold it
    path = tmp_path / "big.zarr"
    zarr.open_array(str(path), mode="w", shape=(3, 100000, 100000), dtype="u2", chunks=(1, 4096, 4096), zarr_format=3)
    memory(8 * 2**30, capacity=32 * 2**30)
    [(data, _, layer_type)] = _reader.get_reader(str(path))(str(path))
    assert layer_type == "image" and is_lazy(data)
    assert notes == [("warning", f"napari-unet: {path}: one slice of 100000 x 100000 uint16 pixels, which napari reads "
                                 "whole to show it, needs 18.6 GB of memory, more than 3/4 of the 8.0 GB available now; "
                                 "showing it anyway (close other programs if the system slows down)")]


@pytest.mark.parametrize("kind", ["tif", "zarr"])
def test_labels_too_large_for_memory_open_as_a_lazy_image_with_a_warning(tmp_path, notes, memory, monkeypatch, kind):
    # old: a lazily read label file was read again whole (and mapped to display values), whatever its size: a store
    # declaring 1000 x 100000 x 100000 labels computed chunks for 100 s and filled memory
    labels = np.full((5, 64, 64), 255, np.uint8)
    labels[:, ::8] = 0
    path = tmp_path / f"labels.{kind}"
    if kind == "tif":
        monkeypatch.setattr(_reader, "LAZY_IMAGE_BYTES", 1000)
        tifffile.imwrite(path, labels, compression="zlib", photometric="minisblack")
    else:
        zarr.open_array(str(path), mode="w", shape=labels.shape, dtype="u1", chunks=(1, 64, 64), zarr_format=2)[:] = labels
    memory(20_000, capacity=2**30)  # a slice (4 KB) fits, the labels and their display copy (40 KB) do not
    [(data, kwargs, layer_type)] = _reader.get_reader(str(path))(str(path))
    assert layer_type == "image" and is_lazy(data) and data.shape == labels.shape
    assert [severity for severity, _ in notes] == ["warning"]
    assert "labels looks like labels, but opening them as a labels layer needs 40.0 KB of memory" in notes[0][1], notes
    memory(2**30)
    [(_, _, layer_type)] = _reader.get_reader(str(path))(str(path))
    assert layer_type == "labels"


def test_read_zarr_whole_refuses_what_does_not_fit_before_reading(tmp_path, memory):
    path = tmp_path / "stack.zarr"
    zarr.open_array(str(path), mode="w", shape=(4, 256, 256), dtype="u1", chunks=(1, 256, 256), zarr_format=3)
    memory(100_000)
    assert read_zarr(path).data.shape == (4, 256, 256)  # lazy: nothing read
    with pytest.raises(ZarrReadError, match=r"stack.zarr: reading its 4 x 256 x 256 uint8 pixels whole needs 256 KB of "
                                            r"memory, more than the 97.7 KB of this machine's memory and swap; crop it or "
                                            r"open it lazily"):
        read_zarr(path, lazy=False)
