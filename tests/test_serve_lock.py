"""One `relay serve` per SQLite file: a second one (a rolling update, `docker compose up` on the
same volume) waits for the first to exit, never frees its leases, and then takes over."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from relay.model import notification_id
from tests.conftest import RelayProcess, Sink, held, run_cli
from tests.test_durability import CONFIG, delivered_ids, post_all, runs

HELD = "store held by another relay serve"
WAITING = "store held by another relay serve; waiting for it to exit"


def _started(proc: RelayProcess, timeout_s: float = 60.0) -> dict[str, Any]:
    """The child's first line saying where it listens: the wait for the other serve, or (if
    it did not wait) `listening`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := [e for e in proc.logs if e.get("msg") in (WAITING, "listening")]:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"not listening: {[e.get('msg') for e in proc.logs]}")


async def _second(
    make: Callable[..., RelayProcess], sink: Sink
) -> tuple[RelayProcess, str, dict[str, Any]]:
    """A second `relay serve` on the file; its URL and its line saying it waits, once it
    listens."""
    proc = make(_config(sink))
    proc.spawn()
    line = await asyncio.to_thread(_started, proc)
    assert line["msg"] == WAITING, "started beside the first one"
    return proc, f"http://{line['listening']}", line


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def _check_waiting(url: str, sink: Sink) -> None:
    """Alive, not ready, saying why, and nothing of the first one's sent again. An update sent
    to it (a pusher trying each address) is refused with 503 and Retry-After and counted as
    `store_unavailable`, as the README's metrics table says."""
    assert await _get(url + "/readyz") == (503, {"status": "not ready", "reason": HELD})
    assert await _get(url + "/healthz") == (200, {"status": "ok", "reason": HELD})
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/runs", json=runs(1)[0]) as resp:
            assert (resp.status, resp.headers.get("Retry-After")) == (503, "5")
            assert (await resp.json())["error"] == f"{HELD}; retry later"  # as /readyz says
        async with http.get(url + "/metrics") as resp:
            metrics = await resp.text()
    assert 'relay_updates_rejected_total{reason="store_unavailable"} 1.0' in metrics
    assert len(sink.received) == 1


def _config(sink: Sink) -> str:
    return CONFIG.format(url=sink.url).replace("concurrency: 4", "concurrency: 1")


async def _in_flight(
    make: Callable[..., RelayProcess], sink: Sink
) -> tuple[RelayProcess, set[str]]:
    """The first `relay serve`, one send of three in flight (held by the sink), two pending
    (the channel sends one at a time); the ids of the three."""
    first = make(_config(sink))
    await asyncio.to_thread(first.start)
    items = runs(3)
    await post_all(first.url, items)
    await sink.wait_for(1)
    return first, {notification_id(r["id"], "failures", "hook") for r in items}


async def test_a_second_serve_waits_for_the_first_and_takes_over_at_its_sigterm(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """Started beside the first, the second freed every lease and sent again what the first
    had in flight. Now it is not ready until the first exits; then it delivers what was
    left, and each notification reaches the sink once."""
    gate = asyncio.Event()
    sink.responses = [held(gate)]
    first, want = await _in_flight(relay_process, sink)
    second, url, wait = await _second(relay_process, sink)
    assert wait["lock"].endswith("relay.db-serve.lock")
    await _check_waiting(url, sink)

    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    gate.set()  # the send in flight is answered within the drain
    assert await asyncio.to_thread(first.proc.wait, 60) == 0
    await asyncio.to_thread(second.wait_for_log, "listening")
    assert await _get(url + "/readyz") == (200, {"status": "ready"})
    await delivered_ids(sink, 0, want)
    assert sorted(r.headers["webhook-id"] for r in sink.received) == sorted(want)
    assert [e for e in second.logs if e.get("msg") == WAITING] == [wait]  # said once


async def test_kill_9_of_the_first_serve_hands_over_too(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """The kernel frees the lock of a killed process: the second takes over, and sends what
    the first had claimed (the one in flight at the kill again, under its id) once each."""
    gate = asyncio.Event()
    sink.responses = [held(gate)]
    first, want = await _in_flight(relay_process, sink)
    second, url, _wait = await _second(relay_process, sink)
    await _check_waiting(url, sink)
    store = {"RELAY_STORE_URL": first.env["RELAY_STORE_URL"]}
    for command in (["migrate"], ["dlq", "list"], ["history"]):  # never wait for the lock
        assert (await asyncio.to_thread(run_cli, *command, env=store)).returncode == 0, command

    first.kill()
    gate.set()
    await asyncio.to_thread(second.wait_for_log, "listening")
    assert await _get(url + "/readyz") == (200, {"status": "ready"})
    await delivered_ids(sink, 1, want)
    assert sorted(r.headers["webhook-id"] for r in sink.received[1:]) == sorted(want)


async def test_a_lock_file_that_cannot_be_created_is_said_and_relay_serves(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    proc = relay_process(CONFIG.format(url=sink.url))
    assert proc.env["RELAY_STORE_URL"].endswith("relay.db")
    lock = proc.env["RELAY_STORE_URL"].removeprefix("sqlite:///") + "-serve.lock"
    Path(lock).mkdir()  # os.open(O_RDWR) of it fails, as in a read-only directory
    await asyncio.to_thread(proc.start)
    line = proc.wait_for_log(
        "serve lock not created; nothing stops a second relay serve on this file"
    )
    assert line["lock"] == lock
    assert await _get(proc.url + "/readyz") == (200, {"status": "ready"})
