"""The ``napari-unet`` command line: train, predict, evaluate, demo.

Bad input exits with status 2 and one line on stderr, found before any long computation where it can be
(unwritable output folders too). Files are written atomically; a failed or interrupted run writes no file,
except ``train``, whose model file is finished before the validation scores are computed (the message says so).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ._interrupts import events_held, interrupts_deferred

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, timeout, a batch scheduler's time limit)


class CommandError(Exception):
    """Bad input detected by the command line itself."""


def _bad_input_errors() -> tuple:
    from .config import ConfigError
    from .data import InputError
    from .labels import LabelError
    from .model_io import ModelFileError
    from .predict import PredictionError
    from .tiff_io import TiffReadError
    from .zarr_io import ZarrReadError

    return (CommandError, ConfigError, InputError, LabelError, ModelFileError, PredictionError, TiffReadError, ZarrReadError)


def positive_int(text: str, minimum: int = 1) -> int:
    """argparse type: an integer >= ``minimum`` (1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return positive_int(text, minimum=0)


def whole_number_in(low: int, high: int):
    """argparse type: an integer ``low``..``high``."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        return value

    return whole_number


def number_in(low: float, high: float, ends: str = "[]"):
    """argparse type: a number from ``low`` to ``high``, ``ends`` saying which are included ("[)": ``low`` only)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if ends[0] == "[" else value > low
        below = value <= high if ends[1] == "]" else value < high
        if not (above and below):  # (NaN too)
            raise argparse.ArgumentTypeError(f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {text}")
        return value

    return number


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def or_auto(parse):
    """The argparse type ``parse`` that also takes ``auto`` (the settings whose default is "auto")."""

    def parse_or_auto(text: str):
        return "auto" if text.strip().lower() == "auto" else parse(text)

    parse_or_auto.__name__ = parse.__name__  # argparse names the type in its messages
    return parse_or_auto


def merge_levels(text: str) -> tuple:
    """argparse type: comma-separated merge levels in (0, 1), e.g. ``0.5,0.6,0.7``."""
    try:
        levels = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(0 < level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"merge levels must lie between 0 and 1, got {text!r}")
    return levels


def noise_std(text: str) -> float:
    """argparse type: a noise std (the range is the config's to check)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def check_output(path, what: str, inputs=(), suffixes=()) -> Path:
    """``path`` as a Path, if a file can be written there; else a :class:`CommandError` (checked before the work).

    Refused: folders, existing files that are not regular files (devices, pipes), a path that is one of
    ``inputs`` or lies in an input folder, and names not ending in one of ``suffixes``. A symbolic link is
    followed: its target is the file written.
    """
    from ._files import write_target

    path = Path(path)
    if suffixes and not path.name.lower().endswith(suffixes) and not path.is_dir():  # a folder: said below
        raise CommandError(f"{what} {str(path)!r} must end in {' or '.join(suffixes)}")
    try:
        os.stat(path)  # a name too long for the file system: bad input before the work, not an error after it
    except (FileNotFoundError, NotADirectoryError):  # (a file where a folder is named: _check_folder says so)
        pass
    except OSError as err:
        advice = "; give another name" if err.errno == errno.ENAMETOOLONG else ""
        raise CommandError(f"cannot write {what} {_shown(path)}: {os_reason(err)}{advice}") from None
    if path.is_dir():
        raise CommandError(f"{what} {str(path)!r} is a folder; give a file name")
    try:
        path = write_target(path)
    except OSError as err:
        raise CommandError(f"{what}: {err.strerror} (a device or pipe?); give a file name") from err
    return _check_folder(path, what, inputs)


def _shown(path: Path, limit: int = 120) -> str:
    """``path`` quoted for a message, its middle cut when it is longer than ``limit`` characters."""
    text = str(path)
    return repr(text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2:]}")


def check_zarr_output(path, what: str, inputs=()) -> Path:
    """``path`` as an absolute Path, if a zarr store can be written there (see :func:`check_output`): an existing
    zarr array is replaced when the new one is complete; anything else there (a group, which may hold other data, a
    file, a folder) is refused, and so is a path holding an input (replacing it would delete the input)."""
    from .zarr_io import ZARR_SUFFIX, is_zarr_array_store, is_zarr_name, is_zarr_path

    path = Path(os.path.realpath(path))  # absolute: a cluster's workers write it; a symbolic link's target
    if not is_zarr_name(path):
        raise CommandError(f"{what} {path.name!r} must end in {ZARR_SUFFIX}")
    for source in inputs:
        source_path = Path(os.path.realpath(source))
        if _within(source_path, path):
            raise CommandError(f"{what} {str(path)!r} holds the input {str(source)!r}, which replacing it would delete; give another name")
        # a store inside the input's (ds.zarr/pred.zarr beside ds.zarr/raw): that store would hold two images
        store = next((p for p in reversed([source_path, *source_path.parents]) if is_zarr_name(p)), None) if is_zarr_path(source) else None
        if store is not None and _within(path, store):
            raise CommandError(f"{what} {str(path)!r} lies inside the zarr store {str(store)!r} of the input {str(source)!r}, "
                               "which would then hold two images; write it outside that store")
    if path.exists() and not is_zarr_array_store(path):
        raise CommandError(f"{what} {str(path)!r} exists and is not a zarr array (a group or other data); give another name")
    return _check_folder(path, what, inputs)


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, as the file system sees them: on a case-insensitive one (macOS,
    Windows) DS.zarr/pred.zarr lies inside ds.zarr, which string comparisons missed."""
    if path.is_relative_to(folder):
        return True
    return folder.exists() and any(p.exists() and os.path.samefile(p, folder) for p in (path, *path.parents))


def _same_output(a: Path, b: Path) -> bool:
    """Whether the outputs ``a`` and ``b`` (whose folders exist) would be one file: names differing only in case are one
    on the disks of macOS and Windows (pred.tif and PRED.tif: the probabilities replaced the labels, exit 0)."""
    if a.name.casefold() != b.name.casefold() or not os.path.samefile(a.parent, b.parent):
        return False
    return a.name == b.name or _case_insensitive(a.parent)


def _case_insensitive(folder: Path) -> bool:
    """Whether names in ``folder`` that differ only in case name one file (a probe file, looked up in the other case);
    True where no probe can be made (the safe answer)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".napari-unet-case-") as probe:
            name = os.path.basename(probe.name)
            return os.path.exists(os.path.join(folder, name.swapcase()))
    except OSError:
        return True


def _check_folder(path: Path, what: str, inputs) -> Path:
    """``path``, if its folder exists, is writable and ``path`` is not (in) one of ``inputs``."""
    from .zarr_io import is_zarr_path

    folder = path.parent  # Path("out.tif").parent is Path(".")
    if not folder.is_dir():
        kind = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CommandError(f"cannot write {what} {str(path)!r}: folder {str(folder)!r} {kind}")
    for source in inputs:
        source = Path(source)
        same = path.exists() and source.exists() and os.path.samefile(path, source)
        # a folder of slices is overwritten by a file in it, a zarr store by a file anywhere inside
        within = list(path.parents) if is_zarr_path(source) else [folder]
        inside = source.is_dir() and any(parent.exists() and os.path.samefile(parent, source) for parent in within)
        if same or inside:
            raise CommandError(f"{what} {str(path)!r} would overwrite the input {str(source)!r}{' (its folder)' if inside else ''}; give another file name")
    try:  # os.access says yes to root everywhere, also in /proc or on a read-only mount
        with tempfile.TemporaryFile(dir=folder, prefix=".napari-unet-probe-"):
            pass
    except OSError as err:
        raise CommandError(f"cannot write {what} {str(path)!r}: folder {str(folder)!r} is not writable "
                           f"({os_reason(err)}); choose another folder") from err
    if len(os.path.abspath(path)) > LONG_PATH:
        _check_temporary_names(path, what)
    return path


#: Outputs whose absolute path is longer than this many characters are checked for room for their temporary files'
#: longer names: Windows takes 259 without long paths enabled, Linux 4095.
LONG_PATH = 200


def _check_temporary_names(path: Path, what: str) -> None:
    """:class:`CommandError` if a file named as the longest temporary file of ``path`` cannot be made beside it (the
    path would be too long): a 229-character output path passed the checks and failed after the whole prediction."""
    from ._files import hidden_sibling, temporary_prefix

    partial = hidden_sibling(path, "partial.keras", unique=True)  # the longest kind; a TIFF's temporary file inside it
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=temporary_prefix(partial.name), suffix=".tmp"):
            pass
    except OSError as err:
        longest = len(os.path.abspath(path.parent / temporary_prefix(partial.name))) + len("XXXXXXXX.tmp")
        raise CommandError(f"cannot write {what} {_shown(path)}: its temporary files beside it would have names "
                           f"{longest} characters long ({os_reason(err)}); choose a shorter folder or name") from None


def os_reason(err: OSError) -> str:
    """Why a file or folder could not be made, for a message: /proc and the like take none, and said "No such file or
    directory" of a folder that exists."""
    if err.errno == errno.EFBIG:  # another folder on the same disk, or another name, would not help
        return f"{err.strerror}: beyond the file-size limit of the file system or of the process (ulimit -f)"
    return "it takes no new files" if err.errno == errno.ENOENT else err.strerror or str(err)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(folder: Path, err: OSError) -> str:
    return f"{err.strerror or 'no space left'} in {str(folder)!r}; free some space there or choose another folder"


def save_model_or_elsewhere(model, path: Path, written: list | None = None) -> Path:
    """:func:`save_model` to ``path``; if that fails (a full disk, a share gone read-only or stale, a name too long),
    the model is saved to the temporary folder instead, appended to ``written``, and a :class:`CommandError` says where:
    a trained model is never lost to a failed write (an interrupt held meanwhile still names it)."""
    import secrets

    from ._files import NAME_MAX, fitted_name
    from .model_io import save_model

    try:
        return save_model(model, path)
    except OSError as err:
        advice = "" if err.errno == errno.EFBIG else "; choose another folder or name"  # (a limit of every file)
        reason = _disk_full(path.parent, err) if err.errno in DISK_FULL else f"{os_reason(err)}{advice}"
        problem = f"cannot write {path}: {reason}" if err.errno is not None else reason  # save_model's own message names it
        # a name of its own: two runs saving model.keras in one second do not replace each other's
        fallback = Path(tempfile.gettempdir()) / (f"napari-unet-unsaved-{fitted_name(path.stem, NAME_MAX // 2)}-"
                                                  f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}.keras")
        try:
            save_model(model, fallback)
        except OSError as second:
            with contextlib.suppress(OSError):
                fallback.unlink()
            raise CommandError(f"{problem}. Saving it to {fallback} failed too ({second.strerror or second}): the model is lost") from err
        if written is not None:
            written.append(fallback)
        raise CommandError(f"{problem}. The trained model was saved to {fallback} instead (copy it elsewhere now: a "
                           "cluster job's temporary folder is often removed when the job ends)") from err


def _modified(path: Path) -> float:
    """``path``'s modification time, 0 if it cannot be read."""
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _note_stale_siblings(outputs) -> None:
    """Name the hidden partial or replaced outputs that killed runs left beside ``outputs`` (they can be large)."""
    from ._files import sibling_pid, stale_siblings

    for output in outputs:
        entries = stale_siblings(output) if output is not None else []
        # killed between its two renames: the newest file kept aside is the output's latest version (several: each a
        # run killed there, the older ones earlier versions)
        aside = [entry for entry in entries if entry.name.endswith(".replaced")]
        only_copy = max(aside, key=_modified, default=None) if not os.path.lexists(output or "") else None
        for entry in entries:
            killed = f"a killed run (process {sibling_pid(output, entry)}, no longer running)"
            if entry == only_copy:
                target = entry.with_name(output.name)
                print(f"note: {entry} is the only copy of {target}, which {killed} was replacing: to keep it, rename it "
                      f"back to {target} (elsewhere once this run has written {target})", file=sys.stderr)
                continue
            what = "an earlier version of" if entry.name.endswith(".replaced") else "an unfinished"
            print(f"note: {entry} is {what} {output.name} that {killed} left behind; remove it to free its space",
                  file=sys.stderr)


def write_all(files: list, replaced: list | None = None, left_aside: list | None = None) -> None:
    """Write every ``(path, array, metadata)`` TIFF or none: each goes to a temporary file beside its target
    first, and the targets are replaced only once all are complete (an existing file is never half replaced), with
    Ctrl-C, SIGTERM and SIGHUP held until all are replaced and appended to ``replaced`` (which the interrupted command
    names). A rename that fails puts the files replaced before it back (each kept aside as a hidden sibling until the
    last is in place): labels never stay beside the probabilities of an earlier run; one that cannot be put back is
    appended to ``replaced``, and ``(target, sibling)`` to ``left_aside`` for an old file that stayed aside with its
    target missing. A run killed between the renames leaves the sibling for the next run to name
    (:func:`_note_stale_siblings`; not on Windows, where a process ID cannot be checked, nor hidden there)."""
    from ._files import folder_locks, fsync_folder, hidden_sibling, target_mode
    from .tiff_io import write_tiff

    pending = []
    try:
        for path, array, metadata in files:
            partial = hidden_sibling(path, "partial", unique=True)
            pending.append((partial, path))
            try:
                write_tiff(partial, array, metadata)
            except OSError as err:  # named as the target, not its hidden partial file or no file (an error of fsync)
                if err.errno is None:
                    raise OSError(f"cannot write {path}: {err}") from err
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from err  # (strerror may name the partial)
            os.chmod(partial, target_mode(path))  # a replaced file keeps its permissions
        # two runs writing one pair take turns (the zarr commit's locks): one run's labels and probabilities
        with folder_locks(path for _, path in pending) as folders:
            with interrupts_deferred():  # all replaced and recorded, or (an interrupt before, a failure) none
                _replace_all(pending, replaced, left_aside)
        for folder in folders:
            fsync_folder(folder)
    finally:
        for partial, _ in pending:
            if partial.exists():
                partial.unlink()


def _replace_all(pending: list, replaced: list | None, left_aside: list | None) -> None:
    """Rename each ``(partial, target)`` of ``pending`` onto its target, all or none (:func:`write_all`): each file
    replaced before the last is kept aside until the last is in place, and a failure puts back what was replaced."""
    from ._files import hidden_sibling

    moved = []  # (target, the file it replaced kept aside, None: none) of each target replaced so far
    try:
        for k, (partial, path) in enumerate(pending):
            aside = None
            if k < len(pending) - 1 and os.path.lexists(path):  # kept until the last is in place
                aside = hidden_sibling(path, "replaced", unique=True)
                os.replace(path, aside)
            try:
                os.replace(partial, path)
            except BaseException:
                if aside is not None:
                    try:
                        os.replace(aside, path)
                    except OSError:  # the old file stays aside, the target missing: the message names it
                        if left_aside is not None:
                            left_aside.append((path, aside))
                raise
            moved.append((path, aside))
    except BaseException:
        for path, aside in reversed(moved):  # the first error is raised; the command names what stays
            try:
                if aside is None:
                    os.unlink(path)
                else:
                    os.replace(aside, path)
            except OSError:
                if replaced is not None:
                    replaced.append(path)
        raise
    if replaced is not None:
        replaced.extend(path for _, path in pending)
    for _, aside in moved:
        if aside is not None:
            with contextlib.suppress(OSError):  # (else it stays, named by the next run)
                os.unlink(aside)


def scratch_array(stack: contextlib.ExitStack, folder: Path, shape: tuple, dtype) -> np.memmap:
    """Zeros of ``shape`` and ``dtype`` in an unlinked temporary file in ``folder``, open until ``stack`` closes.

    The disk space is reserved first: a memory map of a sparse file on a full disk kills the process (SIGBUS).
    """
    from .hardware import size_text
    from .tiff_io import n_bytes

    handle = stack.enter_context(tempfile.TemporaryFile(dir=folder, prefix=".napari-unet-scratch-"))
    size = max(1, n_bytes(shape, dtype))
    try:
        if not hasattr(os, "posix_fallocate"):  # macOS, Windows: sparse after all
            raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as err:
        if err.errno == errno.EFBIG:  # FAT32's 4 GiB a file, or ulimit -f: free space would not help
            raise CommandError(f"cannot reserve the {size / 2**20:.0f} MB of scratch space of the prediction in "
                               f"{str(folder)!r}: {os_reason(err)}") from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise CommandError(f"not enough free disk space in {str(folder)!r} for the prediction ({size / 2**20:.0f} MB of scratch space; {err.strerror})") from err
        # file systems without fallocate: sparse after all, where a full disk would kill the process (SIGBUS) on the
        # page it cannot back, so at least what is free now must suffice
        free = shutil.disk_usage(folder).free
        if free < size:
            raise CommandError(f"not enough free disk space in {str(folder)!r} for the prediction ({size / 2**20:.0f} MB "
                               f"of scratch space, {free / 2**20:.0f} MB free)") from None
        handle.truncate(size)
    try:
        return np.memmap(handle, dtype=dtype, mode="r+", shape=shape)
    except OSError as err:  # a bare "[Errno 12] Cannot allocate memory" (ulimit -v below the output's size)
        if err.errno != errno.ENOMEM:
            raise
        raise OutOfAddressSpace(
            f"not enough memory (or address space) to map the output of {tuple(shape)} {np.dtype(dtype)} "
            f"({size_text(size)}, a scratch file in {str(folder)!r}): a limit on virtual memory (ulimit -v, a job's "
            "address-space limit) may be lower than that; raise it, or write a zarr store (-o LABELS.zarr), which is "
            "written chunk by chunk") from None


class OutOfAddressSpace(MemoryError):
    """A memory map the system refused (ENOMEM); the message is whole, with what to do."""


def read_stack(path, what: str, lazy: bool = False) -> np.ndarray:
    """A one-channel (Y, X) or (Z, Y, X) array from a TIFF file, a folder of TIFF slices or a zarr store
    (``lazy``: read when indexed, see :func:`napari_unet.tiff_io.read_tiff`)."""
    return _read_stack_and_metadata(path, what, lazy)[0]


def _planar_rgb(path: Path) -> bool:
    """Whether ``path`` is a TIFF of RGB(A) colour planes stored one after the other (planar configuration)."""
    import tifffile

    if path.is_dir() or path.suffix.lower() not in (".tif", ".tiff"):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.photometric == tifffile.PHOTOMETRIC.RGB and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except Exception:  # only a better message was at stake
        return False


def _read_stack_and_metadata(path, what: str, lazy: bool = False, for_cluster: bool = False, labels: bool = False) -> tuple[np.ndarray, dict]:
    """:func:`read_stack` and the file's metadata (plus ``axes``, the kept axes' letters, and their ``pixel_size`` when known);
    ``for_cluster``: a dask array whose chunks other machines read by path, never a memory map; ``labels``: the
    file holds labels (messages say so)."""
    from .tiff_io import TiffReadError, read_folder, read_tiff
    from .zarr_io import is_zarr_path, read_zarr

    path = Path(path)
    if not path.exists():
        if str(path) == "-":  # said "prediction '-' does not exist"
            raise CommandError(f"{what}: reading standard input ('-') is not supported; give a file")
        raise CommandError(f"{what} {str(path)!r} does not exist")
    _refuse_a_stream(path, what)
    lazy_from = 0 if for_cluster else None
    try:
        if is_zarr_path(path):
            tiff = read_zarr(path, lazy=lazy or for_cluster)
        elif path.is_dir():
            tiff = read_folder(path, lazy=lazy or for_cluster, lazy_from_bytes=lazy_from)
        else:
            tiff = read_tiff(path, lazy=lazy or for_cluster, lazy_from_bytes=lazy_from, memory_map=not for_cluster)
    except TiffReadError as err:  # its message names the file, not its role, nor what is read instead
        raise CommandError(_tiff_error_named(err, what, path)) from None
    data, axes = tiff.data, tiff.axes
    for axis in "CS":
        if axis in axes and data.shape[axes.index(axis)] > 1:
            n = data.shape[axes.index(axis)]
            advice = (  # grey values of colour-coded classes merge or scramble them
                "labels are one channel of class values: map each colour to its class value"
                if labels else "convert it to grayscale or extract one channel"
            )
            if _planar_rgb(path):  # most likely a 3-slice stack saved with tifffile's defaults
                advice = (f"it is stored as RGB colour planes; if these are {n} slices of a stack, save it again as one: "
                          f"tifffile.imwrite stores a ({n}, Y, X) uint8 array as RGB unless given photometric='minisblack'")
            elif what == "prediction" and axis == "C":
                advice = "a probability map? evaluate takes the labels file of predict"
            raise CommandError(f"{what} {path.name} has {n} channels (axes {axes}); napari-unet works on one-channel images: {advice}")
    # Length-1 axes other than Y and X go (np.squeeze would also read a lazy array whole).
    if 0 in data.shape:
        raise CommandError(f"{what} {path.name} has shape {data.shape} (axes {axes}): it holds no pixels")
    if what == "image" and np.dtype(data.dtype).kind not in "biuf":  # complex, dates, text: the core said "slice 0: image ..."
        raise CommandError(f"{what} {path.name} has dtype {data.dtype}; expected real numbers (integers or floats)")
    squeezed = data.reshape([n for n, axis in zip(data.shape, axes) if n != 1 or axis in "YX"])
    kept_axes = "".join(axis for n, axis in zip(data.shape, axes) if n != 1 or axis in "YX")
    if "Y" in kept_axes and "X" in kept_axes and not kept_axes.endswith("YX"):  # it would be read as slices of other axes
        raise CommandError(f"{what} {path.name} has axes {axes} (shape {data.shape}); napari-unet needs Y and X as the last "
                           "two axes: save it again as (Z, Y, X) or (Y, X), e.g. with numpy.moveaxis")
    if squeezed.ndim not in (2, 3):
        raise CommandError(f"{what} {path.name} has shape {data.shape} (axes {axes}); expected (Y, X) or (Z, Y, X)")
    metadata = {**tiff.metadata, "axes": kept_axes}
    if isinstance(metadata.get("reviewed"), np.ndarray):
        metadata["reviewed"] = metadata["reviewed"].reshape(squeezed.shape)
    # the pixel size of each kept axis, for outputs that must line up with the image in napari, where the reader gives
    # it also without a unit (a resolution of 250 per unit: 0.004)
    kept = [i for i, (n, axis) in enumerate(zip(data.shape, axes)) if n != 1 or axis in "YX"]
    if tiff.has_physical_size or any(float(s) != 1.0 for s in tiff.scale):
        metadata["pixel_size"] = {"scale": [float(tiff.scale[i]) for i in kept], "units": [tiff.units[i] for i in kept]}
    translate = tiff.metadata.get("translate")
    if isinstance(translate, list) and len(translate) == len(axes) and any(translate):  # where the image lies (OME-Zarr)
        metadata.setdefault("pixel_size", {"scale": [1.0] * len(kept), "units": [None] * len(kept)})
        metadata["pixel_size"]["translate"] = [float(translate[i]) for i in kept]
    if what == "image":
        _check_slice_size(squeezed, path, tiff.metadata.get("format") in ("tiff", "shaped"))
    return squeezed, metadata


def _refuse_a_stream(path: Path, what: str) -> None:
    """:class:`CommandError` if ``path`` is a pipe, a device or a socket (``<(cat labels.tif)``, ``/dev/stdin`` from a
    pipe or a terminal): files are read where they are needed, seeking in them. It said "truth 63: cannot read it (No
    such file or directory)"."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    kind = ("a pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else None)
    if kind is not None:
        raise CommandError(f"{what} {str(path)!r} is {kind}, not a file: reading from a pipe or standard input is not "
                           "supported (napari-unet seeks in the files it reads); write it to a file and give that")


def _tiff_error_named(err: Exception, what: str, path: Path) -> str:
    """A TIFF reader's message about ``path`` naming its role (``what``) and the slices of a damaged page or chunk where
    known (``err.slices``, :func:`napari_unet.data.read_planes`); a file that is no TIFF gets what to do."""
    from .data import slices_text

    text = str(err).removeprefix(f"{path}: ")
    where = slices_text(getattr(err, "slices", None))
    if where:
        return f"{what} {path.name}, {where}: {text}"
    if not text.startswith("not a TIFF file"):
        return f"{what} {path.name}: {text}"
    if path.suffix.lower() == ".keras":  # evaluate takes no model; elsewhere, arguments swapped
        evaluates = "evaluate compares predicted labels with true labels"
        hint = {"prediction": f"{evaluates}; make the prediction first (napari-unet predict {path.name} IMAGE -o prediction.tif)",
                "truth": f"{evaluates} (a mask)"}.get(what, "check the order of the arguments")
        return f"{what} {path.name} is a model file, not a TIFF: {hint}"
    return (f"{what} {path.name} is not a TIFF file: napari-unet reads TIFF files, folders of TIFF slices and zarr stores; "
            "save it as TIFF")


def _check_slice_size(image, path: Path, axes_unrecorded: bool) -> None:
    """Refuse an image file whose slices are too small or narrow (the file's own reading, not a Python array's).

    The core reads a last axis of 3 or 4 as colours and a last axis of 1 as a channel, and would say so (with a
    Python hint) of a stack read from a grayscale file. Note (Y, X, N) files that are read across their images.
    """
    from .data import MIN_IMAGE_SIZE

    y, x = image.shape[-2:]
    across = image.ndim == 3 and axes_unrecorded and 8 * x <= min(image.shape[:2])  # no axes recorded: (Y, X, N)?
    read_as = (f"{image.shape[0]} slices of {y} x {x} pixels" if image.ndim == 3 else f"one image of {y} x {x} pixels")
    hint = (f"; if it holds {x} images of {image.shape[0]} x {y} pixels (axes Y, X, N), save it again as (N, Y, X), "
            f"e.g. with numpy.moveaxis(array, -1, 0)") if across else ""
    if image.ndim == 2 and min(y, x) < MIN_IMAGE_SIZE:  # as the core takes them
        needs = f"images of at least {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} pixels"
    elif image.ndim == 3 and x in (3, 4):
        high = f"{MIN_IMAGE_SIZE} pixels high and " if y < MIN_IMAGE_SIZE else ""
        needs = f"slices at least {high}5 pixels wide: a last axis of 3 or 4 would be read as colours"
    elif image.ndim == 3 and min(y, x) < MIN_IMAGE_SIZE:
        needs = f"slices of at least {MIN_IMAGE_SIZE} x {MIN_IMAGE_SIZE} pixels"
    else:
        needs = None
    if needs:
        raise CommandError(f"image {path.name} is read as {read_as}: too small to segment (napari-unet needs {needs}){hint}")
    if across:  # (Y, X, N) images (B-scans side by side) would be read across
        print(f"note: image {path.name} is read as {read_as}{hint}", file=sys.stderr)


def _output_axes(image_metadata: dict, ndim: int) -> str:
    """Axes of the labels predicted from a (Y, X) or (Z, Y, X) image read by :func:`_read_stack_and_metadata`: its stack
    axis keeps its letter (a time series stays T in napari), Z if it is neither T nor Z."""
    stack = str(image_metadata.get("axes") or "")[:-2]
    return ((stack if stack in ("Z", "T") else "Z") if ndim == 3 else "") + "YX"


def _with_pixel_size(metadata: dict, pixel_size: dict | None, class_axis: bool = False) -> dict:
    """Output ``metadata`` with the image's pixel sizes and offset (``class_axis``: a class axis of size 1 before Y, X)."""
    if not pixel_size:
        return metadata
    scale, units = list(pixel_size["scale"]), list(pixel_size["units"])
    translate = list(pixel_size.get("translate") or [])
    if class_axis:
        scale.insert(len(scale) - 2, 1.0)
        units.insert(len(units) - 2, None)
        if translate:
            translate.insert(len(translate) - 2, 0.0)
    return {**metadata, "scale": scale, "units": units, **({"translate": translate} if translate else {})}


def _holds_value(array, value) -> bool:
    """Whether ``array`` has a pixel equal to ``value``; a lazy (Z, Y, X) array is read a slice (or chunk) at a time."""
    from .data import slices_holding
    from .tiff_io import is_lazy

    if not is_lazy(array) or array.ndim < 3:
        return bool(np.any(array == value))
    return any(slices_holding(array, value))


def read_label_stack(path, what: str, ignore_value=None, lazy: bool = False) -> tuple[np.ndarray, int | None, list]:
    """Labels (Y, X) or (Z, Y, X) in file values, the value of their unannotated pixels, and notes to print
    (``lazy``: a large file is read when indexed, as :func:`read_stack`; not a prediction saved from napari).

    ``ignore_value`` given wins over the one the file records (the napari-unet Labels writer records it
    for sparse labels). A prediction layer saved from napari counts, as it does in napari, only the pixels
    painted or marked reviewed on it: the others get the ignore value.
    """
    from .labels import choose_ignore_value

    labels, metadata = _read_stack_and_metadata(path, what, lazy=lazy, labels=True)
    name, notes = Path(path).name, []
    if ignore_value is not None and not _holds_value(labels, ignore_value):
        notes.append(f"{what} {name}: no pixel has the ignore value {ignore_value}; every pixel counts as annotated")
    if ignore_value is None and metadata.get("ignore_value") is not None:
        ignore_value = int(metadata["ignore_value"])
        if _holds_value(labels, ignore_value):
            notes.append(f"{what} {name}: value {ignore_value} = not annotated, as the file records (--ignore-value to choose)")
    if isinstance(metadata.get("predicted_from"), str):
        reviewed = metadata.get("reviewed")
        if "reviewed" in metadata.get("damaged_masks", ()):
            raise CommandError(
                f"{what} {name} is a prediction of {metadata['predicted_from']!r} saved from napari whose record of the "
                "painted and reviewed pixels is damaged, so its corrections cannot be told from the prediction; to "
                "train on every pixel as it is, save its labels again as a plain TIFF (e.g. tifffile.imwrite)"
            )
        if reviewed is None or not reviewed.any():
            raise CommandError(
                f"{what} {name} is a prediction of {metadata['predicted_from']!r} saved from napari with no painted or "
                "reviewed pixel; only those count as annotations: paint corrections or mark slices reviewed first"
            )
        if ignore_value is None:
            ignore_value = choose_ignore_value(metadata.get("class_values") or np.unique(labels).tolist())
        dtype = np.result_type(labels.dtype, np.min_scalar_type(ignore_value))  # room for any --ignore-value
        labels = np.where(reviewed, np.asarray(labels), np.asarray(ignore_value, dtype)).astype(dtype, copy=False)
        notes.append(
            f"{what} {name}: a prediction of {metadata['predicted_from']!r} saved from napari; only its "
            f"{int(reviewed.sum())} painted or reviewed pixels count as annotations"
        )
    return labels, ignore_value, notes


class ProgressLine:
    """One self-overwriting status line on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, stream=None, every: float = 0.5):
        self.stream, self.every, self.last = stream or sys.stderr, every, -1e9
        self.tty = self.stream.isatty()
        self.shown = 0  # length of the line on the terminal
        self.unshown = None  # the latest (fraction, text) not shown yet: done() shows it (the log ended at 98.6 %)

    def show(self, fraction: float, text: str, force: bool = False):
        now = time.perf_counter()
        if not force and now - self.last < (self.every if self.tty else 10.0):
            self.unshown = (fraction, text)
            return
        self.last, self.unshown = now, None
        fraction = min(max(fraction, 0.0), 1.0)
        percent = f"{100 * fraction:5.1f}% {text}"
        if not self.tty:
            self.stream.write(f"[{_bar(fraction, 24)}] {percent}\n")
            self.stream.flush()
            return
        # one terminal row: a wrapped line left a row behind at every update, and the ETA at its end was cut off
        columns = _columns(self.stream) - 1
        width = min(24, columns - len(percent) - 3)
        line = (f"[{_bar(fraction, width)}] {percent}" if width >= 8 else percent)[:columns]
        if os.environ.get("TERM") == "dumb":  # a console that shows escape codes as text (Emacs' shell)
            self.stream.write("\r" + line.ljust(self.shown))
        else:
            self.stream.write("\r" + line + "\x1b[K")
        self.shown = len(line)
        self.stream.flush()

    def done(self):
        if self.unshown is not None:
            self.show(*self.unshown, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _bar(fraction: float, width: int) -> str:
    filled = int(round(width * fraction))
    return "#" * filled + "." * (width - filled)


def _columns(stream) -> int:
    """Columns of the terminal ``stream`` writes to (80 if unknown)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):
        return 80


def _train_config_from_args(args, preset):
    overrides = {
        "seed": args.seed,
        "ignore_value": args.ignore_value,
    }
    if args.rotations is not None:
        overrides["augment_rotations"] = {"on": True, "off": False}.get(args.rotations, "auto")
    for name in ("val_fraction", "batch_size", "patch_size", "learning_rate", "steps_per_epoch", "augment_noise", "merge_levels"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.float32:
        overrides["mixed_precision"] = False
    if args.no_xla:
        overrides["jit_compile"] = False
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    elif args.max_minutes is not None:
        overrides["epochs"] = 100_000  # the time budget decides
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    return preset.train.replace(**overrides)


def load_tensorflow_for_command() -> None:
    """Import TensorFlow and Keras without Keras' extras for notebooks, pandas and plots (~1 s less start-up).

    Commands give Keras numpy arrays only (:func:`napari_unet._tensorflow.load_tensorflow`).
    """
    from ._tensorflow import load_tensorflow

    load_tensorflow(skip_optional=True, quiet=True)


#: Training stacks of this many pixels or more get a line saying they are being prepared (about 3 s per 2048² slice
#: before the first step; 4 such slices reach it), smaller ones go straight to their first line.
PREPARING_NOTE_PIXELS = 1 << 24


def _unannotated_marker(class_values, dtype: np.dtype):
    """The class value among ``class_values`` that is -1 or the largest value of a 16-bit or wider integer ``dtype``
    (65535: values that mark unannotated pixels rather than a class), or None. 8-bit 255 is ISBI's cell class."""
    wide_max = np.iinfo(dtype).max if dtype.kind in "iu" and dtype.itemsize >= 2 else None
    return next((int(v) for v in class_values if v == -1 or v == wide_max), None)


class _Usr1:
    """What SIGUSR1 (``sbatch --signal=USR1@300``, ``kill -USR1``) does during a command: in ``train`` and ``demo`` it asks
    the training to stop after its current step and finish its model, as the widget's Stop does (a job about to reach its
    time limit keeps what it learned); one that comes before the first step (TensorFlow's import, preparing the data)
    stops it after that step. Once the steps are over (the model being finished, saved, scored), and in commands with
    nothing to stop early (predict, evaluate), it is noted once on stderr and the command goes on: its default action
    killed them at once (status 138, no message, no clean-up). ``requested``: the signals that ask for a stop."""

    def __init__(self, trains: bool):
        self.trains = trains
        self.stage = "before" if trains else "none"  # "training" in the loop, "after" once its steps are over
        self.requested: list = []
        self.said: set = set()

    def handle(self, signum, frame) -> None:
        if self.trains and self.stage in ("before", "training"):
            self.requested.append(signum)
            when = "after the current step" if self.stage == "training" else "after its first step"
            text = f"SIGUSR1: stopping the training {when}; the model is finished and saved"
        else:
            text = ("SIGUSR1 ignored: the training steps are over; the run goes on" if self.trains else
                    "SIGUSR1 ignored: only train (and demo) stop early on it; the run goes on")
        if self.stage not in self.said:  # once a stage: a scheduler may send it again
            self.said.add(self.stage)
            _notice(text)


#: The :class:`_Usr1` of the command running (its handler installed), the innermost last.
_USR1: list = []


@contextlib.contextmanager
def _usr1_handled(trains: bool):
    """Within the block, SIGUSR1 is handled by a :class:`_Usr1` (yielded); not where SIGUSR1 is missing (Windows), handled
    by someone else (a program embedding this one) or off the main thread: then its ``requested`` stays empty."""
    import threading

    state = _Usr1(trains)
    number = getattr(signal, "SIGUSR1", None)
    if number is None or threading.current_thread() is not threading.main_thread() or signal.getsignal(number) is not signal.SIG_DFL:
        yield state
        return
    previous = signal.signal(number, state.handle)
    _USR1.append(state)
    try:
        yield state
    finally:
        _USR1.remove(state)
        signal.signal(number, previous)


@contextlib.contextmanager
def _stop_on_usr1():
    """Within the block (the training loop), SIGUSR1 asks the training to stop after its current step (see
    :class:`_Usr1`); yields the :class:`_Usr1` whose ``requested`` says so: the command's (a request made before the
    loop counts), else one handling the signal for the block alone (from Python)."""
    command = next((state for state in reversed(_USR1) if state.trains), None)
    with contextlib.ExitStack() as stack:
        state = command or stack.enter_context(_usr1_handled(trains=True))
        state.stage = "training"
        try:
            yield state
        finally:
            state.stage = "after"


def _notice(text: str) -> None:
    """``napari-unet: text`` on descriptor 2 (a signal handler may run while the progress line is being written); a
    terminal gets a newline first, which ends the progress line (a log got a blank line)."""
    lead = "\n" if _stderr_is_a_terminal() else ""
    with contextlib.suppress(OSError):
        os.write(2, f"{lead}napari-unet: {text}\n".encode())


def _stderr_is_a_terminal() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


def _reason_text(reason: str) -> str:
    """Why training ended, as a verb: "completed", "stopped", "reached its time budget"."""
    return "reached its time budget" if reason == "time budget" else reason


def run_training(image, labels, model_config, train_config, init=None, quiet=False, pixel_size=None, finishing=None,
                 budget_option="--max-minutes", one_class_options=None, one_class_hint=None, data_name="image and labels"):
    """Drain training events with a terminal progress line; returns the start and finish events.
    ``budget_option``: the running command's option of the time budget, named when it ended the first epoch.
    ``one_class_options``: what to change when the model predicts one class (default: ``train``'s options).
    ``one_class_hint``: the advice of that warning instead of :data:`napari_unet.train.ONE_CLASS_HINT` (a command
    without those options: the demo).
    ``data_name``: how the memory check's messages name the data (``train``: "image IMG and labels LAB", its files).
    ``pixel_size``: [Y, X] µm of the image's pixels, if known (recorded in the model). ``finishing``: an ExitStack
    that, from the finishing of the model on, holds Ctrl-C, SIGTERM and SIGHUP until the caller closes it (once the model is
    saved): a scheduler's time limit that came during the finishing threw the finished model away."""
    from .postprocess import describe_rule
    from .train import EpochEnd, TrainingFinished, TrainingFinishing, TrainingStarted, TrainingStep, format_count, format_seconds, format_share, train_events

    progress = ProgressLine()
    started = final = None
    budget = train_config.max_minutes * 60 if train_config.max_minutes else None
    last_val = ""
    shape = np.shape(image)
    if not quiet and math.prod(shape) >= PREPARING_NOTE_PIXELS:  # minutes before the first event: say what happens
        slices = f"the annotated slices of {shape[0]} slices" if len(shape) == 3 else "1 image"
        print(f"preparing {slices} of {shape[-2]} x {shape[-1]} pixels (normalising, border weights)...", file=sys.stderr)
    stage = []  # "finishing" once the steps are done
    stepped = []  # a step was made: a SIGUSR1 that came before the first step stops after it (a model to save)

    def say_stopping(signum: int) -> None:
        _say_stopping(signum, saving=bool(stage) and finishing is not None)

    with _stop_on_usr1() as usr1:
        for event in events_held(train_events(image, labels, model_config, train_config, init=init, pixel_size=pixel_size,
                                              stop=lambda: bool(usr1.requested and stepped), data_name=data_name),
                                 say_stopping):
            if isinstance(event, TrainingStep) and not stepped:
                stepped.append(True)
            if isinstance(event, TrainingFinishing):
                usr1.stage = "after"  # the steps are over: nothing left to stop early
            if isinstance(event, TrainingFinishing) and finishing is not None:
                stage.append("finishing")
                finishing.enter_context(interrupts_deferred(second_at_once=True))
            if isinstance(event, TrainingStarted):
                started = event
                if quiet:
                    continue
                sparse = event.annotated_pixels is not None and event.annotated_pixels < labels.size
                annotated = f"; {event.annotated_pixels} annotated pixels ({format_share(event.annotated_pixels / labels.size)} of the labels)" if sparse else ""
                print(f"training on slices {event.train_slices}, {event.validation}; classes {event.class_values}{annotated}", file=sys.stderr)
                marker = _unannotated_marker(event.class_values, np.dtype(labels.dtype)) if train_config.ignore_value is None else None
                if marker is not None:
                    print(f"note: class {marker} is {'-1' if marker == -1 else f'the largest {np.dtype(labels.dtype)} value'}, a common "
                          f"marker of unannotated pixels; if it marks them here, train with --ignore-value {marker}", file=sys.stderr)
                for note in event.notes:
                    choose = f" ({_option_of(note.setting)} to choose)" if note.setting in _TRAIN_SETTINGS else ""
                    print(f"note: {note}{choose}", file=sys.stderr)
            elif isinstance(event, TrainingStep) and not quiet:
                fraction = event.step / event.total_steps
                if budget:
                    fraction = max(fraction, event.elapsed / budget)
                progress.show(
                    fraction,
                    f"epoch {event.epoch} step {event.step} loss {event.loss:.4f}{last_val} "
                    f"elapsed {format_seconds(event.elapsed)} ETA {format_seconds(event.eta)}",
                )
            elif isinstance(event, TrainingFinishing) and not quiet:
                rule = ", choosing the membrane rule" if event.tunes_rule else ""
                # always shown: in a log (one line per 10 s) it followed the last step too soon and was dropped, leaving
                # minutes of finishing unexplained
                progress.show(1.0, f"{_reason_text(event.reason)} after {format_count(event.steps, 'step')}; finishing the model{rule}...", force=True)
            elif isinstance(event, EpochEnd):
                if event.val_loss is not None:
                    last_val = f" val_loss {event.val_loss:.4f}" + (" *" if event.is_best else "")
            elif isinstance(event, TrainingFinished):
                final = event
    if not quiet:
        progress.done()
        if final.steps == 0:  # the command says that no model is written ("kept the last weights" came before that)
            pass
        elif final.reason == "time budget" and final.steps < started.steps_per_epoch:  # not "after 1 epoch"
            print(f"training reached its time budget after {final.steps} of the first epoch's {started.steps_per_epoch} "
                  f"steps: the model has barely learnt (a larger {budget_option}; TensorFlow's start-up alone can take a "
                  "minute)", file=sys.stderr)
        else:
            print(f"training {_reason_text(final.reason)} after {format_count(len(final.history), 'epoch')} "
                  f"({format_count(final.steps, 'step')}); kept the {final.kept or 'last weights'}", file=sys.stderr)
        if final.steps and final.model.boundary_rule is not None:
            # an --init model's rule is kept when no validation slices tune it again (no score then)
            scored = ("the --init model's, not tuned again: no fully annotated validation slices with both classes"
                      if final.boundary_v_rand is None else
                      f"validation V_rand {final.boundary_v_rand:.4f} without test-time augmentation")
            print(f"membrane rule: {describe_rule(final.model.boundary_rule)} ({scored}; the model file holds it)", file=sys.stderr)
        elif final.untuned_rule_note:
            print(f"note: {final.untuned_rule_note} (--close-boundaries)", file=sys.stderr)
        if final.one_class_note:  # the model is still written (status 0): see one_class_options
            from .train import ONE_CLASS_HINT

            note = final.one_class_note if one_class_hint is None else final.one_class_note.replace(ONE_CLASS_HINT, one_class_hint)
            print(f"warning: {note} ({one_class_options or _one_class_options(train_config)})", file=sys.stderr)
    return started, final


def _one_class_options(train_config) -> str:
    """``train``'s options for :data:`napari_unet.train.ONE_CLASS_HINT`, in the order it names them.

    A model that predicts one class is still written and the command exits with status 0: the run did what it was asked
    (a short or exploratory run may end so), its file is a valid model, and status 1 means a failure with nothing of
    use to keep (a diverged run keeps weights but its numbers broke); the warning says what happened."""
    budget = "--max-minutes" if train_config.max_minutes else "--epochs or --max-minutes"
    return f"--learning-rate, now {train_config.learning_rate:g}; {budget}"


def _labels_named(err: Exception, what: str, path) -> str:
    """A core label error's message about "the labels" naming the file (the command's other errors name theirs)."""
    text, name = str(err), Path(path).name
    for lead in ("the labels", "labels"):
        if text.startswith(lead):
            return f"{what} {name}{text[len(lead):]}"
    return f"{what} {name}: {text}"


#: The settings ``train`` takes from its options: a setting's message names the option typed (:func:`_option_of`).
_TRAIN_SETTINGS = ("val_fraction", "local_contrast_sigma", "augment_noise", "epochs", "max_minutes", "batch_size", "patch_size",
                   "learning_rate", "steps_per_epoch", "merge_levels", "context_slices", "augment_rotations", "ignore_value")


def _option_of(setting: str) -> str:
    """The ``train`` option of a setting: ``--`` and its name with hyphens, but for two."""
    return {"augment_rotations": "--rotations", "local_contrast_sigma": "--local-contrast"}.get(setting, "--" + setting.replace("_", "-"))


def cmd_train(args) -> int:
    from .config import ConfigError
    from .data import InputError, reader_errors
    from .labels import LabelError

    try:
        return _train(args)
    except LabelError as err:
        # also a genuine mask of too many classes (instances) says "distinct values": the hint says "if"
        swapped = (" (if this file is the image: train takes IMAGE then LABELS)"
                   if "distinct values" in str(err) or "fractional" in str(err) else "")
        raise CommandError(_labels_named(err, "labels", args.labels) + swapped) from None
    except ConfigError as err:  # "val_fraction must be in [0, 1)": the setting, not the option typed
        text = re.sub(r"\b(" + "|".join(_TRAIN_SETTINGS) + r")\b", lambda m: _option_of(m.group(1)), str(err))
        raise CommandError(text) from None
    except InputError as err:  # the core's checks of the image ("image contains NaN or Inf values; ...")
        raise CommandError(_image_named(err, args.image)) from None
    except reader_errors() as err:  # a damaged page or chunk of a file read lazily, found while training or scoring
        raise CommandError(_read_error_named(err, args)) from None


def _read_error_named(err: Exception, args) -> str:
    """A read error found after ``train`` read its files' headers: the file by its role, the slice where known (set by
    :func:`napari_unet.data.read_planes`), and what was kept: no model written (an ``--init`` model unchanged), or the
    model written before it, when scoring its validation read the file again."""
    role = getattr(err, "role", None)
    if role not in ("image", "labels"):
        role = "labels" if str(err).startswith(f"{Path(args.labels)}: ") else "image"
    text = _tiff_error_named(err, role, Path(args.image if role == "image" else args.labels))
    if args.written:
        return (f"{text}; {', '.join(map(str, args.written))} was written before it (the model is complete; only "
                "scoring its validation failed)")
    return text + "; no model written" + (f"; the --init model {args.init} is unchanged" if args.init else "")


def _image_named(err: Exception, path) -> str:
    """The core's message about "the image" ("slice 1: image contains NaN ...") naming the file; a message naming it
    already (the memory check's, ``data_name``: :func:`_training_data_name`) and others (about a setting) unchanged."""
    text, name = str(err), Path(path).name
    if text.startswith(f"image {name} "):
        return text
    match = re.match(r"(slice \d+): image (.*)", text, re.DOTALL)
    if match:
        return f"image {name}, {match.group(1)}: {match.group(2)}"
    if text.startswith("image "):
        return f"image {name} {text[len('image '):]}"
    return text


def _training_data_name(image_path, labels_path) -> str:
    """How ``train``'s memory messages name its data (``data_name`` of :func:`napari_unet.train.train_events`)."""
    return f"image {Path(image_path).name} and labels {Path(labels_path).name}"


@contextlib.contextmanager
def _low_memory_one_line():
    """The core's :class:`~napari_unet.hardware.LowMemoryWarning` raised on this thread (a file read whole by
    :mod:`~napari_unet.tiff_io`, which names it; training on the files, named by ``data_name``; the demo's) printed as
    one ``warning:`` line (Python's format named a line of the core's code and showed it); other warnings, and other
    threads', as before. Installed once around the subcommand's dispatch in :func:`main`. No
    ``warnings.catch_warnings`` (it resets the filters and "once" registries of every thread for the whole run, see
    tiff_io's ``_tifffile_errors``): only ``showwarning`` is swapped, and put back."""
    from .hardware import LowMemoryWarning

    shown, thread = warnings.showwarning, threading.get_ident()

    def show(message, category, *args, **kwargs):
        if not issubclass(category, LowMemoryWarning) or threading.get_ident() != thread:
            return shown(message, category, *args, **kwargs)
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:  # (not if someone replaced it meanwhile: theirs stays)
            warnings.showwarning = shown


def diverged_path(output: Path) -> Path:
    """Where a diverged ``train`` writes the weights it kept, never ``output`` itself: ``NAME.diverged.keras`` beside it,
    else ``NAME.diverged-2.keras`` and so on. The run fails (status 1): it replaces no file (the model it was to replace,
    an earlier run's, an ``--init`` model of that name), and makes no file of the name asked for, which Make and
    ``[ -f model.keras ]`` would take for a finished target."""
    candidate, number = output.with_name(f"{output.stem}.diverged.keras"), 2
    while candidate.exists() or candidate.is_symlink():
        candidate, number = output.with_name(f"{output.stem}.diverged-{number}.keras"), number + 1
    return candidate


def _train(args) -> int:
    from dataclasses import replace

    from .config import MERGE_LEVELS_LONG, is_long_budget, preset as get_preset
    from .data import normalize_window
    from .model_io import ModelFileError, check_model_file, load_model
    from .metrics import evaluate
    from .predict import predict, resolve_tta_views
    from .train import TrainingDiverged

    output = check_output(args.output, "model file", inputs=[p for p in (args.image, args.labels, args.init) if p])
    if output.suffix != ".keras":  # Path(".keras").suffix is "": a name is needed before it
        raise CommandError(f"the model file must be a name ending in .keras (e.g. model.keras), got {output.name!r}")
    try:
        if args.init:
            check_model_file(args.init)  # without TensorFlow, before the image is read
    except ModelFileError as err:
        raise CommandError(f"--init: {err}") from None
    _note_stale_siblings([output])
    # read when indexed (large files): training reads only the slices that hold annotations
    image, image_metadata = _read_stack_and_metadata(args.image, "image", lazy=True)
    image_metadata = _given_pixel_size(image_metadata, args.pixel_size, image.ndim)
    labels, ignore_value, notes = read_label_stack(args.labels, "labels", args.ignore_value, lazy=True)
    if image.shape != labels.shape:
        image_name, labels_name = Path(args.image).name, Path(args.labels).name
        if image.ndim == labels.ndim == 3 and image.shape[1:] == labels.shape[1:]:
            raise CommandError(f"image {image_name} has {image.shape[0]} slices, labels {labels_name} {labels.shape[0]}: "
                               "give labels of every slice (fill the slices not annotated with a value of no class and train with "
                               "--ignore-value VALUE) or crop the image to the labelled slices")
        raise CommandError(f"image {image_name} has shape {image.shape} and labels {labels_name} {labels.shape}: they "
                           "differ; they must be identical")
    for note in notes:
        print(note, file=sys.stderr)
    chosen = get_preset(args.preset)
    train_config = _train_config_from_args(args, chosen).replace(ignore_value=ignore_value)
    load_tensorflow_for_command()
    try:
        init = load_model(args.init) if args.init else None
    except ModelFileError as err:
        raise CommandError(f"--init: {err}") from None
    if init is not None and args.preset != "default":
        print(f"note: --init's network is trained on; --preset {args.preset} chooses only the training settings (learning rate, "
              "loss, class weights)", file=sys.stderr)
    model_config = chosen.model_for(train_config)
    if args.depth is None and init is None and model_config.depth != chosen.model.depth:
        print(f"depth {model_config.depth}: a budget of {train_config.max_minutes:g} minutes with AMX bfloat16 or a GPU (--depth to choose)", file=sys.stderr)
    if is_long_budget(train_config.max_minutes):  # what "auto" switches on for such budgets
        minutes = f"{train_config.max_minutes:g} minutes"
        if train_config.augment_noise == "auto":
            print(f"noise augmentation: on for a budget of {minutes} (--augment-noise 0 to switch off)", file=sys.stderr)
        if train_config.merge_levels == "auto":
            print(f"membrane rule: merge levels up to {max(MERGE_LEVELS_LONG):g} for a budget of {minutes} (--merge-levels 0.5,0.6 to keep the short-run set)", file=sys.stderr)
    for option, field in (("depth", "depth"), ("context_slices", "context_slices"), ("local_contrast", "local_contrast_sigma")):
        value = getattr(args, option)
        if value is None:
            continue
        if init is not None and value != getattr(init.config, field):
            flag = "--" + option.replace("_", "-")
            raise CommandError(f"{flag} {value:g} differs from the --init model's {getattr(init.config, field):g}")
        model_config = replace(model_config, **{field: value})
    pixel_size = _micrometres(image_metadata.get("pixel_size"))
    if pixel_size is not None and not args.pixel_size:  # a file's tag can be wrong (circular-scan.tif: inches for mm)
        print(f"note: the model records pixels of {pixel_size[0]:.4g} x {pixel_size[1]:.4g} µm (Y x X), as {Path(args.image).name} "
              "records them; predict compares images' pixel sizes with it (--pixel-size Y_UM X_UM to give the right one)", file=sys.stderr)
    with contextlib.ExitStack() as finishing:  # an interrupt during the finishing comes once the model is saved
        try:
            started, final = run_training(image, labels, None if init is not None else model_config, train_config, init=init,
                                          pixel_size=pixel_size, finishing=finishing,
                                          data_name=_training_data_name(args.image, args.labels))
        except TrainingDiverged as err:  # before it kept any weights ("...; lower the learning rate")
            raise FloatingPointError(f"{err} (--learning-rate, now {train_config.learning_rate:g}); no model written"
                                     + (f"; the --init model {args.init} is unchanged" if init is not None else "")) from None
        if final.steps == 0:
            raise CommandError(f"training ended ({final.reason}) before its first step; no model written (a larger --max-minutes?)")
        if final.reason == "diverged":  # a failed run (status 1): never the file asked for (see diverged_path)
            output = diverged_path(output)
        replaced = output.exists()
        # the file replaced and its record, never one without the other; a second signal stops at once
        with interrupts_deferred(second_at_once=True, notice=lambda signum: _say_stopping(signum, saving=True)):
            save_model_or_elsewhere(final.model, output, args.written)
            args.written.append(output)
        print(f"wrote {output}{_REPLACED if replaced else ''}", file=sys.stderr)
    if final.reason == "diverged":  # a failed run (status 1), whose weights from before it are kept, not lost
        raise FloatingPointError(f"training diverged ({final.divergence}) and stopped; {output} holds the {final.kept} from "
                                 f"before it; lower the learning rate (--learning-rate, now {train_config.learning_rate:g})")
    image_height = _pixel_height(image_metadata)  # boundary errors in µm too (Y alone may be calibrated)

    stack_image = image if image.ndim == 3 else image[None]
    stack_labels = labels if labels.ndim == 3 else labels[None]
    views = resolve_tta_views("auto", final.model)  # scored as predict writes them: with test-time augmentation where it is on by default
    window = started.val_window  # large slices: validation scored this window of them, and so does this score
    normalized = window is not None  # the window of whole normalised slices, as validation saw it
    if window is not None:
        y0, y1, x0, x1 = window
        model = final.model
        stack_image, planes = normalize_window(stack_image, started.val_slices or started.train_slices, window,
                                               model.percentiles, model.config.local_contrast_sigma, model.config.context_slices)
        stack_labels = stack_labels[:, y0:y1, x0:x1]
    in_window = {"validation_window": list(window)} if window is not None else {}
    if started.val_slices:
        val = started.val_slices
        prediction = predict(final.model, stack_image, slices=planes if normalized else val, return_probabilities=False,
                             normalized=normalized, jit_compile=False if args.no_xla else None)
        scores = evaluate(prediction.labels, stack_labels[val], final.model.class_values, _membrane_of(final.model),
                          ignore_value=train_config.ignore_value, pixel_height=image_height)
        report = {"validation_slices": val, **in_window, "tta_views": views, **scores}
    elif started.val_column is not None:  # one annotated image (an OCT B-scan): validated on its last columns
        column, trained = started.val_column, started.train_slices
        prediction = predict(final.model, stack_image, slices=planes if normalized else trained, return_probabilities=False,
                             normalized=normalized, jit_compile=False if args.no_xla else None)
        held_out = (Ellipsis,) if window is not None else (Ellipsis, slice(column, None))  # a window lies in those columns
        scores = evaluate(prediction.labels[held_out], stack_labels[trained][held_out], final.model.class_values,
                          _membrane_of(final.model), ignore_value=train_config.ignore_value, pixel_height=image_height)
        report = {"validation_columns": [column, int(image.shape[-1])], **in_window, "tta_views": views, **scores}
    else:  # one JSON document all the same (it printed nothing: a parse error in a pipeline), without score keys
        why = "--val-fraction 0" if train_config.val_fraction == 0 else "nothing annotated to hold out; see the notes on stderr"
        report = {"validation_slices": [], "note": f"no validation ({why}): no scores"}
    print(json.dumps(report, indent=1), flush=True)  # flushed: scoring took long, and a log of both streams keeps the order
    return 0


def _membrane_of(model):
    """``evaluate``'s membrane_value for a model's validation: its boundary class, or False (no ISBI scores) when it
    has none; the smaller of two values was taken, and an OCT band's vitreous and choroid were scored as membrane."""
    return model.boundary_value if model.boundary_value is not None else False


def cmd_predict(args) -> int:
    from .data import InputError, reader_errors
    from .model_io import ModelFileError, check_model_file
    from .zarr_io import is_zarr_name

    try:
        check_model_file(args.model)  # without TensorFlow, before the image is read
    except ModelFileError as err:
        swapped = Path(args.image).suffix == ".keras" and Path(args.model).suffix != ".keras"
        raise CommandError(f"{err}{'; predict takes MODEL.keras first, then IMAGE' if swapped else ''}") from None
    inputs, suffixes = (args.model, args.image), (".tif", ".tiff")
    chunked = is_zarr_name(args.output)
    if args.probabilities and is_zarr_name(args.probabilities) != chunked:
        raise CommandError("-o and --probabilities must both be zarr stores (.zarr) or both TIFF files")
    if args.scheduler is not None and not args.scheduler.strip():
        raise CommandError("--scheduler needs the address of a dask scheduler, e.g. tcp://10.0.0.5:8786")
    if not chunked and (args.scheduler or args.slices_per_chunk):
        raise CommandError(f"--{'scheduler' if args.scheduler else 'slices-per-chunk'} needs a zarr store as output (-o LABELS.zarr), which the tasks write chunk by chunk")
    if chunked:
        output = check_zarr_output(args.output, "labels store", inputs)
        probabilities_file = check_zarr_output(args.probabilities, "probabilities store", inputs) if args.probabilities else None
        if probabilities_file is not None and (_within(probabilities_file, output) or _within(output, probabilities_file)):
            raise CommandError("-o and --probabilities must not lie one inside the other")
        args.image = os.path.abspath(args.image)  # workers elsewhere read it
    else:
        output = check_output(args.output, "labels file", inputs, suffixes + (".zarr",))
        probabilities_file = check_output(args.probabilities, "probabilities file", inputs, suffixes) if args.probabilities else None
    if probabilities_file is not None and _same_output(probabilities_file.resolve(), output.resolve()):
        raise CommandError("--probabilities must name another file than -o (names differing only in case are one file on "
                           "macOS and Windows)")
    _note_stale_siblings([output, probabilities_file])
    # slices are read as the prediction reaches them; a cluster's workers read them by path
    image, image_metadata = _read_stack_and_metadata(args.image, "image", lazy=True, for_cluster=args.scheduler is not None)
    pixel_size = _given_pixel_size(image_metadata, args.pixel_size, image.ndim).get("pixel_size")
    axes = _output_axes(image_metadata, image.ndim)
    if args.scheduler is None:  # with a cluster, only its workers run the network (their memory is theirs)
        _check_slice_memory(image, Path(args.image))
        load_tensorflow_for_command()
    # Refused from here on (the model loaded, slices read, outputs reserved), the message says what became of -o and
    # --probabilities; the refusals above (arguments, the image's header, memory) came before any work.
    args.started = True  # (main's handlers of a lack of memory or an OSError say it from here on too)
    try:
        if chunked:
            return _predict_chunked(args, image, output, probabilities_file, pixel_size, axes)
        return _predict_local(args, image, output, probabilities_file, pixel_size, axes)
    except reader_errors() as err:  # a slice found damaged while predicting: named as at read time
        raise CommandError(_tiff_error_named(err, "image", Path(args.image)) + _nothing_written(args)) from None
    except InputError as err:  # the core's checks of a slice ("slice 1: image contains NaN or Inf values; ...")
        raise CommandError(_image_named(err, args.image) + _nothing_written(args)) from None
    except _NotStarted:  # (--scheduler's cluster unreachable: nothing began)
        raise
    except _bad_input_errors() as err:  # the cluster lost, a network giving NaN, an output taken by another program
        raise CommandError(f"{err}{_nothing_written(args)}") from None


class _NotStarted(CommandError):
    """A ``predict`` refused before it began (no dask cluster at --scheduler): its message says nothing of outputs."""


def _nothing_written(args) -> str:
    """What a ``predict`` that failed before writing left: no output (scratch files and partial stores are removed), and
    the files or stores already at -o / --probabilities as they were; after a write that could not be undone
    (:func:`write_all`), which output is new and which is not, and where an old one that could not be put back is."""
    aside = "".join(f"; the old {path} is at {sibling}: rename it back" for path, sibling in getattr(args, "left_aside", ()))
    if args.written:
        new = {os.path.abspath(path) for path in args.written}
        old = [str(path) for path in (args.output, args.probabilities)
               if path and os.path.abspath(path) not in new and os.path.lexists(path)]
        if not old:  # (all written: the error came after)
            return aside
        return (f"; {', '.join(map(str, args.written))} {'was' if len(args.written) == 1 else 'were'} written, "
                f"{' and '.join(old)} {'is' if len(old) == 1 else 'are'} unchanged: they do not match, predict again{aside}")
    kept = [str(path) for path in (args.output, args.probabilities) if path and os.path.lexists(path)]
    return "; no prediction written" + (f" ({' and '.join(kept)} {'is' if len(kept) == 1 else 'are'} unchanged)" if kept else "") + aside


#: float32 copies of a slice that a local ``predict`` holds besides the slice itself (see predict.py: the normalised
#: plane, its padded copy, the planes of context slices, the membrane rule's probabilities and its working arrays).
SLICE_FLOAT32_COPIES = 5


def _check_slice_memory(image, path: Path) -> None:
    """The memory policy (:mod:`napari_unet.hardware`, as :func:`napari_unet.tiff_io.check_memory`) for a local
    ``predict``'s one slice and its float32 working copies: :class:`CommandError` beyond the machine's (or the
    container's) memory and swap (a zarr declaring 100000² slices ran until the address limit stopped it, or the
    system ran out), one ``warning:`` line beyond 3/4 of the memory available now, and it predicts anyway. A slice of
    an in-memory or memory-mapped image is a view (no copy to count); a lazy one's read makes one."""
    from .data import in_memory
    from .hardware import memory_excess, memory_shortfall
    from .tiff_io import n_bytes

    plane = tuple(int(n) for n in image.shape[-2:])
    copied = not (in_memory(image) or isinstance(image, np.memmap))
    needed = copied * n_bytes(plane, image.dtype) + SLICE_FLOAT32_COPIES * n_bytes(plane, np.float32)
    what = (f"image {path.name}: predicting one slice of {plane[0]} x {plane[1]} pixels ({'it and ' if copied else ''}"
            f"{SLICE_FLOAT32_COPIES} float32 copies{'' if copied else ' of it'})")
    excess = memory_excess(needed)
    if excess is not None:
        raise CommandError(f"{what} {excess}; cut it into smaller images, or predict it on a dask cluster of machines "
                           "with more memory (-o LABELS.zarr --scheduler ADDRESS)")
    shortfall = memory_shortfall(needed)
    if shortfall is not None:
        print(f"warning: {what} {shortfall}; predicting anyway (close other programs if the system slows down)",
              file=sys.stderr)


def _predict_local(args, image, output: Path, probabilities_file: Path | None, pixel_size: dict | None, axes: str) -> int:
    """``predict`` into TIFF files, through scratch files beside them."""
    from .model_io import load_model
    from .predict import blank_slices_note, labels_dtype, predict_events
    from .train import format_seconds

    model = load_model(args.model)
    _note_options_the_model_ignores(args, model)
    _note_intensities(image, model)
    _note_pixel_size(model, pixel_size, bool(args.pixel_size))
    progress = ProgressLine()
    result = None
    with contextlib.ExitStack() as scratch:
        # The results live in unlinked scratch files beside the output, so a stack larger than memory predicts
        # in memory bounded by a slice; they vanish when closed, also after a crash.
        labels_out = scratch_array(scratch, output.parent, image.shape, labels_dtype(model))
        probabilities_out = None
        if probabilities_file is not None:
            probabilities_out = scratch_array(scratch, probabilities_file.parent, (*image.shape, model.config.n_classes), np.float32)
        for event in events_held(predict_events(
            model, image, tile_size=args.tile_size, batch_size=args.batch_size, tta=args.tta if args.tta_views is None else args.tta_views,
            close_boundaries=False if args.argmax else (True if args.close_boundaries else None),
            mixed_precision=False if args.float32 else None, labels_out=labels_out, probabilities_out=probabilities_out,
            jit_compile=False if args.no_xla else None,
            return_probabilities=False,
        ), _say_stopping):
            if hasattr(event, "done"):
                progress.show(event.done / event.total, f"tile {event.done}/{event.total} ETA {format_seconds(event.eta)}")
            else:
                result = event
        progress.done()
        if result.blank_slices:
            print(f"note: {blank_slices_note(result.blank_slices)}", file=sys.stderr)
        files = [(output, result.labels, _with_pixel_size({"class_values": list(model.class_values), "axes": axes}, pixel_size))]
        if probabilities_file is not None:
            probs = np.moveaxis(result.probabilities, -1, -3)  # one plane per class, a view: written page by page
            files.append((probabilities_file, probs, _with_pixel_size({"class_values": list(model.class_values), "axes": axes[:-2] + "CYX"}, pixel_size, class_axis=True)))
        if sum(array.nbytes for _, array, _ in files) > 2**26:  # compressing a large stack takes minutes: not silently
            print(f"writing {', '.join(str(path) for path, _, _ in files)}...", file=sys.stderr)
        existed = {path for path, _, _ in files if Path(path).exists()}
        args.left_aside = []
        write_all(files, args.written, args.left_aside)
    for path, array, metadata in files:
        print(f"wrote {path} {array.shape} {array.dtype}" + (f" (axes {metadata['axes']})" if "axes" in metadata else "")
              + (_REPLACED if path in existed else ""), file=sys.stderr)
    return 0


def _note_options_the_model_ignores(args, model) -> None:
    """Say on stderr when an option cannot do what it says for ``model`` (a :class:`UNetModel` or
    :class:`napari_unet.chunked.ModelSource`): a silent no-op misleads."""
    from .predict import upright_views
    from .train import format_count

    if args.close_boundaries and model.boundary_value not in model.class_values:
        print(f"note: --close-boundaries ignored: this model has no thin boundary class (classes {list(model.class_values)})", file=sys.stderr)
    upright = upright_views(model)
    if args.tta_views is not None and upright is not None and args.tta_views > len(upright):
        print(f"note: --tta-views {args.tta_views}: this model (trained without rotations{' or flips' if len(upright) == 1 else ''}) "
              f"has {format_count(len(upright), 'view')}", file=sys.stderr)
    patch = model.train_config.patch_size if model.train_config is not None else None
    if patch is not None and args.tile_size < patch:
        print(f"note: --tile-size {args.tile_size} is smaller than the {patch}-pixel patches the model was trained on: "
              "tiles see less context, and labels near their edges can change (default 512)", file=sys.stderr)


def _note_intensities(image, model) -> None:
    """Say on stderr when IMAGE looks unlike the model's training images (inverted, log-scaled...)."""
    from .predict import intensity_note

    note = intensity_note(image, model)
    if note is not None:
        print(f"note: {note}", file=sys.stderr)


def _given_pixel_size(metadata: dict, given, ndim: int) -> dict:
    """``metadata`` (of :func:`_read_stack_and_metadata`) with ``--pixel-size`` (Y, X µm) in place of the file's."""
    if not given:
        return metadata
    pixel_size = dict(metadata.get("pixel_size") or {"scale": [1.0] * ndim, "units": [None] * ndim})
    pixel_size["scale"] = [*pixel_size["scale"][:-2], float(given[0]), float(given[1])]
    pixel_size["units"] = [*pixel_size["units"][:-2], "µm", "µm"]
    return {**metadata, "pixel_size": pixel_size}


def _micrometres(pixel_size: dict | None) -> list | None:
    """[Y, X] µm of a file's ``pixel_size`` (:func:`_read_stack_and_metadata`) when both are lengths, else None."""
    from .tiff_io import pixel_size_um

    return pixel_size_um(pixel_size["scale"], pixel_size["units"]) if pixel_size else None


def _note_pixel_size(model, pixel_size: dict | None, given: bool = False) -> None:
    """Say on stderr when the image's pixels (``pixel_size`` of its file, or ``given`` by --pixel-size) differ in size
    from the training image's."""
    from .predict import pixel_size_note

    size = _micrometres(pixel_size)
    trained = getattr(model, "pixel_size", None)
    if size is None and trained is not None:  # a scan of another device would pass without a word (Duke's B-scans)
        print(f"note: the model was trained on pixels of {trained[0]:.4g} x {trained[1]:.4g} µm (Y x X); the image records "
              "no pixel size, so they were not compared (--pixel-size Y_UM X_UM gives it)", file=sys.stderr)
        return
    note = pixel_size_note(model, size)
    if note is not None:
        how = "" if given else " (the size the file records; --pixel-size Y_UM X_UM gives another)"
        print(f"note: {note}{how}", file=sys.stderr)


def _predict_chunked(args, image, output: Path, probabilities_file: Path | None, pixel_size: dict | None = None,
                     axes: str | None = None) -> int:
    """``predict`` into zarr stores, chunk by chunk: here, or on the dask cluster of ``--scheduler`` (``axes``: the
    labels', ZYX or YX by default)."""
    from .chunked import ModelSource, default_slices_per_chunk, predict_chunked, store_events
    from .predict import store_chunk_rows
    from .train import format_seconds
    from .zarr_io import commit_zarr_stores, create_zarr, discard_zarr, is_zarr_path

    source = ModelSource(args.model)
    _note_options_the_model_ignores(args, source)
    _note_intensities(image, source)
    _note_pixel_size(source, pixel_size, bool(args.pixel_size))
    # a zarr image's own chunks along Z; a TIFF's or folder's pages are no chunks to follow (tasks of one slice)
    per_chunk = args.slices_per_chunk or (None if is_zarr_path(args.image) else default_slices_per_chunk(np.shape(image), image.dtype))
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_dask_client(args.scheduler)) if args.scheduler else None
        prediction = predict_chunked(
            source, image, slices_per_chunk=per_chunk, return_probabilities=probabilities_file is not None,
            tile_size=args.tile_size, batch_size=args.batch_size, tta=args.tta if args.tta_views is None else args.tta_views,
            close_boundaries=False if args.argmax else (True if args.close_boundaries else None),
            mixed_precision=False if args.float32 else None, client=client, jit_compile=False if args.no_xla else None,
        )
        # store chunks of one slice (and class) and the rows of the prediction's bands (the whole slice when it fits one
        # membrane-rule window): tasks never share a chunk, and a tall slice's bands, written as they are predicted, each
        # write whole chunks (a whole-slice chunk was read back and written again for every band: 2x the write time of a
        # 4096² slice, 10x of an 8192² one, and the slice's chunk in memory at each band)
        z, plane, n_classes = image.shape[:-2], tuple(image.shape[-2:]), source.config.n_classes
        chunk = (store_chunk_rows(plane[0]), plane[1])
        axes = axes or _output_axes({}, image.ndim)
        stores = [(output, prediction.labels.shape, prediction.labels.dtype, (1,) * len(z) + chunk,
                   _with_pixel_size({"class_values": source.class_values, "axes": axes}, pixel_size))]
        if probabilities_file is not None:
            stores.append((probabilities_file, (*z, n_classes, *plane), np.float32, (1,) * len(z) + (1, *chunk),
                           _with_pixel_size({"class_values": source.class_values, "axes": axes[:-2] + "CYX"}, pixel_size, class_axis=True)))
        partials = []
        try:
            for path, shape, dtype, chunks, metadata in stores:
                partials.append(create_zarr(path, shape, dtype, chunks, metadata))
            progress = ProgressLine()
            try:
                # not events_held: TensorFlow runs in the tasks' threads, and a task may run minutes without an event
                for event in store_events(prediction, partials[0], partials[1] if len(partials) > 1 else None, client=client):
                    progress.show(event.done / event.total, f"slice {event.done}/{event.total} ETA {format_seconds(event.eta)}",
                                  force=event.done == event.total)
            except Exception as err:
                _raise_cluster_failure(err)
                raise
            progress.done()
            try:  # renames only, so both outputs are in place at once (and named as written before any interrupt)
                replaced = commit_zarr_stores([(partial, path) for partial, (path, *_rest) in zip(partials, stores)], args.written)
            except FileExistsError as err:  # put there by another program while this one ran (cmd_predict: it is unchanged)
                raise CommandError(str(err).removesuffix("; not replaced")) from None
            for old in replaced:  # deleting a large store takes long: after both are in place
                if old is not None:
                    discard_zarr(old)
        finally:
            for partial in partials:
                discard_zarr(partial)
    for (path, shape, dtype, _chunks, metadata), old in zip(stores, replaced):
        print(f"wrote {path} {tuple(shape)} {np.dtype(dtype)} (axes {metadata['axes']}, zarr)"
              + (_REPLACED_STORE if old is not None else ""), file=sys.stderr)
    return 0


SCHEDULER_TIMEOUT = "20s"


@contextlib.contextmanager
def _dask_client(address: str):
    """A ``dask.distributed`` client of the scheduler at ``address`` with at least one worker; else a :class:`CommandError`."""
    try:
        from distributed import Client
    except ImportError:
        raise _NotStarted("--scheduler needs dask.distributed: pip install 'napari-unet[distributed]'") from None
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as err:  # TypeError: tls:// without a security context
        raise _NotStarted(f"cannot reach a dask scheduler at {address!r}: {_first_line(err)}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=SCHEDULER_TIMEOUT)
        except TimeoutError:
            raise _NotStarted(f"the dask scheduler at {address!r} has no workers (start some: dask worker {address})") from None
        yield client


def _raise_cluster_failure(err: Exception) -> None:
    """A :class:`CommandError` for a cluster's own failures (a worker died, a worker without napari-unet, the
    scheduler gone)."""
    name = type(err).__name__
    if name in ("FutureCancelledError", "FuturesCancelledError", "CancelledError", "CommClosedError"):
        raise CommandError(f"lost the dask cluster while predicting ({name}: {_first_line(err)})") from None
    if name == "KilledWorker":
        raise CommandError(f"a dask worker died while predicting (out of memory? fewer threads per worker or --slices-per-chunk 1 may help): {_first_line(err)}") from None
    if isinstance(err, ModuleNotFoundError):
        raise CommandError(f"a dask worker cannot load what the prediction needs (install napari-unet on every worker): {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _pixel_height(metadata: dict) -> float | None:
    """The Y pixel size in µm a file records (``pixel_size`` of :func:`_read_stack_and_metadata`; nm and mm converted),
    else None."""
    from .tiff_io import length_um

    pixel_size = metadata.get("pixel_size") or {}
    scale, units = pixel_size.get("scale") or [], pixel_size.get("units") or []
    return length_um(scale[-2], units[-2]) if len(scale) >= 2 and len(units) >= 2 else None  # X may be uncalibrated


def _membrane_choice(text: str):
    """``--membrane``: a whole number, or False for 'none'."""
    if text.strip().lower() == "none":
        return False
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class value or 'none', got {text!r}") from None


def cmd_evaluate(args) -> int:
    from .labels import LabelError, find_class_values
    from .metrics import MAX_PIXEL_HEIGHT_UM, UnknownValuesWarning, evaluate, slice_blocks, stack_view
    from .labels import MAX_CLASSES

    if args.pixel_height is not None and args.pixel_height > MAX_PIXEL_HEIGHT_UM:  # its errors in µm overflowed to Infinity
        raise CommandError(f"--pixel-height {args.pixel_height:g} µm is beyond {MAX_PIXEL_HEIGHT_UM:g} µm (a metre)")
    # read when indexed (large files): evaluate scores a block of slices at a time
    prediction, prediction_metadata = _read_stack_and_metadata(args.prediction, "prediction", lazy=True)
    try:
        truth, ignore_value, notes = read_label_stack(args.truth, "truth", args.ignore_value, lazy=True)
    except LabelError as err:
        raise CommandError(_labels_named(err, "truth labels", args.truth)) from None
    pixel_height = args.pixel_height if args.pixel_height is not None else _pixel_height(prediction_metadata)
    if pixel_height is not None and not 0 < pixel_height <= MAX_PIXEL_HEIGHT_UM:  # a file's tag: boundary errors in pixels only
        print(f"prediction {Path(args.prediction).name} records a pixel height of {pixel_height:g} µm; boundary errors in "
              "pixels only (--pixel-height to give the scan's own)", file=sys.stderr)
        pixel_height = None
    if prediction.shape != truth.shape:
        raise CommandError(f"prediction shape {prediction.shape} and truth shape {truth.shape} differ; they must be identical "
                           "(evaluate scores a prediction of the truth's whole stack)")
    for note in notes:
        print(note, file=sys.stderr)
    truth_values, predicted_values = set(), set()
    stack_prediction, stack_truth = stack_view(prediction), stack_view(truth)
    for block in slice_blocks(stack_truth.shape[0], stack_truth.shape[1] * stack_truth.shape[2]):
        truth_block, prediction_block = np.asarray(stack_truth[block]), np.asarray(stack_prediction[block])
        try:
            truth_values.update(find_class_values(truth_block))
        except LabelError as err:
            raise CommandError(_labels_named(err, "truth labels", args.truth)) from err
        try:
            predicted_values.update(find_class_values(prediction_block if ignore_value is None else
                                                      prediction_block[truth_block != ignore_value]))
        except LabelError as err:
            raise CommandError(f"prediction {Path(args.prediction).name}: {err} (a probability map? evaluate takes the labels file of predict)") from err
    class_values = sorted(v for v in truth_values if ignore_value is None or v != int(ignore_value))
    predicted_values = sorted(predicted_values)
    if ignore_value is not None and not class_values:
        raise CommandError(f"truth {Path(args.truth).name} has no annotated pixel (all are the ignore value {ignore_value})")
    if len(class_values) > MAX_CLASSES:  # an intensity image given as truth
        raise CommandError(f"truth {Path(args.truth).name} has {len(class_values)} distinct values: an image, not labels? "
                           f"(labels hold at most {MAX_CLASSES} class values)")
    if len(predicted_values) > MAX_CLASSES:  # an intensity image given as the prediction (arguments swapped?)
        raise CommandError(f"prediction {Path(args.prediction).name} has {len(predicted_values)} distinct values: an image, "
                           f"not labels? (evaluate takes the labels file of predict first, then the truth)")
    if np.dtype(prediction.dtype) == bool and not set(class_values) <= {0, 1}:  # a traceback before
        raise CommandError(f"prediction {Path(args.prediction).name} is a yes/no (1-bit) mask, but the truth's classes are "
                           f"{class_values}: save the prediction in the truth's values (as predict writes it)")
    unknown = sorted(set(predicted_values) - set(class_values))
    if unknown:
        print(f"prediction {Path(args.prediction).name} holds values {unknown[:5]}{' ...' if len(unknown) > 5 else ''} that are no class of the truth {class_values}; scored as wrong", file=sys.stderr)
    with warnings.catch_warnings():  # said above, with the values
        warnings.simplefilter("ignore", UnknownValuesWarning)
        if args.membrane is not None and args.membrane is not False and args.membrane not in class_values:
            raise CommandError(f"--membrane {args.membrane} is no class of the truth {class_values}")
        scores = evaluate(prediction, truth, class_values, args.membrane, ignore_value=ignore_value, pixel_height=pixel_height,
                          truth_values=truth_values)  # read above: evaluate reads the truth once more, for its scores
    if "boundary_error_um" in scores:
        scores["pixel_height_um"] = pixel_height
        if args.pixel_height is None:  # a file's tag can be wrong (circular-scan.tif says inches where it means mm)
            print(f"boundary errors in µm at {pixel_height:g} µm per row, the pixel height {Path(args.prediction).name} "
                  "records (--pixel-height to give the scan's own)", file=sys.stderr)
    print(json.dumps(scores, indent=1), flush=True)
    return 0


def cmd_demo(args) -> int:
    from ._tensorflow import load_tensorflow
    from .demo import run_demo

    if not str(args.output_dir).strip():  # Path("") is the current folder: the outputs landed there unannounced
        raise CommandError("--output-dir is empty; give a folder (it is created if it does not exist)")
    with _matplotlib_folder_of_its_own():  # Keras' import loads matplotlib
        load_tensorflow(quiet=True)  # with Keras' optional packages: the demo may open napari afterwards
        return run_demo(Path(args.output_dir), minutes=args.minutes, headless=args.headless, seed=args.seed,
                        written=args.written, no_xla=args.no_xla)


@contextlib.contextmanager
def _matplotlib_folder_of_its_own():
    """Within the block, matplotlib keeps its settings and font cache in a temporary folder removed at its end when it
    could not make its own (HOME read-only or unset, as in a container): it then made one in the temporary folder, said
    so in two warnings, and removed it at exit, which :func:`run`'s ``os._exit`` skips (a ``matplotlib-XXXX`` folder left
    in TMPDIR by every demo)."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules or _matplotlib_folders_writable():
        yield
        return
    folder = tempfile.mkdtemp(prefix="napari-unet-matplotlib-")
    os.environ["MPLCONFIGDIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("MPLCONFIGDIR") == folder:
            del os.environ["MPLCONFIGDIR"]


def _matplotlib_folders_writable() -> bool:
    """Whether matplotlib can make and write its configuration and cache folders (its own test, on Linux and FreeBSD,
    where they follow XDG; elsewhere assumed)."""
    if not sys.platform.startswith(("linux", "freebsd")):
        return True
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry
        return False
    for base, default in (("XDG_CONFIG_HOME", ".config"), ("XDG_CACHE_HOME", ".cache")):
        folder = Path(os.environ.get(base) or home / default, "matplotlib")
        try:
            folder = folder.resolve()
            folder.mkdir(parents=True, exist_ok=True)  # as matplotlib does
        except (OSError, RuntimeError):
            return False
        if not (os.access(folder, os.W_OK) and folder.is_dir()):
            return False
    return True


_REPLACED = "; it replaced the file of that name"  # outputs are written whole and atomically, never over an input
_REPLACED_STORE = "; it replaced the store of that name"


def _preset_summary(name: str) -> str:
    """One preset's network and training settings for ``train --help``, from :data:`config.PRESETS`."""
    from .config import PRESETS

    train = PRESETS[name].train
    return (f"{name} ({PRESETS[name].description}): {train.epochs} epochs of {train.steps_per_epoch} steps of "
            f"{train.batch_size} patches of {train.patch_size}², learning rate {train.learning_rate:g} ({train.lr_schedule})")


class _OneLineErrors(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as the commands' own (a 15-line usage block came first), and which
    takes no abbreviated options (a later option sharing the prefix would change what an old script means)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        import difflib

        wrong = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)$", message)
        message = re.sub(r"^argument \{[^}]*\}: invalid choice", "invalid command", message)  # (it listed them twice)
        if wrong:  # a mistyped command or choice: the closest one (argparse names them all)
            close = difflib.get_close_matches(wrong[1], [c.strip("'") for c in wrong[2].split(", ")], n=1)
            message += f"; did you mean {close[0]}?" if close else ""
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The streams and exit statuses of every command (``napari-unet --help``; README "Output and exit status").
EXIT_STATUS_HELP = """\
output:
  standard output carries only results, as one JSON document (train's validation
  scores, evaluate's scores, demo's scores); progress, notes, warnings and errors
  go to standard error

exit status:
  0         done (also a train stopped early by SIGUSR1 or by --max-minutes)
  1         failed: training diverged (its weights go to NAME.diverged.keras,
            never to the -o file), not enough memory, an I/O error
  2         bad usage or bad input, found before the work where it can be
            (also a full disk, or a trained model saved elsewhere than -o)
  130, 143, 129
            Ctrl-C (SIGINT), SIGTERM, SIGHUP: the command cleans up, says what it
            wrote, then dies of the signal (a shell shows 128 + its number, and
            stops a script or loop as after Ctrl-C)
SIGUSR1 (POSIX only) stops the training of train and demo after its current
step, which is then finished and saved (exit 0); the other commands note it and
go on.
"""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _OneLineErrors(
        prog="napari-unet", description=textwrap.fill("Train, apply and score U-Nets for EM and OCT segmentation. New here? "
                                                      "Start with: napari-unet demo", 79),
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"napari-unet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")

    train = sub.add_parser("train", help="train a U-Net on an image stack and its labels", description=textwrap.fill(
                           "Train a U-Net on an image stack and its labels (dense masks or sparse strokes) and write it as "
                           "one .keras file.", 79),
                           epilog="presets:\n" + "\n".join(textwrap.fill(_preset_summary(name), 79, initial_indent="  ",
                                                                           subsequent_indent="    ")
                                                             for name in ("default", "classic")),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # one paragraph per preset
    train.add_argument("image", help="TIFF image (Y, X) or stack (Z, Y, X), a folder of TIFF slices, or a zarr store")
    train.add_argument("labels", help="labels of the image's shape (TIFF, folder or zarr store; class values, e.g. 0/255)")
    train.add_argument("-o", "--output", required=True, help="model file to write (.keras)")
    train.add_argument("--preset", default="default", choices=["default", "classic"], help="network and training settings: "
                       "default (fast CPU U-Net) or classic (the original 64-filter U-Net); default: %(default)s")
    train.add_argument("--epochs", type=positive_int, help="epochs (default: the preset's, or unlimited with --max-minutes)")
    train.add_argument("--max-minutes", type=positive_float, help="time budget of the training steps (preparing the data before them and "
                       "finishing the model after them come on top); the learning-rate schedule follows it (default: none, "
                       "the epochs decide: --epochs or the preset's)")
    train.add_argument("--ignore-value", type=int, help="label value of unannotated pixels (sparse labels; default: the value the file records, as napari-unet saves it)")
    train.add_argument("--val-fraction", type=number_in(0, 1, "[)"), help="share of slices held out for validation (default 0.2; at most 16 slices of 512², 4 of 1024² or larger, "
                       "and a window of at least 1024² of slices larger than 1024²: validation predicts about 4.2 million pixels at most)")
    train.add_argument("--init", help="fine-tune this model file instead of starting from scratch")
    train.add_argument("--pixel-size", type=positive_float, nargs=2, metavar=("Y_UM", "X_UM"), help="pixel size in µm (Y, X) recorded in the model, for its notes on images of another pixel size (default: the size the image file records, if any)")
    train.add_argument("--seed", type=non_negative_int, default=0, help="random seed of weights, patches and augmentation "
                       "(the same seed and settings train the same model on the same machine); default: %(default)s")
    train.add_argument("--float32", action="store_true", help="compute in float32 also on CPUs with bfloat16 instructions (default: bfloat16 there)")
    train.add_argument("--no-xla", action="store_true", help="do not compile the network with XLA, for a TensorFlow whose XLA fails (default: XLA on CUDA and ROCm "
                       "GPUs and on float32 CPUs without AVX-512, for runs long enough to repay the compile time)")
    train.add_argument("--batch-size", type=positive_int, help="patches per training step (default: the preset's)")
    train.add_argument("--patch-size", type=positive_int, help="side in pixels of the square training patches, a multiple of "
                       "2 to the power depth (default: the preset's)")
    train.add_argument("--learning-rate", type=number_in(0, 1, "()"), help="Adam's learning rate, between 0 and 1 (default: the preset's)")
    train.add_argument("--steps-per-epoch", type=positive_int, help="training steps between two validations (default: the preset's)")
    train.add_argument("--augment-noise", type=or_auto(noise_std), metavar="STD|auto", help="Gaussian pixel noise added to each training patch, its std "
                       "drawn from [0, STD) in units of the normalised range; 0 = off (default: the preset's; the default preset's "
                       "auto adds 0.1 for --max-minutes 30 or more)")
    train.add_argument("--rotations", choices=("auto", "on", "off"), help="augment with 90-degree turns of the patches (default auto: on, "
                       "off for labels layered top to bottom such as OCT layers, whose network must learn which way is up; "
                       "predict's test-time augmentation then keeps tiles upright too)")
    train.add_argument("--merge-levels", type=or_auto(merge_levels), metavar="L1,L2,...|auto", help="levels at which the membrane rule may "
                       "merge regions across faint boundaries, picked on the validation slices (default auto: 0.5,0.6, and "
                       "0.5,0.6,0.7 for --max-minutes 30 or more; predict with test-time augmentation merges at 0.65 at most)")
    train.add_argument("--depth", type=whole_number_in(1, 6), help="poolings of the U-Net, 1-6 (default: the preset's; the default preset takes 5 "
                       "for --max-minutes 30 or more on a GPU or with AMX bfloat16, else 4)")
    train.add_argument("--context-slices", type=whole_number_in(0, 3), help="neighbouring slices on each side the network also sees, 0..3 (default: the preset's)")
    train.add_argument("--local-contrast", type=number_in(0, 1000), metavar="SIGMA", help="standardise the input by its Gaussian neighbourhood of SIGMA pixels; 0 = off (default: the preset's)")
    train.set_defaults(func=cmd_train)

    pred = sub.add_parser("predict", help="predict labels for an image stack", description="Predict labels for an image "
                          "stack with a model file, in the class values of the labels it was trained on, tile by tile (any "
                          "image size; zarr outputs slice by slice for stacks larger than memory).")
    pred.add_argument("model", help="model file (.keras) written by napari-unet train")
    pred.add_argument("image", help="TIFF image or stack, a folder of TIFF slices, or a zarr store (.zarr)")
    pred.add_argument("-o", "--output", required=True, help="labels TIFF or zarr store (.zarr, written chunk by chunk) to write (the training labels' values)")
    pred.add_argument("--probabilities", help="also write per-class probabilities (float32 TIFF or zarr store like -o, axes ZCYX; TCYX for a time series, CYX for one image)")
    pred.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default="auto",
        help="test-time augmentation: average the network over the four 90-degree rotations of each tile "
        "(a tile that is not square: the tile, its half turn and their mirror images; a model trained without rotations, "
        "e.g. on OCT layers: the tile and its mirror image) "
        "(default: on with a GPU, a CPU with AMX or one whose bfloat16 convolutions are as fast (AMD Zen 5), where it costs ~1.5x the time; off elsewhere)",
    )
    pred.add_argument(
        "--tta-views", type=int, choices=(1, 2, 4),
        help="network passes per tile, overriding --tta: 4 = the 90-degree rotations, 2 = the tile and its half turn "
        "(on ISBI two thirds of the accuracy gain of 4 for about half their time), 1 = no test-time augmentation; a model "
        "trained without rotations (OCT layers) has at most 2: the tile and its mirror image (1 if it was trained without flips)",
    )
    pred.add_argument("--pixel-size", type=positive_float, nargs=2, metavar=("Y_UM", "X_UM"), help="the image's pixel size in µm (Y, X), compared with the model's and written to the outputs (default: the size the image file records, if any)")
    pred.add_argument("--float32", action="store_true", help="compute in float32 also on CPUs with bfloat16 instructions (default: bfloat16 there)")
    pred.add_argument("--no-xla", action="store_true", help="do not compile the network with XLA, for a TensorFlow whose XLA fails (default: XLA on CUDA and ROCm "
                      "GPUs and on float32 CPUs without AVX-512, for runs long enough to repay the compile time)")
    rule = pred.add_mutually_exclusive_group()
    rule.add_argument(
        "--close-boundaries", action="store_true",
        help="always close gaps in thin boundaries (EM membranes): watershed regions merged across faint "
        "boundaries keep their borders, membrane specks far from them become cell; by default the model's membrane rule (chosen on its validation "
        "slices after training) is used",
    )
    rule.add_argument("--argmax", action="store_true", help="plain most-probable-class labels, no membrane rule (EM membranes) or layer order (OCT layers)")
    pred.add_argument("--tile-size", type=positive_int, default=512, help="tile side in pixels (default 512)")
    pred.add_argument("--batch-size", type=positive_int, default=2, help="tiles (or their TTA copies) per network call (default 2)")
    pred.add_argument("--slices-per-chunk", type=positive_int, help="zarr outputs: slices per task (default: a zarr image's own "
                      "chunks along Z, else 8, cut to 256 MiB of input per task); the stores written have one chunk per slice")
    pred.add_argument("--scheduler", metavar="ADDRESS", help="zarr outputs: compute the chunks on the dask.distributed cluster whose "
                      "scheduler listens at ADDRESS (e.g. tcp://10.0.0.5:8786); the model, image and outputs must be at paths every "
                      "worker reads and writes (a shared file system)")
    pred.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="score predicted labels against ground truth (prints JSON)", description="Score "
                        "predicted labels against true labels of the same shape and print the scores as JSON: pixel error, "
                        "Dice and IoU per class, the ISBI 2012 scores (V_rand, V_info) of masks with membranes, and boundary errors "
                        "of layered labels (retinal OCT).")
    ev.add_argument("prediction", help="predicted labels (TIFF, folder of slices or zarr store)")
    ev.add_argument("truth", help="true labels of the same shape (TIFF, folder of slices or zarr store)")
    ev.add_argument("--ignore-value", type=int, help="truth value of unannotated pixels (default: the value the file records)")
    ev.add_argument("--pixel-height", type=positive_float, metavar="MICRONS", help="pixel size along Y in µm: layered labels "
                    "(retinal OCT layers) also get their boundary errors in µm (default: the Y pixel size the prediction file "
                    "records in µm, as predict copies it from the image; without one, boundary errors are in pixels only; train and "
                    "predict take --pixel-size Y_UM X_UM)")
    ev.add_argument("--membrane", type=_membrane_choice, metavar="VALUE|none", help="the truth's membrane class for the ISBI "
                    "scores (V_rand, V_info): default the rarer of two classes (ISBI: 0, membranes); 'none' for masks that "
                    "have no membranes (a band of one OCT layer, blobs): no ISBI scores")
    ev.set_defaults(func=cmd_evaluate)

    demo = sub.add_parser("demo", help="train and predict on embedded synthetic EM data, write a figure", description="Generate "
                          "a synthetic EM stack, train on it, predict its held-out slices, print the scores and write a figure, "
                          "the model and the data; with a display, open them in napari.")
    demo.add_argument("--output-dir", default="napari-unet-demo", help="folder for the demo's files; default: %(default)s")
    demo.add_argument("--minutes", "--max-minutes", dest="minutes", type=positive_float, default=1.0, help="training budget in minutes (as train's --max-minutes); default: %(default)s")
    demo.add_argument("--headless", action="store_true", help="do not open napari")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the synthetic data and the training; default: %(default)s")
    demo.add_argument("--no-xla", action="store_true", help="train and predict without XLA, as train's and predict's --no-xla")
    demo.set_defaults(func=cmd_demo)
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # "required: command" named none of them
    parser.commands = sub.choices  # the commands' parsers, which tell their unrecognized arguments
    return parser


def _unrecognized(command: argparse.ArgumentParser, extra: list) -> None:
    """The usage error of ``command`` for the arguments ``extra`` it does not take, with the option closest to the first
    one typed (not --argmax for --no-argmax)."""
    import difflib

    typed = next((word.split("=")[0] for word in extra if word.startswith("-")), None)
    options = [o for a in command._actions for o in a.option_strings]
    close = difflib.get_close_matches(typed, options, n=1) if typed else []
    hint = f"; did you mean {close[0]}?" if close and typed != "--no-" + close[0].lstrip("-") else ""
    if typed in options:  # typed before the command, where only --help is taken
        hint = f"; {typed} goes after the command ({command.prog} ... {typed})"
    command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")


def _encodes(stream, text: str) -> bool:
    """Whether ``stream`` can write ``text`` (True for streams that do not say their encoding)."""
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def main(argv=None) -> int:
    if not _encodes(sys.stdout, "µ²"):  # the help's µm and 512²: a cp932 console or a pipe on Windows crashed on them
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # told by the command's parser: the top-level help lists none of its options
        _unrecognized(parser.commands[args.command], extra)
    args.written = []  # files a command finished, named if it is interrupted later
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    del _ENDED_BY[:]
    previous: dict = {}  # the SIGTERM and SIGHUP handlers replaced, restored in the finally
    usr1 = contextlib.ExitStack()
    streams = sys.stdout, sys.stderr
    stdout_closed = sys.stdout is None or 1 in _standard_descriptors_open()
    sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    try:  # (the handlers installed inside it: a SIGTERM right after its installation is a _Terminated handled below)
        _stop_on_sigterm(previous)
        usr1.enter_context(_usr1_handled(trains=args.command in ("train", "demo")))  # (it killed the commands outside training)
        if stdout_closed and args.command != "predict":  # (``>&-``: the JSON was written nowhere, exit 0)
            if args.command == "evaluate":  # its output is its result: not worth computing
                print("napari-unet: error: standard output is closed (>&-): evaluate prints its scores there; nothing was "
                      "scored", file=sys.stderr)
                return 1
            print(f"note: standard output is closed (>&-): the scores {args.command} prints there are lost", file=sys.stderr)
        if args.command in ("train", "predict", "demo"):
            _check_temporary_folder()
        with _low_memory_one_line():  # every subcommand's: a file's read (tiff_io), the training data's, the demo's
            code = args.func(args)
        sys.stdout.flush()  # a buffered stdout (a file, a pipe) fails here, if at all
        lost = sys.stdout.failed  # (stderr's progress lines are dropped: the run goes on, and nothing could say it)
        if lost is not None:
            what = "the scores" if args.command == "evaluate" else "the last lines"
            print(f"napari-unet: {'error' if args.command == 'evaluate' else 'note'}: could not write {what} to standard "
                  f"output ({lost.strerror or lost})" + (f"; {', '.join(map(str, args.written))} written" if args.written else ""),
                  file=sys.stderr)
            if args.command == "evaluate":  # its output is its result
                return 1
        return code
    except KeyboardInterrupt as stop:
        done = ", ".join(str(p) for p in args.written)
        how = "terminated" if isinstance(stop, _Terminated) else "interrupted"
        wrote = f"{done} {'were' if len(args.written) > 1 else 'was'} written" if done else "no output file was written"
        if args.command == "evaluate":  # it writes no files
            wrote = "no scores were printed"
        print(f"napari-unet: {how}; {wrote}", file=sys.stderr)
        _ENDED_BY.append(stop.signum if isinstance(stop, _Terminated) else signal.SIGINT)  # run() dies of it
        return 128 + stop.signum if isinstance(stop, _Terminated) else EXIT_INTERRUPTED
    except _bad_input_errors() as err:
        print(f"napari-unet: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        if err.errno not in DISK_FULL:
            print(f"napari-unet: error: {str(err) or type(err).__name__}{_predicted_nothing(args)}", file=sys.stderr)
            return 1
        output = getattr(args, "output", None)  # a zarr chunk's write may name no file
        target = err.filename or output or "an output"
        where = Path(err.filename).parent if err.filename else Path(output).parent if output else Path.cwd()
        print(f"napari-unet: error: cannot write {target}: {_disk_full(where, err)}{_predicted_nothing(args)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutOfAddressSpace as err:
        print(f"napari-unet: error: {err}{_predicted_nothing(args)}", file=sys.stderr)
        return 1
    except MemoryError as err:  # too big a stack
        advice = {
            "train": "training holds the whole stack in memory, several float32 copies of it: train on a crop or on "
                     "fewer slices (the model then predicts the whole stack)",
            "predict": "predict holds a whole slice, several float32 copies of it (probabilities, the membrane rule): "
                       "cut very large sections into smaller images, or --argmax (no membrane rule)",
        }.get(args.command, "")
        advice = _written_before_running_out(args) or advice  # the command's data fitted: not that advice
        print(f"napari-unet: error: not enough memory ({str(err) or type(err).__name__}){'; ' + advice if advice else ''}"
              f"{_predicted_nothing(args)}", file=sys.stderr)
        return 1
    except FloatingPointError as err:  # diverged training
        print(f"napari-unet: error: {str(err) or type(err).__name__}", file=sys.stderr)
        return 1
    except Exception as err:
        if type(err).__name__ != "ResourceExhaustedError":
            raise
        from .hardware import out_of_memory_line
        advice = {"train": "; lower --batch-size or --patch-size", "predict": "; lower --batch-size or --tile-size"}.get(args.command, "")
        advice = "; " + _written_before_running_out(args) if args.written else advice
        print(f"napari-unet: error: not enough memory for TensorFlow ({out_of_memory_line(err)}){advice}{_predicted_nothing(args)}",
              file=sys.stderr)
        return 1
    finally:
        late = _defer_signals(previous)  # a SIGTERM or SIGHUP during the clean-up: acted on after it, no traceback
        try:
            for stream in (sys.stdout, sys.stderr):  # text still buffered for a pipe meets a closed one here, if at all
                stream.flush()
                stream.close_own()
        finally:
            sys.stdout, sys.stderr = streams
            for number, handler in previous.items():
                signal.signal(number, handler)
            usr1.close()
            if late:  # the command is over, its files complete: the signal's own action (run(): dies of it, 143, 129)
                signal.raise_signal(late[0])


#: The signal (SIGINT, SIGTERM, SIGHUP) that ended the last :func:`main`, after its clean-up: :func:`run` dies of it.
_ENDED_BY: list = []


def _predicted_nothing(args) -> str:
    """For ``predict`` ended by a lack of memory or a write's error once the prediction began (its outputs are written
    all or none, after the prediction): :func:`_nothing_written`; "" before it began (the image's header unreadable:
    as its other refusals there, nothing of outputs) and for other commands, which say it their way."""
    return _nothing_written(args) if args.command == "predict" and getattr(args, "started", False) else ""


def _written_before_running_out(args) -> str:
    """The files a command that ran out of memory had written, "" for none: ``train`` runs out after its model file is
    written only while scoring the validation (predict with test-time augmentation), and said nothing of the file."""
    if not args.written:
        return ""
    text = f"{', '.join(map(str, args.written))} {'was' if len(args.written) == 1 else 'were'} written before it ran out"
    if args.command == "train":
        text += (": the model is complete, only scoring its validation needed more (napari-unet predict, with a lower "
                 "--tile-size or --no-tta, and napari-unet evaluate score it)")
    return text


def _check_temporary_folder() -> None:
    """:class:`CommandError` when no temporary folder can be written (a read-only container): TensorFlow's import needs
    one, and failed with "No usable temporary directory found" and exit 1."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError as err:
        raise CommandError(f"no writable temporary folder ({err.strerror or err}): set TMPDIR to a writable folder, "
                           "e.g. TMPDIR=$PWD") from None


def _standard_descriptors_open() -> list:
    """Point closed descriptors 0-2 (``2>&-``, a daemon) at /dev/null: else the next file opened gets one of them, and
    TensorFlow's log lines or a print would be written into it (a model or an image). Returns those that were closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
    return closed


class _ReaderMayLeave:
    """A command's stdout or stderr whose reader may exit first (``napari-unet evaluate ... | head -3``), or that cannot
    be written (a log on a full disk, a closed stream): the rest of the output is dropped and the command goes on, so a
    training still writes its model, instead of failing with "Broken pipe" or no message. ``failed``: the error of a
    stream that could not be written (not a reader that left), else None."""

    def __init__(self, stream):
        self._own = stream is None  # closed: written nowhere, as Python's print does
        self._stream = open(os.devnull, "w", encoding="utf-8") if self._own else stream
        self.reader_left = False
        self.failed = None

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return self._stream.write(text)
            except OSError as err:
                self._failed(err)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self._stream.flush()
            except OSError as err:
                self._failed(err)

    def _failed(self, err: OSError) -> None:
        if not isinstance(err, BrokenPipeError):  # (a reader that left is no failure)
            self.failed = err
        self._drop_the_rest()

    def close_own(self) -> None:
        """Close the stream made for a closed one."""
        if self._own:
            self._stream.close()

    def _drop_the_rest(self) -> None:
        self.reader_left = True
        # Text still buffered would raise again when Python flushes the stream at exit: its descriptor now writes nowhere.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor (a test's captured stdout)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name):
        if name == "_stream":  # not set yet (a copy being made): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self._stream, name)


def _say_stopping(signum: int, saving: bool = False) -> None:
    """Say that an interrupt takes effect at the end of the current step or tile, or (``saving``) once the finished
    model is saved (written to the descriptor: a handler may run while the progress line is being written)."""
    when = "once the finished model is saved" if saving else "at the end of the current step or tile"
    text = (f"terminating {when}" if signum != signal.SIGINT else
            f"stopping {when}; press Ctrl-C again to stop at once")
    _notice(text)


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be: the same clean-up, its own exit status (128 + ``signum``)."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def _stop_on_sigterm(previous: dict) -> None:
    """Make SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit) and SIGHUP (the terminal closed; not where
    ignored, as under ``nohup``) interrupt like Ctrl-C, so a command cleans up (partial stores) and names what it wrote,
    exiting with 128 + the signal's number (143, 129). Each handler replaced goes into ``previous`` before it is
    (a signal right after the replacement finds it there to restore); none off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise _Terminated(signum)

    hangup = getattr(signal, "SIGHUP", None)  # (not on Windows)
    numbers = [signal.SIGTERM] + ([hangup] if hangup is not None and signal.getsignal(hangup) is signal.SIG_DFL else [])
    for number in numbers:
        previous[number] = signal.getsignal(number)
        signal.signal(number, interrupt)


def _defer_signals(previous: dict) -> list:
    """Make the signals whose handlers ``previous`` holds (SIGTERM, SIGHUP) only be recorded, in the list returned,
    until their handlers are restored: they come after the command, in its clean-up."""
    late: list = []
    for number in previous:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(number, lambda signum, frame: late.append(signum))
    return late


def run() -> None:
    """Console-script entry point: :func:`main`, then exit at once.

    After a command its files are written (atomically) and closed; the interpreter's teardown of
    TensorFlow's modules and thread pools would only add ~1.4 s to every command (BENCHMARKS.md).
    A command ended by SIGINT, SIGTERM or SIGHUP dies of that signal after its clean-up (a shell still reports 130, 143,
    129): a shell running a script or loop stops it only when its command died of Ctrl-C, and went on to the next
    command after the exit status 130 (bash's "wait and cooperative exit"; Python itself dies of SIGINT after an
    unhandled KeyboardInterrupt).
    """
    del _ENDED_BY[:]  # (an earlier main's, in the same process)
    code = main()
    if hasattr(signal, "SIGUSR1"):  # main() restored its default, which killed the process on its way out (138)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed (None), or a full disk: told already
            stream.flush()
    # (not on Windows, which has no such deaths: os.kill ends a process with the number as its status)
    if _ENDED_BY and code == 128 + _ENDED_BY[-1] and os.name == "posix":
        _die_of(_ENDED_BY[-1])
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    os._exit(code)


def _die_of(signum: int) -> None:
    """End the process by the signal ``signum`` with its default action (returns if it is blocked or ignored)."""
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signum, signal.SIG_DFL)
        if hasattr(signal, "pthread_sigmask"):  # (blocked by a parent: as exiting)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the signal is delivered on the way out of os.kill, at the latest here


if __name__ == "__main__":  # python -m napari_unet.cli: the package's module, whose errors demo.py raises (a traceback)
    from . import cli as package_cli

    package_cli.run()
