import json
import os
import stat
import zipfile

import numpy as np
import pytest

from _helpers import stripes, tiny_model
from napari_unet.model import import_keras
from napari_unet.model_io import ModelFileError, check_model_file, load_model, read_metadata, save_model
from napari_unet.predict import predict


def test_save_load_gives_identical_predictions(tmp_path):
    model = tiny_model()
    path = save_model(model, tmp_path / "m.keras")
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.class_values == [0, 255]
    assert loaded.percentiles == model.percentiles and loaded.train_config == model.train_config
    assert model.boundary_rule is not None and loaded.boundary_rule == model.boundary_rule
    image = stripes(n_slices=1, seed=3)[0]
    # the trained model predicts through XLA (jit_compile), the loaded one does not: equal up to rounding
    np.testing.assert_allclose(predict(model, image).probabilities, predict(loaded, image).probabilities, atol=1e-5)
    np.testing.assert_array_equal(predict(loaded, image).labels, predict(load_model(path), image).labels)
    assert read_metadata(path)["history"] == model.history


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_model(model, tmp_path / "m.keras")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model.keras_model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"], "no temporary file left behind"


def test_lambda_model_is_refused_and_its_code_never_runs(tmp_path):
    keras = import_keras()
    ran = tmp_path / "ran"
    inputs = keras.Input((8, 8, 1))
    marker = str(ran)
    outputs = keras.layers.Lambda(lambda x: (open(marker, "w").close(), x * 2)[1])(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    assert ran.exists()  # building the model ran the lambda once
    ran.unlink()
    with zipfile.ZipFile(path, "a") as archive:  # dress it up as a napari-unet model
        archive.writestr("napari_unet.json", zipfile.ZipFile(save_model(tiny_model(), tmp_path / "ok.keras")).read("napari_unet.json"))
    with pytest.raises(ModelFileError, match="Lambda"):
        load_model(path)
    assert not ran.exists()


def test_files_that_are_not_napari_unet_models(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.keras")
    text = tmp_path / "notes.keras"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a .keras"):
        load_model(text)
    keras = import_keras()
    plain = tmp_path / "plain.keras"
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs)).save(plain)
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(plain)
    with pytest.raises(ModelFileError, match=".keras"):
        save_model(tiny_model(), tmp_path / "model.h5")


def test_saved_model_file_gets_normal_permissions(tmp_path):
    old_mask = os.umask(0o022)
    try:
        path = save_model(tiny_model(), tmp_path / "m.keras")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0600
    path.chmod(0o640)
    save_model(tiny_model(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, "an overwritten file keeps its permissions"


def _with_metadata(tmp_path, name, text):
    path = save_model(tiny_model(), tmp_path / "good.keras")
    damaged = tmp_path / name
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.namelist():
            target.writestr(item, text if item == "napari_unet.json" else source.read(item))
    return damaged


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "damaged napari-unet metadata"),
        ('["a list"]', "damaged napari-unet metadata"),
        ('{"format_version": "1"}', "damaged napari-unet metadata"),
        (None, "invalid configuration"),  # class_values missing
        ('{"format_version": 1}', "invalid configuration"),  # model_config missing
        ('{"format_version": 1, "model_config": {}, "class_values": ["a", "b"]}', "invalid configuration"),
        ("unsorted", "invalid class values"),
    ],
)
def test_damaged_metadata_is_a_clear_model_file_error(tmp_path, text, words):
    if text in (None, "unsorted"):
        meta = read_metadata(save_model(tiny_model(), tmp_path / "m.keras"))
        if text is None:
            del meta["class_values"]
        else:
            meta["class_values"] = [255, 0]
        text = json.dumps(meta)
    damaged = _with_metadata(tmp_path, "damaged.keras", text)
    with pytest.raises(ModelFileError, match=words):
        load_model(damaged)
    from napari_unet.chunked import ModelSource

    with pytest.raises(ModelFileError, match=words):  # predict -o X.zarr: a traceback from the model's source
        ModelSource(damaged)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("percentiles", "ab", "invalid normalisation percentiles"),
        ("percentiles", [-5, 500], "invalid normalisation percentiles"),
        ("boundary_rule", "x", "invalid membrane rule"),
        ("boundary_rule", {"foo": 1}, "written by a newer napari-unet .membrane rule settings foo"),  # grown before
        ("boundary_rule", {"threshold": 0.5, "merge_below": 0.6, "minima_depth": 0}, "minima_depth=0 out of range"),  # h_minima failed at Run
        ("boundary_rule", {"threshold": 1.5}, "threshold=1.5 out of range"),  # no membrane at all, silently
        ("boundary_rule", {"threshold": 0.5, "merge_below": 0.6, "border_reach": -2}, "border_reach=-2 out of range"),
        ("model_config", {"input_channels": 10**9}, "input_channels must be 1..64"),  # the load check built a huge network
        ("model_config", {"pre_head_filters": 10**8}, "pre_head_filters must be 0..1024"),
        ("boundary_value", 7, "boundary class 7 that is not one of its classes"),
        ("layer_order", [0, 0], "invalid layer order"),
        ("layer_order", [0, 7], "invalid layer order"),
        ("layer_order", [0], "invalid layer order"),
        ("layer_pockets", [0], "invalid layer pockets"),  # no layer order: pockets of nothing
        ("class_values", [0.5, 255], "not a list of whole numbers"),  # was loaded as [0, 255]
        ("class_values", [0, 2**70], "not a list of whole numbers"),  # was loaded and overflowed in predict
        ("model_config", [], "must be a JSON object"),  # a raw AttributeError
    ],
)
def test_malformed_normalisation_and_membrane_rule_are_refused_at_load(tmp_path, key, value, words):
    meta = read_metadata(save_model(tiny_model(), tmp_path / "m.keras"))
    meta[key] = {**meta[key], **value} if key == "model_config" and isinstance(value, dict) else value
    edited = _with_metadata(tmp_path, "edited.keras", json.dumps(meta))
    with pytest.raises(ModelFileError, match=words):
        load_model(edited)
    with pytest.raises(ModelFileError, match=words):  # predict and --init, before TensorFlow (it let layer orders pass)
        check_model_file(edited)


