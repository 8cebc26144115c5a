"""Retry-After, as HTTP servers send it (RFC 9110 §10.2.3): seconds or an HTTP date."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC

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
