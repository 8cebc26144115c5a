"""The tests' PostgreSQL: one throwaway server for the session (tools/pgserver.py starts it in a
temp dir with the machine's initdb and pg_ctl), a fresh database per test, a DML-only role.

Without binaries the PostgreSQL tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tools.pgserver import PgServer, PgUnavailable, find_bindir
from tools.pgserver import start_server as _start_server

__all__ = ["PgServer", "dml_role", "find_bindir", "fresh_database", "shared_server", "start_server"]


def start_server(*, standby: bool = False) -> PgServer:
    """tools.pgserver.start_server; pytest.skip when the machine has no PostgreSQL."""
    try:
        return _start_server(standby=standby)
    except PgUnavailable as exc:
        pytest.skip(str(exc))


_shared: list[PgServer] = []
_failed: list[BaseException] = []


def shared_server() -> PgServer:
    """The session's server, started on first use (one for every test module)."""
    if _failed:  # a skip or a failure to start is the answer for every later test too
        raise _failed[0]
    if not _shared:
        try:
            _shared.append(start_server())
        except BaseException as exc:
            _failed.append(exc)
            raise
    server = _shared[0]
    if not server.running():
        server.start()
    return server


_counter = iter(range(1, 1_000_000))


@contextlib.asynccontextmanager
async def fresh_database(server: PgServer) -> AsyncIterator[str]:
    """A new empty database on `server` for one test; its URL; dropped afterwards."""
    name = f"relay_test_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield server.url(name)
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        admin = await asyncpg.connect(server.url())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def dml_role(conn: asyncpg.Connection, url: str) -> AsyncIterator[tuple[str, str]]:
    """A login role granted SELECT, INSERT, UPDATE, DELETE on the tables there are now (as
    docs/postgresql.md has replicas run), `conn` a superuser's; its name and `url` as it,
    dropped after."""
    role = f"relay_dml_{os.getpid()}_{next(_counter)}"
    await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await conn.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
        )
        yield role, url.replace("postgres@", f"{role}@")
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')


async def fetchval(url: str, sql: str) -> int:
    """One number read in a session of its own (not the store's)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()
