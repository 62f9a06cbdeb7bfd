import signal

import pytest

from napari_unet._interrupts import events_held, interrupts_deferred


def test_a_second_signal_is_delivered_at_once_and_not_again_at_the_end():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred(second_at_once=True) as received:
            signal.raise_signal(signal.SIGINT)
            reached.append("held")
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C again
            reached.append("not reached")
    assert reached == ["held"] and received == [signal.SIGINT, signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_events_held_delivers_an_interrupt_after_the_event_it_came_in():
    """Ctrl-C or SIGTERM inside a generator's TensorFlow or threading code left it broken (SystemError, "release
    unlocked lock", a segmentation fault at exit): it now comes when the event is computed."""
    finished, closed = [], []

    def events():
        try:
            for i in range(3):
                signal.raise_signal(signal.SIGINT) if i == 1 else None
                finished.append(i)  # the rest of the step, after the signal came
                yield i
        finally:
            closed.append(True)

    seen = []
    with pytest.raises(KeyboardInterrupt):
        for event in events_held(events()):
            seen.append(event)
    assert finished == [0, 1] and seen == [0] and closed == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_events_held_passes_every_event_and_closes_a_generator_left_early():
    closed = []

    def events():
        try:
            yield from range(5)
        finally:
            closed.append(True)

    assert list(events_held(events())) == list(range(5)) and closed == [True]
    for event in events_held(events()):
        break
    assert closed == [True, True]


def test_deferred_interrupts_keep_ignored_signals_ignored_and_deliver_sigterm_first(monkeypatch):
    terminated = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script
    try:
        with interrupts_deferred() as received:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            assert received == [signal.SIGTERM] and not terminated  # SIGINT stays ignored, SIGTERM waits
        assert terminated == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        interrupted = []
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
        with interrupts_deferred() as received:  # Ctrl-C, then SIGTERM: SIGTERM's handler runs (exit 143)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            assert received == [signal.SIGINT, signal.SIGTERM]
        assert terminated == [signal.SIGTERM] * 2 and interrupted == []
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, ignored)


def test_a_second_signal_inside_a_nested_block_is_delivered_at_once_through_both():
    """A training step's block inside the command line's event block: the second Ctrl-C of a long first step (XLA
    compiling) waited for the step's end."""
    reached = []

    def events():
        with interrupts_deferred(second_at_once=True):  # the step
            signal.raise_signal(signal.SIGINT)
            reached.append("held")
            signal.raise_signal(signal.SIGINT)
            reached.append("not reached")
        yield 1

    with pytest.raises(KeyboardInterrupt):
        list(events_held(events()))
    assert reached == ["held"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_first_held_signal_is_announced_once_also_from_a_nested_block():
    """Preparing a large stack runs minutes without an event: a held Ctrl-C said nothing meanwhile."""
    said, order = [], []

    def events():
        with interrupts_deferred(second_at_once=True):  # a training step
            signal.raise_signal(signal.SIGINT)
            order.append("step goes on")
        yield 1

    with pytest.raises(KeyboardInterrupt):
        for _ in events_held(events(), lambda signum: said.append(signum) or order.append("said")):
            pass
    assert said == [signal.SIGINT] and order == ["said", "step goes on"]
    assert list(events_held((x for x in [1, 2]), said.append)) == [1, 2]  # no signal: nothing said
    assert said == [signal.SIGINT]


def test_a_second_signal_comes_at_once_when_the_first_was_held_before_the_current_block():
    """Ctrl-C while predict normalised a slice, again while the network compiled: the second waited for the call."""
    reached = []

    def events():
        signal.raise_signal(signal.SIGINT)  # held by the event's block (a slice being normalised)
        with interrupts_deferred(second_at_once=True):  # the network call begins
            signal.raise_signal(signal.SIGINT)
            reached.append("not reached")
        yield 1

    with pytest.raises(KeyboardInterrupt):
        list(events_held(events()))
    assert reached == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_blocks_with_equal_signal_lists_each_remove_their_own():
    from napari_unet import _interrupts

    with interrupts_deferred() as outer:
        with interrupts_deferred() as inner:
            assert _interrupts._HELD[-1] is inner and _interrupts._HELD[-2] is outer
        assert _interrupts._HELD[-1] is outer
    assert all(held is not outer for held in _interrupts._HELD)
