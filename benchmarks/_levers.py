"""Prototype of a candidate core change, measured by bench_ab.py (contenders keras_subpix, keras_subpix_xla).

Sub-pixel up-convolution: ``UpSampling2D(2)`` (nearest) followed by a 2x2 'same' ``Conv2D`` computes, for each
of the four output phases (row parity a, column parity b), a small convolution of the LOW-resolution input:

    phase (0,0): 1x1 kernel  W[0,0]+W[0,1]+W[1,0]+W[1,1]
    phase (0,1): 1x2 kernel  [W[0,0]+W[1,0], W[0,1]+W[1,1]]      (columns j, j+1; zero past the right edge)
    phase (1,0): 2x1 kernel  [W[0,0]+W[0,1], W[1,0]+W[1,1]]      (rows i, i+1; zero past the bottom edge)
    phase (1,1): 2x2 kernel  W                                     (rows i, i+1, columns j, j+1)

then interleaves them (depth_to_space). Same weights, same function (float rounding only), 9 instead of 16
multiply-accumulates per low-resolution pixel and channel pair, and the 4x upsampled tensor is never built.
Keras 'same' padding for an even kernel pads one row/column at the bottom/right, which is what the
zero past the edge reproduces.
"""

from __future__ import annotations

import _common as C


_UPCONV = None


def _upconv_layer_class():
    """The layer class (created once; written with keras.ops only, as it would go into napari_unet/model.py)."""
    global _UPCONV
    if _UPCONV is not None:
        return _UPCONV
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="napari_unet_bench")
    class SubPixelUpConv2D(keras.layers.Layer):
        """UpSampling2D(2) + Conv2D(filters, 2, padding="same", activation="relu") computed on the low-resolution
        grid: four phase convolutions (1x1, 1x2, 2x1, 2x2 kernels derived from the same 2x2 kernel), interleaved.
        Same weights and function as the two layers it replaces; 9/16 of their multiply-adds; no upsampled tensor."""

        def __init__(self, filters, kernel_initializer="he_normal", **kwargs):
            super().__init__(**kwargs)
            self.filters = filters
            self.kernel_initializer = keras.initializers.get(kernel_initializer)

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(2, 2, input_shape[-1], self.filters), initializer=self.kernel_initializer)
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

        def call(self, x):
            w = ops.cast(self.kernel, x.dtype)
            xp = ops.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])  # Keras 'same' for k=2 pads bottom/right
            y00 = ops.conv(x, ops.sum(w, axis=(0, 1), keepdims=True))
            y01 = ops.conv(xp[:, :-1], ops.sum(w, axis=0, keepdims=True))
            y10 = ops.conv(xp[:, :, :-1], ops.sum(w, axis=1, keepdims=True))
            y11 = ops.conv(xp, w)
            b, h, wd = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
            y = ops.stack([ops.stack([y00, y01], axis=3), ops.stack([y10, y11], axis=3)], axis=2)  # (B, H, 2, W, 2, F)
            y = ops.reshape(y, (b, 2 * h, 2 * wd, self.filters))
            return ops.relu(y + ops.cast(self.bias, x.dtype))

        def compute_output_shape(self, input_shape):
            b, h, w, _ = input_shape
            return (b, None if h is None else 2 * h, None if w is None else 2 * w, self.filters)

        def get_config(self):
            return {**super().get_config(), "filters": self.filters,
                    "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}

    _UPCONV = SubPixelUpConv2D
    return _UPCONV


def build_unet_subpixel(config, mixed_precision: bool = False):
    """``napari_unet.model.build_unet`` with each UpSampling2D + 2x2 Conv2D replaced by SubPixelUpConv2D
    (same layer names for every other layer, same weight shapes: weights transfer one to one)."""
    C.use_src()
    from napari_unet.model import import_keras

    keras = import_keras()
    from keras import layers

    assert config.upsampling == "upsample_conv"
    Up = _upconv_layer_class()
    dtype = "mixed_bfloat16" if mixed_precision else "float32"
    conv_kwargs = dict(padding="same", kernel_initializer=config.kernel_initializer, dtype=dtype)

    def conv_block(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, use_bias=not config.batch_norm, name=f"{name}_conv{i}", **conv_kwargs)(x)
            if config.batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn{i}", dtype=dtype)(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
        return x

    inputs = keras.Input(shape=(None, None, config.input_channels), name="image")
    x, skips = inputs, []
    for level in range(config.depth):
        x = conv_block(x, config.base_filters * 2**level, f"down{level}")
        if config.dropout and level == config.depth - 1:
            x = layers.Dropout(config.dropout, name=f"down{level}_dropout", dtype=dtype)(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool", dtype=dtype)(x)
    x = conv_block(x, config.base_filters * 2**config.depth, "bottom")
    if config.dropout:
        x = layers.Dropout(config.dropout, name="bottom_dropout", dtype=dtype)(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        x = Up(filters, kernel_initializer=config.kernel_initializer, name=f"up{level}_conv", dtype=dtype)(x)
        x = layers.Concatenate(name=f"up{level}_concat", dtype=dtype)([skips[level], x])
        x = conv_block(x, filters, f"up{level}")
    if config.pre_head_filters:
        x = layers.Conv2D(config.pre_head_filters, 3, activation="relu", name="pre_head", **conv_kwargs)(x)
    activation = "sigmoid" if config.head == "sigmoid" else "softmax"
    outputs = layers.Conv2D(config.output_channels, 1, name="head_logits", dtype=dtype)(x)
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name="unet")


def transfer_weights(src, dst) -> None:
    """Copy weights layer by layer (by name) from a build_unet model to a build_unet_subpixel model."""
    names = {layer.name for layer in dst.layers}
    for layer in src.layers:
        if layer.weights and layer.name in names:
            dst.get_layer(layer.name).set_weights(layer.get_weights())
