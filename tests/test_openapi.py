"""relay/openapi.json describes the HTTP API the code serves, and the API keeps to it.

The route test compares the document with the routes build_app registers, both ways. The
schemathesis test generates requests from the document (valid ones and, for each operation,
invalid ones) against a real `relay serve` child on 127.0.0.1 with both tokens configured and
supplied and alert webhooks signed: no answer may be a 5xx, and every answer must have a
documented status, content type, headers and body. A store seeded with a sent, a dead and a
muted notification and a silence gives the list endpoints rows to answer with, and the
seeded ids are looked up once each so the 200 answers of the by-id endpoints are checked too.
The refusals the generator seldom earns are made on purpose, for every operation documenting
them: 413 (declared and streamed), 415, 503 (the store closed under an in-process relay), and
the 404/405/417 any path may answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import relay
from relay.formats.trigger_alerts import SIGNATURE_HEADER, signature
from relay.history import STATES, dead_letter_views, notification_view
from relay.model import SILENCE_MATCHERS, Notification
from relay.silences.shapes import new_silence, silence_view
from relay.sources.http import openapi_document
from tests.conftest import REPO, RelayFactory, RelayProcess, registered_routes, sdk_run

OPENAPI = REPO / "relay" / "openapi.json"
INGEST_TOKEN = "ingest-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
ALERT_SECRET = "alert-secret-0123456789"
ADMIN_PREFIXES = ("/v1/dlq", "/v1/silences", "/v1/notifications")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 50  # per operation; the module takes about 10 s
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # as run_values.iso writes

CONFIG = f"""
server:
  auth_token: {INGEST_TOKEN}
  admin_token: {ADMIN_TOKEN}
sources:
  trigger_alerts:
    secret: {ALERT_SECRET}
defaults:
  retry: {{max_attempts: 1}}
channels:
  console:
    type: console
  gone:
    type: webhook
    url: http://127.0.0.1:9/unreachable
rules:
  - name: failures
    match: {{status: failure}}
    notify: [console, gone]
  - name: completions
    match: {{status: COMPLETED}}
    notify: [console]
"""


def document() -> dict[str, Any]:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the document


def test_every_route_is_documented_and_every_documented_path_is_a_route() -> None:
    documented = {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented == registered_routes()


def test_document_is_valid_and_names_this_version() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == relay.__version__
    loaded = schemathesis.openapi.from_path(OPENAPI)
    loaded.validate()  # against the OpenAPI 3.1 meta-schema
    assert len(list(loaded.get_all_operations())) == len(registered_routes())
    assert openapi_document() == OPENAPI.read_bytes(), "the app serves the file as it is"


def test_document_vocabularies_match_the_code() -> None:
    schemas = document()["components"]["schemas"]
    assert tuple(schemas["State"]["enum"]) == STATES
    assert tuple(schemas["Matchers"]["properties"]) == SILENCE_MATCHERS
    row = Notification("ntf_1", "run_1", "rule", "channel", "run", {}, created_at=0.0)
    assert set(schemas["Notification"]["properties"]) == set(notification_view(row))
    assert set(schemas["DeadLetter"]["properties"]) == set(dead_letter_views([row])[0])
    silence = new_silence({"task": ("x",)}, ends_at=2e9, now=1e9)
    created_only = {"warnings"}  # POST's answer, when the matchers name what the config lacks
    assert set(schemas["Silence"]["properties"]) == set(silence_view(silence, 1e9)) | created_only
    for path, item in document()["paths"].items():
        for operation in item.values():
            admin = path.startswith(ADMIN_PREFIXES)
            scheme = {"adminToken"} if admin else {"ingestToken"} if path == "/v1/runs" else set()
            named = {name for req in operation.get("security", []) for name in req}
            assert named == scheme, f"{path}: security {named}"


# --------------------------------------------------------------- a real relay, seeded


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def wait_for_states(url: str, wanted: set[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        _, body = http("GET", url + "/v1/notifications", token=ADMIN_TOKEN)
        rows: list[dict[str, Any]] = body["notifications"]
        if wanted <= {row["state"] for row in rows}:
            return rows
        assert time.monotonic() < deadline, f"never reached {wanted}: {rows}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`relay serve` with both tokens and an alert secret; a sent, a dead and a muted
    notification and a silence in its store. Yields the URL and the seeded ids."""
    folder = tmp_path_factory.mktemp("openapi")
    config = folder / "config.yaml"
    config.write_text(CONFIG)
    proc = RelayProcess(config, folder / "relay.db").start()
    try:
        url = proc.url
        ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        silence = {"matchers": {"task": "muted-task"}, "ends_at": ends, "comment": "seed"}
        code, made = http("POST", url + "/v1/silences", silence, ADMIN_TOKEN)
        assert code == 201, made
        failed = sdk_run("failed")
        muted = {**sdk_run("crashed"), "id": "run_muted", "taskIdentifier": "muted-task"}
        completed = sdk_run("completed")
        status, answer = http("POST", url + "/v1/runs", [failed, muted, completed], INGEST_TOKEN)
        assert status == 202 and answer["notifications"] >= 4, answer
        rows = wait_for_states(url, {"sent", "dead", "muted"})
        yield {
            "url": url,
            "notification": rows[0]["id"],
            "dead": next(r["id"] for r in rows if r["state"] == "dead"),
            "silence": made["id"],
        }
    finally:
        proc.kill()


