"""`pushover`: push notifications to phones through Pushover, POST {api_url}/1/messages.json.

The template (`pushover/<name>.json.j2`) renders {"title", "message", "url", "url_title"} and,
when it wants one of its own, "priority" (and "sound", "timestamp"); relay's plain fallback (a
template that failed) {"text", "dashboardUrl", …} is sent as its text and link. The channel
sends, as JSON:

    {"token", "user", "message", "html": 1, "title", "url", "url_title", "priority",
     "retry", "expire" (priority 2 only), "sound", "device", "ttl", "timestamp"}

`token` (the application's API token) and `user` (a user or group key) are secrets the template
never sees. `message` is HTML (`html=1`: b, i, u, font color, a href; newlines kept): the
channel makes it into the subset Pushover shows within its 1024 characters, markup included
(relay.channels._pushover_html: never cut inside a tag or an entity, the tags left open closed
after the "…"); `title` is plain text within 250 characters, `url` an http(s) URL within 512
(a longer one is dropped: cut, it would open another page), `url_title` within 100.

Priority: -2 (no notification) … 2 (emergency: repeated every `retry` seconds until someone
acknowledges it in the app, for at most `expire` seconds). A template's `priority` (an integer
in -2..2) wins; else the channel's `priority` (default 1: high, through quiet hours, once). A
recovery is never sent as an emergency (at most 1). Pushover answers an emergency with a
`receipt`: the channel returns {"receipt"} as its receipt, and a recovery (a rule with
`update_on_recovery`) first cancels the alert's repeats (POST
{api_url}/1/receipts/<receipt>/cancel.json) and then sends the `recovered` message. A receipt
Pushover no longer knows (expired, more than a week old) leaves nothing to cancel: the recovery
is sent all the same.

Pushover cannot deduplicate: a send tried again after its answer was lost (a timeout, a kill
-9) shows twice on the phone. Pushover asks for at most 2 requests at once (the default
`concurrency`), and a 5xx to be tried again no sooner than 5 seconds.

Failure classification; Pushover's `errors` go in `detail` (its `request` id too: what its
support asks for), the token and user key redacted:

    rate_limited  retryable  HTTP 429: the application (the account, since May 2026) is over
                             its monthly message quota. Retry-After if sent; else until
                             X-Limit-App-Reset (the quota's reset, a Unix time), at most an
                             hour: an upgraded quota lets the next try through
    server_error  retryable  HTTP 5xx, 408: Retry-After, at least 5 seconds
    auth_error    permanent  HTTP 4xx naming the token or the user key invalid (`"token":
                             "invalid"`, `"user": "invalid"`), 401, 403
    client_error  permanent  other 4xx: Pushover's `errors` quoted (a device or sound it does
                             not know, a template's message it refused)
    other         retryable  a 2xx answer that is not Pushover's JSON
    timeout, network: retryable, from channels/_http.py
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from relay.channels import (
    ID_HEADER,
    ChannelKind,
    HttpChannel,
    Outgoing,
    parsed_part,
    says_nothing_when,
    sent_and_told,
)
from relay.channels._http_answers import (
    HttpResponse,
    api_base,
    classify_status,
    json_object,
    quoted,
)
from relay.channels._pushover_html import MAX_MESSAGE, pushover_html
from relay.config import ChannelSettings
from relay.config_base import CONTROL_CHARS, Token
from relay.durations import PositiveDuration
from relay.errors import DeliveryError
from relay.filters import http_url, truncate_chars
from relay.retry_after import parse_retry_after

log = logging.getLogger("relay.channels.pushover")

MAX_TITLE = 250
MAX_URL = 512
MAX_URL_TITLE = 100
MIN_RETRY_S = 30  # Pushover's: an emergency is repeated at most every 30 seconds
MAX_EXPIRE_S = 10_800  # Pushover's: an emergency is repeated for at most 3 hours
SERVER_WAIT_S = 5.0  # Pushover's: a 5xx is tried again no sooner than 5 seconds
QUOTA_WAIT_S = 3600.0  # a 429 waits for the quota's reset, trying again at least hourly
_KEY = re.compile(r"[A-Za-z0-9]{30}")
_DEVICE = re.compile(r"[A-Za-z0-9_-]{1,25}")
_SOUND = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RECEIPT = re.compile(r"[A-Za-z0-9]{1,64}")
_REQUEST = re.compile(r"[A-Za-z0-9-]{1,64}")
_ENDPOINT = re.compile(r"/1(?:/messages\.json)?$")
_AUTH_HINTS = {
    "token": "token was refused: copy the application's API token (pushover.net → your"
    " application)",
    "user": "user_key was refused: copy the user key (pushover.net, top right) or a delivery"
    " group's key",
}
_HINTS = {
    "device": "no device of that name: check device (pushover.net → your devices)",
    "sound": "no sound of that name: check sound (or a custom sound's name)",
}


class PushoverSettings(ChannelSettings):
    token: Token  # the application's API token: 30 letters and digits
    user_key: Token  # a user key or a delivery group's key: 30 letters and digits
    device: str | None = None  # device names, comma-separated: only these get the message
    sound: str | None = None  # a sound of Pushover's (or a custom one): the device's otherwise
    priority: int = Field(default=1, ge=-2, le=2)
    retry: PositiveDuration = 60.0  # an emergency's repeats: this often...
    expire: PositiveDuration = 3600.0  # ...for this long, until acknowledged
    ttl: PositiveDuration | None = None  # the message is deleted from the devices after it
    api_url: str = "https://api.pushover.net"
    # Pushover asks for at most 2 requests at once
    concurrency: int = Field(default=2, ge=1, le=256)

    @field_validator("token", "user_key")
    @classmethod
    def _key(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        # Pushover answers any other 400 "application token is invalid" / "user identifier is
        # invalid": every page would be dead, so the file is refused instead
        if not _KEY.fullmatch(value.get_secret_value()):
            what = (
                "the application's API token"
                if info.field_name == "token"
                else "a user or group key"
            )
            raise ValueError(f"{info.field_name} must be {what}: 30 letters and digits")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names or not all(_DEVICE.fullmatch(name) for name in names):
            raise ValueError(
                "device must be device names, comma-separated: each up to 25 letters, digits,"
                " _ and -"
            )
        return ",".join(names)

    @field_validator("sound")
    @classmethod
    def _sound(cls, value: str | None) -> str | None:
        if value is not None and not _SOUND.fullmatch(value):
            raise ValueError("sound must be a sound's name: letters, digits, _ and -")
        return value

    @field_validator("retry", "expire")
    @classmethod
    def _seconds(cls, value: float, info: ValidationInfo) -> float:
        if info.field_name == "retry" and value < MIN_RETRY_S:
            raise ValueError(f"retry must be at least {MIN_RETRY_S}s (Pushover's least)")
        if value > MAX_EXPIRE_S:
            raise ValueError(f"{info.field_name} must be at most 3h (Pushover's most)")
        return value

    @model_validator(mode="after")
    def _retry_within_expire(self) -> PushoverSettings:
        if self.retry > self.expire:
            raise ValueError("retry must not be longer than expire: it would never repeat")
        return self

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        # the whole endpoint, as Pushover's documentation writes it, names its base: relay adds
        # /1/messages.json (and /1/receipts/…) itself
        return api_base(value, _ENDPOINT)


def _text(value: Any, limit: int) -> str | None:
    """A plain-text field: one line, control characters as spaces, within `limit`."""
    if not isinstance(value, str):
        return None
    text = " ".join(CONTROL_CHARS.sub(" ", value).split())
    return truncate_chars(text, limit) if text else None


def _priority(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and -2 <= value <= 2
    return value if ok else None


def pushover_message(rendered: str, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """The message fields of a rendered `json` part within Pushover's limits (`default_text`
    when it shows nothing), and what was changed, in words. Without the keys of its delivery
    (token, user, device) nor the channel's priority."""
    return pushover_message_of(parsed_part(rendered, "message"), default_text)


