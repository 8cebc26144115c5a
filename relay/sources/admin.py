"""Admin API: dead letters (GET /v1/dlq, POST /v1/dlq/replay, POST /v1/dlq/{id}/replay), silences
(POST/GET /v1/silences, GET /v1/silences/{id}, DELETE expires one) and notification history
(GET /v1/notifications, GET /v1/notifications/{id} with its events).

Behind server.admin_token (falling back to server.auth_token).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from relay.errors import InputError
from relay.history import (
    DLQ_LISTED,
    NARROWING,
    dead_ids,
    dead_letter_views,
    dead_query,
    digest_hint,
    digest_id_note,
    event_view,
    find_history,
    notification_view,
    refuse_unknown,
)
from relay.silences.listing import find_silences, silence_listing
from relay.silences.matchers import matcher_warnings
from relay.silences.shapes import SILENCE_FIELDS, UNKNOWN_SILENCE_FIELD, silence_from, silence_view
from relay.sources._body import json_object
from relay.sources._replies import (
    authorized,
    bad_input,
    error,
    json_response,
    read_limited,
    refuse_declared,
    unauthorized,
)

if TYPE_CHECKING:
    from relay.model import Silence
    from relay.silences.listing import SilenceListing
    from relay.sources._middleware import AddRoute
    from relay.sources.http import HttpDeps
    from relay.store import HistoryQuery

MAX_SILENCE_BODY = 64 * 1024
log = logging.getLogger("relay.http")
NOT_DEAD = "no dead notification with that id"
LISTING = "GET /v1/dlq"


def _said(what: str, silence: Silence) -> None:
    """An operator's change to what is muted, in the log as Alertmanager's audit would have it."""
    extra = {"silence": silence.id, "matchers": silence.matchers, "created_by": silence.created_by}
    log.info(what, extra=extra)


class DeadLetterHandlers:
    def __init__(self, deps: HttpDeps) -> None:
        self.deps = deps

    async def dlq_list(self, request: web.Request) -> web.Response:
        if not authorized(request, self.deps.admin_token()):
            return unauthorized(request)
        try:
            _query(request, ())
        except InputError as exc:
            return bad_input(exc)
        rows = await self.deps.store.dead_letters(DLQ_LISTED + 1)  # more: one over
        dead = dead_letter_views(rows[:DLQ_LISTED])
        return json_response({"dead": dead, "more": len(rows) > DLQ_LISTED})

    async def dlq_replay_one(self, request: web.Request) -> web.Response:
        if not authorized(request, self.deps.admin_token()):
            return unauthorized(request)
        ident = request.match_info["id"]
        moved = await self.deps.store.replay([ident], self.deps.clock())
        if not moved:
            return error(404, NOT_DEAD + digest_hint([ident], LISTING), "id")
        self.deps.wake_all()
        log.info("dead notification replayed", extra=await self._about(ident))
        return json_response({"replayed": moved})

    async def _about(self, ident: str) -> dict[str, Any]:
        """A log line's run id, rule and channel of notification `ident`, as every line about
        a notification carries them."""
        row = await self.deps.store.get(ident)
        extra: dict[str, Any] = {"notification_id": ident}
        if row is not None:
            extra.update(run_id=row.run_id or None, rule=row.rule, channel=row.channel)
        return extra

    def refuse_replay(self, request: web.Request) -> web.Response | None:
        """What POST /v1/dlq/replay refuses from its headers alone (also before `100 Continue`)."""
        if not authorized(request, self.deps.admin_token()):
            return unauthorized(request)
        return refuse_declared(request, MAX_REPLAY_BODY)

    async def dlq_replay_all(self, request: web.Request) -> web.Response:
        """Every dead notification, or (as `relay dlq replay ID|--all`) the ones a JSON body
        names: `{"id": ...}` or `{"ids": [...]}`; `{"all": true}` or no body is every one, and
        `channel`, `rule`, `since` narrow that (`relay dlq replay --all --channel C`)."""
        if (refused := self.refuse_replay(request)) is not None:
            return refused
        body = await read_limited(request, MAX_REPLAY_BODY)
        if isinstance(body, web.Response):
            return body
        try:
            chosen = replay_selection(body, self.deps.clock())
        except InputError as exc:
            return bad_input(exc)
        ids = chosen.ids
        if chosen.narrowed is not None:  # every dead one of a channel, rule or time
            ids = await dead_ids(self.deps.store, chosen.narrowed)
        moved = await self.deps.store.replay(ids, self.deps.clock()) if ids != [] else 0
        if chosen.ids and not moved:  # said in the field the body named them in
            return error(404, NOT_DEAD + digest_hint(chosen.ids, LISTING), chosen.field)
        self.deps.wake_all()
        log.info("dead notifications replayed", extra={"replayed": moved})
        return json_response({"replayed": moved})


class SilenceHandlers(DeadLetterHandlers):
    def _denied(self, request: web.Request) -> web.Response | None:
        return None if authorized(request, self.deps.admin_token()) else unauthorized(request)

    async def _changed(self) -> None:
        """Return once every process mutes by the changed silences: this one's caches at once,
        other replicas' once they re-read them (a failure posted to another replica right after
        the answer is muted, or no longer muted; as `relay silence add` waits too)."""
        self.deps.silences_changed()
        await asyncio.sleep(self.deps.silences_settle_s)

    def refuse_create(self, request: web.Request) -> web.Response | None:
        """What POST /v1/silences refuses from its headers alone (also before `100 Continue`)."""
        return self._denied(request) or refuse_declared(request, MAX_SILENCE_BODY)

    async def create(self, request: web.Request) -> web.Response:
        if (refused := self.refuse_create(request)) is not None:
            return refused
        body = await read_limited(request, MAX_SILENCE_BODY)
        if isinstance(body, web.Response):
            return body
        now = self.deps.clock()
        try:
            silence = _silence_from(body, now)
        except InputError as exc:
            return bad_input(exc)
        await self.deps.store.add_silence(silence)
        await self._changed()
        _said("silence created", silence)
        where = {"Location": f"/v1/silences/{silence.id}"}  # where GET and DELETE find it
        view = silence_view(silence, now)
        if warnings := self._warnings(silence):
            view["warnings"] = warnings
        return json_response(view, 201, where)

    def _warnings(self, silence: Silence) -> list[str]:
        """What the silence names that the running config does not (`matcher_warnings`),
        logged as well: a typo would mute nothing, and the operator would not know."""
        warnings = matcher_warnings(silence.matchers, self.deps.silence_names())
        for warning in warnings:
            log.warning(
                "silence names what the config does not",
                extra={"silence": silence.id, "warning": warning},
            )
        return warnings

    async def list(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        now = self.deps.clock()
        try:
            silences = await find_silences(self.deps.store, _listing(request), now)
        except InputError as exc:
            return bad_input(exc)
        return json_response({"silences": [silence_view(s, now) for s in silences]})

    async def get(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        found = await self.deps.store.silence(request.match_info["id"])
        if found is None:
            return error(404, "no silence with that id", "id")
        return json_response(silence_view(found, self.deps.clock()))

    async def expire(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        now = self.deps.clock()
        silence = await self.deps.store.expire_silence(request.match_info["id"], now)
        if silence is None:
            return error(404, "no silence with that id", "id")
        await self._changed()
        _said("silence expired", silence)
        return json_response(silence_view(silence, now))


def _silence_from(body: bytes, now: float) -> Silence:
    data = json_object(body, SILENCE_FIELDS, "expected a JSON object", UNKNOWN_SILENCE_FIELD)
    return silence_from(data, now)


class HistoryHandlers(SilenceHandlers):
    async def list_notifications(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            rows = await find_history(self.deps.store, _single(request), self.deps.clock())
        except InputError as exc:
            return bad_input(exc)
        return json_response({"notifications": [notification_view(n) for n in rows]})

    async def get_notification(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        ident = request.match_info["id"]
        found = await self.deps.store.get(ident)
        if found is None:
            note = digest_id_note(ident, "GET /v1/notifications?rule=RULE")
            return error(404, f"no notification with that id{note}", "id")
        events = [event_view(e) for e in await self.deps.store.events(ident)]
        return json_response({**notification_view(found), "events": events})


def _single(request: web.Request, repeatable: tuple[str, ...] = ()) -> dict[str, str]:
    """The query parameters, each given once but the `repeatable` ones (of those, the first
    is in the answer): `state=sent&state=dead` answered the first alone, which reads as both."""
    for name in request.query:
        if name not in repeatable and len(request.query.getall(name)) > 1:
            raise InputError(name, "given more than once; give it once")
    return dict(request.query)


def _query(request: web.Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query parameters of a list without a filter of history's: each one of `known`,
    given once (as GET /v1/notifications refuses a typo rather than ignore it)."""
    params = _single(request)
    refuse_unknown(params, known)
    return params


