"""Digests end to end: one message per group, group windows, and a restart inside the window."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.model import notification_id
from relay.store.sqlite import SQLiteStore
from tests.conftest import (
    SLOW,
    Relay,
    RelayFactory,
    RelayProcess,
    Sink,
    run_cli,
    sdk_run,
    status,
)
from tests.fakes.serving import serving, until

CONFIG = """\
defaults:
  retry: {{max_attempts: 5, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
    group_by: [taskIdentifier]
    group_wait: {wait}
    group_interval: {interval}
"""


def storm_config(url: str, hook_setting: str) -> str:
    """CONFIG sending at once, its channel with `hook_setting` (", key: value"), and room at
    intake for 1,000 runs with long errors."""
    text = CONFIG.format(url=url, wait="0s", interval="5m")
    hook = f'hook: {{type: webhook, url: "{url}/hook"'
    return "server: {max_body_bytes: 64MiB}\n" + text.replace(hook, hook + hook_setting)


def failed(i: int, task: str = "sync-customer-data") -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=f"run_digest_{i:03d}", taskIdentifier=task)
    return run


async def settle(sink: Sink, seconds: float) -> None:
    await asyncio.sleep(seconds)


async def until_sent(r: Relay, count: int) -> int:
    """The store's count of sent notifications once it reaches `count` (a flush is marked just
    after its answer, later on a loaded machine), or as it is after 60 s."""
    deadline = time.monotonic() + 60
    while (sent := (await r.service.store.counts())["sent"]) < count:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return sent


async def test_twenty_failures_make_one_digest_per_task(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url, wait="1s", interval="5m"))
    await r.post(
        [failed(i) for i in range(20)] + [failed(100 + i, "render-video") for i in range(3)]
    )
    got = await sink.wait_for(2)
    await settle(sink, 0.5)
    assert len(sink.received) == 2
    bodies = sorted((g.json() for g in got), key=lambda b: -b["group"]["count"])
    assert [b["type"] for b in bodies] == ["run.digest", "run.digest"]
    assert [b["group"]["count"] for b in bodies] == [20, 3]
    assert bodies[0]["group"]["labels"] == {"taskIdentifier": "sync-customer-data"}
    assert {run["id"] for run in bodies[0]["runs"]} == {f"run_digest_{i:03d}" for i in range(20)}
    assert bodies[0]["group"]["byStatus"] == {"FAILED": 20}
    assert got[0].headers["webhook-id"].startswith("dgs_")
    assert await until_sent(r, 23) == 23


async def test_a_digest_lists_its_runs_oldest_first_and_ends_with_the_latest(
    relay: RelayFactory, sink: Sink
) -> None:
    # one batch gives its notifications one created_at: the digest listed them by notification
    # id (a hash), so "the latest run" (the last one, its link on Slack's button) was any of them
    r = await relay(CONFIG.format(url=sink.url, wait="200ms", interval="5m"))
    runs = [failed(i) for i in range(8)]
    for i, run in enumerate(runs):
        run["updatedAt"] = f"2026-08-20T09:{59 - i:02d}:00.000Z"  # the first posted is the newest
    await r.post(runs)
    [got] = await sink.wait_for(1)
    body = got.json()
    assert [run["id"] for run in body["runs"]] == [f"run_digest_{i:03d}" for i in range(7, -1, -1)]
    assert body["group"]["lastSeen"] == "2026-08-20T09:59:00.000Z"


async def test_a_group_of_one_reads_like_a_normal_alert(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url, wait="300ms", interval="5m"))
    await r.post(failed(1))
    [got] = await sink.wait_for(1)
    assert got.json()["type"] == "run.alert" and got.headers["webhook-id"].startswith("ntf_")


async def test_one_batch_is_one_digest_with_no_group_wait(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url, wait="0s", interval="5m"))
    await r.post([failed(i) for i in range(3)])  # used to be a message for one, then for two
    [got] = await sink.wait_for(1)
    assert got.json()["group"]["count"] == 3


async def test_runs_after_a_digest_wait_for_group_interval(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url, wait="200ms", interval="1500ms"))
    await r.post([failed(1), failed(2)])
    [first] = await sink.wait_for(1)
    await r.post([failed(3), failed(4)])
    await asyncio.sleep(0.1)
    await r.post(failed(5))
    second = (await sink.wait_for(2))[1]
    assert second.at - first.at >= 1.4
    assert {run["id"] for run in second.json()["runs"]} == {
        "run_digest_003",
        "run_digest_004",
        "run_digest_005",
    }


async def test_a_repeat_interval_shorter_than_group_interval_does_not_shorten_it(
    relay: RelayFactory, sink: Sink
) -> None:
    # the group closed after repeat_interval of quiet, so a run 0.6 s after a digest opened a
    # new group and went group_wait later: two digests 0.8 s apart under a 1.5 s group_interval
    config = CONFIG.format(url=sink.url, wait="200ms", interval="1500ms")
    r = await relay(config + "    repeat_interval: 300ms\n")
    await r.post([failed(1), failed(2)])
    [first] = await sink.wait_for(1)
    await asyncio.sleep(0.6)
    await r.post([failed(3), failed(4)])
    second = (await sink.wait_for(2))[1]
    assert second.at - first.at >= 1.4
    assert second.json()["group"]["count"] == 2


async def test_a_digest_retried_from_the_outbox_stays_one_digest(
    relay: RelayFactory, sink: Sink
) -> None:
    # more failures than the quick retries: the digest goes back to the outbox; its runs used
    # to come back one by one (each its own jittered time), a message per run, each a new id
    sink.responses = [status(503)] * 4
    spread = CONFIG.replace("min_backoff: 100ms, max_backoff: 200ms", "min_backoff: 400ms")
    r = await relay(spread.format(url=sink.url, wait="100ms", interval="5m"))
    await r.post([failed(i) for i in range(5)])
    got = await sink.wait_for(5)
    await settle(sink, 0.6)
    assert len(sink.received) == 5
    assert {g.headers["webhook-id"] for g in got} == {got[0].headers["webhook-id"]}
    assert got[-1].json()["group"]["count"] == 5


async def test_a_failed_digest_is_one_retry_line_not_one_per_run(
    relay: RelayFactory, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    # While a receiver was down, each try of a storm's digest wrote a "will retry" line per
    # run in it: hundreds a second. One line per message, naming the digest's id (the
    # receiver's webhook-id) and how many notifications wait in it.
    caplog.set_level(logging.INFO, logger="relay.delivery")
    sink.responses = [status(503)]  # one failed try (max_attempts 5: no quick tries)
    r = await relay(CONFIG.format(url=sink.url, wait="100ms", interval="5m"))
    await r.post([failed(i) for i in range(5)])
    got = await sink.wait_for(2)
    retries = [rec for rec in caplog.records if rec.getMessage() == "delivery failed; will retry"]
    assert len(retries) == 1
    line = retries[0].__dict__
    assert line["notification_id"] == got[-1].headers["webhook-id"]
    assert (line["notifications"], line["run_id"], line["group"]) == (
        5,
        None,
        got[-1].json()["group"]["key"],
    )


async def test_a_failed_digest_is_as_old_as_its_oldest_run(relay: RelayFactory, sink: Sink) -> None:
    """A digest retries or dies whole, by its oldest run: one whose first run is past max_age
    when its try fails is dead ("too old"), though a run that joined it later is not, and it
    is not sent again by the newer run's age."""
    sink.responses = [status(503)]  # one failed try (max_attempts 5: no quick tries)
    aged = CONFIG.replace("max_age: 1h", "max_age: 2s")
    r = await relay(aged.format(url=sink.url, wait="3s", interval="5m"))
    await r.post(failed(1))
    await asyncio.sleep(1.2)  # the digest goes 3 s after run 1: run 2 is < 2 s old then
    await r.post(failed(2))
    [got] = await sink.wait_for(1)
    assert got.json()["group"]["count"] == 2
    deadline = time.monotonic() + 60
    while (await r.service.store.counts())["dead"] < 2 and len(sink.received) == 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    dead = await r.service.store.dead_letters()
    assert len(sink.received) == 1 and len(dead) == 2
    assert all((row.last_error or "").endswith("(too old)") for row in dead)


async def test_relay_check_shows_the_digest_in_a_dry_run(relay: RelayFactory, sink: Sink) -> None:
    # a digest rule also needs the digest template of each channel type; the defaults have it
    r = await relay(CONFIG.format(url=sink.url, wait="30s", interval="5m"))
    status, body = await r.post(failed(1))
    assert status == 202 and body["notifications"] == 1
    assert sink.received == []  # waiting for group_wait


async def test_a_reload_that_shortens_group_interval_sends_the_waiting_digest_by_it(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """group_interval 1h → 1s while the group's second digest waits: it goes 1 s after the
    first, not an hour after (it waited out the old interval, whatever the config said)."""
    r = await relay(CONFIG.format(url=sink.url, wait="0s", interval="1h"))
    await r.post([failed(1), failed(2)])
    [first] = await sink.wait_for(1)
    await r.post([failed(3), failed(4)])
    (tmp_path / "config0.yaml").write_text(CONFIG.format(url=sink.url, wait="0s", interval="1s"))
    assert await r.service.reload("test")
    second = (await sink.wait_for(2, timeout=30))[1]
    assert second.at - first.at >= 0.9
    assert [run["id"] for run in second.json()["runs"]] == ["run_digest_003", "run_digest_004"]


async def test_a_reload_that_lengthens_group_wait_holds_the_waiting_digest_by_it(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """group_wait 30s → 1h while a new group's first digest waits: due an hour after its
    first run, as the new group_wait says, not at the old time."""
    r = await relay(CONFIG.format(url=sink.url, wait="30s", interval="5m"))
    await r.post([failed(1), failed(2)])
    (tmp_path / "config0.yaml").write_text(CONFIG.format(url=sink.url, wait="1h", interval="5m"))
    assert await r.service.reload("test")
    async with r.http.get(r.url + "/v1/notifications?run_id=run_digest_001") as resp:
        [waiting] = (await resp.json())["notifications"]
    created, due = (_instant(waiting[key]) for key in ("created_at", "next_attempt_at"))
    assert waiting["state"] == "pending"
    assert 3599 <= due - created <= 3601


def _instant(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_restart_inside_the_wait_window_still_sends_one_digest(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    proc = relay_process(CONFIG.format(url=sink.url, wait="2s", interval="5m"))
    await asyncio.to_thread(proc.start)
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/v1/runs", data=json.dumps([failed(i) for i in range(10)])) as resp,
    ):
        assert resp.status == 202
    proc.kill()
    await asyncio.to_thread(proc.start)
    [got] = await sink.wait_for(1)
    await asyncio.sleep(1.0)
    assert len(sink.received) == 1
    assert got.json()["group"]["count"] == 10


async def test_a_restart_that_shortens_group_interval_sends_the_waiting_digest_by_it(
    relay_process: Callable[..., RelayProcess], sink: Sink, engine_env: dict[str, str]
) -> None:
    """As a reload does: group_interval 1h → 1s across a stop and start while the group's
    second digest waits; it goes at once, not an hour after the first (the time the old
    config gave it was kept)."""
    proc = relay_process(CONFIG.format(url=sink.url, wait="0s", interval="1h"), engine_env)
    await asyncio.to_thread(proc.start)
    await _post(proc, [failed(1), failed(2)])
    await sink.wait_for(1)
    await _post(proc, [failed(3), failed(4)])
    assert await asyncio.to_thread(proc.terminate) == 0
    _rewrite(proc, CONFIG.format(url=sink.url, wait="0s", interval="1s"))
    await asyncio.to_thread(proc.start)
    second = (await sink.wait_for(2, timeout=30))[1]
    assert [run["id"] for run in second.json()["runs"]] == ["run_digest_003", "run_digest_004"]
    assert proc.wait_for_log("waiting digests re-timed")["rules"] == ["failures"]


async def test_a_restart_that_lengthens_group_wait_holds_the_waiting_digest_by_it(
    relay_process: Callable[..., RelayProcess], sink: Sink, engine_env: dict[str, str]
) -> None:
    """group_wait 30s → 1h across a stop and start while a new group's first digest waits: due
    an hour after its first run; a start with the config unchanged moves it no more."""
    proc = relay_process(CONFIG.format(url=sink.url, wait="30s", interval="5m"), engine_env)
    await asyncio.to_thread(proc.start)
    await _post(proc, [failed(1), failed(2)])
    assert await asyncio.to_thread(proc.terminate) == 0
    _rewrite(proc, CONFIG.format(url=sink.url, wait="1h", interval="5m"))
    for _ in range(2):
        await asyncio.to_thread(proc.start)
        async with (
            aiohttp.ClientSession() as http,
            http.get(proc.url + "/v1/notifications?run_id=run_digest_001") as resp,
        ):
            [waiting] = (await resp.json())["notifications"]
        created, due = (_instant(waiting[key]) for key in ("created_at", "next_attempt_at"))
        assert waiting["state"] == "pending"
        assert 3599 <= due - created <= 3601
        assert await asyncio.to_thread(proc.terminate) == 0
    assert sink.received == []


async def _post(proc: RelayProcess, runs: list[dict[str, Any]]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/v1/runs", data=json.dumps(runs)) as resp,
    ):
        assert resp.status == 202


def _rewrite(proc: RelayProcess, config: str) -> None:
    Path(proc.env["RELAY_CONFIG"]).write_text(config)


async def test_a_digest_whose_outcome_write_fails_is_marked_whole_later(
    relay: RelayFactory, sink: Sink
) -> None:
    """A digest's outcome is one store write: while writing one of its rows fails, none is
    marked (each row's own write marked the others sent: a kill -9 then sent the rest again as a
    smaller digest under a new id); once the store takes it, all are, and nothing goes again."""
    r = await relay(CONFIG.format(url=sink.url, wait="200ms", interval="5m"))
    assert isinstance(r.service.store, SQLiteStore)
    last = notification_id(failed(2)["id"], "failures", "hook")
    db = sqlite3.connect(r.service.store.path, timeout=10)
    trigger = (
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.kind = 'sent'"
        f" AND NEW.notification_id = '{last}' BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with db:
        db.execute(trigger)
    await r.post([failed(i) for i in range(3)])
    [got] = await sink.wait_for(1)
    await asyncio.sleep(0.5)  # the write failed, and was tried again: still failing
    counts = await r.service.store.counts()
    assert (counts["sent"], counts["pending"]) == (0, 3)
    with db:
        db.execute("DROP TRIGGER refuse")
    db.close()
    assert await until_sent(r, 3) == 3  # tried again within a second or two (backoff from 250 ms)
    assert len(sink.received) == 1 and got.json()["group"]["count"] == 3


async def test_replaying_a_dead_digest_by_its_webhook_id_says_which_ids_replay_it(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A receiver logs a digest's `dgs_` id (its webhook-id); the dead letters are its rows
    (`ntf_`). Replaying by the `dgs_` id answered a bare "no dead notification with that id", as
    if the digest were not dead; now the answer says how to replay it, and that replays it whole."""
    sink.responses = [status(400)]
    r = await relay(CONFIG.format(url=sink.url, wait="100ms", interval="5m"))
    await r.post([failed(i) for i in range(3)])
    [first] = await sink.wait_for(1)
    digest = first.headers["webhook-id"]
    dead: list[dict[str, Any]] = []
    for _ in range(200):  # the answer reaches the sink before the rows are marked dead
        async with r.http.get(r.url + "/v1/dlq") as resp:
            dead = (await resp.json())["dead"]
        if len(dead) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(dead) == 3 and digest.startswith("dgs_")
    # each row says it died as one digest, by the id its receiver was sent (GET /v1/dlq, and
    # `relay dlq list`, whose rows read as three failures of their own before)
    assert [d["digest"] for d in dead] == [{"id": digest, "notifications": 3}] * 3
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    listed = await asyncio.to_thread(run_cli, "dlq", "list", env=env)
    head, *rows = listed.stdout.splitlines()
    assert head.split()[5] == "DIGEST" and len(rows) == 3
    assert all(f" {digest} (3 runs) " in row for row in rows), listed.stdout
    as_json = await asyncio.to_thread(run_cli, "dlq", "list", "-o", "json", env=env)
    assert [d["digest"] for d in json.loads(as_json.stdout)] == [d["digest"] for d in dead]
    hint = f": {digest} is a digest's id; replay it by one of its notifications (the ntf_ ids"
    for url, body in ((f"/v1/dlq/{digest}/replay", None), ("/v1/dlq/replay", {"ids": [digest]})):
        async with r.http.post(r.url + url, json=body) as resp:
            said = await resp.json()
        assert resp.status == 404 and said["error"].startswith("no dead notification with that id")
        assert hint + " GET /v1/dlq shows)" in said["error"]
    out = await asyncio.to_thread(run_cli, "dlq", "replay", digest, env=env)
    assert out.returncode == 1
    assert out.stderr == f"no dead notification with id {digest}{hint} relay dlq list shows)\n"
    async with r.http.post(r.url + f"/v1/dlq/{dead[0]['id']}/replay") as resp:
        assert await resp.json() == {"replayed": 3}
    [_, again] = await sink.wait_for(2)
    assert again.headers["webhook-id"] == digest and len(again.json()["runs"]) == 3


@pytest.mark.skipif(
    not SLOW, reason="RELAY_SLOW=1: tests/test_templating.py renders the same at template level"
)
async def test_a_thousand_failures_with_long_errors_make_one_digest_without_a_template_error(
    relay: RelayFactory, sink: Sink
) -> None:
    # the shipped webhook digest wrote each run whole: past the output cap, every attempt
    # logged "template failed", counted relay_template_errors_total and sent the fallback
    r = await relay(storm_config(sink.url, ", max_body_bytes: 3MiB"))  # 1,000 runs listed
    # ~3.6 KB errors: 1,000 runs whole are ~4.8 million characters
    error = {"name": "Error", "message": "E" * 1_500, "stackTrace": "    at f (a.ts:1:1)\n" * 100}
    runs = [{**failed(i), "error": error} for i in range(1_000)]
    status_code, _ = await r.post(runs)
    assert status_code == 202
    [got] = await sink.wait_for(1, timeout=30)
    body = got.json()
    assert (body["type"], body["group"]["count"], body["truncated"]) == ("run.digest", 1_000, 0)
    assert len(body["runs"]) == 1_000 and body["runs"][0]["error"]["message"].startswith("EEE")
    async with r.http.get(r.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'relay_template_errors_total{channel="hook"} 0.0' in metrics


class SizedReceiver:
    """A webhook receiver refusing bodies over `limit` bytes with 413, as nginx
    (client_max_body_size, 1 MiB by default) or Express's JSON body-parser (100 kB) do."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.answers.append((413, b""))
            self.arrived.set()
            raise
        self.answers.append((200, body))
        self.arrived.set()
        return web.Response(status=200)


@pytest.mark.parametrize(
    ("setting", "limit"),
    [("", 1024 * 1024), (", max_body_bytes: 100kB", 100_000)],
    ids=["default-1MiB", "express-100kB"],
)
async def test_a_storm_digest_fits_the_body_size_the_receiver_takes(
    relay: RelayFactory, setting: str, limit: int
) -> None:
    # 1,000 failures with 3,000-character errors made a 2.9 MB digest: the receiver answered
    # 413, a permanent failure, and the whole digest went to the dead letters
    receiver = SizedReceiver()
    app = web.Application(client_max_size=limit)
    app.router.add_post("/hook", receiver.handle)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as url:
        r = await relay(storm_config(url, setting))
        error = {"name": "Error", "message": "é" * 3_000, "stackTrace": "  at f (a.ts:1:1)\n" * 50}
        runs = [{**failed(i), "error": error} for i in range(1_000)]
        assert (await r.post(runs))[0] == 202
        await until(lambda: bool(receiver.answers), receiver.arrived, 60, lambda: "no request")
    [(answer, data)] = receiver.answers
    assert answer == 200 and len(data) <= limit
    body = json.loads(data)
    listed = [run["id"] for run in body["runs"]]
    assert listed == [f"run_digest_{i:03d}" for i in range(len(listed))]
    assert (body["group"]["count"], len(listed) + body["truncated"]) == (1_000, 1_000)
    assert len(listed) >= limit // 3_000  # as many as fit, each with its error
    assert all(run["error"]["message"].startswith("éé") for run in body["runs"])
    assert await until_sent(r, 1_000) == 1_000


async def test_a_digest_held_back_by_its_receiver_leaves_group_interval_before_the_next(
    relay: RelayFactory, sink: Sink
) -> None:
    # A run that joins a group while its due digest is held back (a Retry-After, a retry's
    # backoff) was scheduled group_interval after when that digest was due, not after when
    # it went: here 0.5 s after it went, under a 1.5 s group_interval.
    sink.responses = [status(429, {"Retry-After": "1"})]
    r = await relay(CONFIG.format(url=sink.url, wait="100ms", interval="1500ms"))
    await run_joins_after_a_failed_try(r, sink, received=3, gap_s=1.4)  # held for 1 s


async def test_a_digest_waiting_for_its_retry_is_not_overtaken_by_the_next(
    relay: RelayFactory, sink: Sink
) -> None:
    # The soak on PostgreSQL: a digest timed out, and the group's next digest went 0.25 s
    # later, before it; then its retry and the one after went together. A retry's backoff
    # (here 1-2 s) longer than group_interval (400 ms) let the run that joined meanwhile come
    # due first and go alone ahead of it: it must wait for the digest ahead of it, and
    # group_interval after that one.
    sink.responses = [status(503)] * 3  # the quick tries of the first attempt
    slow = CONFIG.replace("min_backoff: 100ms, max_backoff: 200ms", "min_backoff: 500ms")
    r = await relay(slow.format(url=sink.url, wait="100ms", interval="400ms"))
    await run_joins_after_a_failed_try(r, sink, received=5, gap_s=0.35)


async def run_joins_after_a_failed_try(
    r: Relay, sink: Sink, *, received: int, gap_s: float
) -> None:
    """Runs 1 and 2 in a digest whose first try fails; run 3 joins then. The last two of the
    `received` requests: that digest, then run 3 alone at least `gap_s` later."""
    await r.post([failed(1), failed(2)])
    await sink.wait_for(1)
    await r.post(failed(3))
    first, second = (await sink.wait_for(received))[-2:]
    assert {run["id"] for run in first.json()["runs"]} == {"run_digest_001", "run_digest_002"}
    assert second.json()["run"]["id"] == "run_digest_003"
    assert second.at - first.at >= gap_s
