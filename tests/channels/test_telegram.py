"""The telegram channel against a fake Bot API on 127.0.0.1 (tests/fakes/telegram.py): the
request it sends, the answers it classifies (429 retry_after in the body, 5xx, 4xx, a group
upgraded to a supergroup), timeouts and refused connections, hostile and long run data through
every shipped template, recoveries (edit, else reply), its settings as `relay check` and
`relay config show` say them, and the bot token never said. The kill -9 and retry matrix is
tests/test_failure_matrix.py's; the secret scans tests/hardening/test_secrets.py's."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.channels import Channel, Outgoing, Recovery
from relay.channels._http import HttpClient
from relay.channels._telegram_html import MAX_TEXT, telegram_html
from relay.channels.telegram import telegram_message
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
from tests.conftest import RelayFactory, assert_golden, sdk_run
from tests.fakes.serving import free_port, serving
from tests.fakes.slack import Reply, check_classified, classified
from tests.fakes.telegram import (
    BOT_TOKEN,
    CHAT_ID,
    FakeTelegram,
    failure,
    html_problems,
    parse_html,
    utf16,
)

NASTY = '<b> & </a> &amp; <script>x</script> 🔥 "q" \'s\' <a href="javascript:x">'


def channel(http: HttpClient, api_url: str, timeout: float = 2.0, **options: Any) -> Channel:
    settings = {"type": "telegram", "bot_token": BOT_TOKEN, "chat_id": CHAT_ID, "api_url": api_url}
    return make_channel(http, settings | options, timeout)


def outgoing(text: str, recovers: Recovery | None = None, run_id: str = "run_1") -> Outgoing:
    return Outgoing("ntf_1", run_id, "r", {"html": text}, 1_700_000_000.0, recovers)


def render(template: str, run: dict[str, Any], link: str | None = None) -> str:
    return render_part("telegram", "html", template, run, link)


async def send_error(ch: Channel, text: str = "<b>hi</b>") -> DeliveryError:
    return await failure_of(ch, outgoing(text))


# ----------------------------------------------------------------------------- sending


async def test_the_request_is_the_bot_api_s_send_message(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    ch = channel(http, telegram.url, message_thread_id=7, disable_notification=True)
    receipt = await ch.send(outgoing(render("run_failed", sdk("failed"), "https://x.test/r")))
    [call] = telegram.calls
    assert call.path == f"/bot{BOT_TOKEN}/sendMessage"
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["webhook-id"] == "ntf_1"
    body = call.json()
    assert set(body) == {
        "chat_id", "text", "parse_mode", "link_preview_options", "message_thread_id",
        "disable_notification",
    }  # fmt: skip
    assert (body["chat_id"], body["parse_mode"], body["message_thread_id"]) == (CHAT_ID, "HTML", 7)
    assert body["link_preview_options"] == {"is_disabled": True}
    assert body["disable_notification"] is True
    assert body["text"].startswith("🔴 <b>FAILED</b> · <b>sync-customer-data</b>\n<b>Error</b>: ")
    assert '<a href="https://x.test/r">Open in Trigger.dev</a>' in body["text"]
    assert telegram.problems == [[]]
    assert receipt == f'{{"to":{CHAT_ID},"chat_id":{CHAT_ID},"message_id":101}}'
    # a plain chat: none of the optional keys
    await channel(http, telegram.url).send(outgoing("<b>x</b>"))
    assert set(telegram.calls[-1].json()) == {
        "chat_id",
        "text",
        "parse_mode",
        "link_preview_options",
    }


@pytest.mark.parametrize("chat_id", ["@oncall_alerts", f"{CHAT_ID}", f" {CHAT_ID} "])
async def test_a_chat_id_may_be_a_username_or_digits(
    telegram: FakeTelegram, http: HttpClient, chat_id: str
) -> None:
    telegram.chats.add("@oncall_alerts")
    await channel(http, telegram.url, chat_id=chat_id).send(outgoing("x"))
    assert telegram.calls[-1].json()["chat_id"] == chat_id.strip() if "@" in chat_id else CHAT_ID


# ----------------------------------------------------------------------------- failures

BAD_TOKEN = "7012345678:AAsomeOtherBotsToken_0123456789abcdefXY"


@classified(
    [
        (failure(429, "Too Many Requests: retry after 3", retry_after=3), "rate_limited", True,
         3.0, "Too Many Requests: retry after 3 (HTTP 429)"),
        (Reply(429, {"ok": False, "error_code": 429}, {"Retry-After": "2"}), "rate_limited", True,
         2.0, "HTTP 429"),
        (failure(500, "Internal Server Error"), "server_error", True, None,
         "Internal Server Error (HTTP 500)"),
        (Reply(502, "<html>502 Bad Gateway</html>"), "server_error", True, None, "HTTP 502"),
        (failure(401, "Unauthorized"), "auth_error", False, None, "Unauthorized (HTTP 401):"
         " bot_token was refused: revoked or mistyped (@BotFather → /token)"),
        (failure(404, "Not Found"), "auth_error", False, None,
         "Not Found (HTTP 404): no bot of that bot_token: mistyped? (@BotFather → /token)"),
        (failure(403, "Forbidden: bot was blocked by the user"), "auth_error", False, None,
         "Forbidden: bot was blocked by the user (HTTP 403): the user blocked the bot: unblock it"),
        (failure(400, "Bad Request: chat not found"), "client_error", False, None,
         "Bad Request: chat not found (HTTP 400): the bot is not in a chat of that chat_id: add"
         " it, or check the id (-100… for supergroups and channels)"),
        (failure(400, "Bad Request: group chat was upgraded to a supergroup chat",
                 migrate_to_chat_id=-1009999999999), "client_error", False, None,
         "Bad Request: group chat was upgraded to a supergroup chat (HTTP 400): the group is a"
         " supergroup now; set chat_id: -1009999999999"),
        (Reply(200, {"ok": False, "error_code": 400, "description": "Bad Request: x"}),
         "client_error", False, None, "Bad Request: x (HTTP 400)"),
        # an ok:false in a 2xx is classified by its error_code, a 400 when it has none
        (Reply(200, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                     "parameters": {"retry_after": 5}}), "rate_limited", True, 5.0,
         "Too Many Requests (HTTP 429)"),
        (Reply(200, {"ok": False, "description": "Bad Request: y"}), "client_error", False, None,
         "Bad Request: y (HTTP 400)"),
        (Reply(200, "<html>captive portal</html>"), "other", True, None,
         "Telegram answered without JSON"),
    ]
)  # fmt: skip
async def test_answers_are_classified(
    telegram: FakeTelegram,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    telegram.script(reply)
    check_classified(
        await send_error(channel(http, telegram.url)), reason, retryable, retry_after, detail
    )


async def test_the_fake_s_own_answers_are_classified(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    """Not scripted: what the fake answers as the Bot API does, the bot token in the path."""
    telegram.limit_next(4)
    limited = await send_error(channel(http, telegram.url))
    assert (limited.reason, limited.retry_after, limited.status) == ("rate_limited", 4.0, 429)
    telegram.migrated[-4001] = -1004001
    moved = await send_error(channel(http, telegram.url, chat_id=-4001))
    assert not moved.retryable and moved.detail.endswith("set chat_id: -1004001")
    telegram.blocked.add(CHAT_ID)
    kicked = await send_error(channel(http, telegram.url))
    assert (kicked.reason, kicked.retryable) == ("auth_error", False)
    assert "add the bot to the chat again" in kicked.detail
    wrong = await send_error(channel(http, telegram.url, bot_token=BAD_TOKEN))
    assert wrong.reason == "auth_error" and "Unauthorized" in wrong.detail
    topic = await send_error(channel(http, telegram.url, chat_id=CHAT_ID + 1))
    assert topic.detail.startswith("Bad Request: chat not found (HTTP 400)")
    for err in (limited, moved, kicked, wrong, topic):
        assert BOT_TOKEN not in said(err) and BAD_TOKEN not in said(err)


async def test_a_description_quoting_the_token_is_redacted(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    telegram.script(failure(400, f"Bad Request: no method at /bot{BOT_TOKEN}/sendMessage"))
    err = await send_error(channel(http, telegram.url))
    assert err.detail == "Bad Request: no method at /bot[token]/sendMessage (HTTP 400)"


async def test_timeouts_and_refused_connections_are_retried_and_say_no_token(
    telegram: FakeTelegram, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telegram.script(Reply(200, {"ok": True, "result": {}}, delay_s=5))
    timeout = await send_error(channel(http, telegram.url, timeout=0.3))
    assert (timeout.reason, timeout.retryable) == ("timeout", True)
    refused = await send_error(channel(http, f"http://127.0.0.1:{free_port()}"))
    assert (refused.reason, refused.retryable, refused.detail) == (
        "network", True, "connection refused",
    )  # fmt: skip
    secret = BOT_TOKEN.split(":")[1]
    for err in (timeout, refused):
        assert secret not in said(err), said(err)
        assert hides_its_cause(err)
    assert secret not in caplog.text


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("template", (*TEMPLATES, "digest"))
@pytest.mark.parametrize(("case", "run"), odd_inputs())
async def test_every_template_takes_any_run_data(
    template: str, case: str, run: dict[str, Any]
) -> None:
    """Hostile fields (tags, `</a>`, `&`, emoji, an error 40,000 characters long), empty and
    wrongly-typed ones: Telegram's parser takes the text the channel sends, within 4096."""
    body, _ = telegram_message(render_odd("telegram", "html", template, run), "-")
    assert html_problems(body) == [], body["text"][:300]


