"""Sample data providers and the npe2 manifest that declares them (no display needed)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import pytest

from napari_unet._sample_data import make_em_sample, make_oct_sample
from napari_unet.labels import from_display
from napari_unet.synthetic import make_em_stack, make_oct_stack

REPO = Path(__file__).parents[1]


def _check_pair(layers, class_values, class_names):
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kwargs, _), (display, labels_kwargs, _) = layers
    assert image.shape == display.shape and image.dtype == np.uint8
    meta = labels_kwargs["metadata"]
    assert meta["class_values"] == class_values
    assert meta["class_names"] == class_names
    assert meta["ignore_value"] is None
    # display convention: 0 = not annotated (none here), k + 1 = class_values[k]
    assert display.dtype == np.uint8
    assert display.min() >= 1 and display.max() <= len(class_values)
    assert list(labels_kwargs["features"]["class_name"]) == ["not annotated", *class_names]
    assert image_kwargs["name"] != labels_kwargs["name"]
    return image, display


def test_em_sample_layers():
    image, display = _check_pair(make_em_sample(), [0, 255], ["membrane", "cell"])
    expected_image, expected_labels = make_em_stack(n_slices=8, shape=(256, 256), seed=0)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(from_display(display, [0, 255]), expected_labels)
    assert 0.15 < np.mean(display == 1) < 0.35  # display 1 = membrane (file value 0)


def test_oct_sample_layers():
    image, display = _check_pair(
        make_oct_sample(),
        list(range(10)),
        ["vitreous", "RNFL", "GCL+IPL", "INL", "OPL", "ONL", "IS", "OS", "RPE", "choroid"],
    )
    expected_image, expected_labels = make_oct_stack(n_scans=4, shape=(248, 384), seed=0)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(from_display(display, list(range(10))), expected_labels)
    assert np.all(display[:, 0, :] == 1)  # vitreous (file 0) is a visible, paintable class


def test_sample_layers_are_accepted_by_napari():
    from napari.components import ViewerModel

    model = ViewerModel()
    for item in make_em_sample() + make_oct_sample():
        model._add_layer_from_data(*item)
    assert [type(layer).__name__ for layer in model.layers] == ["Image", "Labels", "Image", "Labels"]
    assert model.layers[1].metadata["class_values"] == [0, 255]


@pytest.mark.parametrize("factory", [make_em_sample, make_oct_sample])
def test_samples_are_quick(factory):
    factory()  # warm-up
    start = time.perf_counter()
    factory()
    # target < 1 s on an idle machine; loose bound for busy CI runners
    assert time.perf_counter() - start < 3.0


# ----------------------------------------------------------------------------------- manifest


@pytest.fixture(scope="module")
def manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(REPO / "napari.yaml")


def test_manifest_is_shipped_in_the_package():
    link = REPO / "src" / "napari_unet" / "napari.yaml"
    assert link.is_symlink() and link.resolve() == (REPO / "napari.yaml").resolve()


def test_manifest_contributions(manifest):
    assert manifest.name == "napari-unet"
    contributions = manifest.contributions
    [reader] = contributions.readers
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff", "*.zarr"} and reader.accepts_directories
    [writer] = contributions.writers
    assert writer.layer_types == ["labels"] and writer.filename_extensions == [".tif", ".tiff"]
    assert {s.key for s in contributions.sample_data} == {"em", "oct"}
    commands = {c.id: c.python_name for c in contributions.commands}
    widgets = {w.display_name: commands[w.command] for w in contributions.widgets}
    assert widgets == {
        "U-Net training": "napari_unet._widgets:TrainingWidget",
        "U-Net inference": "napari_unet._widgets:InferenceWidget",
    }


def test_manifest_commands_resolve(manifest):
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    ours = [
        manifest.contributions.readers[0].command,
        manifest.contributions.writers[0].command,
        *(s.command for s in manifest.contributions.sample_data),
    ]
    for command in ours:
        module, _, name = commands[command].partition(":")
        assert callable(getattr(importlib.import_module(module), name)), commands[command]
