"""`discord`: a message with embeds through a Discord webhook, POST {webhook_url}?wait=true.

The URL's path is pinned to API v10 (`/api/webhooks/…` → `/api/v10/webhooks/…`): the URL Discord
hands out has no version, which Discord serves as its default API v6, where a 429 counts
`retry_after` and Retry-After in milliseconds (discord-api-docs #2360, #4722); from v8 on they
are seconds, as read here.

The template (`discord/<name>.json.j2`) renders {"content", "embeds": [...]}; the channel keeps
only those two keys (plus `username` / `avatar_url` / `thread_id` / `thread_name` from the
settings), always sets
`allowed_mentions: {"parse": []}` so no run data can ping @everyone, a role or a user, and clamps
every length Discord checks, so no template can earn a 400 for length:

    content 2000 · 10 embeds · title 256 · description 4096 · 25 fields, name 256, value 1024 ·
    footer 2048 · author name 256 · 6000 characters over all embeds of the message

A forum channel's webhook takes no message outside a post (400, code 220001): `thread_name`, a
pattern filled with `{title}` (the message's first embed title, else its text), `{rule}` and
`{run_id}`, starts a post of that name (at most 100 characters) for each message.

Non-http(s) URLs, bad colours or timestamps, empty fields and embeds are dropped; a body with
nothing left (the template fallback) is sent as `content`. With `wait=true` Discord answers only
once the message is stored, so a refused message is a classified error, never a silent loss.

Failure classification; Discord's JSON error code goes in `detail`, never the URL or token:

    rate_limited  retryable, retry_after   HTTP 429: `retry_after` (seconds) of the JSON body, else
                                           the Retry-After or X-RateLimit-Reset-After header
    server_error  retryable, Retry-After   HTTP 5xx, 408
    auth_error    permanent                HTTP 401 (50027 invalid webhook token), 403, 404 (10015
                                           unknown webhook: it was deleted)
    client_error  permanent                other 4xx: 400 (50035 invalid form body, 50006 empty
                                           message, 50109 invalid JSON), 404 of a thread, 413
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    Outgoing,
    json_headers,
    parsed_part,
    says_nothing_when,
    sent_as,
)
from relay.channels._http_answers import HttpResponse, classify_status, https_or_local, json_object
from relay.config import ChannelSettings, RateLimit, placeholders
from relay.errors import DeliveryError
from relay.filters import http_url, truncate_chars
from relay.retry_after import body_retry_after, parse_retry_after

MAX_CONTENT, MAX_EMBEDS, MAX_FIELDS, MAX_EMBED_CHARS = 2000, 10, 25, 6000
_TEXT_LIMITS = {"title": 256, "description": 4096, "name": 256, "value": 1024, "footer": 2048}
_API_PATH = re.compile(r"^/api(?:/v[0-9]+)?/webhooks/")
# what Discord executes as a webhook taking this body: not a channel link (/channels/…), nor
# the Slack- or GitHub-compatible endpoints (…/slack, …/github), which take other bodies
_WEBHOOK_PATH = re.compile(r"/api(?:/v[0-9]+)?/webhooks/[0-9]+/[A-Za-z0-9_-]+/?")
_CODES = {
    0: "general_error", 10003: "unknown_channel", 10015: "unknown_webhook", 40005: "too_large",
    50006: "empty_message", 50027: "invalid_webhook_token", 50035: "invalid_form_body",
    50109: "invalid_json", 220001: "forum_needs_thread_name",
}  # fmt: skip
MAX_THREAD_NAME = 100  # a thread's (forum post's) name, as every channel's: 1-100 characters
THREAD_NAME_FIELDS = ("title", "rule", "run_id")
_UNESCAPE = re.compile(r"\\([\\*_~`|<>\[\]#])")  # a name shows no markdown: `sync\_data` as is


class DiscordSettings(ChannelSettings):
    webhook_url: SecretStr
    username: str | None = Field(default=None, min_length=1, max_length=80)
    avatar_url: str | None = None
    thread_id: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    thread_name: str | None = Field(default=None, min_length=1)  # a forum channel's new post
    # a webhook may post 5 requests per 2 s and a channel about 30 messages a minute
    rate_limit: RateLimit | None = RateLimit(per_minute=30, burst=5)

    @field_validator("webhook_url", "avatar_url")
    @classmethod
    def _urls(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            https_or_local(text, str(info.field_name))
        if info.field_name == "webhook_url" and not _WEBHOOK_PATH.fullmatch(urlsplit(text).path):
            raise ValueError(
                "webhook_url must be a Discord webhook URL: https://discord.com/api/webhooks/<id>/"
                "<token> (channel settings → Integrations → Webhooks → Copy Webhook URL)"
            )
        return value

    @field_validator("thread_name")
    @classmethod
    def _thread_name(cls, value: str | None) -> str | None:
        return None if value is None else placeholders(value, THREAD_NAME_FIELDS)

    @model_validator(mode="after")
    def _one_thread(self) -> DiscordSettings:
        """Discord takes a thread to post into or a post to start, not both."""
        query = parse_qsl(urlsplit(self.webhook_url.get_secret_value()).query)
        if self.thread_name is not None and (self.thread_id or dict(query).get("thread_id")):
            raise ValueError(
                "thread_name starts a forum post, thread_id (here or in webhook_url) posts"
                " into one: give one of them"
            )
        return self

    @field_validator("username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and ("discord" in value.lower() or "clyde" in value.lower()):
            raise ValueError("Discord refuses usernames containing 'discord' or 'clyde'")
        return value


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters; a closing ``` fence survives the cut."""
    if len(text) <= limit:
        return text
    if limit > 8 and text.rstrip().endswith("```"):
        return truncate_chars(text, limit - 3) + "```"
    return truncate_chars(text, limit)


