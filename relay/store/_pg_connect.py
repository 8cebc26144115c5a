"""Connecting relay.store.postgres: the URL checked, and what asyncpg gets of it (the DSN, the
connect timeout, TLS, the session's application_name).

TLS follows libpq's `sslmode` (disable, allow, prefer, require, verify-ca, verify-full) in the URL
or PGSSLMODE. asyncpg verifies only against ~/.postgresql/root.crt or `sslrootcert`; relay makes
verify-ca and verify-full trust the system store instead (honouring SSL_CERT_FILE and
SSL_CERT_DIR), unless the URL or PGSSLROOTCERT names a root certificate, as SPEC §3 asks.
`sslrootcert=system` (libpq 16) names the system store and means verify-full: a weaker sslmode
in the URL is refused, as libpq does.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from relay.errors import ConfigError, Problem

SCHEMES = ("postgresql", "postgres")
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


def session_args(url: str, name: str = "relay") -> dict[str, Any]:
    """asyncpg sets no application_name: name relay's connections in pg_stat_activity and the
    server's log (%a) `name` unless the URL or PGAPPNAME does; fallback_application_name as
    libpq."""
    params = dict(parse_qsl(urlsplit(url).query))
    if "application_name" in params:
        return {}
    name = os.environ.get("PGAPPNAME") or params.get("fallback_application_name") or name
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


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: asyncpg rolls back an open transaction before this; relay keeps no other
    session state (no SET, LISTEN or session advisory lock), so its full reset query, a round
    trip on every release, has nothing to undo."""
