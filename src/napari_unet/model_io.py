"""A trained model and its single-file format (``.keras`` zip plus a ``napari_unet.json`` entry)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import __version__
from ._files import _process_runs, fsync_folder, fsync_path, hidden_sibling, target_mode, write_target
from ._tensorflow import keras_seeds_private
from .config import MERGE_LEVELS, ModelConfig, TrainConfig, from_dict, to_dict
from .model import import_keras

METADATA_ENTRY = "napari_unet.json"
#: The newest format this version reads and writes. 2: a layer order with pockets (its files are 1 otherwise, so that
#: older versions read them): older versions read pockets as layers and never predicted them, now they ask to upgrade.
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    """A model file that cannot be read, is not a napari-unet model, or is unsafe to load."""


@dataclass
class UNetModel:
    """A trained network with everything needed to apply it.

    ``class_values``: label value of each class index (e.g. [0, 255] for ISBI: index 0 = membrane).
    ``percentiles``: per-slice intensity normalisation applied to every input image.
    ``boundary_value``: the class of thin boundaries that prediction closes (see ``postprocess``).
    ``boundary_rule``: keyword arguments of :func:`napari_unet.postprocess.boundary_mask` chosen on
    the validation slices after training (best ISBI V_rand), or None for plain argmax.
    ``class_names``: the training labels' name of each class value, if they had names (napari shows them).
    ``class_colors``: the training labels' RGBA colour (4 floats in 0..1) of each class value, if they had
    custom colours; prediction layers of a reloaded model show them again.
    ``history``: one dict per training epoch of every run that made the model (a fine-tuned model's start with its start
    model's): ``run`` (0 the first), ``epoch`` and ``step`` counted within the run, ``loss`` (the epoch's mean),
    ``val_loss`` (None without validation), ``elapsed`` seconds, validation metrics as ``val_<name>``.
    ``pixel_size``: [Y, X] size in µm of the training image's pixels, or None when it had no physical pixel size;
    prediction notes images of other pixel sizes (:func:`napari_unet.predict.pixel_size_note`).
    """

    keras_model: Any
    config: ModelConfig
    class_values: list
    percentiles: tuple = (1.0, 99.8)
    train_config: Optional[TrainConfig] = None
    history: list = field(default_factory=list)
    boundary_value: Optional[int] = None  # class value of thin boundaries (EM membranes), if any
    boundary_rule: Optional[dict] = None
    class_names: Optional[list] = None  # one name per class value (e.g. ["membrane", "cell"]), when known
    class_colors: Optional[list] = None  # one [r, g, b, a] per class value, when the labels had custom colours
    intensity_profile: Optional[tuple] = None  # of the training images (data.intensity_reference); None in older files
    intensity_spread: float = 0.0  # the largest profile distance of one training slice from intensity_profile
    # of the pixels above each slice's floor (data.intensity_profile), which predict compares; None in files before
    # session 51. intensity_profile (of all pixels) stays beside it for earlier versions reading the file.
    profile_above_floor: Optional[tuple] = None
    spread_above_floor: float = 0.0
    layer_order: Optional[list] = None  # class values top to bottom, for labels layered down every column (OCT); pockets left out
    pixel_size: Optional[list] = None  # [Y, X] µm of the training image's pixels, when known; None in older files

    def history_records(self) -> list:
        """Copies of ``history``'s records, each with its ``run`` and ``step`` as whole numbers: records of files before
        session 59 have neither (run 0; step epoch x steps per epoch), and a malformed value counts as missing."""
        steps_per_epoch = (_count(self.train_config.steps_per_epoch) or 0) if self.train_config else 0
        records = []
        for record in self.history:
            step, epoch = _count(record.get("step")), _count(record.get("epoch"))
            if step is None:
                step = epoch * steps_per_epoch if epoch is not None else 0
            records.append({**record, "run": _count(record.get("run")) or 0, "step": step})
        return records

    def history_steps(self) -> list:
        """The training step at the end of each ``history`` record (an epoch), counted from the first step of the first
        run that made this model: a fine-tuned model's records follow those of the model it started from, and each
        record's ``run`` says which run (0 the first) made it (:meth:`history_records`)."""
        steps, offset, run, last = [], 0, None, 0
        for record in self.history_records():
            if record["run"] != run:
                offset, run = offset + last, record["run"]
            last = record["step"]
            steps.append(offset + last)
        return steps

    def layer_pockets(self) -> list:
        """The class values left out of ``layer_order`` (pockets such as fluid inside a layer); [] without an order."""
        return [v for v in self.class_values if v not in self.layer_order] if self.layer_order else []

    def metadata(self) -> dict:
        return {
            "format_version": 2 if self.layer_pockets() else 1,
            "napari_unet_version": __version__,
            "model_config": to_dict(self.config),
            "class_values": [int(v) for v in self.class_values],
            "percentiles": [float(p) for p in self.percentiles],
            "train_config": to_dict(self.train_config) if self.train_config else None,
            "history": self.history,
            "boundary_value": self.boundary_value,
            "boundary_rule": _plain_numbers(self.boundary_rule),
            "class_names": [str(n) for n in self.class_names] if self.class_names else None,
            "class_colors": [[float(c) for c in rgba] for rgba in self.class_colors] if self.class_colors else None,
            "intensity_profile": [float(q) for q in self.intensity_profile] if self.intensity_profile else None,
            "intensity_spread": float(self.intensity_spread),
            "intensity_profile_above_floor": [float(q) for q in self.profile_above_floor] if self.profile_above_floor else None,
            "intensity_spread_above_floor": float(self.spread_above_floor),
            "layer_order": [int(v) for v in [*self.layer_order, *self.layer_pockets()]] if self.layer_order else None,
            "layer_pockets": [int(v) for v in self.layer_pockets()] or None,
            "pixel_size": [float(s) for s in self.pixel_size] if self.pixel_size else None,
        }


