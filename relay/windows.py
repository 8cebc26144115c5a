"""Time windows and inhibition: their config models and pure evaluation (time passed in).

time_intervals follow Alertmanager: a named list of intervals, each the AND of optional
`times` (HH:MM ranges, end exclusive, 24:00 allowed), `weekdays` (names or ranges like
monday:friday), `days_of_month` (1..31, negative from the month's end, ranges), `months`
(names or numbers, ranges), `years`, evaluated in `location` (an IANA time zone, UTC by
default). A notification created while a rule's mute interval holds (or outside all of its
active intervals) is recorded as muted, like a silence: it is kept in the history, never sent.

inhibit_rules: an update matching `source_match` (silence-style matchers: event, status, task,
tag, rule, channel) suppresses, for `duration`, notifications whose run matches `target_match`
and agrees with the source on every `equal` field (dotted paths in the run). With
`source_digest: {rule, min_count}` instead, the source is a pile-up: `min_count` runs that the
digest rule `rule` matched, agreeing on `equal`, within `duration` (relay.inhibition).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relay.durations import PositiveDuration, more_than_zero
from relay.errors import InputError
from relay.silences.matchers import parse_matchers

SOURCE_UNKNOWN = ("rule", "channel")  # matchers a source update cannot be held to

WEEKDAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
MONTHS = [m.lower() for m in calendar.month_name][1:]
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeRange(_Strict):
    start_time: str
    end_time: str

    @field_validator("start_time", "end_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _TIME.match(value):
            raise ValueError("expected HH:MM (00:00 to 24:00)")
        return value

    def model_post_init(self, context: Any) -> None:
        start, end = self.start_time, self.end_time
        if _minutes(end) < _minutes(start):  # 22:00-06:00, which Alertmanager refuses too
            raise ValueError(
                f"end_time {end} comes before start_time {start}: a range does not run past"
                f" midnight; split it in two, {start} to 24:00 and 00:00 to {end}"
            )
        if _minutes(end) == _minutes(start):
            raise ValueError("end_time must be after start_time")


class TimeInterval(_Strict):
    times: list[TimeRange] | None = None
    weekdays: list[str] | None = None
    days_of_month: list[str] | None = None
    months: list[str] | None = None
    years: list[str] | None = None
    location: str = "UTC"

    @field_validator("days_of_month", "months", "years", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        """`years: [2026]`, `days_of_month: [1, -1]`: YAML numbers, read as Alertmanager does."""
        if isinstance(value, list):
            return [_text(item) for item in value]
        return value

    @field_validator("weekdays")
    @classmethod
    def _weekdays(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            _ordered(_weekday_range(item), item, "day")
        return value

    @field_validator("days_of_month")
    @classmethod
    def _days(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            _day_range(item)
        return value

    @field_validator("months")
    @classmethod
    def _months(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            _ordered(_range(item, lambda v: _named(v, MONTHS, 1), "month"), item, "month")
        return value

    @field_validator("years")
    @classmethod
    def _years(cls, value: list[str] | None) -> list[str] | None:
        for item in value or ():
            _ordered(_range(item, _year, "year"), item, "year")
        return value

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        try:
            _wall_clock(0, value)
        # OSError: a folder of the zone database (`America`), a name too long for a file
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                "unknown time zone; use an IANA name like Europe/Berlin, or Local"
            ) from None
        return value

    def contains(self, now: float) -> bool:
        local = _wall_clock(now, self.location)
        return (
            _any_range(self.times, lambda r: _in_time(r, local))
            and _any_weekday(self.weekdays, local)
            and _any_day(self.days_of_month, local)
            and _any_item(self.months, lambda v: _named(v, MONTHS, 1), "month", local.month)
            and _any_item(self.years, _year, "year", local.year)
        )


class NamedTimeInterval(_Strict):
    name: str = Field(min_length=1)
    time_intervals: list[TimeInterval] = Field(min_length=1)

    def contains(self, now: float) -> bool:
        return any(interval.contains(now) for interval in self.time_intervals)


class DigestSource(_Strict):
    """An inhibition source made of runs: `min_count` runs of the digest rule `rule` (same
    `equal` values) within the inhibit rule's `duration`."""

    rule: str = Field(min_length=1)
    min_count: int = Field(ge=1, le=1000)


