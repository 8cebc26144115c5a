"""The discord, msteams and pagerduty channels: settings, default templates (golden, valid for each
API, needing no clamping), limits, failure classification against fakes that speak each API's
status codes and bodies, secrets, PagerDuty's dedup / resolve / change events, and delivery end to
end through relay.

Events come from the alert-webhook fixtures through parse_alert (the shipped ones and
tests/fixtures/trigger_alerts/), digests from digest_context over the five SDK fixture runs.
Regenerate the golden files with `RELAY_UPDATE_GOLDEN=1 pytest tests/channels/test_presets.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from relay.channels import REGISTRY, Channel, Outgoing, settings_models
from relay.channels._http import HttpClient
from relay.channels.discord import DiscordSettings, discord_message
from relay.channels.msteams import MAX_BODY_BYTES, MSTeamsSettings, teams_message
from relay.channels.pagerduty import PagerDutySettings, pagerduty_event
from relay.cli import main as relay_cli
from relay.config import RateLimit
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import ConfigError, DeliveryError
from relay.grouping import digest_context
from relay.model import Run
from relay.templating import RenderContext, Renderer, fallback_json
from tests.channels.shared import HOSTILE, failure_of, make_channel, sdk
from tests.conftest import (
    EVENT_TEMPLATES,
    GOLDEN_CASES,
    SDK_FIXTURES,
    RelayFactory,
    alert_event,
    assert_golden,
    sdk_run,
)
from tests.fakes.presets import (
    DISCORD_ID,
    DISCORD_TOKEN,
    PD_KEY,
    TEAMS_SIG,
    FakeDiscord,
    FakePagerDuty,
    FakeTeams,
    connector_failure,
    discord_problems,
    pagerduty_problems,
    teams_problems,
)
from tests.fakes.slack import Reply, check_classified, classified

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
TYPES = ("discord", "msteams", "pagerduty")
SECRETS = (DISCORD_TOKEN, TEAMS_SIG, PD_KEY)
RENDERER = Renderer()  # the shipped templates, compiled once
PD_SETTINGS = PagerDutySettings.model_validate({"type": "pagerduty", "routing_key": PD_KEY})


# ----------------------------------------------------------------------------- helpers


def run_link(run: dict[str, Any]) -> str:
    return f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run.get('id')}"


def run_ctx(channel_type: str, run: dict[str, Any], link: str | None = "") -> RenderContext:
    url = run_link(run) if link == "" else link
    return RenderContext(run, "prod-failures", "oncall", channel_type, "ntf_0123456789abcdef", url)


def case_ctx(channel_type: str, fixture: str) -> RenderContext:
    if fixture == "five_fixtures":
        runs = [sdk(name) for name in SDK_FIXTURES]
        group = digest_context("grp_0123", {"taskIdentifier": "sync-customer-data"}, runs)
        head = runs[-1]
        return RenderContext(
            head, "prod-failures", "oncall", channel_type, "dgs_0123", run_link(head), group
        )
    run = alert_event(fixture)
    return RenderContext(run, "oncall", "oncall", channel_type, "ntf_0123", run.get("dashboardUrl"))


def render(template: str, ctx: RenderContext) -> str:
    rendered = RENDERER.render(ctx.channel_type, template, ("json",), ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts["json"]


def as_sent(channel_type: str, text: str, fallback_key: str = "run_x") -> tuple[str, Any]:
    """(path, body) the channel would send for a rendered part."""
    if channel_type == "discord":
        return "", discord_message(text, "-")
    if channel_type == "msteams":
        return "", teams_message(text, "-")
    path, body = pagerduty_event(text, PD_SETTINGS, fallback_key, "-")
    return path, {"routing_key": PD_KEY, **body}


def problems(channel_type: str, path: str, body: Any) -> list[str]:
    if channel_type == "discord":
        return discord_problems(body)
    if channel_type == "msteams":
        return teams_problems(body)
    return pagerduty_problems(body, change=path.endswith("/change/enqueue"))


def unclamped(channel_type: str, text: str) -> Any:
    """What the channel sends for a default template, checked: valid, and the template's own body
    (the channel adds only what it always adds)."""
    parsed = json.loads(text)
    path, sent = as_sent(channel_type, text)
    assert problems(channel_type, path, sent) == []
    if channel_type == "discord":
        assert sent == {**parsed, "allowed_mentions": {"parse": []}}
    elif channel_type == "msteams":
        assert sent == parsed
    elif parsed.get("event_action") == "change":
        payload = {k: v for k, v in parsed["payload"].items() if k not in ("component", "group")}
        links = {"links": parsed["links"]} if "links" in parsed else {}
        assert sent == {"routing_key": PD_KEY, "payload": payload, **links}
    elif parsed["event_action"] == "trigger":
        severity = sent["payload"]["severity"]
        assert sent == {
            "routing_key": PD_KEY,
            **parsed,
            "payload": {**parsed["payload"], "severity": severity},
        }
    return parsed


def golden(path: Path, value: Any) -> None:
    assert_golden(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def channel(channel_type: str, http: HttpClient, **options: Any) -> Channel:
    return make_channel(http, {"type": channel_type, **options})


def outgoing(part: str, run_id: str = "run_1", ident: str = "ntf_1") -> Outgoing:
    return Outgoing(ident, run_id, "r", {"json": part}, 1_700_000_000.0)


# ----------------------------------------------------------------------------- settings


def config_problems(channel_type: str, options: str) -> list[tuple[str, str]]:
    text = f"channels:\n  oncall: {{type: {channel_type}, {options}}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", settings_models(), env={})
    return [(p.path.rsplit(".", 1)[-1], p.message) for p in info.value.problems]


@pytest.mark.parametrize(
    ("channel_type", "options", "key", "message"),
    [
        ("discord", "", "webhook_url", "required key is missing"),
        (
            "discord",
            "webhook_url: http://discord.com/api/webhooks/1/sekrit",
            "webhook_url",
            "webhook_url must be an https:// URL (http:// only for localhost)",
        ),
        ("discord", "webhook_url: 'sekrit'", "webhook_url", "webhook_url must be an https:// URL"),
        (  # a channel link
            "discord",
            "webhook_url: https://discord.com/channels/1290000000000000001/sekrit",
            "webhook_url",
            "webhook_url must be a Discord webhook URL: https://discord.com/api/webhooks/<id>/<token>",
        ),
        (  # the token left out
            "discord",
            "webhook_url: https://discord.com/api/webhooks/1290000000000000001",
            "webhook_url",
            "webhook_url must be a Discord webhook URL: https://discord.com/api/webhooks/<id>/<token>",
        ),
        (  # Slack-compatible: another body
            "discord",
            "webhook_url: https://discord.com/api/webhooks/1290000000000000001/sekrit/slack",
            "webhook_url",
            "webhook_url must be a Discord webhook URL: https://discord.com/api/webhooks/<id>/<token>",
        ),
        (
            "discord",
            "webhook_url: https://x.test/api/webhooks/1/sekrit, username: Discord Bot",
            "username",
            "Discord refuses usernames containing 'discord' or 'clyde'",
        ),
        (
            "discord",
            "webhook_url: https://x.test/api/webhooks/1/sekrit, thread_id: abc",
            "thread_id",
            "String should match pattern",
        ),
        (
            "discord",
            "webhook_url: https://x.test/api/webhooks/1/sekrit, thread_name: '{task}'",
            "thread_name",
            "unknown placeholder {task}; use title, rule, run_id",
        ),
        (
            "discord",
            "webhook_url: https://x.test/api/webhooks/1/sekrit, thread_id: '5', thread_name: x",
            "oncall",
            "thread_name starts a forum post, thread_id (here or in webhook_url) posts into one",
        ),
        (
            "discord",
            "webhook_url: 'https://x.test/api/webhooks/1/sekrit?thread_id=5', thread_name: x",
            "oncall",
            "thread_name starts a forum post, thread_id (here or in webhook_url) posts into one",
        ),
        (
            "discord",
            "webhook_url: https://x.test/api/webhooks/1/sekrit, avatar_url: 'ftp://x'",
            "avatar_url",
            "avatar_url must be an https:// URL",
        ),
        ("msteams", "", "webhook_url", "required key is missing"),
        (
            "msteams",
            "webhook_url: 'http://prod.logic.azure.com/x?sig=sekrit'",
            "webhook_url",
            "webhook_url must be an https:// URL",
        ),
        ("msteams", "webhook_url: https://x.test/sekrit, nope: 1", "nope", "unknown key"),
        ("pagerduty", "", "routing_key", "required key is missing"),
        (
            "pagerduty",
            "routing_key: 'sekrit key'",
            "routing_key",
            "routing_key must be the 32-character integration key",
        ),
        (
            "pagerduty",
            "routing_key: sekrit0123456789abcdef",  # PagerDuty answers 400 to each event
            "routing_key",
            "routing_key must be the 32-character integration key",
        ),
        (
            "pagerduty",
            f"routing_key: {PD_KEY}sekrit",
            "routing_key",
            "routing_key must be the 32-character integration key",
        ),
        (
            "pagerduty",
            f"routing_key: {PD_KEY}, severity: urgent",
            "severity",
            "expected one of critical, error, warning, info",
        ),
        (
            "pagerduty",
            f"routing_key: {PD_KEY}, severities: {{CRASHED: high}}",
            "CRASHED",
            "expected one of critical, error, warning, info",
        ),
        (
            "pagerduty",
            f"routing_key: {PD_KEY}, api_url: 'http://events.pagerduty.com'",
            "api_url",
            "api_url must be an https:// URL",
        ),
    ],
)
def test_settings_are_checked_without_quoting_secrets(
    channel_type: str, options: str, key: str, message: str
) -> None:
    [(where, problem)] = config_problems(channel_type, options)
    assert where == key and problem.startswith(message), (where, problem)
    assert "sekrit" not in problem and PD_KEY not in problem


def test_a_routing_key_read_from_a_secret_file_is_trimmed() -> None:
    """A Kubernetes or Docker secret file ends with a newline; tokens are trimmed, and the
    routing key was refused as 'must be the 32-character integration key' instead."""
    text = "channels:\n  pager: {type: pagerduty, routing_key: '${PD_KEY}'}\n"
    config = parse_config(text, "config.yaml", settings_models(), env={"PD_KEY": PD_KEY + "\n"})
    settings = config.config.channels["pager"]
    assert isinstance(settings, PagerDutySettings)
    assert settings.routing_key.get_secret_value() == PD_KEY


def test_settings_defaults_and_secrets() -> None:
    discord = DiscordSettings.model_validate(
        {"type": "discord", "webhook_url": "https://d.test/api/webhooks/1/x"}
    )
    assert discord.rate_limit == RateLimit(per_minute=30, burst=5)
    teams = MSTeamsSettings.model_validate({"type": "msteams", "webhook_url": "http://[::1]:9/x"})
    assert teams.rate_limit == RateLimit(per_second=1, burst=4)
    pd = PagerDutySettings.model_validate(
        {"type": "pagerduty", "routing_key": PD_KEY, "severities": {"timed_out": "warning"}}
    )
    assert (pd.api_url, pd.severity) == ("https://events.pagerduty.com", "error")
    assert pd.severities == {"TIMED_OUT": "warning"}
    assert pd.rate_limit == RateLimit(per_second=2, burst=10)
    for settings in (discord, teams, pd):
        assert "d.test/api" not in repr(settings) and PD_KEY not in repr(settings)
    assert {"discord", "msteams", "pagerduty"} <= set(REGISTRY)
    assert all(REGISTRY[t].parts == ("json",) for t in TYPES)


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("fixture", SDK_FIXTURES)
@pytest.mark.parametrize("channel_type", TYPES)
def test_run_templates_match_golden(channel_type: str, fixture: str) -> None:
    text = render("run", run_ctx(channel_type, sdk(fixture)))
    golden(GOLDEN / channel_type / "run" / f"run_{fixture}.json", unclamped(channel_type, text))


@pytest.mark.parametrize(("template", "fixture"), GOLDEN_CASES)
@pytest.mark.parametrize("channel_type", TYPES)
def test_event_and_digest_templates_match_golden(
    channel_type: str, template: str, fixture: str
) -> None:
    text = render(template, case_ctx(channel_type, fixture))
    golden(GOLDEN / channel_type / template / f"{fixture}.json", unclamped(channel_type, text))


def test_run_resolve_matches_golden() -> None:
    text = render("run_resolve", run_ctx("pagerduty", sdk("completed")))
    path, sent = as_sent("pagerduty", text)
    assert (path, pagerduty_problems(sent)) == ("/v2/enqueue", [])
    assert sent == {"routing_key": PD_KEY, **json.loads(text)}
    golden(GOLDEN / "pagerduty" / "run_resolve" / "run_completed.json", json.loads(text))


def test_discord_failure_reads_well() -> None:
    [embed] = json.loads(render("run_failed", run_ctx("discord", sdk("failed"))))["embeds"]
    assert embed["title"] == "🔴 FAILED · sync-customer-data"
    assert embed["color"] == 0xED4245 and embed["url"].endswith(
        "/runs/run_cmuxjbf30kqkowywawhi1r8yr"
    )
    assert embed["description"].startswith(
        "**Error**: Stripe API responded with 429: Too Many Requests\n```\nat fetchInvoices ("
    )
    assert "node:internal" not in embed["description"]
    assert [f["name"] for f in embed["fields"]] == ["Run", "Duration", "Cost", "Tags", "Metadata"]
    assert embed["footer"] == {"text": "rule prod-failures"}
    completed = json.loads(render("run", run_ctx("discord", sdk("completed"))))["embeds"][0]
    assert completed["color"] == 0x57F287 and "description" not in completed


def test_discord_links_a_url_with_parentheses_percent_encoded() -> None:
    """A URL holding `(` or `)` (a branch `fix(billing)`, a run link's query) was dropped: no
    link at all, the label alone. Kept as is, its `)` would end a markdown link early; so
    Discord gets it with them percent-encoded (%28, %29), the same page."""
    run = alert_event("alert.deployment.failed")
    tree = "https://github.com/acme-inc/billing-workers/tree/"
    run["git"] |= {"branch": "fix(billing)", "branchUrl": f"{tree}fix(billing)"}
    page = "https://cloud.trigger.dev/deployments/x?q=(a)"
    ctx = RenderContext(run, "oncall", "oncall", "discord", "ntf_0123", page)
    [embed] = json.loads(render("deployment_failed", ctx))["embeds"]
    branch = next(f["value"] for f in embed["fields"] if f["name"] == "Branch")
    assert branch == f"[fix(billing)]({tree}fix%28billing%29)"
    assert embed["url"] == "https://cloud.trigger.dev/deployments/x?q=%28a%29"
    runs = [sdk(name) for name in SDK_FIXTURES]
    group = digest_context("grp_0123", {}, runs)
    link = f"{run_link(runs[-1])}?span=(a)"  # each run's line links to it by its own id
    digest = RenderContext(runs[-1], "r", "oncall", "discord", "dgs_0123", link, group)
    [embed] = json.loads(render("digest", digest))["embeds"]
    assert embed["url"] == f"{run_link(runs[-1])}?span=%28a%29"
    for r in runs:
        assert f"]({run_link(r)}?span=%28a%29)" in embed["description"], r["id"]


def test_teams_failure_reads_well() -> None:
    card = json.loads(render("run_failed", run_ctx("msteams", sdk("crashed"))))
    card = card["attachments"][0]["content"]
    header, error, facts, metadata, actions = card["body"]
    assert header["inlines"][0]["text"] == "🔴 CRASHED · render-video"
    assert header["inlines"][0]["color"] == "Attention"
    assert [r["text"] for r in error["inlines"]] == [
        "TASK_PROCESS_MAYBE_OOM_KILLED",
        ": The task process was killed, most likely out of memory. Try a larger machine.",
    ]
    assert {"title": "Duration", "value": "1m"} in facts["facts"]
    assert metadata["inlines"][0]["fontType"] == "Monospace"
    assert actions["actions"][0]["url"].endswith("/runs/run_cmaxkfbrjm6jm6gofnnqj1787")


@pytest.mark.parametrize(
    ("fixture", "options", "severity"),
    [
        ("failed", {}, "error"),
        ("crashed", {}, "critical"),
        ("failed", {"severity": "warning"}, "warning"),
        ("timed_out", {"severities": {"TIMED_OUT": "info"}}, "info"),
        ("crashed", {"severities": {}}, "error"),
    ],
)
def test_pagerduty_severity_follows_the_status(
    fixture: str, options: dict[str, Any], severity: str
) -> None:
    settings = PagerDutySettings.model_validate(
        {"type": "pagerduty", "routing_key": PD_KEY, **options}
    )
    text = render("run_failed", run_ctx("pagerduty", sdk(fixture)))
    _, body = pagerduty_event(text, settings, "x", "-")
    assert body["payload"]["severity"] == severity
    assert body["dedup_key"] == sdk(fixture)["id"]
    forced = json.loads(text)
    forced["payload"]["severity"] = "info"  # an override template that says so wins
    assert (
        pagerduty_event(json.dumps(forced), settings, "x", "-")[1]["payload"]["severity"] == "info"
    )


def test_pagerduty_digest_takes_the_most_severe_status_and_the_group_key() -> None:
    text = render("digest", case_ctx("pagerduty", "five_fixtures"))
    _, body = pagerduty_event(text, PD_SETTINGS, "dgs_0123", "-")
    assert body["dedup_key"] == "grp_0123" and body["payload"]["severity"] == "critical"
    assert body["payload"]["summary"].startswith("5 runs · prod-failures [taskIdentifier=sync-")
    only_failed = [sdk("failed", id=f"run_{i}") for i in range(30)]
    group = digest_context("grp_9", {}, only_failed)
    ctx = RenderContext(only_failed[-1], "r", "c", "pagerduty", "dgs_9", None, group)
    _, body = pagerduty_event(render("digest", ctx), PD_SETTINGS, "dgs_9", "-")
    assert body["payload"]["severity"] == "error"
    assert len(body["payload"]["custom_details"]["runs"]) == 20
    assert body["payload"]["custom_details"]["more_runs"] == 10


def test_pagerduty_deployment_success_is_a_change_event() -> None:
    text = render("deployment_success", case_ctx("pagerduty", "alert.deployment.success"))
    path, body = as_sent("pagerduty", text)
    assert path == "/v2/change/enqueue" and "event_action" not in body
    assert body["payload"]["summary"] == "Deployed 20260820.3 [prod] billing-workers · 3 tasks"
    assert set(body["payload"]) == {"summary", "source", "timestamp", "custom_details"}
    failed = render("deployment_failed", case_ctx("pagerduty", "alert.deployment.failed"))
    assert as_sent("pagerduty", failed)[1]["dedup_key"] == "deployment_piiwr6f92xrz7zfhpvkcy"
    errors = [
        render("error", case_ctx("pagerduty", f)) for f in ("alert.error", "alert.error.regression")
    ]
    keys = {as_sent("pagerduty", e)[1]["dedup_key"] for e in errors}
    assert keys == {"errgrp_fp_9c1e4a7d2b:cmawoa5x9dbfmzrfzms2sq7bh"}  # one alert per group


# ----------------------------------------------------------------------------- any input


def hostile_run() -> dict[str, Any]:
    stack = "Error: boom\n" + "\n".join(f"    at f{i} (<anonymous>:{i}:1)" for i in range(3000))
    return Run.model_validate(
        {
            "id": "run_[x](https://evil.test)",
            "status": "FAILED",
            "taskIdentifier": HOSTILE * 3,
            "tags": [HOSTILE] * 200,
            "metadata": {f"k{i}": HOSTILE * 10 for i in range(100)},
            "error": {
                "name": HOSTILE,
                "type": HOSTILE,
                "message": (HOSTILE + "\n") * 400,
                "stack": stack,
                "stackTrace": "`" * 20_000,
                "stderr": ("x" * 5000 + "\n") * 50,
                "occurrenceCount": 3,
                "firstSeen": HOSTILE,
                "taskIdentifier": HOSTILE * 20,
                "fingerprint": HOSTILE * 30,
            },
            "deployment": {"version": HOSTILE * 20, "id": None, "shortCode": HOSTILE},
            "environment": {"type": HOSTILE, "slug": HOSTILE, "name": HOSTILE, "id": HOSTILE},
            "project": {"name": HOSTILE * 30},
            "git": {
                "branch": HOSTILE,
                "branchUrl": "javascript:alert(1)",
                "commitSha": "<@&1>",
                "commitUrl": "https://example.com/(" + "c" * 5000,
                "commitMessage": ["not", "text"],
                "pullRequestUrl": "https://example.com/pr?a=1&b=<2>",
                "pullRequestTitle": HOSTILE,
            },
            "vercel": {"deploymentUrl": "https://x.test/ space"},
            "tasks": [{"id": HOSTILE, "triggerSource": HOSTILE}, "plain", 7] * 30,
            "classification": {"odd": True},
        }
    ).as_dict()


def odd_inputs() -> list[tuple[str, dict[str, Any]]]:
    empty = Run.model_validate({"id": "x", "status": "FAILED"}).as_dict()
    wrong = {
        **empty,
        "deployment": "v1",
        "tasks": "no",
        "git": ["x"],
        "error": "text",
        "environment": 3,
    }
    return [("hostile", hostile_run()), ("empty", empty), ("wrong", wrong)] + [
        (f"sdk-{name}", sdk(name)) for name in SDK_FIXTURES
    ]


def markdown_active(text: str) -> str:
    """The characters of a Discord text that markdown acts on: not escaped, not in closed code."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        mark = "```" if text.startswith("```", i) else "`" if text[i] == "`" else ""
        end = text.find(mark, i + len(mark)) if mark else -1
        if end >= 0:  # an unclosed backtick is shown as it is, and what follows is markdown
            i = end + len(mark)
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def check_sent(channel_type: str, text: str) -> Any:
    path, sent = as_sent(channel_type, text)
    assert problems(channel_type, path, sent) == []
    joined = json.dumps(sent, ensure_ascii=False)
    assert "javascript:" not in joined
    if channel_type == "discord":  # markdown renders outside footers and code
        for embed in sent.get("embeds", []):
            texts = [embed.get("title"), embed.get("description")]
            texts += [t for f in embed.get("fields", []) for t in (f["name"], f["value"])]
            for text in texts:
                active = markdown_active(text or "")
                assert "[click](" not in active and "[x](" not in active, text
    if channel_type == "msteams":
        card = sent["attachments"][0]["content"]
        facts = [f for e in card["body"] if e["type"] == "FactSet" for f in e["facts"]]
        assert not any("](" in f["value"] or "](" in f["title"] for f in facts)
        assert len(json.dumps(sent).encode()) <= MAX_BODY_BYTES
    return sent


@pytest.mark.parametrize("template", ["run", *EVENT_TEMPLATES])
@pytest.mark.parametrize(("label", "run"), odd_inputs(), ids=[n for n, _ in odd_inputs()])
@pytest.mark.parametrize("channel_type", TYPES)
def test_any_input_renders_a_valid_request(
    channel_type: str, template: str, label: str, run: dict[str, Any]
) -> None:
    for link in (None, "https://cloud.trigger.dev/x?a=1&b=2", "javascript:alert(1)"):
        ctx = RenderContext(run, HOSTILE, "c", channel_type, "n", link)
        check_sent(channel_type, render(template, ctx))


@pytest.mark.parametrize("channel_type", TYPES)
def test_any_digest_renders_a_valid_request(channel_type: str) -> None:
    hostile = hostile_run()
    runs = [
        {**hostile, "id": f"run_{i}(", "dashboardUrl": "https://x.test/" + "r" * (i * 40)}
        for i in range(60)
    ]
    runs += [sdk(name) for name in SDK_FIXTURES] + [alert_event("alert.run.failed")]
    labels = {f"label{i}": HOSTILE for i in range(30)}
    for group_runs, group_labels in ((runs, labels), (runs[-3:], {})):
        group = digest_context("grp_x", group_labels, group_runs)
        ctx = RenderContext(group_runs[-1], HOSTILE, "c", channel_type, "d", None, group)
        check_sent(channel_type, render("digest", ctx))


# ----------------------------------------------------------------------------- the channels


ABUSIVE_DISCORD = {
    "content": "c" * 5000,
    "username": "not from a template",
    "embeds": [
        {
            "title": "t" * 500,
            "description": "```" + "d" * 10_000 + "```",
            "url": "javascript:alert(1)",
            "color": -1,
            "timestamp": "yesterday",
            "fields": [{"name": "n" * 400, "value": "v" * 2000, "inline": "yes"}] * 40
            + [{"name": "", "value": "x"}],
            "footer": {"text": "f" * 5000},
            "author": {"name": "a" * 400, "url": "https://a.test/"},
        }
    ]
    * 15
    + [{"color": 5}, "not an embed"],
}


def test_discord_keeps_25_fields_and_urls_under_2048_characters() -> None:
    """Fields past Discord's 25 an embed are dropped, short as they are; a URL of 2048
    characters or more is left out; a footer is cut to 2048; a color is 0 to 0xFFFFFF."""
    fields = [{"name": f"n{i}", "value": "v"} for i in range(30)]
    longest, too_long = ("https://a.test/" + "u" * (n - 15) for n in (2047, 2048))
    embeds = [
        {"title": "t", "fields": fields, "url": longest, "color": 0},
        {"title": "t", "url": too_long, "color": 0xFFFFFF, "footer": {"text": "f" * 3000}},
        {"title": "t", "color": 0x1000000},
    ]
    message = discord_message(json.dumps({"embeds": embeds}), "-")
    assert discord_problems(message) == []
    kept, cut, dark = message["embeds"]
    assert len(kept["fields"]) == 25 and kept["url"] == longest and "url" not in cut
    assert (kept["color"], cut["color"], len(cut["footer"]["text"])) == (0, 0xFFFFFF, 2048)
    assert "color" not in dark  # past 0xFFFFFF


async def test_discord_clamps_any_body_and_cannot_ping(
    discord: FakeDiscord, http: HttpClient
) -> None:
    message = discord_message(json.dumps(ABUSIVE_DISCORD), "-")
    assert discord_problems(message) == [] and "username" not in message
    embed = message["embeds"][0]
    assert len(embed["title"]) == 256 and embed["description"].endswith("d…```")
    assert "url" not in embed and "color" not in embed and "timestamp" not in embed
    assert message["allowed_mentions"] == {"parse": []}
    ch = channel(
        "discord",
        http,
        webhook_url=discord.webhook_url + "?foo=1&wait=false",
        username="relay",
        avatar_url="https://a.test/r.png",
        thread_id="123",
    )
    await ch.send(outgoing(json.dumps(ABUSIVE_DISCORD)))
    await ch.send(outgoing("[]"))  # nothing left: the default text
    await ch.send(outgoing(fallback_json(run_ctx("discord", sdk("failed")))))
    assert discord.problems == [[], [], []]
    first, empty, fallback = discord.calls
    assert first.query == {"foo": "1", "wait": "true", "thread_id": "123"}
    body = first.json()
    assert (body["username"], body["avatar_url"]) == ("relay", "https://a.test/r.png")
    assert empty.json()["content"] == "relay: rule r matched run run_1"
    assert fallback.json()["content"].startswith("🔴 FAILED · sync-customer-data")
    assert all(c.json()["allowed_mentions"] == {"parse": []} for c in discord.calls)


async def test_a_thread_named_in_the_discord_url_is_kept(
    discord: FakeDiscord, http: HttpClient
) -> None:
    """`…/webhooks/<id>/<token>?thread_id=<id>` is how a thread or forum post is often given
    (Discord's Execute Webhook query parameter); relay dropped it, and the alert went to the
    parent channel, or was refused (220001) in a forum channel."""
    url = discord.webhook_url + "?thread_id=555"
    await channel("discord", http, webhook_url=url).send(outgoing("{}"))
    await channel("discord", http, webhook_url=url, thread_id="777").send(outgoing("{}"))
    in_url, in_settings = discord.calls
    assert in_url.query == {"wait": "true", "thread_id": "555"}
    assert in_settings.query == {"wait": "true", "thread_id": "777"}


async def test_a_discord_forum_channel_gets_a_post_of_its_own_for_each_message(
    discord: FakeDiscord, http: HttpClient
) -> None:
    """A forum channel's webhook refuses a message outside a post (400, code 220001, for
    good): relay had no way to name one, so every alert to a forum was dead. `thread_name`
    starts a post named from the message (markdown escapes undone), cut to 100 characters."""
    discord.forum = True
    title = json.dumps({"embeds": [{"title": "🔴 FAILED · sync\\_data", "description": "d"}]})
    err = await send_error(channel("discord", http, webhook_url=discord.webhook_url))
    check_classified(err, "client_error", False, None, "forum_needs_thread_name (220001, HTTP 400)")
    named = channel("discord", http, webhook_url=discord.webhook_url, thread_name="{title}")
    await named.send(outgoing(title))
    long = channel("discord", http, webhook_url=discord.webhook_url, thread_name="x" * 150)
    await long.send(outgoing("{}"))
    ruled = "{rule}: {run_id}\n{title}"  # one line, whatever the pattern or the message
    await channel("discord", http, webhook_url=discord.webhook_url, thread_name=ruled).send(
        outgoing(json.dumps({"content": "plain\ntext"}))
    )
    names = [call.json()["thread_name"] for call in discord.calls[1:]]
    assert names == ["🔴 FAILED · sync_data", "x" * 99 + "…", "r: run_1 plain text"]
    assert discord.problems[1:] == [[], [], []]


def test_teams_cuts_the_longest_text_of_a_card_too_large_and_keeps_the_rest() -> None:
    """A card over the size Teams takes loses characters of its longest text first; its
    other elements stay, not the whole card traded for a card of its first text."""
    facts = {"type": "FactSet", "facts": [{"title": "Task", "value": "billing/charge"}]}
    card = {"type": "AdaptiveCard", "body": [{"type": "TextBlock", "text": "x" * 30_000}, facts]}
    sent = teams_message(json.dumps(card), "-")
    as_sent = json.dumps(sent, ensure_ascii=False, separators=(",", ":")).encode()
    assert teams_problems(sent) == [] and len(as_sent) <= MAX_BODY_BYTES
    text, kept = sent["attachments"][0]["content"]["body"]
    assert text["text"].startswith("xxx") and text["text"].endswith("…") and kept == facts


async def test_teams_clamps_any_card(teams: FakeTeams, http: HttpClient) -> None:
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "body": [{"type": "TextBlock", "text": "x" * 3000, "wrap": True}] * 30
        + [{"type": "FactSet", "facts": [{"title": "t" * 40, "value": "v" * 60}] * 500}]
        + [
            {
                "type": "ActionSet",
                "actions": [{"type": "Action.OpenUrl", "title": "x", "url": "javascript:x"}],
            }
        ],
        "selectAction": {"type": "Action.OpenUrl", "url": "data:text/html,x"},
    }
    sent = teams_message(json.dumps(card), "-")  # a bare card is wrapped
    assert teams_problems(sent) == [] and len(json.dumps(sent).encode()) <= MAX_BODY_BYTES
    content = sent["attachments"][0]["content"]
    assert content["version"] == "1.4" and "selectAction" not in content
    small = {"type": "AdaptiveCard", "body": [card["body"][0], card["body"][-1]]}
    [kept] = teams_message(json.dumps(small), "-")["attachments"][0]["content"]["body"]
    assert kept["type"] == "TextBlock"  # the ActionSet went with its only (unsafe) action
    assert "javascript:" not in json.dumps(sent)
    huge = {
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": [{"type": "FactSet", "facts": [{"title": "t", "value": "v" * 60}] * 2000}],
    }
    squeezed = teams_message(json.dumps(huge), "-")
    assert teams_problems(squeezed) == []  # nothing left to cut: a card with the first text
    ch = channel("msteams", http, webhook_url=teams.webhook_url)
    await ch.send(outgoing(json.dumps(card)))
    await ch.send(outgoing(fallback_json(run_ctx("msteams", sdk("failed")))))
    await ch.send(outgoing("not json at all"))
    assert teams.problems == [[], [], []]
    assert teams.calls[0].headers["Content-Type"] == "application/json; charset=utf-8"
    texts = [c.json()["attachments"][0]["content"]["body"][0]["text"] for c in teams.calls[1:]]
    assert texts[0].startswith("🔴 FAILED · sync-customer-data") and texts[1] == "not json at all"


