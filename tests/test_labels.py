import numpy as np
import pytest

from napari_unet.labels import (
    LabelError,
    check_trainable,
    choose_ignore_value,
    find_class_values,
    from_display,
    from_indices,
    layer_order,
    smallest_dtype,
    to_display,
    to_indices,
)


def test_isbi_values_map_to_indices_and_back():
    labels = np.array([[0, 255], [255, 0]], np.uint8)
    indices = to_indices(labels, [0, 255])
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(indices, [[0, 1], [1, 0]])
    back = from_indices(indices, [0, 255])
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)


def test_ignore_value_becomes_minus_one():
    labels = np.array([0, 255, 7, 0])
    np.testing.assert_array_equal(to_indices(labels, [0, 255], ignore_value=7), [0, 1, -1, 0])


def test_unknown_values_are_refused():
    with pytest.raises(LabelError, match=r"\[3\]"):
        to_indices(np.array([0, 3, 255]), [0, 255])


def test_display_convention_round_trip_keeps_zero_as_a_class():
    labels = np.array([[0, 255, 0], [255, 255, 0]], np.uint8)
    display = to_display(labels, [0, 255])
    np.testing.assert_array_equal(display, [[1, 2, 1], [2, 2, 1]])  # 0 is never "not annotated" here
    np.testing.assert_array_equal(from_display(display, [0, 255]), labels)
    assert labels.tolist() == [[0, 255, 0], [255, 255, 0]]  # input untouched


def test_unannotated_display_pixels_need_an_ignore_value():
    display = np.array([0, 1, 2], np.uint8)
    with pytest.raises(LabelError, match="ignore"):
        from_display(display, [0, 255])
    ignore = choose_ignore_value([0, 255])
    assert ignore not in (0, 255)
    np.testing.assert_array_equal(from_display(display, [0, 255], ignore), [ignore, 0, 255])
    assert choose_ignore_value([1, 2, 3]) == 0
    assert choose_ignore_value(range(65536)) == 65536  # every 16-bit value a class: the next one
    with pytest.raises(LabelError, match="no class values"):
        to_indices(display, [])
    for bad in (3, -1):  # beyond the classes, or negative (it wrapped round to the last class)
        with pytest.raises(LabelError, match=f"holds display label {bad}, which is no class"):
            from_display(np.array([1, bad], np.int16), [0, 255])


def test_oct_layers_keep_their_values():
    labels = np.arange(10, dtype=np.uint8).reshape(2, 5)
    values = find_class_values(labels)
    assert values == list(range(10))
    np.testing.assert_array_equal(from_display(to_display(labels, values), values), labels)


@pytest.mark.parametrize(
    "labels, ignore, words",
    [
        (np.zeros((4, 4), np.uint8), None, "only the value 0"),
        (np.full((4, 4), 9, np.uint8), 9, "no annotated pixel"),
        (np.array([[0.5, 1.0]]), None, "fractional"),
        (np.array([[np.nan, 1.0]]), None, "NaN"),
        (np.array([[0, 2**63 + 5]], np.uint64), None, "above 2\\*\\*63 - 1"),  # it wrapped to a negative class value
    ],
)
def test_untrainable_labels_give_clear_messages(labels, ignore, words):
    with pytest.raises(LabelError, match=words):
        check_trainable(labels, ignore)


def test_labels_must_fit_an_existing_models_classes():
    with pytest.raises(LabelError, match="does not know"):
        check_trainable(np.array([0, 1, 2]), class_values=[0, 1])
    with pytest.raises(LabelError, match="fine-tuning on one class teaches the model to predict it everywhere"):
        check_trainable(np.array([1, 1, 1]), class_values=[0, 1])
    with pytest.raises(LabelError, match="does not know"):  # one unknown value: named as unknown first
        check_trainable(np.array([7, 7]), class_values=[0, 1])


