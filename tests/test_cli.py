"""The CLI as operators run it: `python -m relay ...` as a child process, no mocks.

check · test · send-test · dlq list/replay · bad environment · --version. Independent commands of
one test run side by side (a thread each) to keep the file fast. A test of what a command finds
and says (a warning's text, a dry run's rules) calls relay.cli.main here (`here`, `serially`):
a child cost half a second of CPU; the process's part (exit codes, streams, environment, standard
input, argv bytes, `serve`) stays with the child-process tests.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import standardwebhooks

from relay.cli import main as relay_main
from relay.cli_files import MAX_INPUT_BYTES
from relay.model import Decision, Match, Run, RunState
from relay.settings import Settings
from relay.store.sqlite import SQLiteStore
from relay.template_files import shipped_templates_dir
from tests.conftest import (
    FIXTURES,
    Sink,
    run_cli,
    run_cli_in_process,
    run_python,
    sdk_run,
    status,
)
from tests.fakes.presets import PD_KEY, FakePagerDuty
from tests.fakes.slack import FakeSlack, Reply

Result = subprocess.CompletedProcess[str]
FAILED_JSON = FIXTURES / "realtime-run" / "sdk" / "run_failed.json"
FAILED_ID = "run_cmuxjbf30kqkowywawhi1r8yr"
COMPLETED_ID = "run_cmrzcpw210si3thkfbknshoal"
WHSEC = "whsec_" + base64.b64encode(bytes(range(24))).decode()
TOKEN = "tok-Zq81-never-printed"
HOOK_URL = "https://hooks.example.com/services/T000/B000/hook-path-never-printed"


def parallel(*calls: Callable[[], Result]) -> list[Result]:
    """Run independent CLI invocations side by side; results in call order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Callable[[], Result]:
    return functools.partial(run_cli, *args, env=env, cwd=cwd)


def here(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Callable[[], Result]:
    """`cli`, called in this process (run_cli_in_process)."""
    return functools.partial(run_cli_in_process, *args, env=env, cwd=cwd)


def serially(*calls: Callable[[], Result]) -> list[Result]:
    """In-process commands one after another (they share this process's streams)."""
    return [call() for call in calls]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def output(result: Result) -> str:
    return result.stdout + result.stderr


def store_env(tmp_path: Path) -> dict[str, str]:
    # sqlite:/// + an absolute path = four slashes
    return {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}


GOOD = """\
channels:
  console:
    type: console
  ops:
    type: console
rules:
  - name: crashes
    match:
      status: [CRASHED]
    notify: [ops]
    continue: true
  - name: failures
    match:
      status: [failure]
    notify: [console, ops]
"""


# ---------------------------------------------------------------------------------- relay check


def test_check_a_valid_config_by_flag_argument_or_environment(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", GOOD)
    other = write(tmp_path / "other.yaml", GOOD)
    by_flag, by_env, by_argument, both = parallel(
        cli("check", "--config", str(good)),
        cli("check", env={"RELAY_CONFIG": str(good)}),
        cli("check", str(good), env={"RELAY_CONFIG": str(other)}),  # amtool check-config FILE
        cli("check", "--config", str(other), str(good)),
    )
    assert both.returncode == 2 and "not both" in both.stderr  # usage, not a config problem
    for result in (by_flag, by_env, by_argument):
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout
        assert str(good) in lines[0]
        assert "OK" in lines[0] and "2 channels" in lines[0] and "2 rules" in lines[0]
        assert result.stderr == ""


def test_check_takes_several_files_as_amtool_check_config_does(tmp_path: Path) -> None:
    """`amtool check-config a.yml b.yml` checks each; `relay check a.yaml b.yaml` was a usage
    error (`unrecognized arguments: b.yaml`, exit 2), so a CI step written for amtool failed
    whatever the files held. Each is checked as if alone; exit 1 if any has a problem."""
    good = write(tmp_path / "good.yaml", GOOD)
    bad = write(tmp_path / "bad.yaml", GOOD.replace("continue: true", "contine: true"))
    both_good = run_cli_in_process("check", str(good), str(good))
    assert (both_good.returncode, both_good.stderr) == (0, "")
    assert both_good.stdout == f"{good}: OK: 2 channels, 2 rules\n" * 2
    mixed = run_cli_in_process("check", str(bad), str(good))
    assert mixed.returncode == 1 and mixed.stdout == f"{good}: OK: 2 channels, 2 rules\n"
    assert f"{bad}:11: rules[0].contine: unknown key (did you mean 'continue'?)" in mixed.stderr
    flagged = run_cli_in_process("check", "--config", str(good), str(good), str(good))
    assert flagged.returncode == 2 and "not both" in flagged.stderr


def test_check_reports_every_problem_with_file_line_and_path(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """\
server:
  auth_tokn: x
channels:
  console: {type: console}
rules:
  - name: r1
    notify: [nope]
""",
    )
    result = run_cli_in_process("check", "--config", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert f"{bad}:2: server.auth_tokn: unknown key (did you mean 'auth_token'?)" in lines
    assert f"{bad}:7: rules[0].notify[0]: unknown channel 'nope'" in lines, result.stderr
    problems = [line for line in lines if re.match(rf"{re.escape(str(bad))}:\d+: \S+: ", line)]
    assert len(problems) == 2, result.stderr
    assert lines[-1] == "2 problems found"


SECRET_CONFIG = """\
server:
  auth_token: ${TOK}
channels:
  hook:
    type: webhook
    url: ${HOOK}
    secret: ${WHSEC}
%(extra)s
rules:
  - name: to-hook
    notify: [hook]
defaults:
  timeout: %(timeout)s
"""


def test_check_names_the_key_or_channel_a_typo_meant(tmp_path: Path) -> None:
    """`statuss`, `notfy`, a top-level `channel` and `notify: [consle]` were "unknown key" /
    "unknown channel 'consle'": right, but the operator had to find the spelling in the docs."""
    bad = write(
        tmp_path / "typo.yaml",
        """\
channel: {}
channels:
  console: {type: console}
  hook: {type: webhook, url: "https://example.com/x", header: {X-Team: core}}
rules:
  - name: r1
    match: {statuss: failure, tags: {nnone: [x]}}
    notfy: [console]
  - name: r2
    notify: [consle]
    continue_on: true
""",
    )
    result = run_cli_in_process("check", "--config", str(bad))
    assert result.returncode == 1
    lines = set(result.stderr.splitlines())
    for line in [
        "1: channel: unknown key (did you mean 'channels'?)",
        "4: channels.hook.header: unknown key (did you mean 'headers'?)",
        "7: rules[0].match.statuss: unknown key (did you mean 'status'?)",
        "7: rules[0].match.tags.nnone: unknown key (did you mean 'none'?)",
        "8: rules[0].notfy: unknown key (did you mean 'notify'?)",
        "10: rules[1].notify[0]: unknown channel 'consle' (did you mean 'console'?)",
        "11: rules[1].continue_on: unknown key (did you mean 'continue'?)",
    ]:
        assert f"{bad}:{line}" in lines, result.stderr


def test_check_never_prints_secrets(tmp_path: Path) -> None:
    secrets = {"TOK": TOKEN, "HOOK": HOOK_URL, "WHSEC": WHSEC}
    bad = write(
        tmp_path / "bad.yaml",
        SECRET_CONFIG % {"extra": "    headerz: {X-Team: core}", "timeout": "soon"},
    )
    good = write(tmp_path / "good.yaml", SECRET_CONFIG % {"extra": "", "timeout": "10s"})
    failed, passed, dry = parallel(
        cli("check", "--config", str(bad), env=secrets),
        cli("check", "--config", str(good), env=secrets),
        cli("test", str(FAILED_JSON), "--config", str(good), env=secrets),
    )
    assert failed.returncode == 1
    assert f"{bad}:8: channels.hook.headerz: unknown key" in failed.stderr
    assert f"{bad}:13: defaults.timeout: expected a duration" in failed.stderr
    assert passed.returncode == 0, passed.stderr
    assert dry.returncode == 0, dry.stderr
    for result in (failed, passed, dry):
        for value in secrets.values():
            assert value not in output(result)
        assert "hooks.example.com" not in output(result)
        assert WHSEC.removeprefix("whsec_") not in output(result)


def test_check_environment_variables(tmp_path: Path) -> None:
    config = write(
        tmp_path / "env.yaml",
        """\
server:
  auth_token: ${CLI_TEST_UNSET_TOKEN}
channels:
  console: {type: console}
defaults:
  timeout: ${CLI_TEST_UNSET_TIMEOUT:-15s}
rules:
  - {name: r1, notify: [console]}
""",
    )
    unset, set_ = serially(
        here("check", "--config", str(config)),
        here("check", "--config", str(config), env={"CLI_TEST_UNSET_TOKEN": "abc"}),
    )
    assert unset.returncode == 1
    assert unset.stderr.splitlines() == [
        f"{config}:2: server.auth_token: environment variable CLI_TEST_UNSET_TOKEN is not set",
        "1 problem found",
    ]
    # ${VAR:-default}: the unset variable takes its default (an empty timeout would be invalid)
    assert set_.returncode == 0, set_.stderr
    assert "OK" in set_.stdout


def test_check_names_a_store_url_relay_serve_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CI gate of `relay check` said OK, then `relay serve` stopped at once on the URL."""
    good = str(write(tmp_path / "good.yaml", GOOD))
    bad = str(write(tmp_path / "bad.yaml", "rules: [{name: r, notify: [nope]}]\n"))
    monkeypatch.setenv("RELAY_STORE_URL", "mysql://u:pw@h/db")
    assert relay_main(["check", good]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "pw" not in err
    assert err.splitlines() == [
        "RELAY_STORE_URL: unsupported store scheme 'mysql' (use sqlite:///... or postgresql://...)",
        "1 problem found",
    ]
    assert relay_main(["check", bad]) == 1  # with the config's own problems, every one
    assert "unknown channel 'nope'" in capsys.readouterr().err.splitlines()[0]
    monkeypatch.setenv("RELAY_STORE_URL", f"sqlite:///{tmp_path}/never/made.db")
    assert relay_main(["check", good]) == 0
    assert not (tmp_path / "never").exists()  # the form is checked; nothing is opened


def test_check_warns_of_a_config_without_rules(tmp_path: Path) -> None:
    empty, channels_only = serially(
        here("check", str(write(tmp_path / "empty.yaml", ""))),
        here("check", str(write(tmp_path / "c.yaml", "channels:\n  out: {type: console}\n"))),
    )
    for result in (empty, channels_only):
        assert result.returncode == 0, result.stderr  # valid, but says what it will not do
        assert "no rules: updates are taken in, none is sent" in result.stderr


def test_check_warns_of_a_rule_whose_event_never_carries_its_statuses(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - {name: errs, match: {event: error, status: [failure]}, notify: [out]}
  - {name: deploys, match: {event: deployment.failed, status: [failure]}, notify: [out]}
  - {name: regressions, match: {event: error, status: regression}, notify: [out]}
""",
    )
    assert warnings_of(config, "never fires") == [
        f"warning: {config}:4: rules[0].match.status: event error carries NEW_ISSUE,"
        " REGRESSION, UNIGNORED; this rule never fires"
    ]


def test_a_rule_may_name_a_status_relay_does_not_know_with_a_warning(tmp_path: Path) -> None:
    """Trigger.dev adds statuses and relay keeps unknown ones as they come, so a rule may name
    one before relay knows it (it was refused); `relay check` still flags it, with the nearest
    known status for a typo. Known names in any vocabulary and case draw nothing."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - name: new
    match: {status: [FAILLED, quantum_leap, failure, frozen, Completed_With_Errors]}
    notify: [out]
""",
    )
    assert warnings_of(config, "not a status") == [
        f"warning: {config}:5: rules[0].match.status: 'FAILLED' is not a status relay knows"
        " (did you mean FAILED?); it matches only a run sent with it",
        f"warning: {config}:5: rules[0].match.status: 'quantum_leap' is not a status relay"
        " knows; it matches only a run sent with it",
    ]
    run = write(tmp_path / "run.json", json.dumps({"id": "run_q", "status": "QUANTUM_LEAP"}))
    assert (
        "--- rule new → channel out"
        in run_cli_in_process("test", str(run), "--config", str(config)).stdout
    )


def test_check_warns_of_an_event_status_misspelt_beside_a_good_one(tmp_path: Path) -> None:
    """A deployment or error rule's status is checked against what its event carries: a
    list with only typos drew "never fires", but a typo beside a good status drew nothing,
    and the alerts it meant (a timed-out deployment here) never came."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - name: deploys
    match: {event: deployment.failed, status: [FAILED, TIMEDOUT, failure]}
    notify: [out]
  - name: issues
    match: {event: error, status: [new_issue, Regression]}
    notify: [out]
""",
    )
    assert warnings_of(config, "match.status") == [
        f"warning: {config}:5: rules[0].match.status: 'TIMEDOUT' is not a status event"
        " deployment.failed carries (did you mean TIMED_OUT?); it never matches",
    ]


