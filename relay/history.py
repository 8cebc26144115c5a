"""Notification history: queries from user input and the public view of a notification."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from relay.durations import NOT_A_DURATION, parse_duration
from relay.errors import InputError
from relay.grouping import digest_id
from relay.model import ALERT_DEAD, Notification
from relay.run_values import iso
from relay.silences.listing import parse_limit
from relay.silences.shapes import parse_time
from relay.store import HistoryQuery, Store

STATES = ("pending", "sent", "dead", "muted")


PARAMS = ("run_id", "rule", "channel", "state", "since", "before", "limit")


async def find_history(store: Store, params: Mapping[str, str], now: float) -> list[Notification]:
    """The notifications `params` ask for (`history_query`), newest first; `before` names the
    last notification of the page before, so that pages of up to 10,000 go back in time
    without a gap or a repeat (notifications created in the same millisecond included)."""
    query = history_query(params, now)
    before = params.get("before")
    if before is not None:
        cursor = await store.get(before)
        if cursor is None:
            raise InputError("before", "no notification with this id (or deleted by retention)")
        query = replace(query, after=(cursor.created_at, cursor.id))
    return await store.history(query)


def history_query(params: Mapping[str, str], now: float) -> HistoryQuery:
    """A HistoryQuery from query parameters or CLI flags: run_id, rule, channel, state, since
    (a duration back from now, like 1h, or an ISO time) and limit; `before` is for
    `find_history`."""
    refuse_unknown(params, PARAMS)
    state = params.get("state")
    if state is not None and state not in STATES:
        raise InputError("state", f"use one of {', '.join(STATES)}")
    return HistoryQuery(
        run_id=params.get("run_id"),
        rule=params.get("rule"),
        channel=params.get("channel"),
        state=state,
        since=_since(params.get("since"), now),
        limit=_limit(params.get("limit")),
    )


def refuse_unknown(params: Iterable[str], known: Iterable[str]) -> None:
    """An InputError naming the first parameter (by name) that is not one of `known`: a typo
    answered as if the parameter were absent reads as an empty or unfiltered answer."""
    unknown = set(params) - set(known)
    if unknown:
        raise InputError(sorted(unknown)[0], "unknown parameter")


def _since(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    try:
        return now - parse_duration(value)
    except ValueError as exc:
        refused = str(exc)
    try:
        return parse_time(value, "since")
    except InputError as exc:
        if not refused.startswith(("expected", NOT_A_DURATION)):  # a duration: negative, 11y
            raise InputError("since", refused) from None
        if not exc.message.startswith("expected"):  # a time: before year 1 in UTC
            raise
        raise InputError(  # both forms, not "expected an ISO-8601 time" alone
            "since", "expected a duration back (1h, 2d) or an ISO-8601 time (2026-11-28T18:00:00Z)"
        ) from None


def _limit(value: str | None) -> int:
    return 200 if value is None else parse_limit(value)


def _when(ts: float | None) -> str | None:
    return None if ts is None else iso(datetime.fromtimestamp(ts, UTC))


def notification_view(n: Notification) -> dict[str, Any]:
    """The public face of a notification (API and `relay history --json`)."""
    return {
        "id": n.id,
        "run_id": n.run_id,
        "rule": n.rule,
        "channel": n.channel,
        "state": n.state,
        "reason": n.reason,
        "error": n.last_error,
        "attempts": n.attempts,
        "created_at": _when(n.created_at),
        "next_attempt_at": _when(n.not_before) if n.state == "pending" else None,
        "group": n.group_key,
        "template": n.template,
    }


def event_view(event: Mapping[str, Any]) -> dict[str, Any]:
    return {**event, "at": _when(event.get("at"))}


def failure(reason: str | None, error: str | None) -> str:
    """`reason: error`, once: delivery records the error with its reason in front already."""
    reason, error = reason or "", error or ""
    return error if error.startswith(reason) else f"{reason}: {error}"


DLQ_LISTED = 1000  # `relay dlq list` and GET /v1/dlq show the newest this many

DEAD_LETTER_FIELDS = (
    "id",
    "run_id",
    "rule",
    "channel",
    "reason",
    "error",
    "attempts",
    "created_at",
)


def dead_letter_views(rows: Sequence[Notification]) -> list[dict[str, Any]]:
    """The public face of dead letters (GET /v1/dlq, `relay dlq list --json`): the fields of
    each one's notification_view, so that its times read as the rest of the API's (ISO-8601,
    UTC), and `digest`: {id, notifications} for the rows among `rows` of one digest that died
    together (the rows of a group marked dead at once: one message carrying their runs), else
    None. A digest's rows past `rows` (a listing's limit) are not counted."""
    together: dict[tuple[str, float], list[str]] = {}
    for n in rows:
        if n.group_key is not None:
            together.setdefault((n.group_key, n.updated_at), []).append(n.id)
    digests = {
        ident: {"id": digest_id(ids), "notifications": len(ids)}
        for ids in together.values()
        if len(ids) > 1
        for ident in ids
    }
    views = []
    for n in rows:
        view = notification_view(n)
        views.append({**{k: view[k] for k in DEAD_LETTER_FIELDS}, "digest": digests.get(n.id)})
    return views


NARROWING = ("channel", "rule", "since")  # what narrows a replay of every dead notification
DEAD_PAGE = 10_000


def dead_query(narrow: Mapping[str, str], now: float) -> HistoryQuery:
    """The dead notifications of a channel, rule or time (NARROWING), as `relay history
    --state dead` with those flags lists them, DEAD_PAGE a page; InputError as history's."""
    return history_query({**narrow, "state": "dead", "limit": str(DEAD_PAGE)}, now)


