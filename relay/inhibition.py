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

Which rules a run opens, closes or is a target of, and its window's key: relay.inhibit_batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay.inhibit_batch import Batch, Rule, compile_rule, equal_values, key_of, window_key
from relay.model import Match, Run
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

    def window(self, item: Rule, key: str) -> None:
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

    def is_open(self, item: Rule, key: str, run_id: str) -> bool:
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
    compiled = [compile_rule(r) for r in rules]
    batch, windows = Batch(compiled), _Windows(now)
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
            key = key_of(item.rule.name, equal_values(as_dict, item.rule.equal))
            if windows.is_open(item, key, run.id):
                return f"inhibited:{item.rule.name}"
        return None

    return check


Step = tuple[Run, int, list[Rule], Collection[str]]  # a run, earlier_ms, sources, its rules


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


async def _take_sources(
    kv: KeyValue,
    compiled: list[Rule],
    run: Run,
    earlier_ms: int,
    windows: _Windows,
    *,
    matched: Collection[str],
) -> None:
    """Open, extend or close the windows `run` is a new source (or closer) of; count it into
    the pile-ups of the digest rules it matches (`matched`: the names of the rules `run`
    matches). `compiled`: the rules `run` opens or closes and the digest rules
    (Batch.sources)."""
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


async def _open_or_close(kv: KeyValue, item: Rule, run: Run, windows: _Windows) -> None:
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
    kv: KeyValue, item: Rule, key: str, run: Run, windows: _Windows
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


async def _load(kv: KeyValue, item: Rule, key: str, windows: _Windows) -> None:
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
