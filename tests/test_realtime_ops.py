"""The Realtime source as an operator runs it for weeks: what /metrics says through an outage,
and what a feed holds after a must-refetch. Against the fake Trigger.dev Realtime server
(tests/fakes/realtime.py) and relay in-process."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import Relay, RelayFactory, Sink
from tests.fakes.realtime import CUT, Seen, fake_realtime, session
from tests.test_realtime import (
    E_FAILS,
    FEED_KEY,
    H1,
    RUN_E,
    SECRET,
    TAG,
    asked_for,
    config,
    extended_session,
    following,
    statuses,
)

LAG = re.compile(rf'^relay_realtime_lag_seconds\{{feed="{re.escape(FEED_KEY)}"\}} (\S+)$', re.M)
FAILED = re.compile(
    rf'^relay_realtime_errors_total\{{feed="{re.escape(FEED_KEY)}",reason="server_error"\}}'
    r" ([1-9]\S*)$",
    re.M,
)


async def shown(r: Relay, pattern: re.Pattern[str], present: bool) -> str:
    """/metrics once `pattern` is (or is no longer) in it."""
    for _ in range(600):
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        if bool(pattern.search(metrics)) == present:
            return metrics
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pattern.pattern} {'never' if present else 'still'} shown: {metrics}")


async def test_a_feed_whose_server_fails_shows_no_lag_until_it_catches_up_again(
    relay: RelayFactory, sink: Sink
) -> None:
    """relay_realtime_lag_seconds kept its last value while Trigger.dev was down: a dashboard
    showed the healthy lag of before (0 s) for a feed nobody could follow. Its lag is unknown
    from a failed request until the next up-to-date answer, and not exported meanwhile."""
    async with fake_realtime(session()) as fake:
        r = await relay(config(fake.url, sink.url))
        await shown(r, LAG, True)
        fake.refuse = 503  # every request: a server error, retried with backoff
        metrics = await shown(r, FAILED, True)
        assert not LAG.search(metrics), metrics
        fake.refuse = None
        await shown(r, LAG, True)


async def test_an_answer_cut_mid_body_is_logged_in_words(caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot whose connection closed halfway through its JSON array was logged as
    `reason=ClientPayloadError`, aiohttp's class name, which tells an operator nothing."""
    caplog.set_level(logging.WARNING, logger="relay")
    headers = {"electric-handle": H1, "electric-offset": "0_inf"}
    async with fake_realtime(session()) as fake:
        fake.faults = [(200, headers, CUT)]
        async with following(fake) as h:
            await h.submit.wait_for(1)  # asked again: the snapshot
    failed = [r for r in caplog.records if r.getMessage() == "realtime request failed; retrying"]
    assert [r.__dict__["reason"] for r in failed] == ["answer cut short or not decodable"]
    assert h.failed == ["network"]


UP_TO_DATE = re.compile(
    rf'^relay_realtime_last_up_to_date_timestamp_seconds\{{feed="{re.escape(FEED_KEY)}"\}}'
    r" (\S+)$",
    re.M,
)
REFUSED = re.compile(
    rf'^relay_realtime_errors_total\{{feed="{re.escape(FEED_KEY)}",reason="auth_error"\}}'
    r" ([1-9]\S*)$",
    re.M,
)
OTHER_KEY = "tr_prod_notTheKeyAnyMore0000"
FOLLOWING = re.compile(rf'^relay_realtime_following\{{feed="{re.escape(FEED_KEY)}"\}} 1', re.M)


def up_to_date(metrics: str) -> float:
    found = UP_TO_DATE.search(metrics)
    assert found is not None, metrics
    return float(found.group(1))