@pytest.mark.parametrize("dtype, class_values", [(np.uint8, [0, 3, 255]), (np.int16, [-300, 0, 7]), (bool, [0, 1])])
def test_small_integer_labels_map_through_a_table_without_int64_copies(dtype, class_values):
    import tracemalloc

    rng = np.random.default_rng(0)
    labels = rng.choice(class_values, (32, 512, 512)).astype(dtype)
    expected = np.searchsorted(class_values, labels.astype(np.int64))
    tracemalloc.start()
    try:
        display = to_display(labels, class_values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(display, expected + 1)
    np.testing.assert_array_equal(to_indices(labels, class_values), expected)
    assert peak < 2 * labels.size + 64 * 2**20, "a uint8 stack took 37 times its size in int64 copies"


def test_layer_order_finds_layers_stacked_top_to_bottom_and_not_membranes():
    from napari_unet.synthetic import make_em_stack, make_oct_stack

    _, oct_labels = make_oct_stack(2, (96, 64), seed=3)
    indices = oct_labels.astype(np.int64)
    assert layer_order(indices) == tuple(range(10))
    assert layer_order(indices[:, ::-1]) == tuple(range(9, -1, -1))  # upside down: the order reversed
    assert layer_order(indices[0]) == tuple(range(10))  # one B-scan
    _, em_labels = make_em_stack(2, (96, 96), seed=1)
    assert layer_order(to_indices(em_labels, [0, 255])) is None  # membranes alternate with cells down a column
    assert layer_order(np.swapaxes(indices, 1, 2)) is None  # layers side by side: rotations do not turn them upside down
    sparse = np.full_like(indices, -1)
    sparse[:, :, :20] = indices[:, :, :20]  # unannotated columns are not read
    assert layer_order(sparse) == tuple(range(10))
    assert layer_order(sparse[:, :, :3]) is None  # too few columns to tell
    gaps = indices.copy()
    gaps[indices == 0] = -1  # an OCT mask whose vitreous (0) counts as not annotated (napari's "0 = unannotated")
    gaps[:, 50:53] = -1  # and an unannotated strip across every column
    assert layer_order(gaps) == tuple(range(1, 10))
    broken = indices.copy()
    broken[:, 10:14, :] = 9  # a band of "choroid" in the vitreous of every column: not one order
    assert layer_order(broken) is None
    inputs = indices.copy()
    layer_order(inputs)
    np.testing.assert_array_equal(inputs, indices)


@pytest.mark.parametrize("columns", [4, 10, 40])
def test_a_pocket_inside_a_layer_is_left_out_of_the_layer_order(columns):
    # fluid (class 10) inside a layer of 3 % of the columns was ordered below the choroid; over 5 % the labels were not
    # called layered at all (rotations on, no layer order, no boundary errors)
    from napari_unet.synthetic import make_oct_stack

    _, oct_labels = make_oct_stack(2, (96, 64), seed=3)
    indices = oct_labels.astype(np.int64)
    fluid = indices.copy()
    for z in range(2):
        for x in range(10, 10 + columns):
            rows = np.flatnonzero(indices[z, :, x] == 5)  # 5 to 10 rows: the pocket splits the layer
            fluid[z, rows[len(rows) // 2], x] = 10
    assert layer_order(fluid) == tuple(range(10))
    above = fluid.copy()
    above[:, 10:12, :] = 10  # the same class also across the vitreous of every column: no pocket, no one order
    assert layer_order(above) is None
    few = np.where(indices < 5, 0, 1)  # two layers and a pocket: not layered (the pocket went below them before)
    few[:, 40:42, 10:10 + columns] = 2
    assert layer_order(few) is None


def test_label_mappings_refuse_fractions_nan_and_unannotated_indices_and_take_class_values_in_any_order():
    from napari_unet.labels import IGNORE_INDEX, from_indices

    for labels, words in (([0.5, 1.7], "fractional"), ([np.nan, 1.0], "NaN"), (["a", "b"], "dtype")):
        with pytest.raises(LabelError, match=words):  # 0.5 and 1.7 became classes 0 and 1
            to_indices(np.array(labels), [0, 1])
    with pytest.raises(LabelError, match="fractional"):
        to_display(np.array([0.9, 255.0]), [0, 255])
    for dtype in (np.uint8, np.int64):  # the table (8/16 bits) and the search (wider) agree
        np.testing.assert_array_equal(to_indices(np.array([0, 255, 7], dtype), [255, 0], ignore_value=7), [1, 0, IGNORE_INDEX])
    with pytest.raises(LabelError, match="-1 marks unannotated pixels"):  # it became the last class
        from_indices(to_indices(np.array([0, 7, 255]), [0, 255], ignore_value=7), [0, 255])
    with pytest.raises(LabelError, match="class index 2 is not one of the 2 classes"):
        from_indices(np.array([0, 2]), [0, 255])
    np.testing.assert_array_equal(from_indices(np.array([[1, 0]]), [0, 255]), [[255, 0]])


def test_predicted_labels_take_the_smallest_dtype_of_their_class_values():
    from napari_unet.labels import smallest_dtype

    # numpy's promotion of int8 and uint16 made labels of classes -5 and 1000 int32
    cases = {(0, 255): np.uint8, (0, 256): np.uint16, (-5, 1000): np.int16, (-5, 100): np.int8, (0, 70000): np.uint32,
             (-1, 2**31): np.int64}
    for values, dtype in cases.items():
        assert smallest_dtype(values) == dtype, values
    np.testing.assert_array_equal(from_indices(np.array([1, 0]), [-5, 1000]), np.array([1000, -5], np.int16))
    assert from_indices(np.array([1, 0]), [-5, 1000]).dtype == np.int16


def test_indices_take_the_dtype_asked_for_and_the_same_values():
    from napari_unet.labels import count_classes

    labels = np.array([[[0, 255, 7], [255, 255, 0]]], np.uint8)
    for source in (labels, labels.astype(np.int64)):  # lookup table and sorted search
        small = to_indices(source, [0, 255], ignore_value=7, dtype=np.int8)
        assert small.dtype == np.int8
        np.testing.assert_array_equal(small, to_indices(source, [0, 255], ignore_value=7))
    with pytest.raises(ValueError, match="cannot hold"):
        to_indices(labels, list(range(200)) + [255], dtype=np.int8)
    with pytest.raises(ValueError, match="cannot hold"):
        to_indices(labels, [0, 255], dtype=np.uint8)  # -1 marks unannotated pixels
    indices = to_indices(labels, [0, 255], ignore_value=7, dtype=np.int8)
    np.testing.assert_array_equal(count_classes(indices, 2), [2, 3])
    np.testing.assert_array_equal(count_classes(indices[0, 0], 3), [1, 1, 0])


def test_wide_integer_and_float_labels_map_in_blocks(monkeypatch):
    # int32 or float label files took 33 bytes a pixel of int64 copies (the 8/16-bit lookup table already went by blocks)
    import tracemalloc

    from napari_unet import labels as labels_module

    monkeypatch.setattr(labels_module, "_TABLE_BLOCK", 1 << 16)
    rng = np.random.default_rng(0)
    wide = rng.choice(np.array([0, 255, 70000], np.int32), size=(4, 512, 512))
    tracemalloc.start()
    try:
        indices = to_indices(wide, [0, 255, 70000], dtype=np.int8)
        peak = tracemalloc.get_traced_memory()[1] / wide.size
    finally:
        tracemalloc.stop()
    assert peak < 4, peak  # the int8 result and one block's copies
    np.testing.assert_array_equal(indices, np.select([wide == 0, wide == 255], [0, 1], 2))
    floats = wide.astype(np.float64)
    floats[0, 0, 0] = 12  # the ignore value
    floats[0, 0, 1:8] = [50, 51, 52, 53, 54, 55, 56]  # more than 5 bad values in the first block
    floats[3, 511, 511], floats[2, 7, 7] = 9, -3  # and smaller ones in later blocks: the message names the 5 smallest
    with pytest.raises(LabelError, match=r"label values \[-3, 9, 50, 51, 52\] are not among"):
        to_indices(floats, [0, 255, 70000], ignore_value=12)
    assert to_indices(floats[:1, :1, :1], [0, 255, 70000], ignore_value=12).tolist() == [[[-1]]]  # the ignore value


def test_training_labels_keep_class_values_beyond_int32():
    """0xFFFFFFFF masks were cast to int32: the model learnt a class -1 that the labels layer did not have."""
    from napari_unet.labels import training_labels

    values = np.array([[0, 0xFFFFFFFF], [0xFFFFFFFF, 0]], np.uint32)
    annotated = np.array([[True, True], [False, True]])
    labels, ignore, classes = training_labels(values, annotated, "mask")
    assert classes == [0, 0xFFFFFFFF] and ignore not in classes
    assert labels[0, 1] == 0xFFFFFFFF and labels[1, 0] == ignore and labels.dtype == np.int64
    small, _, _ = training_labels(np.array([[0, 255]], np.uint16), np.ones((1, 2), bool), "isbi")
    assert small.dtype == np.uint8
    wide, _, _ = training_labels(np.array([[-5, 70000]], np.int64), np.ones((1, 2), bool), "codes")
    assert wide.dtype == np.int32 and wide.tolist() == [[-5, 70000]]
    with pytest.raises(LabelError, match="no annotated pixel"):
        training_labels(values, np.zeros(values.shape, bool), "mask")


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 0, 5), (2, 4, 0), (0, 0)])
def test_labels_without_pixels_are_not_layered_and_no_values_fit_uint8(shape):
    assert layer_order(np.zeros(shape, np.int64)) is None
    assert smallest_dtype([]) == np.uint8 and smallest_dtype(np.zeros(shape, np.int64)) == np.uint8


def test_fractional_display_values_are_refused_not_truncated():
    from napari_unet.labels import LabelError, from_display

    with pytest.raises(LabelError, match="no whole numbers"):
        from_display(np.array([[0.5, 1.0], [2.0, 1.5]]), [0, 255], ignore_value=7)
    with pytest.raises(LabelError, match="no whole numbers"):
        from_display(np.array([[np.nan, 1.0]]), [0, 255], ignore_value=7)
    assert from_display(np.array([[0.0, 1.0], [2.0, 1.0]]), [0, 255], ignore_value=7).tolist() == [[7, 0], [255, 0]]
