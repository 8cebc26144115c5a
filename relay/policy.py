"""Retry and throttle policy: pure functions and a token bucket, with time passed in.

This is the one place that decides how long to wait and when a notification is dead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.config import RateLimit, RetryPolicy
from relay.errors import DeliveryError

# In-process retries absorb blips (a reset connection, a 502 without Retry-After) without a
# round trip through the store; anything else goes back to the outbox.
QUICK_TRIES = 3
QUICK_MAX_WAIT_S = 2.0
LAST_TRY_LEAD_S = 1.0  # the last try before max_age ends goes at most this long before it


def backoff_s(attempts: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped at max_backoff."""
    base = min(policy.max_backoff, policy.min_backoff * 2.0 ** max(attempts - 1, 0))
    return float(base / 2 + rng.uniform(0, base / 2))


def lease_s(timeout_s: float, least_s: float) -> float:
    """How long a claim holds a row: at least `least_s`, and long enough for every quick try
    to run its whole `timeout_s` twice over (a lease that ends mid-send sends the row twice)."""
    return max(least_s, 2 * QUICK_TRIES * (timeout_s + QUICK_MAX_WAIT_S))


def quick_wait_s(tries: int, error: DeliveryError | None, rng: random.Random) -> float:
    """Wait before in-process try number `tries + 1`: short jittered backoff or Retry-After."""
    jittered = min(QUICK_MAX_WAIT_S, 0.1 * 2.0 ** (tries - 1)) * rng.uniform(0.5, 1.0)
    if error is not None and error.retry_after is not None:
        return float(max(error.retry_after, jittered))
    return float(jittered)


