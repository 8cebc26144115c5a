"""`relay replicas` (amtool's `cluster show`): the live processes on a PostgreSQL store by
their heartbeats, read by a short client that is none of them. Real replicas of the store on a
throwaway PostgreSQL server (tests/pg.py); the command runs in this process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from relay.store.postgres import PostgresStore
from tests.conftest import run_cli_in_process
from tests.pg import fresh_database, shared_server
from tests.store.test_pg_heartbeat import counted


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


def replicas(url: str, *args: str) -> tuple[int, str, str]:
    done = run_cli_in_process("replicas", *args, env={"RELAY_STORE_URL": url})
    return done.returncode, done.stdout, done.stderr


async def test_replicas_lists_each_live_process_and_what_it_delivers(url: str) -> None:
    a, b, parent = (PostgresStore(url, replica_timeout_s=5.0) for _ in range(3))
    for store in (a, b, parent):
        await store.open()
    try:
        a.delivering(["pager", "ops"])
        b.delivering(["ops"])  # parent: a `--workers` serve, delivering nothing itself
        await counted(lambda: a.sharers("ops") == 2, "both counted")
        code, out, err = await asyncio.to_thread(replicas, url, "-o", "json")
        assert code == 0, err
        listed = {r["holder"]: r for r in json.loads(out)}
        assert listed.keys() == {a.holder, b.holder, parent.holder}  # not the command's own
        assert [listed[s.holder]["channels"] for s in (a, b, parent)] == [
            ["ops", "pager"],
            ["ops"],
            [],
        ]
        me = listed[a.holder]
        assert (me["host"], me["pid"]) == (socket.gethostname()[:64], str(os.getpid()))
        assert 0 < me["expires_in_s"] <= 5.0
        code, out, _ = await asyncio.to_thread(replicas, url)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["HOST", "PID", "CHANNELS", "EXPIRES", "IN", "HOLDER"]
        assert sorted(line.split()[2] for line in lines[1:]) == ["none", "ops", "ops,pager"]
        await b.close()  # its row goes at once
        code, out, _ = await asyncio.to_thread(replicas, url, "--json")
        assert {r["holder"] for r in json.loads(out)} == {a.holder, parent.holder}
    finally:
        for store in (a, b, parent):
            await store.close()
    code, out, _ = await asyncio.to_thread(replicas, url)
    assert (code, out) == (0, "no replica alive on the store\n")


async def test_an_older_relay_is_listed_as_delivering_every_channel(url: str) -> None:
    """A replica of the release before names no channels (its row's NULL): it delivers them
    all, said so; a holder name without host and pid is listed as it is."""
    store = PostgresStore(url)
    await store.open()  # the schema
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO relay_replicas (holder, expires_at)"
            " VALUES ('older', clock_timestamp() + interval '1 hour')"
        )
    finally:
        await conn.close()
    code, out, err = await asyncio.to_thread(replicas, url)
    head, row = out.splitlines()  # PID and EXPIRES IN right-aligned, as numbers are
    assert (code, head) == (0, "HOST   PID  CHANNELS              EXPIRES IN  HOLDER"), err
    assert re.fullmatch(r"older {7}all \(an older relay\) {4}\d{4}\.\d s  older", row), row
    code, out, err = await asyncio.to_thread(replicas, url, "--json")
    [older] = json.loads(out)
    assert (code, older["host"], older["pid"], older["channels"]) == (0, "older", "", None), err


def test_a_sqlite_store_says_it_has_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'relay.db'}"
    code, out, _ = replicas(url)
    assert (code, out) == (
        0,
        "a SQLite store has no replicas: one relay serve (and its --workers)"
        " owns the file; replicas share a PostgreSQL store\n",
    )
    code, out, err = replicas(url, "--json")
    assert (code, json.loads(out)) == (0, []) and "no replicas" in err
