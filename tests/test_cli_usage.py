"""The command line's usage errors and output flags: each command's own usage on a flag it does
not take, and amtool's `-o json` on every listing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli_in_process
from tests.test_cli import make_dead_letters

# every command and nested one, with what it needs besides the flag it does not take
COMMANDS = [
    ["serve"],
    ["check"],
    ["test", "event.json"],
    ["send-test", "slack"],
    ["dlq", "list"],
    ["dlq", "replay", "--all"],
    ["silence", "add", "task=a"],
    ["silence", "list"],
    ["silence", "query"],
    ["silence", "expire", "sil_x"],
    ["history"],
    ["migrate"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_a_flag_a_command_does_not_take_is_said_with_that_commands_usage(
    argv: list[str],
) -> None:
    """`relay dlq list -o json` printed `relay`'s usage, its list of commands, and "relay:
    error: unrecognized arguments": not the flags `dlq list` does take. Each command's own
    usage now, and its name in the error; exit 2 as before."""
    refused = run_cli_in_process(*argv, "--bogus=1")
    assert (refused.returncode, refused.stdout) == (2, "")
    named = argv[:2] if argv[0] in ("dlq", "silence") else argv[:1]
    prog = "relay " + " ".join(named).replace("query", "list")  # amtool's alias of list
    assert refused.stderr.startswith(f"usage: {prog} "), refused.stderr
    assert refused.stderr.endswith(f"{prog}: error: unrecognized arguments: --bogus=1\n")


@pytest.mark.parametrize(
    ("argv", "choices"),
    [
        ([], "{serve,check,test,send-test,dlq,silence,migrate,history,config,replicas}"),
        (["dlq"], "{list,replay}"),
        (["silence"], "{add,list,query,expire,update,import}"),
        (["config"], "{show,routes}"),
    ],
    ids=repr,
)
def test_a_command_run_without_its_sub_command_is_a_usage_error(
    argv: list[str], choices: str
) -> None:
    """`relay`, `relay dlq` and `relay silence` alone: argparse's usage error (exit 2), not a
    command looked up as None; naming the sub-commands, where it said `dlq_command`, a field
    of relay's code."""
    refused = run_cli_in_process(*argv)
    assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
    prog = " ".join(["relay", *argv])
    said = f"{prog}: error: the following arguments are required: {choices}"
    assert refused.stderr.splitlines()[-1] == said, refused.stderr


LISTINGS = [["dlq", "list"], ["history"], ["silence", "list"], ["silence", "query"]]


@pytest.mark.parametrize("argv", LISTINGS, ids=" ".join)
def test_every_listing_takes_amtools_output_flag(tmp_path: Path, argv: list[str]) -> None:
    """`silence list` took amtool's `-o simple|extended|json`, `dlq list` and `history` only
    `--json`: `relay dlq list -o json` was a usage error. On every listing `-o json` (and
    `--output json`, `--output=json`) is `--json`, `-o simple` and `-o extended` the text."""
    env = {"RELAY_STORE_URL": f"sqlite:///{tmp_path / 'relay.db'}"}
    asyncio.run(make_dead_letters(tmp_path / "relay.db", "run_a", "run_b"))
    assert run_cli_in_process("silence", "add", "task=x", env=env).returncode == 0

    def shown(*flags: str) -> str:
        done = run_cli_in_process(*argv, *flags, env=env)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        return done.stdout

    as_json = shown("--json")
    assert len(json.loads(as_json)) == (1 if "silence" in argv else 2)
    for flags in (["-o", "json"], ["--output", "json"], ["--output=json"]):
        assert shown(*flags) == as_json
    text = shown()
    assert shown("-o", "simple") == shown("-o", "extended") == text != as_json
    bad = run_cli_in_process(*argv, "-o", "yaml", env=env)
    assert bad.returncode == 2 and "invalid choice: 'yaml'" in bad.stderr
