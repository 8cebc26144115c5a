"""The PostgreSQL store's connections (PgPool): open the pool with the schema created or
migrated and this replica's heartbeat started, lend each call a pooled connection (asyncpg and
socket errors leave as StoreUnavailable; a revoked grant is asked again), ping, and close once
running calls finished. The store's operations (relay.store.postgres and its parts) use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from typing import Any

import asyncpg

from relay.errors import StoreUnavailable
from relay.store._pg_connect import (
    check_url,
    connect_args,
    dsn_and_timeout,
    keep_session,
    session_args,
    unreadable_tls_file,
)
from relay.store._pg_errors import DB_ERRORS, ConnectGate, unavailable
from relay.store._pg_grants import INSUFFICIENT_PRIVILEGE, Grants
from relay.store._pg_replicas import DEFAULT_TIMEOUT_S, Heartbeat, new_holder
from relay.store._pg_schema import check, migrate

POOL_MIN = 1
POOL_MAX = 10
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0  # /readyz answers 503 by then: a health check must not hang with the server


class PgPool:
    """A PostgreSQL database's pool, heartbeat and grants, for PostgresStore."""

    def __init__(
        self,
        url: str,
        *,
        pool_max: int = POOL_MAX,
        replica_timeout_s: float = DEFAULT_TIMEOUT_S,
        upgrade: bool = True,
        client: bool = False,
        name: str = "relay",
    ) -> None:
        check_url(url)
        self._upgrade = upgrade  # False: an older schema is refused, not migrated
        # a store command's short look (see `open`); it opened as a replica did: a pool of up
        # to 10, its row in relay_replicas renewed by a task on an 11th connection, the schema
        # created in an empty database and grants given
        self._client = client
        self._url, self._connect_timeout = dsn_and_timeout(url, CONNECT_TIMEOUT_S)
        self._session = session_args(url, name)  # its sessions' application_name
        self._pool_max = 1 if client else pool_max
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

    def delivering(self, channels: Collection[str]) -> None:
        """The channels this replica delivers from now on (relay.store._pg_replicas)."""
        self._heartbeat.delivering(channels)

    def sharers(self, channel: str) -> int:
        """The live replicas delivering `channel`, this one included."""
        return self._heartbeat.sharers(channel)

    async def open(self) -> None:
        """Connect the pool, create or migrate the schema (safe with replicas starting) and
        start this replica's heartbeat. A `client` (`relay dlq`, `silence`, `history`): one
        connection, the schema only checked (StoreMissing where there is none), no heartbeat:
        it claims nothing, so it is no replica."""
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
                    await self._schema(conn)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, DB_ERRORS):
                    raise unavailable("store open failed", exc) from exc
                raise
            self._pool = pool
            self._grants.forget()
            if self._client:
                return
            try:
                await self._heartbeat.start(self._connect)
            except BaseException:
                await self.close()
                raise

    async def _schema(self, conn: asyncpg.Connection) -> None:
        if self._client:
            await check(conn)
        else:
            await migrate(conn, upgrade=self._upgrade)

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


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a ping nobody waits for any more as seen (no asyncio warning)."""
    if not future.cancelled():
        future.exception()
