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
import sys
import time
from typing import Optional, Union

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


def available_memory_bytes() -> Optional[int]:
    """Memory the system can give this process now, or None if unknown: Linux ``MemAvailable``, lowered to what
    the process's memory cgroup (a container's limit) has left."""
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    left = _cgroup_memory_left()
    return available if left is None else min(available, left)


def _cgroup_memory_left(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[int]:
    """Limit minus usage of this process's memory cgroup (v2, else v1), or None without a limit."""
    try:
        with open(proc_cgroup) as fh:
            entries = dict(line.rstrip("\n").split(":", 2)[1:] for line in fh if line.count(":") >= 2)
    except OSError:
        return None
    candidates = []
    if "" in entries:
        candidates.append((f"{root}{entries['']}", "memory.max", "memory.current"))
    if "memory" in entries:
        candidates.append((f"{root}/memory{entries['memory']}", "memory.limit_in_bytes", "memory.usage_in_bytes"))
    for folder, limit_file, usage_file in candidates:
        try:
            with open(f"{folder.rstrip('/')}/{limit_file}") as fh:
                limit = fh.read().strip()
            with open(f"{folder.rstrip('/')}/{usage_file}") as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit != "max" and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


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
    "resolve_depth",
    "auto_depth_without_gpu_query",
    "explain_auto_tta",
    "describe",
    "DEEP_BUDGET_MINUTES",
]
