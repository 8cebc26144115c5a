"""Digests: group keys and group windows, with Alertmanager's meaning (pure functions).

A rule with `group_by` sends one message per group instead of one per run. The first run of a
new group waits `group_wait` for others; after a digest went out, runs that join the group go in
the next digest, no sooner than `group_interval` after the previous one (and, when that much
time has passed already, `group_wait` after the run that wakes the group, so that a burst
posted run by run goes in one digest, not one run then the rest); so do runs that join
while a due digest is on its way (claimed, being sent), not in a digest of their own. Runs do
not resolve the way Prometheus alerts do, so there is nothing to repeat: a group that saw
nothing for `repeat_interval` (and at least `group_interval`) is closed, and the next run
opens a new one (waiting `group_wait` again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from relay.model import GroupState, Timing

MAX_LABEL_CHARS = 200


EVERY_RUN = "..."  # Alertmanager's `group_by: ['...']`: every run is a group of its own
MISSING: Any = object()  # what `lookup` finds at a path that leads nowhere


def lookup(data: Any, path: str) -> Any:
    """Value at a dotted path of nested JSON, or MISSING. A key containing dots is tried whole
    first, then split at each dot in turn; a number picks an item of a list (`items.0`)."""
    whole = _child(data, path)
    if whole is not MISSING:
        return whole
    dot = path.find(".")
    while dot != -1:
        head = _child(data, path[:dot])
        if head is not MISSING and (found := lookup(head, path[dot + 1 :])) is not MISSING:
            return found
        dot = path.find(".", dot + 1)
    return MISSING


def _child(data: Any, key: str) -> Any:
    if isinstance(data, (dict, Mapping)):  # dict first: JSON is, and needs no ABC check
        return data.get(key, MISSING)
    if isinstance(data, list) and key.isascii() and key.isdigit() and int(key) < len(data):
        return data[int(key)]
    return MISSING


def group_labels(run: Mapping[str, Any], group_by: Sequence[str]) -> dict[str, str]:
    """The values of `group_by` paths in a run dict (see `lookup`); a missing value is empty,
    a list joins its values in sorted order (tags are a set), `...` is the run's id."""
    labels = {}
    for path in group_by:
        value = run.get("id") if path == EVERY_RUN else lookup(run, path)
        if isinstance(value, list):
            value = ",".join(sorted(_text(v) for v in value))
        labels[path] = "" if value is None or value is MISSING else _text(value)[:MAX_LABEL_CHARS]
    return labels


