"""A seeded random model of replicas on PostgreSQL (SPEC §7): 2-3 `relay serve` child processes
(some with `--workers 2`, by seed) share one real PostgreSQL under random steps: batches of run
updates (new runs, status transitions, updates older than the stored `updatedAt`, the same batch
posted to two replicas at once; tagged runs reach a plain rule with `continue: true` and then a
`group_by` digest rule), receivers answering 200 / 429 with Retry-After / 500 / slowly / with a
connection reset, kill -9 of a replica (at random, and once right while a digest is at the
receiver), SIGTERM of one, and restarts. A client retries a batch elsewhere until one replica
answers 202, so each batch is committed before the next is posted and the model's order holds.

The model, from SPEC alone: an update older than the run's stored `updatedAt` is ignored; each
other update moves the run, and each (run, rule) its status reaches (first match wins unless
`continue`) fires once. At the end, once delivery is quiet (bounded wait):

- the receiver accepted (answered 2xx) every expected (run, rule, channel) id of the hook
  channel and nothing else; an id accepted twice only if a replica killed with -9 held its row
  (leased it, by claim or at intake) when it died: it may have sent it without recording that;
- every run of the digest rule is in the accepted digests, no other run is; one `webhook-id`
  always carries the same runs (the id is the digest's stable id); a digest id accepted twice
  only if a killed replica held its rows. A run is in exactly one digest id, also across
  kill -9: the claim the dead replica held is taken over whole and sent again alone (the same
  runs, so the same id), never merged with runs that came due meanwhile, and a SIGTERM hands
  its claim back the same way. So no kill explains a run in two digest ids.

A SIGTERM explains no duplicate: it finishes its sends (a slow answer, 0.3 s, is far under the
5 s timeout and the shutdown grace) or hands them back unsent. Answers other than 2xx are not
deliveries (the receiver keeps nothing), so a retry of one is no duplicate either. A replica is
taken for dead 2 s after its last heartbeat (RELAY_REPLICA_TIMEOUT), as in test_replicas.py.

A failure names its seed and the steps; RELAY_REPLICA_SEED=N replays one, RELAY_REPLICA_SEEDS=N
runs N (1 in the suite, 40 with RELAY_SLOW=1). With -s each seed prints what it did. Seeds replay
the steps, not the timing: which request a receiver's answer falls on depends on the replicas'
order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from relay.grouping import digest_id
from relay.model import notification_id
from tests.conftest import SLOW, RelayProcess, sdk_run
from tests.fakes.serving import serving
from tests.pg import fresh_database, shared_server
from tests.test_replicas import backends_gone, outbox_counts, post

SIZE = 3 if SLOW else 1  # runs and steps
if "RELAY_REPLICA_SEED" in os.environ:
    SEEDS: list[int] = [int(os.environ["RELAY_REPLICA_SEED"])]
else:
    SEEDS = list(range(int(os.environ.get("RELAY_REPLICA_SEEDS", "40" if SLOW else "1"))))
START = datetime(2026, 9, 1, 12, 0)
FAILURE = {"FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT"}
ENDS = ["FAILED", "CRASHED", "TIMED_OUT", "COMPLETED", "COMPLETED", "CANCELED"]
CONFIG = """\
defaults:
  retry: {{max_attempts: 200, max_age: 1h, min_backoff: 50ms, max_backoff: 300ms}}
  timeout: 5s
channels:
  hook: {{type: webhook, url: "{url}/hook", concurrency: 4}}
  digest: {{type: webhook, url: "{url}/digest", concurrency: 2}}
rules:  # a tagged failure: `tagged` (continue) then `digests`; an untagged one: `failures`
  - {{name: tagged, match: {{status: [failure], tags: {{any: [digest]}}}}, notify: [hook],
     continue: true}}
  - {{name: digests, match: {{status: [failure], tags: {{any: [digest]}}}}, notify: [digest],
     group_by: [taskIdentifier], group_wait: 300ms, group_interval: 600ms}}
  - {{name: failures, match: {{status: [failure]}}, notify: [hook]}}
  - {{name: done, match: {{status: [COMPLETED]}}, notify: [hook]}}
