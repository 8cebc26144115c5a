"""Observe calls and sent marks arriving together on PostgreSQL share transactions
(relay.store._pg_batches).

Single-run POSTs from many clients each paid a transaction of five or six round trips; relay's
process was the limit (the server sat idle in transaction, waiting for it). Calls that arrive
while LANES transactions run now wait and go together. Each call keeps its own decide, birth
lease, result and failure. A channel's sends each paid a statement and a commit for its sent
mark; marks made meanwhile now go in one statement, each with its own time and receipt.
Transactions are counted by the transaction ids the server handed out (every call writes),
read with pg_current_snapshot from another session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from relay.errors import StoreUnavailable
from relay.model import Decision, Run, RunState, notification_id
from relay.store import BirthLease, Observed
from relay.store._pg_marks import SENT_LANES
from relay.store._pg_observe import LANES, MAX_RUNS
from relay.store.postgres import PostgresStore
from tests.pg import fetchval, fresh_database, shared_server
from tests.store.conftest import decide, decide_digest, explode_on_boom, ids, make_run

CALLS = 40


@pytest.fixture
async def pg() -> AsyncIterator[tuple[PostgresStore, str]]:
    async with fresh_database(shared_server()) as url:
        store = PostgresStore(url)
        await store.open()
        try:
            yield store, url
        finally:
            await store.close()


async def next_xid(url: str) -> int:
    return await fetchval(url, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text")


def decider(i: int) -> tuple[str, str]:
    """Call i's (rule, channel): even calls decide with `decide`, odd ones with a digest's."""
    return ("r1", f"c{i % 3}") if i % 2 == 0 else ("dg", "d")


async def test_calls_at_once_share_transactions_and_keep_their_own_results(
    pg: tuple[PostgresStore, str],
) -> None:
    store, url = pg
    before = await next_xid(url)
    results = await asyncio.gather(
        *(
            store.observe(
                [make_run(f"run_{i}", tags=[f"c{i % 3}"], taskIdentifier="t")],
                decide if i % 2 == 0 else decide_digest,
                10.0,
            )
            for i in range(CALLS)
        )
    )
    written = await next_xid(url) - before
    assert [ids(r) for r in results] == [
        [notification_id(f"run_{i}", *decider(i))] for i in range(CALLS)
    ]
    assert written < CALLS // 4, written  # a transaction each: CALLS
    assert await store.counts() == {"pending": CALLS, "sent": 0, "dead": 0, "muted": 0}


async def test_calls_go_together_only_up_to_max_runs(pg: tuple[PostgresStore, str]) -> None:
    """Calls waiting for a lane go together while their runs fit MAX_RUNS: two of 40% each,
    not every waiting one in one transaction."""
    store, url = pg
    size = MAX_RUNS * 2 // 5
    before = await next_xid(url)
    results = await asyncio.gather(
        *(
            store.observe([make_run(f"run_{i}_{k}") for k in range(size)], decide, 10.0)
            for i in range(3 * LANES)
        )
    )
    assert [len(r) for r in results] == [size] * 3 * LANES
    # LANES alone at once, then the 2 * LANES waiting ones two by two
    assert await next_xid(url) - before >= 2 * LANES


async def test_each_call_of_a_shared_transaction_gets_its_own_birth_lease(
    pg: tuple[PostgresStore, str],
) -> None:
    """Call i holds room for 1 + i % 3 of its three rows: it leases that many, is told of
    those, and the others are left for a claim."""
    store, _ = pg
    handed: dict[int, list[str]] = {}
    calls = 3 * LANES

    def lease(i: int) -> BirthLease:
        return BirthLease(
            {"c1": 1 + i % 3},
            60.0,
            lambda rows: handed.setdefault(i, []).extend(n.id for n in rows),
        )

    def runs(i: int) -> list[Run]:
        return [make_run(f"run_{i}_{k}") for k in range(3)]

    results = await asyncio.gather(
        *(store.observe(runs(i), decide, 10.0, lease(i)) for i in range(calls))
    )
    leased = {i: [f"run_{i}_{k}" for k in range(1 + i % 3)] for i in range(calls)}
    for i, observed in enumerate(results):
        assert [n.run_id for item in observed for n in item.leased] == leased[i]
    for _ in range(100):
        if len(handed) == calls:
            break
        await asyncio.sleep(0.01)
    assert handed == {i: [notification_id(r, "r1", "c1") for r in leased[i]] for i in range(calls)}
    claimed = await store.claim("c1", now=11.0, limit=100, lease_s=60)
    left = [f"run_{i}_{k}" for i in range(calls) for k in range(1 + i % 3, 3)]
    assert sorted(n.run_id for n in claimed) == sorted(left)


async def test_a_failing_call_in_a_shared_transaction_fails_alone(
    pg: tuple[PostgresStore, str],
) -> None:
    """Its batch is tried again call by call: only the call whose decide raised fails, and
    the runs of its own before the failing one are not written."""
    store, _ = pg
    calls = 3 * LANES
    boom = calls - 2  # queued behind the first LANES: it shares a transaction

    def runs(i: int) -> list[Run]:
        return [make_run(f"ok_{i}")] + ([make_run("boom_1")] if i == boom else [])

    results = await asyncio.gather(
        *(store.observe(runs(i), explode_on_boom, 10.0) for i in range(calls)),
        return_exceptions=True,
    )
    assert isinstance(results[boom], ValueError), results[boom]
    assert [ids(r) for i, r in enumerate(results) if i != boom and isinstance(r, list)] == [
        [notification_id(f"ok_{i}", "r1", "c1")] for i in range(calls) if i != boom
    ]
    assert await store.counts() == {"pending": calls - 1, "sent": 0, "dead": 0, "muted": 0}


async def test_a_cancelled_caller_leaves_its_batch_mates_and_the_lanes_alone(
    pg: tuple[PostgresStore, str],
) -> None:
    store, _ = pg
    started = asyncio.Event()

    def deciding(run: Run, previous: RunState | None) -> Decision:
        started.set()
        return decide(run, previous)

    calls: list[asyncio.Future[list[Observed]]] = [
        asyncio.ensure_future(store.observe([make_run(f"run_{i}")], deciding, 10.0))
        for i in range(3 * LANES)
    ]
    await asyncio.sleep(0)
    calls[-1].cancel()  # waiting for a lane
    calls[0].cancel()  # in its transaction
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(results[i], asyncio.CancelledError) for i in (0, -1))
    assert [ids(r) for r in results[1:-1] if isinstance(r, list)] == [
        [notification_id(f"run_{i}", "r1", "c1")] for i in range(1, 3 * LANES - 1)
    ]
    after = await asyncio.wait_for(store.observe([make_run("run_after")], decide, 11.0), 30)
    assert ids(after) == [notification_id("run_after", "r1", "c1")]  # no lane was lost
    assert started.is_set()


async def claimed_rows(store: PostgresStore, count: int) -> list[str]:
    """`count` rows of channel c1, observed in one call and claimed: (id, 1 attempt) marks."""
    await store.observe([make_run(f"run_{i}") for i in range(count)], decide, 10.0)
    claimed = await store.claim("c1", now=11.0, limit=count, lease_s=60)
    assert len(claimed) == count
    return [n.id for n in claimed]


async def test_sent_marks_at_once_share_statements_and_keep_their_own_receipts(
    pg: tuple[PostgresStore, str],
) -> None:
    store, url = pg
    rows = await claimed_rows(store, CALLS)
    before = await next_xid(url)
    await asyncio.gather(
        *(
            store.mark_sent(
                [(row, 1)], now=20.0 + i, receipt=f"r{i}", error=f"e{i}" if i % 2 else None
            )
            for i, row in enumerate(rows)
        )
    )
    written = await next_xid(url) - before
    assert written < CALLS // 4, written  # a statement each: CALLS
    for i, row in enumerate(rows):
        sent = await store.get(row)
        assert sent is not None
        assert (sent.state, sent.attempts, sent.receipt) == ("sent", 1, f"r{i}")
        assert sent.last_error == (f"e{i}" if i % 2 else None)
        assert [(e["kind"], e["at"], e["attempts"]) for e in await store.events(row)][-1] == (
            "sent",
            20.0 + i,
            1,
        )


async def test_a_sent_mark_the_server_refuses_fails_alone_and_the_others_commit(
    pg: tuple[PostgresStore, str],
) -> None:
    store, url = pg
    rows = await claimed_rows(store, 3 * SENT_LANES)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(REFUSE_RECEIPT)
    finally:
        await conn.close()
    bad = len(rows) - 2  # queued behind the first SENT_LANES: it shares a statement
    results = await asyncio.gather(
        *(
            store.mark_sent([(row, 1)], now=20.0, receipt="bad" if i == bad else "ok")
            for i, row in enumerate(rows)
        ),
        return_exceptions=True,
    )
    assert isinstance(results[bad], StoreUnavailable), results[bad]
    assert [r for i, r in enumerate(results) if i != bad] == [None] * (len(rows) - 1)
    assert await store.counts() == {"pending": 1, "sent": len(rows) - 1, "dead": 0, "muted": 0}


async def test_closing_commits_the_sent_marks_still_waiting_for_a_statement(
    pg: tuple[PostgresStore, str],
) -> None:
    """A shutdown closes the store while sends end: the marks queued behind SENT_LANES hold no
    connection yet, and the pool's own wait for running calls would not see them (each would
    be refused as the store closed, its row sent again after its lease)."""
    store, url = pg
    rows = await claimed_rows(store, 3 * SENT_LANES)
    marks = [
        asyncio.ensure_future(store.mark_sent([(row, 1)], now=20.0, receipt="ok")) for row in rows
    ]
    await asyncio.sleep(0)  # each queued, SENT_LANES statements under way
    await store.close()
    assert await asyncio.gather(*marks, return_exceptions=True) == [None] * len(rows)
    assert await fetchval(url, "SELECT count(*) FROM relay_outbox WHERE state = 'sent'") == len(
        rows
    )


REFUSE_RECEIPT = """
CREATE FUNCTION refuse_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.receipt = 'bad' THEN
        RAISE EXCEPTION 'refused' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_receipt BEFORE UPDATE ON relay_outbox
    FOR EACH ROW EXECUTE FUNCTION refuse_receipt();
