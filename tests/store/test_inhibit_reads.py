"""Inhibit windows are read a batch at a time, on every engine: a POST of 5,000 runs of distinct
tasks against 50 inhibit rules (`equal: [taskIdentifier]`) read 250,000 windows with one awaited
store read each (25 s), and each source run's bookkeeping one key at a time. The store reads of
an intake call are counted here on a real store; no timing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from relay.inhibition import WINDOWS_PER_READ, inhibitions
from relay.model import Match, Run
from relay.store import Store
from relay.windows import InhibitRule
from tests.store.conftest import decide, make_run


class Counting:
    """A real store that counts the reads made through it (one-key or many-key alike)."""

    def __init__(self, store: Store) -> None:
        self.store, self.reads = store, 0

    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]:
        self.reads += 1
        return await self.store.kv_get_many(namespace, keys)

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]:
        self.reads += 1
        return await self.store.runs_updated_ms(run_ids)

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None:
        await self.store.kv_put(namespace, key, value, now)


def deploys(count: int) -> list[InhibitRule]:
    """`count` deployment rules muting failures of the deployed task; the first can be closed."""
    return [
        InhibitRule(
            name=f"deploy-{i}",
            source_match={"tag": f"deploy-{i}"},
            close_match={"tag": f"undeploy-{i}"} if i == 0 else None,
            target_match={"status": "failure"},
            equal=["taskIdentifier"],
        )
        for i in range(count)
    ]


def task_run(run_id: str, task: str, status: str, at_s: float, **extra: Any) -> Run:
    return make_run(run_id, status=status, at_s=at_s, taskIdentifier=task, **extra)


async def test_many_keys_are_read_as_each_key_alone(store: Store) -> None:
    """kv_get_many answers as kv_get does, key by key, and runs_updated_ms reads every run asked
    for, beyond SQLite's limit of 32,766 variables in one statement."""
    await store.kv_put("inhibit", "a", "1.5", now=1.0)
    await store.kv_put("inhibit", "k\x00", "2.5", now=1.0)
    await store.kv_put("inhibit_count", "b", "{}", now=1.0)
    keys = ["a", "b", "k\x00", *(f"missing-{n}" for n in range(40_000))]
    many = await store.kv_get_many("inhibit", keys)
    assert many == {"a": "1.5", "k\x00": (await store.kv_get("inhibit", "k\x00")) or ""}
    assert await store.kv_get_many("inhibit", []) == {}
    runs = [make_run("run_a", at_s=1000), make_run("run_ünï", at_s=2000)]
    await store.observe(runs, decide, now=1.0)
    asked = ["run_a", "run_ünï", "run_unseen", *(f"run_{n}" for n in range(40_000))]
    assert await store.runs_updated_ms(asked) == {"run_a": 1_000_000, "run_ünï": 2_000_000}


async def test_an_intake_call_reads_its_windows_a_batch_at_a_time(store: Store) -> None:
    """10 deployments, then 260 failed runs of distinct tasks against 40 inhibit rules: a
    handful of reads each, where there were one per source and namespace (40) and one per
    target window (10,400). What is muted stays the same."""
    rules = deploys(40)
    counting = Counting(store)
    sources = [
        task_run(f"dep_{n}", f"task-{n}", "COMPLETED", 1000, tags=["deploy-0"]) for n in range(10)
    ]
    await inhibitions(counting, rules, sources, now=5000.0)
    assert counting.reads <= 4  # stored updatedAt, sources, windows, their newest sources
    counting.reads = 0
    failed = [task_run(f"run_{n}", f"task-{n}", "FAILED", 1001) for n in range(260)]
    check = await inhibitions(counting, rules, failed, now=5001.0)
    assert len(failed) * len(rules) > WINDOWS_PER_READ
    assert counting.reads <= len(failed) * len(rules) // WINDOWS_PER_READ + 1
    assert check is not None
    match = Match("failures", "hook", "t")
    muted = [check(run, match) for run in failed]
    assert muted == ["inhibited:deploy-0"] * 10 + [None] * 250
    # a closer and a repeated source: their bookkeeping is read in one go too
    counting.reads = 0
    closers = [
        task_run(f"und_{n}", f"task-{n}", "COMPLETED", 1002, tags=["undeploy-0"]) for n in range(5)
    ]
    await inhibitions(counting, rules, [*sources, *closers], now=5002.0)
    assert counting.reads <= 4
    check = await inhibitions(counting, rules, failed, now=5003.0)
    assert check is not None
    muted = [check(run, match) for run in failed]
    assert muted == [None] * 5 + ["inhibited:deploy-0"] * 5 + [None] * 250


async def test_a_pile_up_is_counted_with_its_reads_in_one_go(store: Store) -> None:
    """A source_digest rule reads each counted run's pile-up and bookkeeping in one go."""
    rules = [
        InhibitRule.model_validate(
            {
                "name": "storm",
                "source_digest": {"rule": "failures", "min_count": 3},
                "target_match": {"status": "failure"},
                "equal": ["taskIdentifier"],
            }
        )
    ]
    counting = Counting(store)
    failed = [task_run(f"run_{n}", f"task-{n % 20}", "FAILED", 1000) for n in range(60)]
    check = await inhibitions(
        counting, rules, failed, now=5000.0, rules_of=lambda run: {"failures"}
    )
    assert counting.reads <= 3 + 1  # stored updatedAt, sources, pile-ups; the targets' pile-ups
    assert check is not None
    other, own = Match("other", "hook", "t"), Match("failures", "hook", "t")
    # the third run of a task reaches min_count: it and the later ones are inhibited
    assert [check(run, other) for run in failed] == [None] * 40 + ["inhibited:storm"] * 20
    assert check(failed[-1], own) is None  # the digest rule's own notifications never are