def _count(value) -> Optional[int]:
    """``value`` if it is a whole number from 0 to 2**53 (a count of steps, epochs or runs), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else None


def _plain_numbers(rule: Optional[dict]) -> Optional[dict]:
    """``rule`` with NumPy scalars as Python numbers (json refused np.float32 values)."""
    if rule is None:
        return None
    return {key: value.item() if isinstance(value, np.generic) else value for key, value in rule.items()}


def save_model(model: UNetModel, path) -> Path:
    """Write ``model`` to ``path`` (``.keras``) atomically: a crash never leaves a half or lost file."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelFileError(f"model files end in .keras, got {path.name!r}")
    path = write_target(path)  # a symbolic link's target; never a device or pipe
    blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise FileExistsError(f"cannot save {path.name}: {blocking} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = target_mode(path)
    # A hidden sibling named after this process (and a token of its own: threads, containers sharing a host name and
    # a PID): a save killed outright leaves it to be named by the next run (stale_siblings).
    _write_model(model, hidden_sibling(path, "partial.keras", unique=True), mode, path)
    fsync_folder(path.parent)
    return path


def _write_model(model: UNetModel, tmp: Path, mode: int, path: Path) -> None:
    """Write ``model`` to ``tmp``, give it ``mode`` and rename it to ``path``; ``tmp`` is removed if that fails."""
    try:
        model.keras_model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_ENTRY, json.dumps(model.metadata(), indent=1))
        fsync_path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder now: its error is the one to name
            os.remove(tmp)
        raise


#: Compression methods Python's zipfile reads without extra packages.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def read_metadata(path) -> dict:
    """The napari-unet metadata stored in a model file, without loading TensorFlow."""
    path = Path(path)
    check_model_path(path)
    return _read_archive_metadata(path)


def check_model_file(path) -> dict:
    """:func:`checked_metadata` of the model file ``path``: every check :func:`load_model` makes of its metadata (a
    model of a newer napari-unet, damaged settings), without TensorFlow: a :class:`ModelFileError` seconds before Keras
    would load it."""
    path = Path(path)
    checked = checked_metadata(read_metadata(path), path.name)
    _read_network_description(path, path.name)
    return checked


def checked_metadata(meta: dict, name: str) -> dict:
    """The settings of a model file's metadata (:func:`read_metadata`), each checked as :func:`load_model` takes it:
    ``config``, ``train_config``, ``class_values``, ``percentiles``, ``intensity_profile``, ``intensity_spread``,
    ``profile_above_floor``, ``spread_above_floor``, ``boundary_value``, ``boundary_rule``, ``pixel_size`` and
    ``layer_order``; :class:`ModelFileError` naming the file ``name`` otherwise."""
    config, train_config, class_values = checked_settings(meta, name)
    percentiles, intensity_profile, intensity_spread, profile_above_floor, spread_above_floor = \
        checked_intensity_reference(meta, name)
    boundary_value, boundary_rule = checked_rule(meta, class_values, name)
    return dict(config=config, train_config=train_config, class_values=class_values, percentiles=percentiles,
                intensity_profile=intensity_profile, intensity_spread=intensity_spread,
                profile_above_floor=profile_above_floor, spread_above_floor=spread_above_floor,
                boundary_value=boundary_value, boundary_rule=boundary_rule, pixel_size=checked_pixel_size(meta, name),
                layer_order=_layer_order(meta.get("layer_order"), meta.get("layer_pockets"), class_values, name))


def check_model_path(path: Path) -> None:
    """:class:`ModelFileError` unless ``path`` is a non-empty regular file named ``*.keras`` (no content read)."""
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a folder, not a model file; choose a .keras file")
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} is not a regular file (a pipe or a device); choose a .keras file")
    if path.suffix.lower() == ".keras" and path.suffix != ".keras":  # Keras reads only the lower-case suffix
        raise ModelFileError(f"{path.name}: rename it to end in .keras (lower case), as Keras reads only those")
    if path.suffix != ".keras":  # Keras would hand other suffixes (.h5) to loaders outside its safe mode
        raise ModelFileError(f"{path.name} is not a .keras model file (napari-unet writes .keras files)")
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            raise ModelFileError(f"{path.name} is empty (0 bytes): a copy or a save that did not finish; use a complete copy")


