"""A rate-limited channel sends the notifications of one batch oldest first: the order of the
runs in the POST. `relay serve` as a child on each engine (SQLite, PostgreSQL through
tests/pg.py), a webhook channel limited to 50 a second (20 sends held 0.4 s), a real receiver
noting the order of arrival. Twenty runs in one POST arrived as 11 18 09 17 03 06 ... (the
claim took a batch's rows in the order of their hashed ids). One send at a time
(`concurrency: 1`): two sends in flight at once may arrive in either order on a loaded
machine, whatever order they left in."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import RelayProcess, Sink, sdk_run

CONFIG = """\
channels:
  hook:
    type: webhook
    url: {url}/hook
    rate_limit: {{per_second: 50}}
    concurrency: 1
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


def batch(count: int) -> list[dict[str, Any]]:
    return [{**sdk_run("failed"), "id": f"run_order_{i:02d}"} for i in range(count)]


async def test_a_batch_goes_out_in_its_order_through_a_rate_limit(
    relay_process: Any, sink: Sink, engine_env: dict[str, str]
) -> None:
    proc: RelayProcess = relay_process(CONFIG.format(url=sink.url), engine_env).start()
    runs = batch(20)
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/v1/runs", data=json.dumps(runs)) as resp,
    ):
        assert resp.status == 202
    got = await sink.wait_for(len(runs))
    assert [g.json()["run"]["id"] for g in got] == [run["id"] for run in runs]
