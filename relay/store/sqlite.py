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
import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import orjson

from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.grouping import flushed, group_key, group_labels, schedule
from relay.model import GroupState, Match, Notification, Run, Silence
from relay.store import (
    BirthLease,
    Decide,
    HistoryQuery,
    KvWrite,
    Observed,
    owed_notification,
    recoveries_of,
)
from relay.store._rows import lease_end, to_notification, to_silence
from relay.store._sqlite_history import event_rows, history_rows
from relay.store._sqlite_lock import WriteLock
from relay.store._sqlite_reader import Reader
from relay.store._sqlite_schema import (
    PRUNE_BATCH,
    SCHEMA_VERSION,
    Event,
    add_event,
    group_labels_of,
    insert_notification,
    insert_silence,
    load_group,
    load_state,
    migrate,
    prune,
    prune_notifications,
    save_group,
    save_state,
)
from relay.store._sqlite_writer import Writer, rollback, unavailable

_PREFIX = "sqlite:///"
_BUSY_TIMEOUT_MS = 5000
# A delivery worker waits this long at most for the one it succeeds (orphaned by a parent killed
# with -9, finishing its sends within the shutdown grace) to exit, then goes ahead.
HOLDER_WAIT_S = 30.0
_CLAIM_HOLDERS = (
    "SELECT DISTINCT lease_holder FROM outbox WHERE state = 'pending' AND lease_until IS NOT NULL"
)
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