def auth_headers(path: str) -> dict[str, str]:
    token = ADMIN_TOKEN if path.startswith(ADMIN_PREFIXES) else INGEST_TOKEN
    return {"Authorization": f"Bearer {token}"}


def call(case: schemathesis.Case[Any], url: str) -> Any:
    """The request of a generated case, with the right token, and signed if it is an alert."""
    headers = auth_headers(case.operation.path)
    if case.operation.path == "/v1/trigger/alerts" and isinstance(case.body, dict | list):
        raw = json.dumps(case.body).encode()
        case.body = raw  # sent as these bytes, so the signature covers what goes out
        headers[SIGNATURE_HEADER] = signature(raw, ALERT_SECRET)
        headers["Content-Type"] = "application/json"
    return case.call(base_url=url, headers=headers, timeout=30)


schema = schemathesis.openapi.from_path(OPENAPI)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)


@pytest.fixture
def openapi_schema() -> schemathesis.BaseSchema:
    return schema


# Lazily, at run time: parametrized at collection, each of the suite's pytest processes built
# every operation's explicit cases (~4 s of CPU each) for a test only one of them runs. The
# operations are subtests of one test, each failure named by its operation.
@schemathesis.pytest.from_fixture("openapi_schema").parametrize()
def test_api_conforms_to_its_document(case: schemathesis.Case[Any], served: dict[str, Any]) -> None:
    response = call(case, served["url"])
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize(
    ("method", "path", "seed"),
    [
        ("GET", "/v1/notifications/{id}", "notification"),
        ("POST", "/v1/dlq/{id}/replay", "dead"),
        ("GET", "/v1/silences/{id}", "silence"),
    ],
)
def test_seeded_ids_answer_as_documented(
    method: str, path: str, seed: str, served: dict[str, Any]
) -> None:
    case = schema[path][method].Case(path_parameters={"id": served[seed]})
    response = call(case, served["url"])
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=CHECKS)


def test_created_silence_expires_as_documented(served: dict[str, Any]) -> None:
    """201 with the silence and its Location (RFC 9110: else the created resource would be
    /v1/silences itself), then DELETE there expires it."""
    ends = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    create = schema["/v1/silences"]["POST"].Case(
        body={"matchers": {"rule": ["failures"]}, "ends_at": ends}, media_type="application/json"
    )
    created = call(create, served["url"])
    assert created.status_code == 201, created.text
    create.validate_response(created, checks=CHECKS)
    ident = created.json()["id"]
    [location] = created.headers["location"]  # schemathesis: lower-case names, lists of values
    assert location == f"/v1/silences/{ident}"
    _, found = http("GET", served["url"] + location, token=ADMIN_TOKEN)
    assert found["id"] == ident
    expire = schema["/v1/silences/{id}"]["DELETE"].Case(path_parameters={"id": ident})
    expired = call(expire, served["url"])
    assert expired.status_code == 200 and expired.json()["state"] == "expired"
    expire.validate_response(expired, checks=CHECKS)