"""


# Each attempt to write relay_runs draws from a sequence (not undone by a rollback), then the
# server refuses it: the store as a whole (25006, read-only: a failover's standby) or one run's
# value (22023, invalid parameter value: what one call brought).
REFUSE = """
CREATE SEQUENCE attempts;
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('attempts');
    IF TG_ARGV[0] = 'store' OR EXISTS (SELECT 1 FROM saved WHERE run_id LIKE 'bad%') THEN
        RAISE EXCEPTION 'refused' USING ERRCODE = TG_ARGV[1];
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER refuse AFTER INSERT ON relay_runs REFERENCING NEW TABLE AS saved
    FOR EACH STATEMENT EXECUTE FUNCTION refuse({what}, {code});
"""


async def refusing(url: str, what: str, code: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(REFUSE.format(what=f"'{what}'", code=f"'{code}'"))
    finally:
        await conn.close()


async def attempts(url: str) -> int:
    return await fetchval(url, "SELECT last_value FROM attempts")


async def test_a_value_the_server_refuses_fails_its_own_call_alone(
    pg: tuple[PostgresStore, str],
) -> None:
    store, url = pg
    await refusing(url, "value", "22023")
    calls = 3 * LANES
    bad = calls - 2  # queued behind the first LANES: it shares a transaction

    def runs(i: int) -> list[Run]:
        return [make_run(f"ok_{i}")] + ([make_run("bad_1")] if i == bad else [])

    results = await asyncio.gather(
        *(store.observe(runs(i), decide, 10.0) for i in range(calls)), return_exceptions=True
    )
    assert isinstance(results[bad], StoreUnavailable), results[bad]
    assert [ids(r) for i, r in enumerate(results) if i != bad and isinstance(r, list)] == [
        [notification_id(f"ok_{i}", "r1", "c1")] for i in range(calls) if i != bad
    ]


async def test_a_store_refusing_every_write_fails_a_shared_transaction_at_once(
    pg: tuple[PostgresStore, str],
) -> None:
    """Each call alone would wait for the store again (seconds each, for one that does not
    answer): the calls of a batch the store refused all fail with that one attempt."""
    store, url = pg
    await refusing(url, "store", "25006")
    calls = 3 * LANES
    results = await asyncio.gather(
        *(store.observe([make_run(f"run_{i}")], decide, 10.0) for i in range(calls)),
        return_exceptions=True,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert await attempts(url) < 2 * LANES  # LANES alone, then the rest together; not each
