"""The YAML configuration's schema: typed, frozen models whose unknown keys are refused, with
the checks of single values (URLs, header values, tokens, globs, regexes). Loading a file and
locating its problems (file:line) is relay.config_load.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import regex
from annotated_types import MinLen
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from relay.durations import (
    Duration,
    PositiveDuration,
    format_duration,
    more_than_zero,
    parse_duration,
    within,
)
from relay.filters import http_url, web_url
from relay.model import EVENTS
from relay.regexes import PatternError, compile_regex
from relay.sizes import Size
from relay.windows import InhibitRule, NamedTimeInterval

DASHBOARD_FIELDS = ("project_ref", "run_id", "task")


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# what aiohttp refuses in a header value at every send (RFC 9110 §5.5): controls but the tab
_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # C0 and DEL: in no name, subject or one-liner


def header_value_problem(text: str) -> str | None:
    """Why `text` cannot be sent as an HTTP header value (a token, a webhook header), or None:
    the HTTP client refuses it at every send (header injection), a traceback each time."""
    if "\r" in text or "\n" in text:
        return "cannot contain line breaks"
    if _HEADER_CONTROL.search(text):
        return "cannot contain control characters (but tab)"
    return None


_HOST_REFUSED = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`]")  # no client can send these in a host


def url_problem(url: str) -> str | None:
    """Why no request can be made of `url` (an http(s) URL), or None. Python's own words are
    not repeated: they quote the [bracketed] part, perhaps a piece of a user:password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number or out of range
        return "has no valid host and port"
    if not host or port == 0 or not _usable_host(host):
        return "has no valid host and port"
    return None


def _usable_host(host: str) -> bool:
    """A name of labels of 1 to 63 characters (DNS's, and what IDNA encodes) without spaces or
    delimiters, or an IPv6 literal."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return all(0 < len(label) <= 63 for label in labels) and _HOST_REFUSED.search(host) is None


def _bare_token(value: Any) -> Any:
    """A token or secret as issued: one read from a file (a Kubernetes or Docker secret) often
    ends with a newline, which no client sends (HTTP trims header values) and the HTTP client
    refuses to send; like Prometheus, relay trims it. A control character inside is refused."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if (problem := header_value_problem(value)) is not None:
        raise ValueError(problem)
    return value


Token = Annotated[SecretStr, BeforeValidator(_bare_token)]  # bearer tokens, signing secrets


class RateLimit(Strict):
    per_second: float | None = Field(default=None, gt=0)
    per_minute: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


def from_config_dir(value: Any, info: ValidationInfo) -> Any:
    """A relative path in a channel's settings (`smtp.ca_file`) as seen from the config file's
    directory, like `templates.dir`: the same file whatever directory relay was started in."""
    base = (info.context or {}).get("config_dir")
    if base is None or not isinstance(value, str | Path) or not str(value):
        return value
    return value if Path(value).is_absolute() else Path(base) / value


class ChannelSettings(Strict):
    """Options every channel has; channel modules subclass it with their own."""

    type: str
    timeout: PositiveDuration | None = None  # 0 would be no timeout at all (aiohttp)
    concurrency: int = Field(default=4, ge=1, le=256)
    rate_limit: RateLimit | None = None
    # false: no recovery (update_on_recovery) goes to this channel; Alertmanager's name
    send_resolved: bool = True


