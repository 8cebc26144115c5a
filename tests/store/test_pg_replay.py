"""A replay on PostgreSQL moves dead notifications back a batch per transaction.

`relay dlq replay --all` over 100,000 dead ran one UPDATE in one transaction: it held every dead
row's lock and a transaction open while replicas served, for as long as it ran. Here a trigger
refuses a transaction moving more rows of relay_outbox than a batch (and what comes with it:
the rest of a dead digest, the recoveries that follow), as a server with a statement_timeout
refuses one running too long. A dead digest still goes back whole with its batch, and the
recoveries of the replayed alerts with them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.model import recovery_id
from relay.store._engines import REPLAY_BATCH
from relay.store.postgres import PostgresStore
from tests.pg import fresh_database, shared_server

DEAD = 3 * REPLAY_BATCH + 1  # three whole batches and a short one
LIMIT = REPLAY_BATCH + 10  # a batch, with the rest of a digest and a recovery or two

REFUSE_LARGE_UPDATES = f"""
CREATE FUNCTION refuse_large_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint := coalesce(nullif(current_setting('relay_test.updated', true), ''), '0')::bigint
        + (SELECT count(*) FROM moved);
BEGIN
    PERFORM set_config('relay_test.updated', n::text, true);
    IF n > {LIMIT} THEN
        RAISE EXCEPTION 'one transaction moved % rows of relay_outbox', n;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER refuse_large_updates AFTER UPDATE ON relay_outbox
    REFERENCING NEW TABLE AS moved FOR EACH STATEMENT EXECUTE FUNCTION refuse_large_updates();
"""
# DEAD dead notifications, each dead at a time of its own; a dead digest of five rows (one
# claim: group g, lease -500 of holder h) whose deaths straddle the end of the first batch; the
# sent recovery of the first notification
SEED = f"""
INSERT INTO relay_outbox (id, run_id, rule, channel, template, run_json, created_at, not_before,
    attempts, state, updated_at)
SELECT 'ntf_' || lpad(g::text, 6, '0'), 'run_' || g, 'r', 'c', 'run', '\\x7b7d', 100, 100, 5,
    'dead', 100 + g
FROM generate_series(1, {DEAD}) AS g;
INSERT INTO relay_outbox (id, run_id, rule, channel, template, run_json, created_at, not_before,
    attempts, state, updated_at, group_key, lease_until, lease_holder)
SELECT 'dig_' || k, 'run_d' || k, 'r', 'c', 'run', '\\x7b7d', 100, 100, 5, 'dead',
    {100 + REPLAY_BATCH} + 0.5 * k, 'g', -500, 'h'
FROM generate_series(-2, 2) AS k;
INSERT INTO relay_outbox (id, run_id, rule, channel, template, run_json, created_at, not_before,
    attempts, state, updated_at)
VALUES ('{recovery_id("ntf_000001")}', 'run_1', 'r', 'c', 'run', '\\x7b7d', 100, 100, 1, 'sent',
    100);
"""
ALL = DEAD + 5


@pytest.fixture
async def seeded() -> AsyncIterator[tuple[PostgresStore, asyncpg.Connection]]:
    async with fresh_database(shared_server()) as url:
        store = PostgresStore(url)
        await store.open()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(SEED)
            await conn.execute(REFUSE_LARGE_UPDATES)
            yield store, conn
        finally:
            await conn.close()
            await store.close()


async def moved_back(conn: asyncpg.Connection) -> None:
    """Every dead row and the recovery are pending, each with one 'replayed' event."""
    states = await conn.fetch("SELECT state, count(*) AS n FROM relay_outbox GROUP BY state")
    assert {row["state"]: row["n"] for row in states} == {"pending": ALL + 1}
    events = await conn.fetchval(
        "SELECT count(DISTINCT notification_id) FROM relay_events WHERE kind = 'replayed'"
    )
    assert events == await conn.fetchval("SELECT count(*) FROM relay_events") == ALL + 1
    digest = await conn.fetch(
        "SELECT lease_until, lease_holder FROM relay_outbox WHERE group_key = 'g'"
    )
    assert {tuple(row) for row in digest} == {(-500, "h")}  # one claim still: it goes whole


async def test_replay_all_goes_a_batch_per_transaction(
    seeded: tuple[PostgresStore, asyncpg.Connection],
) -> None:
    store, conn = seeded
    assert await store.replay(None, 5000) == ALL
    await moved_back(conn)


async def test_replay_of_named_ones_goes_a_batch_per_transaction(
    seeded: tuple[PostgresStore, asyncpg.Connection],
) -> None:
    """Named (`relay dlq replay $(...)`): the same batches; naming one row of the digest (in
    the last batch) brings back the rest of it."""
    store, conn = seeded
    named = [f"ntf_{g:06d}" for g in range(1, DEAD + 1)] + ["dig_2"]
    assert await store.replay(named, 5000) == ALL
    await moved_back(conn)
