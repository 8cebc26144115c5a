"""The Realtime follower against naive Realtime servers: ones that answer every request at once
(no long poll), serve the same rows again, or leave out Electric's headers. relay must neither
hammer them nor lose an update; against Electric itself (tests/test_realtime.py) nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from relay.config_sources import RealtimeFeed
from tests.fakes.realtime import FIXTURES, row_key
from tests.fakes.serving import serving
from tests.test_realtime import following
from tests.test_workers import wait_until

FAILED = json.loads(
    (FIXTURES / "realtime-run" / "wire-value" / "run_failed.value.json").read_text()
)
UP_TO_DATE = {"headers": {"control": "up-to-date"}}
HEADERS = {"electric-handle": "h1", "electric-offset": "1_0", "electric-cursor": "1"}

Answer = Callable[[dict[str, str]], tuple[dict[str, str], list[dict[str, Any]]]]


@dataclass
class NaiveServer:
    """Answers every request at once with what `answer(query)` gives (headers, messages)."""

    answer: Answer
    url: str = ""
    queries: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        headers, body = self.answer(dict(request.query))
        return web.json_response(body, headers=headers)


@asynccontextmanager
async def naive_server(answer: Answer) -> AsyncIterator[NaiveServer]:
    server = NaiveServer(answer)
    app = web.Application()
    app.router.add_get("/realtime/v1/runs", server.handle)
    async with serving(app) as server.url:
        yield server


def insert(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row_key(row["id"]), "value": row, "headers": {"operation": "insert"}}


async def asked(server: NaiveServer, count: int) -> None:
    for _ in range(6000):
        if len(server.queries) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{len(server.queries)} of {count} requests")


async def test_the_same_rows_served_at_once_again_and_again_are_submitted_once_and_paced() -> None:
    """A server answering every request at once with every row and up-to-date: the rows were
    submitted again on every answer, hundreds of times a second per feed (a busy loop)."""

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return HEADERS, [insert(FAILED), UP_TO_DATE]

    async with naive_server(answer) as server, following(server) as h:
        await asked(server, 6)
    assert len(h.submit.batches) == 1 and h.submit.batches[0][0].status == "FAILED"
    assert len(h.sleeps) >= 4 and all(s > 0 for s in h.sleeps)  # a pause before each again


async def test_live_answers_at_once_with_only_up_to_date_are_paced() -> None:
    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        if query["offset"] == "-1":
            return {**HEADERS, "electric-offset": "0_inf"}, [insert(FAILED)]
        return HEADERS, [UP_TO_DATE]

    async with naive_server(answer) as server, following(server) as h:
        await asked(server, 6)
    assert [q.get("live") for q in server.queries[:3]] == [None, None, "true"]
    assert len(h.submit.batches) == 1
    assert len(h.sleeps) >= 3 and all(s > 0 for s in h.sleeps)


async def test_answers_without_electric_handle_or_offset_are_taken() -> None:
    """No electric-offset at all, no electric-handle on live answers: the changes were refused
    as unreadable (then a snapshot, again and again) and the FAILED update never arrived."""
    executing = {**FAILED, "status": "EXECUTING", "completedAt": None, "error": None}
    update = {
        "key": row_key(FAILED["id"]),
        "value": {k: FAILED[k] for k in ("id", "status", "updatedAt", "completedAt", "error")},
        "headers": {"operation": "update"},
    }

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        if query.get("live") != "true":
            return {"electric-handle": "h1"}, [insert(executing), UP_TO_DATE]
        return {}, [update, UP_TO_DATE]

    feed = RealtimeFeed(tags=["customer:cus_Q8x2LmN4"])
    async with naive_server(answer) as server, following(server, feed) as h:
        await h.submit.wait_for(2)
    assert [run.status for batch in h.submit.batches for run in batch][:2] == [
        "EXECUTING",
        "FAILED",
    ]
    live = [q for q in server.queries if q.get("live") == "true"]
    assert live and all(q["handle"] == "h1" and q["offset"] == "-1" for q in live)


SDK_RUN = json.loads((FIXTURES / "realtime-run" / "sdk" / "run_failed.json").read_text())


def same(body: list[dict[str, Any]]) -> Answer:
    return lambda query: (HEADERS, body)


def live_chunks(ending_at: int | None) -> Answer:
    """A snapshot ending up-to-date, then live answers that each move on by one change without
    up-to-date, as Electric's log chunks do for a follower far behind, up to the one at offset
    `ending_at` (None: never), which ends up-to-date."""

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        if query["offset"] == "-1":
            return HEADERS, [insert({**FAILED, "status": "EXECUTING"}), UP_TO_DATE]
        at = int(query["offset"].split("_")[0]) + 1  # moves on, as a change does
        if ending_at is not None and at > ending_at:  # caught up: nothing new
            return {**HEADERS, "electric-offset": query["offset"]}, [UP_TO_DATE]
        end = [UP_TO_DATE] if at == ending_at else []
        return {**HEADERS, "electric-offset": f"{at}_0"}, [insert(FAILED), *end]

    return answer


@pytest.mark.parametrize(
    ("answer", "oddity"),
    [
        (same([SDK_RUN, UP_TO_DATE]), "neither a change (key) nor a control message"),
        (same([insert(FAILED)]), "no up-to-date"),
    ],
    ids=["sdk-runs-instead-of-messages", "never-up-to-date"],
)
async def test_an_answer_relay_cannot_use_is_logged_once_by_what_is_wrong(
    answer: Answer, oddity: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SDK run objects in place of shape messages, or rows that never come to up-to-date: no
    run ever reached the rules, and nothing in the log said why."""
    caplog.set_level(logging.WARNING, logger="relay")
    async with naive_server(answer) as server, following(server) as h:
        await asked(server, 4)
    told = [r for r in caplog.records if "not as Electric sends it" in r.getMessage()]
    assert len(told) == 1 and oddity in told[0].__dict__["oddity"]
    assert not h.submit.batches  # the rows still wait for an up-to-date


