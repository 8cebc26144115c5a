"""The SQLite engine: one file, WAL, one writer thread, group commit.

Every method is an op run by relay.store._sqlite_writer.Writer: concurrent calls share one
transaction and one fsync, and each call's writes commit together or not at all. The long
reads (history, events, dead letters) run on a reader connection of their own instead
(relay.store._sqlite_reader), so that commits do not wait for them. Several processes
may share the file (`relay dlq replay` while `relay serve` runs): WAL lets readers run beside the
writer, and BEGIN IMMEDIATE with a busy timeout makes writers queue instead of failing.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.grouping import TIMINGS_NS, flushed, retimed, timings_changed
from relay.model import Notification, Run, Silence, SilencePage, Timing
from relay.store import BirthLease, Decide, HistoryQuery, KvWrite, Observed, Tries
from relay.store import _sqlite_outbox as outbox
from relay.store._engines import hand_over, recoveries_of, timings_write
from relay.store._rows import (
    HAND_BACK,
    RETIMABLE,
    SAME_CLAIM,
    RowsEvent,
    lease_end,
    mute_kind,
    to_notification,
    to_silence,
)
from relay.store._sqlite_connect import (
    BUSY_TIMEOUT_MS,
    connect,
    connect_reader,
    identity,
    undone_on_failure,
)
from relay.store._sqlite_history import event_rows, history_rows
from relay.store._sqlite_lock import WriteLock
from relay.store._sqlite_reader import Reader
from relay.store._sqlite_schema import (
    PRUNE_BATCH,
    SCHEMA_VERSION,
    add_event,
    group_labels_of,
    insert_silence,
    load_group,
    prune,
    prune_notifications,
    silences_sql,
)
from relay.store._sqlite_writer import Writer

_PREFIX = "sqlite:///"
# A delivery worker waits this long at most for the one it succeeds (orphaned by a parent killed
# with -9, finishing its sends within the shutdown grace) to exit, then goes ahead.
HOLDER_WAIT_S = 30.0
HOLDER_POLL_S = 0.05
IN_CHUNK = 500  # values per `IN (?, ...)`: within SQLite's variable limit, old versions too
_CLAIM_HOLDERS = (
    "SELECT DISTINCT lease_holder FROM outbox WHERE state = 'pending' AND lease_until > 0"
)
_MARKED_HERE = (
    "SELECT 1 FROM outbox WHERE id = ? AND attempts = ? AND state = ? AND lease_holder IS ?"
)
# A row put off unsent joins its group's next digest when one is due later (see postgres.py).
_POSTPONE = f"""
    UPDATE outbox SET not_before = CASE WHEN :keep THEN :not_before ELSE COALESCE((
            SELECT g.next_flush FROM groups AS g
            WHERE g.key = outbox.group_key AND g.next_flush > :now), :not_before) END,
        lease_until = CASE WHEN :keep THEN {HAND_BACK} END, updated_at = :now
    WHERE id = :id AND state = 'pending'
"""  # noqa: S608
_HASTEN = """
    UPDATE outbox SET not_before = ?, updated_at = ?
    WHERE id = ? AND state = 'pending' AND lease_until IS NULL AND not_before > ?
"""
# A restart's claims go back as a stop's do (HAND_BACK): a digest cut short goes again as it was.
_RELEASE = f"""
    UPDATE outbox SET lease_until = {HAND_BACK} WHERE state = 'pending' AND lease_until > 0
"""  # noqa: S608
# Every dead row (ids NULL), or the named ones with the rest of their dead digests (SAME_CLAIM).
_REPLAY = f"""
    UPDATE outbox SET state = 'pending', attempts = 0, not_before = :now,
        lease_until = {HAND_BACK}, reason = NULL, last_error = NULL, updated_at = :now
    WHERE state = 'dead' AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)) OR
        ({SAME_CLAIM}) IN (SELECT {SAME_CLAIM} FROM outbox WHERE state = 'dead'
        AND lease_until IS NOT NULL AND id IN (SELECT value FROM json_each(:ids))))
    RETURNING id
"""  # noqa: S608
_USAGE = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"


def sqlite_path(url: str) -> Path:
    """The database file of a sqlite URL: sqlite:///rel.db is relative, sqlite:////abs.db not."""
    if not url.startswith(_PREFIX):
        hint = "a sqlite URL has no host" if url.startswith("sqlite://") else "malformed sqlite URL"
        raise _url_error(f"{hint}; {_USAGE}")
    rest = url[len(_PREFIX) :]
    if not rest or rest == "/":
        raise _url_error(f"the sqlite URL names no file; {_USAGE}")
    if rest == ":memory:" or rest.startswith("file:"):
        raise _url_error("an in-memory or URI sqlite database cannot be durable; name a file")
    if "?" in rest or "\x00" in rest:
        raise _url_error(f"sqlite URL query parameters are not supported; {_USAGE}")
    if rest.endswith("/"):
        raise _url_error(f"the sqlite URL names a directory, not a file; {_USAGE}")
    return Path(rest)