async def test_pagerduty_sends_triggers_resolves_and_changes(
    pagerduty: FakePagerDuty, http: HttpClient
) -> None:
    ch = channel("pagerduty", http, routing_key=PD_KEY, api_url=pagerduty.url + "/")
    failed = render("run_failed", run_ctx("pagerduty", sdk("failed")))
    await ch.send(outgoing(failed))
    await ch.send(outgoing(failed))  # a resend: the same alert
    assert pagerduty.alerts == {"run_cmuxjbf30kqkowywawhi1r8yr": "triggered"}
    await ch.send(outgoing(render("run_resolve", run_ctx("pagerduty", sdk("failed")))))
    assert pagerduty.alerts == {"run_cmuxjbf30kqkowywawhi1r8yr": "resolved"}
    assert pagerduty.calls[-1].json() == {
        "routing_key": PD_KEY,
        "event_action": "resolve",
        "dedup_key": "run_cmuxjbf30kqkowywawhi1r8yr",
    }
    ack = {"event_action": "acknowledge", "dedup_key": "k", "payload": {"summary": "dropped"}}
    await ch.send(outgoing(json.dumps(ack)))
    assert pagerduty.calls[-1].json() == {
        "routing_key": PD_KEY,
        "event_action": "acknowledge",
        "dedup_key": "k",
    }
    success = render("deployment_success", case_ctx("pagerduty", "alert.deployment.success"))
    await ch.send(outgoing(success, run_id="deployment_eojsuds5n9dhqsgm4i3pi"))
    assert pagerduty.calls[-1].path == "/v2/change/enqueue" and len(pagerduty.changes) == 1
    # the template fallback and digests still get a stable dedup key
    await ch.send(outgoing(fallback_json(run_ctx("pagerduty", sdk("crashed"))), run_id="run_c"))
    await ch.send(outgoing("{}", run_id="", ident="dgs_1"))
    fallback, digest = (c.json() for c in pagerduty.calls[-2:])
    assert fallback["dedup_key"] == "run_c" and fallback["payload"]["summary"].startswith(
        "🔴 CRASHED"
    )
    assert (
        digest["dedup_key"] == "dgs_1"
        and digest["payload"]["summary"] == "relay: rule r matched run "
    )
    assert all(p == [] for p in pagerduty.problems)


