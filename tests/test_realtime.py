"""The Realtime follower against a fake Trigger.dev Realtime server (tests/fakes/realtime.py).

Follower-level tests record what it submits; end-to-end tests run relay (in-process, and as a
child killed with -9) with `sources.realtime` pointing at the fake and a webhook sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from pydantic import ValidationError

from relay import __version__ as relay_version
from relay.config_sources import RealtimeConfig, RealtimeFeed
from relay.errors import StoreUnavailable
from relay.formats.packets import too_deep
from relay.formats.sdk import parse_sdk_run
from relay.intake import IntakeResult
from relay.logs import SCRUB
from relay.metrics import Metrics
from relay.metrics_realtime import REALTIME_ERROR_REASONS
from relay.model import Run
from relay.sources import realtime as realtime_module
from relay.sources._answers import error_reason, status_reason
from relay.sources._failures import UNREADABLE_LIMIT
from relay.sources._feed import feed_of
from relay.sources._feed_request import Timing, retry_delay
from relay.sources._feed_store import NAMESPACE, ROWS_NAMESPACE
from relay.sources._follower import Follower
from relay.sources._messages import ShapeError
from relay.sources._shape import Position, Shape, stored_rows
from relay.sources.realtime import (
    FORGET_AFTER_S,
    LEAD_RENEW_S,
    LEAD_TTL_S,
    RealtimeSource,
    forget_removed_feeds,
    lease_name,
)
from relay.store import KvWrite, Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, RelayProcess, Sink, sdk_run
from tests.fakes.realtime import (
    CUT,
    SESSION,
    TRICKLE,
    Exchange,
    FakeRealtime,
    fake_realtime,
    native_single_run,
    row_key,
    session,
    with_exchange,
)
from tests.fakes.serving import PROXY_407, free_port, raw_server, until
from tests.pg import fresh_database, shared_server
from tests.test_electric import assert_same_run

SECRET = "tr_prod_4xmPq0JvT7cSyfGdZbRwKe9H"
TAG = "customer:cus_Q8x2LmN4"
H1, H2 = "83412937-1755681243118052", "83412937-1755681299400117"
RUN_A, RUN_E = "run_cmuxjbf30kqkowywawhi1r8yr", "run_cmy2trjs6h23sbbwrzm2jlnhj"
E_INTERNAL = "cmy2trjs6h23sbbwrzm2jlnhj"


@dataclass
class Recorder:
    """Stands in for Intake.submit: records batches; `fail` StoreUnavailable first."""

    batches: list[list[Run]] = field(default_factory=list)
    fail: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, runs: Sequence[Run]) -> IntakeResult:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("down")
        self.batches.append(list(runs))
        self.arrived.set()
        return IntakeResult(len(runs), 0, 0)

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[list[Run]]:
        await until(
            lambda: len(self.batches) >= count,
            self.arrived,
            timeout,
            lambda: f"{len(self.batches)} of {count} batches",
        )
        return self.batches


@dataclass
class MemoryKV:
    data: dict[tuple[str, str], str] = field(default_factory=dict)
    puts: list[tuple[str, int]] = field(default_factory=list)  # (position, batches submitted)
    recorder: Recorder | None = None

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return self.data.get((namespace, key))

    async def kv_list(self, namespace: str) -> dict[str, str]:
        return {k: v for (ns, k), v in self.data.items() if ns == namespace}

    async def kv_write(self, write: KvWrite, now: float) -> None:
        for namespace in write.clear:
            for key in list(await self.kv_list(namespace)):
                del self.data[(namespace, key)]
        for namespace, key in write.delete:
            self.data.pop((namespace, key), None)
        for namespace, key, value in write.put:
            self.data[(namespace, key)] = value
            if namespace == NAMESPACE:
                self.puts.append((value, len(self.recorder.batches) if self.recorder else -1))

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        holder = self.data.get(("lease", name))
        if holder not in (None, owner):
            return False
        self.data[("lease", name)] = owner
        return True

    def position(self, key: str) -> dict[str, Any]:
        return json.loads(self.data[(NAMESPACE, key)])

    def rows(self, key: str) -> dict[str, dict[str, Any]]:
        namespace = f"{ROWS_NAMESPACE}:{key}"
        return {k: json.loads(v) for (ns, k), v in self.data.items() if ns == namespace}


@dataclass
class Harness:
    fake: Served
    submit: Recorder
    kv: MemoryKV
    sleeps: list[float]
    task: asyncio.Task[None]
    observed: list[tuple[str, int, float | None, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # the reasons counted


class Served(Protocol):
    """A Realtime server on 127.0.0.1: the fake, or a naive one."""

    @property
    def url(self) -> str: ...


@asynccontextmanager
async def following(
    fake: Served,
    feed: RealtimeFeed | None = None,
    stored: Position | None = None,
    kv: MemoryKV | None = None,
    clock: Callable[[], float] = time.monotonic,
    **config: Any,
) -> AsyncIterator[Harness]:
    """A Follower of `feed` running against `fake`, with waits recorded instead of slept; `kv`
    is the store of a previous follower (a restart); `clock` times the grace of finished runs."""
    feed = feed or RealtimeFeed(tags=[TAG])
    config.setdefault("api_url", fake.url)
    settings = RealtimeConfig(secret_key=SECRET, feeds=[feed], **config)
    submit = Recorder()
    kv, sleeps = kv or MemoryKV(), []
    kv.recorder = submit
    if stored is not None:
        kv.data[(NAMESPACE, feed_of(feed).key)] = stored.dumps()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0.001)

    observed: list[tuple[str, int, float | None, int]] = []
    failed: list[str] = []
    async with aiohttp.ClientSession() as http:
        timing = Timing(timeout_s=30.0, error_wait_s=settings.error_backoff)
        follower = Follower(
            feed_of(feed),
            settings,
            http,
            submit,
            kv,
            timing=timing,
            sleep=sleep,
            observe=lambda *batch: observed.append(batch),
            failed=lambda key, reason: failed.append(reason),
            clock=clock,
        )
        task = asyncio.create_task(follower.run())
        try:
            yield Harness(fake, submit, kv, sleeps, task, observed, failed)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def statuses(batches: list[list[Run]]) -> list[list[tuple[str, str]]]:
    return [[(run.id, run.status) for run in batch] for batch in batches]


def asked_for(handle: str, *, live: bool = False, offset: str | None = None) -> Callable[..., bool]:
    def match(seen: Any) -> bool:
        q = seen.query
        return (
            q.get("handle") == handle
            and (q.get("live") == "true") == live
            and (offset is None or q.get("offset") == offset)
        )

    return match


# ---------------------------------------------------------------- the fixture session


async def test_session_replays_like_the_sdk_and_refetch_repeats_only() -> None:
    async with fake_realtime(session()) as fake, following(fake) as h:
        await fake.wait_for(asked_for(H2, live=True))  # past the 409 and the new snapshot
        batches = await h.submit.wait_for(4)
    assert statuses(batches) == [
        [(RUN_A, "EXECUTING")],
        [(RUN_A, "FAILED"), (RUN_E, "QUEUED")],
        [(RUN_E, "EXECUTING")],
        [(RUN_A, "FAILED"), (RUN_E, "EXECUTING")],  # the refetched snapshot: repeats
    ]
    assert_same_run(batches[1][0], parse_sdk_run(sdk_run("failed")))
    assert_same_run(batches[2][0], parse_sdk_run(sdk_run("executing")))
    assert batches[3] == [batches[1][0], batches[2][0]]
    # the requests are the SDK's, exchange by exchange
    script = json.loads(SESSION.read_text())["exchanges"]
    for seen, item in zip(fake.requests, script, strict=False):
        assert seen.path == item["request"]["path"]
        assert seen.query == {**item["request"]["query"], "createdAt": "24h"}
        for name, value in item["request"]["headers"].items():
            assert seen.headers[name] == value
    assert fake.served[:6] == [item["name"] for item in script]
    after = [(s.query.get("offset"), s.query.get("handle"), s.answer) for s in fake.requests[6:8]]
    assert after == [("-1", H2, "snapshot"), ("0_inf", H2, "up-to-date")]
    position = h.kv.position(f"tags:{TAG}|24h")
    assert (position["handle"], position["offset"]) == (H2, "0_inf")
    assert position["schema"]["costInCents"] == {"type": "float8", "not_null": True}


async def test_the_feed_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind a corporate proxy the feed asked for api.trigger.dev's address itself, which
    only the proxy can resolve, and failed for good; the channels already used the proxy."""
    async with fake_realtime(session()) as fake:
        monkeypatch.setenv("HTTP_PROXY", fake.url)
        monkeypatch.setenv("http_proxy", fake.url)
        async with following(fake, api_url="http://trigger.example.invalid") as h:
            await h.submit.wait_for(1)
    assert fake.requests[0].headers["Host"] == "trigger.example.invalid"


