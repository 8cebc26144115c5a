"""The store commands (`relay dlq`, `silence`, `history`) on PostgreSQL, beside running replicas.

They opened the store as a replica does: a pool of up to 10 connections plus one for a
heartbeat, their own row in relay_replicas renewed by a background task, the schema created in
an empty database and, run as the tables' owner, grants given. A command is a short client:
one connection, no row, no task, no schema or grant changed; where relay's tables are not there,
it says so as for a SQLite file that is not there (a silence add makes them, and says so).

A real PostgreSQL (tests/pg.py); the commands run in this process (run_cli_in_process).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from relay.store.postgres import PostgresStore
from tests.conftest import RelayProcess, run_cli_in_process
from tests.pg import dml_role, fresh_database, shared_server

# a row in relay_replicas refused: a command that registers as a replica fails
NO_REPLICAS = """
CREATE FUNCTION refuse_replicas() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a store command registered as a replica';
END $$;
CREATE TRIGGER refuse_replicas BEFORE INSERT ON relay_replicas
    FOR EACH ROW EXECUTE FUNCTION refuse_replicas();
"""
COMMANDS = (
    ("dlq", "list"),
    ("dlq", "replay", "--all"),
    ("silence", "add", "task=x", "-d", "1h"),
    ("silence", "list", "--json"),
    ("history", "--json"),
)
RELAY_TABLES = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'relay\\_%'"


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


async def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(run_cli_in_process, *args, env={"RELAY_STORE_URL": url})
    return result.returncode, result.stdout, result.stderr


async def test_store_commands_are_no_replica_and_hold_one_connection(
    database: str, tmp_path: Path
) -> None:
    """Run as a role allowed one connection, with relay_replicas refusing rows: each command
    (also updating and expiring the silence one added, and importing 300 silences, more than
    it writes at once) answers; relay_replicas stays empty."""
    listing = tmp_path / "silences.json"
    many = [{"matchers": {"task": f"t{i}"}, "ends_at": "2099-01-01"} for i in range(300)]
    listing.write_text(json.dumps(many))
    await PostgresStore(database).migrate()
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(NO_REPLICAS)
        async with dml_role(conn, database) as (role, url):
            await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 1')
            for args in COMMANDS:
                code, out, err = await cli(url, *args)
                assert code == 0, (args, out, err)
                assert err == "", (args, err)
            [silence] = await conn.fetch("SELECT id FROM relay_silences")
            code, out, err = await cli(url, "silence", "update", silence["id"], "-c", "longer")
            assert (code, out) == (0, f"{silence['id']}\n"), err
            code, out, err = await cli(url, "silence", "expire", silence["id"])
            assert (code, out) == (0, f"expired {silence['id']}\n"), err
            code, out, err = await cli(url, "silence", "import", str(listing))
            assert (code, len(out.split())) == (0, 300), err
        assert await conn.fetchval("SELECT count(*) FROM relay_replicas") == 0
    finally:
        await conn.close()


async def test_store_commands_give_no_grants(database: str) -> None:
    """Run as the tables' owner, a command gave each relay table the grants relay_outbox has
    that it lacks (relay migrate's mending): a privilege change nobody asked of `relay
    history`. relay migrate still gives them."""
    await PostgresStore(database).migrate()
    conn = await asyncpg.connect(database)
    try:
        async with dml_role(conn, database) as (role, _):
            await conn.execute(f'REVOKE ALL ON relay_kv FROM "{role}"')
            lacking = f"SELECT NOT has_table_privilege('{role}', 'relay_kv', 'SELECT')"
            for args in COMMANDS:
                code, _, err = await cli(database, *args)
                assert code == 0, (args, err)
                assert await conn.fetchval(lacking), args
            assert (await cli(database, "migrate"))[0] == 0
            assert not await conn.fetchval(lacking)
    finally:
        await conn.close()


async def test_commands_on_a_database_without_relay_tables_say_so(database: str) -> None:
    """An empty database (a mistyped name, relay serve never started there): the reading
    commands answered as from an empty store having made relay's tables, without a word. Now
    they make nothing and say so, as for a SQLite file not there; `silence add` makes them (a
    silence before the first relay serve) and says that."""
    where = database.rpartition("@")[2]
    conn = await asyncpg.connect(database)
    try:
        for args in [("dlq", "list"), ("history", "--json"), ("dlq", "replay", "--all")]:
            code, out, err = await cli(database, *args)
            assert code == 0, (args, err)
            note = f"note: no store at {where} (RELAY_STORE_URL): nothing is stored there\n"
            assert err == note, (args, err)
        assert await conn.fetchval(RELAY_TABLES) == 0
        code, out, err = await cli(database, "silence", "add", "task=x", "-d", "1h")
        assert code == 0 and out.startswith("sil_"), err
        assert err.startswith(f"note: no store was at {where} (RELAY_STORE_URL): a new one"), err
        assert await conn.fetchval("SELECT count(*) FROM relay_silences") == 1
        code, out, err = await cli(database, "silence", "list", "-q")
        assert (code, out, err) == (0, f"{out.strip()}\n", "")
    finally:
        await conn.close()


SERVE_CONFIG = """\
channels:
  out: {type: console}
rules:
  - {name: failures, match: {status: [failure]}, notify: [out]}
"""
SESSIONS = """
    SELECT DISTINCT application_name FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
        AND backend_type = 'client backend' AND application_name <> ''
"""  # the test's own connections have no name


async def test_replicas_and_store_commands_are_told_apart_in_pg_stat_activity(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica's sessions and a store command's were all `relay`: an operator could not tell
    a `relay dlq replay` hung on a lock from a replica. Now `relay serve` and `relay cli dlq
    list` (the URL's application_name or PGAPPNAME still win)."""
    monkeypatch.delenv("PGAPPNAME", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(SERVE_CONFIG)
    replica = RelayProcess(config, tmp_path / "unused.db", {"RELAY_STORE_URL": database})
    await asyncio.to_thread(replica.start, 60.0)
    conn, look = await asyncpg.connect(database), await asyncpg.connect(database)
    try:
        async with conn.transaction():  # the command waits on the lock: its session is seen
            await conn.execute("LOCK TABLE relay_outbox IN ACCESS EXCLUSIVE MODE")
            listing = asyncio.ensure_future(cli(database, "dlq", "list"))
            names: set[str] = set()
            for _ in range(200):  # 10 s, within the command's 30 s statement timeout
                names = {row[0] for row in await look.fetch(SESSIONS)}
                if "relay cli dlq list" in names or listing.done():
                    break
                await asyncio.sleep(0.05)
        assert (await listing)[0] == 0
        assert names == {"relay serve", "relay cli dlq list"}
    finally:
        await conn.close()
        await look.close()
        replica.kill()
