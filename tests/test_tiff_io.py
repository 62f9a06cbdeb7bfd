"""tiff_io: axes, physical size, label metadata, folders of slices, errors and atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from _helpers import PlanesOnly
from napari_unet import tiff_io
from napari_unet.tiff_io import (
    TiffReadError,
    detect_labels,
    distinct_values,
    name_suggests_labels,
    natural_sort_key,
    read_folder,
    read_slices,
    read_tiff,
    write_tiff,
)

RNG = np.random.default_rng(0)


def em_like(shape=(5, 32, 40)) -> np.ndarray:
    """8-bit image using (nearly) all 256 grey values, like an EM section."""
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------- reading


def test_imagej_hyperstack_axes_spacing_resolution(tmp_path):
    data = RNG.integers(0, 4000, size=(3, 5, 2, 16, 20), dtype=np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "um", "finterval": 0.5},
    )
    tif = read_tiff(path)
    np.testing.assert_array_equal(tif.data, data)
    assert tif.axes == "TZCYX"
    assert tif.scale == pytest.approx((0.5, 2.0, 1.0, 0.5, 0.25))
    assert tif.units == ("s", "µm", None, "µm", "µm")
    assert tif.channel_axis == 2 and not tif.rgb
    assert tif.metadata["format"] == "imagej"
    assert tif.metadata["imagej"]["spacing"] == 2.0
    assert tif.is_labels_hint is False  # 4000 values of uint16 intensities
    assert tif.name == "hyper"


def test_imagej_micron_unit_spelling(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, em_like(), imagej=True, resolution=(10.0, 10.0), metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron"}
    )
    tif = read_tiff(path)
    assert tif.axes == "ZYX"
    assert tif.scale == pytest.approx((0.05, 0.1, 0.1))
    assert tif.units == ("µm", "µm", "µm")


def test_ome_tiff_physical_size_and_channel_names(tmp_path):
    data = RNG.integers(0, 4000, size=(4, 2, 16, 20), dtype=np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path,
        data,
        metadata={
            "axes": "ZCYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.2,
            "PhysicalSizeZ": 1.5,
            "PhysicalSizeZUnit": "nm",
            "Channel": {"Name": ["DAPI", "GFP"]},
        },
    )
    tif = read_tiff(path)
    np.testing.assert_array_equal(tif.data, data)
    assert tif.axes == "ZCYX"
    assert tif.scale == pytest.approx((0.0015, 1.0, 0.2, 0.1))  # nm beside µm in µm: napari draws the numbers alone
    assert tif.units == ("µm", None, "µm", "µm")
    assert tif.metadata["format"] == "ome"
    assert tif.metadata["channel_names"] == ["DAPI", "GFP"]
    assert tif.name == "cells"


def test_plain_multipage_tiff(tmp_path):
    # 6 pages: tifffile would store a (3 or 4, Y, X) array as one page of 3-4 samples
    data = em_like((6, 16, 20))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, metadata=None)  # no description at all
    with tifffile.TiffFile(path) as raw:
        assert len(raw.pages) == 6 and raw.series[0].axes == "IYX"  # generic pages, no axes
    tif = read_tiff(path)
    np.testing.assert_array_equal(tif.data, data)
    assert tif.axes == "ZYX"
    assert tif.scale == (1.0, 1.0, 1.0)
    assert tif.units == (None, None, None)
    assert not tif.has_physical_size
    assert tif.is_labels_hint is False


def test_a_file_of_several_image_series_is_refused_not_cut_to_the_first(tmp_path):
    # an OME-TIFF of two positions, or a preview stored before the image, was read as its first series only
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(em_like((2, 16, 20)))
        tif.write(em_like((5, 16, 20)))
    with tifffile.TiffFile(path) as raw:
        assert len(raw.series) == 2
    for lazy in (False, True):
        with pytest.raises(TiffReadError, match=r"holds 2 image series of shapes \(2, 16, 20\), \(5, 16, 20\)"):
            read_tiff(path, lazy=lazy, lazy_from_bytes=0)
    thumbnail = tmp_path / "thumbnail.tif"  # a stack and its reduced-resolution preview: one image
    with tifffile.TiffWriter(thumbnail) as tif:
        tif.write(em_like((3, 16, 20)), photometric="minisblack")
        tif.write(em_like((4, 5)), subfiletype=1)
    assert read_tiff(thumbnail).data.shape == (3, 16, 20)
    folder = tmp_path / "slices"
    folder.mkdir()
    os.replace(path, folder / "slice_1.tif")
    with pytest.raises(TiffReadError, match="2 image series"):
        read_folder(folder, lazy=True, lazy_from_bytes=0)


def test_a_stack_written_one_slice_at_a_time_is_read_as_a_stack(tmp_path):
    # tifffile.imwrite(..., append=True) per slice makes one series per slice: it was refused as "5 image series"
    stack = em_like((5, 16, 20))
    for compression in (None, "zlib"):
        path = tmp_path / f"appended-{compression}.tif"
        for plane in stack:
            tifffile.imwrite(path, plane, append=True, compression=compression)
        for lazy in (False, True):
            read = read_tiff(path, lazy=lazy, lazy_from_bytes=0)
            assert read.axes == "ZYX" and np.array_equal(np.asarray(read.data), stack)
    for name, second in (("shapes", stack[0, :8]), ("dtypes", stack[0].astype(np.uint16))):  # still several images
        mixed = tmp_path / f"mixed-{name}.tif"
        tifffile.imwrite(mixed, stack[0], append=True)
        tifffile.imwrite(mixed, second, append=True)
        with pytest.raises(TiffReadError, match="2 image series"):
            read_tiff(mixed)
    plain = tmp_path / "plain.tif"  # a plain multi-page TIFF (no shape metadata) stays memory-mapped when lazy
    tifffile.imwrite(plain, stack[:3], metadata=None, photometric="minisblack")
    assert isinstance(read_tiff(plain, lazy=True, lazy_from_bytes=0).data, np.memmap)


def test_plain_2d_with_resolution_in_centimetres(tmp_path):
    path = tmp_path / "section.tif"
    # 20000 px/cm = 0.5 µm/px in X, 10000 px/cm = 1 µm/px in Y
    tifffile.imwrite(path, em_like((16, 20)), resolution=(20000, 10000), resolutionunit="CENTIMETER")
    tif = read_tiff(path)
    assert tif.axes == "YX"
    assert tif.scale == pytest.approx((1.0, 0.5))
    assert tif.units == ("µm", "µm")


def test_inch_resolution_converted_but_72_dpi_default_ignored(tmp_path):
    real = tmp_path / "real.tif"
    tifffile.imwrite(real, em_like((8, 8)), resolution=(25400.0, 12700.0), resolutionunit="INCH")
    assert read_tiff(real).scale == pytest.approx((2.0, 1.0))  # (Y, X) µm
    screen = tmp_path / "screenshot.tif"
    tifffile.imwrite(screen, em_like((8, 8)), resolution=(72.0, 72.0), resolutionunit="INCH")
    tif = read_tiff(screen)
    assert tif.scale == (1.0, 1.0) and tif.units == (None, None)


def test_multichannel_imagej_and_rgb(tmp_path):
    path = tmp_path / "two_channels.tif"
    data = RNG.integers(0, 1000, size=(2, 16, 20), dtype=np.uint16)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    tif = read_tiff(path)
    assert tif.axes == "CYX" and tif.channel_axis == 0

    rgb_path = tmp_path / "photo.tif"
    rgb = RNG.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    tifffile.imwrite(rgb_path, rgb, photometric="rgb")
    tif = read_tiff(rgb_path)
    assert tif.axes == "YXS" and tif.rgb and tif.channel_axis is None
    np.testing.assert_array_equal(tif.data, rgb)


# ------------------------------------------------------------------------------ label hints


def test_label_detection_rules():
    assert detect_labels(np.array([[0, 255], [255, 0]], np.uint8))  # two values
    assert detect_labels(RNG.integers(0, 10, size=(20, 20)).astype(np.uint8))  # OCT layers 0..9
    assert not detect_labels(em_like())  # 8-bit EM has ~256 values
    assert detect_labels(RNG.random((8, 8)) > 0.5)  # a boolean mask
    # float data are never labels by value count ...
    assert not detect_labels(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))
    # ... but integer data named like labels are, even with many values (instance masks: regions of one value)
    instances = np.kron(np.arange(400, dtype=np.uint16).reshape(20, 20), np.ones((6, 6), np.uint16))
    assert detect_labels(instances, "nuclei_mask.tif") and detect_labels(instances[None], "nuclei_mask.tif")
    assert detect_labels(np.stack([np.zeros_like(instances), instances, instances]), "nuclei_mask.tif")  # empty first slice
    seeds = np.zeros((120, 120), np.uint16)
    seeds.flat[::97] = np.arange(1, seeds.size // 97 + 2)[: seeds.flat[::97].size]  # 149 one-pixel seeds
    assert detect_labels(seeds, "seeds_mask.tif")
    # a 16-bit intensity image of hundreds of grey levels is no mask, whatever its name
    em16 = em_like().astype(np.uint16) * 3
    for name in ("em_for_segmentation.tif", "masked_em.tif", "oct_segmentation_input.tif"):
        assert not detect_labels(em16, name) and not detect_labels(em16[None], name)
    assert detect_labels(em_like(), "x.tif", {"class_values": [0, 255]})
    assert not detect_labels(em_like(), "scans-for-segmentation.tif")  # an 8-bit image using its whole range
    assert detect_labels(RNG.integers(0, 100, size=(20, 20)).astype(np.uint8), "cells_seg.tif")


def test_label_detection_few_grey_levels():
    """A textured image quantised to 8 or 16 grey levels is no label image: its values change from pixel to pixel.
    (Posterised to 4 levels or fewer, it may hold them in regions: ISBI slice 0 at 4 levels does, 0.74 of them.)"""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(RNG.random((3, 256, 256)), (0, 1, 1))
    noisy = smooth + RNG.normal(0, 0.05, smooth.shape)
    scan = np.clip((noisy - noisy.min()) / np.ptp(noisy) * 255, 0, 255).astype(np.uint8)
    for levels in (16, 8):
        quantised = (scan // (256 // levels)).astype(np.uint8)
        assert len(np.unique(quantised)) <= 16
        assert not detect_labels(quantised) and not detect_labels(quantised[0])
    # labels of the same size and value count are still labels: layers down Y, blobs, sparse seeds
    layers = np.repeat(np.arange(10, dtype=np.uint8), 26)[:256, None] * np.ones((1, 256), np.uint8)
    assert detect_labels(layers) and detect_labels(np.stack([layers] * 3))
    assert detect_labels(((ndimage.gaussian_filter(smooth, (0, 4, 4)) > 0.5) * 255).astype(np.uint8))
    seeds = np.zeros((256, 256), np.uint8)
    seeds[::40, ::40] = 3
    assert detect_labels(seeds)
    # planes under 64 x 64 are judged by their value count (too few pixels for the region test); two values are a
    # mask, also of thin traced membranes (a skeleton: few runs of one value) and bool noise
    assert detect_labels((scan[0, :32, :32] // 32).astype(np.uint8))
    assert detect_labels(RNG.random((256, 256)) > 0.5)
    from skimage.morphology import skeletonize

    membranes = skeletonize(ndimage.gaussian_filter(RNG.random((256, 256)), 3) > 0.5) | skeletonize(
        ndimage.gaussian_filter(RNG.random((256, 256)), 3) < 0.5)
    assert detect_labels(np.where(membranes, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("train-labels.tif", True),
        ("mask_01.tif", True),
        ("gt.tif", True),
        ("stack_GT.tiff", True),
        ("cells_seg.tif", True),
        ("segmentation.tif", True),
        ("train-volume.tif", False),
        ("length.tif", False),  # 'gt' inside a word is no hint
        ("right_eye.tif", False),
        ("unlabeled-bscans.tif", False),  # opened as labels with 256 "classes"
        ("duke-dme-unlabelled.tif", False),
        ("run_labels.tif", True),  # "un" inside a word is no negation
        ("rerun-labels.tif", True),
    ],
)
def test_name_hints(name, expected):
    assert name_suggests_labels(name) is expected


def test_distinct_values_limits_and_dtypes():
    assert distinct_values(np.array([3, 1, 3, 2], np.uint8)) == [1, 2, 3]
    assert distinct_values(np.array([-5, 7, 7], np.int16)) == [-5, 7]
    assert distinct_values(np.arange(100, dtype=np.int64), limit=16) is None
    assert distinct_values(np.array([True, False])) == [0, 1]
    assert distinct_values(np.zeros(3, np.float32)) is None


# ----------------------------------------------------------------------------------- errors


def _assert_one_line_error(path, match):
    with pytest.raises(TiffReadError, match=match) as info:
        read_tiff(path)
    message = str(info.value)
    assert "\n" not in message and str(os.path.basename(path)) in message
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    _assert_one_line_error(tmp_path / "nothing.tif", "not found")


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image\n")
    _assert_one_line_error(path, "not a TIFF")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    _assert_one_line_error(empty, "not a TIFF")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_tiff(tmp_path, fraction):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, em_like((4, 64, 64)), imagej=True, compression="zlib")
    raw = full.read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    _assert_one_line_error(path, "corrupt")


def test_a_read_in_another_thread_does_not_leak_its_errors_into_this_one(tmp_path, monkeypatch):
    """tifffile logs (not raises) some decoding errors on a logger shared by all threads."""
    import logging
    import threading

    for name in ("good.tif", "bad.tif"):
        tifffile.imwrite(tmp_path / name, em_like((2, 32, 32)))
    original = tifffile.TiffPageSeries.asarray
    outcome = {}

    def other_read():
        try:
            read_tiff(tmp_path / "bad.tif")
            outcome["bad"] = "read"
        except TiffReadError as exc:
            outcome["bad"] = str(exc)

    def asarray(series, *args, **kwargs):
        if threading.current_thread().name == "other":
            logging.getLogger("tifffile").error("TiffPage 0: decoding failed")  # what a damaged strip logs
        elif "other" not in outcome:  # the good read, half way: another thread reads a damaged file
            outcome["other"] = threading.Thread(target=other_read, name="other")
            outcome["other"].start()
            outcome["other"].join(timeout=1.0)
        return original(series, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", asarray)
    assert read_tiff(tmp_path / "good.tif").data.shape == (2, 32, 32)
    outcome["other"].join(timeout=10)
    assert "corrupt" in outcome["bad"] and "decoding failed" in outcome["bad"]


def test_a_read_hears_only_its_own_thread_and_leaves_the_warning_filters_alone(tmp_path, monkeypatch):
    """Another plugin's plain tifffile read of a damaged file, logged while napari-unet read a good one, made the good
    one "corrupt" (13 of 40 reads); each read muted every warning of every thread, and left them muted for good."""
    import logging
    import threading
    import warnings

    tifffile.imwrite(tmp_path / "good.tif", em_like((2, 32, 32)))
    original = tifffile.TiffPageSeries.asarray
    filters = []

    def asarray(series, *args, **kwargs):
        filters.append(list(warnings.filters))
        neighbour = threading.Thread(target=lambda: logging.getLogger("tifffile").error("invalid page offset 8748"))
        neighbour.start()
        neighbour.join()
        return original(series, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", asarray)
    before = list(warnings.filters)
    assert read_tiff(tmp_path / "good.tif").data.shape == (2, 32, 32)
    assert filters == [before] and list(warnings.filters) == before


def test_garbage_after_tiff_signature(tmp_path):
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00" + bytes(RNG.integers(0, 256, size=600, dtype=np.uint8)))
    _assert_one_line_error(path, "corrupt")


def test_folder_passed_as_file(tmp_path):
    with pytest.raises(TiffReadError, match="folder"):
        read_tiff(tmp_path)


# ---------------------------------------------------------------------------------- folders


def test_natural_sort_key():
    names = ["z10.tif", "z2.tif", "z1.tif", "Z3.tif"]
    assert sorted(names, key=natural_sort_key) == ["z1.tif", "z2.tif", "Z3.tif", "z10.tif"]


def test_read_folder_natural_order(tmp_path):
    slices = {}
    for i in (1, 2, 10, 3):
        slices[i] = np.full((12, 14), i, np.uint16) + RNG.integers(0, 1000, size=(12, 14)).astype(np.uint16)
        tifffile.imwrite(tmp_path / f"slice{i}.tif", slices[i], resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    (tmp_path / "readme.txt").write_text("not a slice")
    (tmp_path / ".slice0.tif.tmp").write_bytes(b"partial")  # hidden temp files are skipped
    (tmp_path / "._slice0.tif").write_bytes(b"resource fork")
    tif = read_folder(tmp_path)
    assert tif.axes == "ZYX"
    assert tif.data.shape == (4, 12, 14)
    for z, i in enumerate([1, 2, 3, 10]):
        np.testing.assert_array_equal(tif.data[z], slices[i])
    assert tif.scale == pytest.approx((1.0, 0.5, 0.5))
    assert tif.units == (None, "µm", "µm")
    assert tif.metadata["format"] == "folder"
    assert [os.path.basename(f) for f in tif.metadata["files"]] == ["slice1.tif", "slice2.tif", "slice3.tif", "slice10.tif"]


def test_read_folder_mismatched_sizes(tmp_path):
    tifffile.imwrite(tmp_path / "a1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "a2.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(TiffReadError, match="same size") as info:
        read_folder(tmp_path)
    assert "a2.tif" in str(info.value) and "\n" not in str(info.value)


def test_read_folder_without_tiffs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(TiffReadError, match="no .tif"):
        read_folder(tmp_path)
    with pytest.raises(TiffReadError, match="not found"):
        read_folder(tmp_path / "missing")


def test_read_slices_of_labels(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"mask_{i}.tif"
        tifffile.imwrite(p, (RNG.random((10, 10)) > 0.5).astype(np.uint8) * 255)
        paths.append(p)
    tif = read_slices(paths)
    assert tif.data.shape == (3, 10, 10) and tif.is_labels_hint


@pytest.mark.parametrize("spacing", [0.0, -2.0, "n/a"])  # 0.0 was skipped before too (falsy): kept as a guard
def test_read_slices_ignores_an_imagej_spacing_that_is_no_size(tmp_path, spacing):
    """A single file ignores such a spacing; a folder of its slices gave napari a Z scale of 0 or a raw ValueError."""
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"s{i}.tif")
        tifffile.imwrite(paths[-1], np.full((8, 8), i, np.uint8), imagej=True, metadata={"spacing": spacing, "unit": "um"})
    tif = read_slices(paths)
    assert tif.data.shape == (2, 8, 8) and tif.scale[0] == 1.0


# ---------------------------------------------------------------------------------- writing


def test_write_read_labels_metadata_imagej(tmp_path):
    labels = RNG.choice(np.array([0, 1, 255], np.uint8), size=(3, 16, 16))
    path = tmp_path / "labels.tif"
    meta = {"class_values": [0, 255], "ignore_value": 1, "class_names": ["membrane", "cell"]}
    assert write_tiff(path, labels, dict(meta, scale=(0.05, 0.004, 0.004), units="µm")) == str(path)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej  # uint8 ZYX: ImageJ hyperstack
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    back = read_tiff(path)
    np.testing.assert_array_equal(back.data, labels)
    assert back.data.dtype == np.uint8
    assert back.metadata["class_values"] == [0, 255]
    assert back.metadata["ignore_value"] == 1
    assert back.metadata["class_names"] == ["membrane", "cell"]
    assert back.is_labels_hint
    assert back.scale == pytest.approx((0.05, 0.004, 0.004))
    assert back.units == ("µm", "µm", "µm")
    # values written out of order come back sorted, each name still beside its value
    write_tiff(path, labels, {"class_values": [255, 0], "class_names": ["cell", "membrane"]})
    back = read_tiff(path)
    assert back.metadata["class_values"] == [0, 255] and back.metadata["class_names"] == ["membrane", "cell"]


def test_write_read_non_imagej_dtype(tmp_path):
    labels = RNG.integers(0, 4, size=(2, 8, 8)).astype(np.int32) * 100_000
    path = tmp_path / "big_labels.tif"
    write_tiff(path, labels, {"class_values": [0, 100_000, 200_000, 300_000], "scale": (2.0, 0.5, 0.5), "units": "nm"})
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_imagej
    back = read_tiff(path)
    np.testing.assert_array_equal(back.data, labels)
    assert back.data.dtype == np.int32
    assert back.axes == "ZYX"
    assert back.metadata["class_values"] == [0, 100_000, 200_000, 300_000]
    assert back.scale == pytest.approx((2.0, 0.5, 0.5))
    assert back.units == ("nm", "nm", "nm")


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])  # ImageJ description / tifffile JSON description
def test_write_read_prediction_with_reviewed_mask(tmp_path, dtype):
    reviewed = np.zeros((3, 40, 50), bool)
    reviewed[1, 5:9, 7:30] = True
    reviewed[2, -1, -1] = True
    path = write_tiff(tmp_path / "pred.tif", np.ones((3, 40, 50), dtype), {"class_values": [1], "predicted_from": "EM", "reviewed": reviewed})
    back = read_tiff(path)
    assert back.metadata["predicted_from"] == "EM"
    np.testing.assert_array_equal(back.metadata["reviewed"], reviewed)
    assert back.metadata["reviewed"].dtype == bool
    with pytest.raises(ValueError, match="reviewed mask"):
        write_tiff(tmp_path / "bad.tif", np.ones((3, 40, 50), dtype), {"predicted_from": "EM", "reviewed": reviewed[0]})
    assert not (tmp_path / "bad.tif").exists()


def test_damaged_reviewed_mask_is_dropped():
    mask = np.arange(77).reshape(7, 11) % 3 == 0
    entry = tiff_io.encode_mask(mask)
    np.testing.assert_array_equal(tiff_io.decode_mask(entry, (7, 11)), mask)
    assert tiff_io.decode_mask(entry, (11, 7)) is None  # another shape
    assert tiff_io.decode_mask({**entry, "zlib_bits": entry["zlib_bits"][:-8]}, (7, 11)) is None  # truncated
    assert tiff_io.decode_mask({**entry, "zlib_bits": "not base64!"}, (7, 11)) is None
    assert tiff_io.decode_mask({"shape": [7, 11]}, (7, 11)) is None
    assert tiff_io.decode_mask("text", (7, 11)) is None


def test_write_image_without_metadata_roundtrip(tmp_path):
    data = RNG.random((2, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "probabilities.tiff"
    write_tiff(path, data, {"axes": "ZCYX"})
    back = read_tiff(path)
    np.testing.assert_array_equal(back.data, data)
    assert back.axes == "ZCYX"
    assert "class_values" not in back.metadata
    assert not back.is_labels_hint


def test_written_file_has_normal_permissions(tmp_path):
    path = tmp_path / "perm.tif"
    write_tiff(path, np.zeros((4, 4), np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~umask)  # not mkstemp's 0600


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    original = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_tiff(path, original)
    before = path.read_bytes()

    def failing_imwrite(fh, data, **kwargs):
        fh.write(b"II*\x00 half written")  # a partial file ...
        raise OSError("disk full")  # ... then the failure

    monkeypatch.setattr(tiff_io.tifffile, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(path, np.zeros((8, 8), np.uint8))
    assert path.read_bytes() == before  # previous file untouched
    assert sorted(os.listdir(tmp_path)) == ["labels.tif"]  # no temporary file left
    monkeypatch.undo()
    np.testing.assert_array_equal(read_tiff(path).data, original)


def test_write_rejects_unwritable_arrays_without_leftovers(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_tiff(tmp_path / "bad.tif", np.array([["a", "b"], ["c", "d"]], dtype=object))
    with pytest.raises(ValueError, match="axes"):
        write_tiff(tmp_path / "bad.tif", np.zeros((2, 4, 4), np.uint8), {"axes": "YX"})
    assert os.listdir(tmp_path) == []


def test_write_interrupted_by_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    def interrupted(fh, data, **kwargs):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tiff_io.tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_tiff(tmp_path / "new.tif", np.zeros((4, 4), np.uint8))
    assert os.listdir(tmp_path) == []


def test_large_arrays_are_written_as_bigtiff_with_their_metadata(tmp_path, monkeypatch):
    import napari_unet.tiff_io as tiff_io

    monkeypatch.setattr(tiff_io, "BIGTIFF_BYTES", 1000)  # stands for 4 GiB
    probabilities = RNG.random((2, 2, 16, 16)).astype(np.float32)
    path = tmp_path / "probs.tif"
    write_tiff(path, probabilities, {"axes": "ZCYX", "class_values": [0, 255], "scale": (0.05, 0.004, 0.004), "units": "µm"})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and not tif.is_imagej
    back = read_tiff(path)
    np.testing.assert_array_equal(back.data, probabilities)
    assert back.axes == "ZCYX" and back.metadata["class_values"] == [0, 255]
    assert back.scale[0] == pytest.approx(0.05) and back.scale[-1] == pytest.approx(0.004)


# ----------------------------------------------------------------------------------- data larger than memory


@pytest.mark.parametrize(
    "kwargs, kind",
    [({}, np.memmap), ({"imagej": True, "metadata": {"axes": "ZYX", "spacing": 2.0}, "resolution": (4.0, 4.0)}, np.memmap), ({"compression": "zlib"}, "dask")],
)
def test_lazy_reads_give_the_pixels_and_metadata_of_eager_reads(tmp_path, monkeypatch, kwargs, kind):
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # these files are small
    image = em_like((5, 48, 40))
    tifffile.imwrite(tmp_path / "stack.tif", image, photometric="minisblack", **kwargs)
    eager, lazy = read_tiff(tmp_path / "stack.tif"), read_tiff(tmp_path / "stack.tif", lazy=True)
    if kind == "dask":
        assert type(lazy.data).__module__.startswith("dask") and lazy.data.chunksize == (1, 48, 40)
    else:
        assert isinstance(lazy.data, kind)
    np.testing.assert_array_equal(np.asarray(lazy.data[3]), image[3])
    np.testing.assert_array_equal(np.asarray(lazy.data), image)
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", image.nbytes + 1)  # smaller data are read at once
    assert type(read_tiff(tmp_path / "stack.tif", lazy=True).data) is np.ndarray
    assert (lazy.axes, lazy.scale, lazy.units, lazy.is_labels_hint) == (eager.axes, eager.scale, eager.units, eager.is_labels_hint)
    assert lazy.metadata == eager.metadata


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_lazy_folder_reads_each_slice_when_it_is_indexed(tmp_path, monkeypatch, compression):
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # these files are small
    image = em_like((3, 32, 32))
    for z in range(3):
        tifffile.imwrite(tmp_path / f"s{z}.tif", image[z], compression=compression)
    real_read, real_read_slice, reads = tiff_io.read_tiff, tiff_io._read_slice, []
    monkeypatch.setattr(tiff_io, "read_tiff", lambda path, **kwargs: reads.append(path.name) or real_read(path, **kwargs))
    monkeypatch.setattr(tiff_io, "_read_slice", lambda path, dtype: reads.append(path.name) or real_read_slice(path, dtype))
    lazy = read_folder(tmp_path, lazy=True)
    assert type(lazy.data).__module__.startswith("dask") and lazy.axes == "ZYX"
    assert reads == ["s0.tif"], "only the first slice is read when the folder is opened"
    np.testing.assert_array_equal(np.asarray(lazy.data[1]), image[1])
    assert reads == ["s0.tif", "s1.tif"]
    np.testing.assert_array_equal(np.asarray(lazy.data), image)
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", image.nbytes + 1)
    assert type(read_folder(tmp_path, lazy=True).data) is np.ndarray
    assert lazy.is_labels_hint is False and read_folder(tmp_path).is_labels_hint is False


def test_a_damaged_page_of_a_lazy_read_is_reported_when_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # these files are small
    image = em_like((4, 64, 64))
    tifffile.imwrite(tmp_path / "stack.tif", image, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray((tmp_path / "stack.tif").read_bytes())
    raw[offset : offset + count] = bytes(count)  # zeros are not a zlib stream
    (tmp_path / "stack.tif").write_bytes(bytes(raw))
    lazy = read_tiff(tmp_path / "stack.tif", lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data[1]), image[1])
    with pytest.raises(TiffReadError, match="corrupt"):
        np.asarray(lazy.data[2])


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_tiff_read_lazily_fails_clearly_when_opened_or_read(tmp_path, monkeypatch, fraction):
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # these files are small
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, em_like((4, 64, 64)), imagej=True, compression="zlib")
    path = tmp_path / "truncated.tif"
    path.write_bytes(full.read_bytes()[: int(full.stat().st_size * fraction)])
    with pytest.raises(TiffReadError, match="corrupt"):
        np.asarray(read_tiff(path, lazy=True).data)


def test_arrays_larger_than_memory_are_written_a_page_at_a_time(tmp_path):
    labels = RNG.choice(np.array([0, 255], np.uint8), size=(4, 32, 24))
    source = PlanesOnly(labels)
    write_tiff(tmp_path / "labels.tif", source, {"class_values": [0, 255], "scale": (2.0, 0.5, 0.5), "unit": "µm"})
    assert len(source.reads) == 4
    back = read_tiff(tmp_path / "labels.tif")
    np.testing.assert_array_equal(back.data, labels)
    assert back.metadata["class_values"] == [0, 255] and back.scale == (2.0, 0.5, 0.5)

    probabilities = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(3, 16, 8, 2))
    probabilities[:] = RNG.random((3, 16, 8, 2))
    write_tiff(tmp_path / "p.tif", np.moveaxis(probabilities, -1, -3), {"axes": "ZCYX"})  # a strided view
    np.testing.assert_array_equal(read_tiff(tmp_path / "p.tif").data, np.moveaxis(np.asarray(probabilities), -1, -3))
    colour = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    write_tiff(tmp_path / "rgb.tif", PlanesOnly(colour), {"axes": "ZYXS"})
    np.testing.assert_array_equal(read_tiff(tmp_path / "rgb.tif").data, colour)


def test_write_into_a_missing_folder_names_the_file_and_the_folder(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError) as info:
        write_tiff(missing / "labels.tif", np.zeros((8, 8), np.uint8))
    message = str(info.value)
    assert message == f"cannot write labels.tif: folder {str(missing)!r} does not exist"
    assert ".tmp" not in message and not (tmp_path / "no").exists()
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"cannot write labels.tif: .*file.txt' is not a folder"):
        write_tiff(not_a_folder / "labels.tif", np.zeros((8, 8), np.uint8))


def test_write_into_an_unwritable_folder_names_the_file_not_the_temporary_file(tmp_path, monkeypatch):
    def refuse(prefix, suffix, dir):
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}abc{suffix}"))

    monkeypatch.setattr(tiff_io.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        write_tiff(tmp_path / "labels.tif", np.zeros((8, 8), np.uint8))
    assert str(info.value) == f"[Errno 13] cannot write labels.tif in folder {str(tmp_path)!r}: Permission denied"
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_writes_follow_symbolic_links_and_never_replace_devices_or_pipes(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "link.tif").symlink_to(tmp_path / "results" / "real.tif")
    write_tiff(tmp_path / "link.tif", np.ones((4, 4), np.uint8))
    assert (tmp_path / "link.tif").is_symlink() and read_tiff(tmp_path / "results" / "real.tif").data.sum() == 16
    os.mkfifo(tmp_path / "pipe.tif")
    with pytest.raises(OSError, match="not a regular file"):
        write_tiff(tmp_path / "pipe.tif", np.ones((4, 4), np.uint8))
    assert not (tmp_path / "pipe.tif").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["link.tif", "pipe.tif", "results"]


def test_a_lazy_bool_mask_is_written_as_bytes(tmp_path):
    import dask.array as da

    mask = RNG.random((3, 8, 8)) > 0.5
    write_tiff(tmp_path / "m.tif", da.from_array(mask, chunks=(1, 8, 8)))
    np.testing.assert_array_equal(read_tiff(tmp_path / "m.tif").data, mask.astype(np.uint8))


def test_lazy_pages_are_read_from_their_own_headers_in_any_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)
    image = em_like((2, 3, 24, 20))  # ImageJ hyperstack: pages in Z-then-C order
    tifffile.imwrite(tmp_path / "hyper.tif", image, imagej=True, compression="zlib", metadata={"axes": "ZCYX"})
    lazy = read_tiff(tmp_path / "hyper.tif", lazy=True)
    assert lazy.axes == "ZCYX" and type(lazy.data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(lazy.data[1, 2]), image[1, 2])
    np.testing.assert_array_equal(np.asarray(lazy.data), image)


def test_label_detection_stops_at_the_first_plane_of_an_intensity_stack(monkeypatch):
    # opening an 800 MB EM stack took 37 s in napari, 35 s of it counting the values of every plane
    from napari_unet import tiff_io

    stack = np.random.default_rng(0).integers(0, 256, (50, 64, 64), dtype=np.uint8)
    counted = []
    bincount = np.bincount
    monkeypatch.setattr(np, "bincount", lambda *a, **k: counted.append(1) or bincount(*a, **k))
    assert tiff_io.distinct_values(stack, tiff_io.MAX_LABEL_CLASSES) is None and len(counted) == 1
    assert not tiff_io.detect_labels(stack, "stack.tif")
    counted.clear()
    assert tiff_io.distinct_values(stack > 128, 16) == [0, 1] and len(counted) == 50  # labels: every plane is read


@pytest.mark.parametrize("scale, units", [
    ([1.0, 1.0, 3.0], [None, None, "µm"]),  # an OME file with PhysicalSizeX only: Y was read back at 1 µm per row
    ([1.0, 2.0, 3.0], [None, "µm", "µm"]),  # no Z spacing: it was written as 1 µm
    ([2.0, 0.5, 0.5], [None, "µm", "µm"]),  # a Z spacing without a unit: it came back as 2 µm
    ([0.5, 2.0, 2.0], ["nm", "nm", "nm"]),
    ([5.0, 2.0, 3.0], ["µm", "µm", "µm"]),
])
def test_an_axis_keeps_its_own_pixel_size_and_unit_or_none(tmp_path, scale, units):
    write_tiff(tmp_path / "x.tif", np.zeros((3, 16, 16), np.uint8), {"axes": "ZYX", "scale": scale, "units": units})
    back = read_tiff(tmp_path / "x.tif")
    assert list(back.scale) == scale and list(back.units) == units


def test_lengths_of_one_file_in_nm_and_um_are_all_read_in_um(tmp_path):
    """napari draws a layer from its scale's numbers alone: an OME-TIFF of 0.05 µm slices of 4 nm pixels opened as
    scale (0.05, 4, 4), Z 1000 times too thin beside Y and X; ImageJ's zunit / yunit (another unit than X's) were
    ignored: 50 nm slices were read, and written back by predict, as 50 µm."""
    stack = np.zeros((3, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "mixed.ome.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.05, "PhysicalSizeZUnit": "µm", "PhysicalSizeY": 4, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeX": 4, "PhysicalSizeXUnit": "nm"})
    tif = read_tiff(tmp_path / "mixed.ome.tif")
    assert tif.scale == pytest.approx((0.05, 0.004, 0.004)) and tif.units == ("µm", "µm", "µm")
    tifffile.imwrite(tmp_path / "zunit.tif", stack, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"axes": "ZYX", "spacing": 50, "unit": "um", "zunit": "nm"})
    tif = read_tiff(tmp_path / "zunit.tif")
    assert tif.scale == pytest.approx((0.05, 0.004, 0.004)) and tif.units == ("µm", "µm", "µm")
    tifffile.imwrite(tmp_path / "yunit.tif", stack, imagej=True, resolution=(1 / 0.004, 1 / 8),
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um", "yunit": "nm"})
    tif = read_tiff(tmp_path / "yunit.tif")
    assert tif.scale == pytest.approx((0.05, 0.008, 0.004)) and tif.units == ("µm", "µm", "µm")
    write_tiff(tmp_path / "written.tif", stack, {"axes": "ZYX", "scale": [0.5, 2.0, 2.0], "units": ["nm", "µm", "µm"]})
    tif = read_tiff(tmp_path / "written.tif")  # (a napari layer of mixed units, saved)
    assert tif.scale == pytest.approx((0.0005, 2.0, 2.0)) and tif.units == ("µm", "µm", "µm")


def test_write_tiff_refuses_what_it_could_not_read_back_as_written(tmp_path):
    # a zero-size array was written and then read as "corrupt TIFF"; class values [0.5, 255] were stored as [0, 255];
    # an ignore value of 2**70 made napari's reader refuse the file
    image = np.zeros((4, 4), np.uint8)
    cases = [
        (np.zeros((5, 0), np.uint8), {}, "holding pixels"),
        (np.zeros((0, 5, 5), np.uint8), {}, "holding pixels"),
        (image, {"class_values": [0.5, 255]}, "not a list of distinct integers"),
        (image, {"class_values": [0, 0]}, "not a list of distinct integers"),
        (image, {"ignore_value": "a"}, "not an integer"),
        (image, {"ignore_value": float("nan")}, "not an integer"),
        (image, {"ignore_value": 2**70}, "within int64"),
    ]
    for array, metadata, message in cases:
        with pytest.raises(ValueError, match=message):
            write_tiff(tmp_path / "x.tif", array, metadata)
        assert not list(tmp_path.iterdir())
    write_tiff(tmp_path / "x.tif", image, {"class_values": [0.0, 255], "ignore_value": np.int64(7)})  # whole numbers pass
    assert read_tiff(tmp_path / "x.tif").metadata["class_values"] == [0, 255]


@pytest.mark.parametrize("shape, axes", [((4, 1, 1), "ZYX"), ((4, 1, 5), "ZYX"), ((2, 3, 1, 5), "TZYX"), ((4, 1), "YX")])
def test_a_stack_with_single_pixel_rows_keeps_y_and_x_last(tmp_path, shape, axes):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros(shape, np.uint8), photometric="minisblack")  # tifffile: "YQX" for (4, 1, 1)
    read = read_tiff(tmp_path / "s.tif")
    assert read.data.shape == shape and read.axes == axes


def test_a_folder_of_stacks_is_refused_and_a_folder_of_one_stack_is_that_stack(tmp_path):
    """An image stack and its labels stack in one folder opened as one 4-D image, intensities and labels mixed."""
    folder = tmp_path / "pair"
    folder.mkdir()
    image = em_like((5, 32, 40))
    tifffile.imwrite(folder / "train-volume.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "train-labels.tif", (image > 128).astype(np.uint8) * 255, photometric="minisblack")
    with pytest.raises(TiffReadError, match=r"its files are stacks, not slices .*shape \(5, 32, 40\).*open its 2 files one by one"):
        read_folder(folder)
    (folder / "train-labels.tif").unlink()
    np.testing.assert_array_equal(read_folder(folder).data, image)


def test_a_file_system_error_while_reading_is_not_called_a_corrupt_tiff(tmp_path, monkeypatch):
    """An I/O error of a network share in the middle of a read (or a path too long) was "corrupt or unsupported TIFF"."""
    import errno

    tifffile.imwrite(tmp_path / "good.tif", em_like((2, 32, 32)))

    def share_gone(series, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", share_gone)
    with pytest.raises(TiffReadError, match="good.tif: cannot read it \\(Input/output error\\)"):
        read_tiff(tmp_path / "good.tif")