def _read_archive_metadata(path: Path) -> dict:
    """The napari-unet metadata entry of the model archive ``path``, checked (see :func:`read_metadata`)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        starts_as_zip = False
        with contextlib.suppress(OSError), open(path, "rb") as file:
            starts_as_zip = file.read(4) == b"PK\x03\x04"
        if starts_as_zip:  # its directory, at the end of the archive, is gone: a copy or download cut short
            raise ModelFileError(f"{path.name} is damaged (cut short: its zip directory is missing); use a complete copy "
                                 "of the model") from None
        raise ModelFileError(f"{path.name} is not a .keras model file (not a zip archive)") from None
    except OSError as err:
        raise ModelFileError(f"{path.name} could not be read: {err}") from None
    with archive:
        if METADATA_ENTRY not in archive.namelist():
            raise ModelFileError(f"{path.name} is a Keras file but not a napari-unet model (no {METADATA_ENTRY})")
        _refuse_unpacking_bombs(archive, path.name)
        # Keras would meet these only after TensorFlow started, as errors that do not name the file's fault
        odd = next((info for info in archive.infolist() if info.flag_bits & 0x1 or info.compress_type not in _ZIP_METHODS), None)
        if odd is not None:
            raise ModelFileError(f"{path.name} was not written by Keras: its entry {odd.filename} is encrypted or compressed "
                                 "in a way napari-unet does not read")
        try:
            meta = json.loads(archive.read(METADATA_ENTRY))
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # the archive opens, an entry's bytes are damaged
            raise ModelFileError(f"{path.name} is damaged ({err}); use an earlier copy of the model") from None
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ModelFileError(f"{path.name} has damaged napari-unet metadata: {err}") from None
        except RecursionError:  # "[[[[...": Python's parser gives up (a traceback)
            raise ModelFileError(f"{path.name} has damaged napari-unet metadata (nested too deeply to read); the file was "
                                 "modified or damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version", 0), int):
        raise ModelFileError(f"{path.name} has damaged napari-unet metadata (not a format-versioned JSON object)")
    return meta


#: Largest ``napari_unet.json`` read (a model's is KBs; a long history MBs) and largest Keras ``config.json``.
_MAX_METADATA_BYTES = 2**26
#: An entry that unpacks to more than this many times its packed size, and to more than _MAX_METADATA_BYTES, is refused
#: before it is read: weights pack about 1:1, settings 5-20:1; a forged entry of 1 GB of spaces packs 1000:1.
_MAX_PACKING_RATIO = 100
#: The Keras entries a model file needs beside its metadata, and the first bytes of its weights (HDF5, or a NumPy .npz).
_KERAS_CONFIG = "config.json"
_KERAS_WEIGHTS = {"model.weights.h5": b"\x89HDF\r\n\x1a\n", "model.weights.npz": b"PK"}


def _refuse_unpacking_bombs(archive: zipfile.ZipFile, name: str) -> None:
    """:class:`ModelFileError` for an entry that would unpack to far more than it holds (a "zip bomb": napari-unet read a
    1 GB metadata entry of 1 MB whole before Keras refused the file), or a metadata entry larger than any model's."""
    for info in archive.infolist():
        limit = _MAX_METADATA_BYTES if info.filename in (METADATA_ENTRY, _KERAS_CONFIG) else None
        bomb = info.file_size > _MAX_METADATA_BYTES and info.file_size > _MAX_PACKING_RATIO * max(info.compress_size, 1)
        if bomb or (limit is not None and info.file_size > limit):
            raise ModelFileError(f"{name} is damaged or forged: its entry {info.filename} unpacks to {info.file_size} bytes "
                                 f"from {info.compress_size}; use an intact copy of the model")


def _nested_too_deeply(name: str) -> ModelFileError:
    """The error for a network description that Python's JSON reader or the layer walk cannot follow (a RecursionError)."""
    return ModelFileError(f"{name} is damaged or forged: its network description ({_KERAS_CONFIG}) is nested too deeply "
                          "to read; use an intact copy of the model")


