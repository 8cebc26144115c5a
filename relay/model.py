"""The run and what relay decides and keeps about it: its state between updates, matches,
group windows, silences, and the notification that leaves the outbox.

A Run is the Trigger.dev Realtime run object (camelCase, as the SDK yields it) after
normalisation: timestamps are aware UTC datetimes, the status is a public status, and fields
relay does not know are kept as extra attributes. Status vocabularies are relay.statuses; how
a run's values are read, relay.run_values.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
)
from pydantic_core import PydanticCustomError

from relay.run_values import Date, Flag, Integer, Number, Text, from_iso, iso


def dates_from_iso(data: dict[str, Any], exc: ValidationError) -> dict[str, Any] | None:
    """`data` with the date texts pydantic refused in `exc` read by from_iso instead, so the
    same text is the same time in the SDK object as in a Realtime row (never a 400 in one);
    None when from_iso reads none of them. Only after a refusal: no cost otherwise."""
    dated = dict(data)
    for err in exc.errors(include_url=False, include_input=False):
        name = str(err["loc"][0]) if len(err["loc"]) == 1 else ""
        text = dated.get(name) if name in _DATES else None
        if isinstance(text, str):
            with contextlib.suppress(ValueError):
                dated[name] = from_iso(text)
    return None if dated == data else dated


_DATES = (
    "createdAt",
    "updatedAt",
    "expiredAt",
    "finishedAt",
    "startedAt",
    "delayedUntil",
    "queuedAt",
)


# The values only a run update carries (not an alert webhook's run: Run.measured).
MEASURES = ("durationMs", "costInCents", "baseCostInCents")

MAX_RUN_ID_CHARS = 512  # 2,048 bytes of UTF-8 at most: within a PostgreSQL index entry


def _no_nul(value: str) -> str:
    """No Trigger.dev id holds a NUL (its database cannot store one), nor can relay's
    PostgreSQL store: there `run\\0a` became `run\\ufffda`, one run with another's state."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "must not contain a NUL character (\\u0000)")
    return value


def _a_status(value: str) -> str:
    """A blank status (`""`, `" "`) is none: no rule could name it, and a run's update without
    one is not one relay can act on (an unknown word is kept: a newer Trigger.dev's)."""
    if not value.strip():
        raise PydanticCustomError("status_blank", "must not be empty")
    return value


class Run(BaseModel):
    """One Realtime run update, normalised. Unknown fields are kept (extra="allow")."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    # an empty id names no run: a 400, not an alert; nor does a huge one (Trigger.dev's are
    # ~30 characters), which PostgreSQL cannot index (2,704 bytes): a 503 retried forever
    id: Annotated[str, Field(min_length=1, max_length=MAX_RUN_ID_CHARS), AfterValidator(_no_nul)]
    taskIdentifier: Annotated[str, BeforeValidator(lambda v: "" if v is None else v)] = ""
    status: Annotated[str, AfterValidator(_a_status)]
    payload: Any = None
    output: Any = None
    createdAt: Date = None
    updatedAt: Date = None
    number: Integer = None
    durationMs: Number = 0
    costInCents: Number = 0
    baseCostInCents: Number = 0
    tags: list[str] = []
    idempotencyKey: Text = None
    expiredAt: Date = None
    ttl: Text = None
    finishedAt: Date = None
    startedAt: Date = None
    delayedUntil: Date = None
    queuedAt: Date = None
    metadata: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    isTest: Flag = False
    # relay's own: which kind of event this is (run, deployment.failed, ...).
    event: str = "run"

    @classmethod
    def of_alert(cls, fields: dict[str, Any]) -> Run:
        """The run of an alert webhook: validated, and known to carry no cost or duration
        (AlertRun: a class, not a field of the input, marks it)."""
        return AlertRun.model_validate(fields)

    @field_serializer(*_DATES)
    def _iso(self, value: datetime | None) -> str | None:
        return iso(value)

    @property
    def updated_at_ms(self) -> int | None:
        if self.updatedAt is None:
            return None
        return int(self.updatedAt.timestamp() * 1000)

    @property
    def v3_status(self) -> str | None:
        """The status in the v3 vocabulary where a Realtime row's differs from today's
        (ROW_V3_STATUS), else None."""
        extra = self.model_extra
        value = extra.get("v3Status") if extra else None
        return value if isinstance(value, str) else None

    @property
    def measured(self) -> bool:
        """Whether the update carries the run's cost and duration. A run of an alert webhook
        (Run.of_alert, and every deployment or error event) carries none (TRIGGER.md §3.2):
        its 0s are no value, so no threshold holds for it and the known ones are kept. The SDK
        object and Realtime rows read a missing cost as 0, as Trigger.dev's SDK does; a field
        of theirs named `alert` is theirs, not the webhook's mark."""
        return self.event == "run"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict in Trigger.dev's camelCase, dates as ISO strings. The MEASURES of
        an update that carries none (not `measured`) are null, unknown: a receiver read the
        0s of an alert webhook's run as "cost nothing, took no time"."""
        data = self.model_dump(mode="json", exclude_none=False)
        if not self.measured:
            data.update(dict.fromkeys(MEASURES))
        return data


class AlertRun(Run):
    """The run of an alert webhook (Run.of_alert): it carries no cost or duration.

    A subclass rather than a private attribute: `measured` is read for every rule decision,
    and a pydantic private attribute is read through a failed descriptor lookup (1.4 µs)."""

    @property
    def measured(self) -> bool:
        return False


