"""Chunked prediction (dask, zarr stores, a dask.distributed cluster) and the zarr reader/writer."""

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from _helpers import run_cli as run, stripes, tiny_model
from napari_unet import chunked, zarr_io
from napari_unet.chunked import ModelSource, predict_chunked, store_events
from napari_unet.cli import main
from napari_unet.model_io import save_model
from napari_unet.predict import predict


@pytest.fixture
def context_model():
    """An untrained depth-2 network that also sees one neighbouring slice on each side (argmax labels)."""
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    config = ModelConfig(depth=2, base_filters=4, context_slices=1)
    return UNetModel(build_unet(config), config, [0, 255])


@pytest.mark.parametrize("per_chunk", [1, 2, 5])
def test_chunked_prediction_equals_predict_with_context_slices_across_chunk_borders(context_model, per_chunk):
    image = stripes(n_slices=5, size=64, seed=3)[0]
    expected = predict(context_model, image, tta=False)
    result = predict_chunked(context_model, image, slices_per_chunk=per_chunk, tta=False, return_probabilities=True)
    assert result.labels.chunks[0] == tuple(stop - first for first, stop in result.chunks)
    labels, probabilities = (np.asarray(a) for a in __import__("dask").compute(result.labels, result.probabilities, scheduler="threads"))
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    assert image.dtype == np.uint8 and image.shape == (5, 64, 64)  # input untouched


def test_chunked_prediction_follows_the_membrane_rule_and_the_dask_chunks(tmp_path):
    import dask.array as da

    model = tiny_model()
    assert model.boundary_rule is not None
    image = stripes(n_slices=4, size=96, seed=5)[0]
    expected = predict(model, image, tta=False, return_probabilities=False).labels
    lazy = da.from_array(image, chunks=(3, 32, 32))  # chunks cut through slices: each task still gets whole slices
    result = predict_chunked(model, lazy, tta=False)
    assert result.chunks == ((0, 3), (3, 4))
    np.testing.assert_array_equal(result.labels.compute(), expected)
    one = predict_chunked(model, image[1], tta=False)  # a 2-D image
    np.testing.assert_array_equal(one.labels.compute(), predict(model, image[1], tta=False).labels)


