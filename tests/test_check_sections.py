"""`relay check` of a misspelt top-level section (`channel:` for `channels:`): one problem,
with the key meant, not one more at every rule naming what the section defines."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli_in_process


def _problems(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 1 and result.stdout == "", result.stdout
    return config, result.stderr.splitlines()


def test_a_misspelt_channels_section_is_one_problem(tmp_path: Path) -> None:
    """The newcomer's `channel:` gave the typo and then `unknown channel` at each `notify`
    naming a channel defined under it: three problems for one; a name defined nowhere is
    still one, with the nearest."""
    config, said = _problems(
        tmp_path,
        "channel:\n  console: {type: console}\n  slack: {type: console}\nrules:\n"
        "  - {name: a, notify: [console, slack]}\n  - {name: b, notify: [slak]}\n",
    )
    assert said == [
        f"{config}:1: channel: unknown key (did you mean 'channels'?)",
        f"{config}:6: rules[1].notify[0]: unknown channel 'slak' (did you mean 'slack'?)",
        "2 problems found",
    ]


def test_a_misspelt_time_intervals_section_is_one_problem(tmp_path: Path) -> None:
    config, said = _problems(
        tmp_path,
        "channels: {c: {type: console}}\ntime_interval:\n  - name: nights\n"
        "    time_intervals: [{weekdays: [monday]}]\nrules:\n"
        "  - {name: a, notify: [c], mute_time_intervals: [nights, days]}\n",
    )
    assert said == [
        f"{config}:2: time_interval: unknown key (did you mean 'time_intervals'?)",
        f"{config}:6: rules[0].mute_time_intervals[1]: unknown time interval 'days'",
        "2 problems found",
    ]
