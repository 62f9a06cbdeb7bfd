#!/usr/bin/env python
"""Peak resident memory and wall time of ``napari-unet evaluate`` on stacks larger than one block.

    python benchmarks/bench_evaluate_memory.py                                  # 40 and 160 slices of 1024², zarr and TIFF
    python benchmarks/bench_evaluate_memory.py --baseline-src /work/s48/old/src # also another checkout's, side by side
    python benchmarks/bench_evaluate_memory.py --slices 8 --formats tif --name smoke-evaluate-memory

Data (written to a temporary folder): synthetic EM-like membrane labels (``napari_unet.synthetic.make_em_stack``, 0 =
membrane, 255 = cell) of ``--slices`` slices of 1024², and a "prediction": the truth with 2 % of its pixels flipped
and every fourth slice shifted by 3 pixels, as uint8 zarr stores (one chunk per slice, as ``predict -o X.zarr``
writes) or TIFF files. Each evaluation runs ``napari_unet.cli.main(["evaluate", PRED, TRUTH])`` in a fresh process;
its peak is that process's VmHWM (ru_maxrss would carry this script's peak over the fork), "input" the size of one of the two stacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CHILD = """
import json, sys, time
from napari_unet.cli import main
started = time.perf_counter()
rc = main(["evaluate", sys.argv[1], sys.argv[2]])
peak = [int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("PEAK " + json.dumps({"rc": rc, "seconds": time.perf_counter() - started, "peak_mb": peak}), file=sys.stderr)
"""


def write_pair(folder: Path, n_slices: int, fmt: str) -> tuple[Path, Path, int]:
    import numpy as np

    C.use_src()
    from napari_unet.synthetic import make_em_stack

    _, truth = make_em_stack(n_slices=min(n_slices, 8), shape=(1024, 1024), seed=0)
    truth = np.concatenate([truth] * -(-n_slices // len(truth)))[:n_slices].astype(np.uint8)
    rng = np.random.default_rng(0)
    prediction = truth.copy()
    prediction[::4] = np.roll(prediction[::4], 3, axis=1)
    flips = rng.random(prediction.shape) < 0.02
    prediction[flips] = 255 - prediction[flips]
    paths = folder / f"prediction-{n_slices}.{fmt}", folder / f"truth-{n_slices}.{fmt}"
    for path, array in zip(paths, (prediction, truth)):
        if fmt == "zarr":
            import zarr

            store = zarr.open_array(str(path), mode="w", shape=array.shape, chunks=(1, *array.shape[1:]), dtype=array.dtype)
            store[:] = array
        else:
            import tifffile

            tifffile.imwrite(path, array)
    return paths[0], paths[1], truth.nbytes


def run(src: Path, prediction: Path, truth: Path) -> dict:
    env = C.child_env({"PYTHONPATH": str(src)})
    proc = subprocess.run([sys.executable, "-c", CHILD, str(prediction), str(truth)], capture_output=True, text=True,
                          env=env, cwd=str(C.REPO), timeout=3600)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("PEAK ")]
    if not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]}
    scores = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return {**json.loads(lines[-1][5:]), "v_rand": scores.get("v_rand"), "pixel_error": scores.get("pixel_error")}


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="40,160", help="comma-separated stack depths (slices of 1024²)")
    parser.add_argument("--formats", default="zarr,tif", help="comma-separated: zarr, tif")
    parser.add_argument("--baseline-src", type=Path, help="the src folder of another checkout, measured first")
    parser.add_argument("--name", default="evaluate-memory")
    args = parser.parse_args(argv)
    sources = ([("baseline", args.baseline_src)] if args.baseline_src else []) + [("this checkout", C.SRC)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_slices in [int(s) for s in args.slices.split(",") if s]:
            for fmt in [f for f in args.formats.split(",") if f]:
                prediction, truth, nbytes = write_pair(Path(tmp), n_slices, fmt)
                for label, src in sources:
                    result = run(src, prediction, truth)
                    row = {"slices": n_slices, "format": fmt, "input_mb": round(nbytes / 2**20, 1), "source": label, **result}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print()
    print("| slices of 1024² | format | input MB | " + " | ".join(f"{label}: peak MB (x input), s" for label, _ in sources)
          + " | same scores |")
    print("|---|---|---|" + "---|" * len(sources) + "---|")
    for n_slices in sorted({r["slices"] for r in rows}):
        for fmt in [f for f in args.formats.split(",") if f]:
            group = [r for r in rows if r["slices"] == n_slices and r["format"] == fmt]
            cells = [f"{r['peak_mb']:.0f} ({r['peak_mb'] / r['input_mb']:.1f}x), {r['seconds']:.1f}" if "peak_mb" in r
                     else r.get("error", "?") for r in group]
            same = len({(r.get("v_rand"), r.get("pixel_error")) for r in group}) == 1
            print(f"| {n_slices} | {fmt} | {group[0]['input_mb']} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")
    C.write_report(C.REPO / "benchmarks" / "results" / f"{args.name}.json", {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
