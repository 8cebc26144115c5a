"""POST /v1/trigger/alerts: Trigger.dev's signed alert webhooks, end to end.

A real relay in-process, real SQLite, real HTTP to a webhook sink. The shipped fixtures are the
exact signed bytes; our own (tests/fixtures/trigger_alerts/) are signed here with hmac.
Regenerate the golden files with `RELAY_UPDATE_GOLDEN=1 pytest tests/test_trigger_alerts.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from relay.channels import settings_models
from relay.config import Defaults
from relay.config_load import parse_config
from relay.config_rules import RuleConfig
from relay.configure import compile_config
from relay.dashboard_links import dashboard_link
from relay.formats.trigger_alerts import MAX_SIGNATURES, parse_alert
from relay.grouping import digest_context
from relay.model import Run
from relay.rule_compile import compile_rules
from relay.sandbox import sandbox
from relay.templating import RenderContext, Renderer
from relay.unknowns import with_unknowns
from tests.conftest import (
    EVENT_CASES,
    FIXTURES,
    Relay,
    RelayFactory,
    Sink,
    assert_golden,
    run_cli,
    sdk_run,
)
from tests.fakes.slack import (
    FIRST_TS,
    TOKEN,
    FakeSlack,
    mrkdwn_link_problems,
)

SHIPPED = FIXTURES / "alert-webhooks"
OURS = Path(__file__).parent / "fixtures" / "trigger_alerts"
GOLDEN = Path(__file__).parent / "golden"
SECRET = "Zx3vQ9kLm2Tn8Pw4Rb7Yc"
SECOND = "second-channel-secret-7Hq2"
HEADER = "x-trigger-signature-hmacsha256"
RULES = """\
rules:
  - name: run-failures
    match: {status: [failure]}
    notify: [hook]
  - name: deploy-failed
    match: {event: deployment.failed}
    notify: [hook]
  - name: deploy-success
    match: {event: deployment.success}
    notify: [hook]
  - name: errors
    match: {event: error}
    notify: [hook]
