"""A rule's schema in the YAML file: `RuleConfig`, its `match` conditions (status, task glob or
regex, tags, thresholds, metadata) and the checks of each alone. Compiling the rules for
matching is relay.rules; the checks across rules and channels are relay.config_refs.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import regex
from annotated_types import MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from relay.config_base import CONTROL_CHARS, Strict
from relay.durations import Duration, PositiveDuration, more_than_zero
from relay.regexes import PatternError, compile_regex
from relay.statuses import EVENTS

_Model = TypeVar("_Model", bound=BaseModel)


def _not_empty(model: _Model) -> _Model:
    """`model` if the file gave any of its keys a value; `{}` (or `{gt: }`, a value left out:
    null) is a problem naming the keys it takes."""
    if all(getattr(model, name) is None for name in model.model_fields_set):
        raise ValueError(f"empty: give at least one of {', '.join(type(model).model_fields)}")
    return model


class Threshold(Strict):
    # finite: `.nan` compares false with every value (a rule that never fires), `.inf` likewise
    gt: float | None = Field(default=None, allow_inf_nan=False)
    gte: float | None = Field(default=None, allow_inf_nan=False)
    lt: float | None = Field(default=None, allow_inf_nan=False)
    lte: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("gt", "gte", "lt", "lte", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return value

    @model_validator(mode="after")
    def _satisfiable(self) -> Threshold:
        """`{gt: 500, lt: 100}` holds for no value: a rule that silently never fires; `{}`
        holds for every run, most likely a bound left out."""
        _not_empty(self)
        lows = [(v, not inclusive) for v, inclusive in ((self.gt, False), (self.gte, True))]
        highs = [(v, inclusive) for v, inclusive in ((self.lt, False), (self.lte, True))]
        low = max(((v, x) for v, x in lows if v is not None), default=None)  # tightest
        high = min(((v, x) for v, x in highs if v is not None), default=None)
        if low is None or high is None or low[0] < high[0]:
            return self
        if low[0] == high[0] and not low[1] and high[1]:  # gte == lte: that one value
            return self
        raise ValueError("no value is above the lower bound and below the upper one")


def one_or_many(value: Any) -> Any:
    """One name where a list of them goes is a list of one: `notify: pager`, `status: FAILED`,
    `any: env:prod` (as Alertmanager's `receiver: pager` names one)."""
    return [value] if isinstance(value, str) else value


Names = Annotated[list[str], BeforeValidator(one_or_many)]
SomeNames = Annotated[list[str], MinLen(1), BeforeValidator(one_or_many)]


class TagMatch(Strict):
    # `any: []` would hold for no run: refused (as `status: []` and `task: []`) rather than
    # read one way or the other; `all: []` and `none: []` hold for every run, as they say
    any: SomeNames | None = None
    all: Names | None = None
    none: Names | None = None

    @model_validator(mode="before")
    @classmethod
    def _which_kind(cls, value: Any) -> Any:
        """`tags: [env:prod]` (or one tag) says neither any nor all: name the three forms rather
        than a bare `expected a mapping`."""
        if isinstance(value, list | str):
            raise ValueError(
                "expected `any`, `all` or `none` with a list of tags: `tags: {any: [env:prod]}`"
                " (one of them), `{all: [...]}` (every one), `{none: [...]}` (not one)"
            )
        return value

    @field_validator("any", "all")
    @classmethod
    def _no_empty_tag(cls, value: list[str] | None) -> list[str] | None:
        # `any: ["${TAG:-}"]` left unset: a condition only a run tagged "" meets, silently
        if any(not tag for tag in value or ()):
            raise ValueError("an empty tag: only a run tagged with empty text would match")
        return value

    @model_validator(mode="after")
    def _something(self) -> TagMatch:
        """`tags: {}` holds for every run, most likely a condition left out."""
        return _not_empty(self)


def _scalar(value: Any) -> Any:
    """A metadata value to compare with: one problem naming what to write, not one per type
    of the union (`.str: Input should be a valid string`, `.int: …`) for a mapping or list."""
    if isinstance(value, dict):
        raise ValueError(
            "expected text, a number, true/false or null; a nested key is written as a dotted"
            " path (`customer.tier: enterprise`)"
        )
    if isinstance(value, list):
        raise ValueError("expected text, a number, true/false or null (one value to equal)")
    return value


Scalar = Annotated[str | int | float | bool | None, BeforeValidator(_scalar)]


def _known_event(value: str) -> str:
    if value not in EVENTS:
        raise ValueError(f"unknown event; use one of {', '.join(EVENTS)}")
    return value


Event = Annotated[str, AfterValidator(_known_event)]


class MatchConfig(Strict):
    # one event or several (any of them): the first key, as `status` reads its vocabulary
    event: Annotated[list[Event], MinLen(1), BeforeValidator(one_or_many)] = ["run"]
    status: SomeNames | None = None  # `[]`: a rule that never fires
    task: SomeNames | None = None  # `[]` used to match every task
    task_regex: str | None = None
    tags: TagMatch | None = None
    cost_cents: Threshold | None = None
    base_cost_cents: Threshold | None = None
    duration_ms: Threshold | None = None
    is_test: bool | None = None
    metadata: dict[str, Scalar] | None = None

    @field_validator("task")
    @classmethod
    def _no_empty_glob(cls, value: list[str] | None) -> list[str] | None:
        # `task: ${TASK:-}` left unset: a glob only a run without a task matches, silently
        if any(not glob for glob in value or ()):
            raise ValueError("an empty glob matches only a run without a task; `*` matches all")
        return value

    @field_validator("event", mode="before")
    @classmethod
    def _one_event(cls, value: Any) -> Any:
        """`event: deploy` is named at `event`, one in a list at its place (`event[1]`)."""
        return _known_event(value) if isinstance(value, str) else value

    @field_validator("task_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_task_regex(value)
        return value


def compile_task_regex(source: str) -> regex.Pattern[str]:
    """A rule's `task_regex`, compiled by the `regex` module, which can stop a match that
    backtracks for ever (`re` cannot). ValueError when invalid or too large (relay.regexes):
    `a{99999999999}` was an OverflowError traceback in relay check."""
    try:
        return compile_regex(source)
    except PatternError as exc:
        raise ValueError(f"invalid regex: {exc}") from None


class RuleConfig(Strict):
    name: str = Field(min_length=1, max_length=200)
    match: MatchConfig = MatchConfig()
    when: str | None = Field(default=None, max_length=4000)
    notify: SomeNames
    template: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    continue_: bool = Field(default=False, alias="continue")
    group_by: Names | None = None
    group_wait: Duration | None = None
    # 0 is refused, as Alertmanager does ("group_interval cannot be zero"): no least time
    # between two digests is no digest, every burst a message of its own `group_wait` later
    group_interval: PositiveDuration | None = None
    repeat_interval: PositiveDuration | None = None  # its own fix said: _repeat_interval
    mute_time_intervals: list[str] | None = None
    active_time_intervals: list[str] | None = None
    # when a run this rule notified about later completes: resolve / update / tell the channels
    update_on_recovery: bool = False

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        """A rule name is stored with the runs it fired for (joined with a control character),
        and written in logs and messages: a control character in it broke that record."""
        if CONTROL_CHARS.search(value):
            raise ValueError("a rule name cannot contain control characters")
        return value

    @field_validator("repeat_interval", mode="before")
    @classmethod
    def _repeat_interval(cls, value: Any) -> Any:
        """0 was accepted (and read as group_interval); Alertmanager refuses it ("repeat_interval
        cannot be zero"). The fix says what 0 was most likely meant to do."""
        fix = ": group_interval's value (5m unless set) closes a group soonest"
        return value if value is None else more_than_zero(value, fix)

    @field_validator("group_by")
    @classmethod
    def _every_run_alone(cls, value: list[str] | None) -> list[str] | None:
        twice = [path for i, path in enumerate(value or ()) if path in (value or ())[:i]]
        if twice:  # as Alertmanager refuses: "duplicated label in group_by" (`...` too)
            raise ValueError(f"{twice[0]!r} is listed twice")
        if value is not None and "..." in value and len(value) > 1:  # as Alertmanager refuses
            raise ValueError("`...` (every run a group of its own) cannot go with other paths")
        return value
