"""What a silence mutes (pure, time passed in): fits compares matchers with a notification's
fields, silenced_by finds the first active silence that mutes it, and SilenceIndex files the
silences so that a send looks only at those that may fit it."""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from relay.model import Silence
from relay.statuses import FAILURE_STATUSES, normalise_status


def fits(matchers: Mapping[str, tuple[str, ...]], fields: Mapping[str, Any]) -> bool:
    """Whether every matcher fits the fields (rule, channel, task, tags, status, event);
    matchers on a field that is absent from `fields` are ignored."""
    return all(
        _fits_one(key, wanted, fields)
        for key, wanted in matchers.items()
        if key in fields or (key == "tag" and "tags" in fields)
    )


def _fits_one(key: str, wanted: tuple[str, ...], fields: Mapping[str, Any]) -> bool:
    if key == "task":
        task = str(fields.get("task") or "")
        return any(fnmatch.fnmatchcase(task, pattern) for pattern in wanted)
    if key == "tag":
        tags = fields.get("tags") or ()
        return any(tag in tags for tag in wanted)
    if key == "status":
        statuses = _statuses(fields)
        return any(_status_fits(w, status) for w in wanted for status in statuses)
    return str(fields.get(key) or "") in wanted


def _statuses(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The run's normalised status, and its v3 name if a Realtime row gave one (`v3Status`)."""
    status = normalise_status(str(fields.get("status") or ""))
    v3 = fields.get("v3Status")
    return (status, v3) if isinstance(v3, str) and v3 else (status,)


def _status_fits(wanted: str, status: str) -> bool:
    """Whether a silence's status `wanted` names the run's normalised `status`: in any case, as
    a rule's status does (`new_issue` is an error event's NEW_ISSUE), or exactly as written (a
    status relay does not know is kept as it came)."""
    if wanted.lower() == "failure":
        return status in FAILURE_STATUSES
    return status in (normalise_status(wanted), normalise_status(wanted.strip().upper()))


def silenced_by(
    silences: Iterable[Silence] | SilenceIndex,
    now: float,
    *,
    rule: str,
    channel: str,
    task: str,
    tags: Sequence[str],
    status: str,
    event: str,
    v3_status: str | None = None,
) -> str | None:
    """The id of the first active silence that mutes this notification, else None. Of an
    index, only the silences that may fit it are looked at. `v3_status`: a Realtime row's
    status in the v3 vocabulary (Run.v3_status), which a silence's status fits as well."""
    if isinstance(silences, SilenceIndex) and not silences:
        return None  # the usual case, on each send and intake: nothing to look at, nothing built
    fields = {
        "rule": rule,
        "channel": channel,
        "task": task,
        "tags": tags,
        "status": status,
        "v3Status": v3_status,
        "event": event,
    }
    if isinstance(silences, SilenceIndex):
        silences = silences.candidates(fields)
    for silence in silences:
        if silence.state(now) == "active" and fits(silence.matchers, fields):
            return silence.id
    return None


class SilenceIndex:
    """The silences of one reload, each filed under one matcher a notification must fit (a
    tag it carries, the literal start of its task's glob, its rule, channel, status or event),
    the one fewest other silences share, so that a send looks only at the silences that may
    fit it: 1,000 silences each checked at every send cost ~2.5 ms a send, on the event loop,
    and 10,000 filed by rule or channel alone (a tag or a task beside it) took ingest from 700
    updates a second to 10. Silences with none of these (a task glob that starts with a
    wildcard) are looked at by every send. The first silence that mutes is the same as
    silenced_by over them all would find."""

    KEYS = ("tag", "task", "rule", "channel", "status", "event")

    def __init__(self, silences: Sequence[Silence]) -> None:
        self.silences = list(silences)
        self._filed: dict[str, dict[str, list[int]]] = {key: {} for key in self.KEYS}
        self._rest: list[int] = []  # positions of the silences filed under no matcher
        filings = [_filings(silence.matchers) for silence in self.silences]
        shared = Counter(
            (key, value) for filing in filings for key, values in filing for value in values
        )
        for n, filing in enumerate(filings):
            if not filing:
                self._rest.append(n)
                continue
            key, values = filing[0] if len(filing) == 1 else _least_shared(filing, shared)
            for value in values:
                self._filed[key].setdefault(value, []).append(n)
        self._starts = sorted({len(start) for start in self._filed["task"]})

    def __bool__(self) -> bool:
        return bool(self.silences)

    def candidates(self, fields: Mapping[str, Any]) -> list[Silence]:
        """The silences that may fit a notification of these fields (those of silenced_by),
        in their order."""
        task = str(fields.get("task") or "")
        wanted: dict[str, Collection[str]] = {
            "tag": {tag for tag in fields.get("tags") or () if isinstance(tag, str)},
            "task": [task[:n] for n in self._starts if n <= len(task)],
            "rule": [str(fields.get("rule") or "")],
            "channel": [str(fields.get("channel") or "")],
            "status": _statuses(fields),  # as _fits_one compares them: a blank one too
            "event": [str(fields.get("event") or "")],
        }
        found = [self._rest]
        found += (
            self._filed[key].get(value, []) for key, values in wanted.items() for value in values
        )
        # positions ascending in each list; a silence filed under two tags the run has, two
        # starts of its task, or both names of its status (FAILED, INTERRUPTED), is in two
        merged = heapq.merge(*(one for one in found if one))
        return [self.silences[n] for n, _ in itertools.groupby(merged)]


Filing = list[tuple[str, set[str]]]  # (matcher, the values a silence is filed under)


def _filings(matchers: Mapping[str, tuple[str, ...]]) -> Filing:
    """The matchers a silence may be filed under, with their values: a notification it fits
    has one of each (of a task's globs, their literal starts; none when one of them starts
    with a wildcard)."""
    return [
        (key, values)
        for key in SilenceIndex.KEYS
        if key in matchers and (values := _exact_values(key, matchers[key]))
    ]


def _least_shared(filing: Filing, shared: Counter[tuple[str, str]]) -> tuple[str, set[str]]:
    """The matcher whose values the fewest silences are filed under (a tag of its own rather
    than the rule a thousand others name)."""
    return min(filing, key=lambda one: sum(shared[one[0], value] for value in one[1]))


_LITERAL_START = re.compile(r"[^*?\[]*")  # of a glob: what every task it matches starts with


def _exact_values(key: str, wanted: tuple[str, ...]) -> set[str]:
    """The values of field `key` that matcher values `wanted` fit (a status: normalised; a
    task: the starts of the globs, none if one may start with anything)."""
    if key == "task":
        starts = {_LITERAL_START.match(glob).group() for glob in wanted}  # type: ignore[union-attr]
        return set() if "" in starts else starts
    if key != "status":
        return set(wanted)
    values: set[str] = set()
    for one in wanted:
        if one.lower() == "failure":
            values.update(FAILURE_STATUSES)
        else:
            values.update((normalise_status(one), normalise_status(one.strip().upper())))
    return values
