"""The Store contract, run on every engine (SQLite and PostgreSQL, see conftest.py).

Observe, the outbox lifecycle, digests, silences, history, retention, key-value state, leader
leases, and what two stores on one database (two processes, two replicas) may and may not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest
import trustme

from relay.channels._slack_threads import THREADS
from relay.channels.email import SENT
from relay.errors import ConfigError, StoreUnavailable
from relay.grouping import group_key
from relay.model import (
    MAX_RUN_ID_CHARS,
    Decision,
    Run,
    RunState,
    Silence,
    Timing,
    notification_id,
    recovery_id,
)
from relay.store import BirthLease, HistoryQuery, KvWrite, Observed, Store, _pg_pool
from relay.store._pg_connect import connect_args
from relay.store._pg_errors import unavailable
from relay.store._pg_schema import MIGRATION_LOCK, SCHEMA_VERSION
from relay.store.opening import migrate, open_store
from relay.store.postgres import PostgresStore
from tests.conftest import run_cli
from tests.fakes.serving import free_port
from tests.pg import fresh_database, shared_server
from tests.store.conftest import (
    DIGEST,
    Engine,
    decide,
    decide_digest,
    decide_recovery,
    enqueue,
    ids,
    make_run,
    observe_beside_a_failing_call,
)

EMPTY = {"pending": 0, "sent": 0, "dead": 0, "muted": 0}

# --- observe -------------------------------------------------------------------------------------


async def test_observe_enqueues_once_and_survives_a_restart(engine: Engine) -> None:
    first = engine.make()
    await first.open()
    observed = await first.observe([make_run("run_1", costInCents=2.5)], decide, now=10.0)
    assert observed[0].run_id == "run_1" and not observed[0].stale
    [notification] = observed[0].notifications
    assert notification.id == notification_id("run_1", "r1", "c1")
    assert (notification.channel, notification.template, notification.run["id"]) == (
        "c1",
        "t1",
        "run_1",
    )
    again = await first.observe([make_run("run_1", at_s=1001)], decide, now=11.0)
    assert again == [Observed("run_1", stale=False, notifications=[])]
    await first.close()

    second = engine.make()
    await second.open()
    try:
        stored = await second.get(notification.id)
        assert stored == notification
        assert stored is not None and stored.run["costInCents"] == 2.5
        after_restart = await second.observe([make_run("run_1", at_s=1002)], decide, now=12.0)
        assert ids(after_restart) == []
        assert await second.counts() == {**EMPTY, "pending": 1}
    finally:
        await second.close()


async def test_a_stale_update_changes_nothing(store: Store) -> None:
    await store.observe([make_run("run_1", "EXECUTING", at_s=2000)], decide, now=1.0)
    observed = await store.observe([make_run("run_1", "FAILED", at_s=1000)], decide, now=2.0)
    assert observed == [Observed("run_1", stale=True)]
    assert await store.counts() == EMPTY
    # The stored state is still the newer EXECUTING one: a later FAILED fires.
    assert len(ids(await store.observe([make_run("run_1", at_s=3000)], decide, now=3.0))) == 1


async def test_the_same_run_twice_in_one_call_sees_the_first(store: Store) -> None:
    runs = [make_run("run_1", at_s=1000), make_run("run_1", at_s=1001), make_run("run_2")]
    observed = await store.observe(runs, decide, now=1.0)
    assert [len(o.notifications) for o in observed] == [1, 0, 1]
    assert [o.run_id for o in observed] == ["run_1", "run_1", "run_2"]


async def test_many_concurrent_observes(store: Store) -> None:
    results = await asyncio.gather(
        *(store.observe([make_run(f"run_{i}")], decide, now=1.0) for i in range(200))
    )
    assert sum(len(ids(observed)) for observed in results) == 200
    assert await store.counts() == {**EMPTY, "pending": 200}


async def test_a_failing_call_fails_alone_and_leaves_no_trace(store: Store) -> None:
    await observe_beside_a_failing_call(store)
    assert await store.get(notification_id("ok_0", "r1", "c1")) is None
    assert len(ids(await store.observe([make_run("ok_0")], decide, now=2.0))) == 1


async def test_nul_characters_in_text_are_stored(store: Store) -> None:
    """A NUL in a task name or an error text (hostile input) must not make the store
    'unavailable' (a run id holding one is refused at intake: Run)."""
    run = make_run("run_nul", payload="a\x00b", taskIdentifier="t\x00")
    [nid] = ids(await store.observe([run], decide, now=1.0))
    await store.mark_retry([(nid, 1)], now=2.0, not_before=3.0, reason="other", error="x\x00y")
    row = await store.get(nid)
    assert row is not None and row.run["payload"] == "a\x00b" and row.last_error is not None
    await store.kv_put("ns\x00", "k\x00", "v\x00", now=1.0)
    assert (await store.kv_get("ns\x00", "k\x00") or "").startswith("v")


# --- claim and the outbox lifecycle --------------------------------------------------------------


async def test_the_longest_run_id_intake_accepts_is_stored(store: Store) -> None:
    """relay.model caps run ids so that PostgreSQL can index them; incompressible 4-byte
    characters are the worst case (a 503 retried forever, /readyz not ready, before the cap)."""
    chars = random.Random(0).choices(range(0x1F300, 0x1F64F), k=MAX_RUN_ID_CHARS)
    run_id = "".join(map(chr, chars))
    [n] = ids(await store.observe([make_run(run_id)], decide, now=1.0))
    assert [row.id for row in await store.history(HistoryQuery(run_id=run_id))] == [n]
    await store.kv_put(THREADS, f"slack-channel:#alerts:{run_id}", "1.2", now=1.0)


async def test_claim_leases_respects_channel_not_before_and_order(store: Store) -> None:
    late = (await enqueue(store, "run_late", 30.0))[0]
    early = (await enqueue(store, "run_early", 10.0))[0]
    middle = (await enqueue(store, "run_middle", 20.0))[0]
    await enqueue(store, "run_other", 5.0, "c2")

    assert await store.claim("c1", now=9.0, limit=10, lease_s=60) == []
    assert [n.id for n in await store.claim("c1", now=25.0, limit=10, lease_s=60)] == [
        early,
        middle,
    ]
    assert [n.id for n in await store.claim("c1", now=40.0, limit=10, lease_s=60)] == [late]
    assert await store.claim("c1", now=84.0, limit=10, lease_s=60) == []  # leased until 85
    again = await store.claim("c1", now=85.0, limit=1, lease_s=60)  # expired, limit 1
    assert [n.id for n in again] == [early]
    assert [n.channel for n in await store.claim("c2", now=5.0, limit=10, lease_s=60)] == ["c2"]


async def test_a_claim_of_rows_whose_lease_ended_takes_nothing_over(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A takeover (rows of a stopped replica, their lease not ended) is logged as a warning;
    a claim of new rows, or of rows whose lease has just ended, takes nothing over and says
    nothing of it: an operator would look for a replica that died."""
    caplog.set_level(logging.INFO, logger="relay.store")
    [ident] = await enqueue(store, "run_1", 10.0)
    assert [n.id for n in await store.claim("c1", now=20.0, limit=10, lease_s=60)] == [ident]
    assert [n.id for n in await store.claim("c1", now=80.0, limit=10, lease_s=60)] == [ident]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_oldest_pending_is_what_waits_longest(store: Store) -> None:
    assert await store.oldest_pending(now=5.0) is None
    first = (await enqueue(store, "run_1", 10.0))[0]
    await enqueue(store, "run_2", 20.0, "c2")
    assert await store.oldest_pending(now=25.0) == 10.0
    await store.claim("c1", now=30.0, limit=1, lease_s=60)  # claimed, still pending
    assert await store.oldest_pending(now=30.0) == 10.0
    await store.mark_sent([(first, 1)], now=31.0)
    assert await store.oldest_pending(now=31.0) == 20.0


async def test_a_digest_run_waiting_for_its_group_is_not_overdue(store: Store) -> None:
    """A run held for its digest (cookbook: group_interval 24h) waits by design: it counts from
    its group's flush time, so RelayOldestPendingOld does not page about a working digest; once
    an attempt failed it counts from its creation, like any notification."""
    [held] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 100))
    assert await store.oldest_pending(now=129.0) is None  # due at 130 (group_wait 30 s)
    assert await store.oldest_pending(now=140.0) == 130.0
    await store.claim("d", now=140.0, limit=10, lease_s=60)
    await store.mark_retry(
        [(held, 1)], now=141.0, not_before=200.0, reason="network", error="network"
    )
    assert await store.oldest_pending(now=150.0) == 100.0


async def test_next_due_accounts_for_leases(store: Store) -> None:
    assert await store.next_due("c1") is None
    await enqueue(store, "run_1", 10.0)
    await enqueue(store, "run_2", 20.0)
    assert await store.next_due("c1") == 10.0
    await store.claim("c1", now=15.0, limit=1, lease_s=30)  # run_1 leased until 45
    assert await store.next_due("c1") == 20.0
    await store.claim("c1", now=25.0, limit=1, lease_s=30)  # run_2 leased until 55
    assert await store.next_due("c1") == 45.0
    assert await store.next_due("c2") is None


async def test_next_due_is_the_earliest_of_lease_ends_and_unleased_rows(store: Store) -> None:
    """Rows leased ahead of the first unleased one count by their lease's end, an expired lease
    as due at once; rows behind the first unleased one never come first."""
    for i in range(4):
        await enqueue(store, f"run_{i}", 10.0 + i)  # due at 10, 11, 12, 13
    await store.claim("c1", now=20.0, limit=2, lease_s=30)  # run_0, run_1 leased until 50
    assert await store.next_due("c1") == 12.0
    await store.claim("c1", now=21.0, limit=1, lease_s=5)  # run_2 leased until 26
    assert await store.next_due("c1") == 13.0
    await store.claim("c1", now=22.0, limit=1, lease_s=2)  # run_3 leased until 24: all leased
    assert await store.next_due("c1") == 24.0
    await store.claim("c1", now=30.0, limit=2, lease_s=100)  # run_2, run_3 again, until 130
    assert await store.next_due("c1") == 50.0  # run_0 and run_1 end first
    await enqueue(store, "run_4", 40.0)
    assert await store.next_due("c1") == 40.0


async def test_a_birth_lease_leases_new_due_ungrouped_rows_within_its_slots(store: Store) -> None:
    """Rows leased as they are created are the creator's: no claim takes them until the lease
    ends; the slots per channel bound them; digest rows and muted rows are never leased."""
    lease = BirthLease({"c1": 2, "d": 5}, until=60.0)
    runs = [make_run(f"run_{i}", tags=["c1", "c2"]) for i in range(3)]
    observed = await store.observe(runs, decide, 10.0, lease)
    leased = [n for item in observed for n in item.leased]
    assert [(n.run_id, n.channel) for n in leased] == [("run_0", "c1"), ("run_1", "c1")]
    assert await store.claim("c1", now=11.0, limit=10, lease_s=60) == [
        n
        for item in observed
        for n in item.notifications
        if n.run_id == "run_2" and n.channel == "c1"
    ]
    assert len(await store.claim("c2", now=11.0, limit=10, lease_s=30)) == 3  # no slots: none
    assert await store.next_due("c1") == 60.0  # the birth leases end first (run_2's at 71)
    later = await store.claim("c1", now=60.0, limit=10, lease_s=30)  # the birth lease ended
    assert sorted(n.run_id for n in later) == ["run_0", "run_1"]
    digest = await store.observe(
        [make_run("run_d", taskIdentifier="t")], decide_digest, 10.0, lease
    )
    assert digest[0].notifications and not digest[0].leased
    again = await store.observe([make_run("run_0", at_s=2000)], decide, 12.0, lease)
    assert again[0].notifications == again[0].leased == []  # nothing new, nothing leased


