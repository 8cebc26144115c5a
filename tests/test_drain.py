"""Between SIGTERM and exit, as an orchestrator sees it: a real `relay serve`, a receiver that
holds a delivery open so that the drain lasts, the endpoints asked meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import relay.service as relay_service
from relay.configure import compile_config, load
from relay.model import notification_id
from relay.service import Service
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from tests.conftest import Behaviour, RelayProcess, Sink, sdk_run
from tests.test_durability import CONFIG
from tests.test_workers import alive, wait_until, worker_pids

DRAINING = "shutting down"
SHUTTING_DOWN = "shutting down: finishing in-flight deliveries"  # drain begun (the log)


def held_until(gate: asyncio.Event) -> Behaviour:
    """A receiver's answer that waits for `gate`: the delivery is in flight until then."""

    async def respond(request: web.Request, index: int) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=200)

    return respond


def failed_run(run_id: str) -> dict[str, Any]:
    run = sdk_run("failed")
    run["id"] = run_id
    return run


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body)
    async with http.request(method, url, data=data) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def stored_state(db: Path, run_id: str) -> str | None:
    store = SQLiteStore(db)
    await store.open()
    try:
        row = await store.get(notification_id(run_id, "failures", "hook"))
    finally:
        await store.close()
    return None if row is None else row.state


@pytest.mark.parametrize("workers", [0, 1])
async def test_relay_answers_while_it_drains_and_refuses_updates_with_a_retry(
    relay_process: Callable[..., RelayProcess], sink: Sink, tmp_path: Path, workers: int
) -> None:
    """On SIGTERM relay closed its listener at once: while a delivery drained, /healthz and
    /readyz refused connections (a liveness probe that fails often enough SIGKILLs the pod
    mid-drain), /metrics could not be scraped, and a pusher's update met a refused connection.
    Now it listens until the drain is done: /healthz 200, /readyz 503 (out of the endpoints),
    /metrics served, an update refused with 503 and Retry-After (SIGTERM stops intake, SPEC
    §5: the pusher tries again, at another replica or this one started again), every answer
    with `Connection: close` so that no kept-alive connection outlives the drain."""
    gate = asyncio.Event()
    sink.default = held_until(gate)
    env = {"RELAY_WORKERS": str(workers)} if workers else None
    proc = relay_process(CONFIG.format(url=sink.url), env)
    await asyncio.to_thread(proc.start)
    try:
        health, ready, posted, metrics = await _asked_while_draining(proc, sink)
    finally:
        gate.set()
    assert proc.proc is not None
    assert await asyncio.to_thread(proc.proc.wait, 30) == 0

    assert (health[0], json.loads(health[2])) == (200, {"status": "ok", "reason": DRAINING})
    assert (ready[0], json.loads(ready[2])) == (503, {"status": "not ready", "reason": DRAINING})
    assert metrics[0] == 200 and b"relay_notifications_sent_total" in metrics[2]
    assert posted[0] == 503 and "shutting down" in json.loads(posted[2])["error"]
    assert posted[1]["Retry-After"] == "5"
    for _, headers, _ in (health, ready, metrics, posted):
        assert headers.get("Connection") == "close"
    db = tmp_path / "relay.db"
    assert await stored_state(db, "run_before") == "sent"
    assert await stored_state(db, "run_during") is None  # not taken: its pusher sends it again
    assert 'relay_updates_rejected_total{reason="shutting_down"} 1.0' in metrics[2].decode()
    assert [e.get("msg") for e in proc.logs][-1] == "stopped"


async def _asked_while_draining(
    proc: RelayProcess, sink: Sink
) -> list[tuple[int, dict[str, str], bytes]]:
    """One update in flight, SIGTERM, then /healthz, /readyz, an update and /metrics, answered
    while the delivery is still held (the process still running)."""
    async with aiohttp.ClientSession() as http:
        status, _, _ = await answer(http, "POST", proc.url + "/v1/runs", failed_run("run_before"))
        assert status == 202
        await sink.wait_for(1)  # in flight: the drain lasts until the gate opens
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: any(e.get("msg") == SHUTTING_DOWN for e in proc.logs))
        answers = [
            await answer(http, "GET", proc.url + "/healthz"),
            await answer(http, "GET", proc.url + "/readyz"),
            await answer(http, "POST", proc.url + "/v1/runs", failed_run("run_during")),
            await answer(http, "GET", proc.url + "/metrics"),
        ]
        assert proc.proc.poll() is None  # all of it while draining
    return answers


