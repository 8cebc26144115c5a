"""Rate limits over time, on a virtual clock: 20 notifications through a channel limited to 2 a
second take 9.5 s (the first goes at once, each other one 0.5 s later), none is lost and they go
out once each — without the suite sleeping 10 seconds. Their order is not asserted: at a
concurrency above 1 a render slower than its on-loop budget (a loaded machine) finishes in the
channel's thread, and the next send may take the earlier slot.

The real pieces run: YAML config, rules, intake, the SQLite store, the delivery loop with its
token bucket and concurrency, templates, the console channel. Only time is virtual: intake and
delivery take the clock (`clock=`, `Deps.clock`/`Deps.sleep`), and the console's stdout is a
terminal that notes the virtual time of each line.
"""

from __future__ import annotations

import asyncio
import heapq
import io
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.channels import ChannelEnv
from relay.channels._http import HttpClient
from relay.channels.console import ConsoleSettings
from relay.config import RateLimit
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.delivery import Delivery
from relay.formats import parse_runs
from relay.intake import Intake
from relay.policy import QUICK_TRIES, TokenBucket
from relay.routes import route_for
from relay.store.sqlite import SQLiteStore
from tests.conftest import delivery_deps, sdk_run

START = 1_790_000_000.0
CONFIG = """\
channels:
  out:
    type: console
    rate_limit: {per_second: 2}
rules:
  - {name: failures, match: {status: [failure]}, notify: [out]}
"""


