"""A Realtime feed holds its finished runs for a grace, not for the life of the shape.

Runs never leave a tags feed's shape (Trigger.dev fixes its createdAt window per handle), and a
feed held each one, whole, in memory and in the store. Now a run in a final status whose row has
not changed for FINAL_GRACE_S is dropped from both. The follower runs against the fake Realtime
server (tests/fakes/realtime.py) with a virtual clock for the grace.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.sources._follower import FINAL_GRACE_S
from relay.sources._shape import SNAPSHOT_HOLD_S, Position, Shape
from tests.fakes.realtime import Exchange, FakeRealtime, fake_realtime, row_key, session
from tests.test_realtime import FEED_KEY, H1, following, statuses

RUNS = 1000
ENDED = "10_0"  # the offset after the live answer that ends every run
LATER = "11_0"  # the offset after the live answer that comes later (FakeRealtime.release)
STILL = "bound-still-running"  # a run that never ends


def internal(number: int) -> str:
    return f"bound{number:05d}"


def public(ident: str) -> str:
    return f"run_{ident}"


def insert(ident: str) -> dict[str, Any]:
    """Electric's snapshot insert of an EXECUTING run: every column (the fixture session's)."""
    value = {**session()[0].body[0]["value"], "id": ident, "friendlyId": public(ident)}
    return {"key": row_key(ident), "value": value, "headers": {"operation": "insert"}}


def update(ident: str, **columns: Any) -> dict[str, Any]:
    """Electric's update: the primary key and the changed columns only."""
    return {
        "key": row_key(ident),
        "value": {"id": ident, **columns},
        "headers": {"operation": "update"},
    }


def ends(ident: str, **columns: Any) -> dict[str, Any]:
    """The fixture session's update that ends a run FAILED (status, completedAt, cost, ...)."""
    return update(ident, **{**session()[2].body[0]["value"], "id": ident, **columns})


def whole(ident: str, **columns: Any) -> dict[str, Any]:
    """The native backend's update: the whole row."""
    value = {**insert(ident)["value"], **columns}
    return {"key": row_key(ident), "value": value, "headers": {"operation": "update"}}


def script(
    later: list[dict[str, Any]], ended_with: Callable[[int], dict[str, Any]] = lambda n: {}
) -> list[Exchange]:
    """A snapshot of RUNS + 1 executing runs, the catch-up, a live answer ending RUNS of them
    (run n with the columns `ended_with(n)` too), and a live answer with `later` (released by
    the test)."""
    snapshot, catch_up = session()[:2]
    runs = [insert(internal(n)) for n in range(RUNS)] + [insert(STILL)]
    ended = [ends(internal(n), **ended_with(n)) for n in range(RUNS)]
    return [
        Exchange("snapshot", "-1", None, False, 200, {**snapshot.headers}, runs),
        catch_up,
        live(catch_up.headers["electric-offset"], ENDED, ended, "runs end"),
        live(ENDED, LATER, later, "later"),
    ]


def live(offset: str, after: str, changes: list[dict[str, Any]], name: str) -> Exchange:
    headers = {
        "electric-handle": H1,
        "electric-offset": after,
        "electric-cursor": "58785280",
        "electric-up-to-date": "",
    }
    return Exchange(name, offset, H1, True, 200, headers, [*changes, UP])


UP = {"headers": {"control": "up-to-date"}}