def _damaged_entry(path, entry: str, out):
    """A copy of zip ``path`` with one byte of ``entry``'s stored data changed (its CRC then fails), as a bad copy does."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(entry)
    assert info.compress_type == zipfile.ZIP_STORED, "the byte flipped must be the entry's own data"
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"), int.from_bytes(
        data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def test_a_model_file_with_damaged_bytes_is_a_clear_model_file_error(tmp_path, capsys):
    """A flipped byte in Keras' config.json gave zipfile.BadZipFile: a traceback from predict and train --init."""
    from napari_unet.cli import main

    saved = save_model(tiny_model(), tmp_path / "m.keras")
    damaged = _damaged_entry(saved, "config.json", tmp_path / "damaged.keras")
    with pytest.raises(ModelFileError, match="damaged.keras is damaged .*CRC"):
        load_model(damaged)
    # its own entry damaged: the file was called "not a zip archive"
    with pytest.raises(ModelFileError, match="metadata.keras is damaged .*CRC"):
        read_metadata(_damaged_entry(saved, "napari_unet.json", tmp_path / "metadata.keras"))
    # cut short (a copy or download stopped): its zip directory is gone; it was called "not a zip archive"
    (tmp_path / "cut.keras").write_bytes(saved.read_bytes()[:-30])
    with pytest.raises(ModelFileError, match="cut.keras is damaged \\(cut short"):
        read_metadata(tmp_path / "cut.keras")
    (tmp_path / "text.keras").write_text("hello")
    with pytest.raises(ModelFileError, match="not a zip archive"):
        read_metadata(tmp_path / "text.keras")
    # an entry another program encrypted: Keras raised a RuntimeError after TensorFlow started
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as archive:
        info = archive.getinfo("config.json")
    data[info.header_offset + 6] |= 0x1  # the local header's "encrypted" flag, and the central directory's:
    for start in range(len(data) - 46):
        if data[start : start + 4] == b"PK\x01\x02" and int.from_bytes(data[start + 42 : start + 46], "little") == info.header_offset:
            data[start + 8] |= 0x1
    (tmp_path / "encrypted.keras").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="entry config.json is encrypted"):
        read_metadata(tmp_path / "encrypted.keras")
    image = tmp_path / "image.tif"
    import tifffile

    tifffile.imwrite(image, stripes(n_slices=1, size=64)[0])
    assert main(["predict", str(damaged), str(image), "-o", str(tmp_path / "p.tif")]) == 2
    assert "is damaged" in capsys.readouterr().err and not (tmp_path / "p.tif").exists()


