"""Inhibition at intake: sources open a window (kept in the store), targets inside it are muted.

A source update opens the window of an inhibit rule for its `equal` values until now + duration;
while it is open, a notification whose run fits the rule's `target_match` and shares those values
is recorded as muted ("inhibited:<rule>"), not sent. Windows live in the store's key-value table
(namespace "inhibit"), so they survive restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from relay.grouping import group_labels
from relay.model import Match, Run
from relay.silences import fits, parse_matchers
from relay.windows import InhibitRule

NAMESPACE = "inhibit"
MuteCheck = Callable[[Run, Match], str | None]


class KeyValue(Protocol):
    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None: ...


def run_fields(run: Run, match: Match | None = None) -> dict[str, Any]:
    """What matchers look at; rule and channel only once a match exists."""
    fields: dict[str, Any] = {
        "task": run.taskIdentifier,
        "tags": run.tags,
        "status": run.status,
        "event": run.event,
    }
    if match is not None:
        fields.update(rule=match.rule, channel=match.channel)
    return fields


def window_key(rule: InhibitRule, run: Run) -> str:
    labels = group_labels(run.as_dict(), rule.equal) if rule.equal else {}
    text = "\x1f".join([rule.name, *(f"{k}={v}" for k, v in sorted(labels.items()))])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


async def inhibitions(
    kv: KeyValue, rules: Sequence[InhibitRule], runs: Sequence[Run], now: float
) -> MuteCheck | None:
    """Open the windows the sources among `runs` start; return the check for targets."""
    compiled = [
        (r, parse_matchers(r.source_match), parse_matchers(r.target_match or {"event": "run"}))
        for r in rules
    ]
    until: dict[str, float] = {}
    for run in runs:
        for rule, source, _ in compiled:
            if fits(source, run_fields(run)):
                key = window_key(rule, run)
                until[key] = now + rule.duration
                await kv.kv_put(NAMESPACE, key, repr(until[key]), now)
    for run in runs:
        for rule, _, target in compiled:
            key = window_key(rule, run)
            if key not in until and fits(target, run_fields(run)):
                stored = await kv.kv_get(NAMESPACE, key)
                until[key] = float(stored) if stored else 0.0
    if not any(end > now for end in until.values()):
        return None

    def check(run: Run, match: Match) -> str | None:
        for rule, source, target in compiled:
            if fits(source, run_fields(run)) or not fits(target, run_fields(run, match)):
                continue
            if until.get(window_key(rule, run), 0.0) > now:
                return f"inhibited:{rule.name}"
        return None

    return check
