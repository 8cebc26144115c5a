"""The opsgenie channel against a fake Opsgenie Alert API on 127.0.0.1 (tests/fakes/opsgenie.py):
the request it sends (GenieKey, the alert, its alias and priority: the template's, the run
status's, the channel's), the resend that Opsgenie deduplicates by alias, the recovery that
closes the alias the alert was created with (URL-encoded; a 404 is done), the answers it
classifies (401/403, 422 with Opsgenie's errors, 429 with and without Retry-After, 5xx),
timeouts and refused connections, hostile and huge run data through every shipped template,
Opsgenie's field limits, its settings as `relay check` and `relay config show` say them, and
the key never said. The kill -9 and retry matrix is tests/test_failure_matrix.py's."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.channels import REGISTRY, Channel, Outgoing, Recovery
from relay.channels._http import HttpClient
from relay.channels._http_answers import HttpResponse
from relay.channels.opsgenie import MAX_DETAILS, OpsgenieSettings, classify, opsgenie_alert
from tests.channels.shared import (
    TEMPLATES,
    check_and_show,
    dead_letter,
    failure_of,
    hides_its_cause,
    make_channel,
    relay_test,
    render_golden,
    render_odd,
    render_part,
    said,
    sdk,
    send_test,
    settings_problems,
)
from tests.channels.test_presets import odd_inputs
from tests.conftest import RelayFactory, assert_golden, sdk_run
from tests.fakes.opsgenie import (
    API_KEY,
    UNPROCESSABLE,
    FakeOpsgenie,
    answer,
    opsgenie_problems,
    unprocessable,
)
from tests.fakes.serving import free_port
from tests.fakes.slack import Reply, check_classified, classified

SETTINGS = OpsgenieSettings.model_validate({"type": "opsgenie", "api_key": API_KEY})


def channel(http: HttpClient, url: str, timeout: float = 2.0, **options: Any) -> Channel:
    settings = {"type": "opsgenie", "api_key": API_KEY, "api_url": url, **options}
    return make_channel(http, settings, timeout)


def outgoing(part: str, recovers: Recovery | None = None, ident: str = "ntf_1") -> Outgoing:
    return Outgoing(ident, "run_1", "r", {"json": part}, 1_700_000_000.0, recovers)


def render(template: str, run: dict[str, Any], link: str | None = None) -> str:
    return render_part("opsgenie", "json", template, run, link)


def alert(part: str, settings: OpsgenieSettings = SETTINGS) -> dict[str, Any]:
    action, body = opsgenie_alert(part, settings, "run_1", "default")
    assert action == "create"
    return body


# ----------------------------------------------------------------------------- sending


async def test_the_request_is_opsgenie_s_alert(opsgenie: FakeOpsgenie, http: HttpClient) -> None:
    ch = channel(http, opsgenie.url + "/v2/alerts/", tags=["team-billing", "trigger.dev"])
    run = sdk("failed")
    receipt = await ch.send(outgoing(render("run_failed", run, "https://x.test/r")))
    [call] = opsgenie.calls
    assert call.path == "/v2/alerts" and call.headers["Authorization"] == f"GenieKey {API_KEY}"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["webhook-id"] == "ntf_1"
    body = call.json()
    assert body["message"] == (
        "FAILED · sync-customer-data: Error: Stripe API responded with 429: Too Many Requests"
    )
    assert body["alias"] == run["id"] == receipt  # the receipt: the alias a recovery closes
    assert body["priority"] == "P2"  # FAILED, by the default priorities
    assert body["tags"][-1] == "team-billing" and body["tags"].count("trigger.dev") == 1
    assert body["details"]["status"] == "FAILED" and body["source"] == "trigger.dev"
    assert "Open run in Trigger.dev: https://x.test/r" in body["description"]
    assert opsgenie.problems == [[]] and list(opsgenie.alerts) == [run["id"]]


async def test_a_resend_after_a_lost_answer_makes_no_second_alert(
    opsgenie: FakeOpsgenie, http: HttpClient
) -> None:
    """The alias is the idempotency key: the same notification sent again (its answer lost)
    counts up the open alert; a template without alias gets the run id."""
    ch = channel(http, opsgenie.url)
    part = render("run_failed", sdk("failed"))
    receipt = await ch.send(outgoing(part))
    assert await ch.send(outgoing(part)) == receipt
    [(alias, created)] = opsgenie.alerts.items()
    assert alias == receipt
    assert created.count == 2 and opsgenie.problems == [[], []]
    assert await ch.send(outgoing('{"message": "no alias"}')) == "run_1"
    assert opsgenie.calls[-1].json()["alias"] == "run_1"


@pytest.mark.parametrize(
    ("part", "options", "priority"),
    [
        ('{"message": "m", "priority": "P4"}', {}, "P4"),  # the template's
        ('{"message": "m", "priority": "P9", "details": {"status": "CRASHED"}}', {}, "P1"),
        ('{"message": "m", "priority": 1, "details": {"status": "SYSTEM_FAILURE"}}', {}, "P1"),
        ('{"message": "m", "details": {"status": "TIMED_OUT"}}', {}, "P2"),
        ('{"message": "m", "details": {"status": "FAILED, CRASHED"}}', {}, "P1"),  # a digest
        ('{"message": "m", "details": {"status": "CANCELED"}}', {}, "P3"),  # the channel's
        ('{"message": "m"}', {"priority": "P4"}, "P4"),
        ('{"message": "m", "details": {"status": "failed"}}', {"priorities": {"failed": "P5"}}, "P5"),
    ],
)  # fmt: skip
def test_the_priority_is_the_template_s_else_the_status_s_else_the_channel_s(
    part: str, options: dict[str, Any], priority: str
) -> None:
    settings = OpsgenieSettings.model_validate({"type": "opsgenie", "api_key": "k", **options})
    assert alert(part, settings)["priority"] == priority


async def test_a_recovery_closes_the_alias_the_alert_was_created_with(
    opsgenie: FakeOpsgenie, http: HttpClient
) -> None:
    ch = channel(http, opsgenie.url)
    odd = "deploy/prod?x=1&y=#2 ü"  # a template's alias that is no path segment as it is
    receipt = await ch.send(outgoing(json.dumps({"message": "m", "alias": odd})))
    assert receipt == odd
    closing = render("recovered", sdk("completed"))
    assert await ch.send(outgoing(closing, Recovery("ntf_1", receipt), "ntf_r")) is None
    close = opsgenie.calls[-1]
    assert close.path == f"/v2/alerts/{odd}/close"  # one segment, decoded by the fake
    assert close.query == {"identifierType": "alias"} and close.headers["webhook-id"] == "ntf_r"
    assert close.json()["source"] == "relay" and "is COMPLETED" in close.json()["note"]
    assert opsgenie.alerts[odd].status == "closed" and opsgenie.open_aliases() == []
    # without a receipt (the create's send failed before): the template's alias, the run id
    await ch.send(outgoing(closing, Recovery("ntf_1", None), "ntf_r2"))
    assert opsgenie.calls[-1].path == f"/v2/alerts/{sdk('completed')['id']}/close"
    # an alert Opsgenie no longer has (404): done, not dead
    opsgenie.script(answer(404, message="Alert does not exist"))
    assert await ch.send(outgoing(closing, Recovery("ntf_1", "gone"), "ntf_r3")) is None
    # a close that failed for a while is tried again
    opsgenie.script(answer(503, message="unavailable"))
    err = await failure_of(ch, outgoing(closing, Recovery("ntf_1", receipt), "ntf_r4"))
    assert (err.reason, err.retryable) == ("server_error", True)


def test_the_close_url_encodes_the_alias() -> None:
    """`/`, `?`, `#`, `%` and spaces of an alias stay inside its path segment."""
    odd = "a/b?c#d%e f"
    assert quote(odd, safe="") == "a%2Fb%3Fc%23d%25e%20f"
    action, body = opsgenie_alert(json.dumps({"action": "close", "alias": odd}), SETTINGS, "-", "")
    assert (action, body["alias"]) == ("close", odd)


# ----------------------------------------------------------------------------- failures


@classified(
    [
        (answer(401, message="Could not authenticate"), "auth_error", False, None,
         "Could not authenticate (HTTP 401, request *)"),
        (answer(403, code=40301, message="To perform this action, use an API key from an API"
                " integration."), "auth_error", False, None, "To perform this action, use an API"
         " key from an API integration. (HTTP 403, request *)"),
        (unprocessable({"priority": "should be one of [ P1, P2, P3, P4, P5 ]"}), "client_error",
         False, None, f"{UNPROCESSABLE} (HTTP 422, request *): priority: should be one of"
         " [ P1, P2, P3, P4, P5 ]"),
        (answer(400, message="Invalid JSON body"), "client_error", False, None,
         "Invalid JSON body (HTTP 400, request *)"),
        (answer(402, message="Your plan does not allow this"), "client_error", False, None,
         "Your plan does not allow this (HTTP 402, request *)"),
        (answer(429, message="Too many requests"), "rate_limited", True, None,
         "Too many requests (HTTP 429, request *)"),
        (Reply(429, "", {"Retry-After": "7"}), "rate_limited", True, 7.0, "HTTP 429"),
        (Reply(500, "<html>oops</html>"), "server_error", True, None, "HTTP 500"),
        (Reply(503, "", {"Retry-After": "30"}), "server_error", True, 30.0, "HTTP 503"),
    ]
)  # fmt: skip
def test_answers_are_classified(
    reply: Reply, reason: str, retryable: bool, retry_after: float | None, detail: str
) -> None:
    body = json.dumps(reply.body).encode() if isinstance(reply.body, dict) else reply.body.encode()
    err = classify(HttpResponse(reply.status, reply.headers, body), API_KEY)
    request = reply.body.get("requestId", "") if isinstance(reply.body, dict) else ""
    check_classified(err, reason, retryable, retry_after, detail.replace("*", str(request)))


def test_a_request_id_that_is_no_id_is_not_quoted() -> None:
    """A proxy's answer that echoes the request in `requestId` (the Authorization header in it)."""
    body = json.dumps({"message": "no", "requestId": f"GenieKey {API_KEY}"}).encode()
    assert classify(HttpResponse(422, {}, body), API_KEY).detail == "no (HTTP 422)"


