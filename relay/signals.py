"""Stop and reload signals that arrive before `relay serve` listens for them.

The `relay` command spends half a second importing and loading its config before the service's
event loop answers SIGTERM, SIGINT and SIGHUP. Their default actions meanwhile killed it (exit
143 for a SIGTERM, a traceback for a Ctrl-C, 129 for a SIGHUP). `hold` records them from the
first instant; `relay serve` takes them when its handlers are in place, and every other command
`release`s them: the default actions come back, and a signal held meanwhile takes effect then.

A second SIGTERM or SIGINT, held while starting or received later, exits at once (`exit_now`;
the service counts them).
"""

from __future__ import annotations

import os
import signal

# Nothing else before `hold`: as PID 1 (a container without an init) a signal that comes before
# its handler is dropped by the kernel, and importing `logging` and `typing` took 8 of the 21 ms
# from exec to the handlers. typing's TYPE_CHECKING, without importing typing:
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

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


def take() -> list[int]:
    """The signals held so far, in order and each time it came, for the service to act on;
    none are held from now on."""
    taken = list(_received)
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
    for sig in dict.fromkeys(take()):
        signal.raise_signal(sig)


def exit_now(signum: int) -> NoReturn:
    """Exit at once with 128 + the signal, as a second Ctrl-C does in most servers: an operator
    need not wait out the drain (up to 10 s for a hung receiver). Nothing is lost: what was in
    flight stays in the outbox, as after a kill -9, and goes out after the next start."""
    import logging  # noqa: PLC0415 - not before `hold` (see the imports)

    logging.getLogger("relay.service").warning(
        "second stop signal: exiting now; unfinished deliveries go out after the next start",
        extra={"signal": signal.Signals(signum).name},
    )
    logging.shutdown()  # the line above is written before the process ends
    os._exit(128 + signum)
