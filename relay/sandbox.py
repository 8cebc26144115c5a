"""The hardened Jinja sandbox shared by templates and rule `when:` expressions.

Beyond Jinja's own sandbox: dunders and unsafe attributes raise SecurityError; `*`, `**`, `%`,
str.format and padding refuse huge sizes (LimitExceeded, a SecurityError in relay's own words),
and so do the steps that build a large text or list out of small ones (`~`, `+`, replace, join,
indent, expandtabs, and writing a list out whole):
one such step cannot be stopped halfway, so it is refused before it runs when its result would
pass MAX_VALUE_CHARS. Inside `time_budget(s)` (the Renderer's renders) what the steps build
(texts, lists, slices) adds up, refused past MAX_BUILT_CHARS, and every `for` loop item,
call, filter, test, comparison and checked operator (`~`, `+`, `*`, `**`, `%`) looks at the
clock, so nested loops, runaway recursion or a loop of large steps raise RenderTimeout instead
of holding the event loop (and every channel) for minutes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import jinja2
from jinja2 import ChainableUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from jinja2.utils import Namespace
from markupsafe import Markup

from relay.filters import (
    as_text,
    duration,
    money,
    mrkdwn,
    stack,
    status_emoji,
    tojson,
    truncate_chars,
    web_url,
)
from relay.render_limits import (
    MAX_INT_BITS,
    MAX_SEQUENCE_LEN,
    MAX_VALUE_CHARS,
    MAX_WIDTH,
    SLOT_CHARS,
    LimitExceeded,
    OutputTooLarge,
    brief,
    charge,
    check_deadline,
    check_weight,
    loop_budget,
    refund,
    weight,
)

_LOOP_BUDGET = "_loop_budget"  # the filter every `for` loop's iterable goes through
_SEQUENCES = (str, bytes, list, tuple)
_WIDE_PERCENT = re.compile(r"%[-#0 +]*(?:\*|\d{6,})|%[-#0 +]*\d*\.(?:\*|\d{6,})")
_WIDE_BRACES = re.compile(r"\{[^{}]*:[^{}]*(?:\d{6,}|\{)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Namespace(Namespace):
    """namespace(): the value an attribute set replaces is refunded when nothing else holds it.
    `{% set ns.text = ns.text ~ line %}` over 2,000 runs or 1 MiB of metadata built its text
    once per line, and the sum passed MAX_BUILT_CHARS though it held one text at a time."""

    def __setitem__(self, name: str, value: Any) -> None:
        attrs = object.__getattribute__(self, "_Namespace__attrs")
        old = attrs.get(name)
        attrs[name] = value
        if old is not None:
            refund(old)


def _check_binop(operator: str, left: Any, right: Any) -> None:
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


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kw: Mapping[str, Any]) -> Any:
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


class _BudgetedLoops(CodeGenerator):
    """Compiles `{% for x in items %}` as `{% for x in items|_loop_budget %}`: a loop that
    makes no call (nested loops over data) still looks at the clock."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_BUDGET, [], [], None, None)
            loop.iter.set_lineno(loop.lineno)
        super().visit_Template(node, frame)

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        """`items[1:]` (Jinja slices without environment.getitem): the copy is charged."""
        if not isinstance(node.arg, nodes.Slice):
            return super().visit_Getitem(node, frame)
        self.write("environment.sliced(")
        super().visit_Getitem(node, frame)
        self.write(")")
        return None

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        """`a == b`, `x in items` (a scan of a large list): the result looks at the clock."""
        self.write("environment.clocked(")
        super().visit_Compare(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        """`a ~ b` as Jinja writes it, its operands checked by environment.concat_operands."""
        join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        self.write(f"{join}(environment.concat_operands((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _BudgetedLoops

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`+`, `*`, `**`, `%`: each looks at the clock, as a call does (checking the size of
        a large list takes time, so a loop of them could run far past the budget)."""
        check_deadline()
        _check_binop(operator, left, right)
        return _checked_result(super().call_binop(context, operator, left, right))

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one dict, not Jinja's ChainMap over the environment's: every
        render copies them key by key, a ChainMap's keys in Python. The environment's globals
        are all set before a template loads (Jinja asks for that: its templates see no later
        change reliably either)."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_name(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_name(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is unsafe")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_deadline()
        text = getattr(__obj, "__self__", None)
        if isinstance(text, str):  # 'x'.ljust(10**9), 'x'.replace('x', big) and friends
            args = _check_str_method(text, getattr(__obj, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(__obj, Macro) and not __obj._default_autoescape:
            # a macro of a file that does not autoescape wrote its arguments as they are: text,
            # which Jinja would mark safe in an autoescaping caller (an `*.html.j2` part)
            result = str(result) if isinstance(result, Markup) else result
        return _checked_result(result)

    def call_filter(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        """A filter called by another one (`map('string')`), per item: looks at the clock."""
        check_deadline()
        return super().call_filter(name, value, *args, **kwargs)

    def call_test(self, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        """A test called by a filter (`select('in', items)`), per item: looks at the clock."""
        check_deadline()
        return super().call_test(name, value, *args, **kwargs)

    @staticmethod
    def concat(chunks: Iterable[str]) -> str:
        """Jinja's join of a buffer (a macro's, a `{% set %}` block's, a `{% filter %}`'s ...),
        refused past MAX_VALUE_CHARS: `{% set v %}{{ v }}{{ v }}{% endset %}` in a loop."""
        parts, size = [], 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_VALUE_CHARS:
                raise OutputTooLarge(f"a text of more than {MAX_VALUE_CHARS} characters")
            parts.append(chunk)
        charge(size)
        return "".join(parts)

    @staticmethod
    def clocked(value: Any) -> Any:
        """`value` (a comparison's), once the render is seen to be within its time budget."""
        check_deadline()
        return value

    @staticmethod
    def sliced(value: Any) -> Any:
        """A slice's copy, charged to the render (see _checked_result)."""
        check_deadline()
        return _checked_result(value)

    def concat_operands(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of `~`, checked: their text together within MAX_VALUE_CHARS."""
        check_deadline()
        charge(check_weight(*parts))
        return parts


def _check_name(obj: Any, name: Any) -> None:
    """No dunder names (unless a dict really has that key); no huge str.format widths."""
    if not isinstance(name, str):
        return
    if name.startswith("__") and not (isinstance(obj, dict) and name in obj):
        raise SecurityError(f"access to {name!r} is not allowed")
    if name in ("format", "format_map") and isinstance(obj, str) and _WIDE_BRACES.search(obj):
        raise LimitExceeded("format width too large")


def _width_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(args[skip:], kwargs)
        if fn.__name__ in ("do_batch", "do_slice"):  # (value, count, fill_with): count copies
            _check_fill(*args[skip:], **kwargs)
        return fn(*args, **kwargs)

    return guarded


def _check_fill(count: Any = 0, fill_with: Any = None, **_: Any) -> None:
    if not _is_int(count) or count <= 0 or fill_with is None:
        return
    if weight(fill_with, MAX_VALUE_CHARS // count) * count > MAX_VALUE_CHARS:
        raise OutputTooLarge(f"the fill would exceed {MAX_VALUE_CHARS} characters")


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_binop("%", as_text(value), None)
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
        return _checked_result(fn(*args, **kwargs))

    return checked


def _clocked(fn: Any) -> Callable[..., Any]:
    """`fn` (a test: `x is in items` scans a large list), looking at the clock first."""

    @functools.wraps(fn)
    def clocked(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        return fn(*args, **kwargs)

    return clocked


def _checked_result(value: Any) -> Any:
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


class _MissingIsNone(ChainableUndefined):
    """A missing field in a `when:` expression: falsy and chainable as in templates, and also
    none (`run.metadata.tier is none`, `== none`); ordering it (`> 5`) stays an error."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, Undefined)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = ChainableUndefined.__hash__  # defining __eq__ would unset it


def _is_none(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


class _ExpressionEnvironment(_Environment):
    """`when:` reads the run as JSON: a key wins over a dict method of the same name, so
    `run.metadata.items` is the metadata's `items`, not dict.items."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


def environment(
    loader: jinja2.BaseLoader | None = None, cls: type[_Environment] = _Environment
) -> _Environment:
    env = cls(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html.j2", "htm.j2"], default=False),
        undefined=ChainableUndefined,
        keep_trailing_newline=True,
        cache_size=400,
        # a template change reaches a running relay through a reload (checked first, then a new
        # Renderer), never by a stat() of the file on every render
        auto_reload=False,
        # `{{ run.finishedAt }}` of a run not finished, `{{ dashboard_url }}` without a
        # project_ref: a message reads an empty place, not the word "None"
        finalize=_none_as_empty,
    )
    env.globals.pop("lipsum", None)  # a text generator with unbounded sizes; useless here
    env.globals["namespace"] = _Namespace
    for name in ("center", "batch", "slice", "wordwrap", "truncate"):
        env.filters[name] = _width_guarded(env.filters[name])
    ours = (money, duration, truncate_chars, tojson, stack, status_emoji, mrkdwn, web_url, brief)
    env.filters.update({f.__name__: f for f in ours}, format=_format)
    env.filters["sum"] = _sum_guarded(env.filters["sum"])
    env.filters["replace"] = _checked_replace(env.filters["replace"])
    env.filters["join"] = _checked_join(env.filters["join"])
    env.filters["indent"] = _checked_indent(env.filters["indent"])
    env.filters.update({name: _result_checked(f) for name, f in env.filters.items()})
    env.tests.update({name: _clocked(test) for name, test in env.tests.items()})
    env.filters[_LOOP_BUDGET] = loop_budget
    return env


def unknown_filters(env: jinja2.Environment, ast: nodes.Node) -> list[tuple[int, str]]:
    """(line, what) of each filter or test `ast` uses that `env` does not have. Jinja refuses
    one when it compiles, except inside an `if` (or `x if y`), where it waits for the line to
    run: a typo there (`|truncte(100)`) would pass `relay check` and give the fallback."""
    found = []
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        kind, known = (
            ("filter", env.filters) if isinstance(node, nodes.Filter) else ("test", env.tests)
        )
        if node.name not in known:
            found.append((node.lineno, f"No {kind} named {node.name!r}."))
    return found


def sandbox() -> SandboxedEnvironment:
    """A fresh hardened sandbox with relay's filters, as templates see it."""
    return environment()


def expression_sandbox() -> SandboxedEnvironment:
    """The sandbox of rule `when:` expressions: a missing field is none, keys before methods."""
    env = environment(cls=_ExpressionEnvironment)
    env.undefined = _MissingIsNone
    env.tests["none"] = _is_none
    return env
