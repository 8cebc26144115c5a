"""A silence as the API and the CLI take and show it: new_silence validates one, silence_from
reads one from its JSON fields, parse_time its times; silence_view is its JSON face."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from relay.errors import InputError
from relay.model import Silence
from relay.run_values import iso, to_utc
from relay.silences.matchers import MAX_TEXT, parse_matchers

YEAR_10000 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1  # none shown from
# the last epoch second a float holds in year 9999: its last microseconds round up to YEAR_10000
LAST_INSTANT = math.nextafter(YEAR_10000, 0.0)


def new_silence(
    matchers: dict[str, tuple[str, ...]],
    *,
    ends_at: float,
    now: float,
    starts_at: float | None = None,
    comment: str = "",
    created_by: str = "",
    ident: str | None = None,
    created_at: float | None = None,
) -> Silence:
    """A validated silence (`ident`, else a new id; created `created_at`, else `now`);
    InputError when its times make no sense."""
    start = now if starts_at is None else starts_at
    if ends_at <= now:  # first: without starts_at, "after starts_at" would name a field not sent
        raise InputError("ends_at", "must be in the future")
    if ends_at <= start:
        raise InputError("ends_at", "must be after starts_at")
    if ends_at >= YEAR_10000:  # `--start 9999-12-31 -d 2d`: listing it would fail for every silence
        raise InputError("ends_at", "time out of range (years 1-9999 in UTC)")
    if len(comment) > MAX_TEXT or len(created_by) > MAX_TEXT:
        raise InputError("comment", f"comment and created_by are limited to {MAX_TEXT} characters")
    for field, text in (("comment", comment), ("created_by", created_by)):
        if "\x00" in text:  # PostgreSQL text holds none: the answer and later reads would differ
            raise InputError(field, "must not contain a NUL character (\\u0000)")
    ident = ident or "sil_" + secrets.token_hex(8)
    created = now if created_at is None else min(created_at, now)
    return Silence(ident, matchers, start, ends_at, created, comment, created_by)


SILENCE_FIELDS = ("matchers", "starts_at", "ends_at", "comment", "created_by")
# an Alertmanager silence given as it is (`startsAt`, `endsAt`, `createdBy`) was only "unknown
# field": the names relay takes, in the API's snake_case
UNKNOWN_SILENCE_FIELD = (
    "unknown field; use matchers, starts_at, ends_at, comment, created_by"
    " (Alertmanager's startsAt, endsAt and createdBy are written so here)"
)


def silence_from(
    data: Mapping[str, Any], now: float, ident: str | None = None, created_at: float | None = None
) -> Silence:
    """A silence from its JSON fields (SILENCE_FIELDS: POST /v1/silences' body, an item of
    `relay silence import`); InputError naming the field that is wrong."""
    if "ends_at" not in data:
        raise InputError("ends_at", "required field is missing")
    starts = data.get("starts_at")
    for field in ("comment", "created_by"):
        if not isinstance(data.get(field, ""), str):
            raise InputError(field, "expected a string")
    return new_silence(
        parse_matchers(data.get("matchers")),
        ends_at=parse_time(data["ends_at"], "ends_at"),
        starts_at=None if starts is None else parse_time(starts, "starts_at"),
        now=now,
        comment=data.get("comment", ""),
        created_by=data.get("created_by", ""),
        ident=ident,
        created_at=created_at,
    )


def parse_time(value: Any, field: str) -> float:
    """Epoch seconds from an ISO-8601 string (Z or offset; naive means UTC). RFC 3339 (the
    OpenAPI `date-time`) also allows a lower-case `z`."""
    if not isinstance(value, str):
        raise InputError(field, "expected an ISO-8601 time like 2026-11-28T18:00:00Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(field, "expected an ISO-8601 time like 2026-11-28T18:00:00Z") from None
    try:
        seconds = to_utc(when).timestamp()  # in UTC's years 1-9999, so it can be shown again
    except ValueError:
        raise InputError(field, "time out of range (years 1-9999 in UTC)") from None
    return min(seconds, LAST_INSTANT)  # 9999-12-31T23:59:59.999999Z is year 9999's, not 10000's


def silence_view(silence: Silence, now: float) -> dict[str, Any]:
    """The public JSON face of a silence (API and `relay silence list --json`)."""

    def when(ts: float) -> str | None:  # one stored by an older relay may end past year 9999
        return iso(datetime.fromtimestamp(min(ts, LAST_INSTANT), UTC))

    return {
        "id": silence.id,
        "matchers": {k: list(v) for k, v in silence.matchers.items()},
        "starts_at": when(silence.starts_at),
        "ends_at": when(silence.ends_at),
        "created_at": when(silence.created_at),
        "comment": silence.comment,
        "created_by": silence.created_by,
        "state": silence.state(now),
    }
