"""U-Net construction and losses (Keras 3, TensorFlow backend; imported on first use)."""

from __future__ import annotations

import os
import random

from .config import ModelConfig

_BACKEND_READY = False


def import_keras():
    """Import Keras on the TensorFlow backend; returns the ``keras`` module (TensorFlow's C++ start-up lines are
    filtered by the command line only).

    TensorFlow is loaded isolated from other LLVM copies (see :mod:`napari_unet._tensorflow`), so a
    process that also shows napari's OpenGL canvas neither segfaults nor aborts at exit.
    """
    global _BACKEND_READY
    if not _BACKEND_READY:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from ._tensorflow import load_tensorflow, python_random_kept

        with python_random_kept():  # load_tensorflow keeps it too; registering the layers imports Keras
            load_tensorflow()
            from . import _layers  # noqa: F401  (registers napari-unet's layers for loading)
        _BACKEND_READY = True
    import keras

    return keras


#: Moving statistics keep this share of their value per training step (PyTorch's default; Keras's is 0.99). They only
#: serve validation while training runs (a finished model's are recomputed): at 0.99 they still held mostly their
#: initial values after a few hundred steps, and validation scored a network that called every pixel one class.
BATCH_NORM_MOMENTUM = 0.9


def parameter_count(config: ModelConfig) -> int:
    """Weights of :func:`build_unet`'s network for ``config`` (trainable and batch-norm statistics), without building it."""

    def conv(c_in, c_out, k, bias=True):
        return k * k * c_in * c_out + (c_out if bias else 0)

    def block(c_in, filters):
        extra = 4 * filters if config.batch_norm else 0  # gamma, beta, moving mean and variance
        return conv(c_in, filters, 3, not config.batch_norm) + conv(filters, filters, 3, not config.batch_norm) + 2 * extra

    filters = [config.base_filters * 2**level for level in range(config.depth + 1)]
    total, channels = 0, config.network_channels
    for level in range(config.depth):
        total, channels = total + block(channels, filters[level]), filters[level]
    total += block(channels, filters[-1])
    for level in reversed(range(config.depth)):
        total += conv(filters[level + 1], filters[level], 2) + block(2 * filters[level], filters[level])
    last = filters[0]
    if config.pre_head_filters:
        total, last = total + conv(last, config.pre_head_filters, 3), config.pre_head_filters
    return total + conv(last, config.output_channels, 1)


