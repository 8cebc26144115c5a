"""The rule engine: compile the rule list once, then decide per run update (pure functions).

A rule fires on the update that first satisfies it, once per run (the store remembers which
rules fired). Rules are tried in order and the first match wins unless it says `continue: true`.
A rule with `update_on_recovery` also owes its channels a recovery (template `recovered`) when a
run it fired for later moves into COMPLETED.
Candidate rules are indexed by (event, status, isTest, whether the update carries a cost and
duration) and by the tags a rule requires, so a run is only tried against rules it could match:
a cost or duration threshold never matches an alert webhook's run, which carries neither. Rules
filtered on cost, duration, task or metadata alone are still tried one by one.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser

from relay.config import MatchConfig, RuleConfig, TagMatch, Threshold
from relay.errors import Problem
from relay.grouping import MISSING, lookup
from relay.model import (
    FAILURE_STATUSES,
    Decision,
    Match,
    Run,
    RunState,
    Timing,
    normalise_status,
)
from relay.render_limits import RENDER_BUDGET_S, time_budget
from relay.sandbox import expression_sandbox, unknown_filters
from relay.windows import InhibitRule, NamedTimeInterval

log = logging.getLogger("relay.rules")
Predicate = Callable[[Run], bool]
DEFAULT_TEMPLATE = "run"
RECOVERY_TEMPLATE = "recovered"
RECOVERED_STATUS = "COMPLETED"
MERGED_TAG_SETS = 1000  # tag sets whose candidates one (event, status, isTest) keeps merged
# The template of a rule without `template:`, by the event it matches.
EVENT_TEMPLATES = {
    "run": DEFAULT_TEMPLATE,
    "deployment.failed": "deployment_failed",
    "deployment.success": "deployment_success",
    "error": "error",
}


@dataclass(frozen=True)
class CompiledRule:
    index: int
    name: str
    event: str
    statuses: frozenset[str] | None
    predicates: tuple[Predicate, ...]
    notify: tuple[str, ...]
    template: str
    continue_: bool
    group_by: tuple[str, ...] | None = None
    timing: Timing | None = None
    mute_windows: tuple[NamedTimeInterval, ...] = ()
    active_windows: tuple[NamedTimeInterval, ...] | None = None
    update_on_recovery: bool = False
    recover_to: tuple[str, ...] = ()  # told of a recovery: notify, less send_resolved false
    # what a run must have for the rule to match (checked by the index, before the predicates)
    is_test: bool | None = None
    needs_tags: frozenset[str] | None = None  # a run without any of these cannot matchs
    # a threshold on cost or duration: a run whose update carries neither (an alert webhook's,
    # Run.measured) cannot match, whatever the bound, as a missing metadata path equals nothing
    needs_measures: bool = False

    def time_muted(self, now: float) -> str | None:
        """Why a notification of this rule is muted at `now` by its time intervals, or None."""
        for window in self.mute_windows:
            if window.contains(now):
                return f"time_interval:{window.name}"
        if self.active_windows is not None and not any(
            w.contains(now) for w in self.active_windows
        ):
            return "time_interval:outside " + ",".join(w.name for w in self.active_windows)
        return None

    def matches(self, run: Run) -> bool:
        for predicate in self.predicates:  # noqa: SIM110 - a loop: cheaper than all(genexpr)
            if not predicate(run):
                return False
        return True


@dataclass(frozen=True)
class _Candidates:
    """The rules that may match runs of one (event, status, isTest): `always` in order, and
    those that need a tag, by that tag (a run without it cannot match them)."""

    always: tuple[CompiledRule, ...]
    by_tag: dict[str, tuple[CompiledRule, ...]]
    # the merged, ordered candidates by the indexed tags a run has (one sort per tag set)
    merged: dict[frozenset[str], tuple[CompiledRule, ...]] = field(default_factory=dict)

    def for_tags(self, tags: list[str]) -> tuple[CompiledRule, ...]:
        if not self.by_tag:
            return self.always
        indexed = frozenset(tag for tag in tags if tag in self.by_tag)
        if not indexed:
            return self.always
        found = self.merged.get(indexed)
        if found is None:
            extra = {r.index: r for tag in indexed for r in self.by_tag[tag]}
            found = tuple(sorted((*self.always, *extra.values()), key=lambda r: r.index))
            if len(self.merged) < MERGED_TAG_SETS:
                self.merged[indexed] = found
        return found


class WhenFailures:
    """Where a rule's `when:` that raised (and so did not match) is told, besides the log:
    `observe` (the rule's name) is set by the service to count it in /metrics, as Prometheus
    counts its rule evaluation failures; unset (relay test, relay check), nothing more."""

    def __init__(self) -> None:
        self.observe: Callable[[str], None] | None = None

    def __call__(self, rule: str) -> None:
        if self.observe is not None:
            self.observe(rule)


class RuleSet:
    """Compiled rules with an (event, status) index."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        inhibit_rules: Sequence[InhibitRule] = (),
        when_failures: WhenFailures | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.when_failures = when_failures or WhenFailures()
        self.by_name = {rule.name: rule for rule in self.rules}
        self.inhibit_rules = tuple(inhibit_rules)
        self.has_windows = any(r.mute_windows or r.active_windows is not None for r in rules)
        self._index: dict[tuple[str, str, str | None, bool | None, bool], _Candidates] = {}

    def candidates(self, run: Run) -> tuple[CompiledRule, ...]:
        """The rules worth evaluating for `run`, in order: indexed by (event, status, isTest),
        then by tag, so a thousand rules cost about what the few that may match cost."""
        key = (run.event, run.status, run.v3_status, run.isTest, run.measured)
        found = self._index.get(key)
        if found is None:
            names = (run.status,) if run.v3_status is None else (run.status, run.v3_status)
            found = _index_rules(self.rules, run.event, names, run.isTest, run.measured)
            if len(self._index) < 10_000:  # unknown statuses are few; bound it anyway
                self._index[key] = found
        return found.for_tags(run.tags)

    def time_muted(self, rule: str, now: float) -> str | None:
        """Why rule `rule`'s notifications are muted at `now` by its time intervals, or None
        (also for a rule a reload removed)."""
        found = self.by_name.get(rule)
        return None if found is None else found.time_muted(now)

    def group_interval_of(self, rule: str) -> float | None:
        """Rule `rule`'s group_interval in seconds, or None (not a digest rule, or removed)."""
        found = self.by_name.get(rule)
        return None if found is None or found.timing is None else found.timing.group_interval_s

    def timings_changed_since(self, old: RuleSet) -> dict[str, Timing]:
        """The digest rules of both rule sets whose group_wait or group_interval this one
        changed, with their new timing (a reload re-times their waiting digests)."""
        changed = {}
        for name, rule in self.by_name.items():
            was = old.by_name.get(name)
            if rule.timing is None or was is None or was.timing is None:
                continue
            if _windows(rule.timing) != _windows(was.timing):
                changed[name] = rule.timing
        return changed

    def template_of(self, rule: str, channel: str, event: str) -> str | None:
        """The template rule `rule` renders for `channel` and `event` now, or None when no
        rule of that name notifies it of that event any more (a reload removed the rule or
        the channel, or made it match another event: its template is for that one's body)."""
        found = self.by_name.get(rule)
        if found is None or found.event != event or channel not in found.notify:
            return None
        return found.template

    def evaluate(self, run: Run) -> list[CompiledRule]:
        """Rules that match `run`, in order, honouring first-match-wins and `continue`."""
        out = []
        for rule in self.candidates(run):
            if rule.matches(run):
                out.append(rule)
                if not rule.continue_:
                    break
        return out

    def decide(self, run: Run, previous: RunState | None) -> Decision:
        """The new state of the run and the notifications this update owes."""
        new_ms = run.updated_at_ms
        if previous is not None and _is_stale(new_ms, previous.updated_at_ms):
            return Decision(previous, stale=True)
        fired = previous.fired if previous is not None else frozenset()
        matched = [r for r in self.evaluate(run) if r.name not in fired]
        cost, duration = _measures(run, previous)
        state = RunState(
            updated_at_ms=new_ms if new_ms is not None else _keep_ms(previous),
            status=run.status,
            fired=fired | {r.name for r in matched},
            cost_cents=cost,
            duration_ms=duration,
        )
        matches = tuple(
            Match(r.name, ch, r.template, group_by=r.group_by, timing=r.timing)
            for r in matched
            for ch in r.notify
        )
        return Decision(state, matches + self.recoveries(run, previous))

    def recoveries(self, run: Run, previous: RunState | None) -> tuple[Match, ...]:
        """Recoveries owed: `run` moved into COMPLETED, and rules with `update_on_recovery`
        fired for it before. The store enqueues one only where the firing one was not muted."""
        if (
            previous is None
            or run.event != "run"
            or run.status != RECOVERED_STATUS
            or previous.status == RECOVERED_STATUS
        ):
            return ()
        return tuple(
            Match(rule.name, channel, RECOVERY_TEMPLATE, recovery=True)
            for rule in self.rules
            if rule.update_on_recovery and rule.name in previous.fired
            for channel in rule.recover_to
        )


def _index_rules(
    rules: Sequence[CompiledRule],
    event: str,
    names: tuple[str, ...],
    is_test: bool | None,
    measured: bool,
) -> _Candidates:
    """The candidates for runs of one key; a rule's status fits by any of `names` (today's
    status and, for a Realtime row, its v3 name: Run.v3_status)."""
    fit = [
        r
        for r in rules
        if r.event == event
        and (r.statuses is None or not r.statuses.isdisjoint(names))
        and (r.is_test is None or r.is_test is is_test)
        and (measured or not r.needs_measures)
    ]
    by_tag: dict[str, list[CompiledRule]] = {}
    for rule in fit:
        for tag in rule.needs_tags or ():
            by_tag.setdefault(tag, []).append(rule)
    always = tuple(r for r in fit if r.needs_tags is None)
    return _Candidates(always, {tag: tuple(rs) for tag, rs in by_tag.items()})


def _needed_tags(spec: TagMatch | None) -> frozenset[str] | None:
    """Tags of which a matching run carries at least one: one of `tags.all`, or `tags.any`."""
    if spec is None:
        return None
    if spec.all:
        return frozenset({min(spec.all)})
    return frozenset(spec.any) if spec.any else None


def _is_stale(new_ms: int | None, old_ms: int | None) -> bool:
    return new_ms is not None and old_ms is not None and new_ms < old_ms


def _keep_ms(previous: RunState | None) -> int | None:
    return previous.updated_at_ms if previous is not None else None


def _measures(run: Run, previous: RunState | None) -> tuple[float, float]:
    """The cost and duration to remember: the run's, or when this update carries none (an
    alert webhook's run) those known before, which its 0s must not erase."""
    if run.measured or previous is None:
        return run.costInCents, run.durationMs
    return previous.cost_cents, previous.duration_ms


Locate = Callable[[tuple[str | int, ...]], str]


def compile_rules(
    rules: Sequence[RuleConfig],
    locate: Locate,
    *,
    time_intervals: Sequence[NamedTimeInterval] = (),
    inhibit_rules: Sequence[InhibitRule] = (),
    unresolved: frozenset[str] = frozenset(),
) -> tuple[RuleSet, list[Problem]]:
    """Compile every rule; problems (bad `when:` expressions) carry their file:line.
    `unresolved`: the channels told of no recovery (`send_resolved: false`)."""
    windows = {w.name: w for w in time_intervals}
    failures = WhenFailures()
    compiled, problems = [], []
    for i, rule in enumerate(rules):
        predicates = _match_predicates(rule.match)
        when = _when(i, rule, locate, failures)
        if isinstance(when, Problem):
            problems.append(when)
        elif when is not None:
            predicates.append(when)
        compiled.append(
            CompiledRule(
                index=i,
                name=rule.name,
                event=rule.match.event,
                statuses=statuses_of(rule.match.status),
                predicates=tuple(predicates),
                notify=tuple(rule.notify),
                template=rule_template(rule),
                continue_=rule.continue_,
                group_by=None if rule.group_by is None else tuple(rule.group_by),
                timing=_timing(rule),
                mute_windows=tuple(windows[n] for n in rule.mute_time_intervals or ()),
                active_windows=(  # `[]` restricts nothing, as in Alertmanager
                    tuple(windows[n] for n in rule.active_time_intervals)
                    if rule.active_time_intervals
                    else None
                ),
                update_on_recovery=rule.update_on_recovery,
                recover_to=tuple(ch for ch in rule.notify if ch not in unresolved),
                is_test=rule.match.is_test,
                needs_tags=_needed_tags(rule.match.tags),
                needs_measures=_has_threshold(rule.match),
            )
        )
    return RuleSet(compiled, inhibit_rules, failures), problems


def when_problems(rules: Mapping[int, RuleConfig], locate: Locate) -> list[Problem]:
    """The problems of the rules' `when:` expressions (rules by their index in the file)."""
    found = (_when(i, rule, locate) for i, rule in rules.items())
    return [when for when in found if isinstance(when, Problem)]


def rule_template(rule: RuleConfig) -> str:
    """The template a rule renders: its own, else the one of the event it matches."""
    return rule.template or EVENT_TEMPLATES.get(rule.match.event, DEFAULT_TEMPLATE)


def _when(
    i: int, rule: RuleConfig, locate: Locate, failed: WhenFailures | None = None
) -> Predicate | Problem | None:
    """Rule `i`'s `when:` as a predicate, the problem with it, or None when it has none."""
    if rule.when is None:
        return None
    try:
        return _when_predicate(rule.name, rule.when, failed or WhenFailures())
    except (TemplateError, SecurityError) as exc:
        return Problem(locate(("rules", i, "when")), f"rules[{i}].when", _template_error(exc))


def statuses_of(names: list[str] | None) -> frozenset[str] | None:
    """The statuses a rule's `status:` list stands for (`failure` expanded, names normalised):
    a name relay does not know stands for itself as written, since an incoming unknown status
    is kept as it came, and for its capitals, as known names are read in any case (a
    silence's status fits the same way)."""
    if names is None:
        return None
    out: set[str] = set()
    for name in names:
        if name.lower() == "failure":
            out |= FAILURE_STATUSES
        else:
            out |= {normalise_status(name), normalise_status(name.upper())}
    return frozenset(out)


def passes_filters(match: MatchConfig, run: Run) -> bool:
    """Whether `run` passes the filters of `match` besides its event and status."""
    if not run.measured and _has_threshold(match):
        return False
    return all(predicate(run) for predicate in _match_predicates(match))


def _has_threshold(match: MatchConfig) -> bool:
    return any(t is not None for t in (match.cost_cents, match.base_cost_cents, match.duration_ms))


def _match_predicates(match: MatchConfig) -> list[Predicate]:
    preds: list[Predicate] = []
    if match.task:
        pattern = re.compile("|".join(fnmatch.translate(g) for g in match.task))
        preds.append(lambda run: pattern.match(run.taskIdentifier) is not None)
    if match.task_regex is not None:
        regex = re.compile(match.task_regex)
        preds.append(lambda run: regex.search(run.taskIdentifier) is not None)
    if match.tags is not None:
        preds.append(_tags_predicate(match.tags))
    for name, threshold in (
        ("costInCents", match.cost_cents),
        ("baseCostInCents", match.base_cost_cents),
        ("durationMs", match.duration_ms),
    ):
        if threshold is not None:
            preds.append(_threshold_predicate(name, threshold))
    if match.is_test is not None:
        wanted = match.is_test
        preds.append(lambda run: run.isTest is wanted)
    for path, value in (match.metadata or {}).items():
        preds.append(_metadata_predicate(path, value))
    return preds


def _tags_predicate(spec: TagMatch) -> Predicate:
    any_ = frozenset(spec.any or ())
    all_ = frozenset(spec.all or ())
    none_ = frozenset(spec.none or ())

    def check(run: Run) -> bool:
        tags = set(run.tags)
        if any_ and not any_ & tags:
            return False
        return all_ <= tags and not none_ & tags

    return check


def _threshold_predicate(name: str, t: Threshold) -> Predicate:
    gt, gte, lt, lte = t.gt, t.gte, t.lt, t.lte  # read once: each is a pydantic attribute

    def check(run: Run) -> bool:
        value = float(getattr(run, name))
        return (
            (gt is None or value > gt)
            and (gte is None or value >= gte)
            and (lt is None or value < lt)
            and (lte is None or value <= lte)
        )

    return check


def _metadata_predicate(path: str, wanted: Any) -> Predicate:
    def check(run: Run) -> bool:
        value = lookup(run.metadata or {}, path)
        if value is MISSING:
            return False
        if isinstance(value, bool) or isinstance(wanted, bool):
            return value is wanted
        return bool(value == wanted)

    return check


WHEN_NAMES = ("run", "payload", "output", "metadata", "error")  # what `when:` can read


def _when_predicate(name: str, source: str, failed: WhenFailures) -> Predicate:
    env = expression_sandbox()
    expr = Parser(env, source, state="variable").parse_expression()
    unknown = _unknown_names(env, expr)
    if unknown:
        known = ", ".join(WHEN_NAMES)
        raise TemplateError(f"unknown name `{unknown[0]}` (an expression can read {known})")
    for _, why in unknown_filters(env, expr)[:1]:  # in `a if b else c|f`, Jinja waits to run it
        raise TemplateError(why)
    dunder = _dunder_names(expr)
    if dunder:
        raise TemplateError(f"`{dunder[0]}` is not allowed (the sandbox refuses `__` names)")
    expression = env.compile_expression(source, undefined_to_none=True)

    def check(run: Run) -> bool:
        try:
            data = run.as_dict()
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


def _dunder_names(expr: nodes.Expr) -> list[str]:
    """The `__` attributes the expression reads (`run.__class__`, `x['__init__']`,
    `x | attr('__dict__')`): the sandbox refuses each on every run, so the rule would
    silently never match."""
    found: list[object] = []
    for node in (expr, *expr.find_all(nodes.Expr)):  # find_all: the descendants only
        if isinstance(node, nodes.Getattr):
            found.append(node.attr)
        elif isinstance(node, nodes.Getitem):
            found.append(node.arg)
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            found.append(node.args[0])
    names = [n.value if isinstance(n, nodes.Const) else n for n in found]
    return [n for n in names if isinstance(n, str) and n.startswith("__")]


def _template_error(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    message = getattr(exc, "message", None) or type(exc).__name__
    return f"invalid expression: {message}" + (f" (line {line})" if line else "")


def _windows(timing: Timing) -> tuple[float, float]:
    return timing.group_wait_s, timing.group_interval_s


def _timing(rule: RuleConfig) -> Timing | None:
    if rule.group_by is None:
        return None
    default = Timing()
    return Timing(
        group_wait_s=default.group_wait_s if rule.group_wait is None else rule.group_wait,
        group_interval_s=(
            default.group_interval_s if rule.group_interval is None else rule.group_interval
        ),
        repeat_interval_s=(
            default.repeat_interval_s if rule.repeat_interval is None else rule.repeat_interval
        ),
    )
