"""Workers whose napari task belongs to the viewer of the dock that started them."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import time
import weakref

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Qt, Signal, Slot

from .tracked import unwrap


#: The stop events of running jobs (set at the process's exit: a worker's quit alone does not end a job's generator).
_STOP_EVENTS: "weakref.WeakSet[threading.Event]" = weakref.WeakSet()


def create_worker_of(viewer, func, *args, stop: threading.Event | None = None, task: str | None = None, **kwargs):
    """napari's ``create_worker``, its task registered with ``viewer``'s window (closing that window cancels it);
    ``stop``: the job's stop event, set if the process exits while it runs; ``task``: its name in napari's list of
    running tasks (which the window's close confirmation shows).

    napari registers a worker with the last activated window: closing another viewer cancelled a training of this
    one, and its model was lost.
    """
    _wait_for_workers_at_exit()
    if stop is not None:
        _STOP_EVENTS.add(stop)
    with _current(viewer):
        worker = create_worker(func if task is None else _Named(task, func), *args, **kwargs)
    _show_core_warnings(worker)
    return worker


def _show_core_warnings(worker) -> None:
    """Show the warnings the napari_unet code raises while ``worker`` runs as napari warning notifications.

    napari 0.9's workers never relay the warnings of their thread (napari's ``_NotifyingMixin.__init__`` is not reached
    in their MRO): the core's LowMemoryWarning, train's RuntimeWarning of slow bfloat16 training... were lost.
    """
    relay = _CoreWarnings(worker.signals)
    worker._napari_unet_warnings = relay  # kept as long as the worker (a Qt connection keeps no Python reference)
    # direct: the slot runs in the thread that warned, whose stack still holds the code that raised the warning
    worker.warned.connect(relay.receive, Qt.ConnectionType.DirectConnection)


class _CoreWarnings(QObject):
    """One worker's warnings (``warnings.showwarning``'s arguments, which superqt's worker emits as ``warned``) that the
    napari_unet code raised, as ``napari-unet: <message>`` notifications, each message once per worker.

    superqt's worker sets "always" while it runs (a warning raised in a loop comes every time) and its ``showwarning``
    is the process's meanwhile (another thread's warnings come too). Third-party warnings (TensorFlow's, Keras', numpy's,
    also those whose ``stacklevel`` points into napari_unet's code) are noise a user cannot act on: not shown.
    """

    _show = Signal(object)  # showwarning's (message, category, filename, lineno), to the GUI thread

    def __init__(self, parent=None):
        super().__init__(parent)
        self._shown: set = set()
        self._show.connect(self._notify)  # queued from a worker's thread: this object lives in the GUI thread

    def receive(self, showwarning_args: tuple) -> None:
        message, category, filename, lineno = showwarning_args[:4]
        if raised_by_napari_unet(category, filename, _issuer_file()):
            self._show.emit((message, category, filename, lineno))

    @Slot(object)
    def _notify(self, warning: tuple) -> None:
        from napari.utils.notifications import notification_manager, show_warning

        message, category, filename, lineno = warning
        if (str(message), category) in self._shown:
            return
        self._shown.add((str(message), category))
        # a napari that relays worker warnings itself (its mixin reached) shows each once per process, before this
        # (its connection was made first): not twice
        text = message if isinstance(message, str) else (message.args[0] if message.args else str(message))
        if (text, category, filename, lineno) in getattr(notification_manager, "_seen_warnings", ()):
            return
        show_warning(f"napari-unet: {message}")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../napari_unet


def raised_by_napari_unet(category: type, filename: str, issuer: str | None = None) -> bool:
    """Whether a warning is napari_unet's, for its user: of one of the package's own categories (LowMemoryWarning,
    UnknownValuesWarning...), or of a user's category (UserWarning, RuntimeWarning) raised by code in the package.

    ``issuer``: the file of the code that called ``warnings.warn`` (or the C function that warned), where known; else
    ``filename``, where the warning points, decides (its ``stacklevel`` chooses: numpy's warning of an all-NaN mean
    points at its caller).
    """
    if getattr(category, "__module__", "").partition(".")[0] == "napari_unet":
        return True
    if not issubclass(category, (UserWarning, RuntimeWarning)):  # DeprecationWarning, FutureWarning...: for developers
        return False
    return _in_package(filename if issuer is None else issuer)


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE + os.sep)


def _issuer_file() -> str | None:
    """The file of the code that raised the warning being shown, from the current stack (inside ``warnings``' call of
    ``showwarning``); None outside of it."""
    frame, inside = sys._getframe(1), False
    while frame is not None:
        if frame.f_globals.get("__name__") in ("warnings", "_py_warnings"):
            inside = True
        elif inside:
            return frame.f_code.co_filename
        frame = frame.f_back
    return None


class _Named(functools.partial):
    """``func`` under a name napari shows ("Executing U-Net training", not "<function relay at 0x7f27e61d4400>"); a
    partial, so that a generator function is still told as one."""

    def __new__(cls, name: str, func):
        named = super().__new__(cls, func)
        named.name = name
        return named

    def __str__(self) -> str:
        return self.name


#: Seconds the Python process waits at exit for workers still running (a model load, a training told to stop).
EXIT_WAIT_SECONDS = 60.0
_exit_wait_registered = False


def _wait_for_workers_at_exit() -> None:
    """Make the process stop and wait for the workers still running at exit, up to :data:`EXIT_WAIT_SECONDS`.

    A script (or an IPython session) that closed its viewer while a model loaded ended with SIGABRT at exit: the
    worker's thread outlived the Qt objects its signals belong to. (napari closed from its window, its event loop
    ending, exited cleanly already.)
    """
    global _exit_wait_registered
    if _exit_wait_registered:
        return
    try:  # here, not by Keras in a load during the exit: Python runs no exit hook registered while it runs them, and
        import h5py  # noqa: F401  h5py's C library then called into the finished interpreter (SIGSEGV)
    except ImportError:
        pass
    atexit.register(_stop_and_wait_for_workers)  # registered after Qt's and h5py's exit hooks: runs before them
    _exit_wait_registered = True


def _stop_and_wait_for_workers() -> None:
    """Ask the running workers to stop (as napari's close does; a viewer left open had not), then wait for them."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool is None or not pool.activeThreadCount():
        return
    for stop in list(_STOP_EVENTS):  # the jobs' own stop: a prediction then ends between slices, not in a dead pool
        stop.set()
    try:
        from superqt.utils._qthreading import WorkerBase

        for worker in list(WorkerBase._worker_set):
            worker.quit()
    except (ImportError, AttributeError, RuntimeError):  # superqt's internals moved, or a worker already deleted
        pass
    started, said = time.monotonic(), False
    while pool.activeThreadCount() and time.monotonic() - started < EXIT_WAIT_SECONDS:
        if not said and time.monotonic() - started > 1:
            count = pool.activeThreadCount()  # napari's pool: other plugins' tasks too, which the exit would crash alike
            print(f"napari-unet: waiting for {count} napari background task{'s' if count != 1 else ''} to end "
                  f"(at most {EXIT_WAIT_SECONDS:g} s)", file=sys.stderr, flush=True)
            said = True
        time.sleep(0.05)  # not waitForDone: a worker's Python needs the interpreter lock this thread would keep


@contextlib.contextmanager
def _current(viewer):
    """``viewer``'s window as napari's current one for the block, then back in its place (best effort)."""
    try:
        from napari._qt.qt_main_window import _QtMainWindow

        window = unwrap(viewer).window._qt_window  # (None, a closed viewer: AttributeError)
        instances = _QtMainWindow._instances
        index = instances.index(window)
    except (ImportError, AttributeError, ValueError):
        yield
        return
    instances.append(instances.pop(index))
    try:
        yield
    finally:
        if window in instances:
            instances.remove(window)
            instances.insert(min(index, len(instances)), window)


__all__ = ["create_worker_of", "raised_by_napari_unet"]
