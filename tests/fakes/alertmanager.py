"""A receiver written for Alertmanager's webhook (version "4"): a real aiohttp server on
127.0.0.1 that reads each body as such a receiver does and records what is wrong with it.

The schema is Alertmanager's own (notify/webhook/webhook.go `Message`, template/template.go
`Data` and `Alert`, as Alertmanager 0.25 posts them; tests/fixtures/alertmanager/ holds bodies a
real one posted): exactly the keys it sends, each of its type, string maps of labels and
annotations, RFC 3339 times, a 16-hex-digit fingerprint, and what Alertmanager guarantees of
them (groupLabels within commonLabels, commonLabels and commonAnnotations within every alert's,
`status` firing while an alert fires).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.serving import serving, until

BODY_KEYS = {
    "receiver": str,
    "status": str,
    "alerts": list,
    "groupLabels": dict,
    "commonLabels": dict,
    "commonAnnotations": dict,
    "externalURL": str,
    "version": str,
    "groupKey": str,
    "truncatedAlerts": int,
}
ALERT_KEYS = {
    "status": str,
    "labels": dict,
    "annotations": dict,
    "startsAt": str,
    "endsAt": str,
    "generatorURL": str,
    "fingerprint": str,
}
STATUSES = ("firing", "resolved")
# RFC 3339 (Go's time.Time as JSON: RFC3339Nano), e.g. 2026-12-06T18:45:26Z, …26.118Z, …+02:00
RFC3339 = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
)
FINGERPRINT = re.compile(r"[0-9a-f]{16}")
ZERO_TIME = "0001-01-01T00:00:00Z"


def parse(raw: bytes) -> Any:
    """The body as JSON, refusing what Go's decoder would read otherwise: a repeated key."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"repeated keys {repeated}")
        return dict(pairs)

    return json.loads(raw, object_pairs_hook=no_repeats)


def body_problems(body: Any) -> list[str]:
    """What an Alertmanager receiver would find wrong in `body` (a parsed webhook body)."""
    if not isinstance(body, dict):
        return [f"body is {type(body).__name__}, not an object"]
    problems = _typed(body, BODY_KEYS, "body")
    if problems:
        return problems
    if body["version"] != "4":
        problems.append(f"version {body['version']!r}, not '4'")
    if body["status"] not in STATUSES:
        problems.append(f"status {body['status']!r}")
    if body["truncatedAlerts"] < 0 or isinstance(body["truncatedAlerts"], bool):
        problems.append("truncatedAlerts is no count")
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        problems += _string_map(body[name], name)
    if not body["alerts"]:
        problems.append("no alerts")
    for i, alert in enumerate(body["alerts"]):
        problems += alert_problems(alert, f"alerts[{i}]")
    if problems:
        return problems
    return _agreement(body)


def alert_problems(alert: Any, where: str) -> list[str]:
    if not isinstance(alert, dict):
        return [f"{where} is not an object"]
    problems = _typed(alert, ALERT_KEYS, where)
    if problems:
        return problems
    if alert["status"] not in STATUSES:
        problems.append(f"{where}.status {alert['status']!r}")
    problems += _string_map(alert["labels"], f"{where}.labels")
    problems += _string_map(alert["annotations"], f"{where}.annotations")
    for name in ("startsAt", "endsAt"):
        if not RFC3339.fullmatch(alert[name]):
            problems.append(f"{where}.{name} {alert[name]!r} is not RFC 3339")
    if not FINGERPRINT.fullmatch(alert["fingerprint"]):
        problems.append(f"{where}.fingerprint {alert['fingerprint']!r}")
    if "alertname" not in alert["labels"]:
        problems.append(f"{where}.labels has no alertname")
    if alert["status"] == "resolved" and alert["endsAt"] == ZERO_TIME:
        problems.append(f"{where} is resolved without an end")
    return problems


def _typed(value: dict[str, Any], keys: Mapping[str, type], where: str) -> list[str]:
    problems = []
    if set(value) != set(keys):
        missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
        problems.append(f"{where} keys: missing {missing}, not Alertmanager's {extra}")
    for key, kind in keys.items():
        if key in value and not isinstance(value[key], kind):
            problems.append(f"{where}.{key} is {type(value[key]).__name__}, not {kind.__name__}")
    return problems


def _string_map(value: dict[str, Any], where: str) -> list[str]:
    """Labels and annotations are Go map[string]string: text values, none empty (Alertmanager
    drops a label whose value is empty)."""
    return [
        f"{where}[{key!r}] is {value[key]!r}"
        for key in value
        if not isinstance(value[key], str) or value[key] == ""
    ]


def _agreement(body: dict[str, Any]) -> list[str]:
    """What Alertmanager's bodies always say of themselves."""
    alerts = body["alerts"]
    problems = []
    if not body["groupLabels"].items() <= body["commonLabels"].items():
        problems.append("groupLabels not within commonLabels")
    for name, field_ in (("commonLabels", "labels"), ("commonAnnotations", "annotations")):
        for i, alert in enumerate(alerts):
            if not body[name].items() <= alert[field_].items():
                problems.append(f"{name} not within alerts[{i}].{field_}")
        first = alerts[0][field_].items()
        shared = {k: v for k, v in first if all(a[field_].get(k) == v for a in alerts)}
        if body[name] != shared:
            problems.append(f"{name} {body[name]} is not what every alert has alike {shared}")
    firing = any(alert["status"] == "firing" for alert in alerts)
    if body["status"] != ("firing" if firing else "resolved"):
        problems.append(f"status {body['status']} with alerts {[a['status'] for a in alerts]}")
    return problems


@dataclass
class AlertmanagerReceiver:
    """Receives webhook bodies at `url`; `bodies` as parsed, `problems` one list per request."""

    url: str = ""
    bodies: list[Any] = field(default_factory=list)
    problems: list[list[str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.headers.append(dict(request.headers))
        self.arrived.set()
        try:
            body = parse(raw)
        except ValueError as exc:  # json.JSONDecodeError too
            self.bodies.append(None)
            self.problems.append([f"not JSON: {exc}"])
            return web.Response(status=400)
        self.bodies.append(body)
        found = body_problems(body)
        if request.content_type != "application/json":
            found.append(f"content type {request.content_type}")
        self.problems.append(found)
        return web.Response(status=400 if found else 200)

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[Any]:
        got = lambda: f"got {len(self.bodies)} of {count} bodies"  # noqa: E731
        await until(lambda: len(self.bodies) >= count, self.arrived, timeout, got)
        return self.bodies


@asynccontextmanager
async def alertmanager_receiver() -> AsyncIterator[AlertmanagerReceiver]:
    receiver = AlertmanagerReceiver()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/hook", receiver.handle)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as base:
        receiver.url = base + "/hook"
        yield receiver
