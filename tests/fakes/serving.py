"""Running a test's aiohttp app on 127.0.0.1, and a free port there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

# one helper for the tests and the benchmarks, re-exported
from tools.ports import free_port as free_port  # noqa: PLC0414


@asynccontextmanager
async def serving(app: web.Application, port: int = 0, **runner_kwargs: Any) -> AsyncIterator[str]:
    """`app` on 127.0.0.1 (an ephemeral port, or `port`) until the block ends; yields its base URL.

    `runner_kwargs` go to web.AppRunner (e.g. access_log=None, shutdown_timeout=0.2).
    """
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# a proxy refusing a request without (or with wrong) credentials
PROXY_407 = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"


async def raw_server(answer: bytes) -> tuple[asyncio.Server, str]:
    """A server on 127.0.0.1 answering each request with the bytes `answer`, then closing; its URL."""

    async def answer_with(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_with, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def until(
    done: Callable[[], bool], arrived: asyncio.Event, timeout: float, failure: Callable[[], str]
) -> None:
    """Wait, woken by each `arrived.set()`, until `done()` holds; after `timeout` seconds raise
    AssertionError with `failure()` (what a fake saw instead)."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(failure())
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), remaining)
        except TimeoutError:
            pass
