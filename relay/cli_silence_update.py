"""`relay silence update ID ... [-d D | --until T] [--start T] [-c TEXT]`: extend, shorten or
reword silences, as amtool's `silence update` does.

A silence that has not ended changes in place and keeps its id: a pending one its start, end
and comment, an active one its end and comment. Where Alertmanager would not change a silence
in place either, the update makes a new silence of its matchers and prints the new id: one
that has ended (it is not brought back, a new one mutes from its start), one that has started
and is given a new `--start` (the old one ends now). `--duration` counts from the silence's
start, or from now once it has started: `update ID -d 2h` keeps an active silence two hours
more (amtool counts from the start, and such an update of a silence started three hours ago
ends it in the past)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from relay.cli_argparse import spelled
from relay.cli_silences import duration_s, wait_until_applied
from relay.cli_store import with_store
from relay.errors import InputError, RelayError
from relay.model import Silence
from relay.settings import Settings


@dataclass(frozen=True)
class Change:
    """What the flags ask: a start, an end or a duration, a comment (None: left as it is)."""

    start: float | None
    end: float | None
    duration_s: float | None
    comment: str | None
    end_flag: str = "--until/--duration"  # for an error of the end: as typed (`--end`)


@dataclass(frozen=True)
class Updated:
    """One id's outcome: the id now muting (printed), and what to say on stderr."""

    ident: str = ""
    said: str = ""


def cmd_silence_update(args: argparse.Namespace, settings: Settings) -> int:
    change = _change(args)
    # a usage error, as add's missing matchers
    if (change.start, change.end, change.duration_s, change.comment) == (None,) * 4:
        said = "nothing to change: give --duration, --until, --start or --comment"
        print(f"relay silence update: error: {said}", file=sys.stderr)
        return 2
    now = time.time()

    async def update_all(store: Any) -> list[Updated]:
        return [await _update(store, ident, change, now) for ident in args.ids]

    outcomes = asyncio.run(with_store(settings, update_all))
    if any(o.ident for o in outcomes):
        wait_until_applied()
    for outcome in outcomes:
        if outcome.said:
            print(outcome.said, file=sys.stderr)
        if outcome.ident:
            print(outcome.ident)
    return 0 if all(o.ident for o in outcomes) else 1


def _change(args: argparse.Namespace) -> Change:
    """The flags read, before the store is opened; RelayError naming the flag that is wrong."""
    from relay.silences.shapes import parse_time  # noqa: PLC0415

    until = spelled(args, "until", "--until")
    duration = spelled(args, "duration", "--duration")
    try:
        return Change(
            start=parse_time(args.start, "--start") if args.start else None,
            end=parse_time(args.until, until) if args.until else None,
            duration_s=duration_s(args.duration, duration) if args.duration else None,
            comment=args.comment,
            end_flag=f"{until}/{duration}",
        )
    except InputError as exc:
        raise RelayError(f"silence not updated: {exc}") from None


async def _update(store: Any, ident: str, change: Change, now: float) -> Updated:
    found: Silence | None = await store.silence(ident)
    if found is None:
        return Updated(said=f"no silence with id {ident}")
    ended, started = found.ends_at <= now, found.starts_at <= now
    renewed = ended or (started and change.start is not None)
    try:
        silence = _changed(found, change, now, renewed=renewed)
    except InputError as exc:
        return Updated(said=f"{ident} not updated: {_as_flag(exc, change.end_flag)}")
    if not renewed:
        if await store.change_silence(silence, now):
            return Updated(ident)
        return Updated(said=f"{ident} not updated: it ended meanwhile; update it again")
    await store.add_silence(silence)  # first: a store failing in between leaves both muting,
    if not ended:  # not neither
        await store.expire_silence(ident, now)
    why = "it had ended" if ended else "it had started; a new --start makes a new silence"
    return Updated(silence.id, f"{ident} replaced by {silence.id} ({why})")


def _changed(found: Silence, change: Change, now: float, *, renewed: bool) -> Silence:
    """`found` as `change` makes it (a new id when `renewed`); InputError when its times make
    no sense, or when one that ended is given no new end."""
    from relay.silences.shapes import new_silence  # noqa: PLC0415

    start = change.start if change.start is not None else now if renewed else found.starts_at
    end = change.end
    if end is None and change.duration_s is not None:
        end = max(start, now) + change.duration_s
    if end is None and found.ends_at <= now:
        raise InputError("", "it has ended: give --duration or --until for the one replacing it")
    return new_silence(
        found.matchers,
        ends_at=found.ends_at if end is None else end,
        starts_at=start,
        now=now,
        comment=found.comment if change.comment is None else change.comment,
        created_by=found.created_by,
        ident=None if renewed else found.id,
        created_at=None if renewed else found.created_at,
    )


def _as_flag(exc: InputError, end_flag: str) -> str:
    """`exc` in the words of the flags: those of the end as typed for the API's ends_at."""
    if exc.field == "ends_at":
        return f"{end_flag}: {exc.message.replace('starts_at', '--start')}"
    return str(exc)
