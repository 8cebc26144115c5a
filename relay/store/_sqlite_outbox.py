"""The outbox work of the SQLite store, run in its writer thread: observing runs (state,
rules, notifications, digest groups), claiming due rows with their groups, leasing new rows at
birth, replaying dead rows and requeueing recoveries."""

from __future__ import annotations

import itertools
import math
import sqlite3

import orjson

from relay.grouping import group_key, group_labels, schedule
from relay.model import GroupState, Match, Notification, Run
from relay.store import BirthLease, Decide, Observed
from relay.store._engines import REPLAY_BATCH, owed_notification, recoveries_of
from relay.store._rows import HAND_BACK, HELD_ORDER, SAME_CLAIM, mute_kind
from relay.store._sqlite_rows import (
    add_event,
    insert_notification,
    load_group,
    load_state,
    save_group,
    save_state,
)

GROUP_CLAIM_LIMIT = 1000  # rows of one digest group a claim takes with it


_DUE = "state = 'pending' AND not_before <= ? AND (lease_until IS NULL OR lease_until <= ?)"


# A replayed alert brings back its recovery, sent meanwhile without it: the recovery follows the
# alert again (waiting for it), so the run does not end on an open alert (a PagerDuty incident
# triggered after its resolve stays open).
REPLAY_RECOVERIES = """
    UPDATE outbox SET state = 'pending', attempts = 0, not_before = ?, lease_until = NULL,
        reason = NULL, last_error = NULL, updated_at = ?
    WHERE +state IN ('sent', 'dead') AND id IN (SELECT value FROM json_each(?))
    RETURNING id
"""  # `+state`: by their ids, not every finished row through outbox_state


def requeue_recoveries(conn: sqlite3.Connection, ids: list[str], now: float) -> int:
    """Move sent or dead recoveries back to pending, each with its 'replayed' event."""
    moved = conn.execute(REPLAY_RECOVERIES, (now, now, orjson.dumps(ids).decode())).fetchall()
    for (ident,) in moved:
        add_event(conn, ident, ("replayed", now, 0, None, None))
    return len(moved)


# Dead rows go back a batch per transaction (replay_named, replay_dead; REPLAY_BATCH): `relay dlq
# replay --all` over 200,000 dead held the write lock 16 s in one transaction, and the `relay
# serve` beside it answered POST /v1/runs 503 (SQLITE_BUSY) once its wait for the lock ran out.
_BACK = f"""
    UPDATE outbox SET state = 'pending', attempts = 0, not_before = :now,
        lease_until = {HAND_BACK}, reason = NULL, last_error = NULL, updated_at = :now"""  # noqa: S608
# `+state`: the named rows found by their ids (the primary key); `state` let SQLite read every
# dead row through outbox_state, for each batch
_NAMED = "+state = 'dead' AND id IN (SELECT value FROM json_each(:ids))"
_REPLAY_NAMED = f"{_BACK} WHERE {_NAMED} RETURNING id"
# The dead digests of the named rows go whole: the rest of their claims (SAME_CLAIM) with them,
# in a statement of its own run only for a digest's rows (it reads every dead row)
_HELD_NAMED = f"{_NAMED} AND lease_until IS NOT NULL"
_ANY_HELD = f"SELECT 1 FROM outbox WHERE {_HELD_NAMED} LIMIT 1"  # noqa: S608
_REPLAY_CLAIMS = f"""{_BACK} WHERE state = 'dead' AND lease_until IS NOT NULL
    AND ({SAME_CLAIM}) IN (SELECT {SAME_CLAIM} FROM outbox WHERE {_HELD_NAMED}) RETURNING id"""  # noqa: S608
# The next batch of the rows dead when the replay began (by their own times: dead by the newest
# death then), in the order they died (the outbox_state index), after the last one of the batch
# before: a row that dies again meanwhile is not taken again, and one whose time is ahead of the
# replay's clock is not left out.
_DEAD_AFTER = """
    SELECT id, updated_at FROM outbox WHERE state = 'dead' AND updated_at <= ?
    AND (updated_at > ? OR (updated_at = ? AND id > ?)) ORDER BY updated_at, id LIMIT ?
"""
_NEWEST_DEAD = "SELECT MAX(updated_at) FROM outbox WHERE state = 'dead'"
# (updated_at, id) of the last row replayed, and the newest death when the replay began
DeadKey = tuple[float, str, float]
FIRST_DEAD: DeadKey | None = (float("-inf"), "", float("nan"))  # nan: the newest not read yet


