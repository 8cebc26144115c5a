"""relay's command line: its parser, and serve · check · test · send-test; the commands on the
store (dlq, silence, history, migrate) are relay.cli_store's."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from relay import __version__, signals
from relay.cli_store import (
    check_named_config,
    cmd_dlq_list,
    cmd_dlq_replay,
    cmd_history,
    cmd_migrate,
    cmd_silence_add,
    cmd_silence_expire,
    cmd_silence_list,
)
from relay.errors import ConfigError, InputError, Problem, RelayError, StoreUnavailable
from relay.logs import SCRUB, one_line, setup_logging, tag_lines
from relay.model import SILENCE_MATCHERS
from relay.settings import Settings, load_settings, worker_count
from relay.workers import (
    CONFIG_FD_FLAG,
    EVENTS_FLAG,
    WORKER_FLAG,
    Role,
)

if TYPE_CHECKING:  # the store's commands (dlq, silence, history) start without them
    from relay.configure import Compiled, DryRun

log = logging.getLogger("relay")
Command = Callable[[argparse.Namespace, Settings], int]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `relay --config X check`, `relay dlq --config X list` and `relay dlq list
    # --config X` all work (a sub-command's default would otherwise overwrite the value)
    common.add_argument(
        "--config",
        type=_config_path,
        default=argparse.SUPPRESS,
        help="YAML config (default: $RELAY_CONFIG, else ./config.yaml, else the built-in one)",
    )
    parser = argparse.ArgumentParser(
        prog="relay", description="Alerting relay for Trigger.dev", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", parents=[common], help="run the relay")
    serve_cmd.add_argument(
        "--workers",
        type=_worker_count,
        default=None,
        help="delivery in N processes of their own (default: $RELAY_WORKERS, else 0: in-process)",
    )
    serve_cmd.add_argument(WORKER_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    serve_cmd.add_argument(EVENTS_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    serve_cmd.add_argument(CONFIG_FD_FLAG, type=int, default=None, help=argparse.SUPPRESS)
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
        type=Path,
        help="JSON file (- for standard input): a run, an array of runs, a raw row or an alert",
    )
    test.add_argument("--json", action="store_true", help="machine-readable output")
    send = sub.add_parser("send-test", parents=[common], help="send a test message to a channel")
    send.add_argument("channel")
    dlq = sub.add_parser("dlq", parents=[common], help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="list dead notifications")
    dlq_list.add_argument("--json", action="store_true")
    replay = dlq_sub.add_parser("replay", parents=[common], help="send dead notifications again")
    which = replay.add_mutually_exclusive_group()  # neither: _NO_IDS
    which.add_argument(
        "ids", nargs="*", default=[], metavar="ID", help="notification ids (ntf_...)"
    )
    which.add_argument("--all", action="store_true", help="every dead notification")
    _silence_parser(sub, common)
    sub.add_parser(
        "migrate", parents=[common], help="create or migrate the store's schema ($RELAY_STORE_URL)"
    )
    history = sub.add_parser("history", parents=[common], help="what was sent, when, and why")
    for flag, dest in (("--run", "run_id"), ("--rule", "rule"), ("--channel", "channel")):
        history.add_argument(flag, dest=dest)
    # checked with the other flags (relay.history.STATES): exit 1 naming the states, as for a
    # bad --limit or --since, not argparse's usage text and exit 2
    history.add_argument("--state", help="pending, sent, dead or muted")
    history.add_argument("--since", help="how far back (1h, 2d) or an ISO time")
    history.add_argument("--before", help="the next page: those older than this notification id")
    history.add_argument("--limit", default="200")
    history.add_argument("--json", action="store_true")
    return parser


def _refuse_undecodable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


class _DashValues(argparse.ArgumentParser):
    """A parser whose options take a value starting with `-` that is none of its options:
    `-d -1h` and `-d -abc` are durations to refuse, naming the value ("--duration '-abc':
    expected a duration like ..."), where argparse took `-1h` and `-abc` for options (`-abc`
    as `-a bc`) and said only "-d: expected one argument"."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(self._joined(args), namespace)

    def _joined(self, args: list[str] | None) -> list[str] | None:
        """`args` with each `OPTION VALUE` whose VALUE starts with `-` as `OPTION=VALUE`."""
        if args is None:
            return None
        out: list[str] = []
        for word in args:
            action = self._action(out[-1]) if out and "--" not in out else None
            taking = action is not None and action.nargs is None and action.option_strings
            if taking and word.startswith("-") and self._action(word) is None and word != "--":
                out[-1] = f"{out[-1]}={word}"
            else:
                out.append(word)
        return out

    def _action(self, word: str) -> argparse.Action | None:
        """The option `word` names: in full, or a long one abbreviated as argparse takes it
        (`--dur` for --duration: `--dur -1h` said "expected one argument")."""
        options = self._option_string_actions
        if word in options or not (self.allow_abbrev and word.startswith("--")):
            return options.get(word)
        found = {action for option, action in options.items() if option.startswith(word)}
        return found.pop() if len(found) == 1 else None