class _Budget:
    """The characters left of the 6000 all embeds of a message share."""

    def __init__(self) -> None:
        self.left = MAX_EMBED_CHARS

    def take(self, value: Any, limit: int) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return None
        cut = _clip(value, min(limit, self.left))
        if not cut.strip():
            return None
        self.left -= len(cut)
        return cut


def _http_url(value: Any) -> str | None:
    url = http_url(value)
    return url if url is not None and len(url) < 2048 and " " not in url else None


def _timestamp(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return None
    return value


def _fields(raw: Any, budget: _Budget) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for field in raw if isinstance(raw, list) else []:
        if len(fields) == MAX_FIELDS or not isinstance(field, dict):
            continue
        name = budget.take(field.get("name"), _TEXT_LIMITS["name"])
        value = budget.take(field.get("value"), _TEXT_LIMITS["value"]) if name else None
        if name and value:
            fields.append({"name": name, "value": value, "inline": field.get("inline") is True})
    return fields


def _texts(raw: dict[str, Any], budget: _Budget) -> dict[str, Any]:
    """The texts of an embed, in Discord's order, cut to their limits and the shared budget."""
    out: dict[str, Any] = {}
    if title := budget.take(raw.get("title"), _TEXT_LIMITS["title"]):
        out["title"] = title
    author = raw.get("author")
    if isinstance(author, dict) and (name := budget.take(author.get("name"), 256)):
        out["author"] = {"name": name} | ({"url": u} if (u := _http_url(author.get("url"))) else {})
    if text := budget.take(raw.get("description"), _TEXT_LIMITS["description"]):
        out["description"] = text
    if fields := _fields(raw.get("fields"), budget):
        out["fields"] = fields
    footer = raw.get("footer")
    if isinstance(footer, dict) and (text := budget.take(footer.get("text"), 2048)):
        out["footer"] = {"text": text}
    return out


def _clamp_embed(raw: Any, budget: _Budget) -> dict[str, Any] | None:
    """One embed within Discord's limits, or None when nothing visible is left of it."""
    if not isinstance(raw, dict):
        return None
    out = _texts(raw, budget)
    for key in ("image", "thumbnail"):
        media = raw.get(key)
        if isinstance(media, dict) and (url := _http_url(media.get("url"))):
            out[key] = {"url": url}
    if not out:
        return None
    if url := _http_url(raw.get("url")):
        out["url"] = url
    color = raw.get("color")
    if isinstance(color, int) and not isinstance(color, bool) and 0 <= color <= 0xFFFFFF:
        out["color"] = color
    if timestamp := _timestamp(raw.get("timestamp")):
        out["timestamp"] = timestamp
    return out


def discord_message(rendered: str, default_text: str) -> dict[str, Any]:
    """The rendered part as a Discord message: known keys only, every length within limits."""
    return discord_message_of(parsed_part(rendered, "content"), default_text)


def discord_message_of(value: Any, default_text: str) -> dict[str, Any]:
    """discord_message, of the rendered part already parsed."""
    if isinstance(value, list):
        value = {"embeds": value}
    if not isinstance(value, dict):
        value = {"content": str(value)}
    message: dict[str, Any] = {}
    content = value.get("content")
    if isinstance(content, str) and content.strip():
        message["content"] = _clip(content, MAX_CONTENT)
    budget, embeds = _Budget(), value.get("embeds")
    kept = [_clamp_embed(e, budget) for e in (embeds if isinstance(embeds, list) else [])]
    if embeds := [e for e in kept if e is not None][:MAX_EMBEDS]:
        message["embeds"] = embeds
    if not message:  # e.g. the template fallback {"text": ...}
        text = value.get("text")
        text = text if isinstance(text, str) and text.strip() else default_text
        message["content"] = _clip(text, MAX_CONTENT)
    message["allowed_mentions"] = {"parse": []}
    return message


def _form_errors(node: Any, path: str = "") -> list[str]:
    """`path: message` of each error of a 50035 body's `errors` tree, as Discord nests them:
    {"embeds": {"0": {"description": {"_errors": [{"code", "message"}]}}}}."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if key == "_errors" and isinstance(value, list):
            found += [
                f"{path or 'body'}: {e['message']}"
                for e in value
                if isinstance(e, dict) and isinstance(e.get("message"), str)
            ]
        elif len(found) < 3:
            found += _form_errors(value, f"{path}.{key}" if path else str(key))
    return found


def classify(response: HttpResponse, token: str = "") -> DeliveryError:
    """The DeliveryError for a non-2xx answer of Discord; never quotes the webhook token."""
    status, base = response.status, classify_status(response)
    assert base is not None
    data = json_object(response.body) or {}
    code = data.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    detail = f"HTTP {status}"
    if code is not None:
        detail = f"{_CODES.get(code, 'error')} ({code}, HTTP {status})"
    # which field Discord refused (a custom template, a setting such as username or thread_id)
    if errors := "; ".join(truncate_chars(e, 160) for e in _form_errors(data.get("errors"))[:3]):
        detail += ": " + (errors.replace(token, "[token]") if token else errors)
    reason, retryable, retry_after = base.reason, base.retryable, base.retry_after
    if status == 429:
        retry_after = body_retry_after(data.get("retry_after"))
        for header in ("Retry-After", "X-RateLimit-Reset-After"):
            if retry_after is None:
                retry_after = parse_retry_after(response.headers.get(header))
        detail = f"rate limited ({'global, ' if data.get('global') is True else ''}HTTP 429)"
    elif status == 404 and code in (None, 10015):  # the webhook was deleted: a revoked secret
        reason = "auth_error"
    return DeliveryError(
        reason, retryable=retryable, detail=detail, retry_after=retry_after, status=status
    )


def thread_name(pattern: str, body: dict[str, Any], message: Outgoing) -> str:
    """The forum post's name: `pattern` filled, on one line, within Discord's 100 characters;
    never empty (Discord refuses an empty name)."""
    embeds = body.get("embeds") or [{}]
    title = _UNESCAPE.sub(r"\1", embeds[0].get("title") or body.get("content") or "")
    name = pattern.format(title=title, rule=message.rule, run_id=message.run_id)
    name = " ".join(name.split())
    return truncate_chars(name or f"relay: {message.rule}", MAX_THREAD_NAME)


class DiscordChannel(HttpChannel[DiscordSettings]):
    settings_model = DiscordSettings

    def _url(self) -> str:
        parts = urlsplit(self.settings.webhook_url.get_secret_value())
        parts = parts._replace(path=_API_PATH.sub("/api/v10/webhooks/", parts.path, count=1))
        pairs = parse_qsl(parts.query)
        # the thread of the settings, else the one the URL names (`…?thread_id=`: how a thread
        # or forum post is often given); a thread_id in the URL is never dropped
        thread = self.settings.thread_id or next((v for k, v in pairs if k == "thread_id"), None)
        query = [(k, v) for k, v in pairs if k not in ("wait", "thread_id")]
        query.append(("wait", "true"))
        if thread:
            query.append(("thread_id", thread))
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def send(self, message: Outgoing) -> None:
        body, _ = AS_SENT(message)
        body |= {k: v for k in ("username", "avatar_url") if (v := getattr(self.settings, k))}
        if self.settings.thread_name is not None:
            body["thread_name"] = thread_name(self.settings.thread_name, body, message)
        headers = json_headers(message)
        data = orjson.dumps(body)
        response = await self._http.request("POST", self._url(), data, headers, self._timeout_s)
        if not 200 <= response.status < 300:
            token = urlsplit(self.settings.webhook_url.get_secret_value()).path.rstrip("/")
            raise classify(response, token.rsplit("/", 1)[-1])


AS_SENT = sent_as(discord_message)  # the send's message, and `relay test`'s
KIND = ChannelKind(
    "discord",
    DiscordSettings,
    DiscordChannel,
    ("json",),
    says_nothing_when(discord_message_of),
    AS_SENT,
)
