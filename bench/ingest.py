"""Ingest throughput of `relay serve` against a bare aiohttp server, on loopback, in one run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 64] [--rules 100] [--batch 1]

Scenarios, alternated (baseline, relay, baseline, relay, ...) and the best of each kept:
- baseline: bench/bare_server.py, which reads each POST body and answers 202 without parsing;
- relay: `python -m relay serve` with --rules rules (a few match FAILED runs and notify webhook
  channels pointing at a bare sink server), a fresh SQLite store (`--store postgresql`: a fresh
  throwaway PostgreSQL server), durable 202.
The load generator (bench/_load.py) is a separate process. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import _relay_setup
import _results
from _probes import sink_count
from _procs import Child, Children, py_spy, run_script, workspace
from _usage import cpu_sample

DRAIN_WAIT_S = 10.0


def rules_yaml(count: int) -> str:
    """`count` rules like a real config: most never match these runs; the last two do."""
    kinds = [
        "  - name: billing-failures-{i}\n    match: {{status: [failure], task: 'billing-{i}/*'}}",
        "  - name: team-{i}\n    match: {{tags: {{any: ['team:{i}']}}}}",
        "  - name: expensive-{i}\n    match: {{cost_cents: {{gt: {cost}}}}}",
        "  - name: slow-{i}\n    match: {{status: [COMPLETED], duration_ms: {{gt: 600000}}}}",
        "  - name: tier-{i}\n    match: {{status: [failure], metadata: {{customer.tier: t{i}}}}}",
        "  - name: etl-{i}\n    match: {{status: [CRASHED], task_regex: '^etl{i}-'}}",
        "  - name: report-{i}\n    match: {{status: [failure], task: 'report-{i}'}}\n"
        "    when: \"run.durationMs > 60000 or 'vip' in run.tags\"",
        "  - name: test-{i}\n    match: {{is_test: true, tags: {{all: ['suite:{i}', 'nightly']}}}}",
    ]
    lines = ["rules:"]
    for i in range(max(count - 2, 0)):
        rule = kinds[i % len(kinds)].format(i=i, cost=500 + i)
        lines.append(rule + "\n    notify: [pager]")
    matching = [
        "  - name: pro-plan-failures\n    match: {status: [failure], tags: {any: ['plan:pro']}}\n"
        "    notify: [ops]\n    continue: true",
        "  - name: sync-failures\n    match: {status: [failure], task: 'sync-*'}\n"
        "    notify: [pager]",
    ]
    lines += matching[-count:] if count < 2 else matching
    return "\n".join(lines) + "\n"


def config_yaml(rules: int, sink_port: int) -> str:
    sink = f"http://127.0.0.1:{sink_port}"
    return f"""\
defaults:
  timeout: 5s
