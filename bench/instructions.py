"""Instructions per update, counted by callgrind: figures that repeat on a shared, noisy machine.

    .venv/bin/python bench/instructions.py [--small 200] [--large 1000] [--against TREE]

The timed scenarios' figures move by a quarter between two runs of the same code here (other
work on the machine, the host under the VM). valgrind's callgrind counts the instructions a
process executes, whatever else the machine does: the same code, inputs and sizes give the same
count to within about 0.5 %. Each figure is a slope: the process under callgrind does the work
for --small and, in a second process, for --large updates, and (count(large) - count(small)) /
(large - small) is the count per update, start-up and shutdown cancelled out.

- ingest: `relay serve` (100 rules, the config of bench/ingest.py) takes `POST /v1/runs` of one
  EXECUTING run each from 8 connections: intake alone, no notification (but the first run of
  each process, FAILED in both sizes). Baseline: bench/bare_server.py taking the same requests.
- delivery: relay's outbox is filled without callgrind (a paused sink, then relay is killed),
  then relay under callgrind drains it to the sink (default webhook `concurrency`). Baseline:
  Apprise (bench/apprise_sender.py) sending as many to the same kind of sink.
- `--against TREE`: the relay of another checkout (run with this venv, PYTHONPATH=TREE) is
  measured too, for an A/B of two commits; its rows' ratio is this checkout / that one.

Not counted: the kernel (system calls, fsync), time spent waiting, and how fast the CPU runs
each instruction. A change that trades instructions for system calls needs the timed scenarios
too. callgrind runs a process's threads one at a time, so the store's group commits hold other
numbers of updates than without it. valgrind comes from Debian's packages (installed when
missing, as root, unless --no-install); Apprise from PyPI, as bench/delivery.py installs it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import _debian
import _relay_setup
import ingest
from _probes import sink_count, wait_for_sink
from _procs import BENCH, Child, Children, pause, run_script, workspace
from _results import Row, arg_parser, compare, report
from delivery import ensure_apprise

WRAPPED_STOP_S = 600.0  # a process under callgrind ends slowly: it writes its counts at exit
WAIT_S = 1800.0  # bound of one process's work under callgrind
Counter = Callable[[int], int]  # updates -> instructions of the process doing them


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def instructions(out: Path) -> int:
    """Instructions (Ir) a process executed, every thread, from its callgrind output file."""
    text = out.read_text(errors="replace") if out.exists() else ""
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction count in {out} (did the process end normally?)")
    return int(found.group(1))


def stopped(children: Children, child: Child, out: Path) -> int:
    code = children.stop(child, grace_s=WRAPPED_STOP_S)
    if code not in (0, -15):
        raise RuntimeError(f"{child.name} under callgrind ended with {code}")
    return instructions(out)


def post_runs(children: Children, url: str, count: int, batch: int, failed_every: int) -> None:
    """`count` runs in requests of `batch`, every `failed_every`-th FAILED; all 202."""
    options = [*("--seconds", "600", "--warmup", "0", "--client", "raw")]
    options += [*("--batch", str(batch), "--failed-every", str(failed_every))]
    options += [*("--concurrency", "8", "--max-requests", str(count // batch))]
    load = children.load(url + "/v1/runs", options, WAIT_S + 60)
    if load["errors"] or load["ok"] * batch < count:
        raise RuntimeError(f"the load generator did not get every 202: {load}")


class Scenarios:
    """The counters of each system, sharing one workspace and one sink."""

    def __init__(self, children: Children, tmp: Path, sink_port: int) -> None:
        self.children, self.tmp, self.sink_port = children, tmp, sink_port
        self.runs = 0

    def out(self, name: str, count: int) -> Path:
        self.runs += 1
        return self.tmp / f"{name}-{count}-{self.runs}.callgrind"

    def relay_intake(self, tree: str) -> Counter:
        def count(n: int) -> int:
            out = self.out("relay-ingest", n)
            config = self.config(ingest.config_yaml(100, self.sink_port))
            settings = {"PYTHONPATH": tree} if tree else {}
            server, url = self.children.relay(
                config, config.parent / "relay.db", settings, callgrind(out)
            )
            post_runs(self.children, url, n, 1, 10**9)
            return stopped(self.children, server, out)

        return count

    def bare_intake(self, n: int) -> int:
        out = self.out("bare-ingest", n)
        server, port = self.children.bare_server("bare", 202, wrap=callgrind(out))
        post_runs(self.children, f"http://127.0.0.1:{port}", n, 1, 10**9)
        return stopped(self.children, server, out)

    def relay_drain(self, tree: str) -> Counter:
        def count(n: int) -> int:
            out = self.out("relay-delivery", n)
            sink, port = self.children.bare_server("sink", 200)
            config = self.config(_relay_setup.one_rule_yaml(port, channel_timeout="120s"))
            settings = {"PYTHONPATH": tree} if tree else {}
            db = config.parent / "relay.db"
            pause(sink, True)
            filler, url = self.children.relay(config, db, settings)
            post_runs(self.children, url, n, 100, 1)
            self.children.stop(filler, grace_s=0)  # killed: what it had in flight stays owed
            pause(sink, False)
            before = settled_count(port)
            server, _ = self.children.relay(config, db, settings, callgrind(out))
            got = wait_for_sink(port, before + n, WAIT_S)["posts"] - before
            counted = stopped(self.children, server, out)
            self.children.stop(sink)
            if got < n:
                raise RuntimeError(f"relay delivered {got} of {n} in {WAIT_S:.0f}s")
            return counted

        return count

    def apprise_sends(self, n: int) -> int:
        out = self.out("apprise", n)
        sink, port = self.children.bare_server("sink", 200)
        argv = [*callgrind(out), sys.executable, str(BENCH / "apprise_sender.py")]
        argv += [f"http://127.0.0.1:{port}/apprise", "--count", str(n), "--timeout", str(WAIT_S)]
        sent = self.children.run_json("apprise sender", argv, WAIT_S + 60)
        self.children.stop(sink)
        if sent["sent"] < n:
            raise RuntimeError(f"apprise sent {sent['sent']} of {n}")
        return instructions(out)

    def config(self, text: str) -> Path:
        work = self.tmp / f"relay-{self.runs}"
        work.mkdir()
        (work / "config.yaml").write_text(text)
        return work / "config.yaml"


def settled_count(port: int) -> int:
    """The sink's count once it stops growing (a resumed sink answers what it held)."""
    last = -1
    while (now := sink_count(port)) != last:
        last = now
        wait_for_sink(port, now + 1, 0.5)
    return last