"""
Ids = set[str]


def rules_for(status: str, tagged: bool) -> list[str]:
    """The rules an update reaches, in order, until a match without `continue`."""
    if status in FAILURE:
        return ["tagged", "digests"] if tagged else ["failures"]
    return ["done"] if status == "COMPLETED" else []


def channel_of(rule: str) -> str:
    return "digest" if rule == "digests" else "hook"


# ------------------------------------------------------------------------------- the receiver


@dataclass
class Receiver:
    """One loopback server for both channels; each request answered by the seed's draw. What
    it accepted (answered 2xx) is what a receiver deduplicating by `webhook-id` would keep."""

    rng: random.Random
    url: str = ""
    accepted: list[tuple[str, str, list[str]]] = field(default_factory=list)  # path, id, runs
    on_digest: list[Any] = field(default_factory=list)  # one-shot hooks, see Model.arm

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        ident = request.headers["webhook-id"]
        runs = [r["id"] for r in body.get("runs") or [body["run"]]]
        if request.path == "/digest" and self.on_digest:
            await self.on_digest.pop()()
        kind = self.rng.choices(["ok", "429", "500", "slow", "reset"], [8, 1, 1, 1, 1])[0]
        if kind == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if kind in ("429", "500"):
            headers = {"Retry-After": "1"} if kind == "429" else {}
            return web.Response(status=int(kind), headers=headers)
        if kind == "slow":
            await asyncio.sleep(0.3)
        self.accepted.append((request.path, ident, runs))
        return web.Response(text="ok")


@dataclass
class Run:
    ident: str
    task: str
    tagged: bool
    statuses: list[str]
    sent: int = 0  # updates posted so far
    stored: datetime | None = None  # the updatedAt the store keeps

    def update(self, status: str, at: datetime) -> dict[str, Any]:
        run = sdk_run("failed")
        run.update(id=self.ident, status=status, taskIdentifier=self.task, updatedAt=at.isoformat())
        run["tags"] = ["digest"] if self.tagged else []
        return run


def new_runs(rng: random.Random, seed: int, n: int) -> list[Run]:
    out = []
    for i in range(n):
        statuses = ["QUEUED", "EXECUTING"]
        if rng.random() < 0.3:  # a failure an attempt takes back: once per run all the same
            statuses += [rng.choice(sorted(FAILURE)), "EXECUTING"]
        tagged = rng.random() < 0.5
        task = f"task/{rng.randint(0, 2)}" if tagged else "task/plain"
        out.append(Run(f"run_m{seed:04d}_{i:03d}", task, tagged, [*statuses, rng.choice(ENDS)]))
    return out


# ------------------------------------------------------------------------------- the replicas


@dataclass
class Replica:
    proc: RelayProcess
    up: bool = False

    def pids(self) -> list[int]:
        """The process and its delivery workers."""
        assert self.proc.proc is not None
        pid = self.proc.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        extra = children.read_text().split() if children.exists() else []
        return [pid, *(int(c) for c in extra)]


def holder_pid(holder: str | None) -> int | None:
    """The pid in a PostgreSQL lease holder's name (host:pid:random)."""
    parts = (holder or "").split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


async def held_by(url: str, pids: list[int]) -> Ids:
    """The ids a dead replica may have sent unrecorded: its leased rows, and each of its
    digest claims' id (the rows of one claim share the lease)."""
    conn = await asyncpg.connect(url)
    try:
        leased = await conn.fetch(
            "SELECT id, group_key, lease_until, lease_holder FROM relay_outbox"
            " WHERE state = 'pending' AND lease_until > extract(epoch FROM now())"
        )
    finally:
        await conn.close()
    rows = [row for row in leased if holder_pid(row["lease_holder"]) in pids]
    claims: dict[tuple[Any, ...], list[str]] = collections.defaultdict(list)
    for row in rows:
        if row["group_key"] is not None:
            claims[(row["group_key"], row["lease_until"], row["lease_holder"])].append(row["id"])
    return {row["id"] for row in rows} | {digest_id(ids) for ids in claims.values()}


