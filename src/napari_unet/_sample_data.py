"""Sample data (File > Open Sample > napari-unet): synthetic EM and OCT stacks with labels.

Labels layers use the napari_unet display convention (display 0 = not annotated, display
``k + 1`` = class ``class_values[k]``); here every pixel is annotated.
"""

from __future__ import annotations

import numpy as np

from ._reader import label_features
from .synthetic import (
    EM_CLASS_NAMES,
    EM_CLASS_VALUES,
    OCT_CLASS_NAMES,
    OCT_CLASS_VALUES,
    make_em_stack,
    make_oct_stack,
)


def _labels_tuple(labels: np.ndarray, class_values, class_names, name: str, source: str) -> tuple:
    from .labels import to_display

    class_values = [int(v) for v in class_values]
    display = to_display(labels, class_values)
    metadata = {
        "class_values": class_values,
        "class_names": list(class_names),
        "ignore_value": None,
        "source": source,
        "axes": "ZYX",
        "file_dtype": str(labels.dtype),
    }
    kwargs = {
        "name": name,
        "metadata": metadata,
        "features": label_features(class_values, class_names),
        "opacity": 0.5,
    }
    return (display, kwargs, "labels")


def make_em_sample() -> list[tuple]:
    """Synthetic ssTEM stack (8 x 256 x 256) and its labels: membrane (file 0), cell (file 255)."""
    image, labels = make_em_stack(n_slices=8, shape=(256, 256), seed=0)
    source = "synthetic:em"
    return [
        (image, {"name": "EM (synthetic)", "metadata": {"source": source, "axes": "ZYX"}}, "image"),
        _labels_tuple(labels, EM_CLASS_VALUES, EM_CLASS_NAMES, "EM labels (synthetic)", source),
    ]


def make_oct_sample() -> list[tuple]:
    """Synthetic OCT B-scans (4 x 248 x 384) and layer labels: vitreous (0), 8 layers, choroid (9)."""
    image, labels, boundaries = make_oct_stack(n_scans=4, shape=(248, 384), seed=0, return_boundaries=True)
    source = "synthetic:oct"
    labels_layer = _labels_tuple(labels, OCT_CLASS_VALUES, OCT_CLASS_NAMES, "OCT layers (synthetic)", source)
    labels_layer[1]["metadata"]["boundaries"] = boundaries
    return [
        (image, {"name": "OCT (synthetic)", "metadata": {"source": source, "axes": "ZYX"}}, "image"),
        labels_layer,
    ]


__all__ = ["make_em_sample", "make_oct_sample"]
