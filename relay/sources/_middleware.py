"""What every request of relay's HTTP app goes through around its handler: the middlewares
(refused ingest requests counted, aiohttp's own errors and a bug's 500 as JSON, 503 while the
store cannot answer, is not open yet, or relay drains) and the `Expect: 100-continue` handler
each route gets (route_adder)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import HttpVersion11, hdrs, web

from relay.errors import StoreUnavailable
from relay.sources._replies import REJECTION, closing, error
from relay.store.opening import SERVE_LOCK_HELD

if TYPE_CHECKING:
    from relay.sources.http import HttpDeps

log = logging.getLogger("relay.http")
RETRY_AFTER_S = "5"

_REJECTIONS = {
    400: "bad_request",
    401: "unauthorized",
    415: "bad_request",
    404: "not_configured",
    413: "too_large",
    503: "store_unavailable",
}
_INGEST_PATHS = ("/v1/runs", "/v1/trigger/alerts")
# what answers before the store opened (/metrics with relay_store_up 0)
_WHILE_STARTING = ("/healthz", "/readyz", "/metrics")


def store_unavailable(why: str | None = None) -> web.Response:
    """503 with Retry-After: the answer of an endpoint whose store cannot answer now; while
    another `relay serve` holds the SQLite file, saying so as /readyz does (a pusher's log
    said "store unavailable" of a relay waiting its turn in a rolling update)."""
    said = SERVE_LOCK_HELD if why == SERVE_LOCK_HELD else "store unavailable"
    return error(503, f"{said}; retry later", headers={"Retry-After": RETRY_AFTER_S})


def _not_serving(deps: HttpDeps, request: web.Request) -> web.Response | None:
    """503 (store unavailable) for every endpoint but health while the store is not open yet;
    503 for updates while relay drains (SIGTERM stops intake: the pusher tries again, another
    replica or this one started again takes it), every other endpoint answering as before."""
    if (why := deps.starting()) is not None and request.path not in _WHILE_STARTING:
        return store_unavailable(why)
    if request.path in _INGEST_PATHS and deps.draining():
        response = error(503, "shutting down; retry later", headers={"Retry-After": RETRY_AFTER_S})
        response[REJECTION] = "shutting_down"
        return response
    return None


def _count_rejection(deps: HttpDeps, request: web.Request, response: web.StreamResponse) -> None:
    if request.path not in _INGEST_PATHS:
        return
    reason = response.get(REJECTION) or _REJECTIONS.get(response.status)
    if reason is None:
        return
    if deps.on_rejected is not None:
        deps.on_rejected(reason)
    if reason != "store_unavailable":  # logged where it happens
        answer = response.body if isinstance(response, web.Response) else None
        deps.refusals.refused(request.path, reason, response.status, answer)


def _closing_while_draining(deps: HttpDeps, response: web.StreamResponse) -> None:
    """While relay drains, each answer says `Connection: close`: a client's next request opens
    a new connection (to another replica, once this one is out of the endpoints), and no
    kept-alive connection is left idle for the end of the drain to cut under a request."""
    if deps.draining():
        response.force_close()


def _count_rejections(deps: HttpDeps) -> Any:
    """The outermost middleware: counts refused ingest requests, and closes each connection
    while draining (one middleware for both: each one more costs every request ~1 µs)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        _count_rejection(deps, request, response)
        _closing_while_draining(deps, response)
        return response

    return middleware


def middlewares(deps: HttpDeps) -> list[Any]:
    """The app's middlewares, outermost first."""
    return [_count_rejections(deps), _json_http_errors, _store_unavailable(deps)]


Refusal = Callable[[web.Request], web.Response | None]


def _unknown_expectation(request: web.Request) -> web.Response | None:
    """417 (JSON, as every error) for an Expect other than 100-continue, as aiohttp would."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11 or expect.lower() == "100-continue":
        return None
    return closing(error(417, f"unknown Expect: {expect[:80]}"))


async def _continue(request: web.Request) -> None:
    """What aiohttp does by default for HTTP/1.1: `100 Continue`."""
    if request.version != HttpVersion11:
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not started


def _no_refusal(request: web.Request) -> None:
    return None


def expect_handler(deps: HttpDeps, refuse: Refusal = _no_refusal) -> Callable[..., Awaitable[Any]]:
    """`Expect: 100-continue` answered with the final refusal when the headers already earn one
    (a wrong token, a body declared too large ...), so the client never sends the body; else
    aiohttp's `100 Continue`. Every route has one: aiohttp's own answers an unknown Expect
    with a plain-text 417, before any middleware could make it JSON."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        refused = _unknown_expectation(request) or _not_serving(deps, request) or refuse(request)
        if refused is None:
            await _continue(request)
            return None
        _count_rejection(deps, request, refused)
        _closing_while_draining(deps, refused)
        return refused

    return handle


def _store_unavailable(deps: HttpDeps) -> Any:
    """Any endpoint whose store is down answers 503 with Retry-After, never 500; so does every
    endpoint but health while the store is not open yet, and ingest while relay drains
    (_not_serving). One middleware for all three: each one more costs every request about a
    microsecond."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        refused = _not_serving(deps, request)
        if refused is not None:
            return refused
        try:
            response: web.StreamResponse = await handler(request)
        except StoreUnavailable:
            log.warning("store unavailable", extra={"path": request.path})
            return store_unavailable()
        return response

    return middleware


@web.middleware
async def _json_http_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404/405 (unknown path, wrong method), and a bug's 500, as JSON errors like
    every other (aiohttp answers a 500 in plain text)."""
    try:
        response: web.StreamResponse = await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        message = (
            "no such endpoint" if exc.status == 404 else f"method {request.method} not allowed"
        )
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error(exc.status, message, headers=headers)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("request failed", extra={"path": request.path, "method": request.method})
        return error(500, "internal error; see relay's log")
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AddRoute = Callable[..., None]


def route_adder(app: web.Application, deps: HttpDeps) -> AddRoute:
    """`add(method, path, handler, refuse=None)`: every route gets relay's expect handler (see
    expect_handler), so none answers an odd `Expect` with aiohttp's plain text; a GET also
    answers HEAD."""
    plain = expect_handler(deps)

    def add(method: str, path: str, handler: Handler, refuse: Refusal | None = None) -> None:
        expect = plain if refuse is None else expect_handler(deps, refuse)
        if method == "GET":
            app.router.add_get(path, handler, expect_handler=expect)
        else:
            app.router.add_route(method, path, handler, expect_handler=expect)

    return add
