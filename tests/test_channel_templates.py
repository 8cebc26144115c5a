"""Slack and email templates of the events (deployment failed / success, error groups) and of
digests: golden renders, Block Kit validity, hostile and huge inputs, the `mrkdwn` filter, and
`relay check` of rules that use them.

Events come from the alert-webhook fixtures through parse_alert (the shipped ones and
tests/fixtures/trigger_alerts/); digests from digest_context over the five SDK fixture runs.
Regenerate the golden files with `RELAY_UPDATE_GOLDEN=1 pytest tests/test_channel_templates.py`
and review the diff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from jinja2 import ChoiceLoader, DictLoader, FileSystemLoader

from relay import configure
from relay.channels import REGISTRY, rendered_checks, settings_models
from relay.channels._slack_blocks import plain_body
from relay.channels._smtp import SUBJECT_MAX_CHARS
from relay.channels.slack import slack_message
from relay.cli import main as relay_cli
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import ConfigError
from relay.filters import mrkdwn, web_url
from relay.grouping import digest_context
from relay.model import Run
from relay.sandbox import environment, sandbox
from relay.statuses import EVENTS
from relay.template_files import shipped_templates_dir
from relay.template_probe import ALERT_RUN, fails_always
from relay.templating import RenderContext, Renderer
from tests.conftest import (
    EVENT_TEMPLATES,
    GOLDEN_CASES,
    SDK_FIXTURES,
    alert_event,
    assert_golden,
    sdk_run,
)
from tests.fakes.slack import block_kit_problems

GOLDEN = Path(__file__).parent / "golden"
PARTS = {"slack": ("json",), "email": ("subject", "txt", "html")}
# one environment: templates compile once for the module; rendered as relay does
RENDERER = Renderer(checks=rendered_checks())
HOSTILE = (
    'He said "hi"\n\tthen </script><script>x()</script> <!channel> & <https://evil.test|x> ```'
)


# ----------------------------------------------------------------------------- helpers


def sdk(name: str, **changes: Any) -> dict[str, Any]:
    return Run.model_validate({**sdk_run(name), **changes}).as_dict()


def run_link(run: dict[str, Any]) -> str:
    return f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run.get('id')}"


def digest_ctx(channel_type: str, runs: list[dict[str, Any]], **labels: str) -> RenderContext:
    group = digest_context("grp_0123", labels, runs)
    head = runs[-1]
    return RenderContext(
        head,
        "prod-failures",
        f"team-{channel_type}",
        channel_type,
        "dgs_0123",
        run_link(head),
        group,
    )


def case_ctx(channel_type: str, fixture: str) -> RenderContext:
    if fixture == "five_fixtures":
        runs = [sdk(name) for name in SDK_FIXTURES]
        return digest_ctx(channel_type, runs, taskIdentifier="sync-customer-data")
    run = alert_event(fixture)
    link = run.get("dashboardUrl")
    return RenderContext(run, "oncall", f"team-{channel_type}", channel_type, "ntf_0123", link)


def render(channel_type: str, template: str, ctx: RenderContext) -> dict[str, str]:
    rendered = RENDERER.render(channel_type, template, PARTS[channel_type], ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts


def slack(template: str, ctx: RenderContext) -> dict[str, Any]:
    """The rendered Slack message, checked: valid JSON, valid Block Kit, no clamping needed."""
    text = render("slack", template, ctx)["json"]
    message: dict[str, Any] = json.loads(text)
    assert block_kit_problems(message) == []
    assert slack_message(text, "-") == message
    return message


def texts(message: dict[str, Any]) -> list[str]:
    """Every text of a Slack message, in order (header, sections, fields, context, buttons)."""
    out = [message["text"]]
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                out.append(obj["text"])
            elif isinstance(obj, dict) and isinstance(obj.get("text"), dict):
                out.append(obj["text"]["text"])
    return out


def no_pings_or_forged_links(message: dict[str, Any]) -> bool:
    """No mrkdwn text (plain_text is never parsed) can mention or link what the data says."""
    mrkdwn_texts = [message["text"]]
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                mrkdwn_texts.append(obj["text"])
    joined = "\n".join(mrkdwn_texts)
    return "<!" not in joined and "<https://evil" not in joined and "<@" not in joined


class _Tags(HTMLParser):
    """Tags and attributes of an HTML document, and whether every element was closed."""

    VOID = frozenset({"meta", "br", "img", "hr", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs += [value or "" for name, value in attrs if name == "href"]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()


def html_tags(document: str) -> _Tags:
    parser = _Tags()
    parser.feed(document)
    parser.close()
    assert parser.open == [], parser.open
    return parser


def check_email(parts: dict[str, str]) -> _Tags:
    """A subject the channel needs not cut, and HTML that is well formed with safe links."""
    subject = parts["subject"]
    assert subject == subject.strip() and "\n" not in subject
    assert 0 < len(subject) <= SUBJECT_MAX_CHARS
    tags = html_tags(parts["html"])
    assert not {"script", "img", "svg", "iframe", "style"} & set(tags.tags)
    assert all(href.startswith(("https://", "http://")) for href in tags.hrefs), tags.hrefs
    return tags


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
@pytest.mark.parametrize("template", ["run", "run_failed"])
def test_an_alert_webhooks_run_shows_no_cost_or_duration(channel_type: str, template: str) -> None:
    """alert.run.failed carries no cost or duration: no message says $0.00 or 0ms for it,
    and the webhook body's run has them null (it said 0: "cost nothing, took no time")."""
    ctx = case_ctx(channel_type, "alert.run.failed")
    rendered = RENDERER.render(channel_type, template, REGISTRY[channel_type].parts, ctx)
    assert not rendered.fallback, rendered.error
    for text in rendered.parts.values():
        assert not re.search(r"\$0\.00|\b0(ms|s)\b", text), text
    if channel_type == "webhook":
        run = json.loads(rendered.parts["json"])["run"]
        assert [run[k] for k in ("durationMs", "costInCents", "baseCostInCents")] == [None] * 3


