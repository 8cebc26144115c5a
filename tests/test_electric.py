"""Raw Realtime rows (Electric shape of TaskRun) → the same Run the SDK object gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import InputError
from relay.formats import parse_run
from relay.formats.electric import parse_raw_run
from relay.formats.electric_values import decode_row, parse_timestamp
from relay.formats.packets import few_brackets, too_deep
from relay.formats.pg_array import parse_pg_array
from relay.formats.sdk import parse_sdk_run
from relay.model import Run
from relay.templating import RenderContext, Renderer
from tests.conftest import CONSOLE_FAILURES, FIXTURES, RelayFactory, sdk_run
from tests.fakes.realtime import native_value, pg_array, pg_timestamp, raw_row

NAMES = ("failed", "crashed", "timed_out", "completed", "executing")
LAYERS = {"raw-row": "row", "wire-value": "value"}
COMPARED = (
    "id",
    "taskIdentifier",
    "status",
    "createdAt",
    "updatedAt",
    "startedAt",
    "queuedAt",
    "finishedAt",
    "delayedUntil",
    "expiredAt",
    "durationMs",
    "costInCents",
    "baseCostInCents",
    "tags",
    "isTest",
    "payload",
    "output",
    "metadata",
)


def layer(name: str, kind: str) -> dict[str, Any]:
    path = FIXTURES / "realtime-run" / kind / f"run_{name}.{LAYERS[kind]}.json"
    return json.loads(path.read_text())


def assert_same_run(raw: Run, sdk: Run) -> None:
    """Every field both shapes carry is equal; the error by its message and code."""
    for name in COMPARED:
        assert getattr(raw, name) == getattr(sdk, name), name
    extras = raw.model_extra or {}
    for name, value in (sdk.model_extra or {}).items():
        assert extras.get(name) == value, name
    assert_same_error(raw.error, sdk.error)


def assert_same_error(raw: dict[str, Any] | None, sdk: dict[str, Any] | None) -> None:
    if sdk is None:
        assert raw is None
        return
    assert raw is not None and "type" in raw  # the raw union, kept as it is
    if raw["type"] == "BUILT_IN_ERROR":
        assert {k: raw[k] for k in ("name", "message", "stackTrace")} == sdk
        return
    assert raw["type"] == "INTERNAL_ERROR" and raw["message"]
    # the SDK keeps only "trigger.dev internal error (CODE)", after taskRunErrorEnhancer
    code = raw["code"]
    if code == "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE" and "SIGKILL" in raw["message"][:100]:
        code = "TASK_PROCESS_MAYBE_OOM_KILLED"
    assert sdk == {"message": f"trigger.dev internal error ({code})"}


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_layer_gives_the_sdk_run(name: str, kind: str) -> None:
    sdk = parse_sdk_run(sdk_run(name))
    raw = parse_run(layer(name, kind), "")  # detected as a raw row
    assert_same_run(raw, sdk)
    assert raw.number == layer(name, "raw-row")["number"]  # more than the SDK shows


@pytest.mark.parametrize("name", NAMES)
def test_native_backend_values_give_the_sdk_run(name: str) -> None:
    assert_same_run(parse_raw_run(native_value(raw_row(name))), parse_sdk_run(sdk_run(name)))


@pytest.mark.parametrize("name", NAMES)
def test_decoding_is_idempotent(name: str) -> None:
    once = decode_row(layer(name, "wire-value"))
    assert decode_row(once) == once
    assert decode_row(layer(name, "raw-row")) == once  # the already-typed layer


def test_internal_error_code_and_message_are_kept() -> None:
    run = parse_raw_run(layer("timed_out", "wire-value"))
    assert run.error == {
        "code": "MAX_DURATION_EXCEEDED",
        "type": "INTERNAL_ERROR",
        "message": "Run exceeded maximum compute time (maxDuration) of 300 seconds",
    }


def test_the_crashed_row_reads_the_code_the_sdk_gives_its_run() -> None:
    """The same crash as a raw row and as an SDK object: one code for rules and templates
    (the SDK's enhancer: SIGKILL = maybe OOM); the row keeps its richer message."""
    raw = parse_raw_run(layer("crashed", "wire-value")).error or {}
    sdk = parse_sdk_run(sdk_run("crashed")).error or {}
    assert raw["code"] == "TASK_PROCESS_MAYBE_OOM_KILLED"
    assert sdk["message"] == "trigger.dev internal error (TASK_PROCESS_MAYBE_OOM_KILLED)"
    assert "SIGKILL" in raw["message"]


@pytest.mark.parametrize(
    ("code", "message", "read_as"),
    [
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "exit -1 (SIGABRT)", "TASK_PROCESS_MAYBE_OOM_KILLED"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "exited: SIGTERM", "TASK_PROCESS_SIGTERM"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "SIGSEGV", "TASK_PROCESS_SIGSEGV"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "exit code 1", "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "x" * 100 + "SIGKILL", "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "x" * 94 + "SIGKILL", "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"),
        ("TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE", "x" * 93 + "SIGKILL", "TASK_PROCESS_MAYBE_OOM_KILLED"),
        ("TASK_RUN_CRASHED", "MANUAL_OOM_KILL_ERROR", "TASK_PROCESS_OOM_KILLED"),
        ("MAX_DURATION_EXCEEDED", "SIGKILL", "MAX_DURATION_EXCEEDED"),
    ],
)  # fmt: skip
def test_internal_error_codes_read_as_the_sdk_reads_them(
    code: str, message: str, read_as: str
) -> None:
    error = {"type": "INTERNAL_ERROR", "code": code, "message": message}
    run = parse_raw_run({"friendlyId": "run_x", "status": "CRASHED", "error": error})
    assert run.error == {**error, "code": read_as}


