"""Typed configuration of the model and of training, with presets and a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """A configuration value is out of range; the message says which and why."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


_SIMPLE_TYPES = {"int": numbers.Integral, "float": numbers.Real, "bool": bool, "str": str}
_TYPE_WORDS = {numbers.Integral: "a whole number", numbers.Real: "a number", bool: "true or false", str: "a string"}


def _check_field_types(config) -> None:
    """ConfigError for a field that is not of its annotated type (int, float, bool, str, or Optional of one);
    numbers are stored as Python int / float. A value of 2.5 for a count failed later with a raw error."""
    for field in fields(config):
        optional = field.type.startswith("Optional[")
        kind = _SIMPLE_TYPES.get(field.type.removeprefix("Optional[").removesuffix("]") if optional else field.type)
        value = getattr(config, field.name)
        if kind is None or (optional and value is None):
            continue
        _check(
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool)),
            f"{field.name} must be {_TYPE_WORDS[kind]}, got {value!r}",
        )
        if kind in (numbers.Integral, numbers.Real):
            object.__setattr__(config, field.name, int(value) if kind is numbers.Integral else float(value))


def _bool_or_auto(name: str, value) -> Union[bool, str]:
    """True, False or "auto"; the strings "true" / "false" (command lines) become booleans."""
    text = str(value).lower()
    if isinstance(value, bool) or text in ("true", "false"):
        return text == "true"
    _check(text == "auto", f"{name} must be true, false or 'auto', got {value!r}")
    return "auto"


#: Keras initializer names a ModelConfig may give its convolutions ("zeros": inference copies whose weights are set).
KERNEL_INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal", "lecun_uniform", "zeros")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a 2-D U-Net; the network is a pure function of this config.

    The input is (batch, Y, X, network_channels) float32 with Y and X multiples of ``2 ** depth``;
    the output is per-class probabilities (batch, Y, X, n_classes), or (batch, Y, X, 1) for a
    sigmoid head on two classes (the probability of class index 1).
    """

    depth: int = 4
    base_filters: int = 32
    batch_norm: bool = True
    dropout: float = 0.0
    n_classes: int = 2
    input_channels: int = 1
    head: str = "softmax"  # "softmax" or "sigmoid" (two classes only)
    pre_head_filters: int = 0  # the seed's 2-channel 3x3 conv before the 1x1 head; 0 = none
    upsampling: str = "upsample_conv"  # "upsample_conv" (UpSampling2D + 2x2 conv) or "transpose"
    kernel_initializer: str = "he_normal"
    downscale: int = 1  # the network sees images shrunk by this factor (block mean); outputs are upsampled back
    context_slices: int = 0  # neighbouring slices on each side stacked as extra channels (2-D images repeat themselves)
    # > 0: inputs standardised by their Gaussian neighbourhood of this sigma (pixels) after the percentile
    # normalisation (napari_unet.data.local_contrast); 0 = off, as in model files written before it existed
    local_contrast_sigma: float = 0.0

    def __post_init__(self):
        _check_field_types(self)
        _check(1 <= self.depth <= 6, f"depth must be 1..6, got {self.depth}")
        _check(1 <= self.base_filters <= 256, f"base_filters must be 1..256, got {self.base_filters}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.n_classes >= 2, f"n_classes must be at least 2, got {self.n_classes}")
        _check(1 <= self.input_channels <= 64, f"input_channels must be 1..64, got {self.input_channels}")
        _check(self.head in ("softmax", "sigmoid"), f"head must be 'softmax' or 'sigmoid', got {self.head!r}")
        _check(
            self.head != "sigmoid" or self.n_classes == 2,
            f"a sigmoid head needs exactly 2 classes, got {self.n_classes}",
        )
        _check(0 <= self.pre_head_filters <= 1024, f"pre_head_filters must be 0..1024, got {self.pre_head_filters}")
        _check(1 <= self.downscale <= 8, f"downscale must be 1..8, got {self.downscale}")
        _check(0 <= self.context_slices <= 3, f"context_slices must be 0..3, got {self.context_slices}")
        _check(0 <= self.local_contrast_sigma <= 1000, f"local_contrast_sigma must be 0..1000 pixels, got {self.local_contrast_sigma}")
        _check(
            self.kernel_initializer in KERNEL_INITIALIZERS,
            f"kernel_initializer must be one of {list(KERNEL_INITIALIZERS)}, got {self.kernel_initializer!r}",
        )
        _check(
            self.upsampling in ("upsample_conv", "transpose"),
            f"upsampling must be 'upsample_conv' or 'transpose', got {self.upsampling!r}",
        )

    @property
    def size_multiple(self) -> int:
        """Input Y and X must be multiples of this (one factor 2 per pooling)."""
        return 2**self.depth

    @property
    def network_channels(self) -> int:
        """Channels of the network's input: each image channel of the slice and its context slices."""
        return self.input_channels * (2 * self.context_slices + 1)

    @property
    def output_channels(self) -> int:
        return 1 if self.head == "sigmoid" else self.n_classes


