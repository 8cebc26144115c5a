"""Pushover's HTML (`html=1`): a rendered message made into the small subset Pushover shows.

Pushover formats `<b>`, `<i>`, `<u>`, `<font color="…">` and `<a href="…">` in a message sent
with `html=1`, and keeps its newlines; it shows any other tag as it is, and refuses a message
over 1024 characters (the parameter as sent: tags and entities count) with a 400.

So `pushover_html` parses the rendered text leniently (Python's html.parser, entities decoded),
keeps those five tags (a link only to an http(s) URL, no link in a link, a colour only as a
name or #hex), drops every other tag (its text kept; `<br>`, `<p>`, `<div>`, `<li>` become a
newline), escapes every text again, closes every tag it opened, in order, and stops at the
limit with "…": a cut never falls inside a tag or an entity, and the tags open there are
closed after it, within the limit. A template that forgets to escape a value, or run data
that looks like markup (`</a>`, `<a href="javascript:…">`, `&`), still gives a message
Pushover shows as meant.

The writing is relay.channels._html_writer's, Telegram's too; what is Pushover's here is its
policy: the five tags it keeps, and the limit counted in characters as sent, markup included.
"""

from __future__ import annotations

import html
import re

from relay.channels._html_writer import HtmlWriter, escaped, write_html

MAX_MESSAGE = 1024  # characters of the `message` parameter, markup included
_KEPT = frozenset({"b", "i", "u", "font", "a"})
_COLOR = re.compile(r"#[0-9A-Fa-f]{3}(?:[0-9A-Fa-f]{3})?|[A-Za-z]{3,20}")
_HREF = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_MAX_HREF = 1000


class _Writer(HtmlWriter):
    """Pushover's policy: its five tags (a link only to an http(s) URL, no link in a link, a
    colour only as a name or #hex), the limit in characters as sent, the markup and the
    closing tags of a cut included; a text cut to blanks shows nothing."""

    COUNTS_MARKUP = True
    ELLIPSIS_SHOWS = False

    def size(self, text: str) -> int:
        return len(escaped(text))

    def start_tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        if tag not in _KEPT:
            return None
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


def pushover_html(rendered: str, limit: int = MAX_MESSAGE) -> tuple[str, bool]:
    """(the HTML Pushover shows for `rendered` within `limit` characters, whether it was cut);
    "" when it shows nothing."""
    text, shown, cut = write_html(rendered, _Writer, limit)
    return (text.strip() if shown else ""), cut
