"""PostgreSQL schema and migrations for relay.store.postgres.

Tables carry a `relay_` prefix, so relay can share a database with other applications. The
schema is versioned in `relay_schema_version` (one row per applied migration): MIGRATIONS[i]
moves a database from version i to version i + 1. `migrate` runs them in one transaction under a
transaction-level advisory lock, so several replicas starting at once queue behind the first and
then find nothing left to do; PostgreSQL DDL is transactional, so a failed migration leaves the
previous version intact. Migrations must stay additive: replicas of the previous release may keep
running beside the new schema during a rolling upgrade. A schema already current needs no DDL:
replicas may run as a role that only reads and writes relay's tables once `relay migrate` ran as
one that may create them.

Times are epoch seconds (double precision), as in the SQLite engine; run snapshots and extras
are stored as the exact orjson bytes (bytea), not jsonb, so they come back byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import re

import asyncpg

from relay.errors import StoreMissing, StoreUnavailable, check_schema, first_of
from relay.store._pg_search_path import check_search_path
from relay.store._schema_said import log_schema

log = logging.getLogger("relay.store")

_V1 = (
    """
    CREATE TABLE relay_runs (
        run_id text PRIMARY KEY,
        updated_at_ms bigint,
        status text NOT NULL,
        fired text NOT NULL DEFAULT '',
        cost_cents double precision NOT NULL DEFAULT 0,
        duration_ms double precision NOT NULL DEFAULT 0,
        seen_at double precision NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX relay_runs_seen ON relay_runs (seen_at)",
    """
    CREATE TABLE relay_outbox (
        id text PRIMARY KEY,
        run_id text NOT NULL,
        rule text NOT NULL,
        channel text NOT NULL,
        template text NOT NULL,
        run_json bytea NOT NULL,
        created_at double precision NOT NULL,
        not_before double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        state text NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'sent', 'dead', 'muted')),
        lease_until double precision,
        reason text,
        last_error text,
        updated_at double precision NOT NULL,
        extra_json bytea,
        group_key text
    )
    """,
    """
    CREATE INDEX relay_outbox_due ON relay_outbox (channel, not_before, created_at, id)
    WHERE state = 'pending'
    """,
    """
    CREATE INDEX relay_outbox_group ON relay_outbox (group_key, created_at, id)
    WHERE state = 'pending'
    """,
    "CREATE INDEX relay_outbox_state ON relay_outbox (state, updated_at)",
    "CREATE INDEX relay_outbox_run ON relay_outbox (run_id)",
    "CREATE INDEX relay_outbox_created ON relay_outbox (created_at)",
    """
    CREATE TABLE relay_kv (
        namespace text NOT NULL,
        key text NOT NULL,
        value text NOT NULL,
        updated_at double precision NOT NULL,
        PRIMARY KEY (namespace, key)
    )
    """,
    """
    CREATE TABLE relay_silences (
        id text PRIMARY KEY,
        matchers_json text NOT NULL,
        starts_at double precision NOT NULL,
        ends_at double precision NOT NULL,
        created_at double precision NOT NULL,
        comment text NOT NULL DEFAULT '',
        created_by text NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX relay_silences_end ON relay_silences (ends_at)",
    """
    CREATE TABLE relay_groups (
        key text PRIMARY KEY,
        rule text NOT NULL,
        channel text NOT NULL,
        labels_json text NOT NULL,
        next_flush double precision,
        last_sent double precision,
        last_seen double precision NOT NULL
    )
    """,
    """
    CREATE TABLE relay_events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        notification_id text NOT NULL,
        at double precision NOT NULL,
        kind text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        reason text,
        detail text
    )
    """,
    "CREATE INDEX relay_events_notification ON relay_events (notification_id, at, seq)",
    "CREATE INDEX relay_events_at ON relay_events (at)",
    # Named leader leases (one Realtime follower per feed across replicas).
    """
    CREATE TABLE relay_leases (
        name text PRIMARY KEY,
        owner text NOT NULL,
        expires_at double precision NOT NULL,
        updated_at double precision NOT NULL
    )
    """,
)

# v2: what the channel said it delivered (a Slack message's channel and ts, a PagerDuty dedup
# key), so that a recovery can update or resolve it. Additive: older replicas ignore it.
_V2 = ("ALTER TABLE relay_outbox ADD COLUMN receipt text",)

# v3: who holds a lease, and which replicas are alive to hold one. A replica renews its row
# (expires_at, on the database's clock) while it runs; a lease whose holder's row expired or is
# gone is free at once instead of when lease_until ends. Additive: older replicas leave
# lease_holder NULL, and their leases keep the old rule.
_V3 = (
    "ALTER TABLE relay_outbox ADD COLUMN lease_holder text",
    """
    CREATE TABLE relay_replicas (
        holder text PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        expires_at timestamptz NOT NULL
    )
    """,
)

# v4: a count of the changes to the silences, bumped in the transaction of every statement that
# writes them (a trigger's: a replica of the previous release's writes too), so that a replica
# re-reads them only when it moved (8,000 read again every 0.25 s: ~20 % of a core).
_COUNT_SILENCES = (
    """
    CREATE OR REPLACE FUNCTION relay_silences_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE relay_silences_changes SET n = n + 1;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER relay_silences_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON relay_silences FOR EACH STATEMENT EXECUTE FUNCTION relay_silences_changed()
    """,
)
_V4 = (
    "CREATE TABLE relay_silences_changes (n bigint NOT NULL)",
    "INSERT INTO relay_silences_changes (n) VALUES (0)",
    *_COUNT_SILENCES,
)

# v5: silences in start order, so that a page of `GET /v1/silences?limit=` is read from after
# the last one's, not every silence (60,000) sorted again for each page.
_V5 = ("CREATE INDEX relay_silences_start ON relay_silences (starts_at, id)",)

# v6: silences in creation order, which nothing changes: expiring a pending silence moves its
# start, and a page in start order skipped or repeated it. relay_silences_start stays for the
# replicas of the release before that run beside it (migrations only add).
_V6 = ("CREATE INDEX relay_silences_created ON relay_silences (created_at, id)",)

# v7: the channels each replica delivers, so that the replicas delivering one share its
# rate_limit out between them (relay.store._pg_replicas). Additive: an older replica leaves it
# NULL and is counted for every channel (it sends each at the full rate).
_V7 = ("ALTER TABLE relay_replicas ADD COLUMN channels text[]",)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS relay_schema_version (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""


def lock_key(kind: str, name: str) -> int:
    """A signed 64-bit advisory lock key for one named thing (a run, a group, the schema)."""
    digest = hashlib.blake2b(f"relay\x1f{kind}\x1f{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


MIGRATION_LOCK = lock_key("schema", "migrate")


async def migrate(conn: asyncpg.Connection, *, upgrade: bool = True) -> tuple[int, int]:
    """Bring the schema to SCHEMA_VERSION; return (version before, version after). Not
    `upgrade`: an older schema is refused (an empty database is still created)."""
    await check_search_path(conn)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        if await conn.fetchval(_VERSION_THERE) is None:
            await conn.execute(_VERSION_TABLE)  # asks for CREATE even when the table exists
        version = await _version_checked(conn, upgrade=upgrade)
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO relay_schema_version (version) VALUES ($1)", number)
        await _grant_as_outbox(conn)
        if upgrade:  # relay serve and relay migrate; the other store commands change no schema
            await _count_silences_again(conn)
    log_schema(version, SCHEMA_VERSION)
    return version, SCHEMA_VERSION


async def check(conn: asyncpg.Connection) -> None:
    """A store command's look at the schema (`relay dlq`, `silence`, `history`): no lock, no
    DDL, no grant, whatever the role may do; StoreMissing when relay's tables are not there,
    as SQLite's commands find no file. It ran `migrate`: it made relay's tables in a database
    that had none (a mistyped database name, relay serve never started there) and, as their
    owner, gave grants behind the operator's back."""
    await check_search_path(conn)
    if not await _version_checked(conn, upgrade=False):
        raise StoreMissing


