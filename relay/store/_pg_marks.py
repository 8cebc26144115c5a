"""The PostgreSQL store's marks of claimed rows after a try: sent, retry, dead, muted, held, put
off (postpone) or brought forward (hasten), each with its event, in one statement, fenced so
that a replica frozen mid-send changes only the rows it still holds, and a repeated failure's
mark only once (HELD, ONCE): PgMarks, those PostgresStore methods. Sent marks made while others
commit go in one statement together (relay.store._pg_batches): a channel's sends end one after
the other, and each mark alone cost a round trip and a commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.store import Tries
from relay.store._pg_batches import Batches
from relay.store._pg_pool import PgPool
from relay.store._pg_rows import UPDATE_PENDING, clean, clean_opt, rows_params
from relay.store._rows import HAND_BACK, RowsEvent, mute_kind

# A row put off unsent (not keeping its claim) joins its group's next digest when one is due
# later: put off from this replica's clock, it came due a few ms after the one another replica
# had just set, and went beside it.
_POSTPONE = f"""
    UPDATE relay_outbox SET not_before = CASE WHEN $5::boolean THEN $2 ELSE COALESCE((
            SELECT g.next_flush FROM relay_groups AS g
            WHERE g.key = relay_outbox.group_key AND g.next_flush > $3), $2) END,
        lease_until = CASE WHEN $5::boolean THEN {HAND_BACK} END, updated_at = $3
    WHERE id = $1 AND state = 'pending' AND COALESCE(lease_holder, $4) = $4
"""  # noqa: S608
_HASTEN = """
    UPDATE relay_outbox SET not_before = $2, updated_at = $2
    WHERE id = $1 AND state = 'pending' AND lease_until IS NULL AND not_before > $2
"""
# A lease negated (HAND_BACK: a digest's rows given back) or past is no one's. Due when created
# (never later than now: another replica's clock), not now: claims go by due time, then
# creation, and made due now the oldest failures went after every row never tried that fell
# due during the outage. Due that early, they go before any row due since, once: a try spends
# an attempt, and its failure's backoff puts the row in the future again.
_HASTEN_RETRIES = """
    UPDATE relay_outbox SET not_before = LEAST(created_at, $2), updated_at = $2
    WHERE channel = $1 AND state = 'pending' AND not_before > $2 AND attempts > 0
        AND (lease_until IS NULL OR lease_until <= $2)
        AND reason IS DISTINCT FROM 'rate_limited'
"""
_START_AFRESH = """
    UPDATE relay_outbox SET not_before = LEAST(created_at, $2), updated_at = $2
    WHERE channel = $1 AND state = 'pending' AND not_before > $2
        AND (lease_until IS NULL OR lease_until <= $2)
        AND (attempts > 0 OR group_key IS NULL)
"""
# A replica frozen mid-send (a VM pause, a long GC) is taken for dead and its rows sent again
# by another: thawed, it may change a row only while it still holds it. Its failure (retry,
# dead), mute or postponement landed on the other's lease: a retry handed that lease back, for
# a third send while the second was in flight; dead killed a row the other then delivered (its
# `sent` found it dead). A send is recorded whoever holds the row: it went out. A row nobody
# holds (never claimed, or released) stays free to change.
HELD = " AND COALESCE(relay_outbox.lease_holder, ${n}) = ${n}"
# A failure's mark committed, its reply lost, is written again (Outcomes' write through
# blips, 0.25 s and more later; 30 s when the reply never came): meanwhile a backoff as short
# as min_backoff allows (a few ms) made the row due, and this replica, its holder still, claimed it
# again. The repeat released that claim mid-send, for a third send, and set attempts back. A
# send tries at least once, so each failure's mark raises attempts: a row whose attempts reached
# the mark's was marked already, by this write or a later claim's. A mark also hands the lease
# back (HAND_BACK: none, or negative), as a replay does, which sets attempts back to 0: a row
# claimed once and not leased now was marked already, and maybe replayed since (the repeat
# killed it again). A row never claimed (no holder) stays free to change, as HELD says.
ONCE = (
    " AND relay_outbox.attempts < g.tries"
    " AND (relay_outbox.lease_until > 0 OR relay_outbox.lease_holder IS NULL)"
)

# Sent whoever holds the row (it went out; see HELD), each row with its own call's time, receipt
# and error: the sent marks of several sends, one statement.
_SENT = """
    WITH changed AS (
        UPDATE relay_outbox SET state = 'sent', attempts = g.tries, lease_until = NULL,
            reason = NULL, receipt = g.receipt, last_error = COALESCE(g.error, last_error),
            updated_at = g.at
        FROM unnest($1::text[], $2::integer[], $3::float8[], $4::text[], $5::text[])
            AS g(nid, tries, at, receipt, error)
        WHERE relay_outbox.id = g.nid AND relay_outbox.state = 'pending'
        RETURNING relay_outbox.id, g.tries, g.at
    )
    INSERT INTO relay_events (notification_id, kind, at, attempts)
    SELECT id, 'sent', at, tries FROM changed
