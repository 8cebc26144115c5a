"""Prometheus metrics: one registry per service (tests run several in one process).

Names follow Prometheus conventions (relay_..._total, _seconds). Reasons are the delivery
failure words of relay.errors.REASONS, so logs, dead letters and metrics use one vocabulary.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from relay import __version__
from relay.errors import REASONS
from relay.metrics_realtime import RealtimeMetrics
from relay.model import Notification
from relay.worker_procs import WorkerProcesses

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No `<name>_created` series beside each counter and histogram (prometheus-client's default):
# one series more per label set that Prometheus stores and nobody queries, which Alertmanager
# and most exporters do not expose. Process-wide; relay's metrics are all made below.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client


class Delivered(Protocol):
    """What a delivery outcome's metrics need of its notification (a row, or a worker's event)."""

    @property
    def channel(self) -> str: ...
    @property
    def created_at(self) -> float: ...


class IntakeOutcome(Protocol):
    @property
    def accepted(self) -> int: ...
    @property
    def stale(self) -> int: ...
    @property
    def source(self) -> str: ...


# 600 is a bound because RelayDeliverySlow's threshold is 600 s: histogram_quantile interpolates
# inside a bucket, and one from 300 to 3600 read every delivery past 300 s as nearly 3600 s.
# They go up to a day, the default retry max_age: a notification retried for hours landed in
# +Inf past 3600, which histogram_quantile reads as 3600 (a p99 of "1h" for 20 h late).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
    7200, 21600, 43200, 86400,
)  # fmt: skip
ATTEMPT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 20, 50)
# One request to a receiver: a webhook answers in milliseconds, Slack or SMTP in tenths, and a
# try ends at its channel's timeout (10 s by default, set per channel up to minutes). 5, 10,
# 15 and 20 s are bounds for RelayChannelSlow (half a timeout, as histogram_quantile
# interpolates inside a bucket) and Alertmanager's own (1, 5, 10, 15, 20).
ATTEMPT_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 60, 120,
)  # fmt: skip
RELOAD_RESULTS = ("success", "failure")
# why an alert webhook was answered 202 but not taken: a fixed set, never the body's `type`
# (a sender could make a series of every string it likes)
ALERT_IGNORED_REASONS = ("unknown_type",)
# where updates come from, and why a request to /v1/runs or /v1/trigger/alerts was refused
# (relay.sources._middleware's rejections): fixed sets, exposed at 0 from the start
SOURCES = ("http", "trigger_alerts", "realtime")
REJECTION_REASONS = (
    "bad_request", "unauthorized", "not_configured", "too_large", "store_unavailable", "busy",
    "shutting_down",
)  # fmt: skip


_M = TypeVar("_M", bound=MetricWrapperBase)


class _ByLabel(Generic[_M]):
    """The children of a metric with one label, each looked up once: `labels()` checks and
    converts its argument and takes a lock at every call (three times a send). Only for
    metrics whose children are never removed."""

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[str, _M] = {}

    def __getitem__(self, value: str) -> _M:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child


class Metrics(RealtimeMetrics):
    """relay's series, a concern a method, made in the order /metrics lists them."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._process_metrics(r)
        self._intake_metrics(r)
        self._outcome_metrics(r)
        self._timing_metrics(r)
        self._outbox_metrics(r)
        self._liveness_metrics(r)
        self._realtime_metrics(r)
        self._config_metrics(r)
        # at 0 until their first event: a series born at 1 has no increase() (see configured())
        for counter, values in (
            (self.received, SOURCES),
            (self.rejected, REJECTION_REASONS),
            (self.alerts_ignored, ALERT_IGNORED_REASONS),
            (self.config_reloads, RELOAD_RESULTS),
        ):
            for value in values:
                counter.labels(value)
        # those of every update and every send
        self._received, self._matched = _ByLabel(self.received), _ByLabel(self.matched)
        self._sent = _ByLabel(self.sent)
        self._latency, self._attempts = _ByLabel(self.latency), _ByLabel(self.attempts)
        # (channel, type) → its relay_delivery_attempt_duration_seconds (a channel loop's own
        # observe() in-process; the parent's lookup per attempt a worker tells of)
        self._attempt_durations: dict[tuple[str, str], Histogram] = {}
        self._timeouts: set[str] = set()  # the channels of relay_channel_timeout_seconds

    def _process_metrics(self, r: CollectorRegistry) -> None:
        Info("relay_build", "Build information.", registry=r).info({"version": __version__})
        # process_start_time_seconds, _open_fds, _max_fds, _resident_memory_bytes and the rest
        # of the process serving /metrics, as every Go exporter and Alertmanager have (Linux)
        ProcessCollector(registry=r)
        self.worker_processes = WorkerProcesses()  # and those of --workers' delivery workers
        r.register(self.worker_processes)

    def _intake_metrics(self, r: CollectorRegistry) -> None:
        self.received = Counter(
            "relay_updates_received_total", "Run updates accepted.", ["source"], registry=r
        )
        self.rejected = Counter(
            "relay_updates_rejected_total", "Requests refused, by reason.", ["reason"], registry=r
        )
        self.alerts_ignored = Counter(
            "relay_trigger_alerts_ignored_total",
            "Trigger.dev alert webhooks answered 202 but not taken, by reason.",
            ["reason"],
            registry=r,
        )
        self.stale = Counter(
            "relay_updates_stale_total", "Updates older than the stored state.", registry=r
        )
        self.matched = Counter(
            "relay_rules_matched_total", "Notifications created, by rule.", ["rule"], registry=r
        )
        self.rule_failures = Counter(
            "relay_rule_evaluation_failures_total",
            "Rule `when:` expressions that raised, or `task_regex` matches stopped past 1 s"
            " (the rule did not match), by rule.",
            ["rule"],
            registry=r,
        )

    def _outcome_metrics(self, r: CollectorRegistry) -> None:
        labels = ["channel"]
        self.sent = Counter(
            "relay_notifications_sent_total", "Notifications delivered.", labels, registry=r
        )
        self.failed = Counter(
            "relay_notifications_failed_total",
            "Failed delivery attempts (quick retries included).",
            ["channel", "reason"],
            registry=r,
        )
        self.dead = Counter(
            "relay_notifications_dead_total",
            "Notifications given up on (dead letters).",
            ["channel", "reason"],
            registry=r,
        )
        self.muted = Counter(
            "relay_notifications_muted_total",
            "Notifications muted (silences, time intervals, inhibit rules).",
            labels,
            registry=r,
        )
        self.template_errors = Counter(
            "relay_template_errors_total",
            "Renders that fell back to plain text.",
            labels,
            registry=r,
        )
        self.channel_held = Gauge(
            "relay_channel_held",
            "1 while a receiver's Retry-After holds the channel (nothing is sent to it, so nothing"
            " fails either), else 0.",
            labels,
            registry=r,
        )
        self._held_until: dict[str, float] = {}  # channel → when its hold ends (wall clock)

    def _timing_metrics(self, r: CollectorRegistry) -> None:
        labels = ["channel"]
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "From intake to delivered.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Histogram(
            "relay_delivery_attempts",
            "Attempts a delivered notification took.",
            labels,
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.attempt_duration = Histogram(
            "relay_delivery_attempt_duration_seconds",
            "One request to a receiver, from its start to the answer or the error (timeouts"
            " and refused connections included), by channel and channel type.",
            ["channel", "type"],
            buckets=ATTEMPT_DURATION_BUCKETS,
            registry=r,
        )
        self.channel_timeout = Gauge(
            "relay_channel_timeout_seconds",
            "The timeout of one request to the channel's receiver (its `timeout`).",
            ["channel"],
            registry=r,
        )

    def _outbox_metrics(self, r: CollectorRegistry) -> None:
        self.outbox = Gauge(
            "relay_outbox_notifications",
            "Notifications in the outbox, by state.",
            ["state"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "relay_queue_depth",
            "Notifications waiting to be delivered (pending in the outbox).",
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "relay_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending notification (0 when none is pending).",
            registry=r,
        )
        self.store_up = Gauge(
            "relay_store_up",
            "1 if the store answered this scrape's outbox queries, 0 if not, or while relay"
            " waits for it at start (the outbox gauges then keep their last values).",
            registry=r,
        )

    def _liveness_metrics(self, r: CollectorRegistry) -> None:
        self.worker_restarts = Counter(
            "relay_delivery_worker_restarts_total",
            "Delivery worker processes (--workers) that died unasked and were started again:"
            " a crash loop shows here, where relay_ready only flickers.",
            registry=r,
        )
        self.ready = Gauge(
            "relay_ready",
            "1 if /readyz would answer ready at this scrape, 0 if not: store unreachable or not"
            " writable, a delivery worker not running, starting, or shutting down.",
            registry=r,
        )

    def _config_metrics(self, r: CollectorRegistry) -> None:
        self.config_reloads = Counter(
            "relay_config_reloads_total", "Config reloads, by result.", ["result"], registry=r
        )
        self.config_reload_time = Gauge(
            "relay_config_last_reload_timestamp_seconds",
            "When the running config was loaded.",
            registry=r,
        )
        self.config_reload_ok = Gauge(
            "relay_config_last_reload_successful",
            "1 if the last reload (or the start) loaded the config, 0 from a refused reload until"
            " one loads: the files hold a config relay does not run.",
            registry=r,
        )
        self.config_hash = Gauge(
            "relay_config_hash",
            "Digest of the running config (secrets masked) and its templates directory.",
            registry=r,
        )

    def configured(
        self, channels: Iterable[str], rules: Iterable[str], feeds: Iterable[str] = ()
    ) -> None:
        """The counters of the running config's channels, rules and Realtime feeds (their
        keys: `tags:…|24h`, `run:…`, `batch:…`), at 0 until their first
        event. A series that appears at 1 has no increase() for Prometheus (its first sample is
        its only value): the shipped alerts missed the first dead letter, template error or
        refused reload of each channel after every restart, as Alertmanager's metrics would
        without the same zeros."""
        for channel in channels:
            for counter in (self.sent, self.muted, self.template_errors):
                counter.labels(channel=channel)
            held = self.channel_held.labels(channel=channel)
            held.set_function(functools.partial(self._held_now, channel))
            for reason in REASONS:
                self.failed.labels(channel=channel, reason=reason)
                self.dead.labels(channel=channel, reason=reason)
        for rule in rules:
            self.matched.labels(rule=rule)
            self.rule_failures.labels(rule=rule)
        self._configure_feeds(feeds)

    def channels_configured(self, channels: Mapping[str, tuple[str, float]]) -> None:
        """The running config's channels (name → its type and timeout): their request
        durations at 0 (see configured()), and their timeouts; a channel a reload removed
        loses its timeout, so that no alert compares a channel with one it no longer has."""
        for name, (kind, timeout_s) in channels.items():
            self._attempt_child(name, kind)
            self.channel_timeout.labels(channel=name).set(timeout_s)
        for name in self._timeouts - channels.keys():
            self.channel_timeout.remove(name)
        self._timeouts = set(channels)

    def attempt_observer(self, channel: str, kind: str) -> Callable[[float], None]:
        """What the sender of channel `channel` (of type `kind`) calls with the seconds of each
        request it made: one observe(), the series looked up once per channel loop."""
        return self._attempt_child(channel, kind).observe

    def attempt(self, channel: str, kind: str, seconds: float) -> None:
        """A worker's request to channel `channel`'s receiver (of type `kind`) took `seconds`."""
        self._attempt_child(channel, kind).observe(seconds)

    def _attempt_child(self, channel: str, kind: str) -> Histogram:
        child = self._attempt_durations.get((channel, kind))
        if child is None:
            child = self.attempt_duration.labels(channel=channel, type=kind)
            self._attempt_durations[channel, kind] = child
        return child

    def rule_failed(self, rule: str) -> None:
        """The rules' hook: rule `rule`'s `when:` raised on an update."""
        self.rule_failures.labels(rule=rule).inc()

    def delivery_event(self, kind: str, row: Delivered, reason: str, attempts: int) -> None:
        """Delivery's hook: one call per finished attempt, mute, template fallback or hold."""
        channel = row.channel
        if kind == "sent":
            self._sent[channel].inc()
            self._latency[channel].observe(max(time.time() - row.created_at, 0.0))
            self._attempts[channel].observe(attempts)
        elif kind == "failed":
            self.failed.labels(channel=channel, reason=reason).inc()
        elif kind == "dead":
            self.dead.labels(channel=channel, reason=reason).inc()
        elif kind == "muted":
            self.muted.labels(channel=channel).inc()
        elif kind == "template_error":
            self.template_errors.labels(channel=channel).inc()
        elif kind == "held":  # its created_at: when the hold ends (outcomes.HoldEnd)
            self._held_until[channel] = row.created_at

    def _held_now(self, channel: str) -> float:
        """relay_channel_held of `channel` at this scrape."""
        return float(self._held_until.get(channel, 0.0) > time.time())

    def intake_result(self, result: IntakeOutcome, created: Sequence[Notification]) -> None:
        """Intake's hook: one call per committed batch."""
        self._received[result.source].inc(result.accepted)
        if result.stale:
            self.stale.inc(result.stale)
        for n in created:
            self._matched[n.rule].inc()
            if n.state == "muted":
                self.muted.labels(channel=n.channel).inc()

    def set_outbox(self, counts: Mapping[str, int], oldest: float | None, now: float) -> None:
        self.store_up.set(1)
        for state, count in counts.items():
            self.outbox.labels(state=state).set(count)
        self.queue_depth.set(counts.get("pending", 0))
        self.outbox_oldest.set(0.0 if oldest is None else max(now - oldest, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
