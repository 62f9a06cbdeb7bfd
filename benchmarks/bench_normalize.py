#!/usr/bin/env python
"""Normalising planes as ``predict`` and ``train`` do (percentiles, then local contrast): time and traced peak memory
for code versions side by side, and whether their values agree.

Each ``--srcs`` entry runs in a fresh process (its napari_unet imported from there) on: the 20 ISBI training slices
(512², ../shared/data, else a synthetic EM stack of that shape) and one ``--size``² uint8 mosaic of them, with the
default preset's local contrast (sigma 24). Per case: ``ms`` (median of 5 after one warm-up), ``peak_bytes_per_pixel``
(tracemalloc's peak of numpy memory over the input's pixels, output included) and a CRC-32 of the result's bytes
(equal checksums: bitwise equal values).

    git worktree add /tmp/old HEAD~1
    python benchmarks/bench_normalize.py --srcs /tmp/old/src,src --name s60      # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SIGMA = 24.0


def worker(spec: dict) -> None:
    import tracemalloc
    import zlib

    import numpy as np

    from napari_unet import data

    volume_path = C.SHARED_DATA / "isbi2012" / "train-volume.tif"
    volume = C.read_tif(volume_path) if volume_path.exists() else C.synthetic_stack(20, 512)[0]
    tiles = spec["size"] // 512
    mosaic = np.concatenate([np.concatenate([volume[(r * tiles + c) % len(volume)] for c in range(tiles)], 1) for r in range(tiles)], 0)
    for name, image in ((f"stack {volume.shape}", volume), (f"plane {mosaic.shape}", mosaic)):
        data.normalize(image[:1] if image.ndim == 3 else image[:512, :512], (1.0, 99.8), SIGMA)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            data.normalize(image, (1.0, 99.8), SIGMA)
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        result = data.normalize(image, (1.0, 99.8), SIGMA)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        C.emit({"case": name, "ms": 1000 * C.median(times), "peak_bytes_per_pixel": peak / image.size,
                "crc32": zlib.crc32(np.ascontiguousarray(result)), "imported": data.__file__})


def main() -> int:
    ap = C.side_by_side_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="side of the mosaic plane (a multiple of 512)")
    ap.add_argument("--name", default="default")
    args = ap.parse_args()
    if C.ran_worker(args, worker):
        return 0
    if args.size < 512 or args.size % 512:
        ap.error("--size must be a multiple of 512")
    srcs = C.src_folders(args.srcs)
    spec, runs = {"size": args.size, "sigma": SIGMA}, {}
    for src in srcs:
        payloads, status, seconds = C.run_child(Path(__file__), spec, {"PYTHONPATH": src}, timeout=1800)
        runs[src] = {"status": status, "results": payloads}
        print(f"{src}: {status}")
        for p in payloads:
            print(f"  {p['case']}: {p['ms']:.0f} ms, peak {p['peak_bytes_per_pixel']:.1f} bytes a pixel, crc32 {p['crc32']:08x}")
    if len(srcs) > 1 and all(run["results"] for run in runs.values()):
        first = runs[srcs[0]]["results"]
        for src in srcs[1:]:
            for a, b in zip(first, runs[src]["results"]):
                print(f"{a['case']}: {src} / {srcs[0]}: time {b['ms'] / a['ms']:.2f}x, peak "
                      f"{b['peak_bytes_per_pixel'] / a['peak_bytes_per_pixel']:.2f}x, values {'equal' if a['crc32'] == b['crc32'] else 'DIFFER'}")
    C.write_report(C.RESULTS_DIR / f"normalize-{args.name}.json", {"settings": spec, "srcs": srcs, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
