"""SQLiteStore on a real file: observe, group commit, the outbox lifecycle, failures, URLs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ConfigError, StoreUnavailable
from relay.model import Decision, Match, Run, RunState, notification_id
from relay.store import Observed
from relay.store._sqlite_schema import SCHEMA_VERSION
from relay.store.sqlite import SQLiteStore, sqlite_path


def make_run(run_id: str, status: str = "FAILED", at_s: float = 1000, **extra: Any) -> Run:
    updated = datetime.fromtimestamp(at_s, UTC).isoformat()
    return Run.model_validate({"id": run_id, "status": status, "updatedAt": updated, **extra})


def decide(run: Run, previous: RunState | None) -> Decision:
    """Rule r1 fires once per run on FAILED, to each channel in the run's tags (default c1)."""
    if previous is not None and (run.updated_at_ms or 0) < (previous.updated_at_ms or 0):
        return Decision(state=previous, stale=True)
    fired = previous.fired if previous is not None else frozenset()
    matches: tuple[Match, ...] = ()
    if run.status == "FAILED" and "r1" not in fired:
        matches = tuple(Match("r1", channel, "t1") for channel in run.tags or ["c1"])
        fired = fired | {"r1"}
    state = RunState(run.updated_at_ms, run.status, fired, run.costInCents, run.durationMs)
    return Decision(state=state, matches=matches)


def explode_on_boom(run: Run, previous: RunState | None) -> Decision:
    if run.id.startswith("boom"):
        raise ValueError("decide failed")
    return decide(run, previous)


def ids(observed: list[Observed]) -> list[str]:
    return [n.id for o in observed for n in o.notifications]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "data" / "relay.db")
    await store.open()
    yield store
    await store.close()


async def enqueue(store: SQLiteStore, run_id: str, now: float, *channels: str) -> list[str]:
    run = make_run(run_id, tags=list(channels or ["c1"]))
    return ids(await store.observe([run], decide, now))


# --- observe -------------------------------------------------------------------------------------


async def test_observe_enqueues_once_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data" / "relay.db"
    first = SQLiteStore(path)
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

    second = SQLiteStore(path)
    await second.open()
    try:
        stored = await second.get(notification.id)
        assert stored == notification
        assert stored is not None and stored.run["costInCents"] == 2.5
        after_restart = await second.observe([make_run("run_1", at_s=1002)], decide, now=12.0)
        assert ids(after_restart) == []
        assert await second.counts() == {"pending": 1, "sent": 0, "dead": 0, "muted": 0}
    finally:
        await second.close()


async def test_a_stale_update_changes_nothing(store: SQLiteStore) -> None:
    await store.observe([make_run("run_1", "EXECUTING", at_s=2000)], decide, now=1.0)
    observed = await store.observe([make_run("run_1", "FAILED", at_s=1000)], decide, now=2.0)
    assert observed == [Observed("run_1", stale=True)]
    assert await store.counts() == {"pending": 0, "sent": 0, "dead": 0, "muted": 0}
    # The stored state is still the newer EXECUTING one: a later FAILED fires.
    assert len(ids(await store.observe([make_run("run_1", at_s=3000)], decide, now=3.0))) == 1


async def test_the_same_run_twice_in_one_call_sees_the_first(store: SQLiteStore) -> None:
    runs = [make_run("run_1", at_s=1000), make_run("run_1", at_s=1001), make_run("run_2")]
    observed = await store.observe(runs, decide, now=1.0)
    assert [len(o.notifications) for o in observed] == [1, 0, 1]
    assert [o.run_id for o in observed] == ["run_1", "run_1", "run_2"]


async def test_concurrent_observes_share_commits(store: SQLiteStore) -> None:
    before = store.commits
    results = await asyncio.gather(
        *(store.observe([make_run(f"run_{i}")], decide, now=1.0) for i in range(200))
    )
    assert sum(len(ids(observed)) for observed in results) == 200
    assert store.commits - before < 200
    assert await store.counts() == {"pending": 200, "sent": 0, "dead": 0, "muted": 0}


async def test_a_failing_call_fails_alone_and_leaves_no_trace(store: SQLiteStore) -> None:
    before = store.commits
    # boom_1 follows ok_0 in the same call: ok_0's writes must roll back with it.
    results = await asyncio.gather(
        store.observe([make_run("ok_1")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_0"), make_run("boom_1")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_2")], explode_on_boom, now=1.0),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert [ids(r) for r in results if isinstance(r, list)] == [
        [notification_id("ok_1", "r1", "c1")],
        [notification_id("ok_2", "r1", "c1")],
    ]
    assert store.commits - before == 1  # one batch, committed without the failed call
    assert await store.get(notification_id("ok_0", "r1", "c1")) is None
    assert len(ids(await store.observe([make_run("ok_0")], decide, now=2.0))) == 1


