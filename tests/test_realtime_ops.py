"""The Realtime source as an operator runs it for weeks: what /metrics says through an outage,
and what a feed holds after a must-refetch. Against the fake Trigger.dev Realtime server
(tests/fakes/realtime.py) and relay in-process."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.conftest import Relay, RelayFactory, Sink
from tests.fakes.realtime import CUT, fake_realtime, session
from tests.test_realtime import FEED_KEY, H1, config, following

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
