"""What a huge Realtime answer costs: a snapshot near the size cap (MAX_ANSWER_BYTES, 64 MiB) of
rows with large payloads, outputs and metadata. Parsed whole, orjson took ~13 times the body
while it ran, and the whole batch was decoded at once (payloads parsed into Python objects):
~450 MB for 64 MiB, enough for a container's memory limit to kill relay. The body is parsed a
piece at a time to the same value, and a large batch submitted a slice at a time."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from relay.sources._messages import PIECE, ShapeError, read_messages
from relay.sources._slices import SLICE_BYTES
from tests.fakes.realtime import fake_realtime, row_key, session
from tests.test_realtime import following


def big_rows(count: int, size: int) -> dict[str, dict[str, Any]]:
    """`count` raw rows (wire values) of the session's run, each with a payload of ~`size`
    bytes of JSON text (one object of many small records, as an API payload is)."""
    template = session()[0].body[0]["value"]
    records = [{"id": f"inv_{n:06d}", "amount": n * 1.5, "note": '},{"key":'} for n in range(9)]
    rows = {}
    for n in range(count):
        internal = f"cm{n:023d}"
        items = records * (size // 600)
        payload = orjson.dumps({"json": {"items": items, "n": n}}).decode()
        value = {**template, "id": internal, "friendlyId": f"run_{internal}", "payload": payload}
        rows[row_key(internal)] = value
    return rows


def body(rows: dict[str, dict[str, Any]], option: int = 0) -> bytes:
    messages = [{"key": k, "value": v, "headers": {"operation": "insert"}} for k, v in rows.items()]
    return orjson.dumps(messages, option=option)


@pytest.mark.parametrize("option", [0, orjson.OPT_INDENT_2])
def test_a_large_answer_reads_as_it_would_whole(option: int) -> None:
    data = body(big_rows(40, 100_000), option)
    assert len(data) > 2 * PIECE  # read a piece at a time
    assert read_messages(data) == orjson.loads(data)


def test_a_large_answer_nesting_what_looks_like_messages_reads_whole() -> None:
    """Cut where a message's value nests `{"key": ...}` objects, the pieces do not parse."""
    inner = [{"key": n, "value": "x" * 1000} for n in range(4000)]
    data = orjson.dumps([{"key": "a", "value": {"list": inner}}, {"key": "b", "value": {}}])
    assert len(data) > 2 * PIECE
    assert read_messages(data) == orjson.loads(data)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (lambda data: data[:-1], "the body is not JSON"),  # the closing `]` missing
        (lambda data: data[:-1] + b",]", "the body is not JSON"),
        (lambda data: b"{" + data[1:-1] + b"}", "the body is not JSON"),
        (lambda data: b'{"a":' + data + b"}", "the body is not a JSON array of messages"),
    ],
)
def test_a_large_answer_that_is_not_an_array_of_messages_is_refused(cut: Any, reason: str) -> None:
    data = body(big_rows(30, 100_000))
    with pytest.raises(ShapeError, match=reason):
        read_messages(cut(data))


def test_a_large_answer_is_read_in_a_few_times_its_size() -> None:
    """Not ~13 times, as orjson took parsing it whole (its copy and its pool of values)."""
    data = body(big_rows(160, 100_000))
    tracemalloc.start()
    try:
        messages = read_messages(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(messages) == 160
    assert peak < 4 * len(data), f"{peak / len(data):.1f} times the body"


async def test_a_large_snapshot_is_submitted_a_slice_at_a_time_in_order() -> None:
    """Each slice decoded and committed in turn, in the rows' order, the position stored once
    all are: a kill between two asks for the batch again, which intake deduplicates."""
    rows = big_rows(12, 800_000)
    async with fake_realtime([]) as fake:
        fake.rows = rows
        async with following(fake) as h:
            await h.submit.wait_for(2)
            await fake.wait_for(lambda seen: seen.query.get("live") == "true")
    batches = h.submit.batches
    assert 2 <= len(batches) <= len(rows) * 800_000 // SLICE_BYTES + 1
    assert [run.id for batch in batches for run in batch] == [
        v["friendlyId"] for v in rows.values()
    ]
    assert h.kv.puts[0][1] == len(batches)  # the position after the last slice
    assert len(h.kv.rows("tags:customer:cus_Q8x2LmN4|24h")) == len(rows)
