"""Each replica's row in relay_replicas (relay.store._pg_replicas): renewed while it runs with
no call of its own, the rows of replicas gone a day deleted, and how many live replicas deliver
each channel, counted at each renewal: they send at its rate_limit together
(relay.policy.TokenBucket.share).

Real replicas of the store on a throwaway PostgreSQL server; renewals every 0.2 s
(`replica_timeout_s=1.0`), so each change is waited for, never timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from relay.store.postgres import PostgresStore
from tests.pg import fresh_database, shared_server


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


async def counted(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_each_channel_counts_the_live_replicas_that_deliver_it(url: str) -> None:
    a, b, c = (PostgresStore(url, replica_timeout_s=1.0) for _ in range(3))
    for store in (a, b, c):
        await store.open()
    try:
        assert a.sharers("hook") == 1  # nothing counted yet: the full rate
        a.delivering(["hook", "slack"])
        b.delivering(["hook"])
        c.delivering([])  # a `--workers` parent: delivers nothing, shares nothing
        await counted(lambda: a.sharers("hook") == 2 and b.sharers("hook") == 2, "hook by two")
        assert a.sharers("slack") == 1
        b.delivering(["hook", "slack"])  # a reload that adds a channel
        await counted(lambda: a.sharers("slack") == 2, "slack by two after b's reload")
        await b.close()  # its row is gone at once
        await counted(lambda: a.sharers("hook") == 1, "hook by one after b stopped")
    finally:
        for store in (a, b, c):
            await store.close()


async def test_an_expired_replica_is_not_counted_and_an_older_release_counts_for_all(
    url: str,
) -> None:
    """A killed replica's row stops counting when it expires; a replica of the release before
    (its row's channels NULL) sends every channel at the full rate, so it counts for each."""
    live = PostgresStore(url, replica_timeout_s=1.0)
    await live.open()
    conn = await asyncpg.connect(url)
    try:
        live.delivering(["hook"])
        await conn.execute(
            "INSERT INTO relay_replicas (holder, expires_at)"
            " VALUES ('older', clock_timestamp() + interval '1 hour'),"
            " ('killed', clock_timestamp() - interval '1 second')"
        )
        await counted(lambda: live.sharers("hook") == 2, "the older release's row counted")
        await conn.execute("UPDATE relay_replicas SET expires_at = now() WHERE holder = 'older'")
        await counted(lambda: live.sharers("hook") == 1, "the expired row no longer counted")
    finally:
        await conn.close()
        await live.close()


async def test_an_idle_replica_keeps_renewing_its_row(url: str) -> None:
    """No call renews it over the pool (no channel, no traffic): its own task must, or the
    others would take its claims for a dead replica's."""
    store = PostgresStore(url, replica_timeout_s=1.0)
    await store.open()
    conn = await asyncpg.connect(url)
    try:
        sql = "SELECT expires_at FROM relay_replicas WHERE holder = $1"
        first = await conn.fetchval(sql, store.holder)
        for _ in range(3):  # renewed again and again, not once
            seen = await conn.fetchval(sql, store.holder)
            deadline = time.monotonic() + 30
            while await conn.fetchval(sql, store.holder) == seen:
                assert time.monotonic() < deadline, "the row was not renewed"
                await asyncio.sleep(0.05)
        assert await conn.fetchval(sql, store.holder) > first
    finally:
        await conn.close()
        await store.close()


async def test_a_starting_replica_deletes_rows_of_replicas_gone_a_day(url: str) -> None:
    """A killed replica never deletes its row; the next start removes those expired a day ago
    (STALE_ROWS_S), not the recent ones: a replica cut off for minutes is still told apart."""
    conn = await asyncpg.connect(url)
    try:
        first = PostgresStore(url)
        await first.open()  # the schema
        await first.close()
        await conn.execute(
            "INSERT INTO relay_replicas (holder, expires_at) VALUES"
            " ('gone', clock_timestamp() - interval '25 hours'),"
            " ('recent', clock_timestamp() - interval '23 hours')"
        )
        store = PostgresStore(url)
        await store.open()
        try:
            rows = await conn.fetch("SELECT holder FROM relay_replicas ORDER BY holder")
            assert {row["holder"] for row in rows} == {"recent", store.holder}
        finally:
            await store.close()
    finally:
        await conn.close()
