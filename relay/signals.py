"""Stop and reload signals that arrive before `relay serve` listens for them.

The `relay` command spends half a second importing and loading its config before the service's
event loop answers SIGTERM, SIGINT and SIGHUP. Their default actions meanwhile killed it (exit
143 for a SIGTERM, a traceback for a Ctrl-C, 129 for a SIGHUP). `hold` records them from the
first instant; `relay serve` takes them when its handlers are in place, and every other command
`release`s them: the default actions come back, and a signal held meanwhile takes effect then.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[int] = []
_holding: list[bool] = []  # empty until `hold`: relay run in-process (tests) changes nothing


def hold() -> None:
    """Record SIGTERM, SIGINT and SIGHUP instead of acting on them."""
    for sig in HELD:
        signal.signal(sig, _record)
    _holding.append(True)


def _record(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


def take() -> set[int]:
    """The signals held so far, for the service to act on; none are held from now on."""
    taken = set(_received)
    _received.clear()
    _holding.clear()
    return taken


def release() -> None:
    """The default actions back; a signal held meanwhile acts now (SIGINT: KeyboardInterrupt)."""
    if not _holding:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    for sig in take():
        signal.raise_signal(sig)
