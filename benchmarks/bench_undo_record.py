#!/usr/bin/env python
"""Undo record of a prediction written over an existing prediction layer: napari's per-pixel record against the
box record the inference widget keeps since session 50, side by side on the same data.

    python benchmarks/bench_undo_record.py --name s50-undo-record

A whole-stack result written into a Labels layer that held one predicted slice (the "current slice, then whole
stack" workflow), and one slice written into an empty slice. Before: ``data_setitem`` with the int64 indices of every
changed pixel (napari's public way; 26 bytes a pixel of a 3-D uint8 layer). Now:
``_widgets.outputs.write_labels_undoable`` (per changed plane the box of its changed pixels, old and new values).
Seconds (the viewer's GUI thread), undo history MB and peak traced MB (tracemalloc); undo and redo must restore the
layer. No viewer is opened (a Labels layer keeps its undo history alone). Writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def per_pixel_write(layer, z, new) -> None:
    """The write before session 50: napari's data_setitem with the indices of every changed pixel."""
    region = (slice(None),) * layer.data.ndim if z is None else (z,)
    changed = np.asarray(layer.data[region]) != new
    where = np.nonzero(changed)
    indices = where if z is None else (np.full(where[0].shape, z, np.intp), *where)
    with layer.block_history():
        layer.data_setitem(indices, new[where])


def history_mb(layer) -> float:
    parts = [part for item in layer._undo_history for atom in item for part in (*atom[0], *atom[1:])]
    return sum(part.nbytes for part in parts if isinstance(part, np.ndarray)) / 1e6


def measure(write, start: np.ndarray, z, new) -> dict:
    from napari.layers import Labels

    layer = Labels(start.copy())
    tracemalloc.start()
    began = time.perf_counter()
    write(layer, z, new)
    seconds = time.perf_counter() - began
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    history = history_mb(layer)
    written = layer.data.copy()
    layer.undo()
    undone = bool(np.array_equal(layer.data, start))
    layer.redo()
    redone = bool(np.array_equal(layer.data, written))
    return {"seconds": round(seconds, 2), "history_mb": round(history, 1), "peak_traced_mb": round(peak, 1),
            "undo_restores": undone, "redo_restores": redone}


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="undo-record", help="results/<name>.json")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args(argv)
    C.use_src()
    from napari_unet._widgets.outputs import write_labels_undoable

    rng = np.random.default_rng(0)
    shape = (args.slices, args.size, args.size)
    one_predicted = np.zeros(shape, np.uint8)
    one_predicted[0] = 2
    plane = np.where(rng.random(shape[1:]) < 0.2, 1, 2).astype(np.uint8)
    rows = []
    for case, z, new in (("whole stack over one predicted slice", None, np.broadcast_to(plane, shape).copy()),
                         ("one slice into an empty slice", 1, plane)):
        before = measure(per_pixel_write, one_predicted, z, new)
        now = measure(lambda layer, k, values: write_labels_undoable(layer, k, values), one_predicted, z, new)
        row = {"case": case, "shape": list(shape), "per_pixel": before, "box": now,
               "history_ratio": round(before["history_mb"] / max(now["history_mb"], 1e-9), 1),
               "seconds_ratio": round(before["seconds"] / max(now["seconds"], 1e-3), 1)}
        rows.append(row)
        print(row, flush=True)
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
