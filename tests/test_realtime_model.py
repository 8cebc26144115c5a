"""A seeded random model of the Realtime follower (SPEC §2): `relay serve` follows a fake shape
server (tests/fakes/realtime.py, Electric or native flavour by seed) through a random history of
run rows, with faults (5xx, 429 with Retry-After, a body cut short, an answer slower than the
client's timeout, must-refetch in a 200's body), `409 must-refetch` to a new handle, the shape
dropped while relay is down, and `kill -9` + restart at random points.

Changes are released one exchange at a time. After each, relay's live request at the new
offset is a *stable point*: the changes were submitted (and the position saved after them), so
the state every run has there was seen. The model, from SPEC alone: a rule fires once per run,
on the first update it matches (first match wins unless `continue`). So relay must alert each
(run, rule) some stable state matches, may alert each (run, rule) any state the run reached
matches (changes in one answer, or caught up after a restart, merge into the last), never
anything else, and never under two idempotency ids for one (run, rule) (the same id twice, after
a kill -9, is allowed). Sizes grow with RELAY_SLOW=1. A failure names its seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tests.conftest import SLOW as SLOW_MODE  # SLOW here is the fake's fault kind
from tests.conftest import RelayProcess, Sink
from tests.fakes.realtime import (
    CUT,
    FIXTURES,
    SLOW,
    UP_TO_DATE,
    Exchange,
    FakeRealtime,
    fake_realtime,
    native_value,
    pg_timestamp,
    raw_row,
    row_key,
)
from tests.test_realtime import SECRET, TAG
from tests.test_rule_sequences import settled

SEEDS = range(40) if SLOW_MODE else range(2)
RUNS = 8 if SLOW_MODE else 2
KILLS = 3 if SLOW_MODE else 2  # at most, each a restart of relay serve (~1 s)
FIRST_HANDLE = "fake-handle-1"  # the fake's handle of its first snapshot
START = datetime(2026, 8, 20, 9, 0)
RAW_WIRE = FIXTURES / "realtime-run" / "wire-value"
# raw TaskRun status -> the public status (TRIGGER.md §1.3)
PUBLIC = {
    "PENDING": "QUEUED",
    "EXECUTING": "EXECUTING",
    "RETRYING_AFTER_FAILURE": "EXECUTING",
    "WAITING_TO_RESUME": "WAITING",
    "COMPLETED_SUCCESSFULLY": "COMPLETED",
    "COMPLETED_WITH_ERRORS": "FAILED",
    "INTERRUPTED": "FAILED",
    "CRASHED": "CRASHED",
    "SYSTEM_FAILURE": "SYSTEM_FAILURE",
    "TIMED_OUT": "TIMED_OUT",
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
}
FAILURES = ["COMPLETED_WITH_ERRORS", "INTERRUPTED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT"]
ENDS = [*FAILURES, "COMPLETED_SUCCESSFULLY", "COMPLETED_SUCCESSFULLY", "CANCELED", "EXPIRED"]
RULES: list[dict[str, Any]] = [
    {"name": "failures", "match": {"status": ["failure"]}, "notify": ["hook"], "continue": True},
    {"name": "crashed", "match": {"status": ["CRASHED", "SYSTEM_FAILURE"]}, "notify": ["hook"]},
    {"name": "waiting", "match": {"status": ["WAITING"]}, "notify": ["hook"], "continue": True},
    {"name": "done", "match": {"status": ["COMPLETED", "CANCELED"]}, "notify": ["hook"]},
]
FAILURE = {"FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", "INTERRUPTED"}
Key = tuple[str, str]  # (run id, rule)


def rules_for(status: str) -> list[str]:
    """The rules an update in `status` reaches: in order, until a match without continue."""
    out = []
    for rule in RULES:
        wanted = {s for s in rule["match"]["status"] if s != "failure"}
        wanted |= FAILURE if "failure" in rule["match"]["status"] else set()
        if status in wanted:
            out.append(rule["name"])
            if not rule.get("continue"):
                break
    return out


def lifecycle(rng: random.Random) -> list[str]:
    """Raw statuses of one run: queued, executing, waits and retries, an end; sometimes a
    failure that a retry takes back before the end."""
    out = ["PENDING", "EXECUTING"]
    for _ in range(rng.randint(0, 3)):
        detour = rng.choice(["WAITING_TO_RESUME", "RETRYING_AFTER_FAILURE", rng.choice(FAILURES)])
        out += [detour, "RETRYING_AFTER_FAILURE" if detour in FAILURES else "EXECUTING"]
    return [*out, rng.choice(ENDS)]


@dataclass
class Change:
    run: int
    status: str
    updated: datetime


def history(rng: random.Random, runs: int) -> list[list[Change]]:
    """The runs' lifecycles interleaved, `updatedAt` increasing per run (some repeated), cut
    into answers of 1-3 changes."""
    todo = [lifecycle(rng) for _ in range(runs)]
    clock = [START + timedelta(seconds=rng.randint(0, 5)) for _ in range(runs)]
    changes: list[Change] = []
    while any(todo):
        run = rng.choice([i for i, left in enumerate(todo) if left])
        if changes and rng.random() > 0.2:  # else the same updatedAt as its last change
            clock[run] += timedelta(milliseconds=rng.choice([1, 10, 500, 1500]))
        changes.append(Change(run, todo[run].pop(0), clock[run]))
    out = []
    while changes:
        size = rng.randint(1, 3)
        out.append(changes[:size])
        changes = changes[size:]
    return out


def run_id(seed: int, run: int) -> str:
    return f"cm{seed:04d}{run:04d}modelrunxxxxxxx"[:25]


@dataclass
class Server:
    """Turns changes into the fake's exchanges, in one flavour, and keeps each row as served."""

    seed: int
    native: bool
    handle: str = FIRST_HANDLE
    offset: str = "0_inf"
    serial: int = 0
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)

    def row(self, change: Change) -> dict[str, Any]:
        ident = run_id(self.seed, change.run)
        ended = change.status in ENDS
        if self.native:
            typed = {**raw_row("failed"), "id": ident, "friendlyId": f"run_{ident}"}
            typed["status"], typed["updatedAt"] = change.status, change.updated.isoformat()
            typed["completedAt"] = change.updated.isoformat() if ended else None
            return native_value(typed)
        row = json.loads((RAW_WIRE / "run_failed.value.json").read_text())
        row.update(id=ident, friendlyId=f"run_{ident}", status=change.status)
        row["updatedAt"] = pg_timestamp(change.updated)
        row["completedAt"] = pg_timestamp(change.updated) if ended else None
        return row

    def message(self, change: Change) -> dict[str, Any]:
        row, before = self.row(change), self.rows.get(change.run)
        self.rows[change.run] = row
        value, operation = row, "insert"
        if before is not None:
            operation = "update"
            if not self.native:  # Electric: the primary key and the changed columns only
                value = {"id": row["id"], **{k: v for k, v in row.items() if before[k] != v}}
        key = row_key(row["id"])
        return {"key": key, "value": value, "headers": {"operation": operation}}

    def exchange(self, changes: list[Change]) -> Exchange:
        self.serial += 1
        offset = f"{1000 + self.serial}_0"
        headers = {"electric-handle": self.handle, "electric-offset": offset}
        headers["electric-cursor"] = str(self.serial)
        if self.native:
            headers["cache-control"] = "no-store"
        else:
            headers["electric-up-to-date"] = ""
        body = [*map(self.message, changes), UP_TO_DATE]
        out = Exchange(f"changes {self.serial}", self.offset, self.handle, True, 200, headers, body)
        self.offset = offset
        return out

    def must_refetch(self) -> Exchange:
        old, offset = self.handle, self.offset
        body = [{"headers": {"control": "must-refetch"}}]
        headers = {"electric-handle": self.rotate()}
        return Exchange("409", offset, old, True, 409, headers, body)

    def rotate(self) -> str:
        """A new shape (handle) from here on; its log starts at 0_inf."""
        self.serial += 1
        self.handle, self.offset = f"model-handle-{self.serial}", "0_inf"
        return self.handle


