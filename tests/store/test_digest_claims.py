"""A digest given back unsent goes again as it was: the same runs, so the same dgs_ id.

Its rows were claimed and may have gone out: a stop cut the send short and gave them back, the
send failed and waits for a retry, or the process was killed with -9 and the next start (or
another replica) takes its claims back. Runs that came due meanwhile must not be merged into it
(a receiver would see the first runs again under a new id): they go in a digest of their own.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

import asyncpg
import pytest

from relay.errors import StoreUnavailable
from relay.grouping import digest_id, group_key
from relay.model import Decision, Match, Notification, Run, RunState
from relay.store import Store
from tests.store.conftest import Engine, decide, decide_digest, ids, make_run

How = Literal["stop", "retry", "restart"]
LEASE_S = 3600.0  # the first claim's lease has not ended when the rows are claimed again


async def _observe(store: Store, run_id: str, now: float) -> str:
    [ident] = ids(await store.observe([make_run(run_id, taskIdentifier="t/a")], decide_digest, now))
    return ident


async def _give_back(engine: Engine, store: Store, rows: list[Notification], how: How) -> Store:
    """The claimed rows back in the outbox unsent, at 1000 (past every not_before here); the
    store that claims next."""
    for row in rows:
        if how == "stop":
            await store.postpone(row.id, now=1000.0, not_before=1000.0)
        elif how == "retry":
            await store.mark_retry(
                [(row.id, 1)], now=1000.0, not_before=1000.0, reason="timeout", error="x"
            )
    if how != "restart":
        return store
    await store.close()  # as kill -9 leaves them: still leased
    again = engine.make()
    await again.open()
    await again.release_leases()
    return again


@pytest.mark.parametrize("how", ["stop", "retry", "restart"])
async def test_a_digest_given_back_unsent_goes_again_as_it_was(engine: Engine, how: How) -> None:
    store = engine.make()
    await store.open()
    try:
        first = {await _observe(store, "run_1", 0.0), await _observe(store, "run_2", 10.0)}
        sent = await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)  # digest A, in flight
        assert {n.id for n in sent} == first
        # while A is on its way, two more runs come due (at 331) and go as digest B
        second = {await _observe(store, "run_3", 31.0), await _observe(store, "run_4", 32.0)}
        also = await store.claim("d", now=331.0, limit=10, lease_s=LEASE_S)
        assert {n.id for n in also} == second
        later = await _observe(store, "run_5", 340.0)
        store = await _give_back(engine, store, [*sent, *also], how)

        await _claimed_as(store, first, second, {later})
    finally:
        await store.close()


async def _claimed_as(store: Store, *digests: set[str]) -> None:
    """The next claims, one for each digest given, take exactly its rows (so its id)."""
    claims = [await store.claim("d", now=2000.0, limit=10, lease_s=LEASE_S) for _ in digests]
    assert [digest_id([n.id for n in c]) for c in claims] == [digest_id(sorted(d)) for d in digests]


async def test_a_digest_put_off_before_its_send_joins_the_runs_due_with_it(engine: Engine) -> None:
    """Claimed while another digest of its group was on its way, a digest is put off
    (keep_claim false): nothing of it went out, so its runs go with those due beside them, in
    one digest, not as a claim of their own before them."""
    store = engine.make()
    await store.open()
    try:
        first = {await _observe(store, "run_1", 0.0)}
        put_off = await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)
        assert {n.id for n in put_off} == first
        for row in put_off:
            assert await store.postpone(row.id, now=31.0, not_before=1000.0, keep_claim=False)
        later = await _observe(store, "run_2", 40.0)  # due at 340: with run_1 by 2000
        await _claimed_as(store, {*first, later})
    finally:
        await store.close()


async def test_a_digest_put_off_as_the_next_was_set_goes_with_it(engine: Engine) -> None:
    """Put off group_interval from its replica's clock a few ms after another replica's digest
    set the group's next one (that one's flush came between the check and the put-off): due
    those ms after the next digest, it went alone beside it, its runs older, so not held back
    (two digests of one group 0-70 ms apart, 7 times in a 6-minute soak). It joins the digest
    the group waits for."""
    store = engine.make()
    await store.open()
    try:
        first = await _observe(store, "run_1", 0.0)
        on_its_way = await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)
        assert [n.id for n in on_its_way] == [first]
        joined = await _observe(store, "run_2", 31.0)  # next digest: 31 + 300
        late = await store.claim("d", now=331.0, limit=10, lease_s=LEASE_S)
        assert {n.id for n in late} == {joined}
        key = group_key("dg", "d", {"taskIdentifier": "t/a"})
        await store.group_flushed(key, 335.0, 635.0)  # that digest went: the next at 635
        await store.mark_sent([(n.id, 1) for n in on_its_way], now=335.0)
        newer = await _observe(store, "run_3", 340.0)  # joins the one due at 635
        for row in late:  # put off by another replica's check at 335.01: 635.01
            assert await store.postpone(row.id, now=336.0, not_before=635.01, keep_claim=False)
        claimed = await store.claim("d", now=635.0, limit=10, lease_s=LEASE_S)
        assert {n.id for n in claimed} == {joined, newer}
    finally:
        await store.close()


def _digest_or_alone(run: Run, previous: RunState | None) -> Decision:
    """`decide_digest`, but a run tagged `alone` goes to channel d on its own (rule r1)."""
    if not run.tags:
        return decide_digest(run, previous)
    decision = decide(run, previous)
    return Decision(state=decision.state, matches=(Match("r1", "d", "t1"),))


async def test_a_claim_of_digests_and_single_runs_is_oldest_first(store: Store) -> None:
    """A channel's claim holds single rows and digest groups (each won under its own lock): the
    channel loop sends them in the claim's order, so the digest due first goes first, whichever
    kind of row was picked first."""
    [digest] = ids(
        await store.observe([make_run("run_g", taskIdentifier="t/a")], _digest_or_alone, 0.0)
    )
    [alone] = ids(await store.observe([make_run("run_s", tags=["alone"])], _digest_or_alone, 35.0))
    claimed = await store.claim("d", now=40.0, limit=10, lease_s=LEASE_S)  # digest due at 30
    assert [n.id for n in claimed] == [digest, alone]


async def _dead(store: Store, rows: list[Notification]) -> None:
    marks = [(row.id, 1) for row in rows]
    await store.mark_dead(marks, now=1000.0, reason="client_error", error="400")


@pytest.mark.parametrize("replay", ["all", "by id"])
async def test_a_replayed_dead_digest_goes_again_as_it_was(engine: Engine, replay: str) -> None:
    """Two dead digests of one group replayed together, while a newer run of the group is due:
    each goes again alone with its runs (so its id), the newer run in a digest of its own. A
    replay naming one row of a dead digest brings back the digest, not that row alone."""
    store = engine.make()
    await store.open()
    try:
        first = {await _observe(store, "run_1", 0.0), await _observe(store, "run_2", 10.0)}
        sent = await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)
        await _dead(store, sent)
        second = {await _observe(store, "run_3", 31.0), await _observe(store, "run_4", 32.0)}
        also = await store.claim("d", now=331.0, limit=10, lease_s=LEASE_S)
        await _dead(store, also)
        assert ({n.id for n in sent}, {n.id for n in also}) == (first, second)
        later = await _observe(store, "run_5", 340.0)

        named = None if replay == "all" else [min(first), max(second)]
        assert await store.replay(named, 2000.0) == 4
        await _claimed_as(store, first, second, {later})
    finally:
        await store.close()


async def test_a_replay_naming_one_dead_digest_leaves_the_other_dead_letters(
    engine: Engine,
) -> None:
    """`relay dlq replay ID` of one row of a dead digest brings back that digest, and only it:
    another dead digest and a dead single notification stay in the dead letters."""
    store = engine.make()
    await store.open()
    try:
        first = {await _observe(store, "run_1", 0.0), await _observe(store, "run_2", 10.0)}
        await _dead(store, await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S))
        second = {await _observe(store, "run_3", 31.0), await _observe(store, "run_4", 32.0)}
        await _dead(store, await store.claim("d", now=331.0, limit=10, lease_s=LEASE_S))
        [single] = ids(await store.observe([make_run("run_s")], decide, 400.0))
        await _dead(store, await store.claim("c1", now=400.0, limit=10, lease_s=LEASE_S))
        assert await store.replay([min(first)], 2000.0) == 2
        assert {n.id for n in await store.dead_letters()} == second | {single}
    finally:
        await store.close()


async def test_a_replay_naming_an_id_with_a_nul_moves_nothing(engine: Engine) -> None:
    """SQLite's json_each ends a text at a NUL: `ntf_x\\0y` named ntf_x, and its dead digest."""
    store = engine.make()
    await store.open()
    try:
        first = {await _observe(store, "run_1", 0.0), await _observe(store, "run_2", 10.0)}
        await _dead(store, await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S))
        assert await store.replay([f"{min(first)}\x00y"], 2000.0) == 0
        assert {n.id for n in await store.dead_letters()} == first
    finally:
        await store.close()