def per_update(counter: Counter, small: int, large: int, name: str) -> float:
    low, high = counter(small), counter(large)
    each = (high - low) / (large - small)
    print(
        f"{name:<24} {low:>16,} Ir at {small}, {high:>16,} at {large}: {each:,.0f} each", flush=True
    )
    return each


def rows(figures: dict[str, float], against: str) -> list[Row]:
    def row(scenario: str, what: str, mine: str, base: str, base_name: str) -> Row:
        return compare(scenario, what, figures.get(mine), "Ir", figures.get(base), base_name)

    made = [
        row(
            "ingest",
            "instructions per request, intake alone, 100 rules",
            "relay-ingest",
            "bare-ingest",
            "bare aiohttp",
        ),
        row(
            "delivery",
            "instructions per notification to a webhook",
            "relay-delivery",
            "apprise",
            "apprise json://",
        ),
    ]
    if against:
        made += [
            row("ingest", "the same, against " + against, "relay-ingest", "against-ingest", "TREE"),
            row(
                "delivery",
                "the same, against " + against,
                "relay-delivery",
                "against-delivery",
                "TREE",
            ),
        ]
    return [r for r in made if r.value is not None]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, installs="valgrind and apprise")
    p.add_argument("--small", type=int, default=200, help="updates of the first process")
    p.add_argument("--large", type=int, default=1000, help="updates of the second process")
    p.add_argument("--against", default="", metavar="TREE", help="another relay checkout")
    p.add_argument("--only", choices=("ingest", "delivery"), help="one scenario only")
    args = p.parse_args(argv)
    if not 100 <= args.small < args.large <= 100_000 or args.small % 100 or args.large % 100:
        p.error("--small and --large: multiples of 100, 100 <= small < large <= 100000")
    if args.against and not (Path(args.against) / "relay" / "__init__.py").exists():
        p.error(f"--against {args.against}: no relay package there")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    valgrind, why = _debian.ensure(("valgrind",), "valgrind", not args.no_install)
    if valgrind is None:
        print(f"# cannot count instructions: {why}", flush=True)
        return 1
    no_apprise = ensure_apprise(install=not args.no_install)
    figures: dict[str, float] = {}
    with workspace(exit_grace_s=WRAPPED_STOP_S) as (children, tmp):
        sink, sink_port = children.bare_server("sink", 200)
        s = Scenarios(children, tmp, sink_port)
        counters: dict[str, Counter] = {}
        if args.only != "delivery":
            counters |= {"relay-ingest": s.relay_intake(""), "bare-ingest": s.bare_intake}
            if args.against:
                counters["against-ingest"] = s.relay_intake(str(Path(args.against).resolve()))
        if args.only != "ingest":
            counters["relay-delivery"] = s.relay_drain("")
            if not no_apprise:
                counters["apprise"] = s.apprise_sends
            if args.against:
                counters["against-delivery"] = s.relay_drain(str(Path(args.against).resolve()))
        for name, counter in counters.items():
            figures[name] = per_update(counter, args.small, args.large, name)
        children.stop(sink)
    report(rows(figures, args.against), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
