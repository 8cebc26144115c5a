"""What relay serve's HTTP app asks of it (relay.sources.http's HttpDeps): the live config's
tokens and limits, readiness and the scrape, delivery woken for what intake stored, silences
changed; and the listener it answers on."""

from __future__ import annotations

import time

from aiohttp import web

from relay.config import Config, ServerConfig
from relay.configure import Compiled
from relay.delivery import Delivery
from relay.intake import Intake
from relay.listening import bind, runner_for
from relay.readiness import Readiness
from relay.silences.cache import RELOAD_S, SilenceCache
from relay.sources.http import HttpDeps, build_app
from relay.store import BirthLease


class HttpSide(Readiness):
    """The service as its HTTP app sees it (a part of relay.service)."""

    compiled: Compiled
    delivery: Delivery | None
    silences: SilenceCache
    runner: web.AppRunner | None

    @property
    def config(self) -> Config:
        return self.compiled.loaded.config

    async def _serve_http(self, intake: Intake) -> list[tuple[str, int]]:
        app = build_app(self._http_deps(intake))
        self.runner = runner_for(app)
        await self.runner.setup()
        return await bind(self.runner, *self.settings.listen_host_port)

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

    def _reserve(self, most: int, now: float) -> BirthLease | None:
        """Room for rows leased at birth: only loops in this process (not workers') take them."""
        if self.pool is not None or self.delivery is None:
            return None
        return self.delivery.reserve(most, now)

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
