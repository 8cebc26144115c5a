"""The PostgreSQL engine: any number of replicas share one database.

PostgreSQL carries the distributed part; relay adds no protocol of its own:
- observe: one transaction per call, with advisory and row locks on the runs and digest groups it
  touches (relay.store._pg_observe), so the same update reaching two replicas fires once;
- claim: FOR UPDATE SKIP LOCKED plus a lease (lease_until, lease_holder), so a notification is
  sent by one replica; a digest group is claimed whole by one replica (relay.store._pg_claim);
- liveness: each replica renews its row in relay_replicas, and a replica that dies leaves its
  leased rows to the others once that row expires (relay.store._pg_replicas);
- try_lead: a named lease row, so one replica at a time follows a Realtime feed;
- the schema: versioned migrations under an advisory lock, run by `open` (relay._pg_schema).

Connections come from a pool (asyncpg). Every asyncpg or socket error leaves this engine as
StoreUnavailable (relay.store._pg_connect): callers answer 503 and retry; nothing is lost because
nothing is acknowledged before its commit. Times are the callers' (`now`), like the SQLite engine:
replicas need synchronised clocks (NTP), well within the lease lengths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from relay.errors import StoreUnavailable
from relay.grouping import TIMINGS_NS, retimed, timings_changed
from relay.model import Notification, Run, Silence, SilencePage, Timing
from relay.store import BirthLease, Decide, HistoryQuery, KvWrite, Observed, Tries, _pg_claim
from relay.store._engines import handing_over, recoveries_of, timings_write
from relay.store._pg_connect import (
    DB_ERRORS,
    ConnectGate,
    check_url,
    clean,
    clean_opt,
    connect_args,
    dsn_and_timeout,
    keep_session,
    retrying,
    session_args,
    unavailable,
    unreadable_tls_file,
)
from relay.store._pg_grants import INSUFFICIENT_PRIVILEGE, Grants
from relay.store._pg_observe import lease_at_birth, observe
from relay.store._pg_replicas import DEFAULT_TIMEOUT_S, Heartbeat, lease_free, new_holder
from relay.store._pg_rows import (
    LEAD,
    PRUNE,
    REPLAY,
    REPLAY_RECOVERIES,
    UPDATE_PENDING,
    history_sql,
    kv_write,
    rows_params,
    silence_params,
    silences_sql,
    to_event,
    to_labels,
    write_if_free,
)
from relay.store._pg_schema import lock_key, migrate
from relay.store._rows import (
    HAND_BACK,
    RETIMABLE,
    RowsEvent,
    lease_end,
    mute_kind,
    to_notification,
    to_silence,
)

POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0  # /readyz answers 503 by then: a health check must not hang with the server
_T = TypeVar("_T")
_KV_NAMESPACE = "SELECT key, value FROM relay_kv WHERE namespace = $1"
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
# A row put off unsent (not keeping its claim) joins its group's next digest when one is due
# later: put off from this replica's clock, it came due a few ms after the one another replica
# had just set, and went beside it.
_POSTPONE = f"""
    UPDATE relay_outbox SET not_before = CASE WHEN $5::boolean THEN $2 ELSE COALESCE((
            SELECT g.next_flush FROM relay_groups AS g
            WHERE g.key = relay_outbox.group_key AND g.next_flush > $3), $2) END,
        lease_until = CASE WHEN $5::boolean THEN {HAND_BACK} END, updated_at = $3
    WHERE id = $1 AND state = 'pending' AND COALESCE(lease_holder, $4) = $4
"""  # noqa: S608
_HASTEN = """
    UPDATE relay_outbox SET not_before = $2, updated_at = $2
    WHERE id = $1 AND state = 'pending' AND lease_until IS NULL AND not_before > $2
