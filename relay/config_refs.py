"""The checks across the parts of a configuration, from the names the file gives its entries:
duplicate names, `notify` entries and time intervals naming nothing, rule options that only
make sense together, and inhibit rules' `source_digest`. A name that may be missing, or a
value that is not known (invalid, an unset variable), is not looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.config import Config
from relay.config_parts import is_known
from relay.config_rules import RuleConfig
from relay.errors import Problem, did_you_mean
from relay.windows import InhibitRule
from relay.yamlconf import Located, Path_


class Names:
    """The names the file gives the entries of a list section (rules, time intervals, inhibit
    rules), from the raw data: an entry with a problem keeps its name."""

    def __init__(self, data: dict[str, Any], unknown: frozenset[Path_], located: Located) -> None:
        self.data = data
        self.unknown = unknown
        self.located = located

    def written(self, key: str, *, validated: bool = True) -> list[tuple[int, str]]:
        """(index, name) of each entry of `key` whose name is a string, known where the section
        is `validated` (a misspelt one is not: written_as)."""
        raw = self.data.get(key)
        return [
            (i, spec["name"])
            for i, spec in enumerate(raw if isinstance(raw, list) else [])
            if isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and (not validated or is_known((key, i, "name"), self.unknown))
        ]

    def every(self, key: str) -> set[str] | None:
        """Every name of `key` (or of the key misspelt for it: written_as), or None when one
        may be missing (an entry whose name is not known, or a section that is no list): no
        name is then looked up in it."""
        section = written_as(self.data, key)
        raw = self.data.get(section)
        if raw is None:
            return set()
        names = self.written(section, validated=section == key)
        if not isinstance(raw, list) or len(names) != len(raw):
            return None
        return {name for _, name in names}

    def duplicates(self, key: str) -> list[tuple[int, str]]:
        seen: set[str] = set()
        out = []
        for i, name in self.written(key):
            if name in seen:
                out.append((i, name))
            seen.add(name)
        return out


def written_as(data: dict[str, Any], section: str) -> str:
    """The top-level key the file wrote for `section`: itself, or, where it is not written, a
    key no section has spelt close to it (`channel:` for `channels:`, `time_interval:`). That
    key is the one problem ("unknown key (did you mean 'channels'?)"): the names under it are
    not said to be missing as well, at every rule naming one."""
    if section in data:
        return section
    for key in data:
        if key not in Config.model_fields and did_you_mean(str(key), [section]):
            return str(key)
    return section


def rule_options(rules: Mapping[int, RuleConfig], names: Names) -> list[Problem]:
    """Rule options that only make sense together, and references to named time intervals; a
    name is not looked up in a section where one may be missing, nor an unknown value checked."""
    located, unknown = names.located, names.unknown
    problems = [
        located.problem((key, i, "name"), "duplicate name")
        for key in ("time_intervals", "inhibit_rules")
        for i, _ in names.duplicates(key)
    ]
    intervals = names.every("time_intervals")
    for i, rule in rules.items():
        for key in ("mute_time_intervals", "active_time_intervals"):
            for j, name in enumerate(getattr(rule, key) or ()):
                where = ("rules", i, key, j)
                if intervals is not None and name not in intervals and is_known(where, unknown):
                    hint = did_you_mean(name, intervals, quoted=True)
                    problems.append(located.problem(where, f"unknown time interval {name!r}{hint}"))
    for i, rule in rules.items():
        timing = (rule.group_wait, rule.group_interval, rule.repeat_interval)
        grouped = rule.group_by is not None or not is_known(("rules", i, "group_by"), unknown)
        if not grouped and any(v is not None for v in timing):
            problems.append(located.problem(("rules", i), "group_* options need `group_by`"))
        single_runs = rule.group_by is None and {*rule.match.event} == {"run"}
        if rule.update_on_recovery and not single_runs:
            problems.append(
                located.problem(
                    ("rules", i, "update_on_recovery"),
                    "only rules about single runs recover: not with `group_by` or another event",
                )
            )
    return problems


def inhibit_sources(
    inhibits: Mapping[int, InhibitRule], rules: Mapping[int, RuleConfig], names: Names
) -> list[Problem]:
    """A `source_digest` names a digest rule, and `equal` only reads its `group_by` paths. A
    rule with a problem is looked at only where its name and `group_by` are known."""
    located, unknown = names.located, names.unknown
    by_name = {name: i for i, name in names.written("rules")}
    every = names.every("rules")
    problems = []
    for i, inhibit in inhibits.items():
        source = inhibit.source_digest
        if source is None:
            continue
        where: Path_ = ("inhibit_rules", i, "source_digest", "rule")
        index = by_name.get(source.rule)
        if index is None or index not in rules:
            if every is not None and source.rule not in every:
                hint = did_you_mean(source.rule, every, quoted=True)
                problems.append(located.problem(where, f"unknown rule: {source.rule!r}{hint}"))
            continue
        rule = rules[index]
        if not is_known(("rules", index, "group_by"), unknown):
            continue
        if rule.group_by is None:
            why = "not a digest rule (it has no `group_by`)"
            problems.append(located.problem(where, f"{why}: {source.rule!r}"))
            continue
        for j, path in enumerate(inhibit.equal):
            if path not in rule.group_by:
                problems.append(
                    located.problem(
                        ("inhibit_rules", i, "equal", j),
                        f"not in the `group_by` of rule {source.rule!r}: every run of a digest"
                        " group must agree on it",
                    )
                )
    return problems


def references(data: dict[str, Any], names: Names) -> list[Problem]:
    """Duplicate rule names and `notify` entries naming no channel (not looked up when
    `channels` is no mapping: that is the problem reported), from the raw data: every rule.
    A value from an unset variable is not looked up (its problem is that variable)."""
    located = names.located
    channels = data.get(written_as(data, "channels"))
    known = set(channels or ()) if channels is None or isinstance(channels, dict) else None
    rules = data.get("rules")
    problems = [
        located.problem(("rules", i, "name"), "duplicate rule name")
        for i, _ in names.duplicates("rules")
    ]
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        notify = rule.get("notify") if isinstance(rule, dict) else None
        for j, channel in enumerate(notify if isinstance(notify, list) else []):
            path: Path_ = ("rules", i, "notify", j)
            if (
                isinstance(channel, str)
                and known is not None
                and channel not in known
                and path not in located.reported  # an unset variable: reported as such
            ):
                hint = did_you_mean(channel, known, quoted=True)
                problems.append(located.problem(path, f"unknown channel {channel!r}{hint}"))
    return problems