UNEXPECTED_EXIT = {"name": "UnexpectedExitError", "message": "Unexpected exit with code -1"}


@pytest.mark.parametrize(
    ("error", "read_as"),
    [
        ({**UNEXPECTED_EXIT, "stackTrace": "exited after signal SIGKILL"}, "TASK_PROCESS_MAYBE_OOM_KILLED"),
        ({**UNEXPECTED_EXIT, "stackTrace": "exited after signal SIGTERM"}, "TASK_PROCESS_SIGTERM"),
        ({**UNEXPECTED_EXIT, "stackTrace": ""}, "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"),
        ({"name": "Error", "message": "ffmpeg was killed with signal SIGKILL"}, "TASK_PROCESS_OOM_KILLED"),
        ({"name": "OutOfMemoryError", "message": "MANUAL_OOM_KILL_ERROR"}, "TASK_PROCESS_OOM_KILLED"),
        ({"name": "Error", "message": "Unexpected exit with code -1"}, None),  # not the exit error
    ],
)  # fmt: skip
def test_built_in_errors_the_sdk_reads_as_internal_ones(
    error: dict[str, Any], read_as: str | None
) -> None:
    """The SDK reports these BUILT_IN_ERRORs as "trigger.dev internal error (CODE)": a raw row
    of them has that code too (was none), with its name and stack trace kept."""
    raw = {"type": "BUILT_IN_ERROR", "stackTrace": "at run (file:///src/x.ts:1:1)", **error}
    run = parse_raw_run({"friendlyId": "run_x", "status": "CRASHED", "error": raw})
    assert run.error is not None
    assert run.error.get("code") == read_as
    assert run.error["type"] == ("BUILT_IN_ERROR" if read_as is None else "INTERNAL_ERROR")
    assert run.error["name"] == raw["name"] and run.error["stackTrace"] == raw["stackTrace"]


def test_a_thrown_out_of_memory_error_reads_as_the_sdk_shows_it() -> None:
    """OutOfMemoryError's message is a placeholder: the message is the code's hint, as for the
    SDK twin of the run ("trigger.dev internal error (TASK_PROCESS_OOM_KILLED)")."""
    raw = {"type": "BUILT_IN_ERROR", "name": "OutOfMemoryError", "message": "MANUAL_OOM_KILL_ERROR"}
    sdk = {"message": "trigger.dev internal error (TASK_PROCESS_OOM_KILLED)"}
    views = []
    for run in (
        parse_raw_run({"friendlyId": "run_x", "status": "CRASHED", "error": raw}),
        parse_sdk_run({"id": "run_x", "status": "CRASHED", "error": sdk}),
    ):
        ctx = RenderContext(run.as_dict(), "r", "out", "console", "ntf_1", None)
        views.append(Renderer().render("console", "run_failed", ("txt",), ctx).parts["txt"])
    assert "TASK_PROCESS_OOM_KILLED: The task process ran out of memory" in views[0]
    assert views[0].splitlines()[1] == views[1].splitlines()[1]