"""
# A replica frozen mid-send (a VM pause, a long GC) is taken for dead and its rows sent again
# by another: thawed, it may change a row only while it still holds it. Its failure (retry,
# dead), mute or postponement landed on the other's lease: a retry handed that lease back, for
# a third send while the second was in flight; dead killed a row the other then delivered (its
# `sent` found it dead). A send is recorded whoever holds the row: it went out. A row nobody
# holds (never claimed, or released) stays free to change.
HELD = " AND COALESCE(relay_outbox.lease_holder, ${n}) = ${n}"
# A failure's mark committed, its reply lost, is written again (dispatch's write through
# blips, 0.25 s and more later; 30 s when the reply never came): meanwhile a backoff as short
# as min_backoff allows (a few ms) made the row due, and this replica, its holder still, claimed it
# again. The repeat released that claim mid-send, for a third send, and set attempts back. A
# send tries at least once, so each failure's mark raises attempts: a row whose attempts reached
# the mark's was marked already, by this write or a later claim's. A mark also hands the lease
# back (HAND_BACK: none, or negative), as a replay does, which sets attempts back to 0: a row
# claimed once and not leased now was marked already, and maybe replayed since (the repeat
# killed it again). A row never claimed (no holder) stays free to change, as HELD says.
ONCE = (
    " AND relay_outbox.attempts < g.tries"
    " AND (relay_outbox.lease_until > 0 OR relay_outbox.lease_holder IS NULL)"
)

_MARKED_HERE = """
    SELECT o.id FROM relay_outbox o JOIN unnest($1::text[], $2::integer[]) AS g(nid, tries)
    ON o.id = g.nid WHERE o.attempts = g.tries AND o.state = $3 AND o.lease_holder = $4
