"""Row reads and writes of relay.store.sqlite's tables: a run's state, an outbox row, a silence,
a digest group, a history event."""

from __future__ import annotations

import sqlite3

import orjson

from relay.model import GroupState, Notification, RunState, Silence, SilencePage

FIRED_SEPARATOR = "\x1f"


def load_state(conn: sqlite3.Connection, run_id: str) -> RunState | None:
    """The stored state of a run, None when the run is unknown."""
    row = conn.execute(
        "SELECT updated_at_ms, status, fired, cost_cents, duration_ms FROM runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    updated_at_ms, status, fired, cost_cents, duration_ms = row
    return RunState(
        updated_at_ms=updated_at_ms,
        status=status,
        fired=frozenset(fired.split(FIRED_SEPARATOR)) if fired else frozenset(),
        cost_cents=float(cost_cents),
        duration_ms=float(duration_ms),
    )


def save_state(conn: sqlite3.Connection, run_id: str, state: RunState, now: float = 0.0) -> None:
    """Insert or replace the stored state of a run."""
    conn.execute(
        """
        INSERT INTO runs (run_id, updated_at_ms, status, fired, cost_cents, duration_ms, seen_at)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (run_id) DO UPDATE SET
            updated_at_ms = excluded.updated_at_ms,
            status = excluded.status,
            fired = excluded.fired,
            cost_cents = excluded.cost_cents,
            duration_ms = excluded.duration_ms,
            seen_at = excluded.seen_at
        """,
        (
            run_id,
            state.updated_at_ms,
            state.status,
            FIRED_SEPARATOR.join(sorted(state.fired)),
            state.cost_cents,
            state.duration_ms,
            now,
        ),
    )


def insert_notification(conn: sqlite3.Connection, n: Notification) -> bool:
    """Insert an outbox row unless its id exists; True when it was inserted."""
    cursor = conn.execute(
        """
        INSERT INTO outbox (id, run_id, rule, channel, template, run_json, created_at,
                            not_before, attempts, state, reason, updated_at, extra_json,
                            group_key)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO NOTHING
        """,
        (
            n.id,
            n.run_id,
            n.rule,
            n.channel,
            n.template,
            orjson.dumps(n.run),
            n.created_at,
            n.not_before,
            n.attempts,
            n.state,
            n.reason,
            n.created_at,
            orjson.dumps(n.extra) if n.extra else None,
            n.group_key,
        ),
    )
    return cursor.rowcount == 1


def insert_silence(conn: sqlite3.Connection, s: Silence) -> bool:
    """Insert `s` unless a silence of its id is there (False: nothing written)."""
    cursor = conn.execute(
        "INSERT INTO silences (id, matchers_json, starts_at, ends_at, created_at, comment,"
        " created_by) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            s.id,
            orjson.dumps(s.matchers).decode(),
            s.starts_at,
            s.ends_at,
            s.created_at,
            s.comment,
            s.created_by,
        ),
    )
    return cursor.rowcount == 1


def silences_sql(
    now: float, include_expired: bool, page: SilencePage | None
) -> tuple[str, dict[str, object]]:
    """The SELECT of Store.silences: in creation order; of a page, from after its `after`."""
    after = None if page is None else page.after
    clauses = [] if include_expired else ["ends_at > :now"]
    if after is not None:
        clauses.append("(created_at, id) > (:created, :id)")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    tail = "" if page is None else " LIMIT :limit"
    created, ident = after or (None, None)
    limit = None if page is None else page.limit
    params: dict[str, object] = {"now": now, "created": created, "id": ident, "limit": limit}
    return f"SELECT * FROM silences{where} ORDER BY created_at, id{tail}", params  # noqa: S608


def load_group(conn: sqlite3.Connection, key: str) -> GroupState | None:
    row = conn.execute(
        "SELECT next_flush, last_sent, last_seen FROM groups WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else GroupState(key, row[0], row[1], row[2])


def save_group(
    conn: sqlite3.Connection, state: GroupState, rule: str, channel: str, labels: dict[str, str]
) -> None:
    conn.execute(
        """
        INSERT INTO groups (key, rule, channel, labels_json, next_flush, last_sent, last_seen)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET
            next_flush = excluded.next_flush,
            last_sent = excluded.last_sent,
            last_seen = excluded.last_seen
        """,
        (
            state.key,
            rule,
            channel,
            orjson.dumps(labels).decode(),
            state.next_flush,
            state.last_sent,
            state.last_seen,
        ),
    )


def group_labels_of(conn: sqlite3.Connection, key: str) -> dict[str, str]:
    row = conn.execute("SELECT labels_json FROM groups WHERE key = ?", (key,)).fetchone()
    return {} if row is None else dict(orjson.loads(row[0]))


Event = tuple[str, float, int, str | None, str | None]  # kind, at, attempts, reason, detail


def add_event(conn: sqlite3.Connection, notification_id: str, event: Event) -> None:
    """One line of a notification's history: created, muted, retry, sent, dead, replayed."""
    conn.execute(
        "INSERT INTO events (notification_id, kind, at, attempts, reason, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (notification_id, *event),
    )
