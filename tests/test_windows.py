"""Time windows (mute/active time intervals) and inhibition, as tables and end to end."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from relay import grouping, inhibit_batch
from relay.channels import settings_models
from relay.config_load import parse_config
from relay.errors import ConfigError
from relay.model import notification_id
from relay.rule_compile import compile_rules
from relay.silences import index as silence_index
from relay.windows import NamedTimeInterval, TimeInterval
from tests.conftest import FIXTURES, RelayFactory, Sink, run_cli_in_process, sdk_run, status

# Wednesday 2026-11-25 14:30 UTC (15:30 in Berlin)
WED = datetime(2026, 11, 25, 14, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, True),
        ({"times": [{"start_time": "09:00", "end_time": "17:00"}]}, True),
        ({"times": [{"start_time": "15:00", "end_time": "24:00"}]}, False),
        (
            {"times": [{"start_time": "15:00", "end_time": "24:00"}], "location": "Europe/Berlin"},
            True,
        ),
        ({"weekdays": ["monday:friday"]}, True),
        ({"weekdays": ["saturday", "sunday"]}, False),
        ({"weekdays": ["Wednesday"]}, True),
        ({"days_of_month": ["1:10"]}, False),
        ({"days_of_month": ["20:-1"]}, True),
        ({"days_of_month": ["-6"]}, True),  # 30 days in November: -6 is the 25th
        ({"days_of_month": ["-10:-7"]}, False),  # the 21st to the 24th
        ({"months": ["november"]}, True),
        ({"months": ["1:3", "12"]}, False),
        ({"years": ["2026"]}, True),
        ({"years": ["2027:2030"]}, False),
        (
            {
                "weekdays": ["monday:friday"],
                "times": [{"start_time": "18:00", "end_time": "24:00"}],
            },
            False,
        ),
    ],
)
def test_time_interval_table(spec: dict[str, Any], expected: bool) -> None:
    assert TimeInterval.model_validate(spec).contains(WED) is expected


@pytest.mark.parametrize(
    "spec",
    [
        {"times": [{"start_time": "9:00", "end_time": "17:00"}]},
        {"times": [{"start_time": "17:00", "end_time": "09:00"}]},
        {"times": [{"start_time": "10:00", "end_time": "24:01"}]},
        {"weekdays": ["funday"]},
        {"days_of_month": ["0"]},
        {"days_of_month": ["40"]},
        {"days_of_month": ["32"]},
        {"days_of_month": ["-32"]},
        {"months": ["smarch"]},
        {"years": ["1900"]},
        {"location": "Mars/Olympus_Mons"},
        {"location": "local"},
        {"location": "Europe/berlin"},
        {"bogus": 1},
        # reversed ranges would never hold: refused, as Alertmanager does
        {"weekdays": ["friday:monday"]},
        {"months": ["december:february"]},
        {"years": ["2027:2026"]},
        {"days_of_month": ["10:5"]},
        {"days_of_month": ["-1:-3"]},
        {"days_of_month": ["-3:5"]},
        {"days_of_month": ["29:-1"]},  # empty in February
    ],
)
def test_bad_time_intervals(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TimeInterval.model_validate(spec)


def test_an_overnight_time_range_is_refused_with_the_two_that_mean_it(tmp_path: Path) -> None:
    """An on-call's quiet hours, `22:00` to `06:00`, are one range to write and two in the
    schema (as in Alertmanager, which says only "start time cannot be equal or greater than
    end time"): `relay check` said "end_time must be after start_time"; it says how now."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "channels: {out: {type: console}}\nrules: [{name: a, notify: [out]}]\n"
        "time_intervals:\n  - name: nights\n    time_intervals:\n"
        "      - times: [{start_time: '22:00', end_time: '06:00'}]\n"
    )
    checked = run_cli_in_process("check", str(config))
    assert (checked.returncode, checked.stderr.splitlines()[0]) == (
        1,
        f"{config}:6: time_intervals[0].time_intervals[0].times[0]: end_time 06:00 comes before"
        " start_time 22:00: a range does not run past midnight; split it in two, 22:00 to 24:00"
        " and 00:00 to 06:00",
    )
    with pytest.raises(ValidationError, match="end_time must be after start_time"):
        TimeInterval.model_validate({"times": [{"start_time": "09:00", "end_time": "09:00"}]})


@pytest.mark.parametrize(
    ("field", "item"),
    [("weekdays", "monday:"), ("days_of_month", "5:"), ("months", "1:"), ("years", "2026:")],
)
def test_a_range_without_its_end_is_refused(field: str, item: str) -> None:
    """Alertmanager (timeinterval.go, stringableRangeFromString) refuses `monday:`: the part
    after the colon is not a weekday. It is not a single day."""
    with pytest.raises(ValidationError, match=f"invalid .*{item!r}"):
        TimeInterval.model_validate({field: [item]})


