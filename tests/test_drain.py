"""Between SIGTERM and exit, as an orchestrator sees it: a real `relay serve`, a receiver that
holds a delivery open so that the drain lasts, the endpoints asked meanwhile."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.model import notification_id
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
