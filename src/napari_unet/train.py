"""Training as a stream of progress events; :func:`train` drains it for scripts and the CLI."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from . import hardware
from ._interrupts import interrupts_deferred
from .config import (
    MIN_PATCH_SIZE, ConfigError, ModelConfig, TrainConfig, check_patch_size, preset, resolve_augment_noise,
    resolve_merge_levels, to_json,
)
from .data import (
    Augmentation,
    InputError,
    PatchSampler,
    border_weights,
    centre_tiles,
    check_image,
    class_weights,
    downscale_image,
    downscale_labels,
    intensity_references,
    normalize,
    normalize_window,
    prefetch,
    in_memory,
    read_annotated_slices,
    slices_to_read,
)
from .labels import LAYERED_MIN_COLUMNS, check_class_count, check_trainable, count_classes, layer_order, layering_undecided, to_indices
from .model import (
    TRAINING_BASE_BYTES,
    TRAINING_BYTES_PER_PARAMETER,
    BatchNormStatistics,
    build_unet,
    float32_loss,
    import_keras,
    masked_loss,
    parameter_count,
    recompute_batch_norm_statistics,
    training_memory_bytes,
)
from .metrics import dice_per_class, pixel_error
from .model_io import UNetModel, as_model
from .postprocess import candidate_closings, find_boundary_class, tiled_boundary_mask, tune_boundary_rule
from .predict import PredictionError, effective_boundary_rule, predict


#: Side of the unaugmented training tiles the batch-norm statistics are recomputed on (as predict's tiles).
BATCH_NORM_TILE = 512

#: At most this many such tiles (of evenly chosen training slices): 4 scored as 12 on 18 ISBI networks (V_rand
#: +0.0014, V_info +0.0005 on the unseen slices, ``isbi_rescore.py --batch-norm-tiles``) in a third of the time
#: (BENCHMARKS.md, session 21).
BATCH_NORM_TILES = 4

#: Patch pixels (steps x batch x patch side²) a run must plan before ``jit_compile="auto"`` compiles its training
#: step with XLA. On a 2-core AVX2 CPU compiling the default network took 12-13 s more; its steps at 4 x 256² were
#: then 1.22x faster, repaying that after 30 steps, while at 2 x 128² they were not faster at all: a default Retrain
#: (20 such steps) took 28.6 s with XLA and 16.3 s without (``benchmarks/bench_xla_training.py``, BENCHMARKS.md,
#: session 20). Twice the break-even at 256²:
XLA_MIN_TRAINING_PIXELS = 60 * 4 * 256 * 256

#: Time budgets (minutes) too short to spend ~13 s of them compiling.
XLA_MIN_TRAINING_MINUTES = 2.0


def resolve_training_jit_compile(train_config: TrainConfig, mixed_precision: bool) -> bool:
    """``train_config.jit_compile`` resolved for a run: ``"auto"`` compiles with XLA where the CPU gains from it
    (:func:`napari_unet.hardware.resolve_jit_compile`) and the run is long enough to repay the compile time."""
    if not hardware.resolve_jit_compile(train_config.jit_compile, mixed_precision):
        return False
    if train_config.jit_compile is True:
        return True
    planned = train_config.epochs * train_config.steps_per_epoch * train_config.batch_size * train_config.patch_size**2
    budget = train_config.max_minutes
    return planned >= XLA_MIN_TRAINING_PIXELS and (budget is None or budget >= XLA_MIN_TRAINING_MINUTES)


def recompute_batch_norm(model: UNetModel, image, slices, max_tiles: Optional[int] = None) -> None:
    """Recompute ``model``'s batch-norm statistics on unaugmented centre tiles of ``slices`` (as training ends),
    one tile of each of at most ``max_tiles`` (default :data:`BATCH_NORM_TILES`) evenly chosen slices.

    ``image``: (Z, Y, X) raw image stack (any real dtype), as given to ``predict``; it is normalised here as the
    model normalises, then downscaled and given context slices as the network sees it. Changes the model's
    moving statistics only; ``image`` is not modified.
    """
    stack = check_image(image)  # NaN would become the statistics: every pixel one class, and a file load_model refuses
    planes = [int(z) for z in slices]
    if not planes or min(planes) < 0 or max(planes) >= len(stack):
        raise InputError(f"slices must be a non-empty list of slice indices of the {len(stack)}-slice image, got {planes}")
    images = normalize(stack, model.percentiles, model.config.local_contrast_sigma)
    slices = planes
    recompute_batch_norm_statistics(model.keras_model, _batch_norm_tiles(model.config, images, slices, max_tiles))


def _batch_norm_tiles(config: ModelConfig, images, slices, max_tiles: Optional[int] = None) -> list:
    """The network inputs :func:`recompute_batch_norm` uses, from the (Z, Y, X) float32 normalised ``images``."""
    network_images = downscale_image(images, config.downscale)
    return centre_tiles(network_images, slices, BATCH_NORM_TILE, config.size_multiple, config.context_slices, max_tiles or BATCH_NORM_TILES)


@dataclass(frozen=True)
class SettingNote:
    """A sentence for the user on what the data made a setting (a :class:`TrainConfig` field) choose."""

    setting: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class TrainingStarted:
    model: UNetModel  # the model being trained (weights change while training runs; at the end it holds the final ones)
    total_steps: int
    epochs: int
    steps_per_epoch: int
    train_slices: list
    val_slices: list
    class_values: list
    val_column: Optional[int] = None  # one image: validation on its columns from this one on (None: no such validation)
    notes: tuple = ()  # SettingNote: what the data made settings choose ("auto" rotations, a patch fitted to the slices)
    val_window: Optional[tuple] = None  # (y0, y1, x0, x1): validation scores this window of its slices (None: all of them)
    annotated_pixels: Optional[int] = None  # of the labels, training and validation (None: not counted)

    @property
    def validation(self) -> str:
        """Where validation scores, for messages: "validating on slices [16, 17, 18, 19]", "no validation"."""
        if self.val_slices:
            where = f"validating on slices {self.val_slices}"
        elif self.val_column is not None:
            where = f"validating on columns {self.val_column} and up"
        else:
            return "no validation"
        if self.val_window is None:
            return where
        y0, y1, x0, x1 = self.val_window
        return (f"{where} (a window of {y1 - y0} x {x1 - x0} pixels, rows {y0}-{y1 - 1} and columns {x0}-{x1 - 1}: "
                f"validation scores about {VALIDATION_PIXELS / 1e6:.1f} million pixels at most)")


@dataclass(frozen=True)
class TrainingStep:
    epoch: int
    step: int  # global step, 1-based
    total_steps: int
    loss: float
    learning_rate: float
    elapsed: float
    eta: Optional[float]  # seconds left; None while unknown (after the first step of a run without a time budget)


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss over the epoch
    val_loss: Optional[float]
    val_metrics: dict  # pixel_error and dice (mean over classes) on annotated validation pixels
    is_best: bool
    elapsed: float
    eta: Optional[float]  # None while unknown (one step, no time budget)


@dataclass(frozen=True)
class TrainingFinishing:
    """The training steps are over (``reason`` as in :class:`TrainingFinished`); the model is being finished: weights
    chosen or averaged, batch-norm statistics recomputed, the membrane rule tuned on the validation slices. Seconds
    that a stop request does not shorten."""

    reason: str
    steps: int
    tunes_rule: bool  # the membrane rule is chosen on the validation slices (predicts them again)


@dataclass(frozen=True)
class TrainingFinished:
    model: UNetModel  # weights of the best validation epoch, or the mean of the last averaged_epochs epochs
    reason: str  # "completed", "stopped", "time budget" or "diverged" (the model holds weights from before it)
    best_epoch: int
    history: list = field(default_factory=list)
    boundary_v_rand: Optional[float] = None  # validation V_rand of model.boundary_rule, if one was tuned
    averaged_epochs: int = 0  # > 0: the model holds the mean weights of this many last epochs
    steps: int = 0  # training steps run; 0: stopped before the first, the model is untrained (or ``init``'s weights)
    # reason "diverged": what went wrong and when ("the loss was nan at step 57"); steps counts the steps run (not one
    # whose loss was not finite; weights or validation probabilities found not finite at an epoch's end count its steps)
    divergence: str = ""
    # The class value the model predicts on every pixel it was checked on (:data:`ONE_CLASS_HINT`) although the
    # annotations there hold several classes: a useless model, whatever its scores (None: it predicts several, or the
    # check had one class annotated). one_class_note says so, where, and what to try; also for labels that agree with
    # the annotations no better than chance (Cohen's kappa below :data:`CHANCE_KAPPA`), one_class then None.
    one_class: Any = None
    one_class_note: str = ""
    # Cohen's kappa of the labels checked against their annotations (None: not checked: train_events(...,
    # check_one_class=False), no step, one class annotated there; a useful model's check may stop at its first plane)
    kappa: Optional[float] = None
    # the kept epoch (best_epoch) was chosen by its training loss in a run with validation (it diverged before any
    # epoch was validated, val_every > 1)
    by_training_loss: bool = False

    @property
    def untuned_rule_note(self) -> Optional[str]:
        """Why a model with a thin boundary class (membranes) got no membrane rule, or None."""
        if self.model.boundary_value is None or self.model.boundary_rule is not None or self.steps == 0:
            return None
        return ("no membrane rule was chosen: it is chosen on fully annotated validation slices that hold both membranes "
                "and cells, and this run had none (sparse labels, no validation, or validation of one class), so "
                "predictions are the most probable class, whose membranes can have gaps that merge cells; closing "
                "membrane gaps at prediction closes them")

    @property
    def kept(self) -> str:
        """Which weights the model holds, for messages: "best epoch 12", "best epoch 3 by training loss" (a validated
        run that diverged before validating an epoch), "mean of the last 7 epochs" or ""."""
        if self.averaged_epochs:
            return f"mean of the last {self.averaged_epochs} epochs"
        if not self.best_epoch:
            return ""
        return f"best epoch {self.best_epoch}" + (" by training loss" if self.by_training_loss else "")


TrainingEvent = Union[TrainingStarted, TrainingStep, EpochEnd, TrainingFinishing, TrainingFinished]


#: The end of the message of :class:`TrainingDiverged` (callers add which setting).
DIVERGED_HINT = "lower the learning rate"


class TrainingDiverged(FloatingPointError):
    """Training diverged before it kept any weights: there is no model. Callers tell it by its type, not its message,
    and name the setting to lower. ``divergence``: what went wrong and when, as :attr:`TrainingFinished.divergence`."""

    def __init__(self, divergence: str):
        super().__init__(f"training diverged: {divergence}, before any epoch's weights were kept; {DIVERGED_HINT}")
        self.divergence = divergence


#: The end of :attr:`TrainingFinished.one_class_note` (callers add which settings). The finished model is checked on a
#: window of at most :data:`BATCH_NORM_TILE` squared pixels of each of up to :data:`BATCH_NORM_TILES` slices
#: (:data:`ONE_CLASS_CHECK_PIXELS` at most) of its validation, else of the slices it trained on (an untrained-looking
#: model fails on the very pixels it learnt from), without test-time augmentation, its membrane rule applied as
#: ``predict`` applies it. Flagged: one class predicted on every pixel there, or labels that agree with the annotations
#: there no better than chance (:data:`CHANCE_KAPPA`). A learning rate of 0.99 trained models of cells everywhere, and
#: others whose membrane rule drew lines at random (Cohen's kappa about 0), exit 0 and a validation Dice of 0 for
#: membranes the only sign. Pixels annotated with one class alone where it is checked are no sign: no flag then.
ONE_CLASS_HINT = "try a lower learning rate, more annotations of every class, or longer training"

#: Pixels (at most) that the one-class check labels: :data:`BATCH_NORM_TILE` squared of each of up to
#: :data:`BATCH_NORM_TILES` slices (the membrane rule took 8.1 s on a whole 2048² validation plane, 0.3 s on 512²).
ONE_CLASS_CHECK_PIXELS = BATCH_NORM_TILES * BATCH_NORM_TILE**2

#: Cohen's kappa of a model's labels against the annotations at or below which they agree no better than chance
#: (:data:`ONE_CLASS_HINT`). Measured (session 62) with the default preset on synthetic EM stacks: learning rate 0.99,
#: 10 steps, 5 seeds with and without validation: -0.0075 to 0.0 (models of one class, or a membrane rule drawing
#: lines at random; V_rand 0.02-0.07); the same at 1e-3: 0.57-0.72; 1 to 10 steps: 0.35-0.72; demo-like budgets of
#: 15 and 30 s: 0.65-0.79; the tests' tiny network: 0.72-0.77.
CHANCE_KAPPA = 0.05

#: Annotated pixels of a class, where the model is checked, that the chance verdict (:data:`CHANCE_KAPPA`) needs of two
#: classes at least; with fewer, only one class everywhere is flagged. The kappa of a few pixels is noise (2 annotated
#: pixels, 1 labelled right: kappa 0; a sparse scribble or a few painted corrections): with n pixels of each of two
#: classes, its standard error at chance is about 1/sqrt(2n), 0.05 for 200, so that a model of kappa 0.35 (the weakest
#: measured for useful ones) falls to 0.05 only beyond 5 standard errors; a stroke of a 5-pixel brush holds 200 pixels
#: once 40 long.
CHANCE_MIN_PIXELS = 200

#: The check stops after a plane once the kappa of the planes so far reaches this: clearly better than chance.
_CLEARLY_BETTER_KAPPA = 0.25


#: A class of fewer than this share of the annotated pixels is named when training starts: napari's own writer saves
#: erased pixels as 0, a class of 97 pixels beside 5.2 million (a third class: no membrane rule, no cells).
RARE_CLASS_SHARE = 1e-4


#: Fewer annotated pixels than this (a 32 x 32 square) are named when training starts: 32-100 painted pixels trained
#: a model without a word.
FEW_ANNOTATED_PIXELS = 1024


#: A class is named as a likely artefact of a lossy or resampled export of a mask (JPEG, scaling with interpolation)
#: when it holds under :data:`FRINGE_CLASS_SHARE` of the annotated pixels, at least :data:`FRINGE_TOUCHING` of its
#: pixels touch another class (no interior of its own: 1.00 for such artefacts, 0.19-0.64 for small real classes; a
#: JPEG's 254 held 9 % of a synthetic EM mask), its value lies between those of the other classes, and the classes
#: spread over a range much wider than they are many (0/255 masks, not layers 0-9 or instances 1-64). 2 % of a 0/255
#: mask off by 1-3 trained an 8-class model, pixel error 0.86 instead of 0.11, without a word. Such exports leave
#: several of these classes; one alone is a mask's thin boundary class (0 / 128 boundaries / 255), not named.
#: A JPEG of a 0/1 or 0/1/2 mask is not found: its classes do not spread (:data:`FRINGE_SPREAD`).
FRINGE_CLASS_SHARE, FRINGE_TOUCHING, FRINGE_SPREAD = 0.1, 0.95, 3


def _touching_fractions(indices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float64 (n_classes,): the share of each class's pixels in (..., Y, X) ``indices`` that have a 4-neighbour of
    another annotated class (negative indices are not annotated), plane by plane; ``counts``: each class's pixels
    (:func:`napari_unet.labels.count_classes`)."""
    touching = np.zeros(len(counts), np.int64)
    for plane in indices.reshape((-1,) + indices.shape[-2:]):
        annotated = plane >= 0
        border = np.zeros(plane.shape, bool)
        for first, second in ((np.s_[1:], np.s_[:-1]), (np.s_[:, 1:], np.s_[:, :-1])):  # below, right of each pixel
            differ = (plane[first] != plane[second]) & annotated[first] & annotated[second]
            border[first] |= differ
            border[second] |= differ
        touching += np.bincount(plane[border], minlength=len(counts))[:len(counts)]
    return touching / np.maximum(counts, 1)