def test_nulls_and_missing_columns_get_the_sdk_defaults() -> None:
    row = {"friendlyId": "run_x", "status": "PENDING", "runTags": None, "usageDurationMs": None}
    run = parse_raw_run(row)
    assert (run.id, run.status, run.tags, run.durationMs) == ("run_x", "QUEUED", [], 0)
    assert run.model_extra is not None and run.model_extra["isQueued"] is True


STORED = "packets/run_x/payload.json"


@pytest.mark.parametrize(
    ("payload", "data_type", "expected"),
    [
        (json.dumps([{"n": n} for n in range(100)]), "application/json", [{"n": n} for n in range(100)]),
        ({"json": {"a": 1}, "meta": {}}, "application/super+json", {"a": 1}),
        # superjson >= 2.2.3's version mark, in `meta` and (as TRIGGER.md 1.4 may be read) beside it
        ({"json": {"a": 1}, "meta": {"values": {}, "v": 1}}, "application/super+json", {"a": 1}),
        ('{"json": {"n": 3}, "meta": {"values": {}}, "v": 2}', "application/super+json", {"n": 3}),
        ({"json": 1, "other": 2}, "application/super+json", {"json": 1, "other": 2}),  # not one
        ("[1, 2]", "application/super+json", [1, 2]),  # no wrapper: kept
        ('{"a": 1}', "application/super+json", {"a": 1}),
        ("123", "text/plain", "123"),
        ("<x/>", "application/xml", "<x/>"),  # a type relay does not know: the raw text
        (STORED, "application/store", {"offloaded": True, "path": STORED, "dataType": "application/store"}),
        (None, "application/store", None),
    ],
)  # fmt: skip
def test_a_packet_reads_as_its_data_type_says(payload: Any, data_type: str, expected: Any) -> None:
    """A run object's payload by its payloadType (ioSerialization.ts): JSON with many brackets
    but shallow is JSON, superjson its `json` part, text and unknown types as sent, an offloaded
    packet (>= 128 KiB, in object storage) a marker of where it is, never fetched."""
    run = parse_sdk_run(
        {"id": "run_x", "status": "FAILED", "payload": payload, "payloadType": data_type}
    )
    assert run.payload == expected


@pytest.mark.parametrize("type_column", ["absent", None, "application/json"])
def test_packet_text_without_its_type_column_is_json(type_column: str | None) -> None:
    """The type columns are NOT NULL DEFAULT 'application/json': a row without them (a skipped
    column, a hand-made row) holds JSON text, read as with a null or explicit type. A metadata
    rule matched a row with metadataType null, not one without it ({"value": "<text>"})."""
    row: dict[str, Any] = {
        "friendlyId": "run_x",
        "status": "CRASHED",
        "metadata": '{"customer": {"tier": "enterprise"}}',
        "payload": '{"order": 7}',
        "output": "not json",
    }
    if type_column != "absent":
        row |= dict.fromkeys(("metadataType", "payloadType", "outputType"), type_column)
    run = parse_raw_run(row)
    assert run.metadata == {"customer": {"tier": "enterprise"}}
    assert (run.payload, run.output) == ({"order": 7}, "not json")


@pytest.mark.parametrize(
    ("raw", "public"),
    [
        ("INTERRUPTED", "FAILED"),
        ("WAITING_FOR_DEPLOY", "PENDING_VERSION"),
        ("COMPLETED_WITH_ERRORS", "FAILED"),
        ("RETRYING_AFTER_FAILURE", "EXECUTING"),
        ("CRASHED", "CRASHED"),
        ("SOMETHING_NEW", "SOMETHING_NEW"),
        # any case, blanks around (docs/configuration.md `status`): the raw-row readings too
        ("interrupted", "FAILED"),
        (" Waiting_For_Deploy\n", "PENDING_VERSION"),
        ("completed_with_errors", "FAILED"),
    ],
)
def test_raw_statuses_read_as_todays_sdk_reads_them(raw: str, public: str) -> None:
    """A rule on FAILED matches the same run as an SDK object or as a raw row (TRIGGER.md 1.3)."""
    run = parse_raw_run({"friendlyId": "run_x", "status": raw})
    assert run.status == public
    assert run.model_extra is not None
    assert run.model_extra["isFailed"] is (public in ("FAILED", "CRASHED"))


