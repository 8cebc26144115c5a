"""Templates: the hardened Jinja sandbox, relay's filters and the Renderer.

`<channel_type>/<name>.<part>.j2`: override directory first, shipped defaults second. Context:
run (Run.as_dict()), rule, channel {name, type}, notification {id}, dashboard_url (or None),
error (normalised {type, code, name, message, stack}: raw INTERNAL_ERROR code/message preferred;
the SDK's "trigger.dev internal error (CODE)" becomes the code plus a readable hint), summary (one
line), payload, output, metadata. A missing field renders empty (ChainableUndefined).

render() never raises: a failure gives the plain fallback for every part and an `error` naming
exception class, template and line, never a message (it can quote run data). Beyond Jinja's
sandbox: dunders and unsafe attributes raise SecurityError; `*`, `**`, `%`, str.format and padding
refuse huge sizes; output is capped. This stops SSTI and accidents, not every CPU-burning loop.
"""

from __future__ import annotations

import functools
import html
import math
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import orjson
from jinja2 import ChainableUndefined, ChoiceLoader, FileSystemLoader, Undefined
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

import relay
from relay.model import FAILURE_STATUSES

TEMPLATE_SUFFIX = ".j2"
MAX_SEQUENCE_LEN = 100_000  # `'a' * n`, `[x] * n`
MAX_INT_BITS = 128  # integer results of `*` and `**`
MAX_WIDTH = 100_000  # widths of format strings, padding methods and filters like center
MAX_OUTPUT_CHARS = 1_000_000  # one rendered part
_SEQUENCES = (str, bytes, list, tuple)
_WIDE_PERCENT = re.compile(r"%[-#0 +]*(?:\*|\d{6,})|%[-#0 +]*\d*\.(?:\*|\d{6,})")
_WIDE_BRACES = re.compile(r"\{[^{}]*:[^{}]*(?:\d{6,}|\{)")
_SDK_INTERNAL = re.compile(r"trigger\.dev internal error \(([A-Z0-9_]+)\)")
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
}