async def test_a_birth_lease_hands_its_rows_over_once_though_the_caller_was_cancelled(
    store: Store,
) -> None:
    """`handed` hears of the rows a birth lease took once the call is over, exactly once, also
    when the caller was cancelled before (the op never ran: none) or during its transaction
    (committed: its rows), so no leased row waits out its lease unsent."""
    loop = asyncio.get_running_loop()
    for when in ("queued", "deciding"):
        handed: list[list[str]] = []
        lease = BirthLease({"c1": 5}, 60.0, lambda rows: handed.append([n.id for n in rows]))
        caller: asyncio.Task[list[Observed]] | None = None

        def deciding(run: Run, previous: RunState | None) -> Decision:
            if when == "deciding" and caller is not None:
                loop.call_soon_threadsafe(caller.cancel)  # SQLite decides in its writer thread
            return decide(run, previous)

        caller = asyncio.ensure_future(
            store.observe([make_run(f"run_{when}")], deciding, 10, lease)
        )
        await asyncio.sleep(0)  # under way
        if when == "queued":
            caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        for _ in range(500):
            if handed:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # a second call would come by now
        assert await store.claim("c1", now=11.0, limit=10, lease_s=60) == []  # leased, or none
        committed = [n.id for n in await store.claim("c1", now=61.0, limit=10, lease_s=60)]
        assert handed == [committed], (when, handed, committed)  # once, with what committed
        if when == "deciding":  # cancelled in its transaction, which still committed
            assert len(committed) == 1


async def test_release_leases_only_where_one_replica_owns_them(
    engine: Engine, store: Store
) -> None:
    await enqueue(store, "run_1", 10.0)
    await store.claim("c1", now=15.0, limit=1, lease_s=30)
    released = await store.release_leases()
    if engine.name == "sqlite":  # one replica: every lease at start is a dead process's
        assert released == 1
        assert await store.next_due("c1") == 10.0
    else:  # other replicas' leases are theirs; an expired one is claimable anyway
        assert released == 0
        assert await store.next_due("c1") == 45.0
        assert [n.run_id for n in await store.claim("c1", 45.0, 1, 30)] == ["run_1"]


async def test_no_failure_mark_of_a_claim_another_replica_took_over_is_written(
    engine: Engine, store: Store
) -> None:
    """A replica whose claim's lease ended, and another replica claimed the row, marks nothing
    of it (retry, dead, muted, held): the row is the other's, which may have sent it."""
    if engine.name == "sqlite":
        pytest.skip("one replica: every claim is this store's")
    [ident] = await enqueue(store, "run_1", 10.0)
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    other = engine.make()
    await other.open()
    try:
        assert [n.id for n in await other.claim("c1", now=80.0, limit=10, lease_s=60)] == [ident]
        why = {"reason": "client_error", "error": "HTTP 400"}
        assert await store.mark_retry([(ident, 1)], now=81.0, not_before=90.0, **why) == set()
        assert await store.mark_dead([(ident, 1)], now=81.0, **why) == set()
        assert not await store.mark_held(ident, now=81.0, attempts=0, **why)
        assert not await store.mark_muted(ident, now=81.0, silence_id="sil_1", attempts=0)
        assert await other.mark_dead([(ident, 1)], now=81.0, **why) == {ident}  # the holder's own
    finally:
        await other.close()


async def test_mark_sent_keeps_the_last_failed_tries_error(store: Store) -> None:
    """A send after failed tries keeps the last one's error: given with the send (quick
    retries of the same round), else the one a retry recorded; a first-try send has none."""
    blip, retried, clean = await enqueue(store, "run_1", 10.0, "c1", "c2", "c3")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(blip, 2)], now=11.0, error="server_error: HTTP 503")
    await store.claim("c2", now=10.0, limit=10, lease_s=60)
    await store.mark_retry([(retried, 1)], now=11.0, not_before=12.0, reason="timeout", error="t")
    await store.claim("c2", now=12.0, limit=10, lease_s=60)
    await store.mark_sent([(retried, 2)], now=13.0)
    await store.claim("c3", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(clean, 1)], now=11.0)
    errors = [await store.get(ident) for ident in (blip, retried, clean)]
    assert [(n.state, n.reason, n.last_error) for n in errors if n is not None] == [
        ("sent", None, "server_error: HTTP 503"),
        ("sent", None, "t"),
        ("sent", None, None),
    ]


async def test_a_mute_at_send_time_records_its_kind_and_the_attempts_so_far(
    store: Store,
) -> None:
    [ident] = await enqueue(store, "run_1", 10.0, "c1")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_retry([(ident, 2)], now=11.0, not_before=12.0, reason="timeout", error="t")
    await store.claim("c1", now=12.0, limit=10, lease_s=60)
    assert await store.mark_muted(ident, now=13.0, silence_id="time_interval:nights", attempts=2)
    row = await store.get(ident)
    assert row is not None and (row.state, row.reason, row.attempts) == (
        "muted",
        "time_interval:nights",
        2,
    )
    events = await store.events(ident)
    assert [(e["kind"], e["attempts"], e["reason"], e["detail"]) for e in events][-1] == (
        "muted",
        2,
        "time_interval",
        "time_interval:nights",
    )


async def test_mark_sent_and_retry(store: Store) -> None:
    sent, retried = await enqueue(store, "run_1", 10.0, "c1", "c2")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(sent, 1)], now=11.0)
    await store.claim("c2", now=10.0, limit=10, lease_s=60)
    changed = await store.mark_retry(
        [(retried, 2)],
        now=12.0,
        not_before=50.0,
        reason="rate_limited",
        error="429 from receiver",
    )
    assert changed == {retried}  # the ids changed: dispatch tells and counts only those

    done = await store.get(sent)
    assert done is not None and (done.state, done.attempts, done.reason) == ("sent", 1, None)
    later = await store.get(retried)
    assert later is not None
    assert (later.state, later.attempts, later.not_before) == ("pending", 2, 50.0)
    assert (later.reason, later.last_error) == ("rate_limited", "429 from receiver")
    assert await store.claim("c2", now=49.0, limit=10, lease_s=60) == []  # lease was released
    assert [n.id for n in await store.claim("c2", now=50.0, limit=10, lease_s=60)] == [retried]
    finished = await store.mark_retry(
        [(sent, 5), (retried, 3)], now=13.0, not_before=60.0, reason="other", error="x"
    )  # a sent row stays sent, and says so
    assert finished == {retried}
    assert await store.mark_dead([(sent, 5)], now=13.0, reason="x", error="x") == set()
    assert not await store.mark_muted(sent, now=13.0, silence_id="sil_1", attempts=0)
    assert await store.get(sent) == done
    assert await store.counts() == {**EMPTY, "pending": 1, "sent": 1}


async def test_marked_here_is_what_a_mark_of_this_stores_claim_left(
    engine: Engine, store: Store
) -> None:
    """A mark written again after a lost reply finds its rows marked: its own (this store's
    claim, the mark's state and attempts), told by dispatch; not one another replica claimed
    since and marked alike, which that replica tells."""
    mine, theirs = await enqueue(store, "run_1", 10.0, "c1", "c2")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_dead([(mine, 2)], now=11.0, reason="client_error", error="HTTP 400")
    assert await store.marked_here([(mine, 2)], "dead") == {mine}
    assert await store.marked_here([(mine, 3)], "dead") == set()
    assert await store.marked_here([(mine, 2)], "pending") == set()
    if engine.name == "sqlite":  # one replica: every claim is this store's
        return
    other = engine.make()
    await other.open()
    try:
        await store.claim("c2", now=10.0, limit=10, lease_s=60)
        await other.claim("c2", now=80.0, limit=10, lease_s=60)  # the lease ended: taken over
        await other.mark_dead([(theirs, 1)], now=81.0, reason="client_error", error="HTTP 400")
        assert await store.marked_here([(theirs, 1), (mine, 2)], "dead") == {mine}
        assert await other.marked_here([(theirs, 1)], "dead") == {theirs}
    finally:
        await other.close()


async def test_a_failure_mark_written_again_leaves_a_replay_alone(
    engine: Engine, store: Store
) -> None:
    """A dead mark that committed, its reply lost, is written again by dispatch (0.25 s and
    more later, up to the lease): a `relay dlq replay` meanwhile set attempts back to 0, which
    ONCE took for a row not marked yet, and the repeat killed the replayed row again."""
    if engine.name == "sqlite":
        pytest.skip("one process: a write's reply is never lost after its commit")
    (row,) = await enqueue(store, "run_1", 10.0, "c1")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_dead([(row, 1)], now=11.0, reason="client_error", error="HTTP 400")
    assert await store.replay([row], now=12.0) == 1
    again = await store.mark_dead([(row, 1)], now=13.0, reason="client_error", error="HTTP 400")
    assert again == set()
    replayed = await store.get(row)
    assert replayed is not None
    assert (replayed.state, replayed.attempts) == ("pending", 0)
    assert [n.id for n in await store.claim("c1", now=14.0, limit=10, lease_s=60)] == [row]


async def test_a_retry_mark_repeated_after_a_lost_reply_leaves_the_new_claim_alone(
    engine: Engine, store: Store
) -> None:
    """A retry mark that committed, its reply lost, is written again: meanwhile the row came
    due and this replica claimed it again. The repeat must not hand that claim back (a third
    send) nor put the row off again: the attempt it marks is marked already."""
    if engine.name == "sqlite":
        pytest.skip("one process: a write's reply is never lost after its commit")
    (row,) = await enqueue(store, "run_1", 10.0, "c1")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    why = {"reason": "timeout", "error": "no answer in time"}
    assert await store.mark_retry([(row, 1)], now=11.0, not_before=12.0, **why) == {row}
    assert [n.id for n in await store.claim("c1", now=12.0, limit=10, lease_s=60)] == [row]
    assert await store.mark_retry([(row, 1)], now=13.0, not_before=500.0, **why) == set()
    assert await store.claim("c1", now=71.0, limit=10, lease_s=60) == []  # still claimed
    assert await store.next_due("c1") == 72.0  # that claim's lease, not the repeat's backoff


async def test_receipts_are_kept_and_postponed_rows_wait(store: Store) -> None:
    sent, waiting = await enqueue(store, "run_1", 10.0, "c1", "c2")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(sent, 1)], now=11.0, receipt='{"ts": "1.2"}')
    row = await store.get(sent)
    assert row is not None and (row.state, row.receipt) == ("sent", '{"ts": "1.2"}')

    assert [n.id for n in await store.claim("c2", now=10.0, limit=10, lease_s=60)] == [waiting]
    assert await store.postpone(waiting, now=12.0, not_before=40.0)
    later = await store.get(waiting)
    assert later is not None and (later.state, later.attempts, later.not_before) == (
        "pending",
        0,
        40.0,
    )
    assert await store.claim("c2", now=39.0, limit=10, lease_s=60) == []  # lease released too
    assert await store.next_due("c2") == 40.0
    assert [e["kind"] for e in await store.events(waiting)] == ["created"]  # no attempt, no event
    # a finished row is left alone
    assert not await store.postpone(sent, now=13.0, not_before=99.0)
    assert await store.get(sent) == row


async def test_a_postponed_row_nobody_holds_is_hastened(store: Store) -> None:
    """A recovery postponed to wait for its alert is made due once the alert is sent; a row a
    claim holds, one due already, or a finished one is left as it is."""
    waiting, sent = await enqueue(store, "run_1", 10.0, "c1", "c2")
    assert [n.id for n in await store.claim("c1", now=10.0, limit=10, lease_s=60)] == [waiting]
    assert not await store.hasten(waiting, now=10.5)  # held by that claim
    assert await store.postpone(waiting, now=11.0, not_before=40.0)
    assert await store.hasten(waiting, now=12.0)
    row = await store.get(waiting)
    assert row is not None and (row.state, row.attempts, row.not_before) == ("pending", 0, 12.0)
    assert not await store.hasten(waiting, now=13.0)  # due already
    assert await store.next_due("c1") == 12.0
    assert [e["kind"] for e in await store.events(waiting)] == ["created"]  # no event
    await store.claim("c2", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(sent, 1)], now=11.0)
    assert not await store.hasten(sent, now=0.0)