class SQLiteStore:
    """The Store on one SQLite file.

    max_pages caps the database size (PRAGMA max_page_count), for quotas and tests; beyond it
    writes fail with StoreUnavailable. `commits` counts committed transactions (batches).
    """

    def __init__(self, path: Path | str, *, max_pages: int | None = None, holder: str = "") -> None:
        self.path = Path(path)
        self._max_pages = max_pages
        self._holder = holder  # recorded with each claim: release_leases(holder) frees them
        self._writer = Writer(WriteLock(self.path, _BUSY_TIMEOUT_MS / 1000))
        self._reader = Reader()  # long reads (history, dead letters) beside the writer
        self._alive: WriteLock | None = None  # with a holder: held while this process lives
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened

    @property
    def commits(self) -> int:
        """Transactions committed since this store was created; one per group-commit batch."""
        return self._writer.commits

    async def open(self) -> None:
        """Create the file and its directory if needed, then create or migrate the schema."""
        await self._writer.start(lambda: _connect(self.path, self._max_pages))
        try:
            await self._reader.start(lambda: _connect_reader(self.path))
        except BaseException:
            await self._writer.stop()
            raise
        self._file = _identity(self.path)
        if self._holder:  # a predecessor orphaned by a parent's kill -9 exits first
            self._alive = _holder_lock(self.path, self._holder, HOLDER_WAIT_S)
            await asyncio.to_thread(self._alive.hold)

    async def close(self) -> None:
        """Finish queued operations and close the file; later calls raise StoreUnavailable."""
        try:  # the reader first: the writer's close, the last, checkpoints and removes the -wal
            await self._reader.stop()
        finally:
            await self._writer.stop()
        if self._alive is not None:
            self._alive.close()
            self._alive = None

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
            return _lease_at_birth(conn, _observe(conn, batch, decide, now), lease, holder, now)

        return await self._writer.run(observe)

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Up to `limit` due rows of `channel`, and with any row of a digest group every due row
        of that group in the same transaction: `serve --workers` share a channel, and two of them
        each taking part of one group would send two digests (as PostgreSQL claims, too)."""
        lease = (now + lease_s, self._holder, now)
        rows = await self._writer.run(lambda conn: _claim(conn, channel, now, limit, lease))
        claimed = [to_notification(row) for row in rows]
        claimed.sort(key=lambda n: (n.not_before, n.created_at, n.id))
        return claimed

    async def next_due(self, channel: str) -> float | None:
        row = await self._writer.run(
            lambda conn: conn.execute(_NEXT_DUE, (channel, channel)).fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def mark_sent(
        self, notification_id: str, *, now: float, attempts: int, receipt: str | None = None
    ) -> None:
        await self._update(
            "state = 'sent', attempts = ?, lease_until = NULL, reason = NULL, receipt = ?,"
            " updated_at = ?",
            (attempts, receipt, now),
            notification_id,
            ("sent", now, attempts, None, None),
        )

    async def postpone(self, notification_id: str, *, now: float, not_before: float) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "UPDATE outbox SET not_before = ?, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND state = 'pending'",
                (not_before, now, notification_id),
            )
        )

    async def mark_retry(
        self,
        notification_id: str,
        *,
        now: float,
        not_before: float,
        attempts: int,
        reason: str,
        error: str,
    ) -> None:
        await self._update(
            "not_before = ?, attempts = ?, reason = ?, last_error = ?, lease_until = NULL,"
            " updated_at = ?",
            (not_before, attempts, reason, error, now),
            notification_id,
            ("retry", now, attempts, reason, error),
        )

    async def mark_dead(
        self, notification_id: str, *, now: float, attempts: int, reason: str, error: str
    ) -> None:
        await self._update(
            "state = 'dead', attempts = ?, reason = ?, last_error = ?, lease_until = NULL,"
            " updated_at = ?",
            (attempts, reason, error, now),
            notification_id,
            ("dead", now, attempts, reason, error),
        )

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._reader.run(
            lambda conn: conn.execute(
                "SELECT * FROM outbox WHERE state = 'dead' ORDER BY updated_at DESC, id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [to_notification(row) for row in rows]

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        sql = """
            UPDATE outbox SET state = 'pending', attempts = 0, not_before = ?, lease_until = NULL,
                reason = NULL, last_error = NULL, updated_at = ?
            WHERE state = 'dead'
        """
        if ids is None:
            params: tuple[object, ...] = (now, now)
        else:
            sql += " AND id IN (SELECT value FROM json_each(?))"
            params = (now, now, orjson.dumps(list(ids)).decode())
        sql += " RETURNING id"

        def replay(conn: sqlite3.Connection) -> int:
            moved = [row[0] for row in conn.execute(sql, params).fetchall()]
            for ident in moved:
                add_event(conn, ident, ("replayed", now, 0, None, None))
            _requeue_recoveries(conn, recoveries_of(moved), now)
            return len(moved)

        return await self._writer.run(replay)

    async def requeue_recoveries(self, ids: Sequence[str], now: float) -> int:
        return await self._writer.run(lambda conn: _requeue_recoveries(conn, list(ids), now))

    async def release_leases(self, holder: str | None = None) -> int:
        """One replica: every lease (outbox claims, feed leadership) is a dead process's, but
        for the claims of a delivery worker still alive (its parent was killed with -9: it
        finishes its sends, then exits, and its successor frees what it left); with `holder`,
        the claims of one dead delivery worker (opened with that holder)."""
        release = "UPDATE outbox SET lease_until = NULL"
        release += " WHERE state = 'pending' AND lease_until IS NOT NULL"

        def forget_dead(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM leases")
            holders = conn.execute(_CLAIM_HOLDERS).fetchall()
            alive = [h for (h,) in holders if h and not self._holder_free(h)]
            keep = ",".join("?" * len(alive))
            sql = f"{release} AND COALESCE(lease_holder, '') NOT IN ({keep})"
            return int(conn.execute(sql, alive).rowcount)

        if holder is None:
            return await self._writer.run(forget_dead)
        sql = release + " AND lease_holder = ?"
        return await self._writer.run(lambda conn: int(conn.execute(sql, (holder,)).rowcount))

    def _still_the_file(self) -> None:
        """Refuse new work once the database file was deleted or replaced (`rm relay.db`, a
        backup restored over it): the open connection goes on writing to the old file, which
        is gone at the next start with every update committed to it since."""
        if self._file is not None and _identity(self.path) != self._file:
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
        row = await self._writer.run(
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

    async def group_flushed(self, group_key: str, now: float) -> dict[str, str]:
        """Record that the group's digest went out; return the group's labels."""

        def flush(conn: sqlite3.Connection) -> dict[str, str]:
            state = load_group(conn, group_key)
            if state is not None:
                after = flushed(state, now)
                conn.execute(
                    "UPDATE groups SET next_flush = ?, last_sent = ?, last_seen = ? WHERE key = ?",
                    (after.next_flush, after.last_sent, after.last_seen, group_key),
                )
            return group_labels_of(conn, group_key)

        return await self._writer.run(flush)

    async def add_silence(self, silence: Silence) -> None:
        await self._writer.run(lambda conn: insert_silence(conn, silence))

    async def silences(self, now: float, *, include_expired: bool = False) -> list[Silence]:
        where = "" if include_expired else " WHERE ends_at > ?"
        params: tuple[float, ...] = () if include_expired else (now,)
        rows = await self._writer.run(
            lambda conn: conn.execute(
                f"SELECT * FROM silences{where} ORDER BY starts_at, id",  # noqa: S608
                params,
            ).fetchall()
        )
        return [to_silence(row) for row in rows]

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

    async def mark_muted(self, notification_id: str, *, now: float, silence_id: str) -> None:
        await self._update(
            "state = 'muted', reason = ?, lease_until = NULL, updated_at = ?",
            (silence_id, now),
            notification_id,
            ("muted", now, 0, "silence", silence_id),
        )

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

    async def run_updated_ms(self, run_id: str) -> int | None:
        row = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT updated_at_ms FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        )
        return None if row is None or row[0] is None else int(row[0])

    async def kv_get(self, namespace: str, key: str) -> str | None:
        row = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

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

    async def migrate(self) -> tuple[int, int]:
        """`relay migrate`: create or migrate the schema, then close; (version before, after)."""
        before: list[int] = []  # the write lock too: without it SQLite's busy handler (sleeps
        # of up to 100 ms) lost every try to a busy `relay serve` and failed with SQLITE_BUSY
        writer = Writer(WriteLock(self.path, _BUSY_TIMEOUT_MS / 1000))
        await writer.start(lambda: _connect(self.path, self._max_pages, before))
        await writer.stop()
        return before[0], SCHEMA_VERSION

    async def _update(
        self, assignments: str, params: tuple[object, ...], id_: str, event: Event
    ) -> None:
        """Update one pending outbox row and record the event; finished rows are left alone."""
        sql = f"UPDATE outbox SET {assignments} WHERE id = ? AND state = 'pending'"  # noqa: S608

        def update(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, (*params, id_)).rowcount == 1:
                add_event(conn, id_, event)

        await self._writer.run(update)


GROUP_CLAIM_LIMIT = 1000  # rows of one digest group a claim takes with it
_DUE = "state = 'pending' AND not_before <= ? AND (lease_until IS NULL OR lease_until <= ?)"
# A replayed alert brings back its recovery, sent meanwhile without it: the recovery follows the
# alert again (waiting for it), so the run does not end on an open alert (a PagerDuty incident
# triggered after its resolve stays open).
REPLAY_RECOVERIES = """
    UPDATE outbox SET state = 'pending', attempts = 0, not_before = ?, lease_until = NULL,
        reason = NULL, last_error = NULL, updated_at = ?
    WHERE state IN ('sent', 'dead') AND id IN (SELECT value FROM json_each(?))
    RETURNING id
