"""npe2 reader and writer: layer tuples, label display convention, errors, real data round trips.

No display is needed: reader/writer functions are plain Python, and napari's headless
``ViewerModel`` checks that napari accepts the layer tuples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import _reader, _writer
from napari_unet._reader import get_reader, read_layers
from napari_unet._writer import write_labels
from napari_unet.labels import from_display, to_display, value_marks
from napari_unet.tiff_io import read_tiff, write_tiff

RNG = np.random.default_rng(1)
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture
def errors(monkeypatch):
    """Capture napari error notifications instead of showing them."""
    messages: list[str] = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", lambda message: messages.append(str(message)))
    return messages


def read(path) -> list[tuple]:
    reader = get_reader(os.fspath(path) if not isinstance(path, list) else [os.fspath(p) for p in path])
    assert callable(reader), f"the reader declined {path}"
    return reader(path)


def add_to_viewer_model(layer_data):
    """Add layer tuples to a headless napari ViewerModel (validates every kwarg)."""
    from napari.components import ViewerModel

    model = ViewerModel()
    layers = []
    for item in layer_data:
        layers.extend(model._add_layer_from_data(*item))
    return model, layers


def isbi_like_labels(shape=(2, 24, 24)) -> np.ndarray:
    labels = np.full(shape, 255, np.uint8)
    labels[:, ::6, :] = 0  # membranes
    labels[:, :, ::8] = 0
    return labels


# ----------------------------------------------------------------------------------- reader


def test_reader_declines_other_paths(tmp_path):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n")
    assert get_reader(str(png)) is None
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None  # folder without TIFFs
    assert get_reader([str(png), str(tmp_path / "a.tif")]) is None


def test_reader_image_with_axes_scale_units_and_channels(tmp_path, errors):
    data = RNG.integers(0, 4000, size=(3, 5, 2, 16, 20), dtype=np.uint16)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "um", "finterval": 0.5},
    )
    [(layer_data, kwargs, layer_type)] = read(path)
    assert layer_type == "image"
    assert kwargs["channel_axis"] == 2
    assert kwargs["scale"] == pytest.approx((0.5, 2.0, 0.5, 0.25))  # channel axis dropped
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs["units"] == ("second", "micrometer", "micrometer", "micrometer")
    np.testing.assert_array_equal(layer_data, data)

    model, layers = add_to_viewer_model([(layer_data, kwargs, layer_type)])
    assert len(layers) == 2  # one image layer per channel
    assert [layer.name for layer in layers] == ["hyper [ch0]", "hyper [ch1]"]
    assert layers[0].data.shape == (3, 5, 16, 20)
    np.testing.assert_allclose(layers[1].scale, (0.5, 2.0, 0.5, 0.25))
    assert str(layers[0].units[-1]) == "micrometer"
    assert errors == []


def test_reader_plain_image_stays_image(tmp_path):
    path = tmp_path / "train-volume.tif"
    data = RNG.integers(0, 256, size=(5, 32, 32), dtype=np.uint8)  # 8-bit EM: ~256 values
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    [(layer_data, kwargs, layer_type)] = read(path)
    assert layer_type == "image"
    assert kwargs["name"] == "train-volume"
    assert "units" not in kwargs and kwargs["scale"] == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(layer_data, data)


def test_reader_rgb(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, size=(16, 20, 3), dtype=np.uint8), photometric="rgb")
    [(layer_data, kwargs, layer_type)] = read(path)
    assert layer_type == "image" and kwargs["rgb"] is True and kwargs["scale"] == (1.0, 1.0)
    _, [layer] = add_to_viewer_model([(layer_data, kwargs, layer_type)])
    assert layer.rgb


def test_reader_labels_by_values_in_display_convention(tmp_path):
    labels = isbi_like_labels()  # 0 = membrane, 255 = cell
    path = tmp_path / "volume.tif"  # no name hint: detected from the 2 values
    tifffile.imwrite(path, labels, imagej=True, metadata={"axes": "ZYX"})
    [(display, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    assert kwargs["metadata"]["class_values"] == [0, 255]
    assert kwargs["metadata"]["ignore_value"] is None
    # display 1 = membrane (file 0), display 2 = cell (file 255); nothing is "unannotated"
    np.testing.assert_array_equal(display, np.where(labels == 0, 1, 2))
    assert display.dtype == np.uint8
    assert list(kwargs["features"]["class_value"]) == [-1, 0, 255]

    _, [layer] = add_to_viewer_model([(display, kwargs, layer_type)])
    assert type(layer).__name__ == "Labels"
    assert layer.metadata["class_values"] == [0, 255]
    assert list(layer.features["class_name"]) == ["not annotated", "0", "255"]


def test_reader_labels_by_name_hint(tmp_path):
    labels = RNG.integers(0, 40, size=(12, 12)).astype(np.uint16)  # 40 values: > 16
    path = tmp_path / "nuclei_mask.tif"
    tifffile.imwrite(path, labels)
    [(display, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    class_values = kwargs["metadata"]["class_values"]
    assert class_values == sorted(np.unique(labels).tolist())
    np.testing.assert_array_equal(from_display(display, class_values), labels)


def test_instance_masks_open_as_they_are_with_0_as_background_and_round_trip(tmp_path):
    # a cellpose-style mask (0 = background, ids 1..N) showed its background as label 1 and every id one higher;
    # napari's own writer then rewrote every pixel
    from skimage.segmentation import expand_labels

    seeds = np.zeros((64, 64), np.uint16)
    seeds.flat[RNG.choice(64 * 64, 100, replace=False)] = np.arange(1, 101)
    masks = np.where(RNG.random((64, 64)) < 0.1, 0, expand_labels(seeds, 10)).astype(np.uint16)  # 100 ids and background
    tifffile.imwrite(tmp_path / "cp_masks.tif", masks)
    [(data, kwargs, layer_type)] = read(tmp_path / "cp_masks.tif")
    assert layer_type == "labels" and "class_values" not in kwargs["metadata"]
    np.testing.assert_array_equal(data, masks)  # background 0 is napari's no label; id 7 shows as 7
    _, [layer] = add_to_viewer_model([(data, kwargs, layer_type)])
    out = tmp_path / "saved.tif"
    write_labels(str(out), layer.data, {"name": layer.name, "metadata": layer.metadata})
    np.testing.assert_array_equal(tifffile.imread(out), masks)
    [(again, _, _)] = read(out)  # napari-unet's writer records the ids as classes, 0 as not annotated: ids again
    np.testing.assert_array_equal(again, masks)
    few = np.where(masks <= 40, masks, 0)  # up to 64 values could be classes (an OCT mask's 0 is the vitreous)
    tifffile.imwrite(tmp_path / "few_masks.tif", few)
    [(data, kwargs, _)] = read(tmp_path / "few_masks.tif")
    assert kwargs["metadata"]["class_values"][0] == 0 and data.min() == 1


def test_reader_labels_with_names_and_ignore_value_from_metadata(tmp_path):
    labels = RNG.choice(np.array([0, 1, 255], np.uint8), size=(2, 10, 10))
    path = tmp_path / "annotation.tif"
    write_tiff(path, labels, {"class_values": [0, 255], "ignore_value": 1, "class_names": ["membrane", "cell"]})
    [(display, kwargs, _)] = read(path)
    assert kwargs["metadata"]["class_values"] == [0, 255]
    assert kwargs["metadata"]["ignore_value"] == 1
    assert kwargs["metadata"]["class_names"] == ["membrane", "cell"]
    np.testing.assert_array_equal(display == 0, labels == 1)  # ignore value -> not annotated
    assert list(kwargs["features"]["class_name"]) == ["not annotated", "membrane", "cell"]


def test_reader_float_data_with_few_values_is_image(tmp_path):
    path = tmp_path / "probability.tif"
    tifffile.imwrite(path, (RNG.random((8, 8)) > 0.5).astype(np.float32))
    [(_, _, layer_type)] = read(path)
    assert layer_type == "image"


def test_reader_folder_and_list_of_slices(tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    slices = [RNG.integers(0, 256, size=(10, 12), dtype=np.uint8) for _ in range(11)]
    for i, s in enumerate(slices):
        tifffile.imwrite(folder / f"z{i}.tif", s)
    [(data, kwargs, layer_type)] = read(folder)
    assert layer_type == "image" and data.shape == (11, 10, 12)
    np.testing.assert_array_equal(data[10], slices[10])  # z10 after z9 (natural order)
    assert kwargs["name"] == "stack"

    paths = [folder / "z2.tif", folder / "z0.tif"]
    [(data, _, _)] = read(paths)  # napari "stack" open: order as given
    np.testing.assert_array_equal(data, np.stack([slices[2], slices[0]]))


def test_large_images_open_lazily_and_labels_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(_reader, "LAZY_IMAGE_BYTES", 5 * 32 * 32)
    image = RNG.integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "plain.tif", image, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "zlib.tif", image, compression="zlib", photometric="minisblack")
    tifffile.imwrite(tmp_path / "small.tif", image[:4], compression="zlib", photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", isbi_like_labels((5, 32, 32)), compression="zlib", photometric="minisblack")
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(5):
        tifffile.imwrite(folder / f"z{z}.tif", image[z], compression="zlib")
    kinds = {}
    for name in ("plain.tif", "zlib.tif", "small.tif", "labels.tif", "slices"):
        [(data, kwargs, layer_type)] = read(tmp_path / name)
        kinds[name] = (type(data).__name__, layer_type)
        if layer_type == "image":
            np.testing.assert_array_equal(np.asarray(data[2]), image[2])
    assert kinds == {
        "plain.tif": ("memmap", "image"),
        "zlib.tif": ("Array", "image"),  # dask
        "small.tif": ("ndarray", "image"),
        "labels.tif": ("ndarray", "labels"),
        "slices": ("Array", "image"),
    }
    _, [layer] = add_to_viewer_model(read(tmp_path / "zlib.tif"))
    assert layer.data.shape == (5, 32, 32)


def test_reader_corrupt_file_notifies_and_declines(tmp_path, errors):
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, RNG.integers(0, 256, size=(4, 64, 64), dtype=np.uint8), imagej=True, compression="zlib")
    path = tmp_path / "broken.tif"
    path.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    assert get_reader(str(path)) is None  # no exception
    assert len(errors) == 1 and "broken.tif" in errors[0] and "corrupt" in errors[0]


def test_reader_not_a_tiff_notifies(tmp_path, errors):
    path = tmp_path / "fake.tif"
    path.write_text("hello")
    assert get_reader(str(path)) is None
    assert len(errors) == 1 and "not a TIFF" in errors[0]


def test_reader_mismatched_folder_notifies(tmp_path, errors):
    tifffile.imwrite(tmp_path / "s1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "s2.tif", np.zeros((9, 8), np.uint8))
    assert get_reader(str(tmp_path)) is None
    assert len(errors) == 1 and "same size" in errors[0]


def test_reader_never_raises_on_unexpected_errors(tmp_path, errors, monkeypatch):
    path = tmp_path / "ok.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8))

    def boom(_tiff):
        raise RuntimeError("unexpected bug")

    monkeypatch.setattr(_reader, "layer_data_from_tiff", boom)
    assert get_reader(str(path)) is None
    assert len(errors) == 1 and "unexpected bug" in errors[0]


# ----------------------------------------------------------------------------------- writer


def test_writer_round_trip_keeps_zero_class(tmp_path):
    labels = isbi_like_labels()
    source = tmp_path / "train-labels.tif"
    tifffile.imwrite(source, labels, imagej=True, metadata={"axes": "ZYX"})
    [(display, kwargs, _)] = read(source)
    out = tmp_path / "saved.tif"
    assert write_labels(str(out), display, kwargs) == [str(out)]
    written = tifffile.imread(out)
    np.testing.assert_array_equal(written, labels)  # 0 = membrane survives
    assert written.dtype == np.uint8
    back = read_tiff(out)
    assert back.metadata["class_values"] == [0, 255]
    assert back.metadata.get("ignore_value") is None  # every pixel annotated


def test_writer_unannotated_pixels_get_an_unused_ignore_value(tmp_path):
    labels = isbi_like_labels()
    display = to_display(labels, [0, 255])
    display[0, :5, :5] = 0  # erased with the eraser
    meta = {"metadata": {"class_values": [0, 255], "ignore_value": None, "axes": "ZYX"}, "scale": [1, 1, 1]}
    out = tmp_path / "partial.tif"
    write_labels(str(out), display, meta)
    back = read_tiff(out)
    ignore = back.metadata["ignore_value"]
    assert ignore is not None and ignore not in (0, 255)
    np.testing.assert_array_equal(back.data == ignore, display == 0)
    np.testing.assert_array_equal(back.data[display > 0], labels[display > 0])
    # reading it again gives the same display values
    [(display_again, kwargs, _)] = read(out)
    np.testing.assert_array_equal(display_again, display)
    assert kwargs["metadata"]["class_values"] == [0, 255]


def test_writer_uses_existing_ignore_value(tmp_path):
    display = np.array([[0, 1], [2, 3]], np.uint8)
    meta = {"metadata": {"class_values": [0, 1, 2], "ignore_value": 7}}
    out = tmp_path / "oct.tif"
    write_labels(str(out), display, meta)
    np.testing.assert_array_equal(tifffile.imread(out), [[7, 0], [1, 2]])


def test_writer_plain_napari_labels_without_class_values(tmp_path):
    painted = np.zeros((2, 8, 8), np.uint8)
    painted[0, :4] = 1
    painted[1, 4:] = 3
    out = tmp_path / "painted.tif"
    write_labels(str(out), painted, {"metadata": {}, "scale": [1, 1, 1]})
    back = read_tiff(out)
    np.testing.assert_array_equal(back.data, painted)
    assert back.metadata["class_values"] == [1, 3] and back.metadata["ignore_value"] == 0
    [(display, _, _)] = read(out)
    np.testing.assert_array_equal(display, np.select([painted == 1, painted == 3], [1, 2], 0))


def test_writer_keeps_scale_as_resolution(tmp_path):
    from napari.layers import Labels

    layer = Labels(
        to_display(isbi_like_labels(), [0, 255]),
        scale=(0.05, 0.004, 0.004),
        units=("micrometer",) * 3,
        metadata={"class_values": [0, 255], "axes": "ZYX"},
    )
    data, meta, layer_type = layer.as_layer_data_tuple()
    assert layer_type == "labels"
    out = tmp_path / "scaled.tiff"
    write_labels(str(out), data, meta)
    back = read_tiff(out)
    assert back.scale == pytest.approx((0.05, 0.004, 0.004))
    assert back.units == ("µm", "µm", "µm")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.pages[0].get_resolution() == pytest.approx((250.0, 250.0))  # px per µm


def test_writer_failure_leaves_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "labels.tif"
    write_labels(str(out), np.array([[1, 2]], np.uint8), {"metadata": {"class_values": [0, 255]}})
    before = out.read_bytes()
    import napari_unet.tiff_io as tiff_io

    def failing(fh, data, **kwargs):
        fh.write(b"II*\x00")
        raise OSError("no space left on device")

    monkeypatch.setattr(tiff_io.tifffile, "imwrite", failing)
    with pytest.raises(OSError):
        write_labels(str(out), np.array([[2, 1]], np.uint8), {"metadata": {"class_values": [0, 255]}})
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["labels.tif"]


def test_writer_saves_reviewed_pixels_of_a_prediction_layer_and_reader_restores_them(tmp_path):
    display = to_display(isbi_like_labels(), [0, 255])
    marked = np.zeros(display.shape, bool)
    marked[0, 2:10, 3:12] = True
    marks = np.where(marked, value_marks(display, np.uint8), 0).astype(np.uint8)
    display[0, 2, 3] = 3 - display[0, 2, 3]  # changed after marking (e.g. undone): no longer reviewed
    accepted = np.zeros(display.shape, np.uint8)  # Mark slice reviewed on the last slice: saved as reviewed too
    accepted[-1] = value_marks(display[-1], np.uint8)
    tracking = {"output": "prediction", "image": "EM", "marks": marks, "accepted": accepted}
    meta = {"metadata": {"class_values": [0, 255], "napari_unet": tracking}}
    out = tmp_path / "EM prediction.tif"
    write_labels(str(out), display, meta)
    expected = marked.copy()
    expected[0, 2, 3] = False
    expected[-1] = display[-1] > 0
    assert len(display) > 1 and expected[-1].any()
    back = read_tiff(out)
    assert back.metadata["predicted_from"] == "EM"
    np.testing.assert_array_equal(back.metadata["reviewed"], expected)
    accepted_only = expected.copy()
    accepted_only[:-1] = False
    accepted_only[-1] &= ~marked[-1]
    np.testing.assert_array_equal(back.metadata["accepted"], accepted_only)
    np.testing.assert_array_equal(back.data, from_display(display, [0, 255]))  # file values as before
    [(display_again, kwargs, kind)] = read(out)
    assert kind == "labels"
    np.testing.assert_array_equal(display_again, display)
    assert kwargs["metadata"]["napari_unet"]["output"] == "prediction"
    assert kwargs["metadata"]["napari_unet"]["image"] == "EM"
    np.testing.assert_array_equal(kwargs["metadata"]["napari_unet"]["reviewed"], expected)
    np.testing.assert_array_equal(kwargs["metadata"]["napari_unet"]["accepted_mask"], accepted_only)
    add_to_viewer_model([(display_again, kwargs, kind)])
    # Saved again without being tracked: the reopened mask is written as it came.
    again = tmp_path / "again.tif"
    write_labels(str(again), display_again, kwargs)
    np.testing.assert_array_equal(read_tiff(again).metadata["reviewed"], expected)
    np.testing.assert_array_equal(read_tiff(again).metadata["accepted"], accepted_only)
    # Labels that are no prediction layer carry neither.
    plain = tmp_path / "plain.tif"
    write_labels(str(plain), display, {"metadata": {"class_values": [0, 255]}})
    assert "predicted_from" not in read_tiff(plain).metadata and "reviewed" not in read_tiff(plain).metadata


def test_writer_module_api():
    values, meta = _writer.labels_to_file_values(np.array([[1, 2, 0]], np.uint8), {"class_values": [0, 9]})
    assert meta["ignore_value"] not in (0, 9)
    assert values.tolist() == [[0, 9, meta["ignore_value"]]]


# -------------------------------------------------------------------------------- real data


def shared(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip("../shared/data not found: real-data tests need the project's shared data beside the repo")
    return path


def test_real_isbi_volume_is_image():
    path = shared("isbi2012", "train-volume.tif")
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "image"
    assert data.shape == (20, 512, 512) and data.dtype == np.uint8
    assert kwargs["axis_labels"] == ("z", "y", "x")


def test_real_isbi_labels_round_trip(tmp_path):
    path = shared("isbi2012", "train-labels.tif")
    [(display, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    assert kwargs["metadata"]["class_values"] == [0, 255]
    assert set(np.unique(display).tolist()) == {1, 2}
    membrane = float(np.mean(display == 1))
    assert 0.15 < membrane < 0.30  # README: 22 % membrane
    out = tmp_path / "train-labels-saved.tif"
    write_labels(str(out), display, kwargs)
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(path))


def test_real_oct_layers_are_labels():
    path = shared("oct", "circular-scan-layers.tif")
    [(display, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    assert kwargs["metadata"]["class_values"] == list(range(10))
    assert display.shape == (496, 768)
    np.testing.assert_array_equal(from_display(display, list(range(10))), tifffile.imread(path))
    assert np.all(display[0] == 1)  # top row: vitreous (file 0) -> display 1, visible


# ----------------------------------------------------------------------- writer errors (D6, D9)


def test_writer_into_a_missing_folder_names_the_file_and_the_folder(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError, match=r"cannot write labels.tif: folder .*such' does not exist") as info:
        write_labels(str(missing / "labels.tif"), np.array([[1, 2]], np.uint8), {"metadata": {"class_values": [0, 255]}})
    assert ".tmp" not in str(info.value)


@pytest.mark.parametrize(
    "display, metadata, words",
    [
        ([[1, 3]], {"class_values": [0, 255]}, "display label 3, which is no class: it has 2 classes [0, 255]"),
        ([[1, -1]], {"class_values": [0, 255]}, "display label -1, which is no class"),
        ([[1, 2]], {"class_values": "0,255"}, "class_values metadata '0,255' that is not a list of distinct integers"),
        ([[1, 2]], {"class_values": [0, "a"]}, "not a list of distinct integers"),
        ([[1, 2]], {"class_values": [3, 3]}, "not a list of distinct integers"),
        ([[1, 2]], {"class_values": 7}, "not a list of distinct integers"),
        ([[0, 2]], {"class_values": [0, 255], "ignore_value": "none"}, "ignore_value metadata 'none' that is not an integer"),
    ],
)
def test_writer_refuses_labels_it_cannot_write_with_a_clear_os_error_and_writes_nothing(tmp_path, display, metadata, words):
    """Not a ValueError: npe2 would take it for "writer not applicable" and napari would drop the message."""
    out = tmp_path / "labels.tif"
    meta = {"name": "EM labels", "metadata": metadata}
    with pytest.raises(_writer.LabelsWriteError) as info:
        write_labels(str(out), np.array(display, np.int32), meta)
    assert isinstance(info.value, OSError) and not isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("cannot save labels.tif: labels layer 'EM labels' ") and words in message, message
    assert os.listdir(tmp_path) == []


def test_writer_saves_a_multiscale_labels_layer_at_full_resolution(tmp_path):
    # napari hands a MultiScaleData (not a list), whose np.asarray is the lowest level: a (4, 32, 32) file was
    # written for (4, 128, 128) labels (e.g. napari-ome-zarr's), recorded at the full resolution's pixel size
    from napari.layers import Labels

    full = to_display(isbi_like_labels(), [0, 255])
    layer = Labels([full, full[:, ::2, ::2], full[:, ::4, ::4]], multiscale=True, scale=(0.05, 0.004, 0.004),
                   units=("micrometer",) * 3, metadata={"class_values": [0, 255]})
    data, meta, _ = layer.as_layer_data_tuple()
    write_labels(str(tmp_path / "multiscale.tif"), data, meta)
    back = read_tiff(tmp_path / "multiscale.tif")
    assert np.array_equal(back.data, isbi_like_labels()) and back.scale == pytest.approx((0.05, 0.004, 0.004))
    del meta["multiscale"]  # a script's call with the data and a meta of its own
    write_labels(str(tmp_path / "no-flag.tif"), data, meta)
    assert np.array_equal(read_tiff(tmp_path / "no-flag.tif").data, isbi_like_labels()), "its lowest level was written"


def test_layer_save_with_the_plugin_raises_the_writer_error_instead_of_a_warning(tmp_path):
    """``layer.save(path, plugin="napari-unet")`` goes through npe2, which drops a writer's ValueError."""
    import warnings

    from napari.layers import Labels
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what a napari viewer does at start: napari-unet's writer is offered
    layer = Labels(np.array([[1, 2], [3, 0]], np.uint8), name="EM labels", metadata={"class_values": [0, 255]})
    out = tmp_path / "labels.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "not a valid writer" warning in its place
        with pytest.raises(_writer.LabelsWriteError, match="display label 3, which is no class"):
            layer.save(str(out), plugin="napari-unet")
    assert os.listdir(tmp_path) == []
    layer.metadata = {"class_values": "0,255"}
    with pytest.raises(_writer.LabelsWriteError, match="class_values metadata '0,255'"):
        layer.save(str(out), plugin="napari-unet")
    layer.metadata = {"class_values": np.array([0.0, 255.0, 9.0]), "ignore_value": np.int64(7)}  # integers all the same
    assert layer.save(str(out), plugin="napari-unet") == [str(out)]
    back = read_tiff(out)
    assert back.data.tolist() == [[0, 255], [9, 7]] and back.metadata["class_values"] == [0, 9, 255]


