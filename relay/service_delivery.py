"""How relay serve delivers: its channel loops in this process, or the --workers children (the
pool: the config each runs, a dead one's claims freed); in a delivery worker, the loops of the
channels it owns and their outcomes sent to the parent's metrics."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from relay.channels import ChannelEnv
from relay.channels._http import HttpClient
from relay.configure import Compiled
from relay.dashboard_links import dashboard_link
from relay.delivery import Delivery
from relay.dispatch import Deps
from relay.errors import StoreUnavailable
from relay.model import Notification
from relay.outcomes import HoldEnd
from relay.routes import repointed, route_for
from relay.service_http import HttpSide
from relay.worker_pipes import Attempt, EventPipe, Outcome, config_payload
from relay.worker_role import Role, holder
from relay.workers import WorkerPool

log = logging.getLogger("relay")


class DeliverySide(HttpSide):
    """The service's delivery, in-process or by workers (a part of relay.service)."""

    role: Role
    events: EventPipe | None
    http: HttpClient

    async def _start_delivery(self) -> None:
        """The --workers children, or the delivery loops in this process."""
        if self.role.workers:
            self.pool = WorkerPool(
                self.role.workers,
                self._config_payload,
                lambda: self.config.channels,
                self.metrics.delivery_event,
                self.metrics.attempt,
                on_death=self._worker_died,
            )
            self.metrics.worker_processes.children = self.pool.indexed_pids
            await self.pool.start()
        else:
            self.delivery = self._delivery(self.compiled)
            await self.delivery.restore_holds()
            self.delivery.start()

    async def _start_worker(self) -> tuple[str, int]:
        """A delivery worker: the loops of the channels it owns, commands from the parent."""
        released = await self.store.release_leases(self.role.holder)
        if released:  # left by a predecessor that outlived its parent (kill -9), now gone
            log.info("resuming notifications claimed before a restart", extra={"count": released})
        self.delivery = self._delivery(self.compiled)
        await self.delivery.restore_holds()
        self.delivery.start()
        if self.events is not None:
            self.events.ready()
        return "", 0

    async def _worker_died(self, index: int) -> None:
        """A delivery worker died: counted, and its claims go back to the outbox (SQLite) for
        its successor."""
        self.metrics.worker_restarts.inc()
        try:
            released = await self.store.release_leases(holder(index))
        except StoreUnavailable:
            log.warning("a dead worker's claims wait for their lease: store unavailable")
            return
        if released:
            log.info("resuming notifications a dead worker had claimed", extra={"count": released})

    def _config_payload(self) -> bytes:
        """The config a worker is to run, at its start and on a reload: the one running here,
        as it was read, templates too (the files may differ by now: invalid, emptied, or
        another valid one)."""
        loaded = self.compiled.loaded
        filename = None if loaded.builtin else loaded.source.filename
        return config_payload(filename, loaded.source.text, self.compiled.renderer.overrides)

    def _delivery(self, compiled: Compiled) -> Delivery:
        config = compiled.loaded.config
        env = ChannelEnv(self.http, sys.stdout, config.defaults.timeout, self.store)
        deps = Deps(
            store=self.store,
            renderer=compiled.renderer,
            retry=config.defaults.retry,
            dashboard_link=dashboard_link(config.defaults),
            silences=self.silences,
            time_muted=compiled.rules.time_muted if compiled.rules.has_windows else None,
            template_of=compiled.rules.template_of,
            group_interval_of=compiled.rules.group_interval_of,
            on_event=self.metrics.delivery_event if self.events is None else self._forward,
            attempt_observer=self.metrics.attempt_observer
            if self.events is None
            else self._attempt_forwarder,
        )
        names = self.role.owned(config.channels)
        running = self.delivery  # the one a reload replaces: its holds and buckets carry over
        before = running.route if running is not None else lambda _name: None
        routes = {name: route_for(compiled, name, env, before=before(name)) for name in names}
        moved = {name for name, route in routes.items() if repointed(before(name), route)}
        return Delivery(deps, routes, frozenset(moved))

    def _forward(self, kind: str, row: Notification | HoldEnd, reason: str, attempts: int) -> None:
        """A worker's delivery outcome, to the parent's metrics."""
        assert self.events is not None
        self.events.outcome(kind, Outcome(row.channel, row.created_at), reason, attempts)

    def _attempt_forwarder(self, channel: str, kind: str) -> Callable[[float], None]:
        """What a worker's sender of `channel` (of type `kind`) calls with each request's
        seconds: to the parent's relay_delivery_attempt_duration_seconds."""
        return functools.partial(self._forward_attempt, channel, kind)

    def _forward_attempt(self, channel: str, kind: str, seconds: float) -> None:
        assert self.events is not None
        self.events.attempt(Attempt(channel, kind, seconds))
