"""docs/configuration.md, generated: every setting and config key with its type, default and limits.

    python tools/config_reference.py            # print the reference
    python tools/config_reference.py --write    # rewrite docs/configuration.md

Keys, types, defaults and limits come from relay's pydantic models (Settings for the
environment; relay.config and relay.windows for the YAML file; each channel type's settings
model from the channel registry), so they cannot be wrong. The prose of a key is the "Meaning"
column of README.md's table for it, so it is written in one place; a key the README does not
describe yet shows "—". tests/test_docs.py fails when the committed file differs from this output.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo

from relay import channels as channel_registry
from relay.channels._email_settings import SmtpSettings
from relay.config import (
    ChannelSettings,
    Defaults,
    RateLimit,
    RetryPolicy,
    ServerConfig,
    TemplatesConfig,
)
from relay.config_base import field_metadata
from relay.config_rules import MatchConfig, RuleConfig, one_or_many
from relay.config_sources import RealtimeConfig, RealtimeFeed, TriggerAlertsConfig
from relay.durations import format_duration, is_duration
from relay.settings import Settings
from relay.sizes import is_size
from relay.windows import DigestSource, InhibitRule, NamedTimeInterval, TimeInterval, TimeRange

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "configuration.md"
NONE = "—"


@dataclass(frozen=True)
class Table:
    """One model's keys: heading, the README table describing them, nested models to flatten."""

    heading: str
    model: type[BaseModel]
    readme_marker: str | None
    intro: str = ""
    nested: dict[str, type[BaseModel]] = field(default_factory=dict)
    only: frozenset[str] | None = None  # a channel type: its own keys (and changed defaults)


def channel_tables() -> list[Table]:
    tables = []
    markers = {
        "webhook": "`webhook` POSTs",
        "slack": "`slack` posts",
        "email": "`email` sends",
        "discord": "`discord` posts",
        "msteams": "`msteams` posts",
        "pagerduty": "`pagerduty` sends",
        "opsgenie": "`opsgenie` creates",
        "telegram": "`telegram` sends",
        "googlechat": "`googlechat` posts",
        "pushover": "`pushover` sends",
    }
    common = ChannelSettings.model_fields
    for kind, channel in sorted(channel_registry.REGISTRY.items()):
        model = channel.settings
        own = {
            name
            for name, info in model.model_fields.items()
            if name not in common or info.default != common[name].default
        }
        nested: dict[str, type[BaseModel]] = {"smtp": SmtpSettings} if kind == "email" else {}
        intro = f"`type: {kind}`; parts rendered: {', '.join(f'`{p}`' for p in channel.parts)}."
        if not own - {"type"}:
            intro += " No options besides the common ones."
        tables.append(
            Table(f"`{kind}`", model, markers.get(kind), intro, nested, frozenset(own - {"type"}))
        )
    return tables


def yaml_tables() -> list[Table]:
    return [
        Table("`server`", ServerConfig, "**`server`**"),
        Table("`sources.trigger_alerts`", TriggerAlertsConfig, "**`sources.trigger_alerts`**"),
        Table("`sources.realtime`", RealtimeConfig, "**`sources.realtime`**"),
        Table(
            "`sources.realtime.feeds[]`",
            RealtimeFeed,
            "Each entry of `feeds`",
            "Exactly one of `tags`, `run_id`, `batch_id`.",
        ),
        Table("`defaults`", Defaults, "**`defaults`**", nested={"retry": RetryPolicy}),
        Table("`templates`", TemplatesConfig, "**`templates`**"),
        Table(
            "`channels.<name>`",
            ChannelSettings,
            "**`channels`**",
            "Options every channel has; the sections below add each type's own.",
            {"rate_limit": RateLimit},
        ),
        *channel_tables(),
        Table("`rules[]`", RuleConfig, "**`rules`**", "Tried in order."),
        Table("`rules[].match`", MatchConfig, "`match`:", "All conditions must hold."),
        Table("`time_intervals[]`", NamedTimeInterval, "**`time_intervals`**"),
        Table(
            "`time_intervals[].time_intervals[]`",
            TimeInterval,
            "Each entry of an interval's",
            nested={"times": TimeRange},
        ),
        Table(
            "`inhibit_rules[]`",
            InhibitRule,
            "**`inhibit_rules`**",
            nested={"source_digest": DigestSource},
        ),
    ]


# ------------------------------------------------------------------- README's Meaning column


def readme_section(text: str, heading: str) -> str:
    level = len(heading) - len(heading.lstrip("#"))
    match = re.search(rf"^{re.escape(heading)}$", text, flags=re.M)
    if match is None:
        return ""
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


@dataclass(frozen=True)
class Described:
    meaning: str
    default: str | None  # the README's Default cell, where its table has one


