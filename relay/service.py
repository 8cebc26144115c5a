"""The composition root: the one module that knows every part. Runs, reloads, stops."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from relay import heap, signals
from relay.channels import ChannelEnv
from relay.channels._http import HttpClient
from relay.config import Config, RetryPolicy, ServerConfig
from relay.config_digest import config_hash
from relay.configure import Compiled
from relay.dashboard_links import dashboard_link
from relay.delivery import Delivery, Reservation
from relay.dispatch import Deps
from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.intake import Intake
from relay.logs import SCRUB
from relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.metrics import Metrics
from relay.model import Notification
from relay.outbox_reading import OutboxReading
from relay.policy import backoff_s
from relay.reloading import SIGNAL, ConfigReloads, retime_digests
from relay.routes import route_for
from relay.settings import Settings
from relay.silences.cache import RELOAD_S, SilenceCache
from relay.sources._wire import JsonErrorRunner, raise_descriptor_limit
from relay.sources.http import DRAINING, HttpDeps, build_app
from relay.sources.realtime import RealtimeSource, feed_keys, forget_removed_feeds
from relay.store import Store
from relay.store.opening import SERVE_LOCK_HELD, ServeLock, open_store, serve_lock, store_name
from relay.workers import (
    EventPipe,
    Outcome,
    Role,
    WorkerPool,
    config_payload,
    holder,
    read_commands,
    reap_orphans_forever,
)

log = logging.getLogger("relay")
SHUTDOWN_GRACE_S = 10.0
PRUNE_EVERY_S = 600.0
# A connection gets this long for a complete request head, and is closed after this long idle
# (aiohttp's keepalive_timeout; its default of an hour lets a slowloris hold sockets forever).
HTTP_IDLE_TIMEOUT_S = 60.0
# After a commit of incoming runs failed (disk full, read-only), /readyz says "store not
# writable" this long, unless a later commit works.
NOT_WRITABLE_S = 10.0
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
_UNREADY = {WAITING_FOR_STORE: "store unreachable", HELD: HELD}  # /readyz's, else "starting"


class StoppedWhileStarting(Exception):
    """A stop was asked for while the store opened: relay ends without starting."""


class Service:
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

    @property
    def config(self) -> Config:
        return self.compiled.loaded.config

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
        self.addresses = await self._serve_http(self.intake)
        self.address = self.addresses[0]
        await self._hold_the_file()
        try:
            await self._open_store()
        except BaseException:
            if self._serve_lock is not None:  # what its open made goes, as the store's does
                self._serve_lock.undo()
            raise
        self._starting = STARTING
        with contextlib.suppress(StoreUnavailable):  # said in the log now, not at a /readyz
            await self.store.lacking()
        released = await self.store.release_leases()
        if released:
            log.info("resuming notifications claimed before a restart", extra={"count": released})
        await retime_digests(self.store, self.compiled.rules.timings())  # as a reload does
        if self.role.workers:
            self.pool = WorkerPool(
                self.role.workers,
                self._config_payload,
                lambda: self.config.channels,
                self.metrics.delivery_event,
                self._worker_died,
            )
            await self.pool.start()
        else:
            self.delivery = self._delivery(self.compiled)
            self.delivery.start()
        self._starting = None  # every endpoint answers from now on
        self._start_realtime()
        self._tasks += [
            asyncio.create_task(self._prune_forever(), name="retention"),
            asyncio.create_task(self.reloads.watch(), name="config-watch"),
        ]
        if os.getpid() == 1:  # a container's init: the orphans of `docker exec` are ours
            own = self.pool.known_pids if self.pool is not None else list
            self._tasks.append(asyncio.create_task(reap_orphans_forever(own), name="orphans"))
        return self.address

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
                extra={"lock": str(lock.path), "error": _os_reason(exc)},
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
        fields: dict[str, object] = {"lock": str(lock.path), "retry_in_s": HELD_RETRY_S}
        if self.address is not None:
            fields.update(host=self.address[0], port=self.address[1])
        return fields

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
        meanwhile (a delivery worker does not listen)."""
        fields: dict[str, object] = {
            "error": str(exc),
            "store": store_name(self.settings.store_url),
            "retry_in_s": delay,
        }
        if self.address is not None:
            fields.update(host=self.address[0], port=self.address[1])
        return fields

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

    async def _start_worker(self) -> tuple[str, int]:
        """A delivery worker: the loops of the channels it owns, commands from the parent."""
        released = await self.store.release_leases(self.role.holder)
        if released:  # left by a predecessor that outlived its parent (kill -9), now gone
            log.info("resuming notifications claimed before a restart", extra={"count": released})
        self.delivery = self._delivery(self.compiled)
        self.delivery.start()
        if self.events is not None:
            self.events.ready()
        return "", 0

    def _read_commands(self) -> None:
        """A delivery worker: its parent's commands, from its first moment. Read only once it
        delivered, a worker waiting for its store, or for the one it succeeds (see
        store.sqlite), outlived a parent killed with -9 by up to 30 s, then claimed and sent
        beside the relay started again. A reload meanwhile waits for the start (its lock)."""
        commands = read_commands(
            self._wake,
            self._wake_all,
            self._adopt_soon,
            self.request_stop,
            self.silences.invalidate,
        )
        self._tasks.append(asyncio.create_task(commands, name="commands"))

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

    def _zero_metrics(self) -> None:
        """The running config in /metrics: its digest, and its channels, rules and Realtime
        feeds from the start, at 0."""
        self.metrics.config_hash.set(config_hash(self.compiled))
        rules = [rule.name for rule in self.config.rules]
        feeds = feed_keys(self.config.sources.realtime)
        self.metrics.configured(self.config.channels, rules, feeds)

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
        )
        names = self.role.owned(config.channels)
        running = self.delivery  # the one a reload replaces: its holds and buckets carry over
        before = running.route if running is not None else lambda _name: None
        routes = {name: route_for(compiled, name, env, before=before(name)) for name in names}
        return Delivery(deps, routes)

    def _forward(self, kind: str, row: Notification, reason: str, attempts: int) -> None:
        """A worker's delivery outcome, to the parent's metrics."""
        assert self.events is not None
        self.events.outcome(kind, Outcome(row.channel, row.created_at), reason, attempts)

    async def _serve_http(self, intake: Intake) -> list[tuple[str, int]]:
        app = build_app(self._http_deps(intake))
        self.runner = JsonErrorRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
            keepalive_timeout=HTTP_IDLE_TIMEOUT_S,
        )
        await self.runner.setup()
        host, port = self.settings.listen_host_port
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # in use, not an address of this machine, unknown host name
            why = _os_reason(exc)
            problem = Problem(
                "environment", "RELAY_LISTEN", f"cannot listen on {host}:{port}: {why}"
            )
            raise ConfigError([problem]) from None
        return _bound_addresses(site, host, port)

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

    def _http_deps(self, intake: Intake) -> HttpDeps:
        def server() -> ServerConfig:  # the live config, read on each request
            return self.config.server

        return HttpDeps(
            intake=intake,
            store=self.store,
            auth_token=lambda: server().auth_token,
            admin_token=lambda: server().admin_token or server().auth_token,
            max_body_bytes=lambda: server().max_body_bytes,
            max_body_bytes_in_flight=lambda: server().max_body_bytes_in_flight,
            ready=self._ready,
            clock=time.time,
            wake_all=self._wake_all,
            silences_changed=self._silences_changed,
            silences_settle_s=RELOAD_S,
            silence_names=lambda: self.config.names(),  # noqa: PLW0108 (the config of now)
            trigger_alert_secrets=lambda: (
                None
                if (alerts := self.config.sources.trigger_alerts) is None
                else alerts.all_secrets()
            ),
            on_rejected=lambda reason: self.metrics.rejected.labels(reason=reason).inc(),
            on_alert_ignored=lambda reason: self.metrics.alerts_ignored.labels(reason=reason).inc(),
            metrics=self._metrics_text,
            starting=lambda: self._starting,
            draining=lambda: self.stopping,
        )

    def _reserve(self, most: int) -> Reservation | None:
        """Room for rows leased at birth: only loops in this process (not workers') take them."""
        if self.pool is not None or self.delivery is None:
            return None
        return self.delivery.reserve(most)

    def _wake(self, channel: str) -> None:
        if self.pool is not None:
            self.pool.wake(channel)
        elif self.delivery is not None:
            self.delivery.wake(channel)

    def _wake_all(self) -> None:
        if self.pool is not None:
            self.pool.wake_all()
        elif self.delivery is not None:
            self.delivery.wake_all()

    def _silences_changed(self) -> None:
        """A silence was created or expired over HTTP: every cache of them is stale."""
        self.silences.invalidate()
        if self.pool is not None:
            self.pool.silences_changed()

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
        if compiled.loaded.config.sources.realtime != old_sources.realtime:
            if self.realtime is not None:
                await self.realtime.stop()
                self.realtime = None
            self._start_realtime()
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

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

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
        then close the listener, then I/O. HTTP answers through the drain (relay.sources.http:
        /readyz 503, updates refused with 503 and Retry-After: intake stops), where a closed
        listener refused the probes, the scrapes and the pushers' updates.
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
        with contextlib.suppress(StoreUnavailable):
            await self.store.close()
        if self._serve_lock is not None:  # the file closed: the next relay serve may take it
            self._serve_lock.close()
        if self.events is not None:
            self.events.flush()
        if announce:
            log.info("stopped")


def _os_reason(exc: OSError) -> str:
    """The errno's words ("Address already in use"); uvloop's strerror repeats the address."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or type(exc).__name__  # getaddrinfo: "Name or service not known"


def _bound_addresses(site: web.TCPSite, host: str, port: int) -> list[tuple[str, int]]:
    """Every (host, port) listened on: `*:8080` (or a name with several addresses) is one
    socket per address, and with port 0 each has a port of its own."""
    server = site._server  # aiohttp keeps the asyncio server here; needed for port 0
    sockets = getattr(server, "sockets", None) or ()
    bound = [sock.getsockname() for sock in sockets]
    return [(str(b[0]), int(b[1])) for b in bound] or [(host, port)]


def _joined(host: str, port: int) -> str:
    """host:port, an IPv6 address in brackets as RELAY_LISTEN takes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
                "addresses": [_joined(*address) for address in service.addresses],
                "channels": len(config.channels),
                "rules": len(config.rules),
                "store": settings.store_url.split("://", 1)[0],
                "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            },
        )
        await service.run_until_stopped()
    finally:
        await service.shutdown(announce=started or service.stopping)