def activation_count(config: ModelConfig, patch_size: int) -> int:
    """Values the convolution blocks of :func:`build_unet` output for one ``patch_size``² patch: pixels times filters
    summed over the blocks (the down and up block of each level, and the bottom one)."""
    total = 0
    for level in range(config.depth + 1):
        pixels = (patch_size // 2**level) ** 2
        total += pixels * config.base_filters * 2**level * (1 if level == config.depth else 2)
    return total


#: :func:`training_memory_bytes`'s terms, fitted to the peak resident memory of 3-step trainings of 30 thousand to 124
#: million weights at 256² and 512² (``benchmarks/bench_training_memory.py``, BENCHMARKS.md "Session 46": 0.96-1.09 times
#: the measured peaks).
TRAINING_BASE_BYTES = 0.8e9  # TensorFlow, Keras and the process itself
TRAINING_BYTES_PER_PARAMETER = 31  # weights, gradients, Adam's two moments, oneDNN's reordered copies, kept copies
TRAINING_BYTES_PER_ACTIVATION = {True: 27, False: 36}  # bfloat16 / float32 convolutions; per block output value


def training_memory_bytes(config: ModelConfig, batch_size: int, patch_size: int, mixed_precision: bool = False) -> int:
    """Estimated peak memory (bytes) of training ``config``'s network on batches of ``batch_size`` patches of
    ``patch_size``²: TensorFlow itself, the weights with their gradients, optimizer moments and kept copies
    (the best and averaged epochs, the delivered network), and the activations a step keeps for its gradients
    (``mixed_precision``: bfloat16 convolutions). The images and labels are not counted."""
    activations = batch_size * activation_count(config, patch_size)
    return int(TRAINING_BASE_BYTES + TRAINING_BYTES_PER_PARAMETER * parameter_count(config)
               + TRAINING_BYTES_PER_ACTIVATION[bool(mixed_precision)] * activations)


def seeded_initializers(seed: int | None, default: str):
    """``(layer_seed, initializer)`` of a network built from ``seed``: ``layer_seed()`` the next layer's seed (None
    without ``seed``), ``initializer(name=default)`` a Keras initializer of that name seeded so (the name itself without
    ``seed``, and for "zeros")."""
    # Each layer gets its own seed drawn from a generator of ``seed``: Keras would draw them from Python's global
    # stream, which a seeded build had to set and restore, rewinding other threads' draws (napari's GUI thread got
    # repeated numbers, and its draws changed the seeded network).
    keras = import_keras()
    seeds = random.Random(seed) if seed is not None else None

    def layer_seed():
        return None if seeds is None else seeds.randint(1, 10**9)

    def initializer(name=default):
        if seeds is None or name == "zeros":
            return name
        class_name = "".join(part.capitalize() for part in name.split("_"))  # he_normal -> HeNormal
        return keras.initializers.get({"class_name": class_name, "config": {"seed": layer_seed()}})

    return layer_seed, initializer


def build_unet(config: ModelConfig, mixed_precision: bool = False, seed: int | None = None):
    """A Keras U-Net for ``config``: input (None, None, network_channels) float32, output probabilities.

    Layers are Keras layers and napari-unet's registered :class:`~napari_unet._layers.UpConv2D`, so the
    saved file loads in Keras safe mode.
    With ``mixed_precision`` the convolutions compute in bfloat16 and the head stays float32.
    ``seed``: initial weights and dropout seeds drawn from it (the same network for the same seed), without touching
    Python's global ``random`` (where Keras draws them) of any thread; without a seed they come from that stream, as in
    Keras. Not ``keras.utils.set_random_seed``: its ``tf.random.set_seed`` empties TensorFlow's kernel cache, so a kept
    trainer's step would be instantiated again (~2 s).
    """
    keras = import_keras()
    from keras import layers

    from ._layers import UpConv2D

    layer_seed, initializer = seeded_initializers(seed, config.kernel_initializer)
    dtype = "mixed_bfloat16" if mixed_precision else "float32"
    # channels last and float32 inputs whatever Keras' global settings say (another plugin's, ~/.keras/keras.json):
    # channels_first failed to build any network, floatx float16 rounded the images
    conv_kwargs = dict(padding="same", dtype=dtype, data_format="channels_last")

    def conv_block(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, use_bias=not config.batch_norm, name=f"{name}_conv{i}", kernel_initializer=initializer(),
                              **conv_kwargs)(x)
            if config.batch_norm:
                x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn{i}", dtype=dtype)(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
        return x

    inputs = keras.Input(shape=(None, None, config.network_channels), name="image", dtype="float32")
    x = inputs
    skips = []
    for level in range(config.depth):
        x = conv_block(x, config.base_filters * 2**level, f"down{level}")
        if config.dropout and level == config.depth - 1:
            x = layers.Dropout(config.dropout, name=f"down{level}_dropout", dtype=dtype, seed=layer_seed())(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool", dtype=dtype, data_format="channels_last")(x)
    x = conv_block(x, config.base_filters * 2**config.depth, "bottom")
    if config.dropout:
        x = layers.Dropout(config.dropout, name="bottom_dropout", dtype=dtype, seed=layer_seed())(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        if config.upsampling == "transpose":
            x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_transpose", kernel_initializer=initializer(),
                                       **conv_kwargs)(x)
        else:  # UpSampling2D(2) + Conv2D(filters, 2, relu), computed on the low-resolution grid
            x = UpConv2D(filters, kernel_initializer=initializer(), name=f"up{level}_conv", dtype=dtype)(x)
        x = layers.Concatenate(name=f"up{level}_concat", dtype=dtype)([skips[level], x])
        x = conv_block(x, filters, f"up{level}")
    if config.pre_head_filters:
        x = layers.Conv2D(config.pre_head_filters, 3, activation="relu", name="pre_head", kernel_initializer=initializer(),
                          **conv_kwargs)(x)
    activation = "sigmoid" if config.head == "sigmoid" else "softmax"
    outputs = layers.Conv2D(config.output_channels, 1, name="head_logits", kernel_initializer=initializer("glorot_uniform"),
                            **conv_kwargs)(x)
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name="unet")


def fold_batch_norm(keras_model, config: ModelConfig, mixed_precision: bool = False):
    """An inference copy of a :func:`build_unet` network with each BatchNormalization folded into its convolution.

    Same function on the same inputs (round-off only), one pass less over every feature map: about 12 %
    less network time per 512² tile on a 2-core CPU (BENCHMARKS.md). The copy computes in bfloat16 with
    ``mixed_precision``, else in float32, whatever ``keras_model`` was trained with; ``keras_model`` is not
    modified, and is returned as is when ``config`` has no batch norm and it already computes that way.
    """
    import dataclasses

    import numpy as np

    if not folds_to_copy(keras_model, config, mixed_precision):
        return keras_model
    # every weight is set from keras_model below; zeros skip drawing random ones (0.1-0.2 s of each prediction start)
    inference_config = dataclasses.replace(config, batch_norm=False, kernel_initializer="zeros")
    folded = build_unet(inference_config, mixed_precision=mixed_precision, seed=0)  # seeded: the caller's random stream stays
    originals = {layer.name: layer for layer in keras_model.layers}
    for layer in folded.layers:
        if not layer.weights:
            continue
        source = originals[layer.name]
        norm = originals.get(layer.name.replace("_conv", "_bn")) if layer.name.endswith(("_conv1", "_conv2")) else None
        if norm is None:
            layer.set_weights(source.get_weights())
            continue
        (kernel,) = source.get_weights()
        gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())
        scale = gamma / np.sqrt(variance + norm.epsilon)
        layer.set_weights([(kernel * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)])
    return folded


