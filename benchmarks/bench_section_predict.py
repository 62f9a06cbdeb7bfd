#!/usr/bin/env python
"""`napari-unet predict` of one large 2-D section: wall time and peak anonymous memory for this checkout and, side by
side in the same run, for another one (``--baseline-src``); the labels of both must agree.

    git worktree add /tmp/s43 cb34543
    python benchmarks/bench_section_predict.py --model M.keras --baseline-src /tmp/s43/src --name s44-section-predict

The section is ``--size``² uint8, tiled from ISBI 2012 training slices (512² each) when ``../shared/data/isbi2012``
exists, else the synthetic EM image of :mod:`napari_unet.synthetic`. Each variant runs ``predict MODEL section.tif -o
labels.tif`` (``--no-tta`` unless ``--tta``) in a fresh process with its ``src`` first on PYTHONPATH; its anonymous RSS
(memory the kernel cannot reclaim without swap) is sampled every 50 ms. ``--zarr``: ``-o labels.zarr`` instead (the
chunked path, its stores written band by band), ``--probabilities`` also writes the class probabilities (float32, like
``-o``). Writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
COMMAND = "import sys; from napari_unet.cli import main; sys.exit(main())"


def make_section(path: Path, size: int) -> str:
    """Write a ``size``² uint8 section to ``path``; returns the data's description."""
    import numpy as np
    import tifffile

    if (ISBI / "train-volume.tif").exists() and size % 512 == 0:
        volume, tiles = tifffile.imread(ISBI / "train-volume.tif"), size // 512
        rows = [np.concatenate([volume[(r * tiles + c) % len(volume)] for c in range(tiles)], 1) for r in range(tiles)]
        section, source = np.concatenate(rows, 0), f"ISBI 2012 training slices tiled {tiles} x {tiles}"
    else:
        from napari_unet.synthetic import make_em_stack

        section, source = make_em_stack(1, (size, size), seed=0)[0][0], "synthetic EM (napari_unet.synthetic.make_em_stack)"
    tifffile.imwrite(path, section, photometric="minisblack")
    return source


def run_variant(src: Path, model: Path, section: Path, output: Path, tta: bool, probabilities: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", COMMAND, "predict", str(model), str(section), "-o", str(output), "--tta" if tta else "--no-tta"]
    command += ["--probabilities", str(probabilities)] if probabilities is not None else []
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = {"mib": 0.0}, threading.Event()

    def sample():
        while not done.is_set():
            peak["mib"] = max(peak["mib"], C.anon_rss_mib(process.pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.stderr.read()
    process.wait()
    done.set()
    sampler.join(5)
    return {"src": str(src), "exit": process.returncode, "wall_s": time.perf_counter() - start, "peak_anon_mib": peak["mib"],
            "stderr_tail": stderr.strip().splitlines()[-3:]}


def main() -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a napari-unet model with a membrane class (.keras)")
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tta", action="store_true", help="with test-time augmentation (default: without)")
    parser.add_argument("--zarr", action="store_true", help="write zarr stores (-o labels.zarr), not TIFFs")
    parser.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    parser.add_argument("--baseline-src", type=Path, help="the src folder of another checkout, run first")
    parser.add_argument("--workdir", type=Path, help="where the section and labels go (default: a temporary folder)")
    parser.add_argument("--name", default="section-predict")
    args = parser.parse_args()
    C.made_folder(parser, args.workdir)  # (the scratch folder is made inside it)
    import numpy as np
    import tifffile
    import zarr

    current = Path(__file__).resolve().parents[1] / "src"
    variants = ([("baseline", args.baseline_src.resolve())] if args.baseline_src else []) + [("current", current)]
    results, labels = {}, {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        section = Path(scratch) / "section.tif"
        source = make_section(section, args.size)
        megabytes = args.size**2 / 2**20
        print(f"one {args.size}² uint8 section ({megabytes:.0f} MiB), {source}; model {args.model}")
        for name, src in variants:
            suffix = ".zarr" if args.zarr else ".tif"
            output = Path(scratch) / f"{name}{suffix}"
            probabilities = Path(scratch) / f"{name}-probabilities{suffix}" if args.probabilities else None
            results[name] = r = run_variant(src, args.model.resolve(), section, output, args.tta, probabilities)
            if r["exit"] == 0:
                labels[name] = np.asarray(zarr.open_array(str(output), mode="r")) if args.zarr else tifffile.imread(output)
                if args.zarr:
                    r["chunks"] = list(zarr.open_array(str(output), mode="r").chunks)
            print(f"{name:9s} exit {r['exit']}  wall {r['wall_s']:6.1f} s  peak anon {r['peak_anon_mib']:6.0f} MiB "
                  f"({r['peak_anon_mib'] / megabytes:.1f}x the section)", flush=True)
    if len(labels) == 2:
        differing = float(np.mean(labels["baseline"] != labels["current"]))
        results["differing_pixels"] = differing
        b, c = results["baseline"], results["current"]
        print(f"current / baseline: wall {c['wall_s'] / b['wall_s']:.2f}x, peak anonymous memory "
              f"{c['peak_anon_mib'] / b['peak_anon_mib']:.2f}x; labels differ in {differing:.2e} of the pixels")
    C.write_report(Path(__file__).resolve().parent / "results" / f"{args.name}.json",
                   {"size": args.size, "tta": args.tta, "zarr": args.zarr, "probabilities": args.probabilities, "data": source,
                    "model": str(args.model), "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
