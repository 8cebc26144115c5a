"""The limits of a render (and of a rule's `when:`): the sizes a step may build, the characters
a render holds together, and its time. The sandbox (relay.sandbox, its checks in
relay.sandbox_guards) checks its steps against them; `time_budget` opens a render's account.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2.exceptions import SecurityError

from relay.filters import json_bytes, truncate_chars

MAX_SEQUENCE_LEN = 100_000  # `'a' * n`, `[x] * n`
MAX_INT_BITS = 128  # integer results of `*` and `**`
MAX_WIDTH = 100_000  # widths of format strings, padding methods and filters like center
# one rendered part: a webhook body carries the run whole (its error stack twice), so twice the
# largest run intake takes by default (server.max_body_bytes, 1 MiB) must fit, with room
MAX_OUTPUT_CHARS = 4_000_000
MAX_VALUE_CHARS = MAX_OUTPUT_CHARS  # one text (or list written out) a step may build
# all the texts and lists the steps of one render build together (a list slot counting as
# SLOT_CHARS): each step is capped, but a list of many capped ones filled ~1 GB in a second
MAX_BUILT_CHARS = 16 * MAX_OUTPUT_CHARS
SLOT_CHARS = 32  # a list item's pointer and, often, a new object of its own
RENDER_BUDGET_S = 1.0  # one notification, every part: the default templates take milliseconds
_DEADLINE: ContextVar[_Budget | None] = ContextVar("relay_render_deadline", default=None)
_BUILT: ContextVar[list[int] | None] = ContextVar("relay_render_built", default=None)


class LimitExceeded(SecurityError):
    """One of relay's own render limits: its words name the limit and never quote run data,
    so a failed render's reason may carry them."""


class OutputTooLarge(LimitExceeded):
    """A step would build a text (or a list to write out) past MAX_VALUE_CHARS."""


def weight(value: Any, limit: int = MAX_VALUE_CHARS, *, utf8: bool = False) -> int:
    """About the characters (`utf8`: bytes of UTF-8) `value` written out takes (each reference
    counted), counting stops once past `limit`: lists of references to one large text cost
    nothing to build."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str) and utf8 and not item.isascii():
            total += len(item[: limit + 1].encode())  # past the limit, no matter how far
        elif isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def check_weight(*values: Any, extra: int = 0) -> int:
    total = extra + sum(weight(v) for v in values)
    if total > MAX_VALUE_CHARS:
        raise OutputTooLarge(f"the result would exceed {MAX_VALUE_CHARS} characters")
    return total


def charge(chars: int) -> None:
    """Counts `chars` built against the render's MAX_BUILT_CHARS (inside time_budget)."""
    built = _BUILT.get()
    if built is None:
        return
    built[0] += chars
    if built[0] > MAX_BUILT_CHARS:
        raise OutputTooLarge(f"the render built more than {MAX_BUILT_CHARS} characters")


def refund(old: Any) -> None:
    """Takes back what `old` was charged, when the caller's reference is the last one (it is
    freed now): only what a render still holds adds up, not every text it ever built."""
    built = _BUILT.get()
    if built is None or sys.getrefcount(old) > _LAST_REF:
        return
    if isinstance(old, str | bytes):
        built[0] = max(0, built[0] - len(old))
    elif isinstance(old, list | tuple | dict | set | frozenset):
        built[0] = max(0, built[0] - SLOT_CHARS * len(old))


# sys.getrefcount(old) in refund when nothing else holds `old`: _Namespace.__setitem__'s
# local, refund's argument and getrefcount's own
_LAST_REF = 3


OMITTED = "[omitted]"  # what `brief` leaves of a value with no room at all
_BRIEF_MIN_CHARS = 40  # a share smaller than this is not worth a cut text: the value is omitted


def brief(value: Any, limit: int = 2_000) -> Any:
    """`value` in at most `limit` bytes of JSON (UTF-8; the `brief` filter): whole when it fits;
    else a text cut to fit, and a mapping or list with its small items whole and the room left
    shared by its large ones, each cut the same way (items past the room are left out). A digest
    lists each of its runs so: its body stays within the receiver's limit (and MAX_OUTPUT_CHARS,
    as a character takes at least a byte)."""
    for room in _rooms(value, limit):
        cut = _brief(value, room)
        if _fits(cut, limit):
            return cut
    return OMITTED


