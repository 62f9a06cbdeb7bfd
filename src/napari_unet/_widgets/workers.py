"""Workers whose napari task belongs to the viewer of the dock that started them."""

from __future__ import annotations

import contextlib

from napari.qt.threading import create_worker

from .tracked import unwrap


def create_worker_of(viewer, func, *args, **kwargs):
    """napari's ``create_worker``, its task registered with ``viewer``'s window (closing that window cancels it).

    napari registers a worker with the last activated window: closing another viewer cancelled a training of this
    one, and its model was lost.
    """
    with _current(viewer):
        return create_worker(func, *args, **kwargs)


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
