"""The Realtime source: a follower (relay.sources._follower) for each configured feed, each in
its own task over one HTTP session, and only while this replica holds the feed's lease in the
store (one follower per feed across replicas); the positions of feeds no longer configured
are forgotten. A reload hands the source its new config (`reconfigure`): a feed whose
definition and connection settings are unchanged follows on untouched, its long poll in flight
and its metrics as they were; the others stop, and the new ones start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aiohttp

from relay.config_sources import RealtimeConfig
from relay.errors import StoreUnavailable
from relay.outbound import USER_AGENT, new_resolver
from relay.sources._feed import Feed, feed_of
from relay.sources._feed_store import NAMESPACE, ROWS_NAMESPACE, Positions
from relay.sources._follower import Follower
from relay.sources._hooks import Failed, Observe, Submit
from relay.store import KvWrite

log = logging.getLogger("relay.realtime")

LEAD_TTL_S = 30.0


LEAD_RENEW_S = 10.0


# A feed no longer configured is forgotten once its lease has been free this long: far longer
# than a handover (LEAD_TTL_S after a kill -9, the time a replica takes to start again)
FORGET_AFTER_S = 3600.0


def feed_keys(config: RealtimeConfig | None) -> list[str]:
    """The keys of the configured feeds, each once (its position key, its metrics' `feed`)."""
    return [] if config is None else [feed.key for feed in _distinct(map(feed_of, config.feeds))]


def lease_name(key: str) -> str:
    """The name of the lease whose holder follows the feed `key` (one follower across replicas)."""
    return f"realtime:{key}"


class Forgetting(Protocol):
    """The part of the Store that forget_removed_feeds uses."""

    async def kv_list(self, namespace: str) -> dict[str, str]: ...

    async def write_if_free(
        self, name: str, free_since: float, write: KvWrite, now: float
    ) -> bool: ...


async def forget_removed_feeds(
    store: Forgetting, config: RealtimeConfig | None, now: float
) -> list[str]:
    """Delete the stored position and rows of each feed `config` no longer has: nothing reads
    them again (a feed added back starts from a snapshot, which intake deduplicates), and a
    feed holds the raw row of every run in its shape, so the rows of each run id, batch or
    tag set ever followed stayed in the store for good. Returns the keys forgotten.

    Only a feed nobody has followed for FORGET_AFTER_S (its lease free that long): replicas
    run different configs for a while (a rollout adding or removing a feed), and one without
    the feed deleted what the follower had stored, while another replica followed it or in
    the seconds of a handover (its follower killed or stopped, the next not yet there), and
    the next follower resumed from a whole new snapshot and missed the states runs passed
    through meanwhile."""
    kept = set(feed_keys(config))
    gone = []
    for key in sorted(set(await store.kv_list(NAMESPACE)) - kept):
        write = KvWrite(delete=[(NAMESPACE, key)], clear=[f"{ROWS_NAMESPACE}:{key}"])
        if await store.write_if_free(lease_name(key), now - FORGET_AFTER_S, write, now):
            gone.append(key)
    return gone


def _distinct(feeds: Iterable[Feed]) -> list[Feed]:
    """Each feed once: one listed twice (tags in another order are the same feed) would have
    two followers asking for the same runs and racing on one stored position."""
    out: dict[str, Feed] = {}
    for feed in feeds:  # the config's warnings (logged at start) say which entry repeats
        out.setdefault(feed.key, feed)
    return list(out.values())


def _connection(config: RealtimeConfig) -> dict[str, Any]:
    """What every feed of `config` is followed with besides its own definition (api_url,
    secret_key, branch, timeout, error_backoff, and whatever else the block holds): a change
    of any of it changes every feed."""
    return config.model_dump(exclude={"feeds"})


class RealtimeSource:
    """Every configured feed, each in its own task, over one HTTP session."""

    def __init__(
        self,
        config: RealtimeConfig,
        submit: Submit,
        positions: Positions,
        *,
        observe: Observe | None = None,
        failed: Failed | None = None,
        followed: Callable[[str], None] | None = None,
        unfollowed: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._observe = observe
        self._failed = failed
        self._followed = followed  # with a feed's key, once this process follows it
        self._unfollowed = unfollowed  # with a feed's key, once this process stops following it
        self._submit = submit
        self._positions = positions
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, tuple[Feed, asyncio.Task[None]]] = {}  # by feed key
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._led: set[str] = set()
        self._kept: frozenset[str] = frozenset()  # while stopping: the feeds followed on
        self._unreachable: dict[str, StoreUnavailable] = {}  # by lease: why its renewal failed

    def start(self) -> None:
        self._session = aiohttp.ClientSession(  # its lookups in threads of their own
            connector=aiohttp.TCPConnector(resolver=new_resolver()),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),  # as the SDK's fetch: feeds share no cookie
        )
        for feed in _distinct(map(feed_of, self._config.feeds)):
            self._start_feed(feed)
        log.info("realtime source started", extra={"feeds": list(self._tasks)})

    def _start_feed(self, feed: Feed) -> None:
        assert self._session is not None
        follower = Follower(
            feed,
            self._config,
            self._session,
            self._submit,
            self._positions,
            observe=self._observe,
            failed=self._failed,
        )
        task = asyncio.create_task(self._lead(follower), name=f"realtime {feed.key}")
        self._tasks[feed.key] = (feed, task)

    async def reconfigure(self, config: RealtimeConfig) -> None:
        """Follow `config`'s feeds from now on. A feed whose definition and connection settings
        (_connection) are the same runs on untouched: no new request, its long poll in flight
        kept, its rows not read again. The others stop (their leases handed back) and the new
        ones start; a feed of the same key that restarts (its tags in another order, a new
        secret_key) keeps its metrics, as at `stop(kept)`."""
        wanted = {feed.key: feed for feed in _distinct(map(feed_of, config.feeds))}
        same = _connection(config) == _connection(self._config)
        changed = [k for k, (feed, _) in self._tasks.items() if not same or wanted.get(k) != feed]
        await self._stop_feeds(changed, kept=wanted)
        self._config = config
        kept, started = list(self._tasks), [key for key in wanted if key not in self._tasks]
        for key in started:
            self._start_feed(wanted[key])
        log.info(
            "realtime feeds reconfigured",
            extra={"kept": kept, "stopped": changed, "started": started},
        )

    async def _lead(self, follower: Follower) -> None:
        """Follow the feed only while this replica holds its lease (one follower per feed)."""
        name, told = lease_name(follower.feed.key), False
        while True:
            if not await self._hold(name):
                if not told:  # a feed a reload kept was not told unfollowed by the last source
                    self._tell(self._unfollowed, follower.feed.key)
                    told = True
                await asyncio.sleep(LEAD_RENEW_S)
                continue
            log.info("following the feed (lease taken)", extra={"feed": follower.feed.key})
            self._tell(self._followed, follower.feed.key)
            told = False
            task = asyncio.create_task(follower.run())
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=LEAD_RENEW_S)
                    if done:  # a single-run feed ends once its run finished
                        return
                    if not await self._hold(name):
                        self._tell_lost(follower.feed.key)
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if follower.feed.key not in self._kept:
                    self._tell(self._unfollowed, follower.feed.key)
                    told = True

    @staticmethod
    def _tell(hook: Callable[[str], None] | None, feed: str) -> None:
        if hook is not None:
            hook(feed)

    async def _hold(self, name: str) -> bool:
        self._unreachable.pop(name, None)
        try:
            held = await self._positions.try_lead(name, self._owner, LEAD_TTL_S, time.time())
        except StoreUnavailable as exc:
            held, self._unreachable[name] = False, exc
        (self._led.add if held else self._led.discard)(name)
        return held

    def _tell_lost(self, feed: str) -> None:
        """The lease was not renewed: taken by another replica, or the store did not answer
        (the feed is followed again, here or by another replica, once it does)."""
        unreachable = self._unreachable.get(lease_name(feed))
        if unreachable is None:
            log.warning("feed lease lost: another replica follows the feed", extra={"feed": feed})
            return
        log.warning(
            "feed lease not renewed: store not reachable; following again once it is",
            extra={"feed": feed, "error": str(unreachable)},
        )

    async def _stop_feeds(self, keys: list[str], kept: Iterable[str]) -> None:
        """Cancel the followers of `keys` and hand their leases back; those of `kept` are not
        told unfollowed (stop's `kept`)."""
        self._kept = frozenset(kept)
        tasks = [self._tasks.pop(key)[1] for key in keys]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._kept = frozenset()  # a feed that ends later (its run finished) is told
        for name in map(lease_name, keys):
            if name in self._led:
                self._led.discard(name)
                with contextlib.suppress(StoreUnavailable):
                    await self._positions.try_lead(name, self._owner, 0.0, time.time())

    async def stop(self, kept: Iterable[str] = ()) -> None:
        """Cancel every feed (an in-flight long poll ends at once), hand the leases back.
        `kept`: the feeds a reload keeps, which the source started next follows on: they are
        not told unfollowed (their metrics stay: when they last caught up, for
        RelayRealtimeStalled); the next source tells it if it does not take the lease."""
        await self._stop_feeds(list(self._tasks), kept)
        if self._session is not None:
            await self._session.close()
            self._session = None
