"""Store.observe on PostgreSQL: the calls of one transaction, safe between replicas.

The same run may reach several replicas at once (two ingest paths, a retried POST, a Realtime
feed changing hands). Whoever observes a run holds its transaction-level advisory lock until
commit, so transition detection reads the state the previous observer committed (READ COMMITTED
takes a fresh snapshot per statement, after the lock was granted) and a rule fires once. The lock
exists even before the run's row does; rows that exist are also locked FOR UPDATE, which
serialises observe with retention's DELETE. Digest groups are locked the same way, so a group's
schedule is read and written by one observer at a time.

Locks are taken in one order — every run of the call, sorted by key, then every group, sorted —
so two observers never wait on each other in a cycle. The work is set-based, whatever the number
of runs: BEGIN, the run locks, the run states, one statement for every write (states, outbox rows
and their `created` events, groups), COMMIT. Digest rules add two reads (which notifications
exist already, the groups' schedules) because a group's schedule depends on them. Calls that
arrive together share one transaction (relay.store._pg_batches), each with its own `decide`,
time and birth lease (ObserveCall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from relay.grouping import group_key, group_labels, schedule
from relay.model import Decision, GroupState, Match, Notification, Run, RunState
from relay.store import BirthLease, Decide, Observed
from relay.store._engines import hand_over, owed_notification
from relay.store._pg_rows import FIRED_SEPARATOR, clean, clean_opt, to_group, to_state
from relay.store._pg_schema import lock_key

_LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"
# $1-$6 run states, $7 now, $8-$19 notifications, $20-$26 groups: arrays, one element a row.
_WRITE = """
    WITH saved AS (
        INSERT INTO relay_runs AS r
            (run_id, updated_at_ms, status, fired, cost_cents, duration_ms, seen_at)
        SELECT u.*, $7::float8
        FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[], $6::float8[])
            AS u
        ON CONFLICT (run_id) DO UPDATE SET
            updated_at_ms = excluded.updated_at_ms, status = excluded.status,
            fired = excluded.fired, cost_cents = excluded.cost_cents,
            duration_ms = excluded.duration_ms, seen_at = excluded.seen_at
    ), queued AS (
        INSERT INTO relay_outbox (id, run_id, rule, channel, template, run_json, created_at,
            not_before, state, reason, updated_at, extra_json, group_key)
        SELECT u.id, u.run_id, u.rule, u.channel, u.template, u.run_json, u.created_at,
            u.not_before, u.state, u.reason, $7, u.extra_json, u.group_key
        FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::bytea[], $14::float8[], $15::float8[], $16::text[], $17::text[], $18::bytea[],
            $19::text[])
            AS u(id, run_id, rule, channel, template, run_json, created_at, not_before, state,
                 reason, extra_json, group_key)
        ON CONFLICT (id) DO NOTHING
        RETURNING id, state, reason
    ), logged AS (
        INSERT INTO relay_events (notification_id, kind, at, attempts, reason, detail)
        SELECT id, CASE WHEN state = 'muted' THEN 'muted' ELSE 'created' END, $7, 0,
            CASE WHEN state <> 'muted' THEN NULL WHEN strpos(reason, ':') > 0
                THEN split_part(reason, ':', 1) ELSE 'silence' END,
            CASE WHEN state = 'muted' THEN reason END
        FROM queued
    ), grouped AS (
        INSERT INTO relay_groups AS g
            (key, rule, channel, labels_json, next_flush, last_sent, last_seen)
        SELECT * FROM unnest($20::text[], $21::text[], $22::text[], $23::text[],
            $24::float8[], $25::float8[], $26::float8[])
        ON CONFLICT (key) DO UPDATE SET next_flush = excluded.next_flush,
            last_sent = excluded.last_sent, last_seen = excluded.last_seen
    )
    SELECT id FROM queued
"""


# A waiting digest's rows are all due at the group's next_flush; leased, one is being sent (a
# birth lease never takes a grouped row; one handed back unsent has a negative lease_until, see
# HAND_BACK). By the due index: not every row the group ever had.
_CLAIMED = """
    SELECT DISTINCT o.group_key FROM unnest($1::text[], $2::text[], $3::float8[]) AS w(k, c, f)
    JOIN relay_outbox AS o ON o.channel = w.c AND o.not_before = w.f AND o.group_key = w.k
    WHERE o.state = 'pending' AND o.lease_until > 0