def test_model_sources_travel_as_a_path_or_as_file_bytes_and_load_once_per_process(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_model(model, tmp_path / "m.keras")
    by_path = pickle.loads(pickle.dumps(ModelSource(path)))
    assert by_path.path == str(path.resolve()) and by_path._bytes is None and by_path.class_values == [0, 255]
    in_memory = ModelSource(model)
    payload = pickle.dumps(in_memory)
    assert len(payload) > 10_000  # the model file itself
    copy = pickle.loads(payload)
    assert copy._model is None and copy.key == in_memory.key
    monkeypatch.setattr(chunked, "_LOADED", __import__("collections").OrderedDict())
    loads = []
    load_model = chunked.ModelSource._load_file
    monkeypatch.setattr(chunked.ModelSource, "_load_file", lambda self: loads.append(self.key) or load_model(self))
    image = stripes(n_slices=2, size=64, seed=1)[0]
    labels = [predict_chunked(copy, image, slices_per_chunk=1, tta=False).labels.compute(scheduler="threads") for _ in range(2)]
    assert loads == [in_memory.key]  # loaded from its bytes once, then cached
    np.testing.assert_array_equal(labels[0], predict(model, image, tta=False).labels)
    fresh = ModelSource(model)
    predict_chunked(fresh, image, tta=False)
    assert fresh._bytes is None  # building the task graph does not write the model file (dask tokenises by key)
    for _ in range(4):
        predict_chunked(ModelSource(model), image, tta=False).labels.compute(scheduler="threads")
    assert len(chunked._LOADED) == chunked._LOADED_MAX  # models of earlier calls are let go


def test_a_model_file_to_or_from_bytes_lies_in_a_folder_naming_its_process_and_dead_ones_folders_go(tmp_path, monkeypatch):
    """These folders were napari-unet-model-XXXXXXXX (model loading's prefix, no PID): one that a process killed while
    it wrote or read a model's bytes left in /tmp was never removed."""
    import tempfile

    import napari_unet.model_io as model_io
    from _helpers import dead_and_live_pids

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    old = time.time() - 3600
    seen = []
    save, load = model_io.save_model, model_io.load_model
    monkeypatch.setattr(model_io, "save_model", lambda model, path: seen.append(Path(path).parent.name) or save(model, path))
    monkeypatch.setattr(model_io, "load_model", lambda path: seen.append(Path(path).parent.name) or load(path))
    with dead_and_live_pids() as (dead_pid, live_pid):
        for name in [f"{dead_pid}-abc_1234", f"{live_pid}-abc_1234", f"{dead_pid}-fresh123"]:
            folder = temp / f"napari-unet-chunks-{name}"
            folder.mkdir()
            (folder / "model.keras").write_bytes(b"")
            if name != f"{dead_pid}-fresh123":
                os.utime(folder, (old, old))
        copy = pickle.loads(pickle.dumps(ModelSource(tiny_model())))  # the file's bytes, written in such a folder
        assert copy._load_file().class_values == [0, 255]  # read back from one
    assert len(seen) == 2 and all(name.startswith(f"napari-unet-chunks-{os.getpid()}-") for name in seen), seen
    kept = {p.name.removeprefix("napari-unet-chunks-") for p in temp.iterdir()}
    # a dead process's old folder goes; a live process's and a fresh one stay; this process's own are gone
    assert kept == {f"{live_pid}-abc_1234", f"{dead_pid}-fresh123"}


def test_bad_model_paths_and_images_are_refused_before_any_task(tmp_path):
    from napari_unet.data import InputError
    from napari_unet.model_io import ModelFileError

    with pytest.raises(ModelFileError, match="does not exist"):
        predict_chunked(tmp_path / "missing.keras", np.zeros((2, 32, 32)))
    with pytest.raises(InputError, match="RGB|one-channel"):
        predict_chunked(tiny_model(), np.zeros((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="at least 1"):
        predict_chunked(tiny_model(), np.zeros((2, 32, 32)), slices_per_chunk=0)
    with pytest.raises(ValueError, match="whole number"):  # 1.5 ran as 1
        predict_chunked(tiny_model(), np.zeros((2, 32, 32)), slices_per_chunk=1.5)


def test_an_error_in_a_task_reaches_the_caller(context_model):
    from napari_unet.data import InputError

    image = np.zeros((3, 32, 32), np.float32)
    image[2, 5, 5] = np.nan
    result = predict_chunked(context_model, image, slices_per_chunk=1, tta=False)
    with pytest.raises(InputError, match="NaN"):
        result.labels.compute(scheduler="threads")


def test_store_events_fill_zarr_stores_chunk_by_chunk_and_commit_replaces_atomically(tmp_path):
    model = tiny_model()
    image = stripes(n_slices=3, size=64, seed=2)[0]
    expected = predict(model, image, tta=False)
    result = predict_chunked(model, image, slices_per_chunk=2, tta=False, return_probabilities=True)
    target = tmp_path / "labels.zarr"
    zarr_io.write_zarr(target, np.full((1, 8, 8), 7, np.uint8))  # an old store, replaced whole
    labels = zarr_io.create_zarr(target, image.shape, np.uint8, (2, 64, 64), {"class_values": [0, 255], "axes": "ZYX"})
    probs = zarr_io.create_zarr(tmp_path / "probs.zarr", (3, 2, 64, 64), np.float32, (2, 2, 64, 64))
    events = list(store_events(result, labels, probs))
    assert events[-1].done == events[-1].total == 3  # slices written
    assert [e.done for e in events] == sorted({e.done for e in events})
    assert zarr.open_array(str(target), mode="r").shape == (1, 8, 8)  # untouched until committed
    replaced = zarr_io.commit_zarr(labels, target)
    assert not labels.exists() and replaced.name.endswith(".replaced")  # the old store moved aside, for the caller to delete
    zarr_io.discard_zarr(replaced)
    read = zarr_io.read_zarr(target)
    assert read.axes == "ZYX" and read.metadata["class_values"] == [0, 255] and read.is_labels_hint
    np.testing.assert_array_equal(np.asarray(read.data), expected.labels)
    np.testing.assert_allclose(zarr.open_array(str(probs), mode="r")[:], np.moveaxis(expected.probabilities, -1, 1), atol=1e-6)


def test_closing_store_events_early_leaves_chunks_not_started_unwritten(tmp_path):
    image = stripes(n_slices=4, size=64)[0]
    result = predict_chunked(tiny_model(), image, slices_per_chunk=1, tta=False)
    store = zarr_io.create_zarr(tmp_path / "l.zarr", image.shape, np.uint8, (1, 64, 64))
    events = store_events(result, store)
    next(events)
    events.close()
    written = zarr.open_array(str(store), mode="r")[:]
    assert written[0].any() and not written[2:].any()  # two chunks in flight at most: the second may finish


def test_stores_that_tasks_would_share_or_that_do_not_fit_are_refused(tmp_path):
    image = stripes(n_slices=4, size=64)[0]
    result = predict_chunked(tiny_model(), image, slices_per_chunk=1, tta=False)
    shared = zarr_io.create_zarr(tmp_path / "a.zarr", image.shape, np.uint8, (4, 64, 64))
    with pytest.raises(ValueError, match="would share"):
        next(store_events(result, shared))
    flat = zarr_io.create_zarr(tmp_path / "b.zarr", image.shape[1:], np.uint8, (64, 64))
    with pytest.raises(ValueError, match="needs"):
        next(store_events(result, flat))
    assert not zarr.open_array(str(shared), mode="r")[:].any()


def test_closing_store_events_stops_the_running_tasks_and_waits_for_them(tmp_path, monkeypatch):
    image = stripes(n_slices=6, size=64)[0]
    result = predict_chunked(tiny_model(), image, slices_per_chunk=1, tta=False)
    stops = []
    block = chunked._predict_block
    monkeypatch.setattr(chunked, "_predict_block", lambda *a, **outputs: stops.append(outputs["stop"]) or block(*a, **outputs))
    store = zarr_io.create_zarr(tmp_path / "l.zarr", image.shape, np.uint8, (1, 64, 64))
    events = store_events(result, store)
    next(events)
    assert stops and not any(stop() for stop in stops)
    events.close()
    assert all(stop() for stop in stops) and len(stops) <= 3  # told to stop; the tasks not started never start


def test_commit_replaces_only_a_zarr_array_and_restores_it_when_the_rename_fails(tmp_path, monkeypatch):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    group = tmp_path / "dataset.zarr"  # a group may hold other data: never replaced whole
    zarr.open_group(str(group), mode="w").create_array("raw", shape=(4, 4), dtype="u1")
    for target in (folder, group):
        partial = zarr_io.create_zarr(target, (4, 4), np.uint8, (4, 4))
        with pytest.raises(FileExistsError, match="not a zarr array"):
            zarr_io.commit_zarr(partial, target)
        zarr_io.discard_zarr(partial)
    assert (folder / "keep.txt").read_text() == "mine" and (group / "raw").is_dir()
    old = tmp_path / "old.zarr"
    zarr_io.write_zarr(old, np.full((4, 4), 7, np.uint8))
    os.chmod(old, 0o750)
    partial = zarr_io.create_zarr(old, (4, 4), np.uint8, (4, 4))
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space left")) if Path(a) == partial else replace(a, b))
    with pytest.raises(OSError, match="No space"):
        zarr_io.commit_zarr(partial, old)
    assert (zarr.open_array(str(old), mode="r")[:] == 7).all()  # the old store is back
    monkeypatch.setattr(os, "replace", replace)
    zarr_io.discard_zarr(zarr_io.commit_zarr(partial, old))
    assert not zarr.open_array(str(old), mode="r")[:].any() and (old.stat().st_mode & 0o777) == 0o750


def test_read_zarr_takes_plain_arrays_single_array_groups_and_ome_zarr_with_pixel_sizes(tmp_path):
    data = np.arange(2 * 6 * 8, dtype=np.uint16).reshape(2, 6, 8)
    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, dtype=data.dtype, chunks=(1, 6, 8))[:] = data
    plain = zarr_io.read_zarr(tmp_path / "plain.zarr")
    assert plain.axes == "ZYX" and plain.name == "plain" and plain.metadata["format"] == "zarr"
    np.testing.assert_array_equal(plain.data.compute(), data)

    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 6, 8))[:] = data
    group.create_array("1", shape=(2, 3, 4), dtype=data.dtype, chunks=(1, 3, 4))
    group.attrs["multiscales"] = [{
        "axes": [{"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "nanometer"},
                 {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.05, 4.0, 4.0]},
                                                                 {"type": "translation", "translation": [1.0, 20.0, 8.0]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [0.05, 8.0, 8.0]}]}],
    }]
    ome = zarr_io.read_zarr(tmp_path / "image.ome.zarr")
    # nm beside µm, all in µm as TIFFs are read (napari draws a layer from its scale's numbers alone)
    assert ome.axes == "ZYX" and ome.scale == pytest.approx((0.05, 0.004, 0.004)) and ome.units == ("µm", "µm", "µm")
    assert ome.metadata["translate"] == pytest.approx([1.0, 0.02, 0.008])  # in µm too (it stayed in nm: 1000x off)
    assert ome.name == "image" and ome.metadata["format"] == "ome-zarr" and ome.data.shape == data.shape
    assert not ome.is_labels_hint
    # an OME-Zarr label image (image.ome.zarr/labels/cells, marked "image-label"): labels whatever its name
    cells = group.create_group("labels").create_group("cells")
    cells.create_array("0", shape=data.shape, dtype=np.uint8, chunks=(1, 6, 8))[:] = data % 2
    cells.attrs.update(multiscales=[{"axes": group.attrs["multiscales"][0]["axes"], "datasets": [{"path": "0"}]}],
                       **{"image-label": {"version": "0.4"}})
    assert zarr_io.read_zarr(tmp_path / "image.ome.zarr" / "labels" / "cells").is_labels_hint

    single = zarr.open_group(str(tmp_path / "single.zarr"), mode="w")
    single.create_array("raw", shape=(6, 8), dtype=np.float32, chunks=(6, 8))
    assert zarr_io.read_zarr(tmp_path / "single.zarr").axes == "YX"


