"""Rules scaling: relay's ingest cost at 10, 100 and 1,000 rules, measured in one run.

    .venv/bin/python bench/rules_scaling.py [--rules 10,100,1000] [--seconds 5] [--rounds 2]

Each point is one `bench/ingest.py` relay run (same process setup, same load generator, same
rule mix: task-glob, tag, cost, duration, metadata, regex, `when:` and is_test rules that never
match these runs, then the two that do, last), with --rules changed. The rule counts alternate
round by round and the best of each is kept. The figure is server CPU microseconds per request
(robust to the machine's noise); req/s is shown beside it. Baseline: the smallest rule count.
Target: 1,000 rules cost at most 1.5x the CPU per request of 10 rules.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import ingest
from _procs import Children, run_script, workspace
from _results import Row, arg_parser, compare, ratio, report

TARGET = 1.5


def run_point(
    children: Children, args: argparse.Namespace, rules: int, sink_port: int, tmp: Path
) -> dict[str, Any]:
    options = [
        *("--rules", str(rules), "--seconds", str(args.seconds), "--warmup", str(args.warmup)),
        *("--batch", str(args.batch), "--failed-every", str(args.failed_every)),
        *("--concurrency", str(args.concurrency)),
    ]
    tag = f"{os.getpid()}n{rules}"
    return ingest.relay(children, ingest.parse_args(options), tag, sink_port, tmp)


def line(rules: int, r: dict[str, Any]) -> str:
    cpu, others = r.get("server_cpu", 0.0) * 100, r.get("other_cpu", 0.0) * 100
    return (
        f"rules {rules:>5}  requests {r['requests']:>7}  req/s {r['rps']:>7.0f}  "
        f"server CPU {cpu:4.0f}%  others {others:4.0f}%  us/req {_us(r):7.0f}  "
        f"notifications {r['notifications']}"
    )


def _us(r: dict[str, Any]) -> float:
    us = ingest.cpu_us_per_request(r)
    return us if us is not None else float("inf")


def rows(best: dict[int, dict[str, Any]], args: argparse.Namespace) -> list[Row]:
    counts = sorted(best)
    base = ingest.cpu_us_per_request(best[counts[0]])
    out = []
    for n in counts:
        us = ingest.cpu_us_per_request(best[n])
        r = ratio(us, base)
        is_target = n == max(counts) and n != counts[0]
        out.append(
            compare(
                "rules scaling",
                f"relay CPU per request, {n:,} rules (batch {args.batch})",
                us,
                "us",
                base,
                f"{counts[0]} rules",
                target=f"<= {TARGET:g}x" if is_target else "",
                met=(r is not None and r <= TARGET) if is_target else None,
                note=f"{best[n]['rps']:,.0f} req/s",
            )
        )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__)
    p.add_argument("--rules", default="10,100,1000", help="rule counts, comma separated")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=2, help="best of this many per point")
    p.add_argument("--batch", type=int, default=1, help="runs per request")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--failed-every", type=int, default=5, help="every Nth run is FAILED")
    args = p.parse_args(argv)
    args.rules = sorted({int(n) for n in args.rules.split(",") if n})
    if not args.rules or min(args.rules) < 1 or not 1 <= args.rounds <= 5:
        p.error("--rules: positive counts; --rounds 1..5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    best: dict[int, dict[str, Any]] = {}
    with workspace() as (children, tmp):
        _, sink_port = children.bare_server("sink", status=200)
        for _ in range(args.rounds):
            for n in args.rules:
                r = run_point(children, args, n, sink_port, tmp)
                print(line(n, r), flush=True)
                if n not in best or _us(r) < _us(best[n]):
                    best[n] = r
    report(rows(best, args), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
