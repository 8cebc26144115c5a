"""The googlechat channel against a fake Chat webhook on 127.0.0.1 (tests/fakes/googlechat.py):
the request it sends (the URL's query kept, the run's thread), the answers it classifies (429,
5xx, 400/403/404 with what to fix), timeouts and refused connections, hostile and huge run data
through every shipped template, the 32,000-byte cut, recoveries in the alert's thread, its
settings as `relay check` and `relay config show` say them, and the webhook's key and token
never said. The kill -9 and retry matrix is tests/test_failure_matrix.py's; the secret scans
tests/hardening/test_secrets.py's."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.channels import Channel, Outgoing, Recovery
from relay.channels._http import HttpClient
from relay.channels.googlechat import (
    MAX_BODY_BYTES,
    chat_message,
    cut_html,
    thread_key,
)
from relay.errors import DeliveryError
from relay.model import Run
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
from tests.fakes.googlechat import (
    KEY,
    REPLY,
    SPACE,
    TOKEN,
    FakeChat,
    chat_problems,
    error,
    invalid,
    webhook_path,
)
from tests.fakes.serving import free_port
from tests.fakes.slack import Reply, check_classified, classified

NASTY = "<b>x</b> & *bold* _it_ ~s~ `code` <https://evil.test|click> <users/all> 🔥 &amp;"
SECRET_TOKEN = TOKEN.removesuffix("%3D")
LQ, RQ = "\u2039", "\u203a"  # what the text line shows for < and >
# every `<` of a card text opens or closes a tag of Chat's subset
_CARD_TAG = re.compile(r"</?(?:b|i|u|s|font|a|br)(?:\s[^<>]*)?>")


def channel(http: HttpClient, url: str, timeout: float = 2.0) -> Channel:
    return make_channel(http, {"type": "googlechat", "webhook_url": url}, timeout)


def outgoing(
    json_part: str,
    recovers: Recovery | None = None,
    run_id: str = "run_1",
    group_key: str | None = None,
    subject: str | None = None,
    ident: str = "ntf_1",
) -> Outgoing:
    return Outgoing(
        ident, run_id, "r", {"json": json_part}, 1_700_000_000.0, recovers, group_key, subject
    )


def render(template: str, run: dict[str, Any], link: str | None = None, **extra: Any) -> str:
    return render_part("googlechat", "json", template, run, link, **extra)


async def send_error(ch: Channel, part: str = '{"text": "hi"}') -> DeliveryError:
    return await failure_of(ch, outgoing(part))


def card_texts(body: dict[str, Any]) -> list[str]:
    """Every card text Chat formats as HTML (textParagraph, decoratedText)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("textParagraph", "decoratedText") and isinstance(value, dict):
                    found.append(value.get("text", ""))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body.get("cardsV2"))
    return found


def assert_well_formed(text: str) -> None:
    """A card text: no `<` but a tag of Chat's subset, no `&` but an entity, tags balanced."""
    bare = _CARD_TAG.sub("", text)
    assert "<" not in bare and ">" not in bare, text[:300]
    assert not re.search(r"&(?!(?:amp|lt|gt|quot|#[0-9]+);)", bare), text[:300]
    for tag in ("b", "i", "u", "s", "font", "a"):
        opened = len(re.findall(rf"<{tag}[\s>]", text))
        assert opened == text.count(f"</{tag}>"), (tag, text[:300])


# ----------------------------------------------------------------------------- sending


async def test_the_request_is_a_chat_message_in_the_run_s_thread(
    googlechat: FakeChat, http: HttpClient
) -> None:
    ch = channel(http, googlechat.webhook_url)
    receipt = await ch.send(outgoing(render("run_failed", sdk("failed"), "https://x.test/r")))
    [call] = googlechat.calls
    assert call.path == webhook_path()
    # the URL's query as given (key, token: %3D kept), and the reply option
    assert call.query == {
        "key": KEY,
        "token": TOKEN.replace("%3D", "="),
        "requestId": "ntf_1",
        "messageReplyOption": REPLY,
    }
    assert call.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert call.headers["webhook-id"] == "ntf_1"
    body = call.json()
    assert set(body) == {"text", "cardsV2", "thread"}
    assert body["thread"] == {"threadKey": thread_key("run_1")}
    assert body["text"].startswith("🔴 FAILED · sync-customer-data: Error: Stripe API")
    [card] = body["cardsV2"]
    assert card["card"]["header"]["title"] == "🔴 FAILED · sync-customer-data"
    [button] = card["card"]["sections"][-1]["widgets"][0]["buttonList"]["buttons"]
    assert button == {
        "text": "Open in Trigger.dev",
        "onClick": {"openLink": {"url": "https://x.test/r"}},
    }
    assert googlechat.problems == [[]]
    assert receipt is not None
    assert json.loads(receipt) == {
        "name": f"spaces/{SPACE}/messages/m0001.m0001",
        "thread": googlechat.thread_of(0),
    }
    assert thread_key("run_1") == thread_key("run_1") != thread_key("run_2")
    assert re.fullmatch(r"relay-[0-9a-f]{32}", thread_key("run_<x>&*"))


