"""The aiohttp application: ingest, health, metrics, the OpenAPI document, and the routes of the
admin API (relay.sources.admin).

POST /v1/runs answers 202 only after the store committed the batch; a batch is accepted whole
or rejected whole. POST /v1/trigger/alerts takes Trigger.dev's signed alert webhooks: 404 when
`sources.trigger_alerts` is not configured, 401 for a missing or wrong signature (checked before
the body is parsed), then the same 413/400/503/202 as /v1/runs. Errors are JSON:
{"error": "...", "field": "..."}.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from pydantic import SecretStr

from relay.errors import InputError, StoreUnavailable
from relay.formats import parse_body, parse_runs
from relay.formats.trigger_alerts import (
    ALERT_EXPECTED,
    SIGNATURE_HEADER,
    parse_alert,
    verify_signature,
)
from relay.intake import Intake
from relay.logs import CountedLines
from relay.silences.matchers import ConfigNames
from relay.sources._budget import BodyBudget, Hold
from relay.sources._replies import (
    REJECTION,
    authorized,
    closing,
    error,
    json_response,
    read_limited,
    refuse_declared,
    unauthorized,
)
from relay.sources._wire import SERVER
from relay.sources.admin import add_admin_routes
from relay.store import Store
from relay.store.opening import SERVE_LOCK_HELD

log = logging.getLogger("relay.http")
RETRY_AFTER_S = "5"
# /healthz's and /readyz's reason between SIGTERM and exit (the drain): relay still answers
DRAINING = "shutting down"


class RefusalLog(CountedLines):
    """A warning for refused ingest requests: at most one line per path and reason every
    LINE_EVERY_S, counting the refusals since the last, so that a wrong alert secret or token
    shows in the log (not only in a metric) and a scanner cannot flood it. A store outage over
    (`settled`) has its own line, as often at most."""

    def refused(self, path: str, reason: str, status: int) -> None:
        count = self.due((path, reason))
        if count is not None:
            extra = {"path": path, "reason": reason, "status": status, "refused": count}
            log.warning("request refused", extra=extra)


@dataclass
class HttpDeps:
    intake: Intake
    store: Store
    auth_token: Callable[[], SecretStr | None]
    admin_token: Callable[[], SecretStr | None]
    max_body_bytes: Callable[[], int]
    max_body_bytes_in_flight: Callable[[], int]  # sources/_budget
    ready: Callable[[], Awaitable[str | None]]  # None when ready, else why not
    clock: Callable[[], float]
    wake_all: Callable[[], None] = lambda: None
    silences_changed: Callable[[], None] = lambda: None
    # how long other replicas (and --workers) may mute by the silences they read before a
    # change; the admin API answers after it, as `relay silence add` does
    silences_settle_s: float = 0.0
    # the running config's rule and channel names, which a new silence's matchers are checked
    # against (a warning, not a refusal)
    silence_names: Callable[[], ConfigNames | None] = lambda: None
    # sources.trigger_alerts secrets; None when alert webhooks are not configured
    trigger_alert_secrets: Callable[[], list[SecretStr] | None] = lambda: None
    on_rejected: Callable[[str], None] | None = None  # reason
    # an alert webhook answered 202 but not taken; reason from metrics.ALERT_IGNORED_REASONS
    on_alert_ignored: Callable[[str], None] = lambda reason: None
    refusals: RefusalLog = field(default_factory=RefusalLog)
    metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None  # (body, content type)
    # why the service does not serve yet (waiting for its store at start), None once it does:
    # meanwhile /healthz says so and every endpoint but /healthz, /readyz and /metrics answers
    # 503
    starting: Callable[[], str | None] = lambda: None
    # whether the service is draining (SIGTERM): /readyz says so with a 503, /healthz with a
    # 200, updates get a 503 with Retry-After, the rest answer as before, and every answer
    # closes its connection
    draining: Callable[[], bool] = lambda: False


class Handlers:
    def __init__(self, deps: HttpDeps) -> None:
        self.deps = deps
        self.bodies = BodyBudget(deps.max_body_bytes_in_flight)

    def refuse_runs(self, request: web.Request) -> web.Response | None:
        """What POST /v1/runs refuses from its headers alone (also before `100 Continue`)."""
        if not authorized(request, self.deps.auth_token()):
            return unauthorized(request)
        return refuse_declared(request, self.deps.max_body_bytes())

    async def post_runs(self, request: web.Request) -> web.Response:
        with self.bodies.hold() as hold:  # until answered: the parsed runs are held that long
            return await self._post_runs(request, hold)

    async def _post_runs(self, request: web.Request, hold: Hold) -> web.Response:
        if (refused := self.refuse_runs(request)) is not None:
            return refused
        body = await read_limited(request, self.deps.max_body_bytes(), hold)
        if isinstance(body, web.Response):
            return body
        try:
            runs = parse_runs(parse_body(body))
        except InputError as exc:
            return error(400, exc.message, exc.field or None)
        try:
            result = await self.deps.intake.submit(runs)
        except StoreUnavailable as exc:
            return self._store_refused(request, "update refused", {"runs": len(runs)}, exc)
        self._store_settled(request)
        body_out = {
            "accepted": result.accepted,
            "stale": result.stale,
            "notifications": result.notifications,
        }
        return json_response(body_out, 202)

    def _store_refused(
        self, request: web.Request, what: str, extra: dict[str, object], exc: StoreUnavailable
    ) -> web.Response:
        """503 for an update the store could not take. One log line per path every
        LINE_EVERY_S, with the count: clients retrying through an outage (a full disk
        the logs may share) would otherwise write a line per request."""
        count = self.deps.refusals.due((request.path, "store_unavailable"))
        if count is not None:
            extra = {**extra, "error": str(exc), "refused": count}
            log.error(f"store unavailable; {what}", extra=extra)
        return store_unavailable()

    def _store_settled(self, request: web.Request) -> None:
        """An update taken: tell the refusals of an outage the last line did not count."""
        count = self.deps.refusals.settled((request.path, "store_unavailable"))
        if count is not None:
            extra = {"path": request.path, "refused": count}
            log.warning("store available again; updates refused since the last line", extra=extra)

    async def post_trigger_alert(self, request: web.Request) -> web.Response:
        """POST /v1/trigger/alerts: a signed Trigger.dev alert webhook (formats/trigger_alerts)."""
        with self.bodies.hold() as hold:
            return await self._post_trigger_alert(request, hold)

    async def _post_trigger_alert(self, request: web.Request, hold: Hold) -> web.Response:
        body = await self._signed_body(request, hold)
        if isinstance(body, web.Response):
            return body
        try:
            alert = parse_alert(parse_body(body, ALERT_EXPECTED))
        except InputError as exc:
            return error(400, exc.message, exc.field or None)
        if alert.run is None:  # a newer alert type: refusing it would be retried forever
            log.warning("alert webhook of an unknown type ignored", extra={"type": alert.type[:80]})
            self.deps.on_alert_ignored("unknown_type")
            return json_response({"accepted": 0, "ignored": 1, "notifications": 0}, 202)
        try:
            result = await self.deps.intake.submit([alert.run], source="trigger_alerts")
        except StoreUnavailable as exc:
            return self._store_refused(request, "alert refused", {"run_id": alert.run.id}, exc)
        self._store_settled(request)
        body_out = {
            "accepted": result.accepted,
            "ignored": 0,
            "stale": result.stale,
            "notifications": result.notifications,
            "id": alert.run.id,
            "event": alert.run.event,
        }
        return json_response(body_out, 202)

    def refuse_alert(self, request: web.Request) -> web.Response | None:
        """What POST /v1/trigger/alerts refuses from its headers alone (before the body)."""
        if self.deps.trigger_alert_secrets() is None:
            return closing(error(404, "alert webhooks are not configured"))
        if not any(v.strip() for v in request.headers.getall(SIGNATURE_HEADER, [])):
            return closing(bad_signature(f"missing {SIGNATURE_HEADER} signature header"))
        return refuse_declared(request, self.deps.max_body_bytes())

    async def _signed_body(self, request: web.Request, hold: Hold) -> bytes | web.Response:
        """The raw body when its signature matches a configured secret, else the error reply."""
        if (refused := self.refuse_alert(request)) is not None:
            return refused
        secrets = self.deps.trigger_alert_secrets() or []
        header = ",".join(request.headers.getall(SIGNATURE_HEADER, []))
        body = await read_limited(request, self.deps.max_body_bytes(), hold)
        if isinstance(body, bytes) and not verify_signature(
            body, header, [s.get_secret_value() for s in secrets]
        ):
            return bad_signature("invalid signature")
        return body

    async def healthz(self, request: web.Request) -> web.Response:
        why = self.deps.starting() or (DRAINING if self.deps.draining() else None)
        return json_response({"status": "ok"} if why is None else {"status": "ok", "reason": why})

    async def readyz(self, request: web.Request) -> web.Response:
        why = await self.deps.ready()
        if why is None:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "reason": why}, 503)


# No HTTP authentication scheme covers a signed body: the challenge a 401 must carry (RFC 9110
# §15.5.2) names the signature relay wants and the header it goes in, in the challenge's form.
SIGNATURE_CHALLENGE = f'HMAC-SHA256 realm="relay", header="{SIGNATURE_HEADER}"'


def bad_signature(message: str) -> web.Response:
    """401 for an alert webhook whose signature is missing or wrong."""
    return error(401, message, headers={"WWW-Authenticate": SIGNATURE_CHALLENGE})


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


def _count_rejection(
    deps: HttpDeps, request: web.Request, status: int, reason: str | None = None
) -> None:
    if request.path not in _INGEST_PATHS:
        return
    reason = reason or _REJECTIONS.get(status)
    if reason is None:
        return
    if deps.on_rejected is not None:
        deps.on_rejected(reason)
    if reason != "store_unavailable":  # logged where it happens
        deps.refusals.refused(request.path, reason, status)


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
        _count_rejection(deps, request, response.status, response.get(REJECTION))
        _closing_while_draining(deps, response)
        return response

    return middleware


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
        _count_rejection(deps, request, refused.status)
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


async def _metrics(deps: HttpDeps, request: web.Request) -> web.Response:
    if deps.metrics is None:
        return error(404, "metrics are not enabled")
    body, content_type = await deps.metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


@functools.cache
def openapi_document() -> bytes:
    """relay/openapi.json, the OpenAPI document of this app (shipped in the wheel)."""
    return resources.files("relay").joinpath("openapi.json").read_bytes()


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


def build_app(deps: HttpDeps) -> web.Application:
    # The body limit is enforced by read_limited with the live config; aiohttp's own cap is a
    # backstop far above it. Content codings are undone by read_limited too (relay/sources/_body).
    app = web.Application(
        client_max_size=64 * 1024 * 1024 + 1,
        middlewares=[_count_rejections(deps), _json_http_errors, _store_unavailable(deps)],
        handler_args={"auto_decompress": False},
    )
    app.on_response_prepare.append(name_the_server)
    h = Handlers(deps)
    add = route_adder(app, deps)
    add("GET", "/metrics", functools.partial(_metrics, deps))
    for slash in ("", "/"):  # a URL pasted into Trigger.dev or a task with its slash: not a 404
        add("POST", "/v1/runs" + slash, h.post_runs, h.refuse_runs)
        add("POST", "/v1/trigger/alerts" + slash, h.post_trigger_alert, h.refuse_alert)
    add("GET", "/healthz", h.healthz)
    add("GET", "/readyz", h.readyz)
    add("GET", "/openapi.json", _openapi)
    add_admin_routes(add, deps)
    return app


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER


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
