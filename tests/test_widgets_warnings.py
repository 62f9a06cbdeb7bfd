"""Warnings in napari's workers (session 64): napari 0.9's workers never relay the Python warnings of their thread (its
_NotifyingMixin.__init__ is not reached in their MRO), so warnings the napari_unet core raises for the user in a job
(train's RuntimeWarning of slow bfloat16 training, metrics' UnknownValuesWarning...) were lost; only LowMemoryWarning was
shown, once per repetition. Now every warning the napari_unet code raises in a worker is one napari warning
notification "napari-unet: <message>", once per job; third-party warnings (TensorFlow's, Keras', numpy's) are not shown,
also those whose stacklevel points into napari_unet's code. Where napari relays worker warnings itself, nothing is added.

Also: a Retrain whose check of the corrections fails for another reason than a read error (out of memory, an unexpected
error) keeps its model and says in one line that the check could not be made and why (was: only logged)."""

import logging
import time
import uuid
import warnings

import numpy as np
import pytest

from conftest import run_and_wait, tiny_settings

pytestmark = pytest.mark.gui


def _warnings_shown(notifications):
    return [text for severity, text in notifications if severity == "warning"]


def _core_function(source: str, name: str):
    """A function defined by ``source`` whose code lives in a file of the napari_unet package (as the core's does): the
    warnings it raises, or a library it calls raises, point there. Its source is known to ``linecache``."""
    import linecache
    import os

    import napari_unet

    filename = os.path.join(os.path.dirname(napari_unet.__file__), f"_test_core_{uuid.uuid4().hex}.py")  # no such file
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"np": np, "warnings": warnings}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def _run_job(qtbot, viewer, job, *args):
    """``job(*args)`` in a worker of ``viewer`` (as the widgets start theirs); waits for its end."""
    from napari_unet._widgets.workers import create_worker_of

    worker = create_worker_of(viewer, job, *args, task="napari-unet test job")
    errors = []
    worker.errored.connect(errors.append)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    qtbot.wait(50)  # the notifications queued from the worker's thread
    assert not errors, errors
    return worker


def test_a_training_shows_the_cores_runtime_warning_once(widgets, qtbot, notifications, monkeypatch):
    # old: mixed_precision=True on a CPU without fast bfloat16: train's RuntimeWarning ("several times slower") was lost
    from napari_unet import hardware

    training, session = widgets.training, widgets.session
    monkeypatch.setattr(hardware, "has_fast_bfloat16", lambda: False)
    tiny_settings(training, epochs=1, steps=2)
    configs = training.settings.configs
    monkeypatch.setattr(training.settings, "configs", lambda: (lambda m, t: (m, t.replace(mixed_precision=True)))(*configs()))
    run_and_wait(qtbot, training.start, lambda: training._run is not None)
    qtbot.wait(50)
    assert session.model is not None, training.progress.status.text()
    assert _warnings_shown(notifications) == [
        "napari-unet: mixed_precision: this CPU has no AVX512-BF16/AMX and no GPU is used, so bfloat16 training is "
        "several times slower than float32 here"], notifications


def test_a_warning_repeated_in_a_job_is_shown_once_per_job(widgets, qtbot, notifications):
    # old: the UnknownValuesWarning of each evaluate was lost; the LowMemoryWarning came once per repetition (superqt's
    # worker sets "always" while it runs)
    from napari_unet.hardware import LowMemoryWarning
    from napari_unet.metrics import evaluate

    truth = np.zeros((1, 16, 16), np.uint8)
    truth[0, :8] = 255
    low = f"stack.tif: reading its pixels whole needs 1.0 GB, more than 3/4 of the 0.5 GB available now {uuid.uuid4()}"

    def job():
        for _ in range(3):
            evaluate(np.ones_like(truth), truth, [0, 255])  # 1s: no class of the truth
            warnings.warn(low, LowMemoryWarning)

    _run_job(qtbot, widgets.viewer, job)
    shown = _warnings_shown(notifications)
    assert len(shown) == 2, notifications
    assert shown[0].startswith("napari-unet: pred_labels holds 256 pixels (100.0%) of values that are no class of the "
                               "truth ['0', '255']: scored as wrong"), shown
    assert shown[1] == f"napari-unet: {low}"
    _run_job(qtbot, widgets.viewer, job)  # a new job (a new training...): said again
    assert _warnings_shown(notifications) == shown * 2, notifications