def fresh_dead_letter(url: str, run_id: str) -> dict[str, Any]:
    """A dead letter of this test's own: the generated requests share the module's relay and
    may have replayed the seeded one, or added a silence that mutes a new one (then it never
    goes dead): every active silence is expired first."""
    _, active = http("GET", url + "/v1/silences", token=ADMIN_TOKEN)
    for silence in active["silences"]:
        http("DELETE", f"{url}/v1/silences/{silence['id']}", token=ADMIN_TOKEN)
    run = {**sdk_run("failed"), "id": run_id}
    assert http("POST", url + "/v1/runs", run, INGEST_TOKEN)[0] == 202
    deadline = time.monotonic() + 60
    while True:
        _, dead = http("GET", url + "/v1/dlq", token=ADMIN_TOKEN)
        mine = [row for row in dead["dead"] if row["run_id"] == run_id]
        if mine:
            return mine[0]
        assert time.monotonic() < deadline, f"{run_id} never dead: {dead}"
        time.sleep(0.1)


def test_times_read_alike_across_endpoints(served: dict[str, Any]) -> None:
    """Every time the admin API answers is ISO-8601 in UTC, and a dead notification's
    `created_at` is the same text in GET /v1/dlq as in its history (it was Unix seconds)."""
    url = served["url"]
    row = fresh_dead_letter(url, "run_times")
    _, detail = http("GET", f"{url}/v1/notifications/{row['id']}", token=ADMIN_TOKEN)
    _, listed = http("GET", url + "/v1/silences?expired=true", token=ADMIN_TOKEN)
    assert row["created_at"] == detail["created_at"]
    silences = listed["silences"]
    times = [row["created_at"], detail["created_at"], *(e["at"] for e in detail["events"])]
    times += [s[key] for s in silences for key in ("starts_at", "ends_at", "created_at")]
    assert silences and all(isinstance(t, str) and ISO_UTC.fullmatch(t) for t in times), times


# Edges of what the document allows that were 500s (a date whose UTC time falls outside years
# 1-9999, a Unicode digit as a limit); the generator seldom reaches them, so they are named here.
# The silences were even stored before their answer failed, breaking GET /v1/silences for good.
EDGE_CASES = [
    (
        "POST",
        "/v1/runs",
        {"id": "run_e", "status": "FAILED", "createdAt": "0001-01-01T00:00+01:00"},
    ),
    (
        "POST",
        "/v1/runs",
        {"friendlyId": "run_e", "status": "PENDING", "updatedAt": "9999-12-31T23:59-01:00"},
    ),
    ("POST", "/v1/silences", {"matchers": {"task": "x"}, "ends_at": "9999-12-31T23:59:59-01:00"}),
    (
        "POST",
        "/v1/silences",
        {
            "matchers": {"task": "x"},
            "ends_at": "2099-01-01T00:00:00Z",
            "starts_at": "0001-01-01T00:00:00+01:00",
        },
    ),
    ("GET", "/v1/notifications", {"limit": "²"}),
    ("GET", "/v1/notifications", {"since": "0001-01-01T00:00:00+01:00"}),
    (
        "POST",
        "/v1/trigger/alerts",
        {
            "type": "alert.run.failed",
            "object": {
                "run": {"id": "run_e", "status": "FAILED", "createdAt": "0001-01-01T00:00+01:00"}
            },
        },
    ),
    (
        "POST",
        "/v1/trigger/alerts",
        {
            "type": "alert.error",
            "created": "0001-01-01T00:00+01:00",
            "object": {"classification": "new_issue", "error": {"fingerprint": "f"}},
        },
    ),
]


@pytest.mark.parametrize(("method", "path", "data"), EDGE_CASES)
def test_out_of_range_input_is_a_400(
    method: str, path: str, data: dict[str, Any], served: dict[str, Any]
) -> None:
    operation = schema[path][method]
    case = operation.Case(query=data) if method == "GET" else operation.Case(body=data)
    response = call(case, served["url"])
    assert response.status_code == 400, response.text
    case.validate_response(response, checks=CHECKS)
    listed = call(schema["/v1/silences"]["GET"].Case(query={"expired": "true"}), served["url"])
    assert listed.status_code == 200, listed.text