async def put_off(store: Store) -> dict[str, str]:
    """Channel d's rows, each left otherwise at 20.0: one a failed try put off till 500, one a
    429 did, one given back to the outbox when a hold began (no attempt) till 500, one a claim
    holds (due at 15), one finished, a digest's waiting for its group_wait (due at 40); and
    channel c2's row put off till 500."""
    [digest] = ids(await store.observe([make_run("g", taskIdentifier="t/a")], decide_digest, 10))
    rows = {"digest": digest}
    for name, channel in [("off", "d"), ("limited", "d"), ("given_back", "d"), ("held", "d"), ("done", "d"), ("other", "c2")]:  # fmt: skip
        [rows[name]] = await enqueue(store, f"run_{name}", 10.0, channel)
    await store.claim("d", now=10.0, limit=10, lease_s=60)
    await store.claim("c2", now=10.0, limit=10, lease_s=60)
    await store.mark_sent([(rows["done"], 1)], now=11.0)
    for name, due in [("off", 500.0), ("held", 15.0), ("other", 500.0)]:
        await store.mark_retry([(rows[name], 1)], now=11.0, not_before=due, reason="x", error="x")
    await store.mark_retry(
        [(rows["limited"], 1)], now=11.0, not_before=500.0, reason="rate_limited", error="HTTP 429"
    )
    await store.postpone(rows["given_back"], now=11.0, not_before=500.0)  # the hold's end
    await store.claim("d", now=15.0, limit=10, lease_s=60)  # held: the one due
    return rows


PUT_OFF = {"off": 500.0, "limited": 500.0, "given_back": 500.0, "held": 15.0, "digest": 40.0, "other": 500.0, "done": 10.0}  # fmt: skip


@pytest.mark.parametrize(
    ("operation", "due_now"),
    [("hasten_retries", {"off"}), ("start_afresh", {"off", "limited", "given_back"})],
)
async def test_what_a_channel_makes_due_again(
    store: Store, operation: str, due_now: set[str]
) -> None:
    """Due at their creation (10.0), the rest left as they were (see put_off).
    hasten_retries (its receiver answers again after an outage): only the row a failed try put
    off; not the one a 429 did (its Retry-After, unknown to a process that did not read it), nor
    one never tried (its time stands). start_afresh (a reload or a restart pointed the channel
    at another receiver, which owes the old one's waits nothing): the 429's and the one given
    back when the hold began too; never a digest's row not tried yet (its group_wait)."""
    rows = await put_off(store)
    make_due = getattr(store, operation)
    assert await make_due("d", now=20.0) == len(due_now)
    found = {name: await store.get(ident) for name, ident in rows.items()}
    assert {name: n.not_before for name, n in found.items() if n} == {
        name: 10.0 if name in due_now else due for name, due in PUT_OFF.items()
    }
    assert {name for name, n in found.items() if n and n.state == "sent"} == {"done"}
    assert await make_due("d", now=30.0) == 0  # due already


async def test_the_retries_back_from_an_outage_go_in_creation_order(store: Store) -> None:
    """After an outage the rows it put off go oldest first among the due rows never tried
    (a backlog the channel had not reached): made due at the hasten's `now`, the oldest
    failures went after every row never tried that fell due during the outage."""
    failed = [(await enqueue(store, run, at, "c1"))[0] for run, at in [("r1", 10.0), ("r2", 11.0)]]
    await store.claim("c1", now=11.0, limit=10, lease_s=60)
    tries = [(row, 1) for row in failed]
    await store.mark_retry(tries, now=11.5, not_before=600.0, reason="x", error="x")
    [untried] = await enqueue(store, "r3", 12.0, "c1")  # due since 12.0, the channel busy
    assert await store.hasten_retries("c1", now=20.0) == 2
    [newer] = await enqueue(store, "r4", 20.0, "c1")
    claimed = await store.claim("c1", now=20.0, limit=10, lease_s=60)
    assert [n.id for n in claimed] == [*failed, untried, newer]


async def test_a_recovery_is_enqueued_once_for_what_was_said(store: Store) -> None:
    await store.observe([make_run("run_1", tags=["c1", "c2"])], decide_recovery, now=1.0)
    firing = notification_id("run_1", "r1", "c1")
    await store.mark_muted(
        notification_id("run_1", "r1", "c2"), now=2.0, silence_id="sil_1", attempts=0
    )
    done = make_run("run_1", "COMPLETED", at_s=2000, tags=["c1", "c2"])
    [observed] = await store.observe([done], decide_recovery, now=3.0)
    [recovery] = observed.notifications  # none for c2: its alert was muted, never said
    assert (recovery.id, recovery.resolves, recovery.channel) == (recovery_id(firing), firing, "c1")
    assert (recovery.template, recovery.run["status"], recovery.state) == (
        "recovered",
        "COMPLETED",
        "pending",
    )
    stored = await store.get(recovery.id)
    assert stored is not None and stored.resolves == firing
    again = await store.observe([done], decide_recovery, now=4.0)  # the same update again
    assert ids(again) == []
    # an alert and its recovery in one call; a run that never alerted: no recovery
    runs = [
        make_run("run_2", at_s=1000),
        make_run("run_2", "COMPLETED", at_s=1001),
        make_run("run_3", "COMPLETED", at_s=1001),
    ]
    observed_2 = await store.observe(runs, decide_recovery, now=5.0)
    first = notification_id("run_2", "r1", "c1")
    assert [ids([o]) for o in observed_2] == [[first], [recovery_id(first)], []]


async def test_dead_letters_and_replay(store: Store) -> None:
    a, b = await enqueue(store, "run_a", 10.0, "c1", "c2")
    c = (await enqueue(store, "run_c", 10.0))[0]
    await store.mark_dead([(a, 3)], now=20.0, reason="server_error", error="HTTP 503")
    await store.mark_dead([(b, 1)], now=30.0, reason="client_error", error="HTTP 400")
    await store.mark_dead([(c, 2)], now=25.0, reason="timeout", error="timed out")
    dead = await store.dead_letters()
    assert [n.id for n in dead] == [b, c, a]  # newest first
    assert (dead[0].reason, dead[0].last_error, dead[0].attempts) == ("client_error", "HTTP 400", 1)
    assert [n.id for n in await store.dead_letters(limit=1)] == [b]
    assert await store.claim("c1", now=100.0, limit=10, lease_s=60) == []

    assert await store.replay([a, "ntf_unknown"], now=40.0) == 1
    assert await store.replay([], now=40.0) == 0
    replayed = await store.get(a)
    assert replayed is not None
    assert (replayed.state, replayed.attempts, replayed.not_before) == ("pending", 0, 40.0)
    assert (replayed.reason, replayed.last_error, replayed.created_at) == (None, None, 10.0)
    assert await store.replay([a], now=41.0) == 0  # no longer dead
    assert await store.counts() == {**EMPTY, "pending": 1, "dead": 2}
    assert await store.replay(None, now=50.0) == 2
    assert await store.dead_letters() == []
    assert await store.get("ntf_unknown") is None


async def test_a_replayed_alert_brings_back_its_recovery(store: Store) -> None:
    await store.observe([make_run("run_1")], decide_recovery, now=1.0)
    firing = notification_id("run_1", "r1", "c1")
    await store.mark_dead([(firing, 1)], now=2.0, reason="client_error", error="HTTP 400")
    await store.observe([make_run("run_1", "COMPLETED", at_s=2000)], decide_recovery, now=3.0)
    recovered = recovery_id(firing)
    await store.mark_sent([(recovered, 1)], now=4.0)  # resolved what was never said
    other = (await enqueue(store, "run_2", 1.0))[0]
    await store.mark_sent([(other, 1)], now=4.0)

    assert await store.replay([firing], now=5.0) == 1  # what was asked for is counted
    again = await store.get(recovered)
    assert again is not None  # the recovery follows the alert again
    assert (again.state, again.attempts, again.not_before) == ("pending", 0, 5.0)
    assert [e["kind"] for e in await store.events(recovered)][-1] == "replayed"
    assert (await store.get(other)).state == "sent"  # type: ignore[union-attr]
    await store.mark_dead([(firing, 1)], now=6.0, reason="client_error", error="HTTP 400")
    await store.mark_dead([(recovered, 1)], now=6.0, reason="client_error", error="x")
    assert await store.replay(None, now=7.0) == 2  # both dead: each comes back once


async def test_history_and_events(store: Store) -> None:
    a, b = await enqueue(store, "run_a", 10.0, "c1", "c2")
    c = (await enqueue(store, "run_c", 20.0))[0]
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_retry([(a, 1)], now=11.0, not_before=12.0, reason="timeout", error="t")
    await store.mark_sent([(a, 2)], now=13.0)
    await store.mark_dead([(b, 1)], now=14.0, reason="client_error", error="HTTP 400")
    await store.replay([b], now=15.0)
    await store.mark_muted(c, now=21.0, silence_id="sil_1", attempts=0)

    assert [n.id for n in await store.history(HistoryQuery())] == [c, b, a]  # b after a
    assert [n.id for n in await store.history(HistoryQuery(run_id="run_a", channel="c2"))] == [b]
    assert [n.id for n in await store.history(HistoryQuery(state="sent"))] == [a]
    assert [n.id for n in await store.history(HistoryQuery(since=15.0))] == [c]
    assert [n.id for n in await store.history(HistoryQuery(rule="r1", limit=1))] == [c]
    assert [n.id for n in await store.history(HistoryQuery(rule="nope"))] == []

    kinds = [(e["kind"], e["attempts"], e["reason"]) for e in await store.events(a)]
    assert kinds == [("created", 0, None), ("retry", 1, "timeout"), ("sent", 2, None)]
    assert [e["kind"] for e in await store.events(b)] == ["created", "dead", "replayed"]
    muted = await store.events(c)
    assert [(e["kind"], e["reason"], e["detail"]) for e in muted][-1] == (
        "muted",
        "silence",
        "sil_1",
    )
    assert (await store.get(c) or c).state == "muted"  # type: ignore[union-attr]
    assert await store.events("ntf_unknown") == []


async def test_history_pages_follow_each_other_without_gap_or_repeat(store: Store) -> None:
    """Pages of the history by cursor: the notifications after the last of a page, in the
    page order (newest first, then id), ties in the same instant included."""
    made = []
    for i, at in enumerate((10.0, 10.0, 10.0, 11.0, 12.0, 12.0)):
        made += await enqueue(store, f"run_{i}", at, "c1", "c2")
    whole = [n.id for n in await store.history(HistoryQuery())]
    assert sorted(whole) == sorted(made) and len(whole) == 12
    for size in (1, 2, 5):
        paged: list[str] = []
        after: tuple[float, str] | None = None
        for _ in range(len(whole) + 1):  # bounded: a cursor that is ignored repeats pages
            page = await store.history(HistoryQuery(limit=size, after=after))
            if not page:
                break
            paged += [n.id for n in page]
            after = (page[-1].created_at, page[-1].id)
        assert paged == whole, size
    sent = await store.history(HistoryQuery(channel="c2", limit=2))
    rest = await store.history(HistoryQuery(channel="c2", after=(sent[-1].created_at, sent[-1].id)))
    assert [n.id for n in sent + rest] == [
        n.id for n in await store.history(HistoryQuery(channel="c2"))
    ]


async def test_prune_forgets_what_finished_before_the_retention(store: Store) -> None:
    old, kept = await enqueue(store, "run_old", 100.0, "c1", "c2")
    await store.mark_sent([(old, 1)], now=110.0)
    new = (await enqueue(store, "run_new", 5000.0))[0]
    await store.add_silence(Silence("sil_old", {"rule": ("r1",)}, 0.0, 200.0, 0.0))
    assert await store.prune(before=1000.0) == 1
    assert await store.get(old) is None and await store.events(old) == []
    assert await store.get(kept) is not None  # pending: kept
    assert await store.get(new) is not None
    assert await store.silences(0.0, include_expired=True) == []
    # run_old's state was forgotten (seen at 100): its next FAILED update fires again.
    refired = await store.observe([make_run("run_old", at_s=2000)], decide, now=5001.0)
    assert ids(refired) == [old]


