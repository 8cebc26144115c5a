"""Inhibit rules whose source is a pile-up of a digest rule (`source_digest: {rule, min_count}`):
the config checks, the window as a table with a fixed clock on the real store, and end to end;
and sources seen again (a Realtime snapshot, a retried push), which must not mute anew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

import pytest

from relay.channels import settings_models
from relay.config_load import parse_config
from relay.errors import ConfigError
from relay.inhibition import inhibitions
from relay.model import Match, Run
from relay.store.sqlite import SQLiteStore
from relay.windows import InhibitRule
from tests.conftest import RelayFactory, Sink, sdk_run

STORM = InhibitRule.model_validate(
    {
        "name": "storm",
        "source_digest": {"rule": "per-task", "min_count": 3},
        "target_match": {"rule": "page"},
        "equal": ["taskIdentifier"],
        "duration": 600,
    }
)
PAGE = Match("page", "pager", "run")
DIGEST = Match("per-task", "hook", "run")


def failed(run_id: str, task: str = "sync") -> Run:
    return Run.model_validate({"id": run_id, "taskIdentifier": task, "status": "FAILED"})


def rules_of(run: Run) -> Collection[str]:
    """What the digest rule `per-task` and the paging rule `page` match: failures."""
    return {"per-task", "page"} if run.status == "FAILED" else set()


@pytest.fixture
def store(sqlite_store: SQLiteStore) -> SQLiteStore:
    return sqlite_store


async def muted(store: SQLiteStore, runs: list[Run], now: float, match: Match = PAGE) -> list[Any]:
    """The mute reason of `match` for each run, the runs arriving in one intake call at `now`."""
    check = await inhibitions(store, [STORM], runs, now, rules_of)
    return [None if check is None else check(run, match) for run in runs]


# ------------------------------------------------------------------------------ config


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", settings_models(), {})
    return [p.message for p in info.value.problems]


RULES = """\
channels: {c: {type: console}}
rules:
  - {name: digest, match: {status: [failure]}, notify: [c], group_by: [taskIdentifier]}
  - {name: single, match: {status: [failure]}, notify: [c]}
