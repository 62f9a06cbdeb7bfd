"""What training reads (session 63): its slices and their working copies follow the memory policy of reading data
(refused beyond memory and swap before a slice is read, a LowMemoryWarning beyond 3/4 of the memory available now),
and a damaged page or chunk of a lazily read file found while training names the file, its slice and what was kept
(the command line's ``train`` and the napari widget's training job).

Memory figures are faked (:func:`napari_unet.hardware.available_memory_bytes`, :func:`~napari_unet.hardware.memory_capacity`)."""

import threading
import time

import numpy as np
import pytest
import tifffile

from _helpers import PlanesOnly, damaged_tiff, damaged_zarr, error_line, stripes, tiny_configs, tiny_model
from napari_unet import cli, hardware


@pytest.fixture
def files(tmp_path):
    image, labels = stripes()  # 4 x 96 x 96
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    return tmp_path, image, labels


TRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "64"]


# ------------------------------------------------------------------------------------------------ memory


def test_training_data_beyond_memory_and_swap_are_refused_before_a_slice_is_read(memory):
    # old: the slices were read, normalised, weighted, and only the network was checked (against the memory free)
    from napari_unet.data import InputError
    from napari_unet.train import train_events

    image, labels = stripes(n_slices=4, size=96)
    lazy_image, lazy_labels = PlanesOnly(image), PlanesOnly(labels)  # read only when indexed, as a memory map
    memory(available=200_000, capacity=200_000)
    model_config, train_config = tiny_configs()
    with pytest.raises(InputError, match=r"^image and labels: training on 4 slices of 96 x 96 pixels \(read, with their "
                                         r"working copies\) needs 7\d\d KB of memory, more than the 195 KB of this "
                                         r"machine's memory and swap; train on fewer annotated slices"):
        next(train_events(lazy_image, lazy_labels, model_config, train_config))
    assert lazy_image.reads == [] and lazy_labels.reads == []


def test_the_estimate_counts_copies_only_of_what_is_read(memory):
    from napari_unet.train import TRAINING_BYTES_PER_PIXEL, TRAINING_BYTES_PER_PLANE_PIXEL, training_data_bytes

    image, labels = stripes(n_slices=4, size=96)
    plane = 96 * 96
    working = TRAINING_BYTES_PER_PIXEL * 4 * plane + TRAINING_BYTES_PER_PLANE_PIXEL * plane
    assert training_data_bytes(image, labels, [0, 1, 2, 3]) == working  # in memory, taken whole: views
    assert training_data_bytes(PlanesOnly(image), labels, [0, 1, 2, 3]) == working + 4 * plane  # the image is read
    two = TRAINING_BYTES_PER_PIXEL * 2 * plane + TRAINING_BYTES_PER_PLANE_PIXEL * plane
    assert training_data_bytes(image, labels, [1, 3]) == two + 2 * 2 * plane  # copies of 2 slices of both
    weights = np.ones(labels.shape, np.float64)
    assert training_data_bytes(image, labels, [0, 1, 2, 3], weights) == working + (8 + 4) * 4 * plane


def test_training_data_taking_most_of_the_memory_available_now_are_trained_on_with_a_warning(memory):
    from napari_unet.train import check_training_data_memory

    image, labels = stripes(n_slices=4, size=96)
    memory(available=800_000, capacity=10**9)
    with pytest.warns(hardware.LowMemoryWarning, match=r"^image and labels: training on 4 slices of 96 x 96 pixels .*"
                                                       r"more than 3/4 of the 781 KB available now; training anyway"):
        check_training_data_memory(image, labels, [0, 1, 2, 3])
    memory(available=10**9, capacity=10**9)
    check_training_data_memory(image, labels, [0, 1, 2, 3])  # (filterwarnings error: no warning)


def test_train_refuses_data_beyond_memory_naming_both_files(files, memory, capsys):
    folder, _, _ = files
    memory(available=300_000, capacity=300_000)  # the files (36 KB each) read; their training copies do not fit
    code = cli.main(["train", str(folder / "img.tif"), str(folder / "lab.tif"), "-o", str(folder / "m.keras"), *TRAIN])
    assert code == 2
    line = error_line(capsys)
    assert ("error: image img.tif and labels lab.tif: training on 4 slices of 96 x 96 pixels (read, with their working "
            "copies) needs") in line, line
    assert "more than the 293 KB of this machine's memory and swap; train on fewer annotated slices" in line, line
    assert not (folder / "m.keras").exists()


# ------------------------------------------------------------------------------------------------ read errors


