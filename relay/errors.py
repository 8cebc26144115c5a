"""The exception tree of relay, documented in one place.

RelayError                      base of everything relay raises on purpose
├── ConfigError                 the YAML file or the environment is invalid; carries every Problem
├── InputError                  an incoming body has the wrong shape; names the failing field
├── StoreUnavailable            the store cannot commit (disk full, read-only, database down)
└── DeliveryError               one delivery attempt failed; classified where it happened:
                                retryable, reason (one of REASONS), retry_after (seconds or None)

Third-party errors (aiohttp, sqlite3, jinja2) are translated at one boundary each:
channels/_http.py, store/, templating.py. Messages name the kind of failure, never a URL,
token or other secret.
"""

from __future__ import annotations

import difflib
import errno
import re
import socket
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

REASONS = (
    "client_error",
    "server_error",
    "auth_error",
    "rate_limited",
    "timeout",
    "network",
    "template",
    "other",
)


class RelayError(Exception):
    """Base class of relay's own errors."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, with where it is (file:line) and its YAML path."""

    location: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        what = f"{self.path}: " if self.path else ""
        return f"{where}{what}{self.message}"


class ConfigError(RelayError):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# a problem's or warning's `config.yaml:15: ` head (a Problem's str begins with its location)
_LOCATED = re.compile(r"(.+?):(\d+): ")
Found = TypeVar("Found", Problem, str)


def in_file_order(found: list[Found]) -> list[Found]:
    """Each problem or warning once: those headed `file:line: ` by file, then line; the others
    after them, as found (the checks that find them run one after another, not down the file)."""

    def place(item: Found) -> tuple[int, str, int]:
        located = _LOCATED.match(str(item))
        return (0, located[1], int(located[2])) if located else (1, "", 0)

    return sorted(dict.fromkeys(found), key=place)


class InputError(RelayError):
    """An incoming body is malformed; `field` names the failing field (dotted, with indexes)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def field_path(where: str, *keys: str | int) -> str:
    """`where` and then `keys` as an InputError's field: names joined by dots, list indexes in
    brackets (`[3].tags[0]`, as pydantic's `loc` holds them: a key a str, an index an int);
    "" is the body as a whole."""
    path = where
    for key in keys:
        path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
    return path


def did_you_mean(word: str, names: Collection[str], *, quoted: bool = False) -> str:
    """ " (did you mean X?)" with the nearest of `names` to a misspelt `word`, or "". Case and
    `_` for `-` count for nothing: `Prod_Failures_To_Pagerduty` is `prod-failures-to-pagerduty`
    (three swapped separators and a capital scored under the cutoff)."""
    folded: dict[str, list[str]] = {}
    for name in sorted(names):
        folded.setdefault(_folded(name), []).append(name)
    close = difflib.get_close_matches(_folded(word), sorted(folded), n=1, cutoff=0.75)
    if not close:
        return ""
    # of names folded alike (`oncall-slack`, `oncall_slack`), the nearest as written
    name = max(folded[close[0]], key=lambda n: difflib.SequenceMatcher(None, word, n).ratio())
    return f" (did you mean {name!r}?)" if quoted else f" (did you mean {name}?)"


def _folded(name: str) -> str:
    return name.lower().replace("_", "-")


def field_message(err: Mapping[str, Any], show: Callable[[Any], str] | None = None) -> str:
    """A pydantic error's message for a person: without pydantic's "Value error, " prefix, a
    numeric bound in relay's words and `show`'s units ("must be at least 1KiB (got 512B)"; a
    number given is no secret), a choice field's values listed ("expected one of json, text")."""
    kind = str(err["type"])
    if kind in BOUNDS:
        words, key = BOUNDS[kind]
        show = show or _number
        given = err.get("input")
        got = f" (got {show(given)})" if _is_number(given) else ""
        return f"must be {words} {show(err['ctx'][key])}{got}"
    if kind in ("literal_error", "enum"):  # "Input should be 'json' or 'text'"
        return f"expected one of {', '.join(_choices(err))}"
    return str(err["msg"]).removeprefix("Value error, ")


def _choices(err: Mapping[str, Any]) -> list[str]:
    """The values a choice field takes, from pydantic's "'a', 'b' or 'c'" (repr'd)."""
    expected = str(err.get("ctx", {}).get("expected", ""))
    return [choice.strip("'\"") for choice in re.split(r", | or ", expected)]


def setting_message(err: Mapping[str, Any], show: Callable[[Any], str] | None = None) -> str:
    """field_message of a configuration's or environment's value, a number or boolean of the
    wrong type said as expected ("expected a whole number"): pydantic's words named Python's
    types and parsers ("unable to parse string as an integer", "unable to interpret input")."""
    return TYPE_WORDS.get(str(err["type"])) or field_message(err, show)


def input_message(err: Mapping[str, Any]) -> str:
    """setting_message of a field of a body posted (a run, an alert webhook's), in JSON's
    words where pydantic's are Python's ("Input should be a valid string", "... a valid
    dictionary", "String should have at least 1 character"): as `relay check` says them."""
    kind, ctx = str(err["type"]), err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must be at least {least} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind.startswith(("datetime_", "date_")):
        return "expected an ISO-8601 time like 2026-01-01T00:00:00.000Z"
    return _BODY_WORDS.get(kind) or setting_message(err)


# pydantic's words for a JSON value of the wrong type, in JSON's (strings, numbers and booleans:
# TYPE_WORDS, as the configuration's)
_BODY_WORDS = {
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
}


# pydantic's numeric bounds ("Input should be greater than or equal to 1024"): by error type,
# relay's words and the key of the bound in the error's ctx
BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "less_than_equal": ("at most", "le"),
    "greater_than": ("more than", "gt"),
    "less_than": ("less than", "lt"),
}
TYPE_WORDS = {
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number, not a fraction",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)  # 0, not 0.0


def _is_number(value: Any) -> bool:
    """An int or float, or the text of one (an environment variable's): never a bool."""
    if isinstance(value, str):
        return value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    return isinstance(value, int | float) and not isinstance(value, bool)


class StoreUnavailable(RelayError):
    """The store could not commit; nothing was accepted.

    passing: the store may answer later as it is (not running yet, starting up, unreachable
    for now), so `relay serve` waits for it at start; False for what an operator must fix.
    """

    passing = False


class StoreReplaced(StoreUnavailable):
    """The SQLite file was deleted or replaced under a running relay (`rm relay.db`, a backup
    moved over it): its open connection would go on writing to the old file."""

    READINESS = "store file deleted or replaced; restart relay"  # /readyz's reason

    def __init__(self) -> None:
        super().__init__(
            "store file deleted or replaced while relay runs; restart relay to open it again"
        )


class StoreMissing(StoreUnavailable):
    """A store command (`relay dlq`, `silence`, `history`) found no relay tables in its
    PostgreSQL database: relay serve never ran there, or the URL is mistyped."""

    def __init__(self) -> None:
        super().__init__(
            "store open failed: the database holds no relay tables (relay serve or relay"
            " migrate creates them)"
        )


class DeliveryError(RelayError):
    """One delivery attempt failed.

    retryable: whether a later attempt may succeed (429, 5xx, timeouts, network errors).
    reason: one of REASONS, used as is in logs, metric labels and dead letters.
    retry_after: seconds the receiver asked us to wait (Retry-After), if it said.
    status: the receiver's answer code (HTTP, SMTP); for an answer that says one in words
    (Slack's HTTP 200 `service_unavailable`), the code it says (503).
    local: relay's own failure, the receiver never asked (no file descriptor left to even
    connect): tried again without spending an attempt (the age limit still applies).
    later: the receiver said "try later" (an SMTP 4xx): the backoff, no quick retry in process.
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        detail: str = "",
        retry_after: float | None = None,
        status: int | None = None,
        local: bool = False,
        later: bool = False,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown delivery failure reason {reason!r}")
        self.reason = reason
        self.retryable = retryable
        self.detail = detail
        self.retry_after = retry_after
        self.status = status
        self.local = local
        self.later = later
        text = reason if not detail else f"{reason}: {detail}"
        super().__init__(text)


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first (bounded: a chain may loop)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS connection failed ("TLS: certificate not trusted": see SSL_CERT_FILE), from
    the ssl error behind a client library's exception; None when TLS is not the cause. The
    whole chain is looked at: aiohttp's ClientConnectorSSLError is an ssl.SSLError itself,
    without the `reason` of the one it wraps (reading it raised AttributeError)."""
    chain = causes(exc)
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in chain):
        return "TLS: certificate not trusted"
    tls = [cause for cause in chain if isinstance(cause, ssl.SSLError)]
    reasons = {getattr(cause, "reason", None) for cause in tls}
    if "WRONG_VERSION_NUMBER" in reasons:
        # the first bytes back were no TLS record: an SMTP greeting, an HTTP answer
        return "TLS: the server answered in plain text (no TLS on this port)"
    if "TLSV13_ALERT_CERTIFICATE_REQUIRED" in reasons:  # mutual TLS: a webhook's tls.cert_file
        return "TLS: the server asks for a client certificate"
    return "TLS: handshake failed" if tls else None


