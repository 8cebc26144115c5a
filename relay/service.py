"""The composition root: the one module that knows every part. Runs, reloads, stops."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from typing import Any

from aiohttp import web

from relay import heap, signals
from relay.channels._http import HttpClient
from relay.config_digest import config_hash
from relay.configure import Compiled
from relay.delivery import Delivery
from relay.errors import StoreUnavailable
from relay.intake import Intake
from relay.listening import joined
from relay.logs import SCRUB
from relay.metrics import Metrics
from relay.orphans import reap_orphans_forever
from relay.outbox_reading import OutboxReading
from relay.reloading import SIGNAL, ConfigReloads, retime_digests
from relay.service_delivery import DeliverySide
from relay.settings import Settings
from relay.silences.cache import SilenceCache
from relay.sources._wire import raise_descriptor_limit
from relay.sources.realtime import RealtimeSource, feed_keys, forget_removed_feeds
from relay.starting import STARTING, WAITING_FOR_STORE, StoppedWhileStarting
from relay.store import Store
from relay.store.opening import ServeLock, open_store
from relay.worker_pipes import EventPipe, read_commands
from relay.worker_role import Role
from relay.workers import WorkerPool

log = logging.getLogger("relay")
SHUTDOWN_GRACE_S = 10.0
PRUNE_EVERY_S = 600.0


class Service(DeliverySide):
    """relay serve: HTTP intake + delivery loops over one store, until SIGTERM/SIGINT.

    SIGHUP, or a change of the config file or templates, reloads the configuration; an invalid
    one is refused and the running one kept.
    """

    def __init__(self, settings: Settings, compiled: Compiled, role: Role | None = None) -> None:
        self.settings = settings
        self.compiled = compiled
        self.role = role or Role()
        self.events = None if self.role.events is None else EventPipe(self.role.events)
        self.pool: WorkerPool | None = None
        self.store: Store = open_store(
            settings.store_url, self.role.holder, settings.replica_timeout
        )
        self.http = HttpClient()
        self.metrics = Metrics()
        compiled.rules.when_failures.observe = self.metrics.rule_failed
        self._outbox = OutboxReading(lambda: self.store)  # /metrics' figures, as often as cheap
        self.delivery: Delivery | None = None
        self.intake: Intake | None = None
        self.runner: web.AppRunner | None = None
        self.realtime: RealtimeSource | None = None
        self.address: tuple[str, int] | None = None  # the first of `addresses`
        self.addresses: list[tuple[str, int]] = []  # every socket HTTP listens on
        self.silences = SilenceCache(self.store.silences, version=self.store.silences_version)
        self._stop = asyncio.Event()
        self._stop_signals = 0  # SIGTERM/SIGINT received
        self._tasks: list[asyncio.Task[Any]] = []
        self._draining: set[asyncio.Task[None]] = set()  # deliveries a reload replaced
        self._starting: str | None = WAITING_FOR_STORE  # /healthz's reason until all runs
        self._serve_lock: ServeLock | None = None  # SQLite: held from the start to the exit
        self.reloads = ConfigReloads(self)

    async def start(self) -> tuple[str, int]:
        """Open the store, start delivery and intake. A reload (SIGHUP) meanwhile waits: it
        started a second delivery that nothing stopped."""
        async with self.reloads.lock:
            return await self._start()

    async def _start(self) -> tuple[str, int]:
        SCRUB.set(self.compiled.loaded.secrets())
        raise_descriptor_limit()  # before the workers start: they inherit it
        if self.role.index is not None:
            self._read_commands()  # the parent's death (end of the pipe) stops the start too
            await self._open_store()
            return await self._start_worker()
        self.intake = Intake(
            self.store,
            lambda: self.compiled.rules,
            self._wake,
            silences=self.silences,
            observer=self.metrics.intake_result,
            reserve=self._reserve,
        )
        # listening before the store opens: /healthz answers while relay waits for it (a
        # liveness probe restarted it in a loop through a database outage), the rest 503;
        # /metrics already shows the config (a hash of 0 set off RelayConfigInconsistent)
        self._zero_metrics()
        self.metrics.config_reload_time.set(time.time())
        self.metrics.config_reload_ok.set(1)
        self.addresses = await self._serve_http(self.intake)
        self.address = self.addresses[0]
        await self._hold_and_open()
        self._starting = STARTING
        with contextlib.suppress(StoreUnavailable):  # said in the log now, not at a /readyz
            await self.store.lacking()
        released = await self.store.release_leases()
        if released:
            log.info("resuming notifications claimed before a restart", extra={"count": released})
        await retime_digests(self.store, self.compiled.rules.timings())  # as a reload does
        await self._start_delivery()
        self._starting = None  # every endpoint answers from now on
        self._start_realtime()
        self._start_tasks()
        return self.address

    async def _hold_and_open(self) -> None:
        """The file held (SQLite), then the store opened; a failure undoes the lock's file."""
        await self._hold_the_file()
        try:
            await self._open_store()
        except BaseException:
            if self._serve_lock is not None:  # what its open made goes, as the store's does
                self._serve_lock.undo()
            raise

    def _start_tasks(self) -> None:
        """What runs beside intake and delivery until the stop: retention, the config's
        watch, and (as a container's init) the orphans' reaping."""
        self._tasks += [
            asyncio.create_task(self._prune_forever(), name="retention"),
            asyncio.create_task(self.reloads.watch(), name="config-watch"),
        ]
        if os.getpid() == 1:  # a container's init: the orphans of `docker exec` are ours
            own = self.pool.known_pids if self.pool is not None else list
            self._tasks.append(asyncio.create_task(reap_orphans_forever(own), name="orphans"))

    def _read_commands(self) -> None:
        """A delivery worker: its parent's commands, from its first moment. Read only once it
        delivered, a worker waiting for its store, or for the one it succeeds (see
        store._sqlite_holders), outlived a parent killed with -9 by up to 30 s, then claimed
        and sent beside the relay started again. A reload meanwhile waits for the start (its
        lock)."""
        commands = read_commands(
            self._wake,
            self._wake_all,
            self._adopt_soon,
            self.request_stop,
            self.silences.invalidate,
        )
        self._tasks.append(asyncio.create_task(commands, name="commands"))

    def _zero_metrics(self) -> None:
        """The running config in /metrics: its digest, and its channels, rules and Realtime
        feeds from the start, at 0."""
        self.metrics.config_hash.set(config_hash(self.compiled))
        rules = [rule.name for rule in self.config.rules]
        feeds = feed_keys(self.config.sources.realtime)
        self.metrics.configured(self.config.channels, rules, feeds)
        timeout_s = self.config.defaults.timeout
        self.metrics.channels_configured(
            {n: (c.type, c.timeout or timeout_s) for n, c in self.config.channels.items()}
        )

    def _start_realtime(self) -> None:
        if self.config.sources.realtime is not None and self.intake is not None:
            self.realtime = RealtimeSource(
                self.config.sources.realtime,
                functools.partial(self.intake.submit, source="realtime"),
                self.store,
                observe=self.metrics.realtime_batch,
                failed=self.metrics.realtime_error,
                followed=self.metrics.realtime_followed,
                unfollowed=self.metrics.realtime_unfollowed,
            )
            self.realtime.start()

    async def _reconfigure_realtime(self) -> None:
        """The Realtime source follows the config's feeds: only those a reload added or changed
        (re)start (RealtimeSource.reconfigure); all stop if the config has none."""
        realtime = self.config.sources.realtime
        if self.realtime is not None and realtime is not None:
            await self.realtime.reconfigure(realtime)
            return
        if self.realtime is not None:
            await self.realtime.stop()
            self.realtime = None
        self._start_realtime()

    async def _prune_forever(self) -> None:
        while True:
            try:
                before = time.time() - self.config.defaults.retention
                removed = await self.store.prune(before)
                if removed:
                    log.info("history pruned", extra={"notifications": removed})
                realtime = self.config.sources.realtime
                feeds = await forget_removed_feeds(self.store, realtime, time.time())
                if feeds:
                    log.info(
                        "realtime feeds no longer configured forgotten", extra={"feeds": feeds}
                    )
            except StoreUnavailable as exc:
                log.warning("history not pruned: store unavailable", extra={"error": str(exc)})
            await asyncio.sleep(PRUNE_EVERY_S)

    async def reload(self, trigger: str) -> bool:
        """Load and check the config again; swap it in only if it is valid (relay.reloading)."""
        return await self.reloads.reload(trigger)

    async def reload_if_changed(self) -> bool | None:
        return await self.reloads.reload_if_changed()

    async def swap(self, compiled: Compiled) -> None:
        """New rules and channels take over; the old delivery finishes what it holds."""
        old_delivery, old_sources = self.delivery, self.config.sources
        SCRUB.set([*self.compiled.loaded.secrets(), *compiled.loaded.secrets()])
        compiled.rules.when_failures.observe = self.metrics.rule_failed
        self.compiled = compiled
        if self.pool is not None:
            self.pool.reload()  # each worker compiles what we read and takes its channels
        else:
            self.delivery = self._delivery(compiled)
            self.delivery.start()
        if old_delivery is not None:  # its drain outlives a reload cancelled by shutdown
            drain = asyncio.create_task(old_delivery.stop(SHUTDOWN_GRACE_S), name="drain")
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
            await asyncio.shield(drain)
        if self.delivery is not None:
            await self.delivery.start_afresh()
        realtime = compiled.loaded.config.sources.realtime
        if realtime != old_sources.realtime:
            await self._reconfigure_realtime()
        self._zero_metrics()

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; installed before `listening` is announced.
        Those that came while relay was starting (held by relay.signals) count too."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal, sig)
        # a worker runs the config its parent hands it, never the file (a process group's SIGHUP)
        worker = self.role.index is not None
        loop.add_signal_handler(signal.SIGHUP, (lambda: None) if worker else self._reload_soon)
        held = signals.take()
        stops = [held_sig for held_sig in held if held_sig in (signal.SIGTERM, signal.SIGINT)]
        for stop in stops:  # Ctrl-C twice while starting: the second exits at once
            self._stop_signal(stop)
        if not stops and signal.SIGHUP in held and not worker:
            self._reload_soon()

    def _stop_signal(self, signum: int) -> None:
        """The first SIGTERM/SIGINT stops gracefully, a second one at once. Counted apart from
        other stops: a delivery worker told to stop by its parent (end of its stdin) and then
        signalled with the whole process group (systemd, Ctrl-C) has had one signal."""
        self._stop_signals += 1
        if self._stop_signals > 1:
            signals.exit_now(signum)
        self.request_stop()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        log.info("shutting down: finishing in-flight deliveries")

    def _reload_soon(self) -> None:
        """A reload task, kept until it is done: shutdown cancels one still running, and one
        kept for good made every SIGHUP grow the process (a reloader sidecar's every minute).
        None while a SIGHUP's reload waits to start: it reads the files after this one too."""
        if self.reloads.signalled():
            self._keep(asyncio.create_task(self.reload(SIGNAL), name="reload"))

    def _adopt_soon(self, payload: bytes) -> None:
        """A delivery worker: its parent's config, which the parent runs from now on."""
        self._keep(asyncio.create_task(self.reloads.adopt(payload), name="reload"))

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def shutdown(self, *, announce: bool = True) -> None:
        """Stop the Realtime feeds, drain delivery (in-flight finish or stay in the outbox),
        then close the listener, then I/O. HTTP answers through the drain
        (relay.sources._middleware: /readyz 503, updates refused with 503 and Retry-After:
        intake stops), where a closed listener refused the probes, the scrapes and the pushers'
        updates.
        Not `announce`: a start that failed, which `relay not started` tells."""
        if self.pool is not None:
            self.pool.stopping()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.realtime is not None:  # a position not yet saved is fetched again after a restart
            await self.realtime.stop()
        if self.pool is not None:
            await self.pool.stop(SHUTDOWN_GRACE_S)
        if self.delivery is not None:
            await self.delivery.stop(SHUTDOWN_GRACE_S)
        await asyncio.gather(*self._draining, return_exceptions=True)
        if self.runner is not None:  # waits for requests in progress: before the store closes
            await self.runner.cleanup()
        await self.http.close()
        left = await self._left_pending() if announce else None
        with contextlib.suppress(StoreUnavailable):
            await self.store.close()
        if self._serve_lock is not None:  # the file closed: the next relay serve may take it
            self._serve_lock.close()
        if self.events is not None:
            self.events.flush()
        if announce:
            log.info("stopped", extra={} if left is None else {"pending": left})

    async def _left_pending(self) -> int | None:
        """What the outbox holds pending at the exit, for the `stopped` line (the next start
        sends it): said by the process that serves HTTP, once the store is open."""
        if self.role.index is not None or self._starting is not None:
            return None
        try:
            return (await self.store.counts())["pending"]
        except StoreUnavailable:
            return None


async def serve(settings: Settings, compiled: Compiled, role: Role | None = None) -> None:
    service = Service(settings, compiled, role)
    service.install_signal_handlers()
    started = False
    try:
        if service.stopping:
            log.info("stop requested while starting: not started")
            return
        try:
            host, port = await service.start()
        except StoppedWhileStarting:
            log.info("stop requested while starting: not started")
            return
        started = True
        heap.settle()  # what start built lives until the stop: out of the collector's way
        if service.role.index is not None:
            log.info("delivery worker ready", extra={"worker": service.role.index})
            await service.run_until_stopped()
            return
        config = compiled.loaded.config
        log.info(
            "listening",
            extra={
                "host": host,
                "port": port,
                "addresses": [joined(*address) for address in service.addresses],
                "channels": len(config.channels),
                "rules": len(config.rules),
                "store": settings.store_url.split("://", 1)[0],
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )
        await service.run_until_stopped()
    finally:
        await service.shutdown(announce=started or service.stopping)
