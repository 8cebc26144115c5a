"""HTTP edges: slow clients, huge headers, many idle connections. Loopback only, bounded.

relay closes a connection that has not sent a complete request head within
relay_listening.HTTP_IDLE_TIMEOUT_S (aiohttp's keepalive_timeout, default an hour otherwise), and
answers 408 when a body has not arrived within relay_replies.BODY_TIMEOUT_S. The tests
shorten both to a second; the defaults are checked to be sane. (Oversized and chunked bodies:
tests/test_ingest.py.) No test measures the wall clock against a tight bound: the slow clients
trickle for far longer (30 s and more) than the shortened timeouts, so a cut-off is told from
none by what the server did before the client finished, on a machine however loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay import listening as relay_listening
from relay.sources import _replies as relay_replies
from relay.sources import _wire as relay_wire
from relay.sources._budget import SMALL_BODY, BodyBudget
from tests.conftest import CONSOLE_FAILURES, RelayFactory, RelayProcess

CONFIG = CONSOLE_FAILURES
GUARD_S = 30.0  # a server that has not acted in this long never will: not what is measured
RUN = {"id": "run_edge", "taskIdentifier": "t", "status": "EXECUTING"}


def address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port)


@contextlib.contextmanager
def connection(url: str, timeout_s: float = 30.0) -> Iterator[socket.socket]:
    sock = socket.create_connection(address(url), timeout=timeout_s)
    try:
        yield sock
    finally:
        sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the peer closed (EOF or reset); False when it is still open (read times out)."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def trickle(url: str, data: bytes, every_s: float, limit_s: float) -> tuple[float, bytes]:
    """Send `data` one byte per `every_s`; (seconds until the server answered or hung up, what it
    sent). The server must act before `limit_s` (else AssertionError: it would wait forever)."""
    started = time.monotonic()
    with connection(url) as sock:
        sock.settimeout(every_s)
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, b""
            try:
                got = sock.recv(65536)
            except TimeoutError:
                got = None
            except ConnectionResetError:
                return time.monotonic() - started, b""
            if got is not None:  # an answer, or b"" for a hang-up
                return time.monotonic() - started, got
            if time.monotonic() - started > limit_s:
                raise AssertionError(f"the server still waits after {limit_s} s")
    raise AssertionError("the whole request went out without an answer")


async def post_ok(r: Any) -> None:
    status, _ = await r.post(RUN)
    assert status == 202


def test_the_default_timeouts_are_bounded() -> None:
    assert 5 <= relay_listening.HTTP_IDLE_TIMEOUT_S <= 300
    assert 5 <= relay_replies.BODY_TIMEOUT_S <= 300


async def test_slowloris_headers_are_cut_off(
    relay: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_listening, "HTTP_IDLE_TIMEOUT_S", 1.0)
    r = await relay(CONFIG)
    head = b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\n" + b"X-Slow: " + b"a" * 1000
    # 1000 bytes at 0.1 s: 100 s to send; cut off at the 1 s timeout, not at once nor never
    slow = asyncio.create_task(asyncio.to_thread(trickle, r.url, head, 0.1, GUARD_S))
    await asyncio.sleep(0.3)
    await post_ok(r)  # others are served meanwhile
    took, answer = await slow
    assert took > 0.8, took
    assert answer == b"", answer  # hung up, nothing processed
    with connection(r.url) as idle:  # an idle connection (no request at all) is closed too
        idle.settimeout(GUARD_S)
        assert await asyncio.to_thread(closed_by_server, idle)  # the loop serves relay meanwhile
    await post_ok(r)


async def test_slow_body_gets_408(relay: RelayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_replies, "BODY_TIMEOUT_S", 1.0)
    r = await relay(CONFIG)
    body = json.dumps(RUN).encode()
    head = (
        b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connection(r.url) as sock:
        sock.sendall(head + body[:5])
        # a byte every 0.6 s: 30 s and more to send it all, and the 408 due after 1 s
        trickled = asyncio.to_thread(trickle_on, sock, body[5:], 0.6, GUARD_S)
        slow = asyncio.create_task(trickled)
        await post_ok(r)
        _, answer = await slow
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error"' in rest and b"body not received" in rest
    await post_ok(r)


def trickle_on(
    sock: socket.socket, data: bytes, every_s: float, limit_s: float
) -> tuple[float, bytes]:
    started = time.monotonic()
    sock.settimeout(every_s)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            got = sock.recv(65536)
        except TimeoutError:
            got = None
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started, b""
        if got is not None:
            sock.settimeout(2.0)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := sock.recv(65536):
                    got += chunk
            return time.monotonic() - started, got
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"the server still waits after {limit_s} s")
    raise AssertionError("the whole body went out without an answer")


def raw_request(url: str, request: bytes) -> bytes:
    with connection(url) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def half_closed(url: str, request: bytes) -> bytes:
    """`request` sent, then the client's side shut (as `nc -N` does); all the server sent until
    it hung up (TimeoutError if it has not within 30 s)."""
    with connection(url) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def post_bytes(run_id: str) -> bytes:
    body = json.dumps({**RUN, "id": run_id}).encode()
    return b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_a_client_that_half_closes_after_its_request_reads_the_answer(
    relay: RelayFactory,
) -> None:
    """aiohttp closed the connection on the client's half-close: the run was stored, its 202
    never sent, and a health probe got nothing. Pipelined requests are all answered, then the
    connection closes; a body the close cuts short is not waited for."""
    r = await relay(CONFIG)
    answer = await asyncio.to_thread(half_closed, r.url, post_bytes("run_half"))
    assert answer.startswith(b"HTTP/1.1 202"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["accepted"] == 1
    health = await asyncio.to_thread(half_closed, r.url, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert health.startswith(b"HTTP/1.0 200"), health
    both = post_bytes("run_half_1") + post_bytes("run_half_2")
    answers = await asyncio.to_thread(half_closed, r.url, both)
    assert answers.count(b"HTTP/1.1 202 Accepted") == 2, answers
    assert await asyncio.to_thread(half_closed, r.url, post_bytes("run_half_cut")[:-3]) == b""


MALFORMED = [
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    + b"\r\n",
    b"POST /v1/runs?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nX-Folded: a\r\n " + b"b" * 20_000 + b"\r\n\r\n",
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
]
MALFORMED_IDS = ["huge-header", "many-headers", "huge-url", "folded", "negative-length",
                 "huge-length", "bad-chunk", "tls-hello"]  # fmt: skip


@pytest.mark.parametrize("request_bytes", MALFORMED, ids=MALFORMED_IDS)
async def test_malformed_requests_get_a_4xx_and_relay_keeps_serving(
    relay: RelayFactory, request_bytes: bytes
) -> None:
    r = await relay(CONFIG)
    answer = await asyncio.to_thread(raw_request, r.url, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    if answer:  # aiohttp may also just hang up on garbage
        code = int(head.split()[1])
        assert 400 <= code < 500, head
        assert b"application/json" in head and "error" in json.loads(body), answer[:300]
        assert b"\r\nServer: relay\r\n" in head, head  # no Python or aiohttp version
    await post_ok(r)


TOKEN = "tok-never-echoed-0123456789"
MALFORMED_AUTH = [
    b"Authorization: Bearer " + TOKEN.encode() + b"\x00\r\n",  # a NUL in the value
    b"Authorization : Bearer " + TOKEN.encode() + b"\r\n",  # a space before the colon
    b"Authorization: Bearer\r\n " + TOKEN.encode() + b"\r\n",  # folded (obs-fold)
    b"Authorization: Bearer " + TOKEN.encode() + b"\rX: y\r\n",  # a bare CR
    b"Authorization: Bearer " + TOKEN.encode() + b"A" * 9000 + b"\r\n",  # over 8190 bytes
]


@pytest.mark.parametrize("auth_line", MALFORMED_AUTH, ids=["nul", "space", "fold", "cr", "long"])
async def test_a_malformed_authorization_line_is_not_echoed(
    relay: RelayFactory, auth_line: bytes
) -> None:
    """aiohttp's parser quoted the bad line in its plain-text 400, token and all: a client or
    proxy logging error bodies logged the secret. The answer is a JSON error naming none."""
    r = await relay(f"server:\n  auth_token: {TOKEN}\n" + CONFIG)
    request = b"POST /v1/runs HTTP/1.1\r\nHost: r\r\n" + auth_line + b"Content-Length: 2\r\n\r\n{}"
    answer = await asyncio.to_thread(raw_request, r.url, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400", head
    assert TOKEN[:12].encode() not in answer
    assert "error" in json.loads(body), body


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_idle(url: str, count: int, partial: bool) -> list[socket.socket]:
    out = []
    for i in range(count):
        sock = socket.create_connection(address(url), timeout=30)
        if partial and i % 2:  # half of them start a request and stall
            sock.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Len")
        out.append(sock)
    return out


async def test_many_idle_connections_do_not_block_or_bloat(
    relay_process: Callable[..., RelayProcess],
) -> None:
    proc = relay_process(CONFIG)
    await asyncio.to_thread(proc.start)
    assert proc.proc is not None
    pid = proc.proc.pid
    async with aiohttp.ClientSession() as http:

        async def post(i: int) -> int:
            run = {**RUN, "id": f"run_conn_{i}", "status": "FAILED"}
            async with http.post(proc.url + "/v1/runs", json=run) as resp:
                return resp.status

        assert await post(-1) == 202  # warm
        before = rss_kb(pid)
        idle = await asyncio.to_thread(open_idle, proc.url, 500, True)
        try:
            # blocked, they would wait for the idle ones to time out (a minute): a guard only
            posts = asyncio.gather(*(post(i) for i in range(100)))
            statuses = await asyncio.wait_for(posts, GUARD_S)
            assert statuses == [202] * 100
            async with http.get(proc.url + "/healthz") as resp:
                assert resp.status == 200
            during = rss_kb(pid)
        finally:
            for sock in idle:
                sock.close()
        assert await post(1000) == 202
    growth_mb = (during - before) / 1024
    print(f"relay RSS {before / 1024:.1f} MB -> {during / 1024:.1f} MB with 500 idle connections")
    assert growth_mb < 200, growth_mb


def open_stalled(url: str, count: int) -> list[socket.socket]:
    """`count` connections: a third send nothing, a third half a header, a third half a body."""
    stalls = [b"", b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Len",
              b"POST /v1/runs HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\n{"]  # fmt: skip
    out = []
    for i in range(count):
        sock = socket.create_connection(address(url), timeout=30)
        sock.sendall(stalls[i % 3])
        out.append(sock)
    return out


async def test_stalled_connections_cannot_take_every_file_descriptor(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """With `ulimit -n` at 256, 300 connections sending nothing or a request a byte short held
    every descriptor for the idle timeout (a minute): no update came in. Past 3/4 of the limit,
    a new connection closes the oldest idle (else the oldest) one."""
    proc = relay_process(CONFIG)
    await asyncio.to_thread(proc.start)
    assert proc.proc is not None
    resource.prlimit(proc.proc.pid, resource.RLIMIT_NOFILE, (256, 256))
    stalled = await asyncio.to_thread(open_stalled, proc.url, 300)
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(20):
                run = {**RUN, "id": f"run_fd_{i}", "status": "FAILED"}
                async with http.post(proc.url + "/v1/runs", json=run) as resp:
                    assert resp.status == 202
        open_fds = len(os.listdir(f"/proc/{proc.proc.pid}/fd"))
        assert open_fds < 256, open_fds
        line = await asyncio.to_thread(
            proc.wait_for_log, "too many connections; the oldest idle ones closed"
        )
        assert line["level"] == "warning" and line["limit"] == 192, line
    finally:
        for sock in stalled:
            sock.close()


async def test_idle_connections_are_closed_before_descriptors_run_out(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """With `ulimit -n` at 64, the 3/4 kept for connections (48) was never reached: relay's
    own descriptors (store, pipes, channels' connections) took the rest first, so 100 idle
    clients held every descriptor for the idle timeout, each new connection was reset (libuv
    accepts and closes when accept says EMFILE) and the log said nothing. With few left, idle
    connections are closed (a burst takes the last ones before relay sees any: every second)."""
    proc = relay_process(CONFIG)
    await asyncio.to_thread(proc.start)
    assert proc.proc is not None
    resource.prlimit(proc.proc.pid, resource.RLIMIT_NOFILE, (64, 64))
    idle = [socket.create_connection(address(proc.url), timeout=30) for _ in range(100)]
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(5):
                assert await post_retrying(http, proc.url, {**RUN, "id": f"run_fd_{i}"}) == 202
        line = await asyncio.to_thread(
            proc.wait_for_log, "too many connections; the oldest idle ones closed"
        )
        assert line["level"] == "warning", line
    finally:
        for sock in idle:
            sock.close()


async def post_retrying(http: aiohttp.ClientSession, url: str, run: dict[str, Any]) -> int:
    """POST /v1/runs as a pusher does: a reset connection is tried again, 0.5 s apart, for
    GUARD_S at most (the idle timeout, 60 s, is what freed the descriptors before)."""
    for _ in range(int(GUARD_S / 0.5)):
        try:
            async with http.post(url + "/v1/runs", json=run) as resp:
                return resp.status
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            await asyncio.sleep(0.5)
    return 0


async def test_serve_raises_its_soft_open_file_limit_to_the_hard_one(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """A soft `ulimit -n` of 1024 (many hosts' default) let a thousand connections stop ingest,
    where the hard limit allowed hundreds of thousands: Go raises it at start for Alertmanager."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"hard open file limit {hard}")
    proc = relay_process(CONFIG, {"RELAY_WORKERS": "1"})  # a delivery process as well
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the child
    try:
        await asyncio.to_thread(proc.start)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert proc.proc is not None
    pid = proc.proc.pid
    [worker] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for each in (pid, int(worker)):  # the worker started after the raise: it inherits it
        assert resource.prlimit(each, resource.RLIMIT_NOFILE) == (hard, hard)
    raised = [e for e in proc.logs if e.get("msg") == "open file limit raised"]
    assert raised and raised[0]["from"] == 256 and raised[0]["to"] == hard, proc.logs[:5]


async def test_the_aiohttp_in_use_has_the_internals_the_server_relies_on() -> None:
    """Where a later aiohttp lacks them, serve keeps aiohttp's own handling (and warns)."""

    async def handler(request: Any) -> Any:
        raise AssertionError

    assert relay_wire.fits(web.Server(handler))


async def test_malformed_requests_cannot_flood_the_log(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """aiohttp logs each one at ERROR with a traceback quoting the client's bytes; relay keeps
    one WARNING line without them."""
    proc = relay_process(CONFIG)
    await asyncio.to_thread(proc.start)
    for request_bytes in MALFORMED * 3:
        await asyncio.to_thread(raw_request, proc.url, request_bytes)
    async with aiohttp.ClientSession() as http, http.post(proc.url + "/v1/runs", json=RUN) as resp:
        assert resp.status == 202
    assert await asyncio.to_thread(proc.terminate) == 0
    await asyncio.to_thread(proc.output_read)
    refused = [e for e in proc.logs if e.get("msg") == "malformed HTTP request refused"]
    assert len(refused) >= len(MALFORMED) * 2, proc.logs[-5:]
    assert all(e["level"] == "warning" and e["status"] == 400 for e in refused), refused[:3]
    assert not [e for e in proc.logs if "exc" in e or e.get("level") == "error"]
    longest = max(len(json.dumps(e)) for e in proc.logs)
    assert longest < 2000, longest
    assert not any(
        "aaaaaaaaaa" in json.dumps(e) or "bbbbbbbbbb" in json.dumps(e) for e in proc.logs
    )


async def test_bodies_in_flight_are_bounded_and_wait_their_turn(relay: RelayFactory) -> None:
    """200 clients each pushing a 1 MiB body grew relay past 2 GB (parsed JSON costs ~10-20
    times its size): a container's limit killed it with every request in flight. Bodies held
    at once are bounded by server.max_body_bytes_in_flight: one over it waits, unread, until
    room is given back, then is accepted; a body bigger than the budget still passes alone,
    and small ones pass at once (clients trickling big bodies cannot stop everyday updates)."""
    r = await relay("server:\n  max_body_bytes_in_flight: 1024\n" + CONFIG)
    big = json.dumps([{**RUN, "id": "run_big", "payload": "x" * 3000}]).encode()
    head = (
        b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(big)).encode() + b"\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(*address(r.url))
    writer.write(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")  # its handler holds its bytes
    await reader.readline()
    writer.write(big[:10])  # and the rest has not come
    await writer.drain()
    second = [{**RUN, "id": "run_second", "payload": "y" * 70_000}]
    posted = asyncio.ensure_future(r.http.post(r.url + "/v1/runs", json=second))
    await post_ok(r)  # a small one passes meanwhile
    assert not posted.done()
    writer.write(big[10:])
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 202")
    writer.close()
    async with await posted as resp:  # room given back: the waiting body goes in
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["accepted"] == 1


async def test_a_chunked_body_holds_room_for_the_bytes_it_has_streamed(
    relay: RelayFactory,
) -> None:
    """A chunked body declares no size: it is charged to server.max_body_bytes_in_flight as its
    chunks arrive, so bodies streamed slowly by many clients are bounded as well. Uncharged, the
    second body below went in beside it."""
    r = await relay("server:\n  max_body_bytes_in_flight: 1024\n" + CONFIG)
    big = json.dumps([{**RUN, "id": "run_big", "payload": "x" * 3000}]).encode()
    reader, writer = await asyncio.open_connection(*address(r.url))
    writer.write(
        b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 2000 + big[:2000] + b"\r\n"
    )
    await writer.drain()
    await post_ok(r)  # the server has read the first chunk meanwhile
    second = [{**RUN, "id": "run_second", "payload": "y" * 70_000}]
    posted = asyncio.ensure_future(r.http.post(r.url + "/v1/runs", json=second))
    await asyncio.wait({posted}, timeout=0.5)  # uncharged, it was in by then
    assert not posted.done()  # 2,000 bytes streamed hold the room
    rest = big[2000:]
    writer.write(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 202")
    writer.close()
    async with await posted as resp:
        assert resp.status == 202, await resp.text()


async def test_a_body_without_room_in_time_is_refused() -> None:
    """Past its wait, a body with no room gets its refusal (the handler's 503): a waiting
    body does not hold its connection for ever."""
    budget = BodyBudget(lambda: 1024, wait_s=0.05)
    with budget.hold() as first, budget.hold() as second, budget.hold() as small:
        assert await first.cover(100_000)  # alone: passes whatever its size
        assert not await second.cover(100_000)
        assert await small.cover(SMALL_BODY)  # never waits
    assert budget.held == 0
    with budget.hold() as third:
        assert await third.cover(100_000)  # given back: alone again


async def test_a_connection_holding_a_request_read_but_not_started_is_not_idle() -> None:
    """A request is read (data_received) a loop turn or two before its handler starts; a
    connection made in between closed the oldest connection as idle, request and all: the
    client saw the connection drop with no answer, and a POST is not retried."""

    async def handler(request: Any) -> Any:
        return web.Response()

    runner = relay_wire.JsonErrorRunner(web.Application(), handle_signals=False)
    runner.app.router.add_get("/", handler)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = runner.server
    assert server is not None
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        while len(server.connections) < 2:
            await asyncio.sleep(0.01)
        first, second = server.connections
        first.data_received(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")  # as its transport would
        assert relay_wire.oldest_idle([first, second]) is second
    finally:
        for _, writer in streams:
            writer.close()
        await runner.cleanup()