def quick_budget(attempts: int, max_attempts: int) -> int:
    """Tries a send may make in a row, in process: up to QUICK_TRIES on its first round, for
    a blip; one on each later round. A notification back from the outbox failed its quick
    tries already: three more within a second tell nothing new, and spending three of
    `max_attempts` a round made a Slack outage of ~4 minutes kill every notification it held
    (12 attempts: four rounds of 2 s, 16 s, 2 min), where a timeout, tried once a round, got
    15-30 minutes. A replay starts its attempts from 0 and gets its quick round again.
    Quick tries take at most a quarter of `max_attempts` (3 of the default 12): with
    `max_attempts: 3` they were all three, within 0.3 s, and a receiver restarting for a
    second made the notification dead before its backoff was ever waited."""
    if attempts > 0:
        return 1
    return max(1, min(QUICK_TRIES, max_attempts // 4))


def is_blip(error: DeliveryError) -> bool:
    """Worth an immediate in-process retry: transient, and the receiver asked for no wait.

    A Retry-After (however short) is honoured through the outbox (`not_before`), not by a
    sleep in process: a kill -9 forgets an in-memory wait, and the restarted relay would
    retry sooner than the receiver asked. A rate limit without one (HTTP 429, SMTP 421: "slow
    down", "closing, try later") is no blip either: it gets the backoff, not two more tries
    within a quarter of a second, which also spent three of `max_attempts` at once. Nor is an
    SMTP 4xx (`later`: greylisting, a full mailbox, "4.7.1 slow down"): the same answer came
    back within a second, and a few minutes of it made the mail dead (each round spent three
    attempts); RFC 5321 4.5.4.1 wants a sender to delay its retry after one.
    """
    if not error.retryable or error.later or error.reason in ("timeout", "rate_limited"):
        return False
    return not error.retry_after


@dataclass(frozen=True)
class Outcome:
    """What to do after a failed attempt: retry at `not_before`, `wait` seconds after the
    failure was judged, or dead with `reason`."""

    dead: bool
    not_before: float = 0.0
    why: str = ""
    wait: float = 0.0


def after_failure(
    error: DeliveryError,
    *,
    attempts: int,
    created_at: float,
    now: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    if not error.retryable:
        return Outcome(dead=True, why="permanent")
    if attempts >= policy.max_attempts:
        return Outcome(dead=True, why="attempts exhausted")
    backoff = backoff_s(attempts, policy, rng)
    wait = max(backoff, error.retry_after or 0.0)
    if now + wait - created_at > policy.max_age:
        if now + backoff - created_at <= policy.max_age:  # only the receiver's wait is too long
            return Outcome(dead=True, why=f"Retry-After {wait:.0f}s is past max_age")
        return last_try(now, created_at, policy.max_age, error.retry_after or 0.0)
    return Outcome(dead=False, not_before=now + wait, wait=wait)


def last_try(now: float, created_at: float, max_age: float, retry_after: float) -> Outcome:
    """When the backoff would pass max_age: one last try as max_age ends, dead after it. A
    notification went dead at the failure whose next try fell past max_age: with max_age 3s,
    at 1 s, and a receiver back at 2 s never got it. The try goes a little before the end (1 %
    of max_age, at most a second), as a row whose turn comes past max_age is dead unsent."""
    at = created_at + max_age - min(LAST_TRY_LEAD_S, max_age / 100)
    if at <= now or at < now + retry_after:
        return Outcome(dead=True, why="too old")
    return Outcome(dead=False, not_before=at, wait=at - now)


class TokenBucket:
    """Rate limit that delays, never drops: reserve() says how long to wait for a token."""

    def __init__(self, limit: RateLimit) -> None:
        per_s = (limit.per_second or 0.0) + (limit.per_minute or 0.0) / 60.0
        self.rate = self._rate = per_s if per_s > 0 else float("inf")
        self.capacity = self._capacity = float(limit.burst or 1)
        self.replicas = 1
        self._tokens = self.capacity
        self._at: float | None = None

    def share(self, replicas: int) -> bool:
        """Take a `replicas`-th of the rate and of the burst (one request's at least): the
        replicas delivering the channel send at its rate together. Whether the share changed."""
        if replicas == self.replicas or replicas < 1 or self._rate == float("inf"):
            return False  # no rate (a burst alone) takes no share
        self.replicas = replicas
        self.rate = self._rate / replicas
        self.capacity = max(self._capacity / replicas, 1.0)
        self._tokens = min(self._tokens, self.capacity)
        return True

    def reserve(self, now: float) -> float:
        """Take one token; return the seconds to wait before using it (0 if available now)."""
        if self._at is not None:  # a wall clock stepped back adds nothing, takes nothing
            elapsed_s = max(now - self._at, 0.0)
            self._tokens = min(self.capacity, self._tokens + elapsed_s * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def give_back(self) -> None:
        """Return the token of a request not made after all (the channel was held)."""
        self._tokens = min(self.capacity, self._tokens + 1.0)


class Hold:
    """A channel's pause after a receiver's Retry-After: Slack, Discord, Teams and GitHub mean
    it as "no request before then" for the whole app, workspace or webhook, not the one
    message, and calls made meanwhile are refused too (each spending an attempt) and prolong
    the limit. Per process and per channel, as the token bucket; relay.holds keeps it for the
    processes after this one."""

    def __init__(self) -> None:
        self.until = 0.0
        self._set_at = 0.0

    def extend(self, now: float, seconds: float) -> bool:
        """Hold until `now + seconds` at least; whether the channel was free until now."""
        return self.extend_to(now, now + seconds)

    def extend_to(self, now: float, until: float) -> bool:
        """Hold until `until` at least (a stored hold's end, exactly as stored); whether the
        channel was free until now."""
        began = self.left_s(now) <= 0
        if until > self.until:
            self.until, self._set_at = until, now
        return began

    def holds(self, now: float) -> bool:
        """Whether the hold lasts still (left_s above 0), without its arithmetic."""
        return self.until > now and self.until > self._set_at

    def left_s(self, now: float) -> float:
        """Seconds the hold lasts still: never more than it was set for (a wall clock stepped
        back holds no longer for it)."""
        return max(min(self.until - now, self.until - self._set_at), 0.0)


# Answers that say the receiver is down or refusing everyone, whatever the message: a 500 may be
# one message's own problem (a body the receiver chokes on), these are not.
_DOWN_REASONS = frozenset({"timeout", "network", "rate_limited"})
_DOWN_STATUSES = frozenset({502, 503, 504})


class Outage:
    """A receiver's failed sends since its last success. Two notifications or more failing in
    a row, each with an answer that says the receiver is down (a timeout, a refused
    connection, 502/503/504, a rate limit), are an outage, which that success ends. Not a 500
    or one notification alone: a message the receiver chokes on would be pulled forward at
    every other success, its attempts spent within a minute. Per process and per channel, as
    the hold."""

    def __init__(self) -> None:
        self._failed: set[str] = set()

    def failed(self, notification_id: str, error: DeliveryError) -> None:
        down = error.reason in _DOWN_REASONS or error.status in _DOWN_STATUSES
        if down and error.retryable and not error.local and len(self._failed) < 2:
            self._failed.add(notification_id)

    def ended(self) -> bool:
        """A send succeeded: whether it ends an outage."""
        over = len(self._failed) >= 2
        self._failed.clear()
        return over
