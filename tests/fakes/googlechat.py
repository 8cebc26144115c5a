"""A fake Google Chat incoming webhook on 127.0.0.1, for tests of the googlechat channel.

POST /v1/spaces/<space>/messages?key=…&token=…[&messageReplyOption=…], a Message as JSON;
answers as Chat does: 200 with the Message created, or {"error": {"code", "message", "status",
"details"?}} with `code` as the HTTP status.

- A space the fake does not know is 404 NOT_FOUND "Requested entity was not found." (a deleted
  space or webhook); a wrong `key` 400 INVALID_ARGUMENT "API key not valid. …" with an
  ErrorInfo of reason API_KEY_INVALID; a wrong or missing `token` 403 PERMISSION_DENIED "The
  API is called without a valid token. …".
- A body that is not JSON is 400 INVALID_ARGUMENT "Invalid JSON payload received. …"; one Chat
  refuses (`chat_problems`: an unknown field, nothing to show, a card without sections or with
  a widget Chat does not know, a button without an http(s) openLink, over 32,000 bytes) 400
  INVALID_ARGUMENT naming the first problem.
- Threads: with messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD, `thread.threadKey`
  replies in the thread started with that key, else starts it; `thread.name` replies in that
  thread, else (unknown) starts a new one. Without it, every message starts a thread.
  `messages` keeps (thread name, body) of each message created, in order.
- `requestId`: a request naming one already used creates nothing and is answered with the
  message that id created (Chat's idempotent create).
- `limit_next(retry_after)`: the next request is 429 RESOURCE_EXHAUSTED (the space's write
  quota), with a Retry-After header when given (Chat sends none).

`script` queues answers (tests/fakes/slack.py Reply) that take precedence, one per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.slack import Fake, Reply, serve_fake

SPACE = "AAAAbCdEfGh"
KEY = "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"
TOKEN = "fakeChatToken_0123456789abcdefXYZ-ab%3D"  # as it is written in the URL
MAX_BYTES = 32_000
REPLY = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
WIDGETS = frozenset(
    {"textParagraph", "decoratedText", "buttonList", "divider", "image", "columns", "grid"}
)
_URL = re.compile(r"https?://[^\s]+")


def webhook_path(space: str = SPACE) -> str:
    return f"/v1/spaces/{space}/messages"


def error(status: int, text: str, code: str, **extra: Any) -> Reply:
    """An answer of Chat refusing a request."""
    return Reply(status, {"error": {"code": status, "message": text, "status": code, **extra}})


def invalid(text: str) -> Reply:
    return error(400, text, "INVALID_ARGUMENT")


def _widget_problems(widget: Any, where: str) -> list[str]:
    if not isinstance(widget, dict) or len(widget) != 1 or next(iter(widget)) not in WIDGETS:
        return [f"{where}: not one known widget"]
    kind, value = next(iter(widget.items()))
    if not isinstance(value, dict):
        return [f"{where}.{kind}: not an object"]
    if kind in ("textParagraph", "decoratedText") and not isinstance(value.get("text"), str):
        return [f"{where}.{kind}.text: required"]
    if kind == "buttonList":
        buttons = value.get("buttons")
        if not isinstance(buttons, list) or not buttons:
            return [f"{where}.buttonList.buttons: required"]
        for i, button in enumerate(buttons):
            click = button.get("onClick") if isinstance(button, dict) else None
            link = click.get("openLink") if isinstance(click, dict) else None
            url = link.get("url") if isinstance(link, dict) else None
            if not isinstance(url, str) or not _URL.fullmatch(url):
                return [f"{where}.buttonList.buttons[{i}].onClick.openLink.url: invalid"]
    return []


def chat_problems(body: Any) -> list[str]:
    """Why Chat refuses this Message (empty when it takes it)."""
    if not isinstance(body, dict):
        return ["Invalid JSON payload received. Expected an object."]
    unknown = set(body) - {"text", "cardsV2", "thread"}
    if unknown:
        return [f'Invalid JSON payload received. Unknown name "{sorted(unknown)[0]}"']
    cards = body.get("cardsV2")
    if not (isinstance(body.get("text"), str) and body["text"].strip()) and not cards:
        return ["Message cannot be empty. Discarding empty message."]
    problems = []
    for i, item in enumerate(cards if isinstance(cards, list) else []):
        card = item.get("card") if isinstance(item, dict) else None
        where = f"message.cards_v2[{i}].card"
        if not isinstance(card, dict):
            problems.append(f"{where}: required")
            continue
        header = card.get("header")
        if header is not None and not isinstance((header or {}).get("title"), str):
            problems.append(f"{where}.header.title: required")
        sections = card.get("sections")
        if not isinstance(sections, list) or not sections:
            problems.append(f"{where}.sections: a card needs at least one section")
            continue
        for j, section in enumerate(sections):
            widgets = section.get("widgets") if isinstance(section, dict) else None
            if not isinstance(widgets, list) or not widgets:
                problems.append(f"{where}.sections[{j}].widgets: required")
                continue
            for k, widget in enumerate(widgets):
                problems += _widget_problems(widget, f"{where}.sections[{j}].widgets[{k}]")
    size = len(json.dumps(body, ensure_ascii=False).encode())
    if size > MAX_BYTES:
        problems.append(f"Message too large: {size} bytes, the limit is {MAX_BYTES}.")
    return problems


@dataclass
class FakeChat(Fake):
    spaces: set[str] = field(default_factory=lambda: {SPACE})
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (thread, body)
    threads: dict[str, str] = field(default_factory=dict)  # threadKey -> thread name
    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # requestId -> answer
    _limited: list[str | None] = field(default_factory=list)
    _next: int = 0

    def limit_next(self, retry_after: str | None = None) -> None:
        self._limited.append(retry_after)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{webhook_path()}?key={KEY}&token={TOKEN}"

    def thread_of(self, index: int) -> str:
        return self.messages[index][0]

    def _thread(self, request: web.Request, body: dict[str, Any], space: str) -> str:
        """The thread the message goes to, as Chat picks it."""
        self._next += 1
        new = f"spaces/{space}/threads/t{self._next:04d}"
        asked = body.get("thread")
        wanted: dict[str, Any] = asked if isinstance(asked, dict) else {}
        key = wanted.get("threadKey") or request.query.get("threadKey")
        if request.query.get("messageReplyOption") != REPLY and "threadKey" not in request.query:
            return new
        name = wanted.get("name")
        if isinstance(name, str) and name in self.threads.values():
            return name
        if isinstance(key, str) and key:
            return self.threads.setdefault(key, new)
        return new

    async def post(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, chat_problems)
        if scripted is not None:
            return scripted.response()
        if self._limited:
            after = self._limited.pop(0)
            refused = error(
                429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"
            )
            return Reply(
                refused.status, refused.body, {"Retry-After": after} if after else {}
            ).response()
        space = request.match_info["space"]
        if space not in self.spaces:
            return error(404, "Requested entity was not found.", "NOT_FOUND").response()
        if request.query.get("key") != KEY:
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
            }
            refused = error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                details=[info],
            )
            return refused.response()
        raw_token = re.search(r"(?:^|&)token=([^&]*)", request.query_string)
        if raw_token is None or raw_token.group(1) != TOKEN:
            return error(
                403,
                "The API is called without a valid token. Instructions on how to use incoming"
                " webhooks can be found at https://developers.google.com/chat/how-tos/webhooks",
                "PERMISSION_DENIED",
            ).response()
        if body is None:
            return invalid("Invalid JSON payload received. Unexpected token.").response()
        if self.problems[-1]:
            return invalid(self.problems[-1][0]).response()
        request_id = request.query.get("requestId")
        if request_id in self.created:
            return web.json_response(self.created[request_id])
        thread = self._thread(request, body, space)
        self.messages.append((thread, body))
        name = f"spaces/{space}/messages/m{len(self.messages):04d}.m{len(self.messages):04d}"
        answer = {
            "name": name,
            "sender": {"name": "users/114022495153014004089", "type": "BOT"},
            "createTime": "2026-12-07T03:00:00.000000Z",
            "text": body.get("text", ""),
            "cardsV2": body.get("cardsV2", []),
            "thread": {"name": thread, "retentionSettings": {"state": "PERMANENT"}},
            "space": {"name": f"spaces/{space}", "type": "ROOM", "spaceType": "SPACE"},
        }
        if request_id:
            self.created[request_id] = answer
        return web.json_response(answer)


def fake_chat(port: int = 0) -> AbstractAsyncContextManager[FakeChat]:
    fake = FakeChat()
    return serve_fake(fake, [("/v1/spaces/{space}/messages", fake.post)], port)


@pytest.fixture
async def googlechat() -> AsyncIterator[FakeChat]:
    async with fake_chat() as fake:
        yield fake
