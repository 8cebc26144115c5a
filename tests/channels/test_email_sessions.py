"""The email channel keeps its SMTP session between mails (relay.channels._smtp_pool): mails in
a row share one connection, a session the server closed meanwhile costs no attempt, one mail's
failure leaves the next its own outcome. Against a real aiosmtpd server (tests.fakes.smtp)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from relay.channels import ChannelEnv, _smtp_pool
from relay.channels._http import HttpClient
from relay.channels.email import EmailChannel
from relay.errors import DeliveryError
from relay.model import notification_id
from tests.channels.test_email import (
    PASSWORD,
    USER,
    email_settings,
    outgoing,
    relay_config,
)
from tests.channels.test_email import settled as row_settled
from tests.conftest import RelayFactory, sdk_run
from tests.fakes.serving import until

if TYPE_CHECKING:
    from tests.fakes.smtp import FakeSMTP, Pki, SmtpFactory

pytest_plugins = ["tests.fakes.smtp"]


def ntf(n: int) -> str:
    return f"ntf_{n:024d}"


def email_channel(port: int, *, keep: bool = True, **smtp: Any) -> EmailChannel:
    env = ChannelEnv(HttpClient(), sys.stdout, 2.0, keep_sessions=keep)
    return EmailChannel("team-email", email_settings(port, **smtp), env)


async def test_mails_in_a_row_share_one_session(smtp_server: SmtpFactory, smtp_pki: Pki) -> None:
    """One connection (TLS handshake, EHLO, STARTTLS, AUTH) per mail was what servers refused
    in a storm ("421 too many connections"): three mails go over one."""
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    tls: dict[str, Any] = {"starttls": True, "ca_file": str(smtp_pki.ca_file)}
    ch = email_channel(fake.port, **tls, username=USER, password=PASSWORD)
    for n in range(3):
        await ch.send(outgoing(ident=ntf(n)))
    mails = await fake.wait_for(3)
    assert [m.message()["X-Relay-Notification-Id"] for m in mails] == [ntf(n) for n in range(3)]
    assert fake.connections == 1


async def test_relay_send_test_keeps_no_session(smtp_server: SmtpFactory) -> None:
    fake = await smtp_server()
    ch = email_channel(fake.port, keep=False)
    for n in range(2):
        await ch.send(outgoing(ident=ntf(n)))
    assert fake.connections == 2
    assert fake.received.count(b"QUIT") == 2


@pytest.mark.parametrize(
    ("reply", "close"),
    [
        ("421 4.4.2 relay-test-smtp Error: timeout exceeded", True),  # Postfix's idle timeout
        ("", True),  # a server that just hangs up
        ("421 4.7.0 closing", False),  # said while idle, the connection still open
    ],
)
async def test_a_session_the_server_ended_while_idle_sends_on_a_new_one(
    smtp_server: SmtpFactory, reply: str, close: bool
) -> None:
    """Nothing of the mail was taken before DATA: it goes over a new connection in the same
    attempt, not as a failed attempt (a 421 is rate_limited: the backoff for no reason)."""
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(1)))
    fake.hang_up(reply, close=close)
    await ch.send(outgoing(ident=ntf(2)))
    mails = await fake.wait_for(2)
    assert [m.message()["X-Relay-Notification-Id"] for m in mails] == [ntf(1), ntf(2)]
    assert fake.connections == 2


async def test_a_421_to_data_on_a_kept_session_is_rate_limited_not_sent_again_at_once(
    smtp_server: SmtpFactory,
) -> None:
    """The server refused the mail itself ("too many messages in this session"): that is its
    "slow down", the backoff. aiosmtplib's RSET after the reply made it look like a session
    ended before DATA, and the mail went again at once over a new connection."""
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(1)))
    fake.data_replies = ["421 4.7.0 too many messages in this session"]
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing(ident=ntf(2)))
    assert (info.value.reason, info.value.detail) == ("rate_limited", "SMTP 421 to DATA")
    assert len(fake.messages) == 1 and fake.connections == 1


async def test_the_reconnection_is_logged_with_the_channel(
    smtp_server: SmtpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.channels.email")
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(1)))
    fake.hang_up("421 4.7.0 closing", close=False)
    await ch.send(outgoing(ident=ntf(2)))
    [line] = [r for r in caplog.records if "ended the kept session" in r.getMessage()]
    assert line.__dict__["channel"] == "team-email"


async def test_a_server_taking_fewer_connections_than_concurrency_gets_all_mails_at_once(
    smtp_server: SmtpFactory,
) -> None:
    """A server that takes one connection at a time answers the others 421 at greeting: those
    sends failed rate_limited (the backoff, and each retry one more refused connection) while
    the one session it took was busy; now they wait for that session, in their attempt."""
    fake = await smtp_server()
    fake.max_sessions = 1
    fake.slow = {"DATA": 0.2}  # the first mail holds the session while the others connect
    ch = email_channel(fake.port)
    await asyncio.gather(*(ch.send(outgoing(ident=ntf(n))) for n in range(3)))
    mails = await fake.wait_for(3)
    assert sorted(m.message()["X-Relay-Notification-Id"] for m in mails) == [ntf(0), ntf(1), ntf(2)]
    assert fake.connections == 1


async def test_a_send_refused_while_the_taken_connection_is_still_greeting_waits_for_it(
    smtp_server: SmtpFactory,
) -> None:
    """The server took the first connection and refused the others at once, its 220 to the
    first coming later: the refused sends found no session in use (only one being opened) and
    failed rate_limited; they wait for that one, as for a session in use."""
    fake = await smtp_server()
    fake.max_sessions = 1
    fake.slow = {"GREETING": 0.3}
    ch = email_channel(fake.port)
    await asyncio.gather(*(ch.send(outgoing(ident=ntf(n))) for n in range(3)))
    assert len(await fake.wait_for(3)) == 3
    assert (fake.connections, fake.refused_sessions) == (1, 2)


async def one_session_held(
    smtp_server: SmtpFactory,
) -> tuple[FakeSMTP, EmailChannel, asyncio.Task[None], asyncio.Task[None]]:
    """A server taking one session at a time; the first mail holds it (stalled at DATA), the
    second was refused a session of its own and waits for that one: (fake, channel, first,
    second)."""
    fake = await smtp_server()
    fake.max_sessions = 1
    fake.stall = {"DATA"}  # the first mail holds the one session until released
    ch = email_channel(fake.port)
    first = asyncio.create_task(ch.send(outgoing(ident=ntf(0))))
    await settled(lambda: fake.received.endswith(b"\r\n.\r\n"))
    second = asyncio.create_task(ch.send(outgoing(ident=ntf(1))))  # refused, then waits
    await settled(lambda: fake.refused_sessions == 1 and ch._pool.waiting == 1)
    return fake, ch, first, second


async def test_once_refused_a_connection_over_the_servers_cap_is_not_opened(
    smtp_server: SmtpFactory,
) -> None:
    """Each send that found no session free connected, and was refused: servers count refused
    connections against a client (and block it). The sessions the server took at once when it
    refused one are the most opened until none is in use."""
    fake, ch, first, second = await one_session_held(smtp_server)
    third = asyncio.create_task(ch.send(outgoing(ident=ntf(2))))  # waits without connecting
    await settled(lambda: ch._pool.waiting == 2 or fake.refused_sessions > 1)
    fake.released.set()
    await asyncio.gather(first, second, third)
    assert len(await fake.wait_for(3)) == 3
    assert (fake.connections, fake.refused_sessions) == (1, 1)


async def test_no_session_free_in_time_is_rate_limited_saying_so(
    smtp_server: SmtpFactory,
) -> None:
    """A send that waited for a session until its timeout, without connecting, said "timeout:
    no answer in time at greeting", of a server it never spoke to."""
    fake = await smtp_server()
    fake.max_sessions = 1
    fake.stall = {"DATA"}  # the first mail holds the one session past the others' timeout
    ch = email_channel(fake.port)
    first = asyncio.create_task(ch.send(outgoing(ident=ntf(0))))
    await settled(lambda: fake.received.endswith(b"\r\n.\r\n"))
    second = asyncio.create_task(ch.send(outgoing(ident=ntf(1))))  # refused, then waits
    await settled(lambda: fake.refused_sessions == 1 and ch._pool.waiting == 1)
    errors = await asyncio.gather(second, ch.send(outgoing(ident=ntf(2))), return_exceptions=True)
    said = [(e.reason, e.detail) for e in errors if isinstance(e, DeliveryError)]
    assert said == [
        ("rate_limited", "SMTP 421 at greeting"),
        ("rate_limited", "SMTP 421 at greeting: the server takes 1 connections at once, none free"),
    ]
    fake.released.set()
    await asyncio.gather(first, return_exceptions=True)  # its DATA stalled: no matter here
    assert fake.refused_sessions == 1