def replay_named(conn: sqlite3.Connection, ids: list[str], now: float) -> int:
    """Move the dead ones of `ids` back to pending, with the rest of their dead digests and
    the recoveries that follow them (recoveries_of), each with its 'replayed' event."""
    params = {"now": now, "ids": orjson.dumps(ids).decode()}
    moved: list[str] = []
    if conn.execute(_ANY_HELD, params).fetchone():  # a digest's: the rest of it first
        moved += [row[0] for row in conn.execute(_REPLAY_CLAIMS, params)]
    moved += [row[0] for row in conn.execute(_REPLAY_NAMED, params)]
    for ident in moved:
        add_event(conn, ident, ("replayed", now, 0, None, None))
    requeue_recoveries(conn, recoveries_of(moved), now)
    return len(moved)


def replay_dead(conn: sqlite3.Connection, after: DeadKey, now: float) -> tuple[int, DeadKey | None]:
    """replay_named of the next REPLAY_BATCH dead rows after the key `after`: how many moved,
    and the key to go on after (None: this batch was the last)."""
    at, ident, newest = after
    if math.isnan(newest):  # the first batch
        newest = conn.execute(_NEWEST_DEAD).fetchone()[0]
        if newest is None:
            return 0, None
    rows = conn.execute(_DEAD_AFTER, (newest, at, at, ident, REPLAY_BATCH)).fetchall()
    more = (rows[-1][1], rows[-1][0], newest) if len(rows) == REPLAY_BATCH else None
    return replay_named(conn, [row[0] for row in rows], now), more


# A row is due at its not_before, or at its lease's end if later: none is due before the first
# unleased row, so only the rows ahead of it (the leased ones) are read. The MIN over every
# pending row of the channel read them all, through the state index: 200 channels polling a
# 30,000-row backlog kept the one writer busy and the fast channel sent 150 a second.
NEXT_DUE = """
    SELECT MIN(MAX(not_before, COALESCE(lease_until, not_before))) FROM outbox
    WHERE channel = ? AND state = 'pending' AND not_before <= COALESCE((
        SELECT not_before FROM outbox WHERE channel = ? AND state = 'pending'
        AND lease_until IS NULL ORDER BY not_before LIMIT 1
    ), 1e308)
"""


_LEASE = "UPDATE outbox SET lease_until = ?, lease_holder = ?, updated_at = ?"


_CANDIDATES = f"""
    SELECT id, group_key FROM outbox WHERE channel = ? AND {_DUE}
    ORDER BY not_before, created_at, id LIMIT ?
"""  # noqa: S608


_CLAIM_IDS = f"{_LEASE} WHERE id IN (SELECT value FROM json_each(?)) RETURNING *"  # noqa: S608


_GROUP_DUE = f"group_key = ? AND {_DUE}"
_HELD = f"""
    SELECT {HELD_ORDER} FROM outbox WHERE {_GROUP_DUE} AND lease_until IS NOT NULL
    ORDER BY {HELD_ORDER} LIMIT 1
"""  # noqa: S608
# HAND_BACK: a group with rows of an unfinished claim sends that claim's rows again, alone.
_CLAIM_GROUP = f"""
    {_LEASE} WHERE id IN (
        SELECT id FROM outbox WHERE {_GROUP_DUE} AND (
            ? IS NULL OR (ABS(lease_until) = ? AND lease_holder IS ?)
        ) ORDER BY created_at, id LIMIT ?
    ) RETURNING *
"""  # noqa: S608


Lease = tuple[float, str, float]  # lease_until, lease_holder, updated_at