def _and(words: list) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def _class_notes(indices: np.ndarray, class_values: list) -> tuple:
    """:class:`SettingNote` objects on the classes of (Z, Y, X) ``indices``: fringes of a lossy or resampled mask
    (:data:`FRINGE_CLASS_SHARE`), fewer annotated pixels than :data:`FEW_ANNOTATED_PIXELS`, and classes that hold fewer
    than :data:`RARE_CLASS_SHARE` of the annotated pixels."""
    counts = count_classes(indices, len(class_values))
    total = int(counts.sum())
    values = [float(v) for v in class_values]
    fringe = []
    if len(values) >= 3 and max(values) - min(values) > FRINGE_SPREAD * len(values):
        touching = _touching_fractions(indices, counts)
        present = [k for k, n in enumerate(counts) if n > 0]
        thin = [k for k in present if counts[k] < FRINGE_CLASS_SHARE * total and touching[k] >= FRINGE_TOUCHING]
        # between the classes with an interior or many pixels, and the lowest and highest class (a mask's thin
        # membranes of 0 touch the cells all along too; a JPEG of a 100/200 mask overshoots to 91 and 208)
        solid = [values[k] for k in present if k not in thin]
        span = solid if len(solid) >= 2 else [values[k] for k in present]
        fringe = [k for k in thin if min(span) < values[k] < max(span)]
        if len(fringe) < 2:  # one thin class between two others is a mask's boundary class (0 / 128 / 255 nuclei)
            fringe = []
    notes = ()
    if fringe:
        shown = [str(class_values[k]) for k in fringe[:8]] + ([f"{len(fringe) - 8} more"] if len(fringe) > 8 else [])
        large = [str(v) for j, v in enumerate(class_values) if j not in fringe and counts[j] > 0]
        notes = (SettingNote("labels", f"classes {_and(shown)} ({format_share(counts[fringe].sum() / total)} of the annotated pixels) "
                             f"lie only along the borders of the classes {_and(large)}, with values between theirs, as a "
                             "JPEG or a resized (interpolated) mask leaves them; each is learnt as a class of its own: if "
                             "so, give those pixels the value of the class they border (or save the mask without "
                             "compression or interpolation) and train again"),)
    if 0 < total < FEW_ANNOTATED_PIXELS:
        each = _and([f"{int(n)} of class {class_values[k]}" for k, n in enumerate(counts) if n > 0])
        more = "strokes over more objects of each class teach it more" if total < indices.size else "more or larger images teach it more"
        notes += (SettingNote("labels", f"only {total} pixels are annotated ({each}): the network learns from these alone; {more}"),)
    return notes + tuple(
        SettingNote("ignore_value", f"class {class_values[k]} holds only {int(n)} of the {total} annotated pixels "
                    f"({format_share(n / total)} of them); if it marks pixels that are not annotated (napari's own writer saves "
                    "erased pixels as 0), train with it as not annotated")
        for k, n in enumerate(counts) if 0 < n < RARE_CLASS_SHARE * total and k not in fringe
    )


def spans(numbers: list) -> str:
    """[0, 1, 2, 4, 6, 7] as "0-2, 4 and 6-7"."""
    parts, start = [], None
    for k, n in enumerate(numbers):
        start = n if start is None else start
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            parts.append(f"{start}-{n}" if n > start else f"{n}")
            start = None
    return _and(parts)


def _uniform_slice_notes(indices: np.ndarray, class_values: list, slice_numbers: list) -> tuple:
    """A :class:`SettingNote` per class that fills whole slices of (Z, Y, X) ``indices`` (every pixel annotated, all
    this class) in a stack of several slices: slices left blank in a mask (0 in a 0/255 mask, napari's own writer's 0
    in a 0/1/2 one) were learnt, and validated on, as all of one class without a word."""
    if len(indices) < 2:
        return ()
    filled = {}
    for z, plane in enumerate(indices):
        low, high = plane.min(), plane.max()
        if low == high and low >= 0:
            filled.setdefault(int(low), []).append(slice_numbers[z])
    return tuple(
        SettingNote("ignore_value", f"{'slice' if len(numbers) == 1 else 'slices'} {spans(numbers)} of the labels "
                    f"{'holds' if len(numbers) == 1 else 'hold'} only the value {class_values[k]}, on every pixel: "
                    f"{'it is' if len(numbers) == 1 else 'each is'} learnt as all class {class_values[k]}; if the value "
                    "marks slices that are not annotated, train with it as not annotated")
        for k, numbers in sorted(filled.items())
    )


def _held_out_class_notes(indices: np.ndarray, train_indices: np.ndarray, class_values: list, val_slices: list,
                          val_column: Optional[int]) -> tuple:
    """A :class:`SettingNote` (setting ``val_fraction``) naming the classes of (Z, Y, X) ``indices`` annotated only in
    the part held out for validation (``val_slices``, the stack's slice numbers, or one image's columns from
    ``val_column`` on), not in ``train_indices``: the network never learns them. A class painted on the last slice alone
    trained a model that never predicts it, without a word."""
    every, trained = count_classes(indices, len(class_values)), count_classes(train_indices, len(class_values))
    unseen = [class_values[k] for k in range(len(class_values)) if every[k] and not trained[k]]
    if not unseen:
        return ()
    one = len(unseen) == 1
    them = "it" if one else "them"
    if val_slices:
        where = f"the validation {'slice' if len(val_slices) == 1 else 'slices'} {spans(val_slices)}"
        remedy = f"annotate {them} on other slices too, or train on every slice with a validation share of 0"
    else:
        where = f"the image's validation columns ({val_column} and up)"
        remedy = (f"annotate {them} in the columns before {val_column} too, or train on the whole image with a validation "
                  "share of 0")
    return (SettingNote("val_fraction", f"{'class' if one else 'classes'} {_and([str(v) for v in unseen])} "
                        f"{'is' if one else 'are'} annotated only in {where}, which {'is' if len(val_slices) == 1 else 'are'} "
                        f"held out, not trained on: the network never learns {them}; {remedy}"),)


