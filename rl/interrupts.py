"""Signals held until an iteration ends, so a checkpoint never holds half of one."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def deferred_interrupts(notice: str) -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) or SIGTERM that arrives inside the block until it ends, then
    deliver it to the handler that was there, so that an iteration is never cut in half: a
    checkpoint written on it holds the iteration the last progress row shows, weights and
    counters alike. ``notice`` is printed when one is held. A second signal inside the block
    is delivered at once (an iteration that hangs can still be stopped; ``get_state`` then
    gives the counters of the last finished iteration). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def deliver(signum: int, frame: Any) -> None:
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:  # SIGTERM's default: end the process, as it would have
            os.kill(os.getpid(), signum)

    def hold(signum: int, frame: Any) -> None:
        if held:
            restore()
            deliver(signum, frame)
            return
        held.append(signum)
        print(notice, file=sys.stderr, flush=True)

    for signum, handler in previous.items():
        if handler is not None and handler != signal.SIG_IGN:
            signal.signal(signum, hold)
    try:
        yield
    finally:
        restore()
        if held:
            deliver(held[0], None)
