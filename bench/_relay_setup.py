"""relay as the scenarios run it: one rule "status FAILED → webhook to the sink", a fresh SQLite
store in its own temp dir, optionally a Realtime feed. (bench/ingest.py has the 100-rule mix.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _procs import Child, Children


def one_rule_yaml(
    sink_port: int,
    *,
    channel_timeout: str = "5s",
    concurrency: int | None = None,
    realtime_url: str = "",
) -> str:
    """A webhook channel `sink` to the bench sink (`concurrency` requests in flight; None:
    relay's default for webhooks) and one rule sending FAILED runs to it; with `realtime_url`,
    a Realtime source following one tag feed of that server."""
    source = ""
    if realtime_url:
        source = f"""\
sources:
  realtime:
    api_url: {realtime_url}
    secret_key: tr_dev_bench
    feeds:
      - tags: [bench]
"""
    limit = "" if concurrency is None else f"    concurrency: {concurrency}\n"
    return f"""\
{source}defaults:
  timeout: 5s
channels:
  sink:
    type: webhook
    url: http://127.0.0.1:{sink_port}/relay
    timeout: {channel_timeout}
{limit}rules:
  - name: failures
    match: {{status: [FAILED]}}
    notify: [sink]
"""


def start(
    children: Children, tmp: Path, config_text: str, tag: str, workers: int = 0
) -> tuple[Child, str]:
    """`relay serve` with this config and a fresh store in a new dir under `tmp`; (child, URL).
    `workers` > 0: delivery in that many worker processes (RELAY_WORKERS)."""
    work = Path(tempfile.mkdtemp(prefix=f"relay-{tag}-", dir=tmp))
    config = work / "config.yaml"
    config.write_text(config_text)
    settings = {"RELAY_WORKERS": str(workers)} if workers else {}
    return children.relay(config, work / "relay.db", settings)
