"""A run's `dashboardUrl` becomes a link or a button only when it is an absolute http(s) URL.

A pushed run or a signed alert webhook can carry anything there (`javascript:alert(1)`, `ftp://x`,
a relative path, spaces around a URL, 5,000 characters). That value went into Slack's button (Slack refuses
the blocks: `invalid_blocks`, and relay resent the message as plain text, its layout lost), into
Discord's embed and Teams' Action.OpenUrl (both refuse the message), and into digest links. Now
such a run links where a run without one does: `defaults.dashboard_url`; spaces around a
URL are trimmed.

Real relay in process, the fakes of Slack, Discord and Teams speaking their protocols, real SQLite.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from relay.config import Defaults
from relay.dashboard_links import dashboard_link
from relay.filters import web_url
from relay.templating import RenderContext, Renderer
from tests.conftest import RelayFactory, sdk_run
from tests.fakes.presets import FakeDiscord, FakeTeams
from tests.fakes.slack import FakeSlack

RUN_ID = "run_cmy2trjs6h23sbbwrzm2jlnhj"
BUILT = f"https://cloud.trigger.dev/projects/v3/proj_test/runs/{RUN_ID}"  # defaults.dashboard_url
NOT_WEB = ["javascript:alert(1)", "ftp://x/run", "/runs/relative", "https://x/" + "r" * 5000]

CONFIG = """\
defaults:
  retry: {{max_attempts: 2, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  project_ref: proj_test
channels:
  {name}: {channel}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [{name}]{extra}}}
