import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _helpers import record_tta, run_cli as run, stripes, tiny_model, write_stripes_stack
from napari_unet.cli import main
from napari_unet.model_io import FORMAT_VERSION, METADATA_ENTRY, load_model, read_metadata, save_model
from napari_unet.tiff_io import read_tiff

TINY_STEPS = ["--epochs", "2", "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2"]  # the preset's network
# depth 2: a new training network traces in about half the time of the preset's depth 4 (5 s against 8.5 s here)
TINY_TRAINING = [*TINY_STEPS, "--depth", "2"]


@pytest.fixture
def data(tmp_path):
    return write_stripes_stack(tmp_path)


def test_train_predict_evaluate_round_trip(data, capsys):
    code, out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["validation_slices"] == [3] and 0 <= scores["pixel_error"] <= 1
    assert "v_rand" in scores and "ETA" in err
    code, out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "probs.tif")
    assert code == 0 and "replaced" not in err, err
    predicted = tifffile.imread(data / "p.tif")
    assert predicted.shape == (4, 64, 64) and predicted.dtype == np.uint8
    assert set(np.unique(predicted)) <= {0, 255}
    probs = tifffile.imread(data / "probs.tif")
    assert probs.dtype == np.float32 and probs.shape == (4, 2, 64, 64)
    code, out, err = run(capsys, "evaluate", data / "p.tif", data / "labels.tif")
    assert code == 0, err
    assert set(json.loads(out)) >= {"pixel_error", "dice", "v_rand", "v_info"}
    # outputs were replaced without a word
    code, out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta")
    assert code == 0 and f"wrote {data / 'p.tif'} (4, 64, 64) uint8 (axes ZYX); it replaced the file of that name" in err, err


def test_train_scores_large_slices_on_the_window_validation_scored(data, capsys, monkeypatch):
    # the scores of 4 x 2048² validation slices took a third prediction of whole slices, with test-time augmentation
    from napari_unet import predict as predict_module, train as train_module

    monkeypatch.setattr(train_module, "VALIDATION_PIXELS", 32 * 32)
    monkeypatch.setattr(train_module, "VALIDATION_MIN_SIDE", 16)
    shapes = []
    real_predict = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda model, image, **k: shapes.append(np.shape(image)) or real_predict(model, image, **k))
    code, out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["validation_slices"] == [3] and scores["validation_window"] == [16, 48, 16, 48]
    assert "validating on slices [3] (a window of 32 x 32 pixels, rows 16-47 and columns 16-47" in err
    assert shapes == [(1, 32, 32)]  # the command's own prediction for the scores: the window of slice 3
    from napari_unet.data import normalize
    from napari_unet.metrics import evaluate
    from napari_unet.model_io import load_model

    # the window of the whole slice normalised, as validation saw it (the window normalised on its own had other
    # percentiles)
    model, window = load_model(data / "m.keras"), (slice(None), slice(16, 48), slice(16, 48))
    whole = normalize(tifffile.imread(data / "image.tif"), model.percentiles, model.config.local_contrast_sigma)[window]
    predicted = real_predict(model, whole[3:], normalized=True).labels
    expected = evaluate(predicted, tifffile.imread(data / "labels.tif")[3:][window], [0, 255])
    assert scores["pixel_error"] == pytest.approx(expected["pixel_error"]) and scores["v_rand"] == pytest.approx(expected["v_rand"])


def train_on_one_image(tmp_path, capsys):
    """``napari-unet train`` on one 128² image (an OCT B-scan's case): its exit code, stdout and stderr."""
    image, labels = stripes(n_slices=1, size=128)
    tifffile.imwrite(tmp_path / "scan.tif", image[0])
    tifffile.imwrite(tmp_path / "layers.tif", labels[0])
    return run(capsys, "train", tmp_path / "scan.tif", tmp_path / "layers.tif", "-o", tmp_path / "m.keras", *TINY_STEPS)


def test_train_scores_one_large_image_on_the_window_of_its_held_out_columns(tmp_path, capsys, monkeypatch):
    from napari_unet import train as train_module

    monkeypatch.setattr(train_module, "VALIDATION_PIXELS", 48 * 24)
    monkeypatch.setattr(train_module, "VALIDATION_MIN_SIDE", 16)
    code, out, err = train_on_one_image(tmp_path, capsys)
    assert code == 0, err
    scores = json.loads(out)
    y0, y1, x0, x1 = scores["validation_window"]
    assert scores["validation_columns"] == [96, 128] and (x0, x1) == (96, 128) and (y1 - y0) * (x1 - x0) <= 48 * 24
    assert 0 <= scores["pixel_error"] <= 1


def test_train_says_when_it_finishes_the_model_even_right_after_a_step(data, capsys):
    # in a log (stderr not a terminal: a progress line per 10 s) the message followed the last step too soon and was
    # dropped, leaving the finishing (minutes for large slices) unexplained
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert "completed after 10 steps; finishing the model, choosing the membrane rule..." in err, err


def test_train_on_one_image_prints_the_scores_of_its_held_out_columns(tmp_path, capsys):
    # one OCT B-scan validates on its last columns; nothing was printed
    code, out, err = train_on_one_image(tmp_path, capsys)
    assert code == 0, err
    scores = json.loads(out)
    column = scores["validation_columns"][0]
    assert scores["validation_columns"] == [column, 128] and f"validating on columns {column}" in err
    assert 0 <= scores["pixel_error"] <= 1 and set(scores["dice"]) == {"0", "255"}


def test_a_band_mask_trains_without_a_membrane_and_its_validation_has_no_isbi_scores(tmp_path, capsys):
    # an OCT mask of one thin layer (RPE = 1, rest = 0): the model took the band as membranes while the validation
    # scored the smaller value (vitreous and choroid) as the membrane: V_rand 0.9996 and 0.76 for one validation
    from napari_unet.model_io import load_model
    from napari_unet.synthetic import make_oct_stack

    image, labels = make_oct_stack(2, (64, 128), seed=2)
    band = (labels == 8).astype(np.uint8)
    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "band.tif", band)
    code, out, err = run(capsys, "train", tmp_path / "scan.tif", tmp_path / "band.tif", "-o", tmp_path / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert load_model(tmp_path / "m.keras").boundary_value is None and "membrane rule" not in err
    scores = json.loads(out)
    assert "v_rand" not in scores and set(scores["dice"]) == {"0", "1"}


def test_oct_layers_train_upright_unless_rotations_are_asked_for(tmp_path, capsys):
    from napari_unet.model_io import load_model
    from napari_unet.synthetic import make_oct_stack

    image, labels = make_oct_stack(1, (64, 128), seed=2)
    tifffile.imwrite(tmp_path / "scan.tif", image[0])
    tifffile.imwrite(tmp_path / "layers.tif", labels[0])
    code, out, err = run(capsys, "train", tmp_path / "scan.tif", tmp_path / "layers.tif", "-o", tmp_path / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert "no 90-degree rotations: the labels are layered top to bottom" in err and "--rotations to choose" in err
    assert "preparing" not in err  # a small image: its first line is about the training
    assert load_model(tmp_path / "m.keras").train_config.augment_rotations is False
    assert json.loads(out)["tta_views"] in (1, 2)  # scored as predict does: upright views only
    assert set(json.loads(out)["boundary_error_px"]) == {f"{k}|{k + 1}" for k in range(labels.max())} | {"mean"}
    assert "boundary_error_um" not in json.loads(out)  # no pixel size
    tifffile.imwrite(tmp_path / "scan-um.tif", image[0], imagej=True, metadata={"unit": "um"}, resolution=(1 / 14.2, 1 / 3.87))
    code, out, err = run(capsys, "train", tmp_path / "scan-um.tif", tmp_path / "layers.tif", "-o", tmp_path / "u.keras", *TINY_TRAINING)
    assert code == 0, err
    scores = json.loads(out)  # a calibrated B-scan: its boundary errors in µm too (they were in rows only)
    assert scores["boundary_error_um"]["mean"] == pytest.approx(scores["boundary_error_px"]["mean"] * 3.87)
    code, out, err = run(capsys, "train", tmp_path / "scan.tif", tmp_path / "layers.tif", "-o", tmp_path / "f.keras",
                         "--init", tmp_path / "u.keras", *TINY_STEPS)
    assert code == 0, err
    assert "boundary_error_um" not in json.loads(out)  # an uncalibrated scan: not in the init model's µm
    code, _, err = run(capsys, "train", tmp_path / "scan.tif", tmp_path / "layers.tif", "-o", tmp_path / "r.keras", "--rotations", "on", *TINY_TRAINING)
    assert code == 0, err
    assert "90-degree" not in err and load_model(tmp_path / "r.keras").train_config.augment_rotations is True


def test_evaluate_gives_layer_boundary_errors_in_microns_of_the_prediction_files_pixel_height(tmp_path, capsys):
    from napari_unet.synthetic import make_oct_stack
    from napari_unet.tiff_io import write_tiff

    _, labels = make_oct_stack(1, (64, 128), seed=2)
    truth = labels[0]
    deeper = np.concatenate([truth[:2], truth[:-2]])  # every boundary 2 rows deeper
    tifffile.imwrite(tmp_path / "layers.tif", truth)
    write_tiff(tmp_path / "p.tif", deeper, {"scale": [3.5, 10.0], "units": ["µm", "µm"]})
    code, out, err = run(capsys, "evaluate", tmp_path / "p.tif", tmp_path / "layers.tif")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["layer_order"] == sorted(np.unique(truth).tolist())
    assert scores["boundary_error_px"]["mean"] == 2.0 and scores["boundary_error_um"]["mean"] == 7.0
    assert scores["pixel_height_um"] == 3.5 and "at 3.5 µm per row, the pixel height p.tif records" in err
    code, out, err = run(capsys, "evaluate", tmp_path / "p.tif", tmp_path / "layers.tif", "--pixel-height", "2")
    assert code == 0 and json.loads(out)["boundary_error_um"]["mean"] == 4.0
    tifffile.imwrite(tmp_path / "plain.tif", deeper)  # no pixel size recorded: rows only
    code, out, err = run(capsys, "evaluate", tmp_path / "plain.tif", tmp_path / "layers.tif")
    assert code == 0 and "boundary_error_um" not in json.loads(out) and json.loads(out)["boundary_error_px"]["mean"] == 2.0
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "layers.tif"), "--pixel-height", "0"])
    assert "must be a finite number above 0" in capsys.readouterr().err
    code, out, err = run(capsys, "evaluate", tmp_path / "p.tif", tmp_path / "layers.tif", "--pixel-height", "1e308")
    assert code == 2 and not out and "beyond 1e+06 µm" in err  # its errors in µm were Infinity, which is not JSON
    write_tiff(tmp_path / "far.tif", deeper, {"scale": [2e6, 10.0], "units": ["µm", "µm"]})  # a tag from another unit
    code, out, err = run(capsys, "evaluate", tmp_path / "far.tif", tmp_path / "layers.tif")
    assert code == 0 and "boundary_error_um" not in json.loads(out) and "a pixel height of 2e+06 µm" in err


def test_evaluate_refuses_an_image_as_prediction_and_notes_only_scored_values(data, capsys):
    truth = tifffile.imread(data / "labels.tif")
    intensities = np.random.default_rng(0).integers(0, 256, truth.shape).astype(np.uint8)
    tifffile.imwrite(data / "intensities.tif", intensities, photometric="minisblack")
    code, out, err = run(capsys, "evaluate", data / "intensities.tif", data / "labels.tif")  # arguments swapped
    assert code == 2 and not out and "prediction intensities.tif has 256 distinct values: an image, not labels?" in err
    sparse = truth.copy()
    sparse[:, :, :8] = 7  # not annotated
    prediction = truth.copy()
    prediction[:, :, :8] = 3  # no class, but only where the truth is not annotated: not scored
    tifffile.imwrite(data / "sparse.tif", sparse, photometric="minisblack")
    tifffile.imwrite(data / "p.tif", prediction, photometric="minisblack")
    code, out, err = run(capsys, "evaluate", data / "p.tif", data / "sparse.tif", "--ignore-value", "7")
    assert code == 0 and "no class of the truth" not in err and json.loads(out)["pixel_error"] == 0.0


def test_a_complex_image_is_refused_without_a_python_warning(data, capsys, recwarn):
    save_model(tiny_model(), data / "m.keras")
    tifffile.imwrite(data / "complex.tif", np.ones((2, 64, 64), np.complex64))
    code, out, err = run(capsys, "predict", data / "m.keras", data / "complex.tif", "-o", data / "p.tif")
    assert code == 2 and "dtype complex64; expected real numbers" in err
    assert "ComplexWarning" not in err and not [w for w in recwarn if "complex" in str(w.message).lower()]