def test_a_malformed_history_is_dropped_not_fatal(tmp_path):
    meta = read_metadata(save_model(tiny_model(), tmp_path / "m.keras"))
    meta["history"] = 5
    assert load_model(_with_metadata(tmp_path, "edited.keras", json.dumps(meta))).history == []


def test_only_keras_files_are_loaded(tmp_path):
    path = save_model(tiny_model(), tmp_path / "m.keras")
    renamed = tmp_path / "m.h5"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ModelFileError, match="not a .keras model file"):
        load_model(renamed)


def test_class_names_are_stored_with_the_model(tmp_path):
    model = tiny_model()
    assert load_model(save_model(model, tmp_path / "plain.keras")).class_names is None
    model.class_names = ["membrane", "cell"]
    assert load_model(save_model(model, tmp_path / "named.keras")).class_names == ["membrane", "cell"]


def test_class_colours_are_stored_with_the_model_and_bad_ones_are_dropped(tmp_path):
    model = tiny_model()
    assert load_model(save_model(model, tmp_path / "plain.keras")).class_colors is None
    model.class_colors = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0]]
    assert load_model(save_model(model, tmp_path / "coloured.keras")).class_colors == model.class_colors
    meta = json.loads(zipfile.ZipFile(tmp_path / "coloured.keras").read("napari_unet.json"))
    for bad in ([[1, 0, 0, 1]], [[1, 0, 0], [0, 0.5, 1]], [[2, 0, 0, 1], [0, 0, 0, 1]], [["red"], [0, 0, 0, 1]], "red"):
        path = _with_metadata(tmp_path, "bad.keras", json.dumps({**meta, "class_colors": bad}))
        assert load_model(path).class_colors is None  # a hand-edited entry: the model still loads, without colours


def test_plain_keras_file_and_folder_are_named_for_what_they_are(tmp_path):
    keras = import_keras()
    plain = tmp_path / "plain.keras"
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs)).save(plain)
    with pytest.raises(ModelFileError) as info:
        load_model(plain)
    assert str(info.value) == "plain.keras is a Keras file but not a napari-unet model (no napari_unet.json)"
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        load_model(tmp_path)


@pytest.mark.parametrize("change", ["plain network", "more filters"])
def test_network_that_does_not_match_its_configuration_is_refused_at_load(tmp_path, change):
    """Prediction copies weights by layer name into the network the configuration describes: refuse at load, not at Run."""
    good = save_model(tiny_model(), tmp_path / "good.keras")
    meta = read_metadata(good)
    if change == "plain network":
        keras = import_keras()
        inputs = keras.Input((None, None, 1))
        path = tmp_path / "mismatch.keras"
        keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs)).save(path)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("napari_unet.json", json.dumps(meta))
        words = "(it has no layer 'down0_conv1')"
    else:
        meta["model_config"]["base_filters"] = 16
        path = _with_metadata(tmp_path, "mismatch.keras", json.dumps(meta))
        words = "(its layer 'down0_conv1' has weights of shapes [(3, 3, 1, 8)"
    with pytest.raises(ModelFileError, match="the network does not match the napari-unet configuration stored with it") as info:
        load_model(path)
    assert words in str(info.value), str(info.value)


def test_damaged_weights_are_refused_at_load_and_by_prediction(tmp_path):
    from napari_unet.predict import PredictionError

    model = load_model(save_model(tiny_model(), tmp_path / "m.keras"))  # a copy: tiny_model's network stays intact
    bias = model.keras_model.get_layer("head_logits").weights[-1]
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    with pytest.raises(PredictionError, match="NaN or Inf probabilities"):  # the process was killed in the rule
        predict(model, stripes(n_slices=1, seed=3)[0], mixed_precision=False, jit_compile=False)
    save_model(model, tmp_path / "nan.keras")
    with pytest.raises(ModelFileError, match="NaN or Inf weights"):
        load_model(tmp_path / "nan.keras")



def test_saving_below_a_file_names_the_file_in_the_way(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="m.keras is a file, not a folder"):  # was a bare "File exists: 'm.keras'"
        save_model(tiny_model(), tmp_path / "m.keras" / "other.keras")


