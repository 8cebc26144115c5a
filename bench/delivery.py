"""Delivery: notifications/s from relay's outbox to a webhook sink, against Apprise.

    .venv/bin/python bench/delivery.py [--count 10000] [--concurrency N] [--no-install]
    .venv/bin/python bench/delivery.py --store postgresql    # relay on PostgreSQL

relay: a sink (bench/bare_server.py --status 200) is started and paused (SIGSTOP: it accepts
connections but answers nothing); relay (one rule "FAILED → webhook sink", channel timeout
120 s, --concurrency requests in flight, else relay's default for webhooks) ingests --count
failing runs in batches of 100, so its outbox holds --count notifications; then the sink is
resumed and the clock runs from that moment to the sink's last POST. Apprise: a fresh sink, and
bench/apprise_sender.py in its own process sends --count notifications with Apprise's json://
notifier (one after the other, as `Apprise.notify` does); the clock runs from its first send to
the sink's last POST. `--store postgresql`: relay's store is a throwaway PostgreSQL server
(tools/pgserver.py), a fresh one each round. Apprise is pip-installed into this venv when
missing (unless --no-install); without it the baseline is skipped. Target: relay >= 10x
Apprise's rate.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import _relay_setup
from _probes import wait_for_sink
from _procs import BENCH, Child, Children, pause, py_spy, run_script, workspace
from _results import Row, arg_parser, compare, cores, ratio, report, workers_note
from _usage import cpu_sample, other_cores, threads_cpu_s

TARGET = 10.0


def ensure_apprise(install: bool) -> str:
    """'' when apprise can be imported (pip-installing it if allowed), else why not."""
    if importlib.util.find_spec("apprise") is not None:
        return ""
    if not install:
        return "apprise not installed (installing disabled)"
    print("# pip install apprise (into this venv, for the baseline only) ...", flush=True)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    try:
        done = subprocess.run([*argv, "apprise"], capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "pip install apprise failed"
    importlib.invalidate_caches()
    ok = done.returncode == 0 and importlib.util.find_spec("apprise") is not None
    return "" if ok else "pip install apprise failed"


@dataclass(frozen=True)
class Drain:
    rate: float  # notifications/s
    delivered: int
    others: float | None  # cores busy with other work meanwhile (noise)
    cpu_us: float | None = None  # CPU of the sender's processes per notification
    threads_us: dict[str, float] | None = None  # of relay's main process, by thread, the same

    def line(self, name: str) -> str:
        cpu = "" if self.cpu_us is None else f"  {self.cpu_us:,.0f} us CPU each"
        busy = {t: us for t, us in (self.threads_us or {}).items() if us >= 1}
        threads = ", ".join(f"{t} {us:,.0f}" for t, us in busy.items())
        return (
            f"{name:<8} {self.delivered:>7} delivered at {self.rate:9,.0f}/s{cpu}"
            f"  {cores(self.others)}" + (f"  [threads, us each: {threads}]" if threads else "")
        )


def relay_drain(children: Children, args: argparse.Namespace, tmp: Path) -> Drain:
    """Notifications/s from a pre-filled outbox once the sink answers."""
    sink, sink_port = children.bare_server("sink", status=200)
    config = _relay_setup.one_rule_yaml(
        sink_port, channel_timeout="120s", concurrency=args.concurrency
    )
    try:
        pause(sink, True)
        fresh = Path(tempfile.mkdtemp(prefix="store-", dir=tmp))
        with _relay_setup.store_url(args.store, fresh) as store:
            return _drain(children, args, tmp, (sink, sink_port), config, store)
    finally:
        children.stop(sink)


def _drain(
    children: Children,
    args: argparse.Namespace,
    tmp: Path,
    sink_at: tuple[Child, int],
    config: str,
    store: str,
) -> Drain:
    sink, sink_port = sink_at
    server, url = _relay_setup.start(
        children, tmp, config, "delivery", args.relay_workers, store=store
    )
    try:
        options = [
            *("--seconds", "300", "--warmup", "0", "--client", "raw", "--failed-every", "1"),
            *("--batch", "100", "--concurrency", "4", "--tag", "dl"),
            *("--max-requests", str(-(-args.count // 100))),
        ]
        load = children.load(url + "/v1/runs", options, 400)
        print(f"relay: outbox filled with {load['notifications']} notifications", flush=True)
        before, t0 = cpu_sample(children, server), time.monotonic()
        threads_before = threads_cpu_s(server.proc.pid)
        pause(sink, False)
        spy = None
        if args.py_spy:
            spy = py_spy(children, server, args.py_spy, args.count / 1000, args.py_spy_rate)
        state = wait_for_sink(sink_port, load["notifications"], args.timeout)
        used = cpu_sample(children, server).shares(before)
        threads = threads_cpu_s(server.proc.pid)
        others = used.get("other_cpu")
        if spy is not None:
            spy.proc.wait(60)
    finally:
        children.stop(server)
    posts = max(state["posts"], 1)
    cpu_us = used.get("server_cpu_s", 0.0) * 1e6 / posts
    threads_us = {t: (s - threads_before.get(t, 0.0)) * 1e6 / posts for t, s in threads.items()}
    rate = _rate(state["posts"], state["last"], t0)
    return Drain(rate, state["posts"], others, cpu_us, threads_us)


def apprise_drain(children: Children, args: argparse.Namespace) -> Drain:
    before = cpu_sample(children)
    sink, sink_port = children.bare_server("sink", status=200)
    try:
        argv = [sys.executable, str(BENCH / "apprise_sender.py")]
        argv += [f"http://127.0.0.1:{sink_port}/apprise", "--count", str(args.count)]
        argv += ["--timeout", str(args.timeout)]
        sent = children.run_json("apprise sender", argv, args.timeout + 60)
        state = wait_for_sink(sink_port, sent["sent"], 10.0)
    finally:
        children.stop(sink)
    rate = _rate(state["posts"], state["last"], sent["t_start"])
    return Drain(rate, state["posts"], other_cores(children, before))


def _rate(posts: int, last: float | None, t0: float) -> float:
    return posts / (last - t0) if last is not None and last > t0 else 0.0


def rows(relay: Drain, apprise: Drain | None, args: argparse.Namespace) -> list[Row]:
    r = ratio(relay.rate, apprise.rate if apprise else None)
    note = f"{relay.delivered:,} delivered, {cores(relay.others)}"
    return [
        compare(
            "delivery",
            "notifications/s to a webhook sink, from a filled outbox (concurrency "
            + ("default" if args.concurrency is None else str(args.concurrency))
            + ")"
            + workers_note(args.relay_workers, args.store),
            relay.rate,
            "/s",
            apprise.rate if apprise else None,
            "apprise" if apprise else "apprise: skipped",
            target=f">= {TARGET:g}x",
            met=None if r is None else r >= TARGET,
            note=note,
        )
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = arg_parser(__doc__, installs="apprise", workers=True)
    p.add_argument("--count", type=int, default=10_000, help="notifications to deliver")
    p.add_argument("--concurrency", type=int, help="relay channel concurrency (default: relay's)")
    p.add_argument("--rounds", type=int, default=2, help="best of this many per system")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per delivery wait")
    p.add_argument("--py-spy", default="", metavar="FILE", help="profile relay's drain into FILE")
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples a second")
    args = p.parse_args(argv)
    if not 1 <= args.count <= 1_000_000 or not 1 <= (args.concurrency or 1) <= 256:
        p.error("--count 1..1000000, --concurrency 1..256")
    if not 0 < args.timeout <= 1800 or not 1 <= args.rounds <= 5:
        p.error("--timeout (0, 1800], --rounds 1..5")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = ensure_apprise(install=not args.no_install)
    if why:
        print(f"# apprise baseline skipped: {why}", flush=True)
    best: dict[str, Drain] = {}
    with workspace() as (children, tmp):
        for _ in range(args.rounds):
            drains = {"relay": relay_drain(children, args, tmp)}
            if not why:
                drains["apprise"] = apprise_drain(children, args)
            for name, drain in drains.items():
                print(drain.line(name), flush=True)
                if name not in best or drain.rate > best[name].rate:
                    best[name] = drain
    report(rows(best["relay"], best.get("apprise"), args), args.json_out)
    return 0


if __name__ == "__main__":
    run_script(main)