REFETCH = json.dumps([{"headers": {"control": "must-refetch"}}]).encode()  # in a 200's body


def fault(rng: random.Random, live_headers: dict[str, str]) -> tuple[Any, ...]:
    return rng.choice(
        [
            (500, {}),
            (503, {}),
            (429, {"Retry-After": rng.choice(["0", "1"]) if SLOW_MODE else "0"}),
            (200, live_headers, CUT),
            (200, {}, SLOW),
            (200, live_headers, REFETCH),
        ]
    )


def config(fake_url: str, sink_url: str) -> str:
    rules = json.dumps(RULES)
    return f"""\
defaults:
  retry: {{max_attempts: 50, max_age: 1h, min_backoff: 50ms, max_backoff: 300ms}}
sources:
  realtime:
    api_url: {fake_url}
    secret_key: {SECRET}
    timeout: 600ms
    feeds:
      - tags: ["{TAG}"]
channels:
  hook: {{type: webhook, url: "{sink_url}/hook"}}
rules: {rules}
"""


@dataclass
class Model:
    """What relay must and may alert, by (run id, rule), and the statuses that may carry it."""

    must: set[Key] = field(default_factory=set)
    may: dict[Key, set[str]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    def reached(self, ident: str, raw: str) -> None:
        status = self.status[ident] = PUBLIC[raw]
        for rule in rules_for(status):
            self.may.setdefault((f"run_{ident}", rule), set()).add(status)

    def stable(self) -> None:
        for ident, status in self.status.items():
            self.must |= {(f"run_{ident}", rule) for rule in rules_for(status)}


@dataclass
class Driver:
    fake: FakeRealtime
    proc: RelayProcess
    rng: random.Random
    seed: int

    async def restart(self) -> None:
        self.proc.kill()
        await asyncio.to_thread(self.proc.start)

    async def stable(self, handle: str, offset: str, since: int) -> None:
        """Until relay asks, live, from `offset` of `handle` (after request number `since`)."""

        def asked(seen: Any) -> bool:
            q = seen.query
            fresh = any(seen is r for r in self.fake.requests[since:])
            return fresh and (q.get("handle"), q.get("offset"), q.get("live")) == (
                handle,
                offset,
                "true",
            )

        try:
            await self.fake.wait_for(asked, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"seed {self.seed}: {exc}") from None


async def drive(
    seed: int, fake: FakeRealtime, proc: RelayProcess, sink: Sink, model: Model
) -> None:
    rng = random.Random(seed)
    server = Server(seed, fake.native)
    answers = history(rng, RUNS)
    kills = set(rng.sample(range(len(answers)), min(len(answers), rng.randint(1, KILLS))))
    refetch_at = rng.randrange(len(answers)) if rng.random() < 0.6 else -1
    driver = Driver(fake, proc, rng, seed)
    await asyncio.to_thread(proc.start)
    await driver.stable(FIRST_HANDLE, "0_inf", 0)
    for step, changes in enumerate(answers):
        live = {"electric-handle": server.handle, "electric-offset": server.offset}
        fake.faults += [fault(rng, live) for _ in range(rng.choice([0, 0, 1, 2]))]
        if step == refetch_at:
            fake.exchanges.append(server.must_refetch())
            before = len(fake.requests)
            fake.release()
            await driver.stable(server.handle, server.offset, before)
        mode = rng.choice(["before", "during", "on alert", "while down"]) if step in kills else ""
        if mode == "while down":
            proc.kill()
            if rng.random() < 0.5:  # and Electric dropped the shape meanwhile
                fake.rotate(server.rotate())
        fake.exchanges.append(server.exchange(changes))
        for change in changes:
            model.reached(run_id(seed, change.run), change.status)
        if mode == "before":
            await driver.restart()
        before = len(fake.requests)
        fake.release()
        if mode == "during":
            await asyncio.sleep(rng.uniform(0, 0.3))
            await driver.restart()
        elif mode == "on alert":  # the batch committed: is its position saved yet?
            with contextlib.suppress(AssertionError):
                await sink.wait_for(len(sink.received) + 1, timeout=0.5)
            await driver.restart()
        elif mode == "while down":
            await asyncio.to_thread(proc.start)
        await driver.stable(server.handle, server.offset, before)
        model.stable()


def alerts(sink: Sink) -> dict[Key, list[tuple[str, str]]]:
    """(webhook-id, status) of each alert, by (run id, rule)."""
    out: dict[Key, list[tuple[str, str]]] = {}
    for item in sink.received:
        body = item.json()
        key = (body["run"]["id"], body["rule"])
        out.setdefault(key, []).append((item.headers["webhook-id"], body["run"]["status"]))
    return out


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_feed_histories_with_faults_and_kills_against_the_model(
    seed: int, relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    model = Model()
    async with fake_realtime([], native=seed % 2 == 1, live_hold_s=0.3) as fake:
        fake.slow_s = 0.9
        proc = relay_process(config(fake.url, sink.url))
        await drive(seed, fake, proc, sink, model)
        async with aiohttp.ClientSession() as http:
            await settled(http, proc.url)
    got = alerts(sink)
    report = {
        "seed": seed,
        "missing": sorted(model.must - set(got)),
        "never reached": sorted(set(got) - set(model.may)),
        "answers": [s.answer for s in fake.requests],
    }
    assert model.must <= set(got) <= set(model.may), json.dumps(report)
    for key, sent in got.items():
        assert len({ident for ident, _ in sent}) == 1, (seed, key, sent)  # one id per transition
        assert {status for _, status in sent} <= model.may[key], (seed, key, sent)
