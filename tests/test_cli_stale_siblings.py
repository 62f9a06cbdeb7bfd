"""The notes on the hidden siblings that killed runs left beside an output (cli._note_stale_siblings): a ``.replaced``
one beside no output is the only copy of it (a run killed between its two renames, write_all), and the note said to
remove it "to free its space" (review 3 of s64, 5)."""

import socket

import pytest

from napari_unet import cli

DEAD = 999999999  # above Linux's largest process ID (4194304)


def _left(folder, kind):
    path = folder / f".pred.tif.{socket.gethostname()}.{DEAD}~0123abcd.{kind}"
    path.write_bytes(b"II*\0old labels")
    return path


def test_a_replaced_sibling_beside_no_output_is_said_to_be_its_only_copy(tmp_path, capsys):
    left = _left(tmp_path, "replaced")
    cli._note_stale_siblings([tmp_path / "pred.tif", None])
    [line] = capsys.readouterr().err.splitlines()
    target = tmp_path / "pred.tif"
    assert line == (f"note: {left} is the only copy of {target}, which a killed run (process {DEAD}, no longer running) "
                    f"was replacing: to keep it, rename it back to {target} (elsewhere once this run has written {target})")
    assert left.exists()  # (named, never removed)


@pytest.mark.parametrize("kind, what", [("replaced", "an earlier version of"), ("partial", "an unfinished")])
def test_a_sibling_beside_its_output_may_be_removed(tmp_path, capsys, kind, what):
    # (control: as before, for a .replaced one too when the output is there)
    (tmp_path / "pred.tif").write_bytes(b"II*\0new labels")
    left = _left(tmp_path, kind)
    cli._note_stale_siblings([tmp_path / "pred.tif"])
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"note: {left} is {what} pred.tif that a killed run (process {DEAD}, no longer running) left behind; "
                    "remove it to free its space")


def test_of_two_replaced_siblings_beside_no_output_the_newest_is_its_only_copy(tmp_path, capsys):
    # review 4 of s64, 2: two runs killed between their renames each left one; both were called "the only copy" (in
    # the order of their process IDs), and a user could rename the older one back
    import os

    newer = tmp_path / f".pred.tif.{socket.gethostname()}.{DEAD - 1}~0123abcd.replaced"
    older = tmp_path / f".pred.tif.{socket.gethostname()}.{DEAD}~4567cdef.replaced"
    newer.write_bytes(b"II*\0labels of the latest run")
    older.write_bytes(b"II*\0labels of an earlier run")
    os.utime(older, (1_000_000_000, 1_000_000_000))
    cli._note_stale_siblings([tmp_path / "pred.tif"])
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == sorted([
        f"note: {newer} is the only copy of {tmp_path / 'pred.tif'}, which a killed run (process {DEAD - 1}, no longer "
        f"running) was replacing: to keep it, rename it back to {tmp_path / 'pred.tif'} (elsewhere once this run has "
        f"written {tmp_path / 'pred.tif'})",
        f"note: {older} is an earlier version of pred.tif that a killed run (process {DEAD}, no longer running) left "
        "behind; remove it to free its space",
    ]), lines
