#!/usr/bin/env python
"""Time and peak memory of ``postprocess.order_layers`` (OCT layer ordering) against its session-42 version, side by side.

    python benchmarks/bench_order_layers.py --name s49-order-layers

The session-42 version took the log of all probabilities at once ((Y, X, K) float32) and kept int16 back pointers;
the current one takes the log row by row and keeps int8 back pointers for up to 127 layers. Both run on the same
random probabilities (a 496 x 768 B-scan and a 2048² slice, 10 classes); the labels must be identical. The current
one also runs with its last class as a pocket (left out of the order, session 49) and, on top, with 1 % of the pixels
kept (a user's corrections): seconds as ratios of the plain run. Writes results/<name>.json.
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


def order_layers_s42(probabilities, order) -> np.ndarray:
    """``order_layers`` as of session 42 (commit e8ce64b), for comparison."""
    probabilities = np.asarray(probabilities, np.float32)
    order = np.asarray(order, np.int64)
    scores = np.log(np.maximum(probabilities[..., order], 1e-7))
    n_rows, n_cols, n_layers = scores.shape
    ranks = np.arange(n_layers)
    best = scores[0].copy()
    back = np.empty((n_rows, n_cols, n_layers), np.int16)
    for y in range(1, n_rows):
        running = np.maximum.accumulate(best, axis=1)
        back[y] = np.maximum.accumulate(np.where(best == running, ranks, 0), axis=1)
        best = running + scores[y]
    ranked = np.empty((n_rows, n_cols), np.int64)
    ranked[-1] = best.argmax(axis=1)
    columns = np.arange(n_cols)
    for y in range(n_rows - 1, 0, -1):
        ranked[y - 1] = back[y, columns, ranked[y]]
    return order[ranked]


def measure(function, probabilities, order, rounds: int, **kwargs) -> tuple[float, float, np.ndarray]:
    """(median seconds, peak traced MB, labels)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        labels = function(probabilities, order, **kwargs)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    function(probabilities, order, **kwargs)
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return float(np.median(times)), peak, labels


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="order-layers", help="results/<name>.json")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    C.use_src()
    from napari_unet.postprocess import order_layers

    rng = np.random.default_rng(0)
    rows = []
    for shape in ((496, 768, 10), (2048, 2048, 10)):
        probabilities = rng.random(shape, dtype=np.float32)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        order = list(range(shape[-1]))
        old_s, old_mb, old_labels = measure(order_layers_s42, probabilities, order, args.rounds)
        new_s, new_mb, new_labels = measure(order_layers, probabilities, order, args.rounds)
        pocket_s, pocket_mb, _ = measure(order_layers, probabilities, order[:-1], args.rounds)
        kept = np.where(rng.random(shape[:2]) < 0.01, probabilities.argmax(axis=-1), -1).astype(np.int16)
        kept_s, kept_mb, _ = measure(order_layers, probabilities, order[:-1], args.rounds, kept=kept)
        row = {"shape": list(shape), "s42_seconds": round(old_s, 3), "current_seconds": round(new_s, 3),
               "speedup": round(old_s / new_s, 2), "s42_peak_mb": round(old_mb), "current_peak_mb": round(new_mb),
               "identical_labels": bool(np.array_equal(old_labels, new_labels)),
               "pocket_seconds": round(pocket_s, 3), "pocket_ratio": round(pocket_s / new_s, 2), "pocket_peak_mb": round(pocket_mb),
               "pocket_kept_seconds": round(kept_s, 3), "pocket_kept_ratio": round(kept_s / new_s, 2), "pocket_kept_peak_mb": round(kept_mb)}
        rows.append(row)
        print(row, flush=True)
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
