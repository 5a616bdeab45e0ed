"""SIGTERM as an interrupt: a terminated job cleans up like one stopped with Ctrl-C (no partial video)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see :func:`terminate_as_interrupt`)."""


@contextmanager
def terminate_as_interrupt():
    """While active (in the main thread), SIGTERM raises :class:`Terminated` like Ctrl-C raises
    KeyboardInterrupt, so ``finally`` blocks and the video writer's clean-up run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


__all__ = ["Terminated", "terminate_as_interrupt"]
