"""POST /v1/runs: every bad input gets its clear error, a batch is all-or-nothing, 202 after commit."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay.formats import parse_body
from relay.intake import Intake
from relay.rule_compile import compile_rules
from relay.sources.http import HttpDeps, RefusalLog, build_app
from relay.store import HistoryQuery
from relay.store.sqlite import SQLiteStore
from tests.conftest import CONSOLE_FAILURES, FIXTURES, RelayFactory, Sink, sdk_run

CONFIG = "server:\n  auth_token: ${TOKEN:-}\n  max_body_bytes: 4096\n" + CONSOLE_FAILURES
AUTH_CONFIG = CONFIG.replace("${TOKEN:-}", "s3cret-token")


async def raw_post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/runs", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


def small_failed(**extra: Any) -> dict[str, Any]:
    run = {
        "id": "run_small",
        "taskIdentifier": "t",
        "status": "FAILED",
        "updatedAt": "2026-01-01T00:00:00Z",
    }
    run.update(extra)
    return run


async def test_accepts_one_object_and_counts(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    status, body = await r.post(small_failed())
    assert status == 202
    assert body == {"accepted": 1, "stale": 0, "notifications": 1}


async def test_accepts_an_array_and_every_fixture_shape(relay: RelayFactory) -> None:
    r = await relay(CONFIG.replace("4096", "1048576"))
    runs = [sdk_run(n) for n in ("failed", "crashed", "timed_out", "completed", "executing")]
    status, body = await r.post(runs)
    assert status == 202
    assert body["accepted"] == 5 and body["notifications"] == 3


async def test_unknown_fields_and_statuses_are_kept(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    status, body = await r.post(small_failed(status="SOME_FUTURE_STATUS", brandNew={"x": 1}))
    assert status == 202 and body["notifications"] == 0


async def test_a_pushed_run_is_a_run_whatever_its_event_field_says(relay: RelayFactory) -> None:
    """`event` is relay's own: deployment and error events come only as alert webhooks, so a
    hook that labels what it pushes (`"event": "run.failed"`) still gets its run alerts."""
    r = await relay(
        CONFIG + "  - {name: deploys, match: {event: deployment.failed}, notify: [out]}\n"
    )
    for i, label in enumerate(("run.failed", "deployment.failed", "error")):
        status, body = await r.post(small_failed(id=f"run_ev{i}", event=label))
        assert (status, body["notifications"]) == (202, 1), label
        [row] = await r.service.store.history(HistoryQuery(run_id=f"run_ev{i}"))
        assert row.rule == "failures", label


def hook_config(sink: Sink, rule: str = "{name: failures, match: {status: [FAILED]}}") -> str:
    """A config sending what `rule` matches to the sink's /hook."""
    rule = rule[:-1] + ", notify: [hook]}"
    return f"channels:\n  hook: {{type: webhook, url: {sink.url}/hook}}\nrules:\n  - {rule}\n"


async def test_numbers_reach_the_receiver_as_they_were_sent(
    relay: RelayFactory, sink: Sink
) -> None:
    """60634 stays 60634 (a Go receiver refuses 60634.0 into an int); fractions stay fractions."""
    r = await relay(hook_config(sink))
    run = small_failed(durationMs=60634, costInCents=1.5, baseCostInCents=0)
    assert (await r.post(run))[0] == 202
    [got] = await sink.wait_for(1)
    sent = got.json()["run"]
    assert (sent["durationMs"], sent["costInCents"], sent["baseCostInCents"]) == (60634, 1.5, 0)
    assert type(sent["durationMs"]) is int and type(sent["baseCostInCents"]) is int
    status, _ = await r.post(small_failed(id="run_nulls", durationMs=None, costInCents=None))
    [_, got] = await sink.wait_for(2)
    assert status == 202 and (
        got.json()["run"]["durationMs"],
        got.json()["run"]["costInCents"],
    ) == (0, 0)


async def test_values_as_senders_write_them_are_read_not_refused(
    relay: RelayFactory, sink: Sink
) -> None:
    """Numbers and flags in quotes (as Realtime rows send them), null for a field's default, a
    ttl in seconds (trigger options take `ttl: 3600`), an error that is not an object: each is
    read as what it means. Refusing the update would lose the alert it carries."""
    r = await relay(
        hook_config(sink, "{name: pricey, match: {cost_cents: {gt: 500}, is_test: false}}")
    )
    run = small_failed(
        costInCents="600.5",
        durationMs=" 60634 ",
        baseCostInCents="0",
        number="12",
        isTest="f",
        ttl=3600,
        idempotencyKey=42,
        taskIdentifier=None,
        error=["boom"],
    )
    assert await r.post(run) == (202, {"accepted": 1, "stale": 0, "notifications": 1})
    [got] = await sink.wait_for(1)
    sent = got.json()["run"]
    assert (sent["costInCents"], sent["durationMs"], sent["baseCostInCents"]) == (600.5, 60634, 0)
    assert type(sent["durationMs"]) is int  # an int in quotes stays an int, not 60634.0
    assert (sent["number"], sent["isTest"], sent["ttl"], sent["idempotencyKey"]) == (
        12,
        False,
        "3600",
        "42",
    )
    assert (sent["taskIdentifier"], sent["error"]) == ("", {"message": '["boom"]'})
    odd: list[dict[str, Any]] = [{"isTest": None, "number": 7.0}, {"isTest": "FALSE"}]
    for n, flags in enumerate(odd):
        status, body = await r.post(small_failed(id=f"run_{n}", costInCents=501, **flags))
        assert (status, body["notifications"]) == (202, 1), flags
    for n, flag in enumerate(["t", " TRUE "]):  # a test run: the rule wants is_test false
        status, body = await r.post(small_failed(id=f"run_t{n}", costInCents=501, isTest=flag))
        assert (status, body["notifications"]) == (202, 0), flag
    # a text stays the text, null stays null (not "None")
    await r.post(small_failed(id="run_texts", costInCents=501, ttl="1h", idempotencyKey=None))
    texts = [
        g.json()["run"] for g in await sink.wait_for(4) if g.json()["run"]["id"] == "run_texts"
    ]
    assert [(t["ttl"], t["idempotencyKey"]) for t in texts] == [("1h", None)]


