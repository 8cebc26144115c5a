"""Bodies shaped like Trigger.dev's own schemas, driven through `relay test` and the renderer.

Source: triggerdotdev/trigger.dev @ b082e44389337dc6505d590737a6df70867cc8f4 (2026-08-21),
`packages/core/src/v3/schemas/webhooks.ts` (AlertWebhookErrorGroupObject: `error.stackTrace` is
optional, `occurrenceCount` a number; a new error group is sent with occurrenceCount 1) and
`apps/webapp/app/v3/services/alerts/errorGroupWebhook.server.ts` (the body it sends).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relay.channels import REGISTRY
from relay.formats.trigger_alerts import parse_alert
from relay.grouping import digest_context
from relay.templating import RenderContext, Renderer
from tests.conftest import FIXTURES, run_cli_in_process

ORG = {"id": "cmgg0k5tkdg06j8gk01fydlt9", "slug": "acme-inc-4f1d", "name": "Acme Inc"}
PROJECT = {
    "id": "cm0ugcoj2dxkn21p3x32h0534",
    "ref": "proj_jaavkuscdmabvdrlfscm",
    "slug": "billing-workers-x7qa",
    "name": "billing-workers",
}
CONSOLE_CONFIG = """\
channels:
  console: {type: console}
rules:
  - name: errors
    match: {event: error}
    notify: [console]
