"""retry.max_age: a notification is dead once max_age has passed, not at the failure whose next
backoff would pass it (SPEC §5: "after the configured attempts or age ... dead")."""

from __future__ import annotations

import random

from relay.config import RetryPolicy
from relay.errors import DeliveryError
from relay.policy import Outcome, after_failure

NOW = 1_796_000_000.0
DOWN = DeliveryError("server_error", retryable=True, status=503)


def failed(attempts: int, now: float, policy: RetryPolicy, error: DeliveryError = DOWN) -> Outcome:
    return after_failure(
        error, attempts=attempts, created_at=NOW, now=now, policy=policy, rng=random.Random(7)
    )


def test_a_backoff_past_max_age_gets_a_last_try_as_max_age_ends() -> None:
    """max_age 3s, min_backoff 4s: the failure at 1 s was the end, and a receiver back at 2 s
    never got the notification. Now one more try goes just before 3 s."""
    policy = RetryPolicy(max_attempts=10, max_age=3.0, min_backoff=4.0, max_backoff=8.0)
    outcome = failed(1, NOW + 1.0, policy)
    assert not outcome.dead
    assert NOW + 2.9 <= outcome.not_before < NOW + 3.0
    assert outcome.wait == outcome.not_before - (NOW + 1.0)


def test_the_last_try_failing_is_the_end() -> None:
    policy = RetryPolicy(max_attempts=10, max_age=3.0, min_backoff=4.0, max_backoff=8.0)
    last = failed(1, NOW + 1.0, policy)
    after = failed(2, last.not_before + 0.01, policy)
    assert (after.dead, after.why) == (True, "too old")


def test_the_last_try_leads_max_age_by_a_second_at_most() -> None:
    policy = RetryPolicy(max_attempts=100, max_age=24 * 3600.0, max_backoff=3600.0)
    outcome = failed(30, NOW + 23.5 * 3600, policy)
    assert not outcome.dead and outcome.not_before == NOW + 24 * 3600 - 1.0


def test_a_retry_after_past_what_is_left_is_still_dead_at_once() -> None:
    policy = RetryPolicy(max_attempts=10, max_age=3.0, min_backoff=4.0, max_backoff=8.0)
    limited = DeliveryError("rate_limited", retryable=True, status=429, retry_after=60.0)
    assert failed(1, NOW + 1.0, policy, limited).dead


def test_a_backoff_within_max_age_is_unchanged() -> None:
    policy = RetryPolicy(max_attempts=10, max_age=3600.0, min_backoff=1.0, max_backoff=2.0)
    outcome = failed(1, NOW + 1.0, policy)
    assert not outcome.dead and NOW + 1.5 <= outcome.not_before <= NOW + 2.0


def test_a_last_try_as_the_receiver_s_wait_ends_is_made() -> None:
    """A Retry-After that ends exactly at the last try (max_age less a second) lets it go: the
    receiver asked for no request before then, not for none at then."""
    policy = RetryPolicy(max_attempts=10, max_age=100.0, min_backoff=20.0, max_backoff=40.0)
    limited = DeliveryError("rate_limited", retryable=True, status=429, retry_after=9.0)
    outcome = failed(1, NOW + 90.0, policy, limited)
    assert (outcome.dead, outcome.not_before, outcome.wait) == (False, NOW + 99.0, 9.0)


def test_a_failure_just_before_the_last_try_still_gets_it() -> None:
    """No Retry-After asks for a wait: a failure half a second before the last try (max_age
    3 s, the last try at 2.97 s) still gets that try, not "too old" at 2.5 s."""
    policy = RetryPolicy(max_attempts=10, max_age=3.0, min_backoff=4.0, max_backoff=8.0)
    outcome = failed(2, NOW + 2.5, policy)
    assert (outcome.dead, outcome.not_before) == (False, NOW + 3.0 - 0.03)
