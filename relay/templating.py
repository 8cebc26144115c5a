"""Templates: the hardened Jinja sandbox, relay's filters and the Renderer.

`<channel_type>/<name>.<part>.j2`: override directory first, shipped defaults second. Context:
run (Run.as_dict()), rule, channel {name, type}, notification {id, resolves: the id of the
notification a recovery resolves, else None}, dashboard_url (or None),
error (normalised {type, code, name, message, stack}: raw INTERNAL_ERROR code/message preferred;
the SDK's "trigger.dev internal error (CODE)" becomes the code plus a readable hint), summary (one
line), payload, output, metadata. A missing field renders empty (ChainableUndefined).

render() never raises: a failure gives the plain fallback for every part and an `error` naming
exception class, template and line, never a message (it can quote run data). The sandbox
itself lives in relay/sandbox.py, the filters in relay/filters.py; rendered output is capped,
and a render past its time budget (1 s: nested loops, runaway recursion) is stopped.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jinja2 import ChoiceLoader, FileSystemLoader, meta, nodes
from jinja2.exceptions import TemplateError, TemplateNotFound, TemplateSyntaxError

import relay
from relay.filters import as_text, json_bytes, mrkdwn, status_emoji, tojson, truncate_chars
from relay.render_limits import MAX_OUTPUT_CHARS, RENDER_BUDGET_S, RenderTimeout, time_budget
from relay.sandbox import environment, sandbox, unknown_filters

__all__ = ["RenderContext", "Rendered", "Renderer", "fallback_json", "fallback_text", "sandbox"]

TEMPLATE_SUFFIX = ".j2"
_SDK_INTERNAL = re.compile(r"trigger\.dev internal error \(([A-Z0-9_]+)\)")
# The TaskRunError union (packages/core schemas/common.ts): its empty fields are empty, not a
# shape to show as JSON.
_ERROR_KINDS = frozenset({"BUILT_IN_ERROR", "CUSTOM_ERROR", "STRING_ERROR", "INTERNAL_ERROR"})
_CODE_HINTS = {
    "MAX_DURATION_EXCEEDED": "The run exceeded its maximum compute time (maxDuration).",
    "TASK_PROCESS_OOM_KILLED": "The task process ran out of memory. Try a larger machine.",
    "TASK_PROCESS_MAYBE_OOM_KILLED": (
        "The task process was killed, most likely out of memory. Try a larger machine."
    ),
    "TASK_PROCESS_SIGTERM": "The task process was terminated (SIGTERM).",
    "TASK_PROCESS_SIGSEGV": "The task process crashed with a segmentation fault (SIGSEGV).",
    "TASK_PROCESS_EXITED_WITH_NON_ZERO_CODE": "The task process exited with a non-zero code.",
    "TASK_RUN_HEARTBEAT_TIMEOUT": "No heartbeat was received from the worker in time.",
    "TASK_RUN_STALLED_EXECUTING": "The run stalled while executing.",
    "TASK_RUN_CRASHED": "The run crashed.",
    "DISK_SPACE_EXCEEDED": "The run ran out of disk space.",
    "POD_EVICTED": "The machine running the task was evicted.",
    # the codes Trigger.dev explains itself (packages/core/src/v3/errors.ts prettyInternalErrors)
    "OUTDATED_SDK_VERSION": "The task uses an outdated version of the SDK. Upgrade it.",
    "TASK_DID_CONCURRENT_WAIT": (
        "Parallel waits are not supported (e.g. Promise.all() around wait functions)."
    ),
    "RECURSIVE_WAIT_DEADLOCK": (
        "The run was triggered recursively and its task has no concurrency left: "
        "it will never execute."
    ),
}


def shipped_templates_dir() -> Path:
    """The default templates: inside the installed wheel, else at the repository root."""
    packaged = Path(relay.__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(relay.__file__).parent.parent / "templates"


@dataclass(frozen=True)
class RenderContext:
    run: dict[str, Any]
    rule: str
    channel: str
    channel_type: str
    notification_id: str
    dashboard_url: str | None
    group: dict[str, Any] | None = None  # digests: see relay.grouping.digest_context
    resolves: str | None = None  # recoveries: the id of the notification they resolve


@dataclass(frozen=True)
class Rendered:
    parts: dict[str, str]
    fallback: bool
    error: str | None
    timed_out: bool = False  # the fallback because the render ran out of its time budget


def _error_view(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, str):
        raw = {"message": raw}
    if not isinstance(raw, Mapping):
        return None
    kind, code = _field_text(raw.get("type")), _field_text(raw.get("code"))
    message = _field_text(raw.get("message"))
    if message is None and kind in ("STRING_ERROR", "CUSTOM_ERROR"):
        message = _field_text(raw.get("raw"))
    wrapped = _SDK_INTERNAL.fullmatch(message.strip()) if code is None and message else None
    if wrapped:  # the SDK keeps only "trigger.dev internal error (CODE)"
        code, kind = wrapped.group(1), kind or "INTERNAL_ERROR"
        message = _CODE_HINTS.get(code, message)
    elif code is not None and message is None:
        message = _CODE_HINTS.get(code)
    view = {
        "type": kind,
        "code": code,
        "name": _field_text(raw.get("name")),
        "message": message,
        "stack": _field_text(raw.get("stackTrace") or raw.get("stack")),
    }
    readable = message or code or view["name"]
    if not readable and kind not in _ERROR_KINDS and set(raw) - {"type", "stackTrace", "stack"}:
        view["message"] = _raw_text(raw)  # an error of a shape relay does not know
    # a type alone (`throw ""`, `throw undefined`: a STRING_ or CUSTOM_ERROR without its raw
    # text) says nothing a reader can use: no error line rather than an empty one
    return view if any(v for k, v in view.items() if k != "type") else None


def _field_text(value: Any) -> str | None:
    """One field of an error as text; a value that is no string (an object or list a hook put
    in `message`, a flag) is its JSON, never Python's repr; empty is None."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return as_text(value)
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _raw_text(raw: Mapping[str, Any]) -> str:
    """An unknown error as Trigger.dev wraps one it cannot parse (CUSTOM_ERROR, raw JSON)."""
    text = orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return truncate_chars(text, 2000)


