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
of holding the event loop (and every channel) for minutes. The checks themselves, and the
filters wrapped with them, are relay.sandbox_guards.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
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
    duration,
    fingerprint,
    money,
    mrkdwn,
    stack,
    status_emoji,
    tojson,
    truncate_chars,
    web_url,
)
from relay.render_limits import (
    MAX_VALUE_CHARS,
    OutputTooLarge,
    brief,
    charge,
    check_deadline,
    check_weight,
    loop_budget,
    refund,
)
from relay.sandbox_guards import (
    bounded_range,
    check_binop,
    check_name,
    check_str_method,
    checked_result,
    guard_filters,
)
from relay.unknowns import MissingIsNone, is_none, is_none_or_missing, pass_unknowns

_LOOP_BUDGET = "_loop_budget"  # the filter every `for` loop's iterable goes through


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
        check_binop(operator, left, right)
        return checked_result(super().call_binop(context, operator, left, right))

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals as one dict, not Jinja's ChainMap over the environment's: every
        render copies them key by key, a ChainMap's keys in Python. The environment's globals
        are all set before a template loads (Jinja asks for that: its templates see no later
        change reliably either)."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj: Any, attribute: str) -> Any:
        check_name(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_name(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is unsafe")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_deadline()
        text = getattr(__obj, "__self__", None)
        if isinstance(text, str):  # 'x'.ljust(10**9), 'x'.replace('x', big) and friends
            args = check_str_method(text, getattr(__obj, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(__obj, Macro) and not __obj._default_autoescape:
            # a macro of a file that does not autoescape wrote its arguments as they are: text,
            # which Jinja would mark safe in an autoescaping caller (an `*.html.j2` part)
            result = str(result) if isinstance(result, Markup) else result
        return checked_result(result)

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
        """A slice's copy, charged to the render (see checked_result)."""
        check_deadline()
        return checked_result(value)

    def concat_operands(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of `~`, checked: their text together within MAX_VALUE_CHARS."""
        check_deadline()
        charge(check_weight(*parts))
        return parts


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
    env.globals["range"] = bounded_range
    ours = (money, duration, truncate_chars, tojson, stack, status_emoji, mrkdwn, web_url, brief)
    env.filters.update({f.__name__: f for f in (*ours, fingerprint)})
    env.tests["none"] = is_none  # an unknown (JSON null) too
    guard_filters(env)
    pass_unknowns(env)
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


def refused_names(env: jinja2.Environment, ast: nodes.Node) -> list[tuple[int, str]]:
    """(line, why) of what `ast` (a template or a `when:` expression) names that can never
    work, in line order: a filter or test `env` lacks (unknown_filters) and each special
    `__name__` it reads (`run.__class__`, `x['__init__']`, `x|attr('__dict__')`), which the
    sandbox refuses on every render or run. A data key such as GraphQL's `__typename` is
    read (check_name lets a dict's own `__` key through), so it is not one."""
    return sorted(unknown_filters(env, ast) + _dunder_reads(ast))


def _dunder_reads(ast: nodes.Node) -> list[tuple[int, str]]:
    found = []
    for node in (ast, *ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter))):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            name = node.args[0].value if isinstance(node.args[0], nodes.Const) else None
        if isinstance(name, str) and _is_special(name):
            why = f"`{name}` is not allowed (the sandbox refuses `__` names)"
            found.append((node.lineno, why))
    return found


def _is_special(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def sandbox() -> SandboxedEnvironment:
    """A fresh hardened sandbox with relay's filters, as templates see it."""
    return environment()


def expression_sandbox() -> SandboxedEnvironment:
    """The sandbox of rule `when:` expressions: a missing field is none, keys before methods."""
    env = environment(cls=_ExpressionEnvironment)
    env.undefined = MissingIsNone
    env.tests["none"] = is_none_or_missing
    return env
