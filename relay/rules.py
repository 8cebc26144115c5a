"""The rule engine: the compiled rule list decides per run update (pure functions).

A rule fires on the update that first satisfies it, once per run (the store remembers which
rules fired). Rules are tried in order and the first match wins unless it says `continue: true`.
A rule with `update_on_recovery` also owes its channels a recovery (template `recovered`) when a
run it fired for later moves into COMPLETED.
Candidate rules are indexed by (event, status, isTest, whether the update carries a cost and
duration) and by the tags a rule requires, so a run is only tried against rules it could match:
a cost or duration threshold never matches an alert webhook's run, which carries neither. Rules
filtered on cost, duration, task or metadata alone are still tried one by one.

The rule list is compiled from the config by relay.rule_compile; a rule's `match:` filters
become predicates in relay.rule_filters, its `when:` expression in relay.rule_when.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from relay.model import Decision, Match, Run, RunState, Timing
from relay.rule_filters import Predicate
from relay.rule_when import WhenFailures
from relay.statuses import FAILURE_STATUSES
from relay.windows import InhibitRule, NamedTimeInterval

RECOVERY_TEMPLATE = "recovered"
RECOVERED_STATUS = "COMPLETED"
MERGED_TAG_SETS = 1000  # tag sets whose candidates one (event, status, isTest) keeps merged


@dataclass(frozen=True)
class CompiledRule:
    index: int
    name: str
    events: frozenset[str]
    statuses: frozenset[str] | None
    predicates: tuple[Predicate, ...]
    notify: tuple[str, ...]
    templates: Mapping[str, str]  # by event: the rule's own, or each event's default
    continue_: bool
    group_by: tuple[str, ...] | None = None
    failed_template: str = ""  # for a failed run, where that is not its event's template
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

    def template_for(self, event: str, status: object) -> str:
        """The template an update of `event` (one the rule matches) and `status` is rendered
        with (FAILED_TEMPLATE: relay.rule_compile.rule_template)."""
        if self.failed_template and event == "run" and status in FAILURE_STATUSES:
            return self.failed_template
        return self.templates[event]

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

    def timings(self) -> dict[str, Timing]:
        """Each digest rule's timing: a start or reload re-times the waiting digests of those
        whose group_wait or group_interval changed (Store.retime_groups)."""
        return {name: rule.timing for name, rule in self.by_name.items() if rule.timing}

    def template_of(self, rule: str, channel: str, event: str, status: object) -> str | None:
        """The template rule `rule` renders for `channel` and `event` (a run of `status`) now,
        or None when no
        rule of that name notifies it of that event any more (a reload removed the rule or
        the channel, or made it match another event: its template is for that one's body)."""
        found = self.by_name.get(rule)
        if found is None or event not in found.events or channel not in found.notify:
            return None
        return found.template_for(event, status)

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
            Match(
                r.name,
                ch,
                r.template_for(run.event, run.status),
                group_by=r.group_by,
                timing=r.timing,
            )
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
        if event in r.events
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
