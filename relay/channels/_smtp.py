"""The SMTP wire of the `email` channel: aiosmtplib's client as relay uses it, header lines
as servers take them, and the translation of failures into DeliveryError.

Failures are translated here, once, into DeliveryError (the outcomes of a mail taken for
some recipients only are the channel's, relay.channels.email, built from these):

  outcome                                              reason        retryable  detail
  some recipients refused for good (5xx), the rest ok  (sent; a warning names them, with codes)
  the rest refused for good on a retry (others had it) (sent, the same)
  some refused for now (4xx: greylisting), some ok     as below     yes        SMTP 450 for
  (ok now, or on an earlier try of the notification)                           1 of 2 recipients
  421 at any stage (the server sheds load)             rate_limited  yes        SMTP 421 to RCPT
                                                                                (at greeting, to
                                                                                EHLO, to DATA...)
  other 4xx: 450, 451, 452 (busy, greylisting)        server_error  yes        SMTP 451 4.7.1
  530, 534, 535, 538, SMTPAuthenticationError 5xx      auth_error    no         SMTP 535
  (a 530 from a server offering STARTTLS, not done: email.py adds "...: enable starttls")
  other 5xx: recipient, sender or data refused         client_error  no         SMTP 550 5.1.1
  every recipient refused: the first 4xx if any        as above                 SMTP 550
  552 to RCPT (RFC 5321 4.5.3.1.10: too many, as 452)  server_error  yes        SMTP 552
  timeout: connect, a reply, or the whole attempt      timeout       yes        no answer in time
                                                                                at greeting, to
                                                                                DATA... (email.py)
  (up to DATA; the DATA phase has a `timeout` of its own)
  refused connection, reset, disconnected              network       yes        connection refused
  the host name not found, or not in time (the attempt network       yes        SMTP host lookup
  ran out looking it up)                                                       failed: no answer
                                                                               in time
  TLS handshake or certificate verification            network       yes        TLS: ...
  a non-ASCII local part, server without SMTPUTF8:     (as a recipient refused for good: the
  for some recipients                                   others get it; the warning names them)
  for every recipient, or the sender                   client_error  no         server does
                                                                                not take ...
  username set, the server offers no AUTH (email.py)   auth_error    no         server offers
                                                                                no AUTH ...
  ... offers AUTH, no mechanism aiosmtplib speaks      auth_error    no         server offers
                                                                                AUTH only ...
  starttls: true, the server does not offer STARTTLS   client_error  no         server does not
                                                                                offer STARTTLS
  any other SMTPException                              other         yes        aiosmtplib's text
  a reply without a code, or a line too long          other         yes        malformed SMTP
                                                                                reply

A reply's enhanced status code (RFC 3463: "5.1.1" no such mailbox, "5.7.1" refused by policy)
follows its code in the detail: digits only, never the server's text.

A 421 to one RCPT of several makes aiosmtplib hang up before the next one: that is the 421
(rate_limited), not the "server disconnected" aiosmtplib says at the next RCPT.

The server's host name is looked up as the HTTP channels' are (relay.outbound.HostAddresses:
a thread of its own, one lookup per host at a time, kept 60 s), not by aiosmtplib through
asyncio's default executor: a DNS server slow to answer held its few threads (every other
send, the metrics, a reload waited), a lookup that outlived the attempt was said as "timeout
at greeting", and `relay send-test` waited for it at exit. aiosmtplib is handed the connected
socket; TLS still verifies the certificate against the host NAME (SNI too), not the address.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from typing import Any

import aiosmtplib

from relay.config_base import CONTROL_CHARS
from relay.errors import DeliveryError, network_error, tls_failure, wire_failure
from relay.filters import truncate_chars
from relay.logs import BIDI_OVERRIDES
from relay.outbound import AddrInfo, HostAddresses, in_own_thread

SUBJECT_MAX_CHARS = 200


_AUTH_CODES = frozenset((530, 534, 535, 538))
LOOKUP_FAILED = "SMTP host lookup failed"
# what to do, as the other SMTP refusals say it (`enable starttls`): a local relay or a test
# server offers no TLS, and the newcomer was left to find the key that allows it
NO_STARTTLS = (
    "server does not offer STARTTLS (starttls: true): nothing sent in clear;"
    " disable starttls to send without TLS"
)


# the bidirectional overrides: a subject would show in another order than it is written
# ("Trojan Source": `run_1<RLO>9` reads as another run); the text stays, in its own order
_BIDI_OVERRIDES = re.compile(f"[{BIDI_OVERRIDES}]")


def one_line(text: str, limit: int = SUBJECT_MAX_CHARS) -> str:
    """Whitespace (line breaks included) and control characters (a NUL from run data: servers
    refuse the mail) collapsed to single spaces, bidirectional overrides dropped, cut to `limit`
    with '…'."""
    line = " ".join(CONTROL_CHARS.sub(" ", _BIDI_OVERRIDES.sub("", text)).split())
    return truncate_chars(line, limit)


_HOST: list[str] = []  # this machine's name, once looked up
_LOOKING_UP = threading.Lock()


def this_host() -> str:
    """This machine's name (socket.getfqdn), for EHLO and a Message-ID's fallback, looked up
    once per process: two threads at once make one lookup, the other waits for its answer."""
    with _LOOKING_UP:
        if not _HOST:
            _HOST.append(socket.getfqdn())
        return _HOST[0]


async def local_host() -> str:
    """this_host, in a thread the first time: a slow reverse DNS lookup on the event loop
    stalled every other task, and one per connection ate into each attempt's timeout. A daemon
    thread of its own (relay.outbound.in_own_thread), as the server's name is looked up: in
    asyncio's default executor each concurrent send held one of its few threads meanwhile."""
    if _HOST:
        return _HOST[0]
    return str(await in_own_thread(asyncio.get_running_loop(), this_host))