def readme_rows(text: str, marker: str | None) -> dict[str, Described]:
    """Key → its row in the first README table after `marker` (links made to work from docs/)."""
    if marker is None or marker not in text:
        return {}
    lines = text[text.index(marker) :].splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    header = [c.strip() for c in lines[start].strip().split("|")[1:-1]] if lines[start:] else []
    out: dict[str, Described] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [from_docs(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        given = cells[header.index("Default")] if "Default" in header else None
        meaning = cells[-1] or NONE
        for key in re.findall(r"`([^`]+)`", cells[0]):
            out[key] = Described(meaning, given)
    return out


def from_docs(markdown: str) -> str:
    """README links as seen from docs/: `#x` → `../README.md#x`, `docs/x.md` → `x.md`."""

    def fix(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith("#"):
            target = "../README.md" + target
        elif target.startswith("docs/"):
            target = target.removeprefix("docs/")
        elif not re.match(r"[a-z]+:", target):
            target = "../" + target
        return f"]({target})"

    return re.sub(r"\]\(([^)\s]+)\)", fix, markdown)


# ---------------------------------------------------------------------- types and defaults


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:  # noqa: PLR0911
    """How an operator reads a type: `duration`, `list of string`, `string, secret` ..."""
    if is_duration(metadata or []):
        return "duration"
    if any(isinstance(m, BeforeValidator) and m.func is one_or_many for m in metadata or []):
        return f"string or {type_name(annotation)}"
    if is_size(metadata or []):
        return "size"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], list(annotation.__metadata__))
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(names))
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map of {type_name(args[0])} → {type_name(args[1])}"
    simple = {str: "string", int: "int", float: "number", bool: "bool", SecretStr: "string, secret"}
    if annotation in simple:
        return simple[annotation]
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        keys = ", ".join(f"`{k}`" for k in model_keys(annotation))
        return f"mapping ({keys})"
    return "any"


def model_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
)


def limits(info: FieldInfo) -> str:
    words = []
    for item in field_metadata(info):
        words += [
            f"{sign} {plain(getattr(item, a))}" for t, a, sign in BOUNDS if isinstance(item, t)
        ]
        if getattr(item, "pattern", None):
            words.append(f"matches `{item.pattern}`")
    if is_duration(info.metadata) or "duration" in type_name(info.annotation):
        words = [
            re.sub(r"[1-9][\d.]*$", lambda m: format_duration(float(m.group())), w) for w in words
        ]
    return ", ".join(words) or NONE


def plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def flow(value: Any) -> str:
    """A default as YAML flow text: {per_second: 1, burst: 3}, [a, b], true."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True, by_alias=True)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return plain(value)


def default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if "duration" in type_name(info.annotation, info.metadata) and isinstance(value, float):
        return f"`{format_duration(value)}`"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{flow(value)}`"


# ----------------------------------------------------------------------------- rendering


def rows(table: Table) -> Iterator[tuple[str, FieldInfo]]:
    for name, info in table.model.model_fields.items():
        if table.only is not None and name not in table.only:
            continue
        key = info.alias or name
        if key in table.nested:
            for sub, sub_info in table.nested[key].model_fields.items():
                yield f"{key}.{sub_info.alias or sub}", sub_info
        else:
            yield key, info


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(table: Table, readme: str) -> list[str]:
    described = readme_rows(readme, table.readme_marker)
    out = [f"### {table.heading}", ""]
    if table.intro:
        out += [table.intro, ""]
    entries = list(rows(table))
    if not entries:
        return out
    out += ["| Key | Type | Default | Limits | Meaning |", "|---|---|---|---|---|"]
    for key, info in entries:
        row = described.get(key, Described(NONE, None))
        kind = type_name(info.annotation, info.metadata)
        given = default(info)
        if given == "unset" and row.default not in (None, "", "unset"):
            given = row.default  # the model leaves it to code: the README says what applies
        out.append(f"| `{key}` | {cell(kind)} | {given} | {cell(limits(info))} | {row.meaning} |")
    return [*out, ""]


def render_environment(readme: str) -> list[str]:
    section = readme_section(readme, "### Environment")
    described = readme_rows(section, "| Variable |")
    out = [
        "## Environment",
        "",
        "Read once at start (a change needs a restart), by `relay serve` and every other command.",
        "",
        "| Variable | Type | Default | Meaning |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        variable = f"RELAY_{name.upper()}"
        kind = type_name(info.annotation, info.metadata)
        meaning = described.get(variable, Described(NONE, None)).meaning
        out.append(f"| `{variable}` | {cell(kind)} | {default(info)} | {meaning} |")
    return [*out, ""]


def render() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    configuration = readme_section(readme, "## Configuration")
    lines = [
        "<!-- Generated by tools/config_reference.py from relay's models and the key tables of",
        "     README.md; do not edit by hand: run `python tools/config_reference.py --write`. -->",
        "",
        "# Configuration reference",
        "",
        "Every environment variable and every key of the YAML file, with its type, default and",
        "limits as the code checks them. How the pieces fit together, with examples:",
        "[Configuration](../README.md#configuration) in the README; value syntax (durations,",
        "`${VAR}`, secrets): [Values](../README.md#values). `relay check` validates a file against",
        "exactly this.",
        "",
        *render_environment(readme),
        "## The YAML file",
        "",
        "Unknown keys are errors. `[]` marks a list entry, `<name>` a key you choose.",
        "",
    ]
    for table in yaml_tables():
        lines += render_table(table, configuration)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--write"]:
        TARGET.write_text(text, encoding="utf-8")
        return 0
    if argv[1:]:
        sys.stderr.write("usage: python tools/config_reference.py [--write]\n")
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