def _silence_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    silence = sub.add_parser("silence", parents=[common], help="mute notifications for a while")
    silence_sub = silence.add_subparsers(
        dest="silence_command", required=True, parser_class=_DashValues
    )
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="print silence ids only")
    add = silence_sub.add_parser(
        "add", parents=[common, quiet], help="add a silence; prints its id"
    )
    add.add_argument(
        "matchers", nargs="*", metavar="MATCHER", help="task=billing/* tag=env:prod ... (amtool)"
    )
    for matcher in SILENCE_MATCHERS:
        add.add_argument(
            f"--{matcher}", action="append", help=f"{matcher} to mute (repeat for any of several)"
        )
    add.add_argument(
        "-d", "--duration", default="1h", help="how long, from the start: 30m, 2h, 1d (1h)"
    )
    add.add_argument(
        "--until", "--end", help="end time, ISO-8601 (2026-11-28T18:00:00Z); wins over --duration"
    )
    add.add_argument("--start", help="start time, ISO-8601 (default: now)")
    add.add_argument("-c", "--comment", default="")
    add.add_argument(  # a string default goes through `type` too: the login name, read then
        "-a", "--author", type=_author, default="", help="created_by (default: $USER)"
    )
    listing = silence_sub.add_parser(
        "list", aliases=["query"], parents=[common, quiet], help="list silences"
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
    listing.add_argument("--limit", help="at most this many (1-10000; default: all)")
    listing.add_argument("--after", help="the next page: those after this silence id")
    shown = listing.add_mutually_exclusive_group()
    shown.add_argument("--all", action="store_true", help="include expired silences")
    shown.add_argument("--expired", action="store_true", help="only expired silences (amtool)")
    listing.add_argument("--json", action="store_true")
    listing.add_argument(
        "-o",
        "--output",
        choices=("simple", "extended", "json"),
        default="simple",
        help="json: as --json; simple and extended: the table (amtool's flag)",
    )
    expire = silence_sub.add_parser("expire", parents=[common], help="end silences now")
    expire.add_argument("ids", nargs="*", metavar="ID")  # none: _NO_IDS


# `relay dlq replay` and `relay silence expire` given no id (a `$(...)` that found none): a
# usage error (exit 2, as argparse's), said in one line with the way out; argparse printed its
# usage and "one of the arguments ID --all is required", which read as one argument named that.
# amtool says "no silence IDs specified".
_NO_IDS = {
    ("dlq", "replay"): "no notification id given: name the dead ones (relay dlq list) or --all",
    ("silence", "expire"): "no silence id given: name them (relay silence query -q lists ids)",
}


def _no_ids(args: argparse.Namespace) -> str | None:
    """The one-line error of a command of _NO_IDS run without an id (nor --all), else None."""
    sub = str(getattr(args, "dlq_command", None) or getattr(args, "silence_command", None))
    message = _NO_IDS.get((args.command, sub))
    if message is None or args.ids or getattr(args, "all", False):
        return None
    return f"relay {args.command} {sub}: error: {message}"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _refuse_undecodable(parser, args)
    if (no_ids := _no_ids(args)) is not None:
        print(no_ids, file=sys.stderr)
        return 2
    if args.command == "check" and args.file:  # `relay check config.yaml ...`, as
        if getattr(args, "config", None) not in (None, *args.file[:1]) or (  # `amtool
            len(args.file) > 1 and hasattr(args, "config")  # check-config FILE ...`
        ):
            parser.error("give the config once: as --config or as FILE, not both")  # exit 2
        if len(args.file) > 1:  # each checked as if alone; 1 if any has a problem
            return max([main(["check", str(path)]) for path in args.file])
        args.config = args.file[0]
    settings: Settings | None = None
    try:
        if args.command != "serve":  # only the service answers them itself (see relay.signals)
            signals.release()
        settings = _settings(args)
        SCRUB.lasting(settings.secrets())
        sub: str | None = getattr(args, "dlq_command", None) or getattr(
            args, "silence_command", None
        )
        sub = _ALIASES.get(sub, sub) if sub else None
        command = _COMMANDS[f"{args.command} {sub}" if sub else args.command]
        if args.command not in _LOADING_CONFIG:
            check_named_config(settings, getattr(args, "config", None))
        if args.command != "serve":  # warnings (a `when` that failed in `relay test`) in the
            quiet = max(settings.log_level, "WARNING", key=logging.getLevelName)  # their format
            setup_logging(settings.log_format, quiet)
        return command(args, settings)
    except RelayError as exc:  # ConfigError too
        serving_json = args.command == "serve" and _json(settings)
        if serving_json and settings is None:  # the settings that set logging up are the fault
            setup_logging("json", "INFO")
        _report(exc, serving_json=serving_json, store=_store_named(exc, settings))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `relay history --json | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _settings(args: argparse.Namespace) -> Settings:
    """The RELAY_* settings. `relay check` goes on past bad ones (but RELAY_CONFIG, which names
    what to check) with those at their defaults, to name them with the config's problems."""
    try:
        return load_settings()
    except ConfigError as exc:
        fields = {p.path.removeprefix("RELAY_").lower() for p in exc.problems}
        if args.command != "check" or "config" in fields:
            raise
        args.env_problems = exc.problems
        defaults = {name: Settings.model_fields[name].default for name in fields}
        return load_settings(**defaults)


def _json(settings: Settings | None) -> bool:
    """Whether the service logs JSON lines. Without its settings (a bad RELAY_LISTEN), as the
    RELAY_LOG_FORMAT variable says, else JSON, the default: the reason a container never
    started is a JSON line among them, whichever setting was wrong."""
    if settings is not None:
        return settings.log_format == "json"
    return os.environ.get("RELAY_LOG_FORMAT", "").strip().lower() != "text"


def _store_named(exc: RelayError, settings: Settings | None) -> str | None:
    """The store a failure of the store is about (its file, or a PostgreSQL server's host:port
    and database): `store open failed: the database file is damaged ...` named no file, and
    the operator of several relays or volumes had to guess which."""
    if not isinstance(exc, StoreUnavailable) or settings is None:
        return None
    from relay.store.opening import store_name  # noqa: PLC0415

    try:
        return store_name(settings.store_url) or None
    except RelayError:  # pragma: no cover - a URL the store refuses opens no store to fail
        return None


def _report(exc: RelayError, *, serving_json: bool, store: str | None = None) -> None:
    """Why the command failed, on stderr; `relay serve` logging JSON says it in a log line.
    `store`: the store a failure of the store is about."""
    problems = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else None
    if serving_json:  # one JSON object a line, also for the reason the service never started
        fields = {"problems": problems} if problems is not None else {"error": str(exc)}
        log.error("relay not started", extra=fields | ({"store": store} if store else {}))
    elif problems is not None:
        print(*problems, f"{_count(len(problems), 'problem')} found", sep="\n", file=sys.stderr)
    else:
        print(f"error: {exc}" + (f" (store: {store})" if store else ""), file=sys.stderr)


def _compiled(args: argparse.Namespace, settings: Settings) -> Compiled:
    """The config file's (or the built-in one); a delivery worker's: its parent's, as the
    parent read it, from the file --config-fd names (see relay.workers)."""
    from relay.configure import compile_config, load  # noqa: PLC0415

    fd = getattr(args, "config_fd", None)
    if fd is None:
        compiled = compile_config(load(settings, getattr(args, "config", None)))
    else:  # relay.reloading imports the service's metrics (prometheus_client): workers only
        from relay.reloading import compile_payload  # noqa: PLC0415

        with os.fdopen(fd, "rb") as file:
            compiled = compile_payload(file.read())
    SCRUB.set(compiled.loaded.secrets())  # no secret in a warning either
    return compiled


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from relay.service import serve  # noqa: PLC0415

    workers = settings.workers if args.workers is None else args.workers
    setup_logging(settings.log_format, settings.log_level)
    if args.delivery_worker is not None:  # every line of a worker names it, its first ones too
        tag_lines(worker=args.delivery_worker)
    compiled = _compiled(args, settings)
    if compiled.loaded.builtin:
        log.warning(
            "no config file found; running the built-in default: failed runs to the console",
            extra={"config": str(settings.config)},
        )
    else:
        log.info("config loaded", extra={"config": compiled.loaded.source.filename})
    _log_warnings(compiled)
    events = None if args.events_fd is None else os.fdopen(args.events_fd, "w", encoding="utf-8")
    run_loop(serve(settings, compiled, Role(workers, args.delivery_worker, events)))
    return 0


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, on uvloop when it is installed (the `fast` extra; the Docker image has it)."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from relay.configure import BUILTIN_NAME  # noqa: PLC0415

    store_problems = getattr(args, "env_problems", []) + _store_url_problems(settings.store_url)
    try:
        compiled = _compiled(args, settings)
    except ConfigError as exc:
        raise ConfigError([*exc.problems, *store_problems]) from None
    if store_problems:
        raise ConfigError(store_problems)
    for warning in compiled.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    config = compiled.loaded.config
    name = compiled.loaded.source.filename
    if name == BUILTIN_NAME:
        name = "built-in default (no config file found)"
    counts = f"{_count(len(config.channels), 'channel')}, {_count(len(config.rules), 'rule')}"
    print(f"{name}: OK: {counts}")
    return 0


def _log_warnings(compiled: Compiled) -> None:
    """What `relay check` warns of (a missing templates.dir, a misspelled template variable),
    logged: by `serve`, and by `test` and `send-test`, which render through the same templates."""
    for warning in compiled.warnings:
        log.warning(warning)


def _store_url_problems(url: str) -> list[Problem]:
    """What is wrong with the form of RELAY_STORE_URL (no connection is made): `relay check`
    names it, as it names a bad RELAY_LISTEN, rather than `relay serve` failing after an OK."""
    from relay.store.opening import open_store  # noqa: PLC0415

    try:
        open_store(url)
    except ConfigError as exc:
        return exc.problems
    return []


MAX_EVENT_BYTES = 64 * 1024 * 1024  # a long recorded Realtime session fits; /dev/zero does not


def _read_event(path: Path) -> bytes:
    """The bytes of the event file; `-` is standard input (`curl ... | relay test -`). At most
    MAX_EVENT_BYTES: `relay test /dev/zero` (or a wrong pipe) took 6 GB in 5 s, and on."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1)
    else:
        with path.open("rb") as file:
            data = file.read(MAX_EVENT_BYTES + 1)
    if len(data) > MAX_EVENT_BYTES:
        raise InputError("", f"larger than {MAX_EVENT_BYTES >> 20} MiB; relay test reads no more")
    return data


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.configure import dry_run  # noqa: PLC0415
    from relay.formats import parse_any, parse_body  # noqa: PLC0415

    compiled = _compiled(args, settings)
    _log_warnings(compiled)
    try:
        data = parse_body(_read_event(args.event))
        skipped: list[str] = []
        ignored: list[str] = []
        runs = parse_any(data, skipped, ignored)
    except OSError as exc:
        raise RelayError(f"cannot read {args.event}: {exc.strerror}") from None
    except InputError as exc:
        source = "standard input" if str(args.event) == "-" else args.event
        raise RelayError(f"{source}: {exc}") from None
    for note in skipped + (ignored if args.json else []):  # ids and types from the file
        print(one_line(note), file=sys.stderr)
    results = dry_run(compiled, runs)
    if args.json:
        out = [
            {
                "event": r.event,
                "run_id": r.run_id,
                "rules": r.rules,
                "messages": [
                    {
                        "rule": rule,
                        "channel": ch,
                        "parts": m.parts,
                        "fallback": m.fallback,
                        "error": m.error,
                    }
                    for rule, ch, m in r.messages
                ],
            }
            for r in results
        ]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    _print_dry_run(results)
    for note in ignored:
        print(one_line(note))
    if not runs and not ignored:
        print("no runs in the file: no rule can match")
    return 0


def _print_dry_run(results: list[DryRun]) -> None:
    """`relay test`'s human output: run data (ids, error texts in the rendered messages) shows
    escaped, as the console channel prints it, so an ESC in it steers no operator's terminal."""
    from relay.channels.console import printable  # noqa: PLC0415

    for r in results:
        matched = ", ".join(r.rules) if r.rules else "no rule matched"
        print(one_line(f"{r.event} {r.run_id}: {matched}"))
        for rule, channel, rendered in r.messages:
            fallback = f" (fallback: {rendered.error})" if rendered.fallback else ""
            print(one_line(f"--- rule {rule} → channel {channel}{fallback}"))
            for part, text in rendered.parts.items():
                if len(rendered.parts) > 1:
                    print(f"[{part}]")
                print(printable(text).rstrip("\n"))


def cmd_send_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.configure import send_test  # noqa: PLC0415
    from relay.errors import DeliveryError  # noqa: PLC0415

    compiled = _compiled(args, settings)
    _log_warnings(compiled)
    try:
        resolved = asyncio.run(send_test(compiled, args.channel))
    except DeliveryError as exc:
        print(f"send-test to {args.channel} failed: {exc}", file=sys.stderr)
        return 1
    paged = f": paged and resolved (dedup_key {resolved})" if resolved else ""
    print(f"test message sent to {args.channel}{paged}")
    return 0


_LOADING_CONFIG = ("serve", "check", "test", "send-test")  # the others only open it (see
# relay.cli_store.check_named_config)
_ALIASES = {"query": "list"}  # amtool's name for `silence list`
_COMMANDS: dict[str, Command] = {
    "serve": cmd_serve,
    "check": cmd_check,
    "test": cmd_test,
    "send-test": cmd_send_test,
    "dlq list": cmd_dlq_list,
    "dlq replay": cmd_dlq_replay,
    "silence add": cmd_silence_add,
    "silence list": cmd_silence_list,
    "silence expire": cmd_silence_expire,
    "history": cmd_history,
    "migrate": cmd_migrate,
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
