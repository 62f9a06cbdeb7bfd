"""The GUI end of ``napari-unet demo``: napari with the data, the prediction and both widgets docked."""

from __future__ import annotations

import numpy as np


def show_in_napari(image: np.ndarray, labels: np.ndarray, prediction: np.ndarray, model) -> None:
    """Open napari with image (Z, Y, X), truth and predicted labels (file values), hand over ``model``."""
    import napari

    from ._widgets.session import get_session
    from .labels import to_display
    from .synthetic import EM_CLASS_NAMES

    class_values = list(model.class_values)
    metadata = {"class_values": class_values, "class_names": list(EM_CLASS_NAMES)}
    viewer = napari.Viewer(title="napari-unet demo")
    viewer.add_image(image, name="synthetic EM")
    viewer.add_labels(to_display(labels, class_values), name="synthetic EM labels", metadata=dict(metadata), opacity=0.4)
    image_layer = viewer.layers[0]
    prediction_layer = viewer.add_labels(
        to_display(prediction, class_values), name="synthetic EM prediction", metadata=dict(metadata), opacity=0.5
    )
    session = get_session(viewer)
    session.set_model(model, "demo model")
    session.track(prediction_layer, image_layer)  # paint on it, then Retrain
    viewer.window.add_plugin_dock_widget("napari-unet", "U-Net training")
    viewer.window.add_plugin_dock_widget("napari-unet", "U-Net inference")
    napari.run()