def _read_network_description(path: Path, name: str) -> dict:
    """The Keras description of the network (``config.json``) of the model archive ``path``, after checking that the
    archive also holds its weights: :class:`ModelFileError` naming what is missing or damaged, without TensorFlow
    (Keras said "There is no item named 'config.json' in the archive" or h5py "file signature not found", and a
    description nested too deeply stopped napari-unet with a RecursionError)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            _refuse_unpacking_bombs(archive, name)
            if _KERAS_CONFIG not in names:
                raise ModelFileError(f"{name} is damaged or incomplete: it has no network description ({_KERAS_CONFIG}); use "
                                     "an intact copy of the model")
            weights = next((entry for entry in _KERAS_WEIGHTS if entry in names), None)
            if weights is None:
                raise ModelFileError(f"{name} is damaged or incomplete: it has no weights (model.weights.h5); use an intact "
                                     "copy of the model")
            with archive.open(weights) as entry:
                signature = _KERAS_WEIGHTS[weights]
                if entry.read(len(signature)) != signature:
                    raise ModelFileError(f"{name} is damaged: its weights ({weights}) are not in the format Keras writes; "
                                         "use an intact copy of the model")
            description = json.loads(archive.read(_KERAS_CONFIG))
    except ModelFileError:
        raise
    except RecursionError:
        raise _nested_too_deeply(name) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ModelFileError(f"{name} is damaged ({_first_line(err)}); use an earlier copy of the model") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ModelFileError(f"{name} is damaged: its network description ({_KERAS_CONFIG}) is no valid JSON ({err}); use "
                             "an intact copy of the model") from None
    except OSError as err:
        raise ModelFileError(f"{name} could not be read: {err}") from None
    if not isinstance(description, dict) or not isinstance(description.get("config"), dict):
        raise ModelFileError(f"{name} is damaged: its network description ({_KERAS_CONFIG}) is not a Keras model's; use an "
                             "intact copy of the model")
    return description


#: Settings of a Keras layer that size its weights (with the channels of its input, which the input layer's last
#: dimension and the layers before set).
_WEIGHT_SIZE_KEYS = ("filters", "kernel_size", "units", "input_dim", "output_dim", "depth_multiplier")


def _check_network_description(description: dict, expected_layers: dict, name: str, resolves=lambda layer: True) -> None:
    """:class:`ModelFileError` unless every layer of the file's Keras description (``config.json``) with settings that
    size weights is the layer of that name of napari-unet's network (``expected_layers``: name -> (class name, config))
    with the same sizes, its input has the same channels, and it has no Lambda layer. Keras builds the network the file
    describes, and draws its weights, before :func:`_check_network` can compare them: a description of 30000 filters of
    300 x 300 pixels asked TensorFlow for 10.8 GB (a file changed this way is refused by that check anyway). Layers of
    classes Keras cannot find (``resolves(layer)`` false) are left to Keras, which refuses them before building any."""
    def plain(value):
        return json.loads(json.dumps(value, default=list))  # tuples as lists, as they are in the file

    def described(node):  # every object of the description that is a layer (or a layer nested in a model)
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
                yield node
            for value in node.values():
                yield from described(value)
        elif isinstance(node, list):
            for value in node:
                yield from described(value)

    try:
        layers = list(described(description))
    except RecursionError:  # (json reads what nests a little less deeply than this walk can follow)
        raise _nested_too_deeply(name) from None
    code = next((layer for layer in layers if layer["class_name"] == "Lambda"), None)
    if code is not None:  # napari-unet networks have none (and _check_network compares only layers with weights)
        raise ModelFileError(f"{name} contains code (a Lambda layer, {code['config'].get('name')!r}), which napari-unet "
                             "networks never have; refused, as Keras safe mode refuses code from a file")
    problems = []
    for layer in layers:
        settings = layer["config"]
        sizes = [key for key in _WEIGHT_SIZE_KEYS if key in settings]
        shape_key = next((key for key in ("batch_shape", "batch_input_shape") if key in settings), None)
        if not sizes and shape_key is None:
            continue
        layer_name = settings.get("name")
        kind, want = expected_layers.get(layer_name, (None, {})) if isinstance(layer_name, str) else (None, {})
        if kind != layer["class_name"] and not resolves(layer):
            continue  # Keras refuses it by name ("uses a layer 'FancyConv' that Keras and napari-unet do not have")
        if kind != layer["class_name"]:
            problems.append(f"it has an extra layer {layer_name!r} ({layer['class_name']})")
            continue
        # larger than napari-unet's layer (a smaller one takes no memory; _check_network names it after loading)
        wrong = next((key for key in sizes if _larger(settings[key], want.get(key))), None)
        if wrong is None and shape_key is not None:
            have_shape, want_shape = settings[shape_key], want.get("batch_shape", want.get("batch_input_shape"))
            if not (isinstance(have_shape, list) and have_shape and isinstance(want_shape, (list, tuple)) and want_shape
                    and not _larger(have_shape[-1], want_shape[-1])):
                wrong = shape_key
        if wrong is not None:
            problems.append(f"its layer {layer_name!r} has {wrong} {settings[wrong]!r}, not {plain(want.get(wrong))!r}")
    if problems:  # named as _check_network names them: a missing layer first
        named = {layer["config"].get("name") for layer in layers}
        missing = [n for n, (_, want) in expected_layers.items() if n not in named and any(k in want for k in _WEIGHT_SIZE_KEYS)]
        detail = f"it has no layer {missing[0]!r}" if missing else problems[0]
        raise ModelFileError(f"{name}: the network does not match the napari-unet configuration stored with it ({detail}); "
                             "the file was modified or damaged")


def _larger(value, reference) -> bool:
    """Whether a layer setting that sizes weights (a number, or a list of them such as a kernel size) asks for more than
    ``reference``, or is no such setting (what Keras would make of it is unknown)."""
    def size(setting):
        numbers = setting if isinstance(setting, (list, tuple)) else [setting]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            return None
        return math.prod(numbers)

    have, want = size(value), size(reference)
    return have is None or want is None or have > want


def _keras_resolves(layer: dict) -> bool:
    """Whether Keras finds the class of a layer of a network description: one of its own layers, or a registered one."""
    keras = import_keras()
    registered, module = layer.get("registered_name"), layer.get("module")
    if isinstance(registered, str) and keras.saving.get_registered_object(registered) is not None:
        return True
    return isinstance(module, str) and module.split(".")[0] == "keras" and hasattr(keras.layers, str(layer["class_name"]))


def _expected_network(config: ModelConfig):
    """The Keras network ``build_unet(config)`` makes, with zero weights (none drawn for a network only looked at)."""
    import dataclasses

    from .model import build_unet

    return build_unet(dataclasses.replace(config, kernel_initializer="zeros"), seed=0)


def checked_settings(meta: dict, name: str) -> tuple:
    """(ModelConfig, TrainConfig or None, class values) of a model file's metadata (:func:`read_metadata`), checked;
    :class:`ModelFileError` naming the file ``name`` otherwise."""
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{name} was written by a newer napari-unet; upgrade napari-unet")
    _refuse_newer_settings(meta, name)
    try:
        config = from_dict(ModelConfig, meta["model_config"])
        train_config = None
        if meta.get("train_config"):
            # files written before noise augmentation, merge levels and "auto" rotations existed trained without
            # noise, tuned their rule from (0.5, 0.6) and rotated their patches, not with today's "auto"
            old_defaults = {"augment_noise": 0.0, "merge_levels": MERGE_LEVELS, "augment_rotations": True}
            train_config = from_dict(TrainConfig, {**old_defaults, **meta["train_config"]})
        class_values = meta["class_values"]
        if not isinstance(class_values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in class_values
        ):
            raise ValueError(f"class values {class_values!r} are not a list of whole numbers within int64")
    except (KeyError, ValueError, TypeError) as err:
        raise ModelFileError(f"{name} has an invalid configuration: {type(err).__name__} {err}") from None
    if len(class_values) != config.n_classes or class_values != sorted(set(class_values)):
        raise ModelFileError(f"{name} has invalid class values {class_values} for {config.n_classes} classes")
    return config, train_config, class_values


def as_model(model) -> UNetModel:
    """``model`` itself if it is a :class:`UNetModel`, the model file at ``model`` (a str or os.PathLike) loaded by
    :func:`load_model`, else a TypeError saying what is expected."""
    if isinstance(model, UNetModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TypeError(f"model must be a UNetModel or the path of a .keras model file (load_model), got {type(model).__name__}")


def load_model(path) -> UNetModel:
    """Load a model saved by :func:`save_model`, in Keras safe mode (no code from the file runs)."""
    path = Path(path)
    check_model_path(path)  # what the file is, named as given (a folder, a pipe, not a .keras file...)
    for _attempt in range(_LOAD_ATTEMPTS):
        # The settings and the network are read apart (the network by Keras): both must come from one version of
        # the file, which a colleague's save may replace meanwhile (8 s apart while TensorFlow is first imported).
        with _one_version(path) as (snapshot, version):
            before = version()
            try:
                meta = _read_archive_metadata(snapshot)
                checked = checked_metadata(meta, path.name)
                description = _read_network_description(snapshot, path.name)
                expected = _expected_network(checked["config"])
                _check_network_description(
                    description, {layer.name: (type(layer).__name__, layer.get_config()) for layer in expected.layers}, path.name,
                    _keras_resolves)
                keras_model = _load_network(snapshot)
            except ModelFileError:
                if version() == before:
                    raise
                continue  # written while it was read (a copy under way): read it again
            if version() == before:
                break
    else:
        raise ModelFileError(f"{path.name} changed each time it was read ({_LOAD_ATTEMPTS} times): another program is "
                             "writing it; load it once that is done")
    _check_network(keras_model, checked["config"], path.name, expected)
    damaged = next((w.path for w in keras_model.weights if not np.isfinite(import_keras().ops.convert_to_numpy(w)).all()), None)
    if damaged is not None:
        raise ModelFileError(f"{path.name} has NaN or Inf weights ({damaged}); it cannot predict. Retrain it or use an earlier file")
    return UNetModel(
        keras_model=keras_model,
        history=[record for record in meta.get("history") or [] if isinstance(record, dict)] if isinstance(meta.get("history"), list) else [],
        class_names=_class_names(meta.get("class_names"), checked["class_values"]),
        class_colors=_class_colors(meta.get("class_colors"), checked["class_values"]),
        **checked,
    )


#: Reads of a model file that another program replaced meanwhile, before :func:`load_model` gives up.
_LOAD_ATTEMPTS = 3


def _file_version(path) -> Optional[tuple]:
    """What changes when a file is replaced or rewritten: its inode, size and modification time (None if gone).
    ``path``: a path or an open file descriptor."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


