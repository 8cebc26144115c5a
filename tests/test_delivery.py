"""Delivery against a real loopback receiver: signing, retries, Retry-After, dead letters, isolation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import itertools
import logging
import os
import random
import resource
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import standardwebhooks
from aiohttp import web

from relay import __version__ as relay_version
from relay import channel_loop
from relay import delivery as relay_delivery
from relay.channel_loop import CLAIM_AHEAD
from relay.channels import ChannelEnv, Outgoing, settings_models
from relay.channels._http import HttpClient
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import DeliveryError
from relay.formats import parse_runs
from relay.intake import Intake
from relay.model import Notification, Run, notification_id
from relay.policy import Outage
from relay.routes import route_for
from relay.sending import Sender
from relay.store import HistoryQuery, Store
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, Sink, delivery_deps, hang, held, sdk_run, status
from tests.fakes.serving import free_port
from tests.test_workers import scraped

SECRET = "whsec_" + base64.b64encode(b"relay-test-signing-key-0123").decode()


def config(
    url: str,
    *,
    extra_channel: str = "",
    rule_notify: str = "[hook]",
    timeout: str = "2s",
    templates: str = "",
) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 4, max_age: 1h, min_backoff: 100ms, max_backoff: 400ms}}
  timeout: {timeout}
  project_ref: proj_test
{templates}
channels:
  hook:
    type: webhook
    url: {url}/hook
    headers: {{X-Team: core}}
    secret: {SECRET}
{extra_channel}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: {rule_notify}
"""


def failing_run(i: int = 0, **extra: Any) -> dict[str, Any]:
    run = sdk_run("failed")
    run["id"] = f"run_delivery_{i:04d}"
    run.update(extra)
    return run


def spin_config(url: str, tmp_path: Path, status: str = "failure") -> str:
    """Channel `hook` renders a template that runs out of its time budget for runs of
    `status` (rule `spinning`); every failure also goes to channel `fast`."""
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    (tmp_path / "tpl" / "webhook" / "spin.json.j2").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{}"
    )
    spin = f"""\
  - name: spinning
    match: {{status: [{status}]}}
    notify: [hook]
    template: spin
    continue: true
"""
    return config(
        url,
        extra_channel=f"  fast:\n    type: webhook\n    url: {url}/fast\n",
        rule_notify="[fast]",
        templates=f"templates: {{dir: {tmp_path / 'tpl'}}}",
    ).replace("rules:\n", "rules:\n" + spin)


async def wait_state(r: Any, state: str, count: int = 1, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        counts = await r.service.store.counts()
        if counts[state] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {count} {state}: {await r.service.store.counts()}")


async def test_webhook_is_signed_and_carries_the_stable_id(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink.url))
    assert (await r.post(failing_run()))[0] == 202
    [got] = await sink.wait_for(1)
    payload = standardwebhooks.Webhook(SECRET).verify(got.body, got.headers)
    assert payload["run"]["id"] == "run_delivery_0000"
    assert payload["rule"] == "failures"
    assert got.headers["webhook-id"].startswith("ntf_")
    assert got.headers["X-Team"] == "core"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == f"relay/{relay_version}"
    assert (
        payload["dashboardUrl"]
        == "https://cloud.trigger.dev/projects/v3/proj_test/runs/run_delivery_0000"
    )
    await wait_state(r, "sent")