# ----------------------------------------------------------------------------- golden files


golden = assert_golden


@pytest.mark.parametrize(("template", "fixture"), GOLDEN_CASES)
def test_slack_matches_golden(template: str, fixture: str) -> None:
    message = slack(template, case_ctx("slack", fixture))
    pretty = json.dumps(message, indent=2, ensure_ascii=False) + "\n"
    golden(GOLDEN / "slack" / template / f"{fixture}.json", pretty)


@pytest.mark.parametrize(("template", "fixture"), GOLDEN_CASES)
def test_email_matches_golden(template: str, fixture: str) -> None:
    parts = render("email", template, case_ctx("email", fixture))
    check_email(parts)
    for part in PARTS["email"]:
        golden(GOLDEN / "email" / template / f"{fixture}.{part}", parts[part])


# ----------------------------------------------------------------------------- what they say


def test_slack_deployment_failed_beats_the_built_in() -> None:
    message = slack("deployment_failed", case_ctx("slack", "alert.deployment.failed.preview"))
    header, error, trace, stderr, facts, context, actions = message["blocks"]
    assert header["text"]["text"] == "🔴 Deployment timed out · 20260820.5 · feat/invoice-pdf"
    assert error["text"]["text"] == (
        "*DeploymentTimedOut*: Deployment timed out after 480 seconds while indexing tasks"
    )
    assert trace["text"]["text"].startswith("```at IndexingWorker.waitForIndex")
    assert "node:internal" not in trace["text"]["text"]
    assert stderr["text"]["text"].startswith("*stderr* (last 10 of 15 lines)\n```[indexer]")
    assert stderr["text"]["text"].endswith("error: worker did not report its task index```")
    fields = [f["text"] for f in facts["fields"]]
    assert "*Project*\nbilling-workers · Acme Inc" in fields
    assert "*Deployment*\n`q2n8v4xe` · 20260820.5" in fields
    assert (
        "*Pull request*\n<https://github.com/acme-inc/billing-workers/pull/42|#42 Render invoices"
        " as PDF>" in fields
    )
    assert any(f.startswith("*Commit*\n<https://github.com/") for f in fields)
    assert [e["text"] for e in context["elements"]][-1] == "rule *oncall*"
    buttons = [b["text"]["text"] for b in actions["elements"]]
    assert buttons == ["View pull request", "View commit", "Vercel deployment"]
    plain = slack("deployment_failed", case_ctx("slack", "alert.deployment.failed"))
    assert plain["blocks"][0]["text"]["text"] == "🔴 Deployment failed · 20260820.2 · prod"
    assert plain["text"].endswith(
        'BuildError: Build failed: Could not resolve "@acme/db" from '
        '"src/trigger/backfill-invoices.ts"'
    )


def test_slack_deployment_success_lists_tasks_capped() -> None:
    message = slack("deployment_success", case_ctx("slack", "alert.deployment.success"))
    assert message["blocks"][0]["text"]["text"] == "🚀 Deployed 20260820.3 · prod"
    assert message["blocks"][1]["text"]["text"] == (
        "*3 tasks* deployed to *billing-workers*\n• `sync-customer-data`\n"
        "• `generate-report`\n• `nightly-backfill` _scheduled_"
    )
    run = alert_event("alert.deployment.success")
    run["tasks"] = [{"id": f"task-{i}", "triggerSource": "STANDARD"} for i in range(45)]
    many = slack("deployment_success", RenderContext(run, "r", "c", "slack", "n", None))
    listing = many["blocks"][1]["text"]["text"]
    assert listing.startswith("*45 tasks* deployed")
    assert listing.count("\n• ") == 20 and listing.endswith("\n… and 25 more")
    assert all(b["type"] != "actions" or len(b["elements"]) == 1 for b in many["blocks"])