def test_the_training_images_intensity_profile_is_stored_and_checked(tmp_path):
    from napari_unet.data import PROFILE_LEVELS, intensity_profile

    from napari_unet.train import train

    model = tiny_model()
    # the training images of tiny_model: of all pixels (as earlier versions read it) and above each slice's floor
    assert model.intensity_profile == intensity_profile(stripes()[0], above_floor=False)
    assert model.profile_above_floor == intensity_profile(stripes()[0])
    assert 0 < model.intensity_spread < 0.05 and 0 < model.spread_above_floor < 0.05  # its own slices from the profile
    path = save_model(model, tmp_path / "m.keras")
    loaded = load_model(path)
    for name in ("intensity_profile", "intensity_spread", "profile_above_floor", "spread_above_floor"):
        assert getattr(loaded, name) == getattr(model, name), name
    # fine-tuning (Retrain: copies of one slice) keeps the profiles of the images the network was first trained on
    image, labels = stripes()
    copies = np.concatenate([image, np.repeat(255 - image[:1], 8, axis=0)])
    tuned = train(copies, np.concatenate([labels, np.repeat(labels[:1], 8, axis=0)]), None,
                  model.train_config.replace(epochs=1, steps_per_epoch=1, val_fraction=0.0), init=model).model
    assert tuned.intensity_profile == model.intensity_profile and tuned.profile_above_floor == model.profile_above_floor
    meta = read_metadata(path)
    del meta["intensity_profile_above_floor"], meta["intensity_spread_above_floor"]  # a file before session 51
    before_51 = load_model(_with_metadata(tmp_path, "all-pixels.keras", json.dumps(meta)))
    assert before_51.profile_above_floor is None and before_51.intensity_profile == model.intensity_profile
    interim = read_metadata(path)  # a development build of session 51: one profile and a true/false flag
    interim["intensity_profile"], interim["intensity_spread"] = interim["intensity_profile_above_floor"], 0.01
    interim["intensity_profile_above_floor"] = True
    del interim["intensity_spread_above_floor"]
    loaded = load_model(_with_metadata(tmp_path, "interim.keras", json.dumps(interim)))
    assert loaded.profile_above_floor == model.profile_above_floor and loaded.spread_above_floor == 0.01
    assert loaded.intensity_profile is None
    del meta["intensity_profile"]  # a file written before profiles were recorded
    assert load_model(_with_metadata(tmp_path, "old.keras", json.dumps(meta))).intensity_profile is None
    good = read_metadata(path)["intensity_profile"]
    for suffix in ("", "_above_floor"):
        for damaged, spread in (("x", 0.0), ([0.5] * (len(PROFILE_LEVELS) - 1), 0.0), ([float("nan")] * len(PROFILE_LEVELS), 0.0),
                                ([True] * len(PROFILE_LEVELS), 0.0), (good, -1.0), (good, "0.1")):
            meta = read_metadata(path)
            meta["intensity_profile" + suffix], meta["intensity_spread" + suffix] = damaged, spread
            with pytest.raises(ModelFileError, match="invalid intensity profile"):
                load_model(_with_metadata(tmp_path, "edited.keras", json.dumps(meta)))


def test_a_file_with_settings_this_version_does_not_know_asks_for_an_upgrade(tmp_path):
    meta = read_metadata(save_model(tiny_model(), tmp_path / "m.keras"))
    for key in ("train_config", "model_config"):
        edited = json.loads(json.dumps(meta))
        edited[key]["future_option"] = 1
        with pytest.raises(ModelFileError, match="written by a newer napari-unet .*future_option.*upgrade"):
            load_model(_with_metadata(tmp_path, f"newer-{key}.keras", json.dumps(edited)))


