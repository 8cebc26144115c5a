"""Silences: matchers, the API and CLI, and what they mute — recorded, never sent, never resent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from relay import dispatch
from relay.cli import main
from relay.configure import compile_config, load
from relay.durations import NOT_A_DURATION
from relay.errors import InputError, StoreUnavailable
from relay.model import SILENCE_MATCHERS, Silence
from relay.service import Service
from relay.settings import Settings
from relay.silences import index as silence_index
from relay.silences.cache import RELOAD_S, SilenceCache
from relay.silences.index import SilenceIndex, fits, silenced_by
from relay.silences.listing import parse_filters
from relay.silences.matchers import HINTS, cli_matchers, matcher_warnings, parse_matchers
from relay.silences.shapes import new_silence, parse_time, silence_view
from relay.statuses import EVENT_STATUSES, KNOWN_STATUSES
from relay.store import _pg_pool
from relay.store.sqlite import SQLiteStore
from tests.conftest import RelayFactory, Sink, run_cli_in_process, sdk_run, status
from tests.pg import fresh_database, shared_server

NOW = 1_800_000_000.0


def silence(**matchers: Any) -> Silence:
    return new_silence(parse_matchers(matchers), ends_at=NOW + 3600, now=NOW)


def muted(s: Silence, now: float = NOW + 1, **fields: Any) -> bool:
    base: dict[str, Any] = {
        "rule": "r",
        "channel": "c",
        "task": "billing/charge",
        "tags": ["env:prod"],
        "status": "FAILED",
        "event": "run",
    }
    base.update(fields)
    found = silenced_by([s], now, **base)
    assert silenced_by(SilenceIndex([s]), now, **base) == found  # a send's lookup agrees
    return found == s.id


@pytest.mark.parametrize(
    ("matchers", "fields", "expected"),
    [
        ({"task": "billing/*"}, {}, True),
        ({"task": "billing/*"}, {"task": "email/send"}, False),
        ({"task": ["email/*", "billing/*"]}, {}, True),
        ({"tag": "env:prod"}, {}, True),
        ({"tag": "env:prod"}, {"tags": ["env:stg"]}, False),
        ({"status": "failure"}, {"status": "CRASHED"}, True),
        ({"status": "FAILED"}, {"status": "COMPLETED"}, False),
        ({"status": "COMPLETED_WITH_ERRORS"}, {"status": "FAILED"}, True),
        ({"rule": "r", "channel": "c"}, {}, True),
        ({"rule": "r", "channel": "other"}, {}, False),
        ({"event": "deployment.failed"}, {}, False),
        ({"task": "billing/*", "tag": "env:stg"}, {}, False),  # every matcher must fit
        # a Realtime row's v3 name fits too (SPEC §2: both vocabularies), today's as before
        ({"status": "INTERRUPTED"}, {"v3_status": "INTERRUPTED"}, True),
        ({"status": "INTERRUPTED"}, {}, False),
        ({"status": ["FAILED", "INTERRUPTED"]}, {"v3_status": "INTERRUPTED"}, True),
        ({"status": "frozen"}, {"status": "WAITING", "v3_status": "FROZEN"}, True),
        ({"status": "FAILED"}, {"v3_status": "INTERRUPTED"}, True),
    ],
)
def test_matchers(matchers: dict[str, Any], fields: dict[str, Any], expected: bool) -> None:
    assert muted(silence(**matchers), **fields) is expected


def test_states_over_time() -> None:
    s = new_silence(parse_matchers({"task": "x"}), starts_at=NOW + 10, ends_at=NOW + 20, now=NOW)
    assert [s.state(t) for t in (NOW, NOW + 10, NOW + 19.9, NOW + 20)] == [
        "pending",
        "active",
        "active",
        "expired",
    ]
    assert not muted(s, now=NOW + 5, task="x") and muted(s, now=NOW + 15, task="x")
    assert not muted(s, now=NOW + 25, task="x")


async def test_the_cache_reads_the_silences_again_after_the_clock_stepped_back(
    sqlite_store: SQLiteStore,
) -> None:
    """A wall clock set back (NTP, a VM resumed) kept the silences read before it for as long
    as the step: a silence created, or one expired, meanwhile was not seen for an hour."""
    cache = SilenceCache(sqlite_store.silences)
    assert await cache.current(NOW) == []
    silence = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 7200, now=NOW - 3600)
    await sqlite_store.add_silence(silence)
    assert [s.id for s in await cache.current(NOW - 3600)] == [silence.id]


async def test_the_cache_keeps_its_last_read_when_a_reload_after_invalidate_fails(
    sqlite_store: SQLiteStore,
) -> None:
    """invalidate() (a silence added over HTTP) forgot that the silences had been read: a
    reload failing then raised into intake (503) and delivery, as if none had ever been read."""
    silence = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 7200, now=NOW)
    await sqlite_store.add_silence(silence)
    cache = SilenceCache(sqlite_store.silences)
    assert [s.id for s in await cache.current(NOW)] == [silence.id]
    cache.invalidate()
    await sqlite_store.close()  # every read now raises StoreUnavailable
    assert [s.id for s in await cache.current(NOW + 1)] == [silence.id]
    with pytest.raises(StoreUnavailable):  # never read: not knowing is not "no silence"
        await SilenceCache(sqlite_store.silences).current(NOW + 1)


async def test_callers_of_a_stale_cache_share_one_reload(sqlite_store: SQLiteStore) -> None:
    """Each delivery and intake that found the cache stale read and parsed every silence
    itself: 50 channels' sends with 1,000 silences held the event loop for seconds."""
    loads: list[float] = []

    async def load(now: float) -> list[Silence]:
        loads.append(now)
        return await sqlite_store.silences(now)

    silence = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 7200, now=NOW)
    await sqlite_store.add_silence(silence)
    cache = SilenceCache(load)
    answers = await asyncio.gather(*(cache.current(NOW) for _ in range(50)))
    assert len(loads) == 1 and cache.reloads == 1
    assert all([s.id for s in answer] == [silence.id] for answer in answers)


async def test_a_reload_under_way_when_invalidated_is_not_kept(
    sqlite_store: SQLiteStore,
) -> None:
    """A silence added while a reload was under way: the next call reads again (it sees it)."""
    cache = SilenceCache(sqlite_store.silences)
    first = asyncio.ensure_future(cache.current(NOW))
    await asyncio.sleep(0)  # the reload has begun, before the silence exists
    silence = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 7200, now=NOW)
    await sqlite_store.add_silence(silence)
    cache.invalidate()
    assert [s.id for s in await cache.current(NOW)] == [silence.id]
    await first
    assert [s.id for s in await cache.current(NOW)] == [silence.id]
    assert cache.reloads == 2


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (None, "matchers"),
        ({}, "matchers"),
        ({"bogus": "x"}, "matchers.bogus"),
        ({"task": ""}, "matchers.task"),
        ({"task": []}, "matchers.task"),
        ({"task": [1]}, "matchers.task[0]"),
        ({"task": ["x", ""]}, "matchers.task[1]"),
        ({"task": ["x"] * 101}, "matchers.task"),
        ({"event": ["run", "deploy"]}, "matchers.event[1]"),  # a typo would silence nothing
    ],
)
def test_bad_matchers(raw: Any, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_matchers(raw)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ({"task": "x" * 1001}, "at most 1000 characters"),  # was "expected non-empty strings"
        ({"tag": ["x"] * 101}, "at most 100 strings"),
    ],
)
def test_a_matcher_over_its_limits_is_told_the_limit(raw: Any, said: str) -> None:
    with pytest.raises(InputError, match=said):
        parse_matchers(raw)


def test_a_matcher_at_its_limits_is_taken() -> None:
    """The limits are inclusive: 100 values, each of 1000 characters, make a silence."""
    long, many = "x" * 1000, [f"t{n}" for n in range(100)]
    assert parse_matchers({"task": long, "tag": many}) == {"task": (long,), "tag": tuple(many)}


@pytest.mark.parametrize(("comment", "created_by"), [("c\x00", ""), ("", "c\x00")])
def test_a_nul_in_the_comment_or_author_is_refused(comment: str, created_by: str) -> None:
    """PostgreSQL text cannot hold NUL: the 201 said comment "c\\u0000", every later read of
    that silence "c\\ufffd" (SQLite kept it). Refused on every engine, naming the field."""
    with pytest.raises(InputError, match="NUL") as caught:
        m = parse_matchers({"task": "x"})
        new_silence(m, ends_at=NOW + 5, now=NOW, comment=comment, created_by=created_by)
    assert caught.value.field == ("comment" if comment else "created_by")


@pytest.mark.parametrize(
    ("starts_at", "ends_at", "message"),
    [
        (NOW - 60, NOW, "must be in the future"),  # it ends as it is made: already over
        (None, NOW, "must be in the future"),
        (NOW + 60, NOW + 60, "must be after starts_at"),  # it would last no time
    ],
)
def test_a_silence_that_would_mute_nothing_is_refused(
    starts_at: float | None, ends_at: float, message: str
) -> None:
    """Its end is not in it (Silence.state: expired at ends_at): one ending now, or where it
    starts, mutes nothing and is refused at the edge, with the field that is wrong."""
    with pytest.raises(InputError, match=message):
        new_silence(parse_matchers({"task": "x"}), starts_at=starts_at, ends_at=ends_at, now=NOW)