def shipped_templates_dir() -> Path:
    """The default templates: inside the installed wheel, else at the repository root."""
    packaged = Path(relay.__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(relay.__file__).parent.parent / "templates"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > MAX_INT_BITS:
            raise SecurityError(f"`**` result would exceed {MAX_INT_BITS} bits")
    elif operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and _is_int(count):
                if len(seq) * count > MAX_SEQUENCE_LEN:
                    raise SecurityError(f"`*` result would exceed {MAX_SEQUENCE_LEN} items")
                return
        if (
            _is_int(left)
            and _is_int(right)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1
        ):
            raise SecurityError(f"`*` result would exceed {MAX_INT_BITS} bits")
    elif operator == "%" and isinstance(left, str) and _WIDE_PERCENT.search(left):
        raise SecurityError("format width too large")


def _check_int_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if any(_is_int(a) and abs(a) > MAX_WIDTH for a in (*args, *kwargs.values())):
        raise SecurityError(f"argument larger than {MAX_WIDTH}")


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_name(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_name(obj, argument)
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is unsafe")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(__obj, "__self__", None), str):  # 'x'.ljust(10**9) and friends
            _check_int_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _check_name(obj: Any, name: Any) -> None:
    """No dunder names (unless a dict really has that key); no huge str.format widths."""
    if not isinstance(name, str):
        return
    if name.startswith("__") and not (isinstance(obj, dict) and name in obj):
        raise SecurityError(f"access to {name!r} is not allowed")
    if name in ("format", "format_map") and isinstance(obj, str) and _WIDE_BRACES.search(obj):
        raise SecurityError("format width too large")


def _width_guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(args[skip:], kwargs)
        return fn(*args, **kwargs)

    return guarded


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_binop("%", _text(value), None)
    return _text(value) % (kwargs or args)


def _environment(loader: jinja2.BaseLoader | None = None) -> _Environment:
    env = _Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html.j2", "htm.j2"], default=False),
        undefined=ChainableUndefined,
        keep_trailing_newline=True,
        cache_size=400,
    )
    env.globals.pop("lipsum", None)  # a text generator with unbounded sizes; useless here
    for name in ("center", "indent", "batch", "slice", "wordwrap", "truncate"):
        env.filters[name] = _width_guarded(env.filters[name])
    ours = (money, duration, truncate_chars, tojson, stack, status_emoji)
    env.filters.update({f.__name__: f for f in ours}, format=_format)
    return env


def sandbox() -> SandboxedEnvironment:
    """A fresh hardened sandbox with relay's filters (templates and rule `when:` expressions)."""
    return _environment()


def _text(value: Any) -> str:
    return "" if value is None or isinstance(value, Undefined) else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def money(cents: Any) -> str:
    """Cents → dollars: 150 → $1.50; below a cent up to 4 decimals: 0.05027 → $0.0005."""
    value = _number(cents)
    if value is None:
        return ""
    sign, dollars = ("-" if value < 0 else ""), abs(value) / 100
    if dollars == 0 or dollars >= 0.01:
        return f"{sign}${dollars:,.2f}"
    text = f"{dollars:.4f}"
    return f"{sign}<$0.0001" if float(text) == 0 else f"{sign}${text.rstrip('0')}"


def duration(ms: Any) -> str:
    """Milliseconds → 950ms, 14.9s, 1m 1s, 1h 2m, 1d 1h."""
    value = _number(ms)
    if value is None:
        return ""
    sign, value = ("-" if value < 0 else ""), abs(value)
    if round(value) < 1000:
        return f"{sign}{round(value)}ms"
    tenths = round(value / 100)
    if tenths < 600:
        return f"{sign}{f'{tenths / 10:.1f}'.removesuffix('.0')}s"
    seconds = max(int(value // 1000), 60)
    for size, unit, minor_size, minor_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m")):
        if seconds >= size:
            major, rest = divmod(seconds, size)
            minor = rest // minor_size
            return f"{sign}{major}{unit}" + (f" {minor}{minor_unit}" if minor else "")
    minutes, rest = divmod(seconds, 60)
    return f"{sign}{minutes}m" + (f" {rest}s" if rest else "")


def truncate_chars(value: Any, length: int, end: str = "…") -> str:
    """At most `length` characters, the end marker included."""
    text, length = _text(value), max(int(length), 0)
    if len(text) <= length:
        return text
    if len(end) >= length:
        return end[:length]
    return text[: length - len(end)].rstrip() + end


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return None if isinstance(value, Undefined) else str(value)


def tojson(value: Any, indent: int | None = None) -> str:
    """Compact JSON (orjson); `indent` (any truthy value) gives two-space indentation."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, default=_json_default, option=option).decode()


def stack(value: Any, max_lines: int = 12, frames_only: bool = False) -> str:
    """Stack without node:internal frames, cut to max_lines (+ "… N more lines"); frames_only
    drops the leading message lines when the trace has `at ...` frames."""
    lines = [
        line.rstrip()
        for line in _text(value).splitlines()
        if line.strip() and "node:internal" not in line
    ]
    if frames_only:
        first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("at ")), 0)
        lines = lines[first:]
    keep = max(int(max_lines), 0)
    kept = textwrap.dedent("\n".join(lines[:keep])).splitlines()
    if len(lines) > keep:
        kept.append(f"… {len(lines) - keep} more lines")
    return "\n".join(kept)


def status_emoji(status: Any) -> str:
    """🔴 for failures, ✅ for COMPLETED, ⚠️ for anything else."""
    if status in FAILURE_STATUSES:
        return "🔴"
    return "✅" if status == "COMPLETED" else "⚠️"


@dataclass(frozen=True)
class RenderContext:
    run: dict[str, Any]
    rule: str
    channel: str
    channel_type: str
    notification_id: str
    dashboard_url: str | None


@dataclass(frozen=True)
class Rendered:
    parts: dict[str, str]
    fallback: bool
    error: str | None


def _error_view(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, str):
        raw = {"message": raw}
    if not isinstance(raw, Mapping):
        return None
    kind, code = _text(raw.get("type")) or None, _text(raw.get("code")) or None
    message = _text(raw.get("message")) or None
    if message is None and kind in ("STRING_ERROR", "CUSTOM_ERROR"):
        message = _text(raw.get("raw")) or None
    wrapped = _SDK_INTERNAL.fullmatch(message.strip()) if code is None and message else None
    if wrapped:  # the SDK keeps only "trigger.dev internal error (CODE)"
        code, kind = wrapped.group(1), kind or "INTERNAL_ERROR"
        message = _CODE_HINTS.get(code, message)
    elif code is not None and message is None:
        message = _CODE_HINTS.get(code)
    view = {
        "type": kind,
        "code": code,
        "name": _text(raw.get("name")) or None,
        "message": message,
        "stack": _text(raw.get("stackTrace")) or None,
    }
    return view if any(view.values()) else None


def _error_line(error: Mapping[str, Any] | None) -> str:
    if not error:
        return ""
    head = error.get("code") or error.get("name")
    message = (_text(error.get("message")).strip().splitlines() or [""])[0]
    return f"{head}: {message}" if head and message else head or message


def _summary(run: Mapping[str, Any], error: Mapping[str, Any] | None) -> str:
    status = _text(run.get("status")) or "UNKNOWN"
    task = _text(run.get("taskIdentifier")) or "unknown task"
    line = " · ".join(
        filter(None, (f"{status_emoji(status)} {status}", task, _text(run.get("id"))))
    )
    detail = _error_line(error)
    return truncate_chars(f"{line}: {detail}" if detail else line, 300)


def _variables(ctx: RenderContext) -> dict[str, Any]:
    run = ctx.run
    error = _error_view(run.get("error"))
    return {
        "run": run,
        "rule": ctx.rule,
        "channel": {"name": ctx.channel, "type": ctx.channel_type},
        "notification": {"id": ctx.notification_id},
        "dashboard_url": ctx.dashboard_url,
        "error": error,
        "summary": _summary(run, error),
        "payload": run.get("payload"),
        "output": run.get("output"),
        "metadata": run.get("metadata"),
    }


def fallback_text(ctx: RenderContext) -> str:
    """Plain one-paragraph message: status, task, run id, error, rule, dashboard link."""
    try:
        run = ctx.run if isinstance(ctx.run, Mapping) else {}
        text = f"{_summary(run, _error_view(run.get('error')))} (rule: {ctx.rule})"
    except Exception:  # the last resort must not fail
        text = f"relay notification {ctx.notification_id} (rule: {ctx.rule})"
    return f"{text} {ctx.dashboard_url}" if ctx.dashboard_url else text


def fallback_json(ctx: RenderContext) -> str:
    """{"id", "rule", "channel", "text", "run", "dashboardUrl"} as a JSON string."""
    body = {
        "id": ctx.notification_id,
        "rule": ctx.rule,
        "channel": ctx.channel,
        "text": fallback_text(ctx),
        "run": ctx.run,
        "dashboardUrl": ctx.dashboard_url,
    }
    try:
        return tojson(body)
    except (TypeError, ValueError):  # e.g. an integer beyond 64 bits somewhere in the run
        return tojson({**body, "run": None})


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


class Renderer:
    """Renders `<channel_type>/<name>.<part>.j2`, overrides first, then the shipped defaults."""

    def __init__(self, override_dir: Path | None = None) -> None:
        dirs = [d for d in (override_dir, shipped_templates_dir()) if d is not None]
        self._loader = ChoiceLoader([FileSystemLoader(str(d)) for d in dirs])
        self._env = _environment(self._loader)

    def has_template(self, channel_type: str, name: str, part: str) -> bool:
        try:
            self._loader.get_source(self._env, _template_name(channel_type, name, part))
        except TemplateNotFound:
            return False
        return True

    def check(self, channel_type: str, name: str, part: str) -> str | None:
        """None when the template exists and compiles; else what is wrong, with its line."""
        template = _template_name(channel_type, name, part)
        try:
            self._env.get_template(template)
        except TemplateSyntaxError as exc:
            return f"{exc.name or template} line {exc.lineno}: {exc.message}"
        except TemplateNotFound as exc:
            return f"template {exc.name} not found"
        return None

    def render(
        self, channel_type: str, name: str, parts: tuple[str, ...], ctx: RenderContext
    ) -> Rendered:
        """Every part rendered, or the fallback for every part; never raises."""
        template = _template_name(channel_type, name, parts[0] if parts else "")
        try:
            variables = _variables(ctx)
            out: dict[str, str] = {}
            for part in parts:
                template = _template_name(channel_type, name, part)
                out[part] = self._render_one(template, variables)
                if part == "json":
                    _check_json(out[part])
            return Rendered(out, fallback=False, error=None)
        except Exception as exc:  # never drop a notification for a template bug
            fallback = {part: _fallback_part(part, ctx) for part in parts}
            return Rendered(fallback, fallback=True, error=_describe(exc, template))

    def _render_one(self, template: str, variables: dict[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        for chunk in self._env.get_template(template).generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _Unrenderable("OutputTooLarge", f"more than {MAX_OUTPUT_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)


def _check_json(text: str) -> None:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Unrenderable("InvalidJSON", f"line {exc.lineno} column {exc.colno}") from None
