"""GUI test fixtures: a viewer with a small synthetic EM stack, the docked widgets, notifications.

GUI tests need a display: run them under ``xvfb-run -a python3 -m pytest``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest


_display_server = None


def pytest_configure(config):
    """Under pytest-xdist (CI runs ``-n 2``), each worker process shares the cores with the others and gets a display
    of its own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _share_the_cores()
        _own_virtual_display()


def pytest_unconfigure(config):
    global _display_server
    if _display_server is not None:
        _display_server.terminate()
        try:
            _display_server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _display_server.kill()
            _display_server.wait()
        _display_server = None


def _share_the_cores():
    """TensorFlow's op pool of a worker (and of the commands its tests start) as large as its share of the cores: each
    took them all, two workers on two cores ran four busy threads. Before TensorFlow runs (its first op reads it); a
    value set by the caller is kept."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, cores // workers)))


def _own_virtual_display():
    """A virtual X server of the worker's own (where Xvfb is installed): under one ``xvfb-run`` display, one worker's
    windows took the keyboard focus from another's (the focus tests of test_widgets_live failed). Left as it is when
    the server does not start."""
    global _display_server
    if not sys.platform.startswith("linux") or shutil.which("Xvfb") is None:
        return
    read, write = os.pipe()
    try:
        server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                  pass_fds=(write,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    except OSError:
        os.close(read)
        return
    finally:
        os.close(write)
    with os.fdopen(read) as pipe:  # Xvfb writes its display number there once it accepts connections
        number = pipe.readline().strip() if select.select([pipe], [], [], 30)[0] else ""
    if not number.isdigit():
        server.kill()
        server.wait()
        return
    os.environ["DISPLAY"] = f":{number}"
    _display_server = server


def pytest_collection_modifyitems(session, config, items):
    """Load TensorFlow isolated before any test when GUI tests will run.

    With napari's OpenGL canvas (Mesa/llvmpipe under Xvfb) in the same process, TensorFlow
    imported the ordinary way crashes: at import after the canvas exists, or at interpreter exit
    when it came first (see ``napari_unet._tensorflow``). Core tests import it through
    ``import_keras()``; loading it isolated up front makes both orders safe.
    """
    if any(item.get_closest_marker("gui") for item in items):
        from napari_unet._tensorflow import load_tensorflow

        load_tensorflow()


def em_data(n_slices=3, size=128, seed=1):
    from napari_unet.synthetic import make_em_stack

    return make_em_stack(n_slices, (size, size), seed=seed)


def em_labels_layer_data(labels):
    """Display-convention labels (1 = membrane, 2 = cell) with the sample data's metadata."""
    from napari_unet.labels import to_display

    meta = {"class_values": [0, 255], "class_names": ["membrane", "cell"], "ignore_value": None}
    return to_display(labels, [0, 255]), meta


@pytest.fixture
def em_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = em_data()
    display, meta = em_labels_layer_data(labels)
    viewer.add_image(image, name="EM")
    viewer.add_labels(display, name="EM labels", metadata=meta)
    return viewer


@pytest.fixture
def widgets(em_viewer, qtbot):
    """Both widgets docked in ``em_viewer``; waits for running workers at teardown."""
    from napari_unet._widgets import InferenceWidget, TrainingWidget, get_session

    training = TrainingWidget(em_viewer)
    inference = InferenceWidget(em_viewer)
    em_viewer.window.add_dock_widget(training, name="U-Net training", area="right")
    em_viewer.window.add_dock_widget(inference, name="U-Net inference", area="right")
    ns = SimpleNamespace(viewer=em_viewer, training=training, inference=inference, session=get_session(em_viewer))
    yield ns
    training.stop()
    inference.stop()
    qtbot.waitUntil(lambda: training._run is None and inference._job is None and not ns.session.busy, timeout=120_000)


