"""A rule's `when:` expression, compiled once in the expression sandbox: names it cannot read,
unknown filters and `__` attributes refused at load (each would make the rule silently never
match; relay.sandbox.refused_names, as for templates); at run time it reads the run under the
render time budget, and one that raises is logged, told to WhenFailures (counted in /metrics)
and does not match."""

from __future__ import annotations

import logging
from collections.abc import Callable

from jinja2 import Environment, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from relay.model import Run
from relay.render_limits import RENDER_BUDGET_S, time_budget
from relay.rule_filters import Predicate
from relay.run_fields import misread_run_fields
from relay.sandbox import expression_sandbox, refused_names
from relay.unknowns import with_unknowns

log = logging.getLogger("relay.rules")
WHEN_NAMES = ("run", "payload", "output", "metadata", "error")  # what `when:` can read


class WhenFailures:
    """Where a rule's `when:` that raised (and so did not match) is told, besides the log:
    `observe` (the rule's name) is set by the service to count it in /metrics, as Prometheus
    counts its rule evaluation failures; unset (relay test, relay check), nothing more."""

    def __init__(self) -> None:
        self.observe: Callable[[str], None] | None = None

    def __call__(self, rule: str) -> None:
        if self.observe is not None:
            self.observe(rule)


def when_predicate(name: str, source: str, failed: WhenFailures) -> Predicate | str:
    """Rule `name`'s `when:` as a predicate, or why it is not a valid expression."""
    try:
        return _compiled(name, source, failed)
    except (TemplateError, SecurityError) as exc:
        return _template_error(exc)


def _compiled(name: str, source: str, failed: WhenFailures) -> Predicate:
    env = expression_sandbox()
    expr = Parser(env, source, state="variable").parse_expression()
    unknown = _unknown_names(env, expr)
    if unknown:
        known = ", ".join(WHEN_NAMES)
        raise TemplateError(f"unknown name `{unknown[0]}` (an expression can read {known})")
    for _, why in refused_names(env, expr)[:1]:  # Jinja would wait to run them: no match ever
        raise TemplateError(why)
    expression = env.compile_expression(source, undefined_to_none=True)

    def check(run: Run) -> bool:
        try:
            data = with_unknowns(run.as_dict())  # an alert's cost: no error, nor a false 0
            with time_budget(RENDER_BUDGET_S):  # as a render: never a stalled intake
                return bool(expression(run=data, **{k: data.get(k) for k in WHEN_NAMES[1:]}))
        except Exception as exc:
            log.warning(
                "rule `when` failed; treating as no match",
                extra={"rule": name, "run_id": run.id, "error": type(exc).__name__},
            )
            failed(name)
            return False

    return check


def _unknown_names(env: Environment, expr: nodes.Expr) -> list[str]:
    """Names the expression reads that are neither in WHEN_NAMES nor Jinja globals: a typo
    there would make the rule silently never match."""
    tree = nodes.Template([nodes.Output([expr], lineno=1)], lineno=1)
    tree.set_environment(env)
    used = meta.find_undeclared_variables(tree)
    return sorted(used - set(WHEN_NAMES) - set(env.globals))


def when_misreads(source: str) -> list[tuple[str, str]]:
    """(field, the field meant) for each misspelt run field a valid `when:` reads
    (relay.run_fields): valid, and it reads nothing, so the rule most likely never matches."""
    try:
        expr = Parser(expression_sandbox(), source, state="variable").parse_expression()
    except TemplateError:
        return []  # not valid: a problem of its own
    return list(dict.fromkeys((read, meant) for read, _, meant in misread_run_fields(expr)))


def _template_error(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    message = getattr(exc, "message", None) or type(exc).__name__
    return f"invalid expression: {message}" + (f" (line {line})" if line else "")
