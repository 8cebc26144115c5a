"""The code a raw TaskRunError really means, as Trigger.dev's SDK reads it (taskRunErrorEnhancer).

A raw error keeps its richer message, but its code is rewritten the way the SDK does before
anyone sees it (TRIGGER.md §1.5): a process that exited on SIGKILL was most likely out of
memory. So a rule or a template reading `error.code` sees the same code whether the run came as
an SDK object, a raw Realtime row or an alert webhook.

The BUILT_IN_ERRORs the SDK turns into internal ones (an UnexpectedExitError of code -1, a
thrown OutOfMemoryError, ffmpeg killed by SIGKILL) become INTERNAL_ERROR with that code; their
name, message and stack trace stay (but the OutOfMemoryError's placeholder message).
"""

from __future__ import annotations

from typing import Any

EXITED = "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE"
OOM_KILLED = "TASK_PROCESS_OOM_KILLED"
# The signal in the first 100 characters of the message → the code the SDK reports, in the
# order the SDK looks for them (findSignalInMessage).
_BY_SIGNAL = (
    ("SIGTERM", "TASK_PROCESS_SIGTERM"),
    ("SIGSEGV", "TASK_PROCESS_SIGSEGV"),
    ("SIGKILL", "TASK_PROCESS_MAYBE_OOM_KILLED"),
    ("SIGABRT", "TASK_PROCESS_MAYBE_OOM_KILLED"),
)
MANUAL_OOM = "MANUAL_OOM_KILL_ERROR"  # the message of the SDK's OutOfMemoryError
UNEXPECTED_EXIT = "Unexpected exit with code -1"
FFMPEG_KILLED = "ffmpeg was killed with signal SIGKILL"


def enhanced(error: dict[str, Any]) -> dict[str, Any]:
    """`error` with the SDK's code for it; other errors (and other types) are returned as-is."""
    if error.get("type") == "BUILT_IN_ERROR":
        return _built_in(error)
    if error.get("type") != "INTERNAL_ERROR":
        return error
    message = error.get("message")
    if message == MANUAL_OOM:
        return {**error, "code": OOM_KILLED}
    if error.get("code") != EXITED:
        return error
    code = _signal_code(message)
    return error if code is None else {**error, "code": code}


def _built_in(error: dict[str, Any]) -> dict[str, Any]:
    name, message = error.get("name"), error.get("message")
    if message == MANUAL_OOM:  # the placeholder says nothing: the code's hint reads better
        kept = {k: v for k, v in error.items() if k != "message"}
        return {**kept, "type": "INTERNAL_ERROR", "code": OOM_KILLED}
    if name == "Error" and message == FFMPEG_KILLED:
        return {**error, "type": "INTERNAL_ERROR", "code": OOM_KILLED}
    if name == "UnexpectedExitError" and str(message).startswith(UNEXPECTED_EXIT):
        code = _signal_code(error.get("stackTrace")) or EXITED
        return {**error, "type": "INTERNAL_ERROR", "code": code}
    return error


def _signal_code(text: Any) -> str | None:
    head = text[:100] if isinstance(text, str) else ""
    for signal, code in _BY_SIGNAL:
        if signal in head:
            return code
    return None
