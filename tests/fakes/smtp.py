"""A real SMTP server on 127.0.0.1 for tests: aiosmtpd's protocol, scripted replies, TLS.

The server runs aiosmtpd's `SMTP` protocol on the test's own event loop (not aiosmtpd's
threaded Controller): it listens on port 0, so there is no free-port race with other test
runs on the machine, and tests await what it received without threads.

- `FakeSMTP.refuse[address]`: reply to every RCPT for that address (e.g. "550 5.1.1 no such user").
- `FakeSMTP.rcpt_replies` / `data_replies`: the next RCPT / DATA replies, popped in order, then
  250. "451 4.7.1 try later" once = `data_replies = ["451 4.7.1 try later"]`.
- `FakeSMTP.stall`: commands ("DATA", "QUIT") the server never answers, until the test ends.
- `FakeSMTP.slow`: seconds the server takes to answer these commands ("RCPT", "DATA"), or to
  greet ("GREETING": its 220; a connection over `max_sessions` is refused at once); a slow
  DATA has taken the mail before it answers, as an MTA queues it before its 250.
- modes: "plain", "starttls" (require_starttls), "tls" (implicit TLS from the first byte);
  `credentials=(user, password)` requires AUTH (over STARTTLS: aiosmtpd refuses AUTH in clear).
- `FakeSMTP.offer_auth = False`: EHLO leaves out AUTH, even over TLS (a server without AUTH);
  `auth_offered = "XOAUTH2"`: EHLO offers AUTH with these mechanisms (and takes none of them).
- `FakeSMTP.hang_up(reply)`: the server ends every open session, saying `reply` first (Postfix's
  "421 4.4.2 Error: timeout exceeded" to an idle client), or says it and keeps the connection
  open (`close=False`: the reply waits unread until the client's next command).
- `FakeSMTP.max_sessions`: connections beyond this many open at once are answered "421 4.7.0 too
  many connections" at greeting and closed (Postfix's smtpd_client_connection_count_limit);
  they count in `refused_sessions`, not in `connections`.
- `FakeSMTP.received`: every byte clients sent, as it arrived (before TLS: STARTTLS sessions show
  only their start); `hung_up` is set when a client's connection ends.
- `silent_server()`: accepts connections and never says a word (for timeouts).

Fixtures (pull them in with `pytest_plugins = ["tests.fakes.smtp"]`): `smtp_pki` (a trustme CA,
its PEM written to a file, and the server's certificate), `smtp_server` (a factory; every server
is closed after the test), `silent_smtp` (the port of a silent server).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.fakes.serving import until

HOST = "127.0.0.1"


@dataclass
class Delivered:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class FakeSMTP:
    port: int = 0
    messages: list[Delivered] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    rcpt_replies: list[str] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    connections: int = 0
    stall: set[str] = field(default_factory=set)
    slow: dict[str, float] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    received: bytearray = field(default_factory=bytearray)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    offer_auth: bool = True
    auth_offered: str | None = None
    sessions: list[SMTP] = field(default_factory=list)
    max_sessions: int | None = None
    refused_sessions: int = 0
    open_sessions: int = 0

    def hang_up(self, reply: str = "", *, close: bool = True) -> None:
        for session in self.sessions:
            wire = session.transport
            if not isinstance(wire, asyncio.WriteTransport) or wire.is_closing():
                continue
            if reply:
                wire.write(f"{reply}\r\n".encode())
            if close:
                wire.close()

    # aiosmtpd handler hooks ------------------------------------------------------------------

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses if self.offer_auth or not r.startswith("250-AUTH")]
        if self.auth_offered is None:
            return kept
        others = [r for r in kept if not r.startswith("250-AUTH")]  # after the greeting line
        return [*others[:1], f"250-AUTH {self.auth_offered}", *others[1:]]

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await self._take_time("RCPT")
        reply = self.refuse.get(address) or (self.rcpt_replies.pop(0) if self.rcpt_replies else "")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        await self._maybe_stall("DATA")
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(
            Delivered(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        self.arrived.set()
        await self._take_time("DATA")
        return "250 2.0.0 accepted"

    async def handle_QUIT(self, server: SMTP, session: Any, envelope: Any) -> str:
        await self._maybe_stall("QUIT")
        return "221 Bye"

    async def _take_time(self, command: str) -> None:
        if command in self.slow:
            await asyncio.sleep(self.slow[command])

    async def _maybe_stall(self, command: str) -> None:
        if command in self.stall:
            await self.released.wait()

    # waiting -----------------------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Delivered]:
        await until(
            lambda: len(self.messages) >= count,
            self.arrived,
            timeout,
            lambda: f"SMTP server got {len(self.messages)} of {count} messages",
        )
        return self.messages


class _RecordedSMTP(SMTP):
    """aiosmtpd's protocol, noting in its FakeSMTP what arrived and when the client hung up."""

    def __init__(self, fake: FakeSMTP, **kwargs: Any) -> None:
        super().__init__(fake, **kwargs)
        self.fake = fake

    def data_received(self, data: bytes) -> None:
        self.fake.received += data
        super().data_received(data)

    async def _handle_client(self) -> None:
        await self.fake._take_time("GREETING")  # a busy server's 220 comes late
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.fake.open_sessions -= 1
        self.fake.hung_up.set()


