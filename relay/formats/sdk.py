"""The SDK run object (runs.subscribeToRun & co., RunShape) → Run.

The REST API's runs (runs.list items, runs.retrieve: CommonRunFields in Trigger.dev's
packages/core/src/v3/schemas/api.ts) also carry the deployment `version` and, in runs.list,
`env {id, name, user?}`, `name` being the environment's slug (ApiRunListPresenter). They are
given the places an alert webhook's run has them, `task.version` and `environment {id, slug}`,
which messages read; a run that has its own `task` or `environment` keeps it."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from relay.errors import InputError, field_path, input_message
from relay.formats.packets import decode_packet
from relay.model import Run, dates_from_iso
from relay.statuses import add_status_flags, normalise_status

_PACKETS = (("payload", "payloadType"), ("output", "outputType"), ("metadata", "metadataType"))


def parse_sdk_run(obj: dict[str, Any], where: str = "") -> Run:
    """Validate and normalise one SDK run object; InputError names the failing field."""
    data = dict(obj)
    # a run object is event `run`: deployment and error events only come as alert webhooks, so
    # a field `event` of a pushed object ("run.failed", a hook's label …) changes nothing
    data["event"] = "run"
    status = data.get("status")
    if isinstance(status, str):
        data["status"] = normalise_status(status)
    add_status_flags(data)
    _rest_fields(data)
    if data.get("tags") is None and "tags" in data:
        data["tags"] = []
    error = data.get("error")
    if isinstance(error, str):
        data["error"] = {"message": error}
    elif error is not None and not isinstance(error, dict):  # a list, a number: still a failure
        data["error"] = {"message": orjson.dumps(error).decode()}
    for field, type_field in _PACKETS:
        if type_field in data and isinstance(data.get(type_field), str | None):
            data[field] = decode_packet(data.get(field), data.pop(type_field))
    if "metadata" in data and not isinstance(data["metadata"], dict | None):
        data["metadata"] = {"value": data["metadata"]}
    try:
        return _validated(data)
    except ValidationError as exc:
        raise _input_error(exc, where) from None


def _rest_fields(data: dict[str, Any]) -> None:
    """`environment` from runs.list's `env`, `task.version` from `version` (module doc)."""
    env, version = data.get("env"), data.get("version")
    if "environment" not in data and isinstance(env, dict) and _text(env.get("name")):
        data["environment"] = {"id": env.get("id"), "slug": env["name"]}
    if "task" not in data and _text(version):
        data["task"] = {"id": data.get("taskIdentifier"), "version": version}


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _validated(data: dict[str, Any]) -> Run:
    try:
        return Run.model_validate(data)
    except ValidationError as exc:
        dated = dates_from_iso(data, exc)
        if dated is None:
            raise
    return Run.model_validate(dated)


def _input_error(exc: ValidationError, where: str) -> InputError:
    err = exc.errors(include_input=False, include_url=False)[0]
    return InputError(field_path(where, *err["loc"]), input_message(err))
