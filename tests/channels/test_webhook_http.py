"""The webhook channel's HTTP, driven through `relay send-test` against loopback servers:
proxies from the environment, what a failed answer is called."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import socket
import sqlite3
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from relay import channels
from relay.channels import ChannelEnv, Outgoing
from relay.channels._http import HttpClient
from relay.channels.webhook import WebhookSettings
from relay.errors import DeliveryError
from tests.conftest import RelayProcess, Sink, run_cli, sdk_run, status
from tests.fakes.serving import PROXY_407, free_port, raw_server, serving


def hook_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""\
channels:
  hook:
    type: webhook
    url: {url}
rules:
  - {{name: r1, notify: [hook]}}
"""
    )
    return path


async def send_test(config: Path, env: dict[str, str]) -> tuple[int, str]:
    result = await asyncio.to_thread(run_cli, "send-test", "hook", "--config", str(config), env=env)
    return result.returncode, result.stdout + result.stderr


async def test_http_proxy_and_no_proxy_from_the_environment_are_honoured(
    tmp_path: Path, sink: Sink
) -> None:
    """Behind a corporate proxy, every other tool follows HTTP_PROXY: relay sent straight
    to the receiver's name, which only the proxy can resolve, and every send failed."""
    config = hook_config(tmp_path, "http://hooks.example.invalid/in")
    code, out = await send_test(config, {"HTTP_PROXY": sink.url, "http_proxy": sink.url})
    assert code == 0, out
    [via_proxy] = sink.received
    assert via_proxy.headers["Host"] == "hooks.example.invalid"
    assert via_proxy.path == "/in" and via_proxy.headers["webhook-id"]

    refused = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    env = {"HTTP_PROXY": refused, "http_proxy": refused, "NO_PROXY": "127.0.0.1"}
    code, out = await send_test(hook_config(tmp_path, f"{sink.url}/direct"), env)
    assert code == 0, out
    assert sink.received[-1].path == "/direct"


async def test_no_proxy_takes_a_cidr_block_and_a_host_with_its_port(
    tmp_path: Path, sink: Sink
) -> None:
    """`NO_PROXY=10.0.0.0/8` (curl, requests) and `host:port` (requests) were not matched by
    urllib's rules: receivers the operator had excepted were sent through the proxy."""
    refused = f"http://127.0.0.1:{free_port()}"  # a proxy that is not there
    port = sink.url.rsplit(":", 1)[1]
    for no_proxy in ("10.0.0.0/8, 127.0.0.0/8", f"127.0.0.1:{port}"):
        env = {"HTTP_PROXY": refused, "http_proxy": refused, "NO_PROXY": no_proxy}
        code, out = await send_test(hook_config(tmp_path, f"{sink.url}/direct"), env)
        assert code == 0, (no_proxy, out)
    assert len(sink.received) == 2


async def test_a_proxy_written_without_a_scheme_is_an_http_one(tmp_path: Path, sink: Sink) -> None:
    """`http_proxy=proxy.corp:3128`, as curl, requests and pip take it: aiohttp called the
    proxy an invalid URL and every send failed for good ("other: invalid URL", permanent)."""
    bare = sink.url.removeprefix("http://")
    config = hook_config(tmp_path, "http://hooks.example.invalid/in")
    code, out = await send_test(config, {"HTTP_PROXY": bare, "http_proxy": bare})
    assert code == 0, out
    [via_proxy] = sink.received
    assert via_proxy.headers["Host"] == "hooks.example.invalid"


async def test_a_socks_proxy_is_refused_in_words_and_nothing_is_sent_to_it(
    tmp_path: Path, sink: Sink
) -> None:
    """`HTTPS_PROXY=socks5://...`: aiohttp spoke HTTP to the SOCKS proxy, and the failure read
    as a malformed answer or a lost connection; relay cannot speak SOCKS, so it says so, without
    the proxy's credentials, and warns of the variable at start."""
    socks = f"socks5://user:pw-secret@127.0.0.1:{sink.url.rsplit(':', 1)[1]}"
    config = hook_config(tmp_path, "http://hooks.example.invalid/in")
    code, out = await send_test(config, {"HTTP_PROXY": socks, "http_proxy": socks})
    assert code == 1 and not sink.received
    refusal = "not supported: relay speaks to http:// and https:// proxies"
    assert f"network: proxy socks5://127.0.0.1:{socks.rsplit(':', 1)[1]} {refusal}" in out
    assert "HTTP_PROXY: proxy socks5://" in out and "pw-secret" not in out


