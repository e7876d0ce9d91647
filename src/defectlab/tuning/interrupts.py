"""Ctrl-C in a tuning worker is never lost, even when it lands in a finaliser."""

from __future__ import annotations

import contextlib
import signal
import threading


class _CtrlC:
    """Whether Ctrl-C was pressed while this worker ran (`kept_interrupts`)."""

    requested = False


def interrupted() -> bool:
    """Whether Ctrl-C was pressed in this worker (whatever exception it surfaced as)."""
    return _CtrlC.requested


def raise_if_interrupted() -> None:
    """Raise `KeyboardInterrupt` again if Ctrl-C was pressed and its first one got lost."""
    if _CtrlC.requested:
        raise KeyboardInterrupt("Ctrl-C")


@contextlib.contextmanager
def kept_interrupts():
    """Ctrl-C raises `KeyboardInterrupt` as usual and is also remembered.

    Python raises it wherever the main thread happens to be; when that is a
    finaliser (``__del__``, which TensorFlow's tensors and iterators have
    plenty of) the exception is printed and dropped, and the worker went on to
    finish its trial and exit 0. The trial monitor and the worker loop call
    `raise_if_interrupted`, so the interrupt takes effect at the next batch.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember_and_raise(signal_number, frame):
        _CtrlC.requested = True
        raise KeyboardInterrupt

    _CtrlC.requested = False
    previous = signal.signal(signal.SIGINT, remember_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _CtrlC.requested = False