async def test_pagerduty_receipt_is_the_key_of_the_alert_opened(
    pagerduty: FakePagerDuty, http: HttpClient
) -> None:
    """A trigger's receipt (what a recovery resolves) is the dedup key PagerDuty answered;
    an answer without a usable one leaves the key sent, not no receipt at all."""
    ch = channel("pagerduty", http, routing_key=PD_KEY, api_url=pagerduty.url)
    event = json.dumps({"dedup_key": "k" * 255, "payload": {"summary": "s"}})
    assert await ch.send(outgoing(event)) == "k" * 255  # the longest key PagerDuty takes
    pagerduty.script(Reply(202, {"status": "success", "dedup_key": ""}))
    assert await ch.send(outgoing(event)) == "k" * 255


@pytest.mark.parametrize("path", ["/v2/enqueue", "/v2/enqueue/", "/v2/change/enqueue"])
async def test_pagerduty_api_url_may_be_the_whole_endpoint(
    pagerduty: FakePagerDuty, http: HttpClient, path: str
) -> None:
    """PagerDuty's integration page shows https://events.pagerduty.com/v2/enqueue, and
    Alertmanager's `url` takes it whole: relay reads it as the base, not as a prefix that
    would post to /v2/enqueue/v2/enqueue (404, every page dead)."""
    ch = channel("pagerduty", http, routing_key=PD_KEY, api_url=pagerduty.url + path)
    await ch.send(outgoing(render("run_failed", run_ctx("pagerduty", sdk("failed")))))
    await ch.send(
        outgoing(render("deployment_success", case_ctx("pagerduty", "alert.deployment.success")))
    )
    assert [c.path for c in pagerduty.calls] == ["/v2/enqueue", "/v2/change/enqueue"]


