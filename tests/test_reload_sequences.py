"""Random config reloads under traffic through a real `relay serve`, against a model of SPEC §5
and README's "Reload" written from the text alone.

A seed drives the steps: batches of runs posted; the config rewritten (in place, or by rename
over it as editors and ConfigMaps do) with rules added, removed or renamed, a channel moved to
another receiver, removed or added back, the webhook template changed, or an invalid file
(refused: the old config is kept); reloaded by SIGHUP or by the file watcher; now and then a
kill -9 and a restart. The receivers answer 200, slowly, or 500/429 for a while, so that
notifications are pending or retrying across reloads.

The model: an update is judged by the config in force when it was accepted (each rule in
order, the first match wins unless `continue: true`), one notification per (run, rule,
channel); each is delivered at least once, with one `webhook-id` that no other notification
has; a channel removed keeps what it owes pending until it returns (the last step brings every
channel back); a receiver gets a channel's messages only while that channel points at it (a
reload waits for the sends in flight on the old channels, so nothing reaches an old URL once the
reload is done); a batch posted while a reload runs is judged whole by the old config or by the
new one. With `--workers 2` too (each worker reads the file when its parent says so). Seeded: a
failure names its seed; RELAY_SLOW=1 runs 40 seeds of longer sequences in each mode,
RELAY_RELOAD_SEEDS=N sets how many.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import REPO, SLOW, RelayProcess
from tests.fakes.serving import serving

CHANNELS = ["c0", "c1", "c2", "c3"]
ENDPOINTS = [f"e{i}" for i in range(6)]
STATUSES = ["FAILED", "CRASHED", "COMPLETED", "EXECUTING"]
SEEDS = range(int(os.environ.get("RELAY_RELOAD_SEEDS", "40" if SLOW else "1")))
WORKER_SEEDS = SEEDS if SLOW or "RELAY_RELOAD_SEEDS" in os.environ else range(1)
TEMPLATE = (REPO / "templates" / "webhook" / "run.json.j2").read_text()
FRESH = ("config reloaded", "delivery worker ready")  # a worker's config read again
Key = tuple[str, str, str]  # run id, rule, channel


@dataclass
class Receivers:
    """One loopback server; each endpoint path answers 200, slowly, or fails for a while."""

    rng: random.Random
    url: str = ""
    failing: dict[str, int] = field(default_factory=dict)  # endpoint: failures left
    slow: set[str] = field(default_factory=set)
    got: list[tuple[float, str, str, dict[str, Any], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for endpoint in ENDPOINTS:
            kind = self.rng.choice(["ok", "slow", "failing"])
            if kind == "slow":
                self.slow.add(endpoint)
            elif kind == "failing":
                self.failing[endpoint] = self.rng.randint(2, 6)

    async def handle(self, request: web.Request) -> web.Response:
        at, endpoint = time.time(), request.path.strip("/")
        body, webhook_id = await request.json(), request.headers["webhook-id"]
        if endpoint in self.slow:
            await asyncio.sleep(0.3)
        if self.failing.get(endpoint, 0) > 0:
            self.failing[endpoint] -= 1
            code = self.rng.choice([500, 429])
            self.got.append((at, endpoint, webhook_id, body, code))
            return web.Response(status=code, headers={"Retry-After": "1"} if code == 429 else {})
        self.got.append((at, endpoint, webhook_id, body, 200))
        return web.Response(text="ok")


@dataclass
class Config:
    """The config as the model holds it; `render` writes it as relay reads it."""

    channels: dict[str, str]  # name: endpoint
    rules: list[dict[str, Any]]
    version: int = 0
    template: int = 0

    def copy(self) -> Config:
        rules = [dict(rule, notify=list(rule["notify"])) for rule in self.rules]
        return Config(dict(self.channels), rules, self.version, self.template)

    def render(self, url: str, templates: Path) -> str:
        channels = {n: {"type": "webhook", "url": f"{url}/{e}"} for n, e in self.channels.items()}
        retry = {"max_attempts": 1000, "min_backoff": "100ms", "max_backoff": "500ms"}
        return yaml.safe_dump(
            {
                "defaults": {"project_ref": f"p{self.version}", "retry": retry, "timeout": "5s"},
                "templates": {"dir": str(templates)},
                "channels": channels,
                "rules": self.rules,
            }
        )

    def expected(self, run: dict[str, Any]) -> set[Key]:
        out: set[Key] = set()
        for rule in self.rules:
            if run["status"] in rule["match"]["status"]:
                out |= {(run["id"], rule["name"], ch) for ch in rule["notify"]}
                if not rule["continue"]:
                    break
        return out


def gen_rule(rng: random.Random, name: str, channels: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"status": rng.sample(STATUSES[:3], rng.randint(1, 2))},
        "notify": rng.sample(channels, rng.randint(1, min(2, len(channels)))),
        "continue": rng.random() < 0.5,
    }


def change(rng: random.Random, old: Config, serial: int) -> Config:
    """A valid new config: one random edit of the running one."""
    new = old.copy()
    new.version = serial
    edit = rng.choice(["add", "remove", "rename", "move", "drop", "back", "template"])
    missing = [c for c in CHANNELS if c not in new.channels]
    if edit == "add" or not new.rules:
        new.rules.insert(
            rng.randint(0, len(new.rules)), gen_rule(rng, f"n{serial}", [*new.channels])
        )
    elif edit == "remove" and len(new.rules) > 1:
        new.rules.pop(rng.randrange(len(new.rules)))
    elif edit == "rename":
        rng.choice(new.rules)["name"] = f"n{serial}"
    elif edit == "move":
        new.channels[rng.choice([*new.channels])] = rng.choice(ENDPOINTS)
    elif edit == "drop" and len(new.channels) > 1:
        new.channels.pop(rng.choice([*new.channels]))
        for rule in new.rules:
            rule["notify"] = [c for c in rule["notify"] if c in new.channels]
        new.rules = [rule for rule in new.rules if rule["notify"]] or [
            gen_rule(rng, f"n{serial}", [*new.channels])
        ]
    elif edit == "back" and missing:
        name = rng.choice(missing)
        new.channels[name] = rng.choice(ENDPOINTS)
        rng.choice(new.rules)["notify"].append(name)
    else:
        new.template = serial
    return new


INVALID = [
    "rules: [\n  - name: broken\n",  # cut short: YAML error
    "channels: {x: {type: webhook, url: 'http://127.0.0.1:1/'}}\nrules:\n"
    "  - {name: bad, match: {status: [FAILED]}, notify: [nowhere]}\n",  # unknown channel
    "",  # emptied (a truncated write)
]


@dataclass
class Driver:
    rng: random.Random
    tmp: Path
    receivers: Receivers
    workers: int
    config: Config = field(init=False)
    proc: RelayProcess = field(init=False)
    serial: int = 0
    reloads_seen: dict[int, int] = field(default_factory=dict)  # worker: reload log lines
    expected: set[Key] = field(default_factory=set)
    # (channel, endpoint): [from, until] while the channel pointed there
    spans: dict[tuple[str, str], list[list[float]]] = field(default_factory=dict)
    runs: int = 0
    reloaded: asyncio.Event = field(default_factory=asyncio.Event)
    # batches posted during a reload: their run ids, what the old config and the new one owe
    either: list[tuple[set[str], set[Key], set[Key]]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.tmp / "config.yaml"

    @property
    def templates(self) -> Path:
        return self.tmp / "templates"

    def write(self, text: str) -> None:
        if self.rng.random() < 0.5:
            self.path.write_text(text)  # in place
        else:
            spare = self.tmp / "config.yaml.new"
            spare.write_text(text)
            os.replace(spare, self.path)  # rename over it

    def write_template(self, version: int) -> None:
        (self.templates / "webhook").mkdir(parents=True, exist_ok=True)
        body = TEMPLATE.replace('"type": "run.alert",', f'"type": "run.alert", "v": {version},')
        (self.templates / "webhook" / "run.json.j2").write_text(body)

    async def start(self) -> None:
        self.config = Config({c: self.rng.choice(ENDPOINTS) for c in CHANNELS[:3]}, [])
        self.config.rules = [gen_rule(self.rng, f"r{i}", [*self.config.channels]) for i in range(3)]
        self.write_template(0)
        self.path.write_text(self.config.render(self.receivers.url, self.templates))
        now = time.time()
        self.spans = {(c, e): [[now, float("inf")]] for c, e in self.config.channels.items()}
        argv = ["--workers", str(self.workers)] if self.workers else []
        self.proc = RelayProcess(self.path, self.tmp / "relay.db")
        self.proc.argv += argv
        await asyncio.to_thread(self.proc.start)
        await self.until_workers_reloaded()

    async def restart(self) -> None:
        await asyncio.to_thread(self.proc.kill)
        await asyncio.to_thread(self.proc.start)
        self.reloads_seen = {}
        await self.until_workers_reloaded()  # each has started, the config in force read

    async def post(self, http: aiohttp.ClientSession) -> None:
        for run in await self.send_batch(http):
            self.expected |= self.config.expected(run)

    async def send_batch(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        batch = []
        for _ in range(self.rng.randint(1, 8)):
            self.runs += 1
            batch.append({"id": f"run_{self.runs}", "taskIdentifier": "t", "status": self.rng.choice(STATUSES), "updatedAt": "2026-08-20T09:00:00Z"})  # fmt: skip
        async with http.post(self.proc.url + "/v1/runs", json=batch) as resp:
            assert resp.status == 202, await resp.text()
        return batch

    async def post_during(self, http: aiohttp.ClientSession, old: Config, new: Config) -> None:
        """Batches posted while the reload runs: each is judged whole by one of the two."""
        while not self.reloaded.is_set():
            batch = await self.send_batch(http)
            sets = [{k for run in batch for k in c.expected(run)} for c in (old, new)]
            self.either.append(({run["id"] for run in batch}, sets[0], sets[1]))
            await asyncio.sleep(self.rng.uniform(0, 0.1))

    async def reload(self, http: aiohttp.ClientSession) -> None:
        self.serial += 1
        invalid = self.rng.random() < 0.2
        new = self.config if invalid else change(self.rng, self.config, self.serial)
        before = await self.reload_counts(http)
        started = time.time()
        if new.template != self.config.template:
            self.write_template(new.template)
        self.write(
            self.rng.choice(INVALID) if invalid else new.render(self.receivers.url, self.templates)
        )
        if self.rng.random() < 0.5:
            assert self.proc.proc is not None
            self.proc.proc.send_signal(signal.SIGHUP)
        self.reloaded.clear()
        traffic = asyncio.create_task(self.post_during(http, self.config, new))
        try:
            await self.until_reloaded(http, before, invalid)
        finally:
            self.reloaded.set()
            await traffic
        if invalid:  # the running config stays; the file goes back to it for the next edits
            counts = await self.reload_counts(http)
            self.path.write_text(self.config.render(self.receivers.url, self.templates))
            await self.until_reloaded(http, counts, False)
            return
        self.moved(new, started)
        self.config = new

    def moved(self, new: Config, started: float) -> None:
        """Where each channel pointed and since when: a span opens when the file is written,
        and closes once the reload that changed it away is done."""
        done = time.time()
        for name, endpoint in self.config.channels.items():
            if new.channels.get(name) != endpoint:
                self.spans[(name, endpoint)][-1][1] = done
        for name, endpoint in new.channels.items():
            if self.config.channels.get(name) != endpoint:
                self.spans.setdefault((name, endpoint), []).append([started, float("inf")])

    async def reload_counts(self, http: aiohttp.ClientSession) -> tuple[float, float]:
        """relay_config_reloads_total (success, failure): let a second reload of one change
        (SIGHUP and the watcher both) finish first, so that it is not taken for the next."""
        while True:
            first = await self._counts(http)
            await asyncio.sleep(0.3)
            if await self._counts(http) == first:
                return first

    async def _counts(self, http: aiohttp.ClientSession) -> tuple[float, float]:
        async with http.get(self.proc.url + "/metrics") as resp:
            text = await resp.text()
        found = {"success": 0.0, "failure": 0.0}
        for line in text.splitlines():
            for result in found:
                if line.startswith(f'relay_config_reloads_total{{result="{result}"}} '):
                    found[result] = float(line.split()[-1])
        return found["success"], found["failure"]

    async def until_reloaded(
        self, http: aiohttp.ClientSession, before: tuple[float, float], invalid: bool
    ) -> None:
        for _ in range(600):
            success, failure = await self._counts(http)
            if (failure if invalid else success) > before[1 if invalid else 0]:
                break
            assert success == before[0], f"an invalid file was taken: {self.proc.logs[-3:]}"
            await asyncio.sleep(0.02)
        else:
            said = [(e.get("msg"), e.get("trigger")) for e in self.proc.logs if "reload" in e.get("msg", "")]  # fmt: skip
            raise AssertionError(f"no reload: {before} {success} {failure} {said}")
        if not invalid:
            await self.until_workers_reloaded()

    async def until_workers_reloaded(self) -> None:
        """Each delivery worker took the new file too: it reads it when the parent says so, or
        when it starts again (after a kill -9 it waits for the worker it succeeds)."""
        for index in range(self.workers):
            for _ in range(1000):
                lines = [e for e in self.proc.logs if e.get("worker") == index]
                refused = [e for e in lines if e.get("msg") == "config reload refused; the running config is kept"]  # fmt: skip
                assert not refused, f"worker {index} refused what its parent took: {refused}"
                done = sum(e.get("msg") in FRESH for e in lines)
                if done > self.reloads_seen.get(index, 0):
                    self.reloads_seen[index] = done
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"worker {index} did not reload: {lines}")

    async def bring_every_channel_back(self, http: aiohttp.ClientSession) -> None:
        new = self.config.copy()
        self.serial += 1
        new.version = self.serial
        for name in CHANNELS:
            new.channels.setdefault(name, self.rng.choice(ENDPOINTS))
        before = await self.reload_counts(http)
        started = time.time()
        self.path.write_text(new.render(self.receivers.url, self.templates))
        await self.until_reloaded(http, before, False)
        self.moved(new, started)
        self.config = new

    async def settled(self, http: aiohttp.ClientSession) -> None:
        url = self.proc.url + "/v1/notifications"
        for _ in range(1200):
            async with http.get(url, params={"limit": "10000", "state": "pending"}) as resp:
                if not (await resp.json())["notifications"]:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("notifications still pending")


def check(driver: Driver, seed: int) -> None:
    got = driver.receivers.got
    delivered = {
        (b["run"]["id"], b["rule"], b["channel"]) for _, _, _, b, code in got if code == 200
    }
    for runs, old, new in driver.either:
        theirs = {key for key in delivered if key[0] in runs}
        assert theirs in (old, new), json.dumps(
            {"seed": seed, "got": sorted(theirs), "old": sorted(old), "new": sorted(new)}
        )
        delivered -= theirs
    report = {"seed": seed, "missing": sorted(driver.expected - delivered)[:10]}
    assert delivered == driver.expected, json.dumps(
        {**report, "extra": sorted(delivered - driver.expected)[:10]}
    )
    ids: dict[Key, set[str]] = defaultdict(set)
    for _, _, webhook_id, body, _ in got:
        assert body["id"] == webhook_id
        ids[(body["run"]["id"], body["rule"], body["channel"])].add(webhook_id)
    two = {str(k): sorted(v) for k, v in ids.items() if len(v) > 1}
    assert not two, json.dumps({"seed": seed, "several ids": two})
    assert len({i for v in ids.values() for i in v}) == len(ids), f"seed {seed}: an id reused"
    for at, endpoint, _, body, _ in got:
        spans = driver.spans.get((body["channel"], endpoint), [])
        assert any(a <= at <= b for a, b in spans), json.dumps(
            {"seed": seed, "late": [body["channel"], endpoint, at], "spans": spans}
        )


async def drive(seed: int, workers: int, tmp: Path) -> None:
    rng = random.Random(seed)
    receivers = Receivers(random.Random(seed + 1))
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", receivers.handle)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as receivers.url:
        driver = Driver(rng, tmp, receivers, workers)
        await driver.start()
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(rng.randint(6, 9) * (4 if SLOW else 1)):
                    step = rng.random()
                    if step < 0.45:
                        await driver.post(http)
                    elif step < 0.93:
                        await driver.reload(http)
                    else:
                        await driver.restart()
                await driver.bring_every_channel_back(http)
                await driver.settled(http)
        finally:
            await asyncio.to_thread(driver.proc.kill)
    check(driver, seed)


@pytest.mark.parametrize("seed", SEEDS)
async def test_reloads_under_traffic_against_the_model(seed: int, tmp_path: Path) -> None:
    await drive(seed, 0, tmp_path)


@pytest.mark.parametrize("seed", WORKER_SEEDS)
async def test_reloads_under_traffic_with_workers(seed: int, tmp_path: Path) -> None:
    await drive(seed + 1000, 2, tmp_path)
