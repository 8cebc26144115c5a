"""A run from `FIELD=VALUE` words: `relay test task=billing/charge tag=env:prod cost_cents=600`
asks which rules a FAILED run of that task with that tag and cost would match, without a JSON
file, as amtool's `config routes test severity=critical` asks where an alert would go.

The fields are the names rules match on (README "Rules"): task, status, tag (again for
several), cost_cents, base_cost_cents, duration_ms, is_test, metadata.PATH, and run_id. A
value is read as JSON where it is some (`600`, `true`, `"600"`), else as the text it is; the
run is FAILED, untagged, not a test, of no cost, unless the words say otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.errors import InputError, did_you_mean
from relay.statuses import FAILURE_STATUSES, KNOWN_STATUSES
from relay.template_probe import SAMPLE_RUN

# the run the words change: a failure, as most rules are about; no test, no tag, no cost
BASE_RUN: dict[str, Any] = {
    **SAMPLE_RUN,
    "taskIdentifier": "relay-test",
    **dict.fromkeys(("durationMs", "costInCents", "baseCostInCents"), 0),
    "isTest": False,
    "error": {"name": "Error", "message": "A failure described by relay test's words"},
}
FIELDS = {  # word → the run's field
    "task": "taskIdentifier",
    "status": "status",
    "tag": "tags",
    "cost_cents": "costInCents",
    "base_cost_cents": "baseCostInCents",
    "duration_ms": "durationMs",
    "is_test": "isTest",
    "run_id": "id",
}
METADATA = "metadata."


def are_words(args: Sequence[str]) -> bool:
    """Whether `relay test`'s arguments are words, not one event file (or `-`)."""
    if len(args) != 1:
        return True
    return "=" in args[0] and args[0] != "-" and not Path(args[0]).exists()


def run_from_words(words: Sequence[str]) -> dict[str, Any]:
    """The run (SDK shape) the words describe; InputError naming a word that is not one."""
    run = {**BASE_RUN, "tags": [], "metadata": {}}
    for word in words:
        name, equals, text = word.partition("=")
        if not equals or not name:
            raise InputError(word, "expected FIELD=VALUE (task=billing/charge), or one file")
        if name.startswith(METADATA) and len(name) > len(METADATA):
            _set_path(run["metadata"], name[len(METADATA) :].split("."), _value(text))
        elif name == "tag":
            run["tags"].append(text)
        elif name in FIELDS:
            run[FIELDS[name]] = _typed(name, text)
        else:
            hint = did_you_mean(name, [*FIELDS, "metadata.PATH"], quoted=True)
            raise InputError(name, f"not a field relay test takes{hint}")
    return run


def _typed(name: str, text: str) -> Any:
    """The value of field `name`: a text, a number or a flag, as its rules compare it."""
    if name == "status" and text not in KNOWN_STATUSES:
        hint = did_you_mean(text, KNOWN_STATUSES, quoted=True)
        if text.lower() == "failure":  # a rule's word for them all, no status of a run
            hint = f" (a rule's `failure` is any of {', '.join(sorted(FAILURE_STATUSES))})"
        raise InputError(name, f"{text!r} is no status of a run{hint}")
    if name in ("task", "status", "run_id"):
        return text
    value = _value(text)
    if name == "is_test" and not isinstance(value, bool):
        raise InputError(name, f"expected true or false, got {text!r}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name != "is_test" and not number:
        raise InputError(name, f"expected a number, got {text!r}")
    return value


def _value(text: str) -> Any:
    """`text` as JSON where it is some (a number, true, a quoted text), else as it is."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _set_path(into: dict[str, Any], keys: list[str], value: Any) -> None:
    """`into`'s nested value at `keys` set to `value` (metadata.customer.tier=enterprise)."""
    for key in keys[:-1]:
        nested = into.setdefault(key, {})
        if not isinstance(nested, dict):
            raise InputError(METADATA + ".".join(keys), "a value and a path below it both given")
        into = nested
    into[keys[-1]] = value
