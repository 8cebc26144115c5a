"""Files of `templates.dir` relay never renders: a template is looked up as
`<channel type>/<template>.<part>.j2` or one of the other names relay.template_names lists
(`slack/run.json`, `slack/run.j2`, `email/run.text.jinja`), so `slak/run.json.j2`,
`email/run.subj.j2`, `slack/team.json` beside `slack/team.json.j2` or `team.json.j2` at the top
is never used, and the message goes out as the shipped template (or the rule's template is
reported missing) with no word of the file the operator wrote. `relay check` warns of each,
unless a template extends, includes or imports it by name. Partials (a name or folder starting
with `_`, as the shipped `slack/_macros.j2` and `_shared/events.j2`) are left alone: they are
meant to be imported; so is a file with no template suffix that serves nothing (a README).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from relay.errors import did_you_mean
from relay.template_names import (
    TEMPLATE_SUFFIX,
    canonical,
    is_template_file,
    served_name,
    strip_suffix,
)


def unrendered_files(
    files: Collection[str], reached: Collection[str], parts: Mapping[str, tuple[str, ...]]
) -> list[str]:
    """`<file>: <why>` for each of `files` (names in templates.dir) no lookup finds and no
    template in `reached` names; `parts`: each channel type's parts."""
    found = []
    for name in sorted(files):
        why = None if name in reached else _why_unrendered(name, files, parts)
        if why is not None:
            found.append(f"{name} is never rendered: {why}")
    return found


def _why_unrendered(
    name: str, files: Collection[str], parts: Mapping[str, tuple[str, ...]]
) -> str | None:
    """Why no lookup finds `name`, None if one does."""
    folder = name.partition("/")[0]
    if folder.startswith("_") or name.rpartition("/")[2].startswith("_"):
        return None  # a partial, for templates to import
    target = canonical(name, parts)
    if target is None:
        return _misplaced(name, parts) if is_template_file(name) else None
    sole = [folder] if len(parts[folder]) == 1 else []
    used = served_name(target, files, sole)
    return None if used == name else f"{used} beside it is used instead"


def _misplaced(name: str, parts: Mapping[str, tuple[str, ...]]) -> str | None:
    """Why a template file (one with a template suffix) is where no lookup finds it."""
    folder, _, file = name.partition("/")
    if not file:
        return f"not in a channel type's folder ({', '.join(sorted(parts))})"
    if folder not in parts:
        return f"`{folder}/` is no channel type{did_you_mean(folder, parts)}"
    if "/" in file:
        return f"a template is `{folder}/<template>.<part>{TEMPLATE_SUFFIX}`, not in a subfolder"
    return _wrong_part(folder, _part(strip_suffix(file) or ""), parts[folder])


def _wrong_part(folder: str, part: str, known: tuple[str, ...]) -> str | None:
    """Why `part` is not one a `folder` message renders, or None when it is."""
    listed = ", ".join(known)
    if not part:
        return (
            f"no part in its name (`{folder}/<template>.<part>{TEMPLATE_SUFFIX}`; parts: {listed})"
        )
    if part not in known:
        hint = did_you_mean(part, known)
        return f"`.{part}` is no part of `{folder}` messages (parts: {listed}){hint}"
    return None


def _part(stem: str) -> str:
    """The part of `<template>.<part>`: what follows the last dot ("" without one)."""
    head, dot, part = stem.rpartition(".")
    return part if dot and head else ""
