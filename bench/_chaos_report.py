"""The chaos soak's report (bench/chaos.py) and how it tells what a kill made from a defect.

A duplicate (a second 200 for an id) is explained when relay's history holds no `sent` mark
from before it arrived (the earlier send was never recorded) and
- `kill`: the relay process group an earlier 200 for the id went to was killed before the
  duplicate (sent, not yet marked sent: the next process or replica sends it again, same id;
  `--kill parent`: its orphaned workers send, nobody marks), or
- `unread`: an earlier 200 reached a connection relay no longer held (its try had timed out as
  the sink answered: relay saw a timeout and retried).
Any other duplicate is `unexplained` — among them any sent again after relay marked it sent —
and fails the soak as a loss does.

An early retry (before the Retry-After the sink gave) is excused only when the process group
the 429 went to was killed before it and relay's history holds fewer `rate_limited` retries
before the early request than the sink gave: nothing durable knew of the wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from _chaos_relay import Kill
from _chaos_sink import ChaosSink, Ok


@dataclass
class Report:
    seed: int
    rounds: int
    updates_per_round: int
    store: str = "sqlite"
    replicas: int = 1
    kill_mode: str = "group"
    kills: int = 0
    updates_posted: int = 0
    updates_accepted: int = 0
    updates_doubled: int = 0
    post_retries: int = 0
    post_errors: int = 0
    notifications_expected: int = 0
    delivered: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicates: int = 0
    duplicate_rate: float = 0.0
    duplicates_why: dict[str, int] = field(default_factory=dict)
    oks_unattributed: int = 0  # 200s whose relay process /proc did not tell (not Linux?)
    retry_after_given: int = 0
    retry_after_violations: int = 0
    worst_violation_s: float = 0.0
    retry_after_unrecorded: int = 0
    dead: int = -1
    relay_exceptions: int = 0
    taken_over: int = 0
    heartbeat_late: int = 0
    sink_requests: int = 0
    sink_answers: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    drain_s: float = 0.0
    samples: dict[str, Any] = field(default_factory=dict)

    def tally(
        self,
        sink: ChaosSink,
        expected: set[str],
        kills: list[Kill],
        histories: dict[str, list[dict[str, Any]]],
    ) -> None:
        """Count what the sink saw against what relay owed (`expected` ids), given `kills`;
        `histories`: relay's of the ids delivered more than once."""
        delivered = {i for i, n in sink.delivered.items() if n > 0}
        self.notifications_expected = len(expected)
        self.delivered = len(delivered & expected)
        self.lost = len(expected - delivered)
        self.unexpected = len(delivered - expected)
        self.duplicates = sum(n - 1 for n in sink.delivered.values() if n > 1)
        self.duplicate_rate = round(self.duplicates / max(1, self.delivered), 4)
        marks = {i: sent_marks(events) for i, events in histories.items()}
        why, unexplained = classify_duplicates(sink.oks, kills, marks)
        self.duplicates_why = dict(sorted(why.items()))
        self.oks_unattributed = sum(o.group is None for oks in sink.oks.values() for o in oks)
        self.retry_after_given = sink.answers["rate_limited"]
        self.retry_after_unrecorded = excuse_unrecorded(sink.violations, kills)
        self.retry_after_violations = len(sink.violations)
        self.worst_violation_s = max((v["early_s"] for v in sink.violations), default=0.0)
        self.sink_requests = sink.requests
        self.sink_answers = dict(sorted(sink.answers.items()))
        if self.lost:
            self.samples["lost"] = sorted(expected - delivered)[:5]
        if sink.violations:
            keys = ("id", "early_s", "across_kill", "recorded", "retry_afters", "group")
            self.samples["violations"] = [{k: v.get(k) for k in keys} for v in sink.violations[:5]]
        for sample in unexplained[:5]:
            first, last = sample["oks"][0][0], sample["oks"][-1][0]
            sample["kills"] = [  # those between its first 200 (or just before) and its last
                (round(k.at, 3), k.group) for k in kills if first - UNSEEN_S <= k.at <= last
            ]
            sample["history"] = histories.get(sample["id"])
            self.samples.setdefault("unexplained_duplicates", []).append(sample)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.retry_after_violations == 0
            and self.duplicates_why.get("unexplained", 0) == 0
            and self.unexpected == 0
            and self.dead == 0
            and self.relay_exceptions == 0
            and self.post_errors == 0
        )


MARK_TOLERANCE_S = 0.002  # history times are ISO-8601 with milliseconds
UNSEEN_S = 1.0  # a request written before a kill can be read by a busy sink this much after


def lost_by_kill(kills: Iterable[Kill], group: int | None, at: float, before: float) -> bool:
    """Whether a kill can have kept `group` from recording what it was answered at `at`, by
    `before`. No group: the sink found no process holding the connection as it answered (a
    soak saw one such 200, its sender killed as it was read): a kill of any group within
    UNSEEN_S of `at`."""
    if group is None:
        return any(abs(k.at - at) <= UNSEEN_S for k in kills)
    return any(k.may_have_lost(group, before) for k in kills)


def sent_marks(events: list[dict[str, Any]]) -> list[float]:
    """The wall-clock times of relay's `sent` marks in a notification's history."""
    return [datetime.fromisoformat(e["at"]).timestamp() for e in events if e["kind"] == "sent"]


def why_duplicated(earlier: list[Ok], again: Ok, kills: list[Kill], marks: list[float]) -> str:
    """Why the 200 `again` came after the 200s `earlier` of the same id, relay having marked
    it sent at `marks` (module docstring)."""
    if any(m < again.wall - MARK_TOLERANCE_S for m in marks):
        return "unexplained"  # recorded as sent, and sent again all the same
    if any(not ok.read for ok in earlier):
        return "unread"
    if any(lost_by_kill(kills, ok.group, ok.at, again.at) for ok in earlier):
        return "kill"
    return "unexplained"


def classify_duplicates(
    oks: dict[str, list[Ok]], kills: list[Kill], marks: dict[str, list[float]]
) -> tuple[Counter[str], list[dict[str, Any]]]:
    """Each extra 200 by why (`marks`: relay's `sent` marks of each id); and samples of the
    unexplained (id, times, groups)."""
    why: Counter[str] = Counter()
    unexplained = []
    for ident, answers in oks.items():
        for i in range(1, len(answers)):
            reason = why_duplicated(answers[:i], answers[i], kills, marks.get(ident, []))
            why[reason] += 1
            if reason == "unexplained":
                unexplained.append(
                    {"id": ident, "oks": [(round(o.at, 3), o.group, o.read) for o in answers]}
                )
    return why, unexplained


def excuse_unrecorded(violations: list[dict[str, Any]], kills: list[Kill]) -> int:
    """Take out of `violations` the early retries whose 429 relay never recorded because it was
    killed between reading it and committing its retry time (nothing durable knew of the wait:
    the next process could not honour it); how many. A retry early after a 429 that relay's
    history shows recorded, or with no kill of the group answered in between, stays."""
    kept, excused = [], 0
    for v in violations:
        v["across_kill"] = lost_by_kill(kills, v.get("group"), v["given"], v["at"])
        if v["across_kill"] and 0 <= v.get("recorded", -1) < v["retry_afters"]:
            excused += 1
        else:
            kept.append(v)
    violations[:] = kept
    return excused
