"""Chaos soak: kill -9 relay at random moments while a hostile receiver misbehaves; count losses.

    .venv/bin/python bench/chaos.py                              # 3 rounds x 50 updates (CI size)
    .venv/bin/python bench/chaos.py --rounds 20 --updates 1000   # the full local soak
    .venv/bin/python bench/chaos.py --seed 1234 --json           # replay a seed, JSON report
    .venv/bin/python bench/chaos.py --store postgresql --replicas 3 --kill some

Everything runs on 127.0.0.1; this script is the load generator, the sink and the killer, and
`python -m relay serve` runs as a child process (its own process group, a fresh SQLite store in a
temporary directory, killed on exit whatever happens). `--store postgresql` starts a throwaway
PostgreSQL server (tools/pgserver.py: the machine's initdb and pg_ctl, a temp dir, a free port)
and `--replicas N` (default 3) relays on its one database, with `RELAY_REPLICA_TIMEOUT` of
`--replica-timeout` (3 s) so that a killed replica's claims come back to the others soon.

What happens, per round (`--rounds`):

* **updates**: `--updates` run updates are POSTed to `/v1/runs` over about `--spread` seconds
  (`--updates`/2 runs: EXECUTING then a terminal status; about 60 % of the terminal statuses
  are failures), `--concurrency` at once. Each run is posted in order; an update is retried
  (same body) until relay answers 202 — through refused connections, resets and 503s while
  relay is down or restarting. With replicas each post goes to a random live one (a load
  balancer); `--p-double` of the updates (0.15) go to two replicas at once.
* **killer**: at a random moment of the round (uniform in [0.05 s, `--kill-window`]), relay gets
  SIGKILL, stays down for a random 0-`--down-max` seconds, and is restarted on the same store.
  Kills land anywhere: mid-ingest, mid-commit, between a send and its `sent` mark, between a
  429 and the commit of its retry time. `--workers N` runs `relay serve --workers N` (delivery
  in processes of their own); `--kill parent` then kills the parent alone, as `kill -9 PID`
  does: its workers finish their sends and exit while the next relay starts beside them.
  With replicas, `--kill one` (default) kills one replica a round, `--kill some` 2 to N-1 of
  them each at its own moment, `--kill all` every replica at one moment; each is restarted
  after its own 0-`--down-max` seconds.
* **sink**: the webhook receiver (two relay channels, `a` and `b`, both notified by one rule for
  failed runs) answers each request at random: 200 (counted as delivered), 429 with
  `Retry-After: 1` or `2`, 500, a hang past relay's 1 s timeout, a connection reset (RST), or
  it stops listening for a while (connection refused; requests on kept-alive connections are
  reset meanwhile). Weights: `--p-ok`, `--p-rate-limited`, `--p-error`, `--p-hang`,
  `--p-reset`, `--p-refuse`.

A round ends when the sink has answered 200 for everything owed so far, still under chaos
(at most `--round-timeout` seconds). Then the **drain**: the sink turns healthy and relay gets
up to `--drain-timeout` seconds to deliver what is left; relay is stopped with SIGTERM.

The report (`--json` for one JSON object):

- `updates_posted`, `updates_accepted`: run updates sent, and 202 answers (each update is posted
  until one 202); `post_retries`: posts that met a dead relay, a reset or a 503.
- `notifications_expected`: failed runs x 2 channels, the ids (`ntf_…`) relay owes.
- `delivered`: distinct expected ids the sink answered 200. `lost`: expected ids never answered
  200 — **must be 0**. `unexpected`: delivered ids nobody owed — 0.
- `duplicates`, `duplicate_rate`: extra 200s for an id already delivered (at-least-once: allowed,
  always with the same id: the sink counts by `webhook-id`; the rate is duplicates / delivered).
  `duplicates_why` says what made each (bench/_chaos_report.py), relay's history holding no
  `sent` mark from before it: `kill` (the relay process that got the earlier 200 was killed
  before the duplicate: sent, never marked; the sink tells which process by the connection,
  from /proc), `unread` (relay's try timed out as the sink answered 200), else `unexplained` —
  **must be 0**. `oks_unattributed`: 200s whose process was not found (it had just died).
  `taken_over`: rows replicas took over from a stopped replica (their log); `heartbeat_late`:
  replicas that logged their heartbeat late.
- `retry_after_given`, `retry_after_violations`: 429s sent, and requests for an id that arrived
  before the Retry-After the sink gave that id had passed (per id, the sink's own clock, 20 ms
  tolerance) — **must be 0**; `samples.violations` says whether a kill fell in between. A 429
  counts once written to a connection relay still held: one whose try timed out as the sink
  answered was never read (a loaded machine once made a 1.37 s "violation" of that).
- `retry_after_unrecorded`: early retries whose 429 relay read but never recorded, killed
  between reading it and committing the retry time (a CI run saw two, 0.65 s early): with a
  kill of the process the 429 went to between the 429 and the retry, and relay's history
  (`GET /v1/notifications/{id}`) holding fewer `rate_limited` retries before the early
  request than the sink gave, nothing durable knew of the wait. Not violations; an early
  retry after a recorded 429 is one.
- `dead`: dead letters at the end (`GET /v1/dlq`) — 0. `relay_exceptions`: relay log lines
  with a traceback — 0. `sink_answers`: what the sink answered (`refused` = a request on a
  kept-alive connection while the listener was down).

Exit code 0 when lost, violations, unexplained duplicates, unexpected, dead and relay_exceptions
are all 0, else 1.

The RNG is seeded (`--seed`, else random; the seed is printed first). The seed fixes every
random choice's *distribution* — sink answers are drawn in arrival order, which depends on
timing — so a replay is similar, not identical. relay's own retry settings are short
(min_backoff 100 ms, max_backoff 1 s, timeout 1 s, max_attempts 1000) so a soak converges in
seconds, not hours. tests/hardening/test_chaos.py runs this at CI size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from _chaos_peers import peer_group
from _chaos_relay import Fleet, RelayChild
from _chaos_report import Report
from _chaos_sink import RELAY_TIMEOUT_S, ChaosSink, Weights
from _relay_setup import store_url

RULE = "failures"
CHANNELS = ("a", "b")
FAILED_STATUSES = ("FAILED", "CRASHED", "TIMED_OUT", "SYSTEM_FAILURE")
REPLICA_KILLS = ("one", "some", "all")
MAX_HISTORIES = 500  # duplicates whose history is read (each a request)

CONFIG = """\
defaults:
  retry: {{max_attempts: 1000, max_age: 1h, min_backoff: 100ms, max_backoff: 1s}}
  timeout: {timeout}s
