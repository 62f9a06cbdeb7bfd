"""Workers whose napari task belongs to the viewer of the dock that started them."""

from __future__ import annotations

import atexit
import contextlib
import sys
import time

from napari.qt.threading import create_worker

from .tracked import unwrap


def create_worker_of(viewer, func, *args, **kwargs):
    """napari's ``create_worker``, its task registered with ``viewer``'s window (closing that window cancels it).

    napari registers a worker with the last activated window: closing another viewer cancelled a training of this
    one, and its model was lost.
    """
    _wait_for_workers_at_exit()
    with _current(viewer):
        return create_worker(func, *args, **kwargs)


#: Seconds the Python process waits at exit for workers still running (a model load, a training told to stop).
EXIT_WAIT_SECONDS = 60.0
_exit_wait_registered = False


def _wait_for_workers_at_exit() -> None:
    """Make the process wait at exit for the workers still running, up to :data:`EXIT_WAIT_SECONDS`.

    A script (or an IPython session) that closed its viewer while a model loaded ended with SIGABRT at exit: the
    worker's thread outlived the Qt objects its signals belong to. napari's close has already asked the workers to
    stop; a worker that cannot (a load) finishes with nobody to tell. (napari closed from its window, its event
    loop ending, exited cleanly already.)
    """
    global _exit_wait_registered
    if not _exit_wait_registered:
        atexit.register(_wait_for_workers_then_clean_up)  # registered after Qt's exit handlers: runs before them
        _exit_wait_registered = True


def _wait_for_workers(seconds: float) -> None:
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    deadline = time.monotonic() + seconds
    while pool is not None and pool.activeThreadCount() and time.monotonic() < deadline:
        time.sleep(0.05)  # not waitForDone: a worker's Python needs the interpreter lock this thread would keep


def _wait_for_workers_then_clean_up() -> None:
    """:func:`_wait_for_workers` at exit (a script closed its viewer), then the exit hook of h5py if a worker imported
    it meanwhile: Python runs no exit hook registered while it runs them, and h5py's C library then called into the
    finished interpreter (SIGSEGV)."""
    had_h5py = "h5py" in sys.modules
    _wait_for_workers(EXIT_WAIT_SECONDS)
    if not had_h5py and "h5py" in sys.modules:  # imported by Keras in a worker's load
        unregister = getattr(sys.modules["h5py"], "_unregister_converters", None)
        if callable(unregister):
            unregister()


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


__all__ = ["create_worker_of"]