def test_third_party_warnings_in_a_worker_are_not_shown(widgets, qtbot, notifications):
    # TensorFlow, Keras and numpy warn in the workers too: noise a user cannot act on. numpy's warning of an all-NaN
    # mean points at its caller (stacklevel=2), here code of the napari_unet package; so does a library's deprecation
    mean = _core_function("def mean(a):\n    return np.nanmean(a)\n", "mean")
    deprecated = _core_function("def old(f):\n    return f()\n", "old")
    core = _core_function("def slow():\n    warnings.warn('this will take a while', RuntimeWarning, stacklevel=2)\n", "slow")

    def library_call():
        warnings.warn("library_call is deprecated", DeprecationWarning, stacklevel=2)

    def job():
        assert np.isnan(mean(np.full(3, np.nan)))
        deprecated(library_call)
        warnings.warn("a library's own warning", UserWarning)  # this file: outside the package
        core()

    _run_job(qtbot, widgets.viewer, job)
    assert _warnings_shown(notifications) == ["napari-unet: this will take a while"], notifications


@pytest.mark.parametrize("connection", ["relaying", "bound method", "bound method, job goes on"])
def test_warnings_of_workers_relayed_by_napari_itself_are_not_shown_twice(widgets, qtbot, notifications, monkeypatch,
                                                                         connection):
    # if napari's mixin worked (a later napari), napari would notify each worker warning itself: old, a LowMemoryWarning
    # showed twice (napari's and ours). napari's own connection of its bound method (of the QRunnable) is not called
    # under PyQt6 once the pool has deleted the finished runnable (a warning at a job's end): then ours shows it, once
    import time

    from napari_unet._widgets import workers
    from napari_unet.hardware import LowMemoryWarning

    create_worker = workers.create_worker

    def relaying_create_worker(*args, **kwargs):  # what napari's _NotifyingMixin.__init__ does, or means to do
        worker = create_worker(*args, **kwargs)
        if connection.startswith("bound method"):
            worker.warned.connect(worker._relay_warning)
        else:
            worker.warned.connect(lambda showwarning_args: worker._relay_warning(showwarning_args))
        return worker

    def job():
        warnings.warn(low, LowMemoryWarning)
        if connection.endswith("goes on"):
            time.sleep(1)

    monkeypatch.setattr(workers, "create_worker", relaying_create_worker)
    low = f"img.tif: reading its pixels whole needs 2.0 GB {uuid.uuid4()}"  # napari shows a text once per process
    _run_job(qtbot, widgets.viewer, job)
    shown = _warnings_shown(notifications)
    if connection == "relaying":
        assert shown == [low], notifications
    else:
        assert len(shown) == 1 and shown[0] in (low, f"napari-unet: {low}"), notifications


def test_numpys_floating_point_warnings_of_the_packages_own_arithmetic_are_not_shown(widgets, qtbot, notifications):
    # old: "napari-unet: divide by zero encountered in divide" (a ufunc's warning, raised from C in the package's line,
    # was taken for the package's); a warnings.warn of the package's own in the same function still shows
    ratio = _core_function("def ratio(a, b):\n    r = a / b\n    np.log(b)\n"
                           "    warnings.warn(\n        'ratios of empty classes', RuntimeWarning)\n    return r\n", "ratio")
    _run_job(qtbot, widgets.viewer, ratio, np.ones(2), np.zeros(2))
    assert _warnings_shown(notifications) == ["napari-unet: ratios of empty classes"], notifications


