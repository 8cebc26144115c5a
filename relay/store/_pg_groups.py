"""The PostgreSQL store's digest groups: PgGroups, the PostgresStore methods that record a
digest sent (group_flushed), pace the next (group_pace) and retime waiting groups when a rule's
timings change (retime_groups, one replica at a time under TIMINGS_LOCK).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from relay.grouping import TIMINGS_NS, retimed, timings_changed
from relay.model import Timing
from relay.store._engines import timings_write
from relay.store._pg_errors import retrying
from relay.store._pg_pool import PgPool
from relay.store._pg_replicas import lease_free
from relay.store._pg_rows import KV_NAMESPACE, clean, kv_write, to_labels
from relay.store._pg_schema import lock_key
from relay.store._rows import RETIMABLE

TIMINGS_LOCK = lock_key("digest", "timings")  # Store.retime_groups, one at a time
_WAITING_GROUPS = f"""
    SELECT g.key, g.rule, g.last_sent, MIN(o.created_at) AS first
    FROM relay_groups g JOIN relay_outbox o ON o.group_key = g.key
    WHERE g.rule = ANY($1::text[]) AND o.not_before > $2 AND {RETIMABLE}
    GROUP BY g.key, g.rule, g.last_sent
"""  # noqa: S608 (RETIMABLE names the outbox's columns)
_RETIME_ROWS = f"""
    UPDATE relay_outbox SET not_before = $1 WHERE group_key = $2 AND not_before > $3
    AND {RETIMABLE}
"""  # noqa: S608
# A digest went out (its rows, marked sent after this, still leased): the group's later digest
# (runs that joined while this one was due, held back or on its way: rows pending, not leased)
# and its unclaimed rows wait until $3 (now + group_interval), as grouping.flushed says.
_GROUP_FLUSHED = """
    WITH pushed AS (
        UPDATE relay_outbox SET not_before = $3::double precision
        WHERE group_key = $1 AND state = 'pending' AND lease_until IS NULL
            AND not_before < $3::double precision
    )
    UPDATE relay_groups SET last_sent = $2, last_seen = GREATEST(last_seen, $2),
        next_flush = CASE
            WHEN $3::double precision IS NOT NULL AND (next_flush > $2 OR EXISTS (
                SELECT 1 FROM relay_outbox WHERE group_key = $1 AND state = 'pending'
                AND (lease_until IS NULL OR lease_until <= $2)))
            THEN GREATEST(next_flush, $3::double precision)
            WHEN next_flush > $2 THEN next_flush END
    WHERE key = $1 RETURNING labels_json
"""

# Before a digest goes: the group's last flush, and whether another digest of it is leased,
# or handed back (a retry's backoff, a stop) with runs older than all of this one's: that one
# goes first, as it would have but for its failure.
_GROUP_PACE = f"""
    SELECT (SELECT last_sent FROM relay_groups WHERE key = $1) AS last_sent, (
        SELECT MIN(created_at) FROM relay_outbox WHERE group_key = $1 AND state = 'pending'
        AND id <> ALL($2::text[]) AND (NOT {lease_free("$3")} OR (lease_until < 0
            AND created_at < (SELECT MIN(created_at) FROM relay_outbox WHERE id = ANY($2))))
    ) AS busy
"""  # noqa: S608


class PgGroups(PgPool):
    """Store.group_flushed, group_pace and retime_groups of PostgresStore."""

    async def group_flushed(
        self, group_key: str, now: float, next_at: float | None = None
    ) -> dict[str, str]:
        labels = await self._fetchval(_GROUP_FLUSHED, clean(group_key), now, next_at)
        return {} if labels is None else to_labels(labels)

    async def group_pace(
        self, group_key: str, sending: Sequence[str], now: float
    ) -> tuple[float | None, float | None]:
        [row] = await self._fetch(_GROUP_PACE, clean(group_key), [clean(i) for i in sending], now)
        return row["last_sent"], row["busy"]

    async def retime_groups(
        self, timings: Mapping[str, Timing], now: float
    ) -> tuple[list[str], int]:
        async with self._conn() as conn:
            return await retrying(lambda: _retime_groups(conn, timings, now))


async def _retime_groups(
    conn: asyncpg.Connection, timings: Mapping[str, Timing], now: float
) -> tuple[list[str], int]:
    """Store.retime_groups: under TIMINGS_LOCK, replicas starting or reloading together re-time
    a change once (the second reads the timings the first stored)."""
    timings = {clean(rule): timing for rule, timing in timings.items()}  # as the rows name them
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", TIMINGS_LOCK)
        stored = await conn.fetch(KV_NAMESPACE, TIMINGS_NS)
        changed = timings_changed({row["key"]: row["value"] for row in stored}, timings)
        waiting = await conn.fetch(_WAITING_GROUPS, list(changed), now)
        due = [
            (retimed(row["last_sent"], row["first"], now, changed[row["rule"]]), row["key"])
            for row in waiting
        ]
        await conn.executemany(_RETIME_ROWS, [(at, key, now) for at, key in due])
        await conn.executemany("UPDATE relay_groups SET next_flush = $1 WHERE key = $2", due)
        await kv_write(conn, timings_write(timings), now)
    return sorted(changed), len(due)
