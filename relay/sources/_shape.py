"""The Realtime protocol without I/O (TRIGGER.md §2.2): one Electric shape stream's position,
merged rows and what to emit (what a feed asks for is relay.sources._feed's, how an answer's
body reads as messages relay.sources._messages').

`Shape.query()` gives the query parameters of the next request; `Shape.receive()` applies a
200/204 response and returns a `Batch` of merged rows when the response ends up-to-date (the
control message in the body, or Electric's `electric-up-to-date` header; the native backend only
sends the message); `Shape.refetch()` handles `must-refetch` (409 or control message). Rows are
kept by key and updates merged into them: Electric sends only the primary key and the changed
columns of an update, the native backend whole rows. `Shape.unsaved()` is what changed in the
rows since `Shape.saved()`, so that a caller can store the rows beside the position and resume
from both (`Shape(position, rows)`).

`Shape.drop_final(grace_s)` forgets the rows of runs in a final status that have not changed
for `grace_s` (by the shape's clock; rows it resumed with, and those of a snapshot or catch-up,
count from their own `updatedAt` or `completedAt`, so neither a restart nor a must-refetch
starts their grace again; a live change from when it came): a run's status
never changes once final, and without it a shape, which no run leaves (a tags feed's window is
fixed per handle), held every run it ever matched. An update of a run not held that is not a
whole row cannot be merged: it is skipped and counted (`Batch.skipped`); a whole one is taken
as a new row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from relay.formats.electric import is_final_row, is_whole_row, row_changed_at
from relay.formats.packets import MAX_DEPTH
from relay.sources._messages import (
    ShapeError,
    check,
    headers_of,
    oddities,
    read_messages,
    shallow,
)

START = "-1"
# A final row a snapshot brings, finished before the grace, is dropped no sooner than this after
# it came: a server that answers with the same rows again (no long poll: a naive one, a caching
# proxy) would have it taken as new at each answer, and submitted again.
SNAPSHOT_HOLD_S = 300.0


@dataclass(frozen=True)
class Position:
    """Where a stream is: what the next request sends, and the column types seen."""

    handle: str | None = None
    offset: str = START
    cursor: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    rows: int | None = None  # how many rows were stored with it; None: none (an older relay)

    def dumps(self) -> str:
        data = {
            "handle": self.handle,
            "offset": self.offset,
            "cursor": self.cursor,
            "schema": self.schema,
            "rows": self.rows,
        }
        return orjson.dumps(data).decode()

    @classmethod
    def loads(cls, text: str | None) -> Position | None:
        """The stored position, or None when there is none or it cannot be read."""
        try:
            data = orjson.loads(text or "null")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        handle, offset = data.get("handle"), data.get("offset")
        cursor, schema, rows = data.get("cursor"), data.get("schema"), data.get("rows")
        return cls(
            handle if isinstance(handle, str) else None,
            offset if isinstance(offset, str) else START,
            cursor if isinstance(cursor, str) else "",
            schema if isinstance(schema, dict) else {},
            rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else None,
        )


def stored_rows(
    position: Position, texts: Mapping[str, str]
) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """The rows stored with `position` (JSON text by key), or None and why they cannot be used."""
    if position.offset == START:
        return None, "no offset stored"
    if position.rows is None:
        return None, "no rows stored with the position (an older relay)"
    rows: dict[str, dict[str, Any]] = {}
    for key, text in texts.items():
        try:
            row = orjson.loads(text)
        except orjson.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            return None, "a stored row cannot be read"
        rows[key] = row
    if len(rows) != position.rows:
        return None, f"{len(rows)} rows stored, the position counts {position.rows}"
    return rows, ""


@dataclass(frozen=True)
class Batch:
    """Rows changed since the last up-to-date (merged, wire values), and the position after."""

    rows: list[dict[str, Any]]
    position: Position
    skipped: int = 0  # updates of runs not held (dropped once final) that were not whole rows


@dataclass(frozen=True)
class RowChanges:
    """What the stored rows lack: drop them all first (`cleared`), then delete and put."""

    cleared: bool
    put: dict[str, dict[str, Any]]
    delete: list[str]

    def __bool__(self) -> bool:
        return self.cleared or bool(self.put) or bool(self.delete)


class Shape:
    """One shape stream. `rows` resumes it from stored rows at `position` (not live: the first
    request catches up from the stored offset, as Electric's client does when it resumes).
    `clock` (monotonic seconds) times when each row in a final status last changed (drop_final);
    `wall` (epoch seconds) reads how long ago a resumed row last changed from its columns."""

    def __init__(
        self,
        position: Position | None = None,
        rows: dict[str, dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.position = position or Position()
        self.live = False  # becomes true at the first up-to-date
        self.rows: dict[str, dict[str, Any]] = dict(rows or {})
        self._clock, self._wall = clock, wall
        # the keys of rows in a final status, with when they last changed: oldest first
        self._final = _resumed_final(self.rows, clock(), wall())
        self._unsorted = False  # _final took a row older than its newest (a snapshot's)
        self._taken: dict[str, float] = {}  # when the rows timed from their own updatedAt came
        self._skipped = 0  # updates not merged since the last batch (Batch.skipped)
        self._changed: dict[str, None] = {}  # an ordered set of keys
        self._unsaved: set[str] = set()  # keys changed since saved()
        self._cleared = False  # every stored row is void (a refetch) since saved()
        self.idle = False  # the last response changed no row (a long poll's timeout)
        self.oddities: list[str] = []  # how the last response differs from Electric's
        # the last response neither moved the offset on nor ended up-to-date: asking again gets
        # the same (a proxy stripping electric-offset in front of Electric's snapshot)
        self.stalled = False
        # the last live response moved on without up-to-date: Electric's log chunk (its live
        # answers end up-to-date only once they reach the end of the shape's log, which is cut
        # in 10 MiB chunks), so the follower is a chunk or more behind
        self.behind = False

    def query(self) -> dict[str, str]:
        """Query parameters for the next request (besides the feed's own)."""
        params = {"log": "full", "offset": self.position.offset}
        if self.position.handle:
            params["handle"] = self.position.handle
        if self.live:
            params["live"] = "true"
            params["cursor"] = self.position.cursor
        return params

    def refetch(self, handle: str | None) -> None:
        """must-refetch: forget every row and start again from a snapshot of `handle`."""
        self.rows.clear()
        self._final.clear()
        self._taken.clear()
        self._changed.clear()
        self._unsaved.clear()
        self._cleared = True
        self.live = False
        self.position = Position(handle=handle, schema=self.position.schema)

    def unsaved(self) -> RowChanges:
        """The row changes since the last `saved()`, as they stand now."""
        put = {key: self.rows[key] for key in self._unsaved if key in self.rows}
        delete = [key for key in self._unsaved if key not in self.rows]
        return RowChanges(self._cleared, put, [] if self._cleared else delete)

    def saved(self) -> None:
        """The rows are stored as they are now."""
        self._unsaved.clear()
        self._cleared = False

    def drop_final(self, grace_s: float) -> int:
        """Forget the rows in a final status unchanged for `grace_s` (but those still to be
        emitted); a delete for unsaved(). How many were dropped."""
        before = self._clock() - grace_s
        taken_before = self._clock() - min(grace_s, SNAPSHOT_HOLD_S)
        if self._unsorted:
            self._final = dict(sorted(self._final.items(), key=lambda item: item[1]))
            self._unsorted = False
        old = []
        for key, since in self._final.items():
            if since > before:
                break
            if key not in self._changed and self._taken.get(key, taken_before) <= taken_before:
                old.append(key)
        for key in old:
            del self._final[key], self.rows[key]
            self._taken.pop(key, None)
            self._unsaved.add(key)
        return len(old)

    def receive(self, status: int, headers: Mapping[str, str], body: bytes) -> Batch | None:
        """Apply one 200/204 response; the rows to emit when it ends up-to-date, else None.
        All or nothing: a response that cannot be read (ShapeError) changes neither the rows nor
        the position, so asking again cannot skip the changes after its bad message."""
        messages = read_messages(body) if status != 204 else []
        position = _advance(self.position, headers)
        for message in messages:
            check(message)
        self.oddities = oddities(status, headers, messages)
        if not any(headers_of(m).get("control") == "must-refetch" for m in messages):
            self.oddities += _moved_oddly(self.position, position)
        moved, self.position = position.offset != self.position.offset, position
        up_to_date = status == 204 or "electric-up-to-date" in headers
        self.idle, self.stalled, self.behind = True, False, False
        for message in messages:
            control = headers_of(message).get("control")
            if control == "must-refetch":
                self.refetch(None)
                self.idle = False
                return None
            if control == "up-to-date":
                up_to_date = True
            elif "key" in message and self._apply(message):
                self.idle = False
        if not up_to_date:
            if not moved:  # Electric's chunks (of a snapshot, of the log) move on
                self.oddities.append("no up-to-date: its rows wait for one")
            self.stalled, self.behind = not moved, moved and self.live
            return None
        self.live = True
        rows = [dict(self.rows[key]) for key in self._changed]
        self._changed.clear()
        skipped, self._skipped = self._skipped, 0
        return Batch(rows, self.position, skipped)

    def _apply(self, message: dict[str, Any]) -> bool:
        """Apply one change; False when it changed nothing (a row served again as it is)."""
        key = str(message["key"])
        operation = headers_of(message).get("operation")
        value: dict[str, Any] = message.get("value") or {}  # a dict but for a delete: check()
        if operation == "delete":
            self._unsaved.add(key)
            self.rows.pop(key, None)
            self._final.pop(key, None)
            self._taken.pop(key, None)
            self._changed.pop(key, None)
            return True
        held = self.rows.get(key)
        if held is None and operation == "update" and not is_whole_row(value):
            self._skipped += 1  # a run dropped once final: nothing to merge the columns into
            return False
        # An update: Electric sends the primary key and the changed columns only. An insert
        # merges too: Electric inserts no key the shape holds (a delete comes first), but a
        # server may send every change as an insert of the changed columns.
        row = {**(held or {}), **value}
        if held == row:
            return False
        self._unsaved.add(key)
        self.rows[key] = row
        self._changed[key] = None
        self._final.pop(key, None)  # a change: its grace starts again (at the end: newest)
        self._taken.pop(key, None)
        if is_final_row(row):
            self._finished(key, row)
        return True

    def _finished(self, key: str, row: Mapping[str, Any]) -> None:
        """Time the grace of a row in a final status: a live change from now (Trigger.dev
        wrote it just now); a row of a snapshot or a catch-up from its own `updatedAt`, as a
        resumed row's. Timed from now, a must-refetch (or a new feed) held every run of the
        snapshot for the whole grace: a tags feed's day of finished runs, not an hour's."""
        now = self._clock()
        since = now if self.live else _changed_since(row, now, self._wall())
        if since < now:  # held SNAPSHOT_HOLD_S at least: a row sent again finds it unchanged
            self._taken[key] = now
        newest = next(reversed(self._final.values()), since)
        self._unsorted = self._unsorted or since < newest
        self._final[key] = since


def _resumed_final(
    rows: Mapping[str, Mapping[str, Any]], now: float, wall_now: float
) -> dict[str, float]:
    """The final rows resumed with, each with when it last changed on the shape's clock, oldest
    first: its `updatedAt` (or `completedAt`) that long before `now`. Counted from the resume
    instead, the grace started again at every restart, and a relay restarted more often than
    it lasts never dropped a run; a row without either column, or one in the future (clocks
    apart), counts from the resume."""
    since = {
        key: _changed_since(row, now, wall_now) for key, row in rows.items() if is_final_row(row)
    }
    return dict(sorted(since.items(), key=lambda item: item[1]))


def _changed_since(row: Mapping[str, Any], now: float, wall_now: float) -> float:
    """When `row` last changed on the shape's clock (`now`): its `updatedAt` (or
    `completedAt`) that long before; `now` without either, or for one in the future."""
    changed = row_changed_at(row)
    return now - (0.0 if changed is None else max(0.0, wall_now - changed))


def _moved_oddly(before: Position, after: Position) -> list[str]:
    """How a position moved as Electric's never does: a new handle comes only with a
    must-refetch (409), an offset only goes on (both taken all the same, as Electric's client
    takes them: the changes asked for again, intake drops)."""
    if before.handle is not None and after.handle != before.handle:
        return ["a new handle without must-refetch"]
    if _offset_order(after.offset) < _offset_order(before.offset):
        return ["an offset before the one asked from"]
    return []


def _offset_order(offset: str) -> tuple[float, ...]:
    """An offset as it sorts: `-1`, then `<lsn or ms>_<op or inf>` (`0_inf`: a snapshot's end);
    one of another form sorts as `-1` (never taken for going back)."""
    try:
        return tuple(float(part) for part in offset.split("_", 1))
    except ValueError:
        return (-1.0,)


def _advance(position: Position, headers: Mapping[str, str]) -> Position:
    """The position after a response. Electric always sends its handle and offset; a server
    that leaves one out is asked again from the ones the stream has (`-1` and no handle before
    the first): what it sends again, intake drops."""
    handle = headers.get("electric-handle") or None
    offset = headers.get("electric-offset") or None
    schema = position.schema
    if "electric-schema" in headers:
        try:
            parsed = shallow(headers["electric-schema"], MAX_DEPTH)
        except orjson.JSONDecodeError:
            raise ShapeError("electric-schema is not JSON") from None
        if isinstance(parsed, dict):
            schema = parsed
    return replace(
        position,
        handle=handle or position.handle,
        offset=offset or position.offset,
        cursor=headers.get("electric-cursor", position.cursor),
        schema=schema,
    )
