#!/usr/bin/env python
"""Memory and time of large OCT-sized label stacks on their way into napari, this checkout against another.

Each measurement runs in a fresh process per checkout (``--baseline-src`` points at another checkout's ``src/``,
e.g. a worktree of an older commit), so peak RSS belongs to that measurement alone:

- ``to_display``: ``labels.to_display`` of an (S, 496, 768) uint8 prediction with 10 classes (tracemalloc peak
  and wall time): what opening a labels file, training and the widgets pay;
- ``reader-probabilities``: the napari reader opening an (S, 10, 496, 768) float32 probability store written as
  ``napari-unet predict --probabilities X.zarr`` writes it (class values in its metadata): wall time, peak RSS;
- ``reader-labels``: the reader opening the (S, 496, 768) uint8 labels store beside it;
- ``reviewed``: which pixels of such a prediction layer hold a value the user painted there
  (``labels.holds_marked_value``, run for every Retrain and kept-corrections Run; versions before it: NaN).
- ``train-click``: what the training widget does on the GUI thread at Train with such a labels layer (its class values
  read and the annotated ones found: ``read_annotations`` and ``training_labels``).

    python benchmarks/bench_label_memory.py                                   # S = 110, as the Duke DME stack
    git worktree add /tmp/old <commit> && python benchmarks/bench_label_memory.py --baseline-src /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SHAPE = (496, 768)
N_CLASSES = 10


def child(kind: str, src: str, folder: str, scans: int) -> dict:
    """One measurement in this process (run with ``--child``)."""
    import numpy as np

    C.use_src(Path(src))
    if kind == "to_display":
        import tracemalloc

        from napari_unet.labels import to_display

        labels = np.random.default_rng(0).integers(0, N_CLASSES, (scans, *SHAPE)).astype(np.uint8)
        tracemalloc.start()
        start = time.perf_counter()
        to_display(labels, list(range(N_CLASSES)))
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        return {"seconds": seconds, "peak_mb": peak / 1e6, "input_mb": labels.nbytes / 1e6}
    if kind == "reviewed":
        from napari_unet import labels as labels_module

        if not hasattr(labels_module, "holds_marked_value"):
            return {"seconds": float("nan"), "peak_mb": float("nan"), "note": "no value marks in this version"}
        import tracemalloc

        display = np.random.default_rng(0).integers(0, N_CLASSES + 1, (scans, *SHAPE)).astype(np.uint8)
        marks = labels_module.value_marks(display, labels_module.marks_dtype(N_CLASSES))
        tracemalloc.start()
        start = time.perf_counter()
        labels_module.holds_marked_value(display, marks)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        return {"seconds": seconds, "peak_mb": peak / 1e6}
    if kind == "train-click":
        import tracemalloc
        from types import SimpleNamespace

        from napari_unet._widgets.layers import read_annotations
        from napari_unet.labels import training_labels

        display = np.random.default_rng(0).integers(0, N_CLASSES + 1, (scans, *SHAPE)).astype(np.uint8)
        layer = SimpleNamespace(data=display, metadata={"class_values": list(range(N_CLASSES))}, name="labels", multiscale=False)
        tracemalloc.start()
        start = time.perf_counter()
        values, annotated, _ = read_annotations(layer, True)
        training_labels(values, annotated, "labels")
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        return {"seconds": seconds, "peak_mb": peak / 1e6}
    from napari_unet._reader import get_reader

    path = Path(folder) / ("probabilities.zarr" if kind == "reader-probabilities" else "labels.zarr")
    before = C.high_water_rss_mb()
    start = time.perf_counter()
    layers = get_reader(str(path))()
    seconds = time.perf_counter() - start
    peak = C.high_water_rss_mb()
    data, _, layer_type = layers[0]
    return {"seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before, "layer": layer_type, "lazy": not isinstance(data, np.ndarray)}


def write_stores(folder: Path, scans: int) -> None:
    """The probabilities and labels stores ``predict -o labels.zarr --probabilities probabilities.zarr`` writes."""
    import numpy as np

    C.use_src()
    from napari_unet.zarr_io import write_zarr

    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, (scans, *SHAPE)).astype(np.uint8)
    write_zarr(folder / "labels.zarr", labels, {"class_values": list(range(N_CLASSES)), "axes": "ZYX"})
    probabilities = np.empty((scans, N_CLASSES, *SHAPE), np.float32)
    for z in range(scans):  # plane by plane: the full float64 draw would take 3 GB
        probabilities[z] = rng.random((N_CLASSES, *SHAPE), dtype=np.float32)
    write_zarr(folder / "probabilities.zarr", probabilities, {"class_values": list(range(N_CLASSES)), "axes": "ZCYX"})


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=110, help="B-scans in the stack (default 110, the Duke DME stack)")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare with")
    parser.add_argument("--name", default="label-memory", help="results/<name>.json")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.scans)))
        return 0
    sources = {"current": str(C.SRC)}
    if args.baseline_src:
        sources["baseline"] = str(args.baseline_src.resolve())
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        write_stores(Path(folder), args.scans)
        for kind in ("to_display", "reviewed", "train-click", "reader-probabilities", "reader-labels"):
            for version, src in sources.items():
                out = subprocess.run([sys.executable, __file__, "--scans", str(args.scans), "--child", kind, src, folder],
                                     capture_output=True, text=True, env=C.child_env(), check=True).stdout
                results.setdefault(kind, {})[version] = json.loads(out.strip().splitlines()[-1])
                print(kind, version, results[kind][version], flush=True)
    print("\n| measurement | version | seconds | peak MB |\n|---|---|---|---|")
    for kind, by_version in results.items():
        for version, r in by_version.items():
            print(f"| {kind} | {version} | {r['seconds']:.2f} | {r.get('peak_mb', r.get('peak_rss_mb')):.0f} |")
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"scans": args.scans, "sources": sources, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