@pytest.mark.parametrize(
    ("created_at", "kept"), [(None, NOW), (NOW - 3600, NOW - 3600), (NOW + 3600, NOW)]
)
def test_a_silence_was_created_no_later_than_now(created_at: float | None, kept: float) -> None:
    """An imported or updated silence keeps its created_at, but none from the future (a
    clock ahead where it was made): creation order pages the listing."""
    m = parse_matchers({"task": "x"})
    silence = new_silence(m, ends_at=NOW + 7200, now=NOW, created_at=created_at)
    assert silence.created_at == kept


def test_bad_times() -> None:
    m = parse_matchers({"task": "x"})
    with pytest.raises(InputError, match="after starts_at"):
        new_silence(m, starts_at=NOW + 10, ends_at=NOW + 5, now=NOW)
    with pytest.raises(InputError, match="future"):
        new_silence(m, starts_at=NOW - 100, ends_at=NOW - 1, now=NOW)
    with pytest.raises(InputError, match="must be in the future"):
        new_silence(m, ends_at=NOW - 1, now=NOW)  # no starts_at to be after
    last = parse_time("9999-12-31T23:59:59.999Z", "x")
    assert silence_view(new_silence(m, ends_at=last, now=NOW), NOW)["ends_at"].startswith("9999")
    with pytest.raises(InputError, match="out of range"):  # `--start 9999-12-31 -d 2d` broke
        new_silence(m, starts_at=last - 86400, ends_at=last + 86400, now=NOW)  # every listing
    stored = Silence("sil_old", {"task": ("x",)}, last - 86400, last + 86400, NOW)  # by then
    assert silence_view(stored, NOW)["ends_at"].startswith("9999-12-31T23:59:59.")
    with pytest.raises(InputError):
        parse_time("tomorrow", "ends_at")
    utc = parse_time("2026-11-28T18:00:00Z", "x")
    assert utc == parse_time("2026-11-28T18:00:00", "x") == parse_time("2026-11-28t18:00:00z", "x")
    assert utc == parse_time("2026-11-28T20:00:00+02:00", "x")


CONFIG = """\
defaults:
  retry: {{max_attempts: 5, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


def failed(task: str, run_id: str) -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=run_id, taskIdentifier=task)
    return run


async def api(r: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with r.http.request(method, r.url + path, data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_counts(r: Any, **want: int) -> dict[str, int]:
    for _ in range(600):
        counts = await r.service.store.counts()
        if all(counts[k] == v for k, v in want.items()):
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"counts never became {want}: {counts}")


async def test_a_silence_mutes_one_task_and_not_another(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    code, made = await api(
        r,
        "POST",
        "/v1/silences",
        {
            "matchers": {"task": "billing/*"},
            "ends_at": "2099-01-01T00:00:00Z",
            "comment": "maintenance",
            "created_by": "ops",
        },
    )
    assert code == 201 and made["id"].startswith("sil_") and made["state"] == "active"
    await r.post([failed("billing/charge", "run_muted"), failed("email/send", "run_loud")])
    [got] = await sink.wait_for(1)
    assert got.json()["run"]["id"] == "run_loud"
    await wait_counts(r, sent=1, muted=1)
    # expiring the silence early does not resend what it muted
    code, expired = await api(r, "DELETE", f"/v1/silences/{made['id']}")
    assert code == 200 and expired["state"] == "expired"
    await r.post(failed("billing/charge", "run_muted"))  # the same update again: fires nothing
    await r.post(failed("billing/charge", "run_after"))  # a new failure after the silence: sent
    await sink.wait_for(2)
    await asyncio.sleep(0.3)
    assert [g.json()["run"]["id"] for g in sink.received] == ["run_loud", "run_after"]


async def test_a_silence_on_a_v3_status_mutes_a_realtime_row_in_it(
    relay: RelayFactory, sink: Sink
) -> None:
    """A raw row INTERRUPTED reads as today's FAILED: a silence on INTERRUPTED mutes it all the
    same, as a rule on INTERRUPTED matches it; before, only a silence on FAILED did."""
    r = await relay(CONFIG.format(url=sink.url))
    body = {"matchers": {"status": "INTERRUPTED"}, "ends_at": "2099-01-01T00:00:00Z"}
    assert (await api(r, "POST", "/v1/silences", body))[0] == 201
    row = {"friendlyId": "run_row", "taskIdentifier": "billing/charge", "status": "INTERRUPTED"}
    await r.post([row, failed("email/send", "run_loud")])
    [got] = await sink.wait_for(1)
    assert got.json()["run"]["id"] == "run_loud"
    await wait_counts(r, sent=1, muted=1)


INHIBIT_ON_V3 = (
    CONFIG
    + """\
inhibit_rules:
  - name: infra-down
    source_match: {{task: "infra/*", status: INTERRUPTED}}
    target_match: {{task: "billing/*"}}
    duration: 10m
