"""Layer pickers and reading images/annotations out of napari layers (main thread only)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QComboBox

from napari_unet.data import InputError, read_planes
from napari_unet.labels import LabelError, check_display_values, metadata_class_values, smallest_dtype
from napari_unet.tiff_io import pixel_size_um

from .session import disconnect_when_destroyed, unwrap

_REFRESH_ON = {"inserted", "removed", "moved", "reordered", "name", "data", "set_data"}


class LayerCombo(QComboBox):
    """Picks a layer of ``layer_type`` from the viewer, optionally only those ``accept`` allows."""

    def __init__(self, viewer, layer_type, accept: Optional[Callable] = None, parent=None):
        super().__init__(parent)
        self._viewer, self._type, self._accept = unwrap(viewer), layer_type, accept
        self._layers: list = []
        self._viewer.layers.events.connect(self._on_layers_event)
        disconnect_when_destroyed(self, (self._viewer.layers.events, self._on_layers_event))
        self.refresh()

    def _on_layers_event(self, event) -> None:
        if event.type in _REFRESH_ON:
            self.refresh()

    def candidates(self) -> list:
        return [
            layer for layer in self._viewer.layers
            if isinstance(layer, self._type) and (self._accept is None or self._accept(layer))
        ]

    def refresh(self) -> None:
        current = self.layer()
        layers = self.candidates()
        if [id(x) for x in layers] == [id(x) for x in self._layers] and [self.itemText(i) for i in range(self.count())] == [x.name for x in layers]:
            return
        self.blockSignals(True)
        self.clear()
        self._layers = layers
        self.addItems([layer.name for layer in layers])
        index = next((i for i, x in enumerate(layers) if x is current), 0 if layers else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    def set_layer(self, layer) -> None:
        layer = unwrap(layer)
        for i, candidate in enumerate(self._layers):
            if candidate is layer:
                self.setCurrentIndex(i)
                return
        raise ValueError(f"layer {layer.name!r} is not offered here")


#: The way forward from a multiscale layer (napari-ome-zarr's): the napari-unet reader opens a store's full resolution.
_MULTISCALE_HINT = ("open its full-resolution level as a plain {kind} (an OME-Zarr store: File > Open with Plugin > Open "
                    "Folder..., napari U-Net, opens its level 0, and its labels from <store>/labels/<name>)")


def image_array(layer, what: str = "the image"):
    """The layer's data as a (Y, X) or (Z, Y, X) one-channel array, or :class:`InputError`."""
    if layer is None:
        raise InputError(f"choose {what} (an Image layer)")
    if getattr(layer, "rgb", False):
        raise InputError(f"image {layer.name!r} is RGB{'A' if layer.data.shape[-1] == 4 else ''}; napari-unet needs one channel: convert it to grayscale or split its channels (layer context menu > Split RGB)")
    if getattr(layer, "multiscale", False):
        raise InputError(f"image {layer.name!r} is multiscale; {_MULTISCALE_HINT.format(kind='image')}")
    shape = tuple(layer.data.shape)
    if len(shape) not in (2, 3):
        hint = (" (a time series, or several channels? split it into one layer per time point or channel: layer "
                "context menu > Split Stack)" if len(shape) == 4 else "")
        raise InputError(f"image {layer.name!r} has shape {shape}; napari-unet needs a 2-D image (Y, X) or a stack (Z, Y, X){hint}")
    if len(shape) == 3 and shape[-1] <= 4 and min(shape[:2]) >= 16:  # (Y, X, C) from a channels-last file or loader
        raise InputError(f"image {layer.name!r} of shape {shape} looks like {shape[-1]} channel{'s' * (shape[-1] > 1)} last "
                         "(Y, X, C); napari-unet needs one channel: split it into one layer per channel (layer context "
                         "menu > Split Stack, on its last axis) or open it as a one-channel image")
    if shape[-1] < 16 or shape[-2] < 16:
        raise InputError(f"image {layer.name!r} of shape {shape} is too small (needs at least 16 x 16 pixels)")
    return layer.data


def pixel_size_of(layer) -> Optional[list]:
    """[Y, X] size in µm of the layer's pixels when its units are lengths (a calibrated file), else None ("pixel")."""
    return pixel_size_um(layer.scale, getattr(layer, "units", None))