def test_an_ome_zarrs_label_images_are_named_when_its_image_opens_and_one_unit_for_all_lengths_is_read(tmp_path, monkeypatch):
    # the reader opened the image and skipped its labels/ without a word; a units string (as write_tiff takes) was dropped
    from napari_unet import _reader

    data = np.arange(2 * 6 * 8, dtype=np.uint8).reshape(2, 6, 8)
    group = zarr.open_group(str(tmp_path / "em.ome.zarr"), mode="w")
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 6, 8))[:] = data
    axes = [{"name": name, "type": "space", "unit": "micrometer"} for name in "zyx"]
    group.attrs["multiscales"] = [{"axes": axes, "datasets": [{"path": "0"}]}]
    labels = group.create_group("labels")
    labels.attrs["labels"] = ["membranes", "cells"]
    said = []
    monkeypatch.setattr(_reader, "_notify_info", said.append)
    layers = _reader.read_layers(str(tmp_path / "em.ome.zarr"))
    assert [kind for _, _, kind in layers] == ["image"]
    assert said == ["napari-unet: em.ome.zarr also holds the label images membranes, cells: open em.ome.zarr/labels/<name> "
                    "with the napari U-Net reader to train on one or to correct it"]
    said.clear()
    zarr_io.write_zarr(tmp_path / "own.zarr", data, {"axes": "ZYX", "scale": [0.05, 0.004, 0.004], "units": "µm"})
    own = zarr_io.read_zarr(tmp_path / "own.zarr")
    assert own.units == ("µm",) * 3 and own.scale == pytest.approx((0.05, 0.004, 0.004))
    assert _reader.read_layers(str(tmp_path / "own.zarr")) and said == []


def test_ome_zarr_layouts_scales_and_damaged_chunks(tmp_path, capsys):
    data = np.arange(2 * 6 * 8, dtype=np.uint8).reshape(2, 6, 8)
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w")  # bioformats2raw: the image is the group "0"
    image = root.create_group("0")
    image.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 6, 8))[:] = data
    image.attrs["multiscales"] = [{
        "axes": ["z", "y", "x"],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}],  # applies to every level
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, "4 nm", -1]}]}],
    }]
    read = zarr_io.read_zarr(tmp_path / "b2r.zarr")
    assert read.scale == (1.0, 1.0, 1.0) and read.axes == "ZYX"  # 0.5 x 2; unusable sizes become 1
    np.testing.assert_array_equal(read.data.compute(), data)
    # where the volume lies: the reader dropped OME's translation (opened at 0, 0, 0 instead of 10, 2, 3 µm)
    image.attrs["multiscales"] = [{
        "axes": ["z", "y", "x"],
        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}, {"type": "translation", "translation": [10.0, 2.0, 3.0]}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 1.0, 1.0]},
                                                                 {"type": "translation", "translation": [1.0, 0.0, "x"]}]}],
    }]
    read = zarr_io.read_zarr(tmp_path / "b2r.zarr")
    assert read.scale == (1.0, 1.0, 1.0) and read.metadata["translate"] == [12.0, 2.0, 3.0]  # (1 * 2 + 10); unusable: 0
    from napari_unet._reader import read_layers

    [(_, kwargs, kind)] = read_layers(str(tmp_path / "b2r.zarr"))
    assert kind == "image" and kwargs["translate"] == (12.0, 2.0, 3.0)
    image.attrs["multiscales"] = [{"axes": ["z", "y", "x"], "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}, {"type": "translation", "path": "shift.json"}]}]}]  # (in a file of its own)
    assert "translate" not in zarr_io.read_zarr(tmp_path / "b2r.zarr").metadata  # opened unshifted, not refused as damaged
    image.attrs["multiscales"] = [{"axes": ["a", "b", "y"], "datasets": [{"path": "0"}]}]
    with pytest.raises(zarr_io.ZarrReadError, match="t, c, z, y, x and at most one other"):
        zarr_io.read_zarr(tmp_path / "b2r.zarr")

    zarr_io.write_zarr(tmp_path / "damaged.zarr", np.full((3, 64, 64), 9, np.uint8))
    chunk = next(p for p in (tmp_path / "damaged.zarr").rglob("*") if p.is_file() and p.parent.name != "damaged.zarr")
    chunk.write_bytes(b"not a chunk")
    with pytest.raises(zarr_io.ZarrReadError, match="damaged or unreadable chunk"):
        zarr_io.read_zarr(tmp_path / "damaged.zarr").data.compute()
    save_model(tiny_model(), tmp_path / "m.keras")
    code, _, err = run(capsys, "predict", tmp_path / "m.keras", tmp_path / "damaged.zarr", "-o", tmp_path / "p.zarr", "--no-tta")
    assert code == 2 and "damaged or unreadable chunk" in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2r.zarr", "damaged.zarr", "m.keras"]  # no partial store left


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "not a readable zarr store"),
    (lambda p: [zarr.open_group(str(p), mode="a").create_array(n, shape=(2, 2), dtype="u1") for n in "ab"], "arrays ['a', 'b']"),
    (lambda p: zarr.open_group(str(p), mode="w"), "no array"),
    (lambda p: zarr.open_group(str(p), mode="w").attrs.update({"multiscales": [{"datasets": [{"path": "9"}]}]}), "damaged OME-Zarr"),
])
def test_unreadable_zarr_stores_are_one_line_errors(tmp_path, make, words):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises(zarr_io.ZarrReadError, match=words.replace("[", r"\[").replace("]", r"\]")) as info:
        zarr_io.read_zarr(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("attribute, words", [
    ("a note", "attribute is str, not an object"),  # dict("a note"): a raw ValueError in train and evaluate
    ([1, 2], "attribute is list, not an object"),
    ({"ignore_value": "none"}, "ignore_value 'none' is not a whole number"),  # int("none") in read_label_stack
    ({"class_values": [0, 255.7]}, "class_values .* is not a list of distinct whole numbers"),  # truncated to 255
])
def test_napari_unet_attributes_another_tool_wrote_are_one_line_errors(tmp_path, attribute, words):
    zarr_io.write_zarr(tmp_path / "labels.zarr", np.zeros((2, 8, 8), np.uint8))
    zarr.open_array(str(tmp_path / "labels.zarr"), mode="a").attrs["napari_unet"] = attribute
    with pytest.raises(zarr_io.ZarrReadError, match=words):
        zarr_io.read_zarr(tmp_path / "labels.zarr")


def test_a_store_missing_where_it_is_read_is_an_error_not_zeros(tmp_path):
    zarr_io.write_zarr(tmp_path / "here.zarr", np.full((2, 8, 8), 5, np.uint8))
    lazy = zarr_io.read_zarr(tmp_path / "here.zarr").data
    os.rename(tmp_path / "here.zarr", tmp_path / "elsewhere.zarr")  # as on a worker without the shared file system
    with pytest.raises(zarr_io.ZarrReadError, match="not found on"):
        lazy.compute()


def test_zarr_images_are_labels_only_by_metadata_or_name_and_stay_lazy(tmp_path):
    from napari_unet._reader import get_reader

    image = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    image[0] = 0  # a blank first slice (padding) has few values, like labels
    zarr_io.write_zarr(tmp_path / "em.zarr", image)
    data, _, layer_type = get_reader(str(tmp_path / "em.zarr"))()[0]
    assert layer_type == "image" and not isinstance(data, np.ndarray)
    zarr_io.write_zarr(tmp_path / "em-mask.zarr", (image > 128).astype(np.uint8))
    assert get_reader(str(tmp_path / "em-mask.zarr"))()[0][2] == "labels"


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def model_and_stack(tmp_path):
    save_model(tiny_model(), tmp_path / "m.keras")
    image = stripes(n_slices=5, size=64, seed=4)[0]
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    zarr_io.write_zarr(tmp_path / "image.zarr", image, chunks=(2, 64, 64))
    return tmp_path


def test_predictions_of_an_ome_zarr_lie_where_its_image_lies(model_and_stack, capsys):
    from napari_unet._reader import read_layers

    d = model_and_stack
    image = tifffile.imread(d / "image.tif")
    group = zarr.open_group(str(d / "placed.ome.zarr"), mode="w")
    group.create_array("0", shape=image.shape, dtype=image.dtype, chunks=(2, 64, 64))[:] = image
    group.attrs["multiscales"] = [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.05, 0.004, 0.004]},
                                                                 {"type": "translation", "translation": [10.0, 2.0, 3.0]}]}],
    }]
    [(_, kwargs, _)] = read_layers(str(d / "placed.ome.zarr"))
    assert kwargs["translate"] == (10.0, 2.0, 3.0)
    for output, probabilities in (("p.zarr", "q.zarr"), ("p.tif", "q.tif")):
        code, _, err = run(capsys, "predict", d / "m.keras", d / "placed.ome.zarr", "-o", d / output, "--probabilities", d / probabilities, "--no-tta")
        assert code == 0, err
        [(_, kwargs, kind)] = read_layers(str(d / output))
        assert kind == "labels" and kwargs["translate"] == pytest.approx((10.0, 2.0, 3.0)), output
        assert kwargs["scale"] == pytest.approx((0.05, 0.004, 0.004)), output
        layers = read_layers(str(d / probabilities))
        assert all(k["translate"] == pytest.approx((10.0, 2.0, 3.0)) for _, k, _ in layers), probabilities


