"""Every benchmark scenario, one after the other, and one summary table.

    .venv/bin/python bench/run_all.py            # full sizes (about 10-15 minutes)
    .venv/bin/python bench/run_all.py --quick    # tiny sizes (seconds): does everything run?
    .venv/bin/python bench/run_all.py --quick --jobs 7   # the same, all scenarios at once
    .venv/bin/python bench/run_all.py --only latency,delivery --no-install

Each scenario is its own script (see bench/README.md) run as a child process with
`--json-out`; its output is shown as it runs, then its summary rows are collected. A scenario
that fails or overruns its time limit gets a row saying so and the others still run. The table:
scenario, figure, value, baseline figure (measured in the same run), ratio, target, met?
`--no-install` is passed to the scenarios that would otherwise apt-get Alertmanager or
pip-install Apprise (their baselines are then skipped when missing). `--jobs N` runs up to N
scenarios side by side (their lines prefixed with the scenario's name): quicker to see that
everything runs, but their figures then compete for the CPU, so measure with the default 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _procs import BENCH, Children, run_script, workspace
from _results import Row, read_rows, table, write_rows

DID_NOT_FINISH = "scenario did not finish"
_ONE = ("--rounds", "1")
_QUICK_INGEST = (*_ONE, "--concurrency", "8", "--failed-every", "50")


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    installs: bool = False  # takes --no-install


SCENARIOS = (
    Scenario("ingest", "ingest.py", (), ("--seconds", "0.5", "--warmup", "0.1", *_QUICK_INGEST)),
    Scenario(
        "end-to-end",
        "end_to_end.py",
        (),
        ("--runs", "200", "--concurrency", "8", "--deliver-timeout", "30", *_ONE),
        installs=True,
    ),
    Scenario(
        "latency",
        "latency.py",
        (),
        ("--rate", "200", "--seconds", "1", "--warmup", "0.2", "--deliver-timeout", "10", *_ONE),
        installs=True,
    ),
    Scenario(
        "rules-scaling",
        "rules_scaling.py",
        (),
        ("--rules", "10,1000", "--seconds", "0.5", "--warmup", "0.1", *_QUICK_INGEST),
    ),
    Scenario("memory", "memory.py", (), ("--runs", "5000", "--interval", "0.2")),
    Scenario(
        "delivery", "delivery.py", (), ("--count", "200", "--timeout", "30", *_ONE), installs=True
    ),
    Scenario("realtime", "realtime_follow.py", (), ("--changes", "2000", "--page", "200")),
)


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"# {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  nproc={os.cpu_count()}  "
        f"cpu={model}  python={platform.python_version()}  load={os.getloadavg()[0]:.2f}"
    )


def run_one(
    children: Children, scenario: Scenario, args: argparse.Namespace, out: Path
) -> list[Row]:
    """Run one scenario script to its end (or its time limit); its summary rows."""
    argv = [sys.executable, str(BENCH / scenario.script), "--json-out", str(out)]
    argv += list(scenario.quick if args.quick else scenario.full)
    argv += ["--no-install"] if scenario.installs and args.no_install else []
    print(f"\n== {scenario.name}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    child = children.spawn(scenario.name, argv)
    prefix = f"   [{scenario.name}] " if args.jobs > 1 else "   "
    for stream in (child.proc.stdout, child.proc.stderr):
        child.watch(stream, lambda line: print(prefix + line, end="", flush=True))
    try:
        child.proc.wait(args.timeout)
    except subprocess.TimeoutExpired:
        children.stop(child)
        return [_failed(scenario, f"over the {args.timeout:.0f}s limit; stopped")]
    rc = children.stop(child)
    print(f"== {scenario.name}: {time.monotonic() - started:.1f}s", flush=True)
    if rc != 0 or not out.exists():
        return [_failed(scenario, f"exit code {rc}")]
    return read_rows(out)


def _failed(scenario: Scenario, why: str) -> Row:
    return Row(scenario.name, DID_NOT_FINISH, None, "", note=why, met=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    p.add_argument("--only", default="", help="scenario names, comma separated")
    p.add_argument("--no-install", action="store_true", help="no apt-get / pip install")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds per scenario")
    p.add_argument("--json-out", type=Path, default=None, help="write every row here")
    p.add_argument("--jobs", type=int, default=1, help="scenarios run side by side (figures skew)")
    args = p.parse_args(argv)
    names = {s.name for s in SCENARIOS}
    args.only = [n for n in args.only.split(",") if n]
    if set(args.only) - names:
        p.error(f"--only takes: {', '.join(sorted(names))}")
    if args.jobs < 1:
        p.error("--jobs takes 1 or more")
    args.timeout = args.timeout or (120.0 if args.quick else 900.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(machine(), flush=True)
    rows: list[Row] = []
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    started = time.monotonic()
    # a scenario stopped early needs a moment to stop its own children
    with workspace("relay-bench-all-", exit_grace_s=15.0) as (children, tmp):
        # threads only wait on children; on Ctrl-C or SIGTERM (raised here, in the main thread)
        # the workspace stops every child, so each thread's wait ends and the pool with it
        # (the scenarios not started yet are dropped: none starts after the workspace closed)
        pool = ThreadPoolExecutor(args.jobs, thread_name_prefix="scenario")
        try:
            runs = [pool.submit(run_one, children, s, args, tmp / f"{s.name}.json") for s in chosen]
            for run in runs:  # the table keeps the scenarios' order
                rows += run.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    print(f"\n{machine()}  took {time.monotonic() - started:.0f}s")
    print(table(rows), flush=True)
    write_rows(args.json_out, rows)
    return 1 if any(r.figure == DID_NOT_FINISH for r in rows) else 0


if __name__ == "__main__":
    run_script(main)
