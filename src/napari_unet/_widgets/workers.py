"""Workers whose napari task belongs to the viewer of the dock that started them."""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import itertools
import linecache
import logging
import os
import re
import sys
import threading
import time
import warnings
import weakref

from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
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
    if _ROUTABLE and _install_router():
        kwargs.setdefault("_worker_class", _GeneratorJob if inspect.isgeneratorfunction(func) else _FunctionJob)
    with _current(viewer):
        worker = create_worker(func if task is None else _Named(task, func), *args, **kwargs)
    _show_core_warnings(worker)
    return worker


class _OwnWarnings:
    """A superqt worker whose ``run`` is superqt's without its ``warnings.catch_warnings()``: the warnings of its
    thread, and of the threads its job starts (:func:`_route`), come as ``warned``, under the process's own filters
    (a user's "error" filter makes such a warning the job's error; superqt's "always" overrode it).

    superqt's catch_warnings swaps the process's ``showwarning`` and filters while a worker runs: with two overlapping
    jobs (the first started ending first) the second's warnings went to napari's hook (no prefix, numpy's noise shown),
    and afterwards a finished worker's ``showwarning`` and an "always" filter stayed for good (GUI-thread warnings
    lost, the worker never collected).
    """

    def run(self) -> None:  # superqt 0.9's WorkerBase.run, but for the warnings
        self.started.emit()
        self._running = True
        thread = threading.get_ident()
        try:  # (create_worker_of installed the router before it chose this class)
            _JOBS[thread] = (self, getattr(warnings, "_showwarnmsg_impl", None))
            # no "always": the warnings' registries are forgotten (a new job says its warnings again; superqt's
            # catch_warnings did it too), a warning repeated at one place in a job then comes once
            _forget_shown_warnings()
            try:
                result = self.work()
            finally:
                _JOBS.pop(thread, None)
            if isinstance(result, Exception):
                if isinstance(result, RuntimeError):  # superqt's: the worker was likely deleted
                    warnings.warn(f"RuntimeError in aborted thread: {result}", RuntimeWarning, stacklevel=2)
                    return
                raise result
            if not self.abort_requested:
                self.returned.emit(result)
        except Exception as exc:
            self.errored.emit(exc)
        self._running = False
        self.finished.emit()
        self._finished.emit(self)


class _FunctionJob(_OwnWarnings, FunctionWorker):
    pass


class _GeneratorJob(_OwnWarnings, GeneratorWorker):
    pass


#: thread id -> (the worker of ours running in it, ``warnings._showwarnmsg_impl`` at its start); a dict's get
#: and set are atomic
_JOBS: dict = {}
_forget_shown_warnings = getattr(warnings, "_filters_mutated", lambda: None)
#: the hook every warning that passed the filters goes through, whatever ``showwarning`` is (catch_warnings, superqt's
#: workers, pytest and napari's ``install_hooks`` swap ``showwarning``, never this); without it, superqt's workers
_ROUTABLE = callable(getattr(warnings, "_showwarnmsg", None))
_showwarnmsg = getattr(warnings, "_showwarnmsg", None)  # the one there before ours: shows by ``showwarning``
_router_lock = threading.Lock()


def _route(msg) -> None:
    """``warnings._showwarnmsg``: a warning raised in a thread running one of our jobs is that worker's ``warned``
    (showwarning's arguments, as superqt emits them), and so is one raised, while jobs run, in a thread a job started
    (running napari_unet's code: data.prefetch's batches, metrics' pools, dask's threaded scheduler): the most recently
    started job's, as superqt's process-wide hook did. Any other (the GUI thread's, a Qt pool thread's: a napari
    worker's; a user's or another plugin's thread) goes where it went (the ``showwarning`` of the moment: napari's
    hook, a napari worker's...)."""
    if msg.category is _RouterCheck:
        _router_check.seen = True
        return None
    job = _JOBS.get(threading.get_ident())
    if job is None and _JOBS and _started_by_python() and _running_package_code():
        try:
            job = next(reversed(_JOBS.values()), None)
        except RuntimeError:  # a job started or ended meanwhile
            job = None
    # a catch_warnings(record=True) entered since the job started (its code's own, or a library's) records them
    if job is None or getattr(warnings, "_showwarnmsg_impl", None) is not job[1] or _recording_in_context():
        return _showwarnmsg(msg)
    worker = job[0]
    worker.warned.emit((msg.message, msg.category, msg.filename, msg.lineno, msg.file, msg.line))


