"""How a run's values are read and written: times as aware UTC datetimes and as Trigger.dev's
ISO text, and numbers, flags and texts read leniently (in quotes, null), as Realtime rows and
hand-built JSON send them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, GetCoreSchemaHandler, PlainValidator, TypeAdapter
from pydantic_core import CoreSchema, PydanticCustomError, core_schema


def to_utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values (Realtime rows omit the Z) are UTC. ValueError (a 400
    for input) when the time in UTC falls outside years 1-9999, e.g. 0001-01-01T00:00+01:00."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range (years 1-9999 in UTC)") from None


def from_iso(text: str) -> datetime:
    """ISO 8601 text as Python reads it, blanks around ignored, in UTC (no zone means UTC):
    also Postgres' timestamptz `2026-08-20 09:14:22.46+00` and the basic `20260820T091422Z`,
    which pydantic refuses. ValueError for anything else."""
    return to_utc(datetime.fromisoformat(text.strip()))


_PYDANTIC_DATE = TypeAdapter(datetime | None).validator  # pydantic's reading, and its refusals


def _date(value: object) -> datetime | None:
    """A run's time: `value` as pydantic reads a datetime, in UTC (to_utc). The text of
    JavaScript's Date.toISOString() (YYYY-MM-DDTHH:MM:SS.mmmZ: every date Trigger.dev's JSON
    holds) is read by fromisoformat, which reads it as pydantic does (the same instant, or a
    refusal: tests/test_run_values.py) already in UTC, at a third of the instructions of
    pydantic's reading and its conversion to UTC. Its separators are checked by one slice (a
    regular expression costs more than the reading); a NUL would end fromisoformat's text."""
    if type(value) is datetime and value.tzinfo is UTC:  # a Realtime row's, from_iso's
        return value
    if (
        type(value) is str
        and len(value) == 24
        and value[4:20:3] == "--T::."
        and value[23] == "Z"
        and "\x00" not in value
    ):
        try:
            return datetime.fromisoformat(value)
        except ValueError:  # 2026-02-30: pydantic's refusal says why
            pass
    read = _PYDANTIC_DATE.validate_python(value)
    return None if read is None else to_utc(read)


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with milliseconds and Z, the way Trigger.dev writes dates."""
    if value is None:
        return None
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Leniency that loses nothing: null is the field's default, and a number or flag in quotes (as
# Realtime rows send them, as hand-built JSON often does) is that number or flag. A bool where a
# number belongs, or text that is no number, is a client bug worth a 400.
_NUMERIC_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MAX_EXACT_INT = 2**53  # an integral float within this is an exact int (and one orjson writes)
_INT64 = 2**63  # what the store and orjson can write as an integer


def _numeric_text(text: str) -> int | float | None:
    """ "600" → 600, " 12.5 " → 12.5 (JSON number syntax); None for any other text."""
    text = text.strip()
    if not _NUMERIC_TEXT.fullmatch(text):
        return None
    if text.lstrip("-").isdigit():
        try:
            whole = int(text)
        except ValueError:  # past Python's 4,300 digits: past a float's range as well
            return None
        return _as_read(whole)
    value = float(text)
    return value if math.isfinite(value) else None


def _as_read(whole: int) -> int | float | None:
    """An integer as orjson reads a JSON number: past 64 bits a float; past a float's range
    none (orjson refuses it as infinity, and float() raised OverflowError)."""
    if abs(whole) < _INT64:
        return whole
    try:
        return float(whole)
    except OverflowError:
        return None


def _number(value: object) -> int | float:
    """An int stays an int (60634, not 60634.0): typed receivers decode the run as it was sent;
    one past 64 bits is a float, as orjson reads it. null is 0, as when the field is absent (a
    run not started yet has no cost). NaN and infinities (Postgres float8 can hold them) are
    no amount: a 400, not a row the store cannot write."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if (read := _as_read(value)) is not None:
            return read
    elif isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and (parsed := _numeric_text(value)) is not None:
        return parsed
    raise PydanticCustomError("float_type", "Input should be a valid number")


def _integer(value: object) -> int | None:
    """The run number: an int, also when sent as 12.0 or "12"; null stays null."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _numeric_text(value)
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _INT64:
        return value
    raise PydanticCustomError("int_type", "Input should be a valid integer")


def _flag(value: object) -> bool:
    """isTest: a bool, "true"/"false" or Postgres' "t"/"f" in any case; null is false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    raise PydanticCustomError("bool_type", "Input should be a valid boolean")


def _text(value: object) -> object:
    """An optional text field (ttl, idempotencyKey) sent as a number is that number's text:
    Trigger.dev's trigger options take `ttl: 3600` as well as `ttl: "1h"`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class _Exact:
    """A value pydantic-core takes as it is when it fits an `exact` schema (no call into
    Python, ~650 instructions less a field: nearly every run sends its numbers and flags so),
    else `read`'s reading; what neither takes is refused with `read`'s one error, `kind`."""

    def __init__(self, exact: list[CoreSchema], read: Callable[[Any], Any], kind: str) -> None:
        self.exact, self.read, self.kind = exact, read, kind

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        read = core_schema.no_info_plain_validator_function(self.read)
        return core_schema.union_schema(
            [*self.exact, read], mode="left_to_right", custom_error_type=self.kind
        )


_FLAGS = {"true": True, "t": True, "false": False, "f": False}
_INT = core_schema.int_schema(strict=True, gt=-_INT64, lt=_INT64)  # as _as_read keeps it
_FINITE = core_schema.float_schema(strict=True, allow_inf_nan=False)
_BOOL = core_schema.bool_schema(strict=True)
Number = Annotated[int | float, _Exact([_INT, _FINITE], _number, "float_type")]
Integer = Annotated[int | None, _Exact([_INT], _integer, "int_type")]
Flag = Annotated[bool, _Exact([_BOOL], _flag, "bool_type")]
Text = Annotated[str | None, BeforeValidator(_text)]
Date = Annotated[datetime | None, PlainValidator(_date)]
