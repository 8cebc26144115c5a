"""What the sandbox (relay.sandbox) checks before a step runs, and Jinja's filters and tests
wrapped with those checks: `*`, `**`, `%`, `+`, str methods, format widths, replace, join,
indent, sum and fills refused when their result would pass the render limits
(relay.render_limits), every filter and test looking at the clock first, and what a step built
checked and charged to the render.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError

from relay.filters import as_text
from relay.render_limits import (
    MAX_INT_BITS,
    MAX_SEQUENCE_LEN,
    MAX_VALUE_CHARS,
    MAX_WIDTH,
    SLOT_CHARS,
    LimitExceeded,
    OutputTooLarge,
    charge,
    check_deadline,
    check_weight,
    weight,
)

_SEQUENCES = (str, bytes, list, tuple)
_WIDE_PERCENT = re.compile(r"%[-#0 +]*(?:\*|\d{6,})|%[-#0 +]*\d*\.(?:\*|\d{6,})")
_WIDE_BRACES = re.compile(r"\{[^{}]*:[^{}]*(?:\d{6,}|\{)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            check_weight(left, right)
    elif operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > MAX_INT_BITS:
            raise LimitExceeded(f"`**` result would exceed {MAX_INT_BITS} bits")
    elif operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and _is_int(count):
                if len(seq) * count > MAX_SEQUENCE_LEN:
                    raise LimitExceeded(f"`*` result would exceed {MAX_SEQUENCE_LEN} items")
                if count > 0 and weight(seq, MAX_VALUE_CHARS // count) * count > MAX_VALUE_CHARS:
                    raise OutputTooLarge(f"`*` result would exceed {MAX_VALUE_CHARS} characters")
                return
        if (
            _is_int(left)
            and _is_int(right)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
        ):
            raise LimitExceeded(f"`*` result would exceed {MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str) and _WIDE_PERCENT.search(left):
        raise LimitExceeded("format width too large")


def bounded_range(*args: Any) -> range:
    """range() in templates: past MAX_SEQUENCE_LEN items a LimitExceeded in relay's words, as
    `'a' * n` is, not Jinja's OverflowError (`{{ range(10**9) }}`)."""
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:  # more items than an index can count
        count = MAX_SEQUENCE_LEN + 1
    if count > MAX_SEQUENCE_LEN:
        raise LimitExceeded(f"range() would exceed {MAX_SEQUENCE_LEN} items")
    return numbers


def _check_int_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if any(_is_int(a) and abs(a) > MAX_WIDTH for a in (*args, *kwargs.values())):
        raise LimitExceeded(f"argument larger than {MAX_WIDTH}")


