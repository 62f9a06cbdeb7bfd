"""What this machine computes fast, and the compute settings that ``"auto"`` resolves to.

Measured (BENCHMARKS.md): bfloat16 mixed precision without XLA trains the default U-Net 1.7x faster than
float32 with XLA on a CPU with AMX, 1.5-1.6x on one with AVX512-BF16 but no AMX (AMD Zen 4 and Zen 5), and XLA is
slower than TensorFlow's oneDNN kernels once the CPU has AVX-512; on a CPU with AVX2 only, bfloat16 is 8-12x slower
and XLA is 6-14 % faster. TensorFlow is imported only to ask for a GPU (and whether XLA compiles for it) or, on an
AVX512-BF16 CPU without AMX, to time its bfloat16 convolutions (:func:`bfloat16_conv_gflops`): the network is 2.2x
faster on AMD Zen 5 than on Zen 4, which the flags do not tell apart.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import sys
import time
from fractions import Fraction
from typing import NamedTuple, Optional, Union

AUTO = "auto"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags Linux reports (``/proc/cpuinfo``); empty when unknown."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def has_gpu() -> bool:
    """True when TensorFlow sees a GPU (asked once per process).

    Loads TensorFlow through :func:`napari_unet._tensorflow.load_tensorflow` if nothing has yet: a plain
    ``import tensorflow`` after napari's OpenGL canvas can crash (a GUI may ask on its own thread).
    """
    from ._tensorflow import load_tensorflow

    return bool(load_tensorflow().config.list_physical_devices("GPU"))


def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bfloat16 matrix units (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


#: bfloat16 3x3 convolutions at or above this rate (:func:`bfloat16_conv_gflops`) make the network cheap enough
#: for test-time augmentation by default, as with AMX. Measured on 2 cores: AMD Zen 5 760-800 (430 with the other
#: core busy); AMD Zen 4 runs the whole network 2.2x slower than Zen 5 (about 350; BENCHMARKS.md, session 32).
FAST_CONV_GFLOPS = 500.0


@functools.lru_cache(maxsize=1)
def bfloat16_conv_gflops() -> float:
    """Measured rate of a bfloat16 3x3 convolution (64 -> 64 channels, 2 x 128 x 128) in TensorFlow, GFLOP/s.

    About 0.2-0.3 s, once per process (imports TensorFlow if nothing has); the best of five timings, so that a
    moment of load elsewhere does not count.
    """
    from ._tensorflow import load_tensorflow

    tf = load_tensorflow()
    with tf.device("/CPU:0"):
        images = tf.cast(tf.random.stateless_uniform((2, 128, 128, 64), seed=(1, 2)), tf.bfloat16)
        kernel = tf.cast(tf.random.stateless_uniform((3, 3, 64, 64), seed=(3, 4)), tf.bfloat16)
        flop = 2.0 * 9 * 64 * 64 * 128 * 128 * 2
        repeats = 4
        best = float("inf")
        for round_ in range(6):  # the first round warms oneDNN's kernel cache up
            start = time.perf_counter()
            for _ in range(repeats):
                output = tf.nn.conv2d(images, kernel, strides=1, padding="SAME")
            output.numpy()
            if round_:
                best = min(best, time.perf_counter() - start)
    return flop * repeats / best / 1e9


def cpu_has_fast_matrix_units() -> bool:
    """True on a CPU with AMX, or with AVX512-BF16 whose bfloat16 convolutions reach :data:`FAST_CONV_GFLOPS`.

    Only the second case imports TensorFlow (to time them).
    """
    return cpu_has_amx() or (cpu_has_fast_bfloat16() and bfloat16_conv_gflops() >= FAST_CONV_GFLOPS)


def has_fast_bfloat16() -> bool:
    """True on a GPU or a CPU with bfloat16 instructions; also True when the CPU is unknown (no warning then)."""
    return has_gpu() or cpu_has_fast_bfloat16() or not cpu_flags()


def _explicit(name: str, value: Union[bool, str]) -> Optional[bool]:
    """None for ``"auto"``, else the boolean setting (numpy booleans too); anything else is a ValueError."""
    if value == AUTO:
        return None
    if value in (True, False):
        return bool(value)
    raise ValueError(f"{name} must be True, False or 'auto', got {value!r}")


def resolve_mixed_precision(value: Union[bool, str]) -> bool:
    """``"auto"``: bfloat16 compute on a CPU with bfloat16 instructions (no GPU); booleans pass through."""
    explicit = _explicit("mixed_precision", value)
    return (cpu_has_fast_bfloat16() and not has_gpu()) if explicit is None else explicit


@functools.lru_cache(maxsize=1)
def gpu_has_xla() -> bool:
    """True when TensorFlow is built for CUDA or ROCm GPUs, which XLA compiles for (imports TensorFlow).

    A GPU TensorFlow sees otherwise is a plug-in device (Apple's tensorflow-metal, DirectML) without an XLA compiler:
    ``jit_compile=True`` fails there ("could not find registered compiler for platform"), and Keras' own ``"auto"``
    leaves XLA off on Apple's GPUs.
    """
    from ._tensorflow import load_tensorflow

    return bool(load_tensorflow().test.is_built_with_gpu_support())


def resolve_jit_compile(value: Union[bool, str], mixed_precision: bool) -> bool:
    """``"auto"``: XLA on CUDA and ROCm GPUs (:func:`gpu_has_xla`; not on other GPUs, where the network runs too) and
    on float32 CPUs without AVX-512 (where it was measured to pay)."""
    explicit = _explicit("jit_compile", value)
    if explicit is not None:
        return explicit
    if has_gpu():
        return gpu_has_xla()
    return not mixed_precision and "avx512f" not in cpu_flags()


def resolve_tta(value: Union[bool, str]) -> bool:
    """``"auto"``: test-time augmentation where the network is cheap: on a GPU or a CPU with fast matrix units.

    See :func:`cpu_has_fast_matrix_units` (AMX, or AVX512-BF16 as fast as AMD Zen 5's). On ISBI it lowered the
    pixel error of 8 of 8 models and raised V_rand and V_info on 7 of 8 (BENCHMARKS.md), for four network passes
    per tile: 1.5x the time of ``napari-unet predict`` with AMX (30 test slices in 12 s) and 1.6x on AMD Zen 5
    (11 s; V_rand +0.006 and V_info +0.002 on three models there); 1.7x on AMD Zen 4 (24 s instead of 14 s) and
    2.3x with AVX2 only, where it stays off.
    """
    explicit = _explicit("tta", value)
    # AMX first (no TensorFlow needed), then a GPU (no convolutions timed on a CPU that will not run the network)
    return (cpu_has_amx() or has_gpu() or cpu_has_fast_matrix_units()) if explicit is None else explicit


DEEP_BUDGET_MINUTES = 30.0


def resolve_depth(value: Union[int, str], max_minutes: Optional[float], mixed_precision: Union[bool, str] = AUTO) -> int:
    """``"auto"``: the default preset's poolings for a time budget; an int passes through.

    ``mixed_precision`` is the training's setting (``"auto"`` or a bool). Budgets under 30 minutes, and any budget
    with ``"auto"`` or bfloat16 precision on a CPU with AMX, resolve without asking TensorFlow for a GPU.

    5 when the budget is at least 30 minutes on a GPU or with bfloat16 on AMX (about 3700 steps), else 4.
    On ISBI with an AMX CPU, 30 minutes at depth 5 gave V_rand 0.977 / 0.971 / 0.957 on three seeds against
    0.957 / 0.962 / 0.962 at depth 4; 10 minutes (about 1200 steps, also what an AVX2 CPU makes in 30) scored
    V_rand 0.955 at depth 5 against 0.956, V_info 0.978 against 0.980 (BENCHMARKS.md, session 25). On an AVX512-BF16
    CPU without AMX (about 2600 steps in 30 minutes) four paired seeds gave depth 4 the better means, V_rand 0.946
    against 0.936 and V_info 0.975 against 0.973, as ``predict`` runs there (no TTA; sessions 26-28).
    """
    if value != AUTO:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise ValueError(f"depth must be an int or 'auto', got {value!r}")
        return operator.index(value)
    depth = auto_depth_without_gpu_query(max_minutes, mixed_precision)
    return depth if depth is not None else (5 if has_gpu() else 4)


def auto_depth_without_gpu_query(max_minutes: Optional[float], mixed_precision: Union[bool, str] = AUTO) -> Optional[int]:
    """The auto depth of :func:`resolve_depth` when it does not hang on a GPU, else None (nothing imported).

    A GUI resolves the depth with this on its own thread and leaves the None case to its worker: asking for a GPU
    imports TensorFlow (seconds).
    """
    if max_minutes is None or max_minutes < DEEP_BUDGET_MINUTES:
        return 4
    if cpu_has_amx() and (mixed_precision == AUTO or mixed_precision is True):
        return 5  # bfloat16 on AMX matrix units ("auto" computes so here unless there is a GPU, which gets 5 too)
    return None


def explain_auto_tta() -> str:
    """What ``tta="auto"`` does on this machine and why, e.g. "off: this CPU has no AMX matrix units".

    Asks TensorFlow for a GPU, or times bfloat16 convolutions, only when it is already imported, so a GUI can
    call this at start-up.
    """
    if cpu_has_amx():
        return "on: this CPU has AMX matrix units"
    timed = cpu_has_fast_bfloat16()  # no AMX: cpu_has_fast_matrix_units times the convolutions
    if "tensorflow" not in sys.modules:
        if timed:
            return f"on with a GPU or where bfloat16 convolutions reach {FAST_CONV_GFLOPS:g} GFLOP/s (timed when a model runs)"
        return "off: this CPU has no AMX matrix units (on with a GPU)"
    if has_gpu():
        return "on: TensorFlow uses a GPU"
    if timed:
        fast = cpu_has_fast_matrix_units()
        rate = f"{bfloat16_conv_gflops():.0f} GFLOP/s here ({'>=' if fast else '<'} {FAST_CONV_GFLOPS:g})"
        return f"{'on' if fast else 'off'}: bfloat16 convolutions at {rate}"
    return "off: this CPU has no AMX matrix units and TensorFlow sees no GPU"


# ------------------------------------------------------------------------------------------------ memory
#
# The memory policy of reading data (tiff_io, zarr_io, the napari reader), also of what a training holds (its data and
# network together, train.check_training_memory) and of the inference widget's output layers
# (predict.check_layer_memory):
#
# * Capacity (:func:`memory_capacity`): the machine's memory and swap, or a container's / batch job's memory cgroup
#   limit (and its swap) when lower. Data larger than that can never be held: reading them whole is refused before
#   anything is allocated (:func:`memory_excess`). A header of a few KB declaring terabytes lands here.
# * Physical memory (:func:`physical_memory`): the same without swap. Memory every step of a loop touches (a training
#   network's weights, optimizer state and activations) must fit in it, or each step pages it in and out: a training
#   network beyond it is refused (train.check_training_memory), though it may fit with swap; not on a GPU (it lives
#   in the GPU's memory).
# * Available now (:func:`available_memory_bytes`): what the system can give without swapping, which rises and falls
#   with other programs. Data over :data:`MEMORY_SHARE` of it (:func:`memory_shortfall`) are read lazily where the
#   caller allows it, else read anyway with a warning (:class:`LowMemoryWarning`): never refused for this alone.
# * Unknown figures (no /proc, no psutil) never refuse nor warn.

#: Share of the memory available now that one array read whole may take without a warning (or that makes a read
#: lazy where the caller allows): the rest is for what follows (label detection, napari's display copy, the network)
#: and for other programs.
MEMORY_SHARE = 0.75


class LowMemoryWarning(UserWarning):
    """Data are read whole although they take more than :data:`MEMORY_SHARE` of the memory available now."""


class MemoryCapacity(NamedTuple):
    """Bytes this process could ever hold (memory and swap), and what they are, for a message: "this machine's memory
    and swap" or "the memory limit of this container or job"."""

    bytes: int
    what: str


class _CgroupMemory(NamedTuple):
    limit: int  # bytes of memory the cgroup may use
    swap: Optional[int]  # bytes of swap it may use besides (None: as much as the system has)
    left: int  # limit minus the memory in use (reclaimable file cache not counted)


def _meminfo(path: str) -> Optional[dict]:
    """``/proc/meminfo``'s fields in bytes, or None if it cannot be read (not Linux)."""
    try:
        with open(path) as fh:
            fields = {}
            for line in fh:
                name, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
            return fields
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _psutil_memory() -> Optional[tuple]:
    """(available, total, swap total) from psutil (Windows, macOS), or None without it."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        try:
            swap = int(psutil.swap_memory().total)
        except Exception:  # (swap unknown: count none)
            swap = 0
        return int(memory.available), int(memory.total), swap
    except Exception:
        return None


def available_memory_bytes(meminfo: str = "/proc/meminfo", proc_cgroup: str = "/proc/self/cgroup",
                           cgroup_root: str = "/sys/fs/cgroup") -> Optional[int]:
    """Memory the system can give this process now, or None if unknown: Linux ``MemAvailable``, lowered to what the
    process's memory cgroup (a container's or a batch job's limit) has left, its reclaimable file cache counted as
    free (:func:`_cgroup_memory_left`); elsewhere psutil's ``available`` (Windows, macOS)."""
    fields = _meminfo(meminfo)
    if fields is not None and "MemAvailable" in fields:
        available = fields["MemAvailable"]
    else:
        measured = _psutil_memory()
        if measured is None:
            return None
        available = measured[0]
    left = _cgroup_memory_left(proc_cgroup, cgroup_root)
    return available if left is None else min(available, left)


def _machine_memory(meminfo: str) -> Optional[tuple]:
    """(memory, swap) bytes of the machine: Linux ``MemTotal`` and ``SwapTotal``, elsewhere psutil's; None if unknown."""
    fields = _meminfo(meminfo)
    if fields is not None and "MemTotal" in fields:
        return fields["MemTotal"], fields.get("SwapTotal", 0)
    measured = _psutil_memory()
    return None if measured is None else (measured[1], measured[2])


def memory_capacity(meminfo: str = "/proc/meminfo", proc_cgroup: str = "/proc/self/cgroup",
                    cgroup_root: str = "/sys/fs/cgroup") -> Optional[MemoryCapacity]:
    """The most memory this process could ever hold, or None if unknown: the machine's memory and swap (Linux
    ``MemTotal`` + ``SwapTotal``, elsewhere psutil's), lowered to the memory cgroup's limit and swap limit."""
    machine = _machine_memory(meminfo)
    if machine is None:
        return None
    total, swap = machine
    capacity = MemoryCapacity(total + swap, "this machine's memory and swap" if swap else "this machine's memory")
    cgroup = _cgroup_memory(proc_cgroup, cgroup_root)
    if cgroup is not None:
        cgroup_swap = swap if cgroup.swap is None else min(cgroup.swap, swap)
        if cgroup.limit + cgroup_swap < capacity.bytes:
            what = "the memory limit of this container or job" + (" and its swap" if cgroup_swap else "")
            capacity = MemoryCapacity(cgroup.limit + cgroup_swap, what)
    return capacity


def physical_memory(meminfo: str = "/proc/meminfo", proc_cgroup: str = "/proc/self/cgroup",
                    cgroup_root: str = "/sys/fs/cgroup") -> Optional[MemoryCapacity]:
    """The most memory this process could hold without swapping, or None if unknown: the machine's memory (Linux
    ``MemTotal``, elsewhere psutil's total), lowered to the memory cgroup's limit (its swap not counted)."""
    machine = _machine_memory(meminfo)
    if machine is None:
        return None
    total = machine[0]
    cgroup = _cgroup_memory(proc_cgroup, cgroup_root)
    if cgroup is not None and cgroup.limit < total:
        return MemoryCapacity(cgroup.limit, "the memory limit of this container or job")
    return MemoryCapacity(total, "this machine's memory")


def size_text(n: int) -> str:
    """``n`` bytes as "3.2 GB", "640 KB", "20.0 TB" (binary multiples, as the memory messages elsewhere)."""
    for unit, power in (("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10)):
        if n >= 2**power:
            return f"{n / 2**power:.1f} {unit}" if n < 2**power * 100 else f"{round(n / 2**power)} {unit}"
    return f"{n} bytes"


def _share_text() -> str:
    share = Fraction(MEMORY_SHARE).limit_denominator(10)
    return "all" if share == 1 else f"{share.numerator}/{share.denominator}"


def memory_shortfall(n_bytes_needed: int) -> Optional[str]:
    """None if ``n_bytes_needed`` bytes fit in :data:`MEMORY_SHARE` of the memory available now (or that is unknown),
    else "needs 40.0 MB of memory, more than 3/4 of the 50.0 MB available now" for a message: a reason to read lazily,
    or to warn, not to refuse (see :func:`memory_excess`)."""
    available = available_memory_bytes()
    if available is None or n_bytes_needed <= MEMORY_SHARE * available:
        return None
    return f"needs {size_text(n_bytes_needed)} of memory, more than {_share_text()} of the {size_text(available)} available now"


def memory_excess(n_bytes_needed: int, swap: bool = True) -> Optional[str]:
    """None if ``n_bytes_needed`` bytes fit in :func:`memory_capacity` (or that is unknown), else "needs 72.8 TB of
    memory, more than the 16.0 GB of this machine's memory and swap" for a refusal: the data cannot be held at all.
    ``swap=False``: in :func:`physical_memory` instead (memory used all the time, as a training network's)."""
    capacity = memory_capacity() if swap else physical_memory()
    if capacity is None or n_bytes_needed <= capacity.bytes:
        return None
    return f"needs {size_text(n_bytes_needed)} of memory, more than the {size_text(capacity.bytes)} of {capacity.what}"


def out_of_memory_line(err: BaseException) -> str:
    """The allocation that failed in TensorFlow's out-of-memory error (``ResourceExhaustedError``, a GPU's mostly), e.g.
    "OOM when allocating tensor with shape[4,64,256,256] and type float on ...GPU:0": its message starts with "Graph
    execution error:" and the nodes where it was detected, then a page of allocator details; else its first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = next((line for line in lines if re.search(r"OOM when allocating|Out of memory", line)), lines[0] if lines else "")
    line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line)  # eager ops name their kernel first
    line = re.split(r" by allocator| \[\[| \[Op:|;", line)[0].strip()
    return line[:160] or type(err).__name__


def _read_bytes_figure(path: str) -> Optional[int]:
    """The number in a cgroup file, or None when it says "max", is missing or is beyond any machine (v1's no limit)."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
        value = int(text)
    except (OSError, ValueError):
        return None
    return value if 0 <= value < 2**60 else None


def _memory_stat(path: str) -> dict:
    try:
        with open(path) as fh:
            return {name: int(value) for name, value in (line.split()[:2] for line in fh if len(line.split()) >= 2)
                    if value.isdigit()}
    except (OSError, ValueError):
        return {}


def _mounted_folder(mount: str, folder: str) -> str:
    """``folder``, a cgroup as /proc/self/cgroup names it ("/docker/<id>"), as a path below ``mount``, where its
    hierarchy is mounted. A container without its own cgroup namespace sees its own cgroup mounted there, not the
    host's root: the folder is not below the mount, and the longest tail of it that is ("" for the mount itself) is
    taken, as the JVM does; else the folder unchanged."""
    parts = [part for part in folder.split("/") if part]
    for start in range(len(parts) + 1):
        tail = "".join(f"/{part}" for part in parts[start:])
        if os.path.isdir(f"{mount.rstrip('/')}{tail}"):
            return tail
    return folder


def _cgroup_memory(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[_CgroupMemory]:
    """This process's memory cgroup (v2, else v1): its limit, swap limit and what is left, or None without a limit.

    Usage counts the page cache of every file the cgroup has read or written, which the kernel reclaims on demand:
    its inactive part (``inactive_file``, v1 ``total_inactive_file``) is subtracted, as ``docker stats`` and the
    kubelet do, or reading a data set in a container or a Slurm job would leave "no memory" after a while. On v2 the
    limits of the parent cgroups count too (a job's limit above a step's cgroup).
    """
    try:
        with open(proc_cgroup) as fh:
            entries = {}
            for line in fh:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    for controller in parts[1].split(","):
                        entries[controller] = parts[2]
    except (OSError, UnicodeDecodeError):
        return None
    levels = []
    if "" in entries:  # v2: the process's cgroup and its parents
        folder = _mounted_folder(root, entries[""])
        while True:
            path = f"{root}{folder}".rstrip("/")
            limit = _read_bytes_figure(f"{path}/memory.max")
            usage = _read_bytes_figure(f"{path}/memory.current")
            if limit is not None and usage is not None:
                in_use = max(0, usage - _memory_stat(f"{path}/memory.stat").get("inactive_file", 0))
                levels.append(_CgroupMemory(limit, _read_bytes_figure(f"{path}/memory.swap.max"), max(0, limit - in_use)))
            if folder in ("", "/"):
                break
            folder = folder.rsplit("/", 1)[0] or "/"
    if not levels and "memory" in entries:  # v1
        path = f"{root}/memory{_mounted_folder(f'{root}/memory', entries['memory'])}".rstrip("/")
        stat = _memory_stat(f"{path}/memory.stat")
        limits = [_read_bytes_figure(f"{path}/memory.limit_in_bytes"), stat.get("hierarchical_memory_limit")]
        limits = [value for value in limits if value is not None and value < 2**60]
        usage = _read_bytes_figure(f"{path}/memory.usage_in_bytes")
        if limits and usage is not None:
            limit = min(limits)
            in_use = max(0, usage - stat.get("total_inactive_file", stat.get("inactive_file", 0)))
            both = [_read_bytes_figure(f"{path}/memory.memsw.limit_in_bytes"), stat.get("hierarchical_memsw_limit")]
            both = [value for value in both if value is not None and value < 2**60]
            levels.append(_CgroupMemory(limit, max(0, min(both) - limit) if both else None, max(0, limit - in_use)))
    if not levels:
        return None
    tightest = min(levels, key=lambda level: level.limit)
    return _CgroupMemory(tightest.limit, tightest.swap, min(level.left for level in levels))


def _cgroup_memory_left(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[int]:
    """Limit minus usage (reclaimable file cache not counted) of this process's memory cgroup, or None without a
    limit (see :func:`_cgroup_memory`)."""
    cgroup = _cgroup_memory(proc_cgroup, root)
    return None if cgroup is None else cgroup.left


def describe() -> str:
    """One line naming what the auto settings pick on this machine, for logs and benchmark records."""
    mixed = resolve_mixed_precision(AUTO)
    return f"mixed_precision={mixed}, jit_compile={resolve_jit_compile(AUTO, mixed)}, tta={resolve_tta(AUTO)}"


__all__ = [
    "AUTO",
    "cpu_flags",
    "has_gpu",
    "cpu_has_fast_bfloat16",
    "cpu_has_amx",
    "bfloat16_conv_gflops",
    "cpu_has_fast_matrix_units",
    "FAST_CONV_GFLOPS",
    "has_fast_bfloat16",
    "resolve_mixed_precision",
    "resolve_jit_compile",
    "gpu_has_xla",
    "resolve_tta",
    "available_memory_bytes",
    "memory_capacity",
    "MemoryCapacity",
    "physical_memory",
    "MEMORY_SHARE",
    "LowMemoryWarning",
    "memory_shortfall",
    "memory_excess",
    "out_of_memory_line",
    "size_text",
    "resolve_depth",
    "auto_depth_without_gpu_query",
    "explain_auto_tta",
    "describe",
    "DEEP_BUDGET_MINUTES",
]