"""


@dataclass
class _Owed:
    """A notification `decide` asked for, and the Observed it belongs to."""

    index: int
    match: Match
    notification: Notification


@dataclass
class _Group:
    state: GroupState
    rule: str
    channel: str
    labels: dict[str, str]


async def observe(
    conn: asyncpg.Connection, runs: Sequence[Run], decide: Decide, now: float
) -> list[Observed]:
    """Inside the caller's transaction: decide each run against its state, save, enqueue."""
    keys = sorted({clean(run.id) for run in runs})
    await _lock(conn, "run", keys)
    rows = await conn.fetch(
        "SELECT * FROM relay_runs WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE", keys
    )
    states: dict[str, RunState] = {row["run_id"]: to_state(row) for row in rows}
    changed: dict[str, RunState] = {}
    observed: list[Observed] = []
    owed: list[_Owed] = []
    for run in runs:
        key = clean(run.id)
        decision = decide(run, states.get(key))
        if decision.stale:
            observed.append(Observed(run.id, stale=True))
            continue
        states[key] = changed[key] = decision.state
        run_dict = run.as_dict() if decision.matches else {}
        for match in decision.matches:  # each row's position in the call: its batch order
            notification = owed_notification(run, match, run_dict, now, len(owed))
            owed.append(_Owed(len(observed), match, notification))
        observed.append(Observed(run.id, stale=False))
    owed = await _said(conn, _first_of_each(owed))
    groups: dict[str, _Group] = {}
    if any(_grouped(item) for item in owed):  # a schedule only for notifications that are new
        owed = await _not_queued(conn, owed)
        groups = await _join_groups(conn, [item for item in owed if _grouped(item)], now)
    if not changed:
        return observed
    queued = await conn.fetch(_WRITE, *_state_arrays(changed), now, *_arrays(owed, groups))
    new = {row["id"] for row in queued}
    for item in owed:
        if item.notification.id in new:
            observed[item.index].notifications.append(item.notification)
    return observed


async def lease_at_birth(
    conn: asyncpg.Connection,
    observed: list[Observed],
    lease: BirthLease | None,
    holder: str,
    now: float,
) -> list[Observed]:
    """Inside the caller's transaction, after observe: lease the new rows `lease` chooses to
    `holder` (a claim's lease: no other replica takes them while it lasts and holder lives)."""
    if lease is None:
        return observed
    if ids := lease.take(observed, now):
        await conn.execute(
            "UPDATE relay_outbox SET lease_until = $1, lease_holder = $3"
            " WHERE id = ANY($2::text[])",
            lease.until,
            ids,
            holder,
        )
    return observed


def _first_of_each(owed: list[_Owed]) -> list[_Owed]:
    seen: set[str] = set()
    first = []
    for item in owed:
        if item.notification.id not in seen:
            seen.add(item.notification.id)
            first.append(item)
    return first


async def _said(conn: asyncpg.Connection, owed: list[_Owed]) -> list[_Owed]:
    """The owed notifications without the recoveries of notifications that do not exist or were
    muted: nothing was said that they could resolve. Race-free like _not_queued (the run lock)."""
    resolved = [n.resolves for item in owed if (n := item.notification).resolves is not None]
    if not resolved:
        return owed
    states = {item.notification.id: item.notification.state for item in owed}
    rows = await conn.fetch(
        "SELECT id, state FROM relay_outbox WHERE id = ANY($1::text[])", resolved
    )
    states.update({row["id"]: row["state"] for row in rows})
    return [
        item
        for item in owed
        if (firing := item.notification.resolves) is None or states.get(firing, "muted") != "muted"
    ]


def _grouped(item: _Owed) -> bool:
    match = item.match
    return (
        match.group_by is not None
        and match.timing is not None
        and item.notification.state == "pending"
    )


async def _lock(conn: asyncpg.Connection, kind: str, names: list[str]) -> None:
    """Take the transaction's advisory locks on `names`, always in the same (sorted) order."""
    if names:
        await conn.execute(_LOCK, sorted({lock_key(kind, name) for name in names}))


async def _not_queued(conn: asyncpg.Connection, owed: list[_Owed]) -> list[_Owed]:
    """The owed notifications not enqueued before.

    Every notification id belongs to one run, and this transaction holds that run's lock, so no
    one else can insert these ids before we commit: reading them first is race-free.
    """
    ids = [item.notification.id for item in owed]
    rows = await conn.fetch("SELECT id FROM relay_outbox WHERE id = ANY($1::text[])", ids)
    queued = {row["id"] for row in rows}
    return [item for item in owed if item.notification.id not in queued]


