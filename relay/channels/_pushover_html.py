"""Pushover's HTML (`html=1`): a rendered message made into the small subset Pushover shows.

Pushover formats `<b>`, `<i>`, `<u>`, `<font color="…">` and `<a href="…">` in a message sent
with `html=1`, and keeps its newlines; it shows any other tag as it is, and refuses a message
over 1024 characters (the parameter as sent: tags and entities count) with a 400.

So `pushover_html` parses the rendered text leniently (Python's html.parser, entities decoded),
keeps those five tags (a link only to an http(s) URL, no link in a link, a colour only as a
name or #hex), drops every other tag (its text kept; `<br>`, `<p>`, `<div>`, `<li>` become a
newline), escapes every text again, closes every tag it opened, in order, and stops at the
limit with "…": a cut never falls inside a tag or an entity, and the tags open there are
closed after it, within the limit. A template that forgets to escape a value, or run data that
looks like markup (`</a>`, `<a href="javascript:…">`, `&`), still gives a message Pushover shows
as meant.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

MAX_MESSAGE = 1024  # characters of the `message` parameter, markup included
ELLIPSIS = "…"
_KEPT = frozenset({"b", "i", "u", "font", "a"})
_NEWLINE_TAGS = frozenset({"br", "p", "div", "li", "tr"})
_COLOR = re.compile(r"#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?|[A-Za-z]{3,20}")
_HREF = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_MAX_HREF = 1000
# control characters Pushover would show as boxes (tab and newline kept)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")


def _escaped(text: str) -> str:
    return html.escape(text, quote=False)


def _fit(text: str, room: int) -> str:
    """The longest start of `text` whose escaped form is at most `room` characters."""
    out, used = [], 0
    for char in text:
        size = len(_escaped(char))
        if used + size > room:
            break
        out.append(char)
        used += size
    return "".join(out)


class _Writer(HTMLParser):
    """Writes Pushover's HTML for what it is fed, at most `limit` characters with the closing
    tags and the "…" of a cut (None: never cut)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []  # tags written and not yet closed, innermost last
        self.stack: list[tuple[str, bool]] = []  # every tag opened (written or dropped)
        self.limit = limit
        self.used = 0  # characters written
        self.visible = 0  # characters of text that is not blank
        self.full = False

    def _room(self) -> int:
        """Characters left for what comes next, the closing tags and the ellipsis kept."""
        if self.limit is None:
            return 1 << 30
        closing = sum(len(tag) + 3 for tag in self.open)
        return self.limit - self.used - closing - len(ELLIPSIS)

    def _write(self, text: str) -> None:
        self.out.append(text)
        self.used += len(text)

    def _stop(self) -> None:
        self._write(ELLIPSIS)
        self.full = True

    def _start(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        """The start tag to write (`<a href="…">`), None to drop it."""
        given = {k.lower(): (v or "").strip() for k, v in attrs}
        if tag == "a":
            href = given.get("href", "")
            if "a" in self.open or not _HREF.fullmatch(href) or len(href) > _MAX_HREF:
                return None
            return f'<a href="{html.escape(href, quote=True)}">'
        if tag == "font":
            color = given.get("color", "")
            return f'<font color="{color}">' if _COLOR.fullmatch(color) else None
        return f"<{tag}>"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.full:
            return
        if tag in _NEWLINE_TAGS:
            if tag == "br" or self.visible:
                self._text("\n")
            return
        written = self._start(tag, attrs) if tag in _KEPT else None
        if written is not None and len(written) + len(tag) + 3 > self._room():
            self._stop()  # no room for the tag and its end: the text stops here
            return
        if written is not None:
            self._write(written)
            self.open.append(tag)
        self.stack.append((tag, written is not None))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _NEWLINE_TAGS:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        """Close the innermost `tag` open (written or dropped) and every tag inside it; an end
        tag never opened is dropped."""
        if self.full or all(name != tag for name, _ in self.stack):
            return
        while self.stack:
            name, written = self.stack.pop()
            if written:
                self.open.pop()
                self._write(f"</{name}>")
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        self._text(data)

    def _text(self, data: str) -> None:
        if self.full or not data:
            return
        data = _CONTROLS.sub("", data.replace("\r\n", "\n").replace("\r", "\n"))
        escaped = _escaped(data)
        if len(escaped) > self._room():
            data = _fit(data, self._room())
            escaped = _escaped(data)
            self._write(escaped)
            self._stop()
        else:
            self._write(escaped)
        if data.strip():
            self.visible += len(data)

    def result(self) -> str:
        self.close()
        closing = "".join(f"</{tag}>" for tag in reversed(self.open))
        self.open = []
        return "".join(self.out) + closing


def pushover_html(rendered: str, limit: int = MAX_MESSAGE) -> tuple[str, bool]:
    """(the HTML Pushover shows for `rendered` within `limit` characters, whether it was cut);
    "" when it shows nothing."""
    writer = _write(rendered, None)
    text = writer.result()
    if len(text) > limit:
        writer = _write(rendered, limit)
        text = writer.result()
    return (text.strip() if writer.visible else ""), writer.full


def _write(rendered: str, limit: int | None) -> _Writer:
    writer = _Writer(limit)
    writer.feed(rendered)
    return writer


def visible_text(text: str) -> str:
    """The text Pushover shows for `text` (our own HTML): tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", text))