class VirtualClock:
    """A clock that moves only to the deadline of the earliest sleeper, one sleeper at a time.

    `sleep(s)` parks the caller until the clock reaches now + s. `run_until` lets the event loop
    settle (real I/O included: the store's thread) until every other task is parked, then wakes
    the earliest sleeper at its deadline, and so on; time never passes while nobody sleeps, nor
    while anybody works.
    """

    def __init__(self, start: float) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def run_until(self, done: Callable[[], bool], real_timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + real_timeout_s
        while not done():
            assert time.monotonic() < deadline, "the virtual clock ran out of real time"
            await asyncio.sleep(0.01)
            for _ in range(SETTLE_HOPS):  # a woken task's callbacks run their course first
                await asyncio.sleep(0)
            if self._sleepers and _all_parked():
                at, _, woken = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                woken.set_result(None)


# Where a task waits when only time (or a wake-up) moves it on: the clock's sleep, an event
# (delivery's idle wait), and the waits around them (3.11's wait_for, asyncio.wait)
PARKED = frozenset({"VirtualClock.sleep", "Event.wait", "wait_for", "_wait"})
# Loop turns given before looking: a sleeper woken last turn reaches its task through a few
# callbacks (its future, the sleep's task, asyncio.wait's waiter), each a turn of the loop
SETTLE_HOPS = 20


def _all_parked() -> bool:
    """Whether every other task waits for time or a wake-up: none is in the store's thread or
    rendering. The clock moved while a woken send was still rendering on a loaded machine, and
    its line showed the next slot's time (1.0, 2.0, 2.0 where 1.0, 1.5, 2.0 were sent)."""
    me = asyncio.current_task()
    return all(_innermost(task) in PARKED for task in asyncio.all_tasks() if task is not me)


def _innermost(task: asyncio.Task[Any]) -> str:
    """The qualified name of the coroutine `task` is suspended in, innermost."""
    coro: Any = task.get_coro()
    while getattr(getattr(coro, "cr_await", None), "cr_code", None) is not None:
        coro = coro.cr_await
    code = getattr(coro, "cr_code", None)
    return code.co_qualname if code is not None else ""


class Terminal(io.StringIO):
    """stdout that notes when (on the virtual clock) each message was printed."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.printed: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.printed.append((self.clock.now, text))
        return super().write(text)


async def deliver_on_virtual_time(
    tmp_path: Path, config: str, count: int
) -> tuple[list[tuple[float, str]], list[str], int]:
    """`count` failed runs, one by one, through channel `out` of `config` on a virtual clock:
    what was printed (virtual seconds since delivery began, text), the run ids, and how many
    the store counts as sent."""
    clock = VirtualClock(START)
    compiled = compile_config(parse_config(config, "c.yaml", {"console": ConsoleSettings}, {}))
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    intake = Intake(store, lambda: compiled.rules, lambda channel: None, clock=clock)
    runs = [{**sdk_run("failed"), "id": f"run_rate_{i:02d}"} for i in range(count)]
    for run in runs:  # one by one, as they would arrive
        assert (await intake.submit(parse_runs([run]))).notifications == 1
        clock.now += 0.001
    terminal = Terminal(clock)
    http = HttpClient()
    route = route_for(compiled, "out", ChannelEnv(http, terminal, 10.0, store))
    deps = delivery_deps(compiled, store, clock=clock, sleep=clock.sleep)
    delivery = Delivery(deps, {"out": route})
    began = clock.now
    delivery.start()
    try:
        await clock.run_until(lambda: len(terminal.printed) >= count)
        sent = await _wait_counted(store, "sent", count)
    finally:
        await delivery.stop(1.0)
        await http.close()
        await store.close()
    printed = [(t - began, text) for t, text in terminal.printed]
    return printed, [run["id"] for run in runs], sent


def run_ids(printed: list[tuple[float, str]]) -> list[str]:
    return [text.split(" · ")[2].split()[0] for _, text in printed]


async def test_twenty_notifications_at_two_a_second_take_ten_seconds(tmp_path: Path) -> None:
    printed, runs, sent = await deliver_on_virtual_time(tmp_path, CONFIG, 20)
    at = [t for t, _ in printed]
    # 2 a second, 9.5 s in all, on the virtual clock: had delivery waited on the real one, the
    # virtual clock (it moves only for its own sleepers) would show them all at once
    assert at == pytest.approx([0.5 * i for i in range(20)])
    assert sorted(run_ids(printed)) == runs  # none lost, none twice
    assert sent == 20


async def test_a_rate_slower_than_the_claim_lease_sends_each_notification_once(
    tmp_path: Path,
) -> None:
    """At one a minute, 16 deliveries in flight (the concurrency) would wait up to 15 minutes
    for their turn: a claim's lease (5 minutes) ran out meanwhile, the loop claimed them again
    and sent them twice. The loop now holds no more than the rate lets out within a lease."""
    config = CONFIG.replace("rate_limit: {per_second: 2}", "rate_limit: {per_minute: 1}")
    config = config.replace("    type: console\n", "    type: console\n    concurrency: 16\n")
    printed, runs, sent = await deliver_on_virtual_time(tmp_path, config, 20)
    assert sorted(run_ids(printed)) == runs  # none lost, none twice
    assert [t for t, _ in printed] == pytest.approx([60.0 * i for i in range(20)])
    assert sent == 20


def test_the_bucket_spaces_reservations_by_the_rate() -> None:
    bucket = TokenBucket(RateLimit(per_second=2))
    waits = [bucket.reserve(100.0) for _ in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]
    assert bucket.reserve(101.0) == 1.0  # a reservation made later lands on the next free slot
    burst = TokenBucket(RateLimit(per_minute=60, burst=3))
    assert [burst.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_the_bucket_takes_a_wall_clock_step_in_its_stride() -> None:
    """Delivery passes the wall clock. An NTP step back of an hour made the elapsed time -3600 s:
    the bucket fell 7200 tokens short and the channel sent nothing for an hour. A step back
    now adds no tokens and takes none; a step forward fills the bucket, never past its burst."""
    bucket = TokenBucket(RateLimit(per_second=2))
    assert [bucket.reserve(5000.0), bucket.reserve(5000.0)] == [0.0, 0.5]
    assert bucket.reserve(5000.0 - 3600) == 1.0  # the next free slot, as without the step
    assert [bucket.reserve(5000.0 + 3600) for _ in range(3)] == [0.0, 0.5, 1.0]


async def _wait_counted(store: SQLiteStore, state: str, count: int) -> int:
    for _ in range(1500):
        n = (await store.counts())[state]
        if n >= count:
            return n
        await asyncio.sleep(0.02)
    return (await store.counts())[state]


async def test_a_claim_outlasts_every_quick_try_of_a_slow_channel(tmp_path: Path) -> None:
    """A lease that ends while a try is still waiting for its answer lets the row be claimed and
    sent again: a channel's claims last at least its timeout for every quick try, twice over."""
    config = """\
channels:
  slow: {type: console, timeout: 3m}
  quick: {type: console}
rules:
  - {name: failures, match: {status: [failure]}, notify: [slow, quick]}
"""
    compiled = compile_config(parse_config(config, "c.yaml", {"console": ConsoleSettings}, {}))
    store = SQLiteStore(tmp_path / "relay.db")
    http = HttpClient()
    env = ChannelEnv(http, io.StringIO(), 10.0, store)
    routes = {name: route_for(compiled, name, env) for name in ("slow", "quick")}
    deps = delivery_deps(compiled, store)
    delivery = Delivery(deps, routes)
    try:
        assert routes["slow"].timeout_s == 180.0 and routes["quick"].timeout_s == 10.0
        assert delivery.loops["quick"].lease_s == deps.lease_s == 300.0
        assert delivery.loops["slow"].lease_s >= 2 * QUICK_TRIES * 180.0
    finally:
        await http.close()
