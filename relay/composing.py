"""A delivery unit's message, as relay.dispatch sends it: each row with the template its rule
names now, rendered on the event loop for ON_LOOP_RENDER_S at most, and again in the channel's
own thread with the renderer's full budget when that was too short; a template that failed is
logged and counted, and its plain fallback goes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

from relay.channels import Outgoing, Recovery
from relay.grouping import digest_id
from relay.model import Notification, subject_of
from relay.outcomes import Outcomes, row_extra
from relay.rendering import DashboardLink, render_digest, render_notification
from relay.rules import RECOVERY_TEMPLATE
from relay.sending import Clock, Route
from relay.templating import Rendered, Renderer

log = logging.getLogger("relay.delivery")
# A render gets this long on the event loop (the shipped templates take a millisecond or two);
# one that needs more starts again in the channel's own thread with the full budget, so a slow
# template holds up its channel, never intake or the other channels for a second per message.
ON_LOOP_RENDER_S = 0.05

# (rule, channel, event, status) → the template that rule renders for that channel now, or None:
# a notification is rendered as the config in force at send time says (Alertmanager's way)
TemplateOf = Callable[[str, str, str, object], str | None]


class RenderDeps(Protocol):
    """What a Composer reads of relay.dispatch.Deps."""

    @property
    def renderer(self) -> Renderer: ...
    @property
    def dashboard_link(self) -> DashboardLink: ...
    @property
    def template_of(self) -> TemplateOf | None: ...
    @property
    def clock(self) -> Clock: ...


class Composer:
    """Renders a channel's delivery units into the messages it sends."""

    def __init__(self, name: str, route: Route, deps: RenderDeps, outcomes: Outcomes) -> None:
        self.name = name
        self.route = route
        self.deps = deps
        self.outcomes = outcomes
        self._render_pool: ThreadPoolExecutor | None = None  # for renders too slow for the loop

    def close(self) -> None:
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False, cancel_futures=True)

    async def outgoing(
        self, rows: list[Notification], group_key: str | None, recovers: Recovery | None = None
    ) -> Outgoing:
        """The message of `rows`: one notification's, or a digest's of them all."""
        head = rows[-1]
        ident = head.id if len(rows) == 1 else digest_id([row.id for row in rows])
        on_loop_s = min(ON_LOOP_RENDER_S, self.deps.renderer.budget_s)
        rendered = self._rendered(rows, on_loop_s)
        if rendered.timed_out and on_loop_s < self.deps.renderer.budget_s:
            # too slow for the event loop: again in the channel's thread, with the full budget
            if self._render_pool is None:
                self._render_pool = ThreadPoolExecutor(1, f"render:{self.name}")
            loop = asyncio.get_running_loop()
            rendered = await loop.run_in_executor(self._render_pool, self._rendered, rows, None)
        if rendered.fallback:
            log.error(
                "template failed; sending the plain fallback",
                extra={**row_extra(self.name, head), "reason": "template", "error": rendered.error},
            )
            self.outcomes.event("template_error", head, "template")
        run_id, subject = (head.run_id, subject_of(head.run)) if len(rows) == 1 else ("", None)
        return Outgoing(
            ident,
            run_id,
            head.rule,
            rendered.parts,
            self.deps.clock(),
            recovers,
            group_key,
            subject,
            rendered.template,
        )

    def _rendered(self, rows: list[Notification], wall_s: float | None) -> Rendered:
        """One notification's message, or a digest's; wall_s None: the renderer's budget."""
        args = (self.deps.renderer, self.name, self.route)
        link = self.deps.dashboard_link
        if len(rows) == 1:
            return render_notification(*args, self._current(rows[0]), link, wall_s=wall_s)
        return render_digest(*args, [self._current(row) for row in rows], link, wall_s=wall_s)

    def _current(self, row: Notification) -> Notification:
        """`row` with the template its rule names now: a reload that changed it (with the
        channel's type, say) while the row waited in a digest or a retry's backoff renders the
        new one, as the templates' files are the new ones. A recovery renders `recovered`, or
        the rule's own `<template>_recovered` where the channel type has one."""
        template_of = self.deps.template_of
        if template_of is None:
            return row
        event = str(row.run.get("event") or "run")
        template = template_of(row.rule, self.name, event, row.run.get("status"))
        if template is not None and row.resolves is not None:
            kind, part = self.route.type, self.route.parts[0]
            template = self.deps.renderer.variant(kind, template, RECOVERY_TEMPLATE, part)
        return (
            row if template is None or template == row.template else replace(row, template=template)
        )
