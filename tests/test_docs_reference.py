"""docs/configuration.md, docs/templates.md and docs/operations.md stay true to the code.

The configuration reference is generated (tools/config_reference.py) and must be committed as
generated; the filter examples of the templates guide render as shown; the operations guide's
backup command, run beside a live relay, gives a store another relay reads.
(tests/test_docs.py checks the configs, templates and links of every docs/*.md.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from relay.durations import parse_duration
from relay.sandbox import environment
from relay.settings import Settings
from relay.store.opening import migrate
from tests.conftest import REPO, RelayProcess, run_cli_in_process, sdk_run
from tests.pg import fetchval, find_bindir, fresh_database, shared_server
from tools import config_reference

DOCS = REPO / "docs"


def test_configuration_reference_is_generated_from_the_models() -> None:
    committed = config_reference.TARGET.read_text(encoding="utf-8")
    assert committed == config_reference.render(), (
        "docs/configuration.md is stale: run `python tools/config_reference.py --write`"
    )


def test_configuration_reference_lists_every_key() -> None:
    text = config_reference.TARGET.read_text(encoding="utf-8")
    for table in config_reference.yaml_tables():
        for key, _ in config_reference.rows(table):
            assert f"| `{key}` |" in text, f"{table.heading}: {key}"
    for name in Settings.model_fields:
        assert f"| `RELAY_{name.upper()}` |" in text


def test_templates_guide_filter_examples_render_as_shown() -> None:
    text = (DOCS / "templates.md").read_text(encoding="utf-8")
    start = text.index("| Expression | Renders |")
    rows = [line for line in text[start:].split("\n\n")[0].splitlines()[2:] if line]
    assert len(rows) >= 8
    env = environment()
    for row in rows:
        cells = re.split(r"(?<!\\)\|", row.strip())[1:-1]
        source, shown = (c.strip().strip("`").replace("\\|", "|") for c in cells)
        template = env.from_string("{% autoescape false %}" + source + "{% endautoescape %}")
        assert template.render(run={}) == shown, source


def backup_command() -> str:
    """The Python the operations guide runs in the container for a SQLite backup."""
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    match = re.search(r'docker exec relay python -c "([^"]*\.backup\([^"]*)"', text)
    assert match, "docs/operations.md lost its backup command"
    return match.group(1)


def test_operations_backup_command_copies_a_running_store(tmp_path: Path) -> None:
    live, copy = tmp_path / "live" / "relay.db", tmp_path / "live" / "backup.db"
    live.parent.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "channels:\n  console:\n    type: console\n"
        "rules:\n  - name: failures\n    match: {status: failure}\n    notify: [console]\n"
    )
    relay = RelayProcess(config, live).start()
    try:
        body = json.dumps(sdk_run("failed")).encode()
        request = urllib.request.Request(
            relay.url + "/v1/runs", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
        code = backup_command().replace("/var/lib/relay/", f"{live.parent}/")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
    finally:
        relay.terminate()
    env = {"RELAY_STORE_URL": f"sqlite:///{copy}"}
    history = run_cli_in_process("history", "--json", "--config", str(config), env=env)
    assert history.returncode == 0, history.stderr
    assert sdk_run("failed")["id"] in history.stdout
    migrated = run_cli_in_process("migrate", env=env)
    assert "up to date" in migrated.stdout, migrated.stdout + migrated.stderr


def pg_backup_steps() -> str:
    """The operations guide's PostgreSQL backup and restore, the sh block of its section."""
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### PostgreSQL") : text.index("## Upgrades and migrations")]
    match = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert match and "pg_dump" in match.group(1), "docs/operations.md lost its pg_dump steps"
    return match.group(1)


async def test_operations_pg_backup_restores_a_store_that_sees_silences(tmp_path: Path) -> None:
    """The guide's pg_dump of relay's tables and its restore, run as written: the dump holds
    the silences' trigger but not its function, so pg_restore could not make it, and on the
    restored database no silence written moved the count the running replicas watch (none
    saw a silence added). `relay migrate` now makes the trigger again and says so."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("needs PostgreSQL's pg_dump and pg_restore")
    server = shared_server()
    async with fresh_database(server) as live, fresh_database(server) as restored:
        await migrate(live)
        path = f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
        env = {**os.environ, "PATH": path, "RELAY_STORE_URL": live, "NEW_STORE_URL": restored}
        steps = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", pg_backup_steps()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "relay_silences_changed() does not exist" in steps.stderr  # as the guide says
        count = "SELECT n FROM relay_silences_changes"  # what replicas watch for a change
        before = await fetchval(restored, count)
        added = await asyncio.to_thread(
            run_cli_in_process, "silence", "add", "--task", "x", env={"RELAY_STORE_URL": restored}
        )
        assert added.returncode == 0, added.stderr
        assert await fetchval(restored, count) > before, steps.stderr
        assert "store trigger made again" in steps.stderr  # and says so


def _default_value(cell: str) -> object:
    """A Default cell that is one backticked literal, as a value (durations in seconds)."""
    literal = re.fullmatch(r"`([^`]*)`", cell.strip())
    if literal is None:
        return NO_LITERAL
    text = literal.group(1)
    try:
        return parse_duration(text)
    except ValueError:
        return yaml.safe_load(text)


NO_LITERAL = object()


def test_readme_defaults_agree_with_the_models() -> None:
    """A default the README states as a literal is the one the code applies (and the reference
    generated from the models shows): `target_match` read `{}` there, `{event: run}` in use."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    disagree = []
    for table in config_reference.yaml_tables():
        described = config_reference.readme_rows(readme, table.readme_marker)
        for key, info in config_reference.rows(table):
            row = described.get(key)
            if row is None or row.default is None:
                continue
            stated, applied = (
                _default_value(row.default),
                _default_value(config_reference.default(info)),
            )
            if NO_LITERAL not in (stated, applied) and stated != applied:
                disagree.append(f"{table.heading} {key}: README {row.default}, code {applied!r}")
    assert not disagree, disagree


def test_operations_alert_table_lists_every_shipped_alert() -> None:
    """docs/operations.md's alert table covers deploy/prometheus/alerts.yml: an operator paged by
    `RelayUnknownAlertType` found no row for it."""
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text("utf-8"))
    shipped = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(Relay\w+)` \|", text, flags=re.M))
    assert listed == shipped, {"undocumented": shipped - listed, "not shipped": listed - shipped}


def test_operations_alertmanager_table_names_the_keys_relay_check_translates(
    tmp_path: Path,
) -> None:
    """docs/operations.md's "Coming from Alertmanager" says which Alertmanager keys `relay
    check` answers with relay's key: each of them, written where an operator writes it, does."""
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Coming from Alertmanager") :]
    said = re.search(r"`relay check` names relay's key for (.*?)\.", " ".join(section.split()))
    assert said, "docs/operations.md lost its sentence on relay check's hints"
    words = re.findall(r"`([a-z_]+)`", said.group(1))
    in_rule = {"receiver", "send_resolved"}
    config = tmp_path / "am.yaml"
    config.write_text(
        "".join(f"{w}: x\n" for w in words if w not in in_rule)
        + "channels: {out: {type: console}}\nrules:\n  - name: a\n    notify: [out]\n"
        + "".join(f"    {w}: x\n" for w in words if w in in_rule)
    )
    checked = run_cli_in_process("check", str(config))
    hinted = re.findall(r"unknown key \(Alertmanager's '(\w+)' is relay's", checked.stderr)
    assert sorted(hinted) == sorted(words) and len(words) >= 5, checked.stderr
