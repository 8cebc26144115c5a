"""Trigger.dev's built-in alert webhooks (POST /v1/trigger/alerts) → Run.

Signature: `x-trigger-signature-hmacsha256` = hex HMAC-SHA256 of the exact raw body, keyed with
the alert channel's secret (UTF-8). Every configured secret is tried with a constant-time
compare; hex case is ignored (Trigger.dev sends lowercase; the digest is the same value either
way). Several header lines (or one a proxy folded with commas) verify when any value does, in
whatever order, up to MAX_SIGNATURES values: more are refused uncompared (a 1 MB header of commas
held the event loop for 0.3 s per request). Empty secrets never verify anything.

Accepted bodies (TRIGGER.md §3.2):
* `alert.run.failed` (envelope `{id, created, webhookVersion, type, object}`) → a Run:
  id = run.id (`run_…`), taskIdentifier = task.id, status via normalise_status, createdAt /
  startedAt, finishedAt = run.completedAt, number, tags, isTest, idempotencyKey, and `error` =
  the raw TaskRunError union as sent (with `type`, INTERNAL_ERROR `code` and `message`).
  updatedAt stays None: the run's per-rule "fired once" memory then makes the same run arriving
  by POST /v1/runs and by this webhook (in either order) notify once.
* `alert.deployment.failed` / `alert.deployment.success` → event `deployment.failed` /
  `deployment.success`: id = deployment.id (`deployment_…`), status = deployment.status
  (FAILED, TIMED_OUT, DEPLOYED …), taskIdentifier = "", createdAt = failedAt / deployedAt
  (else the envelope's `created`), error = the DeployError {name, message, stack?, stderr?}.
* `alert.error` (error groups) → event `error`: status = classification upper-cased
  (NEW_ISSUE, REGRESSION, UNIGNORED), taskIdentifier = error.taskIdentifier, error = the group's
  error {fingerprint, type, message, stackTrace?, firstSeen, lastSeen, occurrenceCount},
  createdAt = the envelope's `created`. The un-enveloped variant `{"type": "alert.error_group",
  classification, error, …}` of some 2026 versions is read the same way; its firstSeen /
  lastSeen come in epoch milliseconds (a string of digits) and are turned into ISO dates, and
  having no `created`, its createdAt is the error's lastSeen (a digest's "Seen", as for the
  enveloped form).
* Legacy v1 channels (no `type`): a body with `run`/`task` is a run failure (v1 sends no status:
  FAILED is assumed; its error is top-level), a body with `deployment` is a deployment alert
  (`deployment.success` when its status is DEPLOYED, else `deployment.failed`).
Every other field of the object is kept on the Run (environment, project, organization,
dashboardUrl, machine, isOutOfMemoryError, task, git, vercel, tasks, classification …), plus
`alert` = {id, created, webhookVersion, type} (and `legacy: true` for v1 bodies).

Ids and "fires once" (a rule fires once per id):
* runs and deployments use their own ids, so a redelivery or a second channel adds nothing;
* an error group legitimately alerts again (regression, resurfaced), and Trigger.dev builds the
  body, with a fresh nanoid envelope id and `created`, on every delivery attempt
  (generateErrorGroupWebhookPayload runs inside the retried job). The id is therefore
  `errgrp_<fingerprint>:<classification>:<digest>` where the digest covers the environment id,
  classification, lastSeen and occurrenceCount: each distinct alert notifies once, a retried
  or duplicated delivery of the same alert does not.

A well-formed body whose `type` relay does not know (a newer alert type, `alert.…`) is
accepted and ignored (the endpoint answers 202 with ignored = 1 and logs it): refusing it would
make Trigger.dev retry it forever. A `type` outside `alert.` is no Trigger.dev alert at all
(every type of its Webhook union starts so): InputError on `type`, as for other wrong shapes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from relay.errors import InputError, field_path, input_message
from relay.formats.run_errors import enhanced
from relay.model import Run
from relay.run_values import from_iso, iso
from relay.statuses import add_status_flags, normalise_status

SIGNATURE_HEADER = "x-trigger-signature-hmacsha256"
MAX_SIGNATURES = 16  # values of the signature header compared; Trigger.dev sends one
RUN_FAILED = "alert.run.failed"
DEPLOYMENT_FAILED = "alert.deployment.failed"
DEPLOYMENT_SUCCESS = "alert.deployment.success"
ERROR_GROUP = "alert.error"
ERROR_GROUP_BARE = "alert.error_group"  # un-enveloped variant
ALERT_PREFIX = "alert."  # every type of Trigger.dev's Webhook union
ALERT_EXPECTED = "a JSON object (one Trigger.dev alert webhook)"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_YEAR_10000_MS = 253_402_300_800_000  # the first instant a datetime cannot hold
# run.* keys → Run fields (v2 and legacy v1 run bodies)
_RUN_KEYS = {
    "id": "id",
    "number": "number",
    "status": "status",
    "createdAt": "createdAt",
    "startedAt": "startedAt",
    "completedAt": "finishedAt",
    "isTest": "isTest",
    "idempotencyKey": "idempotencyKey",
    "tags": "tags",
    "error": "error",
}


@dataclass(frozen=True)
class Alert:
    """A parsed alert webhook: `run` is None for a well-formed body of an unknown type."""

    type: str
    run: Run | None


def signature(body: bytes, secret: str) -> str:
    """The lowercase hex signature Trigger.dev sends for `body`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """True when one of the comma-separated values of `header` (several header lines joined,
    as RFC 9110 reads them) is the signature of `body` under any non-empty secret. More than
    MAX_SIGNATURES values verify nothing: each was split, lowered and compared with every
    secret's signature, 0.2 s of CPU for the 480,000 empty values of 120 lines of commas."""
    if not header or header.count(",") >= MAX_SIGNATURES:
        return False
    expected = [signature(body, s).encode() for s in secrets if s]
    given = [v.strip().lower().encode("ascii", "replace") for v in header.split(",")]
    checks = [hmac.compare_digest(e, g) for e in expected for g in given]
    return any(checks)