async def dead_ids(store: Store, query: HistoryQuery) -> list[str]:
    """The ids of every notification `query` finds, read a page at a time: a narrowed replay
    (`relay dlq replay --all --channel C`, POST /v1/dlq/replay `{"channel": C}`), the receiver
    fixed while the others' stay dead, as Svix recovers one endpoint's failed messages."""
    ids: list[str] = []
    while True:
        rows = await store.history(query)
        ids += [n.id for n in rows]
        if len(rows) < query.limit:
            return ids
        query = replace(query, after=(rows[-1].created_at, rows[-1].id))


def digest_hint(ids: Sequence[str], listing: str) -> str:
    """What to add when a replay of `ids` moved nothing and one of them is a digest's `dgs_` id
    (its `webhook-id`, what a receiver logs), which names no row: the dead letters are its
    notifications, which `listing` shows."""
    digest = next((i for i in ids if i.startswith("dgs_")), None)
    if digest is None:
        return ""
    return (
        f": {digest} is a digest's id; replay it by one of its notifications"
        f" (the ntf_ ids {listing} shows)"
    )


def digest_id_note(ident: str, listing: str) -> str:
    """What to add when no notification has the id `ident` and it is a digest's `dgs_` id (its
    `webhook-id`, what a receiver logs): its runs' notifications, which `listing` lists."""
    if not ident.startswith("dgs_"):
        return ""
    return (
        ": it is a digest's id (its webhook-id); each of its runs has a notification of its"
        f" own, an ntf_ id that {listing} lists"
    )


def explain(n: Notification) -> str:
    """One line answering "why was this (not) sent?"."""
    if n.state == "sent":
        return f"sent after {n.attempts} attempt(s)"
    if n.state == "muted":
        return f"muted by {n.reason or 'a silence'}: recorded, not sent"
    if n.state == "dead" and n.reason == ALERT_DEAD:
        return f"held, not sent: {n.last_error}"
    if n.state == "dead":
        return f"dead after {n.attempts} attempt(s): {failure(n.reason, n.last_error)}"
    if n.attempts:
        last = failure(n.reason, n.last_error)
        due = _when(n.not_before)
        return f"retrying ({n.attempts} attempt(s) so far, last: {last}; next try at {due})"
    return "pending: waiting to be sent" + (" with its group's digest" if n.group_key else "")