def wire_failure(exc: BaseException) -> str | None:
    """What failed on the wire, in words that name no host ("connection refused"), from the
    OS error behind a client library's exception; None when none is known."""
    for cause in causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name lookup failed"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, TimeoutError):  # a PostgreSQL server that never answers the
            return "no answer in time"  # connect said only "TimeoutError"
        if isinstance(cause, OSError) and cause.errno in NO_DESCRIPTOR:  # aiohttp said only
            return NO_DESCRIPTOR[cause.errno]  # "ClientConnectorError"
    return None


def network_error(exc: BaseException, detail: str) -> DeliveryError:
    """The retried "network" failure `exc` means, said as `detail`; local (no attempt spent)
    when no file descriptor was left to connect: under a descriptor shortage notifications
    went dead after max_attempts of these without their receiver ever being asked."""
    local = any(isinstance(c, OSError) and c.errno in NO_DESCRIPTOR for c in causes(exc))
    return DeliveryError("network", retryable=True, detail=detail, local=local)


# Every file descriptor in use: the words for it, with what the operator can do.
NO_DESCRIPTOR = {
    errno.EMFILE: "too many open files (EMFILE): raise relay's `ulimit -n`",
    errno.ENFILE: "too many open files in the system (ENFILE)",
}


def first_of(names: list[str], shown: int = 3) -> str:
    """`names` for an error message: the first `shown`, then how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def check_schema(version: int, current: int, *, upgrade: bool) -> None:
    """Refuse a store schema this relay may not use: one newer than `current`, or, unless
    `upgrade` (`relay serve`, `relay migrate`), an older one. The other store commands must
    not migrate behind an operator's back: the relay still running on that store (an older
    release) would refuse it at its next start."""
    if version > current:
        raise StoreUnavailable(
            f"store schema version {version} is newer than this relay supports ({current}):"
            " a newer relay migrated it; run that version, or restore the backup taken before"
            " the upgrade"
        )
    if 0 < version < current and not upgrade:
        raise StoreUnavailable(
            f"store schema version {version} is older than this relay's ({current}): upgrade it"
            " with `relay migrate` (or by starting `relay serve`) first; this command changes"
            " no schema"
        )
