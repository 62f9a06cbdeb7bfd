"""Training steps in a time budget: in napari (the training widget, window shown) against the core without a GUI.

A run of the training widget shares the CPU with the viewer's main thread, which repaints the window (under software
OpenGL, as on VMs, remote desktops and Xvfb, every repaint is CPU work). This benchmark trains the default preset on a
synthetic EM stack for the same budget (1) through ``train_events`` in a plain process and (2) through the training
widget of a shown napari window, for this checkout and, side by side in the same run, for another one
(``--baseline-src``), and reports the steps each made, their ratio to the plain run, and the CPU seconds the GUI's main
thread used meanwhile. Each variant runs in a fresh process (``PYTHONPATH`` = its ``src``; the environment of
``_common.child_env``, without thread-count variables), one after the other::

    xvfb-run -a python benchmarks/bench_gui_training.py --minutes 1 --baseline-src /work/s47/old/src --name gui-training-s47

Results go to ``benchmarks/results/<name>.json``. Give the run the CPU to itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _data():
    from napari_unet.synthetic import make_em_stack

    return make_em_stack(8, (512, 512), seed=3)  # (8, 512, 512) uint8 image, 0/255 labels


def child_core(minutes: float) -> dict:
    """Steps of ``train_events`` with the default preset in ``minutes`` (no GUI)."""
    from napari_unet._tensorflow import load_tensorflow
    from napari_unet.config import preset
    from napari_unet.train import TrainingFinished, train_events

    load_tensorflow(quiet=True)
    image, labels = _data()
    chosen = preset("default")
    train_config = chosen.train.replace(max_minutes=minutes, epochs=100000)
    started = time.perf_counter()
    final = None
    for event in train_events(image, labels, chosen.model_for(train_config), train_config):
        if isinstance(event, TrainingFinished):
            final = event
    return {"steps": int(final.steps), "wall_s": time.perf_counter() - started}


def child_gui(minutes: float) -> dict:
    """Steps of the training widget of a shown napari window with the default preset in ``minutes``, and the CPU seconds
    of the main (GUI) thread meanwhile."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_unet._tensorflow import load_tensorflow

    load_tensorflow(quiet=True)  # before the first click, as a viewer that opened a model would have it
    from napari_unet._widgets import TrainingWidget
    from napari_unet.labels import to_display

    image, labels = _data()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 900)
    viewer.add_image(image, name="EM")
    viewer.add_labels(to_display(labels, [0, 255]), name="EM labels", metadata={"class_values": [0, 255], "ignore_value": None})
    training = TrainingWidget(viewer)
    viewer.window.add_dock_widget(training, area="right")
    training.settings.minutes.setValue(minutes)
    training.settings.epochs.setValue(100000)
    app = QApplication.instance()
    for _ in range(50):
        app.processEvents()
        time.sleep(0.01)
    started, cpu = time.perf_counter(), time.thread_time()  # this (main) thread only
    if not training.start():
        raise RuntimeError(f"the training widget did not start: {training.progress.status.text()}")
    while training._run is not None:
        app.processEvents()
        time.sleep(0.005)
    wall, main_cpu = time.perf_counter() - started, time.thread_time() - cpu
    steps = int(training.plot.steps[-1]) if training.plot.steps else 0
    viewer.close()
    return {"steps": steps, "wall_s": wall, "main_thread_cpu_s": main_cpu}


def run_variant(kind: str, src: Path, minutes: float) -> dict:
    """One child process (``src`` first on PYTHONPATH, the benchmark environment of :mod:`_common`)."""
    payloads, status, _ = C.run_child(Path(__file__), {"kind": kind, "minutes": minutes}, {"PYTHONPATH": str(src)},
                                      timeout=minutes * 60 + 600)
    if status != "ok" or not payloads:
        raise RuntimeError(f"{kind} with {src}: {status}")
    return payloads[-1]


def main() -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--baseline-src", type=Path, help="the src folder of another checkout, its GUI run first")
    parser.add_argument("--name", default="gui-training")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        spec = json.loads(args._worker)
        C.emit((child_core if spec["kind"] == "core" else child_gui)(spec["minutes"]))
        return 0
    rows = []
    if args.baseline_src:
        rows.append({"variant": f"napari training widget ({args.baseline_src})", **run_variant("gui", args.baseline_src, args.minutes)})
    rows.append({"variant": "napari training widget (this checkout)", **run_variant("gui", C.SRC, args.minutes)})
    rows.append({"variant": "train_events, no GUI (this checkout)", **run_variant("core", C.SRC, args.minutes)})
    plain = rows[-1]["steps"]
    print(f"| variant | steps in {args.minutes:g} min | vs no GUI | GUI main thread CPU s |")
    print("|---|---|---|---|")
    for row in rows:
        row["vs_no_gui"] = row["steps"] / plain if plain else None
        cpu = row.get("main_thread_cpu_s")
        print(f"| {row['variant']} | {row['steps']} | {row['vs_no_gui']:.2f} | {'' if cpu is None else f'{cpu:.1f}'} |")
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"minutes": args.minutes, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
