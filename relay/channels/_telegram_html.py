"""Telegram's HTML (parse_mode "HTML"): a rendered `html` part made into text Telegram parses.

Telegram refuses the whole message (400 "can't parse entities") for a tag it does not know, an
attribute it does not take, a lone `<` or `&`, an entity other than &lt; &gt; &amp; &quot; and
numeric ones, a tag not closed or closed out of order, or entities nested as it does not allow
(nothing inside `code` / `pre` but a `code` in a `pre`, no link in a link). And it refuses a
text over 4096 characters after entity parsing (400 "message is too long"), counted in UTF-16
code units, as every offset of its entities is.

So the channel never sends the rendered part as it is: `telegram_html` parses it leniently
(Python's html.parser, entities decoded), keeps the tags and attributes Telegram knows, drops
the others (their text kept; `<br>` becomes a newline), escapes every text again, closes every
tag it opened, in order, and stops the text at the limit with "…": a cut never falls inside a
tag or an entity, and every tag open there is closed after it. A template that forgets to escape
a value, or run data that looks like markup (`</a>`, `<b>`, `&`), still gives a message Telegram
takes.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

MAX_TEXT = 4096  # UTF-16 code units of the text after entity parsing
ELLIPSIS = "…"
# tag -> the attributes Telegram takes on it (an attribute outside these fails the message)
_TAGS: dict[str, tuple[str, ...]] = {
    "b": (), "strong": (), "i": (), "em": (), "u": (), "ins": (), "s": (), "strike": (),
    "del": (), "tg-spoiler": (), "span": ("class",), "a": ("href",), "code": ("class",),
    "pre": (), "blockquote": ("expandable",),
}  # fmt: skip
_VERBATIM = frozenset({"code", "pre"})  # no entity inside (but `code` right inside `pre`)
_FORMATTING = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "tg-spoiler", "span"}
)
_LINK_SCHEMES = re.compile(r"(?:https?|tg|mailto)://?", re.IGNORECASE)
_LANGUAGE = re.compile(r"language-[A-Za-z0-9_+#.-]{1,32}")
_NEWLINE_TAGS = frozenset({"br", "p", "div", "li", "tr"})  # a line break where they were
# control characters Telegram drops or refuses (tab and newline kept)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")


def utf16_len(text: str) -> int:
    """`text`'s length as Telegram counts it: UTF-16 code units (an emoji is often 2)."""
    return len(text.encode("utf-16-le")) // 2


def _cut(text: str, units: int) -> str:
    """The longest start of `text` within `units` UTF-16 code units (never half a character)."""
    if utf16_len(text) <= units:
        return text
    out, used = [], 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > units:
            break
        out.append(char)
        used += size
    return "".join(out)


class _Writer(HTMLParser):
    """Writes Telegram's HTML for what it is fed: its text cut past `limit` UTF-16 units, "…"
    added (None: never cut)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []  # the tags written and not yet closed, innermost last
        self.stack: list[tuple[str, bool]] = []  # every tag opened (written or dropped)
        self.limit = limit
        self.used = 0  # UTF-16 units of text written
        self.visible = 0  # text units written that are not blank
        self.full = False  # the limit was reached: nothing more is written

    # -- tags

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        """The attributes to write on `tag` (" href=…"), None to drop the tag."""
        given = {k.lower(): v for k, v in attrs}
        if tag == "a":
            href = (given.get("href") or "").strip()
            if not _LINK_SCHEMES.match(href) or any(c.isspace() for c in href):
                return None
            return f' href="{html.escape(href, quote=True)}"'
        if tag == "span":  # only the spoiler's
            return ' class="tg-spoiler"' if given.get("class") == "tg-spoiler" else None
        if tag == "code":
            language = given.get("class") or ""
            inside_pre = bool(self.open) and self.open[-1] == "pre"
            return f' class="{language}"' if inside_pre and _LANGUAGE.fullmatch(language) else ""
        if tag == "blockquote" and "expandable" in given:
            return " expandable"
        return ""

    def _allowed(self, tag: str) -> bool:
        """Whether Telegram takes `tag` where it is: nothing inside `code` or `pre` (but a
        `code` right inside a `pre`), only formatting inside a link, no quote in a quote."""
        if any(t in _VERBATIM for t in self.open):
            return tag == "code" and self.open[-1] == "pre"
        if "a" in self.open and tag not in _FORMATTING:
            return False
        return not (tag == "blockquote" and "blockquote" in self.open)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.full:
            return
        if tag in _NEWLINE_TAGS:
            if tag == "br" or self.visible:
                self._text("\n")
            return
        written = self._attrs(tag, attrs) if tag in _TAGS and self._allowed(tag) else None
        if written is not None:
            self.out.append(f"<{tag}{written}>")
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
                self.out.append(f"</{name}>")
            if name == tag:
                break

    # -- text

    def handle_data(self, data: str) -> None:
        self._text(data)

    def _text(self, data: str) -> None:
        if self.full or not data:
            return
        data = _CONTROLS.sub("", data.replace("\r\n", "\n").replace("\r", "\n"))
        size = utf16_len(data)
        if self.limit is not None and self.used + size > self.limit:
            data = _cut(data, self.limit - self.used)
            size = utf16_len(data)
            data += ELLIPSIS
            self.full = True
        self.out.append(html.escape(data, quote=False))
        self.used += size
        if data.strip():
            self.visible += size

    def result(self) -> str:
        self.close()
        closing = [f"</{tag}>" for tag in reversed(self.open)]
        self.open = []
        return "".join(self.out + closing)


def telegram_html(rendered: str, limit: int = MAX_TEXT) -> tuple[str, bool]:
    """(the HTML Telegram takes for `rendered`, whether its text was cut to `limit`). A text
    over `limit` is written again, cut at `limit` less the ellipsis's room: a cut right after
    a text that filled the limit exactly had no room left for it."""
    writer = _write(rendered, None)
    if writer.used > limit:
        writer = _write(rendered, limit - utf16_len(ELLIPSIS))
    text = writer.result()
    return text if writer.visible else "", writer.full


def _write(rendered: str, limit: int | None) -> _Writer:
    """The writer fed all of `rendered`: closed, so that what the parser holds back at the
    end (a trailing `&…` that may start an entity, a `<` that may start a tag) is written
    and counted too."""
    writer = _Writer(limit)
    writer.feed(rendered)
    writer.close()
    return writer


def visible_text(text: str) -> str:
    """The text Telegram shows for `text` (our own HTML): tags removed, entities decoded."""
    return html.unescape(re.sub(r"<[^>]*>", "", text))
