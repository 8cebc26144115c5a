"""The body of a Realtime answer as Electric's messages (TRIGGER.md §2.2), and what an answer
lacks that Electric always sends; ShapeError for one that breaks the protocol.

A large body is parsed PIECE bytes of messages at a time: orjson takes about 13 times the text
it parses while it runs (its copy of the text and a pool of values sized from it), so a 64 MiB
answer (the most a feed reads) took ~820 MB at once, beside the body and the messages it
became: enough to have a container's memory limit kill relay. By pieces it takes ~13 MiB
beside them, and no longer: the value is the same (see _by_pieces).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from relay.formats.packets import MAX_DEPTH, capped

PIECE = 1024 * 1024
# Where one of Electric's messages ends and the next begins: `}`, `,`, then `{"key":` (or
# `"headers"`, `"value"`). Never inside a string: a `"` there would end it, and no `key":` can
# follow a string's end. Deeper than the array's own messages (none of Electric's nests one)
# the pieces cut there do not parse, and the body is parsed whole.
_BETWEEN = re.compile(rb'\}[ \t\n\r]*,[ \t\n\r]*(?=\{[ \t\n\r]*"(?:key|headers|value)"[ \t\n\r]*:)')


class ShapeError(Exception):
    """A response that breaks the protocol (a body that is not a JSON array of messages)."""


def check(message: dict[str, Any]) -> None:
    """ShapeError for a change message that cannot be applied (before any is)."""
    if "key" not in message or headers_of(message).get("operation") == "delete":
        return
    if not isinstance(message.get("value"), dict):
        operation = headers_of(message).get("operation")
        raise ShapeError(f"a change message without a value ({operation})")


def oddities(status: int, headers: Mapping[str, str], messages: list[dict[str, Any]]) -> list[str]:
    """What an answer lacks that Electric always sends (the answer is taken all the same)."""
    found = [] if status == 204 else [f"no {n} header" for n in REQUIRED if not headers.get(n)]
    strays = sum("key" not in m and "control" not in headers_of(m) for m in messages)
    if strays:
        found.append("messages neither a change (key) nor a control message, ignored")
    return found


def headers_of(message: dict[str, Any]) -> dict[str, Any]:
    headers = message.get("headers")
    return headers if isinstance(headers, dict) else {}


def read_messages(body: bytes) -> list[dict[str, Any]]:
    try:
        data = shallow(body, MAX_DEPTH + 2)  # a row as deep as a POSTed one: [{value: row}]
    except orjson.JSONDecodeError:
        raise ShapeError("the body is not JSON") from None
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise ShapeError("the body is not a JSON array of messages")
    return data


def shallow(text: str | bytes, limit: int) -> Any:
    """orjson.loads, cut past `limit` levels: the rows and the position are stored as JSON
    (one orjson could not write restarted the feed on the same answer for ever)."""
    return capped(_parsed(text), text, limit)


def _parsed(text: str | bytes) -> Any:
    """orjson.loads(text); a large body a piece at a time (its value, or its JSONDecodeError,
    whole when it cannot be cut so)."""
    if isinstance(text, str) or len(text) <= 2 * PIECE:
        return orjson.loads(text)
    try:
        return _by_pieces(text)
    except orjson.JSONDecodeError:
        return orjson.loads(text)


def _by_pieces(body: bytes) -> list[Any]:
    """A JSON array parsed PIECE bytes of messages at a time: cut after a message's `}`, the
    first piece is `[A, B}` + `]`, the next `[` + `{C, D}` + `]`, the last `[` + `{E}]`. Each
    parsed as an array, the body is one too, of their elements in turn (each cut at the array's
    own comma, else a piece's brackets would not pair: one does not parse)."""
    view, out, at = memoryview(body), [], 0
    while True:
        cut = _BETWEEN.search(body, at + PIECE)
        if cut is None:
            piece = b"".join((b"[" if at else b"", view[at:]))
        else:
            piece = b"".join((b"[" if at else b"", view[at : cut.start() + 1], b"]"))
        part = orjson.loads(piece)
        if not isinstance(part, list):
            raise orjson.JSONDecodeError("not an array", "", 0)
        out += part
        if cut is None:
            return out
        at = cut.end()


REQUIRED = ("electric-handle", "electric-offset")
