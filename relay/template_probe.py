"""Templates tried at `relay check` on sample events. A rule's `json` template, on a run whose
texts hold what JSON must escape (a quote, a backslash, a line break): `"title": "{{ summary
}}"` renders valid JSON for most runs and the plain fallback for the first error message with
a quote in it, so the receiver gets relay's fallback body instead of the one the template's
author wrote, in production. tojson is the cure; `relay check` warns before that run comes.
And any template, on the samples of each event its rules see (`fails_always`): one that fails
on all (`{{ run.costInCents / 0 }}`, a filter given the wrong arguments) sends the fallback
for every event, which nothing said before the first one came.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from relay.formats.trigger_alerts import parse_alert
from relay.grouping import digest_context
from relay.model import Run
from relay.render_context import RenderContext
from relay.render_limits import LimitExceeded, OutputTooLarge, RenderTimeout
from relay.rendering import DIGEST_TEMPLATE
from relay.rules import RECOVERY_TEMPLATE
from relay.templating import Renderer

SAMPLE_RUN: dict[str, Any] = {  # relay send-test's, relay test's words' base
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

_TEXT = 'a "quoted" word, a back\\slash\nand a second line'
PROBE_RUN: dict[str, Any] = {
    "id": "run_probe",
    "taskIdentifier": "probe/" + _TEXT,
    "status": "FAILED",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "updatedAt": "2026-01-01T00:00:01.000Z",
    "durationMs": 1000,
    "tags": [_TEXT],
    "metadata": {"note": _TEXT},
    "payload": {"note": _TEXT},
    "error": {
        "name": "Error",
        "message": _TEXT,
        "stackTrace": f"Error: {_TEXT}\n    at x (a.ts:1:1)",
    },
    "event": "run",
}
# unlike the others: no error, no tag, no test, an output
_COMPLETED = {
    **SAMPLE_RUN, "status": "COMPLETED", "error": None, "tags": [], "isTest": False,
    "output": {"ok": True},
}  # fmt: skip
_PLACE = {
    "environment": {"id": "env_sample", "type": "PRODUCTION", "slug": "prod", "name": "prod"},
    "organization": {"id": "org_sample", "slug": "acme", "name": "Acme"},
    "project": {"id": "proj_sample", "ref": "proj_sample", "slug": "app", "name": "app"},
}
_DEPLOYMENT = {"id": "deployment_sample", "version": "20260101.1", "shortCode": "abcd1234"}
# the alert webhooks' bodies (TRIGGER.md §3.2), read by relay's own parser
_ALERTS: dict[str, dict[str, Any]] = {
    "run": {
        "task": {"id": "sample-task", "filePath": "src/sample.ts", "version": "20260101.1"},
        "run": {
            **{k: SAMPLE_RUN[k] for k in ("id", "createdAt", "isTest", "tags", "error")},
            "number": 1, "status": "FAILED", "machine": "small-1x", "dashboardUrl": "",
        },
    },
    "deployment.failed": {
        "deployment": {**_DEPLOYMENT, "status": "FAILED", "failedAt": SAMPLE_RUN["createdAt"]},
        "error": {"name": "BuildError", "message": "Build failed"},
    },
    "deployment.success": {
        "deployment": {**_DEPLOYMENT, "status": "DEPLOYED", "deployedAt": SAMPLE_RUN["createdAt"]},
        "tasks": [{"id": "sample-task", "filePath": "src/sample.ts", "exportName": "sample"}],
    },
    "error": {
        "classification": "new_issue",
        "error": {
            "fingerprint": "fp_sample", "type": "Error", "message": "Sample error",
            "firstSeen": "1767225600000", "lastSeen": "1767225600000", "occurrenceCount": 1,
            "taskIdentifier": "sample-task",
        },
        "dashboardUrl": "",
    },
}  # fmt: skip
_TYPES = {"run": "alert.run.failed", "error": "alert.error"}
ALERT_RUN = "run alert"  # a sample kind: the run of an alert.run.failed webhook


def sample_kinds(events: Collection[str], *, alerts: bool) -> tuple[str, ...]:
    """What to try a template of a rule seeing `events` on: an alert webhook's run beside
    run updates only where the config takes alert webhooks (sources.trigger_alerts)."""
    extra = (ALERT_RUN,) if alerts and "run" in events else ()
    return (*dict.fromkeys(events), *extra)


def _samples(kind: str) -> list[dict[str, Any]]:
    """The runs of a sample kind, as a notification holds them (Run.as_dict)."""
    if kind == "run":
        return [Run.model_validate(r).as_dict() for r in (SAMPLE_RUN, _COMPLETED, PROBE_RUN)]
    event = "run" if kind == ALERT_RUN else kind
    body = {"type": _TYPES.get(event, f"alert.{event}"), "object": {**_ALERTS[event], **_PLACE}}
    alert = parse_alert(body).run
    return [] if alert is None else [alert.as_dict()]


def fails_always(
    renderer: Renderer, channel_type: str, template: str, part: str, kinds: Collection[str]
) -> str | None:
    """Why `<channel_type>/<template>.<part>.j2` fails on every sample of `kinds` (the error
    of the first: exception class, template and line), or None when one renders. A digest's
    template (`digest`, `<template>_digest`) is given its group, a recovery's the notification
    it resolves, as relay.rendering gives them; no other template is."""
    error = None
    for run in (run for kind in kinds for run in _samples(kind)):
        group = digest_context("sample", {}, [run]) if _is(template, DIGEST_TEMPLATE) else None
        resolves = "ntf_sample0" if _is(template, RECOVERY_TEMPLATE) else None
        ctx = RenderContext(
            run, "sample", "sample", channel_type, "ntf_sample", None, group, resolves
        )
        rendered = renderer.render(channel_type, template, (part,), ctx)
        if not rendered.fallback:
            return None
        error = error or rendered.error
        if rendered.timed_out or (rendered.error or "").startswith(_LIMITS):
            return error  # each other sample would cost as much, at every start and reload
    return error


# relay's limits of a render (time, output): one of the small samples past them, the others are
# too, and each try costs up to the budget (a second)
_LIMITS = tuple(f"{kind.__name__} in " for kind in (RenderTimeout, LimitExceeded, OutputTooLarge))


def _is(template: str, variant: str) -> bool:
    """Whether `template` is rendered as `variant` (Renderer.variant's names)."""
    return template == variant or template.endswith(f"_{variant}")


def invalid_json(renderer: Renderer, channel_type: str, template: str) -> str | None:
    """Where `<channel_type>/<template>.json.j2` renders invalid JSON for PROBE_RUN, or None
    (valid, or failing for another reason: that is for the template's own checks)."""
    ctx = RenderContext(PROBE_RUN, "probe", "probe", channel_type, "ntf_probe", None)
    rendered = renderer.render(channel_type, template, ("json",), ctx)
    error = rendered.error or ""
    if not (rendered.fallback and error.startswith("InvalidJSON in ")):
        return None
    # "InvalidJSON in webhook/mine.json.j2: line 1 column 21": the file, where in the output
    name, _, where = error.removeprefix("InvalidJSON in ").rpartition(": ")
    return (
        f"{name} renders invalid JSON (output {where}) when run data "
        "holds a quote, a backslash or a line break: write each value through tojson, "
        "not inside quotes"
    )
