"""The pushover channel against a fake Pushover API on 127.0.0.1 (tests/fakes/pushover.py): the
request it sends (token and user key, the message's HTML, the priority: the channel's, a
template's, an emergency's retry and expire), the receipt of an emergency and the recovery that
cancels its repeats, the answers it classifies (429 over the quota, 5xx, a token or user key
refused with Pushover's words), timeouts and refused connections, hostile and huge run data
through every shipped template, the 1024-character cut, its settings as `relay check` and
`relay config show` say them, and the token and user key never said. The kill -9 and retry
matrix is tests/test_failure_matrix.py's; the secret scans tests/hardening/test_secrets.py's."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.channels import REGISTRY, Channel, Outgoing, Recovery
from relay.channels._html_writer import visible_text
from relay.channels._http import HttpClient
from relay.channels._http_answers import HttpResponse
from relay.channels._pushover_html import pushover_html
from relay.channels.pushover import PushoverSettings, classify, pushover_message
from relay.errors import DeliveryError
from relay.templating import RenderContext, Renderer
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
from tests.conftest import RelayFactory, alert_event, assert_golden, sdk_run
from tests.fakes.pushover import (
    TOKEN,
    USER,
    FakePushover,
    html_problems,
    pushover_problems,
    refused,
)
from tests.fakes.serving import free_port
from tests.fakes.slack import Reply, check_classified, classified

NASTY = '<b>x</b> & <a href="javascript:alert(1)">y</a> <script>z</script> &amp; 🔥 </font>'


def channel(http: HttpClient, url: str, timeout: float = 2.0, **options: Any) -> Channel:
    settings = {"type": "pushover", "token": TOKEN, "user_key": USER, "api_url": url, **options}
    return make_channel(http, settings, timeout)


def outgoing(part: str, recovers: Recovery | None = None, ident: str = "ntf_1") -> Outgoing:
    return Outgoing(ident, "run_1", "r", {"json": part}, 1_700_000_000.0, recovers)


def render(template: str, run: dict[str, Any], link: str | None = None, **extra: Any) -> str:
    return render_part("pushover", "json", template, run, link, **extra)


async def send_error(ch: Channel, part: str = '{"message": "hi"}') -> DeliveryError:
    return await failure_of(ch, outgoing(part))


def no_secret(text: str) -> bool:
    return TOKEN not in text and USER not in text


# ----------------------------------------------------------------------------- sending


async def test_the_request_is_pushover_s_message(pushover: FakePushover, http: HttpClient) -> None:
    ch = channel(http, pushover.url, device="iphone", sound="siren", ttl="1h")
    receipt = await ch.send(outgoing(render("run_failed", sdk("failed"), "https://x.test/r")))
    [call] = pushover.calls
    assert call.path == "/1/messages.json"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["webhook-id"] == "ntf_1"
    body = call.json()
    assert body.pop("message").startswith("<b>Error</b>: Stripe API responded with 429")
    assert body == {
        "token": TOKEN,
        "user": USER,
        "html": 1,
        "title": "🔴 FAILED · sync-customer-data",
        "url": "https://x.test/r",
        "url_title": "Open in Trigger.dev",
        "priority": 1,  # the channel's default: high, once
        "ttl": 3600,
        "sound": "siren",
        "device": "iphone",
    }
    assert pushover.problems == [[]] and receipt is None  # no emergency: nothing to cancel


async def test_an_emergency_repeats_until_acknowledged_and_its_receipt_is_kept(
    pushover: FakePushover, http: HttpClient
) -> None:
    ch = channel(http, pushover.url, priority=2, retry="2m", expire="2h", ttl="1h")
    receipt = await ch.send(outgoing(render("run_failed", sdk("failed"))))
    body = pushover.calls[-1].json()
    assert (body["priority"], body["retry"], body["expire"]) == (2, 120, 7200)
    assert "ttl" not in body  # Pushover keeps an emergency until it is acknowledged
    [given] = pushover.emergencies
    assert receipt is not None and json.loads(receipt) == {"receipt": given}
    assert pushover.problems == [[]]


async def test_a_template_sets_its_own_priority_within_pushover_s_range(
    pushover: FakePushover, http: HttpClient
) -> None:
    """A template's priority (-2..2, an integer) wins over the channel's; a deployment's
    success is quiet; anything else is the channel's."""
    ch = channel(http, pushover.url)
    crashed = '{"message": "crashed", "priority": 2}'
    assert await ch.send(outgoing(crashed)) is not None  # an emergency: its receipt
    assert pushover.calls[-1].json()["retry"] == 60  # the defaults: Alertmanager's 1m / 1h
    assert pushover.calls[-1].json()["expire"] == 3600
    for odd in ('"2"', "5", "true", "1.5", "null"):
        await ch.send(outgoing(f'{{"message": "x", "priority": {odd}}}'))
        assert pushover.calls[-1].json()["priority"] == 1, odd
    run = alert_event("alert.deployment.success")
    await ch.send(outgoing(render("deployment_success", run)))
    assert pushover.calls[-1].json()["priority"] == -1
    assert all(p == [] for p in pushover.problems)


