#!/usr/bin/env python
"""Predicting a stack larger than memory: `napari-unet predict` (slices read when predicted, results in scratch
files, written out page by page) against the same prediction held in memory (read whole, predict into arrays,
write), side by side in one run.

The volume is synthetic EM-like (smooth blobs, noise): ``--slices`` x ``--size``^2 uint8, zlib-compressed, written
page by page into ``--workdir``. The model is a small random U-Net (depth 2, 8 filters, classes 0/255): memory and
I/O do not depend on the weights, and a small network keeps the run short. Both variants predict without
test-time augmentation and write labels and float32 probabilities (2 classes: 8 bytes per pixel, the largest
output). Each variant runs in a fresh process:

1. unlimited: wall time, peak RSS (``ru_maxrss``, which also counts file pages of memory maps, reclaimable) and
   peak anonymous RSS (``RssAnon`` sampled every 20 ms: memory the kernel cannot reclaim without swap);
2. under a memory cgroup limit of ``--limit-gb`` (Linux cgroup v1 or v2, when this process may create one):
   whether the variant finishes or is killed.

A third variant, ``zarr`` (session 38), predicts the same stack stored as a zarr store of 8-slice chunks into zarr
stores (``napari-unet predict volume.zarr -o labels.zarr --probabilities probs.zarr``: chunked tasks, two in flight).

The labels files of all variants are compared (they must be identical).

    python benchmarks/bench_large_predict.py                      # 64 x 2048 x 2048, limit 2 GB (~8 min)
    python benchmarks/bench_large_predict.py --variants streamed,zarr --out benchmarks/results/large-predict-zarr.json
    python benchmarks/bench_large_predict.py --slices 4 --size 512 --limit-gb 0   # smoke test, no limit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------- child


def _rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _sample_peak_anon(peak: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        peak["mb"] = max(peak["mb"], _rss_anon_mb())
        stop.wait(0.02)


def worker(spec: dict) -> None:
    if spec.get("cgroup_procs"):
        Path(spec["cgroup_procs"]).write_text(str(os.getpid()))
    C.use_src()
    import numpy as np

    peak, stop = {"mb": 0.0}, threading.Event()
    sampler = threading.Thread(target=_sample_peak_anon, args=(peak, stop), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if spec["variant"] in ("streamed", "zarr"):
        from napari_unet.cli import main

        volume = spec["volume"] if spec["variant"] == "streamed" else spec["volume_zarr"]
        code = main(["predict", spec["model"], volume, "-o", spec["labels"], "--probabilities", spec["probabilities"], "--no-tta"])
        if code != 0:
            raise SystemExit(code)
    else:  # the whole stack and both results in memory, as `napari-unet predict` did up to session 36
        from napari_unet.cli import load_tensorflow_for_command, write_all
        from napari_unet.model_io import load_model
        from napari_unet.predict import predict
        from napari_unet.tiff_io import read_tiff

        image = read_tiff(spec["volume"]).data
        load_tensorflow_for_command()
        model = load_model(spec["model"])
        result = predict(model, image, tta=False, return_probabilities=True)
        probs = np.moveaxis(result.probabilities, -1, -3).astype(np.float32)
        meta = {"class_values": list(model.class_values)}
        write_all([(Path(spec["labels"]), result.labels, meta), (Path(spec["probabilities"]), probs, {**meta, "axes": "ZCYX"})])
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    C.emit({"seconds": seconds, "peak_rss_mb": C.peak_rss_mb(), "peak_anon_mb": max(peak["mb"], _rss_anon_mb())})


# --------------------------------------------------------------------------- parent


def write_volume(path: Path, n: int, size: int) -> None:
    """A synthetic EM-like uint8 stack, generated and written one page at a time."""
    import numpy as np
    import tifffile

    def pages():
        for z in range(n):
            yield C.synthetic_stack(1, size, seed=z)[0][0]

    tifffile.imwrite(path, pages(), shape=(n, size, size), dtype=np.uint8, compression="zlib", photometric="minisblack")


def write_model(path: Path) -> None:
    C.use_src()
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_unet, import_keras
    from napari_unet.model_io import UNetModel, save_model

    import_keras().utils.set_random_seed(0)
    config = ModelConfig(depth=2, base_filters=8, batch_norm=True)
    save_model(UNetModel(build_unet(config), config, [0, 255], (1.0, 99.8)), path)


class MemoryCgroup:
    """A child memory cgroup of this process's own with a hard limit, or None where none can be made."""

    @staticmethod
    def create(name: str, limit_bytes: int):
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, cg_path = line.split(":", 2)
            own[controllers] = cg_path
        candidates = []
        if "memory" in own:  # cgroup v1
            candidates.append((Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/"), "memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt"))
        if "" in own:  # cgroup v2 (needs the memory controller delegated)
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                candidates.append((root / own[""].lstrip("/"), "memory.max", "memory.peak", "memory.events"))
        for parent, limit_file, peak_file, events_file in candidates:
            folder = parent / name
            try:
                folder.mkdir(exist_ok=True)
                (folder / limit_file).write_text(str(limit_bytes))
                return MemoryCgroup(folder, peak_file, events_file)
            except OSError:
                try:
                    folder.rmdir()
                except OSError:
                    pass
        return None

    def __init__(self, folder: Path, peak_file: str, events_file: str):
        self.folder, self.peak_file, self.events_file = folder, peak_file, events_file

    def peak_mb(self) -> float:
        try:
            return int((self.folder / self.peak_file).read_text().split()[0]) / 2**20
        except (OSError, ValueError, IndexError):
            return float("nan")

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.folder.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def main():
    ap = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--limit-gb", type=float, default=2.0, help="memory cgroup limit of the second round; 0 = skip it")
    ap.add_argument("--workdir", type=Path, help="folder for the volume and outputs (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=C.RESULTS_DIR / "large-predict.json")
    ap.add_argument("--variants", default="in-memory,streamed", help="comma-separated: in-memory, streamed, zarr")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(json.loads(args._worker))
        return

    workdir = C.made_folder(ap, args.workdir) or Path(tempfile.mkdtemp(prefix="napari-unet-large-"))
    try:  # from here: an interrupt while the volume is written leaves no 246 MB file in /tmp
        _measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(args, workdir: Path) -> None:
    import numpy as np
    import tifffile

    volume, model = workdir / "volume.tif", workdir / "model.keras"
    n_bytes = args.slices * args.size**2
    print(f"volume {args.slices} x {args.size} x {args.size} uint8 ({n_bytes / 2**20:.0f} MiB of pixels; "
          f"probabilities {8 * n_bytes / 2**20:.0f} MiB) in {workdir}", flush=True)
    write_volume(volume, args.slices, args.size)
    write_model(model)
    variants = args.variants.split(",")
    volume_zarr = workdir / "volume.zarr"
    if "zarr" in variants:
        C.use_src()
        from napari_unet.tiff_io import read_tiff
        from napari_unet.zarr_io import write_zarr

        write_zarr(volume_zarr, read_tiff(volume, lazy=True, lazy_from_bytes=0).data, chunks=(8, args.size, args.size))
    report = {"machine": C.machine_info(), "versions": C.library_versions(), "volume_shape": [args.slices, args.size, args.size],
              "volume_file_mb": round(volume.stat().st_size / 2**20, 1), "limit_gb": args.limit_gb, "runs": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.out.with_suffix(".log"), "w")
    rounds = [("unlimited", None)] + ([("limited", int(args.limit_gb * 2**30))] if args.limit_gb > 0 else [])
    for round_name, limit in rounds:
        for variant in variants:
            suffix = ".zarr" if variant == "zarr" else ".tif"
            spec = {"variant": variant, "model": str(model), "volume": str(volume), "volume_zarr": str(volume_zarr),
                    "labels": str(workdir / f"{variant}-{round_name}-labels{suffix}"), "probabilities": str(workdir / f"{variant}-{round_name}-probs{suffix}")}
            group = None
            if limit is not None:
                group = MemoryCgroup.create(f"napari-unet-bench-{os.getpid()}", limit)
                if group is None:
                    print("  no memory cgroup can be created here: the limited round is skipped", flush=True)
                    report["limit_gb"] = None
                    break
                spec["cgroup_procs"] = str(group.folder / "cgroup.procs")
            payloads, status, seconds = C.run_child(SCRIPT, spec, None, 3 * 3600, log)
            entry = {"status": status, "wall_seconds": round(seconds, 1)}
            for p in payloads:
                entry.update(p)
            if group is not None:
                entry["cgroup_peak_mb"] = round(group.peak_mb(), 1)
                group.remove()
            report["runs"][f"{variant} {round_name}"] = entry
            print(f"  {variant:9s} {round_name:9s} {status[:60]:60s} wall {seconds:6.0f} s  peak RSS {entry.get('peak_rss_mb', float('nan')):7.0f} MB  "
                  f"peak anonymous {entry.get('peak_anon_mb', float('nan')):7.0f} MB", flush=True)
            args.out.write_text(json.dumps(report, indent=1, default=float))
    written = [workdir / f"{v}-unlimited-labels{'.zarr' if v == 'zarr' else '.tif'}" for v in variants]
    written = [path for path in written if path.exists()]
    if len(written) > 1:
        import zarr

        def read(path):
            return zarr.open_array(str(path), mode="r")[:] if path.suffix == ".zarr" else tifffile.imread(path)

        first = read(written[0])
        report["labels_identical"] = all(bool(np.array_equal(first, read(path))) for path in written[1:])
    runs = report["runs"]
    if "in-memory unlimited" in runs and "streamed unlimited" in runs and "peak_anon_mb" in runs["streamed unlimited"]:
        m, s = runs["in-memory unlimited"], runs["streamed unlimited"]
        report["ratios"] = {"peak_anon_in_memory_over_streamed": m["peak_anon_mb"] / s["peak_anon_mb"],
                            "peak_rss_in_memory_over_streamed": m["peak_rss_mb"] / s["peak_rss_mb"],
                            "wall_streamed_over_in_memory": s["seconds"] / m["seconds"]}
    if "zarr unlimited" in runs and "streamed unlimited" in runs and "peak_anon_mb" in runs["zarr unlimited"]:
        z, s = runs["zarr unlimited"], runs["streamed unlimited"]
        report.setdefault("ratios", {}).update({"peak_anon_zarr_over_streamed": z["peak_anon_mb"] / s["peak_anon_mb"],
                                                "wall_zarr_over_streamed": z["seconds"] / s["seconds"]})
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps({k: report.get(k) for k in ("labels_identical", "ratios")}, indent=1))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