def _check_replace(text: str, old: Any, new: Any, count: Any = None) -> None:
    if not (isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return
    found = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    if len(text) + found * (len(new) - len(old)) > MAX_VALUE_CHARS:
        raise OutputTooLarge(f"replace would exceed {MAX_VALUE_CHARS} characters")


def _check_join(separator: Any, items: Any) -> list[Any] | Any:
    """`items` as a list when it is an iterable that join would write out (checked)."""
    if isinstance(items, str) or not isinstance(items, Iterable):
        return items
    items = list(items)
    gaps = max(len(items) - 1, 0) * len(as_text(separator))
    check_weight(items, extra=gaps)
    return items


def check_str_method(text: str, name: str, args: tuple[Any, ...], kw: Mapping[str, Any]) -> Any:
    """`args`, checked for the str methods that can build a large text from a small call."""
    _check_int_args(args, kw)
    if name == "replace":
        _check_replace(text, *args[:3], **kw)
    elif name == "join" and args:
        return (_check_join(text, args[0]), *args[1:])
    elif name == "expandtabs":
        size = next(iter((*args, *kw.values())), 8)
        if _is_int(size) and len(text) + text.count("\t") * size > MAX_VALUE_CHARS:
            raise OutputTooLarge(f"expandtabs would exceed {MAX_VALUE_CHARS} characters")
    return args


def check_name(obj: Any, name: Any) -> None:
    """No dunder names (unless a dict really has that key); no huge str.format widths."""
    if not isinstance(name, str):
        return
    if name.startswith("__") and not (isinstance(obj, dict) and name in obj):
        raise SecurityError(f"access to {name!r} is not allowed")
    if name in ("format", "format_map") and isinstance(obj, str) and _WIDE_BRACES.search(obj):
        raise LimitExceeded("format width too large")


def _width_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1
    fill = _fill_check(fn) if fn.__name__ in ("do_batch", "do_slice") else None

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(args[skip:], kwargs)
        if fill is not None:
            fill(args[skip - 1 :], kwargs)  # from the value on: the signature's own
        return fn(*args, **kwargs)

    return guarded


def _fill_check(fn: Callable[..., Any]) -> Callable[[tuple[Any, ...], Mapping[str, Any]], None]:
    """The check of batch's and slice's (value, count, fill_with): `count` copies of fill_with,
    the arguments given by position or by name (`linecount=`, `fill_with=`: the check missed
    them, and `|string` of such a batch built gigabytes). The signature is the filter's own,
    without the context Jinja passes some first."""
    signature = inspect.signature(fn)
    count_name = list(signature.parameters)[1]

    def check(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        try:
            named = signature.bind(*args, **kwargs).arguments
        except TypeError:  # the call fails as the filter's own
            return
        _check_fill(named.get(count_name), named.get("fill_with"))

    return check


def _check_fill(count: Any, fill_with: Any) -> None:
    if not _is_int(count) or count <= 0 or fill_with is None:
        return
    if weight(fill_with, MAX_VALUE_CHARS // count) * count > MAX_VALUE_CHARS:
        raise OutputTooLarge(f"the fill would exceed {MAX_VALUE_CHARS} characters")


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    check_binop("%", as_text(value), None)
    return as_text(value) % (kwargs or args)


class _Accumulator(list[Any]):
    """The `start=[]` of a `sum` of lists: `+` extends it in place, so adding up n lists costs
    their length, not n times it (Python's sum copies the total at each step)."""

    def __add__(self, other: Any) -> Any:
        if not isinstance(other, list):
            return list(self) + other  # the TypeError Python's sum would give
        self.extend(other)
        return self


def _sum_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`sum`, refusing to add up lists (or texts) past MAX_VALUE_CHARS, in linear time."""

    @functools.wraps(fn)
    def guarded(env: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if isinstance(iterable, list | tuple):
            check_weight(iterable)
        if type(start) is list:
            return list(fn(env, iterable, attribute, _Accumulator(start)))
        return fn(env, iterable, attribute, start)

    return guarded


def _result_checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (any filter), looking at the clock first as a call does, and refusing a text result
    past MAX_VALUE_CHARS: filters that escape or quote (e, tojson, urlencode ...) make a text a
    few times longer at most, so no loop can double a text until it fills the memory."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        return checked_result(fn(*args, **kwargs))

    return checked


def _clocked(fn: Any) -> Callable[..., Any]:
    """`fn` (a test: `x is in items` scans a large list), looking at the clock first."""

    @functools.wraps(fn)
    def clocked(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        return fn(*args, **kwargs)

    return clocked


def checked_result(value: Any) -> Any:
    """`value` (what a step built), within MAX_VALUE_CHARS and charged to the render."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_VALUE_CHARS:
            raise OutputTooLarge(f"a value of more than {MAX_VALUE_CHARS} characters")
        charge(len(value))
    elif isinstance(value, list | tuple | dict | set | frozenset):
        charge(SLOT_CHARS * len(value))
    return value


def _checked_replace(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(as_text(s), as_text(old), as_text(new), count)
        return fn(eval_ctx, s, old, new, count)

    return replace


def _checked_join(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def join(ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        if attribute is None:  # else the items are not written out whole
            value = _check_join(d, value)
        return fn(ctx, value, d, attribute)

    return join


def _checked_indent(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def indent(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        _check_int_args((width,), {})
        pad = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        if len(as_text(s)) + (as_text(s).count("\n") + 1) * pad > MAX_VALUE_CHARS:
            raise OutputTooLarge(f"indent would exceed {MAX_VALUE_CHARS} characters")
        return fn(s, width, *args, **kwargs)

    return indent


def guard_filters(env: jinja2.Environment) -> None:
    """`env`'s filters and tests, relay's own included, wrapped with the checks above."""
    for name in ("center", "batch", "slice", "wordwrap", "truncate"):
        env.filters[name] = _width_guarded(env.filters[name])
    env.filters["format"] = _format
    env.filters["sum"] = _sum_guarded(env.filters["sum"])
    env.filters["replace"] = _checked_replace(env.filters["replace"])
    env.filters["join"] = _checked_join(env.filters["join"])
    env.filters["indent"] = _checked_indent(env.filters["indent"])
    env.filters.update({name: _result_checked(f) for name, f in env.filters.items()})
    env.tests.update({name: _clocked(test) for name, test in env.tests.items()})
