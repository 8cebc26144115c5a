"""Inhibition at intake: sources open a window (kept in the store), targets inside it are muted.

A source update opens the window of an inhibit rule for its `equal` values until now + duration;
while it is open, a notification whose run fits the rule's `target_match` and shares those values
is recorded as muted ("inhibited:<rule>"), not sent. An update matching the rule's `close_match`
(a successful deployment after a failed one) ends an open window at once, as a resolved source
alert ends its inhibition in Alertmanager; an update older than the newest source of the
open window (a success retried late, after a newer failure) ends nothing: the event time of
that source is kept per window (namespace "inhibit_opened"). Windows live in the store's
key-value table (namespace "inhibit"), so they survive restarts. A run opens or extends a
window only with an update newer than the one it last opened it with (namespace
"inhibit_source", pruned with the runs): a Realtime snapshot or a retried push repeats old
sources, which must not mute anew.
Nor does an update older than the newest of its run before it (stored, or earlier in the same
call), which intake ignores as stale: it must not mute either.

A `source_digest: {rule, min_count}` source is a pile-up instead of one update: the window holds
while at least `min_count` distinct runs that the digest rule matched (sharing the `equal`
values) arrived within the last `duration`. The run that reaches `min_count` is inhibited with
the later ones; the digest rule's own notifications never are. The latest `min_count` runs and
when they arrived are kept per window (namespace "inhibit_count").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay.grouping import group_labels
from relay.model import Match, Run
from relay.silences import fits, parse_matchers
from relay.windows import InhibitRule

NAMESPACE = "inhibit"
COUNTS = "inhibit_count"
SOURCES = "inhibit_source"  # (rule, run) → the run's updatedAt (ms, "" if none) it opened with
OPENED = "inhibit_opened"  # window → event time (ms, "" if none) of its open window's newest source
MuteCheck = Callable[[Run, Match], str | None]
RulesOf = Callable[[Run], Collection[str]]  # the names of the rules that match a run


class KeyValue(Protocol):
    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None: ...

    async def run_updated_ms(self, run_id: str) -> int | None: ...


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
    return _window_key(rule.name, _equal_values(run.as_dict(), rule.equal) if rule.equal else ())


def _equal_values(run: dict[str, Any], equal: Sequence[str]) -> tuple[str, ...]:
    """A run's `equal` values, as a window's key is made of them."""
    return tuple(f"{k}={v}" for k, v in sorted(group_labels(run, equal).items()))


def _window_key(rule: str, values: tuple[str, ...]) -> str:
    text = "\x1f".join([rule, *values])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class _Rule:
    rule: InhibitRule
    source: dict[str, tuple[str, ...]] | None  # None: a source_digest
    target: dict[str, tuple[str, ...]]
    close: dict[str, tuple[str, ...]] | None = None

    def opened_by(self, run: Run) -> bool:
        return self.source is not None and fits(self.source, run_fields(run))

    def closed_by(self, run: Run) -> bool:
        return self.close is not None and fits(self.close, run_fields(run))


@dataclass
class _Windows:
    """What the inhibit rules know about the runs of one intake call, at `now`."""

    now: float
    until: dict[str, float] = field(default_factory=dict)  # event sources: window key → end
    counts: dict[str, dict[str, float]] = field(default_factory=dict)  # digests: key → runs
    counted_by: dict[str, InhibitRule] = field(default_factory=dict)  # digests: key → its rule
    at_arrival: dict[tuple[str, str], bool] = field(default_factory=dict)  # (key, run): open?
    sources: dict[str, str | None] = field(default_factory=dict)  # SOURCES read or written
    opened: dict[str, int | None] = field(default_factory=dict)  # OPENED read or written
    stored_ms: dict[str, int | None] = field(default_factory=dict)  # run → newest stored

    async def stale(self, kv: KeyValue, run: Run, earlier_ms: int) -> bool:
        """Whether `run` is older than the newest update known of it before it (stored, or
        earlier in this call, `earlier_ms`): intake, which takes a call's updates in order,
        ignores it, so it opens no window and counts in no pile-up."""
        updated_ms = run.updated_at_ms
        if updated_ms is None:
            return False
        if run.id not in self.stored_ms:
            self.stored_ms[run.id] = await kv.run_updated_ms(run.id)
        return updated_ms < max(self.stored_ms[run.id] or 0, earlier_ms)

    def piled_up(self, key: str) -> bool:
        rule = self.counted_by[key]
        assert rule.source_digest is not None
        runs = self.counts.get(key, {})
        recent = sum(at > self.now - rule.duration for at in runs.values())
        return recent >= rule.source_digest.min_count

    def is_open(self, item: _Rule, key: str, run_id: str) -> bool:
        if item.source is not None:
            return self.until.get(key, 0.0) > self.now
        arrived = self.at_arrival.get((key, run_id))
        return self.piled_up(key) if arrived is None else arrived

    async def load_counts(self, kv: KeyValue, rule: InhibitRule, key: str) -> dict[str, float]:
        """The latest runs of a pile-up, from the store unless this call already has them."""
        if key not in self.counts:
            self.counts[key] = _runs(await kv.kv_get(COUNTS, key))
            self.counted_by[key] = rule
        return self.counts[key]

    def any_open(self) -> bool:
        return any(end > self.now for end in self.until.values()) or any(
            self.piled_up(key) for key in self.counts
        )


def _earlier_ms(runs: Sequence[Run]) -> list[int]:
    """For each update, the newest `updatedAt` of its run earlier in `runs` (0 if none): an
    update is stale only against those before it, as intake takes them in order."""
    newest: dict[str, int] = {}
    out = []
    for run in runs:
        out.append(newest.get(run.id, 0))
        if (ms := run.updated_at_ms) is not None:
            newest[run.id] = max(newest.get(run.id, ms), ms)
    return out


async def inhibitions(
    kv: KeyValue,
    rules: Sequence[InhibitRule],
    runs: Sequence[Run],
    now: float,
    rules_of: RulesOf = lambda run: (),
) -> MuteCheck | None:
    """Open the windows the sources among `runs` start; return the check for targets.

    `rules_of(run)` names the rules a run matches, for `source_digest` sources.
    """
    compiled = [_compiled(r) for r in rules]
    batch, windows = _Batch(compiled), _Windows(now)
    for run, earlier_ms in zip(runs, _earlier_ms(runs), strict=True):
        await _take_sources(kv, batch.sources(run), run, earlier_ms, windows, rules_of=rules_of)
    for run in runs:
        for item, key in batch.target_windows(run):
            await _load(kv, item, key, windows)
    if not windows.any_open():
        return None

    def check(run: Run, match: Match) -> str | None:
        for item in compiled:
            if item.opened_by(run) or not fits(item.target, run_fields(run, match)):
                continue
            digest = item.rule.source_digest
            if digest is not None and match.rule == digest.rule:
                continue
            if windows.is_open(item, window_key(item.rule, run), run.id):
                return f"inhibited:{item.rule.name}"
        return None

    return check


Fields = tuple[str, tuple[str, ...], str, str]  # what a source or target looks at of a run


class _Batch:
    """The inhibit rules for the runs of one intake call: each rule's matchers evaluated once
    per distinct run fields (task, tags, status, event), and each target window once per
    distinct `equal` values. 4,000 failed runs against 50 inhibit rules held the event loop
    for 3 s evaluating every rule's matchers and key for every run; most runs of a batch share
    their task and status. The rules are looked at by the event they name first: a batch of runs
    with every run's task different passed each deployment rule's sources by, one by one."""

    def __init__(self, compiled: list[_Rule]) -> None:
        self._compiled = compiled
        self._by_event: dict[str, tuple[list[_Rule], list[_Rule]]] = {}  # (sources, targets)
        self._sources: dict[Fields, list[_Rule]] = {}
        self._targets: dict[Fields, tuple[list[_Rule], list[tuple[str, ...]]]] = {}  # equals
        self._windows: set[tuple[Fields, tuple[tuple[str, ...], ...]]] = set()

    def sources(self, run: Run) -> list[_Rule]:
        """The rules `run` opens or closes a window of, and the digest rules, in their order."""
        fields = _fields(run)
        found = self._sources.get(fields)
        if found is None:
            found = self._sources[fields] = [
                item
                for item in self._of_event(run)[0]
                if item.source is None or item.opened_by(run) or item.closed_by(run)
            ]
        return found

    def target_windows(self, run: Run) -> list[tuple[_Rule, str]]:
        """The windows (rule, key) whose targets `run` fits; none already given for a run of
        the same fields and `equal` values."""
        fields = _fields(run)
        if fields not in self._targets:
            items = [item for item in self._of_event(run)[1] if fits(item.target, run_fields(run))]
            equals = list(dict.fromkeys(tuple(item.rule.equal) for item in items))
            self._targets[fields] = items, equals
        items, equals = self._targets[fields]
        if not items:
            return []
        as_dict = run.as_dict() if any(equals) else {}
        values = {equal: _equal_values(as_dict, equal) for equal in equals}
        seen = (fields, tuple(values.values()))
        if seen in self._windows:
            return []
        self._windows.add(seen)
        return [
            (item, _window_key(item.rule.name, values[tuple(item.rule.equal)])) for item in items
        ]

    def _of_event(self, run: Run) -> tuple[list[_Rule], list[_Rule]]:
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


def _fields(run: Run) -> Fields:
    return run.taskIdentifier, tuple(run.tags), run.status, run.event


def _compiled(rule: InhibitRule) -> _Rule:
    return _Rule(
        rule,
        None if rule.source_match is None else parse_matchers(rule.source_match),
        parse_matchers(rule.target_match or {"event": "run"}),
        None if rule.close_match is None else parse_matchers(rule.close_match),
    )


async def _take_sources(
    kv: KeyValue,
    compiled: list[_Rule],
    run: Run,
    earlier_ms: int,
    windows: _Windows,
    *,
    rules_of: RulesOf,
) -> None:
    """Open, extend or close the windows `run` is a new source (or closer) of; count it into
    the pile-ups of the digest rules it matches. `compiled`: the rules `run` opens or closes
    and the digest rules (_Batch.sources)."""
    matched: Collection[str] | None = None
    for item in compiled:
        if item.source is not None or item.closed_by(run):
            if not await windows.stale(kv, run, earlier_ms) and await _news(
                kv, item.rule, run, windows, counted=False
            ):
                await _open_or_close(kv, item, run, windows)
        elif item.rule.source_digest is not None:
            matched = rules_of(run) if matched is None else matched
            if item.rule.source_digest.rule in matched and not await windows.stale(
                kv, run, earlier_ms
            ):
                await _count(kv, item.rule, run, windows)


async def _open_or_close(kv: KeyValue, item: _Rule, run: Run, windows: _Windows) -> None:
    """A source opens (or extends) its window until now + duration; an update matching
    `close_match` ends an open one now, so its targets go out again (a successful deployment
    after a failed one), unless it happened before the window's newest source."""
    key, now = window_key(item.rule, run), windows.now
    if item.opened_by(run):
        if item.close is not None:  # only a rule that can be closed needs its sources' times
            await _keep_newest_source(kv, item, key, run, windows)
        windows.until[key] = now + item.rule.duration
    else:
        await _load(kv, item, key, windows)
        if windows.until[key] <= now:
            return  # nothing open: nothing to write
        at, opened = event_ms(run), await _opened(kv, key, windows)
        if at is not None and opened is not None and at < opened:
            return  # older than the newest source (a success retried late): it ends nothing
        windows.until[key] = now
    await kv.kv_put(NAMESPACE, key, repr(windows.until[key]), now)


