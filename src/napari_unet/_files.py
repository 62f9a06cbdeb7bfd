"""Helpers of the atomic file writes (temporary file in the target's folder, then one ``os.replace``)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
from pathlib import Path


def _current_umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_target(path) -> Path:
    """The file an atomic write to ``path`` replaces: ``path``, or the target of a symbolic link (the link stays).

    Raises OSError if that exists and is not a regular file: renaming a temporary file over a device or a pipe
    (``/dev/null`` for root) would replace it.
    """
    path = Path(os.fspath(path))
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise OSError(errno.EEXIST, f"cannot write {str(path)!r}: it exists and is not a regular file")
    return path


def target_mode(path: Path) -> int:
    """Permission bits the file written to ``path`` should get: the existing file's, else what ``open`` would give.

    ``tempfile.mkstemp`` creates its files readable by their owner only; the replaced file must not become private.
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def fsync_path(path) -> None:
    """Flush a finished temporary file to disk before it replaces its target."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def hidden_sibling(path, kind: str) -> Path:
    """The hidden file or folder ``.NAME.HOST.PID.KIND`` beside ``path`` where this process prepares (``partial``) or
    keeps aside (``replaced``) what replaces ``path``. The host: a process of another machine of a cluster writing
    beside the same target is never taken for a dead one of this machine (:func:`discard_stale_siblings`)."""
    path = Path(os.fspath(path))
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{kind}")


def discard_stale_siblings(path) -> list:
    """Remove the :func:`hidden_sibling` files and folders of ``path`` that processes of this machine left when they
    were killed (SIGKILL, out of memory, power loss: no clean-up ran), i.e. those whose process no longer runs.
    Returns the paths removed."""
    path = Path(os.path.abspath(os.fspath(path)))
    prefix, removed = f".{path.name}.{socket.gethostname()}.", []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            name = entry.name
            if not name.startswith(prefix) or not name.endswith((".partial", ".replaced")):
                continue
            pid = name[len(prefix):].rsplit(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_runs(int(pid)):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                removed.append(entry)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True