async def test_hostile_run_data_reaches_telegram_as_text(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    run = sdk(
        "failed",
        taskIdentifier=NASTY,
        error={"name": "</a>", "message": NASTY + "\n" + "y" * 50_000, "stack": NASTY},
        tags=[NASTY],
    )
    ch = channel(http, telegram.url)
    await ch.send(outgoing(render("run_failed", run, "https://x.test/?a=1&b=2")))
    assert telegram.problems == [[]]
    [shown] = telegram.shown()
    assert shown.startswith(f"🔴 FAILED · {NASTY}\n</a>: {NASTY}\n")  # as text, not markup
    assert utf16(shown) <= MAX_TEXT
    assert telegram.calls[0].json()["text"].count('<a href="https://x.test/?a=1&amp;b=2">') == 1


async def test_a_text_too_long_is_cut_outside_tags_and_entities(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    long = "<b>" + "&amp;😀" * 3000 + "</b><pre>tail</pre>"
    await channel(http, telegram.url).send(outgoing(long))
    assert telegram.problems == [[]]
    sent = telegram.calls[0].json()["text"]
    assert sent.endswith("…</b>") and "<pre>" not in sent
    [shown] = telegram.shown()
    assert utf16(shown) <= MAX_TEXT and utf16(shown) >= MAX_TEXT - 2


@pytest.mark.parametrize("end", ["&", "<b", "&&"])
async def test_a_text_whose_end_the_parser_holds_back_is_cut_too(
    telegram: FakeTelegram, http: HttpClient, end: str
) -> None:
    """html.parser keeps a trailing `&` (an entity?) or `<b` (a tag?) until it is closed: the
    limit counts it all the same, so the text is cut, not refused as too long."""
    await channel(http, telegram.url).send(outgoing("a" * MAX_TEXT + end))
    assert telegram.problems == [[]]
    [shown] = telegram.shown()
    assert shown.endswith("…") and utf16(shown) <= MAX_TEXT


async def test_a_template_that_shows_nothing_sends_relay_s_line(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    await channel(http, telegram.url).send(outgoing("  <b></b>\n", run_id="run_<x>"))
    assert telegram.shown() == ["relay: rule r matched run run_<x>"]


@given(st.text(alphabet=st.sampled_from(list("<>&/;\"'= #abiprecodg-x😀\n")), max_size=300))
def test_any_text_becomes_html_telegram_parses(text: str) -> None:
    out, _ = telegram_html(text, limit=200)
    shown, problems = parse_html(out)
    assert problems == [] and utf16(shown) <= 200


# ----------------------------------------------------------------------------- recoveries


async def test_a_recovery_edits_the_alert_else_replies_to_it(
    telegram: FakeTelegram, http: HttpClient
) -> None:
    ch = channel(http, telegram.url)
    receipt = await ch.send(outgoing("🔴 <b>FAILED</b>"))
    assert await ch.send(outgoing("✅ <b>Recovered</b>", Recovery("ntf_1", receipt))) is None
    assert telegram.calls[-1].path.endswith("/editMessageText")
    assert telegram.calls[-1].json() == {
        "chat_id": CHAT_ID,
        "message_id": 101,
        "text": "✅ <b>Recovered</b>",
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
    }
    assert telegram.shown() == ["✅ Recovered"]
    # again (an answer lost): "message is not modified" is done, nothing more is sent
    assert await ch.send(outgoing("✅ <b>Recovered</b>", Recovery("ntf_1", receipt))) is None
    assert len(telegram.calls) == 3 and telegram.shown() == ["✅ Recovered"]
    # one Telegram will not edit any more: a reply to it
    second = await ch.send(outgoing("🔴 again"))
    telegram.frozen.add(102)
    reply = await ch.send(outgoing("✅ later", Recovery("ntf_2", second)))
    assert reply is not None and telegram.calls[-1].path.endswith("/sendMessage")
    assert telegram.calls[-1].json()["reply_parameters"] == {
        "message_id": 102,
        "allow_sending_without_reply": True,
    }
    assert telegram.shown() == ["✅ Recovered", "🔴 again", "✅ later"]
    # no receipt (the alert's send failed long ago): a message of its own
    await ch.send(outgoing("✅ alone", Recovery("ntf_3", None)))
    assert "reply_parameters" not in telegram.calls[-1].json()
    # the chat changed since the alert: its message id means nothing here, no reply
    other = channel(http, telegram.url, chat_id="@elsewhere")
    telegram.chats.add("@elsewhere")
    await other.send(outgoing("✅ moved", Recovery("ntf_4", second)))
    assert "reply_parameters" not in telegram.calls[-1].json()


_FAILURES = "{name: failures, match: {status: [failure]}, notify: [tg]}"


def _config(telegram: FakeTelegram, attempts: int, rule: str = _FAILURES) -> str:
    """A config of one telegram channel (the fake's) and one rule, quick to retry."""
    return f"""\
defaults:
  retry: {{max_attempts: {attempts}, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
channels:
  tg: {{type: telegram, bot_token: "{BOT_TOKEN}", chat_id: {CHAT_ID}, api_url: "{telegram.url}"}}
rules:
  - {rule}
"""


async def test_a_recovery_end_to_end_edits_the_alert(
    relay: RelayFactory, telegram: FakeTelegram, tmp_path: Path
) -> None:
    r = await relay(
        _config(
            telegram,
            3,
            "{name: slow, match: {status: [EXECUTING]}, notify: [tg], update_on_recovery: true}",
        )
    )
    run = sdk_run("executing")
    assert (await r.post(run))[0] == 202
    await telegram.wait_for(1)
    assert (await r.post({**run, "status": "COMPLETED"}))[0] == 202
    edit = (await telegram.wait_for(2))[1]
    assert edit.path.endswith("/editMessageText") and edit.json()["message_id"] == 101
    for _ in range(100):
        if len(telegram.shown()) == 1 and telegram.shown()[0].startswith("✅ Recovered"):
            break
        await asyncio.sleep(0.05)
    assert telegram.shown()[0].startswith("✅ Recovered"), telegram.shown()
    assert telegram.problems == [[], []]


# ----------------------------------------------------------------------------- settings


def problems(options: str) -> list[tuple[str, str]]:
    return settings_problems(f"tg: {{type: telegram, {options}}}")


TOKEN_OPTION = f'bot_token: "{BOT_TOKEN}"'


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        (f"chat_id: {CHAT_ID}", "bot_token", "required key is missing"),
        (TOKEN_OPTION, "chat_id", "required key is missing"),
        (f"{TOKEN_OPTION}, chat_id: oncall", "chat_id", "chat_id must be a chat's numeric id"),
        (f"{TOKEN_OPTION}, chat_id: '@x'", "chat_id", "chat_id must be a chat's numeric id"),
        (f"{TOKEN_OPTION}, chat_id: 12ab", "chat_id", "chat_id must be a chat's numeric id"),
        (f"{TOKEN_OPTION}, chat_id: true", "chat_id", "chat_id must be a chat's numeric id"),
        (f"{TOKEN_OPTION}, chat_id: 0", "chat_id", "chat_id must be a chat's numeric id"),
        (f"bot_token: 'AAsekrit{'x' * 30}', chat_id: 1", "bot_token", "bot_token must be the token"),
        ("bot_token: '', chat_id: 1", "bot_token", "bot_token must be the token"),
        (f"{TOKEN_OPTION}, chat_id: 1, api_url: 'http://api.telegram.org'", "api_url", "api_url must"),
        (f"{TOKEN_OPTION}, chat_id: 1, api_url: 'https://api.telegram.org/bot1:AAsekrit'",
         "api_url", "api_url is the Bot API server's base"),
        (f"{TOKEN_OPTION}, chat_id: 1, message_thread_id: 0", "message_thread_id", ""),
    ],
)  # fmt: skip
def test_settings_are_checked_without_quoting_the_token(
    options: str, key: str, message: str
) -> None:
    [(where, problem)] = problems(options)
    assert where == key and problem.startswith(message), (where, problem)
    assert "sekrit" not in problem and BOT_TOKEN not in problem


def test_relay_check_and_config_show_never_show_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", str(CHAT_ID))
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n"
        "  tg: {type: telegram, bot_token: '${TELEGRAM_BOT_TOKEN}', chat_id: '${TELEGRAM_CHAT_ID}'}\n"
        "rules:\n"
        "  - {name: all, match: {status: [failure]}, notify: [tg], update_on_recovery: true}\n"
    )
    outputs = check_and_show(config)
    assert "bot_token: <secret>" in outputs["config"], outputs["config"]
    assert f"chat_id: {CHAT_ID}" in outputs["config"]
    secret = BOT_TOKEN.split(":")[1]
    assert not any(secret in text for text in outputs.values()), outputs