def test_options_a_model_cannot_honour_are_noted_and_an_image_is_no_truth(data, capsys):
    import dataclasses

    model = tiny_model()
    save_model(dataclasses.replace(model, boundary_value=None, boundary_rule=None), data / "layers.keras")  # like OCT
    code, _, err = run(capsys, "predict", data / "layers.keras", data / "image.tif", "-o", data / "p.tif", "--close-boundaries", "--tile-size", "32")
    assert code == 0, err
    assert "--close-boundaries ignored: this model has no thin boundary class" in err  # was a silent no-op
    assert "--tile-size 32 is smaller than the 64-pixel patches" in err
    intensities = np.random.default_rng(0).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    tifffile.imwrite(data / "scan.tif", intensities, photometric="minisblack")
    code, out, err = run(capsys, "evaluate", data / "p.tif", data / "scan.tif")
    assert code == 2 and "256 distinct values: an image, not labels?" in err and not out  # 256 "classes" were scored


def test_progress_line_never_passes_100_percent():
    import io

    from napari_unet.cli import ProgressLine

    stream = io.StringIO()
    ProgressLine(stream).show(2.117, "epoch 1 step 1", force=True)  # a time budget overrun
    assert "100.0%" in stream.getvalue() and "211" not in stream.getvalue()
    # the last progress a throttled line skipped is shown at the end (a log's last line stayed at 98.6 %)
    stream = io.StringIO()
    progress = ProgressLine(stream)
    for tile in range(1, 217):
        progress.show(tile / 216, f"tile {tile}/216")
    assert "tile 216/216" not in stream.getvalue()
    progress.done()
    assert stream.getvalue().splitlines()[-1].endswith("100.0% tile 216/216")


def test_progress_line_fits_one_terminal_row_and_speaks_plainly_to_a_dumb_terminal(monkeypatch):
    """105-120 characters in an 80-column terminal: each update left a wrapped row behind (two a second) and the ETA at
    its end was cut off; TERM=dumb consoles (Emacs' shell) showed ESC[K as text."""
    import io

    import napari_unet.cli as cli

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    text = "epoch 9 step 83 loss 0.4847 val_loss 0.2348 * elapsed 12:07 ETA 0:02"
    monkeypatch.setattr(cli, "_columns", lambda stream: 80)
    monkeypatch.setenv("TERM", "xterm")
    stream = Terminal()
    cli.ProgressLine(stream).show(0.856, text, force=True)
    line = stream.getvalue().removeprefix("\r").removesuffix("\x1b[K")
    assert len(line) <= 79 and line.endswith("ETA 0:02") and "85.6%" in line, line
    monkeypatch.setattr(cli, "_columns", lambda stream: 200)
    stream = Terminal()
    cli.ProgressLine(stream).show(0.5, text, force=True)
    assert stream.getvalue().startswith("\r[" + "#" * 12 + "." * 12 + "]")  # room: the whole bar
    monkeypatch.setenv("TERM", "dumb")
    stream = Terminal()
    progress = cli.ProgressLine(stream)
    progress.show(0.5, text, force=True)
    progress.show(0.6, "tile 1/2", force=True)
    assert "\x1b" not in stream.getvalue() and stream.getvalue().split("\r")[-1].rstrip().endswith("tile 1/2")
    assert len(stream.getvalue().split("\r")[-1]) == len(stream.getvalue().split("\r")[-2])  # the longer line blanked


def test_predict_tta_flags_force_test_time_augmentation_on_and_off(data, capsys, monkeypatch):
    save_model(tiny_model(), data / "m.keras")
    seen = record_tta(monkeypatch)
    probabilities = {}
    for flag in ("--tta", "--no-tta"):
        seen.clear()
        out = data / f"probs{flag}.tif"
        code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", out, flag)
        assert code == 0, err
        assert set(seen) == {4 if flag == "--tta" else 1}
        probabilities[flag] = tifffile.imread(out)
    assert np.abs(probabilities["--tta"] - probabilities["--no-tta"]).max() > 1e-3
    seen.clear()  # --tta-views wins over --no-tta
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta", "--tta-views", "2")
    assert code == 0, err
    assert set(seen) == {2}
    with pytest.raises(SystemExit):  # argparse: 3 is not a choice
        run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--tta-views", "3")


def test_fine_tuning_from_a_model_file(data, capsys):
    save_model(tiny_model(), data / "init.keras")
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "tuned.keras", "--init", data / "init.keras", *TINY_STEPS)
    assert code == 0, err
    assert (data / "tuned.keras").exists()


def test_local_contrast_option_is_stored_in_the_model_and_must_match_an_init_model(data, capsys):
    from napari_unet.model_io import load_model

    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--local-contrast", "6", *TINY_TRAINING)
    assert code == 0, err
    assert load_model(data / "m.keras").config.local_contrast_sigma == 6.0
    save_model(tiny_model(), data / "init.keras")  # trained without local contrast
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "t.keras", "--init", data / "init.keras", "--local-contrast", "6", *TINY_STEPS)
    assert code == 2 and "--local-contrast 6 differs from the --init model's 0" in err
    assert not (data / "t.keras").exists()


def test_depth_option_is_stored_in_the_model_and_must_match_an_init_model(data, capsys):
    from napari_unet.model_io import load_model

    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--depth", "3", *TINY_STEPS)
    assert code == 0, err
    assert load_model(data / "m.keras").config.depth == 3
    save_model(tiny_model(), data / "init.keras")  # depth 2
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "t.keras", "--init", data / "init.keras", "--depth", "3", *TINY_STEPS)
    assert code == 2 and "--depth 3 differs from the --init model's 2" in err
    assert not (data / "t.keras").exists()
    with pytest.raises(SystemExit):  # argparse: not 1..6
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "d.keras", "--depth", "7", *TINY_STEPS)
    assert "--depth: must be 1..6" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a whole number >= 1
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "d.keras", "--depth", "0")


def test_slices_left_blank_in_a_mask_are_named_with_the_option_that_leaves_them_out(data, capsys):
    """A mask of napari's own writer (0 = not painted, 1 and 2 the classes) painted on two slices of six trained its
    blank slices as a class 0 without a word, and validated on them (pixel error 0.81)."""
    image, labels = stripes(n_slices=6, size=64)
    painted = np.zeros_like(labels)
    painted[[0, 3]] = np.where(labels[[0, 3]] == 0, 1, 2)
    tifffile.imwrite(data / "wide.tif", image, photometric="minisblack")
    tifffile.imwrite(data / "painted.tif", painted, photometric="minisblack")
    code, _, err = run(capsys, "train", data / "wide.tif", data / "painted.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert ("note: slices 1-2 and 4-5 of the labels hold only the value 0, on every pixel: each is learnt as all class 0; "
            "if the value marks slices that are not annotated, train with it as not annotated (--ignore-value to choose)") in err


class _Recorded(Exception):
    """Raised by a stand-in of the CLI's training: the configs it was given are what the test checks."""


def test_default_depth_follows_the_budget_and_the_compute(data, capsys, monkeypatch):
    from napari_unet import cli, hardware
    from napari_unet.model_io import load_model

    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}))
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "f.keras", "--max-minutes", "30", "--float32", *TINY_STEPS)
    assert code == 0, err
    assert load_model(data / "f.keras").config.depth == 4 and "depth 5" not in err
    # the settings below are chosen before training, which they would make a minute long here (bfloat16 and depth 5
    # on a CPU without either); the model file records the configs it is given (test_depth_option_is_stored_...)
    configs = []

    def recorded(image, labels, model_config, train_config, **kwargs):
        configs.append((model_config, train_config))
        raise _Recorded

    monkeypatch.setattr(cli, "run_training", recorded)
    with pytest.raises(_Recorded):  # bfloat16 on this (faked) CPU: depth 5, and the command says so
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--max-minutes", "30", *TINY_STEPS)
    err = capsys.readouterr().err
    assert configs[-1][0].depth == 5 and "depth 5: a budget of 30 minutes with AMX" in err
    assert "noise augmentation: on" in err and configs[-1][1].augment_noise == "auto"  # resolved by the core (test_config)
    assert "merge levels up to 0.7" in err and configs[-1][1].merge_levels == "auto"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    # float32 CPU: depth 4; each setting given is kept and not announced
    with pytest.raises(_Recorded):
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "a.keras", "--max-minutes", "30", "--augment-noise", "0.05", "--merge-levels", "0.5,0.6", *TINY_STEPS)
    err = capsys.readouterr().err
    model_config, train_config = configs[-1]
    assert model_config.depth == 4 and "depth 5" not in err
    assert train_config.augment_noise == 0.05 and "noise augmentation" not in err
    assert train_config.merge_levels == (0.5, 0.6) and "merge levels" not in err
    with pytest.raises(_Recorded):
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "e.keras", "--max-minutes", "30", "--depth", "3", *TINY_STEPS)
    assert configs[-1][0].depth == 3 and "noise augmentation: on" in capsys.readouterr().err  # depth given, noise still auto
    with pytest.raises(SystemExit) as exited:  # argparse
        run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "x.keras", "--merge-levels", "0.5,1.5")
    assert exited.value.code == 2 and "between 0 and 1" in capsys.readouterr().err and not (data / "x.keras").exists()


def bad_inputs(tmp_path):
    image, labels = stripes(n_slices=2, size=32)
    files = {
        "image": (image, None),
        "labels": (labels, None),
        "short_labels": (labels[:1], None),
        "one_value": (np.full_like(labels, 255), None),
        "nan_image": (np.where(image > 100, np.nan, 1.0).astype(np.float32), None),
        "rgb": (np.zeros((32, 32, 3), np.uint8), {"photometric": "rgb"}),
    }
    files["probabilities"] = (np.linspace(0, 1, image.size, dtype=np.float32).reshape(image.shape), None)
    for name, (array, kwargs) in files.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", array, **(kwargs or {"photometric": "minisblack"}))
    (tmp_path / "notes.tif").write_text("not a tiff")
    (tmp_path / "slices").mkdir()
    for z in range(2):
        tifffile.imwrite(tmp_path / "slices" / f"z{z}.tif", image[z])
    if hasattr(os, "mkfifo"):  # POSIX
        os.mkfifo(tmp_path / "pipe.tif")
    return tmp_path


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "missing.tif", "labels.tif", "-o", "m.keras"], "does not exist"),
        (["train", "notes.tif", "labels.tif", "-o", "m.keras"], "notes.tif"),
        (["train", "image.tif", "short_labels.tif", "-o", "m.keras"], "differ"),
        (["train", "image.tif", "one_value.tif", "-o", "m.keras"], "labels one_value.tif contain only the value 255"),
        (["train", "nan_image.tif", "labels.tif", "-o", "m.keras"], "NaN"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--ignore-value", "0", "--val-fraction", "0"], "two classes"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--patch-size", "40"], "not a multiple of 16"),
        (["predict", "model.keras", "rgb.tif", "-o", "p.tif"], "channels"),
        (["evaluate", "image.tif", "rgb.tif"], "map each colour to its class value"),  # not "convert it to grayscale"
        (["predict", "notes.tif", "image.tif", "-o", "p.tif"], "not a .keras"),
        (["evaluate", "image.tif", "short_labels.tif"], "differ"),
        (["evaluate", "image.tif", "one_value.tif", "--ignore-value", "255"], "no annotated pixel"),
        (["train", "image.tif", "labels.tif", "-o", "missing_folder/m.keras"], "does not exist"),
        (["train", "image.tif", "labels.tif", "-o", "."], "is a folder"),
        (["predict", "model.keras", "image.tif", "-o", "missing_folder/p.tif"], "does not exist"),
        (["predict", "model.keras", "image.tif", "-o", "p.tif", "--probabilities", "missing_folder/q.tif"], "does not exist"),
        (["predict", "model.keras", "image.tif", "-o", "p.tif", "--probabilities", "p.tif"], "another file"),
        (["predict", "model.keras", "image.tif", "-o", "image.tif"], "would overwrite the input"),
        (["predict", "model.keras", "slices", "-o", "p.tif", "--probabilities", "slices/z0.tif"], "would overwrite the input 'slices' (its folder)"),
        (["predict", "model.keras", "image.tif", "-o", "model.keras"], "must end in .tif or .tiff"),
        (["predict", "model.keras", "image.tif", "-o", "pipe.tif"], "not a regular file"),
        (["train", "image.tif", "labels.tif", "-o", "model.keras", "--init", "model.keras"], "would overwrite the input"),
        (["train", "image.tif", "labels.tif", "-o", "/proc/m.keras"], "folder '/proc' is not writable (it takes no new files)"),
        (["train", "image.tif", "labels.tif", "-o", ".keras"], "must be a name ending in .keras"),  # "got '.keras'"
        (["evaluate", "probabilities.tif", "labels.tif"], "a probability map?"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_no_output(tmp_path, capsys, monkeypatch, argv, words):
    if "pipe.tif" in argv and not hasattr(os, "mkfifo"):
        pytest.skip("named pipes are POSIX")
    bad_inputs(tmp_path)
    save_model(tiny_model(), tmp_path / "model.keras")
    monkeypatch.chdir(tmp_path)
    before = set(p.name for p in tmp_path.iterdir())
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("napari-unet: error:") and words in lines[0], err
    assert "Traceback" not in err
    assert set(p.name for p in tmp_path.iterdir()) == before, "no output file written"


def test_labels_saved_from_napari_keep_their_unannotated_pixels_and_corrections(tmp_path, capsys):
    """The CLI reads what the napari-unet writer records: the value of unannotated pixels, and for a saved
    prediction layer which pixels were painted or reviewed (only those count, as in napari)."""
    from napari_unet._writer import write_labels
    from napari_unet.cli import read_label_stack
    from napari_unet.labels import to_display

    image, labels = stripes(n_slices=2, size=32)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "truth.tif", labels, photometric="minisblack")
    display = to_display(labels, [0, 255])
    sparse = display.copy()
    sparse[0, :8] = 0  # not annotated
    write_labels(str(tmp_path / "sparse.tif"), sparse, {"metadata": {"class_values": [0, 255]}})
    values, ignore, notes = read_label_stack(tmp_path / "sparse.tif", "labels")
    assert ignore not in (0, 255) and len(notes) == 1 and f"value {ignore} = not annotated" in notes[0]
    np.testing.assert_array_equal(values == ignore, sparse == 0)
    assert read_label_stack(tmp_path / "sparse.tif", "labels", ignore_value=7)[1] == 7  # the option wins
    code, out, err = run(capsys, "evaluate", tmp_path / "truth.tif", tmp_path / "sparse.tif")
    assert code == 0, err
    assert json.loads(out)["annotated_pixels"] == int((sparse > 0).sum()) and json.loads(out)["pixel_error"] == 0

    reviewed = np.zeros(labels.shape, bool)
    reviewed[1, 4:20, 4:20] = True
    tracking = {"output": "prediction", "image": "image", "reviewed": reviewed}
    write_labels(str(tmp_path / "corrected.tif"), display, {"metadata": {"class_values": [0, 255], "napari_unet": tracking}})
    values, ignore, notes = read_label_stack(tmp_path / "corrected.tif", "labels")
    np.testing.assert_array_equal(values, np.where(reviewed, labels, ignore))
    assert ignore not in (0, 255) and "only its 256 painted or reviewed pixels count" in notes[-1]
    values, ignore, _ = read_label_stack(tmp_path / "corrected.tif", "labels", ignore_value=300)  # beyond uint8
    assert ignore == 300 and values.dtype == np.uint16
    np.testing.assert_array_equal(values, np.where(reviewed, labels.astype(np.uint16), 300))

    write_labels(str(tmp_path / "uncorrected.tif"), display, {"metadata": {"class_values": [0, 255], "napari_unet": {"output": "prediction", "image": "image"}}})
    code, _, err = run(capsys, "train", tmp_path / "image.tif", tmp_path / "uncorrected.tif", "-o", tmp_path / "m.keras")
    assert code == 2 and "no painted or reviewed pixel" in err and "Traceback" not in err
    assert not (tmp_path / "m.keras").exists()


