"""Silence matchers as people write them: parse_matchers reads the API's JSON, cli_matchers
amtool-style words and flags, matcher_warnings names what the config does not know."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from relay.errors import InputError, did_you_mean, field_path
from relay.model import SILENCE_MATCHERS
from relay.statuses import EVENT_STATUSES, EVENTS, KNOWN_STATUSES, RAW_STATUS_MAP

MAX_VALUES = 100
MAX_TEXT = 1000
# a config's rule and channel names (Config.names), that silences' matchers are checked against
ConfigNames = tuple[Collection[str], Collection[str]]


def parse_matchers(raw: Any) -> dict[str, tuple[str, ...]]:
    """Matchers from JSON/CLI input: each key a string or a list of strings; at least one key."""
    if not isinstance(raw, Mapping) or not raw:
        listed = " (name to value or values, not Alertmanager's list of {name, value})"
        raise InputError(
            "matchers",
            f"expected an object with any of {', '.join(SILENCE_MATCHERS)}"
            + (listed if isinstance(raw, list) else ""),
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if key not in SILENCE_MATCHERS:
            raise InputError(
                f"matchers.{key}", f"unknown matcher; use {', '.join(SILENCE_MATCHERS)}"
            )
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
            raise InputError(
                f"matchers.{key}",
                f"expected a string or a non-empty list of at most {MAX_VALUES} strings",
            )
        for i, v in enumerate(values):
            where = field_path("matchers", key, *([i] if isinstance(value, list) else []))
            if not (isinstance(v, str) and v and len(v) <= MAX_TEXT):
                raise InputError(
                    where, f"expected a non-empty string of at most {MAX_TEXT} characters"
                )
            if key == "event" and v not in EVENTS:
                raise InputError(where, f"unknown event {v!r}; use one of {', '.join(EVENTS)}")
        out[key] = tuple(values)
    return out


class NoMatchers(InputError):
    """`relay silence add` given no matcher at all: a usage error (exit 2), as `silence
    expire` given no id is, not a matcher that is wrong (exit 1)."""


def cli_matchers(words: Sequence[str], flags: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Matchers from the command line, amtool's way: `task=billing/*` words (a bare word is
    a rule name, as amtool's is an alertname; `alertname=` means `rule=`) beside `--task`-style
    flags. relay's matchers are globs compared for equality: `!=`, `=~` and `!~` are refused."""
    out: dict[str, list[str]] = {key: list(values) for key, values in flags.items() if values}
    for word in matcher_words(words):
        if any(op in word for op in ("!=", "=~", "!~")):
            raise InputError(
                "matchers",
                f"{word!r}: only key=value matchers (globs), e.g. task=billing/*; "
                "relay has no negative or regex silence matchers",
            )
        key, value = _word_parts(word)
        if key not in SILENCE_MATCHERS:  # `=` was `matchers.: unknown matcher`
            hint = did_you_mean(key, SILENCE_MATCHERS, quoted=True)
            what = f"unknown matcher {key!r}{hint}" if key else "no matcher name"
            raise InputError("matchers", f"{word!r}: {what}; {_WORD_FORM}")
        out.setdefault(key, []).append(unquoted(value.strip(), word))
    if not any(out.values()):  # `add $(...)` that came back empty: the API's "expected an
        # object with any of ..." said nothing of words or flags (amtool: no matchers specified)
        raise NoMatchers("matchers", f"none given; {_WORD_FORM}, or the flag (--task ...)")
    return out


def _word_parts(word: str) -> tuple[str, str]:
    """A matcher word's name and value as written: a bare word is a rule name, `alertname`
    is `rule`."""
    key, eq, value = word.partition("=")
    if not eq:
        key, value = "rule", word
    return ("rule" if key.strip() == "alertname" else key.strip()), value


def repeated_names(words: Sequence[str]) -> list[str]:
    """Warnings for the matchers that two or more words name (`tag=a tag=b`): amtool requires
    all of them to fit, while relay's silence fits a run with any of the values, and so mutes
    more than an amtool user meant. Flags (`--tag a --tag b`) are relay's own and say "any"."""
    named = Counter(_word_parts(word)[0] for word in matcher_words(words))
    return [
        f"matchers.{key}: named by {count} words; the silence fits a run with any of their "
        "values, not (as amtool's) only one that fits them all"
        for key, count in named.items()
        if count > 1 and key in SILENCE_MATCHERS
    ]


_WORD_FORM = f"expected name=value (e.g. task=billing/*), name one of {', '.join(SILENCE_MATCHERS)}"


def unquoted(value: str, word: str) -> str:
    """A matcher's value as amtool (Alertmanager 0.27+, its default "fallback" parsing) reads
    it. In double quotes: Go's escapes (`\\n`, `\\t`, `\\"`, `\\\\`, `\\x00`, `\\u00e9` ...,
    as strconv.Unquote), else, where Go refuses the text (`\\z`, a line feed typed in it),
    pkg/labels' older reading: `\\n`, `\\"` and `\\\\` escape, any other backslash is itself.
    Bare: as written, or by that older reading if it holds a backslash (`a\\nb`: a line
    break). Single quotes around it are dropped, as before. `\\n` read as `n` and `\\z` as
    `z`: a silence for a value not written. A double quote not closed, or closed but not opened
    (`task="billing/*`), is refused, as amtool refuses it."""
    if _QUOTED.fullmatch(value):
        inner = value[1:-1]
        go = _go_unquoted(inner)
        return go if go is not None else _classic_unescaped(inner)
    if value.startswith('"') or value.endswith('"'):
        raise InputError("matchers", f"{word!r}: unbalanced quotes")
    bare = value.strip("'")
    return _classic_unescaped(bare) if "\\" in bare else bare


