"""Row conversions and read queries of relay.store.postgres (history, events, silences)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from relay.model import GroupState, RunState, Silence, SilencePage
from relay.store import HistoryQuery, KvWrite, Tries
from relay.store._rows import HAND_BACK, SAME_CLAIM, RowsEvent

FIRED_SEPARATOR = "\x1f"


def clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; SQLite can. Keep such (hostile) input storable."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def clean_opt(text: str | None) -> str | None:
    return None if text is None else clean(text)


# One statement: the rows of one message ($1 ids, $2 their attempts: `g.tries` in the
# assignments) change only while pending (and held: {fence}), and each one's event is written
# only if it did; the ids it changed come back.
UPDATE_PENDING = """
    WITH changed AS (
        UPDATE relay_outbox SET {assignments}
        FROM unnest($1::text[], $2::integer[]) AS g(nid, tries)
        WHERE relay_outbox.id = g.nid AND relay_outbox.state = 'pending'{fence}
        RETURNING relay_outbox.id, g.tries
    )
    INSERT INTO relay_events (notification_id, kind, at, attempts, reason, detail)
    SELECT id, $3::text, $4::float8, tries, $5::text, $6::text FROM changed
    RETURNING notification_id
"""
# Dead rows go back a batch per transaction (relay.store._engines.REPLAY_BATCH): `relay dlq
# replay --all` over 100,000 dead was one statement in one transaction, holding every dead
# row's lock until it committed. $1 now, $2 the batch's ids.
_BACK = f"""
    UPDATE relay_outbox SET state = 'pending', attempts = 0, not_before = $1,
        lease_until = {HAND_BACK}, reason = NULL, last_error = NULL, updated_at = $1"""  # noqa: S608
_NAMED = "state = 'dead' AND id = ANY($2::text[])"


def _logged(where: str) -> str:
    """The rows `where` picks moved back, each with its 'replayed' event; their ids."""
    return f"""
    WITH moved AS ({_BACK} WHERE {where} RETURNING id), logged AS (
        INSERT INTO relay_events (notification_id, kind, at, attempts)
        SELECT id, 'replayed', $1, 0 FROM moved
    )
    SELECT id FROM moved"""  # noqa: S608


REPLAY_NAMED = _logged(_NAMED)
# The dead digests of the named rows go whole: the rest of their claims (SAME_CLAIM) with them,
# in a statement of its own run only for a digest's rows (it reads every dead row)
_HELD_NAMED = f"{_NAMED} AND lease_until IS NOT NULL"
ANY_HELD = """
    SELECT 1 FROM relay_outbox WHERE state = 'dead' AND id = ANY($1::text[])
    AND lease_until IS NOT NULL LIMIT 1
"""
REPLAY_CLAIMS = _logged(
    f"state = 'dead' AND lease_until IS NOT NULL AND ({SAME_CLAIM}) IN"  # noqa: S608
    f" (SELECT {SAME_CLAIM} FROM relay_outbox WHERE {_HELD_NAMED})"
)
# The next batch of the rows dead when the replay began (dead by the newest death then, $1), in
# the order they died (the relay_outbox_state index), after the last of the batch before ($2,
# $3): a row that dies again meanwhile is not taken again.
DEAD_AFTER = """
    SELECT id, updated_at FROM relay_outbox WHERE state = 'dead' AND updated_at <= $1
    AND updated_at >= $2 AND (updated_at, id) > ($2, $3) ORDER BY updated_at, id LIMIT $4
"""
NEWEST_DEAD = "SELECT MAX(updated_at) FROM relay_outbox WHERE state = 'dead'"
# the recoveries of replayed alerts follow them again (relay.store._engines.recoveries_of)
REPLAY_RECOVERIES = """
    WITH moved AS (
        UPDATE relay_outbox SET state = 'pending', attempts = 0, not_before = $1,
            lease_until = NULL, reason = NULL, last_error = NULL, updated_at = $1
        WHERE state IN ('sent', 'dead') AND id = ANY($2::text[])
        RETURNING id
    )
    INSERT INTO relay_events (notification_id, kind, at, attempts)
    SELECT id, 'replayed', $1, 0 FROM moved
