"""A bare aiohttp server: the ingest baseline, and the webhook sink of the relay scenario.

    python bench/bare_server.py PORT [--status 202] [--record]

Every POST (any path) reads the whole body, is counted, and gets `--status` with an empty body,
without parsing anything. `GET /count` answers as JSON the number of POSTs received so far and
the `time.monotonic()` of the first and last one (the clock is system-wide, so other processes
of the benchmark can compare). With `--record` (a sink measuring latency) each POST also keeps
its arrival time and the first benchmark run id (`run_bench...`) found in its body, answered by
`GET /arrivals` as {"ids": [...], "times": [...]}.
Listens on 127.0.0.1:PORT (0 picks a free port) and prints one JSON line
{"listening": PORT} on stdout once it accepts connections. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time

from aiohttp import web

RUN_ID = re.compile(rb"run_bench\w+")


class Counter:
    def __init__(self, status: int, record: bool) -> None:
        self.status = status
        self.record = record
        self.posts = 0
        self.first: float | None = None
        self.last: float | None = None
        self.ids: list[str] = []
        self.times: list[float] = []

    async def post(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts += 1
        self.last = now = time.monotonic()
        if self.first is None:
            self.first = now
        if self.record:
            found = RUN_ID.search(body)
            self.ids.append(found.group().decode() if found else "")
            self.times.append(now)
        return web.Response(status=self.status)

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"posts": self.posts, "first": self.first, "last": self.last})

    async def arrivals(self, request: web.Request) -> web.Response:
        return web.json_response({"ids": self.ids, "times": self.times})


async def serve(port: int, status: int, record: bool) -> None:
    counter = Counter(status, record)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/count", counter.count)
    app.router.add_get("/arrivals", counter.arrivals)
    app.router.add_post("/{tail:.*}", counter.post)
    await run_app(app, port)


async def run_app(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (0: a free one), print {"listening": PORT} once it
    accepts connections, and run until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server  # the asyncio server; its socket tells the port chosen for 0
    sockets = getattr(server, "sockets", None) or ()
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    print(json.dumps({"listening": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, nargs="?", default=0)
    parser.add_argument("--status", type=int, default=202, help="answer to every POST")
    parser.add_argument("--record", action="store_true", help="keep run ids and arrival times")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.status, args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
