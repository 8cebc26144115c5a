"""The fields of a run object as templates, `when:` expressions and `group_by` read them, and
the misspellings of them `relay check` warns of: `{{ run.taskIdentifer }}` renders empty for
every run, and `when: run.costInCent > 100` never matches, without an error. Metadata is
free-form and a Realtime row keeps columns relay does not list: only a name close to a known
field (or a match key's name for one) is taken for a misspelling."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from jinja2 import nodes

from relay.model import Run
from relay.statuses import STATUS_FLAGS

# `match` (and silence) keys written where the run's field was meant: the run is read as JSON,
# where they are spelt otherwise
RUN_FIELD_OF_MATCH_KEY = {
    "task": "taskIdentifier",
    "tag": "tags",
    "cost_cents": "costInCents",
    "base_cost_cents": "baseCostInCents",
    "duration_ms": "durationMs",
    "is_test": "isTest",
}

# the fields of a run object (SPEC §2, and the SDK's beside them: TRIGGER.md §1)
RUN_FIELDS = frozenset(Run.model_fields) | set(STATUS_FLAGS) | {
    "version", "batchId", "friendlyId", "depth", "triggerFunction", "attemptCount",
    "schedule", "relatedRuns", "environment", "project", "v3Status",
    "env",  # runs.list's {id, name}, kept beside the `environment` read from it
    # a run from Trigger.dev's alert webhooks (TRIGGER.md §3.2) keeps the alert's other parts
    "alert", "organization", "machine", "dashboardUrl", "isOutOfMemoryError",
}  # fmt: skip
# what only a deployment or error-group event's "run" carries (TRIGGER.md §3.2)
EVENT_FIELDS = frozenset({"deployment", "tasks", "git", "vercel", "classification", "task"})
# `task` is the alert webhook run's task (TRIGGER.md §3.2: alert.run.failed, and the legacy
# body's fileName); alone, it is the match key's name for taskIdentifier
ALERT_TASK_FIELDS = frozenset(
    {"id", "filePath", "fileName", "exportName", "version", "sdkVersion", "cliVersion"}
)


def meant_field(name: str, known: frozenset[str] = RUN_FIELDS) -> str | None:
    """The field of `known` that `name`, no field of a run, was most likely meant for: a match
    key's name for one, or a close spelling; None when `name` is one, or none is close."""
    if name in known:
        return None
    if name in RUN_FIELD_OF_MATCH_KEY:
        return RUN_FIELD_OF_MATCH_KEY[name]
    if name in EVENT_FIELDS:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def misread_run_fields(tree: nodes.Node) -> Iterator[tuple[str, int, str]]:
    """(read, line, meant) for each `run.NAME` or `run["NAME"]` of a template's or expression's
    tree that reads no field of a run, where one is close (meant_field): `run.taskIdentifer`,
    `run.taskIdentifier`. A digest's runs are read so too, in the body of a loop over them, by
    the name it gives each (`{% for r in group.runs %}`: `r.taskIdentifer`), and a run passed
    to a macro of the same template, by its parameter's name (`{{ item(run) }}`, `{% macro
    item(r) %}`). `run.task` reads the alert webhook's task; dict methods (`run.get(...)`,
    `run.items()`) are no fields."""
    yield from _misread(tree.find_all((nodes.Getattr, nodes.Getitem)), "run")
    holding = {"run"}  # the names that hold a run
    for loop in tree.find_all(nodes.For):
        if _over_runs(loop) and isinstance(loop.target, nodes.Name):
            yield from _misread(_reads(loop.body), loop.target.name)
            holding.add(loop.target.name)
    for macro in tree.find_all(nodes.Macro):
        for param in sorted(_run_params(tree, macro, holding) - {"run"}):  # `run`: read above
            yield from _misread(_reads(macro.body), param)


def _reads(body: list[nodes.Node]) -> Iterator[nodes.Node]:
    return (n for top in body for n in (top, *top.find_all(nodes.Expr)))


def _run_params(tree: nodes.Node, macro: nodes.Macro, holding: set[str]) -> set[str]:
    """The parameters of `macro` that a call of it in `tree` gives a run (a name of
    `holding`), by position or by keyword."""
    params = [arg.name for arg in macro.args]
    given: set[str] = set()
    for call in tree.find_all(nodes.Call):
        if not (isinstance(call.node, nodes.Name) and call.node.name == macro.name):
            continue
        passed = [*zip(params, call.args, strict=False)]
        passed += [(kw.key, kw.value) for kw in call.kwargs if kw.key in params]
        given |= {p for p, v in passed if isinstance(v, nodes.Name) and v.name in holding}
    return given


def _misread(found: Iterator[nodes.Node], var: str) -> Iterator[tuple[str, int, str]]:
    for node in found:
        name = _run_key(node, var)
        meant = None if name is None or hasattr(dict, name) or name == "task" else meant_field(name)
        if name is not None and meant is not None:
            yield f"{var}.{name}", node.lineno, f"{var}.{meant}"


def _over_runs(loop: nodes.For) -> bool:
    """Whether `loop` goes over a digest's runs: `group.runs`, sliced or filtered
    (`group.runs[:10]|sort`)."""
    source = loop.iter
    while isinstance(source, nodes.Getitem | nodes.Filter) and source.node is not None:
        source = source.node
    group = getattr(source, "node", None)
    of_group = isinstance(group, nodes.Name) and group.name == "group"
    return of_group and getattr(source, "attr", None) == "runs"


def _run_key(node: nodes.Node, var: str) -> str | None:
    """The key `var.NAME` or `var["NAME"]` reads; None for another node."""
    target = getattr(node, "node", None)
    if not (isinstance(target, nodes.Name) and target.name == var):
        return None
    if isinstance(node, nodes.Getattr):
        return str(node.attr)
    if not isinstance(node, nodes.Getitem):
        return None
    arg = getattr(node, "arg", None)
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None
