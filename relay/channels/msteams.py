"""`msteams`: an Adaptive Card in a Microsoft Teams channel or chat through a Workflows webhook.

The webhook is a Power Automate / Teams Workflows URL ("When a Teams webhook request is received",
which replaced the retired Office 365 connectors; its `sig` query parameter is the secret). The
template (`msteams/<name>.json.j2`) renders the request body

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                         "content": {"type": "AdaptiveCard", ...}}]}

A bare AdaptiveCard is wrapped; any other JSON (the template fallback) becomes a one-TextBlock
card. The channel keeps the first adaptive-card attachment only (a workflow posts one message per
attachment), sets `version` 1.4 when the card has none, drops Action.OpenUrl / selectAction whose
url is not http(s), and keeps the UTF-8 body under MAX_BODY_BYTES (Teams refuses messages over
about 28 KB): it cuts the longest texts first, then drops trailing body elements, and as a last
resort sends a card with the first text only.

A workflow answers 202 Accepted (some 200) once the flow run is queued; the flow posts the card
afterwards, so a card Teams itself refuses shows up as a failed run in Power Automate, not here.
A legacy Office 365 connector URL (…/webhookb2/…, retired by Microsoft) answers 200 "1", and 200
too when Teams refused the message, with "Webhook message delivery failed with error: Microsoft
Teams endpoint returned HTTP error 429 …" as text (msteams-docs #400, #1810, #7425): that status
is classified as if it were the answer's.

Failure classification; Power Automate's `{"error": {"code"}}` goes in `detail`, never the URL:

    rate_limited  retryable, Retry-After  HTTP 429
    server_error  retryable, Retry-After  HTTP 5xx, 408
    auth_error    permanent               HTTP 401, 403 (DirectApiAuthorizationRequired,
                                          DirectApiInvalidAuthorizationSignature, ...), 404
                                          (WorkflowNotFound: the workflow was deleted)
    client_error  permanent               other 4xx: 400 (InvalidRequestContent), 413, ...
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import SecretStr, field_validator

from relay.channels import (
    ChannelKind,
    HttpChannel,
    Outgoing,
    json_headers,
    parsed_part,
    says_nothing_when,
    sent_as,
)
from relay.channels._http_answers import HttpResponse, classify_status, https_or_local, json_object
from relay.config import ChannelSettings, RateLimit
from relay.errors import DeliveryError
from relay.filters import http_url, truncate_chars

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
MAX_BODY_BYTES = 24_000  # Teams' ~28 KB, less room for what the workflow adds
_MIN_TEXT = 64  # texts are not cut below this while longer ones exist
_TEXT_KEYS = frozenset({"text", "value", "title", "altText", "fallbackText"})
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.]{1,79}")
_CONNECTOR_FAILED = re.compile(
    rb"^\s*Webhook message delivery failed(?:.*?returned HTTP error ([0-9]{3}))?", re.DOTALL
)


class MSTeamsSettings(ChannelSettings):
    webhook_url: SecretStr
    # a workflow run per message: a failure and its follow-ups at once, a storm spread at 1/s
    rate_limit: RateLimit | None = RateLimit(per_second=1, burst=4)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr) -> SecretStr:
        https_or_local(value.get_secret_value(), "webhook_url")
        return value


def _size(body: Any) -> int:
    return len(orjson.dumps(body))


def _text_card(text: str) -> dict[str, Any]:
    return {"type": "AdaptiveCard", "version": "1.4", "body": [_text_block(text)]}


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "TextBlock", "text": truncate_chars(text, 4000), "wrap": True}


def _safe_actions(node: Any) -> Any:
    """The node without OpenUrl actions (or selectActions) whose url is not http(s), and without
    the ActionSets that leaves empty."""
    if isinstance(node, list):
        kept = [_safe_actions(item) for item in node if not _bad_action(item)]
        return [k for k in kept if not (isinstance(k, dict) and k.get("actions") == [])]
    if isinstance(node, dict):
        return {k: _safe_actions(v) for k, v in node.items() if not _bad_action(v)}
    return node


def _bad_action(node: Any) -> bool:
    if not isinstance(node, dict) or node.get("type") != "Action.OpenUrl":
        return False
    url = node.get("url")
    return http_url(url) is None


def _card(value: Any) -> dict[str, Any] | None:
    """The Adaptive Card in a rendered body (bare or in the first adaptive attachment)."""
    if not isinstance(value, dict):
        return None
    if value.get("type") == "AdaptiveCard":
        return value
    for attachment in value.get("attachments") or ():
        if isinstance(attachment, dict) and attachment.get("contentType") == ADAPTIVE:
            content = attachment.get("content")
            if isinstance(content, dict) and content.get("type") == "AdaptiveCard":
                return content
    return None


def _texts(node: Any, out: list[tuple[dict[str, Any], str]]) -> list[tuple[dict[str, Any], str]]:
    """(container, key) of every text of the card a reader sees."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _TEXT_KEYS and isinstance(value, str):
                out.append((node, key))
            else:
                _texts(value, out)
    elif isinstance(node, list):
        for item in node:
            _texts(item, out)
    return out