def tiny_settings(training, epochs=2, steps=10, patch=64, depth=2, filters=8, lr=3e-3, validation=0.34):
    """A U-Net that trains in seconds on two CPU cores."""
    s = training.settings
    s.depth.setValue(depth)
    s.filters.setValue(filters)
    s.epochs.setValue(epochs)
    s.steps.setValue(steps)
    s.minutes.setValue(0)
    s.patch.setValue(patch)
    s.batch.setValue(4)
    s.lr.setValue(lr)
    s.elastic.setChecked(False)
    s.validation.setValue(validation)
    s.retrain_patch.setValue(patch)
    s.retrain_lr.setValue(lr)  # a tiny network learns in seconds only at its training rate


@pytest.fixture
def notifications():
    """napari notifications dispatched during the test, as (severity, message) pairs."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def run_and_wait(qtbot, start, is_running, timeout=300_000):
    """Call ``start()`` (must return True), wait until ``is_running()`` is False; seconds taken."""
    t0 = time.perf_counter()
    assert start(), "the widget refused to start; see the notification"
    qtbot.waitUntil(lambda: not is_running(), timeout=timeout)
    return time.perf_counter() - t0


def layers_snapshot(viewer):
    return [(layer.name, type(layer).__name__, np.array(layer.data, copy=True)) for layer in viewer.layers]


def assert_layers_unchanged(viewer, before):
    after = layers_snapshot(viewer)
    assert [(n, t) for n, t, _ in after] == [(n, t) for n, t, _ in before]
    for (name, _, old), (_, _, new) in zip(before, after):
        assert old.shape == new.shape and np.array_equal(old, new), f"layer {name!r} was modified"


@pytest.fixture(autouse=True, scope="session")
def _keep_more_trainers():
    """Tests alternate between small networks: each kept compiled trainer spares a new one's tracing (3-6 s here)."""
    import os

    import napari_unet.train as train_module

    train_module.KEPT_TRAINERS = int(os.environ.get("NAPARI_UNET_TEST_KEPT_TRAINERS", "8"))
    yield


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """cli.run() ignores SIGUSR1 on its way out (tests call it in-process), and a test may fail inside main(): the next
    tests, and the commands they start (which inherit an ignored signal), find the handlers as they were (main()
    installs its SIGUSR1 handler only over the default one)."""
    numbers = [n for n in (signal.SIGTERM, getattr(signal, "SIGHUP", None), getattr(signal, "SIGUSR1", None)) if n is not None]
    handlers = {n: signal.getsignal(n) for n in numbers}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.fixture(autouse=True)
def _thread_priority_kept():
    """The widgets' jobs lower their thread's priority (``lower_thread_priority``: nice 10), and tests call them
    in-process: the test thread, and the TensorFlow threads it starts later, stayed at nice 10 for the rest of the run.
    Beside another xdist worker at nice 0 busy on both cores, such a worker got about a tenth of a core and its timed
    tests ran 5-10 times slower. Put back as it was (best effort: raising a priority needs root or CAP_SYS_NICE)."""
    if not hasattr(os, "getpriority"):
        yield
        return
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    yield
    if os.getpriority(os.PRIO_PROCESS, thread) != before:
        try:
            os.setpriority(os.PRIO_PROCESS, thread, before)
        except OSError:
            pass


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A saved :func:`_helpers.tiny_model` (``m.keras``), one per test module."""
    from _helpers import tiny_model
    from napari_unet.model_io import save_model

    path = tmp_path_factory.mktemp("model") / "m.keras"
    save_model(tiny_model(), path)
    return path


@pytest.fixture
def memory(monkeypatch):
    """``memory(available, capacity, physical=None)``: fake the memory the system reports as available now, its
    memory and swap, and its memory without swap (``physical``; None: ``capacity``)."""
    from napari_unet import hardware

    def set_memory(available, capacity, physical=None):
        monkeypatch.setattr(hardware, "available_memory_bytes", lambda: available)
        whole = hardware.MemoryCapacity(capacity, "this machine's memory and swap")
        monkeypatch.setattr(hardware, "memory_capacity", lambda: whole)
        ram = hardware.MemoryCapacity(capacity if physical is None else physical, "this machine's memory")
        monkeypatch.setattr(hardware, "physical_memory", lambda: ram, raising=False)  # (the code before s64 had none)
    return set_memory