@pytest.mark.parametrize("namespace", ["inhibit_source", THREADS, SENT])
async def test_prune_forgets_the_inhibit_sources_slack_threads_and_mail_recipients(
    store: Store, namespace: str
) -> None:
    await store.kv_put(namespace, "old", "1", now=100.0)
    await store.kv_put(namespace, "new", "2", now=5000.0)
    await store.kv_put("inhibit", "window", "1700.0", now=100.0)
    await store.prune(before=1000.0)
    assert await store.kv_list(namespace) == {"new": "2"}
    assert await store.kv_get("inhibit", "window") == "1700.0"  # windows are not runs


async def test_prune_forgets_closed_inhibit_windows_and_quiet_pile_ups(store: Store) -> None:
    """One row per `equal` value (a customer, a task) ever seen, and of every renamed inhibit
    rule: kept for ever, a months-old store held every window and pile-up since its start."""
    await store.kv_put("inhibit", "closed", "900.0", now=800.0)
    await store.kv_put("inhibit", "open", "1700.0", now=100.0)  # a window longer than retention
    await store.kv_put("inhibit", "recent", "1100.0", now=1050.0)
    await store.kv_put("inhibit_count", "quiet", '{"run_1": 100.0}', now=100.0)
    await store.kv_put("inhibit_count", "busy", '{"run_2": 1050.0}', now=1050.0)
    await store.prune(before=1000.0)
    assert await store.kv_list("inhibit") == {"open": "1700.0", "recent": "1100.0"}
    assert await store.kv_list("inhibit_count") == {"busy": '{"run_2": 1050.0}'}


# --- digests -------------------------------------------------------------------------------------


async def test_a_digest_group_collects_runs_and_is_claimed_whole(store: Store) -> None:
    first = await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 100.0)
    [n1] = first[0].notifications
    assert n1.group_key is not None and n1.not_before == 130.0  # group_wait 30 s
    assert n1.extra["group_labels"] == {"taskIdentifier": "t/a"}
    more = await store.observe(
        [make_run("run_2", taskIdentifier="t/a"), make_run("run_3", taskIdentifier="t/b")],
        decide_digest,
        110.0,
    )
    n2, n3 = (o.notifications[0] for o in more)
    assert (n2.group_key, n2.not_before) == (n1.group_key, 130.0)  # joins the waiting digest
    assert n3.group_key != n1.group_key and n3.not_before == 140.0

    assert await store.claim("d", now=129.0, limit=10, lease_s=60) == []
    group = await store.claim("d", now=130.0, limit=1, lease_s=60)  # one unit: group t/a whole
    assert sorted(n.id for n in group) == sorted([n1.id, n2.id])
    assert [n.id for n in await store.claim("d", now=140.0, limit=10, lease_s=60)] == [n3.id]
    for n in (n1, n2):
        await store.mark_sent([(n.id, 1)], now=131.0)
    assert await store.group_flushed(n1.group_key or "", 131.0) == {"taskIdentifier": "t/a"}
    assert await store.group_flushed("grp_unknown", 131.0) == {}

    # After a flush, the next run waits for group_interval (300 s after the last digest).
    after = await store.observe([make_run("run_4", taskIdentifier="t/a")], decide_digest, 200.0)
    assert after[0].notifications[0].not_before == 431.0


async def test_a_run_joining_while_its_digest_is_sent_waits_for_the_next_digest(
    store: Store,
) -> None:
    """Between the claim of a due digest and its flush, a joining run neither goes out alone
    at once nor loses the group its schedule: it and later ones make one digest,
    group_interval later (Alertmanager's group_interval)."""
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    assert [n.id for n in await store.claim("d", now=30.0, limit=10, lease_s=60)] == [n1]
    [n2] = ids(await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 31))
    assert await store.claim("d", now=31.5, limit=10, lease_s=60) == []  # not on its own
    await store.mark_sent([(n1, 1)], now=32.0)
    await store.group_flushed(group_key("dg", "d", {"taskIdentifier": "t/a"}), 32.0)
    [n3] = ids(await store.observe([make_run("run_3", taskIdentifier="t/a")], decide_digest, 33))
    assert await store.claim("d", now=330.0, limit=10, lease_s=60) == []
    assert sorted(n.id for n in await store.claim("d", now=331.0, limit=10, lease_s=60)) == sorted(
        [n2, n3]
    )


async def test_a_digest_sent_late_puts_group_interval_between_it_and_the_next(
    store: Store,
) -> None:
    """A digest due at 30 went out only at 400 (held back by a Retry-After, or retried): run_2,
    which joined at 31, was due at 331 and followed at once. The flush (recorded before its
    rows are marked) pushes the next digest (its rows and the group's schedule, so a run
    joining later goes with it) to group_interval after it."""
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    assert [n.id for n in await store.claim("d", now=30.0, limit=10, lease_s=600)] == [n1]
    [n2] = ids(await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 31))
    await store.group_flushed(group_key("dg", "d", {"taskIdentifier": "t/a"}), 400.0, 700.0)
    await store.mark_sent([(n1, 1)], now=401.0)
    later = await store.observe([make_run("run_3", taskIdentifier="t/a")], decide_digest, 500)
    assert [n.not_before for n in later[0].notifications] == [700.0]
    assert await store.claim("d", now=699.0, limit=10, lease_s=60) == []
    claimed = await store.claim("d", now=700.0, limit=10, lease_s=60)
    assert sorted(n.id for n in claimed) == sorted([n2, *ids(later)])


async def test_a_reload_retimes_the_waiting_digests_of_a_rule(store: Store) -> None:
    """At 140, group_interval 300 s → 5 s while t/a's second digest waits (due 431), and
    group_wait 30 s → 60 s while t/b's first waits (due 163): t/a goes at once, t/b at 193,
    each group's schedule with it; a digest of another rule or one claimed keeps its time."""
    assert await store.retime_groups({"dg": DIGEST}, now=90.0) == ([], 0)  # the first start
    [a1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 100))
    await store.claim("d", now=130.0, limit=10, lease_s=60)
    await store.mark_sent([(a1, 1)], now=131.0)
    await store.group_flushed(group_key("dg", "d", {"taskIdentifier": "t/a"}), 131.0)
    [a2] = ids(await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 133))
    [b1] = ids(await store.observe([make_run("run_3", taskIdentifier="t/b")], decide_digest, 133))
    unchanged = {"dg": replace(DIGEST, repeat_interval_s=60), "other": Timing(1, 1, 1)}
    assert await store.retime_groups(unchanged, now=140.0) == ([], 0)
    new = {"dg": Timing(group_wait_s=60, group_interval_s=5, repeat_interval_s=3600)}
    assert await store.retime_groups(new, now=140.0) == (["dg"], 2)
    assert [n.id for n in await store.claim("d", now=140.0, limit=10, lease_s=600)] == [a2]
    assert await store.claim("d", now=192.0, limit=10, lease_s=600) == []
    assert [n.id for n in await store.claim("d", now=193.0, limit=10, lease_s=600)] == [b1]
    claimed = {"dg": replace(new["dg"], group_wait_s=1)}
    assert await store.retime_groups(claimed, now=194.0) == (["dg"], 0)  # left as they are
    later = await store.observe([make_run("run_4", taskIdentifier="t/b")], decide_digest, 194)
    assert later[0].notifications[0].not_before > 193.0  # b's digest is on its way: the next


async def test_a_change_of_timings_is_applied_once_by_replicas_or_restarts(
    engine: Engine,
) -> None:
    """Two processes (replicas, or a restart) open the store with the same changed group_wait:
    the first re-times the waiting digest, the second finds it done (stored with the change)
    and moves nothing; back to the old timing, the digest is moved back once."""
    first, second = engine.make(), engine.make()
    await first.open()
    await second.open()
    try:
        assert await first.retime_groups({"dg": DIGEST}, now=90.0) == ([], 0)
        await first.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 100)
        longer = {"dg": replace(DIGEST, group_wait_s=3600)}
        together = [store.retime_groups(longer, now=110.0) for store in (first, second)]
        assert sorted(await asyncio.gather(*together)) == [([], 0), (["dg"], 1)]
        assert await second.claim("d", now=3699.0, limit=10, lease_s=60) == []
        assert await second.retime_groups({"dg": DIGEST}, now=120.0) == (["dg"], 1)
        assert await first.retime_groups({"dg": DIGEST}, now=121.0) == ([], 0)
        assert len(await first.claim("d", now=130.0, limit=10, lease_s=60)) == 1
    finally:
        await first.close()
        await second.close()


async def test_a_digest_learns_its_groups_last_flush_and_one_on_its_way(store: Store) -> None:
    """Before a digest goes, delivery asks when its group's last one went and whether another
    of it is leased (on its way from another replica: both would go at once)."""
    key = group_key("dg", "d", {"taskIdentifier": "t/a"})
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    assert [n.id for n in await store.claim("d", now=30.0, limit=10, lease_s=600)] == [n1]
    [n2] = ids(await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 31))
    assert await store.group_pace(key, [n1], 31.0) == (None, None)
    [created] = {n.created_at for n in await store.history(HistoryQuery(run_id="run_1"))}
    assert await store.group_pace(key, [n2], 31.0) == (None, created)
    await store.group_flushed(key, 40.0, 340.0)
    await store.mark_sent([(n1, 1)], now=40.0)
    assert await store.group_pace(key, [n2], 340.0) == (40.0, None)


async def test_a_digest_waiting_for_its_retry_keeps_its_place_before_newer_runs(
    store: Store,
) -> None:
    """A digest handed back for a retry is one on its way for the group's newer runs (they
    went ahead of it, alone, while it waited for its backoff); not for older ones, nor does it
    wait for newer ones handed back."""
    key = group_key("dg", "d", {"taskIdentifier": "t/a"})
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    assert [n.id for n in await store.claim("d", now=30.0, limit=10, lease_s=600)] == [n1]
    [n2] = ids(await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 31))
    await store.mark_retry([(n1, 1)], now=32.0, not_before=900.0, reason="timeout", error="t")
    [created] = {n.created_at for n in await store.history(HistoryQuery(run_id="run_1"))}
    assert [n.id for n in await store.claim("d", now=400.0, limit=10, lease_s=600)] == [n2]
    assert await store.group_pace(key, [n2], 400.0) == (None, created)
    await store.mark_retry([(n2, 1)], now=401.0, not_before=1000.0, reason="timeout", error="t")
    assert [n.id for n in await store.claim("d", now=900.0, limit=10, lease_s=600)] == [n1]
    assert await store.group_pace(key, [n1], 900.0) == (None, None)


async def test_a_run_decided_just_before_its_digest_was_claimed_waits_for_the_next_one(
    store: Store,
) -> None:
    """A replica decides a run at 29.5 (its clock when the request came) but commits it after
    another replica claimed the digest due at 30: the run must not be due at once as a digest
    of its own beside the one on its way; it goes in the next digest, group_interval later."""
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    assert [n.id for n in await store.claim("d", now=30.0, limit=10, lease_s=60)] == [n1]
    late = await store.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 29.5)
    [n2] = ids(late)
    assert await store.claim("d", now=30.5, limit=10, lease_s=60) == []  # not on its own
    await store.mark_sent([(n1, 1)], now=31.0)
    await store.group_flushed(group_key("dg", "d", {"taskIdentifier": "t/a"}), 31.0)
    assert await store.claim("d", now=329.0, limit=10, lease_s=60) == []
    assert [n.id for n in await store.claim("d", now=330.0, limit=10, lease_s=60)] == [n2]