async def settled(done: Callable[[], bool]) -> None:
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not settled")


async def test_a_mail_refused_leaves_the_next_mail_its_own_outcome(
    smtp_server: SmtpFactory,
) -> None:
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(1)))
    fake.data_replies = ["554 5.7.1 message rejected as spam"]
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing(ident=ntf(2)))
    assert (info.value.reason, info.value.retryable) == ("client_error", False)
    await ch.send(outgoing(ident=ntf(3)))
    mails = await fake.wait_for(2)
    assert [m.message()["X-Relay-Notification-Id"] for m in mails] == [ntf(1), ntf(3)]


async def test_a_session_ends_with_quit_when_idle_or_used_up(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_smtp_pool, "MAX_MESSAGES", 2)
    fake = await smtp_server()
    ch = email_channel(fake.port)
    for n in range(3):  # the first session sends two, the second one
        await ch.send(outgoing(ident=ntf(n)))
    assert fake.connections == 2
    assert fake.received.count(b"QUIT") == 1
    monkeypatch.setattr(_smtp_pool, "IDLE_S", 0.0)
    await ch.send(outgoing(ident=ntf(3)))  # the second session's second: kept no more
    await ch.send(outgoing(ident=ntf(4)))  # a third session, idle at once

    def quits() -> int:
        return fake.received.count(b"QUIT")

    await until(lambda: quits() == 3, fake.hung_up, 10, lambda: f"{quits()} QUITs")
    assert fake.connections == 3