def test_predictions_of_a_mirrored_image_are_mirrored_as_it_is(model_and_stack, capsys):
    # a napari layer mirrored by a negative scale, saved: its zarr prediction reopened unmirrored at 1 unit per pixel
    from napari_unet._reader import read_layers
    from napari_unet.tiff_io import write_tiff

    d = model_and_stack
    write_tiff(str(d / "mirrored.tif"), tifffile.imread(d / "image.tif"), {"scale": (-2.0, 0.5, -0.5), "units": ("µm",) * 3})
    [(_, kwargs, _)] = read_layers(str(d / "mirrored.tif"))
    assert kwargs["scale"] == pytest.approx((-2.0, 0.5, -0.5))
    for output in ("p.zarr", "p.tif"):
        code, _, err = run(capsys, "predict", d / "m.keras", d / "mirrored.tif", "-o", d / output, "--no-tta")
        assert code == 0, err
        [(_, kwargs, kind)] = read_layers(str(d / output))
        assert kind == "labels" and kwargs["scale"] == pytest.approx((-2.0, 0.5, -0.5)), output
    # one slice: the file holds Y and X only, its record of mirrored axes all three
    write_tiff(str(d / "one.tif"), tifffile.imread(d / "image.tif")[:1], {"scale": (-2.0, 0.5, -0.5), "units": ("µm",) * 3})
    [(_, kwargs, _)] = read_layers(str(d / "one.tif"))
    assert kwargs["scale"][-2:] == pytest.approx((0.5, -0.5))


def test_predict_writes_zarr_stores_equal_to_its_tiff_files(model_and_stack, capsys):
    d = model_and_stack
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.tif", "-o", d / "p.tif", "--probabilities", d / "q.tif", "--no-tta")
    assert code == 0, err
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "p.zarr", "--probabilities", d / "q.zarr", "--no-tta")
    assert code == 0, err
    assert "slice 5/5 ETA" in err and "axes ZCYX, zarr" in err and "replaced" not in err
    labels = zarr.open_array(str(d / "p.zarr"), mode="r")
    assert labels.chunks == (1, 64, 64) and dict(labels.attrs)["napari_unet"]["class_values"] == [0, 255]
    assert zarr.open_array(str(d / "q.zarr"), mode="r").chunks == (1, 1, 64, 64)
    np.testing.assert_array_equal(labels[:], tifffile.imread(d / "p.tif"))
    np.testing.assert_allclose(zarr.open_array(str(d / "q.zarr"), mode="r")[:], tifffile.imread(d / "q.tif"), atol=1e-6)
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]  # no partial stores left
    # a zarr image into a TIFF, one slice per chunk from a TIFF, and evaluate reads zarr stores
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "r.tif", "--no-tta")
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(d / "r.tif"), labels[:])
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.tif", "-o", d / "p.zarr", "--no-tta", "--slices-per-chunk", "1")
    assert code == 0 and "/5 ETA" in err, err
    assert "(axes ZYX, zarr); it replaced the store of that name" in err  # outputs were replaced without a word
    code, out, err = run(capsys, "evaluate", d / "p.zarr", d / "p.tif")
    assert code == 0 and json.loads(out)["pixel_error"] == 0, err
    # a 2-D image: stores without a Z axis
    tifffile.imwrite(d / "one.tif", tifffile.imread(d / "image.tif")[2])
    code, _, err = run(capsys, "predict", d / "m.keras", d / "one.tif", "-o", d / "one.zarr", "--probabilities", d / "one-q.zarr", "--no-tta")
    assert code == 0, err
    np.testing.assert_array_equal(zarr.open_array(str(d / "one.zarr"), mode="r")[:], labels[2])
    np.testing.assert_allclose(zarr.open_array(str(d / "one-q.zarr"), mode="r")[:], tifffile.imread(d / "q.tif")[2], atol=1e-6)


