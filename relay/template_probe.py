"""A rule's `json` template tried, at `relay check`, on a run whose texts hold what JSON must
escape (a quote, a backslash, a line break): `"title": "{{ summary }}"` renders valid JSON for
most runs and the plain fallback for the first error message with a quote in it, so the
receiver gets relay's fallback body instead of the one the template's author wrote, in
production. tojson is the cure; `relay check` warns before that run comes.
"""

from __future__ import annotations

from typing import Any

from relay.render_context import RenderContext
from relay.templating import Renderer

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