async def test_a_run_s_messages_share_a_thread_digests_and_error_groups_start_their_own(
    googlechat: FakeChat, http: HttpClient
) -> None:
    ch = channel(http, googlechat.webhook_url)
    await ch.send(outgoing('{"text": "first"}', ident="ntf_1"))
    await ch.send(outgoing('{"text": "another rule, same run"}', ident="ntf_2"))
    await ch.send(outgoing('{"text": "digest"}', run_id="", group_key="grp_1", ident="dgs_1"))
    await ch.send(outgoing('{"text": "digest again"}', run_id="", group_key="grp_1", ident="dgs_2"))
    await ch.send(
        outgoing('{"text": "error group"}', run_id="evt_1", subject="errgrp_x:env", ident="ntf_3")
    )
    threads = [thread for thread, _ in googlechat.messages]
    assert threads[0] == threads[1] and len(set(threads)) == 4
    for call in googlechat.calls[2:]:  # a thread of its own: no key, no reply option
        assert "thread" not in call.json() and "messageReplyOption" not in call.query


async def test_a_send_repeated_after_its_answer_was_lost_posts_nothing_twice(
    googlechat: FakeChat, http: HttpClient
) -> None:
    """The notification's id is the request's (requestId): tried again after a timeout or a
    kill -9 cut its answer off, Chat answers with the message that id created, and the space
    shows it once. Another notification of the same run is another message."""
    ch = channel(http, googlechat.webhook_url)
    first = await ch.send(outgoing('{"text": "🔴 FAILED"}', ident="ntf_a"))
    again = await ch.send(outgoing('{"text": "🔴 FAILED"}', ident="ntf_a"))
    other = await ch.send(outgoing('{"text": "🔴 CRASHED"}', ident="ntf_b"))
    assert [call.query["requestId"] for call in googlechat.calls] == ["ntf_a", "ntf_a", "ntf_b"]
    assert [body["text"] for _, body in googlechat.messages] == ["🔴 FAILED", "🔴 CRASHED"]
    assert first == again != other


async def test_a_recovery_replies_in_the_alert_s_thread(
    googlechat: FakeChat, http: HttpClient
) -> None:
    ch = channel(http, googlechat.webhook_url)
    receipt = await ch.send(outgoing('{"text": "🔴 FAILED"}', run_id="run_a"))
    alert_thread = googlechat.thread_of(0)
    recovered = Recovery("ntf_1", receipt)
    await ch.send(outgoing('{"text": "✅ Recovered"}', recovered, run_id="run_a", ident="ntf_r1"))
    assert googlechat.calls[-1].json()["thread"] == {"name": alert_thread}
    assert googlechat.calls[-1].query["messageReplyOption"] == REPLY
    # no receipt (the alert's answer was lost, or retention forgot it): the run's key
    unknown = Recovery("ntf_1", None)
    await ch.send(outgoing('{"text": "✅ again"}', unknown, run_id="run_a", ident="ntf_r2"))
    assert googlechat.calls[-1].json()["thread"] == {"threadKey": thread_key("run_a")}
    # a receipt naming no thread Chat knows (the thread deleted): Chat starts a new one
    gone = json.dumps({"thread": f"spaces/{SPACE}/threads/gone"})
    await ch.send(
        outgoing('{"text": "✅ late"}', Recovery("ntf_1", gone), run_id="run_a", ident="ntf_r3")
    )
    threads = [thread for thread, _ in googlechat.messages]
    assert threads[:3] == [alert_thread] * 3 and threads[3] != alert_thread
    assert googlechat.problems == [[]] * 4


# ----------------------------------------------------------------------------- failures