@pytest.mark.parametrize("argv, words", [
    (["-o", "{d}/p.zarr", "--probabilities", "{d}/q.tif"], "must both be zarr stores (.zarr) or both TIFF"),
    (["-o", "{d}/p.tif", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs a zarr store"),
    (["-o", "{d}/p.tif", "--slices-per-chunk", "2"], "--slices-per-chunk needs a zarr store"),
    (["-o", "{d}/image.zarr"], "holds the input"),
    (["-o", "{d}/image.zarr/labels.zarr"], "lies inside the zarr store"),  # was "would overwrite the input (its folder)"
    (["--image", "{d}/dataset.zarr/raw", "-o", "{d}/dataset.zarr/pred.zarr"], "lies inside the zarr store"),  # was written
    (["-o", "{d}/notes.zarr"], "exists and is not a zarr array"),
    (["-o", "{d}/dataset.zarr"], "exists and is not a zarr array"),
    (["-o", "{d}/missing/p.zarr"], "does not exist"),
    (["-o", "{d}/old.zarr", "--probabilities", "{d}/old.zarr/q.zarr"], "must not lie one inside the other"),
    (["--image", "{d}/dataset.zarr/raw", "-o", "{d}/dataset.zarr"], "holds the input"),  # OME-Zarr style: raw and labels in one store
    (["--model", "{d}/models.zarr/m.keras", "-o", "{d}/models.zarr"], "holds the input"),
])
def test_bad_zarr_outputs_exit_2_before_any_work(model_and_stack, capsys, argv, words):
    d = model_and_stack
    (d / "notes.zarr").mkdir()
    (d / "notes.zarr" / "keep.txt").write_text("mine")
    zarr_io.write_zarr(d / "dataset.zarr" / "raw", tifffile.imread(d / "image.tif"))
    zarr.open_group(str(d / "dataset.zarr"), mode="a")
    zarr_io.write_zarr(d / "models.zarr", np.zeros((2, 2), np.uint8))
    zarr_io.write_zarr(d / "old.zarr", np.zeros((2, 2), np.uint8))
    (d / "models.zarr" / "m.keras").write_bytes((d / "m.keras").read_bytes())
    argv = [a.format(d=d) for a in argv]
    model, image = d / "m.keras", d / "image.zarr"
    for flag in ("--image", "--model"):
        if flag in argv:
            i = argv.index(flag)
            image, model = (argv[i + 1], model) if flag == "--image" else (image, argv[i + 1])
            del argv[i : i + 2]
    before = sorted(str(p) for p in d.rglob("*"))
    code, _, err = run(capsys, "predict", model, image, *argv)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert sorted(str(p) for p in d.rglob("*")) == before


def test_empty_stacks_and_sigterm_are_clean_exits(model_and_stack, capsys, monkeypatch):
    import signal

    from napari_unet import cli

    d = model_and_stack
    zarr.open_array(str(d / "empty.zarr"), mode="w", shape=(0, 64, 64), dtype="u1", chunks=(1, 64, 64))
    for output in ("e.zarr", "e.tif"):
        code, _, err = run(capsys, "predict", d / "m.keras", d / "empty.zarr", "-o", d / output)
        assert code == 2 and "holds no pixels" in err, err
    code, _, err = run(capsys, "evaluate", d / "empty.zarr", d / "empty.zarr")
    assert code == 2 and "holds no pixels" in err, err
    stores = predict_chunked  # SIGTERM (kill, timeout, batch schedulers) interrupts like Ctrl-C and cleans up

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return stores(*args, **kwargs)

    monkeypatch.setattr(chunked, "predict_chunked", terminated)
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "t.zarr", "--no-tta")
    assert code == cli.EXIT_TERMINATED == 143 and "terminated; no output file was written" in err, err
    assert not [p.name for p in d.iterdir() if p.name.startswith(".") or p.name == "t.zarr"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_an_unreachable_scheduler_is_a_clear_error(model_and_stack, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from napari_unet import cli

    monkeypatch.setattr(cli, "SCHEDULER_TIMEOUT", "1s")
    d = model_and_stack
    code, _, err = run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "p.zarr", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and "cannot reach a dask scheduler" in err, err
    assert not (d / "p.zarr").exists()


def test_napari_reader_opens_predicted_zarr_labels_in_their_classes(model_and_stack, capsys):
    from napari_unet._reader import get_reader

    d = model_and_stack
    assert run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "pred.zarr", "--no-tta")[0] == 0
    image_layers = get_reader(str(d / "image.zarr"))()
    assert [layer_type for *_, layer_type in image_layers] == ["image"]
    data, kwargs, layer_type = get_reader(str(d / "pred.zarr"))()[0]
    assert layer_type == "labels" and kwargs["metadata"]["class_values"] == [0, 255]
    assert isinstance(data, np.ndarray) and set(np.unique(data)) <= {1, 2}  # display values, in memory for painting
    assert get_reader(str(d / "image.tif")) is not None and get_reader(str(d / "nothing.zarr")) is None
    assert run(capsys, "predict", d / "m.keras", d / "image.zarr", "-o", d / "p.zarr", "--probabilities", d / "q.zarr", "--no-tta")[0] == 0
    from dask.callbacks import Callback

    tasks = []
    with Callback(pretask=lambda key, dask, state: tasks.append(key)):
        data, kwargs, layer_type = get_reader(str(d / "q.zarr"))()[0]
    assert layer_type == "image" and not isinstance(data, np.ndarray)  # probabilities stay lazy
    assert len(tasks) < data.npartitions, "opening the store read all of it (6.4 GB for 1.7 GB of OCT probabilities)"


def _answer_auto_with(choices) -> None:
    """On a worker: make ``chunked.resolve_auto_choices`` return ``choices`` (None: its own answer again)."""
    from napari_unet import chunked as module

    if not hasattr(module, "_real_resolve"):
        module._real_resolve = module.resolve_auto_choices
    module.resolve_auto_choices = module._real_resolve if choices is None else (lambda tta, mixed_precision: choices)


@pytest.mark.slow
def test_a_dask_distributed_cluster_of_processes_predicts_the_same_labels(model_and_stack, capsys, monkeypatch):
    monkeypatch.chdir(model_and_stack)
    distributed = pytest.importorskip("distributed")
    from napari_unet import cli

    monkeypatch.setattr(cli, "load_tensorflow_for_command", lambda: pytest.fail("with --scheduler only the workers need TensorFlow"))
    d = model_and_stack
    model = tiny_model()
    image = tifffile.imread(d / "image.tif")
    expected = predict(model, image, tta=False, return_probabilities=False).labels
    single_thread = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=single_thread) as cluster:
        with distributed.Client(cluster) as client:  # a model in memory travels as its file's bytes
            result = predict_chunked(model, zarr_io.read_zarr(d / "image.zarr").data, slices_per_chunk=1, tta=False, client=client)
            np.testing.assert_array_equal(client.compute(result.labels).result(), expected)
            # "auto" is decided on a worker: make the workers' answer differ from this process's
            here = chunked.resolve_auto_choices("auto", None)
            client.run(_answer_auto_with, (1 if here[0] == 4 else 4, not here[1]))
            decided = predict_chunked(model, image, tta="auto", client=client).options
            assert (decided["tta"], decided["mixed_precision"]) == (1 if here[0] == 4 else 4, not here[1])
            client.run(_answer_auto_with, None)
            client.run(os.chdir, "/")  # workers elsewhere: every path they get must be absolute
            code, _, err = run(capsys, "predict", "m.keras", "image.tif", "-o", "c.zarr", "--no-tta", "--slices-per-chunk", "2",
                               "--scheduler", cluster.scheduler_address)
        assert code == 0 and "slice 5/5 ETA" in err, err
        # a task's bad input on a worker: one line, exit 2, and no partial store left behind
        nan = tifffile.imread(d / "image.tif").astype(np.float32)
        nan[3, 5, 5] = np.nan
        tifffile.imwrite(d / "nan.tif", nan)
        code, _, err = run(capsys, "predict", "m.keras", "nan.tif", "-o", "n.zarr", "--no-tta", "--slices-per-chunk", "1",
                           "--scheduler", cluster.scheduler_address)
        assert code == 2 and "NaN" in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert not [p.name for p in d.iterdir() if p.name.startswith(".") or p.name == "n.zarr"]  # no partial stores left
    np.testing.assert_array_equal(zarr.open_array(str(d / "c.zarr"), mode="r")[:], expected)


def test_predicted_labels_and_probabilities_keep_the_images_pixel_sizes(model_and_stack, capsys):
    """Labels opened beside their image in napari must line up with it (TIFF and zarr outputs alike)."""
    from napari_unet.tiff_io import read_tiff, write_tiff

    d = model_and_stack
    write_tiff(d / "sized.tif", tifffile.imread(d / "image.tif"), {"scale": [0.05, 0.004, 0.004], "units": "µm"})
    for labels, probabilities in (("s.tif", "sp.tif"), ("s.zarr", "sp.zarr")):
        code, _, err = run(capsys, "predict", d / "m.keras", d / "sized.tif", "-o", d / labels, "--probabilities", d / probabilities, "--no-tta")
        assert code == 0, err
        read = read_tiff if labels.endswith(".tif") else zarr_io.read_zarr
        out = read(d / labels)
        assert out.axes == "ZYX" and out.scale == pytest.approx((0.05, 0.004, 0.004)) and out.units == ("µm",) * 3, labels
        probs = read(d / probabilities)
        assert probs.axes == "ZCYX" and probs.scale == pytest.approx((0.05, 1.0, 0.004, 0.004)), probabilities


def test_two_processes_committing_the_same_zarr_output_take_turns(tmp_path):
    # the loser of an interleaved commit failed with a raw OSError and left the old store hidden beside the output
    import subprocess
    import sys

    script = """
import sys, numpy as np
from napari_unet.zarr_io import commit_zarr, create_zarr, discard_zarr
target, failures = sys.argv[1], 0
for _ in range(150):
    partial = create_zarr(target, (2, 8, 8), np.uint8, (1, 8, 8), {})
    try:
        old = commit_zarr(partial, target)
        if old is not None:
            discard_zarr(old)
    except OSError as err:
        failures += 1
        print(err)
    finally:
        discard_zarr(partial)
print("failures", failures)
"""
    target = str(tmp_path / "out.zarr")
    runs = [subprocess.Popen([sys.executable, "-c", script, target], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert all(output.strip().endswith("failures 0") for output in outputs), outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_a_pair_of_stores_is_committed_all_or_none(tmp_path, monkeypatch):
    from napari_unet.zarr_io import commit_zarr_stores, create_zarr, write_zarr

    labels, probs = tmp_path / "labels.zarr", tmp_path / "probs.zarr"
    write_zarr(labels, np.full((2, 8, 8), 1, np.uint8))
    write_zarr(probs, np.full((2, 8, 8), 1, np.uint8))

    def partials(value):
        made = [create_zarr(path, (2, 8, 8), np.uint8, (1, 8, 8), {}) for path in (labels, probs)]
        for partial in made:
            zarr.open_array(str(partial), mode="r+")[:] = value
        return made

    def values():
        return [int(zarr.open_array(str(path), mode="r")[0, 0, 0]) for path in (labels, probs)]

    new_labels, new_probs = partials(2)
    shutil.rmtree(probs)
    probs.mkdir()  # another program put a plain folder there meanwhile
    with pytest.raises(FileExistsError, match="not a zarr array"):
        commit_zarr_stores([(new_labels, labels), (new_probs, probs)])
    assert int(zarr.open_array(str(labels), mode="r")[0, 0, 0]) == 1 and new_labels.exists()  # checked before the first rename
    probs.rmdir()
    write_zarr(probs, np.full((2, 8, 8), 1, np.uint8))
    for abandoned in (new_labels, new_probs):  # as the command discards the partial stores of a failed commit
        zarr_io.discard_zarr(abandoned)
    new_labels, new_probs = partials(2)
    calls = []

    def fail_on_the_second(partial, path, steps, original=zarr_io._replace_store):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk gone")
        return original(partial, path, steps)

    monkeypatch.setattr(zarr_io, "_replace_store", fail_on_the_second)
    with pytest.raises(OSError, match="disk gone"):
        commit_zarr_stores([(new_labels, labels), (new_probs, probs)])
    assert values() == [1, 1] and new_labels.exists() and new_probs.exists()  # the first rename was undone
    monkeypatch.undo()
    replaced = commit_zarr_stores([(new_labels, labels), (new_probs, probs)])
    assert values() == [2, 2] and all(old is not None and old.exists() for old in replaced)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".replaced")) == ["labels.zarr", "probs.zarr"]


def test_an_interrupt_during_the_renames_of_a_pair_comes_after_both(tmp_path, monkeypatch):
    # Ctrl-C or SIGTERM between the labels' and the probabilities' renames left a mixed pair
    import signal

    from napari_unet.zarr_io import commit_zarr_stores, create_zarr

    pair = [tmp_path / "labels.zarr", tmp_path / "probs.zarr"]
    for path in pair:  # earlier versions, replaced
        zarr_io.write_zarr(path, np.zeros((1, 4, 4), np.uint8))
    partials = [create_zarr(path, (1, 4, 4), np.uint8, (1, 4, 4), {}) for path in pair]
    original = zarr_io._replace_store

    def interrupted_after_the_first(partial, path, steps):
        old = original(partial, path, steps)
        if path == pair[0]:
            signal.raise_signal(signal.SIGINT)
        return old

    monkeypatch.setattr(zarr_io, "_replace_store", interrupted_after_the_first)
    written = []
    with pytest.raises(KeyboardInterrupt):
        commit_zarr_stores(list(zip(partials, pair)), written)
    assert all(path.exists() for path in pair) and not any(partial.exists() for partial in partials)
    assert written == pair  # the caller can say they were written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "probs.zarr"]  # no replaced stores left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_two_runs_committing_the_same_pair_of_stores_never_mix_them(tmp_path):
    # run A's labels beside run B's probabilities: each store was committed under its own lock
    script = """
import sys, numpy as np, zarr
from pathlib import Path
from napari_unet._files import folder_lock
from napari_unet.zarr_io import commit_zarr_stores, create_zarr, discard_zarr
folder, me, mixed = Path(sys.argv[1]), int(sys.argv[2]), 0
pair = [folder / "labels.zarr", folder / "probs.zarr"]
for _ in range(60):
    partials = [create_zarr(path, (1, 4, 4), np.uint8, (1, 4, 4), {}) for path in pair]
    for partial in partials:
        zarr.open_array(str(partial), mode="r+")[:] = me
    for old in commit_zarr_stores(list(zip(partials, pair))):
        if old is not None:
            discard_zarr(old)
    with folder_lock(folder.resolve()):
        seen = {int(zarr.open_array(str(path), mode="r")[0, 0, 0]) for path in pair}
    mixed += len(seen) > 1
print("mixed", mixed)
"""
    from _helpers import assert_two_runs_never_mix

    assert_two_runs_never_mix(script, tmp_path)


def test_predict_names_what_killed_runs_of_this_host_left_beside_its_outputs_and_removes_nothing(tmp_path, capsys):
    # a SIGKILLed or out-of-memory-killed predict leaves its hidden partial store (as large as the output) for good;
    # removing it would be wrong where a container of the same host name is still writing it
    import socket
    import subprocess
    import sys

    from napari_unet._files import stale_siblings
    from napari_unet.model_io import save_model

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host, alive = socket.gethostname(), os.getppid()
    made = []
    for pid, machine, kind in ((dead, host, "partial"), (dead, host, "replaced"), (alive, host, "partial"),
                               (dead, "other-node", "partial"), ("١٢", host, "partial"), ("9" * 30, host, "partial")):
        made.append(tmp_path / f".out.zarr.{machine}.{pid}.{kind}")
        made[-1].mkdir()
    stale = [tmp_path / f".out.zarr.{host}.{dead}.partial", tmp_path / f".out.zarr.{host}.{dead}.replaced"]
    assert stale_siblings(tmp_path / "out.zarr") == sorted(stale)  # not a live process's, another host's or odd names
    image = stripes(n_slices=2, size=64)[0].astype(np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    save_model(tiny_model(), tmp_path / "m.keras")
    assert main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "image.tif"), "-o", str(tmp_path / "out.zarr")]) == 0
    err = capsys.readouterr().err
    assert f"note: {stale[0]} is an unfinished out.zarr that a killed run (process {dead}, no longer running)" in err
    # (no out.zarr beside it: the only copy of one, a run killed between its renames; review 3 of s64, 5)
    assert f"note: {stale[1]} is the only copy of {tmp_path / 'out.zarr'}, which a killed run" in err
    assert all(path.exists() for path in made)


