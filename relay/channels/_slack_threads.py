"""The Slack threads a bot-token channel keeps in the store, one per run or digest group.

The store maps a thread's key (see relay.channels.slack) to the `ts` of its first message, in
namespace `slack_thread`; each reply touches the row, and the store prunes rows unused for
`retention`.

One thread per key across processes: replicas on one PostgreSQL (and delivery workers) may
send two notifications of one run at once, and each would find no thread yet and post a first
message of its own. So the first message is posted under the store's named lease
`slack_thread:<key>` (Store.try_lead), held until its `ts` is kept. A sender that finds no
thread and the lease taken waits (polling the store) for the `ts` to reply to, or for the
lease to end: handed back without a thread (that post failed) or lapsed (its holder died), it
starts the thread itself. Within one process the channel's per-key lock already serialises
the sends; the lease costs two store writes per thread started, none per reply.

A store that does not answer loses only the threading: the message goes out on its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from relay.channels import KeyValue, Outgoing
from relay.errors import StoreUnavailable

log = logging.getLogger("relay.channels.slack")
THREADS = "slack_thread"  # kv: thread key -> ts of the thread's first message
START_POLL_S = 0.1  # how often a sender waiting for another's first message looks again


class Threads:
    """The threads of one Slack channel (`channel`: its relay name, for the logs)."""

    def __init__(self, state: KeyValue | None, channel: str, lease_s: float) -> None:
        self._state = state
        self._channel = channel
        self._lease_s = lease_s

    @asynccontextmanager
    async def joined(
        self, key: str, message: Outgoing, legacy: str | None = None
    ) -> AsyncIterator[str | None]:
        """The ts of thread `key` (else of `legacy`, the key an older relay kept it under) to
        reply to; None: the block posts its first message, and no other process does until the
        block ends (call `remember` in it)."""
        ts, owner = await self._ts_or_lease(key, legacy, message)
        try:
            yield ts
        finally:
            if owner is not None:
                await asyncio.shield(self._lead(key, owner, 0.0, message))

    async def _ts_or_lease(
        self, key: str, legacy: str | None, message: Outgoing
    ) -> tuple[str | None, str | None]:
        """(ts, None) for a thread to join; (None, owner of the lease) for one to start;
        (None, None) when the store does not answer."""
        owner = secrets.token_hex(8)
        while True:
            try:
                ts = await self._kept(key, legacy) if self._state else None
            except StoreUnavailable:  # deliver anyway; only the threading is lost
                log.warning("slack thread lookup failed", extra=message.log_fields(self._channel))
                return None, None
            if ts is not None or self._state is None:
                return ts, None
            won = await self._lead(key, owner, self._lease_s, message)
            if won is None:
                return None, None
            if not won:
                await asyncio.sleep(START_POLL_S)
                continue
            try:  # kept just before its starter handed the lease back?
                ts = await self._state.kv_get(THREADS, key)
            except StoreUnavailable:
                ts = None
            if ts is None:
                return None, owner
            await self._lead(key, owner, 0.0, message)
            return ts, None

    async def _kept(self, key: str, legacy: str | None) -> str | None:
        """The ts kept for `key`; else the one kept for `legacy`: a relay from before the Slack
        channel was part of the key started that thread (its reply keeps it under `key`)."""
        assert self._state is not None
        ts = await self._state.kv_get(THREADS, key)
        if ts is None and legacy is not None:
            ts = await self._state.kv_get(THREADS, legacy)
        return ts

    async def _lead(self, key: str, owner: str, ttl_s: float, message: Outgoing) -> bool | None:
        """Take (or with ttl_s 0, hand back) the lease on starting thread `key`; None when the
        store does not answer."""
        assert self._state is not None
        try:
            return await self._state.try_lead(f"{THREADS}:{key}", owner, ttl_s, time.time())
        except StoreUnavailable:
            log.warning("slack thread lease failed", extra=message.log_fields(self._channel))
            return None

    async def remember(self, key: str, ts: str, message: Outgoing) -> None:
        if self._state is None:
            return
        try:
            await self._state.kv_put(THREADS, key, ts, message.timestamp)
        except StoreUnavailable:  # the message is out: never fail (and resend) it for this
            log.warning("slack thread not saved", extra=message.log_fields(self._channel))
