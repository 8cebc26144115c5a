"""Retention on PostgreSQL deletes a large store a batch per transaction.

One DELETE of every finished notification (and one of every run) took 27 s for 1,000,000 of
them: over a role's `statement_timeout` (managed PostgreSQL often sets one) it was rolled back
whole, every 10 minutes, and the store only grew. Here a trigger refuses a transaction deleting
more than PRUNE_BATCH rows of a table, as such a server refuses one running too long.

Nor does it wait for rows another transaction holds: two replicas prune at once (their passes
start together), and waiting for each other's batch, each found it gone, took the short batch
for the end and left most of a backlog (34,074 of 40,000 notifications) for the next pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from relay.store._pg_rows import PRUNE_BATCH
from relay.store.postgres import PostgresStore
from tests.pg import fresh_database, shared_server

OLD = 2 * PRUNE_BATCH + 1  # two whole batches and a short one

REFUSE_LARGE_DELETES = f"""
CREATE FUNCTION refuse_large_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    name text := 'relay_test.deleted_' || TG_TABLE_NAME;
    n bigint := coalesce(nullif(current_setting(name, true), ''), '0')::bigint
        + (SELECT count(*) FROM gone);
BEGIN
    PERFORM set_config(name, n::text, true);
    IF n > {PRUNE_BATCH} THEN
        RAISE EXCEPTION 'one transaction deleted % rows of %', n, TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER refuse_large_deletes AFTER DELETE ON relay_outbox
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION refuse_large_deletes();
CREATE TRIGGER refuse_large_deletes AFTER DELETE ON relay_runs
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION refuse_large_deletes();
"""

# OLD finished notifications (one event each) and runs last seen at 100, a pending notification
# as old and a notification and a run seen at 5000
SEED = f"""
INSERT INTO relay_outbox
    (id, run_id, rule, channel, template, run_json, created_at, not_before, state, updated_at)
SELECT 'ntf_' || g, 'run_' || g, 'r', 'c', 'run', '\\x7b7d', 100, 100,
    CASE WHEN g = 0 THEN 'pending' ELSE (ARRAY['sent', 'muted', 'dead'])[1 + g % 3] END,
    CASE WHEN g > {OLD} THEN 5000 ELSE 100 END
FROM generate_series(0, {OLD + 1}) AS g;
INSERT INTO relay_events (notification_id, at, kind) SELECT id, 100, 'created' FROM relay_outbox;
INSERT INTO relay_runs (run_id, status, seen_at)
SELECT run_id, 'FAILED', CASE WHEN run_id = 'run_' || ({OLD + 1}) THEN 5000 ELSE 100 END
FROM relay_outbox;
"""


@dataclass
class Seeded:
    store: PostgresStore
    conn: asyncpg.Connection
    url: str

    async def ids(self, sql: str) -> list[str]:
        return [row[0] for row in await self.conn.fetch(sql)]


@pytest.fixture
async def seeded() -> AsyncIterator[Seeded]:
    """SEED in a fresh database, and a store on it that gives up waiting for a lock at once."""
    async with fresh_database(shared_server()) as url:
        store = PostgresStore(url + "?options=-c%20lock_timeout%3D1s")
        await store.open()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(SEED)
            yield Seeded(store, conn, url)
        finally:
            await conn.close()
            await store.close()


async def test_a_large_prune_goes_a_batch_per_transaction(seeded: Seeded) -> None:
    await seeded.conn.execute(REFUSE_LARGE_DELETES)
    assert await seeded.store.prune(before=1000.0) == OLD
    new = OLD + 1
    assert await seeded.ids("SELECT id FROM relay_outbox ORDER BY 1") == ["ntf_0", f"ntf_{new}"]
    events = await seeded.ids("SELECT notification_id FROM relay_events ORDER BY 1")
    assert events == ["ntf_0", f"ntf_{new}"]
    assert await seeded.ids("SELECT run_id FROM relay_runs") == [f"run_{new}"]


async def test_a_prune_takes_what_no_other_transaction_holds(seeded: Seeded) -> None:
    holder = await asyncpg.connect(seeded.url)
    try:
        async with holder.transaction():  # another replica's batch, say
            await holder.execute(
                "SELECT 1 FROM relay_outbox WHERE id IN ('ntf_1', 'ntf_2') FOR UPDATE"
            )
            await holder.execute("SELECT 1 FROM relay_runs WHERE run_id = 'run_1' FOR UPDATE")
            assert await seeded.store.prune(before=1000.0) == OLD - 2  # ntf_1 and ntf_2 held
    finally:
        await holder.close()
    left = await seeded.ids("SELECT id FROM relay_outbox ORDER BY 1")
    assert left == ["ntf_0", "ntf_1", "ntf_2", f"ntf_{OLD + 1}"]
    assert await seeded.ids("SELECT run_id FROM relay_runs ORDER BY 1") == [
        "run_1",
        f"run_{OLD + 1}",
    ]