def test_tasks_of_a_tiff_or_numpy_stack_are_cut_to_the_task_input_limit(tmp_path, monkeypatch, capsys):
    # tasks of a TIFF input were always 8 slices: 1,099 MiB of input each for 12000² slices, two tasks at once
    monkeypatch.setattr(chunked, "MAX_TASK_INPUT_BYTES", 3 * 64 * 64)  # three 64² uint8 slices per task
    image = stripes(n_slices=10, size=64)[0].astype(np.uint8)
    assert chunked.default_slices_per_chunk(image.shape, image.dtype) == 3
    assert chunked.default_slices_per_chunk(image.shape, image.dtype, z_chunk=2) == 2  # a zarr image's own chunks
    assert predict_chunked(tiny_model(), image).chunks == ((0, 3), (3, 6), (6, 9), (9, 10))
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    from napari_unet.model_io import save_model

    save_model(tiny_model(), tmp_path / "m.keras")
    seen = []
    original = chunked.predict_chunked
    monkeypatch.setattr(chunked, "predict_chunked", lambda *a, **k: seen.append(k["slices_per_chunk"]) or original(*a, **k))
    assert main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "image.tif"), "-o", str(tmp_path / "p.zarr")]) == 0
    assert seen == [3]


@pytest.mark.parametrize("output", ["out.tif", "out.zarr"])
def test_predict_notes_options_the_model_cannot_honour_into_zarr_as_into_tiff(tmp_path, capsys, output):
    # -o X.zarr skipped the note that a tile smaller than the training patches sees less context (tile 8: all cell)
    save_model(tiny_model(), tmp_path / "m.keras")
    tifffile.imwrite(tmp_path / "image.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    code = main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "image.tif"), "-o", str(tmp_path / output), "--tile-size", "32"])
    err = capsys.readouterr().err
    assert code == 0 and "note: --tile-size 32 is smaller than the 64-pixel patches" in err, err


def test_a_zarr_stack_with_a_trailing_channel_axis_of_one_predicts_as_its_tiff_does(tmp_path, capsys):
    # (Z, Y, X, 1), as numpy and Keras keep one-channel stacks, was refused as "axes TZYX"
    save_model(tiny_model(), tmp_path / "m.keras")
    image = stripes(n_slices=3, size=64)[0]
    zarr.create_array(str(tmp_path / "zyx1.zarr"), data=image[..., None])
    tifffile.imwrite(tmp_path / "zyx1.tif", image[..., None], photometric="minisblack")
    assert zarr_io.read_zarr(tmp_path / "zyx1.zarr").axes == "ZYXC"
    for name in ("zyx1.zarr", "zyx1.tif"):
        code = main(["predict", str(tmp_path / "m.keras"), str(tmp_path / name), "-o", str(tmp_path / f"{name}.out.tif"), "--no-tta"])
        assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "zyx1.zarr.out.tif"), tifffile.imread(tmp_path / "zyx1.tif.out.tif"))