@pytest.mark.parametrize(
    ("classification", "label"),
    [
        ("new_issue", "🚨 New error"),
        ("regression", "⚠️ Regression"),
        ("unignored", "🔔 Resurfaced"),
        ("something_new", "⚠️ Error"),
    ],
)
def test_error_groups_say_what_happened(classification: str, label: str) -> None:
    run = {**alert_event("alert.error"), "classification": classification}
    link = run["dashboardUrl"]
    message = slack("error", RenderContext(run, "oncall", "c", "slack", "n", link))
    header = message["blocks"][0]["text"]["text"]
    assert header == f"{label} · TypeError in sync-customer-data"
    found = texts(message)
    assert "*Occurrences*\n17" in found and "*Task*\n`sync-customer-data`" in found
    assert "*First seen*\n2026-08-20 09:41:17 UTC" in found
    assert ("classification something_new" in found) == (classification == "something_new")
    assert message["blocks"][-1]["elements"][0]["url"] == link
    parts = render("email", "error", RenderContext(run, "oncall", "c", "email", "n", link))
    emoji, word = label.split(" ", 1)
    assert parts["subject"].startswith(f"[relay · Production] {emoji} {word}: ")
    assert "Occurrences  17" in parts["txt"].splitlines()
    assert f'href="{link}"' in parts["html"]


def test_slack_digest_counts_and_caps_runs() -> None:
    runs = [sdk(name) for name in SDK_FIXTURES]
    message = slack("digest", digest_ctx("slack", runs, taskIdentifier="sync-customer-data"))
    assert message["blocks"][0]["text"]["text"] == "🔴 5 runs · prod-failures"
    assert message["text"].startswith("🔴 5 runs · rule prod-failures · taskIdentifier=sync-")
    found = texts(message)
    assert "*taskIdentifier* `sync-customer-data`" in found
    assert any(t.startswith("*Statuses*\n🔴 1 FAILED\n") for t in found)
    assert "💰 $0.03 total" in found
    lines = next(t for t in found if t.startswith("🔴 <https://")).splitlines()
    assert len(lines) == 5
    assert lines[1] == (
        "🔴 <https://cloud.trigger.dev/projects/v3/proj_abc123/runs/run_cmaxkfbrjm6jm6gofnnqj1787"
        "|run_cmaxkfbrjm6jm6gofnnqj1787> *CRASHED* · render-video: TASK_PROCESS_MAYBE_OOM_KILLED"
    )
    many = [sdk("failed", id=f"run_{i:04d}", taskIdentifier=f"task-{i % 13}") for i in range(40)]
    big = slack("digest", digest_ctx("slack", many))
    run_lines = [ln for t in texts(big) for ln in t.splitlines() if ln.startswith("🔴 <")]
    assert len(run_lines) == 15 and "… and 25 more" in texts(big)
    assert "… and 3 more" in next(t for t in texts(big) if t.startswith("*Tasks*"))
    assert big["blocks"][0]["text"]["text"] == "🔴 40 runs · prod-failures"
    completed = slack("digest", digest_ctx("slack", [sdk("completed")]))
    assert completed["blocks"][0]["text"]["text"] == "✅ 1 run · prod-failures"


def test_email_deployment_failed_reads_well() -> None:
    parts = render("email", "deployment_failed", case_ctx("email", "alert.deployment.failed"))
    assert parts["subject"] == (
        "[relay · prod] 🔴 Deployment 20260820.2 failed · billing-workers: BuildError: Build"
        ' failed: Could not resolve "@acme/db" from "src/trigger/backfill-invoices.ts"'
    )
    lines = parts["txt"].splitlines()
    assert lines[0] == "🔴 Deployment failed · 20260820.2 · prod · billing-workers"
    for fact in ("Short code   k3m9x2pq", "Version      20260820.2", "Branch       main"):
        assert fact in lines
    assert "View the commit:" in lines  # no dashboard link for deployments: the commit
    tags = check_email(parts)
    assert tags.hrefs[-1] == tags.hrefs[-2]  # the commit fact and the button
    assert "&#34;@acme/db&#34;" in parts["html"]


