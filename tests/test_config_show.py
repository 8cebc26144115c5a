"""`relay config show` and `relay config routes`: the config relay would run, as amtool's
`config show` and `config routes` print Alertmanager's. The commands run in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli_in_process

SECRETS = {
    "AUTH": "ingest-token-1234",
    "SLACK": "xoxb-111-222-slacksecret",
    "HOOK": "https://example.com/h?token=hook-secret-99",
    "SIGN": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "HEADER": "Bearer header-secret-42",
    "SMTP_PASSWORD": "smtp-secret-pw",
    "ALERTS": "alert-secret-77",
}
CONFIG = """\
x-hook: &hook {type: webhook, url: "${HOOK}", secret: "${SIGN}"}
server:
  auth_token: ${AUTH}
sources:
  trigger_alerts: {secret: "${ALERTS}"}
channels:
  oncall: {type: slack, token: "${SLACK}", channel: "${ROOM:-C0123}"}
  hook: {<<: *hook, headers: {Authorization: "${HEADER}"}, timeout: 1500ms}
  mail:
    type: email
    smtp: {host: smtp.example.com, username: u, password: "${SMTP_PASSWORD}"}
    from: relay@example.com
    to: [oncall@example.com]
rules:
  - name: prod-failures
    match: {status: [FAILED, CRASHED], tags: {any: [env:prod]}, cost_cents: {gt: 500}}
    notify: [oncall, hook]
    continue: true
  - name: crash-digest
    match: {event: [run, error], task: "billing/*", metadata: {tier: gold}, is_test: false}
    when: "run.durationMs > 60000"
    notify: [mail]
    group_by: [task]
defaults:
  retry: {max_age: 90m}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def test_show_fills_defaults_in_substitutes_variables_and_hides_every_secret(
    config: Path,
) -> None:
    done = run_cli_in_process("config", "show", "--config", str(config), env=SECRETS)
    assert done.returncode == 0, done.stderr
    assert not [s for s in SECRETS.values() if s in done.stdout + done.stderr]
    shown = yaml.safe_load(done.stdout)
    assert "x-hook" not in shown  # the anchors' holder is not a part of the config
    assert shown["server"]["auth_token"] == "<secret>"
    assert shown["sources"]["trigger_alerts"]["secret"] == "<secret>"
    oncall, hook = shown["channels"]["oncall"], shown["channels"]["hook"]
    assert (oncall["token"], oncall["channel"], oncall["concurrency"]) == ("<secret>", "C0123", 4)
    assert (hook["url"], hook["secret"], hook["headers"]) == (
        "<secret>",
        "<secret>",
        {"Authorization": "<secret>"},
    )
    assert hook["timeout"] == "1.5s"  # durations written back, not 1.5
    assert shown["channels"]["mail"]["smtp"]["password"] == "<secret>"
    assert shown["defaults"]["retry"] == {
        "max_attempts": 12,
        "max_age": "90m",
        "min_backoff": "1s",
        "max_backoff": "10m",
    }
    assert shown["defaults"]["timeout"] == "10s"
    first = shown["rules"][0]
    assert first["continue"] is True and "continue_" not in first  # the YAML's own name
    assert "template" not in first  # unset keys are left out, as when not written


def test_show_as_json_is_the_same_data(config: Path) -> None:
    as_yaml = run_cli_in_process("config", "show", "--config", str(config), env=SECRETS)
    as_json = run_cli_in_process(
        "config", "show", "-o", "json", "--config", str(config), env=SECRETS
    )
    assert json.loads(as_json.stdout) == yaml.safe_load(as_yaml.stdout)


def test_routes_lists_the_rules_in_the_order_they_are_tried(config: Path) -> None:
    done = run_cli_in_process("config", "routes", "--config", str(config), env=SECRETS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Rules are tried in this order")
    assert lines[1].split() == ["#", "RULE", "EVENT", "MATCH", "NOTIFY", "THEN", "DIGEST"]
    assert lines[2].split("  ")[0:2] == ["1", "prod-failures"]
    assert "status in FAILED, CRASHED; tags any env:prod; cost_cents > 500" in lines[2]
    assert "oncall, hook" in lines[2] and "continue" in lines[2]
    assert (
        'billing/*; is_test = false; metadata.tier = "gold"; when run.durationMs > 60000'
        in lines[3]
    )
    assert lines[3].split()[-5:] == ["stop", "by", "task,", "after", "30s"]  # group_wait's default


def test_routes_as_json(config: Path) -> None:
    done = run_cli_in_process("config", "routes", "--json", "--config", str(config), env=SECRETS)
    first, second = json.loads(done.stdout)
    assert first == {
        "number": 1,
        "name": "prod-failures",
        "event": ["run"],
        "conditions": ["status in FAILED, CRASHED", "tags any env:prod", "cost_cents > 500"],
        "notify": ["oncall", "hook"],
        "continue": True,
    }
    assert second["conditions"] == [  # the YAML's scalars: `false`, `"gold"` (not Python's)
        "task in billing/*",
        "is_test = false",
        'metadata.tier = "gold"',
        "when run.durationMs > 60000",
    ]
    assert (second["event"], second["group_by"], second["group_wait"]) == (
        ["run", "error"],
        ["task"],
        "30s",
    )


def test_a_config_with_a_problem_is_refused_as_relay_check_refuses_it(config: Path) -> None:
    config.write_text(CONFIG.replace("notify: [mail]", "notify: [nowhere]"))
    for command in ("show", "routes"):
        done = run_cli_in_process("config", command, "--config", str(config), env=SECRETS)
        assert done.returncode == 1 and done.stdout == ""
        assert "rules[1].notify[0]: unknown channel 'nowhere'" in done.stderr
    unset = run_cli_in_process("config", "show", "--config", str(config))
    assert unset.returncode == 1 and "AUTH" in unset.stderr and "is not set" in unset.stderr


def test_routes_of_a_config_whose_secrets_are_unset_are_shown_with_a_note(config: Path) -> None:
    """The routes hold no secret: on a laptop without the service's, they are shown, each unset
    variable said once (as `relay test` says them); `config show`, which prints the values
    relay would run with, still refuses (above)."""
    done = run_cli_in_process("config", "routes", "--config", str(config), env={"AUTH": "t" * 16})
    assert done.returncode == 0, done.stderr
    assert "prod-failures" in done.stdout and "oncall, hook" in done.stdout
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    unset = sorted(set(SECRETS) - {"AUTH"})
    assert notes == [f"note: {name} is unset; relay serve would refuse it" for name in unset]
    broken = CONFIG.replace("notify: [mail]", "notify: [nowhere]")
    config.write_text(broken)
    refused = run_cli_in_process("config", "routes", "--config", str(config))
    assert refused.returncode == 1 and "unknown channel 'nowhere'" in refused.stderr


def test_without_a_config_file_the_built_in_default_is_shown_and_said(tmp_path: Path) -> None:
    done = run_cli_in_process("config", "routes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "built-in default" in done.stderr
    assert "failures" in done.stdout and "console" in done.stdout


def test_config_needs_show_or_routes() -> None:
    done = run_cli_in_process("config")
    assert done.returncode == 2 and "show" in done.stderr and "routes" in done.stderr
