"""Loading the YAML configuration: every problem found with its file:line, and what is valid.

`check_file(path, channel_models)` returns a `Draft`, the valid parts with every problem found
and its file:line, for the checks that follow (rules, templates) to run on; `Draft.loaded()` is
the `LoadedConfig`, or ConfigError with the problems. Channel option models are passed in by
the caller (the channel registry), so this module knows no channel. The schema is relay.config;
each part is validated alone by relay.config_parts, and the checks across parts (names,
references) are relay.config_refs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from relay.config import Config, TemplatesConfig
from relay.config_parts import ChannelModels, Parts, is_known
from relay.config_refs import Names, inhibit_sources, references, rule_options
from relay.config_rules import RuleConfig
from relay.errors import ConfigError, Problem, in_file_order
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

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """The rule names and channel names the file gives, also where a value is not known
        (an unset variable); None when one may be missing (a rule whose name is not known)."""
        data = self.source.data
        channels = data.get("channels") if isinstance(data, dict) else None
        if not isinstance(channels, dict):
            return None
        rules = Names(data, self.unknown, self.source).every("rules")
        return None if rules is None else (tuple(sorted(rules)), tuple(map(str, channels)))

    def loaded(self) -> LoadedConfig:
        """The configuration, or ConfigError with every problem, in file order."""
        if self.problems:
            raise ConfigError(in_file_order(self.problems))
        return LoadedConfig(self.config, self.source)


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
    parts = Parts(located, channel_models, base_dir)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        # `server:` with every line below commented out is null: the section's defaults
        empty = value is None and key in Config.model_fields
        if key not in _ONE_BY_ONE and not empty and not _extension(key):
            sections |= parts.section(key, value)
    sections["channels"] = parts.channels(data.get("channels"))
    rules = parts.rules(data.get("rules"))
    sections["rules"] = [rules[i] for i in sorted(rules) if i not in parts.salvaged]
    for key in ("time_intervals", "inhibit_rules"):
        sections[key] = list(parts.items(key, data.get(key)).values())
    config = _resolve_paths(Config().model_copy(update=sections), base_dir)
    unknown = frozenset(parts.unknown | located.reported)
    names = Names(data, unknown, located)
    problems = parts.problems + references(data, names)  # from the raw data
    problems += rule_options(rules, names)
    problems += inhibit_sources(parts.indexed["inhibit_rules"], rules, names)
    return Draft(located, config, rules, unknown, parts.types, problems)


def _extension(key: object) -> bool:
    """A top-level `x-…` key holds what anchors (`&slack`) name for the sections to alias
    (`*slack`), as Docker Compose's extension fields do: relay reads only the sections."""
    return isinstance(key, str) and key.startswith("x-")


# the sections whose entries are validated one by one (a problem in one hides none in another)
_ONE_BY_ONE = ("channels", "rules", "time_intervals", "inhibit_rules")


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