# ISO 8601 forms Python reads and pydantic refused in the SDK object (a 400) while a Realtime
# row with the same text was read: Postgres' timestamptz text (`+00`), a blank around, the
# basic form; each is 09:14:22.46 UTC.
ISO_FORMS = (
    "2026-08-20 09:14:22.46+00",
    "2026-08-20T11:14:22.46+02",
    "2026-08-20T09:14:22.460Z ",
    "20260820T091422.46Z",
)


async def test_iso_timestamps_a_realtime_row_may_carry_are_read_in_the_sdk_object(
    relay: RelayFactory, sink: Sink
) -> None:
    r = await relay(hook_config(sink))
    runs = [small_failed(id=f"run_ts{i}", updatedAt=text) for i, text in enumerate(ISO_FORMS)]
    status, answer = await r.post(runs)
    assert (status, answer) == (202, {"accepted": 4, "stale": 0, "notifications": 4})
    sent = {got.json()["run"]["updatedAt"] for got in await sink.wait_for(4)}
    assert sent == {"2026-08-20T09:14:22.460Z"}
    status, answer = await r.post(small_failed(id="run_ts", updatedAt="2026-08-20 09:14:22.46+"))
    assert (status, answer["field"]) == (400, "updatedAt")
    # beside such a date, the field that is wrong is the one named
    bad_cost = small_failed(id="run_ts", updatedAt=ISO_FORMS[0], costInCents="lots")
    assert (await r.post(bad_cost))[1]["field"] == "costInCents"


async def test_null_is_missing_for_every_optional_field(relay: RelayFactory, sink: Sink) -> None:
    r = await relay(hook_config(sink))
    optional = set(sdk_run("failed")) - {"id", "status"}
    status, answer = await r.post(
        {"id": "run_nulls", "status": "FAILED", **dict.fromkeys(optional)}
    )
    assert status == 202, answer
    [got] = await sink.wait_for(1)
    sent = got.json()
    assert (sent["run"]["taskIdentifier"], sent["run"]["isTest"], sent["run"]["tags"]) == (
        "",
        False,
        [],
    )
    assert sent["text"] == "🔴 FAILED · unknown task · run_nulls"


async def test_lone_surrogate_escapes_are_accepted_as_replacement_characters(
    relay: RelayFactory, sink: Sink
) -> None:
    """JavaScript's JSON.stringify writes "\\ud83d" for a string cut inside an emoji: valid
    JSON grammar, which orjson alone refuses. The run is taken, each lone half as U+FFFD."""
    r = await relay(hook_config(sink))
    body = (
        b'{"id": "run_sur", "taskIdentifier": "t\\ud800", "status": "FAILED", "tags": ["\\udfff"],'
        b' "error": {"message": "cut \\ud83d\\ude00 \\ud83d"}}'
    )
    status, answer, _ = await raw_post(r.url, body, {"Content-Type": "application/json"})
    assert status == 202, answer
    [got] = await sink.wait_for(1)
    sent = got.json()
    assert sent["run"]["taskIdentifier"] == "t\ufffd" and sent["run"]["tags"] == ["\ufffd"]
    assert sent["error"]["message"] == "cut \U0001f600 \ufffd"
    latin1 = '{"id": "run_é", "status": "FAILED"}'.encode("latin-1")  # é is byte 12
    status, answer, _ = await raw_post(r.url, latin1, {"Content-Type": "application/json"})
    assert (status, answer["error"]) == (400, "invalid JSON: not UTF-8 at byte 12")
    deep = b"[" * 100 + b'"\\ud800"' + b"]" * 100
    for bad, why in ((b'["\\ud800", NaN]', "invalid JSON"), (deep, "expected a run object")):
        status, answer, _ = await raw_post(r.url, bad, {"Content-Type": "application/json"})
        assert status == 400 and why in answer["error"], answer


async def test_numbers_beside_a_lone_surrogate_read_as_orjson_reads_them(
    relay: RelayFactory,
) -> None:
    """The lone-surrogate reading took integers past 64 bits as they were (a 500 after the
    commit: neither the store nor orjson writes them) and 1e400 as infinity; an integer of
    400 digits, too large for a float, was a 500."""
    r = await relay(CONFIG)
    big = b"123456789012345678901234567890"
    for n, field in enumerate((b'"extra": ', b'"metadata": {"n": ', b'"durationMs": ')):
        close = b"}" if b"{" in field else b""
        body = b'{"id": "run_big%d", "status": "FAILED", "taskIdentifier": "t\\ud800", ' % n
        status, answer, _ = await raw_post(r.url, body + field + big + close + b"}")
        assert (status, answer) == (202, {"accepted": 1, "stale": 0, "notifications": 1})
    huge = b"1" + b"0" * 400  # an integer past a double's range: orjson says infinity
    for n, number in enumerate((b"1e400", huge, b"-" + huge)):
        body = b'{"id": "run_inf%d", "status": "FAILED", "taskIdentifier": "t\\ud800", "x": ' % n
        status, answer, _ = await raw_post(r.url, body + number + b"}")
        assert status == 400 and answer["field"] == "x", answer
        assert answer["error"].startswith("number out of range: "), answer