def test_a_warning_repeated_many_times_queues_one_call_to_the_gui_thread(widgets, qtbot, notifications, monkeypatch):
    # old: the repeats were dropped only in the GUI thread, one queued call each (50,000 repeats, 50,000 calls)
    from napari_unet._widgets import workers
    from napari_unet.hardware import LowMemoryWarning

    calls = []
    notify = workers._CoreWarnings._notify
    monkeypatch.setattr(workers._CoreWarnings, "_notify", lambda self, warning: (calls.append(warning), notify(self, warning)))
    low = f"stack.tif: reading its pixels whole needs 1.0 GB {uuid.uuid4()}"

    def job():
        for place in range(200):  # 200 places (no registry): each comes to the relay
            warnings.warn_explicit(low, LowMemoryWarning, __file__, 1000 + place)

    _run_job(qtbot, widgets.viewer, job)
    assert len(calls) == 1, len(calls)
    assert _warnings_shown(notifications) == [f"napari-unet: {low}"], notifications


def test_overlapping_jobs_keep_their_warnings_and_leave_the_processs_hook(widgets, qtbot, notifications, monkeypatch):
    # old (superqt's process-wide catch_warnings): job A started, then B; A ended first and put back the hook while B
    # ran: B's LowMemoryWarning was napari's (no prefix), numpy's noise of B shown; after both, the process kept A's
    # showwarning and an "always" filter for good, and a GUI-thread warning was lost
    import threading

    from napari.qt.threading import create_worker
    from napari.utils.notifications import notification_manager

    from napari_unet._widgets.workers import create_worker_of
    from napari_unet.hardware import LowMemoryWarning

    monkeypatch.setattr(warnings, "showwarning", notification_manager.receive_warning)  # napari's hook
    hook, filters = warnings.showwarning, list(warnings.filters)
    mean = _core_function("def mean(a):\n    return np.nanmean(a)\n", "mean")
    a_ended, first_go, later_go, later_ended = (threading.Event() for _ in range(4))
    low = f"B: reading its pixels whole needs 2 GB {uuid.uuid4()}"
    after = f"B: after napari's worker {uuid.uuid4()}"

    def job_a():
        time.sleep(0.3)

    def job_b():
        assert a_ended.wait(30)  # A and a napari worker started before B have ended; another napari worker runs
        warnings.warn(low, LowMemoryWarning)
        mean(np.full(3, np.nan))  # numpy's own noise
        later_go.set()
        assert later_ended.wait(30)
        warnings.warn(after, LowMemoryWarning)

    def napari_job(go, message):  # napari's own worker, superqt's run: swaps the process's showwarning while it runs
        assert go.wait(30)
        time.sleep(0.1)
        warnings.warn(message, UserWarning)

    first = create_worker(napari_job, first_go, "the first napari worker's warning")
    a = create_worker_of(widgets.viewer, job_a, task="A")
    b = create_worker_of(widgets.viewer, job_b, task="B")
    later = create_worker(napari_job, later_go, "the later napari worker's warning")
    later.finished.connect(later_ended.set)
    relayed = []
    later.warned.connect(lambda args: relayed.append(str(args[0])))
    first.start()
    a.start()
    qtbot.wait(100)
    b.start()
    with qtbot.waitSignal(a.finished, timeout=30_000):
        pass
    with qtbot.waitSignal(first.finished, timeout=30_000):
        first_go.set()
    later.start()
    a_ended.set()
    with qtbot.waitSignals([b.finished, later.finished], timeout=30_000):
        pass
    qtbot.wait(100)
    assert _warnings_shown(notifications) == [f"napari-unet: {low}", f"napari-unet: {after}"], notifications
    assert relayed == ["the later napari worker's warning"]  # napari's worker keeps its own warnings
    assert warnings.showwarning is hook and warnings.filters == filters
    notifications.clear()
    warnings.warn(f"a plugin's warning in the GUI thread {uuid.uuid4()}", UserWarning)
    assert len(_warnings_shown(notifications)) == 1, notifications


def test_a_job_recording_its_warnings_still_gets_them(widgets, qtbot, notifications):
    # not a regression of the relay's own hook: code in a job that records warnings (catch_warnings(record=True), a
    # library's or a test's) gets them, as under superqt's worker, and nothing is shown
    from napari_unet.hardware import LowMemoryWarning

    recorded = []

    def job():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("recorded, not shown", LowMemoryWarning)
        recorded.extend(str(w.message) for w in caught)

    _run_job(qtbot, widgets.viewer, job)
    assert recorded == ["recorded, not shown"] and not _warnings_shown(notifications), notifications