def test_schema_from_the_server_wins_over_the_defaults() -> None:
    schema = {"number": {"type": "int8"}, "extra": {"type": "float8"}}
    row = decode_row({"number": "9007199254740993", "extra": "1.5", "other": "7"}, schema)
    assert row == {"number": 9007199254740993, "extra": 1.5, "other": "7"}


@pytest.mark.parametrize(
    ("value", "column", "expected"),
    [
        ("t", {"type": "bool"}, True),
        ("false", {"type": "bool"}, False),
        (True, {"type": "bool"}, True),
        ("42", {"type": "int2"}, 42),
        ("0.050270739999999994", {"type": "float8"}, 0.050270739999999994),
        (3, {"type": "float4"}, 3.0),
        ("NaN", {"type": "float8"}, pytest.approx(float("nan"), nan_ok=True)),
        ('{"a": [1, null]}', {"type": "jsonb"}, {"a": [1, None]}),
        ("not json", {"type": "json"}, "not json"),
        ("{1,NULL,3}", {"type": "int4", "dims": 1}, [1, None, 3]),
        ("{{a,b},{c,d}}", {"type": "text", "dims": 2}, [["a", "b"], ["c", "d"]]),
        (["x"], {"type": "text", "dims": 1}, ["x"]),
        ('["env:prod", "a b"]', {"type": "text", "dims": 1}, ["env:prod", "a b"]),  # JSON
        ("[1, null]", {"type": "int4", "dims": 1}, [1, None]),
        ("[0:1]={a,b}", {"type": "text", "dims": 1}, ["a", "b"]),
        ('["a"', {"type": "text", "dims": 1}, '["a"'),  # neither: kept, the Run names it
        ("{a", {"type": "text", "dims": 1}, "{a"),
        ("infinity", {"type": "timestamptz"}, datetime.max.replace(tzinfo=UTC)),
        ("-infinity", {"type": "timestamp"}, datetime.min.replace(tzinfo=UTC)),
        ("COMPLETED_WITH_ERRORS", {"type": "TaskRunStatus"}, "COMPLETED_WITH_ERRORS"),
        ("abc", {"type": "int4"}, "abc"),  # kept; the Run validation names the column
        (None, {"type": "int4"}, None),
    ],
)
def test_decode_value(value: Any, column: dict[str, Any], expected: Any) -> None:
    """A value by its `electric-schema` entry; a value that does not parse is kept as is."""
    assert decode_row({"c": value}, {"c": column})["c"] == expected


def test_a_float_column_makes_numbers_floats_and_keeps_a_flag() -> None:
    """A float column's number is a float whatever JSON wrote (3 reads as 3.0); a flag is no
    number (Run validation names it) and stays one, never 1.0."""
    row = decode_row({"a": 3, "b": True}, {"a": {"type": "float8"}, "b": {"type": "float4"}})
    assert [(v, type(v)) for v in row.values()] == [(3.0, float), (True, bool)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", []),
        ('{customer:cus_Q8x2LmN4,"a b","x\\"y","back\\\\slash",NULL,"NULL",""}',
         ["customer:cus_Q8x2LmN4", "a b", 'x"y', "back\\slash", None, "NULL", ""]),
        ("[0:1]={a,b}", ["a", "b"]),
        ('{ a , "b" }', ["a", "b"]),
        (' {a,"b"}\n', ["a", "b"]),  # blanks around, as Postgres' array_in skips them
    ],
)  # fmt: skip
def test_pg_array_examples(text: str, expected: list[Any]) -> None:
    assert parse_pg_array(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a,b",
        "a}",
        "{a,b",
        '{"a}',
        '{"a"b}',
        "{a}x",
        "{" * 7 + "a" + "}" * 7,
        "{a," + "{" * 5000,
    ],
)  # the last two: found by bench/fuzz_atheris.py as a RecursionError (a 500 on /v1/runs)
def test_pg_array_rejects_broken_literals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pg_array(text)


