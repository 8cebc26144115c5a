"""YAML with locations: parse a document into plain data, remembering each path's line.

Strings get ${VAR} / ${VAR:-default} interpolation from the environment ($$ is a literal $).
Problems (syntax, duplicate keys, unset variables, unreadable values, oversized documents) are
collected, not raised one by one, so `relay check` can print them all: only a document that
cannot be parsed, or is too large or too deep, ends the walk early. The interpolation itself
is relay.interpolation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from relay.errors import Problem
from relay.interpolation import interpolate, references

Path_ = tuple[str | int, ...]
MAX_NODES = 100_000
MAX_DEPTH = 64  # nesting levels; also ends a recursive alias (&a [*a])
MAX_BYTES = 4 * 1024 * 1024
MERGE_TAG = "tag:yaml.org,2002:merge"  # the key `<<`


@dataclass
class Located:
    """Plain data plus the line of every path, for error messages."""

    filename: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # paths whose problem is already recorded (an unset variable, an unreadable value): a
    # schema error there would repeat it
    reported: set[Path_] = field(default_factory=set)
    # mappings with a merge key (<<) that merged no mapping, or a key that is no scalar: a key
    # it would have given is not called missing
    merging: set[Path_] = field(default_factory=set)
    # plain yes/no/on/off, read as text (YAML 1.2) where YAML 1.1 read a boolean
    yaml11_words: set[Path_] = field(default_factory=set)
    text: str = ""  # as read: what a delivery worker is handed to run its parent's config

    def locate(self, path: Path_) -> str:
        """file:line of the longest known prefix of `path`."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return f"{self.filename}:{line}"
        return self.filename

    def problem(self, path: Path_, message: str) -> Problem:
        return Problem(self.locate(path), dotted(path), message)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        key = _named(str(part))
        out += f"[{part}]" if isinstance(part, int) else (f".{key}" if out else key)
    return out


def _named(key: str) -> str:
    """A key as a problem names it: up to a colon. `{password:hunter2}`, its space forgotten,
    is one key `password:hunter2` of a flow mapping, and what follows the colon is a value."""
    name, colon, value = key.partition(":")
    return f"{name}:…" if colon and value else key


_TOKEN = re.compile(r"__RELAY_ENV_(\d+)__")


def protect(text: str) -> tuple[str, list[str]]:
    """Replace each ${...} with a YAML-safe token, so `{a: ${X}}` parses as YAML; the tokens
    are restored inside scalars after parsing. Lines are unchanged in count: a reference that
    spans lines, or is not closed, is left for the YAML parser and the interpolation."""
    originals: list[str] = []
    out: list[str] = []
    pos = 0
    for start, end in references(text):
        reference = text[start:end]
        if reference == "$$" or "\n" in reference or not reference.endswith("}"):
            continue
        out.append(text[pos:start] + f"__RELAY_ENV_{len(originals)}__")
        originals.append(reference)
        pos = end
    out.append(text[pos:])
    return "".join(out), originals