def test_document_is_served_without_a_token(served: dict[str, Any]) -> None:
    with urllib.request.urlopen(served["url"] + "/openapi.json", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.read()) == document()


# ------------------------------------------------- refusals, as the document describes them


def operations_answering(status: str) -> list[tuple[str, str]]:
    """(path, METHOD) of every operation whose documented responses include `status`."""
    return [
        (path, method.upper())
        for path, item in document()["paths"].items()
        for method, operation in item.items()
        if status in operation["responses"]
    ]


@pytest.mark.parametrize(("path", "method"), operations_answering("401"))
def test_missing_and_wrong_credentials_are_a_documented_401_with_its_challenge(
    path: str, method: str, served: dict[str, Any]
) -> None:
    """Every 401 carries WWW-Authenticate (RFC 9110 §15.5.2 says it MUST): a bare `Bearer`
    was the API's, and the alert webhooks' refused signature had none."""
    operation = schema[path][method]
    wrong = {"Authorization": "Bearer wrong", SIGNATURE_HEADER: "0" * 64}
    for headers in ({}, wrong):
        body: dict[str, Any] = {"body": []} if "requestBody" in operation.definition.raw else {}
        case = operation.Case(path_parameters={"id": "x"} if "{id}" in path else {}, **body)
        response = case.call(base_url=served["url"], headers=headers, timeout=30)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers.get("www-authenticate"), (path, headers)  # lower-cased
        case.validate_response(response, checks=CHECKS)


def limit_of(path: str) -> int:
    """The body limit of a path as the document's 413 says it: the silences' (64 KiB) and
    replay's (1 MiB) own, else max_body_bytes (unset in CONFIG, so its default, 1 MiB)."""
    return {"/v1/silences": 64 * 1024}.get(path, 1024 * 1024)


