"""The command line as a scripting contract: what goes to stdout and stderr, exit statuses, and the signals a shell,
a batch scheduler or a pipeline sends (session 62's hunt, /work/s62/script/REPORT.md D1-D11)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _helpers import run_cli as run, write_stripes_stack
from napari_unet.cli import main

TESTS = Path(__file__).resolve().parent
README = TESTS.parent / "README.md"


@pytest.fixture
def data(tmp_path):
    return write_stripes_stack(tmp_path)


def python(script: str, *args, env=None, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    """``script`` in a Python of its own, with the tests' helpers importable."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(script)
    kwargs.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], text=True, timeout=timeout, env=env or os.environ.copy(),
                          **kwargs)


def _fake_final(reason="completed"):
    from _helpers import tiny_model
    from napari_unet.train import TrainingFinished

    history = [{"epoch": 1, "step": 20, "run": 0, "loss": 0.5, "val_loss": 0.4, "elapsed": 1.0}]
    return TrainingFinished(model=tiny_model(), reason=reason, best_epoch=1, history=history, steps=25,
                            divergence="the loss was nan at step 26" if reason == "diverged" else None)


# D1: SIGUSR1 ---------------------------------------------------------------------------------------------------------

def test_sigusr1_during_evaluate_is_noted_once_and_the_scores_are_printed(data):
    """`sbatch --signal=USR1@300` before `srun napari-unet predict/evaluate`: the default action killed the command at
    once, status 138, no message."""
    result = python("""
        import os, signal
        from napari_unet import cli, metrics
        real = metrics.evaluate
        def signalled(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)  # a scheduler may send it again
            return real(*args, **kwargs)
        metrics.evaluate = signalled
        sys.exit(cli.main(["evaluate", sys.argv[1], sys.argv[1]]))
    """, data / "labels.tif")
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert json.loads(result.stdout)["pixel_error"] == 0
    assert result.stderr.count("napari-unet: SIGUSR1 ignored: only train (and demo) stop early on it; the run goes on") == 1, result.stderr


def test_sigusr1_before_the_first_step_stops_after_it_and_one_after_the_save_is_ignored(data):
    """SIGUSR1 while TensorFlow loads or the data is prepared killed train (138, no model, empty stderr); so did one
    while its validation was scored after the model was saved."""
    result = python("""
        import os, signal
        from napari_unet import cli, metrics
        real_load, real_evaluate = cli.load_tensorflow_for_command, metrics.evaluate
        def load_then_signal():
            real_load()
            os.kill(os.getpid(), signal.SIGUSR1)  # start-up: before the training loop
        def signalled(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGUSR1)  # scoring the validation: the model is saved
            return real_evaluate(*args, **kwargs)
        cli.load_tensorflow_for_command, metrics.evaluate = load_then_signal, signalled
        folder = sys.argv[1]
        sys.exit(cli.main(["train", f"{folder}/image.tif", f"{folder}/labels.tif", "-o", f"{folder}/m.keras", "--epochs", "50",
                           "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2", "--depth", "2"]))
    """, data)
    err = result.stderr
    assert result.returncode == 0, (result.returncode, err[-3000:])
    assert "napari-unet: SIGUSR1: stopping the training after its first step; the model is finished and saved" in err, err
    assert "training stopped after 1 epoch (1 step)" in err and (data / "m.keras").exists(), err
    assert err.count("napari-unet: SIGUSR1 ignored: the training steps are over; the run goes on") == 1, err
    assert "validation_slices" in json.loads(result.stdout)


# D2: Ctrl-C in a shell script or loop ------------------------------------------------------------------------------

SLOW_EVALUATE = """
    import time
    from napari_unet import cli
    def slow(args):
        print("ready", file=sys.stderr, flush=True)
        time.sleep(60)
        return 0
    cli.cmd_evaluate = slow
    sys.argv = ["napari-unet", "evaluate", "a.tif", "b.tif"]
    cli.run()
"""


