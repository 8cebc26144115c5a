"""When the shipped alerts fire and clear, on series shaped as a real relay exposed them.

The shapes come from real `relay serve` runs scraped every 5 s (a Slack webhook channel, the
default retry policy, one failed run posted every 20 s): in a total outage (503) the channel's
failed attempts grow ~33 a minute (three quick tries a notification, and their retries) and
nothing is sent; after a one-minute blip the waiting notifications go at once; a receiver
answering 429 with Retry-After: 120 holds the channel, three attempts failing each time the
hold ends, relay_channel_held at 1 throughout. Here a sample a minute; the failure begins just
after minute 10. An on-call is paged ~5 minutes into an outage, not by a blip.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.test_monitoring import ALERTS, alert_rules, filled, promtool_test

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")

SENT = 'relay_notifications_sent_total{job="relay",instance="relay:8080",channel="slack"}'
READY = 'relay_ready{job="relay",instance="relay:8080"}'
STORE_UNAVAILABLE = (
    'relay_updates_rejected_total{job="relay",instance="relay:8080",reason="store_unavailable"}'
)


def failed(reason: str) -> str:
    labels = f'job="relay",instance="relay:8080",channel="slack",reason="{reason}"'
    return f"relay_notifications_failed_total{{{labels}}}"


def held(channel: str) -> str:
    return f'relay_channel_held{{job="relay",instance="relay:8080",channel="{channel}"}}'


def timeline(
    tmp_path: Path,
    alert: str,
    series: dict[str, str],
    quiet: list[int],
    firing: dict[int, list[str]],
    label: str = "channel",
    shown: dict[int, str] | None = None,
) -> None:
    """`promtool test rules` over `series` (a sample a minute): `alert` fires for nothing at
    the minutes of `quiet`, and at each minute of `firing` for those values of `label` (a
    channel, a reason) exactly, `{{ $value }}` (humanized or not) shown as `shown` says."""
    rule = next(r for r in alert_rules() if r["alert"] == alert)

    def fired(value: str, minute: int) -> dict[str, Any]:
        labels = {label: value}
        annotations = {
            k: re.sub(r"\{\{ \$value[^}]*\}\}", lambda _: (shown or {})[minute], filled(v, labels))
            for k, v in rule["annotations"].items()
        }
        return {"exp_labels": {"severity": "warning", **labels}, "exp_annotations": annotations}

    checks: list[dict[str, Any]] = [
        {"eval_time": f"{m}m", "alertname": alert, "exp_alerts": []} for m in quiet
    ]
    checks += [
        {"eval_time": f"{m}m", "alertname": alert, "exp_alerts": [fired(v, m) for v in values]}
        for m, values in firing.items()
    ]
    inputs = [{"series": name, "values": values} for name, values in series.items()]
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": checks}],
    }
    promtool_test(tmp_path, test)


def test_channel_failing_pages_five_minutes_into_an_outage_and_clears_at_recovery(
    tmp_path: Path,
) -> None:
    """A Slack webhook answering 503 from minute 10 to 40: measured, the old rule (10-minute
    rates, `for: 10m`) fired 20 minutes in; now within 5 minutes, and it clears at the first
    send after the recovery (the backlog goes at once)."""
    series = {
        SENT: "0+3x10 30x29 42+3x10",
        failed("server_error"): "0x10 33+33x29 990x10",
        failed("timeout"): "0x50",
    }
    quiet = [5, 10, 11, 12, 13, 41, 45]
    firing = {m: ["slack"] for m in (15, 20, 30, 40)}
    timeline(tmp_path, "RelayChannelFailing", series, quiet, firing)


def test_channel_failing_ignores_a_one_minute_blip(tmp_path: Path) -> None:
    """503 for a minute, twice (minutes 10 and 30): the channel's 15 and 9 failed attempts, then
    the 6 notifications that waited sent at once. No alert at any minute."""
    series = {
        SENT: "0+3x10 30 36+3x18 90 96+3x20",
        failed("server_error"): "0x10 15 24x18 39 48x20",
    }
    timeline(tmp_path, "RelayChannelFailing", series, list(range(10, 50)), {})


def test_channel_failing_ignores_a_failure_followed_by_a_send_then_silence(
    tmp_path: Path,
) -> None:
    """A quiet channel: one notification fails twice (6 tries) at minute 10, goes through at
    its retry at minute 12, and nothing is sent after. Failures still in the 5-minute window
    while the sends have left the 3-minute one: that lasts less than the `for`."""
    series = {SENT: "5x11 6x40", failed("server_error"): "0x10 6x40"}
    timeline(tmp_path, "RelayChannelFailing", series, list(range(10, 40)), {})


def test_channel_held_fires_on_a_receiver_holding_it_not_on_one_retry_after(
    tmp_path: Path,
) -> None:
    """Retry-After: 120 on every answer from minute 10 to 40 (`slack`): no send, three failed
    attempts every 2 minutes, relay_channel_held at 1; the alert fires 5 minutes in and clears
    5 minutes after. `brief` was held once, for its 2 minutes: no alert."""
    series = {
        held("slack"): "0x10 1x29 0x20",
        held("brief"): "0x10 1x1 0x48",
        SENT: "0+3x10 30x29 60+3x10",
        failed("rate_limited"): "0x10 3+1.5x29 48x20",
    }
    quiet = [10, 14, 15, 46, 50]
    firing = {m: ["slack"] for m in (16, 25, 39, 44)}
    timeline(tmp_path, "RelayChannelHeld", series, quiet, firing)


def test_a_full_disk_pages_five_minutes_in_though_readiness_flickers(tmp_path: Path) -> None:
    """SQLite's disk full from minute 10 to 20, an update every 20 s, each refused: /readyz
    says not writable for 10 s after each refusal, so relay_ready flickers and RelayNotReady
    (5 minutes of 0) never fires. RelayRejectingUpdates did after 10 minutes (measured: as the
    disk was freed); now 5 minutes in, and it clears 3 minutes after the last refusal."""
    series = {
        STORE_UNAVAILABLE: "0x10 3+3x9 30x20",
        READY: "1x10 0 1 0 0 1 0 1 1 0 1 1x20",
    }
    timeline(tmp_path, "RelayNotReady", series, list(range(10, 30)), {})
    quiet = [10, 14, 23, 25]
    firing = {m: ["store_unavailable"] for m in (16, 20, 22)}
    timeline(tmp_path, "RelayRejectingUpdates", series, quiet, firing, label="reason")


def test_rejecting_updates_ignores_a_store_blip(tmp_path: Path) -> None:
    """A PostgreSQL restart: updates refused for a minute (3 of them), then taken again."""
    series = {STORE_UNAVAILABLE: "0x10 3x30", READY: "1x10 0 1x30"}
    timeline(tmp_path, "RelayRejectingUpdates", series, list(range(10, 30)), {}, label="reason")


FEED = "tags:env:prod|24h"
CAUGHT_UP = (
    "relay_realtime_last_up_to_date_timestamp_seconds"
    f'{{job="relay",instance="relay:8080",feed="{FEED}"}}'
)


def test_realtime_stalled_fires_seven_minutes_into_a_failing_server(tmp_path: Path) -> None:
    """Trigger.dev Realtime answering 500 from minute 10 to 30 (measured: then hanging, which
    changed the errors' reason, so RelayRealtimeFailing never fired): the feed caught up every
    ~20 s before, no more after 9:40. RelayRealtimeStalled fired 15 minutes in; now 7, and it
    clears at the first up-to-date answer. Three minutes of 500s do not fire it."""
    series = {CAUGHT_UP: "-20+60x10 580x19 1850+60x10"}
    shown = {17: "7m 20s", 20: "10m 20s", 30: "20m 20s"}
    firing = {m: [FEED] for m in shown}
    quiet = [10, 14, 16, 31, 35]
    timeline(tmp_path, "RelayRealtimeStalled", series, quiet, firing, label="feed", shown=shown)
    blip = {CAUGHT_UP: "-20+60x10 580x2 820+60x20"}
    timeline(tmp_path, "RelayRealtimeStalled", blip, list(range(10, 30)), {}, label="feed")


STARTED = 'process_start_time_seconds{job="relay",instance="relay:8080"}'


def test_restarting_clears_within_ten_minutes_of_the_last_restart(tmp_path: Path) -> None:
    """A crash loop, relay started again every 2 minutes from minute 11 to 21, then up: the
    alert fires at the third start and cleared only once two of the six had left its 30-minute
    window, 26 minutes after the last; now it clears 10 minutes after the last start."""
    series = {STARTED: "1000x10 1660x1 1780x1 1900x1 2020x1 2140x1 2260x30"}
    shown = {15: "3", 21: "6", 30: "6"}
    firing = {m: ["relay:8080"] for m in shown}
    quiet = [10, 12, 14, 31, 35, 45]
    timeline(tmp_path, "RelayRestarting", series, quiet, firing, label="instance", shown=shown)
