"""The email channel against a real SMTP server on loopback (aiosmtpd), no mocks of relay.

Golden renders of the default templates, the MIME message as a mail client parses it, the
failure classification table of relay/channels/email.py, and STARTTLS + AUTH end to end through
the running service. Regenerate the golden files with
`RELAY_UPDATE_GOLDEN=1 pytest tests/channels/test_email.py` and review the diff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from relay.channels import ChannelEnv, Outgoing, Recovery, _smtp, settings_models
from relay.channels._email_message import build_message, id_domain
from relay.channels._email_settings import EmailSettings
from relay.channels._http import HttpClient
from relay.channels.email import EmailChannel
from relay.config_load import check_file, parse_config
from relay.errors import ConfigError, DeliveryError
from relay.model import Run, notification_id
from relay.store.sqlite import SQLiteStore
from relay.templating import RenderContext, Renderer
from tests.conftest import FIXTURES, RelayFactory, assert_golden, run_cli, sdk_run

if TYPE_CHECKING:  # imported by pytest as a plugin, so its asserts are rewritten
    from tests.fakes.smtp import FakeSMTP, Pki, SmtpFactory

pytest_plugins = ["tests.fakes.smtp"]

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "email"
FIXTURE_NAMES = sorted(
    p.stem.removeprefix("run_") for p in (FIXTURES / "realtime-run" / "sdk").glob("run_*.json")
)
PARTS = ("subject", "txt", "html")
USER, PASSWORD = "relay-bot", "s3cret-SMTP-pa55word"
NTF = "ntf_0123456789abcdef01234567"


# ----------------------------------------------------------------------------- helpers


def context(run: dict[str, Any], dashboard: bool = True) -> RenderContext:
    url = f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run.get('id')}"
    return RenderContext(
        run, "prod-failures", "team-email", "email", NTF, url if dashboard else None
    )


def rendered(fixture: str = "failed", name: str = "run", **changes: Any) -> dict[str, str]:
    run = Run.model_validate({**sdk_run(fixture), **changes}).as_dict()
    out = Renderer().render("email", name, PARTS, context(run))
    assert not out.fallback, out.error
    return out.parts


def outgoing(parts: dict[str, str] | None = None, ident: str = NTF) -> Outgoing:
    return Outgoing(
        ident, "run_cmuxjbf30kqkowywawhi1r8yr", "prod-failures", parts or rendered(), 1.7e9
    )


def email_settings(port: int, **smtp: Any) -> EmailSettings:
    raw = {
        "type": "email",
        "smtp": {"host": "127.0.0.1", "port": port, "starttls": False, **smtp},
        "from": "Relay <relay@example.com>",
        "to": ["oncall@example.com"],
        "cc": ["team@example.com"],
        "headers": {"X-Team": "core"},
        "timeout": "2s",
    }
    return EmailSettings.model_validate(raw)


def channel(port: int, **smtp: Any) -> EmailChannel:
    return make_channel(email_settings(port, **smtp))


def make_channel(settings: EmailSettings) -> EmailChannel:
    return EmailChannel("team-email", settings, ChannelEnv(HttpClient(), sys.stdout, 2.0))


async def failure(ch: EmailChannel) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing())
    err = info.value
    assert PASSWORD not in f"{err} {err!r} {err.detail}"
    return err


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_default_templates_match_golden(fixture: str) -> None:
    name = "run"
    parts = rendered(fixture, name)
    for part in PARTS:
        assert_golden(GOLDEN / name / f"run_{fixture}.{part}", parts[part])


def test_run_failed_is_run_and_the_subject_beats_trigger_dev() -> None:
    for fixture in FIXTURE_NAMES:
        assert rendered(fixture, "run_failed") == rendered(fixture, "run")
    subject = rendered()["subject"]
    assert subject == (
        "[relay] 🔴 FAILED sync-customer-data: Stripe API responded with 429: Too Many Requests"
    )
    crashed = rendered("crashed")["subject"]
    assert crashed.startswith("[relay] 🔴 CRASHED render-video: The task process was killed")
    env = rendered(environment={"type": "PRODUCTION", "slug": "prod"}, isTest=True)
    assert env["subject"].startswith("[relay · prod] 🔴 FAILED sync-customer-data (test): ")
    assert "Environment  prod" in env["txt"] and ">prod</td>" in env["html"]


def test_text_part_reads_well() -> None:
    text = rendered()["txt"]
    lines = text.splitlines()
    assert lines[0] == "🔴 FAILED · sync-customer-data"
    assert "Error: Stripe API responded with 429: Too Many Requests" in lines
    assert "    at fetchInvoices (file:///src/trigger/sync-customer-data.ts:48:11)" in lines
    assert not any("node:internal" in line for line in lines)
    for fact in (
        "Run          run_cmuxjbf30kqkowywawhi1r8yr",
        "Duration     14.9s",
        "Cost         $0.0005",
    ):
        assert fact in lines
    assert (
        "https://cloud.trigger.dev/projects/v3/proj_abc123/runs/run_cmuxjbf30kqkowywawhi1r8yr"
        in lines
    )


def test_html_escapes_hostile_run_data() -> None:
    hostile = {
        "name": "Error",
        "message": "<script>alert('x')</script> & <img src=x onerror=alert(1)>",
        "stackTrace": "Error: boom\n    at <script>evil()</script> (file.ts:1:1)",
    }
    parts = rendered(error=hostile, taskIdentifier="<b>task</b>", tags=['"><svg onload=1>'])
    html = parts["html"]
    assert "<script>" not in html and "<img" not in html and "<svg" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;img" in html
    assert "&lt;b&gt;task&lt;/b&gt;" in html
    assert "<script>" in parts["txt"]  # plain text stays plain
    run = Run.model_validate(sdk_run("failed")).as_dict()
    ctx = context(run)
    bad_link = RenderContext(**{**ctx.__dict__, "dashboard_url": "javascript:alert(1)"})
    assert "href" not in Renderer().render("email", "run", ("html",), bad_link).parts["html"]
    plain = Renderer().render("email", "run", ("html", "txt"), context(run, dashboard=False))
    assert "href" not in plain.parts["html"] and "Trigger.dev:" not in plain.parts["txt"]


def test_subject_is_one_line_and_capped_whatever_the_template_says() -> None:
    parts = {**rendered(), "subject": "first\r\nBcc: evil@example.com\n" + "x" * 500}
    mail = build_message(email_settings(25), outgoing(parts), "example.com")
    assert mail["Bcc"] is None
    subject = str(mail["Subject"])
    assert subject.startswith("first Bcc: evil@example.com x") and len(subject) == 200
    assert subject.endswith("…")


def subject_of(parts: dict[str, str]) -> str:
    return str(build_message(email_settings(25), outgoing(parts), "example.com")["Subject"])


def test_a_subject_cut_keeps_each_character_whole() -> None:
    """The cut at 200 fell inside a family emoji (a ZWJ sequence) or between a letter and its
    accent; now it goes back to the start of that character."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    parts = {**rendered(), "subject": "x" * 195 + family + "e\u0301"}
    assert subject_of(parts) == "x" * 195 + "…"
    parts = {**rendered(), "subject": "x" * 198 + "e\u0301" + "y"}
    assert subject_of(parts) == "x" * 198 + "…"


