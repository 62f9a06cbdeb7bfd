import numpy as np
import pytest

from _helpers import PlanesOnly, record_tta, stripes, tiny_model
from napari_unet.data import InputError, normalize
from napari_unet.predict import Prediction, PredictionProgress, predict, predict_events, tile_starts


def test_tile_starts_cover_the_axis():
    assert tile_starts(100, 128, 96) == [0]
    starts = tile_starts(300, 128, 96)
    assert starts[0] == 0 and starts[-1] == 300 - 128
    assert all(b - a <= 96 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("length, tile, step", [(512, 256, 208), (512, 192, 144), (1024, 512, 464), (4096, 512, 464), (144, 64, 48)])
def test_tile_starts_spread_the_fewest_tiles_evenly_on_the_grid(length, tile, step):
    # the last tile was put at length - tile after full steps: 512 px in 256 tiles at 0, 208, 256 overlapped by 48 and
    # 208 px; spread evenly, the same three tiles overlap by 128 and 128
    starts = tile_starts(length, tile, step, 16)
    gaps = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == length - tile and all(s % 16 == 0 for s in starts)
    assert len(starts) == -(-(length - tile) // step) + 1  # as many as steps of `step` need
    assert gaps.max() <= step and gaps.max() - gaps.min() <= 16
    assert tile_starts(512, 256, 208, 16) == [0, 128, 256]


def test_blend_weights_follow_the_actual_overlaps_and_add_up_to_one():
    from napari_unet.predict import axis_blend_ramps

    starts, tile, length = [0, 112, 208, 320], 192, 512  # overlaps 80, 96, 80
    total = np.zeros(length)
    for start, ramp in zip(starts, axis_blend_ramps(starts, tile)):
        total[start : start + tile] += ramp
        assert ramp.min() > 0
    np.testing.assert_allclose(total, 1.0, atol=2e-4)
    first, second, *_, last = axis_blend_ramps(starts, tile)
    assert first[0] == last[-1] == 1.0, "the image's border keeps full weight"
    assert first[-80 // 4 :].max() < 1e-3 and second[: 80 // 4].max() < 1e-3, "no weight on the outer quarter of an overlap"
    assert second[-96 // 4 :].max() < 1e-3 and second[80 : -96].min() == 1.0


def test_prediction_shapes_dtypes_and_class_values():
    model = tiny_model()
    image, labels = stripes(n_slices=2, seed=5)
    result = predict(model, image)
    assert result.labels.shape == image.shape and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 255}
    assert result.probabilities.shape == image.shape + (2,)
    np.testing.assert_allclose(result.probabilities.sum(-1), 1.0, atol=1e-4)
    single = predict(model, image[0], return_probabilities=False)
    assert single.labels.shape == image.shape[1:] and single.probabilities is None
    np.testing.assert_array_equal(single.labels, result.labels[0])


def test_selected_slices_and_context_slices_from_the_whole_stack():
    from dataclasses import replace

    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    model = tiny_model()
    image, _ = stripes(n_slices=4, size=64, seed=3)
    whole = predict(model, image)
    some = predict(model, image, slices=[3, 1])
    np.testing.assert_array_equal(some.labels, whole.labels[[3, 1]])
    np.testing.assert_allclose(some.probabilities, whole.probabilities[[3, 1]], atol=1e-6)
    with pytest.raises(InputError, match="slices"):
        predict(model, image, slices=[4])

    config = replace(model.config, context_slices=1, batch_norm=False)
    with_context = UNetModel(build_unet(config), config, [0, 255])
    assert with_context.keras_model.input_shape[-1] == 3
    in_stack = predict(with_context, image, slices=[1]).probabilities[0]
    np.testing.assert_allclose(in_stack, predict(with_context, image).probabilities[1], atol=1e-6)
    alone = predict(with_context, image[1]).probabilities  # a 2-D image is its own context
    assert np.abs(in_stack - alone).max() > 1e-4, "the neighbouring slices change the prediction"


def test_tiled_prediction_equals_whole_image_prediction():
    model = tiny_model()
    image, _ = stripes(n_slices=1, size=128, seed=6)
    whole = predict(model, image, tile_size=128).probabilities
    tiled = predict(model, image, tile_size=64, overlap=16).probabilities
    assert np.mean(np.argmax(whole, -1) == np.argmax(tiled, -1)) > 0.995
    assert np.abs(whole - tiled).mean() < 0.01


def _box_mean_tiles(monkeypatch, size: int, radius: int, tile_size: int, overlap: int):
    """(whole, tiled) membrane probabilities of a smooth random ``size``² image from a stand-in network whose output
    depends on its tile's zero padding, as a U-Net's does within its receptive field: a box mean of ``radius``."""
    from scipy import ndimage

    from napari_unet import predict as predict_module
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    def network(model, tiles, *rest):
        mean = np.stack([ndimage.uniform_filter(tile[..., 0], 2 * radius + 1, mode="constant") for tile in tiles])
        membrane = 1 / (1 + np.exp(-3 * mean))
        return np.stack([membrane, 1 - membrane], axis=-1).astype(np.float32)

    monkeypatch.setattr(predict_module, "_run_model", network)
    config = ModelConfig(depth=2, base_filters=8)
    model = UNetModel(build_unet(config), config, [0, 255])
    image = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(size, size)), 2)
    settings = dict(tta=False, close_boundaries=False, mixed_precision=False, jit_compile=False)
    whole = predict(model, image, tile_size=256, **settings).probabilities[..., 0]
    return whole, predict(model, image, tile_size=tile_size, overlap=overlap, **settings).probabilities[..., 0]


def test_tiled_prediction_takes_each_pixel_from_the_tile_that_sees_most_around_it(monkeypatch):
    # A trained depth-4 ISBI U-Net's output differs from the whole image's up to ~96 px from a tile's edge, p99 0.5
    # within 16 px (benchmarks/bench_tile_seams.py); here a box mean of radius 4. 200² in 64-px tiles, overlap 16: the
    # old blend (ramps from each tile's very edge, tiles at 0, 48, 96, 136) strayed up to 0.0093 from the whole image's
    # output (p99.9 0.0068); evenly spread tiles (0, 44, 92, 136) with no weight on the outer quarter of each overlap
    # take each pixel of an overlap from the tile that sees all of the box around it: 3e-5 (the 1e-4 weight floor).
    whole, tiled = _box_mean_tiles(monkeypatch, 200, 4, 64, 16)
    error = np.abs(whole - tiled)
    assert whole.max() - whole.min() > 0.3 and error.max() < 1e-3, (error.max(), np.percentile(error, 99.9))


def test_tiles_blend_by_their_actual_overlap_not_the_nominal_one(monkeypatch):
    # 160 px in 128-px tiles (overlap 16) start at 0 and 32: a 96-px overlap, whose middle only the weights of the
    # actual overlap take from the tile that sees all around it (a fixed 16-px window took padded pixels there)
    whole, tiled = _box_mean_tiles(monkeypatch, 160, 8, 128, 16)
    assert np.abs(whole - tiled).max() < 1e-3


@pytest.mark.parametrize("height", [129, 130, 131])
def test_tiles_start_on_the_pooling_grid_whatever_the_image_size(monkeypatch, height):
    # a tile starting off a multiple of 2**depth is a different network view: blending it changed labels
    # far from the seams (about 1 % of the labels for heights 513-515 with 512 tiles)
    from napari_unet import predict as predict_module

    model = tiny_model()
    multiple = model.config.size_multiple
    image = stripes(n_slices=1, size=160, seed=6)[0][:, :height, :150]
    seen = []
    run_model = predict_module._run_model
    monkeypatch.setattr(predict_module, "_run_model", lambda m, tiles, *rest: seen.append(tiles.shape) or run_model(m, tiles, *rest))
    settings = dict(tta=False, mixed_precision=False, jit_compile=False)
    whole = predict(model, image, tile_size=1024, **settings)
    starts = []
    monkeypatch.setattr(predict_module, "tile_starts", lambda *a: starts.append(tile_starts(*a)) or starts[-1])
    tiled = predict(model, image, tile_size=64, overlap=16, **settings)
    assert all(start % multiple == 0 for axis in starts for start in axis) and len(starts[0]) > 1
    inner = (slice(None), slice(16, -16), slice(16, -16))  # away from the image's own borders
    # old code, same sizes: 0.992-0.995 of the labels equal, probabilities up to 0.18-0.33 apart; now 0.9975 and 0.12
    # (AMX Xeon, Zen 5); the tiny network trains to other weights on AMD Zen 4: 0.9978 and 0.153 there (session 45)
    assert np.mean(whole.labels[inner] == tiled.labels[inner]) > 0.9965
    assert np.abs(whole.probabilities[inner] - tiled.probabilities[inner]).max() < 0.17


def test_odd_sizes_and_tta():
    model = tiny_model()
    image = stripes(n_slices=1, size=128, seed=7)[0][0, :77, :101]
    plain = predict(model, image, tta=False).probabilities
    tta = predict(model, image, tta=True).probabilities
    assert plain.shape == tta.shape == (77, 101, 2)
    assert np.abs(plain - tta).max() > 1e-3, "the flips must matter"
    assert np.mean(np.argmax(plain, -1) == np.argmax(tta, -1)) > 0.9


def test_tta_is_the_mean_of_the_predictions_of_the_rotated_image():
    model = tiny_model()
    image = stripes(n_slices=1, size=64, seed=8)[0][0]  # one square tile: no blending, no padding
    settings = dict(mixed_precision=False, batch_size=1)  # float32, one image per network call throughout
    expected = np.mean(
        [np.rot90(predict(model, np.rot90(image, k), tta=False, **settings).probabilities, -k) for k in range(4)], axis=0
    )
    tta = predict(model, image, tta=True, **settings).probabilities
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert np.abs(tta - predict(model, image, tta=False).probabilities).max() > 1e-3, "the rotations must matter"
    with pytest.raises(ValueError, match="tta"):
        predict(model, image, tta="sometimes")


def test_two_view_tta_is_the_mean_of_the_tile_and_its_half_turn():
    model = tiny_model()
    image = stripes(n_slices=1, size=64, seed=8)[0][0]
    settings = dict(mixed_precision=False, batch_size=1)
    views = [np.rot90(predict(model, np.rot90(image, k), tta=False, **settings).probabilities, -k) for k in (0, 2)]
    two = predict(model, image, tta=2, **settings).probabilities
    np.testing.assert_allclose(two, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(two - views[0]).max() > 1e-3, "the half turn must matter"
    np.testing.assert_allclose(predict(model, image, tta=1, **settings).probabilities, views[0], atol=1e-6)
    np.testing.assert_allclose(
        predict(model, image, tta=4, **settings).probabilities, predict(model, image, tta=True, **settings).probabilities, atol=1e-6
    )
    for wrong in (3, 8, 0, -1, 2.0):
        with pytest.raises(ValueError, match="views"):
            predict(model, image, tta=wrong)


def test_tta_keeps_the_tiles_of_a_model_trained_upright_upright():
    # an OCT model (trained without rotations) saw half turns upside down: they halved its held-out mean Dice
    import dataclasses

    from napari_unet.predict import resolve_tta_views

    model = tiny_model()
    upright = dataclasses.replace(model, train_config=model.train_config.replace(augment_rotations=False))
    image = stripes(n_slices=1, size=64, seed=8)[0][0]
    settings = dict(mixed_precision=False, batch_size=1)
    plain = predict(upright, image, tta=False, **settings).probabilities
    mirrored = predict(upright, image[:, ::-1], tta=False, **settings).probabilities[:, ::-1]
    for tta in (True, 4, 2, "auto"):
        views = resolve_tta_views(tta, upright)
        assert views == min(resolve_tta_views(tta), 2)
        expected = np.mean([plain, mirrored], axis=0) if views == 2 else plain
        np.testing.assert_allclose(predict(upright, image, tta=tta, **settings).probabilities, expected, atol=1e-5)
    no_flips = dataclasses.replace(model, train_config=upright.train_config.replace(augment_flips=False))
    assert resolve_tta_views(True, no_flips) == 1
    np.testing.assert_allclose(predict(no_flips, image, tta=True, **settings).probabilities, plain, atol=1e-6)
    assert resolve_tta_views(True, model) == 4  # trained with rotations: the four quarter turns as before


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_tta_copies_count_against_the_network_batch(monkeypatch, batch_size):
    from napari_unet import predict as predict_module

    model = tiny_model()
    image = stripes(n_slices=1, size=128, seed=8)[0][0]  # 3 x 3 tiles of 64
    calls = []
    forward_pass = predict_module._forward_pass

    def spy(*args):
        forward = forward_pass(*args)
        return lambda batch: calls.append(len(batch)) or forward(batch)

    monkeypatch.setattr(predict_module, "_forward_pass", spy)
    predict(model, image, tile_size=64, overlap=16, batch_size=batch_size, tta=True, mixed_precision=False, jit_compile=False)
    assert max(calls) <= batch_size and sum(calls) == 9 * 4


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512_bf16", "amx_bf16"}, True), ({"avx2"}, False)])
def test_default_tta_follows_the_cpu(monkeypatch, flags, expected):
    from napari_unet import hardware

    model = tiny_model()  # trained (and cached) on the real CPU, before faking its flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    seen = record_tta(monkeypatch)
    predict(model, stripes(n_slices=1, size=64, seed=8)[0][0], mixed_precision=False)
    assert seen == [4 if expected else 1]  # network passes per tile


def test_xla_compiled_prediction_equals_the_plain_one_and_pads_partial_batches(monkeypatch):
    import tensorflow as tf

    model = tiny_model()
    image = stripes(n_slices=2, size=128, seed=8)[0][:, :, :112]
    # 3 x 2 tiles of 64 per slice: batches of 4 and 2, the 2 padded to the compiled batch of 4
    settings = dict(tile_size=64, overlap=16, batch_size=4, mixed_precision=False, tta=False)
    plain = predict(model, image, jit_compile=False, **settings)
    plain_tta = predict(model, image, jit_compile=False, **{**settings, "tta": True})
    compiled_batches = []
    real_function = tf.function

    def spy_function(fn=None, **kwargs):  # record the batch shapes the XLA-compiled network sees
        if fn is None:  # Keras' own decorators
            return real_function(**kwargs)
        assert kwargs.get("jit_compile") is True
        return real_function(lambda batch: compiled_batches.append(tuple(batch.shape)) or fn(batch), **kwargs)

    monkeypatch.setattr(tf, "function", spy_function)
    compiled = predict(model, image, jit_compile=True, **settings)
    assert compiled_batches == [(4, 64, 64, 1)]  # traced once: the partial batch was padded
    np.testing.assert_allclose(compiled.probabilities, plain.probabilities, atol=1e-5)
    np.testing.assert_array_equal(compiled.labels, plain.labels)

    # with test-time augmentation the four rotations of a tile fill the network's batch of 4: the function compiled
    # for the first call is reused and not traced again (any other batch shape would have traced it)
    compiled_batches.clear()
    compiled = predict(model, image, jit_compile=True, **{**settings, "tta": True})
    assert compiled_batches == []
    np.testing.assert_allclose(compiled.probabilities, plain_tta.probabilities, atol=1e-5)


@pytest.mark.parametrize("flags, large_uses_xla", [({"avx2", "fma"}, True), ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, False)])
def test_xla_is_chosen_by_input_size_on_cpus_where_it_pays(monkeypatch, flags, large_uses_xla):
    import napari_unet.predict as predict_module
    from napari_unet import hardware

    model = tiny_model()  # trained first: its training's validation predicts too
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    chosen = []
    real = predict_module._forward_pass
    monkeypatch.setattr(predict_module, "_forward_pass", lambda m, jit, b=1, mixed=False, folded=True: chosen.append((jit, mixed)) or real(m, False, b))
    image = stripes(n_slices=2, size=64)[0]
    predict(model, image)
    monkeypatch.setattr(predict_module, "XLA_MIN_PIXELS", 2 * 64 * 64)
    predict(model, image)
    bfloat16 = not large_uses_xla  # the AMX CPU computes in bfloat16, without XLA
    assert chosen == [(False, bfloat16), (large_uses_xla, bfloat16)]


def test_progress_events_then_one_prediction():
    events = list(predict_events(tiny_model(), stripes(n_slices=3, size=64)[0], tile_size=32, overlap=8, batch_size=2))
    progress = [e for e in events if isinstance(e, PredictionProgress)]
    assert isinstance(events[-1], Prediction) and len(progress) >= 3
    assert progress[-1].done == progress[-1].total
    assert [p.done for p in progress] == sorted(p.done for p in progress)


def test_stop_ends_prediction_early():
    calls = []
    result = predict(tiny_model(), stripes(n_slices=3, size=64)[0], tile_size=32, stop=lambda: calls.append(1) or len(calls) > 2)
    assert result.stopped


def test_ctrl_c_during_a_network_call_comes_after_the_call(monkeypatch):
    """A KeyboardInterrupt raised inside TensorFlow's Python code (a graph being traced) left it broken."""
    import signal
    import weakref

    import napari_unet.predict as predict_module

    original = predict_module._compiled_forward
    calls_finished = []

    def interrupted_inside(*args, **kwargs):
        forward = original(*args, **kwargs)

        def call(batch):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the network runs (its first call traces it)
            out = forward(batch)
            calls_finished.append(True)
            return out

        return call

    monkeypatch.setattr(predict_module, "_compiled_forward", interrupted_inside)
    monkeypatch.setattr(predict_module, "_FORWARD_CACHE", weakref.WeakKeyDictionary())  # not an earlier test's copy
    with pytest.raises(KeyboardInterrupt):
        predict(tiny_model(), stripes(n_slices=2, size=64)[0], tile_size=32, batch_size=1)
    assert calls_finished == [True]  # that call ran to its end, then the interrupt came
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stopped_prediction_does_not_wait_for_the_membrane_rules_still_running(monkeypatch):
    # the rule of up to two slices ran on (7 s a 2048² slice): Stop took 18-40 s in the widget and the chunked command
    import time

    import napari_unet.predict as predict_module

    model = tiny_model()
    assert model.boundary_rule is not None
    monkeypatch.setattr(predict_module, "tiled_boundary_mask", lambda probability, **rule: time.sleep(3) or probability > 0.5)
    image = stripes(n_slices=3, size=64)[0]
    tiles = []
    start = time.perf_counter()
    result = predict(model, image, tta=False, stop=lambda: tiles.append(1) or len(tiles) > 2)  # in slice 2's tile
    assert result.stopped and time.perf_counter() - start < 2.5
    # Stop pressed while the last slices' rules run (a one-slice run is all last slice): it waited for them
    asked = []
    start = time.perf_counter()
    result = predict(model, image[0], tta=False, stop=lambda: asked.append(1) or len(asked) > 1)  # after the one tile
    assert result.stopped and time.perf_counter() - start < 2.0


def test_input_is_not_modified_and_rgb_is_refused():
    image = stripes(n_slices=1, size=64)[0][0]
    before = image.copy()
    predict(tiny_model(), image)
    np.testing.assert_array_equal(image, before)
    with pytest.raises(InputError, match="RGB"):
        predict(tiny_model(), np.zeros((2, 32, 32, 3), np.uint8))
    for colour in (3, 4):  # (Y, X, colour) would otherwise be taken for Y slices of X x colour pixels
        with pytest.raises(InputError, match="RGB"):
            predict(tiny_model(), np.zeros((32, 32, colour), np.uint8))
    for sizes in ({"tile_size": 0}, {"batch_size": 0}, {"batch_size": -1}, {"overlap": -1}):
        with pytest.raises(ValueError, match="at least"):
            predict(tiny_model(), image, **sizes)
    with pytest.raises(InputError, match=r"image of shape \(4, 1, 128\) is too small"):  # it named a slice, (1, 1, 128)
        predict(tiny_model(), np.zeros((4, 1, 128), np.uint8))
    for wrong_rank in (np.float32(1.0), np.zeros(32, np.float32)):  # a scalar or a line is not an image either
        with pytest.raises(InputError, match="one-channel 2-D images"):
            predict(tiny_model(), wrong_rank)
    with pytest.raises(InputError, match=r"a channel axis last: give image\[\.\.\., 0\]"):  # was "too small"
        predict(tiny_model(), np.zeros((32, 32, 1), np.uint8))
    stack = np.zeros((3, 32, 32), np.float32)
    stack[2, 5, 5] = np.nan  # found an hour into a large stack, without the slice
    with pytest.raises(InputError, match="slice 2: .*NaN"):
        predict(tiny_model(), stack)


def test_dask_input_is_predicted_slice_by_slice():
    da = pytest.importorskip("dask.array")
    image = stripes(n_slices=2, size=64)[0]
    lazy = da.from_array(image, chunks=(1, 64, 64))
    np.testing.assert_array_equal(predict(tiny_model(), lazy).labels, predict(tiny_model(), image).labels)


def test_predictions_go_into_given_arrays_and_read_the_image_a_slice_at_a_time(tmp_path):
    from napari_unet.predict import labels_dtype

    model = tiny_model()
    image = stripes(n_slices=3, size=64)[0]
    expected = predict(model, image, tta=False)
    source = PlanesOnly(image)
    labels = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=labels_dtype(model), shape=image.shape)
    probabilities = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(*image.shape, 2))
    result = predict(model, source, tta=False, labels_out=labels, probabilities_out=probabilities, return_probabilities=False)
    assert result.labels is labels and result.probabilities is probabilities
    assert sorted(source.reads) == [0, 1, 2], "each slice read once, on its own"
    np.testing.assert_array_equal(labels, expected.labels)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    plane = np.zeros(image.shape[1:], labels.dtype)
    assert predict(model, image[0], tta=False, labels_out=plane).labels is plane
    np.testing.assert_array_equal(plane, expected.labels[0])
    for wrong in (np.zeros(image.shape, np.int32), np.zeros((2, 64, 64), labels.dtype)):
        with pytest.raises(ValueError, match="labels_out must have shape"):
            predict(model, image, labels_out=wrong)


