"""Reloading `relay serve`'s config: on SIGHUP, or when its file or a template changed and then
stood still; only a valid new config is swapped in, and the running one is kept otherwise."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Protocol

from relay import heap
from relay.config_digest import config_fingerprint, disk_digest, read_digest
from relay.configure import Compiled, compile_config, load, load_text
from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.metrics import Metrics
from relay.model import Timing
from relay.settings import Settings
from relay.store import HistoryQuery, Store
from relay.worker_pipes import read_config_payload
from relay.yamlconf import UNSET_VARIABLE

log = logging.getLogger("relay")
# a reload reads ${VAR} from the environment relay started with: an operator who exported the
# variable a new channel names, then sent SIGHUP, was told it "is not set", in their shell
FIXED_ENVIRONMENT = (
    "relay serve reads variables from the environment it was started with:"
    " one set since needs a restart"
)
WATCH_EVERY_S = 1.0
# A changed file must stay unchanged this long before it is loaded: an editor (nano, VS Code)
# or `cat >` writes in place, truncating first, and a poll between the truncation and the write
# loaded an empty or half config (no rules: the updates meanwhile alerted nobody, ever).
SETTLE_S = 0.2
SETTLE_TRIES = 10  # no longer for a file whose mtime stays ahead of the clock (skewed NFS)
SIGNAL = "SIGHUP"  # the trigger of a reload by signal
OWED_COUNTED = 1000  # pending rows of a removed channel counted for its log line, at most


class Reloadable(Protocol):
    """What a reload reads and swaps: the service."""

    settings: Settings
    compiled: Compiled
    metrics: Metrics
    store: Store

    @property
    def stopping(self) -> bool: ...

    def request_stop(self) -> None: ...

    async def swap(self, compiled: Compiled) -> None:
        """New rules and channels take over (the running config's metrics at 0 included)."""


class ConfigReloads:
    """One reload at a time (`lock`, which the service's start holds too), and the file watch."""

    def __init__(self, service: Reloadable) -> None:
        self.service = service
        self.lock = asyncio.Lock()
        self._watching = asyncio.Lock()  # one look at the files at a time
        self._signal_waits = False  # a SIGHUP's reload waits for `lock`, the files not yet read
        # what the running config was read from: the files' stat, and their content (None
        # after a refused reload, whose files were not taken: the next change reloads)
        self._fingerprint = config_fingerprint(service.compiled)
        self._content = read_digest(service.compiled)

    async def reload(self, trigger: str) -> bool:
        """Load and check the config again; swap it in only if it is valid."""
        async with self.lock:
            if trigger == SIGNAL:
                self._signal_waits = False  # a SIGHUP from now on is after the files are read
            swapped = await self._reload(trigger)
        if swapped:  # once _reload's frame, which held the replaced config, is gone
            heap.resettle()
        return swapped

    async def _reload(self, trigger: str) -> bool:
        if self._skipped(trigger):  # shutting down: a new delivery would outlive the drain
            return False
        running = self.service.compiled  # the built-in default: ./config.yaml may exist now
        path = None if running.loaded.builtin else Path(running.loaded.source.filename)
        await self._settled()
        self._fingerprint = config_fingerprint(running)
        self._content = None
        compiled = await self._read(trigger, path)
        if compiled is None or self._skipped(trigger):  # SIGTERM while the file was read
            return False
        self._content = read_digest(compiled)
        if compiled.loaded.config.templates.dir != running.loaded.config.templates.dir:
            self._fingerprint = config_fingerprint(compiled)  # watch the new directory
        await self._swap(trigger, compiled)
        return True

    def signalled(self) -> bool:
        """A SIGHUP: True if it needs a reload of its own, False while one that has not read the
        files yet waits (it reads them after this signal too). Each SIGHUP queued its reload:
        50 in a second (a reloader looping, a process group signalled again and again) were 50
        reloads one after the other, ~20 s of compiling and swapping deliveries with a file
        change waiting behind them. Prometheus and Alertmanager take SIGHUP the same way."""
        if self._signal_waits:
            return False
        self._signal_waits = True
        return True

    async def adopt(self, payload: bytes) -> bool:
        """A delivery worker: its parent's config (workers.config_payload), compiled from the
        text and template files the parent read. Each worker read the files again: one rewritten
        meanwhile left it on another config than its parent's, or on its old one if invalid,
        until the next valid reload. One it cannot compile even so ends the worker: its
        successor starts with the parent's config, /readyz saying so until one runs."""
        async with self.lock:
            if self._skipped("parent"):
                return False
            try:
                compiled = await asyncio.to_thread(compile_payload, payload)
            except ConfigError as exc:
                log.error(
                    "delivery worker cannot run its parent's config; stopping to start again",
                    extra={"problems": [str(p) for p in exc.problems]},
                )
                self.service.request_stop()
                return False
            await self._swap("parent", compiled)
        heap.resettle()  # the replaced config can go (see reload)
        return True

    def _skipped(self, trigger: str) -> bool:
        if self.service.stopping:
            log.info("config reload skipped: shutting down", extra={"trigger": trigger})
        return self.service.stopping

    async def _read(self, trigger: str, path: Path | None) -> Compiled | None:
        """The new config, or None (counted and logged) if it is refused."""
        try:
            # off the event loop: 2,000 rules take about 2 s to read and compile, and
            # intake, /healthz and delivery went without an answer meanwhile
            compiled = await asyncio.to_thread(_compile, self.service.settings, path)
            _refuse_emptied(self.service.compiled, compiled)
        except ConfigError as exc:
            self.service.metrics.config_reloads.labels(result="failure").inc()
            self.service.metrics.config_reload_ok.set(0)
            said = {"trigger": trigger, "problems": [str(p) for p in exc.problems]}
            if any(p.message.startswith(UNSET_VARIABLE) for p in exc.problems):
                said["hint"] = FIXED_ENVIRONMENT
            log.error("config reload refused; the running config is kept", extra=said)
            return None
        return compiled

    async def _swap(self, trigger: str, compiled: Compiled) -> None:
        channels = self.service.compiled.loaded.config.channels
        removed = set(channels) - set(compiled.loaded.config.channels)
        await self.service.swap(compiled)
        await owed_to_removed(self.service.store, removed)
        if trigger != "parent":  # a delivery worker: its parent re-timed them in the store
            await retime_digests(self.service.store, compiled.rules.timings())
        metrics = self.service.metrics
        metrics.config_reloads.labels(result="success").inc()
        metrics.config_reload_time.set(time.time())
        metrics.config_reload_ok.set(1)
        rules = len(compiled.loaded.config.rules)
        log.info("config reloaded", extra={"trigger": trigger, "rules": rules})
        for warning in compiled.warnings:  # what `relay check` warns of, as at the start
            log.warning(warning)

    async def _settled(self) -> None:
        """Wait until the files the config is read from have stood still for SETTLE_S, as the
        watcher does. A SIGHUP sent while the file was rewritten in place (an editor, `cat >`,
        an inotify-driven reloader woken by the truncation), or a reload that waited for the one
        before it while the next write began, read half a file; cut after `channels:` it loads
        with no rules, and the runs accepted until the next reload alerted nobody."""
        for _ in range(SETTLE_TRIES):
            changed_ns = max(entry[2] for entry in config_fingerprint(self.service.compiled))
            still_s = time.time() - changed_ns / 1e9
            if still_s >= SETTLE_S:
                return
            await asyncio.sleep(SETTLE_S - max(still_s, 0.0))

    async def watch(self) -> None:
        """Reload when the config file or a template changes (polled: works on every volume;
        running the built-in default, from the SIGHUP that loads ./config.yaml on)."""
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            await self.reload_if_changed()

    async def reload_if_changed(self) -> bool | None:
        """Reload when a file the running config was read from changed and then stayed as it
        is for SETTLE_S; None when none did, one is still being written, or each holds what
        the running config was read from (touched, or rewritten with the same content)."""
        async with self._watching:
            seen = config_fingerprint(self.service.compiled)
            if seen == self._fingerprint:
                return None
            await asyncio.sleep(SETTLE_S)
            now = config_fingerprint(self.service.compiled)
            if now != seen:
                return None  # still being written: the next poll looks again
            if now == self._fingerprint:
                return None  # a SIGHUP meanwhile loaded it
            if await self._rewritten_unchanged():
                self._fingerprint = now  # a SIGHUP still reloads
                log.debug("config files rewritten unchanged; not reloaded")
                return None
            return await self.reload("file change")

    async def _rewritten_unchanged(self) -> bool:
        """Whether the files hold what the running config was read from (touched, or written
        again with the same content), so that reloading would change nothing."""
        if self._content is None:
            return False
        return await asyncio.to_thread(disk_digest, self.service.compiled) == self._content


async def owed_to_removed(store: Store, channels: set[str]) -> None:
    """Say, for each channel a reload removed, how many notifications it still owes: they stay
    pending until a channel of that name returns, and otherwise only the outbox gauges grew
    (RelayOldestPendingOld fired half an hour later, with no word of the reload)."""
    for channel in sorted(channels):
        query = HistoryQuery(channel=channel, state="pending", limit=OWED_COUNTED)
        try:
            pending = len(await store.history(query))
        except StoreUnavailable:
            return
        if pending:
            log.warning(
                "a removed channel's notifications stay pending until it returns",
                extra={"channel": channel, "pending": pending},
            )


async def retime_digests(store: Store, timings: dict[str, Timing]) -> None:
    """At a start or reload: digests waiting under rules whose group_wait or group_interval
    changed since they were scheduled go when the new values say (Store.retime_groups): one
    held for a 30 s group_interval shortened to 2 s waited out the 30 s, and was sent sooner
    than a lengthened group_wait says; after a restart, one held for an hour still waited it."""
    try:
        rules, groups = await store.retime_groups(timings, time.time())
    except StoreUnavailable as exc:
        log.warning(
            "waiting digests not re-timed; they keep the times they had",
            extra={"rules": sorted(timings), "error": str(exc)},
        )
        return
    if rules:
        log.info("waiting digests re-timed", extra={"rules": rules, "groups": groups})


def _compile(settings: Settings, path: Path | None) -> Compiled:
    """Read and compile the config file (in a thread: it touches nothing the service runs)."""
    return compile_config(load(settings, path))


def compile_payload(payload: bytes) -> Compiled:
    """The config a delivery worker's parent runs, from the text and template files it read
    (workers.config_payload): at the worker's start and on each reload."""
    filename, text, templates = read_config_payload(payload)
    return compile_config(load_text(filename, text), templates)


def _refuse_emptied(running: Compiled, new: Compiled) -> None:
    """An emptied config file (a truncated write, a botched edit) loads as every default: no
    rules, no channels, no auth_token (intake open). A reload refuses it, as Alertmanager
    refuses a config without a route; relay started on an empty file keeps taking one."""
    if running.loaded.source.data:
        refuse_empty(new)


def refuse_empty(compiled: Compiled) -> None:
    """Raise ConfigError if the config file was empty."""
    if compiled.loaded.source.data:
        return
    message = "the config file is empty (to run without rules, write `rules: []`)"
    raise ConfigError([Problem(compiled.loaded.source.filename, "", message)])
