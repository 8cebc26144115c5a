"""The raw Realtime row (Electric shape of `public."TaskRun"`) → Run.

Two steps. `decode_row` turns wire values (Postgres text, TRIGGER.md §2.3) into typed values by
the `electric-schema` of the shape; columns the schema does not describe fall back to the known
TaskRun column types (`TASKRUN_SCHEMA`, TRIGGER.md §1.2), so a row without a schema — posted by
a user, or served by the native backend — decodes the same. Decoding is idempotent: values that
are already typed (the `raw-row` fixture layer: numbers, booleans, lists, dicts) pass through.
`parse_raw_run` then renames the columns to the SDK's run object (`friendlyId` → `id`,
`usageDurationMs` → `durationMs`, `completedAt` → `finishedAt`, `delayUntil` → `delayedUntil`,
`runTags` → `tags`) and lets the SDK parser finish (status, packets). The raw `error` union is
kept as it is (with `type`, INTERNAL_ERROR `code` and `message`): richer than the SDK's view.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from relay.errors import InputError
from relay.formats.packets import loads_shallow
from relay.formats.run_errors import enhanced
from relay.formats.sdk import parse_sdk_run
from relay.model import Run
from relay.run_values import from_iso
from relay.statuses import ROW_STATUS_MAP, ROW_V3_STATUS, normalise_status

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
_RENAMED = {
    "friendlyId": "id",
    "usageDurationMs": "durationMs",
    "completedAt": "finishedAt",
    "delayUntil": "delayedUntil",
    "runTags": "tags",
}
_INTERNAL_ID = "id"  # the cuid; the public run id is `friendlyId`
_ZERO_DEFAULT = ("durationMs", "costInCents", "baseCostInCents")
# The packet columns (text) and their type columns, NOT NULL DEFAULT 'application/json'
# (schema.prisma): a row without the type column (skipColumns, a hand-made row) holds JSON text.
_PACKET_TYPES = (("payload", "payloadType"), ("output", "outputType"), ("metadata", "metadataType"))
_PACKET_DEFAULT = "application/json"
_LIST_DEFAULT = ("tags", "realtimeStreams")
# booleanHelpersFromRunStatus (runStream.ts), on the public status.
_FAILED = frozenset({"FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT"})
_HELPERS: dict[str, frozenset[str]] = {
    "isQueued": frozenset({"PENDING_VERSION", "QUEUED", "DELAYED"}),
    "isWaiting": frozenset({"WAITING"}),
    "isExecuting": frozenset({"DEQUEUED", "EXECUTING"}),
    "isCompleted": _FAILED | {"COMPLETED"},
    "isFailed": _FAILED,
    "isSuccess": frozenset({"COMPLETED"}),
    "isCancelled": frozenset({"CANCELED"}),
}
# The public statuses a run never leaves (the SDK's isCompleted or isCancelled; raw CANCELED,
# INTERRUPTED, COMPLETED_*, SYSTEM_FAILURE, CRASHED, EXPIRED, TIMED_OUT: TRIGGER.md §1.3).
FINAL_STATUSES = _HELPERS["isCompleted"] | _HELPERS["isCancelled"]
# The columns every row of a TaskRun shape carries (Trigger.dev's RESERVED_COLUMNS: skipColumns
# cannot drop them). All but `status` are set when the run is made and never change, so
# Electric's update (the primary key and the changed columns) never carries them all: a row that
# does is whole (an insert, the native backend's update, a replica=full one).
WHOLE_ROW_COLUMNS = ("id", "friendlyId", "taskIdentifier", "status", "createdAt")


def is_raw_row(obj: Mapping[str, Any]) -> bool:
    """A TaskRun row carries `friendlyId`; the SDK object and the webhooks do not."""
    return "friendlyId" in obj


def is_shape_message(obj: Mapping[str, Any]) -> bool:
    """An Electric shape-log message ({key, value, headers: {operation}} or a control message),
    as a Realtime response body holds them: not a run, though it may carry a row."""
    headers = obj.get("headers")
    return isinstance(headers, dict) and ("operation" in headers or "control" in headers)


def fold_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The rows a Realtime response body leaves, in the order they last changed: inserts set a
    row, updates merge into it (Electric sends only the changed columns), deletes drop it;
    control messages change nothing. Rows seen only through an update stay partial."""
    rows: dict[str, dict[str, Any]] = {}
    for message in messages:
        headers, key, value = message.get("headers") or {}, message.get("key"), message.get("value")
        operation = headers.get("operation")
        if not isinstance(key, str) or not isinstance(value, dict) or operation is None:
            continue
        row = rows.pop(key, {})
        if operation != "delete":
            rows[key] = value if operation == "insert" else {**row, **value}
    return list(rows.values())