class _TooMany(asyncio.Protocol):
    """A connection over FakeSMTP.max_sessions: refused at greeting."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.7.0 too many connections, try again later\r\n")
        transport.close()


@dataclass(frozen=True)
class Pki:
    """A throwaway CA (its PEM at `ca_file`) and a server context with a cert for 127.0.0.1."""

    ca_file: Path
    server_context: ssl.SSLContext


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "smtp-test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca_file, context)


def _authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (user.encode(), password.encode())
        return AuthResult(success=ok, handled=False)

    return check


async def start_smtp(
    mode: str = "plain",
    *,
    pki: Pki | None = None,
    credentials: tuple[str, str] | None = None,
    port: int = 0,
    host: str = HOST,
) -> tuple[FakeSMTP, asyncio.Server]:
    """A FakeSMTP listening on `host` (127.0.0.1):<free port, or `port`>; close the returned
    server when done."""
    fake = FakeSMTP()
    kwargs: dict[str, Any] = {"hostname": "relay-test-smtp", "timeout": 10}
    if mode == "starttls":
        assert pki is not None
        kwargs.update(tls_context=pki.server_context, require_starttls=True)
    if credentials is not None:
        kwargs.update(auth_required=True, authenticator=_authenticator(*credentials))
        kwargs["auth_require_tls"] = mode == "starttls"

    def protocol() -> asyncio.Protocol:
        if fake.max_sessions is not None and fake.open_sessions >= fake.max_sessions:
            fake.refused_sessions += 1
            return _TooMany()
        fake.connections += 1
        fake.open_sessions += 1
        session = _RecordedSMTP(fake, **kwargs)
        fake.sessions.append(session)
        return session

    loop = asyncio.get_running_loop()
    ssl_context = pki.server_context if mode == "tls" and pki is not None else None
    server = await loop.create_server(protocol, host, port, ssl=ssl_context)
    fake.port = server.sockets[0].getsockname()[1]
    return fake, server


async def silent_server() -> tuple[int, Callable[[], Awaitable[None]]]:
    """A server that accepts and never answers; returns (port, close)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, HOST, 0)

    async def close() -> None:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], close


# fixtures --------------------------------------------------------------------------------------

SmtpFactory = Callable[..., Awaitable[FakeSMTP]]


@pytest.fixture(scope="module")
def smtp_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("smtp-pki"))


@pytest.fixture
async def smtp_server(smtp_pki: Pki) -> AsyncIterator[SmtpFactory]:
    """`await smtp_server("starttls", credentials=("relay", "pw"))` → a FakeSMTP."""
    servers: list[asyncio.Server] = []

    fakes: list[FakeSMTP] = []

    async def start(mode: str = "plain", credentials: tuple[str, str] | None = None) -> FakeSMTP:
        fake, server = await start_smtp(mode, pki=smtp_pki, credentials=credentials)
        servers.append(server)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.released.set()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def silent_smtp() -> AsyncIterator[int]:
    port, close = await silent_server()
    yield port
    await close()
