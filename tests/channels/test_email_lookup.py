"""The email channel's SMTP host name lookups: in threads of their own, shared, named as such.

aiosmtplib looked the server's name up through asyncio's default executor (6 threads on 2
cores): a DNS server slow to answer held them (every other user of that executor waited),
`relay send-test` waited for the lookup at exit, and a lookup that outlived the attempt was
said as "timeout at greeting". The HTTP channels' lookups were moved off it before
(relay.outbound); the SMTP channel's now go the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from relay.errors import DeliveryError
from tests.channels.test_email import email_settings, make_channel, outgoing
from tests.conftest import child_env
from tests.fakes.smtp import start_smtp

if TYPE_CHECKING:
    from tests.fakes.smtp import Pki, SmtpFactory

NAME = "mail.relay-lookup.test"  # looked up by the stub below: 127.0.0.1


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The system resolver for NAME: 127.0.0.1 after `delay` seconds (the list's first item,
    0 unless set); each lookup of NAME appends its start time."""
    real = socket.getaddrinfo
    seen: list[float] = [0.0]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            seen.append(time.monotonic())
            time.sleep(seen[0])
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield seen


@contextlib.asynccontextmanager
async def busy_default_executor() -> AsyncIterator[None]:
    """asyncio's default executor of one thread, held by other work throughout (as a slow DNS
    server held its threads)."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    loop.set_default_executor(ThreadPoolExecutor(1))
    busy = loop.run_in_executor(None, release.wait)
    try:
        yield
    finally:
        release.set()
        await busy


async def test_the_smtp_host_lookup_waits_for_no_other_work_of_the_default_executor(
    smtp_server: SmtpFactory, lookups: list[float]
) -> None:
    """The default executor busy with other work (as a slow DNS left it): a mail to a host
    name timed out "at greeting" waiting for a thread; now it goes."""
    fake = await smtp_server()
    async with busy_default_executor():
        await make_channel(email_settings(fake.port, host=NAME, hello="relay.test")).send(
            outgoing()
        )
    assert len(fake.messages) == 1 and len(lookups) == 2


async def test_this_machines_name_waits_for_no_other_work_of_the_default_executor(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `hello`: EHLO gives this machine's name (socket.getfqdn, a reverse lookup that may
    take seconds), looked up once through asyncio's default executor: with it busy (as a slow
    DNS left it), the mail timed out waiting for a thread; now it goes."""
    from relay.channels import _smtp  # noqa: PLC0415

    monkeypatch.setattr(socket, "getfqdn", lambda name="": "host.relay-lookup.test")
    monkeypatch.setattr(_smtp, "_HOST", [])  # not looked up yet
    fake = await smtp_server()
    async with busy_default_executor():
        await make_channel(email_settings(fake.port)).send(outgoing())
    assert b"EHLO host.relay-lookup.test\r\n" in bytes(fake.received)