channels:
  a: {{type: webhook, url: "{url}/a", concurrency: 4}}
  b: {{type: webhook, url: "{url}/b", concurrency: 4}}
rules:
  - name: {rule}
    match: {{status: [failure]}}
    notify: [a, b]
"""


def notification_id(run_id: str, rule: str, channel: str) -> str:
    """relay.model.notification_id, repeated here so the bench stands alone."""
    import hashlib  # noqa: PLC0415

    digest = hashlib.blake2b(f"{run_id}\x1f{rule}\x1f{channel}".encode(), digest_size=12)
    return "ntf_" + digest.hexdigest()


def run_body(run_id: str, status: str, updated_s: int) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_780_000_000 + updated_s))
    run = {
        "id": run_id,
        "taskIdentifier": "chaos/task",
        "status": status,
        "createdAt": "2026-06-01T00:00:00.000Z",
        "updatedAt": f"{stamp}.000Z",
        "durationMs": 1200,
        "costInCents": 0.5,
        "tags": ["env:chaos"],
        "error": {"name": "Error", "message": "chaos"} if status in FAILED_STATUSES else None,
    }
    return json.dumps(run).encode()


class Driver:
    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.args = args
        self.rng = random.Random(seed)
        self.report = Report(seed, args.rounds, args.updates, args.store, args.replicas, args.kill)
        self.fleet = Fleet([], random.Random(seed + 2))
        identify = peer_group(self.fleet.groups)
        self.sink = ChaosSink(random.Random(seed + 1), args.weights, identify)
        self.expected: set[str] = set()
        self.histories: dict[str, list[dict[str, Any]]] = {}  # of the ids delivered twice

    async def post(self, http: aiohttp.ClientSession, body: bytes, to: int | None = None) -> None:
        """POST until relay answers 202 (it may be dead or restarting meanwhile): to replica
        `to` while it listens, else to any that does."""
        self.report.updates_posted += 1
        deadline = time.monotonic() + self.args.post_timeout
        while time.monotonic() < deadline:
            url = self.fleet.url(to)
            if not url:
                await asyncio.sleep(0.05)
                continue
            try:
                async with http.post(
                    url + "/v1/runs", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    await resp.read()
                    if resp.status == 202:
                        self.report.updates_accepted += 1
                        return
                    if resp.status != 503:
                        self.report.post_errors += 1
                        self.report.samples.setdefault("post_error", f"HTTP {resp.status}")
                        return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            self.report.post_retries += 1
            await asyncio.sleep(0.05)
        self.report.post_errors += 1

    async def post_update(self, http: aiohttp.ClientSession, body: bytes) -> None:
        """Post one update to a replica, or (`--p-double`) to two at once."""
        if self.args.replicas < 2 or self.rng.random() >= self.args.p_double:
            await self.post(http, body)
            return
        self.report.updates_doubled += 1
        pair = self.rng.sample(range(self.args.replicas), 2)
        await asyncio.gather(*(self.post(http, body, to) for to in pair))

    async def post_round(self, http: aiohttp.ClientSession, round_no: int) -> None:
        runs = max(1, self.args.updates // 2)
        limit = asyncio.Semaphore(self.args.concurrency)

        async def one_run(i: int) -> None:
            run_id = f"run_chaos_{round_no:03d}_{i:05d}"
            failed = self.rng.random() < 0.6
            final = self.rng.choice(FAILED_STATUSES) if failed else "COMPLETED"
            if failed:
                self.expected |= {notification_id(run_id, RULE, ch) for ch in CHANNELS}
            await asyncio.sleep(i * self.args.spread / runs)  # ingest overlaps the kill window
            async with limit:
                await self.post_update(http, run_body(run_id, "EXECUTING", 2 * i))
                await self.post_update(http, run_body(run_id, final, 2 * i + 1))

        await asyncio.gather(*(one_run(i) for i in range(runs)))

    async def kill_round(self) -> None:
        """Kill this round's victims (`--kill`): `all` at one moment, the others each at its
        own; each is restarted after its own time down."""
        victims = self.fleet.victims(self.args.kill)
        moment = self.rng.uniform(0.05, self.args.kill_window)
        await asyncio.gather(
            *(
                self.kill_once(child, moment if self.args.kill == "all" else None)
                for child in victims
            )
        )

    async def kill_once(self, child: RelayChild, moment: float | None) -> None:
        await asyncio.sleep(moment or self.rng.uniform(0.05, self.args.kill_window))
        await asyncio.to_thread(self.fleet.kill, child, self.args.kill == "parent")
        self.report.kills += 1
        await asyncio.sleep(self.rng.uniform(0.0, self.args.down_max))
        await asyncio.to_thread(child.start)

    async def run(self) -> Report:
        started = time.monotonic()
        await self.sink.start()
        with (
            tempfile.TemporaryDirectory(prefix="relay-chaos-") as tmp,
            store_url(self.args.store, Path(tmp)) as url,
        ):
            config = Path(tmp) / "config.yaml"
            config.write_text(CONFIG.format(url=self.sink.url, timeout=RELAY_TIMEOUT_S, rule=RULE))
            env = {"RELAY_REPLICA_TIMEOUT": f"{self.args.replica_timeout}s"}
            self.fleet.children[:] = [
                RelayChild(config, url, self.args.workers, self.args.log_dir, **env)
                for _ in range(self.args.replicas)
            ]
            try:
                await asyncio.to_thread(self.fleet.start)
                timeout = aiohttp.ClientTimeout(total=10)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    for round_no in range(self.args.rounds):
                        await asyncio.gather(self.post_round(http, round_no), self.kill_round())
                        settled = await self.settle(self.args.round_timeout)  # under chaos
                        self.progress(round_no, settled, time.monotonic() - started)
                    await self.drain(http)
            finally:
                await asyncio.to_thread(self.fleet.stop)
                await self.sink.stop()
        self.finish(time.monotonic() - started)
        return self.report

    def progress(self, round_no: int, settled: bool, elapsed_s: float) -> None:
        if self.args.json:
            return
        delivered = len(self.expected & set(self.sink.delivered))
        print(
            f"  round {round_no + 1}/{self.args.rounds}: {elapsed_s:6.1f} s,"
            f" {self.report.updates_accepted} accepted, {delivered}/{len(self.expected)} delivered"
            f"{'' if settled else ' (not settled: the rest is left to the drain)'},"
            f" {len(self.sink.violations)} Retry-After violations",
            file=sys.stderr,
            flush=True,
        )

    async def settle(self, timeout_s: float) -> bool:
        """Wait until every notification owed so far was answered 200 (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while not self.expected <= set(self.sink.delivered):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def drain(self, http: aiohttp.ClientSession) -> None:
        self.sink.healthy = True
        began = time.monotonic()
        await self.settle(self.args.drain_timeout)
        await asyncio.sleep(0.5)  # late duplicates still count
        self.report.drain_s = round(time.monotonic() - began, 2)
        try:
            async with http.get(self.fleet.url() + "/v1/dlq") as resp:
                self.report.dead = len((await resp.json())["dead"])
        except (aiohttp.ClientError, OSError, KeyError, ValueError):
            self.report.dead = -1
        for v in self.sink.violations:
            v["recorded"] = await self.retry_afters_recorded(http, v["id"], before=v["wall"])

        for ident in [i for i, oks in self.sink.oks.items() if len(oks) > 1][:MAX_HISTORIES]:
            self.histories[ident] = await self.history(http, ident)  # its sent marks

    async def history(self, http: aiohttp.ClientSession, ident: str) -> list[dict[str, Any]]:
        """relay's history of notification `ident` (GET /v1/notifications/{id}); [] if it
        cannot be read."""
        try:
            async with http.get(f"{self.fleet.url()}/v1/notifications/{ident}") as resp:
                return list((await resp.json())["events"])
        except (aiohttp.ClientError, OSError, KeyError, ValueError):
            return []

    async def retry_afters_recorded(
        self, http: aiohttp.ClientSession, ident: str, before: float
    ) -> int:
        """How many 429s relay's history says it had recorded for `ident` by `before` (wall
        clock): its `retry` events with reason `rate_limited`; -1 if it cannot be read."""
        events = await self.history(http, ident)
        if not events:
            return -1
        return sum(
            1
            for e in events
            if e["kind"] == "retry"
            and e["reason"] == "rate_limited"
            and datetime.fromisoformat(e["at"]).timestamp() < before
        )

    def finish(self, elapsed: float) -> None:
        r = self.report
        r.tally(self.sink, self.expected, self.fleet.kills, self.histories)
        r.relay_exceptions = len(self.fleet.exceptions)
        logged = self.fleet.logged()
        r.taken_over, r.heartbeat_late = logged["taken_over"], logged["heartbeat_late"]
        r.elapsed_s = round(elapsed, 2)
        if self.fleet.exceptions:
            r.samples["relay_exceptions"] = self.fleet.exceptions[:5]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3, help="kill rounds (default 3)")
    p.add_argument("--updates", type=int, default=50, help="run updates per round (default 50)")
    p.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    p.add_argument("--concurrency", type=int, default=16, help="runs posted at once")
    p.add_argument("--spread", type=float, default=1.5, help="post a round over this (s)")
    p.add_argument("--kill-window", type=float, default=2.5, help="kill within this (s)")
    p.add_argument("--down-max", type=float, default=0.5, help="stay dead up to this (s)")
    p.add_argument("--round-timeout", type=float, default=30.0, help="settle a round (s)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="final drain (s)")
    p.add_argument("--post-timeout", type=float, default=60.0, help="give up one update (s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON only")
    p.add_argument("--log-dir", type=Path, default=None, help="keep relay's logs there")
    p.add_argument("--workers", type=int, default=0, help="relay serve --workers (default 0)")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--replicas", type=int, default=None, help="postgresql: replicas (3)")
    p.add_argument("--replica-timeout", type=float, default=3.0, help="RELAY_REPLICA_TIMEOUT")
    p.add_argument("--p-double", type=float, default=0.15, help="updates posted to 2 replicas")
    p.add_argument(
        "--kill",
        choices=("group", "parent", *REPLICA_KILLS),
        default=None,
        help="SIGKILL relay's process group (SQLite's default), or the parent alone: its"
        " workers live on; replicas: one (PostgreSQL's default), some, all",
    )
    for name, default in asdict(Weights()).items():
        p.add_argument(f"--p-{name.replace('_', '-')}", type=float, default=default)
    args = p.parse_args(argv)
    args.weights = Weights(**{n: getattr(args, f"p_{n}") for n in asdict(Weights())})
    pg = args.store == "postgresql"
    args.replicas = args.replicas or (3 if pg else 1)
    args.kill = args.kill or ("one" if pg else "group")
    if not pg and (args.replicas != 1 or args.kill in REPLICA_KILLS):
        p.error("--replicas and --kill one|some|all need --store postgresql")
    return args


async def chaos(argv: list[str] | None = None) -> Report:
    """Run the soak with these command-line arguments; the report (also for tests)."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if not args.json:
        print(
            f"chaos: seed {seed} ({args.rounds} rounds x {args.updates} updates,"
            f" {args.store}, {args.replicas} replica(s), kill {args.kill})",
            flush=True,
        )
    return await Driver(args, seed).run()


def main(argv: list[str] | None = None) -> int:
    report = asyncio.run(chaos(argv))
    data = {**asdict(report), "ok": report.ok}
    if "--json" in (argv if argv is not None else sys.argv[1:]):
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"  {key:24} {value}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