async def _join_groups(
    conn: asyncpg.Connection, grouped: list[_Owed], now: float
) -> dict[str, _Group]:
    """Put each new notification of a digest rule in its group; the groups to save."""
    if not grouped:
        return {}
    labelled = []
    for item in grouped:
        labels = group_labels(item.notification.run, item.match.group_by or ())
        labelled.append((item, labels, group_key(item.match.rule, item.match.channel, labels)))
    unique = sorted({key for _, _, key in labelled})
    await _lock(conn, "group", unique)
    rows = await conn.fetch(
        "SELECT key, next_flush, last_sent, last_seen FROM relay_groups"
        " WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE",
        unique,
    )
    states: dict[str, GroupState] = {row["key"]: to_group(row) for row in rows}
    sending = await _claimed(conn, states, labelled, now)
    groups: dict[str, _Group] = {}
    for item, labels, key in labelled:
        match, notification = item.match, item.notification
        if match.timing is None:  # pragma: no cover - _grouped() checked it
            continue
        on_its_way = key in sending
        sending.discard(key)  # the next run of the batch joins the digest this one opened
        state = states[key] = schedule(states.get(key), key, now, match.timing, sending=on_its_way)
        notification.group_key = key
        notification.extra = {**notification.extra, "group_labels": labels}
        notification.not_before = state.next_flush if state.next_flush is not None else now
        groups[key] = _Group(state, match.rule, match.channel, labels)
    return groups


async def _claimed(
    conn: asyncpg.Connection,
    states: dict[str, GroupState],
    labelled: list[tuple[_Owed, dict[str, str], str]],
    now: float,
) -> set[str]:
    """The groups whose waiting digest a replica has claimed already although `now` says it is
    not due: `now` was taken before this transaction, which waited for the group's lock while
    another replica claimed it. A run joining that digest would be due at once, alone."""
    channels = {key: item.match.channel for item, _, key in labelled}
    waiting = [
        (key, channels[key], state.next_flush)
        for key, state in states.items()
        if state.next_flush is not None and state.next_flush >= now
    ]
    if not waiting:
        return set()
    keys, chans, flushes = (list(column) for column in zip(*waiting, strict=True))
    rows = await conn.fetch(_CLAIMED, keys, chans, flushes)
    return {row["group_key"] for row in rows}


def _state_arrays(changed: dict[str, RunState]) -> tuple[list[object], ...]:
    states = list(changed.values())
    return (
        list(changed),
        [s.updated_at_ms for s in states],
        [clean(s.status) for s in states],
        [clean(FIRED_SEPARATOR.join(sorted(s.fired))) for s in states],
        [float(s.cost_cents) for s in states],
        [float(s.duration_ms) for s in states],
    )


def _arrays(owed: list[_Owed], groups: dict[str, _Group]) -> tuple[list[object], ...]:
    ns = [item.notification for item in owed]
    gs = list(groups.values())
    return (
        [n.id for n in ns],
        [clean(n.run_id) for n in ns],
        [clean(n.rule) for n in ns],
        [clean(n.channel) for n in ns],
        [clean(n.template) for n in ns],
        [orjson.dumps(n.run) for n in ns],
        [n.created_at for n in ns],
        [n.not_before for n in ns],
        [n.state for n in ns],
        [clean_opt(n.reason) for n in ns],
        [orjson.dumps(n.extra) if n.extra else None for n in ns],
        [n.group_key for n in ns],
        [g.state.key for g in gs],
        [clean(g.rule) for g in gs],
        [clean(g.channel) for g in gs],
        [orjson.dumps(g.labels).decode() for g in gs],
        [g.state.next_flush for g in gs],
        [g.state.last_sent for g in gs],
        [g.state.last_seen for g in gs],
    )


LANES = 4  # transactions of observe at once, of the pool's 10 connections
MAX_RUNS = 1000  # runs of the calls that go together (a larger call goes alone)


@dataclass(frozen=True)
class ObserveCall:
    """One caller's observe: its runs, how to decide them, its time and its birth lease."""

    runs: list[Run]
    decide: Decide
    now: float
    lease: BirthLease | None


def call_runs(call: ObserveCall) -> int:
    return len(call.runs)


def call_settled(call: ObserveCall, observed: list[Observed] | None) -> None:
    """The call's birth lease told its result (None: it failed or was cancelled)."""
    if call.lease is not None:
        hand_over(call.lease, observed)


async def observe_calls(
    conn: asyncpg.Connection, calls: Sequence[ObserveCall], holder: str
) -> list[list[Observed]]:
    """Inside the caller's transaction: every call's runs observed at once (each decided by its
    own call), then each call's birth lease taken; each call's Observed, in order. The write's
    time is the latest call's (they arrived within one transaction's time)."""
    deciders = {id(run): call.decide for call in calls for run in call.runs}

    def decide(run: Run, previous: RunState | None) -> Decision:
        return deciders[id(run)](run, previous)

    runs = [run for call in calls for run in call.runs]
    now = max(call.now for call in calls)
    observed = await observe(conn, runs, decide, now)
    results: list[list[Observed]] = []
    for call in calls:
        part, observed = observed[: len(call.runs)], observed[len(call.runs) :]
        results.append(await lease_at_birth(conn, part, call.lease, holder, call.now))
    return results
