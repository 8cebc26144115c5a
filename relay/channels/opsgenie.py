"""`opsgenie`: alerts through the Opsgenie Alert API (and Jira Service Management Operations'
Integration Events API, the same protocol at another base URL), POST {api_url}/v2/alerts with
`Authorization: GenieKey <api_key>`.

The template (`opsgenie/<name>.json.j2`) renders the alert (`message`, `alias`, `description`,
`tags`, `details`, `entity`, `source`, `priority`, `responders`, `visibleTo`, `actions`, `note`,
`user`); the channel adds the key (a secret the template never sees). What it does with them:

* `alias` comes from the template (the defaults: the run id, a digest's group key, the
  deployment id, the error group's fingerprint), else the run id or notification id. Opsgenie
  keeps one open alert per alias (another create with it counts up), so a resend after a lost
  answer adds no second alert. An alias over 512 characters is shortened with a hash.
* Recovery: `"action": "close"` (relay's word) closes the alert of its alias instead, POST
  {api_url}/v2/alerts/<alias>/close?identifierType=alias. A rule with `update_on_recovery`
  sends the template `recovered` (a close) when a run it alerted about completes; the channel
  returns the alias of each alert it created as its receipt, and a recovery closes that alias,
  whatever the templates say. A close of an alias Opsgenie does not know (404: closed, deleted)
  is done, not dead.
* `priority`: the template's if it is P1..P5; else the most urgent of `priorities[status]` for
  `details.status` (comma-separated in a digest); else `priority` (default P3, Opsgenie's).
* Limits (Opsgenie's, cut never inside a character): message 130 characters, alias 512,
  description 15000, entity 512, source and user 100, note 25000; at most 20 tags of 50
  characters (the channel's `tags` added, repeats dropped); details values as strings, at most
  8000 characters of keys and values in all (the largest cut first); at most 50 responders and
  visibleTo, 10 actions of 50 characters.

Opsgenie answers 202 {"result", "took", "requestId"}: the request is valid and processed later.
Failure classification; Opsgenie's message and errors go in `detail` with the key redacted:

    rate_limited  retryable, Retry-After  HTTP 429 (Retry-After when sent, else backoff)
    server_error  retryable, Retry-After  HTTP 5xx, 408
    auth_error    permanent               HTTP 401 (key unknown, integration disabled), 403
    client_error  permanent               HTTP 400, 402, 404 (a create), 422 (errors listed)
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    IncidentClose,
    Outgoing,
    default_text,
    json_headers,
    parsed_part,
    says_nothing_when,
)
from relay.channels._http_answers import (
    HttpResponse,
    api_base,
    capped_key,
    classify_status,
    json_object,
    json_text,
    quoted,
    text_within,
)
from relay.config import ChannelSettings, RateLimit
from relay.config_base import Token
from relay.errors import DeliveryError
from relay.filters import truncate_chars

Priority = Literal["P1", "P2", "P3", "P4", "P5"]
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
MAX_DETAILS = 8000  # characters of the details' keys and values, all told
_TEXTS = {"description": 15_000, "entity": 512, "source": 100, "user": 100, "note": 25_000}
_ENDPOINT = re.compile(r"/v2/alerts$")
_PARTIES = ("team", "user", "escalation", "schedule")
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class Responder(BaseModel):
    """A team, user, escalation or schedule, by id or name (a user by username), as
    Alertmanager's `responders` and Opsgenie's API name them."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["team", "user", "escalation", "schedule"]
    id: str | None = None
    name: str | None = None
    username: str | None = None

    def as_json(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v}


