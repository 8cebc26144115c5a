"""A fake Trigger.dev Realtime server on 127.0.0.1 replaying scripted Electric shape exchanges.

The script is a list of `Exchange`s (`session()` loads fixtures/trigger/electric/
session_tag_feed.json; `native_single_run()` builds the native backend's flavour from
TRIGGER.md §2.3-2.4). A request is answered by, in order:

1. `refuse` (a status for every request, e.g. 401 for a bad key) or the next scripted `faults`
   entry (429, 500, ... one per request): `(status, headers)` answers with a JSON error,
   `(status, headers, body)` with exactly those bytes (an empty body, an HTML page, cut JSON),
   `(status, headers, CUT)` starts a body it never finishes (the connection closes), and
   `(status, headers, SLOW)` answers as 2.-6. would, but only after `slow_s` (past a client's
   timeout: a client gone by then consumes nothing), `(status, headers, TRICKLE)` answers so too,
   but one byte every `trickle_s` (a proxy feeding a slow answer: no read ever times out);
2. the next scripted exchange, when it is released and its request matches on offset, handle
   and live — then it happened: its changes are merged into the shape's rows;
3. offset -1 (a new client, a restart, a refetch): a snapshot of the rows as they are now, every
   released exchange included (Electric: no up-to-date, with `electric-schema`; native: ends
   with up-to-date in the body);
4. not live, the current handle (a client resuming from a stored offset): the released
   exchanges nobody fetched happen first; then from an earlier offset of the shape's log, every
   change since it and up-to-date (Electric's catch-up); from an offset the log lacks, 409;
5. a handle of `others` (Electric holds it for another shape definition: another branch's or
   environment's where clause), at any offset: 400 "The specified shape definition and handle
   do not match" (EL-S `shapes/api.ex`); another handle than the current one: 409 +
   must-refetch with the current handle;
6. the current position, not live: a bare up-to-date; live: the request is held until an
   exchange is released or `live_hold_s` passes (then the bare up-to-date of a long-poll timeout).
   A held request whose client went away (killed) consumes nothing.

Every request is recorded (`requests`: path, query, headers, what answered it). `release(n)`
makes the first n exchanges available (all by default), so a test can let time pass between
them; changes released while no client listens are in the next snapshot or catch-up.
`rotate(handle)` replaces the shape (Electric dropped it): the old handle gets 409.

Like Trigger.dev's proxy (TRIGGER.md §2.1), a request without `x-trigger-electric-version` is
answered with the legacy header names (`electric-shape-id`, `electric-chunk-last-offset`) and
its `shape_id` read as the handle, and one without `x-trigger-api-version` has its DEQUEUED
rows rewritten to EXECUTING; Electric's up-to-date carries `global_last_seen_lsn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from relay.formats.electric_values import TASKRUN_SCHEMA
from tests.fakes.serving import serving, until

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "trigger"
SESSION = FIXTURES / "electric" / "session_tag_feed.json"
RAW_ROWS = FIXTURES / "realtime-run" / "raw-row"
UP_TO_DATE = {"headers": {"control": "up-to-date"}}
CUT = object()  # a scripted fault's body: headers and a start, then the connection closes
SLOW = object()  # a scripted fault's body: the usual answer, after `slow_s`
TRICKLE = object()  # a scripted fault's body: the usual answer, a byte every `trickle_s`
ELECTRIC_VERSION_HEADER = "x-trigger-electric-version"
API_VERSION_HEADER = "x-trigger-api-version"
LEGACY_NAMES = {
    "electric-handle": "electric-shape-id",
    "electric-offset": "electric-chunk-last-offset",
}
PG_SPACE = " \t\n\r\v\f"
SHAPE_MISMATCH = (  # Electric's 400 for a handle it holds for another shape definition
    "The specified shape definition and handle do not match. Please ensure the shape definition"
    " is correct or omit the shape handle from the request to obtain a new one."
)


@dataclass
class Exchange:
    name: str
    offset: str
    handle: str | None
    live: bool
    status: int
    headers: dict[str, str]
    body: list[dict[str, Any]]

    def matches(self, offset: str | None, handle: str | None, live: bool) -> bool:
        return (self.offset, self.handle, self.live) == (offset, handle, live)


@dataclass
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    answer: str = ""


def session() -> list[Exchange]:
    """The six exchanges of session_tag_feed.json, in order."""
    data = json.loads(SESSION.read_text())
    out = []
    for item in data["exchanges"]:
        query, response = item["request"]["query"], item["response"]
        out.append(
            Exchange(
                item["name"],
                query["offset"],
                query.get("handle"),
                query.get("live") == "true",
                response["status"],
                dict(response["headers"]),
                response["body"],
            )
        )
    return out


def schema_header() -> str:
    return session()[0].headers["electric-schema"]


def raw_row(name: str) -> dict[str, Any]:
    """A raw-row fixture (typed values, timestamps without Z) by short name."""
    return json.loads((RAW_ROWS / f"run_{name}.row.json").read_text())


def row_key(internal_id: str) -> str:
    return f'"public"."TaskRun"/"{internal_id}"'


# ---------------------------------------------------------------- Postgres text, as served


def pg_array(items: list[Any], quote_all: bool = False) -> str:
    """A Postgres array literal as Postgres writes it (array_out); native quotes every element."""
    parts = []
    for item in items:
        if isinstance(item, list):
            parts.append(pg_array(item, quote_all))
        elif item is None:
            parts.append("NULL")
        elif quote_all or _needs_quotes(item):
            escaped = item.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{escaped}"')
        else:
            parts.append(item)
    return "{" + ",".join(parts) + "}"


def _needs_quotes(item: str) -> bool:
    special = any(c in '{},"\\' or c in PG_SPACE for c in item)
    return item == "" or item.upper() == "NULL" or special


def pg_timestamp(value: datetime) -> str:
    """Postgres `timestamp` output: space separator, fraction without trailing zeros."""
    text = value.replace(microsecond=0).isoformat(sep=" ")  # years < 1000 zero-padded
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text


def native_value(row: dict[str, Any]) -> dict[str, Any]:
    """A typed raw row as the native backend serves it: ISO without Z, t/f, quoted arrays."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        kind = TASKRUN_SCHEMA.get(name, {}).get("type", "text")
        if value is None:
            out[name] = None
        elif TASKRUN_SCHEMA.get(name, {}).get("dims"):
            out[name] = None if name == "runTags" and not value else pg_array(value, True)
        elif kind == "timestamp":
            out[name] = datetime.fromisoformat(value).isoformat(timespec="milliseconds")
        elif kind == "bool":
            out[name] = "t" if value else "f"
        elif kind in ("int4", "float8"):
            out[name] = str(value)
        elif kind == "jsonb":
            out[name] = json.dumps(value, separators=(",", ":"))
        else:
            out[name] = value
    return out


