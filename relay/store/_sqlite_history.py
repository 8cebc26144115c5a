"""History queries of the SQLite store: what happened to which notification, and why."""

from __future__ import annotations

import sqlite3

from relay.model import Notification
from relay.store import HistoryQuery
from relay.store._rows import to_notification

_FILTERS = (
    ("run_id", "run_id = ?"),
    ("rule", "rule = ?"),
    ("channel", "channel = ?"),
    ("state", "state = ?"),
    ("since", "created_at >= ?"),
)


def history_rows(conn: sqlite3.Connection, query: HistoryQuery) -> list[Notification]:
    rows = conn.execute(*history_sql(query)).fetchall()
    return [to_notification(row) for row in rows]


def history_sql(query: HistoryQuery) -> tuple[str, tuple[object, ...]]:
    """The newest rows first, in the order of the outbox_created index."""
    clauses, params = [], []
    for field, clause in _FILTERS:
        value = getattr(query, field)
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if query.after is not None:  # a range on the outbox_created index, then the ties
        created_at, ident = query.after
        clauses.append("created_at <= ? AND (created_at < ? OR id > ?)")
        params += [created_at, created_at, ident]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT * FROM outbox{where} ORDER BY created_at DESC, id LIMIT ?"  # noqa: S608
    return sql, (*params, max(1, min(query.limit, 10_000)))


def event_rows(conn: sqlite3.Connection, notification_id: str) -> list[dict[str, object]]:
    rows = conn.execute(
        "SELECT at, kind, attempts, reason, detail FROM events"
        " WHERE notification_id = ? ORDER BY at, rowid",
        (notification_id,),
    ).fetchall()
    return [
        {"at": at, "kind": kind, "attempts": attempts, "reason": reason, "detail": detail}
        for at, kind, attempts, reason, detail in rows
    ]
