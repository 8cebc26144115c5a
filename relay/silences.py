"""Silences: parse matchers, decide what a silence mutes (pure functions, time passed in)."""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import itertools
import logging
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import regex

from relay.errors import InputError, StoreUnavailable, did_you_mean
from relay.logs import CountedLines
from relay.model import (
    EVENT_STATUSES,
    EVENTS,
    FAILURE_STATUSES,
    KNOWN_STATUSES,
    RAW_STATUS_MAP,
    SILENCE_MATCHERS,
    Silence,
    SilencePage,
    iso,
    normalise_status,
    to_utc,
)

log = logging.getLogger("relay.silences")

MAX_VALUES = 100
MAX_TEXT = 1000
# a config's rule and channel names (Config.names), that silences' matchers are checked against
ConfigNames = tuple[Collection[str], Collection[str]]
RELOAD_S = 0.25  # how stale a running relay's silences may be (`relay silence add` waits it out)
_RELOAD = "reload"  # the key of the failed reloads in a SilenceCache's CountedLines
YEAR_10000 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1  # none shown from
# the last epoch second a float holds in year 9999: its last microseconds round up to YEAR_10000
LAST_INSTANT = math.nextafter(YEAR_10000, 0.0)


def parse_matchers(raw: Any) -> dict[str, tuple[str, ...]]:
    """Matchers from JSON/CLI input: each key a string or a list of strings; at least one key."""
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(
            "matchers", f"expected an object with any of {', '.join(SILENCE_MATCHERS)}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if key not in SILENCE_MATCHERS:
            raise InputError(
                f"matchers.{key}", f"unknown matcher; use {', '.join(SILENCE_MATCHERS)}"
            )
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
            raise InputError(
                f"matchers.{key}",
                f"expected a string or a non-empty list of at most {MAX_VALUES} strings",
            )
        if not all(isinstance(v, str) and v and len(v) <= MAX_TEXT for v in values):
            raise InputError(
                f"matchers.{key}", f"expected non-empty strings of at most {MAX_TEXT} characters"
            )
        if key == "event" and (unknown := [v for v in values if v not in EVENTS]):
            raise InputError(
                "matchers.event", f"unknown event {unknown[0]!r}; use one of {', '.join(EVENTS)}"
            )
        out[key] = tuple(values)
    return out


def cli_matchers(words: Sequence[str], flags: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Matchers from the command line, amtool's way: `task=billing/*` words (a bare word is
    a rule name, as amtool's is an alertname; `alertname=` means `rule=`) beside `--task`-style
    flags. relay's matchers are globs compared for equality: `!=`, `=~` and `!~` are refused."""
    out: dict[str, list[str]] = {key: list(values) for key, values in flags.items() if values}
    for word in _matcher_words(words):
        if any(op in word for op in ("!=", "=~", "!~")):
            raise InputError(
                "matchers",
                f"{word!r}: only key=value matchers (globs), e.g. task=billing/*; "
                "relay has no negative or regex silence matchers",
            )
        key, eq, value = word.partition("=")
        if not eq:
            key, value = "rule", word
        key = "rule" if key.strip() == "alertname" else key.strip()
        if key not in SILENCE_MATCHERS:  # `=` was `matchers.: unknown matcher`
            hint = did_you_mean(key, SILENCE_MATCHERS, quoted=True)
            what = f"unknown matcher {key!r}{hint}" if key else "no matcher name"
            raise InputError("matchers", f"{word!r}: {what}; {_WORD_FORM}")
        out.setdefault(key, []).append(_unquoted(value.strip(), word))
    if not any(out.values()):  # `add $(...)` that came back empty: the API's "expected an
        # object with any of ..." said nothing of words or flags (amtool: no matchers specified)
        raise InputError("matchers", f"none given; {_WORD_FORM}, or the flag (--task ...)")
    return out


_WORD_FORM = f"expected name=value (e.g. task=billing/*), name one of {', '.join(SILENCE_MATCHERS)}"


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unquoted(value: str, word: str) -> str:
    """A matcher's value as amtool reads it: `"a\\"b"` is `a"b` (`silence list` prints each
    value so); single quotes around it are dropped, as before. A double quote not closed, or
    closed but not opened (`task="billing/*`), is refused, as amtool refuses it: it was dropped,
    and the silence made for a value not written."""
    if _QUOTED.fullmatch(value):
        return _ESCAPE.sub(r"\1", value[1:-1])
    if value.startswith('"') or value.endswith('"'):
        raise InputError("matchers", f"{word!r}: unbalanced quotes")
    return value.strip("'")


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


_GROUP = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")*')  # one matcher of a `{...}` group


def _matcher_words(words: Sequence[str]) -> Iterator[str]:
    """The words, with each `{task="a", rule="b"}` (a matcher as Prometheus writes it, which
    amtool takes) split into its matchers; commas within quotes stay in their value."""
    for word in words:
        text = word.strip()
        if not text.startswith("{") and not text.endswith("}"):
            yield word
            continue
        if not (text.startswith("{") and text.endswith("}")):
            raise InputError("matchers", f'{word!r}: unclosed {{...}}; write {{task="x"}}')
        inner, pos = text[1:-1], 0
        while pos <= len(inner):
            part = _GROUP.match(inner, pos)
            end = part.end() if part else pos
            if end < len(inner) and inner[end] != ",":
                raise InputError("matchers", f"{word!r}: unbalanced quotes")
            if inner[pos:end].strip():
                yield inner[pos:end]
            pos = end + 1


@dataclass(frozen=True)
class Filter:
    """One matcher of a silence listing, as Alertmanager's `GET /silences?filter=`: `rule="x"`
    fits a silence with x among its rule values (a silence without a rule matcher has the
    value ""), `=~` one whose value matches the regex whole; `!=` and `!~` the others."""

    key: str
    op: str
    value: str
    pattern: regex.Pattern[str] | None = None  # of =~ and !~

    def fits(self, silence: Silence, deadline: float) -> bool:
        """Whether it fits `silence`; InputError once the regexes of a listing have matched
        past `deadline` (time.monotonic): `(a|a)+b` backtracks for hours on 40 letters, and a
        listing runs on the event loop (Python's `re` has no timeout; Alertmanager's RE2 needs
        none, as it never backtracks)."""
        values = silence.matchers.get(self.key) or ("",)
        if self.pattern is None:
            found = self.value in values
        else:
            found = any(self._matches(value, deadline) for value in values)
        return found != self.op.startswith("!")

    def _matches(self, value: str, deadline: float) -> bool:
        assert self.pattern is not None
        try:
            left = max(deadline - time.monotonic(), 0.001)
            return self.pattern.fullmatch(value, timeout=left) is not None
        except TimeoutError:
            raise InputError(
                "filter",
                f"{self.key}{self.op}{self.value[:40]!r}: the regular expression takes over"
                f" {REGEX_BUDGET_S:g} s to match the silences; write one that backtracks less",
            ) from None


_FILTER = re.compile(r"\s*([^=!~]*?)\s*(=~|!~|!=|=)(.*)", re.DOTALL)


def parse_filters(words: Sequence[str], field: str = "filter") -> list[Filter]:
    """Listing filters, amtool's way: `rule=x`, `tag=~"env:.*"`, `task!=a`, `{rule="x",
    task!~"b.*"}`, a bare word a rule name (`alertname` means `rule`)."""
    try:
        return [_filter(word, field) for word in _matcher_words(words)]
    except InputError as exc:
        raise InputError(field, exc.message) from None


def _filter(word: str, field: str) -> Filter:
    if not word.strip():  # not the rule "" (a slip, `?filter=`): Alertmanager's 400 too
        raise InputError(field, 'an empty matcher; expected name=value, e.g. rule="x"')
    found = _FILTER.fullmatch(word)
    key, op, value = found.groups() if found else ("rule", "=", word)
    key = "rule" if key == "alertname" else key
    if key not in SILENCE_MATCHERS:
        hint = did_you_mean(key, SILENCE_MATCHERS, quoted=True)
        what = f"unknown matcher {key!r}{hint}" if key else "no matcher name"
        raise InputError(
            field,
            f'{word!r}: {what}; expected name=value, !=, =~ or !~ (e.g. tag=~"env:.*"),'
            f" name one of {', '.join(SILENCE_MATCHERS)}",
        )
    value = _unquoted(value.strip(), word)
    if len(value) > MAX_TEXT:
        raise InputError(field, f"{word[:40]!r}...: at most {MAX_TEXT} characters")
    if "~" not in op:
        return Filter(key, op, value)
    try:
        return Filter(key, op, value, regex.compile(value))
    except (regex.error, OverflowError, RecursionError) as exc:  # a{9999999999}, ((((...))))
        raise InputError(field, f"{word!r}: not a regular expression ({exc})") from None


def parse_limit(value: str) -> int:
    """A page's size: a number from 1 to 10,000."""
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10_000:  # not ²
        raise InputError("limit", "expected a number from 1 to 10000")
    return int(value)


@dataclass(frozen=True)
class SilenceListing:
    """Which silences `find_silences` gives, in start order: those every filter fits, the
    expired ones too (`expired` "also") or alone ("only"), up to `limit` (None: all), after
    the silence `after` names (the last of the page before)."""

    filters: tuple[Filter, ...] = ()
    expired: str = "no"
    limit: int | None = None
    after: str | None = None

    def keeps(self, silence: Silence, now: float, deadline: float) -> bool:
        if self.expired == "only" and silence.state(now) != "expired":
            return False
        return all(one.fits(silence, deadline) for one in self.filters)


def silence_listing(
    words: Sequence[str],
    *,
    expired: str = "no",
    limit: str | None = None,
    after: str | None = None,
    field: str = "filter",
) -> SilenceListing:
    """A SilenceListing from the API's parameters or the CLI's words and flags: `words` the
    matchers (parse_filters; `field` names them in an error), `limit` as written."""
    return SilenceListing(
        filters=tuple(parse_filters(words, field)),
        expired=expired,
        limit=None if limit is None else parse_limit(limit),
        after=after,
    )


class SilenceReads(Protocol):
    """The reads of the store that `find_silences` uses (Store's)."""

    async def silences(
        self, now: float, *, include_expired: bool = False, page: SilencePage | None = None
    ) -> list[Silence]: ...

    async def silence(self, silence_id: str) -> Silence | None: ...


PAGE = 1000  # silences read at a time by find_silences
# How long the `=~`/`!~` filters of one listing may take to match, together: a plain regex
# over 60,000 silences takes ~0.1 s
REGEX_BUDGET_S = 1.0


async def find_silences(store: SilenceReads, listing: SilenceListing, now: float) -> list[Silence]:
    """The silences `listing` asks for, read PAGE at a time and filtered here (a filter over
    60,000 expired ones holds only those that fit); the pages of `after` go on without a gap
    or a repeat, silences starting at the same time included."""
    after = await _cursor(store, listing.after)
    deadline = time.monotonic() + REGEX_BUDGET_S  # for all its regexes' matching together
    found: list[Silence] = []
    while listing.limit is None or len(found) < listing.limit:
        read = await store.silences(
            now, include_expired=listing.expired != "no", page=SilencePage(after, PAGE)
        )
        found += [silence for silence in read if listing.keeps(silence, now, deadline)]
        if len(read) < PAGE:
            break
        after = (read[-1].created_at, read[-1].id)
    return found[: listing.limit]


async def _cursor(store: SilenceReads, ident: str | None) -> tuple[float, str] | None:
    if ident is None:
        return None
    found = await store.silence(ident)
    if found is None:
        raise InputError("after", "no silence with this id (or deleted by retention)")
    return found.created_at, found.id


def matcher_warnings(matchers: Mapping[str, Sequence[str]], names: ConfigNames | None) -> list[str]:
    """What a silence's matchers name that the config does not (its rule and channel names;
    None: not known, unchecked) and the statuses relay does not know. Most likely a typo, and
    the silence would mute nothing by it; yet it is kept (the rule may come with the next
    reload, the status with a newer Trigger.dev), so these are warnings, the first `HINTS`
    with the nearest name known (a search over every name: 100 values against 2,000 rules
    held the event loop for a second)."""
    known: dict[str, Collection[str]] = {"status": _SILENCE_STATUSES}
    if names is not None:
        known.update(rule=names[0], channel=names[1])
    unknown = [
        (key, value)
        for key in SILENCE_MATCHERS
        if key in known
        for value in matchers.get(key, ())
        if not _is_known(key, value, known[key])
    ]
    return [
        _unknown_name(key, value, known[key] if n < HINTS else ())
        for n, (key, value) in enumerate(unknown)
    ]


HINTS = 3  # unknown names of one silence given the nearest known one


def _is_known(key: str, value: str, names: Collection[str]) -> bool:
    if key == "status":
        return value.lower() == "failure" or value.strip().upper() in names
    return value in names


def _unknown_name(key: str, value: str, names: Collection[str]) -> str:
    """The warning about matcher `key`'s unknown `value`, with the nearest of `names`."""
    wanted = value.strip().upper() if key == "status" else value
    hint = did_you_mean(wanted, names, quoted=True)
    if key == "status":
        what = f"is not a status relay knows{hint}; only a run sent with it fits"
        return f"matchers.status: {value!r} {what}"
    return f"matchers.{key}: {value!r} names no {key} of the config{hint}; nothing fits it"


_SILENCE_STATUSES = frozenset(
    KNOWN_STATUSES | frozenset(RAW_STATUS_MAP) | frozenset().union(*EVENT_STATUSES.values())
)


def new_silence(
    matchers: dict[str, tuple[str, ...]],
    *,
    ends_at: float,
    now: float,
    starts_at: float | None = None,
    comment: str = "",
    created_by: str = "",
) -> Silence:
    """A validated silence; InputError when its times make no sense."""
    start = now if starts_at is None else starts_at
    if ends_at <= now:  # first: without starts_at, "after starts_at" would name a field not sent
        raise InputError("ends_at", "must be in the future")
    if ends_at <= start:
        raise InputError("ends_at", "must be after starts_at")
    if ends_at >= YEAR_10000:  # `--start 9999-12-31 -d 2d`: listing it would fail for every silence
        raise InputError("ends_at", "time out of range (years 1-9999 in UTC)")
    if len(comment) > MAX_TEXT or len(created_by) > MAX_TEXT:
        raise InputError("comment", f"comment and created_by are limited to {MAX_TEXT} characters")
    for field, text in (("comment", comment), ("created_by", created_by)):
        if "\x00" in text:  # PostgreSQL text holds none: the answer and later reads would differ
            raise InputError(field, "must not contain a NUL character (\\u0000)")
    ident = "sil_" + secrets.token_hex(8)
    return Silence(ident, matchers, start, ends_at, now, comment, created_by)


def parse_time(value: Any, field: str) -> float:
    """Epoch seconds from an ISO-8601 string (Z or offset; naive means UTC). RFC 3339 (the
    OpenAPI `date-time`) also allows a lower-case `z`."""
    if not isinstance(value, str):
        raise InputError(field, "expected an ISO-8601 time like 2026-11-28T18:00:00Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InputError(field, "expected an ISO-8601 time like 2026-11-28T18:00:00Z") from None
    try:
        seconds = to_utc(when).timestamp()  # in UTC's years 1-9999, so it can be shown again
    except ValueError:
        raise InputError(field, "time out of range (years 1-9999 in UTC)") from None
    return min(seconds, LAST_INSTANT)  # 9999-12-31T23:59:59.999999Z is year 9999's, not 10000's


def silence_view(silence: Silence, now: float) -> dict[str, Any]:
    """The public JSON face of a silence (API and `relay silence list --json`)."""

    def when(ts: float) -> str | None:  # one stored by an older relay may end past year 9999
        return iso(datetime.fromtimestamp(min(ts, LAST_INSTANT), UTC))

    return {
        "id": silence.id,
        "matchers": {k: list(v) for k, v in silence.matchers.items()},
        "starts_at": when(silence.starts_at),
        "ends_at": when(silence.ends_at),
        "created_at": when(silence.created_at),
        "comment": silence.comment,
        "created_by": silence.created_by,
        "state": silence.state(now),
    }


def fits(matchers: Mapping[str, tuple[str, ...]], fields: Mapping[str, Any]) -> bool:
    """Whether every matcher fits the fields (rule, channel, task, tags, status, event);
    matchers on a field that is absent from `fields` are ignored."""
    return all(
        _fits_one(key, wanted, fields)
        for key, wanted in matchers.items()
        if key in fields or (key == "tag" and "tags" in fields)
    )


def _fits_one(key: str, wanted: tuple[str, ...], fields: Mapping[str, Any]) -> bool:
    if key == "task":
        task = str(fields.get("task") or "")
        return any(fnmatch.fnmatchcase(task, pattern) for pattern in wanted)
    if key == "tag":
        tags = fields.get("tags") or ()
        return any(tag in tags for tag in wanted)
    if key == "status":
        statuses = _statuses(fields)
        return any(_status_fits(w, status) for w in wanted for status in statuses)
    return str(fields.get(key) or "") in wanted


def _statuses(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The run's normalised status, and its v3 name if a Realtime row gave one (`v3Status`)."""
    status = normalise_status(str(fields.get("status") or ""))
    v3 = fields.get("v3Status")
    return (status, v3) if isinstance(v3, str) and v3 else (status,)


def _status_fits(wanted: str, status: str) -> bool:
    """Whether a silence's status `wanted` names the run's normalised `status`: in any case, as
    a rule's status does (`new_issue` is an error event's NEW_ISSUE), or exactly as written (a
    status relay does not know is kept as it came)."""
    if wanted.lower() == "failure":
        return status in FAILURE_STATUSES
    return status in (normalise_status(wanted), normalise_status(wanted.strip().upper()))


def silenced_by(
    silences: Iterable[Silence] | SilenceIndex,
    now: float,
    *,
    rule: str,
    channel: str,
    task: str,
    tags: Sequence[str],
    status: str,
    event: str,
    v3_status: str | None = None,
) -> str | None:
    """The id of the first active silence that mutes this notification, else None. Of an
    index, only the silences that may fit it are looked at. `v3_status`: a Realtime row's
    status in the v3 vocabulary (Run.v3_status), which a silence's status fits as well."""
    if isinstance(silences, SilenceIndex) and not silences:
        return None  # the usual case, on each send and intake: nothing to look at, nothing built
    fields = {
        "rule": rule,
        "channel": channel,
        "task": task,
        "tags": tags,
        "status": status,
        "v3Status": v3_status,
        "event": event,
    }
    if isinstance(silences, SilenceIndex):
        silences = silences.candidates(fields)
    for silence in silences:
        if silence.state(now) == "active" and fits(silence.matchers, fields):
            return silence.id
    return None


class SilenceIndex:
    """The silences of one reload, each filed under one matcher a notification must fit (a
    tag it carries, the literal start of its task's glob, its rule, channel, status or event),
    the one fewest other silences share, so that a send looks only at the silences that may
    fit it: 1,000 silences each checked at every send cost ~2.5 ms a send, on the event loop,
    and 10,000 filed by rule or channel alone (a tag or a task beside it) took ingest from 700
    updates a second to 10. Silences with none of these (a task glob that starts with a
    wildcard) are looked at by every send. The first silence that mutes is the same as
    silenced_by over them all would find."""

    KEYS = ("tag", "task", "rule", "channel", "status", "event")

    def __init__(self, silences: Sequence[Silence]) -> None:
        self.silences = list(silences)
        self._filed: dict[str, dict[str, list[int]]] = {key: {} for key in self.KEYS}
        self._rest: list[int] = []  # positions of the silences filed under no matcher
        filings = [_filings(silence.matchers) for silence in self.silences]
        shared = Counter(
            (key, value) for filing in filings for key, values in filing for value in values
        )
        for n, filing in enumerate(filings):
            if not filing:
                self._rest.append(n)
                continue
            key, values = filing[0] if len(filing) == 1 else _least_shared(filing, shared)
            for value in values:
                self._filed[key].setdefault(value, []).append(n)
        self._starts = sorted({len(start) for start in self._filed["task"]})

    def __bool__(self) -> bool:
        return bool(self.silences)

    def candidates(self, fields: Mapping[str, Any]) -> list[Silence]:
        """The silences that may fit a notification of these fields (those of silenced_by),
        in their order."""
        task = str(fields.get("task") or "")
        wanted: dict[str, Collection[str]] = {
            "tag": {tag for tag in fields.get("tags") or () if isinstance(tag, str)},
            "task": [task[:n] for n in self._starts if n <= len(task)],
            "rule": [str(fields.get("rule") or "")],
            "channel": [str(fields.get("channel") or "")],
            "status": _statuses(fields),  # as _fits_one compares them: a blank one too
            "event": [str(fields.get("event") or "")],
        }
        found = [self._rest]
        found += (
            self._filed[key].get(value, []) for key, values in wanted.items() for value in values
        )
        # positions ascending in each list; a silence filed under two tags the run has, two
        # starts of its task, or both names of its status (FAILED, INTERRUPTED), is in two
        merged = heapq.merge(*(one for one in found if one))
        return [self.silences[n] for n, _ in itertools.groupby(merged)]


Filing = list[tuple[str, set[str]]]  # (matcher, the values a silence is filed under)


def _filings(matchers: Mapping[str, tuple[str, ...]]) -> Filing:
    """The matchers a silence may be filed under, with their values: a notification it fits
    has one of each (of a task's globs, their literal starts; none when one of them starts
    with a wildcard)."""
    return [
        (key, values)
        for key in SilenceIndex.KEYS
        if key in matchers and (values := _exact_values(key, matchers[key]))
    ]


def _least_shared(filing: Filing, shared: Counter[tuple[str, str]]) -> tuple[str, set[str]]:
    """The matcher whose values the fewest silences are filed under (a tag of its own rather
    than the rule a thousand others name)."""
    return min(filing, key=lambda one: sum(shared[one[0], value] for value in one[1]))


_LITERAL_START = re.compile(r"[^*?\[]*")  # of a glob: what every task it matches starts with


def _exact_values(key: str, wanted: tuple[str, ...]) -> set[str]:
    """The values of field `key` that matcher values `wanted` fit (a status: normalised; a
    task: the starts of the globs, none if one may start with anything)."""
    if key == "task":
        starts = {_LITERAL_START.match(glob).group() for glob in wanted}  # type: ignore[union-attr]
        return set() if "" in starts else starts
    if key != "status":
        return set(wanted)
    values: set[str] = set()
    for one in wanted:
        if one.lower() == "failure":
            values.update(FAILURE_STATUSES)
        else:
            values.update((normalise_status(one), normalise_status(one.strip().upper())))
    return values


class SilenceCache:
    """The silences that may apply now, reloaded at most every `ttl_s` (another process, such as
    `relay silence add`, may have changed them) and at once after `invalidate()`.

    A reload the store cannot answer (its pool taken by CLI commands, a blip) keeps the
    silences last read, until the next reload: it raised into every delivery and intake in the
    meantime, and a delivery's rows then waited out their lease (5 min). Each silence still
    ends at its own time, as silenced_by checks it; only one added meanwhile is not seen yet.

    With `version` (Store.silences_version), a reload reads the silences again only when it
    moved: 8,000 read and compared again every `ttl_s` while nothing changed cost ~50 ms of
    CPU each, a fifth of a core. The ones kept still start and end at their own times.
    """

    def __init__(
        self,
        load: Callable[[float], Awaitable[list[Silence]]],
        ttl_s: float = RELOAD_S,
        *,
        version: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._load = load
        self._version = version
        self._version_read: int | None = None  # the version of _silences, None: not known
        self._ttl_s = ttl_s
        self._silences: list[Silence] = []
        self._index = SilenceIndex([])  # _silences, filed
        self._loaded_at: float | None = None  # None: read at the next call (invalidate)
        self._read = False  # whether _silences was ever read (they are kept if a reload fails)
        self._reading: asyncio.Future[None] | None = None  # the reload callers share
        self._generation = 0  # bumped by invalidate(): a reload begun before it is not kept
        self.reloads = 0  # reloads begun
        self.reads = 0  # reloads that read the silences (not only their version)
        self._lines = CountedLines()  # the failed reloads: their lines and counts

    async def current(self, now: float) -> list[Silence]:
        """The silences, reloaded when stale. Callers meanwhile share one reload: each
        delivery and intake started its own, and 1,000 silences parsed by each of 50
        channels' sends held the event loop for seconds (ingest's 202s waited)."""
        # a clock set back since the last read reads again too, not once it caught up
        if self._loaded_at is None or not 0 <= now - self._loaded_at < self._ttl_s:
            if self._reading is None:
                self.reloads += 1
                self._reading = asyncio.ensure_future(self._reload(now, self._generation))
                self._reading.add_done_callback(_retrieved)
            await asyncio.shield(self._reading)
        return self._silences

    async def index(self, now: float) -> SilenceIndex:
        """The silences of `current`, filed (at each reload) for a send to look only at those
        that may fit it."""
        await self.current(now)
        return self._index

    async def _reload(self, now: float, generation: int) -> None:
        try:
            silences = await self._read_changed(now, generation)
        except StoreUnavailable as exc:
            if not self._read:
                raise  # nothing to go on: not knowing the silences is not "none"
            self._tell_failed(exc)
            silences = self._silences
        else:
            self._tell_settled()
        finally:
            if generation == self._generation:
                self._reading = None
        if generation == self._generation:
            if silences is not self._silences and silences != self._silences:
                self._index = SilenceIndex(silences)  # filing 10,000 again: ~0.1 s
                self._silences = silences
            self._read, self._loaded_at = True, now

    async def _read_changed(self, now: float, generation: int) -> list[Silence]:
        """The silences, read again unless their version shows no change since the last read.
        The version is read first: a change committed between the two reads is read again at
        the next reload, never missed."""
        version = None if self._version is None else await self._version()
        if version is not None and version == self._version_read and self._read:
            return self._silences
        self.reads += 1
        silences = await self._load(now)
        if generation == self._generation:
            self._version_read = version
        return silences

    def _tell_failed(self, exc: StoreUnavailable) -> None:
        """A reload failed: said when it starts, then at most every LINE_EVERY_S with the
        failures since (a line a reload, every RELOAD_S, through a store outage)."""
        failures = self._lines.due(_RELOAD, until_settled=True)
        if failures is not None:
            extra = {"error": str(exc), "failures": failures}
            log.warning("silences not reloaded; the last read kept", extra=extra)

    def _tell_settled(self) -> None:
        failures = self._lines.settled(_RELOAD)
        if failures is not None:
            log.info("silences reloaded again", extra={"failures": failures})

    def invalidate(self) -> None:
        self._loaded_at = None
        self._version_read = None  # read the silences themselves, whatever their version
        self._reading = None  # a reload under way may predate the change: the next call reads
        self._generation += 1


def _retrieved(done: asyncio.Future[None]) -> None:
    """Mark a shared reload's failure seen, also when every caller was cancelled meanwhile."""
    if not done.cancelled():
        done.exception()
