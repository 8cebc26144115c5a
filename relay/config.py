"""The YAML configuration's schema: `Config`, its top-level sections (server, channels'
common options, retry policy, defaults, templates) and the checks of their values. A rule's
schema is relay.config_rules, the sources' relay.config_sources, the base model and the checks
of single values relay.config_base. Loading a file and locating its problems (file:line) is
relay.config_load.
"""

from __future__ import annotations

from pathlib import Path
from string import Formatter
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from relay.config_base import Strict, Token
from relay.config_rules import RuleConfig
from relay.config_sources import SourcesConfig
from relay.durations import (
    Duration,
    PositiveDuration,
    format_duration,
    more_than_zero,
    parse_duration,
    within,
)
from relay.filters import http_url, web_url
from relay.sizes import Size
from relay.windows import InhibitRule, NamedTimeInterval

DASHBOARD_FIELDS = ("project_ref", "run_id", "task")


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
