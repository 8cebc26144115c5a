"""How many live replicas deliver each channel, counted at each heartbeat renewal: they send at
its rate_limit together (relay.store._pg_replicas, relay.policy.TokenBucket.share).

Real replicas of the store on a throwaway PostgreSQL server; renewals every 0.2 s
(`replica_timeout_s=1.0`), so each count is waited for, never timed.
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
