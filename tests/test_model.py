import numpy as np
import pytest

from napari_unet.config import ModelConfig, preset
from napari_unet.model import build_unet, fold_batch_norm, import_keras, masked_loss, recompute_batch_norm_statistics


def test_classic_preset_has_the_seed_parameter_count():
    model = build_unet(preset("classic").model)
    # zhixuhao/unet model.summary(): 31,031,685 parameters
    assert model.count_params() == 31_031_685
    assert model.output_shape == (None, None, None, 1)


@pytest.mark.parametrize("upsampling", ["upsample_conv", "transpose"])
def test_unet_is_fully_convolutional(upsampling):
    config = ModelConfig(depth=3, base_filters=4, n_classes=3, upsampling=upsampling)
    model = build_unet(config)
    for shape in [(1, 32, 48, 1), (2, 64, 16, 1)]:
        out = np.asarray(model.predict_on_batch(np.zeros(shape, np.float32)))
        assert out.shape == shape[:3] + (3,)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 8, 8, 6)])
def test_up_convolution_equals_upsampling_then_2x2_convolution(shape):
    keras = import_keras()
    from napari_unet._layers import UpConv2D

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    reference = keras.Sequential([keras.layers.UpSampling2D(2), keras.layers.Conv2D(4, 2, padding="same", activation="relu")])
    reference.build(shape)
    kernel = np.random.default_rng(1).normal(size=(2, 2, shape[-1], 4)).astype(np.float32)
    bias = np.random.default_rng(2).normal(size=4).astype(np.float32)
    reference.layers[1].set_weights([kernel, bias])
    layer = UpConv2D(4)
    layer.build(shape)
    layer.set_weights([kernel, bias])
    expected = np.asarray(reference(x))
    out = np.asarray(layer(x))
    assert out.shape == (shape[0], 2 * shape[1], 2 * shape[2], 4)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_folding_batch_norm_keeps_the_network_function():
    keras = import_keras()
    config = ModelConfig(depth=2, base_filters=4, n_classes=3)
    model = build_unet(config)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics, so that folding has something to fold
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.2, 3, n)])
    before = [w.copy() for w in model.get_weights()]
    x = rng.random((2, 32, 48, 1)).astype(np.float32)
    folded = fold_batch_norm(model, config)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    # float32: folding reorders the arithmetic, so outputs of ~0.7 may differ by ~1e-5 (random initial weights)
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-4, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
    plain_config = ModelConfig(depth=2, base_filters=4, batch_norm=False)
    plain = build_unet(plain_config)
    assert fold_batch_norm(plain, plain_config) is plain


def test_inference_copy_computes_in_the_requested_precision_whatever_the_training_precision():
    config = ModelConfig(depth=2, base_filters=4, batch_norm=False)
    trained_bf16 = build_unet(config, mixed_precision=True)
    assert fold_batch_norm(trained_bf16, config, mixed_precision=True) is trained_bf16
    as_float32 = fold_batch_norm(trained_bf16, config, mixed_precision=False)
    assert {layer.dtype_policy.name for layer in as_float32.layers if layer.weights} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(as_float32.get_weights(), trained_bf16.get_weights()))
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(as_float32.predict_on_batch(x), trained_bf16.predict_on_batch(x), atol=0.05)
    folded_bf16 = fold_batch_norm(build_unet(ModelConfig(depth=2, base_filters=4)), ModelConfig(depth=2, base_filters=4), True)
    assert {layer.dtype_policy.name for layer in folded_bf16.layers if isinstance(layer, import_keras().layers.Conv2D)} == {"mixed_bfloat16"}


def test_recomputed_batch_norm_statistics_are_the_mean_over_the_batches():
    keras = import_keras()
    model = build_unet(ModelConfig(depth=2, base_filters=4))
    rng = np.random.default_rng(1)
    batches = [(5 + 3 * rng.random((1, 16, 16, 1))).astype(np.float32) for _ in range(3)]
    first_norm = model.get_layer("down0_bn1")
    trained = [w.copy() for w in model.get_weights()]
    momentum = first_norm.momentum

    assert recompute_batch_norm_statistics(model, iter(batches)) == 3

    # The first batch norm sees the first convolution's output: its moving mean is now that output's mean.
    first_conv = keras.Model(model.input, model.get_layer("down0_conv1").output)
    conv_means = [first_conv.predict_on_batch(b).mean(axis=(0, 1, 2)) for b in batches]
    np.testing.assert_allclose(first_norm.moving_mean.numpy(), np.mean(conv_means, axis=0), rtol=1e-4, atol=1e-5)
    assert first_norm.momentum == momentum
    moving = {id(v) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.moving_mean, layer.moving_variance)}
    for variable, before in zip(model.weights, trained):
        if id(variable) not in moving:  # kernels, gamma and beta stay as trained
            np.testing.assert_array_equal(variable.numpy(), before)
    plain = build_unet(ModelConfig(depth=2, base_filters=4, batch_norm=False))
    assert recompute_batch_norm_statistics(plain, batches) == 0