ELEMENT = st.one_of(
    st.none(),
    st.text(st.characters(exclude_characters="\x00")),
    st.sampled_from(['"', "\\", ",", "{", "}", " ", "NULL", "null", "", "a b", " x ", "é✓"]),
)


@given(st.lists(ELEMENT, max_size=8), st.booleans())
def test_pg_array_round_trip(items: list[str | None], quote_all: bool) -> None:
    assert parse_pg_array(pg_array(items, quote_all)) == items


def test_pg_array_takes_six_dimensions() -> None:
    assert parse_pg_array("{" * 6 + "a" + "}" * 6) == [[[[[["a"]]]]]]


@given(st.lists(st.lists(ELEMENT, min_size=2, max_size=2), min_size=1, max_size=3))
def test_pg_array_round_trip_two_dimensions(items: list[list[str | None]]) -> None:
    assert parse_pg_array(pg_array(items)) == items


STAMPS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))


@given(STAMPS)
def test_timestamp_round_trip_postgres_text(value: datetime) -> None:
    assert parse_timestamp(pg_timestamp(value)) == value.replace(tzinfo=UTC)


@given(STAMPS)
def test_timestamp_round_trip_native_iso(value: datetime) -> None:
    value = value.replace(microsecond=value.microsecond // 1000 * 1000)
    text = value.isoformat(timespec="milliseconds")  # 2026-06-06T10:05:30.123
    assert parse_timestamp(text) == value.replace(tzinfo=UTC)


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(-14 * 60, 14 * 60),
)
def test_timestamp_with_a_zone_is_converted_to_utc(value: datetime, minutes: int) -> None:
    aware = value.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    assert parse_timestamp(aware.isoformat(sep=" ")) == aware.astimezone(UTC)


def test_both_timestamp_forms_of_the_docs() -> None:
    assert parse_timestamp("2026-08-20 09:14:22.46") == datetime(
        2026, 8, 20, 9, 14, 22, 460000, tzinfo=UTC
    )
    assert parse_timestamp("2026-06-06T10:05:30.123") == datetime(
        2026, 6, 6, 10, 5, 30, 123000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-08-20 09:14:22.123+00", datetime(2026, 8, 20, 9, 14, 22, 123000, tzinfo=UTC)),
        ("2026-08-20T09:14:22.123+00", datetime(2026, 8, 20, 9, 14, 22, 123000, tzinfo=UTC)),
        ("2026-08-20T11:14:22+02", datetime(2026, 8, 20, 9, 14, 22, tzinfo=UTC)),
        ("2026-08-20T09:14:22.123Z", datetime(2026, 8, 20, 9, 14, 22, 123000, tzinfo=UTC)),
    ],
)
def test_a_run_object_takes_the_timestamps_a_raw_row_takes(text: str, utc: datetime) -> None:
    """PostgreSQL writes a timestamptz's zone in hours (`+00`); pydantic refused it (a 400 for
    the whole run) in a run object while a raw row's column took it."""
    run = parse_sdk_run({**sdk_run("failed"), "updatedAt": text, "createdAt": text}, "[0]")
    assert run.updatedAt == run.createdAt == utc


def test_a_run_object_still_refuses_a_date_no_form_reads() -> None:
    with pytest.raises(InputError) as caught:
        parse_sdk_run({**sdk_run("failed"), "updatedAt": "yesterday"}, "[2]")
    assert caught.value.field == "[2].updatedAt"


def test_a_bad_column_is_named_by_its_raw_name() -> None:
    row = layer("failed", "wire-value")
    with pytest.raises(InputError) as caught:
        parse_raw_run({**row, "usageDurationMs": "fourteen"}, "[3]")
    assert caught.value.field == "[3].usageDurationMs"


# ---------------------------------------------------------------- POST /v1/runs takes a raw row

CONFIG = CONSOLE_FAILURES


