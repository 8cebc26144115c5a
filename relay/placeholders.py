"""A config whose `${VAR}`s are unset, read for a command that sends nothing (`relay test`):
each unset variable is given a placeholder that its fields take, and named, so that a dry run
on a laptop needs no production secret. `relay serve`, `relay send-test` and `relay check`
refuse the file as before: the file is not fit to serve.

A placeholder is tried from PLACEHOLDERS in turn, per variable, until no problem is left where
the variable is written (a URL field takes a URL, PagerDuty's routing key 32 characters, a
webhook's secret a whsec_ key); where none fits, or the file has other problems, the file's
problems are raised as they were, unset variables among them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from relay.errors import ConfigError
from relay.yamlconf import UNSET_VARIABLE

T = TypeVar("T")

PLACEHOLDERS = (
    "https://discord.com/api/webhooks/0/unset",  # a URL (a Discord webhook's), a token
    "whsec_cmVsYXkgdGVzdCBwbGFjZWhvbGRlcg==",  # a Standard Webhooks secret
    "unset0unset0unset0unset0unset012",  # a 32-character key (PagerDuty's routing key)
    "unset@example.invalid",  # an address
    "1",  # a number, a port
)
_UNSET = re.compile(rf"{UNSET_VARIABLE} ([A-Za-z_][A-Za-z0-9_]*) is not set")


def with_placeholders(read: Callable[[Mapping[str, str]], T]) -> tuple[T, list[str]]:
    """`read(env)` of the environment, or, where it refuses only unset variables, of the
    environment with a placeholder for each; and the names of those (sorted)."""
    try:
        return read(os.environ), []
    except ConfigError as exc:
        refused = exc
    at: dict[str, set[str]] = {}  # variable → the paths that read it
    for problem in refused.problems:
        if found := _UNSET.fullmatch(problem.message):
            at.setdefault(found.group(1), set()).add(problem.path)
    if not at or any(not _UNSET.fullmatch(p.message) for p in refused.problems):
        raise refused
    tried = dict.fromkeys(at, 0)
    while True:
        env = {**os.environ, **{name: PLACEHOLDERS[i] for name, i in tried.items()}}
        try:
            return read(env), sorted(at)
        except ConfigError as exc:
            wrong = {p.path for p in exc.problems}
        unfit = [
            name for name, paths in at.items() if any(_near(p, w) for p in paths for w in wrong)
        ]
        if not unfit or any(tried[name] + 1 == len(PLACEHOLDERS) for name in unfit):
            raise refused from None
        tried.update({name: tried[name] + 1 for name in unfit})


def _near(path: str, other: str) -> bool:
    """Whether a problem at `other` may be of the value at `path`: the same, or one inside the
    other (`channels.e.to` of `channels.e.to[0]`, a mapping's own check of its keys)."""
    short, long = sorted((path, other), key=len)
    return long == short or long.startswith((f"{short}.", f"{short}["))
