"""The schema of the `sources` section: Trigger.dev alert webhooks (their signing secrets) and
Realtime feeds (the key, the branch, what each feed follows), checked as Trigger.dev reads them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from relay.config_base import Strict, Token, header_value_problem, url_problem
from relay.durations import PositiveDuration
from relay.filters import http_url


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
