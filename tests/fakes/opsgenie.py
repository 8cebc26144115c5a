"""A fake Opsgenie Alert API on 127.0.0.1, for tests of the opsgenie channel.

Every request needs `Authorization: GenieKey <API_KEY>`: 401 {"message": "Could not
authenticate", "took", "requestId"} otherwise. Every answer carries X-Request-ID.
- POST /v2/alerts: a body that is not JSON is 400 {"message": "Invalid JSON body", …}; one the
  Alert API refuses (`opsgenie_problems`: message missing or over 130 characters, alias over
  512, description 15000, more than 20 tags or one over 50, details not a string map or over
  8000 characters, a priority not P1..P5, a responder with no type or no id / name / username,
  …) is 422 {"message": "Request body is not processable. Please check the errors.", "errors":
  {field: problem}, "took", "requestId"}; else 202 {"result": "Request will be processed",
  "took", "requestId"}. An alert created with the alias of an open one is deduplicated: its
  `count` goes up, as Opsgenie's does.
- POST /v2/alerts/<alias>/close?identifierType=alias {"source", "note", "user"}: 202; the open
  alert of that alias (if any: the real API accepts a close of an unknown alias, and its request
  status later says "Alert does not exist") is closed. A close by any other identifierType
  finds no alert here.

`alerts` keeps each alert by alias; `script` queues answers (tests/fakes/slack.py Reply) that
take precedence, one per request (a 429 with Retry-After, a 5xx, a Reply with delay_s hangs).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.slack import Fake, Reply, serve_fake

API_KEY = "3c5a9f7e-1b2d-4e6f-8a9b-0c1d2e3f4a5b"  # a UUID, as an API integration's key
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
_LIMITS = {
    "alias": 512,
    "description": 15_000,
    "entity": 512,
    "source": 100,
    "user": 100,
    "note": 25_000,
}
UNPROCESSABLE = "Request body is not processable. Please check the errors."


def answer(status: int, headers: dict[str, str] | None = None, **fields: Any) -> Reply:
    """An answer of the Alert API: `fields`, took and requestId (and `headers`)."""
    request = str(uuid.uuid4())
    body = {**fields, "took": 0.004, "requestId": request}
    return Reply(status, body, {"X-Request-ID": request, **(headers or {})})


def unprocessable(errors: dict[str, str]) -> Reply:
    return answer(422, message=UNPROCESSABLE, errors=errors)


def _text_problems(body: dict[str, Any]) -> dict[str, str]:
    problems = {}
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        problems["message"] = "Message can not be empty."
    elif len(message) > 130:
        problems["message"] = "Message can not be longer than 130 characters."
    for key, limit in _LIMITS.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems[key] = f"{key} can not be longer than {limit} characters."
    return problems


def _list_problems(body: dict[str, Any]) -> dict[str, str]:
    problems = {}
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 20:
        problems["tags"] = "Number of tags can not be more than 20."
    elif any(not isinstance(t, str) or len(t) > 50 or not t for t in tags):
        problems["tags"] = "Tags can not be longer than 50 characters."
    actions = body.get("actions", [])
    if not isinstance(actions, list) or len(actions) > 10:
        problems["actions"] = "Number of actions can not be more than 10."
    for key in ("responders", "visibleTo"):
        parties = body.get(key, [])
        if not isinstance(parties, list) or len(parties) > 50:
            problems[key] = f"Number of {key} can not be more than 50."
        for party in parties if isinstance(parties, list) else ():
            if not isinstance(party, dict) or party.get("type") not in (
                "team",
                "user",
                "escalation",
                "schedule",
            ):
                problems[key] = "Responder type must be one of [team, user, escalation, schedule]"
            elif not any(party.get(k) for k in ("id", "name", "username")):
                problems[key] = "Responder should have an id, name or username."
    return problems


def opsgenie_problems(body: Any) -> dict[str, str]:
    """Why the Alert API answers 422 to this create (its `errors`), empty when it is valid."""
    if not isinstance(body, dict):
        return {"message": "Message can not be empty."}
    problems = _text_problems(body) | _list_problems(body)
    details = body.get("details", {})
    if not isinstance(details, dict) or not all(isinstance(v, str) for v in details.values()):
        problems["details"] = "Details should be a map of strings."
    elif sum(len(k) + len(v) for k, v in details.items()) > 8000:
        problems["details"] = "Details can not be longer than 8000 characters."
    if body.get("priority", "P3") not in PRIORITIES:
        problems["priority"] = "should be one of [ P1, P2, P3, P4, P5 ]"
    return problems


@dataclass
class Alert:
    body: dict[str, Any]
    count: int = 1
    status: str = "open"
    closes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeOpsgenie(Fake):
    alerts: dict[str, Alert] = field(default_factory=dict)  # by alias, the last of each

    def _known(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"GenieKey {API_KEY}"

    async def create(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, lambda b: list(opsgenie_problems(b)))
        if scripted is not None:
            return scripted.response()
        if not self._known(request):
            return answer(401, message="Could not authenticate").response()
        if not isinstance(body, dict):
            return answer(400, message="Invalid JSON body").response()
        if problems := opsgenie_problems(body):
            return unprocessable(problems).response()
        alias = body.get("alias") or str(uuid.uuid4())
        open_one = self.alerts.get(alias)
        if open_one is not None and open_one.status == "open":
            open_one.count += 1
        else:
            self.alerts[alias] = Alert(body)
        return answer(202, result="Request will be processed").response()

    async def close(self, request: web.Request) -> web.StreamResponse:
        body, scripted = await self._record(request, lambda _: [])
        if scripted is not None:
            return scripted.response()
        if not self._known(request):
            return answer(401, message="Could not authenticate").response()
        alias = request.match_info["identifier"]
        alert = self.alerts.get(alias)
        if request.query.get("identifierType") == "alias" and alert is not None:
            alert.status = "closed"
            alert.closes.append(body if isinstance(body, dict) else {})
        return answer(202, result="Request will be processed").response()

    def open_aliases(self) -> list[str]:
        return [alias for alias, alert in self.alerts.items() if alert.status == "open"]


def fake_opsgenie(port: int = 0) -> AbstractAsyncContextManager[FakeOpsgenie]:
    fake = FakeOpsgenie()
    routes = [("/v2/alerts", fake.create), ("/v2/alerts/{identifier}/close", fake.close)]
    return serve_fake(fake, routes, port)


@pytest.fixture
async def opsgenie() -> AsyncIterator[FakeOpsgenie]:
    async with fake_opsgenie() as fake:
        yield fake