class InhibitRule(_Strict):
    name: str = Field(min_length=1)
    source_match: dict[str, Any] | None = None
    source_digest: DigestSource | None = None
    close_match: dict[str, Any] | None = None  # updates that close a source_match's window
    target_match: dict[str, Any] = {"event": "run"}
    equal: list[str] = []
    # 0 was accepted: a window that closes as it opens, and no run counted: a rule that never
    # inhibits (a source_match window is held until now + duration)
    duration: PositiveDuration = 1800.0

    @field_validator("duration", mode="before")
    @classmethod
    def _some_time(cls, value: Any) -> float:
        return more_than_zero(value, ": a window of 0 never opens, so nothing would be inhibited")

    @field_validator("source_match", "close_match", "target_match")
    @classmethod
    def _matchers(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            try:
                parse_matchers(value)
            except InputError as exc:
                raise ValueError(f"{exc.field}: {exc.message}") from None
        return value

    @field_validator("source_match", "close_match")
    @classmethod
    def _source_known(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """A source is an update, before any rule or channel: with nothing else to fit, every
        update would be a source (`{}` failed every intake), and never muted by its own rule.
        So is an update that closes a window."""
        if value is not None and not set(value) - set(SOURCE_UNKNOWN):
            raise ValueError(
                "needs at least one of event, status, task, tag"
                " (rule and channel are not known for a source)"
            )
        return value

    def model_post_init(self, context: Any) -> None:
        if (self.source_match is None) == (self.source_digest is None):
            raise ValueError("an inhibit rule needs exactly one of source_match, source_digest")
        if self.close_match is not None and self.source_digest is not None:
            raise ValueError(
                "close_match closes the window a source_match update opened; a source_digest"
                " window closes by itself when the pile-up is over"
            )


def _wall_clock(now: float, location: str) -> datetime:
    """`now` as read in `location`: an IANA name, or what Go's time.LoadLocation (so
    Alertmanager) also takes: "Local", this machine's time zone, and "", UTC."""
    if location == "Local":
        return datetime.fromtimestamp(now)
    return datetime.fromtimestamp(now, ZoneInfo(location or "UTC"))


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _named(value: str, names: list[str], first: int) -> int:
    text = value.strip().lower()
    if text in names:
        return names.index(text) + first
    if text.isdigit() and first == 1 and 1 <= int(text) <= len(names):
        return int(text)
    raise ValueError(f"unknown name {value!r}")


def _weekday_range(item: str) -> tuple[int, int]:
    """Sunday 0 to saturday 6, Alertmanager's week: `sunday:monday` is those two days. A range
    that ends on sunday (`saturday:sunday`, which Alertmanager refuses) reads it as 7, the day
    after saturday."""
    low, high = _range(item, lambda v: _named(v, WEEKDAYS, 0), "weekday")
    return low, 7 if high == 0 < low else high


def _day(value: str) -> int:
    day = int(value)
    if day == 0 or not -31 <= day <= 31:
        raise ValueError(value)
    return day


def _year(value: str) -> int:
    year = int(value)
    if not 1970 <= year <= 9999:
        raise ValueError(value)
    return year


# what each item may be, said with the one refused (`invalid year '1969'` alone left it a guess)
_VALID = {
    "weekday": "sunday to saturday, or a range of them (monday:friday)",
    "day of month": "1 to 31, or -31 to -1 counting from the month's end",
    "month": "january to december or 1 to 12, or a range of them",
    "year": "1970 to 9999, or a range of them",
}


def _range(item: str, parse: Any, what: str) -> tuple[int, int]:
    try:
        low, colon, high = item.partition(":")
        first = parse(low)
        return first, parse(high) if colon else first
    except ValueError:
        raise ValueError(f"invalid {what} {item!r}: {_VALID[what]}") from None


def _text(item: Any) -> Any:
    return str(item) if isinstance(item, int) and not isinstance(item, bool) else item


def _ordered(bounds: tuple[int, int], item: str, what: str) -> None:
    """A range whose end comes before its start would never hold (no wrap-around, as in
    Alertmanager): refused, with a hint to split it."""
    if bounds[0] > bounds[1]:
        raise ValueError(
            f"invalid range {item!r}: the end {what} comes before the start;"
            " split a range that wraps around in two"
        )


def _day_range(item: str) -> None:
    """Alertmanager's checks: a negative start needs a negative end, and the range must be in
    order in a month of 28 days (the only order that holds in every month)."""
    low, high = _range(item, _day, "day of month")
    if low < 0 < high:
        raise ValueError(f"invalid range {item!r}: a negative start day needs a negative end day")
    in_february = [day if day > 0 else 28 + day + 1 for day in (low, high)]
    _ordered((in_february[0], in_february[1]), item, "day")


def _any_range(ranges: list[TimeRange] | None, test: Any) -> bool:
    return ranges is None or any(test(r) for r in ranges)


def _in_time(r: TimeRange, local: datetime) -> bool:
    minute = local.hour * 60 + local.minute
    return _minutes(r.start_time) <= minute < _minutes(r.end_time)


def _any_item(items: list[str] | None, parse: Any, what: str, value: int) -> bool:
    if items is None:
        return True
    for item in items:
        low, high = _range(item, parse, what)
        if low <= value <= high:
            return True
    return False


def _any_weekday(items: list[str] | None, local: datetime) -> bool:
    if items is None:
        return True
    day = local.isoweekday() % 7  # sunday 0, or 7 at the end of a range
    ranges = [_weekday_range(item) for item in items]
    return any(low <= d <= high for low, high in ranges for d in (day, day + 7))


def _any_day(items: list[str] | None, local: datetime) -> bool:
    if items is None:
        return True
    days_in_month = calendar.monthrange(local.year, local.month)[1]
    for item in items:
        low, high = _range(item, _day, "day of month")
        low = low if low > 0 else days_in_month + low + 1
        high = high if high > 0 else days_in_month + high + 1
        if low <= local.day <= high:
            return True
    return False
