"""relay serve's HTTP listener: the runner (with its idle timeout), the bind (a refusal said as a
config error on RELAY_LISTEN), and the addresses it listens on."""

from __future__ import annotations

import os

from aiohttp import web

from relay.errors import ConfigError, Problem
from relay.sources._wire import JsonErrorRunner

# A connection gets this long for a complete request head, and is closed after this long idle
# (aiohttp's keepalive_timeout; its default of an hour lets a slowloris hold sockets forever).
HTTP_IDLE_TIMEOUT_S = 60.0


def runner_for(app: web.Application) -> web.AppRunner:
    """The app's runner, not yet set up: no access log, no signal handling of its own."""
    return JsonErrorRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=HTTP_IDLE_TIMEOUT_S,
    )


async def bind(runner: web.AppRunner, host: str, port: int) -> list[tuple[str, int]]:
    """Listen on host:port; every address bound (see bound_addresses)."""
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:  # in use, not an address of this machine, unknown host name
        why = os_reason(exc)
        problem = Problem("environment", "RELAY_LISTEN", f"cannot listen on {host}:{port}: {why}")
        raise ConfigError([problem]) from None
    return bound_addresses(site, host, port)


def os_reason(exc: OSError) -> str:
    """The errno's words ("Address already in use"); uvloop's strerror repeats the address."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or type(exc).__name__  # getaddrinfo: "Name or service not known"


def bound_addresses(site: web.TCPSite, host: str, port: int) -> list[tuple[str, int]]:
    """Every (host, port) listened on: `*:8080` (or a name with several addresses) is one
    socket per address, and with port 0 each has a port of its own."""
    server = site._server  # aiohttp keeps the asyncio server here; needed for port 0
    sockets = getattr(server, "sockets", None) or ()
    bound = [sock.getsockname() for sock in sockets]
    return [(str(b[0]), int(b[1])) for b in bound] or [(host, port)]


def joined(host: str, port: int) -> str:
    """host:port, an IPv6 address in brackets as RELAY_LISTEN takes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
