"""Disk trouble: the store's disk full or read-only, or the store not answering at all.

Ingest answers 503 + Retry-After and never 202 without a commit, /readyz turns red, and relay
recovers by itself (no restart) once the disk is back. Real failures only:
* a database capped with PRAGMA max_page_count (a real SQLITE_FULL; runs everywhere);
* a real ENOSPC on a 2 MB tmpfs (skipped where mounting is not permitted);
* the database and its WAL made immutable with chattr +i, so writes fail with EPERM like on a
  read-only volume (skipped where chattr +i is not permitted). Never the -shm file: it is
  mmapped, and an immutable mapping kills the process with SIGBUS;
* another connection holding the write lock, so the store cannot even answer a ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import relay.logs as relay_logs
import relay.store.sqlite as relay_sqlite
from relay import channel_loop, outbox_reading
from relay.configure import compile_config, load
from relay.errors import StoreUnavailable
from relay.service import Service
from relay.settings import Settings
from relay.silences.cache import SilenceCache
from relay.store import _sqlite_connect
from relay.store.sqlite import SQLiteStore
from tests.conftest import CONSOLE_FAILURES, Relay, run_cli

CONFIG = CONSOLE_FAILURES


@contextlib.asynccontextmanager
async def running(tmp_path: Path, store: SQLiteStore) -> AsyncIterator[Relay]:
    """relay in-process on `store` (e.g. one with max_pages), shut down on exit."""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    settings = Settings(config=path, listen="127.0.0.1:0", store_url=f"sqlite:///{store.path}")
    service = Service(settings, compile_config(load(settings)))
    service.store = store  # before start: the service opens and uses this one
    service.silences = SilenceCache(store.silences)
    host, port = await service.start()
    http = aiohttp.ClientSession()
    try:
        yield Relay(service, f"http://{host}:{port}", http)
    finally:
        await http.close()
        await service.shutdown()


def failed_run(i: int, payload_bytes: int = 2000) -> dict[str, Any]:
    return {
        "id": f"run_disk_{i:04d}",
        "taskIdentifier": "disk/task",
        "status": "FAILED",
        "updatedAt": "2026-01-01T00:00:00Z",
        "payload": "x" * payload_bytes,
    }


async def post(r: Relay, run: dict[str, Any]) -> tuple[int, dict[str, Any], str | None]:
    async with r.http.post(r.url + "/v1/runs", json=run) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")


async def readiness(r: Relay) -> tuple[int, dict[str, Any]]:
    async with r.http.get(r.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def store_up(r: Relay) -> str:
    """The value of relay_store_up in a scrape of /metrics."""
    return await scraped(r, "relay_store_up")


async def scraped(r: Relay, gauge: str) -> str:
    """The value of an unlabelled gauge in a scrape of /metrics."""
    async with r.http.get(r.url + "/metrics") as resp:
        text = await resp.text()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(gauge + " ")]
    return value


def stored_runs(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return {row[0] for row in conn.execute("SELECT run_id FROM runs")}


async def fill_until_refused(r: Relay, limit: int = 300) -> tuple[list[str], list[str]]:
    """Post failed runs until the store refuses them; (accepted ids, refused ids)."""
    accepted: list[str] = []
    for i in range(limit):
        run = failed_run(i)
        status, body, retry_after = await post(r, run)
        if status == 202:
            assert body["accepted"] == 1, body
            accepted.append(run["id"])
            continue
        assert status == 503, (status, body)
        assert retry_after is not None and int(retry_after) > 0
        assert "store unavailable" in body["error"]
        refused = [run["id"]]
        for j in range(i + 1, i + 4):  # still full: every further update is refused too
            status, _, retry_after = await post(r, failed_run(j))
            assert status == 503 and retry_after is not None
            refused.append(f"run_disk_{j:04d}")
        return accepted, refused
    raise AssertionError(f"the store took {limit} runs and never filled up")


async def assert_recovers(r: Relay, db: Path, accepted: list[str], refused: list[str]) -> None:
    """The refused runs go in now, on the same running relay; readiness turns green."""
    for run_id in refused:
        status, body, _ = await post(r, failed_run(int(run_id[-4:])))
        assert (status, body["notifications"]) == (202, 1), body
    assert await readiness(r) == (200, {"status": "ready"})
    assert stored_runs(db) == set(accepted) | set(refused)


async def assert_refusing(r: Relay, db: Path, accepted: list[str], refused: list[str]) -> None:
    assert accepted, "the store accepted nothing before filling up"
    status, body = await readiness(r)
    assert (status, body) == (503, {"status": "not ready", "reason": "store not writable"})
    async with r.http.get(r.url + "/healthz") as resp:
        assert resp.status == 200  # alive: no restart needed
    assert stored_runs(db) == set(accepted)  # every 202 was committed, no 503 was


async def test_full_database_refuses_then_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "relay.db"
    prepared = SQLiteStore(db)
    await prepared.open()
    await prepared.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:  # something else filled the disk
        conn.execute("CREATE TABLE filler (x BLOB)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(b"\0" * 4000,)] * 100)
        conn.commit()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
    async with running(tmp_path, SQLiteStore(db, max_pages=pages + 6)) as r:
        accepted, refused = await fill_until_refused(r)
        await assert_refusing(r, db, accepted, refused)
        # one line for the refusals in a row (a client retrying hard would flood the log)
        assert refusals(caplog) == ["store operation failed: SQLITE_FULL"]
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:  # the operator frees it
            conn.execute("DELETE FROM filler")
            conn.commit()
        await assert_recovers(r, db, accepted, refused)


async def test_a_full_database_shows_in_the_scrape_as_not_ready(tmp_path: Path) -> None:
    """A full disk keeps the store readable: relay_store_up stayed 1 and the shipped
    RelayStoreDown, whose description named a full disk, never fired, while /readyz said `store
    not writable` and every update was refused. Prometheus saw nothing /readyz saw; now
    relay_ready says it (RelayNotReady)."""
    db = tmp_path / "relay.db"
    prepared = SQLiteStore(db)
    await prepared.open()
    await prepared.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
    async with running(tmp_path, SQLiteStore(db, max_pages=pages + 6)) as r:
        assert (await scraped(r, "relay_ready"), await store_up(r)) == ("1.0", "1.0")
        await fill_until_refused(r)
        assert (await readiness(r))[0] == 503
        assert (await scraped(r, "relay_ready"), await store_up(r)) == ("0.0", "1.0")


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Why each refused update was refused, as its log line says (the store's error kind)."""
    refused = "store unavailable; update refused"
    return [rec.__dict__["error"] for rec in caplog.records if rec.getMessage() == refused]


