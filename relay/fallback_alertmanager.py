"""The fallback of the `alertmanager` template family (webhook/alertmanager*.json.j2) when it
fails to render: Alertmanager's webhook body (version "4") built here, without any template, so
that a receiver written for Alertmanager (the reason a rule chose the family) still reads it.

Each run (a digest's, oldest first) is an alert with the labels the shipped template gives it
(alertname, the group's labels, event, run_id, task, environment, project, version, tags), so its
`fingerprint` ([rule, run id]) and labels name the same alert as the template's bodies do; its
annotations are a summary, the error line, the status and `template_error`, what failed
(never run data). The alerts listed are as many as fit in the channel's max_body_bytes (an eighth
and 8 KiB kept for the rest), as in the template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.filters import as_text, fingerprint, json_bytes, web_url
from relay.render_context import RenderContext, error_view, summary
from relay.render_limits import MAX_OUTPUT_CHARS, brief

ZERO_TIME = "0001-01-01T00:00:00Z"  # a firing alert's endsAt, as Alertmanager writes it
_LABEL_BYTES = 256
_NOTE_BYTES = 1024
_MAX_ALERTS = 1000


def alertmanager_body(ctx: RenderContext, error: str | None) -> str:
    """The body, as JSON text of at most the channel's max_body_bytes (and MAX_OUTPUT_CHARS)."""
    group = ctx.group if isinstance(ctx.group, Mapping) else {}
    runs = [r for r in group.get("runs") or [ctx.run] if isinstance(r, Mapping)]
    firing = ctx.resolves is None
    labels = group.get("labels") if group else ctx.group_labels
    if not firing:  # a recovery's alert has the rule's labels only, as the shipped template's
        labels = None
    grouped = _strings({**dict(labels or {}), "alertname": ctx.rule})
    grouped = dict(sorted(grouped.items()))  # as Go sorts them, byte-wise, in the groupKey
    budget = min(ctx.max_body_bytes or 1024 * 1024, MAX_OUTPUT_CHARS)
    room = budget - budget // 8 - 8192
    alerts: list[dict[str, Any]] = []
    for run in runs[:_MAX_ALERTS]:
        alert = _alert(run, ctx, grouped, firing, error)
        room -= len(json_bytes(alert)) + 1
        if room < 0 and alerts:
            break
        alerts.append(alert)
    count = group.get("count") or len(runs)
    return json_bytes(
        {
            "receiver": ctx.channel,
            "status": "firing" if firing else "resolved",
            "alerts": alerts,
            "groupLabels": grouped,
            "commonLabels": _common([a["labels"] for a in alerts]),
            "commonAnnotations": _common([a["annotations"] for a in alerts]),
            "externalURL": "/".join((ctx.dashboard_url or "").split("/")[:3]),
            "version": "4",
            "groupKey": _group_key(grouped),
            "truncatedAlerts": max(int(count) - len(alerts), 0),
        }
    ).decode()


def _group_key(grouped: Mapping[str, str]) -> str:
    """Alertmanager's groupKey of the root route: `{}:{alertname="r", task="x"}`."""
    return "{}:{" + ", ".join(f"{k}={json_bytes(v).decode()}" for k, v in grouped.items()) + "}"


def _alert(
    run: Mapping[str, Any],
    ctx: RenderContext,
    grouped: dict[str, str],
    firing: bool,
    error: str | None,
) -> dict[str, Any]:
    status = as_text(run.get("status")) or "UNKNOWN"
    failure = error_view(run.get("error")) or {}
    notes = {
        "summary": summary(run, failure),
        "description": ": ".join(
            filter(None, (failure.get("code") or failure.get("name"), failure.get("message")))
        ),
        "status": status,
        "template_error": error or "template failed",
    }
    link = ctx.dashboard_url if run.get("id") == ctx.run.get("id") else None
    ends = ZERO_TIME if firing else run.get("finishedAt") or run.get("updatedAt")
    return {
        "status": "firing" if firing else "resolved",
        "labels": {**grouped, **_strings(_own_labels(run)), **grouped},
        "annotations": _strings(notes, _NOTE_BYTES),
        "startsAt": as_text(run.get("createdAt") or run.get("updatedAt")) or ZERO_TIME,
        "endsAt": as_text(ends) or ZERO_TIME,
        "generatorURL": link or web_url(run.get("dashboardUrl")) or "",
        "fingerprint": fingerprint([ctx.rule, run.get("id")]),
    }


def _own_labels(run: Mapping[str, Any]) -> dict[str, Any]:
    """The labels the shipped template (webhook/_alertmanager.j2) gives a run or event."""
    event = as_text(run.get("event")) or "run"
    error, env, project = (_mapping(run.get(k)) for k in ("error", "environment", "project"))
    deployment, task = _mapping(run.get("deployment")), _mapping(run.get("task"))
    tags = run.get("tags")
    if isinstance(tags, list | tuple):
        tags = ",".join(sorted(as_text(t) for t in tags))
    return {
        "event": event,
        "run_id": run.get("id"),
        "task": (error.get("taskIdentifier") if event == "error" else None)
        or run.get("taskIdentifier"),
        "environment": env.get("slug") or env.get("name"),
        "project": project.get("ref"),
        "version": deployment.get("version") or task.get("version") or run.get("version"),
        "tags": tags,
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(values: Mapping[str, Any], limit: int = _LABEL_BYTES) -> dict[str, str]:
    """Alertmanager's label and annotation maps: text values, none empty, each cut to fit."""
    texts = {str(k): as_text(v) for k, v in values.items()}
    return {k: str(brief(v, limit)) for k, v in texts.items() if v}


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    """What every map has alike ({} for none)."""
    if not maps:
        return {}
    return {k: v for k, v in maps[0].items() if all(m.get(k) == v for m in maps[1:])}