def folds_to_copy(keras_model, config: ModelConfig, mixed_precision: bool = False) -> bool:
    """Whether :func:`fold_batch_norm` builds a copy (batch norm to fold, or another precision) or returns the network."""
    return config.batch_norm or _compute_policy(keras_model) != ("mixed_bfloat16" if mixed_precision else "float32")


def _compute_policy(keras_model) -> str:
    """Name of the dtype policy of the network's first convolution ("float32" or "mixed_bfloat16")."""
    keras = import_keras()
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer.dtype_policy.name
    return "float32"


def recompute_batch_norm_statistics(keras_model, batches) -> int:
    """Set every BatchNormalization's moving mean and variance to their average over ``batches``.

    ``batches``: iterable of (B, Y, X, network_channels) float32 network inputs. During training the
    moving statistics follow augmented patches and weights that were still changing; recomputed on
    unaugmented tiles of the training images they match what prediction sees ("precise batch norm").
    Only the moving statistics of ``keras_model`` change (in place); returns the number of batches used.
    """
    return BatchNormStatistics(keras_model).recompute(batches)


class BatchNormStatistics:
    """:func:`recompute_batch_norm_statistics` for one network, keeping its traced graph for later calls
    (tracing took 1.3 s of each recomputation on a 2-core CPU; a kept training network reuses it)."""

    def __init__(self, keras_model):
        keras = import_keras()
        self.keras_model = keras_model
        self.norms = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        self._forward = None

    def recompute(self, batches) -> int:
        """Recompute the network's statistics on ``batches`` (as :func:`recompute_batch_norm_statistics`)."""
        import tensorflow as tf

        norms = self.norms
        if not norms:
            return 0
        momenta = [layer.momentum for layer in norms]
        sums = None
        count = 0
        try:
            for layer in norms:  # momentum 0: each call leaves its batch's statistics in the moving ones
                layer.momentum = 0.0
            if self._forward is None:  # traced with momentum 0, which the graph keeps
                # A graph, not eager calls: 0.5 s instead of 0.85 s per 512² tile of the default network (2-core CPU)
                model = self.keras_model
                self._forward = tf.function(lambda batch: model(batch, training=True), reduce_retracing=True, autograph=False)
            for batch in batches:
                self._forward(tf.constant(batch))
                stats = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in norms]
                sums = stats if sums is None else [(m + sm, v + sv) for (m, v), (sm, sv) in zip(stats, sums)]
                count += 1
        finally:
            for layer, momentum in zip(norms, momenta):
                layer.momentum = momentum
        if count:
            for layer, (mean_sum, variance_sum) in zip(norms, sums):
                layer.moving_mean.assign(mean_sum / count)
                layer.moving_variance.assign(variance_sum / count)
        return count