class OpsgenieSettings(ChannelSettings):
    api_key: Token  # trimmed like every token: one read from a secret file ends with \n
    api_url: str = "https://api.opsgenie.com"
    priority: Priority = "P3"
    priorities: dict[str, Priority] = {
        "CRASHED": "P1",
        "SYSTEM_FAILURE": "P1",
        "FAILED": "P2",
        "TIMED_OUT": "P2",
    }
    responders: list[Responder] = Field(default=[], max_length=50)
    tags: list[str] = Field(default=[], max_length=20)
    # Opsgenie limits each integration's alert requests a minute by plan: 2 a second (120 a
    # minute) with a burst of 10 stays within the smaller plans and lets a wave of failures in
    rate_limit: RateLimit | None = RateLimit(per_second=2, burst=10)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        # the endpoint as curl examples give it (…/v2/alerts) names its base: relay adds its paths
        return api_base(value, _ENDPOINT)

    @field_validator("priorities")
    @classmethod
    def _statuses(cls, value: dict[str, Priority]) -> dict[str, Priority]:
        return {status.upper(): priority for status, priority in value.items()}

    @field_validator("responders")
    @classmethod
    def _named(cls, value: list[Responder]) -> list[Responder]:
        for responder in value:
            if not (responder.id or responder.name or responder.username):
                raise ValueError("each responder needs an id, a name or a username")
        return value


def _tags(*lists: Any) -> list[str]:
    """At most 20 tags of at most 50 characters, in order, repeats dropped."""
    seen: dict[str, None] = {}
    for value in lists:
        for tag in value if isinstance(value, list) else ():
            if text := text_within(tag if isinstance(tag, str) else None, 50):
                seen.setdefault(text.strip(), None)
    return list(seen)[:20]


def _details(value: Any) -> dict[str, str]:
    """The details as Opsgenie takes them: string keys and values (a list or mapping as its
    JSON), at most MAX_DETAILS characters in all, the largest values cut first."""
    items = value.items() if isinstance(value, dict) else ()
    details = {
        truncate_chars(str(k), 100): v if isinstance(v, str) else json_text(v)
        for k, v in items
        if v is not None and v != ""
    }
    over = sum(len(k) + len(v) for k, v in details.items()) - MAX_DETAILS
    for key in sorted(details, key=lambda k: -len(details[k])):
        if over <= 0:
            break
        old = details[key]
        details[key] = truncate_chars(old, max(len(old) - over, 100))
        over -= len(old) - len(details[key])
    while over > 0 and details:  # many small ones: the last ones go
        key, old = details.popitem()
        over -= len(key) + len(old)
    return details


def _parties(value: Any) -> list[dict[str, str]]:
    out = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and item.get("type") in _PARTIES:
            named = {k: v for k in ("id", "name", "username") if isinstance(v := item.get(k), str)}
            if named:
                out.append({"type": item["type"], **named})
    return out[:50]


def _priority(value: dict[str, Any], details: dict[str, str], settings: OpsgenieSettings) -> str:
    if value.get("priority") in PRIORITIES:
        return str(value["priority"])
    statuses = [s.strip().upper() for s in details.get("status", "").split(",")]
    found = [settings.priorities[s] for s in statuses if s in settings.priorities]
    return min(found, default=settings.priority)  # P1 is the most urgent


def opsgenie_alert(
    rendered: str, settings: OpsgenieSettings, fallback_alias: str, default_message: str
) -> tuple[str, dict[str, Any]]:
    """("create" or "close", the body) for the rendered part; a close's body has its alias
    under `alias`, which goes in the URL, not the body."""
    raw = parsed_part(rendered, "message")
    value: dict[str, Any] = raw if isinstance(raw, dict) else {}
    alias = capped_key(text_within(value.get("alias"), 10_000) or fallback_alias, 512)
    texts = {k: text for k, limit in _TEXTS.items() if (text := text_within(value.get(k), limit))}
    if value.get("action") == "close":
        keep = ("source", "user", "note")
        return "close", {"alias": alias, **{k: v for k, v in texts.items() if k in keep}}
    message = text_within(value.get("message"), 130) or truncate_chars(default_message, 130)
    body: dict[str, Any] = {"message": message, "alias": alias, **texts}
    body.setdefault("source", "relay")
    if tags := _tags(value.get("tags"), settings.tags):
        body["tags"] = tags
    details = _details(value.get("details"))
    if details:
        body["details"] = details
    body["priority"] = _priority(value, details, settings)
    configured = [r.as_json() for r in settings.responders]
    for key, parties in (("responders", configured), ("visibleTo", [])):
        if found := _parties(value.get(key)) or parties:
            body[key] = found
    listed = value.get("actions")
    listed = listed if isinstance(listed, list) else []
    if actions := [text for a in listed if (text := text_within(a, 50))][:10]:
        body["actions"] = actions
    return "create", body


