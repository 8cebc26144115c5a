"""Where a Realtime feed's position and rows are kept, and how it resumes from them.

After each committed batch the position (handle, offset, cursor, schema) and the merged rows
that changed are written in one transaction (`kv_write`: the position under ("realtime",
<feed key>), each raw row under ("realtime-rows:<feed key>", <row key>)); a must-refetch
drops the rows, and the next save replaces the stored rows whole.

Resume after a restart: from the stored handle and offset, with the stored rows. Electric sends
only the primary key and the changed columns of an update, so the rows are what turns the first
update after a restart back into a whole run. The position records how many rows were stored
with it; rows that cannot be read, or do not add up (an older relay stored none), make the feed
resume with a snapshot of its stored handle instead, as a 409 does. A kill at any point leaves
the position and the rows of one committed batch: the changes after it are asked for again and
submitted again, which intake deduplicates. The cost: one row write per changed run per batch,
and the rows of the shape's runs kept in the store as in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import orjson

from relay.errors import StoreUnavailable
from relay.sources._shape import START, Position, Shape, stored_rows
from relay.store import KvWrite

log = logging.getLogger("relay.realtime")
NAMESPACE = "realtime"


ROWS_NAMESPACE = "realtime-rows"  # + ":<feed key>": the merged raw rows of the feed


class Positions(Protocol):
    """The part of the Store a follower uses."""

    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    async def kv_list(self, namespace: str) -> dict[str, str]: ...

    async def kv_write(self, write: KvWrite, now: float) -> None: ...

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool: ...


class FeedStore:
    """One feed's stored position and rows (`key` the feed's); `clock` times the grace of the
    finished runs of the shape it resumes (Shape's)."""

    def __init__(self, positions: Positions, key: str, clock: Callable[[], float]) -> None:
        self._positions = positions
        self._key = key
        self._clock = clock
        self._saved: Position | None = None

    async def resume(self) -> Shape:
        """The stored position and rows, or a snapshot of the stored handle without them."""
        stored = Position.loads(await self._positions.kv_get(NAMESPACE, self._key))
        if stored is None or stored.handle is None:
            return Shape(clock=self._clock)
        self._saved = stored
        extra = self._extra(handle=stored.handle, stored_offset=stored.offset)
        rows, problem = await self._stored_rows(stored)
        if rows is None:
            log.info(
                "realtime feed resumes with a snapshot of its stored shape",
                extra={**extra, "reason": problem},
            )
            shape = Shape(Position(schema=stored.schema), clock=self._clock)
            shape.refetch(stored.handle)  # and the stored rows are replaced at the next save
            return shape
        log.info(
            "realtime feed resumes from its stored position", extra={**extra, "rows": len(rows)}
        )
        return Shape(replace(stored, rows=None), rows, self._clock)

    async def _stored_rows(self, stored: Position) -> tuple[dict[str, dict[str, Any]] | None, str]:
        if stored.offset == START or stored.rows is None:
            return stored_rows(stored, {})  # nothing to read
        return stored_rows(stored, await self._positions.kv_list(self._rows_namespace))

    @property
    def _rows_namespace(self) -> str:
        return f"{ROWS_NAMESPACE}:{self._key}"

    async def save(self, shape: Shape, position: Position, *, force: bool) -> None:
        """Store the position with the rows it depends on, in one transaction; on failure keep
        both unsaved (the next save writes every change since the last one that worked)."""
        changes = shape.unsaved()
        saved = self._saved
        same = saved is not None and (saved.handle, saved.offset) == (
            position.handle,
            position.offset,
        )
        if same and not force and not changes:
            return
        position = replace(position, rows=len(shape.rows))
        namespace = self._rows_namespace
        write = KvWrite(
            put=[
                (NAMESPACE, self._key, position.dumps()),
                *((namespace, key, orjson.dumps(row).decode()) for key, row in changes.put.items()),
            ],
            delete=[(namespace, key) for key in changes.delete],
            clear=[namespace] if changes.cleared else [],
        )
        try:
            await self._positions.kv_write(write, time.time())
        except StoreUnavailable:
            log.warning("realtime position not saved; store unavailable", extra=self._extra())
            return
        shape.saved()
        self._saved = position

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"feed": self._key, **fields}