def test_interrupted_training_writes_no_model(data, capsys, monkeypatch):
    import napari_unet.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_training", interrupted)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras")
    assert code == 130 and "no output file" in err
    assert not (data / "m.keras").exists()


def test_output_folders_are_checked_before_any_training(data, capsys, monkeypatch):
    import napari_unet.cli as cli

    def fail(*args, **kwargs):
        raise AssertionError("trained although the model file cannot be written")

    monkeypatch.setattr(cli, "run_training", fail)
    def read_only(*args, **kwargs):  # a read-only mount, where os.access still says yes to root
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras")
    assert code == 2 and "is not writable" in err and not (data / "m.keras").exists()


@pytest.mark.parametrize("option", ["--tile-size", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_tile_and_batch_sizes_must_be_positive_whole_numbers(data, capsys, option, value):
    save_model(tiny_model(), data / "m.keras")
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line, status 2
        run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and ("at least 1" in err or "whole number" in err) and "Traceback" not in err
    assert not (data / "p.tif").exists()


def test_probabilities_file_has_named_class_axis_and_both_files_or_none_are_written(data, capsys, monkeypatch):
    from napari_unet.tiff_io import read_tiff

    save_model(tiny_model(), data / "m.keras")
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif")
    assert code == 0, err
    probs = read_tiff(data / "q.tif")
    assert probs.axes == "ZCYX" and probs.data.shape == (4, 2, 64, 64)
    tifffile.imwrite(data / "one.tif", tifffile.imread(data / "image.tif")[0], photometric="minisblack")
    code, _, err = run(capsys, "predict", data / "m.keras", data / "one.tif", "-o", data / "p1.tif", "--probabilities", data / "q1.tif")
    assert code == 0, err
    assert read_tiff(data / "q1.tif").axes == "CYX"

    import napari_unet.tiff_io as tiff_io

    labels_before = (data / "p.tif").read_bytes()
    real_write = tiff_io.write_tiff
    calls = []

    def second_write_interrupted(path, array, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(path, array, metadata)

    monkeypatch.setattr(tiff_io, "write_tiff", second_write_interrupted)
    names_before = sorted(p.name for p in data.iterdir())
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif", "--argmax")
    assert code == 130 and "no output file was written" in err and len(calls) == 2
    assert (data / "p.tif").read_bytes() == labels_before, "the finished labels file did not replace the old one"
    assert sorted(p.name for p in data.iterdir()) == names_before, "no partial file left behind"


def test_predict_reads_and_writes_a_stack_a_slice_at_a_time(data, capsys, monkeypatch):
    """Stacks larger than memory: slices read when predicted, results in scratch files written out page by page."""
    import napari_unet.tiff_io as tiff_io
    from napari_unet.model_io import load_model
    from napari_unet.predict import predict

    save_model(tiny_model(), data / "m.keras")
    image = tifffile.imread(data / "image.tif")
    tifffile.imwrite(data / "zlib.tif", image, compression="zlib", photometric="minisblack")
    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # the test stack is small
    pages_read = []
    real_read_page = tiff_io._read_page
    monkeypatch.setattr(tiff_io, "_read_page", lambda path, index, offset: pages_read.append(index) or real_read_page(path, index, offset))
    written = []
    real_write = tiff_io.write_tiff
    monkeypatch.setattr(tiff_io, "write_tiff", lambda path, array, metadata=None: written.append(type(array)) or real_write(path, array, metadata))
    before = sorted(p.name for p in data.iterdir())
    code, _, err = run(capsys, "predict", data / "m.keras", data / "zlib.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif", "--no-tta")
    assert code == 0, err
    # each page read on its own: page 0 also to tell image from labels, and the (up to 8) pages the intensity check samples
    assert sorted(pages_read) == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert written == [np.memmap, np.memmap]
    assert sorted(p.name for p in data.iterdir()) == sorted(before + ["p.tif", "q.tif"]), "no scratch file left"
    expected = predict(load_model(data / "m.keras"), image, tta=False)
    np.testing.assert_array_equal(tifffile.imread(data / "p.tif"), expected.labels)
    np.testing.assert_allclose(tifffile.imread(data / "q.tif"), np.moveaxis(expected.probabilities, -1, -3), atol=1e-6)

    with tifffile.TiffFile(data / "zlib.tif") as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    raw = bytearray((data / "zlib.tif").read_bytes())
    raw[offset : offset + count] = bytes(count)
    (data / "zlib.tif").write_bytes(bytes(raw))
    code, _, err = run(capsys, "predict", data / "m.keras", data / "zlib.tif", "-o", data / "p2.tif", "--no-tta")
    assert code == 2 and "corrupt" in err and "zlib.tif" in err and "Traceback" not in err
    assert sorted(p.name for p in data.iterdir()) == sorted(before + ["p.tif", "q.tif"])


def test_predict_reserves_its_scratch_space_and_says_when_the_disk_is_full(data, capsys, monkeypatch):
    """A memory map of a sparse file on a full disk kills the process (SIGBUS) instead of raising."""
    import errno

    save_model(tiny_model(), data / "m.keras")
    reserved = []

    def full_disk(fd, offset, length):
        reserved.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full_disk, raising=False)
    before = sorted(p.name for p in data.iterdir())
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 2 and "not enough free disk space" in err and "Traceback" not in err
    assert reserved == [4 * 64 * 64] and sorted(p.name for p in data.iterdir()) == before



def test_a_write_error_without_a_file_name_names_the_output(data, capsys, monkeypatch):
    """A network share's write-back error at fsync printed only "[Errno 5] Input/output error"."""
    import errno
    import stat

    save_model(tiny_model(), data / "m.keras")
    real_fsync = os.fsync

    def failing(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    before = sorted(p.name for p in data.iterdir())
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta")
    assert code == 1 and "Input/output error" in err and str(data / "p.tif") in err and "partial" not in err, err
    assert sorted(p.name for p in data.iterdir()) == before


@pytest.mark.parametrize("encoding", ["ascii", "cp932"])
def test_help_prints_where_stdout_cannot_encode_micrometres(encoding):
    """µm and 512² in the help crashed it with UnicodeEncodeError (a Japanese Windows console, a pipe there)."""
    for command in ("train", "predict", "evaluate"):
        result = subprocess.run([sys.executable, "-m", "napari_unet.cli", command, "--help"], capture_output=True, timeout=120,
                                env={**os.environ, "PYTHONIOENCODING": encoding})
        assert result.returncode == 0 and b"Traceback" not in result.stderr and b"usage:" in result.stdout, result.stderr


def test_predict_checks_free_space_without_fallocate_and_names_a_file_size_limit(data, capsys, monkeypatch):
    """macOS has no posix_fallocate: the sparse scratch file on a full disk gave a bus error (exit 135, no message).
    A FAT32 disk's 4 GiB limit a file (EFBIG) was called a full disk."""
    import errno
    import shutil
    from collections import namedtuple

    save_model(tiny_model(), data / "m.keras")
    before = sorted(p.name for p in data.iterdir())
    usage = namedtuple("usage", "total used free")
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 2 and "not enough free disk space" in err and "0 MB free" in err, err
    assert sorted(p.name for p in data.iterdir()) == before

    def too_large(fd, offset, length):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "posix_fallocate", too_large, raising=False)
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 2 and "cannot reserve the" in err and "(ulimit -f)" in err and "free disk space" not in err, err
    monkeypatch.undo()
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta")
    assert code == 0, err


def test_options_that_contradict_or_do_not_fit_the_data(data, capsys):
    save_model(tiny_model(), data / "m.keras")
    for argv in (["predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--argmax", "--close-boundaries"],
                 ["train", data / "image.tif", data / "labels.tif", "-o", data / "s.keras", "--seed", "-1"]):
        with pytest.raises(SystemExit) as exited:  # argparse
            run(capsys, *argv)
        assert exited.value.code == 2 and ("not allowed with" in capsys.readouterr().err or argv[-1] == "-1")
    image, labels = tifffile.imread(data / "image.tif"), tifffile.imread(data / "labels.tif")
    tifffile.imwrite(data / "one.tif", image[0], photometric="minisblack")
    tifffile.imwrite(data / "one_labels.tif", labels[0], photometric="minisblack")
    code, _, err = run(capsys, "train", data / "one.tif", data / "one_labels.tif", "-o", data / "m1.keras", "--ignore-value", "7", *TINY_TRAINING)
    assert code == 0, err
    assert "no pixel has the ignore value 7" in err and "validating on columns 48 and up" in err
    code, _, err = run(capsys, "train", data / "one.tif", data / "one_labels.tif", "-o", data / "m2.keras", "--val-fraction", "0", *TINY_TRAINING)
    assert code == 0 and "no validation" in err, err
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "0.keras", "--max-minutes", "1e-9")
    assert code == 2 and "before its first step; no model written" in err and not (data / "0.keras").exists()
    # a budget that TensorFlow's start-up mostly used: the model is written, and the run says how little it learnt
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "b.keras", "--max-minutes", "0.002",
                       "--epochs", "2", "--steps-per-epoch", "100000", "--patch-size", "64", "--batch-size", "2")
    assert code == 0 and (data / "b.keras").exists(), err
    assert "training reached its time budget after " in err and " of the first epoch's 100000 steps: the model has barely " \
        "learnt (a larger --max-minutes;" in err and "after 1 epoch" not in err, err  # the two lines disagreed
    tifffile.imwrite(data / "rows.tif", image[:, :1, :], photometric="minisblack")  # (Z, 1, X): a stack of one-row slices
    code, _, err = run(capsys, "predict", data / "m.keras", data / "rows.tif", "-o", data / "r.tif")
    assert code == 2 and "too small" in err, err


def test_an_interrupt_between_two_replacements_puts_the_first_back(data, capsys, monkeypatch):
    import napari_unet.cli as cli

    save_model(tiny_model(), data / "m.keras")
    real_replace, calls = os.replace, []

    def second_replace_interrupted(source, target):  # os is shared: write_tiff's own replacements pass too
        calls.append(target)
        if Path(target).name == "q.tif":
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(cli.os, "replace", second_replace_interrupted)
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif")
    # (s64 review 2, 5: a failed second replacement puts the first back, so both or neither are written)
    assert code == 130 and "no output file was written" in err, err
    assert not (data / "p.tif").exists() and not (data / "q.tif").exists()
    assert not [p.name for p in data.iterdir() if p.name.endswith(".partial")], "no partial file left behind"


