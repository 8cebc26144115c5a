"""The names a file of templates.dir may have to serve a part. relay looks a part up as
`<type>/<template>.<part>.j2`; SPEC names an override `templates/<channel type>/run_failed.*`,
so where templates.dir has no such file, the first of these there serves: that name without
`.j2`, or with Jinja's other suffixes `.jinja` / `.jinja2`; `text` for the part `txt`; and,
for a channel type whose messages have one part (all but email's subject + txt + html), the
name with no part at all (`slack/run_failed.j2`). A file with no suffix and no part
(`console/README`) serves nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

TEMPLATE_SUFFIX = ".j2"
SUFFIXES = (TEMPLATE_SUFFIX, "", ".jinja", ".jinja2")  # in the order they are looked for
PART_NAMES = {"txt": ("txt", "text")}  # a part's names, relay's own first


def served_name(template: str, files: Collection[str], sole_types: Collection[str] = ()) -> str:
    """The file of `files` that serves `template` (`<type>/<name>.<part>.j2`, or any name a
    template includes), else `template` itself; `sole_types`: the channel types with one part."""
    sole = template.partition("/")[0] in sole_types
    return next((name for name in candidates(template, sole) if name in files), template)


def candidates(template: str, sole: bool) -> list[str]:
    """The names that may serve `template`, the first choice first; `sole`: its part is the
    only one of its channel type."""
    stem = template.removesuffix(TEMPLATE_SUFFIX)
    head, dot, part = stem.rpartition(".")
    if not (dot and head and template.endswith(TEMPLATE_SUFFIX)):
        return [template, stem] if stem != template else [template]
    stems = [f"{head}.{name}" for name in PART_NAMES.get(part, (part,))]
    names = [s + suffix for s in stems for suffix in SUFFIXES]
    return names + [head + suffix for suffix in SUFFIXES if suffix and sole]


def canonical(name: str, parts: Mapping[str, tuple[str, ...]]) -> str | None:
    """The `<type>/<template>.<part>.j2` file `name` of templates.dir would serve, or None when
    its folder is no channel type or its name no part of that type's messages."""
    folder, _, file = name.partition("/")
    stem = strip_suffix(file)
    known = parts.get(folder, ())
    if stem is None or not file or "/" in file or not known:
        return None
    head, dot, part = stem.rpartition(".")
    for own in known:
        if dot and head and part in PART_NAMES.get(own, (own,)):
            return f"{folder}/{head}.{own}{TEMPLATE_SUFFIX}"
    if len(known) == 1 and not dot and name.endswith((*SUFFIXES[2:], TEMPLATE_SUFFIX)):
        return f"{folder}/{stem}.{known[0]}{TEMPLATE_SUFFIX}"
    return None


def strip_suffix(file: str) -> str | None:
    """`file` without its template suffix (`.j2`, `.jinja`, `.jinja2`; a name with none is
    itself), None for a name that is only a suffix."""
    for suffix in SUFFIXES:
        if suffix and file.endswith(suffix):
            return file.removesuffix(suffix) or None
    return file


def is_template_file(name: str) -> bool:
    """A file with a template suffix: a name relay reports when it does not compile."""
    return name.endswith(tuple(s for s in SUFFIXES if s))
