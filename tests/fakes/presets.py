"""Fakes on 127.0.0.1 for the discord, msteams and pagerduty channels, speaking each API's codes.

- FakeDiscord, POST /api[/v<N>]/webhooks/<id>/<token>[?wait=true&thread_id=…]: an unknown id is 404
  {"code": 10015, "message": "Unknown Webhook"}, a wrong token 401 {"code": 50027}; bad JSON 400
  {"code": 50109}; nothing to show 400 {"code": 50006}; a body over Discord's limits
  (`discord_problems`) 400 {"code": 50035, "message": "Invalid Form Body", "errors": {...}};
  else 200 with the message object when wait=true, 204 without. `limit_next(seconds)` answers the
  next request 429 as Discord does for the version in the path: v8 and later give `retry_after`
  in seconds (a float) and Retry-After in whole seconds; a path without a version is served as
  the default API v6, whose body and Retry-After count milliseconds (discord-api-docs #2360,
  #4722). X-RateLimit-Reset-After is seconds in both.
- FakeTeams, POST /workflows/<id>/triggers/manual/paths/invoke?api-version=…&sig=…: a
  Power Automate "When a Teams webhook request is received" trigger. No `sig` is 401
  DirectApiAuthorizationRequired, a wrong one 401 DirectApiInvalidAuthorizationSignature, an
  unknown workflow 404 WorkflowNotFound, a body that is not JSON 400 InvalidRequestContent (all as
  {"error": {"code", "message"}}); anything else 202 with no body, like the real trigger, which
  posts the card later: what Teams would refuse (`teams_problems`: envelope, Adaptive Card
  elements, 28 KB) is recorded in `problems` instead of being answered. POST /webhookb2/… is a
  legacy Office 365 connector ("Incoming Webhook"): 200 with the text "1", and a failure of Teams
  behind it also 200, with the text of `connector_failure(status)` (msteams-docs #400, #1810, #7425).
- FakePagerDuty, POST /v2/enqueue and /v2/change/enqueue (Events API v2): 202 {"status":
  "success", "message": "Event processed", "dedup_key"} or 400 {"status": "invalid event",
  "message": "Event object is invalid", "errors": [...]} (`pagerduty_problems`: routing key
  length, event_action, payload fields, severity, 1024-character summary, 255-character dedup
  key, 512 KB). A well-formed routing key the fake does not know is modelled as 400 "Invalid
  routing key". Alerts are tracked by dedup key (triggered, acknowledged, resolved).

`script` queues answers (Reply: status, text or JSON body, headers, and `delay_s` to answer that
late: a hung service) that take precedence over the checks, one per request. Every request is
recorded with its path and query. Each fake listens on a free port, or on `port` when given (a
test that starts it only after relay found the port refused).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.slack import Fake, Reply, serve_fake

DISCORD_ID, DISCORD_TOKEN = (
    "1290000000000000001",
    "fakeDiscordToken_abcdefghijklmnopqrstuvwxyz012345",
)
TEAMS_FLOW, TEAMS_SIG = "a1b2c3d4e5f60718293a4b5c6d7e8f90", "fakeTeamsSig_0123456789abcdefXYZ"
PD_KEY = "R0UT1NGKEYfakefakefake0123456789"  # 32 characters, like an integration key
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
TEAMS_MAX_BYTES = 28 * 1024
PD_MAX_BYTES = 512 * 1024
SEVERITIES = ("critical", "error", "warning", "info")


# ----------------------------------------------------------------------------- Discord


def _too_long(value: Any, limit: int, where: str, required: bool = False) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, str) or (required and not value.strip()):
        return [f"{where}: not a non-empty string"]
    return [f"{where}: longer than {limit}"] if len(value) > limit else []


def _embed_problems(embed: Any, where: str) -> tuple[list[str], int]:
    if not isinstance(embed, dict):
        return [f"{where}: not an object"], 0
    texts = [embed.get("title"), embed.get("description")]
    problems = _too_long(embed.get("title"), 256, f"{where}.title")
    problems += _too_long(embed.get("description"), 4096, f"{where}.description")
    fields = embed.get("fields") or []
    if not isinstance(fields, list) or len(fields) > 25:
        problems.append(f"{where}.fields: more than 25")
        fields = []
    for i, raw in enumerate(fields):
        item = raw if isinstance(raw, dict) else {}
        problems += _too_long(item.get("name"), 256, f"{where}.fields[{i}].name", required=True)
        problems += _too_long(item.get("value"), 1024, f"{where}.fields[{i}].value", True)
        texts += [item.get("name"), item.get("value")]
    for key, limit in (("footer", 2048), ("author", 256)):
        part = embed.get(key)
        if part is not None:
            name = "text" if key == "footer" else "name"
            value = part.get(name) if isinstance(part, dict) else None
            problems += _too_long(value, limit, f"{where}.{key}.{name}", required=True)
            texts.append(value)
    color = embed.get("color")
    if color is not None and not (isinstance(color, int) and 0 <= color <= 0xFFFFFF):
        problems.append(f"{where}.color: not a 24-bit integer")
    for key in ("url",):
        url = embed.get(key)
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https"))):
            problems.append(f"{where}.{key}: not an http(s) URL")
    if embed.get("timestamp") is not None:
        try:
            datetime.fromisoformat(embed["timestamp"])
        except (TypeError, ValueError):
            problems.append(f"{where}.timestamp: not ISO 8601")
    return problems, sum(len(t) for t in texts if isinstance(t, str))


def discord_problems(body: Any) -> list[str]:
    """Why Discord would refuse this execute-webhook body (empty when it is valid)."""
    if not isinstance(body, dict):
        return ["the body is not an object"]
    problems = _too_long(body.get("content"), 2000, "content")
    problems += _too_long(body.get("thread_name"), 100, "thread_name")
    embeds = body.get("embeds") or []
    if not isinstance(embeds, list) or len(embeds) > 10:
        return [*problems, "embeds: not a list of at most 10"]
    total = 0
    for i, embed in enumerate(embeds):
        found, size = _embed_problems(embed, f"embeds[{i}]")
        problems += found
        total += size
    if total > 6000:
        problems.append(f"embeds: {total} characters, more than 6000")
    if not body.get("content") and not embeds:
        problems.append("empty message")
    return problems


@dataclass
class FakeDiscord(Fake):
    forum: bool = False  # a forum channel's webhook: a message needs a thread_name or thread_id
    _next_id: int = 0
    _limited_s: list[float] = field(default_factory=list)

    def limit_next(self, seconds: float, is_global: bool = False) -> None:
        self._limited_s.append(-seconds if is_global else seconds)

    def _rate_limited(self, request: web.Request) -> web.Response:
        signed = self._limited_s.pop(0)
        seconds, is_global = abs(signed), signed < 0
        version = int(request.match_info.get("version", "6"))
        unit = 1000 if version < 8 else 1
        after: float = round(seconds * 1000) if unit == 1000 else seconds
        headers = {
            "Retry-After": str(math.ceil(seconds * unit)),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{seconds:.3f}",
            "X-RateLimit-Scope": "global" if is_global else "user",
        } | ({"X-RateLimit-Global": "true"} if is_global else {})
        body = {"message": "You are being rate limited.", "retry_after": after, "global": is_global}
        return Reply(429, body, headers).response()

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/api/webhooks/{DISCORD_ID}/{DISCORD_TOKEN}"

    async def execute(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, discord_problems)
        if scripted is not None:
            return scripted.response()
        if self._limited_s:
            return self._rate_limited(request)
        if request.match_info["id"] != DISCORD_ID:
            return Reply(404, {"message": "Unknown Webhook", "code": 10015}).response()
        if request.match_info["token"] != DISCORD_TOKEN:
            return Reply(401, {"message": "Invalid Webhook Token", "code": 50027}).response()
        if body is None:
            return Reply(
                400, {"message": "The request body contains invalid JSON.", "code": 50109}
            ).response()
        if self.forum and not body.get("thread_name") and not request.query.get("thread_id"):
            needed = "Webhooks posted to forum channels must have a thread_name or thread_id"
            return Reply(400, {"message": needed, "code": 220001}).response()
        if self.problems[-1] == ["empty message"]:
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006}).response()
        if self.problems[-1]:
            errors = {"embeds": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}}
            return Reply(
                400, {"message": "Invalid Form Body", "code": 50035, "errors": errors}
            ).response()
        if request.query.get("wait") != "true":
            return web.Response(status=204)
        self._next_id += 1
        message = {
            "id": str(1290000000000100000 + self._next_id),
            "type": 0,
            "channel_id": "1290000000000000100",
            "webhook_id": DISCORD_ID,
            "content": body.get("content", ""),
            "embeds": body.get("embeds", []),
        }
        return Reply(200, message).response()


# ----------------------------------------------------------------------------- Microsoft Teams

_ELEMENTS = {
    "TextBlock",
    "RichTextBlock",
    "FactSet",
    "ActionSet",
    "Container",
    "ColumnSet",
    "Image",
}


def _element_problems(element: Any, where: str) -> list[str]:
    kind = element.get("type") if isinstance(element, dict) else None
    if kind not in _ELEMENTS:
        return [f"{where}: unknown element {kind!r}"]
    assert isinstance(element, dict)
    if kind == "TextBlock":
        return _too_long(element.get("text"), 10**9, f"{where}.text", required=True)
    if kind == "RichTextBlock":
        inlines = element.get("inlines")
        if not isinstance(inlines, list) or not inlines:
            return [f"{where}.inlines: empty"]
        return [
            f"{where}.inlines[{i}]: not a TextRun with text"
            for i, run in enumerate(inlines)
            if not (isinstance(run, dict) and run.get("type") == "TextRun")
            or not isinstance(run.get("text"), str)
        ]
    if kind == "FactSet":
        facts = element.get("facts")
        ok = (
            isinstance(facts, list)
            and facts
            and all(
                isinstance(f, dict)
                and isinstance(f.get("title"), str)
                and isinstance(f.get("value"), str)
                for f in facts
            )
        )
        return [] if ok else [f"{where}.facts: not a list of {{title, value}} strings"]
    if kind == "ActionSet":
        return _actions_problems(element.get("actions"), f"{where}.actions")
    if kind == "Container":
        items = element.get("items") or []
        return [p for i, e in enumerate(items) for p in _element_problems(e, f"{where}.items[{i}]")]
    return []


def _actions_problems(actions: Any, where: str) -> list[str]:
    if not isinstance(actions, list):
        return [f"{where}: not a list"]
    problems = []
    for i, action in enumerate(actions):
        ok = isinstance(action, dict) and action.get("type") == "Action.OpenUrl"
        url = action.get("url") if ok else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            problems.append(f"{where}[{i}]: not an Action.OpenUrl with an http(s) url")
    return problems


def teams_problems(body: Any) -> list[str]:
    """Why the workflow could not post this body as a card to Teams (empty when it could)."""
    if not isinstance(body, dict) or body.get("type") != "message":
        return ["not a {type: message} envelope"]
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["attachments: empty"]
    first = attachments[0] if isinstance(attachments[0], dict) else {}
    card = first.get("content")
    if first.get("contentType") != ADAPTIVE or not isinstance(card, dict):
        return ["attachments[0]: not an adaptive card"]
    problems = []
    if card.get("type") != "AdaptiveCard" or card.get("version") not in (
        "1.2",
        "1.3",
        "1.4",
        "1.5",
    ):
        problems.append("content: not an AdaptiveCard of version 1.2 to 1.5")
    elements = card.get("body")
    if not isinstance(elements, list) or not elements:
        return [*problems, "content.body: empty"]
    for i, element in enumerate(elements):
        problems += _element_problems(element, f"body[{i}]")
    if card.get("actions") is not None:
        problems += _actions_problems(card["actions"], "actions")
    size = len(json.dumps(body, ensure_ascii=False).encode())
    if size > TEAMS_MAX_BYTES:
        problems.append(f"{size} bytes, more than {TEAMS_MAX_BYTES}")
    return problems


@dataclass
class FakeTeams(Fake):
    @property
    def webhook_url(self) -> str:
        return (
            f"{self.url}/workflows/{TEAMS_FLOW}/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}"
        )

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, teams_problems)
        if scripted is not None:
            return scripted.response()
        sig = request.query.get("sig")
        if not sig:
            return _flow_error(401, "DirectApiAuthorizationRequired")
        if sig != TEAMS_SIG:
            return _flow_error(401, "DirectApiInvalidAuthorizationSignature")
        if request.match_info["flow"] != TEAMS_FLOW:
            return _flow_error(404, "WorkflowNotFound")
        if body is None:
            return _flow_error(400, "InvalidRequestContent")
        return web.Response(status=202)

    @property
    def connector_url(self) -> str:
        return f"{self.url}/webhookb2/{TEAMS_FLOW}@tenant/IncomingWebhook/{TEAMS_SIG}/owner"

    async def connector(self, request: web.Request) -> web.StreamResponse:
        _, scripted = await self._record(request, teams_problems)
        if scripted is not None:
            return scripted.response()
        return web.Response(text="1", content_type="text/plain")


def connector_failure(status: int) -> Reply:
    """How a legacy connector answers when Teams refused the message: 200, the status in text."""
    return Reply(
        200,
        "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error"
        f" {status} with ContextId tcid=0,server=msgapi-production-eus-azsc2-4-170,cv=aB3.0..",
    )


def _flow_error(status: int, code: str) -> web.Response:
    return Reply(status, {"error": {"code": code, "message": f"{code}."}}).response()


# ----------------------------------------------------------------------------- PagerDuty


def pagerduty_problems(body: Any, change: bool = False) -> list[str]:
    """Why the Events API would answer 400 "invalid event" (empty when it is valid)."""
    if not isinstance(body, dict):
        return ["Event object format is unrecognized"]
    key = body.get("routing_key")
    problems = []
    if not isinstance(key, str) or len(key) != 32:
        problems.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = body.get("event_action")
    if not change and action not in ("trigger", "acknowledge", "resolve"):
        return [
            *problems,
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)",
        ]
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        problems.append("'dedup_key' is invalid (must be at most 255 characters)")
    if action in ("acknowledge", "resolve") and not dedup:
        problems.append("'dedup_key' is required for acknowledge and resolve events")
    if action == "trigger" or change:
        raw = body.get("payload")
        payload: dict[str, Any] = raw if isinstance(raw, dict) else {}
        problems += _too_long(payload.get("summary"), 1024, "'payload.summary'", required=True)
        problems += _too_long(payload.get("source"), 10**6, "'payload.source'", required=True)
        if not change and payload.get("severity") not in SEVERITIES:
            problems.append(
                "'payload.severity' is invalid (must be one of critical, error, warning, info)"
            )
        if payload.get("timestamp") is not None:
            try:
                datetime.fromisoformat(payload["timestamp"])
            except (TypeError, ValueError):
                problems.append("'payload.timestamp' is invalid")
    for link in body.get("links") or []:
        if not (isinstance(link, dict) and str(link.get("href", "")).startswith("http")):
            problems.append("'links' is invalid")
    if len(json.dumps(body).encode()) > PD_MAX_BYTES:
        problems.append("Event is too large")
    return problems


@dataclass
class FakePagerDuty(Fake):
    alerts: dict[str, str] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    _next_key: int = 0

    async def enqueue(self, request: web.Request) -> web.StreamResponse:
        change = request.path.endswith("/change/enqueue")
        body, scripted = await self._record(request, lambda b: pagerduty_problems(b, change))
        if scripted is not None:
            return scripted.response()
        problems = self.problems[-1]
        if not problems and body.get("routing_key") != PD_KEY:
            problems = ["Invalid routing key"]
        if problems:
            message = "Event object is invalid"
            return Reply(
                400, {"status": "invalid event", "message": message, "errors": problems}
            ).response()
        if change:
            self.changes.append(body)
            return Reply(202, {"status": "success", "message": "Change event processed"}).response()
        key = body.get("dedup_key")
        if not key:
            self._next_key += 1
            key = f"pd-generated-{self._next_key:04d}"
        state = {"trigger": "triggered", "acknowledge": "acknowledged", "resolve": "resolved"}
        if body["event_action"] == "trigger" or key in self.alerts:
            self.alerts[key] = state[body["event_action"]]
        reply = {"status": "success", "message": "Event processed", "dedup_key": key}
        return Reply(202, reply).response()


# ----------------------------------------------------------------------------- running them


def fake_discord(port: int = 0) -> AbstractAsyncContextManager[FakeDiscord]:
    fake = FakeDiscord()
    routes = ["/api/webhooks/{id}/{token}", r"/api/v{version:\d+}/webhooks/{id}/{token}"]
    return serve_fake(fake, [(route, fake.execute) for route in routes], port)


def fake_teams(port: int = 0) -> AbstractAsyncContextManager[FakeTeams]:
    fake = FakeTeams()
    routes = [
        ("/workflows/{flow}/triggers/manual/paths/invoke", fake.invoke),
        ("/webhookb2/{path:.*}", fake.connector),
    ]
    return serve_fake(fake, routes, port)


def fake_pagerduty(port: int = 0) -> AbstractAsyncContextManager[FakePagerDuty]:
    fake = FakePagerDuty()
    routes = [("/v2/enqueue", fake.enqueue), ("/v2/change/enqueue", fake.enqueue)]
    return serve_fake(fake, routes, port)


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with fake_discord() as fake:
        yield fake


@pytest.fixture
async def teams() -> AsyncIterator[FakeTeams]:
    async with fake_teams() as fake:
        yield fake


@pytest.fixture
async def pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with fake_pagerduty() as fake:
        yield fake