"""


def _requeue_recoveries(conn: sqlite3.Connection, ids: list[str], now: float) -> int:
    """Move sent or dead recoveries back to pending, each with its 'replayed' event."""
    moved = conn.execute(REPLAY_RECOVERIES, (now, now, orjson.dumps(ids).decode())).fetchall()
    for (ident,) in moved:
        add_event(conn, ident, ("replayed", now, 0, None, None))
    return len(moved)


# A row is due at its not_before, or at its lease's end if later: none is due before the first
# unleased row, so only the rows ahead of it (the leased ones) are read. The MIN over every
# pending row of the channel read them all, through the state index: 200 channels polling a
# 30,000-row backlog kept the one writer busy and the fast channel sent 150 a second.
_NEXT_DUE = """
    SELECT MIN(MAX(not_before, COALESCE(lease_until, not_before))) FROM outbox
    WHERE channel = ? AND state = 'pending' AND not_before <= COALESCE((
        SELECT not_before FROM outbox WHERE channel = ? AND state = 'pending'
        AND lease_until IS NULL ORDER BY not_before LIMIT 1
    ), 1e308)
"""
_LEASE = "UPDATE outbox SET lease_until = ?, lease_holder = ?, updated_at = ?"
_CLAIM = f"""
    {_LEASE} WHERE id IN (
        SELECT id FROM outbox WHERE channel = ? AND {_DUE}
        ORDER BY not_before, created_at, id LIMIT ?
    ) RETURNING *
