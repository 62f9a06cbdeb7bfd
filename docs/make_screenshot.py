"""Screenshot for the README: napari with sample EM data, a prediction and both widgets docked.

    xvfb-run -a python3 docs/make_screenshot.py [--minutes 1]

Trains the default preset briefly on the synthetic EM sample through the core, hands the model to
the widgets' session, predicts with the inference widget and saves docs/screenshot.png.
"""

import argparse
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_unet._sample_data import make_em_sample
from napari_unet._widgets.session import get_session
from napari_unet.config import preset
from napari_unet.labels import from_display
from napari_unet.train import train


STEPS_PER_EPOCH = 10


def controls_height(dock_widget) -> int:
    """The height of a napari-unet dock's controls, whole (its scroll area asks for less on a small screen)."""
    return dock_widget.findChild(QScrollArea).widget().sizeHint().height()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--output", default=str(Path(__file__).with_name("screenshot.png")))
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-unet")
    viewer.window._qt_window.resize(1500, 1450)  # both docks whole offscreen (a real screen clamps a window to itself)
    for data, kwargs, kind in make_em_sample():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image_layer, labels_layer = viewer.layers[0], viewer.layers[1]
    class_values = labels_layer.metadata["class_values"]
    labels = from_display(np.asarray(labels_layer.data), class_values, ignore_value=None)
    chosen = preset("default")
    finished = train(np.asarray(image_layer.data), labels, chosen.model,
                     chosen.train.replace(epochs=100_000, steps_per_epoch=STEPS_PER_EPOCH, max_minutes=args.minutes))
    get_session(viewer).set_model(finished.model, "trained on the synthetic EM sample", labels_layer.metadata.get("class_names"))
    training_dock, training = viewer.window.add_plugin_dock_widget("napari-unet", "U-Net training")
    inference_dock, inference = viewer.window.add_plugin_dock_widget("napari-unet", "U-Net inference")
    # each dock its controls' height, after the docks' own first sharing of the column (a zero-time timer)
    QApplication.processEvents()
    heights = [controls_height(training) + 40, controls_height(inference) + 40]
    viewer.window._qt_window.resizeDocks([training_dock, inference_dock], heights, Qt.Orientation.Vertical)
    assert training.plot.steps, "the training dock draws the current model's curves from its history"
    inference.run()
    app = QApplication.instance()
    for _ in range(600):  # wait for the prediction worker (up to ~60 s)
        app.processEvents()
        if any(layer.name.endswith("prediction") for layer in viewer.layers):
            break
        import time

        time.sleep(0.1)
    labels_layer.visible = False
    viewer.dims.set_point(0, 0)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(args.output, canvas_only=False)
    print(f"wrote {args.output}")
    viewer.close()


if __name__ == "__main__":
    main()
