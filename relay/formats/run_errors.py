"""The code a raw TaskRunError really means, as Trigger.dev's SDK reads it (taskRunErrorEnhancer).

A raw INTERNAL_ERROR keeps its richer message, but its code is rewritten the way the SDK does
before anyone sees it (TRIGGER.md §1.5): a process that exited on SIGKILL was most likely out of
memory. So a rule or a template reading `error.code` sees the same code whether the run came as
an SDK object, a raw Realtime row or an alert webhook.
"""

from __future__ import annotations

from typing import Any

EXITED = "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"
# The signal in the first 100 characters of the message → the code the SDK reports.
_BY_SIGNAL = (
    ("SIGKILL", "TASK_PROCESS_MAYBE_OOM_KILLED"),
    ("SIGABRT", "TASK_PROCESS_MAYBE_OOM_KILLED"),
    ("SIGTERM", "TASK_PROCESS_SIGTERM"),
    ("SIGSEGV", "TASK_PROCESS_SIGSEGV"),
)
MANUAL_OOM = "MANUAL_OOM_KILL_ERROR"


def enhanced(error: dict[str, Any]) -> dict[str, Any]:
    """`error` with the SDK's code for it; other errors (and other types) are returned as-is."""
    if error.get("type") != "INTERNAL_ERROR":
        return error
    message = error.get("message")
    head = message[:100] if isinstance(message, str) else ""
    if message == MANUAL_OOM:
        return {**error, "code": "TASK_PROCESS_OOM_KILLED"}
    if error.get("code") != EXITED:
        return error
    for signal, code in _BY_SIGNAL:
        if signal in head:
            return {**error, "code": code}
    return error
