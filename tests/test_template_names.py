"""SPEC 4 names an override `templates/<channel type>/run_failed.*`. relay looked a part up only
as `<type>/<template>.<part>.j2` or that name without `.j2`: `slack/run_failed.j2`,
`webhook/run_failed.json.jinja` or `email/run_failed.text.j2` went unused, the shipped message
went out, and `relay check` said OK (of the `.jinja` ones not even a warning). Such names now
serve (relay.template_names), and the check warns only of a file another one shadows.

`relay test` / `relay check` called in process on a real templates directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli_in_process, sdk_run

CONFIG = """\
templates: {dir: ./templates}
channels:
  s: {type: slack, webhook_url: "http://127.0.0.1:9/s"}
  w: {type: webhook, url: "http://127.0.0.1:9/w"}
  m: {type: email, smtp: {host: 127.0.0.1, port: 9}, from: r@x.example, to: [t@x.example]}
rules:
  - {name: r, match: {status: [failure]}, notify: [s, w, m]}
"""
OVERRIDES = {
    "slack/run_failed.j2": '{"text": "slack-j2 {{ run.id }}"}',
    "webhook/run_failed.json.jinja": '{"webhook": "jinja {{ run.id }}"}',
    "email/run_failed.subject.jinja2": "subject-jinja2 {{ run.id }}",
    "email/run_failed.text.j2": "text-alias {{ run.id }}",
}


def setup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = tmp_path / "relay.yaml"
    config.write_text(CONFIG)
    return config


def test_overrides_named_as_spec_says_serve(tmp_path: Path) -> None:
    config = setup(tmp_path, OVERRIDES)
    event = tmp_path / "run.json"
    event.write_text(json.dumps(sdk_run("failed")))
    result = run_cli_in_process("test", "--json", "--config", str(config), str(event))
    assert result.returncode == 0, result.stderr
    parts = {m["channel"]: m["parts"] for m in json.loads(result.stdout)[0]["messages"]}
    run_id = sdk_run("failed")["id"]
    assert json.loads(parts["s"]["json"])["text"] == f"slack-j2 {run_id}"
    assert json.loads(parts["w"]["json"]) == {"webhook": f"jinja {run_id}"}
    assert parts["m"]["subject"] == f"subject-jinja2 {run_id}"
    assert parts["m"]["txt"] == f"text-alias {run_id}"
    assert "Sent by relay" in parts["m"]["html"]  # the part not overridden: shipped


def test_check_is_quiet_of_them_and_warns_of_the_shadowed_and_partless_email(
    tmp_path: Path,
) -> None:
    files = {
        **OVERRIDES,
        "webhook/mine.json.j2": "{}",
        "webhook/mine.j2": "{}",  # beside mine.json.j2: never used
        "email/run_failed.j2": "x",  # email has three parts: which one?
        "slack/notes.md": "a README-like file serves nothing and is left alone",
    }
    config = setup(tmp_path, files)
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    never = f"warning: {config}:1: templates.dir: "
    assert result.stderr.splitlines() == [
        f"{never}email/run_failed.j2 is never rendered: no part in its name "
        "(`email/<template>.<part>.j2`; parts: subject, txt, html)",
        f"{never}webhook/mine.j2 is never rendered: webhook/mine.json.j2 beside it is used instead",
    ]


def test_a_syntax_error_names_the_file_as_written(tmp_path: Path) -> None:
    config = setup(tmp_path, {"webhook/run_failed.jinja": '{"a": {{ run.id }'})
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 1
    assert "webhook/run_failed.jinja:1: unexpected '}'" in result.stdout + result.stderr