def test_check_warns_of_a_rule_filtering_an_event_on_what_it_never_carries(
    tmp_path: Path,
) -> None:
    """A deployment has no task, and no alert webhook carries tags, cost, duration, metadata or
    a test flag: `event: deployment.failed` with `task: billing/*` passed `relay check` and
    never fired. Filters every such event passes (`task: "*"`, `is_test: false`) say nothing."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - {name: a, match: {event: deployment.failed, task: "billing/*"}, notify: [out]}
  - {name: b, match: {event: deployment.success, tags: {any: [env:prod]}}, notify: [out]}
  - {name: c, match: {event: error, cost_cents: {gt: 500}}, notify: [out]}
  - {name: d, match: {event: error, is_test: true, metadata: {tier: x}}, notify: [out]}
  - {name: e, match: {event: error, task: "sync-*", is_test: false}, notify: [out]}
  - {name: f, match: {event: deployment.failed, task: "*", tags: {none: [x]}}, notify: [out]}
  - {name: g, match: {cost_cents: {gt: 500}, tags: {any: [vip]}}, notify: [out]}
  - {name: h, match: {event: deployment.failed, duration_ms: {lt: 5000}}, notify: [out]}
""",
    )
    assert warnings_of(config, "never fires") == [
        f"warning: {config}:{line}: rules[{i}].match.{key}: event {event} carries no {key};"
        " this rule never fires"
        for line, i, key, event in (
            (4, 0, "task", "deployment.failed"),
            (5, 1, "tags", "deployment.success"),
            (6, 2, "cost_cents", "error"),
            (7, 3, "is_test", "error"),
            (7, 3, "metadata", "error"),
            (11, 7, "duration_ms", "deployment.failed"),  # no duration meets any bound
        )
    ]


def test_check_warns_of_a_rule_below_a_catch_all(tmp_path: Path) -> None:
    """The first matching rule wins: below a rule without `continue` that matches every update
    it could, a rule silently never fires. Said where sure; a rule above that narrows by more
    than event, status and test flag, or has `when` or `continue`, shadows nothing."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - {name: narrowed, match: {status: failure, task: "billing/*"}, notify: [out]}
  - {name: guarded, match: {status: failure}, when: "run.durationMs > 1", notify: [out]}
  - {name: goes-on, match: {status: failure}, notify: [out], continue: true}
  - {name: failures, match: {status: failure, is_test: false}, notify: [out]}
  - {name: crashes, match: {status: CRASHED, is_test: false, tags: {any: [vip]}}, notify: [out]}
  - {name: test-crashes, match: {status: CRASHED, is_test: true}, notify: [out]}
  - {name: deploys, match: {event: deployment.failed}, notify: [out]}
  - {name: everything, notify: [out]}
  - {name: executing, match: {status: EXECUTING}, notify: [out]}
  - {name: more-deploys, match: {event: deployment.failed, status: TIMED_OUT}, notify: [out]}
""",
    )
    assert warnings_of(config, "never fires") == [
        f"warning: {config}:{line}: rules[{i}] ({name}): rule {above} above it matches every"
        " update it could and has no `continue: true`; this rule never fires"
        for line, i, name, above in (
            (8, 4, "crashes", "failures"),
            (12, 8, "executing", "everything"),
            (13, 9, "more-deploys", "deploys"),
        )
    ]


def test_check_warns_of_a_recovery_no_channel_hears(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  quiet: {type: console, send_resolved: false}
  loud: {type: console}
rules:
  - {name: a, match: {status: [EXECUTING]}, notify: [quiet], update_on_recovery: true}
  - {name: b, match: {status: [QUEUED]}, notify: [quiet, loud], update_on_recovery: true}
""",
    )
    assert warnings_of(config, "send_resolved") == [
        f"warning: {config}:5: rules[0].update_on_recovery: every channel of this rule has"
        " send_resolved: false; no recovery is sent"
    ]


def test_check_warns_of_an_inhibit_target_no_rule_or_channel_is_named(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        """\
channels: {pager: {type: console}}
rules:
  - {name: page, match: {status: [failure]}, notify: [pager]}
inhibit_rules:
  - name: i
    source_match: {status: CRASHED}
    target_match: {rule: [page, pgae], channel: pagr}
""",
    )
    assert warnings_of(config, "mutes nothing") == [
        f"warning: {config}:7: inhibit_rules[0].target_match.rule: no rule is named 'pgae'"
        " (did you mean 'page'?); it mutes nothing",
        f"warning: {config}:7: inhibit_rules[0].target_match.channel: no channel is named"
        " 'pagr' (did you mean 'pager'?); it mutes nothing",
    ]


def warnings_of(config: Path, needle: str) -> list[str]:
    """The lines of `relay check` (which must pass) that mention `needle`."""
    result = here("check", str(config))()
    assert result.returncode == 0, result.stderr
    return [line for line in result.stderr.splitlines() if needle in line]


def test_check_warnings_come_in_file_order(tmp_path: Path) -> None:
    """The checks run one after another, not down the file: line 15 was told before line 4.
    Warnings headed `file:line:` come by line; one without a line (`no rules`) after them."""
    config = write(
        tmp_path / "c.yaml",
        "server:\n  auth_token: ${TOK}\nchannels:\n  out: {type: console}\n"
        "templates:\n  dir: ./nope\n",
    )
    result = run_cli_in_process("check", str(config), env={"TOK": ""})
    warned = result.stderr.replace(f"{tmp_path}/", "").splitlines()
    assert [line.split(": ")[1] for line in warned] == [
        "c.yaml:2",  # checked last
        "c.yaml:6",  # checked first
        "c.yaml",  # no line: after those with one
    ]
    assert "no rules" in warned[2]


def test_check_warns_of_a_token_that_came_out_empty(tmp_path: Path) -> None:
    """`auth_token: ${RELAY_INGEST_TOKEN}` with the variable set but empty (a secret not
    mounted) left the API open without a word, since an empty token means unset."""
    config = write(tmp_path / "c.yaml", "server:\n  auth_token: ${TOK}\n  admin_token: ${ADM:-}\n")
    run = functools.partial(run_cli_in_process, "check", str(config))
    warned = run(env={"TOK": ""}).stderr.replace(f"{tmp_path}/", "").splitlines()
    assert warned == [
        "warning: c.yaml:2: server.auth_token is empty: POST /v1/runs takes updates without a"
        " token",
        "warning: c.yaml:3: server.admin_token is empty: the admin endpoints (DLQ, silences,"
        " history) take requests without a token",
        "warning: c.yaml: no rules: updates are taken in, none is sent",
    ]
    guarded = run(env={"TOK": "a-token-of-some-length"})
    assert guarded.returncode == 0 and "is empty" not in guarded.stderr  # admin: auth_token


def test_check_warns_of_realtime_feeds_that_do_not_do_what_they_say(tmp_path: Path) -> None:
    """Trigger.dev cuts a tag feed's createdAt to a day, and a feed listed twice (its tags in
    another order) is followed once: both passed `relay check` without a word."""
    config = write(
        tmp_path / "c.yaml",
        """\
sources:
  realtime:
    api_url: http://127.0.0.1:9
    secret_key: tr_dev_x
    feeds:
      - {tags: [a, b], created_at: 2d}
      - {tags: [b, a], created_at: 2d}
      - {run_id: run_1, created_at: 30d}
      - {tags: [c], created_at: 23hr60m}
      - {tags: [d], created_at: 24hr1s}
      - {run_id: run_1}
rules: []
""",
    )
    result = here("check", str(config))()
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "feeds[" in line]
    cut = "Trigger.dev cuts the window to 1d"
    assert [line.split(": sources.")[1].split(":")[0] for line in warned] == [
        "realtime.feeds[0].created_at",
        "realtime.feeds[1]",
        "realtime.feeds[1].created_at",
        "realtime.feeds[4].created_at",
        "realtime.feeds[5]",
    ]
    assert all(cut in w for w in warned if ".created_at:" in w)
    assert all("followed once" in w for w in warned if ".created_at:" not in w)
    assert warned[0].startswith(f"warning: {config}:6: ")


@pytest.mark.parametrize(("timeout", "warned"), [("5s", True), ("23s", True), ("24s", False)])
def test_check_warns_of_a_realtime_timeout_inside_the_long_poll(
    tmp_path: Path, timeout: str, warned: bool
) -> None:
    """Trigger.dev holds a quiet live request about 20 s (the native backend up to 23 s): a
    shorter `timeout` ends every one of them as a failed request (a WARNING, an error counted,
    a backoff growing to 10 s before the next). The docs say it must outlast the hold; `relay
    check` took `timeout: 5s` without a word."""
    config = write(
        tmp_path / "c.yaml",
        f"""\
sources:
  realtime:
    api_url: http://127.0.0.1:9
    secret_key: tr_dev_x
    timeout: {timeout}
    feeds: [{{tags: [a]}}]
rules: []
""",
    )
    expected = [
        f"warning: {config}:5: sources.realtime.timeout: Trigger.dev holds a quiet live request"
        " about 20 s (up to 23 s); a timeout this short ends each one as a failed request"
        " (a warning, an error counted, a backoff before the next)"
    ]
    assert warnings_of(config, "holds a quiet live request") == (expected if warned else [])


def test_check_missing_file_and_builtin_default(tmp_path: Path) -> None:
    missing, builtin = serially(
        here("check", "--config", str(tmp_path / "missing.yaml")),
        here("check", cwd=tmp_path),
    )
    assert missing.returncode == 1
    assert f"{tmp_path / 'missing.yaml'}: config file not found" in missing.stderr
    assert builtin.returncode == 0, builtin.stderr
    assert "built-in default" in builtin.stdout
    assert "1 channel, 1 rule" in builtin.stdout


def test_dry_run_of_alert_webhooks_says_when_serve_would_refuse_them(tmp_path: Path) -> None:
    """`relay test alert.run.failed.request.json` matched and rendered it on a config without
    sources.trigger_alerts, and said nothing: Trigger.dev's deliveries then got 404 while the
    newcomer believed their alerts set up. A note on stderr says so; with the source, or for
    a run, none."""
    alert = FIXTURES / "alert-webhooks" / "alert.run.failed.request.json"
    listening = GOOD + "sources: {trigger_alerts: {secret: s3cret}}\n"
    without, with_source, a_run = serially(
        here("test", str(alert), "--config", str(write(tmp_path / "a.yaml", GOOD))),
        here("test", str(alert), "--config", str(write(tmp_path / "b.yaml", listening))),
        here("test", str(FAILED_JSON), "--config", str(tmp_path / "a.yaml")),
    )
    assert without.returncode == with_source.returncode == a_run.returncode == 0
    assert without.stdout == with_source.stdout and without.stdout.startswith("run run_")
    assert without.stderr == (
        "note: the config has no sources.trigger_alerts: relay serve answers these alert"
        " webhooks 404 (README: register relay as an alert webhook)\n"
    )
    assert with_source.stderr == a_run.stderr == ""


def test_dry_run_says_when_it_tried_the_builtin_default(tmp_path: Path) -> None:
    """The Quickstart serves `RELAY_CONFIG=config.example.yaml`; a `relay test run.json` after
    it, without that variable, tried the built-in default's rules and said nothing of it, as
    `relay serve` and `relay check` do: the newcomer read its matches as the config's."""
    builtin, configured = serially(
        here("test", str(FAILED_JSON), cwd=tmp_path),
        here("test", str(FAILED_JSON), "--config", str(write(tmp_path / "c.yaml", GOOD))),
    )
    assert builtin.returncode == configured.returncode == 0, (builtin, configured)
    [said] = [json.loads(line) for line in builtin.stderr.splitlines()]
    assert said["level"] == "warning" and said["msg"].startswith(
        "no config file found; running the built-in default"
    )
    assert "built-in default" not in configured.stderr