def _ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp + "+00:00").timestamp() * 1000)


def native_single_run() -> tuple[str, list[Exchange]]:
    """A single run (sdk/run_crashed.json) over the native backend: EXECUTING, a long-poll
    timeout, then CRASHED. Returns the run id and the script."""
    final = raw_row("crashed")
    executing = {
        **final,
        "status": "EXECUTING",
        "updatedAt": "2026-08-20 08:02:14.02",
        "completedAt": None,
        "usageDurationMs": 0,
        "costInCents": 0,
        "error": None,
    }
    handle = f"run-{final['id']}"
    first, last = f"{_ms(executing['updatedAt'])}_0", f"{_ms(final['updatedAt'])}_0"
    headers = {
        "content-type": "application/json",
        "cache-control": "no-store",
        "access-control-expose-headers": "*",
        "electric-handle": handle,
    }
    key = row_key(final["id"])

    def change(op: str, row: dict[str, Any]) -> dict[str, Any]:
        return {"key": key, "value": native_value(row), "headers": {"operation": op}}

    return final["friendlyId"], [
        Exchange(
            "native snapshot",
            "-1",
            None,
            False,
            200,
            {**headers, "electric-offset": first},
            [change("insert", executing), UP_TO_DATE],
        ),
        Exchange(
            "native live timeout",
            first,
            handle,
            True,
            200,
            {**headers, "electric-offset": first, "electric-cursor": "101"},
            [UP_TO_DATE],
        ),
        Exchange(
            "native crashed",
            first,
            handle,
            True,
            200,
            {**headers, "electric-offset": last, "electric-cursor": "102"},
            [change("update", final), UP_TO_DATE],
        ),
    ]


# ---------------------------------------------------------------- the server