def moving(offset: Callable[[int], str], handle: Callable[[int], str]) -> Answer:
    """A snapshot, then live answers with nothing new at the `offset(n)` and `handle(n)` of
    the n-th request (each ending up-to-date)."""
    count = iter(range(1_000_000))

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        n = next(count)
        if query["offset"] == "-1":
            return HEADERS, [insert(FAILED), UP_TO_DATE]
        position = {"electric-offset": offset(n), "electric-handle": handle(n)}
        return {**HEADERS, **position}, [UP_TO_DATE]

    return answer


@pytest.mark.parametrize(
    ("answer", "oddity"),
    [
        (moving(lambda n: f"{100 - n}_0", lambda n: "h1"), "an offset before the one asked from"),
        (moving(lambda n: "1_0", lambda n: f"h{n}"), "a new handle without must-refetch"),
    ],
    ids=["offset-going-back", "handle-changing-without-409"],
)
async def test_a_position_moving_as_electric_never_does_is_logged_once(
    answer: Answer, oddity: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Electric's offsets only go on within a handle, and a new handle comes with a 409: a
    server answering an offset before the one asked from (asked again: every change since it)
    or another handle on a 200 was followed without a word. Taken as Electric's client takes
    it, and said once per feed."""
    caplog.set_level(logging.WARNING, logger="relay")
    async with naive_server(answer) as server, following(server) as h:
        await asked(server, 6)
    told = [r.__dict__["oddity"] for r in caplog.records if "not as Electric" in r.getMessage()]
    assert told == [oddity]
    assert len(h.submit.batches) == 1  # the run once; the rest changed nothing


BEHIND = "realtime feed behind by more than one answer"


@pytest.mark.parametrize(
    ("ending_at", "batches"), [(4, 2), (None, 1)], ids=["catches-up", "never-up-to-date"]
)
async def test_live_answers_in_chunks_are_said_once_and_not_blamed_on_the_server(
    ending_at: int | None, batches: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Electric ends a live answer up-to-date only at the end of the shape's log (api.ex
    determine_up_to_date), cut in 10 MiB chunks: a live follower further behind than that (a
    long 401 or 429 on a busy feed) gets chunks without up-to-date. The soak saw each logged as
    a warning that the answer was "not as Electric sends it". Now: one info line per catch-up
    (also for a server that never sends up-to-date: its rows wait), no warning, and the rows
    emitted at the up-to-date that ends it."""
    caplog.set_level(logging.INFO, logger="relay")
    async with naive_server(live_chunks(ending_at)) as server, following(server) as h:
        await asked(server, 6)
    assert not [r for r in caplog.records if "not as Electric sends it" in r.getMessage()]
    assert len([r for r in caplog.records if r.getMessage().startswith(BEHIND)]) == 1
    assert len(h.submit.batches) == batches
    assert h.submit.batches[-1][0].status == ("FAILED" if ending_at else "EXECUTING")


async def test_a_change_sent_as_an_insert_of_the_changed_columns_merges_into_the_row() -> None:
    """Every change an insert of the changed columns: the insert replaced the row, which lost
    its friendlyId and task, so the FAILED update was skipped as undecodable."""
    changed = {k: FAILED[k] for k in ("id", "status", "updatedAt", "completedAt", "error")}

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        if query["offset"] == "-1":
            return HEADERS, [insert({**FAILED, "status": "EXECUTING", "error": None}), UP_TO_DATE]
        return {**HEADERS, "electric-offset": "2_0"}, [insert(changed), UP_TO_DATE]

    async with naive_server(answer) as server, following(server) as h:
        await h.submit.wait_for(2)
    failed = h.submit.batches[1][0]
    assert (failed.id, failed.taskIdentifier, failed.status) == (
        FAILED["friendlyId"],
        FAILED["taskIdentifier"],
        "FAILED",
    )


async def test_a_snapshot_stripped_of_its_offset_is_a_failure_backed_off() -> None:
    """A proxy dropping electric-offset in front of Electric: the snapshot (never up-to-date at
    offset -1) came back the same twice a second for good, counted as no failure at all."""

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        return {"electric-handle": "h1"}, [insert(FAILED)]

    async with naive_server(answer) as server, following(server, RealtimeFeed(tags=["a"])) as h:
        await asked(server, 6)
    assert {q["offset"] for q in server.queries} == {"-1"}
    assert h.failed[:5] == ["other"] * 5
    assert len(h.sleeps) >= 5  # each retry waits (jittered backoff, growing to 10 s)
    assert h.submit.batches == []


async def test_an_endless_answer_is_cut_off_and_retried() -> None:
    """A server streaming an answer that never ends: relay read it into memory until the
    process ran out of it (no timeout fires while bytes keep coming)."""
    written: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=HEADERS)
        await response.prepare(request)
        chunk = b" " * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for sent in range(1, 200):  # bounded: 199 MiB, ~3 times the most relay reads
                await response.write(chunk)
                written.append(sent)
        return response

    app = web.Application()
    app.router.add_get("/realtime/v1/runs", endless)
    async with serving(app) as url, following(NaiveServer(same([]), url)) as h:
        await wait_until(lambda: len(h.failed) >= 2)
    assert h.failed[:2] == ["other", "other"]
    assert max(written) < 199  # relay hung up, it did not read to the end
    assert h.submit.batches == []


