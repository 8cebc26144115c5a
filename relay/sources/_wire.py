"""relay's HTTP server below the routes: its connections and aiohttp's own answers.

aiohttp answers a request it cannot parse (a header over 8190 bytes, a folded or duplicated
header, Content-Length beside Transfer-Encoding ...) before any route or middleware, in plain
text that quotes the offending bytes: a malformed `Authorization` line came back with the token
in it, so a client or proxy logging error bodies logged the secret. relay's answer names the
kind of problem, never the bytes, and still closes the connection.

aiohttp also takes every connection it is offered until the process runs out of file
descriptors (`ulimit -n`, often 1024): a thousand clients that connect and send nothing, or a
header a byte at a time, then held every descriptor for the 60 s idle timeout, and no update
could come in, nor a delivery go out. Past MAX_SHARE of the descriptor limit, each new
connection closes the oldest one that is not in the middle of a request (else the oldest):
a client that sends its request at once is never the oldest for long. At start the soft limit
is raised to the hard one, as Go programs (Alertmanager among them) do.

A client that closes its side of the connection once its request is out (a half-close, as
`nc -N` and `socat` do) still reads its answer; aiohttp closed such a connection at once.

These lean on aiohttp's internals (its Server's `_kwargs`, `_loop`, `_connections`, a handler's
`_request_in_progress`, `_messages`, `_parser`, `_waiter` and `handle_error`), as they
are in 3.14 (3.9 had no `_request_in_progress`): where another aiohttp lacks one, serve warns and
keeps aiohttp's own handling, rather than fail every connection.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import resource
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("relay.http")

_MESSAGES: tuple[tuple[type[BaseException], str], ...] = (
    (LineTooLong, "request line or header too long"),
    (BadStatusLine, "malformed request line"),
)


def wire_error(status: int, exc: BaseException | None) -> dict[str, str]:
    """The JSON error for a request aiohttp refused with `status` for `exc`."""
    if status >= 500:
        return {"error": "internal error; see relay's log"}
    for kind, message in _MESSAGES:
        if isinstance(exc, kind):
            return {"error": message}
    return {"error": "malformed HTTP request"}


SERVER = "relay"  # aiohttp's default named Python's and aiohttp's versions to every client


class _JsonErrorHandler(RequestHandler):
    __slots__ = ("_half_closed",)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs; raises if sent
        response = web.Response(
            body=orjson.dumps(wire_error(status, exc)),
            status=plain.status,
            content_type="application/json",
            headers={hdrs.SERVER: SERVER},
        )
        response.force_close()
        return response

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio.Protocol: bool | None
        """The client closed its side (`shutdown(SHUT_WR)`: `nc -N`, `socat`, a script done
        writing) after a whole request: it still reads the answer. aiohttp's None closed the
        connection at once, so the update was stored and its 202 never sent, and a health
        probe got no answer at all. Idle, or with a body cut short, it closes as before."""
        waiting = self._waiter is not None and not self._waiter.done()  # for a request
        if waiting or self._body_cut_short():
            return False
        self._half_closed = True
        if not self._messages:  # the request in hand is the last: answer it, then close
            self.close()
        return True

    def _body_cut_short(self) -> bool:
        """Whether the last request's body lacks bytes its framing promised: the parser told
        the input ended (a body it has whole, flow control paused or not, is left as it is)."""
        if self._parser is None:
            return True
        try:
            self._parser.feed_eof()
        except HttpProcessingError:  # fewer bytes than Content-Length, chunks unfinished
            return True
        return False

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Pipelined requests before a half-close are answered in turn; the connection closes
        after the last one's answer (it would otherwise wait out the idle timeout)."""
        if not self._messages and getattr(self, "_half_closed", False):
            self.close()
        return await super().finish_response(request, resp, start_time)


MAX_SHARE = 0.75  # of the descriptor limit, for incoming connections
# Descriptors kept free: with fewer left, a new connection closes the oldest idle one as well
RESERVE_SHARE, RESERVE_MIN = 1 / 16, 8
SHED_LOG_EVERY_S = 10.0
WATCH_EVERY_S = 1.0  # how often the descriptors left are looked at while connections are open


