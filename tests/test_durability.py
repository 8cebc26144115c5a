"""The promise: nothing accepted is lost. kill -9 mid-flight, SIGTERM, restart — real child process."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

import aiohttp

from relay.model import notification_id
from tests.conftest import RelayProcess, Sink, hang, sdk_run

CONFIG = """\
defaults:
  retry: {{max_attempts: 50, max_age: 1h, min_backoff: 100ms, max_backoff: 500ms}}
  timeout: 30s
channels:
  hook:
    type: webhook
    url: {url}/hook
    concurrency: 4
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


def runs(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        run = sdk_run("failed")
        run["id"] = f"run_kill_{i:04d}"
        out.append(run)
    return out


async def post_all(url: str, items: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as http:

        async def one(run: dict[str, Any]) -> None:
            async with http.post(url + "/v1/runs", data=json.dumps(run)) as resp:
                assert resp.status == 202

        await asyncio.gather(*(one(run) for run in items))


async def delivered_ids(sink: Sink, since: int, want: set[str], timeout: float = 30.0) -> set[str]:
    for _ in range(int(timeout / 0.1)):
        got = {r.headers["webhook-id"] for r in sink.received[since:]}
        if want <= got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"{len(want - got)} of {len(want)} notifications never arrived")


async def test_kill_9_mid_flight_then_restart_delivers_everything(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    sink.default = hang(60)  # every delivery hangs: in flight when the process dies
    proc = relay_process(CONFIG.format(url=sink.url))
    await asyncio.to_thread(proc.start)
    items = runs(50)
    await post_all(proc.url, items)
    await sink.wait_for(4)  # the channel's 4 concurrent deliveries are in flight
    proc.kill()

    sink.default = None
    before = len(sink.received)
    await asyncio.to_thread(proc.start)
    want = {notification_id(r["id"], "failures", "hook") for r in items}
    got = await delivered_ids(sink, before, want)
    assert got == want
    # duplicates happen only for the ones in flight at the kill, and carry the same id
    first_round = {r.headers["webhook-id"] for r in sink.received[:before]}
    assert first_round <= want and len(first_round) <= 4


async def test_kill_9_right_after_202_loses_nothing(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    proc = relay_process(CONFIG.format(url=sink.url).replace("concurrency: 4", "concurrency: 1"))
    sink.default = hang(60)
    await asyncio.to_thread(proc.start)
    items = runs(30)
    await post_all(proc.url, items)
    proc.kill()  # the moment every 202 is in: all 30 must be in the store
    sink.default = None
    before = len(sink.received)
    await asyncio.to_thread(proc.start)
    want = {notification_id(r["id"], "failures", "hook") for r in items}
    assert await delivered_ids(sink, before, want) == want


async def test_sigterm_drains_and_exits_cleanly(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    async def slow_ok(request: Any, index: int) -> Any:
        await asyncio.sleep(0.2)
        return aiohttp.web.Response(status=200)

    sink.default = slow_ok
    proc = relay_process(CONFIG.format(url=sink.url))
    await asyncio.to_thread(proc.start)
    items = runs(40)
    await post_all(proc.url, items)
    code = await asyncio.to_thread(proc.terminate)
    assert code == 0
    messages = [entry.get("msg") for entry in proc.logs]
    assert "stopped" in messages
    # whatever was not delivered before the stop is delivered after a restart
    await asyncio.to_thread(proc.start)
    want = {notification_id(r["id"], "failures", "hook") for r in items}
    assert await delivered_ids(sink, 0, want) == want


async def test_a_second_sigterm_while_draining_exits_at_once_and_loses_nothing(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    """A receiver that hangs holds the drain for its 10 s grace; a second SIGTERM (or Ctrl-C)
    was ignored until then and relay exited 0. It exits 143 now, and the notifications in
    flight go out after the restart."""
    sink.default = hang(60)
    proc = relay_process(CONFIG.format(url=sink.url))
    await asyncio.to_thread(proc.start)
    items = runs(6)
    await post_all(proc.url, items)
    await sink.wait_for(4)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait_for_log, "shutting down: finishing in-flight deliveries")
    code = await asyncio.to_thread(proc.terminate)  # the second SIGTERM
    assert code == 143
    assert any(e.get("msg", "").startswith("second stop signal") for e in proc.logs)

    sink.default = None
    before = len(sink.received)
    await asyncio.to_thread(proc.start)
    want = {notification_id(r["id"], "failures", "hook") for r in items}
    assert await delivered_ids(sink, before, want) == want


async def test_serve_without_config_runs_the_builtin_default(
    relay_process: Callable[..., RelayProcess], tmp_path: Any
) -> None:
    proc = relay_process("unused: true\n")
    del proc.env["RELAY_CONFIG"]
    proc.cwd = tmp_path / "empty"  # no config.yaml here
    proc.cwd.mkdir()
    await asyncio.to_thread(proc.start)
    first = proc.logs[0]
    assert "built-in default" in first["msg"], first
    await post_all(proc.url, [sdk_run("failed")])
    for _ in range(1200):
        if any("sync-customer-data" in line for line in proc.stdout):
            break
        await asyncio.sleep(0.05)
    assert any("sync-customer-data" in line for line in proc.stdout)
