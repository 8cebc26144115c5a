"""The composition root: the one module that knows every part. Loads, checks, runs, stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from relay import channels as channel_registry
from relay.channels import ChannelEnv, Outgoing
from relay.channels._http import HttpClient
from relay.config import Config, Defaults, LoadedConfig, ServerConfig, load_config, parse_config
from relay.delivery import Delivery, Deps, Route, render_notification
from relay.errors import ConfigError, Problem, StoreUnavailable
from relay.intake import Intake
from relay.logs import SCRUB
from relay.model import Notification, Run, notification_id
from relay.policy import TokenBucket
from relay.rules import RuleSet, compile_rules
from relay.settings import Settings
from relay.silences import SilenceCache
from relay.sources.http import HttpDeps, build_app
from relay.store import Store, open_store
from relay.templating import Rendered, Renderer

log = logging.getLogger("relay")
SHUTDOWN_GRACE_S = 10.0
BUILTIN_NAME = "<built-in>"
BUILTIN_CONFIG = """\
channels:
  console:
    type: console
rules:
  - name: failures
    match:
      status: [failure]
    notify: [console]
"""


@dataclass(frozen=True)
class Compiled:
    """A loaded config with its rules compiled and its templates checked."""

    loaded: LoadedConfig
    rules: RuleSet
    renderer: Renderer


def load(settings: Settings, path: Path | None = None) -> LoadedConfig:
    """The config file, or the built-in default when none was named and none exists."""
    models = channel_registry.settings_models()
    target = path or settings.config
    if target.exists() or path is not None or settings.config_explicit:
        if not target.exists():
            raise ConfigError([Problem(str(target), "", "config file not found")])
        return load_config(target, models)
    loaded = parse_config(BUILTIN_CONFIG, BUILTIN_NAME, models, env={})
    return LoadedConfig(loaded.config, loaded.source, builtin=True)


def compile_config(loaded: LoadedConfig) -> Compiled:
    """Compile rules and check templates; ConfigError lists every problem with file:line."""
    config = loaded.config
    rules, problems = compile_rules(config.rules, loaded.locate)
    renderer = Renderer(config.templates.dir)
    if config.templates.dir is not None and not config.templates.dir.is_dir():
        where = loaded.locate(("templates", "dir"))
        problems.append(Problem(where, "templates.dir", "directory not found"))
    for i, rule in enumerate(rules.rules):
        for name in rule.notify:
            kind = channel_registry.REGISTRY[config.channels[name].type]
            for part in kind.parts:
                why = renderer.check(kind.type, rule.template, part)
                if why is not None:
                    where = loaded.locate(("rules", i, "template"))
                    problems.append(Problem(where, f"rules[{i}].template", f"{kind.type}: {why}"))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return Compiled(loaded, rules, renderer)


def dashboard_link(defaults: Defaults) -> Callable[[dict[str, Any]], str | None]:
    """The run's dashboard URL: the one Trigger.dev sent, else defaults.dashboard_url."""
    pattern = defaults.dashboard_url

    def link(run: dict[str, Any]) -> str | None:
        sent = run.get("dashboardUrl")
        if isinstance(sent, str) and sent:
            return sent
        if "{project_ref}" in pattern and not defaults.project_ref:
            return None
        return pattern.format(
            project_ref=defaults.project_ref or "",
            run_id=run.get("id", ""),
            task=run.get("taskIdentifier", ""),
        )

    return link


