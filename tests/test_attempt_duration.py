"""relay_delivery_attempt_duration_seconds: how long one request to a receiver took (as
Alertmanager's alertmanager_notification_latency_seconds), by channel and type, whatever came
of it; in-process, from --workers' children, and through a reload. A wait for the rate limit
or a Retry-After hold is no request and is not counted."""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from relay.channels import ChannelEnv, Outgoing, settings_models
from relay.channels._http import HttpClient
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.routes import route_for
from relay.sending import Sender
from tests.conftest import RelayFactory, RelayProcess, Sink, hang, sdk_run
from tests.fakes.serving import free_port
from tests.test_delivery import reload_with, wait_state
from tests.test_durability import post_all
from tests.test_operations import metrics_text, value
from tests.test_workers import CONFIG as WORKERS_CONFIG
from tests.test_workers import scraped

SLOW_S = 0.5  # the slow receiver's answer comes this long after the request
# test_workers' config, one attempt a notification (each request is the one measured), 5 s a try
CONFIG = WORKERS_CONFIG.replace("max_attempts: 50", "max_attempts: 1").replace("30s", "5s")
ATTEMPTS = "relay_delivery_attempt_duration_seconds"


def config(channels: dict[str, str]) -> str:
    lines = "".join(f"  {name}: {{{spec}}}\n" for name, spec in channels.items())
    return CONFIG.format(channels=lines, names=", ".join(channels))


def slow_and_fast(sink: Sink) -> dict[str, str]:
    """Channel `slow` answered after SLOW_S, `fast` at once (the sink tells them by path)."""

    async def respond(request: web.Request, index: int) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(SLOW_S)
        return web.Response(status=200)

    sink.default = respond
    return {
        "slow": f"type: webhook, url: {sink.url}/slow",
        "fast": f"type: webhook, url: {sink.url}/fast",
    }


def failed_run(i: int = 0) -> dict[str, object]:
    run = sdk_run("failed")
    run["id"] = f"run_attempt_{i:04d}"
    return run


def series(channel: str, kind: str = "webhook") -> str:
    return f'{{channel="{channel}",type="{kind}"}}'


async def test_a_slow_receiver_shows_in_its_channels_attempt_durations(
    relay: RelayFactory, sink: Sink
) -> None:
    """The delivery latency (intake to delivered) of a slow receiver and of a backlog look
    alike; the request's own duration tells them apart, by channel and by type."""
    r = await relay(config(slow_and_fast(sink)))
    text = await metrics_text(r)  # at 0 from the start: a first request shows in increase()
    assert value(text, f"{ATTEMPTS}_count{series('slow')}") == 0
    assert value(text, 'relay_channel_timeout_seconds{channel="slow"}') == 5.0
    await r.post(failed_run())
    await wait_state(r, "sent", 2)
    text = await metrics_text(r)
    assert value(text, f"{ATTEMPTS}_count{series('slow')}") == 1
    assert value(text, f"{ATTEMPTS}_count{series('fast')}") == 1
    assert value(text, f"{ATTEMPTS}_sum{series('slow')}") >= SLOW_S  # never less: it waited
    assert value(text, f'{ATTEMPTS}_bucket{{channel="slow",le="0.25",type="webhook"}}') == 0


async def test_a_refused_connection_and_a_timeout_are_attempts(
    relay: RelayFactory, sink: Sink
) -> None:
    """Every request counts, failed ones too: a timeout shows as a request as long as the
    channel's timeout (an operator sees a receiver that hangs), a refused connection as a
    short one."""
    sink.default = hang(30.0)
    channels = {
        "hangs": f"type: webhook, url: {sink.url}/hangs, timeout: 300ms",
        "refuses": f"type: webhook, url: http://127.0.0.1:{free_port()}/refuses",
    }
    r = await relay(config(channels))
    await r.post(failed_run())
    await wait_state(r, "dead", 2)
    text = await metrics_text(r)
    for channel, reason in (("hangs", "timeout"), ("refuses", "network")):
        failed = f'relay_notifications_failed_total{{channel="{channel}",reason="{reason}"}}'
        assert value(text, failed) == 1
        assert value(text, f"{ATTEMPTS}_count{series(channel)}") == 1
    assert value(text, f"{ATTEMPTS}_sum{series('hangs')}") >= 0.3
    assert value(text, 'relay_channel_timeout_seconds{channel="hangs"}') == 0.3