def test_check_warns_of_a_misspelled_template_variable(tmp_path: Path) -> None:
    (tmp_path / "templates" / "console").mkdir(parents=True)
    """The warning names the template file and the line to fix, as a check problem does."""
    (tmp_path / "templates" / "console" / "mine.txt.j2").write_text(
        "{{ run.status }}\n\n{{ runn.id }} {{ runn.status }}\n{{ runn.tags }}\n"
    )
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: r, notify: [c], template: mine}\n",
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, output(result)
    assert result.stderr.splitlines() == [
        f"warning: {config}:4: rules[0].template: console/mine.txt.j2:3: "
        "`runn` is not in the template context (it renders empty)"
    ]


def test_check_warns_of_template_files_relay_never_renders(tmp_path: Path) -> None:
    """An override written to the wrong place (a misspelt folder, a part the type lacks, a
    subfolder, the top, a name without `.j2` beside the same name with it) was never looked
    up: `relay check` said OK and the shipped template went out. Partials, files a template
    includes, the shipped layout and a file without `.j2` (it serves, as SPEC names overrides
    `<type>/run_failed.*`) stay quiet."""
    tpl = tmp_path / "templates"
    shutil.copytree(shipped_templates_dir(), tpl)  # the shipped layout, copied: no warning
    (tpl / "slak").mkdir()
    (tpl / "slack" / "nested").mkdir()
    names = ("slak/run.json.j2", "email/run.subj.j2", "webhook/run.json", "mine.txt.j2")
    for name in (*names, "webhook/mine.json", "email/mine.subject"):
        write(tpl / name, "{{ run.id }}\n")
    write(tpl / "slack" / "nested" / "x.json.j2", "{}\n")
    write(tpl / "console" / "part.j2", "included\n")  # no part, but included by name
    write(tpl / "console" / "mine.txt.j2", '{% include "console/part.j2" %}\n')
    write(tpl / "console" / "README.md", "notes\n")
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: r, notify: [c], template: mine}\n",
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, output(result)
    never = f"warning: {config}:1: templates.dir: "
    assert result.stderr.splitlines() == [
        f"{never}email/run.subj.j2 is never rendered: `.subj` is no part of `email` messages "
        "(parts: subject, txt, html)",
        f"{never}mine.txt.j2 is never rendered: not in a channel type's folder (console, "
        "discord, email, googlechat, msteams, opsgenie, pagerduty, pushover, slack, telegram, "
        "webhook)",
        f"{never}slack/nested/x.json.j2 is never rendered: a template is "
        "`slack/<template>.<part>.j2`, not in a subfolder",
        f"{never}slak/run.json.j2 is never rendered: `slak/` is no channel type "
        "(did you mean slack?)",
        f"{never}webhook/run.json is never rendered: webhook/run.json.j2 beside it is used instead",
    ]


def test_check_warns_of_a_json_template_that_quotes_values_by_hand(tmp_path: Path) -> None:
    """`"title": "{{ summary }}"` renders valid JSON until an error message holds a quote; then
    the receiver gets relay's fallback body instead. `relay check` said OK: it now tries each
    rule's `json` template on a run whose texts hold a quote, a backslash and a line break."""
    (tmp_path / "templates" / "webhook").mkdir(parents=True)
    write(tmp_path / "templates" / "webhook" / "mine.json.j2", '{"title": "{{ summary }}"}\n')
    write(tmp_path / "templates" / "webhook" / "safe.json.j2", '{"title": {{ summary|tojson }}}\n')
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {w: {type: webhook, url: 'http://x.test/'}}\n"
        "rules:\n  - {name: r, notify: [w], template: mine, continue: true}\n"
        "  - {name: s, notify: [w], template: safe}\n",
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, output(result)
    assert result.stderr.splitlines() == [
        f"warning: {config}:4: rules[0].template: webhook/mine.json.j2 renders invalid JSON "
        "(output line 1 column 32) when run data holds a quote, a backslash or a line break: "
        "write each value through tojson, not inside quotes"
    ]


def test_check_finds_every_broken_template_file(tmp_path: Path) -> None:
    tpl = tmp_path / "templates"
    (tpl / "console").mkdir(parents=True)
    (tpl / "slack").mkdir()
    write(tpl / "slack" / "unused.json.j2", "{\n{% if %}\n")  # no rule renders it
    write(tpl / "console" / "mine.txt.j2", '{% include "console/part.txt.j2" %}\n')
    write(tpl / "console" / "part.txt.j2", "ok\n{{ run.id }\n")  # reported once, at the rule
    write(
        tpl / "console" / "other.txt.j2",
        '\n\n{% if run.tags %}{% include "console/gone.txt.j2" %}{% endif %}',
    )
    (tpl / "console" / "latin.txt.j2").write_bytes(b"caf\xe9 {{ run.id }}")
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\nrules:\n"
        "  - {name: r, notify: [c], template: mine, continue: true}\n"
        "  - {name: o, notify: [c], template: other, continue: true}\n"
        "  - {name: l, notify: [c], template: latin}\n",
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 1, output(result)
    assert result.stderr.splitlines() == [
        f"{config}:1: templates.dir: slack/unused.json.j2:2: "
        "Expected an expression, got 'end of statement block'",
        f"{config}:4: rules[0].template: console: console/part.txt.j2:2: unexpected '}}'",
        f"{config}:6: rules[2].template: console: console/latin.txt.j2: not a readable UTF-8 file",
        "3 problems found",
    ]
    write(tpl / "console" / "part.txt.j2", "ok\n")  # fixed: what is left is a warning
    write(tpl / "slack" / "unused.json.j2", "{}")
    (tpl / "console" / "latin.txt.j2").write_text("{{ run.id }}")
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, output(result)
    assert result.stderr.splitlines() == [
        f"warning: {config}:5: rules[1].template: console: console/other.txt.j2:3: template "
        "console/gone.txt.j2 not found (the fallback is sent when that line runs)"
    ]


def test_check_flags_a_dunder_in_a_template_as_in_a_when(tmp_path: Path) -> None:
    """`run.__class__` in a `when:` was a `relay check` error (the sandbox refuses it on every
    run), but in a template of templates.dir it passed: every render sent the fallback."""
    tpl = tmp_path / "templates" / "console"
    tpl.mkdir(parents=True)
    write(tpl / "mine.txt.j2", "{{ run.id }}\n{{ run.__class__ }}\n")
    write(tpl / "unused.txt.j2", "\n\n{{ run | attr('__globals__') }}")  # no rule renders it
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\nrules:\n"
        "  - {name: r, notify: [c], template: mine, continue: true}\n"
        "  - {name: w, notify: [c], when: \"run['__init__'] is none\"}\n",
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 1, output(result)
    refused = "is not allowed (the sandbox refuses `__` names)"
    assert result.stderr.splitlines() == [
        f"{config}:1: templates.dir: console/unused.txt.j2:3: `__globals__` {refused}",
        f"{config}:4: rules[0].template: console: console/mine.txt.j2:2: `__class__` {refused}",
        f"{config}:5: rules[1].when: invalid expression: `__init__` {refused}",
        "3 problems found",
    ]


def test_check_lets_a_data_key_of_two_underscores_through(tmp_path: Path) -> None:
    """GraphQL's `__typename` is data, which the sandbox reads (a dict's own `__` key): only
    Python's special `__name__`s are refused, or a template or `when:` reading it was refused."""
    tpl = tmp_path / "templates" / "console"
    tpl.mkdir(parents=True)
    write(tpl / "mine.txt.j2", "{{ payload.__typename }} {{ payload['__typename'] }}\n")
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\nrules:\n"
        "  - name: r\n    notify: [c]\n    template: mine\n"
        "    when: \"payload.__typename == 'Invoice'\"\n",
    )
    event = write(
        tmp_path / "run.json",
        json.dumps({**sdk_run("failed"), "payload": {"__typename": "Invoice"}}),
    )
    result = run_cli_in_process("test", "--config", str(config), str(event))
    assert result.returncode == 0, output(result)
    assert "Invoice Invoice" in result.stdout


# ----------------------------------------------------------------------------------- relay test

DRY_RUN_CONFIG = """\
channels:
  console:
    type: console
  hook:
    type: webhook
    url: %(url)s/hook
    secret: %(secret)s
rules:
  - name: all-failures
    match: {status: [failure]}
    notify: [console]
    continue: true
  - name: sync-failures
    match: {status: [failure], task: "sync-*"}
    notify: [hook]
    continue: true
  - name: crashes-only
    match: {status: [CRASHED]}
    notify: [console]
"""


def section(stdout: str, header: str) -> str:
    """The lines after `header` up to the next `--- ` header."""
    lines = stdout.splitlines()
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("--- ")), len(lines))
    return "\n".join(lines[start:end])


def test_dry_run_says_why_a_message_is_the_fallback(tmp_path: Path) -> None:
    (tmp_path / "templates" / "console").mkdir(parents=True)
    write(tmp_path / "templates" / "console" / "mine.txt.j2", "ok\n{{ 1 // 0 }}\n")
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: r, notify: [c], match: {status: [failure]}, template: mine}\n",
    )
    text = run_cli_in_process("test", str(FAILED_JSON), "--config", str(config))
    as_json = run_cli_in_process("test", str(FAILED_JSON), "--config", str(config), "--json")
    error = "ZeroDivisionError in console/mine.txt.j2:2"
    assert f"--- rule r → channel c (fallback: {error})" in text.stdout.splitlines()
    [message] = json.loads(as_json.stdout)[0]["messages"]
    assert (message["fallback"], message["error"]) == (True, error)


def test_dry_run_says_what_slack_drops_or_cuts(tmp_path: Path) -> None:
    """`relay test` showed a Slack part as rendered, but the channel drops what Slack would
    refuse (a section whose text is no string, blocks past 50) and cuts long texts: the
    template's author saw 60 blocks where Slack got 50, and a block that never arrived. It
    shows the message as sent now (the channel's own cut), and says what was cut."""
    (tmp_path / "templates" / "slack").mkdir(parents=True)
    write(
        tmp_path / "templates" / "slack" / "mine.json.j2",
        '{"text": "t", "attachment": [], "blocks": [\n'
        '{"type": "section", "text": {"type": "mrkdwn", "text": {{ run.tags|tojson }}}},\n'
        '{"type": "section", "text": {"type": "mrkdwn", "text": {{ ("y" * 5000)|tojson }}}}\n'
        '{% for i in range(60) %},{"type": "divider"}{% endfor %}]}\n',
    )
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\n"
        "channels: {s: {type: slack, webhook_url: 'http://127.0.0.1:9/never'}}\n"
        "rules:\n  - {name: r, notify: [s], match: {status: [failure]}, template: mine}\n",
    )
    text = run_cli_in_process("test", str(FAILED_JSON), "--config", str(config))
    as_json = run_cli_in_process("test", str(FAILED_JSON), "--config", str(config), "--json")
    changes = [
        "`attachment` dropped (not a Slack message key)",
        "block 1 (section) dropped: nothing Slack can show",
        "block 2 (section) cut to Slack's limits",
        "blocks 52-62 dropped: Slack takes 50 blocks",
    ]
    assert f"--- rule r → channel s (sent changed: {'; '.join(changes)})" in text.stdout
    [message] = json.loads(as_json.stdout)[0]["messages"]
    assert (message["fallback"], message["changes"]) == (False, changes)
    sent = json.loads(message["parts"]["json"])
    assert json.loads(section(text.stdout, text.stdout.splitlines()[1])) == sent
    assert (sorted(sent), len(sent["blocks"])) == (["blocks", "text"], 50)
    assert len(sent["blocks"][0]["text"]["text"]) == 3000  # block 2, cut


