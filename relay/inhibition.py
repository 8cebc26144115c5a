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
WINDOWS_PER_READ = 10_000  # target windows read at once: each read's work on the loop stays short
MuteCheck = Callable[[Run, Match], str | None]
RulesOf = Callable[[Run], Collection[str]]  # the names of the rules that match a run


class KeyValue(Protocol):
    async def kv_get_many(self, namespace: str, keys: Collection[str]) -> dict[str, str]: ...

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None: ...

    async def runs_updated_ms(self, run_ids: Collection[str]) -> dict[str, int]: ...


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
class _Wants:
    """What one step of an intake call reads of the store: read before the step, one read per
    namespace. A batch of 5,000 runs of distinct tasks against 50 inhibit rules read 250,000
    windows one awaited read at a time (a POST of 25 s)."""

    windows: dict[str, str] = field(default_factory=dict)  # NAMESPACE: key → rule name
    counts: dict[str, InhibitRule] = field(default_factory=dict)  # COUNTS: key → digest rule
    sources: set[str] = field(default_factory=set)  # SOURCES
    opened: set[str] = field(default_factory=set)  # OPENED
    run_ids: set[str] = field(default_factory=set)  # the runs' newest stored updatedAt

    def window(self, item: _Rule, key: str) -> None:
        if item.source is None:
            self.counts[key] = item.rule
        else:
            self.windows[key] = item.rule.name


@dataclass
class _Windows:
    """What the inhibit rules know about the runs of one intake call, at `now`."""

    now: float
    until: dict[str, float] = field(default_factory=dict)  # event sources: window key → end
    rule_of: dict[str, str] = field(default_factory=dict)  # event sources: window key → rule
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
            await self.fetch(kv, _Wants(run_ids={run.id}))
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
            await self.fetch(kv, _Wants(counts={key: rule}))
        return self.counts[key]

    async def fetch(self, kv: KeyValue, wants: _Wants) -> None:
        """Read what `wants` names and this call does not have yet, one read per namespace."""
        if ids := wants.run_ids - self.stored_ms.keys():
            stored_ms = await kv.runs_updated_ms(ids)
            self.stored_ms.update({run_id: stored_ms.get(run_id) for run_id in ids})
        for key, value in (
            await _read(kv, NAMESPACE, wants.windows.keys() - self.until.keys())
        ).items():
            self.until[key], self.rule_of[key] = float(value) if value else 0.0, wants.windows[key]
        for key, value in (await _read(kv, OPENED, wants.opened - self.opened.keys())).items():
            self.opened[key] = int(value) if value and value.isdigit() else None
        self.sources.update(await _read(kv, SOURCES, wants.sources - self.sources.keys()))
        counts = await _read(kv, COUNTS, wants.counts.keys() - self.counts.keys())
        for key, value in counts.items():
            self.counts[key], self.counted_by[key] = _runs(value), wants.counts[key]

    def live_rules(self) -> set[str]:
        """The event-source rules with a window open: the others mute nothing in this call."""
        return {self.rule_of[key] for key, end in self.until.items() if end > self.now}

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
    steps = [
        (run, earlier_ms, items, rules_of(run) if any(i.source is None for i in items) else ())
        for run, earlier_ms in zip(runs, _earlier_ms(runs), strict=True)
        if (items := batch.sources(run))
    ]
    await windows.fetch(kv, _source_wants(steps))
    for run, earlier_ms, items, matched in steps:
        await _take_sources(kv, items, run, earlier_ms, windows, matched=matched)
    targets = _Wants()
    for run in runs:
        for item, key in batch.target_windows(run):
            targets.window(item, key)
        if len(targets.windows) + len(targets.counts) >= WINDOWS_PER_READ:
            await windows.fetch(kv, targets)
            targets = _Wants()
    await windows.fetch(kv, targets)
    if not windows.any_open():
        return None
    live = windows.live_rules()

    def check(run: Run, match: Match) -> str | None:
        as_dict: dict[str, Any] = {}
        for item in batch.muters(run, match):
            digest = item.rule.source_digest
            if (digest is None and item.rule.name not in live) or (
                digest is not None and match.rule == digest.rule
            ):
                continue
            if item.rule.equal and not as_dict:
                as_dict = run.as_dict()
            key = _window_key(item.rule.name, _equal_values(as_dict, item.rule.equal))
            if windows.is_open(item, key, run.id):
                return f"inhibited:{item.rule.name}"
        return None

    return check


Seen = tuple[object, ...]  # what a source or target looks at of a run (_fields)
Step = tuple[Run, int, list["_Rule"], Collection[str]]  # a run, earlier_ms, sources, its rules