@pytest.mark.parametrize("damaged", ["image", "labels"])
def test_a_damaged_zarr_chunk_found_while_training_names_the_file_its_slice_and_that_no_model_was_written(
        files, capsys, damaged):
    # old: "napari-unet: error: /tmp/.../img.zarr: damaged or unreadable chunk (...)": neither role, slice nor outcome
    folder, image, labels = files
    image_path, labels_path = folder / "img.tif", folder / "lab.tif"
    if damaged == "image":
        image_path = damaged_zarr(folder / "img.zarr", image, 2)
    else:
        labels_path = damaged_zarr(folder / "lab.zarr", labels, 1)
    code = cli.main(["train", str(image_path), str(labels_path), "-o", str(folder / "m.keras"), *TRAIN])
    assert code == 2
    line = error_line(capsys)
    expected = "image img.zarr, slice 2" if damaged == "image" else "labels lab.zarr, slice 1"
    assert f"error: {expected}: damaged or unreadable chunk (" in line, line
    assert line.endswith("; no model written"), line
    assert not (folder / "m.keras").exists()


def test_a_damaged_tiff_page_read_lazily_while_fine_tuning_names_the_slice_and_keeps_the_init_model(files, capsys, memory):
    from napari_unet.model_io import save_model

    folder, image, _ = files
    damaged_tiff(folder / "img_bad.tif", image, 3)  # the header is fine, page 3's zlib stream is not
    init = folder / "init.keras"
    save_model(tiny_model(), init)
    before = init.read_bytes()
    memory(available=40_000, capacity=10**10)  # so little memory now that the stack is read lazily, a page at a time
    code = cli.main(["train", str(folder / "img_bad.tif"), str(folder / "lab.tif"), "-o", str(folder / "m.keras"),
                     "--init", str(init), *TRAIN])
    assert code == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("napari-unet: error:")][-1]
    assert "error: image img_bad.tif, slice 3: corrupt or unsupported TIFF" in line, line
    assert line.endswith(f"; no model written; the --init model {init} is unchanged"), line
    assert init.read_bytes() == before and not (folder / "m.keras").exists()
    # the training's warning beyond 3/4 of the memory available now (its data and network): one line naming both files
    assert "warning: image img_bad.tif and labels lab.tif: training this network (depth 2, 8 filters" in err, err
    assert len([line for line in err.splitlines() if line.startswith("warning: ")]) == 1, err
    assert "LowMemoryWarning" not in err


def test_the_widgets_training_job_names_the_image_and_slice_of_a_damaged_chunk(files, monkeypatch):
    # old: Failed("ZarrReadError: /tmp/.../img.zarr: damaged or unreadable chunk (...)") with a traceback in the log
    from napari_unet._widgets import jobs
    from napari_unet.zarr_io import read_zarr

    folder, image, labels = files
    lazy = read_zarr(damaged_zarr(folder / "img.zarr", image, 2)).data
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)  # (this thread runs the tests)
    model_config, train_config = tiny_configs()
    events = list(jobs.train_job(lazy, labels, model_config, train_config))
    failed = events[-1]
    assert isinstance(failed, jobs.Failed) and failed.read_error, events
    assert failed.message.startswith(f"image, slice 2: {folder / 'img.zarr'}: damaged or unreadable chunk ("), failed.message


@pytest.mark.gui
def test_the_training_widget_says_the_model_is_unchanged_after_a_read_error(widgets, notifications):
    from napari_unet._widgets.jobs import Failed
    from napari_unet._widgets.training import _Run

    training = widgets.training
    widgets.session.model = tiny_model()
    message = "image, slice 2: /data/img.zarr: damaged or unreadable chunk (RuntimeError: Zstd decompression error)"
    training._run = _Run(kind="training", worker=None, stop=threading.Event(), budget=None, names=None, colormap=None,
                         started=time.perf_counter(), steps_per_epoch=10)
    try:
        training._handle(Failed(message, read_error=True))
    finally:
        training._run = None
    assert training.progress.status.text() == f"Training failed: {message}; the current model is unchanged"
    assert any(severity == "error" and message in text for severity, text in notifications), notifications


def test_a_failing_chunk_of_a_stack_read_whole_is_found_and_its_slices_named():
    # a dask array is read in one computation (its chunks decoded in parallel); only after a failure are its chunks read
    # again one at a time, to name the slices of the one that fails
    import dask.array as da

    from napari_unet.data import read_planes
    from napari_unet.zarr_io import ZarrReadError

    class Damaged:
        shape, dtype, ndim = (6, 8, 8), np.dtype(np.uint8), 3

        def __getitem__(self, index):
            if set(np.atleast_1d(np.arange(6)[index[0]])) & {2, 3}:  # the chunk of slices 2 and 3
                raise ZarrReadError("/data/stack.zarr: damaged or unreadable chunk (test)")
            return np.zeros(self.shape, self.dtype)[index]

    stack = da.from_array(Damaged(), chunks=(2, 8, 8), asarray=False)
    with pytest.raises(ZarrReadError) as caught:
        read_planes(stack, name="labels")
    assert caught.value.role == "labels" and list(caught.value.slices) == [2, 3]
    with pytest.raises(ZarrReadError) as caught:
        read_planes(stack, [0, 3, 5])
    assert caught.value.role == "image" and list(caught.value.slices) == [3]
    assert read_planes(stack, [0, 1, 5]).shape == (3, 8, 8)


