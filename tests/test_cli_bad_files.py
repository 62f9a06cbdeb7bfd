"""The command line's messages about malformed or hostile input files (session 62's hunt): each names the file and
its role, and says what to do; a slice larger than memory is refused before the model is loaded."""

import errno
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from _helpers import error_line, stripes
from napari_unet import cli


@pytest.fixture
def stack(tmp_path):
    image, labels = stripes()
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    return tmp_path, image, labels


def test_a_complex_image_is_named_when_refused(stack, capsys):
    folder, image, _ = stack
    tifffile.imwrite(folder / "img_complex.tif", image.astype(np.complex64), photometric="minisblack")
    code = cli.main(["train", str(folder / "img_complex.tif"), str(folder / "lab.tif"), "-o", str(folder / "m.keras")])
    assert code == 2
    assert "image img_complex.tif has dtype complex64; expected real numbers" in error_line(capsys)
    assert not (folder / "m.keras").exists()


def test_nan_in_an_image_is_named_when_predicting(stack, tiny_model_file, capsys):
    folder, image, _ = stack
    nan = image.astype(np.float32)
    nan[1, 5, 5] = np.nan
    tifffile.imwrite(folder / "img_nan.tif", nan, photometric="minisblack")
    code = cli.main(["predict", str(tiny_model_file), str(folder / "img_nan.tif"), "-o", str(folder / "pred.tif")])
    assert code == 2
    line = error_line(capsys)
    assert "image img_nan.tif, slice 1: contains NaN or Inf values" in line, line
    assert not (folder / "pred.tif").exists()


def test_nan_in_an_image_is_named_when_training(stack, capsys):
    folder, image, _ = stack
    nan = image.astype(np.float32)
    nan[0, 5, 5] = np.inf
    tifffile.imwrite(folder / "img_inf.tif", nan, photometric="minisblack")
    code = cli.main(["train", str(folder / "img_inf.tif"), str(folder / "lab.tif"), "-o", str(folder / "m.keras"), "--epochs", "1"])
    assert code == 2
    assert "image img_inf.tif" in error_line(capsys)


def test_image_and_labels_of_different_slice_counts_are_both_named(stack, capsys):
    folder, _, labels = stack
    tifffile.imwrite(folder / "lab_3slices.tif", labels[:3], photometric="minisblack")
    code = cli.main(["train", str(folder / "img.tif"), str(folder / "lab_3slices.tif"), "-o", str(folder / "m.keras")])
    assert code == 2
    line = error_line(capsys)
    assert "image img.tif has 4 slices, labels lab_3slices.tif 3" in line, line
    assert "--ignore-value" in line and "crop the image" in line


def test_a_slice_larger_than_memory_is_refused_before_the_model_is_loaded(tmp_path, tiny_model_file, capsys, monkeypatch):
    zarr = pytest.importorskip("zarr")
    from napari_unet import model_io

    # 100000² uint16: 20 GB a slice and 5 float32 copies, no chunk written (a few KB on disk)
    zarr.open_array(tmp_path / "huge.zarr", mode="w", shape=(1, 100000, 100000), dtype="u2", chunks=(1, 4096, 4096))

    def loaded(*args, **kwargs):  # the old code went on to reserve the output and read the slice
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model_io, "load_model", loaded)
    code = cli.main(["predict", str(tiny_model_file), str(tmp_path / "huge.zarr"), "-o", str(tmp_path / "pred.tif")])
    assert code == 2
    line = error_line(capsys)
    assert "image huge.zarr: predicting one slice of 100000 x 100000 pixels" in line, line
    assert "needs" in line and "cut it into smaller images" in line
    assert not (tmp_path / "pred.tif").exists()


