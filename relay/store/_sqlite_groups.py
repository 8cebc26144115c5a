"""The SQLite store's digest groups: GroupOps, the SQLiteStore methods that record a digest
sent (group_flushed), pace the next (group_pace) and retime waiting groups when a rule's timings
change (retime_groups)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence

from relay.grouping import TIMINGS_NS, flushed, retimed, timings_changed
from relay.model import Timing
from relay.store._engines import timings_write
from relay.store._rows import RETIMABLE
from relay.store._sqlite_kv import kv_write
from relay.store._sqlite_reader import Reader
from relay.store._sqlite_rows import group_labels_of, load_group
from relay.store._sqlite_writer import Writer

# The rows of a group's later digest not claimed yet wait until the flush's next_at (see
# Store.group_flushed); the digest's own rows, marked sent after, are still leased.
# the group's rows leased (on their way), or handed back (lease_until < 0: a retry's backoff)
_GROUP_LEASED = (
    "SELECT id, created_at, lease_until FROM outbox WHERE group_key = ? AND state = 'pending'"
    " AND (lease_until > ? OR lease_until < 0)"
)
_GROUP_WAITING = (
    "SELECT 1 FROM outbox WHERE group_key = ? AND state = 'pending'"
    " AND (lease_until IS NULL OR lease_until <= ?) LIMIT 1"
)
_PUSH_GROUP = (
    "UPDATE outbox SET not_before = ? WHERE group_key = ? AND state = 'pending'"
    " AND lease_until IS NULL AND not_before < ?"
)

# RETIMABLE names the outbox's columns; {rules} is one `?` per rule
_WAITING_GROUPS = f"""
    SELECT g.key, g.rule, g.last_sent, MIN(o.created_at) FROM groups g
    JOIN outbox o ON o.group_key = g.key
    WHERE g.rule IN ({{rules}}) AND o.not_before > ? AND {RETIMABLE}
    GROUP BY g.key, g.rule, g.last_sent
"""  # noqa: S608
_RETIME_ROWS = f"""
    UPDATE outbox SET not_before = ? WHERE group_key = ? AND not_before > ? AND {RETIMABLE}
"""  # noqa: S608


class GroupOps:
    """Store.group_flushed, group_pace and retime_groups of SQLiteStore."""

    _writer: Writer
    _reader: Reader

    async def group_flushed(
        self, group_key: str, now: float, next_at: float | None = None
    ) -> dict[str, str]:
        """Record that the group's digest went out; return the group's labels."""

        def flush(conn: sqlite3.Connection) -> dict[str, str]:
            state = load_group(conn, group_key)
            if state is not None:
                waiting = conn.execute(_GROUP_WAITING, (group_key, now)).fetchone() is not None
                after = flushed(state, now, next_at, waiting=waiting)
                if next_at is not None:
                    conn.execute(_PUSH_GROUP, (next_at, group_key, next_at))
                conn.execute(
                    "UPDATE groups SET next_flush = ?, last_sent = ?, last_seen = ? WHERE key = ?",
                    (after.next_flush, after.last_sent, after.last_seen, group_key),
                )
            return group_labels_of(conn, group_key)

        return await self._writer.run(flush)

    async def group_pace(
        self, group_key: str, sending: Sequence[str], now: float
    ) -> tuple[float | None, float | None]:
        def read(conn: sqlite3.Connection) -> tuple[float | None, float | None]:
            row = conn.execute("SELECT last_sent FROM groups WHERE key = ?", (group_key,))
            found = row.fetchone()
            leased = conn.execute(_GROUP_LEASED, (group_key, now)).fetchall()
            ours = set(sending)
            first = min((row[1] for row in leased if row[0] in ours), default=math.inf)
            busy = [
                created
                for nid, created, until in leased
                if nid not in ours and (until > 0 or created < first)
            ]
            return (None if found is None else found[0]), min(busy, default=None)

        return await self._reader.run(read)

    async def retime_groups(
        self, timings: Mapping[str, Timing], now: float
    ) -> tuple[list[str], int]:
        def retime(conn: sqlite3.Connection) -> tuple[list[str], int]:
            stored = conn.execute("SELECT key, value FROM kv WHERE namespace = ?", (TIMINGS_NS,))
            changed = timings_changed(dict(stored.fetchall()), timings)
            sql = _WAITING_GROUPS.format(rules=",".join("?" * len(changed)))
            waiting = conn.execute(sql, (*changed, now)).fetchall()
            for key, rule, last_sent, first in waiting:
                due = retimed(last_sent, first, now, changed[rule])
                conn.execute(_RETIME_ROWS, (due, key, now))
                conn.execute("UPDATE groups SET next_flush = ? WHERE key = ?", (due, key))
            kv_write(conn, timings_write(timings), now)
            return sorted(changed), len(waiting)

        return await self._writer.run(retime)
