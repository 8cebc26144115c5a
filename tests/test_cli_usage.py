"""The command line's usage errors and output flags: each command's own usage on a flag it does
not take, and amtool's `-o json` on every listing."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli_in_process

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