class ServerConfig(Strict):
    auth_token: Token | None = None
    admin_token: Token | None = None
    max_body_bytes: Size = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # the sum of ingest bodies held at once (read, parsed, being stored); over it: 503
    max_body_bytes_in_flight: Size = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)

    @field_validator("auth_token", "admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `auth_token: ${RELAY_INGEST_TOKEN:-}` makes the token optional
        return None if isinstance(value, str) and not value.strip() else value


MIN_RETENTION_S = 3600.0


class RetryPolicy(Strict):
    max_attempts: int = Field(default=12, ge=1, le=1000)
    max_age: PositiveDuration = 24 * 3600.0
    min_backoff: PositiveDuration = 1.0
    max_backoff: PositiveDuration = 600.0

    @field_validator("max_age", "min_backoff", "max_backoff", mode="before")
    @classmethod
    def _more_than_zero(cls, value: Any, info: ValidationInfo) -> float:
        """0 was accepted. A max_age of 0 made every first failure dead, "too old"; a backoff of
        0 doubles to 0: every retry at once, `max_attempts` spent in a moment. The fix says
        what 0 was most likely meant to do."""
        return more_than_zero(value, _RETRY_ZERO[str(info.field_name)])

    @model_validator(mode="after")
    def _backoff_order(self) -> RetryPolicy:
        """`{min_backoff: 10m, max_backoff: 1m}` was accepted, and every wait was the cap:
        the written min_backoff meant nothing. A max_backoff alone below the default 1s is
        that cap from the first retry, as written."""
        written = {"min_backoff", "max_backoff"} <= self.model_fields_set
        if written and self.min_backoff > self.max_backoff:
            raise ValueError(
                f"min_backoff {format_duration(self.min_backoff)} is more than max_backoff"
                f" {format_duration(self.max_backoff)}: the backoff starts at min_backoff and"
                " doubles up to max_backoff"
            )
        return self


_RETRY_ZERO = {
    "max_age": ": max_attempts: 1 sends once, without retrying",
    "min_backoff": ": it doubles from there, and 0 stays 0 (every retry at once)",
    "max_backoff": ": every retry would be at once",
}


class Defaults(Strict):
    project_ref: str | None = None
    dashboard_url: str = "https://cloud.trigger.dev/projects/v3/{project_ref}/runs/{run_id}"
    retry: RetryPolicy = RetryPolicy()
    timeout: PositiveDuration = 10.0
    # finished notifications, their history, and runs are forgotten after this
    retention: Duration = Field(default=30 * 86400.0, ge=MIN_RETENTION_S)

    @field_validator("retention", mode="before")
    @classmethod
    def _retention_at_least(cls, value: Any) -> Any:
        """Said in durations: pydantic's own words were "greater than or equal to 3600"."""
        return within(parse_duration(value), MIN_RETENTION_S)

    @field_validator("dashboard_url")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return _links_somewhere(placeholders(value, DASHBOARD_FIELDS))


def placeholders(value: str, known: tuple[str, ...]) -> str:
    """`value`, checked as str.format reads it when it is filled: a brace left open (or closed
    alone), or a placeholder not in `known`, is refused here, not by every notification;
    `{{`/`}}` are literal braces."""
    try:
        fields = [(n, c, s) for _, n, s, c in Formatter().parse(value) if n is not None]
    except ValueError:
        raise ValueError("a lone { or }: write {{ or }} for a literal brace") from None
    for name, conversion, spec in fields:
        if name not in known or conversion or spec:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" * bool(spec))
            raise ValueError(f"unknown placeholder {{{written}}}; use {', '.join(known)}")
    return value


def _links_somewhere(pattern: str) -> str:
    """`pattern` if filling it makes an absolute http(s) URL with a host: `ftp://…`, a relative
    path or `https:///runs/{run_id}` passed, and every notification went out without a link
    (web_url, at send, drops what is no web link)."""
    made = pattern.format(**{name: name for name in DASHBOARD_FIELDS})
    if http_url(made.strip()) is None:
        raise ValueError(
            "must start with https:// (or http://): links are made from it, and no"
            " notification would get one"
        )
    if web_url(made) is None:
        raise ValueError(
            "makes no link: it needs a host, no spaces, at most 2000 characters; no"
            " notification would get one"
        )
    return pattern


_Model = TypeVar("_Model", bound=BaseModel)


def _not_empty(model: _Model) -> _Model:
    """`model` if the file gave any of its keys a value; `{}` (or `{gt: }`, a value left out:
    null) is a problem naming the keys it takes."""
    if all(getattr(model, name) is None for name in model.model_fields_set):
        raise ValueError(f"empty: give at least one of {', '.join(type(model).model_fields)}")
    return model


class Threshold(Strict):
    # finite: `.nan` compares false with every value (a rule that never fires), `.inf` likewise
    gt: float | None = Field(default=None, allow_inf_nan=False)
    gte: float | None = Field(default=None, allow_inf_nan=False)
    lt: float | None = Field(default=None, allow_inf_nan=False)
    lte: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("gt", "gte", "lt", "lte", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return value

    @model_validator(mode="after")
    def _satisfiable(self) -> Threshold:
        """`{gt: 500, lt: 100}` holds for no value: a rule that silently never fires; `{}`
        holds for every run, most likely a bound left out."""
        _not_empty(self)
        lows = [(v, not inclusive) for v, inclusive in ((self.gt, False), (self.gte, True))]
        highs = [(v, inclusive) for v, inclusive in ((self.lt, False), (self.lte, True))]
        low = max(((v, x) for v, x in lows if v is not None), default=None)  # tightest
        high = min(((v, x) for v, x in highs if v is not None), default=None)
        if low is None or high is None or low[0] < high[0]:
            return self
        if low[0] == high[0] and not low[1] and high[1]:  # gte == lte: that one value
            return self
        raise ValueError("no value is above the lower bound and below the upper one")


def one_or_many(value: Any) -> Any:
    """One name where a list of them goes is a list of one: `notify: pager`, `status: FAILED`,
    `any: env:prod` (as Alertmanager's `receiver: pager` names one)."""
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str], BeforeValidator(one_or_many)]
SomeNames = Annotated[list[str], MinLen(1), BeforeValidator(one_or_many)]