def _with_network_config(tmp_path, name, edit):
    """A copy of a saved tiny model whose Keras config.json has its first Conv2D layer's entry changed by ``edit``."""
    path = save_model(tiny_model(), tmp_path / "good.keras")
    edited = tmp_path / name
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "config.json":
                config = json.loads(data)
                edit(next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Conv2D"))
                data = json.dumps(config)
            target.writestr(item, data)
    return edited


def _python_lambda_activation(layer):
    import codecs
    import marshal

    code = codecs.encode(marshal.dumps((lambda x: x).__code__), "base64").decode("ascii")
    layer["config"]["activation"] = {"module": "builtins", "class_name": "__lambda__", "config": {"value": [code, None, None]},
                                     "registered_name": None}


def _custom_layer_class(layer):
    layer.update(module="mypackage.layers", class_name="FancyConv", registered_name="mypackage>FancyConv")


@pytest.mark.parametrize("edit, words", [
    (_python_lambda_activation, "contains code .a Lambda layer, a Python function or a call Keras does not allow.; "
                                "refused by Keras safe mode"),
    (lambda layer: layer["config"].update(activation={"module": "keras.config", "class_name": "function", "registered_name": None,
                                                      "config": "enable_unsafe_deserialization"}), "refused by Keras safe mode"),
    (_custom_layer_class, "uses a layer 'FancyConv' that Keras and napari-unet do not have"),
    (lambda layer: layer["config"].update(activation={"module": "os", "class_name": "function", "config": "getcwd",
                                                      "registered_name": "getcwd"}),
     "uses a function 'getcwd' that Keras and napari-unet do not have"),
    (lambda layer: layer["config"].update(future_option=True),
     r"gives its Conv2D layers options that Keras \S+ does not know .*future_option.*; it was written with Keras \S+$"),
    (lambda layer: layer.update(module="keras_hub.src.layers.fancy", class_name="FancyConv", registered_name=None),
     r"uses a layer 'FancyConv' \(from keras_hub.src.layers.fancy\) that Keras and napari-unet do not have"),
    (lambda layer: layer.update(registered_name="Custom>Conv2D"), r"could not be loaded: "),  # Keras' own words, no dump
])
def test_a_network_keras_refuses_is_named_for_its_cause(tmp_path, edit, words):
    # all three said "<class 'keras...Functional'> could not be deserialized properly. Please ensure that components
    # ... are explicitly deserialized in the model's from_config() method": Keras' first line, not its cause
    with pytest.raises(ModelFileError, match=words) as info:
        load_model(_with_network_config(tmp_path, "edited.keras", edit))
    assert "from_config" not in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300


def test_layer_options_of_a_newer_keras_ask_for_an_upgrade(tmp_path):
    path = _with_network_config(tmp_path, "future.keras", lambda layer: layer["config"].update(future_option=True))
    newer = tmp_path / "newer.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "metadata.json":
                data = json.dumps(dict(json.loads(data), keras_version="99.0.0"))
            target.writestr(item, data)
    with pytest.raises(ModelFileError, match=r"does not know .*future_option.*; it was written with Keras 99.0.0: upgrade Keras"):
        load_model(newer)


def test_a_membrane_rule_setting_this_version_does_not_know_asks_for_an_upgrade(tmp_path):
    # "has an invalid membrane rule {...}; the file was modified or damaged": rules grew settings without a new format
    meta = read_metadata(save_model(tiny_model(), tmp_path / "m.keras"))
    meta["boundary_rule"]["gap_bridge"] = 2.0
    with pytest.raises(ModelFileError, match=r"written by a newer napari-unet \(membrane rule settings gap_bridge are "
                                             r"unknown to version .*\); upgrade napari-unet"):
        load_model(_with_metadata(tmp_path, "newer-rule.keras", json.dumps(meta)))
    meta["boundary_rule"]["gap_bridge"] = "wide"  # a newer version's setting may take any value
    with pytest.raises(ModelFileError, match="written by a newer napari-unet"):
        load_model(_with_metadata(tmp_path, "newer-text-rule.keras", json.dumps(meta)))
    del meta["boundary_rule"]["gap_bridge"]
    meta["boundary_rule"]["threshold"] = "wide"  # a setting this version knows, not a number: damaged
    with pytest.raises(ModelFileError, match="invalid membrane rule"):
        load_model(_with_metadata(tmp_path, "damaged-rule.keras", json.dumps(meta)))


def test_loading_a_model_leaves_pythons_random_stream_as_it_was(tmp_path):
    # Keras draws initializer seeds from Python's random while it rebuilds the layers: a user's
    # random.seed(0); load_model(p); random.shuffle(files) shuffled otherwise than without the load
    import random

    path = tmp_path / "m.keras"
    save_model(tiny_model(), path)
    random.seed(0)
    state = random.getstate()
    load_model(path)
    assert random.getstate() == state


def test_the_first_tensorflow_import_leaves_pythons_random_stream_as_it_was():
    # in a fresh process train() and predict() import TensorFlow through hardware.has_gpu()
    import subprocess
    import sys

    code = (
        "import random; random.seed(0); state = random.getstate()\n"
        "from napari_unet import hardware; hardware.has_gpu()\n"
        "print(random.getstate() == state)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_a_rule_holding_numpy_numbers_saves_as_plain_json(tmp_path):
    import dataclasses

    model = dataclasses.replace(tiny_model(), boundary_rule={"threshold": np.float32(0.6), "merge_below": np.float64(0.5)})
    path = save_model(model, tmp_path / "m.keras")
    assert read_metadata(path)["boundary_rule"] == {"threshold": pytest.approx(0.6), "merge_below": 0.5}


def test_the_training_pixel_size_is_stored_and_checked(tmp_path):
    """An OCT scan from another scanner was predicted without a word: the model did not know its own pixel size."""
    from dataclasses import replace

    from napari_unet.chunked import ModelSource
    from napari_unet.train import train

    assert load_model(save_model(tiny_model(), tmp_path / "plain.keras")).pixel_size is None  # trained on bare arrays
    model = replace(tiny_model(), pixel_size=[3.872, 11.29])
    path = save_model(model, tmp_path / "m.keras")
    assert read_metadata(path)["pixel_size"] == [3.872, 11.29]
    assert load_model(path).pixel_size == [3.872, 11.29] and ModelSource(path).pixel_size == [3.872, 11.29]
    meta = read_metadata(path)
    del meta["pixel_size"]  # a file written before pixel sizes were recorded
    assert load_model(_with_metadata(tmp_path, "old.keras", json.dumps(meta))).pixel_size is None
    for damaged in ("3.872", [3.872], [3.872, 11.29, 1.0], [3.872, 0], [-3.872, 11.29], [3.872, float("inf")],
                    [True, 11.29], ["3.872", "11.29"]):
        meta["pixel_size"] = damaged
        edited = _with_metadata(tmp_path, "edited.keras", json.dumps(meta))
        for load in (load_model, ModelSource):
            with pytest.raises(ModelFileError, match="invalid pixel size"):
                load(edited)
    # training records the pixel size it is given; fine-tuning keeps the model's unless the new data has one
    image, labels = stripes()
    short = model.train_config.replace(epochs=1, steps_per_epoch=1, val_fraction=0.0)
    assert train(image, labels, None, short, init=model).model.pixel_size == [3.872, 11.29]
    assert train(image, labels, None, short, init=model, pixel_size=(1.936, 11.29)).model.pixel_size == [1.936, 11.29]
    # a fine-tuning on other pixels says so when it starts (it recorded the new size without a word)
    from napari_unet.train import TrainingStarted, train_events

    def notes(pixel_size):
        return [str(n) for e in train_events(image, labels, None, short, init=model, pixel_size=pixel_size)
                if isinstance(e, TrainingStarted) for n in e.notes]

    assert any("the model was trained on 3.872 x 11.29 µm: the fine-tuned model records the new size" in n
               for n in notes((1.936, 11.29)))
    assert not any("µm" in n for n in notes((3.9, 11.0)))  # within 1.25x: the same scanner
    with pytest.raises(ValueError, match="pixel_size must be"):
        train(image, labels, None, short, pixel_size=[0.0, 11.29])


def test_a_name_as_long_as_the_file_system_takes_saves_and_loads(tmp_path):
    """The temporary file was 16 bytes longer than the name: a valid 245-byte name failed only after the training."""
    from napari_unet._files import hidden_sibling, stale_siblings

    model = tiny_model()
    for name in ("u" * 245 + ".keras", "模型" * 41 + ".keras"):  # 251 and 252 bytes
        path = save_model(model, tmp_path / name)
        assert load_model(path).class_values == [0, 255]
        sibling = hidden_sibling(path, "partial.keras")
        assert len(os.fsencode(sibling.name)) <= 255
        sibling.write_bytes(b"")
        assert stale_siblings(path) == []  # this process's own
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        ("u" * 245 + ".keras", "模型" * 41 + ".keras"))


def test_a_save_flushes_its_file_through_a_handle_that_may_write(tmp_path, monkeypatch):
    """Windows flushes only a handle with write access: fsync of a read-only one failed every save there (train -o,
    its rescue to the temporary folder, the dock's Save model..., demo)."""
    import fcntl

    real_fsync = os.fsync

    def windows_fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(9, "Bad file descriptor")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", windows_fsync)
    path = save_model(tiny_model(), tmp_path / "m.keras")
    assert load_model(path).class_values == [0, 255]


def test_leftovers_are_not_checked_with_a_signal_on_windows(tmp_path, monkeypatch):
    """os.kill(pid, 0) is Ctrl-C there: a reused PID in the same console interrupted the command itself."""
    import sys

    from napari_unet._files import hidden_sibling, stale_siblings

    path = tmp_path / "m.keras"
    sibling = hidden_sibling(path, "partial.keras")
    dead = tmp_path / sibling.name.replace(f".{os.getpid()}.", ".999999999.")
    dead.write_bytes(b"")
    assert stale_siblings(path) == [dead]  # no process 999999999 here
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signal: sent.append((pid, signal)))
    monkeypatch.setattr(sys, "platform", "win32")
    assert stale_siblings(path) == [] and sent == []