class Service:
    """relay serve: HTTP intake + delivery loops over one store, until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, compiled: Compiled) -> None:
        self.settings = settings
        self.compiled = compiled
        self.store: Store = open_store(settings.store_url)
        self.http = HttpClient()
        self.delivery: Delivery | None = None
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self._stop = asyncio.Event()
        self.silences = SilenceCache(self.store.silences)

    @property
    def config(self) -> Config:
        return self.compiled.loaded.config

    def _routes(self) -> dict[str, Route]:
        env = ChannelEnv(self.http, sys.stdout, self.config.defaults.timeout, self.store)
        routes = {}
        for name, settings in self.config.channels.items():
            kind = channel_registry.REGISTRY[settings.type]
            bucket = TokenBucket(settings.rate_limit) if settings.rate_limit else None
            channel = channel_registry.build(name, settings, env)
            routes[name] = Route(channel, kind.type, kind.parts, settings.concurrency, bucket)
        return routes

    async def start(self) -> tuple[str, int]:
        SCRUB.set(self.compiled.loaded.secrets())
        await self.store.open()
        released = await self.store.release_leases()
        if released:
            log.info("resuming notifications claimed before a restart", extra={"count": released})
        deps = Deps(
            store=self.store,
            renderer=self.compiled.renderer,
            retry=self.config.defaults.retry,
            dashboard_link=dashboard_link(self.config.defaults),
            silences=self.silences,
        )
        self.delivery = Delivery(deps, self._routes())
        self.delivery.start()
        intake = Intake(
            self.store, lambda: self.compiled.rules, self.delivery.wake, silences=self.silences
        )
        app = build_app(self._http_deps(intake))
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await self.runner.setup()
        host, port = self.settings.listen_host_port
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.address = _bound_address(site, host, port)
        return self.address

    def _http_deps(self, intake: Intake) -> HttpDeps:
        def server() -> ServerConfig:  # the live config, read on each request
            return self.config.server

        return HttpDeps(
            intake=intake,
            store=self.store,
            auth_token=lambda: server().auth_token,
            admin_token=lambda: server().admin_token or server().auth_token,
            max_body_bytes=lambda: server().max_body_bytes,
            ready=self._ready,
            clock=time.time,
            wake_all=self._wake_all,
            silences_changed=self.silences.invalidate,
            trigger_alert_secrets=lambda: (
                None
                if (alerts := self.config.sources.trigger_alerts) is None
                else alerts.all_secrets()
            ),
        )

    def _wake_all(self) -> None:
        if self.delivery is not None:
            self.delivery.wake_all()

    async def _ready(self) -> str | None:
        try:
            await self.store.ping()
        except StoreUnavailable:
            return "store unreachable"
        return None

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("shutting down: intake stopped, finishing in-flight deliveries")

    async def shutdown(self) -> None:
        """Stop intake first, then delivery (in-flight finish or stay in the outbox), then I/O."""
        if self.runner is not None:
            await self.runner.cleanup()
        if self.delivery is not None:
            await self.delivery.stop(SHUTDOWN_GRACE_S)
        await self.http.close()
        with contextlib.suppress(StoreUnavailable):
            await self.store.close()
        log.info("stopped")


def _bound_address(site: web.TCPSite, host: str, port: int) -> tuple[str, int]:
    server = site._server  # aiohttp keeps the asyncio server here; needed for port 0
    sockets = getattr(server, "sockets", None) or ()
    for sock in sockets:
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])
    return host, port


async def serve(settings: Settings, compiled: Compiled) -> None:
    service = Service(settings, compiled)
    try:
        host, port = await service.start()
        config = compiled.loaded.config
        log.info(
            "listening",
            extra={
                "host": host,
                "port": port,
                "channels": len(config.channels),
                "rules": len(config.rules),
                "store": settings.store_url.split("://", 1)[0],
            },
        )
        await service.run_until_stopped()
    finally:
        await service.shutdown()


SAMPLE_RUN: dict[str, Any] = {
    "id": "run_relaytest0000000000000000",
    "taskIdentifier": "relay-send-test",
    "status": "FAILED",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "updatedAt": "2026-01-01T00:00:12.000Z",
    "durationMs": 11800,
    "costInCents": 0.04,
    "baseCostInCents": 0.0025,
    "tags": ["relay:send-test"],
    "isTest": True,
    "error": {"name": "Error", "message": "This is a test notification from relay send-test"},
}


@dataclass(frozen=True)
class DryRun:
    run_id: str
    rules: list[str]
    messages: list[tuple[str, str, Rendered]]  # (rule, channel, rendered)


def _route_for(compiled: Compiled, name: str, env: ChannelEnv) -> Route:
    settings = compiled.loaded.config.channels[name]
    kind = channel_registry.REGISTRY[settings.type]
    channel = channel_registry.build(name, settings, env)
    return Route(channel, kind.type, kind.parts, settings.concurrency, None)


def dry_run(compiled: Compiled, runs: list[Run]) -> list[DryRun]:
    """Which rules match each run (as if first seen) and the messages they would send."""
    config = compiled.loaded.config
    env = ChannelEnv(HttpClient(), sys.stdout, config.defaults.timeout)
    link = dashboard_link(config.defaults)
    out = []
    for run in runs:
        decision = compiled.rules.decide(run, None)
        messages = []
        for match in decision.matches:
            row = Notification(
                notification_id(run.id, match.rule, match.channel),
                run.id,
                match.rule,
                match.channel,
                match.template,
                run.as_dict(),
                time.time(),
            )
            route = _route_for(compiled, match.channel, env)
            messages.append(
                (
                    match.rule,
                    match.channel,
                    render_notification(compiled.renderer, match.channel, route, row, link),
                )
            )
        rules = list(dict.fromkeys(m.rule for m in decision.matches))
        out.append(DryRun(run.id, rules, messages))
    return out


async def send_test(compiled: Compiled, channel: str) -> None:
    """One real attempt through `channel` with a sample run; raises DeliveryError on failure."""
    config = compiled.loaded.config
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none"
        raise ConfigError([Problem("", "channel", f"unknown channel {channel!r} (known: {known})")])
    http = HttpClient()
    try:
        route = _route_for(compiled, channel, ChannelEnv(http, sys.stdout, config.defaults.timeout))
        run = Run.model_validate(SAMPLE_RUN)
        now = time.time()
        row = Notification(
            f"ntf_test_{int(now * 1000)}", run.id, "send-test", channel, "run", run.as_dict(), now
        )
        rendered = render_notification(
            compiled.renderer, channel, route, row, dashboard_link(config.defaults)
        )
        await route.channel.send(Outgoing(row.id, run.id, row.rule, rendered.parts, now))
    finally:
        await http.close()