def _pixel_size_notes(init: UNetModel, pixel_size) -> tuple:
    """A :class:`SettingNote` (setting ``pixel_size``) when a fine-tuning's image has other pixels than ``init``'s
    training image (by more than :data:`napari_unet.predict.PIXEL_SIZE_RATIO` along an axis): the model then records
    the new size, and notes the images of its first training."""
    from .predict import pixel_size_note

    if pixel_size_note(init, pixel_size) is None:  # the sizes agree, or one is unknown
        return ()
    return (SettingNote("pixel_size", f"the image's pixels are {pixel_size[0]:.4g} x {pixel_size[1]:.4g} µm (Y x X), the "
                        f"model was trained on {init.pixel_size[0]:.4g} x {init.pixel_size[1]:.4g} µm: the fine-tuned "
                        "model records the new size, and predicting images of the old size will say so"),)


def _resolve_rotations(value, layered: bool, init, pockets=(), undecided: bool = False) -> tuple[bool, tuple]:
    """``TrainConfig.augment_rotations`` as a bool, and a note when "auto" turned them off (naming the ``pockets``,
    class values left out of the layer order) or kept them on for labels whose layering was ``undecided``.

    "auto": as the fine-tuned ``init`` model was trained (its invariance stays), else off for ``layered`` labels
    (:func:`napari_unet.labels.layer_order`), else on.
    """
    if value != "auto":
        return bool(value), ()
    recorded = getattr(init.train_config, "augment_rotations", None) if init is not None and init.train_config else None
    if isinstance(recorded, bool):  # announced when that model was trained
        return recorded, ()
    if not layered and undecided:
        return True, (SettingNote("augment_rotations", "90-degree rotations on: too few annotated columns hold two "
                                  f"classes or more (fewer than {LAYERED_MIN_COLUMNS}) to tell whether the labels are "
                                  "layered top to bottom; if they are (as OCT layers), turn rotations off"),)
    if not layered:
        return True, ()
    inside = (f"; {', '.join(map(str, pockets))} {'is a pocket' if len(pockets) == 1 else 'are pockets'} inside them (in "
              "few columns: left out of the layer order, labelled where most probable)") if pockets else ""
    return False, (SettingNote("augment_rotations", f"no 90-degree rotations: the labels are layered top to bottom (as OCT "
                               f"layers{inside}), so the network must learn which way is up"),)


