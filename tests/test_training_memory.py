"""The network's memory check follows the memory policy of reading data (session 64): a training is refused only beyond
the machine's (or container's) memory and swap, and warned of (LowMemoryWarning; one ``warning:`` line in the command
line, a notification in napari) beyond 3/4 of the memory available now, its data and its network counted together.
It compared the network alone with the memory free now: page cache or another program's moment of use refused
trainings that fit. Also: a memory-mapped stack trained on whole is mapped, not copied.

Memory figures are faked (:func:`napari_unet.hardware.available_memory_bytes`, :func:`~napari_unet.hardware.memory_capacity`)."""

import warnings

import numpy as np
import pytest
import tifffile

from _helpers import PlanesOnly, error_line, stripes, tiny_configs
from napari_unet import cli, hardware


TRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "64"]


def test_a_training_within_memory_and_swap_but_beyond_the_memory_available_now_runs_with_one_warning(memory):
    # old: ConfigError "... needs about 0.8 GB of memory, more than the 0.0 GB free" (page cache, other programs)
    from napari_unet.train import TrainingFinished, train_events

    image, labels = stripes(n_slices=4, size=96)
    memory(available=2**20, capacity=10**11)  # the network's weights (29,810 x 31 bytes) and the data: more than 3/4
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        events = list(train_events(image, labels, model_config, train_config))
    assert isinstance(events[-1], TrainingFinished) and events[-1].model is not None
    low = [str(w.message) for w in seen if issubclass(w.category, hardware.LowMemoryWarning)]
    assert len(low) == 1, low  # the data and the network: one decision, one warning
    assert low[0].startswith("image and labels: training this network (depth 2, 8 filters: 29,810 weights) on batches "
                             "of 4 patches of 64² with its data ("), low[0]
    assert "more than 3/4 of the 1.0 MB available now" in low[0] and low[0].endswith(
        "; training anyway (close other programs if the system slows down)"), low[0]


