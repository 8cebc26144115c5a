"""The file a sqlite:/// RELAY_STORE_URL names, or the ConfigError that says why it names none.

Apart from the engine so that naming the file (a log line, `relay check`, the serve lock) does
not load the engine.
"""

from __future__ import annotations

from pathlib import Path

from relay.errors import ConfigError, Problem

_PREFIX = "sqlite:///"
_USAGE = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"


def sqlite_path(url: str) -> Path:
    """The database file of a sqlite URL: sqlite:///rel.db is relative, sqlite:////abs.db not."""
    if not url.startswith(_PREFIX):
        hint = "a sqlite URL has no host" if url.startswith("sqlite://") else "malformed sqlite URL"
        raise _url_error(f"{hint}; {_USAGE}")
    rest = url[len(_PREFIX) :]
    if not rest or rest == "/":
        raise _url_error(f"the sqlite URL names no file; {_USAGE}")
    if rest == ":memory:" or rest.startswith("file:"):
        raise _url_error("an in-memory or URI sqlite database cannot be durable; name a file")
    if "?" in rest or "\x00" in rest:
        raise _url_error(f"sqlite URL query parameters are not supported; {_USAGE}")
    if rest.endswith("/"):
        raise _url_error(f"the sqlite URL names a directory, not a file; {_USAGE}")
    return Path(rest)


def _url_error(message: str) -> ConfigError:
    return ConfigError([Problem("", "RELAY_STORE_URL", message)])