class Clock:
    """Monotonic seconds the test moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def answered_since(fake: FakeRealtime, count: int) -> None:
    """Until `count` more requests came: the first may have been asked before, the second is
    asked after the answer to it was emitted and saved."""
    before = len(fake.requests)
    await fake.wait_for(lambda s: any(s is r for r in fake.requests[before + count - 1 :]))


def held(kv: Any) -> set[str]:
    return set(kv.rows(FEED_KEY))


async def test_a_feed_drops_its_finished_runs_past_the_grace_from_memory_and_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 runs end; past the grace the store holds only the run still running, and the
    position counts it alone. A later partial update of a dropped run (a metadata write) is
    skipped, counted with reason "dropped": nothing is held to merge it into (memory); a whole
    row of another dropped run is taken as a new row."""
    caplog.set_level(logging.INFO, logger="relay")
    clock = Clock()
    late = '{"late": true}'
    later = [
        update(internal(0), metadata=late),  # Electric: the changed column only
        whole(internal(1), status="COMPLETED_WITH_ERRORS", metadata=late),  # native: whole row
        update(STILL, status="WAITING_TO_RESUME"),
    ]
    async with fake_realtime(script(later)) as fake:
        fake.release(3)
        async with following(fake, clock=clock) as h:
            await h.submit.wait_for(2)
            await answered_since(fake, 2)
            assert len(held(h.kv)) == RUNS + 1  # within the grace: every run held
            clock.now = FINAL_GRACE_S + 1
            await answered_since(fake, 2)
            assert held(h.kv) == {row_key(STILL)}
            assert h.kv.position(FEED_KEY)["rows"] == 1
            fake.release()
            batches = await h.submit.wait_for(3)
    assert statuses(batches[2:]) == [[(public(internal(1)), "FAILED"), (public(STILL), "WAITING")]]
    assert batches[2][0].metadata == {"late": True}
    assert held(h.kv) == {row_key(STILL), row_key(internal(1))}
    skipped = [r for r in caplog.records if "no longer holds" in r.getMessage()]
    assert [(r.__dict__["rows"], r.__dict__["reason"]) for r in skipped] == [(1, "dropped")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_run_finished_within_the_grace_still_merges_a_partial_update() -> None:
    clock = Clock()
    settles = update(internal(7), costInCents="0.2", usageDurationMs="40000")
    async with fake_realtime(script([settles])) as fake:
        fake.release(3)
        async with following(fake, clock=clock) as h:
            await h.submit.wait_for(2)
            clock.now = FINAL_GRACE_S - 1
            await answered_since(fake, 2)
            fake.release()
            batches = await h.submit.wait_for(3)
    assert statuses(batches[2:]) == [[(public(internal(7)), "FAILED")]]
    settled = batches[2][0]
    assert (settled.costInCents, settled.durationMs) == (0.2, 40000)
    assert settled.taskIdentifier and settled.createdAt is not None  # merged onto the held row
    assert len(held(h.kv)) == RUNS + 1


async def test_a_restart_after_the_drop_resumes_without_the_dropped_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    clock = Clock()
    async with fake_realtime(script([update(STILL, status="COMPLETED_SUCCESSFULLY")])) as fake:
        fake.release(3)
        async with following(fake, clock=clock) as h:
            await h.submit.wait_for(2)
            clock.now = FINAL_GRACE_S + 1
            await answered_since(fake, 2)
            assert held(h.kv) == {row_key(STILL)}
        before = len(fake.requests)
        async with following(fake, kv=h.kv, clock=Clock()) as again:  # relay restarted
            await fake.wait_for(lambda s: any(s is r for r in fake.requests[before:]))
            fake.release()
            batches = await again.submit.wait_for(1)
    first = fake.requests[before]
    assert (first.query["offset"], first.query["handle"]) == (ENDED, H1)  # no snapshot
    resumed = [r for r in caplog.records if "resumes from its stored position" in r.getMessage()]
    assert [r.__dict__["rows"] for r in resumed] == [1]
    assert statuses(batches) == [[(public(STILL), "COMPLETED")]]
    assert batches[0][0].taskIdentifier  # merged onto its stored row
    assert held(h.kv) == {row_key(STILL)}  # final now, but within its grace


def pg_time(epoch_s: float) -> str:
    """A timestamp as Electric sends a `timestamp(3)` column: `2026-08-20 09:14:22.461`."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def test_a_restart_does_not_start_the_grace_of_the_rows_again() -> None:
    """The grace counted from the process start: the rows read back at a restart got a whole
    hour again, so a relay restarted more often than hourly never dropped a finished run. Now
    a resumed row counts from its own updatedAt: runs that ended two hours ago are dropped at
    the first up-to-date after the restart, a run that ended a minute ago is kept."""
    now = time.time()

    def ended_at(n: int) -> dict[str, Any]:
        return {"updatedAt": pg_time(now - (60 if n == 0 else 2 * FINAL_GRACE_S))}

    later = [update(STILL, status="WAITING_TO_RESUME")]
    async with fake_realtime(script(later, ended_at)) as fake:
        fake.release(3)
        async with following(fake, clock=Clock()) as h:  # its clock never moves on
            await h.submit.wait_for(2)
            await answered_since(fake, 2)
            assert len(held(h.kv)) == RUNS + 1  # within the grace by this process's clock
        async with following(fake, kv=h.kv, clock=Clock()) as again:  # relay restarted
            fake.release()
            await again.submit.wait_for(1)
            await answered_since(fake, 1)
    assert held(h.kv) == {row_key(STILL), row_key(internal(0))}
    assert h.kv.position(FEED_KEY)["rows"] == 2


async def test_a_must_refetch_does_not_hold_the_snapshot_s_finished_runs_another_hour() -> None:
    """The rows of a snapshot counted their grace from when they came: after a 409 (Electric
    rotates a shape; a new feed's first snapshot too) every run the snapshot held, finished
    a day ago or not, was held a whole hour more, a tags feed's whole window of runs. Now a
    snapshot's row counts from its own updatedAt, as a resumed one: runs that ended two hours
    ago are dropped SNAPSHOT_HOLD_S after they came, a run that ended a minute ago is kept."""
    now = time.time()

    def ended_at(n: int) -> dict[str, Any]:
        return {"updatedAt": pg_time(now - (60 if n == 0 else 2 * FINAL_GRACE_S))}

    clock = Clock()
    async with fake_realtime(script([], ended_at)) as fake:
        fake.release(3)
        async with following(fake, clock=clock) as h:
            await h.submit.wait_for(2)
            await answered_since(fake, 2)
            assert len(held(h.kv)) == RUNS + 1  # live changes: within the grace
            fake.rotate("83412937-1755681299400117")  # the next live request: 409
            await h.submit.wait_for(3)  # the new snapshot's runs, emitted again
            await answered_since(fake, 2)
            assert len(held(h.kv)) == RUNS + 1  # held a while, should the same come again
            clock.now = SNAPSHOT_HOLD_S
            await answered_since(fake, 2)
    assert "409 unknown handle" in fake.served, fake.served
    assert held(h.kv) == {row_key(STILL), row_key(internal(0))}
    assert h.kv.position(FEED_KEY)["rows"] == 2


def test_the_shape_drops_final_rows_by_when_they_last_changed_not_others() -> None:
    """Rows resumed with count from the resume; a change restarts a row's grace; a row not
    final, or changed and not yet emitted, stays; the drops are deletes for the next save."""
    clock = Clock()
    final = {"status": "COMPLETED_SUCCESSFULLY"}
    f, g, r = row_key("f"), row_key("g"), row_key("r")
    rows = {f: {"id": "f", **final}, g: {"id": "g", **final}, r: {"id": "r", "status": "PENDING"}}
    shape = Shape(Position(H1, "1_0", rows=3), rows, clock)
    clock.now = 10.0
    headers = {"electric-handle": H1, "electric-offset": "2_0", "electric-up-to-date": ""}
    shape.receive(200, headers, json.dumps([update("g", metadata="{}")]).encode())
    shape.saved()
    clock.now = FINAL_GRACE_S + 5
    assert shape.drop_final(FINAL_GRACE_S) == 1
    assert set(shape.rows) == {g, r}
    assert shape.unsaved().delete == [f]
    clock.now = FINAL_GRACE_S * 10
    assert shape.drop_final(FINAL_GRACE_S) == 1 and set(shape.rows) == {r}


def test_a_final_row_not_yet_emitted_is_not_dropped() -> None:
    clock = Clock()
    shape = Shape(clock=clock)
    headers = {"electric-handle": H1, "electric-offset": "1_0"}  # no up-to-date: not emitted
    body = [
        {"key": "k", "value": {"id": "k", "status": "CANCELED"}, "headers": {"operation": "insert"}}
    ]
    shape.receive(200, headers, json.dumps(body).encode())
    clock.now = FINAL_GRACE_S * 2
    assert shape.drop_final(FINAL_GRACE_S) == 0 and set(shape.rows) == {"k"}


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("COMPLETED_SUCCESSFULLY", True),
        ("COMPLETED_WITH_ERRORS", True),
        ("INTERRUPTED", True),
        ("CANCELED", True),
        ("CRASHED", True),
        ("SYSTEM_FAILURE", True),
        ("EXPIRED", True),
        ("TIMED_OUT", True),
        ("EXECUTING", False),
        ("WAITING_TO_RESUME", False),
        ("PAUSED", False),
        ("RETRYING_AFTER_FAILURE", False),
        ("DELAYED", False),
        ("PENDING", False),
    ],
)
def test_which_raw_statuses_are_final(status: str, final: bool) -> None:
    clock = Clock()
    shape = Shape(Position(H1, "1_0", rows=1), {"k": {"id": "k", "status": status}}, clock)
    clock.now = FINAL_GRACE_S
    assert shape.drop_final(FINAL_GRACE_S) == int(final)


def test_a_must_refetch_between_chunks_forgets_what_they_brought() -> None:
    """A snapshot's first chunk (no up-to-date yet: nothing emitted), then a 409: the snapshot
    that follows is all that is emitted, and the rows the first chunk brought (one of them
    final) are gone from what the grace may drop later, not left to fail that drop."""
    clock = Clock()
    shape = Shape(clock=clock)
    first = [
        {
            "key": "k",
            "value": {"id": "k", "status": "CANCELED"},
            "headers": {"operation": "insert"},
        },
        {
            "key": "m",
            "value": {"id": "m", "status": "EXECUTING"},
            "headers": {"operation": "insert"},
        },
    ]
    chunk = {"electric-handle": H1, "electric-offset": "0_0"}
    assert shape.receive(200, chunk, json.dumps(first).encode()) is None
    shape.refetch("h2")
    again = [
        {"key": "n", "value": {"id": "n", "status": "PENDING"}, "headers": {"operation": "insert"}}
    ]
    done = {"electric-handle": "h2", "electric-offset": "0_inf", "electric-up-to-date": ""}
    batch = shape.receive(200, done, json.dumps(again).encode())
    assert batch is not None and [row["id"] for row in batch.rows] == ["n"]
    clock.now = FINAL_GRACE_S * 2
    assert shape.drop_final(FINAL_GRACE_S) == 0 and set(shape.rows) == {"n"}


def test_a_row_served_again_as_it_is_is_not_emitted_again() -> None:
    """A server answering with the same rows again (no long poll, a caching proxy): a change
    that leaves its row as it was is no change, and nothing is emitted for it."""
    shape = Shape(clock=Clock())
    body = json.dumps(
        [
            {
                "key": "k",
                "value": {"id": "k", "status": "EXECUTING"},
                "headers": {"operation": "insert"},
            }
        ]
    ).encode()
    headers = {"electric-handle": H1, "electric-offset": "0_inf", "electric-up-to-date": ""}
    first = shape.receive(200, headers, body)
    assert first is not None and [row["id"] for row in first.rows] == ["k"]
    again = shape.receive(200, headers, body)
    assert again is not None and again.rows == []


def test_a_final_row_changed_again_does_not_keep_older_ones_from_their_drop() -> None:
    """Two runs end live, then the first is written again (a metadata flush): its grace starts
    again, and the second, unchanged since, is still dropped when its own grace is over."""
    clock = Clock()
    shape = Shape(clock=clock)
    final = {"status": "COMPLETED_SUCCESSFULLY"}
    live = {"electric-handle": H1, "electric-offset": "0_inf", "electric-up-to-date": ""}
    shape.receive(200, live, b"[]")  # live from here: changes count from when they come
    for offset, ident in (("1_0", "a"), ("2_0", "b")):
        clock.now += 10.0
        body = [{"key": ident, "value": {"id": ident, **final}, "headers": {"operation": "insert"}}]
        shape.receive(200, {**live, "electric-offset": offset}, json.dumps(body).encode())
    clock.now += 10.0
    again = [update("a", metadata="{}")]
    again[0]["key"] = "a"
    shape.receive(200, {**live, "electric-offset": "3_0"}, json.dumps(again).encode())
    clock.now = 20.0 + FINAL_GRACE_S + 1  # past b's grace, not a's second one
    assert shape.drop_final(FINAL_GRACE_S) == 1 and set(shape.rows) == {"a"}


def test_a_schema_that_is_no_object_keeps_the_one_before() -> None:
    """electric-schema is an object of column types: JSON of another kind is not taken for it."""
    shape = Shape(Position(H1, "1_0", schema={"isTest": {"type": "bool"}}, rows=0), {})
    headers = {"electric-handle": H1, "electric-offset": "2_0", "electric-schema": "[1, 2]"}
    shape.receive(200, {**headers, "electric-up-to-date": ""}, b"[]")
    assert shape.position.schema == {"isTest": {"type": "bool"}}