def connection_cap() -> int | None:
    """How many incoming connections relay keeps open at once (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else max(16, int(soft * MAX_SHARE))


def reserve() -> int | None:
    """How many descriptors relay keeps free (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else max(RESERVE_MIN, int(soft * RESERVE_SHARE))


def few_descriptors_left(keep: int) -> bool:
    """Whether fewer than `keep` descriptors are free: the kernel gives the lowest free number,
    so every one below a new one is in use. relay's own (the store, channels' connections)
    count too, and past the limit libuv resets each new connection without a word."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        probe = os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        return exc.errno in (errno.EMFILE, errno.ENFILE)
    os.close(probe)
    return probe >= soft - keep


def oldest_idle(handlers: list[RequestHandler]) -> RequestHandler:
    """The oldest of `handlers` (oldest first) not handling a request, else the oldest."""
    for handler in handlers:
        if not busy(handler):
            return handler
    return handlers[0]


def busy(handler: RequestHandler) -> bool:
    """Handling a request, or holding one read whose handler has not started yet (a loop turn
    or two after the bytes came in): closing it would drop a request the client sent."""
    return handler._request_in_progress or bool(handler._messages)


class _Server(web.Server):
    shed = 0  # connections closed to make room since the last log line
    shed_logged = -SHED_LOG_EVERY_S
    watching: asyncio.TimerHandle | None = None  # the next look at the descriptors left

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        cap = connection_cap()
        if cap is None:
            return
        if len(self._connections) > cap:
            # a closed one stays listed until its request task ends: skip it
            others = [h for h in self.connections if h is not handler and h.transport]
            if others:
                oldest_idle(others).force_close()
            self._count_shed(cap)
        else:
            self._relieve(1, handler)
        if self.watching is None:
            self.watching = self._loop.call_later(WATCH_EVERY_S, self._watch)

    def _watch(self) -> None:
        """Every WATCH_EVERY_S while connections are open: a burst of them can take the last
        descriptors before any connection_made runs, and then libuv resets each new one
        unseen; closing idle ones lets the next in."""
        self.watching = None
        if self._connections:
            self._relieve(reserve() or 1)
            self.watching = self._loop.call_later(WATCH_EVERY_S, self._watch)

    def _relieve(self, count: int, new: RequestHandler | None = None) -> None:
        """Close up to `count` idle connections (oldest first, never `new`) when few descriptors
        are left: idle ones only, requests in flight here are not the excess."""
        keep = reserve()
        if keep is None or not few_descriptors_left(keep):
            return
        idle = [h for h in self.connections if h is not new and h.transport and not busy(h)]
        for handler in idle[:count]:
            handler.force_close()
            self._count_shed(connection_cap() or 0)

    def _count_shed(self, cap: int) -> None:
        """One warning line every SHED_LOG_EVERY_S at most, counting the connections closed."""
        self.shed += 1
        now = time.monotonic()
        if now - self.shed_logged >= SHED_LOG_EVERY_S:
            extra = {"limit": cap, "closed": self.shed}
            log.warning("too many connections; the oldest idle ones closed", extra=extra)
            self.shed, self.shed_logged = 0, now


class JsonErrorRunner(web.AppRunner):
    """web.AppRunner whose connections answer unparsable requests as relay's JSON errors and
    stay within the descriptor limit."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        if fits(server):
            server.__class__ = _Server  # the same server, with relay's connection handling
        else:
            log.warning(
                "this aiohttp's internals differ from those relay knows: its plain-text answers"
                " to malformed requests and its unlimited connections are kept",
                extra={"aiohttp": aiohttp.__version__},
            )
        return server


_HANDLE_ERROR = ["self", "request", "status", "exc", "message"]
_HANDLER_SLOTS = ("_request_in_progress", "_messages", "_parser", "_waiter")


def fits(server: web.Server) -> bool:
    """Whether `server` has the internals _Server and _JsonErrorHandler rely on."""
    return (
        type(server) is web.Server
        and all(hasattr(server, name) for name in ("_kwargs", "_loop", "_connections"))
        and all(hasattr(RequestHandler, name) for name in _HANDLER_SLOTS)
        and list(inspect.signature(RequestHandler.handle_error).parameters) == _HANDLE_ERROR
    )


def raise_descriptor_limit() -> None:
    """The soft limit on open files raised to the hard one (often 1024 → 524288), as Go does
    for Alertmanager: a soft 1024 is a default kept for select(), which relay does not use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft) or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return  # kept as it was: the cap above follows whichever limit holds
    log.info("open file limit raised", extra={"from": soft, "to": hard})
