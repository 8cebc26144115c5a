"""The SQLite store's marks of claimed rows after a try: sent, retry, dead, muted, held, put
off (postpone) or brought forward (hasten), each with its event, in one op of the writer:
MarkOps, those SQLiteStore methods."""

from __future__ import annotations

import sqlite3

from relay.store import Tries
from relay.store._rows import HAND_BACK, RowsEvent, mute_kind
from relay.store._sqlite_rows import add_event
from relay.store._sqlite_writer import Writer

_MARKED_HERE = (
    "SELECT 1 FROM outbox WHERE id = ? AND attempts = ? AND state = ? AND lease_holder IS ?"
)
# A row put off unsent joins its group's next digest when one is due later (see _pg_marks.py).
_POSTPONE = f"""
    UPDATE outbox SET not_before = CASE WHEN :keep THEN :not_before ELSE COALESCE((
            SELECT g.next_flush FROM groups AS g
            WHERE g.key = outbox.group_key AND g.next_flush > :now), :not_before) END,
        lease_until = CASE WHEN :keep THEN {HAND_BACK} END, updated_at = :now
    WHERE id = :id AND state = 'pending'
"""  # noqa: S608
_HASTEN = """
    UPDATE outbox SET not_before = ?, updated_at = ?
    WHERE id = ? AND state = 'pending' AND lease_until IS NULL AND not_before > ?
"""

# A lease negated (HAND_BACK: a digest's rows given back) or past is no one's. Due when created
# (not now): claims go by due time, and a row due now went after every row never tried that
# fell due during the outage, the oldest failures last (see _pg_marks.py). A row a 429 put
# off keeps its time: the receiver's Retry-After, which another process (a restart after
# kill -9, a replica) ending an outage knows nothing of.
_HASTEN_RETRIES = """
    UPDATE outbox SET not_before = MIN(created_at, :now), updated_at = :now
    WHERE channel = :channel AND state = 'pending' AND not_before > :now AND attempts > 0
        AND (lease_until IS NULL OR lease_until <= :now)
        AND COALESCE(reason, '') <> 'rate_limited'
"""
_START_AFRESH = """
    UPDATE outbox SET not_before = MIN(created_at, :now), updated_at = :now
    WHERE channel = :channel AND state = 'pending' AND not_before > :now
        AND (lease_until IS NULL OR lease_until <= :now)
        AND (attempts > 0 OR group_key IS NULL)
"""


class MarkOps:
    """Store.mark_*, marked_here, postpone and hasten of SQLiteStore."""

    _writer: Writer
    _holder: str

    async def mark_sent(
        self, rows: Tries, *, now: float, receipt: str | None = None, error: str | None = None
    ) -> None:
        await self._update(
            "state = 'sent', attempts = :attempts, lease_until = NULL, reason = NULL,"
            " receipt = :receipt, last_error = COALESCE(:error, last_error), updated_at = :now",
            {"receipt": receipt, "error": error, "now": now},
            rows,
            ("sent", now, None, None),
        )

    async def postpone(
        self, notification_id: str, *, now: float, not_before: float, keep_claim: bool = True
    ) -> bool:
        values = {"not_before": not_before, "keep": keep_claim, "now": now, "id": notification_id}
        return await self._writer.run(lambda conn: conn.execute(_POSTPONE, values).rowcount == 1)

    async def hasten(self, notification_id: str, *, now: float) -> bool:
        return await self._writer.run(
            lambda conn: conn.execute(_HASTEN, (now, now, notification_id, now)).rowcount == 1
        )

    async def hasten_retries(self, channel: str, *, now: float) -> int:
        return await self._due_now(_HASTEN_RETRIES, channel, now)

    async def start_afresh(self, channel: str, *, now: float) -> int:
        return await self._due_now(_START_AFRESH, channel, now)

    async def _due_now(self, update: str, channel: str, now: float) -> int:
        """How many rows of `channel` the UPDATE `update` made due at `now`."""
        values = {"now": now, "channel": channel}
        return await self._writer.run(lambda conn: conn.execute(update, values).rowcount)

    async def mark_retry(
        self, rows: Tries, *, now: float, not_before: float, reason: str, error: str
    ) -> set[str]:
        return await self._update(
            "not_before = :not_before, attempts = :attempts, reason = :reason,"
            f" last_error = :error, lease_until = {HAND_BACK}, updated_at = :now",
            {"not_before": not_before, "reason": reason, "error": error, "now": now},
            rows,
            ("retry", now, reason, error),
        )

    async def mark_dead(self, rows: Tries, *, now: float, reason: str, error: str) -> set[str]:
        return await self._update(
            "state = 'dead', attempts = :attempts, reason = :reason, last_error = :error,"
            f" lease_until = {HAND_BACK}, updated_at = :now",
            {"reason": reason, "error": error, "now": now},
            rows,
            ("dead", now, reason, error),
        )

    async def marked_here(self, rows: Tries, state: str) -> set[str]:
        def marked(conn: sqlite3.Connection) -> set[str]:
            return {
                id_
                for id_, attempts in rows
                if conn.execute(_MARKED_HERE, (id_, attempts, state, self._holder)).fetchone()
            }

        return await self._writer.run(marked)

    async def mark_muted(
        self, notification_id: str, *, now: float, silence_id: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'muted', reason = :silence, lease_until = NULL, updated_at = :now",
            {"silence": silence_id, "now": now},
            [(notification_id, attempts)],
            ("muted", now, mute_kind(silence_id), silence_id),
        )
        return bool(changed)

    async def mark_held(
        self, notification_id: str, *, now: float, reason: str, error: str, attempts: int
    ) -> bool:
        changed = await self._update(
            "state = 'dead', reason = :reason, last_error = :error, lease_until = NULL,"
            " updated_at = :now",
            {"reason": reason, "error": error, "now": now},
            [(notification_id, attempts)],
            ("dead", now, reason, error),
        )
        return bool(changed)

    async def _update(
        self, assignments: str, params: dict[str, object], rows: Tries, event: RowsEvent
    ) -> set[str]:
        """Update the pending rows of one message and record each one's event (with its
        attempts, `:attempts`), in one writer op: all of them or none (a failing op rolls back
        whole). Finished rows are left alone; the ids it changed."""
        sql = f"UPDATE outbox SET {assignments} WHERE id = :id AND state = 'pending'"  # noqa: S608
        kind, at, reason, detail = event

        def update(conn: sqlite3.Connection) -> set[str]:
            changed = set()
            for id_, attempts in rows:
                if conn.execute(sql, {**params, "id": id_, "attempts": attempts}).rowcount == 1:
                    add_event(conn, id_, (kind, at, attempts, reason, detail))
                    changed.add(id_)
            return changed

        return await self._writer.run(update)
