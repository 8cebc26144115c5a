"""Fuzzing with hypothesis: what comes from outside never gets a 5xx, a crash or a hang.

* POST /v1/runs with arbitrary JSON, mutated SDK and raw-row fixtures (wrong types everywhere,
  deep nesting, huge numbers, NaN/Infinity literals, long strings, duplicate keys, bad UTF-8,
  random bytes): 202, or a 400/413 with a JSON {"error": "..."}.
* POST /v1/trigger/alerts with mutated alert webhook fixtures, correctly signed so the parser is
  reached: the same.
* Realtime (Electric shape) responses, mutated, through relay.sources._shape.Shape and
  relay.formats.electric.parse_raw_run the way the Realtime source calls them: only ShapeError
  and InputError (which the source handles) may come out, and the rows and position must be
  writable as the follower stores them (rows nested past orjson's 255 levels included).
* Every channel's shipped run and digest templates render any run intake accepted from such a
  body without falling back.
* POST /v1/silences with mutated silences (hostile matcher strings, times, types) and
  GET /v1/notifications with arbitrary query parameters: a 2xx, or a 400 with its error.
* The YAML config (random YAML-ish text, mutations of a full config): a LoadedConfig or a
  ConfigError whose problems all say something.

A running relay is started once per test; hypothesis runs in a worker thread posting with a
blocking client while the event loop serves relay. Examples are bounded (max_examples, sizes).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import http.client
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.channels import REGISTRY, settings_models
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import ConfigError, InputError
from relay.formats import parse_body, parse_runs
from relay.formats.electric import parse_raw_run
from relay.grouping import digest_context
from relay.model import Run
from relay.render_context import RenderContext
from relay.sources._messages import ShapeError
from relay.sources._shape import Position, Shape
from relay.templating import Rendered, Renderer
from tests.conftest import FIXTURES, REPO, RelayFactory
from tests.test_realtime import nested

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A hostile body must not make relay work hard: CPU seconds per request, client and in-process
# relay together (process time: the wall clock of a loaded machine would fail a correct relay).
REQUEST_CPU_S = 5.0
REQUEST_TIMEOUT_S = 60.0  # no answer at all in this long is a hang (a guard, not the measure)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=12,
)
NASTY: st.SearchStrategy[Any] = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        1.7976931348623157e308,
        5e-324,
        -0.0,
        "",
        " ",
        "x" * 20_000,
        "9" * 400,  # numeric text past a float: was an OverflowError
        "-1" + "0" * 5000,
        "🔥" * 1000,
        "\u0000",
        "\u2028\u2029",
        "2026-13-45T25:61:61Z",
        "0000-00-00",
        "9999-12-31T23:59:59.999999999Z",
        "infinity",
        "NaN",
        "{not json",
        '{"json": {"a": 1}, "meta": {}}',
        "application/super+json",
        "application/store",
        "{{ run.__class__ }}",
        [],
        {},
        [[[[[[[[[[[]]]]]]]]]]],
        {"__proto__": {"polluted": True}},
        ["a", 1, None, {"b": []}],
    ]
)
VALUES = NASTY | JSON


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


SDK_RUNS = [load_json(p) for p in sorted((FIXTURES / "realtime-run" / "sdk").glob("*.json"))]
RAW_ROWS = [load_json(p) for p in sorted((FIXTURES / "realtime-run" / "raw-row").glob("*.json"))]
WIRE_ROWS = [
    load_json(p) for p in sorted((FIXTURES / "realtime-run" / "wire-value").glob("*.json"))
]
ALERT_BODIES = sorted((FIXTURES / "alert-webhooks").glob("*.body.json"))
FEED = load_json(FIXTURES / "electric" / "session_tag_feed.json")["exchanges"]
RESPONSES = [ex["response"] for ex in FEED if ex["response"]["status"] == 200]
RESPONSES.append(
    {
        "status": 200,
        "headers": load_json(FIXTURES / "electric" / "live_response.headers.json")["headers"],
        "body": load_json(FIXTURES / "electric" / "live_response.body.json"),
    }
)
assert SDK_RUNS and RAW_ROWS and WIRE_ROWS and ALERT_BODIES and len(RESPONSES) > 1


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items: Any = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in items:
        out.append((*prefix, key))
        out += paths(value, (*prefix, key))
    return out


@st.composite
def mutated(draw: st.DrawFn, bases: list[Any]) -> Any:
    """A fixture with 1-4 of: a value replaced (wrong type...), removed, a key added, wrapped."""
    data = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        where = paths(data)
        if not where:
            return copy.deepcopy(draw(VALUES))
        path = draw(st.sampled_from(where))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap"]))
        if op == "replace":  # copies: NASTY values are shared objects
            parent[key] = copy.deepcopy(draw(VALUES))
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = copy.deepcopy(draw(VALUES))
        elif op == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
    return data


def deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def raw_text_mutation(draw: st.DrawFn, text: str) -> bytes:
    """Byte-level trouble in an otherwise plausible JSON document."""
    op = draw(
        st.sampled_from(
            [
                "number_literal",
                "duplicate_key",
                "bad_utf8",
                "random_bytes",
                "truncate",
                "nest",
                "as_is",
            ]
        )
    )
    data = text.encode()
    if op == "number_literal":
        literal = draw(
            st.sampled_from(
                ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0",
                 "123456789012345678901234567890", "0x10", "01", "1.", ".5", "+1"]
            )
        )  # fmt: skip
        numbers = [m.span() for m in re.finditer(rb"(?<=: )-?\d+(\.\d+)?", data)]
        if numbers:
            start, end = draw(st.sampled_from(numbers))
            return data[:start] + literal.encode() + data[end:]
        return data.replace(b"{", b'{"durationMs": ' + literal.encode() + b", ", 1)
    if op == "duplicate_key":
        value = json.dumps(draw(VALUES)).encode()
        key = draw(st.sampled_from([b"id", b"status", b"updatedAt", b"tags", b"metadata"]))
        return data.replace(b"{", b'{"' + key + b'": ' + value + b", ", 1)
    if op == "bad_utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        at = draw(st.integers(0, len(data)))
        return data[:at] + junk + data[at:]
    if op == "random_bytes":
        return draw(st.binary(max_size=300))
    if op == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if op == "nest":  # in any object: a Realtime row is the value of a message
        depth = draw(st.sampled_from([63, 65, 254, 256, 1023, 1025]) | st.integers(1, 3000))
        opens = [m.end() for m in re.finditer(rb"\{", data)]
        at = draw(st.sampled_from(opens)) if opens else 0
        return data[:at] + b'"metadata": ' + deep(depth).encode() + b", " + data[at:]
    return data


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


@st.composite
def run_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "sdk", "sdk", "raw", "wire", "batch", "deep"]))
    if kind == "json":
        return dumps(draw(VALUES)).encode()
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return deep(depth, '{"id": "r", "status": "FAILED"}').encode()
    bases = {"sdk": SDK_RUNS, "raw": RAW_ROWS, "wire": WIRE_ROWS, "batch": SDK_RUNS}[kind]
    value = draw(mutated(bases))
    if kind == "batch":
        value = [value, *draw(st.lists(mutated(SDK_RUNS + RAW_ROWS), max_size=3))]
    return draw(raw_text_mutation(dumps(value)))


class Client:
    """A blocking keep-alive HTTP client for the hypothesis thread; `post` also says how much
    CPU the process (this client and the relay serving it) spent on the request."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def post(
        self, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
    ) -> tuple[int, bytes, float]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=REQUEST_TIMEOUT_S
                )
            started = time.process_time()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()  # the server closed a kept-alive connection: once more, fresh
                if attempt:
                    raise
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return resp.status, data, time.process_time() - started
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def assert_clear_answer(status: int, data: bytes, body: bytes, accepted: set[int]) -> Any:
    shown = body[:200]
    assert status < 500, (status, data[:300], shown)
    assert status in accepted, (status, data[:300], shown)
    answer = json.loads(data)
    if status >= 400:
        assert isinstance(answer, dict), (answer, shown)
        assert isinstance(answer.get("error"), str) and answer["error"].strip(), (answer, shown)
    return answer


