"""`googlechat`: a card message in a Google Chat space through an incoming webhook.

The webhook URL a space gives (space → Apps & integrations → Webhooks) is
`https://chat.googleapis.com/v1/spaces/<space>/messages?key=<key>&token=<token>`: its key and
token are the secret, so the whole URL is one (never said, `<secret>` in the settings shown).
The channel POSTs to it, the query kept as given, the JSON of a Message:

    {"text": "<one line: what a notification shows>",
     "cardsV2": [{"cardId", "card": {"header": {"title", "subtitle"},
                                     "sections": [{"widgets": [textParagraph | decoratedText |
                                                               buttonList, ...]}]}}],
     "thread": {"threadKey": "relay-<hex>"}}

The template (`googlechat/<name>.json.j2`) renders {"text", "cardsV2"}; the channel keeps only
those two keys, drops every button whose openLink is not an http(s) URL (and what that empties),
and keeps the UTF-8 body within Chat's 32,000 bytes (MAX_BODY_BYTES, less room for the thread):
it cuts the longest card texts first (never inside an HTML tag or entity, tags still open
closed after "…"), then drops trailing widgets and sections, and as a last resort sends the
text alone. A body with nothing to show (the template fallback) is sent as its `text`.

Chat's text formatting differs by where a value goes, and the shipped templates escape each for
its place (googlechat/_macros.j2): the `text` line takes Chat's markup (`*bold*`, `_italic_`,
`~strike~`, backticks, `<url|label>` links, `<users/all>` mentions), so run data there has `<`
and `>` replaced by single angle quotation marks (no link, no mention) and, when it holds a
markup character, goes in monospace; card texts take a small HTML subset, so run data there is
HTML-escaped; a card's header is plain text.

Threads: the messages about one run (its alert, another rule's alert about it, its recovery)
go into one thread: `thread.threadKey` is "relay-" and the first 32 hex digits of the SHA-256 of
the run id (stable across restarts and replicas, whatever characters the id has), with
`messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` in the query (the `threadKey` query
parameter is deprecated): the first message starts the thread, the next ones reply to it. A
digest or an error-group alert is news of its own and starts a thread of its own: Chat notifies
members of a reply only in a thread they follow, so a new failure replying to a weeks-old
thread would page nobody. Chat answers 200 with the Message (`name`, `thread.name`); the
receipt {"name", "thread"} is kept with the notification, and a recovery (a rule with
`update_on_recovery`) replies in the alert's thread by its name (`thread.name`), else by the
run's key. A webhook cannot edit a message: the recovery is a reply, the alert stays as it was.

Each request names its notification as `requestId` (the `ntf_…`/`dgs_…` id, the same on every
try): Chat creates one message per request id and answers a repeat with the message that id
created, so a send tried again after its answer was lost (a timeout, a `kill -9`) posts nothing
twice.

Chat takes about one message a second in a space (its per-space write quota, 60 a minute):
the default `rate_limit` keeps a busy rule under it.

Failure classification; Chat's error `status` and `message` go in `detail`, the webhook's key
and token redacted:

    rate_limited  retryable, Retry-After  HTTP 429 RESOURCE_EXHAUSTED (the space's quota)
    server_error  retryable, Retry-After  HTTP 5xx (INTERNAL, UNAVAILABLE), 408
    auth_error    permanent               HTTP 401, 403 PERMISSION_DENIED (key or token refused,
                                          webhooks turned off), 404 NOT_FOUND (the webhook or
                                          its space was deleted)
    client_error  permanent               other 4xx: 400 INVALID_ARGUMENT (a card Chat refused:
                                          its message names what)
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from pydantic import SecretStr, field_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    Outgoing,
    json_headers,
    parsed_part,
    says_nothing_when,
    sent_and_told,
)
from relay.channels._http_answers import (
    HttpResponse,
    classify_status,
    https_or_local,
    json_object,
    quoted,
)
from relay.config import ChannelSettings, RateLimit
from relay.errors import DeliveryError
from relay.filters import http_url, truncate_chars

MAX_BODY_BYTES = 32_000  # Chat's limit of a message, text and cards together
_THREAD_ROOM = 200  # bytes kept free for the `thread` a send adds
MAX_TEXT = 4096  # the text line (a notification shows it)
_MIN_TEXT = 64  # card texts are not cut below this while longer ones exist
REPLY = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
_PATH = re.compile(r"/v1/spaces/[A-Za-z0-9_-]+/messages")
_NAME = re.compile(r"spaces/[A-Za-z0-9_-]+/(?:messages|threads)/[A-Za-z0-9_.-]+")
_STATUS = re.compile(r"[A-Z][A-Z_]{1,39}")
_CARD_TEXTS = frozenset({"text", "title", "subtitle", "topLabel", "bottomLabel"})
# card text tags Chat formats, closed after a cut that leaves them open
_CLOSED = frozenset({"b", "i", "u", "s", "strike", "font", "a"})
_TOKEN = re.compile(r"<(/?)([a-zA-Z]+)[^<>]*>|&#?[A-Za-z0-9]{1,10};|[^<&]+|[<&]")
_HINTS = {
    401: "the webhook's key or token was refused: copy the space's webhook URL again",
    403: "the webhook may not post (its key or token revoked, or webhooks turned off for the"
    " space): copy the space's webhook URL again",
    404: "no such webhook or space (deleted?): add a webhook to the space and set webhook_url",
    400: "Chat refused the message (a custom template's card?)",
}


class GoogleChatSettings(ChannelSettings):
    webhook_url: SecretStr
    # Chat's per-space write quota is 1 a second (60 a minute before), webhooks' writes
    # limited besides: a storm is spread under it instead of earning 429s
    rate_limit: RateLimit | None = RateLimit(per_second=1, burst=1)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        https_or_local(text, "webhook_url")
        parts = urlsplit(text)
        query = dict(parse_qsl(parts.query))
        if not _PATH.fullmatch(parts.path) or not query.get("key") or not query.get("token"):
            raise ValueError(
                "webhook_url must be a Google Chat webhook URL: https://chat.googleapis.com/v1/"
                "spaces/<space>/messages?key=…&token=… (space → Apps & integrations → Webhooks)"
            )
        if {"threadKey", "messageReplyOption", "requestId"} & query.keys():
            raise ValueError(
                "webhook_url: leave out threadKey, messageReplyOption and requestId: relay"
                " threads the messages about a run itself, and names each request"
            )
        return value


def thread_key(run_id: str) -> str:
    """The threadKey of the messages about run `run_id`."""
    return "relay-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def cut_html(text: str, limit: int) -> str:
    """The start of a card text (Chat's HTML subset) within `limit` characters with "…":
    never cut inside a tag or an entity; the tags left open are closed after it."""
    if len(text) <= limit:
        return text
    out: list[str] = []
    open_tags: list[str] = []
    used, room = 0, max(limit - 1, 0)
    for found in _TOKEN.finditer(text):
        token, closing, tag = found.group(), found.group(1), (found.group(2) or "").lower()
        if used + len(token) > room:  # tags and entities count as written
            if not tag and not (token.startswith("&") and len(token) > 1):
                out.append(token[: room - used])
            break
        used += len(token)
        out.append(token)
        if tag and closing and tag in open_tags:
            while open_tags.pop() != tag:
                pass
        elif tag and not closing and tag in _CLOSED:
            open_tags.append(tag)
    return "".join(out) + "…" + "".join(f"</{tag}>" for tag in reversed(open_tags))


def _safe_buttons(node: Any) -> Any:
    """The node without buttons whose openLink is not an http(s) URL (or that open nothing a
    webhook can: an action needs a Chat app), and without what that leaves empty."""
    if isinstance(node, list):
        kept = [_safe_buttons(item) for item in node if not _bad_button(item)]
        return [k for k in kept if not _emptied(k)]
    if isinstance(node, dict):
        return {k: _safe_buttons(v) for k, v in node.items()}
    return node


def _bad_button(node: Any) -> bool:
    if not isinstance(node, dict) or "onClick" not in node:
        return False
    click = node.get("onClick")
    link = click.get("openLink") if isinstance(click, dict) else None
    return not isinstance(link, dict) or http_url(link.get("url")) is None


def _emptied(node: Any) -> bool:
    """A widget or section nothing is left in: a buttonList without buttons, a section
    without widgets."""
    if not isinstance(node, dict):
        return False
    buttons = node.get("buttonList")
    if isinstance(buttons, dict) and not buttons.get("buttons"):
        return True
    return "widgets" in node and not node["widgets"]


def _texts(node: Any, out: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    """(container, key) of every text a card shows."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _CARD_TEXTS and isinstance(value, str):
                out.append((node, key))
            else:
                _texts(value, out)
    elif isinstance(node, list):
        for item in node:
            _texts(item, out)
    return out


def _size(body: Any) -> int:
    return len(orjson.dumps(body))


def _fit(body: dict[str, Any], limit: int) -> bool:
    """Cut `body`'s cards until it is at most `limit` bytes; whether anything was cut."""
    cut = False
    for _ in range(512):
        excess = _size(body) - limit
        if excess <= 0:
            return cut
        cut = True
        cards = body.get("cardsV2") or []
        slots = _texts(cards, [])
        if slots:
            container, key = max(slots, key=lambda slot: len(slot[0][slot[1]]))
            text = container[key]
            if len(text) > _MIN_TEXT:
                container[key] = cut_html(text, max(_MIN_TEXT, len(text) - excess - 16))
                continue
        if not _drop_last(cards):
            break
    body.pop("cardsV2", None)  # the text alone, within its own limit
    return True


def _drop_last(cards: list[dict[str, Any]]) -> bool:
    """Drop the last widget of the last card's last section (an emptied section, card with
    it); False when nothing is left to drop."""
    while cards:
        sections = cards[-1]["card"].get("sections") or []
        while sections:
            widgets = sections[-1].get("widgets") or []
            if len(widgets) > 1:
                widgets.pop()
                return True
            sections.pop()
            if sections:
                return True
        cards.pop()
        if cards:
            return True
    return False


def _cards(value: Any) -> list[dict[str, Any]]:
    """The cards of a rendered body: {"cardId", "card"} items whose card shows something."""
    if not isinstance(value, list):
        return []
    kept = []
    for i, item in enumerate(value):
        card = item.get("card") if isinstance(item, dict) else None
        if not isinstance(card, dict):
            continue
        sections = card.get("sections")
        card["sections"] = [
            s for s in (sections if isinstance(sections, list) else []) if isinstance(s, dict)
        ]
        if card["sections"] or isinstance(card.get("header"), dict):
            card_id = item.get("cardId")
            kept.append(
                {"cardId": card_id if isinstance(card_id, str) else f"relay-{i}", "card": card}
            )
    return kept


def chat_message(rendered: str, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """The rendered part as a Chat message (text and cards), within Chat's limits, and what
    was changed, in words."""
    return chat_message_of(parsed_part(rendered, "text"), default_text)


def chat_message_of(value: Any, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """chat_message, of the rendered part already parsed."""
    if not isinstance(value, dict):
        value = {"text": str(value)}
    message: dict[str, Any] = {}
    text = value.get("text")
    if isinstance(text, str) and text.strip():
        message["text"] = truncate_chars(text, MAX_TEXT)
    if cards := _safe_buttons(_cards(value.get("cardsV2"))):
        message["cardsV2"] = cards
    if not message:  # nothing to show (the template fallback's text is taken above)
        message["text"] = truncate_chars(default_text, MAX_TEXT)
    cut = _fit(message, MAX_BODY_BYTES - _THREAD_ROOM)
    if "text" not in message and "cardsV2" not in message:
        message["text"] = truncate_chars(default_text, MAX_TEXT)
    return message, ([f"card cut to Chat's {MAX_BODY_BYTES:,} bytes"] if cut else [])


# the message sent for one, but for its thread: the send's and `relay test`'s
as_sent = sent_and_told(chat_message)


def _words(error: dict[str, Any], secrets: tuple[str, ...]) -> str:
    """Chat's `status: message` of an error, its secrets redacted, on one line."""
    status, text = error.get("status"), error.get("message")
    status = status if isinstance(status, str) and _STATUS.fullmatch(status) else ""
    text = quoted(text, secrets, 300) if isinstance(text, str) else ""
    return ": ".join(w for w in (status, text) if w)


def _reasons(error: Any) -> list[str]:
    """The `reason` of each ErrorInfo in an error's `details` (Google's API errors)."""
    details = error.get("details") if isinstance(error, dict) else None
    return [
        d["reason"]
        for d in (details if isinstance(details, list) else [])
        if isinstance(d, dict) and isinstance(d.get("reason"), str)
    ]


def classify(response: HttpResponse, secrets: tuple[str, ...] = ()) -> DeliveryError:
    """The DeliveryError for a non-2xx answer of Chat; never quotes the webhook's key or
    token (`secrets`)."""
    status, base = response.status, classify_status(response)
    assert base is not None
    data = json_object(response.body) or {}
    error = data.get("error")
    words = _words(error, secrets) if isinstance(error, dict) else ""
    detail = f"{words} (HTTP {status})" if words else base.detail
    reason, hint = base.reason, _HINTS.get(status)
    if status == 404:  # the webhook or its space was deleted: as a revoked secret
        reason = "auth_error"
    elif "API_KEY_INVALID" in _reasons(error):  # a 400 of the URL's key, not of the message
        reason, hint = "auth_error", "the webhook URL's key was refused: copy the URL again"
    if hint is not None:
        detail += f": {hint}"
    return DeliveryError(
        reason, retryable=base.retryable, detail=detail, retry_after=base.retry_after, status=status
    )


def posted_at(receipt: str | None) -> str | None:
    """The thread name (spaces/…/threads/…) of a sent message's receipt; None if none."""
    value = json_object(receipt)
    thread = value.get("thread") if value is not None else None
    return thread if isinstance(thread, str) and _NAME.fullmatch(thread) else None


def receipt_of(response: HttpResponse) -> str | None:
    """{"name", "thread"} of the Message Chat answered with; None if it named none."""
    data = json_object(response.body) or {}
    name, thread = data.get("name"), data.get("thread")
    thread = thread.get("name") if isinstance(thread, dict) else None
    kept = {
        key: value
        for key, value in (("name", name), ("thread", thread))
        if isinstance(value, str) and _NAME.fullmatch(value)
    }
    return orjson.dumps(kept).decode() if kept else None


class GoogleChatChannel(HttpChannel[GoogleChatSettings]):
    settings_model = GoogleChatSettings

    def _thread(self, message: Outgoing) -> dict[str, str] | None:
        """The thread of `message`: the alert's (a recovery), the run's, or none (a digest, an
        error group: a thread of its own)."""
        thread = posted_at(message.recovers.receipt) if message.recovers is not None else None
        if thread is not None:
            return {"name": thread}
        if message.group_key is None and message.subject is None and message.run_id:
            return {"threadKey": thread_key(message.run_id)}
        return None

    def _url(self, message: Outgoing, threaded: bool) -> str:
        """The webhook URL, its query as given, plus the notification's id as the request's
        (one message per id) and the reply option of a threaded message."""
        parts = urlsplit(self.settings.webhook_url.get_secret_value())
        query = parse_qsl(parts.query, keep_blank_values=True)
        query.append(("requestId", message.notification_id))
        if threaded:
            query.append(("messageReplyOption", REPLY))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _secrets(self) -> tuple[str, ...]:
        """What an answer must not quote: the URL, its key and token as written in it and
        decoded (a token ends in %3D, `=`)."""
        url = self.settings.webhook_url.get_secret_value()
        raw = [pair.partition("=")[2] for pair in urlsplit(url).query.split("&")]
        decoded = [value for _, value in parse_qsl(urlsplit(url).query)]
        return tuple(sorted((v for v in {url, *raw, *decoded} if len(v) >= 8), key=len)[::-1])

    async def send(self, message: Outgoing) -> str | None:
        body, _ = as_sent(message)
        thread = self._thread(message)
        if thread is not None:
            body["thread"] = thread
        headers = json_headers(message, "application/json; charset=UTF-8")
        url = self._url(message, thread is not None)
        response = await self._http.request(
            "POST", url, orjson.dumps(body), headers, self._timeout_s
        )
        if not 200 <= response.status < 300:
            raise classify(response, self._secrets())
        return receipt_of(response)


KIND = ChannelKind(
    "googlechat",
    GoogleChatSettings,
    GoogleChatChannel,
    ("json",),
    says_nothing_when(chat_message_of),
    as_sent,
)
