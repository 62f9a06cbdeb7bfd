#!/usr/bin/env python
"""Wall time of ``napari-unet predict`` into zarr stores (chunked, optionally on a dask cluster) against TIFF.

Every variant is a fresh ``napari-unet predict`` process on the same stack (default: the 30-slice ISBI test
volume), alternated round by round. A cluster lives only for its variant's run (idle workers would slow the
others): it is started, warmed up by one prediction (its workers import TensorFlow and load the model once, as a
long-lived cluster's would; that first run is reported too), timed on a second one, and closed:

- ``tiff``: TIFF in, TIFF out (the streamed command of session 37);
- ``zarr``: the stack as a zarr store of 8-slice chunks in, a zarr store out, computed in the command's process;
- ``zarr-1``: the same from a store of 1-slice chunks (one task per slice);
- ``cluster-2x1``: ``zarr-1`` with ``--scheduler`` of a local ``dask.distributed`` cluster of two worker processes
  with one thread each (TensorFlow limited to one thread per worker): what each machine of a cluster does, here
  two small "machines" sharing this CPU;
- ``cluster-1x2``: the same with one worker process of two threads (TensorFlow two threads).

The labels of every variant are compared with ``tiff``'s.

    python benchmarks/bench_chunked_predict.py --model m.keras                # 3 rounds
    python benchmarks/bench_chunked_predict.py --model m.keras --variants tiff,zarr --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TEST_VOLUME = C.SHARED_DATA / "isbi2012" / "test-volume.tif"
VARIANTS = ("tiff", "zarr", "zarr-1", "cluster-2x1", "cluster-1x2")
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def run_predict(model: Path, image: Path, output: Path, extra: list[str]) -> float:
    command = [sys.executable, "-c", "from napari_unet.cli import run; run()", "predict", str(model), str(image), "-o", str(output), *extra]
    return C.time_command(command, " ".join(command))


def read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".zarr":
        import zarr

        return zarr.open_array(str(path), mode="r")[:]
    return C.read_tif(path)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="default-preset model file (.keras)")
    parser.add_argument("--image", type=Path, default=TEST_VOLUME)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--name", default="chunked-predict")
    args = parser.parse_args(argv)
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: this benchmark needs ../shared/data beside the repository (or --image)")
    variants = args.variants.split(",")
    if set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(set(variants) - set(VARIANTS))}; choose from {VARIANTS}")
    from distributed import LocalCluster

    from napari_unet import zarr_io

    clusters = {"cluster-2x1": (2, 1), "cluster-1x2": (1, 2)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    first_runs: dict[str, list[float]] = {name: [] for name in variants if name in clusters}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stack = C.read_tif(args.image)
        zarr_io.write_zarr(tmp / "image8.zarr", stack, chunks=(8, *stack.shape[1:]))
        zarr_io.write_zarr(tmp / "image1.zarr", stack, chunks=(1, *stack.shape[1:]))
        inputs = {"tiff": args.image, "zarr": tmp / "image8.zarr"}
        outputs = {name: tmp / (f"{name}.tif" if name == "tiff" else f"{name}.zarr") for name in variants}

        def run(name: str) -> float:
            image = inputs.get(name, tmp / "image1.zarr")
            if name not in clusters:
                return run_predict(args.model, image, outputs[name], [])
            workers, threads = clusters[name]
            env = ONE_THREAD if threads == 1 else {"TF_NUM_INTRAOP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0", env=env,
                              silence_logs=40) as cluster:
                extra = ["--scheduler", cluster.scheduler_address]
                first_runs[name].append(run_predict(args.model, image, outputs[name], extra))
                return run_predict(args.model, image, outputs[name], extra)

        for name in variants:  # page cache, .pyc files
            if name not in clusters:
                run(name)
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for name in order:
                times[name].append(run(name))
                print(f"round {round_index + 1} {name:12s} {times[name][-1]:6.2f} s", flush=True)
        reference_labels = read_labels(outputs[variants[0]])
        same = {name: bool(np.array_equal(read_labels(outputs[name]), reference_labels)) for name in variants}
    reference = statistics.median(times[variants[0]])
    rows = [{"variant": name, "median_s": statistics.median(times[name]), "min_s": min(times[name]), "runs_s": times[name],
             "first_run_s": statistics.median(first_runs[name]) if name in first_runs else None,
             "ratio": statistics.median(times[name]) / reference,
             f"labels_equal_{variants[0]}": same[name]} for name in variants]
    print(f"\n| variant | median wall | min | cluster's first run | ratio to {variants[0]} | labels equal |\n|---|---|---|---|---|---|")
    for row in rows:
        first = f"{row['first_run_s']:.2f} s" if row["first_run_s"] is not None else "-"
        print(f"| {row['variant']} | {row['median_s']:.2f} s | {row['min_s']:.2f} s | {first} | {row['ratio']:.3f} | "
              f"{'yes' if row[f'labels_equal_{variants[0]}'] else 'NO'} |")
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"model": str(args.model), "image": str(args.image),
                                                          "shape": list(stack.shape), "rounds": args.rounds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