class _RefusedMap(np.memmap):
    """A memory map the system refuses (mmap under ulimit -v: a bare "[Errno 12] Cannot allocate memory"); a class, so
    that isinstance(array, np.memmap) still works."""

    def __new__(cls, *args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")


def test_a_refused_memory_map_of_the_output_says_so(tmp_path, monkeypatch):
    import contextlib

    monkeypatch.setattr(np, "memmap", _RefusedMap)
    with contextlib.ExitStack() as stack, pytest.raises(MemoryError) as caught:
        cli.scratch_array(stack, tmp_path, (3, 64, 64), np.uint8)
    text = str(caught.value)
    assert "not enough memory (or address space) to map the output of (3, 64, 64) uint8" in text
    assert "ulimit -v" in text


def test_a_refused_memory_map_is_one_line_with_status_1(stack, tiny_model_file, capsys, monkeypatch):
    folder, _, _ = stack
    monkeypatch.setattr(np, "memmap", _RefusedMap)
    code = cli.main(["predict", str(tiny_model_file), str(folder / "img.tif"), "-o", str(folder / "pred.tif")])
    assert code == 1
    assert "map the output of (4, 96, 96)" in error_line(capsys)


@pytest.mark.parametrize("reader", ["tiff", "zarr"])
def test_a_damaged_slice_found_while_predicting_is_named_with_its_role(stack, tiny_model_file, capsys, monkeypatch, reader):
    from napari_unet import predict as predict_module
    from napari_unet.tiff_io import TiffReadError
    from napari_unet.zarr_io import ZarrReadError

    folder, _, _ = stack
    image = folder / "img.tif"
    error = TiffReadError if reader == "tiff" else ZarrReadError

    def damaged(*args, **kwargs):  # a lazily read page that turns out corrupt
        raise error(f"{image}: corrupt or unsupported TIFF (DeflateError); use an intact copy")
        yield

    monkeypatch.setattr(predict_module, "predict_events", damaged)
    code = cli.main(["predict", str(tiny_model_file), str(image), "-o", str(folder / "pred.tif")])
    assert code == 2
    assert "error: image img.tif: corrupt or unsupported TIFF" in error_line(capsys)


class _Stop(Exception):
    pass


def test_the_demos_one_class_warning_advises_what_the_demo_has(tmp_path, monkeypatch, capsys):
    from napari_unet import train as train_module
    from napari_unet.demo import run_demo

    note = f"the model predicts class 0 on every pixel of slice 3: it has not learnt; {train_module.ONE_CLASS_HINT}"

    def finished(*args, **kwargs):
        yield train_module.TrainingFinished(model=SimpleNamespace(boundary_rule=None, boundary_value=None), reason="completed", best_epoch=1,
                                            steps=3, one_class_note=note)

    monkeypatch.setattr(train_module, "train_events", finished)
    real = cli.run_training

    def then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise _Stop

    monkeypatch.setattr(cli, "run_training", then_stop)
    with pytest.raises(_Stop):
        run_demo(tmp_path / "demo", minutes=0.5, headless=True, seed=2)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "learning rate" not in warnings[0] and "annotations" not in warnings[0]
    assert "--minutes, now 0.5" in warnings[0] and "--seed, now 2" in warnings[0]


def test_readme_names_the_chance_level_warning_among_status_0():
    from pathlib import Path

    import napari_unet

    readme = (Path(napari_unet.__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")  # src/napari_unet
    section = readme.split("Output and exit status", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| 0 |"))
    assert "chance" in row and "kappa" in row


def test_a_damaged_page_met_while_predicting_into_tiff_says_the_output_is_unchanged(tmp_path, tiny_model_file, capsys, monkeypatch):
    from _helpers import damaged_tiff
    from napari_unet import tiff_io

    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # read page by page, as a large file
    damaged_tiff(tmp_path / "img.tif", stripes(n_slices=10, size=64)[0], 7)  # (the intensity check reads 0, 1, 3-6, 8, 9)
    (tmp_path / "pred.tif").write_bytes(b"the user's file")
    code = cli.main(["predict", str(tiny_model_file), str(tmp_path / "img.tif"), "-o", str(tmp_path / "pred.tif"), "--no-tta"])
    assert code == 2
    line = error_line(capsys)
    assert line.startswith("napari-unet: error: image img.tif, slice 7: corrupt or unsupported TIFF"), line
    assert line.endswith(f"; no prediction written ({tmp_path / 'pred.tif'} is unchanged)"), line
    assert (tmp_path / "pred.tif").read_bytes() == b"the user's file" and sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "pred.tif"]
