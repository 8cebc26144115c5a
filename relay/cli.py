"""relay's command line: serve · check · test · send-test · dlq."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from relay import __version__
from relay.errors import ConfigError, InputError, RelayError
from relay.logs import setup_logging
from relay.service import BUILTIN_NAME, Compiled, compile_config, load, serve
from relay.settings import Settings, load_settings

log = logging.getLogger("relay")
Command = Callable[[argparse.Namespace, Settings], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Alerting relay for Trigger.dev")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML config (default: $RELAY_CONFIG)")
    sub.add_parser("serve", parents=[common], help="run the relay")
    sub.add_parser("check", parents=[common], help="validate the configuration")
    test = sub.add_parser("test", parents=[common], help="dry run: which rules match an event")
    test.add_argument("event", type=Path, help="JSON file: a run object or an array of them")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    send = sub.add_parser("send-test", parents=[common], help="send a test message to a channel")
    send.add_argument("channel")
    dlq = sub.add_parser("dlq", help="dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="list dead notifications")
    dlq_list.add_argument("--json", action="store_true")
    replay = dlq_sub.add_parser("replay", parents=[common], help="send dead notifications again")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="notification id")
    which.add_argument("--all", action="store_true", help="every dead notification")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        command = _COMMANDS[args.command if args.command != "dlq" else f"dlq {args.dlq_command}"]
        return command(args, settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _compiled(args: argparse.Namespace, settings: Settings) -> Compiled:
    return compile_config(load(settings, args.config))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging(settings.log_format, settings.log_level)
    compiled = _compiled(args, settings)
    if compiled.loaded.builtin:
        log.warning(
            "no config file found; running the built-in default: failed runs to the console",
            extra={"config": str(settings.config)},
        )
    else:
        log.info("config loaded", extra={"config": compiled.loaded.source.filename})
    asyncio.run(serve(settings, compiled))
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    compiled = _compiled(args, settings)
    config = compiled.loaded.config
    name = compiled.loaded.source.filename
    if name == BUILTIN_NAME:
        name = "built-in default (no config file found)"
    print(f"{name}: OK: {len(config.channels)} channels, {len(config.rules)} rules")
    return 0


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.sources.http import dead_letter_view  # noqa: PLC0415

    rows = asyncio.run(_with_store(settings, lambda s: s.dead_letters()))
    views = [dead_letter_view(n) for n in rows]
    if args.json:
        print(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not views:
        print("no dead notifications")
        return 0
    print(f"{'ID':<28} {'RUN':<32} {'CHANNEL':<16} {'ATTEMPTS':>8}  REASON")
    for v in views:
        print(
            f"{v['id']:<28} {v['run_id']:<32} {v['channel']:<16} {v['attempts']:>8}  "
            f"{v['reason']}: {v['error']}"
        )
    return 0


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    ids = None if args.all else [args.id]
    moved = asyncio.run(_with_store(settings, lambda s: s.replay(ids, time.time())))
    print(f"replayed {moved} notification(s)")
    if not args.all and moved == 0:
        print(f"no dead notification with id {args.id}", file=sys.stderr)
        return 1
    return 0


async def _with_store(settings: Settings, action: Callable[[Any], Any]) -> Any:
    from relay.store import open_store  # noqa: PLC0415

    store = open_store(settings.store_url)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.formats import parse_body, parse_runs  # noqa: PLC0415
    from relay.service import dry_run  # noqa: PLC0415

    compiled = _compiled(args, settings)
    try:
        runs = parse_runs(parse_body(args.event.read_bytes()))
    except OSError as exc:
        raise RelayError(f"cannot read {args.event}: {exc.strerror}") from None
    except InputError as exc:
        raise RelayError(f"{args.event}: {exc}") from None
    results = dry_run(compiled, runs)
    if args.json:
        out = [
            {
                "run_id": r.run_id,
                "rules": r.rules,
                "messages": [
                    {"rule": rule, "channel": ch, "parts": m.parts, "fallback": m.fallback}
                    for rule, ch, m in r.messages
                ],
            }
            for r in results
        ]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    for r in results:
        matched = ", ".join(r.rules) if r.rules else "no rule matched"
        print(f"run {r.run_id}: {matched}")
        for rule, channel, rendered in r.messages:
            print(
                f"--- rule {rule} → channel {channel}"
                + (" (fallback)" if rendered.fallback else "")
            )
            for part, text in rendered.parts.items():
                if len(rendered.parts) > 1:
                    print(f"[{part}]")
                print(text.rstrip("\n"))
    return 0


def cmd_send_test(args: argparse.Namespace, settings: Settings) -> int:
    from relay.errors import DeliveryError  # noqa: PLC0415
    from relay.service import send_test  # noqa: PLC0415

    compiled = _compiled(args, settings)
    try:
        asyncio.run(send_test(compiled, args.channel))
    except DeliveryError as exc:
        print(f"send-test to {args.channel} failed: {exc}", file=sys.stderr)
        return 1
    print(f"test message sent to {args.channel}")
    return 0


_COMMANDS: dict[str, Command] = {
    "serve": cmd_serve,
    "check": cmd_check,
    "test": cmd_test,
    "send-test": cmd_send_test,
    "dlq list": cmd_dlq_list,
    "dlq replay": cmd_dlq_replay,
}
