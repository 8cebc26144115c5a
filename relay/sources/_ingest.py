"""The ingest endpoints, Handlers: POST /v1/runs and POST /v1/trigger/alerts, each refused from
its headers alone where it can be (also before `100 Continue`), then read within the bodies'
budget, parsed and submitted to intake.

POST /v1/runs answers 202 only after the store committed the batch; a batch is accepted whole
or rejected whole. POST /v1/trigger/alerts takes Trigger.dev's signed alert webhooks: 404 when
`sources.trigger_alerts` is not configured, 401 for a missing or wrong signature (checked before
the body is parsed), then the same 413/400/503/202 as /v1/runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from relay.errors import InputError, StoreUnavailable
from relay.formats import parse_body, parse_runs
from relay.formats.trigger_alerts import (
    ALERT_EXPECTED,
    SIGNATURE_HEADER,
    parse_alert,
    verify_signature,
)
from relay.sources._budget import BodyBudget, Hold
from relay.sources._middleware import store_unavailable
from relay.sources._replies import (
    authorized,
    bad_input,
    closing,
    error,
    json_response,
    read_limited,
    refuse_declared,
    unauthorized,
)

if TYPE_CHECKING:
    from relay.sources.http import HttpDeps

log = logging.getLogger("relay.http")


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
            return bad_input(exc)
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
            return bad_input(exc)
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


# No HTTP authentication scheme covers a signed body: the challenge a 401 must carry (RFC 9110
# §15.5.2) names the signature relay wants and the header it goes in, in the challenge's form.
SIGNATURE_CHALLENGE = f'HMAC-SHA256 realm="relay", header="{SIGNATURE_HEADER}"'


def bad_signature(message: str) -> web.Response:
    """401 for an alert webhook whose signature is missing or wrong."""
    return error(401, message, headers={"WWW-Authenticate": SIGNATURE_CHALLENGE})
