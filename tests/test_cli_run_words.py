"""`relay test FIELD=VALUE ...`: which rules a run described in words would match, as
amtool's `config routes test` takes labels. The commands run in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli_in_process

RULES = """\
channels:
  c: {type: console}
rules:
  - name: test-runs
    match: {status: failure, is_test: true}
    notify: [c]
  - name: billing
    match: {status: failure, task: "billing/*", tags: {any: [env:prod]}}
    notify: [c]
    continue: true
  - name: costly
    match: {cost_cents: {gt: 500}, duration_ms: {gte: 60000}}
    notify: [c]
  - name: enterprise
    match: {status: [CRASHED], metadata: {customer.tier: enterprise, customer.seats: 50}}
    notify: [c]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(RULES)
    return path


def matched(config: Path, *words: str) -> list[str]:
    done = run_cli_in_process("test", "--config", str(config), "--json", *words)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    return list(result["rules"])


@pytest.mark.parametrize(
    ("words", "rules"),
    [
        (["task=billing/charge", "tag=env:prod"], ["billing"]),
        (["task=billing/charge", "tag=env:staging"], []),
        (["task=billing/charge", "tag=env:staging", "tag=env:prod"], ["billing"]),
        (
            ["task=billing/charge", "tag=env:prod", "cost_cents=600", "duration_ms=6e4"],
            ["billing", "costly"],
        ),
        (["cost_cents=600", "duration_ms=59999"], []),
        (["is_test=true"], ["test-runs"]),
        (["is_test=true", "status=COMPLETED"], []),
        (
            ["status=CRASHED", "metadata.customer.tier=enterprise", "metadata.customer.seats=50"],
            ["enterprise"],
        ),
        (
            ["status=CRASHED", "metadata.customer.tier=enterprise", 'metadata.customer.seats="50"'],
            [],
        ),
        (["status=FAILED", "metadata.customer.tier=enterprise", "metadata.customer.seats=50"], []),
    ],
)
def test_words_describe_a_failed_run_the_rules_are_tried_on(
    config: Path, words: list[str], rules: list[str]
) -> None:
    """FAILED, untagged, not a test, free, unless the words say otherwise; values read as JSON
    where they are some (a number, a flag, a quoted text), as the YAML's are."""
    assert matched(config, *words) == rules


def test_the_words_run_costs_nothing_and_takes_no_time(tmp_path: Path) -> None:
    """Unless the words say otherwise, the run is of no cost (base cost too) and no duration."""
    config = tmp_path / "config.yaml"
    zero = "{lt: 1}"
    config.write_text(
        "channels: {c: {type: console}}\nrules:\n  - name: free\n    notify: [c]\n"
        f"    match: {{cost_cents: {zero}, base_cost_cents: {zero}, duration_ms: {zero}}}\n"
    )
    assert matched(config, "task=t") == ["free"]
    assert matched(config, "task=t", "base_cost_cents=1") == []


def test_the_words_run_renders_as_a_file_run_does(config: Path) -> None:
    done = run_cli_in_process("test", "--config", str(config), "task=billing/x", "tag=env:prod")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "run run_relaytest0000000000000000: billing"
    assert lines[1] == "--- rule billing → channel c"
    assert "billing/x" in lines[2] and "FAILED" in lines[2]


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["tsk=x"], "tsk: not a field relay test takes (did you mean 'task'?)"),
        (["task=x", "=y"], "=y: expected FIELD=VALUE (task=billing/charge), or one file"),
        (["a.json", "b.json"], "a.json: expected FIELD=VALUE (task=billing/charge), or one file"),
        (["task=x", "cost"], "cost: expected FIELD=VALUE"),
        (["cost_cents=abc"], "cost_cents: expected a number, got 'abc'"),
        (["duration_ms=true"], "duration_ms: expected a number, got 'true'"),
        (["is_test=yes"], "is_test: expected true or false, got 'yes'"),
        (["status=FAILD"], "status: 'FAILD' is no status of a run (did you mean 'FAILED'?)"),
        (
            ["status=failure"],
            "status: 'failure' is no status of a run (a rule's `failure` is any of CRASHED,"
            " FAILED, INTERRUPTED, SYSTEM_FAILURE, TIMED_OUT)",
        ),
        (["metadata.a=1", "metadata.a.b=2"], "metadata.a.b: a value and a path below it both"),
        (["metadata.=1"], "metadata.: not a field relay test takes"),
    ],
)
def test_a_wrong_word_is_named(config: Path, words: list[str], said: str) -> None:
    done = run_cli_in_process("test", "--config", str(config), *words)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: the words: {said}"), done.stderr


def test_a_file_whose_name_has_an_equals_sign_is_a_file(config: Path, tmp_path: Path) -> None:
    """`relay test runs/id=1.json`: a file that is there is read as the event, not as words."""
    event = tmp_path / "id=1.json"
    event.write_text(
        json.dumps({"id": "run_x", "taskIdentifier": "t", "status": "FAILED", "isTest": True})
    )
    assert matched(config, str(event)) == ["test-runs"]


def test_expect_fails_the_command_when_an_event_matches_other_rules(
    config: Path, tmp_path: Path
) -> None:
    """`--expect` (amtool's --verify.receivers): a routing check for CI. Exit 0 when every
    event matched exactly those rules, in order; else 1, each event that did not said."""
    ok = ["task=billing/x", "tag=env:prod", "cost_cents=600", "duration_ms=60000"]
    done = run_cli_in_process("test", "--config", str(config), *ok, "--expect", "billing,costly")
    assert (done.returncode, done.stderr) == (0, "")
    done = run_cli_in_process("test", "--config", str(config), *ok, "--expect", "costly")
    assert done.returncode == 1 and done.stdout.startswith("run run_relaytest")
    said = (
        "relay test: run run_relaytest0000000000000000: expected costly; matched billing, costly\n"
    )
    assert done.stderr == said
    runs = tmp_path / "runs.json"
    base = {"taskIdentifier": "t", "status": "FAILED"}
    runs.write_text(json.dumps([{**base, "id": "run_a"}, {**base, "id": "run_b", "isTest": True}]))
    done = run_cli_in_process("test", "--config", str(config), str(runs), "--expect", "", "--json")
    assert done.returncode == 1 and json.loads(done.stdout)[1]["rules"] == ["test-runs"]
    assert done.stderr == "relay test: run run_b: expected none; matched test-runs\n"
