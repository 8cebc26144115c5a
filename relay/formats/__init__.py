"""Input shapes → Run. One module per shape; `parse_runs` picks the shape of each object."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from relay.errors import InputError, field_path
from relay.formats.electric import fold_messages, is_raw_row, is_shape_message, parse_raw_run
from relay.formats.packets import cap_depth, capped, too_deep
from relay.formats.sdk import parse_sdk_run
from relay.model import Run

MAX_BATCH = 10_000
BOM = b"\xef\xbb\xbf"  # RFC 8259 §8.1: a parser may ignore it; Windows tools write it
_SURROGATE = re.compile("[\ud800-\udfff]")


RUNS_EXPECTED = "a JSON run object or an array of them"


def parse_body(body: bytes, expected: str = RUNS_EXPECTED) -> Any:
    """JSON of a request body, cut past MAX_DEPTH levels (cap_depth); InputError for anything
    that is not JSON (an empty body's error says what was `expected`)."""
    body = body.removeprefix(BOM)
    if not body.strip():
        raise InputError("", f"empty body; expected {expected}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        data = _orjson_refused(body, exc)
    return capped(data, body)


def _orjson_refused(body: bytes, exc: orjson.JSONDecodeError) -> Any:
    """The document orjson refused for a lone surrogate escape ("\\ud83d": JavaScript's
    JSON.stringify writes one for a string cut inside an emoji; the JSON grammar allows it),
    each lone surrogate read as U+FFFD; InputError naming the field of a number orjson
    refused as out of range (1e400: past what a double holds); InputError with orjson's
    reason for anything else."""
    if "surrogate" not in exc.msg and "number" not in exc.msg:
        raise InputError("", f"invalid JSON: {_json_reason(exc)}") from None
    try:
        text = body.decode(json.detect_encoding(body))  # UTF-8, or UTF-16/32 with a BOM
    except UnicodeDecodeError as bad:  # orjson says "surrogates not allowed" of any bad byte
        raise InputError("", f"invalid JSON: not UTF-8 at byte {bad.start}") from None
    try:
        data = json.loads(
            text, parse_constant=_refuse_constant, parse_int=_as_orjson_int, parse_float=_finite
        )
    except (ValueError, RecursionError):
        raise InputError("", f"invalid JSON: {_json_reason(exc)}") from None
    if too_deep(data):  # before the recursive replacement
        data = cap_depth(data)
    if (huge := _out_of_range(data, "")) is not None:
        where, number = huge
        raise InputError(
            where, f"number out of range: {number} (larger than a 64-bit float holds, ±1.8e308)"
        )
    return _replace_surrogates(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON (orjson refuses them too)


class _OutOfRange(str):
    """A number orjson refuses as out of range (its text, cut): what _out_of_range finds."""


def _as_orjson_int(text: str) -> int | float | _OutOfRange:
    """An integer as orjson reads it: past its 64-bit range, a float (which the store and the
    serialiser can hold; a bigger int was a 500 after the 202), and past a double's range
    refused as orjson refuses it (float() of such an int raised OverflowError: a 500)."""
    value = int(text) if len(text) < 400 else None  # int() of 4,300 digits raises
    return value if value is not None and -(2**63) <= value < 2**64 else _finite(text)


def _finite(text: str) -> float | _OutOfRange:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson refuses a number that overflows a double
        return _OutOfRange(text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)")
    return value


def _out_of_range(value: Any, where: str) -> tuple[str, str] | None:
    """The field and text of the first number out of range in `value` (depth-capped), if any."""
    if isinstance(value, _OutOfRange):
        return where, str(value)
    if not isinstance(value, dict | list):
        return None
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        if (found := _out_of_range(item, field_path(where, key))) is not None:
            return found
    return None


def _replace_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate of its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def parse_runs(data: Any) -> list[Run]:
    """One run object or an array of them, or a page of runs.list ({data: [...], pagination});
    all valid or InputError for the first bad one."""
    where = ""
    if is_list_page(data):
        data, where = data["data"], "data"
    if isinstance(data, dict):
        return [_item(data, "")]
    if isinstance(data, list):
        if len(data) > MAX_BATCH:
            raise InputError(where, f"more than {MAX_BATCH} runs in one request")
        return [_item(item, f"{where}[{i}]") for i, item in enumerate(data)]
    raise InputError("", "expected a JSON object or an array of objects")


def is_list_page(data: Any) -> bool:
    """A page of Trigger.dev's runs.list (GET /api/v1/runs: ListRunResponse) as it comes:
    `{"data": [run, ...], "pagination": {...}}`; a run object always has its own `id`."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("data"), list)
        and set(data) <= {"data", "pagination"}
    )


def _item(item: Any, where: str) -> Run:
    if not isinstance(item, dict):
        raise InputError(where, "expected a run object")
    if is_shape_message(item):
        raise InputError(where, SHAPE_MESSAGE)
    if is_alert_webhook(item):
        raise InputError(where, ALERT_MESSAGE)
    if is_stream_part(item):
        return parse_run(item["run"], f"{where}.run" if where else "run")
    wrapper = _wrapper(item)
    if wrapper is not None:
        raise InputError(f"{where}.{wrapper}" if where else wrapper, WRAPPED_MESSAGE)
    return parse_run(item, where)


def is_stream_part(item: dict[str, Any]) -> bool:
    """A part of the SDK's runs.subscribeToRun(...).withStreams(): `{"type": "run", "run":
    run}`, or a stream chunk `{"type": key, "chunk": ..., "run": run}` (the run it belongs to);
    `{"run": run}` too."""
    run = item.get("run")
    return (
        "id" not in item
        and isinstance(run, dict)
        and ("id" in run or "friendlyId" in run)
        and isinstance(item.get("type", ""), str)
        and set(item) <= {"type", "run", "chunk"}
    )


def _wrapper(item: dict[str, Any]) -> str | None:
    """The one key of an object without an `id` that holds a run: {"data": {...}}."""
    if "id" in item or len(item) != 1:
        return None
    key, value = next(iter(item.items()))
    return key if isinstance(value, dict) and ("id" in value or "friendlyId" in value) else None


SHAPE_MESSAGE = (
    "an Electric shape message, not a run: post its `value` row, or let sources.realtime"
    " follow the feed"
)

WRAPPED_MESSAGE = "a run object wrapped in another: post the run object itself"

ALERT_MESSAGE = (
    "a Trigger.dev alert webhook, not a run: point the alert channel at /v1/trigger/alerts"
)


def parse_run(obj: dict[str, Any], where: str) -> Run:
    """The SDK run object, or the raw Realtime row (it has `friendlyId`)."""
    if is_raw_row(obj):
        return parse_raw_run(obj, where)
    return parse_sdk_run(obj, where)


def _shape_log(data: Any) -> bool:
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(m, dict) and is_shape_message(m) for m in data)
    )


def _partial(row: dict[str, Any]) -> str:
    return (
        f"skipped {str(row.get('id'))[:40]}: only an update (Electric sends the changed"
        " columns); its run needs the snapshot row, which this file does not hold"
    )


def _json_reason(exc: orjson.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def is_alert_webhook(data: Any) -> bool:
    """A Trigger.dev alert webhook body: enveloped (type alert.*) or the legacy v1 shape."""
    if not isinstance(data, dict):
        return False
    kind = data.get("type")
    if isinstance(kind, str):
        return kind.startswith("alert.")
    return "organization" in data and "project" in data and ("run" in data or "deployment" in data)


def recorded_body(data: Any) -> Any:
    """The `body` of a recorded request ({method?, headers, body}, as the alert-webhook
    fixtures' *.request.json hold one); anything else as it is."""
    if (
        isinstance(data, dict)
        and "id" not in data
        and "type" not in data
        and isinstance(data.get("headers"), dict)
        and isinstance(data.get("body"), dict | list)
    ):
        return data["body"]
    return data


def session_messages(data: Any) -> Any:
    """The Electric messages of a recorded Realtime session ({"exchanges": [{request,
    response: {status, headers, body}}, ...]}, as the fixtures' session_tag_feed.json), every
    response body's in order; anything else as it is."""
    exchanges = data.get("exchanges") if isinstance(data, dict) and "id" not in data else None
    if not isinstance(exchanges, list) or not exchanges:
        return data
    responses = [e.get("response") for e in exchanges if isinstance(e, dict)]
    bodies = [r.get("body") for r in responses if isinstance(r, dict)]
    return [m for b in bodies if isinstance(b, list) for m in b if isinstance(m, dict)]


def parse_any(
    data: Any, skipped: list[str] | None = None, ignored: list[str] | None = None
) -> list[Run]:
    """Whatever a user may hand `relay test`: runs, raw rows, alert webhook bodies, a
    Realtime response body (its rows, folded), a recorded request holding one of them, or a
    recorded Realtime session (its responses' rows, folded). What it had to leave out is said
    in `skipped`; alert bodies of a type relay does not know (POST /v1/trigger/alerts ignores
    them) in `ignored`, `[i] ` before each when the file holds an array."""
    data = session_messages(recorded_body(data))
    if _shape_log(data):
        rows = fold_messages(data)
        if skipped is not None:
            skipped += [_partial(row) for row in rows if not is_raw_row(row)]
        return [parse_raw_run(row, f"row {i}") for i, row in enumerate(rows) if is_raw_row(row)]
    if is_alert_webhook(data):
        return _parse_alerts([data], ignored)
    if isinstance(data, list) and any(map(is_alert_webhook, data)):
        return _parse_alerts(data, ignored, indexed=True)
    return parse_runs(data)


def _parse_alerts(items: list[Any], ignored: list[str] | None, indexed: bool = False) -> list[Run]:
    """The runs of an array holding alert webhook bodies, each element read as the endpoint
    for its kind reads it alone (POST /v1/trigger/alerts an alert, POST /v1/runs a run), in
    order; InputError naming the element (`[1].object.run: ...`) for the first bad one."""
    if len(items) > MAX_BATCH:
        raise InputError("", f"more than {MAX_BATCH} runs in one request")
    runs: list[Run] = []
    for i, item in enumerate(items):
        where = f"[{i}]" if indexed else ""
        if not is_alert_webhook(item):
            runs.append(_item(item, where))
        elif (run := _alert_run(item, where, ignored)) is not None:
            runs.append(run)
    return runs


def _alert_run(item: Any, where: str, ignored: list[str] | None) -> Run | None:
    from relay.formats.trigger_alerts import parse_alert  # noqa: PLC0415

    try:
        alert = parse_alert(item)
    except InputError as exc:
        if not where:
            raise
        what = f"{exc.message} (an alert webhook body)"
        raise InputError(field_path(where, exc.field) if exc.field else where, what) from None
    if alert.run is None and ignored is not None:
        ignored.append((f"{where} " if where else "") + _ignored_note(alert.type))
    return alert.run


def _ignored_note(kind: str) -> str:
    return (
        f"alert {kind[:80]}: an alert type relay does not know; "
        "POST /v1/trigger/alerts accepts and ignores it (no rule can match)"
    )
