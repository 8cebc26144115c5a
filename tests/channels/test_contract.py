"""The channel contract (ARCHITECTURE convention 1), one module over relay.channels.REGISTRY.

Every registered channel type is built through the registry (`relay.channels.build`) with its
secrets configured, sent a real rendered message, and held to the same rules:

* HTTP channels (webhook, slack by incoming webhook and by bot token, discord, msteams,
  pagerduty, opsgenie, telegram, googlechat, pushover) against fakes on 127.0.0.1: 2xx is success; 400 permanent client_error; 401/403
  permanent auth_error; 404 permanent (client_error, or auth_error where it means a deleted
  webhook); 429 + Retry-After retryable rate_limited with retry_after; 500/502/503 retryable
  server_error; a hang past the channel timeout retryable timeout; a refused port retryable
  network. Slack's own words too: HTTP 200 {"ok": false, "error": ...} and the incoming
  webhook's plain-text errors.
* email against aiosmtpd: 421 rate_limited, 451 server_error (retryable), 550 client_error,
  535 auth_error (permanent), refused network, a silent server timeout.
* console: prints the message and never raises for normal input.
* secrets (URL path, signing secret, header value, bot tokens, webhook URLs, routing key, SMTP
  password) never appear in str()/repr()/detail/traceback of the DeliveryError nor in any log
  record of relay or of the client libraries, even when the server echoes them in its answer.

A channel type registered without an entry here fails test_every_registered_type_has_a_contract.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import functools
import io
import logging
import os
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from relay import channels
from relay.channels import REGISTRY, Channel, ChannelEnv, Outgoing
from relay.channels._http import HttpClient
from relay.errors import NO_DESCRIPTOR, DeliveryError
from relay.model import Run
from relay.templating import RenderContext, Renderer
from tests.conftest import Sink, run_python, sdk_run
from tests.fakes.googlechat import KEY as CHAT_KEY
from tests.fakes.googlechat import TOKEN as CHAT_TOKEN
from tests.fakes.googlechat import FakeChat, fake_chat
from tests.fakes.googlechat import webhook_path as chat_path
from tests.fakes.opsgenie import API_KEY as OPSGENIE_KEY
from tests.fakes.pushover import TOKEN as PUSHOVER_TOKEN
from tests.fakes.pushover import USER as PUSHOVER_USER
from tests.fakes.pushover import FakePushover, fake_pushover
from tests.fakes.serving import free_port, serving
from tests.fakes.slack import TOKEN, WEBHOOK_PATH, FakeSlack, Reply, api_error, fake_slack
from tests.fakes.telegram import BOT_TOKEN, CHAT_ID, FakeTelegram, fake_telegram

if TYPE_CHECKING:  # imported by pytest as a plugin, so its asserts are rewritten
    from tests.fakes.smtp import FakeSMTP, Pki, SmtpFactory

# the fake SMTP server takes AUTH without TLS so that no TLS set-up hides what the client sends
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

# every channel's own timeout here: no answer that should arrive misses it on a loaded machine
TIMEOUT_S = 10.0
# the timeout of a channel whose server never answers in time: its expiry is the expected outcome,
# so it is short (the test waits it out), and a loaded machine only makes it expire the surer
HANG_TIMEOUT_S = 0.3
# how long a hung server waits before answering: far past HANG_TIMEOUT_S on any machine, so a
# channel that waited for it would get its 200 (no DeliveryError) rather than be timed by a clock
HANG_S = 30.0
PATH_SECRET = "hookPathSecret9f8e7d6c5b4a"
SIGNING_KEY = base64.b64encode(b"signing-key-secret-0123456789ab").decode()
SIGNING_SECRET = "whsec_" + SIGNING_KEY
HEADER_SECRET = "hdr-secret-Zq81LmWx4"
SLACK_HOOK_SECRET = WEBHOOK_PATH.rsplit("/", 1)[1]
SMTP_USER, SMTP_PASSWORD = "relay-bot", "smtp-Pa55-secret-Q7"
DISCORD_TOKEN = "discordWebhookToken-Xk29_aLq7"
TEAMS_SIG = "teamsWorkflowSig0Ab1Cd2Ef3"
PAGERDUTY_KEY = "R0ut1ngKeySecretR0ut1ngKeySecret"
TELEGRAM_TOKEN, TELEGRAM_CHAT = BOT_TOKEN, CHAT_ID  # the fake's bot, in its chat
RENDERER = Renderer()
# loggers of the fakes (the server side), not of relay or the client libraries it uses
SERVER_LOGGERS = ("mail.log", "aiohttp.server", "aiohttp.access", "aiohttp.web")


# ----------------------------------------------------------------------------- helpers


def build(raw: dict[str, Any], http: HttpClient, stdout: io.StringIO | None = None) -> Channel:
    """A channel as the service builds it: settings model of its registry entry, then build()."""
    settings = REGISTRY[raw["type"]].settings.model_validate(raw)
    return channels.build("contract", settings, ChannelEnv(http, stdout or io.StringIO(), 10.0))


@functools.cache
def _rendered(channel_type: str, fixture: str = "failed") -> tuple[str, dict[str, str]]:
    run = Run.model_validate(sdk_run(fixture)).as_dict()
    link = f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run['id']}"
    ctx = RenderContext(run, "prod-failures", "contract", channel_type, "ntf_contract", link)
    rendered = RENDERER.render(channel_type, "run", REGISTRY[channel_type].parts, ctx)
    return run["id"], rendered.parts  # the plain fallback while a type has no templates yet


def message(channel_type: str) -> Outgoing:
    """The default `run` template rendered for this channel type, about a failed run."""
    run_id, parts = _rendered(channel_type)
    return Outgoing("ntf_contract", run_id, "prod-failures", dict(parts), 1_700_000_000.0)


async def failure(channel: Channel, channel_type: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(message(channel_type))
    return info.value


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each log record of relay and its client libraries: message, arguments and extras."""
    return [
        f"{record.getMessage()} {record.__dict__}"
        for record in caplog.records
        if not record.name.startswith(SERVER_LOGGERS)
    ]


