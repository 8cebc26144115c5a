"""Claims on PostgreSQL: each notification leased by one replica, each digest sent whole.

Ungrouped rows are claimed with FOR UPDATE SKIP LOCKED: replicas claiming at once take disjoint
rows and never wait on each other. A lease (lease_until, lease_holder) keeps a claimed row from
the others until it is marked, the lease ends, or its holder stops renewing its row in
relay_replicas (relay.store._pg_replicas) — a replica that died leaves its rows to whoever claims
once its liveness ran out, not after the whole lease.

Rows of a digest group must go out together. Two replicas each picking some rows of one group
would send two digests, so a group is claimed whole, under a per-group advisory lock taken with
pg_try_advisory_xact_lock: one replica wins the group (every due row of it, even beyond `limit`:
a group is one delivery unit), the other skips it. The winner waits only on row locks held by
single statements (marks), never by another claim, so claims cannot deadlock.
"""

from __future__ import annotations

import logging

import asyncpg

from relay.model import Notification
from relay.store._pg_replicas import lease_free
from relay.store._pg_schema import lock_key
from relay.store._rows import to_notification

log = logging.getLogger("relay.store")

# A row is due at its not_before, or at its lease's end if later: none is due before the first
# unleased row, so only the leased rows ahead of it are read, not the channel's whole backlog.
NEXT_DUE = """
    SELECT MIN(GREATEST(not_before, COALESCE(lease_until, not_before))) FROM relay_outbox
    WHERE channel = $1 AND state = 'pending' AND not_before <= COALESCE((
        SELECT not_before FROM relay_outbox WHERE channel = $1 AND state = 'pending'
        AND lease_until IS NULL ORDER BY not_before LIMIT 1
    ), 'Infinity'::double precision)
"""

_DUE = f"state = 'pending' AND not_before <= $3 AND {lease_free('$3')}"
_CANDIDATES = f"""
    SELECT id, group_key FROM relay_outbox
    WHERE channel = $1 AND state = 'pending' AND not_before <= $2 AND {lease_free("$2")}
    ORDER BY not_before, created_at, id
    LIMIT $3
"""  # noqa: S608
# Each claim returns the lease a row had before it (was_until, was_holder): a row whose lease
# had not ended belonged to a replica taken for dead, and the claim says it took it over.
_CLAIM_SINGLES = f"""
    WITH picked AS (
        SELECT id, lease_until AS was_until, lease_holder AS was_holder FROM relay_outbox
        WHERE channel = $1 AND group_key IS NULL AND {_DUE}
        ORDER BY not_before, created_at, id
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    )
    UPDATE relay_outbox AS o SET lease_until = $2, updated_at = $3, lease_holder = $5
    FROM picked WHERE o.id = picked.id
    RETURNING o.*, picked.was_until, picked.was_holder
"""  # noqa: S608
_WIN_GROUPS = """
    SELECT g FROM unnest($1::text[], $2::bigint[]) AS t(g, k) WHERE pg_try_advisory_xact_lock(k)
"""
# A group with rows of an unfinished claim (handed back unsent, see HAND_BACK, or still leased
# by a stopped replica) sends that claim's rows again, alone: the same digest with the same id,
# as it may have gone out already. Runs that came due meanwhile go in the group's next digest.
_CLAIM_GROUPS = f"""
    WITH due AS (
        SELECT id, group_key, lease_until AS was_until, lease_holder AS was_holder
        FROM relay_outbox
        WHERE group_key = ANY($1::text[]) AND {_DUE}
        FOR UPDATE
    ), held AS (
        SELECT DISTINCT ON (group_key) group_key, ABS(was_until) AS until, was_holder FROM due
        WHERE was_until IS NOT NULL ORDER BY group_key, ABS(was_until), was_holder
    ), picked AS (
        SELECT due.id, due.was_until, due.was_holder FROM due LEFT JOIN held USING (group_key)
        WHERE held.group_key IS NULL OR (ABS(due.was_until) = held.until
            AND due.was_holder IS NOT DISTINCT FROM held.was_holder)
    )
    UPDATE relay_outbox AS o SET lease_until = $2, updated_at = $3, lease_holder = $4
    FROM picked WHERE o.id = picked.id
    RETURNING o.*, picked.was_until, picked.was_holder
"""  # noqa: S608

# The lock an intake holds while it puts runs in a group (relay.store._pg_observe), taken in
# the same sorted order: an intake that decided a run into this digest commits before the
# claim reads the group's rows, so the run goes with them, not alone right after.
_JOINS_DONE = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"


def group_lock(key: str) -> int:
    return lock_key("claim", key)


async def claim(
    conn: asyncpg.Connection, channel: str, now: float, limit: int, lease: tuple[float, str]
) -> list[Notification]:
    """Up to `limit` delivery units of `channel` (a row, or a digest group whole), oldest first,
    leased to `lease` (until, holder)."""
    until, holder = lease
    candidates = await conn.fetch(_CANDIDATES, channel, now, limit)
    singles = sum(1 for row in candidates if row["group_key"] is None)
    groups = list(dict.fromkeys(r["group_key"] for r in candidates if r["group_key"] is not None))
    rows: list[asyncpg.Record] = []
    if not groups:
        if singles:
            rows = await conn.fetch(_CLAIM_SINGLES, channel, until, now, singles, holder)
    else:
        async with conn.transaction():
            if singles:
                rows += await conn.fetch(_CLAIM_SINGLES, channel, until, now, singles, holder)
            won = await conn.fetch(_WIN_GROUPS, groups, [group_lock(g) for g in groups])
            if won:
                keys = [row["g"] for row in won]
                await conn.execute(_JOINS_DONE, sorted({lock_key("group", k) for k in keys}))
                rows += await conn.fetch(_CLAIM_GROUPS, keys, until, now, holder)
    _note_taken_over(channel, now, rows)
    claimed = [to_notification(row) for row in rows]
    claimed.sort(key=lambda n: (n.not_before, n.created_at, n.id))
    return claimed


def _note_taken_over(channel: str, now: float, claimed: list[asyncpg.Record]) -> None:
    """Log the rows taken from replicas that stopped while holding them (free although their
    lease had not ended: their holder is gone). Read from the claimed rows' own former lease:
    the candidates read before the claim missed rows that another replica's claim raced for,
    and the count came out short."""
    held = [r["was_holder"] for r in claimed if (r["was_until"] or 0.0) > now]
    if held:
        log.warning(
            "taking over notifications of a stopped replica",
            extra={"channel": channel, "count": len(held), "replicas": sorted(set(held))},
        )