# ------------------------------------------------------------------------------------------------ review fixes (s63)


@pytest.mark.parametrize("shape", [(10,), ()])
def test_an_image_of_one_or_no_dimension_gets_the_shape_message_not_an_index_error(shape):
    # after 8f22721: IndexError from training_data_bytes (the memory estimate ran before the shape was checked)
    from napari_unet.data import InputError
    from napari_unet.train import train_events

    image = np.zeros(shape, np.uint8)
    with pytest.raises(InputError, match=r"^image has shape \(.*\); expected a 2-D image \(Y, X\) or a stack"):
        next(train_events(image, image.copy()))


def test_pixel_weights_given_as_nested_lists_start_a_training():
    # after 8f22721: AttributeError: 'list' object has no attribute 'dtype' (the memory estimate)
    from napari_unet.train import TrainingStarted, train_events, training_data_bytes

    image, labels = stripes(n_slices=2, size=32)
    weights = np.ones(labels.shape).tolist()
    as_array = training_data_bytes(image, labels, [0, 1], np.ones(labels.shape))
    assert training_data_bytes(image, labels, [0, 1], weights) == as_array + 8 * labels.size  # (+ the float64 array made)
    model_config, train_config = tiny_configs()
    events = train_events(image, labels, model_config, train_config.replace(patch_size=16, batch_size=1),
                          pixel_weights=weights)
    try:
        assert isinstance(next(events), TrainingStarted)
    finally:
        events.close()


def test_the_memory_messages_name_the_data_as_told(memory):
    # the widget names its layers ("image 'em' and labels 'em labels'") where the core said "image and labels"
    from napari_unet.train import check_training_data_memory

    image, labels = stripes(n_slices=4, size=96)
    memory(available=800_000, capacity=10**9)
    with pytest.warns(hardware.LowMemoryWarning, match=r"^image 'em' and labels 'em labels': training on 4 slices"):
        check_training_data_memory(image, labels, [0, 1, 2, 3], data_name="image 'em' and labels 'em labels'")


def test_the_widgets_training_job_names_its_layers_in_the_memory_refusal(memory, monkeypatch):
    from napari_unet._widgets import jobs

    monkeypatch.setattr(jobs, "load_tensorflow", lambda **kwargs: None)
    monkeypatch.setattr(jobs, "lower_thread_priority", lambda: None)  # (this thread runs the tests)
    image, labels = stripes(n_slices=4, size=96)
    memory(available=200_000, capacity=200_000)
    model_config, train_config = tiny_configs()
    (failed,) = jobs.train_job(image, labels, model_config, train_config, data_name="image 'em' and labels 'em labels'")
    assert isinstance(failed, jobs.Failed), failed
    assert failed.message.startswith("image 'em' and labels 'em labels': training on 4 slices"), failed.message


def test_the_train_commands_memory_warning_hook_leaves_the_filters_and_other_threads_alone():
    # it ran the whole training inside warnings.catch_warnings, which resets the filters and "once" registries of every
    # thread (see tiff_io's _tifffile_errors): a filter set during the run was dropped at its end, and another thread's
    # LowMemoryWarning was printed as the command's
    import warnings

    seen = []
    with warnings.catch_warnings():  # (the test's own, around what it changes)
        warnings.simplefilter("always", hardware.LowMemoryWarning)
        warnings.showwarning = lambda message, category, *a, **k: seen.append((threading.current_thread().name, str(message)))
        before = warnings.showwarning
        with cli._low_memory_one_line():
            assert warnings.showwarning is not before
            warnings.filterwarnings("ignore", message="set during the run")
            other = threading.Thread(target=warnings.warn, name="other",
                                     args=("image and labels: another thread's", hardware.LowMemoryWarning))
            other.start()
            other.join()
        assert warnings.showwarning is before
        assert any(f[1] is not None and f[1].pattern == "set during the run" for f in warnings.filters), warnings.filters
    assert seen == [("other", "image and labels: another thread's")]


def test_a_low_memory_warning_of_reading_a_file_is_one_warning_line_naming_it(files, memory, capsys):
    # the hook was installed around training only: the whole read of a file (here the first slice of a folder, which
    # read_slices reads whole for its shape) by evaluate (predict, demo) printed Python's format,
    # "…/tiff_io.py:926: LowMemoryWarning: …" and the line of code
    folder, _, labels = files
    (folder / "truth").mkdir()
    for z, plane in enumerate(labels):  # 9 KB each
        tifffile.imwrite(folder / "truth" / f"z{z}.tif", plane, photometric="minisblack")
    memory(available=10_000, capacity=10**9)  # a slice is more than 3/4 of it; lab.tif (36 KB) is read lazily
    code = cli.main(["evaluate", str(folder / "lab.tif"), str(folder / "truth")])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and str(folder / "truth" / "z0.tif") in lines[0], err
    assert "LowMemoryWarning" not in err and ".py:" not in err, err