async def test_a_redirect_is_not_followed_and_the_failure_says_where_it_points(
    tmp_path: Path, sink: Sink
) -> None:
    """A 301 said "other: HTTP 301": the dead letter now says it is a redirect and to where,
    without the path or query of the target (a token may be in them)."""
    location = "https://hooks.example.com:8443/v2/in?token=tok-in-location"
    sink.default = status(301, {"Location": location})
    code, out = await send_test(hook_config(tmp_path, f"{sink.url}/in"), {})
    assert code == 1
    assert "HTTP 301: redirect to https://hooks.example.com:8443, not followed" in out
    assert "tok-in-location" not in out and len(sink.received) == 1


async def test_a_redirect_to_no_possible_host_does_not_fill_the_dead_letter(
    tmp_path: Path, sink: Sink
) -> None:
    """A Location naming a "host" of 8,000 characters (no DNS name exceeds 253) was copied
    whole into the failure: an 8 KB reason line in `relay dlq list`, logs and history."""
    sink.default = status(302, {"Location": "https://" + "a" * 8000 + ".example/in"})
    code, out = await send_test(hook_config(tmp_path, f"{sink.url}/in"), {})
    assert code == 1
    assert "HTTP 302: redirect, not followed" in out and "aaaa" not in out


async def test_an_answer_that_is_not_http_is_not_called_a_400(tmp_path: Path) -> None:
    """aiohttp reports an unparseable answer as a status 400 of its own: the dead letter said
    the receiver answered HTTP 400, and an operator looked for what was wrong in the body."""
    server, url = await raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    async with server:
        code, out = await send_test(hook_config(tmp_path, f"{url}/in"), {})
    assert code == 1
    assert "malformed HTTP answer" in out and "400" not in out


async def test_a_lower_case_retry_after_is_honoured_by_the_pure_python_parser(
    tmp_path: Path, sink: Sink, relay_process: Callable[..., RelayProcess]
) -> None:
    """Without aiohttp's C extensions (no wheel for the platform, AIOHTTP_NO_EXTENSIONS)
    header names keep the case they had on the wire: `retry-after: 600` from behind Envoy
    was not seen, and the receiver was asked again within a second, three times."""
    sink.default = status(503, {"retry-after": "600"})
    proc = relay_process(RETRYING.format(url=sink.url), {"AIOHTTP_NO_EXTENSIONS": "1"}).start()
    async with aiohttp.ClientSession() as http:
        await http.post(f"{proc.url}/v1/runs", json=sdk_run("failed"))
    await sink.wait_for(1)
    db = sqlite3.connect(tmp_path / "relay.db")
    for _ in range(600):
        row = db.execute("SELECT reason, not_before - updated_at FROM outbox").fetchone()
        if row is not None and row[0] is not None:
            break
        await asyncio.sleep(0.05)
    db.close()
    assert row[0] == "server_error" and row[1] >= 599


RETRYING = """\
defaults:
  retry: {{max_attempts: 4, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
channels:
  hook:
    type: webhook
    url: {url}/in
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [hook]}}
"""


async def test_a_proxy_refusing_the_tunnel_is_a_network_failure(tmp_path: Path) -> None:
    """A proxy's 407 to CONNECT is no answer of the receiver: it read "other: HTTP 407"."""
    server, proxy = await raw_server(PROXY_407)
    config = hook_config(tmp_path, "https://hooks.example.invalid/in")
    async with server:
        code, out = await send_test(config, {"HTTPS_PROXY": proxy, "https_proxy": proxy})
    assert code == 1
    assert "network: proxy answered HTTP 407" in out


async def test_a_forward_proxys_407_is_the_proxys_failure_not_the_receivers(
    tmp_path: Path,
) -> None:
    """To an http:// receiver the proxy answers for it: its 407 read "client_error: HTTP 407",
    a permanent failure blamed on the receiver, where the same 407 to CONNECT (https://) is a
    retried network failure; the credentials in HTTP_PROXY are what to fix, then a restart."""
    server, proxy = await raw_server(PROXY_407)
    config = hook_config(tmp_path, "http://hooks.example.invalid/in")
    async with server:
        code, out = await send_test(config, {"HTTP_PROXY": proxy, "http_proxy": proxy})
    assert code == 1
    assert "network: proxy answered HTTP 407" in out and "client_error" not in out


