"""What both engines share when they write the outbox: the row a match owes
(owed_notification, in its batch's order), the recoveries that follow replayed rows, the record
of the digest timings in force, and telling a birth lease's caller which rows it got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from relay.grouping import TIMINGS_NS, timing_value
from relay.model import Match, Notification, Run, Timing, notification_id, recovery_id
from relay.store import BirthLease, KvWrite, Observed


def timings_write(timings: Mapping[str, Timing]) -> KvWrite:
    """Store.retime_groups' record of the timings now in force (those of removed rules go)."""
    put = [(TIMINGS_NS, rule, timing_value(timing)) for rule, timing in timings.items()]
    return KvWrite(put=put, clear=[TIMINGS_NS])


def hand_over(lease: BirthLease, observed: Sequence[Observed] | None) -> None:
    """Tell `lease.handed` the rows leased in `observed` (None: the call committed nothing),
    a loop turn later. In the event loop's thread."""
    leased = [] if observed is None else [n for item in observed for n in item.leased]
    asyncio.get_running_loop().call_soon(lease.handed, leased)


# Dead rows go back a batch per transaction (each with the rest of its dead digest and the
# recoveries that follow them), so that intake goes on between them (Store.replay)
REPLAY_BATCH = 1000


def recoveries_of(replayed: Sequence[str]) -> list[str]:
    """The ids of the recoveries that follow the replayed notifications (most have none). A
    replayed alert brings its recovery back too: sent while the alert was dead, it would
    otherwise come before the alert, and the run would end on an open alert."""
    return [recovery_id(ident) for ident in replayed]


# The rows of one `observe` call (a POST's batch, a Realtime batch) share its `now`, and their ids
# are hashes: claimed by (not_before, created_at, id), a batch went out in an order of its own (a
# rate-limited channel sent 20 runs as 11 18 09 17 03 ...). So the row at position k of the call
# is created at `now + k * BATCH_STEP_S`: its batch's order, oldest first. Its not_before stays
# `now`: the batch is due at once (a claim or a birth lease at `now` takes every row), and each
# later call's rows still come after the whole batch (a later now). A microsecond is about four
# steps of a float64 near today's epoch seconds (2**-22 s), two past 2038: still apart.
BATCH_STEP_S = 1e-6


def owed_notification(
    run: Run, match: Match, run_dict: dict[str, Any], now: float, position: int
) -> Notification:
    """The outbox row `match` asks for, the `position`-th of its observe call (see
    BATCH_STEP_S). Its id is stable: derived from run, rule and channel, or
    for a recovery from the id of the notification it resolves (kept in `extra["resolves"]`).

    Engines enqueue a recovery only when that notification exists and is not muted: nothing
    was said that a recovery could resolve.
    """
    ident = notification_id(run.id, match.rule, match.channel)
    extra: dict[str, Any] = {}
    if match.recovery:
        ident, extra = recovery_id(ident), {"resolves": ident}
    return Notification(
        id=ident,
        run_id=run.id,
        rule=match.rule,
        channel=match.channel,
        template=match.template,
        run=run_dict,
        created_at=now + position * BATCH_STEP_S,
        not_before=now,
        state="pending" if match.muted_by is None else "muted",
        reason=match.muted_by,
        extra=extra,
    )