def test_written_files_replace_old_ones_and_keep_their_permissions(tmp_path):
    from napari_unet.cli import write_all

    old = tmp_path / "labels.tif"
    tifffile.imwrite(old, np.zeros((4, 4), np.uint8))
    old.chmod(0o640)
    write_all([(old, np.ones((8, 8), np.uint8), {}), (tmp_path / "new.tif", np.ones((8, 8), np.float32), {})])
    assert tifffile.imread(old).shape == (8, 8) and (old.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "new.tif"]


def test_interrupt_after_the_model_is_saved_says_it_was_written(data, capsys, monkeypatch):
    import napari_unet.predict as predict_module
    import napari_unet.train  # noqa: F401  (training's validation binds the real predict before the patch, run alone too)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "predict", interrupted)  # the validation scores after saving
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 130 and f"{data / 'm.keras'} was written" in err
    assert (data / "m.keras").exists()


def test_console_script_is_installed_and_answers():
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "demo" in result.stdout


def test_console_script_writes_its_output_before_its_fast_exit(tmp_path):
    # the entry point skips the interpreter's TensorFlow teardown with os._exit: the file must be complete
    save_model(tiny_model(), tmp_path / "model.keras")
    image, _ = stripes(n_slices=3)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    command = [sys.executable, "-m", "napari_unet.cli", "predict", tmp_path / "model.keras", tmp_path / "image.tif", "-o", tmp_path / "out.tif"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    # TensorFlow's start-up notes from C++ ("oneDNN custom operations are on", no CUDA driver) stay out of the way
    assert "absl::InitializeLog" not in result.stderr and "I0000" not in result.stderr, result.stderr
    assert "cuInit" not in result.stderr or os.path.exists("/dev/nvidiactl"), result.stderr
    labels = tifffile.imread(tmp_path / "out.tif")
    assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 255}
    # an error found after TensorFlow is loaded still reaches stderr and the exit status
    tifffile.imwrite(tmp_path / "small.tif", image[0, :2, :2], photometric="minisblack")
    bad = subprocess.run(command[:5] + [tmp_path / "small.tif", "-o", tmp_path / "x.tif"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "too small" in bad.stderr and not (tmp_path / "x.tif").exists()


def test_a_reader_that_exits_first_neither_stops_a_training_nor_gets_a_broken_pipe_message(data):
    # `napari-unet train ... 2>&1 | head -1`: head exits before the training's lines come; the model is still written
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    command = [sys.executable, "-m", "napari_unet.cli", "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a pipe is by default
    try:
        result = subprocess.run(command, stdout=write_end, stderr=write_end, timeout=300, env=environment)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and (data / "m.keras").exists()
    (data / "m.keras").unlink()
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:  # stdout to the closed pipe, stderr read: no "Broken pipe" there either
        result = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300, env=environment)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and (data / "m.keras").exists() and "Broken pipe" not in result.stderr, result.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "evaluate", data / "labels.tif", data / "labels.tif"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300, env=environment)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_native_stderr_lines_are_filtered_not_lost(capfd):
    from napari_unet._tensorflow import native_lines_dropped

    with native_lines_dropped():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796402639.093787   12862 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"F0000 00:00:1796402639.093787   12862 port.cc:9] something real\n")
        print("from python", file=sys.stderr)
    lines = capfd.readouterr().err.splitlines()
    assert sorted(lines) == ["F0000 00:00:1796402639.093787   12862 port.cc:9] something real", "from python"]



def test_no_temporary_folder_only_leaves_the_native_lines_unfiltered(capfd, monkeypatch):
    """A read-only container without a writable temporary folder: every command failed at its start (exit 1)."""
    import tempfile

    from napari_unet._tensorflow import native_lines_dropped

    def no_folder(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_folder)
    with native_lines_dropped():
        os.write(2, b"I0000 00:00:1796402639.093787   12862 port.cc:153] oneDNN custom operations are on.\n")
    assert "oneDNN" in capfd.readouterr().err


def test_console_script_is_run_which_exits_at_once_once_tensorflow_is_loaded(monkeypatch):
    from importlib.metadata import entry_points

    from napari_unet import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "napari-unet"]
    assert script.value == "napari_unet.cli:run"

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow", object()))
    with pytest.raises(Exited) as fast:
        cli.run()
    assert fast.value.args == (3,)
    monkeypatch.delitem(sys.modules, "tensorflow")  # no TensorFlow: a normal exit, atexit handlers run
    with pytest.raises(SystemExit) as normal:
        cli.run()
    assert normal.value.code == 3


def test_commands_import_keras_without_its_notebook_pandas_and_plot_extras():
    # ~1 s of every command's start-up; the packages must stay importable for whatever runs later
    code = (
        "import json, sys; from napari_unet.cli import load_tensorflow_for_command; load_tensorflow_for_command(); "
        "import keras; from keras.src.trainers.data_adapters import array_slicing; "
        "loaded = [m for m in ('IPython', 'pandas', 'matplotlib') if m in sys.modules]; "
        "import pandas, matplotlib.pyplot; "
        "print(json.dumps({'loaded': loaded, 'keras_pandas': array_slicing.pandas is not None, 'keras': keras.__version__}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [] and report["keras_pandas"] is False


def test_importing_the_package_loads_neither_tensorflow_nor_qt():
    """Retrain's data and recipe lived in the widget package, whose __init__ imported Qt: no script could use them."""
    modules = ["napari_unet." + name for name in (
        "chunked", "cli", "config", "data", "demo", "hardware", "labels", "metrics", "model", "model_io", "postprocess",
        "predict", "retrain", "synthetic", "tiff_io", "train", "zarr_io", "_reader", "_writer", "_sample_data",
        "_widgets.jobs")]
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "heavy = [m for m in ('tensorflow', 'keras', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari', 'magicgui', 'vispy') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_core_modules_list_what_they_define_in_all():
    """``from napari_unet.predict import *`` and API documentation tools read ``__all__``: 8 modules had none."""
    import ast
    import importlib

    names = ("chunked", "config", "data", "hardware", "labels", "metrics", "model", "model_io", "postprocess", "predict",
             "retrain", "synthetic", "tiff_io", "train", "zarr_io")
    for name in names:
        module = importlib.import_module("napari_unet." + name)
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name)}
        defined |= {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
        public = {n for n in defined if not n.startswith("_")} - {"import_keras"}  # model.py's alias of the loader
        assert hasattr(module, "__all__"), name
        assert all(hasattr(module, n) for n in module.__all__), name
        assert public <= set(module.__all__), (name, sorted(public - set(module.__all__)))


@pytest.mark.slow
def test_demo_refuses_a_bad_budget_before_writing_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:  # told with the option typed: it named the setting max_minutes
        run(capsys, "demo", "--headless", "--minutes", "-1", "--output-dir", tmp_path / "demo")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "argument --minutes/--max-minutes: must be a finite number above 0, got -1" in err
    assert len(err.strip().splitlines()) == 1 and "(see napari-unet demo --help)" in err  # one line, no usage block
    assert not (tmp_path / "demo").exists()


def test_setting_errors_name_the_options_typed(data, capsys):
    # "val_fraction must be in [0, 1)", "local_contrast_sigma must be 0..1000 pixels": settings, not the options
    args = ["train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras"]
    for option, value, words in (("--val-fraction", "1.5", "--val-fraction: must be in [0, 1), got 1.5"),
                                 ("--local-contrast", "-3", "--local-contrast: must be in [0, 1000], got -3")):
        with pytest.raises(SystemExit) as exited:  # argparse, before the files are read
            run(capsys, *args, option, value)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and words in err and "_" not in err.split("error:")[1].split(",")[0], err


def test_python_dash_m_gives_the_demos_errors_in_one_line(tmp_path):
    # run as __main__, cli.py was a second module: demo.py raised the package's CommandError, which it did not catch
    (tmp_path / "a file").write_text("kept")
    done = subprocess.run([sys.executable, "-m", "napari_unet.cli", "demo", "--headless", "--output-dir", str(tmp_path / "a file")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "is a file, not a folder" in done.stderr, done.stderr


def test_an_image_whose_last_axes_are_not_y_and_x_is_refused(tmp_path, capsys):
    """A (Y, X, Z) volume recorded as such was read as Y slices of X x Z pixels, trained on and predicted silently."""
    tifffile.imwrite(tmp_path / "yxz.tif", np.zeros((20, 24, 5), np.uint8), metadata={"axes": "YXZ"})
    save_model(tiny_model(), tmp_path / "m.keras")
    code, _, err = run(capsys, "predict", tmp_path / "m.keras", tmp_path / "yxz.tif", "-o", tmp_path / "p.tif")
    assert code == 2 and "has axes YXZ" in err and "last two axes" in err and not (tmp_path / "p.tif").exists()


def test_demo_checks_its_outputs_before_training_and_writes_no_untrained_model(tmp_path, capsys):
    """A folder in the figure's place failed after the minute of training (the model lost); a budget ending before the
    first step saved and scored the untrained network as if trained."""
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "demo.png").mkdir()
    started = time.perf_counter()
    code, _, err = run(capsys, "demo", "--headless", "--minutes", "1", "--output-dir", tmp_path / "blocked")
    assert code == 2 and "is a folder" in err and time.perf_counter() - started < 30
    assert sorted(p.name for p in (tmp_path / "blocked").iterdir()) == ["demo.png"]
    code, out, err = run(capsys, "demo", "--headless", "--minutes", "1e-9", "--output-dir", tmp_path / "short")
    assert code == 2 and "before its first step" in err and out == ""
    assert list((tmp_path / "short").iterdir()) == []
    # an empty name wrote into the current folder unannounced; a file or an impossible folder gave a raw OSError, exit 1
    (tmp_path / "a file").write_text("kept")
    for folder, message in (("", "--output-dir is empty"), (tmp_path / "a file", "is a file, not a folder"),
                            (tmp_path / "a file" / "sub", "cannot create the folder")):
        code, out, err = run(capsys, "demo", "--headless", "--minutes", "1", "--output-dir", folder)
        assert code == 2 and message in err and out == "", err
    assert (tmp_path / "a file").read_text() == "kept"


def test_demo_runs_headless(tmp_path, capsys, monkeypatch):
    import napari_unet.cli as cli

    import napari_unet.predict as predict_module

    options, real_run_training, real_predict = [], cli.run_training, predict_module.predict
    monkeypatch.setattr(cli, "run_training", lambda *a, **k: options.append(k.get("budget_option")) or options.append(a[3].jit_compile)
                        or real_run_training(*a, **k))
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: options.append(("predict", k.get("jit_compile"))) or real_predict(*a, **k))
    # --no-xla: the way round a GPU's failing XLA for the README's first command too
    code, out, err = run(capsys, "demo", "--headless", "--minutes", "0.1", "--output-dir", tmp_path, "--no-xla")  # a step or a few
    assert code == 0, err
    assert options[1] is False and ("predict", False) in options, options
    del options[1:]
    report = json.loads(out)
    assert report["v_rand"] is not None and 0 <= report["pixel_error"] <= 1
    for name in ("demo.png", "demo-model.keras", "demo-prediction.tif", "demo-image.tif", "demo-labels.tif"):
        assert (tmp_path / name).stat().st_size > 0
    assert "(1 = every cell separated as in the truth)" in err
    assert options == ["--minutes"] and "--max-minutes" not in err, err  # its own option, if the budget ended the first epoch
    # the data it wrote take the command line's train and evaluate, as the README shows a newcomer
    code, _, err = run(capsys, "evaluate", tmp_path / "demo-labels.tif", tmp_path / "demo-labels.tif")
    assert code == 0, err
    code, _, err = run(capsys, "train", tmp_path / "demo-image.tif", tmp_path / "demo-labels.tif", "-o", tmp_path / "m.keras",
                       "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2")
    assert code == 0 and "classes [0, 255]" in err, err


def test_predict_notes_an_image_unlike_the_training_images_and_still_writes_it(data, capsys):
    save_model(tiny_model(), data / "m.keras")
    tifffile.imwrite(data / "inverted.tif", 255 - tifffile.imread(data / "image.tif"), photometric="minisblack")
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 0 and "unlike the training images" not in err
    for output in ("p.tif", "p.zarr"):  # the ordinary and the chunked (zarr) path
        code, _out, err = run(capsys, "predict", data / "m.keras", data / "inverted.tif", "-o", data / f"inverted-{output}")
        assert code == 0, err
        assert "note: the image's intensities are unlike the training images'" in err
        assert (data / f"inverted-{output}").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_a_trained_model_is_saved_elsewhere(data, capsys, monkeypatch):
    import errno
    import tempfile

    import napari_unet.model_io as model_io
    import napari_unet.tiff_io as tiff_io

    real_save = model_io.save_model
    full = data / "full"
    full.mkdir()

    def save_or_fill(model, path):
        if Path(path).parent == full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(model, path)

    monkeypatch.setattr(model_io, "save_model", save_or_fill)
    (data / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(data / "tmp"))
    code, _out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", full / "m.keras", *TINY_TRAINING)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"cannot write {full / 'm.keras'}: No space left on device" in last and "saved to" in last and "copy it elsewhere now" in last
    saved = list((data / "tmp").glob("napari-unet-unsaved-m-*.keras"))
    assert len(saved) == 1 and saved[0].name in last, "the trained model is not lost"

    real_write = tiff_io.write_tiff
    monkeypatch.setattr(tiff_io, "write_tiff", lambda path, *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
                        if Path(path).parent == full else real_write(path, *a, **k))
    code, _out, err = run(capsys, "predict", saved[0], data / "image.tif", "-o", full / "p.tif")
    assert code == 2 and f"cannot write {full / 'p.tif'}: No space left on device" in err and "Traceback" not in err
    assert list(full.iterdir()) == []


def test_auto_can_be_typed_for_the_options_whose_default_is_auto(data, capsys):
    code, out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING,
                         "--augment-noise", "auto", "--merge-levels", "auto")
    assert code == 0, err
    assert json.loads(out)["tta_views"] in (1, 2, 4), "the scores say how they were predicted"
    assert "without test-time augmentation" in err  # the membrane rule's own validation score
    with pytest.raises(SystemExit) as exited:
        main(["train", str(data / "image.tif"), str(data / "labels.tif"), "-o", str(data / "m.keras"), "--augment-noise", "loud"])
    assert exited.value.code == 2 and "expected a number or auto" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*stored as RGB with separate component planes:DeprecationWarning")  # on purpose