def parse_alert(data: Any) -> Alert:
    """An alert webhook body (already JSON-decoded) → Alert; InputError names a bad field."""
    if not isinstance(data, dict):
        raise InputError("", f"expected {ALERT_EXPECTED}")
    if "type" not in data:
        return _legacy(data)
    kind = data["type"]
    if not isinstance(kind, str):
        raise InputError("type", "expected a string")
    if kind == ERROR_GROUP_BARE:
        return Alert(kind, _error_group(data, "", _meta(data, kind)))
    if not kind.startswith(ALERT_PREFIX):
        raise InputError("type", "expected a Trigger.dev alert type (alert.run.failed, …)")
    if kind not in (RUN_FAILED, DEPLOYMENT_FAILED, DEPLOYMENT_SUCCESS, ERROR_GROUP):
        return Alert(kind, None)
    if data.get("id") is not None and not isinstance(data["id"], str):
        raise InputError("id", "expected a string")
    obj = _object(data, "object", "")
    meta = _meta(data, kind)
    if kind == RUN_FAILED:
        return Alert(kind, _run_failed(obj, "object", meta))
    if kind == ERROR_GROUP:
        return Alert(kind, _error_group(obj, "object", meta))
    event = "deployment.failed" if kind == DEPLOYMENT_FAILED else "deployment.success"
    return Alert(kind, _deployment(obj, "object", event, meta))


def _legacy(data: dict[str, Any]) -> Alert:
    meta = {"id": None, "created": None, "webhookVersion": None, "legacy": True}
    if "run" in data or "task" in data:
        return Alert(RUN_FAILED, _run_failed(data, "", {**meta, "type": RUN_FAILED}))
    if "deployment" in data:
        status = _object(data, "deployment", "").get("status")
        kind = DEPLOYMENT_SUCCESS if status == "DEPLOYED" else DEPLOYMENT_FAILED
        event = kind.removeprefix("alert.")
        return Alert(kind, _deployment(data, "", event, {**meta, "type": kind}))
    raise InputError("type", "required field is missing (not a Trigger.dev alert webhook)")


def _meta(envelope: Mapping[str, Any], kind: str) -> dict[str, Any]:
    keys = ("id", "created", "webhookVersion")
    return {**{k: envelope.get(k) for k in keys}, "type": kind}


def _run_failed(obj: dict[str, Any], where: str, meta: dict[str, Any]) -> Run:
    run = _object(obj, "run", where)
    task = _object(obj, "task", where, required=False) or {}
    run_at = _join(where, "run")
    fields: dict[str, Any] = {dst: run[src] for src, dst in _RUN_KEYS.items() if src in run}
    sources = {dst: _join(run_at, src) for src, dst in _RUN_KEYS.items()}
    if "error" not in run and "error" in obj:  # legacy v1: the error is top-level
        fields["error"], sources["error"] = obj["error"], _join(where, "error")
    if isinstance(fields.get("error"), dict):  # the raw TaskRunError: its code as the SDK reads it
        fields["error"] = enhanced(fields["error"])
    if isinstance(fields.get("status"), str):
        fields["status"] = normalise_status(fields["status"])
    elif meta.get("legacy") and fields.get("status") is None:
        fields["status"] = "FAILED"  # v1 bodies carry no status; they are sent on failure
    add_status_flags(fields)
    if fields.get("tags", []) is None:
        fields["tags"] = []
    if "id" in task:
        fields["taskIdentifier"] = task["id"]
        sources["taskIdentifier"] = _join(where, "task.id")
    _keep(fields, run, skip=_RUN_KEYS)
    _keep(fields, obj, skip=("run",))
    fields["alert"] = meta
    return _validate(fields, sources)