class _Walker:
    def __init__(self, located: Located, env: Mapping[str, str], originals: list[str]) -> None:
        self.located = located
        self.env = env
        self.originals = originals
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")
        self._merging = 0  # inside a merged mapping: a line already known is kept

    def walk(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        if len(path) > MAX_DEPTH:
            raise _Unsupported(
                node, f"nested deeper than {MAX_DEPTH} levels (or a recursive alias)"
            )
        self.located.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges = [value for key, value in node.value if key.tag == MERGE_TAG]
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self._key(key_node)
            if key is None:
                self.located.merging.add(path)  # or a key that is no scalar: reported
                continue
            child = (*path, key)
            if "__RELAY_ENV_" in str(key_node.value):  # `keys are not substituted`, reported
                self.located.reported.add(child)
            if key in out:
                self.located.problems.append(
                    Problem(
                        f"{self.located.filename}:{key_node.start_mark.line + 1}",
                        dotted(child),
                        "duplicate key",
                    )
                )
            if self._merging:  # the lines of the mapping's own keys, and the first merged
                self.located.lines.setdefault(child, key_node.start_mark.line + 1)
            else:
                self.located.lines[child] = key_node.start_mark.line + 1
            out[key] = self.walk(value_node, child)
        if not merges:
            return out
        merged: dict[str, Any] = {}
        for merge in merges:
            for key, value in self._merged(merge, path).items():
                merged.setdefault(key, value)
        return {**merged, **out}

    def _merged(self, node: yaml.Node, path: Path_) -> dict[str, Any]:
        """What a merge key brings (`<<: *base`, or `<<: [*a, *b]`, the first one's keys
        first), as YAML 1.1, Alertmanager's and Kubernetes' loaders read it: the mapping's own
        keys win; a merged key's problems point at the line where it is written."""
        merged: dict[str, Any] = {}
        for source in node.value if isinstance(node, yaml.SequenceNode) else [node]:
            if not isinstance(source, yaml.MappingNode):
                self._report(source, "a merge key (<<) takes a mapping, or a list of mappings")
                self.located.merging.add(path)  # the keys it was meant to give seem missing
                continue
            self._merging += 1
            try:
                walked = self.walk(source, path)
            finally:
                self._merging -= 1
            for key, value in walked.items():
                merged.setdefault(key, value)
        return merged

    def _key(self, node: yaml.Node) -> str | None:
        """The key as text; None (and a problem recorded) when it cannot be one."""
        if not isinstance(node, yaml.ScalarNode):
            self._report(node, "mapping keys must be plain scalars")
            return None
        key = self._construct(node)
        if key is _UNREADABLE:
            return None
        text = str(key)
        if "__RELAY_ENV_" in text:  # a ${...} protected for parsing: give it back as written
            self._report(node, "keys are not substituted: write ${...} in values only")
            text = self._restore(text)
        return text

    def _restore(self, text: str) -> str:
        """`text` with each token protect() put there given back as the ${...} it stood for."""
        return _TOKEN.sub(lambda m: self.originals[int(m.group(1))], text)

    def _construct(self, node: yaml.Node) -> Any:
        """The node's Python value; _UNREADABLE (and a problem recorded) when it has none."""
        try:
            return self.constructor.construct_object(node)
        # a timestamp 2001-13-45; PyYAML's own bugs on explicit tags: `!!bool maybe` (KeyError),
        # `!!int ""` (IndexError), `!!timestamp x` (AttributeError)
        except (yaml.YAMLError, ValueError, OverflowError, LookupError, AttributeError):
            self._report(node, f"cannot read this value ({_tag_words(node.tag)})")
            return _UNREADABLE

    def _report(self, node: yaml.Node, message: str) -> None:
        where = f"{self.located.filename}:{node.start_mark.line + 1}"
        self.located.problems.append(Problem(where, "", message))

    def _scalar(self, node: yaml.Node, path: Path_) -> Any:
        if _yaml11_bool(node):
            self.located.yaml11_words.add(path)
            return node.value
        if _sexagesimal(node):
            return node.value
        value = self._construct(node)
        if value is _UNREADABLE:
            self.located.reported.add(path)
            return None
        if not isinstance(value, str):
            return value
        if "__RELAY_ENV_" in value:
            value = self._restore(value)
        if "$" not in value:
            return value
        result = interpolate(value, self.env)
        messages = [f"{UNSET_VARIABLE} {name} is not set" for name in result.missing]
        messages += dict.fromkeys(result.malformed)
        if messages:
            self.located.reported.add(path)
        self.located.problems += [self.located.problem(path, m) for m in messages]
        return result.text


UNSET_VARIABLE = "environment variable"  # the problem's first words (relay.reloading)
_UNREADABLE = object()
_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _sexagesimal(node: yaml.Node) -> bool:
    """A plain `HH:MM`-like scalar that YAML 1.1 resolves to a base-60 number; YAML 1.2 and
    Go's YAML (Alertmanager) read `17:00` as text."""
    return _plain(node, _NUMBERS) and ":" in str(node.value)


def _yaml11_bool(node: yaml.Node) -> bool:
    """A plain yes/no/on/off, which YAML 1.1 resolves to a boolean and YAML 1.2 reads as text:
    `metadata: {region: no}` means Norway. Where a boolean is wanted the schema still takes
    "yes"/"no"/"on"/"off" as one."""
    return _plain(node, ("tag:yaml.org,2002:bool",)) and node.value.lower() in _YAML11_BOOLS


_YAML11_BOOLS = ("yes", "no", "on", "off")


def _plain(node: yaml.Node, tags: tuple[str, ...]) -> bool:
    """An unquoted, untagged scalar that YAML resolved to one of `tags`."""
    # plain is style None in PyYAML's own parser, "" in libyaml's
    return isinstance(node, yaml.ScalarNode) and not node.style and node.tag in tags


# PyYAML problems that quote a name the file wrote: an unquoted value starting with * or ! (a
# password `*x9...`, `!x9!...`) is read as an alias or a tag, and that name is the secret
_QUOTES_A_NAME = {
    "found undefined alias": "found undefined alias (quote a value that starts with *)",
    "found undefined tag handle": "found undefined tag handle (quote a value that starts with !)",
}


# what to fix, after PyYAML's words for the slips of hand-written YAML: a tab; a line indented
# off (it starts a key, `?`, an item or a plain value; a key at its list's `-`, under
# `- name:`); a text after a closing quote on its line (an apostrophe in '...': `'it's'`); a
# `: ` in a plain value (`when: a: b`), which a line indented past its key above also makes
# (read as that key's value going on). Another thing found (a stray `]`) gets no fix named.
_INDENT = " (check this line's indentation against the lines above)"
_AFTER_QUOTE = " (text after a closing quote: quote the whole value; within '...' write a ' as '')"
_COLON = " (a value holding ': ' must be quoted)"
_FIXES = {
    "found character '\\t' that cannot start any token": "; indent with spaces, not tabs",
    "expected <block end>, but found '<block mapping start>'": _INDENT,
    "expected <block end>, but found '<block sequence start>'": _INDENT,
    "expected <block end>, but found '-'": _INDENT,
    "expected <block end>, but found '<scalar>'": _INDENT,
    "expected <block end>, but found '?'": _INDENT,
    "mapping values are not allowed here": _INDENT,
}


def _unquoted(problem: str, mark: yaml.Mark | None) -> str:
    """A PyYAML problem without the name it quotes, for those that quote what the file wrote;
    with the fix, for those a slip makes (`mark`: where)."""
    fix = next((v for k, v in _FIXES.items() if problem.startswith(k)), "")
    before = _line_before(mark)
    if fix == _INDENT and before.rstrip().endswith(("'", '"')):
        fix = _AFTER_QUOTE
    elif fix == _INDENT and problem.startswith("mapping values") and ": " in before:
        fix = _COLON
    return next((v for k, v in _QUOTES_A_NAME.items() if problem.startswith(k)), problem) + fix


def _line_before(mark: yaml.Mark | None) -> str:
    """The text before `mark` on its line ("" unknown)."""
    if mark is None or not isinstance(mark.buffer, str):
        return ""
    return mark.buffer[: mark.pointer].rpartition("\n")[2]


def _tag_words(tag: str) -> str:
    """A tag YAML knows (`tag:yaml.org,2002:int`) by name; any other is what the file wrote,
    perhaps a value starting with ! (a password): not repeated."""
    if tag in yaml.SafeLoader.yaml_constructors:
        return f"tag {tag}"
    return "unknown tag; quote a value that starts with !"


class _TooLarge(Exception):
    pass


class _Unsupported(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        self.node = node
        self.message = message


# libyaml, when PyYAML was built with it, composes a large file about 8 times as fast (2,000
# rules: 0.07 s instead of 0.59 s, in every `relay check`, start and reload)
_FAST_LOADER: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree. A document libyaml does not take is read again by PyYAML's
    own parser, whose verdict and words (file:line, what is wrong) relay reports."""
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, RecursionError, ValueError):
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load_yaml(text: str, filename: str, env: Mapping[str, str]) -> Located:
    """Parse `text`; problems are recorded on the result, data is None if unparseable."""
    located = Located(filename, None, text=text)
    if len(text.encode()) > MAX_BYTES:
        located.problems.append(Problem(filename, "", f"file larger than {MAX_BYTES} bytes"))
        return located
    text, originals = protect(text)
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        problem = _unquoted(str(exc.problem), mark)
        if exc.context and problem.startswith("but "):  # "but found another document"
            problem = f"{exc.context}, {problem}"
        located.problems.append(Problem(where, "", f"invalid YAML: {problem}"))
        return located
    except yaml.YAMLError as exc:
        located.problems.append(Problem(filename, "", f"invalid YAML: {type(exc).__name__}"))
        return located
    except RecursionError:  # PyYAML composes recursively
        located.problems.append(Problem(filename, "", "invalid YAML: nested too deeply"))
        return located
    if root is None:
        located.data = {}
        return located
    walker = _Walker(located, env, originals)
    try:
        located.data = walker.walk(root, ())
    except _TooLarge:
        located.problems.append(Problem(filename, "", f"more than {MAX_NODES} YAML nodes"))
    except _Unsupported as exc:
        where = f"{filename}:{exc.node.start_mark.line + 1}"
        located.problems.append(Problem(where, "", exc.message))
    except yaml.YAMLError as exc:
        located.problems.append(Problem(filename, "", f"invalid YAML value: {type(exc).__name__}"))
    return located
