"""SQLite schema and migrations for relay.store.sqlite.

The schema is versioned with `PRAGMA user_version`: MIGRATIONS[i] moves a database from version i
to version i + 1, all inside the caller's transaction (SQLite DDL is transactional).
"""

from __future__ import annotations

import sqlite3

from relay.errors import check_schema

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
