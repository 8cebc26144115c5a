"""The `relay silence` commands (add, list, expire) on the store RELAY_STORE_URL names: a
running relay sees their changes (relay.cli_store opens the store as a short client)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from relay.cli_argparse import spelled
from relay.cli_store import (
    config_names,
    print_table,
    reading,
    said_whole,
    wants_json,
    with_store,
)
from relay.errors import InputError, RelayError
from relay.logs import typed_back
from relay.model import SILENCE_MATCHERS
from relay.settings import Settings

if TYPE_CHECKING:  # imported when a command needs it: `relay --help` starts without it
    from relay.silences.listing import SilenceListing


def cmd_silence_add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.silences.matchers import NoMatchers, cli_matchers, parse_matchers  # noqa: PLC0415
    from relay.silences.shapes import new_silence, parse_time  # noqa: PLC0415

    flags = {key: getattr(args, key) or [] for key in SILENCE_MATCHERS}
    now = time.time()
    try:
        matchers = parse_matchers(cli_matchers(args.matchers, flags))
        start = parse_time(args.start, "--start") if args.start else now
        end = (
            parse_time(args.until, spelled(args, "until", "--until"))
            if args.until
            else start + duration_s(args.duration, _duration_flag(args))
        )
        silence = new_silence(
            matchers,
            ends_at=end,
            starts_at=start,
            now=now,
            comment=args.comment,
            created_by=args.author,
        )
    except NoMatchers as exc:  # `add $(...)` that found none: exit 2, as expire's no id
        print(f"relay silence add: error: {exc}", file=sys.stderr)
        return 2
    except (InputError, ValueError) as exc:
        said = _as_flags(exc, args) if isinstance(exc, InputError) else str(exc)
        raise RelayError(f"silence not added: {said}") from None
    asyncio.run(with_store(settings, lambda s: _add_silence(s, silence, args), create=True))
    wait_until_applied()
    for warning in _silence_warnings(silence.matchers, args, settings):
        print(f"warning: {warning}", file=sys.stderr)
    print(silence.id)  # the id alone, as amtool prints it: `id=$(relay silence add ...)`
    return 0


# a silence added where no store was (before a first `relay serve`, or a RELAY_STORE_URL that is
# not the service's: unset on the host of a container, mistyped), said beside its id


async def _add_silence(store: Any, silence: Any, args: argparse.Namespace) -> None:
    """Store `silence` unless it is over by now: `-d 1ms` ended while the store opened, and was
    stored already expired, its id printed, exit 0. Alertmanager refuses a silence whose end
    has passed when it gets it ("end time can't be in the past"), amtool's `-d 1ms` too."""
    if silence.ends_at <= time.time():
        over = InputError("ends_at", "must be in the future")
        raise RelayError(f"silence not added: {_as_flags(over, args)}")
    await store.add_silence(silence)


def duration_s(text: str, flag: str = "--duration") -> float:
    """`--duration`'s (or `flag`'s) seconds, more than 0 (amtool: "silence duration must be
    greater than 0"), so a negative one (`-1h`) is not "expected a duration like ..."; an
    error quotes what was given (nan read as out of range)."""
    from relay.durations import parse_duration  # noqa: PLC0415

    negative = text.strip().startswith("-")
    try:
        seconds = parse_duration(text.strip()[1:] if negative else text)
    except ValueError as exc:
        raise InputError(f"{flag} {text!r}", str(exc)) from None
    if negative or seconds <= 0:
        raise InputError(f"{flag} {text!r}", "must be more than 0")
    return seconds


def _as_flags(exc: InputError, args: argparse.Namespace) -> str:
    """`exc` in the words of `relay silence add`: its flags, not the API's fields (`ends_at`)."""
    if exc.field != "ends_at":
        return str(exc)
    if args.until:
        return f"{spelled(args, 'until', '--until')}: {exc.message.replace('starts_at', '--start')}"
    if args.start and "future" in exc.message:  # --start past, and --duration too short
        return "--start: the silence would end in the past; give a later --start or --duration"
    given = f"{_duration_flag(args)} {args.duration!r}"
    if "future" in exc.message:  # over before it was stored (_add_silence)
        return f"{given}: the silence would be over before it is stored"
    return f"{given}: {exc.message}"


def _duration_flag(args: argparse.Namespace) -> str:
    """`-d` or `--duration`, as typed (the default's, when neither was: `--duration`)."""
    return spelled(args, "duration", "--duration")