async def test_a_socks_proxy_is_named_in_the_feed_failure_and_not_spoken_to(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp spoke HTTP to a SOCKS proxy: the feed's failures read "ClientOSError" or a
    malformed answer, which says nothing of the variable to fix."""
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_realtime(session()) as fake:
        socks = fake.url.replace("http://", "socks5://")
        monkeypatch.setenv("HTTP_PROXY", socks)
        monkeypatch.setenv("http_proxy", socks)
        async with following(fake, api_url="http://trigger.example.invalid") as h:
            while len(h.sleeps) < 2:
                await asyncio.sleep(0.001)
    assert not fake.requests and h.failed[:2] == ["network", "network"]
    reasons = [r.__dict__.get("reason", "") for r in caplog.records]
    assert f"proxy {socks} not supported: relay speaks to http:// and https:// proxies" in reasons


async def test_a_proxys_407_is_named_as_the_proxys_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A forward proxy's 407 (an http:// api_url) read "realtime request refused; check the
    secret key and the feed": the key was fine, the proxy's credentials were not."""
    caplog.set_level(logging.INFO, logger="relay")
    server, proxy = await raw_server(PROXY_407)
    async with server, fake_realtime(session()) as fake:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("http_proxy", proxy)
        async with following(fake, api_url="http://trigger.example.invalid") as h:
            while len(h.sleeps) < 2:
                await asyncio.sleep(0.001)
    assert h.failed[:2] == ["network", "network"]
    reasons = [r.__dict__.get("reason", "") for r in caplog.records]
    assert "proxy answered HTTP 407" in reasons
    assert not [r for r in caplog.records if "secret key" in r.getMessage()]


async def test_a_failed_connection_is_said_in_words_and_a_proxys_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The feed's failures read as aiohttp's class names ("ClientConnectorError",
    "ClientProxyConnectionError") where the channels say "connection refused"."""
    caplog.set_level(logging.INFO, logger="relay")
    down = f"http://127.0.0.1:{free_port()}"
    async with fake_realtime(session()) as fake:
        async with following(fake, api_url=down) as h:
            while len(h.sleeps) < 1:
                await asyncio.sleep(0.001)
        monkeypatch.setenv("HTTP_PROXY", down)
        monkeypatch.setenv("http_proxy", down)
        async with following(fake, api_url="http://trigger.example.invalid") as h:
            while len(h.sleeps) < 1:
                await asyncio.sleep(0.001)
    reasons = [r.__dict__.get("reason") for r in caplog.records if r.__dict__.get("reason")]
    assert reasons[:2] == ["connection refused", "proxy: connection refused"]


@pytest.mark.parametrize(("branch", "sent"), [(None, None), ("", None), (" feat/x ", "feat/x")])
async def test_a_preview_branch_is_asked_for_by_name(branch: str | None, sent: str | None) -> None:
    """A preview environment's key reads a branch's runs only with `x-trigger-branch` (Trigger.dev
    answers "x-trigger-branch header required for preview env"); there was no way to send it.
    Empty, as `${TRIGGER_PREVIEW_BRANCH:-}` gives when unset, is no branch."""
    async with fake_realtime(session()) as fake, following(fake, branch=branch) as h:
        await h.submit.wait_for(1)
    assert {seen.headers.get("x-trigger-branch") for seen in fake.requests} == {sent}


def test_a_branch_that_cannot_be_a_header_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="branch cannot contain line breaks"):
        RealtimeConfig(secret_key=SECRET, feeds=[RealtimeFeed(tags=[TAG])], branch="a\nX-Evil: 1")


@pytest.mark.parametrize("branch", ["feat/café", "feat/日本"])
def test_a_branch_trigger_dev_cannot_read_from_a_header_is_refused_at_load(branch: str) -> None:
    """The header goes out as UTF-8 and Trigger.dev (Node) reads header bytes as Latin-1:
    `feat/café` arrives as `feat/cafÃ©`, no branch has that name, and every request was
    refused ("check the secret key") while relay check said OK."""
    with pytest.raises(ValidationError, match="branch can only be ASCII"):
        RealtimeConfig(secret_key=SECRET, feeds=[RealtimeFeed(tags=[TAG])], branch=branch)


async def test_a_handle_of_another_branch_is_dropped_for_a_snapshot_of_this_one() -> None:
    """The stored handle is the shape of the branch (or environment) followed before: Electric
    answers 400 "shape definition and handle do not match" for it at every request, and the
    feed asked again with it every `error_backoff`, forever. Now it reads a new snapshot."""
    other = "83412937-1755600000000000"
    stored = Position(other, "29374025320_0", "58785280", {"isTest": {"type": "bool"}}, 0)
    async with fake_realtime(session()) as fake:
        fake.others.add(other)
        async with following(fake, stored=stored, branch="b") as h:
            await h.submit.wait_for(1)
    first, second = fake.requests[:2]
    assert (first.query["handle"], first.answer) == (other, "400 another shape's handle")
    assert (second.query["offset"], "handle" not in second.query) == ("-1", True)
    assert second.answer == "initial-snapshot" and h.failed[:1] == ["client_error"]
    assert RealtimeConfig.model_fields["error_backoff"].default not in h.sleeps  # at once


async def test_a_400_to_a_handle_this_server_gave_waits_instead_of_snapshot_after_snapshot() -> (
    None
):
    """Only the stored handle can be another shape's: a 400 to the handle of this server's own
    snapshot is refused as any other 400 (error_backoff), not a new snapshot at once, over and
    over, without a pause."""
    async with fake_realtime(session()) as fake:
        fake.others.add(H1)  # the handle of the first snapshot
        async with following(fake) as h:
            while len(fake.requests) < 4 and len(h.sleeps) < 1:
                await asyncio.sleep(0.001)
    answers = [seen.answer for seen in fake.requests[:2]]
    assert answers == ["initial-snapshot", "400 another shape's handle"]
    assert h.sleeps[:1] == [RealtimeConfig.model_fields["error_backoff"].default]


async def test_the_feed_names_relay_and_its_version(relay: RelayFactory, sink: Sink) -> None:
    async with fake_realtime(session()) as fake:
        await relay(config(fake.url, sink.url))
        await fake.wait_for(lambda seen: True)
    assert fake.requests[0].headers["User-Agent"] == f"relay/{relay_version}"


async def test_the_feed_sends_back_no_cookie_the_api_set(relay: RelayFactory, sink: Sink) -> None:
    """Trigger.dev's API sits behind a CDN that sets cookies; the SDK's fetch keeps none, and
    neither does relay: two feeds of two projects' keys shared them before."""
    script = session()
    script[0] = replace(script[0], headers={**script[0].headers, "Set-Cookie": "__cf_bm=x; Path=/"})
    async with fake_realtime(script) as fake:
        await relay(config(fake.url.replace("127.0.0.1", "localhost"), sink.url))
        await fake.wait_for(lambda seen: len(fake.requests) >= 3)
    assert [seen.headers.get("Cookie") for seen in fake.requests[:3]] == [None] * 3


async def test_409_without_a_handle_refetches_old_next() -> None:
    script = [*session()[:2], Exchange("409", "0_inf", H1, True, 409, {}, [])]
    async with fake_realtime(script) as fake, following(fake) as h:
        await fake.wait_for(asked_for(f"{H1}-next", offset="-1"))
        await h.submit.wait_for(2)
    assert statuses(h.submit.batches) == [[(RUN_A, "EXECUTING")]] * 2


async def test_must_refetch_in_the_body_starts_over_without_a_handle() -> None:
    refetch = Exchange(
        "must-refetch message",
        "0_inf",
        H1,
        True,
        200,
        {"electric-handle": H1, "electric-offset": "0_inf", "electric-cursor": "1"},
        [{"headers": {"control": "must-refetch"}}],
    )
    async with fake_realtime([*session()[:2], refetch]) as fake, following(fake) as h:
        seen = await fake.wait_for(lambda s: s.answer == "snapshot")
        await h.submit.wait_for(2)
    assert (seen.query.get("offset"), seen.query.get("handle")) == ("-1", None)


# ---------------------------------------------------------------- failures


async def test_429_500_and_broken_answers_are_retried_with_backoff() -> None:
    async with fake_realtime(session()) as fake:
        fake.faults = [(429, {"Retry-After": "2"}), (500, {}), (200, {})]  # 200: no headers
        async with following(fake) as h:
            await h.submit.wait_for(1)
    assert [s.answer for s in fake.requests[:4]] == [
        "fault 429",
        "fault 500",
        "fault 200",
        "initial-snapshot",
    ]
    assert h.sleeps[0] >= 2.0  # Retry-After honoured
    assert 0.065 <= h.sleeps[1] <= 0.13 and 0.0845 <= h.sleeps[2] <= 0.169  # 100 ms x 1.3


async def test_failed_requests_are_counted_by_reason() -> None:
    async with fake_realtime(session()) as fake:
        fake.faults = [(429, {}), (503, {}), (408, {}), (200, {}), (401, {}), (403, {}), (404, {})]
        fake.faults += [(400, {})]
        async with following(fake, error_backoff="1s") as h:
            await h.submit.wait_for(1)
        assert h.failed == [
            "rate_limited",
            "server_error",
            "timeout",
            "other",  # a 200 without Electric's headers
            "auth_error",
            "auth_error",
            "client_error",
            "client_error",
        ]
    async with following(FakeRealtime([], url="http://127.0.0.1:9")) as h:  # nothing listens
        while not h.failed:
            await asyncio.sleep(0.01)
    assert h.failed[0] == "network"


async def test_a_404_marked_should_retry_backs_off_instead_of_waiting_the_refusal() -> None:
    """Trigger.dev answers a batch not there yet (just triggered) with 404 and `x-should-retry:
    true`: asked again after the backoff, not after `error_backoff`, as a wrong feed's 404 is."""
    async with fake_realtime(session()) as fake:
        fake.faults = [(404, {"x-should-retry": "true"}), (404, {})]
        async with following(fake, error_backoff="1m") as h:
            await h.submit.wait_for(1)
    assert [s.answer for s in fake.requests[:2]] == ["fault 404", "fault 404"]
    assert h.sleeps[0] < 1.0 and h.sleeps[1] == 60.0


async def test_lag_is_zero_once_a_long_poll_finds_nothing_new() -> None:
    """The snapshot's rows are months old (the fixture's): that is no lag once caught up."""
    async with fake_realtime(session()[:2]) as fake, following(fake) as h:
        await fake.wait_for(lambda s: s.answer == "live timeout")
        while len(h.observed) < 2:
            await asyncio.sleep(0.01)
    (key, rows, lag_s, held), caught_up = h.observed[:2]
    assert rows == 1 and lag_s is not None and lag_s > 3600
    assert held == 1  # the run the snapshot brought, to merge its later updates into
    assert caught_up == (key, 0, 0.0, 1)


async def test_an_answer_unreadable_again_and_again_is_read_anew_from_a_snapshot() -> None:
    """Asked again at the same offset, not skipped (the shape took none of it); three times in
    a row, the feed starts over from a snapshot of a new shape instead of holding up forever."""
    async with fake_realtime(session()) as fake, following(fake) as h:
        await h.submit.wait_for(1)  # past the snapshot
        fake.faults = [(200, {})] * UNREADABLE_LIMIT  # 200 without Electric's headers
        for _ in range(3000):
            answers = [s.answer for s in fake.requests]
            if "fault 200" in answers and len(answers) > answers.index("fault 200") + 3:
                break
            await asyncio.sleep(0.01)
    first = answers.index("fault 200")
    faulted = [s.query for s in fake.requests[first : first + UNREADABLE_LIMIT]]
    after = fake.requests[first + UNREADABLE_LIMIT].query
    assert len({(q.get("offset"), q.get("handle")) for q in faulted}) == 1  # the same, again
    assert faulted[0].get("offset") != "-1"
    assert after.get("offset") == "-1" and "handle" not in after  # a new shape


async def test_unreachable_server_is_retried_not_fatal() -> None:
    fake = FakeRealtime([], url="http://127.0.0.1:9")  # nothing listens on the discard port
    async with following(fake) as h:
        while len(h.sleeps) < 3:
            await asyncio.sleep(0.01)
    assert h.sleeps[1] > h.sleeps[0] * 0.5 and not h.submit.batches


async def test_a_refused_key_is_logged_without_the_secret_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_realtime(session()) as fake:
        fake.refuse = 401
        async with following(fake, error_backoff="2s") as h:
            await fake.wait_for(lambda s: s.answer == "refused 401")
            while not h.sleeps:
                await asyncio.sleep(0.001)
            fake.refuse = None  # the operator fixed the key
            await h.submit.wait_for(1)
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert refused and refused[0].__dict__["feed"] == f"tags:{TAG}|24h"
    assert refused[0].__dict__["status"] == 401
    assert "secret key" in refused[0].__dict__["error"]
    assert h.sleeps[0] == 2.0
    for record in caplog.records:
        assert SECRET not in record.getMessage() + json.dumps(record.__dict__, default=str)


async def test_a_redirect_is_not_followed_and_says_where_it_points(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An api_url of http:// answered with a 301 to https://: the key is not sent after it,
    and the log says to fix api_url (not to check the key), without the Location's query."""
    caplog.set_level(logging.INFO, logger="relay")
    location = "https://api.example.com:8443/realtime/v1/runs?token=abc"
    async with fake_realtime(session()) as fake:
        fake.faults = [(301, {"Location": location})]
        async with following(fake, error_backoff="2s") as h:
            await h.submit.wait_for(1)  # asked again after error_backoff: the fault was once
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "api_url" in record.getMessage() and "secret key" not in record.getMessage()
    assert record.__dict__["location"] == "https://api.example.com:8443"
    assert record.__dict__["status"] == 301 and h.sleeps[0] == 2.0
    assert "token=abc" not in json.dumps(record.__dict__, default=str)


async def test_a_refusal_echoing_the_key_is_logged_without_any_of_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy's 401 quoting the request's Authorization header: the error text was cut at 200
    characters first, and a key cut in two is no longer the secret the log scrubber knows."""
    monkeypatch.setattr(SCRUB, "secrets", ())
    SCRUB.set([SECRET])
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_realtime(session()) as fake:
        fake.refuse, fake.refusal = 401, "x" * 170 + f" Bearer {SECRET}"  # cut after 22 of 32
        async with following(fake) as h:
            await fake.wait_for(lambda s: s.answer == "refused 401")
            while not h.sleeps:
                await asyncio.sleep(0.001)
    errors = [r.__dict__["error"] for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(e.endswith("Bearer ***") for e in errors), errors


async def test_position_is_saved_only_after_the_batch_was_submitted() -> None:
    async with fake_realtime(session()) as fake, following(fake) as h:
        h.submit.fail = 2  # the store is down for two attempts
        await fake.wait_for(asked_for(H1, live=True, offset="29374031776_0"))
        await h.submit.wait_for(3)
    assert len(h.sleeps) >= 2
    assert h.kv.puts and all(submitted >= 1 for _, submitted in h.kv.puts)
    first = json.loads(h.kv.puts[0][0])
    assert (first["handle"], first["offset"]) == (H1, "0_inf")


async def test_a_long_poll_that_brings_nothing_writes_nothing() -> None:
    """A feed waits in long polls most of its life, each ending in an up-to-date at the same
    handle and offset (only the cursor moves): writing the position after each was a store
    transaction every live_hold of every feed, for nothing."""
    async with (
        fake_realtime(session()[:2], live_hold_s=0.01) as fake,
        following(fake) as h,
    ):
        await fake.wait_for(lambda s: s.answer == "live timeout")
        saved = len(h.kv.puts)
        idle = 1 + fake.served.count("live timeout")
        await fake.wait_for(lambda s: fake.served.count("live timeout") >= idle + 2)
    assert saved >= 1 and len(h.kv.puts) == saved, h.kv.puts


FEED_KEY = f"tags:{TAG}|24h"
LIVE_2_END = "29374031776_0"  # the offset after live #2 (E EXECUTING)


async def stopped_after_live_2(fake: FakeRealtime) -> MemoryKV:
    """Follow until live #2 was submitted and saved (its successor asked for), then stop."""
    async with following(fake) as h:
        await fake.wait_for(asked_for(H1, live=True, offset=LIVE_2_END))
        await h.submit.wait_for(3)
    return h.kv


async def test_a_restart_resumes_from_the_stored_handle_offset_and_rows() -> None:
    """A partial update after the restart (E fails: PK + changed columns) is merged onto the
    stored row of E: the run submitted is whole."""
    async with fake_realtime(extended_session()[:5]) as fake:
        fake.release(4)  # "E fails" has not happened yet
        kv = await stopped_after_live_2(fake)
        assert kv.position(FEED_KEY)["rows"] == 2
        assert set(kv.rows(FEED_KEY)) == {row_key("cmuxjbf30kqkowywawhi1r8yr"), row_key(E_INTERNAL)}
        executing = kv.rows(FEED_KEY)[row_key(E_INTERNAL)]
        before = len(fake.requests)
        async with following(fake, kv=kv) as h:
            live = asked_for(H1, live=True, offset=LIVE_2_END)
            await fake.wait_for(lambda s: live(s) and any(s is r for r in fake.requests[before:]))
            fake.release()  # E fails while relay follows again
            batches = await h.submit.wait_for(1)
    first = fake.requests[before]
    assert (first.query["offset"], first.query["handle"]) == (LIVE_2_END, H1)
    assert "live" not in first.query and first.answer == "up-to-date"
    assert fake.served[before + 1] == "live (E fails)"  # held live, then released
    assert statuses(batches) == [[(RUN_E, "FAILED")]]
    failed = batches[0][0]
    assert failed.taskIdentifier == executing["taskIdentifier"]
    assert failed.createdAt is not None and TAG in (failed.tags or [])
    assert failed.error is not None and failed.error["code"] == "TASK_RUN_STALLED_EXECUTING"
    stored = kv.rows(FEED_KEY)[row_key(E_INTERNAL)]
    assert stored == {**executing, **E_FAILS}
    assert kv.position(FEED_KEY)["offset"] == "29374039000_0"


async def test_a_change_made_while_relay_was_down_arrives_with_the_catch_up() -> None:
    async with fake_realtime(extended_session()[:5]) as fake:
        fake.release(4)
        kv = await stopped_after_live_2(fake)
        fake.release()  # E fails while nobody follows
        before = len(fake.requests)
        async with following(fake, kv=kv) as h:
            batches = await h.submit.wait_for(1)
    first = fake.requests[before]
    assert (first.query["offset"], first.query["handle"]) == (LIVE_2_END, H1)
    assert first.answer == "catch-up from the log"
    assert statuses(batches) == [[(RUN_E, "FAILED")]]
    assert batches[0][0].taskIdentifier is not None


async def test_a_409_after_a_restart_falls_back_to_a_snapshot_and_replaces_the_rows() -> None:
    async with fake_realtime(session()[:4]) as fake:
        kv = await stopped_after_live_2(fake)
        fake.rotate(H2)  # the stored handle is gone
        fake.rows.pop(row_key(E_INTERNAL))  # and E left the shape
        before = len(fake.requests)
        async with following(fake, kv=kv) as h:
            await fake.wait_for(asked_for(H2, live=True))
            batches = await h.submit.wait_for(1)
    answers = [(s.query["offset"], s.query.get("handle"), s.answer) for s in fake.requests[before:]]
    assert answers[:3] == [
        (LIVE_2_END, H1, "409 unknown handle"),
        ("-1", H2, "snapshot"),
        ("0_inf", H2, "up-to-date"),
    ]
    assert statuses(batches) == [[(RUN_A, "FAILED")]]  # a repeat: intake deduplicates it
    assert list(kv.rows(FEED_KEY)) == [row_key("cmuxjbf30kqkowywawhi1r8yr")]
    assert (kv.position(FEED_KEY)["handle"], kv.position(FEED_KEY)["rows"]) == (H2, 1)


async def test_a_run_that_leaves_the_shape_leaves_the_store_and_a_restart_resumes_in_place() -> (
    None
):
    """Electric's delete of a run whose row was saved answers before (the run left the shape)
    deletes its stored row too: the stored rows add up to the position, so a restart resumes
    from the stored offset, not with a new snapshot of every run of the feed."""
    a_key, after = row_key("cmuxjbf30kqkowywawhi1r8yr"), "29374035000_0"
    leaves = Exchange(
        "live (A leaves the shape)",
        LIVE_2_END,
        H1,
        True,
        200,
        {
            "electric-handle": H1,
            "electric-offset": after,
            "electric-cursor": "58785280",
            "electric-up-to-date": "",
        },
        [
            {
                "key": a_key,
                "value": {"id": "cmuxjbf30kqkowywawhi1r8yr"},
                "headers": {"operation": "delete"},
            },
            {"headers": {"control": "up-to-date"}},
        ],
    )
    async with fake_realtime([*session()[:4], leaves]) as fake:
        async with following(fake) as h:
            await fake.wait_for(asked_for(H1, live=True, offset=after))
        assert list(h.kv.rows(FEED_KEY)) == [row_key(E_INTERNAL)]
        assert (h.kv.position(FEED_KEY)["offset"], h.kv.position(FEED_KEY)["rows"]) == (after, 1)
        before = len(fake.requests)
        async with following(fake, kv=h.kv):
            await fake.wait_for(lambda seen: any(seen is r for r in fake.requests[before:]))
    first = fake.requests[before]
    assert (first.query["offset"], first.query.get("handle"), first.answer) == (
        after,
        H1,
        "up-to-date",
    )


@pytest.mark.parametrize(
    ("rows", "count", "reason"),
    [
        ({}, None, "no rows stored with the position (an older relay)"),
        ({"k": "{not json"}, 1, "a stored row cannot be read"),
        ({"k": "[1]"}, 1, "a stored row cannot be read"),
        ({"k": "{}"}, 2, "1 rows stored, the position counts 2"),
    ],
)
async def test_unreadable_stored_rows_fall_back_to_a_snapshot_of_the_stored_handle(
    rows: dict[str, str], count: int | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    stored = Position(H1, "29374025320_0", "58785280", {"isTest": {"type": "bool"}}, count)
    kv = MemoryKV({(f"{ROWS_NAMESPACE}:{FEED_KEY}", k): v for k, v in rows.items()})
    async with fake_realtime(session()) as fake, following(fake, stored=stored, kv=kv) as h:
        await h.submit.wait_for(1)
    first = fake.requests[0]
    assert (first.query["offset"], first.query["handle"], first.answer) == ("-1", H1, "snapshot")
    assert statuses(h.submit.batches[:1]) == [[(RUN_A, "FAILED"), (RUN_E, "EXECUTING")]]
    resumed = [r for r in caplog.records if "resumes" in r.getMessage()]
    assert [r.__dict__["reason"] for r in resumed] == [reason]
    assert "k" not in kv.rows(FEED_KEY) and kv.position(FEED_KEY)["rows"] == 2  # replaced


# ---------------------------------------------------------------- native backend, single run


async def test_native_backend_single_run_ends_crashed_and_the_feed_stops() -> None:
    run_id, script = native_single_run()
    async with (
        fake_realtime(script, native=True) as fake,
        following(fake, RealtimeFeed(run_id=run_id)) as h,
    ):
        await asyncio.wait_for(h.task, 30)  # returns by itself once the run has finished
    submit = h.submit
    assert statuses(submit.batches) == [[(run_id, "EXECUTING")], [(run_id, "CRASHED")]]
    assert_same_run(submit.batches[-1][0], parse_sdk_run(sdk_run("crashed")))
    assert submit.batches[-1][0].error == {
        "type": "INTERNAL_ERROR",
        "code": "TASK_PROCESS_MAYBE_OOM_KILLED",  # SIGKILL, as the SDK says (75a918d)
        "message": "Process exited with code -1 after signal SIGKILL.",
    }
    assert {s.path for s in fake.requests} == {f"/realtime/v1/runs/{run_id}"}
    assert fake.served == ["native snapshot", "native live timeout", "native crashed"]
    assert "createdAt" not in fake.requests[0].query


async def test_a_single_run_feed_that_ended_before_a_restart_asks_for_nothing() -> None:
    run_id, script = native_single_run()
    feed = RealtimeFeed(run_id=run_id)
    async with fake_realtime(script, native=True) as fake:
        async with following(fake, feed) as h:
            await asyncio.wait_for(h.task, 30)
        asked = len(fake.requests)
        async with following(fake, feed, kv=h.kv) as again:  # relay restarted
            await asyncio.wait_for(again.task, 30)  # no long poll on a finished run
        assert len(fake.requests) == asked
        assert again.submit.batches == []


async def test_stop_ends_an_inflight_long_poll_at_once() -> None:
    async with fake_realtime(session()[:2], live_hold_s=30) as fake:
        settings = RealtimeConfig(api_url=fake.url, secret_key=SECRET, feeds=[{"tags": [TAG]}])
        source = RealtimeSource(settings, Recorder(), MemoryKV())
        source.start()
        poll = await fake.wait_for(asked_for(H1, live=True))
        await source.stop()
        assert poll.answer == ""  # stopped while the server still held the poll (for 30 s)


async def test_a_feed_listed_twice_is_followed_once() -> None:
    """Two followers of one feed would double the requests and race on its stored position."""
    async with fake_realtime(session()[:2]) as fake:
        feeds = [{"tags": [TAG, "plan:pro"]}, {"tags": ["plan:pro", TAG]}]
        settings = RealtimeConfig(api_url=fake.url, secret_key=SECRET, feeds=feeds)
        source = RealtimeSource(settings, Recorder(), MemoryKV())
        source.start()
        try:
            await fake.wait_for(lambda seen: seen.answer == "live timeout")
        finally:
            await source.stop()
    assert [s.query["offset"] for s in fake.requests if s.query.get("live") != "true"] == [
        "-1",
        "0_inf",
    ]


def nested(depth: int) -> Any:
    """A value `depth` lists deep (deeper than orjson writes, past 255)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_a_row_nested_too_deep_to_store_does_not_stall_the_feed() -> None:
    """orjson reads JSON 1,024 levels deep but writes only 255: a row nested 300 levels (a
    native backend's metadata object) was read, then its row could not be stored (TypeError):
    the feed started again on that same answer for ever (found by fuzzing Shape beyond its
    parsers). Now it is cut past 64 levels, as a POSTed run is, and the feed moves on."""
    script = extended_session()
    fails = script[4]
    assert fails.name == "live (E fails)"
    value = {**E_FAILS, "metadata": nested(300)}
    script[4] = replace(fails, body=[{**fails.body[0], "value": value}, *fails.body[1:]])
    async with fake_realtime(script) as fake, following(fake) as h:
        await fake.wait_for(asked_for(H1, live=True, offset="29374039000_0"))
        batches = await h.submit.wait_for(4)
    assert statuses(batches)[3] == [(RUN_E, "FAILED")]
    assert h.kv.position(FEED_KEY)["offset"] == "29374039000_0"
    assert not too_deep(h.kv.rows(FEED_KEY)[row_key(E_INTERNAL)])


# ---------------------------------------------------------------- pure pieces


@pytest.mark.parametrize(
    ("failures", "rand", "retry_after", "expected"),
    [
        (1, 1.0, None, 0.1),
        (1, 0.0, None, 0.05),
        (2, 1.0, None, 0.13),
        (3, 1.0, None, 0.169),
        (40, 1.0, None, 10.0),
        (10_000, 1.0, None, 10.0),
        (1, 1.0, 3.0, 3.0),
        (1, 1.0, 10_000.0, 600.0),
    ],
)
def test_retry_delay(
    failures: int, rand: float, retry_after: float | None, expected: float
) -> None:
    assert retry_delay(failures, Timing(), rand, retry_after) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("feed", "key", "path", "params"),
    [
        ({"tags": ["b", "a"]}, "tags:a,b|24h", "/realtime/v1/runs", {"tags": "b,a", "createdAt": "24h"}),
        ({"tags": [], "created_at": "1h"}, "tags:|1h", "/realtime/v1/runs", {"createdAt": "1h"}),
        ({"tags": [], "created_at": "1hr30m"}, "tags:|1hr30m", "/realtime/v1/runs", {"createdAt": "1hr30m"}),
        ({"run_id": "run_x"}, "run:run_x", "/realtime/v1/runs/run_x", {}),
        ({"batch_id": "batch_y"}, "batch:batch_y", "/realtime/v1/batches/batch_y", {}),
    ],
)  # fmt: skip
def test_feed_keys_and_requests(
    feed: dict[str, Any], key: str, path: str, params: dict[str, str]
) -> None:
    made = feed_of(RealtimeFeed.model_validate(feed))
    assert (made.key, made.path, made.params) == (key, path, params)
    assert made.single_run == ("run_id" in feed)


def test_partial_update_merges_into_the_row_and_delete_forgets_it() -> None:
    shape = Shape()
    headers = {"electric-handle": "h", "electric-offset": "1_0"}
    key = row_key("x")
    insert = {
        "key": key,
        "value": {"id": "x", "a": "1", "b": "2"},
        "headers": {"operation": "insert"},
    }
    update = {"key": key, "value": {"id": "x", "b": "3"}, "headers": {"operation": "update"}}
    assert shape.receive(200, headers, json.dumps([insert]).encode()) is None  # no up-to-date
    assert shape.query() == {"log": "full", "offset": "1_0", "handle": "h"}
    body = json.dumps([update, {"headers": {"control": "up-to-date"}}]).encode()
    batch = shape.receive(200, headers, body)
    assert batch is not None and batch.rows == [{"id": "x", "a": "1", "b": "3"}]
    assert shape.query()["live"] == "true"
    delete = {"key": key, "value": {"id": "x"}, "headers": {"operation": "delete"}}
    batch = shape.receive(
        200, {**headers, "electric-up-to-date": ""}, json.dumps([delete]).encode()
    )
    assert batch is not None and batch.rows == [] and shape.rows == {}


def test_a_schema_nested_too_deep_to_store_is_cut() -> None:
    """An electric-schema header nested 300 levels was read (orjson reads 1,024) but the
    position holding it could not be stored (orjson writes 255): a TypeError at every save,
    so the feed started again on that answer for ever. Now it is cut past 64 levels."""
    schema = json.dumps({"status": {"type": "text", "x": nested(300)}})
    headers = {"electric-handle": H1, "electric-offset": "1_0", "electric-schema": schema}
    shape = Shape()
    shape.receive(200, {**headers, "electric-up-to-date": ""}, b"[]")
    assert shape.position.schema["status"]["type"] == "text"
    assert Position.loads(shape.position.dumps()) == shape.position


def test_a_response_that_cannot_be_read_changes_nothing() -> None:
    """A bad message mid-body: neither the changes before it nor the new offset are taken, so
    the retry asks for the same offset and skips nothing after it."""
    shape = Shape(Position("h", "1_0", rows=1), {row_key("x"): {"id": "x", "a": "1"}})
    good = {"key": row_key("x"), "value": {"id": "x", "a": "2"}, "headers": {"operation": "update"}}
    bad = {"key": row_key("y"), "value": None, "headers": {"operation": "insert"}}
    headers = {"electric-handle": "h", "electric-offset": "2_0", "electric-up-to-date": ""}
    with pytest.raises(ShapeError, match="without a value"):
        shape.receive(200, headers, json.dumps([good, bad]).encode())
    assert shape.query()["offset"] == "1_0"
    assert shape.rows == {row_key("x"): {"id": "x", "a": "1"}} and shape.unsaved().put == {}
    batch = shape.receive(200, headers, json.dumps([good]).encode())  # the server answers again
    assert batch is not None and batch.rows == [{"id": "x", "a": "2"}]


def test_unsaved_rows_accumulate_until_saved_and_a_refetch_voids_them_all() -> None:
    headers = {"electric-handle": "h", "electric-offset": "1_0", "electric-up-to-date": ""}

    def change(op: str, ident: str, **value: str) -> dict[str, Any]:
        return {"key": ident, "value": {"id": ident, **value}, "headers": {"operation": op}}

    shape = Shape(Position("h", "0_0", rows=1), {"x": {"id": "x", "a": "1"}})
    assert shape.query() == {"log": "full", "offset": "0_0", "handle": "h"}  # not live
    assert not shape.unsaved()
    shape.receive(200, headers, json.dumps([change("update", "x", a="2")]).encode())
    shape.receive(200, headers, json.dumps([change("insert", "y"), change("delete", "x")]).encode())
    changes = shape.unsaved()  # two batches, not saved in between
    assert (changes.cleared, changes.put, changes.delete) == (False, {"y": {"id": "y"}}, ["x"])
    shape.saved()
    assert not shape.unsaved()
    shape.refetch("h2")
    shape.receive(200, headers, json.dumps([change("insert", "z")]).encode())
    changes = shape.unsaved()
    assert (changes.cleared, changes.put, changes.delete) == (True, {"z": {"id": "z"}}, [])


def test_stored_rows_must_add_up_to_the_position() -> None:
    at = Position("h", "5_0", rows=1)
    assert stored_rows(at, {"k": '{"id": "1"}'}) == ({"k": {"id": "1"}}, "")
    assert stored_rows(Position("h", "5_0", rows=0), {}) == ({}, "")
    assert stored_rows(Position("h", "-1", rows=0), {})[0] is None
    assert stored_rows(at, {})[0] is None
    assert Position.loads(at.dumps()) == at
    assert Position.loads('{"handle": "h", "offset": "5_0", "rows": true}') == Position("h", "5_0")


@pytest.mark.parametrize("text", [None, "", "nope", "[1]", '{"handle": 5}'])
def test_unreadable_stored_positions_start_fresh(text: str | None) -> None:
    position = Position.loads(text)
    assert position is None or (position.handle, position.offset) == (None, "-1")


# ---------------------------------------------------------------- end to end

E_FAILS = {
    "id": E_INTERNAL,
    "status": "COMPLETED_WITH_ERRORS",
    "updatedAt": "2026-08-20 09:15:02.5",
    "completedAt": "2026-08-20 09:15:02.49",
    "usageDurationMs": "31200",
    "costInCents": "0.1054",
    "error": '{"code": "TASK_RUN_STALLED_EXECUTING", "type": "INTERNAL_ERROR"}',
}


def extended_session() -> list[Exchange]:
    """The session with a 7th exchange after live #2: run E fails (a partial update)."""
    script = session()
    fails = Exchange(
        "live (E fails)",
        script[3].headers["electric-offset"],
        H1,
        True,
        200,
        {
            "electric-handle": H1,
            "electric-offset": "29374039000_0",
            "electric-cursor": "58785280",
            "electric-up-to-date": "",
        },
        [
            {"key": row_key(E_INTERNAL), "value": E_FAILS, "headers": {"operation": "update"}},
            {"headers": {"control": "up-to-date"}},
        ],
    )
    return with_exchange(script, 3, fails)


def config(
    fake_url: str, sink_url: str, *, error_backoff: str = "60s", timeout: str = "60s"
) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 50, max_age: 1h, min_backoff: 100ms, max_backoff: 500ms}}
sources:
  realtime:
    api_url: {fake_url}
    secret_key: {SECRET}
    error_backoff: {error_backoff}
    timeout: {timeout}
    feeds:
      - tags: ["{TAG}"]
channels:
  hook: {{type: webhook, url: "{sink_url}/hook"}}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


def alerted(sink: Sink) -> list[str]:
    return [r.json()["run"]["id"] for r in sink.received]


async def settle(sink: Sink, count: int, seconds: float = 0.5) -> list[str]:
    await sink.wait_for(count)
    await asyncio.sleep(seconds)  # time for a duplicate to show up
    return alerted(sink)


async def test_relay_alerts_each_failed_run_of_the_feed_once_in_order(
    relay: RelayFactory, sink: Sink
) -> None:
    async with fake_realtime(extended_session()) as fake:
        fake.faults = [(429, {"Retry-After": "0"}), (500, {})]
        r = await relay(config(fake.url, sink.url))
        await fake.wait_for(asked_for(H2, live=True))  # 409, new snapshot, caught up again
        assert await settle(sink, 2) == [RUN_A, RUN_E]
        assert fake.served[:2] == ["fault 429", "fault 500"]
        error = sink.received[1].json()["error"]
        assert error["code"] == "TASK_RUN_STALLED_EXECUTING"
        status, _ = await r.post(sdk_run("failed"))  # the push source still works beside it
        assert status == 202
        assert await settle(sink, 2, 0.2) == [RUN_A, RUN_E]
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        feed = f'feed="tags:{re.escape(TAG)}\\|[^"]*"'  # tags:TAG|24h, the position key
        rows = re.search(rf"^relay_realtime_rows_total\{{{feed}\}} (\S+)$", metrics, re.M)
        lag = re.search(rf"^relay_realtime_lag_seconds\{{{feed}\}} (\S+)$", metrics, re.M)
        assert rows is not None and float(rows.group(1)) >= 2, metrics
        assert lag is not None and float(lag.group(1)) >= 0  # 0 once a long poll timed out


async def test_a_snapshot_trickled_byte_by_byte_times_out_and_is_asked_again(
    relay: RelayFactory, sink: Sink
) -> None:
    """A server (or a proxy) sending the snapshot one byte every half timeout: no read ever
    timed out and a non-live request had no bound at all, so the feed hung on it for good and
    no failed run of it was alerted. Now it is cut after 5 timeouts, counted as a timeout and
    asked again."""
    async with fake_realtime(session()) as fake:
        fake.faults = [(200, {}, TRICKLE)]  # the first snapshot: ~1 KB, ~50 s at 20 bytes/s
        r = await relay(config(fake.url, sink.url, timeout="500ms"))
        await sink.wait_for(1, timeout=30)  # the bound: 2.5 s, then a retry
        assert fake.served[0] == "trickled initial-snapshot"
        assert alerted(sink) == [RUN_A]
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
    timeouts = rf'^relay_realtime_errors_total\{{feed="{re.escape(FEED_KEY)}",reason="timeout"\}} '
    assert re.search(timeouts, metrics, re.M), metrics


def feed_series(metrics: str, feed: str) -> set[str]:
    """The reasons of relay_realtime_errors_total shown for `feed`, and "rows" if its
    relay_realtime_rows_total is shown."""
    label = re.escape(f'feed="{feed}"')
    errors = re.findall(
        rf'^relay_realtime_errors_total\{{{label},reason="(\w+)"\}} ', metrics, re.M
    )
    rows = re.search(rf"^relay_realtime_rows_total\{{{label}\}} ", metrics, re.M)
    return set(errors) | ({"rows"} if rows else set())


async def test_every_configured_feed_counts_its_errors_from_0(
    relay: RelayFactory, sink: Sink
) -> None:
    """relay_realtime_errors_total (and _rows_total) of a feed appeared with its first failure,
    at 1: increase() saw nothing, and RelayRealtimeFailing missed it. Now every configured feed
    has a series per reason from the start, and one a reload adds from then on."""
    every = {*REALTIME_ERROR_REASONS, "rows"}
    async with fake_realtime(session()) as fake:
        text = config(fake.url, sink.url).replace(
            "    feeds:\n", "    feeds:\n      - run_id: run_zero\n"
        )
        r = await relay(text)
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        assert feed_series(metrics, FEED_KEY) == every, metrics
        assert feed_series(metrics, "run:run_zero") == every
        path = Path(r.service.compiled.loaded.source.filename)
        path.write_text(text.replace("run_zero", "run_added"))
        assert await r.service.reload("SIGHUP") is True
        async with r.http.get(r.url + "/metrics") as resp:
            assert feed_series(await resp.text(), "run:run_added") == every


def test_every_reason_a_feed_fails_for_is_counted_from_0() -> None:
    reasons = {status_reason(status) for status in range(400, 600)}
    reasons |= {error_reason(TimeoutError()), error_reason(OSError()), "other"}
    assert reasons == set(REALTIME_ERROR_REASONS)


def following_gauges(metrics: str, feed: str = FEED_KEY) -> dict[str, float]:
    """relay_realtime_following and _last_up_to_date_timestamp_seconds of `feed`, as shown."""
    label = re.escape(f'feed="{feed}"')
    found = re.findall(
        rf"^relay_realtime_(following|last_up_to_date_timestamp_seconds)\{{{label}\}} (\S+)$",
        metrics,
        re.M,
    )
    return {name: float(value) for name, value in found}


async def test_a_feed_no_longer_followed_leaves_no_lag_behind(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """The lag of a feed this process stopped following (removed by a reload, or its lease
    lost to another replica) was frozen at its last value: a feed dropped while it lagged kept
    RelayRealtimeLagging firing until a restart. While it follows the feed, /metrics says so
    and when it last caught up with the server; nothing of the kind once the feed is gone."""
    lag = re.compile(r"^relay_realtime_lag_seconds\{", re.M)
    started = time.time()
    async with fake_realtime(session()) as fake:
        r = await relay(config(fake.url, sink.url))
        for _ in range(600):
            async with r.http.get(r.url + "/metrics") as resp:
                if lag.search(following := await resp.text()):
                    break
            await asyncio.sleep(0.05)
        gauges = following_gauges(following)
        assert re.search(r"^relay_realtime_rows_held\{[^}]*\} [1-9]", following, re.M), following
        assert gauges.pop("following") == 1, following
        assert started <= gauges.pop("last_up_to_date_timestamp_seconds") <= time.time()
        path = Path(r.service.compiled.loaded.source.filename)
        text = config(fake.url, sink.url)  # the same, without its sources
        path.write_text(text.split("sources:")[0] + "channels:" + text.split("channels:")[1])
        assert await r.service.reload("SIGHUP") is True
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
    assert "relay_realtime_rows_total{" in metrics  # counters stay; the gauges are gone
    assert not lag.search(metrics), metrics
    assert "relay_realtime_rows_held{" not in metrics
    assert following_gauges(metrics) == {}


async def test_metrics_say_which_replica_follows_a_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing said which replica followed a feed, nor whether two did (their clocks apart by
    more than the lease) or one was stuck: now relay_realtime_following is 1 on the follower,
    0 on the others, and moves with the lease; the follower says when it last caught up."""
    monkeypatch.setattr(realtime_module, "LEAD_RENEW_S", 0.05)
    async with fresh_database(shared_server()) as url, fake_realtime(session()) as fake:
        settings = RealtimeConfig(api_url=fake.url, secret_key=SECRET, feeds=[{"tags": [TAG]}])
        replicas = [await replica(url, settings) for _ in range(2)]
        (first, first_metrics, _), (second, second_metrics, _) = replicas
        try:
            first.start()
            await until_shown(first_metrics, {"following": 1.0})
            second.start()
            await asyncio.sleep(0.3)  # its tries to take the lease, every 0.05 s, fail
            await until_shown(second_metrics, {"following": 0.0})
            await until_shown(first_metrics, {"following": 1.0})
            await first.stop()  # hands the lease back: the other takes the feed over
            await until_shown(second_metrics, {"following": 1.0})
            await until_shown(first_metrics, {"following": 0.0})
        finally:
            for source, _, store in replicas:
                await source.stop()
                await store.close()


async def replica(url: str, settings: RealtimeConfig) -> tuple[RealtimeSource, Metrics, Store]:
    """A replica's Realtime source (not started) with the metrics relay serves, on `url`."""
    store, metrics = PostgresStore(url), Metrics()
    await store.open()
    metrics.configured([], [], [FEED_KEY])
    source = RealtimeSource(
        settings,
        Recorder(),
        store,
        observe=metrics.realtime_batch,
        followed=metrics.realtime_followed,
        unfollowed=metrics.realtime_unfollowed,
    )
    return source, metrics, store


async def until_shown(metrics: Metrics, following: dict[str, float]) -> None:
    """Until `metrics` shows its follower's gauges of the feed so: `following`, and with 1 a
    time it caught up."""
    for _ in range(600):
        shown = following_gauges(metrics.render().decode())
        caught_up = shown.pop("last_up_to_date_timestamp_seconds", None)
        if shown == following and (caught_up is not None) == (following["following"] == 1):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{following_gauges(metrics.render().decode())} is not {following}")


async def test_relay_with_a_refused_key_logs_and_keeps_serving(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_realtime(session()) as fake:
        fake.refuse = 401
        r = await relay(config(fake.url, sink.url, error_backoff="100ms"))
        await fake.wait_for(lambda s: s.answer == "refused 401")
        status, body = await r.post(sdk_run("crashed"))
        assert (status, body["notifications"]) == (202, 1)
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        errors = (
            rf'^relay_realtime_errors_total\{{feed="{re.escape(FEED_KEY)}",reason="auth_error"\}} '
        )
        assert re.search(errors, metrics, re.M), metrics
        fake.refuse = None
        assert await settle(sink, 2, 0.2) == ["run_cmaxkfbrjm6jm6gofnnqj1787", RUN_A]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged and all(e.__dict__.get("status") == 401 for e in logged)
    assert all(SECRET not in e.getMessage() for e in caplog.records)


async def test_kill_9_between_exchanges_resumes_without_duplicate_or_miss(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    script = extended_session()[:5]  # up to "E fails"; no 409 here
    async with fake_realtime(script, live_hold_s=0.5) as fake:
        fake.release(4)  # E's failure has not happened yet
        proc = relay_process(config(fake.url, sink.url))
        await asyncio.to_thread(proc.start)
        assert await settle(sink, 1, 0.3) == [RUN_A]
        # the live request after live #2 means that batch was submitted and its position saved
        await fake.wait_for(asked_for(H1, live=True, offset="29374031776_0"))
        proc.kill()
        before = len(fake.requests)
        fake.release()  # E fails while relay is down
        await asyncio.to_thread(proc.start)
        assert await settle(sink, 2) == [RUN_A, RUN_E]
        restart = fake.requests[before]
        assert (restart.query["offset"], restart.query["handle"]) == (LIVE_2_END, H1)
        assert restart.answer == "catch-up from the log"  # E's partial update, merged
        run = sink.received[1].json()["run"]
        assert (run["status"], run["taskIdentifier"]) == ("FAILED", "sync-customer-data")
        resumed = [entry for entry in proc.logs if entry.get("feed") == FEED_KEY]
        assert any("resumes from its stored position" in entry["msg"] for entry in resumed)
        assert all(SECRET not in json.dumps(entry) for entry in proc.logs)


async def test_kill_9_then_409_resnapshots_without_a_duplicate_alert(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    async with fake_realtime(session()[:4], live_hold_s=0.5) as fake:
        proc = relay_process(config(fake.url, sink.url))
        await asyncio.to_thread(proc.start)
        assert await settle(sink, 1, 0.3) == [RUN_A]
        await fake.wait_for(asked_for(H1, live=True, offset=LIVE_2_END))
        proc.kill()
        fake.rotate(H2)  # Electric dropped the shape while relay was down
        before = len(fake.requests)
        await asyncio.to_thread(proc.start)
        await fake.wait_for(asked_for(H2, live=True))  # 409, snapshot, caught up: submitted
        assert await settle(sink, 1) == [RUN_A]  # A's FAILED in the snapshot fires nothing
        answers = [s.answer for s in fake.requests[before : before + 3]]
        assert answers == ["409 unknown handle", "snapshot", "up-to-date"]


async def test_relay_rides_out_broken_answers_and_alerts_once(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty 200, an HTML page, cut JSON (three unreadable answers: a new snapshot), a body
    the server stops sending, a 429 and a 503 on the live feed; the failure after them alerts
    once, and the snapshot's repeat of run A none."""
    caplog.set_level(logging.INFO, logger="relay")
    electric = {"electric-handle": H1, "electric-offset": LIVE_2_END, "electric-cursor": "1"}
    async with fake_realtime(extended_session()[:5]) as fake:
        fake.release(4)  # E's failure has not happened yet
        await relay(config(fake.url, sink.url))
        assert await settle(sink, 1, 0.3) == [RUN_A]
        await fake.wait_for(asked_for(H1, live=True, offset=LIVE_2_END))
        fake.faults = [
            (200, electric, b""),
            (200, {"content-type": "text/html"}, b"<html>Sign in</html>"),
            (200, {**electric, "electric-up-to-date": ""}, b'[{"key": "x", "val'),
            (200, electric, CUT),
            (429, {"Retry-After": "0"}),
            (503, {}),
        ]
        await fake.wait_for(lambda seen: seen.answer == "fault 503")
        fake.release()
        assert await settle(sink, 2) == [RUN_A, RUN_E]
        assert [a for a in fake.served if a.startswith("fault")] == ["fault 200"] * 4 + [
            "fault 429",
            "fault 503",
        ]
        assert "snapshot" in fake.served[fake.served.index("fault 200") :]
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def test_the_rows_of_a_feed_removed_from_the_config_are_forgotten(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A feed keeps the raw row of every run in its shape: those of each run id, batch or tag
    set an operator once followed stayed in the store for good, months after the feed went."""
    old = tmp_path / "relay.db"
    store = SQLiteStore(old)
    await store.open()
    gone = "run:run_cm0ldfeed0000000000000001"
    rows = [(f"{ROWS_NAMESPACE}:{gone}", f'"{i}"', "{}") for i in range(3)]
    await store.kv_write(KvWrite(put=[(NAMESPACE, gone, "{}"), *rows]), 100.0)
    await store.close()
    async with fake_realtime(session()) as fake:
        r = await relay(config(fake.url, sink.url))
        served = r.service.store
        for _ in range(600):  # until the configured feed saved its position (it stays)
            if list(await served.kv_list(NAMESPACE)) == [FEED_KEY]:
                break
            await asyncio.sleep(0.05)
        assert list(await served.kv_list(NAMESPACE)) == [FEED_KEY]
        assert await served.kv_list(f"{ROWS_NAMESPACE}:{gone}") == {}


async def test_a_feed_another_replica_follows_is_not_forgotten_by_one_configured_without_it() -> (
    None
):
    """Replicas run different configs during a rollout. One without a feed deleted, in its
    retention pass (at its start, then every 10 minutes), the position and rows of that feed
    while another replica followed it: the next follower (a restart, a takeover) read a whole
    new snapshot instead of the changes since, and missed the states runs passed through."""
    async with fresh_database(shared_server()) as url, fake_realtime(session()) as fake:
        leader, other = PostgresStore(url), PostgresStore(url)
        await leader.open()
        await other.open()
        settings = RealtimeConfig(
            api_url=fake.url, secret_key=SECRET, feeds=[RealtimeFeed(tags=[TAG])]
        )
        source = RealtimeSource(settings, Recorder(), leader)
        source.start()
        try:
            for _ in range(600):  # until the follower saved its position and rows
                if await other.kv_get(NAMESPACE, FEED_KEY) is not None:
                    break
                await asyncio.sleep(0.05)
            rows = await other.kv_list(f"{ROWS_NAMESPACE}:{FEED_KEY}")
            assert rows
            assert await forget_removed_feeds(other, None, time.time()) == []
            assert await other.kv_get(NAMESPACE, FEED_KEY) is not None
            assert set(rows) <= set(await other.kv_list(f"{ROWS_NAMESPACE}:{FEED_KEY}"))
        finally:
            await source.stop()  # hands the lease back: nobody follows the feed any more
            await leader.close()
        try:  # a lease handed back is a handover: the feed is forgotten only an hour later
            assert await forget_removed_feeds(other, None, time.time()) == []
            later = time.time() + FORGET_AFTER_S
            assert await forget_removed_feeds(other, None, later) == [FEED_KEY]
            assert await other.kv_list(NAMESPACE) == {}
        finally:
            await other.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each engine."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            opened: Store = SQLiteStore(tmp_path / "relay.db")
        else:
            opened = PostgresStore(await stack.enter_async_context(fresh_database(shared_server())))
        await opened.open()
        stack.push_async_callback(opened.close)
        yield opened


async def test_a_feed_in_a_handover_is_not_forgotten_by_a_replica_configured_without_it(
    store: Store,
) -> None:
    """Its follower killed (its lease ends LEAD_TTL_S after the last renewal) or stopped (the
    lease handed back), the feed is free until another replica takes it over, seconds later.
    A replica without the feed found the lease free in that gap and forgot the feed: its next
    follower read a whole new snapshot and missed the states runs passed through meanwhile."""
    name, rows = lease_name(FEED_KEY), f"{ROWS_NAMESPACE}:{FEED_KEY}"
    await store.kv_write(KvWrite(put=[(NAMESPACE, FEED_KEY, "{}"), (rows, "r", "{}")]), 0.0)
    t = 5000.0
    assert await store.try_lead(name, "killed", LEAD_TTL_S, t)  # its last renewal
    for at in (t + LEAD_TTL_S, t + LEAD_TTL_S + LEAD_RENEW_S, t + LEAD_TTL_S + 600.0):
        assert await forget_removed_feeds(store, None, at) == []
    t += LEAD_TTL_S + 600.0
    assert await store.try_lead(name, "stopped", LEAD_TTL_S, t)
    assert await store.try_lead(name, "stopped", 0.0, t + 5.0)  # handed back
    for at in (t + 5.0, t + 15.0, t + FORGET_AFTER_S):
        assert await forget_removed_feeds(store, None, at) == []
    assert await store.kv_list(rows) == {"r": "{}"}
    # nobody took it over: a feed removed from every replica's config is forgotten in time
    assert await forget_removed_feeds(store, None, t + 5.0 + FORGET_AFTER_S) == [FEED_KEY]
    assert (await store.kv_list(NAMESPACE), await store.kv_list(rows)) == ({}, {})


async def test_electric_s_catch_up_with_nothing_new_goes_live_without_a_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The non-live catch-up after a snapshot, a restart or a 409 comes back at once with a bare
    up-to-date: that is Electric, not a server without long polls. It was paced (up to 0.5 s
    before going live, each time) and logged as a server that does not hold requests."""
    caplog.set_level(logging.INFO, logger="relay")
    async with fake_realtime(session()[:2]) as fake, following(fake) as fresh:
        await fake.wait_for(asked_for(H1, live=True))
    assert [s.answer for s in fake.requests[:2]] == ["initial-snapshot", "catch-up (non-live)"]
    async with fake_realtime(session()[:4]) as fake:
        kv = await stopped_after_live_2(fake)
        before = len(fake.requests)
        live = asked_for(H1, live=True, offset=LIVE_2_END)
        async with following(fake, kv=kv) as restarted:
            await fake.wait_for(lambda s: live(s) and any(s is r for r in fake.requests[before:]))
        fake.rotate(H2)
        async with following(fake, kv=kv) as refetched:
            await fake.wait_for(asked_for(H2, live=True))
    answers = [s.answer for s in fake.requests[before:]]
    assert answers[0] == "up-to-date" and answers[-3:-1] == ["snapshot", "up-to-date"]
    assert fresh.sleeps == restarted.sleeps == refetched.sleeps == []
    assert not [r for r in caplog.records if "no long poll" in r.getMessage()]


class FailingLeases(MemoryKV):
    """A store whose lease renewals fail (as when PostgreSQL is down), or are taken."""

    def __init__(self, failure: StoreUnavailable | None) -> None:
        super().__init__()
        self.failure, self.renewals = failure, 0

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        self.renewals += 1
        if self.renewals == 1:
            return await super().try_lead(name, owner, ttl_s, now)
        if self.failure is not None:
            raise self.failure
        return False


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (None, "feed lease lost: another replica follows the feed"),
        (
            StoreUnavailable("connection refused"),
            "feed lease not renewed: store not reachable; following again once it is",
        ),
    ],
)
async def test_a_lease_not_renewed_says_whether_the_store_answered(
    failure: StoreUnavailable | None,
    said: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'feed lease lost' was said when PostgreSQL was down as when another replica took it."""
    monkeypatch.setattr(realtime_module, "LEAD_RENEW_S", 0.05)
    async with fake_realtime(session()[:2], live_hold_s=30) as fake:
        settings = RealtimeConfig(api_url=fake.url, secret_key=SECRET, feeds=[{"tags": [TAG]}])
        store = FailingLeases(failure)
        source = RealtimeSource(settings, Recorder(), store)
        source.start()
        try:
            for _ in range(200):
                if store.renewals >= 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
        finally:
            await source.stop()
    lines = [r for r in caplog.records if r.name == "relay.realtime" and "lease" in r.message]
    assert lines and lines[0].getMessage() == said
    assert getattr(lines[0], "error", None) == (None if failure is None else "connection refused")