async def test_a_claim_waits_for_a_replica_that_is_joining_the_digest(
    engine: Engine, store: Store
) -> None:
    """PostgreSQL: replica B decided run_2 into the digest due at 30 and has not committed yet
    when replica A claims it (B waits on the group's row here, holding the group's lock). The
    claim must wait for B and send both runs, not one now and run_2 alone right after."""
    if engine.name == "sqlite":
        pytest.skip("one writer: an observe and a claim never overlap")
    [n1] = ids(await store.observe([make_run("run_1", taskIdentifier="t/a")], decide_digest, 0))
    key = group_key("dg", "d", {"taskIdentifier": "t/a"})
    other = engine.make()
    await other.open()
    gate = await asyncpg.connect(engine.url)
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type IN ('Lock', 'LWLock') AND pid <> pg_backend_pid()"
    )
    try:
        hold = gate.transaction()
        await hold.start()
        await gate.execute("SELECT 1 FROM relay_groups WHERE key = $1 FOR UPDATE", key)
        joining = asyncio.ensure_future(
            other.observe([make_run("run_2", taskIdentifier="t/a")], decide_digest, 29.5)
        )
        while await gate.fetchval(waiting) < 1:  # B holds the group lock, waits for the row
            await asyncio.sleep(0.01)
        claiming = asyncio.ensure_future(store.claim("d", now=30.0, limit=10, lease_s=60))
        while not claiming.done() and await gate.fetchval(waiting) < 2:
            await asyncio.sleep(0.01)
        await hold.commit()
        [n2] = ids(await joining)
        assert sorted(n.id for n in await claiming) == sorted([n1, n2])
    finally:
        await gate.close()
        await other.close()


async def test_muted_matches_are_recorded_not_grouped(store: Store) -> None:
    def muted(run: Run, previous: RunState | None) -> Decision:
        decision = decide_digest(run, previous)
        matches = tuple(replace(m, muted_by="sil_1") for m in decision.matches)
        return replace(decision, matches=matches)

    [n] = ids(await store.observe([make_run("run_1", taskIdentifier="t")], muted, now=1.0))
    row = await store.get(n)
    assert row is not None and (row.state, row.reason, row.group_key) == ("muted", "sil_1", None)
    assert await store.counts() == {**EMPTY, "muted": 1}
    assert [e["kind"] for e in await store.events(n)] == ["muted"]


@pytest.mark.parametrize(
    ("muted_by", "kind"),
    [
        ("sil_1", "silence"),
        ("time_interval:nights", "time_interval"),
        ("inhibited:r0", "inhibited"),
    ],
)
async def test_a_muted_event_names_what_muted_it(store: Store, muted_by: str, kind: str) -> None:
    """`relay history` says "time_interval: ..." or "inhibited: ...", not "silence: ..."."""

    def muted(run: Run, previous: RunState | None) -> Decision:
        decision = decide(run, previous)
        return replace(
            decision, matches=tuple(replace(m, muted_by=muted_by) for m in decision.matches)
        )

    [n] = ids(await store.observe([make_run("run_1")], muted, now=1.0))
    [event] = await store.events(n)
    assert (event["kind"], event["reason"], event["detail"]) == ("muted", kind, muted_by)


# --- silences, key-value state, leader leases ----------------------------------------------------


async def test_silences(store: Store) -> None:
    a = Silence("sil_a", {"rule": ("r1",), "tag": ("env:prod", "x")}, 10.0, 100.0, 5.0, "why", "me")
    b = Silence("sil_b", {"task": ("billing/*",)}, 5.0, 50.0, 4.0)
    assert await store.add_silence(a) and await store.add_silence(b)
    # a silence of an id there already (an import run twice) leaves the one there alone
    assert not await store.add_silence(replace(a, comment="other", ends_at=500.0))
    assert await store.silences(20.0) == [b, a]  # in creation order
    # `silence update` in place: start, end and comment, while the silence has not ended
    changed = replace(b, starts_at=6.0, ends_at=55.0, comment="longer", created_by="x")
    assert await store.change_silence(changed, now=20.0)
    assert await store.silence("sil_b") == replace(changed, created_by="")
    assert not await store.change_silence(replace(b, ends_at=90.0), now=55.0)  # it has ended
    assert not await store.change_silence(replace(b, id="sil_gone"), now=20.0)
    assert await store.change_silence(replace(b, ends_at=50.0), now=20.0)
    assert await store.silences(60.0) == [a]
    expired = await store.expire_silence("sil_a", 70.0)
    assert expired is not None and expired.ends_at == 70.0 and expired.comment == "why"
    assert await store.silences(70.0) == []
    assert [s.id for s in await store.silences(70.0, include_expired=True)] == ["sil_b", "sil_a"]
    assert (await store.expire_silence("sil_a", 90.0)).ends_at == 70.0  # type: ignore[union-attr]
    assert await store.expire_silence("sil_unknown", 70.0) is None
    assert await store.silence("sil_a") == replace(a, ends_at=70.0)  # one, whatever its state
    assert await store.silence("sil_unknown") is None
    assert await store.silence("sil_a\x00") is None
    # a pending one, expired before it began, starts and ends then (as Alertmanager's): never
    # an ends_at before its starts_at
    await store.add_silence(Silence("sil_c", {"task": ("x",)}, 200.0, 300.0, 5.0))
    expired = await store.expire_silence("sil_c", 80.0)
    assert expired is not None and (expired.starts_at, expired.ends_at) == (80.0, 80.0)


async def test_key_value_state_survives_a_restart(engine: Engine) -> None:
    store = engine.make()
    await store.open()
    assert await store.kv_get("realtime", "feed-a") is None
    await store.kv_put("realtime", "feed-a", '{"offset": "0_0"}', now=1.0)
    await store.kv_put("realtime", "feed-a", '{"offset": "5_2"}', now=2.0)
    await store.kv_put(THREADS, "feed-a", "1712.0001", now=2.0)
    await store.close()
    store = engine.make()
    await store.open()
    assert await store.kv_get("realtime", "feed-a") == '{"offset": "5_2"}'
    assert await store.kv_get("slack_thread", "feed-a") == "1712.0001"
    await store.close()


async def test_kv_write_clears_deletes_and_puts_in_one_commit(engine: Engine) -> None:
    """A Realtime feed's position and its rows: whole namespaces listed and replaced."""
    store = engine.make()
    await store.open()
    first = [("rows:a", "k1", "1"), ("rows:a", "k2", "2"), ("rows:b", "k1", "b"), ("pos", "a", "1")]
    await store.kv_write(KvWrite(put=first), now=1.0)
    assert await store.kv_list("rows:a") == {"k1": "1", "k2": "2"}
    change = KvWrite(
        put=[("rows:a", "k2", "22"), ("rows:a", "k3", "3"), ("pos", "a", "2")],
        delete=[("rows:a", "k1"), ("rows:a", "missing")],
    )
    await store.kv_write(change, now=2.0)
    await store.kv_write(KvWrite(), now=2.5)  # nothing to do
    await store.close()
    store = engine.make()  # a restart
    await store.open()
    assert await store.kv_list("rows:a") == {"k2": "22", "k3": "3"}
    assert await store.kv_get("pos", "a") == "2"
    await store.kv_write(KvWrite(put=[("rows:a", "k9", "9")], clear=["rows:a"]), now=3.0)
    assert await store.kv_list("rows:a") == {"k9": "9"}
    assert await store.kv_list("rows:b") == {"k1": "b"}  # other namespaces untouched
    assert await store.kv_list("nothing") == {}
    await store.close()


async def test_a_failing_kv_write_leaves_everything_as_it_was(engine: Engine, store: Store) -> None:
    await store.kv_write(KvWrite(put=[("rows", "k1", "1"), ("pos", "p", "old")]), now=1.0)
    await refuse_kv_key(engine, "boom")
    broken = KvWrite(  # the database refuses the last put, after the clear and the first put
        put=[("pos", "p", "new"), ("rows", "boom", "x")], clear=["rows"]
    )
    with pytest.raises(StoreUnavailable):
        await store.kv_write(broken, now=2.0)
    assert await store.kv_list("rows") == {"k1": "1"}
    assert await store.kv_get("pos", "p") == "old"


async def refuse_kv_key(engine: Engine, key: str) -> None:
    """A trigger in the database that aborts any write of `key` to the key-value table."""
    if engine.name == "sqlite":
        with sqlite3.connect(engine.url.removeprefix("sqlite:///")) as conn:
            conn.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = '{key}'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        return
    conn = await asyncpg.connect(engine.url)
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON relay_kv FOR EACH ROW"
            f" WHEN (NEW.key = '{key}') EXECUTE FUNCTION refuse()"
        )
    finally:
        await conn.close()


async def test_try_lead_one_owner_until_the_lease_ends(store: Store) -> None:
    assert await store.try_lead("realtime:feed", "a", ttl_s=10.0, now=100.0)
    assert not await store.try_lead("realtime:feed", "b", ttl_s=10.0, now=105.0)
    assert await store.try_lead("realtime:feed", "a", ttl_s=10.0, now=108.0)  # renewed to 118
    assert not await store.try_lead("realtime:feed", "b", ttl_s=10.0, now=117.9)
    assert await store.try_lead("other", "b", ttl_s=10.0, now=117.9)  # names are independent
    assert await store.try_lead("realtime:feed", "b", ttl_s=10.0, now=118.0)  # a's lease ended
    assert not await store.try_lead("realtime:feed", "a", ttl_s=10.0, now=119.0)
    assert await store.try_lead("realtime:feed", "b", ttl_s=0.0, now=120.0)  # b gives it up
    assert await store.try_lead("realtime:feed", "a", ttl_s=10.0, now=120.0)


async def test_a_lease_handed_back_is_free_after_the_clock_stepped_back(store: Store) -> None:
    """A lease given up ended at the `now` of its holder: after the wall clock stepped back an
    hour (NTP), the next taker waited out that hour (a Slack sender polling for the thread)."""
    assert await store.try_lead("slack_thread:k", "a", ttl_s=25.0, now=5000.0)
    assert await store.try_lead("slack_thread:k", "a", ttl_s=0.0, now=5000.0)  # a gives it up
    assert await store.try_lead("slack_thread:k", "b", ttl_s=25.0, now=1400.0)
    assert not await store.try_lead("slack_thread:k", "c", ttl_s=25.0, now=1410.0)  # b's now


async def test_prune_forgets_leases_that_ended_before_the_retention(
    engine: Engine, store: Store
) -> None:
    """A Slack channel takes one lease per thread it starts: ended ones must not pile up."""
    assert await store.try_lead("slack_thread:old", "a", ttl_s=0.0, now=100.0)
    assert await store.try_lead("realtime:feed", "b", ttl_s=10.0, now=995.0)  # held
    await store.prune(before=1000.0)
    assert await lease_names(engine) == ["realtime:feed"]
    assert await store.try_lead("slack_thread:old", "c", ttl_s=10.0, now=1001.0)


async def test_prune_keeps_a_lease_handed_back_after_the_retention_began(
    engine: Engine, store: Store
) -> None:
    """A lease handed back ends at the epoch: retention deleted it at once, and with it when
    it was last held, which a replica's check of a feed nobody follows any more reads."""
    assert await store.try_lead("realtime:feed", "a", ttl_s=0.0, now=1000.0)
    await store.prune(before=999.0)
    assert await lease_names(engine) == ["realtime:feed"]
    await store.prune(before=1001.0)
    assert await lease_names(engine) == []


async def test_write_if_free_writes_only_long_after_the_lease_was_last_held(store: Store) -> None:
    write = KvWrite(put=[("ns", "k", "v")])
    assert await store.try_lead("lease", "a", ttl_s=30.0, now=1000.0)  # ends at 1030
    assert not await store.write_if_free("lease", 1029.0, write, 1100.0)  # ended, not long ago
    assert await store.kv_get("ns", "k") is None
    assert await store.write_if_free("lease", 1030.0, write, 1100.0)
    assert await store.kv_get("ns", "k") == "v"
    assert await store.try_lead("lease", "b", ttl_s=30.0, now=2000.0)
    assert await store.try_lead("lease", "b", ttl_s=0.0, now=2010.0)  # handed back at 2010
    gone = KvWrite(delete=[("ns", "k")])
    assert not await store.write_if_free("lease", 2009.0, gone, 2100.0)
    assert await store.write_if_free("lease", 2010.0, gone, 2100.0)
    assert await store.kv_get("ns", "k") is None
    assert await store.write_if_free("never taken", 0.0, write, 2100.0)
    assert await store.kv_get("ns", "k") == "v"