async def _keep_newest_source(
    kv: KeyValue, item: _Rule, key: str, run: Run, windows: _Windows
) -> None:
    """Record when the newest source of window `key` happened: `run`'s time, or the newest of
    the sources that keep the window open."""
    await _load(kv, item, key, windows)
    at = event_ms(run)
    newest = await _opened(kv, key, windows) if windows.until[key] > windows.now else None
    windows.opened[key] = at if newest is None else max(newest, at or 0)
    await kv.kv_put(OPENED, key, str(windows.opened[key] or ""), windows.now)


def event_ms(run: Run) -> int | None:
    """When an update happened: its `updatedAt`, else (an alert webhook's deployment or error
    group) its `createdAt`; None if neither is known."""
    if (ms := run.updated_at_ms) is not None or run.createdAt is None:
        return ms
    return int(run.createdAt.timestamp() * 1000)


async def _opened(kv: KeyValue, key: str, windows: _Windows) -> int | None:
    """The event time of the newest source of window `key` (None: unknown, or an older relay
    opened it)."""
    if key not in windows.opened:
        stored = await kv.kv_get(OPENED, key)
        windows.opened[key] = int(stored) if stored and stored.isdigit() else None
    return windows.opened[key]


async def _load(kv: KeyValue, item: _Rule, key: str, windows: _Windows) -> None:
    """The stored window (or pile-up) of `key`, unless this call already has it."""
    if item.source is not None and key not in windows.until:
        stored = await kv.kv_get(NAMESPACE, key)
        windows.until[key] = float(stored) if stored else 0.0
    elif item.source is None:
        await windows.load_counts(kv, item.rule, key)


