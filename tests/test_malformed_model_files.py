"""Malformed and hostile model files: each gets one clear :class:`~napari_unet.model_io.ModelFileError` line (what is
wrong with which file, what to do), never a traceback, and Keras never builds a network the file forged.

(Data files: test_malformed_files.py.)
"""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from napari_unet import model_io
from napari_unet.model_io import ModelFileError, check_model_file, load_model, read_metadata, save_model

MB = 2**20


def _rewritten(source, target, **entries):
    """A copy of the model archive ``source`` with ``entries`` (name -> bytes, or None to leave it out) replaced."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = entries.get(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data)
    return target


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from _helpers import tiny_model

    return save_model(tiny_model(), tmp_path_factory.mktemp("model") / "m.keras")


def test_metadata_nested_too_deeply_is_damaged_not_a_traceback(saved, tmp_path):
    # old: RecursionError (a traceback from the command line)
    path = _rewritten(saved, tmp_path / "deep.keras", **{"napari_unet.json": b"[" * 100_000 + b"]" * 100_000})
    with pytest.raises(ModelFileError, match=r"deep.keras has damaged napari-unet metadata \(nested too deeply to read\)"):
        read_metadata(path)


def test_an_entry_that_unpacks_to_far_more_than_it_holds_is_refused_unread(saved, tmp_path):
    # 100 MB of spaces in the metadata (valid JSON) packed into 100 KB: old read it whole; 10 GB would fill memory
    meta = zipfile.ZipFile(saved).read("napari_unet.json")
    path = _rewritten(saved, tmp_path / "bomb.keras", **{"napari_unet.json": meta[:-1] + b" " * (100 * MB) + b"}"})
    assert os.path.getsize(path) < 2 * MB
    with pytest.raises(ModelFileError, match=r"bomb.keras is damaged or forged: its entry napari_unet.json unpacks to "
                                             r"\d+ bytes from \d+; use an intact copy of the model"):
        read_metadata(path)


@pytest.mark.parametrize("entries, words", [
    ({"config.json": None}, "is damaged or incomplete: it has no network description (config.json)"),
    ({"model.weights.h5": None}, "is damaged or incomplete: it has no weights (model.weights.h5)"),
    ({"model.weights.h5": b"\x00" * 5000}, "is damaged: its weights (model.weights.h5) are not in the format Keras writes"),
    ({"config.json": b"{garbage"}, "is damaged: its network description (config.json) is no valid JSON"),
    ({"config.json": b"[" * 100_000 + b"]" * 100_000}, "its network description (config.json) is nested too deeply"),
])
def test_a_model_missing_or_damaging_its_keras_entries_is_named_without_tensorflow(saved, tmp_path, entries, words):
    # old: check_model_file passed them; Keras then said "There is no item named 'config.json' in the archive",
    # h5py "Unable to synchronously open file (file signature not found)", or Python raised RecursionError
    path = _rewritten(saved, tmp_path / "broken.keras", **entries)
    for check in (check_model_file, load_model):
        with pytest.raises(ModelFileError) as info:
            check(path)
        assert str(info.value).startswith("broken.keras ") and words in str(info.value), str(info.value)
        assert "use an intact copy of the model" in str(info.value)


def test_a_network_description_larger_than_its_configuration_is_refused_before_keras_builds_it(saved, tmp_path, monkeypatch):
    # a forged config.json of 30000 filters of 300 x 300 pixels: Keras allocated and drew 10.8 GB of weights before the
    # network was compared with the napari-unet configuration (the command line blamed --batch-size)
    description = json.loads(zipfile.ZipFile(saved).read("config.json"))
    conv = next(layer for layer in description["config"]["layers"] if layer["class_name"] == "Conv2D")
    conv["config"].update(filters=30000, kernel_size=[300, 300])
    path = _rewritten(saved, tmp_path / "forged.keras", **{"config.json": json.dumps(description)})

    def keras_must_not_build(*args):
        raise AssertionError("Keras was asked to build the forged network")

    monkeypatch.setattr(model_io, "_load_network", keras_must_not_build)
    with pytest.raises(ModelFileError, match=rf"forged.keras: the network does not match the napari-unet configuration "
                                             rf"stored with it \(its layer '{conv['config']['name']}' has filters 30000, "
                                             r"not 8\); the file was modified or damaged"):
        load_model(path)


def test_a_lambda_layer_is_refused_before_keras_builds_anything(saved, tmp_path, monkeypatch):
    description = json.loads(zipfile.ZipFile(saved).read("config.json"))
    description["config"]["layers"].insert(1, {
        "module": "keras.layers", "class_name": "Lambda", "registered_name": None, "inbound_nodes": [],
        "config": {"name": "evil", "function": {"module": "builtins", "class_name": "function", "config": "print",
                                                "registered_name": "function"}}})
    path = _rewritten(saved, tmp_path / "code.keras", **{"config.json": json.dumps(description)})
    monkeypatch.setattr(model_io, "_load_network", lambda *args: pytest.fail("Keras was asked to build it"))
    with pytest.raises(ModelFileError, match=r"code.keras contains code \(a Lambda layer, 'evil'\), which napari-unet "
                                             r"networks never have; refused"):
        load_model(path)