async def test_write_if_free_deletes_the_free_lease_with_the_write(
    engine: Engine, store: Store
) -> None:
    """A forgotten feed's lease stayed behind (one row per feed ever removed), free."""
    write = KvWrite(put=[("ns", "k", "v")])
    assert await store.try_lead("held", "a", ttl_s=30.0, now=1000.0)
    assert await store.try_lead("free", "a", ttl_s=0.0, now=1000.0)
    assert not await store.write_if_free("held", 1020.0, write, 1020.0)
    assert await store.write_if_free("free", 1000.0, write, 1020.0)
    assert await store.write_if_free("none", 1000.0, write, 1020.0)
    assert await lease_names(engine) == ["held"]
    assert await store.try_lead("free", "b", ttl_s=30.0, now=1021.0)


async def lease_names(engine: Engine) -> list[str]:
    if engine.name == "sqlite":
        with sqlite3.connect(engine.url.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute("SELECT name FROM leases ORDER BY name")]
    conn = await asyncpg.connect(engine.url)
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM relay_leases ORDER BY 1")]
    finally:
        await conn.close()


# --- opening and closing -------------------------------------------------------------------------


async def test_a_closed_store_refuses_calls(engine: Engine) -> None:
    store = engine.make()
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.ping()
    await store.open()
    await store.open()  # idempotent
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.counts()
    await store.close()  # idempotent