def test_slices_must_be_whole_numbers():
    image = stripes(n_slices=3, size=64)[0]
    with pytest.raises(InputError, match="must be whole numbers"):
        predict(tiny_model(), image, slices=[1.7])
    assert predict(tiny_model(), image, slices=[np.int64(1)], tta=False).labels.shape == (1, 64, 64)


def test_close_boundaries_only_adds_boundary_pixels():
    model = tiny_model()
    assert model.boundary_value == 0  # the stripes are thin lines of class 0
    image = stripes(n_slices=1, size=96, seed=8)[0][0]
    plain = predict(model, image).labels
    closed = predict(model, image, close_boundaries=True).labels
    assert np.all(closed[plain == 0] == 0), "every predicted boundary pixel stays a boundary"
    assert (closed == 0).sum() >= (plain == 0).sum()


def test_stack_labels_follow_the_boundary_rule_slice_by_slice():
    from napari_unet.postprocess import boundary_mask
    from napari_unet.predict import effective_boundary_rule

    model = tiny_model()
    image = stripes(n_slices=4, size=64, seed=9)[0]
    result = predict(model, image, close_boundaries=True)
    rule = effective_boundary_rule(model, True)
    assert rule["merge_below"] is not None or rule["seed_level"] is not None
    for z in range(4):
        membrane = boundary_mask(result.probabilities[z, ..., 0], **rule)
        np.testing.assert_array_equal(result.labels[z], np.where(membrane, 0, 255))