def test_email_digest_and_success_read_well() -> None:
    runs = [sdk(name) for name in SDK_FIXTURES]
    parts = render(
        "email", "digest", digest_ctx("email", runs, taskIdentifier="sync-customer-data")
    )
    assert parts["subject"].startswith("[relay] 🔴 5 runs · prod-failures · taskIdentifier=sync-")
    lines = parts["txt"].splitlines()
    assert "  🔴 CRASHED  run_cmaxkfbrjm6jm6gofnnqj1787  render-video" in lines
    assert "Total cost   $0.03" in lines
    assert len(check_email(parts).hrefs) == 6  # five runs and the latest-run button
    many = [sdk("failed", id=f"run_{i:04d}") for i in range(30)]
    capped = render("email", "digest", digest_ctx("email", many))
    assert "  … and 10 more" in capped["txt"].splitlines() and "… and 10 more" in capped["html"]
    success = render("email", "deployment_success", case_ctx("email", "alert.deployment.success"))
    assert success["subject"] == "[relay · prod] 🚀 Deployed 20260820.3 · billing-workers · 3 tasks"
    assert "  • nightly-backfill (scheduled)" in success["txt"].splitlines()


def test_email_digest_escapes_what_its_macros_say_of_run_data() -> None:
    """The per-run lines come from macros of email/_macros.j2 (not autoescaped): called from
    the HTML part, Jinja marked their output safe, so an error message wrote raw HTML."""
    hostile = '<img src=x onerror=alert(1)> "q"'
    runs = [
        sdk("failed", id="run_a", error={"name": "Error", "message": hostile}),
        sdk("failed", id="run_b", dashboardUrl='https://x/run_b"><script>x</script>'),
    ]
    html = render("email", "digest", digest_ctx("email", runs))["html"]
    assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; &#34;q&#34;" in html


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_a_preview_run_names_its_branch(channel_type: str) -> None:
    """A preview environment is known by its branch (Trigger.dev's own alerts title it so),
    not by the slug `preview` that every preview branch shares."""
    run = alert_event("alert.run.failed")
    run["environment"] = {
        "id": "env_p",
        "type": "PREVIEW",
        "slug": "preview",
        "branchName": "feat/x",
    }
    ctx = RenderContext(run, "oncall", "team", channel_type, "ntf_0123", run["dashboardUrl"])
    rendered = RENDERER.render(channel_type, "run", REGISTRY[channel_type].parts, ctx)
    assert not rendered.fallback, rendered.error
    parts = rendered.parts
    for part, text in parts.items():
        assert "feat/x" in text, part
    if channel_type == "email":
        assert parts["subject"].startswith("[relay · feat/x] ")


@pytest.mark.parametrize("channel_type", sorted(set(REGISTRY) - {"webhook"}))
@pytest.mark.parametrize("template", ["run", "recovered"])
def test_a_run_without_cost_shows_none(channel_type: str, template: str) -> None:
    """Self-hosted Trigger.dev and alert webhooks carry no cost: no "$0.00" line on any
    channel, failed or not. A run that cost something still shows it."""

    def parts(cost: float) -> dict[str, str]:
        run = sdk("completed", costInCents=cost, baseCostInCents=0)
        ctx = RenderContext(run, "oncall", "team", channel_type, "ntf_0123", run_link(run))
        rendered = RENDERER.render(channel_type, template, REGISTRY[channel_type].parts, ctx)
        assert not rendered.fallback, rendered.error
        return rendered.parts

    for part, text in parts(0).items():
        assert "$0" not in text and "Cost" not in text and "cost" not in text, part
    if template == "run":  # a recovery need not say what the run cost (PagerDuty resolves)
        assert any("$12.34" in text for text in parts(1234).values())


# ----------------------------------------------------------------------------- any input


def hostile_event() -> dict[str, Any]:
    stack = "Error: boom\n" + "\n".join(f"    at f{i} (<anonymous>:{i}:1)" for i in range(3000))
    return Run.model_validate(
        {
            "id": "x<!here>",
            "status": "FAILED",
            "taskIdentifier": HOSTILE,
            "error": {
                "name": HOSTILE,
                "type": HOSTILE,
                "message": (HOSTILE + "\n") * 400,
                "stack": stack,
                "stackTrace": "<" * 20_000,
                "stderr": ("x" * 5000 + "\n") * 50,
                "occurrenceCount": 3,
                "firstSeen": HOSTILE,
                "taskIdentifier": HOSTILE * 20,
                "fingerprint": HOSTILE,
            },
            "deployment": {"version": HOSTILE * 20, "id": None, "shortCode": HOSTILE},
            "environment": {"type": HOSTILE, "slug": HOSTILE, "name": HOSTILE},
            "project": {"name": HOSTILE * 30},
            "git": {
                "branch": HOSTILE,
                "branchUrl": "javascript:alert(1)",
                "commitSha": "<!channel>",
                "commitUrl": "https://example.com/" + "c" * 5000,
                "commitMessage": ["not", "text"],
                "pullRequestUrl": "https://example.com/pr?a=1&b=<2>",
                "pullRequestTitle": HOSTILE,
            },
            "vercel": {"deploymentUrl": 'https://x.test/" onmouseover="alert(1)'},
            "tasks": [{"id": HOSTILE, "triggerSource": HOSTILE}, "plain", 7] * 30,
            "classification": {"odd": True},
        }
    ).as_dict()


