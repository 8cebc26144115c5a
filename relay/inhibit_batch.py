"""The inhibit rules' matchers for one intake call (relay.inhibition keeps the windows): which
rules a run opens, closes or is a target of, evaluated once per kind of run, and the key of the
window a run falls in. Nothing here reads the store."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.grouping import group_labels
from relay.model import Match, Run
from relay.silences.index import fits
from relay.silences.matchers import parse_matchers
from relay.windows import InhibitRule

Seen = tuple[object, ...]  # what a source or target looks at of a run (_fields)


def run_fields(run: Run, match: Match | None = None) -> dict[str, Any]:
    """What matchers look at; rule and channel only once a match exists."""
    fields: dict[str, Any] = {
        "task": run.taskIdentifier,
        "tags": run.tags,
        "status": run.status,
        "v3Status": run.v3_status,  # a Realtime row's v3 name: a matcher's status fits either
        "event": run.event,
    }
    if match is not None:
        fields.update(rule=match.rule, channel=match.channel)
    return fields


def window_key(rule: InhibitRule, run: Run) -> str:
    return key_of(rule.name, equal_values(run.as_dict(), rule.equal) if rule.equal else ())


def equal_values(run: dict[str, Any], equal: Sequence[str]) -> tuple[str, ...]:
    """A run's `equal` values, as a window's key is made of them."""
    return tuple(f"{k}={v}" for k, v in sorted(group_labels(run, equal).items()))


def key_of(rule: str, values: tuple[str, ...]) -> str:
    text = "\x1f".join([rule, *values])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class Rule:
    rule: InhibitRule
    source: dict[str, tuple[str, ...]] | None  # None: a source_digest
    target: dict[str, tuple[str, ...]]
    close: dict[str, tuple[str, ...]] | None = None

    def opened_by(self, run: Run) -> bool:
        return self.source is not None and fits(self.source, run_fields(run))

    def closed_by(self, run: Run) -> bool:
        return self.close is not None and fits(self.close, run_fields(run))


class Batch:
    """The inhibit rules for the runs of one intake call: each rule's matchers evaluated once
    per distinct run fields (of task, tags, status, event: those the rules' source or target
    matchers look at), and each target window once per distinct `equal` values. With the task
    in the key, 5,000 runs of distinct tasks against 50 rules that look at tags and status
    evaluated 500,000 matchers (2 s of event loop). Before that, 4,000 failed runs against 50
    inhibit rules held the event loop for 3 s evaluating every rule's matchers and key for every
    run; most runs of a batch share their task and status. The rules are looked at by the event
    they name first: a batch of runs with every run's task different passed each deployment
    rule's sources by, one by one."""

    def __init__(self, compiled: list[Rule]) -> None:
        self._compiled = compiled
        self._by_event: dict[str, tuple[list[Rule], list[Rule]]] = {}  # (sources, targets)
        self._source_fields = _looked_at([m for i in compiled for m in (i.source, i.close)])
        self._target_fields = _looked_at([item.target for item in compiled])
        self._either = tuple(map(max, self._source_fields, self._target_fields))
        self._muters: dict[tuple[Seen, str, str], list[Rule]] = {}
        self._sources: dict[Seen, list[Rule]] = {}
        self._targets: dict[Seen, tuple[list[Rule], list[tuple[str, ...]]]] = {}  # equals
        self._windows: set[tuple[Seen, tuple[tuple[str, ...], ...]]] = set()

    def sources(self, run: Run) -> list[Rule]:
        """The rules `run` opens or closes a window of, and the digest rules, in their order."""
        fields = _fields(run, self._source_fields)
        found = self._sources.get(fields)
        if found is None:
            found = self._sources[fields] = [
                item
                for item in self._of_event(run)[0]
                if item.source is None or item.opened_by(run) or item.closed_by(run)
            ]
        return found

    def muters(self, run: Run, match: Match) -> list[Rule]:
        """The rules whose targets `run` fits with `match`, but not its sources, in their
        order: those that mute `match` while their window of `run` is open."""
        seen = (_fields(run, self._either), match.rule, match.channel)
        found = self._muters.get(seen)
        if found is None:
            fields = run_fields(run, match)
            found = self._muters[seen] = [
                item
                for item in self._compiled
                if not item.opened_by(run) and fits(item.target, fields)
            ]
        return found

    def target_windows(self, run: Run) -> list[tuple[Rule, str]]:
        """The windows (rule, key) whose targets `run` fits; none already given for a run of
        the same fields and `equal` values."""
        fields = _fields(run, self._target_fields)
        if fields not in self._targets:
            items = [item for item in self._of_event(run)[1] if fits(item.target, run_fields(run))]
            equals = list(dict.fromkeys(tuple(item.rule.equal) for item in items))
            self._targets[fields] = items, equals
        items, equals = self._targets[fields]
        if not items:
            return []
        as_dict = run.as_dict() if any(equals) else {}
        values = {equal: equal_values(as_dict, equal) for equal in equals}
        seen = (fields, tuple(values.values()))
        if seen in self._windows:
            return []
        self._windows.add(seen)
        return [(item, key_of(item.rule.name, values[tuple(item.rule.equal)])) for item in items]

    def _of_event(self, run: Run) -> tuple[list[Rule], list[Rule]]:
        """The rules whose sources (or closers, or pile-ups) and whose targets may fit an update
        of `run`'s event, in their order."""
        event = str(run.event or "")
        if event not in self._by_event:
            self._by_event[event] = (
                [
                    item
                    for item in self._compiled
                    if item.source is None
                    or _names_event(item.source, event)
                    or _names_event(item.close, event)
                ],
                [item for item in self._compiled if _names_event(item.target, event)],
            )
        return self._by_event[event]


def _names_event(matchers: dict[str, tuple[str, ...]] | None, event: str) -> bool:
    """Whether matchers may fit an update of `event` (those without an event matcher may)."""
    return matchers is not None and ("event" not in matchers or event in matchers["event"])


def _fields(run: Run, looked_at: tuple[bool, ...]) -> Seen:
    """The fields of `run` that matchers look at (`looked_at`: of task, tags, status, event)."""
    fields = (run.taskIdentifier, tuple(run.tags), (run.status, run.v3_status), run.event)
    return tuple(value if wanted else None for value, wanted in zip(fields, looked_at, strict=True))


def _looked_at(matchers: Sequence[dict[str, tuple[str, ...]] | None]) -> tuple[bool, ...]:
    """Which of task, tags, status, event any of `matchers` looks at; the event always (the
    rules are looked at by event first)."""
    keys = {key for m in matchers if m is not None for key in m}
    return "task" in keys, "tag" in keys, "status" in keys, True


def compile_rule(rule: InhibitRule) -> Rule:
    return Rule(
        rule,
        None if rule.source_match is None else parse_matchers(rule.source_match),
        parse_matchers(rule.target_match or {"event": "run"}),
        None if rule.close_match is None else parse_matchers(rule.close_match),
    )