def soft_skeleton(x, iterations: int):
    """Soft skeleton of (B, Y, X, 1) float maps in [0, 1] (clDice, Shit et al. CVPR 2021): iterated min/max pooling."""
    ops = import_keras().ops

    def erode(v):  # cross-shaped minimum, as the clDice reference code
        return ops.minimum(-ops.max_pool(-v, (3, 1), 1, "same", "channels_last"), -ops.max_pool(-v, (1, 3), 1, "same", "channels_last"))

    def open_(v):
        return ops.max_pool(erode(v), (3, 3), 1, "same", "channels_last")

    skeleton = ops.relu(x - open_(x))
    for _ in range(iterations):
        x = erode(x)
        delta = ops.relu(x - open_(x))
        skeleton = skeleton + ops.relu(delta - skeleton * delta)
    return skeleton


def masked_loss(
    config: ModelConfig, dice_weight: float = 0.0, cldice_weight: float = 0.0, cldice_class=None, cldice_iterations: int = 5
):
    """Loss on targets (B, Y, X, 2) float32: channel 0 = class index, channel 1 = pixel weight.

    Pixels of weight 0 (not annotated) do not contribute. Cross-entropy is the weighted mean;
    with ``dice_weight`` > 0 a soft Dice term over annotated pixels (mean over classes) is added;
    with ``cldice_weight`` > 0 and a ``cldice_class`` (a thin boundary class), the clDice term of that
    class: soft skeletons of prediction and truth, each covered by the other (a gap in a predicted
    membrane leaves the true skeleton uncovered).
    """
    keras = import_keras()
    ops = keras.ops
    n_classes = config.n_classes
    sigmoid = config.head == "sigmoid"
    use_cldice = cldice_weight > 0 and cldice_class is not None

    def loss(y_true, y_pred):
        index = ops.cast(y_true[..., 0], "int32")
        weight = y_true[..., 1]
        annotated = ops.cast(weight > 0, "float32")
        y_pred = ops.cast(y_pred, "float32")
        eps = 1e-7
        if sigmoid:
            p1 = ops.clip(y_pred[..., 0], eps, 1 - eps)
            probs = ops.stack([1 - p1, p1], axis=-1)
        else:
            probs = ops.clip(y_pred, eps, 1.0)
        onehot = ops.one_hot(index, n_classes, dtype="float32")  # (floatx may be another: float64 failed the step)
        ce = -ops.sum(onehot * ops.log(probs), axis=-1)
        total = ops.sum(weight * ce) / ops.maximum(ops.sum(weight), eps)
        if dice_weight:
            mask = annotated[..., None]
            intersection = ops.sum(probs * onehot * mask, axis=(0, 1, 2))
            sizes = ops.sum(probs * mask, axis=(0, 1, 2)) + ops.sum(onehot * mask, axis=(0, 1, 2))
            dice = (2 * intersection + 1.0) / (sizes + 1.0)
            total = total + dice_weight * (1.0 - ops.mean(dice))
        if use_cldice:
            predicted = probs[..., cldice_class : cldice_class + 1] * annotated[..., None]
            true = onehot[..., cldice_class : cldice_class + 1] * annotated[..., None]
            predicted_skeleton, true_skeleton = soft_skeleton(predicted, cldice_iterations), soft_skeleton(true, cldice_iterations)
            precision = (ops.sum(predicted_skeleton * true) + 1.0) / (ops.sum(predicted_skeleton) + 1.0)
            sensitivity = (ops.sum(true_skeleton * predicted) + 1.0) / (ops.sum(true_skeleton) + 1.0)
            total = total + cldice_weight * (1.0 - 2.0 * precision * sensitivity / (precision + sensitivity))
        return total

    return loss


def float32_loss(loss):
    """``loss`` (a function of y_true, y_pred) as a Keras loss that computes in float32: a function given to ``compile``
    gets its inputs cast to Keras' global floatx, which another plugin or ~/.keras/keras.json may set to float64 (the
    first step failed) or float16 (the loss rounded)."""
    keras = import_keras()

    class Float32Loss(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return loss(y_true, y_pred)

    return Float32Loss(name="loss", dtype="float32")


__all__ = [
    "seeded_initializers",
    "BATCH_NORM_MOMENTUM",
    "parameter_count",
    "activation_count",
    "TRAINING_BASE_BYTES",
    "TRAINING_BYTES_PER_PARAMETER",
    "TRAINING_BYTES_PER_ACTIVATION",
    "training_memory_bytes",
    "build_unet",
    "fold_batch_norm",
    "folds_to_copy",
    "recompute_batch_norm_statistics",
    "BatchNormStatistics",
    "soft_skeleton",
    "masked_loss",
    "float32_loss",
]
