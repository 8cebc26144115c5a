"""A notification's message for one channel, or a digest's (every due notification of a group
as one message): its context built (relay.render_context) and rendered by the Renderer with the
template the row names, `digest` for a digest, or the rule's own `<template>_digest` where the
channel type has one. Delivery (relay.composing), `relay test` and `relay send-test` render
through here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from relay.grouping import digest_context, digest_id, seen_at
from relay.model import Notification
from relay.sending import Route
from relay.templating import RenderContext, Rendered, Renderer

DIGEST_TEMPLATE = "digest"
DashboardLink = Callable[[dict[str, object]], str | None]


def body_limit(route: Route) -> int | None:
    """The largest body the channel's receiver takes (`channel.max_body_bytes` of a template),
    for the types that have the setting."""
    limit = getattr(route.settings, "max_body_bytes", None)
    return limit if isinstance(limit, int) else None


def render_notification(
    renderer: Renderer,
    channel: str,
    route: Route,
    row: Notification,
    link: DashboardLink,
    *,
    wall_s: float | None = None,
) -> Rendered:
    """Render `row` for one channel (also used by `relay test` and `relay send-test`)."""
    ctx = _context(channel, route, row, row.id, link(row.run))
    return renderer.render(route.type, row.template, route.parts, ctx, wall_s=wall_s)


def render_digest(
    renderer: Renderer,
    channel: str,
    route: Route,
    rows: list[Notification],
    link: DashboardLink,
    *,
    wall_s: float | None = None,
) -> Rendered:
    """Render several notifications of one group as one digest (template `digest`, or the
    rule's own `<template>_digest`): its runs oldest first, by when each run says it was seen
    (updatedAt), the latest last."""
    rows = sorted(rows, key=lambda row: seen_at(row.run))
    head = rows[-1]
    labels = head.extra.get("group_labels") or {}
    group = digest_context(head.group_key or "", labels, [row.run for row in rows])
    ident = digest_id([row.id for row in rows])
    ctx = replace(_context(channel, route, head, ident, link(head.run)), group=group)
    name = renderer.variant(route.type, head.template, DIGEST_TEMPLATE, route.parts[0])
    return renderer.render(route.type, name, route.parts, ctx, wall_s=wall_s)


def _context(
    channel: str, route: Route, row: Notification, ident: str, link: str | None
) -> RenderContext:
    """The context of `row`'s message (of a digest whose head it is: `ident` the digest's)."""
    labels = row.extra.get("group_labels") if row.group_key is not None else None
    return RenderContext(
        run=row.run,
        rule=row.rule,
        channel=channel,
        channel_type=route.type,
        notification_id=ident,
        dashboard_url=link,
        resolves=row.resolves,
        max_body_bytes=body_limit(route),
        group_labels=labels if isinstance(labels, dict) else None,
    )