def test_which_warnings_are_napari_unets():
    import napari_unet.train
    from napari_unet._widgets.workers import raised_by_napari_unet
    from napari_unet.hardware import LowMemoryWarning
    from napari_unet.metrics import UnknownValuesWarning

    core, other = napari_unet.train.__file__, np.__file__
    assert raised_by_napari_unet(LowMemoryWarning, other) and raised_by_napari_unet(UnknownValuesWarning, other, other)
    assert raised_by_napari_unet(RuntimeWarning, core) and raised_by_napari_unet(UserWarning, core, core)
    assert not raised_by_napari_unet(RuntimeWarning, core, other)  # a library's, pointing at its caller
    assert raised_by_napari_unet(RuntimeWarning, other, core)  # the core's, pointing at its caller
    assert not raised_by_napari_unet(DeprecationWarning, core, core) and not raised_by_napari_unet(FutureWarning, core)
    assert not raised_by_napari_unet(UserWarning, other)


# ------------------------------------------------------------------------------------- the check of a finished Retrain


@pytest.mark.parametrize("failure", [MemoryError("no room"), ValueError("a bug\nits second line")], ids=["memory", "unexpected"])
def test_a_check_of_a_retrain_that_fails_otherwise_says_why_in_one_line_and_keeps_the_model(
        widgets, notifications, qtbot, monkeypatch, caplog, failure):
    # old: only logged with a traceback ("scoring the corrections on the retrained model failed"); the status said the
    # model was retrained, never that the check of the corrections was lost
    import napari_unet.retrain
    from _helpers import tiny_model

    viewer, training, session = widgets.viewer, widgets.training, widgets.session
    tiny_settings(training)
    training.settings.retrain_steps.setValue(2)
    session.set_model(tiny_model(), "a tiny model")
    model = session.model
    prediction = viewer.add_labels(np.full(viewer.layers["EM"].data.shape, 2, np.uint8), name="EM prediction",
                                   metadata={"class_values": [0, 255]})
    session.track(prediction, viewer.layers["EM"])
    prediction.brush_size = 6
    prediction.paint((1, 20, 20), 1)

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(napari_unet.retrain, "score_retrained", fail)
    caplog.set_level(logging.ERROR, logger="napari_unet")
    run_and_wait(qtbot, lambda: training.start(retrain=True), lambda: training._run is not None)
    why = "not enough memory (MemoryError: no room)" if isinstance(failure, MemoryError) else "ValueError: a bug"
    lost = f"the check of your corrections could not be made: {why}"
    status = training.progress.status.text()
    assert status.startswith("Model retrained at "), status
    assert status.endswith(f" Warning: {lost}; the retrained model is kept (Previous model brings back the one before it)."), status
    assert _warnings_shown(notifications) == [f"napari-unet: the retrained model is kept, but {lost}"], notifications
    assert not [text for severity, text in notifications if severity == "error"], notifications
    assert session.model is not model and session.previous is not None  # the retrained model is the current one
    logged = [r for r in caplog.records if r.name == "napari_unet"]  # the traceback stays in the log
    assert len(logged) == 1 and logged[0].exc_info is not None, caplog.records


@pytest.mark.parametrize("helper", ["thread", "pool"])
def test_warnings_of_threads_a_job_starts_go_to_its_relay(widgets, qtbot, notifications, monkeypatch, helper):
    # old (f243d9b): only the job's own thread was routed: a warning of a thread the job started (data.prefetch's
    # batches, metrics' pools, dask's threaded scheduler) went to napari's hook: no prefix, numpy's noise shown
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from napari.utils.notifications import notification_manager

    from napari_unet.hardware import LowMemoryWarning

    monkeypatch.setattr(warnings, "showwarning", notification_manager.receive_warning)  # napari's hook
    low = f"core warning in a helper thread {uuid.uuid4()}"
    div = _core_function("def div(a):\n    return a / 0\n", "div")

    # the helper's task is the package's code, as data.prefetch's batches and metrics' pools run
    task = _core_function("def task(low, category, div):\n    warnings.warn(low, category)\n    div(np.ones(3))\n", "task")

    def work():
        task(low, LowMemoryWarning, div)  # and numpy's noise

    def job():
        if helper == "thread":
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
        else:
            with ThreadPoolExecutor(2) as pool:
                pool.submit(work).result()

    _run_job(qtbot, widgets.viewer, job)
    assert _warnings_shown(notifications) == [f"napari-unet: {low}"], notifications