#: The folders of :func:`_one_version`'s links: this prefix, the creating process's PID, "-", mkdtemp's random part.
_LINK_PREFIX = "napari-unet-model-"
_LINK_FOLDER = re.compile(re.escape(_LINK_PREFIX) + r"(\d+)-[a-z0-9_]+")
#: Age in seconds after which the link folder of a process that no longer runs is removed (one killed while it loaded);
#: longer than a load, since a process of another PID namespace sharing the folder looks dead from here.
_STALE_LINK_FOLDER_S = 600


def _remove_stale_link_folders(parent: str, pattern: "re.Pattern" = _LINK_FOLDER) -> None:
    """Removes this user's link folders in ``parent`` that processes killed while they loaded a model left; best effort.
    ``pattern``: the names of the folders, the creating process's PID its first group (chunked.py's temporary folders
    pass theirs). POSIX only: elsewhere there are no user ids to compare, and ``os.kill(pid, 0)`` is no liveness test."""
    if os.name != "posix" or not hasattr(os, "getuid"):
        return
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (entry.is_dir(follow_symlinks=False) and info.st_uid == os.getuid()
                        and time.time() - info.st_mtime > _STALE_LINK_FOLDER_S and not _process_runs(int(match.group(1)))):
                    shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def _one_version(path: Path):
    """(a path that reads ``path`` as it was when opened here, a function giving that file's version): on Linux a
    symbolic link, named like ``path``, to this process's descriptor of the file, which a replacement of ``path``
    (a colleague's save: a rename) leaves as it was; elsewhere ``path`` itself and its version."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield path, lambda: _file_version(path)
        return
    folder = None
    try:
        if os.path.isdir("/proc/self/fd"):  # Keras opens the link it is given (3.15); os.path.realpath of it would
            # name the replaced file "... (deleted)"
            with contextlib.suppress(OSError):
                _remove_stale_link_folders(tempfile.gettempdir())
                folder = tempfile.mkdtemp(prefix=f"{_LINK_PREFIX}{os.getpid()}-")
                os.symlink(f"/proc/self/fd/{fd}", os.path.join(folder, path.name))
        if folder is not None and os.path.lexists(os.path.join(folder, path.name)):
            yield Path(folder) / path.name, lambda: _file_version(fd)  # a rewrite in place still shows
        else:
            yield path, lambda: _file_version(path)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def _load_network(path: Path):
    """The Keras network of the model file ``path``, loaded in safe mode; :class:`ModelFileError` if it cannot be."""
    keras = import_keras()
    try:
        with keras_seeds_private():  # Keras draws initializer seeds while it rebuilds the layers of older files
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError) as err:
        raise ModelFileError(_keras_refusal(err, path, keras.__version__)) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # bytes of Keras' own entries damaged (a bad copy or disk)
        raise ModelFileError(f"{path.name} is damaged ({_first_line(err)}); use an earlier copy of the model") from None
    except (OSError, KeyError) as err:
        raise ModelFileError(f"{path.name} could not be loaded: {_first_line(err)}") from None
    except RecursionError:
        raise ModelFileError(f"{path.name} could not be loaded: its network is nested too deeply; the file was modified or "
                             "damaged") from None


def _keras_refusal(err: BaseException, path: Path, keras_version: str) -> str:
    """One line on why Keras refused the network of model file ``path``.

    Keras 3 wraps a layer's error in a generic first line ("could not be deserialized properly. Please ensure that
    components ... are explicitly deserialized in the model's from_config() method") and gives the cause after
    "Exception encountered:": code refused by safe mode, a class or function it does not have, options of another Keras.
    """
    name = path.name
    cause = str(err).rsplit("Exception encountered:", 1)[-1].strip()
    if "safe_mode" in cause or "for security" in cause:
        return f"{name} contains code (a Lambda layer, a Python function or a call Keras does not allow); refused by Keras safe mode"
    missing = (re.search(r"Could not locate (class|function) '([^']+)'", cause)
               or re.search(r"Could not deserialize (class|function) '([^']+)' because its parent module (\S+) cannot", cause))
    if missing:
        kind = "layer" if missing.group(1) == "class" else "function"
        where = f" (from {missing.group(3)})" if missing.lastindex == 3 else ""
        return (f"{name} uses a {kind} {missing.group(2)!r}{where} that Keras and napari-unet do not have (a model of another "
                "program, or of a newer napari-unet or Keras); it was not loaded")
    unknown_options = re.search(r"Unrecognized keyword arguments passed to (\w+): (.*)", cause)
    if unknown_options:
        written = _keras_version_of(path)
        newer = written is not None and _version_tuple(written) > _version_tuple(keras_version)
        origin = (f"it was written with Keras {written}: upgrade Keras (pip install -U keras)" if newer
                  else f"it was written with Keras {written}" if written else "it was modified or written by another program")
        return (f"{name} gives its {unknown_options.group(1)} layers options that Keras {keras_version} does not know "
                f"({unknown_options.group(2)}); {origin}")
    reason = cause.splitlines()[0].split(" Full object config:")[0] if cause else _first_line(err)  # not Keras' dump
    return f"{name} could not be loaded: {reason}"


def _keras_version_of(path: Path) -> Optional[str]:
    """The Keras version recorded in the model file (its metadata.json), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):  # no readable record: unknown
        return None
    return version if isinstance(version, str) else None


