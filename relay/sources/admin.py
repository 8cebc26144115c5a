"""Admin API: silences (POST/GET /v1/silences, GET /v1/silences/{id}, DELETE expires one) and
notification history (GET /v1/notifications, GET /v1/notifications/{id} with its events).

Behind server.admin_token (falling back to server.auth_token), like the dead-letter API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.errors import InputError
from relay.history import event_view, find_history, notification_view
from relay.silences import new_silence, parse_matchers, parse_time, silence_view
from relay.sources._body import json_object

if TYPE_CHECKING:
    from relay.model import Silence
    from relay.sources.http import AddRoute, HttpDeps

MAX_SILENCE_BODY = 64 * 1024
log = logging.getLogger("relay.http")


def _said(what: str, silence: Silence) -> None:
    """An operator's change to what is muted, in the log as Alertmanager's audit would have it."""
    extra = {"silence": silence.id, "matchers": silence.matchers, "created_by": silence.created_by}
    log.info(what, extra=extra)


class SilenceHandlers:
    def __init__(self, deps: HttpDeps) -> None:
        self.deps = deps

    def _denied(self, request: web.Request) -> web.Response | None:
        from relay.sources.http import authorized, unauthorized  # noqa: PLC0415

        return None if authorized(request, self.deps.admin_token()) else unauthorized()

    async def _changed(self) -> None:
        """Return once every process mutes by the changed silences: this one's caches at once,
        other replicas' once they re-read them (a failure posted to another replica right after
        the answer is muted, or no longer muted; as `relay silence add` waits too)."""
        self.deps.silences_changed()
        await asyncio.sleep(self.deps.silences_settle_s)

    def refuse_create(self, request: web.Request) -> web.Response | None:
        """What POST /v1/silences refuses from its headers alone (also before `100 Continue`)."""
        from relay.sources.http import refuse_declared  # noqa: PLC0415

        return self._denied(request) or refuse_declared(request, MAX_SILENCE_BODY)

    async def create(self, request: web.Request) -> web.Response:
        from relay.sources.http import error, json_response, read_limited  # noqa: PLC0415

        if (refused := self.refuse_create(request)) is not None:
            return refused
        body = await read_limited(request, MAX_SILENCE_BODY)
        if isinstance(body, web.Response):
            return body
        now = self.deps.clock()
        try:
            silence = _silence_from(body, now)
        except InputError as exc:
            return error(400, exc.message, exc.field or None)
        await self.deps.store.add_silence(silence)
        await self._changed()
        _said("silence created", silence)
        where = {"Location": f"/v1/silences/{silence.id}"}  # where GET and DELETE find it
        return json_response(silence_view(silence, now), 201, where)

    async def list(self, request: web.Request) -> web.Response:
        from relay.sources.http import json_response  # noqa: PLC0415

        if (denied := self._denied(request)) is not None:
            return denied
        now = self.deps.clock()
        everything = request.query.get("expired", "").lower() in ("1", "true", "yes")
        silences = await self.deps.store.silences(now, include_expired=everything)
        return json_response({"silences": [silence_view(s, now) for s in silences]})

    async def get(self, request: web.Request) -> web.Response:
        from relay.sources.http import error, json_response  # noqa: PLC0415

        if (denied := self._denied(request)) is not None:
            return denied
        now = self.deps.clock()
        ident = request.match_info["id"]
        silences = await self.deps.store.silences(now, include_expired=True)
        found = next((s for s in silences if s.id == ident), None)
        if found is None:
            return error(404, "no silence with that id", "id")
        return json_response(silence_view(found, now))

    async def expire(self, request: web.Request) -> web.Response:
        from relay.sources.http import error, json_response  # noqa: PLC0415

        if (denied := self._denied(request)) is not None:
            return denied
        now = self.deps.clock()
        silence = await self.deps.store.expire_silence(request.match_info["id"], now)
        if silence is None:
            return error(404, "no silence with that id", "id")
        await self._changed()
        _said("silence expired", silence)
        return json_response(silence_view(silence, now))


def _silence_from(body: bytes, now: float) -> Any:
    fields = ("matchers", "starts_at", "ends_at", "comment", "created_by")
    data = json_object(body, fields, "expected a JSON object")
    if "ends_at" not in data:
        raise InputError("ends_at", "required field is missing")
    starts = data.get("starts_at")
    for field in ("comment", "created_by"):
        if not isinstance(data.get(field, ""), str):
            raise InputError(field, "expected a string")
    return new_silence(
        parse_matchers(data.get("matchers")),
        ends_at=parse_time(data["ends_at"], "ends_at"),
        starts_at=None if starts is None else parse_time(starts, "starts_at"),
        now=now,
        comment=data.get("comment", ""),
        created_by=data.get("created_by", ""),
    )


class HistoryHandlers(SilenceHandlers):
    async def list_notifications(self, request: web.Request) -> web.Response:
        from relay.sources.http import error, json_response  # noqa: PLC0415

        if (denied := self._denied(request)) is not None:
            return denied
        try:
            rows = await find_history(self.deps.store, _single(request), self.deps.clock())
        except InputError as exc:
            return error(400, exc.message, exc.field or None)
        return json_response({"notifications": [notification_view(n) for n in rows]})

    async def get_notification(self, request: web.Request) -> web.Response:
        from relay.sources.http import error, json_response  # noqa: PLC0415

        if (denied := self._denied(request)) is not None:
            return denied
        ident = request.match_info["id"]
        found = await self.deps.store.get(ident)
        if found is None:
            return error(404, "no notification with that id", "id")
        events = [event_view(e) for e in await self.deps.store.events(ident)]
        return json_response({**notification_view(found), "events": events})


def _single(request: web.Request) -> dict[str, str]:
    """The query parameters, each given once: `state=sent&state=dead` answered the first alone,
    which reads as both."""
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            raise InputError(name, "given more than once; give it once")
    return dict(request.query)


def add_silence_routes(add: AddRoute, deps: HttpDeps) -> None:
    h = HistoryHandlers(deps)
    add("POST", "/v1/silences", h.create, h.refuse_create)
    add("GET", "/v1/silences", h.list)
    add("GET", "/v1/silences/{id}", h.get)
    add("DELETE", "/v1/silences/{id}", h.expire)
    add("GET", "/v1/notifications", h.list_notifications)
    add("GET", "/v1/notifications/{id}", h.get_notification)
