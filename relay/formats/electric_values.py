"""The values of a TaskRun row as Electric sends them (Postgres text, TRIGGER.md §2.3) → typed
values, by the shape's `electric-schema`; columns it does not describe by the known TaskRun column
types (`TASKRUN_SCHEMA`, TRIGGER.md §1.2). Values already typed pass through: decoding is
idempotent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from relay.formats.packets import loads_shallow
from relay.formats.pg_array import PG_SPACE, parse_pg_array
from relay.run_values import from_iso

Schema = Mapping[str, Mapping[str, Any]]

_TS = {"type": "timestamp"}
_TEXT = {"type": "text"}
# The column types of the TaskRun shape (Electric's `electric-schema`, TRIGGER.md §1.2).
TASKRUN_SCHEMA: dict[str, dict[str, Any]] = {
    "id": _TEXT,
    "friendlyId": _TEXT,
    "taskIdentifier": _TEXT,
    "status": {"type": "TaskRunStatus"},
    "createdAt": _TS,
    "updatedAt": _TS,
    "startedAt": _TS,
    "delayUntil": _TS,
    "queuedAt": _TS,
    "expiredAt": _TS,
    "completedAt": _TS,
    "number": {"type": "int4"},
    "isTest": {"type": "bool"},
    "usageDurationMs": {"type": "int4"},
    "costInCents": {"type": "float8"},
    "baseCostInCents": {"type": "float8"},
    "ttl": _TEXT,
    "payload": _TEXT,
    "payloadType": _TEXT,
    "metadata": _TEXT,
    "metadataType": _TEXT,
    "output": _TEXT,
    "outputType": _TEXT,
    "runTags": {"type": "text", "dims": 1},
    "error": {"type": "jsonb"},
    "realtimeStreams": {"type": "text", "dims": 1},
}


def decode_row(row: Mapping[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """Typed values for a row of wire text (or of values already typed), by column type."""
    decoders = _row_decoders(schema)
    out = {}
    for name, value in row.items():
        decode = decoders.get(name)
        out[name] = value if decode is None or value is None else decode(value)
    return out


Decoder = Callable[[Any], Any]
_last: list[tuple[Schema, dict[str, Decoder | None]]] = []  # a stream keeps one schema object


def _row_decoders(schema: Schema | None) -> Mapping[str, Decoder | None]:
    if not schema:
        return _DEFAULT_DECODERS
    if _last and _last[0][0] is schema:
        return _last[0][1]
    decoders = dict(_DEFAULT_DECODERS)
    for name, column in schema.items():
        if isinstance(column, Mapping):
            decoders[name] = _column_decoder(column)
    _last[:] = [(schema, decoders)]
    return decoders


def _column_decoder(column: Mapping[str, Any]) -> Decoder | None:
    scalar = _DECODERS.get(str(column.get("type", "text")))  # None: text, enums stay strings
    if column.get("dims"):
        return partial(_array_value, None if scalar is None else partial(_kept, scalar))
    return None if scalar is None else partial(_kept, scalar)


def _kept(decode: Decoder, value: Any) -> Any:
    """`decode(value)`, or the value as it is when it does not parse."""
    try:
        return decode(value)
    except ValueError:  # orjson.JSONDecodeError is a ValueError too
        return value


def _array_value(decode: Decoder | None, value: Any) -> Any:
    items = _kept(_array_text, value) if isinstance(value, str) else value
    if decode is None or not isinstance(items, list):
        return items
    return _each(items, decode)


def _array_text(text: str) -> list[Any]:
    """A Postgres array literal, or a JSON array where there is none (a server writing arrays
    as JSON): `["a","b"]` is never a valid literal, so no literal reads differently."""
    try:
        return parse_pg_array(text)
    except ValueError:
        items = orjson.loads(text) if text.lstrip(PG_SPACE).startswith("[") else None
        if isinstance(items, list):
            return items
        raise


def _each(items: list[Any], decode: Decoder) -> list[Any]:
    return [
        _each(item, decode) if isinstance(item, list) else None if item is None else decode(item)
        for item in items
    ]


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, str) else value


def _float(value: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if isinstance(value, str) or number else value


def _bool(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return {"t": True, "true": True, "f": False, "false": False}.get(value.lower(), value)


def _json(value: Any) -> Any:
    return loads_shallow(value) if isinstance(value, str) else value


def _timestamp(value: Any) -> Any:
    return parse_timestamp(value) if isinstance(value, str) else value


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int2": _int,
    "int4": _int,
    "int8": _int,
    "float4": _float,
    "float8": _float,
    "bool": _bool,
    "json": _json,
    "jsonb": _json,
    "timestamp": _timestamp,
    "timestamptz": _timestamp,
}
_DEFAULT_DECODERS = {name: _column_decoder(column) for name, column in TASKRUN_SCHEMA.items()}


def parse_timestamp(text: str) -> datetime:
    """Postgres `2026-08-20 09:14:22.46`, native `2026-06-06T10:05:30.123`: no zone means UTC."""
    text = text.strip()
    if text == "infinity":
        return datetime.max.replace(tzinfo=UTC)
    if text == "-infinity":
        return datetime.min.replace(tzinfo=UTC)
    return from_iso(text)
