"""The SQLite store's key-value rows (kv) and named leases (feed leadership): KvOps, the
SQLiteStore methods on them, each one op of the writer (relay.store._sqlite_writer)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from typing import Any

from relay.store import KvWrite
from relay.store._rows import lease_end
from relay.store._sqlite_writer import Writer

IN_CHUNK = 500  # values per `IN (?, ...)`: within SQLite's variable limit, old versions too


class KvOps:
    """Store.kv_* and the leases (try_lead, write_if_free) of SQLiteStore."""

    _writer: Writer

    async def kv_get(self, namespace: str, key: str) -> str | None:
        row = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        )
        return None if row is None else str(row[0])

    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]:
        sql = "SELECT key, value FROM kv WHERE namespace = ? AND key IN"
        rows = await self._writer.run(lambda conn: in_chunks(conn, sql, (namespace,), list(keys)))
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

    async def kv_list(self, namespace: str) -> dict[str, str]:
        rows = await self._writer.run(
            lambda conn: conn.execute(
                "SELECT key, value FROM kv WHERE namespace = ?", (namespace,)
            ).fetchall()
        )
        return {str(key): str(value) for key, value in rows}

    async def kv_write(self, write: KvWrite, now: float) -> None:
        await self._writer.run(lambda conn: kv_write(conn, write, now))

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


def in_chunks(
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
    kv_write(conn, write, now)
    return True


def kv_write(conn: sqlite3.Connection, write: KvWrite, now: float) -> None:
    """One op (one savepoint): clear, delete, put, in that order."""
    conn.executemany("DELETE FROM kv WHERE namespace = ?", [(ns,) for ns in write.clear])
    conn.executemany("DELETE FROM kv WHERE namespace = ? AND key = ?", write.delete)
    conn.executemany(
        "INSERT INTO kv (namespace, key, value, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (namespace, key) DO UPDATE"
        " SET value = excluded.value, updated_at = excluded.updated_at",
        [(ns, key, value, now) for ns, key, value in write.put],
    )