def test_the_data_and_the_network_are_refused_together_beyond_memory_and_swap_before_a_slice_is_read(memory):
    # old: each fitted alone (the data in memory and swap, the network in the memory free), and both were held at once
    from napari_unet.config import ConfigError
    from napari_unet.model import training_memory_bytes
    from napari_unet.train import train_events, training_data_bytes

    image, labels = stripes(n_slices=4, size=96)
    lazy_image, lazy_labels = PlanesOnly(image), PlanesOnly(labels)
    model_config, train_config = tiny_configs()
    data = training_data_bytes(lazy_image, lazy_labels, [0, 1, 2, 3])
    weights = training_memory_bytes(model_config, 0, 64)  # TensorFlow and the weights, without a batch
    memory(available=10**12, capacity=weights + data // 2)
    with pytest.raises(ConfigError, match=r"^image and labels: training this network \(depth 2, 8 filters: 29,810 weights\) "
                                          r"on batches of 4 patches of 64² with its data \(\d+ KB: the slices read and their "
                                          r"working copies\) needs \d+ MB of memory, more than the \d+ MB of this machine's "
                                          r"memory and swap; "):
        next(train_events(lazy_image, lazy_labels, model_config, train_config))
    assert lazy_image.reads == [] and lazy_labels.reads == []


def test_the_batchs_activations_beyond_memory_and_swap_are_refused_with_the_data_counted(memory):
    from napari_unet.config import ConfigError
    from napari_unet.model import training_memory_bytes
    from napari_unet.train import train_events, training_data_bytes

    image, labels = stripes(n_slices=4, size=96)
    model_config, train_config = tiny_configs(batch_size=64)
    data = training_data_bytes(image, labels, [0, 1, 2, 3])
    network = training_memory_bytes(model_config, 64, 64, False)  # (float32 here: no bfloat16 unless the CPU has it)
    memory(available=10**12, capacity=network + data // 2)  # the network alone fits
    if hardware.has_gpu():
        pytest.skip("the activations live on the GPU")
    with pytest.raises(ConfigError, match=r"on batches of 64 patches of 64² with its data .* more than the .* of this "
                                          r"machine's memory and swap; lower the batch size"):
        next(train_events(image, labels, model_config, train_config.replace(mixed_precision=False)))


def test_train_warns_of_the_network_in_one_warning_line_and_trains(tmp_path, memory, capsys):
    # old: "napari-unet: error: image img.tif and labels lab.tif: training this network ... more than the 0.0 GB free"
    image, labels = stripes()
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    memory(available=2**20, capacity=10**11)  # the files (36 KB) are read whole without a warning
    code = cli.main(["train", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "-o", str(tmp_path / "m.keras"), *TRAIN])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("warning: image img.tif and labels lab.tif: training this network (depth "), lines[0]
    assert "more than 3/4 of the 1.0 MB available now" in lines[0], lines[0]
    assert "LowMemoryWarning" not in err and ".py:" not in err, err
    assert (tmp_path / "m.keras").exists()


def test_train_refuses_the_network_beyond_memory_and_swap_in_one_error_line(tmp_path, memory, capsys):
    image, labels = stripes()
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    memory(available=2**30, capacity=2**30)
    code = cli.main(["train", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "-o", str(tmp_path / "m.keras"),
                     *TRAIN, "--depth", "6"])
    assert code == 2
    line = error_line(capsys)
    assert "error: image img.tif and labels lab.tif: training this network (depth 6, 16 filters: " in line, line
    assert "more than the 1.0 GB of this machine's memory and swap; each level of depth" in line, line
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.gui
def test_the_training_widget_shows_the_networks_memory_warning_and_trains(widgets, qtbot, notifications, memory):
    # old: the training failed, "... more than the 0.0 GB free", with 64 GB of memory and swap
    from conftest import run_and_wait, tiny_settings

    training, session = widgets.training, widgets.session
    memory(available=2**20, capacity=64 * 2**30)
    tiny_settings(training, epochs=1, steps=1, patch=64)
    model = session.model
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    warned = [text for severity, text in notifications if severity == "warning" and "training this network" in text]
    assert len(warned) == 1, notifications
    assert warned[0].startswith("napari-unet: image 'EM' and labels 'EM labels': training this network (depth 2, 8 filters"), warned[0]
    assert "more than 3/4 of the 1.0 MB available now" in warned[0], warned[0]
    assert session.model is not model and session.model is not None, training.progress.status.text()


# ------------------------------------------------------------------------------------------------ memory maps


def test_a_memory_mapped_stack_trained_on_whole_is_counted_as_mapped_not_copied(tmp_path):
    # old: its pixels were counted as a copy read (reading it whole is np.asarray of the map: its pages are page
    # cache, which the kernel drops when it needs the memory); the slices of a part of it are copies (np.stack)
    from napari_unet.tiff_io import read_tiff
    from napari_unet.train import TRAINING_BYTES_PER_PIXEL, TRAINING_BYTES_PER_PLANE_PIXEL, training_data_bytes

    image, labels = stripes(n_slices=4, size=96)
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    mapped = read_tiff(tmp_path / "img.tif", lazy=True, lazy_from_bytes=0).data
    assert isinstance(mapped, np.memmap)
    plane = 96 * 96
    working = TRAINING_BYTES_PER_PIXEL * 4 * plane + TRAINING_BYTES_PER_PLANE_PIXEL * plane
    assert training_data_bytes(mapped, labels, [0, 1, 2, 3]) == working
    two = TRAINING_BYTES_PER_PIXEL * 2 * plane + TRAINING_BYTES_PER_PLANE_PIXEL * plane
    assert training_data_bytes(mapped, labels, [1, 3]) == two + 2 * 2 * plane  # copies of 2 slices of both
    from napari_unet.data import read_annotated_slices

    stack = read_annotated_slices(mapped, labels, slices=[0, 1, 2, 3])[0]
    assert np.shares_memory(stack, mapped)  # what the estimate relies on: no copy made


# ------------------------------------------------------------------------------------------------ review fixes (s64)

GB = 2**30


def _machine(monkeypatch, tmp_path, ram_gb, swap_gb, available_gb, cgroup_limit_gb=None):
    """The hardware module reading a fake /proc/meminfo (and a fake cgroup v2 tree with ``cgroup_limit_gb``, no swap
    limit): ``ram_gb`` of memory, ``swap_gb`` of swap, ``available_gb`` available now."""
    import functools

    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {ram_gb * 2**20} kB\nMemAvailable: {available_gb * 2**20} kB\n"
                       f"SwapTotal: {swap_gb * 2**20} kB\n")
    where = {"meminfo": str(meminfo), "proc_cgroup": str(tmp_path / "none"), "cgroup_root": str(tmp_path)}
    if cgroup_limit_gb is not None:
        from test_hardware import _fake_cgroup

        where["proc_cgroup"], where["cgroup_root"] = _fake_cgroup(tmp_path, "v2", limit=cgroup_limit_gb * GB, usage=GB,
                                                                  inactive_file=0)
    for name in ("available_memory_bytes", "memory_capacity", "physical_memory"):
        if hasattr(hardware, name):  # (the code before this fix had no physical_memory)
            monkeypatch.setattr(hardware, name, functools.partial(getattr(hardware, name), **where))


@pytest.mark.parametrize("cgroup", [None, 32], ids=["machine", "container"])
def test_a_network_beyond_the_memory_without_swap_is_refused_though_it_fits_with_swap(monkeypatch, tmp_path, cgroup):
    # old: a network larger than RAM but within RAM + swap trained with a warning, every step paging it in and out
    # (the README's depth 6 with 128 filters, 62 GB, on a 32 GB + 32 GB swap workstation)
    from napari_unet.config import ConfigError, ModelConfig
    from napari_unet.model import training_memory_bytes
    from napari_unet.train import check_training_memory

    ram = 64 if cgroup else 32  # a container of 32 GB (its swap as the machine's) on a machine of 64 GB
    _machine(monkeypatch, tmp_path, ram_gb=ram, swap_gb=32, available_gb=30, cgroup_limit_gb=cgroup)
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)  # (on a GPU the network lives there: not refused)
    config = ModelConfig(depth=4, base_filters=16)
    assert 36 * GB < training_memory_bytes(config, 380, 256, True) < 40 * GB  # the network: 39 GB
    where = "the memory limit of this container or job" if cgroup else "this machine's memory"
    with pytest.raises(ConfigError, match=rf"on batches of 380 patches of 256² needs .* GB of memory, more than the "
                                          rf"32.0 GB of {where} \(swap does not count.*lower the batch size"):
        check_training_memory(config, 380, 256, True)
    with pytest.raises(ConfigError, match=r"depth 6, 128 filters.*more than the 32.0 GB.*swap does not count"):
        check_training_memory(ModelConfig(depth=6, base_filters=128), 4, 256, True)  # about 62 GB


