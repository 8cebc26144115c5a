"""A receiver's Retry-After outlives the process that read it. A channel's hold is kept in the
store (kv namespace `holds`, one key per channel) when a Retry-After sets or extends it, and read
when delivery starts: a restart (after `kill -9` too), a new delivery worker, another replica
starting on the same PostgreSQL. The first sends of the new process no longer call the receiver
inside the wait it asked for (each such call refused again, an attempt spent, the limit
prolonged). Stored with a digest of the receiver (the channel's settings but how relay sends):
a channel pointed elsewhere since starts afresh: what the old receiver put off (its backoffs, its
Retry-After) is due at once (`start_afresh`, on a reload that repoints it, or at a start inside
the old receiver's hold). The digest is a SHA-256 of settings that may
hold secrets (a Slack webhook URL): one-way, and never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from relay.config import ChannelSettings
from relay.errors import StoreUnavailable
from relay.sending import Route
from relay.store import Store

log = logging.getLogger("relay.delivery")

NAMESPACE = "holds"

# ChannelSettings' own options say how relay sends, not where to or as whom
SENDING_OPTIONS = frozenset(ChannelSettings.model_fields)


def receiver_of(settings: ChannelSettings) -> dict[str, Any]:
    """Where a channel sends and as whom: its settings but the sending options."""
    return settings.model_dump(exclude=set(SENDING_OPTIONS))


def receiver_key(settings: ChannelSettings) -> str:
    """A one-way digest of the channel's receiver (its type and receiver_of)."""
    dumped = json.dumps(receiver_of(settings), sort_keys=True, default=_plain)
    return hashlib.sha256(f"{type(settings).__name__}\x1f{dumped}".encode()).hexdigest()


def _plain(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


async def save(store: Store, channel: str, receiver: str, until: float, now: float) -> None:
    """Keep the hold of `channel` (until `until`, wall clock); a store blip only loses it for
    the next process, which then learns it from the receiver again."""
    value = json.dumps({"until": until, "receiver": receiver})
    try:
        await store.kv_put(NAMESPACE, channel, value, now)
    except StoreUnavailable:
        log.warning("channel hold not stored: store unavailable", extra={"channel": channel})


async def restore(store: Store, routes: Mapping[str, Route], now: float) -> dict[str, float]:
    """Set on these routes the holds stored for their receivers that still run; {channel:
    until} of those set. Nothing when the store cannot be read (they are learnt again)."""
    try:
        stored = await store.kv_get_many(NAMESPACE, list(routes))
    except StoreUnavailable:
        return {}
    restored: dict[str, float] = {}
    for channel, value in stored.items():
        if _repointed(routes[channel], value, now):
            await start_afresh(store, channel, routes[channel], now)
            continue
        until = _adopt(routes[channel], value, now)
        if until is None:
            continue
        restored[channel] = until
        extra = {"channel": channel, "hold_s": round(until - now, 3)}
        log.warning(
            "channel held since before this start (the receiver's Retry-After)", extra=extra
        )
    return restored


async def learn(store: Store, channel: str, route: Route, now: float) -> float | None:
    """While this process runs: the hold another process stored for this channel's receiver
    (a replica that got the receiver's Retry-After), set on `route` when it ends later than
    the route's own; its end, or None (none new, or the store cannot be read: the receiver
    tells this process itself)."""
    try:
        value = await store.kv_get(NAMESPACE, channel)
    except StoreUnavailable:
        return None
    if value is None or (until := _adopt(route, value, now)) is None:
        return None
    extra = {"channel": channel, "hold_s": round(until - now, 3)}
    log.warning("channel held by another replica (the receiver's Retry-After)", extra=extra)
    return until


async def start_afresh(store: Store, channel: str, route: Route, now: float) -> None:
    """Channel `channel` points at another receiver since the last one put its notifications
    off: they are due now (Store.start_afresh), and the hold stored is the new receiver's,
    none; a store blip leaves them their times (the old hold's end at the latest)."""
    try:
        count = await store.start_afresh(channel, now=now)
    except StoreUnavailable:
        extra: dict[str, object] = {"channel": channel}
        log.warning("notifications put off keep their times: store unavailable", extra=extra)
        return
    if route.settings is not None:
        await save(store, channel, receiver_key(route.settings), 0.0, now)
    if count:
        extra = {"channel": channel, "notifications": count}
        log.info("channel points at another receiver; what it put off is due now", extra=extra)


def _repointed(route: Route, value: str, now: float) -> bool:
    """Whether the stored hold `value` still runs for another receiver than `route`'s."""
    until, receiver = _read(value) or (0.0, "")
    settings = route.settings
    return until > now and settings is not None and receiver != receiver_key(settings)


def _adopt(route: Route, value: str, now: float) -> float | None:
    """Hold `route` until the stored hold `value` ends, if it is its receiver's and ends later
    than the route's own hold; that end, or None."""
    until, receiver = _read(value) or (0.0, "")
    if until <= max(now, route.hold.until) or route.settings is None:
        return None
    if receiver != receiver_key(route.settings):
        return None
    route.hold.extend_to(now, until)
    return until


def _read(value: str) -> tuple[float, str] | None:
    """A stored hold's end and receiver; None for a value this version cannot read."""
    try:
        found = json.loads(value)
        until, receiver = found["until"], found["receiver"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(until, int | float) or not isinstance(receiver, str):
        return None
    return float(until), receiver