async def test_dead_letters_logs_and_history_keep_the_token_secret(
    relay: RelayFactory, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telegram.script(failure(400, f"Bad Request: can't parse entities in /bot{BOT_TOKEN}"))
    r = await relay(_config(telegram, 2))
    assert (await r.post({**sdk_run("failed"), "id": "run_dead"}))[0] == 202
    dead = await dead_letter(r)
    assert dead.reason == "client_error" and dead.last_error is not None
    assert "[token]" in dead.last_error
    secret = BOT_TOKEN.split(":")[1]
    assert secret not in dead.last_error and secret not in caplog.text
    assert f"/bot{BOT_TOKEN}/sendMessage" == telegram.calls[0].path  # it was in use


async def test_a_self_hosted_bot_api_server_is_a_base_url(http: HttpClient) -> None:
    """`api_url` names the server (a local Bot API server, or a proxy path before /bot)."""
    from aiohttp import web  # noqa: PLC0415

    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"ok": True, "result": {"message_id": 5, "chat": {"id": 1}}})

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as url:
        receipt = await channel(http, url + "/tg/").send(outgoing("x"))
    assert seen == [f"/tg/bot{BOT_TOKEN}/sendMessage"]
    assert receipt == f'{{"to":{CHAT_ID},"chat_id":1,"message_id":5}}'


