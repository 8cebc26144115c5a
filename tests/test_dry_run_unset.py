"""`relay test` of a config whose `${VAR}`s are unset: it sends nothing, so it runs, each unset
variable said once on stderr and given a placeholder its fields take; the commands that serve
or send (and `relay check`, which tells what serving would refuse) refuse the file still."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli_in_process

CONFIG = """\
channels:
  hook: {type: webhook, url: "${UX_HOOK_URL}", secret: "${UX_HOOK_SECRET}"}
  pd: {type: pagerduty, routing_key: "${UX_PD_KEY}"}
  mail:
    type: email
    smtp: {host: "${UX_SMTP_HOST}", port: "${UX_SMTP_PORT}"}
    from: "${UX_FROM}"
    to: ["${UX_FROM}"]
rules:
  - name: failures
    match: {status: [failure]}
    notify: [hook, pd, mail]
"""
UNSET = ["UX_FROM", "UX_HOOK_SECRET", "UX_HOOK_URL", "UX_PD_KEY", "UX_SMTP_HOST", "UX_SMTP_PORT"]


def test_relay_test_runs_with_unset_variables_each_said_once(tmp_path: Path) -> None:
    """It needed every secret of production set to say which rules match: now a URL field is
    given a URL, a webhook secret a whsec_ key, PagerDuty's key 32 characters, a port a number,
    an address an address; each variable is named once, though read twice (UX_FROM)."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    tried = run_cli_in_process("test", "--config", str(config), "--json", "task=billing/charge")
    assert tried.returncode == 0, tried.stderr
    assert tried.stderr.splitlines() == [
        f"note: {name} is unset; relay serve would refuse it" for name in UNSET
    ]
    [result] = json.loads(tried.stdout)
    assert result["rules"] == ["failures"]
    assert [m["channel"] for m in result["messages"]] == ["hook", "pd", "mail"]
    assert not any(m["fallback"] for m in result["messages"])


def test_relay_check_and_a_file_with_other_problems_still_refuse_unset_variables(
    tmp_path: Path,
) -> None:
    """`relay check` says what `relay serve` would refuse: the unset variables stay problems.
    And `relay test` of a file with another problem says them all, as before."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    checked = run_cli_in_process("check", "--config", str(config))
    assert checked.returncode == 1 and "UX_PD_KEY is not set" in checked.stderr
    config.write_text(CONFIG.replace("notify: [hook, pd, mail]", "notify: [hook, nope]"))
    tried = run_cli_in_process("test", "--config", str(config), "task=x")
    assert tried.returncode == 1 and tried.stdout == ""
    said = tried.stderr.splitlines()
    assert f"{config}:2: channels.hook.url: environment variable UX_HOOK_URL is not set" in said
    assert any("unknown channel 'nope'" in line for line in said), said
    assert "note:" not in tried.stderr
