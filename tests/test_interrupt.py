"""A Ctrl-C whose KeyboardInterrupt Python drops (in a finaliser, a fork handler) is raised again."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from harness import interrupt


class CtrlCWhileCollected:
    """Gets SIGINT inside ``__del__``: Python prints "Exception ignored" and drops the KeyboardInterrupt."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes of this frame
            pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one, on purpose
def test_an_interrupt_dropped_in_a_finaliser_is_raised_by_the_next_check() -> None:
    before = signal.getsignal(signal.SIGINT)
    try:
        interrupt.install()
        interrupt.check()  # nothing yet
        CtrlCWhileCollected()  # collected at once: the interrupt is dropped, execution goes on here
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.install()  # a new run starts with no interrupt pending
        interrupt.check()
    finally:
        signal.signal(signal.SIGINT, before)
