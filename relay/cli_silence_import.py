"""`relay silence import [FILE]`: silences as `relay silence list -o json` (or the API's
`GET /v1/silences`) printed them, added to the store RELAY_STORE_URL names, as amtool's
`silence import` adds `amtool silence query -o json`'s: to move them to another relay's store
(SQLite to PostgreSQL), or to restore them.

The file is read whole and every silence checked before the first is added: a mistake in the
30th adds none (amtool's import adds those before it). A silence keeps its id, so importing a
file twice adds nothing the second time; one whose id the store has already is kept as it is
there (`--force`: added under a new id, as amtool's). A silence that has ended is skipped, not
refused: `relay silence list --all -o json` lists those too."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from relay.cli_files import read_bounded
from relay.cli_silences import wait_until_applied
from relay.cli_store import config_names, with_store
from relay.errors import InputError, RelayError, field_path
from relay.model import Silence
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.silences.matchers import ConfigNames

MAX_IMPORT_SILENCES = 100_000  # 400,000 took 455 MB and a minute; a store holds far fewer
AT_ONCE = 256  # silences written together (SQLite commits them as one)
SHOWN_FIELDS = ("id", "created_at", "state", "warnings")  # a listing's, not a silence's to give
RELAY_ID = re.compile(r"sil_[0-9a-f]{16}")


@dataclass(frozen=True)
class Plan:
    """What the import does: the silences to add, and the ended ones it skips (their place in
    the file and what they said)."""

    silences: list[Silence]
    ended: list[str]


def cmd_silence_import(args: argparse.Namespace, settings: Settings) -> int:
    now = time.time()
    try:
        plan = _planned(_items(_read(args.file)), now, force=args.force)
    except InputError as exc:
        raise RelayError(f"silence import: nothing imported: {exc}") from None
    for ended in plan.ended:
        print(f"skipped {ended}: it has ended", file=sys.stderr)
    made_for = ("these silences", "them")
    adding = with_store(
        settings, lambda s: _add_all(s, plan.silences), create=True, made_for=made_for
    )
    added = asyncio.run(adding)
    if any(added):
        wait_until_applied()
    names, unread = config_names(settings, args) if any(added) else (None, [])
    for warning in unread:
        print(f"warning: {warning}", file=sys.stderr)
    _tell(plan.silences, added, names)
    told = f"{sum(added)} of {len(plan.silences) + len(plan.ended)} silences imported"
    print(told, file=sys.stderr)
    return 0


def _tell(silences: list[Silence], added: list[bool], names: ConfigNames | None) -> None:
    """Each silence added (its id, on stdout, as amtool's import prints them; what its matchers
    name that the config does not) or kept."""
    from relay.silences.matchers import matcher_warnings  # noqa: PLC0415

    for silence, new in zip(silences, added, strict=True):
        if new:
            for warning in matcher_warnings(silence.matchers, names):
                print(f"warning: {silence.id}: {warning}", file=sys.stderr)
            print(silence.id)
        else:
            kept = "a silence of this id is in the store already (--force adds it anew)"
            print(f"kept {silence.id}: {kept}", file=sys.stderr)


def _read(name: str) -> bytes:
    """FILE's bytes (`-`: standard input), at most relay.cli_files.MAX_INPUT_BYTES."""
    try:
        return read_bounded(Path(name), "relay silence import")
    except OSError as exc:
        raise RelayError(f"silence import: cannot read {name}: {exc.strerror}") from None
    except InputError as exc:
        raise RelayError(
            f"silence import: {name if name != '-' else 'standard input'} is {exc}"
        ) from None


def _items(data: bytes) -> Sequence[Any]:
    """The silences of a listing: `silence list -o json`'s array, GET /v1/silences' object
    (`{"silences": [...]}`), or one silence (GET /v1/silences/ID's)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError("", f"not JSON ({exc})") from None
    if isinstance(value, dict) and "silences" in value:
        value = value["silences"]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InputError("", "expected a JSON array of silences, as `relay silence list -o json`")
    if len(value) > MAX_IMPORT_SILENCES:
        more = f"{len(value):,} silences, more than one import takes ({MAX_IMPORT_SILENCES:,})"
        raise InputError("", f"{more}; split the file")
    return value


def _planned(items: Sequence[Any], now: float, *, force: bool = False) -> Plan:
    """The silences `items` hold, checked; InputError at the first that is wrong, its place
    in the field (`[3].ends_at`)."""
    silences: list[Silence] = []
    ended: list[str] = []
    for i, item in enumerate(items):
        try:
            silence = _silence(item, now, force=force)
        except InputError as exc:
            raise InputError(field_path("", i, *filter(None, [exc.field])), exc.message) from None
        if silence is None:
            ended.append(f"[{i}]" + (f" {item['id']}" if isinstance(item.get("id"), str) else ""))
        else:
            silences.append(silence)
    return Plan(silences, ended)


def _silence(item: Any, now: float, *, force: bool) -> Silence | None:
    """One item's silence, with its id unless `force`; None if it has ended by `now`."""
    from relay.silences.shapes import (  # noqa: PLC0415
        SILENCE_FIELDS,
        UNKNOWN_SILENCE_FIELD,
        parse_time,
        silence_from,
    )

    if not isinstance(item, Mapping):
        raise InputError("", "expected a silence (a JSON object)")
    if stray := sorted(set(item) - {*SILENCE_FIELDS, *SHOWN_FIELDS}):
        raise InputError(stray[0], UNKNOWN_SILENCE_FIELD)
    ident = item.get("id")
    if ident is not None and not (isinstance(ident, str) and RELAY_ID.fullmatch(ident)):
        raise InputError("id", "not a relay silence id (sil_ and 16 hex digits); leave it out")
    if "ends_at" in item and parse_time(item["ends_at"], "ends_at") <= now:
        return None
    created = item.get("created_at")  # kept: listed in the order they were, among the others
    created_at = None if created is None else parse_time(created, "created_at")
    return silence_from(item, now, None if force else ident, created_at)


async def _add_all(store: Any, silences: list[Silence]) -> list[bool]:
    """Add `silences`, AT_ONCE at a time; for each, whether it was added (not there yet)."""
    added: list[bool] = []
    for start in range(0, len(silences), AT_ONCE):
        chunk = silences[start : start + AT_ONCE]
        added += await asyncio.gather(*(store.add_silence(s) for s in chunk))
    return added