@pytest.mark.parametrize(
    ("statuses", "severity"),
    [(("A", "B"), "warning"), (("B", "C"), "error"), (("C", "D"), "critical")],
)
def test_pagerduty_a_digest_pages_at_its_most_severe_status(
    statuses: tuple[str, str], severity: str
) -> None:
    """Of the statuses a digest lists (its status, then by_status), the most severe one's
    severity is the event's, whichever comes first."""
    severities = {"A": "info", "B": "warning", "C": "error", "D": "critical"}
    settings = PagerDutySettings.model_validate(
        {"type": "pagerduty", "routing_key": PD_KEY, "severities": severities}
    )
    first, then = statuses
    details = {"status": first, "by_status": {then: 1}}
    raw = {"payload": {"summary": "s", "custom_details": details}}
    assert (
        pagerduty_event(json.dumps(raw), settings, "k", "-")[1]["payload"]["severity"] == severity
    )


def test_pagerduty_clamps_any_event() -> None:
    raw = {
        "event_action": "explode",
        "dedup_key": "k" * 1000,
        "payload": {
            "summary": "s" * 5000,
            "source": "",
            "severity": "bogus",
            "custom_details": {"big": "x" * 900_000, "n": 1},
        },
        "links": [{"href": "javascript:x", "text": "x"}]
        + [{"href": "https://l.test", "text": "t" * 2000}] * 50,
        "images": [{"src": "https://i.test/a.png"}],
        "client_url": "ftp://x",
        "client": "c" * 300,
    }
    path, body = pagerduty_event(json.dumps(raw), PD_SETTINGS, "fallback", "-")
    sent = {"routing_key": PD_KEY, **body}
    assert path == "/v2/enqueue" and pagerduty_problems(sent) == []
    assert body["event_action"] == "trigger" and len(body["dedup_key"]) <= 255
    assert (
        body["dedup_key"] == pagerduty_event(json.dumps(raw), PD_SETTINGS, "f", "-")[1]["dedup_key"]
    )
    assert len(body["payload"]["summary"]) == 1024 and body["payload"]["source"] == "trigger.dev"
    assert body["payload"]["severity"] == "error" and len(body["links"]) == 20
    cut = {"big": "x" * 999 + "…", "n": 1, "relay": "details cut: the event was too large"}
    assert body["payload"]["custom_details"] == cut
    assert "client_url" not in body and body["images"] == [{"src": "https://i.test/a.png"}]
    assert body["client"] == "c" * 254 + "…"
    with pytest.raises(DeliveryError) as info:
        pagerduty_event('{"event_action": "resolve"}', PD_SETTINGS, "", "-")
    assert (info.value.reason, info.value.retryable) == ("template", False)