async def test_a_stop_ends_the_idle_sessions_with_quit(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki
) -> None:
    """A graceful shutdown left the kept session open until the process exited: the server
    saw it drop, unannounced (Postfix logs "lost connection after RSET"), or held it until its
    own timeout. Now the stop QUITs it before it returns, as Postfix's client does."""
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    r = await relay(relay_config(fake.port, smtp_pki.ca_file))
    await r.post(sdk_run("failed"))
    await fake.wait_for(1)
    ident = notification_id("run_cmuxjbf30kqkowywawhi1r8yr", "failures", "team-email")
    await row_settled(r, ident, "sent")
    assert not fake.hung_up.is_set()  # kept for the next mail
    await r.service.shutdown()
    assert fake.hung_up.is_set()
    assert fake.connections == 1


async def test_a_stop_closes_a_session_whose_server_never_answers_its_quit(
    smtp_server: SmtpFactory,
) -> None:
    """A server that never answers the QUIT keeps no stop waiting for it: the stop returns,
    the session closed without its 221."""
    fake = await smtp_server()
    fake.stall = {"QUIT"}
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(0)))
    await ch.close()
    await until(fake.hung_up.is_set, fake.hung_up, 10, lambda: "the session is still open")
    assert fake.received.count(b"QUIT") == 1


async def test_a_stop_returns_once_its_idle_sessions_have_said_quit(
    smtp_server: SmtpFactory,
) -> None:
    """The stop waits for the QUITs it sends (for CLOSE_S at most): a stop that returned before
    they went out let the process exit with the session dropped, unannounced."""
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(0)))
    await ch.close()
    assert fake.received.count(b"QUIT") == 1


async def test_a_session_taken_from_the_idle_ones_is_not_ended_by_its_idle_timer(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept session taken for the next mail is no longer idle: its idle timer, had it still
    run, would QUIT it in the middle of that mail (here a DATA answered after the timer), and
    the mail after it found the session ended."""
    monkeypatch.setattr(_smtp_pool, "IDLE_S", 0.2)
    fake = await smtp_server()
    ch = email_channel(fake.port)
    await ch.send(outgoing(ident=ntf(0)))
    fake.slow = {"DATA": 0.6}
    await ch.send(outgoing(ident=ntf(1)))
    fake.slow = {}
    await ch.send(outgoing(ident=ntf(2)))
    assert len(await fake.wait_for(3)) == 3
    assert (fake.connections, fake.received.count(b"QUIT")) == (1, 0)
    await ch.close()


@pytest.mark.parametrize("answer", ["250 2.0.0 accepted", "451 4.3.0 try again later"])
async def test_a_send_stopped_while_it_waits_leaves_the_next_outcomes_their_own(
    smtp_server: SmtpFactory, answer: str
) -> None:
    """A send stopped (a shutdown, a reload) while it waits for the one session leaves its wait
    behind: the session's own send still ends with its own outcome, the session is not handed
    to the stopped send, and the mail after it gets through."""
    fake, ch, first, second = await one_session_held(smtp_server)
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    fake.data_replies = [answer]
    fake.released.set()
    [outcome] = await asyncio.gather(first, return_exceptions=True)
    if answer.startswith("451"):
        assert isinstance(outcome, DeliveryError) and outcome.reason == "server_error"
    else:
        assert outcome is None
    fake.stall = set()
    await ch.send(outgoing(ident=ntf(2)))
    assert fake.refused_sessions == 1
    await ch.close()


async def test_the_servers_cap_lifts_once_no_session_is_in_use(smtp_server: SmtpFactory) -> None:
    """The module's promise: the sessions in use when the server refused one more are the most
    opened at once until none is in use. Kept idle after their mails, none is in use: the next
    burst opens a second connection again (a server that takes more now gets both at once)."""
    fake, ch, first, second = await one_session_held(smtp_server)
    fake.released.set()
    await asyncio.gather(first, second)  # the second took the first's session: none in use
    fake.stall, fake.max_sessions, fake.slow = set(), None, {"DATA": 0.2}
    await asyncio.gather(*(ch.send(outgoing(ident=ntf(n))) for n in (2, 3)))
    assert len(await fake.wait_for(4)) == 4
    assert fake.connections == 2
    await ch.close()
