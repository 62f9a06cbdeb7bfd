"""Import TensorFlow so that it cannot clash with an OpenGL driver's LLVM (Linux, Mesa).

TensorFlow's shared libraries carry their own copy of LLVM and are loaded with RTLD_GLOBAL.
Mesa's OpenGL drivers (llvmpipe under Xvfb/VMs/WSL, radeonsi on AMD GPUs) load the system
libLLVM. In one process with napari's canvas:

* OpenGL first, then ``import tensorflow``: TensorFlow binds to the system LLVM -> segfault;
* TensorFlow first, then OpenGL: Mesa binds to TensorFlow's LLVM -> "free(): invalid pointer"
  abort at exit.

Loading TensorFlow with ``RTLD_LOCAL | RTLD_DEEPBIND`` (its own symbols first, none exported)
avoids both. :func:`load_tensorflow` does that once, before anything else imports Keras.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import types

_LOCK = threading.Lock()
_GLOBAL_FLAGS = "tensorflow.python.pywrap_dlopen_global_flags"

#: Packages Keras imports at start-up only to detect notebooks (IPython), accept pandas inputs and offer
#: plotting helpers (matplotlib): about 1.1 s of the ~5 s TensorFlow + Keras import on a 2-core CPU
#: (BENCHMARKS.md, session 28). Each import is guarded in Keras, which then goes without.
KERAS_OPTIONAL_PACKAGES = ("IPython", "pandas", "matplotlib")


def load_tensorflow(skip_optional: bool = False):
    """Import TensorFlow isolated from other LLVM copies (no-op if it is imported already).

    The import runs in a short-lived thread of its own: TensorFlow imported inside a Qt
    thread-pool worker crashed (segfault) when a later worker built a second model.
    ``skip_optional=True`` also imports Keras, without the packages of :data:`KERAS_OPTIONAL_PACKAGES`
    that are not imported yet; they stay importable afterwards, but Keras will not use them. For
    processes that give Keras numpy arrays only (the command line), not for napari, where other
    plugins may share Keras.
    """
    with _LOCK:
        if "tensorflow" not in sys.modules:
            errors = []

            def run():
                lower_thread_priority()
                try:
                    if skip_optional:
                        with _unimportable(KERAS_OPTIONAL_PACKAGES):
                            _import_isolated()
                            import keras  # noqa: F401  (binds its optional imports now, while they fail)
                    else:
                        _import_isolated()
                except BaseException as err:  # re-raised in the caller's thread
                    errors.append(err)

            thread = threading.Thread(target=run, name="napari-unet-import-tensorflow")
            thread.start()
            thread.join()
            if errors:
                raise errors[0]
        return sys.modules["tensorflow"]


def lower_thread_priority(niceness: int = 10) -> None:
    """Run the calling worker thread (and the TensorFlow threads it starts) below the GUI thread.

    On Linux a thread's nice value applies to that thread only and is inherited by the threads it
    creates, so the viewer keeps the CPU on a busy machine. Best effort; no-op elsewhere.
    """
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except (AttributeError, OSError):
        pass


@contextlib.contextmanager
def _unimportable(names):
    """Within the block, ``import name`` raises ImportError for each of ``names`` not imported yet."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # the import system's "not available" marker
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _import_isolated() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or not hasattr(sys, "setdlopenflags"):  # not Linux/glibc: nothing to isolate
        import tensorflow  # noqa: F401

        return
    # TensorFlow asks for RTLD_GLOBAL through this module; a stand-in keeps our flags.
    stand_in = types.ModuleType(_GLOBAL_FLAGS)
    stand_in.set_dlopen_flags = stand_in.reset_dlopen_flags = lambda: None
    flags = sys.getdlopenflags()
    sys.modules[_GLOBAL_FLAGS] = stand_in
    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_LOCAL | deepbind)
    try:
        import tensorflow  # noqa: F401
    finally:
        sys.setdlopenflags(flags)
        if sys.modules.get(_GLOBAL_FLAGS) is stand_in:
            del sys.modules[_GLOBAL_FLAGS]