def test_probability_files_open_one_layer_per_class_named_by_class(tmp_path):
    # written by napari-unet predict --probabilities: the channels were named ch0..ch9
    path = tmp_path / "probs.tif"
    probabilities = RNG.random((2, 3, 8, 8)).astype(np.float32)
    write_tiff(path, probabilities, {"class_values": [0, 1, 9], "axes": "ZCYX"})
    [(_, kwargs, kind)] = read(path)  # napari splits the channel axis into one layer per class
    assert kind == "image" and kwargs["name"] == ["probs [P(0)]", "probs [P(1)]", "probs [P(9)]"]


@pytest.mark.parametrize("class_values", [[0, 255], [0, 70000]])  # an ImageJ file and a tifffile JSON ("shaped") one
def test_a_saved_labels_layer_keeps_its_translate(tmp_path, class_values):
    # Save prediction kept the scale but dropped the offset of a layer placed on a shifted (registered) image
    display = np.zeros((2, 16, 16), np.uint8)
    display[:, 4:8], display[:, 8:] = 1, 2
    meta = {"name": "EM prediction", "metadata": {"class_values": class_values}, "scale": (1.0, 0.5, 0.5),
            "translate": (3.0, 10.0, -3.5), "units": ("µm",) * 3}
    [written] = write_labels(str(tmp_path / "p.tif"), display, meta)
    [(data, kwargs, kind)] = get_reader(written)(written)
    assert kind == "labels" and np.array_equal(data, display)
    assert kwargs["translate"] == (3.0, 10.0, -3.5) and kwargs["scale"] == (1.0, 0.5, 0.5)
    [unshifted] = write_labels(str(tmp_path / "q.tif"), display, {**meta, "translate": (0.0, 0.0, 0.0)})
    assert "translate" not in get_reader(unshifted)(unshifted)[0][1]  # nothing recorded for the default