def test_store_events_report_slices_as_they_are_written_within_a_task(tmp_path, monkeypatch):
    # progress came per finished task: a task of 64 slices of 2048² ran about 25 minutes without a line
    from napari_unet import chunked

    model = tiny_model()
    image = stripes(n_slices=3, size=64, seed=2)[0]
    result = predict_chunked(model, image, slices_per_chunk=3, tta=False)  # one task
    labels = zarr_io.create_zarr(tmp_path / "labels.zarr", image.shape, np.uint8, (1, 64, 64), {"class_values": [0, 255]})
    write = chunked._SliceWriter.__setitem__

    def slow_write(self, index, value):  # a slow slice: more than the one-second look at the count
        write(self, index, value)
        time.sleep(2.2)

    monkeypatch.setattr(chunked._SliceWriter, "__setitem__", slow_write)
    events = list(store_events(result, labels))
    assert [(e.done, e.total) for e in events] == [(1, 3), (2, 3), (3, 3)]


def test_tall_slices_go_into_zarr_stores_band_by_band_and_count_once_each(tmp_path, monkeypatch):
    # predict_events writes a slice taller than a membrane-rule window band by band of rows: the stores took whole slices
    import napari_unet.postprocess as postprocess

    monkeypatch.setattr(postprocess, "RULE_TILE", 40)
    monkeypatch.setattr(postprocess, "RULE_MARGIN", 8)
    model = tiny_model()
    image = stripes(n_slices=3, size=128, seed=5)[0]
    expected = predict(model, image, tta=False)
    result = predict_chunked(model, image, slices_per_chunk=2, tta=False, return_probabilities=True)
    labels = zarr_io.create_zarr(tmp_path / "labels.zarr", image.shape, np.uint8, (1, 128, 128), {"class_values": [0, 255]})
    probs = zarr_io.create_zarr(tmp_path / "probs.zarr", (3, 2, 128, 128), np.float32, (1, 2, 128, 128))
    events = list(store_events(result, labels, probs))
    assert events[-1].done == events[-1].total == 3
    np.testing.assert_array_equal(zarr.open_array(str(labels), mode="r")[:], expected.labels)
    np.testing.assert_array_equal(zarr.open_array(str(probs), mode="r")[:], np.moveaxis(expected.probabilities, -1, 1))


@pytest.fixture
def chunk_io(monkeypatch):
    """Every chunk that zarr stores read, write or delete from now on: (operation, store folder, chunk key)."""
    from zarr.storage import LocalStore

    calls = []

    def recorded(operation):
        original = getattr(LocalStore, operation)

        async def method(self, key, *args, **kwargs):
            if not key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
                calls.append((operation, str(self.root), key))
            return await original(self, key, *args, **kwargs)

        monkeypatch.setattr(LocalStore, operation, method)

    for operation in ("get", "set", "delete"):
        recorded(operation)
    return calls


def _each_chunk_written_once(calls, stores: dict) -> None:
    """No chunk of the stores (folder -> number of chunks) read, and each written (or deleted, zarr's write of a chunk of
    fill values) exactly once."""
    writes = {}
    for operation, root, key in calls:
        if os.path.basename(root) in stores:
            assert operation != "get", f"chunk {key} of {root} read back"
            writes[(os.path.basename(root), key)] = writes.get((os.path.basename(root), key), 0) + 1
    assert {k: n for k, n in writes.items() if n != 1} == {}, "chunks written more than once"
    assert {name: sum(1 for (n, _) in writes if n == name) for name in stores} == stores


def _tall_model(downscale: int):
    if downscale == 1:  # the membrane rule, band by band
        return tiny_model()
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    config = ModelConfig(depth=2, base_filters=4, downscale=downscale)  # argmax labels, upscaled bilinearly
    return UNetModel(build_unet(config), config, [0, 255])