def test_forced_gap_closing_smooths_like_tuned_rules_and_stored_rules_are_kept():
    from napari_unet.postprocess import BORDER_REACH, MERGE_SIGMA
    from napari_unet.predict import effective_boundary_rule

    model = tiny_model()
    model.boundary_rule = {"threshold": 0.6, "seed_level": None, "merge_below": None}
    forced = effective_boundary_rule(model, True)
    assert forced["merge_below"] is not None and forced["sigma"] == MERGE_SIGMA and forced["threshold"] == 0.6
    assert forced["border_reach"] == BORDER_REACH
    assert effective_boundary_rule(model, None) == model.boundary_rule
    stored = {"threshold": 0.5, "seed_level": None, "merge_below": 0.6, "minima_depth": 0.02, "hierarchical": True}
    model.boundary_rule = stored
    assert effective_boundary_rule(model, True) == stored, "a stored gap-closing rule is applied as saved (no sigma: 1)"


def test_rules_applied_to_tta_probabilities_merge_at_most_at_0_65():
    from napari_unet.predict import TTA_MAX_MERGE_LEVEL, effective_boundary_rule

    model = tiny_model()
    long_budget = {"threshold": 0.7, "seed_level": None, "merge_below": 0.7, "minima_depth": 0.02, "sigma": 3.0,
                   "hierarchical": True, "border_reach": 4.0}
    model.boundary_rule = dict(long_budget)
    assert effective_boundary_rule(model, None, 1) == long_budget, "plain probabilities keep the trained level"
    for views in (2, 4):
        capped = effective_boundary_rule(model, None, views)
        assert capped == {**long_budget, "merge_below": TTA_MAX_MERGE_LEVEL} == {**long_budget, "merge_below": 0.65}
    assert model.boundary_rule == long_budget, "the model's own rule is not modified"
    short_budget = {**long_budget, "merge_below": 0.5}
    model.boundary_rule = short_budget
    assert effective_boundary_rule(model, None, 4) == short_budget, "levels up to 0.65 stay as trained"
    model.boundary_rule = {"threshold": 0.6, "seed_level": None, "merge_below": None}
    assert effective_boundary_rule(model, None, 4) == model.boundary_rule, "a plain threshold stays plain"
    assert effective_boundary_rule(model, False, 4) is None


