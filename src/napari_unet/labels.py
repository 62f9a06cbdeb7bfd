"""Class values of label images, and the napari display convention.

Label files keep their own values (ISBI 2012: 0 = membrane, 255 = cell interior; OCT: 0 = vitreous,
1-8 = retinal layers, 9 = choroid). The network works on class *indices* 0..K-1, and napari shows a
Labels layer in *display* values where 0 means "not annotated" (drawn transparent, painted by the
eraser) and ``k + 1`` is class ``class_values[k]``.
"""

from __future__ import annotations

import functools
import numbers
import reprlib

import numpy as np

#: Index used for pixels that carry no annotation (they do not contribute to the loss).
IGNORE_INDEX = -1
#: ``layer.metadata["napari_unet"]["output"]`` of a prediction layer written by the inference widget.
PREDICTION_OUTPUT = "prediction"
#: ``layer.metadata`` key of a plain labels layer (no ``class_values``: its values are the classes): True when its value
#: 0 is a class too (a raw 0/255 mask trained with "label 0 = not annotated" unchecked); its file then records 0 as a
#: class, not as "not annotated".
ZERO_IS_CLASS = "zero_is_class"


class LabelError(ValueError):
    """Labels that cannot be used for training (one class, nothing annotated, wrong dtype...)."""


#: More distinct label values than this are object ids (instance labels, e.g. from cellpose), not classes.
MAX_CLASSES = 64


def check_class_count(n_classes: int, what: str) -> None:
    """:class:`LabelError` if ``n_classes`` is more than :data:`MAX_CLASSES` (each class costs a network output)."""
    if n_classes > MAX_CLASSES:
        raise LabelError(
            f"{what}: {n_classes} distinct values; a U-Net learns at most {MAX_CLASSES} classes. One value per "
            "object (instance labels) is not a class: make classes first, e.g. object boundaries vs interiors"
        )


def find_class_values(labels, ignore_value=None) -> list[int]:
    """Sorted distinct values of ``labels`` (any shape, integer dtype) except ``ignore_value``."""
    values = unique_values(_whole_numbers(labels))
    if values.dtype == np.uint64 and values.size and values[-1] > np.iinfo(np.int64).max:
        raise LabelError(f"label value {int(values[-1])} is above 2**63 - 1, the largest class value napari-unet "
                         "supports; number the classes with smaller values")
    values = values.astype(np.int64)
    if ignore_value is not None:
        values = values[values != int(ignore_value)]
    return [int(v) for v in values]


def check_trainable(labels, ignore_value=None, class_values=None) -> list[int]:
    """Class values of ``labels`` after checking they can train a model; raises :class:`LabelError`."""
    found = find_class_values(labels, ignore_value)
    if not found:
        raise LabelError(
            "the labels contain no annotated pixel"
            + (f" (every pixel has the ignore value {ignore_value})" if ignore_value is not None else "")
            + "; annotate at least two classes"
        )
    unknown = sorted(set(found) - set(class_values)) if class_values is not None else []
    if unknown:
        raise LabelError(
            f"the labels contain values {unknown} that the model does not know (its classes are {list(class_values)})"
        )
    if len(found) < 2:  # fine-tuning on one class too: the model learns to give it everywhere
        raise LabelError(
            f"the labels contain only the value {found[0]}; "
            + ("a model needs at least two classes (e.g. membrane and cell)" if class_values is None else
               "fine-tuning on one class teaches the model to predict it everywhere: annotate pixels of another class too")
        )
    return found if class_values is None else list(class_values)


#: :func:`layer_order`: share of the columns whose annotated pixels hold two or more classes that must be ordered, and
#: how many such columns there must be at least.
LAYERED_SHARE, LAYERED_MIN_COLUMNS = 0.95, 8

#: :func:`layer_order`: a class in fewer than this share of those columns (fluid, drusen, a detachment inside the
#: retina) is a pocket, no layer: it is kept out of the order and its pixels are judged as the layer around them.
POCKET_SHARE = 0.5

#: :func:`layer_order`: pockets lie beside at least this many layers (retinal OCT has 10 classes; tissue under a
#: background strip with nuclei in it is no layered OCT mask), and at most this many wider ones are tried.
MIN_LAYERS_BESIDE_POCKETS, MAX_WIDE_POCKETS = 3, 2