inhibit_rules:
"""


@pytest.mark.parametrize(
    ("inhibit", "message"),
    [
        ("{name: i, source_digest: {rule: nope, min_count: 3}}", "unknown rule: 'nope'"),
        (
            "{name: i, source_digest: {rule: single, min_count: 3}}",
            "not a digest rule (it has no `group_by`): 'single'",
        ),
        (
            "{name: i, source_digest: {rule: digest, min_count: 3}, equal: [metadata.tenant]}",
            "not in the `group_by` of rule 'digest': every run of a digest group must agree on it",
        ),
        (
            "{name: i, source_digest: {rule: digest, min_count: 3}, source_match: {event: run}}",
            "an inhibit rule needs exactly one of source_match, source_digest",
        ),
        ("{name: i}", "an inhibit rule needs exactly one of source_match, source_digest"),
        ("{name: i, source_digest: {rule: digest, min_count: 0}}", "must be at least 1 (got 0)"),
        ("{name: i, source_digest: {rule: digest}}", "required key is missing"),
        ("{name: i, source_digest: {rule: digest, min_count: 1001}}", "at most 1000 (got 1001)"),
        ("{name: i, source_digest: {rule: '', min_count: 3}}", "at least 1 character"),
        ("{name: '', source_match: {event: run}}", "at least 1 character"),
        (
            "{name: i, source_digest: {rule: digest, min_count: 3}, close_match: {event: run}}",
            "a source_digest window closes by itself when the pile-up is over",
        ),
        (
            "{name: i, source_match: {event: run}, close_match: {rule: single}}",
            "needs at least one of event, status, task, tag",
        ),
    ],
)
def test_source_digest_is_checked(inhibit: str, message: str) -> None:
    assert any(message in p for p in problems(RULES + f"  - {inhibit}\n"))


def test_a_valid_source_digest_loads() -> None:
    text = RULES + (
        "  - {name: i, source_digest: {rule: digest, min_count: 3}, equal: [taskIdentifier]}\n"
    )
    [rule] = parse_config(text, "c.yaml", settings_models(), {}).config.inhibit_rules
    assert rule.source_digest is not None and rule.source_digest.min_count == 3


def test_a_one_letter_digest_rule_and_the_largest_min_count_load() -> None:
    text = RULES.replace("name: digest", "name: d") + (
        "  - {name: i, source_digest: {rule: d, min_count: 1000}}\n"
    )
    [rule] = parse_config(text, "c.yaml", settings_models(), {}).config.inhibit_rules
    assert rule.source_digest is not None and rule.source_digest.min_count == 1000


# ------------------------------------------------------------------------------ the window


async def test_the_run_that_reaches_min_count_and_later_ones_are_inhibited(
    store: SQLiteStore,
) -> None:
    assert await muted(store, [failed("a1"), failed("a2")], now=100.0) == [None, None]
    batch = [failed("a3"), failed("a4"), failed("b1", task="other")]
    assert await muted(store, batch, now=110.0) == ["inhibited:storm", "inhibited:storm", None]
    # in one call, the runs before the pile-up keep their notifications
    burst = [failed(f"c{i}", task="burst") for i in range(4)]
    assert await muted(store, burst, now=120.0) == [None, None] + ["inhibited:storm"] * 2


async def test_only_runs_the_digest_rule_matches_make_the_pile_up(store: SQLiteStore) -> None:
    """Successes of the task, which the digest rule does not match, count for nothing: two
    failures among them are no storm yet, the third is."""
    ok = [
        Run.model_validate({"id": f"o{i}", "taskIdentifier": "sync", "status": "COMPLETED"})
        for i in range(2)
    ]
    runs = [*ok, failed("a1"), failed("a2")]
    assert await muted(store, runs, now=100.0) == [None] * 4
    assert await muted(store, [failed("a3")], now=101.0) == ["inhibited:storm"]


async def test_the_digest_rule_itself_and_other_targets(store: SQLiteStore) -> None:
    runs = [failed(f"a{i}") for i in range(4)]
    assert await muted(store, runs, now=100.0, match=DIGEST) == [None] * 4  # the digest goes out
    # a target that is no source (a run the digest rule does not match) is inhibited too
    other = Run.model_validate({"id": "x", "taskIdentifier": "sync", "status": "CRASHED"})
    check = await inhibitions(store, [STORM], [other], 101.0, lambda run: ())
    assert check is not None and check(other, PAGE) == "inhibited:storm"


async def test_a_pile_up_counts_runs_once_and_lapses_after_duration(store: SQLiteStore) -> None:
    a1 = failed("a1")
    for now in (100.0, 101.0, 102.0):  # one run updated three times is one run
        assert await muted(store, [a1], now) == [None]
    assert await muted(store, [failed("a2"), failed("a3")], now=300.0) == [None, "inhibited:storm"]
    # 600 s after a1, a1 no longer counts: a2, a3 and a4 still make three
    assert await muted(store, [failed("a4")], now=750.0) == ["inhibited:storm"]
    # 600 s after a3, only a4 and a5 are recent: the window is closed again
    assert await muted(store, [failed("a5")], now=901.0) == [None]


async def test_a_run_seen_again_is_not_counted_again(store: SQLiteStore) -> None:
    old = [failed(f"a{i}") for i in range(3)]
    assert await muted(store, old, now=100.0) == [None, None, "inhibited:storm"]
    assert await muted(store, [failed("b1")], now=1000.0) == [None]  # the a's have lapsed
    # a Realtime snapshot hours later repeats the three failures: no new pile-up
    assert await muted(store, old, now=20_000.0) == [None, None, None]
    assert await muted(store, [failed("b2")], now=20_001.0) == [None]


async def test_a_lapsed_run_updated_again_is_not_counted_again(store: SQLiteStore) -> None:
    """A pile-up counts runs, not updates: the three runs, each with a newer update (a retry
    that failed again) once they lapsed and b1 pruned them, make no new pile-up."""

    def update(run_id: str, minute: int) -> Run:
        updated = f"2026-11-25T10:{minute:02d}:00Z"
        run = {"id": run_id, "taskIdentifier": "sync", "status": "FAILED", "updatedAt": updated}
        return Run.model_validate(run)

    first = [update(f"a{i}", 0) for i in range(3)]
    assert await muted(store, first, now=100.0) == [None, None, "inhibited:storm"]
    assert await muted(store, [failed("b1")], now=1000.0) == [None]
    again = [update(f"a{i}", 30) for i in range(3)]
    assert await muted(store, again, now=1001.0) == [None, None, None]


async def test_a_pile_up_keeps_its_newest_runs(store: SQLiteStore) -> None:
    """Of four runs (100 to 400) the newest three are kept: with a fifth at 850, a3, a4 and a5
    are three within 600 s."""
    for n, now in enumerate((100.0, 200.0, 300.0, 400.0), start=1):
        await muted(store, [failed(f"a{n}")], now)
    assert await muted(store, [failed("a5")], now=850.0) == ["inhibited:storm"]


async def test_a_run_keeps_what_its_first_arrival_found(store: SQLiteStore) -> None:
    """a1 arrived before the pile-up of its call: a later update of it in the same call
    (counted once) leaves its notification out of the inhibition, as its first was."""
    runs = [failed("a1"), failed("a2"), failed("a3"), failed("a1")]
    assert await muted(store, runs, now=100.0) == [None, None, "inhibited:storm", None]


DEPLOY_BROKE = InhibitRule.model_validate(
    {"name": "broken", "source_match": {"status": "CRASHED"}, "duration": 600}
)


def crashed(updated: str | None) -> Run:
    run = {"id": "run_src", "taskIdentifier": "migrate", "status": "CRASHED", "updatedAt": updated}
    return Run.model_validate(run)


async def inhibited(store: SQLiteStore, source: Run, now: float) -> str | None:
    """The mute reason of a failure of another run arriving with `source` at `now`."""
    target = failed("target")
    check = await inhibitions(store, [DEPLOY_BROKE], [source, target], now)
    return None if check is None else check(target, PAGE)


@pytest.mark.parametrize("updated", [None, "2026-11-25T10:00:00Z"])
async def test_a_source_seen_again_opens_no_window(store: SQLiteStore, updated: str) -> None:
    assert await inhibited(store, crashed(updated), now=100.0) == "inhibited:broken"
    # the same update again after the window closed (a snapshot, a retried push or alert)
    assert await inhibited(store, crashed(updated), now=5000.0) is None


async def test_a_rule_without_close_match_keeps_no_source_times(store: SQLiteStore) -> None:
    """Only a window that an update can close needs when its newest source happened."""
    assert await inhibited(store, crashed("2026-11-25T10:00:00Z"), now=100.0) is not None
    assert await store.kv_list("inhibit_opened") == {}


async def test_a_newer_source_update_extends_the_window(store: SQLiteStore) -> None:
    assert await inhibited(store, crashed("2026-11-25T10:00:00Z"), now=100.0) is not None
    assert await inhibited(store, crashed("2026-11-25T09:00:00Z"), now=5000.0) is None  # stale
    assert await inhibited(store, crashed("2026-11-25T11:00:00Z"), now=6000.0) is not None


async def test_a_source_is_not_muted_by_its_own_window(store: SQLiteStore) -> None:
    """The crash that opens the window fits the rule's target (every run) too: its own
    notification goes out, the other run's is inhibited."""
    source, target = crashed(None), failed("target")
    check = await inhibitions(store, [DEPLOY_BROKE], [source, target], 100.0)
    assert check is not None and check(target, PAGE) == "inhibited:broken"
    assert check(source, PAGE) is None