def _on(day: int, hour: int = 12) -> float:
    """An instant in UTC in the week of Sunday 2026-11-22 (the 22nd) to Saturday the 28th."""
    return datetime(2026, 11, day, hour, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("weekdays", "holds_on"),
    [
        # Alertmanager's week starts on Sunday (timeinterval.go daysOfWeek, docs "weekday_range")
        (["sunday:monday"], {22, 23}),
        (["sunday:saturday"], {22, 23, 24, 25, 26, 27, 28}),
        (["Sunday:Tuesday"], {22, 23, 24}),
        (["sunday"], {22}),
        (["sunday:sunday"], {22}),
        (["monday:friday"], {23, 24, 25, 26, 27}),
        (["monday:wednesday", "saturday", "sunday"], {22, 23, 24, 25, 28}),
        # relay also reads a range that ends on Sunday (Alertmanager refuses it)
        (["saturday:sunday"], {22, 28}),
        (["monday:sunday"], {22, 23, 24, 25, 26, 27, 28}),
        (["friday:sunday"], {22, 27, 28}),
    ],
)
def test_weekday_ranges(weekdays: list[str], holds_on: set[int]) -> None:
    interval = TimeInterval.model_validate({"weekdays": weekdays})
    assert {day for day in range(22, 29) if interval.contains(_on(day))} == holds_on


@pytest.fixture
def new_york_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is New York's (a POSIX rule: no zoneinfo file needed)."""
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_machine")
@pytest.mark.parametrize(
    ("location", "hour_utc", "expected"),
    [
        # Alertmanager takes Go's time.LoadLocation names: "Local" is the machine's zone
        ("Local", 14, True),  # 09:00 in New York (EST)
        ("Local", 13, False),  # 08:00
        ("", 8, False),  # "" is UTC in Go: 08:00
        ("", 9, True),
    ],
)
def test_local_and_empty_locations(location: str, hour_utc: int, expected: bool) -> None:
    spec = {"times": [{"start_time": "09:00", "end_time": "17:00"}], "location": location}
    interval = TimeInterval.model_validate(spec)
    assert interval.contains(_on(25, hour_utc)) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"years": [2026], "days_of_month": [25], "months": [11]}, True),
        ({"days_of_month": ["1:-1"], "years": [2027]}, False),
        ({"days_of_month": ["28:-1"]}, False),
        ({"days_of_month": ["-10:-1"]}, True),
    ],
)
def test_numbers_and_mixed_day_ranges(spec: dict[str, Any], expected: bool) -> None:
    assert TimeInterval.model_validate(spec).contains(WED) is expected


def test_alertmanager_style_yaml_reads_as_written() -> None:
    """Unquoted `17:00` and `1:5` are base-60 numbers in YAML 1.1; Alertmanager reads text."""
    text = (
        "channels: {c: {type: console}}\ntime_intervals:\n  - name: office\n    time_intervals:\n"
        "      - times: [{start_time: 09:00, end_time: 17:00}]\n"
        "        days_of_month: [1:5, -3:-1]\n        months: [1:3]\n        years: [2026]\n"
        "rules:\n  - {name: r, notify: [c], active_time_intervals: [office]}\n"
    )
    loaded = parse_config(text, "c.yaml", settings_models(), {})
    [interval] = loaded.config.time_intervals[0].time_intervals
    assert interval.times is not None and interval.times[0].end_time == "17:00"
    assert (interval.days_of_month, interval.months) == (["1:5", "-3:-1"], ["1:3"])


def test_empty_interval_lists_mute_nothing() -> None:
    text = (
        "channels: {c: {type: console}}\nrules:\n"
        "  - {name: r, notify: [c], active_time_intervals: [], mute_time_intervals: []}\n"
    )
    loaded = parse_config(text, "c.yaml", settings_models(), {})
    rules, _ = compile_rules(loaded.config.rules, loaded.locate)
    assert rules.by_name["r"].time_muted(WED) is None


def test_a_reversed_range_names_its_line() -> None:
    text = (
        "channels: {c: {type: console}}\ntime_intervals:\n  - name: weekend\n"
        "    time_intervals:\n      - weekdays: ['friday:monday']\n"
    )
    [found] = problems(text)
    assert found.startswith("c.yaml:5: time_intervals[0].time_intervals[0].weekdays: ")
    assert "'friday:monday'" in found and "split" in found


