"""The plain message sent when a template fails (relay.templating.Renderer): a paragraph of text
(status, task, run id, error, rule, link), or for a `json` part a body a receiver can route as
it routes the shipped template's (`type`), never larger than a rendered part may be."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

from relay.fallback_alertmanager import alertmanager_body
from relay.filters import as_text, json_bytes, mrkdwn, tojson
from relay.render_context import RenderContext, error_view, summary
from relay.render_limits import MAX_OUTPUT_CHARS


def fallback_text(ctx: RenderContext) -> str:
    """Plain one-paragraph message: status, task, run id, error, rule, dashboard link."""
    try:
        run = ctx.run if isinstance(ctx.run, Mapping) else {}
        text = f"{summary(run, error_view(run.get('error')))} (rule: {ctx.rule})"
        if ctx.group is not None:
            event = ctx.group.get("event", run.get("event"))
            text = f"{_group_line(ctx.group, event)} (rule: {ctx.rule}); latest: {text}"
    except Exception:  # the last resort must not fail
        text = f"relay notification {ctx.notification_id} (rule: {ctx.rule})"
    return f"{text} {ctx.dashboard_url}" if ctx.dashboard_url else text


def _group_line(group: Mapping[str, Any], event: Any) -> str:
    statuses = ", ".join(f"{n} {s}" for s, n in dict(group.get("by_status") or {}).items())
    labels = ", ".join(f"{k}={v}" for k, v in dict(group.get("labels") or {}).items())
    noun = _DIGEST_NOUNS.get(event, "runs") if isinstance(event, str) else "runs"
    return (
        f"{group.get('count', 0)} {noun}"
        + (f" [{labels}]" if labels else "")
        + (f": {statuses}" if statuses else "")
    )


# Channel types whose `text` is markup: the fallback escapes run data there as templates do, so a
# broken template cannot let a task name or error message ping @channel or forge a link.
_TEXT_ESCAPES = {"slack": mrkdwn}


def fallback_json(ctx: RenderContext) -> str:
    """{"id", "type", "rule", "channel", "text", "run", "dashboardUrl"} (+ "group" in a digest)
    as a JSON string of at most MAX_OUTPUT_CHARS; `text` is escaped for channel types that read
    it as markup (Slack mrkdwn). Fields of the run too large for that (or not JSON) are replaced by
    "[omitted: N bytes]"; if it is still too large, every field over a few hundred bytes is, so
    that a digest still names each of its runs; only if that is too large, `run` is null and
    `group` has no runs."""
    escape = _TEXT_ESCAPES.get(ctx.channel_type, as_text)
    body: dict[str, Any] = {
        "id": ctx.notification_id,
        "type": _body_type(ctx),
        "rule": ctx.rule,
        "channel": ctx.channel,
        "text": escape(fallback_text(ctx)),
        "run": ctx.run,
        "dashboardUrl": ctx.dashboard_url,
    }
    if ctx.group is not None:
        body["group"] = ctx.group
    for shrink in (_slim_runs, _brief_runs, _no_runs):
        try:
            data = json_bytes(body)
        except (TypeError, ValueError):  # e.g. an integer beyond 64 bits somewhere in the run
            data = None
        if data is not None and len(data) <= MAX_OUTPUT_CHARS:  # bytes >= characters
            return data.decode()
        body = shrink(body)
    return tojson(body)


_EVENT_TYPES = frozenset(("deployment.failed", "deployment.success", "error"))


# a digest of events: what its messages count, and the `type` of its webhook body
_DIGEST_NOUNS = {
    "error": "errors",
    "deployment.failed": "deployments",
    "deployment.success": "deployments",
}


_DIGEST_TYPES = {
    "error": "error.digest",
    "deployment.failed": "deployment.digest",
    "deployment.success": "deployment.digest",
}


def _body_type(ctx: RenderContext) -> str:
    """The `type` the shipped webhook template of this message would give (a receiver routes on
    it, so the fallback keeps it): run.digest (error.digest, deployment.digest for a digest of
    those events), run.recovered, an event's name, or run.alert."""
    event = ctx.run.get("event")
    if ctx.group is not None:  # the event all its runs are (a mix of them: run.digest)
        event = ctx.group.get("event", event)
        return _DIGEST_TYPES.get(event, "run.digest") if isinstance(event, str) else "run.digest"
    if ctx.resolves is not None:
        return "run.recovered"
    return event if isinstance(event, str) and event in _EVENT_TYPES else "run.alert"


_FIELD_MAX_CHARS = 10_000  # a run field larger than this is left out of a fallback too large
# ...and larger than this when that is still too large: 1,000 runs of a digest with long errors
# (each run's id, status, task and times kept) then fit, where dropping the runs would lose them
_BRIEF_FIELD_MAX_CHARS = 200


def _slim_value(value: Any, limit: int = _FIELD_MAX_CHARS) -> Any:
    try:
        size = len(json_bytes(value))
    except (TypeError, ValueError):
        return "[omitted: not JSON]"
    return value if size <= limit else f"[omitted: {size} bytes]"


def _slim_run(run: Any, limit: int) -> Any:
    if not isinstance(run, Mapping):
        return None
    return {k: _slim_value(v, limit) for k, v in run.items()}


def _omit_large(body: dict[str, Any], limit: int) -> dict[str, Any]:
    """The body with the fields over `limit` of its run (and of a digest's runs) omitted."""
    slim = {**body, "run": _slim_run(body["run"], limit)}
    group = body.get("group")
    if isinstance(group, Mapping) and isinstance(group.get("runs"), list):
        slim["group"] = {**group, "runs": [_slim_run(r, limit) for r in group["runs"]]}
    return slim


def _slim_runs(body: dict[str, Any]) -> dict[str, Any]:
    return _omit_large(body, _FIELD_MAX_CHARS)


def _brief_runs(body: dict[str, Any]) -> dict[str, Any]:
    return _omit_large(body, _BRIEF_FIELD_MAX_CHARS)


def _no_runs(body: dict[str, Any]) -> dict[str, Any]:
    """The body without run data: no run, a digest group without its runs."""
    group = body.get("group")
    if isinstance(group, Mapping):
        group = {k: _slim_value(v) for k, v in group.items() if k != "runs"}
    return {**body, "run": None, **({"group": group} if "group" in body else {})}


def fallback_part(
    part: str, ctx: RenderContext, template: str = "", error: str | None = None
) -> str:
    """What is sent for `part` of a message whose `template` failed (`error`, its
    description): for a `json` part, the body its template family's receivers read (an
    Alertmanager body for `alertmanager`, `alertmanager_digest` ...), else fallback_json."""
    if part == "json":
        body = _FAMILY_BODIES.get((ctx.channel_type, template_family(template)))
        return body(ctx, error) if body is not None else fallback_json(ctx)
    if part == "html":
        return f"<pre>{html.escape(fallback_text(ctx))}</pre>"
    return fallback_text(ctx)


def template_family(template: str) -> str:
    """The template a digest or recovery variant belongs to: `alertmanager` of
    `alertmanager_digest` and `alertmanager_recovered` (relay.templating.Renderer.variant)."""
    return template.removesuffix("_digest").removesuffix("_recovered")


# by (channel type, template family): a `json` fallback the family's receivers can read
_FAMILY_BODIES: dict[tuple[str, str], Callable[[RenderContext, str | None], str]] = {
    ("webhook", "alertmanager"): alertmanager_body,
}
