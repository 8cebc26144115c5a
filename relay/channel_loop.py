"""One channel's delivery loop (ChannelLoop): it claims due notifications from the outbox and
starts them (relay.dispatch delivers each), up to the channel's concurrency in flight plus a
claim ahead; it wakes when intake commits new rows (or a poll interval passes: other replicas'
rows, retries whose time came), and gives back what it holds on stop for the next loop (a
reload) or another replica. On a store other replicas deliver from, it reads the receiver's
Retry-After one of them stored (relay.holds) at most every POLL_S, and sends at its share of
the channel's rate_limit (the rate over the replicas delivering the channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from typing import TypeVar

from relay import holds
from relay import policy as pol
from relay.dispatch import Deps, Dispatch
from relay.errors import StoreUnavailable
from relay.logs import CountedLines
from relay.model import Notification
from relay.outcomes import HoldEnd, row_extra
from relay.sending import Route

log = logging.getLogger("relay.delivery")
POLL_S = 1.0
_STORE = "store"  # the key of the store's failures in a loop's CountedLines
CLAIM_AHEAD = 64  # rows claimed beyond the free slots (at least the channel's concurrency)
SHARED_WINDOW_S = 2 * POLL_S  # a rate-limited channel's rows held ahead, with other replicas


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
        self._stop = asyncio.Event()  # set on stop: sends waiting for their turn give back now
        # Whether the store may hold due rows not claimed yet: set by new work (poke) and by
        # every idle poll that ran out; cleared by a claim that took all there was.
        self._more = True
        self._pokes = 0
        self._due_at: float | None = None  # the earliest due row the last short claim left
        self._promised = 0  # room reserved for rows being leased at birth (Delivery.reserve)
        self._claiming = 0  # rows asked for by the claim under way
        self._claimed_at = -math.inf  # when the last claim began (deps.clock)
        self._hold_read_at = -math.inf  # when the stored hold was last read (a shared store)
        self._outage = CountedLines()  # the store's failures: its lines and their counts
        self._reclaimed: dict[str, Notification] = {}  # claimed again while their send ended
        self.dispatch = Dispatch(
            name,
            route,
            deps,
            lease_s=self.lease_s,
            finishing=self.finishing,
            release=self._release,
            wake=self.poke,
            stop=self._stop,
        )
        route.slots.listen(self._slot_freed)

    def poke(self) -> None:
        """New rows for this channel were committed (or replayed): claim them."""
        self._more = True
        self._pokes += 1
        self.wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"delivery:{self.name}")

    async def stop(self, grace_s: float) -> None:
        """Start nothing more; sends waiting (the rate limit, a quick retry's backoff) give
        their rows back at once, those on the wire get up to `grace_s`."""
        self._stopping = True
        self._stop.set()
        self.wake.set()
        self.route.slots.forget(self._slot_freed)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release_ready()
        sends = dict(self.inflight)
        cut = await _finish_within(set(sends), grace_s)
        if cut:  # the drain (a SIGTERM's, a reload's) ran out: say what goes again
            log.warning(
                "in-flight deliveries cut short at the end of the drain; they go again",
                extra={"channel": self.name, "notifications": sum(len(sends[t]) for t in cut)},
            )
        await _finish_within(set(self.finishing), grace_s)
        # A send cut short gives its rows back too, once the outcomes being written are in (a
        # digest's may be among them): after a reload the new loop would otherwise wait out
        # their lease (5 min) before sending them. A message that got through and goes again
        # carries the same id.
        await self._release([row for task in cut for row in sends[task]])
        self.dispatch.close()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except StoreUnavailable as exc:
                self._store_failed(exc)
                await self._idle(POLL_S)
            except Exception:
                log.exception("delivery loop error", extra={"channel": self.name})
                await self._idle(POLL_S)

    async def _step(self) -> None:
        self.wake.clear()
        await self._learn_shared()
        if await self._wait_hold():
            return
        self._start_ready()
        if self.ready or self.route.slots.taken >= self.route.concurrency:
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

    async def _wait_hold(self) -> bool:
        """Whether the channel is held by a receiver's Retry-After (see policy.Hold): then
        nothing starts and nothing is claimed till it ends, and the rows waiting their turn go
        back to the outbox due then (no attempt counted), not kept leased for all that time."""
        left_s = self._held_s()
        if left_s <= 0:
            return False
        await self._release_ready(left_s)
        await self._idle(left_s)
        return True

    async def _learn_shared(self) -> None:
        """On a shared store, at most every POLL_S: this replica's share of the rate limit, and
        a hold another replica stored since (its receiver's Retry-After applies to all that
        call it: a webhook, a Slack app), which holds this loop too, relay_channel_held saying
        so."""
        now = self.deps.clock()
        if not self.deps.store.shared or 0 <= now - self._hold_read_at < POLL_S:
            return
        self._hold_read_at = now
        self._share_rate()
        until = await holds.learn(self.deps.store, self.name, self.route, now)
        if until is not None and self.deps.on_event is not None:
            self.deps.on_event("held", HoldEnd(self.name, until), "", 0)

    def _share_rate(self) -> None:
        """Send at a share of the rate limit: the replicas delivering this channel send at its
        rate together, not each at it (a receiver's limit is per webhook or app)."""
        bucket = self.route.bucket
        if bucket is not None and bucket.share(self.deps.store.sharers(self.name)):
            share = round(bucket.rate, 3)
            extra = {"channel": self.name, "replicas": bucket.replicas, "per_second": share}
            log.info("channel rate limit shared by replicas", extra=extra)

    def _held_s(self) -> float:
        return self.route.hold.left_s(self.deps.clock())

    def reserve(self, most: int, now: float) -> int:
        """Hold room for up to `most` rows leased at birth; none on a rate-limited channel
        (they would wait for the bucket leased), once stopping, while the channel is held or
        while a claim is owed."""
        if self._stopping or self.route.bucket is not None or self.route.hold.holds(now):
            return 0
        if self._more or self._poll_owed(now):
            return 0  # a claim comes first: the store may hold due rows older than these
        room = self._room()
        if room <= 0:
            return 0
        room = most if room > most else room  # no min(): a call per request and channel
        self._promised += room
        return room

    def _not_held(self, rows: list[Notification]) -> list[Notification]:
        """The claimed rows this loop does not hold already. A wall clock stepped forward past
        the lease while a row is in flight (or waits its turn) makes that row due again: this
        loop's own claim took it back, and it went a second time beside the first send."""
        held = {row.id for _, unit in self.ready for row in unit}
        sending = {row.id for unit in self.inflight.values() for row in unit}
        # ... but a send may be ending without an outcome (a recovery that gave its row back to
        # wait for its alert, made due again since): kept to give back when that send is over
        self._reclaimed.update((row.id, row) for row in rows if row.id in sending)
        return [row for row in rows if row.id not in held and row.id not in sending]

    def _store_failed(self, exc: StoreUnavailable) -> None:
        """A step the store failed (it is tried again every POLL_S): said when an outage starts,
        then at most every LINE_EVERY_S with the failures since the last line. A full disk
        lets some commits through (a -wal that started over has room): paused and resumed,
        a line each, came every 1-2 s per channel."""
        failures = self._outage.due(_STORE, until_settled=True)
        if failures is not None:
            extra = {"channel": self.name, "error": str(exc), "failures": failures}
            log.warning("store unavailable; delivery paused", extra=extra)

    def _store_answered(self) -> None:
        """A claim went through: after an outage, say that delivery goes on (and how many
        steps failed that no line told), at most every LINE_EVERY_S."""
        failures = self._outage.settled(_STORE)
        if failures is not None:
            extra = {"channel": self.name, "failures": failures}
            log.info("store available again; delivery resumed", extra=extra)

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
        ready = sum(len(unit) for _, unit in self.ready) if self.ready else 0
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
        if bucket.replicas > 1:  # the others take their share of a burst at their next poll
            window_s = min(window_s, SHARED_WINDOW_S)
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
        """Start claimed units while slots are free; none once stopping (they are released) or
        while the channel is held (the loop gives them back)."""
        if self.ready and self._held_s() > 0:
            self.wake.set()
            return
        slots = self.route.slots  # shared with a loop a reload replaced, finishing its sends
        while self.ready and slots.taken < self.route.concurrency and not self._stopping:
            group_key, unit = self.ready.popleft()
            task = asyncio.create_task(self.dispatch.deliver(unit, group_key))
            self.inflight[task] = unit
            slots.take()
            task.add_done_callback(self._done)

    async def _release_ready(self, delay_s: float = 0.0) -> None:
        """On stop: the claimed rows not started yet go back to the outbox at once (not after
        their lease), for the next loop (a reload) or another replica; on a hold, due at its
        end."""
        rows = [row for _, unit in self.ready for row in unit]
        self.ready.clear()
        await self._release(rows, delay_s)

    async def _release(
        self, rows: list[Notification], delay_s: float = 0.0, *, keep_claim: bool = True
    ) -> None:
        """Give claimed rows back to the outbox, due again in `delay_s` at the soonest; a
        digest's as one claim to send again as it was, unless `keep_claim` is false (see
        Store.postpone)."""
        now = self.deps.clock()
        releases = (
            self.deps.store.postpone(
                row.id,
                now=now,
                not_before=max(row.not_before, now + delay_s),
                keep_claim=keep_claim,
            )
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
        if unit is not None:
            self.route.slots.give()  # _slot_freed of each loop sending to the receiver
        self._give_back_reclaimed(unit or [])
        if task.cancelled() or (exc := task.exception()) is None or not unit:
            return
        # A bug past every handler: told with its traceback (it was only "Task exception was
        # never retrieved"), and the rows tried again after a lease's time, as before: one
        # that fails the same way each time must not fill the log every few seconds.
        log.error("delivery failed unexpectedly", extra=row_extra(self.name, unit[0]), exc_info=exc)
        releasing = asyncio.ensure_future(self._release(unit, delay_s=self.lease_s))
        self.finishing.add(releasing)
        releasing.add_done_callback(self.finishing.discard)

    def _slot_freed(self) -> None:
        """A send to the receiver ended, this loop's or a replaced one's: the freed slot takes
        the next claimed unit here; the loop wakes only when none is left to start (a claim is
        due): a wake-up per send cost a turn of the loop's task and a new wait_for each time."""
        self._start_ready()
        if not self.ready:
            self.wake.set()

    def _give_back_reclaimed(self, unit: list[Notification]) -> None:
        """Rows of a finished send that a claim took again meanwhile: that claim's lease would
        keep them unsent for all its length (a recovery waited 5 minutes for its alert's)."""
        rows = [row for r in unit if (row := self._reclaimed.pop(r.id, None)) is not None]
        if rows:
            giving = asyncio.ensure_future(self._give_back(rows, set(self.finishing)))
            self.finishing.add(giving)
            giving.add_done_callback(self.finishing.discard)

    async def _give_back(self, rows: list[Notification], writes: set[asyncio.Future[None]]) -> None:
        """After the outcomes being written (a row sent stays sent: it is not given back), the
        rows are due again and claimed anew."""
        await asyncio.gather(*writes, return_exceptions=True)
        await self._release(rows)
        self.poke()

    async def _idle(self, wait_s: float) -> None:
        """Wait for a wake-up or `wait_s`; a wait that runs out claims next time (the poll that
        finds other processes' rows, and rows whose time came)."""
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self.wake.wait(), wait_s)
        except TimeoutError:
            self._more = True