async def test_a_compressed_answer_is_read_no_further_than_the_limit() -> None:
    """100 MiB of gzip-compressed whitespace (~100 KB on the wire): decompressed in full."""
    squeeze = zlib.compressobj(wbits=31)
    body = b"".join(squeeze.compress(b" " * (1024 * 1024)) for _ in range(100))
    body += squeeze.compress(json.dumps([UP_TO_DATE]).encode()) + squeeze.flush()

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={**HEADERS, "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/realtime/v1/runs", bomb)
    async with serving(app) as url, following(NaiveServer(same([]), url)) as h:
        await wait_until(lambda: bool(h.failed))
    assert h.failed[:1] == ["other"]


# A first retry waits 0.05-0.1 s (100 ms, jittered 0.5-1x); the fourth 0.11-0.22 s (x 1.3^3):
# past any first one whatever the jitter, where the third (0.085-0.17 s) was not always.
FIRST_WAIT_MAX_S = 0.1


async def test_a_must_refetch_after_every_snapshot_is_backed_off() -> None:
    """A CDN that caches Electric's 409 (its docs warn of it) answers the request after each
    snapshot with the same must-refetch: the snapshot's good answer reset the count of
    refetches, so relay asked again at once, thousands of times a second, for good."""
    answered: list[str] = []

    def answer(query: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
        answered.append(query["offset"])
        return HEADERS, [insert(FAILED), UP_TO_DATE]

    async def handle(request: web.Request) -> web.Response:
        if request.query.get("offset") != "-1":
            answered.append("409")
            must_refetch = [{"headers": {"control": "must-refetch"}}]
            return web.json_response(must_refetch, status=409, headers={"electric-handle": "h2"})
        headers, body = answer(dict(request.query))
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_get("/realtime/v1/runs", handle)
    server = NaiveServer(answer)
    async with serving(app) as server.url, following(server) as h:
        for _ in range(6000):
            if len(h.sleeps) >= 4:
                break
            await asyncio.sleep(0.005)
    assert answered[:4] == ["-1", "409", "-1", "409"]
    assert len(h.sleeps) >= 4 and h.sleeps[3] > FIRST_WAIT_MAX_S, (h.sleeps, len(answered))
    assert {run.status for batch in h.submit.batches for run in batch} == {"FAILED"}


async def test_a_must_refetch_after_every_snapshot_of_two_chunks_is_backed_off() -> None:
    """The same with a snapshot in two chunks (a feed of many runs): its second chunk is no
    snapshot's first request, its answer reset the count, and relay asked again at once."""
    answered: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        offset = request.query.get("offset", "")
        answered.append(offset)
        if offset == "-1":  # the snapshot's first chunk, more to come
            return web.json_response(
                [insert(FAILED)], headers={**HEADERS, "electric-offset": "0_1"}
            )
        if offset == "0_1":  # its last chunk
            return web.json_response([UP_TO_DATE], headers={**HEADERS, "electric-offset": "1_0"})
        must_refetch = [{"headers": {"control": "must-refetch"}}]
        return web.json_response(must_refetch, status=409, headers={"electric-handle": "h2"})

    app = web.Application()
    app.router.add_get("/realtime/v1/runs", handle)
    server = NaiveServer(lambda query: (HEADERS, []))
    async with serving(app) as server.url, following(server) as h:
        for _ in range(6000):
            if len(h.sleeps) >= 4 or len(answered) > 60:
                break
            await asyncio.sleep(0.005)
    assert answered[:6] == ["-1", "0_1", "1_0", "-1", "0_1", "1_0"]
    assert len(h.sleeps) >= 4 and h.sleeps[3] > FIRST_WAIT_MAX_S, (h.sleeps, len(answered))
