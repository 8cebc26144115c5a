"""What only the SQLite engine does: group commit, its failures, the file, WAL, URLs, migrations.

The Store contract itself (observe, the outbox, digests, ...) runs on every engine in
test_store.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ConfigError, StoreUnavailable
from relay.model import notification_id
from relay.store import HistoryQuery, _sqlite_connect
from relay.store import _sqlite_outbox as outbox
from relay.store._engines import REPLAY_BATCH
from relay.store._sqlite_history import history_sql
from relay.store._sqlite_lock import WriteLock
from relay.store._sqlite_schema import SCHEMA_VERSION
from relay.store._sqlite_url import sqlite_path
from relay.store.sqlite import SQLiteStore
from tests.conftest import run_python
from tests.hardening.test_disk import _mount_tmpfs
from tests.store.conftest import (
    decide,
    enqueue,
    explode_on_boom,
    ids,
    make_run,
    observe_beside_a_failing_call,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """This module's tests are SQLite's own: the store is always a SQLiteStore on a file."""
    store = SQLiteStore(tmp_path / "data" / "relay.db")
    await store.open()
    yield store
    await store.close()


# --- group commit --------------------------------------------------------------------------------


async def test_concurrent_observes_share_commits(store: SQLiteStore) -> None:
    before = store.commits
    results = await asyncio.gather(
        *(store.observe([make_run(f"run_{i}")], decide, now=1.0) for i in range(200))
    )
    assert sum(len(ids(observed)) for observed in results) == 200
    assert store.commits - before < 200
    assert await store.counts() == {"pending": 200, "sent": 0, "dead": 0, "muted": 0}


@pytest.mark.parametrize("named", [False, True], ids=["all", "by id"])
async def test_a_large_replay_commits_a_batch_at_a_time(store: SQLiteStore, named: bool) -> None:
    """`relay dlq replay --all` over 200,000 dead held the write lock 16 s in one transaction:
    the `relay serve` beside it waited as long to commit a POST /v1/runs, then answered 503
    (SQLITE_BUSY). Each batch of REPLAY_BATCH rows commits on its own, every row moved once,
    those that died earlier as well as the last batch's (the batches go in the order they died)."""
    count = 2 * REPLAY_BATCH + 1
    dead = ids(await store.observe([make_run(f"run_{i}") for i in range(count)], decide, now=1.0))
    for died, rows in ((2.0, dead[: REPLAY_BATCH + 1]), (2.5, dead[REPLAY_BATCH + 1 :])):
        await store.mark_dead([(i, 1) for i in rows], now=died, reason="client_error", error="400")
    before = store.commits
    assert await store.replay(dead if named else None, now=3.0) == count
    assert store.commits - before == 3
    assert await store.counts() == {"pending": count, "sent": 0, "dead": 0, "muted": 0}
    assert [e["kind"] for e in await store.events(dead[-1])] == ["created", "dead", "replayed"]


async def test_a_replay_of_all_takes_the_dead_of_any_time(store: SQLiteStore) -> None:
    """Rows dead by their own times, not the replay's clock (a row that died after a step of
    the clock back, or in another process a moment after the replay read its clock)."""
    dead = ids(await store.observe([make_run(f"run_{i}") for i in range(3)], decide, now=1.0))
    await store.mark_dead([(i, 1) for i in dead], now=50.0, reason="client_error", error="400")
    assert await store.replay(None, now=3.0) == 3
    assert await store.replay(None, now=4.0) == 0


async def test_a_replay_of_all_leaves_what_died_again_while_it_went(store: SQLiteStore) -> None:
    """`--all` means the dead when the replay began: a row its first batch moved, which the
    channel killed again before the next batch, stays dead. Taken again, a channel that kills
    rows as fast as the replay moves them kept `relay dlq replay --all` going for ever."""
    dead = ids(
        await store.observe([make_run(f"run_{i}") for i in range(REPLAY_BATCH + 1)], decide, 1.0)
    )
    await store.mark_dead([(i, 1) for i in dead], now=2.0, reason="client_error", error="400")
    first = outbox.FIRST_DEAD
    assert first is not None
    with closing(sqlite3.connect(store.path)) as conn:
        moved, more = outbox.replay_dead(conn, first, now=3.0)
        conn.commit()
        assert moved == REPLAY_BATCH and more is not None
        again = dead[0]  # replayed by the first batch, dead again before the second
        await store.mark_dead([(again, 2)], now=4.0, reason="client_error", error="400")
        moved, more = outbox.replay_dead(conn, more, now=3.0)
        conn.commit()
    assert (moved, more) == (1, None)
    assert await store.counts() == {"pending": REPLAY_BATCH, "sent": 0, "dead": 1, "muted": 0}