def test_dry_run_shows_a_discord_or_teams_message_as_sent(tmp_path: Path) -> None:
    """Discord and Teams cut a message to their limits too (content 2,000 characters, a card
    under Teams' body size): `relay test` showed the part as rendered, not what they get."""
    for kind in ("discord", "msteams"):
        (tmp_path / "templates" / kind).mkdir(parents=True)
    long = '{"content": {{ ("y" * 5000)|tojson }}, "text": {{ ("y" * 40000)|tojson }}}\n'
    write(tmp_path / "templates" / "discord" / "mine.json.j2", long)
    write(tmp_path / "templates" / "msteams" / "mine.json.j2", long)
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels:\n"
        "  d: {type: discord, webhook_url: 'https://discord.com/api/webhooks/1/x'}\n"
        "  t: {type: msteams, webhook_url: 'https://example.com/workflows/x'}\n"
        "rules:\n  - {name: r, notify: [d, t], match: {status: [failure]}, template: mine}\n",
    )
    as_json = run_cli_in_process("test", str(FAILED_JSON), "--config", str(config), "--json")
    discord, teams = (
        json.loads(m["parts"]["json"]) for m in json.loads(as_json.stdout)[0]["messages"]
    )
    assert len(discord["content"]) == 2000 and discord["allowed_mentions"] == {"parse": []}
    [card] = teams["attachments"]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert len(json.dumps(teams)) < 40_000


def test_dry_run_renders_the_digest_of_a_group(tmp_path: Path) -> None:
    """A `digest` template could not be tried: `relay test` rendered each run alone, and the
    digest's first render was in production. Two or more runs of the file in one group of a
    `group_by` rule now also get the digest they would (a run given twice counts once), asked
    with --digests: without it the output stays one result per event."""
    (tmp_path / "templates" / "console").mkdir(parents=True)
    write(
        tmp_path / "templates" / "console" / "digest.txt.j2",
        "{{ group.count }} of {{ group.labels.taskIdentifier }}:"
        "{% for r in group.runs %} {{ r.id }}{% endfor %}\n",
    )
    failed = json.loads(FAILED_JSON.read_text())
    runs = [{**failed, "id": f"run_{n}", "taskIdentifier": t} for n, t in enumerate("aaab")]
    event = write(tmp_path / "runs.json", json.dumps([*runs, runs[0]]))
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: r, notify: [c], group_by: [taskIdentifier]}\n",
    )
    plain = run_cli_in_process("test", str(event), "--config", str(config), "--json")
    assert [r["event"] for r in json.loads(plain.stdout)] == ["run"] * 5
    text = run_cli_in_process("test", str(event), "--config", str(config), "--digests")
    as_json = run_cli_in_process("test", str(event), "--config", str(config), "--json", "--digests")
    [digest] = [r for r in json.loads(as_json.stdout) if r["event"] == "digest"]
    assert digest["run_id"].startswith("grp_") and digest["rules"] == ["r"]
    assert digest["messages"][0]["parts"] == {"txt": "3 of a: run_0 run_1 run_2\n"}
    assert section(text.stdout, "--- rule r → channel c").count("FAILED") == 1  # a run alone
    assert f"digest {digest['run_id']}: r" in text.stdout.splitlines()
    assert "3 of a: run_0 run_1 run_2" in text.stdout.splitlines()


def test_dry_run_shows_hostile_run_data_escaped(tmp_path: Path) -> None:
    """`relay test` printed a run id and the rendered console text raw: an ESC sequence in a
    run's error message cleared or retitled the operator's terminal, a line break forged a line."""
    config = write(
        tmp_path / "c.yaml",
        "channels: {c: {type: console}}\nrules:\n  - {name: r, notify: [c], match: {status: [failure]}}\n",
    )
    run = sdk_run("failed")
    run["id"] = "run_x\nrun forged: r\x1b]0;pwn\x07"
    run["error"] = {"message": "boom\x1b[2J\x1b[H\x9b31m", "name": "Error"}
    shown = run_cli("test", "-", "--config", str(config), stdin=json.dumps(run))
    assert shown.returncode == 0, shown.stderr
    assert not any(c in shown.stdout for c in "\x1b\x07\x9b"), shown.stdout
    assert shown.stdout.splitlines()[0] == r"run run_x\nrun forged: r\x1b]0;pwn\x07: r"
    assert r"boom\x1b[2J\x1b[H\x9b31m" in shown.stdout


def test_dry_run_reads_the_event_from_standard_input(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        "channels: {c: {type: console}}\nrules:\n  - {name: r, notify: [c], match: {status: [failure]}}\n",
    )
    piped = run_cli("test", "-", "--config", str(config), stdin=FAILED_JSON.read_text())
    from_file = run_cli("test", str(FAILED_JSON), "--config", str(config))
    assert (piped.returncode, piped.stdout) == (0, from_file.stdout)
    assert "r" in piped.stdout and "no rule matched" not in piped.stdout
    bad = run_cli("test", "-", "--config", str(config), stdin="{not json")
    assert bad.returncode != 0 and "standard input: invalid JSON" in bad.stderr, bad.stderr


def test_dry_run_refuses_an_event_file_over_its_limit(tmp_path: Path) -> None:
    """`relay test /dev/zero` (or `- < big`) read until memory ran out: 6 GB in 5 s. Now the
    file's first MAX_INPUT_BYTES + 1 bytes tell: valid JSON (spaces, then `[]`) is refused."""
    config = write(tmp_path / "c.yaml", "channels: {c: {type: console}}\n")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * MAX_INPUT_BYTES + b"[]")
    done = run_cli_in_process("test", str(huge), "--config", str(config))
    assert (done.returncode, done.stdout) == (1, "")
    wanted = f"error: {huge}: larger than 64 MiB; relay test reads no more"
    assert done.stderr.splitlines()[-1] == wanted  # after the config's warning: no rules
    piped = run_cli("test", "-", "--config", str(config), stdin=huge.read_text())
    wanted = "error: standard input: larger than 64 MiB; relay test reads no more"
    assert (piped.returncode, piped.stderr.splitlines()[-1]) == (1, wanted)


def test_a_task_regex_that_backtracks_for_ever_is_stopped_as_no_match(tmp_path: Path) -> None:
    """`task_regex: ^(a|aa)+$` over a task of 40 `a`s and a `!` backtracked for hours on the event
    loop: relay serve answered nothing, /healthz included, and relay test hung alike. Now the
    match stops after 1 s: no match, and a warning naming the rule and the run."""
    rule = "{name: r, notify: [c], match: {task_regex: '^(a|aa)+$'}}"
    config = write(tmp_path / "c.yaml", f"channels: {{c: {{type: console}}}}\nrules: [{rule}]\n")
    runs = [
        {**sdk_run("failed"), "id": f"run_{n}", "taskIdentifier": task}
        for n, task in (("slow", "a" * 40 + "!"), ("fits", "aaa"))
    ]
    done = run_cli("test", "-", "--config", str(config), stdin=json.dumps(runs))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run run_slow: no rule matched\nrun run_fits: r\n")
    [warning] = [json.loads(line) for line in done.stderr.splitlines() if "task_regex" in line]
    assert warning["msg"] == "rule `task_regex` took too long; treating as no match"
    assert (warning["rule"], warning["run_id"]) == ("r", "run_slow")


async def test_dry_run_names_rules_renders_messages_and_sends_nothing(
    tmp_path: Path, sink: Sink
) -> None:
    config = write(tmp_path / "c.yaml", DRY_RUN_CONFIG % {"url": sink.url, "secret": WHSEC})
    both = write(tmp_path / "both.json", json.dumps([sdk_run("failed"), sdk_run("completed")]))
    text, as_json, many = await asyncio.gather(
        asyncio.to_thread(run_cli_in_process, "test", str(FAILED_JSON), "--config", str(config)),
        asyncio.to_thread(
            run_cli_in_process, "test", str(FAILED_JSON), "--config", str(config), "--json"
        ),
        asyncio.to_thread(run_cli_in_process, "test", str(both), "--config", str(config)),
    )
    for result in (text, as_json, many):
        assert result.returncode == 0, result.stderr

    # which rules matched, by name, in order
    matched = [line for line in text.stdout.splitlines() if line.startswith("run ")]
    assert matched == [f"run {FAILED_ID}: all-failures, sync-failures"]
    assert "crashes-only" not in matched[0]
    # the console message as it would be printed
    console = section(text.stdout, "--- rule all-failures → channel console")
    assert "sync-customer-data" in console and FAILED_ID in console
    # the webhook body as it would be POSTed
    body = json.loads(section(text.stdout, "--- rule sync-failures → channel hook"))
    assert body["rule"] == "sync-failures" and body["channel"] == "hook"
    assert body["run"]["taskIdentifier"] == "sync-customer-data"

    parsed = json.loads(as_json.stdout)
    assert [r["run_id"] for r in parsed] == [FAILED_ID]
    assert parsed[0]["rules"] == ["all-failures", "sync-failures"]
    assert [(m["rule"], m["channel"]) for m in parsed[0]["messages"]] == [
        ("all-failures", "console"),
        ("sync-failures", "hook"),
    ]

    runs = [line for line in many.stdout.splitlines() if line.startswith("run ")]
    assert runs == [
        f"run {FAILED_ID}: all-failures, sync-failures",
        f"run {COMPLETED_ID}: no rule matched",
    ]

    await asyncio.sleep(0.05)
    assert sink.received == []  # a dry run sends nothing


def test_dry_run_reads_the_shipped_alert_webhook_fixtures(tmp_path: Path) -> None:
    """Every file of fixtures/trigger/alert-webhooks/: the signed bytes (*.body.json) and the
    recorded requests holding them (*.request.json) name the same rules."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - {name: runs, match: {status: [failure]}, notify: [out]}
  - {name: broken-deploys, match: {event: deployment.failed}, notify: [out]}
  - {name: deploys, match: {event: deployment.success}, notify: [out]}
""",
    )
    files = sorted((FIXTURES / "alert-webhooks").glob("*.json"))
    results = serially(*(here("test", str(path), "--config", str(config)) for path in files))
    # each line names the event's kind: a deployment was headed "run deployment_…"
    expected = {
        "alert.run.failed": "run run_cmuxjbf30kqkowywawhi1r8yr: runs",
        "alert.deployment.failed": "deployment.failed deployment_piiwr6f92xrz7zfhpvkcy: "
        "broken-deploys",
        "alert.deployment.success": "deployment.success deployment_eojsuds5n9dhqsgm4i3pi: deploys",
    }
    assert len(files) == 2 * len(expected)
    for path, result in zip(files, results, strict=True):
        assert result.returncode == 0, (path.name, result.stderr)
        kind = path.name.removesuffix(".body.json").removesuffix(".request.json")
        assert result.stdout.splitlines()[0] == expected[kind], path.name
        assert "--- rule " in result.stdout and "(fallback)" not in result.stdout