@pytest.mark.parametrize("location", ["America", "Europe", "A" * 300])
def test_a_zone_folder_or_an_overlong_name_is_an_unknown_zone(location: str) -> None:
    """`America` is a folder of the zone database and 300 letters no file name: ZoneInfo
    raised IsADirectoryError and OSError there, and `relay check` (and a reload) ended in a
    traceback instead of naming the line."""
    text = (
        "channels: {c: {type: console}}\ntime_intervals:\n  - name: t\n"
        f"    time_intervals:\n      - location: {location}\n"
    )
    [found] = problems(text)
    assert found.startswith("c.yaml:5: time_intervals[0].time_intervals[0].location: ")
    assert "unknown time zone" in found


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", settings_models(), {})
    return [str(p) for p in info.value.problems]


def _interval(entry: str, name: str = "t") -> str:
    """A config with one time interval, `name`, whose only entry is `entry` (none if "")."""
    interval = f"{{name: '{name}', time_intervals: [{entry}]}}"
    return f"channels: {{c: {{type: console}}}}\ntime_intervals:\n  - {interval}\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [  # the README's bounds: months 1-12, years 1970-9999, weekdays by name (as Alertmanager)
        (_interval("{months: ['13']}"), ".time_intervals[0].months: invalid month '13'"),
        (_interval("{months: ['0']}"), ".time_intervals[0].months: invalid month '0'"),
        (_interval("{weekdays: ['1']}"), ".time_intervals[0].weekdays: invalid weekday '1'"),
        (  # with what it may be: `invalid year '1969'` alone left the bounds a guess
            _interval("{years: [1969]}"),
            ".time_intervals[0].years: invalid year '1969': 1970 to 9999, or a range of them",
        ),
        (
            _interval("{days_of_month: ['32']}"),
            ".time_intervals[0].days_of_month: invalid day of month '32': 1 to 31, or -31 to -1"
            " counting from the month's end",
        ),
        (_interval("{years: [10000]}"), ".time_intervals[0].years: invalid year '10000'"),
        (  # -28 is the 1st in February: in order, yet a negative start needs a negative end
            _interval("{days_of_month: ['-28:1']}"),
            ".time_intervals[0].days_of_month: invalid range '-28:1': a negative start day"
            " needs a negative end day",
        ),
        (_interval("{days_of_month: 5}"), ".time_intervals[0].days_of_month: expected a list"),
        (_interval(""), ".time_intervals: "),  # an interval with no entries
        (_interval("{}", name=""), ".name: "),
    ],
)
def test_an_interval_out_of_bounds_names_its_line(text: str, problem: str) -> None:
    [found] = problems(text)
    assert found.startswith(f"c.yaml:3: time_intervals[0]{problem}")


def test_the_bounds_of_an_interval_hold() -> None:
    """The first and last year taken; a range of minutes within an hour."""
    times = "{start_time: '14:15', end_time: '14:45'}"
    text = _interval(f"{{years: [1970, 9999, '2026'], times: [{times}]}}")
    [interval] = parse_config(text, "c.yaml", settings_models(), {}).config.time_intervals
    assert [interval.contains(WED + m * 60) for m in (-16, -15, 14, 15)] == [
        False,
        True,
        True,
        False,
    ]  # 14:30 UTC, 15 minutes before and after


def test_config_references_and_names() -> None:
    base = "channels: {c: {type: console}}\ntime_intervals:\n  - name: nights\n    time_intervals: [{times: [{start_time: '00:00', end_time: '06:00'}]}]\n"
    found = problems(base + "rules:\n  - {name: r, notify: [c], mute_time_intervals: [nigths]}\n")
    assert found == [
        "c.yaml:6: rules[0].mute_time_intervals[0]: unknown time interval 'nigths'"
        " (did you mean 'nights'?)"
    ]
    found = problems(base + "  - name: nights\n    time_intervals: [{}]\n")
    assert any("time_intervals[1].name: duplicate name" in p for p in found)
    found = problems("inhibit_rules:\n  - {name: i, source_match: {nope: x}}\n")
    assert any("inhibit_rules[0].source_match" in p and "unknown matcher" in p for p in found)


@pytest.mark.parametrize("source", ["{}", "{rule: crash}", "{rule: crash, channel: c}"])
def test_a_source_match_with_nothing_a_source_has_is_refused(source: str) -> None:
    """`{}` loaded, then failed every POST /v1/runs with a 500; `{rule: crash}` loaded and
    made every update a source, so its own rule never muted anything."""
    found = problems(f"inhibit_rules:\n  - {{name: i, source_match: {source}}}\n")
    assert any(
        "inhibit_rules[0].source_match" in p and "at least one of event, status, task, tag" in p
        for p in found
    )


CONFIG = """\
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
time_intervals:
  - name: always
    time_intervals: [{{weekdays: ["monday:sunday"]}}]
  - name: far-future
    time_intervals: [{{years: ["2099"]}}]
rules:
  - name: muted-rule
    match: {{task: "muted/*"}}
    notify: [hook]
    mute_time_intervals: [always]
  - name: inactive-rule
    match: {{task: "inactive/*"}}
    notify: [hook]
    active_time_intervals: [far-future]
  - name: loud-rule
    match: {{status: [failure]}}
    notify: [hook]
"""


