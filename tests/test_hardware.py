"""The "auto" compute settings follow the CPU's instructions; models record what actually ran."""

import sys

import numpy as np
import pytest

from napari_unet import hardware
from napari_unet.config import ConfigError, TrainConfig

AMX_CPU = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16_CPU = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})  # AMD Zen 4: bfloat16 dot products, no AMX
AVX512_CPU = frozenset({"avx2", "fma", "avx512f"})
AVX2_CPU = frozenset({"avx2", "fma"})


SLOW_CONV, FAST_CONV = 350.0, 780.0  # bfloat16 convolutions, GFLOP/s: AMD Zen 4 (estimated) and Zen 5 (measured)


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to run on a CPU with the given flags, bfloat16 convolution rate and no GPU."""

    def use(flags, conv_gflops=SLOW_CONV):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
        monkeypatch.setattr(hardware, "has_gpu", lambda: False)
        monkeypatch.setattr(hardware, "bfloat16_conv_gflops", lambda: conv_gflops)

    return use


@pytest.mark.parametrize(
    "flags, mixed, jit, tta",
    [
        (AMX_CPU, True, False, True),
        (AVX512_BF16_CPU, True, False, False),
        (AVX512_CPU, False, False, False),
        (AVX2_CPU, False, True, False),
    ],
)
def test_auto_picks_bfloat16_on_bf16_cpus_and_xla_only_without_avx512(cpu, flags, mixed, jit, tta):
    cpu(flags)
    assert hardware.resolve_mixed_precision("auto") is mixed
    assert hardware.resolve_jit_compile("auto", mixed) is jit
    assert hardware.describe() == f"mixed_precision={mixed}, jit_compile={jit}, tta={tta}"


def test_explicit_settings_are_kept_whatever_the_cpu(cpu):
    cpu(AVX2_CPU)
    assert hardware.resolve_mixed_precision(True) is True
    assert hardware.resolve_jit_compile(False, mixed_precision=False) is False
    assert not hardware.has_fast_bfloat16()
    cpu(AMX_CPU)
    assert hardware.resolve_mixed_precision(False) is False
    assert hardware.has_fast_bfloat16()


@pytest.mark.parametrize(
    "flags, conv_gflops, tta",
    [
        (AMX_CPU, SLOW_CONV, True),
        (AVX512_BF16_CPU, FAST_CONV, True),  # AMD Zen 5: the same flags as Zen 4, twice the speed
        (AVX512_BF16_CPU, SLOW_CONV, False),
        (AVX512_CPU, FAST_CONV, False),
        (AVX2_CPU, FAST_CONV, False),
    ],
)
def test_auto_tta_only_where_the_network_is_cheap(cpu, flags, conv_gflops, tta):
    cpu(flags, conv_gflops)
    assert hardware.resolve_tta("auto") is tta
    assert hardware.resolve_tta(True) is True and hardware.resolve_tta(np.False_) is False
    with pytest.raises(ValueError, match="tta"):
        hardware.resolve_tta("yes")
    with pytest.raises(ValueError, match="mixed_precision"):
        hardware.resolve_mixed_precision("yes")
    with pytest.raises(ValueError, match="jit_compile"):
        hardware.resolve_jit_compile(None, False)


def test_auto_tta_is_explained_as_it_resolves(cpu, monkeypatch):
    cpu(AMX_CPU)
    assert hardware.explain_auto_tta().startswith("on:")
    cpu(AVX512_BF16_CPU)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # before any model: no GPU query
    monkeypatch.setattr(hardware, "has_gpu", lambda: pytest.fail("asked TensorFlow for a GPU"))
    monkeypatch.setattr(hardware, "bfloat16_conv_gflops", lambda: pytest.fail("timed convolutions before a model"))
    assert hardware.explain_auto_tta() == "on with a GPU or where bfloat16 convolutions reach 500 GFLOP/s (timed when a model runs)"
    cpu(AVX2_CPU)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(hardware, "has_gpu", lambda: pytest.fail("asked TensorFlow for a GPU"))
    assert hardware.explain_auto_tta() == "off: this CPU has no AMX matrix units (on with a GPU)"
    monkeypatch.setitem(sys.modules, "tensorflow", object())  # a model imported TensorFlow: ask it
    for flags in (AVX2_CPU, AVX512_BF16_CPU):
        for conv_gflops in (SLOW_CONV, FAST_CONV):
            for gpu in (False, True):
                cpu(flags, conv_gflops)
                monkeypatch.setattr(hardware, "has_gpu", lambda: gpu)
                on = gpu or (flags is AVX512_BF16_CPU and conv_gflops == FAST_CONV)
                assert hardware.explain_auto_tta().startswith("on:" if on else "off:")
                assert hardware.explain_auto_tta().startswith("on:") is hardware.resolve_tta("auto")
    cpu(AVX512_BF16_CPU, FAST_CONV)
    assert hardware.explain_auto_tta() == "on: bfloat16 convolutions at 780 GFLOP/s here (>= 500)"


def test_bfloat16_convolutions_are_timed_once_per_process():
    hardware.bfloat16_conv_gflops.cache_clear()
    rate = hardware.bfloat16_conv_gflops()
    assert 1.0 < rate < 1e6  # GFLOP/s of a real measurement, whatever the CPU
    assert hardware.bfloat16_conv_gflops() == rate  # cached: a second call costs nothing


def test_gpu_keeps_float32_with_xla(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AMX_CPU)
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    monkeypatch.setattr(hardware, "gpu_has_xla", lambda: True)  # a CUDA GPU, whatever TensorFlow build runs the test
    assert hardware.resolve_mixed_precision("auto") is False
    assert hardware.resolve_jit_compile("auto", False) is True
    assert hardware.resolve_tta("auto") is True


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    assert ("avx2" in flags) == (" avx2" in text)


def test_train_config_accepts_auto_booleans_and_their_spelling():
    assert TrainConfig().mixed_precision == "auto" and TrainConfig().jit_compile == "auto"
    config = TrainConfig(mixed_precision="True", jit_compile="false")
    assert config.mixed_precision is True and config.jit_compile is False
    with pytest.raises(ConfigError, match="mixed_precision must be true, false or 'auto'"):
        TrainConfig(mixed_precision="fast")


def test_training_records_the_resolved_settings(cpu):
    from _helpers import stripes, tiny_configs
    from napari_unet.train import train

    cpu(AVX512_CPU)  # float32, no XLA: the fastest combination on such a CPU
    image, labels = stripes()
    final = train(image, labels, *tiny_configs(epochs=1, steps_per_epoch=2))
    assert final.model.train_config.mixed_precision is False
    assert final.model.train_config.jit_compile is False


def test_training_compiles_with_xla_only_runs_that_repay_the_compile_time(cpu):
    from napari_unet.train import XLA_MIN_TRAINING_PIXELS, resolve_training_jit_compile

    cpu(AVX2_CPU)  # where "auto" compiles with XLA
    default = TrainConfig()  # 40 epochs x 25 steps of 4 x 256²: a full training run
    assert default.epochs * default.steps_per_epoch * default.batch_size * default.patch_size**2 >= XLA_MIN_TRAINING_PIXELS
    assert resolve_training_jit_compile(default, mixed_precision=False) is True
    retrain = default.replace(epochs=1, steps_per_epoch=20, batch_size=2, patch_size=128)  # the widget's Retrain
    assert resolve_training_jit_compile(retrain, mixed_precision=False) is False
    assert resolve_training_jit_compile(default.replace(max_minutes=1), mixed_precision=False) is False
    assert resolve_training_jit_compile(default.replace(max_minutes=10), mixed_precision=False) is True
    assert resolve_training_jit_compile(retrain.replace(jit_compile=True), mixed_precision=False) is True  # asked for
    assert resolve_training_jit_compile(default.replace(jit_compile=False), mixed_precision=False) is False
    cpu(AVX512_CPU)  # where XLA is slower than oneDNN: never by default
    assert resolve_training_jit_compile(default, mixed_precision=False) is False


def test_bfloat16_prediction_matches_float32_labels():
    from _helpers import stripes, tiny_model
    from napari_unet.predict import predict

    model = tiny_model()
    image = stripes(n_slices=1, seed=5)[0]
    plain = predict(model, image, mixed_precision=False)
    half = predict(model, image, mixed_precision=True)
    assert not np.array_equal(half.probabilities, plain.probabilities), "bfloat16 rounding must show"
    assert np.abs(half.probabilities - plain.probabilities).max() < 0.05
    assert np.mean(half.labels != plain.labels) < 0.01


def test_auto_depth_is_five_only_for_long_budgets_on_fast_compute(cpu, monkeypatch):
    cpu(AMX_CPU)
    assert hardware.resolve_depth(hardware.AUTO, 30, mixed_precision=True) == 5
    assert hardware.resolve_depth(hardware.AUTO, 120, mixed_precision=True) == 5
    assert hardware.resolve_depth(hardware.AUTO, 29.5, mixed_precision=True) == 4  # measured: no gain at 10 min
    assert hardware.resolve_depth(hardware.AUTO, None, mixed_precision=True) == 4  # epochs only: no budget to judge
    assert hardware.resolve_depth(hardware.AUTO, 30, mixed_precision=False) == 4  # float32: ~1.7x fewer steps
    cpu(AVX2_CPU)
    assert hardware.resolve_depth(hardware.AUTO, 60, mixed_precision=False) == 4
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    assert hardware.resolve_depth(hardware.AUTO, 30, mixed_precision=False) == 5
    cpu(AMX_CPU)
    assert hardware.resolve_depth(hardware.AUTO, 30) == 5  # the training's "auto" precision: bfloat16 here
    cpu(AVX512_BF16_CPU)
    assert hardware.resolve_depth(hardware.AUTO, 30) == 4  # Zen 4: bfloat16 without AMX; depth 4 won 4 seeds (s26-28)
    assert hardware.resolve_depth(hardware.AUTO, 30, mixed_precision=True) == 4
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    assert hardware.resolve_depth(hardware.AUTO, 30) == 5  # ... unless a GPU trains
    cpu(AVX2_CPU)
    assert hardware.resolve_depth(hardware.AUTO, 30) == 4
    monkeypatch.setattr(hardware, "has_gpu", lambda: pytest.fail("asked TensorFlow for a GPU"))
    assert hardware.resolve_depth(hardware.AUTO, 10) == hardware.resolve_depth(hardware.AUTO, None) == 4  # a GUI before TF
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AMX_CPU)  # AMX: 5 at 30 minutes with or without a GPU, so TF is not asked
    assert hardware.resolve_depth(hardware.AUTO, 30) == hardware.resolve_depth(hardware.AUTO, 30, True) == 5


def test_auto_depth_says_when_only_a_gpu_can_decide(cpu, monkeypatch):
    cpu(AMX_CPU)
    monkeypatch.setattr(hardware, "has_gpu", lambda: pytest.fail("asked TensorFlow for a GPU"))
    assert hardware.auto_depth_without_gpu_query(30) == 5
    assert hardware.auto_depth_without_gpu_query(10) == hardware.auto_depth_without_gpu_query(None) == 4
    assert hardware.auto_depth_without_gpu_query(30, mixed_precision=False) is None  # float32: 5 only on a GPU
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX512_BF16_CPU)
    assert hardware.auto_depth_without_gpu_query(30) is None
    assert hardware.auto_depth_without_gpu_query(29) == 4


def test_the_gpu_question_loads_tensorflow_isolated(monkeypatch):
    # has_gpu may run on napari's GUI thread (or a worker beside the canvas): a plain import could crash there
    import types

    from napari_unet import _tensorflow

    calls = []
    fake = types.SimpleNamespace(config=types.SimpleNamespace(list_physical_devices=lambda kind: ["gpu:0"] if kind == "GPU" else []))
    monkeypatch.setattr(_tensorflow, "load_tensorflow", lambda: calls.append(1) or fake)
    hardware.has_gpu.cache_clear()
    try:
        assert hardware.has_gpu() is True and calls == [1]
    finally:
        hardware.has_gpu.cache_clear()


def test_explicit_depth_passes_and_nonsense_is_refused(cpu):
    cpu(AMX_CPU)
    assert hardware.resolve_depth(3, 30, mixed_precision=True) == 3
    assert hardware.resolve_depth(np.int64(6), None, mixed_precision=False) == 6
    for bad in ("deep", True, 2.5, None):
        with pytest.raises(ValueError, match="depth must be an int or 'auto'"):
            hardware.resolve_depth(bad, 30, mixed_precision=True)


def test_training_without_a_model_config_takes_the_auto_depth(cpu, monkeypatch):
    from _helpers import stripes
    from napari_unet.train import TrainingStarted, train_events

    import napari_unet.train

    image, labels = stripes(n_slices=2, size=64)
    cpu(AMX_CPU)
    noise = []
    sampler = napari_unet.train.PatchSampler
    monkeypatch.setattr(napari_unet.train, "PatchSampler", lambda *a, **k: noise.append(a[4].noise) or sampler(*a, **k))
    for minutes, mixed, depth in ((30, True, 5), (30, False, 4), (None, True, 4)):
        config = TrainConfig(epochs=1, steps_per_epoch=1, patch_size=64, batch_size=1, max_minutes=minutes, mixed_precision=mixed)
        events = train_events(image, labels, None, config)
        started = next(events)  # the model is built; no step has run
        events.close()
        assert isinstance(started, TrainingStarted) and started.model.config.depth == depth
        assert started.model.train_config.augment_noise == (0.1 if minutes else 0.0)  # "auto" resolved and recorded
        assert noise[-1] == started.model.train_config.augment_noise  # ... and what the patches get
        assert started.model.train_config.merge_levels == ((0.5, 0.6, 0.7) if minutes else (0.5, 0.6))


def test_available_memory_is_a_plausible_number_of_bytes():
    from napari_unet.hardware import available_memory_bytes

    available = available_memory_bytes()
    assert available is None or 2**24 < available < 2**50


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_containers_memory_limit_lowers_the_available_memory(tmp_path, version):
    from napari_unet.hardware import _cgroup_memory_left

    if version == "v2":
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "memory.max").write_text("1000000\n")
        (tmp_path / "app" / "memory.current").write_text("400000\n")
        (tmp_path / "cgroup").write_text("0::/app\n")
    else:
        (tmp_path / "memory" / "app").mkdir(parents=True)
        (tmp_path / "memory" / "app" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
        (tmp_path / "memory" / "app" / "memory.usage_in_bytes").write_text("400000\n")
        (tmp_path / "cgroup").write_text("4:memory:/app\n")
    left = _cgroup_memory_left(str(tmp_path / "cgroup"), str(tmp_path))
    assert left == (600000 if version == "v2" else None)


def _fake_cgroup(tmp_path, version, limit, usage, inactive_file, swap=None):
    """A fake /proc/self/cgroup and cgroup tree (v1 or v2) under ``tmp_path``; returns (proc_cgroup, root)."""
    if version == "v2":
        folder = tmp_path / "job" / "step"
        folder.mkdir(parents=True)
        files = {"memory.max": limit, "memory.current": usage,
                 "memory.stat": f"anon {usage - inactive_file}\nfile {inactive_file}\ninactive_file {inactive_file}\n"}
        if swap is not None:
            files["memory.swap.max"] = swap
        (tmp_path / "cgroup").write_text("0::/job/step\n")
    else:
        folder = tmp_path / "memory" / "job"
        folder.mkdir(parents=True)
        files = {"memory.limit_in_bytes": limit, "memory.usage_in_bytes": usage,
                 "memory.stat": f"cache {inactive_file}\nrss 1000\ntotal_inactive_file {inactive_file}\n"
                                f"hierarchical_memory_limit {limit}\n"}
        if swap is not None:
            files["memory.memsw.limit_in_bytes"] = limit + swap
        (tmp_path / "cgroup").write_text("12:cpuset:/\n4:memory:/job\n1:name=systemd:/job\n")
    for name, value in files.items():
        (folder / name).write_text(f"{value}\n")
    return str(tmp_path / "cgroup"), str(tmp_path)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_containers_reclaimable_page_cache_counts_as_available(tmp_path, version):
    # old: limit - usage, usage counting the cache of every file read: a container or Slurm job that had read its
    # data set had "0 bytes available", and every file was refused (review 2, must-fix 1)
    from napari_unet.hardware import _cgroup_memory_left, available_memory_bytes

    gb = 2**30
    proc_cgroup, root = _fake_cgroup(tmp_path, version, limit=8 * gb, usage=8 * gb, inactive_file=6 * gb + gb // 2)
    assert _cgroup_memory_left(proc_cgroup, root) == 6 * gb + gb // 2
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       33554432 kB\nMemFree:  1000 kB\nMemAvailable:   16777216 kB\nSwapTotal: 0 kB\n")
    assert available_memory_bytes(str(meminfo), proc_cgroup, root) == 6 * gb + gb // 2  # the cgroup's, not MemAvailable
    meminfo.write_text("MemTotal:       33554432 kB\nMemAvailable:   1048576 kB\nSwapTotal: 0 kB\n")
    assert available_memory_bytes(str(meminfo), proc_cgroup, root) == gb  # the machine's, when lower


def test_a_parent_cgroups_limit_counts_on_v2(tmp_path):
    # a Slurm job's limit sits on the job's cgroup, its steps' cgroups say "max"
    from napari_unet.hardware import _cgroup_memory_left, memory_capacity

    proc_cgroup, root = _fake_cgroup(tmp_path, "v2", limit="max", usage=100, inactive_file=0)
    (tmp_path / "job" / "memory.max").write_text(f"{2**30}\n")
    (tmp_path / "job" / "memory.current").write_text(f"{2**29}\n")
    (tmp_path / "job" / "memory.swap.max").write_text("0\n")
    assert _cgroup_memory_left(proc_cgroup, root) == 2**29
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\nSwapTotal: 8388608 kB\n")
    assert memory_capacity(str(meminfo), proc_cgroup, root) == (2**30, "the memory limit of this container or job")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_memory_capacity_is_the_machines_memory_and_swap_or_the_containers_limit(tmp_path, version):
    from napari_unet.hardware import MemoryCapacity, memory_capacity

    gb = 2**30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 16777216 kB\nMemAvailable: 1048576 kB\nSwapTotal: 4194304 kB\n")
    none = tmp_path / "none"
    assert memory_capacity(str(meminfo), str(none), str(tmp_path)) == MemoryCapacity(20 * gb, "this machine's memory and swap")
    proc_cgroup, root = _fake_cgroup(tmp_path, version, limit=8 * gb, usage=8 * gb, inactive_file=0, swap=gb)
    assert memory_capacity(str(meminfo), proc_cgroup, root) == MemoryCapacity(9 * gb, "the memory limit of this container or job and its swap")


def test_memory_is_measured_without_proc_meminfo_too():
    # Windows and macOS have no /proc/meminfo: old, available_memory_bytes() was always None there, and no memory
    # check worked (review 2, should-fix 3); psutil (a dependency of napari) answers there
    from napari_unet.hardware import available_memory_bytes, memory_capacity

    available = available_memory_bytes(meminfo="/nonexistent/meminfo", proc_cgroup="/nonexistent/cgroup")
    capacity = memory_capacity(meminfo="/nonexistent/meminfo", proc_cgroup="/nonexistent/cgroup")
    assert available is not None and 2**24 < available < 2**50
    assert capacity is not None and available <= capacity.bytes < 2**50


def test_unknown_memory_neither_refuses_nor_warns(monkeypatch):
    from napari_unet import hardware

    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: None)
    monkeypatch.setattr(hardware, "memory_capacity", lambda: None)
    assert hardware.memory_shortfall(2**60) is None and hardware.memory_excess(2**60) is None


def test_the_shortfall_message_names_the_share_it_compares_with(monkeypatch):
    # old: "needs 40.0 MB of memory, and 50.0 MB are available" (compared with 3/4 of it)
    from napari_unet import hardware

    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 50 * 2**20)
    assert hardware.memory_shortfall(40 * 2**20) == "needs 40.0 MB of memory, more than 3/4 of the 50.0 MB available now"
    assert hardware.memory_shortfall(37 * 2**20) is None


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("inside", ["", "/init"])
def test_a_containers_limit_is_found_without_its_own_cgroup_namespace(tmp_path, version, inside):
    # Docker or Kubernetes on a cgroup v1 host without cgroupns: /proc/self/cgroup names the container's cgroup from
    # the host's root (memory:/docker/<id>), but the container sees that cgroup mounted at /sys/fs/cgroup/memory.
    # Old: /sys/fs/cgroup/memory/docker/<id> did not exist, and the host's MemTotal was taken (review 2 of s64, 3).
    # ``inside``: the process in a child cgroup of the container's (its limit is the container's, hierarchically).
    from napari_unet.hardware import (MemoryCapacity, _cgroup_memory_left, available_memory_bytes, memory_capacity,
                                      physical_memory)

    gb = 2**30
    mount = tmp_path / "memory" if version == "v1" else tmp_path
    (mount / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if version == "v1":
        files = {"memory.limit_in_bytes": 8 * gb, "memory.usage_in_bytes": 3 * gb,
                 "memory.stat": f"total_inactive_file {gb}\nhierarchical_memory_limit {8 * gb}\n"}
        (tmp_path / "cgroup").write_text(f"12:memory:/docker/0123abcd{inside}\n0::/\n")
    else:
        files = {"memory.max": 8 * gb, "memory.current": 3 * gb, "memory.stat": f"inactive_file {gb}\n"}
        (tmp_path / "cgroup").write_text(f"0::/system.slice/docker-0123abcd.scope{inside}\n")
    for name, value in files.items():
        (mount / name).write_text(f"{value}\n")
    if inside:  # a child without a limit of its own: the container's counts (v1 hierarchically, v2 as a parent)
        child = {"memory.limit_in_bytes": 2**63 - 4096, "memory.usage_in_bytes": 3 * gb,
                 "memory.stat": f"total_inactive_file {gb}\nhierarchical_memory_limit {8 * gb}\n"} if version == "v1" \
            else {"memory.max": "max", "memory.current": 2 * gb, "memory.stat": f"inactive_file {gb}\n"}
        for name, value in child.items():
            (mount / inside.lstrip("/") / name).write_text(f"{value}\n")
    proc_cgroup, root = str(tmp_path / "cgroup"), str(tmp_path)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\nSwapTotal: 0 kB\n")
    container = "the memory limit of this container or job"
    assert physical_memory(str(meminfo), proc_cgroup, root) == MemoryCapacity(8 * gb, container)
    assert memory_capacity(str(meminfo), proc_cgroup, root) == MemoryCapacity(8 * gb, container)
    assert _cgroup_memory_left(proc_cgroup, root) == 6 * gb
    assert available_memory_bytes(str(meminfo), proc_cgroup, root) == 6 * gb
