"""A configured channel built into the route delivery sends through (its rate limit, its
concurrency, its timeout), and what a reload's new route keeps of the old one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay import channels as channel_registry
from relay.channels import ChannelEnv
from relay.config import ChannelSettings
from relay.holds import receiver_of
from relay.policy import TokenBucket
from relay.sending import Route

if TYPE_CHECKING:  # aiohttp's: imported by what builds channels, not by `relay check`
    from relay.channels._http import HttpClient
    from relay.configure import Compiled


def route_for(
    compiled: Compiled,
    name: str,
    env: ChannelEnv,
    *,
    throttled: bool = True,
    before: Route | None = None,
) -> Route:
    """Build channel `name` of the config, with its rate limit unless `throttled` is False;
    `before` is the route of that name the config being replaced ran (see `_carry_over`)."""
    settings = compiled.loaded.config.channels[name]
    kind = channel_registry.REGISTRY[settings.type]
    channel = channel_registry.build(name, settings, env)
    limit = settings.rate_limit if throttled else None
    bucket = TokenBucket(limit) if limit is not None else None
    timeout_s = settings.timeout or env.default_timeout_s
    route = Route(
        channel, kind.type, kind.parts, settings.concurrency, bucket, timeout_s, settings=settings
    )
    if before is not None:
        _carry_over(before, route)
    return route


def _carry_over(before: Route, route: Route) -> None:
    """A reload rebuilds every route: a hold set by the receiver's Retry-After was lost, and
    relay called the receiver again at once inside a `Retry-After: 30`, as the token bucket
    forgot the requests just made. The same receiver (the type's own settings unchanged: at
    most timeout, concurrency, rate_limit or send_resolved differ) keeps the hold, shared with
    the draining route, and the same rate limit keeps its bucket. Its sends in flight count
    against the new concurrency until they end (`Slots`)."""
    old, new = before.settings, route.settings
    if old is None or new is None or not _same_receiver(old, new):
        return
    route.hold, route.slots = before.hold, before.slots
    if route.bucket is not None and before.bucket is not None and old.rate_limit == new.rate_limit:
        route.bucket = before.bucket


def repointed(before: Route | None, route: Route) -> bool:
    """Whether `route` sends to another receiver than `before`, the route of its name that the
    config being replaced ran (another URL, address, credentials or type); a channel the
    replaced config did not have (None) is new, not repointed."""
    if before is None:
        return False
    old, new = before.settings, route.settings
    return old is not None and new is not None and not _same_receiver(old, new)


def _same_receiver(old: ChannelSettings, new: ChannelSettings) -> bool:
    return type(old) is type(new) and receiver_of(old) == receiver_of(new)


def http_client() -> HttpClient:
    """A new HTTP client for channels; aiohttp is imported here, by the commands that build
    channels (`relay check` does not: it starts in half the time)."""
    from relay.channels._http import HttpClient  # noqa: PLC0415

    return HttpClient()