async def test_sends_that_went_well_leave_no_error_line(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """A send that ended as it should (sent) is no "delivery failed unexpectedly": that line,
    with its release of the rows after a lease, is for a send that raised past every handler.
    The first send's end is over by the time the second is sent. A send that went at its first
    try tells no failed tries."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    r = await relay(config(sink.url))
    for i in range(2):
        await r.post(failing_run(i))
        await wait_state(r, "sent", i + 1)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert errors == []
    sent = [rec for rec in caplog.records if rec.getMessage() == "notification sent"]
    assert len(sent) == 2 and not any(hasattr(rec, "failed_tries") for rec in sent)


async def test_a_list_of_secrets_signs_with_each_for_a_rotation(
    relay: RelayFactory, sink: Sink
) -> None:
    """Standard Webhooks rotation: one `v1,` signature per secret, space-separated, so a
    receiver verifies with the old secret or the new one while it switches over."""
    new = "whsec_" + base64.b64encode(b"relay-next-signing-key-4567").decode()
    r = await relay(config(sink.url).replace(f"secret: {SECRET}", f"secret: [{SECRET}, {new}]"))
    assert (await r.post(failing_run()))[0] == 202
    [got] = await sink.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, new):
        payload = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
        assert payload["run"]["id"] == "run_delivery_0000"
    await wait_state(r, "sent")


async def test_retry_after_on_429_is_honoured(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [status(429, {"Retry-After": "1"})]
    r = await relay(config(sink.url))
    await r.post(failing_run())
    first, second = await sink.wait_for(2)
    assert second.at - first.at >= 1.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    await wait_state(r, "sent")
    assert len(sink.received) == 2


async def test_long_retry_after_goes_back_to_the_outbox(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [status(503, {"Retry-After": "600"})]
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await sink.wait_for(1)
    row = await wait_reason(r, "run_delivery_0000")
    assert row.reason == "server_error" and row.attempts == 1
    assert row.not_before - row.created_at >= 599
    assert len(sink.received) == 1


async def test_a_retry_after_as_an_http_date_holds_until_that_date(
    relay: RelayFactory, sink: Sink
) -> None:
    """RFC 9110's other Retry-After form, the date (`Retry-After: Wed, 21 Oct 2026 07:28:00
    GMT`), from a real receiver: the notification is retried at that date, not sooner, not at
    its backoff. The date forms were tested on the parser alone, given the time; at a send
    the parser reads the clock itself."""
    when = float(int(time.time()) + 600)
    sink.responses = [status(429, {"Retry-After": formatdate(when, usegmt=True)})]
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await sink.wait_for(1)
    row = await wait_reason(r, "run_delivery_0000")
    assert (row.reason, row.attempts) == ("rate_limited", 1)
    assert row.not_before == pytest.approx(when, abs=1.0)
    assert len(sink.received) == 1


def hook_channel(url: str, name: str, concurrency: int) -> str:
    return f"  {name}:\n    type: webhook\n    url: {url}/{name}\n    concurrency: {concurrency}\n"


async def test_a_retry_after_holds_the_whole_channel_not_just_its_message(
    relay: RelayFactory, sink: Sink
) -> None:
    """Slack's (Discord's, Teams', GitHub's) Retry-After means no call before then, for the
    whole app or webhook: the other notifications queued for that channel went 0.5 s after a
    429 with `Retry-After: 7` (each refused too in a storm, spending its attempts). Now they
    wait out the hold as the one refused does, with no attempt counted for the wait."""
    sink.responses = [status(429, {"Retry-After": "2"})]
    cfg = config(sink.url).replace("    secret:", "    concurrency: 1\n    secret:")
    r = await relay(cfg)
    await r.post([failing_run(i) for i in range(3)])
    await wait_state(r, "sent", 3)
    first, *rest = sink.received
    assert first.path == "/hook" and len(rest) == 3  # the one refused went again, once
    assert all(got.at - first.at >= 2.0 for got in rest)  # a lower bound only
    attempts = sorted(
        [(await r.service.store.get(got.headers["webhook-id"])) for got in rest],
        key=lambda row: row.attempts if row else 0,
    )
    assert [row.attempts if row else None for row in attempts] == [1, 1, 2]


async def test_a_429_without_retry_after_backs_off_that_message_alone(
    relay: RelayFactory, sink: Sink
) -> None:
    """A 429 that names no wait is no blip (no quick retry spending attempts at once) and no
    hold: that notification goes back to the outbox with the backoff; its channel sends on."""
    sink.responses = [status(429)]
    cfg = config(sink.url).replace("min_backoff: 100ms, max_backoff: 400ms", "min_backoff: 2s")
    r = await relay(cfg)
    await r.post(failing_run(0))
    refused = await wait_reason(r, "run_delivery_0000")  # due in 1-2 s: the backoff's
    assert (refused.state, refused.reason, refused.attempts) == ("pending", "rate_limited", 1)
    assert len(sink.received) == 1
    await r.post([failing_run(i) for i in range(1, 3)])
    await wait_state(r, "sent", 3)
    rows = [await r.service.store.get(got.headers["webhook-id"]) for got in sink.received]
    assert len(rows) == 4 and sorted(row.attempts if row else 0 for row in rows[1:]) == [1, 1, 2]


async def test_a_receiver_back_from_an_outage_gets_its_backlog_now_oldest_first(
    relay: RelayFactory, sink: Sink
) -> None:
    """Each notification a receiver's outage failed waited out its own backoff, up to
    max_backoff (10 minutes), after the receiver came back: the backlog trickled in over that
    long, in random order, while new ones went at once. The send that ends an outage (two
    notifications failed in a row) makes them due now: they go next, oldest first."""
    sink.responses = [status(503)] * 6  # the quick tries of two notifications
    slow = config(sink.url).replace("min_backoff: 100ms, max_backoff: 400ms", "min_backoff: 10m")
    slow = slow.replace("max_attempts: 4", "max_attempts: 12")  # 3 quick tries (a quarter)
    r = await relay(slow.replace("    secret:", "    concurrency: 1\n    secret:"))
    for i in range(2):
        await r.post(failing_run(i))
        assert (await wait_reason(r, f"run_delivery_{i:04d}")).attempts == 3  # due in 5-10 min
    await r.post(failing_run(2))
    await wait_state(r, "sent", 3)
    runs = [got.json()["run"]["id"] for got in sink.received[6:]]
    assert runs == ["run_delivery_0002", "run_delivery_0000", "run_delivery_0001"]


def test_an_outage_is_notifications_failing_as_a_receiver_down_makes_them() -> None:
    """Only failures that say the receiver is down (503, a timeout), of two notifications
    or more, make an outage: one alone, or a 500, may be the message's own problem."""
    down = DeliveryError("server_error", retryable=True, status=503)
    choked = DeliveryError("server_error", retryable=True, status=500)
    outage = Outage()
    for error in (down, down):
        outage.failed("ntf_a", error)
    assert not outage.ended()
    for ident in ("ntf_a", "ntf_b"):
        outage.failed(ident, choked)
    assert not outage.ended()
    outage.failed("ntf_a", DeliveryError("timeout", retryable=True))
    outage.failed("ntf_b", down)
    assert outage.ended()
    assert not outage.ended()  # a success ends it


async def test_a_held_channel_keeps_its_queue_and_delays_no_other_channel(
    relay: RelayFactory, sink: Sink
) -> None:
    """While one channel waits out a 10-minute Retry-After, another is served; the held
    channel's queue stays in the outbox, unclaimed, with no attempt counted."""
    refuse = status(429, {"Retry-After": "600"})

    async def route(request: Any, index: int) -> Any:  # the first request to /hook is refused
        first = [got.path for got in sink.received].count("/hook") == 1
        return await (refuse if request.path == "/hook" and first else ok)(request, index)

    ok, sink.default = status(200), route
    extra = hook_channel(sink.url, "fast", 4)
    cfg = config(sink.url, extra_channel=extra, rule_notify="[hook, fast]")
    r = await relay(cfg.replace("    secret:", "    concurrency: 1\n    secret:"))
    await r.post(failing_run(0))
    await wait_reason(r, "run_delivery_0000")
    await r.post([failing_run(i) for i in range(1, 6)])
    await wait_state(r, "sent", 6)  # every fast one (the first one's too)
    assert [got.path for got in sink.received].count("/hook") == 1
    for i in range(1, 6):
        row = await r.service.store.get(
            notification_id(f"run_delivery_{i:04d}", "failures", "hook")
        )
        assert row is not None and row.state == "pending" and row.attempts == 0


async def reload_with(r: Any, text: str) -> None:
    """Rewrite the running config file and reload it, as a SIGHUP does."""
    Path(r.service.compiled.loaded.source.filename).write_text(text)
    assert await r.service.reload("SIGHUP") is True


async def test_a_reload_keeps_the_hold_of_a_channel_whose_receiver_is_the_same(
    relay: RelayFactory, sink: Sink
) -> None:
    """A reload rebuilt every channel and forgot the hold: inside a `Retry-After: 2`, a reload
    (here one that changes only the channel's concurrency) let the next notification go to the
    receiver at once. The same receiver keeps its hold through the reload."""
    sink.responses = [status(429, {"Retry-After": "2"})]
    cfg = config(sink.url)
    r = await relay(cfg.replace("    secret:", "    concurrency: 1\n    secret:"))
    await r.post(failing_run(0))
    await wait_reason(r, "run_delivery_0000")
    await reload_with(r, cfg.replace("    secret:", "    concurrency: 2\n    secret:"))
    await r.post(failing_run(1))
    await wait_state(r, "sent", 2)
    first, *rest = sink.received
    assert len(rest) == 2 and all(got.at - first.at >= 2.0 for got in rest)  # a lower bound


async def test_a_reload_keeps_the_concurrency_while_the_old_channel_finishes_its_send(
    relay: RelayFactory, sink: Sink
) -> None:
    """A reload starts the new channel at once, beside the old one finishing its sends: with
    `concurrency: 1`, the new one sent the two waiting notifications while the old one's send
    was still on the wire (a config file rewritten unchanged did it too, as the file watcher
    reloads on a new mtime). The receiver's sends in flight count for both."""
    gate = asyncio.Event()
    sink.responses = [held(gate)]
    cfg = config(sink.url, timeout="30s").replace("    secret:", "    concurrency: 1\n    secret:")
    r = await relay(cfg)
    for i in range(3):
        await r.post(failing_run(i))
    await sink.wait_for(1)
    reloading = asyncio.ensure_future(reload_with(r, cfg.replace("rules:", "# again\nrules:")))
    await asyncio.sleep(0.5)  # the new channel loop runs meanwhile (the reload waits on the old)
    assert len(sink.received) == 1
    gate.set()
    await reloading
    await wait_state(r, "sent", 3)
    first, *rest = sink.received
    assert len(rest) == 2 and all(got.at >= first.at for got in rest)


async def test_a_reload_to_another_receiver_drops_the_hold(relay: RelayFactory, sink: Sink) -> None:
    """The hold is the receiver's: a channel pointed elsewhere by a reload sends at once, what
    the old receiver put off too (the notification it answered 429, and one given back to the
    outbox when the hold began: both waited out the old Retry-After), and relay_channel_held
    says 0 (it said 1 until the old hold's end)."""
    sink.responses = [status(429, {"Retry-After": "600"})]
    cfg = config(sink.url).replace("    secret:", "    concurrency: 1\n    secret:")
    r = await relay(cfg)
    await r.post([failing_run(0), failing_run(1)])  # the second claimed, waiting its turn
    await wait_reason(r, "run_delivery_0000")
    await wait_put_off(r, notification_id("run_delivery_0001", "failures", "hook"))
    assert await scraped(r.url, "relay_channel_held") == {'{channel="hook"}': 1.0}
    await reload_with(r, cfg.replace(f"url: {sink.url}/hook", f"url: {sink.url}/moved"))
    await r.post(failing_run(2))
    await wait_state(r, "sent", 3)
    assert [got.path for got in sink.received] == ["/hook", *["/moved"] * 3]
    assert await scraped(r.url, "relay_channel_held") == {'{channel="hook"}': 0.0}


async def wait_put_off(r: Any, ident: str) -> None:
    """Until notification `ident` is back in the outbox, due in more than a minute."""
    for _ in range(600):
        row = await r.service.store.get(ident)
        if row is not None and row.not_before > time.time() + 60:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not put off: {row}")


async def test_a_reload_keeps_the_rate_limit_of_a_channel_whose_limit_is_the_same(
    relay: RelayFactory, sink: Sink
) -> None:
    """A reload started the token bucket full again: a channel allowed one request every 4 s
    made two within a second when a reload came between them."""
    cfg = config(sink.url).replace(
        "    secret:", "    rate_limit: {per_second: 0.25, burst: 1}\n    secret:"
    )
    r = await relay(cfg)
    await r.post(failing_run(0))
    await wait_state(r, "sent")
    await reload_with(r, cfg.replace("rules:", "# reloaded\nrules:"))
    await r.post(failing_run(1))
    await wait_state(r, "sent", 2)
    first, second = sink.received
    assert second.at - first.at >= 3.0  # a lower bound: 4 s less the first request's way in


async def test_a_send_under_way_when_the_hold_began_makes_no_request_inside_it(
    sink: Sink,
) -> None:
    """A send already started when another one's 429 held the channel (waiting for the rate
    limit's token, or between quick retries) makes no request inside the hold either: it
    comes back unsent, no try counted, with the time the hold lasts still."""
    sink.responses = [status(429, {"Retry-After": "60"})]
    compiled = compile_config(parse_config(config(sink.url), "c.yaml", settings_models(), {}))
    http = HttpClient()
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0))
    sender = Sender(
        "hook", route, clock=time.time, sleep=asyncio.sleep, rng=random.Random(0), max_attempts=4
    )
    message = Outgoing("ntf_a", "run_a", "failures", {"json": "{}"}, time.time())
    try:
        refused = await sender.attempt(message, 0)
        under_way = await sender.attempt(replace(message, notification_id="ntf_b"), 0)
    finally:
        await http.close()
    assert refused.error is not None and refused.error.reason == "rate_limited"
    assert under_way.tries == 0 and under_way.error is None and len(sink.received) == 1
    assert under_way.held_s is not None and 0 < under_way.held_s <= 60


async def test_a_send_caught_by_the_hold_gives_its_rate_limit_token_back(sink: Sink) -> None:
    """Sends under way when the hold began each took a token of the rate limit and made no
    request: the tokens were lost, and after the hold the channel ran slower than its
    `rate_limit` (here the next send waited 9 s for a token of a burst of 3 never used)."""
    cfg = config(sink.url).replace(
        "    secret:", "    rate_limit: {per_minute: 6, burst: 3}\n    secret:"
    )
    compiled = compile_config(parse_config(cfg, "c.yaml", settings_models(), {}))
    http = HttpClient()
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0))
    now, waits = [1000.0], []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    sender = Sender(
        "hook", route, clock=lambda: now[0], sleep=sleep, rng=random.Random(0), max_attempts=4
    )
    message = Outgoing("ntf_a", "run_a", "failures", {"json": "{}"}, now[0])
    route.hold.extend(now[0], 1.0)
    try:
        held = [await sender.attempt(message, 0) for _ in range(3)]
        now[0] += 1.0  # the hold is over
        sent = await sender.attempt(message, 0)
    finally:
        await http.close()
    assert [tried.tries for tried in held] == [0, 0, 0] and len(sink.received) == 1
    assert sent.tries == 1 and sent.error is None and waits == []


async def test_notifications_held_past_max_age_are_dead_not_sent_late(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a failed try checked max_age: the one a 429 refused died, while those its
    Retry-After held went out after it, older than max_age. They are dead at their turn, and
    each is said as dead, with why."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    sink.responses = [status(429, {"Retry-After": "2"})]
    cfg = config(sink.url).replace("max_age: 1h", "max_age: 1s")
    r = await relay(cfg.replace("    secret:", "    concurrency: 1\n    secret:"))
    await r.post([failing_run(i) for i in range(3)])
    await wait_state(r, "dead", 3)
    assert len(sink.received) == 1
    for _ in range(600):  # the line follows the row's mark
        dead = [rec for rec in caplog.records if rec.getMessage() == "notification dead"]
        if len(dead) >= 3:
            break
        await asyncio.sleep(0.05)
    assert sorted((rec.reason, rec.attempts, rec.why) for rec in dead) == [  # type: ignore[attr-defined]
        ("other", 0, "too old"),
        ("other", 0, "too old"),
        ("rate_limited", 1, "Retry-After 2s is past max_age"),
    ]
    rows = [
        await r.service.store.get(notification_id(f"run_delivery_{i:04d}", "failures", "hook"))
        for i in range(3)
    ]
    assert sorted((row.reason, row.attempts) for row in rows if row) == [
        ("other", 0),
        ("other", 0),
        ("rate_limited", 1),
    ]
    async with r.http.post(r.url + "/v1/dlq/replay") as resp:
        assert (await resp.json())["replayed"] == 3
    await wait_state(r, "sent", 3)  # replayed past max_age: each gets its round all the same


async def test_a_replay_held_past_max_age_is_dead_at_its_turn_not_sent_late(
    relay: RelayFactory, sink: Sink
) -> None:
    """A replayed notification gets its round within max_age of the replay, not whenever its
    turn comes: replayed while another's Retry-After holds the channel longer than max_age,
    it is dead at the hold's end ("too old"), as a notification never replayed would be."""
    sink.responses = [status(400), status(429, {"Retry-After": "3"})]
    r = await relay(config(sink.url).replace("max_age: 1h", "max_age: 1s"))
    replayed = notification_id("run_delivery_0000", "failures", "hook")
    await r.post(failing_run(0))
    await wait_state(r, "dead")  # the 400: dead at once
    await r.post(failing_run(1))
    await wait_state(r, "dead", 2)  # its 429's wait is past max_age: dead, the channel held 3 s
    async with r.http.post(r.url + f"/v1/dlq/{replayed}/replay") as resp:
        assert (await resp.json())["replayed"] == 1
    deadline = time.monotonic() + 60
    while (await r.service.store.counts())["dead"] < 2 and len(sink.received) == 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    row = await r.service.store.get(replayed)
    assert len(sink.received) == 2 and row is not None and row.state == "dead"
    assert row.last_error == "other: not sent within max_age"


async def test_a_retry_after_past_max_age_is_dead_at_once_and_says_so(
    relay: RelayFactory, sink: Sink
) -> None:
    """A receiver asking for a day's pause when max_age is 1h: waiting would outlive the
    notification's budget and retrying sooner would ignore the receiver, so it is dead now,
    kept for replay, and the dead letter names the cause instead of calling it too old."""
    sink.responses = [status(429, {"Retry-After": "86400"})]
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await wait_state(r, "dead")
    [dead] = await r.service.store.dead_letters()
    assert dead.reason == "rate_limited" and dead.attempts == 1 and len(sink.received) == 1
    assert "Retry-After 86400s is past max_age" in (dead.last_error or "")


async def test_503_is_retried_then_delivered_once(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [status(503)] * 3  # as many as the quick retries: the outbox retries too
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await wait_state(r, "sent")
    ids = {got.headers["webhook-id"] for got in sink.received}
    assert len(sink.received) == 4 and len(ids) == 1


async def test_400_is_dead_then_replay_delivers(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.http")
    sink.responses = [status(400, text="bad payload")]
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await wait_state(r, "dead")
    assert len(sink.received) == 1  # permanent: no retry
    async with r.http.get(r.url + "/v1/dlq") as resp:
        [dead] = (await resp.json())["dead"]
    assert dead["reason"] == "client_error" and dead["run_id"] == "run_delivery_0000"
    assert dead["channel"] == "hook" and "HTTP 400" in dead["error"]
    async with r.http.post(r.url + f"/v1/dlq/{dead['id']}/replay") as resp:
        assert resp.status == 200 and (await resp.json())["replayed"] == 1
    await sink.wait_for(2)
    await wait_state(r, "sent")
    assert sink.received[1].headers["webhook-id"] == dead["id"]
    async with r.http.post(r.url + "/v1/dlq/ntf_unknown/replay") as resp:
        assert resp.status == 404
    said = [(rec.getMessage(), rec.__dict__.get("notification_id")) for rec in caplog.records]
    assert said.count(("dead notification replayed", dead["id"])) == 1
    [line] = [rec for rec in caplog.records if rec.getMessage() == "dead notification replayed"]
    about = {k: line.__dict__.get(k) for k in ("run_id", "rule", "channel")}  # SPEC §6
    assert about == {"run_id": "run_delivery_0000", "rule": "failures", "channel": "hook"}


async def test_attempts_exhausted_is_dead_and_replay_all(relay: RelayFactory, sink: Sink) -> None:
    sink.default = status(500)
    r = await relay(config(sink.url))
    await r.post([failing_run(1), failing_run(2)])
    await wait_state(r, "dead", 2)
    async with r.http.get(r.url + "/v1/dlq") as resp:
        dead = (await resp.json())["dead"]
    assert {d["reason"] for d in dead} == {"server_error"}
    assert all(d["attempts"] == 4 and "attempts exhausted" in d["error"] for d in dead)
    sink.default = None
    async with r.http.post(r.url + "/v1/dlq/replay") as resp:
        assert (await resp.json())["replayed"] == 2
    await wait_state(r, "sent", 2)


async def test_quick_tries_are_the_first_rounds_alone(relay: RelayFactory, sink: Sink) -> None:
    """A receiver down: three quick tries on the first round, then one try a round. Three a
    round spent `max_attempts` four times as fast as the backoff meant: with the defaults a
    Slack outage of ~4 minutes made every notification it held dead."""
    sink.responses = [status(503)] * 5  # the first round's three tries, then two rounds'
    r = await relay(config(sink.url).replace("max_attempts: 4", "max_attempts: 12"))
    await r.post(failing_run())
    await wait_state(r, "sent")
    ident = notification_id("run_delivery_0000", "failures", "hook")
    async with r.http.get(r.url + f"/v1/notifications/{ident}") as resp:
        events = [(e["kind"], e["attempts"]) for e in (await resp.json())["events"]]
    assert events == [("created", 0), ("retry", 3), ("retry", 4), ("retry", 5), ("sent", 6)]
    assert len(sink.received) == 6


@pytest.mark.parametrize(
    ("max_attempts", "refusals", "events"),
    [
        # a first round of one try (a 429: no quick tries) is a first round all the same
        (12, [429, 503, 503], [("retry", 1), ("retry", 2), ("retry", 3), ("sent", 4)]),
        (6, [503], [("retry", 1), ("sent", 2)]),  # a quarter of 6 is one try
        (11, [503] * 3, [("retry", 2), ("retry", 3), ("sent", 4)]),  # of 11, two
    ],
)
async def test_quick_tries_are_a_quarter_of_max_attempts_on_the_first_round_alone(
    relay: RelayFactory, sink: Sink, max_attempts: int, refusals: list[int], events: list[Any]
) -> None:
    """The rounds after the first are one try each, also when the first was a single try; the
    first round's quick tries are a quarter of `max_attempts`, rounded down (one at the least).
    The notification's events say each round: `retry` with the attempts spent by then."""
    sink.responses = [status(code) for code in refusals]
    text = config(sink.url).replace("max_attempts: 4", f"max_attempts: {max_attempts}")
    r = await relay(text)
    await r.post(failing_run())
    await wait_state(r, "sent")
    ident = notification_id("run_delivery_0000", "failures", "hook")
    async with r.http.get(r.url + f"/v1/notifications/{ident}") as resp:
        got = [(e["kind"], e["attempts"]) for e in (await resp.json())["events"]]
    assert got == [("created", 0), *events]
    assert len(sink.received) == len(refusals) + 1


async def test_few_attempts_are_not_spent_at_once_on_a_receiver_restarting(
    relay: RelayFactory, sink: Sink
) -> None:
    """`max_attempts: 3` went in three quick tries within 0.3 s: a receiver restarting for
    under a second made the notification dead, its backoff (min_backoff 1s) never waited.
    Quick tries take at most a quarter of max_attempts now, so three attempts are three
    rounds of the backoff, and the second (after 0.5-1 s) finds the receiver back."""
    first: list[float] = []

    async def restarting(request: web.Request, index: int) -> web.StreamResponse:
        first.append(first[0] if first else time.monotonic())
        return web.Response(status=503 if time.monotonic() - first[0] < 0.4 else 200)

    sink.default = restarting
    text = config(sink.url).replace(
        "max_attempts: 4, max_age: 1h, min_backoff: 100ms, max_backoff: 400ms", "max_attempts: 3"
    )
    r = await relay(text)
    await r.post(failing_run())
    await wait_state(r, "sent")
    assert len(sink.received) == 2


async def test_replay_over_http_takes_the_ids_a_body_names(relay: RelayFactory, sink: Sink) -> None:
    """`relay dlq replay ID|--all` over HTTP: a body naming ids replays those alone (it used to
    replay every dead notification), `{"all": true}` all of them, a bad body is a 400."""
    sink.default = status(400)
    r = await relay(config(sink.url))
    await r.post([failing_run(1), failing_run(2), failing_run(3)])
    await wait_state(r, "dead", 3)
    async with r.http.get(r.url + "/v1/dlq") as resp:
        ids = sorted(d["id"] for d in (await resp.json())["dead"])
    sink.default = None
    replay = r.url + "/v1/dlq/replay"
    async with r.http.post(replay, json={"ids": [ids[0]]}) as resp:
        assert resp.status == 200 and await resp.json() == {"replayed": 1}
    async with r.http.post(replay, json={"id": ids[1]}) as resp:
        assert resp.status == 200 and await resp.json() == {"replayed": 1}
    await wait_state(r, "sent", 2)
    assert (await r.service.store.counts())["dead"] == 1
    refused: list[tuple[object, int, str]] = [
        ({"id": "ntf_unknown"}, 404, "id"),
        ({"idz": [ids[2]]}, 400, "idz"),
    ]  # a 400 always names its field: "" for the body as a whole
    refused += [({"ids": "x"}, 400, "ids"), ({"all": False}, 400, "all"), ([ids[2]], 400, "")]
    for body, code, field in refused:
        async with r.http.post(replay, json=body) as resp:
            assert resp.status == code and (await resp.json()).get("field") == field, body
    assert (await r.service.store.counts())["dead"] == 1
    async with r.http.post(replay, json={"all": True}) as resp:
        assert await resp.json() == {"replayed": 1}
    await wait_state(r, "sent", 3)


async def test_401_is_a_permanent_auth_error(relay: RelayFactory, sink: Sink) -> None:
    sink.default = status(401)
    r = await relay(config(sink.url))
    await r.post(failing_run())
    await wait_state(r, "dead")
    [dead] = await r.service.store.dead_letters()
    assert dead.reason == "auth_error" and len(sink.received) == 1


async def test_timeout_is_retried(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [hang(30)]  # far past the timeout, itself long enough for the answer after
    r = await relay(config(sink.url, timeout="1s"))
    await r.post(failing_run())
    await wait_state(r, "sent")
    assert len(sink.received) == 2


async def wait_reason(r: Any, run_id: str, channel: str = "hook") -> Notification:
    """The notification (of rule `failures`) once a failed attempt was recorded on it."""
    ident = notification_id(run_id, "failures", channel)
    for _ in range(600):
        row = await r.service.store.get(ident)
        if row is not None and row.reason is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("no failure was recorded")


async def test_refused_connection_is_retried_with_reason_network(relay: RelayFactory) -> None:
    text = config(f"http://127.0.0.1:{free_port()}").replace("max_attempts: 4", "max_attempts: 12")
    r = await relay(text)
    await r.post(failing_run())
    row = await wait_reason(r, "run_delivery_0000")
    assert row.reason == "network" and row.attempts == 3  # three quick tries, then the outbox


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Every file descriptor of this process in use (as relay under `ulimit -n` with many
    clients and channels), the soft limit a few above those open now; put back on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    held: list[int] = []
    try:
        for _ in range(64):  # bounded: 8 left, and the listing's own descriptor
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_no_descriptor_to_connect_spends_no_attempt(relay: RelayFactory, sink: Sink) -> None:
    """With every descriptor in use, each send failed before a connection was made, and each
    counted as an attempt: notifications went dead (attempts exhausted) without their
    receiver ever being asked. Relay's own failure now spends none; once descriptors are
    free again the notification goes, on its first attempt."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    r = await relay(config(sink.url).replace("max_attempts: 4", "max_attempts: 2"))
    async with r.http.get(r.url + "/healthz") as resp:  # the post below reuses this connection
        assert resp.status == 200
    run = failing_run()  # read from its file before
    with no_descriptor_left():
        status, _ = await r.post(run)
        row = await wait_reason(r, "run_delivery_0000")
    assert status == 202
    assert (row.state, row.attempts, row.reason) == ("pending", 0, "network"), row.last_error
    assert "EMFILE" in (row.last_error or "")
    await wait_state(r, "sent")
    sent = await r.service.store.get(row.id)
    assert sent is not None and sent.attempts == 1
    assert len(sink.received) == 1


async def test_a_channel_that_always_times_out_does_not_delay_another(
    relay: RelayFactory, sink: Sink
) -> None:
    fast_channel = f"""\
  fast:
    type: webhook
    url: {sink.url}/fast
"""
    sink.default = None

    async def route(request: Any, index: int) -> Any:
        if request.path == "/hook":
            return await hang(120)(request, index)
        return await status(200)(request, index)

    sink.default = route
    r = await relay(
        config(sink.url, extra_channel=fast_channel, rule_notify="[hook, fast]", timeout="60s")
    )
    await r.post([failing_run(i) for i in range(20)])
    # every fast delivery lands while the slow channel's first attempts are still hanging (60 s)
    for _ in range(600):
        if sum(1 for got in sink.received if got.path == "/fast") == 20:
            break
        await asyncio.sleep(0.05)
    fast = [got for got in sink.received if got.path == "/fast"]
    assert len(fast) == 20


async def test_hung_channels_at_full_concurrency_do_not_starve_another(
    relay: RelayFactory, sink: Sink
) -> None:
    """Every HTTP channel shares one connection pool: its size must not let the connections a
    hung receiver holds (up to each channel's `concurrency`) keep another channel waiting."""
    fast_channel = f"""\
  fast:
    type: webhook
    url: {sink.url}/fast
"""

    async def route(request: Any, index: int) -> Any:
        if request.path == "/hook":
            return await hang(120)(request, index)
        return await status(200)(request, index)

    sink.default = route
    text = config(sink.url, extra_channel=fast_channel, rule_notify="[hook, fast]", timeout="60s")
    r = await relay(text.replace("    secret:", "    concurrency: 256\n    secret:"))
    await r.post([failing_run(i) for i in range(260)])
    for _ in range(600):
        if sum(1 for got in sink.received if got.path == "/hook") >= 256:
            break
        await asyncio.sleep(0.05)
    await r.post(failing_run(1000))
    for _ in range(600):  # up to 30 s: the hung sends hold their connections for 60 s
        if any(
            got.path == "/fast" and got.json()["run"]["id"].endswith("1000")
            for got in sink.received
        ):
            break
        await asyncio.sleep(0.05)
    fast = {got.json()["run"]["id"] for got in sink.received if got.path == "/fast"}
    assert "run_delivery_1000" in fast


async def test_broken_template_still_sends_a_fallback(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    (tmp_path / "tpl" / "webhook" / "run.json.j2").write_text('{"x": {{ run.id | nosuchfilter }}}')
    # a filter that does not exist is caught by `relay check`; a runtime failure is not:
    (tmp_path / "tpl" / "webhook" / "run.json.j2").write_text(
        '{"x": {{ run.error.message.nope() }}}'
    )
    r = await relay(config(sink.url, templates=f"templates: {{dir: {tmp_path / 'tpl'}}}"))
    await r.post(failing_run())
    [got] = await sink.wait_for(1)
    body = got.json()
    assert body["run"]["id"] == "run_delivery_0000" and "FAILED" in body["text"]
    await wait_state(r, "sent")


async def test_dashboard_links_are_urls_whatever_the_run_id(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    (tmp_path / "tpl" / "webhook" / "run.json.j2").write_text(
        '{"var": {{ dashboard_url|tojson }}, "filter": {{ run|dashboard_url|tojson }},'
        ' "none": {{ "not a run"|dashboard_url|tojson }}}'
    )
    r = await relay(config(sink.url, templates=f"templates: {{dir: {tmp_path / 'tpl'}}}"))
    await r.post(failing_run(id="run_a b<!here>/x"))
    [got] = await sink.wait_for(1)
    link = "https://cloud.trigger.dev/projects/v3/proj_test/runs/run_a%20b%3C%21here%3E%2Fx"
    assert got.json() == {"var": link, "filter": link, "none": None}


async def test_an_endless_template_is_stopped_and_others_carry_on(
    relay: RelayFactory, sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = await relay(spin_config(sink.url, tmp_path))
    await r.post(failing_run())
    got = {g.path: g.json() for g in await sink.wait_for(2)}
    assert got["/fast"]["type"] == "run.alert"
    assert got["/hook"]["run"]["id"] == "run_delivery_0000" and "error" not in got["/hook"]
    await wait_state(r, "sent", 2)
    [failed] = [rec for rec in caplog.records if rec.getMessage().startswith("template failed")]
    assert getattr(failed, "rule") == "spinning" and getattr(failed, "channel") == "hook"
    assert getattr(failed, "error").startswith("RenderTimeout in webhook/spin.json.j2:1")


async def test_a_slow_template_holds_up_neither_intake_nor_other_channels(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """Before, a render ran on the event loop until its 1 s budget was spent: every message
    of a slow template froze intake, /healthz and every other channel for a second each."""
    r = await relay(spin_config(sink.url, tmp_path, "CRASHED"))
    await r.post(failing_run(0, status="CRASHED"))  # both channels: the slow render starts
    await r.post(failing_run(1))  # fast only, taken in and sent while `hook` still renders
    got = [(g.path, g.json()["run"]["id"]) for g in await sink.wait_for(3)]
    assert got.index(("/fast", "run_delivery_0001")) < got.index(("/hook", "run_delivery_0000"))


async def test_rate_limit_delays_never_drops(relay: RelayFactory, sink: Sink) -> None:
    text = config(sink.url).replace("    secret:", "    rate_limit: {per_second: 10}\n    secret:")
    r = await relay(text)
    await r.post([failing_run(i) for i in range(9)])
    got = await sink.wait_for(9)
    # 9 messages at 10/s with a burst of 1 go over 0.8 s at least; seen at the sink, a first
    # request late by a busy machine shortens the span: room for 0.25 s of it
    assert got[-1].at - got[0].at >= 0.55
    await wait_state(r, "sent", 9)


async def test_a_send_held_by_the_rate_limit_carries_the_time_it_went_out(
    relay: RelayFactory, sink: Sink
) -> None:
    """webhook-timestamp is when the request is sent, not when it was rendered and then waited
    for the rate limit: Standard Webhooks receivers refuse one older than 5 minutes."""
    text = config(sink.url).replace("    secret:", "    rate_limit: {per_second: 2}\n    secret:")
    r = await relay(text)
    await r.post([failing_run(i) for i in range(4)])  # rendered at once, sent 0.5 s apart
    got = await sink.wait_for(4)
    stamps = [int(g.headers["webhook-timestamp"]) for g in got]
    assert stamps[-1] - stamps[0] >= 1  # sent at least 1.5 s after the first
    for g in got:
        standardwebhooks.Webhook(SECRET).verify(g.body, g.headers)
    await wait_state(r, "sent", 4)


async def test_quick_retries_keep_to_the_rate_limit(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """Each try is a request the receiver sees: in-process retries of a blip wait for the
    channel's rate limit too, with a fresh timestamp and signature each; the line that says
    the notification was sent says which tries failed first, and at DEBUG each failed try has
    a line of its own."""
    caplog.set_level(logging.DEBUG, logger="relay.delivery")
    sink.responses = [status(500), status(500)]
    text = config(sink.url).replace("    secret:", "    rate_limit: {per_second: 2}\n    secret:")
    r = await relay(text.replace("max_attempts: 4", "max_attempts: 12"))
    await r.post(failing_run())
    got = await sink.wait_for(3)
    await wait_state(r, "sent")
    # 3 tries at 2/s go 1 s apart at least (the quick waits alone: <= 0.3 s); seen at the sink,
    # a first request late by a busy machine shortens the span: room for 0.25 s of it
    assert got[2].at - got[0].at >= 0.75
    assert len({g.headers["webhook-id"] for g in got}) == 1
    for g in got:
        standardwebhooks.Webhook(SECRET).verify(g.body, g.headers)
    [sent] = [rec for rec in caplog.records if rec.getMessage() == "notification sent"]
    assert (sent.__dict__["attempts"], sent.__dict__["failed_tries"]) == (3, ["server_error"] * 2)
    tries = [rec.__dict__ for rec in caplog.records if rec.getMessage() == "try failed"]
    assert [(t["reason"], t["notification_id"]) for t in tries] == [
        ("server_error", sent.__dict__["notification_id"])
    ] * 2
    assert all("HTTP 500" in t["error"] for t in tries), tries


def leased(db: Path) -> int:
    """Pending outbox rows some delivery loop holds (claimed, in flight or waiting its turn)."""
    with sqlite3.connect(db) as conn:
        query = "SELECT count(*) FROM outbox WHERE state = 'pending' AND lease_until IS NOT NULL"
        return int(conn.execute(query).fetchone()[0])


async def test_a_busy_channel_claims_ahead_and_gives_back_on_stop_all_it_holds(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    sink.default = hang(30)
    text = config(sink.url, timeout="30s").replace("    secret:", "    concurrency: 2\n    secret:")
    db = tmp_path / "ahead.db"
    r = await relay(text, db)
    await r.post([failing_run(i) for i in range(CLAIM_AHEAD + 10)])
    await sink.wait_for(2)
    # two in flight, CLAIM_AHEAD more claimed in the same commit, the rest left in the outbox
    assert leased(db) == 2 + CLAIM_AHEAD
    assert r.service.delivery is not None
    await r.service.delivery.stop(grace_s=0.1)
    # every row went back, the two sends cut short too: a reload's new loop would otherwise
    # wait out their lease (5 minutes) before sending them again
    assert leased(db) == 0
    assert len(sink.received) == 2


async def test_a_reload_mid_drain_sends_every_claimed_notification_once(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    sink.default = hang(0.05)
    text = config(sink.url).replace("    secret:", "    concurrency: 1\n    secret:")
    r = await relay(text)
    await r.post([failing_run(i) for i in range(30)])
    await sink.wait_for(2)  # one in flight, CLAIM_AHEAD waiting their turn in the old loop
    (tmp_path / "config0.yaml").write_text(text.replace("X-Team: core", "X-Team: ops"))
    assert await r.service.reload("test")
    await wait_state(r, "sent", 30)
    ids = [got.headers["webhook-id"] for got in sink.received]
    assert len(ids) == len(set(ids)) == 30  # the old loop's claims went to the new one, once
    assert {got.headers["X-Team"] for got in sink.received[-5:]} == {"ops"}


async def test_a_trickle_costs_two_store_transactions_per_notification(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a trickle, a notification costs the commit that creates it, which also leases it to
    this process's loop (no claim between the 202 and the send), and the one that records the
    outcome; the send finishing asks the store nothing more. Before: 6 transactions (a claim
    and a next-due query after the commit, and both again after the send)."""
    # no idle poll meanwhile: one is owed each POLL_S, so a loaded machine, slower through the
    # same steps, counted more of them (two transactions each) and went past the bound
    monkeypatch.setattr(channel_loop, "POLL_S", 600.0)
    r = await relay(config(sink.url))
    runs = 6
    await r.post(failing_run(100))  # the loop is running and has found the store empty
    await wait_state(r, "sent", 1)
    assert isinstance(r.service.store, SQLiteStore)
    before = r.service.store.commits
    for i in range(runs):
        await r.post(failing_run(i))
        await sink.wait_for(i + 2)  # not wait_state: its reads are store transactions too
    await asyncio.sleep(0.2)  # the last outcome is written
    used = r.service.store.commits - before
    assert used <= 2 * runs, used


async def test_rows_leased_at_birth_for_a_loop_that_stopped_meanwhile_go_back(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A reload or shutdown between the reservation and the commit: the stopped loop gives
    the rows leased for it back at once, as it gives back what it claimed (the store hands
    them to it, `BirthLease.handed`, once the commit is done)."""
    db = tmp_path / "born.db"
    r = await relay(config(sink.url), db)
    delivery = r.service.delivery
    assert delivery is not None
    for _ in range(3000):  # none while the loop's first claim is under way
        lease = delivery.reserve(1, time.time())
        if lease is not None:
            break
        await asyncio.sleep(0.01)
    assert lease is not None and lease.slots == {"hook": 1}
    await delivery.stop(grace_s=0.1)
    run = Run.model_validate(failing_run(1))
    observed = await r.service.store.observe(
        [run], r.service.compiled.rules.decide, time.time(), lease
    )
    assert len(observed[0].leased) == 1
    for _ in range(1500):
        if leased(db) == 0:
            break
        await asyncio.sleep(0.02)
    assert leased(db) == 0 and sink.received == []


async def test_room_given_back_by_a_birth_lease_lets_a_waiting_claim_go(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While concurrent requests hold a loop's room, a new row is not leased at birth and the
    claim finds no room; when the room comes back the loop claims at once, not at its poll."""
    monkeypatch.setattr(channel_loop, "POLL_S", 30.0)  # a poll would come too late
    r = await relay(config(sink.url))
    delivery = r.service.delivery
    assert delivery is not None
    loop = delivery.loops["hook"]
    await asyncio.sleep(0.1)  # its first claim is done
    held = loop.reserve(1000, time.time())  # as many requests in flight would
    assert held > 0 and loop.reserve(1, time.time()) == 0
    await r.post(failing_run(1))  # no room: created without a lease, the loop is poked
    await asyncio.sleep(0.2)
    assert sink.received == []
    loop.take([], held)  # those requests created nothing for this channel
    await sink.wait_for(1)


async def test_a_rate_limited_channel_claims_only_what_it_can_send(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    sink.default = hang(30)
    limited = "    concurrency: 2\n    rate_limit: {per_second: 100}\n    secret:"
    db = tmp_path / "limited.db"
    r = await relay(config(sink.url, timeout="30s").replace("    secret:", limited), db)
    await r.post([failing_run(i) for i in range(40)])
    await sink.wait_for(2)
    await asyncio.sleep(0.2)
    assert leased(db) == 2  # nothing claimed to wait here for its turn in the bucket


@pytest.mark.parametrize("shape", ["one", "array"])
async def test_console_prints_the_rendered_alert(
    relay: RelayFactory, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    r = await relay(
        "channels: {out: {type: console}}\nrules:\n  - {name: f, match: {status: [failure]}, notify: [out]}\n"
    )
    run = sdk_run("crashed")
    await r.post(run if shape == "one" else [run])
    await wait_state(r, "sent")
    out = capsys.readouterr().out
    assert "render-video" in out and "CRASHED" in out


async def test_a_loop_kept_busy_by_new_rows_still_claims_what_waits_in_the_store(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows leased at birth must not keep a busy loop from the store: a row no wake-up
    announces (another replica's, free since that replica died; a retry whose time came) goes
    out at the next poll while intake goes on, not when intake stops."""
    monkeypatch.setattr(channel_loop, "POLL_S", 0.1)
    sink.default = hang(0.01)
    r = await relay(config(sink.url).replace("    secret:", "    concurrency: 1\n    secret:"))
    waiting = Run.model_validate(failing_run(9999))
    waiting_id = notification_id(waiting.id, "failures", "hook")

    def arrived() -> bool:
        return any(got.headers["webhook-id"] == waiting_id for got in sink.received)

    # posting on (far more than the loop sends meanwhile: it never runs dry) until the row
    # arrived, or for 30 s: bounded in time, not in posts, which a fast machine used up first
    deadline = time.monotonic() + 30
    for i in itertools.count():
        await r.post(failing_run(i))
        if i == 20:  # committed without a lease or a wake-up, as another process's row is
            await r.service.store.observe([waiting], r.service.compiled.rules.decide, time.time())
        if arrived() or time.monotonic() > deadline:
            break
    assert arrived(), "the row in the store waited for intake to stop"


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise RuntimeError("a stream that breaks in a way no channel foresaw")


async def test_a_channel_that_raises_unexpectedly_is_logged_with_its_notification(
    relay: RelayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SPEC §6: run id, rule and channel on every related line; the traceback line of a channel
    bug named only the channel."""
    monkeypatch.setattr(sys, "stdout", _BrokenStream())
    r = await relay(
        "defaults: {retry: {max_attempts: 2, min_backoff: 10ms, max_backoff: 20ms}}\n"
        "channels: {out: {type: console}}\n"
        "rules:\n  - {name: f, match: {status: [failure]}, notify: [out]}\n"
    )
    await r.post(failing_run(7))
    await wait_state(r, "dead")
    [line, *_] = [rec for rec in caplog.records if rec.msg == "channel raised unexpectedly"]
    fields = {k: getattr(line, k, None) for k in ("run_id", "rule", "channel")}
    assert fields == {"run_id": "run_delivery_0007", "rule": "f", "channel": "out"}
    assert getattr(line, "notification_id", "").startswith("ntf_") and line.exc_info
    dead = await r.service.store.get(notification_id("run_delivery_0007", "f", "out"))
    assert dead is not None and (dead.reason, dead.attempts) == ("other", 2)  # retried, not dropped


@asynccontextmanager
async def delivering_on(
    tmp_path: Path,
    sink: Sink,
    clock: Callable[[], float],
    *,
    start: bool = True,
    rule_extra: str = "",
) -> AsyncIterator[tuple[Intake, SQLiteStore, relay_delivery.Delivery]]:
    """Intake and a delivery loop on channel `hook` (to `sink`), both on `clock`; the rule
    `failures` with `rule_extra` (its YAML lines) added."""
    text = config(sink.url) + rule_extra
    compiled = compile_config(parse_config(text, "c.yaml", settings_models(), {}))
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    intake = Intake(store, lambda: compiled.rules, lambda channel: None, clock=clock)
    http = HttpClient()
    interval = compiled.rules.group_interval_of
    deps = delivery_deps(compiled, store, clock=clock, group_interval_of=interval)
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0, store))
    delivery = relay_delivery.Delivery(deps, {"hook": route})
    if start:
        delivery.start()
    try:
        yield intake, store, delivery
    finally:
        await delivery.stop(5.0)  # a send still in flight ends first
        await http.close()
        await store.close()


DIGEST_RULE = """\
    group_by: [taskIdentifier]
    group_wait: 10s
    group_interval: 60s
"""


async def test_runs_put_off_behind_a_digest_on_its_way_go_with_those_that_join_them(
    tmp_path: Path, sink: Sink
) -> None:
    """A run came due while its group's digest was on its way (the receiver slow to answer):
    claimed, it was put off group_interval as it should be, but given back as a send cut short
    is, to go again alone; a run joining the group meanwhile went in a digest of its own after
    it. Two replicas of a 20-minute PostgreSQL soak sent such pairs 30 ms apart, and 3,079 of
    26,349 runs went a digest later than their group's next one. Nothing of it was sent: it
    goes in the next digest with the runs that joined it."""
    now = [1_790_000_000.0]
    answer = first_held(sink)
    async with delivering_on(tmp_path, sink, lambda: now[0], rule_extra=DIGEST_RULE) as (
        intake,
        store,
        delivery,
    ):
        await intake.submit(parse_runs([failing_run(0)]))
        now[0] += 10.0
        delivery.wake("hook")
        await sink.wait_for(1)  # run 0 on its way, unanswered
        await intake.submit(parse_runs([failing_run(1)]))  # due group_interval later
        now[0] += 60.0
        delivery.wake("hook")
        for _ in range(600):  # claimed and put off: the digest on its way is not done
            rows = await store.history(HistoryQuery(run_id="run_delivery_0001"))
            if rows[0].not_before > now[0]:
                break
            await asyncio.sleep(0.05)
        answer.set()
        await wait_state(SimpleNamespace(service=SimpleNamespace(store=store)), "sent", 1)
        await intake.submit(parse_runs([failing_run(2)]))  # joins the waiting digest
        now[0] += 61.0
        delivery.wake("hook")
        await sink.wait_for(2)
        now[0] += 61.0
        delivery.wake("hook")
        await asyncio.sleep(1.5)  # a poll of the loop: a third message would have gone
    bodies = [r.json() for r in sink.received]
    runs = [
        sorted(run["id"] for run in b["runs"]) if "runs" in b else [b["run"]["id"]] for b in bodies
    ]
    assert runs == [["run_delivery_0000"], ["run_delivery_0001", "run_delivery_0002"]]


def first_held(sink: Sink) -> asyncio.Event:
    """The sink answers its first request (200) once the event returned is set."""
    answer = asyncio.Event()

    async def wait_for_answer(request: web.Request, index: int) -> web.StreamResponse:
        await answer.wait()
        return web.Response(status=200)

    sink.responses = [wait_for_answer]
    return answer


async def test_a_clock_stepped_past_the_lease_does_not_send_a_row_in_flight_again(
    tmp_path: Path, sink: Sink
) -> None:
    """The wall clock steps forward an hour (NTP, a resumed VM) while a webhook is in flight:
    its lease has passed, and the next claim (made for another run) took the row back and sent
    it a second time beside the first send. The loop's own rows are not sent again."""
    now = [1_790_000_000.0]
    answer = first_held(sink)
    async with delivering_on(tmp_path, sink, lambda: now[0]) as (intake, store, _):
        await intake.submit(parse_runs([failing_run(0)]))
        await sink.wait_for(1)
        now[0] += 3600.0  # past the lease of the row in flight
        await intake.submit(parse_runs([failing_run(1)]))
        await sink.wait_for(2)
        answer.set()
        await wait_state(SimpleNamespace(service=SimpleNamespace(store=store)), "sent", 2)
    runs = [r.json()["run"]["id"] for r in sink.received]
    assert runs == ["run_delivery_0000", "run_delivery_0001"]


async def test_a_row_claimed_again_as_its_send_ends_is_not_left_leased(
    tmp_path: Path, sink: Sink
) -> None:
    """A recovery gives its row back to wait for its alert; the alert is sent, the recovery
    made due, and the loop's next claim takes it while its first send is still ending: the
    claim dropped it as one in flight, and it sat leased, unsent, for the whole lease (5
    minutes; 3 of 100 runs posted FAILED and COMPLETED at once, on SQLite and PostgreSQL)."""
    now = [1_790_000_000.0]
    async with delivering_on(tmp_path, sink, lambda: now[0], start=False) as (
        intake,
        store,
        delivery,
    ):
        await intake.submit(parse_runs([failing_run(0)]))
        [row] = await store.claim("hook", now[0], 10, 300.0)  # the first send's claim
        assert await store.postpone(row.id, now=now[0], not_before=now[0])  # ... given back
        loop = delivery.loops["hook"]
        ending = asyncio.Event()

        async def send_ending() -> None:  # that send, ending without an outcome
            await ending.wait()

        first = asyncio.create_task(send_ending())
        loop.inflight[first] = [row]
        first.add_done_callback(loop._done)
        delivery.start()
        for _ in range(600):  # the loop's claim took it again
            if leased(tmp_path / "relay.db") == 1:
                break
            await asyncio.sleep(0.05)
        assert leased(tmp_path / "relay.db") == 1
        ending.set()
        [got] = await sink.wait_for(1, timeout=10.0)  # the fake clock never ends the lease
    assert got.json()["run"]["id"] == "run_delivery_0000"


async def test_a_clock_stepped_back_during_a_send_logs_no_negative_latency(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The wall clock steps back an hour while a webhook is in flight (NTP correcting a clock
    that ran ahead): the "notification sent" line said latency_s -3600; the metric says 0."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    now = [1_790_000_000.0]
    answer = first_held(sink)
    async with delivering_on(tmp_path, sink, lambda: now[0]) as (intake, store, _):
        await intake.submit(parse_runs([failing_run(0)]))
        await sink.wait_for(1)
        now[0] -= 3600.0
        answer.set()
        await wait_state(SimpleNamespace(service=SimpleNamespace(store=store)), "sent")
    [line] = [r for r in caplog.records if r.getMessage() == "notification sent"]
    assert getattr(line, "latency_s", None) == 0.0


@asynccontextmanager
async def delivering_one_run(
    store: Store, sink: Sink, now: list[float], sleep: Callable[[float], Awaitable[None]]
) -> AsyncIterator[None]:
    """A failing run taken into `store` and sent to `sink` (once it has the request) by a
    delivery of its own, in virtual time: its clock `now[0]`, its waits `sleep`."""
    compiled = compile_config(parse_config(config(sink.url), "c.yaml", settings_models(), {}))
    intake = Intake(store, lambda: compiled.rules, lambda channel: None, clock=lambda: now[0])
    assert (await intake.submit(parse_runs([failing_run()]))).notifications == 1
    http = HttpClient()
    deps = delivery_deps(compiled, store, clock=lambda: now[0], sleep=sleep)
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0, store))
    delivery = relay_delivery.Delivery(deps, {"hook": route})
    delivery.start()
    try:
        await sink.wait_for(1)
        yield
    finally:
        await delivery.stop(1.0)
        await http.close()


async def said(caplog: pytest.LogCaptureFixture, wanted: Callable[[str], bool]) -> list[Any]:
    """The log records whose message is `wanted`, once there are any (at most 30 s)."""
    for _ in range(3000):
        found = [r for r in caplog.records if wanted(r.getMessage())]
        if found:
            return found
        await asyncio.sleep(0.01)
    return []


async def test_an_outcome_the_store_cannot_take_is_logged_with_its_notification(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The store goes away while a webhook is in flight: the send is done but not recorded (it
    goes again after the lease). The error names the run, rule and notification it is about,
    as every line about a delivery does, not the channel alone. Time is virtual: the write is
    retried up to the lease without the suite waiting for it."""
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    now = [1_790_000_000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    async def close_store_then_accept(request: web.Request, index: int) -> web.StreamResponse:
        await store.close()
        return web.Response(status=200)

    sink.default = close_store_then_accept
    async with delivering_one_run(store, sink, now, sleep):
        [line] = await said(caplog, lambda m: m.startswith("outcome not recorded"))
    fields = ("run_id", "rule", "channel", "notification_id")
    about = {name: getattr(line, name, None) for name in fields}
    assert about == {
        "run_id": "run_delivery_0000",
        "rule": "failures",
        "channel": "hook",
        "notification_id": sink.received[0].headers["webhook-id"],
    }


async def test_an_outcome_is_recorded_through_a_store_blip(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The store goes away while a webhook is in flight and is back a moment later: the send
    is recorded as sent (the write is retried up to the lease), not sent again after the lease
    as if it had never gone. The one wait in between is the outcome's own: the store is back
    when it ends. Time is virtual."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    now = [1_790_000_000.0]
    waits: list[float] = []
    closed = [False]

    async def sleep(seconds: float) -> None:  # the store is back when the wait ends
        waits.append(seconds)
        now[0] += seconds
        if closed[0]:
            closed[0] = False
            await store.open()

    async def close_store_then_accept(request: web.Request, index: int) -> web.StreamResponse:
        await store.close()
        closed[0] = True
        return web.Response(status=200)

    sink.default = close_store_then_accept
    ends = ("notification sent", "outcome not recorded: store unavailable")
    try:
        async with delivering_one_run(store, sink, now, sleep):
            lines = await said(caplog, lambda m: m in ends)
        counts = await store.counts()
    finally:
        await store.close()
    assert [line.getMessage() for line in lines] == ["notification sent"]
    assert counts["sent"] == 1 and len(waits) == 1 and len(sink.received) == 1


async def test_a_stop_ends_a_sends_wait_for_its_token_or_its_quick_retry(sink: Sink) -> None:
    """The loop's stop (SIGTERM, a reload) ends the waits of relay's own timers at once: a send
    waiting for its rate-limit token comes back unsent (no try, its token given back, due now)
    and one waiting out a quick retry's backoff ends with the try it made. Both waited out the
    shutdown's whole grace (10 s) before being cut short."""
    sink.responses = [status(200), status(502)]
    cfg = config(sink.url).replace("    secret:", "    rate_limit: {per_minute: 1}\n    secret:")
    compiled = compile_config(parse_config(cfg, "c.yaml", settings_models(), {}))
    http = HttpClient()
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0))
    assert route.bucket is not None
    stop = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the stop comes while a send waits
        stop.set()
        await asyncio.Event().wait()

    sender = Sender(
        "hook",
        route,
        clock=lambda: 1000.0,
        sleep=sleep,
        rng=random.Random(0),
        max_attempts=4,
        stop=stop,
    )
    message = Outgoing("ntf_a", "run_a", "failures", {"json": "{}"}, 1000.0)
    try:
        sent = await sender.attempt(message, 0)
        waiting = await sender.attempt(message, 0)
        next_wait_s = route.bucket.reserve(1000.0)  # a minute: the token given back, not two
        route.bucket = None  # the next one is not throttled: its wait is the quick retry's
        stop.clear()
        retrying = await sender.attempt(message, 0)
    finally:
        await http.close()
    assert sent.tries == 1 and sent.error is None
    assert waiting.tries == 0 and waiting.held_s == 0.0 and waiting.error is None
    assert next_wait_s == 60.0
    assert retrying.tries == 1 and retrying.failed == ("server_error",) and len(sink.received) == 2


async def test_a_send_that_waited_for_its_token_leaves_nothing_running() -> None:
    """Each wait for a rate-limit token (or a quick retry's backoff) races the sleep against
    the loop's stop; the loser must end with it, or every throttled send of a long-running
    relay leaves a task behind until the loop stops."""
    cfg = (
        "channels: {out: {type: console, rate_limit: {per_second: 1, burst: 1}}}\n"
        "rules:\n  - {name: f, match: {status: [failure]}, notify: [out]}\n"
    )
    compiled = compile_config(parse_config(cfg, "c.yaml", settings_models(), {}))
    route = route_for(compiled, "out", ChannelEnv(HttpClient(), io.StringIO(), 10.0))
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    sender = Sender(
        "out", route, clock=lambda: now[0], sleep=sleep, rng=random.Random(0), max_attempts=4
    )
    message = Outgoing("ntf_a", "run_a", "f", {"txt": "failed"}, now[0])
    before = len(asyncio.all_tasks())
    tried = [await sender.attempt(message, 0) for _ in range(5)]
    await asyncio.sleep(0)  # what was cancelled has ended
    assert [t.tries for t in tried] == [1] * 5 and now[0] == 1004.0  # four waits for a token
    assert len(asyncio.all_tasks()) == before