def test_a_stack_stored_as_rgb_planes_and_a_probability_file_given_to_evaluate_are_named(data, capsys):
    image = tifffile.imread(data / "image.tif")[:3]
    tifffile.imwrite(data / "three.tif", image)  # tifffile's default for (3, Y, X) uint8: RGB colour planes
    save_model(tiny_model(), data / "m.keras")
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "three.tif", "-o", data / "p.tif")
    assert code == 0, err  # a shaped description without axes: a stack, as napari's own reader reads it
    assert tifffile.imread(data / "p.tif").shape == image.shape
    # RGB planes written by another program (no tifffile description) are colour: named, with what to do
    tifffile.imwrite(data / "planes.tif", image, photometric="rgb", planarconfig="separate", metadata=None)
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "planes.tif", "-o", data / "p2.tif")
    assert code == 2 and "save it again as one" in err and "photometric='minisblack'" in err
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif")
    assert code == 0, err
    code, _out, err = run(capsys, "evaluate", data / "q.tif", data / "labels.tif")
    assert code == 2 and "a probability map? evaluate takes the labels file of predict" in err


def test_running_out_of_memory_says_so_and_what_to_do(data, capsys, monkeypatch):
    # a 50 x 2048² stack ended after minutes with numpy's bare "Unable to allocate 1.25 GiB for an array ..."
    from napari_unet import cli

    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.25 GiB for an array with shape (167772160,) and data type int64")

    monkeypatch.setattr(cli, "run_training", too_big)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 1 and "not enough memory (Unable to allocate 1.25 GiB" in err and "train on a crop or on fewer slices" in err


def test_running_out_of_gpu_memory_says_so_and_what_to_do(data, capsys, monkeypatch):
    # TensorFlow's out-of-memory error (a GPU's, mostly) ended the command with a traceback and a page of allocator details
    import tensorflow as tf

    from napari_unet import cli

    @tf.function
    def graph(n):  # Keras' train_on_batch runs in a tf.function: "Graph execution error:" comes first
        return tf.reduce_sum(tf.random.uniform(tf.stack([n, n])))

    for step in (graph, lambda n: tf.random.uniform(tf.stack([n, n]))):  # and an eager op's error
        monkeypatch.setattr(cli, "run_training", lambda *args, step=step, **kwargs: step(tf.constant(1 << 22, tf.int64)))
        code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
        last = err.strip().splitlines()[-1]
        assert code == 1 and last.startswith("napari-unet: error: not enough memory for TensorFlow (OOM when allocating tensor "
                                             "with shape[4194304,4194304] and type float on "), err
        assert last.endswith("); lower --batch-size or --patch-size") and "allocator" not in last and "{{" not in last, last
        assert "Traceback" not in err and not (data / "m.keras").exists()


def test_a_large_training_stack_says_at_once_that_it_is_being_prepared(data, capsys, monkeypatch):
    # 20 x 2048² slices printed nothing for minutes before their first step
    from napari_unet import cli

    monkeypatch.setattr(cli, "PREPARING_NOTE_PIXELS", 4 * 64 * 64)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0 and err.startswith("preparing the annotated slices of 4 slices of 64 x 64 pixels (normalising, border weights)..."), err


def test_train_reads_large_files_when_indexed_and_only_their_annotated_slices(tmp_path, capsys, monkeypatch):
    # image and labels were read whole: a stack larger than memory could not train, even annotated on a few slices
    import napari_unet.train as train_module
    from napari_unet import tiff_io

    monkeypatch.setattr(tiff_io, "LAZY_READ_BYTES", 0)  # these small files count as large: memory-mapped
    read = []
    real = train_module.read_annotated_slices
    monkeypatch.setattr(train_module, "read_annotated_slices",
                        lambda image, labels, *a, **k: read.append((type(image), type(labels))) or real(image, labels, *a, **k))
    image, labels = stripes(n_slices=8, size=64)
    sparse = np.full(labels.shape, 7, np.uint8)
    sparse[[2, 5, 6]] = labels[[2, 5, 6]]
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", sparse, photometric="minisblack")
    code, out, err = run(capsys, "train", tmp_path / "image.tif", tmp_path / "labels.tif", "-o", tmp_path / "m.keras",
                         "--ignore-value", "7", "--val-fraction", "0.34", *TINY_TRAINING)
    assert code == 0, err
    assert read == [(np.memmap, np.memmap)]
    assert "training on slices [2, 5], validating on slices [6]" in err and json.loads(out)["validation_slices"] == [6]
    assert "; classes [0, 255]; 12288 annotated pixels (37.5 % of the labels)" in err, err  # as the training dock says them


def test_a_stack_of_single_pixels_is_refused_by_its_own_shape_and_without_an_intensity_note(tmp_path, capsys):
    # tifffile reads a (4, 1, 1) file with axes "YQX"; it was named a (4, 1) image, after a note on its intensities
    save_model(tiny_model(), tmp_path / "m.keras")
    tifffile.imwrite(tmp_path / "dots.tif", np.arange(4, dtype=np.uint8).reshape(4, 1, 1), photometric="minisblack")
    code, out, err = run(capsys, "predict", tmp_path / "m.keras", tmp_path / "dots.tif", "-o", tmp_path / "p.tif")
    assert code == 2 and "image dots.tif is read as 4 slices of 1 x 1 pixels: too small" in err and "note" not in err, err
    assert not (tmp_path / "p.tif").exists()



def test_a_class_that_looks_like_an_unannotated_marker_gets_a_note(tmp_path, capsys):
    # uint16 labels whose unannotated pixels hold 65535 trained silently as a third class
    image, labels = stripes(n_slices=4, size=64)
    labels = labels.astype(np.uint16)
    labels[:, :, 40:] = 65535
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    args = ["train", tmp_path / "image.tif", tmp_path / "labels.tif", "-o", tmp_path / "m.keras", *TINY_TRAINING]
    code, _, err = run(capsys, *args)
    assert code == 0 and "note: class 65535 is the largest uint16 value" in err and "--ignore-value 65535" in err, err
    code, _, err = run(capsys, *args, "--ignore-value", "65535")
    assert code == 0 and "note: class" not in err, err


def test_a_class_of_a_few_pixels_is_named_when_training_starts(tmp_path, capsys):
    # labels saved by napari's own writer: display values 1/2 and 0 where pixels were erased; 97 erased pixels of 5.2
    # million trained a third class without a word (no membrane rule, no cells)
    image, labels = stripes(n_slices=4, size=64)
    display = np.where(labels == 0, 1, 2).astype(np.uint8)
    display[1, 10, 10] = 0
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", display, photometric="minisblack")
    args = ["train", tmp_path / "image.tif", tmp_path / "labels.tif", "-o", tmp_path / "m.keras", *TINY_TRAINING]
    code, _, err = run(capsys, *args)
    assert code == 0 and "class 0 holds only 1 of the 16384 annotated pixels" in err and "(--ignore-value to choose)" in err, err
    code, _, err = run(capsys, *args, "--ignore-value", "0")
    assert code == 0 and "holds only" not in err, err


def test_sigterm_ends_a_training_with_status_143_and_no_model(data):
    # kill, timeout and batch schedulers send SIGTERM; it exited 130, Ctrl-C's status
    import signal

    command = [sys.executable, "-m", "napari_unet.cli", "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras",
               "--epochs", "100", "--steps-per-epoch", "50", "--patch-size", "64", "--batch-size", "2", "--depth", "2"]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in run.stderr:
            if line.startswith("training on slices"):  # its handler is in place
                run.send_signal(signal.SIGTERM)
                break
        err = run.stderr.read()
        # after its clean-up it dies of the signal (a shell shows 143; Python's subprocess -15): a script stops too
        assert run.wait(timeout=120) == -signal.SIGTERM and "terminated; no output file was written" in err, err
    finally:
        run.kill()
    assert not (data / "m.keras").exists()


def test_predict_outputs_keep_a_pixel_size_recorded_without_a_unit(data, capsys):
    """An ImageJ TIFF with a resolution of 250 per (no) unit opens in napari at 0.004 per pixel; predict wrote its
    outputs at 1, so they were drawn 250 times the image's size beside it."""
    from napari_unet._reader import read_layers

    image = tifffile.imread(data / "image.tif")
    tifffile.imwrite(data / "unitless.tif", image, imagej=True, metadata={"axes": "ZYX"}, resolution=(250, 250))
    save_model(tiny_model(), data / "m.keras")
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "unitless.tif", "-o", data / "p.tif",
                          "--probabilities", data / "q.tif")
    assert code == 0, err
    image_scale = read_layers(str(data / "unitless.tif"))[0][1]["scale"]
    assert np.allclose(image_scale[-2:], 0.004)
    assert np.allclose(read_layers(str(data / "p.tif"))[0][1]["scale"], image_scale)
    assert np.allclose(read_tiff(data / "q.tif").scale[-2:], image_scale[-2:])


def test_predict_of_a_time_series_keeps_its_time_axis(data, capsys):
    """A TYX TIFF (ImageJ frames too) was predicted into ZYX labels and ZCYX probabilities, which napari opened with a
    z slider beside the image's t; train and evaluate read it as any stack."""
    from napari_unet._reader import read_layers
    from napari_unet.zarr_io import read_zarr

    image = tifffile.imread(data / "image.tif")
    tifffile.imwrite(data / "t.tif", image, photometric="minisblack", metadata={"axes": "TYX"})
    tifffile.imwrite(data / "frames.tif", image, imagej=True, metadata={"axes": "TYX", "unit": "um", "finterval": 2.5},
                     resolution=(2, 2))
    save_model(tiny_model(), data / "m.keras")
    for name in ("t.tif", "frames.tif"):
        source = read_tiff(data / name)
        assert source.axes == "TYX"
        for kind, read in ((".tif", read_tiff), (".zarr", read_zarr)):
            code, _out, err = run(capsys, "predict", data / "m.keras", data / name, "-o", data / f"p{kind}",
                                  "--probabilities", data / f"q{kind}")
            assert code == 0, err
            labels, probabilities = read(data / f"p{kind}"), read(data / f"q{kind}")
            assert (labels.axes, probabilities.axes) == ("TYX", "TCYX"), kind
            assert "(axes TYX" in err and "(axes TCYX" in err, err
            assert np.allclose(labels.scale, source.scale) and labels.units == source.units, kind
            assert np.allclose(probabilities.scale, [*source.scale[:1], 1.0, *source.scale[1:]]), kind
            assert read_layers(str(data / f"p{kind}"))[0][1]["axis_labels"] == read_layers(str(data / name))[0][1]["axis_labels"]
    assert read_tiff(data / "frames.tif").units == ("s", "µm", "µm")
    code, out, err = run(capsys, "train", data / "frames.tif", data / "labels.tif", "-o", data / "t.keras", *TINY_TRAINING)
    assert code == 0 and json.loads(out)["validation_slices"] == [3], err
    code, out, err = run(capsys, "evaluate", data / "p.tif", data / "labels.tif")
    assert code == 0 and "pixel_error" in json.loads(out), err