# --- claim and the outbox lifecycle --------------------------------------------------------------


async def test_claim_leases_respects_channel_not_before_and_order(store: SQLiteStore) -> None:
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


async def test_next_due_accounts_for_leases(store: SQLiteStore) -> None:
    assert await store.next_due("c1") is None
    await enqueue(store, "run_1", 10.0)
    await enqueue(store, "run_2", 20.0)
    assert await store.next_due("c1") == 10.0
    await store.claim("c1", now=15.0, limit=1, lease_s=30)  # run_1 leased until 45
    assert await store.next_due("c1") == 20.0
    await store.claim("c1", now=25.0, limit=1, lease_s=30)  # run_2 leased until 55
    assert await store.next_due("c1") == 45.0
    assert await store.release_leases() == 2
    assert await store.release_leases() == 0
    assert await store.next_due("c1") == 10.0
    assert await store.next_due("c2") is None


async def test_mark_sent_and_retry(store: SQLiteStore) -> None:
    sent, retried = await enqueue(store, "run_1", 10.0, "c1", "c2")
    await store.claim("c1", now=10.0, limit=10, lease_s=60)
    await store.mark_sent(sent, now=11.0, attempts=1)
    await store.claim("c2", now=10.0, limit=10, lease_s=60)
    await store.mark_retry(
        retried,
        now=12.0,
        not_before=50.0,
        attempts=2,
        reason="rate_limited",
        error="429 from receiver",
    )

    done = await store.get(sent)
    assert done is not None and (done.state, done.attempts, done.reason) == ("sent", 1, None)
    later = await store.get(retried)
    assert later is not None
    assert (later.state, later.attempts, later.not_before) == ("pending", 2, 50.0)
    assert (later.reason, later.last_error) == ("rate_limited", "429 from receiver")
    assert await store.claim("c2", now=49.0, limit=10, lease_s=60) == []  # lease was released
    assert [n.id for n in await store.claim("c2", now=50.0, limit=10, lease_s=60)] == [retried]
    await store.mark_retry(
        sent, now=13.0, not_before=60.0, attempts=5, reason="other", error="x"
    )  # a sent row stays sent
    assert await store.get(sent) == done
    assert await store.counts() == {"pending": 1, "sent": 1, "dead": 0, "muted": 0}


async def test_dead_letters_and_replay(store: SQLiteStore) -> None:
    a, b = await enqueue(store, "run_a", 10.0, "c1", "c2")
    c = (await enqueue(store, "run_c", 10.0))[0]
    await store.mark_dead(a, now=20.0, attempts=3, reason="server_error", error="HTTP 503")
    await store.mark_dead(b, now=30.0, attempts=1, reason="client_error", error="HTTP 400")
    await store.mark_dead(c, now=25.0, attempts=2, reason="timeout", error="timed out")
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
    assert await store.counts() == {"pending": 1, "sent": 0, "dead": 2, "muted": 0}
    assert await store.replay(None, now=50.0) == 2
    assert await store.dead_letters() == []
    assert await store.get("ntf_unknown") is None


# --- failures ------------------------------------------------------------------------------------


async def test_a_full_database_fails_only_the_call_that_overflows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "small.db", max_pages=32)
    await store.open()
    try:
        # SQLITE_FULL rolls back the whole transaction, run_small's writes included: the store
        # must run run_small again rather than report a commit that did not happen.
        huge = make_run("run_huge", payload="x" * 400_000)
        results = await asyncio.gather(
            store.observe([make_run("run_small")], decide, now=1.0),
            store.observe([huge], decide, now=1.0),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreUnavailable)
        assert "SQLITE_FULL" in str(results[1])
        assert isinstance(results[0], list) and len(ids(results[0])) == 1
        assert await store.get(notification_id("run_huge", "r1", "c1")) is None
        assert len(ids(await store.observe([make_run("run_next")], decide, now=2.0))) == 1
        assert await store.counts() == {"pending": 2, "sent": 0, "dead": 0, "muted": 0}
    finally:
        await store.close()


async def test_a_failed_commit_fails_the_whole_batch(store: SQLiteStore) -> None:
    denied: list[str] = []

    def deny_one_commit(action: int, arg1: str | None, *_: str | None) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and not denied:
            denied.append(arg1)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    # A real SQLite error at COMMIT: the authorizer refuses the batch's COMMIT statement.
    results = await asyncio.gather(
        store._writer.run(lambda conn: conn.set_authorizer(deny_one_commit)),
        store.observe([make_run("run_1")], decide, now=1.0),
        store.observe([make_run("run_2")], decide, now=1.0),
        return_exceptions=True,
    )
    assert denied == ["COMMIT"]
    for result in results:
        assert isinstance(result, StoreUnavailable)
        assert str(result) == "store commit failed: SQLITE_AUTH"
    assert await store.counts() == {"pending": 0, "sent": 0, "dead": 0, "muted": 0}
    assert len(ids(await store.observe([make_run("run_1")], decide, now=2.0))) == 1


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.ping()
    await store.open()
    await store.open()  # idempotent
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.counts()
    await store.close()  # idempotent


