"""The vocabularies of a run's status and of events: Trigger.dev's public statuses today and in
v3, the raw database statuses of Realtime rows and their public names, the `failure`
shorthand, the events a run update can be and the statuses each carries.
"""

from __future__ import annotations

from typing import Any

# Today's public RunStatus (packages/core schemas/api.ts).
CURRENT_STATUSES = frozenset(
    {
        "PENDING_VERSION",
        "QUEUED",
        "DEQUEUED",
        "EXECUTING",
        "WAITING",
        "COMPLETED",
        "CANCELED",
        "FAILED",
        "CRASHED",
        "SYSTEM_FAILURE",
        "DELAYED",
        "EXPIRED",
        "TIMED_OUT",
    }
)
# The v3 vocabulary still documented on trigger.dev/docs/realtime/run-object.
V3_STATUSES = frozenset({"WAITING_FOR_DEPLOY", "REATTEMPTING", "FROZEN", "INTERRUPTED"})
# Raw TaskRun database statuses (Realtime rows) whose public name differs.
RAW_STATUS_MAP = {
    "COMPLETED_WITH_ERRORS": "FAILED",
    "COMPLETED_SUCCESSFULLY": "COMPLETED",
    "PENDING": "QUEUED",
    "RETRYING_AFTER_FAILURE": "EXECUTING",
    "PAUSED": "WAITING",
    "WAITING_TO_RESUME": "WAITING",
}
# A raw row is today's platform: where the raw name is also a v3 status, today's SDK maps it
# (apiStatusFromRunStatus), so a rule on FAILED matches a run whatever shape it came in.
ROW_STATUS_MAP = {
    **RAW_STATUS_MAP,
    "INTERRUPTED": "FAILED",
    "WAITING_FOR_DEPLOY": "PENDING_VERSION",
}
# The v3 name of a raw status where today's differs (TRIGGER.md 1.3, the SDK up to
# 4.0.0-v4-beta.23): a row keeps it as `v3Status`, so a rule in either vocabulary matches it.
ROW_V3_STATUS = {
    "INTERRUPTED": "INTERRUPTED",
    "WAITING_FOR_DEPLOY": "WAITING_FOR_DEPLOY",
    "RETRYING_AFTER_FAILURE": "REATTEMPTING",
    "PAUSED": "FROZEN",
    "WAITING_TO_RESUME": "FROZEN",
}
KNOWN_STATUSES = CURRENT_STATUSES | V3_STATUSES
# The `failure` shorthand of rules.
FAILURE_STATUSES = frozenset({"FAILED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", "INTERRUPTED"})
# The SDK's flags of a run (booleanHelpersFromRunStatus, runStream.ts), on today's status.
_FAILED_FLAG = frozenset({"FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT"})
STATUS_FLAGS: dict[str, frozenset[str]] = {
    "isQueued": frozenset({"PENDING_VERSION", "QUEUED", "DELAYED"}),
    "isWaiting": frozenset({"WAITING"}),
    "isExecuting": frozenset({"DEQUEUED", "EXECUTING"}),
    "isCompleted": _FAILED_FLAG | {"COMPLETED"},
    "isFailed": _FAILED_FLAG,
    "isSuccess": frozenset({"COMPLETED"}),
    "isCancelled": frozenset({"CANCELED"}),
}
# The statuses a run never leaves (TRIGGER.md 1.3: the final raw statuses, by their public
# names): the SDK's isCompleted, and a cancel, and v3's INTERRUPTED.
FINAL_STATUSES = STATUS_FLAGS["isCompleted"] | {"CANCELED", "INTERRUPTED"}
# A v3 status as today's SDK names it (the inverse of ROW_V3_STATUS), for its flags.
_V3_AS_TODAY = {
    "INTERRUPTED": "FAILED",
    "WAITING_FOR_DEPLOY": "PENDING_VERSION",
    "REATTEMPTING": "EXECUTING",
    "FROZEN": "WAITING",
}


def normalise_status(status: str) -> str:
    """Public status for any vocabulary, in any case and with blanks around it (`failed` and
    ` FAILED\\n` are FAILED, as a number or a flag in quotes is read); unknown values are kept as
    they are."""
    upper = status.strip().upper()
    if upper != status and (upper in KNOWN_STATUSES or upper in RAW_STATUS_MAP):
        status = upper
    return RAW_STATUS_MAP.get(status, status)


# What a run update can be: a run, or one of the alert webhooks turned into an event.
EVENTS = ("run", "deployment.failed", "deployment.success", "error")
# The statuses an event other than `run` can carry (Trigger.dev's deployment statuses of a
# failure or success alert, the classifications of an error-group alert).
EVENT_STATUSES = {
    "deployment.failed": frozenset({"FAILED", "TIMED_OUT", "CANCELED"}),
    "deployment.success": frozenset({"DEPLOYED"}),
    "error": frozenset({"NEW_ISSUE", "REGRESSION", "UNIGNORED"}),
}


def add_status_flags(data: dict[str, Any]) -> None:
    """Give a run object the SDK's `isFailed` & co. it lacks, from its (normalised) status: a
    run posted by hand or by an alert webhook carries none, and `when: run.isFailed` reads them
    as the SDK's run has them. Flags the object carries are kept; an unknown status has none."""
    status = data.get("status")
    if not isinstance(status, str):
        return
    today = _V3_AS_TODAY.get(status, status)
    for flag, among in STATUS_FLAGS.items():
        data.setdefault(flag, today in among)