def test_pagerduty_too_large_event_cuts_the_largest_details_first() -> None:
    """A run whose metadata passes PagerDuty's 512 KB keeps its error, tags and stack: only the
    metadata is cut (to its JSON text's first 1000 characters), not every detail that is not a
    short scalar."""
    run = sdk("failed", metadata={"blob": "z" * 600_000}, tags=["env:prod"])
    _, body = pagerduty_event(
        render("run_failed", run_ctx("pagerduty", run)), PD_SETTINGS, "k", "-"
    )
    assert pagerduty_problems({"routing_key": PD_KEY, **body}) == []
    details = body["payload"]["custom_details"]
    assert details["error"] == {
        k: v for k, v in sdk("failed")["error"].items() if k in ("name", "message")
    }
    assert details["tags"] == ["env:prod"] and details["stack"]
    assert details["metadata"].startswith('{"blob":"zzz') and len(details["metadata"]) == 1000
    assert details["relay"] == "details cut: the event was too large"


def test_pagerduty_event_too_large_with_its_details_cut_keeps_their_short_scalars() -> None:
    """Details each short but too many (none over 1000 characters to cut): the event keeps
    the first 100 scalar ones, not lists or mappings, and says it was cut."""
    many = {f"k{i:04d}": "v" * 500 for i in range(2000)}
    raw = {"payload": {"summary": "s", "custom_details": {"n": 7, "ids": [1, 2], **many}}}
    _, body = pagerduty_event(json.dumps(raw), PD_SETTINGS, "k", "-")
    assert pagerduty_problems({"routing_key": PD_KEY, **body}) == []
    details = body["payload"]["custom_details"]
    assert len(details) == 101 and details["n"] == 7 and "ids" not in details
    assert details["k0098"] == "v" * 500
    assert details["relay"] == "details cut: the event was too large"


