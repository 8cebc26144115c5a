"""Retention of relay.store.sqlite: notifications finished before a time forgotten a batch per
transaction, with their events, then the rest nobody needs any more (runs, groups, silences,
kv rows, leases)."""

from __future__ import annotations

import sqlite3

import orjson

# Finished notifications go a batch per transaction (prune_notifications): a pruning pass over
# a large store (the first after a long stop, a shorter retention) held the one writer for
# seconds in one transaction, and every POST /v1/runs waited for it.
PRUNE_BATCH = 500
_FINISHED = (
    "SELECT id FROM outbox WHERE state IN ('sent', 'muted', 'dead') AND updated_at < ? LIMIT ?"
)
PRUNE = (
    # groups and silences nobody needs any more, runs
    "DELETE FROM groups WHERE last_seen < :before AND next_flush IS NULL",
    "DELETE FROM silences WHERE ends_at < :before",
    "DELETE FROM runs WHERE seen_at < :before",
    # forgotten with their runs: the inhibit sources seen (relay.inhibition.SOURCES) and the
    # Slack threads of runs and groups (relay.channels._slack_threads: each reply touches one),
    # the recipients a partly sent mail is done with (relay.channels.email.SENT)
    "DELETE FROM kv WHERE namespace IN ('inhibit_source', 'slack_thread', 'email_sent')"
    " AND updated_at < :before",
    # named leases that ended before (a Slack thread's start, a Realtime feed nobody follows
    # any more): an ended lease is as good as none, and there is one per Slack thread started.
    # One handed back (expires_at 0) ended when it was (updated_at): a feed's lease handed
    # back by a replica stopping stays, as Store.write_if_free reads when it was last held.
    "DELETE FROM leases WHERE max(expires_at, updated_at) < :before",
    # inhibit windows (relay.inhibition.NAMESPACE: the value is when the window ends) closed
    # before, and pile-ups (COUNTS) or newest sources (OPENED) no update touched since: one row
    # per `equal` value ever seen
    "DELETE FROM kv WHERE namespace = 'inhibit' AND CAST(value AS REAL) < :before",
    "DELETE FROM kv WHERE namespace IN ('inhibit_count', 'inhibit_opened')"
    " AND updated_at < :before",
)


def prune_notifications(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Forget up to `limit` notifications finished before `before`, with their events."""
    ids = orjson.dumps([row[0] for row in conn.execute(_FINISHED, (before, limit))]).decode()
    conn.execute(
        "DELETE FROM events WHERE notification_id IN (SELECT value FROM json_each(?))", (ids,)
    )
    return conn.execute(
        "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (ids,)
    ).rowcount


def prune(conn: sqlite3.Connection, before: float) -> None:
    """Forget the rest of what finished before `before` (notifications: prune_notifications)."""
    for statement in PRUNE:
        conn.execute(statement, {"before": before})
