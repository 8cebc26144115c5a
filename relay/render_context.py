"""What a template sees: the context of one message (`RenderContext`) and the variables made
of it (`template_variables`): run, rule, channel, notification, dashboard_url, error (normalised
{type, code, name, message, stack}: the raw INTERNAL_ERROR code and message preferred, the
SDK's "trigger.dev internal error (CODE)" read as the code with a readable hint), summary (one
line), payload, output, metadata and, for a digest, group."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relay.filters import as_text, status_emoji, truncate_chars
from relay.unknowns import with_unknowns

_SDK_INTERNAL = re.compile(r"trigger\.dev internal error \(([A-Z0-9_]+)\)")


# The TaskRunError union (packages/core schemas/common.ts): its empty fields are empty, not a
# shape to show as JSON.
_ERROR_KINDS = frozenset({"BUILT_IN_ERROR", "CUSTOM_ERROR", "STRING_ERROR", "INTERNAL_ERROR"})


_CODE_HINTS = {
    "MAX_DURATION_EXCEEDED": "The run exceeded its maximum compute time (maxDuration).",
    "TASK_PROCESS_OOM_KILLED": "The task process ran out of memory. Try a larger machine.",
    "TASK_PROCESS_MAYBE_OOM_KILLED": (
        "The task process was killed, most likely out of memory. Try a larger machine."
    ),
    "TASK_PROCESS_SIGTERM": "The task process was terminated (SIGTERM).",
    "TASK_PROCESS_SIGSEGV": "The task process crashed with a segmentation fault (SIGSEGV).",
    "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE": "The task process exited with a non-zero code.",
    "TASK_RUN_HEARTBEAT_TIMEOUT": "No heartbeat was received from the worker in time.",
    "TASK_RUN_STALLED_EXECUTING": "The run stalled while executing.",
    "TASK_RUN_CRASHED": "The run crashed.",
    "DISK_SPACE_EXCEEDED": "The run ran out of disk space.",
    "POD_EVICTED": "The machine running the task was evicted.",
    # the codes Trigger.dev explains itself (packages/core/src/v3/errors.ts prettyInternalErrors)
    "OUTDATED_SDK_VERSION": "The task uses an outdated version of the SDK. Upgrade it.",
    "TASK_DID_CONCURRENT_WAIT": (
        "Parallel waits are not supported (e.g. Promise.all() around wait functions)."
    ),
    "RECURSIVE_WAIT_DEADLOCK": (
        "The run was triggered recursively and its task has no concurrency left: "
        "it will never execute."
    ),
}


@dataclass(frozen=True)
class RenderContext:
    run: dict[str, Any]
    rule: str
    channel: str
    channel_type: str
    notification_id: str
    dashboard_url: str | None
    group: dict[str, Any] | None = None  # digests: see relay.grouping.digest_context
    resolves: str | None = None  # recoveries: the id of the notification they resolve
    max_body_bytes: int | None = None  # the channel's, for types that have one (webhook)
    group_labels: dict[str, Any] | None = None  # a group_by rule's: the group's labels


def error_view(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, str):
        raw = {"message": raw}
    if not isinstance(raw, Mapping):
        return None
    kind, code = _field_text(raw.get("type")), _field_text(raw.get("code"))
    message = _field_text(raw.get("message"))
    if message is None and kind in ("STRING_ERROR", "CUSTOM_ERROR"):
        message = _field_text(raw.get("raw"))
    wrapped = _SDK_INTERNAL.fullmatch(message.strip()) if code is None and message else None
    if wrapped:  # the SDK keeps only "trigger.dev internal error (CODE)"
        code, kind = wrapped.group(1), kind or "INTERNAL_ERROR"
        message = _CODE_HINTS.get(code, message)
    elif code is not None and message is None:
        message = _CODE_HINTS.get(code)
    view = {
        "type": kind,
        "code": code,
        "name": _field_text(raw.get("name")),
        "message": message,
        "stack": _field_text(raw.get("stackTrace") or raw.get("stack")),
    }
    readable = message or code or view["name"]
    if not readable and kind not in _ERROR_KINDS and set(raw) - {"type", "stackTrace", "stack"}:
        view["message"] = _raw_text(raw)  # an error of a shape relay does not know
    # a type alone (`throw ""`, `throw undefined`: a STRING_ or CUSTOM_ERROR without its raw
    # text) says nothing a reader can use: no error line rather than an empty one
    return view if any(v for k, v in view.items() if k != "type") else None


def _field_text(value: Any) -> str | None:
    """One field of an error as text; a value that is no string (an object or list a hook put
    in `message`, a flag) is its JSON, never Python's repr; empty is None."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return as_text(value)
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _raw_text(raw: Mapping[str, Any]) -> str:
    """An unknown error as Trigger.dev wraps one it cannot parse (CUSTOM_ERROR, raw JSON)."""
    text = orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return truncate_chars(text, 2000)


def error_line(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    head = error.get("code") or error.get("name")
    message = (as_text(error.get("message")).strip().splitlines() or [""])[0]
    return f"{head}: {message}" if head and message else head or message


def summary(run: Mapping[str, Any], error: Mapping[str, Any] | None) -> str:
    status = as_text(run.get("status")) or "UNKNOWN"
    line = " · ".join(
        filter(None, (f"{status_emoji(status)} {status}", _what(run), as_text(run.get("id"))))
    )
    detail = error_line(error)
    return truncate_chars(f"{line}: {detail}" if detail else line, 300)


def _what(run: Mapping[str, Any]) -> str:
    """What the event is about: the task of a run (or error group), the deployed version."""
    if not str(run.get("event") or "").startswith("deployment"):
        return as_text(run.get("taskIdentifier")) or "unknown task"
    deployment = run.get("deployment")
    version = deployment.get("version") if isinstance(deployment, Mapping) else None
    return f"deployment {as_text(version)}" if version else "deployment"


CONTEXT_NAMES = frozenset(
    (
        "run",
        "rule",
        "channel",
        "notification",
        "dashboard_url",
        "error",
        "summary",
        "payload",
        "output",
        "metadata",
        "group",
    )
)


def template_variables(ctx: RenderContext) -> dict[str, Any]:
    run = ctx.run
    error = error_view(run.get("error"))
    group = ctx.group
    if group is not None and isinstance(group.get("runs"), list):
        group = {**group, "runs": [with_unknowns(r) for r in group["runs"]]}
    return {
        "run": with_unknowns(run),
        "rule": ctx.rule,
        "channel": {
            "name": ctx.channel,
            "type": ctx.channel_type,
            "max_body_bytes": ctx.max_body_bytes,
        },
        "notification": {
            "id": ctx.notification_id,
            "resolves": ctx.resolves,
            "group_labels": ctx.group_labels,
        },
        "dashboard_url": ctx.dashboard_url,
        "error": error,
        "summary": summary(run, error),
        "payload": run.get("payload"),
        "output": run.get("output"),
        "metadata": run.get("metadata"),
        "group": group,
    }