def test_a_network_within_the_memory_with_data_beyond_it_but_within_swap_trains_with_a_warning(monkeypatch, tmp_path):
    # the data are read once (they may page); the sum is compared with memory and swap, as before
    from napari_unet.config import ConfigError, ModelConfig
    from napari_unet.hardware import LowMemoryWarning
    from napari_unet.model import training_memory_bytes
    from napari_unet.train import check_training_memory

    _machine(monkeypatch, tmp_path, ram_gb=32, swap_gb=32, available_gb=30)
    config = ModelConfig(depth=4, base_filters=16)
    network = training_memory_bytes(config, 4, 256, True)
    with pytest.warns(LowMemoryWarning, match="training anyway"):
        assert check_training_memory(config, 4, 256, True, data_bytes=40 * GB) is True
    with pytest.raises(ConfigError, match=r"with its data .*more than the 64.0 GB of this machine's memory and swap; "
                                          r"train on fewer annotated slices"):
        check_training_memory(config, 4, 256, True, data_bytes=64 * GB - network + 1)


def test_check_training_memory_takes_what_follows_mixed_precision_by_keyword_only(memory):
    # old: check_training_memory(config, 4, 256, True, free_bytes), written for the signature before session 64 (its
    # fifth argument the memory available), counted the free memory as held already and hid the warning
    from napari_unet.config import ModelConfig
    from napari_unet.train import check_training_memory

    memory(available=GB, capacity=64 * GB)
    with pytest.raises(TypeError):
        check_training_memory(ModelConfig(depth=5, base_filters=32), 4, 256, True, 8 * GB)
    with pytest.warns(hardware.LowMemoryWarning):
        assert check_training_memory(ModelConfig(depth=5, base_filters=32), 4, 256, True, in_use=0) is True


