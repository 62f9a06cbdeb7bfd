"""Ctrl-C and SIGTERM held back where an exception raised at any line would do harm."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def interrupts_deferred():
    """Within the block, SIGINT and SIGTERM are held back, then delivered: renames that belong together, and the
    record that they were done, are never cut between; a KeyboardInterrupt raised inside TensorFlow's Python code
    (a graph being traced) left it broken (a SystemError instead of the interrupt, or a segmentation fault at exit).
    Blocks nest. Yields the list of the signals received so far.
    Ignored signals stay ignored. Only on the main thread, where Python runs signal handlers; elsewhere a no-op."""
    import signal
    import threading

    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is not None and handler is not signal.SIG_IGN:  # None: installed outside Python, left as it is
            previous[number] = signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:  # under the handlers put back; SIGTERM's (exit 143) before Ctrl-C's if both came
            signal.raise_signal(signal.SIGTERM if signal.SIGTERM in received else received[0])