async def fuzz_endpoint(
    r: Any,
    path: str,
    strategy: st.SearchStrategy[Any],
    sign: Callable[[bytes], dict[str, str]],
    accepted: frozenset[int] = frozenset({202, 400, 413}),
    examples: int = FUZZ.max_examples,
) -> Counter[int]:
    """Post every example to `path` from a worker thread; return the answers by status. A
    strategy of (path, b"") pairs GETs each path instead."""
    client = Client(r.url)
    counts: Counter[int] = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(example=strategy)
    def check(example: bytes | tuple[str, bytes]) -> None:
        where, body = example if isinstance(example, tuple) else (path, example)
        headers = {"Content-Type": "application/json", **sign(body)}
        method = "GET" if isinstance(example, tuple) else "POST"
        status, data, cpu_s = client.post(where, body, headers, method)
        assert cpu_s < REQUEST_CPU_S
        answer = assert_clear_answer(status, data, body or where.encode(), set(accepted))
        counts[status] += 1
        if status == 202:
            assert answer["accepted"] >= 0 and answer["notifications"] >= 0

    try:
        await asyncio.to_thread(check)
    finally:
        client.close()
    async with r.http.get(r.url + "/healthz") as resp:
        assert resp.status == 200
    print(path, dict(counts))
    return counts


