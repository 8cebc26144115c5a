"""/readyz on PostgreSQL tells a role that cannot use relay's tables from one that can.

Real `relay serve` children, a real PostgreSQL (tests/pg.py), two roles: the superuser that
migrates, and a role granted relay's tables (dml_role) that the replica runs as.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from relay.store._pg_grants import _ALL, Grants
from relay.store.postgres import PostgresStore
from tests.conftest import RelayProcess, sdk_run
from tests.pg import dml_role, fresh_database, shared_server

LACKING = "store lacks privileges"
GRANT_RUNS = "as its owner run GRANT INSERT ON relay_runs TO <the user of RELAY_STORE_URL>"


async def readyz(http: aiohttp.ClientSession, proc: RelayProcess) -> tuple[int, dict[str, Any]]:
    async with http.get(proc.url + "/readyz") as resp:
        return resp.status, await resp.json()


async def opened(http: aiohttp.ClientSession, proc: RelayProcess) -> tuple[int, dict[str, Any]]:
    """/readyz once the store is open (it says "store unreachable" or "starting" before)."""
    deadline = time.monotonic() + 60
    while (answer := await readyz(http, proc))[1].get("reason") in (
        "store unreachable",
        "starting",
    ):
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.1)
    return answer


async def logged(proc: RelayProcess, count: int) -> list[str]:
    """The reasons of the `store lacks privileges` errors logged, once there are `count` (the
    child's stderr is read by a thread: a line written may not be read yet)."""
    deadline = time.monotonic() + 60
    while len(said := [e for e in proc.logs if e.get("msg") == LACKING]) < count:
        assert time.monotonic() < deadline, proc.logs[-5:]
        await asyncio.sleep(0.05)
    assert all(e["level"] == "error" for e in said), said
    return [e["reason"] for e in said]


async def post_run(http: aiohttp.ClientSession, proc: RelayProcess) -> int:
    async with http.post(proc.url + "/v1/runs", data=json.dumps([sdk_run("failed")])) as resp:
        return resp.status


async def test_a_role_without_a_grant_on_a_table_is_not_ready(tmp_path: Path) -> None:
    """The role relay ran as lacked its grants on one table (granted `ON ALL TABLES` before a
    migration added it): /readyz said ready while every POST /v1/runs answered 503, so a load
    balancer kept sending to a replica that took nothing. Now /readyz is 503 naming the table
    and the GRANT to run, said once in the log, /healthz stays 200, and once granted the
    replica is ready and takes updates."""
    async with fresh_database(shared_server()) as url:
        await PostgresStore(url).migrate()
        conn = await asyncpg.connect(url)
        try:
            async with dml_role(conn, url) as (role, as_role):
                await conn.execute(f'REVOKE ALL ON relay_silences_changes FROM "{role}"')
                proc = RelayProcess(tmp_path / "none.yaml", tmp_path / "unused.db")
                proc.env = {**proc.env, "RELAY_STORE_URL": as_role}
                del proc.env["RELAY_CONFIG"]  # the built-in config
                await asyncio.to_thread(proc.start)
                try:
                    async with aiohttp.ClientSession() as http:
                        await _not_ready_then_ready(http, proc, conn, role)
                finally:
                    proc.kill()
        finally:
            await conn.close()


async def _not_ready_then_ready(
    http: aiohttp.ClientSession, proc: RelayProcess, conn: asyncpg.Connection, role: str
) -> None:
    code, body = await opened(http, proc)
    assert await post_run(http, proc) == 503
    assert code == 503, body
    reason = body["reason"]
    assert reason.startswith(LACKING) and "relay_silences_changes" in reason, reason
    assert "GRANT SELECT, UPDATE ON relay_silences_changes TO" in reason, reason
    assert role not in reason  # the user is part of the URL, a secret
    async with http.get(proc.url + "/healthz") as resp:
        assert resp.status == 200
    assert (await readyz(http, proc))[0] == 503
    assert await logged(proc, 1) == [reason]
    await conn.execute(f'GRANT SELECT, UPDATE ON relay_silences_changes TO "{role}"')
    assert await readyz(http, proc) == (200, {"status": "ready"})
    assert await post_run(http, proc) == 202
    await conn.execute(f'REVOKE INSERT ON relay_runs FROM "{role}"')  # taken back while ready
    assert await readyz(http, proc) == (200, {"status": "ready"})  # not asked while all worked
    assert await post_run(http, proc) == 503  # refused for a privilege: asked again
    code, body = await readyz(http, proc)
    assert (code, body["reason"]) == (503, f"{LACKING}: no INSERT on relay_runs; {GRANT_RUNS}")
    assert await logged(proc, 2) == [reason, body["reason"]]  # each once


def _privileges(**lacking: tuple[str, ...]) -> list[dict[str, Any]]:
    """Catalog rows of the check: every privilege on relay_runs, but those named."""
    taken = lacking.get("relay_runs", ())
    return [{"table": "relay_runs", **{p: p not in taken for p in _ALL}}]


async def test_a_refusal_begun_before_the_check_that_saw_the_grant_does_not_ask_again() -> None:
    """CI at 85b919a: retention's first pass at start, refused before the GRANT (a statement
    trigger on relay_silences), had its answer late under load, after /readyz had checked and
    said ready; it made the check ask again and report a grant taken back later, before any
    statement was refused for it. A refusal counts only if its statement began after the
    check: one begun before tells nothing the check did not see."""
    grants = Grants()
    rows = _privileges(relay_runs=("INSERT",))

    async def fetch(_sql: str) -> list[dict[str, Any]]:
        return rows

    assert (await grants.lacking(fetch) or "").startswith(LACKING)
    stale = grants.era()  # a statement begins while INSERT is lacking
    rows = _privileges()  # granted
    assert await grants.lacking(fetch) is None
    rows = _privileges(relay_runs=("INSERT",))  # taken back while ready
    grants.forget(stale)  # the old statement's refusal arrives
    assert await grants.lacking(fetch) is None  # not asked: nothing new was refused
    grants.forget(grants.era())  # a statement begun since is refused
    assert (await grants.lacking(fetch) or "").startswith(LACKING)
    rows = _privileges()
    assert await grants.lacking(fetch) is None
    grants.forget()  # the store opened again: asked whatever began when
    rows = _privileges(relay_runs=("DELETE",))
    assert "no DELETE on relay_runs" in (await grants.lacking(fetch) or "")
