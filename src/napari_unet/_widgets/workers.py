"""Workers whose napari task belongs to the viewer of the dock that started them."""

from __future__ import annotations

import atexit
import contextlib
import functools
import sys
import threading
import time
import weakref

from napari.qt.threading import create_worker

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
    # napari 0.9's workers never relay their warnings (its mixin's __init__ is not reached): the core's
    # LowMemoryWarning of a training's data and network, or of a file read whole, was lost
    worker.warned.connect(_show_low_memory)
    return worker


def _show_low_memory(showwarning_args: tuple) -> None:
    """A :class:`~napari_unet.hardware.LowMemoryWarning` of a worker (``warnings.showwarning``'s arguments) as a
    napari warning notification."""
    from napari.utils.notifications import show_warning

    from napari_unet.hardware import LowMemoryWarning

    message, category = showwarning_args[:2]
    if issubclass(category, LowMemoryWarning):
        show_warning(f"napari-unet: {message}")


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


__all__ = ["create_worker_of"]
