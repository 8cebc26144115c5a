"""The raw Realtime row (Electric shape of `public."TaskRun"`) → Run.

Two steps. `decode_row` (relay.formats.electric_values) turns wire values (Postgres text,
TRIGGER.md §2.3) into typed values by the `electric-schema` of the shape; columns the schema does
not describe fall back to the known TaskRun column types (`TASKRUN_SCHEMA`, TRIGGER.md §1.2), so a
row without a schema — posted by a user, or served by the native backend — decodes the same.
Decoding is idempotent: values that are already typed (the `raw-row` fixture layer: numbers,
booleans, lists, dicts) pass through.
`parse_raw_run` then renames the columns to the SDK's run object (`friendlyId` → `id`,
`usageDurationMs` → `durationMs`, `completedAt` → `finishedAt`, `delayUntil` → `delayedUntil`,
`runTags` → `tags`) and lets the SDK parser finish (status, packets). The raw `error` union is
kept as it is (with `type`, INTERNAL_ERROR `code` and `message`): richer than the SDK's view.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

import orjson

from relay.errors import InputError
from relay.formats.electric_values import Schema, decode_row, parse_timestamp
from relay.formats.run_errors import enhanced
from relay.formats.sdk import parse_sdk_run
from relay.model import Run
from relay.statuses import (
    ROW_STATUS_MAP,
    ROW_V3_STATUS,
    STATUS_FLAGS,
    add_status_flags,
    normalise_status,
)

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
# The public statuses a run never leaves (the SDK's isCompleted or isCancelled; raw CANCELED,
# INTERRUPTED, COMPLETED_*, SYSTEM_FAILURE, CRASHED, EXPIRED, TIMED_OUT: TRIGGER.md §1.3).
FINAL_STATUSES = STATUS_FLAGS["isCompleted"] | STATUS_FLAGS["isCancelled"]
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
        data["status"] = _public_status(status)
        v3 = ROW_V3_STATUS.get(status.strip().upper())
        if v3 is not None:
            data["v3Status"] = v3
        add_status_flags(data)
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
    """The error with the row's column name where the SDK name differs (durationMs → ...,
    `tags[1]` → `runTags[1]`)."""
    raw_names = {sdk: raw for raw, sdk in _RENAMED.items()}
    parts = _PATH_PARTS.split(exc.field)  # names, with the dots and [i] between them
    named = [raw_names.get(part, part) for part in parts]
    return exc if named == parts else InputError("".join(named), exc.message)


_PATH_PARTS = re.compile(r"(\.|\[\d+\])")
