"""Ingest → delivery latency at a fixed rate: relay, and Alertmanager as the baseline.

    .venv/bin/python bench/latency.py [--rate 1000] [--seconds 10] [--failed-every 5]
    .venv/bin/python bench/latency.py --store postgresql    # relay on PostgreSQL

A recording sink (bench/bare_server.py --record keeps each POST's arrival time and run id), the
system under test (bench/_targets.py: relay with one rule "FAILED → webhook", or Alertmanager
routing status="FAILED" to a webhook) and the load generator in open loop: one update per
request, request n sent at start + n/--rate whatever the answers (64 connections), every
--failed-every-th update a FAILED run, the others EXECUTING (Alertmanager gets the same as
alerts labelled status=...; only FAILED ones reach its webhook). The generator reports when each
request left, the sink when each webhook arrived, both on the machine's monotonic clock; the
latency of a failing run is arrival minus send. Sends in the first --warmup seconds are not counted.
Target: relay p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _probes import sink_arrivals, wait_for_sink
from _procs import Children, run_script, workspace
from _results import Row, arg_parser, compare, cores, percentile, report, workers_note
from _targets import FORMATS, baseline_name, systems, target
from _usage import cpu_sample, other_cores

TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class Latency:
    system: str
    sent: int  # requests
    rate: float  # achieved requests/s
    expected: int  # failing runs sent after the warm-up
    delivered: int  # of those, arrived at the sink
    p50_ms: float
    p99_ms: float
    max_ms: float
    others: float | None = None  # cores busy with other work meanwhile (noise)

    def line(self) -> str:
        return (
            f"{self.system:<13} sent {self.sent:>7} at {self.rate:,.0f}/s  failing "
            f"{self.expected:>6}  delivered {self.delivered:>6}  p50 {self.p50_ms:7.1f} ms  "
            f"p99 {self.p99_ms:7.1f} ms  max {self.max_ms:7.1f} ms  {cores(self.others)}"
        )

    def key(self) -> tuple[int, float]:
        """Best first: everything delivered, then the lowest p99."""
        return (self.expected - self.delivered, self.p99_ms)


def latencies(
    system: str, load: dict[str, Any], arrivals: list[tuple[str, float]], args: argparse.Namespace
) -> Latency:
    """Match arrivals to send times by run index (batch 1: request n carries run n)."""
    sent = {int(n): float(t) for n, t in load["sends"]}
    counted = {n for n, t in sent.items() if t >= load["t_start"] + args.warmup}
    failing = {n for n in counted if n % args.failed_every == 0}
    first: dict[int, float] = {}
    for run_id, at in arrivals:
        if run_id[-10:].isdigit():
            first.setdefault(int(run_id[-10:]), at)
    lat = sorted((first[n] - sent[n]) * 1000 for n in failing if n in first)
    span = max(sent.values()) - min(sent.values()) if len(sent) > 1 else 0.0
    return Latency(
        system,
        len(sent),
        (len(sent) - 1) / span if span else 0.0,
        len(failing),
        len(lat),
        percentile(lat, 0.5),
        percentile(lat, 0.99),
        lat[-1] if lat else float("nan"),
    )


def measure(children: Children, args: argparse.Namespace, system: str, tmp: Path) -> Latency:
    requests = int(args.rate * (args.seconds + args.warmup))
    options = [
        *("--seconds", str(args.seconds + args.warmup), "--warmup", "0", "--client", "raw"),
        *("--rate", str(args.rate), "--concurrency", "64", "--max-requests", str(requests)),
        *("--failed-every", str(args.failed_every), "--format", FORMATS[system]),
        *("--record-sends", "--tag", "lat"),
    ]
    before = cpu_sample(children)
    sink, sink_port = children.bare_server("sink", status=200, record=True)
    try:
        with target(
            children, system, tmp, sink_port, args.alertmanager, args.relay_workers, args.store
        ) as url:
            load = children.load(url, options, args.seconds + args.warmup + 120)
            failing = sum(1 for n, _ in load["sends"] if n % args.failed_every == 0)
            wait_for_sink(sink_port, failing, args.deliver_timeout)
            arrivals = sink_arrivals(sink_port)
    finally:
        children.stop(sink)
    found = latencies(system, load, arrivals, args)
    return replace(found, others=other_cores(children, before))


def rows(results: dict[str, Latency], args: argparse.Namespace) -> list[Row]:
    rel, am = results["relay"], results.get("alertmanager")
    complete = rel.delivered == rel.expected
    note = cores(rel.others) + ("" if complete else f", {rel.delivered}/{rel.expected} delivered")
    what = f"at {args.rate:,.0f} updates/s (1 in {args.failed_every} failing)"
    what += workers_note(args.relay_workers, args.store)
    targets = {
        "p50": ("", None),
        "p99": (f"p99 <= {TARGET_P99_MS:g} ms", rel.p99_ms <= TARGET_P99_MS and complete),
    }
    return [
        compare(
            "latency",
            f"ingest → delivery {name} {what}",
            getattr(rel, f"{name}_ms"),
            "ms",
            getattr(am, f"{name}_ms") if am else None,
            baseline_name(args.alertmanager),
            target=target_text,
            met=met,
            note=note,
        )
        for name, (target_text, met) in targets.items()
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, installs="alertmanager", workers=True)
    p.add_argument("--rate", type=float, default=1000.0, help="updates (requests) per second")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of load")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load not counted")
    p.add_argument("--failed-every", type=int, default=5, help="every Nth update is FAILED")
    p.add_argument("--rounds", type=int, default=2, help="best (lowest p99) of this many")
    p.add_argument("--deliver-timeout", type=float, default=60.0, help="wait for the last one")
    args = p.parse_args(argv)
    if not 0 < args.rate <= 20_000 or not 0 < args.seconds <= 300 or args.failed_every < 1:
        p.error("--rate (0, 20000], --seconds (0, 300], --failed-every >= 1")
    if not 0 <= args.warmup <= 30 or not 0 < args.deliver_timeout <= 600:
        p.error("--warmup [0, 30], --deliver-timeout (0, 600]")
    if not 1 <= args.rounds <= 5:
        p.error("--rounds 1..5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen, args.alertmanager = systems(install=not args.no_install)
    results: dict[str, Latency] = {}
    with workspace() as (children, tmp):
        for _ in range(args.rounds):
            for system in chosen:
                found = measure(children, args, system, tmp)
                print(found.line(), flush=True)
                if system not in results or found.key() < results[system].key():
                    results[system] = found
    report(rows(results, args), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
