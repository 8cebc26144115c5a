"""What the log and `relay migrate` say of the schema a store was opened with, on either store:
created (a new store: "migrated from 0" read as an upgrade), migrated (from the version found,
the one a downgrade needs the backup of), or nothing when it was up to date."""

from __future__ import annotations

import logging

log = logging.getLogger("relay.store")


def log_schema(before: int, after: int) -> None:
    """relay serve's line about the schema it opened (none when it was up to date)."""
    if before == 0:
        log.info("store schema created", extra={"version": after})
    elif before != after:
        log.info("store schema migrated", extra={"from": before, "to": after})


def schema_words(before: int, after: int) -> str:
    """`relay migrate`'s answer."""
    if before == 0:
        return f"store schema created (version {after})"
    if before == after:
        return f"store schema is up to date (version {after})"
    return f"store schema migrated from version {before} to {after}"
