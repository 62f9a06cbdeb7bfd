"""The GPU path, without a GPU: TensorFlow's device configuration is a stand-in recording what is asked of it."""

import logging
import sys
import types

import pytest

from napari_unet import _tensorflow, hardware

CUINIT_NO_DEVICE = ("E0000 00:00:1796623324.676719    3110 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
                    "Failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected\n")


class FakeConfig:
    """``tf.config`` of a machine with ``n_gpus`` GPUs whose runtime is not initialised yet (unless ``initialised``)."""

    def __init__(self, n_gpus=2, initialised=False, growth=None, virtual=None):
        self.gpus = [f"/physical_device:GPU:{i}" for i in range(n_gpus)]
        self.initialised = initialised
        self.growth = dict.fromkeys(self.gpus, growth)
        self.virtual = dict.fromkeys(self.gpus, virtual)
        self.set_calls = []
        self.listed = 0
        self.experimental = types.SimpleNamespace(get_memory_growth=self.growth.__getitem__, set_memory_growth=self._set_growth)

    def list_physical_devices(self, kind=None):
        self.listed += 1
        return list(self.gpus) if kind == "GPU" else ["/physical_device:CPU:0"]

    def get_logical_device_configuration(self, device):
        return self.virtual[device]

    def _set_growth(self, device, enable):
        self.set_calls.append((device, enable))
        if self.growth[device] == enable:
            return
        if self.initialised:  # as TensorFlow's context.set_memory_growth
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth[device] = enable


@pytest.fixture
def fake_tf(monkeypatch):
    """Make ``tensorflow`` in ``sys.modules`` a stand-in with the given :class:`FakeConfig`, not yet configured;
    ``gpu_build``: built for CUDA/ROCm (else its GPUs are plug-in devices such as Apple's Metal)."""

    def use(config, gpu_build=True):
        module = types.ModuleType("tensorflow")
        module.config = config
        module.test = types.SimpleNamespace(is_built_with_gpu_support=lambda: gpu_build)
        monkeypatch.setitem(sys.modules, "tensorflow", module)
        monkeypatch.setattr(_tensorflow, "_gpus_configured_in", None, raising=False)
        monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
        return module

    return use


@pytest.fixture
def fresh_gpu_answers():
    """The cached answers of :mod:`napari_unet.hardware` about GPUs asked again, before and after the test."""
    cached = [hardware.has_gpu, hardware.gpu_has_xla]
    for answer in cached:
        answer.cache_clear()
    yield
    for answer in cached:
        answer.cache_clear()


def test_loading_tensorflow_lets_the_memory_of_every_gpu_grow(fake_tf):
    # TensorFlow otherwise takes nearly all memory of every GPU at its first use, beside napari's canvas
    config = FakeConfig(n_gpus=2)
    tf = fake_tf(config)
    assert _tensorflow.load_tensorflow() is tf
    assert config.growth == {gpu: True for gpu in config.gpus}
    calls, listed = list(config.set_calls), config.listed
    assert _tensorflow.load_tensorflow(quiet=True) is tf and config.set_calls == calls  # once per process
    assert config.listed == listed, "the GPUs were listed again"


def test_tensorflow_imported_by_napari_unet_itself_lets_gpu_memory_grow(fake_tf, monkeypatch):
    config = FakeConfig(n_gpus=1)
    tf = fake_tf(config)
    monkeypatch.delitem(sys.modules, "tensorflow")  # not imported yet: load_tensorflow imports it (the usual case)
    imported = []

    def import_tensorflow(skip_optional):
        imported.append(skip_optional)
        sys.modules["tensorflow"] = tf
        return tf

    monkeypatch.setattr(_tensorflow, "_import_in_thread", import_tensorflow)
    assert _tensorflow.load_tensorflow() is tf and imported == [False]
    assert config.growth == {config.gpus[0]: True}


