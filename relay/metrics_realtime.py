"""The Realtime feeds' metrics and the Realtime source's hooks, a part of relay's Metrics.

Each series is by feed (its key: `tags:…|24h`, `run:…`, `batch:…`); the follower's gauges are
shown only by the replica that follows the feed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

UP_TO_DATE = "relay_realtime_last_up_to_date_timestamp_seconds"

# why a request of a Realtime feed failed (the follower's reasons, relay.sources._answers' words
# and `other`): exposed at 0 for every configured feed
REALTIME_ERROR_REASONS = (
    "timeout", "network", "rate_limited", "server_error", "auth_error", "client_error", "other",
)  # fmt: skip


class RealtimeMetrics:
    """The Realtime part of Metrics (its base): made in `_realtime_metrics`, in the order
    /metrics lists them."""

    registry: CollectorRegistry

    def _realtime_metrics(self, r: CollectorRegistry) -> None:
        self.realtime_rows = Counter(
            "relay_realtime_rows_total",
            "Run rows received from Realtime feeds and submitted, by feed.",
            ["feed"],
            registry=r,
        )
        self.realtime_lag = Gauge(
            "relay_realtime_lag_seconds",
            "From the newest submitted row's updatedAt to its arrival, by feed; not shown from"
            " a failed request to the next up-to-date answer (unknown meanwhile).",
            ["feed"],
            registry=r,
        )
        self.realtime_following = Gauge(
            "relay_realtime_following",
            "1 while this process follows the Realtime feed (it holds the feed's lease), 0 while"
            " it does not (another replica does, or nobody), by feed.",
            ["feed"],
            registry=r,
        )
        self.realtime_up_to_date = Gauge(
            UP_TO_DATE,
            "When this process's follower of the feed last caught up with Trigger.dev (an"
            " up-to-date answer; before the first, when it started to follow), by feed.",
            ["feed"],
            registry=r,
        )
        self.realtime_held = Gauge(
            "relay_realtime_rows_held",
            "Runs the Realtime feed holds to merge Trigger.dev's partial updates (its unfinished"
            " runs and those finished within the hour), by feed.",
            ["feed"],
            registry=r,
        )
        self._feeds: set[str] = set()  # those configured() was last given
        self.realtime_errors = Counter(
            "relay_realtime_errors_total",
            "Realtime requests that failed (retried), by feed and reason.",
            ["feed", "reason"],
            registry=r,
        )

    def _configure_feeds(self, feeds: Iterable[str]) -> None:
        """configured()'s part: the running config's Realtime feeds, at 0."""
        for feed in feeds:  # RelayRealtimeFailing missed each feed's first failure
            self.realtime_rows.labels(feed=feed)
            self.realtime_following.labels(feed=feed)  # 0 unless its follower took the lease
            for reason in REALTIME_ERROR_REASONS:
                self.realtime_errors.labels(feed=feed, reason=reason)
        self._forget_feeds(set(feeds))

    def _forget_feeds(self, feeds: set[str]) -> None:
        """A feed a reload removed says nothing more of its following (a 0 would read as a feed
        nobody follows; a reload kept the feeds it kept followed); its counters stay."""
        for feed in self._feeds - feeds:
            for gauge in (self.realtime_following, *self._follower_gauges()):
                with contextlib.suppress(KeyError):
                    gauge.remove(feed)
        self._feeds = feeds

    def _follower_gauges(self) -> tuple[Gauge, ...]:  # only the follower's replica shows them
        return (self.realtime_lag, self.realtime_up_to_date, self.realtime_held)

    def realtime_batch(self, feed: str, rows: int, lag_s: float | None, held: int) -> None:
        """The Realtime source's hook: one call per up-to-date answer (rows submitted, or none:
        caught up, lag 0), with the rows the feed holds after it."""
        self.realtime_rows.labels(feed=feed).inc(rows)
        self.realtime_held.labels(feed=feed).set(held)
        self.realtime_up_to_date.labels(feed=feed).set(time.time())
        if lag_s is None:
            self._unknown_lag(feed)
        else:
            self.realtime_lag.labels(feed=feed).set(max(lag_s, 0.0))

    def realtime_followed(self, feed: str) -> None:
        """The Realtime source's hook: this process follows the feed. Not caught up yet, it shows
        since when (RelayRealtimeStalled then fires for a feed that never is: a refused key)."""
        self.realtime_following.labels(feed=feed).set(1)
        if self.registry.get_sample_value(UP_TO_DATE, {"feed": feed}) is None:
            self.realtime_up_to_date.labels(feed=feed).set(time.time())

    def realtime_unfollowed(self, feed: str) -> None:
        """The Realtime source's hook: this process no longer follows `feed` (lease lost, feed
        removed by a reload, single run finished). Its lag was frozen at the last value, so a
        replica that lost the lease while behind kept RelayRealtimeLagging firing for good;
        so was when it last caught up and how many rows it held, which only the follower's
        replica can say."""
        self.realtime_following.labels(feed=feed).set(0)
        for gauge in self._follower_gauges():
            with contextlib.suppress(KeyError):
                gauge.remove(feed)

    def realtime_error(self, feed: str, reason: str) -> None:
        """The Realtime source's hook: one call per failed request. The feed's lag is unknown
        from then until its next up-to-date answer: kept at its last value, a feed whose
        server was down showed the healthy lag it had before, for as long as the outage
        lasted. Not exported meanwhile (as Prometheus' own exporters leave out what they
        cannot read, rather than a NaN or a stale value); RelayRealtimeFailing and
        RelayRealtimeStalled tell of the outage."""
        self.realtime_errors.labels(feed=feed, reason=reason).inc()
        self._unknown_lag(feed)

    def _unknown_lag(self, feed: str) -> None:
        with contextlib.suppress(KeyError):
            self.realtime_lag.remove(feed)
