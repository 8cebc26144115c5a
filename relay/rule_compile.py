"""Compiling the config's rule list into a RuleSet (relay.rules), once per load or reload:
each rule's predicates (relay.rule_filters, relay.rule_when), the templates it renders, its
digest timing and time intervals, what the candidate index needs of a run; and the problems
(a `when:` that is not a valid expression) with their file:line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from relay.config_rules import RuleConfig, TagMatch
from relay.errors import Problem
from relay.model import Timing
from relay.rule_filters import Predicate, has_threshold, match_predicates, statuses_of
from relay.rule_when import WhenFailures, when_predicate
from relay.rules import CompiledRule, RuleSet
from relay.windows import InhibitRule, NamedTimeInterval

DEFAULT_TEMPLATE = "run"
FAILED_TEMPLATE = "run_failed"  # a run rule's default for a failed run; shipped: extends `run`
# The template of a rule without `template:`, by the event it matches.
EVENT_TEMPLATES = {
    "run": DEFAULT_TEMPLATE,
    "deployment.failed": "deployment_failed",
    "deployment.success": "deployment_success",
    "error": "error",
}


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
        predicates = match_predicates(rule.match, rule.name, failures)
        when = _when(i, rule, locate, failures)
        if isinstance(when, Problem):
            problems.append(when)
        elif when is not None:
            predicates.append(when)
        compiled.append(
            CompiledRule(
                index=i,
                name=rule.name,
                events=frozenset(rule.match.event),
                statuses=statuses_of(rule.match.status),
                predicates=tuple(predicates),
                notify=tuple(rule.notify),
                templates={event: rule_template(rule, event) for event in rule.match.event},
                failed_template=rule_template(rule, "run", failed=True)
                if "run" in rule.match.event
                else "",
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
                needs_measures=has_threshold(rule.match),
            )
        )
    return RuleSet(compiled, inhibit_rules, failures), problems


def when_problems(rules: Mapping[int, RuleConfig], locate: Locate) -> list[Problem]:
    """The problems of the rules' `when:` expressions (rules by their index in the file)."""
    found = (_when(i, rule, locate) for i, rule in rules.items())
    return [when for when in found if isinstance(when, Problem)]


def rule_template(rule: RuleConfig, event: str, failed: bool = False) -> str:
    """The template a rule renders for an update of `event` (one it matches): its own, else
    that event's; for a run that failed (`failed`), `run_failed` (SPEC's
    `templates/<type>/run_failed.*`, the file an operator overrides to change failures only:
    it extends `run`, so an override of `run` changes both)."""
    if rule.template is None and failed and event == "run":
        return FAILED_TEMPLATE
    return rule.template or EVENT_TEMPLATES.get(event, DEFAULT_TEMPLATE)


def rule_templates(rule: RuleConfig) -> list[str]:
    """Every template a rule may render for an update (one per event it matches, and
    `run_failed`), in order, each once."""
    events = rule.match.event
    found = [rule_template(rule, event, failed) for event in events for failed in (False, True)]
    return list(dict.fromkeys(found))


def _when(
    i: int, rule: RuleConfig, locate: Locate, failed: WhenFailures | None = None
) -> Predicate | Problem | None:
    """Rule `i`'s `when:` as a predicate, the problem with it, or None when it has none."""
    if rule.when is None:
        return None
    found = when_predicate(rule.name, rule.when, failed or WhenFailures())
    if isinstance(found, str):
        return Problem(locate(("rules", i, "when")), f"rules[{i}].when", found)
    return found


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


def _needed_tags(spec: TagMatch | None) -> frozenset[str] | None:
    """Tags of which a matching run carries at least one: one of `tags.all`, or `tags.any`."""
    if spec is None:
        return None
    if spec.all:
        return frozenset({min(spec.all)})
    return frozenset(spec.any) if spec.any else None
