"""Ctrl-C and SIGTERM end a command through the same cleanup path, with the conventional exit codes.

Python turns SIGINT into ``KeyboardInterrupt``, which unwinds ``finally`` blocks and context
managers (the staged output directory among them); SIGTERM, which CI, ``timeout`` and
``docker stop`` send, kills the process outright by default. Within ``signals_unwind`` SIGTERM
raises ``Terminated`` instead, and the signal that arrived is recorded: a library that catches the
exception and raises its own (torch's exporter does, when the signal lands in one of its lazy
imports) still ends as an interruption, not as a failure with a traceback.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """SIGTERM was received; a BaseException like KeyboardInterrupt, so ``except Exception`` does not swallow it."""


@dataclass
class ReceivedSignal:
    """The first SIGINT/SIGTERM received within ``signals_unwind`` (None: none)."""

    signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


@contextmanager
def signals_unwind() -> Iterator[ReceivedSignal]:
    """Within the block SIGINT raises KeyboardInterrupt and SIGTERM ``Terminated``, each recorded.

    Signals a process was started with ignored stay ignored, other custom handlers are kept, and
    outside the main thread (where Python cannot handle signals) nothing changes.
    """
    received = ReceivedSignal()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def unwind(signum: int, frame: object) -> None:
        received.signum = received.signum or signum
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()

    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {signum: signal.getsignal(signum) for signum in wanted}
    for signum, default in wanted.items():
        if previous[signum] is default:
            signal.signal(signum, unwind)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
