"""Random rule sets and random update sequences through `relay serve`, against a reference model
of README's "Rules" and "Muting" written from the text alone (not from relay's rule engine).

The model: per run, an update older than the newest `updatedAt` seen is ignored (an equal one
is not); rules are tried in order and the first match wins unless `continue: true`; a rule fires
once per run, on the first update it matches, and a rule that fired before still stops the rules
below it; a notification a silence fits when it is created is muted and never sent later, also
after the silence is expired; a rule with `update_on_recovery` tells each channel it reached once
when the run later moves into COMPLETED. Seeded: a failure names its seed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import RelayFactory, Sink

STATUSES = ["QUEUED", "EXECUTING", "WAITING", "COMPLETED", "CANCELED", "FAILED", "CRASHED",
            "SYSTEM_FAILURE", "TIMED_OUT", "EXPIRED", "INTERRUPTED", "quarantined"]  # fmt: skip
FAILURE = {"FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", "INTERRUPTED"}
TASKS = ["billing/charge", "billing/refund", "email/send"]
TAGS = ["env:prod", "vip", "muted"]
CHANNELS = ["a", "b", "c"]
RUNS = 40
NOW = datetime(2026, 8, 20, 9, 0, tzinfo=UTC)
Key = tuple[str, str, str]  # run id, rule (`#rec` for a recovery), channel


def gen_rule(rng: random.Random, i: int) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if rng.random() < 0.8:
        match["status"] = rng.sample([*STATUSES, "failure"], rng.randint(1, 3))
    if rng.random() < 0.3:
        match["task"] = rng.choice(["billing/*", "*/send"])
    if rng.random() < 0.3:
        match["tags"] = {rng.choice(["any", "none"]): [rng.choice(TAGS)]}
    if rng.random() < 0.3:
        match["cost_cents"] = {rng.choice(["gt", "lte"]): rng.choice([5, 10])}
    return {
        "name": f"r{i}",
        "match": match,
        "notify": rng.sample(CHANNELS, rng.randint(1, 2)),
        "continue": rng.random() < 0.4,
        "update_on_recovery": rng.random() < 0.4,
    }


def gen_updates(rng: random.Random, run_id: str) -> list[dict[str, Any]]:
    """A run's updates, shuffled and repeated, on a few distinct `updatedAt`s (some equal)."""
    task, tags = rng.choice(TASKS), rng.sample(TAGS, rng.randint(0, 2))
    updates = [
        {
            "id": run_id,
            "taskIdentifier": task,
            "status": rng.choice([*STATUSES, "COMPLETED", "COMPLETED", "FAILED"]),
            "updatedAt": (NOW + timedelta(seconds=rng.randint(0, 4))).isoformat(),
            "tags": tags,
            "costInCents": rng.choice([0, 5, 7.5, 10, 12]),
        }
        for _ in range(rng.randint(1, 6))
    ]
    updates += [dict(rng.choice(updates)) for _ in range(rng.randint(0, 2))]
    rng.shuffle(updates)
    return updates


def matches(rule: dict[str, Any], run: dict[str, Any]) -> bool:
    m = rule["match"]
    wanted = {s for s in m.get("status", []) if s != "failure"}
    wanted |= FAILURE if "failure" in m.get("status", []) else set()
    tags = m.get("tags", {})
    cost = m.get("cost_cents", {})
    return (
        ("status" not in m or run["status"] in wanted)
        and ("task" not in m or fnmatch.fnmatchcase(run["taskIdentifier"], m["task"]))
        and all(t in run["tags"] for t in tags.get("any", []))
        and not any(t in run["tags"] for t in tags.get("none", []))
        and ("gt" not in cost or run["costInCents"] > cost["gt"])
        and ("lte" not in cost or run["costInCents"] <= cost["lte"])
    )