SILENCE_PARAMS = ("expired", "filter", "limit", "after")


def _listing(request: web.Request) -> SilenceListing:
    """GET /v1/silences's parameters: `filter` as Alertmanager's (repeated: each must fit),
    `expired`, and a page's `limit` and `after` (the last id of the page before)."""
    params = _single(request, repeatable=("filter",))
    refuse_unknown(params, SILENCE_PARAMS)
    return silence_listing(
        request.query.getall("filter", []),
        expired="also" if _yes(params.get("expired"), "expired") else "no",
        limit=params.get("limit"),
        after=params.get("after"),
    )


def _yes(value: str | None, field: str) -> bool:
    """A true/false query parameter: `true`, `1`, `yes` or `false`, `0`, `no` (any case)."""
    if value is None or value.lower() in ("false", "0", "no"):
        return False
    if value.lower() in ("true", "1", "yes"):
        return True
    raise InputError(field, "expected true or false")


def add_admin_routes(add: AddRoute, deps: HttpDeps) -> None:
    h = HistoryHandlers(deps)
    add("GET", "/v1/dlq", h.dlq_list)
    add("POST", "/v1/dlq/replay", h.dlq_replay_all, h.refuse_replay)
    add("POST", "/v1/dlq/{id}/replay", h.dlq_replay_one)
    add("POST", "/v1/silences", h.create, h.refuse_create)
    add("GET", "/v1/silences", h.list)
    add("GET", "/v1/silences/{id}", h.get)
    add("DELETE", "/v1/silences/{id}", h.expire)
    add("GET", "/v1/notifications", h.list_notifications)
    add("GET", "/v1/notifications/{id}", h.get_notification)