def _silence_warnings(
    matchers: dict[str, tuple[str, ...]], args: argparse.Namespace, settings: Settings
) -> list[str]:
    """The matchers that words name twice (`repeated_names`: any value fits, where amtool
    needs all), and what they name that the config does not (`matcher_warnings`). The config file
    is read if it is there, also with variables unset (an operator's shell seldom has the
    service's secrets); without it (a store reached from another machine) rule and channel
    names go unchecked, and a file there that cannot be read says so (`config_names`)."""
    from relay.silences.matchers import matcher_warnings, repeated_names  # noqa: PLC0415

    names, unread = config_names(settings, args)
    return repeated_names(args.matchers) + unread + matcher_warnings(matchers, names)


def cmd_silence_list(args: argparse.Namespace, settings: Settings) -> int:
    from relay.silences.listing import find_silences  # noqa: PLC0415
    from relay.silences.shapes import silence_view  # noqa: PLC0415

    now = time.time()
    try:
        listing = _silence_listing(args)  # refused before the store is opened
        found = asyncio.run(reading(settings, lambda s: find_silences(s, listing, now)))
    except InputError as exc:
        raise RelayError(f"silence list: {exc}") from None
    views = [silence_view(s, now) for s in found]
    if args.quiet:  # one id a line; nothing at all for none (amtool's `query -q`)
        for view in views:
            print(view["id"])
        return 0
    if said_whole(views, as_json=wants_json(args), none="no silences"):
        return 0
    rows = []
    for v in views:
        matchers = " ".join(
            f"{k}={_quoted(val)}" for k, vals in v["matchers"].items() for val in vals
        )
        comment = f"  # {v['comment']}" if v["comment"] else ""
        when = [v["starts_at"], v["ends_at"]]
        rows.append([v["id"], v["state"], *when, v["created_by"][:12], matchers + comment])
    print_table(["ID", "STATE", "STARTS", "ENDS", "BY", "MATCHERS / COMMENT"], rows)
    return 0


def _silence_listing(args: argparse.Namespace) -> SilenceListing:
    """`relay silence list`'s SilenceListing: its MATCHER words and --filter ones, the expired
    ones too (--all) or alone (--expired), --limit, --after and --within."""
    from relay.silences.listing import silence_listing  # noqa: PLC0415

    return silence_listing(
        [*args.matchers, *args.filter],
        expired="only" if args.expired else "also" if args.all else "no",
        limit=args.limit,
        after=args.after,
        field="matchers",
        within_s=None if args.within is None else duration_s(args.within, "--within"),
    )


def _quoted(value: str) -> str:
    """A matcher's value as amtool prints it, and as `silence add` takes it back: in double
    quotes, `"` and `\\` escaped (`task=a b,c` read as two words, or two values), a control
    character or line separator as Go's escape (`\\n`, `\\x00`, `\\u0085`): one silence a
    line, each value read back as it is."""
    return '"' + typed_back(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def cmd_silence_expire(args: argparse.Namespace, settings: Settings) -> int:
    """Expire each id given (amtool: `expire $(amtool silence query -q)`); 1 if any is unknown."""

    async def expire_all(store: Any) -> dict[str, str]:
        now = time.time()
        return {i: _expired(await store.expire_silence(i, now), now) for i in args.ids}

    said = asyncio.run(with_store(settings, expire_all))
    if any(said.values()):
        wait_until_applied()
    for ident, what in said.items():
        print(what or f"no silence with id {ident}", file=sys.stdout if what else sys.stderr)
    return 0 if all(said.values()) else 1


def _expired(silence: Any, now: float) -> str:
    """What `relay silence expire` says of a silence it expired at `now` ("" if none): one
    that had ended before is told apart (amtool: "already expired"), its end left as it was."""
    from relay.silences.shapes import silence_view  # noqa: PLC0415

    if silence is None:
        return ""
    if silence.ends_at < now:
        return f"{silence.id} was already expired (ended {silence_view(silence, now)['ends_at']})"
    return f"expired {silence.id}"


def wait_until_applied() -> None:
    """Return once a running relay mutes by the changed silences: it re-reads them every
    RELOAD_S, so `relay silence add ...` followed at once by a failure mutes that failure."""
    from relay.silences.cache import RELOAD_S  # noqa: PLC0415

    time.sleep(RELOAD_S)