# ----------------------------------------------------------------------------- classification


async def send_error(ch: Channel, part: str = "{}") -> DeliveryError:
    err = await failure_of(ch, outgoing(part))
    assert not any(secret in str(err) for secret in SECRETS), str(err)
    return err


def discord_error(status: int, code: int, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"message": "whatever " + DISCORD_TOKEN, "code": code}, headers or {})


FORM_ERRORS = {
    "embeds": {
        "0": {
            "description": {
                "_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 4096 or fewer in length."}
                ]
            }
        }
    },
    "username": {
        "_errors": [
            {
                "code": "USERNAME_INVALID_CONTAINS",
                "message": f'Username cannot contain "{DISCORD_TOKEN}"',
            }
        ]
    },
}
DISCORD_ERRORS = [
    (
        Reply(
            429, {"message": "You are being rate limited.", "retry_after": 0.75, "global": False}
        ),
        "rate_limited",
        True,
        0.75,
        "rate limited (HTTP 429)",
    ),
    (
        Reply(429, {"retry_after": 3, "global": True}, {"Retry-After": "9"}),
        "rate_limited",
        True,
        3.0,
        "rate limited (global, HTTP 429)",
    ),
    (
        Reply(429, "slow down", {"X-RateLimit-Reset-After": "1.5"}),
        "rate_limited",
        True,
        1.5,
        "rate limited (HTTP 429)",
    ),
    (Reply(429, "", {"Retry-After": "4"}), "rate_limited", True, 4.0, "rate limited (HTTP 429)"),
    (discord_error(400, 50035), "client_error", False, None, "invalid_form_body (50035, HTTP 400)"),
    (  # which field Discord refused, as its errors tree nests it; never the token
        Reply(400, {"message": "Invalid Form Body", "code": 50035, "errors": FORM_ERRORS}),
        "client_error",
        False,
        None,
        "invalid_form_body (50035, HTTP 400): embeds.0.description: Must be 4096 or fewer in"
        ' length.; username: Username cannot contain "[token]"',
    ),
    (discord_error(400, 50006), "client_error", False, None, "empty_message (50006, HTTP 400)"),
    (discord_error(400, 50109), "client_error", False, None, "invalid_json (50109, HTTP 400)"),
    (discord_error(400, 12345), "client_error", False, None, "error (12345, HTTP 400)"),
    (
        discord_error(401, 50027),
        "auth_error",
        False,
        None,
        "invalid_webhook_token (50027, HTTP 401)",
    ),
    (
        Reply(403, {"message": "Missing Access", "code": 50001}),
        "auth_error",
        False,
        None,
        "error (50001, HTTP 403)",
    ),
    (discord_error(404, 10015), "auth_error", False, None, "unknown_webhook (10015, HTTP 404)"),
    (discord_error(404, 10003), "client_error", False, None, "unknown_channel (10003, HTTP 404)"),
    (Reply(413, "<html>too large</html>"), "client_error", False, None, "HTTP 413"),
    (discord_error(413, 40005), "client_error", False, None, "too_large (40005, HTTP 413)"),
    (
        Reply(500, {"message": "500: Internal Server Error", "code": 0}),
        "server_error",
        True,
        None,
        "general_error (0, HTTP 500)",
    ),
    (
        Reply(502, "<html>bad gateway " + DISCORD_TOKEN + "</html>"),
        "server_error",
        True,
        None,
        "HTTP 502",
    ),
    (Reply(503, "", {"Retry-After": "30"}), "server_error", True, 30.0, "HTTP 503"),
]
TEAMS_ERRORS = [
    (
        Reply(429, {"error": {"code": "WorkflowTriggerThrottled"}}, {"Retry-After": "12"}),
        "rate_limited",
        True,
        12.0,
        "WorkflowTriggerThrottled (HTTP 429)",
    ),
    (Reply(429, ""), "rate_limited", True, None, "HTTP 429"),
    (Reply(300, ""), "other", False, None, "HTTP 300"),  # only a 2xx answer took the card
    (
        Reply(500, {"error": {"code": "InternalServerError"}}),
        "server_error",
        True,
        None,
        "InternalServerError (HTTP 500)",
    ),
    (Reply(502, "<html>" + TEAMS_SIG + "</html>"), "server_error", True, None, "HTTP 502"),
    (Reply(504, "", {"Retry-After": "5"}), "server_error", True, 5.0, "HTTP 504"),
    (
        Reply(400, {"error": {"code": "InvalidRequestContent", "message": "sig=" + TEAMS_SIG}}),
        "client_error",
        False,
        None,
        "InvalidRequestContent (HTTP 400)",
    ),
    (
        Reply(401, {"error": {"code": "DirectApiInvalidAuthorizationSignature"}}),
        "auth_error",
        False,
        None,
        "DirectApiInvalidAuthorizationSignature (HTTP 401)",
    ),
    (
        Reply(403, {"error": {"code": "Forbidden " + TEAMS_SIG}}),
        "auth_error",
        False,
        None,
        "HTTP 403",
    ),
    (
        Reply(404, {"error": {"code": "WorkflowNotFound"}}),
        "auth_error",
        False,
        None,
        "WorkflowNotFound (HTTP 404)",
    ),
    (Reply(413, ""), "client_error", False, None, "HTTP 413"),
]
PD_ERRORS = [
    (Reply(300, ""), "other", False, None, "HTTP 300"),  # only a 2xx answer took the event
    (Reply(429, ""), "rate_limited", True, None, "HTTP 429"),
    (
        Reply(
            429,
            {
                "status": "throttle event",
                "message": "Requests for this service are arriving too quickly",
            },
            {"Retry-After": "2"},
        ),
        "rate_limited",
        True,
        2.0,
        "throttle event (HTTP 429)",
    ),
    (
        Reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["'payload.summary' is missing or blank"],
            },
        ),
        "client_error",
        False,
        None,
        "invalid event (HTTP 400): 'payload.summary' is missing or blank",
    ),
    (
        Reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": [f"Invalid routing key {PD_KEY}"],
            },
        ),
        "auth_error",
        False,
        None,
        "invalid event (HTTP 400): Invalid routing key [routing key]",
    ),
    (  # a key of another length is refused at load; a key PagerDuty sees otherwise
        Reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"],
            },
        ),
        "auth_error",
        False,
        None,
        "invalid event (HTTP 400): Length of 'routing_key' is incorrect (should be 32 characters)",
    ),
    (Reply(400, "not json"), "client_error", False, None, "HTTP 400"),
    (Reply(401, ""), "auth_error", False, None, "HTTP 401"),
    (Reply(403, ""), "auth_error", False, None, "HTTP 403"),
    (Reply(404, "<html>not found</html>"), "client_error", False, None, "HTTP 404"),
    (Reply(413, ""), "client_error", False, None, "HTTP 413"),
    (
        Reply(500, {"status": "Internal Server Error", "message": "oops"}),
        "server_error",
        True,
        None,
        "Internal Server Error (HTTP 500)",
    ),
    (Reply(503, "", {"Retry-After": "60"}), "server_error", True, 60.0, "HTTP 503"),
]


