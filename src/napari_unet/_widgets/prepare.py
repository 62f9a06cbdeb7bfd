"""From layers to a training job: plain arrays and configs for the worker (main thread only).

Bad input raises :class:`~napari_unet.data.InputError` / :class:`~napari_unet.labels.LabelError`
with a message for the user; nothing here modifies a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.data import InputError
from napari_unet.labels import (
    ZERO_IS_CLASS,
    LabelError,
    check_display_values,
    layer_order,
    metadata_class_values,
    to_indices,
    training_labels,
)
from napari_unet.model_io import UNetModel
from napari_unet.retrain import CorrectionCheck, correction_check, retrain_data

from .layers import class_names_of, image_array, misplacement, no_labels_message, pixel_size_of, read_annotations
from .outputs import prediction_layer_of
from .session import colormap_of


@dataclass
class TrainJob:
    image: np.ndarray
    labels: np.ndarray  # class values; train_config.ignore_value where not annotated
    model_config: Optional[ModelConfig]  # None: the architecture of ``init``
    train_config: TrainConfig
    init: Optional[UNetModel]
    names: Optional[dict]  # class value -> name, when known
    colormap: Any = None  # (class values, colormap) of the labels layer, when it has custom colours
    note: str = ""  # what the job trains on, for the status line
    auto_depth: bool = False  # the worker settles model_config's depth (it may ask TensorFlow for a GPU)
    pixel_weights: Optional[np.ndarray] = None  # extra loss weights, labels' shape (Retrain's corrections)
    check: Optional[CorrectionCheck] = None  # a Retrain's corrections, scored on the new model
    pairs: Any = None  # a reopened prediction to pair with the image once the run starts (its image was renamed)
    warning: str = ""  # shown as a notification at the start and kept in the final status
    pixel_size: Optional[list] = None  # [Y, X] µm of the image's pixels, when its layer has length units
    data_name: str = "image and labels"  # the layers trained on, as the memory check's messages name them


def _image(image_layer, labels_layer):
    image = image_array(image_layer)  # a lazy (dask) image stays lazy: the worker reads it, not the GUI thread
    if labels_layer is not None and tuple(labels_layer.data.shape) != tuple(image.shape):
        labels_layer = None  # its data changed shape since it was picked
    return image, labels_layer


#: The training widget's check box that makes value 0 of a labels layer without class metadata "not annotated".
ZERO_BOX = "label 0 = not annotated"


def check_model_classes(model: UNetModel, classes, what: str, advice: str) -> None:
    """:class:`LabelError` (before the worker starts) if ``classes`` holds values ``model`` has no class for."""
    unknown = sorted(set(int(v) for v in classes) - set(int(v) for v in model.class_values))
    if unknown:
        raise LabelError(f"{what} holds values {unknown[:5]} that the current model has no class for (its classes are "
                         f"{list(model.class_values)}); {advice}")


def prepare_train(viewer, session, image_layer, labels_layer, zero_is_unannotated: bool, configs, continue_from_model: bool) -> TrainJob:
    """Train on ``labels_layer``; only reviewed pixels count if it is a tracked prediction layer."""
    image, labels_layer = _image(image_layer, labels_layer)
    if labels_layer is None:
        raise InputError(no_labels_message(viewer, image_layer))
    reviewed = session.reviewed(labels_layer)
    values, annotated, class_values = read_annotations(labels_layer, zero_is_unannotated, reviewed)
    what = f"labels layer {labels_layer.name!r}"
    if reviewed is not None:
        what = f"prediction layer {labels_layer.name!r} (only the pixels painted or marked reviewed on it count)"
    zeros_ignored = int(np.count_nonzero(values == 0)) if class_values is None and zero_is_unannotated else 0
    labels, ignore, classes = training_labels(values, annotated, what)
    # Dense labels whose zeros are left out may be a mask whose 0 is a class (an OCT mask's vitreous, a 0/255 mask's
    # membranes) opened without its metadata; scribbles leave most of their slices at 0, as they should.
    # zeros on slices left unpainted are plainly not annotated (one painted slice of a stack); those on painted ones count
    zeros_painted = _zeros_on_annotated_planes(values, annotated) if zeros_ignored else 0
    zeros_form_a_class = zeros_painted > 0 and (_annotated_share(annotated) >= DENSE_SHARE or _layered(labels, annotated, classes, ignore))
    model_config, train_config = configs
    init = None
    if continue_from_model:
        init = session.model
        if init is None:
            raise InputError("there is no current model to continue from; train one or load a .keras file")
        model_config = None
        check_model_classes(init, classes, what, "uncheck 'continue from the current model' to train a new one")
    elif len(classes) < 2:  # found here, before the worker loads TensorFlow
        hint = (f"; with '{ZERO_BOX}' checked its {zeros_ignored} pixels of value 0 are ignored: uncheck it if 0 is a class "
                "(e.g. a 0/255 mask), else paint pixels of a second class" if zeros_ignored else "")
        raise LabelError(f"{what} has only the class {classes[0]} annotated; a model needs at least two classes{hint}")
    colormap = _class_colormap(labels_layer, class_values or classes, display=class_values is not None)
    note = f"{int(annotated.sum())} annotated pixels of {labels_layer.name!r}"
    warnings = []
    if zeros_form_a_class:
        on = " on its annotated slices" if zeros_painted < zeros_ignored else ""
        warnings.append(f"{zeros_painted} pixels of value 0{on} in {labels_layer.name!r} count as not annotated ('{ZERO_BOX}' "
                        "is checked); if 0 is a class there (an OCT mask's vitreous, a 0/255 mask's membranes), uncheck the box")
    elif zeros_ignored:
        note += f"; its {zeros_ignored} pixels of value 0 count as not annotated ('{ZERO_BOX}')"
    misplaced = misplacement(labels_layer, image_layer)
    if misplaced:  # e.g. a mask file without pixel sizes beside an image with them: the user sees them apart
        warnings.append(f"{labels_layer.name!r} and {image_layer.name!r} {misplaced}, so they do not overlay in napari "
                        "(training pairs them pixel for pixel)")
    warning = "; ".join(warnings)
    return TrainJob(image, labels, model_config, train_config.replace(ignore_value=ignore), init, class_names_of(labels_layer),
                    colormap, note, warning=warning, pixel_size=pixel_size_of(image_layer),
                    data_name=f"image {image_layer.name!r} and labels {labels_layer.name!r}")


def _class_colormap(labels_layer, class_values, display: bool):
    """``(class values, display-convention colormap)`` that colours each class as ``labels_layer`` does (its display
    values 1..K if ``display``, else the class values themselves), so that the prediction shows them alike; None where
    those are the colours a new labels layer has anyway. A class the layer draws transparent (value 0 of a plain
    layer) keeps the prediction's own colour."""
    from napari.layers import Labels

    n = len(class_values)
    try:
        rgba = np.asarray(labels_layer.colormap.map(np.arange(1, n + 1) if display else np.asarray(class_values)), np.float64)
    except (TypeError, ValueError, OverflowError):  # values the colormap cannot map: the prediction's own colours
        return None
    default = np.asarray(Labels(np.zeros((1, 1), np.uint8)).colormap.map(np.arange(1, n + 1)), np.float64)
    hidden = rgba[:, 3] == 0
    rgba[hidden] = default[hidden]
    return None if np.allclose(rgba, default) else (list(class_values), colormap_of(rgba.tolist()))