async def test_a_digest_is_marked_whole_each_row_with_its_attempts(engine: Engine) -> None:
    """One write marks every row of the message, each with its own attempts and event; a row
    no longer pending (muted meanwhile) is left as it is and does not stop the others."""
    store = engine.make()
    await store.open()
    try:
        a, b, c = [await _observe(store, f"run_{i}", float(i)) for i in range(3)]
        await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)
        await store.mark_muted(b, now=31.0, silence_id="sil_1", attempts=0)
        await store.mark_sent([(a, 1), (b, 1), (c, 3)], now=32.0, receipt="r")
        got = {ident: await store.get(ident) for ident in (a, b, c)}
        assert {i: (n.state, n.attempts) for i, n in got.items() if n} == {
            a: ("sent", 1),
            b: ("muted", 0),
            c: ("sent", 3),
        }
        assert [(e["kind"], e["attempts"]) for e in await store.events(c)][-1] == ("sent", 3)
        assert [e["kind"] for e in await store.events(b)][-1] == "muted"
    finally:
        await store.close()


async def _refuse_events_of(engine: Engine, ident: str) -> None:
    """A write that records an event of `ident` fails (as a full disk or a lost connection
    would, halfway through a message's rows)."""
    if engine.name == "sqlite":
        db = sqlite3.connect(engine.url.removeprefix("sqlite:///"), timeout=10)
        with db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON events"
                f" WHEN NEW.notification_id = '{ident}' BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
        db.close()
        return
    conn = await asyncpg.connect(engine.url)
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.notification_id = '{ident}' THEN RAISE EXCEPTION 'no'; END IF;"
            " RETURN NEW; END $$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON relay_events"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("outcome", ["sent", "retry", "dead"])
async def test_a_digest_whose_outcome_write_fails_is_marked_not_at_all(
    engine: Engine, outcome: str
) -> None:
    """Part of a digest marked and the rest still leased would send the rest again as a smaller
    digest under a new id: a write that fails on one row changes none of them."""
    store = engine.make()
    await store.open()
    try:
        rows = [await _observe(store, f"run_{i}", float(i)) for i in range(3)]
        await store.claim("d", now=30.0, limit=10, lease_s=LEASE_S)
        await _refuse_events_of(engine, rows[-1])
        marks = [(ident, 1) for ident in rows]
        with pytest.raises((StoreUnavailable, asyncpg.PostgresError)):
            if outcome == "sent":
                await store.mark_sent(marks, now=32.0)
            elif outcome == "retry":
                await store.mark_retry(marks, now=32.0, not_before=99.0, reason="x", error="x")
            else:
                await store.mark_dead(marks, now=32.0, reason="x", error="x")
        assert (await store.counts())["pending"] == 3
        assert all(n.attempts == 0 for n in await store.claim("d", 9e9, 10, LEASE_S))
    finally:
        await store.close()
