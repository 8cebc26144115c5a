"""A delivery's outcome, written to the store and told: sent (with the channel's receipt), a
retry from the outbox at the policy's backoff or the server's Retry-After, or dead. The write
is retried through store blips up to the lease (the marks are idempotent); a mark that changed
nothing (the row is another replica's now, or finished) is told as fenced, not as an outcome.
relay.dispatch decides what to send; this module records what came of it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay import holds
from relay import policy as pol
from relay.awaited import Awaited
from relay.config import RetryPolicy
from relay.errors import DeliveryError, StoreUnavailable
from relay.grouping import digest_id
from relay.model import Notification
from relay.sending import Clock, Sleep, Tried
from relay.store import Store

log = logging.getLogger("relay.delivery")


@dataclass(frozen=True)
class HoldEnd:
    """A `held` event's subject: the channel a receiver's Retry-After holds, and when the hold
    ends, as the `created_at` every delivery event carries (the events pipe's `at`)."""

    channel: str
    created_at: float


OnEvent = Callable[[str, Notification | HoldEnd, str, int], None]


@dataclass
class Outcomes:
    """The outcomes of one channel's sends (`name`); `on_event(kind, row, reason, attempts)`
    hears each: sent, retry, dead, muted, template_error, failed, held (see held)."""

    name: str
    store: Store
    awaited: Awaited  # recoveries waiting here for the rows finished
    clock: Clock
    sleep: Sleep
    rng: random.Random
    retry: RetryPolicy
    lease_s: float
    on_event: OnEvent | None = None
    receiver: str | None = None  # holds.receiver_key of the channel: its holds are stored
    _stored_until: float = field(default=0.0, init=False)  # a burst of 429s stores it once

    async def write_through_blips(
        self, write: Callable[[bool], Awaitable[object]], extra: dict[str, object]
    ) -> None:
        """Record the outcome even if the store blips: retried with backoff up to the lease
        (the writes are idempotent: they only change rows still pending). `write(again)`: again
        once a try failed, which may have landed all the same (committed, its reply lost)."""
        deadline = self.clock() + self.lease_s
        wait_s = 0.25
        again = False
        while True:
            try:
                await write(again)
                return
            except StoreUnavailable:
                again = True
                if self.clock() + wait_s > deadline:
                    log.error("outcome not recorded: store unavailable", extra=extra)
                    return
                await self.sleep(wait_s)
                wait_s = min(wait_s * 2, 15.0)

    async def sent(self, rows: list[Notification], tries: int, tried: Tried) -> None:
        now = self.clock()
        marks = [(row.id, row.attempts + tries) for row in rows]
        error = tried.last_failure
        await self.store.mark_sent(marks, now=now, receipt=tried.receipt, error=error)
        await self.awaited.finished(row.id for row in rows)
        for row, (_, attempts) in zip(rows, marks, strict=True):
            # a wall clock stepped back since the row was made: no negative latency (as the metric)
            latency_s = round(max(now - row.created_at, 0.0), 4)
            extra = {**row_extra(self.name, row), "attempts": attempts, "latency_s": latency_s}
            if tried.failed:  # quick retries leave no line of their own: say what they were
                extra["failed_tries"] = list(tried.failed)
            log.info("notification sent", extra=extra)
            self.event("sent", row, "", attempts)

    def outcome(self, err: DeliveryError, rows: list[Notification], tries: int) -> pol.Outcome:
        """What follows a failed send of these rows (one message): the oldest row and the most
        attempts decide, so a digest retries or dies whole."""
        return pol.after_failure(
            err,
            attempts=max(row.attempts for row in rows) + tries,
            created_at=min(row.created_at for row in rows),
            now=self.clock(),
            policy=self.retry,
            rng=self.rng,
        )

    async def failed(
        self,
        rows: list[Notification],
        err: DeliveryError,
        tries: int,
        outcome: pol.Outcome,
        *,
        again: bool = False,
    ) -> None:
        now = self.clock()
        marks = [(row.id, row.attempts + tries) for row in rows]
        store = self.store
        if outcome.dead:
            error = f"{err} ({outcome.why})"
            changed = await store.mark_dead(marks, now=now, reason=err.reason, error=error)
        else:
            changed = await store.mark_retry(
                marks, now=now, not_before=outcome.not_before, reason=err.reason, error=str(err)
            )
        left = [mark for mark in marks if mark[0] not in changed]
        if again and left:  # a try before may have changed them, its reply lost: not this one
            changed |= await store.marked_here(left, "dead" if outcome.dead else "pending")
        if outcome.dead:  # a recovery waiting for it is held now, not in a second
            await self.awaited.finished(changed)
        for row, (_, attempts) in zip(rows, marks, strict=True):
            if row.id not in changed:  # taken for dead meanwhile: the other replica tells it
                self.fenced(row, "dead" if outcome.dead else "retry")
                continue
            if outcome.dead:
                info = {**row_extra(self.name, row), "reason": err.reason, "attempts": attempts}
                log.error(
                    "notification dead", extra={**info, "error": str(err), "why": outcome.why}
                )
            self.event("dead" if outcome.dead else "retry", row, err.reason, attempts)
        retrying = [mark for mark in marks if mark[0] in changed]
        if not outcome.dead and retrying:
            self._will_retry(rows, retrying, err, outcome)

    def _will_retry(
        self,
        rows: list[Notification],
        marks: list[tuple[str, int]],
        err: DeliveryError,
        outcome: pol.Outcome,
    ) -> None:
        """One line per failed message: a digest retries as one, and a line per run of it at
        every try wrote hundreds a second while a receiver was down (a storm's digests list
        hundreds of runs). The digest's line names its id (the receivers' idempotency id) and
        how many notifications wait in it; `relay history` has each one's tries."""
        head = next(row for row in rows if row.id == marks[0][0])
        info = row_extra(self.name, head)
        if len(rows) > 1:
            info.update(run_id=None, notification_id=digest_id([row.id for row in rows]))
            info["notifications"] = len(marks)
        info.update(reason=err.reason, attempts=max(attempts for _, attempts in marks))
        # the wait decided, not what is left of it after the store's write (a 429's
        # Retry-After: 1 logged as 0.999)
        info.update(error=str(err), retry_in_s=round(outcome.wait, 3))
        log.warning("delivery failed; will retry", extra=info)

    def past_max_age(self, rows: list[Notification]) -> bool:
        """Whether these rows (one message) may be too old to send (see expired): every one past
        max_age, none of a digest or a recovery."""
        now, max_age = self.clock(), self.retry.max_age
        return not any(
            row.group_key or row.resolves or now - row.created_at <= max_age for row in rows
        )

    async def expired(self, rows: list[Notification]) -> bool:
        """Whether these rows (one message) are past max_age as their turn comes: then dead
        ("too old"), not sent. Only a failed try checked the age: the notifications a
        Retry-After held, or that waited out an outage behind the rate limit, went out late
        (at up to 3.5 times max_age) while the one refused died. A digest is sent whatever its
        runs' age (it waits group_interval by design, which may pass max_age, and tells each
        run's time), and so is a recovery (it closes what its alert opened). A notification
        replayed from the dead letters within max_age gets its round (a `relay dlq replay`
        after a long outage sends what it names; a failure then is its end, as before)."""
        now, max_age = self.clock(), self.retry.max_age
        if not self.past_max_age(rows):
            return False
        if await self._replayed_since(rows, now - max_age):
            return False
        for row in rows:
            reason = row.reason or "other"  # its last try's, or none was made
            error = f"{reason}: not sent within max_age"
            marked = self.store.mark_held(
                row.id, now=now, reason=reason, error=error, attempts=row.attempts
            )
            if not await marked:
                self.fenced(row, "dead")
                continue
            info = {**row_extra(self.name, row), "reason": reason, "attempts": row.attempts}
            log.error("notification dead", extra={**info, "error": error, "why": "too old"})
            self.event("dead", row, reason, row.attempts)
        await self.awaited.finished(row.id for row in rows)
        return True

    async def _replayed_since(self, rows: list[Notification], since: float) -> bool:
        for row in rows:
            events = await self.store.events(row.id)
            if any(e["kind"] == "replayed" and float(e["at"]) > since for e in events):  # type: ignore[arg-type]
                return True
        return False

    def fenced(self, row: Notification, outcome: str) -> None:
        """A row this replica no longer holds (it was taken for dead, frozen or cut off, and
        another replica claimed the row) or that is finished: its mark changed nothing, so its
        outcome is neither logged as one nor counted here."""
        log.info(
            "notification not held here now (another replica's, or finished); outcome not recorded",
            extra={**row_extra(self.name, row), "outcome": outcome},
        )

    def event(self, kind: str, row: Notification | HoldEnd, reason: str, attempts: int = 0) -> None:
        if self.on_event is not None:
            self.on_event(kind, row, reason, attempts)

    async def held(self, until: float) -> None:
        """A receiver's Retry-After holds the channel until `until` (relay_channel_held); kept
        in the store before the failure's retry time, for the processes after this one."""
        self.event("held", HoldEnd(self.name, until), "")
        if self.receiver is not None and until > self._stored_until:
            self._stored_until = until
            await holds.save(self.store, self.name, self.receiver, until, self.clock())


def row_extra(channel: str, row: Notification) -> dict[str, object]:
    """The log fields of a notification's lines."""
    return {
        "run_id": row.run_id,
        "rule": row.rule,
        "channel": channel,
        "notification_id": row.id,
        "group": row.group_key,
    }