"""
HOOK = "channels:\n  hook: {type: webhook, url: 'https://example.com/hook'}\n"


def config(sink: Sink, sources: str | None = None) -> str:
    if sources is None:
        sources = f"sources:\n  trigger_alerts:\n    secret: {SECRET}\n    secrets: [{SECOND}]\n"
    hook = f"channels:\n  hook: {{type: webhook, url: {sink.url}/hook}}\n"
    return "server: {max_body_bytes: 8192}\n" + sources + hook + RULES


def body_of(name: str) -> bytes:
    """Exact bytes of a fixture: shipped (alert.run.failed …) or ours."""
    shipped = SHIPPED / f"{name}.body.json"
    return (shipped if shipped.exists() else OURS / f"{name}.body.json").read_bytes()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def variant(name: str, change: dict[str, Any]) -> bytes:
    """A fixture with some dotted paths replaced (None removes the key), compact as Trigger.dev."""
    data = json.loads(body_of(name))
    for path, value in change.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return json.dumps(data, separators=(",", ":")).encode()


async def post_alert(
    r: Relay, body: bytes, signature: str | None = "sign", path: str = "/v1/trigger/alerts"
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[HEADER] = sign(body) if signature == "sign" else signature
    async with r.http.post(r.url + path, data=body, headers=headers) as resp:
        if resp.status == 401:  # a 401 must carry its challenge (RFC 9110 §15.5.2)
            assert resp.headers.getall("WWW-Authenticate") == [CHALLENGE]
        return resp.status, await resp.json(content_type=None)


CHALLENGE = f'HMAC-SHA256 realm="relay", header="{HEADER}"'


async def stored(r: Relay) -> int:
    return sum((await r.service.store.counts()).values())


# ----------------------------------------------------------------------------- the shipped bytes


@pytest.mark.parametrize(
    ("name", "rule", "kind"),
    [
        ("alert.run.failed", "run-failures", "run.alert"),
        ("alert.deployment.failed", "deploy-failed", "deployment.failed"),
        ("alert.deployment.success", "deploy-success", "deployment.success"),
    ],
)
async def test_shipped_fixture_with_its_real_signature_fires_its_rule(
    relay: RelayFactory, sink: Sink, name: str, rule: str, kind: str
) -> None:
    r = await relay(config(sink))
    request = json.loads((SHIPPED / f"{name}.request.json").read_text())
    assert request["test_secret"] == SECRET
    status, answer = await post_alert(r, body_of(name), request["headers"][HEADER])
    assert status == 202, answer
    assert answer["accepted"] == 1 and answer["ignored"] == 0 and answer["notifications"] == 1
    [got] = await sink.wait_for(1)
    payload = got.json()
    assert (payload["rule"], payload["type"]) == (rule, kind)
    source = json.loads(body_of(name))["object"]
    if kind == "run.alert":
        run = payload["run"]
        assert run["id"] == answer["id"] == source["run"]["id"]
        assert run["updatedAt"] is None and run["finishedAt"] == source["run"]["completedAt"]
        assert run["error"] == source["run"]["error"]  # the raw union, `type` included
        assert payload["error"]["name"] == "Error" and "fetchInvoices" in payload["error"]["stack"]
        assert payload["dashboardUrl"] == source["run"]["dashboardUrl"]
        assert run["environment"]["slug"] == "prod" and run["task"]["version"] == "20260819.4"
        assert run["alert"]["type"] == "alert.run.failed" and run["machine"] == "small-1x"
    else:
        assert payload["deployment"] == source["deployment"]
        assert payload["git"]["commitSha"] == source["git"]["commitSha"]
        assert source["deployment"]["version"] in payload["text"]
        code = source["deployment"]["shortCode"]  # Trigger.dev's own "View Deployment" link
        link = f"https://cloud.trigger.dev/projects/v3/proj_jaavkuscdmabvdrlfscm/deployments/{code}"
        assert payload["dashboardUrl"] == link
    if kind == "deployment.failed":
        assert payload["error"]["name"] == "BuildError" and "BuildError" in payload["text"]
    if kind == "deployment.success":
        assert payload["taskCount"] == 3


async def test_a_webhook_url_pasted_with_its_trailing_slash_is_the_same_endpoint(
    relay: RelayFactory, sink: Sink
) -> None:
    """Was a 404 (Trigger.dev's alert lost) for `https://relay.example/v1/trigger/alerts/`."""
    r = await relay(config(sink))
    status, answer = await post_alert(r, body_of("alert.run.failed"), path="/v1/trigger/alerts/")
    assert (status, answer["notifications"]) == (202, 1)
    [got] = await sink.wait_for(1)
    assert got.json()["rule"] == "run-failures"
    async with r.http.post(r.url + "/v1/runs/", json=sdk_run("failed")) as resp:
        assert (resp.status, (await resp.json())["accepted"]) == (202, 1)


async def test_history_heads_an_alert_s_notification_with_its_event(
    relay: RelayFactory, sink: Sink
) -> None:
    """`relay history` said `run deployment_…` of a failed deployment; it heads each line with
    the event as `relay test` does."""
    r = await relay(config(sink))
    status, _ = await post_alert(r, body_of("alert.deployment.failed"))
    assert status == 202
    await sink.wait_for(1)
    env = {"RELAY_STORE_URL": r.service.settings.store_url}
    listed = await asyncio.to_thread(run_cli, "history", env=env)
    assert listed.returncode == 0, listed.stderr
    [head] = [line for line in listed.stdout.splitlines() if line.startswith("ntf_")]
    assert "  deployment.failed deployment_" in head and " run " not in head, head


async def test_internal_errors_keep_code_and_message(relay: RelayFactory, sink: Sink) -> None:
    """Trigger.dev's own Slack/email show only `trigger.dev internal error (CODE)`."""
    r = await relay(config(sink))
    for name in ("alert.run.failed.timed_out", "alert.run.failed.crashed"):
        assert (await post_alert(r, body_of(name)))[0] == 202
    by_status = {g.json()["run"]["status"]: g.json() for g in await sink.wait_for(2)}
    timed_out, crashed = by_status["TIMED_OUT"], by_status["CRASHED"]
    assert timed_out["error"]["code"] == "MAX_DURATION_EXCEEDED"
    assert timed_out["error"]["message"] == (
        "Run exceeded maximum compute time (maxDuration) of 300 seconds"
    )
    assert "MAX_DURATION_EXCEEDED: Run exceeded maximum compute time" in timed_out["text"]
    assert timed_out["text"].startswith("🔴 TIMED_OUT · generate-report · run_cm2sztw7")
    assert "trigger.dev internal error" not in timed_out["text"]
    assert crashed["error"]["code"] == "TASK_PROCESS_MAYBE_OOM_KILLED"  # as the SDK reads it
    assert "SIGKILL" in crashed["error"]["message"] and crashed["run"]["isOutOfMemoryError"]


# ----------------------------------------------------------------------------- signatures


async def test_bad_signatures_are_401_and_store_nothing(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    r = await relay(config(sink))
    body = body_of("alert.run.failed")
    changed = body.replace(b'"number":1842', b'"number":1843')
    cases = [
        (body, None),  # no header
        (body, ""),  # empty header
        (body, sign(body, "not-the-secret")),
        (body, sign(body)[:-1]),  # truncated
        (body, "sha256=" + sign(body)),  # no prefix in Trigger.dev's scheme
        (body, "zz" + sign(body)[2:]),
        (body, "é" * 64),
        (changed, sign(body)),  # one byte changed
        (b"", sign(body)),
        (b"", "0" * 64),
    ]
    for data, signature in cases:
        status, answer = await post_alert(r, data, signature)
        assert status == 401, (signature, answer)
        assert "signature" in answer["error"]
    assert await stored(r) == 0
    # the operator sees it in the log (a wrong secret), once for the burst, not ten times
    [line] = [rec for rec in caplog.records if rec.getMessage() == "request refused"]
    assert (getattr(line, "path"), getattr(line, "reason")) == (
        "/v1/trigger/alerts",
        "unauthorized",
    )
    assert getattr(line, "refused") == 1 and line.levelname == "WARNING"
    # nothing was remembered: the very same body, well signed, still fires
    status, answer = await post_alert(r, body)
    assert (status, answer["notifications"]) == (202, 1)


async def test_signature_is_hex_case_insensitive(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    body = body_of("alert.deployment.failed")
    assert (await post_alert(r, body, " " + sign(body).upper() + " "))[0] == 202


async def test_several_signature_values_verify_whatever_their_order(
    relay: RelayFactory, sink: Sink
) -> None:
    """Several header lines are one comma-separated value (RFC 9110 §5.3): the order of a
    wrong and a right signature, or a proxy folding them, must not decide the answer."""
    r = await relay(config(sink))
    body = body_of("alert.run.failed")
    wrong, right = "0" * 64, sign(body)
    url = r.url + "/v1/trigger/alerts"
    orders = ([wrong, right], [right, wrong], [f"{wrong}, {right}"], [f"{right},{wrong}"])
    for values in (*orders, ["", right]):  # an empty first line is no "missing" header
        headers = [("Content-Type", "application/json")] + [(HEADER, v) for v in values]
        async with r.http.post(url, data=body, headers=CIMultiDict(headers)) as resp:
            assert resp.status == 202, (values, await resp.text())
    headers = [("Content-Type", "application/json"), (HEADER, wrong), (HEADER, f"{wrong}, x")]
    async with r.http.post(url, data=body, headers=CIMultiDict(headers)) as resp:
        assert resp.status == 401


async def test_a_signature_header_of_more_values_than_any_sender_has_is_not_compared(
    relay: RelayFactory, sink: Sink
) -> None:
    """Every value was split, lowered and compared with every secret's signature: 120 lines of
    8,000 commas (aiohttp takes them) held the event loop 0.3 s per unauthenticated request.
    Up to MAX_SIGNATURES values verify as before; one more is refused uncompared."""
    r = await relay(config(sink))
    body = body_of("alert.run.failed")
    wrong, right = "0" * 64, sign(body)
    url = r.url + "/v1/trigger/alerts"
    for count, status in ((MAX_SIGNATURES, 202), (MAX_SIGNATURES + 1, 401)):
        folded = ",".join([wrong] * (count - 1) + [right])
        headers = {"Content-Type": "application/json", HEADER: folded}
        async with r.http.post(url, data=body, headers=headers) as resp:
            assert resp.status == status, (count, await resp.text())
            assert resp.headers.get("WWW-Authenticate") == (CHALLENGE if status == 401 else None)


async def test_any_configured_secret_verifies(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    body = body_of("alert.deployment.success")
    assert (await post_alert(r, body, sign(body, SECOND)))[0] == 202


async def test_a_validly_signed_empty_body_is_400(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    status, answer = await post_alert(r, b"")
    assert status == 400 and "empty body" in answer["error"]
    assert "alert webhook" in answer["error"] and "run" not in answer["error"]


async def test_not_configured_is_404(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink, sources=""))
    status, answer = await post_alert(r, body_of("alert.run.failed"))
    assert (status, answer) == (404, {"error": "alert webhooks are not configured"})


def test_a_config_without_a_usable_secret_is_refused() -> None:
    from relay.channels import settings_models  # noqa: PLC0415
    from relay.config_load import parse_config  # noqa: PLC0415
    from relay.errors import ConfigError  # noqa: PLC0415

    for sources in ('{trigger_alerts: {secret: ""}}', "{trigger_alerts: {}}"):
        with pytest.raises(ConfigError, match="unsigned alert webhooks are refused"):
            parse_config(f"sources: {sources}\n", "c.yaml", settings_models(), {})


# ----------------------------------------------------------------------------- shapes


def env(**change: Any) -> dict[str, Any]:
    return {f"object.{k.replace('__', '.')}": v for k, v in change.items()}


RUN, DEPLOY, ERROR = "alert.run.failed", "alert.deployment.failed", "alert.error"
BAD: list[tuple[bytes, str, str]] = [
    (b"{not json", "", "invalid JSON"),
    (b"[]", "", "expected a JSON object"),
    (b'[{"type": "alert.run.failed"}]', "", "expected a JSON object"),
    (b"{}", "type", "missing"),
    (b'{"type": 5}', "type", "string"),
    (b'{"type": "ping"}', "type", "alert type"),  # no Trigger.dev alert: not to be ignored
    (b'{"type": "alert.run.failed", "object": {"run": {"n": -1e400}}}', "object.run.n", "range"),
    (b'{"type": "run.failed", "object": {}}', "type", "alert type"),
    (variant(RUN, {"object": None}), "object", "missing"),
    (variant(RUN, {"object": []}), "object", "expected an object"),
    (variant(RUN, {"id": 7}), "id", "string"),
    (variant(RUN, env(run=None)), "object.run", "missing"),
    (variant(RUN, env(run__id=None)), "object.run.id", "missing"),
    (variant(RUN, env(run__id=5)), "object.run.id", "string"),
    (variant(RUN, env(run__status=None)), "object.run.status", "missing"),
    (variant(RUN, env(run__tags="prod")), "object.run.tags", "list"),
    (variant(RUN, env(run__tags=[1])), "object.run.tags[0]", "string"),
    (variant(RUN, env(run__tags=["a", 2])), "object.run.tags[1]", "string"),
    (variant(RUN, env(run__isTest="no")), "object.run.isTest", "expected true or false"),
    (variant(RUN, env(run__number="many")), "object.run.number", "expected a whole number"),
    (variant(RUN, env(run__completedAt="yesterday")), "object.run.completedAt", "ISO-8601"),
    (variant(RUN, env(run__error="boom")), "object.run.error", "expected an object"),
    (variant(RUN, env(task="sync")), "object.task", "expected an object"),
    (variant(RUN, env(task__id=7)), "object.task.id", "string"),
    (variant(DEPLOY, env(deployment__id=None)), "object.deployment.id", "missing"),
    (variant(DEPLOY, env(deployment__failedAt="soon")), "object.deployment.failedAt", "ISO-8601"),
    (variant(DEPLOY, env(error="boom")), "object.error", "expected an object"),
    (variant(ERROR, env(classification=None)), "object.classification", "missing"),
    (variant(ERROR, env(classification="")), "object.classification", "non-empty string"),
    (variant(ERROR, env(classification=5)), "object.classification", "non-empty string"),
    (variant(ERROR, env(error__fingerprint=None)), "object.error.fingerprint", "missing"),
    (variant(ERROR, env(error__taskIdentifier=3)), "object.error.taskIdentifier", "string"),
    (variant(ERROR, {"created": "when"}), "created", "ISO-8601"),
    (variant("legacy-v1.run.failed", {"run.id": None}), "run.id", "missing"),
    (variant("legacy-v1.deployment.failed", {"deployment": 1}), "deployment", "object"),
]


async def test_bad_bodies_get_400_naming_the_field(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    for body, field, message in BAD:
        status, answer = await post_alert(r, body)
        assert status == 400, (body[:80], answer)
        assert answer.get("field") == field, (body[:80], answer)
        assert message in answer["error"], (body[:80], answer)
    too_big = variant(RUN, env(run__tags=["x" * 100] * 90))
    assert (await post_alert(r, too_big))[0] == 413
    assert await stored(r) == 0


WATCH = "alert.dashboard_agent_watch"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            b'{"id":"a1","created":"2026-09-01T00:00:00.000Z","type":"alert.run.slow","object":{}}',
            "alert.run.slow",
        ),
        (body_of(WATCH), WATCH),
    ],
    ids=["invented", "dashboard_agent_watch"],
)
async def test_an_unknown_type_is_accepted_and_ignored(
    relay: RelayFactory, sink: Sink, body: bytes, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`alert.dashboard_agent_watch` is a real one: Trigger.dev's dashboard-agent watch firing,
    apps/webapp/app/v3/services/alerts/deliverDashboardAgentWatchAlert.server.ts
    (#sendWebhook, webhookVersion "2026-08-02") @ b082e44389337dc6505d590737a6df70867cc8f4,
    signed like the others. relay has no event for it yet: never a 400 (Trigger.dev would retry
    it), ignored and counted."""
    r = await relay(config(sink))
    ignored = 'relay_trigger_alerts_ignored_total{reason="unknown_type"}'
    assert f"{ignored} 0.0" in await metrics(r)  # there from the start: increase() sees the 1st
    status, answer = await post_alert(r, body)
    assert (status, answer) == (202, {"accepted": 0, "ignored": 1, "notifications": 0})
    assert await stored(r) == 0
    text = await metrics(r)
    assert f"{ignored} 1.0" in text  # counted, so a new alert type shows on the dashboard
    assert kind not in text  # never the sender's type as a label
    [line] = [r for r in caplog.records if r.getMessage().startswith("alert webhook of an")]
    assert (line.levelname, getattr(line, "type")) == ("WARNING", kind)  # the log names it


async def metrics(r: Relay) -> str:
    async with r.http.get(r.url + "/metrics") as resp:
        return await resp.text()


@pytest.mark.parametrize(
    ("name", "rule", "event"),
    [
        ("legacy-v1.run.failed", "run-failures", "run"),
        ("legacy-v1.deployment.failed", "deploy-failed", "deployment.failed"),
        ("legacy-v1.deployment.success", "deploy-success", "deployment.success"),
    ],
)
def test_legacy_v1_bodies(name: str, rule: str, event: str) -> None:
    run = parse_alert(json.loads(body_of(name))).run
    assert run is not None and run.event == event and run.as_dict()["alert"]["legacy"]
    loaded = parse_config(RULES + HOOK, "c.yaml", settings_models(), env={})
    rules, _ = compile_rules(loaded.config.rules, loaded.locate)
    assert [m.rule for m in rules.decide(run, None).matches] == [rule]
    if event == "run":
        assert (run.status, run.taskIdentifier) == ("FAILED", "sync-customer-data")
        assert run.error is not None and run.error["type"] == "BUILT_IN_ERROR"


async def test_legacy_v1_over_http(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    status, answer = await post_alert(r, body_of("legacy-v1.run.failed"))
    assert (status, answer["event"], answer["notifications"]) == (202, "run", 1)
    [got] = await sink.wait_for(1)
    assert got.json()["error"]["message"] == "Stripe API responded with 429: Too Many Requests"


# ----------------------------------------------------------------------------- once, and only once


@pytest.mark.parametrize("alert_first", [True, False])
async def test_same_run_by_runs_and_alert_notifies_once(
    relay: RelayFactory, sink: Sink, alert_first: bool
) -> None:
    r = await relay(config(sink))
    sdk = sdk_run("failed")
    assert sdk["id"] == json.loads(body_of(RUN))["object"]["run"]["id"]
    first, second = (True, False) if alert_first else (False, True)
    results = []
    for via_alert in (first, second):
        if via_alert:
            results.append(await post_alert(r, body_of(RUN)))
        else:
            results.append(await r.post(sdk))
    assert [(s, a["notifications"]) for s, a in results] == [(202, 1), (202, 0)]
    # a retried delivery of the alert adds nothing either
    assert (await post_alert(r, body_of(RUN)))[1]["notifications"] == 0
    await sink.wait_for(1)
    assert await stored(r) == 1 and len(sink.received) == 1


async def test_error_group_alerts_once_per_distinct_alert(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(config(sink))
    first = await post_alert(r, body_of(ERROR))
    assert first[0] == 202 and first[1]["notifications"] == 1
    assert first[1]["id"].startswith("errgrp_fp_9c1e4a7d2b:new_issue:")
    # Trigger.dev rebuilds the body on each delivery attempt: new envelope id, same alert
    retry = variant(ERROR, {"id": "Zr5tY8uIoP1aS3dF6gH9j", "created": "2026-08-20T09:56:09.000Z"})
    assert (await post_alert(r, retry))[1]["notifications"] == 0
    # the group regresses later: a new alert
    regression = await post_alert(r, body_of("alert.error.regression"))
    assert regression[1]["notifications"] == 1 and ":regression:" in regression[1]["id"]
    payloads = [g.json() for g in await sink.wait_for(2)]
    assert sorted(p["classification"] for p in payloads) == ["new_issue", "regression"]
    assert await stored(r) == 2


async def test_an_error_groups_alerts_share_one_slack_thread(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    """Each alert of an error group has its own id (it notifies once), and each used to start
    a top-level Slack message: a regression hid nowhere near the first alert. They now thread
    under the group's first message (broadcast, as news), per environment, as PagerDuty's
    dedup key groups them; another group starts its own thread."""
    bot = f"{{type: slack, token: {TOKEN}, channel: '#oncall', api_url: {slack.api_url}}}"
    r = await relay(
        f"sources:\n  trigger_alerts:\n    secret: {SECRET}\nchannels:\n  bot: {bot}\n"
        "rules:\n  - {name: errors, match: {event: error}, notify: [bot]}\n"
    )
    staging = {"object.environment.id": "cm_staging_env"}
    other = {"object.error.fingerprint": "fp_other"}
    bodies = [body_of(ERROR), body_of("alert.error.regression"), variant(ERROR, staging)]
    for body in [*bodies, variant(ERROR, other)]:
        assert (await post_alert(r, body))[1]["notifications"] == 1
        await slack.wait_for(len(slack.calls) + 1)
    first, regression, staged, new_group = slack.posted()
    assert "thread_ts" not in first and "thread_ts" not in new_group
    assert "thread_ts" not in staged  # the same fingerprint in another environment
    assert regression["thread_ts"] == FIRST_TS and regression["reply_broadcast"] is True


ODD_URL = "https://cloud.trigger.dev/projects/v3/proj_a|b/runs/<run_1>?x=a|c&p=%"
ODD_ENCODED = "https://cloud.trigger.dev/projects/v3/proj_a%7Cb/runs/%3Crun_1%3E?x=a%7Cc&p=%25"


async def test_slack_links_and_buttons_carry_what_a_url_may_not(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    """A dashboardUrl or git URL with a |, <, > or space went to Slack as sent (or, with a
    space, was no link): Slack refused the button with 400 invalid_blocks (permanent: the
    alert dead), and a `|` or `>` broke a mrkdwn `<url|text>` link. Percent-encoded, the
    button is taken and the link whole."""
    bot = f"{{type: slack, token: {TOKEN}, channel: '#oncall', api_url: {slack.api_url}}}"
    r = await relay(
        f"sources:\n  trigger_alerts:\n    secret: {SECRET}\nchannels:\n  bot: {bot}\n"
        "rules:\n  - {name: runs, match: {status: [failure]}, notify: [bot]}\n"
        "  - {name: deploys, match: {event: deployment.failed}, notify: [bot]}\n"
    )
    spaced = {"object.git.commitUrl": ODD_URL + " x>", "object.git.branchUrl": ODD_URL}
    for body in (variant(RUN, {"object.run.dashboardUrl": ODD_URL}), variant(DEPLOY, spaced)):
        assert (await post_alert(r, body))[1]["notifications"] == 1
    await slack.wait_for(2)
    assert slack.problems == [[], []]  # both taken as sent: none refused, no text-only retry
    for message in slack.posted():
        buttons = [
            e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]
        ]
        assert {ODD_ENCODED, ODD_ENCODED + "%20x%3E"} & set(buttons)
        assert [p for t in texts_of(message) for p in mrkdwn_link_problems(t)] == []
    links = " ".join(t for m in slack.posted() for t in texts_of(m))
    for url, label in ((ODD_ENCODED + "%20x%3E", "9f2c1e7"), (ODD_ENCODED, "main")):
        assert f"<{url.replace('&', '&amp;')}|{label}>" in links


def texts_of(message: dict[str, Any]) -> list[str]:
    """The mrkdwn texts of a Slack message (sections, fields, context elements)."""
    out = []
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                out.append(obj["text"])
    return out


# ----------------------------------------------------------------------------- thresholds

THRESHOLDS = """\
rules:
  - {name: cheap, match: {status: [failure], cost_cents: {lt: 100}}, notify: [hook], continue: true}
  - {name: fast, match: {duration_ms: {lte: 20000}}, notify: [hook], continue: true}
  - {name: no-base, match: {base_cost_cents: {gte: 0, lt: 1}}, notify: [hook], continue: true}
  - {name: dear, match: {cost_cents: {gt: 100}}, notify: [hook]}
"""


async def threshold_relay(relay: RelayFactory, sink: Sink) -> Relay:
    return await relay(config(sink).split("rules:")[0] + THRESHOLDS)


def remembered(db: Path, run_id: str) -> tuple[float, float]:
    """The cost and duration the store keeps of a run (what the rules' transitions see)."""
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT cost_cents, duration_ms FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    return row[0], row[1]


async def test_a_threshold_never_matches_an_alert_webhooks_run(
    relay: RelayFactory, sink: Sink
) -> None:
    """alert.run.failed (and the v1 body) carry no cost or duration: `lt`/`lte` rules used to
    match every such run (its cost and duration read as 0). The same run pushed as an SDK
    object, with its low cost and short duration, fires them, once."""
    r = await threshold_relay(relay, sink)
    for name in (RUN, "legacy-v1.run.failed"):
        status, answer = await post_alert(r, body_of(name))
        assert (status, answer["accepted"], answer["notifications"]) == (202, 1, 0), name
    sdk = sdk_run("failed")  # the same run: 0.05 cents, 14873 ms
    assert [a["notifications"] for _, a in [await r.post(sdk), await r.post(sdk)]] == [3, 0]
    got = await sink.wait_for(3)
    assert sorted(g.json()["rule"] for g in got) == ["cheap", "fast", "no-base"]
    assert (await post_alert(r, body_of(RUN)))[1]["notifications"] == 0


async def test_an_alert_after_the_run_keeps_its_cost(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A run pushed with its cost and duration, then its failure alert (no cost, no
    duration): the alert neither fires the rules the known values fail, nor erases them."""
    r = await threshold_relay(relay, sink)
    sdk = {**sdk_run("failed"), "costInCents": 500, "baseCostInCents": 2, "durationMs": 60000}
    assert (await r.post(sdk))[1]["notifications"] == 1  # dear
    assert (await post_alert(r, body_of(RUN)))[1]["notifications"] == 0
    assert remembered(tmp_path / "relay.db", sdk["id"]) == (500, 60000)
    [got] = await sink.wait_for(1)
    assert got.json()["rule"] == "dear"


async def test_a_pushed_run_with_a_field_named_alert_is_measured(
    relay: RelayFactory, sink: Sink
) -> None:
    """Only the alert webhook's parser says a run carries no cost or duration: an SDK object
    pushed with a field of its own called `alert` (kept as an extra) used to be taken for an
    alert's run, and its cost (500 cents) fired no threshold."""
    r = await threshold_relay(relay, sink)
    sdk = {**sdk_run("failed"), "costInCents": 500, "baseCostInCents": 2, "durationMs": 60000}
    sdk["alert"] = {"type": "alert.run.failed"}
    assert (await r.post(sdk))[1]["notifications"] == 1  # dear
    assert [g.json()["rule"] for g in await sink.wait_for(1)] == ["dear"]


UNKNOWN_RULES = """\
rules:
  - {name: slow-or-plan, when: "run.durationMs > 1000 or 'plan:pro' in run.tags", notify: [hook],
     continue: true}
  - {name: quick, when: "run.durationMs < 1000", notify: [hook], continue: true}
  - {name: total, when: "run.costInCents + run.baseCostInCents > 100", notify: [hook],
     continue: true}
  - {name: unknown, when: "run.costInCents is none and not run.durationMs", notify: [hook]}
"""
MEASURES = ("durationMs", "costInCents", "baseCostInCents")


async def test_an_alert_webhooks_run_has_no_cost_or_duration_it_did_not_send(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """alert.run.failed carries no cost or duration, yet the webhook body said
    `"durationMs": 0, "costInCents": 0`: a receiver read "cost nothing, took no time". They
    are null; `when:` compares them as no threshold matches them (false either way, never an
    error: no warning, no evaluation failure), and its other branches still decide."""
    r = await relay(config(sink).split("rules:")[0] + UNKNOWN_RULES)
    status, answer = await post_alert(r, body_of(RUN))
    assert (status, answer["notifications"]) == (202, 2), answer
    got = [g.json() for g in await sink.wait_for(2)]
    assert sorted(g["rule"] for g in got) == ["slow-or-plan", "unknown"]
    for body in got:
        assert {k: body["run"][k] for k in MEASURES} == dict.fromkeys(MEASURES)
    failures = [x for x in (await metrics(r)).splitlines() if "evaluation_failures_total{" in x]
    assert len(failures) == 4 and all(x.endswith(" 0.0") for x in failures), failures
    assert not [rec for rec in caplog.records if "when" in rec.getMessage()]


def test_a_template_comparing_an_alert_runs_duration_renders(tmp_path: Path) -> None:
    """An override comparing or dividing the duration or cost raised TypeError on the nulls of
    an alert webhook's run, and its channel got the fallback: they read as unknown (empty, a
    comparison false, JSON null), in the run and in a digest's runs."""
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / "t.json.j2").write_text(
        '{"slow": {{ (run.durationMs > 60000)|tojson }}, "s": "{{ run.durationMs / 1000 }}",'
        ' "cost": "{{ run.costInCents + run.baseCostInCents }}", "run": {{ run|tojson }},'
        ' "fast": {{ group.runs|selectattr("durationMs", "lt", 1000)|list|length }}}'
    )
    alert = parse_alert(json.loads(body_of(RUN))).run
    assert alert is not None
    run = alert.as_dict()
    ctx = RenderContext(run, "r", "h", "webhook", "n", None, digest_context("k", {}, [run]))
    out = Renderer(tmp_path).render("webhook", "t", ("json",), ctx)
    assert not out.fallback, out.error
    body = json.loads(out.parts["json"])
    assert (body["slow"], body["s"], body["cost"], body["fast"]) == (False, "", "", 0)
    assert [body["run"][k] for k in MEASURES] == [None] * 3


UNKNOWN_READS = {
    "none": "{{ run.durationMs is none }}",
    "defined": "{{ run.costInCents is defined }}",
    "default": "{{ run.durationMs|default('n/a') }}",
    "round": "{{ (run.durationMs / 1000)|round(1) }}",
    "int": "{{ run.durationMs|int }}",
    "float": "{{ run.costInCents|float }}",
    "abs": "{{ run.baseCostInCents|abs }}",
    "format": "{{ '%.1fs'|format(run.durationMs / 1000) }}",
    "filesizeformat": "{{ run.durationMs|filesizeformat }}",
    "sum": "{{ [run.costInCents, run.baseCostInCents]|sum }}",
    "money": "{{ run.costInCents|money }}",
    "duration": "{{ run.durationMs|duration }}",
}


def unknown_reads(run: Run) -> dict[str, str]:
    """Each of UNKNOWN_READS rendered for `run`, as a template would see it."""
    env = sandbox()
    return {
        k: env.from_string(t).render(run=with_unknowns(run.as_dict()))
        for k, t in UNKNOWN_READS.items()
    }


def matching_number_whens(run: Run) -> list[str]:
    """Which of `when: run.durationMs|<round, int, float, abs> > 1` (r0-r3) and `when:
    run.durationMs is none` (r4) match `run`."""
    whens = [f"run.durationMs|{f} > 1" for f in ("round", "int", "float", "abs")]
    rules = [
        {"name": f"r{i}", "when": w, "notify": ["hook"], "continue": True}
        for i, w in enumerate([*whens, "run.durationMs is none"])
    ]
    compiled, problems = compile_rules([RuleConfig.model_validate(r) for r in rules], str)
    assert not problems
    return [m.rule for m in compiled.decide(run, None).matches]


def test_a_template_reads_an_alert_runs_unknowns_as_none() -> None:
    """`is none` was false for an alert webhook's duration and cost, and `round`, `int`,
    `float`, `abs`, `format`, `filesizeformat` raised on them (the template's fallback sent):
    they are none (not defined, so `default` fills them) and a number filter gives the unknown
    back, empty; in a `when:` alike."""
    alert = parse_alert(json.loads(body_of(RUN))).run
    assert alert is not None
    got = unknown_reads(alert)
    assert got == {
        **dict.fromkeys(UNKNOWN_READS, ""),
        "none": "True",
        "defined": "False",
        "default": "n/a",
    }
    assert matching_number_whens(alert) == ["r4"]


def test_the_filters_that_pass_unknowns_still_compute_with_a_run_s_numbers() -> None:
    """The same reads of a pushed run, which carries its measures: `round` & co. wrapped to
    give an unknown back must compute as Jinja's own for a number, `is none` be false."""
    pushed = Run.model_validate(sdk_run("failed"))  # 14873 ms, 0.0502... and 0.0025 cents
    got = unknown_reads(pushed)
    assert got == {
        "none": "False",
        "defined": "True",
        "default": "14873",
        "round": "14.9",
        "int": "14873",
        "float": "0.050270739999999994",
        "abs": "0.0025",
        "format": "14.9s",
        "filesizeformat": "14.9 kB",
        "sum": "0.05277074",
        "money": "$0.0005",
        "duration": "14.9s",
    }
    assert matching_number_whens(pushed) == ["r0", "r1", "r2", "r3"]


def test_a_digest_of_alert_webhooks_runs_has_no_total_cost() -> None:
    """The webhook digest said `"totalCostInCents": 0.0` for runs that carry no cost."""
    alert = parse_alert(json.loads(body_of(RUN))).run
    assert alert is not None
    pushed = Run.model_validate(sdk_run("failed")).as_dict()
    assert digest_context("k", {}, [alert.as_dict()] * 2)["total_cost_cents"] is None
    both = digest_context("k", {}, [alert.as_dict(), pushed])["total_cost_cents"]
    assert both == pushed["costInCents"] + pushed["baseCostInCents"]


def test_thresholds_never_match_deployment_and_error_events() -> None:
    """They come as alert webhooks too, with no cost or duration: as for a run's alert."""
    rules = [
        {"name": f"{event}-{key}", "match": {"event": event, key: bound}}
        for event in ("deployment.failed", "deployment.success", "error")
        for key, bound in (("cost_cents", {"lt": 100}), ("duration_ms", {"lte": 5000}))
    ]
    configs = [RuleConfig.model_validate({**rule, "notify": ["hook"]}) for rule in rules]
    compiled, _ = compile_rules(configs, lambda p: "")
    for name in ("alert.deployment.failed", "alert.deployment.success", ERROR):
        run = parse_alert(json.loads(body_of(name))).run
        assert run is not None and compiled.decide(run, None).matches == (), name


# ----------------------------------------------------------------------------- rules & config


def test_events_match_with_other_keys_and_get_their_default_template() -> None:
    rules = [
        {
            "name": "preview-timeouts",
            "match": {"event": "deployment.failed", "status": "TIMED_OUT"},
        },
        {"name": "sync-errors", "match": {"event": "error", "task": "sync-*"}},
        {"name": "deploys", "match": {"event": "deployment.failed"}, "template": "mine"},
    ]
    configs = [RuleConfig.model_validate({**rule, "notify": ["hook"]}) for rule in rules]
    compiled, problems = compile_rules(configs, lambda p: "")
    assert not problems
    assert [next(iter(c.templates.values())) for c in compiled.rules] == [
        "deployment_failed",
        "error",
        "mine",
    ]

    def fired(name: str) -> list[str]:
        run = parse_alert(json.loads(body_of(name))).run
        assert run is not None
        return [m.rule for m in compiled.decide(run, None).matches]

    assert fired("alert.deployment.failed") == ["deploys"]  # FAILED, not TIMED_OUT
    assert fired("alert.deployment.failed.preview") == ["preview-timeouts"]
    assert fired("alert.error") == ["sync-errors"]
    assert fired("alert.run.failed") == []


def test_config_accepts_trigger_alerts_and_checks_event_templates() -> None:
    text = f"""\
sources:
  trigger_alerts:
    secrets: [{SECRET}, {SECOND}]
channels:
  hook: {{type: webhook, url: "https://example.com/hook"}}
  out: {{type: console}}
{RULES.replace("[hook]", "[hook, out]")}"""
    loaded = parse_config(text, "c.yaml", settings_models(), env={})
    alerts = loaded.config.sources.trigger_alerts
    assert alerts is not None
    assert [s.get_secret_value() for s in alerts.all_secrets()] == [SECRET, SECOND]
    assert SECRET in loaded.secrets()
    compile_config(loaded)  # templates exist for every event on console and webhook


# ----------------------------------------------------------------------------- golden renders


def render(channel_type: str, template: str, run: dict[str, Any]) -> str:
    part = {"console": "txt", "webhook": "json"}[channel_type]
    link = dashboard_link(Defaults())(run)
    ctx = RenderContext(run, "oncall", f"team-{channel_type}", channel_type, "ntf_0123", link)
    rendered = Renderer().render(channel_type, template, (part,), ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts[part]


ALL_PARTS = {
    "webhook": ("json",),
    "slack": ("json",),
    "discord": ("json",),
    "msteams": ("json",),
    "pagerduty": ("json",),
    "email": ("subject", "txt", "html"),
}


@pytest.mark.parametrize("channel_type", sorted(ALL_PARTS))
def test_a_one_task_deployment_counts_one_task_on_every_channel(channel_type: str) -> None:
    """The webhook body's text said "1 tasks" where every other channel said "1 task"."""
    one = variant("alert.deployment.success", {"object.tasks": [{"id": "only-task"}]})
    run = parse_alert(json.loads(one)).run
    assert run is not None
    ctx = RenderContext(run.as_dict(), "oncall", "c", channel_type, "ntf_0123", None)
    rendered = Renderer().render(channel_type, "deployment_success", ALL_PARTS[channel_type], ctx)
    assert not rendered.fallback, rendered.error
    text = " ".join(rendered.parts.values())
    assert "1 task" in text and "1 tasks" not in text


@pytest.mark.parametrize("channel_type", ["console", "webhook"])
@pytest.mark.parametrize(("template", "fixture"), EVENT_CASES)
def test_template_matches_golden(channel_type: str, template: str, fixture: str) -> None:
    run = parse_alert(json.loads(body_of(fixture))).run
    assert run is not None
    text = render(channel_type, template, run.as_dict())
    part = "txt" if channel_type == "console" else "json"
    if part == "json":
        assert orjson.loads(text)["type"] == run.event
    assert_golden(GOLDEN / channel_type / template / f"{fixture}.{part}", text)


@pytest.mark.parametrize(
    ("defaults", "ref", "link"),
    [
        ({}, "proj_a", "https://cloud.trigger.dev/projects/v3/proj_a/deployments/k3m9x2pq"),
        (  # self-hosted under a path: everything before /projects/v3/ is the dashboard
            {
                "dashboard_url": "https://ops.example/trigger/projects/v3/{project_ref}/runs/{run_id}"
            },
            "proj_a",
            "https://ops.example/trigger/projects/v3/proj_a/deployments/k3m9x2pq",
        ),
        (
            {"dashboard_url": "http://td.local:3030/r/{run_id}", "project_ref": "proj_cfg"},
            None,  # a body without project.ref: the configured one
            "http://td.local:3030/projects/v3/proj_cfg/deployments/k3m9x2pq",
        ),
        ({}, None, None),  # no project ref known: no link rather than a wrong one
    ],
)
def test_deployment_events_link_to_their_deployment(
    defaults: dict[str, Any], ref: str | None, link: str | None
) -> None:
    change = env(project__ref=ref) if ref else env(project=None)
    run = parse_alert(json.loads(variant(DEPLOY, change))).run
    assert run is not None
    assert dashboard_link(Defaults.model_validate(defaults))(run.as_dict()) == link


@pytest.mark.parametrize(
    ("defaults", "link"),
    [
        ({}, "https://cloud.trigger.dev/projects/v3/proj_jaavkuscdmabvdrlfscm/runs/"),
        (
            {"project_ref": "proj_other"},
            "https://cloud.trigger.dev/projects/v3/proj_jaavkuscdmabvdrlfscm/runs/",
        ),
    ],
)
def test_a_legacy_run_alert_links_to_the_run_in_its_own_project(
    defaults: dict[str, Any], link: str
) -> None:
    """A v1 body sends no dashboardUrl but names its project: the link was missing without
    defaults.project_ref, and pointed to the configured project (not the alert's) with it."""
    run = parse_alert(json.loads(body_of("legacy-v1.run.failed"))).run
    assert run is not None
    got = dashboard_link(Defaults.model_validate(defaults))(run.as_dict())
    assert got == link + "run_cmuxjbf30kqkowywawhi1r8yr"


@pytest.mark.parametrize(
    ("channel_type", "parts"),
    [("console", ("txt",)), ("slack", ("json",)), ("email", ("txt", "html"))],
)
def test_an_alert_run_shows_the_version_it_ran(channel_type: str, parts: tuple[str, ...]) -> None:
    """Trigger.dev's own run alerts name the deployed version (task.version); the default
    templates do too, and leave out its "Unknown" fallback."""
    for version, shown in (("20260819.4", True), ("Unknown", False)):
        run = parse_alert(json.loads(variant(RUN, env(task__version=version)))).run
        assert run is not None
        ctx = RenderContext(run.as_dict(), "oncall", "team", channel_type, "ntf_0123", None)
        rendered = Renderer().render(channel_type, "run", parts, ctx)
        assert not rendered.fallback, rendered.error
        for part in parts:
            assert (version in rendered.parts[part]) is shown, (version, part)


@pytest.mark.parametrize("template", ["deployment_failed", "deployment_success", "error"])
def test_webhook_json_stays_valid_whatever_the_alert_holds(template: str) -> None:
    hostile = 'He said "hi"\n\tthen </script> \\ 🔥 \u2028 end'
    run = Run.model_validate(
        {
            "id": "x",
            "status": "FAILED",
            "error": {"name": hostile, "message": hostile, "type": 5},
            "deployment": {"version": hostile, "id": None},
            "git": {"commitMessage": ["not", "text"], "branch": hostile},
            "tasks": "not a list",
            "classification": {"odd": True},
        }
    ).as_dict()
    body = orjson.loads(render("webhook", template, run))
    assert "\n" not in body["text"] and "\u2028" not in body["text"]
    assert body.get("error", {"message": hostile})["message"] == hostile
    assert render("console", template, run)


async def test_alerts_are_not_behind_the_ingest_token(relay: RelayFactory, sink: Sink) -> None:
    """The signature is the credential: Trigger.dev cannot send relay's bearer token."""
    r = await relay(config(sink).replace("server: {", "server: {auth_token: tok, "))
    assert (await post_alert(r, body_of(RUN)))[0] == 202
    async with aiohttp.ClientSession() as http, http.post(r.url + "/v1/runs", json={}) as resp:
        assert resp.status == 401