def fit_patch_size(patch_size: int, shape: tuple, model_config: ModelConfig) -> int:
    """``patch_size`` (network pixels), or less for (Y, X) slices of ``shape`` (image pixels) smaller than a patch: the
    smallest multiple of ``model_config.size_multiple`` that covers them (a larger patch only mirrors them, at many times
    the compute), and no smaller than :data:`napari_unet.config.MIN_PATCH_SIZE` (5 x 5 slices fitted a depth-2
    network's patch to 8, which TrainConfig refuses: "--patch-size must be 16..4096, got 8", an option never given)."""
    side = max(-(-int(n) // model_config.downscale) for n in shape)
    multiple = model_config.size_multiple
    return min(patch_size, -(-max(side, MIN_PATCH_SIZE) // multiple) * multiple)


#: Validation (every epoch, the membrane rule, the command's scores) predicts at most about this many pixels: at most
#: ``VALIDATION_PIXELS // VALIDATION_MIN_SIDE²`` slices of large slices (16 of ISBI's 512²; the others train), and of
#: larger slices a window (:func:`validation_window`). Four times ISBI's validation (4 x 512²); on 20 x 2048² slices,
#: validating whole slices took 22 s an epoch and 68 s for the membrane rule, and 1.5 GB of memory.
VALIDATION_PIXELS = 4 * 2**20
#: A validation window is no narrower than this (or its slice), so that membranes and layers keep their context and
#: few validation slices of large slices lie unused outside their windows (4 slices of 2048² or more).
VALIDATION_MIN_SIDE = 1024

#: Windows are placed on this grid (pixels) when searching for the one holding the most annotated pixels.
_WINDOW_STEP = 16


def split_validation(annotated_slices: list, val_fraction: float, max_val_slices: Optional[int] = None) -> tuple[list, list]:
    """Whole-slice split: the last ``val_fraction`` of annotated slices (at most ``max_val_slices``) validate, the
    rest train.

    With one annotated slice (a single 2-D image), both lists hold it and the caller splits by columns.
    """
    if val_fraction <= 0 or len(annotated_slices) < 2:
        return list(annotated_slices), []
    n_val = min(max(1, round(len(annotated_slices) * val_fraction)), len(annotated_slices) - 1)
    if max_val_slices is not None:
        n_val = min(n_val, max(1, max_val_slices))
    return list(annotated_slices[:-n_val]), list(annotated_slices[-n_val:])


def validation_window(annotated, max_pixels: int = VALIDATION_PIXELS, min_side: int = VALIDATION_MIN_SIDE) -> Optional[tuple]:
    """``(y0, y1, x0, x1)``: the window of (Z, Y, X) bool ``annotated`` (validation pixels) that validation scores,
    or None for whole planes, which hold at most ``max_pixels``.

    The window holds at most ``max_pixels`` over all planes, unless that would make a side shorter than ``min_side``
    (each side is at least ``min_side`` or the plane's own). Of the windows of that size (starting on a grid of 16
    pixels) it is the one wholly holding the most 16 x 16 blocks' annotated pixels (blocks at the plane's edge count
    for windows reaching the edge), the most central of those: about the plane's centre for dense labels.
    """
    n_planes, height, width = annotated.shape
    if n_planes * height * width <= max_pixels:
        return None
    area = max(1, max_pixels // n_planes)
    window_y = min(height, max(math.isqrt(area), min_side))
    window_x = min(width, max(area // window_y, min_side))
    window_y = min(height, max(area // window_x, min_side))  # a narrow plane gives its rows the rest
    from skimage.measure import block_reduce

    step = _WINDOW_STEP  # annotated pixels counted in blocks of step x step: a table of a 16384² image stays small
    per_block = block_reduce(annotated, (1, step, step), np.sum).sum(axis=0)  # (rows, columns), edge blocks padded
    rows, columns = per_block.shape
    blocks = np.pad(per_block, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)  # summed-area table of the blocks
    y_starts = np.unique(np.r_[np.arange(0, height - window_y + 1, step), height - window_y, (height - window_y) // 2])
    x_starts = np.unique(np.r_[np.arange(0, width - window_x + 1, step), width - window_x, (width - window_x) // 2])
    top, left = -(-y_starts[:, None] // step), -(-x_starts[None, :] // step)  # blocks wholly inside the window
    bottom, right = (y_starts[:, None] + window_y) // step, (x_starts[None, :] + window_x) // step
    bottom = np.where(y_starts[:, None] + window_y >= height, rows, bottom)  # a window at the edge: the partial block too
    right = np.where(x_starts[None, :] + window_x >= width, columns, right)
    inside = blocks[bottom, right] - blocks[top, right] - blocks[bottom, left] + blocks[top, left]
    y, x = y_starts[:, None], x_starts[None, :]
    off_centre = np.abs(y - (height - window_y) // 2) + np.abs(x - (width - window_x) // 2)
    best = np.flatnonzero(inside.ravel() == inside.max())
    pick = best[np.argmin(off_centre.ravel()[best])]
    y0, x0 = int(y_starts[pick // len(x_starts)]), int(x_starts[pick % len(x_starts)])
    if annotated.any() and not annotated[:, y0 : y0 + window_y, x0 : x0 + window_x].any():
        return None  # not expected (the counts say otherwise), but validation must never lose its annotations
    return y0, y0 + window_y, x0, x0 + window_x


def validation_column(width: int, val_fraction: float, size_multiple: int) -> int:
    """First column of the validation part when training on one image of ``width`` columns (split by columns).

    The validation part keeps at least ``max(size_multiple, 16)`` columns, however small ``val_fraction`` is.
    """
    cut = min(int(round(width * (1 - val_fraction))), width - max(size_multiple, 16))
    return max(cut - cut % size_multiple, 0)


def _resolve_model_config(
    model_config: Optional[ModelConfig], n_classes: int, init: Optional[UNetModel], train_config: TrainConfig
) -> ModelConfig:
    if init is not None:
        return init.config
    config = model_config or preset("default").model_for(train_config)
    if config.n_classes != n_classes:
        if config.head == "sigmoid" and n_classes != 2:
            raise ConfigError(
                f"this model has a sigmoid head for two classes but the labels have {n_classes} classes; "
                "use the default preset"
            )
        config = replace(config, n_classes=n_classes)
    return config


def _intensity_references(image, read, percentiles) -> list:
    """:func:`intensity_references` (of all pixels, above the floor) of the whole (Z, Y, X) ``image`` (up to 8 evenly
    spaced slices are read), as for a stack training read whole, so that reading only its annotated slices (``read``,
    checked) leaves the model file as it was; of ``read`` when those slices give no finite profile (NaN in a slice
    training never read)."""
    if len(read) != (np.shape(image)[0] if np.ndim(image) == 3 else 1):
        with np.errstate(invalid="ignore"):
            references = intensity_references(image, percentiles)
        if all(np.all(np.isfinite(profile)) and np.isfinite(spread) for profile, spread in references):
            return references
    return intensity_references(read, percentiles)


def _validation_scores(model: UNetModel, images, slices, indices, loss_weights) -> tuple[float, dict]:
    """Weighted cross-entropy, pixel error and mean Dice on the annotated pixels of ``slices`` of ``images``."""
    # The training network itself: an inference copy with batch norm folded in would be built and traced anew
    # each epoch (2.0-2.3 s instead of 1.3-1.6 s for 3 ISBI slices on a 2-core CPU, same loss).
    # no membrane rule or layer order: scored on probabilities; images are windows of whole normalised planes
    probabilities = predict(model, images, return_probabilities=True, slices=slices, tta=False, folded=False,
                            close_boundaries=False, normalized=True).probabilities
    annotated = indices >= 0
    if not annotated.any():
        return float("nan"), {}
    truth = indices[annotated]
    probs = probabilities[annotated]
    picked = np.clip(probs[np.arange(len(truth)), truth], 1e-7, 1.0)
    weights = loss_weights[truth]
    val_loss = float(np.sum(-np.log(picked) * weights) / np.sum(weights))
    predicted = np.argmax(probs, axis=-1)
    dice = dice_per_class(predicted, truth, np.union1d(predicted, truth))  # classes seen in either
    return val_loss, {"pixel_error": pixel_error(predicted, truth), "dice": float(np.mean(list(dice.values())))}


def _plane_labels(plane: np.ndarray, boundary_index: Optional[int], rule: Optional[dict]) -> np.ndarray:
    """Class indices of one (Y, X, n_classes) plane of probabilities as ``predict`` labels it: the most probable class,
    or with a ``rule`` (:func:`napari_unet.postprocess.boundary_mask`'s keywords) membrane class ``boundary_index`` where
    the rule says so and the most probable other class elsewhere."""
    if rule is None or boundary_index is None:
        return np.argmax(plane, axis=-1)
    membrane = tiled_boundary_mask(np.ascontiguousarray(plane[..., boundary_index]), **rule)
    others = plane.copy()
    others[..., boundary_index] = -np.inf
    return np.where(membrane, boundary_index, np.argmax(others, axis=-1))


def confusion_counts(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts of the annotated pixels (``truth`` >= 0; class indices) by annotated class
    (rows) and ``predicted`` class index (columns)."""
    mask = truth >= 0
    pairs = truth[mask].astype(np.int64) * n_classes + predicted[mask].astype(np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def cohen_kappa(counts: np.ndarray) -> Optional[float]:
    """Cohen's kappa of :func:`confusion_counts`: 1 for labels equal to the annotations, about 0 for labels that agree
    with them no better than chance (one class everywhere: 0), negative for worse; None without pixels or when
    the annotations and the labels are one and the same class alone."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total == 0:
        return None
    observed = np.trace(counts) / total
    expected = float(np.sum(counts.sum(axis=1) * counts.sum(axis=0))) / total**2
    return None if expected >= 1 else float((observed - expected) / (1 - expected))


def _check_labels(planes, truth: np.ndarray, n_classes: int, early_stop: bool = True) -> tuple:
    """``(only, counts)`` of the label planes ``planes`` (an iterable of (Y, X) class indices, or of arrays of
    probabilities turned into them) against the (n, Y, X) class indices ``truth`` (-1: not annotated): the class
    index every pixel holds (else None), and :func:`confusion_counts`. With ``early_stop``, ends after the first
    planes whose kappa is clearly better than chance (a useful model: its first plane of the rule)."""
    only, counts = None, np.zeros((n_classes, n_classes), np.int64)
    for k, predicted in enumerate(planes):
        if k == 0:
            only = int(predicted.flat[0])
        if only is not None and (predicted != only).any():
            only = None
        counts += confusion_counts(predicted, truth[k], n_classes)
        kappa = cohen_kappa(counts)
        if early_stop and only is None and kappa is not None and kappa >= _CLEARLY_BETTER_KAPPA:
            break
    return only, counts


def useless_verdict(only: Optional[int], counts: np.ndarray, class_values: list, where: str, subject: str = "the model") -> tuple:
    """``(one_class, kappa, note)`` of a model's labels checked on ``where`` (for the note: "the validation slice 5"):
    :func:`_check_labels`' ``only`` and ``counts`` (class indices of ``class_values``). ``note`` is empty unless the
    annotations there hold two classes or more and the labels are one class everywhere (``one_class`` its value) or
    agree with them no better than chance (kappa <= :data:`CHANCE_KAPPA`, judged only when two classes or more hold
    :data:`CHANCE_MIN_PIXELS` annotated pixels each). ``kappa`` is None with one class annotated."""
    annotated = [class_values[k] for k in range(len(counts)) if counts[k].sum()]
    if len(annotated) < 2:  # one class annotated here: predicting it alone may be right
        return None, None, ""
    kappa = cohen_kappa(counts)
    classes = _and([str(v) for v in annotated])
    if only is not None:
        return class_values[only], kappa, (
            f"{subject} predicts class {class_values[only]} on every pixel of {where}, where classes {classes} are "
            f"annotated: it has not learnt to tell them apart, whatever its scores; {ONE_CLASS_HINT}")
    enough = np.count_nonzero(np.asarray(counts).sum(axis=1) >= CHANCE_MIN_PIXELS) >= 2  # else kappa is noise
    if enough and kappa is not None and kappa <= CHANCE_KAPPA:
        return None, kappa, (
            f"{subject}'s labels of {where} agree with the annotations there (classes {classes}) no better than chance "
            f"(Cohen's kappa {round(kappa, 2) + 0.0:.2f}): it has not learnt to tell the classes apart, whatever its scores; {ONE_CLASS_HINT}")
    return None, kappa, ""


def labels_verdict(labels: np.ndarray, values: np.ndarray, annotated: np.ndarray, class_values: list, where: str,
                   subject: str = "the model") -> tuple:
    """:func:`useless_verdict` of (n, Y, X) ``labels`` (class values, as ``predict`` gives them) against the
    ``annotated`` (bool, that shape) pixels of ``values`` (class values, that shape)."""
    truth = np.full(np.shape(annotated), -1, np.int8)
    predicted = np.full(np.shape(labels), -1, np.int8)
    for k, value in enumerate(class_values):
        truth[annotated & (values == value)] = k
        predicted[labels == value] = k
    only, counts = _check_labels(iter(predicted), truth, len(class_values), early_stop=False)
    return useless_verdict(only, counts, list(class_values), where, subject)


def _finite(weights: list) -> bool:
    """Whether every array of a weight list (``keras_model.get_weights()``) is finite (integer arrays are)."""
    return all(np.isfinite(w).all() for w in weights)


def _run_progress(step: int, total_steps: int, elapsed: float, budget: Optional[float]) -> float:
    """Share of the run done: by steps, or by the time budget when that is further along."""
    progress = step / total_steps
    return progress if budget is None else max(progress, elapsed / budget)


class WeightAverage:
    """Running mean of a model's weight lists (``keras_model.get_weights()``); non-float arrays keep the latest."""

    def __init__(self):
        self.count, self._sum = 0, None

    def add(self, weights: list) -> None:
        self._sum = list(weights) if self._sum is None else [a + w for a, w in zip(self._sum, weights)]
        self.count += 1

    def mean(self, latest: list) -> list:
        """The mean of the added weight lists; ``latest`` supplies the non-float arrays (e.g. seed states)."""
        return [a / self.count if np.issubdtype(a.dtype, np.floating) else w for a, w in zip(self._sum, latest)]


@dataclass
class _Trainer:
    """A compiled Keras network and its optimizer, kept between runs of one process (a painted correction, then
    Retrain, again and again) so that TensorFlow need not trace, nor XLA compile, its training step again: that
    took 7-8 s of a default Retrain's 17 s on a 2-core CPU (BENCHMARKS.md, session 21). It never is the network a
    run hands out; ``key`` holds everything the traced step depends on besides input shapes."""

    key: tuple
    keras_model: Any
    optimizer: Any
    batch_norm: BatchNormStatistics  # of keras_model: its traced recomputation is kept with the trainer

    def recompute_batch_norm(self, network, tiles: list) -> None:
        """Give ``network`` (same architecture) batch-norm statistics recomputed on ``tiles`` from its own weights,
        on this trainer's network, whose traced recomputation a later run reuses."""
        self.keras_model.set_weights(network.get_weights())
        if self.batch_norm.recompute(tiles):
            network.set_weights(self.keras_model.get_weights())

    def start_from(self, network) -> None:
        """Take every variable of ``network`` (same architecture: weights, batch-norm statistics, dropout
        seeds) and a fresh optimizer state (zero moments and step count), as a newly built trainer has."""
        targets, sources = self.keras_model.variables, network.variables
        if [v.shape for v in targets] != [v.shape for v in sources]:
            raise ValueError("the kept training network and the run's network differ in architecture")
        for target, source in zip(targets, sources):
            target.assign(source.numpy())
        for variable in self.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))


#: Compiled training networks kept for the next runs with the same settings: two, so that a Train and the Retrains
#: after it (without XLA: a short run does not repay its compile time) keep theirs in turn. A replaced one is not all
#: freed: each left TensorFlow's graph registries 15-66 MB of its traced steps (a known TensorFlow leak), and building
#: it again took 3-6 s on 2 cores. The tests, which alternate between small networks, keep more.
KEPT_TRAINERS = 2

#: Bytes of variables (weights and optimizer state) the kept networks may hold besides the latest one: 0.02 GB for the
#: default preset, 0.37 GB for the classic one, which keeps only its latest.
KEPT_TRAINER_BYTES = 256 * 2**20
_idle_trainers: list = []  # not used by a running training; the one to finish last is last
_idle_trainer_lock = threading.Lock()


def _take_trainer(key: tuple) -> Optional[_Trainer]:
    with _idle_trainer_lock:
        for k, trainer in enumerate(_idle_trainers):
            if trainer.key == key:
                return _idle_trainers.pop(k)
        return None


def _keep_trainer(trainer: _Trainer) -> None:
    with _idle_trainer_lock:
        _idle_trainers.append(trainer)
        del _idle_trainers[: max(len(_idle_trainers) - KEPT_TRAINERS, 0)]
        while len(_idle_trainers) > 1 and sum(_variable_bytes(t) for t in _idle_trainers) > KEPT_TRAINER_BYTES:
            del _idle_trainers[0]


def _variable_bytes(trainer: _Trainer) -> int:
    """Bytes of a trainer's network and optimizer variables."""
    variables = list(trainer.keras_model.variables) + list(trainer.optimizer.variables)
    return sum(int(np.prod(v.shape)) * v.value.dtype.size for v in variables)  # TensorFlow's dtype knows its size


def clear_trainer_cache() -> None:
    """Forget the compiled training networks kept for the next runs with the same settings, and the border weights
    of the label planes seen lately (256 MB at most: a Retrain on new corrections adds planes); frees their memory."""
    from .data import clear_border_weights_cache

    with _idle_trainer_lock:
        _idle_trainers.clear()
    clear_border_weights_cache()


def _loss_settings(train_config: TrainConfig, boundary_index) -> dict:
    """Keyword arguments of :func:`masked_loss` (after the model config) for a run."""
    use_cldice = train_config.cldice_weight > 0
    return {
        "dice_weight": train_config.dice_weight if train_config.loss == "ce+dice" else 0.0,
        "cldice_weight": train_config.cldice_weight,
        "cldice_class": boundary_index if use_cldice else None,
        "cldice_iterations": train_config.cldice_iterations if use_cldice else None,
    }


def _new_trainer(key, model_config: ModelConfig, train_config: TrainConfig, mixed_precision: bool, loss_settings: dict) -> _Trainer:
    keras = import_keras()
    keras_model = build_unet(model_config, mixed_precision=mixed_precision, seed=0)  # its weights are set before each run
    use_ema = train_config.ema_momentum > 0
    optimizer = keras.optimizers.Adam(
        learning_rate=train_config.learning_rate, use_ema=use_ema, ema_momentum=train_config.ema_momentum or 0.99
    )
    keras_model.compile(optimizer=optimizer, loss=float32_loss(masked_loss(model_config, **loss_settings)), jit_compile=train_config.jit_compile)
    # Optimizer variables made before the first step: made inside it, they make TensorFlow trace the training
    # step twice, which doubled the time to the first step (BENCHMARKS.md, session 20).
    optimizer.build(keras_model.trainable_variables)
    return _Trainer(key, keras_model, optimizer, BatchNormStatistics(keras_model))


def _trainer_key(model_config: ModelConfig, train_config: TrainConfig, loss_settings: dict) -> Optional[tuple]:
    """What a traced training step depends on; None where a kept trainer cannot be reset exactly (weight
    averaging by the optimizer: its averages start from the weights)."""
    if train_config.ema_momentum > 0:
        return None
    return (to_json(model_config), train_config.mixed_precision, train_config.jit_compile, tuple(loss_settings.items()))


def check_training_memory(model_config: ModelConfig, batch_size: int, patch_size: int, mixed_precision: bool, *,
                          in_use: int = 0, activations_here: bool = True, data_bytes: int = 0, data_held: bool = False,
                          data_name: str = "image and labels", warn: bool = True, on_gpu: Optional[bool] = None) -> bool:
    """The memory policy (:mod:`napari_unet.hardware`) for training ``model_config``'s network on batches of
    ``batch_size`` patches of ``patch_size``² (:func:`napari_unet.model.training_memory_bytes`: TensorFlow, weights,
    optimizer state, activations) with its data (``data_bytes``, :func:`training_data_bytes`; both live at once):
    :class:`ConfigError` when the network exceeds the machine's (or container's) memory without swap (every step
    touches all of it: with swap each step would page it in and out; not on a GPU, where its weights and activations
    live in the GPU's memory), or the network and data together its memory and
    swap (depth 6 with 128 filters, 2 billion weights, grew to 24 GB and the system killed the process, in napari the
    viewer with its unsaved layers); a :class:`~napari_unet.hardware.LowMemoryWarning` (unless not ``warn``) when
    what is still to be allocated takes more than :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory available
    now, and training goes ahead. True if it warned.

    ``in_use``: bytes of the network's estimate the process holds already (TensorFlow loaded, a kept trainer's
    weights); ``data_held``: the data are read and prepared already (held too); ``activations_here=False``: the batch's
    activations live elsewhere (a GPU) or are not counted yet (the check before the data are read). ``data_name``
    names the data in the messages. ``on_gpu``: whether training runs on a GPU (None: asked only when the network
    exceeds the memory without swap, :func:`~napari_unet.hardware.has_gpu` loading TensorFlow).
    """
    network = training_memory_bytes(model_config, batch_size if activations_here else 0, patch_size, mixed_precision)
    needed = network + data_bytes
    held = in_use + (data_bytes if data_held else 0)
    weights = parameter_count(model_config)
    size = f"{weights / 1e6:,.1f} million" if weights >= 1e6 else f"{weights:,}"
    what = (f"training this network (depth {model_config.depth}, {model_config.base_filters} filters: {size} weights) on "
            f"batches of {batch_size} patches of {patch_size}²")
    # the advice for the largest of the terms a user can change (TensorFlow's own memory is not one of them)
    activations = network - training_memory_bytes(model_config, 0, patch_size, mixed_precision)
    weights_bytes = TRAINING_BYTES_PER_PARAMETER * weights
    if activations >= weights_bytes:
        advice = "lower the batch size or the patch size (memory grows with both), or the filters"
    else:
        advice = "each level of depth or doubling of the filters needs about 4 times the weights: lower them"
    network_what = what
    if data_bytes:
        what = f"{data_name}: {what} with its data ({hardware.size_text(data_bytes)}: the slices read and their working copies)"
    excess = hardware.memory_excess(needed)
    if excess is not None:
        if data_bytes >= max(activations, weights_bytes):
            advice = "train on fewer annotated slices or on a crop of them (the model then predicts whole images all the same)"
        raise ConfigError(f"{what} {excess}; {advice}")
    excess = hardware.memory_excess(network, swap=False)
    if excess is not None and not (hardware.has_gpu() if on_gpu is None else on_gpu):
        raise ConfigError(f"{network_what} {excess} (swap does not count: every training step uses all of the "
                          f"network's memory); {advice}")
    shortfall = hardware.memory_shortfall(max(0, needed - held)) if warn else None
    if shortfall is None:
        return False
    besides = f" (besides the {hardware.size_text(held)} this process holds already)" if held else ""
    warnings.warn(f"{what} {shortfall}{besides}; training anyway (close other programs if the system slows down)",
                  hardware.LowMemoryWarning, stacklevel=3)
    return True


#: Bytes a training holds per pixel of the slices it reads, besides the slices themselves: the class indices and their
#: training copy (int8), the normalised slices and their border weights (float32), the annotated pixels' mask and
#: positions. Measured up to the patch sampler (tracemalloc, 8 and 16 slices of 1024², session 63): 9-10 bytes, with
#: context slices 11, sparse labels 12.
TRAINING_BYTES_PER_PIXEL = 12
#: ... and per pixel of one slice: the temporaries of normalising a slice and of its border weights (measured 30).
TRAINING_BYTES_PER_PLANE_PIXEL = 32


def training_data_bytes(image, labels, slices: list, pixel_weights=None) -> int:
    """Estimated peak memory (bytes) of the data :func:`train_events` prepares from ``slices`` of (Z, Y, X) or (Y, X)
    ``image`` and ``labels`` (:func:`napari_unet.data.slices_to_read`): the slices read (not counted for in-memory
    arrays and memory maps taken whole), :data:`TRAINING_BYTES_PER_PIXEL` of working copies a pixel, the temporaries of
    one slice; a float32 copy of ``pixel_weights`` and their training slices besides."""
    shape = tuple(np.shape(image))
    whole = len(slices) == (shape[0] if len(shape) == 3 else 1)
    pixels = len(slices) * shape[-2] * shape[-1]

    def dtype(array) -> np.dtype:  # an array-like without one (a nested list) is converted all the same
        return np.dtype(array.dtype) if hasattr(array, "dtype") else np.asarray(array).dtype

    def read(array) -> int:  # bytes of the copy read, per pixel
        # a memory map taken whole is read as a view of it (read_planes: np.asarray), not copied: its pages are page
        # cache, which the kernel drops when it needs the memory (MemAvailable counts them); the copies made of it
        # (normalised, class indices) are counted below
        return 0 if whole and (in_memory(array) or isinstance(array, np.memmap)) else dtype(array).itemsize

    per_pixel = read(image) + read(labels) + TRAINING_BYTES_PER_PIXEL
    if pixel_weights is not None:
        weights_dtype = dtype(pixel_weights)
        per_pixel += read(pixel_weights) + weights_dtype.itemsize + (0 if weights_dtype == np.float32 else 4)
    return int(per_pixel * pixels + TRAINING_BYTES_PER_PLANE_PIXEL * shape[-2] * shape[-1])


def check_training_data_memory(image, labels, slices: list, pixel_weights=None, data_name: str = "image and labels",
                               warn: bool = True) -> int:
    """The memory policy of reading data (:mod:`napari_unet.hardware`) for training on ``slices`` of ``image`` and
    ``labels`` (:func:`training_data_bytes`), before any is read: :class:`~napari_unet.data.InputError` beyond the
    machine's (or container's) memory and swap; a :class:`~napari_unet.hardware.LowMemoryWarning` beyond
    :data:`~napari_unet.hardware.MEMORY_SHARE` of the memory available now (the slices are read, and trained on, in
    memory: no lazy way), unless not ``warn`` (:func:`train_events` warns of the data and the network together,
    :func:`check_training_memory`). ``data_name``: how the messages name the data (the widget names its layers).
    Returns the bytes estimated."""
    needed = training_data_bytes(image, labels, slices, pixel_weights)
    shape = tuple(np.shape(image))
    size = f"{shape[-2]} x {shape[-1]} pixels"
    what = f"training on {format_count(len(slices), 'slice')} of {size}" if len(shape) == 3 else f"training on an image of {size}"
    what = f"{data_name}: {what} (read, with their working copies)"
    excess = hardware.memory_excess(needed)
    if excess is not None:
        raise InputError(f"{what} {excess}; train on fewer annotated slices or on a crop of them (the model then "
                         "predicts whole images all the same)")
    shortfall = hardware.memory_shortfall(needed) if warn else None
    if shortfall is not None:
        warnings.warn(f"{what} {shortfall}; training anyway (close other programs if the system slows down)",
                      hardware.LowMemoryWarning, stacklevel=3)
    return needed


def _same_network(key_json: str, config: ModelConfig) -> bool:
    """Whether a kept trainer's network (``key_json``, its config's :func:`to_json`) is ``config``'s, its number of
    classes aside (not known before the labels are read; the last layer's few weights)."""
    kept, planned = json.loads(key_json), json.loads(to_json(config))
    kept.pop("n_classes", None)
    planned.pop("n_classes", None)
    return kept == planned


def _memory_held(model_config: ModelConfig, reused: Callable[[tuple], bool]) -> int:
    """Bytes of :func:`napari_unet.model.training_memory_bytes` the process holds already: TensorFlow once loaded,
    and the weights and optimizer of the kept trainer if ``reused(its key)`` (the run takes it over)."""
    with _idle_trainer_lock:
        trainer = next((kept for kept in _idle_trainers if reused(kept.key)), None)
    held = TRAINING_BASE_BYTES if "tensorflow" in sys.modules else 0
    if trainer is not None:
        held += TRAINING_BYTES_PER_PARAMETER * parameter_count(model_config)
    return int(held)


def _learning_rate(base: float, schedule: str, progress: float) -> float:
    if schedule == "constant":
        return base
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_events(
    image,
    labels,
    model_config: Optional[ModelConfig] = None,
    train_config: Optional[TrainConfig] = None,
    init: Optional[UNetModel] = None,
    stop: Optional[Callable[[], bool]] = None,
    pixel_weights=None,
    pixel_size=None,
    check_one_class: bool = True,
    data_name: str = "image and labels",
) -> Iterator[TrainingEvent]:
    """Train a U-Net on ``image`` and ``labels`` ((Y, X) or (Z, Y, X), identical shapes), yielding events.

    ``labels`` hold class values (e.g. 0/255); pixels equal to ``train_config.ignore_value`` are not
    annotated. ``init`` (a :class:`UNetModel` or the path of its file) fine-tunes an existing model (its
    architecture, classes and normalisation are kept; a ``model_config`` that differs is refused); without
    ``model_config`` and ``init`` the default preset's network is used, at depth 5 for budgets of 30 minutes or more with bfloat16 on AMX or a GPU (:func:`napari_unet.hardware.resolve_depth`), else 4.
    ``pixel_weights`` (labels' shape, float >= 0, optional) are added to the loss weight of annotated pixels, whose
    class weights are about 1 (Retrain weighs the user's corrections this way).
    ``pixel_size``: [Y, X] size in µm of the image's pixels, if known; the model records it (``init``'s is kept without
    one), and prediction notes images of other pixel sizes (:func:`napari_unet.predict.pixel_size_note`).
    ``stop()`` returning True, or the time budget, ends training cleanly; so does a loss, weights or validation
    probabilities that stop being finite (reason "diverged", :attr:`TrainingFinished.divergence` says when): the model
    then holds the best epoch before it (by validation loss; by training loss without validation), else the mean of
    the epochs averaged before it, else (epochs that validation skipped, ``val_every`` > 1) the one of lowest training
    loss before it (:class:`TrainingDiverged` when there is none). The last event is
    :class:`TrainingFinished` carrying the model: the mean of the epoch-end weights after
    ``train_config.average_weights_from`` of the run, or, with fewer than two such epochs, the best validation epoch;
    its ``one_class_note`` says when the model predicts one class everywhere it is checked or labels no better than
    chance there (:data:`ONE_CLASS_HINT`; ``check_one_class=False``: not checked, e.g. a Retrain, whose stack holds
    copies of the corrected slices, checks its corrections' slices with the prediction it scores them with,
    :func:`napari_unet.retrain.score_retrained`).
    A consumer that leaves early (``break``, ``close()``, an interrupt) finds in :class:`TrainingStarted`'s model the
    weights reached: the best validation epoch's, else the last step's. The slices' memory is checked before they are
    read (:func:`check_training_data_memory`); a reader's error of a lazy array names its slices
    (:func:`napari_unet.data.read_planes`). ``data_name`` names ``image`` and ``labels`` in the memory check's messages
    (the widget: its layers' names).
    """
    for name, value, cls in (("model_config", model_config, ModelConfig), ("train_config", train_config, TrainConfig)):
        if value is not None and not isinstance(value, cls):  # a dict gave "AttributeError: 'dict' object has no attribute 'replace'"
            raise TypeError(f"{name} must be a {cls.__name__} (e.g. {cls.__name__}(**settings) or preset('default')), "
                            f"got {type(value).__name__}")
    train_config = train_config or preset("default").train
    init = None if init is None else as_model(init)
    # a network given beside init was ignored without a word (n_classes follows the labels anyway)
    differ = [] if init is None or model_config is None else [
        f"{f.name} {getattr(model_config, f.name)!r} vs {getattr(init.config, f.name)!r}" for f in fields(ModelConfig)
        if f.name != "n_classes" and getattr(model_config, f.name) != getattr(init.config, f.name)]
    if differ:
        raise ConfigError(f"model_config differs from the network of init ({'; '.join(differ)}): fine-tuning keeps "
                          "init's network; leave model_config out (None)")
    if pixel_size is not None:
        pixel_size = [float(s) for s in pixel_size]
        if len(pixel_size) != 2 or not all(math.isfinite(s) and s > 0 for s in pixel_size):
            raise ValueError(f"pixel_size must be the [Y, X] size of a pixel in µm (two numbers above 0), got {pixel_size!r}")
    # The model file records what ran, not "auto".
    train_config = train_config.replace(
        augment_noise=resolve_augment_noise(train_config.augment_noise, train_config.max_minutes),
        merge_levels=resolve_merge_levels(train_config.merge_levels, train_config.max_minutes),
    )
    ignore = train_config.ignore_value
    # Only the annotated slices are read (a stack larger than memory, annotated on a few slices, trains in the memory
    # of those); slice_numbers maps their positions back to the stack's. Context slices need their neighbours.
    context = (init.config if init is not None else model_config or preset("default").model).context_slices
    slices = slices_to_read(image, labels, ignore, every_slice=context > 0)
    # Before any slice is read: the data alone beyond memory and swap (their own message), then the data and the
    # network's weights together, which both live while training (one warning of the sum, not one of each).
    data_bytes = check_training_data_memory(image, labels, slices, pixel_weights, data_name, warn=False)
    planned = init.config if init is not None else model_config or preset("default").model_for(train_config)
    held = _memory_held(planned, lambda kept: _same_network(kept[0], planned))  # the same network, kept
    warned = check_training_memory(planned, train_config.batch_size, train_config.patch_size, True, in_use=held,
                                   activations_here=False, data_bytes=data_bytes, data_name=data_name)
    image_stack, label_stack, extra_weights, slice_numbers = read_annotated_slices(image, labels, ignore, pixel_weights,
                                                                                   slices=slices)
    class_values = check_trainable(label_stack, ignore, init.class_values if init else None)
    check_class_count(len(class_values), "the labels")
    model_config = _resolve_model_config(planned, len(class_values), init, train_config)  # (its depth resolved once)
    if model_config.input_channels != 1:  # as predict says it: Keras failed on the first step with a shape error
        raise InputError(f"the model expects {model_config.input_channels} channels; napari-unet images have one")
    check_patch_size(train_config.patch_size, model_config)
    patch_size = fit_patch_size(train_config.patch_size, image_stack.shape[1:], model_config)
    patch_notes = ()
    if patch_size < train_config.patch_size:  # the model file records the patches that ran
        patch_notes = (SettingNote("patch_size", f"patches of {patch_size} pixels: the slices ({image_stack.shape[1]} x "
                                   f"{image_stack.shape[2]}) are smaller than patches of {train_config.patch_size}"),)
        train_config = train_config.replace(patch_size=patch_size)
    percentiles = init.percentiles if init else train_config.percentiles
    indices = to_indices(label_stack, class_values, ignore, dtype=np.int8)  # at most MAX_CLASSES classes: a byte a pixel
    order = layer_order(indices)
    pockets = [class_values[k] for k in range(len(class_values)) if k not in order] if order is not None else []
    # (three classes or more: the note is no news for two-class labels, EM membranes and cells)
    undecided = order is None and len(class_values) >= 3 and layering_undecided(indices)
    rotations, notes = _resolve_rotations(train_config.augment_rotations, order is not None, init, pockets, undecided)
    notes += patch_notes + (_class_notes(indices, class_values) if init is None else _pixel_size_notes(init, pixel_size))
    notes += _uniform_slice_notes(indices, class_values, slice_numbers)
    train_config = train_config.replace(augment_rotations=rotations)

    per_slice = [int(np.count_nonzero(plane >= 0)) for plane in indices]  # annotated pixels, in one pass
    annotated_slices, annotated_pixels = [z for z, n in enumerate(per_slice) if n], sum(per_slice)
    height, width = image_stack.shape[1:]
    max_val_slices = VALIDATION_PIXELS // (min(height, VALIDATION_MIN_SIDE) * min(width, VALIDATION_MIN_SIDE))
    train_slices, val_slices = split_validation(annotated_slices, train_config.val_fraction, max_val_slices)
    train_indices = indices[train_slices]
    # Validation scores val_indices: the val_rows x val_columns of val_slices (the annotated ones) or, for one
    # annotated image, of its last columns.
    val_indices, val_rows, val_columns = indices[val_slices], slice(None), slice(None)
    val_column, val_window = None, None
    if not val_slices and train_config.val_fraction > 0 and width >= 64:
        # One annotated image: validate on its last columns, train on the rest.
        cut = validation_column(width, train_config.val_fraction, model_config.size_multiple)
        val_indices, val_columns = indices[train_slices, :, cut:], slice(cut, None)
        train_indices = indices[train_slices].copy()
        train_indices[:, :, cut:] = -1
        val_column = cut
        if not (train_indices >= 0).any() or not (val_indices >= 0).any():
            empty = "they hold" if not (val_indices >= 0).any() else f"the columns before {cut} hold"
            notes += (SettingNote("val_fraction", f"no validation: one annotated image validates on its columns {cut} "
                                  f"and up, and {empty} no annotations; annotations on both sides give one"),)
            val_indices, train_indices, val_column, val_columns = None, indices[train_slices], None, slice(None)
    window = None
    if val_indices is not None and len(val_indices):
        window = validation_window(val_indices >= 0, VALIDATION_PIXELS, VALIDATION_MIN_SIDE)
    if window is not None:  # validation time and memory do not grow with the slices' size
        y0, y1, x0, x1 = window
        val_indices = val_indices[:, y0:y1, x0:x1]
        offset = val_column or 0
        val_window = (y0, y1, x0 + offset, x1 + offset)
        val_rows, val_columns = slice(y0, y1), slice(x0 + offset, x1 + offset)
    has_validation = val_indices is not None and len(val_indices) and (val_indices >= 0).any()
    if val_slices or val_column is not None:
        notes += _held_out_class_notes(indices, train_indices, class_values, [slice_numbers[k] for k in val_slices], val_column)

    weights = class_weights(train_indices, model_config.n_classes, train_config.class_weighting)
    if init is not None:
        boundary_value = init.boundary_value
    else:
        # the training slices before one image's validation columns are cut off (dense labels, not sparse ones)
        boundary = find_boundary_class(train_indices if val_column is None else indices[train_slices], model_config.n_classes)
        boundary_value = None if boundary is None else class_values[boundary]
    if val_slices and 3 * len(val_slices) >= len(annotated_slices):  # whole slices: 1 of 2 is half the annotations
        held, n = len(val_slices), len(annotated_slices)
        without = "no best epoch" + (", no membrane rule" if boundary_value is not None else "")
        notes += (SettingNote("val_fraction", f"{held} of the {n} annotated slices {'is' if held == 1 else 'are'} held out "
                              f"for validation, not trained on; a validation share of 0 trains on all {n}, without "
                              f"validation ({without})"),)
    factor = model_config.downscale  # the network trains on shrunk slices; validation runs at full size
    sigma = model_config.local_contrast_sigma
    if model_config.context_slices:  # every slice may serve as context; only training slices are sampled
        sampled_images, sampled_indices = normalize(image_stack, percentiles, sigma), np.full_like(indices, -1)
        sampled_indices[train_slices] = train_indices
        sampled_weights = extra_weights
        batch_norm_slices = train_slices
    else:  # only the training slices are normalised (per slice: the same values as in the whole stack)
        sampled_images = normalize_window(image_stack, train_slices, (0, height, 0, width), percentiles, sigma)[0]
        sampled_indices = train_indices
        sampled_weights = None if extra_weights is None else extra_weights[train_slices]
        batch_norm_slices = list(range(len(train_slices)))
    # Validation predicts the val_planes of val_images: windows of whole planes normalised as predict normalises
    # them for users (a window or the last columns normalised on their own had other percentiles: an OCT scan's
    # last fifth 149 where the scan's is 200), with neighbouring slices at hand for context models.
    val_images, val_planes = None, []
    if has_validation:
        rows, columns = val_rows.indices(height), val_columns.indices(width)
        window_bounds = (rows[0], rows[1], columns[0], columns[1])
        val_images, val_planes = normalize_window(image_stack, val_slices or train_slices, window_bounds, percentiles, sigma,
                                                  model_config.context_slices)
    net_images, net_indices = downscale_image(sampled_images, factor), downscale_labels(sampled_indices, factor)
    net_weights = None if sampled_weights is None else downscale_image(sampled_weights, factor)  # float32
    if boundary_value is not None and train_config.border_weight > 0:
        boundary_index = class_values.index(boundary_value)
        borders = border_weights(net_indices, boundary_index, train_config.border_weight, train_config.border_sigma / factor)
        if net_weights is not None:
            borders += net_weights  # a new array: the caller's weights stay as they are
        net_weights = borders
    aug = Augmentation(
        flips=train_config.augment_flips,
        rotations=train_config.augment_rotations,
        elastic=train_config.augment_elastic,
        intensity=train_config.augment_intensity,
        elastic_alpha=train_config.elastic_alpha,
        elastic_grid=train_config.elastic_grid,
        noise=train_config.augment_noise,
    )
    sampler = PatchSampler(
        net_images,
        net_indices,
        train_config.patch_size,
        weights,
        aug,
        train_config.annotated_center_fraction,
        seed=train_config.seed,
        pixel_weights=net_weights,
        context=model_config.context_slices,
    )

    mixed_precision = hardware.resolve_mixed_precision(train_config.mixed_precision)
    if train_config.mixed_precision is True and not hardware.has_fast_bfloat16():  # "auto" never picks slow bf16
        warnings.warn(
            "mixed_precision: this CPU has no AVX512-BF16/AMX and no GPU is used, so bfloat16 training is "
            "several times slower than float32 here",
            RuntimeWarning,
            stacklevel=2,
        )
    # The model file records what ran, not "auto".
    train_config = train_config.replace(
        mixed_precision=mixed_precision,
        jit_compile=resolve_training_jit_compile(train_config, mixed_precision),
    )
    boundary_index = None if boundary_value is None else class_values.index(boundary_value)
    loss_settings = _loss_settings(train_config, boundary_index)
    key = _trainer_key(model_config, train_config, loss_settings)
    on_gpu = hardware.has_gpu()  # loads TensorFlow (the estimate's base) if nothing has yet
    # the batch's activations too, now that where they live is known; the data are held by now (warned once at most)
    check_training_memory(model_config, train_config.batch_size, train_config.patch_size, mixed_precision,
                          in_use=_memory_held(model_config, lambda kept: kept == key), activations_here=not on_gpu,
                          on_gpu=on_gpu,
                          data_bytes=data_bytes, data_held=True, data_name=data_name, warn=not warned)
    # The network handed out is never compiled; a kept (or new) trainer learns from its weights (_Trainer).
    network = build_unet(model_config, mixed_precision=mixed_precision, seed=train_config.seed)
    if init is not None:
        network.set_weights(init.keras_model.get_weights())
    trainer = (key is not None and _take_trainer(key)) or _new_trainer(key, model_config, train_config, mixed_precision, loss_settings)
    trainer.start_from(network)
    keras_model, optimizer = trainer.keras_model, trainer.optimizer
    use_ema = train_config.ema_momentum > 0
    # While training runs the result holds the trainer's network (live weights, used by validation); at the end
    # it holds its own network with the final weights.
    # a fine-tuned model keeps its own normalisation: its file must not record the caller's percentiles beside it
    result = UNetModel(keras_model, model_config, class_values, percentiles, train_config.replace(percentiles=percentiles),
                       boundary_value=boundary_value)
    if init is not None and init.intensity_profile is not None:
        # fine-tuning keeps the images the network was first trained on: a Retrain's focus copies of one slice
        # would otherwise be most of the slices sampled (the profile of a Duke stack moved by 0.07)
        result.intensity_profile, result.intensity_spread = init.intensity_profile, init.intensity_spread
        result.profile_above_floor, result.spread_above_floor = init.profile_above_floor, init.spread_above_floor
    else:
        ((result.intensity_profile, result.intensity_spread),
         (result.profile_above_floor, result.spread_above_floor)) = _intensity_references(image, image_stack, percentiles)
    if init is not None:  # kept unless validation tunes it again below (Retrain has no validation)
        result.boundary_rule = init.boundary_rule
        result.layer_order = init.layer_order
    if result.layer_order is None and order is not None:
        result.layer_order = [class_values[k] for k in order]  # prediction keeps the layers in this order (pockets aside)
    result.pixel_size = pixel_size or (init.pixel_size if init is not None else None)

    epochs, steps_per_epoch = train_config.epochs, train_config.steps_per_epoch
    total_steps = epochs * steps_per_epoch
    budget = train_config.max_minutes * 60.0 if train_config.max_minutes else None
    best_loss, best_epoch, best_weights = math.inf, 0, None
    unvalidated = (math.inf, 0, None)  # (training loss, epoch, weights) of the best epoch not validated, while none is
    late_epochs = WeightAverage()
    divergence = ""  # the loss or the weights stopped being finite: training ends, keeping weights from before
    history: list = []
    earlier = init.history_records() if init is not None else []  # a fine-tuned model's history starts with its start model's
    run = max((record["run"] for record in earlier), default=-1) + 1
    reason = "completed"
    step = 0
    first_step_seconds = 0.0  # tracing or an XLA compile: not the rate of the steps after it
    batches = prefetch(lambda: sampler.batch(train_config.batch_size), total_steps)
    finished = False
    try:
        yield TrainingStarted(result, total_steps, epochs, steps_per_epoch, [slice_numbers[k] for k in train_slices],
                              [slice_numbers[k] for k in val_slices], class_values, val_column, notes, val_window,
                              annotated_pixels)
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            losses = []
            for _ in range(steps_per_epoch):
                elapsed = time.perf_counter() - start
                if stop is not None and stop():
                    reason = "stopped"
                    break
                if budget is not None and elapsed >= budget:
                    reason = "time budget"
                    break
                progress = _run_progress(step, total_steps, elapsed, budget)
                lr = _learning_rate(train_config.learning_rate, train_config.lr_schedule, progress)
                optimizer.learning_rate.assign(lr)
                with interrupts_deferred(second_at_once=True):  # Ctrl-C or SIGTERM comes after the step
                    x, y = next(batches)
                    loss = float(keras_model.train_on_batch(x, y))
                if not math.isfinite(loss):  # the weights this step updated are lost; the epoch's end is not reached
                    reason, divergence = "diverged", f"the loss was {loss} at step {step + 1}"
                    break
                losses.append(loss)
                step += 1
                elapsed = time.perf_counter() - start
                if step == 1:
                    first_step_seconds = elapsed
                yield TrainingStep(epoch, step, total_steps, loss, lr, elapsed, _eta(elapsed, first_step_seconds, step, total_steps, budget))
            if not losses or divergence:
                break
            run_progress = _run_progress(step, total_steps, elapsed, budget)
            val_loss, val_metrics = None, {}
            last_epoch = reason != "completed" or epoch == epochs
            raw_weights = None
            if use_ema:  # validate (and keep) the averaged weights, then train on from the raw ones
                raw_weights = keras_model.get_weights()
                optimizer.finalize_variable_values(keras_model.trainable_variables)
            epoch_weights = keras_model.get_weights()
            if not _finite(epoch_weights):  # a last step's update overflowed: its loss, computed before, was finite
                reason, divergence = "diverged", f"the weights became NaN or infinite at step {step}"
                break
            if has_validation and (epoch % train_config.val_every == 0 or last_epoch):
                try:
                    val_loss, val_metrics = _validation_scores(result, val_images, val_planes, val_indices, weights)
                except PredictionError:  # finite weights whose activations overflow: NaN probabilities
                    val_loss = math.nan
                if not math.isfinite(val_loss):
                    reason = "diverged"
                    divergence = f"the network gave NaN or Inf probabilities in validation after step {step}"
                    break
            monitored = val_loss if val_loss is not None else (float(np.mean(losses)) if not has_validation else None)
            is_best = monitored is not None and monitored < best_loss
            if is_best:
                best_loss, best_epoch, best_weights = monitored, epoch, epoch_weights
                unvalidated = (math.inf, 0, None)  # (its copy of the weights is not needed)
            elif monitored is None and best_weights is None and float(np.mean(losses)) < unvalidated[0]:
                # val_every > 1, no epoch validated yet: a divergence keeps the best of these by training loss, as
                # a run without validation does, unless epochs were averaged (it raised, their finite weights lost)
                unvalidated = (float(np.mean(losses)), epoch, epoch_weights)
            if 0 < train_config.average_weights_from <= run_progress:
                late_epochs.add(epoch_weights)
            elapsed = time.perf_counter() - start
            eta = _eta(elapsed, first_step_seconds, step, total_steps, budget)
            record = {"epoch": epoch, "step": step, "run": run, "loss": float(np.mean(losses)), "val_loss": val_loss, "elapsed": elapsed,
                      **{f"val_{k}": v for k, v in val_metrics.items()}}
            history.append(record)
            yield EpochEnd(epoch, epochs, float(np.mean(losses)), val_loss, val_metrics, is_best, elapsed, eta)
            if raw_weights is not None:  # the event's consumers saw the averaged weights
                keras_model.set_weights(raw_weights)
            if reason != "completed":
                break
        by_training_loss = False  # the kept epoch chosen by its training loss in a validated run
        if divergence and best_weights is None and late_epochs.count < 2 and unvalidated[2] is not None:
            _, best_epoch, best_weights = unvalidated
            by_training_loss = True
        if divergence and best_weights is None and late_epochs.count < 2:
            raise TrainingDiverged(divergence)
        # fully annotated, with both classes: a slice all cell or all membrane has no cells for V_rand to judge
        tunes_rule = boundary_value is not None and has_validation and step > 0 and bool((val_indices >= 0).all())
        if tunes_rule:
            membrane = val_indices == boundary_index
            tunes_rule = bool(membrane.any()) and not bool(membrane.all())
        if step > 0:  # else there is nothing to finish
            yield TrainingFinishing(reason, step, tunes_rule)
        averaged_epochs = late_epochs.count if late_epochs.count >= 2 else 0
        if divergence:  # the best epoch before it (validated), else the mean of the epochs before it; never the last
            averaged_epochs = 0 if best_weights is not None else averaged_epochs
        if averaged_epochs:  # stochastic weight averaging; its batch-norm statistics are recomputed below
            network.set_weights(late_epochs.mean(keras_model.get_weights()))
        elif best_weights is not None:
            network.set_weights(best_weights)
        else:
            network.set_weights(keras_model.get_weights())
        if (train_config.recompute_batch_norm or averaged_epochs) and step > 0:
            tiles = _batch_norm_tiles(model_config, sampled_images, batch_norm_slices)  # normalised as the model does
            trainer.recompute_batch_norm(network, tiles)
        finished = True
    finally:
        batches.close()
        if not finished and step > 0:
            # the consumer left early (break, close(), an interrupt) or training failed: keep the weights reached
            # (the best epoch's, else the last step's when finite), not the untrained network
            reached = best_weights if best_weights is not None else keras_model.get_weights()
            if all(np.isfinite(w).all() for w in reached):
                network.set_weights(reached)
        # Also when training failed or its consumer left early: the result never holds the trainer, which waits
        # for the next run with the same settings (start_from resets all it holds).
        result.keras_model = network
        result.history = earlier + history
        if key is not None:
            _keep_trainer(trainer)
    boundary_v_rand, probabilities = None, None
    jit_compile = False if train_config.jit_compile is False else None
    if tunes_rule:
        # Membranes: on the (fully annotated) validation slices, the threshold with the lowest pixel
        # error and the gap closing with the best V_rand. Without test-time augmentation, so that the model
        # file does not depend on the machine (on ISBI both chose the same rule for all 8 models measured).
        probabilities = predict(result, val_images, close_boundaries=False, slices=val_planes, tta=False, normalized=True,
                                jit_compile=jit_compile).probabilities
        result.boundary_rule, boundary_v_rand = tune_boundary_rule(
            probabilities[..., boundary_index], val_indices != boundary_index, closings=candidate_closings(train_config.merge_levels)
        )
    one_class, kappa, one_class_note = None, None, ""
    if step > 0 and check_one_class:  # is the finished model of any use? (ONE_CLASS_HINT)
        if has_validation:  # the validation pixels it was scored on (the probabilities of tuning the rule, if any)
            images, planes, truth = val_images, val_planes, val_indices
            names, kind = [slice_numbers[k] for k in val_slices], "validation"
            origin = (val_rows.indices(height)[0], val_columns.indices(width)[0])
        else:  # the slices it trained on (as the batch-norm tiles are chosen)
            images, planes, truth = sampled_images, batch_norm_slices, train_indices
            names, kind, origin = [slice_numbers[k] for k in train_slices], "training", (0, 0)
            probabilities = None
        one_class, kappa, one_class_note = _check_model(
            result, images, planes, truth, probabilities, names, kind, origin, np.ndim(labels) == 2 and not has_validation,
            val_column, boundary_index, class_values, model_config.context_slices, jit_compile)
    yield TrainingFinished(result, reason, best_epoch, history, boundary_v_rand, averaged_epochs, step, divergence,
                           one_class, one_class_note, kappa, by_training_loss)


def _check_model(result: UNetModel, images, planes: list, truth: np.ndarray, probabilities, names: list, kind: str,
                 origin: tuple, flat: bool, val_column, boundary_index, class_values: list, context: int, jit_compile) -> tuple:
    """:func:`useless_verdict` of the finished model ``result`` on a window of at most :data:`BATCH_NORM_TILE` squared
    pixels of each of up to :data:`BATCH_NORM_TILES` of the ``planes`` of the normalised ``images`` (``truth``: their
    class indices, -1 not annotated; ``probabilities``: theirs if predicted already, else None), labelled as ``predict``
    labels them, without test-time augmentation. ``names``: the planes' slice numbers (none: one image's validation
    columns from ``val_column`` on; ``flat``: a 2-D image); ``origin``: the image's row and column of ``truth``'s (0, 0).
    A PredictionError (NaN probabilities: the checks before let none through) or InputError (slices 3 or 4 pixels wide
    that predict takes for RGB colours) skips the check: (None, None, "")."""
    chosen = [int(i) for i in np.unique(np.linspace(0, len(planes) - 1, BATCH_NORM_TILES).round())]
    bounds = validation_window(truth[chosen] >= 0, len(chosen) * BATCH_NORM_TILE**2, BATCH_NORM_TILE)
    y0, y1, x0, x1 = bounds or (0, truth.shape[1], 0, truth.shape[2])
    picked = [names[i] for i in chosen] if names else []
    if flat:
        where = "the image"
    elif picked:
        where = f"the {kind} {'slice' if len(picked) == 1 else 'slices'} {spans(picked)}"
    else:
        where = "the validation columns" + ("" if bounds else f" ({val_column} and up)")
    if bounds is not None:  # only a window was labelled (the membrane rule: 8.1 s on a whole 2048² plane)
        where = (f"a window of {where} (rows {origin[0] + y0}-{origin[0] + y1 - 1} and columns "
                 f"{origin[1] + x0}-{origin[1] + x1 - 1})")
    check_truth = truth[chosen, y0:y1, x0:x1]
    if len(np.unique(check_truth[check_truth >= 0])) < 2:  # one class annotated here: no sign (nothing predicted)
        return None, None, ""
    try:
        if probabilities is not None:
            probabilities = probabilities.reshape((-1,) + probabilities.shape[-3:])[chosen, y0:y1, x0:x1]
        else:
            if context:  # the whole normalised stack: neighbouring slices are the context
                check_images, check_planes = images[:, y0:y1, x0:x1], [planes[i] for i in chosen]
            elif len(chosen) == 1:  # as a 2-D image: a stack of one (64, 4) slice is refused as an RGB image
                check_images, check_planes = images[planes[chosen[0]], y0:y1, x0:x1], None
            else:
                check_images, check_planes = images[[planes[i] for i in chosen], y0:y1, x0:x1], list(range(len(chosen)))
            probabilities = predict(result, check_images, close_boundaries=False, slices=check_planes, tta=False,
                                    normalized=True, jit_compile=jit_compile).probabilities
            probabilities = probabilities.reshape((-1,) + probabilities.shape[-3:])
    except (PredictionError, InputError):
        return None, None, ""
    rule = effective_boundary_rule(result)
    labels = (_plane_labels(plane, boundary_index, rule) for plane in probabilities)
    only, counts = _check_labels(labels, check_truth, len(class_values))
    return useless_verdict(only, counts, class_values, where)


def format_count(n: int, noun: str) -> str:
    """"1 step", "2 steps": ``n`` and ``noun``, plural unless ``n`` is 1 (for messages)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_share(fraction: float) -> str:
    """A fraction as a percentage for messages: "38.1 %", "99.6 %", "<0.1 %" and ">99.9 %" near the ends (never a
    rounded "0 %" or "100 %" for a share that is neither)."""
    percent = 100 * fraction
    if 0 < percent < 0.1:
        return "<0.1 %"
    if 99.9 < percent < 100:
        return ">99.9 %"
    return f"{percent:.1f} %".replace(".0 %", " %")


def format_seconds(seconds: Optional[float]) -> str:
    """``seconds`` as M:SS, or H:MM:SS from an hour on; "?" for None (an ETA not known yet, before the second step)."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _eta(elapsed: float, first_step_seconds: float, step: int, total_steps: int, budget: Optional[float]) -> Optional[float]:
    """Seconds left, from the rate of the steps after the first (which traces or XLA-compiles the network: spread over
    the run it showed 19 hours for 6 minutes); within the time budget. None while unknown (after the first step)."""
    eta = None
    if step >= 2:
        eta = (elapsed - first_step_seconds) / (step - 1) * (total_steps - step)
    if budget is not None:
        left = max(budget - elapsed, 0.0)
        eta = left if eta is None else min(eta, left)
    return eta


def train(image, labels, model_config=None, train_config=None, init=None, stop=None, pixel_weights=None,
          pixel_size=None, check_one_class: bool = True) -> TrainingFinished:
    """Drain :func:`train_events` (same arguments); returns the final :class:`TrainingFinished`."""
    final = None
    for event in train_events(image, labels, model_config, train_config, init, stop, pixel_weights, pixel_size,
                              check_one_class):
        final = event
    return final


__all__ = [
    "CHANCE_KAPPA",
    "CHANCE_MIN_PIXELS",
    "labels_verdict",
    "spans",
    "DIVERGED_HINT",
    "TrainingDiverged",
    "ONE_CLASS_CHECK_PIXELS",
    "ONE_CLASS_HINT",
    "cohen_kappa",
    "confusion_counts",
    "useless_verdict",
    "BATCH_NORM_TILE",
    "BATCH_NORM_TILES",
    "check_training_memory",
    "check_training_data_memory",
    "training_data_bytes",
    "TRAINING_BYTES_PER_PIXEL",
    "TRAINING_BYTES_PER_PLANE_PIXEL",
    "clear_trainer_cache",
    "EpochEnd",
    "FEW_ANNOTATED_PIXELS",
    "fit_patch_size",
    "format_count",
    "format_seconds",
    "format_share",
    "FRINGE_CLASS_SHARE",
    "FRINGE_SPREAD",
    "FRINGE_TOUCHING",
    "InputError",
    "KEPT_TRAINERS",
    "KEPT_TRAINER_BYTES",
    "RARE_CLASS_SHARE",
    "recompute_batch_norm",
    "resolve_training_jit_compile",
    "SettingNote",
    "split_validation",
    "train",
    "train_events",
    "TrainingEvent",
    "TrainingFinished",
    "TrainingFinishing",
    "TrainingStarted",
    "TrainingStep",
    "validation_column",
    "VALIDATION_MIN_SIDE",
    "VALIDATION_PIXELS",
    "validation_window",
    "WeightAverage",
    "XLA_MIN_TRAINING_MINUTES",
    "XLA_MIN_TRAINING_PIXELS",
]