def test_a_warn_that_skips_the_router_falls_back_to_superqts_workers(widgets, qtbot, notifications, monkeypatch):
    # old: only the router's existence was checked: a Python whose warn no longer calls warnings._showwarnmsg ran the
    # jobs with neither superqt's catch_warnings nor the router, and their warnings were lost (or shown bare)
    from napari_unet._widgets import workers
    from napari_unet.hardware import LowMemoryWarning

    def warn(message, category=UserWarning, stacklevel=1, source=None, **kwargs):  # calls showwarning directly
        warnings.showwarning(message, category, __file__, 1)

    monkeypatch.setattr(warnings, "_showwarnmsg", workers._showwarnmsg)  # before ours, as in a new process
    monkeypatch.setattr(workers, "_router_installed", False)
    monkeypatch.setattr(workers, "_ROUTABLE", True)
    monkeypatch.setattr(warnings, "warn", warn)
    message = f"warned in a job {uuid.uuid4()}"
    worker = _run_job(qtbot, widgets.viewer, lambda: warnings.warn(message, LowMemoryWarning))
    assert not isinstance(worker, workers._OwnWarnings) and workers._ROUTABLE is False
    assert warnings._showwarnmsg is workers._showwarnmsg  # not left in place
    assert _warnings_shown(notifications) == [f"napari-unet: {message}"], notifications


def test_a_job_recording_its_warnings_in_a_context_still_gets_them(widgets, qtbot, notifications, monkeypatch):
    # Python 3.14's context-aware warnings (simulated: no 3.14 here): catch_warnings(record=True) records into its
    # context's log and leaves _showwarnmsg_impl as it was; old: the warning went to the relay, shown, not recorded
    import sys
    import types

    from napari_unet.hardware import LowMemoryWarning

    context = types.SimpleNamespace(log=None)
    flags = types.SimpleNamespace(**{name: getattr(sys.flags, name) for name in dir(sys.flags)
                                     if not name.startswith("_") and not callable(getattr(sys.flags, name))})
    flags.context_aware_warnings = True
    monkeypatch.setattr(sys, "flags", flags)
    monkeypatch.setattr(warnings, "_get_context", lambda: context, raising=False)
    passed_on = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: passed_on.append(str(message)))

    def job():
        context.log = []  # as 3.14's catch_warnings(record=True) does
        try:
            warnings.warn("recorded, not shown", LowMemoryWarning)
        finally:
            context.log = None

    _run_job(qtbot, widgets.viewer, job)
    assert passed_on == ["recorded, not shown"] and not _warnings_shown(notifications), notifications


def test_warnings_of_a_thread_no_job_started_go_where_they_went_while_a_job_runs(widgets, qtbot, notifications, monkeypatch):
    # old (f11c5fd): while a job ran, a warning of any Python thread but the GUI thread (a user's, another plugin's)
    # went to the job's relay, which dropped it (not napari_unet's): napari never showed it
    import threading

    from napari.utils.notifications import notification_manager

    monkeypatch.setattr(warnings, "showwarning", notification_manager.receive_warning)  # napari's hook
    theirs = f"another plugin's warning {uuid.uuid4()}"
    running, done = threading.Event(), threading.Event()

    def other_plugin():  # not started by the job, runs no napari_unet code
        running.wait(30)
        warnings.warn(theirs, UserWarning)
        done.set()

    def job():
        running.set()
        assert done.wait(30)

    thread = threading.Thread(target=other_plugin)
    thread.start()
    _run_job(qtbot, widgets.viewer, job)
    thread.join()
    qtbot.waitUntil(lambda: any(theirs in text for text in _warnings_shown(notifications)), timeout=5_000)
    assert [text for text in _warnings_shown(notifications) if theirs in text] == [theirs], notifications
