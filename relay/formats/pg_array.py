"""Postgres array literals (`{a,"b c",NULL}`, nested, with backslash escapes) as lists of
strings: how Electric sends an array column's value (TRIGGER.md §2.3)."""

from __future__ import annotations

from typing import Any

PG_SPACE = " \t\n\r\v\f"  # what Postgres skips around array elements (array_isspace)
_PG_MAXDIM = 6  # Postgres arrays have at most 6 dimensions; deeper nesting is not a literal


def parse_pg_array(text: str) -> list[Any]:
    """A Postgres array literal (`{a,"b c",NULL}`, nested, backslash escapes) → list.

    Elements stay strings (None for an unquoted NULL); the caller decodes them by type.
    """
    text = text.strip(PG_SPACE)
    if text.startswith("["):  # explicit bounds, e.g. `[0:1]={a,b}`
        text = text.partition("=")[2].strip(PG_SPACE)
    inner = text[1:-1]
    if text[:1] == "{" and text[-1:] == "}" and not any(c in inner for c in '{}"\\'):
        return [_unquoted(p) for p in inner.split(",")] if inner.strip(PG_SPACE) else []
    items, end = _array(text, 0)
    if text[end:].strip(PG_SPACE):
        raise ValueError("trailing characters after the array literal")
    return items


def _array(text: str, pos: int, depth: int = 1) -> tuple[list[Any], int]:
    if text[pos : pos + 1] != "{":
        raise ValueError("an array literal starts with {")
    if depth > _PG_MAXDIM:
        raise ValueError(f"an array literal nested deeper than {_PG_MAXDIM} dimensions")
    items: list[Any] = []
    pos += 1
    if text[pos : pos + 1] == "}":
        return items, pos + 1
    while True:
        item, pos = _element(text, pos, depth)
        items.append(item)
        if pos >= len(text):
            raise ValueError("unterminated array literal")
        if text[pos] == "}":
            return items, pos + 1
        if text[pos] != ",":
            raise ValueError("expected , or } in the array literal")
        pos += 1


def _element(text: str, pos: int, depth: int) -> tuple[Any, int]:
    while pos < len(text) and text[pos] in PG_SPACE:
        pos += 1
    if text[pos : pos + 1] == "{":
        return _array(text, pos, depth + 1)
    quoted = text[pos : pos + 1] == '"'
    pos += quoted
    chars: list[str] = []
    escaped = False
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            chars.append(text[pos + 1])
            pos, escaped = pos + 2, True
            continue
        if (quoted and char == '"') or (not quoted and char in ",}"):
            break
        chars.append(char)
        pos += 1
    if not quoted:
        word = "".join(chars)
        return (word.strip(PG_SPACE) if escaped else _unquoted(word)), pos
    if pos >= len(text):
        raise ValueError("unterminated quoted element")
    pos += 1
    while pos < len(text) and text[pos] in PG_SPACE:
        pos += 1
    return "".join(chars), pos


def _unquoted(word: str) -> str | None:
    word = word.strip(PG_SPACE)
    return None if word.upper() == "NULL" else word
