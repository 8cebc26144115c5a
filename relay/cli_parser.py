"""relay's command-line parser: the commands, their flags and their checks (a value that is not
UTF-8, a command run with no id); relay.cli runs what it parses."""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay import __version__
from relay.cli_argparse import DashValuesParser, Spelled, StrictParser
from relay.durations import format_duration
from relay.model import SILENCE_MATCHERS
from relay.settings import Settings, worker_count
from relay.worker_role import CONFIG_FD_FLAG, EVENTS_FLAG, WORKER_FLAG


def build_parser() -> argparse.ArgumentParser:
    common = StrictParser(add_help=False)
    # SUPPRESS: `relay --config X check`, `relay dlq --config X list` and `relay dlq list
    # --config X` all work (a sub-command's default would otherwise overwrite the value)
    common.add_argument(
        "--config",
        type=_config_path,
        default=argparse.SUPPRESS,
        help="YAML config (default: $RELAY_CONFIG, else ./config.yaml, else the built-in one)",
    )
    parser = StrictParser(
        prog="relay",
        description="Alerting relay for Trigger.dev",
        parents=[common],
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub, common)
    _config_parsers(sub, common)
    _dlq_parser(sub, common)
    _silence_parser(sub, common)
    sub.add_parser(
        "migrate", parents=[common], help="create or migrate the store's schema ($RELAY_STORE_URL)"
    )
    _history_parser(sub, common)
    _config_show_parser(sub, common)
    replicas = sub.add_parser(
        "replicas", parents=[common], help="the processes alive on a shared store (amtool cluster)"
    )
    _output_flags(replicas)
    _name_commands(parser)
    return parser


# What each setting is, for `relay --help` and `relay serve --help`: where to listen and
# where the store is had no flag and no word in the help, only in the README.
_SETTING_WORDS = {
    "config": "the YAML config, as --config (default: ./config.yaml, else the built-in one)",
    "listen": "host:port to serve HTTP on (default: {listen})",
    "store_url": "sqlite:///PATH or postgresql://USER@HOST/DB (default: {store_url})",
    "log_format": "json or text, on stderr (default: {log_format})",
    "log_level": "DEBUG, INFO, WARNING or ERROR (default: {log_level})",
    "workers": "delivery processes of relay serve, as --workers (default: {workers})",
    "replica_timeout": "PostgreSQL: a silent replica is dead after (default: {replica_timeout})",
}


def settings_epilog() -> str:
    """The environment relay reads at start, each variable with its default."""
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    defaults["replica_timeout"] = format_duration(defaults["replica_timeout"])  # 15s, not 15.0
    lines = ["environment (read at start; a change needs a restart):"]
    for name in defaults:  # a new setting needs its words here (KeyError otherwise)
        words = _SETTING_WORDS[name].format(**defaults)
        lines.append(f"  RELAY_{name.upper():<16} {words}")
    return "\n".join(lines)


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Each command's sub-commands named by their choices, `{list,replay}`, where a missing one
    was said by its dest: `relay dlq: error: the following arguments are required:
    dlq_command` named a field of relay's code."""
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = action.metavar or "{" + ",".join(action.choices) + "}"
            for child in dict.fromkeys(action.choices.values()):
                _name_commands(child)


def _config_show_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """amtool's `config show` and `config routes`, on the file relay would run."""
    config = sub.add_parser("config", parents=[common], help="the config as relay reads it")
    shows = config.add_subparsers(dest="config_command", required=True)
    show = shows.add_parser(
        "show",
        parents=[common],
        help="the config with every default filled in, ${VAR}s substituted, secrets hidden",
    )
    routes = shows.add_parser(
        "routes", parents=[common], help="the rules in the order they are tried, as a table"
    )
    for listing in (show, routes):
        _output_flags(listing)