def test_dry_run_of_an_array_of_alert_webhooks_tests_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Alert bodies collected in one array were refused with the ingest endpoint's advice
    ('a Trigger.dev alert webhook, not a run: point the alert channel at /v1/trigger/alerts')."""
    config = str(write(tmp_path / "c.yaml", GOOD))
    names = ("alert.run.failed.body.json", "alert.deployment.failed.body.json")
    bodies = [json.loads((FIXTURES / "alert-webhooks" / n).read_bytes()) for n in names]
    events = write(tmp_path / "alerts.json", json.dumps(bodies))
    assert relay_main(["test", str(events), "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith(("run ", "deployment."))] == [
        f"run {FAILED_ID}: failures",
        "deployment.failed deployment_piiwr6f92xrz7zfhpvkcy: no rule matched",
    ]
    # --json says the kind too: a deployment was a bare "run_id", as a run's
    assert relay_main(["test", str(events), "--config", config, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["event"], r["run_id"]) for r in results] == [
        ("run", FAILED_ID),
        ("deployment.failed", "deployment_piiwr6f92xrz7zfhpvkcy"),
    ]


def test_dry_run_of_a_realtime_response_body_tests_its_rows(tmp_path: Path) -> None:
    """A live Realtime response (Electric messages): the rows it leaves are tested; a run it
    only updates (changed columns, no snapshot row) is named as skipped, not an error."""
    config = write(tmp_path / "c.yaml", GOOD)
    body = FIXTURES / "electric" / "live_response.body.json"
    result = here("test", str(body), "--config", str(config))()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "run run_cmy2trjs6h23sbbwrzm2jlnhj: no rule matched"
    assert "skipped cmuxjbf30kqkowywawhi1r8yr: only an update" in result.stderr


def test_dry_run_of_a_realtime_body_leaves_out_a_run_it_deletes(tmp_path: Path) -> None:
    """A delete after a run's insert (the run left the shape) leaves no row of it: nothing of
    that run is tested."""
    config = write(tmp_path / "c.yaml", GOOD)
    messages = json.loads((FIXTURES / "electric" / "live_response.body.json").read_text())
    inserted = next(m for m in messages if m.get("headers", {}).get("operation") == "insert")
    delete = {
        "key": inserted["key"],
        "value": {"id": inserted["value"]["id"]},
        "headers": {"operation": "delete", "relation": ["public", "TaskRun"]},
    }
    body = write(tmp_path / "body.json", json.dumps([*messages[:-1], delete, messages[-1]]))
    result = here("test", str(body), "--config", str(config))()
    assert result.returncode == 0, result.stderr
    assert inserted["value"]["friendlyId"] not in result.stdout, result.stdout


def test_dry_run_of_a_recorded_realtime_session_tests_the_runs_it_ends_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fixtures' session_tag_feed.json (request/response exchanges of one feed) was refused
    with 'id: required field is missing'; its responses' messages are folded in order, so the
    run that failed in a live response is tested with its snapshot row (in-process)."""
    config = str(write(tmp_path / "c.yaml", GOOD))
    session = str(FIXTURES / "electric" / "session_tag_feed.json")
    assert relay_main(["test", session, "--config", config]) == 0
    out, err = capsys.readouterr()
    runs = [line for line in out.splitlines() if line.startswith("run ")]
    assert runs == [
        f"run {FAILED_ID}: failures",
        "run run_cmy2trjs6h23sbbwrzm2jlnhj: no rule matched",  # still EXECUTING
    ]
    assert "skipped" not in err


def test_dry_run_says_so_when_there_is_nothing_to_match(tmp_path: Path) -> None:
    """An alert type relay does not know (the endpoint ignores it), or an empty array: a line
    saying why no rule is listed, rather than no output at all."""
    config = write(tmp_path / "c.yaml", GOOD)
    newer = write(tmp_path / "newer.json", '{"type": "alert.run.slow", "object": {}}')
    empty = write(tmp_path / "empty.json", "[]")
    newer_r, empty_r = serially(
        *(here("test", str(path), "--config", str(config)) for path in (newer, empty))
    )
    assert newer_r.returncode == 0 and empty_r.returncode == 0
    assert newer_r.stdout.startswith("alert alert.run.slow: an alert type relay does not know")
    assert empty_r.stdout == "no runs in the file: no rule can match\n"


def test_dry_run_reports_an_unknown_alert_type_among_known_ones(tmp_path: Path) -> None:
    """An array of alert bodies with a type relay does not know: that one was dropped without
    a word (a lone one was reported), and `--json` never said it. Human output says so after
    the results; `--json` keeps stdout for the results and says it on stderr."""
    config = write(tmp_path / "c.yaml", GOOD)
    known = json.loads((FIXTURES / "alert-webhooks" / "alert.run.failed.body.json").read_text())
    newer = {"type": "alert.run.slow", "object": {}}
    path = write(tmp_path / "alerts.json", json.dumps([known, newer]))
    lone = write(tmp_path / "lone.json", json.dumps(newer))
    human, as_json, lone_json = serially(
        here("test", str(path), "--config", str(config)),
        here("test", str(path), "--config", str(config), "--json"),
        here("test", str(lone), "--config", str(config), "--json"),
    )
    note = "alert alert.run.slow: an alert type relay does not know"
    assert human.returncode == as_json.returncode == lone_json.returncode == 0
    assert human.stdout.splitlines()[0].startswith(f"run {FAILED_ID}: ")
    assert any(line.startswith(f"[1] {note}") for line in human.stdout.splitlines())
    assert [r["run_id"] for r in json.loads(as_json.stdout)] == [FAILED_ID]
    assert f"[1] {note}" in as_json.stderr
    assert json.loads(lone_json.stdout) == [] and note in lone_json.stderr


def test_dry_run_takes_an_array_mixing_alert_bodies_and_runs(tmp_path: Path) -> None:
    """An array holding a run and an alert webhook body was refused as a whole (`[1]: a
    Trigger.dev alert webhook, not a run`): each element is read as its endpoint reads it
    alone, in order, and a bad one is named by its index and kind."""
    config = write(tmp_path / "c.yaml", GOOD)
    alert = json.loads((FIXTURES / "alert-webhooks" / "alert.run.failed.body.json").read_text())
    run = {**sdk_run("failed"), "id": "run_pushed"}
    mixed = write(tmp_path / "mixed.json", json.dumps([run, alert]))
    broken = write(tmp_path / "broken.json", json.dumps([run, {**alert, "object": {}}]))
    ok, bad = serially(
        here("test", str(mixed), "--config", str(config), "--json"),
        here("test", str(broken), "--config", str(config)),
    )
    assert ok.returncode == 0, ok.stderr
    assert [r["run_id"] for r in json.loads(ok.stdout)] == ["run_pushed", FAILED_ID]
    assert bad.returncode == 1
    assert "[1].object.run: required field is missing (an alert webhook body)" in bad.stderr


def test_dry_run_notes_on_stderr_cannot_steer_the_terminal(tmp_path: Path) -> None:
    """`--json` said an unknown alert type on stderr as the file had it: ESC recoloured the
    operator's terminal and a line break forged a line of its own (the human output, on
    stdout, escaped them). Both say it escaped now, and stdout stays the results' JSON."""
    config = write(tmp_path / "c.yaml", GOOD)
    forged = {"type": "alert.\x1b[31mred\x1b[0m\nforged", "object": {}}
    path = write(tmp_path / "forged.json", json.dumps([forged]))
    human, as_json = serially(
        here("test", str(path), "--config", str(config)),
        here("test", str(path), "--config", str(config), "--json"),
    )
    assert human.returncode == as_json.returncode == 0 and json.loads(as_json.stdout) == []
    for text in (human.stdout, as_json.stderr):
        assert "\x1b" not in text and "\nforged" not in text
        assert "[0] alert alert.\\x1b[31mred\\x1b[0m\\nforged: an alert type" in text


def test_arguments_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (a shell's $'\\xff', which Python hands over as surrogates)
    in a rule, run id or matcher reached the store and ended in a traceback; a path may be
    any bytes and is read as one."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path}/relay.db"}
    rule, matcher, path = parallel(
        cli("history", "--rule", "\udcff", env=env),
        cli("silence", "add", "task=\udcff", env=env),
        cli("check", str(tmp_path / "\udcff.yaml")),
    )
    for refused in (rule, matcher):
        assert refused.returncode == 2, refused.stderr
        assert "not valid UTF-8" in refused.stderr and "Traceback" not in refused.stderr
    assert path.returncode == 1 and "config file not found" in path.stderr, path.stderr


def test_a_user_name_that_is_not_utf8_does_not_refuse_a_silence(tmp_path: Path) -> None:
    """The default author is $USER: bytes in it that are not UTF-8 refused `relay silence add`
    as "argument author", an argument the user never gave; they now read as U+FFFD."""
    env = {**store_env(tmp_path), "USER": "ops\udcff"}
    added = run_cli("silence", "add", "--task", "x", "-q", env=env)
    assert added.returncode == 0, added.stderr
    listed = run_cli("silence", "list", "--json", env=env)
    assert [s["created_by"] for s in json.loads(listed.stdout)] == ["ops\ufffd"], listed.stdout


def test_the_default_author_without_user_is_the_login_name(tmp_path: Path) -> None:
    """`docker exec relay relay silence add ...` runs without $USER: the silence had no author
    (BY empty in `silence list`); amtool takes the account's name. relay does too now."""
    blank = dict.fromkeys(("USER", "LOGNAME", "LNAME", "USERNAME"), "")
    env = {**store_env(tmp_path), **blank}
    added = run_cli("silence", "add", "--task", "x", env=env)
    assert added.returncode == 0, added.stderr
    listed = run_cli("silence", "list", "--json", env=env)
    account = pwd.getpwuid(os.getuid()).pw_name
    assert [s["created_by"] for s in json.loads(listed.stdout)] == [account], listed.stdout


def test_dry_run_refuses_bad_event_files(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", GOOD)
    broken = write(tmp_path / "broken.json", '{"id": "run_1", ')
    no_id = write(tmp_path / "no_id.json", '{"status": "FAILED"}')
    missing = tmp_path / "missing.json"
    results = serially(
        *(here("test", str(path), "--config", str(config)) for path in (broken, no_id, missing))
    )
    broken_r, no_id_r, missing_r = results
    for result in results:
        assert result.returncode == 1
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    assert f"{broken}: invalid JSON" in broken_r.stderr
    assert f"{no_id}: id: required field is missing" in no_id_r.stderr
    assert str(missing) in missing_r.stderr and "No such file" in missing_r.stderr


def test_dry_run_warnings_name_their_rule_in_the_log_format(tmp_path: Path) -> None:
    """A `when` failing at run time is a warning naming the rule and run, as `serve` logs it."""
    config = write(
        tmp_path / "c.yaml",
        """\
channels:
  out: {type: console}
rules:
  - {name: divides, match: {status: [FAILED]}, when: "run.durationMs / 0 > 1", notify: [out]}
""",
    )
    as_json, quiet = serially(
        here("test", str(FAILED_JSON), "--config", str(config), env={"RELAY_LOG_FORMAT": "json"}),
        here("test", str(FAILED_JSON), "--config", str(config), env={"RELAY_LOG_LEVEL": "ERROR"}),
    )
    assert as_json.returncode == 0, as_json.stderr
    assert f"run {FAILED_ID}: no rule matched" in as_json.stdout
    [line] = [json.loads(x) for x in as_json.stderr.splitlines()]
    assert (line["level"], line["rule"], line["run_id"]) == ("warning", "divides", FAILED_ID)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_dry_run_and_send_test_warn_as_check_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt templates.dir: `relay check` warned, but `relay test` (run to try a template
    override) rendered the shipped template without a word; now it logs the warning (in-process)."""
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./tempaltes}\nchannels: {out: {type: console}}\n"
        "rules: [{name: r, match: {status: [failure]}, notify: [out]}]\n",
    )
    for argv in (["test", str(FAILED_JSON)], ["send-test", "out"]):
        assert relay_main([*argv, "--config", str(config)]) == 0
        [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert line["level"] == "warning"
        assert (
            line["msg"]
            == f"{config}:1: templates.dir: no such directory; the shipped templates apply"
        )


# ------------------------------------------------------------------------------ relay send-test

SEND_CONFIG = """\
channels:
  console:
    type: console
  hook:
    type: webhook
    url: ${HOOK}
    secret: ${WHSEC}
    headers: {X-Team: core}
rules:
  - {name: r1, notify: [console]}
"""


async def test_send_test_posts_a_signed_message(tmp_path: Path, sink: Sink) -> None:
    config = write(tmp_path / "c.yaml", SEND_CONFIG)
    env = {"HOOK": f"{sink.url}/in/secret-path", "WHSEC": WHSEC}
    result = await asyncio.to_thread(run_cli, "send-test", "hook", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "hook" in result.stdout
    assert result.stderr == ""  # no "Unclosed client session" error lines as it exits
    [received] = sink.received
    assert received.path == "/in/secret-path"
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "core"
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert headers[name]
    body = standardwebhooks.Webhook(WHSEC).verify(received.body, headers)
    assert body == received.json()
    assert body["channel"] == "hook"
    assert body["run"]["taskIdentifier"] == "relay-send-test"


async def test_send_test_failures(tmp_path: Path, sink: Sink) -> None:
    sink.responses.append(status(500, text="upstream broke"))
    config = write(tmp_path / "c.yaml", SEND_CONFIG)
    env = {"HOOK": f"{sink.url}/in/secret-path", "WHSEC": WHSEC}
    failed, unknown = await asyncio.gather(
        asyncio.to_thread(run_cli, "send-test", "hook", "--config", str(config), env=env),
        asyncio.to_thread(run_cli, "send-test", "pager", "--config", str(config), env=env),
    )
    assert failed.returncode == 1
    assert "server_error" in failed.stderr
    assert len(sink.received) == 1  # one attempt, no retries
    port = sink.url.rsplit(":", 1)[1]
    for text in (failed.stdout, failed.stderr):
        assert "secret-path" not in text and sink.url not in text and port not in text
        assert WHSEC not in text

    assert unknown.returncode == 1  # one line: not a config problem, no "1 problem found"
    assert unknown.stderr.splitlines() == ["error: unknown channel 'pager' (known: console, hook)"]


async def test_send_test_names_the_template_of_a_slack_message_changed_to_fit(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """`relay send-test` to Slack with a template whose message Slack's limits change (60
    blocks): the warning named the template "" where a relay serving says `run`."""
    (tmp_path / "tpl" / "slack").mkdir(parents=True)
    blocks = ", ".join(['{"type": "divider"}'] * 60)
    write(tmp_path / "tpl" / "slack" / "run.json.j2", f'{{"text": "t", "blocks": [{blocks}]}}')
    config = write(
        tmp_path / "c.yaml",
        "templates: {dir: ./tpl}\n"
        f"channels: {{team: {{type: slack, webhook_url: '{slack.webhook_url}'}}}}\n"
        "rules: [{name: r, notify: [team]}]\n",
    )
    result = await asyncio.to_thread(run_cli, "send-test", "team", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(x) for x in result.stderr.splitlines() if "changed to fit" in x]
    assert (line["template"], line["channel"], line["changes"]) == (
        "run",
        "team",
        ["blocks 51-60 dropped: Slack takes 50 blocks"],
    )
    assert len(slack.posted()[0]["blocks"]) == 50


PD_CONFIG = """\
channels:
  pager:
    type: pagerduty
    routing_key: ${PD_KEY}
    api_url: ${PD_URL}
