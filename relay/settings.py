"""Settings from the environment (RELAY_*), read once at start."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, TypeAdapter, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.durations import Duration, within
from relay.errors import ConfigError, Problem, setting_message

DEFAULT_CONFIG = Path("config.yaml")


_QUERY_SECRETS = frozenset({"password", "sslpassword"})  # libpq's keywords naming one
# libpq's environment variables naming one: asyncpg reads PGPASSWORD when the URL has none, and
# libpq (psql beside relay, a future driver) PGSSLPASSWORD for the TLS key
_ENV_SECRETS = ("PGPASSWORD", "PGSSLPASSWORD")


MAX_WORKERS = 64
WorkerCount = Annotated[int, Field(ge=0, le=MAX_WORKERS)]  # RELAY_WORKERS, --workers


class Settings(BaseSettings):
    """RELAY_CONFIG, RELAY_LISTEN, RELAY_STORE_URL, RELAY_LOG_FORMAT, RELAY_LOG_LEVEL,
    RELAY_WORKERS, RELAY_REPLICA_TIMEOUT."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)

    config: Path = DEFAULT_CONFIG
    listen: str = "0.0.0.0:8080"
    store_url: str = "sqlite:///data/relay.db"
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    workers: WorkerCount = 0  # relay serve: delivery processes (0: none)
    # PostgreSQL: a replica silent this long is dead, and its leased notifications go to others
    replica_timeout: Duration = 15.0

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case(cls, value: object, info: object) -> object:
        if not isinstance(value, str):
            return value
        field = getattr(info, "field_name", "")
        if field == "log_format":
            return value.strip().lower()
        level = value.strip().upper()  # WARN: Alertmanager's --log.level=warn; FATAL: Python's
        return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)

    def secrets(self) -> list[str]:
        """The store's passwords, to keep out of every output: store_url's user's, those of
        libpq's query keywords (`?password=`, `?sslpassword=`, read as asyncpg reads them),
        and, for a PostgreSQL store, PGPASSWORD's and PGSSLPASSWORD's, and those of the files
        asyncpg reads them from (libpq_file_secrets)."""
        if not self.store_url.startswith(("postgresql:", "postgres:")):
            return self._url_secrets()
        env = [value for name in _ENV_SECRETS if (value := os.environ.get(name, ""))]
        return self._url_secrets() + env + libpq_file_secrets(self.store_url)

    def _url_secrets(self) -> list[str]:
        try:
            parts = urlsplit(self.store_url)
            password = parts.password
        except ValueError:
            return []
        found = [unquote(password)] if password else []
        query = parse_qsl(parts.query)
        return found + [value for key, value in query if key in _QUERY_SECRETS and value]

    @field_validator("store_url", mode="before")
    @classmethod
    def _trimmed(cls, value: object) -> object:
        """A URL holds no whitespace: a secret file's newline is not part of the database name.
        Its scheme is read in any case, as URL schemes are (`PostgreSQL://`)."""
        if not isinstance(value, str):
            return value
        if not value.strip():  # a silent sqlite:///data/relay.db would split the replicas
            raise ValueError("empty: set the store's URL, or unset it for sqlite:///data/relay.db")
        scheme, colon, rest = value.strip().partition(":")
        return scheme.lower() + colon + rest if colon else scheme

    @field_validator("config", mode="before")
    @classmethod
    def _named(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # Path("") would be the directory "."
            raise ValueError("empty: name the YAML file, or unset it for ./config.yaml")
        return value

    @field_validator(
        "listen", "log_format", "log_level", "workers", "replica_timeout", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`RELAY_LOG_LEVEL=` (compose's `${LOG_LEVEL}` of an unset variable) takes the default.
        Not RELAY_CONFIG or RELAY_STORE_URL: an empty one is an error, as a default file or
        database in their place would hide a broken deployment."""
        if isinstance(value, str) and not value.strip():
            raise PydanticUseDefault
        return value

    @field_validator("replica_timeout")
    @classmethod
    def _replica_timeout(cls, value: float) -> float:
        """In the units it is written in: `0s` and `2h` were told "Input should be greater
        than or equal to 1" and "less than or equal to 3600" (seconds, not said)."""
        return within(value, 1.0, 3600.0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host_port(value)
        return value

    @property
    def config_explicit(self) -> bool:
        """Whether the operator named a config file (then it must exist)."""
        return "config" in self.model_fields_set

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return host_port(self.listen)


def host_port(value: str) -> tuple[str, int]:
    """Split host:port ([::1]:8080 for IPv6); raise ValueError naming no secret."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):  # not `:٣` (Arabic 3)
        raise ValueError("expected host:port, e.g. 0.0.0.0:8080")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0-65535")
    if not host:  # `:9093`: every address, as Go (Alertmanager's --web.listen-address) has it
        return EVERY_ADDRESS, port
    return _listen_host(host) or "0.0.0.0", port  # noqa: S104 - all interfaces is the default


EVERY_ADDRESS = "*"  # every IPv4 and IPv6 address (one socket for each family)


def _listen_host(host: str) -> str:
    """The host of host:port: an IPv6 address in brackets, as Go's net.SplitHostPort (and so
    Alertmanager's --web.listen-address) has it. `::1:8080` read as [::1]:8080 and `[::1:0`
    as [::1]:0, and `fe80::1` (no port) became the host name `fe80:` on port 1."""
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if "[" in inner or "]" in inner or (":" in inner and not bracketed):
        raise ValueError("an IPv6 address goes in brackets: [::1]:8080")
    return inner


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or a ConfigError naming each bad RELAY_* variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors(include_url=False)]
        raise ConfigError(problems) from None


_SECRET = frozenset({"store_url"})  # its password: no value of it is said


def _problem(err: ErrorDetails) -> Problem:
    """One line naming the variable, what is expected and the value given (unless it is
    secret, empty, or already said): `RELAY_WORKERS=abc` was told pydantic's "Input should be a
    valid integer, unable to parse string as an integer"."""
    name = str(err["loc"][0])
    return Problem("environment", "RELAY_" + name.upper(), _message(err, said=name not in _SECRET))


def _message(err: ErrorDetails, *, said: bool) -> str:
    """setting_message, with the value given unless it is not to be `said`, empty, or said."""
    message = setting_message(err)
    value = err.get("input")
    if said and str(value).strip() and "(got " not in message:
        message += f" (got {value!r})"
    return message


_WORKER_COUNT: TypeAdapter[int] = TypeAdapter(WorkerCount)


def worker_count(text: str) -> int:
    """`relay serve --workers N` read as RELAY_WORKERS is: the same bounds, said in the same
    words (ValueError: "must be at most 64 (got 65)")."""
    try:
        return _WORKER_COUNT.validate_python(text)
    except ValidationError as exc:
        raise ValueError(_message(exc.errors(include_url=False)[0], said=True)) from None


def libpq_file_secrets(url: str) -> list[str]:
    """The passwords asyncpg may read from files beside the URL: every entry's of the password
    file (PGPASSFILE, else ~/.pgpass) and, when a service is named (`?service=`, PGSERVICE),
    every `password` and `sslpassword` of the connection service file (PGSERVICEFILE, else
    ~/.pg_service.conf). All of them, not only the one a connection would pick: a log line
    quoting one (a server or proxy echoing it) is scrubbed whichever it was."""
    try:
        query = urlsplit(url).query
    except ValueError:  # `[::1` ("Invalid IPv6 URL"): the store's check_url refuses the URL
        query = ""
    named = "service" in dict(parse_qsl(query)) or os.environ.get("PGSERVICE")
    services = _service_secrets() if named else []
    return _pgpass_secrets() + services


def service_file() -> Path | None:
    """The connection service file asyncpg reads: PGSERVICEFILE, else ~/.pg_service.conf."""
    return _home_file("PGSERVICEFILE", ".pg_service.conf")


def _home_file(variable: str, name: str) -> Path | None:
    if named := os.environ.get(variable):
        return Path(named)
    with contextlib.suppress(RuntimeError, KeyError):  # no home directory: asyncpg reads none
        return Path.home() / name
    return None


def _read(path: Path | None) -> str:
    """The file's text; "" when there is none or it cannot be read (asyncpg reads nothing)."""
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace") if path is not None else ""
    return ""


def _pgpass_secrets() -> list[str]:
    """host:port:database:user:password lines: each password with its backslash escapes kept,
    as asyncpg sends it, and undone, as libpq does."""
    found: list[str] = []
    for line in _read(_home_file("PGPASSFILE", ".pgpass")).splitlines():
        fields = re.split(r"(?<!\\):", line.strip().replace("\\\\", "\n"), maxsplit=4)
        if len(fields) == 5 and fields[4] and not fields[0].startswith("#"):
            raw = fields[4].replace("\n", "\\\\")
            found += {raw, re.sub(r"\\(.)", r"\1", raw)}
    return found


def _service_secrets() -> list[str]:
    """An INI file (sections of libpq keywords); one configparser cannot read gives none here,
    and the store's connect says so without its text (relay.store._pg_errors)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(_read(service_file()))
    except configparser.Error:
        return []
    values = [
        section.get(key, "") for section in parser.values() for key in ("password", "sslpassword")
    ]
    # asyncpg reads them with configparser's interpolation: `%%` is sent as `%`
    return [form for value in values if value for form in {value, value.replace("%%", "%")}]
