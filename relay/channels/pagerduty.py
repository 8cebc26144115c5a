"""`pagerduty`: alert events through the PagerDuty Events API v2, POST {api_url}/v2/enqueue.

The template (`pagerduty/<name>.json.j2`) renders the event without its routing key: the channel
adds `routing_key` (a secret the template never sees). What the channel does with the body:

* `event_action` trigger (the default), acknowledge or resolve. `dedup_key` comes from the
  template (the defaults: the run id, a digest's group key, the deployment id, the error group's
  fingerprint), else the run id or notification id, so a resend after a lost answer updates the
  same PagerDuty alert instead of opening a second incident. Keys over 255 characters are
  shortened with a hash. acknowledge / resolve send only the key.
* Resolving: a rule with `update_on_recovery` sends, when a run it paged about completes, the
  template `recovered` (a resolve of the run's key). The channel returns the dedup key of each
  trigger it sent (PagerDuty's answer, else the key sent) as its receipt, and a recovery resolves
  that key, whatever the templates say: the alert the trigger opened is the one closed.
  `pagerduty/run_resolve.json.j2` renders the same resolve, for a rule of your own.
* `event_action: "change"` (relay's word, not PagerDuty's) sends a Change Event to
  {api_url}/v2/change/enqueue instead: `deployment_success` does, a deploy is a change, not an
  incident.
* `payload.severity`: the template's if it is critical, error, warning or info; else the most
  severe of `severities[status]` for `custom_details.status` (or the keys of
  `custom_details.by_status` in digests); else `severity` (default "error").
* Limits: summary 1024 characters; source, component, group and class 255; at most 20 links and
  images with http(s) URLs; a body over 500 KB (PagerDuty refuses 512 KB) has its largest
  custom_details cut to 1000 characters (a list or mapping as JSON text) until it fits, the
  others kept; failing that, only their short scalar values.

Failure classification; PagerDuty's status and errors go in `detail` with the routing key
redacted:

    rate_limited  retryable, Retry-After  HTTP 429 (PagerDuty rarely says when: backoff)
    server_error  retryable, Retry-After  HTTP 5xx, 408
    auth_error    permanent               HTTP 401, 403; 400 whose errors name the routing key
    client_error  permanent               other 4xx: 400 "invalid event" (errors listed), 404, 413
    template      permanent               acknowledge / resolve without a dedup key
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import SecretStr, field_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    IncidentClose,
    Outgoing,
    default_text,
    json_headers,
)
from relay.channels._http_answers import (
    HttpResponse,
    api_base,
    capped_key,
    classify_status,
    json_object,
    json_text,
    redacted,
    text_within,
)
from relay.config import ChannelSettings, RateLimit
from relay.config_base import Token
from relay.errors import DeliveryError
from relay.filters import http_url, truncate_chars

Severity = Literal["critical", "error", "warning", "info"]
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}
MAX_BODY_BYTES = 500_000
_CUT_CHARS = 1000  # a custom detail longer than this is cut first when the event is too large
_ACTIONS = ("trigger", "acknowledge", "resolve")
_CHANGE_KEYS = ("summary", "source", "timestamp", "custom_details")
_WORD = re.compile(r"[A-Za-z][A-Za-z ]{0,39}")
_ENDPOINT = re.compile(r"/v2(?:/change)?/enqueue$")


class PagerDutySettings(ChannelSettings):
    routing_key: Token  # trimmed like every token: one read from a secret file ends with \n
    api_url: str = "https://events.pagerduty.com"
    severity: Severity = "error"
    severities: dict[str, Severity] = {"CRASHED": "critical", "SYSTEM_FAILURE": "critical"}
    # PagerDuty takes about 120 events a minute per routing key
    rate_limit: RateLimit | None = RateLimit(per_second=2, burst=10)

    @field_validator("routing_key")
    @classmethod
    def _routing_key(cls, value: SecretStr) -> SecretStr:
        # PagerDuty answers any other length 400 "Length of 'routing_key' is incorrect (should
        # be 32 characters)": every page would be dead, so the file is refused instead
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", value.get_secret_value()):
            raise ValueError("routing_key must be the 32-character integration key")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        # the whole endpoint, as PagerDuty's integration page and Alertmanager's `url` give it,
        # names its base: relay adds /v2/enqueue (or /v2/change/enqueue) itself
        return api_base(value, _ENDPOINT)

    @field_validator("severities")
    @classmethod
    def _statuses(cls, value: dict[str, Severity]) -> dict[str, Severity]:
        return {status.upper(): severity for status, severity in value.items()}


def _severity(payload: dict[str, Any], settings: PagerDutySettings) -> str:
    if payload.get("severity") in SEVERITY_RANK:
        return str(payload["severity"])
    details = payload.get("custom_details")
    details = details if isinstance(details, dict) else {}
    statuses = [details.get("status")]
    if isinstance(details.get("by_status"), dict):
        statuses += list(details["by_status"])
    known = settings.severities
    found = [known[s] for s in statuses if isinstance(s, str) and s in known]
    return max(found, key=SEVERITY_RANK.__getitem__, default=settings.severity)


def _links(value: Any, key: str, keep: tuple[str, ...]) -> list[dict[str, str]]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and _http_url(item.get(key)):
            texts = {k: v for k in keep if isinstance(v := item.get(k), str)}
            out.append(
                {
                    k: v if k in ("href", "src") else truncate_chars(v, 1024)
                    for k, v in texts.items()
                }
            )
    return out[:20]


def _http_url(value: Any) -> str | None:
    url = http_url(value)
    return url if url is not None and len(url) < 2048 else None


def _trim_details(body: dict[str, Any]) -> dict[str, Any]:
    """The body within MAX_BODY_BYTES: its largest custom_details cut first (to 1000
    characters, a list or mapping as its JSON text), then, if that is not enough, only short
    scalar details kept."""
    payload = body.get("payload")
    size = _size(body)
    if size <= MAX_BODY_BYTES or not isinstance(payload, dict):
        return body
    details = payload.get("custom_details")
    if isinstance(details, dict):
        details = {str(k)[:100]: v for k, v in details.items()}
        for key, old in sorted(((k, _size(v)) for k, v in details.items()), key=lambda kv: -kv[1]):
            if size <= MAX_BODY_BYTES or old <= _CUT_CHARS:
                break
            value = details[key]
            text = value if isinstance(value, str) else json_text(value)
            details[key] = truncate_chars(text, _CUT_CHARS)
            size -= old - _size(details[key])
        payload["custom_details"] = {**details, "relay": "details cut: the event was too large"}
        if _size(body) <= MAX_BODY_BYTES:
            return body
    kept = {
        str(k)[:100]: truncate_chars(v, 1000) if isinstance(v, str) else v
        for k, v in (details.items() if isinstance(details, dict) else ())
        if isinstance(v, str | int | float | bool)
    }
    kept = dict(list(kept.items())[:100])
    payload["custom_details"] = {**kept, "relay": "details cut: the event was too large"}
    return body


def _size(body: Any) -> int:
    return len(orjson.dumps(body))


def _payload(value: dict[str, Any], raw: dict[str, Any], default_summary: str) -> dict[str, Any]:
    summary = text_within(raw.get("summary"), 1024) or text_within(value.get("text"), 1024)
    summary = summary or default_summary
    payload: dict[str, Any] = {"summary": truncate_chars(summary, 1024), "source": "trigger.dev"}
    for key in ("source", "component", "group", "class"):
        if text := text_within(raw.get(key), 255):
            payload[key] = text
    if isinstance(raw.get("timestamp"), str):
        payload["timestamp"] = raw["timestamp"]
    if raw.get("custom_details") is not None:
        payload["custom_details"] = raw["custom_details"]
    return payload


def pagerduty_event(
    rendered: str, settings: PagerDutySettings, fallback_key: str, default_summary: str
) -> tuple[str, dict[str, Any]]:
    """(path, body without routing_key) for the rendered part; the path is /v2/enqueue or
    /v2/change/enqueue."""
    try:
        value: Any = orjson.loads(rendered)
    except orjson.JSONDecodeError:
        value = {}
    value = value if isinstance(value, dict) else {}
    raw = value.get("payload") if isinstance(value.get("payload"), dict) else {}
    payload = _payload(value, raw, default_summary)
    links = _links(value.get("links"), "href", ("href", "text"))
    body: dict[str, Any] = {"payload": payload} | ({"links": links} if links else {})
    action = value.get("event_action")
    if action == "change":  # a Change Event has no severity, dedup_key, component, group, class
        body["payload"] = {k: v for k, v in payload.items() if k in _CHANGE_KEYS}
        return "/v2/change/enqueue", _trim_details(body)
    action = action if action in _ACTIONS else "trigger"
    key = capped_key(text_within(value.get("dedup_key"), 10_000) or fallback_key, 255)
    if action != "trigger":
        if not key.strip():
            raise DeliveryError("template", retryable=False, detail=f"{action} without dedup_key")
        return "/v2/enqueue", {"event_action": action, "dedup_key": key}
    payload["severity"] = _severity(raw, settings)
    body = {"event_action": action, **({"dedup_key": key} if key.strip() else {}), **body}
    if images := _links(value.get("images"), "src", ("src", "href", "alt")):
        body["images"] = images
    if client := text_within(value.get("client"), 255):
        body["client"] = client
    if url := _http_url(value.get("client_url")):
        body["client_url"] = url
    return "/v2/enqueue", _trim_details(body)


def classify(response: HttpResponse, routing_key: str) -> DeliveryError:
    """The DeliveryError for a non-2xx answer of the Events API; never quotes the routing key."""
    status, base = response.status, classify_status(response)
    assert base is not None
    data = json_object(response.body) or {}
    word = data.get("status")
    errors = [e for e in data.get("errors") or () if isinstance(e, str)][:3]
    errors = [truncate_chars(redacted(e, (routing_key,), "[routing key]"), 160) for e in errors]
    detail = f"{word} (HTTP {status})" if isinstance(word, str) and _WORD.fullmatch(word) else ""
    detail = (detail or f"HTTP {status}") + (": " + "; ".join(errors) if errors else "")
    reason = base.reason
    if status == 400 and any("routing_key" in e or "routing key" in e.lower() for e in errors):
        reason = "auth_error"
    return DeliveryError(
        reason, retryable=base.retryable, detail=detail, retry_after=base.retry_after, status=status
    )


class PagerDutyChannel(HttpChannel[PagerDutySettings]):
    settings_model = PagerDutySettings

    async def send(self, message: Outgoing) -> str | None:
        """Send the event; the receipt of a trigger is its dedup key."""
        key = message.run_id or message.notification_id
        rendered = message.parts.get("json", "")
        path, event = pagerduty_event(rendered, self.settings, key, default_text(message))
        opened = message.recovers.receipt if message.recovers is not None else None
        if opened and event.get("event_action") in ("acknowledge", "resolve"):
            event["dedup_key"] = opened
        routing_key = self.settings.routing_key.get_secret_value()
        body = orjson.dumps({"routing_key": routing_key, **event})
        headers = json_headers(message)
        url = self.settings.api_url + path
        response = await self._http.request("POST", url, body, headers, self._timeout_s)
        if not 200 <= response.status < 300:
            raise classify(response, routing_key)
        return _opened(response, event)


def _opened(response: HttpResponse, event: dict[str, Any]) -> str | None:
    """The dedup key of the alert a trigger opened: PagerDuty's answer, else the key sent."""
    if event.get("event_action") != "trigger":
        return None
    answer = json_object(response.body)
    key = answer.get("dedup_key") if answer is not None else None
    if isinstance(key, str) and 0 < len(key) <= 255:
        return key
    sent = event.get("dedup_key")
    return sent if isinstance(sent, str) and sent else None


KIND = ChannelKind(
    "pagerduty",
    PagerDutySettings,
    PagerDutyChannel,
    ("json",),
    opens_incidents=IncidentClose(
        '{"event_action": "resolve"}', "resolve it in PagerDuty (dedup_key {})"
    ),
)