async def test_end_to_end_waits_out_the_retry_after_of_the_body(
    relay: RelayFactory, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram says when to come back in the 429's body only (no Retry-After header): the
    retry waits that long, where the backoff alone (100-200 ms here) would come back sooner."""
    telegram.limit_next(1)
    r = await relay(_config(telegram, 5))
    assert (await r.post({**sdk_run("failed"), "id": "run_a"}))[0] == 202
    first, second = await telegram.wait_for(2)
    assert second.at - first.at >= 1.0
    assert first.raw == second.raw and len(telegram.shown()) == 1
    [held] = [r for r in caplog.records if r.getMessage().startswith("channel held")]
    assert held.__dict__["hold_s"] == 1.0  # the channel's other sends wait it out too


def test_relay_test_shows_the_text_as_telegram_gets_it(tmp_path: Path) -> None:
    """`relay test` shows the html part as the channel sends it: tags Telegram does not know
    dropped, run data escaped, cut within 4096 characters, and says it was cut."""
    (tmp_path / "templates" / "telegram").mkdir(parents=True)
    (tmp_path / "templates" / "telegram" / "mine.html.j2").write_text(
        "<p><b>{{ run.id }}</b> <x-tag>{{ '<i>' }}</x-tag>{{ 'y' * 5000 }}</p>\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels:\n"
        f"  t: {{type: telegram, bot_token: '{BOT_TOKEN}', chat_id: {CHAT_ID}}}\n"
        "rules:\n  - {name: r, notify: [t], match: {status: [failure]}, template: mine}\n"
    )
    message, out = relay_test(tmp_path, config)
    text = message["parts"]["html"]
    assert text.startswith("<b>run_1</b> &lt;i&gt;yyy") and text.endswith("y…")
    assert html_problems({"text": text, "parse_mode": "HTML"}) == []
    assert "cut to Telegram's 4096 characters" in out


# ----------------------------------------------------------------------------- the templates

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "telegram"


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_match_golden(template: str) -> None:
    """Each shipped template on its event (`RELAY_UPDATE_GOLDEN=1` rewrites them; review the
    diff), as Telegram would show it: its parser takes the text, and the channel sends it
    unchanged."""
    text = render_golden("telegram", "html", template)
    assert_golden(GOLDEN / template / "default.html", text)
    body, said_ = telegram_message(text, "-")
    assert html_problems(body) == [] and said_ == []
    assert body["text"] == telegram_html(text)[0]
    assert parse_html(body["text"])[0] == parse_html(text)[0]


def test_a_template_that_fails_sends_the_plain_fallback(tmp_path: Path) -> None:
    (tmp_path / "telegram").mkdir()
    (tmp_path / "telegram" / "run_failed.html.j2").write_text("<b>{{ 1 // 0 }}</b>")
    renderer = Renderer(tmp_path)
    ctx = RenderContext(sdk("failed"), "r", "oncall", "telegram", "ntf_1", "https://x.test/?a&b")
    rendered = renderer.render("telegram", "run_failed", ("html",), ctx)
    assert rendered.fallback
    body, _ = telegram_message(rendered.parts["html"], "-")
    assert html_problems(body) == [] and body["text"].startswith("<pre>🔴 FAILED · sync-")


async def test_send_test_sends_the_sample_run(
    telegram: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", BOT_TOKEN)
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n"
        "  tg: {type: telegram, bot_token: '${TELEGRAM_BOT_TOKEN}',"
        f" chat_id: {CHAT_ID}, api_url: '{telegram.url}'}}\n"
        "rules:\n  - {name: all, match: {status: [failure]}, notify: [tg]}\n"
    )
    out = await send_test("tg", config)
    assert telegram.problems == [[]] and telegram.shown()[0].startswith("🔴 FAILED")
    assert BOT_TOKEN.split(":")[1] not in out


@pytest.mark.parametrize(
    "text",
    [
        "a" * MAX_TEXT + "<b>b</b>",  # the limit filled exactly, then more text: no room left
        "a" * (MAX_TEXT - 1) + "😀",  # an emoji is 2 units: cut before it, not through it
        "😀" * (MAX_TEXT // 2 + 1),
        "x" * 1000 + "<pre>" + "&amp;" * 5000 + "</pre>",
    ],
)
def test_a_cut_text_is_within_4096_units_with_its_ellipsis(text: str) -> None:
    out, cut = telegram_html(text)
    shown, problems = parse_html(out)
    assert cut and problems == [] and shown.endswith("…")
    assert MAX_TEXT - 2 <= utf16(shown) <= MAX_TEXT, utf16(shown)
    exact = "b" * MAX_TEXT
    assert telegram_html(exact) == (exact, False)  # within the limit: whole
