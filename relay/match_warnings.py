"""Warnings about rules whose `match` never matches, a part of relay.config_warnings: a status
relay does not know or the event never carries, a filter on a key the event lacks, a rule below
a catch-all that stops."""

from __future__ import annotations

from relay.config_rules import MatchConfig, RuleConfig
from relay.errors import did_you_mean
from relay.model import Run
from relay.rule_compile import Locate
from relay.rule_filters import passes_filters, statuses_of
from relay.statuses import (
    EVENT_STATUSES,
    FAILURE_STATUSES,
    FINAL_STATUSES,
    KNOWN_STATUSES,
    RAW_STATUS_MAP,
)


def match_warnings(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """The warnings of rules that never match as written, in the order of the checks below."""
    return [
        *_unknown_statuses(rules, locate),
        *_never_matching(rules, locate),
        *_filtering_what_events_lack(rules, locate),
        *_shadowed(rules, locate),
        *_never_recovering(rules, locate),
    ]


_RUN_STATUSES = KNOWN_STATUSES | frozenset(RAW_STATUS_MAP) | FAILURE_STATUSES


def _unknown_statuses(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for a run rule's status relay does not know: most likely a typo (`FAILLED`),
    never matching; but Trigger.dev adds statuses, and incoming unknown ones are kept as they
    are, so a rule may name one before relay knows it, and it is matched as written."""
    out = []
    for i, rule in enumerate(rules):
        if "run" not in rule.match.event:
            out += _uncarried_statuses(rule, locate(("rules", i, "match", "status")), i)
            continue
        known = _RUN_STATUSES.union(*(EVENT_STATUSES.get(e, ()) for e in rule.match.event))
        for name in rule.match.status or ():
            status = name.strip().upper()
            if name.lower() == "failure" or status in known:
                continue
            hint = did_you_mean(status, KNOWN_STATUSES)
            out.append(
                f"{locate(('rules', i, 'match', 'status'))}: rules[{i}].match.status: {name!r}"
                f" is not a status relay knows{hint}; it matches only a run sent with it"
            )
    return out


def _uncarried_statuses(rule: RuleConfig, where: str, i: int) -> list[str]:
    """Warnings for each status of an event rule that its event never carries (`TIMEDOUT`
    beside `FAILED`): when none is carried, `_never_matching` says so for the whole rule."""
    carried = _carried(rule.match)
    wanted = statuses_of(rule.match.status)
    if carried is None or not wanted or not wanted & carried:
        return []
    out = []
    for name in rule.match.status or ():
        if (statuses_of([name]) or frozenset()) & carried:
            continue
        hint = did_you_mean(name.strip().upper(), carried)
        out.append(
            f"{where}: rules[{i}].match.status: {name!r} is not a status event"
            f" {' or '.join(rule.match.event)} carries{hint}; it never matches"
        )
    return out


def _never_matching(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules whose `status:` lists nothing their `event` can carry (`event: error`
    with `status: [failure]`): valid, and never firing."""
    out = []
    for i, rule in enumerate(rules):
        carried = _carried(rule.match)
        wanted = statuses_of(rule.match.status)
        if carried is not None and wanted is not None and not wanted & carried:
            out.append(
                f"{locate(('rules', i, 'match', 'status'))}: rules[{i}].match.status: event"
                f" {' or '.join(rule.match.event)} carries {', '.join(sorted(carried))}; this"
                " rule never fires"
            )
    return out


def _carried(match: MatchConfig) -> frozenset[str] | None:
    """The statuses the events of `match` carry, or None when one is `run` (any status)."""
    events = match.event
    return None if "run" in events else frozenset().union(*(EVENT_STATUSES[e] for e in events))


_NOT_IN_ALERTS = ("tags", "cost_cents", "base_cost_cents", "duration_ms", "is_test", "metadata")
# The match keys an event other than `run` has no value for: no alert webhook carries tags,
# cost, duration, metadata or a test flag, and a deployment has no task (its taskIdentifier
# is ""). A filter on them sees the event as a run without them.
_LACKED_KEYS = {
    "deployment.failed": ("task", "task_regex", *_NOT_IN_ALERTS),
    "deployment.success": ("task", "task_regex", *_NOT_IN_ALERTS),
    "error": _NOT_IN_ALERTS,
}


def _filtering_what_events_lack(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules filtering an event on a key it never carries (`event:
    deployment.failed` with `task: billing/*` or `cost_cents: {gt: 500}`) in a way no such
    event passes: valid, and never firing."""
    out = []
    for i, rule in enumerate(rules):
        events = rule.match.event
        for key in dict.fromkeys(key for event in events for key in _LACKED_KEYS.get(event, ())):
            if all(_lacked(rule.match, key, event) for event in events):
                out.append(
                    f"{locate(('rules', i, 'match', key))}: rules[{i}].match.{key}: event"
                    f" {' or '.join(events)} carries no {key}; this rule never fires"
                )
    return out


def _lacked(match: MatchConfig, key: str, event: str) -> bool:
    """Whether no update of `event` passes the filter of `match` on `key`, a value it lacks."""
    value = getattr(match, key)
    if value is None or key not in _LACKED_KEYS.get(event, ()):
        return False
    alone = MatchConfig.model_construct(event=[event], **{key: value})
    return not passes_filters(alone, Run.model_construct(id="-", event=event, status=""))


# the match keys that do not narrow a rule down within its event, status and test flag
_BROAD_KEYS = frozenset({"event", "status", "is_test"})


def _shadowed(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules that never fire because a rule above them, without `continue` or
    `when`, matches every update they could (a catch-all left above the specific rules):
    the first match wins, so they silently match nothing. Only what is sure is said."""
    out = []
    stoppers = [i for i, rule in enumerate(rules) if _stops_broadly(rule)]  # few, if any
    for j, later in enumerate(rules):
        above = next((i for i in stoppers if i < j and _covers(rules[i], later)), None)
        if above is not None:
            out.append(
                f"{locate(('rules', j, 'name'))}: rules[{j}] ({later.name}): rule"
                f" {rules[above].name} above it matches every update it could and has no"
                " `continue: true`; this rule never fires"
            )
    return out


def _stops_broadly(rule: RuleConfig) -> bool:
    """Whether `rule` stops the rules below it and narrows only by event, status or test."""
    return not (
        rule.continue_ or rule.when is not None or rule.match.model_fields_set - _BROAD_KEYS
    )


def _covers(first: RuleConfig, later: RuleConfig) -> bool:
    """Whether `first` (one that stops broadly) matches every update `later` matches."""
    match, other = first.match, later.match
    statuses, wanted = statuses_of(match.status), statuses_of(other.status)
    return (
        {*other.event} <= {*match.event}
        and (statuses is None or (wanted is not None and wanted <= statuses))
        and match.is_test in (None, other.is_test)
    )


def _never_recovering(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules with `update_on_recovery` whose statuses are all final (`failure`,
    `[FAILED, CRASHED]`): a run in them never moves into COMPLETED, so no page they open is
    ever resolved by relay, where the operator who wrote it expects one to be."""
    out = []
    for i, rule in enumerate(rules):
        wanted = statuses_of(rule.match.status)
        if rule.update_on_recovery and wanted and wanted <= FINAL_STATUSES:
            out.append(
                f"{locate(('rules', i, 'update_on_recovery'))}: rules[{i}].update_on_recovery:"
                f" {', '.join(sorted(wanted))} {_final_words(len(wanted))}, so this rule sends"
                " no recovery"
            )
    return out


def _final_words(count: int) -> str:
    if count == 1:
        return "is final: a run in it never completes"
    return "are final: a run in them never completes"