def test_a_labels_layer_in_nm_or_mm_beside_um_reopens_where_it_lay(tmp_path):
    # Y and X in nm, Z in µm (EM): the scale was read in µm, the translate and an affine's offset left in nm (1000x off)
    display = np.zeros((2, 16, 16), np.uint8)
    display[:, 4:8], display[:, 8:] = 1, 2
    affine = np.eye(4)
    affine[1:3, 3] = (500.0, -200.0)  # nm, as the layer's world is
    meta = {"name": "EM", "metadata": {"class_values": [0, 128, 255]}, "scale": (0.05, 4.0, 4.0), "translate": (1.0, 20.0, 8.0),
            "units": ("micrometer", "nanometer", "nanometer"), "affine": affine}
    [written] = write_labels(str(tmp_path / "p.tif"), display, meta)
    [(_data, kwargs, _kind)] = get_reader(written)(written)
    assert kwargs["units"] == ("micrometer",) * 3 and kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004))
    assert kwargs["translate"] == pytest.approx((1.0, 0.02, 0.008))
    np.testing.assert_allclose(np.asarray(kwargs["affine"])[1:3, 3], (0.5, -0.2))
    np.testing.assert_allclose(np.asarray(kwargs["affine"])[:3, :3], np.eye(3))
    # an affine coupling axes of other units (Y in mm, X in µm): every pixel reopens where it lay, in µm
    coupling = np.array([[1.0, 0.002, 0.1], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])
    meta = {"name": "sheared", "metadata": {"class_values": [0, 128, 255]}, "scale": (0.001, 2.0), "translate": (0.5, 3.0),
            "units": ("millimeter", "micrometer"), "affine": coupling}
    [written] = write_labels(str(tmp_path / "s.tif"), display[0], meta)
    [(_data, kwargs, _kind)] = get_reader(written)(written)
    pixels = np.array([[0, 0], [15, 0], [0, 15], [7, 11]], float)

    def world(scale, translate, affine, to_um=(1.0, 1.0)):
        inner = pixels * np.asarray(scale) + np.asarray(translate)
        return (np.c_[inner, np.ones(len(inner))] @ np.asarray(affine).T)[:, :2] * np.asarray(to_um)

    np.testing.assert_allclose(world(kwargs["scale"], kwargs["translate"], kwargs["affine"]),
                               world(meta["scale"], meta["translate"], coupling, to_um=(1000.0, 1.0)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("units", [("µm",) * 3, None])
def test_a_mirrored_labels_layer_reopens_mirrored(tmp_path, units):
    # napari mirrors an axis by a negative scale: the file reopened unmirrored at 1 pixel per unit on that axis
    from napari_unet.tiff_io import pixel_size_um

    display = np.zeros((2, 16, 16), np.uint8)
    display[:, 4:8], display[:, 8:] = 1, 2
    meta = {"name": "flipped", "metadata": {"class_values": [0, 128, 255]}, "scale": (-2.0, 0.5, -0.5),
            "translate": (10.0, 0.0, 16.0), "units": units}
    [written] = write_labels(str(tmp_path / "p.tif"), display, meta)
    [(data, kwargs, _kind)] = get_reader(written)(written)
    assert np.array_equal(data, display) and kwargs["scale"] == (-2.0, 0.5, -0.5) and kwargs["translate"] == (10.0, 0.0, 16.0)
    with tifffile.TiffFile(written) as tif:  # the tags hold sizes
        assert tif.pages[0].tags["XResolution"].value == (2, 1)
    assert pixel_size_um((-2.0, 0.5, -0.5), ("micrometer",) * 3) == [0.5, 0.5]  # its pixels' size, mirrored or not


def test_a_time_series_of_labels_is_written_with_a_time_axis(tmp_path):
    # napari's axis_labels ("t", "y", "x") were ignored: written as Z slices 30 s apart
    display = np.zeros((4, 16, 16), np.uint8)
    display[:, 4:8], display[:, 8:] = 1, 2
    meta = {"name": "tracks", "metadata": {}, "scale": (30.0, 0.5, 0.5), "units": ("second", "micrometer", "micrometer"),
            "axis_labels": ("t", "y", "x")}
    [written] = write_labels(str(tmp_path / "t.tif"), display, meta)
    with tifffile.TiffFile(written) as tif:
        assert tif.series[0].axes == "TYX" and tif.imagej_metadata["finterval"] == 30.0
    [(data, kwargs, _kind)] = get_reader(written)(written)
    assert np.array_equal(data, display) and kwargs["axis_labels"] == ("t", "y", "x") and kwargs["scale"] == (30.0, 0.5, 0.5)
    [plain] = write_labels(str(tmp_path / "z.tif"), display, {**meta, "axis_labels": ("-3", "-2", "-1"), "units": None})
    with tifffile.TiffFile(plain) as tif:  # napari's default labels: a Z stack, as before
        assert tif.series[0].axes == "ZYX"


def test_every_manifest_command_resolves_through_npe2():
    """The widget package's __init__ became lazy (PEP 562): its classes must still resolve as npe2 imports them."""
    from npe2 import PluginManager
    from npe2.manifest.utils import import_python_name

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-unet")
    names = {command.id: command.python_name for command in manifest.contributions.commands}
    assert {"napari-unet.training_widget", "napari-unet.inference_widget"} <= set(names)
    for command_id, python_name in names.items():
        assert callable(import_python_name(python_name)), command_id
    from napari_unet._widgets import InferenceWidget, TrainingWidget

    assert import_python_name(names["napari-unet.training_widget"]) is TrainingWidget
    assert import_python_name(names["napari-unet.inference_widget"]) is InferenceWidget


def test_a_damaged_record_of_reviewed_pixels_is_named_not_read_as_nothing_painted(tmp_path, monkeypatch):
    # it read as "no painted pixel": the CLI told the user to paint corrections that were in the file, and napari
    # reopened the layer with the corrections silently counted as unreviewed predictions
    from napari_unet import _reader, tiff_io
    from napari_unet.cli import CommandError, read_label_stack

    display = to_display(isbi_like_labels(), [0, 255])
    reviewed = np.zeros(display.shape, bool)
    reviewed[0, 2:10, 3:12] = True
    meta = {"metadata": {"class_values": [0, 255], "napari_unet": {"output": "prediction", "image": "EM", "reviewed": reviewed}}}
    with monkeypatch.context() as patch:
        patch.setattr(tiff_io, "encode_mask", lambda mask: {"shape": list(mask.shape), "zlib_bits": "bm90IHpsaWI="})
        write_labels(str(tmp_path / "damaged.tif"), display, meta)
    back = read_tiff(tmp_path / "damaged.tif")
    assert back.metadata["damaged_masks"] == ["reviewed"] and "reviewed" not in back.metadata
    with pytest.raises(CommandError, match="record of the painted and reviewed pixels is damaged"):
        read_label_stack(tmp_path / "damaged.tif", "labels")
    warned = []
    monkeypatch.setattr(_reader, "_notify_warning", warned.append)
    [(display_again, kwargs, kind)] = read(tmp_path / "damaged.tif")
    assert kind == "labels" and np.array_equal(display_again, display)
    assert len(warned) == 1 and "damaged: the record of the pixels painted or marked reviewed" in warned[0]
    write_labels(str(tmp_path / "intact.tif"), display, meta)  # an intact record: no name, no warning
    assert "damaged_masks" not in read_tiff(tmp_path / "intact.tif").metadata
    read(tmp_path / "intact.tif")
    assert len(warned) == 1


def test_the_corrections_of_a_single_slice_prediction_come_back(tmp_path):
    # a (1, Y, X) prediction layer is read back as (Y, X): its record of reviewed pixels, of the written shape, was
    # dropped (the corrections lost), and then called damaged
    from napari_unet.cli import read_label_stack

    display = to_display(isbi_like_labels()[:1], [0, 255])
    reviewed = np.zeros(display.shape, bool)
    reviewed[0, 2:10, 3:12] = True
    meta = {"metadata": {"class_values": [0, 255], "napari_unet": {"output": "prediction", "image": "EM", "reviewed": reviewed}}}
    write_labels(str(tmp_path / "one.tif"), display, meta)
    back = read_tiff(tmp_path / "one.tif")
    assert "damaged_masks" not in back.metadata
    np.testing.assert_array_equal(back.metadata["reviewed"].reshape(reviewed.shape), reviewed)
    values, ignore, notes = read_label_stack(tmp_path / "one.tif", "labels")
    assert int((values != ignore).sum()) == int(reviewed.sum()) and "only its 72 painted or reviewed pixels count" in notes[-1]


def test_a_plain_layer_whose_0_was_trained_as_a_class_is_written_with_0_as_a_class():
    from napari_unet.labels import ZERO_IS_CLASS

    mask = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    values, meta = _writer.labels_to_file_values(mask, {ZERO_IS_CLASS: True})
    assert meta == {"class_values": [0, 255], "ignore_value": None} and np.array_equal(values, mask)
    values, meta = _writer.labels_to_file_values(mask, {})  # painted from scratch: 0 = not painted
    assert meta == {"class_values": [255], "ignore_value": 0}


@pytest.mark.filterwarnings("ignore:.*stored as RGB with separate component planes:DeprecationWarning")  # on purpose
def test_a_stack_of_three_or_four_slices_saved_with_tifffile_defaults_opens_as_a_stack(tmp_path):
    """tifffile.imwrite (and so napari's own writer) stores a (3 or 4, Y, X) uint8 array as RGB colour planes: it
    opened as 3 or 4 channel layers while its labels opened as one stack, so the two no longer paired."""
    rng = np.random.default_rng(0)
    for n in (3, 4):
        image = rng.integers(0, 256, (n, 48, 64), dtype=np.uint8)
        tifffile.imwrite(tmp_path / f"scans{n}.tif", image)
        layers = read_layers(str(tmp_path / f"scans{n}.tif"))
        assert len(layers) == 1 and layers[0][2] == "image" and layers[0][1].get("channel_axis") is None
        np.testing.assert_array_equal(layers[0][0], image)
    # RGB written as such (colour last) stays one RGB layer
    colour = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "photo.tif", colour, photometric="rgb")
    layers = read_layers(str(tmp_path / "photo.tif"))
    assert len(layers) == 1 and layers[0][1].get("rgb") is True


def test_writer_adds_tif_to_a_name_without_extension_and_refuses_other_extensions(tmp_path):
    """napari's save dialog passes the name as typed: 'noext' was written without a suffix and 'labels.png' as a TIFF
    named .png, which no reader opened."""
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8] = 1
    written = write_labels(str(tmp_path / "noext"), labels, {"name": "labels"})
    assert written == [str(tmp_path / "noext.tif")] and not (tmp_path / "noext").exists()
    np.testing.assert_array_equal(read_tiff(tmp_path / "noext.tif").data, labels)
    with pytest.raises(_writer.LabelsWriteError, match="give a name ending in .tif"):
        write_labels(str(tmp_path / "labels.png"), labels, {"name": "labels"})
    assert not (tmp_path / "labels.png").exists()
    assert write_labels(str(tmp_path / "upper.TIFF"), labels, {"name": "labels"}) == [str(tmp_path / "upper.TIFF")]
    # a dot in the name is no extension; the name with .tif added is never replaced unasked
    assert write_labels(str(tmp_path / "cells_1.5um"), labels, {"name": "labels"}) == [str(tmp_path / "cells_1.5um.tif")]
    assert write_labels(str(tmp_path / "embryo.seg"), labels, {"name": "labels"}) == [str(tmp_path / "embryo.seg.tif")]
    before = (tmp_path / "noext.tif").read_bytes()
    with pytest.raises(_writer.LabelsWriteError, match="noext.tif exists; give its full name to replace it"):
        write_labels(str(tmp_path / "noext"), labels + 1, {"name": "labels"})
    assert (tmp_path / "noext.tif").read_bytes() == before


