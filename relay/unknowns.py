"""Values a run does not carry, as templates and `when:` expressions read them (relay.sandbox).

A missing field in a `when:` is none (`MissingIsNone`). A measure a run does not carry (an
alert webhook's cost and duration, Run.measured) is UNKNOWN in both, through with_unknowns:
empty and falsy, `none` and not `defined` (so `{% if run.durationMs is none %}` and
`run.durationMs|default('n/a')` both see it), a comparison with it false, and arithmetic and
the numeric filters (`round`, `int`, `abs`, `format` ...: pass_unknowns) give it back, so
`{{ (run.durationMs / 1000)|round(1) }}` renders empty instead of failing the template.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2 import ChainableUndefined, Undefined

from relay.model import MEASURES

# Jinja's builtin filters that compute with a number (the value or an argument): one raised on
# an unknown (`round`: TypeError; `int`, `float`, `format`, `filesizeformat`: "None is
# undefined"). `sum`, `max`, `min` add and compare, which an unknown already answers.
NUMERIC_FILTERS = ("abs", "filesizeformat", "float", "format", "int", "round")


class MissingIsNone(ChainableUndefined):
    """A missing field in a `when:` expression: falsy and chainable as in templates, and also
    none (`run.metadata.tier is none`, `== none`); ordering it (`> 5`) stays an error."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, Undefined)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = ChainableUndefined.__hash__  # defining __eq__ would unset it


class _Unknown(MissingIsNone):
    """A value the run does not carry (see the module's docstring): no error either where a
    missing field gives one: a comparison with it is false, as no threshold matches it
    (`run.durationMs > 1000` and `< 1000` both), and arithmetic with it stays unknown
    (`run.costInCents + run.baseCostInCents > 100`); JSON null (tojson)."""

    __slots__ = ()

    def _false(self, other: object) -> bool:
        return False

    def _unknown(self, *other: object) -> _Unknown:
        return self

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _unknown  # type: ignore[assignment]
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _unknown  # type: ignore[assignment]
    __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = __pos__ = _unknown  # type: ignore[assignment]


UNKNOWN = _Unknown()


def with_unknowns(run: dict[str, Any]) -> dict[str, Any]:
    """`run` (a run as JSON, Run.as_dict) with the MEASURES it does not carry (null) as
    UNKNOWN: `{% if run.durationMs > 60000 %}` in a template, or a `when:`, raised TypeError
    on every alert webhook's run (the fallback sent, the rule a failure)."""
    unknown = [key for key in MEASURES if key in run and run[key] is None]
    return {**run, **dict.fromkeys(unknown, UNKNOWN)} if unknown else run


def is_none(value: Any) -> bool:
    """The `none` test of templates: None, or a value the run does not carry (JSON null)."""
    return value is None or isinstance(value, _Unknown)


def is_none_or_missing(value: Any) -> bool:
    """The `none` test of `when:` expressions, where a missing field is none as well."""
    return value is None or isinstance(value, Undefined)


def pass_unknowns(env: jinja2.Environment) -> None:
    """`env`'s NUMERIC_FILTERS, giving UNKNOWN back when their value or an argument is one."""
    for name in NUMERIC_FILTERS:
        env.filters[name] = _unknown_through(env.filters[name])


def _unknown_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(fn)
    def passing(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, _Unknown) for a in (*args[skip:], *kwargs.values())):
            return UNKNOWN
        return fn(*args, **kwargs)

    return passing