def _rooms(value: Any, limit: int) -> Iterator[int]:
    """The rooms `brief` tries: escapes, quotes and characters beyond ASCII (up to 4 bytes)
    write more than weighed. A value weighed as fitting but written longer is next cut to just
    below its weight: halved, a text of `limit` characters kept half of them, and one longer
    all but a few."""
    yield limit
    if limit // 2 < (weighed := _bytes(value, limit)) <= limit:
        yield weighed - 1
    yield from (limit // 2, limit // 4, limit // 8)


def _fits(value: Any, limit: int) -> bool:
    try:
        return len(json_bytes(value)) <= limit
    except (TypeError, ValueError):  # not JSON, e.g. an integer beyond 64 bits
        return False


def _bytes(value: Any, limit: int) -> int:
    return weight(value, limit, utf8=True)


def _brief(value: Any, room: int) -> Any:
    if _bytes(value, room) <= room:
        return value
    if room < _BRIEF_MIN_CHARS:
        return OMITTED
    if isinstance(value, str):
        return _cut_text(value, room - 2)  # its quotes
    if isinstance(value, Mapping):
        return dict(_brief_items(list(value.items()), room))
    if isinstance(value, list | tuple):
        return [item for _, item in _brief_items(list(enumerate(value)), room)]
    return OMITTED


def _cut_text(text: str, room: int) -> str:
    """`text` cut to at most `room` bytes of UTF-8, its end marker "…" (3 bytes) included."""
    fits = len(text[:room].encode()[: room - 3].decode(errors="ignore"))  # characters
    return truncate_chars(text, fits + 1)


def _brief_items(items: list[tuple[Any, Any]], room: int) -> list[tuple[Any, Any]]:
    """The small values whole, the large ones sharing equally what the small ones leave; in
    order, each that still has room."""
    small = max(room // 16, 16)
    whole = [_bytes(item, small) <= small for _, item in items]
    spent = sum(
        _bytes(key, room) + 6 + (_bytes(item, small) if fits else 0)
        for (key, item), fits in zip(items, whole, strict=True)
    )
    share = max(0, room - 2 - spent) // max(whole.count(False), 1)
    kept, left = [], room - 2
    for (key, item), fits in zip(items, whole, strict=True):
        value = item if fits else _brief(item, share)
        cost = _bytes(key, room) + _bytes(value, room) + 6
        if cost <= left:
            kept.append((key, value))
            left -= cost
    return kept


class RenderTimeout(LimitExceeded):
    """A render went past its time budget (see time_budget)."""


class _Budget:
    """A render's time: `seconds` of this thread's CPU (without `cpu`: of the wall clock, for
    the event loop's own try, which bounds how long the loop is held). The clock read at every
    step is the cheap monotonic one (a thread's CPU time costs four times as much); only once
    it passes `wall` is the CPU time looked at, and `wall` moved on by what is left. A render
    waiting for the interpreter lock (the event loop busy delivering) or for a core (a loaded
    machine) is not cut short for it: that gave the fallback for a template needing 50 ms."""

    __slots__ = ("cpu_start", "seconds", "wall")

    def __init__(self, seconds: float, cpu: bool) -> None:
        self.seconds = seconds
        self.cpu_start = time.thread_time() if cpu else None
        self.wall = time.monotonic() + seconds

    def spent(self) -> bool:
        if self.cpu_start is None:  # the wall clock alone
            return True
        left = self.seconds - (time.thread_time() - self.cpu_start)
        self.wall = time.monotonic() + left
        return left <= 0


class time_budget:  # lower case: used as a function, `with time_budget(s):`
    """Loops and calls of templates rendered inside raise RenderTimeout after `seconds` of
    this thread's CPU (`cpu=False`: of the wall clock), and the steps that build texts and lists
    OutputTooLarge past MAX_BUILT_CHARS together. (A class, not a @contextmanager generator:
    one is opened per notification, and the generator's machinery cost more than the rest.)"""

    __slots__ = ("_built", "_cpu", "_seconds", "_token")

    def __init__(self, seconds: float, *, cpu: bool = True) -> None:
        self._seconds, self._cpu = seconds, cpu

    def __enter__(self) -> None:
        self._token = _DEADLINE.set(_Budget(self._seconds, self._cpu))
        self._built = _BUILT.set([0])

    def __exit__(self, *exc: object) -> None:
        _BUILT.reset(self._built)
        _DEADLINE.reset(self._token)


def check_deadline() -> None:
    budget = _DEADLINE.get()
    if budget is not None and time.monotonic() > budget.wall and budget.spent():
        raise RenderTimeout("the render went past its time budget")


def loop_budget(iterable: Iterable[Any]) -> Iterable[Any]:
    return iterable if _DEADLINE.get() is None else _budgeted(iterable)


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every item: a body of a few large comparisons (`x in items`) takes milliseconds, so
    looking only every few hundred items let a loop run for a minute past the budget."""
    for item in iterable:
        check_deadline()
        yield item
