"""The store suite runs on every engine: `engine` is parametrised over SQLite and PostgreSQL.

`engine.make()` gives another (unopened) store on the same database — a restart, a second
process on the file, or a second replica on the PostgreSQL database. The PostgreSQL runs use a
throwaway server (tests/pg.py) and a fresh database per test; they are skipped, with the reason,
on a machine without PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.model import Decision, Match, Run, RunState, Timing, notification_id
from relay.store import Observed, Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SQLiteStore
from tests.pg import fresh_database, shared_server

ENGINES = ("sqlite", "postgres")


@dataclass
class Engine:
    name: str
    make: Callable[[], Store]
    url: str


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    if request.param == "sqlite":
        path = tmp_path / "data" / "relay.db"
        yield Engine("sqlite", lambda: SQLiteStore(path), f"sqlite:///{path}")
        return
    async with fresh_database(shared_server()) as url:
        yield Engine("postgres", lambda: PostgresStore(url), url)


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[Store]:
    store = engine.make()
    await store.open()
    yield store
    await store.close()


# --- what the tests feed the store -----------------------------------------------------------


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


DIGEST = Timing(group_wait_s=30.0, group_interval_s=300.0, repeat_interval_s=3600.0)


def decide_digest(run: Run, previous: RunState | None) -> Decision:
    """Rule dg fires once per FAILED run into a digest grouped by taskIdentifier, to channel d."""
    decision = decide(run, previous)
    if not decision.matches:
        return decision
    match = Match("dg", "d", "t1", group_by=("taskIdentifier",), timing=DIGEST)
    return Decision(state=decision.state, matches=(match,))


def decide_recovery(run: Run, previous: RunState | None) -> Decision:
    """`decide`, plus r1's recoveries (to every channel in the run's tags) on COMPLETED."""
    decision = decide(run, previous)
    if run.status != "COMPLETED" or previous is None or "r1" not in previous.fired:
        return decision
    recoveries = tuple(
        Match("r1", channel, "recovered", recovery=True) for channel in run.tags or ["c1"]
    )
    return Decision(state=decision.state, matches=decision.matches + recoveries)


def ids(observed: list[Observed]) -> list[str]:
    return [n.id for o in observed for n in o.notifications]


async def observe_beside_a_failing_call(store: Store) -> None:
    """Three observe() calls at once, the middle one failing: only it fails."""
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


async def enqueue(store: Store, run_id: str, now: float, *channels: str) -> list[str]:
    run = make_run(run_id, tags=list(channels or ["c1"]))
    return ids(await store.observe([run], decide, now))
