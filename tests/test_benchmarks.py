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
