"""A fake Slack on 127.0.0.1 that speaks Slack's protocol, for tests of the slack channel.

- POST /services/<T>/<B>/<secret>: an incoming webhook. 200 "ok"; a wrong secret is 404
  `no_service`; an unparsable body 400 `invalid_payload`; blocks that fail Block Kit validation
  400 `invalid_blocks`; nothing to show 400 `no_text`.
- POST /api/chat.postMessage: the Web API. Always HTTP 200 with {"ok": ...} except scripted
  429s: no bearer token → `not_authed`, a wrong one → `invalid_auth`, bad JSON → `invalid_json`,
  no channel → `channel_not_found`, invalid blocks → `invalid_blocks`, else {"ok": true,
  "channel": "C123", "ts": "1712345678.000100", "message": {...}} with increasing ts. Every
  message posted is kept in `messages` (by ts), in channel C123 whatever name it was posted to.
- POST /api/chat.update: the same auth and JSON checks; `channel` must be the channel's id (a
  `#name` is `channel_not_found`, as in Slack), no `ts` is `invalid_arguments`, a ts never posted
  `message_not_found`, invalid blocks `invalid_blocks` (an empty list clears the blocks), no
  text and no blocks `no_text`; else the kept message takes the new text, blocks and attachments
  and the answer is {"ok": true, "channel", "ts", "text", "message"}.

`post_delay_s` makes every chat.postMessage answer that late (a Slack under load: two senders'
posts overlap). `script` queues answers (plain-text or JSON bodies with real status codes and headers) that
take precedence over the checks, one per request, in order; a Reply with `delay_s` answers that
late (a hung Slack, for timeouts). Every request is recorded.
Block Kit validation uses slack_sdk's models (`block_kit_problems`, also used by tests).
`classified` and `check_classified` are the tables of scripted answers and of what a channel
must make of each, for the tests of every fake's channel.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.basic_objects import JsonObject
from slack_sdk.models.blocks import Block

from relay.errors import DeliveryError
from tests.fakes.serving import serving, until

WEBHOOK_PATH = "/services/T0001/B0002/fakeWebhookSecret0123456789"
TOKEN = "xoxb-1111-2222-fakeBotTokenSecret"
FIRST_TS = "1712345678.000100"
CHANNEL_ID = "C123"  # the id of every channel the fake posts to


@dataclass
class Reply:
    """A scripted answer: status, body (str → text/plain, dict → JSON), headers, and how long to
    wait before answering."""

    status: int
    body: str | dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def response(self) -> web.Response:
        if isinstance(self.body, dict):
            return web.json_response(self.body, status=self.status, headers=self.headers)
        return web.Response(status=self.status, text=self.body, headers=self.headers)


def api_error(name: str, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    """A Web API failure the way Slack sends it: {"ok": false, "error": name}."""
    return Reply(status, {"ok": False, "error": name}, headers or {})


def classified(rows: list[tuple[Any, ...]]) -> pytest.MarkDecorator:
    """Parametrise a test by rows of (reply, reason, retryable, retry_after, detail): a scripted
    answer, and what a channel's DeliveryError must say of it (`check_classified`)."""
    return pytest.mark.parametrize(("reply", "reason", "retryable", "retry_after", "detail"), rows)


def check_classified(
    err: DeliveryError, reason: str, retryable: bool, after: float | None, detail: str
) -> None:
    assert (err.reason, err.retryable, err.retry_after, err.detail) == (
        reason,
        retryable,
        after,
        detail,
    )