ALERT_SECRET = "fuzz-alert-secret-0123456789"
CONFIG = f"""\
server:
  max_body_bytes: 262144
sources:
  trigger_alerts:
    secret: {ALERT_SECRET}
channels:
  out: {{type: console}}
rules:
  - name: failures
    match: {{status: [failure]}}
    when: "run.durationMs > 1 or 'vip' in run.tags or run.metadata.tier == 'x'"
    notify: [out]
  - name: deployments
    match: {{event: deployment.failed}}
    notify: [out]
  - name: errors
    match: {{event: error}}
    notify: [out]
"""


async def test_fuzz_post_runs(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    answers = await fuzz_endpoint(r, "/v1/runs", run_bodies(), lambda body: {})
    assert answers[202] and answers[400]  # both sides were reached


def alert_bodies() -> st.SearchStrategy[bytes]:
    texts = [p.read_text() for p in ALERT_BODIES]
    documents = [json.loads(t) for t in texts]

    @st.composite
    def bodies(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(["exact", "mutated", "mutated", "mutated", "legacy", "json"]))
        if kind == "exact":
            return draw(st.sampled_from(texts)).encode()
        if kind == "json":
            return dumps(draw(VALUES)).encode()
        value = draw(mutated(documents))
        if kind == "legacy" and isinstance(value, dict):  # the un-enveloped v1 shapes
            inner = value.get("object")
            value = inner if isinstance(inner, dict) else value
            value.pop("type", None)
        return draw(raw_text_mutation(dumps(value)))

    return bodies()


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(ALERT_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"x-trigger-signature-hmacsha256": digest}


async def test_fuzz_trigger_alert_webhooks(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    answers = await fuzz_endpoint(r, "/v1/trigger/alerts", alert_bodies(), signed)
    assert answers[202] and answers[400]  # the signature held: the parser was reached


SILENCE = {
    "matchers": {"rule": "failures", "task": ["billing/*", "[!a]"], "event": "run"},
    "starts_at": "2026-01-01T00:00:00Z",
    "ends_at": "2099-01-01T00:00:00+02:00",
    "comment": "deploy",
    "created_by": "ops",
}


@st.composite
def silence_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["texts", "mutated", "raw"]))
    if kind == "texts":  # valid but for what the strings hold
        names = st.text(min_size=1, max_size=30)
        matchers = {"task": draw(names), "tag": draw(st.lists(names, min_size=1, max_size=3))}
        return dumps({**SILENCE, "matchers": matchers, "comment": draw(st.text())}).encode()
    text = dumps(draw(mutated([SILENCE])))
    return draw(raw_text_mutation(text)) if kind == "raw" else text.encode()


