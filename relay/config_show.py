"""The config as relay runs it, for people (amtool's `config show` and `config routes`): each
key's default filled in, `${VAR}`s substituted, durations written back (`30s`), secrets hidden.
A key whose default is another key's (a channel's `timeout`: `defaults.timeout`) is left out."""

from __future__ import annotations

from enum import Enum
from pathlib import PurePath
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr

from relay.config import Config
from relay.config_base import field_metadata
from relay.config_rules import RuleConfig
from relay.durations import format_duration, is_duration
from relay.model import Timing

HIDDEN = "<secret>"  # as Alertmanager's config show writes a secret


def shown(config: Config) -> dict[str, Any]:
    """`config` as plain data in the YAML's own names: what `relay config show` prints. Unset
    keys (None) are left out, as they are when not written."""
    out = _shown(config)
    assert isinstance(out, dict)
    return out


def _shown(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _model(value)
    if isinstance(value, SecretStr):
        return HIDDEN
    if isinstance(value, dict):
        return {str(k): _shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_shown(v) for v in value]
        return items if isinstance(value, (list, tuple)) else sorted(items, key=str)
    if isinstance(value, PurePath):
        return str(value)
    return value.value if isinstance(value, Enum) else value


def _model(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None or info.exclude:
            continue
        key = info.serialization_alias or info.alias or name
        duration = isinstance(value, float) and is_duration(field_metadata(info))
        out[key] = format_duration(value) if duration else _shown(value)
    return out


def routes(config: Config) -> list[dict[str, Any]]:
    """The rules in the order they are tried, each as `relay config routes` lists it."""
    return [_route(i, rule) for i, rule in enumerate(config.rules, 1)]


def _route(number: int, rule: RuleConfig) -> dict[str, Any]:
    match = _model(rule.match)
    events = match.pop("event", [])
    route: dict[str, Any] = {"number": number, "name": rule.name, "event": events}
    route["conditions"] = [*_conditions(match), *([f"when {rule.when}"] if rule.when else [])]
    route["notify"] = list(rule.notify)
    route["continue"] = rule.continue_
    if rule.group_by is not None:
        wait = Timing().group_wait_s if rule.group_wait is None else rule.group_wait
        route["group_by"] = list(rule.group_by)
        route["group_wait"] = format_duration(wait)
    return route


_OPERATORS = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}


def _conditions(match: dict[str, Any]) -> list[str]:
    """`match`'s conditions in words: `status in FAILED, CRASHED`, `cost_cents > 500`."""
    out = []
    for key, value in match.items():
        if isinstance(value, dict) and key == "tags":
            out += [f"tags {how} {', '.join(tags)}" for how, tags in value.items()]
        elif isinstance(value, dict) and key == "metadata":
            out += [f"metadata.{path} = {_json(v)}" for path, v in value.items()]
        elif isinstance(value, dict):
            out += [f"{key} {_OPERATORS.get(op, op)} {v:g}" for op, v in value.items()]
        elif isinstance(value, list):
            out.append(f"{key} in {', '.join(map(str, value))}")
        else:
            out.append(f"{key} = {_json(value) if isinstance(value, bool) else value}")
    return out


def _json(value: Any) -> str:
    """A value as the YAML's JSON-like scalars read: `true`, `"gold"`, `50` (not Python's)."""
    return orjson.dumps(value).decode()