@classified(
    [
        (error(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"),
         "rate_limited", True, None,
         "RESOURCE_EXHAUSTED: Resource has been exhausted (e.g. check quota). (HTTP 429)"),
        (Reply(429, "", {"Retry-After": "3"}), "rate_limited", True, 3.0, "HTTP 429"),
        (error(500, "Internal error encountered.", "INTERNAL"), "server_error", True, None,
         "INTERNAL: Internal error encountered. (HTTP 500)"),
        (error(503, "The service is currently unavailable.", "UNAVAILABLE"), "server_error",
         True, None, "UNAVAILABLE: The service is currently unavailable. (HTTP 503)"),
        (Reply(502, "<html>502 Bad Gateway</html>"), "server_error", True, None, "HTTP 502"),
        (error(404, "Requested entity was not found.", "NOT_FOUND"), "auth_error", False, None,
         "NOT_FOUND: Requested entity was not found. (HTTP 404): no such webhook or space"
         " (deleted?): add a webhook to the space and set webhook_url"),
        (error(403, "The API is called without a valid token.", "PERMISSION_DENIED"),
         "auth_error", False, None, "PERMISSION_DENIED: The API is called without a valid"
         " token. (HTTP 403): the webhook may not post (its key or token revoked, or webhooks"
         " turned off for the space): copy the space's webhook URL again"),
        (invalid("Invalid JSON payload received. Unknown name \"foo\" at 'message.cards_v2[0]"
                 ".card': Cannot find field."), "client_error", False, None,
         "INVALID_ARGUMENT: Invalid JSON payload received. Unknown name \"foo\" at"
         " 'message.cards_v2[0].card': Cannot find field. (HTTP 400): Chat refused the message"
         " (a custom template's card?)"),
        (error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT",
               details=[{"reason": "API_KEY_INVALID"}]), "auth_error", False, None,
         "INVALID_ARGUMENT: API key not valid. Please pass a valid API key. (HTTP 400): the"
         " webhook URL's key was refused: copy the URL again"),
    ]
)  # fmt: skip
async def test_answers_are_classified(
    googlechat: FakeChat,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    googlechat.script(reply)
    err = await send_error(channel(http, googlechat.webhook_url))
    check_classified(err, reason, retryable, retry_after, detail)


async def test_the_fake_s_own_answers_are_classified_without_the_secrets(
    googlechat: FakeChat, http: HttpClient
) -> None:
    """Not scripted: what the fake answers as Chat does, for each part of the URL wrong."""
    googlechat.limit_next("2")
    limited = await send_error(channel(http, googlechat.webhook_url))
    assert (limited.reason, limited.retry_after, limited.status) == ("rate_limited", 2.0, 429)
    gone = await send_error(channel(http, googlechat.webhook_url.replace(SPACE, "AAAAgone")))
    assert (gone.reason, gone.retryable, gone.status) == ("auth_error", False, 404)
    token = await send_error(channel(http, googlechat.webhook_url.replace(TOKEN, "wrong-token")))
    assert (token.reason, token.status) == ("auth_error", 403)
    key = await send_error(channel(http, googlechat.webhook_url.replace(KEY, "AIzaSyWrongKey1")))
    assert (key.reason, key.status) == ("auth_error", 400) and "key was refused" in key.detail
    for err in (limited, gone, token, key):
        assert SECRET_TOKEN not in said(err) and KEY not in said(err), said(err)


async def test_an_answer_quoting_the_url_is_redacted(
    googlechat: FakeChat, http: HttpClient
) -> None:
    url = googlechat.webhook_url
    googlechat.script(invalid(f"bad request to {url} (token {TOKEN.replace('%3D', '=')})"))
    err = await send_error(channel(http, url))
    assert SECRET_TOKEN not in said(err) and KEY not in said(err), err.detail
    assert "[secret]" in err.detail


async def test_timeouts_and_refused_connections_are_retried_and_say_no_secret(
    googlechat: FakeChat, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    googlechat.script(Reply(200, {"name": "x"}, delay_s=5))
    timeout = await send_error(channel(http, googlechat.webhook_url, timeout=0.3))
    assert (timeout.reason, timeout.retryable) == ("timeout", True)
    refused_url = f"http://127.0.0.1:{free_port()}{webhook_path()}?key={KEY}&token={TOKEN}"
    refused = await send_error(channel(http, refused_url))
    assert (refused.reason, refused.retryable, refused.detail) == (
        "network", True, "connection refused",
    )  # fmt: skip
    for err in (timeout, refused):
        assert SECRET_TOKEN not in said(err) and KEY not in said(err), said(err)
        assert hides_its_cause(err)
    assert SECRET_TOKEN not in caplog.text and KEY not in caplog.text


# ----------------------------------------------------------------------------- content


@pytest.mark.parametrize("template", (*TEMPLATES, "digest"))
@pytest.mark.parametrize(("case", "run"), odd_inputs())
def test_every_template_takes_any_run_data(template: str, case: str, run: dict[str, Any]) -> None:
    """Hostile fields (markup of every kind, `&`, emoji, an error 40,000 characters long), empty
    and wrongly-typed ones: Chat takes the message, every card text well-formed, the text line
    without a link or a mention."""
    body, _ = chat_message(render_odd("googlechat", "json", template, run), "-")
    assert chat_problems(body) == [], str(body)[:300]
    assert "<" not in body["text"] and ">" not in body["text"]
    for text in card_texts(body):
        assert_well_formed(text)


async def test_hostile_run_data_can_neither_format_link_nor_mention(
    googlechat: FakeChat, http: HttpClient
) -> None:
    run = sdk(
        "failed",
        taskIdentifier=NASTY,
        error={"name": "</b>", "message": NASTY, "stack": NASTY},
        tags=[NASTY],
    )
    await channel(http, googlechat.webhook_url).send(
        outgoing(render("run_failed", run, "https://x.test/?a=1&b=2"))
    )
    assert googlechat.problems == [[]]
    [(_, body)] = googlechat.messages
    # the text line: no <url|label> link, no <users/all>; markup characters in monospace
    text = body["text"].replace(LQ, "[").replace(RQ, "]")
    assert "<" not in body["text"] and "[users/all]" in text
    assert text.startswith("🔴 FAILED · `[b]x[/b] & *bold* _it_ ~s~ 'code' [https://evil")
    # card texts: run data escaped, the template's own tags only
    paragraph = body["cardsV2"][0]["card"]["sections"][0]["widgets"][0]["textParagraph"]["text"]
    assert paragraph.startswith("<b>&lt;/b&gt;</b>: &lt;b&gt;x&lt;/b&gt; &amp; *bold*")
    assert "&lt;https://evil.test|click&gt; &lt;users/all&gt; 🔥 &amp;amp;" in paragraph
    for text in card_texts(body):
        assert_well_formed(text)
    # the header is plain text: shown as it is
    assert body["cardsV2"][0]["card"]["header"]["title"].startswith("🔴 FAILED · <b>x</b> &")


async def test_a_huge_error_is_cut_within_32000_bytes(
    googlechat: FakeChat, http: HttpClient
) -> None:
    stack = "\n".join(f"    at frame{i} (file:///src/{'d' * 200}.ts:{i}:1)" for i in range(2000))
    run = Run.model_validate(
        {
            **sdk_run("failed"),
            "error": {"name": "E&<", "message": "&<😀>" * 20_000, "stack": stack},
            "tags": ["t&<" * 300],
        }
    ).as_dict()
    part = render("run_failed", run, "https://x.test/r")
    body, said_ = chat_message(part, "-")
    assert said_ == [] and len(orjson.dumps(body)) <= MAX_BODY_BYTES  # the templates cut first
    # a template that cuts nothing: the channel cuts the card until the body fits
    huge = {
        "text": "🔴 " + "x" * 10_000,
        "cardsV2": [
            {
                "cardId": "c",
                "card": {
                    "header": {"title": "t"},
                    "sections": [
                        {
                            "widgets": [
                                {"textParagraph": {"text": "<b>" + "&amp;😀<" * 9_000 + "</b>"}}
                            ]
                        },
                        {
                            "widgets": [{"decoratedText": {"topLabel": "L", "text": "y" * 9_000}}]
                            * 5
                        },
                    ],
                },
            }
        ],
    }
    await channel(http, googlechat.webhook_url).send(outgoing(json.dumps(huge)))
    assert googlechat.problems == [[]]
    sent = googlechat.calls[-1].raw
    assert MAX_BODY_BYTES - 2_000 < len(sent) <= MAX_BODY_BYTES, len(sent)
    body = googlechat.calls[-1].json()
    assert len(body["text"]) == 4096 and body["text"].endswith("…")
    for text in card_texts(body):
        assert_well_formed(text.replace("&amp;😀<", "&amp;😀&lt;"))
    first = card_texts(body)[0]
    assert first.startswith("<b>&amp;😀") and first.endswith("…</b>")


_PIECES = [
    "<b>",
    "</b>",
    "&amp;",
    "&lt;",
    "<br>",
    '<font color="#5f6368">',
    "</font>",
    "a",
    "😀",
    " ",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=60), st.integers(1, 120))
def test_a_cut_never_breaks_a_tag_or_an_entity(pieces: list[str], limit: int) -> None:
    """cut_html of card HTML (tags, entities, text): within the limit with its "…" (the tags
    it closes after), no tag or entity cut through."""
    text = "".join(pieces)
    out = cut_html(text, limit)
    if len(text) <= limit:
        assert out == text
        return
    kept, _, closing = out.partition("…")
    assert len(kept) < limit and re.fullmatch(r"(?:</(?:b|font)>)*", closing), out
    assert text.startswith(kept)
    bare = _CARD_TAG.sub("", kept)
    assert "<" not in bare and ">" not in bare and not re.search(r"&(?!amp;|lt;)", bare), out


async def test_a_template_that_shows_nothing_sends_relay_s_line(
    googlechat: FakeChat, http: HttpClient
) -> None:
    await channel(http, googlechat.webhook_url).send(outgoing('{"text": "  ", "cardsV2": []}'))
    assert googlechat.calls[-1].json()["text"] == "relay: rule r matched run run_1"
    # a button that opens no web page is dropped, with what it empties
    part = {"cardsV2": [{"cardId": "c", "card": {"sections": [
        {"widgets": [{"buttonList": {"buttons": [{"text": "x", "onClick": {"openLink": {"url": "javascript:x"}}}]}}]},
        {"widgets": [{"textParagraph": {"text": "kept"}}]},
    ]}}]}  # fmt: skip
    await channel(http, googlechat.webhook_url).send(outgoing(json.dumps(part)))
    sections = googlechat.calls[-1].json()["cardsV2"][0]["card"]["sections"]
    assert sections == [{"widgets": [{"textParagraph": {"text": "kept"}}]}]
    assert googlechat.problems == [[], []]


# ----------------------------------------------------------------------------- settings


def problems(options: str) -> list[tuple[str, str]]:
    return settings_problems(f"gc: {{type: googlechat{options}}}")


GOOD = f"https://chat.googleapis.com/v1/spaces/{SPACE}/messages?key={KEY}&token={TOKEN}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("", "required key is missing"),
        (f", webhook_url: '{GOOD.replace('https', 'http')}'", "webhook_url must be an https://"),
        (f", webhook_url: '{GOOD.replace('/messages', '/threads')}'", "webhook_url must be a Google Chat"),
        (f", webhook_url: '{GOOD.replace(f'&token={TOKEN}', '')}'", "webhook_url must be a Google Chat"),
        (f", webhook_url: '{GOOD.replace(f'key={KEY}&', '')}'", "webhook_url must be a Google Chat"),
        (f", webhook_url: '{GOOD}&threadKey=alerts'", "webhook_url: leave out threadKey"),
    ],
)  # fmt: skip
def test_a_missing_or_malformed_webhook_url_is_refused_without_quoting_it(
    options: str, message: str
) -> None:
    [(where, problem)] = problems(options)
    assert where == "webhook_url" and problem.startswith(message), (where, problem)
    assert SECRET_TOKEN not in problem and KEY not in problem