def heavy_event() -> dict[str, Any]:
    """Every text as long as can be and made of characters mrkdwn escaping makes longer."""
    text, url = "<&>" * 3000, "https://x.test/?" + "a=1&" * 700
    return Run.model_validate(
        {
            "id": "deployment_" + "&" * 500,
            "status": "FAILED",
            "taskIdentifier": text,
            "error": {
                "name": text,
                "type": text,
                "message": text,
                "stack": text,
                "stackTrace": text,
                "stderr": (text + "\n") * 20,
                "fingerprint": text,
                "occurrenceCount": 10**12,
                "taskIdentifier": text,
                "firstSeen": text,
                "lastSeen": text,
            },
            "deployment": {"version": text, "id": text, "shortCode": text, "failedAt": text},
            "environment": {"type": text, "slug": text, "branchName": text, "name": text},
            "project": {"name": text},
            "organization": {"name": text},
            "git": {
                "branch": text,
                "branchUrl": url,
                "commitSha": text,
                "commitUrl": url[:1400],
                "commitMessage": text,
                "pullRequestNumber": text,
                "pullRequestTitle": text,
                "pullRequestUrl": url[:300],
            },
            "vercel": {"deploymentUrl": url[:2900]},
            "tasks": [{"id": text, "triggerSource": text}] * 100,
            "classification": "regression",
        }
    ).as_dict()


def odd_inputs() -> list[tuple[str, dict[str, Any]]]:
    """Events with hostile, missing and wrongly typed fields; SDK runs where events belong."""
    empty = Run.model_validate({"id": "x", "status": "FAILED"}).as_dict()
    wrong = {
        **empty,
        "deployment": "v1",
        "tasks": "not a list",
        "git": ["x"],
        "error": "just text",
        "environment": 3,
    }
    runs = [(f"sdk-{name}", sdk(name)) for name in SDK_FIXTURES]
    return [
        ("hostile", hostile_event()),
        ("heavy", heavy_event()),
        ("empty", empty),
        ("wrong", wrong),
        *runs,
    ]


@pytest.mark.parametrize("template", EVENT_TEMPLATES)
@pytest.mark.parametrize(("label", "run"), odd_inputs(), ids=[n for n, _ in odd_inputs()])
def test_any_event_renders_within_limits(template: str, label: str, run: dict[str, Any]) -> None:
    for link in (None, "https://cloud.trigger.dev/x?a=1&b=2", "javascript:alert(1)"):
        message = slack(template, RenderContext(run, HOSTILE, "c", "slack", "n", link))
        assert no_pings_or_forged_links(message)
        assert "javascript:" not in json.dumps(message)
        parts = render("email", template, RenderContext(run, HOSTILE, "c", "email", "n", link))
        check_email(parts)
        assert sum(map(len, parts.values())) < 200_000  # every value is cut, whatever its size
        assert "<script>" not in parts["html"] and 'onmouseover="' not in parts["html"]


def test_any_digest_renders_within_limits() -> None:
    hostile = hostile_event()
    runs = [
        {**hostile, "id": f"run_{i}<", "dashboardUrl": "https://x.test/" + "r" * (i * 40)}
        for i in range(60)
    ]
    runs += [sdk(name) for name in SDK_FIXTURES] + [alert_event("alert.run.failed")]
    labels = {f"label{i}": HOSTILE for i in range(30)}
    heavy = heavy_event()
    link = "https://x.test/?" + "a=1&" * 40  # short, but longer than Slack's 200 once escaped
    heavy_runs = [{**heavy, "id": f"run_{i}" + "&" * 80, "dashboardUrl": link} for i in range(20)]
    contexts = (
        digest_ctx("slack", runs, **labels),
        digest_ctx("slack", runs[-3:]),
        digest_ctx("slack", heavy_runs, **{"<&>" * 30: "<&>" * 100 for _ in range(1)}),
    )
    for ctx in contexts:
        assert no_pings_or_forged_links(slack("digest", ctx))
        email_ctx = replace(ctx, channel_type="email")
        check_email(render("email", "digest", email_ctx))


