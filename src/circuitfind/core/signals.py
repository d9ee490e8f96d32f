"""Ctrl-C and ``kill``: SIGINT and SIGTERM as one exception, wherever a run is.

Python turns SIGINT into ``KeyboardInterrupt`` and lets SIGTERM end the process on the spot;
``signals_raise()`` makes both raise ``Interrupted`` (a ``KeyboardInterrupt`` that names its
signal), so the code that catches it (the pipeline, which saves what the run finished, and the CLI,
which prints one line and exits 128 + the signal number) treats them alike at every phase.
Methods that checkpoint turn the signal into a request to stop at their next step instead
(``Checkpointer.stop_on_signals``).  Imports nothing heavy: the CLI installs it before torch.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signal_name`` says which."""

    def __init__(self, signal_name: str = "SIGINT"):
        self.signal_name = signal_name
        super().__init__(signal_name)


def signal_name(error: BaseException) -> str:
    """The signal behind an interruption (a plain ``KeyboardInterrupt`` is Ctrl-C's SIGINT)."""
    return getattr(error, "signal_name", "SIGINT")


def exit_code(name: str) -> int:
    """The shell's code for a process ended by signal ``name``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(getattr(signal, name, signal.SIGINT))


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise ``Interrupted``; the handlers before it come back
    after.  Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
