"""The one boundary where asyncpg errors end, for relay.store.postgres.

Every asyncpg or socket error becomes StoreUnavailable naming the kind of failure (the
exception class, e.g. ConnectionRefusedError, CannotConnectNowError, after words saying what it
means where relay knows them: by SQLSTATE for the server's, by class for the driver's own) and
never its text, which may hold the host, the user or the DSN. Whether a failure passes by itself
decides the pool's connect (ConnectGate); a transaction PostgreSQL aborted to resolve a race is
run again (retrying).
"""

from __future__ import annotations

import asyncio
import configparser
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from relay.errors import StoreUnavailable, tls_failure, wire_failure
from relay.settings import service_file

DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, DNS, timeouts (TimeoutError is an OSError)
    asyncpg.PostgresError,  # anything the server answered, connection loss included
    asyncpg.InterfaceError,  # the client side: closed connection, pool closing, bad parameters
    asyncpg.exceptions.InternalClientError,
    ssl.SSLError,
    # a connection service file asyncpg cannot read: its message quotes the line (a password)
    configparser.Error,
)
# A transaction that lost a race PostgreSQL resolved by aborting it: run it again.
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
TRANSACTION_TRIES = 5
T = TypeVar("T")


# What an operator must fix, for the refusals met when pointing relay at a server (no names).
_SQLSTATE_WORDS = {
    "3D000": "the database does not exist (create it first)",
    "28P01": "password authentication failed",
    "28000": "the server refused the login (check the user and pg_hba.conf)",
    "42501": "permission denied (relay's user must be able to create and use its relay_* tables"
    " in the first schema of its search_path, public by default)",
    "3F000": "no schema to create relay's tables in (the search_path, e.g. the URL's"
    " options=-c search_path=..., names no schema that exists: create it first)",
    "53300": "too many connections (max_connections)",
    # At the start of a connection: a URL parameter asyncpg passed on as a server setting.
    "42704": "a URL parameter names no setting the server knows",
    "22023": "the server refused the value of a setting given as a URL parameter",
    "57P03": "the server is starting up or shutting down",
    # Met in an outage: a connection closed under relay, a database made read-only.
    "08003": "the connection was closed (terminated by the server, or lost)",
    "57P01": "the server closed the connection (pg_terminate_backend, or a shutdown)",
    "25006": "the database is read-only (default_transaction_read_only, or a standby)",
    # A wait cut short: a lock held longer (another replica migrating, an operator's LOCK).
    "57014": "a statement was cancelled (statement_timeout, or by an administrator)",
    "55P03": "a lock was not available in time (lock_timeout)",
}
# asyncpg's own errors, which carry no SQLSTATE (subclasses before their bases).
_CLIENT_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (
        asyncpg.exceptions.TargetServerAttributeNotMatched,
        "no server of the URL's hosts is of the kind target_session_attrs asks for",
    ),
    (asyncpg.exceptions.ProtocolError, "the server's answer broke PostgreSQL's protocol"),
    (
        asyncpg.exceptions.OutdatedSchemaCacheError,
        "a table or type changed under a prepared statement (another replica migrating)",
    ),
    (
        asyncpg.exceptions.InternalClientError,
        "the driver lost track of the connection (closed under it, or terminated)",
    ),
    (
        asyncpg.exceptions.ClientConfigurationError,
        "the URL or a PG* environment variable has a value the driver refuses",
    ),
    (asyncpg.exceptions.DataError, "the driver could not send a value"),
    (
        asyncpg.exceptions.UnsupportedServerFeatureError,
        "the server lacks a feature the driver needs",
    ),
    (
        asyncpg.exceptions.UnsupportedClientFeatureError,
        "the server asks for what the driver cannot do (an authentication method)",
    ),
    (
        asyncpg.InterfaceError,
        "the driver could not use the connection (closed, lost, or the pool closing)",
    ),
)
# Refusals that pass by themselves: a server starting, stopping or full, a connection lost, a
# wait for a lock cut short by the role's statement_timeout or lock_timeout, a database
# read-only for a while (a failover's standby, a disk-full guard).
_PASSING_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03", "57014", "55P03", "25006"})


def unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    """StoreUnavailable naming the kind of an asyncpg/socket error, never its text."""
    sqlstate = getattr(exc, "sqlstate", None)
    kind = type(exc).__name__ + (f" ({sqlstate})" if isinstance(sqlstate, str) else "")
    if words := _words(exc, sqlstate):
        kind = f"{words}: {kind}"
    kind = _tls_refused(exc) or tls_failure(exc) or wire_failure(exc) or kind
    error = StoreUnavailable(f"{what}: {kind}")
    error.__cause__ = exc
    error.passing = _passing(exc)
    return error


def _words(exc: BaseException, sqlstate: object) -> str | None:
    """What a refusal (by its SQLSTATE) or a driver's own error (by its class) means."""
    if isinstance(sqlstate, str):
        return _SQLSTATE_WORDS.get(sqlstate)
    if isinstance(exc, configparser.Error):
        return _service_file_words()
    return next((words for kind, words in _CLIENT_WORDS if isinstance(exc, kind)), None)


def _service_file_words() -> str:
    """Which file could not be read and why that one: the variable alone ("PGSERVICEFILE,
    else ~/.pg_service.conf") left the operator to work out which was read. Its path, never
    its lines (a password)."""
    path = service_file()
    named = "PGSERVICEFILE" if os.environ.get("PGSERVICEFILE") else "PGSERVICEFILE unset"
    shown = f"{path} ({named})" if path is not None else "(PGSERVICEFILE unset, no home)"
    return f"the connection service file {shown} cannot be read"


def _passing(exc: BaseException) -> bool:
    """Whether the store may answer later as configured: a server not listening yet, starting
    up, full, unreachable or a standby for now; not a refused login, a missing database or bad
    TLS."""
    if _tls_refused(exc) or tls_failure(exc):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _PASSING_SQLSTATES or sqlstate.startswith("08")
    return isinstance(exc, OSError) or _failover(exc)  # refused, reset, not found, timed out


# What the server refused in a transaction's content, not the store as a whole: a value it
# cannot take (22: data exception, e.g. an invalid byte sequence) or a constraint it broke (23).
_CONTENT_CLASSES = ("22", "23")


def content_refused(exc: BaseException) -> bool:
    """Whether a failed transaction may have failed for what one of its callers brought (a
    value, or that caller's own code), so that others in it would pass alone; not when the
    store as a whole failed (unreachable, read-only, overloaded, a login refused)."""
    if not isinstance(exc, StoreUnavailable):
        return True  # relay's own code raised, e.g. a caller's decide
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _CONTENT_CLASSES


# The kinds of server relay can write to, as asyncpg names the one asked for in its message.
_WRITABLE_KINDS = ("'primary'", "'read-write'")


def _failover(exc: BaseException) -> bool:
    """Only standbys where the URL's target_session_attrs asks for a primary: a failover
    under way, until one is promoted. (A URL asking for a standby is a mistake to fix: relay
    writes.) asyncpg says which kind was asked for only in its message."""
    return isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched) and any(
        kind in str(exc) for kind in _WRITABLE_KINDS
    )


class ConnectGate:
    """The pool's connect. asyncpg's pool opens a connection for each acquire that finds none
    idle: with the server full (max_connections) or down, each request of an intake at 300/s
    tried one, 320 refused connections a second against a full server, each a backend forked
    to refuse it. After a refusal that passes by itself, the pool's tries within `pause_s` get
    that refusal again at once, without reaching the server; the first after it tries."""

    def __init__(self, pause_s: float = 0.5) -> None:
        self._pause_s = pause_s
        self._refused: tuple[float, BaseException] | None = None

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        if self._refused is not None and time.monotonic() - self._refused[0] < self._pause_s:
            raise self._refused[1].with_traceback(None)
        try:
            conn = await asyncpg.connect(*args, **kwargs)
        except DB_ERRORS as exc:
            if _passing(exc):
                self._refused = (time.monotonic(), exc)
            raise
        self._refused = None
        return conn


def _tls_refused(exc: BaseException) -> str | None:
    """asyncpg's bare ConnectionError for a server without TLS (`ssl = off`) under sslmode
    require or verify-*: only its text (which names the host, so never shown) tells it apart
    from a connection lost. Waiting would not mend it."""
    if type(exc) is ConnectionError and "rejected SSL upgrade" in str(exc):
        return "TLS: the server does not offer it (see sslmode)"
    return None


async def retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when PostgreSQL aborted it to resolve a race (deadlock...)."""
    for tries in range(1, TRANSACTION_TRIES):
        try:
            return await attempt()
        except RETRY_ERRORS:
            await asyncio.sleep(0.01 * tries)
    return await attempt()