async def test_the_fake_s_own_answers_are_classified_without_the_key(
    opsgenie: FakeOpsgenie, http: HttpClient
) -> None:
    other = "ffffffff-1b2d-4e6f-8a9b-0c1d2e3f4a5b"
    refused = await failure_of(channel(http, opsgenie.url, api_key=other), outgoing('"x"'))
    assert (refused.reason, refused.retryable, refused.status) == ("auth_error", False, 401)
    opsgenie.script(answer(422, message=f"key {API_KEY} cannot", errors={"x": f"no {API_KEY}"}))
    quoting = await failure_of(channel(http, opsgenie.url), outgoing('"x"'))
    assert quoting.detail.startswith("key [secret] cannot (HTTP 422") and "x: no [secret]" in (
        quoting.detail
    )
    opsgenie.script(Reply(429, "", {"Retry-After": "2"}))
    limited = await failure_of(channel(http, opsgenie.url), outgoing('"x"'))
    assert (limited.reason, limited.retry_after) == ("rate_limited", 2.0)
    for err in (refused, quoting, limited):
        assert API_KEY not in said(err) and other not in said(err), said(err)


async def test_timeouts_and_refused_connections_are_retried_and_say_no_key(
    opsgenie: FakeOpsgenie, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    opsgenie.script(Reply(202, {"result": "Request will be processed"}, delay_s=5))
    timeout = await failure_of(channel(http, opsgenie.url, timeout=0.3), outgoing('"x"'))
    assert (timeout.reason, timeout.retryable) == ("timeout", True)
    refused = await failure_of(channel(http, f"http://127.0.0.1:{free_port()}"), outgoing('"x"'))
    assert (refused.reason, refused.retryable, refused.detail) == (
        "network", True, "connection refused",
    )  # fmt: skip
    for err in (timeout, refused):
        assert API_KEY not in said(err) and hides_its_cause(err)
    assert API_KEY not in caplog.text


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("template", (*TEMPLATES, "digest"))
@pytest.mark.parametrize(("case", "run"), odd_inputs())
def test_every_template_takes_any_run_data(template: str, case: str, run: dict[str, Any]) -> None:
    """Hostile fields, an error 40,000 characters long, empty and wrongly-typed ones: the
    Alert API takes what the channel sends."""
    action, body = opsgenie_alert(render_odd("opsgenie", "json", template, run), SETTINGS, "-", "")
    assert action == "close" or opsgenie_problems(body) == {}, str(body)[:300]


def test_fields_are_cut_to_opsgenie_s_limits_never_inside_a_character() -> None:
    part = {
        "message": "🔥" * 200,
        "alias": "k" * 600,
        "description": "é" * 20_000,
        "entity": "e" * 600,
        "source": "s" * 200,
        "tags": ["dup", "dup", "t" * 80, 7, " "] + [f"tag{i}" for i in range(30)],
        "details": {"big": "x" * 9000, "list": [1, 2], "map": {"a": 1}, "n": 3, "none": None},
        "actions": ["a" * 60] * 12,
        "responders": [{"type": "team", "name": "ops"}, {"type": "robot", "id": "x"}, "team"],
    }
    body = alert(json.dumps(part))
    assert opsgenie_problems(body) == {}
    assert body["message"] == "🔥" * 129 + "…" and len(body["description"]) == 15_000
    assert len(body["alias"]) <= 512 and body["alias"] != alert(json.dumps(
        {**part, "alias": "k" * 601}))["alias"]  # fmt: skip
    assert (len(body["entity"]), len(body["source"])) == (512, 100)
    assert body["tags"][:3] == ["dup", "t" * 49 + "…", "tag0"] and len(body["tags"]) == 20
    details = body["details"]
    assert (details["list"], details["map"], details["n"]) == ("[1,2]", '{"a":1}', "3")
    assert "none" not in details and sum(len(k) + len(v) for k, v in details.items()) <= 8000
    assert len(body["actions"]) == 10 and body["responders"] == [{"type": "team", "name": "ops"}]


@given(st.dictionaries(st.text(max_size=300), st.text(max_size=3000), max_size=40))
def test_details_always_fit_opsgenie_s_8000_characters(details: dict[str, str]) -> None:
    body = alert(json.dumps({"message": "m", "details": details}))
    sent = body.get("details", {})
    assert sum(len(k) + len(v) for k, v in sent.items()) <= MAX_DETAILS
    assert opsgenie_problems(body) == {}


def test_a_template_that_shows_nothing_sends_relay_s_line() -> None:
    assert alert('{"message": "  "}')["message"] == "default"
    check = REGISTRY["opsgenie"].check
    assert check is not None and check({"message": ""}) == "nothing the channel can show"
    assert check({"message": "x"}) is None and check({"action": "close"}) is None


# ----------------------------------------------------------------------------- settings


def problems(options: str) -> list[tuple[str, str]]:
    return settings_problems(f"og: {{type: opsgenie{options}}}")


@pytest.mark.parametrize(
    ("options", "where", "message"),
    [
        ("", "api_key", "required key is missing"),
        (f", api_key: {API_KEY}, priority: P0", "priority", "expected one of P1, P2"),
        (f", api_key: {API_KEY}, api_url: 'http://api.opsgenie.com'", "api_url", "api_url must"),
        (f", api_key: {API_KEY}, responders: [{{type: team}}]", "responders", "each responder"),
        (
            f", api_key: {API_KEY}, responders: [{{type: crew, name: x}}]",
            "type",
            "expected one of team",
        ),
    ],
)
def test_missing_or_malformed_settings_are_refused_without_quoting_the_key(
    options: str, where: str, message: str
) -> None:
    [(at, problem)] = problems(options)
    assert at == where and problem.startswith(message), (at, problem)
    assert API_KEY not in problem


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://api.eu.opsgenie.com/", "https://api.eu.opsgenie.com"),
        ("https://api.opsgenie.com/v2/alerts", "https://api.opsgenie.com"),
        ("https://api.atlassian.com/jsm/ops/integration", "https://api.atlassian.com/jsm/ops/integration"),
        ("https://api.atlassian.com/jsm/ops/integration/v2/alerts", "https://api.atlassian.com/jsm/ops/integration"),
    ],
)  # fmt: skip
def test_api_url_is_the_base_of_opsgenie_eu_or_jsm(url: str, base: str) -> None:
    settings = OpsgenieSettings.model_validate(
        {"type": "opsgenie", "api_key": f" {API_KEY}\n", "api_url": url}
    )
    assert settings.api_url == base and settings.api_key.get_secret_value() == API_KEY


