"""A run's dates as pydantic reads them. relay reads the text of JavaScript's
Date.toISOString() with fromisoformat, before pydantic (fewer instructions): for every such
text it must read the instant pydantic reads, and refuse what pydantic refuses, with pydantic's
reason. The alert webhook's run has no other reading to fall back on (the SDK object does)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from relay.model import Run
from relay.run_values import to_utc

TEXTS = (
    "2026-08-20T09:14:22.461Z",
    "2024-02-29T23:59:59.999Z",  # a leap day
    "0001-01-01T00:00:00.000Z",
    "9999-12-31T23:59:59.999Z",
    "2026-02-29T00:00:00.000Z",  # no such day
    "2026-13-01T00:00:00.000Z",
    "0000-01-01T00:00:00.000Z",
    "2026-08-20T24:00:00.000Z",
    "2026-08-20T23:59:60.000Z",  # a leap second
    "2026-08-20T09:14:Z\x00.461Z",  # fromisoformat stops at a NUL: 09:14:00
    "2026-08-20T09:14:22.4Z\x00Z",
    "2026-08-20T09:14:22.46\u0661Z",  # a digit, but not an ASCII one
    "2026-W34-4T09:14:22.461Z",  # a week date, which fromisoformat reads
    "2026-08-20x09:14:22.461Z",  # so is any separator
)


def pydantic_reading(text: str) -> Any:
    try:
        return to_utc(TypeAdapter(datetime).validate_python(text))
    except ValidationError as exc:
        return reason(exc)


def reason(exc: ValidationError, field: str | None = None) -> tuple[Any, ...]:
    err = exc.errors(include_url=False)[0]
    assert err["loc"] == ((field,) if field else ())
    return err["type"], err["msg"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_date_text_is_read_as_pydantic_reads_it(text: str) -> None:
    try:
        read: Any = Run.of_alert({"id": "run_d", "status": "FAILED", "createdAt": text}).createdAt
    except ValidationError as exc:
        read = reason(exc, "createdAt")
    expected = pydantic_reading(text)
    assert read == expected
    if isinstance(read, datetime):
        assert read.tzinfo is UTC