_VERSION_THERE = "SELECT to_regclass('relay_schema_version')"


async def _version_checked(conn: asyncpg.Connection, *, upgrade: bool) -> int:
    """The schema version recorded (relay_schema_version is there), refused if relay's
    tables are not those of a version (_check_own) or not one this relay may use; 0 if none."""
    version = 0
    if await conn.fetchval(_VERSION_THERE) is not None:
        version = int(
            await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM relay_schema_version")
        )
    _check_own(version, await _tables(conn))
    check_schema(version, SCHEMA_VERSION, upgrade=upgrade)
    return version


# Which rows of pg_class are relay's tables: those in the schema relay uses (the first of the
# search path, where it created them). Unqualified: the queries name no other relname or oid.
RELAY_TABLE = "relkind = 'r' AND relname LIKE 'relay\\_%' AND pg_table_is_visible(oid)"
# What each relay table (in the schema relay uses, the first of the search path) this role
# may grant on (it owns it, or is a member of its owner) lacks of what relay_outbox grants,
# its owner aside (a grantee 0 is PUBLIC): (table, grantee, privileges).
_MISSING_GRANTS = f"""
    WITH outbox AS (
        SELECT a.grantee, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'relay_outbox'::regclass AND a.grantee <> c.relowner
    )
    SELECT t.relname AS table,
           CASE WHEN o.grantee = 0 THEN 'PUBLIC' ELSE o.grantee::regrole::text END AS grantee,
           string_agg(o.privilege_type, ', ' ORDER BY o.privilege_type) AS privileges
    FROM pg_class t, outbox o
    WHERE {RELAY_TABLE} AND t.relname <> 'relay_outbox' AND pg_has_role(t.relowner, 'USAGE')
      AND NOT EXISTS (
          SELECT FROM aclexplode(t.relacl) a
          WHERE a.grantee = o.grantee AND a.privilege_type = o.privilege_type
      )
    GROUP BY 1, 2 ORDER BY 1, 2
"""  # noqa: S608 (RELAY_TABLE: a constant)