async def test_fuzz_post_silences(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    answers = await fuzz_endpoint(
        r, "/v1/silences", silence_bodies(), lambda body: {}, frozenset({201, 400, 413}), 30
    )  # 30: a silence created waits out RELOAD_S (0.25 s) before its answer
    assert answers[201] and answers[400]


HISTORY_PARAMS = st.dictionaries(
    st.sampled_from(["run_id", "rule", "channel", "state", "since", "before", "limit", "x"]),
    st.text(max_size=30) | st.sampled_from(["1h", "-1h", "1e400h", "10000", "0", "sent", "\x00"])
    | NASTY.filter(lambda v: isinstance(v, str) and len(v) < 2000),
    max_size=4,
)  # fmt: skip


@st.composite
def history_queries(draw: st.DrawFn) -> tuple[str, bytes]:
    params = draw(HISTORY_PARAMS)
    query = urlencode(params, encoding="utf-8", errors="surrogatepass")
    return f"/v1/notifications?{query}", b""


async def test_fuzz_history_queries(relay: RelayFactory) -> None:
    r = await relay(CONFIG)
    status, _ = await r.post({"id": "run_1", "status": "FAILED", "taskIdentifier": "t"})
    assert status == 202  # a notification for `before` and the filters to find
    answers = await fuzz_endpoint(r, "", history_queries(), lambda body: {}, frozenset({200, 400}))
    assert answers[200] and answers[400]


# ----------------------------------------------------------------------- Realtime (pure functions)


@st.composite
def shape_responses(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    response = draw(st.sampled_from(RESPONSES))
    headers = {k: str(v) for k, v in response["headers"].items()}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(
            st.sampled_from(
                ["electric-handle", "electric-offset", "electric-schema", "electric-cursor",
                 "electric-up-to-date"]
            )
        )  # fmt: skip
        if draw(st.booleans()):
            headers.pop(name, None)
        else:
            headers[name] = draw(
                st.text(max_size=40) | st.sampled_from(["{}", "[]", "null", '{"status": 5}'])
                | st.builds(dumps, mutated([load_json_schema(response)]))
            )  # fmt: skip
    messages = copy.deepcopy(response["body"])
    if draw(st.booleans()):
        messages = draw(mutated([messages])) if messages else draw(VALUES)
    listed = messages if isinstance(messages, list) else []
    rows = [m["value"] for m in listed if isinstance(m, dict) and isinstance(m.get("value"), dict)]
    deeper: bool = draw(st.booleans())  # a native backend's metadata object, deeper than stored
    if rows and deeper:
        draw(st.sampled_from(rows))["metadata"] = nested(draw(st.integers(200, 900)))
    body = draw(raw_text_mutation(dumps(messages))) if draw(st.booleans()) else dumps(messages)
    return headers, body if isinstance(body, bytes) else body.encode()


def load_json_schema(response: dict[str, Any]) -> Any:
    text = response["headers"].get("electric-schema")
    return json.loads(text) if text else {"status": {"type": "text"}}


@FUZZ
@given(first=shape_responses(), second=shape_responses())
def test_fuzz_realtime_shape_messages(
    first: tuple[dict[str, str], bytes], second: tuple[dict[str, str], bytes]
) -> None:
    shape = Shape()
    for headers, body in (first, second):  # a snapshot, then changes merged into its rows
        try:
            batch = shape.receive(200, headers, body)
        except ShapeError as exc:
            assert str(exc)
            continue
        assert Position.loads(shape.position.dumps()) is not None
        for row in shape.unsaved().put.values():  # the follower stores them as JSON
            orjson.dumps(row)
        shape.saved()
        if batch is None:
            continue
        for row in batch.rows:
            try:
                run = parse_raw_run(row, schema=batch.position.schema)
            except InputError as exc:
                assert exc.message
                continue
            assert isinstance(run, Run)
            run.as_dict()


@FUZZ
@given(
    row=mutated(RAW_ROWS + WIRE_ROWS), schema=st.none() | mutated([load_json_schema(RESPONSES[0])])
)
def test_fuzz_realtime_rows(row: Any, schema: Any) -> None:
    if not isinstance(row, dict) or not isinstance(schema, dict | None):
        return  # the Shape only ever hands over dict rows and dict schemas
    row.setdefault("friendlyId", "run_x")
    try:
        run = parse_raw_run(row, schema=schema)
    except InputError as exc:
        assert exc.message
        return
    run.as_dict()


RUN_TEMPLATES = ("run", "run_failed", "recovered", "run_resolve")


@st.composite
def accepted_runs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """What intake holds of a hostile body (as the store and templates see it), or nothing."""
    try:
        return [run.as_dict() for run in parse_runs(parse_body(draw(run_bodies())))]
    except InputError:
        return []


@settings(FUZZ, max_examples=30)  # every channel's run and digest templates: ~0.1 s an example
@given(runs=accepted_runs())
def test_fuzz_shipped_templates_render_any_accepted_run(runs: list[dict[str, Any]]) -> None:
    """Every channel's shipped run and digest templates render what intake accepted (deep
    metadata, numbers past 64 bits, U+FFFD for lone surrogates, odd types) without falling
    back to the plain message: a fallback there is a template bug every user meets."""
    renderer = Renderer()
    for run in runs[:1]:
        for channel_type, channel in REGISTRY.items():
            ctx = render_context(run, channel_type)
            for name in RUN_TEMPLATES:
                if renderer.has_template(channel_type, name, channel.parts[0]):
                    assert_rendered(renderer.render(channel_type, name, channel.parts, ctx))
            group = digest_context("grp_1", {"taskIdentifier": "t"}, [run, *runs[1:]])
            digest = replace(ctx, group=group)
            assert_rendered(renderer.render(channel_type, "digest", channel.parts, digest))


def render_context(run: dict[str, Any], channel_type: str) -> RenderContext:
    return RenderContext(
        run=run,
        rule="failures",
        channel="out",
        channel_type=channel_type,
        notification_id="ntf_1",
        dashboard_url=f"https://cloud.trigger.dev/runs/{run.get('id')}",
    )


def assert_rendered(rendered: Rendered) -> None:
    assert not rendered.fallback, rendered.error
    for text in rendered.parts.values():
        text.encode()  # sendable: no lone surrogate


@FUZZ
@given(text=st.text(max_size=200) | st.builds(dumps, VALUES))
def test_fuzz_stored_positions(text: str) -> None:
    position = Position.loads(text)
    assert position is None or Position.loads(position.dumps()) == position


# ----------------------------------------------------------------------- the YAML config

FULL_CONFIG = """\
server:
  auth_token: ${TOKEN}
  admin_token: ${ADMIN:-}
  max_body_bytes: 1048576
sources:
  trigger_alerts: {secret: "${ALERT}"}
  realtime:
    api_url: https://api.trigger.dev
    secret_key: ${KEY}
    feeds:
      - tags: [env:prod]
      - run_id: run_abc
defaults:
  project_ref: proj_abc123
  dashboard_url: "https://cloud.trigger.dev/projects/v3/{project_ref}/runs/{run_id}"
  retry: {max_attempts: 12, max_age: 24h, min_backoff: 1s, max_backoff: 10m}
  timeout: 10s
channels:
  console: {type: console}
  pager:
    type: webhook
    url: https://example.com/hook?key=${KEY}
    headers: {X-Team: core}
    rate_limit: {per_second: 5, burst: 10}
  slack: {type: slack, webhook_url: "https://hooks.slack.com/services/T/B/X"}
  mail:
    type: email
    smtp: {host: smtp.example.com, port: 587, starttls: true, username: u, password: "${KEY}"}
    from: relay@example.com
    to: [team@example.com]
rules:
  - name: prod-failures
    match:
      status: [FAILED, CRASHED, TIMED_OUT]
      task: ["billing/*", "invoice-*"]
      tags: {any: [env:prod], none: [muted]}
      cost_cents: {gt: 500}
      is_test: false
      metadata: {customer.tier: enterprise}
    when: "run.durationMs > 60000 or 'vip' in run.tags"
    notify: [console, pager]
    template: run_failed
    continue: true
  - name: digest
    match: {status: failure, task_regex: "^sync-(a|b)$"}
    notify: [slack, mail]
    group_by: [taskIdentifier]
    group_wait: 30s
"""
ENV = {"TOKEN": "t0k3n", "ALERT": "al3rt", "KEY": "k3y-value"}
YAML_BITS = st.sampled_from(
    [":", "- ", "[", "]", "{", "}", "&a ", "*a", "!!str ", "!!binary ", "!!timestamp ", "|", ">",
     "'", '"', "#", "%", "@", "`", ",", "? ", "<<: *a", "\n", "\n  ", "\t", "${X}", "${X:-y}",
     "$$", "~", "null", "true", "1e999", "0x1F", "2001-13-45", "---\n", "...\n", "\ufeff",
     "\x00", "\x85"]
)  # fmt: skip


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["bits", "text", "lines", "lines", "insert", "nest"]))
    if kind == "bits":
        return "".join(draw(st.lists(YAML_BITS | st.text(max_size=6), max_size=60)))
    if kind == "text":
        return draw(st.text(max_size=300))
    base = draw(st.sampled_from([FULL_CONFIG, (REPO / "config.example.yaml").read_text()]))
    lines = base.splitlines()
    if kind == "nest":
        depth = draw(st.integers(1, 3000))
        opener = draw(st.sampled_from(["[", "{a: ", "- "]))
        return base + "\nextra: " + opener * depth + "\n"
    if kind == "insert":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(YAML_BITS | st.text(max_size=8)) + base[at:]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent", "value"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "dedent":
            lines[i] = lines[i][2:]
        else:
            key, sep, _ = lines[i].partition(":")
            value = draw(YAML_BITS | st.builds(dumps, VALUES).map(lambda s: s[:200]))
            lines[i] = f"{key}: {value}" if sep else f"{key} {value}"
        if not lines:
            break
    return "\n".join(lines) + "\n"


