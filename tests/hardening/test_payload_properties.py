"""Valid Trigger.dev payloads relay has never seen (tests/payloadgen.py, a fixed seed), driven
black-box through `relay serve` and `relay test`:

* POST /v1/runs (single objects and batches of SDK runs and raw rows, typed or as Electric's
  wire text) and POST /v1/trigger/alerts (signed) answer 202, never a 5xx or a 400;
* the rules that fire are those an independent reading of SPEC.md expects (tests/payloadrules.py:
  status of every vocabulary, failure, task, tags, cost, duration, metadata, isTest, when);
* every default template (slack, email subject/text/html, webhook) renders without the plain
  fallback: no template error in the metrics or the logs, in serve or in `relay test`;
* `relay test FILE` decides the same rules and channels as `relay serve`.

`PAYLOAD_EXAMPLES=2000 PAYLOAD_SEED=7 pytest tests/hardening/test_payload_properties.py` runs
longer locally; the committed default is small and fast (20 payloads; 200 with RELAY_SLOW=1).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import SLOW, RelayProcess, Sink, run_cli
from tests.fakes.realtime import Exchange, fake_realtime, row_key, session
from tests.fakes.smtp import SmtpFactory
from tests.payloadgen import Expect, Gen
from tests.payloadrules import RENDER_CHANNELS, config_text, expected_rules, rule_names

SECRET = "Zx3vQ9kLm2Tn8Pw4Rb7Yc"
SERVE_ONLY = ("run.digest", "run.recovered")  # bodies `relay test` does not show
EXAMPLES = int(os.environ.get("PAYLOAD_EXAMPLES", "200" if SLOW else "20"))
SEED = int(os.environ.get("PAYLOAD_SEED", "20261204"))


Post = tuple[str, Any]  # ("runs", [objects]) or ("alert", body), in the order sent


@dataclass
class Plan:
    posts: list[Post] = field(default_factory=list)
    # every update of each run (error-group alerts, whose id relay derives, under
    # `errgrp:<fingerprint>`), in the order sent
    updates: dict[str, list[Expect]] = field(default_factory=lambda: defaultdict(list))


def generate(seed: int, count: int) -> Plan:
    """About `count` runs and events; some runs get later (or stale) updates in either shape,
    or the alert webhook of their failure too."""
    gen, plan = Gen(seed), Plan()
    while len(plan.updates) < count:
        roll = gen.r.random()
        if roll < 0.25:
            body, exp = gen.alert()
            plan.posts.append(("alert", body))
            plan.updates[exp.id or "errgrp:" + body["object"]["error"]["fingerprint"]].append(exp)
            continue
        if roll < 0.45 and plan.updates:
            first = plan.updates[gen.pick(plan.updates)][0]
            if first.event == "run" and first.updated is not None:
                body, exp = gen.alert_for(first) if gen.chance(0.2) else gen.next_update(first)
                plan.updates[first.id].append(exp)
                last_kind, last = plan.posts[-1]
                if "type" in body:
                    plan.posts.append(("alert", body))
                elif last_kind == "runs" and gen.chance():  # the same run twice in one batch
                    plan.posts[-1] = ("runs", [*(last if isinstance(last, list) else [last]), body])
                else:
                    plan.posts.append(("runs", body))
                continue
        batch = []
        for _ in range(1 if roll < 0.7 else gen.r.randint(2, 6)):
            obj, exp = gen.sdk_run() if gen.chance() else gen.raw_row()
            batch.append(obj)
            plan.updates[exp.id].append(exp)
        plan.posts.append(("runs", batch[0] if len(batch) == 1 else batch))
    return plan


def _key(run_id: str) -> str:
    """The expectation key of a run id relay reports."""
    if run_id.startswith("errgrp_"):
        return "errgrp:" + run_id.removeprefix("errgrp_").split(":", 1)[0]
    return run_id


def _pairs(exp: Expect) -> set[tuple[str, str]]:
    channels = {True: RENDER_CHANNELS, False: ("hook",)}
    return {(r, ch) for r in expected_rules(exp) for ch in channels[r.startswith("render-")]}


def expected_pairs(plan: Plan) -> dict[str, set[tuple[str, str]]]:
    """What serve must notify: a rule fires once per run, on the first update it matches;
    an update older than the newest updatedAt seen is ignored (SPEC §2)."""
    out: dict[str, set[tuple[str, str]]] = {}
    for key, updates in plan.updates.items():
        newest, fired = None, set()
        for exp in updates:
            if exp.updated is not None and newest is not None and exp.updated < newest:
                continue  # stale
            newest = exp.updated or newest
            fired |= _pairs(exp)
        out[key] = fired
    return out


async def post_all(url: str, posts: list[Post]) -> None:
    async with aiohttp.ClientSession() as http:
        for kind, data in posts:
            if kind == "runs":
                await post_runs(http, url, data)
                continue
            raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
            sig = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            headers = {"content-type": "application/json", "x-trigger-signature-hmacsha256": sig}
            async with http.post(url + "/v1/trigger/alerts", data=raw, headers=headers) as resp:
                answer = await resp.text()
                assert resp.status == 202, (resp.status, answer, raw[:2000])


async def post_runs(http: aiohttp.ClientSession, url: str, data: Any) -> None:
    body = json.dumps(data, ensure_ascii=False)
    async with http.post(url + "/v1/runs", data=body.encode()) as resp:
        answer = await resp.text()
        assert resp.status == 202, (resp.status, answer, body[:2000])
        count = len(data) if isinstance(data, list) else 1
        assert json.loads(answer)["accepted"] == count, answer


async def served_pairs(
    url: str, want: int, timeout: float = 120.0
) -> dict[str, set[tuple[str, str]]]:
    """(rule, channel) of every notification relay serve made, by run id, once all are final
    (listed rule by rule: one listing holds at most 10,000)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            rows = []
            for rule in rule_names():
                query = {"rule": rule, "limit": "10000"}
                async with http.get(url + "/v1/notifications", params=query) as resp:
                    rows += (await resp.json())["notifications"]
            pending = [r for r in rows if r["state"] == "pending"]
            if (len(rows) >= want and not pending) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert [r for r in rows if r["state"] != "sent"] == []
    out: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        out[_key(row["run_id"])].add((row["rule"], row["channel"]))
    return out


