"""Trigger.dev IO packets: payload/output/metadata by their data type (ioSerialization.ts).

application/json → parsed; application/super+json → its `json` part (Dates stay ISO strings);
text/plain → the string; application/store → an offloaded marker, never fetched; unknown → raw.
"""

from __future__ import annotations

from typing import Any

import orjson

OFFLOADED = "application/store"


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
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        return unwrap_superjson(value) if data_type == "application/super+json" else value
    return data


def unwrap_superjson(value: Any) -> Any:
    if isinstance(value, dict) and "json" in value and set(value) <= {"json", "meta"}:
        return value["json"]
    return value