def _version_tuple(version: str) -> tuple:
    """(3, 15, 1) of "3.15.1"; a part that is not a number ends it ("3.16.0.dev1" -> (3, 16, 0))."""
    numbers = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name (EOFError() of an entry cut short has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else {"EOFError": "an entry ends early"}.get(type(err).__name__, type(err).__name__)


def _layer_order(order, pockets, class_values: list, name: str) -> Optional[list]:
    """A file's layer order (class values, top to bottom), or None (files without one). The file's ``layer_order`` is a
    permutation of the class values that ends with its ``layer_pockets`` (classes kept out of the order, e.g. fluid),
    which napari-unet before pockets reads as layers at the bottom instead of refusing the file."""
    if order is None:
        if pockets is not None:
            raise ModelFileError(f"{name} has invalid layer pockets {pockets!r} without a layer order")
        return None
    if not (isinstance(order, list) and sorted(order) == sorted(class_values) and all(isinstance(v, int) for v in order)):
        raise ModelFileError(f"{name} has an invalid layer order {order!r} for its classes {class_values}")
    pockets = [] if pockets is None else pockets
    if not (isinstance(pockets, list) and len(pockets) <= len(order) - 2 and order[len(order) - len(pockets):] == pockets):
        raise ModelFileError(f"{name} has invalid layer pockets {pockets!r} for its layer order {order}")
    return order[: len(order) - len(pockets)]


def _refuse_newer_settings(meta: dict, name: str) -> None:
    """:class:`ModelFileError` naming the upgrade when the file has settings this version does not know: a newer
    napari-unet wrote it (new settings do not always bump the format version)."""
    import dataclasses

    for key, cls in (("model_config", ModelConfig), ("train_config", TrainConfig)):
        settings = meta.get(key)
        if isinstance(settings, dict):
            unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ModelFileError(f"{name} was written by a newer napari-unet (settings {', '.join(unknown)} are "
                                     f"unknown to version {__version__}); upgrade napari-unet to load it")


def checked_rule(meta: dict, class_values: list, name: str) -> tuple:
    """(boundary_value, boundary_rule) of the metadata, or :class:`ModelFileError` if they are malformed."""
    import inspect

    from .postprocess import boundary_mask

    boundary_value, rule = meta.get("boundary_value"), meta.get("boundary_rule")
    if boundary_value is not None and boundary_value not in class_values:
        raise ModelFileError(f"{name} has a boundary class {boundary_value!r} that is not one of its classes {class_values}")
    known = set(inspect.signature(boundary_mask).parameters) - {"membrane_probability"}
    def number_or_none(value) -> bool:
        return value is None or isinstance(value, (int, float)) and math.isfinite(value)

    if isinstance(rule, dict) and set(rule) - known:
        # the rule has grown settings before without a new format version (border_reach); values of settings this
        # version does not know are not its to judge
        raise ModelFileError(f"{name} was written by a newer napari-unet (membrane rule settings "
                             f"{', '.join(sorted(set(rule) - known))} are unknown to version {__version__}); upgrade "
                             "napari-unet to load it")
    if rule is not None and not (isinstance(rule, dict) and all(map(number_or_none, rule.values()))):
        raise ModelFileError(f"{name} has an invalid membrane rule {rule!r}; the file was modified or damaged")
    if rule is not None:
        out_of_range = [key for key, value in rule.items() if value is not None and not _RULE_RANGES.get(key, lambda v: True)(value)]
        if out_of_range:  # scikit-image failed at Run (h_minima of depth 0), or the labels came out all membrane or none
            raise ModelFileError(f"{name} has a membrane rule with {', '.join(f'{k}={rule[k]!r}' for k in out_of_range)} out of "
                                 "range; the file was modified or damaged")
    return boundary_value, rule


#: The values :func:`napari_unet.postprocess.boundary_mask` can take: probabilities within 0..1, a positive minima
#: depth, smoothing and distances of at most thousands of pixels.
_RULE_RANGES = {
    "threshold": lambda v: 0 <= v <= 1,
    "seed_level": lambda v: 0 <= v <= 1,
    "merge_below": lambda v: 0 <= v <= 1,
    "minima_depth": lambda v: 0 < v <= 1,
    "sigma": lambda v: 0 <= v <= 1000,
    "min_seed_size": lambda v: 0 <= v <= 1e9,
    "border_reach": lambda v: 0 <= v <= 1e4,
}


def _check_network(keras_model, config: ModelConfig, name: str, expected=None) -> None:
    """:class:`ModelFileError` unless ``keras_model`` has the layers and weight shapes ``build_unet(config)`` makes.

    Prediction rebuilds the network from the stored configuration and copies the weights over by layer name,
    so a file whose network and ``napari_unet.json`` disagree must be refused when it is loaded, not at Run.
    """
    def shapes(model) -> dict:
        return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}

    want = shapes(expected if expected is not None else _expected_network(config))  # (expected: that network, built)
    try:
        have = shapes(keras_model)
    except (AttributeError, TypeError):
        have = {}
    if have == want:
        return
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing:
        detail = f"it has no layer {missing[0]!r}"
    elif extra:
        detail = f"it has an extra layer {extra[0]!r}"
    else:
        layer = next(n for n in want if want[n] != have[n])
        detail = f"its layer {layer!r} has weights of shapes {have[layer]}, not {want[layer]}"
    raise ModelFileError(
        f"{name}: the network does not match the napari-unet configuration stored with it ({detail}); "
        "the file was modified or damaged"
    )


