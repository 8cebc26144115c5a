"""${VAR} interpolation of configuration values: ${VAR} and ${VAR:-default} (a default may
hold references itself) substituted from the environment, $$ a literal $, and what was unset or
could not be read collected as messages that quote no text. relay.yamlconf applies it to the
YAML document's scalars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_REFERENCE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
MALFORMED = "not a variable reference: write ${VAR} or ${VAR:-default}, or $$ for a literal $"
UNCLOSED = "`${` without its closing `}`: write ${VAR} or ${VAR:-default}, or $$ for a literal $"
MAX_NESTING = 8  # ${A:-${B:-...}} levels


@dataclass
class Interpolated:
    """A string with its references substituted, the variables that were unset, and what was
    wrong with the references that could not be read (messages that quote no text)."""

    text: str
    missing: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def interpolate(text: str, env: Mapping[str, str]) -> Interpolated:
    """Substitute ${VAR} and ${VAR:-default} (the default may hold references itself, as in
    ${A:-${B}}); $$ is a literal $, a $ before anything else stays as it is."""
    result = Interpolated("")
    result.text = _substitute(text, env, result)
    return result


def _substitute(text: str, env: Mapping[str, str], result: Interpolated, depth: int = 0) -> str:
    if depth > MAX_NESTING:
        result.malformed.append(f"references nested more than {MAX_NESTING} deep")
        return ""
    out: list[str] = []
    pos = 0
    for start, end in references(text):
        out.append(text[pos:start])
        pos = end
        if end - start == 2 and text[start + 1] == "$":
            out.append("$")
        elif text[end - 1] != "}":
            result.malformed.append(UNCLOSED)
        else:
            out.append(_resolve(text[start + 2 : end - 1], env, result, depth))
    out.append(text[pos:])
    return "".join(out)


def _resolve(body: str, env: Mapping[str, str], result: Interpolated, depth: int) -> str:
    match = _REFERENCE.fullmatch(body)
    if match is None:
        result.malformed.append(MALFORMED)
        return ""
    name, default = match.group(1), match.group(2)
    value = env.get(name)
    if value is not None and (value != "" or default is None):
        return value  # as it is: a value from the environment is never interpolated again
    if default is None:
        result.missing.append(name)
        return ""
    return _substitute(default, env, result, depth + 1)


def references(text: str) -> list[tuple[int, int]]:
    """(start, end) of each $$ and ${...} of `text` (a ${ left open runs to the end)."""
    found: list[tuple[int, int]] = []
    i = text.find("$")
    while i >= 0:
        if text.startswith("$$", i):
            end = i + 2
            found.append((i, end))
        elif text.startswith("${", i):
            end = _closing(text, i)
            found.append((i, end))
        else:
            end = i + 1
        i = text.find("$", end)
    return found


def _closing(text: str, start: int) -> int:
    """The index after the `}` that closes the ${ at `start`, or len(text) if none does."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        i += 1
        if text[i - 1] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)