def test_predict_applies_the_capped_rule_with_tta_and_the_trained_one_without(monkeypatch):
    import napari_unet.predict as predict_module

    applied = []
    original = predict_module.tiled_boundary_mask
    monkeypatch.setattr(predict_module, "tiled_boundary_mask", lambda plane, **rule: applied.append(rule) or original(plane, **rule))
    model = tiny_model()
    model.boundary_rule = {"threshold": 0.5, "seed_level": None, "merge_below": 0.7, "minima_depth": 0.02,
                           "sigma": 3.0, "hierarchical": True, "border_reach": 4.0}
    image = stripes(n_slices=2, size=64, seed=9)[0]
    predict(model, image, tta=True)
    assert [rule["merge_below"] for rule in applied] == [0.65, 0.65]
    applied.clear()
    predict(model, image, tta=False)
    assert [rule["merge_below"] for rule in applied] == [0.7, 0.7]


def test_a_prediction_closed_early_leaves_no_thread_behind():
    import threading

    events = predict_events(tiny_model(), stripes(n_slices=4, size=64, seed=9)[0], close_boundaries=True)
    for _ in range(3):  # past the first slices, whose membrane rule runs in the worker thread
        assert isinstance(next(events), PredictionProgress)
    events.close()
    workers = [t for t in threading.enumerate() if t.name.startswith("napari-unet-boundary-rule")]
    for thread in workers:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in workers)


