"""Slack down as its Web API says it (HTTP 200, ok: false): an outage, as a 503 is, so the
backlog goes as soon as Slack answers again — against a fake Slack on loopback and relay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import RelayFactory, sdk_run
from tests.fakes.slack import TOKEN, FakeSlack, api_error
from tests.test_delivery import wait_reason


def config(slack: FakeSlack) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 12, max_age: 1h, min_backoff: 10m}}
  timeout: 2s
  project_ref: proj_test
channels:
  oncall:
    type: slack
    token: {TOKEN}
    channel: C123
    api_url: {slack.api_url}
    concurrency: 1
    rate_limit: {{per_second: 50, burst: 10}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [oncall]}}
"""


def failing_run(i: int) -> dict[str, Any]:
    return {**sdk_run("failed"), "id": f"run_outage_{i}"}


async def wait_sent(r: Any, count: int) -> None:
    for _ in range(600):
        if (await r.service.store.counts())["sent"] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {count} sent: {await r.service.store.counts()}")


@pytest.mark.parametrize("word", ["service_unavailable", "team_added_to_org"])
async def test_slack_saying_it_is_down_is_an_outage_its_end_sends_the_backlog(
    relay: RelayFactory, slack: FakeSlack, word: str
) -> None:
    """chat.postMessage answers `{"ok": false, "error": "service_unavailable"}` with HTTP 200
    when Slack is down: counted as a server_error but not as the 503 it says, so no outage,
    and the notifications it failed waited out their backoff (up to 10 minutes) after Slack
    came back. Now the send that succeeds after two of them failed so sends them next."""
    slack.script(*[api_error(word)] * 6)  # the quick tries of two notifications
    r = await relay(config(slack))
    for i in range(2):
        await r.post(failing_run(i))
        row = await wait_reason(r, f"run_outage_{i}", "oncall")
        assert (row.reason, row.attempts) == ("server_error", 3)  # due in 5-10 minutes
    await r.post(failing_run(2))
    await wait_sent(r, 3)
    posted = [body["text"].split(" · ")[2].split(":")[0] for body in slack.posted()[6:]]
    assert posted == ["run_outage_2", "run_outage_0", "run_outage_1"]
