#!/usr/bin/env python
"""``load_model``'s time in a fresh process, as ``napari-unet predict`` pays it, for code versions side by side.

Each round runs one child per ``--srcs`` folder (napari_unet imported from there; the order alternates round by
round, as this shared machine's speed drifts): the child imports TensorFlow as the command does, then times
``load_model`` of ``--model`` split into its parts (the functions of model_io that a version has: reading the
metadata and the network description from the archive, the temporary folder's sweep, building the network napari-unet
expects, comparing the description with it, Keras' load, comparing the loaded network; "rest": what load_model spends
outside them, e.g. the NaN check of the weights), then the network's first call on a 512² tile (the batch-norm-folded
copy ``predict`` makes and its first run: first-time costs that one version pays in load_model can move there), then
a second ``load_model`` in the same process (the widget loading another model); ``*_cpu_s``: the CPU time of the
process's threads meanwhile (steadier than wall time on a machine shared with other work). Per version: min and
median over the rounds, and the ratio of the medians to the first version's.

    git worktree add /tmp/old HEAD~1
    nice python benchmarks/bench_model_load.py --model m.keras --srcs /tmp/old/src,src --rounds 5

``--predict IMAGE``: instead, where the wall time of the whole command ``napari-unet predict MODEL IMAGE -o OUT``
goes (as ``run()`` runs it, in a child per round and version): Python's start (to the child's first line, the
benchmark's own few imports included), importing napari_unet (cli, model_io, predict: SciPy and scikit-image with
them), ``check_model_file``, opening the stack (its slices are read as they are predicted), importing TensorFlow,
``load_model`` (its parts as above; the archive reads of ``check_model_file`` counted with them), the note on the
image's intensities, the network's forward function (the batch-norm-folded copy), the prediction loop up to its first
progress event (the first batch of tiles: read and normalised, the network's first call and its trace) and after it
(the network, the membrane rule in a thread beside it, the last rules waited for), writing the output, and the rest
(argument checks, other notes, exit) up to the process's end.

    nice python benchmarks/bench_model_load.py --model m.keras --predict ../shared/data/isbi2012/test-volume.tif --rounds 5

``m.keras``: a default-preset model (``napari-unet train .../train-volume.tif .../train-labels.tif -o m.keras
--max-minutes 1``). End to end, versions side by side: ``bench_predict_cli.py --variants current --srcs ...``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

#: model_io's parts of a load, timed where a version has them (cumulative over their calls).
PARTS = ("_read_archive_metadata", "checked_metadata", "_read_network_description", "_remove_stale_link_folders",
         "_expected_network", "_check_network_description", "_load_network", "_check_network")


def _timed(module, name: str, times: dict, key: str | None = None) -> None:
    """Put a wrapper of ``module.name`` in its place that adds the seconds of each call to ``times[key or name]``."""
    function = getattr(module, name)

    def wrapper(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[key or name] = times.get(key or name, 0.0) + time.perf_counter() - begun
    setattr(module, name, wrapper)


def predict_worker(spec: dict) -> None:
    """The stages of one ``napari-unet predict`` (see the module's doc), emitted when the command exits."""
    stages = {"python_start_s": time.time() - spec["started"]}
    begun = time.perf_counter()
    from napari_unet import cli, model_io
    from napari_unet import predict as predict_module

    stages["import_napari_unet_s"] = time.perf_counter() - begun
    parts: dict[str, float] = {}
    for name in PARTS:
        if hasattr(model_io, name):
            _timed(model_io, name, parts)
    for module, name, key in ((model_io, "check_model_file", "check_model_file_s"),
                              (cli, "_read_stack_and_metadata", "open_stack_s"),
                              (cli, "load_tensorflow_for_command", "import_tensorflow_s"),
                              (model_io, "load_model", "load_model_s"), (cli, "_note_intensities", "intensity_note_s"),
                              (predict_module, "_forward_pass", "forward_function_s"), (cli, "write_all", "write_s")):
        _timed(module, name, stages, key)
    events = predict_module.predict_events

    def timed_events(*args, **kwargs):
        begun = time.perf_counter()
        for k, event in enumerate(events(*args, **kwargs)):
            if k == 0:
                stages["predict_first_slice_s"] = time.perf_counter() - begun
            yield event
        stages["predict_loop_s"] = time.perf_counter() - begun

    predict_module.predict_events = timed_events
    exit_now = os._exit

    def report(code):
        # (the loop's first slice and its forward function are inside the loop: counted once, apart)
        stages["predict_after_first_slice_s"] = stages.pop("predict_loop_s") - stages["predict_first_slice_s"]
        stages["predict_first_slice_s"] -= stages.get("forward_function_s", 0.0)
        stages["load_model_parts_s"] = parts
        stages["to_exit_s"] = time.time() - spec["started"]
        C.emit(stages)
        exit_now(code)

    os._exit = report
    sys.argv = ["napari-unet", "predict", spec["model"], spec["image"], "-o", spec["output"]]
    cli.run()


def worker(spec: dict) -> None:
    if "image" in spec:
        predict_worker(spec)
        return
    start = time.perf_counter()
    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow(skip_optional=True, quiet=True)
    import numpy as np

    from napari_unet import hardware, model_io
    from napari_unet.model import fold_batch_norm

    imported = time.perf_counter() - start
    parts: dict[str, float] = {}
    for name in PARTS:
        if hasattr(model_io, name):
            _timed(model_io, name, parts)
    begun, cpu_begun = time.perf_counter(), time.process_time()
    model = model_io.load_model(spec["model"])
    load, load_cpu = time.perf_counter() - begun, time.process_time() - cpu_begun
    first_parts = dict(parts)  # the second load below adds to parts
    begun = time.perf_counter()
    folded = fold_batch_norm(model.keras_model, model.config, hardware.resolve_mixed_precision(hardware.AUTO))
    folded.predict_on_batch(np.zeros((1, 512, 512, model.config.network_channels), np.float32))
    first_call, with_first_call_cpu = time.perf_counter() - begun, time.process_time() - cpu_begun
    begun = time.perf_counter()
    model_io.load_model(spec["model"])
    second = time.perf_counter() - begun
    C.emit({"import_s": imported, "load_model_s": load, "parts_s": first_parts, "rest_s": load - sum(first_parts.values()),
            "first_call_s": first_call, "load_and_first_call_s": load + first_call, "second_load_s": second,
            "load_model_cpu_s": load_cpu, "load_and_first_call_cpu_s": with_first_call_cpu,
            "imported": model_io.__file__})


def _flat(payload: dict) -> dict:
    """A child's numbers, a load's parts (``parts_s``, ``load_model_parts_s``) as rows ``  <part>`` of their own."""
    rows = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            rows.update({f"  {name}": value[name] for name in PARTS if name in value})
        elif isinstance(value, (int, float)):
            rows[key] = value
    return rows


def main() -> int:
    ap = C.side_by_side_parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="default-preset model file (.keras); required")
    ap.add_argument("--predict", type=Path, metavar="IMAGE", help="time the stages of the whole predict command on IMAGE")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--name", default=None, help="results file name (default: model-load, or predict-start-up with --predict)")
    args = ap.parse_args()
    if C.ran_worker(args, worker):
        return 0
    if args.model is None or not args.model.is_file():
        ap.error(f"--model {args.model}: no such file")
    if args.predict is not None and not args.predict.exists():
        ap.error(f"--predict {args.predict}: no such file")
    srcs = C.src_folders(args.srcs)
    name = args.name or ("predict-start-up" if args.predict else "model-load")
    runs: dict[str, list] = {src: [] for src in srcs}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for k, src in enumerate(srcs if round_index % 2 == 0 else srcs[::-1]):
                spec = {"model": str(args.model.resolve())}
                if args.predict is not None:
                    spec.update(image=str(args.predict.resolve()), output=str(Path(tmp) / f"{k}.tif"), started=time.time())
                payloads, status, seconds = C.run_child(Path(__file__), spec, {"PYTHONPATH": src}, timeout=900)
                if status != "ok" or not payloads:
                    raise SystemExit(f"{src}: {status}")
                rows = {**_flat(payloads[0]), "process_wall_s": seconds}
                if args.predict is not None:
                    rows["other_s"] = seconds - sum(v for key, v in rows.items() if key.endswith("_s") and not key.startswith(" ")
                                                    and key not in ("to_exit_s", "process_wall_s"))
                runs[src].append(rows)
                print(f"round {round_index + 1} {src}: " + ", ".join(f"{key.strip()} {rows[key]:.3f}" for key in
                      ("load_model_s", "process_wall_s")), flush=True)
    summary = {}
    for src in srcs:
        keys = [key for key in runs[src][0] if all(key in run for run in runs[src])]
        summary[src] = {key: {"min": min(run[key] for run in runs[src]),
                              "median": statistics.median(run[key] for run in runs[src])} for key in keys}
    first = summary[srcs[0]]
    for k, src in enumerate(srcs):
        print(f"\n@{k + 1} {src}\n| stage | min | median | median / @1 |\n|---|---|---|---|")
        for key, stats in summary[src].items():
            ratio = f"{stats['median'] / first[key]['median']:.2f}" if key in first and first[key]["median"] > 0 else "-"
            print(f"| {key} | {stats['min']:.3f} s | {stats['median']:.3f} s | {ratio} |")
    C.write_report(C.RESULTS_DIR / f"{name}.json", {"model": str(args.model), "image": str(args.predict) if args.predict else None,
                                                    "rounds": args.rounds, "srcs": srcs, "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