async def test_a_realtime_rows_v3_status_opens_a_window(store: SQLiteStore) -> None:
    """A source's status fits a Realtime row's v3 name (`v3Status`) as a silence's does."""
    rule = InhibitRule.model_validate({"name": "frozen", "source_match": {"status": "FROZEN"}})
    row = {"id": "run_paused", "taskIdentifier": "sync", "status": "WAITING", "v3Status": "FROZEN"}
    target = failed("target")
    check = await inhibitions(store, [rule], [Run.model_validate(row), target], 100.0)
    assert check is not None and check(target, PAGE) == "inhibited:frozen"


def migrate(status: str, minute: int) -> Run:
    updated = f"2026-11-25T10:{minute:02d}:00Z"
    run = {"id": "run_src", "taskIdentifier": "migrate", "status": status, "updatedAt": updated}
    return Run.model_validate(run)


async def test_an_update_as_new_as_its_runs_last_is_a_source(store: SQLiteStore) -> None:
    """Intake ignores an update older than its run's last, not one of the same `updatedAt`
    (another status in the same millisecond): inhibition takes it as intake does."""
    target = failed("target")
    runs = [migrate("EXECUTING", 0), migrate("CRASHED", 0), target]
    check = await inhibitions(store, [DEPLOY_BROKE], runs, 100.0)
    assert check is not None and check(target, PAGE) == "inhibited:broken"