@dataclass
class FakeRealtime:
    exchanges: list[Exchange]
    native: bool = False
    live_hold_s: float = 0.3
    slow_s: float = 1.0
    trickle_s: float = 0.05
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    faults: list[tuple[Any, ...]] = field(default_factory=list)
    refuse: int | None = None
    refusal: str = "Invalid or missing secret key"  # the `error` of a refusal
    released: int = -1
    pos: int = 0
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    handle: str | None = None
    offset: str | None = None
    others: set[str] = field(default_factory=set)  # handles of other shape definitions
    cursor: int = 58785300
    log: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.released < 0:
            self.released = len(self.exchanges)

    def release(self, count: int | None = None) -> None:
        self.released = len(self.exchanges) if count is None else count
        self._wake.set()

    def rotate(self, handle: str) -> None:
        """The shape is replaced: its rows stay, its log and old handle are gone."""
        self.handle, self.offset = handle, "0_inf"
        self.log = [(handle, "0_inf", [])]

    @property
    def served(self) -> list[str]:
        return [seen.answer for seen in self.requests]

    async def wait_for(self, predicate: Callable[[Seen], bool], timeout: float = 60.0) -> Seen:
        """The first recorded request (past or future) that satisfies `predicate`."""
        found: list[Seen] = []

        def seen_one() -> bool:
            found.extend(seen for seen in self.requests if predicate(seen))
            return bool(found)

        await until(
            seen_one, self._arrived, timeout, lambda: f"no such request; answered: {self.served}"
        )
        return found[0]

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.path, dict(request.query), dict(request.headers), time.monotonic())
        self.requests.append(seen)
        self._arrived.set()
        if self.faults and self.refuse is None:
            response = await self._fault(seen, request, *self.faults.pop(0))
        else:
            response = _proxied(request, await self._answer(seen, request))
        self._arrived.set()  # the answer is recorded too
        return response

    async def _fault(
        self,
        seen: Seen,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        body: Any = None,
    ) -> web.StreamResponse:
        seen.answer = f"fault {status}"
        if body is SLOW:
            await asyncio.sleep(self.slow_s)
            late = _proxied(request, await self._answer(seen, request))
            seen.answer = f"slow {seen.answer}"
            return late
        if body is TRICKLE:
            return await self._trickle(seen, request)
        if body is None:
            return _json(status, headers, {"error": "scripted failure"})
        if body is not CUT:
            return web.Response(status=status, headers=headers, body=body)
        response = web.StreamResponse(status=status, headers={**headers, "content-length": "4096"})
        await response.prepare(request)
        await response.write(b'[{"key": "')
        assert request.transport is not None
        request.transport.close()
        return response

    async def _trickle(self, seen: Seen, request: web.Request) -> web.StreamResponse:
        """The usual answer, one byte every `trickle_s`, until the client hangs up."""
        answer = _proxied(request, await self._answer(seen, request))
        seen.answer = f"trickled {seen.answer}"
        body = answer.body
        assert isinstance(body, bytes)
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-length"}
        response = web.StreamResponse(status=answer.status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for at in range(len(body)):
                await response.write(body[at : at + 1])
                await asyncio.sleep(self.trickle_s)
        return response

    async def _answer(self, seen: Seen, request: web.Request) -> web.Response:
        if self.refuse is not None:
            seen.answer = f"refused {self.refuse}"
            return _json(self.refuse, {}, {"error": self.refusal})
        legacy = ELECTRIC_VERSION_HEADER not in request.headers
        offset = seen.query.get("offset")
        handle = seen.query.get("shape_id" if legacy else "handle")
        live = seen.query.get("live") == "true"
        deadline = time.monotonic() + self.live_hold_s
        if handle in self.others:
            seen.answer = "400 another shape's handle"
            return _json(400, {}, {"message": SHAPE_MISMATCH})
        while True:
            if request.transport is None or request.transport.is_closing():
                seen.answer = "client gone"  # killed while it waited: nothing is consumed
                return web.Response(status=499)
            nxt = self.exchanges[self.pos] if self.pos < self.released else None
            if nxt is not None and nxt.matches(offset, handle, live):
                self.pos += 1
                self._happen(nxt)
                seen.answer = nxt.name
                return _json(nxt.status, nxt.headers, nxt.body)
            if offset == "-1":
                self._fold()
                seen.answer = "snapshot"
                return self._snapshot()
            if not live and handle is not None and handle == self.handle:
                self._fold()  # what was released while the client was away has happened
                changes = self._since(offset) if offset != self.offset else None
                if changes is not None:
                    seen.answer = "catch-up from the log"
                    return self._up_to_date(False, changes)
            if (handle, offset) != (self.handle, self.offset):
                seen.answer = "409 unknown handle"
                body = [{"headers": {"control": "must-refetch"}}]
                return _json(409, {"electric-handle": self.handle or ""}, body)
            remaining = deadline - time.monotonic()
            if not live or remaining <= 0:
                seen.answer = "up-to-date" if not live else "live timeout"
                return self._up_to_date(live)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    def _happen(self, exchange: Exchange) -> None:
        if exchange.status == 409:
            self.handle = exchange.headers.get("electric-handle") or f"{self.handle}-next"
            self.offset = "0_inf"
            return
        changes = [message for message in exchange.body if "key" in message]
        for message in changes:
            key, value = message["key"], message.get("value") or {}
            if message["headers"].get("operation") == "delete":
                self.rows.pop(key, None)
            else:
                self.rows[key] = {**self.rows.get(key, {}), **value}
        self.handle = exchange.headers["electric-handle"]
        self.offset = exchange.headers["electric-offset"]
        self.log.append((self.handle, self.offset, changes))
        if "electric-cursor" in exchange.headers:
            self.cursor = int(exchange.headers["electric-cursor"])

    def _since(self, offset: str | None) -> list[dict[str, Any]] | None:
        """The changes of the current shape after `offset`; None if its log lacks that offset."""
        entries = [(at, changes) for handle, at, changes in self.log if handle == self.handle]
        ends = [at for at, _ in entries]
        if offset not in ends:
            return None
        return [m for _, changes in entries[ends.index(offset) + 1 :] for m in changes]

    def _fold(self) -> None:
        """Released exchanges nobody fetched happened anyway: a snapshot includes them."""
        while self.pos < self.released and self.exchanges[self.pos].status == 200:
            self._happen(self.exchanges[self.pos])
            self.pos += 1

    def _headers(self, *, schema: bool, cursor: bool) -> dict[str, str]:
        headers = {"electric-handle": self.handle or "", "electric-offset": self.offset or "0_inf"}
        if self.native:
            headers["cache-control"] = "no-store"
        elif schema:
            headers["electric-schema"] = schema_header()
        if cursor:
            self.cursor += 20
            headers["electric-cursor"] = str(self.cursor)
        return headers

    def _snapshot(self) -> web.Response:
        if self.handle is None:
            self.handle, self.offset = "fake-handle-1", "0_inf"
        self.log.append((self.handle, self.offset or "0_inf", []))
        body: list[dict[str, Any]] = [
            {"key": key, "value": value, "headers": {"operation": "insert"}}
            for key, value in self.rows.items()
        ]
        if self.native:
            body.append(UP_TO_DATE)
        return _json(200, self._headers(schema=True, cursor=False), body)

    def _up_to_date(self, live: bool, changes: list[dict[str, Any]] | None = None) -> web.Response:
        headers = self._headers(schema=not live, cursor=live)
        control = UP_TO_DATE
        if not self.native:
            headers["electric-up-to-date"] = ""
            lsn = (self.offset or "0").partition("_")[0]
            control = {"headers": {**UP_TO_DATE["headers"], "global_last_seen_lsn": lsn}}
        return _json(200, headers, [*(changes or []), control])


def _proxied(request: web.Request, response: web.Response) -> web.Response:
    """The answer as Trigger.dev's proxy passes it on to this request: the legacy header names
    without the electric version header, DEQUEUED as EXECUTING without the API version."""
    if ELECTRIC_VERSION_HEADER not in request.headers:
        for name, legacy in LEGACY_NAMES.items():
            if name in response.headers:
                response.headers[legacy] = response.headers.pop(name)
    if API_VERSION_HEADER not in request.headers and response.text is not None:
        response.text = response.text.replace('"status": "DEQUEUED"', '"status": "EXECUTING"')
    return response


def _json(status: int, headers: dict[str, str], body: Any) -> web.Response:
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return web.Response(
        status=status, headers=headers, text=json.dumps(body), content_type="application/json"
    )


def with_exchange(script: list[Exchange], after: int, extra: Exchange) -> list[Exchange]:
    """`script` with `extra` inserted after index `after`; the later exchanges at the old end
    offset (asked for or answered) move to the offset `extra` ends at."""
    old, new = script[after].headers["electric-offset"], extra.headers["electric-offset"]
    out = [*script[: after + 1], extra]
    for exchange in script[after + 1 :]:
        headers = dict(exchange.headers)
        if headers.get("electric-offset") == old:
            headers["electric-offset"] = new
        offset = new if exchange.offset == old else exchange.offset
        out.append(replace(exchange, offset=offset, headers=headers))
    return out


@asynccontextmanager
async def fake_realtime(
    exchanges: list[Exchange], *, native: bool = False, live_hold_s: float = 0.3
) -> AsyncIterator[FakeRealtime]:
    """A running FakeRealtime on an ephemeral port of 127.0.0.1."""
    fake = FakeRealtime(exchanges, native=native, live_hold_s=live_hold_s)
    app = web.Application()
    app.router.add_get("/realtime/v1/{tail:.*}", fake.handle_request)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as fake.url:
        try:
            yield fake
        finally:
            fake.release()