#: Time budgets from which the "auto" training settings that pay only in long runs switch on (noise augmentation,
#: session 29; merge level 0.7, session 30): on ISBI both paid at 30 minutes and not at 10.
LONG_BUDGET_MINUTES = 30.0


def is_long_budget(max_minutes: Optional[float]) -> bool:
    """True for time budgets of :data:`LONG_BUDGET_MINUTES` or more (no budget: False)."""
    return max_minutes is not None and max_minutes >= LONG_BUDGET_MINUTES


#: Noise augmentation's strength when it is on (TrainConfig.augment_noise "auto" with a long budget, or switched on).
NOISE_AUGMENTATION = 0.1


def resolve_augment_noise(value: Union[float, str], max_minutes: Optional[float]) -> float:
    """``"auto"``: :data:`NOISE_AUGMENTATION` for time budgets of 30 minutes or more, else 0; numbers pass.

    On ISBI (AMD Zen 4, two seeds) noise augmentation raised V_rand on the unseen, noisier slices 15-19 from 0.920 /
    0.951 to 0.966 / 0.962 in 30 minutes and kept the late epochs from degrading there, but in 10 minutes it scored
    0.938 against 0.946 on a same-day pair (BENCHMARKS.md, session 29).
    """
    if value == "auto":
        return NOISE_AUGMENTATION if is_long_budget(max_minutes) else 0.0
    return float(value)


#: Merge levels the membrane rule picks from (on the validation slices) after a short run, and after a long one.
MERGE_LEVELS = (0.5, 0.6)
MERGE_LEVELS_LONG = (0.5, 0.6, 0.7)


def resolve_merge_levels(value: Union[tuple, str], max_minutes: Optional[float]) -> tuple:
    """``"auto"``: :data:`MERGE_LEVELS_LONG` for time budgets of 30 minutes or more, else :data:`MERGE_LEVELS`.

    ISBI's three validation slices always pick the highest level offered. On the unseen slices 0.7 was better than
    the level picked from (0.5, 0.6) for 10 of 11 networks trained 30 minutes (bfloat16 and float32; mean V_rand
    +0.006), but worse for 16 of 19 float32 networks trained 10 minutes (BENCHMARKS.md, sessions 19 and 30).
    Tuples pass, as sorted floats.
    """
    if value == "auto":
        return MERGE_LEVELS_LONG if is_long_budget(max_minutes) else MERGE_LEVELS
    return _merge_levels(value)


def _merge_levels(levels) -> tuple:
    """``levels`` as sorted distinct floats in (0, 1) (ties in tuning keep the lower level); else :class:`ConfigError`."""
    message = f"merge_levels must be 'auto' or levels in (0, 1), got {levels!r}"
    _check(isinstance(levels, (tuple, list)) and len(levels) > 0, message)
    _check(all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1 for v in levels), message)
    return tuple(sorted({float(v) for v in levels}))


#: The smallest side of a training patch (pixels); smaller slices are mirrored to it.
MIN_PATCH_SIZE = 16


