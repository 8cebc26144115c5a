"""A rule's own digest and recovery: a rule with `template: X` renders `<type>/X_digest.*` for
its digests and `<type>/X_recovered.*` for its recoveries where the channel type has them
(else `digest`, `recovered`), and `relay check` checks those; `notification.group_labels` is a
group's labels in a run sent alone as in a digest.

Real relay in process, a real webhook sink, real SQLite; `relay check` / `relay test` called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RelayFactory, Sink, run_cli_in_process, sdk_run

# each body says which template rendered it, and the group's labels it saw
BODY = '{{ {"template": "%s", "labels": notification.group_labels, "id": notification.id}|tojson }}'
CONFIG = """\
defaults:
  retry: {{max_attempts: 3, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
templates: {{dir: ./templates}}
channels:
  hook: {{type: webhook, url: "{url}"}}
rules:
{rules}"""
GROUPED = (
    "  - {name: grouped, match: {status: failure}, notify: [hook], template: ticket,\n"
    "     group_by: [taskIdentifier], group_wait: 0s, group_interval: 5m}\n"
)
SLOW = (
    "  - {name: slow, match: {status: [EXECUTING]}, notify: [hook], template: ticket,"
    " update_on_recovery: true}\n"
)


def templates(root: Path, own: bool = True, broken: bool = False) -> None:
    """templates.dir with webhook/ticket.json.j2 and, `own`, its digest and recovery."""
    webhook = root / "templates" / "webhook"
    webhook.mkdir(parents=True)
    names = ["ticket", "ticket_digest", "ticket_recovered"] if own else ["ticket"]
    for name in names:
        text = '{% include "webhook/nothere.json.j2" %}' if broken and name != "ticket" else ""
        (webhook / f"{name}.json.j2").write_text(text or BODY % name)


def failed(i: int, task: str = "sync-data") -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=f"run_{i}", taskIdentifier=task)
    return run


async def test_a_rules_own_digest_renders_its_digests(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    templates(tmp_path)  # beside the config relay writes there
    r = await relay(CONFIG.format(url=sink.url, rules=GROUPED))
    await r.post(failed(1))  # alone in its flush: the rule's own message
    await sink.wait_for(1)
    await r.post([failed(2, "other"), failed(3, "other")])  # another group: a digest
    alone, digest = [g.json() for g in await sink.wait_for(2)]
    assert alone["template"] == "ticket" and alone["labels"] == {"taskIdentifier": "sync-data"}
    assert digest["template"] == "ticket_digest" and digest["id"].startswith("dgs_")
    assert digest["labels"] == {"taskIdentifier": "other"}


async def test_without_its_own_a_rule_digests_with_digest(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    templates(tmp_path, own=False)
    r = await relay(CONFIG.format(url=sink.url, rules=GROUPED))
    await r.post([failed(1), failed(2)])
    [digest] = [g.json() for g in await sink.wait_for(1)]
    assert digest["type"] == "run.digest"  # the shipped webhook/digest.json.j2


async def test_a_rules_own_recovery_renders_its_recoveries(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    templates(tmp_path)
    r = await relay(CONFIG.format(url=sink.url, rules=SLOW))
    executing = sdk_run("executing")
    await r.post(executing)
    await sink.wait_for(1)
    await r.post({**executing, "status": "COMPLETED", "updatedAt": "2026-08-20T09:20:00.000Z"})
    firing, recovered = [g.json() for g in await sink.wait_for(2)]
    assert (firing["template"], recovered["template"]) == ("ticket", "ticket_recovered")
    assert firing["labels"] is None  # no group_by


def test_relay_test_renders_a_run_sent_alone_with_its_groups_labels(tmp_path: Path) -> None:
    templates(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url="http://127.0.0.1:9/hook", rules=GROUPED))
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([failed(1), failed(2)]))
    out = run_cli_in_process("test", str(runs), "--config", str(path), "--digests", "--json")
    assert out.returncode == 0, out.stderr
    bodies = [json.loads(m["parts"]["json"]) for r in json.loads(out.stdout) for m in r["messages"]]
    assert [b["template"] for b in bodies] == ["ticket", "ticket", "ticket_digest"]
    assert all(b["labels"] == {"taskIdentifier": "sync-data"} for b in bodies)


def test_relay_check_checks_a_rules_own_digest_and_recovery(tmp_path: Path) -> None:
    templates(tmp_path, broken=True)  # each includes a template that does not exist
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(url="http://127.0.0.1:9/hook", rules=GROUPED + SLOW))
    found = run_cli_in_process("check", "--config", str(path))
    assert found.returncode == 1
    said = found.stdout + found.stderr
    for name in ("ticket_digest", "ticket_recovered"):
        assert f"webhook/{name}.json.j2:1: template webhook/nothere.json.j2 not found" in said


def test_relay_check_checks_the_digest_of_a_rule_grouping_every_run_in_one(
    tmp_path: Path,
) -> None:
    """`group_by: []` (one group for the rule, Alertmanager's `group_by: []`) sends digests
    too: its digest template went unchecked, as `[]` read as no group_by."""
    templates(tmp_path, broken=True)
    path = tmp_path / "config.yaml"
    one_group = GROUPED.replace("group_by: [taskIdentifier]", "group_by: []")
    path.write_text(CONFIG.format(url="http://127.0.0.1:9/hook", rules=one_group))
    found = run_cli_in_process("check", "--config", str(path))
    assert found.returncode == 1
    assert "webhook/ticket_digest.json.j2:1: template webhook/nothere.json.j2 not found" in (
        found.stdout + found.stderr
    )
