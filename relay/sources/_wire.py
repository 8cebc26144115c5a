"""aiohttp's own answers to a request it cannot parse (a header over 8190 bytes, a folded or
duplicated header, Content-Length beside Transfer-Encoding ...), made relay's JSON errors.

aiohttp answers these before any route or middleware, in plain text that quotes the offending
bytes: a malformed `Authorization` line came back with the token in it, so a client or proxy
logging error bodies logged the secret. relay's answer names the kind of problem, never the
bytes, and still closes the connection.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler

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


class _JsonErrorHandler(RequestHandler):
    __slots__ = ()

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
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """web.AppRunner whose connections answer unparsable requests as relay's JSON errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same server; only its handler class differs
        return server
