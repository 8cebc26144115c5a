"""The example configuration of SPEC.md §3 is the contract's own: it must pass `relay check`."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tests.conftest import SHARED, run_cli_in_process


def spec_example() -> str:
    text = (SHARED / "SPEC.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    [example] = [b for b in blocks if "rules:" in b and "channels:" in b]
    return example


ENV = {
    "RELAY_INGEST_TOKEN": "ingest-token-123",
    "TRIGGER_ALERT_SECRET": "Zx3vQ9kLm2Tn8Pw4Rb7Yc",
    "TRIGGER_SECRET_KEY": "tr_prod_0123456789abcdef",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
    "SMTP_PASSWORD": "smtp-password-123",
    "PAGER_SECRET": "whsec_" + base64.b64encode(b"pager-signing-key-123456").decode(),
}


def test_the_spec_example_passes_relay_check(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(spec_example())
    result = run_cli_in_process("check", "--config", str(config), env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    for secret in ENV.values():
        assert secret not in result.stdout + result.stderr


def test_the_spec_example_without_its_env_names_each_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(spec_example())
    result = run_cli_in_process("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    for name in ENV:
        assert f"environment variable {name} is not set" in result.stderr, name


def test_relay_test_understands_every_payload_shape(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "channels: {out: {type: console}}\n"
        "rules:\n"
        "  - {name: run-failures, match: {status: [failure]}, notify: [out]}\n"
        "  - {name: deploys, match: {event: deployment.failed}, notify: [out]}\n"
    )
    fixtures = SHARED / "fixtures" / "trigger"
    cases = {
        fixtures / "realtime-run" / "sdk" / "run_failed.json": "run-failures",
        fixtures / "realtime-run" / "raw-row" / "run_crashed.row.json": "run-failures",
        fixtures / "realtime-run" / "wire-value" / "run_timed_out.value.json": "run-failures",
        fixtures / "alert-webhooks" / "alert.run.failed.body.json": "run-failures",
        fixtures / "alert-webhooks" / "alert.deployment.failed.body.json": "deploys",
    }
    for path, rule in cases.items():
        result = run_cli_in_process("test", str(path), "--config", str(config))
        assert result.returncode == 0, (path.name, result.stderr)
        assert f": {rule}" in result.stdout.splitlines()[0], (path.name, result.stdout)
