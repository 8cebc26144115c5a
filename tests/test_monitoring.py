"""deploy/grafana/relay.json and deploy/prometheus/alerts.yml watch the metrics relay exposes.

Every series a dashboard query, dashboard variable or alert rule names must be in the exposition
of relay.metrics (histogram series and the labels of each included); every label a query
selects, groups by or shows (legend, alert annotation) must belong to the series it reads; every
metric family relay exposes has a panel; every panel reads the dashboard's Prometheus data
source variable. With promtool on PATH (Debian's `prometheus` package) the PromQL itself is
parsed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from relay.config import RetryPolicy
from relay.metrics import ATTEMPT_DURATION_BUCKETS, LATENCY_BUCKETS, Metrics
from tests.conftest import REPO, RelayFactory, Sink, sdk_run, status
from tests.test_operations import CONFIG, metrics_text
from tests.test_operations import value as sample

DASHBOARD = REPO / "deploy" / "grafana" / "relay.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
# added by Kubernetes service discovery (Prometheus Operator), absent elsewhere: only grouped by
# (`by (namespace, service)` groups everything into one where they are absent)
DEPLOYMENT_LABELS = {"namespace", "service"}
SERIES = re.compile(r"\b((?:relay|process)_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
# of prometheus_client's process metrics, the one no panel needs (what the process mapped)
UNSHOWN = {"process_virtual_memory_bytes"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"] if items is None else items:
        yield panel
        yield from panels(panel.get("panels", []))


def targets() -> list[dict[str, Any]]:
    return [t for p in panels() for t in p.get("targets", [])]


def variable_queries() -> list[str]:
    return [v["definition"] for v in dashboard()["templating"]["list"] if v.get("definition")]


def exposed() -> dict[str, set[str]]:
    """Series name → its label names, as GET /metrics shows them."""
    metrics = Metrics()
    metrics.worker_processes.children = lambda: [(0, os.getpid())]  # as with --workers 1
    declared = {
        m._name: set(m._labelnames)
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    text = metrics.render().decode()
    series: dict[str, set[str]] = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        own = declared.get(name, set()) | declared.get(name.removesuffix("_total"), set())
        if kind == "histogram":
            series |= {f"{name}_bucket": own | {"le"}, f"{name}_sum": own, f"{name}_count": own}
        else:
            series[name] = own
    for name, labels in re.findall(r"^(\w+)\{(.*?)\}", text, flags=re.M):  # the Info's labels
        if name in series:
            series[name] |= set(re.findall(r"(\w+)=", labels))
    return series


def family(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def queries() -> list[tuple[str, set[str], str]]:
    """(PromQL, labels it must provide, where) of every panel, variable and alert rule."""
    out = [
        (t["expr"], set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", ""))), "dashboard")
        for t in targets()
    ]
    out += [(q, set(), "dashboard variable") for q in variable_queries()]
    for rule in alert_rules():
        shown = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule.get("annotations", {}))))
        out.append((rule["expr"], shown, f"alert {rule['alert']}"))
    return out


def test_every_query_reads_series_and_labels_relay_exposes() -> None:
    known = exposed()
    assert len(queries()) >= 25
    for expr, shown, where in queries():
        used = SERIES.findall(expr)
        assert used or re.match(r"up\{", expr), f"{where}: no relay metric in {expr!r}"
        available = set(TARGET_LABELS)
        for name, _ in used:
            assert name in known, f"{where}: {name} is not a relay metric"
            available |= known[name]
        selected = {label for _, m in used for label in re.findall(r"(\w+)\s*[=!]~?", m)}
        grouped = {
            label.strip()
            for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in clause.split(",")
            if label.strip()
        }
        if grouped:  # an aggregation keeps only its `by` labels
            assert shown <= grouped | {"value"}, f"{where}: shows {shown - grouped}, not kept"
        for label in selected | grouped | shown:
            ok = label in available or (label in DEPLOYMENT_LABELS and label not in selected)
            assert ok, f"{where}: label {label!r} is not on {expr!r}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    recorded = []
    for i, (query, _, _) in enumerate(queries()):
        if query.startswith("label_values("):
            continue
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        recorded.append({"record": f"dashboard:query{i}", "expr": expr})
    rules = tmp_path / "dashboard.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_relay_exposes_has_a_panel() -> None:
    used = {family(name) for t in targets() for name, _ in SERIES.findall(t["expr"])}
    assert {family(name) for name in exposed()} - UNSHOWN == used


def test_dashboard_is_importable_with_a_prometheus_data_source_variable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    assert "id" not in data or data["id"] is None, "an exported id clashes on import"
    variables = data["templating"]["list"]
    (source,) = [v for v in variables if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    uid = "${" + source["name"] + "}"
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


@pytest.mark.parametrize(
    "title",
    [
        "Ingest rate by source",
        "Rejections by reason",
        "Rules matched",
        "Sent by channel",
        "Failed attempts by channel",
        "Dead by channel",
        "Muted by channel",
        "Delivery latency p50 / p99",
        "Attempts per delivered notification",
        "Outbox by state",
        "Config reloads",
    ],
)
def test_the_operator_panels_are_there(title: str) -> None:
    assert title in {p["title"] for p in panels()}


def store_tables() -> set[str]:
    """The store's tables, and its trigger and function (a restore's error names them)."""
    sql = " ".join(p.read_text(encoding="utf-8") for p in (REPO / "relay" / "store").rglob("*.py"))
    made = r"CREATE (?:TABLE (?:IF NOT EXISTS )?|(?:OR REPLACE )?FUNCTION |TRIGGER )(relay_\w+)"
    return set(re.findall(made, sql))


def test_the_docs_name_only_series_and_labels_relay_exposes() -> None:
    """The prose of README.md and docs/*.md (operations: what to alert on, what to read) names
    metrics too; a renamed one must not leave an operator querying nothing."""
    series, tables = exposed(), store_tables()
    families = {family(name) for name in series}
    wrong = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for name, labels in SERIES.findall(doc.read_text(encoding="utf-8")):
            if name in tables:
                continue
            known = series.get(name, set()) | series.get(f"{name}_bucket", set())
            if name not in series and name not in families:
                wrong.append(f"{doc.name}: {name}")
            elif not set(re.findall(r"(\w+)\s*=", labels)) <= known | TARGET_LABELS:
                wrong.append(f"{doc.name}: {name}{{{labels}}}")
    assert not wrong, wrong
    assert store_tables() >= {"relay_outbox", "relay_replicas"}  # the exception is not empty


def latency_series(seconds: float) -> list[dict[str, str]]:
    """relay_delivery_latency_seconds of one channel delivering 10 a minute, each `seconds`
    late, as relay buckets them."""
    bounds = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
    return [
        {
            "series": "relay_delivery_latency_seconds_bucket"
            f'{{job="relay",instance="a",channel="hook",le="{le}"}}',
            "values": "0+10x40" if le == "+Inf" or float(le) >= seconds else "0x40",
        }
        for le in bounds
    ]


def test_latency_buckets_reach_the_default_retry_max_age() -> None:
    """A notification delivered after hours of retries (until retry.max_age, a day by default)
    fell in +Inf past the 3600 s bucket, and histogram_quantile reads +Inf as the top finite
    bound: the dashboard's p99 said 1h of a delivery 20 h late."""
    assert max(LATENCY_BUCKETS) >= RetryPolicy().max_age
    assert {7200, 21600, 86400} <= set(LATENCY_BUCKETS)  # hours apart, not one 1h-24h bucket


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize(
    ("seconds", "fires"), [(30, False), (400, False), (540, False), (900, True)]
)
def test_delivery_slow_fires_past_its_threshold_only(
    tmp_path: Path, seconds: float, fires: bool
) -> None:
    """histogram_quantile interpolates inside the bucket the quantile falls in: without a bucket
    bound at the alert's 600 s, every delivery between 300 s and 600 s (a 5m digest interval,
    a retry's backoff) read as a p99 near 3600 s and RelayDeliverySlow fired."""
    expected = [{"exp_labels": {"severity": "warning", "channel": "hook"}}] if fires else []
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": latency_series(seconds),
                "alert_rule_test": [
                    {"eval_time": "40m", "alertname": "RelayDeliverySlow", "exp_alerts": expected}
                ],
            }
        ],
    }
    if fires:  # the annotations are the alert's own; only whether it fires is checked
        rule = next(r for r in alert_rules() if r["alert"] == "RelayDeliverySlow")
        labels = {"channel": "hook"}
        expected[0]["exp_annotations"] = {
            k: v.replace("{{ $labels.channel }}", labels["channel"])
            for k, v in rule["annotations"].items()
        }
    promtool_test(tmp_path, test)


def attempt_series(seconds: float, timeout_s: float) -> list[dict[str, str]]:
    """relay_delivery_attempt_duration_seconds of channel `hook` (timeout `timeout_s`) making
    10 requests a minute, each taking `seconds`, as relay buckets them."""
    bounds = [*(floatToGoString(b) for b in ATTEMPT_DURATION_BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]
    labels = 'job="relay",instance="a",channel="hook"'
    return [
        {
            "series": f'relay_delivery_attempt_duration_seconds_bucket{{{labels},type="webhook",le="{le}"}}',
            "values": "0+10x40" if le == "+Inf" or float(le) >= seconds else "0x40",
        }
        for le in bounds
    ] + [{"series": f"relay_channel_timeout_seconds{{{labels}}}", "values": f"{timeout_s}x40"}]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize(
    ("seconds", "timeout_s", "fires"),
    [(0.2, 10, False), (4, 10, False), (8, 10, True), (10, 10, True), (8, 30, False)],
)
def test_channel_slow_fires_past_half_the_channels_timeout_only(
    tmp_path: Path, seconds: float, timeout_s: float, fires: bool
) -> None:
    """Requests slower than half their channel's timeout (timeouts among them) fire
    RelayChannelSlow; a channel given a longer timeout is held to it, and 4 s of a 10 s
    timeout (in the bucket up to 5 s) does not fire."""
    expected: list[dict[str, Any]] = []
    if fires:
        rule = next(r for r in alert_rules() if r["alert"] == "RelayChannelSlow")
        # 9.95 s: histogram_quantile's p99 inside the bucket from 5 s to 10 s
        shown = {"{{ $labels.channel }}": "hook", "{{ $value | humanizeDuration }}": "9.95s"}
        annotations = dict(rule["annotations"])
        for template, text in shown.items():
            annotations = {k: v.replace(template, text) for k, v in annotations.items()}
        expected = [
            {
                "exp_labels": {"severity": "warning", "channel": "hook"},
                "exp_annotations": annotations,
            }
        ]
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": attempt_series(seconds, timeout_s),
                "alert_rule_test": [
                    {"eval_time": "35m", "alertname": "RelayChannelSlow", "exp_alerts": expected}
                ],
            }
        ],
    }
    promtool_test(tmp_path, test)


def promtool_test(tmp_path: Path, test: dict[str, Any]) -> None:
    """`promtool test rules` of `test` (a unit test file's content) passes."""
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test))
    checked = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_config_inconsistent_compares_the_replicas_of_one_deployment(tmp_path: Path) -> None:
    """Two relay deployments with their own configs (staging and prod) under one job are not
    inconsistent; two replicas of one deployment with different digests are."""

    def series(namespace: str, pod: str, digest: int) -> dict[str, str]:
        labels = f'job="relay",namespace="{namespace}",service="relay",instance="{pod}"'
        return {"series": f"relay_config_hash{{{labels}}}", "values": f"{digest}x40"}

    rule = next(r for r in alert_rules() if r["alert"] == "RelayConfigInconsistent")
    fired = {"severity": "warning", "namespace": "prod", "service": "relay"}
    inputs = [
        series("staging", "s-0", 1),
        series("staging", "s-1", 1),
        series("prod", "p-0", 2),
        series("prod", "p-1", 3),
    ]
    expected = [{"exp_labels": fired, "exp_annotations": rule["annotations"]}]
    alert_test(tmp_path, "RelayConfigInconsistent", inputs, "30m", expected)


def alert_test(
    tmp_path: Path,
    alert: str,
    inputs: list[dict[str, str]],
    eval_time: str,
    expected: list[dict[str, Any]],
) -> None:
    """`promtool test rules`: over `inputs` (a sample a minute), `alert` fires at `eval_time`
    with exactly the `expected` alerts (labels and annotations)."""
    rule_test = {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}
    test = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "alert_rule_test": [rule_test]}],
    }
    promtool_test(tmp_path, test)


def following_fires_for_one_feed(
    tmp_path: Path, alert: str, values: dict[tuple[str, str], str], firing: str, value: str
) -> None:
    """`alert` over relay_realtime_following of replicas, one series per (feed, instance) of
    `values` (its samples, one a minute): at 30m it fires for the feed `firing` alone, its
    annotations filled with `value`."""

    def series(feed: str, instance: str, samples: str) -> dict[str, str]:
        labels = f'job="relay",instance="{instance}",feed="{feed}"'
        return {"series": f"relay_realtime_following{{{labels}}}", "values": samples}

    rule = next(r for r in alert_rules() if r["alert"] == alert)
    annotations = {
        k: v.replace("{{ $value }}", value).replace("{{ $labels.feed }}", firing)
        for k, v in rule["annotations"].items()
    }
    inputs = [series(feed, instance, samples) for (feed, instance), samples in values.items()]
    expected = [
        {"exp_labels": {"severity": "warning", "feed": firing}, "exp_annotations": annotations}
    ]
    alert_test(tmp_path, alert, inputs, "30m", expected)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_realtime_followed_twice_fires_on_two_followers_not_on_a_handover(tmp_path: Path) -> None:
    """relay_realtime_following of two replicas: a handover (both at 1 for a scrape) is not an
    alert; two replicas following one feed for good are."""
    values = {
        ("tags:handover|24h", "a"): "1x10 0x30",
        ("tags:handover|24h", "b"): "0x9 1x31",
        ("tags:twice|24h", "a"): "1x40",
        ("tags:twice|24h", "b"): "0x9 1x31",
    }
    alert = "RelayRealtimeFollowedTwice"
    following_fires_for_one_feed(tmp_path, alert, values, "tags:twice|24h", "2")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_realtime_not_followed_fires_on_a_feed_nobody_follows_not_on_a_handover(
    tmp_path: Path,
) -> None:
    """relay_realtime_following of two replicas: a handover (neither following for a scrape)
    and a run feed left once its run finished are no alert; a feed neither follows for
    minutes is (RelayRealtimeStalled cannot fire for it: no replica has its gauge)."""
    values = {
        ("tags:handover|24h", "a"): "1x10 0x30",
        ("tags:handover|24h", "b"): "0x11 1x29",
        ("run:run_finished", "a"): "1x5 0x35",
        ("run:run_finished", "b"): "0x40",
        ("tags:nobody|24h", "a"): "1x10 0x30",
        ("tags:nobody|24h", "b"): "0x40",
    }
    alert = "RelayRealtimeNotFollowed"
    following_fires_for_one_feed(tmp_path, alert, values, "tags:nobody|24h", "0")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_not_ready_fires_on_a_relay_not_ready_for_minutes_not_on_a_restart(tmp_path: Path) -> None:
    """relay_ready of two relays: one restarting (0 for a scrape, its drain and start) is not an
    alert; one whose disk is full (not ready for good, its store still answering) is."""

    def series(instance: str, values: str) -> dict[str, str]:
        return {"series": f'relay_ready{{job="relay",instance="{instance}"}}', "values": values}

    rule = next(r for r in alert_rules() if r["alert"] == "RelayNotReady")
    labels = {"instance": "full"}
    annotations = {key: filled(text, labels) for key, text in rule["annotations"].items()}
    inputs = [series("restarted", "1x10 0 1x29"), series("full", "1x10 0x30")]
    expected = [{"exp_labels": {"severity": "warning", **labels}, "exp_annotations": annotations}]
    alert_test(tmp_path, "RelayNotReady", inputs, "20m", expected)


async def test_a_scrape_passes_promtool_and_has_the_process_metrics(
    tmp_path: Path, relay: RelayFactory, sink: Sink
) -> None:
    """A scrape after a failed and a dead notification: `promtool check metrics` finds nothing
    (names, units, _total, HELP and TYPE), and the process metrics every Go exporter and
    Alertmanager have are there: without process_start_time_seconds no rule saw relay restart
    in a loop (a kill -9 or OOM kill between two scrapes leaves `up` at 1), without
    process_open_fds none saw it near the descriptor limit it sheds connections at."""
    sink.default = status(503)
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    await r.post(sdk_run("failed"))
    for _ in range(600):
        text = await metrics_text(r)
        if 'relay_notifications_dead_total{channel="hook",reason="server_error"} 1.0' in text:
            break
        await asyncio.sleep(0.05)
    started = sample(text, "process_start_time_seconds")
    assert time.time() - 3600 < started <= time.time()
    assert 0 < sample(text, "process_open_fds") < sample(text, "process_max_fds")
    assert sample(text, "process_resident_memory_bytes") > 0
    if shutil.which("promtool") is not None:
        checked = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def fires_for_one_instance(
    tmp_path: Path, alert: str, metric: str, values: dict[str, str], firing: str, value: str
) -> None:
    """`alert` over `metric` of one relay per item of `values` (instance → its samples, one a
    minute, in promtool's notation): at 40m it fires for the instance `firing` alone, its
    annotations filled with `value`."""

    def series(instance: str, samples: str) -> dict[str, str]:
        labels = f'job="relay",instance="{instance}"'
        return {"series": f"{metric}{{{labels}}}", "values": samples}

    rule = next(r for r in alert_rules() if r["alert"] == alert)
    labels = {"instance": firing}
    annotations = {
        key: filled(text, labels).replace("{{ $value }}", value)
        for key, text in rule["annotations"].items()
    }
    inputs = [series(instance, samples) for instance, samples in values.items()]
    expected = [{"exp_labels": {"severity": "warning", **labels}, "exp_annotations": annotations}]
    alert_test(tmp_path, alert, inputs, "40m", expected)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_restarting_fires_on_a_restart_loop_not_on_a_deploy(tmp_path: Path) -> None:
    """process_start_time_seconds of two relays scraped each minute: one restarted once (a
    deploy) is not an alert; one started again every five minutes (a crash loop) is."""
    values = {
        "deployed": "1000x10 1600x30",
        "looping": "1000x10 1300x4 1600x4 1900x4 2200x4 2500x4 2800x4",
    }
    metric = "process_start_time_seconds"
    fires_for_one_instance(tmp_path, "RelayRestarting", metric, values, "looping", "6")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_worker_restarting_fires_on_a_crash_loop_not_on_one_death(tmp_path: Path) -> None:
    """relay_delivery_worker_restarts_total of two relays scraped each minute: a worker that
    died once (a kill) is not an alert; one dying every five minutes (a crash loop) is."""
    values = {"once": "0x10 1x30", "looping": "0x4 1x4 2x4 3x4 4x4 5x4 6x4 7x4 8x4"}
    metric = "relay_delivery_worker_restarts_total"
    alert = "RelayDeliveryWorkerRestarting"
    fires_for_one_instance(tmp_path, alert, metric, values, "looping", "6")


# the README's own suggestion, as printed under Metrics
README_DEAD_RULE = {
    "alert": "ReadmeDeadLetters",
    "expr": "rate(relay_notifications_dead_total[5m]) > 0",
}


def scraped(text: str, family: str) -> dict[str, float]:
    """The samples of `family` in a scrape, by series, with the job label a scrape adds."""
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(family + "{"))
    return {series.replace("{", '{job="relay",', 1): float(v) for series, v in samples}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_dead_letter_alerts_fire_on_the_series_relay_exposes(
    tmp_path: Path, relay: RelayFactory, sink: Sink
) -> None:
    """An SRE's first alert, dead letters rising: relay scraped before and after one notification
    went dead (a receiver answering 503 to its only attempt), those very samples fed to promtool:
    the README's `rate(relay_notifications_dead_total[5m]) > 0` and the shipped
    RelayNotificationsDead fire for that channel and reason, and for no other series."""
    sink.default = status(503)
    r = await relay(CONFIG.format(url=sink.url, rule="failures", status="failure"))
    family = "relay_notifications_dead_total"
    before = scraped(await metrics_text(r), family)
    dead = f'{family}{{job="relay",channel="hook",reason="server_error"}}'
    assert before[dead] == 0  # there from the start
    run = sdk_run("failed")
    await r.post(run)
    for _ in range(600):
        after = scraped(await metrics_text(r), family)
        if after[dead] == 1:
            break
        await asyncio.sleep(0.05)
    assert after[dead] == 1
    rules = tmp_path / "readme.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "sre", "rules": [README_DEAD_RULE]}]}))
    fired = {"channel": "hook", "reason": "server_error"}
    test = {
        "rule_files": [str(ALERTS), str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": s, "values": f"{before[s]:g}x2 {after[s]:g}x10"} for s in after
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "ReadmeDeadLetters", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "ReadmeDeadLetters",
                        "exp_alerts": [{"exp_labels": {"job": "relay", **fired}}],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "RelayNotificationsDead",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", **fired},
                                "exp_annotations": dead_annotations(fired),
                            }
                        ],
                    },
                ],
            }
        ],
    }
    promtool_test(tmp_path, test)


def dead_annotations(labels: dict[str, str]) -> dict[str, str]:
    rule = next(r for r in alert_rules() if r["alert"] == "RelayNotificationsDead")
    return {key: filled(text, labels) for key, text in rule["annotations"].items()}


def filled(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus fills it, for `{{ $labels.NAME }}` placeholders only."""
    for name, label in labels.items():
        template = template.replace(f"{{{{ $labels.{name} }}}}", label)
    return template