async def test_a_recovery_cancels_the_emergency_then_says_so(
    pushover: FakePushover, http: HttpClient
) -> None:
    ch = channel(http, pushover.url, priority=2)
    receipt = await ch.send(outgoing(render("run_failed", sdk("failed"))))
    [given] = pushover.emergencies
    part = render("recovered", sdk("completed"))
    assert await ch.send(outgoing(part, Recovery("ntf_1", receipt), ident="ntf_r")) is None
    cancel, recovered = pushover.calls[1:]
    assert cancel.path == f"/1/receipts/{given}/cancel.json" and cancel.json() == {"token": TOKEN}
    assert cancel.headers["webhook-id"] == "ntf_r"
    assert pushover.emergencies == {given: "cancelled"}
    body = recovered.json()
    assert body["title"].startswith("✅ Recovered · ") and body["priority"] == 0
    assert "retry" not in body
    # a recovery is never an emergency, whatever its template says
    await ch.send(outgoing('{"message": "ok", "priority": 2}', Recovery("ntf_1", None)))
    assert pushover.calls[-1].json()["priority"] == 1
    # a receipt Pushover no longer knows (expired): nothing to cancel, the recovery goes
    gone = json.dumps({"receipt": "r" * 30})
    await ch.send(outgoing(part, Recovery("ntf_1", gone), ident="ntf_r2"))
    assert [c.path for c in pushover.calls[-2:]] == [
        f"/1/receipts/{'r' * 30}/cancel.json",
        "/1/messages.json",
    ]
    # a cancel that failed for a while: the recovery is tried again, cancel first
    pushover.script(Reply(503, "unavailable"))
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing(part, Recovery("ntf_1", receipt), ident="ntf_r3"))
    assert (info.value.reason, info.value.retryable) == ("server_error", True)
    assert pushover.calls[-1].path.endswith("/cancel.json")
    # a receipt that is no receipt of Pushover's never goes into the path
    await ch.send(outgoing(part, Recovery("ntf_1", '{"receipt": "../../x"}'), ident="ntf_r4"))
    assert pushover.calls[-1].path == "/1/messages.json"


# ----------------------------------------------------------------------------- failures

_RESET = 1_800_000_000
_LIMITS = {"X-Limit-App-Limit": "10000", "X-Limit-App-Remaining": "0"}