"""


def failed(dashboard_url: str, run_id: str = RUN_ID) -> dict[str, Any]:
    return {**sdk_run("failed"), "id": run_id, "dashboardUrl": dashboard_url}


def urls(body: Any) -> list[str]:
    """Every `url` value in a message body, however deep."""
    if isinstance(body, dict):
        own = [v for k, v in body.items() if k == "url" and isinstance(v, str)]
        return own + [u for v in body.values() for u in urls(v)]
    if isinstance(body, list):
        return [u for v in body for u in urls(v)]
    return []


@pytest.mark.parametrize("bad", NOT_WEB, ids=["javascript", "ftp", "relative", "5000_chars"])
async def test_slack_buttons_link_only_to_web_pages(
    relay: RelayFactory, slack: FakeSlack, bad: str
) -> None:
    channel = f"{{type: slack, webhook_url: {slack.webhook_url}}}"
    r = await relay(CONFIG.format(name="chat", channel=channel, extra=""))
    await r.post(failed(bad))
    [call] = await slack.wait_for(1)
    await asyncio.sleep(0.2)  # a refused message would be sent again as text by now
    assert len(slack.calls) == 1 and slack.problems == [[]]
    assert urls(call.json()["blocks"]) == [BUILT]


async def test_a_web_dashboard_url_is_the_link(relay: RelayFactory, slack: FakeSlack) -> None:
    own = "  https://trigger.example/projects/v3/proj_x/runs/run_1\n"  # Slack refused it as sent
    channel = f"{{type: slack, webhook_url: {slack.webhook_url}}}"
    r = await relay(CONFIG.format(name="chat", channel=channel, extra=""))
    await r.post(failed(own))
    [call] = await slack.wait_for(1)
    assert urls(call.json()["blocks"]) == [own.strip()] and slack.problems == [[]]


async def test_slack_digest_links_only_to_web_pages(relay: RelayFactory, slack: FakeSlack) -> None:
    channel = f"{{type: slack, webhook_url: {slack.webhook_url}}}"
    extra = ", group_by: [taskIdentifier], group_wait: 200ms"
    r = await relay(CONFIG.format(name="chat", channel=channel, extra=extra))
    await r.post([failed("javascript:alert(1)"), failed("ftp://x", "run_second")])
    [call] = await slack.wait_for(1)
    raw = call.raw.decode()
    assert "javascript:" not in raw and "ftp://" not in raw and slack.problems == [[]]
    assert f"<{BUILT}|" in raw  # the run's own link, built from defaults.dashboard_url
    assert urls(call.json()["blocks"]) == [BUILT.replace(RUN_ID, "run_second")]  # the latest


async def test_a_digests_button_links_to_its_latest_run(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    """The latest by updatedAt, not the first or the last posted (three: not the second)."""
    channel = f"{{type: slack, webhook_url: {slack.webhook_url}}}"
    extra = ", group_by: [taskIdentifier], group_wait: 200ms"
    r = await relay(CONFIG.format(name="chat", channel=channel, extra=extra))
    runs = [failed(f"https://t.example/runs/run_{i}", f"run_{i}") for i in range(3)]
    for run, minute in zip(runs, (58, 59, 57), strict=True):
        run["updatedAt"] = f"2026-08-20T09:{minute}:00.000Z"
    await r.post(runs)
    [call] = await slack.wait_for(1)
    assert call.json()["blocks"][-1]["elements"][0]["url"] == "https://t.example/runs/run_1"


@pytest.mark.parametrize("bad", NOT_WEB[:2], ids=["javascript", "ftp"])
async def test_discord_and_teams_link_only_to_web_pages(
    relay: RelayFactory, discord: FakeDiscord, teams: FakeTeams, bad: str
) -> None:
    channels = (
        f"{{type: discord, webhook_url: '{discord.webhook_url}'}}\n"
        f"  room: {{type: msteams, webhook_url: '{teams.webhook_url}'}}"
    )
    config = CONFIG.format(name="chat", channel=channels, extra="").replace(
        "notify: [chat]", "notify: [chat, room]"
    )
    r = await relay(config)
    await r.post(failed(bad))
    [to_discord], [to_teams] = await discord.wait_for(1), await teams.wait_for(1)
    assert discord.problems == teams.problems == [[]]
    assert set(urls(to_discord.json())) == {BUILT}
    assert BUILT in urls(to_teams.json()) and bad not in json.dumps(to_teams.json())


@pytest.mark.parametrize(
    "hostless", ["http://@/x", "https://user@/runs/1", "http://:80/x", "http://[]/x"]
)
def test_a_url_without_a_host_is_no_link(hostless: str) -> None:
    """`http://@/x` passed web_url (the `@` read as the host) and became a button and a link
    going nowhere; a run carrying it now links where a run without one does."""
    assert web_url(hostless) is None
    link = dashboard_link(Defaults(project_ref="proj_test"))
    assert link(failed(hostless)) == BUILT
    assert web_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert web_url("http://x.test:port/x") is None  # a port that is no number: no URL


def test_a_link_is_at_most_2000_characters_and_holds_no_control_character() -> None:
    page = "https://cloud.trigger.dev/"
    assert web_url(page + "a" * (2000 - len(page))) == page + "a" * (2000 - len(page))
    assert web_url(page + "a" * (2001 - len(page))) is None
    assert web_url(page + "runs/a\x01b") is None


def rendered_links(templates: Path, text: str, project_ref: str | None = "proj_test") -> str:
    """`text` rendered as a console template, runs linked by the default dashboard_url."""
    (templates / "console").mkdir()
    (templates / "console" / "t.txt.j2").write_text(text)
    ctx = RenderContext({"id": RUN_ID}, "r", "c", "console", "ntf_1", None)
    link = dashboard_link(Defaults(project_ref=project_ref))
    return Renderer(templates, link=link).render("console", "t", ("txt",), ctx).parts["txt"]


def test_a_run_without_an_id_has_no_link(tmp_path: Path) -> None:
    """`{{ {}|dashboard_url }}` (a run without an id) rendered `…/runs/`: a link to no run.
    A pattern that does not name the run still links."""
    rendered = rendered_links(
        tmp_path,
        "[{{ {}|dashboard_url }}] [{{ {'taskIdentifier': 't'}|dashboard_url }}]"
        " [{{ {'id': 'run_1'}|dashboard_url }}]",
    )
    assert rendered == f"[] [] [{BUILT.replace(RUN_ID, 'run_1')}]"
    project = dashboard_link(Defaults(dashboard_url="https://dash.test/{project_ref}/runs"))
    assert project({"project": {"ref": "proj_x"}}) == "https://dash.test/proj_x/runs"


def test_an_event_that_is_no_run_gets_no_run_link(tmp_path: Path) -> None:
    """defaults.dashboard_url is a run's page: an error group's alert (with an id) is none."""
    rendered = rendered_links(tmp_path, "[{{ {'event': 'error', 'id': 'run_1'}|dashboard_url }}]")
    assert rendered == "[]"


def test_a_run_of_no_known_project_gets_no_link(tmp_path: Path) -> None:
    """Neither defaults.project_ref nor an alert's project: not `…/projects/v3//runs/…`."""
    rendered = rendered_links(tmp_path, "[{{ {'id': 'run_1'}|dashboard_url }}]", project_ref=None)
    assert rendered == "[]"


def test_a_project_ref_that_is_no_text_is_not_taken(tmp_path: Path) -> None:
    rendered = rendered_links(
        tmp_path, "{{ {'project': {'ref': 5}, 'id': 'run_1'}|dashboard_url }}"
    )
    assert rendered == BUILT.replace(RUN_ID, "run_1")  # defaults.project_ref's


def test_what_an_alert_names_is_percent_encoded_in_the_link_relay_makes() -> None:
    """An alert's project ref and a deployment's short code are put in the path encoded (a
    `/`, `?` or `#` in them made another page, a query or a fragment); a deployment with an
    empty short code has no page: no link, not `…/deployments/`."""
    link = dashboard_link(Defaults(project_ref="proj_test"))
    run = {"id": "run_1", "project": {"ref": "p/x?y"}}
    assert link(run) == "https://cloud.trigger.dev/projects/v3/p%2Fx%3Fy/runs/run_1"
    deployment = {
        "event": "deployment.failed",
        "project": {"ref": "p/x"},
        "deployment": {"shortCode": "a/b#c"},
    }
    assert link(deployment) == "https://cloud.trigger.dev/projects/v3/p%2Fx/deployments/a%2Fb%23c"
    assert link({**deployment, "deployment": {"shortCode": ""}}) is None
