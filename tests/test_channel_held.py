"""relay_channel_held: a channel a receiver's Retry-After holds sends nothing and fails nothing
while the hold lasts, so no counter moves; the gauge says it, in-process and with --workers
(where the hold lives in the worker and the parent serves /metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.conftest import RelayProcess, Sink, sdk_run, status
from tests.test_durability import post_all
from tests.test_operations import CONFIG
from tests.test_workers import scraped

HELD = '{channel="hook"}'


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_a_retry_after_shows_the_channel_held_until_it_ends(
    relay_process: Callable[..., RelayProcess], sink: Sink, workers: str
) -> None:
    """A receiver answering 429 with Retry-After: 4: relay_channel_held of its channel is 0
    before, 1 while the hold lasts, 0 once it is over (the receiver answers 200 by then)."""
    text = CONFIG.format(url=sink.url, rule="failures", status="failure").replace(
        "max_attempts: 1", "max_attempts: 5"
    )
    proc = relay_process(text, {"RELAY_WORKERS": workers})
    await asyncio.to_thread(proc.start)
    assert await scraped(proc.url, "relay_channel_held") == {HELD: 0.0}
    sink.responses = [status(429, {"Retry-After": "4"})]  # then 200
    await post_all(proc.url, [sdk_run("failed")])
    seen: list[float] = []

    async def held() -> float:
        seen.append((await scraped(proc.url, "relay_channel_held"))[HELD])
        return seen[-1]

    for _ in range(600):
        if await held() == 1.0 or sink.received[1:]:
            break
        await asyncio.sleep(0.01)
    assert seen[-1] == 1.0, seen
    await sink.wait_for(2)  # the hold ended: sent
    for _ in range(600):
        if await held() == 0.0:
            break
        await asyncio.sleep(0.05)
    assert seen[-1] == 0.0
    assert await asyncio.to_thread(proc.terminate) == 0