def test_predict_normalises_with_the_models_local_contrast(monkeypatch):
    from dataclasses import replace

    import napari_unet.predict as predict_module
    from napari_unet.data import normalize

    plain = tiny_model()
    local = replace(plain, config=replace(plain.config, local_contrast_sigma=8.0))  # same network
    image = stripes(n_slices=1, size=64, seed=4)[0][0]
    calls = []
    monkeypatch.setattr(predict_module, "normalize", lambda *args: calls.append(args[2]) or normalize(*args))
    a = predict(plain, image, tta=False).probabilities
    b = predict(local, image, tta=False).probabilities
    assert calls == [0.0, 8.0]
    assert np.abs(a - b).max() > 1e-3  # the network saw locally standardised input


def test_intensity_note_names_images_unlike_the_training_images():
    import dataclasses

    from napari_unet.predict import intensity_note

    model = tiny_model()
    image = stripes(n_slices=3, seed=9)[0]
    assert intensity_note(image, model) is None
    assert all(intensity_note(plane, model) is None for plane in image), "single slices of the same kind are not unlike"
    note = intensity_note(255 - image, model)
    assert "unlike the training images" in note and "inverted" in note
    before_51 = dataclasses.replace(model, profile_above_floor=None)  # files before session 51: the profile of all pixels
    assert "unlike the training images" in intensity_note(255 - image, before_51) and intensity_note(image, before_51) is None
    older = dataclasses.replace(before_51, intensity_profile=None)
    assert intensity_note(255 - image, older) is None, "older model files: nothing to say"
    # the note never fails a prediction: images predict refuses get predict's own message, not the profile's
    for refused in (image.astype(np.float32), image.astype(np.float64), np.zeros((0, 96, 96))):
        if refused.size:
            refused[0, 0, 0] = np.nan
        assert intensity_note(refused, model) is None


def test_intensity_note_names_the_grey_level_where_the_images_differ_most():
    """A mostly black OCT-like scan trained alone: the note said "median grey 0.00 ... the training images' at 0.01, the
    training slices within 0.00", which told the user nothing."""
    import types

    from napari_unet.data import intensity_references
    from napari_unet.predict import intensity_note

    rows = np.arange(256, dtype=np.float64)[:, None] * np.ones((1, 192))
    scan = np.where((rows > 96) & (rows < 160), 40 + (rows - 96) * 3, 0).astype(np.uint8)  # 75 % black, a bright band
    (profile, spread), (above, above_spread) = intensity_references(scan)
    model = types.SimpleNamespace(intensity_profile=profile, intensity_spread=spread, profile_above_floor=above,
                                  spread_above_floor=above_spread, percentiles=(1.0, 99.8))
    assert above_spread == 0 and intensity_note(scan, model) is None
    linear = (scan / 255.0) ** 4  # an export in linear intensity
    note = intensity_note(linear, model)
    level = note.split("(its ")[1].split("th percentile grey")[0]
    assert int(level) > 50 and "median" not in note and "training slices within" not in note, note
    assert "training slices within" in intensity_note(255 - stripes(n_slices=3, seed=9)[0], tiny_model())


def test_agreement_scores_the_given_pixels_with_and_without_the_membrane_rule():
    from napari_unet.predict import agreement

    model = tiny_model()
    image, labels = stripes(n_slices=4, size=96, seed=3)
    where = np.zeros(labels.shape, bool)
    where[1, 10:40, 10:40] = where[3, :20, :20] = True
    learned = agreement(model, image, labels, where)
    assert learned.pixels == 900 + 400
    expected = predict(model, image, slices=[1, 3], tta=False)
    mask = where[[1, 3]]
    assert learned.labels == pytest.approx(np.mean(expected.labels[mask] == labels[[1, 3]][mask]))
    network = np.where(expected.probabilities.argmax(-1) == 0, 0, 255)
    assert learned.network == pytest.approx(np.mean(network[mask] == labels[[1, 3]][mask]))
    assert learned.network > 0.8
    flipped = agreement(model, image, 255 - labels, where)  # two classes: the shares add up to 1
    assert flipped.labels == pytest.approx(1 - learned.labels) and flipped.network == pytest.approx(1 - learned.network)
    flat = agreement(model, image[1], labels[1], where[1])
    assert flat.pixels == 900 and flat.network == pytest.approx(np.mean(network[0][where[1]] == labels[1][where[1]]))
    some = agreement(model, image, labels[[1, 3]], where[[1, 3]], slices=[1, 3])  # slices of the stack
    assert some == learned
    assert agreement(model, image, labels, np.zeros_like(where)) is None
    assert agreement(model, image, labels, where, stop=lambda: True) is None