rules:
  - {name: r1, notify: [pager]}
"""


async def test_send_test_to_pagerduty_pages_then_resolves(
    tmp_path: Path, pagerduty: FakePagerDuty
) -> None:
    """A send-test opened an incident and left it open: the on-call had to resolve it by hand,
    and the next send-test (the same sample run, the same dedup key) paged nobody, the alert
    still open. The trigger is followed, once PagerDuty accepted it, by a resolve of its key."""
    config = write(tmp_path / "c.yaml", PD_CONFIG)
    env = {"PD_KEY": PD_KEY, "PD_URL": pagerduty.url}
    for _ in range(2):
        done = await asyncio.to_thread(
            run_cli, "send-test", "pager", "--config", str(config), env=env
        )
        assert done.returncode == 0, done.stderr
        assert "paged and resolved" in done.stdout
    trigger, resolve, *again = pagerduty.posted()
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert resolve == {
        "routing_key": PD_KEY,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    assert [e["event_action"] for e in again] == ["trigger", "resolve"]
    assert pagerduty.alerts == {trigger["dedup_key"]: "resolved"}
    assert pagerduty.problems == [[]] * 4

    pagerduty.script(Reply(500, {"status": "error"}))  # no trigger accepted: nothing to resolve
    done = await asyncio.to_thread(run_cli, "send-test", "pager", "--config", str(config), env=env)
    assert done.returncode == 1 and "server_error" in done.stderr and len(pagerduty.calls) == 5
    pagerduty.script(Reply(202, {"status": "success", "dedup_key": "k1"}), Reply(503, {}))
    done = await asyncio.to_thread(run_cli, "send-test", "pager", "--config", str(config), env=env)
    assert done.returncode == 1 and len(pagerduty.calls) == 7
    assert (
        "paged, but the resolve failed" in done.stderr and "resolve it in PagerDuty" in done.stderr
    )


async def test_send_test_of_a_change_event_resolves_nothing(
    tmp_path: Path, pagerduty: FakePagerDuty
) -> None:
    """A template that sends a Change Event opens no incident: its send-test sends it alone,
    no resolve of a key that nothing opened."""
    (tmp_path / "templates" / "pagerduty").mkdir(parents=True)
    change = '{"event_action": "change", "payload": {"summary": "deployed"}}'
    write(tmp_path / "templates" / "pagerduty" / "run.json.j2", change)
    config = write(tmp_path / "c.yaml", "templates: {dir: ./templates}\n" + PD_CONFIG)
    env = {"PD_KEY": PD_KEY, "PD_URL": pagerduty.url}
    done = await asyncio.to_thread(run_cli, "send-test", "pager", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert len(pagerduty.changes) == 1 and len(pagerduty.calls) == 1


# ------------------------------------------------------------------------------------ relay dlq


def test_dlq_on_a_fresh_store(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    listed, as_json, replay_all, replay_one = serially(
        here("dlq", "list", env=env),
        here("dlq", "list", "--json", env=env),
        here("dlq", "replay", "--all", env=env),
        here("dlq", "replay", "ntf_nope", env=env),
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no dead notifications"
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []
    assert replay_all.returncode == 0, replay_all.stderr
    assert "replayed 0" in replay_all.stdout
    assert replay_one.returncode == 1
    assert "ntf_nope" in replay_one.stderr
    assert replay_one.stdout == ""  # no "replayed 0" before the error


def test_reading_commands_create_no_store_and_say_none_is_there(tmp_path: Path) -> None:
    """A mistyped RELAY_STORE_URL made `relay dlq list` create an empty store (and its
    directories) and answer "no dead notifications": all looked well at 3 a.m. The answers
    stay those of an empty store (scripts read them), with a note on stderr."""
    path = tmp_path / "typo" / "relay.db"
    env = {"RELAY_STORE_URL": f"sqlite:///{path}"}
    commands = [
        ("dlq", "list"),
        ("history", "--json"),
        ("silence", "list", "--json"),
        ("silence", "expire", "sil_0123456789abcdef"),
    ]
    listed, history, silences, expired = serially(*(here(*args, env=env) for args in commands))
    assert (listed.returncode, listed.stdout) == (0, "no dead notifications\n"), listed
    assert (history.returncode, json.loads(history.stdout)) == (0, []), history
    assert (silences.returncode, json.loads(silences.stdout)) == (0, []), silences
    assert expired.returncode == 1 and "sil_0123456789abcdef" in expired.stderr, expired
    for result in (listed, history, silences, expired):
        note = f"note: no store at {path} (RELAY_STORE_URL): nothing is stored there"
        assert result.stderr.startswith(note), result
    assert not (tmp_path / "typo").exists()


def test_silence_add_says_when_it_made_the_store(tmp_path: Path) -> None:
    """`relay silence add` on the host of a relay in a container (RELAY_STORE_URL unset: a
    ./data/relay.db) or with a mistyped URL made a store of its own, printed the id and said
    nothing: the on-call believed the page muted. It still makes one (a silence before the first
    `relay serve`), and says so; a second add, to a store that is there, says nothing."""
    path = tmp_path / "typo" / "relay.db"
    env = {"RELAY_STORE_URL": f"sqlite:///{path}"}
    first, second = serially(*(here("silence", "add", "task=x", env=env) for _ in range(2)))
    assert first.returncode == second.returncode == 0 and first.stdout.startswith("sil_")
    assert first.stderr == (
        f"note: no store was at {path} (RELAY_STORE_URL): a new one holds this silence; a relay"
        " serve on another store does not see it\n"
    )
    assert second.stderr == "" and path.exists()


def test_every_command_takes_config_after_its_name(tmp_path: Path) -> None:
    env = store_env(tmp_path)
    config = str(write(tmp_path / "c.yaml", GOOD))
    results = serially(
        here("migrate", "--config", config, env=env),
        here("dlq", "--config", config, "list", env=env),
        here("dlq", "list", "--config", config, env=env),
        here("silence", "list", "--config", config, env=env),
        here("history", "--config", config, env=env),
        here("check", "--config", config, env=env),
    )
    for result in results:
        assert result.returncode == 0, output(result)


def test_config_may_also_come_before_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`relay --config X check`, as amtool and kubectl take their global flags (in-process)."""
    good = str(write(tmp_path / "good.yaml", GOOD))
    bad = str(write(tmp_path / "bad.yaml", "rules: [{name: r, notify: [nope]}]\n"))
    assert relay_main(["--config", good, "check"]) == 0
    assert f"{good}: OK" in capsys.readouterr().out
    assert relay_main(["--config", good, "check", "--config", bad]) == 1  # the command's own wins
    assert f"{bad}:1: rules[0].notify[0]: unknown channel 'nope'" in capsys.readouterr().err


def fire_on_failed(run: Run, previous: RunState | None) -> Decision:
    """Rule `r1` fires once per FAILED run, to channel `hook`."""
    state = RunState(run.updated_at_ms, run.status, frozenset({"r1"}))
    if run.status != "FAILED" or previous is not None:
        return Decision(state=state)
    return Decision(state=state, matches=(Match("r1", "hook", "run"),))


async def make_dead_letters(db: Path, *run_ids: str, now: float = 100.0) -> list[str]:
    """Dead letters of `run_ids`, dead at `now` + 100 s on, one a second. At the default `now`
    (1970) a `relay serve` on `db` prunes them as past its retention."""
    store = SQLiteStore(db)
    await store.open()
    try:
        runs = [
            Run.model_validate({"id": rid, "status": "FAILED", "updatedAt": "2026-01-01T00:00:00Z"})
            for rid in run_ids
        ]
        await store.observe(runs, fire_on_failed, now=now)
        claimed = await store.claim("hook", now=now, limit=len(runs), lease_s=60)
        for i, n in enumerate(claimed):
            await store.mark_dead(
                [(n.id, 12)], now=now + 100.0 + i, reason="server_error", error=ERRORS[i % 2]
            )
        assert (await store.counts())["dead"] == len(run_ids)
        return [n.id for n in claimed]
    finally:
        await store.close()


# as delivery records them (the reason first), and as an older relay did
ERRORS = ("server_error: HTTP 503 (gave up after 12 attempts)", "HTTP 503")


