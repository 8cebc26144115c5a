"""Filters a template author expects: money, durations, truncation, JSON, stack traces, Slack text.

Registered in every template and `when:` expression (relay/sandbox.py):

    money           cents → "$1.50"                  duration      ms → "14.9s", "1h 2m"
    truncate_chars  at most N characters, "…" kept   tojson        compact JSON (indent=True)
    stack           trace without node:internal      status_emoji  🔴 failures, ✅ COMPLETED
    mrkdwn          Slack mrkdwn text: &, <, > escaped (so run data cannot ping @channel or
                    forge <links>); mrkdwn(N) also cuts to N characters, never inside an entity
    web_url         the value if it is an absolute http(s) URL a link can take, else None
    fingerprint     16 hex digits naming a value (Alertmanager's alert `fingerprint`)
"""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
import unicodedata
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from jinja2 import Undefined

from relay.statuses import FAILURE_STATUSES


def as_text(value: Any) -> str:
    return "" if value is None or isinstance(value, Undefined) else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # an int past a float's range is no amount either
        return None
    return number if math.isfinite(number) else None


# Past these, an amount or a duration is written in 3 significant digits (1.23e+15): in full,
# 1e300 cents took 400 characters, no reader's number.
_MAX_DOLLARS = 1e15
_MAX_DAYS = 1e6


def money(cents: Any) -> str:
    """Cents → dollars: 150 → $1.50; below a cent up to 4 decimals: 0.05027 → $0.0005; from
    a quadrillion dollars, 3 significant digits: $1.23e+15."""
    value = _number(cents)
    if value is None:
        return ""
    sign, dollars = ("-" if value < 0 else ""), abs(value) / 100
    if dollars >= _MAX_DOLLARS:
        return f"{sign}${dollars:.3g}"
    if dollars == 0 or dollars >= 0.01:
        return f"{sign}${dollars:,.2f}"
    text = f"{dollars:.4f}"
    return f"{sign}<$0.0001" if float(text) == 0 else f"{sign}${text.rstrip('0')}"


def duration(ms: Any) -> str:
    """Milliseconds → 950ms, 14.9s, 1m 1s, 1h 2m, 1d 1h; from a million days, 3 significant
    digits: 1.16e+06d."""
    value = _number(ms)
    if value is None:
        return ""
    sign, value = ("-" if round(value) < 0 else ""), abs(value)
    if value / 86_400_000 >= _MAX_DAYS:
        return f"{sign}{value / 86_400_000:.3g}d"
    if round(value) < 1000:
        return f"{sign}{round(value)}ms"
    tenths = round(value / 100)
    if tenths < 600:
        return f"{sign}{f'{tenths / 10:.1f}'.removesuffix('.0')}s"
    seconds = max(int(value // 1000), 60)
    for size, unit, minor_size, minor_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m")):
        if seconds >= size:
            major, rest = divmod(seconds, size)
            minor = rest // minor_size
            return f"{sign}{major}{unit}" + (f" {minor}{minor_unit}" if minor else "")
    minutes, rest = divmod(seconds, 60)
    return f"{sign}{minutes}m" + (f" {rest}s" if rest else "")


def truncate_chars(value: Any, length: int, end: str = "…") -> str:
    """At most `length` characters, the end marker included; the cut never splits what a
    reader sees as one character (an accent from its letter, an emoji sequence, a flag)."""
    text, length = as_text(value), max(int(length), 0)
    if len(text) <= length:
        return text
    if len(end) >= length:
        return end[:length]
    return text[: _cluster_start(text, length - len(end))].rstrip() + end


_ZWJ = "\u200d"
_MAX_CLUSTER = 32  # code points looked back for the start of a character; longer: cut as is


def _cluster_start(text: str, cut: int) -> int:
    """`cut`, moved back to the start of the user-perceived character it would split."""
    start = cut
    while start > 0 and cut - start < _MAX_CLUSTER and _continues(text, start):
        start -= 1
    return start if cut - start < _MAX_CLUSTER else cut


def _continues(text: str, i: int) -> bool:
    """Whether text[i] belongs to the same character as text[i - 1]: a combining mark or
    variation selector, a zero-width joiner or what it joins, an emoji modifier or tag, the
    second regional indicator of a flag."""
    before, after = text[i - 1], text[i]
    if _regional(before) and _regional(after):
        first = i - 1
        while first > 0 and _regional(text[first - 1]):
            first -= 1
        return (i - first) % 2 == 1  # an odd number before: `after` completes a pair
    code = ord(after)
    return (
        _ZWJ in (before, after)
        or unicodedata.category(after) in ("Mn", "Mc", "Me")
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags)
    )


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, Iterator | KeysView | ValuesView | ItemsView):  # map(), select(),
        return list(value)  # a dict's items(): their items, not "<generator object ...>"
    return None if isinstance(value, Undefined) else str(value)


_COMPACT = orjson.OPT_NON_STR_KEYS
_INDENTED = orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2


def tojson(value: Any, indent: int | None = None) -> str:
    """Compact JSON (orjson); `indent` (any truthy value) gives two-space indentation. (Not
    json_bytes(...).decode(): a call less in every value of a webhook body.)"""
    option = _INDENTED if indent else _COMPACT
    return orjson.dumps(value, default=_json_default, option=option).decode()


