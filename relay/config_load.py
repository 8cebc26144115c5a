"""Loading the YAML configuration: every problem found with its file:line, and what is valid.

`load_config(path, channel_models)` returns a `LoadedConfig` or raises ConfigError with every
problem found and its file:line; `check_file` returns a `Draft` instead, the valid parts with
the problems, for the checks that follow (rules, templates) to run on. Channel option models are
passed in by the caller (the channel registry), so this module knows no channel. The schema is
relay.config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from relay.config import ChannelSettings, Config, RuleConfig, TemplatesConfig
from relay.errors import ConfigError, Problem, field_message, in_file_order
from relay.windows import InhibitRule, NamedTimeInterval
from relay.yamlconf import Located, Path_, load_yaml


@dataclass(frozen=True)
class LoadedConfig:
    """A valid configuration and where each of its parts was written."""

    config: Config
    source: Located
    builtin: bool = False

    def locate(self, path: Path_) -> str:
        return self.source.locate(path)

    def secrets(self) -> list[str]:
        """Every secret value in the file, to scrub from any output."""
        return _secret_values(self.config)


ChannelModels = Mapping[str, type[ChannelSettings]]


@dataclass(frozen=True)
class Draft:
    """A configuration as far as it is valid, and every problem found in it.

    Each top-level section, channel, rule, time interval and inhibit rule is validated alone,
    and a rule or section with a problem is validated again without its invalid keys, so a
    problem in one key hides none in another: the checks that follow (rule expressions,
    templates, names) run on every key whose value is known.
    """

    source: Located
    config: Config  # invalid sections at their defaults; invalid channels and rules left out
    rules: dict[int, RuleConfig]  # every rule, by its index in the file, without invalid keys
    unknown: frozenset[Path_]  # paths whose value is not known: invalid, or an unset variable
    channel_types: dict[str, str]  # the type of every channel that names a known one
    problems: list[Problem]

    def known(self, path: Path_) -> bool:
        """Whether the value at `path` is as the file meant it (no unknown part above it)."""
        return is_known(path, self.unknown)

    def loaded(self) -> LoadedConfig:
        """The configuration, or ConfigError with every problem, in file order."""
        if self.problems:
            raise ConfigError(in_file_order(self.problems))
        return LoadedConfig(self.config, self.source)


def is_known(path: Path_, unknown: frozenset[Path_] | set[Path_]) -> bool:
    return not any(path[:n] in unknown for n in range(len(path) + 1))


def load_config(
    path: Path, channel_models: ChannelModels, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read, interpolate and validate `path`; ConfigError lists every problem with file:line."""
    return check_file(path, channel_models, env).loaded()


def check_file(
    path: Path, channel_models: ChannelModels, env: Mapping[str, str] | None = None
) -> Draft:
    """`path` read, interpolated and validated as far as it goes; ConfigError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        kind = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else _os_reason(exc)
        raise ConfigError([Problem(str(path), "", f"cannot read config: {kind}")]) from None
    return check_config(text, str(path), channel_models, env, base_dir=path.parent)


def parse_config(
    text: str,
    filename: str,
    channel_models: ChannelModels,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> LoadedConfig:
    """Interpolate and validate `text`; ConfigError lists every problem with file:line."""
    return check_config(text, filename, channel_models, env, base_dir).loaded()


def check_config(
    text: str,
    filename: str,
    channel_models: ChannelModels,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Draft:
    """`text` interpolated and validated as far as it goes: the valid parts, every problem."""
    located = load_yaml(text, filename, os.environ if env is None else env)
    data = located.data
    if data is None and not located.problems:  # only `---` or `null`: empty, like ""
        data = {}
    if not isinstance(data, dict):
        problems = list(located.problems)
        if data is not None:
            problems.append(located.problem((), "the top level must be a mapping"))
        return Draft(located, Config(), {}, frozenset({()}), {}, problems)
    parts = _Parts(located, channel_models, base_dir)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        # `server:` with every line below commented out is null: the section's defaults
        if key not in _ONE_BY_ONE and not (value is None and key in Config.model_fields):
            sections |= parts.section(key, value)
    sections["channels"] = parts.channels(data.get("channels"))
    rules = parts.rules(data.get("rules"))
    sections["rules"] = [rules[i] for i in sorted(rules) if i not in parts.salvaged]
    for key in ("time_intervals", "inhibit_rules"):
        sections[key] = list(parts.items(key, data.get(key)).values())
    config = _resolve_paths(Config().model_copy(update=sections), base_dir)
    unknown = frozenset(parts.unknown | located.reported)
    names = _Names(data, unknown, located)
    problems = parts.problems + _references(data, names)  # from the raw data
    problems += _rule_options(rules, names)
    problems += _inhibit_sources(parts.indexed["inhibit_rules"], rules, names)
    return Draft(located, config, rules, unknown, parts.types, problems)


# the sections whose entries are validated one by one (a problem in one hides none in another)
_ONE_BY_ONE = ("channels", "rules", "time_intervals", "inhibit_rules")


class _Parts:
    """Validates the parts of one document alone, recording problems and the paths whose value
    is not known (invalid: left out, or at its default in what is validated again)."""

    def __init__(
        self, located: Located, channel_models: ChannelModels, base_dir: Path | None
    ) -> None:
        self.located = located
        self.models = channel_models
        self.context = {"config_dir": base_dir}
        self.problems = list(located.problems)
        self.unknown: set[Path_] = set()
        self.types: dict[str, str] = {}
        self.salvaged: set[int] = set()  # rules valid only without their invalid keys
        self.indexed: dict[str, dict[int, Any]] = {"time_intervals": {}, "inhibit_rules": {}}

    def section(self, key: str, value: Any) -> dict[str, Any]:
        """{key: its validated value}; on a problem, its value without the invalid keys (for
        the checks that follow: `templates.dir` beside an unknown key), or {}."""
        try:
            return {key: getattr(Config.model_validate({key: value}), key)}
        except ValidationError as exc:
            self._fail(exc, ())
        if not isinstance(value, dict) or key not in Config.model_fields:
            return {}
        kept = {k: v for k, v in value.items() if is_known((key, k), self.unknown)}
        try:
            return {key: getattr(Config.model_validate({key: kept}), key)}
        except ValidationError:
            return {}

    def rules(self, raw: Any) -> dict[int, RuleConfig]:
        """Every rule by its index, an invalid one without its invalid keys (`salvaged`)."""
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.section("rules", raw)  # not a list: the schema words the problem (null, ...)
            return {}
        out: dict[int, RuleConfig] = {}
        for i, spec in enumerate(raw):
            try:
                out[i] = RuleConfig.model_validate(spec)
            except ValidationError as exc:
                self._fail(exc, ("rules", i))
                rule = _salvaged_rule(spec, ("rules", i), self.unknown)
                if rule is not None:
                    out[i] = rule
                    self.salvaged.add(i)
        return out

    def items(self, key: str, raw: Any) -> dict[int, Any]:
        """The valid entries of list section `key` (time_intervals, inhibit_rules), by index."""
        if raw is None:
            return {}
        if not isinstance(raw, list):
            self.section(key, raw)
            return {}
        model = _ITEM_MODELS[key]
        for i, spec in enumerate(raw):
            try:
                self.indexed[key][i] = model.model_validate(spec)
            except ValidationError as exc:
                self._fail(exc, (key, i))
        return self.indexed[key]

    def channels(self, raw: Any) -> dict[str, ChannelSettings]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self._bad_channel(("channels",), "must be a mapping of name to channel")
            return {}
        out = {name: self._channel(name, spec) for name, spec in raw.items()}
        return {name: channel for name, channel in out.items() if channel is not None}

    def _channel(self, name: str, spec: Any) -> ChannelSettings | None:
        path: Path_ = ("channels", name)
        kind = spec.get("type") if isinstance(spec, dict) else None
        if (*path, "type") in self.located.reported:  # an unset variable: already reported
            self.unknown.add(path)
            return None
        if not isinstance(kind, str):
            self._bad_channel(path, "a channel needs a `type`")
            return None
        model = self.models.get(kind)
        if model is None:
            known = ", ".join(sorted(self.models))
            self._bad_channel((*path, "type"), f"unknown channel type; use {known}")
            return None
        self.types[name] = kind  # its templates are checked even if its options are invalid
        try:
            return model.model_validate(spec, context=self.context)
        except ValidationError as exc:
            self._fail(exc, path)
            return None

    def _fail(self, exc: ValidationError, prefix: Path_) -> None:
        self.problems += _pydantic_problems(exc, prefix, self.located)
        self.unknown |= {(*prefix, *_key_of(err["loc"], prefix)) for err in exc.errors()}

    def _bad_channel(self, path: Path_, message: str) -> None:
        self.problems.append(self.located.problem(path, message))
        self.unknown.add(path[:2])


def _key_of(loc: tuple[str | int, ...], prefix: Path_) -> Path_:
    """The key an error is in, as the salvage leaves it out: a key of an entry (a rule, a
    channel, a time interval), or of a rule's `match` (`event` stays known beside a bad
    `status`); a section's key (`templates.dir` stays known beside an unknown key)."""
    loc = tuple("continue" if p == "continue_" else p for p in loc)
    if prefix[:1] == ("rules",) and loc[:1] == ("match",):
        return loc[:2]
    return loc[:1] if prefix else loc[:2]


_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "time_intervals": NamedTimeInterval,
    "inhibit_rules": InhibitRule,
}
_RULE_PLACEHOLDERS: dict[str, Any] = {"name": "?", "notify": ["?"]}  # required: never checked


def _salvaged_rule(spec: Any, path: Path_, unknown: set[Path_]) -> RuleConfig | None:
    """Rule `spec` without its invalid keys (placeholders for the required ones), or None."""
    if not isinstance(spec, dict):
        return None
    kept = {k: v for k, v in spec.items() if is_known((*path, k), unknown)}
    match = spec.get("match")
    written = match.items() if isinstance(match, dict) else ()
    kept["match"] = {k: v for k, v in written if is_known((*path, "match", k), unknown)}
    for key, value in _RULE_PLACEHOLDERS.items():
        if not is_known((*path, key), unknown) or key not in kept:
            kept[key] = value
            unknown.add((*path, key))
    for _ in range(3):  # a status that the (left out) event no longer explains, ...
        try:
            return RuleConfig.model_validate(kept)
        except ValidationError as exc:
            for err in exc.errors():
                bad = _key_of(err["loc"], path)
                unknown.add((*path, *bad))
                (kept["match"] if len(bad) == 2 else kept).pop(bad[-1] if bad else "", 0)
    return None


def _pydantic_problems(exc: ValidationError, prefix: Path_, located: Located) -> list[Problem]:
    """One Problem per pydantic error, worded for operators, quoting no input value."""
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *("continue" if p == "continue_" else p for p in loc))
        kind = err["type"]
        if path in located.reported or (kind == "missing" and path[:-1] in located.merging):
            continue  # already reported: an unset environment variable, an unreadable value
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "model_type":  # not "... or instance of ServerConfig"
            message = "expected a mapping of keys and values"
        elif kind == "path_type":  # not "... for <class 'pathlib.Path'>"
            message = "expected a path"
        else:
            message = field_message(err)
        out.append(located.problem(path, message))
    return out


class _Names:
    """The names the file gives the entries of a list section (rules, time intervals, inhibit
    rules), from the raw data: an entry with a problem keeps its name."""

    def __init__(self, data: dict[str, Any], unknown: frozenset[Path_], located: Located) -> None:
        self.data = data
        self.unknown = unknown
        self.located = located

    def written(self, key: str) -> list[tuple[int, str]]:
        """(index, name) of each entry of `key` whose name is a known string."""
        raw = self.data.get(key)
        return [
            (i, spec["name"])
            for i, spec in enumerate(raw if isinstance(raw, list) else [])
            if isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and is_known((key, i, "name"), self.unknown)
        ]

    def every(self, key: str) -> set[str] | None:
        """Every name of `key`, or None when one may be missing (an entry whose name is not
        known, or a section that is no list): no name is then looked up in it."""
        raw = self.data.get(key)
        if raw is None:
            return set()
        names = self.written(key)
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


def _rule_options(rules: Mapping[int, RuleConfig], names: _Names) -> list[Problem]:
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
                    problems.append(located.problem(where, f"unknown time interval {name!r}"))
    for i, rule in rules.items():
        timing = (rule.group_wait, rule.group_interval, rule.repeat_interval)
        grouped = rule.group_by is not None or not is_known(("rules", i, "group_by"), unknown)
        if not grouped and any(v is not None for v in timing):
            problems.append(located.problem(("rules", i), "group_* options need `group_by`"))
        if rule.update_on_recovery and (rule.group_by is not None or rule.match.event != "run"):
            problems.append(
                located.problem(
                    ("rules", i, "update_on_recovery"),
                    "only rules about single runs recover: not with `group_by` or another event",
                )
            )
    return problems


def _inhibit_sources(
    inhibits: Mapping[int, InhibitRule], rules: Mapping[int, RuleConfig], names: _Names
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
                problems.append(located.problem(where, f"unknown rule: {source.rule!r}"))
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


def _references(data: dict[str, Any], names: _Names) -> list[Problem]:
    """Duplicate rule names and `notify` entries naming no channel (not looked up when
    `channels` is no mapping: that is the problem reported), from the raw data: every rule.
    A value from an unset variable is not looked up (its problem is that variable)."""
    located = names.located
    channels = data.get("channels")
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
                problems.append(located.problem(path, f"unknown channel {channel!r}"))
    return problems


def _resolve_paths(config: Config, base_dir: Path | None) -> Config:
    directory = config.templates.dir
    if directory is None or directory.is_absolute() or base_dir is None:
        return config
    return config.model_copy(update={"templates": TemplatesConfig(dir=base_dir / directory)})


def _secret_values(model: BaseModel) -> list[str]:
    found: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        found += _secrets_in(value)
    return [s for s in found if s]


def _secrets_in(value: Any) -> list[str]:
    if isinstance(value, SecretStr):
        return [value.get_secret_value()]
    if isinstance(value, BaseModel):
        return _secret_values(value)
    if isinstance(value, dict):
        return [s for k, v in value.items() if _scrubbed(k, v) for s in _secrets_in(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _secrets_in(v)]
    return []


_CREDENTIAL_NAME = re.compile(r"auth|token|key|secret|pass|sig|session|cookie|credential", re.I)


def _scrubbed(name: object, value: object) -> bool:
    """Whether a secret kept by name (a webhook header's value) is scrubbed from logs: when the
    name says it is a credential, or the value is long enough to be one. Not `X-Team: core`:
    every "core" of a rule, task or message would read "***" in the logs. Every such value
    stays hidden from `relay check` and the API all the same (it is a SecretStr)."""
    if not (isinstance(name, str) and isinstance(value, SecretStr)):
        return True
    return _CREDENTIAL_NAME.search(name) is not None or len(value.get_secret_value()) >= 8


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
