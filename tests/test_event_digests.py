"""Digests of Trigger.dev alert events (rules with `event: error` / `deployment.failed` /
`deployment.success` and group_by): every shipped digest template speaks of errors or
deployments, not runs, and links each one; a run digest is unchanged (its golden files in
test_templating, test_channel_templates and channels/test_presets).

Golden files: tests/golden/<type>/digest/<case>.<part>; regenerate with
`RELAY_UPDATE_GOLDEN=1 pytest tests/test_event_digests.py` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.channels import REGISTRY
from relay.config import Defaults
from relay.dashboard_links import dashboard_link
from relay.formats.trigger_alerts import parse_alert, signature
from relay.grouping import digest_context
from relay.templating import RenderContext, Renderer, fallback_json, fallback_text
from tests.channels.shared import HOSTILE
from tests.channels.test_presets import check_sent
from tests.conftest import OUR_ALERTS, RelayFactory, Sink, alert_event, assert_golden
from tests.fakes.slack import block_kit_problems
from tests.test_channel_templates import no_pings_or_forged_links

GOLDEN = Path(__file__).parent / "golden"
LINK = dashboard_link(Defaults(project_ref="proj_abc123"))
RENDERER = Renderer(link=LINK)  # a deployment links to its page through `|dashboard_url`
CASES = {
    "error_events": ["alert.error", "alert.error.regression"],
    "deployment_failed_events": [
        "alert.deployment.failed",
        "alert.deployment.failed.preview",
        "legacy-v1.deployment.failed",
    ],
    "deployment_success_events": ["alert.deployment.success", "legacy-v1.deployment.success"],
}
# what a run digest says that an event digest must not
RUN_WORDS = re.compile(r"\bruns?\b|unknown task|Open (the )?latest run|run\.digest", re.I)


def digest_ctx(channel_type: str, case: str) -> RenderContext:
    runs = [alert_event(name) for name in CASES[case]]
    head = runs[-1]
    group = digest_context("grp_0123", {"environment.id": "cmawoa5x9dbfmzrfzms2sq7bh"}, runs)
    return RenderContext(
        head, "prod-events", f"team-{channel_type}", channel_type, "dgs_0123", LINK(head), group
    )


def rendered(channel_type: str, case: str) -> dict[str, str]:
    parts = REGISTRY[channel_type].parts
    out = RENDERER.render(channel_type, "digest", parts, digest_ctx(channel_type, case))
    assert not out.fallback, out.error
    return out.parts


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_event_digests_match_golden(channel_type: str, case: str) -> None:
    for part, text in rendered(channel_type, case).items():
        assert_golden(GOLDEN / channel_type / "digest" / f"{case}.{part}", text)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_event_digests_speak_of_events_and_link_each(channel_type: str, case: str) -> None:
    parts = rendered(channel_type, case)
    text = "\n".join(parts.values())
    # the webhook's words are its type and text (its events hold the raw alerts, stacks too)
    body = orjson.loads(parts["json"]) if channel_type == "webhook" else None
    words = f"{body['type']} {body['text']}" if body else re.sub(r"https?://\S+", "", text)
    assert not RUN_WORDS.search(words), RUN_WORDS.search(words)
    noun = "error" if case == "error_events" else "(failed )?deployment"
    assert re.search(rf"\b\d+ {noun}s\b", words, re.I), words[:300]
    if case == "error_events":  # each error group's page, as the alert sent it
        assert "/errors/fp_9c1e4a7d2b" in text
        assert ("new_issue" if body else "New error") in text
        assert ("regression" if body else "Regression") in text
    else:  # the deployments' versions, environments and pages
        assert "20260820.2" in text or "20260820.3" in text
        assert "/deployments/" in text
    if case == "deployment_failed_events":
        assert "BuildError" in text and "20260820.5" in text and "feat/invoice-pdf" in text
    if channel_type in ("discord", "msteams", "pagerduty"):
        check_sent(channel_type, parts["json"])
    if channel_type == "slack":
        assert block_kit_problems(json.loads(parts["json"])) == []


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_a_digest_of_mixed_events_is_the_generic_one(channel_type: str) -> None:
    """A rule of several events (`event: [deployment.failed, error]`) can group both: the
    digest took the latest event's kind for all ("2 errors", a deployment listed as an error
    group, the webhook's `error.digest` with a deployment among its `errors`). A mix is the
    generic digest; a group of one kind keeps that kind's (as a single-event rule's)."""
    mixed = [alert_event("alert.deployment.failed"), alert_event("alert.error")]
    group = digest_context("grp_0123", {}, mixed)
    ctx = RenderContext(mixed[-1], "r", "c", channel_type, "dgs_0123", LINK(mixed[-1]), group)
    out = RENDERER.render(channel_type, "digest", REGISTRY[channel_type].parts, ctx)
    assert not out.fallback, out.error
    text = "\n".join(out.parts.values())
    assert not re.search(r"\b2 (errors|(failed )?deployments)\b", text, re.I), text[:300]
    assert orjson.loads(fallback_json(ctx))["type"] == "run.digest"
    if channel_type == "webhook":
        assert orjson.loads(out.parts["json"])["type"] == "run.digest"
    assert group["event"] is None
    assert digest_context("grp_0123", {}, [mixed[1]] * 2)["event"] == "error"


def hostile(run: dict[str, Any]) -> dict[str, Any]:
    """An event whose every shown text tries markup, pings and forged links."""
    text = HOSTILE + " <!channel> <https://evil.test|x>"
    env = {**run["environment"], "slug": text, "name": text}
    deployment = {**run["deployment"], "version": text} if "deployment" in run else None
    error = {**(run.get("error") or {}), "message": text, "type": text, "name": text}
    return {**run, "error": error, "environment": env, "taskIdentifier": text} | (
        {"deployment": deployment} if deployment else {}
    )


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_hostile_and_many_events_stay_valid(channel_type: str, case: str) -> None:
    runs = [hostile(alert_event(name)) for name in CASES[case]] * 30
    group = digest_context("grp_x", {"x": HOSTILE}, runs)
    ctx = RenderContext(runs[-1], "r", "c", channel_type, "dgs_x", LINK(runs[-1]), group)
    out = RENDERER.render(channel_type, "digest", REGISTRY[channel_type].parts, ctx)
    assert not out.fallback, out.error
    if channel_type in ("discord", "msteams", "pagerduty"):
        check_sent(channel_type, out.parts["json"])
    if channel_type == "slack":
        message = json.loads(out.parts["json"])
        assert block_kit_problems(message) == [] and no_pings_or_forged_links(message)
    if channel_type == "webhook":
        items = "errors" if case == "error_events" else "deployments"
        assert len(orjson.loads(out.parts["json"])[items]) == len(runs)
    if channel_type == "email":
        assert "<script>" not in out.parts["html"]


@pytest.mark.parametrize(
    ("case", "kind", "items"),
    [
        ("error_events", "error.digest", "errors"),
        ("deployment_failed_events", "deployment.digest", "deployments"),
        ("deployment_success_events", "deployment.digest", "deployments"),
    ],
)
def test_the_webhook_digest_of_events_has_its_own_type(case: str, kind: str, items: str) -> None:
    body = orjson.loads(rendered("webhook", case)["json"])
    assert body["type"] == kind and body["group"]["count"] == len(CASES[case])
    assert [i["id"] for i in body[items]] == [alert_event(n)["id"] for n in CASES[case]]
    assert all(i["dashboardUrl"] for i in body[items])
    # the plain fallback (a broken override) keeps the type a receiver routes on
    ctx = digest_ctx("webhook", case)
    assert orjson.loads(fallback_json(ctx))["type"] == kind
    assert f"{len(CASES[case])} {items}" in fallback_text(ctx)


def test_an_error_digest_counts_each_error_group_at_its_latest_count() -> None:
    """occurrenceCount is the error group's count over all time: a group that alerted new (17)
    then as a regression (23) happened 23 times, not 40; another group (another task) adds its
    own count."""
    new, regression = (alert_event(name) for name in CASES["error_events"])
    other = {**new, "error": {**new["error"], "taskIdentifier": "report", "occurrenceCount": 5}}
    for runs, total in (([new, regression], 23), ([new, regression, other], 28)):
        group = digest_context("grp_x", {}, runs)
        said = {}
        for channel_type in ("email", "console"):
            ctx = RenderContext(runs[-1], "r", "c", channel_type, "dgs_x", LINK(runs[-1]), group)
            out = RENDERER.render(channel_type, "digest", REGISTRY[channel_type].parts, ctx)
            said[channel_type] = "\n".join(out.parts.values()).splitlines()
        assert f"Occurrences  {total}" in said["email"], total
        assert f"  seen      {total} times in all" in said["console"], total


def test_error_digests_say_when_and_where_as_single_errors_do() -> None:
    """A digest of the bare `alert.error_group` body (no envelope, so no `created`) showed no
    "Seen" time where the enveloped form's did; a digest's subject had no environment where
    each error's has it (`[relay · Production]`)."""
    body = json.loads((OUR_ALERTS / "alert.error.body.json").read_text())
    body["created"] = body["object"]["error"]["lastSeen"]  # the same moment, either form
    forms = [body, {"type": "alert.error_group", **body["object"]}]
    seen, subjects = [], []
    for form in forms:
        run = parse_alert(form).run
        assert run is not None
        event = run.as_dict()
        group = digest_context("grp_x", {}, [event])
        ctx = RenderContext(event, "r", "c", "email", "dgs_x", LINK(event), group)
        out = RENDERER.render("email", "digest", REGISTRY["email"].parts, ctx).parts
        seen.append([ln for ln in out["txt"].splitlines() if ln.startswith("Seen")])
        subjects.append(out["subject"])
    assert seen[0] == seen[1] == ["Seen         2026-08-20 09:55:48 UTC"]
    assert subjects[0] == subjects[1] and subjects[0].startswith("[relay · Production] ")