"""  # noqa: S608
_CLAIM_GROUP = f"""
    {_LEASE} WHERE id IN (
        SELECT id FROM outbox WHERE group_key = ? AND {_DUE} ORDER BY created_at, id LIMIT ?
    ) RETURNING *
"""  # noqa: S608
Lease = tuple[float, str, float]  # lease_until, lease_holder, updated_at


def _claim(
    conn: sqlite3.Connection, channel: str, now: float, limit: int, lease: Lease
) -> list[sqlite3.Row]:
    """In the writer thread: the due rows, then the rest of each digest group among them."""
    rows: list[sqlite3.Row] = conn.execute(_CLAIM, (*lease, channel, now, now, limit)).fetchall()
    for key in dict.fromkeys(row["group_key"] for row in rows if row["group_key"] is not None):
        group = (*lease, key, now, now, GROUP_CLAIM_LIMIT)
        rows += conn.execute(_CLAIM_GROUP, group).fetchall()
    return rows


def _observe(
    conn: sqlite3.Connection, runs: list[Run], decide: Decide, now: float
) -> list[Observed]:
    """In the writer thread: decide each run against its stored state, save it, enqueue."""
    observed: list[Observed] = []
    for run in runs:
        decision = decide(run, load_state(conn, run.id))
        if decision.stale:
            observed.append(Observed(run.id, stale=True))
            continue
        save_state(conn, run.id, decision.state, now)
        enqueued: list[Notification] = []
        run_dict = run.as_dict() if decision.matches else {}
        for match in decision.matches:
            notification = owed_notification(run, match, run_dict, now)
            if match.recovery and not _said(conn, notification.resolves):
                continue
            group = _join_group(conn, match, notification, now)
            if insert_notification(conn, notification):
                kind = "created" if match.muted_by is None else "muted"
                reason = None if match.muted_by is None else _mute_kind(match.muted_by)
                add_event(conn, notification.id, (kind, now, 0, reason, match.muted_by))
                enqueued.append(notification)
                if group is not None:
                    save_group(conn, *group)
        observed.append(Observed(run.id, stale=False, notifications=enqueued))
    return observed


def _lease_at_birth(
    conn: sqlite3.Connection,
    observed: list[Observed],
    lease: BirthLease | None,
    holder: str,
    now: float,
) -> list[Observed]:
    """In the writer thread, after _observe: lease the new rows `lease` chooses to `holder`."""
    if lease is None:
        return observed
    conn.executemany(
        "UPDATE outbox SET lease_until = ?, lease_holder = ? WHERE id = ?",
        [(lease.until, holder, ident) for ident in lease.take(observed, now)],
    )
    return observed


def _said(conn: sqlite3.Connection, notification_id: str | None) -> bool:
    """Whether the notification exists and is not muted: something a recovery can resolve."""
    row = conn.execute("SELECT state FROM outbox WHERE id = ?", (notification_id,)).fetchone()
    return row is not None and row[0] != "muted"


def _join_group(
    conn: sqlite3.Connection, match: Match, notification: Notification, now: float
) -> tuple[GroupState, str, str, dict[str, str]] | None:
    """For a digest rule: put the notification in its group, due at the group's next flush."""
    if match.group_by is None or match.timing is None or notification.state != "pending":
        return None
    labels = group_labels(notification.run, match.group_by)
    key = group_key(match.rule, match.channel, labels)
    state = schedule(load_group(conn, key), key, now, match.timing)
    notification.group_key = key
    notification.extra = {**notification.extra, "group_labels": labels}
    notification.not_before = state.next_flush if state.next_flush is not None else now
    return state, match.rule, match.channel, labels