def pushover_message_of(value: Any, default_text: str) -> tuple[dict[str, Any], list[str]]:
    """pushover_message, of the rendered part already parsed."""
    if not isinstance(value, dict):
        value = {"message": str(value)}
    raw = value.get("message")
    if not isinstance(raw, str) and isinstance(value.get("text"), str):  # the plain fallback's
        raw = _escape(value["text"])
    text, cut = pushover_html(raw) if isinstance(raw, str) else ("", False)
    if not text:
        text, _ = pushover_html(_escape(default_text))
    fields: dict[str, Any] = {"message": text, "html": 1}
    if title := _text(value.get("title"), MAX_TITLE):
        fields["title"] = title
    url = http_url(value.get("url") or value.get("dashboardUrl"))
    if url is not None and len(url) <= MAX_URL and not any(c.isspace() for c in url):
        fields["url"] = url
        if url_title := _text(value.get("url_title"), MAX_URL_TITLE):
            fields["url_title"] = url_title
    if (priority := _priority(value.get("priority"))) is not None:
        fields["priority"] = priority
    sound = value.get("sound")
    if isinstance(sound, str) and _SOUND.fullmatch(sound):
        fields["sound"] = sound
    stamp = value.get("timestamp")
    if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp < 1 << 40:
        fields["timestamp"] = stamp
    return fields, ([f"message cut to Pushover's {MAX_MESSAGE} characters"] if cut else [])


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# the message sent for one, but for the keys of its delivery (token, user, device, the
# channel's priority): the send's and `relay test`'s
as_sent = sent_and_told(pushover_message)


