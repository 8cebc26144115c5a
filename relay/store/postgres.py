"""The PostgreSQL engine: any number of replicas share one database.

PostgreSQL carries the distributed part; relay adds no protocol of its own:
- observe: one transaction for the calls that arrive together (relay.store._pg_batches), with
  advisory and row locks on the runs and digest groups it touches (relay.store._pg_observe), so
  the same update reaching two replicas fires once (sent marks go together the same way);
- claim: FOR UPDATE SKIP LOCKED plus a lease (lease_until, lease_holder), so a notification is
  sent by one replica; a digest group is claimed whole by one replica (relay.store._pg_claim);
- liveness: each replica renews its row in relay_replicas, and a replica that dies leaves its
  leased rows to the others once that row expires (relay.store._pg_replicas);
- try_lead: a named lease row, so one replica at a time follows a Realtime feed;
- the schema: versioned migrations under an advisory lock, run by `open` (relay.store._pg_schema).

Connections come from a pool (asyncpg). Every asyncpg or socket error leaves this engine as
StoreUnavailable (relay.store._pg_errors): callers answer 503 and retry; nothing is lost because
nothing is acknowledged before its commit. Times are the callers' (`now`), like the SQLite engine:
replicas need synchronised clocks (NTP), well within the lease lengths.

PostgresStore is this module's operations on top of its parts: the pool and its connections
(relay.store._pg_pool), the marks after a try (_pg_marks) and the digest groups (_pg_groups).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TypeVar

import asyncpg

from relay.model import Notification, Run, Silence, SilencePage
from relay.store import BirthLease, Decide, HistoryQuery, KvWrite, Observed, Replica, _pg_claim
from relay.store._engines import REPLAY_BATCH, recoveries_of
from relay.store._pg_batches import Batches
from relay.store._pg_errors import retrying
from relay.store._pg_groups import PgGroups
from relay.store._pg_marks import PgMarks
from relay.store._pg_observe import (
    LANES,
    MAX_RUNS,
    ObserveCall,
    call_runs,
    call_settled,
    observe_calls,
)
from relay.store._pg_pool import CLOSE_TIMEOUT_S
from relay.store._pg_replicas import LIVE
from relay.store._pg_rows import (
    ANY_HELD,
    DEAD_AFTER,
    KV_NAMESPACE,
    LEAD,
    NEWEST_DEAD,
    PRUNE,
    PRUNE_BATCH,
    PRUNE_BATCHED,
    REPLAY_CLAIMS,
    REPLAY_NAMED,
    REPLAY_RECOVERIES,
    clean,
    history_sql,
    kv_write,
    silence_params,
    silences_sql,
    to_event,
    write_if_free,
)
from relay.store._rows import lease_end, to_notification, to_silence

_T = TypeVar("_T")


class PostgresStore(PgMarks, PgGroups):
    """The Store on a PostgreSQL database (RELAY_STORE_URL=postgresql://...)."""

    shared = True  # any number of replicas

    # made on the first observe, in the event loop
    _observes: Batches[ObserveCall, list[Observed]] | None = None

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None = None
    ) -> list[Observed]:
        """Calls that arrive while others commit go together (relay.store._pg_batches)."""
        if self._observes is None:
            self._observes = Batches(
                self._observe_calls,
                lanes=LANES,
                max_size=MAX_RUNS,
                size=call_runs,
                settled=call_settled,
            )
        return await self._observes.run(ObserveCall(list(runs), decide, now, lease))

    async def close(self) -> None:
        """The calls queued for a transaction finish first, then the pool's running ones."""
        if self._observes is not None:
            await self._observes.drained(CLOSE_TIMEOUT_S)
        await self.marks_drained(CLOSE_TIMEOUT_S)
        await super().close()

    async def _observe_calls(self, calls: Sequence[ObserveCall]) -> list[list[Observed]]:
        async def attempt(conn: asyncpg.Connection) -> list[list[Observed]]:
            async with conn.transaction():
                return await observe_calls(conn, calls, self.holder)

        async with self._conn() as conn:
            return await retrying(lambda: attempt(conn))

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Lease up to `limit` units: a row, or a digest group whole (never split by replicas)."""
        async with self._conn() as conn:
            lease = (now + lease_s, self.holder)
            return await retrying(lambda: _pg_claim.claim(conn, clean(channel), now, limit, lease))

    async def next_due(self, channel: str) -> float | None:
        value = await self._fetchval(
            _pg_claim.NEXT_DUE,
            clean(channel),
        )
        return None if value is None else float(value)

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._fetch(
            "SELECT * FROM relay_outbox WHERE state = 'dead' ORDER BY updated_at DESC, id LIMIT $1",
            limit,
        )
        return [to_notification(row) for row in rows]

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        """A batch per transaction (REPLAY_BATCH), so that intake goes on between them."""
        async with self._conn() as conn:
            if ids is None:
                return await _replay_dead(conn, now)
            named = [*map(clean, ids)]
            batches = [named[at : at + REPLAY_BATCH] for at in range(0, len(named), REPLAY_BATCH)]
            return sum([await _replay_named(conn, batch, now) for batch in batches])

    async def requeue_recoveries(self, ids: Sequence[str], now: float) -> int:
        status = await self._execute(REPLAY_RECOVERIES, now, [*map(clean, ids)])
        return int(status.rsplit(" ", 1)[-1])

    async def release_leases(self, holder: str | None = None) -> int:
        """Nothing to do, by design: other replicas' leases are theirs while they live.

        SQLite serves one replica, so at its start every lease is a dead process's. Here a
        starting replica has a new holder name, and the leases of its dead predecessor (or of a
        dead delivery worker) are free once that holder's row in relay_replicas expired.
        """
        return 0

    async def get(self, notification_id: str) -> Notification | None:
        rows = await self._fetch("SELECT * FROM relay_outbox WHERE id = $1", clean(notification_id))
        return to_notification(rows[0]) if rows else None

    async def replicas(self) -> list[Replica]:
        return [
            Replica(r["holder"], _channels(r["channels"]), float(r["left_s"]))
            for r in await self._fetch(LIVE)
        ]

    async def counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT state, COUNT(*) AS n FROM relay_outbox GROUP BY state")
        counts = {"pending": 0, "sent": 0, "dead": 0, "muted": 0}
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts

    async def oldest_pending(self, now: float) -> float | None:
        value = await self._fetchval(
            "SELECT MIN(CASE WHEN group_key IS NOT NULL AND attempts = 0 THEN not_before"
            " ELSE created_at END) FROM relay_outbox"
            " WHERE state = 'pending' AND NOT (group_key IS NOT NULL AND attempts = 0"
            " AND not_before > $1)",
            now,
        )
        return None if value is None else float(value)

    async def add_silence(self, silence: Silence) -> bool:
        status = await self._execute(
            "INSERT INTO relay_silences (id, matchers_json, starts_at, ends_at, created_at,"
            " comment, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (id) DO NOTHING",
            *silence_params(silence),
        )
        return status == "INSERT 0 1"

    async def silences(
        self, now: float, *, include_expired: bool = False, page: SilencePage | None = None
    ) -> list[Silence]:
        sql, params = silences_sql(now, include_expired, page)
        return [to_silence(row) for row in await self._fetch(sql, *params)]

    async def silences_version(self) -> int:
        return int(await self._fetchval("SELECT n FROM relay_silences_changes"))

    async def silence(self, silence_id: str) -> Silence | None:
        rows = await self._fetch("SELECT * FROM relay_silences WHERE id = $1", clean(silence_id))
        return to_silence(rows[0]) if rows else None

    async def change_silence(self, silence: Silence, now: float) -> bool:
        status = await self._execute(
            "UPDATE relay_silences SET starts_at = $2, ends_at = $3, comment = $4"
            " WHERE id = $1 AND ends_at > $5",
            clean(silence.id),
            silence.starts_at,
            silence.ends_at,
            clean(silence.comment),
            now,
        )
        return status == "UPDATE 1"

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        rows = await self._fetch(
            "UPDATE relay_silences SET starts_at = LEAST(starts_at, $2),"
            " ends_at = LEAST(ends_at, $2) WHERE id = $1 RETURNING *",
            clean(silence_id),
            now,
        )
        return to_silence(rows[0]) if rows else None

    async def history(self, query: HistoryQuery) -> list[Notification]:
        sql, params = history_sql(query)
        return [to_notification(row) for row in await self._fetch(sql, *params)]

    async def events(self, notification_id: str) -> list[dict[str, object]]:
        rows = await self._fetch(
            "SELECT at, kind, attempts, reason, detail FROM relay_events"
            " WHERE notification_id = $1 ORDER BY at, seq",
            clean(notification_id),
        )
        return [to_event(row) for row in rows]

    async def prune(self, before: float) -> int:
        """A batch of notifications or runs per transaction (PRUNE_BATCHED), then the rest."""
        async with self._conn() as conn:
            counts = [await _in_batches(conn, batched, before) for batched in PRUNE_BATCHED]
            async with conn.transaction():
                for statement in PRUNE:
                    await conn.execute(statement, before)
        return counts[0]

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT run_id, updated_at_ms FROM relay_runs"
            " WHERE run_id = ANY($1::text[]) AND updated_at_ms IS NOT NULL",
            [*map(clean, run_ids)],
        )
        found = {str(row["run_id"]): int(row["updated_at_ms"]) for row in rows}
        return _as_asked(run_ids, found)

    async def kv_get(self, namespace: str, key: str) -> str | None:
        value = await self._fetchval(
            "SELECT value FROM relay_kv WHERE namespace = $1 AND key = $2",
            clean(namespace),
            clean(key),
        )
        return None if value is None else str(value)

    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]:
        rows = await self._fetch(
            "SELECT key, value FROM relay_kv WHERE namespace = $1 AND key = ANY($2::text[])",
            clean(namespace),
            [*map(clean, keys)],
        )
        return _as_asked(keys, {str(row["key"]): str(row["value"]) for row in rows})

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None:
        await self._execute(
            "INSERT INTO relay_kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (namespace, key) DO UPDATE"
            " SET value = excluded.value, updated_at = excluded.updated_at",
            clean(namespace),
            clean(key),
            clean(value),
            now,
        )

    async def kv_list(self, namespace: str) -> dict[str, str]:
        rows = await self._fetch(KV_NAMESPACE, clean(namespace))
        return {str(row["key"]): str(row["value"]) for row in rows}

    async def kv_write(self, write: KvWrite, now: float) -> None:
        async with self._conn() as conn:
            await retrying(lambda: kv_write(conn, write, now))

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Hold the lease `name` for `ttl_s` from `now`: True if `owner` holds it now."""
        held = await self._fetchval(LEAD, clean(name), clean(owner), lease_end(ttl_s, now), now)
        return held is not None

    async def write_if_free(self, name: str, free_since: float, write: KvWrite, now: float) -> bool:
        async with self._conn() as conn:
            return await retrying(lambda: write_if_free(conn, name, free_since, write, now))