async def _news(
    kv: KeyValue, rule: InhibitRule, run: Run, windows: _Windows, *, counted: bool
) -> bool:
    """Whether `run` is a new source (or closer) of `rule`: seen for the first time, or (unless
    `counted`: a pile-up counts runs, not updates) with a newer `updatedAt`. A stale or repeated
    update (a Realtime snapshot, a retried push or alert) opens or closes no window and counts no
    run again."""
    key = _source_key(rule, run)
    if key not in windows.sources:
        windows.sources[key] = await kv.kv_get(SOURCES, key)
    seen, updated_ms = windows.sources[key], run.updated_at_ms
    if seen is not None and (counted or updated_ms is None or (seen and updated_ms <= int(seen))):
        return False
    windows.sources[key] = opened_with = "" if updated_ms is None else str(updated_ms)
    await kv.kv_put(SOURCES, key, opened_with, windows.now)
    return True


def _source_key(rule: InhibitRule, run: Run) -> str:
    return hashlib.blake2b(f"{rule.name}\x1f{run.id}".encode(), digest_size=12).hexdigest()


async def _count(kv: KeyValue, rule: InhibitRule, run: Run, windows: _Windows) -> None:
    """Count `run` into the pile-up of its window; remember whether that opened it."""
    assert rule.source_digest is not None
    key = window_key(rule, run)
    runs = await windows.load_counts(kv, rule, key)
    if run.id not in runs and await _news(kv, rule, run, windows, counted=True):
        runs[run.id] = windows.now
        recent = sorted(
            ((at, rid) for rid, at in runs.items() if at > windows.now - rule.duration),
            reverse=True,
        )[: rule.source_digest.min_count]
        windows.counts[key] = runs = {rid: at for at, rid in recent}
        await kv.kv_put(COUNTS, key, orjson.dumps(runs).decode(), windows.now)
    windows.at_arrival.setdefault((key, run.id), windows.piled_up(key))


def _runs(stored: str | None) -> dict[str, float]:
    try:
        value = orjson.loads(stored) if stored else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