def parse_raw_run(row: Mapping[str, Any], where: str = "", schema: Schema | None = None) -> Run:
    """Decode and normalise one raw row; InputError names the failing column."""
    data = _sdk_shape(decode_row(row, schema))
    try:
        return parse_sdk_run(data, where)
    except InputError as exc:
        raise _raw_field(exc) from None


def decode_row(row: Mapping[str, Any], schema: Schema | None = None) -> dict[str, Any]:
    """Typed values for a row of wire text (or of values already typed), by column type."""
    decoders = _row_decoders(schema)
    out = {}
    for name, value in row.items():
        decode = decoders.get(name)
        out[name] = value if decode is None or value is None else decode(value)
    return out


def decode_value(value: Any, column: Mapping[str, Any] | None) -> Any:
    """One value by its `electric-schema` entry; a value that does not parse is kept as is."""
    decode = None if column is None else _column_decoder(column)
    return value if decode is None or value is None else decode(value)


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
        items = orjson.loads(text) if text.lstrip(_PG_SPACE).startswith("[") else None
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


_PG_SPACE = " \t\n\r\v\f"  # what Postgres skips around array elements (array_isspace)
_PG_MAXDIM = 6  # Postgres arrays have at most 6 dimensions; deeper nesting is not a literal


def parse_pg_array(text: str) -> list[Any]:
    """A Postgres array literal (`{a,"b c",NULL}`, nested, backslash escapes) → list.

    Elements stay strings (None for an unquoted NULL); the caller decodes them by type.
    """
    text = text.strip(_PG_SPACE)
    if text.startswith("["):  # explicit bounds, e.g. `[0:1]={a,b}`
        text = text.partition("=")[2].strip(_PG_SPACE)
    inner = text[1:-1]
    if text[:1] == "{" and text[-1:] == "}" and not any(c in inner for c in '{}"\\'):
        return [_unquoted(p) for p in inner.split(",")] if inner.strip(_PG_SPACE) else []
    items, end = _array(text, 0)
    if text[end:].strip(_PG_SPACE):
        raise ValueError("trailing characters after the array literal")
    return items


def _array(text: str, pos: int, depth: int = 1) -> tuple[list[Any], int]:
    if text[pos : pos + 1] != "{":
        raise ValueError("an array literal starts with {")
    if depth > _PG_MAXDIM:
        raise ValueError(f"an array literal nested deeper than {_PG_MAXDIM} dimensions")
    items: list[Any] = []
    pos += 1
    if text[pos : pos + 1] == "}":
        return items, pos + 1
    while True:
        item, pos = _element(text, pos, depth)
        items.append(item)
        if pos >= len(text):
            raise ValueError("unterminated array literal")
        if text[pos] == "}":
            return items, pos + 1
        if text[pos] != ",":
            raise ValueError("expected , or } in the array literal")
        pos += 1