def classify(response: HttpResponse, api_key: str) -> DeliveryError:
    """The DeliveryError for a non-2xx answer of the Alert API; never quotes the key."""
    status, base = response.status, classify_status(response)
    assert base is not None
    data = json_object(response.body) or {}
    said = quoted(data["message"], (api_key,), 200) if isinstance(data.get("message"), str) else ""
    request = data.get("requestId")  # a UUID; anything else (a proxy's echo) is not quoted
    known = isinstance(request, str) and _REQUEST_ID.fullmatch(request) and api_key not in request
    where = f"HTTP {status}" + (f", request {request}" if known else "")
    errors = data.get("errors")
    errors = errors if isinstance(errors, dict) else {}
    listed = [f"{k}: {v}" for k, v in list(errors.items())[:5] if isinstance(v, str)]
    detail = f"{said} ({where})" if said else where
    if listed:
        detail += ": " + quoted("; ".join(listed), (api_key,), 300)
    return DeliveryError(
        base.reason,
        retryable=base.retryable,
        detail=detail,
        retry_after=base.retry_after,
        status=status,
    )


class OpsgenieChannel(HttpChannel[OpsgenieSettings]):
    settings_model = OpsgenieSettings

    async def send(self, message: Outgoing) -> str | None:
        """Create the alert (its receipt: the alias) or close one."""
        fallback = message.run_id or message.notification_id
        rendered = message.parts.get("json", "")
        action, body = opsgenie_alert(rendered, self.settings, fallback, default_text(message))
        opened = message.recovers.receipt if message.recovers is not None else None
        if action == "close":
            await self._close(opened or body.pop("alias"), body, message)
            return None
        await self._post("/v2/alerts", body, message)
        return str(body["alias"])

    async def _close(self, alias: str, body: dict[str, Any], message: Outgoing) -> None:
        body = {"source": "relay", **{k: v for k, v in body.items() if k != "alias"}}
        path = f"/v2/alerts/{quote(alias, safe='')}/close?identifierType=alias"
        try:
            await self._post(path, body, message)
        except DeliveryError as exc:
            if exc.status != 404:  # 404: no alert of that alias (closed, deleted): done
                raise

    async def _post(self, path: str, body: dict[str, Any], message: Outgoing) -> None:
        key = self.settings.api_key.get_secret_value()
        headers = {**json_headers(message), "Authorization": f"GenieKey {key}"}
        url = self.settings.api_url + path
        data = orjson.dumps(body)
        response = await self._http.request("POST", url, data, headers, self._timeout_s)
        if not 200 <= response.status < 300:
            raise classify(response, key)


_SAMPLE = OpsgenieSettings.model_validate({"type": "opsgenie", "api_key": "-"})


def _shown(rendered: str, default: str, alias: str = "-") -> dict[str, Any]:
    """The alert (or close) a rendered part makes, under the default settings."""
    action, body = opsgenie_alert(rendered, _SAMPLE, alias, default)
    return body if action == "create" else {"action": "close", **body}


def _as_sent(message: Outgoing) -> tuple[dict[str, Any], list[str]]:
    """What `relay test` shows: the alert, its alias the send's (the run id when the template
    gives none)."""
    alias = message.run_id or message.notification_id
    return _shown(message.parts.get("json", ""), default_text(message), alias), []


KIND = ChannelKind(
    "opsgenie",
    OpsgenieSettings,
    OpsgenieChannel,
    ("json",),
    check=says_nothing_when(lambda parsed, default: _shown(json_text(parsed), default)),
    as_sent=_as_sent,
    opens_incidents=IncidentClose('{"action": "close"}', "close it in Opsgenie (alias {})"),
)
