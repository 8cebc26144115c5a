"""A NUL (\\u0000) in a run's text fields reaches the receiver as it came, on both engines.

PostgreSQL's text cannot hold a NUL (relay.store._pg_rows.clean turns one into U+FFFD), but
no run text is stored in a text column: the run snapshot and a digest's extra are the orjson
bytes (bytea, `\\u0000` escaped), a digest's labels are JSON text, keys are hashes. So a task
name, tags, payload, output, metadata, error message and stack with a NUL render the same on
SQLite and PostgreSQL. `relay serve` as a child on each engine, a webhook at a real receiver;
a digest (group_wait 1s) so the runs and labels come back from the store, not from memory."""

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
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
    group_by: [taskIdentifier, metadata.k]
    group_wait: 1s
"""

NUL_FIELDS: dict[str, Any] = {
    "taskIdentifier": "billing/\x00charge",
    "tags": ["env:\x00prod"],
    "payload": {"note": "a\x00b"},
    "output": "o\x00",
    "metadata": {"k": "v\x00"},
    "error": {"name": "Error", "message": "boom\x00here", "stackTrace": "at \x00x"},
}


async def test_nul_in_run_text_reaches_the_receiver_unchanged(
    relay_process: Any, sink: Sink, engine_env: dict[str, str]
) -> None:
    proc: RelayProcess = relay_process(CONFIG.format(url=sink.url), engine_env).start()
    runs = [{**sdk_run("failed"), **NUL_FIELDS, "id": f"run_nul_{i}"} for i in range(2)]
    async with (
        aiohttp.ClientSession() as http,
        http.post(proc.url + "/v1/runs", data=json.dumps(runs)) as resp,
    ):
        assert resp.status == 202
    [got] = await sink.wait_for(1)
    body = got.json()
    assert "\ufffd" not in got.body.decode()
    assert body["group"]["labels"] == {
        "taskIdentifier": "billing/\x00charge",
        "metadata.k": "v\x00",
    }
    assert body["group"]["byTask"] == {"billing/\x00charge": 2}
    for run in body["runs"]:
        assert {key: run[key] for key in NUL_FIELDS} == NUL_FIELDS
