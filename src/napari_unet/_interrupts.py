"""Ctrl-C, SIGTERM and SIGHUP held back where an exception raised at any line would do harm."""

from __future__ import annotations

import contextlib
from typing import Callable, Generator, Iterator, Optional, TypeVar

Event = TypeVar("Event")


@contextlib.contextmanager
def interrupts_deferred(second_at_once: bool = False, notice: Optional[Callable[[int], None]] = None):
    """Within the block, SIGINT, SIGTERM and SIGHUP are held back, then delivered: renames that belong together, and the
    record that they were done, are never cut between; a KeyboardInterrupt raised inside TensorFlow's Python code
    (a graph being traced) or inside ``threading`` (a thread starting) left them broken: a SystemError or "release
    unlocked lock" instead of the interrupt, or a segmentation fault at exit. Blocks nest.

    ``second_at_once``: a second signal is delivered at once (a user who presses Ctrl-C again does not wait), also
    through the blocks this one is nested in.
    ``notice(signal number)``: called at each signal held (say when it takes effect), in place of any around.
    Yields the list of the signals received so far. Ignored signals stay ignored. Only on the main thread, where
    Python runs signal handlers; elsewhere a no-op.
    """
    import signal
    import threading

    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}

    def put_back():
        for number, handler in previous.items():
            signal.signal(number, handler)
        previous.clear()

    def hold(signum, frame):
        received.append(signum)
        if _NOTICES:
            _NOTICES[-1](signum)
        # the first may be held by a block around this one (Ctrl-C while a slice is normalised, again while the
        # network compiles): a second press counts all the signals held
        if second_at_once and sum(map(len, _HELD)) > 1:
            put_back()
            for number in sorted(received, key=lambda n: n != signal.SIGTERM):  # each to the handler put back: an
                signal.raise_signal(number)  # outer block counts them too, so its second comes at once as well

    hangup = [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []  # (not on Windows)
    for number in (signal.SIGINT, signal.SIGTERM, *hangup):
        handler = signal.getsignal(number)
        if handler is not None and handler is not signal.SIG_IGN:  # None: installed outside Python, left as it is
            previous[number] = signal.signal(number, hold)
    _HELD.append(received)
    if notice is not None:
        _NOTICES.append(notice)
    try:
        yield received
    finally:
        if notice is not None:
            _NOTICES.remove(notice)
        del _HELD[next(i for i in range(len(_HELD) - 1, -1, -1) if _HELD[i] is received)]  # this block's (lists compare equal)
        if previous:  # not put back by a second signal, which was delivered then
            put_back()
            if received:  # under the handlers put back; SIGTERM's (exit 143) before Ctrl-C's if both came
                signal.raise_signal(signal.SIGTERM if signal.SIGTERM in received else received[0])


def events_held(events: Generator[Event, None, None], notice: Optional[Callable[[int], None]] = None) -> Iterator[Event]:
    """The events of ``events`` (a generator of :mod:`train` or :mod:`predict`), with Ctrl-C, SIGTERM and SIGHUP held back
    while each one is computed and delivered when it comes (see :func:`interrupts_deferred`); a second signal is
    delivered at once. ``notice(signal number)`` is called once, at the first signal held (say that the run stops at
    the next event: preparing a large stack takes minutes without one). Leaving the loop closes ``events``."""
    said = []

    def once(signum: int) -> None:
        if not said and notice is not None:
            said.append(signum)
            notice(signum)

    with contextlib.closing(events):
        _NOTICES.append(once)
        try:
            while True:
                with interrupts_deferred(second_at_once=True):
                    try:
                        event = next(events)
                    except StopIteration:
                        return
                yield event
        finally:
            _NOTICES.remove(once)


#: The notices of the :func:`events_held` loops running (the innermost last): a signal held by any block says so.
_NOTICES: list = []

#: The signals each active :func:`interrupts_deferred` block holds (main thread only), the innermost last.
_HELD: list = []
