#!/usr/bin/env python
"""`napari-unet train` on a stack of large slices: wall time, where it goes (preparing, training, finishing, scoring)
and peak anonymous memory, for this checkout and, side by side in the same run, for another one (``--baseline-src``).

    git worktree add /tmp/s43 cb34543
    python benchmarks/bench_large_training.py --baseline-src /tmp/s43/src --name s44-large-training
    git worktree add /work/s46/old 61540b0
    python benchmarks/bench_large_training.py --slices 64 --annotated 3 --minutes 0.5 --baseline-src /work/s46/old/src --name s46-sparse-training-64

The stack is ``--slices`` x ``--size``² uint8, tiled from ISBI 2012 training slices (4 x 4 tiles of 512²; image and
labels) when ``../shared/data/isbi2012`` exists, else the synthetic EM stack of :mod:`napari_unet.synthetic`. Each
variant runs ``train IMAGE LABELS -o M.keras --max-minutes M`` in a fresh process (``PYTHONPATH`` = its ``src``); its
stderr lines are time-stamped, and its anonymous RSS (memory the kernel cannot reclaim without swap) is sampled every
50 ms. Phases: *preparing* = start until "training on slices ..." is printed (the steps begin), *training* = until "finishing the
model", *finishing* = until the model is written, *scoring* = until the command ends (it scores the validation
slices with test-time augmentation). Writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
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


#: Label value of the slices left unannotated with ``--annotated``.
IGNORE = 7


def make_stack(folder: Path, n_slices: int, size: int, annotated: int = 0) -> tuple[Path, Path, str]:
    """Write image.tif and labels.tif (uint8, page by page) into ``folder``; returns their paths and the data's name.
    ``annotated`` > 0: only that many evenly spaced slices keep their labels, the others hold :data:`IGNORE`."""
    import numpy as np
    import tifffile

    if (ISBI / "train-volume.tif").exists() and size % 512 == 0:
        volume, truth = tifffile.imread(ISBI / "train-volume.tif"), tifffile.imread(ISBI / "train-labels.tif")
        tiles = size // 512

        def plane(stack, z):
            rows = [np.concatenate([stack[(z + r * tiles + c) % len(stack)] for c in range(tiles)], 1) for r in range(tiles)]
            return np.concatenate(rows, 0)

        source = "ISBI 2012 slices tiled 4 x 4" if tiles == 4 else f"ISBI 2012 slices tiled {tiles} x {tiles}"
    else:
        from napari_unet.synthetic import make_em_stack

        volume, truth = make_em_stack(n_slices, (size, size), seed=0)

        def plane(stack, z):
            return stack[z]

        source = "synthetic EM (napari_unet.synthetic.make_em_stack)"
    kept = set(np.linspace(0, n_slices - 1, annotated).round().astype(int).tolist()) if annotated else set(range(n_slices))
    paths = folder / "image.tif", folder / "labels.tif"
    for path, stack in zip(paths, (volume, truth)):
        with tifffile.TiffWriter(path, bigtiff=True) as writer:
            for z in range(n_slices):
                data = plane(stack, z)
                if stack is truth and z not in kept:
                    data = np.full_like(data, IGNORE)
                writer.write(data, contiguous=True, photometric="minisblack")
    return paths[0], paths[1], source + (f", labels on {len(kept)} slices {sorted(kept)}" if annotated else "")


def run_variant(src: Path, image: Path, labels: Path, minutes: float, workdir: Path, name: str, extra=()) -> dict:
    """One ``napari-unet train`` run with ``src`` first on PYTHONPATH: phase times, peak anonymous MiB, scores."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    output = workdir / f"{name}.keras"
    command = [sys.executable, "-c", COMMAND, "train", str(image), str(labels), "-o", str(output), "--max-minutes", str(minutes), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marks, lines, peak = {}, [], {"mib": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["mib"] = max(peak["mib"], C.anon_rss_mib(process.pid))
            done.wait(0.05)

    def read_stderr():
        buffer = ""
        while True:
            char = process.stderr.read(1)
            if not char:
                break
            if char not in "\r\n":
                buffer += char
                continue
            now, line = time.perf_counter() - start, buffer.strip()
            buffer = ""
            if not line:
                continue
            lines.append(f"{now:7.1f} {line}")
            if line.startswith("training on slices"):
                marks.setdefault("started", now)
            if "finishing the model" in line:
                marks.setdefault("finishing", now)
            if line.startswith("wrote "):
                marks.setdefault("written", now)

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for thread in threads:
        thread.start()
    stdout = process.stdout.read()
    process.wait()
    wall = time.perf_counter() - start
    done.set()
    for thread in threads:
        thread.join(5)
    scores = {}
    if stdout.strip():
        try:
            scores = json.loads(stdout)
        except json.JSONDecodeError:
            scores = {"stdout": stdout[-500:]}
    started = marks.get("started")  # TrainingStarted: the data are prepared, the steps begin
    phases = {
        "preparing_s": started,
        "training_s": None if started is None or "finishing" not in marks else marks["finishing"] - started,
        "finishing_s": None if "finishing" not in marks or "written" not in marks else marks["written"] - marks["finishing"],
        "scoring_s": None if "written" not in marks else wall - marks["written"],
    }
    return {"src": str(src), "exit": process.returncode, "wall_s": wall, **phases, "peak_anon_mib": peak["mib"],
            "scores": {k: scores[k] for k in ("validation_slices", "validation_window", "v_rand", "v_info", "pixel_error") if k in scores},
            "stderr": lines[-12:]}


def main() -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--minutes", type=float, default=1.0, help="--max-minutes of each training")
    parser.add_argument("--baseline-src", type=Path, help="the src folder of another checkout, run first")
    parser.add_argument("--workdir", type=Path, help="where the stack and models go (default: a temporary folder)")
    parser.add_argument("--annotated", type=int, default=0, help="label only this many evenly spaced slices (the others: "
                        f"{IGNORE}, given as --ignore-value); default: all")
    parser.add_argument("--name", default="large-training")
    args = parser.parse_args()
    C.made_folder(parser, args.workdir)  # (the scratch folder is made inside it)
    current = Path(__file__).resolve().parents[1] / "src"
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        folder = Path(scratch)
        image, labels, source = make_stack(folder, args.slices, args.size, args.annotated)
        extra = ("--ignore-value", str(IGNORE)) if args.annotated else ()
        megabytes = args.slices * args.size**2 / 2**20
        print(f"{args.slices} x {args.size}² uint8 ({megabytes:.0f} MiB image, as much again of labels), {source}")
        variants = ([("baseline", args.baseline_src.resolve())] if args.baseline_src else []) + [("current", current)]
        results = {}
        for name, src in variants:
            results[name] = run_variant(src, image, labels, args.minutes, folder, name, extra)
            r = results[name]
            print(f"{name:9s} exit {r['exit']}  wall {r['wall_s']:6.1f} s  preparing {r['preparing_s'] or float('nan'):6.1f}  "
                  f"training {r['training_s'] or float('nan'):6.1f}  finishing {r['finishing_s'] or float('nan'):6.1f}  "
                  f"scoring {r['scoring_s'] or float('nan'):6.1f}  peak anon {r['peak_anon_mib']:6.0f} MiB "
                  f"({r['peak_anon_mib'] / megabytes:.1f}x the image)  {r['scores']}", flush=True)
    if "baseline" in results and results["baseline"]["exit"] == 0 and results["current"]["exit"] == 0:
        b, c = results["baseline"], results["current"]
        print(f"current / baseline: wall {c['wall_s'] / b['wall_s']:.2f}x, peak anonymous memory "
              f"{c['peak_anon_mib'] / b['peak_anon_mib']:.2f}x")
    C.write_report(Path(__file__).resolve().parent / "results" / f"{args.name}.json",
                   {"slices": args.slices, "size": args.size, "minutes": args.minutes, "annotated": args.annotated, "data": source,
                    "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
