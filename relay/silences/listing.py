"""Listing silences: the filters of `GET /v1/silences` and `relay silence list` (amtool's
=, !=, =~, !~), pages and find_silences, which reads the store a page at a time."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import regex

from relay.errors import InputError, did_you_mean
from relay.model import SILENCE_MATCHERS, Silence, SilencePage
from relay.regexes import PatternError, compile_regex
from relay.silences.matchers import MAX_TEXT, matcher_words, unquoted


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
        return [_filter(word, field) for word in matcher_words(words)]
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
    value = unquoted(value.strip(), word)
    if len(value) > MAX_TEXT:
        raise InputError(field, f"{word[:40]!r}...: at most {MAX_TEXT} characters")
    if "~" not in op:
        return Filter(key, op, value)
    try:
        return Filter(key, op, value, compile_regex(value))
    except PatternError as exc:  # a{9999999999}, ((((...)))), (?:(?:a{100}){100}){100}
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
    the silence `after` names (the last of the page before); with `within_s` (amtool's
    `query --within`), only those ending within that long from now, or, expired, that ended
    within that long before now."""

    filters: tuple[Filter, ...] = ()
    expired: str = "no"
    limit: int | None = None
    after: str | None = None
    within_s: float | None = None

    def keeps(self, silence: Silence, now: float, deadline: float) -> bool:
        expired = silence.state(now) == "expired"
        if self.expired == "only" and not expired:
            return False
        if self.within_s is not None and not _ends_within(silence, now, self.within_s, expired):
            return False
        return all(one.fits(silence, deadline) for one in self.filters)


def _ends_within(silence: Silence, now: float, within_s: float, expired: bool) -> bool:
    if expired:
        return silence.ends_at >= now - within_s
    return silence.ends_at <= now + within_s


def silence_listing(
    words: Sequence[str],
    *,
    expired: str = "no",
    limit: str | None = None,
    after: str | None = None,
    field: str = "filter",
    within_s: float | None = None,
) -> SilenceListing:
    """A SilenceListing from the API's parameters or the CLI's words and flags: `words` the
    matchers (parse_filters; `field` names them in an error), `limit` as written."""
    return SilenceListing(
        filters=tuple(parse_filters(words, field)),
        expired=expired,
        limit=None if limit is None else parse_limit(limit),
        after=after,
        within_s=within_s,
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