def test_a_save_writes_a_hidden_sibling_that_the_next_run_can_name(tmp_path, monkeypatch):
    """A save killed outright left an unnamed .NAME-xxxxxxxx.keras (up to 124 MB) that nothing ever reported."""
    import napari_unet.model_io as model_io
    from napari_unet._files import hidden_sibling

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(model_io.os, "replace", lambda source, target: renamed.append(source) or real_replace(source, target))
    save_model(tiny_model(), tmp_path / "m.keras")
    save_model(tiny_model(), tmp_path / "m.keras")
    [first, second] = renamed
    mine = hidden_sibling(tmp_path / "m.keras", "partial.keras").name.rsplit(".", 2)[0]  # .m.keras.HOST.PID
    assert first.name.startswith(mine + "~") and first.name.endswith(".partial.keras")
    assert first != second  # a token of its own each time: writers sharing a host name and a PID never share a file


def test_a_model_file_replaced_while_it_loads_gives_one_files_settings_and_network(tmp_path, monkeypatch):
    """load_model read the settings, then (8 s later, the first time: TensorFlow's import) the network: a colleague's
    save in between gave the old file's class values and membrane rule with the new file's weights."""
    import tempfile

    import napari_unet.model_io as model_io

    shared, newer = tmp_path / "shared.keras", tmp_path / "newer.keras"
    save_model(tiny_model(), shared)
    first = load_model(shared)
    second = load_model(shared)  # a copy of its own: tiny_model() is shared by the tests
    second.class_values, second.boundary_value = [1, 2], 1
    second.keras_model.set_weights([w * 0.5 for w in second.keras_model.get_weights()])
    save_model(second, newer)
    real_import = model_io.import_keras
    replaced = []

    def replaced_meanwhile():
        if not replaced:
            os.replace(newer, shared)
            replaced.append(True)
        return real_import()

    monkeypatch.setattr(model_io, "import_keras", replaced_meanwhile)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the link's folder, to see that it goes
    loaded = load_model(shared)
    assert replaced and not list(tmp_path.glob("napari-unet-model-*"))
    # the file as it was when the load began (Linux), or the new one read again: never a mix
    expected = first if loaded.class_values == [0, 255] else second
    assert loaded.class_values == expected.class_values
    for got, want in zip(loaded.keras_model.get_weights(), expected.keras_model.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert expected is first, "on Linux: the version it opened"


def test_a_model_file_replaced_without_pause_still_loads(tmp_path):
    """With the settings and the network read apart, a file replaced again and again could not be loaded (0 of 45 loads
    while a colleague's script replaced it without pause): a load reads the version it opened."""
    import threading

    import napari_unet.model_io as model_io

    shared = tmp_path / "shared.keras"
    save_model(tiny_model(), shared)
    versions = [tmp_path / f"v{i}.keras" for i in range(2)]
    for version in versions:
        save_model(tiny_model(), version)
    done = threading.Event()

    def replace_without_pause():
        k = 0
        while not done.is_set():
            (tmp_path / "next.keras").write_bytes(versions[k % 2].read_bytes())
            os.replace(tmp_path / "next.keras", shared)
            k += 1

    writer = threading.Thread(target=replace_without_pause)
    writer.start()
    try:
        loads = [model_io.load_model(shared).class_values for _ in range(5)]
    finally:
        done.set()
        writer.join()
    assert loads == [[0, 255]] * 5


def test_an_entry_cut_short_is_named_damaged(tmp_path, monkeypatch):
    """Keras raises EOFError() without a message for an entry that ends early: building the message raised IndexError."""
    path = save_model(tiny_model(), tmp_path / "m.keras")
    keras = import_keras()

    def cut_short(*args, **kwargs):
        raise EOFError()

    monkeypatch.setattr(keras.saving, "load_model", cut_short)
    with pytest.raises(ModelFileError, match=r"m.keras is damaged \(an entry ends early\); use an earlier copy"):
        load_model(path)


def test_empty_pipe_and_upper_case_files_are_named_for_what_they_are(tmp_path):
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty.keras is empty \(0 bytes\)"):
        read_metadata(tmp_path / "empty.keras")
    os.mkfifo(tmp_path / "fifo.keras")
    with pytest.raises(ModelFileError, match="is not a regular file"):
        read_metadata(tmp_path / "fifo.keras")
    save_model(tiny_model(), tmp_path / "m.keras")
    os.replace(tmp_path / "m.keras", tmp_path / "M.KERAS")
    with pytest.raises(ModelFileError, match=r"rename it to end in \.keras"):
        read_metadata(tmp_path / "M.KERAS")


def test_loading_an_older_file_draws_its_layer_seeds_without_pythons_global_stream(tmp_path, monkeypatch):
    """Loading set Python's one random stream back afterwards: draws another thread made meanwhile (napari's GUI thread
    while a model loaded in a worker) were rewound into repeats."""
    import dataclasses
    import random

    from napari_unet.model import build_unet

    model = tiny_model()
    older = dataclasses.replace(model, keras_model=build_unet(model.config))  # no seeds in its layers, as before session 52
    older.keras_model.set_weights(model.keras_model.get_weights())
    path = save_model(older, tmp_path / "older.keras")
    calls = []
    for name in ("seed", "setstate", "getstate", "randint", "random"):
        original = getattr(random, name)
        monkeypatch.setattr(random, name, lambda *a, _name=name, _original=original, **k: calls.append(_name) or _original(*a, **k))
    loaded = load_model(path)
    assert calls == [] and all(np.array_equal(a, b) for a, b in zip(loaded.keras_model.get_weights(), model.keras_model.get_weights()))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="loads link the file from a folder of their own on Linux only")
