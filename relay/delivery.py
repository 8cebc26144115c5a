"""The delivery worker: claim → throttle → render → send → finish, one loop per channel.

Each channel has its own loop and concurrency, so a slow or failing channel never delays
another. One attempt is `channel.send`; blips are retried in-process (tenacity), longer
outages go back to the outbox with backoff or the server's Retry-After. Final writes are
shielded from cancellation: a notification is marked sent only after the send returned, with
the channel's receipt. A recovery waits until the notification it resolves is finished, then
goes out with that one's receipt (so Slack can update the message, PagerDuty resolve the alert);
it follows that notification's fate: muted with it, never muted on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from relay import policy as pol
from relay.channels import Channel, Outgoing, Recovery
from relay.config import RetryPolicy
from relay.errors import DeliveryError, StoreUnavailable
from relay.grouping import digest_context, digest_id
from relay.model import Notification, subject_of
from relay.silences import SilenceCache, silenced_by
from relay.store import BirthLease, Store
from relay.templating import RenderContext, Rendered, Renderer

log = logging.getLogger("relay.delivery")
POLL_S = 1.0
CLAIM_AHEAD = 16  # rows claimed beyond the free slots (at least the channel's concurrency)
RECOVERY_WAIT_S = 1.0  # a recovery is tried again this long after its notification's next try
RETRY_SOON_S = 5.0  # rows given back after a store failure before their send, due again then
DIGEST_TEMPLATE = "digest"
# A render gets this long on the event loop (the shipped templates take a millisecond or two);
# one that needs more starts again in the channel's own thread with the full budget, so a slow
# template holds up its channel, never intake or the other channels for a second per message.
ON_LOOP_RENDER_S = 0.05
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
DashboardLink = Callable[[dict[str, object]], str | None]


@dataclass
class Route:
    """A channel and how to render for it."""

    channel: Channel
    type: str
    parts: tuple[str, ...]
    concurrency: int
    bucket: pol.TokenBucket | None
    timeout_s: float = 10.0  # of one try: the lease of a claim outlasts every quick try


@dataclass(frozen=True)
class Tried:
    """The outcome of one delivery attempt (quick retries included)."""

    tries: int
    error: DeliveryError | None = None
    receipt: str | None = None
    failed: tuple[str, ...] = ()  # the reason of each failed try, quick retries included


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
    # (rule, channel, event) → the template that rule renders for that channel now, or None: a
    # notification is rendered as the config in force at send time says (Alertmanager's way)
    template_of: Callable[[str, str, str], str | None] | None = None
    # (kind, row, reason, attempts) after each outcome: sent, retry, dead, muted, template_error
    on_event: Callable[[str, Notification, str, int], None] | None = None


def render_notification(
    renderer: Renderer,
    channel: str,
    route: Route,
    row: Notification,
    link: DashboardLink,
    *,
    wall_s: float | None = None,
) -> Rendered:
    """Render `row` for one channel (also used by `relay test` and `relay send-test`)."""
    ctx = RenderContext(
        run=row.run,
        rule=row.rule,
        channel=channel,
        channel_type=route.type,
        notification_id=row.id,
        dashboard_url=link(row.run),
        resolves=row.resolves,
    )
    return renderer.render(route.type, row.template, route.parts, ctx, wall_s=wall_s)


def render_digest(
    renderer: Renderer,
    channel: str,
    route: Route,
    rows: list[Notification],
    link: DashboardLink,
    *,
    wall_s: float | None = None,
) -> Rendered:
    """Render several notifications of one group as one digest (template `digest`)."""
    head = rows[-1]
    labels = head.extra.get("group_labels") or {}
    group = digest_context(head.group_key or "", labels, [row.run for row in rows])
    ctx = RenderContext(
        run=head.run,
        rule=head.rule,
        channel=channel,
        channel_type=route.type,
        notification_id=digest_id([row.id for row in rows]),
        dashboard_url=link(head.run),
        group=group,
    )
    return renderer.render(route.type, DIGEST_TEMPLATE, route.parts, ctx, wall_s=wall_s)


def units(rows: list[Notification]) -> list[tuple[str | None, list[Notification]]]:
    """Claimed rows as delivery units: each ungrouped row alone, grouped rows by group."""
    groups: dict[str, list[Notification]] = {}
    out: list[tuple[str | None, list[Notification]]] = []
    for row in rows:
        if row.group_key is None:
            out.append((None, [row]))
        elif row.group_key in groups:
            groups[row.group_key].append(row)
        else:
            groups[row.group_key] = [row]
            out.append((row.group_key, groups[row.group_key]))
    return out


@dataclass
class Reservation:
    """Room in channel loops for rows leased at birth: `slots` for the store, then `fill`."""

    slots: dict[str, int]
    loops: dict[str, ChannelLoop]
    lease_s: float

    def lease(self, now: float) -> BirthLease | None:
        return BirthLease(self.slots, now + self.lease_s) if self.slots else None

    def fill(self, leased: list[Notification]) -> None:
        """Hand each loop its leased rows (none if the commit failed) and free the rest of the
        room it held; exactly once per reservation."""
        for name, loop in self.loops.items():
            loop.take([n for n in leased if n.channel == name], self.slots[name])


class Delivery:
    """All channel loops; `wake(channel)` after enqueueing, `stop()` on shutdown."""

    def __init__(self, deps: Deps, routes: dict[str, Route]) -> None:
        self.deps = deps
        self.loops = {name: ChannelLoop(name, route, deps) for name, route in routes.items()}

    def start(self) -> None:
        for loop in self.loops.values():
            loop.start()

    def reserve(self, most: int) -> Reservation:
        """Room for up to `most` rows per channel, leased to these loops as they are created."""
        slots = {name: loop.reserve(most) for name, loop in self.loops.items()}
        held = {name: n for name, n in slots.items() if n}
        lease_s = max((self.loops[n].lease_s for n in held), default=self.deps.lease_s)
        return Reservation(held, {n: self.loops[n] for n in held}, lease_s)

    def wake(self, channel: str) -> None:
        loop = self.loops.get(channel)
        if loop is not None:
            loop.poke()

    def wake_all(self) -> None:
        for loop in self.loops.values():
            loop.poke()

    async def stop(self, grace_s: float) -> None:
        await asyncio.gather(*(loop.stop(grace_s) for loop in self.loops.values()))


_F = TypeVar("_F", bound="asyncio.Future[None]")


async def _finish_within(tasks: set[_F], grace_s: float) -> set[_F]:
    """Wait up to `grace_s` for `tasks` to finish; cancel the others and return them."""
    if not tasks:
        return set()
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return pending


class ChannelLoop:
    def __init__(self, name: str, route: Route, deps: Deps) -> None:
        self.name = name
        self.route = route
        self.deps = deps
        self.lease_s = pol.lease_s(route.timeout_s, deps.lease_s)
        self.wake = asyncio.Event()
        self.inflight: dict[asyncio.Task[None], list[Notification]] = {}  # sends, their rows
        self.ready: deque[tuple[str | None, list[Notification]]] = deque()  # claimed, not started
        self.finishing: set[asyncio.Future[None]] = set()  # outcomes being written
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Whether the store may hold due rows not claimed yet: set by new work (poke) and by
        # every idle poll that ran out; cleared by a claim that took all there was.
        self._more = True
        self._pokes = 0
        self._due_at: float | None = None  # the earliest due row the last short claim left
        self._promised = 0  # room reserved for rows being leased at birth (Reservation)
        self._claiming = 0  # rows asked for by the claim under way
        self._claimed_at = -math.inf  # when the last claim began (deps.clock)
        self._paused = False  # the store was unavailable at the last step
        self._render_pool: ThreadPoolExecutor | None = None  # for renders too slow for the loop

    def poke(self) -> None:
        """New rows for this channel were committed (or replayed): claim them."""
        self._more = True
        self._pokes += 1
        self.wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"delivery:{self.name}")

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        self.wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release_ready()
        sends = dict(self.inflight)
        cut = await _finish_within(set(sends), grace_s)
        await _finish_within(set(self.finishing), grace_s)
        # A send cut short gives its rows back too, once the outcomes being written are in (a
        # digest's may be among them): after a reload the new loop would otherwise wait out
        # their lease (5 min) before sending them. A message that got through and goes again
        # carries the same id.
        await self._release([row for task in cut for row in sends[task]])
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except StoreUnavailable as exc:
                if not self._paused:  # once per outage: it is retried every POLL_S
                    extra = {"channel": self.name, "error": str(exc)}
                    log.warning("store unavailable; delivery paused", extra=extra)
                self._paused = True
                await self._idle(POLL_S)
            except Exception:
                log.exception("delivery loop error", extra={"channel": self.name})
                await self._idle(POLL_S)

    async def _step(self) -> None:
        self.wake.clear()
        self._start_ready()
        if self.ready or len(self.inflight) >= self.route.concurrency:
            await self._idle(POLL_S)  # a finished send wakes us
            return
        now = self.deps.clock()
        if self._poll_owed(now):
            self._more = True
        if not self._more and (self._due_at is None or self._due_at > now):
            # A send finished, but nothing new came and nothing came due since the last claim
            # found the store empty: no claim (two store round trips per send at low rates).
            await self._idle(POLL_S if self._due_at is None else min(POLL_S, self._due_at - now))
            return
        pokes, want = self._pokes, self._room()
        if want <= 0:  # the room is promised to rows being leased at birth
            await self._idle(POLL_S)
            return
        self._claiming, self._claimed_at = want, now
        try:
            rows = await self.deps.store.claim(self.name, now, want, self.lease_s)
        finally:
            self._claiming = 0
        self._store_answered()
        self.ready.extend(units(self._not_held(rows)))  # a claim takes a digest group whole
        self._start_ready()
        if len(rows) >= want:  # more may be due (a digest group can take more than `want`)
            return
        self._more = self._pokes != pokes  # new work during the claim: claim again
        self._due_at = due = await self.deps.store.next_due(self.name)
        wait = POLL_S if due is None else min(POLL_S, max(due - self.deps.clock(), 0.0))
        await self._idle(wait)

    def reserve(self, most: int) -> int:
        """Hold room for up to `most` rows leased at birth; none on a rate-limited channel
        (they would wait for the bucket leased), once stopping, or while a claim is owed."""
        if self._stopping or self.route.bucket is not None:
            return 0
        if self._more or self._poll_owed(self.deps.clock()):
            return 0  # a claim comes first: the store may hold due rows older than these
        room = min(most, max(self._room(), 0))
        self._promised += room
        return room

    def _not_held(self, rows: list[Notification]) -> list[Notification]:
        """The claimed rows this loop does not hold already. A wall clock stepped forward past
        the lease while a row is in flight (or waits its turn) makes that row due again: this
        loop's own claim took it back, and it went a second time beside the first send."""
        held = {row.id for _, unit in self.ready for row in unit}
        held.update(row.id for unit in self.inflight.values() for row in unit)
        return [row for row in rows if row.id not in held]

    def _store_answered(self) -> None:
        """A claim went through: after an outage, say once that delivery goes on."""
        if self._paused:
            self._paused = False
            log.info("store available again; delivery resumed", extra={"channel": self.name})

    def _poll_owed(self, now: float) -> bool:
        """Whether the last claim is a poll interval old. The store may then hold due rows no
        wake-up announces: another replica's, free since it died, or a retry whose time came.
        A busy loop never waits out an idle poll, and rows leased at birth would keep its room
        from the claim for as long as intake stays busy. A wall clock stepped back since the
        last claim owes one too (else none would come until the clock caught up again)."""
        return not 0 <= now - self._claimed_at < POLL_S

    def _room(self) -> int:
        """Rows this loop may still take: its concurrency plus the rows held ahead, less those
        in flight, waiting their turn, promised to a birth lease or asked for by a claim."""
        ready = sum(len(unit) for _, unit in self.ready)
        held = len(self.inflight) + ready + self._promised + self._claiming
        return self._most() - held

    def _most(self) -> int:
        """Rows this loop may hold at once. On a rate-limited channel no more than the bucket
        lets out, every try included, in half a lease: a row waiting its turn past its lease
        was claimed again and sent twice (16 in flight at one a minute wait 15 minutes)."""
        most = self.route.concurrency + self._ahead()
        bucket = self.route.bucket
        if bucket is None:
            return most
        window_s = self.lease_s / (2 * pol.QUICK_TRIES)
        return int(min(most, max(1.0, bucket.capacity + bucket.rate * window_s)))

    def take(self, rows: list[Notification], reserved: int) -> None:
        """Rows leased at birth for this loop: start them as a claim's; a stopping loop gives
        them back at once, as it gives back what it claimed."""
        self._promised -= reserved
        if reserved and self._more:
            self.wake.set()  # a claim that found its room promised away may go ahead now
        if not rows:
            return
        if self._stopping:
            task = asyncio.create_task(self._release(rows))
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)
            return
        self.ready.extend(units(rows))
        self._start_ready()

    def _ahead(self) -> int:
        """Rows claimed beyond the free slots, to start as slots free up: a claim is a store
        commit, and one per send made the store the bottleneck (2x the CPU per notification at
        concurrency 4). None on a rate-limited channel: they would sit out the bucket leased."""
        return 0 if self.route.bucket is not None else max(self.route.concurrency, CLAIM_AHEAD)

    def _start_ready(self) -> None:
        """Start claimed units while slots are free; none once stopping (they are released)."""
        while self.ready and len(self.inflight) < self.route.concurrency and not self._stopping:
            group_key, unit = self.ready.popleft()
            task = asyncio.create_task(self._deliver(unit, group_key))
            self.inflight[task] = unit
            task.add_done_callback(self._done)

    async def _release_ready(self) -> None:
        """On stop: the claimed rows not started yet go back to the outbox at once (not after
        their lease), for the next loop (a reload) or another replica."""
        rows = [row for _, unit in self.ready for row in unit]
        self.ready.clear()
        await self._release(rows)

    async def _release(self, rows: list[Notification], delay_s: float = 0.0) -> None:
        """Give claimed rows back to the outbox, due again in `delay_s` at the soonest."""
        now = self.deps.clock()
        releases = (
            self.deps.store.postpone(row.id, now=now, not_before=max(row.not_before, now + delay_s))
            for row in rows
        )
        results = await asyncio.gather(*releases, return_exceptions=True)
        if any(isinstance(result, BaseException) for result in results):
            log.warning(
                "claimed notifications not released; they wait for their lease",
                extra={"channel": self.name},
            )

    def _done(self, task: asyncio.Task[None]) -> None:
        unit = self.inflight.pop(task, None)
        self.wake.set()
        if task.cancelled() or (exc := task.exception()) is None or not unit:
            return
        # A bug past every handler: told with its traceback (it was only "Task exception was
        # never retrieved"), and the rows tried again after a lease's time, as before: one
        # that fails the same way each time must not fill the log every few seconds.
        log.error("delivery failed unexpectedly", extra=self._extra(unit[0]), exc_info=exc)
        releasing = asyncio.ensure_future(self._release(unit, delay_s=self.lease_s))
        self.finishing.add(releasing)
        releasing.add_done_callback(self.finishing.discard)

    async def _idle(self, wait_s: float) -> None:
        """Wait for a wake-up or `wait_s`; a wait that runs out claims next time (the poll that
        finds other processes' rows, and rows whose time came)."""
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self.wake.wait(), wait_s)
        except TimeoutError:
            self._more = True

    async def _deliver(self, rows: list[Notification], group_key: str | None) -> None:
        """Send one notification, or every due one of a group as one digest; then finish."""
        try:
            ready = await self._to_send(rows, group_key)
        except StoreUnavailable as exc:  # a silence or recovery read: they go again shortly
            log.warning(
                "store unavailable before sending; the notification goes back to the outbox",
                extra={**self._extra(rows[0]), "error": str(exc)},
            )
            await self._release(rows, delay_s=RETRY_SOON_S)
            return
        if ready is not None:
            await self._send_and_finish(*ready, group_key)

    async def _to_send(
        self, rows: list[Notification], group_key: str | None
    ) -> tuple[list[Notification], Recovery | None, Notification | None] | None:
        """The rows to send now (the muted ones marked so), what a recovery among them
        resolves and that alert if it is dead; None when nothing goes now."""
        rows = [row for row in rows if not await self._muted(row, self._extra(row))]
        if not rows:
            if group_key is not None:
                await asyncio.shield(self.deps.store.group_flushed(group_key, self.deps.clock()))
            return None
        if group_key is None and rows[0].resolves is not None:
            resolving = await self._recovers(rows[0])
            return None if resolving is None else (rows, *resolving)
        return rows, None, None

    async def _send_and_finish(
        self,
        rows: list[Notification],
        recovers: Recovery | None,
        dead: Notification | None,
        group_key: str | None,
    ) -> None:
        """Render, send with quick retries, and have the outcome written (see finish)."""
        outgoing = await self._render(rows, group_key, recovers)
        tried = await self._attempt(outgoing, max(row.attempts for row in rows))
        for reason in tried.failed:  # every failed try counts, quick retries too (Alertmanager)
            self._event("failed", rows[0], reason)
        err = tried.error

        def finish() -> Awaitable[object]:
            # A digest fails as one message: its rows retry together (one jittered time) or die
            # together, else each row would come back alone and the digest split into N messages.
            tries = tried.tries
            writes: list[Awaitable[object]]
            if err is None and dead is not None:  # a recovery, of an alert that was dead
                writes = [self._recovery_sent(rows[0], rows[0].attempts + tries, tried, dead)]
            elif err is None:
                writes = [self._sent(row, row.attempts + tries, tried) for row in rows]
            else:
                after = self._outcome(err, rows, tries)
                writes = [self._failed(row, err, row.attempts + tries, after) for row in rows]
            if err is None and group_key is not None:
                writes.append(self.deps.store.group_flushed(group_key, self.deps.clock()))
            return writes[0] if len(writes) == 1 else asyncio.gather(*writes)

        extra = {**self._extra(rows[0]), "notifications": len(rows)}
        # The send is over: its slot is free while the outcome is written (the row stays leased
        # until then, so no claim takes it again). One store round trip less per send in flight.
        write = asyncio.ensure_future(self._write_through_blips(finish, extra))
        self.finishing.add(write)
        write.add_done_callback(functools.partial(self._written, extra))
        if group_key is not None:  # a group's next digest waits for this one's flush
            await asyncio.wait({write})  # a stop cancelling this send leaves the write going

    def _written(self, extra: dict[str, object], write: asyncio.Future[None]) -> None:
        self.finishing.discard(write)
        if not write.cancelled() and write.exception() is not None:
            log.error("outcome not recorded", extra=extra, exc_info=write.exception())

    async def _write_through_blips(
        self, write: Callable[[], Awaitable[object]], extra: dict[str, object]
    ) -> None:
        """Record the outcome even if the store blips: retried with backoff up to the lease
        (the writes are idempotent: they only change rows still pending)."""
        deadline = self.deps.clock() + self.lease_s
        wait_s = 0.25
        while True:
            try:
                await write()
                return
            except StoreUnavailable:
                if self.deps.clock() + wait_s > deadline:
                    log.error("outcome not recorded: store unavailable", extra=extra)
                    return
                await self.deps.sleep(wait_s)
                wait_s = min(wait_s * 2, 15.0)

    async def _recovers(self, row: Notification) -> tuple[Recovery, Notification | None] | None:
        """What recovery `row` resolves, once that notification is finished, and that
        notification if it is dead. Until then the row waits (None); it is muted (None) when
        that notification was muted."""
        firing_id = row.resolves or ""
        firing = await self.deps.store.get(firing_id)
        now = self.deps.clock()
        if firing is not None and firing.state == "pending":
            later = max(firing.not_before, now) + RECOVERY_WAIT_S
            await asyncio.shield(self.deps.store.postpone(row.id, now=now, not_before=later))
            return None
        if firing is not None and firing.state == "muted":
            silence = firing.reason or ""
            await asyncio.shield(self.deps.store.mark_muted(row.id, now=now, silence_id=silence))
            log.info("recovery muted with its notification", extra=self._extra(row))
            self._event("muted", row, "")
            return None
        receipt = firing.receipt if firing is not None and firing.state == "sent" else None
        dead = firing if firing is not None and firing.state == "dead" else None
        return Recovery(firing_id, receipt), dead  # dead or forgotten: the channel makes do

    async def _recovery_sent(
        self, row: Notification, attempts: int, tried: Tried, dead: Notification
    ) -> None:
        """A recovery sent while its alert was dead. A replay of that alert meanwhile (by
        `relay dlq replay`, on any replica) queued no recovery: this one was still pending.
        The alert then came after it, and the run ended on an open alert: it goes again."""
        await self._sent(row, attempts, tried)
        firing = await self.deps.store.get(dead.id)
        if firing is None or _same_outcome(firing, dead):
            return
        if await self.deps.store.requeue_recoveries([row.id], self.deps.clock()):
            log.info("recovery queued again: its notification was replayed", extra=self._extra(row))

    async def _attempt(self, outgoing: Outgoing, attempts: int) -> Tried:
        """Send with in-process retries, each try throttled."""
        try:
            budget = max(1, min(pol.QUICK_TRIES, self.deps.retry.max_attempts - attempts))
            return await self._send(outgoing, budget)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a channel bug: retry, never drop
            log.exception("channel raised unexpectedly", extra=self._outgoing_extra(outgoing))
            error = DeliveryError("other", retryable=True, detail=type(exc).__name__)
            return Tried(1, error, failed=(error.reason,))

    def _outgoing_extra(self, outgoing: Outgoing) -> dict[str, object]:
        return {
            "run_id": outgoing.run_id or None,  # "" for a digest of several runs
            "rule": outgoing.rule,
            "channel": self.name,
            "notification_id": outgoing.notification_id,
            "group": outgoing.group_key,
        }

    def _extra(self, row: Notification) -> dict[str, object]:
        return {
            "run_id": row.run_id,
            "rule": row.rule,
            "channel": self.name,
            "notification_id": row.id,
            "group": row.group_key,
        }

    async def _muted(self, row: Notification, extra: dict[str, object]) -> bool:
        """A silence created after the notification was queued still mutes it, and so does a
        time interval that began since (a digest's group_wait, a retry's backoff), as
        Alertmanager mutes at flush time. A recovery follows its notification instead: see
        _recovers."""
        if row.resolves is not None:
            return False
        now = self.deps.clock()
        reason, words = await self._silence(row, now), "notification muted by a silence"
        if reason is None and self.deps.time_muted is not None:
            reason = self.deps.time_muted(row.rule, now)
            words = "notification muted by a time interval"
        if reason is None:
            return False
        await asyncio.shield(self.deps.store.mark_muted(row.id, now=now, silence_id=reason))
        log.info(words, extra={**extra, "muted_by": reason})
        self._event("muted", row, "")
        return True

    async def _silence(self, row: Notification, now: float) -> str | None:
        """The id of a silence that covers `row` now, or None."""
        cache = self.deps.silences
        if cache is None:
            return None
        run = row.run
        tags = run.get("tags")
        return silenced_by(
            await cache.current(now),
            now,
            rule=row.rule,
            channel=self.name,
            task=str(run.get("taskIdentifier") or ""),
            tags=tags if isinstance(tags, list) else [],
            status=str(run.get("status") or ""),
            event=str(run.get("event") or "run"),
        )

    async def _render(
        self, rows: list[Notification], group_key: str | None, recovers: Recovery | None = None
    ) -> Outgoing:
        head = rows[-1]
        ident = head.id if len(rows) == 1 else digest_id([row.id for row in rows])
        on_loop_s = min(ON_LOOP_RENDER_S, self.deps.renderer.budget_s)
        rendered = self._rendered(rows, on_loop_s)
        if rendered.timed_out and on_loop_s < self.deps.renderer.budget_s:
            # too slow for the event loop: again in the channel's thread, with the full budget
            if self._render_pool is None:
                self._render_pool = ThreadPoolExecutor(1, f"render:{self.name}")
            loop = asyncio.get_running_loop()
            rendered = await loop.run_in_executor(self._render_pool, self._rendered, rows, None)
        if rendered.fallback:
            log.error(
                "template failed; sending the plain fallback",
                extra={**self._extra(head), "reason": "template", "error": rendered.error},
            )
            self._event("template_error", head, "template")
        run_id, subject = (head.run_id, subject_of(head.run)) if len(rows) == 1 else ("", None)
        return Outgoing(
            ident,
            run_id,
            head.rule,
            rendered.parts,
            self.deps.clock(),
            recovers,
            group_key,
            subject,
        )

    def _rendered(self, rows: list[Notification], wall_s: float | None) -> Rendered:
        """One notification's message, or a digest's; wall_s None: the renderer's budget."""
        args = (self.deps.renderer, self.name, self.route)
        link = self.deps.dashboard_link
        if len(rows) == 1:
            return render_notification(*args, self._current(rows[0]), link, wall_s=wall_s)
        return render_digest(*args, rows, link, wall_s=wall_s)

    def _current(self, row: Notification) -> Notification:
        """`row` with the template its rule names now: a reload that changed it (with the
        channel's type, say) while the row waited in a digest or a retry's backoff renders the
        new one, as the templates' files are the new ones. A recovery keeps `recovered`."""
        template_of = self.deps.template_of
        if row.resolves is not None or template_of is None:
            return row
        template = template_of(row.rule, self.name, str(row.run.get("event") or "run"))
        return (
            row if template is None or template == row.template else replace(row, template=template)
        )

    async def _throttle(self) -> None:
        bucket = self.route.bucket
        if bucket is not None:
            wait = bucket.reserve(self.deps.clock())
            if wait > 0:
                await self.deps.sleep(wait)

    async def _send(self, outgoing: Outgoing, budget: int) -> Tried:
        """Send, retrying blips in-process: the tries made and the final error or receipt. The
        first try is made directly (nearly every send succeeds at once: setting up a retry
        loop for each cost more CPU than rendering the message); tenacity takes the rest."""
        try:
            return Tried(1, None, await self._send_once(outgoing))
        except DeliveryError as err:
            if budget <= 1 or not pol.is_blip(err):
                return Tried(1, err, failed=(err.reason,))
            await self.deps.sleep(pol.quick_wait_s(1, err, self.deps.rng))
            failed = [err.reason]
        tries = 1
        receipt: str | None = None

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            err = exc if isinstance(exc, DeliveryError) else None
            return pol.quick_wait_s(1 + state.attempt_number, err, self.deps.rng)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(budget - 1),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and pol.is_blip(e)),
            sleep=self.deps.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    tries += 1
                    receipt = await self._try(outgoing, failed)
        except DeliveryError as err:
            return Tried(tries, err, failed=tuple(failed))
        return Tried(tries, None, receipt, tuple(failed))

    async def _try(self, outgoing: Outgoing, failed: list[str]) -> str | None:
        try:
            return await self._send_once(outgoing)
        except DeliveryError as err:
            failed.append(err.reason)
            raise

    async def _send_once(self, outgoing: Outgoing) -> str | None:
        """One request: it takes a token of the rate limit (a retry is a request too), and it
        is stamped when it goes out, not when rendered: a send that waited for the rate limit
        would carry a stale webhook-timestamp, which Standard Webhooks receivers refuse after
        5 minutes."""
        await self._throttle()
        return await self.route.channel.send(replace(outgoing, timestamp=self.deps.clock()))

    async def _sent(self, row: Notification, attempts: int, tried: Tried) -> None:
        extra = self._extra(row)
        now = self.deps.clock()
        await self.deps.store.mark_sent(row.id, now=now, attempts=attempts, receipt=tried.receipt)
        # a wall clock stepped back since the row was made: no negative latency (as the metric)
        extra.update(attempts=attempts, latency_s=round(max(now - row.created_at, 0.0), 4))
        if tried.failed:  # quick retries leave no line of their own: say what they were
            extra["failed_tries"] = list(tried.failed)
        log.info("notification sent", extra=extra)
        self._event("sent", row, "", attempts)

    def _outcome(self, err: DeliveryError, rows: list[Notification], tries: int) -> pol.Outcome:
        """What follows a failed send of these rows (one message): the oldest row and the most
        attempts decide, so a digest retries or dies whole."""
        return pol.after_failure(
            err,
            attempts=max(row.attempts for row in rows) + tries,
            created_at=min(row.created_at for row in rows),
            now=self.deps.clock(),
            policy=self.deps.retry,
            rng=self.deps.rng,
        )

    async def _failed(
        self, row: Notification, err: DeliveryError, attempts: int, outcome: pol.Outcome
    ) -> None:
        extra = self._extra(row)
        now = self.deps.clock()
        info = {**extra, "reason": err.reason, "attempts": attempts, "error": str(err)}
        if outcome.dead:
            await self.deps.store.mark_dead(
                row.id,
                now=now,
                attempts=attempts,
                reason=err.reason,
                error=f"{err} ({outcome.why})",
            )
            log.error("notification dead", extra={**info, "why": outcome.why})
            self._event("dead", row, err.reason, attempts)
            return
        await self.deps.store.mark_retry(
            row.id,
            now=now,
            not_before=outcome.not_before,
            attempts=attempts,
            reason=err.reason,
            error=str(err),
        )
        log.warning(
            "delivery failed; will retry",
            extra={**info, "retry_in_s": round(outcome.not_before - now, 3)},
        )
        self._event("retry", row, err.reason, attempts)

    def _event(self, kind: str, row: Notification, reason: str, attempts: int = 0) -> None:
        if self.deps.on_event is not None:
            self.deps.on_event(kind, row, reason, attempts)


def _same_outcome(a: Notification, b: Notification) -> bool:
    """Whether a notification row is as it was (a replay resets its state and attempts)."""
    return (a.state, a.attempts, a.not_before, a.receipt) == (
        b.state,
        b.attempts,
        b.not_before,
        b.receipt,
    )