def test_relay_check_and_config_show_never_show_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSGENIE_API_KEY", API_KEY)
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n"
        "  og: {type: opsgenie, api_key: '${OPSGENIE_API_KEY}', responders: [{type: team,"
        " name: ops}]}\n"
        "rules:\n"
        "  - {name: all, match: {status: [failure]}, notify: [og], update_on_recovery: true}\n"
    )
    outputs = check_and_show(config)
    assert "api_key: <secret>" in outputs["config"], outputs["config"]
    assert not any(API_KEY in text for text in outputs.values()), outputs


# ----------------------------------------------------------------------------- end to end


def _config(opsgenie: FakeOpsgenie, rule: str) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 2, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
channels:
  og: {{type: opsgenie, api_key: {API_KEY}, api_url: "{opsgenie.url}"}}
rules:
  - {rule}
"""


async def test_a_recovery_end_to_end_closes_the_alert(
    relay: RelayFactory, opsgenie: FakeOpsgenie
) -> None:
    rule = "{name: slow, match: {status: [EXECUTING]}, notify: [og], update_on_recovery: true}"
    r = await relay(_config(opsgenie, rule))
    run = sdk_run("executing")
    assert (await r.post(run))[0] == 202
    await opsgenie.wait_for(1)
    assert (await r.post({**run, "status": "COMPLETED"}))[0] == 202
    create, close = await opsgenie.wait_for(2)
    assert close.path == f"/v2/alerts/{run['id']}/close" and opsgenie.open_aliases() == []
    assert create.json()["alias"] == run["id"] and opsgenie.problems == [[], []]


async def test_dead_letters_and_logs_keep_the_key_secret(
    relay: RelayFactory, opsgenie: FakeOpsgenie, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    opsgenie.script(answer(403, code=40301, message=f"key {API_KEY} may not create alerts"))
    r = await relay(_config(opsgenie, "{name: f, match: {status: [failure]}, notify: [og]}"))
    assert (await r.post({**sdk_run("failed"), "id": "run_dead"}))[0] == 202
    dead = await dead_letter(r)
    assert dead.reason == "auth_error" and dead.attempts == 1 and dead.last_error is not None
    assert "key [secret] may not create alerts" in dead.last_error
    assert API_KEY not in dead.last_error and API_KEY not in caplog.text


def test_relay_test_shows_the_alert_as_opsgenie_gets_it(tmp_path: Path) -> None:
    (tmp_path / "templates" / "opsgenie").mkdir(parents=True)
    (tmp_path / "templates" / "opsgenie" / "mine.json.j2").write_text(
        '{"message": "{{ "y" * 400 }}", "details": {"n": 1}, "priority": "P1"}\n'
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels:\n"
        f"  og: {{type: opsgenie, api_key: {API_KEY}}}\n"
        "rules:\n  - {name: r, notify: [og], match: {status: [failure]}, template: mine}\n"
    )
    message, out = relay_test(tmp_path, config)
    body = json.loads(message["parts"]["json"])
    assert body["alias"] == "run_1" and len(body["message"]) == 130  # the send's, not "-"
    assert body["details"] == {"n": "1"} and body["priority"] == "P1" and API_KEY not in out


async def test_send_test_creates_the_alert_then_closes_it(
    opsgenie: FakeOpsgenie, tmp_path: Path
) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"channels:\n  og: {{type: opsgenie, api_key: {API_KEY}, api_url: '{opsgenie.url}'}}\n"
        "rules:\n  - {name: all, match: {status: [failure]}, notify: [og]}\n"
    )
    out = await send_test("og", config)
    create, close = opsgenie.calls
    alias = create.json()["alias"]
    assert close.path == f"/v2/alerts/{alias}/close" and opsgenie.alerts[alias].status == "closed"
    assert opsgenie.problems == [[], []] and API_KEY not in out


# ----------------------------------------------------------------------------- the templates

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "opsgenie"


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_match_golden(template: str) -> None:
    """Each shipped template on its event (`RELAY_UPDATE_GOLDEN=1` rewrites them; review the
    diff), as Opsgenie would take it, sent as rendered but for the channel's additions."""
    part = render_golden("opsgenie", "json", template)
    shown = json.dumps(json.loads(part), indent=2, ensure_ascii=False) + "\n"
    assert_golden(GOLDEN / template / "default.json", shown)
    action, body = opsgenie_alert(part, SETTINGS, "-", "-")
    if action == "close":
        assert body == {k: v for k, v in json.loads(part).items() if k != "action"}
        return
    assert opsgenie_problems(body) == {}
    sent = {k: v for k, v in body.items() if k != "priority"}
    rendered = json.loads(part)
    rendered.pop("priority", None)
    assert sent == {**rendered, "details": {k: str(v) for k, v in rendered["details"].items()}}