async def test_dlq_lists_and_replays_dead_letters(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    ids = await make_dead_letters(db, "run_dead_one", "run_dead_two")
    env = store_env(tmp_path)
    listed, as_json = await asyncio.gather(
        asyncio.to_thread(run_cli, "dlq", "list", env=env),
        asyncio.to_thread(run_cli, "dlq", "list", "--json", env=env),
    )
    assert listed.returncode == 0, listed.stderr
    head, *rows = listed.stdout.splitlines()
    assert head.split() == ["ID", "RUN", "RULE", "CHANNEL", "ATTEMPTS", "DIGEST", "REASON"]
    for nid, run_id in zip(ids, ["run_dead_one", "run_dead_two"], strict=True):
        [row] = [line for line in rows if line.startswith(nid)]
        # the rule too, as history and GET /v1/dlq name it: which alert went unsent; no digest
        assert row.split()[1:6] == [run_id, "r1", "hook", "12", "-"]
        assert "server_error: HTTP 503" in row
    assert "server_error: server_error" not in listed.stdout
    views = json.loads(as_json.stdout)
    assert {v["id"] for v in views} == set(ids)
    assert [v["digest"] for v in views] == [None, None]
    assert {(v["run_id"], v["channel"], v["reason"], v["error"]) for v in views} == {
        (run_id, "hook", "server_error", ERRORS[i])
        for i, run_id in enumerate(["run_dead_one", "run_dead_two"])
    }

    replay = await asyncio.to_thread(run_cli, "dlq", "replay", ids[0], env=env)
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1" in replay.stdout

    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.counts() == {"pending": 1, "sent": 0, "dead": 1, "muted": 0}
        again = await store.get(ids[0])
        assert again is not None and again.attempts == 0
        assert [n.id for n in await store.dead_letters()] == [ids[1]]
    finally:
        await store.close()


async def test_dlq_replay_takes_several_ids_as_silence_expire_does(tmp_path: Path) -> None:
    """`relay dlq replay ID ID` said "unrecognized arguments" (exit 2): the dead of one channel
    could not be replayed by `$(...)` as `silence expire $(silence query -q ...)` expires
    silences. Each id is replayed now; one that is not dead is named, exit 1, the others
    replayed all the same."""
    db = tmp_path / "relay.db"
    ids = await make_dead_letters(db, "run_r1", "run_r2", "run_r3")
    env = store_env(tmp_path)
    replay = await asyncio.to_thread(run_cli_in_process, "dlq", "replay", ids[0], ids[2], env=env)
    assert (replay.returncode, replay.stdout, replay.stderr) == (
        0, "replayed 2 notification(s)\n", "",
    )  # fmt: skip
    again = await asyncio.to_thread(
        run_cli_in_process, "dlq", "replay", ids[0], "ntf_nope", ids[1], env=env
    )
    assert again.returncode == 1 and again.stdout == "replayed 1 notification(s)\n"
    assert again.stderr.splitlines() == [
        f"no dead notification with id {ids[0]}",
        "no dead notification with id ntf_nope",
    ]
    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.counts() == {"pending": 3, "sent": 0, "dead": 0, "muted": 0}
    finally:
        await store.close()
    both = await asyncio.to_thread(run_cli_in_process, "dlq", "replay", ids[0], "--all", env=env)
    assert both.returncode == 2 and "not allowed with" in both.stderr


async def test_replay_or_expire_without_an_id_is_one_line_and_a_usage_error(
    tmp_path: Path,
) -> None:
    """`relay dlq replay` (no id, no --all) and `relay silence expire` (no id: a `$(...)` that
    found none) printed argparse's usage and "one of the arguments ID --all is required": now
    one line with the way out, exit 2 as every usage error; nothing is replayed."""
    await make_dead_letters(tmp_path / "relay.db", "run_kept_dead")
    env = store_env(tmp_path)
    replay, expire = await asyncio.gather(
        asyncio.to_thread(run_cli, "dlq", "replay", env=env),
        asyncio.to_thread(run_cli, "silence", "expire", env=env),
    )
    assert (replay.returncode, replay.stdout) == (2, "")
    assert replay.stderr.splitlines() == [
        "relay dlq replay: error: no notification id given: name the dead ones"
        " (relay dlq list) or --all (--channel, --rule and --since narrow it)"
    ]
    assert (expire.returncode, expire.stdout) == (2, "")
    assert expire.stderr.splitlines() == [
        "relay silence expire: error: no silence id given: name them"
        " (relay silence query -q lists ids)"
    ]
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    try:
        assert (await store.counts())["dead"] == 1
    finally:
        await store.close()


async def test_dlq_list_says_when_it_shows_only_the_newest(tmp_path: Path) -> None:
    """Past 1000 dead notifications the listing was cut without a word: an operator counting
    what a receiver's outage killed saw 1000 and replayed by id, leaving the rest dead."""
    ids = await make_dead_letters(tmp_path / "relay.db", *(f"run_{i:04d}" for i in range(1001)))
    env = store_env(tmp_path)
    listed, as_json = await asyncio.gather(
        asyncio.to_thread(run_cli, "dlq", "list", env=env),
        asyncio.to_thread(run_cli, "dlq", "list", "--json", env=env),
    )
    assert listed.returncode == as_json.returncode == 0
    assert len(listed.stdout.splitlines()) == 1 + 1000  # the header, then the newest 1000
    assert len(json.loads(as_json.stdout)) == 1000
    note = (
        "more than 1000 dead notifications: the newest 1000 shown; all of them, a page at a"
        " time: relay history --state dead --limit 10000 (then --before the last id)\n"
    )
    assert listed.stderr == as_json.stderr == note
    assert ids[-1] in listed.stdout and ids[0] not in listed.stdout  # the first to die is left


async def test_dlq_list_takes_a_limit_as_history_does(tmp_path: Path) -> None:
    """`relay dlq list` had no way to bound its output (1000 rows, GET /v1/dlq's): `--limit N`
    shows the newest N, says when there are more, and refuses what history's --limit does."""
    ids = await make_dead_letters(tmp_path / "relay.db", "run_a", "run_b", "run_c")
    env = store_env(tmp_path)
    calls = (
        here("dlq", "list", "--limit", "2", "--json", env=env),
        here("dlq", "list", "--limit", "3", env=env),
        here("dlq", "list", "--limit", "0", env=env),
    )
    two, whole, zero = [await asyncio.to_thread(call) for call in calls]  # one at a time
    assert (two.returncode, whole.returncode) == (0, 0), two.stderr + whole.stderr
    assert [v["id"] for v in json.loads(two.stdout)] == ids[:0:-1]  # the newest two
    assert two.stderr.startswith("more than 2 dead notifications: the newest 2 shown;")
    assert len(whole.stdout.splitlines()) == 1 + 3 and whole.stderr == ""
    assert (zero.returncode, zero.stdout) == (1, "")
    assert zero.stderr == "error: dlq list: limit: expected a number from 1 to 10000\n"


async def test_listings_show_what_came_from_outside_escaped_one_line_each(tmp_path: Path) -> None:
    """A run id, silence comment or author carrying a line break forged a row in `relay dlq
    list`, `silence list` and `history`, and one carrying ESC steered the operator's terminal."""
    hostile = "run_x\nntf_forged   run_ok   hook   1  sent\x1b[2J\x9b31m"
    await make_dead_letters(tmp_path / "relay.db", hostile)
    env = store_env(tmp_path)
    added = await asyncio.to_thread(
        run_cli, "silence", "add", "--task", "x", "-c", hostile, "-a", "eve\r\n", env=env
    )
    assert added.returncode == 0, added.stderr
    shown = await asyncio.gather(
        *(
            asyncio.to_thread(run_cli, *args, env=env)
            for args in (("dlq", "list"), ("silence", "list"), ("history",))
        )
    )
    for result in shown:
        assert result.returncode == 0, result.stderr
        assert not any(c in result.stdout for c in "\x1b\x9b\r"), result.stdout
        assert "ntf_forged" in result.stdout and r"run_x\nntf_forged" in result.stdout
    dead, silences, history = (result.stdout.splitlines() for result in shown)
    assert len(dead) == 2 and len(silences) == 2  # the header and one row
    assert sum(line.startswith("ntf_") for line in history) == 1


# ----------------------------------------------------------------------- environment and basics


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`relay silence list --json | head -1`: stdout's reader is gone; exit quietly (141)."""
    code = (
        "import os, sys\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
        "from relay.cli import main\n"
        "sys.exit(main(['silence', 'list', '--json']))\n"
    )
    env = {**os.environ, **store_env(tmp_path)}
    done = run_python(code, env)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_the_store_commands_start_without_the_service(tmp_path: Path) -> None:
    """`relay silence list`, `dlq list`, `history` and `--help` import neither the service nor
    aiohttp, Jinja or the config's compiler: half a second less for an operator at 3 a.m."""
    code = (
        "import sys, contextlib, io\n"
        "from relay.cli import main\n"
        "for argv in (['silence', 'list'], ['dlq', 'list'], ['history'], ['--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "heavy = ('aiohttp', 'jinja2', 'yaml', 'relay.service', 'relay.configure')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    done = run_python(code, {**os.environ, **store_env(tmp_path)})
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


EVERY_CHANNEL_TYPE = """\
channels:
  console: {type: console}
  slack: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/X"}
  email: {type: email, smtp: {host: smtp.example.com}, from: a@example.com, to: [b@example.com]}
  pagerduty: {type: pagerduty, routing_key: 0123456789abcdef0123456789abcdef}
  discord: {type: discord, webhook_url: "https://discord.com/api/webhooks/1/x"}
  teams: {type: msteams, webhook_url: "%s"}
  hook: {type: webhook, url: "https://example.com/hook"}
rules:
  - {name: all, match: {status: failure}, notify: [console, slack, email, pagerduty, discord, teams, hook]}
"""


def test_check_validates_every_channel_type_without_aiohttp(tmp_path: Path) -> None:
    """`relay check` reads every channel type's settings (a bad one is named) without importing
    aiohttp, which only a send needs: 0.55 s of CPU at each check before, ~0.4 s after."""
    good = write(tmp_path / "good.yaml", EVERY_CHANNEL_TYPE % "https://example.com/teams")
    bad = write(tmp_path / "bad.yaml", EVERY_CHANNEL_TYPE % "http://example.com/teams")
    code = (
        "import sys, contextlib, io\n"
        "from relay.cli import main\n"
        f"for path in {[str(good), str(bad)]!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        code = main(['check', path])\n"
        "    print(code, out.getvalue().strip())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'relay.channels._http'))))\n"
    )
    done = run_python(code, {**os.environ, **store_env(tmp_path)})
    assert [line.rstrip() for line in done.stdout.splitlines()] == [
        f"0 {good}: OK: 7 channels, 1 rule",
        "1",
        "['relay.channels._http_answers']",
    ], done.stderr
    assert "channels.teams.webhook_url: webhook_url must be an https:// URL" in done.stderr


def test_bad_environment_is_named_without_secrets(tmp_path: Path) -> None:
    bad_port = "postgresql://u:pw@127.0.0.1:5432,[::1]:5433,127.0.0.1:abc/db"
    listen, store, port = parallel(
        cli("check", env={"RELAY_LISTEN": "nonsense"}, cwd=tmp_path),
        cli("dlq", "list", env={"RELAY_STORE_URL": "mysql://u:pw@h/db"}, cwd=tmp_path),
        cli("dlq", "list", env={"RELAY_STORE_URL": bad_port}, cwd=tmp_path),  # was a traceback
    )
    assert (port.returncode, port.stdout) == (1, ""), port.stderr
    assert port.stderr.startswith("RELAY_STORE_URL: a port is not a number from 1 to 65535")
    assert "pw" not in output(port)
    assert listen.returncode == 1
    assert "RELAY_LISTEN" in listen.stderr and "host:port" in listen.stderr
    assert store.returncode == 1
    assert "RELAY_STORE_URL" in store.stderr
    assert "pw" not in output(store) and "u:pw@h" not in output(store)


def test_a_store_url_query_field_without_a_value_is_named_not_a_traceback(tmp_path: Path) -> None:
    """`?sslmode=disable&` (a trailing &) or `?x`: relay check said OK, then `relay serve` and
    the store's commands ended in asyncpg's ValueError traceback."""
    urls = ("postgresql://u:pw@127.0.0.1:1/db?sslmode=disable&", "postgresql://u:pw@h/db?x")
    config = str(write(tmp_path / "c.yaml", GOOD))
    runs = parallel(
        *(cli("check", config, env={"RELAY_STORE_URL": url}, cwd=tmp_path) for url in urls),
        *(cli("serve", "--config", config, env={"RELAY_STORE_URL": url}) for url in urls),
    )
    wanted = "RELAY_STORE_URL: each query parameter is key=value, joined by a single &"
    for done in runs[:2]:
        assert (done.returncode, done.stderr.splitlines()) == (1, [wanted, "1 problem found"])
    for done in runs[2:]:
        *_, refused = [json.loads(line) for line in done.stderr.splitlines()]
        assert (done.returncode, refused["problems"]) == (1, [wanted])
        assert "pw" not in output(done)


_URL = "RELAY_STORE_URL: "


@pytest.mark.parametrize(
    ("url", "env", "wanted"),
    [
        ("postgresql://u:pw@/db?host=127.0.0.1:abc", {}, f"{_URL}host parameter: a port is not"),
        ("postgresql://u:pw@/db?host=h1,,h2", {}, f"{_URL}host parameter: a host in the list is"),
        ("postgresql://u:pw@h1,,h2/db", {}, f"{_URL}a host in the list is empty"),
        ("postgresql://u:pw@h1,/db", {}, f"{_URL}a host in the list is empty"),
        ("postgresql://u:pw@/db?host=h&port=5432,", {}, f"{_URL}port parameter: a port is not"),
        ("postgresql://u:pw@/db?host=h&port=x", {}, f"{_URL}port parameter: a port is not"),
        ("postgresql://u:pw@h:\u00b2/db", {}, f"{_URL}a port is not"),  # a digit int() refuses
        # urlsplit's "Invalid IPv6 URL" and ipaddress' ValueError (bad brackets) were a traceback
        ("postgresql://u:pw@[::1/db", {}, f"{_URL}malformed postgresql URL"),
        ("postgresql://u:pw@[zz]/db", {}, f"{_URL}malformed postgresql URL"),
        ("postgresql://u:pw@h]/db", {}, f"{_URL}malformed postgresql URL"),
        # libpq's variables, which asyncpg reads where the URL leaves them out
        ("postgresql://u:pw@127.0.0.1/db", {"PGPORT": "x"}, "PGPORT: a port is not a number"),
        ("postgresql://u:pw@h:5432/db", {"PGPORT": "99999"}, "PGPORT: a port is not a number"),
        ("postgresql://u:pw@/db?host=h", {"PGPORT": "5432,"}, "PGPORT: a port is not a number"),
        ("postgresql://u:pw@/db", {"PGHOST": "h1,,h2"}, "PGHOST: a host in the list is empty"),
        ("postgresql://u:pw@/db", {"PGHOST": "h:abc"}, "PGHOST: a port is not a number"),
        # asyncpg parses the URL's hosts, reading PGPORT, before it reads ?port=
        ("postgresql://u:pw@h/db?port=5432", {"PGPORT": "x"}, "PGPORT: a port is not a number"),
    ],
)
def test_a_store_url_host_or_port_asyncpg_cannot_read_is_named_not_a_traceback(
    url: str,
    env: dict[str, str],
    wanted: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncpg reads a URL's hosts and ports (also `?host=`, `?port=` when it names no host)
    with int() and hostspec[0], and PGPORT whenever the URL has hosts (even with their own
    ports or `?port=`) or no `?port=`, PGHOST when it names no host: relay check said OK (or
    itself ended in a traceback on `²`), then relay serve and the store's commands ended in a
    ValueError, IndexError or OverflowError traceback."""
    monkeypatch.setenv("RELAY_STORE_URL", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _check_and_dlq_refuse_alike(tmp_path, capsys).startswith(wanted)


def test_a_store_url_with_hosts_and_ports_asyncpg_reads_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(write(tmp_path / "c.yaml", GOOD))
    for url in (
        "postgresql://u:pw@h1:5432,[::1]:5433,h3/db",
        "postgresql://u:pw@[::1]/db",
        "postgresql://u:pw@/db?host=/run/postgresql,h2:5433&port=5432,5433",
        "postgresql://u@/db?host=h&port=",
    ):
        monkeypatch.setenv("RELAY_STORE_URL", url)
        assert relay_main(["check", config]) == 0, url


def _check_and_dlq_refuse_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """relay check and relay dlq list both exit 1 with the same one problem (no secret): it."""
    assert relay_main(["check", str(write(tmp_path / "c.yaml", GOOD))]) == 1
    assert relay_main(["dlq", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "pw" not in err
    check, found, dlq, found_again = err.splitlines()
    assert found == found_again == "1 problem found"
    assert check == dlq
    return check


def test_a_libpq_variable_the_url_overrides_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(write(tmp_path / "c.yaml", GOOD))
    monkeypatch.setenv("PGPORT", "x")
    monkeypatch.setenv("PGHOST", "h1,,h2")
    monkeypatch.setenv("RELAY_STORE_URL", "postgresql://u@/db?host=h&port=5432")
    assert relay_main(["check", config]) == 0
    monkeypatch.setenv("RELAY_STORE_URL", "postgresql://u@:5432/db")  # a host "" in the URL
    assert relay_main(["check", config]) == 1  # PGPORT, not PGHOST
    monkeypatch.setenv("PGPORT", "5432")
    assert relay_main(["check", config]) == 0


def test_an_empty_config_path_is_named_not_read_as_the_working_directory(tmp_path: Path) -> None:
    """An empty RELAY_CONFIG is refused, but not under a --config that overrides it (the
    command line wins): that only warns."""
    config = str(write(tmp_path / "c.yaml", GOOD))
    variable, flag, overridden = parallel(
        cli("check", env={"RELAY_CONFIG": ""}, cwd=tmp_path),
        cli("check", "--config", "", cwd=tmp_path),
        cli("check", "--config", config, env={"RELAY_CONFIG": ""}, cwd=tmp_path),
    )
    assert variable.returncode == 1 and "RELAY_CONFIG: empty" in variable.stderr
    assert flag.returncode == 2 and "--config: empty path" in flag.stderr
    assert "directory" not in output(variable) + output(flag)
    assert overridden.returncode == 0, output(overridden)
    assert "ignored: the command line overrides it" in overridden.stderr
    assert "RELAY_CONFIG: empty" in overridden.stderr


def test_an_address_relay_cannot_listen_on_is_named_without_a_traceback(tmp_path: Path) -> None:
    """RELAY_LISTEN on a port in use (another relay still running): exit 1 naming the variable
    and the reason, as for any bad setting, in one line: an info line `stopped` came first, of
    a relay that never started (a store it could not open too)."""
    config = write(tmp_path / "c.yaml", "channels: {out: {type: console}}\nrules: []\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**store_env(tmp_path), "RELAY_LISTEN": f"127.0.0.1:{port}"}
        result = run_cli("serve", "--config", str(config), env=env)
    assert result.returncode == 1, result.stderr
    *before, line = [json.loads(line) for line in result.stderr.splitlines()]
    assert [e["msg"] for e in before if e["msg"] == "stopped"] == []
    assert (line["msg"], line["problems"]) == (
        "relay not started",
        [f"environment: RELAY_LISTEN: cannot listen on 127.0.0.1:{port}: Address already in use"],
    )


def test_serve_logs_why_it_did_not_start_as_json_lines(tmp_path: Path) -> None:
    """SPEC §6: one JSON object a line by default. The reason a container died (a bad config, a
    store it cannot open) was plain text among the JSON lines, which a log pipeline drops."""
    bad = write(tmp_path / "bad.yaml", "channels: {out: {type: nope}}\nrules: []\n")
    good = write(tmp_path / "c.yaml", "channels: {out: {type: console}}\nrules: []\n")
    not_a_db = write(tmp_path / "not-a.db", "S3CRET " * 1000)  # a store it cannot open
    # port 0: the default 0.0.0.0:8080 may be taken on the machine running the suite
    unreachable = {"RELAY_STORE_URL": f"sqlite:///{not_a_db}", "RELAY_LISTEN": "127.0.0.1:0"}
    config, store, text, setting = parallel(
        cli("serve", "--config", str(bad), env=store_env(tmp_path)),
        cli("serve", "--config", str(good), env=unreachable),
        cli("serve", "--config", str(bad), env={**store_env(tmp_path), "RELAY_LOG_FORMAT": "text"}),
        cli("serve", "--config", str(good), env={**store_env(tmp_path), "RELAY_LISTEN": "8080"}),
    )
    assert (config.returncode, store.returncode, text.returncode) == (1, 1, 1)
    assert setting.returncode == 1
    [unset] = [json.loads(line) for line in setting.stderr.splitlines()]  # a bad RELAY_* too
    assert unset["msg"] == "relay not started"
    listen = "environment: RELAY_LISTEN: expected host:port, e.g. 0.0.0.0:8080 (got '8080')"
    assert unset["problems"] == [listen]
    *_, refused = [json.loads(line) for line in config.stderr.splitlines()]
    assert (refused["level"], refused["msg"]) == ("error", "relay not started")
    [problem] = refused["problems"]
    assert problem.startswith(f"{bad}:1: channels.out.type: unknown channel type")
    *_, failed = [json.loads(line) for line in store.stderr.splitlines()]
    assert failed["error"].startswith("store open failed: ") and "S3CRET" not in store.stderr
    assert failed["store"] == str(not_a_db)  # which of the operator's files
    assert text.stderr.splitlines()[-2:] == [problem, "1 problem found"]


def test_a_store_command_names_the_store_it_could_not_use(tmp_path: Path) -> None:
    """`error: store open failed: the file is not a SQLite database ...` named no file."""
    not_a_db = write(tmp_path / "not-a.db", "not a database " * 1000)
    listed = run_cli("dlq", "list", env={"RELAY_STORE_URL": f"sqlite:///{not_a_db}"})
    assert listed.returncode == 1
    assert listed.stderr.startswith("error: store open failed: the file is not a SQLite database")
    assert listed.stderr.endswith(f" (store: {not_a_db})\n"), listed.stderr


def test_version_and_usage() -> None:
    version, bare = parallel(cli("--version"), cli())
    assert version.returncode == 0
    assert re.fullmatch(r"relay \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    assert bare.returncode != 0
    assert "usage: relay" in bare.stderr


def test_a_bad_setting_hides_no_problem_of_the_config(tmp_path: Path) -> None:
    """`relay check` names a bad RELAY_* variable with the config's problems, not alone; a bad
    RELAY_CONFIG still ends it (what to check is not known)."""
    config = tmp_path / "c.yaml"
    config.write_text("channels: {c: {type: console}}\nrules:\n  - {name: a, notify: [x]}\n")
    env = {"RELAY_LISTEN": "nonsense", "RELAY_LOG_LEVEL": "loud"}
    both = run_cli_in_process("check", "--config", str(config), env=env)
    assert (both.returncode, both.stdout) == (1, ""), both.stderr
    assert both.stderr.splitlines() == [
        f"{config}:3: rules[0].notify[0]: unknown channel 'x'",
        "environment: RELAY_LISTEN: expected host:port, e.g. 0.0.0.0:8080 (got 'nonsense')",
        "environment: RELAY_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')",
        "3 problems found",
    ]


STORE_COMMANDS = [
    ["dlq", "list"],
    ["dlq", "replay", "--all"],
    ["silence", "add", "--task", "billing/*"],
    ["silence", "list"],
    ["silence", "expire", "sil_none"],
    ["history"],
    ["migrate"],
]


@pytest.mark.parametrize("argv", STORE_COMMANDS, ids=" ".join)
def test_the_store_commands_refuse_a_config_file_named_that_is_not_there(
    tmp_path: Path, argv: list[str]
) -> None:
    """The store commands read the store, not the config (but `silence add` its names), and
    took no notice of --config: `relay dlq list --config misstyped.yaml` exited 0. A config
    named (--config or RELAY_CONFIG) that is not there, or cannot be read, is exit 1 naming
    it, as for `relay serve`; none named and no ./config.yaml is fine, as before."""
    missing = tmp_path / "missing.yaml"
    env = store_env(tmp_path)
    for how in (["--config", str(missing)], []):
        named = {**env, "RELAY_CONFIG": str(missing)} if not how else env
        done = run_cli_in_process(*argv, *how, env=named, cwd=tmp_path)
        assert done.returncode == 1, output(done)
        assert f"{missing}: config file not found" in done.stderr
    done = run_cli_in_process(*argv, "--config", str(tmp_path), env=env, cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines()[0]) == (
        1,
        f"{tmp_path}: cannot read config: Is a directory",
    )
    done = run_cli_in_process(*argv, env=env, cwd=tmp_path)
    assert done.returncode == (1 if "expire" in argv else 0), output(done)  # sil_none: unknown


@pytest.mark.parametrize("command", [[], ["serve"]])
def test_the_help_names_the_environment_relay_serve_reads(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`relay serve --help` showed --config and --workers only: where relay listens and where
    its store is (Alertmanager's --web.listen-address and --storage.path) were in the README
    alone. Every setting is listed now with its default."""
    with pytest.raises(SystemExit) as exit_info:
        relay_main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"RELAY_{name.upper()} " in out, name
    defaults = Settings.model_construct()
    assert f"(default: {defaults.listen})" in out
    assert f"(default: {defaults.store_url})" in out
