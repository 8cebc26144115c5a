"""Content codings of request bodies (RFC 9110 §8.4), undone by relay itself rather than by
aiohttp, so that an unsupported coding is a clear 415 and a corrupt body a 400 (aiohttp answers
the first with a plain-text 400, or ignores the coding, and the second with a 500), and so that
the size limit holds for the decoded body without decoding more than it.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from typing import Any

from relay.errors import InputError
from relay.formats import parse_body

ACCEPT_ENCODING = "gzip, deflate"  # what a 415 tells the client to use instead
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_WBITS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": zlib.MAX_WBITS}


class UnsupportedCoding(Exception):
    """A Content-Encoding relay cannot undo; the argument is the coding."""


class CorruptBody(Exception):
    """A body that is not what its Content-Encoding says (truncated, not gzip ...)."""


def codings(header: str) -> list[str]:
    """The codings of a Content-Encoding header to undo, in the order they were applied;
    UnsupportedCoding for one relay does not know (identity means none)."""
    found = [c.strip().lower() for c in header.split(",") if c.strip()]
    for coding in found:
        if coding != "identity" and coding not in _WBITS:
            raise UnsupportedCoding(coding[:40])
    return [c for c in found if c != "identity"]


def decode(body: bytes, applied: list[str], limit: int) -> bytes | None:
    """`body` with `applied` codings undone, last applied first; None when the result would be
    larger than `limit` (no more than limit + 1 bytes are ever inflated)."""
    for coding in reversed(applied):
        out = _undo(body, coding, limit)
        if out is None:
            return None
        body = out
    return body


MAX_GZIP_MEMBERS = 16  # each one more copies what follows it: 40,000 tiny ones took 5 s of CPU


def _undo(body: bytes, coding: str, limit: int) -> bytes | None:
    """One coding undone: each member of a gzip body in turn (RFC 1952 lets members follow one
    another, as `cat a.gz b.gz` makes; Python's and Go's gzip read them all), up to
    MAX_GZIP_MEMBERS; CorruptBody for bytes after the last that are not one (deflate's are
    ignored, as before)."""
    parts: list[bytes] = []
    size = 0
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(_wbits(coding, body))
        try:
            part = inflater.decompress(body, limit + 1 - size)
            if size + len(part) > limit or inflater.unconsumed_tail:
                return None
            part += inflater.flush()
        except zlib.error:
            raise CorruptBody(coding) from None
        size += len(part)
        if size > limit:
            return None
        if not inflater.eof:
            raise CorruptBody(coding)
        parts.append(part)
        body = inflater.unused_data
        if not body or coding == "deflate":
            return b"".join(parts)
    raise CorruptBody(f"{coding} of at most {MAX_GZIP_MEMBERS} members")


def _wbits(coding: str, body: bytes) -> int:
    if coding == "deflate" and body[:1] and body[0] & 0x0F != 8:
        return -zlib.MAX_WBITS  # raw deflate without the zlib header, as some clients send
    return _WBITS[coding]


def json_object(
    body: bytes, known: Collection[str], expected: str, unknown: str = "unknown field"
) -> dict[str, Any]:
    """`body` as a JSON object holding only `known` keys, else an InputError naming the field
    (`expected` says what the object should be, `unknown` what to do about a stray key)."""
    data = parse_body(body, expected.removeprefix("expected "))  # its reason if not JSON
    if not isinstance(data, dict):
        raise InputError("", expected)
    if stray := sorted(set(data) - set(known)):
        raise InputError(stray[0], unknown)
    return data
