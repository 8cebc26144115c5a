"""A receiver's Retry-After holds its channel past a kill -9: the next relay (or delivery worker)
starts with the hold, calls the receiver no sooner, and relay_channel_held says so; a channel
pointed at another receiver since starts afresh (relay.holds)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from relay.channels.webhook import WebhookSettings
from relay.holds import receiver_key
from tests.conftest import RelayProcess, Sink, status
from tests.test_durability import post_all
from tests.test_operations import CONFIG, run_with
from tests.test_workers import scraped

HELD = '{channel="hook"}'
TEXT = CONFIG.replace("max_attempts: 1", "max_attempts: 5")


async def retried(url: str) -> None:
    """Wait until relay recorded a retry of its one notification (the hold stored before)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            async with http.get(url + "/v1/notifications") as resp:
                found = (await resp.json())["notifications"]
            if found and found[0]["attempts"] == 1:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"no retry recorded: {found}")


async def held_after_start(proc: RelayProcess) -> float:
    """relay_channel_held of the channel once delivery runs (polled: up to ~5 s)."""
    for _ in range(100):
        value = (await scraped(proc.url, "relay_channel_held")).get(HELD, 0.0)
        if value == 1.0:
            break
        await asyncio.sleep(0.05)
    return value


async def kill_during_a_hold(proc: RelayProcess, sink: Sink) -> None:
    sink.responses = [status(429, {"Retry-After": "120"})]  # then 200
    await asyncio.to_thread(proc.start)
    await post_all(proc.url, [run_with("FAILED", "run_held_1")])
    await sink.wait_for(1)
    await retried(proc.url)
    proc.kill()


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_a_hold_outlives_a_kill(
    relay_process: Callable[..., RelayProcess], sink: Sink, workers: str
) -> None:
    """A 429 with Retry-After: 120, then kill -9: the next relay holds the channel at its start
    (gauge 1) and sends a new failure no sooner than the receiver asked; it called at once."""
    text = TEXT.format(url=sink.url, rule="failures", status="failure")
    proc = relay_process(text, {"RELAY_WORKERS": workers})
    await kill_during_a_hold(proc, sink)
    await asyncio.to_thread(proc.start)
    assert await held_after_start(proc) == 1.0
    await post_all(proc.url, [run_with("FAILED", "run_held_2")])
    await asyncio.sleep(1.0)  # unheld, the new one went out within milliseconds
    assert len(sink.received) == 1
    assert any(e.get("msg", "").startswith("channel held since before") for e in proc.logs)
    assert await asyncio.to_thread(proc.terminate) == 0


async def test_a_channel_pointed_elsewhere_starts_afresh(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """The stored hold names its receiver: restarted on another URL, nothing is held."""
    text = TEXT.format(url=sink.url, rule="failures", status="failure")
    proc = relay_process(text)
    await kill_during_a_hold(proc, sink)
    Path(proc.env["RELAY_CONFIG"]).write_text(text.replace("/hook", "/elsewhere"))
    await asyncio.to_thread(proc.start)
    await post_all(proc.url, [run_with("FAILED", "run_held_2")])
    received = await sink.wait_for(2)
    assert received[1].path == "/elsewhere"
    assert (await scraped(proc.url, "relay_channel_held"))[HELD] == 0.0
    assert await asyncio.to_thread(proc.terminate) == 0


def test_the_receiver_key_is_where_and_as_whom_not_how() -> None:
    """How relay sends (timeout, concurrency, rate limit) keeps the key; the URL or a secret
    changes it; the key shows neither."""
    base = {"type": "webhook", "url": "https://hooks.example/a", "secret": "s" * 32}
    key = receiver_key(WebhookSettings.model_validate(base))
    slower = WebhookSettings.model_validate({**base, "timeout": "30s", "concurrency": 2})
    assert receiver_key(slower) == key
    for changed in ({"url": "https://hooks.example/b"}, {"secret": "t" * 32}):
        assert receiver_key(WebhookSettings.model_validate({**base, **changed})) != key
    assert "hooks.example" not in key and "sss" not in key