@classified(
    [
        (Reply(429, {"status": 0, "errors": ["over limit"], "request": "req-1"},
               {**_LIMITS, "X-Limit-App-Reset": str(_RESET + 600)}), "rate_limited", True,
         600.0, "over limit (HTTP 429, request req-1): over the monthly message quota (10000),"
         " reset 2027-01-15 08:10 UTC: upgrade it (pushover.net → your application) or wait"),
        (Reply(429, "", {**_LIMITS, "X-Limit-App-Reset": str(_RESET + 86_400 * 20)}),
         "rate_limited", True, 3600.0, "HTTP 429: over the monthly message quota (10000), reset"
         " 2027-02-04 08:00 UTC: upgrade it (pushover.net → your application) or wait"),
        (Reply(429, "", {"Retry-After": "7"}), "rate_limited", True, 7.0,
         "HTTP 429: over the monthly message quota: upgrade it (pushover.net → your"
         " application) or wait"),
        (Reply(500, "<html>oops</html>"), "server_error", True, 5.0, "HTTP 500"),
        (Reply(503, "", {"Retry-After": "30"}), "server_error", True, 30.0, "HTTP 503"),
        (refused(400, ["application token is invalid, see https://pushover.net/api"],
                 token="invalid"), "auth_error", False, None,
         "application token is invalid, see https://pushover.net/api (HTTP 400, request *):"
         " token was refused: copy the application's API token (pushover.net → your"
         " application)"),
        (refused(400, ["user identifier is not a valid user, group, or subscribed user key"],
                 user="invalid"), "auth_error", False, None,
         "user identifier is not a valid user, group, or subscribed user key (HTTP 400, request"
         " *): user_key was refused: copy the user key (pushover.net, top right) or a delivery"
         " group's key"),
        (refused(400, ["device name is not valid for user"], device="invalid"), "client_error",
         False, None, "device name is not valid for user (HTTP 400, request *): no device of"
         " that name: check device (pushover.net → your devices)"),
        (refused(400, ["message cannot be blank"]), "client_error", False, None,
         "message cannot be blank (HTTP 400, request *)"),
        (Reply(200, "<html>captive portal</html>"), "other", True, None,
         "Pushover answered without JSON"),
        (Reply(200, {"status": 0, "errors": ["odd"]}), "client_error", False, None,
         "odd (HTTP 400)"),
    ]
)  # fmt: skip
def test_answers_are_classified(
    reply: Reply, reason: str, retryable: bool, retry_after: float | None, detail: str
) -> None:
    body = json.dumps(reply.body).encode() if isinstance(reply.body, dict) else reply.body.encode()
    err = classify(HttpResponse(reply.status, reply.headers, body), (TOKEN, USER), now=_RESET)
    request = reply.body.get("request", "") if isinstance(reply.body, dict) else ""
    check_classified(err, reason, retryable, retry_after, detail.replace("*", str(request)))


async def test_the_fake_s_own_answers_are_classified_without_the_secrets(
    pushover: FakePushover, http: HttpClient
) -> None:
    """Not scripted: what the fake answers as Pushover does, token and user key refused, the
    quota spent."""
    other = "Z" * 30
    token = await send_error(channel(http, pushover.url, token=other))
    user = await send_error(channel(http, pushover.url, user_key=other))
    device = await send_error(channel(http, pushover.url, device="tablet"))
    assert (token.reason, user.reason, device.reason) == (
        "auth_error",
        "auth_error",
        "client_error",
    )
    assert "token was refused" in token.detail and "user_key was refused" in user.detail
    pushover.remaining = 0
    spent = await send_error(channel(http, pushover.url))
    assert (spent.reason, spent.retryable, spent.status) == ("rate_limited", True, 429)
    assert spent.retry_after is not None and 0 < spent.retry_after <= 3600
    assert "exceeded its monthly message limit" in spent.detail and "reset 20" in spent.detail
    for err in (token, user, device, spent):
        assert no_secret(said(err)) and other not in said(err), said(err)


async def test_an_answer_quoting_the_secrets_is_redacted(
    pushover: FakePushover, http: HttpClient
) -> None:
    pushover.script(refused(400, [f"token {TOKEN} cannot send to {USER}"], user="invalid"))
    err = await send_error(channel(http, pushover.url))
    assert no_secret(said(err)) and "token [secret] cannot send to [secret]" in err.detail


