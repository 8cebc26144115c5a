"""One writer of a receiver's small HTML subset, for the channels whose receiver refuses (or
shows raw) any other markup: Telegram's (relay.channels._telegram_html) and Pushover's
(relay.channels._pushover_html).

`HtmlWriter` parses a rendered text leniently (Python's html.parser, entities decoded), writes
again only the tags its receiver's policy keeps (their text kept when a tag is dropped; `<br>`,
`<p>`, `<div>`, `<li>`, `<tr>` become a newline), escapes every text again, drops control
characters, closes every tag it opened, in order (an end tag closes the tags opened inside it;
one never opened is dropped), and stops at the limit with "…": a cut never falls inside a tag
or an entity, and the tags open there are closed after it.

What differs by receiver is its policy, a subclass's:

- `start_tag`: which tags and attributes it keeps, and where;
- `size` and `COUNTS_MARKUP`: how it counts its limit (Telegram: UTF-16 units of the text
  shown, the markup free; Pushover: characters as sent, markup and entities included, so a tag
  is written only with room for its end tag);
- `ELLIPSIS_SHOWS`: whether a text cut to blanks and "…" shows something (a text cut to "…"
  alone never does).

`write_html` writes a text whole, and again within the limit when the whole is over it.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

ELLIPSIS = "…"
_NEWLINE_TAGS = frozenset({"br", "p", "div", "li", "tr"})  # a line break where they were
# control characters receivers drop, refuse or show as boxes (tab and newline kept)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")
_UNLIMITED = 1 << 30


def escaped(text: str) -> str:
    return html.escape(text, quote=False)


class HtmlWriter(HTMLParser):
    """Writes its receiver's HTML for what it is fed, within `limit` as the receiver counts it
    with the "…" of a cut (None: never cut)."""

    COUNTS_MARKUP = False  # tags count towards the limit (and need room for their end)
    ELLIPSIS_SHOWS = True  # a text cut to blanks then "…" is something shown

    def __init__(self, limit: int | None) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []  # the tags written and not yet closed, innermost last
        self.stack: list[tuple[str, bool]] = []  # every tag opened (written or dropped)
        self.limit = limit
        self.used = 0  # what is written, as the limit counts it
        self.shown = False  # a text that is not blank was written
        self.full = False  # the limit was reached: nothing more is written

    # -- the receiver's policy

    def start_tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        """The start tag to write for `tag` where it is (`<a href="…">`), None to drop it."""
        raise NotImplementedError

    def size(self, text: str) -> int:
        """How much of the limit `text` (a text, not yet escaped) takes."""
        raise NotImplementedError

    # -- counting

    def _markup_size(self, markup: str) -> int:
        return len(markup) if self.COUNTS_MARKUP else 0

    def _room(self) -> int:
        """What is left of the limit for what comes next, the "…" (and, markup counted, the
        closing tags) kept."""
        if self.limit is None:
            return _UNLIMITED
        closing = sum(self._markup_size(f"</{tag}>") for tag in self.open)
        return self.limit - self.used - closing - self.size(ELLIPSIS)

    def _fit(self, text: str, room: int) -> str:
        """The longest start of `text` within `room` (never half a character or entity)."""
        out, used = [], 0
        for char in text:
            size = self.size(char)
            if used + size > room:
                break
            out.append(char)
            used += size
        return "".join(out)

    def _markup(self, markup: str) -> None:
        self.out.append(markup)
        self.used += self._markup_size(markup)

    def _stop(self) -> None:
        self.out.append(ELLIPSIS)
        self.full = True

    # -- tags

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.full:
            return
        if tag in _NEWLINE_TAGS:
            if tag == "br" or self.shown:
                self._text("\n")
            return
        written = self.start_tag(tag, attrs)
        needs = self._markup_size(written) + self._markup_size(f"</{tag}>") if written else 0
        if needs and needs > self._room():
            self._stop()  # no room for the tag and its end: the text stops here
            return
        if written is not None:
            self._markup(written)
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
                self._markup(f"</{name}>")
            if name == tag:
                break

    # -- text

    def handle_data(self, data: str) -> None:
        self._text(data)

    def _text(self, data: str) -> None:
        if self.full or not data:
            return
        data = _CONTROLS.sub("", data.replace("\r\n", "\n").replace("\r", "\n"))
        size, room = self.size(data), self._room()
        cut = size > room
        if cut:
            data = self._fit(data, room)
            size = self.size(data)
        self.out.append(escaped(data))
        self.used += size
        if cut:
            self._stop()
        if size and (data + (ELLIPSIS if cut and self.ELLIPSIS_SHOWS else "")).strip():
            self.shown = True

    def result(self) -> str:
        """What was written, the tags left open closed."""
        self.close()
        for tag in reversed(self.open):
            self._markup(f"</{tag}>")
        self.open = []
        return "".join(self.out)


def write_html(rendered: str, writer: type[HtmlWriter], limit: int) -> tuple[str, bool, bool]:
    """(`rendered` as `writer` writes it within `limit`, whether it shows anything, whether it
    was cut). Written whole first; a whole over `limit` is written again, cut within it."""
    whole = _written(rendered, writer(None))
    text = whole.result()
    if whole.used <= limit:
        return text, whole.shown, False
    cut = _written(rendered, writer(limit))
    return cut.result(), cut.shown, cut.full


def _written(rendered: str, writer: HtmlWriter) -> HtmlWriter:
    """`writer` fed all of `rendered`, closed: what html.parser holds back at the end (a
    trailing `&…` that may start an entity, a `<` that may start a tag) is written and counted
    too."""
    writer.feed(rendered)
    writer.close()
    return writer


def visible_text(text: str) -> str:
    """The text a receiver shows for `text` (the HTML a writer wrote): tags removed, entities
    decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", text))