class Said421(aiosmtplib.SMTPResponseException):
    """A 421 (the server closes the session), with where it came: `stage` is "at greeting" or
    "to <command>" (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA)."""

    def __init__(self, stage: str) -> None:
        super().__init__(421, "closing")
        self.stage = stage


# the commands a stage is named after (not an AUTH exchange's base64 lines: a password)
_COMMANDS = frozenset(
    (b"EHLO", b"HELO", b"STARTTLS", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"RSET", b"QUIT")
)


class Client(aiosmtplib.SMTP):
    """aiosmtplib's client, noting a 421 reply and the command it answered: aiosmtplib hangs
    up on one, so a 421 to the first RCPT of several surfaced as "server disconnected" at the
    next RCPT (network, tried again at once) instead of the server's "closing, slow down"
    (rate_limited, the backoff)."""

    said_421 = False
    stage_421 = ""  # "to RCPT": the command the 421 answered
    command = ""  # the last command sent
    unsendable: list[str] = []  # set per instance by `sendable`, never mutated
    offers_starttls = False  # noted by `greet`
    # the deadline of the attempt, and how long the DATA phase has from its start (see `data`)
    budget: asyncio.Timeout | None = None
    data_s = 0.0
    looking_up = False  # the host name's lookup is under way: a timeout now is no answer of it
    # kept between mails (relay.channels._smtp_pool): when it connected, the mails it sent
    opened = 0.0
    messages = 0
    reused = False  # this mail goes over a session an earlier mail used
    lent = False  # counted in use by the pool

    data_sent = False  # DATA was sent for this mail: the server may have it

    def again(self) -> None:
        """Ready for another mail over this session: no 421 or command of the last one."""
        self.reused, self.said_421, self.stage_421, self.command = True, False, "", ""
        self.data_sent = False

    async def open(self, hosts: HostAddresses) -> None:
        """aiosmtplib's connect, to the first address of `hostname` (looked up by `hosts`) that
        takes the connection; TLS verifies the name, as aiosmtplib's own connect does."""
        sock = await _first_connected(await self._addresses(hosts))
        self.opened = asyncio.get_running_loop().time()
        try:
            await self.connect(sock=sock, port=None)
        except BaseException:
            sock.close()
            raise

    async def _addresses(self, hosts: HostAddresses) -> list[AddrInfo]:
        assert self.hostname is not None and self.port is not None
        self.looking_up = True
        try:
            rows = await hosts.resolve(self.hostname, self.port)
        except socket.gaierror as exc:  # not found, or the resolver's own time ran out
            why = exc.strerror or type(exc).__name__
            detail = f"{LOOKUP_FAILED}: {why}"
            raise DeliveryError("network", retryable=True, detail=detail) from None
        self.looking_up = False
        return rows

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        """The DATA phase (the command, the mail, the server's verdict) gets `data_s` of its
        own: an attempt that timed out there had most likely been queued by the server, and the
        retry sent it again (RFC 5321 4.5.3.2.6 gives that reply a 10-minute wait for this)."""
        if self.budget is not None:
            loop = asyncio.get_running_loop()
            self.budget.reschedule(max(self.budget.when() or 0.0, loop.time() + self.data_s))
        self.command, self.data_sent = "DATA", True  # aiosmtplib sends it past execute_command
        try:
            return await super().data(message, **kwargs)
        except aiosmtplib.SMTPDataError as exc:  # the verdict on the mail is no command's reply
            if exc.code == 421:
                self._note_421()
            raise

    async def starttls(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        """STARTTLS (`starttls: true`, aiosmtplib's connect runs it). A server that does not
        offer it will not start to: dead at once, not aiosmtplib's "not supported" (`other`,
        retried until max_age)."""
        await self._ehlo_or_helo_if_needed()
        if not self.supports_extension("starttls"):
            raise DeliveryError("client_error", retryable=False, detail=NO_STARTTLS)
        return await super().starttls(*args, **kwargs)

    async def greet(self) -> None:
        """EHLO (or HELO) unless done: what the server offers (AUTH, SMTPUTF8) is known after,
        and whether it offers STARTTLS stays known after the connection closes."""
        await self._ehlo_or_helo_if_needed()
        self.offers_starttls = self.supports_extension("starttls")

    def sendable(self, sender: str, recipients: list[str]) -> list[str]:
        """The recipients this server can take: without SMTPUTF8, not those whose local part is
        not ASCII (their domains are, see _email_addresses.ascii_domain); they are `unsendable`,
        refused for good as a 5xx would be, while the others get the mail. If none is left (or the
        sender is one), all go: aiosmtplib refuses them, the mail is dead at once."""
        self.unsendable = []
        if self.supports_extension("smtputf8") or not sender.isascii():
            return recipients
        usable = [r for r in recipients if r.isascii()]
        if usable:
            self.unsendable = [r for r in recipients if not r.isascii()]
        return usable or recipients

    async def _get_default_local_hostname(self) -> str:
        return await local_host()

    async def execute_command(self, *args: bytes, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        if args and args[0].upper() in _COMMANDS:
            self.command = args[0].upper().decode("ascii")
        response = await super().execute_command(*args, **kwargs)
        if response.code == 421:
            self._note_421()
        return response

    def _note_421(self) -> None:
        """The first 421 and its command: aiosmtplib may send more (RSET) before it gives up."""
        if not self.said_421:
            self.said_421, self.stage_421 = True, f"to {self.command}"

    def lost_before_data(self, exc: Exception) -> bool:
        """Whether `exc` is a reused session found closed by the server (its idle timeout, a
        421) before DATA: nothing of the mail was taken, a new connection sends it."""
        if not self.reused or self.data_sent:  # not `command`: aiosmtplib RSETs after a reply
            return False
        gone = isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError)
        return gone or self.said_421

    def closed_421(self, exc: Exception) -> Said421 | None:
        """The 421 behind `exc`, with its stage: a reply of 421, or the hang-up after one."""
        if isinstance(exc, aiosmtplib.SMTPConnectResponseError) and exc.code == 421:
            return Said421("at greeting")
        if self.said_421:
            return Said421(self.stage_421)
        return None


async def _first_connected(rows: list[AddrInfo]) -> socket.socket:
    """A TCP socket connected to the first of `rows` that takes it; else the last refusal."""
    loop = asyncio.get_running_loop()
    refused: OSError = ConnectionError("no address")
    for family, kind, proto, _, address in rows:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            refused = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise refused


def lookup_timed_out() -> DeliveryError:
    """The attempt's time ran out while the host name was looked up: the DNS, not the server."""
    return DeliveryError("network", retryable=True, detail=f"{LOOKUP_FAILED}: no answer in time")


def classify(exc: BaseException) -> DeliveryError:
    """The DeliveryError an aiosmtplib/socket/TLS exception means (see the module table)."""
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and its connect/read kinds too
        return DeliveryError("timeout", retryable=True, detail="no answer in time")
    if isinstance(exc, DeliveryError):  # already said (e.g. a server that offers no AUTH)
        return exc
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPResponseException):
        return _replied(exc)
    tls = tls_failure(exc)
    if tls is not None:
        return DeliveryError("network", retryable=True, detail=tls)
    if isinstance(exc, OSError | aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return network_error(exc, _network_detail(exc))
    return _other(exc)


def _replied(
    exc: aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPResponseException,
) -> DeliveryError:
    if isinstance(exc, Said421):
        return by_code(421, auth=False, stage=exc.stage)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        said = [(r.code, r.message) for r in exc.recipients] or [(550, "")]
        code, text = next((c for c in said if for_now(c[0])), said[0])
        return by_code(code, auth=False, rcpt=True, enhanced=enhanced_code(text))
    auth = isinstance(exc, aiosmtplib.SMTPAuthenticationError)
    return by_code(exc.code, auth=auth, enhanced=enhanced_code(exc.message))


# RFC 3463's enhanced status code, at the start of a reply's text ("5.1.1 <x>: user unknown")
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?![\d.])")