def test_a_rotated_sheared_affine_placed_labels_layer_reopens_where_it_was(tmp_path):
    """The writer kept scale and translate only: a rotated image's saved prediction reopened 30 degrees off it."""
    from napari.layers import Labels

    data = np.zeros((3, 24, 32), np.uint8)
    data[:, 4:12] = 1
    affine = np.eye(4)
    affine[1, 3], affine[2, 2] = 5.0, 1.5
    for kind, placement in (("stack", {"rotate": 30, "shear": [0.1, 0.0, 0.2], "affine": affine}),
                            ("plain", {})):
        layer = Labels(data, name="placed", scale=(2.0, 0.5, 0.25), translate=(1.0, 3.0, 4.0), **placement)
        meta = layer.as_layer_data_tuple()[1]
        [path] = write_labels(str(tmp_path / f"{kind}.tif"), layer.data, meta)
        [(back_data, kwargs, kind_read)] = read_layers(path)
        back = Labels(back_data, **kwargs)
        np.testing.assert_allclose(back._data_to_world.affine_matrix, layer._data_to_world.affine_matrix, atol=1e-9)
        assert ("placement" in read_tiff(path).metadata) == bool(placement)  # the identity is not stored
    # a one-slice stack reopens as (Y, X): its offset and turn in the plane come back on those axes, also with an
    # affine that moves it along Z (slice k of a registered volume)
    affine = np.eye(4)
    affine[:3, 3] = (12.0, 5.0, 7.0)
    for name, extra in (("one", {}), ("one-affine", {"affine": affine})):
        layer = Labels(data[:1], scale=(2.0, 0.5, 0.25), translate=(1.0, 3.0, 4.0), rotate=30, **extra)
        [path] = write_labels(str(tmp_path / f"{name}.tif"), layer.data, layer.as_layer_data_tuple()[1])
        [(back_data, kwargs, _)] = read_layers(path)
        back = Labels(back_data, **kwargs)
        for corner in ((0, 0), (24, 32), (0, 32)):
            np.testing.assert_allclose(back.data_to_world(corner), layer.data_to_world((0, *corner))[1:], atol=1e-9)