@dataclass(frozen=True)
class TrainConfig:
    """How to train: sampling, augmentation, loss, optimisation and budget."""

    epochs: int = 40
    steps_per_epoch: int = 25
    batch_size: int = 4
    patch_size: int = 256
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # "constant" or "cosine" (decay to 1 % over all steps)
    ema_momentum: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    recompute_batch_norm: bool = True  # after training: batch-norm statistics from unaugmented training tiles
    # > 0: deliver the mean of the epoch-end weights after this fraction of the run instead of the best
    # validation epoch (weight averaging; the mean always gets recomputed batch-norm statistics)
    average_weights_from: float = 0.65
    loss: str = "ce+dice"  # "ce" or "ce+dice"
    dice_weight: float = 0.5
    # > 0: add clDice (Shit et al. 2021) on a thin boundary class, which penalises gaps in predicted membranes
    cldice_weight: float = 0.0
    cldice_iterations: int = 5  # soft-skeleton iterations: half the widest boundary to thin, in pixels
    class_weighting: str = "balanced"  # "none" or "balanced" (inverse sqrt frequency)
    border_weight: float = 10.0  # U-Net paper's w0 on thin boundaries between cells (0 = off)
    border_sigma: float = 5.0  # U-Net paper's sigma (pixels)
    augment_flips: bool = True  # left-right mirror images
    # 90-degree turns (square patches); "auto": on unless the labels are layered top to bottom (OCT layers:
    # labels.layer_order), whose network must know up from down. Model files record the choice, and prediction's
    # test-time augmentation then keeps tiles upright.
    augment_rotations: Union[bool, str] = "auto"
    augment_elastic: bool = True
    augment_intensity: bool = True
    elastic_alpha: float = 10.0  # displacement (pixels) of the coarse elastic grid
    elastic_grid: int = 3  # 3x3 control points per patch, as in the U-Net paper
    # > 0: add Gaussian pixel noise to each patch, its std drawn from [0, augment_noise) in units of the normalised
    # range (local contrast: 1/6 = one local standard deviation), so the network copes with noisier sections;
    # "auto": on (0.1) for budgets of 30 minutes or more (resolve_augment_noise); model files record the number
    augment_noise: Union[float, str] = "auto"
    # levels at which the membrane rule may merge regions (postprocess.merge_regions), picked by V_rand on the
    # validation slices; "auto": up to 0.7 for budgets of 30 minutes or more (resolve_merge_levels)
    merge_levels: Union[tuple, str] = "auto"
    annotated_center_fraction: float = 0.9  # share of patches drawn around an annotated pixel (anywhere in them)
    val_fraction: float = 0.2
    val_every: int = 1  # validate every N epochs
    seed: int = 0
    max_minutes: Optional[float] = None
    ignore_value: Optional[int] = None
    percentiles: tuple = (1.0, 99.8)
    # "auto" (napari_unet.hardware): bfloat16 on CPUs with AMX / AVX512-BF16 (1.7x the steps/s of float32 + XLA
    # there); XLA on float32 CPUs without AVX-512 (+6-14 % there, slower than oneDNN with AVX-512). BENCHMARKS.md.
    mixed_precision: Union[bool, str] = "auto"
    jit_compile: Union[bool, str] = "auto"

    def __post_init__(self):
        _check_field_types(self)
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.steps_per_epoch >= 1, f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(MIN_PATCH_SIZE <= self.patch_size <= 4096, f"patch_size must be {MIN_PATCH_SIZE}..4096, got {self.patch_size}")
        _check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _check(0 <= self.ema_momentum < 1, f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        _check(0 <= self.average_weights_from < 1, f"average_weights_from must be in [0, 1), got {self.average_weights_from}")
        _check(self.lr_schedule in ("constant", "cosine"), f"unknown lr_schedule {self.lr_schedule!r}")
        _check(self.cldice_weight >= 0, f"cldice_weight must be >= 0, got {self.cldice_weight}")
        _check(self.cldice_iterations >= 1, f"cldice_iterations must be >= 1, got {self.cldice_iterations}")
        _check(self.loss in ("ce", "ce+dice"), f"loss must be 'ce' or 'ce+dice', got {self.loss!r}")
        _check(self.class_weighting in ("none", "balanced"), f"unknown class_weighting {self.class_weighting!r}")
        _check(self.border_weight >= 0 and self.border_sigma > 0, "border_weight must be >= 0 and border_sigma > 0")
        for name in ("dice_weight", "cldice_weight", "border_weight", "border_sigma", "elastic_alpha"):
            value = getattr(self, name)
            _check(0 <= value < math.inf, f"{name} must be a finite number >= 0, got {value}")
        _check(self.elastic_grid >= 2, f"elastic_grid must be >= 2 control points per side, got {self.elastic_grid}")
        _check(self.val_every >= 1, f"val_every must be >= 1 (validate every N epochs), got {self.val_every}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        noise = self.augment_noise
        _check(
            noise == "auto" or (isinstance(noise, (int, float)) and not isinstance(noise, bool) and 0 <= noise <= 1),
            f"augment_noise must be in [0, 1] or 'auto', got {noise!r}",
        )
        if not (isinstance(self.merge_levels, str) and self.merge_levels == "auto"):
            object.__setattr__(self, "merge_levels", _merge_levels(self.merge_levels))
        _check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.max_minutes is None or 0 < self.max_minutes < math.inf, f"max_minutes must be a positive number of minutes, got {self.max_minutes}")
        _check(0 <= self.annotated_center_fraction <= 1, "annotated_center_fraction must be in [0, 1]")
        for name in ("mixed_precision", "jit_compile", "augment_rotations"):
            object.__setattr__(self, name, _bool_or_auto(name, getattr(self, name)))
        _check(
            isinstance(self.percentiles, (tuple, list)) and len(self.percentiles) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in self.percentiles),
            f"percentiles must be two numbers (low, high), got {self.percentiles!r}",
        )
        lo, hi = self.percentiles
        _check(0 <= lo < hi <= 100, f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (float(lo), float(hi)))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainConfig
    description: str = ""
    auto_depth: bool = False  # the depth follows the time budget and the machine (hardware.resolve_depth)

    def model_for(self, train: TrainConfig) -> ModelConfig:
        """The preset's network for a run with ``train``: with ``auto_depth``, at the depth its budget calls for."""
        if not self.auto_depth:
            return self.model
        from .hardware import AUTO, resolve_depth

        return dataclasses.replace(self.model, depth=resolve_depth(AUTO, train.max_minutes, train.mixed_precision))