def _running_package_code() -> bool:
    """Whether the current thread's stack runs napari_unet's code (besides this module): a thread a job started runs
    its tasks (data.prefetch's batches, metrics' pools, dask's threads computing the job's graph); a user's thread or
    another plugin's does not, and its warnings are not the job's (the job's relay would drop them)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__ and _in_package(filename):
            return True
        frame = frame.f_back
    return False


def _started_by_python() -> bool:
    """Whether the current thread is one Python's ``threading`` started, other than the main (GUI) thread: not a Qt
    pool thread (another napari worker, superqt's run: its warnings are its own)."""
    thread = threading.current_thread()
    return thread is not threading.main_thread() and not isinstance(thread, _DUMMY_THREAD)


_DUMMY_THREAD = getattr(threading, "_DummyThread", ())  # a thread not started by ``threading``


def _recording_in_context() -> bool:
    """Python 3.14's context-aware warnings: whether a ``catch_warnings(record=True)`` records in this context (it
    leaves ``_showwarnmsg_impl`` as it was). Untested: no 3.14 here; read from CPython's _py_warnings.py."""
    if not getattr(sys.flags, "context_aware_warnings", False):
        return False
    try:
        return getattr(warnings._get_context(), "log", None) is not None
    except Exception:  # (a private name: gone or changed)
        return False


class _RouterCheck(Warning):
    """The warning of the router's self-test (never shown)."""


_router_check = threading.local()


def _install_router() -> bool:
    """Install :func:`_route` once and check that ``warnings.warn`` goes through it; False (and ``_ROUTABLE`` false
    from then on: superqt's workers) if not."""
    global _showwarnmsg, _router_installed, _ROUTABLE
    with _router_lock:
        if _router_installed:
            return _ROUTABLE
        _router_installed = True
        # once: a hook installed over ours later passes ours on (installing ours again over it would loop)
        if warnings._showwarnmsg is not _route:
            _showwarnmsg, warnings._showwarnmsg = warnings._showwarnmsg, _route
        _ROUTABLE = _routes_warnings()
        if not _ROUTABLE:
            if warnings._showwarnmsg is _route:
                warnings._showwarnmsg = _showwarnmsg
            logging.getLogger(__name__).info("warnings.warn does not call warnings._showwarnmsg: superqt's workers")
        return _ROUTABLE


def _routes_warnings() -> bool:
    """Whether a ``warnings.warn`` of this thread reaches :func:`_route`: a warning of a private category, let through
    by a filter of its own only (removed after), kept from any ``showwarning``."""
    entry = ("always", None, _RouterCheck, None, 0)
    previous = warnings.showwarning

    def quiet(message, category, *args, **kwargs):
        if category is not _RouterCheck:
            return previous(message, category, *args, **kwargs)

    _router_check.seen = False
    try:
        warnings.filterwarnings("always", category=_RouterCheck)
        warnings.showwarning = quiet
        warnings.warn("napari-unet: self-test of the warnings' router", _RouterCheck)
    except Exception:  # (a filter of "error" for every Warning is after ours: ours comes first)
        return False
    finally:
        if warnings.showwarning is quiet:
            warnings.showwarning = previous
        with contextlib.suppress(ValueError):
            warnings.filters.remove(entry)
            _forget_shown_warnings()
    return bool(getattr(_router_check, "seen", False))


_router_installed = False


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
    """One worker's warnings (``warnings.showwarning``'s arguments, which the worker emits as ``warned``) that the
    napari_unet code raised, as ``napari-unet: <message>`` notifications, each message once per worker.

    Only the warnings of the worker's own thread, and of the threads running its job's code, come (:func:`_route`),
    each once per place in a job under Python's default filters. Third-party warnings (TensorFlow's, Keras', numpy's, also those whose ``stacklevel`` points into
    napari_unet's code, and numpy's floating-point warnings of the package's own arithmetic) are noise a user cannot act
    on: not shown.
    """

    _show = Signal(object)  # showwarning's (message, category, filename, lineno), to the GUI thread

    def __init__(self, parent=None):
        super().__init__(parent)
        self._received: set = set()  # (text, category) sent to the GUI thread; any thread, under the lock
        self._lock = threading.Lock()
        self._show.connect(self._notify)  # queued from a worker's thread: this object lives in the GUI thread

    def receive(self, showwarning_args: tuple) -> None:
        message, category, filename, lineno = showwarning_args[:4]
        by_category = _by_category(category)  # (the stack is looked at only where needed)
        if not (by_category if by_category is not None else _in_package(_issuer_file() or filename)):
            return
        with self._lock:  # a repeat (a napari worker's "always" meanwhile, several places) queues no GUI call
            if (str(message), category) in self._received:
                return
            self._received.add((str(message), category))
        self._show.emit((message, category, filename, lineno))

    @Slot(object)
    def _notify(self, warning: tuple) -> None:
        from napari.utils.notifications import notification_manager, show_warning

        message, category, filename, lineno = warning  # (each once: receive drops repeats)
        # a napari that relays worker warnings itself (its mixin reached) shows each once per process, before this
        # (its connection was made first): not twice
        text = message if isinstance(message, str) else (message.args[0] if message.args else str(message))
        if (text, category, filename, lineno) in getattr(notification_manager, "_seen_warnings", ()):
            return
        show_warning(f"napari-unet: {message}")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../napari_unet
#: the issuer of a warning a C function raised (numpy's "divide by zero encountered in divide"): not the package
C_FUNCTION = "<a C function>"


def raised_by_napari_unet(category: type, filename: str, issuer: str | None = None) -> bool:
    """Whether a warning is napari_unet's, for its user: of one of the package's own categories (LowMemoryWarning,
    UnknownValuesWarning...), or of a user's category (UserWarning, RuntimeWarning) raised by code in the package.

    ``issuer``: the file of the code that called ``warnings.warn``, or :data:`C_FUNCTION` for a warning a C function
    raised (numpy's floating-point warnings, also in the package's own arithmetic), where known; else ``filename``,
    where the warning points, decides (its ``stacklevel`` chooses: numpy's warning of an all-NaN mean points at its
    caller).
    """
    by_category = _by_category(category)
    return by_category if by_category is not None else _in_package(issuer or filename)


def _by_category(category: type) -> bool | None:
    """Whether a warning of ``category`` is napari_unet's whoever raised it; None: its issuer decides."""
    if getattr(category, "__module__", "").partition(".")[0] == "napari_unet":
        return True
    if not issubclass(category, (UserWarning, RuntimeWarning)):  # DeprecationWarning, FutureWarning...: for developers
        return False
    return None


def _in_package(filename: str) -> bool:
    return not filename.startswith("<") and os.path.abspath(filename).startswith(_PACKAGE + os.sep)


def _issuer_file() -> str | None:
    """The file of the code that called ``warnings.warn`` for the warning being shown (or :data:`C_FUNCTION`), from the
    current stack (inside :func:`_route` or ``warnings``' call of ``showwarning``); None outside of it."""
    frame, inside = sys._getframe(1), False
    while frame is not None:
        if frame.f_code is _route.__code__ or frame.f_globals.get("__name__") in ("warnings", "_py_warnings"):
            inside = True
        elif inside:
            return frame.f_code.co_filename if _calls_warn(frame) is not False else C_FUNCTION
        frame = frame.f_back
    return None


_WARN_CALL = re.compile(r"\s*(?:[\w.]+\.)?warn(?:_explicit)?\s*\(")


def _calls_warn(frame) -> bool | None:
    """Whether ``frame`` is calling ``warn(...)`` (``warnings.warn``), not a C function that warned (a ufunc:
    ``a / b``), by the source of the instruction it runs; None where that source is unknown."""
    try:
        lineno, end_lineno, col, end_col = next(itertools.islice(frame.f_code.co_positions(), frame.f_lasti // 2, None))
        lines = linecache.getlines(frame.f_code.co_filename)[lineno - 1:end_lineno]
    except (StopIteration, TypeError, ValueError):  # (no positions: None)
        return None
    if not lines or col is None:
        return None
    source = "".join(lines).encode()[col:]  # positions are of UTF-8 bytes
    return bool(_WARN_CALL.match(source.decode(errors="replace")))


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


__all__ = ["C_FUNCTION", "create_worker_of", "raised_by_napari_unet"]
