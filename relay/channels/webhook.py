"""`webhook`: POST the rendered JSON to any URL, with Standard Webhooks headers.

Every request carries `webhook-id` (the notification's stable idempotency id) and
`webhook-timestamp`; with a `secret` (whsec_<base64>) it also carries `webhook-signature`
= "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), per standardwebhooks.com.
`secret` may be a list (a rotation): one such signature per secret, separated by spaces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from relay.channels import (
    ChannelEnv,
    ChannelKind,
    HttpChannel,
    Outgoing,
    json_headers,
)
from relay.channels._tls import TlsSettings, client_context
from relay.config import ChannelSettings
from relay.config_base import header_value_problem, url_problem
from relay.filters import http_url
from relay.sizes import Size

# relay's own (the body's type, the Standard Webhooks headers) and the framing the HTTP client
# owns: a Transfer-Encoding or Content-Encoding of the user's lied about the body, and each
# receiver answered 400 (a dead letter); Connection and its kin (RFC 9110 §7.6.1) are per hop
_RESERVED = frozenset(
    (
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    )
)
# RFC 9110 §5.6.2 token: a name with other characters (é, parentheses, a tab) is sent, and
# every receiver answers 400, so each notification went dead
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(name: str) -> str:
    if name.lower() in _RESERVED or name.lower().startswith("webhook-"):
        raise ValueError(f"header {name} is set by relay")
    if not _TOKEN.fullmatch(name):
        raise ValueError(
            "header names are letters, digits and !#$%&'*+-.^_`|~ (no spaces, colons or others)"
        )
    return name


def _header_value(value: SecretStr) -> SecretStr:
    if (problem := header_value_problem(value.get_secret_value())) is not None:
        raise ValueError(f"header values {problem}")
    return value


Secrets = SecretStr | list[SecretStr] | None


def secrets_of(value: Secrets) -> list[SecretStr]:
    return [] if value is None else value if isinstance(value, list) else [value]


# checked key by key, so that every refused name is reported at its own line, not the first
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[SecretStr, AfterValidator(_header_value)]


class WebhookSettings(ChannelSettings):
    url: SecretStr
    headers: dict[HeaderName, HeaderValue] = {}
    # a list signs with each (rotation): the receiver accepts any one of the signatures
    secret: Secrets = None
    # a receiver across the internet answers in 50-300 ms: at 4 in flight (the other types'
    # default, where Slack, Discord, Teams, PagerDuty and SMTP servers limit senders) a storm of
    # alerts would queue for minutes; Alertmanager has no limit at all
    concurrency: int = Field(default=16, ge=1, le=256)
    # the largest body the receiver takes (nginx's client_max_body_size defaults to 1 MiB,
    # Express's JSON body-parser to 100 kB): the shipped digest lists as many runs as fit it, as
    # a 413 would send the whole digest to the dead letters; up to 3 MiB, within a render's cap
    max_body_bytes: Size = Field(default=1024 * 1024, ge=16 * 1024, le=3 * 1024 * 1024)
    # a receiver's own CA, relay's client certificate (relay.channels._tls)
    tls: TlsSettings | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if http_url(text) is None or len(text) < 10:
            raise ValueError("url must be an http:// or https:// URL")
        if (problem := url_problem(text)) is not None:  # else every send fails: invalid URL
            raise ValueError(f"url {problem}")
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> WebhookSettings:
        """A user:password in the URL is sent as Basic auth: it cannot go with that header too."""
        has_header = any(name.lower() == "authorization" for name in self.headers)
        if has_header and urlsplit(self.url.get_secret_value()).username is not None:
            raise ValueError("url carries a user:password and headers an Authorization: keep one")
        return self

    @field_validator("secret", mode="before")
    @classmethod
    def _shape(cls, value: object) -> object:
        """One problem for a number or a mapping, not one per member of the union. A blank
        string is no secret (unsigned), as `${PAGER_SECRET:-}` unset means, like auth_token's."""
        if isinstance(value, str) and not value.strip():
            return None
        strings = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(s, str | SecretStr) for s in strings):
            raise ValueError("secret must be a whsec_ string, or a list of them")
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: Secrets) -> Secrets:
        if value == []:
            raise ValueError("secret: give one whsec_ secret, or a list of at least one")
        for one in secrets_of(value):
            signing_key(one.get_secret_value())
        return value


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (whsec_ prefix optional, base64, its `=`
    padding optional: the reference libraries add it, and a receiver may hand out a secret
    encoded without, as Go's RawStdEncoding does)."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("secret must decode to at least 16 bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookChannel(HttpChannel[WebhookSettings]):
    settings_model = WebhookSettings

    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        super().__init__(name, settings, env)
        self._keys = [signing_key(s.get_secret_value()) for s in secrets_of(self.settings.secret)]
        self._tls = client_context(self.settings.tls)

    def _headers(self, message: Outgoing, body: bytes) -> dict[str, str]:
        timestamp = int(message.timestamp)
        headers = {k: v.get_secret_value() for k, v in self.settings.headers.items()}
        headers.update(json_headers(message))
        headers["webhook-timestamp"] = str(timestamp)
        if self._keys:  # several: space-separated, as Standard Webhooks has for rotation
            signatures = (sign(k, message.notification_id, timestamp, body) for k in self._keys)
            headers["webhook-signature"] = " ".join(signatures)
        return headers

    async def send(self, message: Outgoing) -> None:
        body = message.parts["json"].encode()
        url = self.settings.url.get_secret_value()
        await self._http.post(url, body, self._headers(message, body), self._timeout_s, self._tls)


KIND = ChannelKind("webhook", WebhookSettings, WebhookChannel, ("json",))
