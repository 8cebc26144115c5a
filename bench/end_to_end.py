"""End to end against Alertmanager: N failing runs in, N webhooks out, time to the last delivery.

    .venv/bin/python bench/end_to_end.py [--runs 10000] [--batches 1,100] [--rounds 1]
    .venv/bin/python bench/end_to_end.py --store postgresql    # relay on PostgreSQL

For each batch size and system, a fresh sink (bench/bare_server.py --status 200) and a fresh
system under test, each its own process on 127.0.0.1:
- relay: `relay serve`, one rule (status FAILED → webhook `sink`), fresh SQLite store (or, with
  `--store postgresql`, a fresh throwaway PostgreSQL server); the load generator POSTs the runs
  (SDK objects) to /v1/runs;
- alertmanager: the same runs as alerts to /api/v2/alerts, group_by [run_id], group_wait 0s,
  webhook receiver → the sink (bench/_alertmanager.py); skipped with a message when Alertmanager
  is missing and cannot be installed.
The load generator (bench/_load.py, closed loop, --concurrency connections) sends N runs in
requests of B; the clock runs from its first request to the sink's last POST (both read
time.monotonic(), one clock for the machine). Target: relay's time <= 1/1.5 of Alertmanager's.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _probes import wait_for_sink
from _procs import Children, run_script, workspace
from _results import Row, arg_parser, compare, cores, ratio, report, workers_note
from _targets import FORMATS, baseline_name, systems, target
from _usage import cpu_sample, other_cores

TARGET = 1 / 1.5


@dataclass(frozen=True)
class Outcome:
    system: str
    batch: int
    runs: int
    delivered: int
    total_s: float | None  # first request → last delivery; None if not all arrived
    ingest_s: float  # first request → last answer
    errors: int
    others: float | None  # cores busy with other work meanwhile (noise)
    statuses: dict[str, int]  # answers to the load generator (0: no answer)

    def line(self) -> str:
        total = f"{self.total_s:8.2f}s" if self.total_s is not None else "   (timeout)"
        per_s = self.delivered / self.total_s if self.total_s else 0.0
        return (
            f"{self.system:<13} batch {self.batch:>4}  runs {self.runs:>7}  delivered "
            f"{self.delivered:>7}  ingest {self.ingest_s:7.2f}s  last delivery {total}  "
            f"({per_s:,.0f}/s)  errors {self.errors}  {cores(self.others)}"
        ) + (f"  answers {self.statuses}" if self.errors else "")


def drive(
    children: Children, url: str, sink_port: int, args: argparse.Namespace, batch: int, fmt: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """N failing runs to `url` in requests of `batch`; (load result, sink state at the end)."""
    requests = max(args.runs // batch, 1)
    options = [
        *("--seconds", "300", "--warmup", "0", "--client", "raw", "--failed-every", "1"),
        *("--concurrency", str(args.concurrency), "--batch", str(batch)),
        *("--max-requests", str(requests), "--format", fmt, "--tag", fmt[:2]),
    ]
    load = children.load(url, options, 400)
    sink = wait_for_sink(sink_port, requests * batch, args.deliver_timeout)
    return load, sink


def measure(
    children: Children, args: argparse.Namespace, system: str, batch: int, tmp: Path
) -> Outcome:
    before = cpu_sample(children)
    sink, sink_port = children.bare_server("sink", status=200)
    try:
        with target(
            children, system, tmp, sink_port, args.alertmanager, args.relay_workers, args.store
        ) as url:
            load, state = drive(children, url, sink_port, args, batch, FORMATS[system])
    finally:
        children.stop(sink)
    runs, delivered, t0 = load["issued"] * batch, state["posts"], load["t_start"]
    total = state["last"] - t0 if delivered >= runs and state["last"] is not None else None
    ingest_s, others = load["t_done"] - t0, other_cores(children, before)
    return Outcome(
        system, batch, runs, delivered, total, ingest_s, load["errors"], others, load["statuses"]
    )


def best(outcomes: list[Outcome]) -> Outcome | None:
    done = [o for o in outcomes if o.total_s is not None]
    return min(done, key=lambda o: o.total_s or 0.0) if done else None


def rows(results: dict[tuple[str, int], list[Outcome]], args: argparse.Namespace) -> list[Row]:
    out = []
    for batch in args.batches:
        rel, am = best(results[("relay", batch)]), best(results.get(("alertmanager", batch), []))
        value = rel.total_s if rel else None
        base = am.total_s if am else None
        r = ratio(value, base)
        out.append(
            compare(
                "end-to-end",
                f"{args.runs:,} failing runs → webhooks, batch {batch}: time to last delivery"
                + workers_note(args.relay_workers, args.store),
                value,
                "s",
                base,
                baseline_name(args.alertmanager),
                target="relay/AM <= 0.67",
                met=None if r is None else r <= TARGET,
                note=cores(rel.others if rel else None),
            )
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, installs="alertmanager", workers=True)
    p.add_argument("--runs", type=int, default=10_000, help="failing runs (= deliveries)")
    p.add_argument("--batches", default="1,100", help="runs per request, comma separated")
    p.add_argument("--concurrency", type=int, default=64, help="connections of the generator")
    p.add_argument("--rounds", type=int, default=2, help="best of this many per system")
    p.add_argument("--deliver-timeout", type=float, default=120.0, help="seconds per wait")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if not 1 <= args.runs <= 1_000_000 or not args.batches or min(args.batches) < 1:
        p.error("--runs 1..1000000, --batches at least 1")
    if not 1 <= args.rounds <= 5 or not 0 < args.deliver_timeout <= 1800:
        p.error("--rounds 1..5, --deliver-timeout (0, 1800]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen, args.alertmanager = systems(install=not args.no_install)
    results: dict[tuple[str, int], list[Outcome]] = {}
    with workspace() as (children, tmp):
        for _ in range(args.rounds):
            for batch in args.batches:
                for system in chosen:
                    outcome = measure(children, args, system, batch, tmp)
                    print(outcome.line(), flush=True)
                    results.setdefault((system, batch), []).append(outcome)
    report(rows(results, args), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