def _element(text: str, pos: int, depth: int) -> tuple[Any, int]:
    while pos < len(text) and text[pos] in _PG_SPACE:
        pos += 1
    if text[pos : pos + 1] == "{":
        return _array(text, pos, depth + 1)
    quoted = text[pos : pos + 1] == '"'
    pos += quoted
    chars: list[str] = []
    escaped = False
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            chars.append(text[pos + 1])
            pos, escaped = pos + 2, True
            continue
        if (quoted and char == '"') or (not quoted and char in ",}"):
            break
        chars.append(char)
        pos += 1
    if not quoted:
        word = "".join(chars)
        return (word.strip(_PG_SPACE) if escaped else _unquoted(word)), pos
    if pos >= len(text):
        raise ValueError("unterminated quoted element")
    pos += 1
    while pos < len(text) and text[pos] in _PG_SPACE:
        pos += 1
    return "".join(chars), pos


def _unquoted(word: str) -> str | None:
    word = word.strip(_PG_SPACE)
    return None if word.upper() == "NULL" else word


def _sdk_shape(row: dict[str, Any]) -> dict[str, Any]:
    """The typed row with the SDK's field names and defaults (transformRunShape)."""
    data = {_RENAMED.get(k, k): v for k, v in row.items() if k != _INTERNAL_ID}
    for name in _ZERO_DEFAULT:
        if data.get(name) is None:
            data[name] = 0
    for name in _LIST_DEFAULT:
        if data.get(name) is None:
            data[name] = []
    for name, type_name in _PACKET_TYPES:
        if isinstance(data.get(name), str) and type_name not in data:
            data[type_name] = _PACKET_DEFAULT
    data["error"] = _error(data.get("error"))
    status = data.get("status")
    if isinstance(status, str):
        public = data["status"] = _public_status(status)
        v3 = ROW_V3_STATUS.get(status.strip().upper())
        if v3 is not None:
            data["v3Status"] = v3
        data.update({flag: public in among for flag, among in _HELPERS.items()})
    return data


def _public_status(status: str) -> str:
    normal = normalise_status(status)  # any case first: `interrupted` is INTERRUPTED
    return ROW_STATUS_MAP.get(normal, normal)


def is_final_row(row: Mapping[str, Any]) -> bool:
    """A raw row (wire or typed values) whose status is final: the run's status never changes."""
    status = row.get("status")
    return isinstance(status, str) and _public_status(status) in FINAL_STATUSES


def row_changed_at(row: Mapping[str, Any]) -> float | None:
    """When a raw row (wire values) last changed, in epoch seconds: the later of its
    `updatedAt` (Trigger.dev's, set at every write of the run) and `completedAt` that reads;
    None when neither does."""
    times = []
    for name in ("updatedAt", "completedAt"):
        value = row.get(name)
        if isinstance(value, str):
            with contextlib.suppress(ValueError, OverflowError):
                times.append(parse_timestamp(value).timestamp())
    return max(times, default=None)


def is_whole_row(row: Mapping[str, Any]) -> bool:
    """A raw row that carries every column of WHOLE_ROW_COLUMNS (not a partial update)."""
    return all(name in row for name in WHOLE_ROW_COLUMNS)


def _error(value: Any) -> dict[str, Any] | None:
    """The TaskRunError union as stored (its code as the SDK reads it); anything else as
    Trigger.dev would wrap it."""
    if value is None:
        return value
    if isinstance(value, dict):
        return enhanced(value)
    if isinstance(value, str):
        return {"type": "STRING_ERROR", "raw": value}
    return {"type": "CUSTOM_ERROR", "raw": _json_text(value)}


def _json_text(value: Any) -> str:
    """`value` as JSON; a number past 64 bits (an int8 column, a decoder's) orjson cannot
    write, Python's json can."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return json.dumps(value, default=str, separators=(",", ":"))


def _raw_field(exc: InputError) -> InputError:
    """The error with the row's column name where the SDK name differs (durationMs → ...)."""
    raw_names = {sdk: raw for raw, sdk in _RENAMED.items()}
    parts = exc.field.split(".")
    named = [raw_names.get(part, part) for part in parts]
    return exc if named == parts else InputError(".".join(named), exc.message)