def test_a_kept_batch_norm_recomputation_follows_new_weights():
    """The traced recomputation is kept for later calls; each call still uses the network's current weights."""
    from napari_unet.model import BatchNormStatistics

    config = ModelConfig(depth=2, base_filters=4)
    model, reference = build_unet(config), build_unet(config)
    rng = np.random.default_rng(2)
    batches = [(rng.random((1, 16, 16, 1)) * 4).astype(np.float32) for _ in range(2)]
    statistics = BatchNormStatistics(model)
    assert statistics.recompute(batches) == 2
    forward = statistics._forward
    model.set_weights([w * 1.5 if w.ndim == 4 else w for w in model.get_weights()])  # as training moves them
    assert statistics.recompute(batches) == 2
    assert statistics._forward is forward and forward.experimental_get_tracing_count() == 1  # the graph was reused
    reference.set_weights(model.get_weights())
    recompute_batch_norm_statistics(reference, batches)  # a fresh graph
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert model.get_layer("down0_bn1").momentum == reference.get_layer("down0_bn1").momentum  # restored


def test_bf16_model_keeps_a_float32_head():
    model = build_unet(ModelConfig(depth=2, base_filters=4), mixed_precision=True)
    out = model.predict_on_batch(np.zeros((1, 16, 16, 1), np.float32))
    assert str(out.dtype) == "float32"


def test_masked_loss_ignores_unannotated_pixels():
    keras = import_keras()
    loss = masked_loss(ModelConfig(n_classes=2))
    probs = np.array([[[[0.9, 0.1], [0.2, 0.8]]]], np.float32)  # (1, 1, 2, 2)
    annotated_only = np.array([[[[0, 1], [1, 0]]]], np.float32)  # pixel 2 unannotated (weight 0)
    value = float(keras.ops.convert_to_numpy(loss(annotated_only, probs)))
    assert value == pytest.approx(-np.log(0.9), rel=1e-5)
    # changing the class of the unannotated pixel does not change the loss
    other = annotated_only.copy()
    other[..., 1, 0] = 1
    assert float(keras.ops.convert_to_numpy(loss(other, probs))) == pytest.approx(value, rel=1e-6)


def test_masked_loss_sigmoid_head_and_dice_term():
    keras = import_keras()
    loss = masked_loss(ModelConfig(head="sigmoid"), dice_weight=1.0)
    perfect = np.array([[[[1.0], [0.0]]]], np.float32)
    target = np.array([[[[1, 1], [0, 1]]]], np.float32)
    assert float(keras.ops.convert_to_numpy(loss(target, perfect))) == pytest.approx(0.0, abs=1e-4)
    wrong = 1.0 - perfect
    assert float(keras.ops.convert_to_numpy(loss(target, wrong))) > 5.0


def test_soft_skeleton_thins_a_bar_to_its_centre_line():
    keras = import_keras()
    from napari_unet.model import soft_skeleton

    bar = np.zeros((1, 21, 30, 1), np.float32)
    bar[:, 8:13, 5:25] = 1.0  # 5 pixels wide
    skeleton = keras.ops.convert_to_numpy(soft_skeleton(keras.ops.convert_to_tensor(bar), 5))[0, ..., 0]
    assert skeleton.max() == pytest.approx(1.0)
    assert skeleton[~bar[0, ..., 0].astype(bool)].max() == 0.0  # inside the bar only
    rows = skeleton[:, 8:22].sum(axis=1)
    assert rows[10] > 0.9 * rows.sum()  # along the centre row