async def test_this_machines_name_answered_after_the_attempt_ends_quietly(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """This machine's name, looked up for EHLO, answered after the attempt timed out: the
    answer, to no one, wrote "Exception in callback" with a traceback in the log. Now it is
    kept quietly, and the next mail's EHLO gives it."""
    from relay.channels import _smtp  # noqa: PLC0415

    answer = threading.Event()

    def getfqdn(name: str = "") -> str:
        answer.wait(5)
        return "late.relay-lookup.test"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    monkeypatch.setattr(_smtp, "_HOST", [])  # not looked up yet
    fake = await smtp_server()
    channel = make_channel(email_settings(fake.port).model_copy(update={"timeout": 0.3}))
    try:
        with pytest.raises(DeliveryError):
            await channel.send(outgoing())
        answer.set()  # after the attempt gave up
        while not _smtp._HOST:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the answer's callback has run
        await channel.send(outgoing())
    finally:
        answer.set()
    assert b"EHLO late.relay-lookup.test\r\n" in bytes(fake.received)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_one_lookup_per_host_at_a_time_then_kept(
    smtp_server: SmtpFactory, lookups: list[float]
) -> None:
    """Concurrent sends of a channel share one lookup (each made its own), and later sends
    use its answer."""
    fake = await smtp_server()
    lookups[0] = 0.3  # long enough for the sends to meet at it
    channel = make_channel(email_settings(fake.port, host=NAME, hello="relay.test"))
    await asyncio.gather(*(channel.send(outgoing(ident=f"ntf_{i}")) for i in range(5)))
    fake.hang_up()  # the kept sessions end: the next send connects again, to the kept address
    await channel.send(outgoing(ident="ntf_later"))
    assert len(fake.messages) == 6 and len(lookups) == 2


async def test_a_lookup_slower_than_the_attempt_is_a_lookup_failure(
    smtp_server: SmtpFactory, lookups: list[float]
) -> None:
    """It read "timeout: no answer in time at greeting": the server blamed for the DNS."""
    fake = await smtp_server()
    lookups[0] = 3.0  # the attempt's timeout is 2 s
    with pytest.raises(DeliveryError) as info:
        await make_channel(email_settings(fake.port, host=NAME)).send(outgoing())
    err = info.value
    assert (err.reason, err.retryable) == ("network", True)
    assert err.detail == "SMTP host lookup failed: no answer in time"
    assert not fake.messages


async def test_a_failed_lookup_is_not_kept_nor_said_when_no_one_waits(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The DNS fails slowly: the attempt ends first ("no answer in time"), the failure comes to
    no one, and writes no "exception was never retrieved" error; once the DNS answers again,
    the next send asks it again and goes, not failing on the answer of before."""
    real = socket.getaddrinfo
    failed = threading.Event()
    asked: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            asked.append(host)
            if len(asked) == 1:
                time.sleep(0.6)
                failed.set()
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    fake = await smtp_server()
    settings = email_settings(fake.port, host=NAME, hello="relay.test")
    channel = make_channel(settings.model_copy(update={"timeout": 0.3}))
    with pytest.raises(DeliveryError) as info:
        await channel.send(outgoing())
    assert info.value.detail == "SMTP host lookup failed: no answer in time"
    await asyncio.to_thread(failed.wait, 5)
    await asyncio.sleep(0.1)  # the failure has come back to the loop
    gc.collect()  # a failure no one read is said as it is collected
    await channel.send(outgoing())
    assert len(asked) == 2 and len(fake.messages) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_ipv6_address_is_no_lookup_and_connects_as_ipv6() -> None:
    """`host: "::1"` is an address, connected to as IPv6 (an IPv4 socket cannot reach it)."""
    fake, server = await start_smtp(host="::1")
    try:
        await make_channel(email_settings(fake.port, host="::1", hello="relay.test")).send(
            outgoing()
        )
    finally:
        server.close()
        await server.wait_closed()
    assert len(fake.messages) == 1


async def test_an_unknown_host_is_a_lookup_failure(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DNS answers at once that the name does not exist: said so, in the resolver's words,
    at once (not as the attempt's timeout running out)."""

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    fake = await smtp_server()
    with pytest.raises(DeliveryError) as info:
        await make_channel(email_settings(fake.port, host="nowhere.invalid")).send(outgoing())
    err = info.value
    assert (err.reason, err.retryable) == ("network", True)
    assert err.detail == "SMTP host lookup failed: Name or service not known", err.detail


@pytest.mark.parametrize("mode", ["tls", "starttls"])
async def test_tls_verifies_the_host_name_not_the_address_it_connected_to(
    smtp_server: SmtpFactory, smtp_pki: Pki, lookups: list[float], mode: str
) -> None:
    """The certificate names 127.0.0.1 and localhost, not NAME: connected to 127.0.0.1 for
    NAME, the handshake must fail; for `localhost` it goes."""
    fake = await smtp_server(mode)
    tls = {"tls": True} if mode == "tls" else {"starttls": True}
    ca = str(smtp_pki.ca_file)
    with pytest.raises(DeliveryError) as info:
        await make_channel(email_settings(fake.port, host=NAME, ca_file=ca, **tls)).send(outgoing())
    assert info.value.detail.startswith("TLS"), info.value.detail
    await make_channel(email_settings(fake.port, host="localhost", ca_file=ca, **tls)).send(
        outgoing()
    )
    assert len(fake.messages) == 1


def namespaces_or_skip() -> None:
    """A mount namespace (root, util-linux's unshare) gives relay a resolv.conf of its own."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and util-linux's unshare")
    probe = subprocess.run(["unshare", "--mount", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("no mount namespaces here")


def silent_dns_server() -> tuple[socket.socket, str]:
    """A DNS server on a loopback address of its own that never answers (as one too slow)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):
        address = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        try:
            server.bind((address, 53))
        except OSError:
            continue
        return server, address
    server.close()
    pytest.skip("no loopback address free for a DNS server")


def send_test_with_dns(tmp_path: Path, nameserver: str, port: int) -> Any:
    """`relay send-test mail` to NAME with `nameserver` as the system's DNS server (a mount
    namespace: /etc/resolv.conf bound over)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions timeout:5 attempts:2\n")
    config = tmp_path / "relay.yaml"
    config.write_text(f"""\
channels:
  mail:
    type: email
    smtp: {{host: {NAME}, port: {port}, starttls: false, hello: relay.test}}
    from: relay@example.com
    to: [oncall@example.com]
    timeout: 1s
rules:
  - {{name: r1, notify: [mail]}}
""")
    relay = f"{sys.executable} -m relay send-test mail --config {config}"
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {relay}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_send_test_to_a_host_the_dns_answers_slowly(
    smtp_server: SmtpFactory, tmp_path: Path
) -> None:
    """Black-box: the DNS server never answers (the resolver tries 2 x 5 s). send-test took
    ~11 s and said "timeout: no answer in time at greeting"; now it ends with its 1 s
    timeout, naming the lookup (the message tells them apart: tests never fail on timing)."""
    namespaces_or_skip()
    fake = await smtp_server()
    server, address = silent_dns_server()
    try:
        result = await asyncio.to_thread(send_test_with_dns, tmp_path, address, fake.port)
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    assert "network: SMTP host lookup failed: no answer in time" in result.stderr, result.stderr
