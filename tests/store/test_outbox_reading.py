"""/metrics' outbox figures: read fresh while cheap, reused for a while when a reading was costly
(a store with a million pending rows), shared by scrapes that arrive together. Real SQLite and
PostgreSQL; the clock is the reading's own (injected): each look moves it, to make a reading
"costly"."""

from __future__ import annotations

import asyncio

from relay.outbox_reading import COST_RATIO, OutboxReading
from relay.store import Store
from tests.store.conftest import enqueue


class SlowClock:
    """A monotonic clock that moves `step` seconds at each look (a reading then 'takes' it)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_cheap_reading_is_always_fresh(store: Store) -> None:
    reading = OutboxReading(lambda: store, SlowClock(0.001))
    assert (await reading.read(2000.0))[0]["pending"] == 0
    await enqueue(store, "run_a", 1000.0, "hook")
    counts, oldest = await reading.read(2000.0)
    assert counts["pending"] == 1 and oldest == 1000.0


async def test_a_costly_reading_is_reused_for_a_while_then_read_again(store: Store) -> None:
    clock = SlowClock(1.0)  # each reading "takes" 1 s
    reading = OutboxReading(lambda: store, clock)
    assert (await reading.read(2000.0))[0]["pending"] == 0
    await enqueue(store, "run_a", 1000.0, "hook")
    assert (await reading.read(2000.0))[0]["pending"] == 0  # within 5 s: the last one
    clock.now += COST_RATIO
    assert (await reading.read(2000.0))[0]["pending"] == 1


async def test_a_reading_slowed_by_the_store_queue_is_reused_for_seconds_only(store: Store) -> None:
    """A reading that waited 3 s behind a large ingest commit is no cost of its own to spread:
    it was reused for 60 s, /metrics showing a queue depth a minute old."""
    clock = SlowClock(3.0)  # each reading "takes" 3 s, and each look moves the clock 3 s
    reading = OutboxReading(lambda: store, clock)
    assert (await reading.read(2000.0))[0]["pending"] == 0  # read from 3 s to 6 s
    await enqueue(store, "run_a", 1000.0, "hook")
    assert (await reading.read(2000.0))[0]["pending"] == 0  # at 9 s: reused
    assert (await reading.read(2000.0))[0]["pending"] == 1  # at 12 s, 6 s on: read again


async def test_scrapes_that_arrive_together_share_one_reading(store: Store) -> None:
    await enqueue(store, "run_a", 1000.0, "hook")
    reading = OutboxReading(lambda: store, SlowClock(0.001))
    first, second = reading.read(2000.0), reading.read(2000.0)
    a, b = await asyncio.gather(first, second)
    assert a is b and a[0]["pending"] == 1
    assert (await reading.read(2000.0)) is not a  # done: the next scrape reads again
