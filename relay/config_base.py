"""What every part of the configuration's schema builds on: `Strict`, the frozen model whose
unknown keys are refused, and the checks of single values an HTTP client sends as written
(header values, URLs with their host, tokens and secrets).
"""

from __future__ import annotations

import ipaddress
import re
import typing
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr
from pydantic.fields import FieldInfo


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def field_metadata(info: FieldInfo) -> list[Any]:
    """`info`'s constraints, and those of the Annotated type of an optional field
    (`PositiveDuration | None`), which pydantic leaves in the annotation."""
    found = list(info.metadata)
    for member in typing.get_args(info.annotation):
        if typing.get_origin(member) is typing.Annotated:
            found += list(member.__metadata__)
    return found


# what aiohttp refuses in a header value at every send (RFC 9110 §5.5): controls but the tab
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # C0 and DEL: in no name, subject or one-liner


def header_value_problem(text: str) -> str | None:
    """Why `text` cannot be sent as an HTTP header value (a token, a webhook header), or None:
    the HTTP client refuses it at every send (header injection), a traceback each time."""
    if "\r" in text or "\n" in text:
        return "cannot contain line breaks"
    if _HEADER_CONTROL.search(text):
        return "cannot contain control characters (but tab)"
    return None


_HOST_REFUSED = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`]")  # no client can send these in a host


def url_problem(url: str) -> str | None:
    """Why no request can be made of `url` (an http(s) URL), or None. Python's own words are
    not repeated: they quote the [bracketed] part, perhaps a piece of a user:password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number or out of range
        return "has no valid host and port"
    if not host or port == 0 or not _usable_host(host):
        return "has no valid host and port"
    return None


def _usable_host(host: str) -> bool:
    """A name of labels of 1 to 63 characters (DNS's, and what IDNA encodes) without spaces or
    delimiters, or an IPv6 literal."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return all(0 < len(label) <= 63 for label in labels) and _HOST_REFUSED.search(host) is None


def _bare_token(value: Any) -> Any:
    """A token or secret as issued: one read from a file (a Kubernetes or Docker secret) often
    ends with a newline, which no client sends (HTTP trims header values) and the HTTP client
    refuses to send; like Prometheus, relay trims it. A control character inside is refused."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if (problem := header_value_problem(value)) is not None:
        raise ValueError(problem)
    return value


Token = Annotated[SecretStr, BeforeValidator(_bare_token)]  # bearer tokens, signing secrets