def _text(value: Any) -> str:
    """A value as the run's JSON spells it: `true`, `{"a":1}`, not Python's `True`."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def group_key(rule: str, channel: str, labels: Mapping[str, str]) -> str:
    """Stable id of a group: the same rule, channel and label values give the same key."""
    parts = [rule, channel, *(f"{k}={v}" for k, v in sorted(labels.items()))]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()
    return "grp_" + digest


def schedule(
    previous: GroupState | None, key: str, now: float, timing: Timing, *, sending: bool = False
) -> GroupState:
    """The group after a run joined it; its next_flush is when that run will be sent.
    `sending`: the due digest is claimed already, whatever `now` says (a replica's `now` is
    taken before its transaction, which may commit after another replica's claim)."""
    if (
        previous is not None
        and previous.next_flush is not None
        and previous.next_flush >= now
        and not sending
    ):
        # a digest waits: join it, however short repeat_interval is (a group is not closed
        # under a waiting digest); >=: runs of one batch share `now`, so a digest due at once
        # takes the whole batch
        return GroupState(key, previous.next_flush, previous.last_sent, now)
    if previous is None or _closed(previous, now, timing):
        return GroupState(key, now + timing.group_wait_s, None, now)
    if previous.next_flush is not None:  # that digest is due, maybe on its way: the next one
        after = max(now, previous.next_flush) + timing.group_interval_s
        return GroupState(key, after, previous.last_sent, now)
    last_sent = previous.last_sent if previous.last_sent is not None else now
    due = last_sent + timing.group_interval_s
    if due <= now:  # quiet past group_interval: wait group_wait for the rest of a burst, as a
        due = now + timing.group_wait_s  # new group does (at once, runs posted one by one split)
    return GroupState(key, due, last_sent, now)


# The kv namespace of each digest rule's group_wait and group_interval as its waiting digests
# were scheduled with (the last start or reload wrote it): a start with a changed config
# re-times them as a reload does (Store.retime_groups).
TIMINGS_NS = "digest-timings"


def timing_value(timing: Timing) -> str:
    """What TIMINGS_NS keeps of a rule's timing: the windows a digest's due time depends on."""
    return json.dumps([timing.group_wait_s, timing.group_interval_s])


def timings_changed(stored: Mapping[str, str], timings: Mapping[str, Timing]) -> dict[str, Timing]:
    """The rules of `timings` whose windows differ from those `stored` (TIMINGS_NS) for them; a
    rule with none stored (new, or relay older than this) has nothing to re-time."""
    return {
        rule: timing
        for rule, timing in timings.items()
        if rule in stored and stored[rule] != timing_value(timing)
    }


def retimed(last_sent: float | None, first_waiting: float, now: float, timing: Timing) -> float:
    """When a waiting digest goes under `timing` (a start or reload changed the rule's
    group_wait or group_interval): as `schedule` would have put it had `timing` been in force
    when its first run (`first_waiting`) joined; not before `now` (a reload makes no digest
    overdue)."""
    if last_sent is None:  # the group's first digest
        return max(first_waiting + timing.group_wait_s, now)
    due = last_sent + timing.group_interval_s
    if due <= first_waiting:  # that run woke a group quiet past group_interval
        due = first_waiting + timing.group_wait_s
    return max(due, now)


def _closed(previous: GroupState, now: float, timing: Timing) -> bool:
    """Quiet for `repeat_interval`, and never sooner than `group_interval`: a shorter
    `repeat_interval` would open a new group (a digest `group_wait` later) under the floor
    `group_interval` promises; Alertmanager also never notifies a group more often."""
    quiet = max(timing.repeat_interval_s, timing.group_interval_s)
    return now - previous.last_seen >= quiet


def flushed(
    previous: GroupState, now: float, next_at: float | None = None, *, waiting: bool = False
) -> GroupState:
    """The group after its digest went out; a later digest that runs joined meanwhile stays
    (`waiting`: the group has rows left, maybe due already), no sooner than `next_at` (the
    send's start plus group_interval: runs that joined a digest held back by its receiver were
    scheduled from when it was due, not from when it went)."""
    later = previous.next_flush if (previous.next_flush or 0.0) > now else None
    if next_at is not None and (later is not None or waiting):
        later = max(later or next_at, next_at)
    return GroupState(previous.key, later, now, max(previous.last_seen, now))


def digest_id(notification_ids: Sequence[str]) -> str:
    """Stable id of one digest: the same notifications always give the same id."""
    joined = "\x1f".join(sorted(notification_ids)).encode()
    return "dgs_" + hashlib.blake2b(joined, digest_size=12).hexdigest()


def digest_context(
    key: str, labels: Mapping[str, str], runs: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The `group` a digest template sees: its runs and what they add up to."""
    by_status: dict[str, int] = {}
    by_task: dict[str, int] = {}
    cost: float | None = None  # None when no run carries one: unknown, not $0
    for run in runs:
        status = str(run.get("status") or "")
        task = str(run.get("taskIdentifier") or "")
        by_status[status] = by_status.get(status, 0) + 1
        by_task[task] = by_task.get(task, 0) + 1
        known = [c for k in ("costInCents", "baseCostInCents") if _is_number(c := run.get(k))]
        if known:  # an alert webhook's run (or event) carries none
            cost = (cost or 0.0) + sum(known)
    seen = sorted(t for run in runs if (t := seen_at(run)))
    events = {run.get("event") or "run" for run in runs}
    return {
        "key": key,
        # what every run is (run, error, deployment.failed ...); None for a mix of events, whose
        # digest is the generic one: one event's (`2 failed deployments`) would miscount them
        "event": next(iter(events)) if len(events) == 1 else None,
        "labels": dict(labels),
        "runs": list(runs),
        "count": len(runs),
        "by_status": dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
        "by_task": dict(sorted(by_task.items(), key=lambda kv: -kv[1])),
        "first_seen": seen[0] if seen else None,
        "last_seen": seen[-1] if seen else None,
        "total_cost_cents": cost,
        "occurrences": occurrences(runs),
    }


def occurrences(runs: Sequence[Mapping[str, Any]]) -> int | float:
    """How often the errors of a digest of error-group alerts happened. An alert's
    occurrenceCount is its error group's count over all time (Trigger.dev sums the group's
    whole history), so the same group alerting twice (new, then a regression) counts once, at
    its latest count; the groups (environment, task, fingerprint) add up. 0 for runs."""
    latest: dict[tuple[str, str, str], int | float] = {}
    for run in runs:
        error = run.get("error")
        if run.get("event") != "error" or not isinstance(error, Mapping):
            continue
        count = error.get("occurrenceCount")
        if not _is_number(count):
            continue
        env = run.get("environment")
        env_id = env.get("id") if isinstance(env, Mapping) else None
        key = (str(env_id), str(error.get("taskIdentifier")), str(error.get("fingerprint")))
        latest[key] = max(latest.get(key, count), count)
    return sum(latest.values())


def seen_at(run: Mapping[str, Any]) -> str:
    """When a run (or alert event) was last seen, as its ISO text; "" when it says nothing."""
    value = run.get("updatedAt") or run.get("createdAt")
    return str(value) if value else ""


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