async def test_a_proxy_that_cannot_be_reached_is_named_as_the_proxy(tmp_path: Path) -> None:
    """HTTP_PROXY naming a proxy that is down read "network: connection refused", as if the
    receiver had refused: the operator looked at the receiver."""
    refused = f"http://user:pw-secret@127.0.0.1:{free_port()}"
    config = hook_config(tmp_path, "http://hooks.example.invalid/in")
    code, out = await send_test(config, {"HTTP_PROXY": refused, "http_proxy": refused})
    assert code == 1
    assert "network: proxy: connection refused" in out and "pw-secret" not in out


async def test_a_secret_without_its_base64_padding_signs_as_the_reference_library_verifies(
    tmp_path: Path, sink: Sink
) -> None:
    """A 32-byte key is 43 base64 characters and one `=`: a receiver printing it without
    the `=` (Go's RawStdEncoding) gave a secret that `standardwebhooks` takes and relay
    refused ("secret must be whsec_ followed by base64")."""
    secret = "whsec_" + base64.b64encode(b"k" * 31 + b"\xff").decode().rstrip("=")
    config = hook_config(tmp_path, f"{sink.url}/in")
    config.write_text(config.read_text().replace("\nrules:", f"\n    secret: {secret}\nrules:"))
    code, out = await send_test(config, {})
    assert code == 0, out
    [got] = sink.received
    assert standardwebhooks.Webhook(secret).verify(got.body, got.headers)["channel"] == "hook"


async def test_an_empty_secret_from_an_unset_optional_variable_sends_unsigned(
    tmp_path: Path, sink: Sink
) -> None:
    """`secret: ${PAGER_SECRET:-}` with the variable unset is the operator's way of making
    signing optional, as `auth_token: ${RELAY_INGEST_TOKEN:-}` is for the token: relay refused
    the whole config ("secret must decode to at least 16 bytes")."""
    config = hook_config(tmp_path, f"{sink.url}/in")
    text = config.read_text().replace("\nrules:", "\n    secret: ${PAGER_SECRET:-}\nrules:")
    config.write_text(text)
    code, out = await send_test(config, {})
    assert code == 0, out
    [got] = sink.received
    assert "webhook-id" in got.headers and "webhook-signature" not in got.headers