async def test_close_finishes_queued_calls(engine: Engine) -> None:
    store = engine.make()
    await store.open()
    calls = [
        asyncio.ensure_future(store.observe([make_run(f"run_{i}")], decide, now=1.0))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # let the calls queue
    await store.close()
    assert sum(len(ids(call.result())) for call in calls) == 20


async def test_migrate_is_idempotent(engine: Engine) -> None:
    before, after = await migrate(engine.url)
    assert before == 0 and after > 0
    assert await migrate(engine.url) == (after, after)
    store = engine.make()
    await store.open()
    await store.ping()
    await store.close()


# --- two stores on one database: two processes on the file, two replicas -------------------------


async def test_two_stores_on_one_database(engine: Engine, store: Store) -> None:
    other = engine.make()
    await other.open()
    try:
        [nid] = await enqueue(store, "run_1", 10.0)
        await store.mark_dead([(nid, 3)], now=11.0, reason="timeout", error="timed out")
        assert [n.id for n in await other.dead_letters()] == [nid]
        assert await other.replay(None, now=12.0) == 1
        assert [n.id for n in await store.claim("c1", now=12.0, limit=10, lease_s=60)] == [nid]
        # Both write at once: each waits for the other where they touch the same rows ...
        await asyncio.gather(
            *(
                s.observe([make_run(f"both_{i}")], decide, now=13.0)
                for i in range(50)
                for s in (store, other)
            )
        )
        # ... and each run, observed by both, is enqueued once.
        assert await other.counts() == {**EMPTY, "pending": 51}
    finally:
        await other.close()


async def test_two_stores_claim_disjoint_rows(engine: Engine, store: Store) -> None:
    other = engine.make()
    await other.open()
    try:
        await store.observe([make_run(f"run_{i:03d}") for i in range(100)], decide, now=1.0)
        claims = await asyncio.gather(
            *(
                s.claim("c1", now=2.0, limit=7, lease_s=60)
                for _ in range(10)
                for s in (store, other)
            )
        )
        claimed = [n.id for batch in claims for n in batch]
        assert len(claimed) == len(set(claimed)) == 100  # every row once, none twice
    finally:
        await other.close()


async def test_two_stores_transition_and_digest_once(engine: Engine, store: Store) -> None:
    other = engine.make()
    await other.open()
    try:
        runs = [make_run(f"run_{i:03d}", taskIdentifier=f"task/{i % 3}") for i in range(60)]
        # Every update reaches both replicas, in opposite orders, in batches of 4.
        batches = [runs[i : i + 4] for i in range(0, 60, 4)]
        results = await asyncio.gather(
            *(store.observe(b, decide_digest, 100.0) for b in batches),
            *(other.observe(list(reversed(b)), decide_digest, 100.0) for b in batches),
        )
        made = [n for observed in results for o in observed for n in o.notifications]
        assert len(made) == len({n.id for n in made}) == 60  # each run fired once
        assert len({n.group_key for n in made}) == 3
        assert {n.not_before for n in made} == {130.0}  # one schedule per group
        sent: list[list[str]] = []

        async def deliver(replica: Store) -> None:  # one unit at a time: a whole group
            while group := await replica.claim("d", 130.0, 1, 60):
                sent.append([n.id for n in group])

        await asyncio.gather(deliver(store), deliver(other), deliver(store), deliver(other))
        every = [i for digest in sent for i in digest]
        assert sorted(every) == sorted(n.id for n in made)  # each run in exactly one digest
        assert len(sent) == 3  # never a group split (SQLite too: `--workers` share a channel)
    finally:
        await other.close()


# --- PostgreSQL only: replicas starting together, a lost server, URLs, TLS -----------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await asyncio.gather(*(s.ping() for s in stores))
        conn = await asyncpg.connect(pg_url)
        try:
            versions = await conn.fetch("SELECT version FROM relay_schema_version ORDER BY 1")
        finally:
            await conn.close()
        assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    assert await migrate(pg_url) == (0, SCHEMA_VERSION)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO relay_schema_version (version) VALUES (99)")
    finally:
        await conn.close()
    with pytest.raises(StoreUnavailable, match="schema version 99 is newer"):
        await PostgresStore(pg_url).open()


async def _sql(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _dml_role(pg_url: str, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """A role that may use the migrated relay_* tables: (its name, its URL); dropped after."""
    await migrate(pg_url)
    role = f"{prefix}_{os.getpid()}"
    await _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(
            pg_url,
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
        )
        yield role, pg_url.replace("postgres@", f"{role}@")
    finally:
        await _sql(pg_url, f'DROP OWNED BY "{role}"')
        await _sql(pg_url, f'DROP ROLE "{role}"')


async def test_a_heartbeat_refused_its_connection_is_renewed_by_the_replicas_calls(
    pg_url: str,
) -> None:
    """Restarted with max_connections taken by the pools, the server refused the heartbeat a
    connection of its own while the pool claimed and sent: the replica's row expired and its
    claimed rows were taken as a dead replica's, by the other and by itself, an id sent 5
    times. The role's connection limit is that full server here; the replica's claims go on,
    and one of them renews the row."""
    async with _dml_role(pg_url, "relay_full") as (role, url):
        await _full(pg_url, role, url)


async def _full(pg_url: str, role: str, url: str) -> None:
    store = PostgresStore(url, replica_timeout_s=3.0)
    await store.open()
    try:
        await _sql(pg_url, f'ALTER ROLE "{role}" CONNECTION LIMIT 1')  # the pool's one stays
        gone = await _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = $1 AND query LIKE '%relay_replicas%'",
            role,
        )
        assert [row[0] for row in gone] == [True]  # the heartbeat's connection
        beat = "SELECT expires_at, clock_timestamp() FROM relay_replicas WHERE holder = $1"
        [(last, _)] = await _sql(pg_url, beat, store.holder)
        for _ in range(200):  # until renewed, or expired: 3 s at most
            assert await store.claim("c1", now=1.0, limit=10, lease_s=300) == []
            [(expires, now)] = await _sql(pg_url, beat, store.holder)
            if expires > last or now > last:
                break
            await asyncio.sleep(0.05)
        assert expires > last
    finally:
        await store.close()


async def test_a_heartbeat_renewed_by_the_pool_is_not_said_lost(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat's own connection refused, its first failed renewal warned "replica
    heartbeat not recorded: store unavailable" while the replica's calls renewed the row over
    the pool and the store answered them. The warning now comes when nothing renewed the row
    for three renewal periods: here once the calls stop."""
    caplog.set_level(logging.INFO, logger="relay.store")
    async with _dml_role(pg_url, "relay_said") as (role, url):
        await _said_lost(pg_url, role, url, caplog)


async def _said_lost(pg_url: str, role: str, url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresStore(url, replica_timeout_s=3.0)  # renewed every 0.6 s
    await store.open()
    lost = "replica heartbeat not recorded: store unavailable"
    try:
        await _sql(pg_url, f'ALTER ROLE "{role}" CONNECTION LIMIT 1')  # the pool's one stays
        await _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = $1 AND query LIKE '%relay_replicas%'",
            role,
        )
        beat = "SELECT expires_at FROM relay_replicas WHERE holder = $1"
        seen = [(await _sql(pg_url, beat, store.holder))[0][0]]
        for _ in range(400):  # until the pool renewed it twice: two own renewals failed
            assert await store.claim("c1", now=1.0, limit=10, lease_s=300) == []
            [(expires,)] = await _sql(pg_url, beat, store.holder)
            seen += [expires] if expires > seen[-1] else []
            if len(seen) == 3:
                break
            await asyncio.sleep(0.05)
        assert len(seen) == 3
        assert lost not in caplog.messages
        for _ in range(200):  # no call renews it now: said within three periods (1.8 s)
            if lost in caplog.messages:
                break
            await asyncio.sleep(0.05)
        assert caplog.messages.count(lost) == 1
    finally:
        await store.close()


async def test_a_full_server_is_not_asked_for_a_connection_by_every_call(pg_url: str) -> None:
    """The pool opened a connection for each call that found none idle: against a server out
    of connection slots, intake at 300 runs/s made 320 refused connections a second, each a
    backend the server forked to refuse it. After a refusal the calls get it again at once
    (503 for intake, as before) for a moment, then one tries; the server's log counts them."""
    async with _dml_role(pg_url, "relay_gate") as (role, url):
        await _gate(pg_url, role, url)


async def _gate(pg_url: str, role: str, url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    refused = f'too many connections for role "{role}"'
    log = shared_server().root / "server.log"
    try:
        await _sql(pg_url, f'ALTER ROLE "{role}" CONNECTION LIMIT 1')  # the heartbeat's
        await _sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE usename = $1 AND query NOT LIKE '%relay_replicas%'",
            role,
        )  # the pool's: each call needs a new connection now
        before = log.read_text().count(refused)
        for _ in range(50):
            with pytest.raises(StoreUnavailable) as caught:
                await store.claim("c1", now=1.0, limit=10, lease_s=300)
        assert "too many connections" in str(caught.value) and caught.value.passing
        assert log.read_text().count(refused) - before < 10  # 50 before
        await _sql(pg_url, f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        for _ in range(100):  # tried again within the pause (0.5 s)
            with contextlib.suppress(StoreUnavailable):
                assert await store.claim("c1", now=1.0, limit=10, lease_s=300) == []
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the store never connected again")
    finally:
        await store.close()


async def test_a_start_cut_short_by_statement_timeout_waits_for_the_lock(pg_url: str) -> None:
    """A replica starting while another migrates waits for the migration lock; the role's
    statement_timeout cut that wait short and `relay serve` exited 1 ("QueryCanceledError
    (57014)", a refusal waiting would not mend). It is one waiting mends, said in words."""
    async with _dml_role(pg_url, "relay_timeout") as (role, url):
        await _sql(pg_url, f"ALTER ROLE \"{role}\" SET statement_timeout = '200ms'")
        migrating = await asyncpg.connect(pg_url)
        try:
            await migrating.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
            with pytest.raises(StoreUnavailable, match="statement_timeout") as caught:
                await PostgresStore(url).open()
            assert caught.value.passing
        finally:
            await migrating.close()


async def test_a_read_only_database_is_said_in_words_and_waited_for(pg_url: str) -> None:
    """A database made read-only for a while (a disk-full guard, a failover's standby) was
    "ReadOnlySQLTransactionError (25006)" in the log, and ended a start (exit 1)."""
    await migrate(pg_url)
    name = pg_url.rsplit("/", 1)[1]
    await _sql(pg_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with pytest.raises(StoreUnavailable, match="the database is read-only") as caught:
        await PostgresStore(pg_url).open()
    assert caught.value.passing


async def test_a_database_writable_again_is_written_by_connections_made_meanwhile(
    pg_url: str,
) -> None:
    """A connection opened while the database was read-only (a disk-full guard) keeps that
    session default for good: the pool kept it, and both replicas refused every update long
    after the database was writable again. A connection refused a write is replaced."""
    store = PostgresStore(pg_url)
    await store.open()
    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    try:
        await _sql(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await _sql(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        for tries in range(20):  # the terminated connection first, then a read-only one
            with pytest.raises(StoreUnavailable) as caught:
                await enqueue(store, f"run_{tries}", 1.0)
            if "read-only" in str(caught.value):
                break
        assert "read-only" in str(caught.value)
        await _sql(admin, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        for tries in range(5):  # a connection the pool opened before the reset fails once
            with contextlib.suppress(StoreUnavailable):
                assert len(await enqueue(store, f"run_writable_{tries}", 2.0)) == 1
                break
        else:
            pytest.fail("the store never wrote again")
    finally:
        await store.close()


async def test_the_leases_of_a_replica_that_stopped_beating_are_free_at_once(pg_url: str) -> None:
    """A kill -9 is a row in relay_replicas that expires (time travel here: its renewals are an
    hour apart); a graceful close deletes it. Either frees the replica's leases before they end."""
    dead, live, other = (PostgresStore(pg_url, replica_timeout_s=3600.0) for _ in range(3))
    for s in (dead, live, other):
        await s.open()
    try:
        for i, owner in enumerate((dead, live, dead)):
            await enqueue(other, f"run_{i}", 1.0)
            assert len(await owner.claim("c1", now=2.0, limit=1, lease_s=300)) == 1
        assert await other.claim("c1", now=3.0, limit=10, lease_s=300) == []  # all held
        await _sql(
            pg_url,
            "UPDATE relay_replicas SET expires_at = clock_timestamp() WHERE holder = $1",
            dead.holder,
        )
        taken = await other.claim("c1", now=3.0, limit=10, lease_s=300)
        assert [n.run_id for n in taken] == ["run_0", "run_2"]  # not live's run_1
        await live.close()
        assert [n.run_id for n in await other.claim("c1", 3.0, 10, 300)] == ["run_1"]
        holders = await _sql(pg_url, "SELECT holder FROM relay_replicas ORDER BY holder")
        assert {r["holder"] for r in holders} == {dead.holder, other.holder}
    finally:
        for s in (dead, live, other):
            await s.close()


async def test_a_lease_without_a_holder_lasts_until_it_ends(pg_url: str) -> None:
    """Rows leased by a replica of the previous release (no lease_holder) keep the old rule."""
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await enqueue(store, "run_1", 1.0)
        await store.claim("c1", now=2.0, limit=1, lease_s=300)
        await _sql(pg_url, "UPDATE relay_outbox SET lease_holder = NULL")
        assert await store.claim("c1", now=3.0, limit=1, lease_s=300) == []
        assert len(await store.claim("c1", now=302.0, limit=1, lease_s=300)) == 1
    finally:
        await store.close()


async def test_an_unreachable_server_is_unavailable_and_names_no_secret() -> None:
    url = f"postgresql://relay:hunter2@127.0.0.1:{free_port()}/relaydb"
    store = open_store(url)
    assert isinstance(store, PostgresStore) and "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    text = str(caught.value)
    assert text == "store open failed: connection refused"  # not ConnectionRefusedError
    assert caught.value.passing  # `relay serve` waits for a server not listening yet
    for secret in ("hunter2", "relay:", "relaydb", "127.0.0.1"):
        assert secret not in text
    with pytest.raises(StoreUnavailable):
        await migrate(url)


async def test_a_server_that_never_answers_is_named_so() -> None:
    """A port that takes the connection and says nothing (a firewall, a stopped VM behind a
    proxy): the error read "store open failed: TimeoutError"."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = open_store(f"postgresql://relay:hunter2@127.0.0.1:{port}/relaydb?connect_timeout=2")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
    finally:
        server.close()
    assert str(caught.value) == "store open failed: no answer in time"
    assert caught.value.passing


async def test_a_missing_database_or_a_user_without_rights_is_named_plainly(pg_url: str) -> None:
    """SQLite says what it cannot write; PostgreSQL said "InvalidCatalogNameError (3D000)"."""
    with pytest.raises(StoreUnavailable, match="the database does not exist") as missing:
        await open_store(pg_url.rsplit("/", 1)[0] + "/no_such_db").open()
    assert not missing.value.passing  # `relay serve` exits: waiting would not create it
    role = f"relay_norights_{os.getpid()}"
    await _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(pg_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        url = pg_url.replace("postgres@", f"{role}@")
        with pytest.raises(
            StoreUnavailable, match=r"permission denied .*relay_\* tables"
        ) as denied:
            await open_store(url).open()
        assert not denied.value.passing
    finally:
        await _sql(pg_url, f'DROP ROLE "{role}"')


async def test_a_search_path_naming_no_schema_is_named_plainly(pg_url: str) -> None:
    """`?options=-c%20search_path%3Drelay` before `CREATE SCHEMA relay`: relay said only
    "store migration failed: InvalidSchemaNameError (3F000)", not what to fix."""
    with pytest.raises(StoreUnavailable, match="names no schema that exists") as caught:
        await open_store(pg_url + "?options=-c%20search_path%3Dno_such_schema").open()
    assert str(caught.value).endswith(": InvalidSchemaNameError (3F000)")
    assert not caught.value.passing  # `relay serve` exits: waiting would not create it


async def test_a_search_path_in_the_url_puts_the_tables_in_that_schema(pg_url: str) -> None:
    """docs/postgresql.md: another schema than public by the URL's options."""
    await _sql(pg_url, "CREATE SCHEMA relay_elsewhere")
    await migrate(pg_url + "?options=-c%20search_path%3Drelay_elsewhere")
    schemas = await _sql(
        pg_url, "SELECT DISTINCT schemaname FROM pg_tables WHERE tablename LIKE 'relay\\_%'"
    )
    assert [row["schemaname"] for row in schemas] == ["relay_elsewhere"]


async def test_a_search_path_whose_first_schema_is_missing_is_refused(pg_url: str) -> None:
    """`search_path=nope,public`: PostgreSQL passes over a schema that does not exist without a
    word, and `relay migrate` created relay's tables in public (exit 0), not where the operator
    asked. Refused now, naming both schemas; nothing is created."""
    url = pg_url + "?options=-c%20search_path%3Dnope%2Cpublic"
    migrated = await asyncio.to_thread(run_cli, "migrate", env={"RELAY_STORE_URL": url})
    assert (migrated.returncode, migrated.stdout) == (1, "")
    assert migrated.stderr.startswith(
        "error: store open failed: the first schema of the search_path, 'nope', does not exist"
        " or relay's user has no USAGE on it; PostgreSQL would put relay's tables in 'public'"
    )
    assert await _sql(pg_url, "SELECT FROM pg_tables WHERE tablename LIKE 'relay\\_%'") == []


async def test_a_roles_search_path_naming_a_schema_it_may_not_use_is_refused(
    pg_url: str,
) -> None:
    """`ALTER ROLE ... SET search_path = walled, public` with no USAGE on walled: the tables
    went to public. Refused (what `relay serve` opens); granted, they go to walled, and a
    default `"$user", public` still means public."""
    role = f"relay_walled_{os.getpid()}"
    await _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(pg_url, "CREATE SCHEMA walled")
        await _sql(pg_url, f'GRANT CREATE ON SCHEMA public TO "{role}"')
        await _sql(pg_url, f'ALTER ROLE "{role}" SET search_path = walled, public')
        url = pg_url.replace("postgres@", f"{role}@")
        with pytest.raises(StoreUnavailable, match="search_path, 'walled', does not") as caught:
            await open_store(url).open()
        assert not caught.value.passing  # `relay serve` exits: waiting would not grant it
        await _sql(pg_url, f'GRANT USAGE, CREATE ON SCHEMA walled TO "{role}"')
        assert await migrate(url) == (0, SCHEMA_VERSION)
        where = "SELECT DISTINCT schemaname FROM pg_tables WHERE tablename LIKE 'relay\\_%'"
        assert [row["schemaname"] for row in await _sql(pg_url, where)] == ["walled"]
        assert await migrate(pg_url) == (0, SCHEMA_VERSION)  # postgres: "$user", public
    finally:
        await _sql(pg_url, f'DROP OWNED BY "{role}"')
        await _sql(pg_url, f'DROP ROLE "{role}"')


async def test_a_server_of_the_wrong_kind_is_named_plainly(pg_url: str) -> None:
    """`?target_session_attrs=standby` against a primary: the store said only
    "store open failed: TargetServerAttributeNotMatched", a class name, not what to fix."""
    with pytest.raises(StoreUnavailable) as caught:
        await open_store(pg_url + "?target_session_attrs=standby").open()
    said = str(caught.value)
    assert said.startswith("store open failed: no server of the URL's hosts is of the kind")
    assert said.endswith(": TargetServerAttributeNotMatched") and not caught.value.passing


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            asyncpg.exceptions.InternalClientError("got result for unknown protocol state 3"),
            "the driver lost track of the connection (closed under it, or terminated)",
        ),
        (
            asyncpg.exceptions.ProtocolError("unexpected message"),
            "the server's answer broke PostgreSQL's protocol",
        ),
        (
            asyncpg.InterfaceError("cannot perform operation: connection is closed"),
            "the driver could not use the connection (closed, lost, or the pool closing)",
        ),
        (
            asyncpg.exceptions.ClientConfigurationError("invalid sslmode"),
            "the URL or a PG* environment variable has a value the driver refuses",
        ),
    ],
)
def test_client_side_driver_errors_are_said_in_words(exc: Exception, words: str) -> None:
    """asyncpg's own errors (no SQLSTATE) were said by class name alone, "InternalClientError",
    where the server's refusals had words; their text is not shown (it may name the host)."""
    said = str(unavailable("store write failed", exc))
    assert said == f"store write failed: {words}: {type(exc).__name__}"


async def test_a_role_that_may_only_use_the_tables_runs_a_migrated_store(pg_url: str) -> None:
    """`relay migrate` as the owner, replicas as a role without CREATE: the start created the
    version table IF NOT EXISTS, which PostgreSQL refuses without CREATE even when it exists."""
    await migrate(pg_url)
    role = f"relay_dml_{os.getpid()}"
    await _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(pg_url, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await _sql(
            pg_url,
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
        )
        store = PostgresStore(pg_url.replace("postgres@", f"{role}@"))
        await store.open()
        try:
            await enqueue(store, "run_1", 1.0)
            assert [n.run_id for n in await store.claim("c1", 2.0, 10, 300)] == ["run_1"]
        finally:
            await store.close()
    finally:
        await _sql(pg_url, f'DROP OWNED BY "{role}"')
        await _sql(pg_url, f'DROP ROLE "{role}"')


async def test_a_url_parameter_the_server_refuses_is_named_plainly(pg_url: str) -> None:
    """Prisma's `schema=`, Supabase's `pgbouncer=true`: sent as settings, refused by the
    server; relay said only "UndefinedObjectError (42704)"."""
    for query, words in (
        ("schema=relay", "a URL parameter names no setting the server knows"),
        ("statement_timeout=soon", "the server refused the value of a setting"),
    ):
        with pytest.raises(StoreUnavailable, match=words) as caught:
            await open_store(f"{pg_url}?{query}").open()
        assert not caught.value.passing


async def test_a_server_without_tls_under_sslmode_require_is_not_waited_for(pg_url: str) -> None:
    """The test server has ssl off: asyncpg's bare ConnectionError read as a connection lost,
    so `relay serve` waited forever for what only a config change mends."""
    for mode in ("require", "verify-full"):
        with pytest.raises(StoreUnavailable) as caught:
            await open_store(f"{pg_url}?sslmode={mode}").open()
        assert (
            str(caught.value)
            == "store open failed: TLS: the server does not offer it (see sslmode)"
        )
        assert not caught.value.passing


async def test_connections_killed_under_the_pool_come_back(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        await enqueue(store, "run_1", 1.0)
        conn = await asyncpg.connect(shared_server().url())
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                pg_url.rsplit("/", 1)[1],
            )
        finally:
            await conn.close()
        outcomes: list[dict[str, int] | None] = []
        for _ in range(3):  # the dead connection fails one call, then the pool reconnects
            try:
                outcomes.append(await store.counts())
            except StoreUnavailable as exc:
                assert "store unavailable: " in str(exc)
                outcomes.append(None)
        assert outcomes[-1] == {**EMPTY, "pending": 1}
    finally:
        await store.close()


class FrozenLink:
    """A TCP relay to PostgreSQL that can stop carrying bytes without closing anything: a
    partition or a frozen server, as the client sees it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._link, "127.0.0.1", 0)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_ping_answers_soon_when_the_server_stops_answering(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz pings the store: a server that stopped answering held it 30 s and more (the
    query's timeout, then its cancel), where a health check wants a quick 503."""
    # short, as each unanswered ping waits it out; long enough for the answered ones under load
    monkeypatch.setattr(_pg_pool, "PING_TIMEOUT_S", 1.0)
    link = FrozenLink(shared_server().port)
    server = await link.start()
    port = server.sockets[0].getsockname()[1]
    store = PostgresStore(pg_url.replace(f":{link.port}/", f":{port}/"))
    await store.open()
    try:
        await store.ping()
        link.flowing.clear()
        for _ in range(2):  # the second waits on the first, still unanswered
            with pytest.raises(StoreUnavailable, match="no answer"):
                await asyncio.wait_for(store.ping(), 30.0)
        link.flowing.set()
        await asyncio.wait_for(store.ping(), 30.0)  # and it is answered once the link is back
    finally:
        link.flowing.set()
        await store.close()
        server.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2@h/db?sslmode=bogus",
        "postgresql+asyncpg://u:hunter2@h/db",
        "postgresql://u:hunter2@h/db?channel_binding=require",  # asyncpg cannot bind channels
        "postgresql://u:hunter2@h/db?connect_timeout=soon",
    ],
)
def test_bad_postgresql_urls(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStore(url)
    [problem] = caught.value.problems
    assert problem.path == "RELAY_STORE_URL" and "hunter2" not in str(caught.value)


@pytest.mark.parametrize("password", ["hunter2/x", "hunter2?x", "hunter2#x", "12/hunter2"])
def test_a_password_not_percent_encoded_is_named(password: str) -> None:
    """`user:hunter2/x@host/db` read as host "hunter2": relay waited for ever for a host name
    that does not resolve, saying only "host name lookup failed"."""
    with pytest.raises(ConfigError) as caught:
        PostgresStore(f"postgresql://u:{password}@db.example.com:5432/relay")
    assert "percent-encode / ? # @ in a user or password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_libpq_client_parameters_in_the_url_are_accepted(pg_url: str) -> None:
    """A provider's libpq URL (connect_timeout, keepalives, channel_binding=prefer ...): asyncpg
    sent those to the server as settings, which refused them (UndefinedObjectError) at start."""
    extra = "connect_timeout=10&keepalives=1&keepalives_idle=30&channel_binding=prefer"
    store = PostgresStore(f"{pg_url}?{extra}&application_name=relay-test")
    await store.open()
    try:
        await store.kv_put("url", "k", "v", now=1.0)
        names = await _sql(
            pg_url,
            "SELECT application_name FROM pg_stat_activity WHERE datname = $1",
            pg_url.rsplit("/", 1)[1],
        )
        assert "relay-test" in {row["application_name"] for row in names}  # the rest is kept
    finally:
        await store.close()


async def test_relay_names_its_connections(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_stat_activity showed relay's connections with no name: an operator counting them
    (max_connections) could not tell them from others'. The URL's name or PGAPPNAME wins."""
    monkeypatch.delenv("PGAPPNAME", raising=False)
    for query, name in (("", "relay"), ("?fallback_application_name=relay-b", "relay-b")):
        store = PostgresStore(pg_url + query)
        await store.open()
        try:
            rows = await _sql(
                pg_url,
                "SELECT application_name, count(*) AS n FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid() GROUP BY 1",
                pg_url.rsplit("/", 1)[1],
            )
            assert {row["application_name"]: row["n"] for row in rows} == {name: 2}  # pool+beat
        finally:
            await store.close()


def test_verify_modes_trust_the_system_store_unless_a_root_cert_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    assert connect_args("postgresql://h/db") == {}
    assert connect_args("postgresql://h/db?sslmode=require") == {}
    assert connect_args("postgresql://h/db?sslmode=verify-full&sslrootcert=/ca.pem") == {}
    full = connect_args("postgresql://h/db?sslmode=verify-full")["ssl"]
    assert full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    ca = connect_args("postgresql://h/db?sslmode=verify-ca")["ssl"]
    assert not ca.check_hostname and ca.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert "ssl" in connect_args("postgresql://h/db")
    monkeypatch.setenv("PGSSLMODE", "require")
    for query in ("sslrootcert=system", "sslrootcert=system&sslmode=verify-full"):
        system = connect_args(f"postgresql://h/db?{query}")["ssl"]  # libpq 16: verify-full
        assert system.check_hostname and system.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="sslrootcert=system needs sslmode=verify-full"):
        PostgresStore("postgresql://h/db?sslrootcert=system&sslmode=require")


async def test_a_missing_certificate_file_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg's FileNotFoundError read as a server socket not there yet: `relay serve` waited
    for ever for a file only the operator can provide."""
    monkeypatch.delenv("PGSSLMODE", raising=False)
    missing = tmp_path / "missing.pem"
    base = f"postgresql://relay@127.0.0.1:{free_port()}/relaydb"
    for query, name in (
        (f"sslmode=verify-full&sslrootcert={missing}", "sslrootcert"),
        (f"sslmode=require&sslcert={missing}", "sslcert"),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            await PostgresStore(f"{base}?{query}").open()
        assert str(caught.value) == f"store open failed: TLS: the file {name} names cannot be read"
        assert not caught.value.passing
    monkeypatch.setenv("PGSSLROOTCERT", str(missing))
    with pytest.raises(StoreUnavailable, match="sslrootcert names cannot be read"):
        await migrate(f"{base}?sslmode=verify-ca")
    with pytest.raises(StoreUnavailable, match="connection refused"):  # prefer: not read
        await PostgresStore(f"{base}?sslmode=prefer").open()


async def test_a_certificate_path_with_a_tilde_is_named_as_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg (as libpq) opens `~/client.pem` as written, never expanding the ~: the check
    expanded it, found the file and let asyncpg's FileNotFoundError through, which read as a
    server not there yet, waited for for ever."""
    monkeypatch.delenv("PGSSLMODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "client.pem").write_text("not a certificate")
    url = f"postgresql://relay@127.0.0.1:{free_port()}/relaydb?sslmode=require&sslcert=~/client.pem"
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore(url).open()
    assert str(caught.value) == "store open failed: TLS: the file sslcert names cannot be read"
    assert not caught.value.passing


async def test_tls_verify_full_trusts_ssl_cert_file(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = shared_server()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(server.root / "server.pem"))
    server.own(server.root / "server.pem", mode=0o600)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    admin = await asyncpg.connect(server.url())
    try:
        for name in ("ssl_cert_file", "ssl_key_file"):
            await admin.execute(f"ALTER SYSTEM SET {name} = '{server.root / 'server.pem'}'")
        await admin.execute("ALTER SYSTEM SET ssl = on")
        await admin.execute("SELECT pg_reload_conf()")
        url = pg_url + "?sslmode=verify-full"
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        with pytest.raises(
            StoreUnavailable, match="store open failed: TLS: certificate not trusted"
        ):
            await PostgresStore(url).open()  # our CA is in no system store
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        system = PostgresStore(url + "&sslrootcert=system")  # libpq 16: the system store
        await system.open()  # asyncpg alone looked for a file named "system"
        await system.close()
        store = PostgresStore(url)
        await store.open()
        try:
            await store.kv_put("tls", "k", "v", now=1.0)
            assert await store.kv_get("tls", "k") == "v"
            encrypted = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)"
                " WHERE datname = $1 AND ssl",
                pg_url.rsplit("/", 1)[1],
            )
            assert encrypted >= 1
        finally:
            await store.close()
    finally:
        for name in ("ssl", "ssl_cert_file", "ssl_key_file"):
            await admin.execute(f"ALTER SYSTEM RESET {name}")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()


async def test_the_newest_update_of_a_run(store: Store) -> None:
    assert await store.runs_updated_ms(["run_1"]) == {}
    await store.observe([make_run("run_1", at_s=1000)], decide, now=1.0)
    await store.observe([make_run("run_1", at_s=900)], decide, now=2.0)  # stale: ignored
    assert await store.runs_updated_ms(["run_1"]) == {"run_1": 1_000_000}
    await store.observe([make_run("run_2", updatedAt=None)], decide, now=3.0)
    assert await store.runs_updated_ms(["run_1", "run_2"]) == {"run_1": 1_000_000}


async def test_a_digest_taken_over_from_a_stopped_replica_is_sent_again_as_it_was(
    pg_url: str,
) -> None:
    """A replica claimed a digest, may have sent it, and died; by the takeover more runs of the
    group are due. The digest goes again with the runs (and so the id) it had: a receiver
    drops it as a repeat. The later runs follow in a digest of their own, not merged into it."""
    dead, other = (PostgresStore(pg_url, replica_timeout_s=3600.0) for _ in range(2))
    for s in (dead, other):
        await s.open()
    try:

        async def observe(run_id: str, now: float) -> str:
            run = make_run(run_id, taskIdentifier="t/a")
            [ident] = ids(await other.observe([run], decide_digest, now))
            return ident

        first = {await observe("run_1", 0.0), await observe("run_2", 10.0)}
        assert {n.id for n in await dead.claim("d", now=30.0, limit=10, lease_s=300)} == first
        late = await observe("run_3", 31.0)  # the next digest: due at 330
        await _sql(
            pg_url,
            "UPDATE relay_replicas SET expires_at = clock_timestamp() WHERE holder = $1",
            dead.holder,
        )
        again = await other.claim("d", now=331.0, limit=10, lease_s=300)
        assert {n.id for n in again} == first
        assert [n.id for n in await other.claim("d", now=331.0, limit=10, lease_s=300)] == [late]
    finally:
        for s in (dead, other):
            await s.close()


async def test_a_replica_taken_for_dead_changes_no_row_another_holds_but_to_say_it_sent(
    pg_url: str,
) -> None:
    """A replica frozen mid-send is taken for dead and its row claimed by another. Thawed, its
    retry, dead, mute or postponement would land on the other's lease (a retry handing it back,
    for a third send while the second is in flight; dead killing a row the other delivers): the
    row stays as the other holds it. Its send is recorded: the notification went out."""
    frozen, other = (PostgresStore(pg_url, replica_timeout_s=3600.0) for _ in range(2))
    for s in (frozen, other):
        await s.open()
    try:
        [nid] = ids(await other.observe([make_run("run_1")], decide, 1.0))
        assert [n.id for n in await frozen.claim("c1", now=2.0, limit=10, lease_s=300)] == [nid]
        await _sql(
            pg_url,
            "UPDATE relay_replicas SET expires_at = clock_timestamp() WHERE holder = $1",
            frozen.holder,
        )
        [held] = await other.claim("c1", now=3.0, limit=10, lease_s=300)
        # each says it changed nothing: the frozen one neither logs nor counts the outcome
        retry = await frozen.mark_retry([(nid, 1)], now=4.0, not_before=5.0, reason="x", error="x")
        assert retry == set()
        assert await frozen.mark_dead([(nid, 1)], now=4.0, reason="x", error="x") == set()
        assert not await frozen.mark_muted(nid, now=4.0, silence_id="sil_1", attempts=0)
        assert not await frozen.postpone(nid, now=4.0, not_before=5.0)
        assert await other.get(nid) == held
        assert [e["kind"] for e in await other.events(nid)] == ["created"]
        await frozen.mark_sent([(nid, 1)], now=6.0)
        after = await other.get(nid)
        assert after is not None and (after.state, after.attempts) == ("sent", 1)
    finally:
        for s in (frozen, other):
            await s.close()
