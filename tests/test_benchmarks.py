"""The command lines of the benchmark scripts in benchmarks/ (not part of the package)."""

import argparse
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_"))


class _Parsing(Exception):
    """Raised instead of parsing: the script stops before any work."""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_scripts_take_no_abbreviated_options(script, monkeypatch):
    """The napari-unet command refuses abbreviated options (a later option sharing the prefix would change what an old
    command line means); the benchmark scripts took them: ``--rep 3`` was ``--repeats 3``."""
    parsers = []

    def parse_known_args(self, args=None, namespace=None):
        parsers.append(self)
        raise _Parsing

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # restores sys.path, which the scripts extend, afterwards
    with pytest.raises(_Parsing):
        runpy.run_path(str(script), run_name="__main__")
    assert len(parsers) == 1 and not parsers[0].allow_abbrev


def test_the_benchmarks_parser_refuses_an_abbreviation_and_keeps_argparses_keywords(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    parser = _common.argument_parser(description="what it does", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    assert parser.parse_args(["--repeats", "3"]).repeats == 3
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--rep", "3"])
    assert exited.value.code == 2 and "unrecognized arguments: --rep 3" in capsys.readouterr().err
    assert parser.description == "what it does" and parser.formatter_class is argparse.RawDescriptionHelpFormatter


def test_the_previous_cores_upsampling_lever_takes_build_units_arguments(monkeypatch):
    """bench_speed's ``*_upsample`` variants put ``_levers.build_unet_upsampling`` in place of the core's ``build_unet``,
    which train_events calls with ``seed=``: the lever must take every argument build_unet takes (it did not take
    ``seed``, and those variants failed), build the same layers and weight shapes, and the same weights for a seed."""
    import dataclasses
    import inspect

    import numpy as np

    from napari_unet.config import preset
    from napari_unet.model import build_unet

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _levers

    assert set(inspect.signature(build_unet).parameters) <= set(inspect.signature(_levers.build_unet_upsampling).parameters)
    config = dataclasses.replace(preset("classic").model, depth=2, base_filters=4)
    core = build_unet(config, seed=3)
    lever, again = (_levers.build_unet_upsampling(config, mixed_precision=False, seed=3) for _ in range(2))
    shapes = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in core.layers if layer.weights}
    assert {layer.name: [tuple(w.shape) for w in layer.weights] for layer in lever.layers if layer.weights} == shapes
    assert all(np.array_equal(a, b) for a, b in zip(lever.get_weights(), again.get_weights()))
    _levers.transfer_weights(core, lever)
    image = np.random.default_rng(0).random((1, 16, 16, config.network_channels), dtype=np.float32)
    np.testing.assert_allclose(lever.predict_on_batch(image), core.predict_on_batch(image), atol=1e-5)


def _run_script(name: str, argv: list, monkeypatch):
    """Run benchmarks/``name`` with ``argv`` in this process (its ``sys.path`` changes undone afterwards)."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / name), *map(str, argv)])
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


@pytest.mark.parametrize("name, argv, words", [
    # a median of the rounds or steps after the first ones ended minutes of work in a bare statistics.StatisticsError
    ("bench_validation.py", ["--rounds", "0"], "argument --rounds: must be at least 1 (got 0)"),
    ("bench_xla_flags.py", ["--steps", "2"], "argument --steps: must be at least 3: the median step leaves out the first two (got 2)"),
    ("bench_xla_flags.py", ["--rounds", "0"], "argument --rounds: must be at least 1 (got 0)"),
    ("bench_xla_training.py", ["--steps", "2"], "argument --steps: must be at least 3: the median step leaves out the first two"),
    ("bench_retrain.py", ["--steps", "1"], "argument --steps: must be at least 2: the median step leaves out the first"),
    ("bench_sampler.py", ["--steps", "6"], "argument --steps: must be at least 7: the median step leaves out the first six"),
    ("bench_sampler.py", ["--batches", "0"], "argument --batches: must be at least 1 (got 0)"),
    ("bench_sampler.py", ["--steps", "x"], "argument --steps: 'x' is not a whole number"),
])
def test_benchmark_counts_too_small_for_their_statistics_are_refused_by_the_parser(name, argv, words, monkeypatch, capsys):
    parse_args = argparse.ArgumentParser.parse_args

    def then_stop(self, *args, **kwargs):  # accepted: the script would start its minutes of work
        parse_args(self, *args, **kwargs)
        raise _Parsing

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", then_stop)
    with pytest.raises(SystemExit) as exited:
        _run_script(name, argv, monkeypatch)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and words in err and "Traceback" not in err, err


def test_one_validation_round_reports_its_times_without_the_later_median(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    summarize = runpy.run_path(str(BENCHMARKS / "bench_validation.py"))["summarize"]
    one = summarize({"folded copy (before)": [3.0], "training network (now)": [2.0]})
    assert one == {"folded copy (before)": {"first_s": 3.0, "median_later_s": None},
                   "training network (now)": {"first_s": 2.0, "median_later_s": None}, "later_ratio": None}
    three = summarize({"folded copy (before)": [3.0, 1.0, 2.0], "training network (now)": [2.0, 1.0, 0.5]})
    assert three["folded copy (before)"]["median_later_s"] == 1.5 and three["later_ratio"] == pytest.approx(1.5 / 0.75)


class _Scratch(Exception):
    """Raised where the script makes its scratch folder: it stops before any work."""


@pytest.mark.parametrize("name, argv", [
    ("bench_large_training.py", []),
    ("bench_section_predict.py", ["--model", "m.keras"]),
])
def test_a_missing_workdir_is_created(name, argv, tmp_path, monkeypatch):
    import tempfile

    workdir, made = tmp_path / "not" / "yet", []

    def scratch(*args, dir=None, **kwargs):  # (TemporaryDirectory(dir=...) failed when the folder was missing)
        made.append(Path(dir).is_dir())
        raise _Scratch

    monkeypatch.setattr(tempfile, "TemporaryDirectory", scratch)
    with pytest.raises(_Scratch):
        _run_script(name, [*argv, "--workdir", workdir], monkeypatch)
    assert made == [True]


@pytest.mark.parametrize("name", ["bench_large_training.py", "bench_section_predict.py", "bench_large_predict.py"])
def test_a_workdir_that_cannot_be_a_folder_is_refused_by_the_parser(name, tmp_path, monkeypatch, capsys):
    (tmp_path / "a file").write_text("")
    with pytest.raises(SystemExit) as exited:
        _run_script(name, ["--model", "m.keras"] * (name == "bench_section_predict.py") + ["--workdir", tmp_path / "a file"], monkeypatch)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--workdir {tmp_path / 'a file'}: cannot create the folder (File exists)" in err, err
