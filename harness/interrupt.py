"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. Where
that is code whose exceptions Python prints and drops — a fork handler while Ray or a data loader
starts processes, a finaliser — the run would go on as if nothing happened (seen: "Exception
ignored in: <function _releaseLock>" and a matrix that ran to the end). The handler installed here
also remembers the signal, and the driver loops call :func:`check` once a round, so a dropped
interrupt is raised again within a second.
"""

from __future__ import annotations

import signal
import threading

_received = threading.Event()


def _on_sigint(signum: int, frame: object) -> None:
    _received.set()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT as Python does (KeyboardInterrupt), remembering it; main thread only, as signals."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():  # elsewhere signal.signal refuses
        signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came since :func:`install` (its own may have been dropped)."""
    if _received.is_set():
        raise KeyboardInterrupt