MAX_REPLAY_BODY = 1024 * 1024


@dataclass(frozen=True)
class Selection:
    """What a POST /v1/dlq/replay body asks for: the `ids` it names (in `field`: `id` or
    `ids`), else every dead notification, or those `narrowed` finds."""

    field: str = ""
    ids: list[str] | None = None
    narrowed: HistoryQuery | None = None


def replay_selection(body: bytes, now: float) -> Selection:
    """A POST /v1/dlq/replay body read; a body naming ids never replays the others."""
    data = _replay_body(body)
    if data is None:
        return Selection()
    ids = _named_ids(data)
    if ids is not None:
        if given := [k for k in ("all", *NARROWING) if k in data]:
            raise InputError(given[0], f'give "{given[0]}" or the ids, not both')
        return Selection("id" if "id" in data else "ids", ids)
    if data.get("all", True) is not True:
        raise InputError("all", 'expected true, or name the notifications in "ids"')
    return Selection(narrowed=_narrowing(data, now))


def _replay_body(body: bytes) -> dict[str, Any] | None:
    if not body.strip():
        return None
    expected = 'expected a JSON object: {"ids": [...]}, {"id": ...} or {"all": true}'
    unknown = f"unknown field; use id, ids or all (with {', '.join(NARROWING)})"
    return json_object(body, ("id", "ids", "all", *NARROWING), expected, unknown)


def _narrowing(data: dict[str, Any], now: float) -> HistoryQuery | None:
    """The dead notifications `{"channel": ..., "rule": ..., "since": ...}` (beside `all`, or
    alone) narrow a replay of every one to, as `relay dlq replay --all --channel C`; None: all."""
    narrow = {k: data[k] for k in NARROWING if k in data}
    for key, value in narrow.items():
        if not isinstance(value, str) or not value:
            raise InputError(key, "expected a non-empty string")
    return dead_query(narrow, now) if narrow else None


def _named_ids(data: dict[str, Any]) -> list[str] | None:
    if "id" in data and "ids" in data:
        raise InputError("ids", 'give "id" or "ids", not both')
    if "id" in data:
        if not isinstance(data["id"], str) or not data["id"]:
            raise InputError("id", "expected a notification id")
        return [data["id"]]
    if "ids" not in data:
        return None
    ids = data["ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise InputError("ids", "expected a non-empty list of notification ids")
    return ids