def json_bytes(value: Any, indent: int | None = None) -> bytes:
    """tojson's UTF-8 bytes, undecoded: measuring a large value this way costs a third."""
    return orjson.dumps(value, default=_json_default, option=_INDENTED if indent else _COMPACT)


def stack(value: Any, max_lines: int = 12, frames_only: bool = False) -> str:
    """Stack without node:internal frames, cut to max_lines (+ "… N more lines"); frames_only
    drops the leading message lines when the trace has `at ...` frames."""
    lines = [
        line.rstrip()
        for line in as_text(value).splitlines()
        if line.strip() and "node:internal" not in line
    ]
    if frames_only:
        first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("at ")), 0)
        lines = lines[first:]
    keep = max(int(max_lines), 0)
    kept = textwrap.dedent("\n".join(lines[:keep])).splitlines()
    if len(lines) > keep:
        kept.append(f"… {len(lines) - keep} more lines")
    return "\n".join(kept)


# an error-group alert's classification (its `status`), as its own messages label it
_CLASSIFICATION_EMOJI = {"NEW_ISSUE": "🚨", "REGRESSION": "⚠️", "UNIGNORED": "🔔"}


def status_emoji(status: Any) -> str:
    """🔴 for failures, ✅ for a completed run or a deployment that went out (DEPLOYED), an
    error group's classification as its messages label it (🚨 NEW_ISSUE, ⚠️ REGRESSION,
    🔔 UNIGNORED), ⚠️ for anything else."""
    if status in FAILURE_STATUSES:
        return "🔴"
    if isinstance(status, str) and status in _CLASSIFICATION_EMOJI:
        return _CLASSIFICATION_EMOJI[status]
    return "✅" if status in ("COMPLETED", "DEPLOYED") else "⚠️"


# Longer is no dashboard link (Trigger.dev's are ~100 characters): Slack takes 3000 in a
# button, Discord's embeds and many mail clients less.
MAX_URL_CHARS = 2000
# the scheme and host (no space, nor what no host holds), then the path, query and fragment
_WEB_URL = re.compile(
    r"(https?://[^\s/?#\\<>|\"{}^`]+)((?:[/?#][^\\]*)?)", re.IGNORECASE | re.ASCII
)
# what a URL carries as it is (RFC 3986's reserved and unreserved characters, `%` escapes):
# anything else is percent-encoded (a space, <, >, |, ", {, }, ^, `, non-ASCII)
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]_~"
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def web_url(value: Any) -> str | None:
    """`value` trimmed if it is an absolute http(s) URL with a host, no control character in
    it, at most MAX_URL_CHARS long: what a link or a button can be, its scheme in lower case
    (`HTTPS://` is https, RFC 3986), and after its host what a URL may not carry
    percent-encoded (a space, <, >, |, a lone %): a `|` or `>` broke a Slack `<url|text>`
    link, and Slack refused the button (invalid_blocks, the alert dead). Else None
    (`javascript:…`, `ftp://…`, a relative path, `http://@/x` and other URLs without a host,
    something that is not text)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if len(url) > MAX_URL_CHARS or not url.isprintable():
        return None
    found = _WEB_URL.fullmatch(url)
    if found is None or not _has_host(found.group(1)):
        return None
    url = found.group(1) + _BARE_PERCENT.sub("%25", quote(found.group(2), safe=_URL_SAFE))
    return http_url(url) if len(url) <= MAX_URL_CHARS else None


def _has_host(url: str) -> bool:
    """Whether `url` names a host: `http://@/x`, `http://:80/x` name none; `http://[]/` and a
    port that is no number are no URL at all."""
    try:
        parts = urlsplit(url)
        return bool(parts.hostname) and (parts.port is None or parts.port >= 0)
    except ValueError:
        return False


def fingerprint(value: Any) -> str:
    """16 hex digits (64 bits, as an Alertmanager alert's `fingerprint`) that name `value`, the
    same for the same value in every render and process: `[rule, run.id]|fingerprint`."""
    data = orjson.dumps(value, default=as_text, option=orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def http_url(value: Any) -> str | None:
    """`value` if it is text starting with http:// or https://, the scheme in any case (RFC
    3986: `HTTPS://` is https) and given back in lower case, as every receiver reads it; else
    None. The one place relay tests a URL's scheme."""
    if not isinstance(value, str) or not value[:8].lower().startswith(_HTTP_SCHEMES):
        return None
    scheme, sep, rest = value.partition("://")
    return scheme.lower() + sep + rest


_HTTP_SCHEMES = ("http://", "https://")


def mrkdwn(value: Any, limit: int | None = None) -> str:
    """Text for Slack mrkdwn: &, <, > become &amp; &lt; &gt; (Slack's three control characters),
    so run data cannot ping @channel, mention users or forge <url|links>. With `limit`, the
    escaped text is cut to at most `limit` characters ("…" included) without leaving half an
    entity ("&l…") behind. None and undefined values give ""."""
    text = as_text(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if limit is None:
        return text
    cut = truncate_chars(text, limit)
    amp = cut.rfind("&")
    if cut != text and amp >= 0 and ";" not in cut[amp:]:
        return cut[:amp].rstrip() + "…"
    return cut