def _as_asked(asked: Collection[str], found: dict[str, _T]) -> dict[str, _T]:
    """`found` (keyed as stored, NUL replaced) under the keys as asked, as the one-key reads
    answer them."""
    return {key: found[clean(key)] for key in asked if clean(key) in found}


async def _replay_named(conn: asyncpg.Connection, ids: list[str], now: float) -> int:
    """In one transaction: the dead ones of `ids` back to pending, with the rest of their dead
    digests and the recoveries that follow them (recoveries_of); how many dead ones moved."""

    async def attempt() -> int:
        async with conn.transaction():
            moved: list[str] = []
            if await conn.fetchval(ANY_HELD, ids):  # a digest's: the rest of it first
                moved += [row["id"] for row in await conn.fetch(REPLAY_CLAIMS, now, ids)]
            moved += [row["id"] for row in await conn.fetch(REPLAY_NAMED, now, ids)]
            await conn.execute(REPLAY_RECOVERIES, now, recoveries_of(moved))
            return len(moved)

    return await retrying(attempt)


async def _replay_dead(conn: asyncpg.Connection, now: float) -> int:
    """_replay_named of the rows dead when it began, a batch after another (DEAD_AFTER)."""
    newest = await conn.fetchval(NEWEST_DEAD)
    moved, after = 0, (float("-inf"), "")
    while newest is not None:
        rows = await conn.fetch(DEAD_AFTER, newest, *after, REPLAY_BATCH)
        moved += await _replay_named(conn, [row["id"] for row in rows], now) if rows else 0
        if len(rows) < REPLAY_BATCH:
            return moved
        after = (rows[-1]["updated_at"], rows[-1]["id"])
    return moved


async def _in_batches(
    conn: asyncpg.Connection, batched: tuple[str, tuple[str, ...]], before: float
) -> int:
    """Delete a PRUNE_BATCHED batch per transaction until one comes back short; how many went."""
    choose, deletes = batched
    removed, batch = 0, PRUNE_BATCH
    while batch == PRUNE_BATCH:
        async with conn.transaction():
            ids = [row[0] for row in await conn.fetch(choose, before, PRUNE_BATCH)]
            for statement in deletes:
                await conn.execute(statement, ids)
        removed, batch = removed + len(ids), len(ids)
    return removed


def _channels(names: list[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)