def claim(
    conn: sqlite3.Connection, channel: str, now: float, limit: int, lease: Lease
) -> list[sqlite3.Row]:
    """In the writer thread: the due rows, each digest group among them whole (or the rows of
    its unfinished claim)."""
    due = conn.execute(_CANDIDATES, (channel, now, now, limit)).fetchall()
    singles = orjson.dumps([ident for ident, key in due if key is None]).decode()
    rows: list[sqlite3.Row] = conn.execute(_CLAIM_IDS, (*lease, singles)).fetchall()
    for key in dict.fromkeys(key for _, key in due if key is not None):
        until, holder = conn.execute(_HELD, (key, now, now)).fetchone() or (None, None)
        group = (*lease, key, now, now, until, until, holder, GROUP_CLAIM_LIMIT)
        rows += conn.execute(_CLAIM_GROUP, group).fetchall()
    return rows


def observe(
    conn: sqlite3.Connection, runs: list[Run], decide: Decide, now: float
) -> list[Observed]:
    """In the writer thread: decide each run against its stored state, save it, enqueue."""
    observed: list[Observed] = []
    position = itertools.count()  # of each owed row in the call: its batch order
    for run in runs:
        decision = decide(run, load_state(conn, run.id))
        if decision.stale:
            observed.append(Observed(run.id, stale=True))
            continue
        save_state(conn, run.id, decision.state, now)
        enqueued: list[Notification] = []
        run_dict = run.as_dict() if decision.matches else {}
        for match in decision.matches:
            notification = owed_notification(run, match, run_dict, now, next(position))
            if match.recovery and not _said(conn, notification.resolves):
                continue
            group = _join_group(conn, match, notification, now)
            if insert_notification(conn, notification):
                kind = "created" if match.muted_by is None else "muted"
                reason = None if match.muted_by is None else mute_kind(match.muted_by)
                add_event(conn, notification.id, (kind, now, 0, reason, match.muted_by))
                enqueued.append(notification)
                if group is not None:
                    save_group(conn, *group)
        observed.append(Observed(run.id, stale=False, notifications=enqueued))
    return observed


def lease_at_birth(
    conn: sqlite3.Connection,
    observed: list[Observed],
    lease: BirthLease | None,
    holder: str,
    now: float,
) -> list[Observed]:
    """In the writer thread, after observe: lease the new rows `lease` chooses to `holder`."""
    if lease is None:
        return observed
    conn.executemany(
        "UPDATE outbox SET lease_until = ?, lease_holder = ? WHERE id = ?",
        [(lease.until, holder, ident) for ident in lease.take(observed, now)],
    )
    return observed


def _said(conn: sqlite3.Connection, notification_id: str | None) -> bool:
    """Whether the notification exists and is not muted: something a recovery can resolve."""
    row = conn.execute("SELECT state FROM outbox WHERE id = ?", (notification_id,)).fetchone()
    return row is not None and row[0] != "muted"


def _join_group(
    conn: sqlite3.Connection, match: Match, notification: Notification, now: float
) -> tuple[GroupState, str, str, dict[str, str]] | None:
    """For a digest rule: put the notification in its group, due at the group's next flush."""
    if match.group_by is None or match.timing is None or notification.state != "pending":
        return None
    labels = group_labels(notification.run, match.group_by)
    key = group_key(match.rule, match.channel, labels)
    previous = load_group(conn, key)
    sending = _claimed(conn, match.channel, key, previous, now)
    state = schedule(previous, key, now, match.timing, sending=sending)
    notification.group_key = key
    notification.extra = {**notification.extra, "group_labels": labels}
    notification.not_before = state.next_flush if state.next_flush is not None else now
    return state, match.rule, match.channel, labels


def _claimed(
    conn: sqlite3.Connection, channel: str, key: str, group: GroupState | None, now: float
) -> bool:
    """Whether the group's waiting digest is claimed already although `now` (taken before the
    write) says it is not due: its rows are all due at next_flush, and a claimed one is leased
    (lease_until > 0: one handed back unsent is negative, see HAND_BACK)."""
    if group is None or group.next_flush is None or group.next_flush < now:
        return False
    row = conn.execute(
        "SELECT 1 FROM outbox WHERE channel = ? AND not_before = ? AND group_key = ?"
        " AND state = 'pending' AND lease_until > 0 LIMIT 1",
        (channel, group.next_flush, key),
    ).fetchone()
    return row is not None
