"""A notification's message for one channel, or a digest's of several notifications of one
group: the render context made of the rows and the channel's route, rendered by the
Renderer. Delivery renders with these (relay.dispatch), and so do `relay test` and `relay
send-test` (relay.trying)."""

from __future__ import annotations

from collections.abc import Callable

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
    ctx = RenderContext(
        run=row.run,
        rule=row.rule,
        channel=channel,
        channel_type=route.type,
        notification_id=row.id,
        dashboard_url=link(row.run),
        resolves=row.resolves,
        max_body_bytes=body_limit(route),
    )
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
    """Render several notifications of one group as one digest (template `digest`): its runs
    oldest first, by when each run says it was seen (updatedAt), the latest last."""
    rows = sorted(rows, key=lambda row: seen_at(row.run))
    head = rows[-1]
    labels = head.extra.get("group_labels") or {}
    group = digest_context(head.group_key or "", labels, [row.run for row in rows])
    ctx = RenderContext(
        run=head.run,
        rule=head.rule,
        channel=channel,
        channel_type=route.type,
        notification_id=digest_id([row.id for row in rows]),
        dashboard_url=link(head.run),
        group=group,
        max_body_bytes=body_limit(route),
    )
    return renderer.render(route.type, DIGEST_TEMPLATE, route.parts, ctx, wall_s=wall_s)
