"""What the HTTP channels read and check without a client (no aiohttp: `relay check` imports
the channels for their settings and sends nothing): the URLs they may post to, an answer's JSON
body, and what its status means.

Classification: 2xx ok; 429 rate_limited and 408/5xx server_error are retryable (Retry-After
honoured), and so is a proxy's 407 (network); 401/403 auth_error and other 4xx client_error are
permanent. The client that makes
the requests, and turns timeouts and connection failures into retryable errors, is
relay.channels._http. Messages never contain the URL (webhook URLs embed secrets).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from relay.config_base import CONTROL_CHARS, url_problem
from relay.errors import DeliveryError
from relay.filters import truncate_chars
from relay.outbound import origin, proxy_answered
from relay.retry_after import parse_retry_after


@dataclass(frozen=True)
class HttpResponse:
    status: int
    # looked up in any case: aiohttp's C parser names known headers as `Retry-After` whatever
    # the case on the wire (Envoy writes `retry-after`), its pure-Python one keeps the wire's
    headers: Mapping[str, str]
    body: bytes


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def https_or_local(url: str, what: str) -> str:
    """`url` if it is https:// (or http:// to this machine, for tests); else ValueError."""
    scheme = url.partition("://")[0].lower()
    try:
        host = urlsplit(url).hostname
    except ValueError:  # said below, without Python's words (they may quote a password)
        host = None
    if not (scheme == "https" or (scheme == "http" and host in LOCAL_HOSTS)):
        raise ValueError(f"{what} must be an https:// URL (http:// only for localhost)")
    if (problem := url_problem(url)) is not None:
        raise ValueError(f"{what} {problem}")
    return url


def api_base(url: str, endpoint: re.Pattern[str] | None = None) -> str:
    """A channel's `api_url`: https:// (http:// only to this machine), without its trailing
    slash, nor the `endpoint` path a service's docs give with it (relay adds its own paths)."""
    base = https_or_local(url, "api_url").rstrip("/")
    return base if endpoint is None else endpoint.sub("", base)


def capped_key(key: str, limit: int) -> str:
    """An idempotency key (PagerDuty's dedup_key, Opsgenie's alias) within `limit` characters:
    a longer one is its start and a hash of the whole, so two long keys stay two."""
    if len(key) <= limit:
        return key
    return key[: limit - 55] + "~" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def text_within(value: Any, limit: int) -> str | None:
    """A rendered field that is text, cut to `limit` characters; None if it is no text or blank."""
    return truncate_chars(value, limit) if isinstance(value, str) and value.strip() else None


def json_text(value: Any) -> str:
    """`value` as its compact JSON text (a list or mapping where a service takes strings)."""
    return orjson.dumps(value, default=str).decode()


def json_object(data: bytes | str | None) -> dict[str, Any] | None:
    """An answer body (or a stored receipt) as a JSON object; None if it is not one."""
    if not data:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def proxy_refused(status: int) -> DeliveryError:
    """The proxy refused the request (407) or the tunnel to the receiver: retried, as a
    proxy restarted or HTTP(S)_PROXY fixed (and relay restarted) lets it through."""
    return DeliveryError("network", retryable=True, detail=proxy_answered(status), status=status)


def classify_status(response: HttpResponse) -> DeliveryError | None:
    """None for success, else the DeliveryError this status means."""
    status = response.status
    if 200 <= status < 300:
        return None
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    detail = f"HTTP {status}"
    if status == 407:  # only a proxy answers it (RFC 9110), for an http:// receiver
        return proxy_refused(status)
    if status == 429:
        return DeliveryError(
            "rate_limited", retryable=True, detail=detail, retry_after=retry_after, status=status
        )
    if status >= 500 or status == 408:
        return DeliveryError(
            "server_error", retryable=True, detail=detail, retry_after=retry_after, status=status
        )
    if status in (401, 403):
        return DeliveryError("auth_error", retryable=False, detail=detail, status=status)
    if 300 <= status < 400:  # not followed (Standard Webhooks): the url is to be fixed
        target = origin(response.headers.get("Location"))
        detail += f": redirect to {target}, not followed" if target else ": redirect, not followed"
    reason = "client_error" if 400 <= status < 500 else "other"
    return DeliveryError(reason, retryable=False, detail=detail, status=status)


def redacted(text: str, secrets: Iterable[str], label: str = "[secret]") -> str:
    """`text` with each of `secrets` (in turn: a longer one that holds a shorter one first)
    said as `label`."""
    for secret in secrets:
        text = text.replace(secret, label) if secret else text
    return text


def quoted(text: str, secrets: Iterable[str], limit: int, label: str = "[secret]") -> str:
    """A receiver's words as an error's detail quotes them: `secrets` redacted, on one line
    (control characters as spaces), trimmed, within `limit` characters."""
    return truncate_chars(CONTROL_CHARS.sub(" ", redacted(text, secrets, label)).strip(), limit)