def failed(run_id: str, task: str) -> dict[str, Any]:
    run = sdk_run("failed")
    run.update(id=run_id, taskIdentifier=task)
    return run


async def notification(r: Any, run_id: str) -> dict[str, Any]:
    async with r.http.get(r.url + f"/v1/notifications?run_id={run_id}") as resp:
        [found] = (await resp.json())["notifications"]
        return dict(found)


async def test_time_intervals_mute_and_activate(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(CONFIG.format(url=sink.url))
    await r.post(
        [failed("run_a", "muted/x"), failed("run_b", "inactive/x"), failed("run_c", "other")]
    )
    [got] = await sink.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(sink.received) == 1 and got.json()["run"]["id"] == "run_c"
    muted = await notification(r, "run_a")
    assert (muted["state"], muted["reason"]) == ("muted", "time_interval:always")
    inactive = await notification(r, "run_b")
    assert (inactive["state"], inactive["reason"]) == ("muted", "time_interval:outside far-future")


NOT_NOW = CONFIG.replace(
    "rules:\n",
    """rules:
  - name: muted-later
    match: {{task: "later/*"}}
    notify: [hook]
    mute_time_intervals: [far-future]
  - name: active-now
    match: {{task: "now/*"}}
    notify: [hook]
    active_time_intervals: [far-future, always]
""",
)


async def test_time_intervals_that_do_not_mute_now_let_a_notification_out(
    relay: RelayFactory, sink: Sink
) -> None:
    """A mute interval that does not hold now mutes nothing, and a rule is active when any of
    its active intervals holds: each notification goes out."""
    r = await relay(NOT_NOW.format(url=sink.url))
    await r.post([failed("run_l", "later/x"), failed("run_n", "now/x")])
    got = await sink.wait_for(2)
    assert sorted((x.json()["run"]["id"], x.json()["rule"]) for x in got) == [
        ("run_l", "muted-later"),
        ("run_n", "active-now"),
    ]


ALWAYS = """\
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
time_intervals:
  - name: always
    time_intervals: [{{weekdays: ["monday:sunday"]}}]
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""
DIGEST = ALWAYS + "    group_by: [taskIdentifier]\n    group_wait: 1s\n"


async def test_a_time_interval_mutes_at_send_time_too(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A digest waiting out its group_wait when a mute interval begins (here: a reload adds
    one) is muted at flush time, as Alertmanager does; so is a retry waiting in backoff."""
    r = await relay(DIGEST.format(url=sink.url))
    assert (await r.post([failed("run_q", "queued/x")]))[0] == 202
    muting = DIGEST + "    mute_time_intervals: [always]\n"
    (tmp_path / "config0.yaml").write_text(muting.format(url=sink.url))
    assert await r.service.reload("test")
    queued = await until_state(r, "run_q", "muted", attempts=0)  # its group_wait is over
    assert queued["reason"] == "time_interval:always"
    assert sink.received == []


async def test_a_digest_whose_rule_a_reload_renamed_still_goes_out(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """A digest waiting out its group_wait when a reload renames its rule is sent when due
    (its next group_interval is looked up by the old name, which no rule has any more)."""
    r = await relay(DIGEST.format(url=sink.url))
    assert (await r.post([failed("run_d", "digest/x")]))[0] == 202
    renamed = DIGEST.replace("name: failures", "name: renamed")
    assert renamed != DIGEST
    (tmp_path / "config0.yaml").write_text(renamed.format(url=sink.url))
    assert await r.service.reload("test")
    [got] = await sink.wait_for(1)
    assert got.json()["rule"] == "failures"
    assert (await until_state(r, "run_d", "sent", attempts=1))["rule"] == "failures"


RETRYING = "defaults:\n  retry: {{max_attempts: 5, max_age: 1h}}\n" + ALWAYS


async def until_state(r: Any, run_id: str, state: str, attempts: int = 1) -> dict[str, Any]:
    """The notification of `run_id` once it is in `state` after `attempts` tries or more."""
    for _ in range(400):
        found = await notification(r, run_id)
        if found["state"] == state and found["attempts"] >= attempts:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(found)


ACTIVE_ONLY = (
    CONFIG.partition("rules:\n")[0]
    + """rules:
  - name: office-hours
    match: {{status: [failure]}}
    notify: [hook]
    active_time_intervals: [far-future]
"""
)


async def test_a_config_whose_rules_all_have_active_intervals_mutes_outside_them(
    relay: RelayFactory, sink: Sink
) -> None:
    """With no mute interval anywhere and every rule restricted to its active intervals, a
    failure outside them is still muted, not sent."""
    r = await relay(ACTIVE_ONLY.format(url=sink.url))
    assert (await r.post([failed("run_o", "other")]))[0] == 202
    found = await until_state(r, "run_o", "muted", attempts=0)
    assert found["reason"] == "time_interval:outside far-future"
    assert sink.received == []


async def test_a_retry_muted_by_a_time_interval_says_so_in_its_events(
    relay: RelayFactory, sink: Sink, tmp_path: Path
) -> None:
    """The `muted` event of a retrying notification that a time interval mutes at send time
    names the interval's kind (not `silence`) and the attempts made so far (not 0)."""
    sink.default = status(503, {"Retry-After": "1"})
    r = await relay(RETRYING.format(url=sink.url))
    await r.post([failed("run_r", "retried/x")])
    await until_state(r, "run_r", "pending")
    muting = RETRYING + "    mute_time_intervals: [always]\n"
    (tmp_path / "config0.yaml").write_text(muting.format(url=sink.url))
    assert await r.service.reload("test")
    muted = await until_state(r, "run_r", "muted")
    assert (muted["reason"], muted["attempts"]) == ("time_interval:always", 1), muted
    async with r.http.get(r.url + f"/v1/notifications/{muted['id']}") as resp:
        events = (await resp.json())["events"]
    assert [(e["kind"], e["attempts"], e["reason"]) for e in events] == [
        ("created", 0, None),
        ("retry", 1, "server_error"),
        ("muted", 1, "time_interval"),
    ]


SECRET = "Zx3vQ9kLm2Tn8Pw4Rb7Yc"
ALERTS = FIXTURES / "alert-webhooks"
INHIBIT = """\
sources:
  trigger_alerts: {{secret: {secret}}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
inhibit_rules:
  - name: deploy-broke-it
    source_match: {{event: deployment.failed}}
    target_match: {{event: run, status: failure}}
    equal: [environment.slug]
    duration: 10m
rules:
  - name: deploys
    match: {{event: deployment.failed}}
    notify: [hook]
  - name: failures
    match: {{status: [failure]}}
    notify: [hook]
"""


async def post_alert(r: Any, body: bytes) -> int:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"x-trigger-signature-hmacsha256": signature, "content-type": "application/json"}
    async with r.http.post(r.url + "/v1/trigger/alerts", data=body, headers=headers) as resp:
        return resp.status


def alert(name: str) -> dict[str, Any]:
    """A shipped alert-webhook body, to change before posting."""
    body: dict[str, Any] = json.loads((ALERTS / f"{name}.body.json").read_bytes())
    return body


async def post(r: Any, body: dict[str, Any]) -> None:
    assert await post_alert(r, json.dumps(body).encode()) == 202


CLOSING = INHIBIT.replace(
    "    duration: 10m\n", "    close_match: {{event: deployment.success}}\n    duration: 10m\n"
)


async def test_a_failed_deployment_inhibits_run_failures_of_its_environment(
    relay: RelayFactory, sink: Sink
) -> None:
    r = await relay(INHIBIT.format(url=sink.url, secret=SECRET))
    assert await post_alert(r, (ALERTS / "alert.deployment.failed.body.json").read_bytes()) == 202
    [deploy] = await sink.wait_for(1)
    assert deploy.json()["rule"] == "deploys"
    run_alert = json.loads((ALERTS / "alert.run.failed.body.json").read_bytes())
    assert await post_alert(r, json.dumps(run_alert).encode()) == 202
    other_env = json.loads(json.dumps(run_alert))
    other_env["object"]["environment"]["slug"] = "stg"
    other_env["object"]["run"]["id"] = "run_other_env"
    assert await post_alert(r, json.dumps(other_env).encode()) == 202
    await sink.wait_for(2)
    await asyncio.sleep(0.3)
    assert [g.json()["run"]["id"] for g in sink.received[1:]] == ["run_other_env"]
    inhibited = await notification(r, run_alert["object"]["run"]["id"])
    assert (inhibited["state"], inhibited["reason"]) == ("muted", "inhibited:deploy-broke-it")


async def test_a_successful_deployment_ends_the_inhibition_of_a_failed_one(
    relay: RelayFactory, sink: Sink
) -> None:
    """Without `close_match`, run failures stayed muted for the whole `duration` after the
    deployment that fixed them: the failures of the new version went unseen."""
    r = await relay(CLOSING.format(url=sink.url, secret=SECRET))
    await post(r, alert("alert.deployment.failed"))
    await sink.wait_for(1)
    run_alert = alert("alert.run.failed")
    await post(r, run_alert)
    await post(r, alert("alert.deployment.success"))
    after_fix = alert("alert.run.failed")
    after_fix["object"]["run"]["id"] = "run_after_the_fix"
    await post(r, after_fix)
    await sink.wait_for(2)
    await asyncio.sleep(0.3)
    assert [g.json()["run"]["id"] for g in sink.received[1:]] == ["run_after_the_fix"]
    before = await notification(r, run_alert["object"]["run"]["id"])
    assert (before["state"], before["reason"]) == ("muted", "inhibited:deploy-broke-it")


async def test_a_success_older_than_the_failure_does_not_end_its_inhibition(
    relay: RelayFactory, sink: Sink
) -> None:
    """Trigger.dev retries an alert webhook it could not deliver: a success of 09:50 that
    arrives after the failure of 10:02 is not news of a fix, and kept the failures of the
    broken version coming."""
    r = await relay(CLOSING.format(url=sink.url, secret=SECRET))
    await post(r, alert("alert.deployment.failed"))
    await sink.wait_for(1)
    late = alert("alert.deployment.success")
    late["id"], late["created"] = "alert_retried", "2026-08-20T09:50:00.100Z"
    late["object"]["deployment"] |= {"id": "deployment_old", "deployedAt": "2026-08-20T09:50:00Z"}
    await post(r, late)
    run_alert = alert("alert.run.failed")
    await post(r, run_alert)
    muted = await notification(r, run_alert["object"]["run"]["id"])
    assert (muted["state"], muted["reason"]) == ("muted", "inhibited:deploy-broke-it")


STALE_SOURCE = """
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
inhibit_rules:
  - name: maintenance
    source_match: {{task: maintenance, status: EXECUTING}}
    target_match: {{status: failure}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [hook]}}
"""


def _update(run_id: str, task: str, status: str, minute: int) -> dict[str, Any]:
    run = sdk_run("failed")
    updated = f"2026-08-20T09:{minute:02d}:00.000Z"
    return {**run, "id": run_id, "taskIdentifier": task, "status": status, "updatedAt": updated}


@pytest.mark.parametrize("together", [False, True])
@pytest.mark.parametrize(
    ("updates", "muted"),
    [
        ((("COMPLETED", 10), ("EXECUTING", 1)), False),  # out of order: intake drops EXECUTING
        ((("EXECUTING", 1), ("COMPLETED", 10)), True),  # in order: intake takes both
        # stale against the newest update before it, not only against the one just before
        ((("QUEUED", 1), ("COMPLETED", 10), ("EXECUTING", 5)), False),
    ],
)
async def test_only_an_update_intake_takes_opens_a_window(
    relay: RelayFactory,
    sink: Sink,
    updates: tuple[tuple[str, int], ...],
    muted: bool,
    together: bool,
) -> None:
    """A maintenance run's EXECUTING that arrives after its COMPLETED is ignored by intake, so
    it must not mute the failures of the next 30 minutes either; in order, the window opens
    whether the two came in one POST or two (staleness is judged in call order)."""
    r = await relay(STALE_SOURCE.format(url=sink.url))
    maint = [_update("run_maint", "maintenance", status, minute) for status, minute in updates]
    for batch in [maint] if together else [[u] for u in maint]:
        assert (await r.post(batch))[0] == 202
    await r.post(_update("run_other", "billing", "FAILED", 11))
    if not muted:
        [got] = await sink.wait_for(1)
        assert got.json()["run"]["id"] == "run_other"
        return
    row = await r.service.store.get(notification_id("run_other", "failures", "hook"))
    assert row is not None and (row.state, row.reason) == ("muted", "inhibited:maintenance")


MANY_INHIBITS = "\n".join(
    f"""  - name: deploy-{i}
    source_match: {{{{tag: deploy-{i}}}}}
    target_match: {{{{status: failure}}}}
    equal: [taskIdentifier]"""
    for i in range(50)
)
MANY = f"""
channels:
  hook: {{{{type: webhook, url: "{{url}}/hook"}}}}
inhibit_rules:
{MANY_INHIBITS}
rules:
  - {{{{name: failures, match: {{{{status: [failure]}}}}, notify: [hook]}}}}
"""


async def test_a_batch_looks_at_each_inhibit_rule_once_per_kind_of_run(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4,000 failed runs against 50 inhibit rules held the event loop for 3 s: every rule's
    source and target matchers and window key were worked out for every run. Now once per
    distinct (task, tags, status, event) of the batch, and the `equal` values once per run."""
    calls = {"fits": 0, "group_labels": 0}

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)

        return call

    monkeypatch.setattr(inhibit_batch, "fits", counted("fits", silence_index.fits))
    monkeypatch.setattr(
        inhibit_batch, "group_labels", counted("group_labels", grouping.group_labels)
    )
    r = await relay(MANY.format(url=sink.url))
    runs = [_update(f"run_{n}", f"task-{n % 4}", "FAILED", 10) for n in range(400)]
    assert (await r.post(runs))[0] == 202
    # sources and targets: 4 kinds of run x 50 rules each; before, 400 x 50 each
    assert calls["fits"] <= 2 * 4 * 50
    assert calls["group_labels"] <= len(runs)  # before: 400 x 50
    await sink.wait_for(400)
    # the same batch's source still opens the window of its rule for the runs of its task
    source = {**_update("run_src", "task-0", "COMPLETED", 11), "tags": ["deploy-7"]}
    late = [_update(f"late_{n}", f"task-{n % 2}", "FAILED", 12) for n in range(4)]
    assert (await r.post([source, *late]))[0] == 202
    for n, _ in enumerate(late):
        row = await r.service.store.get(notification_id(f"late_{n}", "failures", "hook"))
        assert row is not None
        assert row.reason == ("inhibited:deploy-7" if n % 2 == 0 else None), n


async def test_runs_of_distinct_tasks_share_matchers_that_do_not_look_at_the_task(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 runs of distinct tasks against 50 rules matching tags and status evaluated every
    rule's matchers for every run (2 s of event loop), and again for each notification while
    a window was open: the task was in the key of what was evaluated. Now only the fields some
    rule looks at are."""
    calls = {"fits": 0}

    def counted(*args: Any) -> Any:
        calls["fits"] += 1
        return silence_index.fits(*args)

    monkeypatch.setattr(inhibit_batch, "fits", counted)
    r = await relay(MANY.format(url=sink.url))
    runs = [_update(f"run_{n}", f"task-{n}", "FAILED", 10) for n in range(200)]
    source = {**_update("run_src", "task-3", "COMPLETED", 9), "tags": ["deploy-7"]}
    assert (await r.post([source, *runs]))[0] == 202
    # two kinds of run x 50 rules, for sources, targets and the mute check: before, 200 x 100
    assert calls["fits"] <= 2 * 3 * 50 + 2
    for n in (2, 3, 4):
        row = await r.service.store.get(notification_id(f"run_{n}", "failures", "hook"))
        assert row is not None
        assert row.reason == ("inhibited:deploy-7" if n == 3 else None), n


NY, BERLIN = "America/New_York", "Europe/Berlin"


def _hours(start: str, end: str, location: str = "UTC") -> dict[str, Any]:
    return {"times": [{"start_time": start, "end_time": end}], "location": location}


COMPLETE = {  # Alertmanager's TestTimeIntervalComplete (timeinterval_test.go)
    "weekdays": ["monday:wednesday", "saturday", "sunday"],
    "times": [{"start_time": "13:00", "end_time": "15:00"}],
    "days_of_month": ["1", "10", "20:-1"],
    "years": ["2020:2023"],
    "months": ["january:march"],
}


@pytest.mark.parametrize(
    ("spec", "instant", "expected"),
    [
        # minutes: start included, end excluded, seconds do not count; 24:00 ends the day
        (_hours("09:00", "17:00"), "2026-11-25T09:00:00Z", True),
        (_hours("09:00", "17:00"), "2026-11-25T08:59:59.999Z", False),
        (_hours("09:00", "17:00"), "2026-11-25T16:59:59.999Z", True),
        (_hours("09:00", "17:00"), "2026-11-25T17:00:00Z", False),
        (_hours("22:00", "24:00"), "2026-11-25T23:59:59Z", True),
        (_hours("22:00", "24:00"), "2026-11-26T00:00:00Z", False),
        (_hours("00:00", "24:00"), "2026-11-26T00:00:00Z", True),
        # New York springs forward at 02:00 EST (07:00 UTC) on 2026-03-08: 02:00-03:00 is skipped
        (_hours("02:00", "03:00", NY), "2026-03-08T06:59:59Z", False),
        (_hours("02:00", "03:00", NY), "2026-03-08T07:00:00Z", False),
        (_hours("00:00", "03:00", NY), "2026-03-08T06:59:00Z", True),
        (_hours("00:00", "03:00", NY), "2026-03-08T07:00:00Z", False),  # 03:00 EDT
        (_hours("03:00", "04:00", NY), "2026-03-08T07:00:00Z", True),
        # ... and falls back at 02:00 EDT (06:00 UTC) on 2026-11-01: 01:00-02:00 happens twice
        (_hours("01:00", "02:00", NY), "2026-11-01T05:30:00Z", True),  # 01:30 EDT
        (_hours("01:00", "02:00", NY), "2026-11-01T06:30:00Z", True),  # 01:30 EST
        (_hours("01:00", "02:00", NY), "2026-11-01T07:00:00Z", False),  # 02:00 EST
        # Berlin: 02:00 CET becomes 03:00 CEST on 2026-03-29, 03:00 CEST 02:00 CET on 10-25
        (_hours("02:00", "03:00", BERLIN), "2026-03-29T00:59:59Z", False),
        (_hours("02:00", "03:00", BERLIN), "2026-03-29T01:00:00Z", False),
        (_hours("02:00", "03:00", BERLIN), "2026-10-25T00:30:00Z", True),  # 02:30 CEST
        (_hours("02:00", "03:00", BERLIN), "2026-10-25T01:30:00Z", True),  # 02:30 CET
        (_hours("02:00", "03:00", BERLIN), "2026-10-25T02:00:00Z", False),  # 03:00 CET
        # the weekday and the day of month are the location's: Saturday 22:00 in New York
        ({"weekdays": ["saturday"], "location": NY}, "2026-11-29T03:00:00Z", True),
        ({"weekdays": ["saturday"]}, "2026-11-29T03:00:00Z", False),
        ({"days_of_month": ["-1"], "location": NY}, "2021-03-31T12:00:00-04:00", True),
        ({"days_of_month": ["-1"], "location": NY}, "2021-03-30T12:00:00-04:00", False),
        ({"days_of_month": ["-1"], "location": NY}, "2026-12-01T04:59:59Z", True),
        ({"days_of_month": ["-1"], "location": NY}, "2026-12-01T05:00:00Z", False),
        # February and leap years: -1 is the 29th in 2028, the 28th in 2027
        ({"days_of_month": ["-1"]}, "2028-02-29T12:00:00Z", True),
        ({"days_of_month": ["-1"]}, "2028-02-28T12:00:00Z", False),
        ({"days_of_month": ["-1"]}, "2027-02-28T12:00:00Z", True),
        ({"days_of_month": ["29"]}, "2028-02-29T12:00:00Z", True),
        ({"days_of_month": ["-7:-1"]}, "2028-02-23T00:00:00Z", True),
        ({"days_of_month": ["-7:-1"]}, "2028-02-22T23:59:59Z", False),
        # days a month does not have: clamped at its end, never moved into the next month
        ({"days_of_month": ["30:31"], "months": ["february"]}, "2028-02-29T13:00:00Z", False),
        ({"days_of_month": ["31"]}, "2026-04-30T12:00:00Z", False),
        ({"days_of_month": ["31"]}, "2026-05-01T12:00:00Z", False),
        ({"days_of_month": ["1:31"]}, "2027-02-28T12:00:00Z", True),
        ({"days_of_month": ["-31:-1"], "months": ["6"]}, "2020-06-01T00:00:00Z", True),
        ({"days_of_month": ["-31:-1"], "months": ["6"]}, "2020-05-31T00:00:00Z", False),
        ({"days_of_month": ["1:-1"]}, "2027-02-28T12:00:00Z", True),
        # months by name or number, years; read in the location
        ({"months": ["January:3", "december"]}, "2026-03-31T23:59:59Z", True),
        ({"months": ["January:3", "december"]}, "2026-04-01T00:00:00Z", False),
        ({"years": ["2026:2027"]}, "2027-12-31T23:59:59Z", True),
        ({"years": ["2026:2027"]}, "2028-01-01T00:00:00Z", False),
        ({"years": ["2026:2027"], "location": "Pacific/Auckland"}, "2027-12-31T12:00:00Z", False),
        # every key of an entry must hold (Alertmanager's complete test)
        (COMPLETE, "2021-01-10T13:00:00Z", True),
        (COMPLETE, "2021-01-30T14:24:00Z", True),
        (COMPLETE, "2021-01-09T13:00:00Z", False),
        (COMPLETE, "2021-01-20T12:59:00Z", False),
        (COMPLETE, "2021-02-02T13:00:00Z", False),
        # an empty list holds for nothing (Alertmanager checks `!= nil`), an absent key for all
        ({"weekdays": []}, "2026-11-25T12:00:00Z", False),
        ({"times": []}, "2026-11-25T12:00:00Z", False),
        ({"weekdays": None}, "2026-11-25T12:00:00Z", True),
    ],
)
def test_alertmanager_instants(spec: dict[str, Any], instant: str, expected: bool) -> None:
    at = datetime.fromisoformat(instant).timestamp()
    assert TimeInterval.model_validate(spec).contains(at) is expected


def test_the_entries_of_an_interval_are_ored() -> None:
    nights = NamedTimeInterval.model_validate(
        {
            "name": "nights",
            "time_intervals": [_hours("22:00", "24:00", NY), _hours("00:00", "07:00", NY)],
        }
    )
    held = [h for h in range(24) if nights.contains(_on(25, h))]  # UTC hours: EST is UTC-5
    assert held == [3, 4, 5, 6, 7, 8, 9, 10, 11]  # 22:00 .. 06:00 in New York