def _connect(
    path: Path, max_pages: int | None, versions: list[int] | None = None
) -> sqlite3.Connection:
    """In the writer thread: open the file, set the pragmas, migrate the schema.

    `versions`, when given, receives the schema version the file had.
    """
    if path.is_dir():  # sqlite would only say SQLITE_CANTOPEN
        raise StoreUnavailable("store open failed: RELAY_STORE_URL names a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"store open failed: cannot create the database directory ({exc.strerror})"
        ) from exc
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise _open_failed(path, exc) from exc
    try:
        _configure(conn, max_pages)
        conn.execute("BEGIN IMMEDIATE")
        version = migrate(conn)
        _probe_write(conn)
        conn.execute("COMMIT")
        if versions is not None:
            versions.append(version)
    except BaseException as exc:
        rollback(conn)
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _open_failed(path, exc) from exc
        raise
    return conn


def _connect_reader(path: Path) -> sqlite3.Connection:
    """In the reader thread: the file the writer opened (never a new one), for reads only."""
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, uri=True)
    except sqlite3.Error as exc:
        raise _open_failed(path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA temp_store = MEMORY")  # a large ORDER BY sorts in memory, as above
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the file itself, now
    except sqlite3.Error as exc:
        conn.close()
        raise _open_failed(path, exc) from exc
    return conn


def _probe_write(conn: sqlite3.Connection) -> None:
    """Write the schema version again: SQLite opens a file it may not write (another user's,
    chattr +i) read-only without a word, and the first update at run time failed with only
    SQLITE_READONLY. A failed write here names what relay cannot write (_open_failed)."""
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at `path` now, (st_dev, st_ino); None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _open_failed(path: Path, exc: sqlite3.Error) -> StoreUnavailable:
    """Why the file did not open: sqlite says SQLITE_CANTOPEN or SQLITE_READONLY of a volume
    mounted read-only or owned by another user (a root-owned Docker volume); name that."""
    kind = str(getattr(exc, "sqlite_errorname", ""))
    why = _not_writable(path) if kind.startswith(_NOT_WRITABLE) else None
    if why is None and kind.startswith(("SQLITE_FULL", "SQLITE_IOERR")) and _no_space(path):
        why = "no space left on the database's file system"
    if why is None:
        return unavailable("store open failed", exc)
    error = StoreUnavailable(f"store open failed: {why}")
    error.__cause__ = exc
    return error


_NOT_WRITABLE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR")


def _no_space(path: Path) -> bool:
    """Whether the file system of the database's directory is full (for relay's user)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def _not_writable(path: Path) -> str | None:
    """What of the database (its directory, the file, its -wal and -shm) relay cannot write."""
    parts = [
        (path.parent, "the database directory"),
        (path, "the database file"),
        (Path(f"{path}-wal"), "the database's -wal file"),
        (Path(f"{path}-shm"), "the database's -shm file"),
    ]
    for target, what in parts:
        if not target.exists() or os.access(target, os.W_OK):
            continue
        with contextlib.suppress(OSError):
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                return f"{what} is on a read-only file system"
        return f"cannot write {what} (permission denied: relay's user must be able to write it)"
    return None


def _configure(conn: sqlite3.Connection, max_pages: int | None) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"store open failed: journal mode is {mode}, WAL is required")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # A write that changes many pages in one op spills its statement journal to a temp file
    # (/var/tmp): under a read-only root file system or with every file descriptor in use
    # (many clients), that update failed with SQLITE_CANTOPEN. Relay's temp data is small.
    conn.execute("PRAGMA temp_store = MEMORY")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages):d}")


def _mute_kind(muted_by: str) -> str:
    """ "silence" for a silence id, else the prefix: time_interval, inhibited."""
    return muted_by.split(":", 1)[0] if ":" in muted_by else "silence"


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


def _holder_lock(db: Path, holder: str, wait_s: float) -> WriteLock:
    """`<db>-worker-N.lock`: held by the living delivery worker that takes claims as `holder`."""
    lock = WriteLock(db, wait_s, name=holder.replace(" ", "-"))
    lock.open()
    return lock