def _errors(data: dict[str, Any], secrets: tuple[str, ...]) -> str:
    """Pushover's `errors`, its secrets redacted, on one line."""
    found = [e for e in data.get("errors") or () if isinstance(e, str) and e.strip()][:3]
    return "; ".join(quoted(e, secrets, 200) for e in found)


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _quota(response: HttpResponse, now: float) -> tuple[float | None, str]:
    """A 429's wait (Retry-After, else until X-Limit-App-Reset, at most QUOTA_WAIT_S) and what
    to say of the quota."""
    headers = response.headers
    wait = parse_retry_after(headers.get("Retry-After"), now)
    limit, reset = headers.get("X-Limit-App-Limit", ""), headers.get("X-Limit-App-Reset", "")
    said = "over the monthly message quota" + (f" ({limit})" if limit.isdigit() else "")
    if reset.isdigit() and int(reset) > now:
        said += f", reset {_when(int(reset))}"
        if wait is None:
            wait = min(int(reset) - now, QUOTA_WAIT_S)
    return wait, said + ": upgrade it (pushover.net → your application) or wait"


def classify(
    response: HttpResponse, secrets: tuple[str, ...] = (), now: float | None = None
) -> DeliveryError:
    """The DeliveryError for an answer of Pushover's that is not {"status": 1}; never quotes
    the token or the user key. A 2xx answer with status 0 is classified as a 400."""
    data = json_object(response.body)
    status = response.status
    if 200 <= status < 300:
        if data is None:
            return DeliveryError("other", retryable=True, detail="Pushover answered without JSON")
        status = 400
    data = data or {}
    base = classify_status(replace(response, status=status))
    assert base is not None
    errors = _errors(data, secrets)
    request = data.get("request")
    known = isinstance(request, str) and _REQUEST.fullmatch(request)
    asked = f", request {request}" if known else ""
    detail = f"{errors} (HTTP {status}{asked})" if errors else f"HTTP {status}{asked}"
    reason, retry_after = base.reason, base.retry_after
    if status == 429:
        retry_after, said = _quota(response, time.time() if now is None else now)
        detail += f": {said}"
    elif base.reason == "server_error":
        retry_after = max(retry_after or 0.0, SERVER_WAIT_S)
    elif 400 <= status < 500:
        bad = [key for key in ("token", "user") if data.get(key) == "invalid"]
        if bad:
            reason = "auth_error"
            detail += f": {_AUTH_HINTS[bad[0]]}"
        elif hint := next((h for k, h in _HINTS.items() if data.get(k) == "invalid"), None):
            detail += f": {hint}"
    return DeliveryError(
        reason, retryable=base.retryable, detail=detail, retry_after=retry_after, status=status
    )


