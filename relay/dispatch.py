"""One delivery unit of a channel (a notification, or every due one of a group as one
digest), from its claim to its recorded outcome: muted by a silence or time interval at send
time, a recovery waiting for the notification it resolves, rendered, sent (relay.sending), and
the outcome written through store blips: sent, a retry from the outbox with backoff or the
server's Retry-After, or dead. Final writes are shielded from cancellation: a notification is
marked sent only after the send returned, with the channel's receipt. A recovery follows its
notification's fate: muted with it, never muted on its own, held while it is dead (the channel
never heard it: Alertmanager sends no resolved for an alert it never notified).

This module decides what goes; relay.composing renders it, relay.recoveries decides what a
recovery waits for, relay.outcomes writes and tells what came of a send.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.awaited import Awaited
from relay.channels import Recovery
from relay.composing import Composer, TemplateOf
from relay.config import RetryPolicy
from relay.errors import DeliveryError, StoreUnavailable
from relay.holds import receiver_key
from relay.model import Notification
from relay.outcomes import OnEvent, Outcomes, row_extra
from relay.recoveries import Recoveries
from relay.rendering import DashboardLink
from relay.sending import Clock, Route, Sender, Sleep
from relay.silences.cache import SilenceCache
from relay.silences.index import silenced_by
from relay.store import Store
from relay.templating import Renderer

log = logging.getLogger("relay.delivery")
RETRY_SOON_S = 5.0  # rows given back after a store failure before their send, due again then


class Release(Protocol):
    """Give claimed rows back, due in `delay_s`; `keep_claim` false: nothing of them was sent,
    a digest's rows join the group's next digest (see Store.postpone)."""

    def __call__(
        self, rows: list[Notification], delay_s: float = 0.0, *, keep_claim: bool = True
    ) -> Awaitable[None]: ...


@dataclass
class Deps:
    store: Store
    renderer: Renderer
    retry: RetryPolicy
    dashboard_link: DashboardLink
    clock: Clock = time.time
    sleep: Sleep = asyncio.sleep
    rng: random.Random = random.Random()  # noqa: RUF009 - one shared generator is the intent
    lease_s: float = 300.0
    silences: SilenceCache | None = None
    # (rule, now) → why its time intervals mute it then, or None: checked again at send time
    time_muted: Callable[[str, float], str | None] | None = None
    template_of: TemplateOf | None = None  # see relay.composing
    # (kind, row, reason, attempts) after each outcome (sent, retry, dead, muted, template_error)
    # and each failed try (failed)
    on_event: OnEvent | None = None
    # rule → its group_interval (s) now, or None: a digest's next one waits that long after
    # this one's send began, however late that was
    group_interval_of: Callable[[str], float | None] | None = None
    # (channel, type) → what that channel's sender calls with the seconds of each request it
    # makes (relay_delivery_attempt_duration_seconds); asked once per channel loop
    attempt_observer: Callable[[str, str], Callable[[float], None]] | None = None


class Dispatch:
    """Delivers the units a channel loop starts; its writes join `finishing` (the loop waits
    for them on stop), and rows it cannot send now go back through `release`."""

    def __init__(
        self,
        name: str,
        route: Route,
        deps: Deps,
        *,
        lease_s: float,
        finishing: set[asyncio.Future[None]],
        release: Release,
        wake: Callable[[], None],
        stop: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.route = route
        self.deps = deps
        self.lease_s = lease_s
        self.finishing = finishing
        self.release = release
        self.awaited = Awaited(deps.store, deps.clock, wake)  # recoveries waiting for an alert
        self.sender = Sender(
            name,
            route,
            clock=deps.clock,
            sleep=deps.sleep,
            rng=deps.rng,
            max_attempts=deps.retry.max_attempts,
            stop=stop,
            took=None if deps.attempt_observer is None else deps.attempt_observer(name, route.type),
        )
        self.outcomes = Outcomes(
            name,
            deps.store,
            self.awaited,
            clock=deps.clock,
            sleep=deps.sleep,
            rng=deps.rng,
            retry=deps.retry,
            lease_s=lease_s,
            on_event=deps.on_event,
            receiver=None if route.settings is None else receiver_key(route.settings),
        )
        self.recoveries = Recoveries(name, deps.store, self.awaited, deps.clock, self.outcomes)
        self._wake = wake
        self.composer = Composer(name, route, deps, self.outcomes)

    def close(self) -> None:
        self.composer.close()

    async def deliver(self, rows: list[Notification], group_key: str | None) -> None:
        """Send one notification, or every due one of a group as one digest; then finish."""
        try:
            if group_key is not None and (wait_s := await self._too_soon(rows, group_key)) > 0:
                # no attempt: due again group_interval after, with the runs that join it
                await self.release(rows, wait_s, keep_claim=False)
                return
            if self.outcomes.past_max_age(rows) and await asyncio.shield(
                self.outcomes.expired(rows)
            ):
                return  # (checked first: a shielded task for every send slowed the drain)
            ready = await self._to_send(rows, group_key)
        except StoreUnavailable as exc:  # a silence or recovery read: they go again shortly
            log.warning(
                "store unavailable before sending; the notification goes back to the outbox",
                extra={**row_extra(self.name, rows[0]), "error": str(exc)},
            )
            await self.release(rows, RETRY_SOON_S)
            return
        if ready is not None:
            await self._send_and_finish(*ready, group_key)

    async def _to_send(
        self, rows: list[Notification], group_key: str | None
    ) -> tuple[list[Notification], Recovery | None] | None:
        """The rows to send now (the muted ones marked so) and what a recovery among them
        resolves; None when nothing goes now."""
        rows = [row for row in rows if not await self._muted(row)]
        if not rows:
            if group_key is not None:
                await asyncio.shield(self.deps.store.group_flushed(group_key, self.deps.clock()))
            return None
        if group_key is None and rows[0].resolves is not None:
            resolving = await self.recoveries.recovers(rows[0])
            return None if resolving is None else (rows, resolving)
        return rows, None

    def _interval(self, rule: str) -> float | None:
        lookup = self.deps.group_interval_of
        return None if lookup is None else lookup(rule)

    def _flushed(self, group_key: str, rule: str) -> Awaitable[dict[str, str]]:
        """Record a digest's flush: the group's next digest no sooner than group_interval after
        it, not after when this one was due (held back by a Retry-After or a retry's
        backoff, it went late)."""
        now = self.deps.clock()
        interval = self._interval(rule)
        next_at = None if interval is None else now + interval
        return self.deps.store.group_flushed(group_key, now, next_at)

    @staticmethod
    async def _then(first: Awaitable[object], second: Callable[[], Awaitable[object]]) -> None:
        await first
        await second()

    async def _too_soon(self, rows: list[Notification], group_key: str) -> float:
        """How long this digest must wait to go group_interval after the group's last one
        (0: it may go). One claimed while another digest of its group is on its way (from
        another replica, claimed beside it as a hold ended, or waiting for its retry's backoff
        with older runs: a digest that failed keeps its place) waits group_interval from now,
        unless all its runs are older than all of that one's: those never wait behind newer
        ones (a run queued amid that digest's, committed after its claim, does wait)."""
        interval = self._interval(rows[0].rule)
        if interval is None:
            return 0.0
        now = self.deps.clock()
        sending = [row.id for row in rows]
        last_sent, other = await self.deps.store.group_pace(group_key, sending, now)
        if other is not None:
            return interval if other <= max(row.created_at for row in rows) else 0.0
        return 0.0 if last_sent is None else max(last_sent + interval - now, 0.0)

    async def _send_and_finish(
        self,
        rows: list[Notification],
        recovers: Recovery | None,
        group_key: str | None,
    ) -> None:
        """Render, send with quick retries, and have the outcome written (see finish)."""
        outgoing = await self.composer.outgoing(rows, group_key, recovers)
        tried = await self.sender.attempt(outgoing, max(row.attempts for row in rows))
        if tried.held_s is not None:  # not sent: a hold is no attempt, the rows wait it out
            await self.release(rows, tried.held_s)
            return
        for reason in tried.failed:  # every failed try counts, quick retries too (Alertmanager)
            self.outcomes.event("failed", rows[0], reason)
        err = tried.error
        if err is not None and err.retry_after:  # it held the channel (Sender._hold)
            await self.outcomes.held(self.route.hold.until)
        self._outage(rows[0], err)

        def finish(again: bool) -> Awaitable[object]:
            # A digest fails as one message: its rows retry together (one jittered time) or die
            # together, else each row would come back alone and the digest split into N messages.
            tries = tried.tries
            # Its outcome is one store write, all its rows or none: a kill between rows would
            # leave part of it marked and send the rest again as a smaller digest (a new id).
            if err is not None:
                return self.outcomes.failed(
                    rows, err, tries, self.outcomes.outcome(err, rows, tries), again=again
                )
            if group_key is not None:  # the group first: no moment between the rows' mark and
                # the group's flush where another digest of it would look due at once
                flush = self._flushed(group_key, rows[0].rule)
                return self._then(flush, lambda: self.outcomes.sent(rows, tries, tried))
            return self.outcomes.sent(rows, tries, tried)

        extra = {**row_extra(self.name, rows[0]), "notifications": len(rows)}
        # The send is over: its slot is free while the outcome is written (the row stays leased
        # until then, so no claim takes it again). One store round trip less per send in flight.
        write = asyncio.ensure_future(self.outcomes.write_through_blips(finish, extra))
        self.finishing.add(write)
        write.add_done_callback(functools.partial(self._written, extra))
        if group_key is not None:  # a group's next digest waits for this one's flush
            await asyncio.wait({write})  # a stop cancelling this send leaves the write going

    def _outage(self, row: Notification, err: DeliveryError | None) -> None:
        """Count a failed send towards the receiver's outage; a send that ends one makes the
        notifications backing off from it due now (see _hasten)."""
        if err is not None:
            self.route.outage.failed(row.id, err)
        elif self.route.outage.ended():
            hasten = asyncio.ensure_future(self._hasten())
            self.finishing.add(hasten)
            hasten.add_done_callback(self.finishing.discard)

    async def _hasten(self) -> None:
        """The receiver answers again: what its outage put off goes now, oldest first (the
        claim's order), at the channel's rate limit. Each row waited for its own backoff, up
        to max_backoff (10 minutes): after Slack came back, the backlog trickled in over that
        long in random order (a failure from 09:40 posted at 10:08 between newer ones), while
        new notifications went at once."""
        try:
            count = await self.deps.store.hasten_retries(self.name, now=self.deps.clock())
        except StoreUnavailable:
            return  # they keep their backoff
        if count:
            extra = {"channel": self.name, "notifications": count}
            log.info(
                "receiver answering again; the notifications it failed are due now", extra=extra
            )
            self._wake()

    def _written(self, extra: dict[str, object], write: asyncio.Future[None]) -> None:
        self.finishing.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.error("outcome not recorded", extra=extra, exc_info=write.exception())

    async def _muted(self, row: Notification) -> bool:
        """A silence created after the notification was queued still mutes it, and so does a
        time interval that began since (a digest's group_wait, a retry's backoff), as
        Alertmanager mutes at flush time. A recovery follows its notification instead: see
        Recoveries.recovers."""
        if row.resolves is not None:
            return False
        now = self.deps.clock()
        reason, words = await self._silence(row, now), "notification muted by a silence"
        if reason is None and self.deps.time_muted is not None:
            reason = self.deps.time_muted(row.rule, now)
            words = "notification muted by a time interval"
        if reason is None:
            return False
        muting = self.deps.store.mark_muted(
            row.id, now=now, silence_id=reason, attempts=row.attempts
        )
        if not await asyncio.shield(muting):
            self.outcomes.fenced(row, "muted")  # not sent either: it is the other replica's to send
            return True
        log.info(words, extra={**row_extra(self.name, row), "muted_by": reason})
        self.outcomes.event("muted", row, "")
        return True

    async def _silence(self, row: Notification, now: float) -> str | None:
        """The id of a silence that covers `row` now, or None."""
        cache = self.deps.silences
        if cache is None:
            return None
        index = await cache.index(now)
        if not index:  # the usual case: none to look at, so no field of the run read for them
            return None
        run = row.run
        tags = run.get("tags")
        return silenced_by(
            index,
            now,
            rule=row.rule,
            channel=self.name,
            task=str(run.get("taskIdentifier") or ""),
            tags=tags if isinstance(tags, list) else [],
            status=str(run.get("status") or ""),
            event=str(run.get("event") or "run"),
            v3_status=v3 if isinstance(v3 := run.get("v3Status"), str) else None,
        )