def no_labels_message(viewer, image_layer) -> str:
    shape = tuple(image_layer.data.shape)
    squeezed = tuple(n for n in shape if n != 1)
    others = [f"{x.name!r} {tuple(x.data.shape)}" for x in unwrap(viewer).layers if isinstance(x, Labels)]
    # a mask saved as floating point (ImageJ's 32-bit) opens as an image: napari converts it in one step (one of
    # another shape than the image's by an axis of length 1 also needs the same reader as the image)
    as_images = [x for x in unwrap(viewer).layers if isinstance(x, Image) and x is not image_layer
                 and tuple(n for n in x.data.shape if n != 1) == squeezed]
    why = (" (a mask saved as floating-point numbers opens as an image)"
           if any(np.dtype(x.data.dtype).kind == "f" for x in as_images) else "")
    off = [repr(x.name) for x in as_images if tuple(x.data.shape) != shape]
    axis = (f"; {', '.join(off)} {'differ' if len(off) > 1 else 'differs'} from the image by an axis of length 1: open "
            "image and labels with the same reader so that their shapes match") if off else ""
    which = f"one of the image layers {', '.join(repr(x.name) for x in as_images)}" if len(as_images) > 1 else \
        f"image layer {as_images[0].name!r}" if as_images else ""
    convert = (f". If {which} holds the labels{why}, convert it: right-click it in the layer list > Convert to "
               f"Labels{axis}") if as_images else ""
    if not others:  # it said "no labels layer has the shape ...; there is no labels layer", with no next step
        return (f"there is no labels layer to train on: open the labels of {image_layer.name!r} (a mask of its shape "
                f"{' x '.join(map(str, shape))}), or add an empty one (the layer list's new labels button) and paint some "
                f"pixels of each class{convert}")
    found = f"; the labels layers have shapes {', '.join(others)}"
    alike = [x.name for x in unwrap(viewer).layers if isinstance(x, Labels)
             and tuple(n for n in x.data.shape if n != 1) == squeezed and tuple(x.data.shape) != shape]
    same_pixels = (f" ({', '.join(map(repr, alike))} {'holds' if len(alike) == 1 else 'hold'} its pixels, with or without an "
                   "axis of length 1: open image and labels with the same reader so that their shapes match)") if alike else ""
    return (f"no labels layer has the shape {shape} of image {image_layer.name!r}{found}. Labels must match the image "
            f"pixel for pixel{same_pixels}{convert}")


def layer_role(layer, role: str = "image") -> str:
    """``layer`` in ``role`` ("image", "labels", "prediction") as messages and read errors name it: "image 'stack'",
    "labels layer 'lab'", "prediction layer 'stack prediction'"."""
    return f"{role if role == 'image' else role + ' layer'} {layer.name!r}"


def read_roles(image_layer, labels_layer=None, labels_role: str = "labels") -> dict:
    """The layers a job reads, by the role the core gives an array it reads (``err.role`` of a read error,
    :func:`napari_unet.data.read_planes`), as read errors name them (:func:`~.jobs.read_error_text`):
    ``{"image": "image 'stack'", "labels": "labels layer 'lab'"}``; a layer that is None is left out."""
    names = {} if image_layer is None else {"image": layer_role(image_layer)}
    if labels_layer is not None:
        names["labels"] = layer_role(labels_layer, labels_role)
    return names


def read_annotations(layer, zero_is_unannotated: bool, reviewed: Optional[np.ndarray] = None):
    """Class values and annotated mask of a labels layer: ``(values, annotated bool, class_values)``; ``values`` is
    an integer array (the layer's own data when it holds the class values: never write into it).

    * ``metadata["class_values"]`` present (napari-unet reader, sample data, predictions): display
      values, 0 = not annotated, ``k + 1`` = ``class_values[k]``; ``zero_is_unannotated`` is ignored.
    * no metadata: the values are the classes; 0 = not annotated if ``zero_is_unannotated``.
    * ``reviewed`` (a tracked prediction layer): only reviewed pixels count as annotated.
    ``class_values`` is the metadata list, or None when the classes are just the values found.
    """
    what = layer_role(layer, "prediction" if reviewed is not None else "labels")
    if getattr(layer, "multiscale", False):  # np.asarray gave its lowest resolution
        raise LabelError(f"{what} is multiscale; {_MULTISCALE_HINT.format(kind='labels layer')}")
    # a lazy (dask) layer is read here: a damaged page or chunk of its file is raised naming the layer and the slice
    # (napari_unet.data.read_planes; the training widget says so, and that nothing started)
    data = read_planes(layer.data, name=what)
    if data.dtype.kind not in "iub":
        raise LabelError(f"{what} has dtype {data.dtype}; labels must be integers")
    class_values = metadata_class_values(layer.metadata, what)
    if class_values is not None and class_values != sorted(class_values):
        # a prediction shows display k + 1 as the k-th smallest class value: the two layers would disagree
        raise LabelError(
            f"{what} has class_values metadata {class_values} that is not in increasing order; "
            "display label k + 1 stands for the k-th smallest class value in napari-unet's layers: save the layer "
            "(its file keeps the values you painted) and open it again with the napari-unet reader"
        )
    if class_values is not None:
        check_display_values(data, class_values, what)
        # the smallest dtype of the class values: a uint8 stack of 0/255 classes stays 1 byte per pixel (int64 copies
        # of 32 x 512^2 kept the GUI thread 0.4 s at Train)
        lookup = np.asarray([0, *class_values], smallest_dtype([0, *class_values]))
        annotated = data > 0
        values = lookup[data]
    else:
        annotated = data != 0 if zero_is_unannotated else np.ones(data.shape, bool)
        values = data.view(np.uint8) if data.dtype == bool else data  # read only: no copy
    if reviewed is not None:
        annotated &= reviewed
    return values, annotated, (list(class_values) if class_values is not None else None)


