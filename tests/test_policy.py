"""relay.policy's decisions at their edges: when a failed notification is dead and why, how
the backoff grows, how a hold and the rate limit's bucket count time. Mutation testing found
each of these boundaries unchecked: flipping its comparison left every test passing."""

from __future__ import annotations

import random

import pytest

from relay.config import RateLimit, RetryPolicy
from relay.errors import DeliveryError
from relay.policy import (
    Hold,
    Outage,
    TokenBucket,
    after_failure,
    backoff_s,
    is_blip,
    lease_s,
    quick_budget,
    quick_wait_s,
)

NOW = 1_700_000_000.0
POLICY = RetryPolicy(max_attempts=5, max_age=3600.0, min_backoff=10.0, max_backoff=80.0)
BLIP = DeliveryError("network", retryable=True)


class _Highest(random.Random):
    """Jitter at its top: a backoff of exactly its base."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _after(
    error: DeliveryError, *, attempts: int = 1, age_s: float = 0.0, rng: random.Random | None = None
) -> tuple[bool, str]:
    outcome = after_failure(
        error,
        attempts=attempts,
        created_at=NOW - age_s,
        now=NOW,
        policy=POLICY,
        rng=rng or random.Random(7),
    )
    return outcome.dead, outcome.why


def test_the_last_attempt_is_the_one_max_attempts_allows() -> None:
    """max_attempts 5: the fourth failure retries, the fifth is the last."""
    assert _after(BLIP, attempts=4) == (False, "")
    assert _after(BLIP, attempts=5) == (True, "attempts exhausted")


def test_a_permanent_failure_is_dead_at_its_first_attempt() -> None:
    assert _after(DeliveryError("client_error", retryable=False, status=400)) == (
        True,
        "permanent",
    )


def test_a_retry_due_exactly_at_max_age_is_still_made() -> None:
    """max_age is the age past which a notification is dead: a Retry-After that lands on it
    exactly keeps it."""
    asked = DeliveryError("rate_limited", retryable=True, retry_after=600.0)
    assert _after(asked, age_s=3000.0) == (False, "")
    assert _after(asked, age_s=3000.5) == (True, "Retry-After 600s is past max_age")


def test_a_notification_whose_backoff_outlives_max_age_is_too_old() -> None:
    """Not the receiver's wait: the notification's own age is the cause, and the dead letter
    says so rather than blaming a Retry-After it never got."""
    assert _after(BLIP, age_s=3599.0) == (True, "too old")


def test_the_receiver_s_wait_is_blamed_when_the_backoff_lands_exactly_on_max_age() -> None:
    asked = DeliveryError("rate_limited", retryable=True, retry_after=20.0)
    assert _after(asked, age_s=3590.0, rng=_Highest()) == (
        True,
        "Retry-After 20s is past max_age",
    )


def test_a_failure_without_retry_after_waits_its_backoff_alone() -> None:
    """No Retry-After adds no wait of its own: a 100 ms backoff stays 100 ms or less."""
    outcome = after_failure(
        BLIP,
        attempts=1,
        created_at=NOW,
        now=NOW,
        policy=RetryPolicy(min_backoff=0.1, max_backoff=0.2),
        rng=_Highest(),
    )
    assert (outcome.dead, outcome.wait, outcome.not_before) == (False, 0.1, NOW + 0.1)


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 5.0, 10.0), (2, 10.0, 20.0), (3, 20.0, 40.0), (4, 40.0, 80.0), (9, 40.0, 80.0)],
)
def test_the_backoff_doubles_per_attempt_up_to_max_backoff_half_of_it_jitter(
    attempts: int, low: float, high: float
) -> None:
    """min_backoff 10 s doubling, capped at max_backoff 80 s; half fixed, half random."""
    waits = [backoff_s(attempts, POLICY, random.Random(seed)) for seed in range(200)]
    assert low <= min(waits) < low + (high - low) / 10
    assert high - (high - low) / 10 < max(waits) <= high


@pytest.mark.parametrize(
    ("tries", "low", "high"), [(1, 0.05, 0.1), (2, 0.1, 0.2), (3, 0.2, 0.4), (9, 1.0, 2.0)]
)
def test_a_quick_retry_waits_a_tenth_of_a_second_doubling_up_to_two(
    tries: int, low: float, high: float
) -> None:
    """In-process retries of a blip: 100 ms doubling per try, capped at 2 s, jittered down to
    half; a Retry-After of 0 (a blip) asks for no less than that."""
    for error in (BLIP, None, DeliveryError("network", retryable=True, retry_after=0.0)):
        waits = [quick_wait_s(tries, error, random.Random(seed)) for seed in range(200)]
        assert low <= min(waits) < low * 1.1
        assert high * 0.9 < max(waits) <= high


def test_a_quick_retry_waits_at_least_a_retry_after() -> None:
    asked = DeliveryError("server_error", retryable=True, retry_after=1.5)
    assert quick_wait_s(1, asked, random.Random(1)) == 1.5


def test_a_lease_outlasts_every_quick_try_twice_over() -> None:
    """Three tries of a 10 s timeout, each followed by at most 2 s of waiting, twice: 72 s."""
    assert lease_s(10.0, 60.0) == 72.0
    assert lease_s(1.0, 60.0) == 60.0


def test_a_hold_says_whether_it_began_and_never_shortens() -> None:
    hold = Hold()
    assert hold.extend(100.0, 5.0)  # free until now: the hold begins
    assert not hold.extend(101.0, 2.0)  # held already; a shorter wait keeps the longer
    assert hold.left_s(101.0) == 4.0
    assert not hold.extend(104.0, 10.0)  # a longer one extends it
    assert hold.left_s(110.0) == 4.0
    assert hold.left_s(114.0) == 0.0
    assert hold.holds(113.9) and not hold.holds(114.0)  # holds(): left_s above 0, cheaper
    assert not Hold().holds(0.0)
    assert hold.extend(114.0, 1.0)  # over exactly at its end: a new hold begins
    assert not hold.extend(114.5, 0.5)  # ends when it did: still held from 114
    assert hold.left_s(0.0) == 1.0


def test_a_hold_lasts_no_longer_when_the_wall_clock_steps_back() -> None:
    hold = Hold()
    hold.extend(1000.0, 30.0)
    assert hold.left_s(400.0) == 30.0  # stepped back ten minutes: still 30 s at most
    assert hold.holds(400.0) and not hold.holds(1030.0)


def test_a_hold_set_to_end_before_now_holds_nothing_when_the_clock_steps_back() -> None:
    """A stored hold's end, already past when read at 100, held at 50 (a clock stepped back)
    while left_s said 0: holds() is left_s above 0."""
    hold = Hold()
    assert hold.extend_to(100.0, 90.0)
    assert hold.left_s(50.0) == 0.0 and not hold.holds(50.0)


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "budget"),
    [
        (0, 12, 3),  # a first round: QUICK_TRIES
        (0, 8, 2),  # a quarter of max_attempts at most
        (0, 7, 1),
        (0, 3, 1),  # and one at least
        (0, 1, 1),
        (1, 12, 1),  # back from the outbox: one a round
        (5, 12, 1),
    ],
)
def test_the_quick_tries_of_a_round(attempts: int, max_attempts: int, budget: int) -> None:
    assert quick_budget(attempts, max_attempts) == budget


def test_the_bucket_gives_its_burst_then_spaces_tokens_at_the_rate() -> None:
    bucket = TokenBucket(RateLimit(per_second=2.0, burst=2))
    assert [bucket.reserve(10.0), bucket.reserve(10.0)] == [0.0, 0.0]
    assert bucket.reserve(10.0) == 0.5
    assert bucket.reserve(10.0) == 1.0
    assert bucket.reserve(12.0) == 0.0  # 2 s refilled the debt, and the burst
    assert bucket.reserve(12.0) == 0.0
    bucket.give_back()
    assert bucket.reserve(12.0) == 0.0
    assert bucket.reserve(12.0) == 0.5
    assert bucket.reserve(13.25) == 0.0  # 1.25 s: 2.5 tokens for a debt of 1, half one left


def test_a_bucket_without_a_rate_never_waits() -> None:
    bucket = TokenBucket(RateLimit())
    assert [bucket.reserve(5.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_the_bucket_adds_per_minute_to_per_second() -> None:
    bucket = TokenBucket(RateLimit(per_second=1.0, per_minute=60.0))
    assert bucket.reserve(0.0) == 0.0
    assert bucket.reserve(0.0) == 0.5
    alone = TokenBucket(RateLimit(per_minute=60.0))
    assert [alone.reserve(0.0), alone.reserve(0.0)] == [0.0, 1.0]


def test_a_bucket_shared_by_replicas_takes_its_share_of_rate_and_burst() -> None:
    bucket = TokenBucket(RateLimit(per_second=6.0, burst=6))
    assert bucket.share(3) and (bucket.rate, bucket.capacity) == (2.0, 2.0)
    assert not bucket.share(3)  # the same share: nothing changed
    assert [bucket.reserve(0.0), bucket.reserve(0.0), bucket.reserve(0.0)] == [0.0, 0.0, 0.5]
    assert bucket.share(12) and (bucket.rate, bucket.capacity) == (0.5, 1.0)  # one at least
    assert bucket.share(1) and (bucket.rate, bucket.capacity) == (6.0, 6.0)
    assert not bucket.share(0)
    burst_only = TokenBucket(RateLimit(burst=4))  # no rate to share: it never waits
    assert not burst_only.share(2) and burst_only.capacity == 4.0


def test_the_bucket_refills_nothing_when_the_wall_clock_steps_back() -> None:
    bucket = TokenBucket(RateLimit(per_second=1.0))
    assert bucket.reserve(100.0) == 0.0
    assert bucket.reserve(40.0) == 1.0  # a minute back: no refill, and no minute of debt
    assert bucket.reserve(40.0) == 2.0


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_bad_gateway_or_gateway_timeout_says_the_receiver_is_down(status: int) -> None:
    outage = Outage()
    for ident in ("ntf_a", "ntf_b"):
        outage.failed(ident, DeliveryError("server_error", retryable=True, status=status))
    assert outage.ended()


def test_a_local_failure_or_a_permanent_one_is_no_outage() -> None:
    """relay's own failure (no file descriptor left) says nothing of the receiver, and a
    receiver refusing for good is not down."""
    for error in (
        DeliveryError("network", retryable=True, local=True),
        DeliveryError("server_error", retryable=False, status=503),
    ):
        outage = Outage()
        outage.failed("ntf_a", error)
        outage.failed("ntf_b", error)
        assert not outage.ended()


def test_only_a_transient_failure_with_no_wait_asked_is_a_blip() -> None:
    assert is_blip(BLIP)
    assert is_blip(DeliveryError("server_error", retryable=True, status=502, retry_after=0.0))
    assert not is_blip(DeliveryError("server_error", retryable=True, retry_after=1.0))
    assert not is_blip(DeliveryError("timeout", retryable=True))
    assert not is_blip(DeliveryError("rate_limited", retryable=True, status=429))
    assert not is_blip(DeliveryError("server_error", retryable=True, later=True))
    assert not is_blip(DeliveryError("client_error", retryable=False, status=400))
