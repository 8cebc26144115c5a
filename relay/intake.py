"""Intake: normalise → observe → match → enqueue, committed before the caller answers.

The store applies the rule set's pure `decide` to each run inside one transaction; the
channels that got new notifications are woken afterwards. Intake never waits on delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from relay.model import Decision, Run, RunState, Silence
from relay.rules import RuleSet
from relay.silences import SilenceCache, silenced_by
from relay.store import Decide, Store

log = logging.getLogger("relay.intake")


@dataclass(frozen=True)
class IntakeResult:
    accepted: int
    stale: int
    notifications: int


class Intake:
    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        wake: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        silences: SilenceCache | None = None,
    ) -> None:
        self._store = store
        self._rules = rules
        self._wake = wake
        self._clock = clock
        self._silences = silences

    async def submit(self, runs: Sequence[Run]) -> IntakeResult:
        """Commit the runs' new state and owed notifications; raises StoreUnavailable."""
        now = self._clock()
        decide: Decide = self._rules().decide
        if self._silences is not None:
            active = await self._silences.current(now)
            if active:
                decide = muting(decide, active, now)
        observed = await self._store.observe(runs, decide, now)
        channels: set[str] = set()
        stale = created = 0
        for item in observed:
            stale += item.stale
            for notification in item.notifications:
                created += 1
                muted = notification.state == "muted"
                if not muted:
                    channels.add(notification.channel)
                log.info(
                    "rule matched; muted by a silence" if muted else "rule matched",
                    extra={
                        "run_id": notification.run_id,
                        "rule": notification.rule,
                        "channel": notification.channel,
                        "notification_id": notification.id,
                        "silence": notification.reason if muted else None,
                    },
                )
        for channel in channels:
            self._wake(channel)
        return IntakeResult(len(runs), stale, created)


def muting(decide: Decide, silences: Sequence[Silence], now: float) -> Decide:
    """`decide`, with each match that an active silence covers marked muted (pure)."""

    def decide_muted(run: Run, previous: RunState | None) -> Decision:
        decision = decide(run, previous)
        if not decision.matches:
            return decision
        matches = tuple(
            replace(m, muted_by=_silence_for(silences, now, run, m.rule, m.channel))
            for m in decision.matches
        )
        return replace(decision, matches=matches)

    return decide_muted


def _silence_for(
    silences: Sequence[Silence], now: float, run: Run, rule: str, channel: str
) -> str | None:
    return silenced_by(
        silences,
        now,
        rule=rule,
        channel=channel,
        task=run.taskIdentifier,
        tags=run.tags,
        status=run.status,
        event=run.event,
    )