# ----------------------------------------------------------------------------- mrkdwn filter

OLD_MACRO = """\
{%- macro md(value, limit=3000) -%}
{%- set text = value|string|replace("&", "&amp;")|replace("<", "&lt;")|replace(">", "&gt;") %}
{%- set cut = text|truncate_chars(limit) %}
{%- set amp = cut.rfind("&") %}
{%- if cut != text and amp >= 0 and ";" not in cut[amp:] %}{{ cut[:amp].rstrip() ~ "…" }}
{%- else %}{{ cut }}{% endif %}
{%- endmacro -%}
{{ md(value, limit) }}"""


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (
            "<!channel> & <https://evil.test|docs>",
            None,
            "&lt;!channel&gt; &amp; &lt;https://evil.test|docs&gt;",
        ),
        ("plain *bold* `code`", None, "plain *bold* `code`"),
        (None, None, ""),
        (42, None, "42"),
        ("a" * 10, 5, "aaaa…"),
        ("abc<def", 6, "abc…"),  # "abc&lt;def" cut inside the entity: the entity goes
        ("abc<def", 8, "abc&lt;…"),
        ("<<<", 12, "&lt;&lt;&lt;"),
        ("a&b", 1, "…"),
        ("<", 3, "…"),  # "&l" cut from the text's first character: nothing of it left
    ],
)
def test_mrkdwn_escapes_and_cuts_between_entities(
    value: Any, limit: int | None, expected: str
) -> None:
    assert mrkdwn(value, limit) == expected


@pytest.mark.parametrize(
    "value",
    ["", "x", HOSTILE, "&" * 50, "a<b>c&d" * 40, "🔥<" * 100, "tail &amp", "x" * 3001],
)
@pytest.mark.parametrize("limit", [1, 2, 5, 7, 100, 3000])
def test_mrkdwn_is_the_old_slack_macro(value: str, limit: int) -> None:
    templates = {"old.json.j2": OLD_MACRO, "new.json.j2": "{{ value|mrkdwn(limit) }}"}
    env = environment(DictLoader(templates))  # named *.json.j2 like the Slack templates
    old = env.get_template("old.json.j2").render(value=value, limit=limit)
    assert mrkdwn(value, limit) == old
    assert env.get_template("new.json.j2").render(value=value, limit=limit) == old


def test_mrkdwn_is_a_filter_of_templates_and_expressions() -> None:
    env = environment(DictLoader({"t.json.j2": "{{ v|mrkdwn }}"}))
    assert env.get_template("t.json.j2").render(v="<@U1>") == "&lt;@U1&gt;"
    assert sandbox().compile_expression("v|mrkdwn == '&amp;'")(v="&") is True
    source = (Path(__file__).parents[1] / "templates" / "slack" / "run.json.j2").read_text()
    assert "|mrkdwn(" in source and not re.search(r"\bmd\(", source.split("-#}", 1)[1])


# ----------------------------------------------------------------------------- relay check

CONFIG = """\
channels:
  oncall-slack: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/x"}
  bot-slack: {type: slack, token: xoxb-1, channel: "#oncall"}
  team-email:
    type: email
    smtp: {host: smtp.example.com}
    from: relay@example.com
    to: [team@example.com]
rules:
  - name: deploys
    match: {event: deployment.failed}
    notify: [oncall-slack, bot-slack, team-email]
    continue: true
  - name: shipped
    match: {event: deployment.success}
    notify: [oncall-slack, team-email]
    continue: true
  - name: errors
    match: {event: error}
    notify: [oncall-slack, team-email]
    continue: true
  - name: failures-digest
    match: {status: [failure]}
    notify: [oncall-slack, bot-slack, team-email]
    group_by: [taskIdentifier]
    group_wait: 30s
"""