def test_train_records_the_images_pixel_size_and_predict_notes_a_scan_of_another(data, capsys):
    """An OCT B-scan from another scanner (axial pixels of 1.936 µm, not 3.872) was predicted without a word, with
    boundary errors 4 times worse (oct-hunt REPORT.md, section 3)."""
    image = tifffile.imread(data / "image.tif")
    for name, y_um in (("scan.tif", 3.872), ("other.tif", 1.936)):
        tifffile.imwrite(data / name, image, imagej=True, metadata={"axes": "ZYX", "unit": "um"}, resolution=(1 / 11.29, 1 / y_um))
    code, _out, err = run(capsys, "train", data / "scan.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert read_metadata(data / "m.keras")["pixel_size"] == pytest.approx([3.872, 11.29])
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "scan.tif", "-o", data / "p.tif")
    assert code == 0 and "image's pixels" not in err, err
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")  # no pixel size: said
    assert code == 0 and "image's pixels" not in err, err
    assert ("note: the model was trained on pixels of 3.872 x 11.29 µm (Y x X); the image records no pixel size, so they "
            "were not compared (--pixel-size Y_UM X_UM gives it)") in err, err
    for output in ("other.tif", "other.zarr"):  # the ordinary and the chunked (zarr) path
        code, _out, err = run(capsys, "predict", data / "m.keras", data / "other.tif", "-o", data / f"p-{output}")
        assert code == 0, err
        assert ("note: the image's pixels are 1.936 x 11.29 µm (Y x X), the model was trained on pixels of 3.872 x 11.29 µm"
                in err and "zoom Y by 0.5 and X by 1" in err), err
        assert "predict that (the size the file records; --pixel-size Y_UM X_UM gives another)" in err, err
        assert (data / f"p-{output}").exists()
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--pixel-size", "1.936", "11.29")
    assert code == 0 and "zoom Y by 0.5 and X by 1" in err and "the size the file records" not in err, err  # typed: no word of the file's


def test_the_pixel_height_of_a_file_is_read_in_micrometres_also_without_an_x_calibration():
    from napari_unet.cli import _pixel_height

    assert _pixel_height({"pixel_size": {"scale": [3.872, 1.0], "units": ["µm", "pixel"]}}) == pytest.approx(3.872)
    assert _pixel_height({"pixel_size": {"scale": [3872.0, 11290.0], "units": ["nm", "nm"]}}) == pytest.approx(3.872)
    assert _pixel_height({"pixel_size": {"scale": [1.0, 1.0], "units": ["pixel", "pixel"]}}) is None
    assert _pixel_height({}) is None


def test_evaluate_takes_the_membrane_class_or_none(data, capsys):
    # a band mask of one OCT layer scored V_rand 1.0 for a Dice of 0.036: its background taken as the membrane
    labels = tifffile.imread(data / "labels.tif")
    tifffile.imwrite(data / "wrong.tif", np.where(labels == 0, 255, 0).astype(np.uint8), photometric="minisblack")
    code, out, err = run(capsys, "evaluate", data / "wrong.tif", data / "labels.tif", "--membrane", "none")
    assert code == 0, err
    assert "v_rand" not in json.loads(out) and json.loads(out)["pixel_error"] == 1.0
    code, out, err = run(capsys, "evaluate", data / "labels.tif", data / "labels.tif", "--membrane", "255")
    assert code == 0 and json.loads(out)["v_rand"] == 1.0, err
    code, out, err = run(capsys, "evaluate", data / "labels.tif", data / "labels.tif", "--membrane", "7")
    assert code != 0 and "--membrane 7 is no class of the truth [0, 255]" in err
    # a 1-bit mask of 0/255 truth: a traceback (exit 1) after a note that its values are scored as wrong
    tifffile.imwrite(data / "bool.tif", labels > 0)
    assert tifffile.imread(data / "bool.tif").dtype == bool
    code, out, err = run(capsys, "evaluate", data / "bool.tif", data / "labels.tif")
    assert code == 2 and not out and "Traceback" not in err and "scored as wrong" not in err
    assert "prediction bool.tif is a yes/no (1-bit) mask, but the truth's classes are [0, 255]" in err


def test_predict_names_blank_slices(data, capsys):
    image = tifffile.imread(data / "image.tif").copy()
    image[2] = 0
    tifffile.imwrite(data / "blank.tif", image, photometric="minisblack")
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    code, _, err = run(capsys, "predict", data / "m.keras", data / "blank.tif", "-o", data / "p.tif")
    assert code == 0 and "note: 1 slice of the image is blank (one grey value: slice 2)" in err, err


def test_a_trained_model_is_saved_elsewhere_when_any_write_fails_and_never_over_another(data, capsys, monkeypatch):
    """A share remounted read-only (or gone stale) at the end of a training lost the model: only a full disk was
    rescued. Two rescued models of one name saved in the same second replaced each other."""
    import errno
    import tempfile

    import napari_unet.model_io as model_io
    from napari_unet.cli import CommandError, save_model_or_elsewhere
    from napari_unet.model_io import load_model

    real_replace = os.replace
    share = data / "share"
    share.mkdir()

    def read_only_share(source, target):
        if share in Path(target).parents:
            raise OSError(errno.EROFS, "Read-only file system", str(source))
        return real_replace(source, target)

    monkeypatch.setattr(model_io.os, "replace", read_only_share)
    (data / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(data / "tmp"))
    code, _out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", share / "m.keras", *TINY_TRAINING)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"cannot write {share / 'm.keras'}: Read-only file system" in last and ".partial" not in last
    saved = list((data / "tmp").glob("napari-unet-unsaved-m-*.keras"))
    assert len(saved) == 1 and str(saved[0]) in last and load_model(saved[0]).class_values == [0, 255]
    umask = os.umask(0o022)
    os.umask(umask)
    assert saved[0].stat().st_mode & 0o777 == 0o666 & ~umask, "readable as a file open() makes (mkstemp's were 0600)"
    assert list(share.iterdir()) == [], "no temporary file left in the share"

    model = load_model(saved[0])
    for run_folder in ("run_a", "run_b"):  # two jobs' model.keras, rescued in the same second
        (share / run_folder).mkdir()
        with pytest.raises(CommandError):
            save_model_or_elsewhere(model, share / run_folder / "m.keras")
    assert len(list((data / "tmp").glob("napari-unet-unsaved-m-*.keras"))) == 3


def test_train_names_the_model_file_a_killed_save_left(data, capsys):
    import socket

    dead = 999999999  # above Linux's largest process ID (4194304)
    left = data / f".m.keras.{socket.gethostname()}.{dead}~0123abcd.partial.keras"
    left.write_bytes(b"PK")
    code, _out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert f"note: {left} is an unfinished m.keras that a killed run (process {dead}, no longer running)" in err


def test_train_names_the_pixel_size_it_records_and_pixel_size_gives_the_right_one(data, capsys):
    """circular-scan.tif's tag says inches where it means mm: train recorded 98.35 x 361.7 µm without a word, and
    predict then told the user to shrink the same scan, saved with its true size, 25 times (OCT scale hunt, defect 2)."""
    from napari_unet._reader import read_layers

    image = tifffile.imread(data / "image.tif")
    tifffile.imwrite(data / "inches.tif", image, photometric="minisblack", resolution=(1 / 0.014239, 1 / 0.003872), resolutionunit="INCH")
    tifffile.imwrite(data / "true.tif", image, imagej=True, metadata={"axes": "ZYX", "unit": "um"}, resolution=(1 / 14.239, 1 / 3.872))
    code, _out, err = run(capsys, "train", data / "inches.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 0, err
    assert "note: the model records pixels of 98.35 x 361.7 µm (Y x X), as inches.tif records them" in err and "--pixel-size" in err
    code, _out, err = run(capsys, "train", data / "inches.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING,
                          "--pixel-size", "3.872", "14.239")
    assert code == 0 and "the model records pixels" not in err, err
    assert read_metadata(data / "m.keras")["pixel_size"] == pytest.approx([3.872, 14.239])
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "true.tif", "-o", data / "p.tif")
    assert code == 0 and "image's pixels" not in err, err
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "inches.tif", "-o", data / "p.tif", "--pixel-size", "3.872", "14.239")
    assert code == 0 and "image's pixels" not in err, err
    assert np.allclose(read_layers(str(data / "p.tif"))[0][1]["scale"][-2:], [3.872, 14.239])  # the outputs lie at the size given


def test_a_stack_of_narrow_slices_without_recorded_axes_gets_a_note(data, capsys):
    """20 B-scans saved as (Y, X, N) = (496, 768, 20) were predicted as 496 slices of 768 x 20 pixels without a word."""
    save_model(tiny_model(), data / "m.keras")
    image = tifffile.imread(data / "image.tif")
    image = np.concatenate([image, image[:1]])  # 5 slices of 64 x 64 (3 or 4 would be colour samples)
    tifffile.imwrite(data / "yxn.tif", np.moveaxis(image, 0, -1).copy())  # (64, 64, 5), no axes recorded
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "yxn.tif", "-o", data / "p.tif")
    assert code == 0 and ("note: image yxn.tif is read as 64 slices of 64 x 5 pixels; if it holds 5 images of 64 x 64 pixels "
                          "(axes Y, X, N), save it again as (N, Y, X)") in err, err
    code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 0 and "is read as" not in err, err