"""


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


class PostgresStore:
    """The Store on a PostgreSQL database (RELAY_STORE_URL=postgresql://...)."""

    def __init__(
        self,
        url: str,
        *,
        pool_max: int = POOL_MAX,
        replica_timeout_s: float = DEFAULT_TIMEOUT_S,
        upgrade: bool = True,
    ) -> None:
        check_url(url)
        self._upgrade = upgrade  # False: an older schema is refused, not migrated
        self._url, self._connect_timeout = dsn_and_timeout(url, CONNECT_TIMEOUT_S)
        self._session = session_args(url)
        self._pool_max = pool_max
        self._heartbeat = Heartbeat(new_holder(), replica_timeout_s)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._ping: asyncio.Future[Any] | None = None
        self._grants = Grants()

    def __repr__(self) -> str:  # never the URL: it may carry a password
        return "PostgresStore()"

    @property
    def holder(self) -> str:
        """This replica's name in the leases it takes and in relay_replicas."""
        return self._heartbeat.holder

    async def open(self) -> None:
        """Connect the pool, create or migrate the schema (safe with replicas starting) and
        start this replica's heartbeat."""
        async with self._opening:
            if self._pool is not None:
                return
            self._check_tls_files()
            try:
                pool = await asyncpg.create_pool(
                    self._url,
                    min_size=POOL_MIN,
                    max_size=self._pool_max,
                    timeout=self._connect_timeout,
                    command_timeout=COMMAND_TIMEOUT_S,
                    reset=keep_session,
                    connect=ConnectGate().connect,
                    **self._args(),
                )
            except DB_ERRORS as exc:
                raise unavailable("store open failed", exc) from exc
            try:
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    await migrate(conn, upgrade=self._upgrade)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, DB_ERRORS):
                    raise unavailable("store open failed", exc) from exc
                raise
            self._pool = pool
            self._grants.forget()
            try:
                await self._heartbeat.start(self._connect)
            except BaseException:
                await self.close()
                raise

    def _args(self) -> dict[str, Any]:
        """asyncpg's keyword arguments beside the DSN: TLS, the application name."""
        return {**connect_args(self._url), **self._session}

    def _check_tls_files(self) -> None:
        if (name := unreadable_tls_file(self._url)) is not None:
            raise StoreUnavailable(f"store open failed: TLS: the file {name} names cannot be read")

    async def _connect(self) -> asyncpg.Connection:
        """A connection outside the pool (this replica's heartbeat)."""
        return await asyncpg.connect(
            self._url,
            timeout=self._connect_timeout,
            command_timeout=COMMAND_TIMEOUT_S,
            **self._args(),
        )

    async def migrate(self) -> tuple[int, int]:
        """`relay migrate`: create or migrate the schema alone; (version before, after)."""
        self._check_tls_files()
        try:
            conn = await asyncpg.connect(self._url, timeout=self._connect_timeout, **self._args())
        except DB_ERRORS as exc:
            raise unavailable("store open failed", exc) from exc
        try:
            return await migrate(conn)
        except DB_ERRORS as exc:
            raise unavailable("store migration failed", exc) from exc
        finally:
            with contextlib.suppress(*DB_ERRORS):
                await conn.close(timeout=CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        """Refuse new calls, let running ones finish, end this replica's heartbeat (its leases
        left are free at once: nothing here will send them), close the pool; later calls are
        refused."""
        pool, self._pool = self._pool, None
        if pool is None:
            await self._heartbeat.stop()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_TIMEOUT_S)
        await self._heartbeat.stop()
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except DB_ERRORS:  # TimeoutError included: a connection that will not give up
            pool.terminate()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; asyncpg and socket errors leave as StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is closed")
        self._active += 1
        self._idle.clear()
        began = self._grants.era()
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                if self._heartbeat.overdue():  # its own connection refused, the pool's working
                    await self._heartbeat.renew_on(conn)
                try:
                    yield conn
                except asyncpg.ReadOnlySQLTransactionError:
                    # The session took the database's default_transaction_read_only when it
                    # connected and keeps it: once the database is writable again, only a new
                    # connection can write. Kept, it refused every write for good.
                    conn.terminate()
                    raise
        except DB_ERRORS as exc:
            if getattr(exc, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:  # a grant taken back
                self._grants.forget(began)
            raise unavailable("store unavailable", exc) from exc
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            return list(await conn.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._conn() as conn:
            return await conn.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._conn() as conn:
            return str(await conn.execute(sql, *args))

    async def ping(self) -> None:
        """A round trip, or StoreUnavailable within PING_TIMEOUT_S: a server that stopped
        answering (a partition, a frozen host) held the query until COMMAND_TIMEOUT_S and its
        cancel longer. The unanswered round trip is left running; later pings wait on it."""
        ping = self._ping
        if ping is None or ping.done():
            ping = self._ping = asyncio.ensure_future(self._fetchval("SELECT 1"))
            ping.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({ping}, timeout=PING_TIMEOUT_S)
        if not done:
            raise StoreUnavailable("store unavailable: no answer")
        ping.result()

    async def lacking(self) -> str | None:
        """The first relay table relay's user lacks a privilege on, with the GRANT to run
        (relay.store._pg_grants), said once in the log; asked of the database at start, while
        one lacks, and after a statement refused for a privilege."""
        return await self._grants.lacking(self._fetch)

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None = None
    ) -> list[Observed]:
        batch = list(runs)

        async def attempt(conn: asyncpg.Connection) -> list[Observed]:
            async with conn.transaction():
                observed = await observe(conn, batch, decide, now)
                return await lease_at_birth(conn, observed, lease, self.holder, now)

        async def observing() -> list[Observed]:
            async with self._conn() as conn:
                return await retrying(lambda: attempt(conn))

        return await (observing() if lease is None else handing_over(observing(), lease))

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

    async def mark_sent(
        self, rows: Tries, *, now: float, receipt: str | None = None, error: str | None = None
    ) -> None:
        await self._update(
            "state = 'sent', attempts = g.tries, lease_until = NULL, reason = NULL,"
            " receipt = $7, last_error = COALESCE($8, last_error), updated_at = $4",
            rows,
            ("sent", now, None, None),
            clean_opt(receipt),
            clean_opt(error),
        )

    async def postpone(
        self, notification_id: str, *, now: float, not_before: float, keep_claim: bool = True
    ) -> bool:
        status = await self._execute(
            _POSTPONE,
            clean(notification_id),
            not_before,
            now,
            self.holder,
            keep_claim,
        )
        return status == "UPDATE 1"

    async def hasten(self, notification_id: str, *, now: float) -> bool:
        return await self._execute(_HASTEN, clean(notification_id), now) == "UPDATE 1"

    async def mark_retry(
        self, rows: Tries, *, now: float, not_before: float, reason: str, error: str
    ) -> set[str]:
        return await self._update(
            "not_before = $7, attempts = g.tries, reason = $5, last_error = $6,"
            f" lease_until = {HAND_BACK}, updated_at = $4",
            rows,
            ("retry", now, reason, error),
            not_before,
            held=True,
            once=True,
        )

    async def mark_dead(self, rows: Tries, *, now: float, reason: str, error: str) -> set[str]:
        return await self._update(
            "state = 'dead', attempts = g.tries, reason = $5, last_error = $6,"
            f" lease_until = {HAND_BACK}, updated_at = $4",
            rows,
            ("dead", now, reason, error),
            held=True,
            once=True,
        )

    async def marked_here(self, rows: Tries, state: str) -> set[str]:
        found = await self._fetch(
            _MARKED_HERE, [clean(i) for i, _ in rows], [t for _, t in rows], state, self.holder
        )
        return {row["id"] for row in found}

    async def mark_muted(
        self, notification_id: str, *, now: float, silence_id: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'muted', reason = $6, lease_until = NULL, updated_at = $4",
            [(notification_id, attempts)],
            ("muted", now, mute_kind(silence_id), silence_id),
            held=True,
        )
        return bool(changed)

    async def mark_held(
        self, notification_id: str, *, now: float, reason: str, error: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'dead', reason = $5, last_error = $6, lease_until = NULL, updated_at = $4",
            [(notification_id, attempts)],
            ("dead", now, reason, error),
            held=True,
        )
        return bool(changed)

    async def _update(
        self,
        assignments: str,
        rows: Tries,
        event: RowsEvent,
        *more: Any,
        held: bool = False,
        once: bool = False,
    ) -> set[str]:
        """Change the pending rows of one message and log each one's event, in one statement
        (all of them or none; $1..$6 rows and event, then `more`); `held`: only those this
        replica still holds (HELD, its holder the last parameter); `once`: only those the
        mark's attempts advance (ONCE). The ids it changed."""
        fence = (HELD.format(n=7 + len(more)) if held else "") + (ONCE if once else "")
        sql = UPDATE_PENDING.format(assignments=assignments, fence=fence)
        holder = [self.holder] if held else []
        changed = await self._fetch(sql, *rows_params(rows, event), *more, *holder)
        return {row["notification_id"] for row in changed}

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._fetch(
            "SELECT * FROM relay_outbox WHERE state = 'dead' ORDER BY updated_at DESC, id LIMIT $1",
            limit,
        )
        return [to_notification(row) for row in rows]

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        named = None if ids is None else [*map(clean, ids)]
        async with self._conn() as conn, conn.transaction():
            moved = [row["id"] for row in await conn.fetch(REPLAY, now, named)]
            await conn.execute(REPLAY_RECOVERIES, now, recoveries_of(moved))
        return len(moved)

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

    async def add_silence(self, silence: Silence) -> None:
        await self._execute(
            "INSERT INTO relay_silences (id, matchers_json, starts_at, ends_at, created_at,"
            " comment, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            *silence_params(silence),
        )

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
        async with self._conn() as conn, conn.transaction():
            removed = 0
            for i, statement in enumerate(PRUNE):
                status = await conn.execute(statement, before)
                removed += int(status.rsplit(" ", 1)[-1]) if i == 1 else 0
            return removed

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

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._execute(
            "DELETE FROM relay_kv WHERE namespace = $1 AND key = $2", clean(namespace), clean(key)
        )

    async def kv_list(self, namespace: str) -> dict[str, str]:
        rows = await self._fetch(_KV_NAMESPACE, clean(namespace))
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


async def _retime_groups(
    conn: asyncpg.Connection, timings: Mapping[str, Timing], now: float
) -> tuple[list[str], int]:
    """Store.retime_groups: under TIMINGS_LOCK, replicas starting or reloading together re-time
    a change once (the second reads the timings the first stored)."""
    timings = {clean(rule): timing for rule, timing in timings.items()}  # as the rows name them
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", TIMINGS_LOCK)
        stored = await conn.fetch(_KV_NAMESPACE, TIMINGS_NS)
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


def _as_asked(asked: Collection[str], found: dict[str, _T]) -> dict[str, _T]:
    """`found` (keyed as stored, NUL replaced) under the keys as asked, as the one-key reads
    answer them."""
    return {key: found[clean(key)] for key in asked if clean(key) in found}


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a ping nobody waits for any more as seen (no asyncio warning)."""
    if not future.cancelled():
        future.exception()