def test_cldice_term_penalises_a_gap_in_a_membrane():
    keras = import_keras()
    membrane = np.zeros((1, 32, 32), bool)
    membrane[:, 14:17, :] = True  # class 0 = membrane across the patch
    target = np.stack([np.where(membrane, 0, 1), np.ones_like(membrane)], axis=-1).astype(np.float32)
    closed = np.stack([membrane, ~membrane], axis=-1).astype(np.float32) * 0.98 + 0.01
    gapped = closed.copy()
    gapped[:, 14:17, 12:20] = [0.01, 0.99]  # an 8-pixel gap: the two cells touch
    config = ModelConfig(n_classes=2)

    def value(loss, probs):
        return float(keras.ops.convert_to_numpy(loss(target, probs)))

    plain = masked_loss(config, dice_weight=0.5)
    with_cldice = masked_loss(config, dice_weight=0.5, cldice_weight=1.0, cldice_class=0)
    gap_cost_plain = value(plain, gapped) - value(plain, closed)
    gap_cost_cldice = value(with_cldice, gapped) - value(with_cldice, closed)
    # the true skeleton loses 8 of its 32 pixels of cover: sensitivity ~0.75, clDice ~0.86
    assert gap_cost_cldice - gap_cost_plain == pytest.approx(0.14, abs=0.03)
    assert value(masked_loss(config, 0.5, cldice_weight=1.0, cldice_class=None), gapped) == pytest.approx(value(plain, gapped))


def test_a_seeded_build_never_touches_pythons_global_random_stream(monkeypatch):
    """A seeded build set Python's one stream and put it back: draws of other threads meanwhile (napari's GUI thread,
    another plugin) were rewound into repeats, and changed the seeded network (3 of 3 trials)."""
    import random

    import_keras()
    config = ModelConfig(depth=2, base_filters=4, dropout=0.2, upsampling="transpose")
    first = build_unet(config, seed=3).get_weights()
    calls = []
    for name in ("seed", "setstate", "getstate", "randint", "random"):
        original = getattr(random, name)
        monkeypatch.setattr(random, name, lambda *a, _name=name, _original=original, **k: calls.append(_name) or _original(*a, **k))
    second = build_unet(config, seed=3).get_weights()
    assert calls == [] and all(np.array_equal(a, b) for a, b in zip(first, second))


def test_the_same_seed_builds_the_same_network_also_when_it_first_imports_tensorflow():
    # The first build of a process imported TensorFlow after seeding, and the import drew from Python's random: the
    # first training of a process got other initial weights than every later one with the same seed.
    import subprocess
    import sys

    script = """
import random
import numpy as np
from napari_unet.config import ModelConfig
from napari_unet.model import build_unet
config = ModelConfig(depth=2, base_filters=4)
random.seed(123)
first = build_unet(config, seed=1).get_weights()
after_import_and_build = random.random()
random.seed(123)
assert after_import_and_build == random.random(), "importing TensorFlow or building moved the caller's random stream"
second = build_unet(config, seed=1).get_weights()
assert all(np.array_equal(a, b) for a, b in zip(first, second)), "the first build of the process differs"
assert not all(np.array_equal(a, b) for a, b in zip(first, build_unet(config, seed=2).get_weights()))
unseeded = [build_unet(config).get_weights() for _ in range(2)]  # drawn from the caller's stream, as in Keras
assert not all(np.array_equal(a, b) for a, b in zip(*unseeded))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.parametrize("config", [
    ModelConfig(depth=2, base_filters=8),
    ModelConfig(depth=3, base_filters=8, batch_norm=False, pre_head_filters=2, upsampling="transpose", context_slices=1, n_classes=3),
    ModelConfig(depth=2, base_filters=4, head="sigmoid"),
], ids=["small", "every-option", "sigmoid"])
def test_parameter_count_is_the_built_networks_without_building_it(config):
    from napari_unet.model import parameter_count

    assert parameter_count(config) == build_unet(config).count_params()


def test_training_memory_grows_with_the_network_and_the_batch():
    from napari_unet.model import parameter_count, training_memory_bytes

    default, huge = ModelConfig(depth=4, base_filters=32), ModelConfig(depth=6, base_filters=128)
    assert parameter_count(preset("classic").model) == 31_031_685  # the seed's, as model.summary() gives it
    assert parameter_count(huge) > 1.9e9  # the configuration that took all 24 GB of a machine
    small = training_memory_bytes(default, batch_size=4, patch_size=256)
    assert 1e9 < small < 4e9
    assert training_memory_bytes(default, batch_size=4, patch_size=256, mixed_precision=True) < small  # bfloat16 activations
    assert training_memory_bytes(default, batch_size=8, patch_size=256) > small
    assert training_memory_bytes(huge, batch_size=4, patch_size=256) > 60e9  # 2 billion weights, 31 bytes each
