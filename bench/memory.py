"""Memory: relay's resident set size while it observes --runs distinct runs (default 1,000,000).

    .venv/bin/python bench/memory.py [--runs 1000000] [--batch 100] [--interval 1]

relay (one rule "FAILED → webhook sink", fresh SQLite store; bench/_relay_setup.py) gets
--runs distinct EXECUTING runs (no rule matches; run 0 is FAILED) from the load generator, in
JSON arrays of --batch, 4 connections. Every --interval seconds the script reads relay's VmRSS
(/proc) and its `relay_updates_received_total` (/metrics), and prints a line at every tenth of
the runs. Baselines from the same run: relay's RSS just after it started (idle), and its RSS
once the first --warm-up share of the runs was in. Targets: peak RSS (VmHWM) <= 150 MB; flat
after the warm-up: the RSS at the end at most 1.10x the RSS after the warm-up.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import _relay_setup
from _probes import relay_metric
from _procs import Child, Children, load_argv, run_script, workspace
from _results import Row, arg_parser, compare, ratio, report
from _usage import rss_mb

TARGET_MB = 150.0
TARGET_GROWTH = 1.10


@dataclass(frozen=True)
class Sample:
    at_s: float
    runs: int
    rss_mb: float


def sample(server: Child, url: str, t0: float) -> Sample | None:
    rss = rss_mb(server.proc.pid)
    try:
        runs = int(relay_metric(url, "relay_updates_received_total"))
    except OSError:
        return None
    return Sample(time.monotonic() - t0, runs, rss) if rss is not None else None


def observe(children: Children, server: Child, url: str, args: argparse.Namespace) -> list[Sample]:
    """Run the load while sampling; the samples (the first one before any load)."""
    t0 = time.monotonic()
    first = sample(server, url, t0)
    samples = [first] if first else []
    requests = -(-args.runs // args.batch)
    options = [
        *("--seconds", str(args.timeout), "--warmup", "0", "--client", "raw"),
        *("--batch", str(args.batch), "--max-requests", str(requests), "--concurrency", "4"),
        *("--failed-every", "1000000000000", "--tag", "mem"),
    ]
    load = children.spawn("load generator", load_argv(url + "/v1/runs", options))
    shown = 0
    while load.proc.poll() is None and time.monotonic() - t0 < args.timeout + 60:
        time.sleep(args.interval)
        s = sample(server, url, t0)
        if s is not None:
            samples.append(s)
            shown = show_progress(samples, shown, args.runs)
    result = children.collect_json(load, 60)
    time.sleep(args.interval)  # the last commits
    last = sample(server, url, t0)
    samples += [last] if last else []
    show_progress(samples, shown, args.runs)
    print(f"load: {result['ok']} requests answered, errors {result['errors']}", flush=True)
    if server.ended():
        print(f"# early: {server.ended()}", flush=True)
    return samples


def show_progress(samples: list[Sample], shown: int, total: int) -> int:
    """Print a line each time another tenth of the runs is in; the tenths shown so far."""
    s = samples[-1]
    tenth = min(s.runs * 10 // max(total, 1), 10)
    if tenth > shown:
        print(f"{s.at_s:7.1f}s  runs {s.runs:>9,}  rss {s.rss_mb:7.1f} MB", flush=True)
    return max(tenth, shown)


def rows(samples: list[Sample], peak: float | None, args: argparse.Namespace) -> list[Row]:
    idle = samples[0].rss_mb if samples else None
    warm_runs = args.runs * args.warm_up
    warm = next((s.rss_mb for s in samples if s.runs >= warm_runs), None)
    end = samples[-1] if samples else None
    got = end.runs if end else 0
    note = f"{got:,} runs seen" if got < args.runs else ""
    growth = ratio(end.rss_mb if end else None, warm)
    return [
        compare(
            "memory",
            f"relay peak RSS (VmHWM) over {args.runs:,} distinct runs",
            peak,
            "MB",
            idle,
            "relay idle",
            target=f"<= {TARGET_MB:g} MB",
            met=None if peak is None else peak <= TARGET_MB and not note,
            note=note,
        ),
        compare(
            "memory",
            f"relay RSS at the end vs after warm-up ({args.warm_up:.0%} of the runs)",
            end.rss_mb if end else None,
            "MB",
            warm,
            "after warm-up",
            target=f"<= {TARGET_GROWTH:.2f}x (flat)",
            met=None if growth is None else growth <= TARGET_GROWTH and not note,
            note=note,
        ),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__)
    p.add_argument("--runs", type=int, default=1_000_000, help="distinct runs to post")
    p.add_argument("--batch", type=int, default=100, help="runs per request")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--warm-up", type=float, default=0.1, help="share of the runs")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds of load at most")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 20_000_000 or not 1 <= args.batch <= 1000:
        p.error("--runs 1..20000000, --batch 1..1000")
    if not 0.05 <= args.interval <= 60 or not 0 < args.warm_up < 1 or args.timeout <= 0:
        p.error("--interval [0.05, 60], --warm-up (0, 1), --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with workspace() as (children, tmp):
        _, sink_port = children.bare_server("sink", status=200)
        config = _relay_setup.one_rule_yaml(sink_port)
        server, url = _relay_setup.start(children, tmp, config, "memory")
        time.sleep(1.0)  # settled after start-up: the idle baseline
        samples = observe(children, server, url, args)
        peak = rss_mb(server.proc.pid, "VmHWM")
    report(rows(samples, peak, args), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