def check_config(text: str, *, compile_it: bool) -> None:
    started = time.thread_time()  # CPU: a loaded machine's wall clock failed this at 15 s
    try:
        loaded = parse_config(text, "c.yaml", settings_models(), env=ENV)
        if compile_it:  # rules, `when:` expressions and templates, as `relay check` does
            compile_config(loaded)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.message.strip(), exc.problems
            for secret in ENV.values():
                assert secret not in str(problem), problem
    assert time.thread_time() - started < 5


@FUZZ
@given(text=config_texts())
def test_fuzz_config(text: str) -> None:
    check_config(text, compile_it=False)


@settings(FUZZ, max_examples=40)  # compiling checks every template: ~0.1 s an example
@given(text=config_texts())
def test_fuzz_config_compiled(text: str) -> None:
    check_config(text, compile_it=True)


def test_config_fuzz_base_is_valid() -> None:
    """The mutations start from configs that are valid as written."""
    for text in (FULL_CONFIG, (REPO / "config.example.yaml").read_text()):
        compile_config(parse_config(text, "c.yaml", settings_models(), env=ENV))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,
        "a: " + "{b: " * 3000,
        "- " * 3000 + "x",
        "&a [*a]",
        "a: &a {b: *a}",
        "a: 2001-13-45",
        "a: !!timestamp 0000-01-01",
        "rules:\n  - name: [1]\n    notify: [c]\n  - name: {x: 1}\n    notify: [c]\n",
        "rules:\n  - name: r\n    notify: [[c], {d: 1}]\n",
        "channels: {c: {type: [console]}}",
    ],
)
def test_config_edge_cases_are_problems_not_crashes(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_config(parse_config(text, "c.yaml", settings_models(), env={}))
    assert all(p.message.strip() for p in caught.value.problems)


@pytest.mark.parametrize("text", ["", "---\n", "null\n", "~\n", "# only a comment\n"])
def test_an_empty_document_is_an_empty_config(text: str) -> None:
    loaded = parse_config(text, "c.yaml", settings_models(), env={})  # found by the fuzzer: ---
    assert loaded.config.rules == [] and loaded.config.channels == {}