_RANDOM = np.random.default_rng(0)
_NARROW_FILES = {  # name: (array, imwrite options, what the message must say after "error: image NAME is ")
    "yxn4.tif": ((_RANDOM.random((128, 128, 4)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                 "read as 128 slices of 128 x 4 pixels: too small to segment (napari-unet needs slices at least 5 pixels "
                 "wide: a last axis of 3 or 4 would be read as colours); if it holds 4 images of 128 x 128 "
                 "pixels (axes Y, X, N)"),
    "strips3.tif": ((_RANDOM.random((4, 128, 3)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                    "read as 4 slices of 128 x 3 pixels: too small to segment (napari-unet needs slices at least 5 pixels "
                    "wide: a last axis of 3 or 4 would be read as colours)"),
    # refused for their size alone: no word of colours, which would explain nothing
    "column.tif": (np.full((4, 128, 1), 7, np.uint8), {"photometric": "rgb", "planarconfig": "separate"},  # tifffile's default for it
                   "read as 4 slices of 128 x 1 pixels: too small to segment (napari-unet needs slices of at least 4 x 4 pixels)"),
    "strips2.tif": ((_RANDOM.random((4, 128, 2)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                    "read as 4 slices of 128 x 2 pixels: too small to segment (napari-unet needs slices of at least 4 x 4 pixels)"),
    "low4.tif": ((_RANDOM.random((3, 2, 4)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                 "read as 3 slices of 2 x 4 pixels: too small to segment (napari-unet needs slices at least 4 pixels high "
                 "and 5 pixels wide: a last axis of 3 or 4 would be read as colours)"),
    "low.tif": ((_RANDOM.random((3, 3, 64)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                "read as 3 slices of 3 x 64 pixels: too small to segment (napari-unet needs slices of at least 4 x 4 pixels)"),
    "thin.tif": ((_RANDOM.random((64, 3)) * 255).astype(np.uint8), {"photometric": "minisblack"},
                 "read as one image of 64 x 3 pixels: too small to segment (napari-unet needs images of at least 4 x 4 pixels)"),
    # the smallest that are taken: a 2-D image 4 wide, stacks 4 high or 5 wide
    "yx4.tif": ((_RANDOM.random((64, 4)) * 255).astype(np.uint8), {"photometric": "minisblack"}, None),
    "zyx5.tif": ((_RANDOM.random((3, 64, 5)) * 255).astype(np.uint8), {"photometric": "minisblack"}, None),
    "z4yx.tif": ((_RANDOM.random((3, 4, 64)) * 255).astype(np.uint8), {"photometric": "minisblack"}, None),
}


@pytest.mark.parametrize("name", sorted(_NARROW_FILES))
@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_grayscale_file_of_narrow_slices_gets_one_message_for_the_command_line(data, capsys, command, name):
    """A (128, 128, 4) grayscale TIFF got a note "read as 128 slices of 128 x 4 pixels" and then an error calling it
    RGB; tifffile's default (4, 128, 1) file got a Python hint (``image[..., 0]``) from predict, "too small" from train."""
    array, options, expected = _NARROW_FILES[name]
    tifffile.imwrite(data / name, array, **options)
    tifffile.imwrite(data / f"labels-{name}", (array > 127).astype(np.uint8) * 255, **options)
    if command == "train":
        arguments = [data / name, data / f"labels-{name}", "-o", data / "n.keras", *TINY_TRAINING[:4], "--patch-size", "16"]
    else:
        save_model(tiny_model(), data / "m.keras")
        arguments = [data / "m.keras", data / name, "-o", data / "p.tif"]
    code, _out, err = run(capsys, command, *arguments)
    if expected is None:
        assert code == 0 and "too small" not in err and "RGB" not in err, err
        return
    assert code == 2 and f"error: image {name} is {expected}" in err, err
    assert "RGB" not in err and "image[..., 0]" not in err and "note:" not in err, err  # one message, for files


def test_predict_writes_an_output_whose_name_is_as_long_as_the_file_system_takes(data, capsys):
    """Its temporary files were longer than the name: a 230-byte name failed after the whole prediction."""
    save_model(tiny_model(), data / "m.keras")
    for name in ("p" * 240 + ".tif", "p" * 245 + ".zarr"):
        code, _out, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / name)
        assert code == 0 and (data / name).exists(), err


def test_the_demo_figure_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """save_figure switched pyplot to Agg: a notebook's or a script's figure windows stopped showing."""
    code = (
        "import sys, matplotlib, numpy as np; matplotlib.use('pdf'); from napari_unet.demo import save_figure; "
        f"save_figure({str(tmp_path / 'f.png')!r}, *[np.zeros((8, 8))] * 3, [{{'epoch': 1, 'loss': 0.5}}]); "
        "print(matplotlib.get_backend())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "pdf", result.stderr
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_keras_backend_other_than_tensorflow_is_named(data):
    """KERAS_BACKEND=jax (a user's setting for other work) gave a traceback ending in "No module named 'jax'"."""
    save_model(tiny_model(), data / "m.keras")
    result = subprocess.run([sys.executable, "-m", "napari_unet.cli", "predict", str(data / "m.keras"), str(data / "image.tif"),
                             "-o", str(data / "p.tif")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "jax"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "runs on Keras' TensorFlow backend" in result.stderr and "'jax'" in result.stderr and not (data / "p.tif").exists()


def test_a_log_that_cannot_be_written_does_not_cost_the_model(data):
    """A log on a full disk (stderr) ended the training with exit 1, no model and no message; a closed stdout (a daemon,
    `>&-`) gave a traceback after the model was written; stdout on a full disk blamed the model file."""
    command = [sys.executable, "-m", "napari_unet.cli", "train", "image.tif", "labels.tif", "-o", "m.keras", *TINY_TRAINING]
    result = subprocess.run(["bash", "-c", " ".join(command) + " >&- 2>/dev/full"], cwd=data, capture_output=True, timeout=300)
    assert result.returncode == 0 and load_model(data / "m.keras").class_values == [0, 255]
    scores = [sys.executable, "-m", "napari_unet.cli", "evaluate", "labels.tif", "labels.tif"]
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a file's stdout fails at the last flush
    result = subprocess.run(scores, cwd=data, stdout=open("/dev/full", "w"), stderr=subprocess.PIPE, text=True, timeout=120,
                            env=buffered)
    assert result.returncode == 1 and "could not write the scores to standard output (No space left on device)" in result.stderr
    assert "Traceback" not in result.stderr and "labels.tif" not in result.stderr, result.stderr
    result = subprocess.run(["bash", "-c", " ".join(scores) + " >&-"], cwd=data, capture_output=True, text=True, timeout=120)
    # evaluate's scores are its result: a closed stdout fails it at once (it exited 0, the scores written nowhere)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "standard output is closed" in result.stderr, result.stderr


def test_sigterm_during_the_finishing_keeps_the_finished_model(data, capsys, monkeypatch):
    """A scheduler's time limit that came while the model was being finished held the signal for the whole finishing,
    then threw the finished model away ("no output file was written")."""
    import signal

    import napari_unet.train as train_module
    from napari_unet.train import TrainingFinishing

    real = train_module.train_events

    def terminated_while_finishing(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, TrainingFinishing):
                os.kill(os.getpid(), signal.SIGTERM)  # computing the finished model comes next

    monkeypatch.setattr(train_module, "train_events", terminated_while_finishing)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    assert code == 143 and "membrane rule:" in err, err  # the finishing ran to its end (its notice goes to descriptor 2)
    assert f"terminated; {data / 'm.keras'} was written" in err and load_model(data / "m.keras").class_values == [0, 255]


def test_an_interrupt_during_the_renames_replaces_both_outputs_and_names_them(data, capsys, monkeypatch):
    """SIGTERM right after the labels replaced an older file: the probabilities stayed the older model's, and the
    command said no output file was written."""
    import signal

    save_model(tiny_model(), data / "m.keras")
    args = ["predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--probabilities", data / "q.tif", "--no-tta"]
    assert run(capsys, *args)[0] == 0
    (data / "p.tif").write_bytes(b"old")
    (data / "q.tif").write_bytes(b"old")
    real_replace = os.replace

    def replace_then_terminated(source, target):
        real_replace(source, target)
        if Path(target).name == "p.tif":  # the labels in place (not a temporary file becoming the partial one)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace_then_terminated)
    code, _, err = run(capsys, *args)
    assert code == 143 and f"{data / 'p.tif'}, {data / 'q.tif'} were written" in err, err
    assert (data / "p.tif").read_bytes() != b"old" and (data / "q.tif").read_bytes() != b"old"


def test_the_demo_does_not_open_a_display_it_cannot_reach(monkeypatch, tmp_path):
    """A DISPLAY left by an ended ssh session: Qt aborted the demo after its work (exit 134, "reinstalling the
    application may fix this problem")."""
    from napari_unet.demo import display_unreachable

    monkeypatch.setenv("DISPLAY", ":987")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    reason = display_unreachable()
    assert reason is not None and "987" in reason, reason
    # no Qt binding installed: said with what to install (a `pip install .` of this checkout has none)
    for binding in ("PyQt6", "PyQt5", "PySide6", "PySide2"):  # hidden from the probe's Python
        (tmp_path / binding).mkdir()
        (tmp_path / binding / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.delenv("QT_API", raising=False)
    reason = display_unreachable()
    assert reason is not None and reason.endswith("; napari needs one: pip install PyQt6"), reason


def test_a_hangup_cleans_up_like_sigterm_and_nohup_keeps_it_ignored(data, capsys, monkeypatch):
    """Closing the terminal (SIGHUP) killed a command without clean-up: a zarr run left its partial store."""
    import signal

    import napari_unet.predict as predict_module

    save_model(tiny_model(), data / "m.keras")
    real = predict_module.predict_events

    def hung_up(*args, **kwargs):
        events = real(*args, **kwargs)
        yield next(events)
        os.kill(os.getpid(), signal.SIGHUP)
        yield from events

    monkeypatch.setattr(predict_module, "predict_events", hung_up)
    inherited = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # the tests may run under nohup themselves
    try:
        code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta")
        assert code == 129 and "terminated; no output file was written" in err, err
        assert not [p.name for p in data.iterdir() if p.name.startswith(".") or p.name == "p.tif"]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored
        monkeypatch.setattr(predict_module, "predict_events", real)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-tta")
        assert code == 0 and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, err
    finally:
        signal.signal(signal.SIGHUP, inherited)


def test_output_names_the_file_system_refuses_are_bad_input_before_the_work(data, capsys, monkeypatch):
    """A 300-byte name gave exit 1 and the raw errno text (the whole name); a file named as a folder "did not exist";
    a file-size limit (ulimit -f) was told as if another folder or name would help."""
    import errno

    import napari_unet.model_io as model_io

    save_model(tiny_model(), data / "m.keras")
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / ("p" * 300 + ".tif"))
    assert code == 2 and "File name too long; give another name" in err and "p" * 200 not in err, err
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "image.tif" / "p.tif")
    assert code == 2 and "folder" in err and "is a file, not a folder" in err, err

    def too_large(model, path):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(model_io, "save_model", too_large)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "n.keras", *TINY_TRAINING)
    assert code == 2 and "file-size limit of the file system or of the process (ulimit -f)" in err, err
    assert "choose another folder" not in err  # (another folder or name would not help)


def test_two_runs_writing_the_same_tiff_pair_never_mix_them(tmp_path):
    """Job arrays writing one -o/--probabilities pair: labels of one model beside probabilities of another (zarr stores
    took turns under a lock, TIFF pairs did not)."""
    script = """
import sys, numpy as np, tifffile
from pathlib import Path
from napari_unet._files import folder_lock
from napari_unet.cli import write_all
folder, me, mixed = Path(sys.argv[1]), int(sys.argv[2]), 0
pair = [folder / "labels.tif", folder / "probs.tif"]
for _ in range(60):
    write_all([(path, np.full((2, 8, 8), me, np.uint8), {}) for path in pair])
    with folder_lock(folder.resolve()):
        seen = {int(tifffile.imread(path)[0, 0, 0]) for path in pair}
    mixed += len(seen) > 1
print("mixed", mixed)
"""
    from _helpers import assert_two_runs_never_mix

    assert_two_runs_never_mix(script, tmp_path)


def test_an_output_path_without_room_for_its_temporary_names_is_refused_before_the_work(data, capsys):
    """The hidden temporary files beside an output have longer names: an output path that fit passed the checks and
    failed after the whole prediction (Windows' 259 characters; here Linux' 4095)."""
    from napari_unet._files import hidden_sibling

    save_model(tiny_model(), data / "m.keras")
    folder = data
    while len(str(folder)) < 4095 - 20 - 200:
        folder = folder / ("f" * 200)
    folder = folder / ("g" * (4095 - 20 - len(str(folder)) - 1))
    folder.mkdir(parents=True)
    output = folder / "p.tif"  # 4095 - 14 characters: room for it, not for ".p.tif.HOST.PID~TOKEN.partial..."
    assert len(str(output)) < 4095 < len(str(hidden_sibling(output, "partial", unique=True)))
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", output, "--no-tta")
    assert code == 2 and "its temporary files beside it would have names" in err and "tile" not in err, err
    assert list(folder.iterdir()) == []


def test_sigusr1_stops_a_training_after_its_step_and_keeps_the_model(data, capsys, monkeypatch):
    """A cluster job about to reach its time limit (sbatch --signal=USR1@300) could only lose its training: every
    signal discarded the run, and only the widget's Stop kept the weights."""
    import signal

    import napari_unet.train as train_module
    from napari_unet.train import TrainingStep

    real = train_module.train_events

    def signalled_at_the_first_step(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, TrainingStep) and event.step == 1:
                os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(train_module, "train_events", signalled_at_the_first_step)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--epochs", "50",
                       "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2")
    assert code == 0 and "training stopped after 1 epoch (1 step)" in err, err
    assert load_model(data / "m.keras").class_values == [0, 255] and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_one_folder_reached_two_ways_is_locked_once(tmp_path):
    """-o and --probabilities in one folder reached through a bind mount: write_all locked it twice and hung for good."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private bind mount")
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").mkdir()
    code = ("import numpy as np; from pathlib import Path; from napari_unet.cli import write_all; "
            "write_all([(Path('real/l.tif'), np.zeros((2, 8, 8), np.uint8), {}), (Path('alias/p.tif'), np.ones((2, 8, 8), np.uint8), {})]); "
            "print('written')")
    script = f"mount --bind real alias || exit 77; {sys.executable} -c \"{code}\""
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if result.returncode == 77 or "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"no private bind mount here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0 and "written" in result.stdout, result.stderr
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["l.tif", "p.tif"]


def test_a_signal_held_while_the_model_is_rescued_still_names_where_it_went(data, capsys, monkeypatch):
    """SIGTERM during the finishing, and -o's share gone read-only: the held signal replaced the message naming the
    rescued model, and the command said no output file was written."""
    import errno
    import signal
    import tempfile

    import napari_unet.model_io as model_io
    import napari_unet.train as train_module
    from napari_unet.train import TrainingFinishing

    real_events, real_save = train_module.train_events, model_io.save_model

    def terminated_while_finishing(*args, **kwargs):
        for event in real_events(*args, **kwargs):
            yield event
            if isinstance(event, TrainingFinishing):
                os.kill(os.getpid(), signal.SIGTERM)

    def read_only(model, path):
        if Path(path).parent == data:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_save(model, path)

    (data / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(data / "tmp"))
    monkeypatch.setattr(train_module, "train_events", terminated_while_finishing)
    monkeypatch.setattr(model_io, "save_model", read_only)
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", *TINY_TRAINING)
    rescued = list((data / "tmp").glob("napari-unet-unsaved-m-*.keras"))
    assert code == 143 and len(rescued) == 1 and f"terminated; {rescued[0]} was written" in err, err


def test_no_writable_temporary_folder_is_one_line_before_tensorflow(data, capsys, monkeypatch):
    """A read-only container: TensorFlow's import failed with "No usable temporary directory found" and exit 1."""
    import tempfile

    def none_usable():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif")
    assert code == 2 and "no writable temporary folder" in err and "set TMPDIR" in err, err


def test_the_display_check_names_a_python_error_by_its_last_line(monkeypatch):
    """No Qt binding: the reason shown was "Traceback (most recent call last):"."""
    import subprocess as subprocess_module

    from napari_unet.demo import display_unreachable

    failed = subprocess_module.CompletedProcess([], 1, "", "Traceback (most recent call last):\n  File x\nImportError: no Qt binding\n")
    monkeypatch.setattr(subprocess_module, "run", lambda *a, **k: failed)
    assert display_unreachable() == "ImportError: no Qt binding"


def test_sigterm_during_the_demos_finishing_keeps_its_model(tmp_path, capsys, monkeypatch):
    """The demo trains through the same runner as train: a signal during its finishing threw its model away."""
    import signal

    import napari_unet.train as train_module
    from napari_unet.train import TrainingFinishing

    real = train_module.train_events

    def terminated_while_finishing(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, TrainingFinishing):
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module, "train_events", terminated_while_finishing)
    code, _, err = run(capsys, "demo", "--headless", "--minutes", "0.05", "--output-dir", tmp_path / "demo")
    assert code == 143 and f"terminated; {tmp_path / 'demo' / 'demo-model.keras'} was written" in err, err
    assert load_model(tmp_path / "demo" / "demo-model.keras").class_values == [0, 255]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_outputs_differing_only_in_case_are_one_file_only_where_the_disk_says_so(data, capsys, monkeypatch, suffix):
    """On macOS' and Windows' disks pred.tif and PRED.tif are one file: the probabilities replaced the labels, exit 0;
    on Linux they are two, and both are written."""
    import napari_unet.cli as cli

    save_model(tiny_model(), data / "m.keras")
    args = ["predict", data / "m.keras", data / "image.tif", "-o", data / f"p{suffix}", "--probabilities",
            data / f"P{suffix.upper()}", "--no-tta"]
    assert not cli._case_insensitive(data)  # this test's disk
    code, _, err = run(capsys, *args)
    assert code == 0 and (data / f"p{suffix}").exists() and (data / f"P{suffix.upper()}").exists(), err
    monkeypatch.setattr(cli, "_case_insensitive", lambda folder: True)
    code, _, err = run(capsys, *args)
    assert code == 2 and "--probabilities must name another file than -o" in err, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--max-minuts", "1"],  # the top-level help lists no option
         "napari-unet train: error: unrecognized arguments: --max-minuts 1; did you mean --max-minutes? (see napari-unet train --help)"),
        (["evaluate", "p.tif", "labels.tif", "--pixel-size", "3.8", "14"],
         "napari-unet evaluate: error: unrecognized arguments: --pixel-size 3.8 14; did you mean --pixel-height?"),
        (["predict", "m.keras", "image.tif", "-o", "p.tif", "--no-argmax"],  # not "did you mean --argmax", its opposite
         "napari-unet predict: error: unrecognized arguments: --no-argmax (see napari-unet predict --help)"),
        ([], "the following arguments are required: {train,predict,evaluate,demo}"),  # "required: command"
        (["trian"], "napari-unet: error: invalid command: 'trian' (choose from "),  # the commands were listed twice
        (["trian"], "did you mean train? (see napari-unet --help)"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--preset", "clasic"], "did you mean classic?"),
        (["--headless", "demo"], "napari-unet demo: error: unrecognized arguments: --headless; --headless goes after the command "
                                 "(napari-unet demo ... --headless)"),  # not "did you mean --headless?"
        # checked before the files are read, as --patch-size is (--depth 7 came after TensorFlow's import, without --)
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--depth", "7"], "argument --depth: must be 1..6, got 7"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--learning-rate", "5"], "argument --learning-rate: must be in (0, 1), got 5"),
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--context-slices", "5"], "argument --context-slices: must be 0..3, got 5"),
        # no abbreviated options: an option added later with the same prefix would change what an old script means
        (["train", "image.tif", "labels.tif", "-o", "m.keras", "--max-min", "10"],
         "napari-unet train: error: unrecognized arguments: --max-min 10; did you mean --max-minutes?"),
        (["predict", "m.keras", "image.tif", "-o", "p.tif", "--tile", "256"], "unrecognized arguments: --tile 256; did you mean --tile-size?"),
        (["evaluate", "p.tif", "labels.tif", "--ignore", "0"], "unrecognized arguments: --ignore 0; did you mean --ignore-value?"),
        (["demo", "--head"], "napari-unet demo: error: unrecognized arguments: --head"),
        (["--vers"], "napari-unet: error: the following arguments are required: {train,predict,evaluate,demo}"),  # not --version
    ],
)
def test_usage_errors_are_told_by_the_command_before_any_file_is_read(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)  # no file: none is read
    with pytest.raises(SystemExit) as exited:
        run(capsys, *argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_no_parser_takes_abbreviated_options():
    from napari_unet.cli import build_parser

    parser = build_parser()
    assert not parser.allow_abbrev and not any(command.allow_abbrev for command in parser.commands.values())


def test_no_xla_keeps_train_and_predict_off_xla(data, capsys, monkeypatch):
    """jit_compile "auto" picks XLA on CUDA and ROCm builds: --no-xla is the way round an XLA that fails there."""
    import napari_unet.predict as predict_module
    import napari_unet.train as train_module

    seen = []
    resolve, events, forward = train_module.resolve_training_jit_compile, predict_module.predict_events, predict_module._forward_pass
    monkeypatch.setattr(train_module, "resolve_training_jit_compile", lambda config, mixed: seen.append(("train", config.jit_compile)) or resolve(config, mixed))
    monkeypatch.setattr(predict_module, "predict_events", lambda *a, **k: seen.append(("predict", k.get("jit_compile"))) or events(*a, **k))
    monkeypatch.setattr(predict_module, "_forward_pass", lambda model, jit, *a: (a[-1] and seen.append(("forward", jit))) or forward(model, jit, *a))
    # XLA chosen for every prediction the network runs itself (folded), as on a GPU: the rule tuning after training too
    from napari_unet import hardware

    monkeypatch.setattr(predict_module, "XLA_MIN_PIXELS", 0)
    auto = hardware.resolve_jit_compile
    monkeypatch.setattr(hardware, "resolve_jit_compile", lambda value, *a: True if value == hardware.AUTO else auto(value, *a))
    code, _, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--no-xla", *TINY_TRAINING)
    assert code == 0, err
    assert read_metadata(data / "m.keras")["train_config"]["jit_compile"] is False
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "p.tif", "--no-xla")
    assert code == 0, err
    # the command's own predictions (training's validation ones, None, stay below predict.XLA_MIN_PIXELS)
    assert ("train", False) in seen and ("predict", False) in seen and ("train", "auto") not in seen, seen
    assert all(jit is False for kind, jit in seen if kind == "forward"), seen
    # Keras's own "auto" compiles predict_on_batch with XLA wherever a GPU is listed: as if one were
    import keras

    compiled, predict_on_batch = [], keras.Model.predict_on_batch
    monkeypatch.setattr(keras.Model, "_resolve_auto_jit_compile", lambda self: True)
    monkeypatch.setattr(keras.Model, "predict_on_batch", lambda self, x: compiled.append(self.jit_compile) or predict_on_batch(self, x))
    for output in ("q.tif", "q.zarr"):  # zarr: chunked prediction's tasks
        code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / output, "--no-xla")
        assert code == 0, err
        assert compiled and not any(compiled), (output, compiled)
        compiled.clear()


def test_help_pages_say_membrane_rule_and_tiles_and_the_demo_takes_max_minutes(capsys):
    from napari_unet.cli import build_parser

    pages = {}
    for command in ("train", "predict", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        pages[command] = " ".join(capsys.readouterr().out.split())
    assert "boundary rule" not in pages["predict"] and pages["predict"].count("membrane rule") == 2  # as train and README say
    assert "--batch-size BATCH_SIZE tiles (or their TTA copies) per network call" in pages["predict"]  # not "images"
    assert "session" not in pages["train"].lower()  # BENCHMARKS.md's sessions: README cites them
    assert "train and predict take --pixel-size Y_UM X_UM" in pages["evaluate"]
    assert build_parser().parse_args(["demo", "--max-minutes", "0.5"]).minutes == 0.5  # train's name of the budget


def test_readme_usage_block_names_each_commands_options_as_its_help_does():
    """README's "Command line" block had --pixel-size Y X where the help says Y_UM X_UM."""
    import re

    from napari_unet.cli import build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Command line", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    usages = {m[1]: m[2] for m in re.finditer(r"^napari-unet (\w+) (.*?)(?=^napari-unet |\Z)", block, re.M | re.S)}
    commands = build_parser().commands
    assert sorted(usages) == sorted(commands)
    for name, command in commands.items():
        typed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usages[name]))
        actions = [a for a in command._actions if a.option_strings and a.help != "==SUPPRESS==" and a.dest != "help"]
        assert typed <= {o for a in actions for o in a.option_strings}, (name, typed)  # none the command lacks
        assert not [a.option_strings for a in actions if not typed & set(a.option_strings)], name  # none left out
        for action in command._actions:
            if isinstance(action.metavar, tuple):  # --pixel-size Y_UM X_UM
                assert f"{action.option_strings[-1]} {' '.join(action.metavar)}" in usages[name], (name, action.metavar)


def _wrong_inputs(folder: Path) -> None:
    image, labels = stripes(n_slices=2, size=32)
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(folder / "one_slice.tif", labels[:1], photometric="minisblack")
    (folder / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "m.keras").write_bytes(b"not a model")
    with zipfile.ZipFile(folder / "newer.keras", "w") as archive:  # of a napari-unet to come
        archive.writestr(METADATA_ENTRY, json.dumps({"format_version": FORMAT_VERSION + 1}))
    (folder / "empty").mkdir()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "img.png", "labels.tif", "-o", "n.keras"],
         "image img.png is not a TIFF file: napari-unet reads TIFF files, folders of TIFF slices and zarr stores; save it as TIFF"),
        (["train", "image.tif", "empty", "-o", "n.keras"], "labels empty: no .tif/.tiff files in the folder"),
        (["evaluate", "m.keras", "labels.tif"], "prediction m.keras is a model file, not a TIFF: evaluate compares predicted "
         "labels with true labels; make the prediction first (napari-unet predict m.keras IMAGE -o prediction.tif)"),
        (["evaluate", "labels.tif", "m.keras"], "truth m.keras is a model file, not a TIFF: evaluate compares predicted labels "
         "with true labels (a mask)"),
        (["train", "m.keras", "labels.tif", "-o", "n.keras"], "image m.keras is a model file, not a TIFF: check the order of the arguments"),
        (["predict", "image.tif", "m.keras", "-o", "p.tif"],  # swapped: told of the model, before the image is read
         "image.tif is not a .keras model file (napari-unet writes .keras files); predict takes MODEL.keras first, then IMAGE"),
        (["predict", "m.keras", "missing.tif", "-o", "p.tif"], "m.keras is not a .keras model file (not a zip archive)"),
        (["train", "image.tif", "labels.tif", "-o", "n.keras", "--init", "nope.keras"], "--init: model file 'nope.keras' does not exist"),
        (["train", "image.tif", "labels.tif", "-o", "n.keras", "--init", "newer.keras"],
         "--init: newer.keras was written by a newer napari-unet; upgrade napari-unet"),
        (["predict", "newer.keras", "image.tif", "-o", "p.tif"], "newer.keras was written by a newer napari-unet; upgrade napari-unet"),
        (["evaluate", "one_slice.tif", "labels.tif"],  # the demo's prediction of its 2 held-out slices against its 10
         "differ; they must be identical (evaluate scores a prediction of the truth's whole stack)"),
    ],
)
def test_inputs_of_the_wrong_kind_or_order_are_named_by_their_role_before_tensorflow(tmp_path, capsys, monkeypatch, argv, words):
    import napari_unet.cli as cli

    def no_tensorflow():
        raise AssertionError("TensorFlow imported before the inputs were checked")

    _wrong_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_tensorflow_for_command", no_tensorflow)
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out and words in err and len(err.strip().splitlines()) == 1, err


