"""The status vocabulary as TRIGGER.md §1.3 tables it: each raw TaskRun status of a Realtime
row, its public name today and its v3 name; and the SDK's `isFailed` & co. of each status.
Mutation testing found most of these entries free to change with no test failing."""

from __future__ import annotations

from typing import Any

import pytest

from relay.formats.electric import parse_raw_run
from relay.statuses import add_status_flags, normalise_status

# raw (schema.prisma) -> (today's SDK, SDK <= 4.0.0-v4-beta.23 / v3)
RAW = {
    "DELAYED": ("DELAYED", "DELAYED"),
    "PENDING": ("QUEUED", "QUEUED"),
    "PENDING_VERSION": ("PENDING_VERSION", "PENDING_VERSION"),
    "WAITING_FOR_DEPLOY": ("PENDING_VERSION", "WAITING_FOR_DEPLOY"),
    "DEQUEUED": ("DEQUEUED", "DEQUEUED"),
    "EXECUTING": ("EXECUTING", "EXECUTING"),
    "RETRYING_AFTER_FAILURE": ("EXECUTING", "REATTEMPTING"),
    "PAUSED": ("WAITING", "FROZEN"),
    "WAITING_TO_RESUME": ("WAITING", "FROZEN"),
    "COMPLETED_SUCCESSFULLY": ("COMPLETED", "COMPLETED"),
    "COMPLETED_WITH_ERRORS": ("FAILED", "FAILED"),
    "INTERRUPTED": ("FAILED", "INTERRUPTED"),
    **{same: (same, same) for same in ("CANCELED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED")},
    "TIMED_OUT": ("TIMED_OUT", "TIMED_OUT"),
}


@pytest.mark.parametrize(("raw", "names"), RAW.items())
def test_a_raw_row_reads_as_today_s_sdk_names_it_keeping_its_v3_name(
    raw: str, names: tuple[str, str]
) -> None:
    today, v3 = names
    run = parse_raw_run({"friendlyId": "run_x", "taskIdentifier": "t", "status": raw})
    assert (run.status, run.v3_status or run.status) == (today, v3)


FAILED = {"isFailed", "isCompleted"}
# status -> the flags true of it (booleanHelpersFromRunStatus, on today's name)
FLAGS = {
    "PENDING_VERSION": {"isQueued"},
    "QUEUED": {"isQueued"},
    "DELAYED": {"isQueued"},
    "WAITING_FOR_DEPLOY": {"isQueued"},  # v3 names read as today's
    "DEQUEUED": {"isExecuting"},
    "EXECUTING": {"isExecuting"},
    "REATTEMPTING": {"isExecuting"},
    "WAITING": {"isWaiting"},
    "FROZEN": {"isWaiting"},
    "COMPLETED": {"isCompleted", "isSuccess"},
    "CANCELED": {"isCancelled"},
    **dict.fromkeys(["FAILED", "CRASHED", "SYSTEM_FAILURE", "EXPIRED", "TIMED_OUT"], FAILED),
    "INTERRUPTED": FAILED,
    "SUSPENDED": set(),  # one relay does not know has none
}


@pytest.mark.parametrize(("status", "flags"), FLAGS.items())
def test_a_run_without_the_sdk_s_flags_gets_them_from_its_status(
    status: str, flags: set[str]
) -> None:
    data: dict[str, Any] = {"status": status}
    add_status_flags(data)
    assert {flag for flag, value in data.items() if value is True} == flags
    assert len(data) == 8  # all seven flags, each a boolean


def test_flags_a_run_carries_are_kept() -> None:
    data: dict[str, Any] = {"status": "FAILED", "isFailed": False}
    add_status_flags(data)
    assert data["isFailed"] is False and data["isCompleted"] is True


def test_a_run_without_a_status_gets_no_flags() -> None:
    data: dict[str, Any] = {"status": None}
    add_status_flags(data)
    assert data == {"status": None}


@pytest.mark.parametrize(
    ("given", "read"),
    [
        (" failed\n", "FAILED"),
        ("frozen", "FROZEN"),  # a v3 name too
        ("completed_successfully", "COMPLETED"),
        ("weird", "weird"),  # unknown: kept as it came
    ],
)
def test_a_status_is_read_in_any_case_with_blanks_around_it(given: str, read: str) -> None:
    assert normalise_status(given) == read


TODAY = ["PENDING_VERSION", "QUEUED", "DEQUEUED", "EXECUTING", "WAITING", "COMPLETED"]
TODAY += ["CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE", "DELAYED", "EXPIRED", "TIMED_OUT"]
V3 = ["WAITING_FOR_DEPLOY", "REATTEMPTING", "FROZEN", "INTERRUPTED"]


@pytest.mark.parametrize("status", TODAY + V3)
def test_every_public_status_of_either_vocabulary_is_read_in_lower_case(status: str) -> None:
    """TRIGGER.md 1.3's 13 public statuses of today and the 4 of v3 only."""
    assert normalise_status(status.lower()) == status
