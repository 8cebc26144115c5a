"""The silence index (SilenceIndex) against the plain list: over any silences and any
notification, a send's lookup finds the same first silence that checking them all finds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relay.model import Silence
from relay.silences.cache import SilenceCache
from relay.silences.index import SilenceIndex, fits, silenced_by
from relay.silences.matchers import parse_matchers
from relay.silences.shapes import new_silence
from relay.statuses import EVENTS
from relay.store.sqlite import SQLiteStore

NOW = 1_800_000_000.0
STATUSES = [
    "failure", "FAILURE", "FAILED", "failed", " Crashed ", "INTERRUPTED", "interrupted",
    "WAITING_FOR_DEPLOY", "FROZEN", "frozen", "REATTEMPTING", "COMPLETED_WITH_ERRORS",
    "pending", "QUEUED", "COMPLETED", "EXECUTING", "WAITING", "PAUSED", "NEW_ISSUE",
    "weird", "Weird", " ", "TIMED_OUT", "SYSTEM_FAILURE",
]  # fmt: skip
TEXT = st.text("ab/*?[]!", min_size=1, max_size=6)
TAGS = st.sampled_from(["a", "b", "env:prod", "c"])


def values(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(strategy, min_size=1, max_size=3).map(tuple)


MATCHERS = st.fixed_dictionaries(
    {},
    optional={
        "rule": values(st.sampled_from(["r", "q", "x", "pending"])),  # a status's name too
        "channel": values(st.sampled_from(["c", "d"])),
        "task": values(TEXT),
        "tag": values(TAGS),
        "status": values(st.sampled_from(STATUSES)),
        "event": values(st.sampled_from(EVENTS)),
    },
).filter(bool)
# active, pending (starts later) or expired
WHEN = st.sampled_from([(NOW - 10, NOW + 10), (NOW + 5, NOW + 10), (NOW - 10, NOW - 1)])


@st.composite
def silences(draw: st.DrawFn) -> list[Silence]:
    drawn = draw(st.lists(st.tuples(MATCHERS, WHEN), max_size=12))
    return [Silence(f"s{n}", m, start, end, NOW - 20) for n, (m, (start, end)) in enumerate(drawn)]


NOTIFICATIONS = st.fixed_dictionaries(
    {
        "rule": st.sampled_from(["r", "q", "x", "", "pending"]),
        "channel": st.sampled_from(["c", "d"]),
        "task": st.text("ab/*?[]!", max_size=6),
        "tags": st.lists(TAGS, max_size=3),
        "status": st.sampled_from([*STATUSES, ""]),
        "event": st.sampled_from(EVENTS),
        "v3_status": st.sampled_from([None, "", "INTERRUPTED", "FROZEN", "REATTEMPTING", "x"]),
    }
)


BLANK = Silence("s0", {"status": (" ",)}, NOW - 10, NOW + 10, NOW - 20)
NOTHING: dict[str, Any] = {
    "rule": "r",
    "channel": "c",
    "task": "",
    "tags": [],
    "event": "run",
    "v3_status": None,
}


@given(silences(), NOTIFICATIONS)
# a run of no status and a silence on a blank one (which fit): the index did not look it up
@example([BLANK], {**NOTHING, "status": ""})
# a rule named as a raw status is (PENDING is QUEUED): filed under its name all the same
@example(
    [Silence("s0", {"rule": ("pending",)}, NOW - 10, NOW + 10, NOW - 20)],
    {**NOTHING, "rule": "pending", "status": "FAILED"},
)
def test_the_index_finds_the_first_silence_the_list_finds(
    every: list[Silence], notification: dict[str, Any]
) -> None:
    index = SilenceIndex(every)
    assert silenced_by(index, NOW, **notification) == silenced_by(every, NOW, **notification)
    fields = {**notification, "v3Status": notification["v3_status"]}
    fitting = [s.id for s in every if fits(s.matchers, fields)]
    looked_at = [s.id for s in index.candidates(fields)]
    assert [one for one in looked_at if one in fitting] == fitting  # all, once each, in order


async def test_a_silence_changed_in_place_is_filed_again(sqlite_store: SQLiteStore) -> None:
    """The cache files its silences again only when a reload reads different ones: one
    expired in place (same id, an earlier end) is different, and stops muting at its end."""
    cache = SilenceCache(sqlite_store.silences)
    one = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 3600, now=NOW)
    await sqlite_store.add_silence(one)
    fields: dict[str, Any] = {**NOTHING, "task": "x", "status": "FAILED"}
    assert silenced_by(await cache.index(NOW), NOW + 20, **fields) == one.id
    await sqlite_store.expire_silence(one.id, NOW + 10)
    cache.invalidate()
    index = await cache.index(NOW + 5)  # read before its new end: still listed
    assert [s.ends_at for s in index.silences] == [NOW + 10]
    assert silenced_by(index, NOW + 20, **fields) is None


def test_each_matcher_holds_alternatives_of_which_any_fits() -> None:
    """As the silence model says: a tag matcher of two tags fits a run carrying either, as a
    task's globs, a status's names and a rule's names do; every matcher must fit."""
    fields = {"rule": "r", "channel": "c", "task": "billing/charge", "tags": ["a"]}
    fields |= {"status": "FAILED", "event": "run"}
    assert fits({"tag": ("b", "a")}, fields)
    assert fits({"task": ("email/*", "billing/*"), "rule": ("q", "r")}, fields)
    assert fits({"status": ("COMPLETED", "failure")}, fields)
    assert not fits({"tag": ("b", "c")}, fields)
    assert not fits({"tag": ("a",), "rule": ("q",)}, fields)


@pytest.mark.parametrize(
    ("wanted", "status", "fit"),
    [
        ("FAILURE", "FAILED", True),  # `failure` in any case: every failed status
        ("Failure", "CRASHED", True),
        ("FAILURE", "COMPLETED", False),
        ("weird", "weird", True),  # a status relay does not know: exactly as written
        ("weird", "WEIRD", True),  # or in upper case, as a rule's status is
        ("weird", "Weird", False),
    ],
)
def test_a_silences_status_names_a_run_status(wanted: str, status: str, fit: bool) -> None:
    """A silence's status fits as a rule's does; the index and the list share `fits`, so the
    property above cannot tell a wrong reading: each case here is pinned by itself."""
    assert fits({"status": (wanted,)}, {"status": status}) is fit


async def test_invalidate_reads_the_silences_whatever_their_version() -> None:
    """invalidate() (after this process changed the silences) reads them again even when the
    version read says nothing moved: the change is never missed for a version read early."""
    one = new_silence(parse_matchers({"task": "x"}), ends_at=NOW + 3600, now=NOW)
    stored: list[list[Silence]] = [[], [one]]

    async def load(now: float) -> list[Silence]:
        return stored.pop(0)

    async def version() -> int:
        return 7

    cache = SilenceCache(load, version=version)
    assert await cache.current(NOW) == []
    cache.invalidate()
    assert await cache.current(NOW) == [one]
    assert cache.reads == 2
