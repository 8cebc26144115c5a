"""Retry-After in each form RFC 9110 §10.2.3 makes a recipient accept, whatever the local zone."""

from __future__ import annotations

import random
import time

import pytest

from relay.config import RetryPolicy
from relay.errors import DeliveryError
from relay.policy import after_failure
from relay.retry_after import body_retry_after, parse_retry_after

NOW = 1_796_000_000.0
IN_A_MINUTE = time.gmtime(NOW + 60)


@pytest.mark.parametrize(
    "fmt",
    [
        "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT",  # obsolete RFC 850
        "%a %b %e %H:%M:%S %Y",  # obsolete asctime: no zone, yet GMT
        "%a, %d %b %Y %H:%M:%S -0000",
    ],
)
def test_an_http_date_is_read_as_gmt_in_any_local_zone(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a zoneless date was read in the local zone: with TZ=America/New_York a receiver's
    "in a minute" became five hours, past max_age, and the notification went dead at once."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after(time.strftime(fmt, IN_A_MINUTE), NOW) == pytest.approx(60)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), ("-3", 0.0), ("soon", None), ("inf", None), ("1e999", None), ("-inf", None)],
)
def test_delta_seconds(value: str, seconds: float | None) -> None:
    """A value that is no number of seconds is as no header: "inf" was read as the 24 h cap,
    past a 1 h max_age, and the notification went dead at its first failure."""
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value", ["172800", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(NOW + 172800))]
)
def test_a_wait_past_a_day_is_capped_at_24_hours(value: str) -> None:
    """README: a Retry-After is capped at 24 h, in seconds or as a date two days away."""
    assert parse_retry_after(value, NOW) == 24 * 3600.0


def test_a_date_with_its_own_offset_is_read_in_it() -> None:
    """Only a date without a zone is GMT: a minute from now written at +01:00 is a minute, not
    an hour and a minute (a zone written is not replaced)."""
    local = time.strftime("%a, %d %b %Y %H:%M:%S +0100", time.gmtime(NOW + 3600 + 60))
    assert parse_retry_after(local, NOW) == pytest.approx(60)


def test_a_retry_outcome_carries_the_wait_it_decided() -> None:
    """The "will retry" line logged `not_before` less a clock read after the store's write: a
    receiver's Retry-After: 1 was logged `retry_in_s` 0.999 (test_failure_matrix failed on it).
    The outcome carries the wait it decided, which the line logs: never less than asked."""
    err = DeliveryError("rate_limited", retryable=True, retry_after=1.0)
    outcome = after_failure(
        err,
        attempts=1,
        created_at=NOW,
        now=NOW + 0.5,
        policy=RetryPolicy(min_backoff=0.1),
        rng=random.Random(1),
    )
    assert (outcome.dead, outcome.wait, outcome.not_before) == (False, 1.0, NOW + 1.5)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        (-3, 0.0),  # no wait before now
        (1e9, 24 * 3600.0),  # capped as a header is
        (True, None),  # JSON true is no number of seconds
        (float("nan"), None),
        ("5", None),  # Discord and Telegram send a number, not text
        (None, None),
    ],
)
def test_a_bodys_retry_after(value: object, seconds: float | None) -> None:
    assert body_retry_after(value) == seconds
