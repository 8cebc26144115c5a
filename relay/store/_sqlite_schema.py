"""SQLite schema, migrations and row conversions for relay.store.sqlite.

The schema is versioned with `PRAGMA user_version`: MIGRATIONS[i] moves a database from version i
to version i + 1, all inside the caller's transaction (SQLite DDL is transactional).
"""

from __future__ import annotations

import sqlite3

import orjson

from relay.errors import check_schema
from relay.model import GroupState, Notification, RunState, Silence, SilencePage

FIRED_SEPARATOR = "\x1f"

_V1 = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        updated_at_ms INTEGER,
        status TEXT NOT NULL,
        fired TEXT NOT NULL DEFAULT '',
        cost_cents REAL NOT NULL DEFAULT 0,
        duration_ms REAL NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        template TEXT NOT NULL,
        run_json BLOB NOT NULL,
        created_at REAL NOT NULL,
        not_before REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
        lease_until REAL,
        reason TEXT,
        last_error TEXT,
        updated_at REAL NOT NULL,
        extra_json BLOB
    )
    """,
    """
    CREATE INDEX outbox_due ON outbox (channel, not_before, created_at)
    WHERE state = 'pending'
    """,
    "CREATE INDEX outbox_state ON outbox (state, updated_at)",
)

# v2: small durable state of sources and channels (Realtime positions, Slack thread ts, ...)
_V2 = (
    """
    CREATE TABLE kv (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID
    """,
)

# v3: silences; outbox rows may be 'muted' (recorded, never sent). SQLite cannot alter a CHECK
# constraint, so the outbox is rebuilt.
_V3 = (
    """
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers_json TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        created_at REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX silences_end ON silences (ends_at)",
    """
    CREATE TABLE outbox_v3 (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        template TEXT NOT NULL,
        run_json BLOB NOT NULL,
        created_at REAL NOT NULL,
        not_before REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'sent', 'dead', 'muted')),
        lease_until REAL,
        reason TEXT,
        last_error TEXT,
        updated_at REAL NOT NULL,
        extra_json BLOB
    )
    """,
    "INSERT INTO outbox_v3 SELECT * FROM outbox",
    "DROP TABLE outbox",
    "ALTER TABLE outbox_v3 RENAME TO outbox",
    """
    CREATE INDEX outbox_due ON outbox (channel, not_before, created_at)
    WHERE state = 'pending'
    """,
    "CREATE INDEX outbox_state ON outbox (state, updated_at)",
)

# v4: digests. Rows of a digest rule carry their group; the group's schedule is kept apart.
_V4 = (
    "ALTER TABLE outbox ADD COLUMN group_key TEXT",
    "CREATE INDEX outbox_group ON outbox (group_key, not_before) WHERE state = 'pending'",
    """
    CREATE TABLE groups (
        key TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        labels_json TEXT NOT NULL,
        next_flush REAL,
        last_sent REAL,
        last_seen REAL NOT NULL
    ) WITHOUT ROWID
    """,
)

# v5: history. Every change of a notification is an event; runs remember when relay saw them,
# so retention can forget old ones.
_V5 = (
    """
    CREATE TABLE events (
        notification_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        detail TEXT
    )
    """,
    "CREATE INDEX events_notification ON events (notification_id, at)",
    "CREATE INDEX events_at ON events (at)",
    "ALTER TABLE runs ADD COLUMN seen_at REAL NOT NULL DEFAULT 0",
    "CREATE INDEX outbox_run ON outbox (run_id)",
)

# v6: named leader leases (Store.try_lead), the same table as the PostgreSQL engine's.
_V6 = (
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
)

# v7: what the channel said it delivered (a Slack message's channel and ts, a PagerDuty dedup
# key), so that a recovery can update or resolve it.
_V7 = ("ALTER TABLE outbox ADD COLUMN receipt TEXT",)

# v8: which process holds a claim's lease (`serve --workers`: a dead worker's claims are freed
# at once, and only its own: workers share channels)
_V8 = ("ALTER TABLE outbox ADD COLUMN lease_holder TEXT",)

# v9: a count of the changes to the silences, bumped by every write to them (a trigger's, in its
# transaction: `relay silence add` and every --workers process too), so that a running relay
# re-reads them only when it moved (8,000 read again every 0.25 s: ~20 % of a core)
_V9 = (
    "CREATE TABLE silences_changes (n INTEGER NOT NULL)",
    "INSERT INTO silences_changes (n) VALUES (0)",
    "CREATE TRIGGER silences_insert AFTER INSERT ON silences"
    " BEGIN UPDATE silences_changes SET n = n + 1; END",
    "CREATE TRIGGER silences_update AFTER UPDATE ON silences"
    " BEGIN UPDATE silences_changes SET n = n + 1; END",
    "CREATE TRIGGER silences_delete AFTER DELETE ON silences"
    " BEGIN UPDATE silences_changes SET n = n + 1; END",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9)
SCHEMA_VERSION = len(MIGRATIONS)

# Indexes that change no table, made at every open without a new version: the relay before
# them opens the same store and keeps them up to date (a new version would lock it out).
# outbox_created: the history (`GET /v1/notifications`, `relay history`) reads the newest
# first; without it each page sorted the whole outbox (0.2 s at 160,000 rows, in the queue
# POST /v1/runs commits through).
# silences_created: a page of `GET /v1/silences?limit=` read from after the last one's, not
# every silence (60,000) sorted again for each page (silences_start, of the start order
# before, is left to the relays that read by it).
INDEXES = (
    "CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at DESC, id)",
    "CREATE INDEX IF NOT EXISTS silences_created ON silences (created_at, id)",
)


OWN_FILE = "RELAY_STORE_URL must name relay's own database file"


def migrate(conn: sqlite3.Connection, *, upgrade: bool = True) -> int:
    """Bring the schema to SCHEMA_VERSION inside the open transaction; return the old version.
    Not `upgrade`: an older schema is refused (a new file is still created). The file must be
    relay's (relay.store._sqlite_own.check_own)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    check_schema(version, SCHEMA_VERSION, upgrade=upgrade)
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            conn.execute(statement)
    for statement in INDEXES:
        conn.execute(statement)
    if version != SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    return int(version)


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


def insert_silence(conn: sqlite3.Connection, s: Silence) -> None:
    conn.execute(
        "INSERT INTO silences (id, matchers_json, starts_at, ends_at, created_at, comment,"
        " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