def _deployment(obj: dict[str, Any], where: str, event: str, meta: dict[str, Any]) -> Run:
    deployment = _object(obj, "deployment", where)
    at = _join(where, "deployment")
    stamp = "failedAt" if event == "deployment.failed" else "deployedAt"
    fields: dict[str, Any] = {"event": event, "taskIdentifier": ""}
    sources = {"id": _join(at, "id"), "status": _join(at, "status"), "error": _join(where, "error")}
    for key in ("id", "status"):
        if key in deployment:
            fields[key] = deployment[key]
    if deployment.get(stamp) is not None:
        fields["createdAt"], sources["createdAt"] = deployment[stamp], _join(at, stamp)
    elif meta.get("created") is not None:
        fields["createdAt"], sources["createdAt"] = meta["created"], "created"
    if obj.get("error") is not None:
        fields["error"] = obj["error"]
    _keep(fields, obj, skip=())
    fields["alert"] = meta
    return _utc_stamp(_validate(fields, sources), deployment, stamp)


def _utc_stamp(run: Run, deployment: dict[str, Any], stamp: str) -> Run:
    """The run with its deployment's failedAt / deployedAt as ISO-8601 `…Z`, the instant read
    for createdAt, like every other date: as sent (`+02:00`, epoch ms), messages cutting the
    text showed another hour as UTC, or digits."""
    if deployment.get(stamp) is None or run.createdAt is None:
        return run
    return run.model_copy(update={"deployment": deployment | {stamp: iso(run.createdAt)}})


def _error_group(obj: dict[str, Any], where: str, meta: dict[str, Any]) -> Run:
    classification = _string(obj, "classification", where)
    error = _object(obj, "error", where)
    fingerprint = _string(error, "fingerprint", _join(where, "error"))
    environment = obj.get("environment")
    env_id = environment.get("id") if isinstance(environment, dict) else None
    occurrence = [env_id, classification, error.get("lastSeen"), error.get("occurrenceCount")]
    digest = hashlib.blake2b(orjson.dumps(occurrence, default=str), digest_size=6).hexdigest()
    fields: dict[str, Any] = {
        "id": f"errgrp_{fingerprint}:{classification}:{digest}",
        "event": "error",
        "status": classification.upper(),
        "error": _iso_seen(error),
    }
    sources = {"taskIdentifier": _join(where, "error.taskIdentifier"), "createdAt": "created"}
    if error.get("taskIdentifier") is not None:
        fields["taskIdentifier"] = error["taskIdentifier"]
    if meta.get("created") is not None:
        fields["createdAt"] = meta["created"]
    elif (seen := _date(fields["error"].get("lastSeen"))) is not None:
        fields["createdAt"] = seen  # the bare form has no `created`: when the error was seen
    _keep(fields, obj, skip=("type",) if not where else ())
    fields["alert"] = meta
    return _validate(fields, sources)


def _iso_seen(error: dict[str, Any]) -> dict[str, Any]:
    """The error with firstSeen / lastSeen given in epoch milliseconds (digits in a string, as
    the un-enveloped body sends them, or a number) as ISO-8601 `…Z`, like every other date."""
    seen = {k: _epoch_ms_iso(error[k]) for k in ("firstSeen", "lastSeen") if k in error}
    return error | {k: v for k, v in seen.items() if v is not None}


def _date(value: Any) -> datetime | None:
    """`value` read as a date by from_iso, else None (a lastSeen relay cannot read is no
    reason to refuse the alert)."""
    try:
        return from_iso(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _epoch_ms_iso(value: Any) -> str | None:
    """`1755684000000` or "1755684000000" → "2025-08-20T10:00:00.000Z"; None for anything else."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _YEAR_10000_MS:
        return None
    at = _EPOCH + timedelta(milliseconds=value)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _keep(fields: dict[str, Any], source: Mapping[str, Any], skip: Collection[str]) -> None:
    """Copy the other keys of `source` as extra fields, never over a Run field."""
    for key, value in source.items():
        if key not in skip and key not in fields and key not in Run.model_fields:
            fields[key] = value


def _object(
    data: Mapping[str, Any], key: str, where: str, *, required: bool = True
) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise InputError(_join(where, key), "required field is missing")
        return {}
    if not isinstance(value, dict):
        raise InputError(_join(where, key), "expected an object")
    return value


def _string(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        raise InputError(_join(where, key), "required field is missing")
    if not isinstance(value, str) or not value:
        raise InputError(_join(where, key), "expected a non-empty string")
    return value


def _validate(fields: dict[str, Any], sources: Mapping[str, str]) -> Run:
    """Run.of_alert; a failure names the field of the webhook body, not of the Run."""
    try:
        return Run.of_alert(fields)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        head, *rest = err["loc"]
        field = field_path(sources.get(str(head), str(head)), *rest)
        raise InputError(field, input_message(err)) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