# Go's escapes in a double-quoted string, and the runs of text between them
_GO_PART = re.compile(
    r'\\([abfnrtv\\"])|\\x([0-9a-fA-F]{2})|\\([0-7]{3})|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})'
    r'|([^\\"\n]+)'
)
_GO_NAMED = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}


def _go_unquoted(inner: str) -> str | None:
    """`inner` (between double quotes) as Go's strconv.Unquote reads it; None where Go refuses
    it (an unknown escape, a line feed, a code point out of range) or the bytes it spells are
    not UTF-8 (`\\xff`)."""
    out, pos = bytearray(), 0
    while pos < len(inner):
        part = _GO_PART.match(inner, pos)
        if part is None:
            return None
        named, hex2, octal, hex4, hex8, text = part.groups()
        if text is not None:
            out += text.encode("utf-8", "surrogatepass")
        elif named is not None:
            out.append(_GO_NAMED[named])
        elif hex2 is not None or octal is not None:
            byte = int(hex2, 16) if hex2 is not None else int(octal, 8)
            if byte > 0xFF:  # \\400 and up
                return None
            out.append(byte)
        else:
            code = int(hex4 or hex8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                return None
            out += chr(code).encode()
        pos = part.end()
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


_CLASSIC = re.compile(r"\\(.)", re.DOTALL)


def _classic_unescaped(raw: str) -> str:
    """pkg/labels' reading (Alertmanager before 0.27; amtool's fallback): `\\n` a line feed,
    `\\"` and `\\\\` the character; another backslash, or one that ends the text, is itself."""
    return _CLASSIC.sub(lambda m: "\n" if m[1] == "n" else m[1] if m[1] in '"\\' else m[0], raw)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


_GROUP = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")*')  # one matcher of a `{...}` group


def matcher_words(words: Sequence[str]) -> Iterator[str]:
    """The words, with each `{task="a", rule="b"}` (a matcher as Prometheus writes it, which
    amtool takes) split into its matchers; commas within quotes stay in their value."""
    for word in words:
        text = word.strip()
        if not text.startswith("{") and not text.endswith("}"):
            yield word
            continue
        if not (text.startswith("{") and text.endswith("}")):
            raise InputError("matchers", f'{word!r}: unclosed {{...}}; write {{task="x"}}')
        inner, pos = text[1:-1], 0
        while pos <= len(inner):
            part = _GROUP.match(inner, pos)
            end = part.end() if part else pos
            if end < len(inner) and inner[end] != ",":
                raise InputError("matchers", f"{word!r}: unbalanced quotes")
            if inner[pos:end].strip():
                yield inner[pos:end]
            pos = end + 1


def matcher_warnings(matchers: Mapping[str, Sequence[str]], names: ConfigNames | None) -> list[str]:
    """What a silence's matchers name that the config does not (its rule and channel names;
    None: not known, unchecked) and the statuses relay does not know. Most likely a typo, and
    the silence would mute nothing by it; yet it is kept (the rule may come with the next
    reload, the status with a newer Trigger.dev), so these are warnings, the first `HINTS`
    with the nearest name known (a search over every name: 100 values against 2,000 rules
    held the event loop for a second)."""
    known: dict[str, Collection[str]] = {"status": _SILENCE_STATUSES}
    if names is not None:
        known.update(rule=names[0], channel=names[1])
    unknown = [
        (key, value)
        for key in SILENCE_MATCHERS
        if key in known
        for value in matchers.get(key, ())
        if not _is_known(key, value, known[key])
    ]
    return [
        _unknown_name(key, value, known[key] if n < HINTS else ())
        for n, (key, value) in enumerate(unknown)
    ]


HINTS = 3  # unknown names of one silence given the nearest known one


def _is_known(key: str, value: str, names: Collection[str]) -> bool:
    if key == "status":
        return value.lower() == "failure" or value.strip().upper() in names
    return value in names


def _unknown_name(key: str, value: str, names: Collection[str]) -> str:
    """The warning about matcher `key`'s unknown `value`, with the nearest of `names`."""
    wanted = value.strip().upper() if key == "status" else value
    hint = did_you_mean(wanted, names, quoted=True)
    if key == "status":
        what = f"is not a status relay knows{hint}; only a run sent with it fits"
        return f"matchers.status: {value!r} {what}"
    return f"matchers.{key}: {value!r} names no {key} of the config{hint}; nothing fits it"


_SILENCE_STATUSES = frozenset(
    KNOWN_STATUSES | frozenset(RAW_STATUS_MAP) | frozenset().union(*EVENT_STATUSES.values())
)