async def test_a_reload_bringing_a_refused_key_keeps_when_the_feed_last_caught_up(
    relay: RelayFactory, sink: Sink
) -> None:
    """A reload restarts the Realtime source: its feeds' last up-to-date time went with the
    old one and came back only at the next up-to-date answer, so after a reload bringing a
    refused secret_key RelayRealtimeStalled could never fire. A feed the reload keeps keeps
    its series and value."""
    async with fake_realtime(session()) as fake:
        r = await relay(config(fake.url, sink.url, error_backoff="100ms"))
        await shown(r, UP_TO_DATE, True)
        fake.refuse = 401  # the feed stalls: it catches up no more
        caught_up = up_to_date(await shown(r, REFUSED, True))
        path = Path(r.service.compiled.loaded.source.filename)
        path.write_text(path.read_text().replace(SECRET, OTHER_KEY))
        assert await r.service.reload("SIGHUP") is True
        await fake.wait_for(lambda s: OTHER_KEY in s.headers.get("Authorization", ""))
        async with r.http.get(r.url + "/metrics") as resp:
            metrics = await resp.text()
        assert FOLLOWING.search(metrics), metrics
        assert up_to_date(metrics) == caught_up


async def test_a_feed_never_caught_up_shows_since_when_it_is_followed(
    relay: RelayFactory, sink: Sink
) -> None:
    """A feed refused from the start had no last up-to-date series at all: the alert on it
    saw nothing. It shows the time its follower started until it first catches up."""
    started = time.time()
    async with fake_realtime(session()) as fake:
        fake.refuse = 401
        r = await relay(config(fake.url, sink.url, error_backoff="100ms"))
        metrics = await shown(r, REFUSED, True)
        assert FOLLOWING.search(metrics), metrics
        assert started <= up_to_date(metrics) <= time.time()


def live(tags: str) -> Callable[[Seen], bool]:
    return lambda seen: seen.query.get("tags") == tags and seen.query.get("live") == "true"


async def test_a_reload_adding_a_feed_leaves_the_others_running(
    relay: RelayFactory, sink: Sink
) -> None:
    """A reload that changed anything under sources.realtime stopped and started every feed:
    each lost its long poll in flight and asked again (a feed of a large shape read its rows
    again). One the reload leaves as it was follows on untouched: the reload that adds a feed
    causes no request of it; the added one starts."""
    async with fake_realtime([], live_hold_s=120) as fake:  # a long poll held past the test
        text = config(fake.url, sink.url)
        r = await relay(text)
        await fake.wait_for(live(TAG))
        path = Path(r.service.compiled.loaded.source.filename)
        path.write_text(text.replace("    feeds:\n", '    feeds:\n      - tags: ["other"]\n'))
        assert await r.service.reload("SIGHUP") is True
        await fake.wait_for(live("other"))
        ours = [seen.answer for seen in fake.requests if seen.query.get("tags") == TAG]
        assert ours == ["snapshot", "up-to-date", ""]  # the last still held: in flight


@pytest.mark.parametrize(
    ("column", "value"),
    [("costInCents", "NaN"), ("baseCostInCents", "-Infinity"), ("runTags", '{"a b",NULL}')],
)
async def test_a_failed_run_with_a_column_no_run_holds_still_alerts(
    column: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A float8 holds NaN and infinities, a text[] NULL elements: a feed's row with one was
    skipped whole (found by a blind suite), so the run's failure never alerted, where a POSTed
    row gets a 400 naming the column. The column is dropped, named in a warning, and the run
    goes on to the rules."""
    script = extended_session()
    fails = script[4]
    assert fails.name == "live (E fails)"
    row = {**E_FAILS, column: value}
    script[4] = replace(fails, body=[{**fails.body[0], "value": row}, *fails.body[1:]])
    with caplog.at_level(logging.WARNING, logger="relay.realtime"):
        async with fake_realtime(script) as fake, following(fake) as h:
            await fake.wait_for(asked_for(H1, live=True, offset="29374039000_0"))
            batches = await h.submit.wait_for(4)
    assert statuses(batches)[3] == [(RUN_E, "FAILED")]
    dropped = [
        r for r in caplog.records if r.getMessage() == "realtime column dropped: cannot decode it"
    ]
    assert [r.__dict__["field"].startswith(column) for r in dropped] == [True], caplog.text