def _ready(process) -> None:
    """Read ``process``'s stderr up to the slow command's "ready" line. Started with :func:`_start` (a process group of
    its own): a command that has not printed it after :data:`TRAIN_TIMEOUT` seconds is killed with its whole group by
    :func:`_read_until`'s watchdog, and the test fails here instead of hanging."""
    lines, timed_out = _read_until(process, lambda line: line.strip() == "ready")
    if lines and lines[-1].strip() == "ready":
        return
    raise AssertionError("the command never started (%s):\n%s" % (
        f"no 'ready' after {TRAIN_TIMEOUT} s; its process group was killed" if timed_out
        else "its stderr ended without 'ready'", "".join(lines)[-3000:]))


def test_ctrl_c_stops_a_shell_loop_and_the_shell_still_sees_status_130(tmp_path):
    """The command exited 130 after Ctrl-C instead of dying of SIGINT: bash took it as handled by the command and went
    on with the next one ("wait and cooperative exit"), so `for f in *.tif; do napari-unet predict ...; done` needed one
    Ctrl-C per file."""
    code = "import sys; sys.path.insert(0, %r)\n%s" % (str(TESTS), textwrap.dedent(SLOW_EVALUATE))
    (tmp_path / "slow.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    # Ctrl-C to the command alone: the shell (not signalled) reports 130, as before
    # in a group of its own (see _start): the clean-up kills the Python too, not bash alone (left running, it held
    # stderr open); the SIGINT still goes to bash's child only
    alone = _start(["bash", "-c", f'"{sys.executable}" slow.py; echo "rc=$?"'], cwd=tmp_path, env=env)
    try:
        _ready(alone)
        subprocess.run(["pkill", "-INT", "-P", str(alone.pid)], check=True)  # bash's one child, the command
        out, err = alone.communicate(timeout=60)
    finally:
        _ended(alone)
    assert out.strip() == "rc=130" and "napari-unet: interrupted; " in err, (out, err)
    # Ctrl-C at a terminal signals the whole foreground process group: the loop stops
    loop = subprocess.Popen(["bash", "-c", f'for i in 1 2; do "{sys.executable}" slow.py; echo "iteration $i rc=$?"; done; '
                             'echo "loop finished"'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        _ready(loop)
        os.killpg(loop.pid, signal.SIGINT)
        try:
            out, err = loop.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # the loop went on to the next iteration
            os.killpg(loop.pid, signal.SIGKILL)
            out, err = loop.communicate()
    finally:
        _ended(loop)
    assert loop.returncode == -signal.SIGINT and out == "", (loop.returncode, out, err)


def test_the_entry_point_dies_of_sigterm_after_its_clean_up(tmp_path):
    """SIGTERM and SIGHUP as SIGINT: the command cleans up, names what it wrote, then dies of the signal (a shell shows
    143, 129)."""
    (tmp_path / "slow.py").write_text("import sys; sys.path.insert(0, %r)\n%s" % (str(TESTS), textwrap.dedent(SLOW_EVALUATE)))
    process = _start([sys.executable, "slow.py"], cwd=tmp_path)  # a group of its own: _ready's watchdog can kill it
    try:
        _ready(process)
        process.send_signal(signal.SIGTERM)
        err = process.stderr.read()
        assert process.wait(timeout=60) == -signal.SIGTERM and "napari-unet: terminated; no scores were printed" in err, err
    finally:
        _ended(process)


# D3: a diverged train never writes the -o file ---------------------------------------------------------------------

def test_a_diverged_train_writes_name_diverged_keras_not_the_file_asked_for(data, capsys, monkeypatch):
    """A diverged run (status 1) wrote its kept weights to -o when that file did not exist yet: Make and
    `[ -f model.keras ]` then took the failed run's file for a finished target."""
    import napari_unet.cli as cli
    from napari_unet.model_io import load_model

    monkeypatch.setattr(cli, "run_training", lambda *a, **k: (None, _fake_final("diverged")))
    code, out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras")
    model = data / "m.diverged.keras"
    assert code == 1 and not out and not (data / "m.keras").exists(), err
    assert f"wrote {model}\n" in err and f"and stopped; {model} holds the best epoch 1 from before it" in err, err
    assert load_model(model).class_values == [0, 255]


# D4: train without validation still prints one JSON document ----------------------------------------------------

def test_train_without_validation_prints_a_json_document_without_scores(data, capsys, monkeypatch):
    """`train --val-fraction 0` printed nothing on stdout: `jq` or json.load on it failed."""
    from types import SimpleNamespace

    import napari_unet.cli as cli

    started = SimpleNamespace(val_slices=[], val_column=None, val_window=None, train_slices=[0, 1, 2, 3])
    monkeypatch.setattr(cli, "run_training", lambda *a, **k: (started, _fake_final()))
    code, out, err = run(capsys, "train", data / "image.tif", data / "labels.tif", "-o", data / "m.keras", "--val-fraction", "0")
    assert code == 0, err
    assert json.loads(out) == {"validation_slices": [], "note": "no validation (--val-fraction 0): no scores"}


# D5: the contract written down ------------------------------------------------------------------------------------

def test_the_help_and_readme_state_the_streams_and_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "standard output carries only results, as one JSON document" in out, out
    for status in ("  0 ", "  1 ", "  2 ", "130, 143, 129", "dies of the signal"):
        assert status in out, (status, out)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the learning-rate schedule follows it (default: none, the epochs decide" in out, out
    readme = README.read_text()
    assert "### Output and exit status" in readme
    section = readme.split("### Output and exit status")[1].split("\n## ")[0].split("\n### ")[0]
    for text in ("standard output", "standard error", "| 0 |", "| 1 |", "| 2 |", "| 130 |", "| 143 |", "| 129 |",
                 "NAME.diverged.keras", "srun napari-unet train", "SIGUSR1"):
        assert text in section, text


# D6 + D9: the demo in a batch job: a combined log in order, no folder left in TMPDIR -----------------------------

def test_the_demo_logs_its_scores_in_order_and_leaves_no_matplotlib_folder(tmp_path):
    """Without PYTHONUNBUFFERED (as in a user's batch job) the demo's JSON, buffered, came after the lines that follow
    it in `> log 2>&1`; with HOME read-only (a container) every demo left a matplotlib-XXXX folder in TMPDIR, which
    matplotlib removes at exit, a step os._exit skips."""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME="/proc", TMPDIR=str(tmp_path / "tmp"))  # /proc takes no new folders, also from root
    with open(tmp_path / "demo.log", "w") as log:
        result = python("""
            from types import SimpleNamespace
            from _helpers import tiny_model
            from napari_unet import cli
            def trained(*args, **kwargs):  # the demo's lines, not its minute of training (TensorFlow loaded by then)
                return None, SimpleNamespace(model=tiny_model(), steps=10, reason="completed",
                                             history=[{"epoch": 1, "loss": 0.5, "val_loss": 0.4}])
            cli.run_training = trained
            sys.argv = ["napari-unet", "demo", "--headless", "--output-dir", sys.argv[1]]
            cli.run()
        """, tmp_path / "demo", env=env, stdout=log, stderr=subprocess.STDOUT, capture_output=False)
    text = (tmp_path / "demo.log").read_text()
    problems = []
    if result.returncode != 0:
        problems.append(f"status {result.returncode}")
    if not 0 <= text.find('"held_out_slices"') < text.find("held-out slices 8-9: V_rand"):
        problems.append("the JSON came after the lines that follow it")
    left = sorted(p.name for p in (tmp_path / "tmp").iterdir())
    if left:
        problems.append(f"left in TMPDIR: {left}")
    if "Matplotlib created a temporary" in text:
        problems.append("matplotlib's warning")
    assert not problems, (problems, text[-3000:])


# D7: evaluate with a closed stdout -------------------------------------------------------------------------------

def test_evaluate_with_a_closed_stdout_fails_with_a_message(data):
    """`napari-unet evaluate P T >&-` exited 0 with the scores written nowhere (`> /dev/full` exited 1)."""
    result = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m napari_unet.cli evaluate labels.tif labels.tif >&-'],
                            cwd=data, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "napari-unet: error: standard output is closed (>&-): evaluate prints its scores there" in result.stderr


# D8: pipes and standard input as inputs --------------------------------------------------------------------------

def test_a_pipe_or_standard_input_as_input_is_said_to_be_unsupported(data, capsys):
    """`evaluate P <(cat T)` said "truth 63: cannot read it (No such file or directory)", and `evaluate - T` "does not
    exist"."""
    code, _, err = run(capsys, "evaluate", "-", data / "labels.tif")
    assert code == 2 and "prediction: reading standard input ('-') is not supported; give a file" in err, err
    result = subprocess.run(["bash", "-c", f'"{sys.executable}" -m napari_unet.cli evaluate labels.tif <(cat labels.tif)'],
                            cwd=data, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error: truth '/dev/fd/" in result.stderr and "is a pipe, not a file: reading from a pipe or standard input is not supported" in result.stderr, result.stderr


# D11: smaller points ----------------------------------------------------------------------------------------------

def test_interrupt_notices_start_a_new_line_only_on_a_terminal(capfd):
    """A log got a blank line before each notice (the newline ends a terminal's progress line)."""
    from napari_unet.cli import _say_stopping

    _say_stopping(signal.SIGTERM)
    assert capfd.readouterr().err == "napari-unet: terminating at the end of the current step or tile\n"


def test_an_interrupted_evaluate_says_no_scores_were_printed(data, capsys, monkeypatch):
    import napari_unet.metrics as metrics

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics, "evaluate", interrupted)
    code, out, err = run(capsys, "evaluate", data / "labels.tif", data / "labels.tif")
    assert code == 130 and not out and "napari-unet: interrupted; no scores were printed" in err, err


def test_version_flags_python_dash_m_and_a_folder_as_predict_output(data, capsys):
    from _helpers import tiny_model
    from napari_unet.model_io import save_model

    for flag in ("-V", "--version"):
        with pytest.raises(SystemExit) as exit_:
            main([flag])
        assert exit_.value.code == 0 and capsys.readouterr().out.startswith("napari-unet "), flag
    result = subprocess.run([sys.executable, "-m", "napari_unet", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("napari-unet "), result.stderr
    save_model(tiny_model(), data / "m.keras")
    (data / "out").mkdir()  # it said "must end in .tif or .tiff or .zarr"
    code, _, err = run(capsys, "predict", data / "m.keras", data / "image.tif", "-o", data / "out")
    assert code == 2 and f"labels file {str(data / 'out')!r} is a folder; give a file name" in err, err


def test_the_entry_point_dies_only_of_the_signal_that_ended_its_own_command(monkeypatch):
    """An interrupted main() earlier in the same process (a test, a notebook) made a later run() kill its process."""
    from napari_unet import cli

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(cli, "_ENDED_BY", [signal.SIGINT])  # left by an earlier command
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(SystemExit) as normal:
        cli.run()
    assert normal.value.code == 0


posix_only = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="SIGUSR1 is POSIX-only")


def _seen_by_the_command(monkeypatch) -> dict:
    """evaluate made a command that returns 0 and records the SIGUSR1 and SIGTERM handlers it runs with."""
    from napari_unet import cli

    seen = {}

    def command(args):
        seen.update(usr1=signal.getsignal(signal.SIGUSR1), term=signal.getsignal(signal.SIGTERM))
        return 0

    monkeypatch.setattr(cli, "cmd_evaluate", command)
    return seen


@posix_only
def test_main_restores_the_sigusr1_and_sigterm_handlers_it_found(monkeypatch):
    """Library callers and tests rely on main() leaving the process's handlers as they were; one installed by a
    program embedding it is left alone during the command too."""
    seen = _seen_by_the_command(monkeypatch)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    term = signal.getsignal(signal.SIGTERM)
    assert main(["evaluate", "p.tif", "t.tif"]) == 0
    assert seen["usr1"] not in (signal.SIG_DFL, signal.SIG_IGN, None) and seen["term"] is not term
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is term

    def own(signum, frame):
        pass

    signal.signal(signal.SIGUSR1, own)
    assert main(["evaluate", "p.tif", "t.tif"]) == 0
    assert seen["usr1"] is own and signal.getsignal(signal.SIGUSR1) is own


@posix_only
def test_the_entry_point_ignores_sigusr1_once_main_has_returned(monkeypatch):
    """main() restores SIGUSR1's default action, which killed run() on its way out (status 138, no message)."""
    from napari_unet import cli

    during = []
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    monkeypatch.setattr(cli, "main", lambda: during.append(signal.getsignal(signal.SIGUSR1)) or 0)
    monkeypatch.setattr(cli, "_ENDED_BY", [])
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(SystemExit) as done:
        cli.run()
    assert done.value.code == 0 and during == [signal.SIG_DFL]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGUSR1)  # (ignored: the test goes on)


def test_a_sigterm_right_after_main_installs_its_handler_ends_the_command_as_terminated(monkeypatch, capsys):
    """Installed before the try, a SIGTERM there escaped main() as a traceback (and Python died of SIGINT)."""
    from napari_unet import cli

    seen = _seen_by_the_command(monkeypatch) if hasattr(signal, "SIGUSR1") else {}
    install = cli._stop_on_sigterm

    def install_then_signalled(previous):
        install(previous)
        signal.raise_signal(signal.SIGTERM)

    term = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_stop_on_sigterm", install_then_signalled)
    assert main(["evaluate", "p.tif", "t.tif"]) == 128 + signal.SIGTERM and not seen
    assert "napari-unet: terminated; no scores were printed" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is term and cli._ENDED_BY == [signal.SIGTERM]


def test_a_sigterm_during_main_s_clean_up_comes_after_it_without_a_traceback(monkeypatch):
    """A SIGTERM while main() flushes its streams and restores its handlers: the command's status is returned and the
    signal's own handler (here the caller's; run()'s default: death, 143) acts on it after the clean-up."""
    from napari_unet import cli

    if hasattr(signal, "SIGUSR1"):
        _seen_by_the_command(monkeypatch)
    else:
        monkeypatch.setattr(cli, "cmd_evaluate", lambda args: 0)
    defer = cli._defer_signals

    def defer_then_signalled(previous):
        late = defer(previous)
        signal.raise_signal(signal.SIGTERM)
        return late

    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    monkeypatch.setattr(cli, "_defer_signals", defer_then_signalled)
    assert main(["evaluate", "p.tif", "t.tif"]) == 0
    assert received == [signal.SIGTERM] and cli._ENDED_BY == []


# D1, D2 in the training loop: SIGUSR1 mid-epoch, SIGHUP in the loop and while the model is finished (session 63) -----

#: ``napari-unet train`` through the console-script entry point, its training events wrapped: after each step it prints
#: "step N done (pid P)" on stderr for the test to signal on; with ``--wait-for-stop N`` it waits (two minutes at most)
#: after step N until a SIGUSR1 asked the training to stop, so the stop falls after that very step; with
#: ``--hangup-when-finishing`` it sends itself SIGHUP once the model is being finished.
TRAIN_WITH_MARKS = """
    import argparse, os, signal, time
    from napari_unet import cli, train
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--wait-for-stop", type=int)
    parser.add_argument("--hangup-when-finishing", action="store_true")
    options = parser.parse_args()
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as at a terminal (a test runner under nohup ignores it)
    real_events = train.train_events
    def marked(*args, stop=None, **kwargs):
        for event in real_events(*args, stop=stop, **kwargs):
            yield event
            if isinstance(event, train.TrainingStep):
                print(f"step {event.step} done (pid {os.getpid()})", file=sys.stderr, flush=True)
                if event.step == options.wait_for_stop:
                    deadline = time.monotonic() + 120
                    while not stop() and time.monotonic() < deadline:
                        time.sleep(0.01)
            if isinstance(event, train.TrainingFinishing) and options.hangup_when_finishing:
                os.kill(os.getpid(), signal.SIGHUP)  # the command has begun finishing the model
    train.train_events = marked
    folder = options.folder
    sys.argv = ["napari-unet", "train", f"{folder}/image.tif", f"{folder}/labels.tif", "-o", f"{folder}/m.keras",
                "--epochs", "400", "--steps-per-epoch", "5", "--patch-size", "64", "--batch-size", "2", "--depth", "2"]
    cli.run()
"""

#: Seconds a test waits for a training command (TensorFlow's import and tracing on a loaded machine included).
TRAIN_TIMEOUT = 300


def _train_script(folder: Path) -> Path:
    script = folder / "train_with_marks.py"
    script.write_text("import sys; sys.path.insert(0, %r)\n%s" % (str(TESTS), textwrap.dedent(TRAIN_WITH_MARKS)))
    return script


def _start(argv: list, cwd=None, env=None) -> subprocess.Popen:
    """``argv`` in a session and process group of its own (so :func:`_kill_all` ends it and every process it started,
    e.g. the Python that ``bash -c`` runs, which also holds the pipes), stdout and stderr piped, C locale (bash's
    "Hangup" in English) over ``env`` (default: this process's environment)."""
    env = dict(os.environ if env is None else env, LC_ALL="C", LANG="C")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL to ``process``'s whole process group (see :func:`_start`): no training goes on after a test, and a
    read of its pipes ends."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group has ended
        os.killpg(process.pid, signal.SIGKILL)


def _ended(process: subprocess.Popen) -> None:
    """A test's clean-up: ``process``'s group killed, ``process`` waited for, its pipes closed."""
    _kill_all(process)
    process.wait()
    for pipe in (process.stdout, process.stderr):
        with contextlib.suppress(OSError, ValueError):
            pipe.close()


def _read_until(process, done) -> tuple:
    """Read ``process``'s stderr line by line up to the first line for which ``done(line)`` is true (the last of the
    lines returned) or to its end; returns (the lines read, whether the watchdog fired). The watchdog: a command that
    has not got there after :data:`TRAIN_TIMEOUT` seconds is killed with its whole process group (see :func:`_start`;
    its stderr then ends, and so does the read)."""
    import threading

    fired = []
    def kill() -> None:
        fired.append(True)
        _kill_all(process)
    lines = []
    watchdog = threading.Timer(TRAIN_TIMEOUT, kill)
    watchdog.start()
    try:
        for line in process.stderr:
            lines.append(line)
            if done(line):
                break
    finally:
        watchdog.cancel()
    return lines, bool(fired)


def _until_step(process, step: int) -> tuple:
    """Read ``process``'s stderr up to the line of training step ``step``; returns (its pid, the lines read). A
    command that has not got there after :data:`TRAIN_TIMEOUT` seconds is killed with its whole process group (its
    stderr then ends; see :func:`_read_until`)."""
    mark = f"step {step} done (pid "
    lines, _ = _read_until(process, lambda line: line.startswith(mark))
    if lines and lines[-1].startswith(mark):
        return int(lines[-1].split("(pid ")[1].rstrip(")\n")), lines
    raise AssertionError("the training never reached step %d:\n%s" % (step, "".join(lines)[-3000:]))


def _finished(process, lines: list) -> tuple:
    """(stdout, all of stderr) once ``process`` has ended."""
    try:
        out, err = process.communicate(timeout=TRAIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_all(process)
        out, err = process.communicate()
        raise AssertionError("the command did not end:\n" + ("".join(lines) + err)[-3000:])
    return out, "".join(lines) + err


def _signalled_at_step(argv: list, step: int, signum: int) -> tuple:
    """Start ``argv`` (:func:`_start`), send ``signum`` to the training's process once it finished step ``step``, and
    wait for the end; returns (the process, the training's pid, stdout, all of stderr). Killed with its group if it
    hangs (:func:`_ended`)."""
    process = _start(argv)
    try:
        pid, lines = _until_step(process, step)
        os.kill(pid, signum)
        out, err = _finished(process, lines)
    finally:
        _ended(process)  # the Python too: killing a bash alone left it training (and holding stderr open)
    return process, pid, out, err


def test_sigusr1_in_the_middle_of_an_epoch_stops_after_the_current_step_and_saves_the_kept_weights(data):
    """SIGUSR1 during the training loop (epoch 2, after 3 of its 5 steps): the training stops after that step, its model
    (the best of the epochs, the unfinished one validated too) is finished and saved, scored, and the status is 0."""
    script = _train_script(data)
    process, _, out, err = _signalled_at_step([sys.executable, script, data, "--wait-for-stop", "8"], 8, signal.SIGUSR1)
    from napari_unet.model_io import load_model

    assert process.returncode == 0, (process.returncode, err[-3000:])
    assert "napari-unet: SIGUSR1: stopping the training after the current step; the model is finished and saved" in err, err[-3000:]
    assert "step 9 done" not in err, err[-3000:]
    assert "training stopped after 2 epochs (8 steps); kept the best epoch " in err, err[-3000:]
    assert f"wrote {data / 'm.keras'}\n" in err and load_model(data / "m.keras").class_values == [0, 255], err[-3000:]
    assert "validation_slices" in json.loads(out)


def test_sighup_in_the_training_loop_ends_the_command_after_its_clean_up_and_a_shell_sees_129(data):
    """SIGHUP (the terminal closed) while training: no model file and no partial file, "terminated", then the command
    dies of the signal, so a shell's $? is 129."""
    script = _train_script(data)
    command = ["bash", "-c", f'"{sys.executable}" "{script}" "{data}"; echo "rc=$?"']  # LC_ALL=C (_start): "Hangup"
    _, pid, out, err = _signalled_at_step(command, 3, signal.SIGHUP)
    assert out.strip().splitlines()[-1] == "rc=129", (out, err[-3000:])
    assert "napari-unet: terminating at the end of the current step or tile" in err, err[-3000:]
    assert "napari-unet: terminated; no output file was written\n" in err, err[-3000:]
    assert f"{pid} Hangup" in err, err[-3000:]  # bash's report of a death by SIGHUP (an exit with status 129 has none)
    assert sorted(p.name for p in data.iterdir()) == ["image.tif", "labels.tif", script.name]


def test_sighup_while_the_model_is_finished_comes_once_it_is_saved_then_the_command_dies_of_it(data):
    """SIGHUP once the training steps are over: the finished model is saved first (README: "train's model file is
    finished before its validation is scored"), named, then the command dies of SIGHUP (returncode -1)."""
    from napari_unet.model_io import load_model

    script = _train_script(data)
    # stopped by SIGUSR1 after step 2, then signalled while finishing: no 400 epochs
    process, _, out, err = _signalled_at_step([sys.executable, script, data, "--wait-for-stop", "2", "--hangup-when-finishing"],
                                              2, signal.SIGUSR1)
    assert process.returncode == -signal.SIGHUP, (process.returncode, err[-3000:])
    assert "napari-unet: terminating once the finished model is saved" in err, err[-3000:]
    model = data / "m.keras"
    assert f"wrote {model}\n" in err and err.rstrip().endswith(f"napari-unet: terminated; {model} was written"), err[-3000:]
    assert load_model(model).class_values == [0, 255] and out == ""
    assert sorted(p.name for p in data.iterdir()) == ["image.tif", "labels.tif", "m.keras", script.name]


# D2 where there are no deaths by signal (Windows) ----------------------------------------------------------------

@pytest.mark.parametrize("number", ["SIGINT", "SIGTERM"])
def test_without_posix_signals_the_entry_point_exits_with_the_status_of_an_interrupted_command(monkeypatch, capsys, number):
    """Windows has no deaths by signal (os.kill ends a process with the number as its status), nor SIGHUP or SIGUSR1:
    run() exits with main()'s status, 130 or 143, after main() has cleaned up and said so."""
    from napari_unet import cli

    signum = getattr(signal, number)

    def interrupted(args):
        raise KeyboardInterrupt if signum == signal.SIGINT else cli._Terminated(signum)

    class NotPosix:  # the os module as cli sees it on Windows (os.name itself stays: pathlib chooses its paths by it)
        name = "nt"

        def __getattr__(self, attribute):
            return getattr(os, attribute)

    deaths = []
    monkeypatch.setattr(cli, "os", NotPosix())
    monkeypatch.delattr(signal, "SIGHUP")
    monkeypatch.delattr(signal, "SIGUSR1")
    monkeypatch.setattr(cli, "_die_of", deaths.append)  # (on POSIX it would end the test run)
    monkeypatch.setattr(cli, "cmd_evaluate", interrupted)
    monkeypatch.setattr(sys, "argv", ["napari-unet", "evaluate", "p.tif", "t.tif"])
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run()
    assert exited.value.code == 128 + signum and deaths == [], (exited.value.code, deaths)
    how = "interrupted" if signum == signal.SIGINT else "terminated"
    assert f"napari-unet: {how}; no scores were printed" in capsys.readouterr().err