def test_the_first_memory_check_counts_a_kept_trainer_of_the_same_network_for_labels_of_more_classes(monkeypatch):
    # old: it looked the kept trainer up by the preset's 2 classes; a kept trainer of the same network for 3-class
    # labels (OCT layers) was not found, and its weights were counted as still to be allocated (a spurious warning)
    from dataclasses import replace
    from types import SimpleNamespace

    import napari_unet.train as train_module
    from napari_unet.config import to_json
    from napari_unet.model import TRAINING_BASE_BYTES, TRAINING_BYTES_PER_PARAMETER, parameter_count

    image, labels = stripes(n_slices=3, size=64)
    labels = labels.copy()
    labels[:, :8] = 128  # a third class
    model_config, train_config = tiny_configs(epochs=1, steps_per_epoch=1)
    kept = SimpleNamespace(key=(to_json(replace(model_config, n_classes=3)), True, False, ()))
    other = SimpleNamespace(key=(to_json(replace(model_config, n_classes=3, base_filters=16)), True, False, ()))
    monkeypatch.setattr(train_module, "_idle_trainers", [other, kept])
    seen = []

    class Checked(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(kwargs.get("in_use", args[4] if len(args) > 4 else 0))
        raise Checked

    monkeypatch.setattr(train_module, "check_training_memory", spy)
    with pytest.raises(Checked):
        list(train_module.train_events(image, labels, model_config, train_config))
    import sys

    base = TRAINING_BASE_BYTES if "tensorflow" in sys.modules else 0
    assert seen == [int(base + TRAINING_BYTES_PER_PARAMETER * parameter_count(model_config))]
    monkeypatch.setattr(train_module, "_idle_trainers", [other])  # another network: not counted
    seen.clear()
    with pytest.raises(Checked):
        list(train_module.train_events(image, labels, model_config, train_config))
    assert seen == [int(base)]


def test_the_training_data_check_returns_the_bytes_it_estimated(memory):
    from napari_unet.train import check_training_data_memory, training_data_bytes

    memory(available=10**12, capacity=10**12)
    image, labels = stripes(n_slices=4, size=96)
    assert check_training_data_memory(image, labels, [0, 2]) == training_data_bytes(image, labels, [0, 2])


def test_a_network_beyond_the_memory_without_swap_is_not_refused_when_it_trains_on_a_gpu(monkeypatch, tmp_path):
    # review 2 of s64, 10: the network (weights, optimizer state; activations not counted on a GPU) was compared with
    # the host's memory without swap though on a GPU it lives in the GPU's memory. Asked of has_gpu only when it
    # matters (on_gpu=None, the check before the data are read), told by train_events once it knows.
    from napari_unet.config import ConfigError, ModelConfig
    from napari_unet.train import check_training_memory

    _machine(monkeypatch, tmp_path, ram_gb=32, swap_gb=32, available_gb=30)
    big = ModelConfig(depth=6, base_filters=128)  # about 62 GB: beyond 32 GB of memory, within memory and swap
    monkeypatch.setattr(hardware, "has_gpu", lambda: True)
    for kwargs in ({}, {"on_gpu": True}):
        with pytest.warns(hardware.LowMemoryWarning):
            assert check_training_memory(big, 4, 256, True, activations_here=False, **kwargs) is True
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    for kwargs in ({}, {"on_gpu": False}):
        with pytest.raises(ConfigError, match=r"depth 6, 128 filters.*more than the 32.0 GB.*swap does not count"):
            check_training_memory(big, 4, 256, True, activations_here=False, **kwargs)
