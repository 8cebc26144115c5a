"""Upgrades of a store: the work an older relay left in it is all there for this one.

The old stores are built from the migration list (MIGRATIONS[:k]) with rows as that version
wrote them, not from old commits: v6 is the schema of the first release that ran (digests,
silences, Realtime positions), v2 the last one before v3 rebuilt the outbox; PostgreSQL v1 is
the first release's too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from relay.model import Silence, notification_id
from relay.store._pg_schema import MIGRATIONS as PG_MIGRATIONS
from relay.store._pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from relay.store._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.conftest import child_env, run_cli, run_cli_in_process
from tests.pg import dml_role, fresh_database, shared_server
from tests.store.conftest import decide, ids, make_run

NOW = 1_800_000_000.0
POSITION = '{"handle":"83412937-1","offset":"29374025320_0","cursor":"","schema":{}}'
_OUTBOX = (
    "INSERT INTO outbox (id, run_id, rule, channel, template, run_json, created_at, not_before,"
    " attempts, state, lease_until, reason, last_error, updated_at, group_key)"
    " VALUES (?, ?, ?, ?, 't1', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _old_store(path: Path, version: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for statements in MIGRATIONS[:version]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version:d}")
    return conn


def _v6_rows(conn: sqlite3.Connection) -> None:
    """What a v6 relay killed with -9 mid-send leaves: a claim, a dead letter, a sent alert (its
    run's fired set), a muted one, an active silence, a digest group due, a feed's position."""

    def outbox(run_id: str, rule: str, channel: str, state: str, **extra: object) -> None:
        values: dict[str, object] = {
            "attempts": 0,
            "lease": None,
            "reason": None,
            "error": None,
            "group": None,
        }
        values.update(extra)
        conn.execute(
            _OUTBOX,
            (
                notification_id(run_id, rule, channel),
                run_id,
                rule,
                channel,
                f'{{"id":"{run_id}","status":"FAILED","taskIdentifier":"billing"}}'.encode(),
                NOW - 60,
                NOW - 60,
                values["attempts"],
                state,
                values["lease"],
                values["reason"],
                values["error"],
                NOW - 30,
                values["group"],
            ),
        )

    outbox("run_claimed", "r1", "c1", "pending", attempts=2, lease=NOW + 240)
    outbox("run_dead", "r1", "c1", "dead", attempts=1, reason="client_error", error="HTTP 400")
    outbox("run_sent", "r1", "c1", "sent", attempts=1)
    outbox("run_muted", "r1", "c1", "muted", reason="sil_old")
    outbox("run_digest", "dg", "d", "pending", group="grp_old")
    conn.execute(
        "INSERT INTO runs (run_id, updated_at_ms, status, fired, seen_at)"
        " VALUES ('run_sent', 1000000, 'FAILED', 'r1', ?)",
        (NOW - 60,),
    )
    conn.execute(
        "INSERT INTO groups VALUES ('grp_old', 'dg', 'd', '{\"taskIdentifier\":\"billing\"}',"
        " ?, NULL, ?)",
        (NOW - 1, NOW - 60),
    )
    conn.execute(
        "INSERT INTO silences VALUES ('sil_old', '{\"task\":[\"muted/*\"]}', ?, ?, ?, 'pre', 'ops')",
        (NOW - 60, NOW + 3600, NOW - 60),
    )
    conn.execute("INSERT INTO kv VALUES ('realtime', 'tags:env:prod|24h', ?, ?)", (POSITION, NOW))


async def test_the_work_of_a_v6_store_survives_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    with closing(_old_store(path, 6)) as conn:
        _v6_rows(conn)
        conn.execute("COMMIT")
    store = SQLiteStore(path, holder="head")
    await store.open()
    try:
        await store.release_leases()  # as serve starts: the killed relay's claim is free
        claimed = await store.claim("c1", NOW, 10, 30.0)
        assert [(n.id, n.attempts, n.run["id"]) for n in claimed] == [
            (notification_id("run_claimed", "r1", "c1"), 2, "run_claimed")
        ]
        dead_id = notification_id("run_dead", "r1", "c1")
        assert [(n.id, n.reason) for n in await store.dead_letters()] == [(dead_id, "client_error")]
        assert await store.replay([dead_id], NOW) == 1
        assert [n.id for n in await store.claim("c1", NOW, 10, 30.0)] == [dead_id]
        [silence] = await store.silences(NOW)
        assert (silence.id, silence.matchers, silence.comment) == (
            "sil_old",
            {"task": ("muted/*",)},
            "pre",
        )
        # the run that fired before the upgrade does not fire again, whatever it sends
        again = [make_run("run_sent", at_s=1000), make_run("run_sent", at_s=2000)]
        assert ids(await store.observe(again, decide, NOW)) == []
        digest = await store.claim("d", NOW, 10, 30.0)
        assert [(n.run_id, n.group_key) for n in digest] == [("run_digest", "grp_old")]
        assert await store.group_flushed("grp_old", NOW) == {"taskIdentifier": "billing"}
        assert await store.kv_get("realtime", "tags:env:prod|24h") == POSITION
        assert await store.counts() == {"pending": 3, "sent": 1, "dead": 0, "muted": 1}
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_an_upgrade_on_start_is_said_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`relay serve` migrating a SQLite store said nothing (PostgreSQL's said `store schema
    migrated`): an operator upgrading could not tell from the log that the schema moved, and
    from which version, the one a downgrade needs the backup of. Opened again, it says nothing."""
    path = tmp_path / "relay.db"
    with closing(_old_store(path, SCHEMA_VERSION - 1)) as conn:
        conn.execute("COMMIT")
    for _ in range(2):
        store = SQLiteStore(path)
        with caplog.at_level("INFO", logger="relay.store"):
            await store.open()
        await store.close()
    said = [r for r in caplog.records if r.getMessage() == "store schema migrated"]
    assert [(r.__dict__["from"], r.__dict__["to"]) for r in said] == [
        (SCHEMA_VERSION - 1, SCHEMA_VERSION)
    ]


def _version_and_outbox(path: Path) -> tuple[int, list[tuple[str, int]]]:
    with closing(sqlite3.connect(path)) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        states = conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state ORDER BY state")
        return version, states.fetchall()


def test_a_migration_killed_half_way_is_done_by_the_next_start(tmp_path: Path) -> None:
    """kill -9 while v3 copies a big outbox into its rebuilt table: the file stays at v2 with
    every row, and the next `relay migrate` (or serve) brings it to the current version."""
    path = tmp_path / "relay.db"
    with closing(_old_store(path, 2)) as conn:
        blob = b'{"id":"r","status":"FAILED","payload":"' + b"x" * 4000 + b'"}'
        conn.executemany(
            "INSERT INTO outbox (id, run_id, rule, channel, template, run_json, created_at,"
            " not_before, state, updated_at) VALUES (?, ?, 'r1', 'c1', 't1', ?, ?, ?, ?, ?)",
            (
                (
                    f"ntf_{i:06d}",
                    f"run_{i}",
                    blob,
                    NOW,
                    NOW,
                    ("pending", "sent", "dead")[i % 3],
                    NOW,
                )
                for i in range(9000)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")  # as relay keeps it
    before = _version_and_outbox(path)
    env = child_env({"RELAY_STORE_URL": f"sqlite:///{path}"})  # relay's modules compiled once
    command = [sys.executable, "-m", "relay", "migrate"]
    migrating = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wal = path.with_name("relay.db-wal")
    while migrating.poll() is None and (not wal.exists() or wal.stat().st_size < 4_000_000):
        time.sleep(0.001)
    migrating.send_signal(signal.SIGKILL)
    migrating.wait()
    assert migrating.returncode == -signal.SIGKILL, "the migration ended before the kill"
    assert (
        _version_and_outbox(path)
        == before
        == (2, [("dead", 3000), ("pending", 3000), ("sent", 3000)])
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (
        0,
        f"store schema migrated from version 2 to {SCHEMA_VERSION}\n",
    )
    assert _version_and_outbox(path) == (SCHEMA_VERSION, before[1])


async def test_a_v1_postgresql_database_keeps_its_work_beside_an_old_replica() -> None:
    """PostgreSQL v1 (the first release's) with an old replica's rows, migrated by this relay
    while that replica keeps writing as v1 did: every row is read, nothing fires twice."""
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_v1_schema(conn)
                for run_id, state, lease in (
                    ("run_claimed", "pending", NOW - 1),  # the old replica's lease, ended
                    ("run_dead", "dead", None),
                    ("run_sent", "sent", None),
                ):
                    await conn.execute(_PG_V1_OUTBOX, *_pg_row(run_id, state), lease)
                await conn.execute(
                    "INSERT INTO relay_runs (run_id, updated_at_ms, status, fired, seen_at)"
                    " VALUES ('run_sent', 1000000, 'FAILED', 'r1', $1)",
                    NOW,
                )
            store = PostgresStore(url)
            await store.open()  # migrates to the current version
            try:
                # the old replica goes on writing the columns it knows
                await conn.execute(_PG_V1_OUTBOX, *_pg_row("run_later", "pending"), None)
                claimed = await store.claim("c1", NOW, 10, 30.0)
                assert sorted(n.run_id for n in claimed) == ["run_claimed", "run_later"]
                assert [n.run_id for n in await store.dead_letters()] == ["run_dead"]
                again = [make_run("run_sent", at_s=1000), make_run("run_sent", at_s=2000)]
                assert ids(await store.observe(again, decide, NOW)) == []
            finally:
                await store.close()
            versions = await conn.fetch("SELECT version FROM relay_schema_version ORDER BY 1")
            assert [v["version"] for v in versions] == list(range(1, PG_SCHEMA_VERSION + 1))
        finally:
            await conn.close()


async def test_a_v8_store_counts_the_changes_to_its_silences_once_upgraded(
    tmp_path: Path,
) -> None:
    """v9 counts the writes to the silences (the running relay reads them again only then):
    the silences of a v8 store are kept, and each write after the upgrade moves the count."""
    path = tmp_path / "relay.db"
    with closing(_old_store(path, 8)) as conn:
        conn.execute(_SILENCE, ("sil_old", NOW - 60, NOW + 3600, NOW - 60))
        conn.execute("COMMIT")
    store = SQLiteStore(path)
    await store.open()
    try:
        seen = [await store.silences_version()]
        await store.add_silence(Silence("sil_new", {"task": ("x",)}, NOW, NOW + 60, NOW))
        seen.append(await store.silences_version())
        await store.expire_silence("sil_old", NOW)
        seen.append(await store.silences_version())
        assert len(set(seen)) == 3, seen
        assert [s.id for s in await store.silences(NOW - 1)] == ["sil_old", "sil_new"]
    finally:
        await store.close()


async def test_silences_an_old_replica_writes_move_the_count_a_new_one_reads() -> None:
    """A replica of a release before the count (PostgreSQL schema 1-3) adds and expires silences beside
    the migrated schema as it always did: the trigger counts its writes, so a new replica reads
    the silences again and mutes by them within its reload (0.25 s), as before."""
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_v1_schema(conn)
            store = PostgresStore(url)
            await store.open()  # migrates to the current version
            try:
                seen = [await store.silences_version()]
                await conn.execute(_PG_SILENCE, "sil_old", NOW - 60, NOW + 3600, NOW - 60)
                seen.append(await store.silences_version())
                await conn.execute(
                    "UPDATE relay_silences SET ends_at = LEAST(ends_at, $1) WHERE id = $2",
                    NOW,
                    "sil_old",
                )
                seen.append(await store.silences_version())
                assert len(set(seen)) == 3, seen
                [old] = await store.silences(NOW - 1)
                assert (old.id, old.ends_at) == ("sil_old", NOW)
            finally:
                await store.close()
        finally:
            await conn.close()


async def test_a_role_granted_the_tables_before_an_upgrade_may_use_the_ones_it_adds() -> None:
    """Replicas run as a role granted SELECT, INSERT, UPDATE, DELETE on relay's tables
    (docs/postgresql.md), `relay migrate` as their owner. Shown with real releases (schema 3):
    the tables a migration added had no grant, so a new replica as that role answered 503 to
    every POST /v1/runs (the silences' count unreadable) and an old one 503 to every silence
    added (its trigger's UPDATE refused). A table a migration adds now gets the grants
    relay_outbox has."""
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_old_schema(conn, 3)
            async with dml_role(conn, url) as (_, as_role):
                assert await PostgresStore(url).migrate() == (3, PG_SCHEMA_VERSION)
                old = await asyncpg.connect(as_role)  # a replica of the old release, running
                try:
                    await old.execute(_PG_SILENCE, "sil_old", NOW - 60, NOW + 3600, NOW - 60)
                finally:
                    await old.close()
                await _silences_written(as_role, ["sil_old", "sil_new"])
        finally:
            await conn.close()


async def test_a_new_store_says_its_schema_was_created_not_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first start logged `store schema migrated` from 0, and `relay migrate` on a new store
    printed "migrated from version 0": both read as an upgrade. On either store, a new one's
    schema is said to be created, with its version."""
    store = SQLiteStore(tmp_path / "serve.db")
    with caplog.at_level("INFO", logger="relay.store"):
        await store.open()
    await store.close()
    said = [(r.getMessage(), r.__dict__.get("version")) for r in caplog.records]
    assert ("store schema created", SCHEMA_VERSION) in said
    assert not [m for m, _ in said if m == "store schema migrated"]
    urls = [(f"sqlite:///{tmp_path / 'migrate.db'}", SCHEMA_VERSION)]
    async with fresh_database(shared_server()) as url:
        for store_url, version in [*urls, (url, PG_SCHEMA_VERSION)]:
            env = {"RELAY_STORE_URL": store_url}
            for answer in ("store schema created", "store schema is up to date"):
                done = await asyncio.to_thread(run_cli, "migrate", env=env)
                assert (done.returncode, done.stdout) == (0, f"{answer} (version {version})\n")


async def test_relay_migrate_mends_the_grants_of_a_database_already_current() -> None:
    """Databases the builds before the grants took to schema 4 or 5 never got them on the
    tables those migrations added (relay_silences_changes): a replica as the role granted
    relay's tables answered 503 to every update, and `relay migrate`, the schema current,
    said "up to date" and changed nothing. Now it gives every relay table the grants
    relay_outbox has, whatever the version: run once, it mends such a database."""
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_old_schema(conn, PG_SCHEMA_VERSION)
            async with dml_role(conn, url) as (role, as_role):
                await conn.execute(f'REVOKE ALL ON relay_silences_changes FROM "{role}"')
                done = await asyncio.to_thread(run_cli, "migrate", env={"RELAY_STORE_URL": url})
                said = f"store schema is up to date (version {PG_SCHEMA_VERSION})\n"
                assert (done.returncode, done.stdout) == (0, said), done.stderr
                await _silences_written(as_role, ["sil_new"])
        finally:
            await conn.close()


async def _silences_written(url: str, expected: list[str]) -> None:
    """A replica at `url` adds a silence, sees the count move and reads `expected`."""
    store = PostgresStore(url)
    await store.open()
    try:
        before = await store.silences_version()
        await store.add_silence(Silence("sil_new", {"task": ("x",)}, NOW, NOW + 60, NOW))
        assert await store.silences_version() != before
        assert [s.id for s in await store.silences(NOW)] == expected
    finally:
        await store.close()


_SILENCE = "INSERT INTO silences VALUES (?, '{\"task\":[\"muted/*\"]}', ?, ?, ?, 'pre', 'ops')"
_PG_SILENCE = (
    "INSERT INTO relay_silences VALUES ($1, '{\"task\":[\"muted/*\"]}', $2, $3, $4, 'pre', 'ops')"
)


async def _pg_v1_schema(conn: asyncpg.Connection) -> None:
    """The first release's PostgreSQL schema, as it left it (version 1)."""
    await _pg_old_schema(conn, 1)


async def _pg_old_schema(conn: asyncpg.Connection, version: int) -> None:
    """The PostgreSQL schema of an older release, as it left it (`version`)."""
    await conn.execute(_PG_VERSIONS)
    for number, statements in enumerate(PG_MIGRATIONS[:version], start=1):
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("INSERT INTO relay_schema_version (version) VALUES ($1)", number)


_PG_VERSIONS = (
    "CREATE TABLE relay_schema_version (version integer PRIMARY KEY,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)
_PG_V1_OUTBOX = (
    "INSERT INTO relay_outbox (id, run_id, rule, channel, template, run_json, created_at,"
    " not_before, state, updated_at, lease_until) VALUES ($1, $2, 'r1', 'c1', 't1', $3, $4, $4,"
    " $5, $4, $6)"
)


def _pg_row(run_id: str, state: str) -> tuple[object, ...]:
    run_json = f'{{"id":"{run_id}","status":"FAILED"}}'.encode()
    return notification_id(run_id, "r1", "c1"), run_id, run_json, NOW - 60, state


async def _store_command(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` on the store at `url`: what the command does and says, so in this process
    (a child each took ~0.6 s of CPU); in a thread, as it runs an event loop of its own."""
    return await asyncio.to_thread(run_cli_in_process, *args, env={"RELAY_STORE_URL": url})


async def test_a_look_at_an_old_store_leaves_its_schema_to_relay_migrate(tmp_path: Path) -> None:
    """`relay dlq list` of the new image on the store an old relay still runs on: the schema
    stays where the old relay can open it again, and the command says what to run instead."""
    path = tmp_path / "relay.db"
    with closing(_old_store(path, 6)) as conn:
        _v6_rows(conn)
        conn.execute("COMMIT")
    url = f"sqlite:///{path}"
    for command in (["dlq", "list"], ["history"], ["silence", "list"], ["dlq", "replay", "x"]):
        looked = await _store_command(url, *command)
        assert looked.returncode == 1, (command, looked.stdout, looked.stderr)
        assert "store schema version 6 is older than this relay's" in looked.stderr
        assert "relay migrate" in looked.stderr
        assert _version_and_outbox(path)[0] == 6
    assert (await _store_command(url, "migrate")).returncode == 0
    listed = await _store_command(url, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert notification_id("run_dead", "r1", "c1") in listed.stdout


async def test_a_look_at_an_old_postgresql_database_leaves_its_schema_to_relay_migrate() -> None:
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_v1_schema(conn)
            looked = await _store_command(url, "history")
            assert looked.returncode == 1, (looked.stdout, looked.stderr)
            assert "store schema version 1 is older than this relay's" in looked.stderr
            assert await conn.fetchval("SELECT MAX(version) FROM relay_schema_version") == 1
        finally:
            await conn.close()


async def test_relay_migrate_leaves_an_older_store_a_relay_serve_runs_on(tmp_path: Path) -> None:
    """The new image's `relay migrate` (a deploy step, as with PostgreSQL) against the SQLite
    file the old release still serves migrated it under that relay: its store commands failed
    at once (`schema version N is newer than this relay supports`) and it would not start
    again, a crash or a rollback away from no relay at all. It refuses now, the file as it
    was; with the old relay stopped it migrates. An up-to-date store is still `up to date`."""
    path = tmp_path / "relay.db"
    with closing(_old_store(path, SCHEMA_VERSION - 1)) as conn:
        conn.execute("COMMIT")
    before = _version_and_outbox(path)
    url = f"sqlite:///{path}"
    serving = os.open(f"{path}-serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(serving, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the old relay serve holds it
        refused = await _store_command(url, "migrate")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "a relay serve runs on this database: stop it first" in refused.stderr
        assert _version_and_outbox(path) == before
    finally:
        os.close(serving)
    done = await _store_command(url, "migrate")
    assert (done.returncode, done.stdout) == (
        0,
        f"store schema migrated from version {SCHEMA_VERSION - 1} to {SCHEMA_VERSION}\n",
    )


def _newer_sqlite_store(path: Path) -> None:
    with closing(_old_store(path, SCHEMA_VERSION)) as conn:
        _v6_rows(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1:d}")
        conn.execute("COMMIT")


async def test_a_store_a_newer_relay_migrated_is_refused_and_left_alone(tmp_path: Path) -> None:
    """Downgrade: this relay on a store of a later version (`migrate`, as `serve` opens it) exits
    1 saying so, and the store keeps its version and every row."""
    path = tmp_path / "relay.db"
    _newer_sqlite_store(path)
    before = _version_and_outbox(path)
    refused = await _store_command(f"sqlite:///{path}", "migrate")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    newer = f"store schema version {SCHEMA_VERSION + 1} is newer than this relay supports"
    assert newer in refused.stderr
    # what to do about it: a downgrade is a restore (docs/operations.md, step 4)
    assert "run that version, or restore the backup taken before the upgrade" in refused.stderr
    assert _version_and_outbox(path) == before


async def test_a_postgresql_database_a_newer_relay_migrated_is_refused() -> None:
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            assert (await _store_command(url, "migrate")).returncode == 0
            later = PG_SCHEMA_VERSION + 1
            await conn.execute("INSERT INTO relay_schema_version (version) VALUES ($1)", later)
            refused = await _store_command(url, "migrate")
            assert refused.returncode == 1, (refused.stdout, refused.stderr)
            assert f"store schema version {later} is newer than this relay supports" in (
                refused.stderr
            )
            assert await conn.fetchval("SELECT MAX(version) FROM relay_schema_version") == later
        finally:
            await conn.close()


async def test_a_claim_of_a_replica_of_an_older_release_waits_for_its_lease() -> None:
    """A replica from before relay_replicas (schema 2) claims with no holder: once it is gone
    (kill -9 in a rolling upgrade) its row is not taken over early; its lease ends, then it goes,
    with the same id and the attempts it had (docs/postgresql.md)."""
    async with fresh_database(shared_server()) as url:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await _pg_v1_schema(conn)
                await conn.execute(_PG_V1_OUTBOX, *_pg_row("run_claimed", "pending"), NOW + 240)
            store = PostgresStore(url)
            await store.open()
            try:
                assert await store.claim("c1", NOW, 10, 30.0) == []
                claimed = await store.claim("c1", NOW + 241, 10, 30.0)
                assert [n.id for n in claimed] == [notification_id("run_claimed", "r1", "c1")]
            finally:
                await store.close()
        finally:
            await conn.close()


async def test_relay_tables_relay_did_not_create_in_postgresql_are_refused_untouched() -> None:
    """Another application's `relay_outbox` (or a `relay_schema_version` of its own) in the
    database: relay's migration met it and said only `store open failed: DuplicateTableError
    (42P07)`, or `UndefinedTableError (42P01)`."""
    foreign = {
        "CREATE TABLE relay_outbox (a integer, b text)": (
            "store open failed: the database holds relay_outbox, relay_* tables relay did not"
            " create (relay_schema_version records none); RELAY_STORE_URL must name"
        ),
        "CREATE TABLE relay_schema_version (version integer); INSERT INTO relay_schema_version"
        " VALUES (3)": (
            "store open failed: relay_schema_version records version 3, but relay's relay_events,"
            " relay_groups, relay_kv and 5 more of that version are not there"
        ),
    }
    for ddl, said in foreign.items():
        async with fresh_database(shared_server()) as url:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(ddl)
                refused = await _store_command(url, "migrate")
                assert refused.returncode == 1, (refused.stdout, refused.stderr)
                assert said in refused.stderr, refused.stderr
                tables = await conn.fetch(
                    "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'relay%'"
                )
                assert len(tables) == 1, tables
            finally:
                await conn.close()
