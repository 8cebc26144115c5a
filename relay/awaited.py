"""The recoveries a channel loop postponed to wait for their alert. A recovery and its alert go
to the same channel, so the loop that sends the alert is the one its recovery waits in (one
process, or the delivery worker that owns the channel): once the alert's send (or death) is
recorded there, its recovery is made due at once and the loop woken. It waited out its
postponement (a second) and then the next poll (another) before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from relay.errors import StoreUnavailable
from relay.sending import Clock
from relay.store import Store

log = logging.getLogger("relay.delivery")
MOST = 4096  # recoveries remembered; past that the oldest waits for its postponement's end


class Awaited:
    """Alert id → the id of the recovery postponed here to wait for it."""

    def __init__(self, store: Store, clock: Clock, wake: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake
        self._waiting: dict[str, str] = {}

    def expect(self, firing_id: str, recovery: str) -> None:
        """Recovery `recovery` is about to read its alert, and may wait for it: said before
        that read, so that a send recorded meanwhile finds it (see `expected`)."""
        self._waiting.pop(firing_id, None)
        self._waiting[firing_id] = recovery
        if len(self._waiting) > MOST:
            del self._waiting[next(iter(self._waiting))]

    def expected(self, firing_id: str) -> bool:
        """Whether the alert's outcome is still to come here: False once `finished` took it
        (the recovery then hastens itself, its postponement may have come after)."""
        return firing_id in self._waiting

    def forget(self, firing_id: str) -> None:
        """The recovery does not wait: its alert is finished."""
        self._waiting.pop(firing_id, None)

    async def finished(self, firing_ids: Iterable[str]) -> None:
        """These alerts are sent or dead: the recoveries waiting for them are due now."""
        recoveries = [r for f in firing_ids if (r := self._waiting.pop(f, None)) is not None]
        for recovery in recoveries:
            await self.hasten(recovery)

    async def hasten(self, recovery: str) -> None:
        """Make a waiting recovery due now and wake the loop to claim it; a store that cannot
        answer leaves it to its postponement's end."""
        try:
            changed = await self._store.hasten(recovery, now=self._clock())
        except StoreUnavailable:
            return
        if changed:
            self._wake()