@dataclass
class Model:
    seed: int
    rng: random.Random
    url: str  # the database
    receiver: Receiver
    replicas: list[Replica]
    runs: list[Run]
    clock: dict[str, datetime] = field(default_factory=dict)
    expected: set[tuple[str, str]] = field(default_factory=set)  # (run, rule)
    may_repeat: Ids = field(default_factory=set)
    http: aiohttp.ClientSession | None = None
    log: list[str] = field(default_factory=list)

    # ---- updates

    def next_updates(self) -> list[tuple[Run, str, datetime]]:
        pending = [r for r in self.runs if r.sent < len(r.statuses)]
        picked = self.rng.sample(pending, min(len(pending), self.rng.randint(1, 8)))
        out = []
        for run in picked:
            at = self.clock.get(run.ident, START) + timedelta(
                milliseconds=self.rng.choice([1, 700])
            )
            self.clock[run.ident] = at
            out.append((run, run.statuses[run.sent], at))
            run.sent += 1
        return out

    def stale_updates(self) -> list[tuple[Run, str, datetime]]:
        seen = [r for r in self.runs if r.stored is not None]
        picked = self.rng.sample(seen, min(len(seen), self.rng.randint(1, 4)))
        status = self.rng.choice(["FAILED", "COMPLETED", "QUEUED"])
        return [(r, status, r.stored - timedelta(seconds=1)) for r in picked if r.stored]

    def apply(self, updates: list[tuple[Run, str, datetime]]) -> None:
        for run, status, at in updates:
            if run.stored is not None and at < run.stored:
                continue
            run.stored = at
            self.expected |= {(run.ident, rule) for rule in rules_for(status, run.tagged)}

    async def post_batch(self, updates: list[tuple[Run, str, datetime]], twice: bool) -> None:
        """Post until a replica answers 202 (at two at once when `twice`), then the model."""
        body = [run.update(status, at) for run, status, at in updates]
        assert self.http is not None
        for attempt in range(300):
            if not any(r.up for r in self.replicas):  # a kill at a digest took the last one
                await self.start(self.rng.choice(self.replicas))
            up = [r for r in self.replicas if r.up]
            targets = self.rng.sample(up, min(len(up), 2 if twice else 1)) if up else []
            codes = await asyncio.gather(*(post(self.http, r.proc.url, body) for r in targets))
            if 202 in codes:
                self.apply(updates)
                return
            await asyncio.sleep(0.05 * (attempt > 0))
        raise AssertionError(f"seed {self.seed}: no replica accepted a batch")

    # ---- replicas

    async def start(self, replica: Replica) -> None:
        await asyncio.to_thread(replica.proc.start, 60.0)
        replica.up = True
        self.log.append(f"start {replica.proc.env['PGAPPNAME']}")

    async def kill(self, replica: Replica) -> None:
        """kill -9 of the replica and its workers, as a container's kill; what it held may
        come twice."""
        pids = replica.pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert replica.proc.proc is not None
        await asyncio.to_thread(replica.proc.proc.wait, 30)
        replica.up = False
        await backends_gone(self.url, replica.proc.env["PGAPPNAME"])
        self.may_repeat |= await held_by(self.url, pids)
        self.log.append(f"kill -9 {replica.proc.env['PGAPPNAME']}")

    async def terminate(self, replica: Replica) -> None:
        assert replica.proc.proc is not None
        code = await asyncio.to_thread(replica.proc.terminate, 60.0)
        assert code == 0, f"seed {self.seed}: SIGTERM exit {code}: {replica.proc.logs[-5:]}"
        replica.up = False
        self.log.append(f"SIGTERM {replica.proc.env['PGAPPNAME']}")

    def arm(self) -> None:
        """Kill -9 the replica holding the first digest that reaches the receiver, then."""

        async def strike() -> None:
            holders = await self.digest_holders()
            if sum(r.up for r in self.replicas) < 2:
                return
            for replica in self.replicas:
                if replica.up and set(replica.pids()) & holders:
                    await self.kill(replica)
                    self.log.append("(that one at a digest)")
                    return

        self.receiver.on_digest.append(strike)

    async def digest_holders(self) -> set[int]:
        conn = await asyncpg.connect(self.url)
        try:
            holders = await conn.fetch(
                "SELECT DISTINCT lease_holder FROM relay_outbox WHERE channel = 'digest'"
                " AND state = 'pending' AND lease_until > extract(epoch FROM now())"
            )
        finally:
            await conn.close()
        return {pid for h in holders if (pid := holder_pid(h["lease_holder"])) is not None}

    # ---- steps

    def pending(self) -> bool:
        return any(r.sent < len(r.statuses) for r in self.runs)

    async def step(self) -> None:
        up = [r for r in self.replicas if r.up]
        down = [r for r in self.replicas if not r.up]
        roll = self.rng.random()
        if roll < 0.05 and len(up) > 1 and self.pending():  # mid-intake: the client retries
            victim = self.rng.choice(up)
            await asyncio.gather(self.post_batch(self.next_updates(), False), self.kill(victim))
            self.log.append("(that one mid-intake)")
        elif roll < 0.1 and len(up) > 1:
            await self.kill(self.rng.choice(up))
        elif roll < 0.15 and len(up) > 1:
            await self.terminate(self.rng.choice(up))
        elif roll < 0.3 and down:
            await self.start(self.rng.choice(down))
        elif roll < 0.4 and any(r.stored for r in self.runs):
            await self.post_batch(self.stale_updates(), twice=False)
        elif self.pending():
            await self.post_batch(self.next_updates(), twice=self.rng.random() < 0.25)
        if self.rng.random() < 0.3:
            await asyncio.sleep(self.rng.choice([0.1, 0.4]))