def _url_error(message: str) -> ConfigError:
    return ConfigError([Problem("", "RELAY_STORE_URL", message)])


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


class SQLiteStore:
    """The Store on one SQLite file.

    max_pages caps the database size (PRAGMA max_page_count), for quotas and tests; beyond it
    writes fail with StoreUnavailable. `commits` counts committed transactions (batches).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_pages: int | None = None,
        holder: str = "",
        upgrade: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self._upgrade = upgrade  # False: an older schema is refused, not migrated
        self._read_only = read_only  # no writer: the reads (dead letters, history, silences)
        self._max_pages = max_pages
        self._holder = holder  # recorded with each claim: release_leases(holder) frees them
        self._writer = Writer(WriteLock(self.path, BUSY_TIMEOUT_MS / 1000), self.path)
        self._reader = Reader()  # long reads (history, dead letters) beside the writer
        self._alive: WriteLock | None = None  # with a holder: held while this process lives
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened

    @property
    def commits(self) -> int:
        """Transactions committed since this store was created; one per group-commit batch."""
        return self._writer.commits

    async def open(self) -> None:
        """Create the file and its directory if needed, then create or migrate the schema; for
        `read_only`, open the file there is for reading only (a full disk refuses no read)."""
        if self._read_only:
            await self._reader.start(lambda: connect_reader(self.path, alone=True))
            self._file = identity(self.path)
            return
        with undone_on_failure(self.path):
            await self._writer.start(
                lambda: connect(self.path, self._max_pages, upgrade=self._upgrade)
            )
            try:
                await self._reader.start(lambda: connect_reader(self.path))
            except BaseException:
                await self._writer.stop()
                raise
        self._file = identity(self.path)
        if self._holder:  # a predecessor orphaned by a parent's kill -9 exits first
            self._alive = _holder_lock(self.path, self._holder, 0.0)
            await _wait_for(self._alive, HOLDER_WAIT_S)

    async def close(self) -> None:
        """Finish queued operations and close the file; later calls raise StoreUnavailable."""
        try:  # the reader first: the writer's close, the last, checkpoints and removes the -wal
            await self._reader.stop()
        finally:
            await self._writer.stop()
        if self._alive is not None:
            self._alive.close()
            self._alive = None

    async def lacking(self) -> None:
        """Nothing: a file relay cannot write is refused at open, or said by a failed commit."""

    async def ping(self) -> None:
        def ping(conn: sqlite3.Connection) -> None:
            self._still_the_file()
            conn.execute("SELECT 1").fetchone()

        await self._writer.run(ping)

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None = None
    ) -> list[Observed]:
        batch, holder = list(runs), self._holder

        def observe(conn: sqlite3.Connection) -> list[Observed]:
            self._still_the_file()
            return outbox.lease_at_birth(
                conn, outbox.observe(conn, batch, decide, now), lease, holder, now
            )

        if lease is None:
            return await self._writer.run(observe)
        # the writer settles every op it is given, the caller cancelled or not: no task needed
        return await self._writer.run(observe, settled=lambda done: hand_over(lease, done))

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Up to `limit` due rows of `channel`, and with any row of a digest group every due row
        of that group in the same transaction: `serve --workers` share a channel, and two of them
        each taking part of one group would send two digests (as PostgreSQL claims, too)."""
        lease = (now + lease_s, self._holder, now)
        rows = await self._writer.run(lambda conn: outbox.claim(conn, channel, now, limit, lease))
        claimed = [to_notification(row) for row in rows]
        claimed.sort(key=lambda n: (n.not_before, n.created_at, n.id))
        return claimed

    async def next_due(self, channel: str) -> float | None:
        row = await self._writer.run(
            lambda conn: conn.execute(outbox.NEXT_DUE, (channel, channel)).fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def mark_sent(
        self, rows: Tries, *, now: float, receipt: str | None = None, error: str | None = None
    ) -> None:
        await self._update(
            "state = 'sent', attempts = :attempts, lease_until = NULL, reason = NULL,"
            " receipt = :receipt, last_error = COALESCE(:error, last_error), updated_at = :now",
            {"receipt": receipt, "error": error, "now": now},
            rows,
            ("sent", now, None, None),
        )

    async def postpone(
        self, notification_id: str, *, now: float, not_before: float, keep_claim: bool = True
    ) -> bool:
        values = {"not_before": not_before, "keep": keep_claim, "now": now, "id": notification_id}
        return await self._writer.run(lambda conn: conn.execute(_POSTPONE, values).rowcount == 1)

    async def hasten(self, notification_id: str, *, now: float) -> bool:
        return await self._writer.run(
            lambda conn: conn.execute(_HASTEN, (now, now, notification_id, now)).rowcount == 1
        )

    async def mark_retry(
        self, rows: Tries, *, now: float, not_before: float, reason: str, error: str
    ) -> set[str]:
        return await self._update(
            "not_before = :not_before, attempts = :attempts, reason = :reason,"
            f" last_error = :error, lease_until = {HAND_BACK}, updated_at = :now",
            {"not_before": not_before, "reason": reason, "error": error, "now": now},
            rows,
            ("retry", now, reason, error),
        )

    async def mark_dead(self, rows: Tries, *, now: float, reason: str, error: str) -> set[str]:
        return await self._update(
            "state = 'dead', attempts = :attempts, reason = :reason, last_error = :error,"
            f" lease_until = {HAND_BACK}, updated_at = :now",
            {"reason": reason, "error": error, "now": now},
            rows,
            ("dead", now, reason, error),
        )

    async def marked_here(self, rows: Tries, state: str) -> set[str]:
        def marked(conn: sqlite3.Connection) -> set[str]:
            return {
                id_
                for id_, attempts in rows
                if conn.execute(_MARKED_HERE, (id_, attempts, state, self._holder)).fetchone()
            }

        return await self._writer.run(marked)

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._reader.run(
            lambda conn: conn.execute(
                "SELECT * FROM outbox WHERE state = 'dead' ORDER BY updated_at DESC, id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [to_notification(row) for row in rows]

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        # json_each ends a text at a NUL (`ntf_x\0y` would name ntf_x); relay's ids hold none
        named = None if ids is None else orjson.dumps([i for i in ids if "\x00" not in i]).decode()

        def replay(conn: sqlite3.Connection) -> int:
            moved = [row[0] for row in conn.execute(_REPLAY, {"now": now, "ids": named}).fetchall()]
            for ident in moved:
                add_event(conn, ident, ("replayed", now, 0, None, None))
            outbox.requeue_recoveries(conn, recoveries_of(moved), now)
            return len(moved)

        return await self._writer.run(replay)

    async def requeue_recoveries(self, ids: Sequence[str], now: float) -> int:
        return await self._writer.run(lambda conn: outbox.requeue_recoveries(conn, list(ids), now))

    async def release_leases(self, holder: str | None = None) -> int:
        """One replica: every lease (outbox claims, feed leadership) is a dead process's, but
        for the claims of a delivery worker still alive (its parent was killed with -9: it
        finishes its sends, then exits, and its successor frees what it left); with `holder`,
        the claims of one dead delivery worker (opened with that holder)."""

        def forget_dead(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM leases")
            holders = conn.execute(_CLAIM_HOLDERS).fetchall()
            alive = [h for (h,) in holders if h and not self._holder_free(h)]
            keep = ",".join("?" * len(alive))
            sql = f"{_RELEASE} AND COALESCE(lease_holder, '') NOT IN ({keep})"
            return int(conn.execute(sql, alive).rowcount)

        if holder is None:
            return await self._writer.run(forget_dead)
        sql = _RELEASE + " AND lease_holder = ?"
        return await self._writer.run(lambda conn: int(conn.execute(sql, (holder,)).rowcount))

    def _still_the_file(self) -> None:
        """Refuse new work once the database file was deleted or replaced (`rm relay.db`, a
        backup restored over it): the open connection goes on writing to the old file, which
        is gone at the next start with every update committed to it since."""
        if self._file is not None and identity(self.path) != self._file:
            raise StoreUnavailable(
                "store file deleted or replaced while relay runs; restart relay to open it again"
            )

    def _holder_free(self, holder: str) -> bool:
        lock = _holder_lock(self.path, holder, 0.0)
        try:
            return lock.free()
        finally:
            lock.close()

    async def get(self, notification_id: str) -> Notification | None:
        # opened read-only (`relay history --before`), a read goes to the reader: no writer
        runner = self._reader if self._read_only else self._writer
        row = await runner.run(
            lambda conn: conn.execute(
                "SELECT * FROM outbox WHERE id = ?", (notification_id,)
            ).fetchone()
        )
        return None if row is None else to_notification(row)

    async def counts(self) -> dict[str, int]:
        rows = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT state, COUNT(*) FROM outbox GROUP BY state"
            ).fetchall()
        )
        counts = {"pending": 0, "sent": 0, "dead": 0, "muted": 0}
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def oldest_pending(self, now: float) -> float | None:
        value = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT MIN(CASE WHEN group_key IS NOT NULL AND attempts = 0 THEN not_before"
                " ELSE created_at END) FROM outbox"
                " WHERE state = 'pending' AND NOT (group_key IS NOT NULL AND attempts = 0"
                " AND not_before > ?)",
                (now,),
            ).fetchone()[0]
        )
        return None if value is None else float(value)

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
            _kv_write(conn, timings_write(timings), now)
            return sorted(changed), len(waiting)

        return await self._writer.run(retime)

    async def add_silence(self, silence: Silence) -> None:
        await self._writer.run(lambda conn: insert_silence(conn, silence))

    async def silences(
        self, now: float, *, include_expired: bool = False, page: SilencePage | None = None
    ) -> list[Silence]:
        sql, params = silences_sql(now, include_expired, page)
        # on the reader, beside the writer (a read-only store has no writer), parsed there too:
        # every silence ever (50,000) is a long read
        return await self._reader.run(
            lambda conn: [to_silence(row) for row in conn.execute(sql, params)]
        )

    async def silences_version(self) -> int:
        return await self._reader.run(
            lambda conn: int(conn.execute("SELECT n FROM silences_changes").fetchone()[0])
        )

    async def silence(self, silence_id: str) -> Silence | None:
        # on the reader: a read-only store (`relay silence list --after ID`) has no writer
        row = await self._reader.run(
            lambda conn: conn.execute(
                "SELECT * FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
        )
        return None if row is None else to_silence(row)

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        def expire(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute(
                "UPDATE silences SET starts_at = MIN(starts_at, ?), ends_at = MIN(ends_at, ?)"
                " WHERE id = ?",
                (now, now, silence_id),
            )
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
            return row

        row = await self._writer.run(expire)
        return None if row is None else to_silence(row)

    async def mark_muted(
        self, notification_id: str, *, now: float, silence_id: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'muted', reason = :silence, lease_until = NULL, updated_at = :now",
            {"silence": silence_id, "now": now},
            [(notification_id, attempts)],
            ("muted", now, mute_kind(silence_id), silence_id),
        )
        return bool(changed)

    async def mark_held(
        self, notification_id: str, *, now: float, reason: str, error: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'dead', reason = :reason, last_error = :error, lease_until = NULL,"
            " updated_at = :now",
            {"reason": reason, "error": error, "now": now},
            [(notification_id, attempts)],
            ("dead", now, reason, error),
        )
        return bool(changed)

    async def history(self, query: HistoryQuery) -> list[Notification]:
        return await self._reader.run(lambda conn: history_rows(conn, query))

    async def events(self, notification_id: str) -> list[dict[str, object]]:
        return await self._reader.run(lambda conn: event_rows(conn, notification_id))

    async def prune(self, before: float) -> int:
        """A batch of notifications per transaction, so that ingest goes on between them."""
        removed = 0
        while True:
            batch = await self._writer.run(
                lambda conn: prune_notifications(conn, before, PRUNE_BATCH)
            )
            removed += batch
            if batch < PRUNE_BATCH:
                break
        await self._writer.run(lambda conn: prune(conn, before))
        return removed

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]:
        sql = "SELECT run_id, updated_at_ms FROM runs WHERE updated_at_ms IS NOT NULL AND run_id IN"
        rows = await self._writer.run(lambda conn: _in_chunks(conn, sql, (), list(run_ids)))
        return {str(run_id): int(ms) for run_id, ms in rows}

    async def kv_get(self, namespace: str, key: str) -> str | None:
        row = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]:
        sql = "SELECT key, value FROM kv WHERE namespace = ? AND key IN"
        rows = await self._writer.run(lambda conn: _in_chunks(conn, sql, (namespace,), list(keys)))
        return {str(key): str(value) for key, value in rows}

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (namespace, key) DO UPDATE"
                " SET value = excluded.value, updated_at = excluded.updated_at",
                (namespace, key, value, now),
            )
        )

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            )
        )

    async def kv_list(self, namespace: str) -> dict[str, str]:
        rows = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT key, value FROM kv WHERE namespace = ?", (namespace,)
            ).fetchall()
        )
        return {str(key): str(value) for key, value in rows}

    async def kv_write(self, write: KvWrite, now: float) -> None:
        await self._writer.run(lambda conn: _kv_write(conn, write, now))

    async def try_lead(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Hold the lease `name` for `ttl_s` from `now`: True if `owner` holds it now."""
        row = await self._writer.run(
            lambda conn: conn.execute(
                "INSERT INTO leases (name, owner, expires_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at, updated_at = excluded.updated_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= excluded.updated_at"
                " RETURNING owner",
                (name, owner, lease_end(ttl_s, now), now),
            ).fetchone()
        )
        return row is not None

    async def write_if_free(self, name: str, free_since: float, write: KvWrite, now: float) -> bool:
        return await self._writer.run(
            lambda conn: _write_if_free(conn, name, free_since, write, now)
        )

    async def migrate(self) -> tuple[int, int]:
        """`relay migrate`: create or migrate the schema, then close; (version before, after)."""
        before: list[int] = []  # the write lock too: without it SQLite's busy handler (sleeps
        # of up to 100 ms) lost every try to a busy `relay serve` and failed with SQLITE_BUSY
        writer = Writer(WriteLock(self.path, BUSY_TIMEOUT_MS / 1000), self.path)
        with undone_on_failure(self.path):
            await writer.start(lambda: connect(self.path, self._max_pages, before))
        await writer.stop()
        return before[0], SCHEMA_VERSION

    async def _update(
        self, assignments: str, params: dict[str, object], rows: Tries, event: RowsEvent
    ) -> set[str]:
        """Update the pending rows of one message and record each one's event (with its
        attempts, `:attempts`), in one writer op: all of them or none (a failing op rolls back
        whole). Finished rows are left alone; the ids it changed."""
        sql = f"UPDATE outbox SET {assignments} WHERE id = :id AND state = 'pending'"  # noqa: S608
        kind, at, reason, detail = event

        def update(conn: sqlite3.Connection) -> set[str]:
            changed = set()
            for id_, attempts in rows:
                if conn.execute(sql, {**params, "id": id_, "attempts": attempts}).rowcount == 1:
                    add_event(conn, id_, (kind, at, attempts, reason, detail))
                    changed.add(id_)
            return changed

        return await self._writer.run(update)


def _in_chunks(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], values: list[str]
) -> list[tuple[Any, ...]]:
    """The rows of `sql` ending in `IN` for `values`, one op in statements of IN_CHUNK variables
    (SQLite's limit is 999 before 3.32). Not json_each: its text stops at a NUL, which a
    (hostile) run id may hold."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows += conn.execute(f"{sql} ({marks})", (*params, *chunk)).fetchall()
    return rows


def _write_if_free(
    conn: sqlite3.Connection, name: str, free_since: float, write: KvWrite, now: float
) -> bool:
    """Store.write_if_free, in one writer op. The lease was last held until its end, or until
    it was handed back (expires_at 0) if that came later."""
    row = conn.execute(
        "SELECT max(expires_at, updated_at) FROM leases WHERE name = ?", (name,)
    ).fetchone()
    if row is not None and row[0] > free_since:
        return False
    conn.execute("DELETE FROM leases WHERE name = ?", (name,))
    _kv_write(conn, write, now)
    return True


def _kv_write(conn: sqlite3.Connection, write: KvWrite, now: float) -> None:
    """One op (one savepoint): clear, delete, put, in that order."""
    conn.executemany("DELETE FROM kv WHERE namespace = ?", [(ns,) for ns in write.clear])
    conn.executemany("DELETE FROM kv WHERE namespace = ? AND key = ?", write.delete)
    conn.executemany(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (namespace, key) DO UPDATE"
        " SET value = excluded.value, updated_at = excluded.updated_at",
        [(ns, key, value, now) for ns, key, value in write.put],
    )


async def _wait_for(lock: WriteLock, wait_s: float) -> bool:
    """Take `lock` (made with no wait of its own), trying again every HOLDER_POLL_S up to
    `wait_s`; a cancel (the worker's parent died) ends the wait at once, where a thread went on
    waiting and held the worker's exit up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not lock.hold():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(HOLDER_POLL_S)
    return True


def _holder_lock(db: Path, holder: str, wait_s: float) -> WriteLock:
    """`<db>-worker-N.lock`: held by the living delivery worker that takes claims as `holder`."""
    lock = WriteLock(db, wait_s, name=holder.replace(" ", "-"))
    lock.open()
    return lock
