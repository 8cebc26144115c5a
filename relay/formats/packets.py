"""Trigger.dev IO packets: payload/output/metadata by their data type (ioSerialization.ts).

application/json → parsed; application/super+json → its `json` part (Dates stay ISO strings);
text/plain → the string; application/store → an offloaded marker, never fetched; unknown → raw.
"""

from __future__ import annotations

from typing import Any

import orjson

OFFLOADED = "application/store"
# JSON nested deeper than this is cut in a request body (cap_depth), and a packet or column that
# decodes deeper is kept as its text: real run data is shallow, and deep values would exhaust
# the serialiser (pydantic's depth limit) or a template's recursion long after the 202.
MAX_DEPTH = 64


def few_brackets(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON `text` has at most `limit` opening brackets, so that what it decodes to
    cannot be too_deep: each level opens with one (a bracket inside a string only counts one
    more). Counting is a C loop over the text, much cheaper than walking the decoded value."""
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[") <= limit
    return text.count("{") + text.count("[") <= limit


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests lists/dicts more than `limit` levels (iterative: no recursion)."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


DEEPER = f"(nested deeper than {MAX_DEPTH} levels)"


def cap_depth(value: Any, limit: int = MAX_DEPTH) -> Any:
    """`value` with each list or dict past `limit` levels replaced by the text DEEPER, so a
    run whose payload or metadata nests absurdly deep still alerts (recursion: `limit` deep
    at most)."""
    if not isinstance(value, dict | list):
        return value
    if limit < 0:
        return DEEPER
    if isinstance(value, dict):
        return {key: cap_depth(item, limit - 1) for key, item in value.items()}
    return [cap_depth(item, limit - 1) for item in value]


def capped(data: Any, text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """`data` read from the JSON `text`, cut past `limit` levels (cap_depth) if it nests deeper.
    orjson reads 1,024 levels but writes only 255: what relay stores must be cut first."""
    if few_brackets(text, limit) or not too_deep(data, limit):
        return data
    return cap_depth(data, limit)


def loads_shallow(text: str | bytes) -> Any:
    """orjson.loads, but a ValueError for a document nested deeper than MAX_DEPTH."""
    value = orjson.loads(text)
    if not few_brackets(text) and too_deep(value):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def offloaded(path: str) -> dict[str, Any]:
    """How an offloaded packet (>= 128 KiB, kept in object storage) is shown."""
    return {"offloaded": True, "path": path, "dataType": OFFLOADED}


def decode_packet(data: Any, data_type: str | None) -> Any:
    """The value a packet stands for; never raises (a bad packet is kept as its raw text)."""
    if data is None:
        return None
    if data_type == OFFLOADED:
        return offloaded(data if isinstance(data, str) else str(data))
    if not isinstance(data, str):
        return unwrap_superjson(data) if data_type == "application/super+json" else data
    if data_type in (None, "application/json", "application/super+json"):
        try:
            value = loads_shallow(data)
        except ValueError:  # not JSON, or too deep: kept as the text it came as
            return data
        return unwrap_superjson(value) if data_type == "application/super+json" else value
    return data


def unwrap_superjson(value: Any) -> Any:
    """superjson's `json` part. Its version mark (TRIGGER.md 1.4: `"v"`, from superjson 2.2.3)
    is read inside `meta`, where superjson writes it, and beside it as well."""
    if isinstance(value, dict) and "json" in value and set(value) <= {"json", "meta", "v"}:
        return value["json"]
    return value