# ------------------------------------------------------------------------------- the checks


async def quiet(model: Model, timeout: float = 60.0) -> None:
    """Until the outbox has nothing pending and the receiver got nothing for a while."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        counts = await outbox_counts(model.url)
        now = len(model.receiver.accepted)
        if now != last:
            last, since = now, time.monotonic()
        elif set(counts) <= {"sent"} and time.monotonic() - since > 0.8:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"seed {model.seed}: not quiet: {await outbox_counts(model.url)}")


def check(model: Model) -> None:
    report: dict[str, Any] = {"seed": model.seed, "steps": model.log}
    hooks = collections.Counter(i for path, i, _ in model.receiver.accepted if path == "/hook")
    want = {notification_id(r, rule, "hook") for r, rule in model.expected if rule != "digests"}
    assert set(hooks) == want, json.dumps(
        {**report, "missing": sorted(want - set(hooks)), "extra": sorted(set(hooks) - want)}
    )
    digests: dict[str, set[frozenset[str]]] = collections.defaultdict(set)
    times: collections.Counter[str] = collections.Counter()
    for path, ident, runs in model.receiver.accepted:
        if path == "/digest":
            digests[ident].add(frozenset(runs))
            times[ident] += 1
    unstable = {i: [sorted(s) for s in sets] for i, sets in digests.items() if len(sets) > 1}
    assert not unstable, json.dumps({**report, "one id, other runs": unstable})
    ids_of: dict[str, set[str]] = collections.defaultdict(set)
    for ident, sets in digests.items():
        for run in next(iter(sets)):
            ids_of[run].add(ident)
    grouped = {r for r, rule in model.expected if rule == "digests"}
    assert set(ids_of) == grouped, json.dumps(
        {**report, "missing": sorted(grouped - set(ids_of)), "extra": sorted(set(ids_of) - grouped)}
    )
    split = {r: sorted(i) for r, i in ids_of.items() if len(i) > 1}
    assert not split, json.dumps({**report, "a run in several digests": split})
    twice = {i for i, n in (hooks + times).items() if n > 1}
    assert twice <= model.may_repeat, json.dumps(
        {**report, "unexplained duplicates": sorted(twice - model.may_repeat)}
    )


def summary(model: Model) -> str:
    workers = [r.proc.argv.count("--workers") * 2 for r in model.replicas]
    accepted = collections.Counter(path for path, _, _ in model.receiver.accepted)
    return json.dumps(
        {
            "seed": model.seed,
            "workers": workers,
            "steps": model.log,
            "expected": len(model.expected),
            "accepted": accepted,
            "may_repeat": len(model.may_repeat),
        }
    )


# ------------------------------------------------------------------------------- the test


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_database(shared_server()) as url:
        yield url


async def drive(seed: int, url: str, tmp: Path) -> None:
    rng = random.Random(seed)
    receiver = Receiver(random.Random(seed + 1))
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as receiver.url:
        config = tmp / "config.yaml"
        config.write_text(CONFIG.format(url=receiver.url))
        replicas = []
        for i in range(rng.choice([2, 3])):
            env = {"RELAY_STORE_URL": url, "RELAY_REPLICA_TIMEOUT": "2s", "PGAPPNAME": f"m-{i}"}
            proc = RelayProcess(config, tmp / "unused.db", env)
            if rng.random() < 0.4:
                proc.argv += ["--workers", "2"]
            replicas.append(Replica(proc))
        model = Model(
            seed, rng, url, receiver, replicas, new_runs(rng, seed, rng.randint(8, 20) * SIZE)
        )
        try:
            await asyncio.gather(*(model.start(r) for r in replicas))
            model.arm()
            async with aiohttp.ClientSession() as model.http:
                for _ in range(rng.randint(8, 14) * SIZE):
                    await model.step()
                while model.pending():
                    await model.post_batch(model.next_updates(), twice=False)
                await asyncio.gather(*(model.start(r) for r in replicas if not r.up))
            await quiet(model)
            print(summary(model))  # the seed and what it did, with -s
            check(model)
        finally:
            for r in replicas:
                r.proc.kill()


@pytest.mark.parametrize("seed", SEEDS)
async def test_replicas_against_the_model(seed: int, database: str, tmp_path: Path) -> None:
    await drive(seed, database, tmp_path)