def assert_no_secrets(
    err: DeliveryError | None, secrets: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    texts = logged(caplog)
    if err is not None:
        texts += [str(err), repr(err), err.detail, *map(str, err.args)]
        texts.append("".join(traceback.format_exception(err)))
    for secret in secrets:
        leaked = [text for text in texts if secret in text]
        assert not leaked, f"secret {secret[:4]}… leaked into {leaked[0][:200]!r}"


@asynccontextmanager
async def serve(handler: Callable[..., Any]) -> AsyncIterator[str]:
    """An aiohttp app answering every path with `handler`, on 127.0.0.1; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as url:
        yield url


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class HttpKind:
    """One HTTP channel set-up: its settings against a fake's base URL, and its secrets."""

    type: str
    fake: str  # "sink" (any HTTP receiver), "slack", "telegram", "googlechat", "pushover"
    settings: Callable[[str], dict[str, Any]]
    secrets: tuple[str, ...]
    ok: Reply  # what the real service answers to a good request
    server_wait: float | None = None  # the Retry-After of a 5xx without one (Pushover's 5 s)


HTTP_KINDS = {
    "webhook": HttpKind(
        "webhook",
        "sink",
        lambda base: {
            "type": "webhook",
            "url": f"{base}/hooks/{PATH_SECRET}",
            "secret": SIGNING_SECRET,
            "headers": {"Authorization": f"Bearer {HEADER_SECRET}", "X-Team": "core"},
            "timeout": TIMEOUT_S,
        },
        (PATH_SECRET, SIGNING_SECRET, SIGNING_KEY, HEADER_SECRET),
        Reply(204, ""),
    ),
    "slack-webhook": HttpKind(
        "slack",
        "slack",
        lambda base: {"type": "slack", "webhook_url": base + WEBHOOK_PATH, "timeout": TIMEOUT_S},
        (SLACK_HOOK_SECRET,),
        Reply(200, "ok"),
    ),
    "slack-token": HttpKind(
        "slack",
        "slack",
        lambda base: {
            "type": "slack",
            "token": TOKEN,
            "channel": "#oncall",
            "api_url": base + "/api",
            "timeout": TIMEOUT_S,
        },
        (TOKEN,),
        Reply(200, {"ok": True, "channel": "C123", "ts": "1712345678.000100"}),
    ),
    "discord": HttpKind(
        "discord",
        "sink",
        lambda base: {
            "type": "discord",
            "webhook_url": f"{base}/api/webhooks/1234567890/{DISCORD_TOKEN}",
            "timeout": TIMEOUT_S,
        },
        (DISCORD_TOKEN,),
        Reply(200, {"id": "1", "type": 0, "content": ""}),
    ),
    "msteams": HttpKind(
        "msteams",
        "sink",
        lambda base: {
            "type": "msteams",
            "webhook_url": f"{base}/workflows/0a1b/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sv=1.0&sig={TEAMS_SIG}",
            "timeout": TIMEOUT_S,
        },
        (TEAMS_SIG,),
        Reply(202, ""),
    ),
    "pagerduty": HttpKind(
        "pagerduty",
        "sink",
        lambda base: {
            "type": "pagerduty",
            "routing_key": PAGERDUTY_KEY,
            "api_url": base,
            "timeout": TIMEOUT_S,
        },
        (PAGERDUTY_KEY,),
        Reply(202, {"status": "success", "message": "Event processed", "dedup_key": "k"}),
    ),
    "opsgenie": HttpKind(
        "opsgenie",
        "sink",
        lambda base: {
            "type": "opsgenie",
            "api_key": OPSGENIE_KEY,
            "api_url": base,
            "timeout": TIMEOUT_S,
        },
        (OPSGENIE_KEY,),
        Reply(202, {"result": "Request will be processed", "took": 0.002, "requestId": "r"}),
    ),
    "telegram": HttpKind(
        "telegram",
        "telegram",
        lambda base: {
            "type": "telegram",
            "bot_token": TELEGRAM_TOKEN,
            "chat_id": TELEGRAM_CHAT,
            "api_url": base,
            "timeout": TIMEOUT_S,
        },
        (TELEGRAM_TOKEN.split(":")[1],),
        Reply(200, {"ok": True, "result": {"message_id": 1, "chat": {"id": TELEGRAM_CHAT}}}),
    ),
    "googlechat": HttpKind(
        "googlechat",
        "googlechat",
        lambda base: {
            "type": "googlechat",
            "webhook_url": f"{base}{chat_path()}?key={CHAT_KEY}&token={CHAT_TOKEN}",
            "timeout": TIMEOUT_S,
        },
        (CHAT_KEY, CHAT_TOKEN.removesuffix("%3D")),
        Reply(200, {"name": "spaces/S/messages/M", "thread": {"name": "spaces/S/threads/T"}}),
    ),
    "pushover": HttpKind(
        "pushover",
        "pushover",
        lambda base: {
            "type": "pushover",
            "token": PUSHOVER_TOKEN,
            "user_key": PUSHOVER_USER,
            "api_url": base,
            "timeout": TIMEOUT_S,
        },
        (PUSHOVER_TOKEN, PUSHOVER_USER),
        Reply(200, {"status": 1, "request": "647d2300-702c-4b38-8b2f-d56326ae460b"}),
        server_wait=5.0,
    ),
}
SMTP_SECRETS = (SMTP_PASSWORD,)
CONSOLE_SECRETS: tuple[str, ...] = ()  # console has no secret to keep
COVERED = {"console", "email", *(kind.type for kind in HTTP_KINDS.values())}


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_every_registered_type_has_a_contract(channel_type: str) -> None:
    assert channel_type in COVERED, f"channel type {channel_type!r}: add it to {__file__}"
    assert set(REGISTRY) == COVERED  # and nothing here tests a type that is gone


# ----------------------------------------------------------------------------- HTTP channels


@dataclass
class HttpTarget:
    kind: HttpKind
    base: str
    http: HttpClient
    script: Callable[[Reply], None]
    requests: Callable[[], int]
    headers: Callable[[], list[dict[str, str]]]  # of each request, in order

    def channel(self, base: str | None = None, timeout_s: float = TIMEOUT_S) -> Channel:
        return build({**self.kind.settings(base or self.base), "timeout": timeout_s}, self.http)


async def _replay(replies: list[Reply], request: web.Request, index: int) -> web.StreamResponse:
    reply = replies.pop(0)
    if reply.delay_s:
        await asyncio.sleep(reply.delay_s)
    return reply.response()


@pytest.fixture(params=sorted(HTTP_KINDS))
async def target(request: pytest.FixtureRequest) -> AsyncIterator[HttpTarget]:
    kind = HTTP_KINDS[request.param]
    async with AsyncExitStack() as stack:
        http = HttpClient()
        stack.push_async_callback(http.close)
        if kind.fake in ("slack", "telegram", "googlechat", "pushover"):
            fake: FakeSlack | FakeTelegram | FakeChat | FakePushover
            if kind.fake == "slack":
                fake = await stack.enter_async_context(fake_slack())
            elif kind.fake == "telegram":
                fake = await stack.enter_async_context(fake_telegram())
            elif kind.fake == "googlechat":
                fake = await stack.enter_async_context(fake_chat())
            else:
                fake = await stack.enter_async_context(fake_pushover())
            calls = fake.calls
            yield HttpTarget(
                kind, fake.url, http, fake.script, lambda: len(calls), lambda: headers_of(calls)
            )
            return
        sink, replies = Sink(), list[Reply]()

        def script(reply: Reply) -> None:
            replies.append(reply)
            sink.responses.append(lambda req, i: _replay(replies, req, i))

        base = await stack.enter_async_context(serve(sink.handle))
        received = sink.received
        yield HttpTarget(
            kind, base, http, script, lambda: len(received), lambda: headers_of(received)
        )


def headers_of(requests: Sequence[Any]) -> list[dict[str, str]]:
    """The headers of each request a fake got, by lower-case name."""
    return [{k.lower(): v for k, v in got.headers.items()} for got in requests]


def echoing(status: int, secrets: tuple[str, ...], headers: dict[str, str] | None = None) -> Reply:
    """An error answer that quotes the request's secrets back, as some proxies do."""
    return Reply(status, f"<html>{status} for {' '.join(secrets)}</html>", headers or {})


PERMANENT = ("client_error", "auth_error")  # a 404 may mean a deleted webhook: auth_error
HTTP_FAILURES = [
    (400, {}, "client_error", False, None),
    (401, {}, "auth_error", False, None),
    (403, {}, "auth_error", False, None),
    (404, {}, PERMANENT, False, None),
    (429, {"Retry-After": "7"}, "rate_limited", True, 7.0),
    (500, {}, "server_error", True, None),
    (502, {}, "server_error", True, None),
    (503, {}, "server_error", True, None),
]


async def test_2xx_is_success(target: HttpTarget, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    channel = target.channel()
    await channel.send(message(target.kind.type))  # the fake's own answer
    target.script(target.kind.ok)
    await channel.send(message(target.kind.type))
    if target.kind.fake == "sink":
        for status in (200, 201, 202):
            target.script(Reply(status, "accepted"))
            await channel.send(message(target.kind.type))
    assert target.requests() == (5 if target.kind.fake == "sink" else 2)
    assert_no_secrets(None, target.kind.secrets, caplog)


async def test_a_closed_channel_leaves_the_shared_client_to_the_others(
    target: HttpTarget,
) -> None:
    """Every channel has `close` (the protocol's: a stopped channel's, a reload's old one's);
    an HTTP channel holds nothing of its own, so closing it leaves the service's client open
    for the channels still sending."""
    await target.channel().close()
    await target.channel().send(message(target.kind.type))
    assert target.requests() == 1


async def test_every_request_carries_the_notification_id(target: HttpTarget) -> None:
    """SPEC §5: each notification carries a stable idempotency id. Only webhooks (and mails)
    did: a Slack, Discord, Teams or PagerDuty send repeated after a kill -9 or a lost answer
    reached its receiver with nothing saying it was the same notification."""
    channel = target.channel()
    target.script(Reply(503, "down"))
    with pytest.raises(DeliveryError):
        await channel.send(message(target.kind.type))
    await channel.send(message(target.kind.type))
    ids = [headers.get("webhook-id") for headers in target.headers()]
    assert ids == ["ntf_contract", "ntf_contract"]


@pytest.mark.parametrize(("status", "headers", "reason", "retryable", "retry_after"), HTTP_FAILURES)
async def test_http_status_is_classified_without_secrets(
    target: HttpTarget,
    caplog: pytest.LogCaptureFixture,
    status: int,
    headers: dict[str, str],
    reason: str | tuple[str, ...],
    retryable: bool,
    retry_after: float | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    target.script(echoing(status, target.kind.secrets, headers))
    err = await failure(target.channel(), target.kind.type)
    assert err.reason in reason if isinstance(reason, tuple) else err.reason == reason
    if status >= 500 and retry_after is None:
        retry_after = target.kind.server_wait
    assert (err.retryable, err.retry_after) == (retryable, retry_after)
    assert err.status == status and target.requests() == 1
    assert_no_secrets(err, target.kind.secrets, caplog)


async def test_a_hang_past_the_timeout_is_a_retryable_timeout(
    target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target.script(Reply(200, "late", delay_s=HANG_S))
    channel = target.channel(timeout_s=HANG_TIMEOUT_S)
    err = await asyncio.wait_for(failure(channel, target.kind.type), HANG_S)
    assert (err.reason, err.retryable, err.retry_after) == ("timeout", True, None)
    # the channel's timeout, said: "no answer in time" left the on-call to look it up
    assert err.detail == "no answer within 300ms"  # HANG_TIMEOUT_S
    assert_no_secrets(err, target.kind.secrets, caplog)


async def test_a_refused_port_is_a_retryable_network_error(
    target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    err = await failure(target.channel(f"http://127.0.0.1:{free_port()}"), target.kind.type)
    assert (err.reason, err.retryable, err.retry_after) == ("network", True, None)
    assert err.detail == "connection refused"  # as `relay send-test` says it; not the class
    assert not err.local  # the receiver's: an attempt spent
    assert target.requests() == 0
    assert_no_secrets(err, target.kind.secrets, caplog)


NO_FD_LEFT = """
import asyncio, os, resource, socket
from relay.channels._http import HttpClient
from relay.errors import DeliveryError

async def main():
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    client = HttpClient()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    held = []
    while True:  # every descriptor in use, as with many clients and channels at `ulimit -n`
        try:
            held.append(open(os.devnull))
        except OSError:
            break
    try:
        await client.post(url, b"{}", {}, 5.0)
    except DeliveryError as exc:
        print(exc.reason, exc.detail, exc.local, sep="|")
    for each in held:
        each.close()
    await client.close()

asyncio.run(main())
"""


def test_no_descriptor_left_is_said_in_words() -> None:
    """With every file descriptor in use (`prlimit --nofile=64:64`, 20 channels and idle
    clients), each send failed with `network: ClientConnectorError`: the class, not the cause
    an operator can fix (the descriptor limit)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    done = run_python(NO_FD_LEFT, dict(os.environ))
    assert done.returncode == 0, done.stderr
    reason, detail, local = done.stdout.strip().split("|")
    assert (reason, detail) == ("network", NO_DESCRIPTOR[errno.EMFILE])
    assert local == "True"  # relay's own failure: no attempt spent (test_delivery)


@pytest.mark.parametrize("kind", sorted(HTTP_KINDS))
@pytest.mark.parametrize("host", ["hooks..example.com", "exa mple.com", "a" * 64 + ".example.com"])
def test_a_host_no_request_can_be_made_of_is_refused_with_the_settings(
    kind: str, host: str
) -> None:
    """An empty label, a space or a label past DNS's 63 characters: aiohttp raised UnicodeError
    (or sent nothing) at every send, a dead letter for each alert; `relay check` refuses them."""
    raw = HTTP_KINDS[kind].settings(f"https://{host}")
    with pytest.raises(ValidationError) as info:
        REGISTRY[raw["type"]].settings.model_validate(raw)
    assert "has no valid host and port" in str(info.value)
    assert not [s for s in HTTP_KINDS[kind].secrets if s in str(info.value)]


async def test_a_user_password_basic_auth_cannot_carry_is_a_permanent_invalid_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Basic auth is Latin-1: a user:password beyond it raised UnicodeEncodeError at every send."""
    caplog.set_level(logging.DEBUG)
    http = HttpClient()
    try:
        raw = {"type": "webhook", "url": "http://relay:pa\u20ac55-Zq81Lm@127.0.0.1:9/hooks"}
        err = await failure(build(raw, http), "webhook")
    finally:
        await http.close()
    assert (err.reason, err.retryable, err.detail) == ("other", False, "invalid URL")
    assert_no_secrets(err, ("55-Zq81Lm",), caplog)


async def test_an_untrusted_certificate_is_named_not_its_exception_class(
    target: HttpTarget, smtp_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """`relay send-test` to a receiver with a private CA said `ClientConnectorCertificateError`;
    it says what the email channel says: the certificate is not trusted (see SSL_CERT_FILE)."""
    caplog.set_level(logging.DEBUG)
    err = await _https_failure(target, lambda r, w: w.close(), smtp_pki.server_context)
    assert (err.reason, err.retryable, err.detail) == (
        "network",
        True,
        "TLS: certificate not trusted",
    )
    assert_no_secrets(err, target.kind.secrets, caplog)


async def _https_failure(target: HttpTarget, answer: Any, ssl: Any = None) -> DeliveryError:
    """The error of `target`'s channel sending to https://127.0.0.1 on a server that
    `answer`s each connection (with TLS from `ssl`, if given)."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ssl)
    port = server.sockets[0].getsockname()[1]
    try:
        return await failure(target.channel(f"https://127.0.0.1:{port}"), target.kind.type)
    finally:
        server.close()


async def test_https_to_a_plain_text_port_says_so_and_is_retried(
    target: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """`https://` to a port that speaks plain HTTP (a receiver without TLS, a proxy's port):
    aiohttp's ClientConnectorSSLError is an ssl.SSLError without `reason`, so naming it raised
    AttributeError: `channel raised unexpectedly` with a traceback at every try and a dead
    letter reading `other: AttributeError`. It reads as the email channel's does."""
    caplog.set_level(logging.DEBUG)

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    err = await _https_failure(target, plain)
    assert (err.reason, err.retryable, err.detail) == (
        "network",
        True,
        "TLS: the server answered in plain text (no TLS on this port)",
    )
    assert_no_secrets(err, target.kind.secrets, caplog)


# ----------------------------------------------------------------------------- Slack's words

SLACK_ANSWERS = {
    "slack-token": [
        (api_error("invalid_auth"), "auth_error", False, None),
        (api_error("ratelimited"), "rate_limited", True, None),
        (api_error("ratelimited", 200, {"Retry-After": "7"}), "rate_limited", True, 7.0),
        (api_error("channel_not_found"), "client_error", False, None),
        (api_error("internal_error"), "server_error", True, None),
        (Reply(200, "<html>captive portal</html>"), "other", True, None),
    ],
    "slack-webhook": [
        (Reply(403, "invalid_token"), "auth_error", False, None),
        (Reply(404, "no_service"), "auth_error", False, None),
        (Reply(429, "rate_limited", {"Retry-After": "7"}), "rate_limited", True, 7.0),
        (Reply(400, "invalid_blocks"), "client_error", False, None),
    ],
}
SLACK_CASES = [(mode, *case) for mode, cases in SLACK_ANSWERS.items() for case in cases]


@pytest.mark.parametrize(("mode", "reply", "reason", "retryable", "retry_after"), SLACK_CASES)
async def test_slack_answers_are_classified_without_secrets(
    caplog: pytest.LogCaptureFixture,
    mode: str,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    kind = HTTP_KINDS[mode]
    http = HttpClient()
    try:
        async with fake_slack() as slack:
            slack.script(reply, reply)  # a refused layout is sent again as text: refuse it too
            err = await failure(build(kind.settings(slack.url), http), "slack")
    finally:
        await http.close()
    assert (err.reason, err.retryable, err.retry_after) == (reason, retryable, retry_after)
    assert_no_secrets(err, kind.secrets, caplog)


async def test_a_wrong_bot_token_is_auth_error_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-9999-8888-wrongTokenSecret"
    http = HttpClient()
    try:
        async with fake_slack() as slack:  # the fake's own check: invalid_auth
            raw = {**HTTP_KINDS["slack-token"].settings(slack.url), "token": wrong}
            err = await failure(build(raw, http), "slack")
    finally:
        await http.close()
    assert (err.reason, err.retryable, err.detail) == ("auth_error", False, "invalid_auth")
    assert_no_secrets(err, (wrong,), caplog)


# ----------------------------------------------------------------------------- email (SMTP)


def email_channel(port: int, timeout_s: float = TIMEOUT_S) -> Channel:
    raw = {
        "type": "email",
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "starttls": False,
            "username": SMTP_USER,
            "password": SMTP_PASSWORD,
        },
        "from": "Relay <relay@example.com>",
        "to": ["oncall@example.com", "team@example.com"],
        "timeout": timeout_s,
    }
    return build(raw, HttpClient())


SMTP_FAILURES = [
    (
        {"data_replies": [f"421 4.7.0 slow down {SMTP_PASSWORD}"]},
        "rate_limited",
        True,
        "SMTP 421 to DATA",
    ),
    (
        {"data_replies": [f"451 4.7.1 try later {SMTP_PASSWORD}"]},
        "server_error",
        True,
        "SMTP 451 4.7.1",
    ),
    (
        {"data_replies": [f"550 5.7.1 rejected {SMTP_PASSWORD}"]},
        "client_error",
        False,
        "SMTP 550 5.7.1",
    ),
    (
        {"refuse": dict.fromkeys(("oncall@example.com", "team@example.com"), "550 5.1.1 no")},
        "client_error",
        False,
        "SMTP 550 5.1.1",
    ),
]


async def test_smtp_success(smtp_server: SmtpFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake: FakeSMTP = await smtp_server(credentials=(SMTP_USER, SMTP_PASSWORD))
    await email_channel(fake.port).send(message("email"))
    [got] = await fake.wait_for(1)  # the server requires AUTH: the login worked
    assert got.rcpt_tos == ["oncall@example.com", "team@example.com"]
    assert_no_secrets(None, SMTP_SECRETS, caplog)


@pytest.mark.parametrize(("script", "reason", "retryable", "detail"), SMTP_FAILURES)
async def test_smtp_replies_are_classified_without_secrets(
    smtp_server: SmtpFactory,
    caplog: pytest.LogCaptureFixture,
    script: dict[str, Any],
    reason: str,
    retryable: bool,
    detail: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake: FakeSMTP = await smtp_server(credentials=(SMTP_USER, SMTP_PASSWORD))
    for name, value in script.items():
        setattr(fake, name, value)
    err = await failure(email_channel(fake.port), "email")
    assert (err.reason, err.retryable, err.detail) == (reason, retryable, detail)
    assert fake.messages == []
    assert_no_secrets(err, SMTP_SECRETS, caplog)


async def test_smtp_wrong_password_is_a_permanent_auth_error(
    smtp_server: SmtpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake: FakeSMTP = await smtp_server(credentials=(SMTP_USER, "the-server-expects-this"))
    err = await failure(email_channel(fake.port), "email")
    assert (err.reason, err.retryable, err.detail) == ("auth_error", False, "SMTP 535 5.7.8")
    assert_no_secrets(err, SMTP_SECRETS, caplog)


async def test_smtp_refused_is_network_and_silence_is_timeout(
    silent_smtp: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refused = await failure(email_channel(free_port()), "email")
    assert (refused.reason, refused.retryable, refused.detail) == (
        "network",
        True,
        "connection refused",
    )
    silent = await asyncio.wait_for(
        failure(email_channel(silent_smtp, HANG_TIMEOUT_S), "email"), HANG_S
    )
    assert (silent.reason, silent.retryable) == ("timeout", True)
    for err in (refused, silent):
        assert_no_secrets(err, SMTP_SECRETS, caplog)


# ----------------------------------------------------------------------------- console


def console_messages() -> list[dict[str, str]]:
    rendered = [_rendered("console", name)[1] for name in ("failed", "crashed", "completed")]
    return [*rendered, {"txt": "no newline 🔥 \u2028 <b>&"}, {"txt": ""}, {}, {"txt": "a\n\nb\n"}]


async def test_console_prints_and_never_raises_for_normal_input() -> None:
    stdout = io.StringIO()
    http = HttpClient()
    channel = build({"type": "console"}, http, stdout)
    expected = ""
    for parts in console_messages():
        await channel.send(Outgoing("ntf_1", "run_1", "r", parts, 1.7e9))
        text = parts.get("txt", "")
        expected += text if text.endswith("\n") else text + "\n"
    assert stdout.getvalue() == expected
    hostile = "\x1b[2J\x1b]0;pwned\x07 a\r\nb\rc\x00\td\x9b run_\u202e9\u2066"
    await channel.send(Outgoing("ntf_1", "run_1", "r", {"txt": hostile}, 1.7e9))
    shown = "\\x1b[2J\\x1b]0;pwned\\x07 a\nb\\rc\\x00\td\\x9b run_\\u202e9\\u2066\n"
    assert stdout.getvalue() == expected + shown
    stdout.close()  # a broken stdout is a classified, retryable failure, not a crash
    err = await failure(channel, "console")
    assert (err.reason, err.retryable) == ("other", True)
    await http.close()