@pytest.mark.parametrize("channel_type", ["slack", "discord", "msteams"])
def test_an_error_digest_tells_classifications_by_their_own_emoji(channel_type: str) -> None:
    """The breakdown of an error digest marks a new error 🚨 and a regression ⚠️, as the
    digest's lines and the single messages do, not ⚠️ for every classification."""
    text = "\n".join(rendered(channel_type, "error_events").values()).replace("\\", "")
    assert re.search(r"🚨[^\n\w]{0,12}(1 )?NEW_ISSUE", text), text[:2000]
    assert not re.search(r"⚠️[^\n\w]{0,12}(1 )?NEW_ISSUE", text)


CONFIG = """\
sources:
  trigger_alerts: {{secret: whsec-test}}
defaults: {{project_ref: proj_abc123}}
channels:
  hook: {{type: webhook, url: "{url}"}}
rules:
  - name: prod-errors
    match: {{event: error}}
    notify: [hook]
    group_by: [taskIdentifier]
    group_wait: 2s
"""


async def test_a_relay_sends_one_error_digest(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    for name in CASES["error_events"]:
        body = (OUR_ALERTS / f"{name}.body.json").read_bytes()
        headers = {"x-trigger-signature-hmacsha256": signature(body, "whsec-test")}
        async with r.http.post(r.url + "/v1/trigger/alerts", data=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
    await sink.wait_for(1)
    digest = sink.received[0].json()
    assert (digest["type"], digest["text"]) == ("error.digest", "2 errors matched prod-errors")
    assert [e["classification"] for e in digest["errors"]] == ["new_issue", "regression"]


def digest_title(channel_type: str, case: str) -> str:
    """The digest's title: Slack's header, Discord's embed title, the Teams card's header."""
    sent = json.loads(rendered(channel_type, case)["json"])
    if channel_type == "slack":
        return str(sent["blocks"][0]["text"]["text"])
    if channel_type == "discord":
        return str(sent["embeds"][0]["title"])
    return str(sent["attachments"][0]["content"]["body"][0]["inlines"][0]["text"])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("channel_type", ["slack", "discord", "msteams"])
def test_a_digest_title_names_the_environment_all_share_as_the_subject(
    channel_type: str, case: str
) -> None:
    """The email digest's subject names the environment when all its runs or events are of one
    (`[relay · Production]`); the Slack, Discord and Teams titles named none. They end with it
    now, by the same rule: none when the events are of several (the failed deployments)."""
    shared = {"error_events": "Production", "deployment_success_events": "prod"}.get(case)
    subject = rendered("email", case)["subject"]
    assert subject.startswith(f"[relay · {shared}] " if shared else "[relay] "), subject
    title = digest_title(channel_type, case)
    assert title.endswith(f" · prod-events · {shared}" if shared else " · prod-events"), title


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pagerduty_digest_summary_names_the_shared_environment(case: str) -> None:
    """PagerDuty's digest summary named no environment where its single events do (`[prod]`)
    and the other channels' digest titles do: it does now, by the same rule."""
    shared = {"error_events": "Production", "deployment_success_events": "prod"}.get(case)
    summary = json.loads(rendered("pagerduty", case)["json"])["payload"]["summary"]
    head = summary.split(" [")[0].split(": ")[0]
    assert head.endswith(f" · prod-events · {shared}" if shared else " · prod-events"), summary


def test_a_digests_cost_is_none_without_one_and_its_counts_go_largest_first() -> None:
    """README: `total_cost_cents` is none when no run carries one (alert events carry none),
    not $0; `by_status` and `by_task` count largest first; first_seen and last_seen are the
    runs' earliest and latest `updatedAt`."""
    events = [alert_event(name) for name in CASES["error_events"]]
    assert digest_context("grp_x", {}, events)["total_cost_cents"] is None
    runs: list[dict[str, Any]] = [
        {"status": "CRASHED", "taskIdentifier": "a", "costInCents": 2, "updatedAt": "T2"},
        {"status": "FAILED", "taskIdentifier": "b", "updatedAt": "T1"},
        {"status": "FAILED", "taskIdentifier": "b", "costInCents": 1.5, "updatedAt": "T3"},
    ]
    group = digest_context("grp_y", {}, runs)
    assert (group["first_seen"], group["last_seen"]) == ("T1", "T3")
    assert group["total_cost_cents"] == 3.5
    assert list(group["by_status"].items()) == [("FAILED", 2), ("CRASHED", 1)]
    assert list(group["by_task"].items()) == [("b", 2), ("a", 1)]


def test_occurrences_count_the_error_alerts_whatever_comes_before_them() -> None:
    """A digest of mixed events: a run's update and an error alert that says no count (neither
    adds to the occurrences) before one that says 17 leave it at 17."""
    new = alert_event("alert.error")
    uncounted = {**new, "error": {**new["error"], "taskIdentifier": "report"}}
    del uncounted["error"]["occurrenceCount"]
    run = {"status": "FAILED", "taskIdentifier": "a", "error": {"message": "boom"}}
    assert digest_context("grp_z", {}, [run, uncounted, new])["occurrences"] == 17
