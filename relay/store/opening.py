"""Which engine a RELAY_STORE_URL names: open it (open_store), name it in a log line
(store_name), the lock `relay serve` holds on a SQLite file (serve_lock), and `relay migrate`.
The engines are imported only when one is opened.
"""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import urlsplit

from relay.errors import ConfigError, Problem
from relay.store import Store
from relay.store._sqlite_lock import ServeLock
from relay.store._sqlite_url import sqlite_path

# ServeLock: relay.service holds one
__all__ = [
    "SERVE_LOCK_HELD", "SESSION_NAME", "ServeLock", "migrate", "open_store", "serve_lock",
    "store_name",
]  # fmt: skip

# What the command running calls the PostgreSQL sessions of the stores it opens (their
# application_name in pg_stat_activity, unless the URL or PGAPPNAME names them): `relay serve`
# for replicas, `relay cli dlq list` for a store command (relay.cli sets it), so an operator
# tells a hung command from a replica. Every one was `relay`.
SESSION_NAME: ContextVar[str] = ContextVar("SESSION_NAME", default="relay")


def store_name(url: str) -> str:
    """Which store a RELAY_STORE_URL names, for a log line: SQLite's file; PostgreSQL's hosts
    and database (`db.internal:5432/relay`), never its user, password or query."""
    if url.startswith("sqlite:"):
        return str(sqlite_path(url))
    try:
        parts = urlsplit(url)
    except ValueError:  # refused by the store's check before any line names it
        return ""
    return parts.netloc.rpartition("@")[2] + parts.path


def open_store(
    url: str,
    holder: str = "",
    replica_timeout_s: float = 15.0,
    *,
    upgrade: bool = True,
    read_only: bool = False,
    client: bool = False,
) -> Store:
    """The engine for a RELAY_STORE_URL (not opened yet: call `open`). SQLite: `holder` names
    this process in the leases it takes (see release_leases). PostgreSQL names each process
    itself, and frees the leases of a replica silent for `replica_timeout_s`. Not `upgrade`
    (the store commands but migrate): `open` refuses an older schema instead of migrating it.
    `read_only` (the store commands that only read): SQLite opens no writer, so a full disk
    refuses no read; PostgreSQL is opened as ever. `client` (the store commands but migrate):
    PostgreSQL opens as a short client, not a replica (one connection, no heartbeat, the schema
    only checked: StoreMissing where relay's tables are not there); SQLite as it would."""
    from relay.store.sqlite import SQLiteStore  # noqa: PLC0415

    if url.startswith("sqlite:"):
        return SQLiteStore(sqlite_path(url), holder=holder, upgrade=upgrade, read_only=read_only)
    if url.startswith(("postgresql:", "postgres:")):
        from relay.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore(
            url,
            replica_timeout_s=replica_timeout_s,
            upgrade=upgrade,
            client=client,
            name=SESSION_NAME.get(),
        )
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        [
            Problem(
                "",
                "RELAY_STORE_URL",
                f"unsupported store scheme {scheme[:20]!r} (use sqlite:///... or postgresql://...)",
            )
        ]
    )


# what /healthz, /readyz and a refused update say while another `relay serve` holds the file
SERVE_LOCK_HELD = "store held by another relay serve"


def serve_lock(url: str) -> ServeLock | None:
    """The lock `relay serve` holds on its store from its start to its exit, not opened yet:
    SQLite's `<db>-serve.lock` (one relay per file); None for PostgreSQL (any number)."""
    return ServeLock(sqlite_path(url)) if url.startswith("sqlite:") else None


async def migrate(url: str) -> tuple[int, int]:
    """`relay migrate`: create or migrate the schema of the store at `url`, then close it.

    Returns (schema version before, schema version after); StoreUnavailable if it cannot. Safe
    while replicas run or start: PostgreSQL migrates under an advisory lock, SQLite under its
    write lock. `serve` migrates on start too; this is for operators who migrate first.
    """
    from relay.store.postgres import PostgresStore  # noqa: PLC0415
    from relay.store.sqlite import SQLiteStore  # noqa: PLC0415

    store = open_store(url)
    if not isinstance(store, PostgresStore | SQLiteStore):  # pragma: no cover - every engine
        raise TypeError(f"{type(store).__name__} cannot migrate")
    return await store.migrate()
