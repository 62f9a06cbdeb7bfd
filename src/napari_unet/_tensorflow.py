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
import logging
import os
import random
import re
import sys
import tempfile
import threading
import types

_LOCK = threading.Lock()
_log = logging.getLogger("napari_unet")
_GLOBAL_FLAGS = "tensorflow.python.pywrap_dlopen_global_flags"

#: Packages Keras imports at start-up only to detect notebooks (IPython), accept pandas inputs and offer
#: plotting helpers (matplotlib): about 1.1 s of the ~5 s TensorFlow + Keras import on a 2-core CPU
#: (BENCHMARKS.md, session 28). Each import is guarded in Keras, which then goes without.
KERAS_OPTIONAL_PACKAGES = ("IPython", "pandas", "matplotlib")

#: Informational lines TensorFlow's C++ code writes to stderr while it loads, before absl logging starts
#: (so TF_CPP_MIN_LOG_LEVEL cannot silence them): "oneDNN custom operations are on", "Could not find cuda
#: drivers", and absl's notice about them.
_NATIVE_INFO = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")
#: ... and its complaint when it first looks for a GPU on a machine without an NVIDIA driver.
_NO_DRIVER = re.compile(r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit")


def load_tensorflow(skip_optional: bool = False, quiet: bool = False):
    """Import TensorFlow isolated from other LLVM copies (not again if it is imported already), once per process
    letting its GPU memory grow.

    The import runs in a short-lived thread of its own: TensorFlow imported inside a Qt
    thread-pool worker crashed (segfault) when a later worker built a second model.
    ``skip_optional=True`` also imports Keras, without the packages of :data:`KERAS_OPTIONAL_PACKAGES`
    that are not imported yet; they stay importable afterwards, but Keras will not use them. For
    processes that give Keras numpy arrays only (the command line), not for napari, where other
    plugins may share Keras. ``quiet=True`` drops the informational lines TensorFlow's C++ code prints while
    loading (:data:`_NATIVE_INFO`; anything else it prints is passed on) and its cuInit error where there is no
    NVIDIA driver or ``CUDA_VISIBLE_DEVICES`` hides the GPUs: for a command's terminal output.
    The first call also lets TensorFlow's GPU memory grow as needed (:func:`allow_gpu_memory_growth`), which
    lists the GPUs right away.
    """
    global _gpus_configured_in
    with _LOCK, python_random_kept():  # importing TensorFlow draws from Python's random: a caller's stream stays
        check_keras_backend()
        tf = sys.modules.get("tensorflow")
        if tf is not None and tf is _gpus_configured_in:
            return tf
        with native_lines_dropped(_quiet_pattern()) if quiet else contextlib.nullcontext():
            if tf is None:
                tf = _import_in_thread(skip_optional)
            allow_gpu_memory_growth(tf)  # also when another package imported TensorFlow first
        _gpus_configured_in = tf
        return tf


def _import_in_thread(skip_optional: bool):
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


#: The TensorFlow module :func:`load_tensorflow` has configured the GPUs of (once per process).
_gpus_configured_in = None


def allow_gpu_memory_growth(tf) -> bool:
    """Let TensorFlow take GPU memory as it needs it, not nearly all of every GPU at its first use (napari's canvas
    and the user's other GPU jobs share the GPU). True when set; :func:`load_tensorflow` calls it once per process.

    Left alone (False): with ``TF_FORCE_GPU_ALLOW_GROWTH=false`` (TensorFlow's own switch), GPUs another package
    configured already (their memory growth or virtual devices), and once the GPUs are initialised (TensorFlow ran
    before; it then raises RuntimeError). Lists the GPUs in any case, so TensorFlow's complaint about a missing
    driver comes now. Never raises.
    """
    try:
        config = tf.config
        gpus = config.list_physical_devices("GPU")
        if not gpus or os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", "").strip().lower() == "false":
            return False
        # memory growth that differs between GPUs makes TensorFlow's start fail: all of them, or none
        if any(config.experimental.get_memory_growth(gpu) is not None or config.get_logical_device_configuration(gpu)
               for gpu in gpus):
            return False
        for gpu in gpus:
            config.experimental.set_memory_growth(gpu, True)
        return True
    except Exception as err:  # RuntimeError: the GPUs are in use already; the run goes on as TensorFlow set it
        _log.debug("napari-unet: GPU memory growth not set (%s: %s)", type(err).__name__, err)
        return False


def check_keras_backend() -> None:
    """:class:`~napari_unet.config.ConfigError` if Keras is, or will be, on another backend than TensorFlow in this
    process (``KERAS_BACKEND=jax``, or Keras imported on one): a user's setting gave a traceback about a missing jax or
    torch. Keras chooses its backend once per process, at its import."""
    keras = sys.modules.get("keras")
    backend = getattr(keras, "backend", None)
    chosen = backend.backend() if backend is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    if chosen != "tensorflow":
        from .config import ConfigError

        raise ConfigError(f"napari-unet runs on Keras' TensorFlow backend, and this process has chosen {chosen!r} "
                          "(KERAS_BACKEND, or the backend of ~/.keras/keras.json when Keras was imported): start it with "
                          "KERAS_BACKEND=tensorflow")


@contextlib.contextmanager
def python_random_kept():
    """Python's global ``random`` stream as it was after the block (TensorFlow's import and Keras' layer building draw
    from it: ``random.seed(0); load_model(p); random.shuffle(files)`` must shuffle as without the load). Draws another
    thread makes meanwhile are rewound too (the stream is one per process)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


_KERAS_SEEDS_LOCK = threading.Lock()


@contextlib.contextmanager
def keras_seeds_private():
    """Within the block, the seeds Keras draws for initializers and seed generators made without one (the layers of a
    model file of earlier versions, being loaded) come from a random stream of their own, not from Python's global one:
    setting that one back afterwards (:func:`python_random_kept`) rewound other threads' draws (napari's GUI thread got
    repeats while a model loaded in a worker). Blocks of several threads take turns. Where Keras keeps its stream
    elsewhere than this version does, Python's global stream is kept as it was instead."""
    module = sys.modules.get("keras.src.random.seed_generator")
    if module is None or getattr(module, "python_random", None) is not random:
        with python_random_kept():
            yield
        return
    with _KERAS_SEEDS_LOCK:
        module.python_random = random.Random()
        try:
            yield
        finally:
            module.python_random = random


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


def _gpus_hidden() -> bool:
    """True when ``CUDA_VISIBLE_DEVICES`` hides every GPU (empty, or a negative first entry such as ``-1``: CUDA
    stops at an invalid one), the usual way to run TensorFlow on the CPU of a machine with a GPU; SLURM sets
    ``NoDevFiles`` for a job without GPUs."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return first == "" or (first[:1] == "-" and first[1:].isdigit()) or first.lower() == "nodevfiles"


def _quiet_pattern() -> "re.Pattern":
    if not _gpus_hidden() and (os.path.exists("/dev/nvidiactl") or not sys.platform.startswith("linux")):
        return _NATIVE_INFO
    return re.compile(f"{_NATIVE_INFO.pattern}|{_NO_DRIVER.pattern}")


@contextlib.contextmanager
def native_lines_dropped(pattern: "re.Pattern" = _NATIVE_INFO):
    """Within the block, file descriptor 2 goes to a temporary file; afterwards its lines are written to stderr,
    except those ``pattern`` matches. A no-op where stderr has no file descriptor or no temporary file can be made (a
    read-only container: every command failed at its start for a filter of log lines)."""
    try:
        sys.stderr.flush()
        capture = tempfile.TemporaryFile()
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        yield
        return
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not pattern.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


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