def enhanced_code(text: str) -> str:
    """The enhanced status code a reply's text starts with ("5.1.1": no such mailbox, "5.2.2":
    mailbox full, "5.7.1": refused by policy), which tells the on-call what to do where the
    basic code does not; "" without one. Digits only: never the server's text, which may echo
    what it was sent (a password)."""
    found = _ENHANCED.match(text.lstrip()) if isinstance(text, str) else None
    return found.group(0) if found else ""


def _other(exc: BaseException) -> DeliveryError:
    if isinstance(exc, ValueError):  # an address aiosmtplib refuses to put on the wire
        return DeliveryError("client_error", retryable=False, detail="invalid address")
    if isinstance(exc, aiosmtplib.SMTPNotSupported):  # SMTPUTF8 missing: no retry will mend it
        detail = "server does not take non-ASCII addresses (no SMTPUTF8)"
        return DeliveryError("client_error", retryable=False, detail=detail)
    if isinstance(exc, aiosmtplib.SMTPException):  # aiosmtplib's own words
        return DeliveryError("other", retryable=True, detail=one_line(exc.message, 120))
    return DeliveryError("other", retryable=True, detail=type(exc).__name__)


def for_now(rcpt_code: int) -> bool:
    """Whether a reply to RCPT refuses the recipient for now: a 4xx, or 552, which RFC 821
    listed for "too many recipients" and RFC 5321 (4.5.3.1.10) says to take as 452."""
    return 400 <= rcpt_code < 500 or rcpt_code == 552


