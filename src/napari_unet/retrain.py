"""Retrain: fine-tune a model on a user's painted corrections (the correction loop of the training widget).

- :func:`retrain_data`: the original annotations overridden by corrections, with corrections oversampled and weighted.
  The core samples patch centres uniformly over annotated pixels, so a few hundred corrected pixels among millions of
  annotated ones would hardly ever be seen in a short fine-tuning. Retrain therefore appends copies of the corrected
  slices in which only the neighbourhood of the corrections is annotated, so that about ``share`` of the patches land
  on corrections. Labels are unchanged (the copies carry the same merged labels). Corrected pixels also weigh more in
  the loss (:data:`CORRECTION_WEIGHT`): on ISBI a Retrain then learned 3.8 points more of the corrected pixels in each
  of 14 paired runs, with held-out slices unchanged within noise (BENCHMARKS.md, session 41).
- :func:`retrain_config`: one short epoch from the current weights at a tenth of the default learning rate.
- :func:`correction_check`: the corrections to score the retrained model on, and :func:`score_retrained` scores them
  (with one prediction: the share learnt, and whether its labels there are better than chance).

No napari or Qt here: the widget reads its layers and boxes, then calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy import ndimage

from .config import ModelConfig, TrainConfig, check_patch_size
from .data import ANNOTATED_FRACTION, InputError
from .labels import choose_ignore_value, find_class_values, training_labels
from .tiff_io import is_lazy

#: Retrain's default learning rate (Adam), a tenth of the default preset's. With 1e-3, one 20-step Retrain on ISBI took a
#: model's held-out V_rand from 0.895 to 0.66 on average (0.37 after four), with or without corrections; at 1e-4,
#: 25 Retrains over 7 seeds stayed at 0.84-0.91 like their no-correction controls (0.83-0.91) and learned more painted
#: pixels than them in 23 of 25 pairs (BENCHMARKS.md, "Session 40").
RETRAIN_LEARNING_RATE = 1e-4
#: Retrain's steps, patch side and batch size: one short epoch, seconds on a laptop CPU.
RETRAIN_STEPS, RETRAIN_PATCH_SIZE, RETRAIN_BATCH_SIZE = 20, 128, 2


def retrain_config(train_config: TrainConfig, model_config: ModelConfig, previous: Optional[TrainConfig] = None, *,
                   learning_rate: float = RETRAIN_LEARNING_RATE, steps: int = RETRAIN_STEPS,
                   patch_size: int = RETRAIN_PATCH_SIZE, batch_size: int = RETRAIN_BATCH_SIZE,
                   seed: Optional[int] = None) -> TrainConfig:
    """The TrainConfig of one Retrain of a ``model_config`` network: ``train_config`` (augmentation and loss settings)
    as one epoch of ``steps`` steps from the current weights, every step training (no validation split).

    ``seed``: by default the seed of ``previous`` (the model's own training config) plus one, so that successive
    Retrains draw other patches and each one is reproducible from the model file. :class:`ConfigError` for a patch
    size the network cannot take.
    """
    if seed is None:
        seed = previous.seed + 1 if previous is not None else 1
    train = train_config.replace(learning_rate=learning_rate, epochs=1, steps_per_epoch=steps, patch_size=patch_size,
                                 batch_size=batch_size, val_fraction=0.0, max_minutes=None, seed=seed)
    check_patch_size(train.patch_size, model_config)
    return train


#: Extra loss weight of a corrected pixel, on top of its class weight (about 1) and border weight (up to 10 on thin
#: membranes). The extra weight of all corrections (focus copies included) is at most the count of the other annotated
#: pixels, so that many corrections do not drown the annotations. Measured 0, 4, 8, 16 (BENCHMARKS.md, session 41):
#: the gain on the corrections and the cost on the corrected slice's other pixels both grow with it; 8 takes three
#: quarters of 16's gain at three quarters of its cost.
CORRECTION_WEIGHT = 8.0


@dataclass(frozen=True)
class RetrainData:
    image: np.ndarray  # (Z + extra, Y, X), or (Y, X) for a 2-D image without focus copies; a dask array for a lazy image
    labels: np.ndarray  # class values; ``ignore`` where not annotated
    ignore: int | None
    n_corrected: int  # corrected pixels
    n_annotated: int  # annotated pixels in the original stack
    extra_slices: int  # appended focus slices
    classes: tuple  # the annotated class values, sorted
    focus_share: float  # about this fraction of the training patches centre on the corrections (their focus copies)
    pixel_weights: np.ndarray | None = None  # float16, labels' shape: extra loss weight of corrected pixels (None: none)
    correction_weight: float = 0.0  # that extra weight


def retrain_data(image, values, annotated, corrected, patch_size: int, share: float = 0.5, max_extra: int = 32, name: str = "the labels", context: float = 0.25, correction_weight: float = CORRECTION_WEIGHT, annotated_fraction: float = ANNOTATED_FRACTION) -> RetrainData:
    """Merged labels (``values`` where ``annotated``), plus focus copies around ``corrected`` pixels.

    ``correction_weight`` > 0 adds up to that loss weight to every corrected pixel (:data:`CORRECTION_WEIGHT`): at most
    the other annotated pixels' count over the corrected ones' (focus copies counted), none when the corrections are all
    the annotations. The weights are float16 (exact for such small values; half the memory of float32).

    ``image``, ``values``, ``annotated`` and ``corrected`` share the shape (Y, X) or (Z, Y, X). A lazy image
    (dask, memory map) stays lazy, focus copies included: the training worker reads it, not the GUI thread.
    ``annotated_fraction``: the training config's ``annotated_center_fraction``, for the share of patches estimated.
    """
    shapes = {tuple(np.shape(a)) for a in (image, values, annotated, corrected)}
    if len(shapes) != 1:  # an IndexError deep in the focus copies
        raise InputError(f"image, values, annotated and corrected must share one shape, got {sorted(shapes)}")
    if not (isinstance(patch_size, (int, np.integer)) and patch_size >= 1) or not 0 <= share <= 1:  # also NaN
        raise ValueError(f"patch_size must be a whole number >= 1 and share within 0..1, got {patch_size!r}, {share!r}")
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
        share = _patch_share(n_corrected, n_annotated, len(slices), labelled_slices, annotated_fraction)
        weight = _capped(correction_weight, n_corrected, n_annotated - n_corrected)
        weights = _correction_weights(corrected, weight)
        return RetrainData(image[0] if flat else image, labels[0] if flat else labels, ignore, n_corrected, n_annotated, 0, tuple(classes), share,
                           None if weights is None else weights[0] if flat else weights, weight)
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
    weighted = n_corrected + copies * int(corrected[slices[:max_extra]].sum())  # corrected pixels, focus copies included
    weight = _capped(correction_weight, weighted, n_annotated + focus_pixels - weighted)
    weights = _correction_weights(np.concatenate([corrected, np.repeat(corrected[slices[:max_extra]], copies, axis=0)]), weight)
    share = _patch_share(focus_pixels, n_annotated + focus_pixels, len(extra_images), labelled_slices + len(extra_images), annotated_fraction)
    return RetrainData(image, labels, ignore, n_corrected, n_annotated, len(extra_images), tuple(classes), share, weights, weight)


def _capped(weight: float, weighted: int, others: int) -> float:
    """``weight``, lowered so that ``weighted`` pixels carry at most ``others`` of extra weight (0 without either)."""
    return max(min(weight, others / weighted), 0.0) if weighted else 0.0


def _correction_weights(corrected: np.ndarray, weight: float) -> np.ndarray | None:
    """float16 ``weight`` on corrected pixels, 0 elsewhere; None when ``weight`` is 0."""
    return np.where(corrected, np.float16(weight), np.float16(0)) if weight > 0 else None


def _patch_share(pixels: int, all_pixels: int, slices: int, all_slices: int, annotated_fraction: float) -> float:
    """Share of the training patches drawn around ``pixels`` of ``all_pixels`` annotated ones lying on ``slices`` of
    ``all_slices`` annotated slices (:class:`napari_unet.data.PatchSampler`: ``annotated_fraction`` on an annotated pixel,
    the rest anywhere on an annotated slice)."""
    return annotated_fraction * pixels / max(all_pixels, 1) + (1 - annotated_fraction) * slices / max(all_slices, 1)


def _free_value(labels: np.ndarray) -> int:
    return choose_ignore_value(find_class_values(labels))


#: After a Retrain, the corrections are scored on the new model on at most this many slices and pixels (the slices
#: holding most of them): about a second for 4 slices of 512² on 2 cores, and bounded memory for large slices.
CHECK_SLICES, CHECK_PIXELS = 4, 1 << 23


@dataclass(frozen=True)
class CorrectionCheck:
    """A Retrain's corrections to score the new model on: ``where`` (bool) pixels of ``values`` (class values) on
    ``slices`` of ``image`` (:func:`napari_unet.predict.agreement`); and its ``annotated`` pixels there, to judge
    whether the new model labels them better than chance (:func:`score_retrained`)."""

    image: Any  # (Y, X) or (Z, Y, X), the whole image (context models see neighbouring slices)
    values: np.ndarray  # (len(slices), Y, X), or (Y, X) for a 2-D image
    where: np.ndarray  # like values
    total: int  # corrected pixels in the whole image
    slices: Optional[tuple]  # the slices values and where hold; None for a 2-D image
    annotated: Optional[np.ndarray] = None  # like values: the pixels annotated or corrected (None: not judged)


def correction_check(image, values, corrected, annotated=None) -> Optional[CorrectionCheck]:
    """The corrections to score after a Retrain: the :data:`CHECK_SLICES` slices of ``corrected`` (bool, ``values``'
    shape, (Y, X) or (Z, Y, X)) holding most of them, at most :data:`CHECK_PIXELS` pixels (None without corrections,
    or for one slice larger than that). ``annotated`` (bool, that shape): the pixels annotated (corrections included)."""
    flat = corrected.ndim == 2
    stack = corrected[None] if flat else corrected
    if stack.size == 0:
        return None
    counts = stack.reshape(len(stack), -1).sum(axis=1)
    fits = min(CHECK_SLICES, CHECK_PIXELS // (stack.shape[1] * stack.shape[2]))
    chosen = sorted(int(z) for z in np.argsort(-counts, kind="stable")[:fits] if counts[z] > 0)
    if not chosen:
        return None
    annotated = None if annotated is None else np.asarray(annotated, bool)
    if flat:
        return CorrectionCheck(image, values, corrected, int(counts.sum()), None, annotated)
    return CorrectionCheck(image, values[chosen], corrected[chosen], int(counts.sum()), tuple(chosen),
                           None if annotated is None else annotated[chosen])


@dataclass(frozen=True)
class RetrainScore:
    """:func:`score_retrained`: how much of the corrections the retrained model labels as painted, and whether its
    labels of the corrected slices are of any use (:func:`napari_unet.train.useless_verdict`)."""

    agreement: Any  # napari_unet.predict.Agreement
    one_class: Any = None  # the class value it predicts on every pixel of the corrected slices (None: several)
    kappa: Optional[float] = None  # Cohen's kappa of its labels against the annotations there (None: not judged)
    one_class_note: str = ""  # one class everywhere, or no better than chance: says so and what to try


def score_retrained(model, check: CorrectionCheck, stop=None) -> Optional[RetrainScore]:
    """Score the retrained ``model`` on ``check``'s slices with one prediction (without test-time augmentation, its
    membrane rule applied): the share of the corrected pixels labelled as painted (as
    :func:`napari_unet.predict.agreement`), and whether its labels of the annotated pixels there agree with them better
    than chance (:func:`napari_unet.train.useless_verdict`, named by the slices of the image: the Retrain's own stack
    holds copies of the corrected slices, so the training's check, which would name those, is off for a Retrain).
    None when ``check`` holds no corrected pixel or ``stop()`` ended the prediction."""
    from .predict import agreement_labels
    from .train import labels_verdict, spans

    found = agreement_labels(model, check.image, check.values, check.where, check.slices, stop)
    if found is None:
        return None
    learned, held, labels = found
    if check.annotated is None:
        return RetrainScore(learned)
    flat = check.slices is None
    annotated = np.asarray(check.annotated, bool)
    annotated, values = (annotated[None], np.asarray(check.values)[None]) if flat else (annotated, np.asarray(check.values))
    slices = None if flat else [check.slices[i] for i in held]
    named = "the image" if flat else f"the corrected {'slice' if len(slices) == 1 else 'slices'} {spans(slices)}"
    one_class, kappa, note = labels_verdict(labels, values[held], annotated[held], list(model.class_values), named,
                                            subject="the retrained model")
    return RetrainScore(learned, one_class, kappa, note)


__all__ = [
    "CHECK_PIXELS",
    "CHECK_SLICES",
    "CORRECTION_WEIGHT",
    "CorrectionCheck",
    "RETRAIN_BATCH_SIZE",
    "RETRAIN_LEARNING_RATE",
    "RETRAIN_PATCH_SIZE",
    "RETRAIN_STEPS",
    "RetrainData",
    "RetrainScore",
    "correction_check",
    "retrain_config",
    "retrain_data",
    "score_retrained",
]
