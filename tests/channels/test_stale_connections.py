"""The stale keep-alive race: a receiver closes an idle kept-alive connection just as relay
reuses it, before answering. That request never reached the receiver's application; it is
sent again at once on a new connection and costs no attempt (relay/channels/_http.py). A drop
on a new connection, or once the answer began, stays a failed try. A receiver that read the
request and closed without a word (CLOSE) cannot be told apart: it gets the request twice.

The receiver here is a raw asyncio server on 127.0.0.1 that speaks HTTP/1.1 with keep-alive and
does, for each request, what the test scripts by (connection, request on it): answer, close
(or reset) after reading the request's head without answering, or begin an answer and reset.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from relay.channels._http import HttpClient
from relay.errors import DeliveryError
from tests.channels.test_contract import HTTP_KINDS, HttpKind, build, message
from tests.conftest import RelayFactory, sdk_run
from tests.fakes.slack import Reply

OK = "ok"  # answer in full; the connection stays open
CLOSE = "close"  # read the whole request, close without a byte of answer (FIN)
RESET = "reset"  # read the request's head only, reset the connection (RST: its body unread)
BEGUN = "begun"  # read the whole request, send the start of an answer, reset the connection
Script = Callable[[int, int], str]  # (connection, request on it; both from 0) → what to do


def _head_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _raw(reply: Reply) -> bytes:
    """The reply as bytes on the wire, kept alive."""
    is_json = isinstance(reply.body, dict)
    body = orjson.dumps(reply.body) if is_json else str(reply.body).encode()
    kind = "application/json" if is_json else "text/plain"
    head = f"HTTP/1.1 {reply.status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Receiver:
    script: Script
    ok: bytes
    url: str = ""
    connections: int = 0
    taken: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, body) read whole

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection, self.connections = self.connections, self.connections + 1
        try:
            for n in itertools.count():
                if not await self._exchange(connection, n, reader, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # relay closed the connection
        finally:
            writer.close()

    async def _exchange(
        self, connection: int, n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """One request; whether the connection stays open."""
        head = await reader.readuntil(b"\r\n\r\n")
        act = self.script(connection, n)
        if act == RESET:
            _reset(writer)
            return False
        self.taken.append((connection, await reader.readexactly(_head_length(head))))
        if act == CLOSE:
            return False
        writer.write(self.ok if act == OK else b"HTTP/1.1 200 OK\r\nContent-")
        await writer.drain()
        if act == BEGUN:
            _reset(writer)
        return act == OK

    def bodies_with(self, text: str) -> list[int]:
        """The connections that carried, read whole, a request whose body holds `text`."""
        return [connection for connection, body in self.taken if text.encode() in body]


@asynccontextmanager
async def receiver(script: Script, ok: Reply = Reply(200, "ok")) -> AsyncIterator[Receiver]:
    r = Receiver(script, _raw(ok))
    server = await asyncio.start_server(r.serve, "127.0.0.1", 0)
    r.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield r


def first_then(act: str) -> Script:
    """Answer each connection's first request; do `act` with every later one."""
    return lambda connection, n: OK if n == 0 else act


# ----------------------------------------------------------------------------- every channel


@pytest.mark.parametrize("act", [RESET, CLOSE])
@pytest.mark.parametrize("kind", sorted(HTTP_KINDS))
async def test_a_reused_connection_lost_before_the_answer_is_sent_again_on_a_new_one(
    kind: str, act: str, http: HttpClient
) -> None:
    """Every HTTP channel goes through the one client: the second send finds the kept-alive
    connection of the first closed by the receiver, and is sent on a new one, unfailed."""
    http_kind: HttpKind = HTTP_KINDS[kind]
    async with receiver(first_then(act), http_kind.ok) as r:
        channel = build(http_kind.settings(r.url), http)
        for _ in range(2):
            await channel.send(message(http_kind.type))
    assert r.connections == 2
    assert [connection for connection, _ in r.taken] == ([0, 1] if act == RESET else [0, 0, 1])


async def test_a_new_connection_lost_before_the_answer_is_a_failed_try(http: HttpClient) -> None:
    """A receiver that drops every new connection gets one request per try, not two."""
    async with receiver(lambda connection, n: RESET) as r:
        channel = build(HTTP_KINDS["webhook"].settings(r.url), http)
        with pytest.raises(DeliveryError) as info:
            await channel.send(message("webhook"))
    assert (info.value.reason, info.value.retryable) == ("network", True)
    assert r.connections == 1


@pytest.mark.parametrize("act", [BEGUN, OK])
async def test_an_answer_begun_on_a_reused_connection_is_not_sent_again(
    act: str, http: HttpClient
) -> None:
    """The receiver read the request and began its answer: it has it. A lost answer is the
    try's failure, as on a new connection; the request does not go twice."""
    script: Script = lambda connection, n: OK if n == 0 else act  # noqa: E731
    async with receiver(script) as r:
        channel = build(HTTP_KINDS["webhook"].settings(r.url), http)
        await channel.send(message("webhook"))
        if act == BEGUN:
            with pytest.raises(DeliveryError, match="network"):
                await channel.send(message("webhook"))
        else:
            await channel.send(message("webhook"))
    assert [connection for connection, _ in r.taken] == [0, 0]
    assert r.connections == 1


# ----------------------------------------------------------------------------- relay, whole

CONFIG = """\
defaults:
  retry: {{max_attempts: {attempts}, max_age: 1h, min_backoff: 10ms, max_backoff: 20ms}}
channels:
  hook: {{type: webhook, url: "{url}/hook"}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [hook]}}
"""


async def settled(db: Path, run_id: str) -> tuple[str, int, str | None]:
    """The state, attempts and reason of the run's notification once it is no longer pending."""
    for _ in range(400):
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT state, attempts, reason FROM outbox WHERE run_id = ?", (run_id,)
            ).fetchone()
        if row is not None and row[0] != "pending":
            return row[0], row[1], row[2]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{run_id}: still {row}")


async def notify(
    relay: RelayFactory, r: Receiver, tmp_path: Path, attempts: int, *run_ids: str
) -> None:
    """Post a failed run for each of `run_ids`, each once the one before settled."""
    app = await relay(CONFIG.format(url=r.url, attempts=attempts))
    for run_id in run_ids:
        await app.post({**sdk_run("failed"), "id": run_id})
        await settled(tmp_path / "relay.db", run_id)


async def test_with_one_attempt_a_stale_connection_no_longer_kills_the_notification(
    relay: RelayFactory, tmp_path: Path
) -> None:
    """`max_attempts: 1`: the second notification met the receiver closing the kept-alive
    connection of the first, and went dead ("network") though the receiver never saw it."""
    async with receiver(first_then(RESET)) as r:
        await notify(relay, r, tmp_path, 1, "run_first", "run_second")
        assert await settled(tmp_path / "relay.db", "run_second") == ("sent", 1, None)
    assert r.bodies_with("run_second") == [1]  # on the new connection, once


async def test_a_receiver_dropping_every_request_is_dead_after_max_attempts(
    relay: RelayFactory, tmp_path: Path
) -> None:
    """Its stale connection is sent on again once; every new connection it drops is a try."""
    async with receiver(lambda connection, n: OK if (connection, n) == (0, 0) else CLOSE) as r:
        await notify(relay, r, tmp_path, 2, "run_first", "run_second")
        assert await settled(tmp_path / "relay.db", "run_second") == ("dead", 2, "network")
    assert r.bodies_with("run_second") == [0, 1, 2]  # the stale one, then one per attempt