def _objects(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    return [(k, o) for k, data in plan.posts for o in (data if isinstance(data, list) else [data])]


def _post_key(kind: str, obj: dict[str, Any]) -> str:
    """The expectation key of a posted object."""
    if kind == "runs":
        return str(obj.get("friendlyId") or obj["id"])
    inner = obj.get("object", obj)  # legacy v1 bodies have no envelope
    for part in ("run", "deployment"):
        if isinstance(inner.get(part), dict):
            return str(inner[part]["id"])
    return "errgrp:" + inner["error"]["fingerprint"]


@dataclass
class DryRun:
    pairs: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    hook_bodies: dict[str, Any] = field(default_factory=dict)  # by notification id

    def add(self, result: dict[str, Any]) -> None:
        """One run of `relay test --json`'s output (a group's digest, shown after its runs:
        rendered without the fallback, its runs' pairs counted with them)."""
        if result["event"] == "digest":
            assert not any(m["fallback"] for m in result["messages"]), result
            return
        key = _key(result["run_id"])
        self.pairs[key] = set()  # a run that matched nothing is reported too
        for message in result["messages"]:
            assert not message["fallback"], (result["run_id"], message)
            self.pairs[key].add((message["rule"], message["channel"]))
            if message["channel"] == "hook":
                body = json.loads(message["parts"]["json"])
                self.hook_bodies[body["id"]] = body


def dry_run(config: Path, tmp: Path, plan: Plan) -> DryRun:
    """`relay test --json` over the runs and alerts sent once (it decides each as first seen):
    its (rule, channel) pairs by run and its webhook bodies, and no message on the fallback."""
    once = {k for k, updates in plan.updates.items() if len(updates) == 1}
    runs = [o for kind, o in _objects(plan) if kind == "runs" and _post_key(kind, o) in once]
    alerts = [o for kind, o in _objects(plan) if kind == "alert" and _post_key(kind, o) in once]
    out = DryRun()
    files = [(tmp / name, items) for name, items in (("runs.json", runs), ("alerts.json", alerts))]
    for path, items in files:
        path.write_text(json.dumps(items, ensure_ascii=False))
    with ThreadPoolExecutor() as pool:  # both at once: each is a Python start-up
        argvs = [
            ("test", "--json", "--digests", "--config", str(config), str(path))
            for path, i in files
            if i
        ]
        for done in pool.map(lambda argv: run_cli(*argv), argvs):
            assert done.returncode == 0, done.stderr[-3000:]
            for result in json.loads(done.stdout):
                out.add(result)
    assert set(out.pairs) == once
    return out


def assert_slack_limits(message: dict[str, Any]) -> None:
    """Block Kit limits Slack enforces (a message over them is refused with a 400)."""
    blocks = message.get("blocks") or []
    assert len(blocks) <= 50
    assert len(message.get("text") or "") <= 40_000
    for block in blocks:
        text = block.get("text") or {}
        limit = 150 if block.get("type") == "header" else 3000
        assert len(text.get("text") or "") <= limit, block
        for item in block.get("fields") or []:
            assert len(item.get("text") or "") <= 2000, item
        assert len(block.get("elements") or []) <= 10 or block.get("type") != "context", block


def assert_email(message: Any) -> None:
    """One line of subject; a text and an HTML part."""
    subject = str(message["Subject"])
    assert subject.strip() and "\n" not in subject and "\r" not in subject, subject
    types = {part.get_content_type() for part in message.walk()}
    assert {"text/plain", "text/html"} <= types, types


def template_errors(metrics: str) -> list[str]:
    return [
        line
        for line in metrics.splitlines()
        if line.startswith("relay_template_errors_total{") and not line.endswith(" 0.0")
    ]


async def test_valid_payloads_through_serve_and_test(
    tmp_path: Path, sink: Sink, smtp_server: SmtpFactory
) -> None:
    smtp = await smtp_server("plain")
    config = tmp_path / "config.yaml"
    config.write_text(config_text(sink.url, smtp.port, SECRET))
    plan = generate(SEED, EXAMPLES)
    want = expected_pairs(plan)
    relay = RelayProcess(config, tmp_path / "relay.db").start()
    try:
        await post_all(relay.url, plan.posts)
        served, tested = await asyncio.gather(
            served_pairs(relay.url, sum(map(len, want.values()))),
            asyncio.to_thread(dry_run, config, tmp_path, plan),
        )
        async with aiohttp.ClientSession() as http, http.get(relay.url + "/metrics") as resp:
            metrics = await resp.text()
    finally:
        relay.kill()
    for key, pairs in want.items():
        assert served.get(key, set()) == pairs, (key, plan.updates[key])
        if key in tested.pairs:
            assert tested.pairs[key] == pairs, (key, plan.updates[key])
    assert set(served) <= set(want)
    assert not template_errors(metrics)
    assert not [e for e in relay.logs if "fallback" in str(e.get("msg", ""))]
    for received in sink.received:
        if received.path == "/slack":
            assert_slack_limits(received.json())
        elif received.path == "/hook":  # what `relay test` showed is what serve sent
            body = received.json()
            if body["id"] in tested.hook_bodies and body.get("type") not in SERVE_ONLY:
                assert body == tested.hook_bodies[body["id"]]
    for delivered in smtp.messages:
        assert_email(delivered.message())


def realtime_script(seed: int, count: int) -> tuple[list[Exchange], dict[str, Expect]]:
    """A Realtime tag feed whose snapshot holds `count` generated rows as Electric's text."""
    gen, expect, inserts = Gen(seed), {}, []
    for _ in range(count):
        row, exp = gen.raw_row()
        wire = (
            row if all(v is None or isinstance(v, str) for v in row.values()) else gen.as_wire(row)
        )
        inserts.append({"key": row_key(row["id"]), "value": wire, "headers": INSERT})
        expect[exp.id] = exp
    snapshot, catch_up = session()[:2]
    return [replace(snapshot, body=inserts), catch_up], expect


INSERT = {"operation": "insert", "relation": ["public", "TaskRun"]}


async def test_generated_rows_through_the_realtime_source_and_test(
    tmp_path: Path, sink: Sink, smtp_server: SmtpFactory
) -> None:
    """The same rows as the Realtime source receives them: serve follows a fake feed, `relay
    test` reads the recorded response bodies; both fire what the rows call for."""
    smtp = await smtp_server("plain")
    script, expect = realtime_script(SEED, max(EXAMPLES // 2, 10))
    config = tmp_path / "config.yaml"
    async with fake_realtime(script) as fake:
        text = json.loads(config_text(sink.url, smtp.port, SECRET))
        text["sources"]["realtime"] = {
            "api_url": fake.url,
            "secret_key": "tr_dev_payloads",
            "feeds": [{"tags": ["env:prod"]}],
        }
        config.write_text(json.dumps(text, ensure_ascii=False))
        want = expected_pairs(Plan(updates={k: [e] for k, e in expect.items()}))
        relay = RelayProcess(config, tmp_path / "relay.db").start()
        try:
            served = await served_pairs(relay.url, sum(map(len, want.values())))
        finally:
            relay.kill()
    (tmp_path / "feed.json").write_text(json.dumps([m for e in script for m in e.body]))
    done = run_cli("test", "--json", "--config", str(config), str(tmp_path / "feed.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    tested = DryRun()
    for result in json.loads(done.stdout):
        tested.add(result)
    assert dict(served) == {k: v for k, v in want.items() if v}
    assert dict(tested.pairs) == want