def test_control_characters_of_run_data_leave_the_subject() -> None:
    """A NUL or BEL from a task name went raw into the Subject header (servers refuse a NUL)."""
    parts = {**rendered(), "subject": "failed: task\x00\x07name\x7f end run_\u202e9x\u2066"}
    mail = build_message(email_settings(25), outgoing(parts), "example.com")
    assert str(mail["Subject"]) == "failed: task name end run_9x"  # nor shows in another order
    assert b"\x00" not in mail.as_bytes()


def test_a_digest_mail_has_no_empty_run_id_header() -> None:
    """A digest is about many runs, none in particular: its mail carried `X-Relay-Run-Id:` with
    nothing after it, which a mail filter on that header matched as a run with no id."""
    digest = dataclasses.replace(outgoing(ident="dgs_0123456789abcdef01234567"), run_id="")
    mail = build_message(email_settings(25), digest, "example.com")
    assert mail["X-Relay-Run-Id"] is None and b"X-Relay-Run-Id" not in mail.as_bytes()
    assert mail["X-Relay-Notification-Id"] == "dgs_0123456789abcdef01234567"


# ----------------------------------------------------------------------------- settings


GOOD = {
    "type": "email",
    "smtp": {"host": "smtp.example.com"},
    "from": "r@example.com",
    "to": ["a@example.com"],
}