def remember_zero_convention(labels_layer, zero_is_unannotated: bool) -> None:
    """Record in a plain labels layer's metadata whether its value 0 was trained as a class, so that the napari-unet
    writer saves its 0s as that class, not as "not annotated" (layers with class metadata need no record)."""
    if metadata_class_values(labels_layer.metadata, f"labels layer {labels_layer.name!r}") is None:
        labels_layer.metadata[ZERO_IS_CLASS] = not zero_is_unannotated


#: Labels annotating at least this share of the slices they annotate are dense (masks), not scribbles.
DENSE_SHARE = 0.5


def _layered(labels: np.ndarray, annotated: np.ndarray, classes, ignore) -> bool:
    """Whether class-value ``labels`` ((Y, X) or (Z, Y, X), ``ignore`` where not ``annotated``) are a band of layers
    stacked down Y (:func:`napari_unet.labels.layer_order`) across almost every column, with nothing unannotated inside
    it, judged on up to 4 annotated slices: an OCT mask whose 0 (vitreous above, choroid below) covers most of each
    B-scan. Scribbles leave gaps, and strips of a few columns are no band."""
    stack = labels.reshape(-1, *labels.shape[-2:])
    held = np.flatnonzero(annotated.reshape(len(stack), -1).any(axis=1))
    if not len(held):
        return False
    picks = held[np.unique(np.linspace(0, len(held) - 1, min(4, len(held))).round().astype(int))]
    indices = to_indices(stack[picks], classes, ignore)
    columns = np.moveaxis(indices >= 0, 1, -1).reshape(-1, indices.shape[1])  # (columns, Y): annotated
    counts = columns.sum(axis=1)
    if np.mean(counts > 1) < BAND_SHARE:
        return False
    columns, counts = columns[counts > 1], counts[counts > 1]
    first, last = columns.argmax(axis=1), columns.shape[1] - 1 - columns[:, ::-1].argmax(axis=1)
    return np.mean(last - first + 1 == counts) >= BAND_SHARE and layer_order(indices) is not None