def _mount_tmpfs(where: Path, size: str) -> bool:
    if shutil.which("mount") is None:
        return False
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@contextlib.contextmanager
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (skipped where mounting is not permitted), unmounted on exit."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("mounting a tmpfs is not permitted here")
    # made now: on a tmpfs that relay's writes filled first, creating a file is refused too
    # (ENOSPC at open: recent kernels count an inode against the size)
    (disk / "filler").touch()
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def _fill(directory: Path) -> Path:
    """Write the filler (made by small_disk) until the filesystem has no space left."""
    filler = directory / "filler"
    # unbuffered: a buffered file kept the part of a write that did not fit and failed again
    # (ENOSPC) flushing it at close, depending on where the disk's end fell
    with filler.open("r+b", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_disk_full_enospc_refuses_then_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log says the disk is full in words: it said `store commit failed: SQLITE_FULL`,
    which a database at its size limit says too, and the operator looked for the wrong cause."""
    with small_disk(tmp_path) as disk:
        db = disk / "relay.db"
        async with running(tmp_path, SQLiteStore(db)) as r:
            assert (await post(r, failed_run(9999)))[0] == 202
            filler = await asyncio.to_thread(_fill, disk)
            accepted, refused = await fill_until_refused(r)
            await assert_refusing(r, db, [*accepted, "run_disk_9999"], refused)
            [why] = refusals(caplog)
            assert "no space left on the database's file system (SQLITE_" in why, why
            filler.unlink()  # space is back
            await assert_recovers(r, db, [*accepted, "run_disk_9999"], refused)


READING = (("dlq", "list"), ("history",), ("silence", "list"))  # the store commands that only read


async def read_commands(db: Path) -> list[subprocess.CompletedProcess[str]]:
    """`relay dlq list`, `relay history` and `relay silence list` on `db`, side by side."""
    env = {"RELAY_STORE_URL": f"sqlite:///{db}"}
    return await asyncio.gather(*(asyncio.to_thread(run_cli, *a, env=env) for a in READING))


async def test_read_commands_answer_on_a_full_disk(tmp_path: Path) -> None:
    """`relay dlq list`, `history` and `silence list` opened the store's writer and wrote to
    test it: on a full disk each said `store open failed: no space left ...`, in the very
    incident an operator runs them for. Now they open the file for reading only."""
    with small_disk(tmp_path) as disk:
        db = disk / "relay.db"
        async with running(tmp_path, SQLiteStore(db)) as r:
            assert (await post(r, failed_run(1)))[0] == 202
            await asyncio.to_thread(_fill, disk)
            dlq, history, silences = await read_commands(db)
    assert [dlq.returncode, history.returncode, silences.returncode] == [0, 0, 0], (
        dlq.stderr + history.stderr + silences.stderr
    )
    assert "run_disk_0001" in history.stdout
    assert (dlq.stdout, silences.stdout) == ("no dead notifications\n", "no silences\n")


async def test_read_commands_answer_while_another_process_writes(tmp_path: Path) -> None:
    """The same, anywhere: a write lock held elsewhere (a `sqlite3` shell in a transaction)
    made each read command wait out the busy timeout, then fail `database is locked`."""
    db = tmp_path / "relay.db"
    async with running(tmp_path, SQLiteStore(db)) as r:
        assert (await post(r, failed_run(1)))[0] == 202
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        dlq, history, silences = await read_commands(db)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert [dlq.returncode, history.returncode, silences.returncode] == [0, 0, 0], (
        dlq.stderr + history.stderr + silences.stderr
    )
    assert "run_disk_0001" in history.stdout


PAUSED = "store unavailable; delivery paused"
RESUMED = "store available again; delivery resumed"


def said(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.getMessage() == message]


async def until_said(caplog: pytest.LogCaptureFixture, message: str) -> None:
    for _ in range(600):  # a delivery loop claims every POLL_S (1 s)
        if said(caplog, message):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never said: {message}")


async def test_a_store_that_comes_and_goes_pauses_delivery_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk lets some commits through (a -wal that started over has room): `delivery
    paused` and `delivery resumed` came every 1-2 s per channel. Now the first of each is said
    at once and the next ones at most every LINE_EVERY_S (here an hour), with a count."""
    monkeypatch.setattr(relay_logs, "LINE_EVERY_S", 3600.0, raising=False)
    monkeypatch.setattr(channel_loop, "POLL_S", 0.2)  # claims 5 times a second: 2 s, not 10
    caplog.set_level(logging.INFO, logger="relay.delivery")
    store = SQLiteStore(tmp_path / "relay.db")
    async with running(tmp_path, store):
        await store.close()  # the outage: the channel loop's next claim fails
        await until_said(caplog, PAUSED)
        await store.open()
        await until_said(caplog, RESUMED)
        for _ in range(2):  # twice more, each side long enough for a claim (every POLL_S)
            await store.close()
            await asyncio.sleep(2.5 * channel_loop.POLL_S)
            await store.open()
            await asyncio.sleep(2.5 * channel_loop.POLL_S)
    paused, resumed = said(caplog, PAUSED), said(caplog, RESUMED)
    assert (len(paused), len(resumed)) == (1, 1), [r.getMessage() for r in paused + resumed]
    assert paused[0].__dict__["failures"] == 1
    assert paused[0].__dict__["error"] == "store is closed"


async def test_silences_not_reloaded_are_said_once_and_then_that_they_are_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reload (each RELOAD_S, 0.25 s) the store failed logged `silences not reloaded`."""
    monkeypatch.setattr(relay_logs, "LINE_EVERY_S", 3600.0, raising=False)
    caplog.set_level(logging.INFO, logger="relay.silences")
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    cache = SilenceCache(store.silences, ttl_s=1.0)
    assert await cache.current(0.0) == []
    await store.close()
    for now in (2.0, 4.0, 6.0):
        assert await cache.current(now) == []  # the last read kept
    await store.open()
    try:
        assert await cache.current(8.0) == []
    finally:
        await store.close()
    lines = [(r.getMessage(), r.__dict__.get("failures")) for r in caplog.records]
    assert lines == [
        ("silences not reloaded; the last read kept", 1),
        ("silences reloaded again", 2),
    ]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_serve_that_cannot_create_its_store_leaves_nothing_behind(tmp_path: Path) -> None:
    """`relay serve` on a full disk said `store open failed: no space left ...` and left an
    empty relay.db, its lock file and the directory made for them: the next start found an
    "existing" empty database. What it made is removed now; what was there stays."""
    with small_disk(tmp_path) as disk:
        (disk / "kept").mkdir()
        (disk / "kept" / "relay.db-writer.lock").touch()  # there before: stays
        await asyncio.to_thread(_fill, disk)
        before = tree(disk)
        config = tmp_path / "config.yaml"
        config.write_text(CONFIG)
        for db in (disk / "data" / "relay.db", disk / "kept" / "relay.db"):
            env = {"RELAY_STORE_URL": f"sqlite:///{db}", "RELAY_LISTEN": "127.0.0.1:0"}
            done = await asyncio.to_thread(run_cli, "--config", str(config), "serve", env=env)
            assert done.returncode == 1 and "no space left" in done.stderr, done.stderr
            assert tree(disk) == before


async def test_a_store_that_cannot_be_created_leaves_no_file_behind(tmp_path: Path) -> None:
    """The same anywhere: a new database that does not fit its max_page_count (SQLITE_FULL)."""
    db = tmp_path / "new" / "relay.db"
    with pytest.raises(StoreUnavailable, match="SQLITE_FULL"):
        await SQLiteStore(db, max_pages=2).open()
    assert tree(tmp_path) == []
    db.parent.mkdir()
    db.touch()  # an empty file there before: not relay's to remove
    with pytest.raises(StoreUnavailable, match="SQLITE_FULL"):
        await SQLiteStore(db, max_pages=2).open()
    assert db.exists()


async def test_read_only_files_refuse_then_recover_by_itself(disk_path: Path) -> None:
    """On a disk: tmpfs lets the files' open descriptors write on after chattr +i."""
    db = disk_path / "relay.db"
    async with running(disk_path, SQLiteStore(db)) as r:
        status, _, _ = await post(r, failed_run(0))
        assert status == 202
        files = [str(db), f"{db}-wal"]  # never the mmapped -shm (SIGBUS)
        if shutil.which("chattr") is None:
            pytest.skip("no chattr")
        done = subprocess.run(["chattr", "+i", *files], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip("chattr +i is not permitted here")
        try:
            for i in (1, 2):
                status, body, retry_after = await post(r, failed_run(i))
                assert status == 503 and retry_after is not None, body
            await assert_refusing(r, db, ["run_disk_0000"], [])
        finally:
            subprocess.run(["chattr", "-i", *files], capture_output=True, check=True)
        await assert_recovers(r, db, ["run_disk_0000"], ["run_disk_0001", "run_disk_0002"])


async def test_store_that_cannot_answer_is_not_ready_until_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (_sqlite_connect, relay_sqlite):  # 1 s, not 5 s, a wait (15 s of the suite)
        monkeypatch.setattr(module, "BUSY_TIMEOUT_MS", 1000)
    db = tmp_path / "relay.db"
    async with running(tmp_path, SQLiteStore(db)) as r:
        assert await readiness(r) == (200, {"status": "ready"})
        assert await store_up(r) == "1.0"
        locker = sqlite3.connect(db, isolation_level=None)  # e.g. a second relay on the file
        try:
            locker.execute("BEGIN EXCLUSIVE")
            ready = await asyncio.wait_for(readiness(r), 30)  # after the busy timeout
            assert ready == (503, {"status": "not ready", "reason": "store unreachable"})
            assert await asyncio.wait_for(store_up(r), 30) == "0.0"  # the outbox is unknown
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        status, _, _ = await post(r, failed_run(1))
        assert status == 202
        assert await readiness(r) == (200, {"status": "ready"})
        assert await store_up(r) == "1.0"


async def test_a_scrape_answers_while_the_store_is_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process held the SQLite write lock (a second relay, `sqlite3` in a transaction):
    each scrape of /metrics waited in the store's queue behind a write waiting out the busy
    timeout, then for its own: 10 s, Prometheus' default scrape_timeout, so the scrape failed,
    RelayDown fired and relay_store_up 0 reached no one. Now the scrape answers at once with
    relay_store_up 0, the store still locked (here for a minute's busy timeout)."""
    for module in (_sqlite_connect, relay_sqlite):
        monkeypatch.setattr(module, "BUSY_TIMEOUT_MS", 60_000)
    monkeypatch.setattr(outbox_reading, "WAIT_S", 0.5, raising=False)  # 5 s: quicker
    # never reused: on a loaded machine the reading before the lock took over 10 ms and was
    # reused for the scrapes under it (store_up 1), whatever the lock did
    monkeypatch.setattr(outbox_reading, "MAX_REUSE_S", 0.0)
    db = tmp_path / "relay.db"
    async with running(tmp_path, SQLiteStore(db)) as r:
        assert await store_up(r) == "1.0"
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            for _ in range(2):  # the next scrape too, not only the first
                assert await asyncio.wait_for(store_up(r), 30) == "0.0"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        for _ in range(600):  # the readings under way finish once the lock is gone
            if await store_up(r) == "1.0":
                break
            await asyncio.sleep(0.05)
        assert await store_up(r) == "1.0"


async def test_a_clock_stepped_back_after_a_failed_write_leaves_relay_ready(tmp_path: Path) -> None:
    """A write failed, then NTP stepped the wall clock back an hour: the failure, stamped an
    hour ahead of the clock, kept /readyz at 'store not writable' for that hour (or until an
    update got through, which a load balancer heeding /readyz sends none of)."""
    async with running(tmp_path, SQLiteStore(tmp_path / "relay.db")) as r:
        assert r.service.intake is not None
        r.service.intake.store_failed_at = time.time() + 3600
        assert await readiness(r) == (200, {"status": "ready"})


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_database_file_deleted_or_replaced_refuses_updates(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rm data/relay.db` (or a backup moved over it) while relay runs: the open connection
    went on committing to the unlinked file, and every update answered 202 since was gone at
    the next start. Now intake refuses them (503) and readiness turns red, on /metrics too:
    the scrape read the unlinked file's outbox and said relay_store_up 1, and relay_ready 1
    once the refused update was 10 s old, while /readyz said 503 (no alert ever fired)."""
    monkeypatch.setattr(outbox_reading, "MAX_REUSE_S", 0.0)
    db = tmp_path / "relay.db"
    async with running(tmp_path, SQLiteStore(db)) as r:
        assert (await post(r, failed_run(0)))[0] == 202
        if how == "deleted":
            db.unlink()
        else:
            shutil.copyfile(db, tmp_path / "backup.db")
            (tmp_path / "backup.db").replace(db)
        status, body, retry_after = await post(r, failed_run(1))
        assert (status, body["error"]) == (503, "store unavailable; retry later")
        assert retry_after is not None
        # the cause, not "store unreachable": a backup moved over the file is there and fine
        replaced = {
            "status": "not ready",
            "reason": "store file deleted or replaced; restart relay",
        }
        assert await readiness(r) == (503, replaced)
        assert r.service.intake is not None
        r.service.intake.store_failed_at = None  # as 10 s after the refused update
        assert (await store_up(r), await scraped(r, "relay_ready")) == ("0.0", "0.0")
        assert await readiness(r) == (503, replaced)
    refused = [
        rec for rec in caplog.records if rec.getMessage() == "store unavailable; update refused"
    ]
    assert [rec.__dict__["error"] for rec in refused] == [
        "store file deleted or replaced while relay runs; restart relay to open it again"
    ]