def receipt_of(receipt: str | None) -> str | None:
    """The emergency's receipt kept for a sent message; None if none."""
    value = json_object(receipt)
    found = value.get("receipt") if value is not None else None
    return found if isinstance(found, str) and _RECEIPT.fullmatch(found) else None


class PushoverChannel(HttpChannel[PushoverSettings]):
    settings_model = PushoverSettings

    def _secrets(self) -> tuple[str, ...]:
        return (self.settings.token.get_secret_value(), self.settings.user_key.get_secret_value())

    def body(self, message: Outgoing) -> dict[str, Any]:
        """The request's JSON for `message`, but for token and user."""
        fields, _ = as_sent(message)
        settings = self.settings
        priority = fields.pop("priority", settings.priority)
        if message.recovers is not None:
            priority = min(priority, 1)  # a recovery needs no acknowledgement
        body: dict[str, Any] = {**fields, "priority": priority}
        if priority == 2:
            body |= {"retry": round(settings.retry), "expire": round(settings.expire)}
        elif settings.ttl is not None:  # Pushover keeps an emergency until acknowledged
            body["ttl"] = max(1, round(settings.ttl))
        if settings.sound is not None and "sound" not in body:
            body["sound"] = settings.sound
        if settings.device is not None:
            body["device"] = settings.device
        return body

    async def send(self, message: Outgoing) -> str | None:
        """Cancel the alert's repeats (a recovery of an emergency), then send; the receipt of
        an emergency."""
        alert = receipt_of(message.recovers.receipt) if message.recovers is not None else None
        if alert is not None:
            await self._cancel(alert, message)
        token, user = self._secrets()
        body = {"token": token, "user": user, **self.body(message)}
        answer = await self._post("/1/messages.json", body, message)
        receipt = answer.get("receipt")
        if isinstance(receipt, str) and _RECEIPT.fullmatch(receipt):
            return orjson.dumps({"receipt": receipt}).decode()
        return None

    async def _cancel(self, receipt: str, message: Outgoing) -> None:
        """Stop an emergency's repeats. Pushover no longer knowing the receipt (expired,
        acknowledged and gone) leaves nothing to stop; a refused token is the send's failure."""
        token = self.settings.token.get_secret_value()
        try:
            await self._post(f"/1/receipts/{receipt}/cancel.json", {"token": token}, message)
        except DeliveryError as err:
            if err.retryable or err.reason == "auth_error":
                raise
            extra = {**message.log_fields(self.name), "error": err.detail}
            log.info("pushover emergency not cancelled; sending the recovery", extra=extra)

    async def _post(self, path: str, body: dict[str, Any], message: Outgoing) -> dict[str, Any]:
        """POST once; Pushover's answer, or raise the classified error."""
        headers = {"Content-Type": "application/json", ID_HEADER: message.notification_id}
        response = await self._http.request(
            "POST", self.settings.api_url + path, orjson.dumps(body), headers, self._timeout_s
        )
        answer = json_object(response.body)
        if 200 <= response.status < 300 and answer is not None and answer.get("status") == 1:
            return answer
        raise classify(response, self._secrets())


KIND = ChannelKind(
    "pushover",
    PushoverSettings,
    PushoverChannel,
    ("json",),
    says_nothing_when(pushover_message_of),
    as_sent,
)