def _source_wants(steps: Sequence[Step]) -> _Wants:
    """What _take_sources reads for `steps`: the runs' bookkeeping and the windows they open,
    close or count into (a stale run reads some of it for nothing)."""
    wants = _Wants()
    for run, _, items, matched in steps:
        for item in items:
            digest = item.rule.source_digest
            if item.source is not None and item.close is not None:
                wants.windows[key := window_key(item.rule, run)] = item.rule.name
                wants.opened.add(key)
            elif digest is not None and digest.rule in matched:
                wants.counts[window_key(item.rule, run)] = item.rule
            elif digest is not None:
                continue
            wants.sources.add(_source_key(item.rule, run))
            if run.updated_at_ms is not None:
                wants.run_ids.add(run.id)
    return wants


async def _read(kv: KeyValue, namespace: str, keys: set[str]) -> dict[str, str | None]:
    """The stored values of `keys` (None: none stored), in one read."""
    if not keys:
        return {}
    stored = await kv.kv_get_many(namespace, keys)
    return {key: stored.get(key) for key in keys}


class _Batch:
    """The inhibit rules for the runs of one intake call: each rule's matchers evaluated once
    per distinct run fields (of task, tags, status, event: those the rules' source or target
    matchers look at), and each target window once per distinct `equal` values. With the task
    in the key, 5,000 runs of distinct tasks against 50 rules that look at tags and status
    evaluated 500,000 matchers (2 s of event loop). Before that, 4,000 failed runs against 50
    inhibit rules held the event loop for 3 s evaluating every rule's matchers and key for every
    run; most runs of a batch share their task and status. The rules are looked at by the event
    they name first: a batch of runs with every run's task different passed each deployment
    rule's sources by, one by one."""

    def __init__(self, compiled: list[_Rule]) -> None:
        self._compiled = compiled
        self._by_event: dict[str, tuple[list[_Rule], list[_Rule]]] = {}  # (sources, targets)
        self._source_fields = _looked_at([m for i in compiled for m in (i.source, i.close)])
        self._target_fields = _looked_at([item.target for item in compiled])
        self._either = tuple(map(max, self._source_fields, self._target_fields))
        self._muters: dict[tuple[Seen, str, str], list[_Rule]] = {}
        self._sources: dict[Seen, list[_Rule]] = {}
        self._targets: dict[Seen, tuple[list[_Rule], list[tuple[str, ...]]]] = {}  # equals
        self._windows: set[tuple[Seen, tuple[tuple[str, ...], ...]]] = set()

    def sources(self, run: Run) -> list[_Rule]:
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

    def muters(self, run: Run, match: Match) -> list[_Rule]:
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

    def target_windows(self, run: Run) -> list[tuple[_Rule, str]]:
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


def _fields(run: Run, looked_at: tuple[bool, ...]) -> Seen:
    """The fields of `run` that matchers look at (`looked_at`: of task, tags, status, event)."""
    fields = (run.taskIdentifier, tuple(run.tags), run.status, run.event)
    return tuple(value if wanted else None for value, wanted in zip(fields, looked_at, strict=True))


def _looked_at(matchers: Sequence[dict[str, tuple[str, ...]] | None]) -> tuple[bool, ...]:
    """Which of task, tags, status, event any of `matchers` looks at; the event always (the
    rules are looked at by event first)."""
    keys = {key for m in matchers if m is not None for key in m}
    return "task" in keys, "tag" in keys, "status" in keys, True


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
    matched: Collection[str],
) -> None:
    """Open, extend or close the windows `run` is a new source (or closer) of; count it into
    the pile-ups of the digest rules it matches (`matched`: the names of the rules `run`
    matches). `compiled`: the rules `run` opens or closes and the digest rules
    (_Batch.sources)."""
    for item in compiled:
        if item.source is not None or item.closed_by(run):
            if not await windows.stale(kv, run, earlier_ms) and await _news(
                kv, item.rule, run, windows, counted=False
            ):
                await _open_or_close(kv, item, run, windows)
        elif (
            item.rule.source_digest is not None
            and item.rule.source_digest.rule in matched
            and not await windows.stale(kv, run, earlier_ms)
        ):
            await _count(kv, item.rule, run, windows)


async def _open_or_close(kv: KeyValue, item: _Rule, run: Run, windows: _Windows) -> None:
    """A source opens (or extends) its window until now + duration; an update matching
    `close_match` ends an open one now, so its targets go out again (a successful deployment
    after a failed one), unless it happened before the window's newest source."""
    key, now = window_key(item.rule, run), windows.now
    windows.rule_of[key] = item.rule.name
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
        await windows.fetch(kv, _Wants(opened={key}))
    return windows.opened[key]


async def _load(kv: KeyValue, item: _Rule, key: str, windows: _Windows) -> None:
    """The stored window (or pile-up) of `key`, unless this call already has it."""
    if item.source is not None and key not in windows.until:
        await windows.fetch(kv, _Wants(windows={key: item.rule.name}))
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
        await windows.fetch(kv, _Wants(sources={key}))
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
