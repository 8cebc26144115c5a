"""Templates: the hardened Jinja sandbox, relay's filters and the Renderer.

`<channel_type>/<name>.<part>.j2`: override directory first, shipped defaults second. Context:
run (Run.as_dict()), rule, channel {name, type}, notification {id, resolves: the id of the
notification a recovery resolves, else None}, dashboard_url (or None),
error (normalised {type, code, name, message, stack}: raw INTERNAL_ERROR code/message preferred;
the SDK's "trigger.dev internal error (CODE)" becomes the code plus a readable hint), summary (one
line), payload, output, metadata. A missing field renders empty (ChainableUndefined).

render() never raises: a failure gives the plain fallback (relay/fallback.py) for every part and
an `error` naming exception class, template and line, never a message (it can quote run data).
The context is built in relay/render_context.py, the sandbox lives in relay/sandbox.py (its
limits in relay/render_limits.py), the filters in relay/filters.py, the template files are read
in relay/template_files.py; rendered output is capped, and a render past its time budget (1 s:
nested loops, runaway recursion) is stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Template, meta, nodes
from jinja2.exceptions import TemplateError, TemplateNotFound, TemplateSyntaxError

from relay.fallback import fallback_json, fallback_part, fallback_text
from relay.render_context import CONTEXT_NAMES, RenderContext, template_variables
from relay.render_limits import (
    MAX_OUTPUT_CHARS,
    RENDER_BUDGET_S,
    LimitExceeded,
    RenderTimeout,
    time_budget,
)
from relay.run_fields import misread_run_fields
from relay.sandbox import environment, refused_names, sandbox
from relay.template_files import read_overrides, template_loader
from relay.template_names import TEMPLATE_SUFFIX, is_template_file, served_name

__all__ = [
    "TEMPLATE_SUFFIX",
    "RenderContext",
    "Rendered",
    "Renderer",
    "fallback_json",
    "fallback_text",
    "sandbox",
]


@dataclass(frozen=True)
class Rendered:
    parts: dict[str, str]
    fallback: bool
    error: str | None
    timed_out: bool = False  # the fallback because the render ran out of its time budget
    template: str = field(default="", compare=False)  # the name rendered, for log lines


class _Unrenderable(Exception):
    """Output that cannot be sent: args = (kind, detail)."""


def _template_name(channel_type: str, name: str, part: str) -> str:
    return f"{channel_type}/{name}.{part}{TEMPLATE_SUFFIX}"


def _file_of(exc: TemplateSyntaxError, template: str) -> str:
    """The template a syntax error is in, as its file is named (`webhook/run.json` or
    `webhook/run.jinja` serving as `webhook/run.json.j2`)."""
    name = exc.name or template
    if exc.filename is None or exc.filename.endswith(name):
        return name
    return "/".join(Path(exc.filename).parts[-2:])


def _describe(exc: Exception, template: str) -> str:
    """`<kind> in <template> line <n>` from the innermost template frame; never the message
    (it may quote run data), but relay's own limits' words, which name the limit hit."""
    if isinstance(exc, _Unrenderable):
        return f"{exc.args[0]} in {template}: {exc.args[1]}"
    kind = "TemplateNotFound" if isinstance(exc, TemplateNotFound) else type(exc).__name__
    if isinstance(exc, TemplateSyntaxError):
        return f"{kind} in {_file_of(exc, template)}:{exc.lineno}"
    where, tb = template, exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        # a template's frame, as Jinja rewrites it (a file without `.j2` serves too)
        if filename.endswith(TEMPLATE_SUFFIX) or "__jinja_exception__" in tb.tb_frame.f_globals:
            where = f"{'/'.join(Path(filename).parts[-2:])}:{tb.tb_lineno}"
        tb = tb.tb_next
    own_words = f": {exc}" if isinstance(exc, LimitExceeded) else ""
    return f"{kind} in {where}{own_words}"


def _dashboard_filter(link: Callable[[dict[str, Any]], str | None] | None) -> Any:
    """`run|dashboard_url`: the dashboard link of any run (a digest's `group.runs` too), as the
    `dashboard_url` variable is the notification's; None without one."""

    def dashboard_url(run: Any) -> str | None:
        return link(dict(run)) if link is not None and isinstance(run, Mapping) else None

    return dashboard_url


class Renderer:
    """Renders `<channel_type>/<name>.<part>.j2`, overrides first, then the shipped defaults.
    The overrides are the files of `override_dir` as they are when it is made, or `files` (a
    delivery worker's: those its parent read)."""

    def __init__(
        self,
        override_dir: Path | None = None,
        budget_s: float = RENDER_BUDGET_S,
        link: Callable[[dict[str, Any]], str | None] | None = None,
        files: Mapping[str, bytes] | None = None,
        checks: Mapping[str, Callable[[Any], str | None]] | None = None,
        *,
        sole_types: Collection[str] = (),
    ) -> None:
        # by channel type: what is wrong with a rendered `json` part (parsed) besides not
        # being JSON
        self._checks = dict(checks or {})
        self.overrides = read_overrides(override_dir) if files is None else dict(files)
        self._sole_types = sole_types  # channel types whose messages have one part
        self._loader = template_loader(override_dir, self.overrides, sole_types)
        self._env = environment(self._loader)
        self._env.filters["dashboard_url"] = _dashboard_filter(link)
        self.budget_s = budget_s  # per render(): past it, loops and calls raise RenderTimeout
        self._asts: dict[str, nodes.Template] = {}  # by name: one per template file at most
        self._compiled: dict[str, Template] = {}  # by name, as rendered (see _render_one)

    def has_template(self, channel_type: str, name: str, part: str) -> bool:
        return self._exists(_template_name(channel_type, name, part))

    def variant(self, channel_type: str, template: str, kind: str, part: str) -> str:
        """What a rule rendering `template` renders as a digest or a recovery (`kind`): its own
        `<template>_<kind>` where the channel type has one (`alertmanager_digest`), else `kind`."""
        own = f"{template}_{kind}"
        return own if template and self.has_template(channel_type, own, part) else kind

    def unknown_names(self, channel_type: str, name: str, part: str) -> list[tuple[str, int]]:
        """Top-level names the template reads that its context does not have (a misspelled
        variable renders empty, so `relay check` warns), each with the first line reading it;
        [] when it cannot be read."""
        try:
            ast = self._parse(_template_name(channel_type, name, part))
            known = self._names_set(ast, set())
            used = meta.find_undeclared_variables(ast) - known  # compiles: an unknown filter
        except (TemplateError, UnicodeDecodeError, OSError):
            return []
        unknown = used - CONTEXT_NAMES - set(self._env.globals)
        lines: dict[str, int] = {}
        for node in ast.find_all(nodes.Name):
            if node.name in unknown and node.ctx == "load":
                lines[node.name] = min(lines.get(node.name, node.lineno), node.lineno)
        return sorted(lines.items())

    def misread_fields(self, channel_type: str, name: str, part: str) -> list[tuple[str, int, str]]:
        """(field, first line, the field meant) for each misspelt run field the template reads
        (relay.run_fields: `run.taskIdentifer` renders empty); [] when it cannot be read."""
        try:
            ast = self._parse(_template_name(channel_type, name, part))
        except (TemplateError, UnicodeDecodeError, OSError):
            return []
        first: dict[str, tuple[str, int, str]] = {}
        for read, line, meant in misread_run_fields(ast):
            if read not in first or line < first[read][1]:
                first[read] = (read, line, meant)
        return sorted(first.values(), key=lambda found: found[1])

    def _parse(self, template: str) -> nodes.Template:
        """The template's syntax tree, parsed once: its source is fixed for this renderer's
        life (shipped files, the override directory's snapshot), and a check of every rule's
        parts walked the same ones again and again (666 parses of 64 templates)."""
        ast = self._asts.get(template)
        if ast is None:
            source, _, _ = self._loader.get_source(self._env, template)
            ast = self._asts[template] = self._env.parse(source)
        return ast

    def _names_set(self, ast: nodes.Template, seen: set[str]) -> set[str]:
        """Names a template and those it extends, includes or imports set or import: jinja's
        analysis sees each block alone and would flag a `{% set %}` made in another."""
        names = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
        names |= {n.target for n in ast.find_all(nodes.Import)}
        for imported in ast.find_all(nodes.FromImport):
            names |= {n if isinstance(n, str) else n[1] for n in imported.names}
        for ref in meta.find_referenced_templates(ast):
            if ref is not None and ref not in seen:
                seen.add(ref)
                names |= self._names_set(self._parse(ref), seen)
        return names

    def check(self, channel_type: str, name: str, part: str) -> str | None:
        """None when the template exists and it and those it extends, includes or imports (by
        a constant name) compile and none of them reaches itself again, or a template that does
        not exist, on lines that always run (it could only ever give the fallback); else what is
        wrong, with its line."""
        template = _template_name(channel_type, name, part)
        return self._check(template, set(), []) or self._always_fails(template, ())

    def missing_references(self, channel_type: str, name: str, part: str) -> list[str]:
        """Templates it (or one it reaches) extends, includes or imports that do not exist:
        a warning, as Jinja looks them up only when the line runs (it renders the fallback)."""
        missing: list[str] = []
        self._check(_template_name(channel_type, name, part), set(), missing)
        return missing

    def _check(self, template: str, seen: set[str], missing: list[str]) -> str | None:
        seen.add(template)
        try:
            self._env.get_template(template)
            ast = self._parse(template)
        except TemplateSyntaxError as exc:
            return f"{_file_of(exc, template)}:{exc.lineno}: {exc.message}"
        except TemplateNotFound as exc:
            return f"template {exc.name} not found"
        except (UnicodeDecodeError, OSError):
            return f"{template}: not a readable UTF-8 file"
        for line, refused in refused_names(self._env, ast)[:1]:
            return f"{template}:{line}: {refused}"
        for line, ref in _references(ast):
            why = None if ref in seen else self._check(ref, seen, missing)
            if why == f"template {ref} not found":
                missing.append(f"{template}:{line}: {why}")
            elif why is not None:
                return why
        return None

    def _always_fails(self, template: str, chain: tuple[str, ...]) -> str | None:
        """`<template> line <n>: ...` when a top-level extends, include or import leads back
        to a template on `chain` (Jinja recurses until RecursionError on every render) or to
        one that does not exist (TemplateNotFound on every render)."""
        try:
            ast = self._parse(template)
        except (TemplateError, UnicodeDecodeError, OSError):
            return None  # said by _check
        chain = (*chain, template)
        for line, ref in _references(ast, top_level=True):
            if ref in chain:
                loop = " → ".join((*chain[chain.index(ref) :], ref))
                return f"{template}:{line}: it reaches itself on every render ({loop})"
            if not self._exists(ref):
                return f"{template}:{line}: template {ref} not found (every render needs it)"
            if found := self._always_fails(ref, chain):
                return found
        return None

    def _exists(self, template: str) -> bool:
        try:
            self._loader.get_source(self._env, template)
        except TemplateNotFound:
            return False
        return True

    def reached_by_overrides(self) -> set[str]:
        """The templates the override files extend, include or import by a constant name."""
        reached: set[str] = set()
        for name in self.overrides:
            if is_template_file(name):
                with contextlib.suppress(TemplateError, UnicodeDecodeError, OSError):
                    refs = meta.find_referenced_templates(self._parse(name))
                    reached.update(ref for ref in refs if ref is not None)
        return reached

    def broken_overrides(self) -> list[str]:
        """What is wrong with each `*.j2` (`.jinja`, `.jinja2`) file of the override directory
        that does not compile, whether a rule renders it or not (Alertmanager refuses any broken
        template file too)."""
        found = []
        for name in sorted(n for n in self.overrides if is_template_file(n)):
            try:
                self._env.get_template(name)
                unknown = refused_names(self._env, self._parse(name))
            except TemplateSyntaxError as exc:
                found.append(f"{exc.name or name}:{exc.lineno}: {exc.message}")
            except (UnicodeDecodeError, OSError):
                found.append(f"{name}: not a readable UTF-8 file")
            else:
                found.extend(f"{name}:{line}: {why}" for line, why in unknown[:1])
        return found

    def render(
        self,
        channel_type: str,
        name: str,
        parts: tuple[str, ...],
        ctx: RenderContext,
        wall_s: float | None = None,
    ) -> Rendered:
        """Every part rendered, or the fallback for every part; never raises. `wall_s`
        replaces the renderer's budget (CPU time) by this much time on the wall clock: the
        event loop's own try, which is there to bound how long the loop is held."""
        template = _template_name(channel_type, name, parts[0] if parts else "")
        try:
            variables = template_variables(ctx)
            out: dict[str, str] = {}
            budget = (
                time_budget(self.budget_s) if wall_s is None else time_budget(wall_s, cpu=False)
            )
            with budget:
                for part in parts:
                    template = _template_name(channel_type, name, part)
                    out[part] = self._render_one(template, variables)
                    if part == "json":
                        _check_json(out[part], self._checks.get(channel_type))
            return Rendered(out, fallback=False, error=None, template=name)
        except Exception as exc:  # never drop a notification for a template bug
            shown = served_name(template, self.overrides, self._sole_types)  # as the file is named
            error = _describe(exc, shown)
            fallback = {part: fallback_part(part, ctx, name, error) for part in parts}
            return Rendered(fallback, True, error, isinstance(exc, RenderTimeout), name)

    def _render_one(self, template: str, variables: dict[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        compiled = self._compiled.get(template)
        if compiled is None:
            compiled = self._compiled[template] = self._env.get_template(template)
        for chunk in compiled.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _Unrenderable("OutputTooLarge", f"more than {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)


_REFERENCES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _references(ast: nodes.Template, top_level: bool = False) -> list[tuple[int, str]]:
    """(line, name) of each template `ast` extends, includes or imports by a constant name (not
    a name computed at render time, a list to choose from, or an `include ... ignore missing`);
    `top_level`: only those on the template's own lines, which every render runs."""
    found = []
    refs = [n for n in ast.body if isinstance(n, _REFERENCES)] if top_level else None
    for node in refs if refs is not None else ast.find_all(_REFERENCES):
        ref = getattr(node, "template", None)
        if isinstance(node, nodes.Include) and node.ignore_missing:
            continue
        if isinstance(ref, nodes.Const) and isinstance(ref.value, str):
            found.append((node.lineno, ref.value))
    return found


def _check_json(text: str, check: Callable[[Any], str | None] | None) -> None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Unrenderable("InvalidJSON", f"line {exc.lineno} column {exc.colno}") from None
    problem = None if check is None else check(value)
    if problem is not None:
        raise _Unrenderable("InvalidMessage", problem)
