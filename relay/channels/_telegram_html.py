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
tag or an entity, and every tag open there is closed after it. A template that forgets to
escape a value, or run data that looks like markup (`</a>`, `<b>`, `&`), still gives a message
Telegram takes.

The writing is relay.channels._html_writer's, Pushover's too; what is Telegram's here is its
policy: the tags and attributes it keeps where it keeps them, and the limit counted in UTF-16
units of the text, the markup free.
"""

from __future__ import annotations

import html
import re

from relay.channels._html_writer import HtmlWriter, write_html

MAX_TEXT = 4096  # UTF-16 code units of the text after entity parsing
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


def utf16_len(text: str) -> int:
    """`text`'s length as Telegram counts it: UTF-16 code units (an emoji is often 2)."""
    return len(text.encode("utf-16-le")) // 2


class _Writer(HtmlWriter):
    """Telegram's policy: the tags and attributes it takes where it takes them, the limit in
    UTF-16 units of the text (the markup free)."""

    def size(self, text: str) -> int:
        return utf16_len(text)

    def start_tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        if tag not in _TAGS or not self._allowed(tag):
            return None
        written = self._attrs(tag, attrs)
        return None if written is None else f"<{tag}{written}>"

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


def telegram_html(rendered: str, limit: int = MAX_TEXT) -> tuple[str, bool]:
    """(the HTML Telegram takes for `rendered`, whether its text was cut to `limit`). A text
    over `limit` is written again, cut at `limit` less the ellipsis's room: a cut right after
    a text that filled the limit exactly had no room left for it."""
    text, shown, cut = write_html(rendered, _Writer, limit)
    return text if shown else "", cut