def _serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    serve_cmd = sub.add_parser(
        "serve",
        parents=[common],
        help="run the relay",
        epilog=settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_cmd.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="delivery in N processes of their own (default: $RELAY_WORKERS, else 0: in-process)",
    )
    serve_cmd.add_argument(WORKER_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    serve_cmd.add_argument(EVENTS_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    serve_cmd.add_argument(CONFIG_FD_FLAG, type=int, default=None, help=argparse.SUPPRESS)


def _config_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """check, test and send-test: the commands on the config, not on the store."""
    check = sub.add_parser("check", parents=[common], help="validate the configuration")
    check.add_argument(
        "file",
        nargs="*",
        type=_config_path,
        help="the YAML config (same as --config); several, as amtool check-config takes them",
    )
    test = sub.add_parser("test", parents=[common], help="dry run: which rules match an event")
    test.add_argument(
        "event",
        nargs="+",
        metavar="EVENT",
        help="JSON file (- for standard input): a run, an array of runs, a raw row or an alert;"
        " or words describing a failed run, as amtool's `config routes test` takes labels:"
        " task=billing/charge tag=env:prod cost_cents=600 (fields: task, status, tag,"
        " cost_cents, base_cost_cents, duration_ms, is_test, metadata.PATH, run_id)",
    )
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.add_argument(
        "--expect",
        metavar="RULES",
        help="exit 1 unless each event matches exactly these rules, comma-separated, in order"
        " ('' for none), as amtool's verify.receivers: routing checks in CI",
    )
    test.add_argument(
        "--digests",
        action="store_true",
        help="also render the digest of each group (of a group_by rule) two or more runs fall in",
    )
    send = sub.add_parser("send-test", parents=[common], help="send a test message to a channel")
    send.add_argument("channel")


def _dlq_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dlq = sub.add_parser("dlq", parents=[common], help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="list dead notifications")
    dlq_list.add_argument(
        "--limit",
        type=_given("a number like 50"),
        help="at most this many, the newest (1-10000; default 1000, as GET /v1/dlq)",
    )
    _output_flags(dlq_list)
    replay = dlq_sub.add_parser("replay", parents=[common], help="send dead notifications again")
    which = replay.add_mutually_exclusive_group()  # neither: _NO_IDS
    which.add_argument(
        "ids", nargs="*", default=[], metavar="ID", help="notification ids (ntf_...)"
    )
    which.add_argument("--all", action="store_true", help="every dead notification")
    for flag, what in (("--channel", "channel"), ("--rule", "rule")):
        replay.add_argument(flag, help=f"with --all: only those of this {what}")
    replay.add_argument("--since", help="with --all: only those created since (1h, 2d, ISO time)")


def _history_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    history = sub.add_parser("history", parents=[common], help="what was sent, when, and why")
    history.add_argument(
        "id",
        nargs="?",
        metavar="ID",
        help="a notification id (ntf_…, as logs and `dlq list` show it) or a run id (--run)",
    )
    for flag, dest in (("--run", "run_id"), ("--rule", "rule"), ("--channel", "channel")):
        history.add_argument(flag, dest=dest)
    # checked with the other flags (relay.history.STATES): exit 1 naming the states, as for a
    # bad --limit or --since, not argparse's usage text and exit 2
    history.add_argument("--state", help="pending, sent, dead or muted")
    history.add_argument(
        "--since",
        type=_given(f"a duration like 1h or a time like {_TIME_EXAMPLE}"),
        help="how far back (1h, 2d) or an ISO time",
    )
    history.add_argument(
        "--before",
        type=_given("a notification id (ntf_…)"),
        help="the next page: those older than this notification id",
    )
    history.add_argument("--limit", default="200", type=_given("a number like 50"))
    _output_flags(history)


def refuse_undecodable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 on an argument that is not UTF-8 (Python hands such bytes over as surrogates):
    a rule, run id or matcher reached the store and ended in a traceback. Paths may be any
    bytes and are left alone (they are Path values by then)."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    parser.error(f"argument {name}: not valid UTF-8")


def _login_name() -> str:
    """$USER, the default author of a silence, else the account's name (as amtool takes it;
    `docker exec` sets no $USER), as text: bytes that are not UTF-8 (which Python hands over
    as surrogates) read as U+FFFD, so that a silence the user named no author for is not
    refused as an argument they never gave."""
    name = os.environ.get("USER", "")
    if not name:
        with contextlib.suppress(OSError, KeyError):  # a uid without a passwd entry: none
            name = pwd.getpwuid(os.getuid()).pw_name
    return name.encode(errors="surrogateescape").decode(errors="replace")


def _author(text: str) -> str:
    """`--author`, else (not given, or given empty: `-a "$AUTHOR"` with it unset) the login
    name, as amtool takes an empty one."""
    return text or _login_name()


def _config_path(text: str) -> Path:
    if not text.strip():  # Path("") is ".", the working directory
        raise argparse.ArgumentTypeError("empty path: name the YAML file")
    return Path(text)


def _worker_count(text: str) -> int:
    """`--workers N`, in RELAY_WORKERS's words; out of bounds, a usage error (exit 2)."""
    try:
        return worker_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_TIME_EXAMPLE = "2026-11-28T18:00:00Z"


def _given(example: str) -> Callable[[str], str]:
    """A flag's value, refused when empty (a usage error, exit 2): `--until "$END"` with END
    unset ended the silence after the default hour and `--start ''` started it now, as if the
    flag had not been given, and `--duration ''` was an error of the store's command (exit 1),
    as `--limit ''`, `--after ''` or `--since ''` were, telling of a value that was none."""

    def given(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"empty: give {example}, or leave the flag out")
        return text

    return given


def _silence_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    silence = sub.add_parser("silence", parents=[common], help="mute notifications for a while")
    silence_sub = silence.add_subparsers(
        dest="silence_command", required=True, parser_class=DashValuesParser
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="print silence ids only")
    _silence_add_parser(silence_sub, [common, quiet])
    _silence_list_parser(silence_sub, [common, quiet])
    expire = silence_sub.add_parser("expire", parents=[common], help="end silences now")
    expire.add_argument("ids", nargs="*", metavar="ID")  # none: _NO_IDS
    _silence_update_parser(silence_sub, [common, quiet])
    imports = silence_sub.add_parser(
        "import", parents=[common], help="add the silences `silence list -o json` printed"
    )
    imports.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="JSON file (default: stdin)"
    )
    imports.add_argument(
        "--force", action="store_true", help="add each under a new id, also if its id is there"
    )


def _silence_add_parser(silence_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    add = silence_sub.add_parser("add", parents=parents, help="add a silence; prints its id")
    add.add_argument(
        "matchers", nargs="*", metavar="MATCHER", help="task=billing/* tag=env:prod ... (amtool)"
    )
    for matcher in SILENCE_MATCHERS:
        add.add_argument(
            f"--{matcher}", action="append", help=f"{matcher} to mute (repeat for any of several)"
        )
    add.add_argument(
        "-d",
        "--duration",
        default="1h",
        action=Spelled,
        type=_given("a duration like 2h"),
        help="how long, from the start: 30m, 2h, 1d (1h)",
    )
    add.add_argument(
        "--until",
        "--end",
        action=Spelled,
        type=_given(f"a time like {_TIME_EXAMPLE}"),
        help=f"end time, ISO-8601 ({_TIME_EXAMPLE}); wins over --duration",
    )
    add.add_argument(
        "--start",
        type=_given(f"a time like {_TIME_EXAMPLE}"),
        help="start time, ISO-8601 (default: now)",
    )
    add.add_argument("-c", "--comment", default="")
    add.add_argument(  # a string default goes through `type` too: the login name, read then
        "-a", "--author", type=_author, default="", help="created_by (default: $USER)"
    )


def _silence_update_parser(silence_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    update = silence_sub.add_parser(
        "update", parents=parents, help="extend, shorten or reword silences; prints their ids"
    )
    update.add_argument("ids", nargs="*", metavar="ID")  # none: _NO_IDS
    update.add_argument(
        "-d",
        "--duration",
        action=Spelled,
        type=_given("a duration like 2h"),
        help="how long, from the start (from now once it has started)",
    )
    update.add_argument(
        "--until",
        "--end",
        action=Spelled,
        type=_given(f"a time like {_TIME_EXAMPLE}"),
        help="new end time",
    )
    update.add_argument("--start", type=_given(f"a time like {_TIME_EXAMPLE}"), help="new start")
    update.add_argument("-c", "--comment", help="new comment")


def _silence_list_parser(silence_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    listing = silence_sub.add_parser(
        "list", aliases=["query"], parents=parents, help="list silences"
    )
    listing.add_argument(
        "matchers",
        nargs="*",
        metavar="MATCHER",
        help='only silences these fit, as amtool query\'s: rule=x, tag=~"env:.*", task!=a',
    )
    listing.add_argument(
        "--filter", action="append", default=[], help="a MATCHER more (repeatable; the API's)"
    )
    listing.add_argument(
        "--limit",
        type=_given("a number like 50"),
        help="at most this many (1-10000; default: all)",
    )
    listing.add_argument(
        "--after",
        type=_given("a silence id (sil_…)"),
        help="the next page: those after this silence id",
    )
    listing.add_argument(
        "--within",
        type=_given("a duration like 2h"),
        help="only those ending within it (amtool's); with --expired: that ended within it",
    )
    shown = listing.add_mutually_exclusive_group()
    shown.add_argument("--all", action="store_true", help="include expired silences")
    shown.add_argument("--expired", action="store_true", help="only expired silences (amtool)")
    _output_flags(listing)


def _output_flags(listing: argparse.ArgumentParser) -> None:
    """A listing's `--json`, and amtool's `-o`/`--output` beside it, the same on each (`dlq
    list`, `history`, `silence list`): an operator used to amtool types `-o json` on any,
    and `dlq list -o json` was a usage error. relay.cli_store reads them."""
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "-o",
        "--output",
        choices=("simple", "extended", "json"),
        default="simple",
        help="json: as --json; simple and extended: the text (amtool's flag)",
    )


# `relay dlq replay` and `relay silence expire` given no id (a `$(...)` that found none): a
# usage error (exit 2, as argparse's), said in one line with the way out; argparse printed its
# usage and "one of the arguments ID --all is required", which read as one argument named that.
# amtool says "no silence IDs specified".
_NO_IDS = {
    ("dlq", "replay"): "no notification id given: name the dead ones (relay dlq list) or --all"
    " (--channel, --rule and --since narrow it)",
    ("silence", "expire"): "no silence id given: name them (relay silence query -q lists ids)",
    ("silence", "update"): "no silence id given: name them (relay silence query -q lists ids)",
}


def missing_ids(args: argparse.Namespace) -> str | None:
    """The one-line error of a command of _NO_IDS run without an id (nor --all), else None."""
    sub = str(getattr(args, "dlq_command", None) or getattr(args, "silence_command", None))
    message = _NO_IDS.get((args.command, sub))
    if message is None or args.ids or getattr(args, "all", False):
        return None
    return f"relay {args.command} {sub}: error: {message}"