@classified(DISCORD_ERRORS)
async def test_discord_errors_are_classified(
    discord: FakeDiscord,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    discord.script(reply)
    err = await send_error(channel("discord", http, webhook_url=discord.webhook_url))
    check_classified(err, reason, retryable, retry_after, detail)


async def test_discord_rate_limits_wait_seconds_for_the_url_discord_hands_out(
    discord: FakeDiscord, http: HttpClient
) -> None:
    """Discord's UI gives /api/webhooks/… without a version: Discord serves it as API v6, whose
    429 counts `retry_after` in milliseconds. The channel pins v10, where it counts seconds."""
    ch = channel("discord", http, webhook_url=discord.webhook_url)
    discord.limit_next(1.5)
    discord.limit_next(0.25, is_global=True)
    first, second = await send_error(ch), await send_error(ch)
    assert (first.reason, first.retryable, first.retry_after) == ("rate_limited", True, 1.5)
    assert (second.retry_after, second.detail) == (0.25, "rate limited (global, HTTP 429)")
    await ch.send(outgoing("{}"))
    assert [c.path for c in discord.calls] == [
        f"/api/v10/webhooks/{DISCORD_ID}/{DISCORD_TOKEN}"
    ] * 3
    versioned = channel(
        "discord", http, webhook_url=discord.webhook_url.replace("/api/", "/api/v9/")
    )
    await versioned.send(outgoing("{}"))
    assert discord.calls[-1].path.startswith("/api/v10/webhooks/")


@classified(TEAMS_ERRORS)
async def test_teams_errors_are_classified(
    teams: FakeTeams,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    teams.script(reply)
    err = await send_error(channel("msteams", http, webhook_url=teams.webhook_url))
    check_classified(err, reason, retryable, retry_after, detail)


async def test_teams_legacy_connector_failures_in_a_200_are_failures(
    teams: FakeTeams, http: HttpClient
) -> None:
    """An Office 365 connector answers 200 also when Teams refused the message, the status in the
    text: a 429 there is retried, a 413 is permanent, never `sent`; a failure that names no
    status is Teams' own (a 500: retried)."""
    ch = channel("msteams", http, webhook_url=teams.connector_url)
    await ch.send(outgoing("{}"))  # "1": delivered
    unsaid = Reply(200, "Webhook message delivery failed with error: Request timed out.")
    teams.script(connector_failure(429), connector_failure(413), connector_failure(502), unsaid)
    limited, too_big, down = await send_error(ch), await send_error(ch), await send_error(ch)
    failed = await send_error(ch)
    assert (failed.reason, failed.retryable, failed.detail) == (
        "server_error",
        True,
        "connector: Teams answered HTTP 500",
    )
    assert (limited.reason, limited.retryable, limited.detail) == (
        "rate_limited",
        True,
        "connector: Teams answered HTTP 429",
    )
    assert (too_big.reason, too_big.retryable) == ("client_error", False)
    assert (down.reason, down.retryable) == ("server_error", True)


async def test_teams_legacy_connector_429_waits_its_retry_after(
    teams: FakeTeams, http: HttpClient
) -> None:
    """A connector throttled says so as an HTTP 429, or as a 200 naming the 429 in its text;
    either way its Retry-After is the wait (the channel is held for it), not the backoff."""
    ch = channel("msteams", http, webhook_url=teams.connector_url)
    said = connector_failure(429).body
    teams.script(Reply(429, said, {"Retry-After": "30"}), Reply(200, said, {"Retry-After": "45"}))
    answered, in_text = await send_error(ch), await send_error(ch)
    check_classified(answered, "rate_limited", True, 30.0, "HTTP 429")
    check_classified(in_text, "rate_limited", True, 45.0, "connector: Teams answered HTTP 429")


@classified(PD_ERRORS)
async def test_pagerduty_errors_are_classified(
    pagerduty: FakePagerDuty,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    pagerduty.script(reply)
    err = await send_error(channel("pagerduty", http, routing_key=PD_KEY, api_url=pagerduty.url))
    check_classified(err, reason, retryable, retry_after, detail)


async def test_real_answers_of_the_fakes_are_classified(
    discord: FakeDiscord, teams: FakeTeams, pagerduty: FakePagerDuty, http: HttpClient
) -> None:
    failed = sdk("failed")
    cases = [
        (
            "discord",
            {"webhook_url": discord.webhook_url.replace(DISCORD_TOKEN, "x" * 60)},
            "auth_error",
            "invalid_webhook_token (50027, HTTP 401)",
        ),
        (
            "discord",
            {"webhook_url": discord.url + "/api/webhooks/42/" + DISCORD_TOKEN},
            "auth_error",
            "unknown_webhook (10015, HTTP 404)",
        ),
        (
            "msteams",
            {"webhook_url": teams.webhook_url.replace(TEAMS_SIG, "wrong")},
            "auth_error",
            "DirectApiInvalidAuthorizationSignature (HTTP 401)",
        ),
        (
            "msteams",
            {"webhook_url": teams.webhook_url.split("&sig=")[0]},
            "auth_error",
            "DirectApiAuthorizationRequired (HTTP 401)",
        ),
        (
            "msteams",
            {"webhook_url": teams.webhook_url.replace("/a1b2", "/ffff")},
            "auth_error",
            "WorkflowNotFound (HTTP 404)",
        ),
        (
            "pagerduty",
            {"routing_key": "Z" * 32, "api_url": pagerduty.url},
            "auth_error",
            "invalid event (HTTP 400): Invalid routing key",
        ),
    ]
    for channel_type, options, reason, detail in cases:
        part = render("run_failed", run_ctx(channel_type, failed))
        err = await send_error(channel(channel_type, http, **options), part)
        assert (err.reason, err.retryable, err.detail) == (reason, False, detail), channel_type
        assert "x" * 60 not in str(err) and "Z" * 32 not in str(err)


async def test_network_failures_are_retryable(http: HttpClient) -> None:
    for channel_type, options in (
        ("discord", {"webhook_url": "http://127.0.0.1:9/api/webhooks/1/" + DISCORD_TOKEN}),
        ("msteams", {"webhook_url": "http://127.0.0.1:9/workflows/x?sig=" + TEAMS_SIG}),
        ("pagerduty", {"routing_key": PD_KEY, "api_url": "http://127.0.0.1:9"}),
    ):
        err = await send_error(channel(channel_type, http, **options))
        assert (err.reason, err.retryable) == ("network", True)


# ----------------------------------------------------------------------------- relay check

CHECK_CONFIG = """\
channels:
  chat-discord: {type: discord, webhook_url: "https://discord.com/api/webhooks/1/DISCORDSECRET"}
  chat-teams: {type: msteams, webhook_url: "https://prod.westus.logic.azure.com/workflows/f/triggers/manual/paths/invoke?sig=TEAMSSECRET"}
  pager: {type: pagerduty, routing_key: PAGERDUTYSECRETKEY00000000000000}
rules:
  - {name: deploys, match: {event: deployment.failed}, notify: [chat-discord, chat-teams, pager], continue: true}
  - {name: shipped, match: {event: deployment.success}, notify: [chat-discord, chat-teams, pager], continue: true}
  - {name: errors, match: {event: error}, notify: [chat-discord, chat-teams, pager], continue: true}
  - {name: failures, match: {status: [failure]}, notify: [chat-discord, chat-teams, pager], continue: true}
  - {name: slow-over, match: {status: [COMPLETED]}, template: run_resolve, notify: [pager], continue: true}
  - name: failures-digest
    match: {status: [failure]}
    notify: [chat-discord, chat-teams, pager]
    group_by: [taskIdentifier]
    group_wait: 30s
"""


def test_relay_check_accepts_every_rule_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compiled = compile_config(parse_config(CHECK_CONFIG, "c.yaml", settings_models(), env={}))
    assert len(compiled.rules.rules) == 6
    path = tmp_path / "relay.yaml"
    path.write_text(CHECK_CONFIG)
    assert relay_cli(["check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"{path}: OK: 3 channels, 6 rules" and out.err == ""
    broken = CHECK_CONFIG.replace(
        "template: run_resolve, notify: [pager]",
        "template: run_resolve, notify: [pager, chat-teams]",
    )
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(broken, "c.yaml", settings_models(), env={}))
    [problem] = info.value.problems
    assert problem.message.startswith("msteams: template msteams/run_resolve.json.j2 not found")
    assert not any(
        s in str(info.value) for s in ("DISCORDSECRET", "TEAMSSECRET", "PAGERDUTYSECRET")
    )


# ----------------------------------------------------------------------------- through relay


def relay_config(channel_type: str, options: str) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 3, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
  project_ref: proj_test
channels:
  oncall:
    type: {channel_type}
    {options}
    rate_limit: {{per_second: 50, burst: 10}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [oncall]}}
"""


async def wait_state(r: Any, state: str, count: int = 1) -> None:
    for _ in range(600):
        if (await r.service.store.counts())[state] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {count} {state}")


def failed_run(run_id: str = "run_a") -> dict[str, Any]:
    return {**sdk_run("failed"), "id": run_id}


async def test_discord_end_to_end_waits_out_a_rate_limit(
    relay: RelayFactory, discord: FakeDiscord
) -> None:
    discord.script(
        Reply(429, {"message": "You are being rate limited.", "retry_after": 0.4, "global": False})
    )
    r = await relay(relay_config("discord", f"webhook_url: {discord.webhook_url}"))
    assert (await r.post(failed_run()))[0] == 202
    first, second = await discord.wait_for(2)
    await wait_state(r, "sent")
    assert second.at - first.at >= 0.4 and second.query == {"wait": "true"}
    assert discord.problems[1] == []
    body = second.json()
    assert body["allowed_mentions"] == {"parse": []}
    assert body["embeds"][0]["title"] == "🔴 FAILED · sync-customer-data"
    assert body["embeds"][0]["url"].endswith("/proj_test/runs/run_a")


async def test_teams_end_to_end(relay: RelayFactory, teams: FakeTeams) -> None:
    r = await relay(relay_config("msteams", f"webhook_url: '{teams.webhook_url}'"))
    assert (await r.post(failed_run()))[0] == 202
    [call] = await teams.wait_for(1)
    await wait_state(r, "sent")
    assert teams.problems == [[]] and call.query["sig"] == TEAMS_SIG
    card = call.json()["attachments"][0]["content"]
    assert card["body"][0]["inlines"][0]["text"] == "🔴 FAILED · sync-customer-data"
    assert card["body"][-1]["actions"][0]["url"].endswith("/proj_test/runs/run_a")


async def test_pagerduty_end_to_end_and_dead_letters_keep_the_key_secret(
    relay: RelayFactory, pagerduty: FakePagerDuty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    options = f"routing_key: {PD_KEY}\n    api_url: {pagerduty.url}"
    r = await relay(relay_config("pagerduty", options))
    assert (await r.post(failed_run()))[0] == 202
    [call] = await pagerduty.wait_for(1)
    await wait_state(r, "sent")
    body = call.json()
    assert pagerduty.problems == [[]] and body["routing_key"] == PD_KEY
    assert (body["event_action"], body["dedup_key"]) == ("trigger", "run_a")
    assert body["payload"]["severity"] == "error" and body["client"] == "relay"
    assert pagerduty.alerts == {"run_a": "triggered"}
    echo = {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": [f"routing_key {PD_KEY} is not valid"],
    }
    pagerduty.script(Reply(400, echo))
    assert (await r.post(failed_run("run_b")))[0] == 202
    await wait_state(r, "dead")
    [dead] = await r.service.store.dead_letters()
    assert dead.reason == "auth_error" and dead.last_error is not None
    assert "[routing key]" in dead.last_error and PD_KEY not in dead.last_error
    logged = " ".join(str(record.__dict__) for record in caplog.records)
    assert "auth_error" in logged and PD_KEY not in logged
