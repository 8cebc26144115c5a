"""Rows → model objects, for both engines: the outbox and silence columns have the same names
in SQLite and PostgreSQL, and sqlite3.Row and asyncpg.Record are both read by column name."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from relay.model import Notification, Silence

# The event every row of one message's outcome gets: kind, at, reason, detail (each row's
# attempts are its own).
RowsEvent = tuple[str, float, str | None, str | None]


def mute_kind(muted_by: str) -> str:
    """The `reason` of a `muted` event: "silence" for a silence id, else the prefix of the mute
    reason (time_interval, inhibited); its `detail` is the whole reason."""
    return muted_by.split(":", 1)[0] if ":" in muted_by else "silence"


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def to_notification(row: Row) -> Notification:
    """The Notification an outbox row holds."""
    extra: dict[str, Any] = orjson.loads(row["extra_json"]) if row["extra_json"] else {}
    return Notification(
        id=row["id"],
        run_id=row["run_id"],
        rule=row["rule"],
        channel=row["channel"],
        template=row["template"],
        run=orjson.loads(row["run_json"]),
        created_at=row["created_at"],
        attempts=row["attempts"],
        not_before=row["not_before"],
        state=row["state"],
        reason=row["reason"],
        last_error=row["last_error"],
        extra=extra,
        group_key=row["group_key"],
        receipt=row["receipt"],
        updated_at=row["updated_at"],
    )


def to_silence(row: Row) -> Silence:
    matchers = {k: tuple(v) for k, v in orjson.loads(row["matchers_json"]).items()}
    return Silence(
        id=row["id"],
        matchers=matchers,
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        created_at=row["created_at"],
        comment=row["comment"],
        created_by=row["created_by"],
    )


# A digest's rows given back unsent (a stop cut its send short, a retry, a restart after kill -9)
# keep their claim's lease negated: ended (<= any `now`, as older relays read it too), yet the
# rows of that one claim still share it. The group's next claim takes those rows alone
# (HELD_FIRST), so the digest goes again with its runs and so its id; runs that came due
# meanwhile go in the next one. A single row needs no such mark: NULL, as before.
HAND_BACK = "CASE WHEN group_key IS NULL THEN NULL ELSE -ABS(lease_until) END"
# The rows of a waiting digest a reload may re-time (Store.retime_groups): not claimed, not
# tried yet (a retry keeps its backoff); its due time comes after.
RETIMABLE = "state = 'pending' AND attempts = 0 AND (lease_until IS NULL OR lease_until <= 0)"
# The unfinished claim a group's claim sends again: of its due rows with a lease (handed back,
# or taken from a dead holder), the claim that sorts first; rows match it by these columns.
HELD_ORDER = "ABS(lease_until), lease_holder"
# A digest gone dead keeps that mark too, and its replay keeps it: the digest goes again alone,
# with its runs and so its id, not merged with another dead digest of its group replayed with
# it nor with runs due meanwhile. A replay naming one of its rows brings back the others (the
# dead rows of the same claim: SAME_CLAIM). Older relays read the mark as no lease.
SAME_CLAIM = "group_key, lease_until, lease_holder"


def lease_end(ttl_s: float, now: float) -> float:
    """The expires_at of a named lease taken for `ttl_s` at `now`. One handed back (`ttl_s` 0)
    ends at the epoch, not `now`: free at once on any clock, also after a wall clock stepped
    back (a Slack thread's next message waited out the step, polling, holding a send slot)."""
    return now + ttl_s if ttl_s > 0 else 0.0
