"""The load generator: K connections keep POSTs in flight; prints one JSON result on stdout.

    python bench/_load.py URL [--seconds 10] [--warmup 1.5] [--concurrency 64] [--batch 1]
                              [--max-requests N] [--client aiohttp|raw] [--failed-every 5]
                              [--format sdk|alertmanager] [--rate R] [--record-sends]

Bodies are the SDK run fixture run_failed.json with a unique `id` per run; every
`--failed-every`-th run keeps status FAILED, the others are EXECUTING. With --batch B each request
is a JSON array of B runs. `--format alertmanager` sends the same runs as Alertmanager v2 alerts
(labels alertname, run_id, task, status; always a JSON array, for POST /api/v2/alerts).
Requests completed during the warm-up are not measured; issuing stops at the end of the window
or after --max-requests, whichever comes first. Any 2xx answer counts as a success.

Closed loop by default (each connection sends its next request when the answer came); with
`--rate R` request n is sent at start + n/R (open loop, R requests per second, as long as a
connection is free). `--record-sends` adds "sends": [[n, time.monotonic() at send], ...] to the
result: run ids end with the run index (10 digits), request n holds runs n*B .. n*B+B-1.

`--client aiohttp` uses aiohttp.ClientSession; `--client raw` writes pre-built HTTP/1.1 requests on
asyncio streams (keep-alive, Content-Length framing only), several times cheaper per request, so
the generator is less likely to be the bottleneck on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from _results import percentile

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/trigger/realtime-run/sdk"
_MARK = "__BENCH_RUN_ID__"
_HEADERS = {"Content-Type": "application/json"}
# one request: its status (0 when it failed before an answer) and the answer's body
Send = Callable[[bytes], Awaitable[tuple[int, bytes]]]


Doc = dict[str, Any]


def sdk_runs(fixture: Path) -> tuple[Doc, Doc]:
    """The fixture run (FAILED) with a marked id, and the same run EXECUTING."""
    run = orjson.loads(fixture.read_bytes())
    run["id"] = _MARK
    executing = {
        **run,
        "status": "EXECUTING",
        "isCompleted": False,
        "isFailed": False,
        "isExecuting": True,
    }
    return run, executing


def alerts(fixture: Path) -> tuple[Doc, Doc]:
    """The same two runs as Alertmanager v2 alerts (one alert per run, keyed by run_id)."""
    run, _ = sdk_runs(fixture)
    task = str(run["taskIdentifier"])

    def alert(status: str) -> Doc:
        labels = {"alertname": "TaskRun", "run_id": _MARK, "task": task, "status": status}
        notes = {
            "summary": f"{task} {status}",
            "description": str((run.get("error") or {}).get("message", "")),
            "dashboard": f"https://cloud.trigger.dev/runs/{_MARK}",
        }
        return {"labels": labels, "annotations": notes, "generatorURL": "http://bench/"}

    return alert("FAILED"), alert("EXECUTING")


class Bodies:
    """Request bodies with unique run ids: the parts around the id marks joined by the id, no
    JSON encoding per request."""

    def __init__(self, docs: tuple[Doc, Doc], batch: int, failed_every: int, tag: str) -> None:
        # indented like the fixture file itself (about 1.25 KB a run)
        failed, executing = (orjson.dumps(d, option=orjson.OPT_INDENT_2) for d in docs)
        self.failed = failed.split(_MARK.encode())
        self.executing = executing.split(_MARK.encode())
        self.batch, self.failed_every, self.tag = batch, failed_every, tag
        self.array = batch > 1

    def run(self, index: int) -> bytes:
        parts = self.failed if index % self.failed_every == 0 else self.executing
        return f"run_bench{self.tag}{index:010d}".encode().join(parts)

    def request(self, n: int) -> bytes:
        if not self.array:
            return self.run(n)
        first = n * self.batch
        return b"[" + b",".join(self.run(first + i) for i in range(self.batch)) + b"]"


@dataclass
class Stats:
    latencies_s: list[float] = field(default_factory=list)
    ok: int = 0  # 202 answers completed inside the window
    errors: int = 0  # anything else completed inside the window
    issued: int = 0  # all requests, warm-up included
    notifications: int = 0  # sum of "notifications" over every 202 body, warm-up included
    statuses: Counter[int] = field(default_factory=Counter)
    sends: list[tuple[int, float]] | None = None  # (request n, monotonic send time)


@dataclass(frozen=True)
class Window:
    begin: float
    start: float  # begin + warm-up
    end: float
    max_requests: int
    rate: float | None  # open loop: request n is due at begin + n / rate

    async def next(self, stats: Stats, ids: itertools.count[int]) -> int | None:
        """The index of the next request once it is due, or None when issuing is over."""
        if time.perf_counter() >= self.end or stats.issued >= self.max_requests:
            return None
        stats.issued += 1
        n = next(ids)
        if self.rate is not None:
            due = self.begin + n / self.rate
            if due >= self.end:
                stats.issued -= 1
                return None
            await asyncio.sleep(max(due - time.perf_counter(), 0.0))
        return n


def count_notifications(payload: bytes) -> int:
    if not payload:
        return 0
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return int(orjson.loads(payload).get("notifications", 0))
    return 0


async def worker(
    send: Send, bodies: Bodies, stats: Stats, ids: itertools.count[int], window: Window
) -> None:
    start, end = window.start, window.end
    while (n := await window.next(stats, ids)) is not None:
        body = bodies.request(n)
        t0 = time.perf_counter()
        if stats.sends is not None:
            stats.sends.append((n, time.monotonic()))
        status, payload = await send(body)
        t1 = time.perf_counter()
        stats.statuses[status] += 1
        ok = 200 <= status < 300
        if ok:
            stats.notifications += count_notifications(payload)
        if t0 >= start and t1 <= end:
            if ok:
                stats.ok += 1
                stats.latencies_s.append(t1 - t0)
            else:
                stats.errors += 1
        if status == 0:
            await asyncio.sleep(0.05)  # connection trouble: do not spin


def aiohttp_sender(session: aiohttp.ClientSession, url: str) -> Send:
    async def send(body: bytes) -> tuple[int, bytes]:
        try:
            async with session.post(url, data=body, headers=_HEADERS) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return 0, b""

    return send


class RawConnection:
    """One keep-alive HTTP/1.1 connection writing pre-built requests."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, body: bytes) -> tuple[int, bytes]:
        try:
            if self.reader is None or self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = _content_length(head)
            payload = await self.reader.readexactly(length) if length else b""
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            return 0, b""
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _content_length(head: bytes) -> int:
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        if b"transfer-encoding: chunked" in lower:
            raise ValueError("chunked answers are not supported by the raw client")
        return 0
    value = lower[at + 17 : lower.index(b"\r\n", at + 2)]
    return int(value.strip())


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    docs = alerts(args.fixture) if args.format == "alertmanager" else sdk_runs(args.fixture)
    bodies = Bodies(docs, args.batch, args.failed_every, args.tag or str(os.getpid()))
    bodies.array = bodies.array or args.format == "alertmanager"
    stats, ids = Stats(), itertools.count()
    stats.sends = [] if args.record_sends else None
    t_start = time.monotonic()
    begin = time.perf_counter()
    start = begin + args.warmup
    end = start + args.seconds
    window = Window(begin, start, end, args.max_requests, args.rate)
    connections: list[RawConnection] = []
    session: aiohttp.ClientSession | None = None
    if args.client == "raw":
        connections = [RawConnection(args.url) for _ in range(args.concurrency)]
        senders: list[Send] = [c.send for c in connections]
    else:
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        senders = [aiohttp_sender(session, args.url)] * args.concurrency
    try:
        await asyncio.gather(*(worker(s, bodies, stats, ids, window) for s in senders))
    finally:
        for c in connections:
            c.close()
        if session is not None:
            await session.close()
    finished = time.perf_counter()
    window_s = max(min(end, finished) - start, 1e-9)
    lat = sorted(stats.latencies_s)
    measured = stats.ok + stats.errors
    extra = {"sends": stats.sends} if stats.sends is not None else {}
    return {
        **extra,
        "t_start": t_start,
        "t_done": time.monotonic(),
        "requests": measured,
        "ok": stats.ok,
        "errors": stats.errors,
        "window_s": round(window_s, 3),
        "rps": measured / window_s,
        "runs_per_s": stats.ok * args.batch / window_s,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "issued": stats.issued,
        "notifications": stats.notifications,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "body_bytes": len(bodies.request(0)),
        "capped": stats.issued >= args.max_requests,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="e.g. http://127.0.0.1:8080/v1/runs")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp")
    p.add_argument("--failed-every", type=int, default=5, help="every Nth run is FAILED")
    p.add_argument("--tag", default="", help="run id infix (default: the pid)")
    p.add_argument("--fixture", type=Path, default=FIXTURE / "run_failed.json")
    p.add_argument("--format", choices=("sdk", "alertmanager"), default="sdk", help="bodies")
    p.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    p.add_argument("--record-sends", action="store_true", help="report each send time")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 600 or args.concurrency < 1 or args.batch < 1:
        p.error("--seconds must be in (0, 600], --concurrency and --batch at least 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(asyncio.wait_for(run_load(args), args.warmup + args.seconds + 60))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
