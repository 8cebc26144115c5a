"""A rule's `match:` filters as predicates on a run (pure): its status list expanded
(statuses_of), task globs and regex, tags, cost and duration thresholds, isTest and metadata
paths. `passes_filters` tells whether a run passes them all, besides event and status."""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable
from typing import Any

from relay.config_rules import MatchConfig, TagMatch, Threshold, compile_task_regex
from relay.grouping import MISSING, lookup
from relay.model import Run
from relay.regexes import repeats_nothing
from relay.render_limits import RENDER_BUDGET_S
from relay.statuses import FAILURE_STATUSES, normalise_status

log = logging.getLogger("relay.rules")
Predicate = Callable[[Run], bool]


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
    if not run.measured and has_threshold(match):
        return False
    return all(predicate(run) for predicate in match_predicates(match))


def has_threshold(match: MatchConfig) -> bool:
    return any(t is not None for t in (match.cost_cents, match.base_cost_cents, match.duration_ms))


def match_predicates(
    match: MatchConfig, rule: str = "", failed: Callable[[str], None] = lambda _rule: None
) -> list[Predicate]:
    """The predicates of `match`'s filters; `failed` hears of rule `rule`'s evaluation stopped
    (a `task_regex` that took too long)."""
    preds: list[Predicate] = []
    if match.task:
        pattern = re.compile("|".join(fnmatch.translate(g) for g in match.task))
        preds.append(lambda run: pattern.match(run.taskIdentifier) is not None)
    if match.task_regex is not None:
        preds.append(_regex_predicate(rule, match.task_regex, failed))
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


def _regex_predicate(name: str, source: str, failed: Callable[[str], None]) -> Predicate:
    """`task_regex` as `re.search` would match it, but stopped after RENDER_BUDGET_S: `^(a|aa)+$`
    over a task of 40 `a`s and a `!` backtracked for hours on the event loop (no /healthz, no
    intake, no delivery). Stopped, it is no match, told as a `when:` that raised is. One with
    no repeat cannot take long: `re` runs it, with no timeout to keep."""
    pattern = compile_task_regex(source)
    if repeats_nothing(source):
        plain = re.compile(source)
        return lambda run: plain.search(run.taskIdentifier) is not None

    def check(run: Run) -> bool:
        try:
            return pattern.search(run.taskIdentifier, timeout=RENDER_BUDGET_S) is not None
        except TimeoutError:
            log.warning(
                "rule `task_regex` took too long; treating as no match",
                extra={"rule": name, "run_id": run.id, "timeout_s": RENDER_BUDGET_S},
            )
            failed(name)
            return False

    return check


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