def checked_intensity_reference(meta: dict, name: str) -> tuple:
    """(percentiles, intensity profile or None, its spread, the profile of the pixels above the floor or None, its
    spread) of a model file's metadata (:func:`read_metadata`), or :class:`ModelFileError` if they are malformed. No
    TensorFlow needed."""
    from .data import PROFILE_LEVELS

    percentiles = meta.get("percentiles", (1.0, 99.8))
    try:
        if not isinstance(percentiles, (list, tuple)):
            raise TypeError
        low, high = (float(p) for p in percentiles)
        if not 0 <= low < high <= 100:
            raise ValueError
    except (TypeError, ValueError):
        raise ModelFileError(f"{name} has invalid normalisation percentiles {percentiles!r} (two numbers 0 <= low < high <= 100)") from None
    flag = meta.get("intensity_profile_above_floor")
    if isinstance(flag, bool):  # files of a development build of session 51: one profile, of the kind the flag says
        meta = {**meta, "intensity_profile_above_floor": meta.get("intensity_profile") if flag else None,
                "intensity_spread_above_floor": meta.get("intensity_spread", 0.0) if flag else 0.0}
        if flag:
            meta["intensity_profile"], meta["intensity_spread"] = None, 0.0
    profiles = []
    for suffix in ("", "_above_floor"):  # files before session 51 record only the first; older ones neither
        profile, spread = meta.get("intensity_profile" + suffix), meta.get("intensity_spread" + suffix, 0.0)
        if profile is None:
            profiles += [None, 0.0]
            continue
        if not (isinstance(profile, list) and len(profile) == len(PROFILE_LEVELS) and all(map(_finite_number, profile))
                and _finite_number(spread) and spread >= 0):
            raise ModelFileError(f"{name} has an invalid intensity profile; the file was modified or damaged")
        profiles += [tuple(float(q) for q in profile), float(spread)]
    return ((low, high), *profiles)


