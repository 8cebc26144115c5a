"""A fake Pushover API on 127.0.0.1, for tests of the pushover channel.

- POST /1/messages.json, a JSON (or form) body: answers as Pushover does, every answer with
  X-Limit-App-Limit / X-Limit-App-Remaining / X-Limit-App-Reset (the quota's reset: the next
  month's first day, a Unix time):
  - 200 {"status": 1, "request": "<uuid>"}, and a 30-character `receipt` for priority 2;
  - 400 {"token": "invalid", "errors": ["application token is invalid, …"], "status": 0,
    "request"} for a token it does not know; {"user": "invalid", …} for a user key; and the
    refusals of a message: blank, over 1024 characters (title 250, url 512, url_title 100), a
    priority out of -2..2, an emergency without retry / expire or with retry under 30 s or
    expire over 10800 s, a device the user has not;
  - 429 {"status": 0, "errors": [… over its monthly limit …]} once `remaining` is 0.
- POST /1/receipts/<receipt>/cancel.json {"token"}: 200 {"status": 1} for a receipt it gave
  (its repeats stop: `emergencies[receipt]` becomes "cancelled"), 400 {"receipt": "not
  found", …} for one it does not know; a wrong token as above.

`messages` keeps each message accepted, `pushover_problems` says why the real Pushover would
refuse a body or show it other than meant (its HTML subset: b, i, u, font color, a href).
`script` queues answers (tests/fakes/slack.py Reply) that take precedence, one per request.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from tests.fakes.slack import Fake, Reply, serve_fake

TOKEN = "azGDORePK8gMaC0QOYAMyEEuzJnyUi"  # 30 letters and digits, as Pushover's
USER = "uQiRzpo4DXghDmr9QzzfQu27cmVRsG"
DEVICES = ("iphone", "pixel-8")
LIMIT = 10_000
_TAG = re.compile(r"</?(?:b|i|u|font|a)(?:\s[^<>]*)?>")


def reset_at() -> int:
    """The quota's reset: the next month's first day, 00:00 UTC."""
    now = datetime.now(UTC)
    first = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp())


def refused(status: int, errors: list[str], **fields: str) -> Reply:
    """An answer of Pushover refusing a request."""
    body = {**fields, "errors": errors, "status": 0, "request": str(uuid.uuid4())}
    return Reply(status, body)


def html_problems(text: str) -> list[str]:
    """How Pushover would show a message's HTML other than meant: a `<` or `&` that is no tag
    of its subset or entity, a tag not closed, a link that is not http(s)."""
    problems = []
    bare = _TAG.sub("", text)
    if "<" in bare or ">" in bare:
        problems.append(f"not a tag of Pushover's: {bare[:80]!r}")
    if re.search(r"&(?!(?:amp|lt|gt|quot|#[0-9]+);)", bare):
        problems.append("a bare &")
    for tag in ("b", "i", "u", "font", "a"):
        if len(re.findall(rf"<{tag}[\s>]", text)) != text.count(f"</{tag}>"):
            problems.append(f"<{tag}> not closed")
    for href in re.findall(r'<a\s+href="([^"]*)"', text):
        if not re.match(r"https?://", href):
            problems.append(f"a link to {href[:40]!r}")
    if re.search(r"<a\s(?![^<>]*href=)", text):
        problems.append("a link without href")
    return problems


def pushover_problems(body: Any) -> list[str]:
    """Why Pushover refuses this request (its `errors`), or shows it other than meant."""
    problems = refusals(body)
    if isinstance(body, dict) and str(body.get("html")) == "1":
        problems += html_problems(body.get("message") or "")
    return problems


def refusals(body: Any) -> list[str]:
    """Why Pushover refuses this request: its `errors`."""
    if not isinstance(body, dict):
        return ["not a request"]
    problems = []
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        problems.append("message cannot be blank")

    for key, limit in (("message", 1024), ("title", 250), ("url", 512), ("url_title", 100)):
        value = body.get(key)
        if isinstance(value, str) and len(value) > limit:
            problems.append(f"{key} is too long, must be no more than {limit} characters")
    priority = body.get("priority", 0)
    if priority not in (-2, -1, 0, 1, 2):
        problems.append("priority is invalid")
    if priority == 2:
        retry, expire = body.get("retry"), body.get("expire")
        if not isinstance(retry, int):
            problems.append("retry must be supplied with priority=2")
        elif retry < 30:
            problems.append("retry must be at least 30 seconds")
        if not isinstance(expire, int):
            problems.append("expire must be supplied with priority=2")
        elif expire > 10_800:
            problems.append("expire must be no more than 10800 seconds")
    return problems


def _form(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        value = {
            k: (int(v) if re.fullmatch(r"-?\d+", v) else v) for k, v in parse_qsl(raw.decode())
        }
    return value if isinstance(value, dict) else {}


@dataclass
class FakePushover(Fake):
    remaining: int = LIMIT
    messages: list[dict[str, Any]] = field(default_factory=list)
    emergencies: dict[str, str] = field(default_factory=dict)  # receipt -> active | cancelled

    def _limits(self) -> dict[str, str]:
        return {
            "X-Limit-App-Limit": str(LIMIT),
            "X-Limit-App-Remaining": str(self.remaining),
            "X-Limit-App-Reset": str(reset_at()),
        }

    def _answer(self, reply: Reply) -> web.StreamResponse:
        return Reply(reply.status, reply.body, {**self._limits(), **reply.headers}).response()

    async def messages_json(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, pushover_problems)
        if scripted is not None:
            return scripted.response()
        body = body if isinstance(body, dict) else _form(self.calls[-1].raw)
        if body.get("token") != TOKEN:
            errors = ["application token is invalid, see https://pushover.net/api"]
            return self._answer(refused(400, errors, token="invalid"))
        if body.get("user") != USER:
            errors = [
                "user identifier is not a valid user, group, or subscribed user key, see"
                " https://pushover.net/api#identifiers"
            ]
            return self._answer(refused(400, errors, user="invalid"))
        device = body.get("device")
        if isinstance(device, str) and not set(device.split(",")) <= set(DEVICES):
            return self._answer(
                refused(400, ["device name is not valid for user"], device="invalid")
            )
        if refused_for := refusals(body):
            return self._answer(refused(400, refused_for[:1]))
        if self.remaining <= 0:
            errors = ["application has exceeded its monthly message limit; upgrade it"]
            return self._answer(refused(429, errors))
        self.remaining -= 1
        self.messages.append(body)
        answer: dict[str, Any] = {"status": 1, "request": str(uuid.uuid4())}
        if body.get("priority") == 2:
            receipt = uuid.uuid4().hex[:30]
            self.emergencies[receipt] = "active"
            answer["receipt"] = receipt
        return self._answer(Reply(200, answer))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, lambda _: [])
        if scripted is not None:
            return scripted.response()
        body = body if isinstance(body, dict) else _form(self.calls[-1].raw)
        if body.get("token") != TOKEN:
            errors = ["application token is invalid, see https://pushover.net/api"]
            return refused(400, errors, token="invalid").response()
        receipt = request.match_info["receipt"]
        if receipt not in self.emergencies:
            errors = ["receipt not found; may be invalid or expired"]
            return refused(400, errors, receipt="not found").response()
        self.emergencies[receipt] = "cancelled"
        return web.json_response({"status": 1, "request": str(uuid.uuid4())})


def fake_pushover(port: int = 0) -> AbstractAsyncContextManager[FakePushover]:
    fake = FakePushover()
    routes = [
        ("/1/messages.json", fake.messages_json),
        ("/1/receipts/{receipt}/cancel.json", fake.cancel),
    ]
    return serve_fake(fake, routes, port)


@pytest.fixture
async def pushover() -> AsyncIterator[FakePushover]:
    async with fake_pushover() as fake:
        yield fake
