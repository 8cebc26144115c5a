"""The rows of one batch (one `observe` call: a POST /v1/runs, a Realtime batch) are claimed in
the batch's order, on every engine. They share the call's `now`; their ids are hashes, so a
claim ordered by (not_before, created_at, id) took them in an order of its own, and a
rate-limited channel sent a batch shuffled."""

from __future__ import annotations

from relay.store import HistoryQuery, Store
from tests.store.conftest import decide, decide_digest, ids, make_run

NOW = 1_790_000_000.0  # a wall-clock time: the precision a real `now` leaves
RUNS = [f"run_{i:02d}_{'zyxwvutsrqponmlkjihgfedcba'[i]}" for i in range(20)]


async def test_a_batch_is_claimed_in_its_order(store: Store) -> None:
    batch = ids(await store.observe([make_run(r, tags=["c1"]) for r in RUNS], decide, NOW))
    assert len(batch) == len(RUNS) and batch != sorted(batch)  # not the ids' own order
    claimed = [n.id for _ in range(4) for n in await store.claim("c1", NOW, 5, 60.0)]
    assert claimed == batch


async def test_a_later_batch_comes_after_the_whole_earlier_one(store: Store) -> None:
    first = ids(await store.observe([make_run(r, tags=["c1"]) for r in RUNS], decide, NOW))
    later = [make_run(f"late_{i}", tags=["c1"]) for i in range(3)]
    second = ids(await store.observe(later, decide, NOW + 1e-6))
    claimed = await store.claim("c1", NOW + 1.0, 100, 60.0)
    assert [n.id for n in claimed] == first + second


async def test_each_channel_gets_its_rows_of_a_batch_in_order(store: Store) -> None:
    runs = [make_run(r, tags=["c1", "c2"]) for r in RUNS]
    batch = ids(await store.observe(runs, decide, NOW))
    for channel in ("c1", "c2"):
        claimed = await store.claim(channel, NOW, 100, 60.0)
        assert [n.id for n in claimed] == [i for i in batch if i in {n.id for n in claimed}]
        assert [n.run_id for n in claimed] == RUNS


async def test_a_digest_group_is_claimed_in_batch_order(store: Store) -> None:
    runs = [make_run(r, taskIdentifier="task") for r in RUNS]
    batch = ids(await store.observe(runs, decide_digest, NOW))
    claimed = await store.claim("d", NOW + 30.0, 1, 60.0)  # group_wait 30 s; the group whole
    assert [n.id for n in claimed] == batch


async def test_history_pages_a_batch_newest_first_without_gaps(store: Store) -> None:
    batch = ids(await store.observe([make_run(r, tags=["c1"]) for r in RUNS], decide, NOW))
    seen: list[str] = []
    after = None
    for _ in range(len(RUNS)):
        page = await store.history(HistoryQuery(after=after, limit=3))
        if not page:
            break
        seen += [n.id for n in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == batch[::-1]
