"""relay serve's waits at its start: for the SQLite file another `relay serve` holds, and for a
store that cannot answer yet (a PostgreSQL still starting). A stop asked for meanwhile cuts
either short (StoppedWhileStarting)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable

from relay.config import RetryPolicy
from relay.errors import StoreUnavailable
from relay.listening import os_reason
from relay.policy import backoff_s
from relay.settings import Settings
from relay.store import Store
from relay.store.opening import SERVE_LOCK_HELD, ServeLock, serve_lock, store_name

log = logging.getLogger("relay")
# While the store cannot answer at start (PostgreSQL still starting), tries are this far apart:
# delivery's backoff (doubling, jittered, so replicas started together do not knock together).
STORE_WAIT = RetryPolicy(min_backoff=0.5, max_backoff=10.0)
_JITTER = random.Random()
# What /healthz adds while relay listens but does not serve yet: the store is not open, or it
# is and delivery (the --workers children) is starting. /readyz says "store unreachable" or
# "starting" meanwhile; every other endpoint answers 503 with Retry-After.
WAITING_FOR_STORE = "waiting for the store"
STARTING = "starting"
# SQLite: another `relay serve` holds the file (its `-serve.lock`); /healthz and /readyz say so
# while this one waits for it to exit, trying again this often.
HELD = SERVE_LOCK_HELD
HELD_RETRY_S = 1.0


class StoppedWhileStarting(Exception):
    """A stop was asked for while the store opened: relay ends without starting."""


class StartWaits:
    """The waits of Service's start, and the stop that ends them (a part of relay.service)."""

    settings: Settings
    store: Store
    address: tuple[str, int] | None
    _stop: asyncio.Event
    _starting: str | None
    _serve_lock: ServeLock | None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _hold_the_file(self) -> None:
        """SQLite: wait until no other `relay serve` runs on the file (a rolling update's old
        one, draining), before opening it: opened beside it, this one freed every lease at its
        start and sent again what the other had in flight. A lock file that cannot be created
        is said once, and relay goes on without it. A stop meanwhile raises
        StoppedWhileStarting."""
        lock = serve_lock(self.settings.store_url)
        if lock is None:
            return
        if (exc := lock.open()) is not None:
            log.warning(
                "serve lock not created; nothing stops a second relay serve on this file",
                extra={"lock": str(lock.path), "error": os_reason(exc)},
            )
            return
        self._serve_lock = lock
        self._starting = HELD
        waited = False
        while not lock.take():
            if not waited:
                log.warning(
                    "store held by another relay serve; waiting for it to exit",
                    extra=self._held(lock),
                )
                waited = True
            await self._unless_stopped(asyncio.sleep(HELD_RETRY_S))
        if waited:
            log.info("store free: the other relay serve exited", extra={"lock": str(lock.path)})
        self._starting = WAITING_FOR_STORE

    def _held(self, lock: ServeLock) -> dict[str, object]:
        return {"lock": str(lock.path), "retry_in_s": HELD_RETRY_S, **self._listening()}

    def _listening(self) -> dict[str, object]:
        """Where /healthz answers while relay waits (none from a delivery worker): one field,
        `listening`, not `host` and `port` beside a store's, which read as the address relay
        dialled for it."""
        if self.address is None:
            return {}
        host, port = self.address
        return {"listening": f"[{host}]:{port}" if ":" in host else f"{host}:{port}"}

    async def _open_store(self) -> None:
        """Open the store, waiting while it cannot answer yet (a PostgreSQL started beside
        relay, still starting or restarting); a refusal an operator must fix (a wrong password,
        a missing database, bad TLS) ends the start. A stop meanwhile ends it at once: raises
        StoppedWhileStarting."""
        for tries in itertools.count(1):
            try:
                await self._unless_stopped(self.store.open())
                return
            except StoreUnavailable as exc:
                if not exc.passing:
                    raise
                delay = round(backoff_s(tries, STORE_WAIT, _JITTER), 2)
                log.warning("store not reachable; waiting for it", extra=self._waiting(exc, delay))
            await self._unless_stopped(asyncio.sleep(delay))

    def _waiting(self, exc: StoreUnavailable, delay: float) -> dict[str, object]:
        """The fields of a `waiting for it` line: why, when next, and where /healthz answers
        meanwhile."""
        fields: dict[str, object] = {
            "error": str(exc),
            "store": store_name(self.settings.store_url),
            "retry_in_s": delay,
        }
        return fields | self._listening()

    async def _unless_stopped(self, work: Awaitable[None]) -> None:
        """Await `work`, unless a stop comes first: a PostgreSQL slow to answer (or a migration
        waiting for another replica's) held a SIGTERM until the connect timeout, and relay then
        exited 1. Raises StoppedWhileStarting."""
        running = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
        if running.cancelled():
            raise StoppedWhileStarting
        running.result()