def _fit(envelope: dict[str, Any], card: dict[str, Any], default_text: str) -> dict[str, Any]:
    """The envelope with its card cut until the body is at most MAX_BODY_BYTES."""
    for _ in range(256):
        excess = _size(envelope) - MAX_BODY_BYTES
        if excess <= 0:
            return envelope
        slots = _texts(card, [])
        if slots:
            container, key = max(slots, key=lambda slot: len(slot[0][slot[1]]))
            text = container[key]
            if len(text) > _MIN_TEXT:
                container[key] = truncate_chars(text, max(_MIN_TEXT, len(text) - excess - 1))
                continue
        body = card.get("body")
        if isinstance(body, list) and len(body) > 1:
            body.pop()
        elif card.get("actions"):
            card.pop("actions")
        else:
            break
    first = next((c[k] for c, k in _texts(card, []) if c[k].strip()), default_text)
    card.clear()
    card.update(_text_card(truncate_chars(first, 2000)))
    return envelope


def teams_message(rendered: str, default_text: str) -> dict[str, Any]:
    """The rendered part as a Workflows webhook body with one Adaptive Card, within limits."""
    return teams_message_of(parsed_part(rendered, "text"), default_text)


def teams_message_of(value: Any, default_text: str) -> dict[str, Any]:
    """teams_message, of the rendered part already parsed."""
    card = _card(value)
    if card is None:
        text = value.get("text") if isinstance(value, dict) else None
        card = _text_card(text if isinstance(text, str) and text.strip() else default_text)
    card = _safe_actions(card)
    if not isinstance(card.get("version"), str):
        card["version"] = "1.4"
    if not isinstance(card.get("body"), list) or not card["body"]:
        card["body"] = [_text_block(default_text)]
    attachment = {"contentType": ADAPTIVE, "content": card}
    return _fit({"type": "message", "attachments": [attachment]}, card, default_text)


def classify(response: HttpResponse) -> DeliveryError:
    """The DeliveryError for a non-2xx answer of the workflow."""
    status, base = response.status, classify_status(response)
    assert base is not None
    data = json_object(response.body)
    error = data.get("error") if data is not None else None
    code = error.get("code") if isinstance(error, dict) else None
    detail = f"HTTP {status}"
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        detail = f"{code} (HTTP {status})"
    reason, retryable = base.reason, base.retryable
    if status == 404:  # the workflow was deleted or its URL is wrong: same as a revoked secret
        reason = "auth_error"
    return DeliveryError(
        reason, retryable=retryable, detail=detail, retry_after=base.retry_after, status=status
    )


def connector_failure(response: HttpResponse) -> DeliveryError | None:
    """The failure a legacy connector reports inside a 2xx answer, None if it reports none."""
    found = _CONNECTOR_FAILED.match(response.body)
    if found is None:
        return None
    status = int(found.group(1) or 500)
    base = classify_status(HttpResponse(status, response.headers, b""))
    reason, retryable = (base.reason, base.retryable) if base else ("other", True)
    return DeliveryError(
        reason,
        retryable=retryable,
        detail=f"connector: Teams answered HTTP {status}",
        retry_after=base.retry_after if base else None,
        status=status,
    )


class MSTeamsChannel(HttpChannel[MSTeamsSettings]):
    settings_model = MSTeamsSettings

    async def send(self, message: Outgoing) -> None:
        body = orjson.dumps(AS_SENT(message)[0])
        headers = json_headers(message, "application/json; charset=utf-8")
        url = self.settings.webhook_url.get_secret_value()
        response = await self._http.request("POST", url, body, headers, self._timeout_s)
        if not 200 <= response.status < 300:
            raise classify(response)
        if (failure := connector_failure(response)) is not None:
            raise failure


AS_SENT = sent_as(teams_message)  # the send's message, and `relay test`'s
KIND = ChannelKind(
    "msteams",
    MSTeamsSettings,
    MSTeamsChannel,
    ("json",),
    says_nothing_when(teams_message_of),
    AS_SENT,
)
