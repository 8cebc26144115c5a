"""The search_path relay.store._pg_schema creates and finds relay's tables by: its first schema
must be the one PostgreSQL uses (check_search_path)."""

from __future__ import annotations

import re

import asyncpg

from relay.errors import StoreUnavailable

# The search_path as set (URL options, ALTER ROLE/DATABASE ... SET), the schema PostgreSQL
# creates and looks up unqualified tables in (its first that exists and the user may use), who
# relay's user is, and the schemas of the path that count.
_SEARCH_PATH = """
    SELECT current_setting('search_path') AS path, current_schema() AS used,
           current_user AS me, current_schemas(false) AS usable
"""
_PATH_ITEM = re.compile(r'"(?:[^"]|"")*"|[^,"]+')


def path_schemas(path: str) -> list[str]:
    """The schema names of a search_path setting as PostgreSQL reads them: a quoted one as
    written, another in lower case (`"$user", Relay` is `$user`, `relay`)."""
    names = (item.strip() for item in _PATH_ITEM.findall(path))
    return [n[1:-1].replace('""', '"') if n.startswith('"') else n.lower() for n in names if n]


def asked_schema(path: str, me: str, usable: list[str]) -> str | None:
    """The schema the search_path asks relay's tables to be in: its first, `$user` standing
    for the user's own schema and passed over without one (PostgreSQL's convention: the
    default `"$user", public` means public then)."""
    for name in path_schemas(path):
        if name != "$user":
            return name
        if me in usable:
            return me
    return None


async def check_search_path(conn: asyncpg.Connection) -> None:
    """Refuse a search_path whose first schema does not exist, or that relay's user may not use
    (no USAGE): PostgreSQL passes over it without a word, and relay created and used its
    tables in the next one (`nope, public`: public, maybe beside another relay's). With no
    schema left at all, the CREATE TABLE says so (3F000)."""
    row = await conn.fetchrow(_SEARCH_PATH)
    asked = asked_schema(row["path"], row["me"], list(row["usable"]))
    if row["used"] is None or asked is None or asked == row["used"]:
        return
    raise StoreUnavailable(
        f"store open failed: the first schema of the search_path, {asked!r}, does not exist or"
        f" relay's user has no USAGE on it; PostgreSQL would put relay's tables in"
        f" {row['used']!r} instead (create the schema and grant USAGE on it, or name"
        f" {row['used']!r} first in the search_path)"
    )