def test_agreement_and_batch_norm_recomputation_check_their_inputs_before_any_work():
    from napari_unet.data import InputError
    from napari_unet.predict import agreement
    from napari_unet.train import recompute_batch_norm

    model = tiny_model()
    image, labels = stripes(n_slices=3, size=64)
    cropped = labels[:, :, :32]  # predicted the whole stack, then a raw numpy IndexError
    with pytest.raises(ValueError, match="must have the image's shape"):
        agreement(model, image, cropped, np.ones(cropped.shape, bool))
    with pytest.raises(ValueError, match="must have the image's shape"):
        agreement(model, image, labels[0], np.ones(labels[0].shape, bool))
    weights = [w.copy() for w in model.keras_model.get_weights()]
    nan_image = image.astype(np.float32)
    nan_image[0, 5, 5] = np.nan  # became NaN statistics: every pixel one class, and a file load_model refused
    with pytest.raises(InputError, match="NaN"):
        recompute_batch_norm(model, nan_image, [0])
    with pytest.raises(InputError, match="slice indices of the 3-slice image"):  # slice 7 became slice 2
        recompute_batch_norm(model, image, [7])
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.keras_model.get_weights()))


def test_a_large_slice_is_predicted_in_bounded_memory_with_the_rule_window_by_window(monkeypatch):
    # one 16384² section peaked at 25x its size, and its membrane rule needed 120 bytes a pixel of the whole slice
    import tracemalloc

    import napari_unet.postprocess as postprocess
    from napari_unet.postprocess import boundary_mask

    model = tiny_model()
    monkeypatch.setattr(model, "boundary_rule", {"threshold": 0.5, "seed_level": None, "merge_below": 0.7,
                                                 "minima_depth": 0.02, "sigma": 3.0, "hierarchical": True, "border_reach": 4.0})
    image = stripes(n_slices=1, size=1536, seed=9)[0][0]
    predict(model, image[:256, :256], tta=False, tile_size=128)  # traced before measuring
    monkeypatch.setattr(postprocess, "RULE_TILE", 256)
    monkeypatch.setattr(postprocess, "RULE_MARGIN", 64)
    windows = []
    monkeypatch.setattr(postprocess, "boundary_mask", lambda p, **rule: windows.append(p.shape) or boundary_mask(p, **rule))
    peaks, results = [], []
    for probabilities in (True, False):
        tracemalloc.start()
        try:
            results.append(predict(model, image, tta=False, tile_size=128, return_probabilities=probabilities))
            peaks.append(tracemalloc.get_traced_memory()[1] / image.size)
        finally:
            tracemalloc.stop()
    assert len(windows) == 72 and max(max(shape) for shape in windows) <= 256 + 2 * 64
    # at the peak, with probabilities returned (8 bytes a pixel) / labels only: 27 / 19 bytes a pixel measured, 15 of them
    # two rule windows at this small scale; 37 / 29 with the network's probabilities held for the whole slice, 40 with
    # the float32 temporaries of normalising a whole plane, 126 with the rule on the whole slice
    assert peaks[0] < 32 and peaks[1] < 24, peaks
    result = results[0]
    whole = np.where(boundary_mask(result.probabilities[..., 0], **model.boundary_rule), 0, 255)
    assert np.mean(result.labels != whole) < 1e-3


@pytest.mark.parametrize("downscale", [1, 2, 3])
def test_a_tall_slice_goes_band_by_band_with_the_labels_and_probabilities_of_the_whole_slice(monkeypatch, downscale):
    # the network's blended probabilities were held for the whole slice: 12 bytes a pixel, 20 with labels only
    import napari_unet.postprocess as postprocess
    from napari_unet import predict as predict_module
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    if downscale == 1:  # the membrane rule, window by window
        model = tiny_model()
        monkeypatch.setattr(model, "boundary_rule", {"threshold": 0.5, "seed_level": None, "merge_below": 0.6,
                                                     "minima_depth": 0.02, "sigma": 2.0, "hierarchical": True})
    else:  # upscaled bilinearly from network rows: the rows beside a band count
        config = ModelConfig(depth=2, base_filters=4, downscale=downscale)
        model = UNetModel(build_unet(config), config, [0, 255])
    image = stripes(n_slices=1, size=704, seed=4)[0][0][:, :400]
    whole = predict(model, image, tta=False, tile_size=128)
    monkeypatch.setattr(postprocess, "RULE_TILE", 160)
    monkeypatch.setattr(postprocess, "RULE_MARGIN", 40)
    held, original_take = [], predict_module._BlendedRows.take
    monkeypatch.setattr(predict_module._BlendedRows, "take", lambda rows, *span: held.append(len(rows.rows)) or original_take(rows, *span))
    events = list(predict_events(model, image, tta=False, tile_size=128))
    banded = events[-1]
    assert len(held) == 5 and max(held) < 0.65 * 704 / downscale, held  # five bands, none holding two thirds of the slice
    assert events[-2].done == events[-2].total  # no tile run twice
    if downscale == 3:  # 1/3 is not exact in binary: the interpolation's coordinates round as their band's, 1 ulp apart
        np.testing.assert_allclose(banded.probabilities, whole.probabilities, rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(banded.probabilities, whole.probabilities)
    if downscale == 1:
        expected = postprocess.tiled_boundary_mask(whole.probabilities[..., 0], **model.boundary_rule)
        np.testing.assert_array_equal(banded.labels, np.where(expected, 0, 255))
    else:
        np.testing.assert_array_equal(banded.labels, whole.labels)


def test_a_network_run_without_xla_where_keras_would_use_it_is_one_view_of_its_layers_for_all_calls(monkeypatch):
    # a network that folds to no copy (no batch norm, float32) got a new view, and a new trace, at every call
    import keras

    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet
    from napari_unet.model_io import UNetModel

    config = ModelConfig(depth=2, base_filters=4, batch_norm=False)
    model = UNetModel(build_unet(config), config, [0, 255])
    monkeypatch.setattr(keras.Model, "_resolve_auto_jit_compile", lambda self: True)  # Keras's "auto" where a GPU is listed
    networks, predict_on_batch = [], keras.Model.predict_on_batch
    monkeypatch.setattr(keras.Model, "predict_on_batch", lambda self, x: networks.append(self) or predict_on_batch(self, x))
    image = stripes(n_slices=1, size=64)[0][0]
    for _ in range(3):
        predict(model, image, tta=False, jit_compile=False, mixed_precision=False)
    assert len(networks) == 3 and len({id(n) for n in networks}) == 1, networks
    view = networks[0]
    assert view is not model.keras_model and view.jit_compile is False
    assert all(a is b for a, b in zip(view.weights, model.keras_model.weights))  # the network's own variables


def test_output_layers_that_would_not_fit_in_memory_are_refused_before_predicting(monkeypatch):
    from napari_unet import hardware
    from napari_unet.predict import check_layer_memory

    # two classes, uint8 labels: 1 byte, + 8 of probabilities, + 4 of cell instances, twice; + 1 + 4 twice for the undo
    model = tiny_model()
    shape = (64, 1024, 1024)
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 2**30)
    monkeypatch.setattr(hardware, "memory_capacity", lambda: hardware.MemoryCapacity(2**30, "this machine's memory"))
    with pytest.raises(InputError, match=r"predicting 'EM' \(64, 1024, 1024\) into output layers .* needs 2.2 GB .* more "
                                         r"than the 1.0 GB of this machine's memory; leave out"):
        check_layer_memory(model, shape, "EM", True, True)
    assert check_layer_memory(model, shape, "EM", False, False) is None  # labels alone: 0.25 GB
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: None)
    monkeypatch.setattr(hardware, "memory_capacity", lambda: None)
    assert check_layer_memory(model, shape, "EM", True, True) is None  # unknown: never refused