def refused(url: str, path: str, method: str, **kwargs: Any) -> requests.Response:
    """The answer to a request on `path` with the right token (and some signature, which a
    body refused by its headers or its size never gets to)."""
    headers = {**auth_headers(path), SIGNATURE_HEADER: "0" * 64, **kwargs.pop("headers", {})}
    return requests.request(method, url + path, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize(("path", "method"), operations_answering("413"))
def test_bodies_over_the_limit_are_a_documented_413(
    path: str, method: str, served: dict[str, Any]
) -> None:
    """Declared (Content-Length) and streamed (chunked) bodies over the limit."""
    case = schema[path][method].Case()
    over = b" " * (limit_of(path) + 1)
    for body in (over, iter([over[:4096]] * (len(over) // 4096 + 1))):
        response = refused(served["url"], path, method, data=body)
        assert response.status_code == 413, (path, response.text)
        case.validate_response(response, checks=CHECKS)
    fits = refused(
        served["url"], path, method, data=b"x" * limit_of(path)
    )  # not JSON: changes nothing
    assert fits.status_code in (400, 401), (path, fits.text)


@pytest.mark.parametrize(("path", "method"), operations_answering("415"))
def test_unknown_content_encoding_is_a_documented_415(
    path: str, method: str, served: dict[str, Any]
) -> None:
    case = schema[path][method].Case()
    response = refused(served["url"], path, method, data=b"{}", headers={"Content-Encoding": "br"})
    assert response.status_code == 415, (path, response.text)
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize(("path", "method"), operations_answering("501"))
def test_a_transfer_coding_besides_chunked_is_a_documented_501(
    path: str, method: str, served: dict[str, Any]
) -> None:
    """aiohttp undoes none but the last transfer coding: `gzip, chunked` was read as if plain.
    (http.client, as requests replaces a Transfer-Encoding given with its own `chunked`.)"""
    host, port = served["url"].removeprefix("http://").split(":")
    headers = {**auth_headers(path), SIGNATURE_HEADER: "0" * 64}
    connection = HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(
            method,
            path,
            body=iter([b"{}"]),
            headers={**headers, "Transfer-Encoding": "gzip, chunked"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert (response.status, response.getheader("Content-Type")) == (501, "application/json")
    assert list(answer) == ["error"] and isinstance(answer["error"], str), answer  # as documented


def test_unknown_paths_and_methods_are_json_errors_allowing_the_documented_methods(
    served: dict[str, Any],
) -> None:
    """A path not in the document is a 404; a method a documented path does not take is a 405
    whose Allow names the documented methods (and HEAD beside GET), both as JSON errors."""
    url = served["url"]
    for path in ("/v1/nope", "/v1/silences/", "/healthz/", "/v1/dlq/x/replay/"):
        response = requests.get(url + path, headers=auth_headers(path), timeout=30)
        assert response.status_code == 404, path
        assert response.json() == {"error": "no such endpoint"}
    for path, item in document()["paths"].items():
        concrete = path.replace("{id}", "x")
        allowed = {method.upper() for method in item} | ({"HEAD"} if "get" in item else set())
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - allowed:
            response = requests.request(method, url + concrete, timeout=30)
            assert response.status_code == 405, (method, path)
            assert set(response.headers["Allow"].split(",")) == allowed, (method, path)
            assert response.json() == {"error": f"method {method} not allowed"}


async def test_store_outage_is_a_documented_503_everywhere(relay: RelayFactory) -> None:
    """With the store gone, every operation documenting a 503 answers it as documented (JSON
    error, Retry-After) for a request it would otherwise take: the body of its example."""
    r = await relay(CONFIG)
    await r.service.store.close()
    for path, method in operations_answering("503"):
        operation = schema[path][method]
        content = operation.definition.raw.get("requestBody", {}).get("content", {})
        example = content.get("application/json", {}).get("example")
        case = operation.Case(
            path_parameters={"id": "ntf_0"} if "{id}" in path else {},
            **({} if example is None else {"body": example, "media_type": "application/json"}),
        )
        response = await asyncio.to_thread(call, case, r.url)  # the loop serves relay meanwhile
        assert response.status_code == 503, (path, method, response.text)
        case.validate_response(response, checks=CHECKS[1:])  # a 5xx, but this one documented


def test_an_unknown_expectation_is_a_json_417_on_every_operation(served: dict[str, Any]) -> None:
    """aiohttp answers an Expect other than 100-continue itself, in plain text and before any
    middleware, on every route not given relay's own expect handler."""
    for path, item in document()["paths"].items():
        for method in [m.upper() for m in item] + (["HEAD"] if "get" in item else []):
            response = requests.request(
                method,
                served["url"] + path.replace("{id}", "x"),
                headers={**auth_headers(path), "Expect": "coffee"},
                timeout=30,
            )
            assert response.status_code == 417, (method, path)
            assert response.headers["Content-Type"] == "application/json", (method, path)
            if method != "HEAD":
                assert response.json() == {"error": "unknown Expect: coffee"}, (method, path)


def test_replay_refuses_a_wrong_token_before_the_body(served: dict[str, Any]) -> None:
    """POST /v1/dlq/replay, as the other endpoints taking a body: a client asking `Expect:
    100-continue` hears the 401 rather than being told to send its body."""
    host, port = served["url"].removeprefix("http://").split(":")
    head = b"POST /v1/dlq/replay HTTP/1.1\r\nHost: relay\r\nExpect: 100-continue\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + b"Authorization: Bearer wrong\r\nContent-Length: 10\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"id": "ntf_gone"}, "id"), ({"ids": ["ntf_gone"]}, "ids"), ({"ids": ["a", "b"]}, "ids")],
)
def test_replaying_ids_none_of_which_is_dead_names_the_field_given(
    body: dict[str, Any], field: str, served: dict[str, Any]
) -> None:
    """The 404's `field` is the one the body used (`{"ids": [one]}` was answered `id`)."""
    case = schema["/v1/dlq/replay"]["POST"].Case(body=body, media_type="application/json")
    response = call(case, served["url"])
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "no dead notification with that id", "field": field}
    case.validate_response(response, checks=CHECKS)
