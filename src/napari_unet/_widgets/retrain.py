"""Data for Retrain: original annotations overridden by corrections, with corrections oversampled.

The core samples patch centres uniformly over annotated pixels, so a few hundred corrected pixels
among millions of annotated ones would hardly ever be seen in a short fine-tuning. Retrain
therefore appends copies of the corrected slices in which only the neighbourhood of the
corrections is annotated, so that about ``share`` of the patches land on corrections. Labels are
unchanged (the copies carry the same merged labels); only the sampling is focused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_unet.data import ANNOTATED_FRACTION
from napari_unet.tiff_io import is_lazy

from .layers import training_labels


@dataclass(frozen=True)
class RetrainData:
    image: np.ndarray  # (Z + extra, Y, X); a dask array for a lazy image
    labels: np.ndarray  # class values; ``ignore`` where not annotated
    ignore: int | None
    n_corrected: int  # corrected pixels
    n_annotated: int  # annotated pixels in the original stack
    extra_slices: int  # appended focus slices
    classes: tuple  # the annotated class values, sorted
    focus_share: float  # about this fraction of the training patches centre on the corrections (their focus copies)


def retrain_data(image, values, annotated, corrected, patch_size: int, share: float = 0.5, max_extra: int = 32, name: str = "the labels", context: float = 0.25) -> RetrainData:
    """Merged labels (``values`` where ``annotated``), plus focus copies around ``corrected`` pixels.

    ``image``, ``values``, ``annotated`` and ``corrected`` share the shape (Y, X) or (Z, Y, X). A lazy image
    (dask, memory map) stays lazy, focus copies included: the training worker reads it, not the GUI thread.
    """
    if is_lazy(image):
        import dask.array as da

        image = image if isinstance(image, da.Array) else da.from_array(image, chunks=(1,) * (image.ndim - 2) + tuple(image.shape[-2:]))
        stack, concatenate = da.stack, da.concatenate
    else:
        image, stack, concatenate = np.asarray(image), np.stack, np.concatenate
    values = np.asarray(values)
    flat = image.ndim == 2
    if flat:
        image, values, annotated, corrected = image[None], values[None], annotated[None], corrected[None]
    labels, ignore, classes = training_labels(values, annotated, name)
    n_annotated, n_corrected = int(annotated.sum()), int(corrected.sum())
    slices = [z for z in range(len(image)) if corrected[z].any()]
    labelled_slices = int(annotated.reshape(len(annotated), -1).any(axis=1).sum())
    if not slices or n_corrected == n_annotated or max_extra < 1:
        share = _patch_share(n_corrected, n_annotated, len(slices), labelled_slices)
        return RetrainData(image[0] if flat else image, labels[0] if flat else labels, ignore, n_corrected, n_annotated, 0, tuple(classes), share)
    if ignore is None:  # every pixel annotated: the focus copies need an "unannotated" value
        ignore = _free_value(labels)
    radius = int(patch_size * context)
    windows = [(ndimage.maximum_filter(corrected[z], size=2 * radius + 1) if radius else corrected[z]) & annotated[z] for z in slices]
    in_windows = sum(int(w.sum()) for w in windows)
    wanted = share / (1 - share) * n_annotated  # focus pixels for ~share of the patch centres
    copies = int(np.clip(np.ceil(wanted / max(in_windows, 1)), 1, max(1, max_extra // len(slices))))
    extra_images, extra_labels = [], []
    for z, window in zip(slices[:max_extra], windows[:max_extra]):
        focus = np.where(window, labels[z], ignore).astype(labels.dtype)
        extra_images += [image[z]] * copies
        extra_labels += [focus] * copies
    image = concatenate([image, stack(extra_images)])
    labels = np.concatenate([labels, np.stack(extra_labels)])
    focus_pixels = copies * sum(int(w.sum()) for w in windows[:max_extra])
    share = _patch_share(focus_pixels, n_annotated + focus_pixels, len(extra_images), labelled_slices + len(extra_images))
    return RetrainData(image, labels, ignore, n_corrected, n_annotated, len(extra_images), tuple(classes), share)


def _patch_share(pixels: int, all_pixels: int, slices: int, all_slices: int) -> float:
    """Share of the core's training patches centred on ``pixels`` of ``all_pixels`` annotated ones lying on ``slices``
    of ``all_slices`` annotated slices (:class:`napari_unet.data.PatchSampler`: most on an annotated pixel, the rest
    anywhere on an annotated slice)."""
    return ANNOTATED_FRACTION * pixels / max(all_pixels, 1) + (1 - ANNOTATED_FRACTION) * slices / max(all_slices, 1)


def _free_value(labels: np.ndarray) -> int:
    from napari_unet.labels import choose_ignore_value

    return choose_ignore_value(np.unique(labels).tolist())
