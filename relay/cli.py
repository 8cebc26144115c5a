"""relay's command line: main() parses (relay.cli_parser), runs the command and reports its
failure. serve · check · test · send-test are relay.cli_config's; the commands on the store
(dlq, history, migrate) are relay.cli_store's, silence relay.cli_silences'."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from relay import signals
from relay.cli_config import cmd_check, cmd_send_test, cmd_serve, cmd_test, count, warn_overridden
from relay.cli_config_show import cmd_config_routes, cmd_config_show
from relay.cli_parser import build_parser, missing_ids, refuse_undecodable
from relay.cli_replicas import cmd_replicas
from relay.cli_silence_import import cmd_silence_import
from relay.cli_silence_update import cmd_silence_update
from relay.cli_silences import cmd_silence_add, cmd_silence_expire, cmd_silence_list
from relay.cli_store import (
    check_named_config,
    cmd_dlq_list,
    cmd_dlq_replay,
    cmd_history,
    cmd_migrate,
)
from relay.errors import ConfigError, Problem, RelayError, StoreUnavailable
from relay.logs import SCRUB, setup_logging
from relay.settings import Settings, load_settings

log = logging.getLogger("relay")
Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_undecodable(parser, args)
    if (no_ids := missing_ids(args)) is not None:
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
        sub: str | None = (
            getattr(args, "dlq_command", None)
            or getattr(args, "silence_command", None)
            or getattr(args, "config_command", None)
        )
        sub = _ALIASES.get(sub, sub) if sub else None
        words = f"{args.command} {sub}" if sub else args.command
        command = _COMMANDS[words]
        if args.command not in _LOADING_CONFIG:
            check_named_config(settings, getattr(args, "config", None))
        if args.command != "serve":  # warnings (a `when` that failed in `relay test`) in the
            quiet = max(settings.log_level, "WARNING", key=logging.getLevelName)  # their format
            setup_logging(settings.log_format, quiet)
            warn_overridden(args)
        return _run(command, words, args, settings)
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


def _run(command: Command, words: str, args: argparse.Namespace, settings: Settings) -> int:
    """`command`, its PostgreSQL sessions named for it in pg_stat_activity: `relay serve`, or
    `relay cli dlq list` (see SESSION_NAME)."""
    from relay.store.opening import SESSION_NAME  # noqa: PLC0415

    named = SESSION_NAME.set("relay serve" if words == "serve" else f"relay cli {words}")
    try:
        return command(args, settings)
    finally:
        SESSION_NAME.reset(named)


def _settings(args: argparse.Namespace) -> Settings:
    """The RELAY_* settings. A bad one the command line overrides (`--workers` over
    RELAY_WORKERS, `--config` over RELAY_CONFIG) stops nothing: it is left at its default and
    only warned of (`args.env_overridden`, see warn_overridden). `relay check` goes on past the
    other bad ones (but RELAY_CONFIG, which names what to check) with those at their defaults,
    to name them with the config's problems."""
    try:
        return load_settings()
    except ConfigError as exc:
        given = {name for name in ("config", "workers") if getattr(args, name, None) is not None}
        args.env_overridden = [p for p in exc.problems if _setting(p) in given]
        problems = [p for p in exc.problems if _setting(p) not in given]
        fields = {_setting(p) for p in problems}
        if problems and (args.command != "check" or "config" in fields):
            raise ConfigError(problems) from None
        args.env_problems = problems
        defaults = {_setting(p): Settings.model_fields[_setting(p)].default for p in exc.problems}
        return load_settings(**defaults)


def _setting(problem: Problem) -> str:
    return problem.path.removeprefix("RELAY_").lower()


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
        print(*problems, f"{count(len(problems), 'problem')} found", sep="\n", file=sys.stderr)
    else:
        print(f"error: {exc}" + (f" (store: {store})" if store else ""), file=sys.stderr)


_LOADING_CONFIG = ("serve", "check", "test", "send-test", "config")  # the others only open it (see
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
    "silence import": cmd_silence_import,
    "silence update": cmd_silence_update,
    "history": cmd_history,
    "migrate": cmd_migrate,
    "replicas": cmd_replicas,
    "config show": cmd_config_show,
    "config routes": cmd_config_routes,
}
