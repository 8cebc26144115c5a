"""relay as the scenarios run it: one rule "status FAILED → webhook to the sink", a fresh store
(SQLite in its own temp dir, or a throwaway PostgreSQL server), optionally a Realtime feed.
(bench/ingest.py has the 100-rule mix.)"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _procs import Child, Children

from tools.pgserver import start_server


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
    children: Children,
    tmp: Path,
    config_text: str,
    tag: str,
    workers: int = 0,
    store: str = "",
) -> tuple[Child, str]:
    """`relay serve` with this config in a new dir under `tmp`; (child, URL). `store`: its
    RELAY_STORE_URL (default: a fresh SQLite file in that dir); `workers` > 0: delivery in that
    many worker processes (RELAY_WORKERS)."""
    work = Path(tempfile.mkdtemp(prefix=f"relay-{tag}-", dir=tmp))
    config = work / "config.yaml"
    config.write_text(config_text)
    settings = {"RELAY_WORKERS": str(workers)} if workers else {}
    return children.relay(config, store or work / "relay.db", settings)


@contextlib.contextmanager
def store_url(store: str, workdir: Path) -> Iterator[str]:
    """A store for relay: a SQLite file in `workdir`, or the `postgres` database of a
    throwaway PostgreSQL server (tools/pgserver.py; PgUnavailable when the machine has none),
    destroyed after."""
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'relay.db'}"
        return
    server = start_server()
    try:
        yield server.url()
    finally:
        server.destroy()
