"""``predict``'s refusals (session 64): its one-slice memory check follows the memory policy of the reads (refused beyond
memory and swap, one ``warning:`` line beyond 3/4 of the memory available now; it printed a ``note:``), and every
refusal once the prediction began (the model loaded, slices read, outputs reserved) says that nothing was written and
which outputs already there are unchanged, into TIFF files and zarr stores alike; a refusal before (arguments, an
unreachable --scheduler) says nothing of outputs.

Memory figures are faked (conftest's ``memory``: :func:`napari_unet.hardware.available_memory_bytes`,
:func:`~napari_unet.hardware.memory_capacity`)."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _helpers import run_cli, stripes
from napari_unet import cli


def _errors(err: str) -> list:
    return [line for line in err.splitlines() if line.startswith("napari-unet: error:")]


def test_a_slice_beyond_the_memory_available_now_is_predicted_with_one_warning_line(tmp_path, tiny_model_file, capsys, memory):
    # old: "note: image img.tif: predicting one slice ... : other programs may have to give way, or it runs out of memory"
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    memory(available=2**16, capacity=10**11)  # 5 float32 copies of a 64² slice: 80 KB, more than 3/4 of 64 KB
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif", "--no-tta")
    assert code == 0 and (tmp_path / "pred.tif").exists(), err
    lines = [line for line in err.splitlines() if "predicting one slice" in line]
    assert lines == ["warning: image img.tif: predicting one slice of 64 x 64 pixels (5 float32 copies of it) needs "
                     "80.0 KB of memory, more than 3/4 of the 64.0 KB available now; predicting anyway (close other "
                     "programs if the system slows down)"], err


def _zarr_image(path, image):
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(str(path), mode="w", shape=image.shape, dtype=image.dtype, chunks=(1,) + image.shape[1:])
    store[:] = image
    return store


@pytest.mark.parametrize("kind", ["memmap", "zarr"])
def test_the_slice_memory_check_counts_a_copy_of_the_slice_only_where_its_read_makes_one(tmp_path, memory, kind):
    # old: a memory-mapped slice (a view) counted as a copy, and refused with a memory that holds its float32 copies
    image = np.zeros((2, 100, 100), np.uint16)  # a slice: 20,000 bytes; its 5 float32 copies: 200,000
    if kind == "memmap":
        tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
        image = tifffile.memmap(tmp_path / "img.tif", mode="r")
        assert isinstance(image, np.memmap)
    else:
        image = _zarr_image(tmp_path / "img.zarr", image)
    memory(available=10**12, capacity=210_000)
    if kind == "memmap":
        cli._check_slice_memory(image, Path("img.tif"))
        return
    with pytest.raises(cli.CommandError) as caught:
        cli._check_slice_memory(image, Path("img.zarr"))
    message = str(caught.value)  # refused before anything began: no word about outputs
    assert message.startswith("image img.zarr: predicting one slice of 100 x 100 pixels (it and 5 float32 copies) needs "
                              "215 KB of memory, more than the 205 KB of this machine's memory and swap; cut it"), message
    assert "written" not in message


@pytest.mark.parametrize("output", ["pred.tif", "pred.zarr"])
def test_a_slice_refused_for_nan_says_no_prediction_was_written_and_the_output_there_is_unchanged(tmp_path, tiny_model_file, capsys, output):
    # old: "image nan.tif, slice 1: contains NaN or Inf values; ..." with no word of the output
    image = stripes(n_slices=3, size=64)[0].astype(np.float32)
    image[1, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", image, photometric="minisblack")
    target = tmp_path / output
    if output.endswith(".tif"):
        tifffile.imwrite(target, np.ones((3, 64, 64), np.uint8), photometric="minisblack")
    else:
        _zarr_image(target, np.ones((3, 64, 64), np.uint8))
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "nan.tif", "-o", target, "--no-tta")
    assert code == 2
    [line] = _errors(err)
    assert line.startswith("napari-unet: error: image nan.tif, slice 1: contains NaN or Inf values"), line
    assert line.endswith(f"; no prediction written ({target} is unchanged)"), line
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def test_a_dead_worker_says_no_prediction_was_written(tmp_path, tiny_model_file, capsys, monkeypatch):
    # old: "a dask worker died while predicting (...): ..." with no word of the outputs (the partial stores are removed)
    from napari_unet import chunked

    class KilledWorker(Exception):  # (dask.distributed's, by name)
        pass

    def killed(*args, **kwargs):
        raise KilledWorker("task 3 was lost")
        yield

    monkeypatch.setattr(chunked, "store_events", killed)
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "out.zarr", "--no-tta")
    assert code == 2
    [line] = _errors(err)
    assert line == "napari-unet: error: a dask worker died while predicting (out of memory? fewer threads per worker or " \
                   "--slices-per-chunk 1 may help): task 3 was lost; no prediction written", line
    assert sorted(os.listdir(tmp_path)) == ["img.tif"]


def test_an_output_taken_by_another_program_meanwhile_says_it_is_unchanged(tmp_path, tiny_model_file, capsys, monkeypatch):
    # old: "OUT exists and is not a zarr array; not replaced"
    from napari_unet import zarr_io

    commit = zarr_io.commit_zarr_stores

    def taken(commits, written=None):
        (tmp_path / "out.zarr").write_text("another program's")
        return commit(commits, written)

    monkeypatch.setattr(zarr_io, "commit_zarr_stores", taken)
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "out.zarr", "--no-tta")
    assert code == 2
    [line] = _errors(err)
    out = tmp_path / "out.zarr"
    assert line == f"napari-unet: error: {out} exists and is not a zarr array; no prediction written ({out} is unchanged)", line
    assert out.read_text() == "another program's" and sorted(os.listdir(tmp_path)) == ["img.tif", "out.zarr"]


def test_an_unreachable_scheduler_says_nothing_of_outputs(tmp_path, tiny_model_file, capsys, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(cli, "SCHEDULER_TIMEOUT", "1s")
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "out.zarr",
                           "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2
    [line] = _errors(err)
    assert "cannot reach a dask scheduler" in line and "written" not in line, line


def test_running_out_of_memory_or_disk_while_predicting_says_no_prediction_was_written(tmp_path, tiny_model_file, capsys, monkeypatch):
    # old: "not enough memory (no room); predict holds ..." and "cannot write ...: No space left on device in ...; free
    # some space there or choose another folder", with no word of the outputs (written all or none)
    import errno

    from napari_unet import predict, tiff_io

    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    tifffile.imwrite(tmp_path / "pred.tif", np.ones((2, 64, 64), np.uint8), photometric="minisblack")
    before = (tmp_path / "pred.tif").read_bytes()

    def no_room(*args, **kwargs):
        raise MemoryError("no room")
        yield

    with monkeypatch.context() as patch:
        patch.setattr(predict, "predict_events", no_room)
        code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif", "--no-tta")
    assert code == 1
    [line] = _errors(err)
    assert line.startswith("napari-unet: error: not enough memory (no room); predict holds a whole slice"), line
    assert line.endswith(f"; no prediction written ({tmp_path / 'pred.tif'} is unchanged)"), line

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiff_io, "write_tiff", full)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif",
                           "--probabilities", tmp_path / "probs.tif", "--no-tta")
    assert code == 2
    [line] = _errors(err)
    assert line.startswith(f"napari-unet: error: cannot write {tmp_path / 'pred.tif'}: No space left on device"), line
    assert line.endswith(f"; no prediction written ({tmp_path / 'pred.tif'} is unchanged)"), line
    assert (tmp_path / "pred.tif").read_bytes() == before and sorted(os.listdir(tmp_path)) == ["img.tif", "pred.tif"]


def test_a_network_giving_nan_says_no_prediction_was_written(tmp_path, tiny_model_file, capsys, monkeypatch):
    # old: "the network gave NaN or Inf probabilities on slice 1: ..." with no word of the output
    from napari_unet import predict

    def damaged(*args, **kwargs):
        raise predict.PredictionError("the network gave NaN or Inf probabilities on slice 1: its weights are damaged")
        yield

    monkeypatch.setattr(predict, "predict_events", damaged)
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif", "--no-tta")
    assert code == 2
    [line] = _errors(err)
    assert line == ("napari-unet: error: the network gave NaN or Inf probabilities on slice 1: its weights are damaged; "
                    "no prediction written"), line
    assert sorted(os.listdir(tmp_path)) == ["img.tif"]


def _pair(tmp_path):
    """An image, and -o and --probabilities files of an earlier run (all ones, uint8): their bytes by name."""
    tifffile.imwrite(tmp_path / "img.tif", stripes(n_slices=2, size=64)[0], photometric="minisblack")
    for name in ("pred.tif", "probs.tif"):
        tifffile.imwrite(tmp_path / name, np.ones((2, 64, 64), np.uint8), photometric="minisblack")
    return {name: (tmp_path / name).read_bytes() for name in ("pred.tif", "probs.tif")}


@pytest.mark.parametrize("case", ["put back", "removed", "undo fails"])
def test_a_failed_second_rename_puts_the_first_output_back_or_says_they_do_not_match(tmp_path, tiny_model_file, capsys,
                                                                                     monkeypatch, case):
    # review 2 of s64, 5: a TIFF predict's -o was replaced, then --probabilities' rename failed: new labels stayed
    # beside old probabilities, and the message named neither. Now -o is put back (kept aside until both are in place;
    # "removed": there was none, the new one is removed); should that fail too, the message says which is new.
    import errno

    before = _pair(tmp_path)
    if case == "removed":
        (tmp_path / "pred.tif").unlink()
    real = os.replace

    def flaky(source, destination, *args, **kwargs):
        if str(destination) == str(tmp_path / "probs.tif") or case == "undo fails" \
                and str(source).endswith(".replaced") and str(destination) == str(tmp_path / "pred.tif"):
            raise OSError(errno.EIO, "Input/output error", str(destination))
        return real(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", flaky)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif",
                           "--probabilities", tmp_path / "probs.tif", "--no-tta")
    monkeypatch.undo()
    assert code == 1
    [line] = _errors(err)
    pred, probs = tmp_path / "pred.tif", tmp_path / "probs.tif"
    assert line.startswith(f"napari-unet: error: [Errno 5] Input/output error: '{probs}'"), line
    assert (probs.read_bytes() == before["probs.tif"])
    if case == "undo fails":
        assert line.endswith(f"; {pred} was written, {probs} is unchanged: they do not match, predict again"), line
        assert pred.read_bytes() != before["pred.tif"] and tifffile.imread(pred).shape == (2, 64, 64)
        [aside] = [name for name in os.listdir(tmp_path) if name.endswith(".replaced")]  # the old -o, not lost
        assert (tmp_path / aside).read_bytes() == before["pred.tif"]
    elif case == "removed":
        assert line.endswith(f"; no prediction written ({probs} is unchanged)"), line
        assert sorted(os.listdir(tmp_path)) == ["img.tif", "probs.tif"]
    else:
        assert line.endswith(f"; no prediction written ({pred} and {probs} are unchanged)"), line
        assert pred.read_bytes() == before["pred.tif"]
        assert sorted(os.listdir(tmp_path)) == ["img.tif", "pred.tif", "probs.tif"]


def test_an_old_output_that_cannot_be_put_back_is_named_where_it_is(tmp_path, tiny_model_file, capsys, monkeypatch):
    # review 3 of s64, 6: -o's old file was moved aside, the new one's rename failed and so did the move back: -o was
    # missing (its old file in a hidden sibling), and the message said "no prediction written (probs.tif is unchanged)"
    import errno

    before = _pair(tmp_path)
    pred, probs = tmp_path / "pred.tif", tmp_path / "probs.tif"
    real = os.replace

    def flaky(source, destination, *args, **kwargs):
        if str(destination) == str(pred):
            raise OSError(errno.EIO, "Input/output error", str(destination))
        return real(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", flaky)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", pred,
                           "--probabilities", probs, "--no-tta")
    monkeypatch.undo()
    assert code == 1
    [aside] = [tmp_path / name for name in os.listdir(tmp_path) if name.endswith(".replaced")]
    assert aside.read_bytes() == before["pred.tif"] and not pred.exists() and probs.read_bytes() == before["probs.tif"]
    [line] = _errors(err)
    assert line == (f"napari-unet: error: [Errno 5] Input/output error: '{pred}'; no prediction written ({probs} is "
                    f"unchanged); the old {pred} is at {aside}: rename it back"), line


def test_both_outputs_are_replaced_and_nothing_is_left_aside(tmp_path, tiny_model_file, capsys):
    # (control: the first output kept aside until the second is in place is removed then)
    before = _pair(tmp_path)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif",
                           "--probabilities", tmp_path / "probs.tif", "--no-tta")
    assert code == 0, err
    assert all((tmp_path / name).read_bytes() != data for name, data in before.items())
    assert sorted(os.listdir(tmp_path)) == ["img.tif", "pred.tif", "probs.tif"]


@pytest.mark.parametrize("error", ["oserror", "memory"])
def test_an_error_before_the_prediction_began_says_nothing_of_outputs(tmp_path, tiny_model_file, capsys, monkeypatch, error):
    # review 2 of s64, 8: an unreadable image header (an OSError) or a MemoryError there ended with "; no prediction
    # written (pred.tif is unchanged)", unlike the other refusals before the prediction began
    import errno

    _pair(tmp_path)

    def unreadable(path, *args, **kwargs):
        if error == "memory":
            raise MemoryError("no room")
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(cli, "_read_stack_and_metadata", unreadable)
    code, _, err = run_cli(capsys, "predict", tiny_model_file, tmp_path / "img.tif", "-o", tmp_path / "pred.tif", "--no-tta")
    assert code == 1
    [line] = _errors(err)
    assert "written" not in line and "unchanged" not in line, line
