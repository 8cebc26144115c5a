"""Retention on PostgreSQL deletes a large store a batch per transaction.

One DELETE of every finished notification (and one of every run) took 27 s for 1,000,000 of
them: over a role's `statement_timeout` (managed PostgreSQL often sets one) it was rolled back
whole, every 10 minutes, and the store only grew. Here a trigger refuses a transaction deleting
more than PRUNE_BATCH rows of a table, as such a server refuses one running too long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


async def test_a_large_prune_goes_a_batch_per_transaction(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(REFUSE_LARGE_DELETES)
        await conn.execute(SEED)
        assert await store.prune(before=1000.0) == OLD
        left = await conn.fetch("SELECT id FROM relay_outbox ORDER BY id")
        assert [r["id"] for r in left] == ["ntf_0", f"ntf_{OLD + 1}"]
        events = await conn.fetch("SELECT notification_id FROM relay_events ORDER BY 1")
        assert [r["notification_id"] for r in events] == ["ntf_0", f"ntf_{OLD + 1}"]
        runs = await conn.fetch("SELECT run_id FROM relay_runs")
        assert [r["run_id"] for r in runs] == [f"run_{OLD + 1}"]
    finally:
        await conn.close()
        await store.close()