channels:
  pager:
    type: webhook
    url: {sink}/pager
  ops:
    type: webhook
    url: {sink}/ops
    headers: {{X-Team: ops}}
{rules_yaml(rules)}"""


def run_load(children: Children, url: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    options = [
        *("--seconds", str(args.seconds), "--warmup", str(args.warmup)),
        *("--concurrency", str(args.concurrency), "--batch", str(args.batch)),
        *("--max-requests", str(args.max_requests), "--client", args.client, "--tag", tag),
        *("--failed-every", str(args.failed_every)),
    ]
    return children.load(url + "/v1/runs", options, args.warmup + args.seconds + 90)


def measure(
    children: Children, server: Child, url: str, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    """Run the load against `url`; add CPU use (cores busy, warm-up included) of the server,
    the load generator and everything else on the machine (noise)."""
    before = cpu_sample(children, server)
    result = run_load(children, url, args, tag)
    result.update(cpu_sample(children, server).shares(before))
    return result


def start_py_spy(
    children: Children, server: Child, args: argparse.Namespace, tag: str
) -> Child | None:
    """py-spy record (collapsed stacks) of the relay over the measured window, if asked."""
    if not args.py_spy:
        return None
    return py_spy(children, server, f"{args.py_spy}-{tag}.txt", args.seconds, args.py_spy_rate)


def baseline(children: Children, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    server, port = children.bare_server("baseline", status=202)
    try:
        return measure(children, server, f"http://127.0.0.1:{port}", args, tag)
    finally:
        children.stop(server)


def relay(
    children: Children, args: argparse.Namespace, tag: str, sink_port: int, tmp: Path
) -> dict[str, Any]:
    before = sink_count(sink_port)
    config = config_yaml(args.rules, sink_port)
    fresh = Path(tempfile.mkdtemp(prefix="store-", dir=tmp))
    with _relay_setup.store_url(args.store, fresh) as store:
        server, url = _relay_setup.start(
            children, tmp, config, tag, args.relay_workers, store=store
        )
        return _measure_relay(children, args, tag, (server, url), before, sink_port)


def _measure_relay(
    children: Children,
    args: argparse.Namespace,
    tag: str,
    started: tuple[Child, str],
    before: int,
    sink_port: int,
) -> dict[str, Any]:
    server, url = started
    try:
        spy = start_py_spy(children, server, args, tag)
        result = measure(children, server, url, args, tag)
        if spy is not None:
            spy.proc.wait(30)
        deadline = time.monotonic() + DRAIN_WAIT_S
        received = sink_count(sink_port) - before
        while received < result["notifications"] and time.monotonic() < deadline:
            time.sleep(0.1)
            received = sink_count(sink_port) - before
        result["sink_received"] = received
        result["drain_s"] = DRAIN_WAIT_S - max(deadline - time.monotonic(), 0.0)
        result["relay_log_lines"] = server.lines
    finally:
        rc = children.stop(server)
    if rc not in (0, None):
        result["relay_exit"] = rc
    return result


def _ms(value: float | None) -> str:  # None: no 202 inside the window (NaN in JSON)
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"


def _pct(r: dict[str, Any], key: str) -> str:
    return f"{r[key] * 100:5.0f}%" if key in r else "     ?"


def cpu_us_per_request(r: dict[str, Any]) -> float | None:
    """Server CPU microseconds per request answered (warm-up included): robust to noise."""
    if "server_cpu_s" not in r or not r["issued"]:
        return None
    return float(r["server_cpu_s"]) / int(r["issued"]) * 1e6


def row(name: str, r: dict[str, Any], batch: int) -> str:
    cpu = " ".join(_pct(r, k) for k in ("server_cpu", "gen_cpu", "other_cpu"))
    per_req = cpu_us_per_request(r)
    cpu += f" {per_req:>7.0f}" if per_req is not None else "       ?"
    notes = ""
    if "sink_received" in r:
        notes = f"{r['notifications']:>8} {r['sink_received']:>8}"
    runs = f"{r['runs_per_s']:>9.0f}" if batch > 1 else ""
    return (
        f"{name:<10} {r['requests']:>8} {r['rps']:>8.0f} {runs}{_ms(r['p50_ms'])} "
        f"{_ms(r['p99_ms'])} {r['errors']:>6} {cpu} {notes}"
    )


def header(batch: int) -> str:
    runs = f"{'runs/s':>9}" if batch > 1 else ""
    return (
        f"{'scenario':<10} {'requests':>8} {'req/s':>8} {runs}{'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'srvCPU':>6} {'genCPU':>6} {'others':>6} {'us/req':>7} "
        f"{'notif':>8} {'sink':>8}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _results.arg_parser(__doc__, workers=True)
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before")
    p.add_argument("--concurrency", type=int, default=64, help="connections in flight")
    p.add_argument("--rules", type=int, default=100)
    p.add_argument("--batch", type=int, default=1, help="runs per request (JSON array if > 1)")
    p.add_argument("--rounds", type=int, default=2, help="baseline+relay pairs")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="cap per run")
    p.add_argument("--client", choices=("raw", "aiohttp"), default="raw", help="load generator")
    p.add_argument("--failed-every", type=int, default=5, help="every Nth run is FAILED")
    p.add_argument(
        "--py-spy",
        default="",
        metavar="PREFIX",
        help="profile each relay run with py-spy (if on PATH or in the venv) into PREFIX-TAG.txt",
    )
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples a second")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 300 or not 0 <= args.warmup <= 30:
        p.error("--seconds must be in (0, 300] and --warmup in [0, 30]")
    if not 1 <= args.rounds <= 5 or args.rules < 1 or args.batch < 1 or args.concurrency < 1:
        p.error("--rounds 1..5; --rules, --batch and --concurrency at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"# {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  nproc={os.cpu_count()}  "
        f"python={platform.python_version()}  load={os.getloadavg()[0]:.2f}\n# "
        f"seconds={args.seconds:g} warmup={args.warmup:g} "
        f"concurrency={args.concurrency} rules={args.rules} batch={args.batch} "
        f"client={args.client} failed=1/{args.failed_every}",
        flush=True,
    )
    best: dict[str, dict[str, Any]] = {}
    # children are stopped before their temp dir goes away
    with workspace() as (children, tmp):
        sink, sink_port = children.bare_server("sink", status=200)
        print(header(args.batch), flush=True)
        for n in range(args.rounds):
            for name in ("baseline", "relay"):
                tag = f"{os.getpid()}r{n}{name[0]}"
                try:
                    if name == "baseline":
                        r = baseline(children, args, tag)
                    else:
                        r = relay(children, args, tag, sink_port, tmp)
                except (RuntimeError, OSError, ValueError) as exc:  # report it, go on
                    print(f"{name:<10} FAILED: {exc}", flush=True)
                    continue
                print(row(name, r, args.batch), flush=True)
                if name not in best or r["rps"] > best[name]["rps"]:
                    best[name] = r
        children.stop(sink)
    if len(best) < 2:
        print("no result for a scenario; see FAILED above")
        return 1
    report(best, args)
    _results.report(summary(best, args), args.json_out)
    return 0


def summary(best: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[_results.Row]:
    """The summary rows (bench/_results.py): req/s and CPU per request, relay vs baseline."""
    base, rel = best["baseline"], best["relay"]
    what = f"batch {args.batch}, {args.rules} rules"
    what += _results.workers_note(args.relay_workers, args.store)
    req_ratio = _results.ratio(rel["rps"], base["rps"])
    base_us, rel_us = cpu_us_per_request(base), cpu_us_per_request(rel)
    return [
        _results.Row(
            "ingest",
            f"POST /v1/runs req/s ({what})",
            rel["rps"],
            "req/s",
            base["rps"],
            "bare aiohttp",
            req_ratio,
            ">= 0.60x",
            None if req_ratio is None else req_ratio >= 0.6,
            _results.cores(rel.get("other_cpu")),
        ),
        _results.Row(
            "ingest",
            f"server CPU per request ({what})",
            rel_us,
            "us",
            base_us,
            "bare aiohttp",
            _results.ratio(rel_us, base_us),
            note=f"{rel['sink_received']}/{rel['notifications']} notifications delivered, "
            + _results.cores(rel.get("other_cpu")),
        ),
    ]


def report(best: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    base, rel = best["baseline"], best["relay"]
    print(f"\nbest of {args.rounds} (body {rel['body_bytes']} bytes/request):")
    print(header(args.batch))
    for name in ("baseline", "relay"):
        print(row(name, best[name], args.batch))
    if base["capped"] or rel["capped"]:
        print("note: --max-requests was reached before the window ended")
    ratio = rel["rps"] / base["rps"] if base["rps"] else float("nan")
    print(f"\nrelay/baseline = {ratio:.0%} of req/s  (target >= 60%)")
    base_us, rel_us = cpu_us_per_request(base), cpu_us_per_request(rel)
    if base_us and rel_us:
        print(f"relay/baseline by server CPU per request = {base_us / rel_us:.0%}")
    print(
        f"relay notifications: enqueued {rel['notifications']}, "
        f"received by the sink {rel['sink_received']} after {rel['drain_s']:.1f}s drain wait"
    )


if __name__ == "__main__":
    run_script(main)
