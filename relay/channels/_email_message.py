"""The mail relay writes for a notification: build_message (From/To/Cc with ASCII domains,
a stable Message-ID, a recovery's In-Reply-To, text and HTML parts), id_domain for the
Message-ID's right side, and ascii_recipients_only for a server without SMTPUTF8."""

from __future__ import annotations

import contextlib
import functools
import re
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import TYPE_CHECKING

from relay.channels import Outgoing
from relay.channels._email_addresses import ascii_domain, header_addresses
from relay.channels._smtp import local_host, one_line

if TYPE_CHECKING:
    from relay.channels._email_settings import EmailSettings

# relay's defaults a user's `headers` replace (not added twice: a mail with two Auto-Submitted)
_OVERRIDABLE = {"Auto-Submitted": "auto-generated"}


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
        domain = ascii_domain(f"x@{domain}").rpartition("@")[2]
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
    mail["From"] = header_addresses([settings.from_])
    mail["To"] = header_addresses(settings.to)
    if settings.cc:
        mail["Cc"] = header_addresses(settings.cc)
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


def ascii_recipients_only(mail: EmailMessage) -> None:
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
