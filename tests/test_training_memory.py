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


@pytest.fixture
def memory(monkeypatch):
    """``memory(available, capacity)``: the memory the system reports as available now, and its memory and swap."""
    def set_memory(available, capacity):
        monkeypatch.setattr(hardware, "available_memory_bytes", lambda: available)
        whole = hardware.MemoryCapacity(capacity, "this machine's memory and swap")
        monkeypatch.setattr(hardware, "memory_capacity", lambda: whole)
    return set_memory


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