@dataclass
class Call:
    at: float
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Fake:
    """The recording part every fake shares (FakeSlack, and those of tests/fakes/presets.py)."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    scripted: list[Reply] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, *replies: Reply) -> None:
        self.scripted.extend(replies)

    def posted(self) -> list[Any]:
        """The JSON bodies received, in order."""
        return [call.json() for call in self.calls]

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[Call]:
        await until(
            lambda: len(self.calls) >= count,
            self.arrived,
            timeout,
            lambda: f"{type(self).__name__} got {len(self.calls)} of {count}",
        )
        return self.calls

    async def _record(
        self, request: web.Request, check: Callable[[Any], list[str]]
    ) -> tuple[Any, Reply | None]:
        raw = await request.read()
        query = dict(request.query)
        self.calls.append(Call(time.time(), request.path, query, dict(request.headers), raw))
        self.arrived.set()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.problems.append(check(body) if body is not None else ["not JSON"])
        scripted = self.scripted.pop(0) if self.scripted else None
        if scripted is not None and scripted.delay_s:
            await asyncio.sleep(scripted.delay_s)
        return body, scripted


F = TypeVar("F", bound=Fake)
Handler = Callable[[web.Request], Any]


@asynccontextmanager
async def serve_fake(
    fake: F, routes: Sequence[tuple[str, Handler]], port: int = 0
) -> AsyncIterator[F]:
    """`fake` answering POSTs to `routes` (path, handler) on 127.0.0.1 (an ephemeral port, or
    `port`) until the block ends, its `url` set; bodies of up to 4 MiB read."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    for path, handler in routes:
        app.router.add_post(path, handler)
    async with serving(app, port, access_log=None, shutdown_timeout=0.2) as fake.url:
        yield fake


def _text_problems(obj: Any, where: str, limit: int) -> list[str]:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return [f"{where}: not a text object"]
    if not obj["text"]:
        return [f"{where}: empty text"]
    return [f"{where}: longer than {limit}"] if len(obj["text"]) > limit else []


def _nested_problems(raw: dict[str, Any], where: str) -> list[str]:
    """Limits slack_sdk leaves to nested objects: text objects and elements."""
    kind, problems = raw.get("type"), []
    if kind == "header":
        problems += _text_problems(raw.get("text"), f"{where}.text", 150)
    elif kind == "section":
        if raw.get("text") is not None:
            problems += _text_problems(raw["text"], f"{where}.text", 3000)
        for i, item in enumerate(raw.get("fields") or []):
            problems += _text_problems(item, f"{where}.fields[{i}]", 2000)
    elif kind == "context":
        for i, item in enumerate(raw.get("elements") or []):
            if isinstance(item, dict) and item.get("type") in ("mrkdwn", "plain_text"):
                problems += _text_problems(item, f"{where}.elements[{i}]", 3000)
    elif kind == "actions":
        for i, item in enumerate(raw.get("elements") or []):
            url = item.get("url") if isinstance(item, dict) else None
            if url is not None and not _web_url(url):
                problems.append(f"{where}.elements[{i}].url: not a valid url")  # Slack's words
    return problems


def _web_url(url: Any) -> bool:
    """A button's url Slack takes: an absolute http(s) URL of at most 3000 characters, no
    whitespace, <, > or | in or around it (`javascript:`, `ftp://`, a leading space, a `|`:
    `invalid_blocks`)."""
    return (
        isinstance(url, str)
        and len(url) <= 3000
        and re.fullmatch(r"https?://[^\s/?#<>|]+[^\s<>|]*", url) is not None
    )


_LINK = re.compile(r"<([^<>]*)>")


def mrkdwn_link_problems(text: str) -> list[str]:
    """The `<url|label>` links of a mrkdwn text Slack would not show as meant: a `<` without
    its `>`, a `|` or `>` cutting the URL (the rest shown as the label or as text), a URL
    that is no http(s) one."""
    problems = [f"unclosed <: {text!r}"] if text.count("<") != len(_LINK.findall(text)) else []
    for inside in _LINK.findall(text):
        url, _, label = inside.partition("|")
        if not _web_url(url.replace("&amp;", "&")) or "|" in label:
            problems.append(f"broken link <{inside}>")
    return problems