def test_a_model_file_path_is_loaded_and_anything_else_named(tmp_path):
    # predict("m.keras", image) and train(..., init="m.keras") failed with AttributeError: 'str' object has no attribute
    from napari_unet.model_io import save_model
    from napari_unet.train import train_events

    image, labels = stripes(n_slices=1, size=64)
    save_model(tiny_model(), tmp_path / "m.keras")
    from_path = predict(str(tmp_path / "m.keras"), image[0], tta=False)
    np.testing.assert_array_equal(from_path.labels, predict(tiny_model(), image[0], tta=False).labels)
    started = next(train_events(image, labels, None, tiny_model().train_config.replace(epochs=1, steps_per_epoch=1), init=tmp_path / "m.keras"))
    assert started.class_values == tiny_model().class_values
    assert started.model.config == tiny_model().config  # the file's network (without init: the default preset's)
    with pytest.raises(TypeError, match="model must be a UNetModel or the path of a .keras model file"):
        predict(None, image[0])


def test_tile_settings_must_be_whole_numbers_and_outputs_writeable():
    # tile_size 7.5 failed deep in tile_starts; a read-only labels_out failed after the network had run
    image = stripes(n_slices=1, size=64)[0][0]
    with pytest.raises(ValueError, match="must be whole numbers"):
        predict(tiny_model(), image, tile_size=7.5)
    with pytest.raises(ValueError, match="normalized=True takes float32 planes"):
        predict(tiny_model(), image, normalized=True)  # uint8: it would skip the normalisation the network needs
    read_only = np.zeros(image.shape, np.uint8)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="labels_out is read-only"):
        predict(tiny_model(), image, labels_out=read_only, tta=False)


def test_nested_lists_are_taken_as_arrays_everywhere():
    from napari_unet.chunked import predict_chunked
    from napari_unet.labels import training_labels
    from napari_unet.postprocess import cell_instances

    model = tiny_model()
    image, labels = stripes(n_slices=1, size=64)
    plane = image[0].tolist()
    expected = predict(model, image[0]).labels
    assert np.array_equal(np.asarray(predict_chunked(model, plane).labels), expected)
    normalised = normalize(image[0], model.percentiles, model.config.local_contrast_sigma).tolist()
    with pytest.raises(ValueError, match="float32"):  # it said "'list' object has no attribute 'dtype'"
        predict(model, normalised, normalized=True)
    assert cell_instances(labels[0].tolist(), 0).shape == (64, 64)
    assert training_labels(labels[0], (labels[0] > 0).tolist())[2] == [255]


def test_kept_pixels_must_have_the_images_shape():
    image, _ = stripes(n_slices=2, size=64)
    with pytest.raises(ValueError, match="kept must be integer class indices of the image's shape"):
        predict(tiny_model(), image, kept=np.full((64, 64), -1))
    with pytest.raises(ValueError, match="kept must be integer class indices"):
        predict(tiny_model(), image, kept=np.zeros(image.shape, bool))  # a mask: every pixel kept as class 0 or 1
    assert predict(tiny_model(), image, kept=np.full(image.shape, -1).tolist()).labels.shape == image.shape  # lists
    assert predict(tiny_model(), image, slices=[1], kept=np.full((1, 64, 64), -1)).labels.shape == (1, 64, 64)


