"""The aiohttp application: what it asks of the service (HttpDeps), health, metrics and the
OpenAPI document; the ingest endpoints (relay.sources._ingest) and the admin API
(relay.sources.admin); every route wrapped alike (relay.sources._middleware). Errors are JSON:
{"error": "...", "field": "..."}.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from aiohttp import hdrs, web
from pydantic import SecretStr

from relay.intake import Intake
from relay.logs import CountedLines
from relay.silences.matchers import ConfigNames
from relay.sources._ingest import Handlers
from relay.sources._middleware import middlewares, route_adder
from relay.sources._replies import error, json_response
from relay.sources._wire import SERVER
from relay.sources.admin import add_admin_routes
from relay.store import Store

log = logging.getLogger("relay.http")
# /healthz's and /readyz's reason between SIGTERM and exit (the drain): relay still answers
DRAINING = "shutting down"


class RefusalLog(CountedLines):
    """A warning for refused ingest requests: at most one line per path and reason every
    LINE_EVERY_S, counting the refusals since the last, so that a wrong alert secret or token
    shows in the log (not only in a metric) and a scanner cannot flood it. A store outage over
    (`settled`) has its own line, as often at most. The line says the `error` (and `field`)
    the client was answered, of the refusal that made it: a 400 logged without them left the
    operator to find the pusher's own log to learn what was wrong with its runs."""

    def refused(self, path: str, reason: str, status: int, answer: Any = None) -> None:
        count = self.due((path, reason))
        if count is not None:
            extra = {"path": path, "reason": reason, "status": status, "refused": count}
            log.warning("request refused", extra=extra | _said(answer))


def _said(answer: Any) -> dict[str, str]:
    """The `error` and `field` of a JSON error answer's body (relay's own words), else {}."""
    try:
        data = orjson.loads(answer) if isinstance(answer, bytes) else None
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: data[key] for key in ("error", "field") if isinstance(data.get(key), str)}


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


async def _healthz(deps: HttpDeps, request: web.Request) -> web.Response:
    why = deps.starting() or (DRAINING if deps.draining() else None)
    return json_response({"status": "ok"} if why is None else {"status": "ok", "reason": why})


async def _readyz(deps: HttpDeps, request: web.Request) -> web.Response:
    why = await deps.ready()
    if why is None:
        return json_response({"status": "ready"})
    return json_response({"status": "not ready", "reason": why}, 503)


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
        middlewares=middlewares(deps),
        handler_args={"auto_decompress": False},
    )
    app.on_response_prepare.append(name_the_server)
    h = Handlers(deps)
    add = route_adder(app, deps)
    add("GET", "/metrics", functools.partial(_metrics, deps))
    for slash in ("", "/"):  # a URL pasted into Trigger.dev or a task with its slash: not a 404
        add("POST", "/v1/runs" + slash, h.post_runs, h.refuse_runs)
        add("POST", "/v1/trigger/alerts" + slash, h.post_trigger_alert, h.refuse_alert)
    add("GET", "/healthz", functools.partial(_healthz, deps))
    add("GET", "/readyz", functools.partial(_readyz, deps))
    add("GET", "/openapi.json", _openapi)
    add_admin_routes(add, deps)
    return app


async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER
