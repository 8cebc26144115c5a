"""`email`: SMTP delivery with aiosmtplib: STARTTLS or implicit TLS, optional AUTH.

One message per notification: multipart/alternative with text/plain (`txt` part) and text/html
(`html` part, autoescaped), both UTF-8 quoted-printable so any server takes them. The subject
is the `subject` part on one line, at most 200 characters. `Message-ID: <{notification_id}@{the
From's domain}>` (in ASCII; this machine's name if that domain cannot be one: id_domain)
is stable, so a resend after a lost reply is the same mail to a deduplicating system; the
id is also in `X-Relay-Notification-Id`. A recovery's `In-Reply-To` and `References` name the
failure's mail, so mail clients that thread by them show one thread (Gmail and Outlook
also want the same subject). `Auto-Submitted: auto-generated`
keeps vacation auto-replies away (a user's own `headers: {Auto-Submitted: ...}` replaces it).
TLS trusts the system store (and SSL_CERT_FILE) plus `smtp.ca_file`. A username and password
need STARTTLS or implicit TLS unless the host is this machine (as Go's smtp.PlainAuth, used
by Alertmanager).

Failures are translated once, at the SMTP boundary (relay.channels._smtp has the table).

When the server takes a mail for some recipients and refuses others for now (a 4xx to RCPT:
greylisting, a full mailbox), the recipients done with (accepted, or refused for good) are kept
in the store (namespace `email_sent`, key `<channel name>:<notification id>`, pruned with the
runs) and the attempt fails retryable: the retry, and a replay from the dead letters, send the
same mail to the others only, so nobody gets it twice and nobody is dropped for a busy server.

A recipient whose local part is not ASCII, to a server without SMTPUTF8, is one refused for
good: the others get the mail, and its To and Cc leave it out (no ASCII header can hold
it). `relay send-test` (ChannelEnv.partial_fails) fails a mail some recipients were refused
for good, naming them, where `serve` counts it sent and warns.

TLS failures are retryable: a handshake blip or a certificate renewed mid-rotation heals by
itself, and a wrong CA still ends as a dead letter (detail "TLS: certificate not trusted") once
the retries run out, instead of dropping alerts during a renewal. Details carry the reply code,
never the server's text, the host or the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
import time
from email.headerregistry import Address, AddressHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any

import aiosmtplib
import idna
import orjson
from pydantic import (
    Field,
    FilePath,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from relay.channels import ChannelEnv, ChannelKind, Outgoing
from relay.channels._http_answers import LOCAL_HOSTS
from relay.channels._smtp import (
    SUBJECT_MAX_CHARS,
    Client,
    by_code,
    classify,
    for_now,
    local_host,
    one_line,
)
from relay.config import ChannelSettings, Strict, from_config_dir
from relay.errors import DeliveryError, StoreUnavailable

log = logging.getLogger("relay.channels.email")

_RESERVED = frozenset(
    ("from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "sender")
)
# relay's defaults a user's `headers` replace (not added twice: a mail with two Auto-Submitted)
_OVERRIDABLE = {"Auto-Submitted": "auto-generated"}
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
# EHLO's argument (RFC 5321 4.1.1.1): a domain, or an address literal in brackets
_EHLO_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[!-Z^-~]+\]")
SENT = "email_sent"  # kv: "<channel>:<notification id>" -> JSON list of recipients done with
__all__ = [
    "KIND",
    "SUBJECT_MAX_CHARS",
    "EmailChannel",
    "EmailSettings",
    "SmtpSettings",
    "classify",
]


def _check_address(value: str) -> str:
    """One address, plain or with a display name; it is the envelope address we return, its
    domain in ASCII (see `_ascii_domain`)."""
    if "\r" in value or "\n" in value:
        raise ValueError("addresses cannot contain line breaks")
    found = getaddresses([value])
    local, _, domain = found[0][1].rpartition("@") if len(found) == 1 else ("", "", "")
    if not local or not domain or _is_group(value):
        raise ValueError(f"{value!r} is not one email address")
    return _ascii_domain(found[0][1])


def _is_group(value: str) -> bool:
    """`Ops: EU <o@x.com>` is the group "Ops" (RFC 5322 3.4): From cannot hold one, and in To
    it swallowed every address after it. A display name with a ':' needs quotes."""
    probe = EmailMessage()
    try:
        probe["To"] = value
        return any(group.display_name is not None for group in probe["To"].groups)
    except _PARSER_FAILURES:  # no header can hold it: not one address
        return True


def _ascii_domain(address: str) -> str:
    """`ops@bücher.example` → `ops@xn--bcher-kva.example`: an IDN domain in its ASCII form
    (IDNA), as every server takes it; only a non-ASCII local part needs SMTPUTF8. Without it,
    the server refused the mail for want of SMTPUTF8 and the header got an encoded word in
    the middle of the address."""
    local, _, domain = address.rpartition("@")
    if domain.isascii() or not local.isascii():
        return address
    try:  # IDNA 2008 (UTS 46, not transitional): Python's 'idna' codec is IDNA 2003, which
        # made faß.de fass.de, another registrant's domain
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except UnicodeError:  # idna.IDNAError, and the codec's own
        raise ValueError(f"{domain!r} is not a valid domain name (IDNA 2008)") from None


def _header_addresses(entries: list[str]) -> str:
    """The `To`/`Cc` value: each entry as written, but with its domain in ASCII if it had to
    change (the display name stays as written, RFC 2047-encoded by the email package)."""
    out = []
    for entry in entries:  # each one address (EmailSettings checked them)
        name, address = getaddresses([entry])[0]
        ascii_address = _ascii_domain(address)
        out.append(entry if ascii_address == address else str(_address(name, ascii_address)))
    return ", ".join(out)


def _address(name: str, address: str) -> Address:
    """`address` as written (`"john doe"@x.com`): parsed, not split at its '@', which put the
    quotes inside the local part (`"\\"john doe\\""@x.com`, another mailbox)."""
    return Address(display_name=name, addr_spec=address)


def _split_addresses(value: str) -> list[str]:
    """`"a@x.com, Doe <b@y.com>"` → its addresses: split at the commas (or semicolons) outside
    quotes, <...> and (comments), blank entries dropped. Each is checked on its own afterwards,
    so a typo is refused instead of being dropped or mangled by a lenient parse of the whole."""
    entries: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    nested = {"<": 0, "(": 0}
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char in "<(" and not quoted:
            nested[char] += 1
        elif char in ">)" and not quoted:
            opener = "<" if char == ">" else "("
            nested[opener] = max(0, nested[opener] - 1)
        elif char in ",;" and not quoted and not any(nested.values()):
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return [entry.strip() for entry in entries if entry.strip()]


class SmtpSettings(Strict):
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)
    starttls: bool | None = None  # default: True unless implicit TLS
    tls: bool | None = None  # implicit TLS (SMTPS); default: True on port 465 unless `starttls`
    username: str | None = None
    password: SecretStr | None = None
    ca_file: FilePath | None = None
    validate_certs: bool = True
    hello: str | None = None  # the name EHLO gives; default: this machine's (socket.getfqdn, once)

    @model_validator(mode="after")
    def _coherent(self) -> SmtpSettings:
        if self.tls and self.starttls:
            raise ValueError("tls (implicit TLS) and starttls are exclusive; choose one")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.password is not None and not self._encrypted_or_local:
            raise ValueError(
                "username and password need starttls or tls: without TLS they cross the"
                " network in clear (allowed only to this machine)"
            )
        return self

    @property
    def _encrypted_or_local(self) -> bool:
        return self.use_tls or self.use_starttls or self.host.lower().strip("[]") in LOCAL_HOSTS

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() or c in "/@" for c in value):
            raise ValueError("host must be a host name or an IP address, without a scheme")
        if value.count(":") == 1:
            raise ValueError("host cannot carry a port; set smtp.port")
        return value

    @field_validator("hello")
    @classmethod
    def _hello(cls, value: str | None) -> str | None:
        if value is not None and not _EHLO_NAME.fullmatch(value):
            raise ValueError(
                "hello must be a domain name or an address literal such as [192.0.2.1]"
            )
        return value

    @field_validator("ca_file", mode="before")
    @classmethod
    def _from_config_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return from_config_dir(value, info)

    @field_validator("ca_file")
    @classmethod
    def _pem(cls, value: FilePath | None) -> FilePath | None:
        if value is not None:
            try:
                ssl.create_default_context(cafile=str(value))
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError("ca_file is not a readable PEM certificate bundle") from None
        return value

    @property
    def use_tls(self) -> bool:
        """Implicit TLS: as asked, else on port 465 (SMTPS) as Alertmanager does, unless the
        user asked for `starttls` either way (then the port is theirs to explain)."""
        if self.tls is not None:
            return self.tls
        return self.port == 465 and self.starttls is None

    @property
    def use_starttls(self) -> bool:
        return self.starttls if self.starttls is not None else not self.use_tls

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.use_tls else 587 if self.use_starttls else 25


class EmailSettings(ChannelSettings):
    smtp: SmtpSettings
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    headers: dict[str, str] = {}

    @field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        _check_address(value)
        return value

    @field_validator("to", "cc", mode="before")
    @classmethod
    def _one_string(cls, value: object) -> object:
        """Alertmanager's `to: "a@x.com, b@y.com"`: one string of comma-separated addresses."""
        if isinstance(value, str) and "\r" not in value and "\n" not in value:
            return _split_addresses(value)
        return [value] if isinstance(value, str) else value

    @field_validator("to", "cc")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        """Every bad address named at once: a list with two typos is fixed in one go."""
        problems = []
        for address in value:
            try:
                _check_address(address)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} must be printable ASCII without ':'")
            if name.lower() in _RESERVED or name.lower().startswith(("content-", "x-relay-")):
                raise ValueError(f"header {name} is set by relay")
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name} cannot contain line breaks")
            if not _parses(name, text):
                raise ValueError(f"header {name} is not a valid {name} value")
        return {name: _ascii_domains(name, text) for name, text in value.items()}


def _parses(name: str, text: str) -> bool:
    """The value parses as that header (Reply-To must hold addresses, ...) without defects."""
    probe = EmailMessage()
    try:
        probe[name] = text
        return not probe[name].defects
    except _PARSER_FAILURES:
        return False


def _ascii_domains(name: str, text: str) -> str:
    """An address header of `headers` (Reply-To ...) with its domains in ASCII, as To and Cc
    (`_header_addresses`): an ASCII header held `ops@bücher.example` as an encoded word inside
    the address (RFC 2047 5 forbids it), and a reply went to that string. A group stays."""
    probe = EmailMessage()
    probe[name] = text
    header = probe[name]
    if not isinstance(header, AddressHeader) or any(g.display_name for g in header.groups):
        return text
    if all(a.domain.isascii() for a in header.addresses):
        return text
    return ", ".join(
        str(_address(a.display_name, _ascii_domain(a.addr_spec))) for a in header.addresses
    )


# What the stdlib's header parser raises on some malformed input (`a@[192.0.2.1`: an
# AttributeError) besides a ValueError: a bad value, never a traceback.
_PARSER_FAILURES = (ValueError, TypeError, IndexError, AttributeError, NameError)


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    """System trust (honours SSL_CERT_FILE) plus `ca_file`; no verification if asked."""
    context = ssl.create_default_context()
    if smtp.ca_file is not None:
        context.load_verify_locations(cafile=str(smtp.ca_file))
    if not smtp.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _overridable(message: Outgoing, domain: str) -> dict[str, str]:
    """The headers relay sets unless `headers` has its own: a recovery replies to the failure's
    mail, so mail clients thread the two."""
    if message.recovers is None:
        return _OVERRIDABLE
    replied = message_id(message.recovers.notification_id, domain)
    return {**_OVERRIDABLE, "In-Reply-To": replied, "References": replied}


def message_id(notification_id: str, domain: str) -> str:
    """The Message-ID of a notification's mail: the same at every attempt."""
    return f"<{re.sub(r'[^A-Za-z0-9._-]', '-', notification_id)}@{domain}>"


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# RFC 5322 3.6.4's id-right: dot-atom-text or no-fold-literal
_ID_RIGHT = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*|\[[\x21-\x5a\x5e-\x7e]*\]")


@functools.cache
def _from_domain(sender: str) -> str | None:
    """The From's domain in ASCII, if it can end a Message-ID (`example.com.` cannot)."""
    domain = getaddresses([sender])[0][1].rpartition("@")[2]
    with contextlib.suppress(ValueError):  # EmailSettings refused an IDN one that cannot be
        domain = _ascii_domain(f"x@{domain}").rpartition("@")[2]
    return domain if _ID_RIGHT.fullmatch(domain) else None


async def id_domain(sender: str, hello: str | None = None) -> str:
    """The right side of the Message-IDs of mail from `sender` (the From): its domain in ASCII,
    as RFC 5322 3.6.4 wants one unique to the sender (`@relay` was every installation's); else,
    for a domain that is none there (`example.com.`), the name the EHLO gives: `hello` when
    configured, this machine's otherwise (_smtp.local_host: once per process, off the loop)."""
    if domain := _from_domain(sender):
        return domain
    host = hello or await local_host()
    return host if _ID_RIGHT.fullmatch(host) else "localhost"


def build_message(settings: EmailSettings, message: Outgoing, domain: str) -> EmailMessage:
    """The mail; `domain` ends its Message-ID (id_domain)."""
    mail = EmailMessage()
    mail["From"] = _header_addresses([settings.from_])
    mail["To"] = _header_addresses(settings.to)
    if settings.cc:
        mail["Cc"] = _header_addresses(settings.cc)
    mail["Subject"] = one_line(message.parts.get("subject", "")) or "relay notification"
    mail["Date"] = formatdate(message.timestamp, usegmt=True)
    mail["Message-ID"] = message_id(message.notification_id, domain)
    mail["X-Relay-Notification-Id"] = one_line(message.notification_id)
    if message.run_id:  # a digest is about many runs: no header rather than an empty one
        mail["X-Relay-Run-Id"] = one_line(message.run_id)
    for name, value in settings.headers.items():
        mail[name] = value
    for name, value in _overridable(message, domain).items():  # after: the user's own value wins
        if name not in mail:  # case-insensitive
            mail[name] = value
    mail.set_content(message.parts.get("txt", ""), cte="quoted-printable")
    mail.add_alternative(message.parts.get("html", ""), subtype="html", cte="quoted-printable")
    return mail


def _ascii_recipients_only(mail: EmailMessage) -> None:
    """To and Cc for a server without SMTPUTF8: without the addresses whose local part is not
    ASCII. An ASCII header cannot hold one (the email package wrote an encoded word inside the
    address, which RFC 2047 5 forbids, and a mail client's reply-all wrote to that string), and
    the server cannot take them as recipients either (Client.sendable)."""
    for name in ("To", "Cc"):
        header = mail[name]
        kept = [str(a) for a in header.addresses if a.username.isascii()] if header else []
        if header is None or len(kept) == len(header.addresses):
            continue
        if kept:
            mail.replace_header(name, ", ".join(kept))
        else:
            del mail[name]


class EmailChannel:
    def __init__(self, name: str, settings: ChannelSettings, env: ChannelEnv) -> None:
        assert isinstance(settings, EmailSettings)
        self.name = name
        self.settings = settings
        self._timeout_s = settings.timeout or env.default_timeout_s
        self._state = env.state
        self._partial_fails = env.partial_fails
        smtp = settings.smtp
        self._tls = tls_context(smtp) if smtp.use_tls or smtp.use_starttls else None
        self._sender = _check_address(settings.from_)
        everyone = [_check_address(a) for a in (*settings.to, *settings.cc)]
        self._recipients = list(dict.fromkeys(everyone))

    async def send(self, message: Outgoing) -> None:
        domain = await id_domain(self.settings.from_, self.settings.smtp.hello)
        mail = build_message(self.settings, message, domain)
        key = f"{self.name}:{message.notification_id}"
        done = await self._done(key, message)
        recipients = [r for r in self._recipients if r not in done]
        if not recipients:  # every one served by earlier attempts
            return
        client = Client(**self._options())
        try:
            refused = await self._transaction(client, mail, recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if not done:
                raise classify(exc) from None
            # the rest refused after others got it: as when that is one attempt (sent, or
            # retried "for n of m recipients", not a bare code as if nobody had the mail)
            refused = {r.recipient: r.code for r in exc.recipients}
        except Exception as exc:  # translated once, here; anything unknown becomes "other"
            raise _explained(classify(exc), self.settings.smtp, client) from None
        later = self._refused(message, refused, client.unsendable)
        if later or done:  # partly sent, now or before: keep who is done with
            served = done | {a for a in recipients if a not in later}
            await self._remember(key, served, message)
        if later:
            first = next(iter(later.values()))
            note = f" for {len(later)} of {len(self._recipients)} recipients"
            raise by_code(first, auth=False, note=note, rcpt=True)
        if self._partial_fails and (refused or client.unsendable):
            raise _refused_for_good(refused, client.unsendable, len(self._recipients))

    def _refused(
        self, message: Outgoing, refused: dict[str, int], unsendable: list[str]
    ) -> dict[str, int]:
        """Log the recipients the server refused (who, and the reply code: a typo in `to` is
        found in the log) and those it cannot take (a non-ASCII local part, no SMTPUTF8);
        return those refused for now (4xx), with the code."""
        if not refused and not unsendable:
            return {}
        later = {a: code for a, code in refused.items() if for_now(code)}
        log.warning(
            "some recipients were refused; sent to the others",
            extra={
                **message.log_fields(self.name),
                "refused": len(refused) + len(unsendable),
                "refused_codes": refused,
                "refused_no_smtputf8": unsendable,
                "later": len(later),
                "recipients": len(self._recipients),
            },
        )
        return later

    async def _done(self, key: str, message: Outgoing) -> set[str]:
        """The recipients earlier attempts of this notification are done with."""
        if self._state is None:
            return set()
        try:
            stored = await self._state.kv_get(SENT, key)
        except StoreUnavailable:  # mail everyone: a duplicate beats a lost alert
            log.warning("email recipients done with unknown", extra=message.log_fields(self.name))
            return set()
        value = orjson.loads(stored) if stored else []
        return {a for a in value if isinstance(a, str)} if isinstance(value, list) else set()

    async def _remember(self, key: str, done: set[str], message: Outgoing) -> None:
        if self._state is None:
            return
        try:
            await self._state.kv_put(SENT, key, orjson.dumps(sorted(done)).decode(), time.time())
        except StoreUnavailable:  # the retry mails everyone again: a duplicate, nothing lost
            log.warning("email recipients done with not saved", extra=message.log_fields(self.name))

    async def _transaction(
        self, client: Client, mail: EmailMessage, recipients: list[str]
    ) -> dict[str, int]:
        """Connect, log in, send, then QUIT in what is left of the attempt's `timeout` (the
        DATA phase starts a `timeout` of its own: Client.data); the reply codes of the
        recipients refused. Not aiosmtplib.send: its clean-up QUITs even after the deadline
        (one more `timeout` spent on a server that stopped answering), and a mail the server
        accepted is sent, whatever becomes of the QUIT (a timeout there retried it, and the
        mail went out twice)."""
        loop = asyncio.get_running_loop()
        budget = asyncio.timeout_at(loop.time() + self._timeout_s)
        client.budget, client.data_s = budget, self._timeout_s
        try:
            async with budget:
                await client.connect()
                await client.greet()
                await self._login(client)
                if not client.supports_extension("smtputf8"):
                    _ascii_recipients_only(mail)
                refused, _ = await client.send_message(
                    mail, sender=self._sender, recipients=client.sendable(self._sender, recipients)
                )
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPResponseException) as exc:
            said = client.closed_421(exc)  # the 421 that made aiosmtplib hang up, not the hang-up
            if said is not None:
                raise said from None
            raise
        else:
            left = (budget.when() or 0.0) - loop.time()
            if left > 0:
                with contextlib.suppress(Exception):
                    await client.quit(timeout=left)
            return {address: reply.code for address, reply in refused.items()}
        finally:
            client.close()

    async def _login(self, client: Client) -> None:
        """AUTH with the configured credentials. A server that offers no AUTH, or none of the
        mechanisms aiosmtplib speaks, will not start to: dead at once, saying whether STARTTLS
        was done (many offer AUTH only after it), or what it offers."""
        smtp = self.settings.smtp
        if smtp.username is None or smtp.password is None:
            return
        if not client.supports_extension("auth"):
            raise DeliveryError("auth_error", retryable=False, detail=_no_auth(smtp, client))
        if not client.supported_auth_methods:  # aiosmtplib's "No suitable authentication..."
            raise DeliveryError("auth_error", retryable=False, detail=_no_mechanism(client))
        await client.login(smtp.username, smtp.password.get_secret_value())

    def _options(self) -> dict[str, Any]:
        smtp = self.settings.smtp
        return {  # no username: _login logs in, and says so if the server offers no AUTH
            "hostname": smtp.host,
            "port": smtp.effective_port,
            "use_tls": smtp.use_tls,
            "start_tls": smtp.use_starttls,
            "tls_context": self._tls,
            "timeout": self._timeout_s,
            "local_hostname": smtp.hello,
        }