def test_relay_check_accepts_event_and_digest_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compiled = compile_config(parse_config(CONFIG, "c.yaml", settings_models(), env={}))
    assert [next(iter(r.templates.values())) for r in compiled.rules.rules] == [
        "deployment_failed",
        "deployment_success",
        "error",
        "run",
    ]
    path = tmp_path / "relay.yaml"
    path.write_text(CONFIG)
    assert relay_cli(["check", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"{path}: OK: 3 channels, 4 rules" and out.err == ""
    # the check is real: a template missing for one channel type is a problem
    broken = CONFIG.replace("match: {event: error}", "match: {event: error}\n    template: nope")
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(broken, "c.yaml", settings_models(), env={}))
    assert {p.message.split(":")[0] for p in info.value.problems} == {"slack", "email"}


def test_every_new_template_compiles_in_the_sandbox() -> None:
    renderer = RENDERER
    for channel_type, parts in PARTS.items():
        for name in (*EVENT_TEMPLATES, "digest", "run", "run_failed"):
            for part in parts:
                assert renderer.check(channel_type, name, part) is None, (channel_type, name)
    assert orjson.loads(render("slack", "digest", case_ctx("slack", "five_fixtures"))["json"])


def test_an_upper_case_scheme_is_a_web_link_too() -> None:
    """RFC 3986 schemes are case-insensitive: `HTTPS://x` lost its <url|text> link in Slack
    (the `link` macro and a button kept as text tested the scheme case-sensitively), its
    Discord and email link, its PagerDuty client_url. Now it links, written https://."""
    source = '{% from "slack/_macros.j2" import link %}{{ link(u, "go") }}'
    shipped = FileSystemLoader(shipped_templates_dir())
    env = environment(ChoiceLoader([DictLoader({"t.json.j2": source}), shipped]))
    assert env.get_template("t.json.j2").render(u="HTTPS://x.test/r?a&b") == (
        "<https://x.test/r?a&amp;b|go>"
    )
    label = {"type": "plain_text", "text": "Open"}
    button = {"type": "button", "text": label, "url": "HTTP://x.test/1"}
    body = {"text": "t", "blocks": [{"type": "actions", "elements": [button]}]}
    assert (plain_body(body, clear=False) or {})["text"] == "t\n<http://x.test/1|Open>"
    assert web_url(" HTTPS://x.test/r ") == "https://x.test/r"
    hook = "channels: {h: {type: webhook, url: 'HTTPS://x.test/h'}}\n"  # was refused
    assert parse_config(hook, "c.yaml", settings_models(), {}).config.channels["h"]


def test_web_url_percent_encodes_what_a_url_may_not_carry() -> None:
    """A space, |, <, >, a lone % or non-ASCII after the host is percent-encoded (a `|` broke
    Slack's <url|text> and its button refused): the same URL, one every receiver takes; an
    encoded one stays as it is. A host holding them is no host: no link."""
    odd = 'https://x.test/a b|c<d>é?q="1"&r=%zz&s=%2F#{f}'
    encoded = "https://x.test/a%20b%7Cc%3Cd%3E%C3%A9?q=%221%22&r=%25zz&s=%2F#%7Bf%7D"
    assert web_url(odd) == encoded and web_url(encoded) == encoded
    assert [
        web_url(u) for u in ("https://x|y.test/", "https://x y.test/", "https://x.test\\@e")
    ] == [None] * 3
    assert web_url("https://x.test/" + "|" * 700) is None  # 2,115 characters encoded


def shipped_templates() -> list[tuple[str, str, str]]:
    """Every template a rule can name, shipped with relay: (channel type, name, part)."""
    found = []
    for path in sorted(shipped_templates_dir().glob("[!_]*/[!_]*.j2")):
        name, part = path.name.removesuffix(".j2").rsplit(".", 1)
        found.append((path.parent.name, name, part))
    return found


def test_every_shipped_template_is_found_fine() -> None:
    """`relay check` and every start skip the checks of shipped templates when templates.dir
    overrides none (relay.configure._findings): this is what stands for them. Each one, with
    all it extends, includes or imports, compiles, reads no name its context lacks and reaches
    no template that is missing."""
    renderer = Renderer()
    templates = shipped_templates()
    assert len(templates) > 40 and {t for t, _, _ in templates} >= set(REGISTRY)
    kinds = (*EVENTS, ALERT_RUN)
    for key in templates:
        assert configure._template_findings(renderer, *key, kinds) == (None, [], []), key
        for kind in kinds:  # each renders on the samples of each kind of event alone too
            assert fails_always(renderer, *key, (kind,)) is None, (key, kind)


def test_a_shipped_template_is_checked_when_a_file_it_reaches_is_overridden(
    tmp_path: Path,
) -> None:
    """With templates.dir overriding a shipped file that a shipped template includes, that
    template's findings are the user's file's: checked, not skipped."""
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "_macros.j2").write_text("{% macro oops( %}")
    renderer = Renderer(tmp_path)
    why, _, _ = configure._findings(renderer, "slack", "run_failed", "json", ("run",))
    assert why is not None and "_macros.j2" in why


HOOKS = {
    "slack": "https://hooks.slack.com/services/T/B/x",
    "discord": "https://discord.com/api/webhooks/123/abc",
    "msteams": "https://prod-01.westus.logic.azure.com/workflows/x/triggers/manual/paths/invoke",
}