def test_angstrom_calibrations_are_read_and_written_as_nanometres(tmp_path):
    """ImageJ's Å (written as the literal escape \\u00C5) opened as 'pixel', and Labels in angstrom saved as 'pixel'."""
    from napari.layers import Labels

    data = np.zeros((3, 32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", data, imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "unit": "\\u00C5", "spacing": 2.0})
    [(_, kwargs, _)] = read_layers(str(tmp_path / "em.tif"))
    assert kwargs["units"] == ("nanometer",) * 3 and np.allclose(kwargs["scale"], (0.2, 0.05, 0.05))
    layer = Labels(data, scale=(2.0, 0.5, 0.5), units=("angstrom",) * 3)
    [path] = write_labels(str(tmp_path / "labels.tif"), layer.data, layer.as_layer_data_tuple()[1])
    [(_, kwargs, _)] = read_layers(path)
    assert kwargs["units"] == ("nanometer",) * 3 and np.allclose(kwargs["scale"], (0.2, 0.05, 0.05))
    # offsets and an affine's translation convert with the pixel size: every point stays where it was (in nm now)
    for unit, factor in (("angstrom", 0.1), ("millimeter", 1000.0)):
        layer = Labels(data, scale=(2.0, 0.5, 0.5), translate=(1.0, 100.0, 200.0), rotate=15, units=(unit,) * 3,
                       affine=[[1, 0, 0, 3], [0, 1, 0, 5], [0, 0, 1, 7], [0, 0, 0, 1]])
        [path] = write_labels(str(tmp_path / f"placed-{unit}.tif"), layer.data, layer.as_layer_data_tuple()[1])
        [(back_data, kwargs, _)] = read_layers(path)
        back = Labels(back_data, **kwargs)
        for corner in ((0, 0, 0), (3, 32, 32), (0, 32, 0)):
            np.testing.assert_allclose(back.data_to_world(corner), factor * np.asarray(layer.data_to_world(corner)), rtol=1e-9)


def test_the_time_step_of_a_time_series_of_labels_without_a_unit_comes_back(tmp_path):
    """ImageJ files keep a time step only with a unit: a (T, Z, Y, X) labels layer of scale (5, 2, 1, 1) came back (1, 2, 1, 1)."""
    from napari.layers import Labels

    layer = Labels(np.zeros((2, 3, 16, 16), np.uint8), scale=(5.0, 2.0, 1.0, 1.0))
    [path] = write_labels(str(tmp_path / "series.tif"), layer.data, layer.as_layer_data_tuple()[1])
    assert read_layers(path)[0][1]["scale"] == (5.0, 2.0, 1.0, 1.0)


def test_a_stack_recorded_as_yxz_opens_with_its_slices_as_images(tmp_path, monkeypatch):
    """B-scans saved side by side as (Y, X, N) with their axes recorded opened as N-pixel-wide images, which the
    inference widget predicted (the command line refuses them); their labels too."""
    warnings = []
    monkeypatch.setattr(_reader, "_notify_warning", warnings.append)
    rng = np.random.default_rng(0)
    scans = rng.integers(0, 255, (5, 40, 60), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "scans.tif", np.moveaxis(scans, 0, -1).copy(), metadata={"axes": "YXZ"})
    [(data, kwargs, kind)] = read_layers(str(tmp_path / "scans.tif"))
    assert kind == "image" and kwargs["axis_labels"] == ("z", "y", "x")
    np.testing.assert_array_equal(np.asarray(data), scans)
    assert "records its axes as YXZ" in warnings[0] and "opened as ZYX" in warnings[0]
    layers = (scans > 128).astype(np.uint8)
    tifffile.imwrite(tmp_path / "scans-labels.tif", np.moveaxis(layers, 0, -1).copy(), metadata={"axes": "YXZ"})
    [(data, kwargs, kind)] = read_layers(str(tmp_path / "scans-labels.tif"))
    assert kind == "labels" and np.asarray(data).shape == (5, 40, 60)
