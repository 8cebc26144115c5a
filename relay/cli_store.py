"""The commands that read and change the store, not the config: `relay dlq`, `relay history`
and `relay migrate` (RELAY_STORE_URL; a running relay sees their changes), and how every store
command opens it (with_store: a short client; `relay silence` is relay.cli_silences)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from relay.errors import ConfigError, InputError, Problem, RelayError, did_you_mean
from relay.logs import one_line
from relay.settings import Settings

if TYPE_CHECKING:
    from relay.silences.matchers import ConfigNames
    from relay.store import HistoryQuery

# said past the limit, with where the others are (a page of history at a time): it said only
# "the newest shown", and an operator with 50,000 dead after an outage had no way to list them
_MORE_DEAD = (
    "more than {0} dead notifications: the newest {0} shown; all of them, a page at a time:"
    " relay history --state dead --limit 10000 (then --before the last id)"
)
_MADE_FOR_IT = "a new one holds {0}; a relay serve on another store does not see {1}"


def check_named_config(settings: Settings, path: Path | None) -> None:
    """These commands read the store, not the config (`silence add` only its names, for its
    warnings); but a config file named (--config, else RELAY_CONFIG) that is not there or
    cannot be read is an error, as for `relay serve`: a mistyped path is not passed over.
    Opened only, not parsed: a look at the store needs no valid config, nor YAML's import."""
    target = path or (settings.config if settings.config_explicit else None)
    if target is None:
        return
    try:
        target.open("rb").close()
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        reason = "config file not found" if missing else f"cannot read config: {exc.strerror}"
        raise ConfigError([Problem(str(target), "", reason)]) from None


def config_names(
    settings: Settings, args: argparse.Namespace
) -> tuple[ConfigNames | None, list[str]]:
    """The rule and channel names of the config (`--config`, else RELAY_CONFIG) for a
    command's warnings, None without a file; and a warning if the file is there but could not
    be read for them, so an operator who named it does not take the silence for "all names
    fine"."""
    from relay.configure import written_names  # noqa: PLC0415

    try:
        return written_names(settings, getattr(args, "config", None)), []
    except ConfigError as exc:
        more = len(exc.problems) - 1
        rest = f" (and {more} more; `relay check` lists them)" if more else ""
        return None, [f"rule and channel names not checked: {exc.problems[0]}{rest}"]


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    """The newest dead notifications, `--limit` of them (GET /v1/dlq's 1000 unless given)."""
    from relay.history import DLQ_LISTED, dead_letter_views, failure  # noqa: PLC0415
    from relay.silences.listing import parse_limit  # noqa: PLC0415

    try:
        limit = DLQ_LISTED if args.limit is None else parse_limit(args.limit)
    except InputError as exc:  # refused before the store is opened, as history's --limit
        raise RelayError(f"dlq list: {exc}") from None
    rows = asyncio.run(reading(settings, lambda s: s.dead_letters(limit + 1)))
    views = dead_letter_views(rows[:limit])
    if len(rows) > limit:  # said on stderr: stdout stays the list (or JSON) alone
        print(_MORE_DEAD.format(limit), file=sys.stderr)
    if said_whole(views, as_json=wants_json(args), none="no dead notifications"):
        return 0
    rows_shown = [
        [
            *(v[k] for k in ("id", "run_id", "rule", "channel")),
            str(v["attempts"]),
            _digest_cell(v["digest"]),
            failure(v["reason"], v["error"]),
        ]
        for v in views
    ]
    head = ["ID", "RUN", "RULE", "CHANNEL", "ATTEMPTS", "DIGEST", "REASON"]
    print_table(head, rows_shown, right={4})
    return 0


def _digest_cell(digest: dict[str, Any] | None) -> str:
    """A dead letter's DIGEST: the digest that carried it and how many runs the list shows
    of it (`dgs_… (3 runs)`), or `-` for a message of its own."""
    return "-" if digest is None else f"{digest['id']} ({digest['notifications']} runs)"


def said_whole(views: list[Any], *, as_json: bool, none: str) -> bool:
    """Whether `views` are said without a table: as JSON, or as `none` when there are none."""
    if as_json:
        print(orjson.dumps(views, option=orjson.OPT_INDENT_2).decode())
    elif not views:
        print(none)
    return as_json or not views


def wants_json(args: argparse.Namespace) -> bool:
    """Whether a listing is asked for as JSON: `--json`, or amtool's `-o json`."""
    return bool(args.json or args.output == "json")