PRESETS: dict[str, Preset] = {
    "default": Preset(
        # local contrast: on ISBI (4 seeds, 10 min) mean V_rand +0.013, weak seeds +0.03 (BENCHMARKS.md, session 13)
        ModelConfig(depth=4, base_filters=16, batch_norm=True, local_contrast_sigma=24.0),
        TrainConfig(),
        "fast CPU U-Net: 16->256 filters (depth 4; depth 5 for budgets of 30 min or more with AMX bfloat16 or a GPU), "
        "batch norm, softmax, cross-entropy + Dice, elastic augmentation, "
        "inputs standardised by their neighbourhood (local contrast, sigma 24 px)",
        auto_depth=True,
    ),
    "classic": Preset(
        ModelConfig(
            depth=4,
            base_filters=64,
            batch_norm=False,
            dropout=0.5,
            head="sigmoid",
            pre_head_filters=2,
            upsampling="upsample_conv",
        ),
        TrainConfig(
            batch_size=2,
            learning_rate=1e-4,
            lr_schedule="constant",
            loss="ce",
            class_weighting="none",
            border_weight=0.0,
            augment_elastic=False,
            augment_noise=0.0,
            average_weights_from=0.0,
        ),
        "the seed's U-Net: 64->1024 filters, 4 poolings, dropout 0.5, sigmoid head, Adam 1e-4, binary cross-entropy",
    ),
}


def check_patch_size(patch_size: int, model_config: ModelConfig) -> None:
    """:class:`ConfigError` unless ``patch_size`` fits the network (a multiple of ``2 ** depth``)."""
    if patch_size % model_config.size_multiple:
        raise ConfigError(
            f"patch size {patch_size} is not a multiple of {model_config.size_multiple} "
            f"(a depth-{model_config.depth} U-Net halves it {model_config.depth} times), e.g. "
            f"{max(model_config.size_multiple, patch_size // model_config.size_multiple * model_config.size_multiple)}"
        )


def preset(name: str) -> Preset:
    """The named preset ("default" or "classic")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def to_dict(config) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass."""
    out = dataclasses.asdict(config)
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


def from_dict(cls, data: dict[str, Any]):
    """Config of class ``cls`` from a dict; unknown keys raise :class:`ConfigError`."""
    _check(isinstance(data, dict), f"a {cls.__name__} must be a JSON object (a dict), got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"invalid {cls.__name__}: {err}") from None


def to_json(config) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def from_json(cls, text: str):
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"invalid {cls.__name__} JSON: {err}") from None
    return from_dict(cls, data)


__all__ = [
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "Preset",
    "PRESETS",
    "preset",
    "check_patch_size",
    "is_long_budget",
    "resolve_augment_noise",
    "resolve_merge_levels",
    "NOISE_AUGMENTATION",
    "to_dict",
    "from_dict",
    "to_json",
    "from_json",
    "KERNEL_INITIALIZERS",
    "LONG_BUDGET_MINUTES",
    "MIN_PATCH_SIZE",
    "MERGE_LEVELS",
    "MERGE_LEVELS_LONG",
]
