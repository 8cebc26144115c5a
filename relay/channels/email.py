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

This module holds the SMTP session; the settings are relay.channels._email_settings (the
addresses and headers of the config are checked in relay.channels._email_addresses), the mail
is written by relay.channels._email_message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import orjson

from relay.channels import ChannelEnv, ChannelKind, Outgoing
from relay.channels._email_addresses import check_address
from relay.channels._email_message import ascii_recipients_only, build_message, id_domain
from relay.channels._email_settings import EmailSettings, SmtpSettings
from relay.channels._smtp import Client, Said421, by_code, classify, for_now, lookup_timed_out
from relay.channels._smtp_pool import SmtpPool
from relay.channels._tls import trusting
from relay.config import ChannelSettings
from relay.errors import DeliveryError, StoreUnavailable
from relay.outbound import HostAddresses

log = logging.getLogger("relay.channels.email")

SENT = "email_sent"  # kv: "<channel>:<notification id>" -> JSON list of recipients done with


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    """System trust (honours SSL_CERT_FILE) plus `ca_file`; no verification if asked."""
    context = trusting(smtp.ca_file)
    if not smtp.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


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
        self._hosts = HostAddresses()  # the server's addresses, shared by concurrent sends
        self._pool = SmtpPool(settings.concurrency if env.keep_sessions else 0)
        self._sender = check_address(settings.from_)
        everyone = [check_address(a) for a in (*settings.to, *settings.cc)]
        self._recipients = list(dict.fromkeys(everyone))

    async def send(self, message: Outgoing) -> None:
        domain = await id_domain(self.settings.from_, self.settings.smtp.hello)
        mail = build_message(self.settings, message, domain)
        key = f"{self.name}:{message.notification_id}"
        done = await self._done(key, message)
        recipients = [r for r in self._recipients if r not in done]
        if not recipients:  # every one served by earlier attempts
            return
        unsendable, refused = await self._attempt(mail, recipients, bool(done))
        later = self._refused(message, refused, unsendable)
        if later or done:  # partly sent, now or before: keep who is done with
            served = done | {a for a in recipients if a not in later}
            await self._remember(key, served, message)
        if later:
            first = next(iter(later.values()))
            note = f" for {len(later)} of {len(self._recipients)} recipients"
            raise by_code(first, auth=False, note=note, rcpt=True)
        if self._partial_fails and (refused or unsendable):
            raise _refused_for_good(refused, unsendable, len(self._recipients))

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

    async def close(self) -> None:
        """The channel is stopped: QUIT the sessions it keeps (relay.channels._smtp_pool)."""
        await self._pool.close()

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

    async def _attempt(
        self, mail: EmailMessage, recipients: list[str], resent: bool
    ) -> tuple[list[str], dict[str, int]]:
        """The mail sent over a session kept from an earlier mail, or over a new one (or
        another, `_instead`), all in one attempt's `timeout`; the recipients the server could
        not take (Client.sendable) and the codes of those it refused. Read off the session
        here: once given back, the next mail over it has its own."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        client = self._pool.take()
        if client is None and (cap := self._pool.full()):  # a connection would be refused
            client = await self._pool.wait(deadline)
            if client is None:
                raise _no_session_free(cap)
        client = client or Client(**self._options())
        while True:
            try:
                refused = await self._transaction(client, mail, recipients, deadline)
                return client.unsendable, refused
            except Exception as exc:
                instead = await self._instead(client, exc, deadline)
                if instead is None:
                    return client.unsendable, self._failed(exc, client, resent)
                client = instead

    async def _instead(self, client: Client, exc: Exception, deadline: float) -> Client | None:
        """The session to send over after `exc`, if any: a new one when a kept session had been
        ended by the server before DATA (nothing of the mail taken: Client.lost_before_data);
        another of this channel's, once free, when the server refused a new connection with
        a 421 at greeting while others are open (it takes fewer at once than `concurrency`:
        relay.channels._smtp_pool)."""
        if client.lost_before_data(exc):
            log.info(
                "the SMTP server had ended the kept session; connecting again",
                extra={"channel": self.name},
            )
            return Client(**self._options())
        if isinstance(exc, Said421) and exc.stage == "at greeting":
            self._pool.refused()
            return await self._pool.wait(deadline)
        return None

    def _failed(self, exc: Exception, client: Client, resent: bool) -> dict[str, int]:
        """`exc` translated (once, here; anything unknown becomes "other"), or, for every
        recipient left refused after others got the mail (`resent`), their codes: as when that
        is one attempt (sent, or retried "for n of m recipients", not a bare code as if nobody
        had the mail)."""
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            if not resent:
                raise classify(exc) from None
            return {r.recipient: r.code for r in exc.recipients}
        raise _explained(classify(exc), self.settings.smtp, client) from None

    async def _transaction(
        self, client: Client, mail: EmailMessage, recipients: list[str], deadline: float
    ) -> dict[str, int]:
        """Connect, log in (unless `client` is a kept session), send, then keep the session
        for the next mail (relay.channels._smtp_pool) or QUIT it in what is left of the
        attempt's `timeout` (the DATA phase starts a `timeout` of its own: Client.data); the
        reply codes of the recipients refused. Not aiosmtplib.send: it opens a connection per
        mail, its clean-up QUITs even after the deadline (one more `timeout` spent on a server
        that stopped answering), and a mail the server accepted is sent, whatever becomes of
        the QUIT (a timeout there retried it, and the mail went out twice)."""
        loop = asyncio.get_running_loop()
        budget = asyncio.timeout_at(deadline)
        client.budget, client.data_s = budget, self._timeout_s
        kept = False
        try:
            async with budget:
                if not client.reused:
                    with self._pool.connecting():
                        await client.open(self._hosts)
                        self._pool.lend(client)
                    await client.greet()
                    await self._login(client)
                if not client.supports_extension("smtputf8"):
                    ascii_recipients_only(mail)
                refused, _ = await client.send_message(
                    mail, sender=self._sender, recipients=client.sendable(self._sender, recipients)
                )
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPResponseException) as exc:
            said = client.closed_421(exc)  # the 421 that made aiosmtplib hang up, not the hang-up
            if said is not None:
                raise said from None
            raise
        else:
            kept = self._pool.give(client)
            left = (budget.when() or 0.0) - loop.time()
            if not kept and left > 0:
                with contextlib.suppress(Exception):
                    await client.quit(timeout=left)
            return {address: reply.code for address, reply in refused.items()}
        finally:
            if not kept:
                self._pool.release(client)

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
    if err.reason == "timeout" and client.looking_up:
        return lookup_timed_out()
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


def _no_session_free(cap: int) -> DeliveryError:
    """No session free by the end of the attempt, on a server that refuses more at once."""
    detail = f"SMTP 421 at greeting: the server takes {cap} connections at once, none free"
    return DeliveryError("rate_limited", retryable=True, detail=detail, status=421)


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
