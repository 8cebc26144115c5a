"""As PID 1 (the Docker image has no init): the orphans the kernel hands relay, waited for."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection

log = logging.getLogger("relay.workers")
ORPHANS_EVERY_S = 1.0


async def reap_orphans_forever(own: Callable[[], Collection[int] | None]) -> None:
    """As PID 1 (the Docker image has no init), wait for the orphans the kernel gives it.

    A process whose parent exits in the container (`docker exec relay sh -c 'job &'`) becomes
    PID 1's child; nothing else waits for it, so once it exits it stays a zombie (`<defunct>`)
    until the container stops. Every second this waits for exited children that are not
    `own` (the delivery workers, which asyncio waits for; None: one is starting, skip a turn).
    """
    while True:
        await asyncio.sleep(ORPHANS_EVERY_S)
        own_pids = own()
        if own_pids is not None:
            reap_orphans(own_pids)


def reap_orphans(own: Collection[int]) -> int:
    """Wait for the exited children not in `own`, until the next exited one is `own` or none
    is left; how many. WNOWAIT looks without waiting, so asyncio still sees its own exit."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return reaped
        if info is None or info.si_pid in own:
            return reaped
        os.waitpid(info.si_pid, 0)
        log.debug("orphaned process reaped", extra={"pid": info.si_pid})
        reaped += 1