async def test_an_update_older_than_any_before_it_in_the_call_is_stale(store: SQLiteStore) -> None:
    """Stale against the newest update of its run earlier in the call (10:20), not the last
    one (10:05): the crash at 10:10 opens no window."""
    target = failed("target")
    runs = [migrate("EXECUTING", 20), migrate("EXECUTING", 5), migrate("CRASHED", 10), target]
    check = await inhibitions(store, [DEPLOY_BROKE], runs, 100.0)
    assert check is None or check(target, PAGE) is None


PER_TASK = InhibitRule.model_validate(
    {"name": "crashed-task", "source_match": {"status": "CRASHED"}, "equal": ["taskIdentifier"]}
    | {"duration": 600}
)


def of_task(run_id: str, task: str, status: str) -> Run:
    return Run.model_validate({"id": run_id, "taskIdentifier": task, "status": status})


async def test_a_window_is_closed_at_its_end(store: SQLiteStore) -> None:
    """A window opened at 100 for 600 s holds until 700, not at 700: there, only the window of
    the other task, opened at 700, mutes."""
    await inhibitions(store, [PER_TASK], [of_task("c1", "a", "CRASHED")], 100.0)
    target = of_task("t1", "a", "FAILED")
    check = await inhibitions(store, [PER_TASK], [target], 699.0)
    assert check is not None and check(target, PAGE) == "inhibited:crashed-task"
    check = await inhibitions(store, [PER_TASK], [of_task("c2", "b", "CRASHED"), target], 700.0)
    assert check is not None and check(target, PAGE) is None
    assert check(of_task("t2", "b", "FAILED"), PAGE) == "inhibited:crashed-task"


async def test_a_pile_up_lapses_exactly_duration_after_its_runs(store: SQLiteStore) -> None:
    """A run counts for `duration` after it arrived, not at its end: a target that is no
    source, at the runs' arrival + 600, finds no pile-up."""
    assert (await muted(store, [failed(f"a{i}") for i in range(3)], now=100.0))[-1] is not None
    other = of_task("x", "sync", "CRASHED")
    check = await inhibitions(store, [STORM], [other], 699.0, lambda run: ())
    assert check is not None and check(other, PAGE) == "inhibited:storm"
    check = await inhibitions(store, [STORM], [other], 700.0, lambda run: ())
    assert check is None or check(other, PAGE) is None


MAINTENANCE = InhibitRule.model_validate(
    {
        "name": "maintenance",
        "source_match": {"task": "maintenance", "status": "EXECUTING"},
        "close_match": {"task": "maintenance", "status": "COMPLETED"},
        "duration": 3600,
    }
)


def maintenance(status: str, minute: int, run_id: str = "run_maint") -> Run:
    updated = f"2026-11-25T10:{minute:02d}:00Z"
    run = {"id": run_id, "taskIdentifier": "maintenance", "status": status, "updatedAt": updated}
    return Run.model_validate(run)


async def inhibited_by(store: SQLiteStore, runs: list[Run], now: float) -> str | None:
    """The mute reason of a failure of another run arriving after `runs` (one call) at `now`."""
    target = failed("target")
    check = await inhibitions(store, [MAINTENANCE], [*runs, target], now)
    return None if check is None else check(target, PAGE)


