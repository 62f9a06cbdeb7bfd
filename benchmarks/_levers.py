"""The previous core's up-convolution, kept as a lever so benchmarks can A/B it against the current core.

napari-unet computes ``UpSampling2D(2)`` + 2x2 'same' ``Conv2D`` as one sub-pixel layer
(``napari_unet._layers.UpConv2D``: four phase convolutions on the low-resolution grid, interleaved; same
weights and function, 9/16 of the multiply-adds, no upsampled tensor). ``build_unet_upsampling`` builds the
U-Net the way the core did before, with the two plain Keras layers (and the seed still does), so the
benchmarks can show what the change buys (variants ``*_upsample``).
"""

from __future__ import annotations

import _common as C


def build_unet_upsampling(config, mixed_precision: bool = False, seed: int | None = None):
    """``napari_unet.model.build_unet`` with each UpConv2D written as UpSampling2D + Conv2D(2x2, relu)
    (same layer names for every layer with weights, same weight shapes: weights transfer one to one).

    Same signature as ``build_unet``, which train_events calls with ``seed=`` (bench_speed's ``*_upsample`` variants
    put this function in its place): ``seed`` draws each layer's initializer and dropout seed from one generator, as
    the core does; without it Keras draws them."""
    C.use_src()
    from napari_unet.model import import_keras, seeded_initializers

    keras = import_keras()
    from keras import layers

    assert config.upsampling == "upsample_conv"
    layer_seed, initializer = seeded_initializers(seed, config.kernel_initializer)  # the core's seeding

    dtype = "mixed_bfloat16" if mixed_precision else "float32"
    conv_kwargs = dict(padding="same", dtype=dtype)

    def conv_block(x, filters, name):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, use_bias=not config.batch_norm, name=f"{name}_conv{i}", kernel_initializer=initializer(),
                              **conv_kwargs)(x)
            if config.batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn{i}", dtype=dtype)(x)
            x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
        return x

    inputs = keras.Input(shape=(None, None, config.network_channels), name="image")
    x, skips = inputs, []
    for level in range(config.depth):
        x = conv_block(x, config.base_filters * 2**level, f"down{level}")
        if config.dropout and level == config.depth - 1:
            x = layers.Dropout(config.dropout, name=f"down{level}_dropout", dtype=dtype, seed=layer_seed())(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool", dtype=dtype)(x)
    x = conv_block(x, config.base_filters * 2**config.depth, "bottom")
    if config.dropout:
        x = layers.Dropout(config.dropout, name="bottom_dropout", dtype=dtype, seed=layer_seed())(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        x = layers.UpSampling2D(2, name=f"up{level}_upsample", dtype=dtype)(x)
        x = layers.Conv2D(filters, 2, activation="relu", name=f"up{level}_conv", kernel_initializer=initializer(), **conv_kwargs)(x)
        x = layers.Concatenate(name=f"up{level}_concat", dtype=dtype)([skips[level], x])
        x = conv_block(x, filters, f"up{level}")
    if config.pre_head_filters:
        x = layers.Conv2D(config.pre_head_filters, 3, activation="relu", name="pre_head", kernel_initializer=initializer(),
                          **conv_kwargs)(x)
    activation = "sigmoid" if config.head == "sigmoid" else "softmax"
    outputs = layers.Conv2D(config.output_channels, 1, name="head_logits", kernel_initializer=initializer("glorot_uniform"), dtype=dtype)(x)
    outputs = layers.Activation(activation, name="probabilities", dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name="unet")


def transfer_weights(src, dst) -> None:
    """Copy weights layer by layer (by name) between a build_unet and a build_unet_upsampling model."""
    names = {layer.name for layer in dst.layers}
    for layer in src.layers:
        if layer.weights and layer.name in names:
            dst.get_layer(layer.name).set_weights(layer.get_weights())
