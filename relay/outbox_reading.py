"""The outbox figures /metrics reports (counts by state, the oldest pending), read from the store
no more often than they are cheap.

With 1,000,000 notifications pending (a receiver down for hours), one reading costs about 0.4 s
of the store (SQLite scans every pending row for the oldest) in the queue ingest commits go
through too: ten clients scraping /metrics held a small POST /v1/runs for 4.5 s. A reading that
took more than CHEAP_S is reused for COST_RATIO times as long as it took, but never for more than
MAX_REUSE_S (0.4 s: for 5 s), so scrapes cost the store a small share of its time; scrapes that
arrive while one reading is under way share it. A cheap reading (a store of everyday size) is
never reused: the figures are as fresh as the scrape.

What a reading "took" includes its wait in the store's queue: behind a 5,000-run ingest commit
of 3 s it took 3.4 s, and was reused for 68 s, relay_queue_depth showing a depth a minute old
while the queue drained or grew. MAX_REUSE_S bounds how old a figure can be.

A scrape waits WAIT_S at most, then answers as if the store had not answered (relay_store_up
0, the last figures): with another process holding SQLite's write lock each reading waited out
the busy timeout behind a write that did too, 10 s, Prometheus' default scrape_timeout, and the
failed scrape told of relay being down, not of its store. The reading goes on and serves the
scrapes that follow while it is fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from relay.errors import StoreUnavailable
from relay.store import Store

CHEAP_S = 0.01
COST_RATIO = 20.0
MAX_REUSE_S = 5.0
WAIT_S = 5.0  # half Prometheus' default scrape_timeout
Reading = tuple[dict[str, int], float | None]  # counts by state, oldest pending (store time)


class OutboxReading:
    def __init__(
        self, store: Callable[[], Store], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store  # the service's store, looked up at each reading
        self._clock = clock
        self._last: Reading | None = None
        self._fresh_until = 0.0
        self._under_way: asyncio.Future[Reading] | None = None

    async def read(self, now: float) -> Reading:
        """The figures at `now` (wall clock, the store's time); StoreUnavailable as the store."""
        if self._last is not None and self._clock() < self._fresh_until:
            return self._last
        if self._under_way is None or self._under_way.done():  # done: after a scrape gave up
            self._under_way = asyncio.ensure_future(self._read(now))
            self._under_way.add_done_callback(_retrieved)  # its scrapers may all have left
        under_way = self._under_way
        try:
            return await asyncio.wait_for(asyncio.shield(under_way), WAIT_S)
        except TimeoutError:
            raise StoreUnavailable(f"no outbox figures within {WAIT_S:g} s") from None
        finally:
            if self._under_way is under_way and under_way.done():
                self._under_way = None

    async def _read(self, now: float) -> Reading:
        started = self._clock()
        store = self._store()
        reading = await store.counts(), await store.oldest_pending(now)
        took = self._clock() - started
        self._last = reading
        reuse_s = min(took * COST_RATIO, MAX_REUSE_S)
        self._fresh_until = started + took + reuse_s if took > CHEAP_S else 0.0
        return reading


def _retrieved(future: asyncio.Future[Reading]) -> None:
    if not future.cancelled():
        future.exception()