async def test_integers_beyond_64_bits_are_numbers_not_a_server_error(
    relay: RelayFactory, sink: Sink
) -> None:
    """A cost of 2**64 - 1 (orjson reads it as an int, SQLite stores at most 2**63 - 1), or an
    integer of 30 digits beside a lone surrogate (the json module reads any size, orjson writes
    at most 64 bits) was a 500; each is a number, as orjson reads one past its range."""
    r = await relay(hook_config(sink))
    huge = b"1" + b"0" * 29
    bodies = [
        b'{"id": "run_u64", "status": "FAILED", "costInCents": 18446744073709551615}',
        b'{"id": "run_big", "status": "FAILED", "taskIdentifier": "t\\ud800", "durationMs": '
        + huge
        + b', "number": 7, "payload": {"n": '
        + huge
        + b"}}",
    ]
    for body in bodies:
        status, answer, _ = await raw_post(r.url, body, {"Content-Type": "application/json"})
        assert status == 202, answer
    sent = [got.json()["run"] for got in await sink.wait_for(2)]
    by_id = {run["id"]: run for run in sent}
    assert by_id["run_u64"]["costInCents"] == float(2**64 - 1)
    assert by_id["run_big"]["durationMs"] == 1e29 and by_id["run_big"]["payload"] == {"n": 1e29}


def test_a_body_with_a_lone_surrogate_reads_its_numbers_as_orjson_does() -> None:
    """Such a body is read by the json module (orjson refuses it): each integer within 64 bits
    an int to its edges (-2**63, 2**64 - 1), past them a float, as orjson reads the same."""
    numbers = b'"a": 60634, "b": -9223372036854775808, "c": 18446744073709551615, '
    numbers += b'"d": 18446744073709551616, "e": -9223372036854775809'
    plain = orjson.loads(b"{" + numbers + b"}")
    read = parse_body(b'{"s": "\\ud83d", ' + numbers + b"}")
    assert read == {"s": "\ufffd", **plain}
    assert [type(read[k]) for k in plain] == [type(v) for v in plain.values()]


async def test_a_status_in_another_case_is_the_status(relay: RelayFactory) -> None:
    """`failed` is FAILED, as rule statuses are any case, and so is ` FAILED\\n`: a status
    with blanks around it matched no rule, silently; an unknown one is kept as sent."""
    r = await relay(CONFIG)
    status, body = await r.post(small_failed(status="failed"))
    assert status == 202 and body["notifications"] == 1
    status, body = await r.post(small_failed(id="run_other", status="Some_Future"))
    assert status == 202 and body["notifications"] == 0
    # blanks around it (hand-built JSON, a shell's newline), as around a number or a flag
    status, body = await r.post(small_failed(id="run_blank", status=" FAILED\n"))
    assert status == 202 and body["notifications"] == 1
    status, body = await r.post(small_failed(id="run_blank2", status=" Some_Future "))
    assert status == 202 and body["notifications"] == 0