def print_table(head: list[str], rows: list[list[str]], right: Collection[int] = ()) -> None:
    """`rows` under `head` in columns as wide as their longest cell (an error group's run id is
    ~90 characters, a notification id 28), two spaces apart; the last column is not padded.
    Cells are escaped (relay.logs.one_line): run data steers no terminal, starts no line."""
    cells = [[one_line(cell) for cell in row] for row in [head, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head) - 1)]
    for row in cells:
        padded = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        print("  ".join([*padded, row[-1]]).rstrip())


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay every dead notification (--all) or the ids given (amtool's `expire ID ...` way:
    `relay dlq replay $(...)`); 1 if an id names no dead one (the others are still replayed)."""
    from relay.history import NARROWING, dead_query, digest_hint  # noqa: PLC0415

    ids: list[str] = args.ids
    narrow = {k: v for k in NARROWING if (v := getattr(args, k)) is not None}
    if narrow and not args.all:  # a usage error: ids given, the narrowing says nothing of them
        said = "--channel, --rule and --since narrow --all, not ids"
        print(f"relay dlq replay: error: {said}", file=sys.stderr)
        return 2
    if narrow:
        try:  # refused before the store is opened, as history's flags
            query = dead_query(narrow, time.time())
        except InputError as exc:
            raise RelayError(f"dlq replay: {exc}") from None
        moved = asyncio.run(with_store(settings, lambda s: _replay_narrowed(s, query)))
        print(f"replayed {moved} notification(s)")
        return 0
    moved, not_dead = asyncio.run(with_store(settings, lambda s: _replay(s, ids or None)))
    for ident in not_dead:
        hint = digest_hint([ident], "relay dlq list")
        print(f"no dead notification with id {ident}{hint}", file=sys.stderr)
    if moved or not not_dead:
        print(f"replayed {moved} notification(s)")
    return 1 if not_dead else 0


async def _replay(store: Any, ids: list[str] | None) -> tuple[int, list[str]]:
    """How many `store.replay(ids)` moved, and those of `ids` that were not dead."""
    found = [await store.get(ident) for ident in ids or []]
    not_dead = [i for i, n in zip(ids or [], found, strict=True) if n is None or n.state != "dead"]
    return await store.replay(ids, time.time()), not_dead


async def _replay_narrowed(store: Any, query: HistoryQuery) -> int:
    """Replay every dead notification `query` finds (relay.history.dead_ids)."""
    from relay.history import dead_ids  # noqa: PLC0415

    ids = await dead_ids(store, query)
    return int(await store.replay(ids, time.time())) if ids else 0


async def reading(settings: Settings, action: Callable[[Any], Any]) -> Any:
    """`with_store` for a command that only reads: SQLite is opened read-only (no writer, no
    test write), so it answers on a full disk, when an operator needs it most."""
    return await with_store(settings, action, read_only=True)


async def with_store(
    settings: Settings,
    action: Callable[[Any], Any],
    *,
    create: bool = False,
    read_only: bool = False,
    made_for: tuple[str, str] = ("this silence", "it"),
) -> Any:
    """`action(store)` on the store opened as a short client (PostgreSQL: one connection, no
    replica, no schema change). A store not there (a SQLite file, relay's tables) is made only
    when `create` (a silence before the first `relay serve`), and said so, with what it holds
    (`made_for`); another command says so and answers as from an empty store: a mistyped
    RELAY_STORE_URL made `relay dlq list` create an empty store (its directories, or tables)
    and say all was well."""
    from relay.errors import StoreMissing  # noqa: PLC0415
    from relay.store.opening import migrate, open_store, store_name  # noqa: PLC0415

    url = settings.store_url
    missing = _missing_file(url)
    if missing is None:
        try:
            opened = open_store(url, upgrade=False, read_only=read_only, client=True)
            return await _acting(opened, action)
        except StoreMissing:
            missing = store_name(url)
            if create:
                await migrate(url)
    if create:
        done = await _acting(open_store(url, upgrade=False, client=True), action)
        made = _MADE_FOR_IT.format(*made_for)
        print(f"note: no store was at {missing} (RELAY_STORE_URL): {made}", file=sys.stderr)
        return done
    note = f"note: no store at {missing} (RELAY_STORE_URL): nothing is stored there"
    print(note, file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="relay-empty-") as empty:
        return await _acting(open_store(f"sqlite:///{empty}/relay.db"), action)


async def _acting(store: Any, action: Callable[[Any], Any]) -> Any:
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def _missing_file(store_url: str) -> str | None:
    """The SQLite file `store_url` names, if it is not there."""
    from relay.store.opening import open_store  # noqa: PLC0415
    from relay.store.sqlite import SQLiteStore  # noqa: PLC0415

    store = open_store(store_url)
    if isinstance(store, SQLiteStore) and not store.path.exists():
        return str(store.path)
    return None


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from relay import history  # noqa: PLC0415
    from relay.history import event_view, explain, failure, notification_view  # noqa: PLC0415

    params = _history_params(args)
    now = time.time()
    one = params.pop("id", None)  # a notification's id: that one, whatever else was given

    async def fetch(store: Any) -> list[tuple[Any, list[dict[str, Any]]]]:
        rows = await history.find_history(store, params, now) if one is None else []
        if one is not None and (found := await store.get(one)) is not None:
            rows = [found]
        return [(n, await store.events(n.id)) for n in rows]

    try:
        history.history_query(params, now)  # refused before the store is opened (or said missing)
        found = asyncio.run(reading(settings, fetch))
    except InputError as exc:
        raise RelayError(f"history: {exc}") from None
    if one is not None and not found:  # as GET /v1/notifications/{id}'s 404
        hint = history.digest_id_note(one, "`relay history --rule RULE`")
        raise RelayError(f"history: no notification with id {one!r}{hint}")
    if wants_json(args):
        out = [
            {**notification_view(n), "why": explain(n), "events": [event_view(e) for e in ev]}
            for n, ev in found
        ]
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not found:
        print("no notifications")
        for warning in _unnamed(args, settings):
            print(f"warning: {warning}", file=sys.stderr)
    for n, events in found:
        view, kind = notification_view(n), n.run.get("event") or "run"  # as `relay test` heads it
        print(
            one_line(
                f"{n.id}  {view['created_at']}  {kind} {n.run_id}  rule {n.rule} → {n.channel}"
            )
        )
        print(one_line(f"    {explain(n)}"))
        for e in map(event_view, events):
            detail = f" {failure(e['reason'], e['detail'])}" if e["reason"] or e["detail"] else ""
            print(one_line(f"      {e['at']}  {e['kind']}  attempts={e['attempts']}{detail}"))
    return 0


def _history_params(args: argparse.Namespace) -> dict[str, str]:
    """The filters of `relay history`: its flags, and its ID, a notification's (`ntf_…`, as
    logs, `dlq list` and receivers' `webhook-id` name one; a digest's `dgs_…` is said to be
    none) kept as `id`, or a run's, as `--run` (the same id twice is no conflict). RelayError
    for a run given two ways, or a notification's id beside a filter it would not read."""
    from relay import history  # noqa: PLC0415

    params = {f: getattr(args, f) for f in history.PARAMS if getattr(args, f) is not None}
    ident = args.id
    if ident is None:
        return params
    if not ident.startswith(("ntf_", "dgs_")):
        if params.setdefault("run_id", ident) != ident:
            raise RelayError(f"history: run {ident!r} and --run {params['run_id']!r}: give one")
        return params
    if given := [f"--{k}" if k != "run_id" else "--run" for k in params if k != "limit"]:
        said = ", ".join(given)
        raise RelayError(f"history: {ident} is one notification; {said} would not apply to it")
    return {"id": ident}


def _unnamed(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The `--rule` and `--channel` of an empty history that the config does not name, with
    the nearest it does: `--rule prod-failure` answered "no notifications", read at 3 a.m. as
    "it never fired". Unchecked without a config file (its variables set or not), said so if
    the file is there but cannot be read for names."""
    asked = [(kind, getattr(args, kind)) for kind in ("rule", "channel") if getattr(args, kind)]
    if not asked:  # the config's compiler (YAML, Jinja) is not imported for a plain history
        return []
    names, unread = config_names(settings, args)
    if names is None:
        return unread
    known = {"rule": names[0], "channel": names[1]}
    return [
        f"--{kind} {value!r} names no {kind} of the config"
        f"{did_you_mean(value, known[kind], quoted=True)}"
        for kind, value in asked
        if value not in known[kind]
    ]


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from relay.store._schema_said import schema_words  # noqa: PLC0415
    from relay.store.opening import migrate  # noqa: PLC0415

    print(schema_words(*asyncio.run(migrate(settings.store_url))))
    return 0
