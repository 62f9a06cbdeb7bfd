"""Clear messages for labels that cannot be trained on or saved: bad layer metadata, display labels beyond
the classes, a save folder that does not exist (File > Save Selected Layers... and the Train button)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_layers_unchanged, layers_snapshot

pytestmark = pytest.mark.gui


def errors(notifications):
    return [message for severity, message in notifications if severity.lower().endswith("error")]


@pytest.mark.parametrize("class_values", ["0,255", [0, "membrane"], [255, 255]])
def test_train_refuses_labels_whose_class_values_metadata_is_no_list_of_integers(widgets, notifications, class_values):
    """Metadata set by another plugin or a script: a notification and the status line, no uncaught error."""
    viewer, training = widgets.viewer, widgets.training
    viewer.layers["EM labels"].metadata = {"class_values": class_values}
    before = layers_snapshot(viewer)
    assert training.start() is False
    expected = "labels layer 'EM labels' has class_values metadata"
    assert any(expected in m and "not a list of distinct integers" in m for m in errors(notifications)), notifications
    assert expected in training.progress.status.text()
    assert training._run is None and training.train_button.isEnabled()
    assert_layers_unchanged(viewer, before)


def _save_selected(viewer, monkeypatch, path):
    """File > Save Selected Layers..., the file dialog answered with ``path`` and the napari-unet labels filter."""
    import napari._qt.qt_viewer as qt_viewer
    from napari.plugins import _npe2

    extensions, _ = _npe2.file_extensions_string_for_layers(list(viewer.layers.selection))
    unet = next(f for f in extensions.split(";;") if "class values" in f)
    monkeypatch.setattr(qt_viewer.QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), unet))
    viewer.window._qt_viewer._save_layers_dialog(selected=True)


def test_save_dialog_reports_the_missing_folder_and_labels_beyond_the_classes(em_viewer, monkeypatch, tmp_path):
    """napari shows an uncaught error's message as its error notification: it must name the real cause."""
    from napari_unet._writer import LabelsWriteError

    layer = em_viewer.layers["EM labels"]
    em_viewer.layers.selection = {layer}
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError) as info:
        _save_selected(em_viewer, monkeypatch, missing / "labels.tif")
    assert str(info.value) == f"cannot write labels.tif: folder {str(missing)!r} does not exist"

    painted = np.array(layer.data)
    painted[0, :3, :3] = 3  # a new label ("M"), no class of this 2-class layer
    layer.data = painted
    with pytest.raises(LabelsWriteError) as info:
        _save_selected(em_viewer, monkeypatch, tmp_path / "labels.tif")
    assert str(info.value).startswith(
        "cannot save labels.tif: labels layer 'EM labels' holds display label 3, which is no class: "
        "it has 2 classes [0, 255], shown as labels 1..2"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written, not even a temporary file"