"""
SENT_LANES = 2  # statements of sent marks at once, of the pool's 10 connections
SENT_MAX_ROWS = 1000  # rows of the marks that go together (a larger mark goes alone)

_MARKED_HERE = """
    SELECT o.id FROM relay_outbox o JOIN unnest($1::text[], $2::integer[]) AS g(nid, tries)
    ON o.id = g.nid WHERE o.attempts = g.tries AND o.state = $3 AND o.lease_holder = $4
"""


@dataclass(frozen=True)
class SentMark:
    """One Store.mark_sent call: the rows of one message, their time, receipt and error."""

    rows: Tries
    now: float
    receipt: str | None
    error: str | None


def _mark_rows(mark: SentMark) -> int:
    return len(mark.rows)


class PgMarks(PgPool):
    """Store.mark_*, marked_here, postpone and hasten of PostgresStore."""

    _sent: Batches[SentMark, None] | None = None  # made on the first mark, in the event loop

    async def mark_sent(
        self, rows: Tries, *, now: float, receipt: str | None = None, error: str | None = None
    ) -> None:
        """Committed with the marks made meanwhile (one statement, see _SENT)."""
        if self._sent is None:
            self._sent = Batches(
                self._mark_sent, lanes=SENT_LANES, max_size=SENT_MAX_ROWS, size=_mark_rows
            )
        await self._sent.run(SentMark(rows, now, receipt, error))

    async def _mark_sent(self, marks: Sequence[SentMark]) -> list[None]:
        rows = [(mark, ident, tries) for mark in marks for ident, tries in mark.rows]
        await self._execute(
            _SENT,
            [clean(ident) for _, ident, _ in rows],
            [tries for _, _, tries in rows],
            [mark.now for mark, _, _ in rows],
            [clean_opt(mark.receipt) for mark, _, _ in rows],
            [clean_opt(mark.error) for mark, _, _ in rows],
        )
        return [None] * len(marks)

    async def marks_drained(self, timeout_s: float) -> None:
        """Once the sent marks queued so far are committed (or failed)."""
        if self._sent is not None:
            await self._sent.drained(timeout_s)

    async def postpone(
        self, notification_id: str, *, now: float, not_before: float, keep_claim: bool = True
    ) -> bool:
        status = await self._execute(
            _POSTPONE,
            clean(notification_id),
            not_before,
            now,
            self.holder,
            keep_claim,
        )
        return status == "UPDATE 1"

    async def hasten(self, notification_id: str, *, now: float) -> bool:
        return await self._execute(_HASTEN, clean(notification_id), now) == "UPDATE 1"

    async def hasten_retries(self, channel: str, *, now: float) -> int:
        return await self._due_now(_HASTEN_RETRIES, channel, now)

    async def start_afresh(self, channel: str, *, now: float) -> int:
        return await self._due_now(_START_AFRESH, channel, now)

    async def _due_now(self, update: str, channel: str, now: float) -> int:
        """How many rows of `channel` the UPDATE `update` made due at `now`."""
        status = await self._execute(update, clean(channel), now)
        return int(status.rsplit(" ", 1)[-1])

    async def mark_retry(
        self, rows: Tries, *, now: float, not_before: float, reason: str, error: str
    ) -> set[str]:
        return await self._update(
            "not_before = $7, attempts = g.tries, reason = $5, last_error = $6,"
            f" lease_until = {HAND_BACK}, updated_at = $4",
            rows,
            ("retry", now, reason, error),
            not_before,
            held=True,
            once=True,
        )

    async def mark_dead(self, rows: Tries, *, now: float, reason: str, error: str) -> set[str]:
        return await self._update(
            "state = 'dead', attempts = g.tries, reason = $5, last_error = $6,"
            f" lease_until = {HAND_BACK}, updated_at = $4",
            rows,
            ("dead", now, reason, error),
            held=True,
            once=True,
        )

    async def marked_here(self, rows: Tries, state: str) -> set[str]:
        found = await self._fetch(
            _MARKED_HERE, [clean(i) for i, _ in rows], [t for _, t in rows], state, self.holder
        )
        return {row["id"] for row in found}

    async def mark_muted(
        self, notification_id: str, *, now: float, silence_id: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'muted', reason = $6, lease_until = NULL, updated_at = $4",
            [(notification_id, attempts)],
            ("muted", now, mute_kind(silence_id), silence_id),
            held=True,
        )
        return bool(changed)

    async def mark_held(
        self, notification_id: str, *, now: float, reason: str, error: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'dead', reason = $5, last_error = $6, lease_until = NULL, updated_at = $4",
            [(notification_id, attempts)],
            ("dead", now, reason, error),
            held=True,
        )
        return bool(changed)

    async def _update(
        self,
        assignments: str,
        rows: Tries,
        event: RowsEvent,
        *more: Any,
        held: bool = False,
        once: bool = False,
    ) -> set[str]:
        """Change the pending rows of one message and log each one's event, in one statement
        (all of them or none; $1..$6 rows and event, then `more`); `held`: only those this
        replica still holds (HELD, its holder the last parameter); `once`: only those the
        mark's attempts advance (ONCE). The ids it changed."""
        fence = (HELD.format(n=7 + len(more)) if held else "") + (ONCE if once else "")
        sql = UPDATE_PENDING.format(assignments=assignments, fence=fence)
        holder = [self.holder] if held else []
        changed = await self._fetch(sql, *rows_params(rows, event), *more, *holder)
        return {row["notification_id"] for row in changed}
