"""Which replicas are alive: each renews its row in relay_replicas while it runs.

A replica opens its store with a holder name of its own (host, pid and a random part), writes
its row before it can claim anything, renews it every `timeout / 5` and deletes it when it
closes. The row's expires_at is `timeout` ahead on the database's clock, so replicas compare no
clocks of their own. A claim treats a lease as free when its holder's row expired or is gone
(`lease_free`): the rows a replica held when it was killed come back to the others within
`timeout`, not when their lease ends minutes later. Alertmanager's `--cluster.peer-timeout`
(15 s) plays the same part for its gossip peers.

Each row also names the channels its replica delivers (`delivering`): the replicas delivering
one send at its `rate_limit` together, each at its share (`sharers`, relay.policy.TokenBucket),
learnt at each renewal.

A replica cut off from the database for longer than `timeout` may still be sending rows the
others now take: those are sent twice, under the same idempotency id — at-least-once, as a kill
between a send and its mark already is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection

import asyncpg

from relay.store._pg_errors import DB_ERRORS, unavailable

log = logging.getLogger("relay.store")

DEFAULT_TIMEOUT_S = 15.0
STALE_ROWS_S = 86_400  # rows of replicas gone this long are deleted (a killed process's)

# Renew this replica's row with the channels it delivers ($3), and count for each of them the
# other live replicas delivering it (an older release's row, channels NULL, delivers them all).
RENEW = """
    WITH renewed AS (
        INSERT INTO relay_replicas (holder, expires_at, channels)
        VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3::text[])
        ON CONFLICT (holder) DO UPDATE
        SET expires_at = excluded.expires_at, channels = excluded.channels
        RETURNING holder
    )
    SELECT mine.channel, count(r.holder) AS others
    FROM unnest($3::text[]) AS mine (channel)
    LEFT JOIN relay_replicas AS r ON r.holder <> $1 AND r.expires_at > clock_timestamp()
        AND (r.channels IS NULL OR mine.channel = ANY (r.channels))
    GROUP BY mine.channel
"""
LIVE = """
    SELECT holder, channels, extract(epoch FROM expires_at - clock_timestamp()) AS left_s
    FROM relay_replicas WHERE expires_at > clock_timestamp() ORDER BY holder
"""
FORGET = "DELETE FROM relay_replicas WHERE holder = $1"
FORGET_STALE = (
    "DELETE FROM relay_replicas WHERE expires_at < clock_timestamp() - make_interval(secs => $1)"
)


def lease_free(now: str) -> str:
    """SQL: the outbox row's lease does not keep it from a claim at `now`, a placeholder ($2)."""
    return f"""(lease_until IS NULL OR lease_until <= {now} OR (
        relay_outbox.lease_holder IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM relay_replicas AS r
            WHERE r.holder = relay_outbox.lease_holder AND r.expires_at > clock_timestamp())))"""  # noqa: S608


def new_holder() -> str:
    """A name no other replica, and no earlier run of this one, has: host:pid:random."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"


Connect = Callable[[], Awaitable[asyncpg.Connection]]


class Heartbeat:
    """Renews this replica's row every `timeout_s / 5` until stopped, over a connection of its
    own: a pool kept busy by intake must not delay the renewal past the timeout (the others
    would take this replica's claims while it sends them). That connection may be refused
    for longer than the timeout while the pool's work (a server full after a restart, the
    pool's connections holding the slots): the others, and the replica itself, then took the
    rows it was sending for a dead replica's and sent them again, an id up to 5 times. So a
    renewal two periods late is made by the next call on a pooled connection (`renew_on`)."""

    def __init__(self, holder: str, timeout_s: float) -> None:
        self.holder = holder
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal recorded
        self._renewing = False  # a pooled call renews: the others need not
        self._channels: list[str] = []  # what this replica delivers (none until it says)
        self._sharers: dict[str, int] = {}  # replicas delivering each of them, this one too
        self._changed = asyncio.Event()  # the channels changed: renew now, not at the period

    def delivering(self, channels: Collection[str]) -> None:
        """This replica delivers `channels` from now on: written at once by the renewing task
        (the others count it within their next renewal)."""
        names = sorted(channels)
        if names != self._channels:
            self._channels = names
            self._changed.set()

    def sharers(self, channel: str) -> int:
        """The live replicas delivering `channel`, this one included, as of the last renewal
        (1 until one counted them)."""
        return self._sharers.get(channel, 1)

    def overdue(self) -> bool:
        """Whether this running heartbeat missed two renewals and no pooled call renews now."""
        late = time.monotonic() - self._renewed > 2 * self.timeout_s / 5
        return late and self._task is not None and not self._renewing

    async def renew_on(self, conn: asyncpg.Connection) -> None:
        """Renew over `conn` (a pooled connection, outside a transaction)."""
        self._renewing = True
        try:
            await self._renew_row(conn)
        finally:
            self._renewing = False

    async def start(self, connect: Connect) -> None:
        """Write the row now (before any claim can name this holder), then keep renewing it;
        StoreUnavailable if the first write fails."""
        try:
            await self._beat(connect, first=True)
        except DB_ERRORS as exc:
            await self._drop()
            raise unavailable("replica heartbeat failed", exc) from exc
        self._task = asyncio.create_task(self._renew(connect), name="relay-replica-heartbeat")

    async def stop(self) -> None:
        """Stop renewing and delete the row: what this replica still holds is free at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._conn is not None:
            with contextlib.suppress(*DB_ERRORS):
                await self._conn.execute(FORGET, self.holder, timeout=self.timeout_s)
        await self._drop()

    async def _beat(self, connect: Connect, *, first: bool = False) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect()
        if first:
            await self._conn.execute(FORGET_STALE, float(STALE_ROWS_S), timeout=self.timeout_s)
        await self._renew_row(self._conn)

    async def _renew_row(self, conn: asyncpg.Connection) -> None:
        channels = self._channels
        rows = await conn.fetch(
            RENEW, self.holder, self.timeout_s, channels, timeout=self.timeout_s / 5
        )
        self._renewed = time.monotonic()
        self._sharers = {row["channel"]: row["others"] + 1 for row in rows}

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self.timeout_s / 5)
            except DB_ERRORS:  # TimeoutError included (an OSError)
                conn.terminate()

    async def _renew(self, connect: Connect) -> None:
        """Renew every period, and at once when the channels delivered change. Said lost
        only when nothing renewed the row for three periods: its own connection refused while
        the replica's calls renew it over the pool is no loss (the row is current, the store
        answers)."""
        late = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.timeout_s / 5)
            self._changed.clear()
            await self._try_beat(connect)
            was_late, late = late, time.monotonic() - self._renewed > 3 * self.timeout_s / 5
            if late and not was_late:
                log.warning("replica heartbeat not recorded: store unavailable")
            elif was_late and not late:
                log.info("replica heartbeat recorded again")

    async def _try_beat(self, connect: Connect) -> None:
        try:
            await self._beat(connect)
        except DB_ERRORS:
            await self._drop()
        except Exception:  # never stop beating: the others would take this replica's work
            log.exception("replica heartbeat failed")