"""
)


async def test_an_inhibit_rule_on_a_v3_status_opens_on_a_realtime_row_in_it(
    relay: RelayFactory, sink: Sink
) -> None:
    """An inhibit rule's matchers are a silence's: a source on INTERRUPTED opens its window on a
    raw row INTERRUPTED (today's FAILED) too; before, only a source on FAILED did."""
    r = await relay(INHIBIT_ON_V3.format(url=sink.url))
    row = {"friendlyId": "run_src", "taskIdentifier": "infra/db", "status": "INTERRUPTED"}
    await r.post(row)
    [source] = await sink.wait_for(1)
    assert source.json()["run"]["id"] == "run_src"
    await r.post([failed("billing/charge", "run_inhibited"), failed("email/send", "run_loud")])
    await sink.wait_for(2)
    await wait_counts(r, sent=2, muted=1)
    assert [g.json()["run"]["id"] for g in sink.received] == ["run_src", "run_loud"]


async def test_a_silence_added_while_queued_mutes_before_sending(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """A row a silence covers by its turn is marked muted and that is the end of it: no
    "delivery failed unexpectedly" (and no release of the row a lease later) for a send that
    was never to be made."""
    caplog.set_level(logging.INFO, logger="relay")
    sink.responses = [status(503)] * 3  # the first delivery fails and waits in the outbox
    r = await relay(
        CONFIG.format(url=sink.url).replace("100ms, max_backoff: 200ms", "1s, max_backoff: 2s")
    )
    await r.post(failed("billing/charge", "run_queued"))
    await sink.wait_for(3)
    code, _ = await api(
        r,
        "POST",
        "/v1/silences",
        {"matchers": {"rule": "failures"}, "ends_at": "2099-01-01T00:00:00Z"},
    )
    assert code == 201
    await wait_counts(r, muted=1, pending=0)
    await r.service.store.counts()  # a store round trip: the muting unit has ended by then
    assert len(sink.received) == 3
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []
    assert "notification muted by a silence" in [rec.getMessage() for rec in caplog.records]


async def test_a_silence_added_from_the_cli_mutes_as_soon_as_it_returns(
    relay: RelayFactory, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running relay, which has just read its silences for a first failure, mutes the next
    one posted right after `relay silence add` returns (it used to send it for up to a second)."""
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(failed("billing/charge", "run_before"))
    await sink.wait_for(1)
    monkeypatch.setenv("RELAY_STORE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    add = ["silence", "add", "task=billing/*", "-d", "1h"]
    assert await asyncio.get_running_loop().run_in_executor(None, main, add) == 0
    await r.post(failed("billing/charge", "run_after"))
    counts = await wait_counts(r, pending=0)
    assert (counts["sent"], counts["muted"]) == (1, 1)


async def test_a_silence_expired_from_the_cli_lets_through_what_follows_at_once(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """As `silence add`, `silence expire` returns once the running relay has read the change
    (also when another id it was given is unknown): the failure posted right after it is sent,
    not muted by the silence the relay still held."""
    r = await relay(CONFIG.format(url=sink.url))
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = await asyncio.to_thread(run_cli_in_process, "silence", "add", "task=billing/*", env=env)
    await r.post(failed("billing/charge", "run_during"))
    await wait_counts(r, pending=0)
    ident = added.stdout.strip()
    expired = await asyncio.to_thread(
        run_cli_in_process, "silence", "expire", ident, "sil_nope", env=env
    )
    assert expired.returncode == 1, expired.stderr
    await r.post(failed("billing/charge", "run_after"))
    counts = await wait_counts(r, pending=0)
    assert (counts["sent"], counts["muted"]) == (1, 1)


async def test_silence_api_errors_and_listing(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.http")
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    for body, field in [
        ({"ends_at": "2099-01-01T00:00:00Z"}, "matchers"),
        ({"matchers": {"task": "x"}}, "ends_at"),
        ({"matchers": {"nope": "x"}, "ends_at": "2099-01-01T00:00:00Z"}, "matchers.nope"),
        ({"matchers": {"task": "x"}, "ends_at": "2000-01-01T00:00:00Z"}, "ends_at"),
        ({"matchers": {"task": "x"}, "ends_at": "soon"}, "ends_at"),
        ({"matchers": {"task": "x"}, "ends_at": "2099-01-01T00:00:00Z", "extra": 1}, "extra"),
    ]:
        code, answer = await api(r, "POST", "/v1/silences", body)
        assert (code, answer.get("field")) == (400, field), (body, answer)
    for data, field, message in [
        (b"{nope", "", "invalid JSON: "),  # the body as a whole
        (b"", "", "empty body; expected a JSON object"),
        (b"[]", "", "expected a JSON object"),
        (b'{"matchers": {"task": ["x", 3]}, "ends_at": "1h"}', "matchers.task[1]", "string"),
        (b'{"matchers": {"task": "x"}, "ends_at": 1e400}', "ends_at", "number out of range"),
    ]:
        async with r.http.post(r.url + "/v1/silences", data=data) as resp:
            answer = await resp.json()
            assert (resp.status, answer["field"]) == (400, field), (data, answer)
            assert message in answer["error"], (data, answer)
    assert (await api(r, "DELETE", "/v1/silences/sil_nope"))[0] == 404
    code, answer = await api(r, "GET", "/v1/silences/sil_nope")
    assert (code, answer["field"]) == (404, "id")
    start = "2099-01-01T00:00:00Z"
    code, pending = await api(
        r,
        "POST",
        "/v1/silences",
        {"matchers": {"task": "x"}, "starts_at": start, "ends_at": "2099-01-02T00:00:00Z"},
    )
    assert code == 201 and pending["state"] == "pending"
    code, listed = await api(r, "GET", "/v1/silences")
    assert [s["id"] for s in listed["silences"]] == [pending["id"]]
    assert await api(r, "GET", f"/v1/silences/{pending['id']}") == (200, pending)
    await api(r, "DELETE", f"/v1/silences/{pending['id']}")
    assert (await api(r, "GET", "/v1/silences"))[1]["silences"] == []
    code, one = await api(r, "GET", f"/v1/silences/{pending['id']}")  # expired: still there
    assert (code, one["state"]) == (200, "expired")
    assert len((await api(r, "GET", "/v1/silences?expired=1"))[1]["silences"]) == 1
    said = [(rec.getMessage(), rec.__dict__.get("silence")) for rec in caplog.records]
    assert said.count(("silence created", pending["id"])) == 1  # an audit trail in the log
    assert said.count(("silence expired", pending["id"])) == 1


async def test_silence_api_answers_an_alertmanager_silence_with_relays_names(
    relay: RelayFactory,
) -> None:
    """A script that posted silences to Alertmanager, pointed at relay, got `unknown field`
    (`endsAt`) and, renamed, "expected an object" for its list of matchers: nothing said
    what relay's names and shapes are. The 400s say it now, and nothing is added."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    matchers = [{"name": "task", "value": "billing/*", "isRegex": False, "isEqual": True}]
    alertmanagers = {"matchers": matchers, "endsAt": "2099-01-01T00:00:00Z", "createdBy": "a"}
    code, answer = await api(r, "POST", "/v1/silences", alertmanagers)
    assert (code, answer["field"]) == (400, "createdBy")
    assert answer["error"] == (
        "unknown field; use matchers, starts_at, ends_at, comment, created_by"
        " (Alertmanager's startsAt, endsAt and createdBy are written so here)"
    )
    renamed = {"matchers": matchers, "ends_at": "2099-01-01T00:00:00Z", "created_by": "a"}
    code, answer = await api(r, "POST", "/v1/silences", renamed)
    assert (code, answer["field"]) == (400, "matchers")
    assert answer["error"].endswith(
        "(name to value or values, not Alertmanager's list of {name, value})"
    )
    assert (await api(r, "GET", "/v1/silences"))[1]["silences"] == []


async def test_silence_api_takes_the_first_and_last_instants_and_refuses_past_them(
    relay: RelayFactory,
) -> None:
    """`ends_at: 9999-12-31T23:59:59.999999Z`, a valid instant, was refused as "out of range":
    as epoch seconds it rounded up to year 10000. Years 1 and 9999 are taken to their last
    microsecond; an instant outside them is a 400 naming the field, never a 500."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    first, last = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"
    body = {"matchers": {"task": "x"}, "starts_at": first, "ends_at": last}
    code, made = await api(r, "POST", "/v1/silences", body)
    assert code == 201, made
    assert (made["starts_at"], made["ends_at"]) == (
        "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
    )
    assert (await api(r, "GET", "/v1/silences"))[1]["silences"] == [made]
    for field, when in [
        ("ends_at", "9999-12-31T23:59:59.999999-00:01"),  # 00:00:59 in year 10000, UTC
        ("ends_at", "10000-01-01T00:00:00Z"),
        ("starts_at", "0001-01-01T00:00:00+00:01"),  # 23:59 in year 0, UTC
        ("starts_at", "0000-12-31T23:59:59Z"),
    ]:
        code, answer = await api(r, "POST", "/v1/silences", {**body, field: when})
        assert (code, answer.get("field")) == (400, field), (when, answer)


async def test_silence_api_lists_by_alertmanagers_filters_a_page_at_a_time(
    relay: RelayFactory,
) -> None:
    """GET /v1/silences gave every silence at once (60,000 expired ones for `expired=true`):
    `filter` (repeatable, Alertmanager's API v2 matchers), `limit` and `after` now narrow it."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    made = []
    for n in range(5):
        tag = "env:prod" if n % 2 == 0 else "env:dev"
        body = {"matchers": {"rule": f"r{n}", "tag": tag}, "ends_at": "2099-01-01T00:00:00Z"}
        made.append((await api(r, "POST", "/v1/silences", body))[1]["id"])

    async def listed(query: str) -> list[str]:
        code, answer = await api(r, "GET", "/v1/silences?" + query)
        assert code == 200, answer
        return [s["id"] for s in answer["silences"]]

    prod = [made[0], made[2], made[4]]
    assert sorted(await listed('filter=tag%3D~"env:p.*"')) == sorted(prod)
    assert sorted(await listed("filter=tag!%3Denv:prod")) == sorted([made[1], made[3]])
    assert await listed('filter=tag="env:prod"&filter=rule="r2"') == [made[2]]
    assert await listed('filter={alertname="r4",tag=~"env:.*"}') == [made[4]]
    assert await listed("filter=channel%3D~.%2B") == []  # none has a channel matcher
    everyone = await listed("expired=true")
    assert sorted(everyone) == sorted(made)
    paged = await listed("limit=2")
    while len(paged) < len(made):
        paged += await listed(f"limit=2&after={paged[-1]}")
    assert paged == everyone
    for query, field in [
        ("filter=severity%3Dpage", "filter"),
        ('filter=tag%3D~"["', "filter"),
        ("filter={rule%3Dx", "filter"),
        ("filter=", "filter"),  # not the rule "", which kept the silences without a rule
        ("filter=%20", "filter"),
        ("limit=0", "limit"),
        ("limit=1&limit=2", "limit"),
        ("after=sil_nope", "after"),
        ("after=a&after=b", "after"),
        ("filters=rule%3Dx", "filters"),
    ]:
        code, answer = await api(r, "GET", "/v1/silences?" + query)
        assert (code, answer.get("field")) == (400, field), (query, answer)


async def test_paging_neither_skips_nor_repeats_a_silence_expired_meanwhile(
    relay: RelayFactory,
) -> None:
    """Pages went in start order, and expiring a pending silence moves its start to the moment
    it expired: one after the last page's moved before it (skipped, listing expired ones too),
    and the last page's own moved back, so the next page began again (repeated). Pages follow
    creation now, which nothing moves."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))

    async def add(task: str, days: int) -> str:
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + days * 86400))
        body = {"matchers": {"task": task}, "starts_at": start, "ends_at": "2999-01-01T00:00:00Z"}
        code, made = await api(r, "POST", "/v1/silences", body)
        assert code == 201, made
        return str(made["id"])

    async def page(query: str) -> list[str]:
        code, answer = await api(r, "GET", "/v1/silences?" + query)
        assert code == 200, answer
        return [s["id"] for s in answer["silences"]]

    for expired in ("true", "false"):
        made = [await add(expired, days) for days in (0, 1, 2, 3)]  # active, then pending
        query = f"expired={expired}&filter=task%3D{expired}"
        first = await page(query + "&limit=3")
        # expired=true: one of the next page expires; false: the page's last one does
        gone = made[3] if expired == "true" else first[-1]
        assert (await api(r, "DELETE", f"/v1/silences/{gone}"))[0] == 200
        second = await page(query + f"&after={first[-1]}")
        assert len(first + second) == len(set(first + second)), (made, first, second)
        assert set(made) - {gone} <= set(first + second), (made, first, second)
        if expired == "true":
            assert gone in second, (made, first, second)


def test_cli_query_filters_as_amtool_and_pages(tmp_path: Path) -> None:
    """`relay silence query` took `name=value` alone; amtool's `=~`, `!=` and `!~` now filter
    too (`--filter` beside the words), and `--limit`/`--after` read the list a page at a time."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    made = [
        run_cli_in_process(
            "silence", "add", f"rule=nightly-{n}", "-d", "1h", "-q", env=env
        ).stdout.strip()
        for n in range(3)
    ]

    def query(*args: str) -> list[str]:
        done = run_cli_in_process("silence", "query", "-q", *args, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert sorted(query('rule=~"nightly-.*"')) == sorted(made)
    assert sorted(query("rule!=nightly-1", "--filter", "rule!~nightly-0")) == [made[2]]
    assert query("alertname=nightly-0") == [made[0]]
    first = query("--limit", "2")
    assert sorted(first + query("--limit", "2", "--after", first[-1])) == sorted(made)
    bad = run_cli_in_process("silence", "query", 'rule=~"("', env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: silence list: matchers: ")
    bad = run_cli_in_process("silence", "query", "", env=env)
    assert bad.returncode == 1 and "an empty matcher" in bad.stderr
    bad = run_cli_in_process("silence", "query", "--limit", "0", env=env)
    assert bad.returncode == 1 and "limit: expected a number from 1 to 10000" in bad.stderr


@pytest.mark.parametrize("word", ['task="billing/*', 'tag=~"env:.*', 'rule!=x"'])
def test_a_filter_with_unbalanced_quotes_is_refused(word: str) -> None:
    """`silence query 'task="billing/*'` listed the silences of billing/*: the quote not closed
    was dropped, where amtool refuses the matcher."""
    with pytest.raises(InputError, match=r"filter: .*unbalanced quotes"):
        parse_filters([word])


@pytest.mark.parametrize("word", ['tag=~"(?:(?:a{100}){100}){100}"', 'rule!~"x|(?:a{1000}){1000}"'])
def test_a_filter_regex_whose_repeats_nest_too_far_is_refused_before_it_compiles(word: str) -> None:
    """The regex module writes nested counted repeats out as it compiles: one GET /v1/silences
    with `filter=tag=~"(?:(?:(?:a{100}){100}){100}){10}"` held the event loop 5.5 s and took
    2.9 GB; one more `{10}`, all the memory. Refused as RE2 (Alertmanager's) refuses them."""
    with pytest.raises(InputError, match=r"filter: .*nested repeats multiply past 10,000"):
        parse_filters([word])


@pytest.mark.parametrize(
    ("words", "fits"),
    [
        (["rule=a"], ["a"]),
        (["rule!=a"], ["b", "none"]),
        (['rule=~"[ab]"'], ["a", "b"]),
        (["rule!~a|b"], ["none"]),
        (["rule="], ["none"]),  # Alertmanager's: a matcher absent is the value ""
        (["a"], ["a"]),  # a bare word names a rule, as amtool's an alertname
        (["{rule=~.*, rule!=b}"], ["a", "none"]),
    ],
)
def test_filters_fit_as_alertmanagers(words: list[str], fits: list[str]) -> None:
    made = {
        "a": Silence("a", {"rule": ("a", "x")}, NOW, NOW + 1, NOW),
        "b": Silence("b", {"rule": ("b",)}, NOW, NOW + 1, NOW),
        "none": Silence("none", {"task": ("a",)}, NOW, NOW + 1, NOW),
    }
    filters = parse_filters(words)
    deadline = time.monotonic() + 60
    assert [k for k, s in made.items() if all(f.fits(s, deadline) for f in filters)] == fits


async def test_a_filter_regex_that_backtracks_for_ever_is_refused_in_its_time(
    relay: RelayFactory,
) -> None:
    """`tag=~"(a|a)+b"` over a tag of 40 letters backtracks for hours in Python's `re`, on the
    event loop: one admin request stopped ingest and delivery. The regexes of a listing now
    have a second together, then the answer is a 400 saying so."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    body = {"matchers": {"tag": "a" * 40 + "c"}, "ends_at": "2099-01-01T00:00:00Z"}
    assert (await api(r, "POST", "/v1/silences", body))[0] == 201
    code, answer = await api(r, "GET", '/v1/silences?filter=tag%3D~"(a|a)%2Bb"')
    assert (code, answer["field"]) == (400, "filter")
    assert "takes over 1 s to match" in answer["error"]
    assert (await api(r, "GET", '/v1/silences?filter=tag%3D~"a%2Bc"'))[0] == 200


async def test_silence_api_reads_one_silence_alone(
    relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/silences/{id} read every silence there ever was to find one: 60,000 (50,000 of
    them expired) took it 0.4-1.1 s, and ingest's p99 went from 0.27 s to 1.9 s meanwhile."""
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    body = {"matchers": {"task": "x"}, "ends_at": "2099-01-01T00:00:00Z"}
    made = (await api(r, "POST", "/v1/silences", body))[1]
    every: list[float] = []
    store = r.service.store
    listing = store.silences

    async def counted(now: float, **kwargs: Any) -> list[Silence]:
        if kwargs.get("include_expired"):
            every.append(now)
        return await listing(now, **kwargs)

    monkeypatch.setattr(store, "silences", counted)
    assert await api(r, "GET", f"/v1/silences/{made['id']}") == (200, made)
    assert (await api(r, "GET", "/v1/silences/sil_nope"))[0] == 404
    assert every == []
    assert len((await api(r, "GET", "/v1/silences?expired=1"))[1]["silences"]) == 1
    assert len(every) == 1


async def test_silence_api_warns_of_names_the_running_config_lacks(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in a silence's rule or channel mutes nothing: the 201 says so in `warnings`
    (and the log), checked against the config the relay runs; a silence naming what the
    config has carries no `warnings` key."""
    caplog.set_level(logging.INFO, logger="relay.http")
    r = await relay(CONFIG.format(url="http://127.0.0.1:9"))
    ends = "2099-01-01T00:00:00Z"
    code, typo = await api(
        r,
        "POST",
        "/v1/silences",
        {"matchers": {"rule": "failurs", "channel": "hook"}, "ends_at": ends},
    )
    assert code == 201 and typo["warnings"] == [
        "matchers.rule: 'failurs' names no rule of the config (did you mean 'failures'?);"
        " nothing fits it"
    ], typo
    assert "warnings" not in (await api(r, "GET", f"/v1/silences/{typo['id']}"))[1]
    code, good = await api(
        r,
        "POST",
        "/v1/silences",
        {"matchers": {"rule": "failures", "status": "failed"}, "ends_at": ends},
    )
    assert code == 201 and "warnings" not in good, good
    logged = [rec for rec in caplog.records if rec.getMessage().startswith("silence names")]
    assert [rec.__dict__["silence"] for rec in logged] == [typo["id"]]


async def test_silence_api_needs_the_admin_token(relay: RelayFactory) -> None:
    r = await relay(
        "server: {admin_token: adm1n-token}\n" + CONFIG.format(url="http://127.0.0.1:9")
    )
    async with r.http.get(r.url + "/v1/silences") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="relay"'  # RFC 9110 §15.5.2
    async with r.http.get(
        r.url + "/v1/silences", headers={"Authorization": "Bearer adm1n-token"}
    ) as resp:
        assert resp.status == 200


NAMES = (("prod-failures", "billing"), ("oncall-slack", "pager"))


@pytest.mark.parametrize(
    ("matchers", "names", "expected"),
    [
        ({"rule": ["prod-failures"], "channel": ["pager"]}, NAMES, []),
        (
            {"rule": ["prod-failurs"]},
            NAMES,
            ["'prod-failurs' names no rule of the config (did you mean 'prod-failures'?)"],
        ),
        (
            {"channel": ["pagr"]},
            NAMES,
            ["'pagr' names no channel of the config (did you mean 'pager'?)"],
        ),
        ({"channel": ["nope"]}, NAMES, ["'nope' names no channel of the config; nothing fits it"]),
        ({"rule": ["anything"], "channel": ["at-all"]}, None, []),  # names not known: unchecked
        ({"status": ["failure", "failed", " CRASHED ", "COMPLETED_WITH_ERRORS"]}, None, []),
        ({"status": ["DEPLOYED", "REGRESSION", "INTERRUPTED", "REATTEMPTING"]}, None, []),
        (
            {"status": ["FAILLED"]},
            None,
            ["'FAILLED' is not a status relay knows (did you mean 'FAILED'?)"],
        ),
        ({"status": ["failure "]}, None, ["is not a status relay knows"]),  # not the shorthand
        ({"task": ["no/such/*"], "tag": ["nope"], "event": ["run"]}, NAMES, []),
    ],
)
def test_matcher_warnings(matchers: dict[str, list[str]], names: Any, expected: list[str]) -> None:
    """A silence naming a rule, channel or status that nothing has mutes nothing: a typo the
    operator hears of (a warning; the silence is kept)."""
    warnings = matcher_warnings(matchers, names)
    assert len(warnings) == len(expected), warnings
    assert all(part in got for part, got in zip(expected, warnings, strict=True)), warnings


def test_matcher_warnings_search_for_the_nearest_name_a_few_times_only() -> None:
    """The nearest-name search reads every rule name: 100 typos against 2,000 rules held the
    event loop (POST /v1/silences) for a second. Each unknown value is still warned of."""
    rules = tuple(f"billing-rule-{i}" for i in range(2000))
    typos = [f"billing-rul-{i}" for i in range(100)]
    warnings = matcher_warnings({"rule": typos}, (rules, ()))
    assert len(warnings) == 100
    hinted = [w for w in warnings if "did you mean" in w]
    assert len(hinted) == HINTS and hinted == warnings[:HINTS], warnings[: HINTS + 1]


def test_cli_add_warns_of_names_the_config_lacks(tmp_path: Path) -> None:
    """The id alone on stdout (`id=$(relay silence add ...)` still works), each warning on
    stderr. The names are read as written, also when the operator's shell lacks a variable
    the service has (a channel's secret); with no config file to read, rule and channel
    names go unchecked."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    config = tmp_path / "config.yaml"
    config.write_text(
        "channels:\n  out: {type: console}\n  hook: {type: webhook, url: '${HOOK_URL}'}\n"
        "rules:\n  - {name: failures, match: {status: [failure]}, notify: [out, hook]}\n"
    )
    added = run_cli_in_process(
        "silence",
        "add",
        "prod-failurs",
        "--channel",
        "out",
        "--status",
        "FAILLED",
        "--config",
        str(config),
        env=env,
    )
    assert added.returncode == 0 and added.stdout.strip().startswith("sil_"), added
    assert warned(added) == [
        "warning: matchers.rule: 'prod-failurs' names no rule of the config; nothing fits it",
        "warning: matchers.status: 'FAILLED' is not a status relay knows (did you mean"
        " 'FAILED'?); only a run sent with it fits",
    ], added.stderr
    (tmp_path / "x").mkdir()  # no config.yaml there, and no RELAY_CONFIG
    elsewhere = run_cli_in_process(
        "silence", "add", "prod-failurs", "-d", "1h", env=env, cwd=tmp_path / "x"
    )
    assert elsewhere.returncode == 0 and elsewhere.stderr == "", elsewhere.stderr


def test_cli_add_with_a_config_without_channels_adds_the_silence(tmp_path: Path) -> None:
    """The names a matcher is held to are read from a file without a `channels:` section too
    (not read as `map(str, None)`, a traceback)."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    config = tmp_path / "config.yaml"
    config.write_text("rules: []\n")
    added = run_cli_in_process("silence", "add", "nightly", "--config", str(config), env=env)
    assert added.returncode == 0 and added.stdout.startswith("sil_"), added.stderr


def test_names_of_a_config_that_cannot_be_read_are_said_unchecked(tmp_path: Path) -> None:
    """`--config` named a file that is not YAML: `silence add`, `silence import` and an empty
    `history --rule` checked no name and said nothing, read as "the names are fine". Each
    now says why the names went unchecked, once; the silence is still added."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    broken = tmp_path / "config.yaml"
    broken.write_text("rules: [\n")
    said = (
        f"warning: rule and channel names not checked: {broken}:2: invalid YAML: expected the"
        " node content, but found '<stream end>'"
    )
    added = run_cli_in_process("silence", "add", "prod-failurs", "--config", str(broken), env=env)
    assert added.returncode == 0 and added.stdout.startswith("sil_"), added.stderr
    assert warned(added) == [said]
    ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    body = tmp_path / "silences.json"
    body.write_text(json.dumps([{"matchers": {"rule": "prod-failurs"}, "ends_at": ends}]))
    imported = run_cli_in_process("silence", "import", str(body), "--config", str(broken), env=env)
    assert imported.returncode == 0 and imported.stdout.startswith("sil_"), imported.stderr
    assert warned(imported) == [said]
    history = run_cli_in_process("history", "--rule", "x", "--config", str(broken), env=env)
    assert history.returncode == 0 and warned(history) == [said], history.stderr
    two = tmp_path / "two.yaml"  # the first problem, and how many more
    two.write_text("channels: [1]\nrules:\n  - {name: a}\n")
    added = run_cli_in_process("silence", "add", "a", "--config", str(two), env=env)
    [line] = warned(added)
    assert line.startswith(f"warning: rule and channel names not checked: {two}:1: channels:")
    assert line.endswith("more; `relay check` lists them)"), line


def warned(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The warnings a command wrote on stderr (not the note that a first add made the store)."""
    return [line for line in result.stderr.splitlines() if line.startswith("warning: ")]


def test_cli_add_warns_that_words_naming_one_matcher_twice_mean_any(tmp_path: Path) -> None:
    """amtool ANDs two matchers of one name: `tag=env:prod tag=team:billing` silences only the
    alerts with both. relay's silence holds them as one matcher's values, any of which fits, so
    it muted every env:prod run, and `silence add` said nothing of it. Now it says so, on
    stderr; the flags (`--tag a --tag b`) are relay's own, documented as "any", and say nothing."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    words = ["tag=env:prod", '{tag="team:billing", task="a"}', "task=b", "alertname=x"]
    added = run_cli_in_process("silence", "add", *words, "--rule", "y", env=env, cwd=tmp_path)
    assert added.returncode == 0 and added.stdout.startswith("sil_"), added
    assert warned(added) == [
        f"warning: matchers.{key}: named by 2 words; the silence fits a run with any of their"
        " values, not (as amtool's) only one that fits them all"
        for key in ("tag", "task")
    ]
    listed = run_cli_in_process("silence", "query", "-o", "json", env=env, cwd=tmp_path)
    assert json.loads(listed.stdout)[0]["matchers"] == {
        "tag": ["env:prod", "team:billing"],
        "task": ["a", "b"],
        "rule": ["y", "x"],
    }
    flags = ["--tag", "env:prod", "--tag", "team:billing", "--task", "a", "--task", "b"]
    quiet = run_cli_in_process("silence", "add", *flags, env=env, cwd=tmp_path)
    assert (quiet.returncode, quiet.stderr) == (0, ""), quiet


def test_cli_add_list_expire(tmp_path: Path) -> None:
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process(
        "silence",
        "add",
        "--task",
        "billing/*",
        "--tag",
        "env:prod",
        "--duration",
        "1h",
        "--comment",
        "deploy",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    ident = added.stdout.strip()  # the id alone, as amtool prints it
    assert ident.startswith("sil_") and " " not in ident
    listed = run_cli_in_process("silence", "list", "--json", env=env)
    [view] = json.loads(listed.stdout)
    assert (
        view["matchers"] == {"task": ["billing/*"], "tag": ["env:prod"]}
        and view["comment"] == "deploy"
    )
    assert run_cli_in_process("silence", "expire", ident, env=env).stdout == f"expired {ident}\n"
    again = run_cli_in_process(
        "silence", "expire", ident, env=env
    )  # said "expired" as if it had been now
    assert again.returncode == 0 and again.stdout.startswith(f"{ident} was already expired (ended")
    assert "no silences" in run_cli_in_process("silence", "list", env=env).stdout
    assert ident in run_cli_in_process("silence", "list", "--all", env=env).stdout
    assert run_cli_in_process("silence", "expire", "sil_nope", env=env).returncode == 1
    bad = run_cli_in_process("silence", "add", "--duration", "1h", env=env)  # no matcher
    assert bad.returncode == 2 and "matchers" in bad.stderr  # a usage error
    bad = run_cli_in_process("silence", "add", "--task", "x", "--duration", "soon", env=env)
    assert bad.returncode == 1 and "duration" in bad.stderr


def test_cli_list_quotes_each_value_as_amtool_does(tmp_path: Path) -> None:
    """`task=a b,c` was printed bare: one glob with a space and a comma read as two words, or
    as two values; each value is now quoted, and the line given back to `silence add` (the
    shell's quoting) makes the same silence."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    values = ["a b,c", 'q"x\\y']
    run_cli_in_process("silence", "add", *(f"--task={v}" for v in values), "-d", "1h", env=env)
    line = run_cli_in_process("silence", "list", env=env).stdout.splitlines()[-1]
    assert line.endswith('task="a b,c" task="q\\"x\\\\y"')
    again = run_cli_in_process(
        "silence", "add", *shlex.split(line[line.index("task=") :]), "-d", "1h", env=env
    )
    assert again.returncode == 0, again.stderr
    views = json.loads(run_cli_in_process("silence", "list", "--json", env=env).stdout)
    assert [view["matchers"] for view in views] == [{"task": values}] * 2


@contextlib.asynccontextmanager
async def store_url(engine: str, tmp_path: Path) -> AsyncIterator[str]:
    """A store of `engine` for CLI commands: a SQLite file, or a fresh PostgreSQL database."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.db'}"
        return
    async with fresh_database(shared_server()) as url:
        yield url


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_control_characters_in_values_list_one_silence_a_line_that_reads_back(
    tmp_path: Path, engine: str
) -> None:
    """Alertmanager takes any UTF-8 in a matcher's value: relay stores and matches a NUL, a
    C1 control, a line separator, ESC, CR (PostgreSQL's text holds no NUL: the matchers are
    JSON text, `\\u0000`). The table shows each silence on one line, and each value as `silence
    add` and `silence query` (and amtool) read it back: a C1 control showed as `\\x85`, which
    reads back as a byte (Go's escape), no UTF-8, so that value was taken as written and found
    nothing."""
    values = ["nul\x00x", "nel\x85x", "ls\u2028x", "esc\x1b[31mx", "cr\rx", "vt\x0bx"]
    async with store_url(engine, tmp_path) as url:
        env = {"RELAY_STORE_URL": url}

        def cli(*args: str) -> Any:
            return run_cli_in_process("silence", *args, env=env)

        made = {}
        for value in values:
            literal = value.encode("unicode_escape").decode().replace("\\x", "\\u00")
            added = await asyncio.to_thread(cli, "add", f'task="{literal}"', "-d", "1h")
            assert added.returncode == 0, added.stderr
            made[added.stdout.strip()] = value
        views = json.loads((await asyncio.to_thread(cli, "list", "--json")).stdout)
        assert {v["id"]: v["matchers"]["task"] for v in views} == {i: [v] for i, v in made.items()}
        lines = (await asyncio.to_thread(cli, "list")).stdout.splitlines()
        assert len(lines) == 1 + len(values)  # the head, then one line each
        for line in lines[1:]:
            ident, shown = line.split()[0], line[line.index("task=") :].rstrip()
            assert shown.isprintable(), shown
            found = await asyncio.to_thread(cli, "query", "-q", shown)
            assert found.stdout.split() == [ident], (shown, found.stderr)
    assert all(fits({"task": (v,)}, {"task": v}) for v in values)


def test_cli_speaks_amtool(tmp_path: Path) -> None:
    """amtool's habits work: matchers as words, -d/-c/-a/--end, `query`, -q, expire many."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process(
        "silence", "add", "task=billing/*", "alertname=prod", "-d", "1h", "-c", "deploy", "-q",
        env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    first = added.stdout.strip()
    assert first.startswith("sil_") and " " not in first
    second = run_cli_in_process(
        "silence", "add", "nightly", "--tag", "env:prod", "--end", "2999-01-01", env=env
    )
    assert second.returncode == 0, second.stderr
    listed = json.loads(run_cli_in_process("silence", "query", "--json", env=env).stdout)
    assert {s["id"]: s["matchers"] for s in listed} == {
        first: {"task": ["billing/*"], "rule": ["prod"]},
        second.stdout.strip(): {"tag": ["env:prod"], "rule": ["nightly"]},
    }
    assert run_cli_in_process(
        "silence", "query", "-q", "task=billing/*", env=env
    ).stdout.split() == [first]
    ids = run_cli_in_process("silence", "list", "-q", env=env).stdout.split()
    expired = run_cli_in_process("silence", "expire", *ids, "sil_nope", env=env)
    assert expired.returncode == 1 and "sil_nope" in expired.stderr
    assert expired.stdout.count("expired ") == 2
    assert run_cli_in_process("silence", "query", "-q", env=env).stdout.strip() == ""


_MATCHER_FORM = "expected name=value (e.g. task=billing/*), name one of " + ", ".join(
    SILENCE_MATCHERS
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # it said `matchers.: unknown matcher`: no word of what was wrong, nor of the form
        (["="], f"matchers: '=': no matcher name; {_MATCHER_FORM}"),
        (["task=a", "=x"], f"matchers: '=x': no matcher name; {_MATCHER_FORM}"),
        (
            ["severity=page"],
            f"matchers: 'severity=page': unknown matcher 'severity'; {_MATCHER_FORM}",
        ),
        # nan said "duration must be between 0 and 10 years": it is no duration at all
        (["-d", "nan", "task=a"], f"-d 'nan': {NOT_A_DURATION}"),
        (["--duration", "inf", "task=a"], f"--duration 'inf': {NOT_A_DURATION}"),
        (["-d", "-5", "task=a"], "-d '-5': must be more than 0"),  # as -d 0 and -d -1h
    ],
)
def test_cli_add_says_what_it_refused_and_what_it_takes(
    tmp_path: Path, args: list[str], message: str
) -> None:
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    refused = run_cli_in_process("silence", "add", *args, env=env)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"error: silence not added: {message}\n"
    assert not (tmp_path / "relay.db").exists()


@pytest.mark.parametrize("args", [[], ["-d", "2h", "-c", "deploy"], ["{}"]], ids=repr)
def test_cli_add_without_a_matcher_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    """None at all said "expected an object with any of ...", the API's words (amtool: "no
    matchers specified"); `$(...)` that came back empty is the likely cause. Then it was exit
    1, where `silence expire` and `dlq replay` given no id are usage errors, exit 2: now so
    is this, one line naming the command and what it takes, and no store is made."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    refused = run_cli_in_process("silence", "add", *args, env=env)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        f"relay silence add: error: matchers: none given; {_MATCHER_FORM}, or the flag"
        " (--task ...)\n"
    )
    assert not (tmp_path / "relay.db").exists()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (['{task="billing/*"}'], {"task": ["billing/*"]}),
        (['{task="billing/*", alertname="prod"}'], {"task": ["billing/*"], "rule": ["prod"]}),
        (['{task="a,b",tag=env:prod,}'], {"task": ["a,b"], "tag": ["env:prod"]}),
        (["{task=x}", "nightly"], {"task": ["x"], "rule": ["nightly"]}),
        # blanks around `=`, as Prometheus writes matchers too
        (['{task = "billing/*", rule = prod}'], {"task": ["billing/*"], "rule": ["prod"]}),
        # a quoted value's escapes read as amtool reads them (`silence list` prints them so):
        # `\"` and `\\` were kept, `x"` cut to `x\`
        (['{task="a\\"b\\\\c"}'], {"task": ['a"b\\c']}),
        (['task="x\\""', "'nightly'"], {"task": ['x"'], "rule": ["nightly"]}),
    ],
)
def test_cli_matchers_take_amtool_braces(words: list[str], expected: dict[str, list[str]]) -> None:
    """amtool takes a matcher as Prometheus writes it, `{alertname="x"}`: relay read `{task`
    as a matcher's name ("matchers.{task: unknown matcher")."""
    assert cli_matchers(words, {}) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Go's escapes (Alertmanager 0.27+'s parser, strconv.Unquote): `\n` was read as `n`
        ('"a\\nb"', "a\nb"),
        ('"a\\tb\\x01c\\u00e9\\U0001F600"', "a\tb\x01cé😀"),
        ('"q\\"x\\\\y"', 'q"x\\y'),
        ('"nul\\x00"', "nul\x00"),
        ('"\\101\\u2028"', "A\u2028"),
        # where Go refuses it, pkg/labels' reading (amtool's fallback): an unknown escape is
        # the backslash and the letter (`\z` was `z`), a typed line feed is kept
        ('"a\\zb"', "a\\zb"),
        ('"\\xff"', "\\xff"),  # bytes that are no UTF-8
        ('"\\ud800x"', "\\ud800x"),  # a surrogate: no code point (Go's utf8.ValidRune)
        ('"\\udfff\\ue000"', "\\udfff\\ue000"),
        ('"\\ud7ff"', "\ud7ff"),  # the code point before them is one
        ('"a\\nb\\z"', "a\nb\\z"),
        ('"line\nfeed"', "line\nfeed"),
        # bare: as written, unless a backslash is in it (pkg/labels: amtool's new parser
        # refuses a bare backslash and falls back to it)
        ("billing/*", "billing/*"),
        ("a\\nb", "a\nb"),
        ("C:\\tmp", "C:\\tmp"),
        ("a\\\\b", "a\\b"),
    ],
)
def test_matcher_values_read_escapes_as_amtool_does(value: str, expected: str) -> None:
    assert cli_matchers([f"task={value}"], {}) == {"task": [expected]}
    assert cli_matchers([f"{{task={value}}}"], {}) == {"task": [expected]}
    [found] = parse_filters([f"task={value}"])
    assert found.value == expected


def test_cli_silence_for_a_value_with_a_line_break_mutes_that_value(tmp_path: Path) -> None:
    """Black-box: `relay silence add 'task="a\nb"'` made a silence for `anb`."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process("silence", "add", 'task="a\\nb"', "-d", "1h", env=env)
    assert added.returncode == 0, added.stderr
    [view] = json.loads(run_cli_in_process("silence", "list", "--json", env=env).stdout)
    assert view["matchers"] == {"task": ["a\nb"]}
    query = run_cli_in_process("silence", "query", "-q", 'task="a\\nb"', env=env)
    assert query.stdout.split() == [view["id"]]
    assert fits({"task": ("a\nb",)}, {"task": "a\nb"})
    assert not fits({"task": ("a\nb",)}, {"task": "anb"})


@pytest.mark.parametrize(
    ("word", "complaint"),
    [
        ("task!=x", "no negative or regex"),  # what amtool can say and relay cannot
        ("task=~bill.*", "no negative or regex"),
        ("task!~x", "no negative or regex"),
        ("severity=page", "unknown matcher"),
        ('{task="x}', "unbalanced quotes"),
        # a double quote not closed or not opened was dropped: `task="billing/*` made a silence
        # of billing/*, `task=x"` one of x, `task="x\\"` one of `x\` (amtool refuses them)
        ('task="billing/*', "unbalanced quotes"),
        ('task=x"', "unbalanced quotes"),
        ('task="x\\"', "unbalanced quotes"),
        ('"nightly', "unbalanced quotes"),
        ("{task=x", "unclosed"),
        ('{task!="x"}', "no negative or regex"),
        ("tsk=x", "did you mean 'task'"),
    ],
)
def test_cli_matchers_say_what_to_fix(word: str, complaint: str) -> None:
    with pytest.raises(InputError, match=complaint):
        cli_matchers([word], {})


def test_cli_matchers_merge_words_and_flags() -> None:
    words = ["task=billing/*", "alertname=prod", "nightly", "tag='env:prod'"]
    assert cli_matchers(words, {"task": ["a"], "rule": []}) == {
        "task": ["a", "billing/*"],
        "rule": ["prod", "nightly"],
        "tag": ["env:prod"],
    }


def test_cli_add_takes_the_spec_synopsis_and_amtool_default(tmp_path: Path) -> None:
    """SPEC §6 writes `--duration 1h [--until ISO]`: both together work and --until wins (as
    amtool's --end does over --duration); neither means amtool's 1h."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    both = run_cli_in_process(
        "silence", "add", "--task", "billing/*", "--duration", "1h",
        "--until", "2999-01-01T00:00:00Z", env=env,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    plain = run_cli_in_process("silence", "add", "--task", "email/*", env=env)
    assert plain.returncode == 0, plain.stderr
    listed = json.loads(run_cli_in_process("silence", "list", "--json", env=env).stdout)
    views = {s["id"]: s for s in listed}
    assert views[both.stdout.strip()]["ends_at"].startswith("2999-01-01T00:00:00")
    view = views[plain.stdout.strip()]
    hour = parse_time(view["ends_at"], "x") - parse_time(view["created_at"], "x")
    assert 3599 <= hour <= 3601


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["-d", "0"], "-d '0': must be more than 0"),
        (["-d", "-1h"], "-d '-1h': must be more than 0"),  # not argparse's "expected
        (["--duration", "-30"], "--duration '-30': must be more than 0"),  # one argument"
        (["-d", "soon"], "-d 'soon': expected a duration like"),
        # argparse read `-abc` as `-a bc` (an option) and said only "-d: expected one argument"
        (["-d", "-abc"], "-d '-abc': expected a duration like"),
        (["--duration", "-x"], "--duration '-x': expected a duration like"),
        # an abbreviation argparse takes (`--dur` for --duration) is the option too
        (["--dur", "-1h"], "--duration '-1h': must be more than 0"),
        (["--comm", "-x", "-d", "-abc"], "-d '-abc': expected a duration like"),
        (["-d", "20y"], "-d '20y': duration must be between 0 and 10 years"),
        (["--until", "2020-01-01T00:00:00Z"], "--until: must be in the future"),
        # over by the time the store opened: stored expired, its id printed, exit 0 (amtool's
        # Alertmanager: "end time can't be in the past")
        (["-d", "1ms"], "-d '1ms': the silence would be over before it is stored"),
        (["--start", "2999-01-02", "--until", "2999-01-01"], "--until: must be after --start"),
        (["--start", "2000-01-01", "-d", "1h"], "--start: the silence would end in the past"),
        (["--until", "9999-12-31T23:59:59.999999-00:01"], "--until: time out of range"),
        # --end is --until, -d --duration: the error names the flag typed (ux51)
        (["--end", "2020-01-01T00:00:00Z"], "--end: must be in the future"),
        (["--end", "soon"], "--end: expected an ISO-8601 time"),
        (["--start", "2999-01-02", "--end", "2999-01-01"], "--end: must be after --start"),
        (["--start", "0001-01-01T00:00:00+00:01"], "--start: time out of range"),
        (["--start", "9999-12-31T23:59:59Z", "-d", "1s"], "-d '1s': time out of range"),
    ],
)
def test_cli_add_names_the_flag_to_fix(tmp_path: Path, args: list[str], complaint: str) -> None:
    """`-d 0` said "ends_at: must be in the future" and `-d 20y` "duration must be between 0
    and 10 years": neither named the flag given (ends_at is the HTTP API's field)."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    bad = run_cli_in_process("silence", "add", "task=x", *args, env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(f"error: silence not added: {complaint}"), bad.stderr
    assert bad.stderr.count("\n") == 1, bad.stderr  # one line
    assert run_cli_in_process("silence", "list", "--all", "-q", env=env).stdout == ""


def test_cli_add_takes_the_last_microsecond_of_year_9999(tmp_path: Path) -> None:
    """`--until 9999-12-31T23:59:59.999999Z` said "time out of range": as epoch seconds it
    rounded up to year 10000."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    until = ["--until", "9999-12-31T23:59:59.999999Z"]
    added = run_cli_in_process("silence", "add", "task=x", *until, env=env)
    assert added.returncode == 0, added.stderr
    listed = json.loads(run_cli_in_process("silence", "list", "--json", env=env).stdout)
    assert [s["ends_at"] for s in listed] == ["9999-12-31T23:59:59.999Z"]


def test_cli_list_quiet_prints_nothing_when_nothing_is_listed(tmp_path: Path) -> None:
    """`relay silence query -q` with no silence printed an empty line (amtool prints nothing)."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    assert run_cli_in_process("silence", "add", "task=x", env=env).returncode == 0
    assert run_cli_in_process("silence", "query", "-q", "task=y", env=env).stdout == ""
    assert run_cli_in_process("silence", "list", "-q", env=env).stdout.count("\n") == 1


def test_cli_list_expired_shows_only_expired_ones_as_amtool(tmp_path: Path) -> None:
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    gone, kept = (
        run_cli_in_process("silence", "add", f"task={task}", "-d", "1h", env=env).stdout.strip()
        for task in ("a", "b")
    )
    assert run_cli_in_process("silence", "expire", gone, env=env).returncode == 0
    assert run_cli_in_process("silence", "list", "--expired", "-q", env=env).stdout.split() == [
        gone
    ]
    assert run_cli_in_process("silence", "query", "--expired", "-q", env=env).stdout.split() == [
        gone
    ]
    assert sorted(
        run_cli_in_process("silence", "list", "--all", "-q", env=env).stdout.split()
    ) == sorted([gone, kept])


def test_cli_add_with_an_empty_author_takes_the_default_as_amtool(tmp_path: Path) -> None:
    """`-a ""` (`-a "$AUTHOR"` with it unset) made a silence with no author; amtool takes the
    default ($USER) for an empty one, as relay does now."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}", "USER": "ops"}
    for author in (["-a", ""], ["--author="]):
        assert run_cli_in_process("silence", "add", "task=x", *author, env=env).returncode == 0
    listed = json.loads(run_cli_in_process("silence", "list", "--json", env=env).stdout)
    assert [view["created_by"] for view in listed] == ["ops", "ops"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--until", ""], "argument --until/--end: empty: give a time like"),
        (["--end= "], "argument --until/--end: empty: give a time like"),
        (["--start", ""], "argument --start: empty: give a time like"),
        (["--duration", ""], "argument -d/--duration: empty: give a duration like 2h"),
        (["-d", "", "--until", "2999-01-01"], "argument -d/--duration: empty"),
    ],
)
def test_cli_add_refuses_an_empty_time_or_duration(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    """`--until "$END"` with END unset made a silence of the default hour, `--start ''` one
    starting now, as if the flag were not there; `-d ''` was an error of the store's command
    (exit 1). Each is a usage error (exit 2), as `--config ''` is, and adds nothing."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    bad = run_cli_in_process("silence", "add", "task=x", *args, env=env)
    assert (bad.returncode, bad.stdout) == (2, ""), bad.stderr
    assert f"relay silence add: error: {complaint}" in bad.stderr, bad.stderr
    assert run_cli_in_process("silence", "list", "--all", "-q", env=env).stdout == ""


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--limit", ""], "argument --limit: empty: give a number like 50"),
        (["--after= "], "argument --after: empty: give a silence id (sil_…)"),
    ],
)
def test_cli_list_refuses_an_empty_limit_or_page(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    """`--limit ''` exited 1 as a bad number and `--after ''` looked for a silence of no id
    (exit 1, "no silence with this id"): a flag given no value is a usage error (exit 2), as
    `silence add --until ''` is."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    bad = run_cli_in_process("silence", "list", *args, env=env)
    assert (bad.returncode, bad.stdout) == (2, ""), bad.stderr
    assert f"relay silence list: error: {complaint}" in bad.stderr, bad.stderr


def test_cli_list_shows_when_a_pending_silence_starts(tmp_path: Path) -> None:
    """A silence for tonight's maintenance was listed `pending` with its end alone: when it
    starts was nowhere but in --json (amtool's query shows Starts At beside Ends At)."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process(
        "silence", "add", "task=x", "--start", "2999-01-01T22:00:00Z", "-d", "2h", env=env
    )
    assert added.returncode == 0, added.stderr
    header, row = run_cli_in_process("silence", "list", env=env).stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "STARTS", "ENDS"]
    assert row.split()[:4] == [
        added.stdout.strip(),
        "pending",
        "2999-01-01T22:00:00.000Z",
        "2999-01-02T00:00:00.000Z",
    ]


def test_cli_list_shows_who_added_a_silence_in_12_characters(tmp_path: Path) -> None:
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process("silence", "add", "task=x", "-a", "release-manager-bot", env=env)
    assert added.returncode == 0, added.stderr
    listed = run_cli_in_process("silence", "list", env=env)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[4] == "release-mana"
    as_json = run_cli_in_process("silence", "list", "--json", env=env)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)[0]["created_by"] == (
        "release-manager-bot"
    )


async def test_silences_the_store_cannot_read_neither_stall_nor_lose_a_notification(
    sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL with its pool taken by CLI commands at once: reading the silences failed
    inside a delivery ("Task exception was never retrieved") and its notification waited out
    its lease (5 min); inside intake, POST /v1/runs answered 503. Here the silences table is
    locked, so that each read of it times out."""
    monkeypatch.setattr(_pg_pool, "COMMAND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(dispatch, "RETRY_SOON_S", 0.5)  # the row given back is due again soon
    caplog.set_level(logging.INFO, logger="relay")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(url=sink.url))
    async with fresh_database(shared_server()) as url, aiohttp.ClientSession() as http:
        settings = Settings(config=config, listen="127.0.0.1:0", store_url=url)
        sink.responses = [status(503)] * 1000  # the first relay leaves it pending
        first, url_1 = await serving(settings)
        await post(http, url_1, failed("email/send", "run_early"))
        await sink.wait_for(1)
        await first.shutdown()
        async with locked(url, "relay_silences"):
            sink.responses = []
            second, url_2 = await serving(settings)  # its silences were never read: none to go on
            try:
                for _ in range(1200):  # 60 s at most
                    if "store unavailable before sending" in caplog.text:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the delivery did not find the store unavailable")
            except BaseException:
                await second.shutdown()
                raise
        try:
            await wait_sent(second, 1)  # within seconds, not the 5 min lease
            await asyncio.sleep(RELOAD_S)
            async with locked(url, "relay_silences"):  # now the last read is kept
                assert await post(http, url_2, failed("email/send", "run_late")) == 202
                await wait_sent(second, 2)
        finally:
            await second.shutdown()
    assert "Task exception was never retrieved" not in caplog.text


async def serving(settings: Settings) -> tuple[Service, str]:
    service = Service(settings, compile_config(load(settings)))
    host, port = await service.start()
    return service, f"http://{host}:{port}"


async def post(http: aiohttp.ClientSession, url: str, run: dict[str, Any]) -> int:
    async with http.post(f"{url}/v1/runs", json=run) as resp:
        return resp.status


@contextlib.asynccontextmanager
async def locked(url: str, table: str) -> AsyncIterator[None]:
    """`table` locked against every read until the block ends."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def wait_sent(service: Service, sent: int) -> None:
    for _ in range(1200):  # 60 s at most
        if (counts := await service.store.counts())["sent"] >= sent:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sent} not sent: {counts}")


@pytest.mark.parametrize(
    "status", sorted(KNOWN_STATUSES | frozenset().union(*EVENT_STATUSES.values()))
)
def test_a_status_without_a_warning_fits_in_any_case(status: str) -> None:
    """A status matcher fits in any case, as a rule's status does: `new_issue` fit no error
    event's NEW_ISSUE (a silence muting nothing), though no warning said so."""
    for written in (status.lower(), f" {status.title()} "):
        assert matcher_warnings({"status": [written]}, None) == []
        assert fits({"status": (written,)}, {"status": status}), written
        assert muted(silence(status=written), status=status), written


KINDS: list[dict[str, Any]] = [
    {"rule": "r"},
    {"rule": ["x", "r"], "task": "billing/*"},
    {"channel": "c", "status": "failure"},
    {"channel": "other"},
    {"status": "failed"},
    {"status": ["completed", "failure"], "event": "run"},
    {"event": "deployment.failed"},
    {"task": "billing/*"},
    {"tag": "env:prod"},
    {"task": "email/*", "tag": "env:prod"},
    {"task": ["*/charge", "billing/*"]},  # a glob that may start with anything: looked at always
    {"task": ["bill[i]ng/*", "billing/ch*"], "tag": ["a", "env:prod"]},
    {"rule": "q", "tag": ["env:prod", "b"], "task": "x"},
]


@pytest.mark.parametrize("order", range(len(KINDS)))
def test_a_send_looks_only_at_silences_that_may_fit_and_finds_the_same_first(order: int) -> None:
    """A send checked every active silence (1,000: ~2.5 ms a send, on the event loop). The
    silences are filed by one exact matcher; the first that mutes is still the one in order."""
    kinds = [silence(**m) for m in KINDS[order:] + KINDS[:order]]
    index = SilenceIndex(kinds)
    fields: dict[str, str]
    for fields in [
        {"rule": "r", "channel": "c", "status": "FAILED", "event": "run"},
        {"rule": "q", "channel": "c", "status": "crashed", "event": "run"},
        {"rule": "q", "channel": "d", "status": "COMPLETED", "event": "run"},
        {"rule": "q", "channel": "other", "status": "", "event": "deployment.failed"},
        {"rule": "q", "channel": "d", "status": "EXECUTING", "event": "run"},
    ]:
        for task, tags in [
            ("billing/charge", ["env:prod", "a", "b"]),
            ("email/send", []),
            ("x", ["b"]),
            ("", ["env:prod"]),
        ]:
            every = silenced_by(kinds, NOW + 1, task=task, tags=tags, **fields)
            assert silenced_by(index, NOW + 1, task=task, tags=tags, **fields) == every
    nothing = {"rule": "p", "channel": "d", "status": "EXECUTING", "event": "deployment.success"}
    looked_at = index.candidates({**nothing, "task": "zz", "tags": ["none"]})
    assert [s.matchers for s in looked_at] == [{"task": ("*/charge", "billing/*")}]


def counting_fits(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matchers of each silence a mute check looks at from now on (one entry each)."""
    looked_at: list[Any] = []

    def counted(matchers: Any, fields: Any) -> bool:
        looked_at.append(matchers)
        return fits(matchers, fields)

    monkeypatch.setattr(silence_index, "fits", counted)
    return looked_at


def test_a_send_looks_at_the_silences_of_its_own_tags_and_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 silences, each naming a rule or a channel beside a tag or a task of its own
    (`--rule failures --tag customer:42`), were all filed under the rule or channel: each
    send looked at thousands of them, and ingest fell from 700 updates a second to 10."""
    many = [
        silence(rule="r", tag=f"customer:{n}") if n % 2 else silence(channel="c", task=f"t{n}/*")
        for n in range(2000)
    ]
    looked_at = counting_fits(monkeypatch)
    index = SilenceIndex(many)
    fields = {"rule": "r", "channel": "c", "status": "FAILED", "event": "run"}
    assert silenced_by(index, NOW + 1, task="billing/x", tags=["env:prod"], **fields) is None
    assert len(looked_at) == 0
    found = silenced_by(index, NOW + 1, task="t10/a", tags=["x"], **fields)
    assert (found, len(looked_at)) == (many[10].id, 1)  # t10/*
    found = silenced_by(index, NOW + 1, task="t10/a", tags=["customer:7", "x"], **fields)
    assert (found, len(looked_at)) == (many[7].id, 2)  # the first in order: customer:7, t10/*


async def test_a_send_looks_at_the_silences_of_its_rule_channel_or_status_only(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    now = time.time()
    for n in range(1001):  # silences of other rules and channels, then one of billing's tasks
        other = {"rule": f"gone-{n}"} if n % 2 else {"channel": "other", "task": f"t{n}/*"}
        matchers = parse_matchers({"task": "billing/*"} if n == 1000 else other)
        await r.service.store.add_silence(new_silence(matchers, ends_at=now + 3600, now=now))
    r.service.silences.invalidate()
    looked_at = counting_fits(monkeypatch)
    await r.post([failed("billing/charge", "run_muted"), failed("email/send", "run_loud")])
    [got] = await sink.wait_for(1)
    assert got.json()["run"]["id"] == "run_loud"
    await wait_counts(r, sent=1, muted=1)
    # intake's check of two notifications and the send of one: the glob silence each time
    assert len(looked_at) <= 3  # before: 1,001 each