def checked_pixel_size(meta: dict, name: str) -> Optional[list]:
    """[Y, X] training pixel size in µm of a model file's metadata, None if it records none (older files), or
    :class:`ModelFileError` if it is malformed. No TensorFlow needed."""
    pixel_size = meta.get("pixel_size")
    if pixel_size is None:
        return None
    if not (isinstance(pixel_size, list) and len(pixel_size) == 2 and all(_finite_number(s) and s > 0 for s in pixel_size)):
        raise ModelFileError(f"{name} has an invalid pixel size {pixel_size!r} (two sizes above 0 in µm, Y and X); the file "
                             "was modified or damaged")
    return [float(s) for s in pixel_size]


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _class_names(names, class_values) -> Optional[list]:
    """Stored class names if there is one string per class value (files written before they were stored have none)."""
    if isinstance(names, list) and len(names) == len(class_values) and all(isinstance(n, str) for n in names):
        return names
    return None


def _class_colors(colors, class_values) -> Optional[list]:
    """Stored colours if there is one RGBA of 4 numbers in 0..1 per class value (older files have none)."""
    if isinstance(colors, list) and len(colors) == len(class_values) and all(_is_rgba(c) for c in colors):
        return [[float(c) for c in rgba] for rgba in colors]
    return None


def _is_rgba(color) -> bool:
    return isinstance(color, list) and len(color) == 4 and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in color)


__all__ = [
    "METADATA_ENTRY",
    "FORMAT_VERSION",
    "ModelFileError",
    "UNetModel",
    "save_model",
    "read_metadata",
    "check_model_file",
    "check_model_path",
    "checked_metadata",
    "checked_settings",
    "as_model",
    "load_model",
    "checked_rule",
    "checked_intensity_reference",
    "checked_pixel_size",
]