@dataclass(frozen=True)
class RunState:
    """What the store remembers of a run between updates."""

    updated_at_ms: int | None
    status: str
    fired: frozenset[str] = frozenset()
    cost_cents: float = 0.0
    duration_ms: float = 0.0


@dataclass(frozen=True)
class Timing:
    """Group windows of a digest rule (Alertmanager's defaults)."""

    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0


@dataclass(frozen=True)
class GroupState:
    """What the store keeps of one group between runs."""

    key: str
    next_flush: float | None  # when the pending digest goes out; None: nothing pending
    last_sent: float | None
    last_seen: float


@dataclass(frozen=True)
class Match:
    """A rule decided that `channel` must hear about a run, rendered with `template`.

    `muted_by` names the silence that mutes it: it is recorded, never sent.
    """

    rule: str
    channel: str
    template: str
    muted_by: str | None = None
    group_by: tuple[str, ...] | None = None  # a digest rule: one message per group
    timing: Timing | None = None
    # a recovery: the run that made `rule` notify `channel` has completed (update_on_recovery)
    recovery: bool = False


SILENCE_MATCHERS = ("rule", "task", "tag", "status", "channel", "event")


@dataclass(frozen=True)
class Silence:
    """Mute notifications whose rule, run and channel fit every matcher, from starts_at to ends_at.

    Each matcher holds alternatives (any may fit); `task` values are globs, `tag` means the run
    carries that tag, `status` accepts the `failure` shorthand. Times are epoch seconds.
    """

    id: str
    matchers: dict[str, tuple[str, ...]]
    starts_at: float
    ends_at: float
    created_at: float
    comment: str = ""
    created_by: str = ""

    def state(self, now: float) -> str:
        if now >= self.ends_at:
            return "expired"
        return "pending" if now < self.starts_at else "active"


@dataclass(frozen=True)
class SilencePage:
    """A page of silences in creation order (Store.silences): those after `after` (the last
    one's (created_at, id) of the page before), at most `limit`. Not start order: expiring a
    pending silence moves its start (as Alertmanager's), and a page would skip or repeat it."""

    after: tuple[float, str] | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Decision:
    """The pure outcome of observing one update: the state to keep and what to enqueue."""

    state: RunState
    matches: tuple[Match, ...] = ()
    stale: bool = False


@dataclass
class Notification:
    """One outbox row: a message owed to one channel about one run."""

    id: str
    run_id: str
    rule: str
    channel: str
    template: str
    run: dict[str, Any]
    created_at: float
    attempts: int = 0
    not_before: float = 0.0
    state: str = "pending"
    reason: str | None = None
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    group_key: str | None = None  # set for digest rules: sent together with its group
    receipt: str | None = None  # what the channel said it delivered (a Slack message, a dedup key)
    # when the store last changed it, as read back (0 when not): the rows of one digest that
    # died together share it (relay.history.dead_letter_views)
    updated_at: float = field(default=0.0, compare=False)

    @property
    def resolves(self) -> str | None:
        """For a recovery: the id of the notification it resolves (sent before it)."""
        value = self.extra.get("resolves")
        return value if isinstance(value, str) else None


def notification_id(run_id: str, rule: str, channel: str) -> str:
    """Stable idempotency id: the same run, rule and channel always give the same id."""
    digest = hashlib.blake2b(f"{run_id}\x1f{rule}\x1f{channel}".encode(), digest_size=12)
    return "ntf_" + digest.hexdigest()


def subject_of(run: dict[str, Any]) -> str | None:
    """What messages about `run` are about when it is not the run itself, for channels that
    keep one thread per subject: an error-group alert is about its error group in its
    environment (errgrp_<fingerprint>:<environment id>, PagerDuty's dedup key too), so a
    regression or a later alert of the group follows the first. None: the run (its id)."""
    error, env = run.get("error"), run.get("environment")
    fingerprint = error.get("fingerprint") if isinstance(error, dict) else None
    if run.get("event") != "error" or not isinstance(fingerprint, str) or not fingerprint:
        return None
    env_id = env.get("id") if isinstance(env, dict) else None
    return f"errgrp_{fingerprint}" + (f":{env_id}" if isinstance(env_id, str) else "")


# The reason of a recovery held because its alert is dead: the channel never heard the alert,
# so there is nothing to resolve there. A dead letter, brought back by a replay of the alert.
ALERT_DEAD = "alert_dead"


def held_error(firing_id: str, *, forgotten: bool = False) -> str:
    """What a recovery held for its dead alert says, in the history and the dead letters;
    `forgotten`: retention forgot that alert while it was dead, so no replay can send it."""
    if forgotten:
        return (
            f"{ALERT_DEAD}: its alert {firing_id} was dead and is forgotten (retention), so the"
            " channel never heard it and will not: nothing to resolve"
        )
    return (
        f"{ALERT_DEAD}: its alert {firing_id} is dead, so the channel never heard it;"
        f" `relay dlq replay {firing_id}` sends the alert, then this recovery"
    )


def recovery_id(firing_id: str) -> str:
    """Stable id of the recovery of notification `firing_id`: one per firing notification."""
    digest = hashlib.blake2b(f"{firing_id}\x1frecovered".encode(), digest_size=12)
    return "ntf_" + digest.hexdigest()