async def test_post_accepts_raw_rows_of_both_layers(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    body = [
        layer("failed", "wire-value"),
        layer("crashed", "raw-row"),
        layer("completed", "raw-row"),
    ]
    status, answer = await r.post(body)
    assert status == 202
    assert answer == {"accepted": 3, "stale": 0, "notifications": 2}
    # the SDK twin of a run already seen is a repeat: nothing fires again
    assert await r.post(sdk_run("failed")) == (202, {"accepted": 1, "stale": 0, "notifications": 0})


async def test_post_names_the_raw_column_of_a_bad_row(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    status, answer = await r.post({**layer("failed", "raw-row"), "costInCents": "lots"})
    assert status == 400
    assert answer["field"] == "costInCents"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("costInCents", "NaN"),  # float8 holds NaN and infinities: was a 503 "store unavailable"
        ("baseCostInCents", "Infinity"),
        ("costInCents", "-Infinity"),
        ("costInCents", "1e400"),
        ("number", "99999999999999999999"),  # past 64 bits: was a 500
        ("usageDurationMs", "9" * 400),  # past a float's range: was an OverflowError, a 500
    ],
)
async def test_post_refuses_a_value_the_store_cannot_hold(
    relay: RelayFactory, column: str, value: str
) -> None:
    r = await relay(CONFIG)
    status, answer = await r.post({**layer("failed", "wire-value"), column: value})
    assert (status, answer["field"]) == (400, column), answer


async def test_post_takes_a_duration_past_64_bits_as_a_float(relay: RelayFactory) -> None:
    """usageDurationMs is an int4; an out-of-range one (was a 500) still alerts its failure."""
    r = await relay(CONFIG)
    row = {**layer("failed", "wire-value"), "usageDurationMs": "99999999999999999999"}
    assert await r.post(row) == (202, {"accepted": 1, "stale": 0, "notifications": 1})
    sdk = {**sdk_run("crashed"), "durationMs": 2**63}
    assert await r.post(sdk) == (202, {"accepted": 1, "stale": 0, "notifications": 1})


@pytest.mark.parametrize(
    ("field", "value"),
    [("durationMs", "9" * 400), ("costInCents", "-1" + "0" * 400), ("durationMs", "9" * 5000)],
)
async def test_post_refuses_numeric_text_past_a_float(
    relay: RelayFactory, field: str, value: str
) -> None:
    """An SDK run's number as text of 400 digits: float() of it raised OverflowError (a 500,
    found by fuzzing `relay test`); a JSON number that long is refused as invalid JSON, so the
    text is no number either (past 4,300 digits the error quoted Python's int limit)."""
    r = await relay(CONFIG)
    status, answer = await r.post({**sdk_run("crashed"), field: value})
    assert (status, answer["field"]) == (400, field), answer
    assert answer["error"] == "expected a number", answer


def test_a_realtime_row_past_a_float_is_an_input_error() -> None:
    """The Realtime feed skips a row with an InputError; an OverflowError restarted the feed
    on the same row, for ever."""
    row = {**layer("failed", "wire-value"), "usageDurationMs": "9" * 400}
    with pytest.raises(InputError) as caught:
        parse_raw_run(row, schema={"usageDurationMs": {"type": "int8"}})
    assert caught.value.field == "usageDurationMs"


_JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet='{[]}a"', max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(_JSON, st.integers(min_value=0, max_value=6))
def test_few_brackets_is_never_wrong_about_depth(value: Any, limit: int) -> None:
    """The bracket count is a shortcut for too_deep: a text it lets through is never too deep."""
    text = json.dumps(value)
    if few_brackets(text, limit):
        assert not too_deep(json.loads(text), limit)
    assert few_brackets(text.encode(), limit) == few_brackets(text, limit)


def test_few_brackets_counts_every_level() -> None:
    deep = "[" * 66 + "]" * 66
    assert too_deep(json.loads(deep)) and not few_brackets(deep) and not few_brackets(deep.encode())
    assert few_brackets(b'{"a": [1, {"b": "]]"}]}')


def test_an_error_column_of_a_huge_integer_is_a_custom_error() -> None:
    """A server whose schema types `error` as int8 (or any JSON decoder) may hand a number past
    64 bits: orjson cannot write it, and the row raised TypeError (not an InputError), which
    the feed does not skip. Trigger.dev wraps any non-object error as CUSTOM_ERROR."""
    row = {"friendlyId": "run_x", "status": "CRASHED", "error": str(2**64)}
    run = parse_raw_run(row, schema={"error": {"type": "int8"}})
    assert run.error is not None and run.error["raw"] == str(2**64)
    assert parse_raw_run({**row, "error": [2**70]}).error == {
        "type": "CUSTOM_ERROR",
        "raw": f"[{2**70}]",
    }