def by_code(
    code: int,
    *,
    auth: bool,
    note: str = "",
    rcpt: bool = False,
    stage: str = "",
    enhanced: str = "",
) -> DeliveryError:
    """`stage` ("to DATA", "at greeting") is said for a 421: the server closed the session,
    and where tells why (the EHLO name, a recipient, the mail). `enhanced` ("5.1.1") follows
    the code."""
    said = " ".join(filter(None, (f"SMTP {code}", enhanced)))
    if code == 421:
        where = "to RCPT" if rcpt else stage
        detail = " ".join(filter(None, (said, where))) + note
        return DeliveryError("rate_limited", retryable=True, detail=detail, status=code)
    detail = f"{said}{note}" if code >= 100 else "malformed SMTP reply"  # aiosmtplib: -1
    if 400 <= code < 500 or (rcpt and code == 552):  # "try later": the backoff, not at once
        return DeliveryError("server_error", retryable=True, detail=detail, status=code, later=True)
    if code in _AUTH_CODES or (auth and code >= 500):
        return DeliveryError("auth_error", retryable=False, detail=detail, status=code)
    if 500 <= code < 600:
        return DeliveryError("client_error", retryable=False, detail=detail, status=code)
    return DeliveryError("other", retryable=True, detail=detail, status=code)


def _network_detail(exc: BaseException) -> str:
    if (failure := wire_failure(exc)) is not None:
        return failure
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return "server disconnected"
    return "connection failed"
