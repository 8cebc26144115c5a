"""Regexes from operators (a rule's `task_regex`, a silence listing's `=~`), compiled by the
`regex` module, whose matches take a timeout (`re`'s cannot be stopped). Its compile writes
nested counted repeats out in full: `(?:(?:(?:a{100}){100}){100}){10}` took 5.5 s and 2.9 GB,
one more `{10}` would take all memory. So, as RE2 (Alertmanager's) refuses repeats that make its
program too large, a pattern whose nested repeat counts multiply past MAX_REPEATS is refused."""

from __future__ import annotations

import importlib
import re
from typing import Any

import regex

# re's own parser (private, no stubs): it reads a pattern as `re` does, without compiling it
_parser: Any = importlib.import_module("re._parser")
sre: Any = importlib.import_module("re._constants")
MAX_REPEATS = 10_000  # `(?:[a-z0-9]{1,63}\.){1,10}` is 630; a{100}{100} 10,000 compiles in ms
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


class PatternError(ValueError):
    """The pattern is not a regex, or is one too large to compile; the message says which."""


def compile_regex(source: str) -> regex.Pattern[str]:
    """`source` compiled by `regex`, PatternError when `re` cannot read it (in `re`'s words,
    as relay's regexes are documented as Python's) or it repeats too much."""
    try:
        parsed = _parser.parse(source)
    except re.error as exc:
        raise PatternError(f"{exc.msg} at position {exc.pos}") from None
    except (OverflowError, RecursionError) as exc:  # a{99999999999}, ((((...))))
        raise PatternError(str(exc)) from None
    if _repeats(parsed) > MAX_REPEATS:
        raise PatternError(f"its nested repeats multiply past {MAX_REPEATS:,}; write a smaller one")
    try:
        return regex.compile(source)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise PatternError(str(exc)) from None


def repeats_nothing(source: str) -> bool:
    """Whether `source` (a valid pattern) has no repeat at all (`^etl-`, `^(billing|pay)-`):
    a search for it tries each position a bounded number of ways, so `re` may run it with no
    timeout, at a ninth of the cost of `regex` with one (0.1 µs against 0.9 per run and rule)."""
    return _repeats(_parser.parse(source), counted=False) == 1


def _repeats(items: Any, *, counted: bool = True) -> int:
    """How many times the most repeated part of `items` (a parsed pattern) is written out:
    counted repeats multiplied as they nest (an open one, `a{2,}`, by its least count)."""
    worst = 1
    for op, av in items:
        if op in _REPEATS:
            low, high, sub = av
            count = low if high == sre.MAXREPEAT else high
            worst = max(worst, max(count, 1) * _repeats(sub, counted=counted) if counted else 2)
        else:
            worst = max([worst, *(_repeats(sub, counted=counted) for sub in _children(op, av))])
    return worst


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-patterns of a parsed item that is not a repeat."""
    if op is sre.SUBPATTERN:
        return [av[-1]]
    if op is sre.BRANCH:
        return list(av[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op is sre.GROUPREF_EXISTS:
        return [branch for branch in av[1:] if branch is not None]
    return []
