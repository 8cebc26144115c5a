"""The body of a Realtime answer as Electric's messages (TRIGGER.md §2.2), and what an answer
lacks that Electric always sends; ShapeError for one that breaks the protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relay.formats.packets import MAX_DEPTH, capped


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
    return capped(orjson.loads(text), text, limit)


REQUIRED = ("electric-handle", "electric-offset")