async def switching_server() -> tuple[asyncio.Server, str]:
    """Its first connection answers 101 Switching Protocols and then only reads (the protocol
    switched: no HTTP answer ever comes on it again); every later connection answers 204."""
    connections: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        first = len(connections) == 1
        await reader.readuntil(b"\r\n\r\n")
        if first:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
            while await reader.read(65536):  # until relay lets go of the connection
                pass
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def post_run_and_wait(proc: RelayProcess, run_id: str, msg: str) -> dict[str, Any]:
    """POST a failed run under `run_id`; the log line `msg` about it."""
    async with aiohttp.ClientSession() as http:
        await http.post(f"{proc.url}/v1/runs", json={**sdk_run("failed"), "id": run_id})
    for _ in range(400):
        if lines := [e for e in proc.logs if e.get("msg") == msg and e.get("run_id") == run_id]:
            return lines[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {msg!r} for {run_id}: {proc.logs[-5:]}")


async def test_a_101_answer_does_not_hand_its_connection_to_the_next_send(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """A receiver answering a POST with 101 Switching Protocols has taken the connection over;
    aiohttp put it back in the pool all the same, and the next send to that host (of any
    channel) was written into it, got no answer and failed as a timeout: another channel's
    notification held up for the whole timeout by one broken receiver."""
    server, url = await switching_server()
    async with server:
        config = RETRYING.format(url=url).replace("defaults:", "defaults:\n  timeout: 3s")
        proc = relay_process(config).start()
        dead = await post_run_and_wait(proc, "run_switched", "notification dead")
        assert dead["error"] == "other: HTTP 101"
        sent = await post_run_and_wait(proc, "run_after_it", "notification sent")
        assert sent["attempts"] == 1, sent
        proc.kill()


async def test_name_lookups_wait_for_no_other_work_of_the_default_executor(sink: Sink) -> None:
    """aiohttp looked host names up in asyncio's default executor (6 threads on 2 cores), which
    a lookup the DNS server is slow to answer holds for its whole 5-30 s: ten channels to such
    hosts held every thread, and a channel to `localhost` (in /etc/hosts) timed out waiting
    for one; the process then waited for those lookups to end before it could exit. Here the
    default executor is busy with other work: a send to a host name must not wait for it."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    loop.set_default_executor(ThreadPoolExecutor(1))
    busy = loop.run_in_executor(None, release.wait)
    client = HttpClient()
    try:
        url = sink.url.replace("127.0.0.1", "localhost") + "/in"
        response = await client.post(url, b"{}", {"Content-Type": "application/json"}, 5.0)
    finally:
        release.set()
        await busy
        await client.close()
    assert response.status == 200 and [r.path for r in sink.received] == ["/in"]


async def test_a_receivers_cookie_is_not_sent_back_to_it_nor_to_another_channel() -> None:
    """The shared session kept the cookies receivers set (a load balancer's, a session's) and
    sent them with every later request to that host, whichever channel made it: two channels
    with their own credentials to one host shared a session cookie. A relay keeps none, as
    Alertmanager's HTTP client keeps none."""
    cookies: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("Cookie"))
        return web.Response(headers={"Set-Cookie": "session=channel-a; Path=/"})

    app = web.Application()
    app.router.add_post("/{hook}", answer)
    client = HttpClient()
    try:
        async with serving(app) as url:
            by_name = url.replace("127.0.0.1", "localhost")  # aiohttp keeps no IP's cookies
            for hook in ("a", "a", "b"):
                await client.post(f"{by_name}/{hook}", b"{}", {}, 5.0)
    finally:
        await client.close()
    assert cookies == [None, None, None]


async def test_sends_to_one_receiver_go_at_once_not_one_by_one() -> None:
    """The shared client keeps no cap of its own on connections: a channel's `concurrency`
    (and every channel to one host) sends at once. The receiver answers once all four wait."""
    waiting, peak, all_in = 0, 0, asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        nonlocal waiting, peak
        waiting += 1
        peak = max(peak, waiting)
        if waiting == 4:
            all_in.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/in", hold)
    client = HttpClient()
    try:
        async with serving(app) as url:
            sends = (client.post(f"{url}/in", b"{}", {}, 10.0) for _ in range(4))
            answers = await asyncio.gather(*sends)
    finally:
        await client.close()
    assert [a.status for a in answers] == [200] * 4 and peak == 4


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (299, None, False),
        (300, "other", False),
        (399, "other", False),
        (400, "client_error", False),
        (408, "server_error", True),
        (499, "client_error", False),
    ],
)
async def test_an_answers_status_is_read_by_its_class_to_its_edges(
    sink: Sink, code: int, reason: str | None, retryable: bool
) -> None:
    """RFC 9110's classes to their last code: 299 is a success, 300 and 399 are redirects
    (not followed, the url is to be fixed), 400 and 499 the sender's fault; and 408 (the receiver
    timed the request out) is tried again, as a 5xx."""
    sink.default = status(code)
    settings = WebhookSettings.model_validate({"type": "webhook", "url": f"{sink.url}/in"})
    http = HttpClient()
    channel = channels.build("hook", settings, ChannelEnv(http, io.StringIO(), 5.0))
    message = Outgoing("ntf_edges", "run_edges", "r1", {"json": "{}"}, 1_700_000_000.0)
    try:
        if reason is None:
            await channel.send(message)
            return
        with pytest.raises(DeliveryError) as info:
            await channel.send(message)
    finally:
        await http.close()
    assert (info.value.reason, info.value.retryable, info.value.status) == (reason, retryable, code)
    assert ("redirect, not followed" in str(info.value)) == (300 <= code < 400)


# ---------------------------------------------------------------- tls: a company CA, mutual TLS