class TagMatch(Strict):
    # `any: []` would hold for no run: refused (as `status: []` and `task: []`) rather than
    # read one way or the other; `all: []` and `none: []` hold for every run, as they say
    any: SomeNames | None = None
    all: Names | None = None
    none: Names | None = None

    @field_validator("any", "all")
    @classmethod
    def _no_empty_tag(cls, value: list[str] | None) -> list[str] | None:
        # `any: ["${TAG:-}"]` left unset: a condition only a run tagged "" meets, silently
        if any(not tag for tag in value or ()):
            raise ValueError("an empty tag: only a run tagged with empty text would match")
        return value

    @model_validator(mode="after")
    def _something(self) -> TagMatch:
        """`tags: {}` holds for every run, most likely a condition left out."""
        return _not_empty(self)


def _scalar(value: Any) -> Any:
    """A metadata value to compare with: one problem naming what to write, not one per type
    of the union (`.str: Input should be a valid string`, `.int: …`) for a mapping or list."""
    if isinstance(value, dict):
        raise ValueError(
            "expected text, a number, true/false or null; a nested key is written as a dotted"
            " path (`customer.tier: enterprise`)"
        )
    if isinstance(value, list):
        raise ValueError("expected text, a number, true/false or null (one value to equal)")
    return value


Scalar = Annotated[str | int | float | bool | None, BeforeValidator(_scalar)]