def _error_line(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    head = error.get("code") or error.get("name")
    message = (as_text(error.get("message")).strip().splitlines() or [""])[0]
    return f"{head}: {message}" if head and message else head or message


def _summary(run: Mapping[str, Any], error: Mapping[str, Any] | None) -> str:
    status = as_text(run.get("status")) or "UNKNOWN"
    line = " · ".join(
        filter(None, (f"{status_emoji(status)} {status}", _what(run), as_text(run.get("id"))))
    )
    detail = _error_line(error)
    return truncate_chars(f"{line}: {detail}" if detail else line, 300)


def _what(run: Mapping[str, Any]) -> str:
    """What the event is about: the task of a run (or error group), the deployed version."""
    if not str(run.get("event") or "").startswith("deployment"):
        return as_text(run.get("taskIdentifier")) or "unknown task"
    deployment = run.get("deployment")
    version = deployment.get("version") if isinstance(deployment, Mapping) else None
    return f"deployment {as_text(version)}" if version else "deployment"


CONTEXT_NAMES = frozenset(
    (
        "run",
        "rule",
        "channel",
        "notification",
        "dashboard_url",
        "error",
        "summary",
        "payload",
        "output",
        "metadata",
        "group",
    )
)


def _variables(ctx: RenderContext) -> dict[str, Any]:
    run = ctx.run
    error = _error_view(run.get("error"))
    return {
        "run": run,
        "rule": ctx.rule,
        "channel": {"name": ctx.channel, "type": ctx.channel_type},
        "notification": {"id": ctx.notification_id, "resolves": ctx.resolves},
        "dashboard_url": ctx.dashboard_url,
        "error": error,
        "summary": _summary(run, error),
        "payload": run.get("payload"),
        "output": run.get("output"),
        "metadata": run.get("metadata"),
        "group": ctx.group,
    }


def fallback_text(ctx: RenderContext) -> str:
    """Plain one-paragraph message: status, task, run id, error, rule, dashboard link."""
    try:
        run = ctx.run if isinstance(ctx.run, Mapping) else {}
        text = f"{_summary(run, _error_view(run.get('error')))} (rule: {ctx.rule})"
        if ctx.group is not None:
            text = f"{_group_line(ctx.group, run.get('event'))} (rule: {ctx.rule}); latest: {text}"
    except Exception:  # the last resort must not fail
        text = f"relay notification {ctx.notification_id} (rule: {ctx.rule})"
    return f"{text} {ctx.dashboard_url}" if ctx.dashboard_url else text


def _group_line(group: Mapping[str, Any], event: Any) -> str:
    statuses = ", ".join(f"{n} {s}" for s, n in dict(group.get("by_status") or {}).items())
    labels = ", ".join(f"{k}={v}" for k, v in dict(group.get("labels") or {}).items())
    noun = _DIGEST_NOUNS.get(event, "runs") if isinstance(event, str) else "runs"
    return (
        f"{group.get('count', 0)} {noun}"
        + (f" [{labels}]" if labels else "")
        + (f": {statuses}" if statuses else "")
    )


# Channel types whose `text` is markup: the fallback escapes run data there as templates do, so a
# broken template cannot let a task name or error message ping @channel or forge a link.
_TEXT_ESCAPES = {"slack": mrkdwn}


def fallback_json(ctx: RenderContext) -> str:
    """{"id", "type", "rule", "channel", "text", "run", "dashboardUrl"} (+ "group" in a digest)
    as a JSON string of at most MAX_OUTPUT_CHARS; `text` is escaped for channel types that read
    it as markup (Slack mrkdwn). Fields of the run too large for that (or not JSON) are replaced by
    "[omitted: N bytes]"; if it is still too large, `run` is null and `group` has no runs."""
    escape = _TEXT_ESCAPES.get(ctx.channel_type, as_text)
    body: dict[str, Any] = {
        "id": ctx.notification_id,
        "type": _body_type(ctx),
        "rule": ctx.rule,
        "channel": ctx.channel,
        "text": escape(fallback_text(ctx)),
        "run": ctx.run,
        "dashboardUrl": ctx.dashboard_url,
    }
    if ctx.group is not None:
        body["group"] = ctx.group
    for shrink in (_slim_runs, _no_runs):
        try:
            data = json_bytes(body)
        except (TypeError, ValueError):  # e.g. an integer beyond 64 bits somewhere in the run
            data = None
        if data is not None and len(data) <= MAX_OUTPUT_CHARS:  # bytes >= characters
            return data.decode()
        body = shrink(body)
    return tojson(body)


_EVENT_TYPES = frozenset(("deployment.failed", "deployment.success", "error"))
# a digest of events: what its messages count, and the `type` of its webhook body
_DIGEST_NOUNS = {
    "error": "errors",
    "deployment.failed": "deployments",
    "deployment.success": "deployments",
}
_DIGEST_TYPES = {
    "error": "error.digest",
    "deployment.failed": "deployment.digest",
    "deployment.success": "deployment.digest",
}


def _body_type(ctx: RenderContext) -> str:
    """The `type` the shipped webhook template of this message would give (a receiver routes on
    it, so the fallback keeps it): run.digest (error.digest, deployment.digest for a digest of
    those events), run.recovered, an event's name, or run.alert."""
    event = ctx.run.get("event")
    if ctx.group is not None:
        return _DIGEST_TYPES.get(event, "run.digest") if isinstance(event, str) else "run.digest"
    if ctx.resolves is not None:
        return "run.recovered"
    return event if isinstance(event, str) and event in _EVENT_TYPES else "run.alert"


_FIELD_MAX_CHARS = 10_000  # a run field larger than this is left out of a fallback too large


def _slim_value(value: Any) -> Any:
    try:
        size = len(json_bytes(value))
    except (TypeError, ValueError):
        return "[omitted: not JSON]"
    return value if size <= _FIELD_MAX_CHARS else f"[omitted: {size} bytes]"


def _slim_run(run: Any) -> Any:
    return {k: _slim_value(v) for k, v in run.items()} if isinstance(run, Mapping) else None


def _slim_runs(body: dict[str, Any]) -> dict[str, Any]:
    """The body with the large fields of its run (and of a digest's runs) omitted."""
    slim = {**body, "run": _slim_run(body["run"])}
    group = body.get("group")
    if isinstance(group, Mapping) and isinstance(group.get("runs"), list):
        slim["group"] = {**group, "runs": [_slim_run(r) for r in group["runs"]]}
    return slim


def _no_runs(body: dict[str, Any]) -> dict[str, Any]:
    """The body without run data: no run, a digest group without its runs."""
    group = body.get("group")
    if isinstance(group, Mapping):
        group = {k: _slim_value(v) for k, v in group.items() if k != "runs"}
    return {**body, "run": None, **({"group": group} if "group" in body else {})}


def _fallback_part(part: str, ctx: RenderContext) -> str:
    if part == "json":
        return fallback_json(ctx)
    if part == "html":
        return f"<pre>{html.escape(fallback_text(ctx))}</pre>"
    return fallback_text(ctx)


class _Unrenderable(Exception):
    """Output that cannot be sent: args = (kind, detail)."""


def _template_name(channel_type: str, name: str, part: str) -> str:
    return f"{channel_type}/{name}.{part}{TEMPLATE_SUFFIX}"


def _describe(exc: Exception, template: str) -> str:
    """`<kind> in <template> line <n>` from the innermost template frame; never the message."""
    if isinstance(exc, _Unrenderable):
        return f"{exc.args[0]} in {template}: {exc.args[1]}"
    kind = "TemplateNotFound" if isinstance(exc, TemplateNotFound) else type(exc).__name__
    if isinstance(exc, TemplateSyntaxError):
        return f"{kind} in {exc.name or template} line {exc.lineno}"
    where, tb = template, exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(TEMPLATE_SUFFIX):
            where = f"{'/'.join(Path(filename).parts[-2:])} line {tb.tb_lineno}"
        tb = tb.tb_next
    return f"{kind} in {where}"


def _dashboard_filter(link: Callable[[dict[str, Any]], str | None] | None) -> Any:
    """`run|dashboard_url`: the dashboard link of any run (a digest's `group.runs` too), as the
    `dashboard_url` variable is the notification's; None without one."""

    def dashboard_url(run: Any) -> str | None:
        return link(dict(run)) if link is not None and isinstance(run, Mapping) else None

    return dashboard_url


class Renderer:
    """Renders `<channel_type>/<name>.<part>.j2`, overrides first, then the shipped defaults."""

    def __init__(
        self,
        override_dir: Path | None = None,
        budget_s: float = RENDER_BUDGET_S,
        link: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        dirs = [d for d in (override_dir, shipped_templates_dir()) if d is not None]
        self._loader = ChoiceLoader([FileSystemLoader(str(d)) for d in dirs])
        self._env = environment(self._loader)
        self._env.filters["dashboard_url"] = _dashboard_filter(link)
        self._override_dir = override_dir
        self.budget_s = budget_s  # per render(): past it, loops and calls raise RenderTimeout

    def has_template(self, channel_type: str, name: str, part: str) -> bool:
        try:
            self._loader.get_source(self._env, _template_name(channel_type, name, part))
        except TemplateNotFound:
            return False
        return True

    def unknown_names(self, channel_type: str, name: str, part: str) -> list[str]:
        """Top-level names the template reads that its context does not have (a misspelled
        variable renders empty, so `relay check` warns); [] when it cannot be read."""
        try:
            ast = self._parse(_template_name(channel_type, name, part))
            known = self._names_set(ast, set())
            used = meta.find_undeclared_variables(ast) - known  # compiles: an unknown filter
        except (TemplateError, UnicodeDecodeError, OSError):
            return []
        return sorted(used - CONTEXT_NAMES - set(self._env.globals))

    def _parse(self, template: str) -> nodes.Template:
        source, _, _ = self._loader.get_source(self._env, template)
        return self._env.parse(source)

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
        a constant name) compile and none of them reaches itself again on lines that always run
        (it could only ever give the fallback); else what is wrong, with its line."""
        template = _template_name(channel_type, name, part)
        return self._check(template, set(), []) or self._cycle(template, ())

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
            return f"{exc.name or template} line {exc.lineno}: {exc.message}"
        except TemplateNotFound as exc:
            return f"template {exc.name} not found"
        except (UnicodeDecodeError, OSError):
            return f"{template}: not a readable UTF-8 file"
        for line, unknown in unknown_filters(self._env, ast)[:1]:
            return f"{template} line {line}: {unknown}"
        for line, ref in _references(ast):
            why = None if ref in seen else self._check(ref, seen, missing)
            if why == f"template {ref} not found":
                missing.append(f"{template} line {line}: {why}")
            elif why is not None:
                return why
        return None

    def _cycle(self, template: str, chain: tuple[str, ...]) -> str | None:
        """`<template> line <n>: ...` when a top-level extends, include or import leads back
        to a template on `chain` (Jinja recurses until RecursionError on every render)."""
        try:
            ast = self._parse(template)
        except (TemplateError, UnicodeDecodeError, OSError):
            return None  # said by _check
        chain = (*chain, template)
        for line, ref in _references(ast, top_level=True):
            if ref in chain:
                loop = " → ".join((*chain[chain.index(ref) :], ref))
                return f"{template} line {line}: it reaches itself on every render ({loop})"
            if found := self._cycle(ref, chain):
                return found
        return None

    def broken_overrides(self) -> list[str]:
        """What is wrong with each `*.j2` file of the override directory that does not compile,
        whether a rule renders it or not (Alertmanager refuses any broken template file too)."""
        root = self._override_dir
        if root is None or not root.is_dir():
            return []
        found = []
        for path in sorted(root.rglob(f"*{TEMPLATE_SUFFIX}")):
            name = path.relative_to(root).as_posix()
            if name.startswith(".") or "/." in name or not path.is_file():
                continue
            try:
                self._env.get_template(name)
                unknown = unknown_filters(self._env, self._parse(name))
            except TemplateSyntaxError as exc:
                found.append(f"{exc.name or name} line {exc.lineno}: {exc.message}")
            except (UnicodeDecodeError, OSError):
                found.append(f"{name}: not a readable UTF-8 file")
            else:
                found.extend(f"{name} line {line}: {why}" for line, why in unknown[:1])
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
            variables = _variables(ctx)
            out: dict[str, str] = {}
            budget = (
                time_budget(self.budget_s) if wall_s is None else time_budget(wall_s, cpu=False)
            )
            with budget:
                for part in parts:
                    template = _template_name(channel_type, name, part)
                    out[part] = self._render_one(template, variables)
                    if part == "json":
                        _check_json(out[part])
            return Rendered(out, fallback=False, error=None)
        except Exception as exc:  # never drop a notification for a template bug
            fallback = {part: _fallback_part(part, ctx) for part in parts}
            timed_out = isinstance(exc, RenderTimeout)
            return Rendered(fallback, True, _describe(exc, template), timed_out)

    def _render_one(self, template: str, variables: dict[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        for chunk in self._env.get_template(template).generate(variables):
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


def _check_json(text: str) -> None:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Unrenderable("InvalidJSON", f"line {exc.lineno} column {exc.colno}") from None
