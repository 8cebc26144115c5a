"""The Realtime follower: Trigger.dev's Realtime API (Electric shape long-polling) → intake.

One task per configured feed (tags, run id or batch id) speaks TRIGGER.md §2.2: a snapshot from
offset -1, a non-live catch-up, then live long-polls. Rows are emitted only at up-to-date; each
batch is decoded (formats/electric.py) and handed to `Intake.submit` (a large one a slice at a
time: relay.sources._slices), and only after that commit are the position (handle, offset,
cursor, schema) and the merged rows that changed written to the store, in one transaction,
from which a restart resumes (relay.sources._feed_store says how). `must-refetch` (409 or
control message) drops the rows and starts again from a snapshot. A snapshot repeats runs
already seen, and intake's transition detection (same `updatedAt`, rule already in the run's
fired set) makes them fire nothing.

Those rows are bounded: a run in a final status whose row has not changed for FINAL_GRACE_S is
dropped from them (not on a single-run feed, which stops at its run's end), in memory and, in
the same write as the position, in the store. Without it a tags feed held every run it ever
matched (Trigger.dev fixes its createdAt window per shape handle: no run leaves the shape), ~3
KB of memory and ~1 KB of store each, until a must-refetch. A later update of a dropped run
that is not a whole row (Electric's changed columns) has nothing to merge into: it is skipped,
and counted in one log line per batch (reason "dropped"); a whole row is taken as a new one.

A request's headers, timeouts and size cap, and the backoff between requests, are
relay.sources._feed_request's.
How a failed request is answered (backed off, waited out, read anew from a snapshot) is
relay.sources._failures'. Log lines carry the feed key, rows emitted and lag, never the secret
key; `observe` hears of every up-to-date (lag 0 when nothing was new).

Electric holds a live request until there is a change (~20 s); a live answer that changed no
row and came sooner than `idle_min_s` (0.5 s) after it was asked for is followed by a pause for
the rest of it, and so is a non-live one that neither moved on nor ended up-to-date, so a server
answering at once (no long poll, the same rows again) is not hammered. Electric's non-live
catch-up (a bare up-to-date at once) is not paced: the long poll after it is held.
A change that leaves its row as it was is not emitted again. An answer without electric-handle
or electric-offset keeps the feed's own; that and other ways an answer differs from Electric's
(messages that are neither changes nor control, no up-to-date on an answer that did not move on,
an offset going back, a new handle without a 409) are logged once per feed. Live answers that
move on without up-to-date are Electric's own log chunks, for a follower more than a chunk
behind (an outage of a busy feed): said once per catch-up, at info.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from relay.config_sources import RealtimeConfig
from relay.errors import StoreUnavailable
from relay.intake import IntakeResult
from relay.model import Run
from relay.outbound import Proxies
from relay.sources._answers import (
    AnswerTooLarge,
    Response,
    error_reason,
)
from relay.sources._failures import FeedFailures
from relay.sources._feed import Feed
from relay.sources._feed_request import Timing, feed_request
from relay.sources._feed_store import FeedStore, Positions
from relay.sources._hooks import Failed, Observe, Sleep, Submit
from relay.sources._messages import ShapeError
from relay.sources._shape import Batch, Shape
from relay.sources._slices import Submitted, decoded, slices
from relay.transport_words import transport_words

log = logging.getLogger("relay.realtime")


# A run in a final status is dropped from the feed's rows once its row has not changed for this
# long. Its status never changes again; what Trigger.dev still writes after the end (cost and
# duration, written when the attempt ends, TRIGGER.md §1.1, come with the final status in the
# fixtures' session; a metadata flush, the SDK's 30 s stop grace after completedAt) comes within
# seconds, so an hour merges it with a wide margin (rows read back at a restart, or of a
# snapshot, count from their own updatedAt: neither starts it again), while a feed matching
# 10 runs/s holds ~36,000 finished runs (~110 MB), not all.
FINAL_GRACE_S = 3600.0


class Follower(FeedFailures):
    """Follows one feed until cancelled (a single-run feed: until the run has finished)."""

    def __init__(
        self,
        feed: Feed,
        config: RealtimeConfig,
        session: aiohttp.ClientSession,
        submit: Submit,
        positions: Positions,
        *,
        timing: Timing | None = None,
        sleep: Sleep = asyncio.sleep,
        observe: Observe | None = None,
        failed: Failed | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self._observe = observe
        self._failed = failed
        self._config = config
        self._session = session
        self._proxies = Proxies.from_env()  # as the channels' requests
        self._submit = submit
        self._store = FeedStore(positions, feed.key, clock)
        self._timing = timing or Timing(config.timeout, error_wait_s=config.error_backoff)
        self._sleep = sleep
        self._failures = 0
        self._unreadables = 0  # responses in a row that could not be read
        self._idled = False  # an answer with nothing new came at once (logged once)
        self._told: set[str] = set()  # oddities of answers, each logged once
        self._behind = False  # said that live answers come in chunks, until an up-to-date

    async def run(self) -> None:
        """Never raises (but CancelledError): an unexpected error restarts from the store."""
        while True:
            try:
                await self._follow()
                return
            except Exception:
                log.exception("realtime feed failed; starting it again", extra=self._extra())
                await self._sleep(self._timing.error_wait_s)

    async def _follow(self) -> None:
        shape = await self._store.resume()
        if self.feed.single_run and _finished(shape.rows.values()):
            log.info("realtime run had finished before; feed stopped", extra=self._extra())
            return
        refetches, stored_handle = 0, shape.position.handle
        while True:
            asked, before = time.monotonic(), (shape.live, shape.position.offset)
            response = await self._ask(shape)
            if response is None:
                continue
            if response.status == 409:
                refetches += 1
                await self._must_refetch(shape, response, refetches)
            elif response.status in (200, 204):
                status, taken = response.status, _receive(shape, response)
                del response  # its body (up to MAX_ANSWER_BYTES) goes before the rows are emitted
                answer = await self._answered(shape, status, taken, asked, before)
                if answer == "finished":
                    log.info("realtime run finished; feed stopped", extra=self._extra())
                    return
                if answer != "unreadable" and before[0]:  # a live answer: past every chunk
                    refetches = 0  # of the snapshot (its second one reset it: no backoff)
            else:
                stored_handle = await self._not_taken(shape, response, stored_handle)

    async def _ask(self, shape: Shape) -> Response | None:
        """The server's answer, or None when the request failed (counted, backed off)."""
        try:
            return await feed_request(
                self._session,
                self._config,
                self.feed,
                shape,
                timing=self._timing,
                proxies=self._proxies,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._count(error_reason(exc))
            await self._retry(transport_words(exc), None)  # the channels' words
        except AnswerTooLarge as exc:
            self._count("other")
            await self._retry(str(exc), None)
        return None

    async def _answered(
        self,
        shape: Shape,
        status: int,
        batch: Batch | ShapeError | None,
        asked: float,
        before: tuple[bool, str],
    ) -> str:
        """Emit what a 200/204 taken into the shape (_receive) completes: "unreadable",
        "finished" (a single run's feed: its run has finished) or "taken"."""
        if isinstance(batch, ShapeError):
            self._count("other")
            await self._unreadable(shape, batch)
            return "unreadable"
        self._failures = self._unreadables = 0
        for oddity in set(shape.oddities) - self._told:
            self._told.add(oddity)
            log.warning(
                "realtime answer not as Electric sends it; taken as it is",
                extra=self._extra(oddity=oddity, status=status),
            )
        self._catching_up(shape.behind, batch is not None)
        if batch is not None and await self._emit(shape, batch):
            return "finished"
        if shape.stalled:  # the same answer again would get nowhere: a failure, backed off
            self._count("other")
            await self._retry("an answer that neither moves on nor ends up-to-date", None)
            return "taken"
        # Paced: a live answer, or a non-live one that neither moved on nor ended up-to-date
        # (the same rows again). Electric's catch-up (after a snapshot, a 409, a restart) comes
        # at once with a bare up-to-date; the long poll that follows it is held.
        was_live, offset = before
        stuck = offset == shape.position.offset and not shape.live
        if shape.idle and (was_live or stuck):
            await self._idle(asked)
        return "taken"

    def _catching_up(self, behind: bool, up_to_date: bool) -> None:
        """Say once per catch-up that live answers come without up-to-date: Electric's log
        chunks, for a follower more than one behind (after an outage), whose rows wait for
        the up-to-date at the end of the log; a server that never sends one says no more."""
        if behind and not self._behind:
            log.info(
                "realtime feed behind by more than one answer (log chunks without up-to-date);"
                " its rows are emitted at the up-to-date that ends the catch-up",
                extra=self._extra(),
            )
        self._behind = (self._behind or behind) and not up_to_date

    async def _idle(self, asked: float) -> None:
        """After an answer that changed nothing: wait out the rest of `idle_min_s` since it was
        asked for (nothing, after a long poll held by the server as Electric's is)."""
        wait = self._timing.idle_min_s - (time.monotonic() - asked)
        if wait <= 0:
            return
        if not self._idled:
            self._idled = True
            log.info(
                "realtime server answered with nothing new without holding the request"
                " (no long poll); asking it again no more often than every min_interval_s",
                extra=self._extra(min_interval_s=self._timing.idle_min_s),
            )
        await self._sleep(wait)

    async def _emit(self, shape: Shape, batch: Batch) -> bool:
        """Submit the batch a slice at a time (relay.sources._slices; retrying while the store
        is down), then save position and rows."""
        done = Submitted()
        for rows in slices(batch.rows):
            runs = decoded(rows, batch.position.schema, self.feed.key)  # a slice's at a time
            if runs:
                done.add(runs, await self._submit_until_done(runs))
        lag_s: float | None = 0.0  # caught up: nothing newer on the server
        if done.runs:
            lag_ms = done.lag_ms(time.time())
            log.info(
                "realtime rows submitted",
                extra=self._extra(rows=done.runs, notifications=done.notifications, lag_ms=lag_ms),
            )
            lag_s = None if lag_ms is None else lag_ms / 1000
        self._drop_final(shape, batch.skipped)
        if self._observe is not None:
            self._observe(self.feed.key, done.runs, lag_s, len(shape.rows))
        await self._store.save(shape, batch.position, force=bool(done.runs))
        return self.feed.single_run and done.finished

    def _drop_final(self, shape: Shape, skipped: int) -> None:
        """Forget the runs finished FINAL_GRACE_S ago (stored by the next save), and say how
        many updates of runs no longer held were skipped."""
        if skipped:
            log.info(
                "realtime rows skipped: updates of runs the feed no longer holds",
                extra=self._extra(rows=skipped, reason="dropped"),
            )
        if self.feed.single_run:  # it stops at its run's end; a resume reads that from its row
            return
        dropped = shape.drop_final(FINAL_GRACE_S)
        if dropped:
            log.debug(
                "realtime finished runs dropped from the feed's rows",
                extra=self._extra(rows=dropped, held=len(shape.rows)),
            )

    async def _submit_until_done(self, runs: list[Run]) -> IntakeResult:
        while True:
            try:
                return await self._submit(runs)
            except StoreUnavailable:
                await self._retry("store unavailable", None)


def _receive(shape: Shape, response: Response) -> Batch | ShapeError | None:
    """The answer taken into the shape: the batch it completes, or why it cannot be read."""
    try:
        return shape.receive(response.status, response.headers, response.body)
    except ShapeError as exc:
        return exc


def _finished(rows: Iterable[dict[str, Any]]) -> bool:
    """A stored raw row has its `completedAt` (the SDK's `finishedAt`) set."""
    return any(row.get("completedAt") is not None for row in rows)