async def test_an_update_matching_close_match_ends_the_window_at_once(
    store: SQLiteStore,
) -> None:
    """A maintenance run opens a window of an hour; its COMPLETED ends it there and then, as a
    resolved source alert ends its inhibition in Alertmanager."""
    assert await inhibited_by(store, [maintenance("EXECUTING", 1)], now=100.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 9)], now=200.0) is None
    assert await inhibited_by(store, [], now=201.0) is None  # kept in the store
    # a new maintenance opens again; the old COMPLETED delivered again does not close it
    assert await inhibited_by(store, [maintenance("EXECUTING", 20, "run_m2")], now=300.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 9)], now=400.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 30, "run_m2")], 500.0) is None
    # in one call, in order: opened then closed is closed; closed then opened is open
    opened_closed = [maintenance("EXECUTING", 1, "m3"), maintenance("COMPLETED", 2, "m3")]
    assert await inhibited_by(store, opened_closed, now=600.0) is None
    closed_opened = [maintenance("COMPLETED", 3, "m4"), maintenance("EXECUTING", 4, "m5")]
    assert await inhibited_by(store, closed_opened, now=700.0)


async def test_a_close_older_than_the_newest_source_ends_nothing(store: SQLiteStore) -> None:
    """A maintenance that ended at 10:09, heard of late (a retried push), does not end the
    window of one that began at 10:20; a close after it does."""
    assert await inhibited_by(store, [maintenance("EXECUTING", 20, "run_new")], now=100.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 9, "run_old")], now=200.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 21, "run_new")], 300.0) is None


async def test_a_close_as_old_as_the_newest_source_ends_the_window(store: SQLiteStore) -> None:
    """Only a close older than the newest source ends nothing: one of the same minute does."""
    assert await inhibited_by(store, [maintenance("EXECUTING", 5, "run_a")], now=100.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 5, "run_b")], now=200.0) is None


async def test_an_older_source_keeps_the_newest_sources_time(store: SQLiteStore) -> None:
    """A maintenance begun at 10:10, heard of after one begun at 10:20, leaves the newest source
    at 10:20: a close at 10:15 ends nothing."""
    assert await inhibited_by(store, [maintenance("EXECUTING", 20, "run_a")], now=100.0)
    assert await inhibited_by(store, [maintenance("EXECUTING", 10, "run_b")], now=150.0)
    assert await inhibited_by(store, [maintenance("COMPLETED", 15, "run_b")], now=200.0)


async def test_a_close_with_no_window_open_writes_nothing(store: SQLiteStore) -> None:
    assert await inhibited_by(store, [maintenance("COMPLETED", 9)], now=100.0) is None
    assert await store.kv_list("inhibit") == {}


# ------------------------------------------------------------------------------ end to end

CONFIG = """\
channels:
  hook: {{type: webhook, url: "{url}/digest"}}
  pager: {{type: webhook, url: "{url}/page"}}
inhibit_rules:
  - name: storm
    source_digest: {{rule: per-task, min_count: 3}}
    target_match: {{rule: page}}
    equal: [taskIdentifier]
    duration: 10m
rules:
  - name: per-task
    match: {{status: [failure]}}
    notify: [hook]
    group_by: [taskIdentifier]
    group_wait: 1h
    continue: true
  - name: page
    match: {{status: [failure]}}
    notify: [pager]
"""


def failure(i: int, task: str = "sync-customer-data") -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=f"run_storm_{i:02d}", taskIdentifier=task)
    return run


async def test_a_failure_storm_of_one_task_stops_paging_for_that_task(
    relay: RelayFactory, sink: Sink
) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    for i in range(5):
        assert (await r.post(failure(i)))[0] == 202
    await r.post(failure(9, task="render-video"))
    await sink.wait_for(3)
    await asyncio.sleep(0.3)
    paged = [g.json()["run"]["id"] for g in sink.received if g.path == "/page"]
    assert paged == ["run_storm_00", "run_storm_01", "run_storm_09"]
    async with r.http.get(r.url + "/v1/notifications?rule=page&state=muted") as resp:
        rows = (await resp.json())["notifications"]
    assert sorted(row["run_id"] for row in rows) == [f"run_storm_{i:02d}" for i in (2, 3, 4)]
    assert {row["reason"] for row in rows} == {"inhibited:storm"}
    async with r.http.get(r.url + "/v1/notifications?rule=per-task&state=pending") as resp:
        assert len((await resp.json())["notifications"]) == 6  # the digests wait, never muted