async def test_a_second_stop_signal_while_draining_with_workers_exits_at_once(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """With `--workers` too, Ctrl-C (SIGINT) during the drain, now that relay still listens
    then, exits at once (130) rather than wait for the delivery its worker holds; the worker,
    its parent gone, finishes that send and exits."""
    gate = asyncio.Event()
    sink.default = held_until(gate)
    proc = relay_process(CONFIG.format(url=sink.url), {"RELAY_WORKERS": "1"})
    await asyncio.to_thread(proc.start)
    try:
        await _asked_while_draining(proc, sink)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 130
        assert not gate.is_set() and len(sink.received) == 1  # its send still held
    finally:
        gate.set()
    worker = worker_pids(proc)[0]
    await wait_until(lambda: not alive(worker))


RATE_LIMITED = CONFIG.replace(
    "    concurrency: 4\n", "    concurrency: 4\n    rate_limit: {{per_minute: 1}}\n"
)


def outbox(db: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(query, args).fetchall()


def leased_waiting(db: Path) -> bool:
    """Whether a pending row is claimed while none is being sent: its send waits for its turn
    under the rate limit (the first one's outcome written, so the claim is not that one's)."""
    query = "SELECT count(*) FROM outbox WHERE state = 'pending' AND lease_until > ?"
    claimed = outbox(db, query, time.time())[0][0]
    return bool(claimed) and outbox(db, "SELECT count(*) FROM outbox WHERE state = 'sent'") == [
        (1,)
    ]


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_send_waiting_for_the_rate_limit_goes_back_at_once_on_sigterm(
    relay_process: Callable[..., RelayProcess], sink: Sink, tmp_path: Path, workers: int
) -> None:
    """A send waiting for its token (`rate_limit: {per_minute: 1}`: a minute) counted as in
    flight: SIGTERM waited the whole grace (10 s) before cutting it short, a rolling update of
    10 pods took 100 s more. Nothing of it is on the wire: it goes back to the outbox at once,
    no attempt counted, and relay exits. Started again, each notification arrives once."""
    env = {"RELAY_WORKERS": "1"} if workers else None
    proc = relay_process(RATE_LIMITED.format(url=sink.url), env)
    await asyncio.to_thread(proc.start)
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            status, _, _ = await answer(http, "POST", proc.url + "/v1/runs", failed_run(f"r{i}"))
            assert status == 202
    await sink.wait_for(1)
    db = tmp_path / "relay.db"
    await wait_until(lambda: leased_waiting(db))
    sent_before = len(sink.received)
    begun = time.monotonic()
    assert await asyncio.to_thread(proc.terminate, 30) == 0
    assert time.monotonic() - begun < 8.0  # not the grace (10 s): well under a second here
    assert len(sink.received) == sent_before == 1
    attempts = outbox(db, "SELECT attempts FROM outbox WHERE state = 'pending'")
    assert attempts == [(0,)] * 4  # handed back: no attempt counted, no lease kept
    assert not outbox(db, "SELECT id FROM outbox WHERE lease_until > ?", time.time())

    proc = relay_process(CONFIG.format(url=sink.url), env)  # no rate limit: all at once
    await asyncio.to_thread(proc.start)
    received = await sink.wait_for(5)
    await wait_until(
        lambda: outbox(db, "SELECT count(*) FROM outbox WHERE state = 'sent'") == [(5,)]
    )
    ids = [r.headers["webhook-id"] for r in received]
    assert len(ids) == len(set(ids)) == 5  # each once
    assert outbox(db, "SELECT DISTINCT attempts FROM outbox") == [(1,)]
    assert await asyncio.to_thread(proc.terminate, 30) == 0


async def test_the_log_says_what_a_drain_cut_short_and_what_is_left(
    sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGTERM whose drain ran out with a send still on the wire said `shutting down` and
    `stopped`, nothing else: neither that a delivery was cut short (it goes again after the
    start, a duplicate for a receiver that got it) nor what the outbox held for the next start.
    Now a warning names the channel and the count cut short, and `stopped` the pending left."""
    gate = asyncio.Event()
    sink.default = held_until(gate)
    monkeypatch.setattr(relay_service, "SHUTDOWN_GRACE_S", 0.2)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=sink.url))
    db = tmp_path / "relay.db"
    settings = Settings(config=config, listen="127.0.0.1:0", store_url=f"sqlite:///{db}")
    service = Service(settings, compile_config(load(settings)))
    host, port = await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            for run_id in ("run_on_the_wire", "run_beside_it"):
                url = f"http://{host}:{port}/v1/runs"
                assert (await answer(http, "POST", url, failed_run(run_id)))[0] == 202
            await sink.wait_for(2)  # both on the wire (concurrency 4), held there
        caplog.set_level(logging.INFO)
        service.request_stop()
        await service.shutdown()
    finally:
        gate.set()
    said = {r.getMessage(): r.__dict__ for r in caplog.records if r.name.startswith("relay")}
    cut = said["in-flight deliveries cut short at the end of the drain; they go again"]
    assert (cut["channel"], cut["notifications"]) == ("hook", 2)
    assert said["stopped"]["pending"] == 2
    assert await stored_state(db, "run_on_the_wire") == "pending"
