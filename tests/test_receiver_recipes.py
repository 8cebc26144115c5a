"""docs/receivers.md: each recipe (a `webhook` channel and its template for a service relay has no
channel for) is taken from the page as shown, passes `relay check`, and renders, through
`relay test`, the body the service documents: its required fields, typed as it takes them, within
its size limits, for a sample failed run and for a hostile one (quotes, newlines, markdown,
mentions, emoji, a 50 KB error). Where the service resolves what an alert opened, the recipe's
`<name>_recovered` renders the resolving body with the alert's own dedup key."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.render_context import RenderContext
from relay.templating import Renderer
from tests.conftest import FIXTURES, run_cli_in_process
from tests.test_docs import DOCS, configs_in, dummy_env, relay_check, section, templates_in

PAGE = DOCS / "receivers.md"
FAILED_RUN = FIXTURES / "realtime-run" / "sdk" / "run_failed.json"
STUCK_RUN = FIXTURES / "realtime-run" / "sdk" / "run_executing.json"
ALERT = FIXTURES / "alert-webhooks" / "alert.run.failed.body.json"  # no cost, no duration
HOSTILE_TASK = 'billing/"charge"\n*bold* `tick` <!channel> @all <@all> [x](https://evil.example) 🎉'
HOSTILE_ERROR = (
    'He said "no"\\n\n```\n# Heading <!here> @here <@all> [click](http://evil) 🔥 ' * 700
)[:50_000]
LINK = "https://cloud.trigger.dev/projects/v3/proj_recipes/runs"
Body = dict[str, Any]


def recipe(heading: str) -> tuple[str, dict[str, str]]:
    """The section's config and its template files, as the page shows them."""
    text = section(PAGE.read_text(encoding="utf-8"), f"## {heading}")
    configs = configs_in(text)
    assert len(configs) == 1, f"{heading}: one config per recipe"
    return configs[0], templates_in(text)


def relay_test(folder: Path, text: str, run: dict[str, Any], rule: str) -> Body:
    """`relay test` of `run` with the recipe's config: the body its `rule` renders, parsed."""
    event = folder / f"{run['id']}.json"
    event.write_text(json.dumps(run))
    config = str(folder / "config.yaml")
    tried = run_cli_in_process(
        "test", "--json", str(event), "--config", config, env=dummy_env(text), cwd=folder
    )
    assert tried.returncode == 0, tried.stderr
    messages = [m for m in json.loads(tried.stdout)[0]["messages"] if m["rule"] == rule]
    assert len(messages) == 1, tried.stdout
    assert not messages[0]["fallback"], messages[0]["error"]
    body: Body = json.loads(messages[0]["parts"]["json"])
    return body


def fixture(path: Path, **changes: Any) -> dict[str, Any]:
    """A fixture run, with the link an alert webhook's run carries, and `changes`."""
    run: dict[str, Any] = json.loads(path.read_text())
    return {**run, "dashboardUrl": f"{LINK}/{run['id']}", **changes}


def hostile() -> dict[str, Any]:
    return fixture(
        FAILED_RUN,
        id="run_hostile\"'<x>",
        dashboardUrl="javascript:alert(1)",
        status="CRASHED",
        taskIdentifier=HOSTILE_TASK,
        tags=['"quoted"', "<!channel>"],
        error={"type": "BUILT_IN_ERROR", "name": "Error", "message": HOSTILE_ERROR},
    )


def utf8(text: str) -> int:
    return len(text.encode())


def strict_keys(body: Body, required: dict[str, type], optional: dict[str, type]) -> None:
    """Exactly the documented fields: the required ones, of their types; the rest optional."""
    assert set(required) <= set(body), body.keys()
    assert set(body) <= set(required) | set(optional), body.keys()
    for key, kind in (required | optional).items():
        if key in body:
            assert isinstance(body[key], kind), (key, body[key])


def no_mention(text: str) -> None:
    """Run data in chat markdown only inside code, no link outside it, no mention at all."""
    outside = re.sub(r"```.*?```|`[^`\n]*`", "", text, flags=re.S)
    for live in ("<!channel>", "<!here>", "](http://evil", "](https://evil", "# Heading"):
        assert live not in outside, (live, outside[:300])
    assert "@all" not in text and "@here" not in text, "a mention, even in code"


def check_ntfy(body: Body) -> None:
    strict_keys(
        body,
        {"topic": str, "title": str, "message": str, "priority": int, "tags": list},
        {"click": str},
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body["topic"])
    assert body["priority"] in (4, 5)
    assert all(isinstance(t, str) for t in body["tags"])
    assert utf8(body["message"]) <= 4096  # past it ntfy makes the message an attachment