async def test_timeouts_and_refused_connections_are_retried_and_say_no_secret(
    pushover: FakePushover, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pushover.script(Reply(200, {"status": 1}, delay_s=5))
    timeout = await send_error(channel(http, pushover.url, timeout=0.3))
    assert (timeout.reason, timeout.retryable) == ("timeout", True)
    refused_at = await send_error(channel(http, f"http://127.0.0.1:{free_port()}"))
    assert (refused_at.reason, refused_at.retryable, refused_at.detail) == (
        "network", True, "connection refused",
    )  # fmt: skip
    for err in (timeout, refused_at):
        assert no_secret(said(err)), said(err)
        assert hides_its_cause(err)
    assert no_secret(caplog.text)


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("template", (*TEMPLATES, "digest"))
@pytest.mark.parametrize(("case", "run"), odd_inputs())
def test_every_template_takes_any_run_data(template: str, case: str, run: dict[str, Any]) -> None:
    """Hostile fields (markup of every kind, `&`, emoji, an error 40,000 characters long), empty
    and wrongly-typed ones: Pushover takes the message and shows it as meant."""
    body, _ = pushover_message(render_odd("pushover", "json", template, run), "-")
    assert pushover_problems(body) == [], str(body)[:300]


async def test_hostile_run_data_can_neither_format_nor_link(
    pushover: FakePushover, http: HttpClient
) -> None:
    run = sdk(
        "failed",
        taskIdentifier=NASTY,
        error={"name": "</b>", "message": NASTY, "stack": NASTY},
        tags=[NASTY],
    )
    await channel(http, pushover.url).send(outgoing(render("run_failed", run, "https://x.test/")))
    [body] = pushover.messages
    assert pushover.problems == [[]]
    assert body["message"].startswith(
        '<b>&lt;/b&gt;</b>: &lt;b&gt;x&lt;/b&gt; &amp; &lt;a href="javascript:alert(1)"&gt;y'
    )
    assert "<a " not in body["message"] and "<script>" not in body["message"]
    assert body["title"].startswith('🔴 FAILED · <b>x</b> & <a href="javascript')  # plain text


async def test_a_template_s_own_markup_is_kept_to_pushover_s_subset(
    pushover: FakePushover, http: HttpClient
) -> None:
    """A custom template that forgets to escape, or forges a link: unknown tags dropped (their
    text kept), a link only to an http(s) URL, a bare `&` escaped, every tag closed."""
    message = (
        '<b>bold <i>both</b> <a href="javascript:alert(1)">forged</a> <a href="https://ok.test/'
        '?a=1&b=2">ok <a href="https://x.test">inner</a></a> <font color="red" onclick="x">'
        'red</font> <font color="url(x)">plain</font> <table>t</table> & <u>open'
    )
    part = json.dumps({"title": "t\n<b>x</b>", "message": message, "url": "javascript:x"})
    await channel(http, pushover.url).send(outgoing(part))
    [body] = pushover.messages
    assert body["message"] == (
        '<b>bold <i>both</i></b> forged <a href="https://ok.test/?a=1&amp;b=2">ok inner</a> '
        '<font color="red">red</font> plain t &amp; <u>open</u>'
    )
    assert body["title"] == "t <b>x</b>" and "url" not in body
    assert pushover.problems == [[]]


async def test_a_huge_message_is_cut_within_1024_characters_never_inside_a_tag(
    pushover: FakePushover, http: HttpClient
) -> None:
    stack = "\n".join(f"    at frame{i} (file:///src/{'d' * 200}.ts:{i}:1)" for i in range(2000))
    run = sdk(
        "failed",
        taskIdentifier="t" * 5000,
        error={"name": "E&<", "message": "&<😀>" * 20_000, "stack": stack},
        tags=["t&<" * 300],
    )
    await channel(http, pushover.url).send(outgoing(render("run_failed", run, "https://x.test/")))
    part = '{"message": "<b>' + "&amp;😀<" * 2000 + '</b>", "title": "' + "x" * 9000 + '"}'
    await channel(http, pushover.url).send(outgoing(part))
    assert pushover.problems == [[], []]
    templated, raw = pushover.messages
    assert len(templated["message"]) <= 1024 and len(templated["title"]) <= 250
    assert len(raw["message"]) == 1024 and raw["message"].endswith("…</b>")
    assert len(raw["title"]) == 250 and raw["title"].endswith("…")
    _, cut = pushover_message(part, "-")
    assert cut == ["message cut to Pushover's 1024 characters"]


_PIECES = ["<b>", "</b>", "&amp;", "&lt;", "<br>", '<font color="#888888">', "</font>", "a", "😀"]
_PIECES += ['<a href="https://x.test/?a=1&amp;b=2">', "</a>", "<i>", " ", "\n", "&", "<"]


@given(st.lists(st.sampled_from(_PIECES), max_size=80), st.integers(8, 200))
def test_a_cut_never_breaks_a_tag_or_an_entity(pieces: list[str], limit: int) -> None:
    """pushover_html of any markup: within the limit with its "…" and the tags it closes, no
    tag or entity cut through, the text shown a start of the whole one's."""
    text = "".join(pieces)
    out, cut = pushover_html(text, limit)
    whole, _ = pushover_html(text, 10**6)
    assert len(out) <= limit and html_problems(out) == [], out
    if not visible_text(out).strip("… \n"):  # nothing shown before the cut: the default's
        assert out == "" or not visible_text(whole).strip()
        return
    if not cut:
        assert out == whole
        return
    shown = visible_text(out).rstrip()
    assert shown.endswith("…") and visible_text(whole).startswith(shown[:-1].rstrip()), out


async def test_a_template_that_shows_nothing_sends_relay_s_line(
    pushover: FakePushover, http: HttpClient
) -> None:
    await channel(http, pushover.url).send(outgoing('{"message": " <b> </b> ", "title": ""}'))
    assert pushover.calls[-1].json()["message"] == "relay: rule r matched run run_1"
    assert REGISTRY["pushover"].check is not None
    assert REGISTRY["pushover"].check({"message": "<i></i>"}) == "nothing the channel can show"
    assert REGISTRY["pushover"].check({"message": "x"}) is None


# ----------------------------------------------------------------------------- settings


def problems(options: str) -> list[tuple[str, str]]:
    return settings_problems(f"po: {{type: pushover{options}}}")


KEYS = f", token: {TOKEN}, user_key: {USER}"


@pytest.mark.parametrize(
    ("options", "where", "message"),
    [
        (f", user_key: {USER}", "token", "required key is missing"),
        (f", token: {TOKEN}", "user_key", "required key is missing"),
        (f", token: {TOKEN[:-1]}, user_key: {USER}", "token", "token must be the application's"),
        (f", token: {TOKEN}, user_key: '{USER[:-1]}!'", "user_key", "user_key must be a user"),
        (f"{KEYS}, device: 'iphone, my phone'", "device", "device must be device names"),
        (f"{KEYS}, sound: 'a b'", "sound", "sound must be a sound's name"),
        (f"{KEYS}, priority: 3", "priority", "must be at most 2 (got 3)"),
        (f"{KEYS}, retry: 10s", "retry", "retry must be at least 30s"),
        (f"{KEYS}, expire: 4h", "expire", "expire must be at most 3h"),
        (f"{KEYS}, retry: 10m, expire: 5m", "po", "retry must not be longer than expire"),
        (f"{KEYS}, api_url: 'http://api.pushover.net'", "api_url", "api_url must be an https://"),
    ],
)
def test_missing_or_malformed_settings_are_refused_without_quoting_the_keys(
    options: str, where: str, message: str
) -> None:
    [(at, problem)] = problems(options)
    assert at == where and problem.startswith(message), (at, problem)
    assert no_secret(problem) and TOKEN[:-1] not in problem and USER[:-1] not in problem


def test_settings_keep_what_pushover_takes() -> None:
    settings = PushoverSettings.model_validate(
        {
            "type": "pushover",
            "token": f" {TOKEN}\n",  # as read from a secret file
            "user_key": USER,
            "device": " iphone , pixel-8 ",
            "api_url": "https://api.pushover.net/1/messages.json",
        }
    )
    assert settings.token.get_secret_value() == TOKEN and settings.device == "iphone,pixel-8"
    assert settings.api_url == "https://api.pushover.net" and settings.concurrency == 2
    assert (settings.priority, settings.retry, settings.expire) == (1, 60.0, 3600.0)


def test_relay_check_and_config_show_never_show_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUSHOVER_TOKEN", TOKEN)
    monkeypatch.setenv("PUSHOVER_USER_KEY", USER)
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n"
        "  po: {type: pushover, token: '${PUSHOVER_TOKEN}', user_key: '${PUSHOVER_USER_KEY}',"
        " priority: 2}\n"
        "rules:\n"
        "  - {name: all, match: {status: [failure]}, notify: [po], update_on_recovery: true}\n"
    )
    outputs = check_and_show(config)
    shown = outputs["config"]
    assert "token: <secret>" in shown and "user_key: <secret>" in shown, shown
    assert "retry: 1m" in shown or "retry: 60" in shown, shown
    assert not any(TOKEN in t or USER in t for t in outputs.values()), outputs


