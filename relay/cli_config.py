"""relay's commands that load the config: serve, check, test (a dry run) and send-test. The
commands on the store (dlq, silence, history, migrate) are relay.cli_store's."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from relay.errors import ConfigError, InputError, Problem, RelayError
from relay.logs import SCRUB, one_line, setup_logging, tag_lines
from relay.settings import Settings
from relay.worker_role import Role

if TYPE_CHECKING:  # the store's commands (dlq, silence, history) start without them
    from relay.configure import Compiled
    from relay.trying import DryRun

log = logging.getLogger("relay")


def compiled_config(
    args: argparse.Namespace, settings: Settings, *, sends: bool = True
) -> Compiled:
    """The config file's (or the built-in one); a delivery worker's: its parent's, as the
    parent read it, from the file --config-fd names (see relay.worker_pipes). For a command
    that `sends` nothing (relay test), an unset `${VAR}` is a note and a placeholder."""
    from relay.configure import compile_config, load  # noqa: PLC0415
    from relay.placeholders import with_placeholders  # noqa: PLC0415

    fd = getattr(args, "config_fd", None)
    path = getattr(args, "config", None)
    if fd is None and not sends:
        loaded, unset = with_placeholders(lambda env: load(settings, path, env))
        for name in unset:
            print(f"note: {name} is unset; relay serve would refuse it", file=sys.stderr)
        compiled = compile_config(loaded)
    elif fd is None:
        compiled = compile_config(load(settings, path))
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
    else:  # said once, by the parent
        warn_overridden(args)
    compiled = compiled_config(args, settings)
    _log_warnings(compiled, settings)
    events = None if args.events_fd is None else os.fdopen(args.events_fd, "w", encoding="utf-8")
    run_loop(serve(settings, compiled, Role(workers, args.delivery_worker, events)))
    return 0


def warn_overridden(args: argparse.Namespace) -> None:
    """A warning for each bad RELAY_* variable that a command-line flag overrides (relay.cli's
    _settings): it stops nothing, but the next start without the flag would."""
    for problem in getattr(args, "env_overridden", []):
        log.warning(
            "environment variable ignored: the command line overrides it",
            extra={"problem": str(problem)},
        )


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
        compiled = compiled_config(args, settings)
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
    counts = f"{count(len(config.channels), 'channel')}, {count(len(config.rules), 'rule')}"
    print(f"{name}: OK: {counts}")
    return 0


def _log_warnings(compiled: Compiled, settings: Settings) -> None:
    """Which config was loaded, and what `relay check` warns of (a missing templates.dir, a
    misspelled template variable), logged: by `serve`, and by `test` and `send-test`, which
    render through the same templates. The built-in default is warned of by all three: `relay
    test run.json` beside a `RELAY_CONFIG=... relay serve` tried another config's rules, and
    said so nowhere (the info line, `config loaded`, is under the others' WARNING level)."""
    if compiled.loaded.builtin:
        log.warning(
            "no config file found; running the built-in default: failed runs to the console",
            extra={"config": str(settings.config)},
        )
    else:
        log.info("config loaded", extra={"config": compiled.loaded.source.filename})
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


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli_files import read_bounded  # noqa: PLC0415
    from relay.cli_run_words import are_words, run_from_words  # noqa: PLC0415
    from relay.formats import parse_any, parse_body  # noqa: PLC0415
    from relay.trying import dry_run  # noqa: PLC0415

    compiled = compiled_config(args, settings, sends=False)
    _log_warnings(compiled, settings)
    words, event = are_words(args.event), Path(args.event[0])
    try:
        data = (
            run_from_words(args.event) if words else parse_body(read_bounded(event, "relay test"))
        )
        skipped: list[str] = []
        ignored: list[str] = []
        runs = parse_any(data, skipped, ignored)
    except OSError as exc:
        raise RelayError(f"cannot read {event}: {exc.strerror}") from None
    except InputError as exc:
        source = "the words" if words else "standard input" if str(event) == "-" else event
        raise RelayError(f"{source}: {exc}") from None
    for note in skipped + (ignored if args.json else []):  # ids and types from the file
        print(one_line(note), file=sys.stderr)
    if _alerts_unheard(data, compiled):
        print(_NO_ALERT_SOURCE, file=sys.stderr)
    results = dry_run(compiled, runs, digests=args.digests)
    code = 0 if args.expect is None else _expected(results, args.expect)
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
                        "changes": r.changes.get((rule, ch), []),
                    }
                    for rule, ch, m in r.messages
                ],
            }
            for r in results
        ]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return code
    _print_dry_run(results)
    for note in ignored:
        print(one_line(note))
    if not runs and not ignored:
        print("no runs in the file: no rule can match")
    return code


def _expected(results: list[DryRun], expect: str) -> int:
    """1, and each event that matched other rules than `expect` said on stderr, else 0."""
    wanted = [name.strip() for name in expect.split(",") if name.strip()]
    code = 0
    for r in results:
        if r.event != "digest" and r.rules != wanted:
            got = ", ".join(r.rules) or "none"
            said = f"{r.event} {r.run_id}: expected {', '.join(wanted) or 'none'}; matched {got}"
            print(one_line(f"relay test: {said}"), file=sys.stderr)
            code = 1
    return code


def _print_dry_run(results: list[DryRun]) -> None:
    """`relay test`'s human output: run data (ids, error texts in the rendered messages) shows
    escaped, as the console channel prints it, so an ESC in it steers no operator's terminal."""
    from relay.channels.console import printable  # noqa: PLC0415

    for r in results:
        matched = ", ".join(r.rules) if r.rules else "no rule matched"
        print(one_line(f"{r.event} {r.run_id}: {matched}"))
        for rule, channel, rendered in r.messages:
            fallback = f" (fallback: {rendered.error})" if rendered.fallback else ""
            changes = "; ".join(r.changes.get((rule, channel), []))
            sent = f" (sent changed: {changes})" if changes else ""
            print(one_line(f"--- rule {rule} → channel {channel}{fallback}{sent}"))
            for part, text in rendered.parts.items():
                if len(rendered.parts) > 1:
                    print(f"[{part}]")
                print(printable(text).rstrip("\n"))


_NO_ALERT_SOURCE = (
    "note: the config has no sources.trigger_alerts: relay serve answers these alert webhooks"
    " 404 (README: register relay as an alert webhook)"
)


def _alerts_unheard(data: Any, compiled: Compiled) -> bool:
    """Whether the event file holds alert webhook bodies that `relay serve` on this config
    would refuse: `relay test` matched and rendered them, and Trigger.dev's deliveries got 404
    while the newcomer believed their alerts set up."""
    from relay.formats import is_alert_webhook, recorded_body  # noqa: PLC0415

    if compiled.loaded.config.sources.trigger_alerts is not None:
        return False
    body = recorded_body(data)
    return any(map(is_alert_webhook, body if isinstance(body, list) else [body]))


def cmd_send_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.errors import DeliveryError  # noqa: PLC0415
    from relay.trying import send_test  # noqa: PLC0415

    compiled = compiled_config(args, settings)
    _log_warnings(compiled, settings)
    try:
        resolved = asyncio.run(send_test(compiled, args.channel))
    except DeliveryError as exc:
        print(f"send-test to {args.channel} failed: {exc}", file=sys.stderr)
        return 1
    paged = f": paged and resolved (dedup_key {resolved})" if resolved else ""
    print(f"test message sent to {args.channel}{paged}")
    return 0


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
