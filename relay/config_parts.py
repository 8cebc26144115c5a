"""Validating a configuration part by part: each top-level section, channel, rule, time
interval and inhibit rule alone, an invalid rule again without its invalid keys (salvaged), and
every pydantic error worded for operators at its file:line. relay.config_load puts the parts
together.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from relay.config import ChannelSettings, Config
from relay.config_rules import RuleConfig
from relay.errors import Problem, did_you_mean, setting_message
from relay.sizes import format_size, is_size
from relay.windows import InhibitRule, NamedTimeInterval
from relay.yamlconf import Located, Path_

ChannelModels = Mapping[str, type[ChannelSettings]]


def is_known(path: Path_, unknown: frozenset[Path_] | set[Path_]) -> bool:
    return not any(path[:n] in unknown for n in range(len(path) + 1))


class Parts:
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
    """One Problem per pydantic error, worded for operators, quoting no input value but a
    number out of bounds."""
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *("continue" if p == "continue_" else p for p in loc))
        kind = err["type"]
        if path in located.reported or (kind == "missing" and path[:-1] in located.merging):
            continue  # already reported: an unset environment variable, an unreadable value
        if _holds_reported(path, located):
            continue  # judged the empty text an unset variable left: `set secret` beside it
        if kind == "extra_forbidden":
            message = "unknown key" + _meant(exc.title, loc)
        else:
            message = _IN_YAML_WORDS.get(kind) or setting_message(err, _shown(exc.title, loc))
        out.append(located.problem(path, message))
    return out


_MAPPING = "expected a mapping of keys and values"
# pydantic's words for a value of the wrong type, in YAML's: not "a valid dictionary", "or
# instance of ServerConfig" (numbers and booleans: relay.errors.setting_message)
_IN_YAML_WORDS = {
    "missing": "required key is missing",
    "model_type": _MAPPING,
    "dict_type": _MAPPING,
    "list_type": "expected a list: [a, b], or one `- item` a line",
    "path_type": "expected a path",
}


def _meant(model_name: str, loc: tuple[str | int, ...]) -> str:
    """ " (did you mean K?)" with the key of the mapping at `loc[:-1]` nearest to the unknown
    `loc[-1]`, in the model named `model_name` (a ValidationError's title); with none near,
    the keys that mapping takes (`match.cost`, `smtp.user`: no spelling is near, and the
    operator had to leave for the reference to find `cost_cents`, `username`)."""
    keys = dict.fromkeys(
        field.alias or name
        for model in _models_at(model_name, loc[:-1])
        for name, field in model.model_fields.items()
    )
    if not loc:
        return ""
    word = str(loc[-1])
    near = did_you_mean(word, keys, quoted=True)
    meant = _ALERTMANAGER_WORDS.get(word)
    if meant in keys and not near:
        return f" (Alertmanager's {word!r} is relay's {meant!r})"
    return near or (f"; known here: {', '.join(keys)}" if keys else "")


# Alertmanager's keys an operator moving over writes by habit, and relay's key for each where
# spelling finds nothing near (`receiver`: no hint, where `notify` was meant)
_ALERTMANAGER_WORDS = {
    "receiver": "notify",
    "receivers": "channels",
    "route": "rules",
    "routes": "rules",
    "send_resolved": "update_on_recovery",
}


def _shown(model_name: str, loc: tuple[str | int, ...]) -> Callable[[Any], str] | None:
    """How the bounds of the field at `loc` are written: a size in sizes (1KiB), else None
    (as numbers)."""
    sizes = (
        is_size(field.metadata)
        for model in _models_at(model_name, loc[:-1])
        for name, field in model.model_fields.items()
        if loc and loc[-1] in (name, field.alias)
    )
    return format_size if any(sizes) else None


def _models_at(model_name: str, loc: tuple[str | int, ...]) -> list[type[BaseModel]]:
    """The models the mapping at `loc` may be, in the model named `model_name`."""
    kinds: list[Any] = [_model_named(model_name)]
    for part in loc:
        kinds = [inner for kind in kinds for inner in _inside(kind, part)]
    alternatives = (t for kind in kinds for t in _alternatives(kind))
    return [t for t in alternatives if isinstance(t, type) and issubclass(t, BaseModel)]


def _inside(annotation: Any, part: str | int) -> list[Any]:
    """The types the value at key or index `part` of a value typed `annotation` may have."""
    out: list[Any] = []
    for t in _alternatives(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
            fields = {f.alias or n: f for n, f in t.model_fields.items()}
            if part in fields:
                out.append(fields[part].annotation)
        elif typing.get_origin(t) in (dict, list, tuple, Mapping, Sequence):
            out.append(typing.get_args(t)[-1] if typing.get_args(t) else Any)
    return out


def _alternatives(annotation: Any) -> list[Any]:
    """`annotation` without Annotated, and each member of a union (`X | None`)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [t for arg in typing.get_args(annotation) for t in _alternatives(arg)]
    return [annotation]


def _model_named(name: str) -> type[BaseModel] | None:
    """relay's config model of that class name (a ValidationError names the model it checked)."""
    found, seen = None, list(BaseModel.__subclasses__())
    while seen and found is None:
        model = seen.pop()
        if model.__name__ == name and model.__module__.startswith("relay."):
            found = model
        seen.extend(model.__subclasses__())
    return found


def _holds_reported(path: Path_, located: Located) -> bool:
    """A problem about a whole mapping or list (a section's own check, `secret` or `secrets`
    required) when a value inside it is already reported: an unset variable reads as empty
    text there, so the section's check is about a value the operator did write."""
    inside = (r for r in located.reported if len(r) > len(path))
    return bool(path) and any(r[: len(path)] == path for r in inside)
