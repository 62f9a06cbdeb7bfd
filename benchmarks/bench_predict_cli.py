#!/usr/bin/env python
"""Wall time of ``napari-unet predict`` on the 30-slice ISBI test volume, start-up and exit included.

Variants run as separate processes, alternated round by round (this machine's speed drifts by ±10 %
over minutes, so only alternated medians compare):

- ``current``: the command as installed (``napari_unet.cli.run``: batch norm folded into the
  convolutions for inference, exit right after the output file is written);
- ``no-fast-exit``: the same, then the interpreter's normal teardown (``sys.exit(main())``);
- ``no-folding``: the same as ``current`` with the network run as trained (batch norm layers kept);
- ``neither``: no folding and the normal teardown (the command before both changes);
- ``float32``: ``current`` with ``--float32`` (on a CPU with AMX / AVX512-BF16, ``current`` runs the
  network in bfloat16; elsewhere the two are the same command);
- ``one-shot-merging``: ``current`` with the membrane rule's watershed regions merged in one cut of the
  initial boundaries (``merge_regions(hierarchical=False)``, the rule before session 9);
- ``merge-sigma-1``: ``current`` with the membrane rule's watershed on the probability smoothed by 1 pixel
  (the rule before session 18) instead of the rule's own sigma (3 in rules tuned since);
- ``eager-graph-import``: ``current`` with ``skimage.graph`` (and networkx) imported at start-up, as before session 20
  (the membrane rule now imports it in its thread, beside the network);
- ``two-rule-threads``: ``current`` with the membrane rule of finished slices in two threads instead of one
  (``predict.RULE_WORKERS``);
- ``full-import``: ``current`` with TensorFlow and Keras imported with all of Keras' optional packages (IPython,
  pandas, matplotlib), as before session 28 (the command now imports Keras without them,
  ``napari_unet._tensorflow.KERAS_OPTIONAL_PACKAGES``);
- ``in-memory``: ``current`` with the image read whole and the results held in memory, as before session 37 (the
  command now reads a slice when it predicts it and keeps its results in scratch files: stacks larger than memory);
- ``no-tta``, ``tta``, ``tta2``: ``current`` with ``--no-tta``, ``--tta`` (four quarter turns per tile) or
  ``--tta-views 2`` (the tile and its half turn).

    python benchmarks/bench_predict_cli.py --model m.keras            # 5 rounds
    python benchmarks/bench_predict_cli.py --model m.keras --rounds 2 # quick
    python benchmarks/bench_predict_cli.py --model m.keras --variants current,one-shot-merging --name predict-cli-merging
    python benchmarks/bench_predict_cli.py --model m.keras --variants current,full-import,tta2 --name predict-cli-import
    python benchmarks/bench_predict_cli.py --model m.keras --variants current --srcs /tmp/old/src,src --name predict-cli-code

``--srcs``: each variant runs with napari_unet imported from each of these ``src/`` folders (e.g. an older commit's
``git worktree``), alternated with the others; the labels each writes are compared with the first's.

``m.keras``: a default-preset model (``napari-unet train .../train-volume.tif .../train-labels.tif -o m.keras``);
the membrane rule's run time depends on trained probabilities, so random weights would not do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TEST_VOLUME = C.SHARED_DATA / "isbi2012" / "test-volume.tif"

DRIVERS = {
    "current": "from napari_unet.cli import run; run()",
    "no-fast-exit": "import sys; from napari_unet.cli import main; sys.exit(main())",
    "no-folding": (
        "import napari_unet.predict as p; p.fold_batch_norm = lambda model, config, mixed_precision=False: model; "
        "from napari_unet.cli import run; run()"
    ),
    "neither": (
        "import sys, napari_unet.predict as p; p.fold_batch_norm = lambda model, config, mixed_precision=False: model; "
        "from napari_unet.cli import main; sys.exit(main())"
    ),
    "one-shot-merging": (
        "import napari_unet.postprocess as pp; merge = pp.merge_regions; "
        "pp.merge_regions = lambda p, m, h, s, hierarchical=True: merge(p, m, h, s, hierarchical=False); "
        "from napari_unet.cli import run; run()"
    ),
    "full-import": (
        "from napari_unet._tensorflow import load_tensorflow; load_tensorflow(); import keras; "
        "from napari_unet.cli import run; run()"
    ),
    "eager-graph-import": "from skimage.graph import rag_boundary; from napari_unet.cli import run; run()",
    "two-rule-threads": "import napari_unet.predict as p; p.RULE_WORKERS = 2; from napari_unet.cli import run; run()",
    "merge-sigma-1": (
        "import napari_unet.predict as p; mask = p.boundary_mask; "
        "p.boundary_mask = lambda probability, **rule: mask(probability, **{**rule, 'sigma': 1.0}); "
        "from napari_unet.cli import run; run()"
    ),
    "in-memory": (
        "import numpy as np, napari_unet.cli as c; read = c._read_stack_and_metadata; "
        "c._read_stack_and_metadata = lambda path, what, lazy=False, for_cluster=False: read(path, what); "
        "c.scratch_array = lambda stack, folder, shape, dtype: np.zeros(shape, dtype); "
        "from napari_unet.cli import run; run()"
    ),
}

#: Variants that are the current command with extra arguments.
VARIANT_ARGUMENTS = {"float32": ["--float32"], "no-tta": ["--no-tta"], "tta": ["--tta"], "tta2": ["--tta-views", "2"]}


def run_variant(name: str, model: Path, image: Path, output: Path, src: str | None = None) -> float:
    command = [sys.executable, "-c", DRIVERS.get(name, DRIVERS["current"]), "predict", str(model), str(image), "-o", str(output)]
    command += VARIANT_ARGUMENTS.get(name, [])
    return C.time_command(command, name if src is None else f"{name} ({src})", src)


def main(argv=None) -> int:
    parser = C.argument_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="default-preset model file (.keras)")
    parser.add_argument("--image", type=Path, default=TEST_VOLUME)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="current,no-fast-exit,no-folding,neither")
    parser.add_argument("--name", default="predict-cli")
    parser.add_argument("--srcs", default=None, help="comma-separated src/ folders to import napari_unet from, side by "
                        "side (default: this repository's)")
    args = parser.parse_args(argv)
    if not args.image.exists():
        raise SystemExit(f"{args.image} not found: this benchmark needs ../shared/data beside the repository")
    variants = args.variants.split(",")
    unknown = [name for name in variants if name not in DRIVERS and name not in VARIANT_ARGUMENTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(DRIVERS) + sorted(VARIANT_ARGUMENTS)}")
    srcs = C.src_folders(args.srcs) if args.srcs else [None]
    # a run: (row label, variant, src); with several srcs a label names its src's position (1 = the first)
    runs = [(name if len(srcs) == 1 else f"{name}@{k + 1}", name, src) for name in variants for k, src in enumerate(srcs)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    labels_equal: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_variant(variants[0], args.model, args.image, Path(tmp) / "warm.tif", srcs[0])  # page cache, .pyc files
        for round_index in range(args.rounds):
            for label, name, src in runs if round_index % 2 == 0 else runs[::-1]:
                times[label].append(run_variant(name, args.model, args.image, Path(tmp) / f"{label}.tif", src))
                print(f"round {round_index + 1} {label:14s} {times[label][-1]:6.2f} s", flush=True)
        if len(srcs) > 1:
            import numpy as np
            import tifffile

            for name in variants:
                first = tifffile.imread(Path(tmp) / f"{name}@1.tif")
                for k in range(2, len(srcs) + 1):
                    labels_equal[f"{name}@{k}"] = bool(np.array_equal(first, tifffile.imread(Path(tmp) / f"{name}@{k}.tif")))
    first_label = "current" if len(srcs) == 1 else "current@1"
    reference = statistics.median(times[first_label]) if first_label in times else None
    rows = []
    for label, name, src in runs:
        median = statistics.median(times[label])
        rows.append({"variant": label, "src": src, "median_s": median, "min_s": min(times[label]), "runs_s": times[label],
                     "ratio_to_current": median / reference if reference else None,
                     "labels_equal_to_first_src": labels_equal.get(label)})
    for k, src in enumerate(srcs):
        if src is not None:
            print(f"@{k + 1}: {src}")
    print(f"\n| variant | median wall | min | ratio to {first_label} |\n|---|---|---|---|")
    for row in rows:
        ratio = f"{row['ratio_to_current']:.3f}" if row["ratio_to_current"] else "-"
        same = {True: ", labels equal", False: ", labels DIFFER", None: ""}[row["labels_equal_to_first_src"]]
        print(f"| {row['variant']} | {row['median_s']:.2f} s | {row['min_s']:.2f} s | {ratio}{same} |")
    report = {"machine": C.machine_info(), "model": str(args.model), "image": str(args.image), "rounds": args.rounds,
              "srcs": srcs, "rows": rows}
    C.RESULTS_DIR.mkdir(exist_ok=True)
    out = C.RESULTS_DIR / f"{args.name}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