async def test_close_finishes_queued_calls(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    calls = [
        asyncio.ensure_future(store.observe([make_run(f"run_{i}")], decide, now=1.0))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # let the calls queue
    await store.close()
    assert sum(len(ids(call.result())) for call in calls) == 20


async def test_open_refuses_a_newer_schema_and_a_foreign_file(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="schema version 99 is newer"):
        await SQLiteStore(newer).open()

    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="store open failed: SQLITE_NOTADB"):
        await SQLiteStore(foreign).open()


async def test_the_file_is_in_wal_mode_with_a_versioned_schema(store: SQLiteStore) -> None:
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# --- two processes on one file -------------------------------------------------------------------


async def test_two_stores_on_one_file(store: SQLiteStore) -> None:
    cli = SQLiteStore(store.path)
    await cli.open()
    try:
        [nid] = await enqueue(store, "run_1", 10.0)
        await store.mark_dead(nid, now=11.0, attempts=3, reason="timeout", error="timed out")
        assert [n.id for n in await cli.dead_letters()] == [nid]
        assert await cli.replay(None, now=12.0) == 1
        assert [n.id for n in await store.claim("c1", now=12.0, limit=10, lease_s=60)] == [nid]
        # Both write at once: BEGIN IMMEDIATE and the busy timeout make one wait for the other.
        await asyncio.gather(
            *(
                s.observe([make_run(f"both_{i}")], decide, now=13.0)
                for i in range(50)
                for s in (store, cli)
            )
        )
        # ... and each run, observed by both, is enqueued once.
        assert await cli.counts() == {"pending": 51, "sent": 0, "dead": 0, "muted": 0}
    finally:
        await cli.close()


# --- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relay.db", Path("relay.db")),
        ("sqlite:///data/relay.db", Path("data/relay.db")),
        ("sqlite:////var/lib/relay/relay.db", Path("/var/lib/relay/relay.db")),
    ],
)
def test_sqlite_path(url: str, path: Path) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///", "names no file"),
        ("sqlite:////", "names no file"),
        ("sqlite://", "no host"),
        ("sqlite://user:hunter2@host/relay.db", "no host"),
        ("sqlite:relay.db", "malformed"),
        ("sqlite:///relay.db?mode=ro", "query parameters"),
        ("sqlite:///file:relay.db", "in-memory or URI"),
        ("sqlite:///data/", "directory"),
    ],
)
def test_sqlite_path_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sqlite_path(url)
    [problem] = caught.value.problems
    assert problem.path == "RELAY_STORE_URL"
    assert message in problem.message
    text = str(caught.value)
    assert "hunter2" not in text
    assert len(url) <= len("sqlite:////") or url not in text  # short ones are in the usage hint


async def test_key_value_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    store = SQLiteStore(path)
    await store.open()
    assert await store.kv_get("realtime", "feed-a") is None
    await store.kv_put("realtime", "feed-a", '{"offset": "0_0"}', now=1.0)
    await store.kv_put("realtime", "feed-a", '{"offset": "5_2"}', now=2.0)
    await store.kv_put("slack_thread", "feed-a", "1712.0001", now=2.0)
    await store.close()
    store = SQLiteStore(path)
    await store.open()
    assert await store.kv_get("realtime", "feed-a") == '{"offset": "5_2"}'
    assert await store.kv_get("slack_thread", "feed-a") == "1712.0001"
    await store.kv_delete("realtime", "feed-a")
    assert await store.kv_get("realtime", "feed-a") is None
    await store.close()


async def test_an_old_database_is_migrated_with_its_rows(tmp_path: Path) -> None:
    from relay.store._sqlite_schema import MIGRATIONS  # noqa: PLC0415

    path = tmp_path / "v1.db"
    with closing(sqlite3.connect(path)) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO outbox (id, run_id, rule, channel, template, run_json, created_at,"
            " not_before, updated_at) VALUES ('ntf_old', 'run_old', 'r', 'c', 'run', '{}', 1, 1, 1)"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.get("ntf_old")
        assert old is not None and old.state == "pending" and old.run_id == "run_old"
        await store.mark_muted("ntf_old", now=2.0, silence_id="sil_x")  # the new state is allowed
        assert await store.counts() == {"pending": 0, "sent": 0, "dead": 0, "muted": 1}
    finally:
        await store.close()
