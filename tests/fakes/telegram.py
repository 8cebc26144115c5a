"""A fake Telegram Bot API on 127.0.0.1, for tests of the telegram channel.

POST /bot<token>/<method>, JSON bodies, answers as the Bot API gives them: {"ok": true,
"result": ...} or {"ok": false, "error_code": N, "description": "...", "parameters"?: {...}}
with N as the HTTP status.

- A token that is not `<digits>:<secret>` is 404 "Not Found"; another bot's token 401
  "Unauthorized"; a method the fake does not know 404 "Not Found".
- sendMessage: an unknown chat_id is 400 "Bad Request: chat not found"; a chat in `migrated` is
  400 "Bad Request: group chat was upgraded to a supergroup chat" with parameters
  {"migrate_to_chat_id"}; a chat in `blocked` 403 "Forbidden: bot was kicked from the supergroup
  chat"; text that Telegram's HTML parser refuses (`html_problems`: a tag or attribute it does
  not know, an entity other than &lt; &gt; &amp; &quot; and numeric ones, a tag not closed or
  closed out of order, entities nested where Telegram refuses them) 400 "Bad Request: can't
  parse entities: ..."; over 4096 UTF-16 code units of text 400 "Bad Request: message is too
  long"; an unknown message_thread_id 400 "Bad Request: message thread not found". Else the
  Message {message_id, date, chat {id, type}, text}; messages are kept by (chat, id).
- editMessageText: an unknown message 400 "Bad Request: message to edit not found"; one in
  `frozen` 400 "Bad Request: message can't be edited"; the same text 400 "Bad Request: message
  is not modified: ..."; else the edited Message.
- `limit_next(seconds)`: the next request is 429 "Too Many Requests: retry after N" with
  parameters {"retry_after": N}, and no Retry-After header, as the Bot API answers.

`script` queues answers (tests/fakes/slack.py Reply) that take precedence, one per request.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.slack import Fake, Reply, serve_fake

BOT_TOKEN = "7012345678:AAFakeTelegramBotToken_0123456789abcdefXY"
CHAT_ID = -1001234567890
_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")
_TAGS = {
    "b": (), "strong": (), "i": (), "em": (), "u": (), "ins": (), "s": (), "strike": (),
    "del": (), "tg-spoiler": (), "span": ("class",), "a": ("href",), "code": ("class",),
    "pre": ("language",), "blockquote": ("expandable",), "tg-emoji": ("emoji-id",),
}  # fmt: skip
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+(?:=\"[^\"]*\"|='[^']*')?)*)\s*>")
_ATTR = re.compile(r"([a-zA-Z-]+)(?:=(?:\"([^\"]*)\"|'([^']*)'))?")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def parse_html(text: str) -> tuple[str, list[str]]:
    """(the text Telegram shows, why Telegram's parser refuses `text`), strictly as it parses:
    every `<` opens a tag, every `&` an entity."""
    out: list[str] = []
    problems: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            tag = _TAG.match(text, i)
            if tag is None:
                return "", [f"Unsupported start tag at byte offset {i}"]
            closing, name, attrs = tag.group(1), tag.group(2).lower(), tag.group(3)
            if name not in _TAGS:
                return "", [f'Unsupported start tag "{name}" at byte offset {i}']
            if closing:
                if not stack or stack[-1] != name:
                    return "", [f'Can\'t find end tag corresponding to start tag "{name}"']
                stack.pop()
            else:
                for attr in _ATTR.finditer(attrs):
                    if attr.group(1).lower() not in _TAGS[name]:
                        return "", [f'Unsupported attribute "{attr.group(1)}" of "{name}"']
                if name == "span" and 'class="tg-spoiler"' not in attrs:
                    return "", ['Tag "span" must have class "tg-spoiler"']
                if any(t in ("code", "pre") for t in stack) and not (
                    name == "code" and stack[-1] == "pre"
                ):
                    problems.append(f'"{name}" inside {stack[-1]}')
                if name == "a" and "a" in stack:
                    problems.append("a link inside a link")
                if name == "blockquote" and "blockquote" in stack:
                    problems.append("a blockquote inside a blockquote")
                stack.append(name)
            i = tag.end()
        elif char == "&":
            entity = _ENTITY.match(text, i)
            if entity is None:
                return "", [f"Unsupported HTML entity at byte offset {i}"]
            out.append(html.unescape(entity.group()))
            i = entity.end()
        elif char == ">":
            out.append(char)  # Telegram takes a bare `>`
            i += 1
        else:
            out.append(char)
            i += 1
    if stack:
        problems.append(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out), problems


def html_problems(body: Any) -> list[str]:
    """Why Telegram refuses the text of a sendMessage or editMessageText body."""
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return ["message text is empty"]
    if body.get("parse_mode") != "HTML":
        return ["parse_mode is not HTML"]
    shown, problems = parse_html(body["text"])
    if problems:
        return ["can't parse entities: " + problems[0]]
    if not shown.strip():
        return ["message text is empty"]
    if utf16(shown) > 4096:
        return ["message is too long"]
    return []


def failure(status: int, description: str, **parameters: Any) -> Reply:
    """An answer of the Bot API refusing a request."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply(status, body)


@dataclass
class FakeTelegram(Fake):
    chats: set[int | str] = field(default_factory=lambda: {CHAT_ID})
    topics: set[int] = field(default_factory=lambda: {7})
    migrated: dict[int, int] = field(default_factory=dict)
    blocked: set[int | str] = field(default_factory=set)
    frozen: set[int] = field(default_factory=set)  # message ids Telegram will not edit
    messages: dict[tuple[int | str, int], str] = field(default_factory=dict)  # shown text
    _next_id: int = 100
    _limited_s: list[int] = field(default_factory=list)

    def limit_next(self, seconds: int) -> None:
        self._limited_s.append(seconds)

    @property
    def api_url(self) -> str:
        return self.url

    def shown(self) -> list[str]:
        """The text of every message, as the chat shows it now, in the order sent."""
        return list(self.messages.values())

    def _message(self, chat: int | str, message_id: int, text: str) -> dict[str, Any]:
        chat_id = chat if isinstance(chat, int) else -1009876543210
        result = {"message_id": message_id, "date": int(time.time()), "text": text}
        return result | {"chat": {"id": chat_id, "type": "supergroup"}}

    async def method(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body, scripted = await self._record(request, html_problems)
        if scripted is not None:
            return scripted.response()
        if self._limited_s:
            after = self._limited_s.pop(0)
            return failure(
                429, f"Too Many Requests: retry after {after}", retry_after=after
            ).response()
        token = request.match_info["token"]
        if not _TOKEN.fullmatch(token) or method not in ("sendMessage", "editMessageText"):
            return failure(404, "Not Found").response()
        if token != BOT_TOKEN:
            return failure(401, "Unauthorized").response()
        if not isinstance(body, dict):
            return failure(400, "Bad Request: message text is empty").response()
        chat = body.get("chat_id")
        if chat in self.migrated:
            new = self.migrated[chat]
            upgraded = "Bad Request: group chat was upgraded to a supergroup chat"
            return failure(400, upgraded, migrate_to_chat_id=new).response()
        if chat in self.blocked:
            return failure(403, "Forbidden: bot was kicked from the supergroup chat").response()
        if chat not in self.chats:
            return failure(400, "Bad Request: chat not found").response()
        if self.problems[-1]:
            return failure(400, "Bad Request: " + self.problems[-1][0]).response()
        shown, _ = parse_html(body["text"])
        if method == "editMessageText":
            return self._edit(chat, body, shown).response()
        thread = body.get("message_thread_id")
        if thread is not None and thread not in self.topics:
            return failure(400, "Bad Request: message thread not found").response()
        self._next_id += 1
        self.messages[chat, self._next_id] = shown
        return Reply(
            200, {"ok": True, "result": self._message(chat, self._next_id, shown)}
        ).response()

    def _edit(self, chat: int | str, body: dict[str, Any], shown: str) -> Reply:
        message_id = body.get("message_id")
        if not isinstance(message_id, int) or (chat, message_id) not in self.messages:
            return failure(400, "Bad Request: message to edit not found")
        if message_id in self.frozen:
            return failure(400, "Bad Request: message can't be edited")
        if self.messages[chat, message_id] == shown:
            return failure(
                400,
                "Bad Request: message is not modified: specified new message content and reply"
                " markup are exactly the same as a current content and reply markup of the message",
            )
        self.messages[chat, message_id] = shown
        return Reply(200, {"ok": True, "result": self._message(chat, message_id, shown)})


def fake_telegram(port: int = 0) -> AbstractAsyncContextManager[FakeTelegram]:
    fake = FakeTelegram()
    return serve_fake(fake, [("/bot{token}/{method}", fake.method)], port)


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as fake:
        yield fake