def layer_order_steps(shape, max_columns: int = 4096) -> tuple[int, int]:
    """(z_step, x_step): the strides over slices and columns of a (Z, Y, X) ``shape`` at which :func:`layer_order`
    reads at most ``max_columns`` columns (``stack[::z_step, :, ::x_step]``, which it then reads whole)."""
    n_z, _, n_x = shape
    x_step = max(1, min(n_x, -(-n_z * n_x // max_columns)))
    return max(1, -(-n_z * -(-n_x // x_step) // max_columns)), x_step


def _judged_columns(columns: np.ndarray) -> np.ndarray:
    """The (N, Y) class-index ``columns`` (negative = not annotated) that hold two or more classes, their unannotated
    pixels given the class of the annotated pixel above (at the top: below), so that a column is judged by its annotated
    pixels in their order (an OCT mask whose vitreous is unannotated, untraced boundaries)."""
    annotated = columns >= 0
    columns, annotated = columns[annotated.any(axis=1)], annotated[annotated.any(axis=1)]
    source = np.maximum.accumulate(np.where(annotated, np.arange(columns.shape[1]), 0), axis=1)
    columns = np.take_along_axis(columns, source, axis=1)
    first = np.take_along_axis(columns, annotated.argmax(axis=1)[:, None], axis=1)
    columns = np.where(columns < 0, first, columns)
    return columns[columns.min(axis=1) != columns.max(axis=1)]


def _sampled_judged_columns(indices, max_columns: int):
    """:func:`_judged_columns` of at most ``max_columns`` evenly spaced columns of (Y, X) or (Z, Y, X) ``indices``
    (an (N, Y) array), None if ``indices`` are empty."""
    stack = np.asarray(indices)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.size == 0:
        return None
    z_step, x_step = layer_order_steps(stack.shape, max_columns)  # evenly spaced columns, picked before any copy
    return _judged_columns(np.moveaxis(stack[::z_step, :, ::x_step], 1, -1).reshape(-1, stack.shape[1]))


def layering_undecided(indices, max_columns: int = 4096) -> bool:
    """Whether too few columns of ``indices`` (as :func:`layer_order` takes them) hold two or more annotated classes
    for :func:`layer_order` to judge them: fewer than :data:`LAYERED_MIN_COLUMNS` (a few OCT columns, a scribble)."""
    columns = _sampled_judged_columns(indices, max_columns)
    return columns is None or len(columns) < LAYERED_MIN_COLUMNS


def layer_order(indices, max_columns: int = 4096, max_classes: int = 64):
    """The top-to-bottom order of the classes (a tuple of class indices) if ``indices`` are layered, else None.

    ``indices``: (Y, X) or (Z, Y, X) integer class indices, negative where not annotated. Layered (retinal OCT
    layers, anything stacked along Y) means: down at least :data:`LAYERED_SHARE` of the columns whose annotated pixels
    hold two or more classes, each class is a single run of those pixels and the runs follow one order. Such labels depend on
    which way is up, so a network must not learn them from rotated patches. EM membranes alternate with cells down a
    column and are not layered. Classes in fewer than :data:`POCKET_SHARE` of those columns (fluid inside a layer) are
    pockets: they are left out of the order, and their pixels count as the layer above them; so are, while the labels
    are not layered, up to :data:`MAX_WIDE_POCKETS` next rarest classes that do not span the columns (a wide pocket).
    Pockets lie beside at least :data:`MIN_LAYERS_BESIDE_POCKETS` layers. At most ``max_columns``
    evenly spaced columns are read; labels of more than ``max_classes`` classes are not called layered.
    """
    columns = _sampled_judged_columns(indices, max_columns)
    if columns is None:
        return None
    n_classes = int(columns.max()) + 1 if len(columns) else 0
    if len(columns) < LAYERED_MIN_COLUMNS or n_classes > max_classes:
        return None
    shares = np.array([(columns == c).any(axis=1).mean() for c in range(n_classes)])
    # pockets: the classes of few columns, then, while the labels are not layered, the next rarest classes that do
    # not span the columns (a wide pocket splits its layer in too many columns)
    rarest = [int(c) for c in np.argsort(shares, kind="stable") if 0 < shares[c] < LAYERED_SHARE]
    n_pockets, n_present = sum(shares[c] < POCKET_SHARE for c in rarest), int(np.count_nonzero(shares))
    if n_pockets and n_present - n_pockets < MIN_LAYERS_BESIDE_POCKETS:
        return None  # ordered with the others, a rare class went below them and was never predicted
    most = min(len(rarest), n_pockets + MAX_WIDE_POCKETS, n_present - MIN_LAYERS_BESIDE_POCKETS)
    while True:
        pockets = rarest[:n_pockets]
        judged = _judged_columns(np.where(np.isin(columns, pockets), -1, columns)) if pockets else columns
        order = _column_order(judged, n_classes) if len(judged) >= LAYERED_MIN_COLUMNS else None
        if order is not None or n_pockets >= most:
            return order
        n_pockets += 1


def _column_order(columns: np.ndarray, n_classes: int) -> tuple | None:
    """:func:`layer_order` of filled (N, Y) ``columns`` (:func:`_judged_columns`): the order, or None."""
    height = columns.shape[1]
    first = np.full((len(columns), n_classes), np.inf)
    single_run = np.ones(len(columns), bool)
    for c in range(n_classes):
        where = columns == c
        count = where.sum(axis=1)
        present = count > 0
        top, bottom = where.argmax(axis=1), height - 1 - where[:, ::-1].argmax(axis=1)
        single_run &= ~present | (bottom - top + 1 == count)
        first[present, c] = top[present]
    # the order: classes by how many others they start above (a majority over columns), then checked column by column
    above = np.array([[np.sum(first[:, a] < first[:, b]) for b in range(n_classes)] for a in range(n_classes)])
    wins = (above > above.T).sum(axis=1)
    present = np.flatnonzero(np.isfinite(first).any(axis=0))
    order = present[np.argsort(-wins[present], kind="stable")]
    starts = first[:, order]
    finite = np.isfinite(starts)
    above = np.maximum.accumulate(np.where(finite, starts, -np.inf), axis=1)  # the lowest start so far, per column
    in_order = (~finite[:, 1:] | (starts[:, 1:] > above[:, :-1])).all(axis=1)
    ordered = single_run & in_order
    return tuple(int(c) for c in order) if ordered.mean() >= LAYERED_SHARE else None


def to_indices(labels, class_values, ignore_value=None, dtype=np.int32) -> np.ndarray:
    """Map label values to class indices (``dtype``, int32 by default; same shape); unannotated pixels become -1.

    ``dtype``: a signed integer type holding every class index (int8 for up to 127 classes: training keeps the indices
    of a whole stack, a quarter of int32's memory). Values that are neither a class nor ``ignore_value`` raise
    :class:`LabelError`.
    """
    labels = _whole_numbers(labels)
    class_values = np.asarray(class_values, dtype=np.int64)
    if class_values.size == 0:
        raise LabelError("there are no class values to map labels to")
    dtype = np.dtype(dtype)
    if dtype.kind != "i" or len(class_values) - 1 > np.iinfo(dtype).max:
        raise ValueError(f"dtype {dtype} cannot hold the class indices -1..{len(class_values) - 1}")
    mapped = _map_through_table(labels, class_values, ignore_value, 0, IGNORE_INDEX, dtype)
    if mapped is not None:
        return mapped
    flat = labels.reshape(-1)
    out = np.empty(flat.shape, dtype)
    bad: set = set()
    for start in range(0, flat.size, _TABLE_BLOCK):  # in blocks: int64 copies of a whole int32 stack took 33 bytes a pixel
        block = flat[start : start + _TABLE_BLOCK].astype(np.int64, copy=False)
        indices = positions_in(class_values, block)
        unknown = indices == IGNORE_INDEX
        if ignore_value is not None:
            unknown &= block != int(ignore_value)
        if unknown.any():
            bad.update(np.unique(block[unknown])[:5].tolist())
        out[start : start + _TABLE_BLOCK] = indices
    if bad:
        raise LabelError(f"label values {sorted(bad)[:5]} are not among the classes {class_values.tolist()}")
    return out.reshape(labels.shape)


def count_classes(indices, n_classes: int) -> np.ndarray:
    """int64 (n_classes,) pixel count of each class index in (..., Y, X) integer ``indices`` (negative ones and those of
    ``n_classes`` or more are not counted).

    Plane by plane: ``np.bincount`` of a whole stack made an 8-byte copy of every annotated pixel."""
    indices = np.asarray(indices)
    counts = np.zeros(n_classes, np.int64)
    for plane in indices.reshape((-1,) + indices.shape[-2:]) if indices.ndim >= 2 else [indices]:
        counts += np.bincount(plane[plane >= 0].ravel(), minlength=n_classes)[:n_classes]
    return counts


_TABLE_BLOCK = 1 << 22  # pixels mapped at a time: bounds the index copies numpy makes


def _map_through_table(labels, class_values, ignore_value, first: int, ignored: int, dtype) -> np.ndarray | None:
    """8/16-bit integer or bool ``labels`` mapped through a lookup table: ``class_values[k]`` -> ``first + k``,
    ``ignore_value`` -> ``ignored``, in blocks (a uint8 stack took 37 times its size in int64 copies before).
    None for other dtypes; :class:`LabelError` for values that are neither."""
    if labels.dtype.kind not in "biu" or labels.dtype.itemsize > 2:
        return None
    lowest = int(np.iinfo(labels.dtype).min) if labels.dtype.kind == "i" else 0
    size = 2 if labels.dtype == bool else 1 << (8 * labels.dtype.itemsize)
    table, unknown = np.zeros(size, dtype), np.ones(size, bool)
    for k, value in enumerate(class_values.tolist()):
        if 0 <= value - lowest < size:
            table[value - lowest], unknown[value - lowest] = first + k, False
    if ignore_value is not None and 0 <= int(ignore_value) - lowest < size and unknown[int(ignore_value) - lowest]:
        table[int(ignore_value) - lowest], unknown[int(ignore_value) - lowest] = ignored, False
    flat = labels.reshape(-1)
    out = np.empty(flat.shape, dtype)
    counts = np.zeros(size, np.int64)
    for start in range(0, flat.size, _TABLE_BLOCK):
        positions = flat[start : start + _TABLE_BLOCK].astype(np.intp) - lowest
        out[start : start + _TABLE_BLOCK] = table[positions]
        counts += np.bincount(positions, minlength=size)
    bad = np.flatnonzero(unknown & (counts > 0))
    if bad.size:
        raise LabelError(f"label values {(bad[:5] + lowest).tolist()} are not among the classes {class_values.tolist()}")
    return out.reshape(labels.shape)


def positions_in(values, labels) -> np.ndarray:
    """int32 array of ``labels``' shape: the position of each label in ``values`` (any order, distinct), or
    :data:`IGNORE_INDEX` for labels that are none of them."""
    values = np.asarray(values)
    sorter = np.argsort(values, kind="stable")  # values in any order, as the lookup table of to_indices takes them
    position = np.minimum(np.searchsorted(values[sorter], labels), len(values) - 1)
    return np.where(values[sorter][position] == labels, sorter[position], IGNORE_INDEX).astype(np.int32)


def from_indices(indices, class_values, dtype=None) -> np.ndarray:
    """Map class indices (any int array, values 0..K-1) back to label values.

    The dtype is :func:`smallest_dtype` of ``class_values`` (unsigned unless a value is negative) unless given. Indices outside 0..K-1 (such as
    :data:`IGNORE_INDEX`, which has no label value) raise :class:`LabelError`.
    """
    class_values = np.asarray(class_values, dtype=np.int64)
    indices = np.asarray(indices)
    if dtype is None:
        dtype = smallest_dtype(class_values)
    if indices.size and (indices.min() < 0 or indices.max() >= len(class_values)):
        bad = int(indices.min()) if indices.min() < 0 else int(indices.max())
        raise LabelError(f"class index {bad} is not one of the {len(class_values)} classes' indices 0..{len(class_values) - 1}"
                         + (" (-1 marks unannotated pixels, which have no class value)" if bad == IGNORE_INDEX else ""))
    return class_values.astype(dtype)[indices]


def unique_values(values: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """Sorted distinct values of an array: for integers spanning less than 2**16, counted block by block (np.unique sorts
    every pixel: 0.2-0.5 s on napari's GUI thread for 8 Mpx), else np.unique."""
    if values.dtype.kind not in "biu" or values.size == 0:
        return np.unique(values)
    low, high = int(values.min()), int(values.max())
    if high - low >= 1 << 16 or high >= 1 << 63:  # wide, or beyond int64 (uint64)
        return np.unique(values)
    flat, counts = values.reshape(-1), np.zeros(high - low + 1, np.int64)
    for start in range(0, flat.size, block):  # bounded int64 copies
        counts += np.bincount(flat[start : start + block].astype(np.int64) - low, minlength=len(counts))
    return (np.flatnonzero(counts) + low).astype(np.int64)


def training_labels(values: np.ndarray, annotated: np.ndarray, name: str = "the labels"):
    """(labels, ignore_value, classes) for training from painted class ``values`` and a bool ``annotated`` mask of the
    same shape: annotated pixels keep their value, the others get ``ignore_value``, a value that is no class (None when
    every pixel is annotated). ``labels`` is uint8 when the values fit, else int32 (int64 beyond); ``classes`` the sorted annotated
    class values. :class:`LabelError` with nothing annotated or more than :data:`MAX_CLASSES` classes."""
    values, annotated = np.asarray(values), np.asarray(annotated, bool)
    if not annotated.any():
        raise LabelError(f"{name} has no annotated pixel; paint some pixels of each class first")
    classes = find_class_values(values[annotated])
    check_class_count(len(classes), name)  # before a worker starts: instance labels would build a huge network
    ignore = choose_ignore_value(classes) if not annotated.all() else None
    labels = np.where(annotated, values, ignore if ignore is not None else 0)
    low, high = int(labels.min()), int(labels.max())
    # int32 held 0xFFFFFFFF as -1: the model learnt a class -1 that the labels layer does not have
    dtype = np.uint8 if 0 <= low and high <= 255 else np.int32 if -2**31 <= low and high < 2**31 else np.int64
    return labels.astype(dtype), ignore, classes


def _whole_numbers(labels) -> np.ndarray:
    """``labels`` as an array, or :class:`LabelError` for NaN, Inf, fractional or non-numeric values."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise LabelError("labels contain NaN or Inf; labels must be integer class values")
        if not np.all(labels == np.round(labels)):
            raise LabelError("labels are fractional floats; labels must be integer class values")
    elif labels.dtype.kind not in "biu":
        raise LabelError(f"labels have dtype {labels.dtype}; labels must be integer class values")
    return labels


def smallest_dtype(values) -> np.dtype:
    """Smallest integer dtype holding every value in ``values``: unsigned for non-negative values, else signed
    (numpy's promotion of int8 and uint16 gave int32 for [-5, 1000], which int16 holds); uint8 for no values."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return np.dtype(np.uint8)
    lowest, highest = int(values.min()), int(values.max())
    if lowest >= 0:
        return np.min_scalar_type(highest)
    return next(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64)
                if np.iinfo(t).min <= lowest and highest <= np.iinfo(t).max)


def to_display(labels, class_values, ignore_value=None) -> np.ndarray:
    """napari display values: 0 = not annotated, ``k + 1`` = ``class_values[k]``; uint8 or uint16."""
    dtype = np.uint8 if len(class_values) < 255 else np.uint16
    labels = np.asarray(labels)
    if len(class_values):
        mapped = _map_through_table(labels, np.asarray(class_values, dtype=np.int64), ignore_value, 1, 0, dtype)
        if mapped is not None:
            return mapped
    indices = to_indices(labels, class_values, ignore_value)
    return (indices + 1).astype(dtype)


def check_display_values(display: np.ndarray, class_values, what: str) -> None:
    """:class:`LabelError` unless every display value of ``display`` is 0 (not annotated) or a class, 1..K."""
    n = len(class_values)
    if not display.size:
        return
    if display.dtype.kind not in "biu" and not (display.dtype.kind == "f" and (np.mod(display, 1) == 0).all()):
        # 0.5 was truncated to display 0 or 1: a class, or no annotation, the user never gave
        raise LabelError(f"{what} hold display values that are no whole numbers (dtype {display.dtype}); napari labels "
                         "are integers: 0 = not annotated, 1..K the classes")
    highest, lowest = int(display.max()), int(display.min())
    if highest > n or lowest < 0:
        bad = highest if highest > n else lowest
        raise LabelError(
            f"{what} holds display label {bad}, which is no class: it has {n} classes {list(class_values)}, "
            f"shown as labels 1..{n} (0 = not annotated); paint those pixels with one of them or erase them"
        )


def from_display(display, class_values, ignore_value=None, what: str = "the labels") -> np.ndarray:
    """File label values from napari display values (inverse of :func:`to_display`).

    Display 0 (not annotated) becomes ``ignore_value``; if there are unannotated pixels and no
    ``ignore_value`` is given, :class:`LabelError` is raised (use :func:`choose_ignore_value`).
    """
    display = np.asarray(display)
    check_display_values(display, class_values, what)
    unannotated = display == 0
    values = list(class_values)
    if unannotated.any():
        if ignore_value is None:
            raise LabelError("some pixels are not annotated and no ignore value was given")
        lookup = np.asarray([ignore_value, *values], dtype=np.int64)
    else:
        lookup = np.asarray([values[0], *values], dtype=np.int64)
    dtype = smallest_dtype(lookup)
    return lookup.astype(dtype)[display.astype(np.intp, copy=False)]


def choose_ignore_value(class_values) -> int:
    """A value for "not annotated" that is no class: 0 if free, else the smallest free value above."""
    taken = set(int(v) for v in class_values)
    if 0 not in taken:
        return 0
    candidate = max(taken) + 1
    if candidate <= 255:
        return candidate
    return next(v for v in range(1, len(taken) + 2) if v not in taken)  # one of these is free


def _integer(value) -> int | None:
    """``value`` as an int if it is an integer (or a float with an integer value), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return None


def metadata_class_values(metadata: dict, what: str) -> list[int] | None:
    """``metadata["class_values"]`` of a labels layer as a list of ints, None if there is none.

    Layer metadata can come from other plugins or scripts: anything but a list of distinct integers
    raises :class:`LabelError`, naming ``what`` (e.g. "labels layer 'EM labels'").
    """
    raw = metadata.get("class_values")
    if raw is None:
        return None
    values = [_integer(v) for v in raw] if isinstance(raw, (list, tuple, np.ndarray)) and np.ndim(raw) == 1 else None
    if values is None or None in values or len(set(values)) != len(values):
        raise LabelError(
            f"{what} has class_values metadata {reprlib.repr(raw)} that is not a list of distinct integers; "
            "remove it from the layer's metadata to use the painted values as the classes, or set it to the "
            "class value of display labels 1, 2, ..."
        )
    return values


def metadata_ignore_value(metadata: dict, what: str) -> int | None:
    """``metadata["ignore_value"]`` of a labels layer as an int, None if there is none; else :class:`LabelError`."""
    raw = metadata.get("ignore_value")
    if raw is None:
        return None
    value = _integer(raw)
    if value is None:
        raise LabelError(
            f"{what} has ignore_value metadata {reprlib.repr(raw)} that is not an integer; "
            "remove it from the layer's metadata or set it to the value of unannotated pixels"
        )
    return value


def marks_dtype(n_display_values: int) -> np.dtype:
    """The unsigned dtype of a marks array (see :func:`value_marks`) for display values 1..``n_display_values``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_display_values <= np.iinfo(dtype).bits:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def value_marks(display, dtype) -> np.ndarray:
    """Marks (``dtype`` unsigned) of ``display`` values: bit v - 1 for value v; 0 for 0 (erased, not annotated) and
    for values wider than ``dtype``."""
    dtype = np.dtype(dtype)
    display = np.asarray(display)
    if display.dtype in (np.uint8, np.uint16):  # napari's display dtypes: a table lookup is 10x faster
        return _value_marks_table(display.dtype.itemsize, dtype.str)[display]
    inside = (display >= 1) & (display <= dtype.itemsize * 8)
    shifts = np.where(inside, display, 1).astype(dtype) - dtype.type(1)  # in the marks' width: no int64 copies
    return np.where(inside, np.left_shift(dtype.type(1), shifts), dtype.type(0))


@functools.lru_cache(maxsize=8)
def _value_marks_table(display_bytes: int, marks_dtype: str) -> np.ndarray:
    """:func:`value_marks` of every unsigned display value of ``display_bytes`` bytes."""
    return value_marks(np.arange(1 << (8 * display_bytes), dtype=np.int64), np.dtype(marks_dtype))


def holds_marked_value(display, marks) -> np.ndarray:
    """Bool mask (``display``'s shape): pixels whose display value is one of the values ``marks`` records there."""
    return (value_marks(display, marks.dtype) & marks) != 0


def reviewed_pixels(display, tracking: dict) -> np.ndarray | None:
    """Bool mask (``display``'s shape) of the pixels of a prediction layer the user painted or accepted.

    ``tracking`` is the layer's ``metadata["napari_unet"]``: either the live ``marks`` of a tracked layer (unsigned
    ints, one bit per display value the user painted at that pixel; a pixel counts while it holds one of
    them, so undo and redo need no bookkeeping) and, optionally, the ``accepted`` marks of *Mark slice reviewed*
    (same form), or the ``reviewed`` mask a reopened file brought along.
    None if ``tracking`` holds neither for this shape.
    """
    display = np.asarray(display)
    marks = tracking.get("marks")
    if _is_marks(marks, display.shape):
        accepted = _accepted_marks(tracking, marks)
        return holds_marked_value(display, marks if accepted is None else marks | accepted)
    reviewed = tracking.get("reviewed")
    if isinstance(reviewed, np.ndarray) and reviewed.shape == display.shape:
        return reviewed.astype(bool)
    return None


def accepted_only_pixels(display, tracking: dict) -> np.ndarray | None:
    """Bool mask of the reviewed pixels of a prediction layer that the user accepted (*Mark slice reviewed*) but did
    not paint: from the live ``marks`` and ``accepted`` of ``tracking``, or the ``accepted_mask`` a reopened file
    brought along. None if there are none or ``tracking`` does not say."""
    display = np.asarray(display)
    marks = tracking.get("marks")
    if _is_marks(marks, display.shape):
        accepted = _accepted_marks(tracking, marks)
        return None if accepted is None else holds_marked_value(display, accepted) & ~holds_marked_value(display, marks)
    reviewed, mask = tracking.get("reviewed"), tracking.get("accepted_mask")
    if all(isinstance(m, np.ndarray) and m.shape == display.shape for m in (reviewed, mask)):
        return reviewed.astype(bool) & mask.astype(bool)
    return None


def _is_marks(marks, shape: tuple) -> bool:
    return isinstance(marks, np.ndarray) and marks.dtype.kind == "u" and marks.shape == shape


def _accepted_marks(tracking: dict, marks: np.ndarray) -> np.ndarray | None:
    """The live ``accepted`` marks of ``tracking`` if they match ``marks`` (shape and dtype), else None."""
    accepted = tracking.get("accepted")
    return accepted if _is_marks(accepted, marks.shape) and accepted.dtype == marks.dtype else None


__all__ = [
    "IGNORE_INDEX",
    "PREDICTION_OUTPUT",
    "ZERO_IS_CLASS",
    "LabelError",
    "MAX_CLASSES",
    "check_class_count",
    "find_class_values",
    "check_trainable",
    "POCKET_SHARE",
    "layer_order_steps",
    "layer_order",
    "layering_undecided",
    "to_indices",
    "count_classes",
    "positions_in",
    "from_indices",
    "unique_values",
    "training_labels",
    "smallest_dtype",
    "to_display",
    "check_display_values",
    "from_display",
    "choose_ignore_value",
    "metadata_class_values",
    "metadata_ignore_value",
    "marks_dtype",
    "value_marks",
    "holds_marked_value",
    "reviewed_pixels",
    "accepted_only_pixels",
]
