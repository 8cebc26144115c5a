"""The SQLite engine: one file, WAL, one writer thread, group commit.

Every method is an op run by relay.store._sqlite_writer.Writer: concurrent calls share one
transaction and one fsync, and each call's writes commit together or not at all. Several processes
may share the file (`relay dlq replay` while `relay serve` runs): WAL lets readers run beside the
writer, and BEGIN IMMEDIATE with a busy timeout makes writers queue instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import orjson

from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.model import Notification, Run, Silence, notification_id
from relay.store import Decide, Observed
from relay.store._sqlite_schema import (
    insert_notification,
    insert_silence,
    load_state,
    migrate,
    save_state,
    to_notification,
    to_silence,
)
from relay.store._sqlite_writer import Writer, rollback, unavailable

_PREFIX = "sqlite:///"
_BUSY_TIMEOUT_MS = 5000
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

    def __init__(self, path: Path | str, *, max_pages: int | None = None) -> None:
        self.path = Path(path)
        self._max_pages = max_pages
        self._writer = Writer()

    @property
    def commits(self) -> int:
        """Transactions committed since this store was created; one per group-commit batch."""
        return self._writer.commits

    async def open(self) -> None:
        """Create the file and its directory if needed, then create or migrate the schema."""
        await self._writer.start(lambda: _connect(self.path, self._max_pages))

    async def close(self) -> None:
        """Finish queued operations and close the file; later calls raise StoreUnavailable."""
        await self._writer.stop()

    async def ping(self) -> None:
        await self._writer.run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def observe(self, runs: Sequence[Run], decide: Decide, now: float) -> list[Observed]:
        batch = list(runs)
        return await self._writer.run(lambda conn: _observe(conn, batch, decide, now))

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        rows = await self._writer.run(
            lambda conn: conn.execute(
                """
                UPDATE outbox SET lease_until = ?, updated_at = ?
                WHERE id IN (
                    SELECT id FROM outbox
                    WHERE channel = ? AND state = 'pending' AND not_before <= ?
                      AND (lease_until IS NULL OR lease_until <= ?)
                    ORDER BY not_before, created_at, id
                    LIMIT ?
                )
                RETURNING *
                """,
                (now + lease_s, now, channel, now, now, limit),
            ).fetchall()
        )
        claimed = [to_notification(row) for row in rows]
        claimed.sort(key=lambda n: (n.not_before, n.created_at, n.id))
        return claimed

    async def next_due(self, channel: str) -> float | None:
        row = await self._writer.run(
            lambda conn: conn.execute(
                """
                SELECT MIN(MAX(not_before, COALESCE(lease_until, not_before))) FROM outbox
                WHERE channel = ? AND state = 'pending'
                """,
                (channel,),
            ).fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def mark_sent(self, notification_id: str, *, now: float, attempts: int) -> None:
        await self._update(
            "state = 'sent', attempts = ?, lease_until = NULL, reason = NULL, updated_at = ?",
            (attempts, now),
            notification_id,
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
        )

    async def mark_dead(
        self, notification_id: str, *, now: float, attempts: int, reason: str, error: str
    ) -> None:
        await self._update(
            "state = 'dead', attempts = ?, reason = ?, last_error = ?, lease_until = NULL,"
            " updated_at = ?",
            (attempts, reason, error, now),
            notification_id,
        )

    async def dead_letters(self, limit: int = 1000) -> list[Notification]:
        rows = await self._writer.run(
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
        return await self._writer.run(lambda conn: conn.execute(sql, params).rowcount)

    async def release_leases(self) -> int:
        return await self._writer.run(
            lambda conn: (
                conn.execute(
                    "UPDATE outbox SET lease_until = NULL"
                    " WHERE state = 'pending' AND lease_until IS NOT NULL"
                ).rowcount
            )
        )

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
                "UPDATE silences SET ends_at = MIN(ends_at, ?) WHERE id = ?", (now, silence_id)
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
        )

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

    async def _update(self, assignments: str, params: tuple[object, ...], id_: str) -> None:
        """Update one pending outbox row; finished (sent or dead) rows are left alone."""
        sql = f"UPDATE outbox SET {assignments} WHERE id = ? AND state = 'pending'"  # noqa: S608
        await self._writer.run(lambda conn: conn.execute(sql, (*params, id_)))


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
        save_state(conn, run.id, decision.state)
        enqueued: list[Notification] = []
        run_dict = run.as_dict() if decision.matches else {}
        for match in decision.matches:
            notification = Notification(
                id=notification_id(run.id, match.rule, match.channel),
                run_id=run.id,
                rule=match.rule,
                channel=match.channel,
                template=match.template,
                run=run_dict,
                created_at=now,
                not_before=now,
                state="pending" if match.muted_by is None else "muted",
                reason=match.muted_by,
            )
            if insert_notification(conn, notification):
                enqueued.append(notification)
        observed.append(Observed(run.id, stale=False, notifications=enqueued))
    return observed


def _connect(path: Path, max_pages: int | None) -> sqlite3.Connection:
    """In the writer thread: open the file, set the pragmas, migrate the schema."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(
            f"store open failed: cannot create the database directory ({exc.strerror})"
        ) from exc
    try:
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise unavailable("store open failed", exc) from exc
    try:
        _configure(conn, max_pages)
        conn.execute("BEGIN IMMEDIATE")
        migrate(conn)
        conn.execute("COMMIT")
    except BaseException as exc:
        rollback(conn)
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise unavailable("store open failed", exc) from exc
        raise
    return conn


def _configure(conn: sqlite3.Connection, max_pages: int | None) -> None:
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"store open failed: journal mode is {mode}, WAL is required")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if max_pages is not None:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages):d}")