"""
# Finished notifications (with their events) and runs go a batch per transaction: one
# DELETE of a pass over a large store (the first after a shorter retention or weeks without
# pruning: 1,000,000 notifications took 27 s) outlasted a role's statement_timeout and was
# rolled back whole, every 10 minutes, while the store grew. Rows another transaction holds
# are left to a later batch or pass (SKIP LOCKED): two replicas pruning at once (their passes
# start together) wait for each other otherwise. Locked from their choice to their deletion,
# the rows cannot change meanwhile (a replay making a dead or sent row pending again waits,
# and finds it gone).
PRUNE_BATCH = 2000
# (choose a batch's rows and lock them, $2 at most; delete them): the ids go as a parameter,
# so each DELETE finds its rows by index whatever the planner's statistics say (one DELETE
# with a CTE of the ids, estimated at a few, ran 10 minutes over 40,000 fresh rows)
PRUNE_BATCHED = (
    (
        "SELECT id FROM relay_outbox WHERE state IN ('sent', 'muted', 'dead')"
        " AND updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        (
            "DELETE FROM relay_events WHERE notification_id = ANY($1::text[])",
            "DELETE FROM relay_outbox WHERE id = ANY($1::text[])",
        ),
    ),
    (
        "SELECT run_id FROM relay_runs WHERE seen_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
        ("DELETE FROM relay_runs WHERE run_id = ANY($1::text[])",),
    ),
)
PRUNE = (
    "DELETE FROM relay_groups WHERE last_seen < $1 AND next_flush IS NULL",
    "DELETE FROM relay_silences WHERE ends_at < $1",
    # forgotten with their runs: the inhibit sources seen (relay.inhibition.SOURCES) and the
    # Slack threads of runs and groups (relay.channels._slack_threads: each reply touches one),
    # the recipients a partly sent mail is done with (relay.channels.email.SENT)
    "DELETE FROM relay_kv WHERE namespace IN ('inhibit_source', 'slack_thread', 'email_sent')"
    " AND updated_at < $1",
    # named leases that ended before (a Slack thread's start, a Realtime feed nobody follows
    # any more): an ended lease is as good as none, and there is one per Slack thread started.
    # One handed back (expires_at 0) ended when it was (updated_at): a feed's lease handed
    # back by a replica stopping stays, as Store.write_if_free reads when it was last held.
    "DELETE FROM relay_leases WHERE GREATEST(expires_at, updated_at) < $1",
    # inhibit windows (relay.inhibition.NAMESPACE: the value is when the window ends) closed
    # before, and pile-ups (COUNTS) or newest sources (OPENED) no update touched since: one row
    # per `equal` value ever seen
    "DELETE FROM relay_kv WHERE namespace = 'inhibit' AND updated_at < $1"
    r" AND CASE WHEN value ~ '^\d+(\.\d*)?$' THEN value::float8 ELSE 0 END < $1",
    "DELETE FROM relay_kv WHERE namespace IN ('inhibit_count', 'inhibit_opened')"
    " AND updated_at < $1",
)
LEAD = """
    INSERT INTO relay_leases AS l (name, owner, expires_at, updated_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,
        updated_at = excluded.updated_at
    WHERE l.owner = excluded.owner OR l.expires_at <= excluded.updated_at
    RETURNING owner
"""

KV_NAMESPACE = "SELECT key, value FROM relay_kv WHERE namespace = $1"
KV_CLEAR = "DELETE FROM relay_kv WHERE namespace = ANY($1::text[])"
KV_DELETE = """
    DELETE FROM relay_kv WHERE (namespace, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
KV_PUT = """
    INSERT INTO relay_kv (namespace, key, value, updated_at)
    SELECT namespace, key, value, $4 FROM unnest($1::text[], $2::text[], $3::text[])
        AS t (namespace, key, value)
    ON CONFLICT (namespace, key) DO UPDATE
    SET value = excluded.value, updated_at = excluded.updated_at
"""


async def kv_write(conn: asyncpg.Connection, write: KvWrite, now: float) -> None:
    """One transaction: clear, delete, put (three statements, whatever the number of keys)."""
    puts = {(clean(ns), clean(key)): clean(value) for ns, key, value in write.put}
    async with conn.transaction():
        if write.clear:
            await conn.execute(KV_CLEAR, [clean(ns) for ns in write.clear])
        if write.delete:
            namespaces = [clean(ns) for ns, _ in write.delete]
            await conn.execute(KV_DELETE, namespaces, [clean(key) for _, key in write.delete])
        if puts:
            namespaces, keys = [ns for ns, _ in puts], [key for _, key in puts]
            await conn.execute(KV_PUT, namespaces, keys, list(puts.values()), now)


# a row for a lease without one (free since ever) for the DELETE below to lock: a try_lead of
# it meanwhile waits for the commit, then takes the lease anew
LEASE_ROW = """
    INSERT INTO relay_leases (name, owner, expires_at, updated_at)
    VALUES ($1, '', '-Infinity', '-Infinity') ON CONFLICT (name) DO NOTHING
"""
# the lease if it was last held (its end, or when it was handed back, expires_at 0) by $2
DROP_FREE_LEASE = """
    DELETE FROM relay_leases WHERE name = $1 AND GREATEST(expires_at, updated_at) <= $2
    RETURNING name
"""


async def write_if_free(
    conn: asyncpg.Connection, name: str, free_since: float, write: KvWrite, now: float
) -> bool:
    """Store.write_if_free: the lease's row deleted, and locked until the commit."""
    async with conn.transaction():
        await conn.execute(LEASE_ROW, clean(name))
        if await conn.fetchval(DROP_FREE_LEASE, clean(name), free_since) is None:
            return False
        await kv_write(conn, write, now)
        return True


def to_state(row: asyncpg.Record) -> RunState:
    fired = row["fired"]
    return RunState(
        updated_at_ms=row["updated_at_ms"],
        status=row["status"],
        fired=frozenset(fired.split(FIRED_SEPARATOR)) if fired else frozenset(),
        cost_cents=float(row["cost_cents"]),
        duration_ms=float(row["duration_ms"]),
    )


def rows_params(rows: Tries, event: RowsEvent) -> tuple[Any, ...]:
    """$1..$6 of UPDATE_PENDING."""
    kind, at, reason, detail = event
    return (
        [clean(ident) for ident, _ in rows],
        [attempts for _, attempts in rows],
        kind,
        at,
        None if reason is None else clean(reason),
        None if detail is None else clean(detail),
    )


def to_group(row: asyncpg.Record) -> GroupState:
    return GroupState(row["key"], row["next_flush"], row["last_sent"], row["last_seen"])


def silence_params(s: Silence) -> tuple[Any, ...]:
    return (
        clean(s.id),
        orjson.dumps(s.matchers).decode(),
        s.starts_at,
        s.ends_at,
        s.created_at,
        clean(s.comment),
        clean(s.created_by),
    )


_FILTERS = (
    ("run_id", "run_id"),
    ("rule", "rule"),
    ("channel", "channel"),
    ("state", "state"),
)


def history_sql(query: HistoryQuery) -> tuple[str, Sequence[Any]]:
    """The SELECT of Store.history: newest first, filtered, capped at 10,000 rows."""
    clauses: list[str] = []
    params: list[Any] = []
    for field, column in _FILTERS:
        value = getattr(query, field)
        if value is not None:
            params.append(clean(str(value)))
            clauses.append(f"{column} = ${len(params)}")
    if query.since is not None:
        params.append(float(query.since))
        clauses.append(f"created_at >= ${len(params)}")
    if query.after is not None:  # a range on the created_at index, then the ties
        params += [float(query.after[0]), clean(query.after[1])]
        at, ident = f"${len(params) - 1}", f"${len(params)}"
        clauses.append(f"created_at <= {at} AND (created_at < {at} OR id > {ident})")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(max(1, min(query.limit, 10_000)))
    sql = f"SELECT * FROM relay_outbox{where} ORDER BY created_at DESC, id LIMIT ${len(params)}"  # noqa: S608
    return sql, params


def silences_sql(
    now: float, include_expired: bool, page: SilencePage | None
) -> tuple[str, Sequence[Any]]:
    """The SELECT of Store.silences: in creation order; of a page, from after its `after`."""
    clauses: list[str] = []
    params: list[Any] = []
    if not include_expired:
        params.append(now)
        clauses.append(f"ends_at > ${len(params)}")
    if page is not None and page.after is not None:
        params += [float(page.after[0]), clean(page.after[1])]
        clauses.append(f"(created_at, id) > (${len(params) - 1}, ${len(params)})")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    if page is not None:
        params.append(page.limit)
    tail = "" if page is None else f" LIMIT ${len(params)}"
    return f"SELECT * FROM relay_silences{where} ORDER BY created_at, id{tail}", params  # noqa: S608


def to_labels(text: str) -> dict[str, str]:
    return dict(orjson.loads(text))


def to_event(row: asyncpg.Record) -> dict[str, object]:
    return {
        "at": row["at"],
        "kind": row["kind"],
        "attempts": row["attempts"],
        "reason": row["reason"],
        "detail": row["detail"],
    }