"""


def error_group(count: int, message: str, stack: str | None = None) -> dict[str, Any]:
    """An `alert.error` body as generateErrorGroupWebhookPayload builds it (stackTrace omitted
    when the sample stack is empty)."""
    error: dict[str, Any] = {
        "fingerprint": "fp_9f8e7d",
        "type": "TypeError",
        "message": message,
        "firstSeen": "2026-08-19T10:00:00.000Z",
        "lastSeen": "2026-08-20T10:00:00.000Z",
        "occurrenceCount": count,
        "taskIdentifier": "sync-customer-data",
    }
    if stack is not None:
        error["stackTrace"] = stack
    return {
        "id": "V1StGXR8_Z5jdHi6B-myT",
        "created": "2026-08-20T10:00:02.000Z",
        "webhookVersion": "2025-01-01",
        "type": "alert.error",
        "object": {
            "classification": "new_issue",
            "error": error,
            "environment": {"id": "cmawoa5x9dbfmzrfzms2sq7bh", "name": "Production"},
            "organization": ORG,
            "project": PROJECT,
            "dashboardUrl": "https://cloud.trigger.dev/orgs/acme/projects/x/env/prod/errors/fp",
        },
    }


def console_text(tmp_path: Path, body: dict[str, Any], match: str = "{event: error}") -> str:
    config = tmp_path / "config.yaml"
    config.write_text(CONSOLE_CONFIG.replace("{event: error}", match))
    event = tmp_path / "event.json"
    event.write_text(json.dumps(body))
    result = run_cli_in_process("test", str(event), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    [run] = json.loads(result.stdout)
    [message] = run["messages"]
    assert not message["fallback"], message["error"]
    text: str = message["parts"]["txt"]
    return text


def test_a_new_error_group_seen_once_says_one_time(tmp_path: Path) -> None:
    """A new error group usually comes with occurrenceCount 1: "1 time", not "1 times"."""
    text = console_text(tmp_path, error_group(1, "Cannot read properties of undefined"))
    assert "seen      1 time · first" in text
    assert "1 times" not in text


def test_an_error_group_without_a_message_keeps_its_type_on_the_error_line(
    tmp_path: Path,
) -> None:
    """`throw new TypeError()` groups with message "": the error line still names the type and
    the stack sits under it, not under the title."""
    text = console_text(tmp_path, error_group(3, "", "TypeError: \n    at load (src/a.ts:4:2)"))
    lines = text.splitlines()
    at = lines.index("  error     TypeError")
    assert lines[at + 1] == "            at load (src/a.ts:4:2)"


def test_an_error_digest_of_one_occurrence_says_one_time() -> None:
    """The digest line of each error ("TypeError in task: message · N times") in every channel."""
    run = parse_alert(error_group(1, "boom")).run
    assert run is not None
    head = run.as_dict()
    group = digest_context("grp_1", {"taskIdentifier": "sync-customer-data"}, [head])
    renderer = Renderer()
    for channel_type, channel in REGISTRY.items():
        ctx = RenderContext(head, "errors", "team", channel_type, "dgs_1", None, group)
        out = renderer.render(channel_type, "digest", channel.parts, ctx)
        assert not out.fallback, out.error
        assert not any("1 times" in text for text in out.parts.values()), channel_type


ROW = FIXTURES / "realtime-run" / "raw-row"


def test_internal_codes_trigger_dev_explains_read_as_sentences(tmp_path: Path) -> None:
    """Raw rows whose INTERNAL_ERROR has only a code (`message` is optional in TaskRunInternalError,
    packages/core/src/v3/schemas/common.ts); Trigger.dev's own dashboard explains these three
    (packages/core/src/v3/errors.ts prettyInternalErrors, same commit)."""
    base = json.loads((ROW / "run_failed.row.json").read_text())
    codes = ("OUTDATED_SDK_VERSION", "TASK_DID_CONCURRENT_WAIT", "RECURSIVE_WAIT_DEADLOCK")
    rows = [
        {
            **base,
            "id": f"cm{n}",
            "friendlyId": f"run_{n}",
            "error": {"type": "INTERNAL_ERROR", "code": code},
        }
        for n, code in enumerate(codes)
    ]
    config = tmp_path / "config.yaml"
    config.write_text(CONSOLE_CONFIG.replace("{event: error}", "{status: [failure]}"))
    event = tmp_path / "rows.json"
    event.write_text(json.dumps(rows))
    result = run_cli_in_process("test", str(event), "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    lines = [
        next(ln for ln in run["messages"][0]["parts"]["txt"].splitlines() if "error " in ln)
        for run in json.loads(result.stdout)
    ]
    for code, line in zip(codes, lines, strict=True):
        assert line.startswith(f"  error     {code}: "), line
        assert len(line) > len(f"  error     {code}: ") + 20, line


def test_a_bare_error_group_dated_in_epoch_milliseconds_shows_its_dates(tmp_path: Path) -> None:
    """The un-enveloped `alert.error_group` body (deliverErrorGroupAlert.server.ts) copies the
    job's firstSeen / lastSeen as they come: epoch milliseconds in a string (its Slack message
    reads them with `new Date(Number(lastSeen))`). Messages showed the raw digits."""
    body = error_group(2, "boom")["object"]
    body["error"].update(firstSeen="1755680000000", lastSeen="1755684000000")
    text = console_text(tmp_path, {"type": "alert.error_group", **body})
    assert "first 2025-08-20 08:53:20 UTC · last 2025-08-20 10:00:00 UTC" in text
    assert "1755684000000" not in text
    run = parse_alert({"type": "alert.error_group", **body}).run
    assert run is not None and run.as_dict()["error"]["lastSeen"] == "2025-08-20T10:00:00.000Z"


def test_a_deployment_dated_with_an_offset_shows_its_time_in_utc(tmp_path: Path) -> None:
    """A deployment's failedAt with an offset (`12:02:47+02:00`, 10:02:47 UTC) or in epoch
    milliseconds was kept as sent: relay read the same instant for createdAt, but the messages
    cut the raw text and showed "Failed 2026-08-20 12:02:47 UTC" (two hours off) or the digits.
    Now the date is ISO-8601 `…Z` like every other date (as an error group's firstSeen)."""
    body = json.loads(
        (FIXTURES / "alert-webhooks" / "alert.deployment.failed.body.json").read_text()
    )
    match = "{event: deployment.failed}"
    for sent in ("2026-08-20T12:02:47.811+02:00", 1787220167811):
        body["object"]["deployment"]["failedAt"] = sent
        text = console_text(tmp_path, body, match)
        assert "failed    2026-08-20 10:02:47 UTC" in text, text
        run = parse_alert(body).run
        assert run is not None
        assert run.as_dict()["deployment"]["failedAt"] == "2026-08-20T10:02:47.811Z"


def rest_run(**extra: Any) -> dict[str, Any]:
    """A run as Trigger.dev's REST API answers it (CommonRunFields: `version` is the deployment
    version the run is locked to); `extra` adds the fields of one endpoint."""
    return {
        "id": "run_cmuxjbf30kqkowywawhi1r8yr",
        "status": "FAILED",
        "taskIdentifier": "sync-customer-data",
        "version": "20260819.4",
        "isTest": False,
        "createdAt": "2026-08-20T09:14:03.118Z",
        "updatedAt": "2026-08-20T09:14:22.461Z",
        "finishedAt": "2026-08-20T09:14:22.460Z",
        "tags": ["plan:pro"],
        "costInCents": 0.05,
        "baseCostInCents": 0.0025,
        "durationMs": 14873,
        **extra,
    }


def test_a_runs_list_item_shows_its_environment_and_version(tmp_path: Path) -> None:
    """runs.list items (GET /api/v1/runs; `ListRunResponseItem` = CommonRunFields + `env {id,
    name, user?}`, packages/core/src/v3/schemas/api.ts) name their environment in `env.name`, the
    environment's slug (apps/webapp/app/presenters/v3/ApiRunListPresenter.server.ts), and carry
    the deployment `version`, as the alert webhook's run has `environment` and `task.version`.
    Messages of a pushed runs.list page showed neither."""
    env = {"id": "cmawoa5x9dbfmzrfzms2sq7bh", "name": "prod", "user": "Alice"}
    page = {"data": [rest_run(env=env)], "pagination": {"next": None}}
    text = console_text(tmp_path, page, "{status: failure}")
    assert "  env       prod\n" in text
    assert "  version   20260819.4\n" in text


def test_a_retrieved_run_shows_its_version_and_keeps_what_it_says(tmp_path: Path) -> None:
    """runs.retrieve (RetrieveRunResponse, same api.ts) has `version` but no environment; a run
    that names its own `environment` or `task` keeps them as they are."""
    text = console_text(tmp_path, rest_run(depth=0, attemptCount=3), "{status: failure}")
    assert "  version   20260819.4\n" in text
    assert "  env " not in text
    own = rest_run(env={"id": "e", "name": "prod"}, environment="staging", task={"version": "7"})
    text = console_text(tmp_path, own, "{status: failure}")
    assert "  env       staging\n" in text
    assert "  version   7\n" in text


def test_a_run_whose_error_is_text_shows_that_text(tmp_path: Path) -> None:
    """A run posted by hand may give its error as a string (SPEC §2 names the field, not its
    shape): the message is that text, not the text quoted as JSON (`"Stripe …"`); a list or a
    number is still a failure, shown as its JSON."""
    for error, line in (
        ("Stripe API responded with 429", "  error     Stripe API responded with 429\n"),
        (["timeout", 30], '  error     ["timeout",30]\n'),
    ):
        run = {"id": "run_text1", "taskIdentifier": "t", "status": "FAILED", "error": error}
        text = console_text(tmp_path, run, "{status: failure}")
        assert line in text, text