def class_names_of(layer) -> Optional[dict]:
    """``{class value: name}`` from a labels layer's metadata, if it has names."""
    try:
        values = metadata_class_values(layer.metadata, f"labels layer {layer.name!r}")
    except LabelError:
        return None
    names = layer.metadata.get("class_names")
    if not values or not isinstance(names, (list, tuple)) or len(values) != len(names):
        return None
    return {int(v): str(n) for v, n in zip(values, names)}


def _world_corners(layer) -> np.ndarray:
    """(ndim + 1, ndim) world positions of the data origin and of the far end of each data axis of ``layer``."""
    shape = np.asarray(layer.data.shape[-layer.ndim:], float)
    points = np.vstack([np.zeros(layer.ndim), np.diag(shape)])
    return np.array([layer.data_to_world(point) for point in points], float)


def misplacement(layer, reference) -> str:
    """How ``layer`` sits in the world apart from ``reference`` of the same data shape ("" if they overlay): "have
    different pixel sizes", or "are shifted, rotated or sheared against each other". Judged by where the data's
    corners land, to a millionth of the layers' extent: a placement given as an affine equals the same one given as
    scale and translate, and pixel sizes in metres (5e-9) are told apart."""
    ours, theirs = _world_corners(layer), _world_corners(reference)
    extent = max(float(np.abs(ours[1:] - ours[0]).max()), float(np.abs(theirs[1:] - theirs[0]).max()), 1e-300)
    if np.allclose(ours, theirs, rtol=0, atol=1e-6 * extent):
        return ""
    if not np.allclose(layer.scale, reference.scale, rtol=1e-6, atol=0):
        return "have different pixel sizes"
    return "are shifted, rotated or sheared against each other"


def _slices_face_the_view(layer) -> bool:
    """Whether the slices of 3-D ``layer`` are Y-X planes in the world: its slice axis moves along world Z only and
    its rows and columns stay within one Z (no shear or rotation across the slices, as of deskewed light sheets)."""
    corners = _world_corners(layer)
    steps = (corners[1:] - corners[0]) / np.maximum(np.asarray(layer.data.shape[-layer.ndim:], float), 1)[:, None]
    size = float(np.abs(steps).max()) or 1.0
    across = np.abs(np.concatenate([steps[-3, -2:], steps[-2:, -3]]))  # slice axis into Y, X; rows and columns into Z
    return bool((across <= 1e-9 * size).all())


def current_slice(viewer, layer, or_else: str = "") -> Optional[int]:
    """Index of the slice of 3-D ``layer`` shown in the viewer (None for a 2-D layer).

    :class:`InputError` unless the viewer shows a Y-X plane in 2-D (a transposed or 3-D view shows no one slice)
    within the layer's slices (a longer stack open beside it can move the slider past them); ``or_else`` ends its
    advice (", or choose the whole stack").
    """
    if layer.ndim < 3:
        return None
    dims = unwrap(viewer).dims
    if dims.ndisplay != 2 or list(dims.displayed) != [dims.ndim - 2, dims.ndim - 1]:
        raise InputError(
            f"the viewer does not show one Y-X slice of {layer.name!r} (3-D display or transposed axes); "
            f"switch to the 2-D view of its Y-X plane{or_else}"
        )
    if not _slices_face_the_view(layer):
        raise InputError(
            f"{layer.name!r} is sheared or rotated across its slices, so napari draws no one slice of it at a slider "
            "position; " + ("choose the whole stack instead" if or_else else
                            "slices cannot be marked reviewed there: paint the corrections instead")
        )
    z = int(np.round(layer.world_to_data(dims.point)[-3]))
    n_slices = layer.data.shape[-3]
    if not 0 <= z < n_slices:  # napari shows nothing of the layer here: never act on a slice the user cannot see
        raise InputError(
            f"the viewer's slice position lies outside {layer.name!r} (slices 0-{n_slices - 1}), which shows "
            "nothing there; move the slider onto it"
        )
    return z


__all__ = [
    "Image",
    "Labels",
    "LayerCombo",
    "class_names_of",
    "current_slice",
    "image_array",
    "layer_role",
    "no_labels_message",
    "read_annotations",
    "read_roles",
]
