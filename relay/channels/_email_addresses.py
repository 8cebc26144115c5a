"""Email addresses and header values as relay takes them from the config: each entry one
address (a group or a typo refused, not dropped), Alertmanager's comma-separated strings
split, IDN domains in their ASCII form (IDNA 2008), a user's `headers` checked and their
addresses' domains made ASCII too."""

from __future__ import annotations

import re
from email.headerregistry import Address, AddressHeader
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr

import idna

_RESERVED = frozenset(
    ("from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "sender")
)
# where relay takes the reserved headers an Alertmanager `email_configs.headers` sets from
_SET_FROM = {
    "subject": "write it in the template's subject part (email/<template>.subject.j2)",
    "to": "the channel's `to`",
    "cc": "the channel's `cc`",
    "from": "the channel's `from`",
}
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII except ':' (RFC 5322 ftext)
# What aiosmtplib will not put on a MAIL or RCPT line (a header parser takes them): white space,
# <, > or '"' outside a quoted local part (`a@[192.0.2 1]`, `"a"."b c"@x`), a control character
# anywhere. Taken, every mail was dead at once ("invalid address"), also to the other recipients.
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"')
_OFF_THE_WIRE = re.compile(r'[\s<>"]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_address(value: str) -> str:
    """One address, plain or with a display name; it is the envelope address we return, its
    domain in ASCII (see `ascii_domain`)."""
    if "\r" in value or "\n" in value:
        raise ValueError("addresses cannot contain line breaks")
    found = getaddresses([value])
    local, _, domain = found[0][1].rpartition("@") if len(found) == 1 else ("", "", "")
    if not local or not domain or _is_group(value):
        raise ValueError(f"{value!r} is not one email address")
    envelope = ascii_domain(found[0][1])
    if not _sendable(envelope):
        raise ValueError(f'{value!r} cannot be sent over SMTP (white space or <>" unquoted)')
    if _header_reading(value) not in (found[0][1], None):  # `ops@exa mple.com`
        raise ValueError(f"{value!r} is not one email address (a space inside the address?)")
    return envelope


def _sendable(envelope: str) -> bool:
    """Whether aiosmtplib puts `envelope` on the wire: as it reads it (parseaddr, then the
    quoted local part aside), nothing _OFF_THE_WIRE, and no control character at all."""
    parsed = parseaddr(envelope)[1] or envelope.strip()
    return not _OFF_THE_WIRE.search(_QUOTED_LOCAL.sub("", parsed, 1)) and not _CONTROL.search(
        envelope
    )


def _header_reading(value: str) -> str | None:
    """The address the To header reads in `value`: getaddresses made `ops@exa mple.com`
    `ops@example.com`, another domain than the one written, where the header reads `ops@exa`
    (and says the rest is a defect). None where it reads no address (`<>`: a domain with a
    trailing dot, which config takes) or several."""
    probe = EmailMessage()
    try:
        probe["To"] = value
        addresses = probe["To"].addresses
    except _PARSER_FAILURES:
        return None
    read = addresses[0].addr_spec if len(addresses) == 1 else "<>"
    return None if read == "<>" else read


def _is_group(value: str) -> bool:
    """`Ops: EU <o@x.com>` is the group "Ops" (RFC 5322 3.4): From cannot hold one, and in To
    it swallowed every address after it. A display name with a ':' needs quotes."""
    probe = EmailMessage()
    try:
        probe["To"] = value
        return any(group.display_name is not None for group in probe["To"].groups)
    except _PARSER_FAILURES:  # no header can hold it: not one address
        return True


def ascii_domain(address: str) -> str:
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


def header_addresses(entries: list[str]) -> str:
    """The `To`/`Cc` value: each entry as written, but with its domain in ASCII if it had to
    change (the display name stays as written, RFC 2047-encoded by the email package)."""
    out = []
    for entry in entries:  # each one address (EmailSettings checked them)
        name, address = getaddresses([entry])[0]
        ascii_address = ascii_domain(address)
        out.append(entry if ascii_address == address else str(_address(name, ascii_address)))
    return ", ".join(out)


def _address(name: str, address: str) -> Address:
    """`address` as written (`"john doe"@x.com`): parsed, not split at its '@', which put the
    quotes inside the local part (`"\\"john doe\\""@x.com`, another mailbox)."""
    return Address(display_name=name, addr_spec=address)


def split_addresses(value: str) -> list[str]:
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


def check_headers(value: dict[str, str]) -> dict[str, str]:
    """A user's `headers`: each name printable ASCII and not one relay sets, each value one
    line that parses as that header; address headers with their domains in ASCII."""
    for name, text in value.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header name {name!r} must be printable ASCII without ':'")
        if name.lower() in _RESERVED or name.lower().startswith(("content-", "x-relay-")):
            where = _SET_FROM.get(name.lower())
            raise ValueError(f"header {name} is set by relay" + (f": {where}" if where else ""))
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
    (`header_addresses`): an ASCII header held `ops@bücher.example` as an encoded word inside
    the address (RFC 2047 5 forbids it), and a reply went to that string. A group stays."""
    probe = EmailMessage()
    probe[name] = text
    header = probe[name]
    if not isinstance(header, AddressHeader) or any(g.display_name for g in header.groups):
        return text
    if all(a.domain.isascii() for a in header.addresses):
        return text
    return ", ".join(
        str(_address(a.display_name, ascii_domain(a.addr_spec))) for a in header.addresses
    )


# What the stdlib's header parser raises on some malformed input (`a@[192.0.2.1`: an
# AttributeError) besides a ValueError: a bad value, never a traceback.
_PARSER_FAILURES = (ValueError, TypeError, IndexError, AttributeError, NameError)
