"""Alertmanager's webhook body (`template: alertmanager` on a webhook rule), for receivers
written for Alertmanager: what a real Alertmanager 0.25 posted (tests/fixtures/alertmanager/)
passes the fake receiver (tests/fakes/alertmanager.py), and so does every body relay sends with
these templates — a run, a digest, a recovery, a deployment, an error group, hostile run data, a
digest too large for the channel — and relay's bodies match Alertmanager's key for key.

Real relay in process, real HTTP to the fake receiver on 127.0.0.1, real SQLite.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from relay.config import Defaults
from relay.dashboard_links import dashboard_link
from relay.filters import fingerprint
from relay.grouping import digest_context
from relay.model import Run
from relay.templating import RenderContext, Renderer
from tests.conftest import RelayFactory, run_cli_in_process, sdk_run
from tests.fakes.alertmanager import (
    RFC3339,
    ZERO_TIME,
    AlertmanagerReceiver,
    alertmanager_receiver,
    body_problems,
    parse,
)
from tests.test_trigger_alerts import SECRET, body_of, post_alert

FIXTURE = Path(__file__).parent / "fixtures" / "alertmanager" / "webhook-v4.bodies.json"
REAL: dict[str, Any] = json.loads(FIXTURE.read_text())["bodies"]
LINK = dashboard_link(Defaults(project_ref="proj_abc123"))
RENDERER = Renderer(link=LINK)
GROUPED = {"alertname", "taskIdentifier"}
HOSTILE = 'a "quoted" \\ back\\slash\nnew line\ttab \x00\x1f </script> é 🔴 \u2028 {"x": 1}'

CONFIG = """\
defaults:
  retry: {{max_attempts: 3, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  project_ref: proj_abc123
sources:
  trigger_alerts:
    secret: {secret}
channels:
  am: {{type: webhook, url: "{url}"}}
rules:
{rules}"""


@pytest.fixture
async def receiver() -> Any:
    async with alertmanager_receiver() as found:
        yield found


def config(receiver: AlertmanagerReceiver, rules: str) -> str:
    return CONFIG.format(secret=SECRET, url=receiver.url, rules=rules)


def failed(run_id: str, task: str = "sync-data", message: str = 'a "quoted"\nmessage é') -> Any:
    run = sdk_run("failed")
    run.update(id=run_id, taskIdentifier=task)
    run["error"] = {**run["error"], "message": message}
    return run


def checked(receiver: AlertmanagerReceiver) -> list[Any]:
    """The bodies received, once the receiver found nothing wrong in any."""
    assert receiver.problems == [[] for _ in receiver.bodies], receiver.problems
    return receiver.bodies


# ------------------------------------------------------------------------ the schema, as it is


@pytest.mark.parametrize("name", sorted(REAL))
def test_the_receiver_takes_what_a_real_alertmanager_posted(name: str) -> None:
    assert body_problems(REAL[name]) == []


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({"version": 4}, "body.version is int, not str"),
        ({"groupLabels": {"alertname": "x"}}, "groupLabels not within commonLabels"),
        ({"extra": 1}, "not Alertmanager's ['extra']"),
    ],
)
def test_the_receiver_finds_a_body_alertmanager_would_not_send(
    change: dict[str, Any], found: str
) -> None:
    body = {**REAL["firing-one-alert"], **change}
    assert any(found in problem for problem in body_problems(body)), body_problems(body)


def test_the_receiver_finds_a_bad_alert() -> None:
    body = copy.deepcopy(REAL["firing-one-alert"])
    body["alerts"][0].update(startsAt="2026-12-06 18:45:37", fingerprint="run_1")
    body["alerts"][0]["labels"]["n"] = 1
    assert body_problems(body) == [
        "alerts[0].labels['n'] is 1",
        "alerts[0].startsAt '2026-12-06 18:45:37' is not RFC 3339",
        "alerts[0].fingerprint 'run_1'",
    ]
    with pytest.raises(ValueError, match="repeated"):
        parse(b'{"a": 1, "a": 2}')


# ------------------------------------------------------------------------ relay's bodies


async def test_a_failed_run_is_one_firing_alert(
    relay: RelayFactory, receiver: AlertmanagerReceiver
) -> None:
    rules = (
        "  - {name: failed-runs, match: {status: failure}, notify: [am], template: alertmanager}\n"
    )
    r = await relay(config(receiver, rules))
    run = failed("run_aaa")
    await r.post(run)
    [body] = checked(await _received(receiver, 1))
    [alert] = body["alerts"]
    assert alert["labels"] == {
        "alertname": "failed-runs",
        "event": "run",
        "run_id": "run_aaa",
        "task": "sync-data",
        "tags": "customer:cus_Q8x2LmN4,plan:pro",
    }
    assert alert["annotations"]["status"] == "FAILED"
    assert alert["annotations"]["description"] == 'Error: a "quoted"\nmessage é'
    assert alert["startsAt"] == Run.model_validate(run).as_dict()["createdAt"]
    assert alert["endsAt"] == ZERO_TIME and alert["status"] == body["status"] == "firing"
    assert alert["fingerprint"] == fingerprint(["failed-runs", "run_aaa"])
    assert alert["generatorURL"] == "https://cloud.trigger.dev/projects/v3/proj_abc123/runs/run_aaa"
    assert body["receiver"] == "am" and body["truncatedAlerts"] == 0
    assert body["groupLabels"] == {"alertname": "failed-runs"}
    assert body["groupKey"] == '{}:{alertname="failed-runs"}'
    assert receiver.headers[0]["webhook-id"].startswith("ntf_")  # still relay's delivery


async def test_a_digest_is_one_body_an_alert_a_run_grouped_as_alertmanager_does(
    relay: RelayFactory, receiver: AlertmanagerReceiver
) -> None:
    rules = (
        "  - {name: failed-runs, match: {status: failure}, notify: [am], template: alertmanager,\n"
        "     group_by: [taskIdentifier], group_wait: 0s, group_interval: 5m}\n"
    )
    r = await relay(config(receiver, rules))
    await r.post([failed("run_aaa"), failed("run_bbb", message="other"), failed("run_ccc")])
    [body] = checked(await _received(receiver, 1))
    assert [a["labels"]["run_id"] for a in body["alerts"]] == ["run_aaa", "run_bbb", "run_ccc"]
    assert len({a["fingerprint"] for a in body["alerts"]}) == 3
    real = REAL["firing-two-alerts"]  # Alertmanager grouped by alertname and taskIdentifier
    assert body["groupLabels"] == real["groupLabels"]
    assert body["groupKey"] == real["groupKey"]
    assert body["commonLabels"] == {
        "alertname": "failed-runs",
        "taskIdentifier": "sync-data",
        "event": "run",
        "task": "sync-data",
        "tags": "customer:cus_Q8x2LmN4,plan:pro",
    }
    assert body["commonAnnotations"] == {"status": "FAILED"}


async def test_a_recovery_resolves_the_alert_it_fired(
    relay: RelayFactory, receiver: AlertmanagerReceiver
) -> None:
    rules = (
        "  - {name: slow, match: {status: [EXECUTING]}, notify: [am], template: alertmanager,"
        " update_on_recovery: true}\n"
    )
    r = await relay(config(receiver, rules))
    executing = sdk_run("executing")
    await r.post(executing)
    await _received(receiver, 1)
    done = {**executing, "status": "COMPLETED", "updatedAt": "2026-08-20T09:20:00.000Z"}
    done["finishedAt"] = "2026-08-20T09:19:59.500Z"
    await r.post(done)
    firing, resolved = checked(await _received(receiver, 2))
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")
    [was], [now] = firing["alerts"], resolved["alerts"]
    assert now["status"] == "resolved" and now["endsAt"] == "2026-08-20T09:19:59.500Z"
    for same in ("labels", "startsAt", "fingerprint", "generatorURL"):
        assert now[same] == was[same], same
    assert resolved["groupKey"] == firing["groupKey"]
    assert (was["annotations"]["status"], now["annotations"]["status"]) == (
        "EXECUTING",
        "COMPLETED",
    )


async def test_deployment_and_error_alerts_are_alerts_too(
    relay: RelayFactory, receiver: AlertmanagerReceiver
) -> None:
    rules = "".join(
        f"  - {{name: {name}, match: {{event: {event}}}, notify: [am], template: alertmanager}}\n"
        for name, event in [
            ("deploy-failed", "deployment.failed"),
            ("deploy-success", "deployment.success"),
            ("errors", "error"),
        ]
    )
    r = await relay(config(receiver, rules))
    for name in ("alert.deployment.failed", "alert.deployment.success", "alert.error"):
        assert (await post_alert(r, body_of(name)))[0] == 202
        await _received(receiver, len(receiver.bodies) + 1)
    failed_, success, error = (b["alerts"][0] for b in checked(receiver))
    assert failed_["labels"]["event"] == "deployment.failed"
    assert failed_["labels"]["environment"] == "prod" and failed_["labels"]["version"]
    assert failed_["annotations"]["status"] == "FAILED"
    assert "task" not in failed_["labels"]  # a deployment is of no task
    assert success["annotations"]["description"].endswith("tasks deployed")
    assert error["labels"]["task"] == "sync-customer-data"
    assert error["annotations"]["classification"] == "new_issue"
    assert "/errors/" in error["generatorURL"]


async def _received(receiver: AlertmanagerReceiver, count: int) -> AlertmanagerReceiver:
    await receiver.wait_for(count)
    return receiver


# ------------------------------------------------------------------------ hostile and large


def render(name: str, runs: list[dict[str, Any]], limit: int | None = None) -> str:
    head = runs[-1]
    labels = {"taskIdentifier": str(head.get("taskIdentifier"))}
    group = digest_context("grp_1", labels, runs) if name.endswith("digest") else None
    ctx = RenderContext(head, "failed-runs", "am", "webhook", "ntf_1", LINK(head), group)
    ctx = RenderContext(**{**ctx.__dict__, "max_body_bytes": limit, "group_labels": labels})
    out = RENDERER.render("webhook", name, ("json",), ctx)
    assert not out.fallback, out.error
    return out.parts["json"]


def hostile(i: int, size: int = 1) -> dict[str, Any]:
    run = Run.model_validate(failed(f"run_{i:04d}", task=HOSTILE, message=HOSTILE * size))
    data = run.as_dict()
    data["tags"] = [HOSTILE, "b"]
    data["environment"] = {"slug": HOSTILE}
    return data


@pytest.mark.parametrize("name", ["alertmanager", "alertmanager_digest", "alertmanager_recovered"])
def test_hostile_run_data_stays_a_valid_body(name: str) -> None:
    body = parse(render(name, [hostile(1), hostile(2)]).encode())
    assert body_problems(body) == []
    alert = body["alerts"][-1]
    assert alert["labels"]["task"] == HOSTILE and alert["labels"]["environment"] == HOSTILE
    assert alert["annotations"]["description"] == f"Error: {HOSTILE}"


def test_a_large_digest_stays_within_the_channels_limit() -> None:
    runs = [hostile(i, size=600) for i in range(1000)]  # 1,000 errors of 60 KB each
    for limit in (None, 100_000):
        text = render("alertmanager_digest", runs, limit)
        body = parse(text.encode())
        assert body_problems(body) == []
        assert len(text.encode()) <= (limit or 1024 * 1024)
        assert len(body["alerts"]) + body["truncatedAlerts"] == 1000
        assert body["alerts"][0]["annotations"]["description"].endswith("…")


# ------------------------------------------------------------------------ key for key


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("alertmanager", "firing-one-alert"),
        ("alertmanager_digest", "firing-two-alerts"),
        ("alertmanager_recovered", "resolved-one-alert"),
    ],
)
def test_relays_body_is_alertmanagers_key_for_key(ours: str, theirs: str) -> None:
    runs = [failed("run_aaa"), failed("run_bbb")]
    if ours == "alertmanager_recovered":
        runs = [{**runs[0], "status": "COMPLETED"}]
    body = json.loads(render(ours, [Run.model_validate(r).as_dict() for r in runs]))
    real = REAL[theirs]
    assert list(body) == list(real)  # the same keys, in Go's order
    assert [type(body[k]) for k in body] == [type(real[k]) for k in real]
    assert (body["version"], body["status"]) == (real["version"], real["status"])
    assert len(body["alerts"]) == len(real["alerts"])
    for alert, theirs_ in zip(body["alerts"], real["alerts"], strict=True):
        assert list(alert) == list(theirs_)
        assert alert["status"] == theirs_["status"]
        assert [type(v) for v in alert.values()] == [type(v) for v in theirs_.values()]
        assert all(RFC3339.fullmatch(alert[k]) for k in ("startsAt", "endsAt"))
        assert (alert["endsAt"] == ZERO_TIME) == (theirs_["endsAt"] == ZERO_TIME)
        assert len(alert["fingerprint"]) == len(theirs_["fingerprint"]) == 16
        grouped = {"alertname"} if ours == "alertmanager_recovered" else GROUPED
        assert grouped <= alert["labels"].keys() & theirs_["labels"].keys()
        assert {"summary", "description"} <= alert["annotations"].keys()
    if ours == "alertmanager_digest":  # grouped by taskIdentifier, as Alertmanager by it
        assert (body["groupLabels"], body["groupKey"]) == (real["groupLabels"], real["groupKey"])


# ------------------------------------------------------------------------ selecting it


def test_relay_check_and_relay_test_know_it(tmp_path: Path) -> None:
    rules = (
        "  - {name: failed-runs, match: {status: failure}, notify: [am], template: alertmanager,\n"
        "     group_by: [taskIdentifier]}\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(secret=SECRET, url="http://127.0.0.1:9/hook", rules=rules))
    assert run_cli_in_process("check", "--config", str(path)).returncode == 0
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([failed("run_aaa"), failed("run_bbb")]))
    out = run_cli_in_process("test", str(runs), "--config", str(path), "--digests", "--json")
    assert out.returncode == 0, out.stderr
    bodies = [json.loads(m["parts"]["json"]) for r in json.loads(out.stdout) for m in r["messages"]]
    assert [len(b["alerts"]) for b in bodies] == [1, 1, 2]  # each run's, then the digest
    assert all(body_problems(body) == [] for body in bodies)
    # one group: a run sent alone (the only one of its flush) is of the digest's group
    assert {b["groupKey"] for b in bodies} == {
        '{}:{alertname="failed-runs", taskIdentifier="sync-data"}'
    }
    on_slack = path.read_text().replace("{type: webhook,", "{type: slack, webhook_url: x,")
    path.write_text(on_slack)
    found = run_cli_in_process("check", "--config", str(path))
    assert found.returncode == 1
    assert "slack: template slack/alertmanager.json.j2 not found" in found.stdout + found.stderr


def test_the_group_key_sorts_its_labels_as_alertmanager_does() -> None:
    """Go sorts label names byte-wise: an upper-case `group_by` key comes before alertname."""
    run = Run.model_validate(failed("run_aaa")).as_dict()
    labels = {"taskIdentifier": "sync-data", "Zone": "eu"}
    ctx = RenderContext(
        run, "failed-runs", "am", "webhook", "ntf_1", LINK(run), group_labels=labels
    )
    out = RENDERER.render("webhook", "alertmanager", ("json",), ctx)
    body = json.loads(out.parts["json"])
    assert body["groupKey"] == '{}:{Zone="eu", alertname="failed-runs", taskIdentifier="sync-data"}'
    assert list(body["groupLabels"]) == ["Zone", "alertname", "taskIdentifier"]


# ------------------------------------------------------------------------ a broken override


async def test_a_broken_override_still_sends_an_alertmanager_body(
    relay: RelayFactory, receiver: AlertmanagerReceiver, tmp_path: Path
) -> None:
    """An override of `alertmanager` that failed to render sent relay's generic fallback JSON,
    which the receiver the rule chose the template for cannot read: the fallback is now an
    Alertmanager body, its alert the one the shipped template names (labels, fingerprint),
    the render error in an annotation, still counted as a template error."""
    (tmp_path / "tpl" / "webhook").mkdir(parents=True)
    (tmp_path / "tpl" / "webhook" / "alertmanager.json.j2").write_text("{{ run.id + 1 }}\n")
    rules = (
        "  - {name: failed-runs, match: {status: failure}, notify: [am], template: alertmanager}\n"
    )
    r = await relay(f"templates: {{dir: {tmp_path / 'tpl'}}}\n" + config(receiver, rules))
    run = failed("run_aaa")
    await r.post(run)
    [body] = checked(await _received(receiver, 1))
    data = Run.model_validate(run).as_dict()
    ctx = RenderContext(data, "failed-runs", "am", "webhook", "ntf_1", LINK(data))
    shipped = json.loads(RENDERER.render("webhook", "alertmanager", ("json",), ctx).parts["json"])
    [alert], [theirs] = body["alerts"], shipped["alerts"]
    for same in ("labels", "startsAt", "endsAt", "fingerprint", "generatorURL"):
        assert alert[same] == theirs[same], same
    for same in ("receiver", "status", "groupLabels", "groupKey", "externalURL"):
        assert body[same] == shipped[same], same
    assert alert["annotations"] == {
        **{k: theirs["annotations"][k] for k in ("summary", "description", "status")},
        "template_error": "TypeError in webhook/alertmanager.json.j2:1",
    }
    async with r.http.get(r.url + "/metrics") as resp:
        assert 'relay_template_errors_total{channel="am"} 1.0' in await resp.text()


@pytest.mark.parametrize("name", ["alertmanager_digest", "alertmanager_recovered"])
def test_a_broken_variant_falls_back_to_an_alertmanager_body(name: str, tmp_path: Path) -> None:
    """A digest's and a recovery's fallback: the same alerts (firing, or resolved) as the
    shipped template's, within the channel's limit, the runs left out counted."""
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / f"{name}.json.j2").write_text("{{ run.id + 1 }}\n")
    runs = [hostile(i, size=600) for i in range(40)]
    if name == "alertmanager_recovered":
        runs = [{**runs[0], "status": "COMPLETED", "finishedAt": runs[0]["updatedAt"]}]
    labels = {"customer": "cus_1"}
    group = digest_context("grp_1", labels, runs) if name.endswith("digest") else None
    ctx = RenderContext(
        runs[-1], "failed-runs", "am", "webhook", "ntf_1", LINK(runs[-1]), group,
        resolves="ntf_0" if group is None else None, max_body_bytes=16 * 1024,
        group_labels=labels,
    )  # fmt: skip
    out = Renderer(tmp_path, link=LINK).render("webhook", name, ("json",), ctx)
    assert out.fallback and out.error == f"TypeError in webhook/{name}.json.j2:1"
    body = parse(out.parts["json"].encode())
    assert body_problems(body) == [] and len(out.parts["json"].encode()) <= 16 * 1024
    assert body["status"] == ("firing" if group else "resolved")
    assert len(body["alerts"]) + body["truncatedAlerts"] == len(runs)
    assert body["truncatedAlerts"] > 0 if group else len(body["alerts"]) == 1
    shipped = json.loads(RENDERER.render("webhook", name, ("json",), ctx).parts["json"])
    ours, theirs = ([(a["fingerprint"], a["status"]) for a in b["alerts"]] for b in (body, shipped))
    assert ours[: len(theirs)] == theirs[: len(ours)]  # the first runs, as many as fit
    assert body["groupKey"] == shipped["groupKey"]
