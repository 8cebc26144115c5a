"""The dashboard links of a notification: the run's page on Trigger.dev (the one it sent, else one
made from defaults.dashboard_url) and a deployment event's page."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from relay.config import Defaults
from relay.filters import web_url


def dashboard_link(defaults: Defaults) -> Callable[[dict[str, Any]], str | None]:
    """The run's dashboard URL: the one Trigger.dev sent if it is an absolute http(s) URL (a
    pushed run or an alert can carry `javascript:…`, which no link or button may take), else
    defaults.dashboard_url (with the project of the alert that brought the run, else
    defaults.project_ref; None for a run without an id, or a project without a ref). A
    deployment event links to its deployment (deployment_link). Only http(s) URLs come out
    (web_url): None otherwise."""
    made = _made_link(defaults)

    def link(run: dict[str, Any]) -> str | None:
        return web_url(run.get("dashboardUrl")) or web_url(made(run))

    return link


def _made_link(defaults: Defaults) -> Callable[[dict[str, Any]], str | None]:
    """The link relay makes for a run from defaults.dashboard_url (see dashboard_link)."""
    pattern = defaults.dashboard_url

    def link(run: dict[str, Any]) -> str | None:
        if run.get("event", "run").startswith("deployment."):
            return deployment_link(defaults, run)
        if run.get("event", "run") != "run":  # the pattern is for runs
            return None
        ref = _alert_project_ref(run) or defaults.project_ref
        if "{project_ref}" in pattern and not ref:
            return None
        if "{run_id}" in pattern and not run.get("id"):
            return None  # `…/runs/` with no run: no page of it
        return pattern.format(  # percent-encoded: a URL, whatever a run id or task holds
            project_ref=quote(ref or "", safe=""),
            run_id=quote(str(run.get("id") or ""), safe=""),
            task=quote(str(run.get("taskIdentifier") or ""), safe=""),
        )

    return link


def _alert_project_ref(event: Mapping[str, Any]) -> str | None:
    """The project an alert webhook names (`project.ref`); None for a run that names none."""
    project = event.get("project")
    ref = project.get("ref") if isinstance(project, Mapping) else None
    return ref if isinstance(ref, str) and ref else None


def deployment_link(defaults: Defaults, event: Mapping[str, Any]) -> str | None:
    """What Trigger.dev's own deployment alerts link to (View Deployment):
    `<dashboard>/projects/v3/<project ref>/deployments/<short code>`, the dashboard being
    defaults.dashboard_url up to its `/projects/v3/` (else its scheme and host). The project ref
    is the alert's, else defaults.project_ref. None while either is unknown."""
    deployment = event.get("deployment")
    code = deployment.get("shortCode") if isinstance(deployment, Mapping) else None
    ref = _alert_project_ref(event) or defaults.project_ref
    if not (isinstance(code, str) and code and isinstance(ref, str) and ref):
        return None
    base, cut, _ = defaults.dashboard_url.partition("/projects/v3/")
    if not cut:
        url = urlsplit(defaults.dashboard_url)
        base = f"{url.scheme}://{url.netloc}"
    return f"{base}/projects/v3/{quote(ref, safe='')}/deployments/{quote(code, safe='')}"
