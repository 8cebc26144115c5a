"""Reads over HTTP of what the benchmark started: the bare sink's counts and arrivals
(bench/bare_server.py), relay's /metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def sink_count(port: int) -> int:
    """POSTs the bare server on `port` has received so far."""
    return int(get_json(f"http://127.0.0.1:{port}/count")["posts"])


def wait_for_sink(port: int, expected: int, timeout_s: float) -> dict[str, Any]:
    """Poll the sink until it has `expected` POSTs or `timeout_s` passed; its last /count."""
    deadline = time.monotonic() + timeout_s
    while True:
        state: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/count")
        if state["posts"] >= expected or time.monotonic() >= deadline:
            return state
        time.sleep(0.05)


def sink_arrivals(port: int) -> list[tuple[str, float]]:
    """(run id, arrival time) of every POST a `--record` sink received."""
    data = get_json(f"http://127.0.0.1:{port}/arrivals", timeout_s=30.0)
    return list(zip(data["ids"], data["times"], strict=True))


def relay_metric(base_url: str, name: str, label: str = "") -> float:
    """The sum of the samples of one metric of relay's /metrics (filtered by a label text)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total
