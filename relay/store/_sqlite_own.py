"""Whether a SQLite file is relay's own database, before relay migrates or reads it.

PRAGMA user_version holds relay's schema version, but other applications set it too: a file
with tables where relay has none yet, or whose version's tables and columns are not all there,
is another application's, and is refused untouched.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3

from relay.errors import StoreUnavailable, check_schema, first_of
from relay.store._sqlite_schema import MIGRATIONS, OWN_FILE, SCHEMA_VERSION


def check_own(conn: sqlite3.Connection, *, upgrade: bool) -> int:
    """The schema version of relay's database on `conn`; StoreUnavailable for a version this
    relay may not use (check_schema) or a file that is not relay's: tables where relay has
    none yet, or a version (PRAGMA user_version, which other applications set too) whose
    tables and columns are not all there. Another application's database with a user_version
    of its own said only `store open failed: SQLITE_ERROR` (a migration meeting its tables),
    or that it was a newer relay's."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        # another application's database, or relay's overwritten by a -wal file from elsewhere
        # (which replays onto any file): never relay's tables added beside what it holds
        raise StoreUnavailable(
            f"store open failed: the database holds tables relay did not create; {OWN_FILE}"
        )
    if version > 0:  # a newer relay's holds this one's tables at least: migrations only add
        missing = _lacking(conn, min(version, SCHEMA_VERSION))
        if missing:
            raise StoreUnavailable(
                f"store open failed: the database (user_version {version}) lacks relay's"
                f" {first_of(missing)}: it is not relay's; {OWN_FILE}"
            )
    check_schema(version, SCHEMA_VERSION, upgrade=upgrade)
    return int(version)


def _lacking(conn: sqlite3.Connection, version: int) -> list[str]:
    """relay's tables and columns of schema `version` that the database on `conn` lacks."""
    have, missing = _columns(conn), []
    for table, columns in _columns_of_version(version).items():
        if table not in have:
            missing.append(f"table {table}")
        else:
            missing += [f"column {table}.{column}" for column in sorted(columns - have[table])]
    return missing


@functools.cache
def _columns_of_version(version: int) -> dict[str, frozenset[str]]:
    """Every table of relay's schema `version` with its columns, as the migrations make them."""
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                conn.execute(statement)
        return _columns(conn)


def _columns(conn: sqlite3.Connection) -> dict[str, frozenset[str]]:
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {
        str(name): frozenset(
            str(row[1]) for row in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))
        )
        for (name,) in tables
    }