def check_incidentio(body: Body) -> None:
    strict_keys(
        body,
        {"title": str, "status": str, "deduplication_key": str},
        {"description": str, "source_url": str, "metadata": dict},
    )
    assert body["status"] == "firing"
    assert len(body["title"]) <= 250 and len(body.get("description", "")) <= 10_000


def check_victorops(body: Body) -> None:
    strict_keys(
        body,
        {"message_type": str, "entity_id": str, "entity_display_name": str},
        {"state_message": str, "monitoring_tool": str},
    )
    assert body["message_type"] == "CRITICAL"
    assert len(body["state_message"]) <= 10_000


def check_mattermost(body: Body) -> None:
    strict_keys(body, {"text": str}, {"username": str, "icon_url": str, "attachments": list})
    assert len(body["text"]) <= 16_383
    no_mention(body["text"])
    for field in body["attachments"][0]["fields"]:
        no_mention(field["value"])


def check_rocketchat(body: Body) -> None:
    strict_keys(body, {"text": str}, {"attachments": list})
    assert len(body["text"]) <= 5000
    no_mention(body["text"])


def check_webex(body: Body) -> None:
    strict_keys(body, {"roomId": str, "markdown": str}, {})
    assert utf8(body["markdown"]) <= 7439
    no_mention(body["markdown"])
    assert "<@" not in body["markdown"]


# heading → (template name, the failure rule, the stuck rule or None, the body's check)
RECIPES: dict[str, tuple[str, str, str | None, Callable[[Body], None]]] = {
    "ntfy": ("ntfy", "failures-to-ntfy", None, check_ntfy),
    "incident.io": (
        "incidentio",
        "failures-to-incidentio",
        "stuck-to-incidentio",
        check_incidentio,
    ),
    "Splunk On-Call (VictorOps)": (
        "victorops",
        "failures-to-victorops",
        "stuck-to-victorops",
        check_victorops,
    ),
    "Mattermost": ("mattermost", "failures-to-mattermost", None, check_mattermost),
    "Rocket.Chat": ("rocketchat", "failures-to-rocketchat", None, check_rocketchat),
    "Webex": ("webex", "failures-to-webex", None, check_webex),
}
RESOLVES = {  # what a recovery body is, and the key it shares with the alert
    "incidentio": ("deduplication_key", {"status": "resolved"}),
    "victorops": ("entity_id", {"message_type": "RECOVERY"}),
}


def test_the_page_is_linked_and_lists_every_recipe() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert set(RECIPES) <= set(re.findall(r"^## (.+)$", text, flags=re.M))
    assert "(docs/receivers.md)" in (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "(receivers.md)" in (DOCS / "cookbook.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("heading", sorted(RECIPES))
def test_recipe_checks_and_renders_the_documented_body(heading: str, tmp_path: Path) -> None:
    name, rule, _, check = RECIPES[heading]
    text, templates = recipe(heading)
    assert f"webhook/{name}.json.j2" in templates
    checked = relay_check(text, tmp_path / "recipe", templates)
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr
    sample = relay_test(tmp_path / "recipe", text, fixture(FAILED_RUN), rule)
    check(sample)
    assert LINK in json.dumps(sample), "the run's dashboard link is not in the body"
    check(relay_test(tmp_path / "recipe", text, json.loads(ALERT.read_text()), rule))
    attack = relay_test(tmp_path / "recipe", text, hostile(), rule)
    check(attack)
    assert "javascript:" not in json.dumps(attack)


@pytest.mark.parametrize("heading", [h for h, r in RECIPES.items() if r[2]])
def test_recovery_resolves_what_the_alert_opened(heading: str, tmp_path: Path) -> None:
    name, _, rule, check = RECIPES[heading]
    assert rule
    text, templates = recipe(heading)
    assert f"webhook/{name}_recovered.json.j2" in templates
    relay_check(text, tmp_path / "recipe", templates)
    stuck = fixture(STUCK_RUN, durationMs=900_000)
    alert = relay_test(tmp_path / "recipe", text, stuck, rule)
    check(alert)
    done = {**stuck, "status": "COMPLETED", "isExecuting": False, "isCompleted": True}
    ctx = RenderContext(done, rule, "recipe", "webhook", "ntf_2", None, resolves="ntf_1")
    rendered = Renderer(tmp_path / "recipe" / "templates").render(
        "webhook", f"{name}_recovered", ("json",), ctx
    )
    assert not rendered.fallback, rendered.error
    recovery = json.loads(rendered.parts["json"])
    key, expected = RESOLVES[name]
    assert recovery[key] == alert[key]
    assert recovery.items() >= expected.items()