def test_loading_removes_link_folders_of_processes_killed_while_loading(tmp_path, monkeypatch):
    """A process killed while it loaded a model left its napari-unet-model-* folder in /tmp for good."""
    import tempfile
    import time

    from _helpers import dead_and_live_pids

    path = save_model(tiny_model(), tmp_path / "m.keras")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    old = time.time() - 3600
    with dead_and_live_pids() as (dead_pid, live_pid):
        for name in [f"{dead_pid}-abc_1234", f"{live_pid}-abc_1234", f"{dead_pid}-fresh123", "abc_1234"]:
            folder = temp / f"napari-unet-model-{name}"
            folder.mkdir()
            os.symlink("/proc/self/fd/0", folder / "m.keras")
            if name != f"{dead_pid}-fresh123":
                os.utime(folder, (old, old))
        load_model(path)
    kept = {p.name.removeprefix("napari-unet-model-") for p in temp.iterdir()}
    # a dead process's old folder goes; a live process's, a fresh one and one of an older napari-unet (no PID) stay
    assert kept == {f"{live_pid}-abc_1234", f"{dead_pid}-fresh123", "abc_1234"}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="loads link the file from a folder of their own on Linux only")
def test_the_link_folder_of_a_load_names_its_process(tmp_path, monkeypatch):
    import tempfile

    import napari_unet.model_io as model_io

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "m.keras").write_bytes(b"")
    with model_io._one_version(tmp_path / "m.keras") as (snapshot, _version):
        assert snapshot.parent.name.startswith(f"napari-unet-model-{os.getpid()}-")
    assert not list(tmp_path.glob("napari-unet-model-*"))


def test_stale_folder_sweep_does_nothing_without_posix_user_ids(tmp_path, monkeypatch):
    # on Windows os.getuid is missing (an AttributeError escaped) and os.kill(pid, 0) sends Ctrl-C instead of probing
    import time

    from _helpers import dead_and_live_pids
    from napari_unet import model_io

    with dead_and_live_pids() as (dead, _live):
        pass
    folder = tmp_path / f"napari-unet-model-{dead}-abc_1234"
    folder.mkdir()
    old = time.time() - 3600
    os.utime(folder, (old, old))
    monkeypatch.delattr(os, "getuid")
    monkeypatch.setattr(os, "kill", lambda *args: pytest.fail("os.kill called"))
    model_io._remove_stale_link_folders(str(tmp_path))
    assert folder.is_dir()