def block_kit_problems(message: Any) -> list[str]:
    """Why Slack would refuse this message body (empty when it is valid)."""
    if not isinstance(message, dict):
        return ["the message is not an object"]
    text, blocks = message.get("text"), message.get("blocks")
    problems = []
    if text is not None and (not isinstance(text, str) or len(text) > 40_000):
        problems.append("text: not a string of at most 40000 characters")
    if blocks is None:
        return problems
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return [*problems, "blocks: not a list of 1 to 50 blocks"]
    for i, raw in enumerate(blocks):
        where = f"blocks[{i}]"
        try:
            block = Block.parse(raw)
            if block is None or not isinstance(raw, dict) or block.type != raw.get("type"):
                problems.append(f"{where}: unknown block")
                continue
            block.validate_json()
            for element in getattr(block, "elements", None) or []:
                if isinstance(element, JsonObject):
                    element.validate_json()
        except (SlackObjectFormationError, TypeError, AttributeError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += _nested_problems(raw, where)
    return problems


@dataclass
class FakeSlack(Fake):
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    post_delay_s: float = 0.0
    _next_ts: int = 0

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    async def webhook(self, request: web.Request) -> web.Response:
        body, scripted = await self._record(request, block_kit_problems)
        if scripted is not None:
            return scripted.response()
        if request.path != WEBHOOK_PATH:
            return Reply(404, "no_service").response()
        if not isinstance(body, dict):
            return Reply(400, "invalid_payload").response()
        if self.problems[-1]:
            return Reply(400, "invalid_blocks").response()
        if not body.get("text") and not body.get("blocks"):
            return Reply(400, "no_text").response()
        return Reply(200, "ok").response()

    async def _web_api(self, request: web.Request) -> tuple[dict[str, Any], Reply | None]:
        """The body of a Web API call, and the answer when it is decided before the method's
        own checks: a scripted one, or an auth or JSON failure."""
        body, scripted = await self._record(request, block_kit_problems)
        if scripted is not None:
            return {}, scripted
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return {}, api_error("not_authed")
        if auth != f"Bearer {TOKEN}":
            return {}, api_error("invalid_auth")
        if request.content_type != "application/json" or not isinstance(body, dict):
            return {}, api_error("invalid_json")
        return body, None

    async def post_message(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.post_delay_s)
        body, early = await self._web_api(request)
        if early is not None:
            return early.response()
        if not body.get("channel"):
            return api_error("channel_not_found").response()
        if self.problems[-1]:
            return api_error("invalid_blocks").response()
        if not body.get("text") and not body.get("blocks"):
            return api_error("no_text").response()
        return Reply(200, self._posted(body)).response()

    async def update_message(self, request: web.Request) -> web.Response:
        body, early = await self._web_api(request)
        if early is not None:
            return early.response()
        if body.get("channel") != CHANNEL_ID:
            return api_error("channel_not_found").response()
        ts = body.get("ts")
        if not isinstance(ts, str) or not ts:
            return api_error("invalid_arguments").response()
        if ts not in self.messages:
            return api_error("message_not_found").response()
        blocks = body.get("blocks")
        if blocks != [] and self.problems[-1]:
            return api_error("invalid_blocks").response()
        if not body.get("text") and not blocks:
            return api_error("no_text").response()
        message = self.messages[ts]
        for key in ("text", "blocks", "attachments"):
            if key in body:
                message[key] = body[key]
        message["edited"] = {"user": "U0BOT", "ts": ts}
        answer = {"ok": True, "channel": CHANNEL_ID, "ts": ts, "text": message.get("text", "")}
        return Reply(200, {**answer, "message": message}).response()

    def updates(self) -> list[dict[str, Any]]:
        """The chat.update bodies received, in order."""
        return [call.json() for call in self.calls if call.path.endswith("/chat.update")]

    def _posted(self, body: dict[str, Any]) -> dict[str, Any]:
        ts = f"1712345678.{100 + self._next_ts:06d}"  # FIRST_TS, then increasing
        self._next_ts += 1
        message = {"type": "message", "text": body.get("text", ""), "ts": ts, "bot_id": "B0002"}
        message |= {k: body[k] for k in ("blocks", "attachments") if k in body}
        if body.get("thread_ts"):
            message["thread_ts"] = body["thread_ts"]
        self.messages[ts] = message
        return {"ok": True, "channel": CHANNEL_ID, "ts": ts, "message": dict(message)}


@asynccontextmanager
async def fake_slack(port: int = 0) -> AsyncIterator[FakeSlack]:
    """A running FakeSlack on 127.0.0.1: an ephemeral port, or `port`."""
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/services/{team}/{bot}/{secret}", fake.webhook)
    app.router.add_post("/api/chat.postMessage", fake.post_message)
    app.router.add_post("/api/chat.update", fake.update_message)
    async with serving(app, port, access_log=None, shutdown_timeout=0.2) as fake.url:
        yield fake


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """A fake Slack on 127.0.0.1 for one test (registered in tests/conftest.py)."""
    async with fake_slack() as fake:
        yield fake