@dataclass
class Model:
    rules: list[dict[str, Any]]
    silences: list[dict[str, list[str]]] = field(default_factory=list)
    newest: dict[str, str] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    fired: set[tuple[str, str]] = field(default_factory=set)
    sent: set[Key] = field(default_factory=set)

    def muted(self, rule: str, channel: str, run: dict[str, Any]) -> bool:
        fits = {
            "rule": lambda v: rule in v,
            "channel": lambda v: channel in v,
            "status": lambda v: run["status"] in v,
            "tag": lambda v: any(t in run["tags"] for t in v),
        }
        return any(all(fits[k](v) for k, v in s.items()) for s in self.silences)

    def feed(self, run: dict[str, Any]) -> None:
        rid, at = run["id"], datetime.fromisoformat(run["updatedAt"])
        if rid in self.newest and at < datetime.fromisoformat(self.newest[rid]):
            return
        self.newest[rid] = run["updatedAt"]
        before, self.status[rid] = self.status.get(rid), run["status"]
        if run["status"] == "COMPLETED" and before not in (None, "COMPLETED"):
            self.recover(rid)
        for rule in self.rules:
            if not matches(rule, run):
                continue
            if (rid, rule["name"]) not in self.fired:
                self.fired.add((rid, rule["name"]))
                for ch in rule["notify"]:
                    if not self.muted(rule["name"], ch, run):
                        self.sent.add((rid, rule["name"], ch))
            if not rule["continue"]:
                break

    def recover(self, rid: str) -> None:
        for rule in self.rules:
            for ch in rule["notify"] if rule["update_on_recovery"] else ():
                if (rid, rule["name"], ch) in self.sent:
                    self.sent.add((rid, rule["name"] + "#rec", ch))


def gen_silence(rng: random.Random, rules: list[dict[str, Any]]) -> dict[str, list[str]]:
    key = rng.choice(["rule", "channel", "status", "tag"])
    values = {"rule": [r["name"] for r in rules], "channel": CHANNELS, "status": STATUSES}
    return {key: [rng.choice(values.get(key, TAGS))]}


async def settled(http: aiohttp.ClientSession, url: str) -> None:
    """Until every notification relay made is final (sent or muted), recoveries included:
    bounded at 2 minutes (30 s ran out once in a full run on a machine loaded ~7)."""
    for _ in range(2_400):
        async with http.get(url + "/v1/notifications", params={"limit": "10000"}) as resp:
            rows = (await resp.json())["notifications"]
        if not [r for r in rows if r["state"] == "pending"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("notifications still pending")


def received(sink: Sink) -> set[Key]:
    out = set()
    for item in sink.received:
        body = item.json()
        rec = "#rec" if body["type"] == "run.recovered" else ""
        out.add((body["run"]["id"], body["rule"] + rec, item.path.strip("/")))
    return out


@pytest.mark.parametrize("seed", range(6))
async def test_random_rules_and_sequences_against_the_model(
    seed: int, relay: RelayFactory, sink: Sink
) -> None:
    rng = random.Random(seed)
    rules = [gen_rule(rng, i) for i in range(rng.randint(2, 5))]
    channels = {c: {"type": "webhook", "url": f"{sink.url}/{c}"} for c in CHANNELS}
    r = await relay(yaml.safe_dump({"channels": channels, "rules": rules}))
    model = Model(rules)
    updates = [u for i in range(RUNS) for u in gen_updates(rng, f"run_{seed}_{i}")]
    order = sorted(range(len(updates)), key=lambda _: rng.random())  # runs interleaved
    stream = [updates[i] for i in sorted(order[: len(order) // 2])] + [
        updates[i] for i in sorted(order[len(order) // 2 :])
    ]
    async with aiohttp.ClientSession() as http:
        silence_ids = []
        for _ in range(rng.randint(0, 2)):
            matchers = gen_silence(rng, rules)
            body = {"matchers": matchers, "ends_at": "2999-01-01T00:00:00Z"}
            async with http.post(r.url + "/v1/silences", json=body) as resp:
                assert resp.status == 201, await resp.text()
                silence_ids.append((await resp.json())["id"])
            model.silences.append(matchers)
        half = len(stream) // 2
        for part in (stream[:half], stream[half:]):
            i = 0
            while i < len(part):
                batch = part[i : i + rng.randint(1, 20)]
                i += len(batch)
                status, answer = await r.post(batch)
                assert status == 202, answer
                for update in batch:
                    model.feed(update)
            await settled(http, r.url)
            for sid in silence_ids:  # muted stays muted: nothing is sent when a silence ends
                async with http.delete(r.url + f"/v1/silences/{sid}") as resp:
                    assert resp.status in (200, 204), await resp.text()
            silence_ids, model.silences = [], []
    got = received(sink)
    assert got == model.sent, json.dumps(
        {"seed": seed, "missing": sorted(model.sent - got), "extra": sorted(got - model.sent)}
    )
    assert len(sink.received) == len(got)  # each notification sent once
