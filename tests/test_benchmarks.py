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