def test_tf_force_gpu_allow_growth_false_keeps_tensorflows_whole_memory(fake_tf, monkeypatch):
    for value, grows in (("false", False), ("False", False), ("true", True)):
        config = FakeConfig(n_gpus=1)
        fake_tf(config)
        monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", value)
        _tensorflow.load_tensorflow()
        assert config.growth[config.gpus[0]] is (True if grows else None), value


def test_gpus_in_use_already_are_left_as_they_are_quietly(fake_tf, caplog):
    config = FakeConfig(n_gpus=2, initialised=True)  # another package ran TensorFlow on them first
    tf = fake_tf(config)
    with caplog.at_level(logging.DEBUG, logger="napari_unet"):
        assert _tensorflow.load_tensorflow(quiet=True) is tf
    assert config.set_calls and config.growth == dict.fromkeys(config.gpus)  # tried, refused, no error
    assert [r.levelno for r in caplog.records if "memory growth" in r.getMessage()] == [logging.DEBUG]


@pytest.mark.parametrize("settings", [dict(growth=False), dict(growth=True), dict(virtual=["a 2 GB logical GPU"])])
def test_gpus_another_package_configured_are_left_alone(fake_tf, settings):
    # setting growth on some GPUs only would fail TensorFlow's start ("Memory growth cannot differ between GPU devices")
    config = FakeConfig(n_gpus=2, **settings)
    fake_tf(config)
    _tensorflow.load_tensorflow()
    assert config.set_calls == []


def test_no_gpu_no_configuration(fake_tf):
    config = FakeConfig(n_gpus=0)
    fake_tf(config)
    assert _tensorflow.allow_gpu_memory_growth(sys.modules["tensorflow"]) is False
    assert config.listed == 1 and config.set_calls == []
    assert _tensorflow.allow_gpu_memory_growth(object()) is False  # not TensorFlow at all: no error either


@pytest.mark.parametrize("visible, hidden", [("-1", True), ("", True), (" -1,0", True), ("0", False), ("1,-1", False),
                                             ("GPU-8f3a", False), (None, False), ("NoDevFiles", True)])
def test_hiding_the_gpus_also_hides_the_cuinit_error_of_a_quiet_load(monkeypatch, visible, hidden):
    # CUDA_VISIBLE_DEVICES=-1 on a machine with an NVIDIA driver: TensorFlow computes on the CPU and says so as an error
    real_exists = _tensorflow.os.path.exists
    monkeypatch.setattr(_tensorflow.os.path, "exists", lambda path: path == "/dev/nvidiactl" or real_exists(path))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert bool(_tensorflow._quiet_pattern().match(CUINIT_NO_DEVICE)) is hidden


def test_hidden_gpus_give_the_cpus_auto_settings(fake_tf, monkeypatch, fresh_gpu_answers):
    # with CUDA_VISIBLE_DEVICES=-1 TensorFlow lists no GPU: "auto" is as on a machine without one
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    fake_tf(FakeConfig(n_gpus=0))
    assert hardware.has_gpu() is False
    assert hardware.describe() == "mixed_precision=False, jit_compile=True, tta=False"
    assert hardware.resolve_depth(hardware.AUTO, 60) == 4


@pytest.mark.parametrize("gpu_build, xla", [(True, True), (False, False)])
def test_auto_xla_only_on_gpus_xla_compiles_for(fake_tf, monkeypatch, fresh_gpu_answers, gpu_build, xla):
    # a plug-in GPU (tensorflow-metal, DirectML) has no XLA compiler: jit_compile=True fails there, also where the
    # CPU alone would get XLA (AVX2), since the network runs on the GPU
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    fake_tf(FakeConfig(n_gpus=1), gpu_build=gpu_build)
    assert hardware.has_gpu() is True
    assert hardware.resolve_jit_compile("auto", mixed_precision=False) is xla
    assert hardware.describe() == f"mixed_precision=False, jit_compile={xla}, tta=True"
    assert hardware.resolve_jit_compile(True, mixed_precision=False) is True  # asked for
