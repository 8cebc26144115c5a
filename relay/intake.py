"""Intake: normalise → observe → match → enqueue, committed before the caller answers.

The store applies the rule set's pure `decide` to each run inside one transaction; the
channels that got new notifications are woken afterwards. Intake never waits on delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.model import Run
from relay.rules import RuleSet
from relay.store import Store

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
    ) -> None:
        self._store = store
        self._rules = rules
        self._wake = wake
        self._clock = clock

    async def submit(self, runs: Sequence[Run]) -> IntakeResult:
        """Commit the runs' new state and owed notifications; raises StoreUnavailable."""
        observed = await self._store.observe(runs, self._rules().decide, self._clock())
        channels: set[str] = set()
        stale = created = 0
        for item in observed:
            stale += item.stale
            for notification in item.notifications:
                created += 1
                channels.add(notification.channel)
                log.info(
                    "rule matched",
                    extra={
                        "run_id": notification.run_id,
                        "rule": notification.rule,
                        "channel": notification.channel,
                        "notification_id": notification.id,
                    },
                )
        for channel in channels:
            self._wake(channel)
        return IntakeResult(len(runs), stale, created)