class MatchConfig(Strict):
    event: str = "run"  # first: `status` is checked against the vocabulary of its event
    status: SomeNames | None = None  # `[]`: a rule that never fires
    task: SomeNames | None = None  # `[]` used to match every task
    task_regex: str | None = None
    tags: TagMatch | None = None
    cost_cents: Threshold | None = None
    base_cost_cents: Threshold | None = None
    duration_ms: Threshold | None = None
    is_test: bool | None = None
    metadata: dict[str, Scalar] | None = None

    @field_validator("task")
    @classmethod
    def _no_empty_glob(cls, value: list[str] | None) -> list[str] | None:
        # `task: ${TASK:-}` left unset: a glob only a run without a task matches, silently
        if any(not glob for glob in value or ()):
            raise ValueError("an empty glob matches only a run without a task; `*` matches all")
        return value

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        if value not in EVENTS:
            raise ValueError(f"unknown event; use one of {', '.join(EVENTS)}")
        return value

    @field_validator("task_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_task_regex(value)
        return value


def compile_task_regex(source: str) -> regex.Pattern[str]:
    """A rule's `task_regex`, compiled by the `regex` module, which can stop a match that
    backtracks for ever (`re` cannot). ValueError when invalid or too large (relay.regexes):
    `a{99999999999}` was an OverflowError traceback in relay check."""
    try:
        return compile_regex(source)
    except PatternError as exc:
        raise ValueError(f"invalid regex: {exc}") from None


class RuleConfig(Strict):
    name: str = Field(min_length=1, max_length=200)
    match: MatchConfig = MatchConfig()
    when: str | None = Field(default=None, max_length=4000)
    notify: SomeNames
    template: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    continue_: bool = Field(default=False, alias="continue")
    group_by: Names | None = None
    group_wait: Duration | None = None
    # 0 is refused, as Alertmanager does ("group_interval cannot be zero"): no least time
    # between two digests is no digest, every burst a message of its own `group_wait` later
    group_interval: PositiveDuration | None = None
    repeat_interval: PositiveDuration | None = None  # its own fix said: _repeat_interval
    mute_time_intervals: list[str] | None = None
    active_time_intervals: list[str] | None = None
    # when a run this rule notified about later completes: resolve / update / tell the channels
    update_on_recovery: bool = False

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        """A rule name is stored with the runs it fired for (joined with a control character),
        and written in logs and messages: a control character in it broke that record."""
        if CONTROL_CHARS.search(value):
            raise ValueError("a rule name cannot contain control characters")
        return value

    @field_validator("repeat_interval", mode="before")
    @classmethod
    def _repeat_interval(cls, value: Any) -> Any:
        """0 was accepted (and read as group_interval); Alertmanager refuses it ("repeat_interval
        cannot be zero"). The fix says what 0 was most likely meant to do."""
        fix = ": group_interval's value (5m unless set) closes a group soonest"
        return value if value is None else more_than_zero(value, fix)

    @field_validator("group_by")
    @classmethod
    def _every_run_alone(cls, value: list[str] | None) -> list[str] | None:
        twice = [path for i, path in enumerate(value or ()) if path in (value or ())[:i]]
        if twice:  # as Alertmanager refuses: "duplicated label in group_by" (`...` too)
            raise ValueError(f"{twice[0]!r} is listed twice")
        if value is not None and "..." in value and len(value) > 1:  # as Alertmanager refuses
            raise ValueError("`...` (every run a group of its own) cannot go with other paths")
        return value


class TriggerAlertsConfig(Strict):
    """POST /v1/trigger/alerts: Trigger.dev alert webhooks, signed with a channel's secret.

    `secret` for one alert channel, `secrets` for several projects; a body is accepted when its
    signature matches any of them.
    """

    secret: Token | None = None
    secrets: list[Token] = []

    def model_post_init(self, context: Any) -> None:
        if not any(s.get_secret_value() for s in self.all_secrets()):
            raise ValueError("set `secret` (or `secrets`): unsigned alert webhooks are refused")

    def all_secrets(self) -> list[SecretStr]:
        return ([self.secret] if self.secret is not None else []) + list(self.secrets)


# What Trigger.dev's Realtime refuses in a tag (400 "Invalid tag"): control characters, DEL,
# backslash, double quote (UNSAFE_REALTIME_TAG_CHARS, apps/webapp/app/v3/electricShape.server.ts).
_UNSAFE_TAG = re.compile(r'[\x00-\x1f\x7f\\"]')
# Trigger.dev's createdAt grammar (parseNaturalLanguageDurationAgo): anything else is no window.
_TRIGGER_DURATION = re.compile(r"(?:[0-9]+(?:w|d|hr|h|m|s))+")
_TRIGGER_PARTS = re.compile(r"([0-9]+)(w|d|hr|h|m|s)")


class RealtimeFeed(Strict):
    """One Realtime subscription: by tags (all must match), by run id, or by batch id."""

    tags: list[str] | None = None
    created_at: str = "24h"
    # empty, `/realtime/v1/runs/` would be the environment's every run
    run_id: str | None = Field(default=None, min_length=1)
    batch_id: str | None = Field(default=None, min_length=1)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        """Trigger.dev splits `tags` on commas, and takes `tags=` for no tags (every run); it
        answers 400 "Invalid tag" to every request naming a tag with a character of
        _UNSAFE_TAG (its UNSAFE_REALTIME_TAG_CHARS), so such a feed could never start."""
        if value is not None and any(not tag or "," in tag for tag in value):
            raise ValueError(
                "a feed's tags cannot be empty or contain a comma (Trigger.dev splits the"
                " tags on commas); tags: [] follows every run"
            )
        if value is not None and any(_UNSAFE_TAG.search(tag) for tag in value):
            raise ValueError(
                "a feed's tags cannot hold a double quote, a backslash or a control character"
                " (Trigger.dev refuses such a tag with 400 Invalid tag)"
            )
        return value

    @field_validator("created_at")
    @classmethod
    def _window(cls, value: str) -> str:
        """Sent as written: Trigger.dev reads only whole numbers with w/d/h/hr/m/s units and
        silently drops a window it cannot read, so the feed would hold every run ever made."""
        if len(value) > 100 or not _TRIGGER_DURATION.fullmatch(value):
            raise ValueError(
                "created_at must be a duration Trigger.dev reads: whole numbers with units"
                " w, d, h, m, s (24h, 90m, 1h30m)"
            )
        return value

    @property
    def window_s(self) -> int:
        """`created_at` in seconds, as Trigger.dev reads it (`hr` and `h` alike)."""
        units = {"w": 604800, "d": 86400, "hr": 3600, "h": 3600, "m": 60, "s": 1}
        return sum(int(n) * units[u] for n, u in _TRIGGER_PARTS.findall(self.created_at))

    def model_post_init(self, context: Any) -> None:
        chosen = [x for x in (self.tags, self.run_id, self.batch_id) if x is not None]
        if len(chosen) != 1:
            raise ValueError("a feed needs exactly one of tags, run_id, batch_id")


class RealtimeConfig(Strict):
    """Follow Trigger.dev Realtime (Electric shape long-polling) with a secret key."""

    api_url: str = "https://api.trigger.dev"
    secret_key: Token
    # a preview environment's branch: its key is the preview environment's, and Trigger.dev
    # answers for a branch only with `x-trigger-branch` (as the SDK's TRIGGER_PREVIEW_BRANCH)
    branch: str | None = Field(default=None, max_length=256)
    feeds: list[RealtimeFeed] = Field(min_length=1)
    # per request; must outlast the server's long-poll hold (~20 s)
    timeout: PositiveDuration = 60.0
    # wait after 400/401/403/404 (logged) before trying again: an operator may fix the key
    error_backoff: PositiveDuration = 60.0

    @field_validator("secret_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("secret_key is empty (the environment's tr_… key)")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        """Trimmed like the SDK's; empty (`${TRIGGER_PREVIEW_BRANCH:-}` unset) is no branch."""
        if value is None or not value.strip():
            return None
        if (problem := header_value_problem(value)) is not None:
            raise ValueError(f"branch {problem}")
        if not value.isascii():  # `feat/café` would arrive as `feat/cafÃ©`: no such branch
            raise ValueError(
                "branch can only be ASCII: x-trigger-branch goes out as UTF-8, and Trigger.dev"
                " reads a header's bytes as Latin-1, so it would find no such branch"
            )
        return value.strip()

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if (url := http_url(value)) is None:
            raise ValueError("api_url must be an http:// or https:// URL")
        if (problem := url_problem(value)) is not None:
            raise ValueError(f"api_url {problem}")
        if urlsplit(value).username is not None:  # the client refuses it beside the bearer key
            raise ValueError("api_url cannot carry a user:password; secret_key authenticates")
        return url.rstrip("/")


class SourcesConfig(Strict):
    trigger_alerts: TriggerAlertsConfig | None = None
    realtime: RealtimeConfig | None = None


class TemplatesConfig(Strict):
    dir: Path | None = None


class Config(Strict):
    server: ServerConfig = ServerConfig()
    sources: SourcesConfig = SourcesConfig()
    channels: dict[str, ChannelSettings] = {}
    templates: TemplatesConfig = TemplatesConfig()
    rules: list[RuleConfig] = []
    defaults: Defaults = Defaults()
    time_intervals: list[NamedTimeInterval] = []
    inhibit_rules: list[InhibitRule] = []

    def channel(self, name: str) -> ChannelSettings:
        return self.channels[name]

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The rule names and the channel names (what silences' matchers are checked against)."""
        return tuple(rule.name for rule in self.rules), tuple(self.channels)
