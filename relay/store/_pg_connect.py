"""Connecting relay.store.postgres: the URL, TLS, and the one boundary where asyncpg errors end.

Every asyncpg or socket error becomes StoreUnavailable naming the kind of failure (the
exception class, e.g. ConnectionRefusedError, CannotConnectNowError, after words saying what it
means where relay knows them: by SQLSTATE for the server's, by class for the driver's own) and
never its text, which may hold the host, the user or the DSN.

TLS follows libpq's `sslmode` (disable, allow, prefer, require, verify-ca, verify-full) in the URL
or PGSSLMODE. asyncpg verifies only against ~/.postgresql/root.crt or `sslrootcert`; relay makes
verify-ca and verify-full trust the system store instead (honouring SSL_CERT_FILE and
SSL_CERT_DIR), unless the URL or PGSSLROOTCERT names a root certificate, as SPEC §3 asks.
`sslrootcert=system` (libpq 16) names the system store and means verify-full: a weaker sslmode
in the URL is refused, as libpq does.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.errors import ConfigError, Problem, StoreUnavailable, tls_failure, wire_failure
from relay.settings import service_file

SCHEMES = ("postgresql", "postgres")
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
_VERIFY_MODES = ("verify-ca", "verify-full")
_SYSTEM = "system"  # sslrootcert=system: the system store, as libpq 16 reads it
_SSL_MODES = ("disable", "allow", "prefer", "require", *_VERIFY_MODES)
# libpq keywords asyncpg does not know: it would send them to the server as settings, and the
# server refuses the connection (UndefinedObjectError). Client-side knobs, safe to leave out;
# connect_timeout is applied by relay itself (dsn_and_timeout).
_CLIENT_ONLY = frozenset(
    {
        "connect_timeout",
        "fallback_application_name",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "load_balance_hosts",
        "sslcompression",
        "sslsni",
        "tcp_user_timeout",
    }
)
# Protections asyncpg cannot give: the values that ask for nothing are left out, others refused.
_UNSUPPORTED = {"channel_binding": ("disable", "prefer"), "gssencmode": ("disable", "prefer")}


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


def check_url(url: str) -> None:
    """Raise ConfigError when RELAY_STORE_URL is not a usable postgresql:// URL (no secrets)."""
    try:
        parts = urlsplit(url)  # several hosts (h1:5432,h2:5432) are fine: asyncpg tries each
    except ValueError:
        raise _url_error("malformed postgresql URL") from None
    if parts.scheme not in SCHEMES:
        raise _url_error("a postgresql URL starts with postgresql:// or postgres://")
    if "@" in parts.path:  # `user:pa/ss@host/db`: host "pa", and relay waited for it for ever
        raise _url_error(f"an @ after the host: {_ENCODE}")
    if problem := _hosts_problem(parts.netloc.rpartition("@")[2]):
        raise _url_error(f"{problem} ({_ENCODE})" if problem == _BAD_PORT else problem)
    if parts.query and not all("=" in field for field in parts.query.split("&")):
        # `?sslmode=require&` or `?x`: asyncpg's ValueError, a traceback after relay check's OK
        raise _url_error("each query parameter is key=value, joined by a single &")
    params = dict(parse_qsl(parts.query))
    # asyncpg reads these when the URL names no host: `?host=h1:5432,h2&port=5432,5433`
    if problem := _hosts_problem(params.get("host", "")):
        raise _url_error(f"host parameter: {problem}")
    if "port" in params and not all(map(_port_valid, params["port"].split(","))):
        raise _url_error(f"port parameter: {_BAD_PORT}")
    mode = params.get("sslmode")
    if mode is not None and mode not in _SSL_MODES:
        raise _url_error(f"sslmode must be one of {', '.join(_SSL_MODES)}")
    if params.get("sslrootcert") == _SYSTEM and mode not in (None, "verify-full"):
        raise _url_error("sslrootcert=system needs sslmode=verify-full (or no sslmode)")
    _check_environment(parts.netloc.rpartition("@")[2], params)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _UNSUPPORTED and value not in _UNSUPPORTED[key]:
            raise _url_error(
                f"{key}={value} is not supported (only {' or '.join(_UNSUPPORTED[key])})"
            )
        if key == "connect_timeout" and _seconds(value) is None:
            raise _url_error("connect_timeout is a whole number of seconds")


def _check_environment(url_hosts: str, params: dict[str, str]) -> None:
    """libpq's PGPORT and PGHOST, which asyncpg reads when the URL leaves them out, with a value
    it would end in a traceback over (ValueError, OverflowError) after relay check said OK.
    asyncpg reads the hosts before the query, so PGPORT beside hosts in the URL, even with
    `?port=`; PGHOST when the URL names no host."""
    ports = os.environ.get("PGPORT")
    read = url_hosts or "port" not in params
    if ports and read and not all(map(_port_valid, ports.split(","))):
        raise ConfigError([Problem("", "PGPORT", f"{_BAD_PORT} (libpq's variable)")])
    hosts = os.environ.get("PGHOST")
    if hosts and not url_hosts and "host" not in params and (problem := _hosts_problem(hosts)):
        raise ConfigError([Problem("", "PGHOST", f"{problem} (libpq's variable)")])