def test_relay_check_and_config_show_never_show_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_CHAT_WEBHOOK", GOOD)
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n"
        "  gc: {type: googlechat, webhook_url: '${GOOGLE_CHAT_WEBHOOK}'}\n"
        "rules:\n"
        "  - {name: all, match: {status: [failure]}, notify: [gc], update_on_recovery: true}\n"
    )
    outputs = check_and_show(config)
    assert "webhook_url: <secret>" in outputs["config"], outputs["config"]
    assert "per_second: 1" in outputs["config"]  # the space's quota, by default
    assert not any(SECRET_TOKEN in t or KEY in t or SPACE in t for t in outputs.values()), outputs


# ----------------------------------------------------------------------------- end to end

_FAILURES = "{name: failures, match: {status: [failure]}, notify: [gc]}"


def _config(googlechat: FakeChat, attempts: int, rule: str = _FAILURES) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: {attempts}, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
channels:
  gc: {{type: googlechat, webhook_url: "{googlechat.webhook_url}"}}
rules:
  - {rule}
"""


async def test_a_recovery_end_to_end_lands_in_the_alert_s_thread(
    relay: RelayFactory, googlechat: FakeChat
) -> None:
    rule = "{name: slow, match: {status: [EXECUTING]}, notify: [gc], update_on_recovery: true}"
    r = await relay(_config(googlechat, 3, rule))
    run = sdk_run("executing")
    assert (await r.post(run))[0] == 202
    await googlechat.wait_for(1)
    assert (await r.post({**run, "status": "COMPLETED"}))[0] == 202
    await googlechat.wait_for(2)
    (alert_thread, alert), (reply_thread, recovery) = googlechat.messages
    assert reply_thread == alert_thread and googlechat.problems == [[], []]
    assert recovery["thread"] == {"name": alert_thread}  # from the alert's receipt
    assert recovery["text"].startswith("✅ Recovered · ")
    assert alert["thread"] == {"threadKey": thread_key(run["id"])}


async def test_dead_letters_logs_and_history_keep_the_url_secret(
    relay: RelayFactory, googlechat: FakeChat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    googlechat.script(invalid(f"Invalid card in request to {googlechat.webhook_url}"))
    r = await relay(_config(googlechat, 2))
    assert (await r.post({**sdk_run("failed"), "id": "run_dead"}))[0] == 202
    dead = await dead_letter(r)
    assert dead.reason == "client_error" and dead.last_error is not None
    assert "Invalid card in request to [secret]" in dead.last_error
    for text in (dead.last_error, caplog.text):
        assert SECRET_TOKEN not in text and KEY not in text


def test_relay_test_shows_the_message_as_chat_gets_it(tmp_path: Path) -> None:
    """`relay test` shows the json part as the channel sends it (cut to 32,000 bytes) and says
    it was cut."""
    (tmp_path / "templates" / "googlechat").mkdir(parents=True)
    (tmp_path / "templates" / "googlechat" / "mine.json.j2").write_text(
        '{"text": "{{ run.id }}", "cardsV2": [{"cardId": "c", "card": {"sections": [{"widgets":'
        ' [{"textParagraph": {"text": "{{ "y" * 40000 }}"}}]}]}}]}\n'
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels:\n"
        f"  g: {{type: googlechat, webhook_url: '{GOOD}'}}\n"
        "rules:\n  - {name: r, notify: [g], match: {status: [failure]}, template: mine}\n"
    )
    message, out = relay_test(tmp_path, config)
    body = json.loads(message["parts"]["json"])
    assert body["text"] == "run_1" and len(orjson.dumps(body)) <= MAX_BODY_BYTES
    assert "card cut to Chat's 32,000 bytes" in out


# ----------------------------------------------------------------------------- the templates

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "googlechat"


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_match_golden(template: str) -> None:
    """Each shipped template on its event (`RELAY_UPDATE_GOLDEN=1` rewrites them; review the
    diff), as Chat would take it, sent unchanged."""
    part = render_golden("googlechat", "json", template)
    shown = json.dumps(json.loads(part), indent=2, ensure_ascii=False) + "\n"
    assert_golden(GOLDEN / template / "default.json", shown)
    body, said_ = chat_message(part, "-")
    assert chat_problems(body) == [] and said_ == []
    assert body == json.loads(part)


def test_a_template_that_fails_sends_the_plain_fallback(tmp_path: Path) -> None:
    (tmp_path / "googlechat").mkdir()
    (tmp_path / "googlechat" / "run_failed.json.j2").write_text("{{ 1 // 0 }}")
    ctx = RenderContext(sdk("failed"), "r", "oncall", "googlechat", "ntf_1", "https://x.test/")
    rendered = Renderer(tmp_path).render("googlechat", "run_failed", ("json",), ctx)
    assert rendered.fallback
    body, _ = chat_message(rendered.parts["json"], "-")
    assert chat_problems(body) == [] and body["text"].startswith("🔴 FAILED · sync-")


async def test_send_test_sends_the_sample_run(
    googlechat: FakeChat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_CHAT_WEBHOOK", googlechat.webhook_url)
    config = tmp_path / "relay.yaml"
    config.write_text(
        "channels:\n  gc: {type: googlechat, webhook_url: '${GOOGLE_CHAT_WEBHOOK}'}\n"
        "rules:\n  - {name: all, match: {status: [failure]}, notify: [gc]}\n"
    )
    out = await send_test("gc", config)
    assert googlechat.problems == [[]] and googlechat.messages[0][1]["text"].startswith("🔴 FAILED")
    assert SECRET_TOKEN not in out and KEY not in out
    query = dict(parse_qsl(urlsplit(googlechat.webhook_url).query))
    assert googlechat.calls[0].query["key"] == query["key"]