def test_a_pixel_size_unlike_the_training_images_gets_a_note_unless_either_is_unknown():
    """An OCT B-scan of axial pixels of 1.936 µm predicted by a model trained at 3.872 µm: boundary errors 4x worse,
    without a word (oct-hunt REPORT.md, section 3)."""
    from types import SimpleNamespace

    from napari_unet.predict import pixel_size_note
    from napari_unet.tiff_io import pixel_size_um

    trained = SimpleNamespace(pixel_size=[3.872, 11.29])
    assert pixel_size_note(trained, [3.872, 11.29]) is None
    assert pixel_size_note(trained, [3.872 * 1.2, 11.29 / 1.2]) is None  # within 25 % on each axis
    note = pixel_size_note(trained, [1.936, 11.29])
    assert note == ("the image's pixels are 1.936 x 11.29 µm (Y x X), the model was trained on pixels of 3.872 x 11.29 µm: "
                    "along Y the network sees structures at another size than it learned, and its labels can be wrong "
                    "without any error. Resample the image to the training pixel size (zoom Y by 0.5 and X by 1) and "
                    "predict that")
    assert "along Y and X" in pixel_size_note(trained, [1.936, 22.58]) and "along X " in pixel_size_note(trained, [3.872, 5.0])
    # both axes off by a ratio of length units: a wrong unit tag (circular-scan.tif's says inches for mm), which the
    # note had answered by telling the user to zoom the model's own training image 25.4 times
    assert pixel_size_note(trained, [3.872 * 25.4, 11.29 * 25.4]) == (
        "the image's pixels are 98.35 x 286.8 µm (Y x X), the model was trained on pixels of 3.872 x 11.29 µm: 25.4 times "
        "larger on both axes, a ratio of length units, so the image's pixel size is probably in the wrong unit; if so, "
        "give the image its right pixel size and predict again, else resample it to the training pixel size")
    assert "1000 times smaller on both axes" in pixel_size_note(trained, [0.003872, 0.01129])
    assert "zoom Y by 25 and X by 25" in pixel_size_note(trained, [3.872 * 25, 11.29 * 25])  # no ratio of units
    assert "zoom Y by 10 and X by 10" in pixel_size_note(trained, [38.72, 112.9])  # 10x: an objective can give it
    assert pixel_size_note(trained, None) is None  # an image without a physical pixel size
    assert pixel_size_note(SimpleNamespace(pixel_size=None), [1.936, 11.29]) is None  # a model trained on one without
    # lengths in any unit, as files and napari layers name them, in µm; "pixel" or a time is no pixel size
    assert pixel_size_um([1.0, 3.872, 11.29], [None, "µm", "µm"]) == [3.872, 11.29]
    assert pixel_size_um((0.003872, 0.01129), ("millimeter", "millimeter")) == pytest.approx([3.872, 11.29])
    assert pixel_size_um([5.0, 5.0], ["nm", "nanometer"]) == pytest.approx([0.005, 0.005])
    for scale, units in (([1.0, 1.0], ["pixel", "pixel"]), ([3.872, 11.29], [None, "µm"]), ([0.5, 3.0], ["s", "µm"]),
                         ([0.0, 3.0], ["µm", "µm"]), ([3.0], ["µm"]), (None, None)):
        assert pixel_size_um(scale, units) is None


def test_blank_slices_are_named():
    # a blank B-scan in a Duke stack got retinal layers without a word
    from napari_unet.predict import blank_slices_note

    image, _ = stripes(n_slices=3, size=64)
    image = image.copy()
    image[1] = 7
    result = predict(tiny_model(), image, tta=False)
    assert result.blank_slices == (1,)
    assert predict(tiny_model(), image, slices=[0, 2], tta=False).blank_slices == ()
    assert blank_slices_note(result.blank_slices) == "1 slice of the image is blank (one grey value: slice 1): its predicted labels mean nothing"
    assert blank_slices_note(()) is None


def test_the_folded_network_is_built_once_per_model_and_settings_while_the_weights_stay(monkeypatch):
    import dataclasses
    import gc
    import weakref

    from napari_unet import predict as predict_module
    from napari_unet.model import build_unet

    shared = tiny_model()  # with batch norm: prediction runs a folded copy; the test changes weights of its own copy
    network = build_unet(shared.config)
    network.set_weights(shared.keras_model.get_weights())
    model = dataclasses.replace(shared, keras_model=network)
    image = stripes(n_slices=1, seed=3)[0][0]
    folds = []
    real_fold = predict_module.fold_batch_norm
    monkeypatch.setattr(predict_module, "fold_batch_norm", lambda *args: folds.append(args[2]) or real_fold(*args))
    settings = dict(tta=False, mixed_precision=False)
    first = predict(model, image, **settings)
    again = predict(model, image, **settings)  # a script predicting image by image: no second copy, no retracing
    assert folds == [False]
    np.testing.assert_array_equal(again.probabilities, first.probabilities)
    predict(model, image, tta=False, mixed_precision=True)  # other settings: another copy
    assert folds == [False, True]

    # changed weights are never predicted with the old copy: a trainable weight, then a batch-norm statistic only
    kernel = next(v for v in network.weights if "kernel" in v.path)
    kernel.assign(kernel.numpy() * 1.5)
    changed = predict(model, image, **settings)
    assert len(folds) == 3 and not np.allclose(changed.probabilities, first.probabilities)
    mean = next(v for v in network.weights if "moving_mean" in v.path)
    edited = mean.numpy()
    edited.flat[0] += 0.5
    mean.assign(edited)
    predict(model, image, **settings)
    assert len(folds) == 4

    # the kept copy goes with its network
    assert network in predict_module._FORWARD_CACHE
    entries = len(predict_module._FORWARD_CACHE)
    alive = weakref.ref(network)
    del model, network, kernel, mean
    gc.collect()
    assert alive() is None and len(predict_module._FORWARD_CACHE) <= entries - 1  # (other tests' networks may go too)


def test_a_tiff_data_object_is_named_not_called_an_image_of_shape_nothing(tmp_path):
    """The README's read_tiff(path, lazy=True) given to predict as it is: "image has shape ()"."""
    import tifffile

    from napari_unet.data import InputError
    from napari_unet.tiff_io import read_tiff
    from napari_unet.train import train

    image, labels = stripes(n_slices=2, size=64, seed=2)
    tifffile.imwrite(tmp_path / "image.tif", image)
    for call in (lambda: predict(tiny_model(), read_tiff(tmp_path / "image.tif", lazy=True)),
                 lambda: train(read_tiff(tmp_path / "image.tif"), labels)):
        with pytest.raises(InputError, match="image is a TiffData, not an array: give its .data"):
            call()
    assert predict(tiny_model(), read_tiff(tmp_path / "image.tif", lazy=True).data, tta=False).labels.shape == image.shape


def test_a_blank_slice_does_not_make_a_stack_unlike_the_training_images():
    """One blank frame of a short stack: the note on the blank slice, and a false "intensities unlike the training
    images'" (one of 2 slices: profile distance 0.28)."""
    from napari_unet.predict import intensity_note

    image = stripes(n_slices=2, seed=9)[0].copy()
    image[1] = 7
    assert intensity_note(image, tiny_model()) is None
    assert "unlike the training images" in intensity_note(255 - image, tiny_model())
    intensity_note(np.full((2, 64, 64), 7, np.uint8), tiny_model())  # all blank: no failure (predict names them)