def dsn_and_timeout(url: str, default_timeout: float) -> tuple[str, float]:
    """The URL for asyncpg without the libpq keywords it does not know, and the connect
    timeout: the URL's connect_timeout (libpq: seconds, at least 2; 0 is the default here)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k not in _CLIENT_ONLY and k not in _UNSUPPORTED]
    timeout = default_timeout
    for key, value in query:
        if key == "connect_timeout" and (seconds := _seconds(value) or 0) > 0:
            timeout = max(float(seconds), 2.0)
    if len(kept) == len(query):
        return url, timeout
    return urlunsplit(parts._replace(query=urlencode(kept))), timeout


def _seconds(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _hosts_problem(hosts: str) -> str | None:
    """What asyncpg would end in a traceback over (ValueError, IndexError) in a list of hosts
    `h1:5432,[::1]:5433,/run/postgresql`, read as it reads them: an empty host, a bad port."""
    for spec in hosts.split(",") if hosts else ():
        if not spec:
            return "a host in the list is empty (h1,,h2)"
        port = _port_of(spec)
        if port is None or (port and not _port_valid(port)):
            return _BAD_PORT
    return None


def _port_of(spec: str) -> str | None:
    """The port of one host (`h:5432`, `[::1]:5432`, a socket directory): "" if none, None if
    what follows an IPv6 address is not `:port`."""
    if spec.startswith("/"):
        return ""
    if not spec.startswith("["):
        return spec.partition(":")[2]  # asyncpg splits at the first colon
    rest = spec.partition("]")[2]
    return rest[1:] if rest.startswith(":") or not rest else None


def _port_valid(text: str) -> bool:
    """A port number asyncpg's int() reads and a socket takes ("²" is a digit int() refuses)."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


_BAD_PORT = "a port is not a number from 1 to 65535"


_ENCODE = "percent-encode / ? # @ in a user or password as %2F %3F %23 %40"


def _url_error(message: str) -> ConfigError:
    return ConfigError([Problem("", "RELAY_STORE_URL", message)])


def connect_args(url: str) -> dict[str, Any]:
    """Keyword arguments for asyncpg.connect/create_pool beside the DSN: the TLS context."""
    params = dict(parse_qsl(urlsplit(url).query))
    mode = params.get("sslmode") or os.environ.get("PGSSLMODE")
    own_root = params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
    if own_root == _SYSTEM:  # libpq's name for the system store; asyncpg opens a file "system"
        return {"ssl": system_trust_context(True, params)}  # verify-full, whatever PGSSLMODE says
    if mode not in _VERIFY_MODES or own_root:
        return {}  # asyncpg applies sslmode (and sslrootcert) the way libpq does
    return {"ssl": system_trust_context(mode == "verify-full", params)}


def session_args(url: str) -> dict[str, Any]:
    """asyncpg sets no application_name: name relay's connections in pg_stat_activity and the
    server's log (%a) unless the URL or PGAPPNAME does; fallback_application_name as libpq."""
    params = dict(parse_qsl(urlsplit(url).query))
    if "application_name" in params:
        return {}
    name = os.environ.get("PGAPPNAME") or params.get("fallback_application_name") or "relay"
    return {"server_settings": {"application_name": name}}


def unreadable_tls_file(url: str) -> str | None:
    """The parameter naming a certificate or key file that cannot be read, if asyncpg will read
    it: asyncpg's FileNotFoundError looks like a server socket not there yet, and a missing file
    does not appear by waiting."""
    params = dict(parse_qsl(urlsplit(url).query))
    mode = params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"
    if mode == "disable":
        return None
    names: tuple[str, ...] = (
        "sslcert",
        "sslkey",
        *(("sslrootcert",) if mode in ("require", *_VERIFY_MODES) else ()),
    )
    for name in names:
        path = params.get(name) or os.environ.get(f"PG{name.upper()}")
        # as written: asyncpg (as libpq) expands no ~, so `~/client.pem` is not read either
        if path and path != _SYSTEM and not os.access(path, os.R_OK):
            return name
    return None


def system_trust_context(check_hostname: bool, params: dict[str, str]) -> ssl.SSLContext:
    """The system store (SSL_CERT_FILE/SSL_CERT_DIR honoured), plus a client cert if named."""
    context = ssl.create_default_context()
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    cert = params.get("sslcert") or os.environ.get("PGSSLCERT")
    if cert:
        key = params.get("sslkey") or os.environ.get("PGSSLKEY") or None
        context.load_cert_chain(cert, keyfile=key)
    return context


def clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL; SQLite can. Keep such (hostile) input storable."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def clean_opt(text: str | None) -> str | None:
    return None if text is None else clean(text)


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: asyncpg rolls back an open transaction before this; relay keeps no other
    session state (no SET, LISTEN or session advisory lock), so its full reset query, a round
    trip on every release, has nothing to undo."""


async def retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run a transaction again when PostgreSQL aborted it to resolve a race (deadlock...)."""
    for tries in range(1, TRANSACTION_TRIES):
        try:
            return await attempt()
        except RETRY_ERRORS:
            await asyncio.sleep(0.01 * tries)
    return await attempt()
