"""Intake: normalise → observe → match → enqueue, committed before the caller answers.

The store applies the rule set's pure `decide` to each run inside one transaction; the
channels that got new notifications are woken afterwards. Intake never waits on delivery.
With delivery in this process, the loops that have room get their new rows leased in that
same transaction and handed over after it (no claim between the 202 and the send).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from relay.errors import StoreUnavailable
from relay.inhibition import MuteCheck, inhibitions
from relay.model import Decision, Match, Notification, Run, RunState
from relay.rules import RuleSet
from relay.silences.cache import SilenceCache
from relay.silences.index import SilenceIndex, silenced_by
from relay.store import BirthLease, Decide, Observed, Store

log = logging.getLogger("relay.intake")


# The lease of room that delivery loops of this process hold for up to N rows per channel
# created at a time (BirthLease.handed gives the loops what was leased), or None: no room held.
Reserve = Callable[[int, float], BirthLease | None]


@dataclass(frozen=True)
class IntakeResult:
    accepted: int
    stale: int
    notifications: int
    source: str = "http"


class Intake:
    def __init__(
        self,
        store: Store,
        rules: Callable[[], RuleSet],
        wake: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.time,
        silences: SilenceCache | None = None,
        observer: Callable[[IntakeResult, list[Notification]], None] | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self._store = store
        self._rules = rules
        self._wake = wake
        self._clock = clock
        self._silences = silences
        self._observer = observer
        self._reserve = reserve
        self.store_failed_at: float | None = None  # the last commit that failed, until one works

    async def _mute_check(
        self, rules: RuleSet, runs: Sequence[Run], now: float
    ) -> MuteCheck | None:
        """Silences, then the rules' time intervals, then inhibitions; None if nothing mutes."""
        checks: list[MuteCheck] = []
        if self._silences is not None and (active := await self._silences.index(now)):
            checks.append(silence_check(active, now))
        if rules.has_windows:
            checks.append(lambda run, match: rules.by_name[match.rule].time_muted(now))
        if rules.inhibit_rules:
            inhibited = await inhibitions(
                self._store,
                rules.inhibit_rules,
                runs,
                now,
                rules_of=lambda run: {rule.name for rule in rules.evaluate(run)},
            )
            if inhibited is not None:
                checks.append(inhibited)
        return first_reason(checks) if checks else None

    async def submit(self, runs: Sequence[Run], source: str = "http") -> IntakeResult:
        """Commit the runs' new state and owed notifications; raises StoreUnavailable."""
        now = self._clock()
        rules = self._rules()
        mute = await self._mute_check(rules, runs, now)
        decide: Decide = rules.decide if mute is None else muting(rules.decide, mute)
        try:
            observed = await self._observe(runs, decide, now)
        except StoreUnavailable:
            self.store_failed_at = self._clock()
            raise
        self.store_failed_at = None
        channels: set[str] = set()
        stale = created = 0
        for item in observed:
            stale += item.stale
            leased = {n.id for n in item.leased}
            for notification in item.notifications:
                created += 1
                muted = notification.state == "muted"
                if not muted and notification.id not in leased:
                    channels.add(notification.channel)
                # the send is logged at INFO by delivery; a mute explains a non-send, so INFO too
                log.log(
                    logging.INFO if muted else logging.DEBUG,
                    "rule matched; muted" if muted else "rule matched",
                    extra={
                        "run_id": notification.run_id,
                        "rule": notification.rule,
                        "channel": notification.channel,
                        "notification_id": notification.id,
                        "muted_by": notification.reason if muted else None,
                    },
                )
        for channel in channels:
            self._wake(channel)
        result = IntakeResult(len(runs), stale, created, source)
        if self._observer is not None:
            self._observer(result, [n for item in observed for n in item.notifications])
        return result

    async def _observe(self, runs: Sequence[Run], decide: Decide, now: float) -> list[Observed]:
        """store.observe, leasing new rows to the loops that hold room for them. The store
        hands the rows to their loops (`BirthLease.handed`) when the commit is done, even if
        the caller was cancelled meanwhile (a leased row nobody sends would wait out its
        lease), a loop turn after the caller's result: the 202 goes before the sends start."""
        lease = None if self._reserve is None else self._reserve(len(runs), now)
        return await self._store.observe(runs, decide, now, lease)


def muting(decide: Decide, mute: MuteCheck) -> Decide:
    """`decide`, with each match that `mute` names a reason for marked muted (pure).

    Recoveries are left alone: they follow the notification they resolve (muted with it).
    """

    def decide_muted(run: Run, previous: RunState | None) -> Decision:
        decision = decide(run, previous)
        if not decision.matches:
            return decision
        matches = tuple(
            m if m.recovery else replace(m, muted_by=mute(run, m)) for m in decision.matches
        )
        return replace(decision, matches=matches)

    return decide_muted


def silence_check(silences: SilenceIndex, now: float) -> MuteCheck:
    def check(run: Run, match: Match) -> str | None:
        return silenced_by(
            silences,
            now,
            rule=match.rule,
            channel=match.channel,
            task=run.taskIdentifier,
            tags=run.tags,
            status=run.status,
            event=run.event,
            v3_status=run.v3_status,
        )

    return check


def first_reason(checks: Sequence[MuteCheck]) -> MuteCheck:
    def check(run: Run, match: Match) -> str | None:
        for one in checks:
            reason = one(run, match)
            if reason is not None:
                return reason
        return None

    return check