#: A band of layers (:func:`_layered`) spans at least this share of the columns, and as many hold it unbroken.
BAND_SHARE = 0.9


def _zeros_on_annotated_planes(values: np.ndarray, annotated: np.ndarray) -> int:
    """Pixels of value 0 in the (Y, X) planes of ``values`` where ``annotated`` (bool, same shape) holds any pixel."""
    planes, marks = values.reshape(-1, *values.shape[-2:]), annotated.reshape(-1, *annotated.shape[-2:])
    return sum(int(np.count_nonzero(plane == 0)) for plane, mark in zip(planes, marks) if mark.any())


def _annotated_share(annotated: np.ndarray) -> float:
    """Share of annotated pixels in the (Y, X) planes of ``annotated`` (bool, (Y, X) or (Z, Y, X)) that hold any."""
    planes = annotated.reshape(-1, *annotated.shape[-2:])
    counts = planes.reshape(len(planes), -1).sum(axis=1)
    held = counts > 0
    return float(counts[held].sum() / (held.sum() * planes[0].size)) if held.any() else 0.0


def prepare_retrain(viewer, session, image_layer, labels_layer, zero_is_unannotated: bool, retrain_config) -> TrainJob:
    """Fine-tune the session model: original annotations overridden by painted corrections.

    The corrections come from the image's prediction layer (the selected one if several, else the first); only
    pixels the user painted or marked reviewed count. Painted ones are the corrections that Retrain focuses on and
    weighs more (:func:`retrain_data`); accepted ones are annotations like the labels layer's.
    ``retrain_config(model_config, previous_train_config)`` gives the TrainConfig of the short fine-tuning
    (:func:`napari_unet.retrain.retrain_config`).
    """
    model = session.model
    if model is None:
        raise InputError("there is no model to retrain; train one or load a .keras file first")
    image, labels_layer = _image(image_layer, labels_layer)
    # a reopened prediction is matched to its image by name: one of another image of that name has another shape
    corrected_layers, misfits = [], []
    for layer in session.corrected_layers(image_layer):
        (corrected_layers if tuple(layer.data.shape) == tuple(image.shape) else misfits).append(layer)
    prediction = prediction_layer_of(viewer, session, image_layer, lambda x: any(x is y for y in corrected_layers))
    if prediction is None and misfits:
        raise InputError(
            f"prediction layer {misfits[0].name!r} has the shape {tuple(misfits[0].data.shape)}, not the shape "
            f"{tuple(image.shape)} of {image_layer.name!r}: it was predicted from another image; run inference on "
            f"{image_layer.name!r} and paint the corrections on that prediction"
        )
    pairs = None
    if prediction is None:  # a reopened prediction whose image is open under another name: used when selected
        unpaired = [(x, name) for x, name in session.unpaired_corrected_layers(viewer) if tuple(x.data.shape) == tuple(image.shape)]
        chosen = [x for x, _ in unpaired if x in viewer.layers.selection]
        if chosen:  # paired with the image (and saved as its prediction) once the Retrain starts: TrainJob.pairs
            corrected_layers, prediction, pairs = [chosen[0]], chosen[0], chosen[0]
        elif unpaired:
            layer, name = unpaired[0]
            raise LabelError(
                f"the corrections on prediction layer {layer.name!r} were made on image {name!r}, which is not open "
                f"under that name; select {layer.name!r} and Retrain to use them on {image_layer.name!r}"
            )
    if prediction is None:
        for layer in session.tracked_layers(image_layer):  # painted display labels beyond the classes leave no mark
            classes = layer.metadata.get("class_values") if isinstance(layer.metadata, dict) else None
            if classes:
                check_display_values(np.asarray(layer.data), classes, f"prediction layer {layer.name!r}")
        elsewhere = session.corrected_layers_of_other_images(image_layer)
        if elsewhere:  # painted on another image's prediction: the widget's image decides which one Retrain reads
            layer, name = elsewhere[0]
            raise LabelError(
                f"no corrections on a prediction of {image_layer.name!r}; the corrections on {layer.name!r} belong to "
                f"image {name!r}: choose {name!r} as the training widget's image (and its labels, if any) to retrain on them"
            )
        deleted = session.deleted_corrected_layers(image_layer)
        gone = f" (the corrections on {deleted[-1]!r} went with that layer when it was deleted)" if deleted else ""
        raise LabelError(
            f"no corrections to learn from{gone}: run inference on {image_layer.name!r}, paint the right "
            "classes on its prediction layer, then Retrain"
        )
    values, reviewed, _ = read_annotations(prediction, True, session.reviewed(prediction))
    corrected = reviewed & session.painted(prediction)  # painted; slices accepted with Mark slice reviewed are annotations
    annotated = reviewed
    if labels_layer is not None and labels_layer is not prediction:
        base, base_annotated, _ = read_annotations(labels_layer, zero_is_unannotated, session.reviewed(labels_layer))
        values = np.where(reviewed, values, base)
        annotated = reviewed | base_annotated
    train_config = retrain_config(model.config, model.train_config)
    data = retrain_data(image, values, annotated, corrected, train_config.patch_size, name=f"prediction layer {prediction.name!r}",
                        annotated_fraction=train_config.annotated_center_fraction)
    if len(data.classes) < 2:  # the model drifted toward the one class painted (membrane share 0.26 -> 0.37)
        value = data.classes[0]
        name = dict(zip(model.class_values, session.info.class_names or [])).get(value)
        display = f"label {list(model.class_values).index(value) + 1} in napari" if value in model.class_values else None
        said = ", ".join(x for x in (name, display) if x)
        raise LabelError(
            f"the corrections and annotations hold only the class {value}{f' ({said})' if said else ''}: a Retrain on one class teaches the "
            "model to predict it everywhere; paint some pixels of another class too, or accept a well-predicted slice "
            "with Mark slice reviewed"
        )
    check_model_classes(model, data.classes, f"the labels to retrain on ({labels_layer.name!r} and corrections)"
                        if labels_layer is not None else f"prediction layer {prediction.name!r}",
                        "choose the labels layer of this model's classes, or Train a new model on them")
    info = session.info
    names = dict(zip(model.class_values, info.class_names)) if info.class_names else None
    colormap = (list(model.class_values), info.colormap) if info.colormap is not None else None
    note = (
        f"{data.n_corrected} corrected pixels of {prediction.name!r} (about {data.focus_share:.0%} of the patches centred near them"
        + (f", each with an extra loss weight of {data.correction_weight:.2g}" if data.correction_weight else "")
        + f") and {data.n_annotated - data.n_corrected} other annotated pixels"
        + (f" (of it and {labels_layer.name!r})" if labels_layer is not None and labels_layer is not prediction else "")
    )
    unused = [x.name for x in corrected_layers if x is not prediction]
    if unused:  # one prediction layer's corrections per Retrain
        note += f"; the corrections on {', '.join(map(repr, unused))} are not used (select that layer to retrain on it)"
    for misfit in misfits:
        note += f"; {misfit.name!r} {tuple(misfit.data.shape)} is another image's prediction and is not used"
    return TrainJob(data.image, data.labels, None, train_config.replace(ignore_value=data.ignore), model, names, colormap, note,
                    pixel_weights=data.pixel_weights, check=correction_check(image, values, corrected, annotated), pairs=pairs,
                    pixel_size=pixel_size_of(image_layer), data_name=f"image {image_layer.name!r} and the labels to retrain on "
                    + (f"({labels_layer.name!r} and corrections)" if labels_layer is not None else f"(prediction layer {prediction.name!r})"))

