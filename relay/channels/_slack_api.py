"""The Slack Web API's and incoming webhooks' answers: the error word of a refusal, its
DeliveryError, a 2xx answer's JSON, and the receipt of a posted message.

Failure classification; Slack's error name goes in `detail`, never the webhook URL or token:

    rate_limited  retryable, Retry-After  HTTP 429; ratelimited, rate_limited
    server_error  retryable, Retry-After  HTTP 5xx, 408; internal_error, fatal_error,
                                          service_unavailable, request_timeout, rollup_error,
                                          team_added_to_org (the workspace is moving into an
                                          Enterprise Grid: "intermittently unavailable")
    auth_error    permanent               HTTP 401, 403; invalid_auth, not_authed, token_revoked,
                                          account_inactive, missing_scope, ...; webhooks (404,
                                          403): no_service, no_team, invalid_token,
                                          no_active_hooks, action_prohibited
    client_error  permanent               other 4xx or ok:false: channel_not_found, not_in_channel,
                                          is_archived, channel_is_archived (410), invalid_blocks,
                                          invalid_payload, msg_too_long, no_text, ...
    other         retryable               a 2xx Web API answer that is not JSON
    timeout, network: retryable, from channels/_http.py

A word that says an HTTP status (_STATUS_SAID) is that status in the DeliveryError: Slack down
(service_unavailable: 503) counts towards an outage as a 503 answer does (relay.policy.Outage).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import orjson

from relay.channels._http_answers import HttpResponse, classify_status, json_object
from relay.errors import DeliveryError

_ERROR_NAME = re.compile(r"[a-z][a-z0-9_]{1,63}")
# Web API answers (HTTP 200, ok: false) that say in words what an HTTP status says: classified,
# and counted towards an outage (relay.policy.Outage), as that status is. Slack's docs:
# service_unavailable "the service is temporarily unavailable" (503, as team_added_to_org:
# the workspace "intermittently unavailable" while it moves into an Enterprise Grid);
# internal_error, fatal_error "could not complete your operation(s)", rollup_error (500: may be
# this message's own); request_timeout "the POST data was either missing or truncated" (408).
_STATUS_SAID = {
    "ratelimited": 429, "rate_limited": 429, "service_unavailable": 503,
    "team_added_to_org": 503, "internal_error": 500, "fatal_error": 500, "rollup_error": 500,
    "request_timeout": 408,
}  # fmt: skip
_AUTH = frozenset(
    {
        "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
        "missing_scope", "no_permission", "not_allowed_token_type", "ekm_access_denied",
        "access_denied", "org_login_required", "team_access_not_granted",
        # incoming webhooks: the URL was revoked, disabled or is not allowed to post
        "no_service", "no_team", "invalid_token", "no_active_hooks", "action_prohibited",
        "posting_to_general_channel_denied",
    }
)  # fmt: skip

# What to do, beside the error words an operator meets setting a channel up: Slack's own words
# ("channel_not_found") sent them to Slack's docs at the first send-test
_HINTS = {
    "channel_not_found": "no channel by that name or id the bot can see; a private one must"
    " invite the bot",
    "not_in_channel": "the bot is not in the channel: invite it (/invite @bot)",
    "missing_scope": "the bot token lacks a scope: chat:write (chat:write.customize with"
    " username or icon_emoji)",
}


def error_name(body: bytes) -> str | None:
    """Slack's error word from a plain-text or `{"ok": false, "error": ...}` body, if sane."""
    text = body[:4096].decode("utf-8", "replace").strip()
    name: Any = text
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        name = data.get("error") if isinstance(data, dict) else None
    return name if isinstance(name, str) and _ERROR_NAME.fullmatch(name) else None


def classify(response: HttpResponse, name: str | None) -> DeliveryError:
    """The DeliveryError for a failed answer with Slack error word `name` (if any): a 2xx
    answer's word that says an HTTP status (_STATUS_SAID) is classified as that status, and
    carries it (`status`), as if Slack had answered it."""
    status = response.status
    if 200 <= status < 300:
        status = _STATUS_SAID.get(name or "", status)
    base = classify_status(replace(response, status=status))
    detail = name or (base.detail if base is not None else f"HTTP {status}")  # a redirect's
    # target, a proxy's 407: the words every HTTP channel gives
    if name is not None and not 200 <= response.status < 300:
        detail = f"{name} (HTTP {response.status})"
    if name in _HINTS:
        detail = f"{detail}: {_HINTS[name]}"
    if base is not None and base.retryable:
        reason, retryable = base.reason, True
    elif name in _AUTH:
        reason, retryable = "auth_error", False
    elif base is not None:
        reason, retryable = base.reason, base.retryable
    else:
        reason, retryable = "client_error", False
    after = base.retry_after if base is not None and retryable else None
    return DeliveryError(
        reason, retryable=retryable, detail=detail, retry_after=after, status=status
    )


def api_answer(response: HttpResponse) -> dict[str, Any]:
    """A 2xx Web API answer; raise the classified error for ok:false."""
    data = json_object(response.body)
    if data is None:
        raise DeliveryError("other", retryable=True, detail="Slack answered without JSON")
    if data.get("ok") is not True:
        raise classify(response, error_name(response.body) or "unknown_error")
    return data


def in_thread(answer: dict[str, Any]) -> bool:
    """Whether a reply's answer says it went into the thread. Slack un-threads a reply whose
    thread's first message was deleted (ok, no `thread_ts` in the message echoed); an answer
    without the message is taken at its word."""
    posted = answer.get("message")
    return not isinstance(posted, dict) or bool(posted.get("thread_ts"))


def posted_at(receipt: str | None) -> dict[str, str] | None:
    """{"channel", "ts"} of a posted message from its receipt; None if there is none."""
    value = json_object(receipt)
    if value is None:
        return None
    channel, ts = value.get("channel"), value.get("ts")
    if isinstance(channel, str) and channel and isinstance(ts, str) and ts:
        return {"channel": channel, "ts": ts}
    return None
