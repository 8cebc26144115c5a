"""What relay serve says of itself to /readyz and /metrics: serving or not (starting, draining),
the store reachable and writable, the delivery workers running; the scrape's text."""

from __future__ import annotations

import asyncio
import time

from relay.errors import StoreReplaced, StoreUnavailable
from relay.intake import Intake
from relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.metrics import Metrics
from relay.outbox_reading import OutboxReading
from relay.sources.http import DRAINING
from relay.starting import HELD, STARTING, WAITING_FOR_STORE, StartWaits
from relay.workers import WorkerPool

# After a commit of incoming runs failed (disk full, read-only), /readyz says "store not
# writable" this long, unless a later commit works.
NOT_WRITABLE_S = 10.0
_UNREADY = {WAITING_FOR_STORE: "store unreachable", HELD: HELD}  # /readyz's, else "starting"


class Readiness(StartWaits):
    """/readyz's answer and the scrape's, from the service's state (a part of relay.service)."""

    metrics: Metrics
    intake: Intake | None
    pool: WorkerPool | None
    _outbox: OutboxReading

    async def _ready(self) -> str | None:
        if why := self._not_serving():
            return why
        if why := await self._store_problem():
            return why
        return self._workers_problem()

    def _not_serving(self) -> str | None:
        if self.stopping:  # out of the load balancer's (Service's) endpoints while draining
            return DRAINING
        if self._starting is not None:
            return _UNREADY.get(self._starting, STARTING)
        return None

    def _workers_problem(self) -> str | None:
        if self.pool is not None and self.pool.down():  # its channels go undelivered
            return "delivery worker not running"
        return None

    async def _store_problem(self) -> str | None:
        """Unreachable; a privilege relay's user lacks (every update refused with 503); or a
        commit of incoming runs failed lately."""
        try:
            await self.store.ping()
            lacking = await self.store.lacking()
        except StoreReplaced:  # the file is there and may be fine: unreachable misled
            return StoreReplaced.READINESS
        except StoreUnavailable:
            return "store unreachable"
        return lacking or self._not_writable()

    def _not_writable(self) -> str | None:
        failed_at = None if self.intake is None else self.intake.store_failed_at
        # a failure "in the future" was seen before the wall clock stepped back: long past
        if failed_at is not None and 0 <= time.time() - failed_at < NOT_WRITABLE_S:
            return "store not writable"
        return None

    def _scraped_ready(self, store_up: bool) -> bool:
        """/readyz's answer without its round trips to the store (a scrape must not wait on
        it): the outbox reading stands for the ping; PostgreSQL privileges a user lacks show
        as refused updates instead (relay_updates_rejected_total)."""
        if self._not_serving() or not store_up:
            return False
        return self._not_writable() is None and self._workers_problem() is None

    async def _metrics_text(self) -> tuple[bytes, str]:
        """The scrape; while relay waits for its store at start, with relay_store_up 0 (a 503
        made the target itself look down)."""
        store_up = self._starting not in _UNREADY and await self._read_outbox()  # open yet?
        if not store_up:
            self.metrics.store_up.set(0)
        self.metrics.ready.set(self._scraped_ready(store_up))
        # in a thread (prometheus_client reads its values under its locks): with 2,000 rules
        # and 200 channels the text is 1 MB, ~150 ms that held every request on the loop
        return await asyncio.to_thread(self.metrics.render), METRICS_CONTENT_TYPE

    async def _read_outbox(self) -> bool:
        """The outbox gauges from the store; False if it did not answer."""
        now = time.time()
        try:
            counts, oldest = await self._outbox.read(now)
        except StoreUnavailable:
            return False
        self.metrics.set_outbox(counts, oldest, now)
        return True
