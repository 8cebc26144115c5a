"""A bare aiohttp server: the ingest baseline, and the webhook sink of the relay scenario.

    python bench/bare_server.py PORT [--status 202]

Every POST (any path) reads the whole body, is counted, and gets `--status` with an empty body,
without parsing anything. `GET /count` answers the number of POSTs received so far as JSON.
Listens on 127.0.0.1:PORT (0 picks a free port) and prints one JSON line
{"listening": PORT} on stdout once it accepts connections. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from aiohttp import web


class Counter:
    def __init__(self, status: int) -> None:
        self.status = status
        self.posts = 0

    async def post(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.Response(status=self.status)

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"posts": self.posts})


async def serve(port: int, status: int) -> None:
    counter = Counter(status)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/count", counter.count)
    app.router.add_post("/{tail:.*}", counter.post)
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
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