@pytest.mark.parametrize("downscale", [1, 2])
def test_a_tall_slices_bands_write_whole_chunks_of_stores_chunked_by_the_band_rows(tmp_path, monkeypatch, chunk_io, downscale):
    # stores held one chunk per slice: every band of a tall slice read it back, changed its rows and wrote it again
    import napari_unet.postprocess as postprocess
    from napari_unet.predict import row_bands, store_chunk_rows

    monkeypatch.setattr(postprocess, "RULE_TILE", 40)
    monkeypatch.setattr(postprocess, "RULE_MARGIN", 8)
    assert store_chunk_rows(56) == 56 and store_chunk_rows(128) == 32  # one window: one chunk; 4 equal bands
    # 130 rows: bands of 32, 33, 33 and 32 rows, not on the boundaries of chunks of 32 rows (the last of 2 rows)
    assert [core[:2] for core in row_bands(130)] == [(0, 32), (32, 65), (65, 98), (98, 130)] and store_chunk_rows(130) == 32
    model = _tall_model(downscale)
    image = stripes(n_slices=3, size=130, seed=5)[0][:, :, :100]
    expected = predict(model, image, tta=False)
    result = predict_chunked(model, image, slices_per_chunk=2, tta=False, return_probabilities=True)
    labels = zarr_io.create_zarr(tmp_path / "labels.zarr", image.shape, np.uint8, (1, 32, 100), {"class_values": [0, 255]})
    probs = zarr_io.create_zarr(tmp_path / "probs.zarr", (3, 2, 130, 100), np.float32, (1, 1, 32, 100))
    chunk_io.clear()
    events = list(store_events(result, labels, probs))
    assert events[-1].done == events[-1].total == 3
    _each_chunk_written_once(chunk_io, {labels.name: 3 * 5, probs.name: 3 * 2 * 5})
    np.testing.assert_array_equal(zarr.open_array(str(labels), mode="r")[:], expected.labels)
    np.testing.assert_array_equal(zarr.open_array(str(probs), mode="r")[:], np.moveaxis(expected.probabilities, -1, 1))


def test_rows_waiting_for_their_chunks_next_band_are_written_when_another_slice_comes_or_at_the_end(tmp_path):
    store = zarr_io.create_zarr(tmp_path / "s.zarr", (2, 10, 4), np.uint16, (1, 4, 4))
    writer = chunked._SliceWriter(str(store), 0, 2)
    expected = np.arange(80, dtype=np.uint16).reshape(2, 10, 4)
    writer[0, 0:6] = expected[0, 0:6]  # rows 4-5 wait for rows 6-7
    assert not zarr.open_array(str(store), mode="r")[0, 4:6].any()
    writer[1, 0:3] = expected[1, 0:3]  # another slice: they are written as they are
    np.testing.assert_array_equal(zarr.open_array(str(store), mode="r")[0, :6], expected[0, :6])
    writer[0, 6:10] = expected[0, 6:10]
    writer[1, 3:10] = expected[1, 3:10]
    writer.flush()
    np.testing.assert_array_equal(zarr.open_array(str(store), mode="r")[:], expected)


@pytest.mark.parametrize("source", ["stack.tif", "stack.zarr", "slice.tif"])
def test_predict_writes_a_tall_slice_into_zarr_stores_chunked_by_its_bands_as_its_tiff(tmp_path, capsys, monkeypatch, chunk_io, source):
    import napari_unet.postprocess as postprocess
    from napari_unet._reader import get_reader

    monkeypatch.setattr(postprocess, "RULE_TILE", 40)
    monkeypatch.setattr(postprocess, "RULE_MARGIN", 8)
    save_model(tiny_model(), tmp_path / "m.keras")
    stack = stripes(n_slices=3, size=130, seed=6)[0][:, :, :100]
    image = stack if source.startswith("stack") else stack[0]
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    if source.endswith(".zarr"):
        zarr_io.write_zarr(tmp_path / "image.zarr", image, chunks=(2, 130, 100))
    given = tmp_path / ("image.zarr" if source.endswith(".zarr") else "image.tif")
    code, _, err = run(capsys, "predict", tmp_path / "m.keras", tmp_path / "image.tif", "-o", tmp_path / "t.tif",
                       "--probabilities", tmp_path / "tp.tif", "--no-tta")
    assert code == 0, err
    chunk_io.clear()
    code, _, err = run(capsys, "predict", tmp_path / "m.keras", given, "-o", tmp_path / "z.zarr", "--probabilities", tmp_path / "zp.zarr", "--no-tta")
    assert code == 0, err
    z = (1,) * (image.ndim - 2)
    labels, probs = zarr_io.read_zarr(tmp_path / "z.zarr"), zarr_io.read_zarr(tmp_path / "zp.zarr")
    assert zarr.open_array(str(tmp_path / "z.zarr"), mode="r").chunks == (*z, 32, 100)
    assert zarr.open_array(str(tmp_path / "zp.zarr"), mode="r").chunks == (*z, 1, 32, 100)
    assert labels.data.chunks[-2] == (32, 32, 32, 32, 2) and labels.axes == ("ZYX" if z else "YX") and probs.axes == ("ZCYX" if z else "CYX")
    assert labels.metadata["class_values"] == [0, 255] and labels.is_labels_hint
    np.testing.assert_array_equal(np.asarray(labels.data), tifffile.imread(tmp_path / "t.tif"))
    np.testing.assert_array_equal(np.asarray(probs.data), tifffile.imread(tmp_path / "tp.tif"))
    # the stores were written where the command renamed them from: their partial folders
    folders = {os.path.basename(root) for _, root, _ in chunk_io}
    partials = [next(f for f in folders if f.startswith(prefix)) for prefix in (".z.zarr.", ".zp.zarr.")]
    n_slices = len(stack) if z else 1
    _each_chunk_written_once(chunk_io, {partials[0]: n_slices * 5, partials[1]: n_slices * 2 * 5})
    data, kwargs, layer_type = get_reader(str(tmp_path / "z.zarr"))()[0]
    assert layer_type == "labels" and kwargs["metadata"]["class_values"] == [0, 255] and data.shape == image.shape


@pytest.mark.slow
def test_a_dask_cluster_writes_tall_slices_into_stores_chunked_by_their_bands(tmp_path, capsys):
    # the membrane rule's own windows (2048 rows and 256 each side): 4097 rows go in bands of 1366, 1365 and 1366 rows
    distributed = pytest.importorskip("distributed")
    from napari_unet.predict import row_bands, store_chunk_rows

    assert [core[:2] for core in row_bands(4097)] == [(0, 1366), (1366, 2731), (2731, 4097)] and store_chunk_rows(4097) == 1365
    model = tiny_model()
    save_model(model, tmp_path / "m.keras")
    image = np.tile(stripes(n_slices=2, size=64, seed=8)[0], (1, 65, 1))[:, :4097]
    tifffile.imwrite(tmp_path / "tall.tif", image, photometric="minisblack")
    expected = predict(model, image, tta=False)
    single_thread = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, env=single_thread) as cluster:
        code, _, err = run(capsys, "predict", tmp_path / "m.keras", tmp_path / "tall.tif", "-o", tmp_path / "c.zarr", "--probabilities",
                           tmp_path / "cp.zarr", "--no-tta", "--scheduler", cluster.scheduler_address)
    assert code == 0, err
    labels, probs = (zarr.open_array(str(tmp_path / name), mode="r") for name in ("c.zarr", "cp.zarr"))
    assert labels.chunks == (1, 1365, 64) and probs.chunks == (1, 1, 1365, 64)
    np.testing.assert_array_equal(labels[:], expected.labels)
    np.testing.assert_array_equal(probs[:], np.moveaxis(expected.probabilities, -1, 1))