async def test_a_wait_for_the_rate_limit_or_a_hold_is_no_attempt(sink: Sink) -> None:
    """A send waiting for its token of the rate limit makes its request after the wait: the
    request's duration starts then; and a send the channel's hold (a Retry-After) keeps back
    makes none, so it is not counted at all."""
    cfg = config({"hook": f"type: webhook, url: {sink.url}/hook, rate_limit: {{per_second: 1}}"})
    compiled = compile_config(parse_config(cfg, "c.yaml", settings_models(), {}))
    http = HttpClient()
    route = route_for(compiled, "hook", ChannelEnv(http, io.StringIO(), 10.0))
    assert route.bucket is not None
    took: list[float] = []
    sender = Sender(
        "hook",
        route,
        clock=time.time,
        sleep=asyncio.sleep,
        rng=random.Random(0),
        max_attempts=1,
        took=took.append,
    )
    message = Outgoing("ntf_a", "run_a", "failures", {"json": "{}"}, time.time())
    try:
        began = time.perf_counter()
        assert route.bucket.reserve(time.time()) == 0  # the burst's token: the next waits 1 s
        tried = await sender.attempt(message, 0)
        spent = time.perf_counter() - began
        route.hold.extend(time.time(), 60.0)
        held = await sender.attempt(message, 0)
    finally:
        await http.close()
    assert tried.tries == 1 and tried.error is None and len(sink.received) == 1
    assert held.tries == 0 and held.held_s is not None and len(sink.received) == 1
    # the request went 1 s after `began` at the soonest, so it took `spent` less that second
    # at most (counted from the wait's start, it would be all of `spent`)
    assert len(took) == 1 and took[0] <= spent - 1.0 + 0.05


async def test_the_parent_of_a_worker_shows_its_attempts(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """With --workers the requests are made in the children: their durations reach the
    parent's /metrics over the events pipe, as their outcomes do."""
    proc = relay_process(config(slow_and_fast(sink)), {"RELAY_WORKERS": "1"})
    await asyncio.to_thread(proc.start)
    counts = await scraped(proc.url, f"{ATTEMPTS}_count")
    assert counts[series("slow")] == 0  # the parent knows the config's channels from the start
    await post_all(proc.url, [failed_run()])
    for _ in range(600):  # the events pipe is asynchronous: the count catches up
        counts = await scraped(proc.url, f"{ATTEMPTS}_count")
        if counts.get(series("slow")) == 1 and counts.get(series("fast")) == 1:
            break
        await asyncio.sleep(0.05)
    assert counts[series("slow")] == 1 and counts[series("fast")] == 1
    sums = await scraped(proc.url, f"{ATTEMPTS}_sum")
    assert sums[series("slow")] >= SLOW_S
    assert await asyncio.to_thread(proc.terminate) == 0


async def test_a_reload_that_removes_a_channel_keeps_metrics_whole(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A channel removed by a reload: its timeout goes (no alert compares it), its counted
    requests may stay; the others count on."""
    channels = slow_and_fast(sink)
    r = await relay(config(channels))
    await r.post(failed_run(0))
    await wait_state(r, "sent", 2)
    await reload_with(r, config({"fast": channels["fast"]}))
    await r.post(failed_run(1))
    await wait_state(r, "sent", 3)
    text = await metrics_text(r)
    assert value(text, f"{ATTEMPTS}_count{series('fast')}") == 2
    assert 'relay_channel_timeout_seconds{channel="slow"}' not in text
    assert value(text, 'relay_channel_timeout_seconds{channel="fast"}') == 5.0