# ----------------------------------------------------------------------------- end to end


def _config(pushover: FakePushover, rule: str, options: str = "") -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 2, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
channels:
  po: {{type: pushover, token: {TOKEN}, user_key: {USER}, api_url: "{pushover.url}"{options}}}
rules:
  - {rule}
"""


async def test_a_recovery_end_to_end_cancels_the_emergency(
    relay: RelayFactory, pushover: FakePushover
) -> None:
    rule = "{name: slow, match: {status: [EXECUTING]}, notify: [po], update_on_recovery: true}"
    r = await relay(_config(pushover, rule, ", priority: 2"))
    run = sdk_run("executing")
    assert (await r.post(run))[0] == 202
    await pushover.wait_for(1)
    assert (await r.post({**run, "status": "COMPLETED"}))[0] == 202
    await pushover.wait_for(3)
    alert, cancel, recovery = pushover.calls
    [receipt] = pushover.emergencies
    assert alert.json()["priority"] == 2 and pushover.emergencies[receipt] == "cancelled"
    assert cancel.path == f"/1/receipts/{receipt}/cancel.json"
    assert recovery.json()["title"].startswith("✅ Recovered · ")
    assert pushover.problems == [[], [], []]


async def test_dead_letters_logs_and_history_keep_the_keys_secret(
    relay: RelayFactory, pushover: FakePushover, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pushover.script(refused(400, [f"user {USER} with token {TOKEN} refused"], user="invalid"))
    rule = "{name: failures, match: {status: [failure]}, notify: [po]}"
    r = await relay(_config(pushover, rule))
    assert (await r.post({**sdk_run("failed"), "id": "run_dead"}))[0] == 202
    dead = await dead_letter(r)
    assert dead.reason == "auth_error" and dead.last_error is not None
    assert "user [secret] with token [secret] refused" in dead.last_error
    assert dead.attempts == 1  # permanent: the operator fixes the key, then replays
    for text in (dead.last_error, caplog.text):
        assert no_secret(text)


def test_relay_test_shows_the_message_as_pushover_gets_it(tmp_path: Path) -> None:
    (tmp_path / "templates" / "pushover").mkdir(parents=True)
    (tmp_path / "templates" / "pushover" / "mine.json.j2").write_text(
        '{"title": "{{ run.id }}", "message": "<blink>{{ "y" * 4000 }}</blink>", "priority": 2}\n'
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels:\n"
        f"  p: {{type: pushover, token: {TOKEN}, user_key: {USER}}}\n"
        "rules:\n  - {name: r, notify: [p], match: {status: [failure]}, template: mine}\n"
    )
    message, out = relay_test(tmp_path, config)
    body = json.loads(message["parts"]["json"])
    assert body["title"] == "run_1" and body["priority"] == 2 and len(body["message"]) == 1024
    assert "<blink>" not in body["message"] and no_secret(out)
    assert "message cut to Pushover's 1024 characters" in out


async def test_send_test_sends_the_sample_run(
    pushover: FakePushover, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUSHOVER_TOKEN", TOKEN)
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"channels:\n  po: {{type: pushover, token: '${{PUSHOVER_TOKEN}}', user_key: {USER},"
        f" api_url: '{pushover.url}'}}\n"
        "rules:\n  - {name: all, match: {status: [failure]}, notify: [po]}\n"
    )
    out = await send_test("po", config)
    assert pushover.problems == [[]] and pushover.messages[0]["title"].startswith("🔴 FAILED")
    assert no_secret(out)


# ----------------------------------------------------------------------------- the templates

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "pushover"


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_match_golden(template: str) -> None:
    """Each shipped template on its event (`RELAY_UPDATE_GOLDEN=1` rewrites them; review the
    diff), as Pushover would take it, sent unchanged."""
    part = render_golden("pushover", "json", template)
    shown = json.dumps(json.loads(part), indent=2, ensure_ascii=False) + "\n"
    assert_golden(GOLDEN / template / "default.json", shown)
    body, said_ = pushover_message(part, "-")
    assert pushover_problems(body) == [] and said_ == []
    assert body == {**json.loads(part), "html": 1}
    assert re.fullmatch(r"[^\n]{1,250}", body["title"])


def test_a_template_that_fails_sends_the_plain_fallback(tmp_path: Path) -> None:
    (tmp_path / "pushover").mkdir()
    (tmp_path / "pushover" / "run_failed.json.j2").write_text("{{ 1 // 0 }}")
    ctx = RenderContext(sdk("failed"), "r", "oncall", "pushover", "ntf_1", "https://x.test/")
    rendered = Renderer(tmp_path).render("pushover", "run_failed", ("json",), ctx)
    assert rendered.fallback
    body, _ = pushover_message(rendered.parts["json"], "-")
    assert pushover_problems(body) == [] and body["message"].startswith("🔴 FAILED · sync-")
