"""A recovery follows its notification's fate at send time: it waits while that notification
is still pending (postponed, hastened once it is finished here), is muted with it, is held as
a dead letter while it is dead (the channel never heard it: Alertmanager sends no resolved for
an alert it never notified) and queued again when a replay brings it back; sent, or forgotten
by retention, it goes with what the channel answered for it (the receipt).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from relay.awaited import Awaited
from relay.channels import Recovery
from relay.model import ALERT_DEAD, Notification, held_error
from relay.outcomes import Outcomes, row_extra
from relay.sending import Clock
from relay.store import Store

log = logging.getLogger("relay.delivery")
RECOVERY_WAIT_S = 1.0  # a recovery is tried again this long after its notification's next try


@dataclass
class Recoveries:
    """The recoveries of one channel (`name`) that wait in its loop (`awaited`)."""

    name: str
    store: Store
    awaited: Awaited
    clock: Clock
    outcomes: Outcomes  # tells the fenced marks and the muted ones

    async def recovers(self, row: Notification) -> Recovery | None:
        """What recovery `row` resolves, once that notification is finished. Until then the row
        waits (None); it is muted (None) when that notification was muted, held (None) while
        that notification is dead."""
        firing_id = row.resolves or ""
        self.awaited.expect(firing_id, row.id)
        firing = await self.store.get(firing_id)
        now = self.clock()
        if firing is not None and firing.state == "pending":
            later = max(firing.not_before, now) + RECOVERY_WAIT_S
            if not await asyncio.shield(self.store.postpone(row.id, now=now, not_before=later)):
                self.outcomes.fenced(row, "postponed")
            elif not self.awaited.expected(firing_id):  # sent since its read: no wait
                await asyncio.shield(self.awaited.hasten(row.id))
            return None
        self.awaited.forget(firing_id)
        if firing is not None and firing.state == "muted":
            silence = firing.reason or ""
            if await asyncio.shield(
                self.store.mark_muted(row.id, now=now, silence_id=silence, attempts=row.attempts)
            ):
                log.info("recovery muted with its notification", extra=row_extra(self.name, row))
                self.outcomes.event("muted", row, "")
            else:
                self.outcomes.fenced(row, "muted")
            return None
        if firing is not None and firing.state == "dead":
            await asyncio.shield(self._hold(row, firing))
            return None
        if firing is None and await self._was_held(row):
            await asyncio.shield(self._hold(row, None))
            return None
        receipt = firing.receipt if firing is not None else None
        return Recovery(firing_id, receipt)  # sent, or forgotten (retention): the channel makes do

    async def _was_held(self, row: Notification) -> bool:
        """Whether recovery `row` was last dead because it was held for its dead alert (a
        replay clears its reason, not its events): retention forgot that alert while it was
        still dead (the alert finished first, so it is forgotten first), and the channel never
        heard it. Dead since for a failure of its own, it was tried: its alert had been sent."""
        deaths = [e for e in await self.store.events(row.id) if e["kind"] == "dead"]
        return bool(deaths) and deaths[-1]["reason"] == ALERT_DEAD

    async def _hold(self, row: Notification, dead: Notification | None) -> None:
        """A recovery of a dead alert (None: of one retention forgot while it was dead): the
        channel never heard that alert, so nothing is to be resolved there. Kept as a dead
        letter (reason `alert_dead`, not counted as a failed delivery: its alert was) that a
        replay of the alert brings back after it. A replay of the alert (by `relay dlq replay`,
        on any replica) between its read and this mark found the recovery still pending and
        queued nothing: it is queued again here."""
        firing_id = row.resolves or ""
        error = held_error(firing_id, forgotten=dead is None)
        if not await self.store.mark_held(
            row.id, now=self.clock(), reason=ALERT_DEAD, error=error, attempts=row.attempts
        ):
            self.outcomes.fenced(row, "held")
            return
        log.warning(
            "recovery held: its notification is dead",
            extra={**row_extra(self.name, row), "resolves": firing_id},
        )
        if dead is None:
            return
        firing = await self.store.get(dead.id)
        if firing is None or _same_outcome(firing, dead):
            return
        if await self.store.requeue_recoveries([row.id], self.clock()):
            log.info(
                "recovery queued again: its notification was replayed",
                extra=row_extra(self.name, row),
            )


def _same_outcome(a: Notification, b: Notification) -> bool:
    """Whether a notification row is as it was (a replay resets its state and attempts)."""
    return (a.state, a.attempts, a.not_before, a.receipt) == (
        b.state,
        b.attempts,
        b.not_before,
        b.receipt,
    )
