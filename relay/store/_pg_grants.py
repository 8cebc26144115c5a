"""Whether relay's user may do on relay's tables what intake and delivery need (PostgreSQL).

A role granted the tables once (`GRANT ... ON ALL TABLES IN SCHEMA`) before a migration added
one could not use that one: every POST /v1/runs answered 503 while /readyz said ready. Now
/readyz names the first table it lacks a privilege on and the GRANT to run, and the log says
so once. The check is one catalog query: at start, then while something is lacking, and again
after a write refused for a privilege (42501); not while all is granted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.store._pg_schema import RELAY_TABLE

log = logging.getLogger("relay.store")

LACKING = "store lacks privileges"
INSUFFICIENT_PRIVILEGE = "42501"  # the SQLSTATE of a statement refused for a privilege
_ALL = ("SELECT", "INSERT", "UPDATE", "DELETE")
# the tables relay does less on: it reads the schema's version (migrations, run by `relay
# migrate`, write it), and reads and bumps the silences' count (its trigger runs as the writer)
_NEEDS = {"relay_schema_version": ("SELECT",), "relay_silences_changes": ("SELECT", "UPDATE")}
# each relay table (in the schema relay uses, the first of the search path) and what the
# current user may do on it
TABLE_PRIVILEGES = f"""
    SELECT relname AS table,
           has_table_privilege(oid, 'SELECT') AS "SELECT",
           has_table_privilege(oid, 'INSERT') AS "INSERT",
           has_table_privilege(oid, 'UPDATE') AS "UPDATE",
           has_table_privilege(oid, 'DELETE') AS "DELETE"
    FROM pg_class WHERE {RELAY_TABLE}
    ORDER BY relname
"""  # noqa: S608 (RELAY_TABLE: a constant)
_UNKNOWN = "unknown"


def lacking_words(rows: Sequence[Any]) -> str | None:
    """The first table missing a privilege relay needs, what it misses and the GRANT to run
    as its owner (the user is not named: it is part of RELAY_STORE_URL, a secret); None when
    nothing is missing."""
    missing = [
        (row["table"], [p for p in _NEEDS.get(row["table"], _ALL) if not row[p]]) for row in rows
    ]
    missing = [(table, privileges) for table, privileges in missing if privileges]
    if not missing:
        return None
    table, privileges = missing[0]
    others = len(missing) - 1
    more = f" (and {others} more table{'s' if others > 1 else ''})" if others else ""
    needed = ", ".join(privileges)
    return (
        f"{LACKING}: no {needed} on {table}{more}; as its owner run"
        f" GRANT {needed} ON {table} TO <the user of RELAY_STORE_URL>"
    )


class Grants:
    """The last answer of the check, asked again only while something lacks or is unknown."""

    def __init__(self) -> None:
        self._said: str | None = _UNKNOWN
        self._asked = 0  # checks begun

    def era(self) -> int:
        """The checks begun so far: what a statement notes when it begins, for `forget`."""
        return self._asked

    def forget(self, began: int | None = None) -> None:
        """Ask again at the next check: the store opened, or a statement begun at era `began`
        was refused (42501). One begun before the last check began is no news: refused before
        a GRANT that check saw (retention's first pass at start, its answer late under load),
        it made /readyz ask again and say what was no longer so. A privilege taken back later
        refuses the next statement too, which began after."""
        if self._said is None and (began is None or began >= self._asked):
            self._said = _UNKNOWN

    async def lacking(self, fetch: Callable[[str], Awaitable[Sequence[Any]]]) -> str | None:
        if self._said is None:
            return None
        self._asked += 1
        found = lacking_words(await fetch(TABLE_PRIVILEGES))
        if found is not None and found != self._said:
            log.error(LACKING, extra={"reason": found})
        elif found is None and self._said != _UNKNOWN:
            log.info("store privileges granted")
        self._said = found
        return found
