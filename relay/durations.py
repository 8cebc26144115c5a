"""Durations as operators write them: 30s, 5m, 4h, 1d, 1w, 1y, 250ms, 1h30m, or a number of
seconds (Prometheus' units: a year is 365 days)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any

from annotated_types import Gt
from pydantic import BeforeValidator

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
# nan and inf read as numbers, yet measure no time: not "out of range" (nan was said to be)
NOT_A_DURATION = "not a duration; use 30s, 5m, 4h, 1h30m, 250ms or a number of seconds"


def parse_duration(value: Any) -> float:
    """Seconds in `value`; raises ValueError with a message that quotes no input but a
    negative duration (`-0`, `-5s`: a number is no secret)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 4h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError("expected a duration like 30s, 5m, 4h")
    if not math.isfinite(seconds):
        raise ValueError(NOT_A_DURATION)
    if math.copysign(1.0, seconds) < 0:  # -0 too: it said "must be more than 0 (got -0s)"
        raise ValueError(f"a duration cannot be negative (got {_written(value)})")
    if seconds > 10 * 365 * 86400:
        raise ValueError("duration must be between 0 and 10 years")
    return seconds


def _written(number: float | str) -> str:
    """A number as the file or variable has it (`-0`, `-1.5`): a number is no secret."""
    return number.strip() if isinstance(number, str) else f"{number:g}"


def _parse_text(text: str) -> float:
    if not text:
        raise ValueError("expected a duration like 30s, 5m, 4h")
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] == "-" and text[1:2].isdigit():  # -5s: negative (refused), not "no duration"
        return -_parse_text(text[1:])
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError("expected a duration like 30s, 5m, 4h, 1h30m or 250ms")
    return total


def within(seconds: float, low: float, high: float | None = None) -> float:
    """`seconds` when inside [low, high]; else a ValueError in durations, as written (pydantic's
    own bounds say "greater than or equal to 3600", seconds nobody wrote)."""
    if seconds < low or (high is not None and seconds > high):
        span = f"at least {format_duration(low)}"
        if high is not None:
            span = f"from {format_duration(low)} to {format_duration(high)}"
        raise ValueError(f"must be {span} (got {format_duration(seconds)})")
    return seconds


def more_than_zero(value: Any, fix: str = "") -> float:
    """The seconds of duration `value`, refused in durations when 0 (pydantic's `gt=0` said
    "Input should be greater than 0"); `fix` says what to write instead."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0 (got {format_duration(seconds)}){fix}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest way to write `seconds` back (for check output and logs)."""
    if 0 < seconds < 1:  # 0 is "0s", not "0ms"
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def is_duration(metadata: Iterable[Any]) -> bool:
    """Whether a field's metadata (pydantic's FieldInfo.metadata) makes it a duration."""
    durations = (parse_duration, more_than_zero)
    return any(isinstance(m, BeforeValidator) and m.func in durations for m in metadata)


Duration = Annotated[float, BeforeValidator(parse_duration)]
# a timeout, an interval; Gt(0) never fails (more_than_zero refuses 0 first): it is what the
# generated reference (tools/config_reference.py) reads as the bound
PositiveDuration = Annotated[float, BeforeValidator(more_than_zero), Gt(0)]
