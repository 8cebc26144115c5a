"""A receiver's Retry-After holds its channel past a kill -9: the next relay (or delivery worker)
starts with the hold, calls the receiver no sooner, and relay_channel_held says so; a channel
pointed at another receiver since starts afresh (relay.holds)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from relay.channels._email_settings import EmailSettings
from relay.channels.webhook import WebhookSettings
from relay.holds import NAMESPACE, receiver_key
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, RelayProcess, Sink, status
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
    """The stored hold names its receiver: restarted on another URL, nothing is held, and the
    notification the old receiver put off for 120 s goes at once too (it waited that out)."""
    text = TEXT.format(url=sink.url, rule="failures", status="failure")
    proc = relay_process(text)
    await kill_during_a_hold(proc, sink)
    Path(proc.env["RELAY_CONFIG"]).write_text(text.replace("/hook", "/elsewhere"))
    await asyncio.to_thread(proc.start)
    await post_all(proc.url, [run_with("FAILED", "run_held_2")])
    received = await sink.wait_for(3)
    assert [got.path for got in received] == ["/hook", "/elsewhere", "/elsewhere"]
    assert {got.json()["run"]["id"] for got in received[1:]} == {"run_held_1", "run_held_2"}
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


def test_the_receiver_key_does_not_hang_on_the_order_settings_are_written_in() -> None:
    """The same headers written in another order (a config tidied up, a restart) are the same
    receiver: its stored hold still holds."""
    base = {"type": "webhook", "url": "https://hooks.example/a"}
    one = {**base, "headers": {"X-Team": "core", "X-Env": "prod"}}
    other = {**base, "headers": {"X-Env": "prod", "X-Team": "core"}}
    keys = {receiver_key(WebhookSettings.model_validate(raw)) for raw in (one, other)}
    assert len(keys) == 1


def test_an_email_channels_ca_file_is_part_of_its_receiver(tmp_path: Path) -> None:
    """A setting JSON has no form for (a path) is read as its text: the key of an email channel
    with a CA file is made, and another CA file is another receiver."""
    keys = []
    for name in ("a.pem", "b.pem"):
        trustme.CA().cert_pem.write_to_path(str(tmp_path / name))
        smtp = {"host": "smtp.example", "ca_file": str(tmp_path / name)}
        raw = {"type": "email", "smtp": smtp, "from": "r@example.com", "to": ["o@example.com"]}
        keys.append(receiver_key(EmailSettings.model_validate(raw)))
    assert keys[0] != keys[1]


FOUR = """\
defaults:
  retry: {{max_attempts: 5, max_age: 1h}}
channels:
  a_ended: {{type: webhook, url: "{url}/a_ended"}}
  b_unreadable: {{type: webhook, url: "{url}/b_unreadable"}}
  c_short: {{type: webhook, url: "{url}/c_short"}}
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [a_ended, b_unreadable, c_short, hook]
"""


async def test_stored_holds_ended_unreadable_short_and_long_are_each_read_as_they_are(
    relay: RelayFactory, sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Holds stored for four channels: one that has ended, one this version cannot read (its
    end no number), one for a second more, one for two minutes more. The first two send at
    once; the third once its second is over; the fourth is held (relay_channel_held 1) and
    sends nothing. One hold read past does not end the reading of the others, an unreadable
    one does not stop delivery from starting, and a hold ends when the receiver said."""
    caplog.set_level(logging.WARNING, logger="relay.delivery")
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    await store.open()
    now = time.time()
    ends = {"a_ended": now - 10, "b_unreadable": "soon", "c_short": now + 1, "hook": now + 120}
    for channel, until in ends.items():
        url = f"{sink.url}/{channel}"
        key = receiver_key(WebhookSettings.model_validate({"type": "webhook", "url": url}))
        await store.kv_put(NAMESPACE, channel, json.dumps({"until": until, "receiver": key}), now)
    await store.close()
    r = await relay(FOUR.format(url=sink.url), db=db)
    held = await scraped(r.url, "relay_channel_held")
    assert (held['{channel="a_ended"}'], held['{channel="c_short"}'], held[HELD]) == (0, 1, 1)
    assert (await r.post(run_with("FAILED", "run_held_3")))[0] == 202
    received = await sink.wait_for(3)
    assert sorted(got.path for got in received[:2]) == ["/a_ended", "/b_unreadable"]
    assert received[2].path == "/c_short"
    await asyncio.sleep(0.5)  # unheld, it went out with the others
    assert len(sink.received) == 3
    said = {rec.__dict__.get("channel"): rec.__dict__.get("hold_s", 0) for rec in caplog.records}
    assert 0 < said["hook"] <= 120
    restored = "channel held since before this start (the receiver's Retry-After)"
    held_since = sorted(rec.__dict__["channel"] for rec in caplog.records if rec.msg == restored)
    assert held_since == ["c_short", "hook"]  # neither the ended hold nor the unreadable one