def _no_auth(smtp: SmtpSettings, client: Client) -> str:
    """Why a server that offers no AUTH will not take the credentials, and the likely fix."""
    if smtp.use_tls:
        return "server offers no AUTH (over implicit TLS)"
    if smtp.use_starttls:
        return "server offers no AUTH, even after STARTTLS"
    if client.supports_extension("starttls"):
        return "server offers no AUTH without STARTTLS (STARTTLS not done): enable starttls"
    return "server offers no AUTH (STARTTLS not done, nor offered)"


def _explained(err: DeliveryError, smtp: SmtpSettings, client: Client) -> DeliveryError:
    """`err` with what the session tells about it: where a timeout came (`at greeting`: often
    a port of implicit TLS spoken to in plain text; `to DATA`: the server may have the mail),
    as a 421 says; whether a 530 wants STARTTLS."""
    if err.reason == "timeout":
        where = f"to {client.command}" if client.command else "at greeting"
        return DeliveryError("timeout", retryable=True, detail=f"{err.detail} {where}")
    return _starttls_hint(err, smtp, client)


def _starttls_hint(err: DeliveryError, smtp: SmtpSettings, client: Client) -> DeliveryError:
    """A 530 from a server that offers STARTTLS, not done: servers say it for "must issue a
    STARTTLS command first" as well as for "authentication required"; say the setting, as
    `_no_auth` does, so nobody checks a password relay never sent."""
    if err.status != 530 or smtp.use_tls or smtp.use_starttls or not client.offers_starttls:
        return err
    detail = f"{err.detail}; the server offers STARTTLS (not done): enable starttls"
    return DeliveryError(err.reason, retryable=err.retryable, detail=detail, status=err.status)


def _no_mechanism(client: Client) -> str:
    """The AUTH mechanisms a server offers when relay speaks none of them (XOAUTH2 alone)."""
    offered = " ".join(m.upper() for m in client.server_auth_methods)[:100] or "none"
    spoken = " ".join(m.upper() for m in client.AUTH_METHODS)
    return f"server offers AUTH {offered} only; relay speaks {spoken}"


def _refused_for_good(refused: dict[str, int], unsendable: list[str], total: int) -> DeliveryError:
    """A mail some recipients were refused for good, as `relay send-test` reports it: who, why,
    and that the others got it."""
    named = [f"{a} (SMTP {code})" for a, code in refused.items()]
    named += [f"{a} (no SMTPUTF8 on the server for its non-ASCII name)" for a in unsendable]
    others = total - len(named)
    detail = f"refused for good: {', '.join(named)}; the other {others} of {total} got the mail"
    return DeliveryError("client_error", retryable=False, detail=detail)


KIND = ChannelKind("email", EmailSettings, EmailChannel, ("subject", "txt", "html"))