@pytest.mark.parametrize(
    ("channel_type", "template", "fallback"),
    [
        ("slack", '{"blocks": "not a list", "text": 5}', True),
        ("slack", "{}", True),
        ("slack", '{"text": " \\n", "blocks": [{"type": "section"}]}', True),  # blank text
        ("slack", '{"blocks": [{"type": "divider"}], "text": ""}', False),
        ("slack", '{"attachments": [{"color": "#f00", "text": "x"}]}', False),
        ("slack", '{"text": "", "attachments": []}', True),  # an empty list shows nothing
        ("slack", '"just words"', False),
        ("discord", '{"embeds": "not a list"}', True),
        ("discord", '{"content": "hi"}', False),
        ("discord", '"just words"', False),
        ("msteams", '{"body": 5}', True),
        ("msteams", '{"text": "hi"}', False),
    ],
)
def test_a_template_that_says_nothing_is_a_template_failure(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    channel_type: str,
    template: str,
    fallback: bool,
) -> None:
    """SPEC 4: a template bug still sends the plain fallback, with an error in the logs and
    metrics. A template rendering JSON with nothing its channel can show (no text, block or
    attachment for Slack) was sent as relay's one-line default "relay: rule r matched run ...":
    no status, task or error, and no error logged or counted."""
    (tmp_path / channel_type).mkdir()
    (tmp_path / channel_type / "run.json.j2").write_text(template)
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"templates: {{dir: {tmp_path}}}\n"
        f"channels: {{c: {{type: {channel_type}, webhook_url: '{HOOKS[channel_type]}'}}}}\n"
        "rules: [{name: r, match: {status: [failure]}, notify: [c]}]\n"
    )
    event = tmp_path / "run.json"
    event.write_text(json.dumps(sdk_run("failed")))
    assert relay_cli(["test", "--json", "--config", str(config), str(event)]) == 0
    [message] = json.loads(capsys.readouterr().out)[0]["messages"]
    assert message["fallback"] is fallback, message["error"]
    if fallback:
        # a failed run renders run_failed, which extends the run.json.j2 written here
        assert message["error"].startswith(f"InvalidMessage in {channel_type}/run_failed.json.j2")
        sent = json.loads(message["parts"]["json"])  # shown as the channel sends it
        text = SENT_TEXT.get(channel_type, _text)(sent)
        assert text.startswith("🔴 FAILED · sync-customer-data")


def _text(message: Any) -> str:
    return str(message["text"])


# where the fallback's text is in the message a channel sends (else its `text`)
SENT_TEXT: dict[str, Callable[[Any], str]] = {
    "discord": lambda m: m["content"],
    "msteams": lambda m: m["attachments"][0]["content"]["body"][0]["text"],
}


@pytest.mark.parametrize("channel_type", sorted(rendered_checks()))
def test_every_shipped_template_gives_its_channel_something_to_show(channel_type: str) -> None:
    for template, fixture in GOLDEN_CASES:
        ctx = case_ctx(channel_type, fixture)
        rendered = RENDERER.render(channel_type, template, ("json",), ctx)
        assert not rendered.fallback, (template, fixture, rendered.error)


def test_a_failed_run_renders_run_failed_which_an_operator_overrides_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC names an override `templates/<channel type>/run_failed.*`, and the shipped
    run_failed says "override this file to change failures only"; but a rule without
    `template:` rendered `run` for every run, so the override went unused. A failed run now
    renders run_failed (which extends run), any other run run; a rule's own template wins."""
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / "run_failed.json").write_text('{"mine": {{ run.status|tojson }}}')
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"templates: {{dir: {tmp_path}}}\n"
        "channels: {w: {type: webhook, url: 'http://127.0.0.1:9/'}}\n"
        "rules:\n"
        "  - {name: failed, match: {status: [failure]}, notify: [w], continue: true}\n"
        "  - {name: own, match: {status: [failure]}, notify: [w], template: run, continue: true}\n"
        "  - {name: done, match: {status: [COMPLETED]}, notify: [w]}\n"
    )
    event = tmp_path / "runs.json"
    runs = [sdk_run("failed"), {**sdk_run("failed"), "id": "run_ok", "status": "COMPLETED"}]
    event.write_text(json.dumps(runs))
    assert relay_cli(["test", "--json", "--config", str(config), str(event)]) == 0
    bodies = {
        (result["run_id"], m["rule"]): json.loads(m["parts"]["json"])
        for result in json.loads(capsys.readouterr().out)
        for m in result["messages"]
    }
    assert bodies.pop((runs[0]["id"], "failed")) == {"mine": "FAILED"}
    assert bodies.pop((runs[0]["id"], "own"))["type"] == "run.alert"  # the shipped run
    assert bodies.pop(("run_ok", "done"))["type"] == "run.alert"
    assert not bodies
