"""Realtime follower: row changes/s relay consumes from a Trigger.dev Realtime (Electric) feed.

    .venv/bin/python bench/realtime_follow.py [--changes 200000] [--page 1000]

A generated feed (bench/shape_server.py: --changes row changes in pages of --page, half inserts
of new EXECUTING runs, half updates finishing the runs of the page before, 1 in 5 FAILED) is
followed by:
- baseline: bench/bare_follower.py, which long-polls and parses the bodies, nothing else;
- relay: `relay serve` with `sources.realtime` following one tag feed of that server, one rule
  "FAILED → webhook sink" (bench/_relay_setup.py), a fresh SQLite store. Each page is decoded,
  merged, matched and committed before relay asks for the next one.
Each gets a fresh feed server. The clock is the server's: from the first request to the first
request past the last page (the follower has committed everything); relay's
`relay_updates_received_total{source="realtime"}` confirms the count. Target: >= 2,000 changes/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import _relay_setup
from _probes import get_json, relay_metric
from _procs import BENCH, Child, Children, run_script, workspace
from _results import Row, arg_parser, compare, cores, report
from _usage import cpu_sample, other_cores

TARGET = 2000.0


def feed_server(children: Children, args: argparse.Namespace) -> tuple[Child, int]:
    """A fresh bench/shape_server.py; (child, port)."""
    argv = [sys.executable, str(BENCH / "shape_server.py"), "0", "--hold", "0.05"]
    argv += ["--changes", str(args.changes), "--page", str(args.page)]
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}  # it reuses tests/fakes/realtime.py
    return children.server("feed", argv, env)


def wait_done(port: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/stats")
        if stats["done"] is not None or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def _rate(stats: dict[str, Any]) -> float | None:
    if stats["done"] is None or stats["first"] is None or stats["done"] <= stats["first"]:
        return None
    return float(stats["served"] / (stats["done"] - stats["first"]))


def baseline(children: Children, args: argparse.Namespace) -> dict[str, Any]:
    before = cpu_sample(children)
    feed, port = feed_server(children, args)
    argv = [sys.executable, str(BENCH / "bare_follower.py"), f"http://127.0.0.1:{port}"]
    argv += ["--changes", str(args.changes), "--timeout", str(args.timeout)]
    children.run_json("bare follower", argv, args.timeout + 30)
    stats = wait_done(port, 5.0)
    children.stop(feed)
    return {**stats, "others": other_cores(children, before)}


def relay(children: Children, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    before = cpu_sample(children)
    feed, port = feed_server(children, args)
    sink, sink_port = children.bare_server("sink", status=200)
    config = _relay_setup.one_rule_yaml(sink_port, realtime_url=f"http://127.0.0.1:{port}")
    server, url = _relay_setup.start(children, tmp, config, "realtime")
    stats = wait_done(port, args.timeout)
    stats["received"] = relay_metric(url, "relay_updates_received_total", 'source="realtime"')
    for child in (server, sink, feed):
        children.stop(child)
    return {**stats, "others": other_cores(children, before)}


def line(name: str, stats: dict[str, Any]) -> str:
    rate = _rate(stats)
    got = f"  relay received {stats['received']:,.0f}" if "received" in stats else ""
    shown = f"{rate:9,.0f}/s" if rate is not None else "  (timeout)"
    return f"{name:<9} changes served {stats['served']:>8,}  {shown}{got}  {cores(stats['others'])}"


def rows(base: dict[str, Any], rel: dict[str, Any]) -> list[Row]:
    value = _rate(rel)
    missing = rel.get("received", 0) < rel["changes"]
    note = cores(rel["others"])
    if missing:
        note += f", relay received {rel.get('received', 0):,.0f} of {rel['changes']:,}"
    met = value is not None and value >= TARGET and not missing
    return [
        compare(
            "realtime",
            f"row changes/s consumed from a shape feed ({rel['changes']:,} changes)",
            value,
            "/s",
            _rate(base),
            "bare follower",
            target=f">= {TARGET:,.0f}/s",
            met=met,
            note=note,
        )
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__)
    p.add_argument("--changes", type=int, default=200_000, help="row changes in the feed")
    p.add_argument("--page", type=int, default=1000, help="changes per response")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per follower")
    args = p.parse_args(argv)
    if not 2 <= args.changes <= 10_000_000 or not 2 <= args.page <= 100_000:
        p.error("--changes 2..10000000, --page 2..100000")
    if not 0 < args.timeout <= 1800:
        p.error("--timeout (0, 1800]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with workspace() as (children, tmp):
        base = baseline(children, args)
        print(line("baseline", base), flush=True)
        rel = relay(children, args, tmp)
        print(line("relay", rel), flush=True)
    report(rows(base, rel), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