async def test_empty_array_is_accepted_as_nothing(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    assert await r.post([]) == (202, {"accepted": 0, "stale": 0, "notifications": 0})


async def test_the_sdks_wrapped_shapes_are_read(relay: RelayFactory) -> None:
    """What the SDK hands a forwarder, as it comes: a runs.list page ({data, pagination}) and
    the parts of runs.subscribeToRun(id).withStreams() ({type: "run", run}, stream chunks)."""
    r = await relay(CONFIG)
    page = {"data": [small_failed(id="run_p1"), small_failed(id="run_p2")], "pagination": {}}
    assert await r.post(page) == (202, {"accepted": 2, "stale": 0, "notifications": 2})
    part = {"type": "run", "run": small_failed(id="run_s1")}
    chunk = {"type": "openai", "chunk": {"delta": "x"}, "run": small_failed(id="run_s2")}
    assert await r.post([part, chunk]) == (202, {"accepted": 2, "stale": 0, "notifications": 2})


ELECTRIC_BODY = (FIXTURES / "electric" / "live_response.body.json").read_bytes()
ALERT_BODY = (FIXTURES / "alert-webhooks" / "alert.run.failed.body.json").read_bytes()
RAW_ROW = {
    "friendlyId": "run_raw",
    "status": "FAILED",
    "taskIdentifier": "t",
    "createdAt": "2026-01-01 00:00:00",
}
BAD_BODIES: list[tuple[bytes, str, str]] = [
    (b"", "", "empty body"),
    (b"{not json", "", "invalid JSON"),
    (b'"a string"', "", "expected a JSON object or an array"),
    (b"[1, 2]", "[0]", "expected a run object"),
    (ELECTRIC_BODY, "[0]", "Electric shape"),
    (json.dumps(json.loads(ELECTRIC_BODY)[1]).encode(), "", "Electric shape"),  # one message
    (ALERT_BODY, "", "/v1/trigger/alerts"),  # an alert webhook posted to the wrong path
    (json.dumps([json.loads(ALERT_BODY)]).encode(), "[0]", "/v1/trigger/alerts"),
    (json.dumps({"status": "FAILED"}).encode(), "id", "missing"),
    (json.dumps({"data": small_failed()}).encode(), "data", "post the run object itself"),
    (json.dumps({"data": [small_failed(id=None)], "pagination": {}}).encode(), "data[0].id", "string"),
    (json.dumps({"type": "run", "run": small_failed(status=5)}).encode(), "run.status", "string"),
    # no id nor friendlyId in `run`: no stream part, so the object itself lacks its id
    (json.dumps({"type": "run", "run": {"status": "FAILED"}}).encode(), "id", "missing"),
    (json.dumps({"id": "run_1"}).encode(), "status", "missing"),
    (json.dumps(small_failed(id=5)).encode(), "id", "string"),
    (json.dumps(small_failed(id="")).encode(), "id", "must not be empty"),
    (json.dumps(small_failed(status="")).encode(), "status", "must not be empty"),
    (json.dumps(small_failed(status=" \n")).encode(), "status", "must not be empty"),
    (json.dumps(small_failed(id="run_" + "é" * 509)).encode(), "id", "at most 512 characters"),
    (json.dumps(small_failed(id="run_\x00a")).encode(), "id", "NUL"),  # PostgreSQL: run_\ufffda
    (json.dumps(small_failed(costInCents="twelve")).encode(), "costInCents", "number"),
    (json.dumps(small_failed(costInCents="NaN")).encode(), "costInCents", "number"),
    (json.dumps(small_failed(number=1.5)).encode(), "number", "expected a whole number"),
    (json.dumps(small_failed(costInCents=True)).encode(), "costInCents", "number"),
    (json.dumps(small_failed(tags="prod")).encode(), "tags", "list"),
    (json.dumps(small_failed(tags=[1])).encode(), "tags[0]", "string"),
    (json.dumps(small_failed(isTest="no")).encode(), "isTest", "expected true or false"),
    (json.dumps(small_failed(updatedAt="yesterday")).encode(), "updatedAt", "ISO-8601"),
    (json.dumps(small_failed(metadata=[1])).encode(), "", ""),  # kept as {"value": [...]}
    (json.dumps([small_failed(), small_failed(id=None)]).encode(), "[1].id", "string"),
    (json.dumps([small_failed(), small_failed(tags=["a", 3])]).encode(), "[1].tags[1]", "string"),
    (json.dumps([small_failed(createdAt="nope")]).encode(), "[0].createdAt", "ISO-8601"),
    (json.dumps({**RAW_ROW, "runTags": ["a", 3]}).encode(), "runTags[1]", "string"),
    (b'[{"id": "r", "status": "FAILED", "costInCents": 1e400}]', "[0].costInCents", "out of range"),
    (b'{"id": "r", "status": "FAILED", "metadata": {"n": [-1' + b"0" * 400 + b']}}',
     "metadata.n[0]", "number out of range: -1000000000000000000… (402 characters)"),
    (b'{"id": "r", "status": "FAILED", "costInCents": NaN}', "", "invalid JSON"),
    (
        b'{"id": "r", "status": "FAILED", "number": 123456789012345678901234567890}',
        "number",
        "whole number",
    ),
    (b"\xff\xfe{bad utf8}", "", "invalid JSON"),
    (b"[" * 2000 + b"]" * 2000, "", "invalid JSON"),  # nesting deeper than orjson allows
]  # fmt: skip


async def test_a_run_whose_data_nests_too_deep_still_alerts(
    relay: RelayFactory, sink: Sink
) -> None:
    """Metadata deep enough for orjson but too deep for the serialiser after the 202 (it was a
    500, then a 400 that lost the run): past 64 levels it is cut, with a note, and the run
    alerts."""
    r = await relay(CONFIG.replace("{type: console}", f"{{type: webhook, url: '{sink.url}'}}"))
    deep = json.loads('{"a":' * 250 + "1" + "}" * 250)
    status, answer, _ = await raw_post(
        r.url,
        json.dumps(small_failed(metadata=deep)).encode(),
        {"Content-Type": "application/json"},
    )
    assert (status, answer["notifications"]) == (202, 1), answer
    [got] = await sink.wait_for(1)
    text = got.body.decode()
    assert "(nested deeper than 64 levels)" in text and text.count('{"a"') < 70


async def test_bad_bodies_get_400_naming_the_field(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    for body, field, message in BAD_BODIES:
        status, answer, _ = await raw_post(r.url, body, {"Content-Type": "application/json"})
        if message == "":
            assert status == 202, answer
            continue
        assert status == 400, (body[:60], answer)
        assert answer.get("field") == field, (body[:60], answer)
        assert message in answer["error"], (body[:60], answer)


async def test_a_400_says_relay_s_words_not_pydantic_s(relay: RelayFactory) -> None:
    """POST /v1/runs said pydantic's "Input should be a valid string", "String should have at
    least 1 character", where `relay check` says "expected a whole number", "expected true or
    false": the same words now, in the same body, the field's path as it was."""
    r = await relay(CONFIG)
    said = {}
    for field, value in [
        ("id", 5), ("id", ""), ("tags", "prod"), ("isTest", "no"), ("number", 1.5),
        ("createdAt", "yesterday"),
    ]:  # fmt: skip
        body = json.dumps([small_failed(), small_failed(**{field: value})]).encode()
        status, answer, _ = await raw_post(r.url, body, {"Content-Type": "application/json"})
        assert status == 400, answer
        said[field, json.dumps(value)] = answer
    assert said == {
        ("id", "5"): {"error": "expected a string", "field": "[1].id"},
        ("id", '""'): {"error": "must not be empty", "field": "[1].id"},
        ("tags", '"prod"'): {"error": "expected a list", "field": "[1].tags"},
        ("isTest", '"no"'): {"error": "expected true or false", "field": "[1].isTest"},
        ("number", "1.5"): {"error": "expected a whole number", "field": "[1].number"},
        ("createdAt", '"yesterday"'): {
            "error": "expected an ISO-8601 time like 2026-01-01T00:00:00.000Z",
            "field": "[1].createdAt",
        },
    }


async def test_a_packet_too_deep_to_unwrap_is_kept_as_its_text(relay: RelayFactory) -> None:
    deep = json.dumps({"json": json.loads("[" * 300 + "]" * 300), "meta": {}})
    run = small_failed(payload=deep, payloadType="application/super+json")
    r = await relay(CONFIG)
    assert await r.post(run) == (202, {"accepted": 1, "stale": 0, "notifications": 1})


async def test_batch_is_all_or_nothing(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    good = small_failed(id="run_batch_good")
    status, _ = await r.post([good, {"id": "run_bad", "status": 7}])
    assert status == 400
    # nothing of the rejected batch was stored: the good run still fires when sent alone
    status, body = await r.post(good)
    assert (status, body["notifications"]) == (202, 1)


async def test_oversized_bodies_get_413(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    big = json.dumps(small_failed(payload="x" * 5000)).encode()
    status, answer, _ = await raw_post(r.url, big, {"Content-Type": "application/json"})
    assert status == 413 and "larger than 4096" in answer["error"]

    async def chunks() -> AsyncIterator[
        bytes
    ]:  # no Content-Length: the limit holds while streaming
        for _ in range(10):
            yield b" " * 1000

    async with (
        aiohttp.ClientSession() as http,
        http.post(r.url + "/v1/runs", data=chunks()) as resp,
    ):
        assert resp.status == 413


async def test_a_streamed_body_of_exactly_the_limit_is_taken(relay: RelayFactory) -> None:
    """A body that streams in (no Content-Length, its second half after a pause) is held to
    max_body_bytes as one that came whole: "larger bodies get 413", one of that size is taken."""
    r = await relay(CONFIG)

    async def halves(body: bytes) -> AsyncIterator[bytes]:
        yield body[:2000]
        await asyncio.sleep(0.05)  # the handler reads the rest as it comes
        yield body[2000:]

    answers = []
    for size in (4096, 4097):
        body = json.dumps(small_failed(pad="")).encode()
        body = json.dumps(small_failed(pad="x" * (size - len(body)))).encode()
        assert len(body) == size
        async with (
            aiohttp.ClientSession() as http,
            http.post(r.url + "/v1/runs", data=halves(body)) as resp,
        ):
            answers.append(resp.status)
    assert answers == [202, 413]


def _chunked(data: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:2000], data[2000:]))


async def test_a_body_that_arrives_whole_with_its_headers_has_the_same_limit(
    relay: RelayFactory,
) -> None:
    """A chunked body (no Content-Length) written at once with its headers is held whole by
    aiohttp before relay reads it; it is still refused over the limit, and taken under it."""
    r = await relay(CONFIG)
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
    big = json.dumps(small_failed(payload="x" * 5000)).encode()
    answer = await raw_exchange(r.url, head, _chunked(big) + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than 4096" in answer, answer[:200]
    fits = json.dumps(small_failed(payload="x" * 2500)).encode()
    answer = await raw_exchange(r.url, head, _chunked(fits) + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 202 ") and b'"notifications":1' in answer, answer[:200]


def one_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"identity , chunked"])
async def test_a_transfer_coding_besides_chunked_is_a_501_before_the_body(
    relay: RelayFactory, coding: bytes
) -> None:
    """aiohttp frames a body by the last transfer coding (chunked) and ignores the ones before:
    a gzipped run sent `Transfer-Encoding: gzip, chunked` was a 400 "invalid JSON", and a plain
    one labelled so was taken as it came. RFC 9112 §6.1: a transfer coding the server does not
    understand is a 501 (`Content-Encoding: gzip` is the way relay takes gzip); none stored."""
    r = await relay(CONFIG)
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
    head += b"Connection: close\r\nTransfer-Encoding: %s\r\n" % coding
    plain = json.dumps(small_failed()).encode()
    for data in (plain, gzip.compress(plain)):
        answer = await raw_exchange(r.url, head, one_chunk(data))
        assert answer.startswith(b"HTTP/1.1 501 "), answer[:200]
        said = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert said["error"].startswith("Transfer-Encoding other than chunked"), said
    assert sum((await r.service.store.counts()).values()) == 0
    chunked = head.replace(b"Transfer-Encoding: " + coding, b"Transfer-Encoding: Chunked")
    answer = await raw_exchange(r.url, chunked, one_chunk(plain))
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]


async def test_an_http_1_1_request_without_host_is_a_400_and_http_1_0_needs_none(
    relay: RelayFactory,
) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host (aiohttp
    3.14's parser refuses it; relay answers in its JSON shape). HTTP/1.0 has no Host to lack,
    and an empty Host is an HTTP/1.1 request's own way to name no authority."""
    r = await relay(CONFIG)
    body = json.dumps(small_failed()).encode()
    tail = b"Content-Length: %d\r\nConnection: close\r\n" % len(body)
    answer = await raw_exchange(r.url, b"POST /v1/runs HTTP/1.1\r\n" + tail, body)
    head, _, said = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400" and b"application/json" in head, answer[:200]
    assert json.loads(said) == {"error": "malformed HTTP request"}
    for request_line in (b"POST /v1/runs HTTP/1.0\r\n", b"POST /v1/runs HTTP/1.1\r\nHost:\r\n"):
        answer = await raw_exchange(r.url, request_line + tail, body)
        assert answer.split()[1] == b"202", (request_line, answer[:200])


async def test_bearer_token(relay: RelayFactory) -> None:
    """Each 401 carries its challenge (RFC 9110 §15.5.2) as RFC 6750 writes it: with a realm
    (it was a bare `Bearer`), and `error="invalid_token"` when a bearer token was wrong."""
    r = await relay(AUTH_CONFIG)
    challenge = 'Bearer realm="relay"'
    for headers, said in (
        ({}, challenge),
        ({"Authorization": "Bearer wrong"}, challenge + ', error="invalid_token"'),
        ({"Authorization": "Basic s3cret-token"}, challenge),
        ({"Authorization": "Bearer"}, challenge),
    ):
        status, answer, resp_headers = await raw_post(
            r.url, json.dumps(small_failed()).encode(), headers
        )
        assert status == 401, headers
        assert resp_headers.getall("WWW-Authenticate") == [said], headers
        assert "s3cret-token" not in json.dumps(answer)
    status, _ = await r.post(small_failed(), token="s3cret-token")
    assert status == 202


async def test_unauthenticated_oversized_body_is_401_not_read(relay: RelayFactory) -> None:
    r = await relay(AUTH_CONFIG)
    status, _, _ = await raw_post(r.url, b"x" * 100_000)
    assert status == 401


async def test_stale_updates_are_counted(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    await r.post(small_failed(updatedAt="2026-01-01T00:00:10Z"))
    status, body = await r.post(small_failed(updatedAt="2026-01-01T00:00:05Z", status="EXECUTING"))
    assert status == 202 and body == {"accepted": 1, "stale": 1, "notifications": 0}


async def test_health_and_readiness(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    async with r.http.get(r.url + "/healthz") as resp:
        assert resp.status == 200
    async with r.http.get(r.url + "/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ready"
    await r.service.store.close()  # the store goes away: not ready, and ingest refuses with 503
    async with r.http.get(r.url + "/readyz") as resp:
        assert resp.status == 503
    status, _, headers = await raw_post(r.url, json.dumps(small_failed()).encode())
    assert status == 503 and headers["Retry-After"]


async def test_unknown_paths_and_methods_get_json_errors(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    async with r.http.get(r.url + "/v1/nope") as resp:
        assert resp.status == 404 and await resp.json() == {"error": "no such endpoint"}
    async with r.http.get(r.url + "/v1/runs") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "method GET not allowed"}


async def test_a_failing_handler_answers_a_json_500_and_logs_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in a handler (here /readyz without its probe) is a JSON error like every other
    answer, not aiohttp's plain-text page, and its traceback is in the log."""
    deps = HttpDeps(
        intake=None,  # type: ignore[arg-type]  # /readyz reads neither
        store=None,  # type: ignore[arg-type]
        auth_token=lambda: None,
        admin_token=lambda: None,
        max_body_bytes=lambda: 1024,
        max_body_bytes_in_flight=lambda: 8 * 1024 * 1024,
        ready=None,  # type: ignore[arg-type]  # calling it raises TypeError
        clock=time.time,
    )
    async with TestClient(TestServer(build_app(deps))) as client:
        resp = await client.get("/readyz")
        assert resp.status == 500 and resp.content_type == "application/json"
        assert (await resp.json())["error"].startswith("internal error")
        assert resp.headers["Server"] == "relay"  # aiohttp's named Python's and its versions
        missing = await client.get("/nope")
        assert missing.status == 404 and missing.headers["Server"] == "relay"
    [failed] = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert failed.exc_info is not None and getattr(failed, "path", None) == "/readyz"


async def test_messages_speak_to_people_not_of_pydantic(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    status, body = await r.post(small_failed(updatedAt="0001-01-01T00:00:00+01:00"))
    assert status == 400 and body["field"] == "updatedAt"
    assert body["error"] == "date out of range (years 1-9999 in UTC)"


async def raw_exchange(url: str, head: bytes, body: bytes = b"") -> bytes:
    """Bytes on a socket (headers aiohttp's client would not send), the answer until it closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"\r\n" + body)
    answer = await reader.read(65536)
    writer.close()
    return answer


async def test_a_token_that_is_not_utf8_is_a_401_not_a_500(relay: RelayFactory) -> None:
    r = await relay(AUTH_CONFIG)
    body = json.dumps(small_failed()).encode()
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer s3cret\xff\xfe\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n" % len(body)
    answer = await raw_exchange(r.url, head, body)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]


@pytest.mark.parametrize(
    ("line", "status", "error"),
    [
        (b"Content-Encoding: gz\xefp", b"415 ", "Content-Encoding gz\ufffdp is not supported"),
        (b"Expect: 100-\xffcontinue", b"417 ", "unknown Expect: 100-\ufffdcontinue"),
    ],
    ids=["content-encoding", "expect"],
)
async def test_a_header_that_is_not_utf8_quoted_in_an_error_is_not_a_500(
    relay: RelayFactory, line: bytes, status: bytes, error: str
) -> None:
    """aiohttp hands such bytes over as surrogates, which orjson refuses: quoted back in the
    415 or 417, they were a 500 and an ERROR traceback a request. They read as U+FFFD."""
    r = await relay(CONFIG)
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\n" + line + b"\r\nContent-Length: 2\r\n"
    answer = await raw_exchange(r.url, head, b"[]")
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"].startswith(error), answer


async def test_a_client_gone_mid_body_is_a_refusal_not_an_error_traceback(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender that disconnects half-way through its body (a timeout, a crash) is the
    sender's problem: one rate-limited `request refused` warning, not an ERROR with a
    traceback per request (which pages whoever alerts on relay's error lines)."""
    r = await relay(CONFIG)
    host, port = r.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b'POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Length: 500\r\n\r\n{"id"')
    await writer.drain()
    writer.close()
    for _ in range(3000):  # bounded: the server notices the close within milliseconds
        if any(rec.getMessage() == "request refused" for rec in caplog.records):
            break
        await asyncio.sleep(0.01)
    [line] = [rec for rec in caplog.records if rec.getMessage() == "request refused"]
    assert getattr(line, "reason") == "bad_request"
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


async def test_a_refusal_line_says_what_the_client_was_told(
    relay: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A pusher's runs refused with 400 showed in relay's log as `request refused`, `reason
    bad_request` and nothing more: the operator had to find the pusher's own log to learn that
    its runs lacked a status. The line says the error and field the client was answered."""
    r = await relay(AUTH_CONFIG)
    headers = {"Authorization": "Bearer s3cret-token"}
    status, answer, _ = await raw_post(r.url, b'{"id": "run_no_status"}', headers)
    assert (status, answer) == (400, {"error": "required field is missing", "field": "status"})
    assert (await raw_post(r.url, b"{}", {}))[0] == 401
    said = {
        getattr(rec, "reason"): (getattr(rec, "error"), getattr(rec, "field", None))
        for rec in caplog.records
        if rec.getMessage() == "request refused"
    }
    assert said == {
        "bad_request": ("required field is missing", "status"),
        "unauthorized": ("missing or wrong bearer token", None),
    }


async def test_expect_100_continue_refuses_before_the_body(relay: RelayFactory) -> None:
    """A client that asks first (curl does for large bodies) hears 401/413 instead of `100
    Continue`, and so never sends a body that would be refused."""
    r = await relay(AUTH_CONFIG)
    ask = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nExpect: 100-continue\r\n"
    refusals = [
        (ask + b"Content-Length: 10\r\n", b"401 "),
        (ask + b"Authorization: Bearer s3cret-token\r\nContent-Length: 5000\r\n", b"413 "),
    ]
    for head, status in refusals:
        answer = await raw_exchange(r.url, head)  # no body sent: the answer comes anyway
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        assert b"100 Continue" not in answer and answer.endswith(b"}")
    answer = await raw_exchange(r.url, ask.replace(b"100-continue", b"coffee"))
    assert answer.startswith(b"HTTP/1.1 417 ") and answer.endswith(b'"unknown Expect: coffee"}')
    body = json.dumps(small_failed()).encode()
    host, port = r.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        ask + b"Authorization: Bearer s3cret-token\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert (await reader.readline()).startswith(b"HTTP/1.1 202 ")
    writer.close()
    http10 = b"POST /v1/runs HTTP/1.0\r\nHost: relay\r\nAuthorization: Bearer s3cret-token\r\n"
    for expect in (b"100-continue", b"coffee"):  # HTTP/1.0 knows no Expect: it is ignored
        head = http10 + b"Expect: %s\r\nContent-Length: %d\r\n" % (expect, len(body))
        answer = await raw_exchange(r.url, head, body)
        assert answer.startswith(b"HTTP/1.0 202 "), answer[:80]


async def test_content_codings(relay: RelayFactory) -> None:
    """gzip and deflate bodies are taken (a coding's name in any case, an empty list element
    skipped: RFC 9110 §8.4.1, §5.6.1), the size limit holds for what they inflate to, a
    corrupt one is a 400 and an unknown coding a 415 naming what to use: JSON answers all."""
    r = await relay(CONFIG)
    run = json.dumps(small_failed()).encode()
    big = gzip.compress(b"[" + b" " * 10_000_000 + b"]")  # 10 KB that inflate to 10 MB
    answers = []
    for coding, body in [
        ("gzip", gzip.compress(run)),
        ("x-gzip", gzip.compress(run)),
        ("deflate", zlib.compress(run)),
        ("identity", run),
        ("gzip, gzip", gzip.compress(gzip.compress(run))),
        ("GZip", gzip.compress(run)),
        ("gzip, , identity,", gzip.compress(run)),
        ("gzip", big),
        ("gzip, gzip", gzip.compress(big)),  # too large once one coding is undone
        ("gzip", b"not gzip at all"),
        ("gzip", zlib.compress(run)),  # deflate's zlib stream is no gzip
        ("gzip", gzip.compress(run)[:-12]),  # cut short
        ("br", run),
        ("zstd", run),
        ("made-up", run),
    ]:
        headers = {"Content-Type": "application/json", "Content-Encoding": coding}
        status, answer, resp_headers = await raw_post(r.url, body, headers)
        answers.append((status, answer.get("error", "")[:24]))
        if status == 415:
            assert resp_headers["Accept-Encoding"] == "gzip, deflate"
        if status == 400:  # the body as a whole, as every 400 names a field
            assert answer["field"] == "", answer
    assert answers == [(202, "")] * 7 + [
        (413, "body larger than 4096 by"),
        (413, "body larger than 4096 by"),
        (400, "body is not valid gzip ("),
        (400, "body is not valid gzip ("),
        (400, "body is not valid gzip ("),
        (415, "Content-Encoding br is n"),
        (415, "Content-Encoding zstd is"),
        (415, "Content-Encoding made-up"),
    ]


async def test_a_coded_body_may_inflate_to_the_size_limit_and_no_further(
    relay: RelayFactory,
) -> None:
    """max_body_bytes holds for what a coded body inflates to as for a plain one, the limit
    itself taken: 4,096 bytes are a run, 4,097 a 413, whether plain, gzip, deflate (zlib) or
    raw deflate (no zlib header, as some clients send) carries them."""
    r = await relay(CONFIG)
    for size, status in ((4096, 202), (4097, 413)):
        body = json.dumps(small_failed(pad="")).encode()
        body = json.dumps(small_failed(pad="x" * (size - len(body)))).encode()
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        for coding, data in [
            ("identity", body),
            ("gzip", gzip.compress(body)),
            ("deflate", zlib.compress(body)),
            ("deflate", raw.compress(body) + raw.flush()),
        ]:
            got, answer, _ = await raw_post(r.url, data, {"Content-Encoding": coding})
            assert (len(body), got) == (size, status), (coding, answer)


async def test_content_codings_over_several_header_lines_and_gzip_members(
    relay: RelayFactory,
) -> None:
    """Two `Content-Encoding` lines are one list (RFC 9110 §5.3), and a gzip body may hold
    several members (RFC 1952 §2.2, what `cat a.gz b.gz` makes; Python and Go read them all).
    relay undid the first line's codings only, and inflated the first member only: a 400
    "invalid JSON" for a body sent right. Bytes after the last member are not gzip: a 400."""
    r = await relay(CONFIG)
    run = json.dumps(small_failed()).encode()
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
    twice = gzip.compress(gzip.compress(run))
    lines = b"Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n"
    answer = await raw_exchange(r.url, head + lines + b"Content-Length: %d\r\n" % len(twice), twice)
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    lines = b"Content-Encoding: identity\r\nContent-Encoding: br\r\nContent-Length: 2\r\n"
    assert (await raw_exchange(r.url, head + lines, b"[]")).startswith(b"HTTP/1.1 415 ")
    members = gzip.compress(run[:10]) + gzip.compress(run[10:])
    status, body, _ = await raw_post(r.url, members, {"Content-Encoding": "gzip"})
    assert (status, body["accepted"]) == (202, 1), body
    status, body, _ = await raw_post(
        r.url, gzip.compress(run) + b"junk", {"Content-Encoding": "gzip"}
    )
    assert (status, body["error"]) == (400, "body is not valid gzip (Content-Encoding)")
    many = gzip.compress(b" ") * 16 + gzip.compress(run)  # each member copies what follows
    status, body, _ = await raw_post(r.url, many, {"Content-Encoding": "gzip"})
    assert (status, body["error"]) == (
        400,
        "body is not valid gzip of at most 16 members (Content-Encoding)",
    )


async def test_a_byte_order_mark_is_ignored(relay: RelayFactory) -> None:
    """RFC 8259 lets a parser ignore it, and Windows tools (PowerShell, Notepad) write it."""
    r = await relay(CONFIG)
    status, body, _ = await raw_post(r.url, b"\xef\xbb\xbf" + json.dumps(small_failed()).encode())
    assert (status, body["notifications"]) == (202, 1)
    silence = {"matchers": {"task": "x"}, "ends_at": "2099-01-01T00:00:00Z"}
    async with r.http.post(
        r.url + "/v1/silences", data=b"\xef\xbb\xbf" + json.dumps(silence).encode()
    ) as resp:
        assert resp.status == 201


def test_refused_requests_are_logged_once_per_path_and_reason_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong token or alert secret showed only in a metric; a scanner must not flood the log."""
    now = [0.0]
    refusals = RefusalLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="relay.http"):
        for t in (0.0, 1.0, 2.0, 5.0, 11.0):
            now[0] = t
            refusals.refused("/v1/runs", "unauthorized", 401)
        refusals.refused("/v1/runs", "too_large", 413)
    lines = [(getattr(r, "reason"), getattr(r, "refused")) for r in caplog.records]
    assert lines == [("unauthorized", 1), ("unauthorized", 4), ("too_large", 1)]


async def test_every_update_refused_in_a_store_outage_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals after the first line of an outage wait for the next line, due 10 s later: an
    outage that ended before never told them, and the log said 1 where clients got 3 503s."""
    store = SQLiteStore(tmp_path / "relay.db")
    async with store_outages(store) as post_at:
        await store.close()  # the outage: the first refusal is told at once, the others wait
        assert [await post_at(t) for t in (0.0, 1.0, 2.0)] == [503, 503, 503]
        await store.open()  # over
        assert [await post_at(t) for t in (4.0, 12.0, 13.0)] == [202, 202, 202]
    assert refusal_lines(caplog) == [
        ("store unavailable; update refused", 1),
        ("store available again; updates refused since the last line", 2),
    ]


async def test_an_outage_starting_just_after_the_last_one_ended_is_told_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line saying an outage was over took the slot of the next refusal line: a disk full
    again 2 s after the operator freed space had no line for 10 s, and then only `available
    again` lines, as if all were well (seen with a tmpfs filled twice under 300 updates/s)."""
    store = SQLiteStore(tmp_path / "relay.db")
    async with store_outages(store) as post_at:
        await store.close()
        assert [await post_at(t) for t in (0.0, 1.0)] == [503, 503]
        await store.open()
        assert await post_at(20.0) == 202
        await store.close()  # the second outage, 1 s after the first was said over
        assert await post_at(21.0) == 503
        await store.open()
    assert refusal_lines(caplog) == [
        ("store unavailable; update refused", 1),
        ("store available again; updates refused since the last line", 1),
        ("store unavailable; update refused", 1),
    ]


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [
        (r.getMessage(), getattr(r, "refused")) for r in caplog.records if hasattr(r, "refused")
    ]


@contextlib.asynccontextmanager
async def store_outages(store: SQLiteStore) -> AsyncIterator[Callable[[float], Awaitable[int]]]:
    """The HTTP intake on `store` (opened here, closed after) with the refusal log's clock set
    by the `post_at(t)` yielded: it posts one new failed run at time t and gives the status."""
    now = [0.0]
    await store.open()
    rules, _ = compile_rules([], lambda *_: "")
    deps = HttpDeps(
        intake=Intake(store, lambda: rules, lambda channel: None),
        store=store,
        auth_token=lambda: None,
        admin_token=lambda: None,
        max_body_bytes=lambda: 4096,
        max_body_bytes_in_flight=lambda: 8 * 1024 * 1024,
        ready=None,  # type: ignore[arg-type]  # not asked
        clock=time.time,
        refusals=RefusalLog(clock=lambda: now[0]),
    )
    async with TestClient(TestServer(build_app(deps))) as client:

        async def post_at(t: float) -> int:
            now[0] = t
            async with client.post("/v1/runs", json=small_failed(id=f"run_{t}")) as resp:
                return resp.status

        try:
            yield post_at
        finally:
            await store.close()
