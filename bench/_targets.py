"""The two systems that turn failing runs into webhooks to the bench sink: relay and Alertmanager.

`target()` starts one (its own process, fresh storage under `tmp`) and yields the URL the load
generator posts to; `FORMATS` says which bodies it takes (bench/_load.py --format).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import _alertmanager
import _relay_setup
from _procs import Child, Children

FORMATS = {"relay": "sdk", "alertmanager": "alertmanager"}


def systems(install: bool) -> tuple[list[str], str | None]:
    """The systems to measure (relay, and Alertmanager when it is or can be installed), and
    the Alertmanager binary."""
    binary, why = _alertmanager.ensure(install)
    if not binary:
        print(f"# alertmanager baseline skipped: {why}", file=sys.stderr, flush=True)
    return ["relay"] + (["alertmanager"] if binary else []), binary


def baseline_name(binary: str | None) -> str:
    return "alertmanager" if binary else "alertmanager: skipped"


@contextlib.contextmanager
def target(
    children: Children,
    system: str,
    tmp: Path,
    sink_port: int,
    am_binary: str | None,
    relay_workers: int = 0,
    store: str = "sqlite",
) -> Iterator[str]:
    """relay (POST /v1/runs; its store "sqlite" or "postgresql", a throwaway server) or
    Alertmanager (POST /api/v2/alerts), stopped on exit."""
    server: Child
    with contextlib.ExitStack() as stack:
        if system == "relay":
            fresh = Path(tempfile.mkdtemp(prefix="store-", dir=tmp))
            store_url = stack.enter_context(_relay_setup.store_url(store, fresh))
            config = _relay_setup.one_rule_yaml(sink_port)
            server, url = _relay_setup.start(
                children, tmp, config, "target", relay_workers, store=store_url
            )
            path = "/v1/runs"
        else:
            server, url, path = _alertmanager_target(children, tmp, sink_port, am_binary)
        try:
            yield url + path
        finally:
            if server.ended():  # it should still be running: say how it ended
                print(f"# early: {server.ended()}", flush=True)
            children.stop(server)


def _alertmanager_target(
    children: Children, tmp: Path, sink_port: int, am_binary: str | None
) -> tuple[Child, str, str]:
    if am_binary:
        work = Path(tempfile.mkdtemp(prefix="am-", dir=tmp))
        server, url = _alertmanager.start(children, am_binary, work, sink_port)
        return server, url, "/api/v2/alerts"
    raise ValueError("no such system (or not installed): alertmanager")