def test_image_and_labels_swapped_in_train_are_named_as_such(data, capsys):
    # "make classes first, e.g. object boundaries vs interiors" sent the user after instance labels
    code, out, err = run(capsys, "train", data / "labels.tif", data / "image.tif", "-o", data / "m.keras")
    assert code == 2 and not out and "distinct values" in err, err
    assert err.rstrip().endswith("(if this file is the image: train takes IMAGE then LABELS)") and not (data / "m.keras").exists()


def test_predict_notes_views_a_model_lacks_and_the_demo_names_its_metric_and_its_predictions_slices(data, capsys, monkeypatch):
    import dataclasses
    from types import SimpleNamespace

    import napari_unet.cli as cli

    model = tiny_model()
    upright = dataclasses.replace(model, train_config=model.train_config.replace(augment_rotations=False))  # as OCT layers
    save_model(upright, data / "upright.keras")
    code, _, err = run(capsys, "predict", data / "upright.keras", data / "image.tif", "-o", data / "p.tif", "--tta-views", "4")
    assert code == 0 and "note: --tta-views 4: this model (trained without rotations) has 2 views" in err, err  # was silent
    # the demo's lines, not its training: the tiny model stands in for the minute of training
    finished = SimpleNamespace(model=model, steps=10, reason="completed", history=[{"epoch": 1, "loss": 0.5, "val_loss": 0.4}])
    monkeypatch.setattr(cli, "run_training", lambda *args, **kwargs: (None, finished))
    code, out, err = run(capsys, "demo", "--headless", "--output-dir", data / "demo")
    assert code == 0, err
    report = json.loads(out)
    # README quotes the ISBI pixel error; the line said "pixel error" of the mismatch fraction, 1.5x larger
    assert f"ISBI pixel error {report['isbi_pixel_error']:.3f} (0 = every pixel right)" in err and ", pixel error" not in err, err
    # evaluate of it against demo-labels.tif (10 slices) told of differing shapes only
    assert f"{data / 'demo' / 'demo-prediction.tif'} (held-out slices 8-9)" in err, err
