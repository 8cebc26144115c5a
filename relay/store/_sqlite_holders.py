"""The lock file of a living delivery worker (`<db>-worker-N.lock`): a worker holds it while it
lives, its successor waits for it (a parent killed with -9 leaves the old worker finishing its
sends), and release_leases frees only the claims of holders whose lock is free."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.store._sqlite_lock import WriteLock

# A delivery worker waits this long at most for the one it succeeds (orphaned by a parent killed
# with -9, finishing its sends within the shutdown grace) to exit, then goes ahead.
HOLDER_WAIT_S = 30.0
HOLDER_POLL_S = 0.05


async def wait_for(lock: WriteLock, wait_s: float) -> bool:
    """Take `lock` (made with no wait of its own), trying again every HOLDER_POLL_S up to
    `wait_s`; a cancel (the worker's parent died) ends the wait at once, where a thread went on
    waiting and held the worker's exit up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not lock.hold():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(HOLDER_POLL_S)
    return True


def holder_lock(db: Path, holder: str, wait_s: float) -> WriteLock:
    """`<db>-worker-N.lock`: held by the living delivery worker that takes claims as `holder`."""
    lock = WriteLock(db, wait_s, name=holder.replace(" ", "-"))
    lock.open()
    return lock