_CREATED = re.compile(r"CREATE TABLE (relay_\w+)")
_OWN_TABLES = (
    "RELAY_STORE_URL must name relay's own database, or a schema of relay's own"
    " (options=-c search_path=...)"
)


def _check_own(version: int, tables: set[str]) -> None:
    """Refuse relay_* tables relay did not make (another application's, or relay's of another
    kind): with none recorded in relay_schema_version, relay's migration met them and said
    only `store open failed: DuplicateTableError (42P07)`, and with a version recorded but
    its tables missing, `UndefinedTableError (42P01)`."""
    if version == 0 and (found := sorted(tables - {"relay_schema_version"})):
        raise StoreUnavailable(
            f"store open failed: the database holds {first_of(found)}, relay_* tables relay"
            f" did not create (relay_schema_version records none); {_OWN_TABLES}"
        )
    made = {
        table
        for statements in MIGRATIONS[: min(version, SCHEMA_VERSION)]
        for statement in statements
        for table in _CREATED.findall(statement)
    }
    if missing := sorted(made - tables):
        raise StoreUnavailable(
            f"store open failed: relay_schema_version records version {version}, but relay's"
            f" {first_of(missing)} of that version are not there: not relay's tables;"
            f" {_OWN_TABLES}"
        )


_TABLES = f"SELECT relname FROM pg_class WHERE {RELAY_TABLE}"  # noqa: S608


async def _tables(conn: asyncpg.Connection) -> set[str]:
    return {row["relname"] for row in await conn.fetch(_TABLES)}


async def _grant_as_outbox(conn: asyncpg.Connection) -> None:
    """Give every relay table the grants relay_outbox has that it lacks: replicas may run as a
    role granted only the use of relay's tables when they were made (`GRANT ... ON ALL
    TABLES`), and `relay migrate` as their owner. Without it a new replica as that role could
    not read the silences' count (503 to every update) nor an old replica's trigger bump it
    (503 to every silence added). At every migrate, the schema current or not: databases the
    releases before this took to a newer schema have such tables without the grants, and one
    `relay migrate` mends them. Only tables this role may grant on: a replica running as the
    granted role grants nothing and is not refused."""
    for row in await conn.fetch(_MISSING_GRANTS):
        table, grantee = _quoted(row["table"]), row["grantee"]
        await conn.execute(f"GRANT {row['privileges']} ON {table} TO {grantee}")
        log.info("store table granted", extra={"table": row["table"], "to": grantee})


# Whether relay_silences lacks its counting trigger, and whether this role may make it (it owns
# the table, or is a member of its owner); no row: the trigger is there.
_UNCOUNTED = f"""
    SELECT pg_has_role(relowner, 'USAGE') AS may FROM pg_class
    WHERE {RELAY_TABLE} AND relname = 'relay_silences' AND NOT EXISTS (
        SELECT FROM pg_trigger t
        WHERE t.tgrelid = pg_class.oid AND t.tgname = 'relay_silences_changed'
    )
"""  # noqa: S608 (RELAY_TABLE: a constant)


async def _count_silences_again(conn: asyncpg.Connection) -> None:
    """Make the silences' counting trigger again where it is missing: a dump of relay's
    tables (`pg_dump --table='relay_*'`, docs/operations.md) holds the trigger but not its
    function, so pg_restore could not make it, and on the restored database no replica saw a
    silence added (the count never moved). At every start of relay serve and relay migrate; a
    role that may not make it says so."""
    row = await conn.fetchrow(_UNCOUNTED)
    if row is None:
        return
    if not row["may"]:
        log.warning(
            "store trigger missing: relay_silences_changed; run relay migrate as the owner"
            " of relay's tables, or silences added are not seen by running replicas"
        )
        return
    for statement in _COUNT_SILENCES:
        await conn.execute(statement)
    log.warning("store trigger made again", extra={"trigger": "relay_silences_changed"})


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