AUTH = {"host": "smtp.example.com", "username": "u", "password": "p"}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"to": []}, "at least 1"),
        ({"to": ["a@example.com\r\nBcc: x@evil.com"]}, "line breaks"),
        ({"to": ["not-an-address"]}, "not one email address"),
        ({"to": ["a@example.com, b@example.com"]}, "not one email address"),
        ({"to": "a@example.com\r\nBcc: x@evil.com"}, "line breaks"),
        ({"to": ""}, "at least 1"),
        ({"to": "a@example.com b@example.com"}, "not one email address"),
        ({"to": "a@example.com, b@"}, "not one email address"),
        ({"to": ["@example.com"]}, "not one email address"),
        ({"cc": "x@y@example.com"}, "not one email address"),
        ({"from": "@example.com"}, "not one email address"),
        ({"from": "relay"}, "not one email address"),
        ({"from": "Ops: EU <relay@example.com>"}, "not one email address"),  # a group
        ({"to": ["Team: EU <team@example.com>"]}, "not one email address"),
        # the stdlib's header parser raised AttributeError on these: relay check's traceback
        ({"to": ["a@[192.0.2.1"]}, "not one email address"),
        ({"cc": ["<?c@["]}, "not one email address"),
        ({"cc": ["ok@example.com", "x\n@example.com"]}, "line breaks"),
        # a header takes them, an SMTP envelope does not: every mail was dead ("invalid address")
        ({"to": ["ok@example.com", "a@[192.0.2 1]"]}, "cannot be sent over SMTP"),
        ({"cc": ['"a"."b c"@example.com']}, "cannot be sent over SMTP"),
        ({"to": ['"a\tb"@example.com']}, "cannot be sent over SMTP"),
        ({"from": "Relay <relay@[192.0.2 1]>"}, "cannot be sent over SMTP"),
        # the words joined, another domain than the one written: refused, not mended
        ({"to": ["ops@exa mple.com"]}, "a space inside the address"),
        ({"from": "Relay <relay@exa mple.com>"}, "a space inside the address"),
        ({"cc": ["ops@a b c.com"]}, "a space inside the address"),
        ({"headers": {"X-Ok": "a\r\nBcc: x@evil.com"}}, "line breaks"),
        ({"headers": {"X-Bad: y": "v"}}, "printable ASCII"),
        ({"headers": {"Subject": "v"}}, "set by relay"),
        ({"headers": {"Reply-To": "not an address <<"}}, "not a valid Reply-To"),
        ({"headers": {"Reply-To": "a@[192.0.2.1"}}, "not a valid Reply-To"),
        ({"headers": {"content-type": "v"}}, "set by relay"),
        ({"smtp": {"host": "h", "tls": True, "starttls": True}}, "exclusive"),
        ({"smtp": {"host": "h", "username": "u"}}, "go together"),
        ({"smtp": {**AUTH, "starttls": False}}, "need starttls or tls"),
        ({"smtp": {**AUTH, "port": 465, "starttls": False}}, "need starttls or tls"),
        ({"smtp": {**AUTH, "port": 25, "tls": False, "starttls": False}}, "need starttls or tls"),
        ({"smtp": {"host": "h", "ca_file": "/nonexistent/ca.pem"}}, "ca_file"),
        ({"smtp": {"host": "h", "prot": 25}}, "Extra inputs"),
        ({"smtp": {"host": "smtp.example.com:587"}}, "set smtp.port"),
        ({"smtp": {"host": "h", "hello": "relay.example.com\r\nRSET"}}, "hello must be"),
        ({"smtp": {"host": "h", "hello": "my relay"}}, "hello must be"),
        ({"smtp": {"host": "smtp://smtp.example.com"}}, "without a scheme"),
    ],
)
def test_bad_settings_are_refused(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        EmailSettings.model_validate({**GOOD, **change})


@pytest.mark.parametrize(
    "smtp",
    [
        AUTH,  # STARTTLS by default
        {**AUTH, "port": 465},
        {**AUTH, "host": "127.0.0.1", "starttls": False},
        {**AUTH, "host": "localhost", "starttls": False},
        {**AUTH, "host": "::1", "starttls": False},
    ],
)
def test_credentials_go_over_tls_or_to_this_machine(smtp: dict[str, Any]) -> None:
    """Before, `starttls: false` sent the password in clear to any host (AUTH PLAIN is base64)."""
    EmailSettings.model_validate({**GOOD, "smtp": smtp})


def test_every_bad_recipient_is_named_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        EmailSettings.model_validate({**GOOD, "to": ["ok@example.com", "one@", "two@x@y"]})
    assert "'one@'" in str(caught.value) and "'two@x@y'" in str(caught.value)


def test_recipients_as_one_string_as_alertmanager_writes_them() -> None:
    one = EmailSettings.model_validate({**GOOD, "to": "team@example.com"})
    assert one.to == ["team@example.com"]
    two = EmailSettings.model_validate({**GOOD, "cc": 'a@x.com, "Doe, J" <b@y.com>,'})
    assert two.cc == ["a@x.com", '"Doe, J" <b@y.com>']
    three = EmailSettings.model_validate({**GOOD, "to": "Jöhn Dœ <j@x.com>;b@y.com"})
    assert three.to == ["Jöhn Dœ <j@x.com>", "b@y.com"]
    four = EmailSettings.model_validate({**GOOD, "to": ['"Ops: EU" <o@x.com>', "J. Doe <j@x.com>"]})
    assert four.to == ['"Ops: EU" <o@x.com>', "J. Doe <j@x.com>"]


@pytest.mark.parametrize(
    ("smtp", "mode"),
    [
        ({"port": 465}, "tls"),  # SMTPS: STARTTLS there waited for a greeting until the timeout
        ({"port": 465, "starttls": True}, "starttls"),
        ({"port": 465, "tls": False}, "starttls"),
        ({"port": 465, "starttls": False}, "plain"),
        ({"port": 587}, "starttls"),
        ({"port": 2465, "tls": True}, "tls"),
    ],
)
def test_port_465_means_implicit_tls_unless_said_otherwise(smtp: dict[str, Any], mode: str) -> None:
    """As Alertmanager: `port: 465` alone is SMTPS; an explicit `tls`/`starttls` wins."""
    settings = EmailSettings.model_validate({**GOOD, "smtp": {"host": "h", **smtp}}).smtp
    modes = {(True, False): "tls", (False, True): "starttls", (False, False): "plain"}
    assert modes[(settings.use_tls, settings.use_starttls)] == mode


def test_settings_defaults_and_yaml(tmp_path: Path) -> None:
    ports = [
        EmailSettings.model_validate({**GOOD, "smtp": {"host": "h", **smtp}}).smtp.effective_port
        for smtp in ({}, {"tls": True}, {"starttls": False}, {"port": 2525})
    ]
    assert ports == [587, 465, 25, 2525]
    text = """\
channels:
  mail:
    type: email
    smtp: {host: smtp.example.com, username: u, password: "${PW}"}
    from: relay@example.com
    to: [team@example.com]
    headers: {X-Team: "core\\r\\nBcc: x@evil.com"}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", settings_models(), {"PW": PASSWORD})
    assert "c.yaml:7: channels.mail.headers: header X-Team cannot contain line breaks" in str(
        info.value
    )
    fixed = text.replace("\\r\\nBcc: x@evil.com", "")
    loaded = parse_config(fixed, "c.yaml", settings_models(), {"PW": PASSWORD})
    assert PASSWORD in loaded.secrets()
    assert PASSWORD not in repr(loaded.config.channels["mail"])


# ----------------------------------------------------------------------------- the message


async def test_message_is_multipart_alternative_with_stable_ids(smtp_server: SmtpFactory) -> None:
    fake = await smtp_server()
    ch = channel(fake.port)
    await ch.send(outgoing())
    await ch.send(outgoing())  # a resend: same Message-ID
    first, second = await fake.wait_for(2)
    assert first.mail_from == "relay@example.com"
    assert first.rcpt_tos == ["oncall@example.com", "team@example.com"]
    mail = first.message()
    assert mail.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    assert mail["From"] == "Relay <relay@example.com>"
    assert mail["To"] == "oncall@example.com" and mail["Cc"] == "team@example.com"
    assert mail["Subject"] == rendered()["subject"]
    assert mail["Message-ID"] == f"<{NTF}@example.com>" == second.message()["Message-ID"]
    assert mail["X-Relay-Notification-Id"] == NTF
    assert mail["X-Relay-Run-Id"] == "run_cmuxjbf30kqkowywawhi1r8yr"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["X-Team"] == "core"
    assert mail["In-Reply-To"] is None and mail["References"] is None
    text, html = (part.get_content() for part in mail.iter_parts())
    assert text.replace("\r\n", "\n") == rendered()["txt"]
    assert html.replace("\r\n", "\n") == rendered()["html"]
    assert all(len(line) <= 998 for line in first.data.split(b"\r\n"))  # RFC 5322 line limit


async def test_the_ehlo_name_is_the_configured_hello(smtp_server: SmtpFactory) -> None:
    """Servers such as smtp-relay.gmail.com refuse an EHLO `localhost` (421 ... (EHLO)), which
    is what socket.getfqdn() gives on many hosts and containers; Alertmanager has smtp_hello."""
    fake = await smtp_server()
    await channel(fake.port, hello="relay.example.com").send(outgoing())
    await fake.wait_for(1)
    assert bytes(fake.received).startswith(b"EHLO relay.example.com\r\n")


async def test_the_default_ehlo_name_is_looked_up_once(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socket.getfqdn() ran at every connection, and a slow reverse DNS lookup (seconds in a
    container whose resolver times out) came out of each attempt's timeout."""
    lookups: list[str] = []

    def getfqdn(name: str = "") -> str:
        lookups.append(name)
        return "host.example.com"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    monkeypatch.setattr(_smtp, "_HOST", [])  # not looked up yet
    fake = await smtp_server()
    for _ in range(3):
        await channel(fake.port).send(outgoing())
    await fake.wait_for(3)
    assert len(lookups) == 1
    assert bytes(fake.received).count(b"EHLO host.example.com\r\n") == 3


async def test_the_message_id_fallback_host_is_looked_up_once_off_the_loop(
    smtp_server: SmtpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A From whose domain cannot end a Message-ID and no smtp.hello: this machine's name
    was looked up (socket.getfqdn, a reverse DNS lookup that may take seconds) on the event
    loop, stalling intake and every other send. Now once per process, in a thread, and the
    same value the EHLO gives."""
    lookups: list[int] = []

    def getfqdn(name: str = "") -> str:
        lookups.append(threading.get_ident())
        return "host.example.com"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    monkeypatch.setattr(_smtp, "_HOST", [])  # not looked up yet
    fake = await smtp_server()
    for sender in ("relay@example.com.", "relay@exa..mple.com", "relay@example.com."):
        settings = email_settings(fake.port).model_copy(update={"from_": sender})
        with contextlib.suppress(DeliveryError):  # the server may refuse such a sender
            await make_channel(settings).send(outgoing())
    assert len(lookups) == 1 and lookups[0] != threading.get_ident()


async def test_a_users_auto_submitted_replaces_relays(smtp_server: SmtpFactory) -> None:
    """Before, the mail carried two Auto-Submitted headers: relay's and the user's."""
    fake = await smtp_server()
    settings = email_settings(fake.port).model_copy(update={"headers": {"auto-submitted": "no"}})
    await make_channel(settings).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.message().get_all("Auto-Submitted") == ["no"]


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("script", "reason", "retryable", "detail"),
    [
        ({"data_replies": ["451 4.7.1 try later"]}, "server_error", True, "SMTP 451 4.7.1"),
        (
            {"data_replies": ["452 4.3.1 insufficient storage"]},
            "server_error",
            True,
            "SMTP 452 4.3.1",
        ),
        (
            {"data_replies": ["421 4.7.0 too many messages, slow down"]},
            "rate_limited",
            True,
            "SMTP 421 to DATA",
        ),
        ({"rcpt_replies": ["421 4.7.0 closing"]}, "rate_limited", True, "SMTP 421 to RCPT"),
        ({"rcpt_replies": ["", "421 4.7.0 closing"]}, "rate_limited", True, "SMTP 421 to RCPT"),
        ({"data_replies": ["554 5.7.1 rejected as spam"]}, "client_error", False, "SMTP 554 5.7.1"),
        # the first code of the 5xx class (command unrecognized) is as permanent as the others
        ({"data_replies": ["500 5.5.2 syntax error"]}, "client_error", False, "SMTP 500 5.5.2"),
        ({"data_replies": ["queued as 4F2A"]}, "other", True, "malformed SMTP reply"),  # SMTP -1
        (
            {
                "refuse": {
                    "oncall@example.com": "550 5.1.1 no such user",
                    "team@example.com": "550 5.1.1 no",
                }
            },
            "client_error",
            False,
            "SMTP 550 5.1.1",  # the enhanced code: no such mailbox
        ),
        (
            {
                "refuse": {
                    "oncall@example.com": "550 5.1.1 no such user",
                    "team@example.com": "450 4.2.1 busy",
                }
            },
            "server_error",
            True,
            "SMTP 450 4.2.1",
        ),
        (  # RFC 5321 4.5.3.1.10: 552 to RCPT ("too many recipients") is taken as 452
            {"rcpt_replies": ["552 5.5.3 too many recipients", "552 5.5.3 too many recipients"]},
            "server_error",
            True,
            "SMTP 552 5.5.3",
        ),
        ({"data_replies": ["552 5.3.4 message too big"]}, "client_error", False, "SMTP 552 5.3.4"),
    ],
)
async def test_smtp_replies_are_classified(
    smtp_server: SmtpFactory, script: dict[str, Any], reason: str, retryable: bool, detail: str
) -> None:
    fake = await smtp_server()
    for name, value in script.items():
        setattr(fake, name, value)
    err = await failure(channel(fake.port))
    assert (err.reason, err.retryable, err.detail) == (reason, retryable, detail)
    assert fake.messages == []


async def test_a_530_for_want_of_starttls_says_to_enable_it(smtp_server: SmtpFactory) -> None:
    """`starttls: false` to a server that takes mail only after STARTTLS ("530 5.7.0 Must issue
    a STARTTLS command first"): the dead letter said `auth_error: SMTP 530`, and the operator
    checked a password relay never sent. It says the setting, as a server without AUTH does."""
    fake = await smtp_server("starttls")
    err = await failure(channel(fake.port))
    assert (err.reason, err.retryable, err.status) == ("auth_error", False, 530)
    assert err.detail == "SMTP 530; the server offers STARTTLS (not done): enable starttls"


async def test_a_421_says_where_it_came_greeting_and_ehlo_too() -> None:
    """A 421 said "SMTP 421" wherever it came; where tells why (the greeting: the server sheds
    load; EHLO: it dislikes the name; RCPT: a recipient; DATA: the mail). A bare server speaks
    the two replies: aiosmtpd cannot greet with 421."""
    details = []
    for replies in ([b"421 4.3.2 busy\r\n"], [b"220 hi\r\n", b"421 4.7.0 bad name\r\n"]):
        port, close = await scripted_server(replies)
        try:
            err = await failure(channel(port))
        finally:
            await close()
        details.append((err.reason, err.retryable, err.detail))
    assert details == [
        ("rate_limited", True, "SMTP 421 at greeting"),
        ("rate_limited", True, "SMTP 421 to EHLO"),
    ]


async def scripted_server(replies: list[bytes]) -> tuple[int, Callable[[], Awaitable[None]]]:
    """A server that says `replies`, one per line it gets (the first before any), then holds."""

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            writer.write(reply)
            await writer.drain()
            if not await reader.readline():
                break
        writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return server.sockets[0].getsockname()[1], close


async def test_one_refused_recipient_of_two_still_sends(
    smtp_server: SmtpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await smtp_server()
    fake.refuse = {"team@example.com": "550 5.1.1 no such user"}
    with caplog.at_level(logging.WARNING, logger="relay.channels.email"):
        await channel(fake.port).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.rcpt_tos == ["oncall@example.com"]
    [record] = caplog.records
    assert record.__dict__["refused"] == 1 and record.__dict__["recipients"] == 2
    assert record.__dict__["refused_codes"] == {"team@example.com": 550}  # who: a typo in `to`?
    said = {k: record.__dict__.get(k) for k in ("run_id", "rule", "channel")}  # SPEC §6: all three
    assert said == {
        "run_id": "run_cmuxjbf30kqkowywawhi1r8yr",
        "rule": "prod-failures",
        "channel": "team-email",
    }


async def test_a_recipient_refused_for_now_gets_the_mail_on_the_retry_and_no_one_twice(
    smtp_server: SmtpFactory, sqlite_store: SQLiteStore
) -> None:
    fake = await smtp_server()
    settings = email_settings(fake.port).model_copy(
        update={"cc": ["team@example.com", "boss@x.io"]}
    )
    env = ChannelEnv(HttpClient(), sys.stdout, 2.0, sqlite_store)
    ch = EmailChannel("team-email", settings, env)
    fake.refuse = {"boss@x.io": "550 5.1.1 no such user"}  # for good
    fake.rcpt_replies = ["", "450 4.2.0 greylisted, try again later"]  # oncall ok, team later
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing())
    err = info.value
    assert (err.reason, err.retryable) == ("server_error", True)
    assert err.detail == "SMTP 450 for 1 of 3 recipients"
    await ch.send(outgoing())  # the retry: team only
    await ch.send(outgoing())  # a replay from the dead letters: everyone is served
    first, second = await fake.wait_for(2)
    assert (first.rcpt_tos, second.rcpt_tos) == (["oncall@example.com"], ["team@example.com"])
    assert first.message()["Message-ID"] == second.message()["Message-ID"]
    assert len(fake.messages) == 2 and fake.connections == 1  # the session kept (_smtp_pool)


async def test_the_rest_refused_for_good_on_the_retry_is_sent_as_on_one_attempt(
    smtp_server: SmtpFactory, sqlite_store: SQLiteStore
) -> None:
    """Some recipients got the mail, the others were refused for now, then for good: that went
    dead, where the same refusals in one attempt count as sent (a warning says who)."""
    fake = await smtp_server()
    env = ChannelEnv(HttpClient(), sys.stdout, 2.0, sqlite_store)
    ch = EmailChannel("team-email", email_settings(fake.port), env)
    fake.rcpt_replies = ["", "450 4.2.0 greylisted, try again later"]
    with pytest.raises(DeliveryError):
        await ch.send(outgoing())
    fake.rcpt_replies = []
    fake.refuse = {"team@example.com": "550 5.1.1 no such user"}
    await ch.send(outgoing())  # sent: oncall has it, team never will
    await ch.send(outgoing())  # a replay: nobody is mailed again
    assert [m.rcpt_tos for m in await fake.wait_for(1)] == [["oncall@example.com"]]
    assert len(fake.messages) == 1


async def test_a_retry_refused_for_now_again_still_says_the_others_have_it(
    smtp_server: SmtpFactory, sqlite_store: SQLiteStore
) -> None:
    """The recipients left over were refused for now once more: the error (and the dead letter,
    if it stays so) said "SMTP 450", as if nobody had the mail, where the first try said "for 1
    of 2 recipients"."""
    fake = await smtp_server()
    env = ChannelEnv(HttpClient(), sys.stdout, 2.0, sqlite_store)
    ch = EmailChannel("team-email", email_settings(fake.port), env)
    fake.rcpt_replies = ["", "450 4.2.0 greylisted, try again later"]
    details = []
    for script in (fake.rcpt_replies, ["451 4.3.0 still busy"]):
        fake.rcpt_replies = script
        with pytest.raises(DeliveryError) as info:
            await ch.send(outgoing())
        details.append((info.value.reason, info.value.retryable, info.value.detail))
    assert details == [
        ("server_error", True, "SMTP 450 for 1 of 2 recipients"),
        ("server_error", True, "SMTP 451 for 1 of 2 recipients"),
    ]
    assert [m.rcpt_tos for m in await fake.wait_for(1)] == [["oncall@example.com"]]


async def test_too_many_recipients_at_once_get_the_mail_on_the_retry(
    smtp_server: SmtpFactory, sqlite_store: SQLiteStore
) -> None:
    """RFC 5321 4.5.3.1.10: a 552 to RCPT is "too many recipients" (RFC 821's code for it), to
    be taken as 452. It was a refusal for good: those past the server's limit never got it."""
    fake = await smtp_server()
    ch = EmailChannel(
        "team-email",
        email_settings(fake.port),
        ChannelEnv(HttpClient(), sys.stdout, 2.0, sqlite_store),
    )
    fake.rcpt_replies = ["", "552 5.5.3 too many recipients"]
    with pytest.raises(DeliveryError) as info:
        await ch.send(outgoing())
    err = info.value
    assert (err.reason, err.retryable, err.detail) == (
        "server_error",
        True,
        "SMTP 552 for 1 of 2 recipients",
    )
    await ch.send(outgoing())
    first, second = await fake.wait_for(2)
    assert (first.rcpt_tos, second.rcpt_tos) == (["oncall@example.com"], ["team@example.com"])


async def test_starttls_and_auth(smtp_server: SmtpFactory, smtp_pki: Pki) -> None:
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    good = {"starttls": True, "ca_file": str(smtp_pki.ca_file), "username": USER}
    await channel(fake.port, **good, password=PASSWORD).send(outgoing())
    assert len(await fake.wait_for(1)) == 1

    err = await failure(channel(fake.port, **good, password="wrong-" + PASSWORD))
    assert (err.reason, err.retryable, err.detail) == ("auth_error", False, "SMTP 535 5.7.8")

    untrusted = await failure(channel(fake.port, starttls=True, username=USER, password=PASSWORD))
    assert (untrusted.reason, untrusted.retryable) == ("network", True)
    assert untrusted.detail == "TLS: certificate not trusted"

    # AUTH only after STARTTLS, not done (allowed to this machine): dead at once, saying the fix
    cleartext = await failure(channel(fake.port, username=USER, password=PASSWORD))
    assert (cleartext.reason, cleartext.retryable, cleartext.detail) == (
        "auth_error",
        False,
        "server offers no AUTH without STARTTLS (STARTTLS not done): enable starttls",
    )

    anonymous = await failure(channel(fake.port))
    assert (anonymous.reason, anonymous.retryable, anonymous.detail) == (
        "auth_error",
        False,
        "SMTP 530; the server offers STARTTLS (not done): enable starttls",
    )

    unchecked = channel(
        fake.port, starttls=True, validate_certs=False, username=USER, password=PASSWORD
    )
    await unchecked.send(outgoing())
    assert len(await fake.wait_for(2)) == 2


@pytest.mark.parametrize(
    ("sender", "right"),
    [
        ("relay@bücher.example", "xn--bcher-kva.example"),  # IDN: its ASCII form
        ("Relay <relay@[192.0.2.1]>", "[192.0.2.1]"),  # a domain literal is one too
    ],
)
async def test_the_message_id_is_unique_to_the_sender_domain(
    smtp_server: SmtpFactory, sender: str, right: str
) -> None:
    """Every relay wrote `<id@relay>`: RFC 5322 3.6.4 wants a Message-ID unique to its host
    (the right side a domain of the sender's), not one shared by every installation. It is the
    From address's domain, in ASCII."""
    fake = await smtp_server()
    settings = email_settings(fake.port).model_copy(update={"from_": sender})
    await make_channel(settings).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.message()["Message-ID"] == f"<{NTF}@{right}>"


@pytest.mark.parametrize("sender", ["relay@example.com.", "relay@exa..mple.com"])
async def test_a_from_domain_no_message_id_can_hold_gives_this_machines_name(sender: str) -> None:
    """A From that config takes, yet whose domain is no msg-id's right side (a trailing dot,
    an empty label): this machine's name, as the EHLO gives it (no server takes such a
    sender, so the domain is found here alone)."""
    assert await id_domain(sender) == _smtp.this_host()
    assert await id_domain(sender, "mx.relay.example") == "mx.relay.example"  # what EHLO says


async def test_a_recovery_replies_to_the_failure_mail(smtp_server: SmtpFactory) -> None:
    fake = await smtp_server()
    failure = "ntf:prod-failures:mail:run_1:FAILED"
    recovery = dataclasses.replace(outgoing(), recovers=Recovery(failure, None))
    await channel(fake.port).send(recovery)
    [got] = await fake.wait_for(1)
    mail = got.message()
    assert (
        mail["In-Reply-To"]
        == mail["References"]
        == "<ntf-prod-failures-mail-run_1-FAILED@example.com>"
    )
    assert mail["Message-ID"] == f"<{NTF}@example.com>"


async def test_implicit_tls(smtp_server: SmtpFactory, smtp_pki: Pki) -> None:
    fake = await smtp_server("tls")
    await channel(fake.port, tls=True, ca_file=str(smtp_pki.ca_file)).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.message()["Message-ID"] == f"<{NTF}@example.com>"


async def test_implicit_tls_to_a_plain_port_says_the_server_spoke_plain_text(
    smtp_server: SmtpFactory, smtp_pki: Pki
) -> None:
    """`tls: true` to a port of plain SMTP (587, 25): the server's greeting is no TLS record
    (OpenSSL: WRONG_VERSION_NUMBER). That said "TLS: handshake failed", as a broken server
    would; it says the likely fix."""
    fake = await smtp_server()
    err = await failure(channel(fake.port, tls=True, ca_file=str(smtp_pki.ca_file)))
    detail = "TLS: the server answered in plain text (no TLS on this port)"
    assert (err.reason, err.retryable, err.detail) == ("network", True, detail)


async def test_a_relative_ca_file_is_found_beside_the_config(
    smtp_server: SmtpFactory, smtp_pki: Pki, tmp_path: Path
) -> None:
    """As templates.dir: before, `ca_file: ca.pem` was looked up in the working directory, so
    the config that `relay check` passed in its own directory failed anywhere else."""
    fake = await smtp_server("starttls")
    config = tmp_path / "conf" / "relay.yaml"
    config.parent.mkdir()
    (config.parent / "ca.pem").write_bytes(smtp_pki.ca_file.read_bytes())
    smtp = f"{{host: 127.0.0.1, port: {fake.port}, starttls: true, ca_file: ca.pem}}"
    config.write_text(
        f"channels:\n  mail:\n    type: email\n    smtp: {smtp}\n"
        "    from: relay@example.com\n    to: [oncall@example.com]\n"
    )
    loaded = check_file(config, settings_models(), {}).loaded()
    settings = loaded.config.channels["mail"]
    assert isinstance(settings, EmailSettings)
    assert settings.smtp.ca_file == config.parent / "ca.pem"
    await make_channel(settings).send(outgoing())
    assert len(await fake.wait_for(1)) == 1


async def test_ssl_cert_file_is_honoured(
    smtp_server: SmtpFactory, smtp_pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = await smtp_server("starttls")
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_pki.ca_file))
    await channel(fake.port, starttls=True).send(outgoing())
    assert len(await fake.wait_for(1)) == 1


async def test_starttls_required_but_not_offered_is_dead_at_once(smtp_server: SmtpFactory) -> None:
    """`starttls: true`, the server does not offer it: that was `other` (aiosmtplib's "SMTP
    STARTTLS extension not supported by server."), retried until max_age, though no retry
    changes what the server offers. Nothing goes in clear: no mail, no MAIL FROM."""
    fake = await smtp_server()
    err = await failure(channel(fake.port, starttls=True))
    assert (err.reason, err.retryable) == ("client_error", False)
    assert err.detail == (  # and what to do, as the other SMTP refusals say it
        "server does not offer STARTTLS (starttls: true): nothing sent in clear;"
        " disable starttls to send without TLS"
    )
    assert fake.messages == [] and b"MAIL FROM" not in bytes(fake.received)


async def test_auth_with_no_mechanism_relay_speaks_is_dead_at_once(
    smtp_server: SmtpFactory, smtp_pki: Pki
) -> None:
    """AUTH offered with XOAUTH2 only: aiosmtplib's "No suitable authentication method found."
    was `other`, retried until max_age; now dead at once, naming what the server offers."""
    fake = await smtp_server("tls")
    fake.auth_offered = "XOAUTH2"
    creds = {"username": USER, "password": PASSWORD, "ca_file": str(smtp_pki.ca_file)}
    err = await failure(channel(fake.port, tls=True, **creds))
    assert (err.reason, err.retryable) == ("auth_error", False)
    assert err.detail == "server offers AUTH XOAUTH2 only; relay speaks CRAM-MD5 PLAIN LOGIN"
    assert fake.messages == []


async def test_a_non_ascii_address_to_a_server_without_smtputf8_is_permanent(
    smtp_server: SmtpFactory,
) -> None:
    """Retrying cannot help (the server lacks SMTPUTF8): with no recipient the server can take,
    dead at once, so the operator sees it now and not after max_age of retries."""
    fake = await smtp_server()
    update = {"to": ["jürgen@example.com"], "cc": ["équipe@exemple.fr"]}
    err = await failure(make_channel(email_settings(fake.port).model_copy(update=update)))
    assert (err.reason, err.retryable) == ("client_error", False)
    assert err.detail == "server does not take non-ASCII addresses (no SMTPUTF8)"
    assert fake.messages == []


async def test_a_non_ascii_local_part_without_smtputf8_leaves_out_only_that_recipient(
    smtp_server: SmtpFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """`to: [ops@…, jürgen@…]` to a server without SMTPUTF8: the mail went to nobody (dead,
    "no SMTPUTF8"). Now ops gets it, and jürgen is named as a recipient refused for good."""
    fake = await smtp_server()
    update = {"to": ["ops@example.com", "Jürgen <jürgen@example.com>"], "cc": []}
    with caplog.at_level(logging.WARNING, logger="relay.channels.email"):
        await make_channel(email_settings(fake.port).model_copy(update=update)).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.rcpt_tos == ["ops@example.com"]
    [record] = caplog.records
    said = {k: record.__dict__[k] for k in ("refused", "refused_no_smtputf8", "recipients")}
    assert said == {"refused": 1, "refused_no_smtputf8": ["jürgen@example.com"], "recipients": 2}


async def test_headers_without_smtputf8_name_no_address_they_cannot_hold(
    smtp_server: SmtpFactory, sqlite_store: SQLiteStore
) -> None:
    """An ASCII header cannot hold jürgen@…: it went out as `<=?utf-8?q?j=C3=BCrgen?=@…>`, an
    encoded word inside an address (RFC 2047 5: never), so a mail client's reply-all wrote to
    that string. The To and Cc that a mail client reads name only whom the server can take,
    also on the retry that mails the others only."""
    fake = await smtp_server()
    to = ["ops@example.com", "Jürgen <jürgen@example.com>"]
    settings = email_settings(fake.port).model_copy(update={"to": to, "cc": ["équipe@x.fr"]})
    ch = EmailChannel(
        "team-email", settings, ChannelEnv(HttpClient(), sys.stdout, 2.0, sqlite_store)
    )
    fake.rcpt_replies = ["450 4.2.0 greylisted, try again later"]  # ops: on the retry
    with pytest.raises(DeliveryError):
        await ch.send(outgoing())
    await ch.send(outgoing())
    [got] = await fake.wait_for(1)
    mail = got.message()
    assert got.rcpt_tos == ["ops@example.com"] and got.data.isascii()
    assert (mail["To"], mail["Cc"]) == ("ops@example.com", None)
    assert not mail["To"].defects


@pytest.mark.parametrize(
    ("mode", "smtp", "detail"),
    [
        ("plain", {}, "server offers no AUTH (STARTTLS not done, nor offered)"),
        ("starttls", {"starttls": True}, "server offers no AUTH, even after STARTTLS"),
        ("tls", {"tls": True}, "server offers no AUTH (over implicit TLS)"),
    ],
)
async def test_a_server_that_offers_no_auth_is_dead_at_once(
    smtp_server: SmtpFactory, smtp_pki: Pki, mode: str, smtp: dict[str, Any], detail: str
) -> None:
    """Credentials set, the server offers no AUTH: that was `other`, retried until max_age,
    though no retry changes what the server offers. (AUTH offered only after STARTTLS, not
    done: test_starttls_and_auth.)"""
    fake = await smtp_server(mode)
    fake.offer_auth = False
    creds = {"username": USER, "password": PASSWORD, "ca_file": str(smtp_pki.ca_file)}
    err = await failure(channel(fake.port, **creds, **smtp))
    assert (err.reason, err.retryable, err.detail) == ("auth_error", False, detail)
    assert fake.messages == []


async def test_an_idn_domain_goes_in_ascii_to_a_server_without_smtputf8(
    smtp_server: SmtpFactory,
) -> None:
    """Only a non-ASCII local part needs SMTPUTF8; a domain has its ASCII form (IDNA). Before,
    such a mail was a dead letter ("no SMTPUTF8"), and the To header would have carried an
    encoded word inside the address."""
    fake = await smtp_server()
    to = ["Jörg Müller <ops@bücher.example>", "oncall@example.com"]
    settings = email_settings(fake.port).model_copy(update={"to": to, "cc": ["x@münchen.de"]})
    await make_channel(settings).send(outgoing())
    [got] = await fake.wait_for(1)
    wanted = ["ops@xn--bcher-kva.example", "oncall@example.com", "x@xn--mnchen-3ya.de"]
    assert got.rcpt_tos == wanted
    assert got.data.isascii()
    mail = got.message()
    assert mail["To"] == "Jörg Müller <ops@xn--bcher-kva.example>, oncall@example.com"
    assert mail["Cc"] == "x@xn--mnchen-3ya.de" and not mail["To"].defects


async def test_an_idn_domain_in_a_reply_to_of_headers_goes_in_ascii_too(
    smtp_server: SmtpFactory,
) -> None:
    """`headers: {Reply-To: ops@bücher.example}` went out as `<ops@=?utf-8?q?b=C3=BCcher?=
    .example>`: an encoded word inside an address (RFC 2047 5: never), so a reply went to that
    string. Address headers of `headers` get their domains in ASCII, as To and Cc."""
    fake = await smtp_server()
    headers = {"Reply-To": "Jörg <ops@bücher.example>, x@example.com"}
    raw = email_settings(fake.port).model_dump(by_alias=True)
    await make_channel(EmailSettings.model_validate({**raw, "headers": headers})).send(outgoing())
    [got] = await fake.wait_for(1)
    reply_to = got.message()["Reply-To"]
    assert reply_to == "Jörg <ops@xn--bcher-kva.example>, x@example.com"
    assert not reply_to.defects


async def test_a_quoted_local_part_at_an_idn_domain_keeps_its_one_pair_of_quotes(
    smtp_server: SmtpFactory,
) -> None:
    """`"john doe"@bücher.example` went into To as `"\\"john doe\\""@xn--bcher-kva.example`: the
    quotes became part of the name, another mailbox for a reply-all."""
    fake = await smtp_server()
    raw = email_settings(fake.port).model_dump(by_alias=True)
    headers = {"Reply-To": '"jane doe"@bücher.example'}
    to = ['"john doe"@bücher.example']
    await make_channel(EmailSettings.model_validate({**raw, "to": to, "headers": headers})).send(
        outgoing()
    )
    [got] = await fake.wait_for(1)
    mail = got.message()
    assert got.rcpt_tos[0] == '"john doe"@xn--bcher-kva.example'
    assert mail["To"] == '"john doe"@xn--bcher-kva.example'
    assert mail["Reply-To"] == '"jane doe"@xn--bcher-kva.example'


async def test_an_idn_domain_is_encoded_as_idna_2008_not_2003(smtp_server: SmtpFactory) -> None:
    """Python's 'idna' codec is IDNA 2003, which maps ß to ss (and a final sigma to a sigma):
    mail for faß.de went to fass.de, someone else's domain. IDNA 2008 (UTS 46) keeps them."""
    fake = await smtp_server()
    to = ["Ops <ops@faß.de>", "x@ς.example"]
    settings = email_settings(fake.port).model_copy(update={"to": to, "cc": []})
    await make_channel(settings).send(outgoing())
    [got] = await fake.wait_for(1)
    assert got.rcpt_tos == ["ops@xn--fa-hia.de", "x@xn--3xa.example"]
    assert got.message()["To"] == "Ops <ops@xn--fa-hia.de>, x@xn--3xa.example"


def test_a_domain_that_has_no_ascii_form_is_refused() -> None:
    with pytest.raises(ValidationError, match="is not a valid domain name"):
        EmailSettings.model_validate(
            {**email_settings(25).model_dump(by_alias=True), "to": ["a@" + "ü" * 70 + ".de"]}
        )


async def test_nothing_listening_is_network() -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = await failure(channel(port, username=USER, password=PASSWORD))
    assert (err.reason, err.retryable, err.detail) == ("network", True, "connection refused")


async def test_a_server_that_never_answers_is_a_timeout_at_greeting(silent_smtp: int) -> None:
    """A timeout says where, as a 421 does: a server that never greets is most often a port of
    implicit TLS (465) spoken to in plain text, which said only "no answer in time"."""
    settings = email_settings(silent_smtp).model_copy(update={"timeout": 0.3})
    err = await asyncio.wait_for(failure(make_channel(settings)), 30)  # a guard, not a measure
    detail = "no answer in time at greeting"
    assert (err.reason, err.retryable, err.detail) == ("timeout", True, detail)


async def test_a_server_silent_after_data_costs_one_timeout_not_two(
    smtp_server: SmtpFactory,
) -> None:
    """The attempt ends at its deadline: no polite QUIT to a server that already stopped answering
    (that QUIT waited a second `timeout`, eating the lease margin of the delivery worker). Told
    by what the server got before the client hung up, not by a clock."""
    fake = await smtp_server()
    fake.stall = {"DATA"}
    settings = email_settings(fake.port).model_copy(update={"timeout": 2.0})
    err = await failure(make_channel(settings))
    # "to DATA": the server may have queued the mail, and the retry sends it again
    assert (err.reason, err.retryable, err.detail) == ("timeout", True, "no answer in time to DATA")
    await asyncio.wait_for(fake.hung_up.wait(), 30)
    _, end_of_data, after = bytes(fake.received).partition(b"\r\n.\r\n")
    assert end_of_data and after == b"", after  # the mail went out, unanswered; then nothing


async def test_a_slow_verdict_on_the_mail_is_waited_for_not_sent_again(
    smtp_server: SmtpFactory,
) -> None:
    """A server that answers every command within `timeout`, but the session as a whole takes
    longer (a slow RCPT lookup, then a content scan before the 250 to the mail): the attempt
    timed out while the server was queueing the mail, and every retry sent it once more (3
    copies and a dead letter "timeout" with 3 attempts). The DATA phase now has its own
    `timeout`, as RFC 5321 4.5.3.2 gives the reply to the mail a wait of its own."""
    fake = await smtp_server()
    fake.slow = {"RCPT": 1.6, "DATA": 1.6}  # each well within the 3 s, together past them
    settings = email_settings(fake.port).model_copy(update={"cc": [], "timeout": 3.0})
    await make_channel(settings).send(outgoing())
    assert len(fake.messages) == 1


async def test_mail_accepted_then_no_answer_to_quit_is_sent(smtp_server: SmtpFactory) -> None:
    """250 after DATA is delivery: a QUIT left unanswered must not turn it into a timeout,
    which would retry and send the mail twice."""
    fake = await smtp_server()
    fake.stall = {"QUIT"}
    settings = email_settings(fake.port).model_copy(update={"timeout": 2.0})
    await make_channel(settings).send(outgoing())
    assert len(fake.messages) == 1


# ----------------------------------------------------------------------------- end to end


async def test_send_test_fails_when_a_recipient_is_refused_for_good(
    smtp_server: SmtpFactory, tmp_path: Path
) -> None:
    """`relay send-test` exited 0 when the server refused one recipient for good (a stderr
    warning alone said so): the operator checking a new `to` list missed the typo. Now exit 1,
    naming who and why, and saying the others got the mail."""
    fake = await smtp_server()
    fake.refuse = {"tema@example.com": "550 5.1.1 no such user"}
    config = tmp_path / "relay.yaml"
    config.write_text(f"""\
channels:
  mail:
    type: email
    smtp: {{host: 127.0.0.1, port: {fake.port}, starttls: false}}
    from: relay@example.com
    to: [oncall@example.com, tema@example.com, jürgen@example.com]
rules:
  - {{name: r1, notify: [mail]}}
""")
    result = await asyncio.to_thread(run_cli, "send-test", "mail", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert [m.rcpt_tos for m in fake.messages] == [["oncall@example.com"]]
    assert (
        "send-test to mail failed: client_error: refused for good: tema@example.com (SMTP 550),"
        " jürgen@example.com (no SMTPUTF8 on the server for its non-ASCII name);"
        " the other 1 of 3 got the mail"
    ) in result.stderr


def relay_config(port: int, ca_file: Path, password: str = PASSWORD) -> str:
    return f"""\
defaults:
  retry: {{max_attempts: 4, max_age: 1h, min_backoff: 100ms, max_backoff: 400ms}}
  timeout: 3s
  project_ref: proj_test
channels:
  team-email:
    type: email
    smtp: {{host: 127.0.0.1, port: {port}, starttls: true, username: {USER}, password: "{password}", ca_file: "{ca_file}"}}
    from: Relay <relay@example.com>
    to: [oncall@example.com]
rules:
  - name: failures
    match: {{status: [failure]}}
    notify: [team-email]
"""


async def settled(r: Any, ident: str, state: str) -> Any:
    for _ in range(600):
        row = await r.service.store.get(ident)
        if row is not None and row.state == state:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ident} never became {state}: {row}")


async def e2e(relay: RelayFactory, fake: FakeSMTP, pki: Pki, password: str = PASSWORD) -> Any:
    r = await relay(relay_config(fake.port, pki.ca_file, password))
    status, _ = await r.post(sdk_run("failed"))
    assert status == 202
    return r, notification_id("run_cmuxjbf30kqkowywawhi1r8yr", "failures", "team-email")


async def test_end_to_end_starttls_auth(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    r, ident = await e2e(relay, fake, smtp_pki)
    [got] = await fake.wait_for(1)
    mail = got.message()
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    assert mail["Subject"].startswith("[relay] 🔴 FAILED sync-customer-data: Stripe API")
    assert mail["Message-ID"] == f"<{ident}@example.com>"
    assert "https://cloud.trigger.dev/projects/v3/proj_test/runs/run_cmuxjbf30kqkowywawhi1r8yr" in (
        mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    )
    row = await settled(r, ident, "sent")
    assert row.attempts == 1
    assert PASSWORD not in caplog.text


async def test_end_to_end_451_then_accept_is_delivered_once(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki
) -> None:
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    fake.data_replies = ["451 4.7.1 try later"]
    r, ident = await e2e(relay, fake, smtp_pki)
    row = await settled(r, ident, "sent")
    assert row.attempts == 2 and len(fake.messages) == 1


async def test_end_to_end_421_waits_the_backoff_before_the_retry(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """421 is the server shedding load or going down (RFC 5321 4.5.4.1: the client MUST delay
    its retry). Before, relay tried twice more within a quarter of a second, in process."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    fake.data_replies = ["421 4.3.2 closing, try later"]
    r, ident = await e2e(relay, fake, smtp_pki)
    row = await settled(r, ident, "sent")
    assert row.attempts == 2 and len(fake.messages) == 1
    [retry] = [rec for rec in caplog.records if rec.getMessage() == "delivery failed; will retry"]
    assert (retry.__dict__["reason"], retry.__dict__["attempts"]) == ("rate_limited", 1)


async def test_end_to_end_a_4xx_waits_the_backoff_before_the_retry(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """An SMTP 4xx is "try later" (greylisting, a full mailbox, a rate limit): relay tried twice
    more within a quarter of a second, got the same answer, and spent three of max_attempts a
    round, so with the default retry a 4xx lasting about four minutes (postgrey's 5-minute
    greylisting) made the mail dead; one attempt a round lasts about twenty."""
    caplog.set_level(logging.INFO, logger="relay.delivery")
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    fake.rcpt_replies = ["450 4.2.0 greylisted, try again later"] * 2
    r, ident = await e2e(relay, fake, smtp_pki)
    row = await settled(r, ident, "sent")
    assert row.attempts == 3 and len(fake.messages) == 1
    retries = [x for x in caplog.records if x.getMessage() == "delivery failed; will retry"]
    assert [(x.__dict__["reason"], x.__dict__["attempts"]) for x in retries] == [
        ("server_error", 1),
        ("server_error", 2),
    ]


async def test_end_to_end_wrong_password_is_dead_without_the_password(
    relay: RelayFactory, smtp_server: SmtpFactory, smtp_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    fake = await smtp_server("starttls", credentials=(USER, PASSWORD))
    wrong = "wrong-" + PASSWORD
    r, ident = await e2e(relay, fake, smtp_pki, password=wrong)
    row = await settled(r, ident, "dead")
    assert row.reason == "auth_error" and row.attempts == 1
    [dead] = await r.service.store.dead_letters()
    async with r.http.get(r.url + "/v1/dlq") as resp:
        listed = json.dumps(await resp.json())
    for text in (repr(dead), listed, caplog.text):
        assert wrong not in text and PASSWORD not in text
    assert "SMTP 535" in (dead.last_error or "")