@pytest.mark.parametrize(
    ("sql", "params"),
    [(outbox._REPLAY_NAMED, {"now": 1.0, "ids": "[]"}), (outbox.REPLAY_RECOVERIES, (1, 1, "[]"))],
    ids=["replay", "recoveries"],
)
async def test_a_replay_finds_its_rows_by_id(store: SQLiteStore, sql: str, params: Any) -> None:
    """Through the outbox_state index, each batch of a replay (and each requeue of recoveries)
    read every dead (and sent) row: a replay of 200,000 took minutes, a batch at a time."""
    with closing(sqlite3.connect(store.path)) as conn:
        plan = [step[3] for step in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan[0] == "SEARCH outbox USING INDEX sqlite_autoindex_outbox_1 (id=?)"


async def test_a_caller_gone_before_its_batch_fails_none_of_the_others(
    store: SQLiteStore,
) -> None:
    """A POST whose client left while its update waited for the next batch is dropped from
    that batch (or not: its client had no 202); the updates queued beside it still commit
    and have their 202, none is a 503."""
    calls = [
        asyncio.create_task(store.observe([make_run(f"run_{i}")], decide, now=1.0))
        for i in range(3)
    ]
    await asyncio.sleep(0)  # each queued, the batch not run yet
    calls[1].cancel()
    first, gone, third = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(gone, asyncio.CancelledError)
    assert isinstance(first, list) and isinstance(third, list)
    assert (ids(first), ids(third)) == tuple(
        [notification_id(f"run_{i}", "r1", "c1")] for i in (0, 2)
    )
    assert all([await store.get(ids(stored)[0]) for stored in (first, third)])


async def test_a_failing_call_leaves_the_shared_commit_to_the_others(store: SQLiteStore) -> None:
    before = store.commits
    await observe_beside_a_failing_call(store)
    assert store.commits - before == 1  # one batch, committed without the failed call


async def test_two_failing_calls_in_one_batch_leave_the_commit_to_the_others(
    store: SQLiteStore,
) -> None:
    """Ops run without savepoints until one fails; the retry runs each in its savepoint, so
    a second failure (after writes of its own) fails only itself in that same retry."""
    before = store.commits
    results = await asyncio.gather(
        store.observe([make_run("ok_1")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_a"), make_run("boom_a")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_2")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_b"), make_run("boom_b")], explode_on_boom, now=1.0),
        store.observe([make_run("ok_3")], explode_on_boom, now=1.0),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)
    assert [ids(r) for r in results if isinstance(r, list)] == [
        [notification_id(f"ok_{i}", "r1", "c1")] for i in (1, 2, 3)
    ]
    assert store.commits - before == 1
    assert await store.counts() == {"pending": 3, "sent": 0, "dead": 0, "muted": 0}


async def test_release_leases_forgets_every_lease(store: SQLiteStore) -> None:
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


async def test_release_leases_of_one_holder_only(store: SQLiteStore) -> None:
    """Two delivery workers share a channel; one dies: its claims, and only its, go back."""
    other = SQLiteStore(store.path, holder="worker 1")
    await other.open()
    try:
        await enqueue(store, "run_1", 10.0)
        await enqueue(store, "run_2", 10.0)
        [mine] = await other.claim("c1", now=15.0, limit=1, lease_s=30)
        [theirs] = await store.claim("c1", now=15.0, limit=1, lease_s=30)
        assert {mine.run_id, theirs.run_id} == {"run_1", "run_2"}
        assert await store.release_leases("worker 1") == 1
        assert [n.id for n in await store.claim("c1", 16.0, 10, 30)] == [mine.id]
        assert await store.release_leases("worker 2") == 0
    finally:
        await other.close()


async def test_a_restart_leaves_the_claims_of_a_worker_still_alive(store: SQLiteStore) -> None:
    """The parent of `serve --workers` was killed with -9: its orphaned worker is finishing
    its sends. The restarted relay must not hand those rows out again (each would be sent
    twice); the worker's successor frees what it left once it has exited."""
    orphan = SQLiteStore(store.path, holder="worker 0")
    await orphan.open()
    await enqueue(store, "run_1", 10.0)
    [claimed] = await orphan.claim("c1", now=15.0, limit=1, lease_s=300)
    assert await store.release_leases() == 0
    assert await store.claim("c1", now=16.0, limit=10, lease_s=30) == []
    successor = SQLiteStore(store.path, holder="worker 0")
    opening = asyncio.create_task(successor.open())
    await asyncio.sleep(0.05)
    assert not opening.done()  # it waits for the orphan to exit
    await orphan.close()
    await opening
    try:
        assert await successor.release_leases("worker 0") == 1
        assert [n.id for n in await successor.claim("c1", 17.0, 10, 30)] == [claimed.id]
    finally:
        await successor.close()


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


async def test_open_refuses_a_newer_schema_and_a_foreign_file(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    await SQLiteStore(newer).open()  # relay's own file, which a later relay migrated
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="schema version 99 is newer"):
        await SQLiteStore(newer).open()

    foreign = tmp_path / "foreign.db"  # said only `store open failed: SQLITE_NOTADB`
    foreign.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable) as caught:
        await SQLiteStore(foreign).open()
    assert str(caught.value) == (
        "store open failed: the file is not a SQLite database (SQLITE_NOTADB);"
        " RELAY_STORE_URL must name relay's own database file"
    )

    other = tmp_path / "other.db"  # another application's database: relay adds no tables
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(StoreUnavailable, match="holds tables relay did not create"):
        await SQLiteStore(other).open()
    with closing(sqlite3.connect(other)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("users",)]

    with pytest.raises(StoreUnavailable, match="RELAY_STORE_URL names a directory, not a file"):
        await SQLiteStore(tmp_path).open()  # sqlite:////data: not SQLITE_CANTOPEN


@pytest.mark.parametrize("version", [5, SCHEMA_VERSION, SCHEMA_VERSION + 1])
async def test_another_applications_database_with_a_user_version_is_refused_untouched(
    tmp_path: Path, version: int
) -> None:
    """Applications set PRAGMA user_version too: another one's database at 5 said `store open
    failed: SQLITE_ERROR` (a migration meeting its tables), at relay's own version it opened
    (its updates then failed: no such table), and past it was called a newer relay's."""
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE outbox (id TEXT PRIMARY KEY, body TEXT)")
        conn.execute(f"PRAGMA user_version = {version:d}")
    for read_only in (False, True):  # relay serve, and relay dlq list
        with pytest.raises(StoreUnavailable) as caught:
            await SQLiteStore(other, read_only=read_only).open()
        said = str(caught.value)
        assert said.startswith(f"store open failed: the database (user_version {version}) lacks")
        assert "lacks relay's table runs, table kv, table silences and " in said, said
        assert said.endswith(
            "it is not relay's; RELAY_STORE_URL must name relay's own database file"
        )
    with closing(sqlite3.connect(other)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == [("outbox",)]
        assert conn.execute("PRAGMA user_version").fetchone() == (version,)


async def test_a_damaged_file_is_named_so_with_what_to_do(tmp_path: Path) -> None:
    """A database cut short (a copy of a running relay's volume, a disk error): `relay serve`
    exited with only `store operation failed: SQLITE_CORRUPT`."""
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.open()
    for n in range(200):
        await enqueue(store, f"run_{n}", 1.0)
    await store.close()
    os.truncate(path, path.stat().st_size // 2 + 1000)  # mid-page
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
        try:  # as `relay serve` starts: the leases of a run before it go back
            await store.release_leases()
        finally:
            await store.close()
    assert str(caught.value).endswith(
        ": the database file is damaged (SQLITE_CORRUPT): stop relay, move the database and its"
        " -wal and -shm files aside (kept for a recovery) and restore the last backup"
    ), str(caught.value)


async def test_a_read_only_volume_is_named_not_sqlite_cantopen(tmp_path: Path) -> None:
    """A data volume mounted read-only (or owned by another user) said only `store open
    failed: SQLITE_CANTOPEN`, in `relay serve`'s log and from every store command."""
    async with _volume_with_a_store(tmp_path) as volume:
        subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True)
        for path in (volume / "relay.db", volume / "new.db"):
            with pytest.raises(StoreUnavailable) as caught:
                await SQLiteStore(path).open()
            assert str(caught.value) == (
                "store open failed: the database directory is on a read-only file system"
            )


@asynccontextmanager
async def _volume_with_a_store(tmp_path: Path) -> AsyncIterator[Path]:
    """A 1 MiB tmpfs holding relay.db (made by relay), unmounted afterwards; else a skip."""
    volume = tmp_path / "volume"
    if not _mount_tmpfs(volume, "1m"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        existing = SQLiteStore(volume / "relay.db")
        await existing.open()
        await existing.close()
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], capture_output=True, check=False)


async def test_a_full_disk_is_named_at_open(tmp_path: Path) -> None:
    """relay started on a full disk said only `store open failed: SQLITE_IOERR_SHMSIZE`."""
    async with _volume_with_a_store(tmp_path) as volume:
        filler = volume / "filler"
        full = pytest.raises(OSError, match="No space left")
        with filler.open("wb", buffering=0) as out, full:  # write until the disk is full
            while True:
                out.write(b"\0" * 65536)
        with pytest.raises(StoreUnavailable) as caught:
            await SQLiteStore(volume / "relay.db").open()
        assert str(caught.value) == (
            "store open failed: no space left on the database's file system"
        )
        filler.unlink()
        reopened = SQLiteStore(volume / "relay.db")  # space is back: it opens
        await reopened.open()
        await reopened.close()


async def test_a_database_file_relay_cannot_write_is_named_at_open(tmp_path: Path) -> None:
    """A database file relay's user may not write (another user's; here chattr +i, which
    stops root too) opened read-only without a word: `relay serve` failed at its first write
    with only `store operation failed: SQLITE_READONLY`."""
    db = tmp_path / "relay.db"
    existing = SQLiteStore(db)
    await existing.open()
    await existing.close()
    done = subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await SQLiteStore(db).open()
        assert str(caught.value) == (
            "store open failed: cannot write the database file"
            " (permission denied: relay's user must be able to write it)"
        )
    finally:
        subprocess.run(["chattr", "-i", str(db)], capture_output=True, check=True)
    reopened = SQLiteStore(db)  # writable again: it opens as before
    await reopened.open()
    await reopened.close()


LIMIT = 4 * 1024 * 1024


async def test_the_wal_shrinks_back_after_a_reader_let_it_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader holding a snapshot (an operator's sqlite3 shell, a long backup) stops the
    checkpoints, and the -wal grows with every write: 16 MB on a 16 MB volume after 15 s at
    300 updates/s. Released, the -wal was reused but never truncated, so the volume stayed
    full for good (the next burst jammed the store again). It is cut back to the limit (64 MiB;
    4 MiB here, so that the test writes little)."""
    monkeypatch.setattr(_sqlite_connect, "WAL_LIMIT_BYTES", LIMIT)
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    await store.open()
    wal = Path(f"{db}-wal")
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM runs").fetchone()  # the snapshot, held
            for batch in range(40):
                runs = [make_run(f"run_{batch}_{i}", payload="x" * 4000) for i in range(50)]
                await store.observe(runs, decide, 1.0)
            grown = wal.stat().st_size
            reader.execute("COMMIT")
        assert grown > 2 * LIMIT, grown
        for i in range(3):  # a checkpoint after the next commits; then the -wal starts over
            await store.observe([make_run(f"run_after_{i}")], decide, 2.0)
        assert wal.stat().st_size <= LIMIT
    finally:
        await store.close()


NO_FD_LEFT = """
import asyncio, os, resource, sys
from relay.errors import StoreUnavailable
from relay.model import Decision, Run, RunState
from relay.store.sqlite import SQLiteStore

def decide(run, previous):
    return Decision(state=RunState(run.updated_at_ms, run.status, frozenset(), 0.0, 0.0))

def runs(ids, at):
    return [Run.model_validate({"id": f"run_{i:04d}", "status": "EXECUTING", "updatedAt": at})
            for i in ids]

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    await store.observe(runs(range(3000), "2026-01-01T00:00:00Z"), decide, 1.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    held = []
    while True:  # every descriptor in use, as with many clients at `ulimit -n`
        try:
            held.append(open(os.devnull))
        except OSError:
            break
    try:  # one op rewriting many existing pages: its statement journal outgrows 64 KiB
        await store.observe(runs(range(0, 3000, 10), "2026-01-01T00:01:00Z"), decide, 2.0)
    except StoreUnavailable as exc:
        print(exc)
    else:
        print("committed")

asyncio.run(main())
"""


def test_a_large_update_needs_no_temp_file(tmp_path: Path) -> None:
    """SQLite spilled a large op's statement journal to a file in /var/tmp: with every file
    descriptor in use (many clients, a low `ulimit -n`), or no writable temp directory (a
    read-only root file system), the update was refused with SQLITE_CANTOPEN."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    code = NO_FD_LEFT.replace("sys.argv[1]", repr(str(tmp_path / "relay.db")))
    done = run_python(code, dict(os.environ))
    assert (done.returncode, done.stdout.strip()) == (0, "committed"), done.stderr


async def test_the_file_is_in_wal_mode_with_a_versioned_schema(store: SQLiteStore) -> None:
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_the_history_reads_the_newest_rows_from_an_index(store: SQLiteStore) -> None:
    """A page of the history follows outbox_created, newest first: no sort of the whole outbox.
    The index is added at open without a new schema version, so the relay before it still opens
    the store; a store made before it gets it at the next open."""
    for i in range(3):
        await enqueue(store, f"run_{i}", 10.0 + i)
    page = await store.history(HistoryQuery(limit=2))
    assert [n.run_id for n in page] == ["run_2", "run_1"]
    for query in (HistoryQuery(), HistoryQuery(channel="c1"), HistoryQuery(rule="r1")):
        sql, params = history_sql(query)
        with closing(sqlite3.connect(store.path)) as conn:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        assert plan == ["SCAN outbox USING INDEX outbox_created"], plan
    sql, params = history_sql(HistoryQuery(channel="c1", after=(11.0, "ntf_x")))
    with closing(sqlite3.connect(store.path)) as conn:  # a later page starts at its cursor
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan == ["SEARCH outbox USING INDEX outbox_created (created_at<?)"], plan
    await store.close()
    with closing(sqlite3.connect(store.path)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        conn.execute("DROP INDEX outbox_created")
    await store.open()
    with closing(sqlite3.connect(store.path)) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "outbox_created" in names


# --- the reader connection -------------------------------------------------------------------


async def test_long_reads_are_answered_while_the_writer_is_busy(store: SQLiteStore) -> None:
    """A 10,000-row history page ran on the writer thread and held every commit behind it
    (~300 ms at 160,000 rows); history, events and dead letters read on a connection of
    their own now. Here the writer's thread waits until they answered."""
    [ident] = await enqueue(store, "run_1", 1.0)
    await store.mark_dead([(ident, 1)], now=2.0, reason="http_4xx", error="400")
    started, answered = threading.Event(), threading.Event()

    def busy(_: sqlite3.Connection) -> bool:
        started.set()
        return answered.wait(30)

    write = asyncio.ensure_future(store._writer.run(busy))
    await asyncio.to_thread(started.wait, 10)
    try:
        assert [n.id for n in await store.history(HistoryQuery())] == [ident]
        assert [e["kind"] for e in await store.events(ident)] == ["created", "dead"]
        assert [n.id for n in await store.dead_letters()] == [ident]
    finally:
        answered.set()
    assert await write is True


async def test_long_reads_see_every_write_committed_before_them(store: SQLiteStore) -> None:
    """Read-your-writes: a call's writes committed when it returned, and a read started after
    that sees them (a replay, then the dead-letter list), with other writes in the batches."""
    others = [asyncio.ensure_future(enqueue(store, f"other_{i}", 1.0)) for i in range(50)]
    for i in range(20):
        [ident] = await enqueue(store, f"run_{i}", 1.0)
        assert [n.id for n in await store.history(HistoryQuery(run_id=f"run_{i}"))] == [ident]
        await store.mark_dead([(ident, 1)], now=2.0, reason="http_4xx", error="400")
        assert ident in [n.id for n in await store.dead_letters()]
        assert [e["kind"] for e in await store.events(ident)] == ["created", "dead"]
        assert await store.replay([ident], now=3.0) == 1
        assert ident not in [n.id for n in await store.dead_letters()]
    await asyncio.gather(*others)


async def test_long_reads_answer_while_another_process_holds_the_write_lock(
    store: SQLiteStore,
) -> None:
    """WAL: a reader does not wait for a writer. On the writer thread a history page waited
    out the busy timeout (5 s) behind `relay dlq replay` or a second relay, then failed."""
    [ident] = await enqueue(store, "run_1", 1.0)
    with closing(sqlite3.connect(store.path, isolation_level=None)) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        try:
            assert [n.id for n in await store.history(HistoryQuery())] == [ident]
        finally:
            locker.execute("ROLLBACK")


async def test_a_corrupt_page_fails_a_long_read_with_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    store = SQLiteStore(path)
    await store.open()
    for i in range(200):
        await enqueue(store, f"run_{i}", 1.0)
    await store.close()  # the last connection: its rows are in the file, the -wal is gone
    await store.open()
    try:
        with path.open("r+b") as file:  # every page but the first (the schema) overwritten
            file.seek(4096)
            file.write(b"\xff" * (path.stat().st_size - 4096))
        with pytest.raises(
            StoreUnavailable,
            match=r"^store operation failed: the database file is damaged \(SQLITE_CORRUPT\)",
        ):
            await store.history(HistoryQuery())
    finally:
        await store.close()


async def test_a_deleted_file_is_read_as_the_writer_reads_it(store: SQLiteStore) -> None:
    """The reader reads the file the writer opened, as the writer does: a history page of a
    file deleted meanwhile answers from it (ingest refuses, tests/hardening/test_disk.py), and
    no read creates a new, empty file at the path."""
    [ident] = await enqueue(store, "run_1", 1.0)
    store.path.unlink()
    assert [n.id for n in await store.history(HistoryQuery())] == [ident]
    assert [n.id for n in await store.dead_letters()] == []
    assert not store.path.exists()


async def test_close_finishes_the_reads_asked_then_ends_the_thread(tmp_path: Path) -> None:
    others = set(threading.enumerate())  # a store that failed to open, its thread still ending
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    await enqueue(store, "run_1", 1.0)
    reading = asyncio.ensure_future(store.history(HistoryQuery()))
    await asyncio.sleep(0)  # the read is asked, then the store closes
    await store.close()
    assert len(await reading) == 1
    ours = set(threading.enumerate()) - others
    assert not [t for t in ours if t.name.startswith("relay-store")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relay.db", "relay.db-writer.lock"]
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.history(HistoryQuery())
    with pytest.raises(StoreUnavailable, match="store is closed"):
        await store.dead_letters()


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
        await store.mark_muted(
            "ntf_old", now=2.0, silence_id="sil_x", attempts=0
        )  # the new state is allowed
        assert await store.counts() == {"pending": 0, "sent": 0, "dead": 0, "muted": 1}
    finally:
        await store.close()


async def test_migrate_gets_in_between_a_busy_writers_transactions(tmp_path: Path) -> None:
    """`relay migrate` beside a busy `relay serve` failed with SQLITE_BUSY: it took no write
    lock, and SQLite's busy handler (sleeps of up to 100 ms) never found the file free while a
    writer holding the lock left it free only for moments between its transactions."""
    path = tmp_path / "relay.db"
    await SQLiteStore(path).migrate()
    stop, writing = threading.Event(), threading.Event()

    def busy_writer() -> None:  # as the store's writer threads do: each transaction under the lock
        lock = WriteLock(path, 10.0)
        lock.open()
        with closing(sqlite3.connect(path, timeout=10.0, isolation_level=None)) as conn:
            while not stop.is_set():
                with lock.held():
                    conn.execute("BEGIN IMMEDIATE")
                    writing.set()
                    time.sleep(2.0)  # a long transaction
                    conn.execute("COMMIT")
                time.sleep(0.001)  # the moment between two
        lock.close()

    writer = threading.Thread(target=busy_writer)
    writer.start()
    try:
        await asyncio.to_thread(writing.wait)
        assert await SQLiteStore(path).migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    finally:
        stop.set()
        writer.join()
