"""Helpers of the atomic file writes (temporary file in the target's folder, then one ``os.replace``)."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import sys
import zlib
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
    fd = os.open(path, os.O_RDWR)  # Windows flushes only a handle with write access (every save failed there)
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


#: The kinds of :func:`hidden_sibling`: prepared outputs, kept-aside outputs, models being saved (Keras wants .keras).
SIBLING_KINDS = ("partial", "replaced", "partial.keras")

#: Longest file name in bytes on the file systems in use (ext4, XFS, btrfs, NTFS, APFS, NFS).
NAME_MAX = 255


def hidden_sibling(path, kind: str, unique: bool = False) -> Path:
    """The hidden file or folder ``.NAME.HOST.PID.KIND`` beside ``path`` where this process prepares (``partial``,
    ``partial.keras``) or keeps aside (``replaced``) what replaces ``path`` (:func:`stale_siblings` finds those of
    killed runs). ``unique``: ``.NAME.HOST.PID~TOKEN.KIND``, a random token, for writers that may share a host name and
    a process ID (two containers on one host network, each command PID 1). A NAME too long to fit is cut, with a CRC-32
    of the whole name (a 245-byte name was refused only when the finished output was written)."""
    if kind not in SIBLING_KINDS:
        raise ValueError(f"kind must be one of {SIBLING_KINDS}, got {kind!r}")
    path = Path(os.fspath(path))
    token = f"~{secrets.token_hex(4)}" if unique else ""
    return path.with_name(f"{_sibling_prefix(path.name)}{os.getpid()}{token}.{kind}")


def _sibling_prefix(name: str) -> str:
    """``.NAME.HOST.`` of the hidden siblings of the file ``name``, NAME cut so that any PID, token and kind fit NAME_MAX."""
    host = socket.gethostname()
    room = NAME_MAX - len(os.fsencode(f"..{host}.")) - len("4294967295~01234567.") - max(map(len, SIBLING_KINDS))
    return f".{fitted_name(name, room)}.{host}."


def fitted_name(name: str, room: int) -> str:
    """``name`` if its bytes fit ``room``, else cut to fit, ending in a CRC-32 of the whole name (names stay apart)."""
    if len(os.fsencode(name)) <= room:
        return name
    tag = f"~{zlib.crc32(os.fsencode(name)):08x}"
    while name and len(os.fsencode(name + tag)) > room:  # no room even for the tag (a very long host name): the tag
        name = name[:-1]
    return name + tag


def temporary_prefix(name: str) -> str:
    """The prefix ``.NAME.`` of a ``tempfile.mkstemp(prefix=..., suffix=".tmp")`` file made beside the file ``name``, NAME
    cut so that the whole ``.NAME.XXXXXXXX.tmp`` fits a file name (a name near the limit failed after a whole
    prediction)."""
    return f".{fitted_name(name, NAME_MAX - len('..XXXXXXXX.tmp'))}."


def stale_siblings(path) -> list:
    """The :func:`hidden_sibling` files and folders of ``path`` that runs of this host left when they were killed
    (SIGKILL, out of memory, power loss: no clean-up ran), i.e. whose process no longer runs here. Only listed, never
    removed: a container or a second machine of the same host name may be writing one, and a ``replaced`` one may be
    the only copy of an output whose replacement was cut short."""
    path = Path(os.path.abspath(os.fspath(path)))
    prefix, found = _sibling_prefix(path.name), []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            if not entry.name.startswith(prefix):
                continue
            owner, _, kind = entry.name[len(prefix):].partition(".")
            pid = owner.split("~")[0]
            if kind in SIBLING_KINDS and pid.isascii() and pid.isdigit() and len(pid) <= 9 and int(pid) != os.getpid() \
                    and not _process_runs(int(pid)):
                found.append(entry)
    return sorted(found)


def sibling_pid(path, sibling) -> str:
    """The process ID in the name of ``sibling``, a :func:`hidden_sibling` of ``path`` (as :func:`stale_siblings` gives)."""
    return Path(sibling).name[len(_sibling_prefix(Path(os.fspath(path)).name)):].partition(".")[0].split("~")[0]


def _process_runs(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) sends Ctrl-C there (to a whole console for a reused PID): assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # e.g. another user's process
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive advisory lock on ``folder`` (flock on the folder itself: no lock file left behind) while
    renaming outputs in it (zarr stores, TIFF pairs), so that commits from several processes take turns. No lock where
    flock is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder one may write but not read (mode 333): commit unlocked, as before locking
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def folder_locks(paths):
    """:func:`folder_lock` on the folder of each of ``paths`` (files or stores to be put in place), each folder once
    (two paths to one folder, e.g. through a bind mount, would wait on each other forever) and all in one order, by
    device and inode (two runs never hold one lock each, waiting for the other's). Yields the folders."""
    folders = {}
    for path in paths:
        parent = Path(os.fspath(path)).parent
        info = parent.stat()
        folders.setdefault((info.st_dev, info.st_ino), parent.resolve())
    with contextlib.ExitStack() as locks:
        for key in sorted(folders):
            locks.enter_context(folder_lock(folders[key]))
        yield list(folders.values())
