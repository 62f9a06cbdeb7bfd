"""CPU a shown napari window's process uses while nothing happens, with an indeterminate (animated) QProgressBar docked,
and with a napari ``progress`` (activity dock) open and after it is closed (measured last: its indicator keeps running).

Under software OpenGL (VMs, remote desktops, Xvfb), every repaint of the window is CPU work that a training beside it
does not get (``bench_gui_training.py`` counts the steps). Run::

    xvfb-run -a python benchmarks/bench_gui_idle_cpu.py --name gui-idle-cpu-s47

Prints the process's CPU (cores) over 5-second windows; results go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> int:
    parser = C.argument_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--name", default="gui-idle-cpu")
    args = parser.parse_args()
    import numpy as np
    import napari
    from napari.utils import progress
    from qtpy.QtWidgets import QApplication, QProgressBar

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((512, 512), dtype=np.float32))
    viewer.window._qt_window.resize(1280, 900)
    app = QApplication.instance()

    def cores() -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall < args.seconds:
            app.processEvents()
            time.sleep(0.005)
        return round((time.process_time() - cpu) / args.seconds, 3)

    cores()  # the window's first paints
    rows = {"idle": cores()}
    bar = QProgressBar()  # before any napari progress: its indicator keeps running once started
    bar.setRange(0, 0)
    viewer.window.add_dock_widget(bar)
    rows["indeterminate QProgressBar docked"] = cores()
    bar.setRange(0, 1000)
    bar.setValue(5)
    rows["the same bar determinate"] = cores()
    activity = progress(total=1000, desc="training")
    rows["napari progress open"] = cores()
    activity.close()
    rows["napari progress closed"] = cores()
    rows["napari progress closed, 5 s later"] = cores()
    viewer.close()
    for name, value in rows.items():
        print(f"| {name} | {value:.3f} |")
    C.write_report(C.RESULTS_DIR / f"{args.name}.json", {"seconds": args.seconds, "cores": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
