"""Retry-After, as HTTP servers send it (RFC 9110 §10.2.3): seconds or an HTTP date."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC
from typing import Any

MAX_RETRY_AFTER_S = 24 * 3600.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # asctime and `-0000` dates carry no zone: HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):  # "inf", "1e999", "nan": no number of seconds, no header
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def body_retry_after(value: Any) -> float | None:
    """Seconds to wait from a 429 body's `retry_after` (Discord's, Telegram's: a JSON number,
    not a header), None when it is no finite number; within what a header may ask."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