@dataclasses.dataclass
class CompanyPki:
    """A company CA's files as a channel's `tls` names them (relay's client certificate and
    key), and a server context of that CA for `localhost` that takes only clients it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    server: ssl.SSLContext
    clients: list[str] = dataclasses.field(default_factory=list)  # common names a receiver saw

    def tls(self, *, mutual: bool = True) -> dict[str, str]:
        files = {"ca_file": str(self.ca_file)}
        if mutual:
            files.update(cert_file=str(self.cert_file), key_file=str(self.key_file))
        return files


def company_pki(tmp_path: Path) -> CompanyPki:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("relay@example.com", common_name="relay-client")
    pki = CompanyPki(tmp_path / "ca.pem", tmp_path / "relay.crt", tmp_path / "relay.key", server)
    ca.cert_pem.write_to_path(str(pki.ca_file))
    client.cert_chain_pems[0].write_to_path(str(pki.cert_file))
    client.private_key_pem.write_to_path(str(pki.key_file))
    return pki


@contextlib.asynccontextmanager
async def mutual_tls_receiver(pki: CompanyPki) -> AsyncIterator[str]:
    """An aiohttp receiver on https://localhost with `pki`'s server context; its URL."""

    async def answer(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(field[0] for field in (peer or {}).get("subject", ()))
        pki.clients.append(subject.get("commonName", ""))
        return web.Response()

    app = web.Application()
    app.router.add_post("/in", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://localhost:{port}/in"
    finally:
        await runner.cleanup()


async def send_once(url: str, tls: dict[str, str] | None) -> str:
    """One notification through a webhook channel to `url` with `tls`: "sent", or the error."""
    hook = {"type": "webhook", "url": url, "tls": tls}
    http = HttpClient()
    channel = channels.build(
        "hook", WebhookSettings.model_validate(hook), ChannelEnv(http, io.StringIO(), 5.0)
    )
    try:
        await channel.send(Outgoing("ntf_tls", "run_tls", "r1", {"json": "{}"}, 1.7e9))
        return "sent"
    except DeliveryError as exc:
        return str(exc)
    finally:
        await http.close()


async def test_a_receiver_behind_a_company_ca_and_mutual_tls_is_reached_with_tls(
    tmp_path: Path,
) -> None:
    """Alertmanager's webhook takes `tls_config` (ca_file, cert_file, key_file); relay's took
    none, so a receiver inside a company network (its CA, a client certificate asked for) could
    not be reached at all. Without `tls` the certificate is refused; with its CA alone the
    receiver refuses relay; with both it gets the notification, from relay's certificate."""
    pki = company_pki(tmp_path)
    async with mutual_tls_receiver(pki) as url:
        outcomes = [await send_once(url, tls) for tls in (None, pki.tls(mutual=False), pki.tls())]
    assert "TLS: certificate not trusted" in outcomes[0], outcomes
    assert outcomes[1] != "sent" and "certificate not trusted" not in outcomes[1], outcomes
    assert outcomes[2] == "sent" and pki.clients == ["relay-client"]


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ({"cert_file": "relay.crt"}, "cert_file and key_file go together"),
        ({"ca_file": "nowhere.pem"}, "does not point to a file"),
        ({"ca_file": "relay.key"}, "ca_file is not a readable PEM certificate bundle"),
        ({"cert_file": "relay.crt", "key_file": "ca.pem"}, "not a PEM certificate and its"),
        ({"cert_file": "relay.crt", "key_file": "encrypted.key"}, "unencrypted private key"),
        ({"insecure_skip_verify": True}, "Extra inputs"),
    ],
)
def test_tls_files_that_cannot_serve_are_config_errors(
    tmp_path: Path, tls: dict[str, Any], problem: str
) -> None:
    """A wrong file is said when the config is read (relative paths from its folder), not at
    every send; an encrypted key is refused, never a password prompt on the terminal."""
    ca = trustme.CA()
    client = ca.issue_cert("relay@example.com")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "relay.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "relay.key"))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "encrypted.key").write_bytes(encrypted)
    hook = {"type": "webhook", "url": "https://hooks.example.com/in", "tls": tls}
    with pytest.raises(ValidationError, match=problem):
        WebhookSettings.model_validate(hook, context={"config_dir": str(tmp_path)})


async def test_a_receiver_asking_for_a_client_certificate_says_so(tmp_path: Path) -> None:
    """A receiver of mutual TLS sent without `tls.cert_file` failed as "TLS: handshake failed"
    (or worse), where the server's alert names what it wants. A blocking server, as most TLS
    servers, sends that alert before it closes (asyncio's resets the connection)."""
    pki = company_pki(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as listening:

        def refuse_one() -> None:
            conn, _ = listening.accept()
            with conn, contextlib.suppress(OSError):
                pki.server.wrap_socket(conn, server_side=True).recv(1)

        refusing = threading.Thread(target=refuse_one, daemon=True)
        refusing.start()
        url = f"https://localhost:{listening.getsockname()[1]}/in"
        said = await send_once(url, pki.tls(mutual=False))
        refusing.join(5)
    assert said == "network: TLS: the server asks for a client certificate"
