"""Loading, checking and trying a configuration: what `relay check`, `relay test`,
`relay send-test` and `relay serve` (at start and on reload) share."""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from relay import channels as channel_registry
from relay.channels import ChannelEnv, Outgoing, Recovery
from relay.config import ChannelSettings, Defaults
from relay.config_load import Draft, LoadedConfig, check_config, check_file, parse_config
from relay.config_rules import RuleConfig
from relay.config_warnings import config_warnings
from relay.dispatch import DIGEST_TEMPLATE, render_notification
from relay.errors import ConfigError, DeliveryError, Problem, RelayError, in_file_order
from relay.filters import web_url
from relay.model import Notification, Run, notification_id
from relay.policy import TokenBucket
from relay.rules import (
    RECOVERY_TEMPLATE,
    Locate,
    RuleSet,
    compile_rules,
    rule_template,
    when_problems,
)
from relay.sending import Route
from relay.settings import Settings
from relay.templating import Rendered, Renderer

if TYPE_CHECKING:  # aiohttp's: imported by what builds channels, not by `relay check`
    from relay.channels._http import HttpClient

BUILTIN_NAME = "<built-in>"
BUILTIN_CONFIG = """\
channels:
  console:
    type: console
rules:
  - name: failures
    match:
      status: [failure]
    notify: [console]
"""


@dataclass(frozen=True)
class Compiled:
    """A loaded config with its rules compiled and its templates checked."""

    loaded: LoadedConfig
    rules: RuleSet
    renderer: Renderer
    warnings: tuple[str, ...] = ()


def load(settings: Settings, path: Path | None = None) -> LoadedConfig:
    """The config file, or the built-in default when none was named and none exists.

    ConfigError lists every problem of the file, and those of the expressions and templates of
    its valid rules with them, so that one `relay check` shows all there is to fix."""
    models = channel_registry.settings_models()
    target = path or settings.config
    if target.exists() or path is not None or settings.config_explicit:
        if not target.exists():
            raise ConfigError([Problem(str(target), "", "config file not found")])
        return _complete(check_file(target, models))
    return _builtin()


def load_text(filename: str | None, text: str) -> LoadedConfig:
    """The config another relay process read, a delivery worker's parent: `text` as read from
    `filename` (None: the built-in default), its variables from this process's environment,
    which is the parent's. The file may have changed since: reading it again ran another config
    than the parent's, or kept an older one."""
    if filename is None:
        return _builtin()
    models = channel_registry.settings_models()
    return _complete(check_config(text, filename, models, base_dir=Path(filename).parent))


def _builtin() -> LoadedConfig:
    loaded = parse_config(BUILTIN_CONFIG, BUILTIN_NAME, channel_registry.settings_models(), env={})
    return LoadedConfig(loaded.config, loaded.source, builtin=True)


def written_names(
    settings: Settings, path: Path | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The rule and channel names of the config file `load` would read, as written (unset
    variables or other problems elsewhere in it aside); None without a file or its names."""
    target = path or settings.config
    try:
        return check_file(target, channel_registry.settings_models()).names()
    except ConfigError:  # not there, not readable, not YAML
        return None


def _complete(draft: Draft) -> LoadedConfig:
    """The draft's config; if it has problems, ConfigError with them and those of its rules'
    expressions and templates where they are known (compile_config finds these in a valid
    config): an invalid key of a rule, a channel or a section hides no problem of the others."""
    if not draft.problems:
        return draft.loaded()
    locate = draft.source.locate
    rules = draft.rules.items()
    problems = draft.problems + when_problems(
        {i: rule for i, rule in rules if draft.known(("rules", i, "when"))}, locate
    )
    if draft.known(("templates", "dir")):  # else a template of the broken dir seems missing
        renderer = Renderer(draft.config.templates.dir)
        rendered = {i: rule for i, rule in rules if all(draft.known(p) for p in _rendering(i))}
        found = _check_templates(renderer, draft.channel_types, rendered, locate)[0]
        problems += found + _broken_files(renderer, locate, found)
    raise ConfigError(in_file_order(problems))


def _rendering(i: int) -> list[tuple[str | int, ...]]:
    """The keys of rule `i` that say which templates it renders for which channel types."""
    keys = ("notify", "template", "match", "group_by", "update_on_recovery")
    return [("rules", i, key) for key in keys]


def compile_config(loaded: LoadedConfig, templates: Mapping[str, bytes] | None = None) -> Compiled:
    """Compile rules and check templates (the files of templates.dir as they are now, or
    `templates`: a delivery worker's parent's); ConfigError lists every problem with file:line."""
    config = loaded.config
    rules, problems = compile_rules(
        config.rules,
        loaded.locate,
        time_intervals=config.time_intervals,
        inhibit_rules=config.inhibit_rules,
        unresolved=frozenset(n for n, ch in config.channels.items() if not ch.send_resolved),
    )
    link = dashboard_link(config.defaults)
    checks = channel_registry.rendered_checks()
    renderer = Renderer(config.templates.dir, link=link, files=templates, checks=checks)
    warnings = config_warnings(loaded)
    every_rule = dict(enumerate(config.rules))
    types = {name: channel.type for name, channel in config.channels.items()}
    found, unknown = _check_templates(renderer, types, every_rule, loaded.locate)
    found += _broken_files(renderer, loaded.locate, found)
    if problems or found:
        raise ConfigError(in_file_order(problems + found))
    return Compiled(loaded, rules, renderer, tuple(dict.fromkeys(warnings + unknown)))


def _check_templates(
    renderer: Renderer,
    channel_types: Mapping[str, str],
    rules: Mapping[int, RuleConfig],
    locate: Locate,
) -> tuple[list[Problem], list[str]]:
    """Problems and warnings of the templates each rule renders for the types of its channels
    (rules by their index in the file; a name not in `channel_types` is reported elsewhere)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    findings: dict[tuple[str, str, str], _Findings] = {}  # most rules share a few templates
    for i, rule in rules.items():
        where = locate(("rules", i, "template"))
        types = dict.fromkeys(channel_types[n] for n in rule.notify if n in channel_types)
        for kind in (channel_registry.REGISTRY[t] for t in types):
            for template, part in itertools.product(_templates_of(rule), kind.parts):
                key = (kind.type, template, part)
                if key not in findings:
                    findings[key] = _findings(renderer, *key)
                why, unknown, missing = findings[key]
                if why is not None:
                    problems.append(Problem(where, f"rules[{i}].template", f"{kind.type}: {why}"))
                warnings += [f"{where}: rules[{i}].template: {text}" for text in unknown + missing]
    return problems, warnings


# what is wrong with a template (or None), and the warnings about it, without their place
_Findings = tuple[str | None, list[str], list[str]]
_NONE: _Findings = (None, [], [])


def _findings(renderer: Renderer, channel_type: str, template: str, part: str) -> _Findings:
    """_template_findings, but none for a shipped template when templates.dir overrides no
    file: it and all it reaches are relay's own, whose tests find nothing in any of them
    (test_every_shipped_template_is_found_fine); checking them cost every start and every
    `relay check` ~0.35 s of CPU. With an override, one it reaches may be the user's."""
    if not renderer.overrides and renderer.has_template(channel_type, template, part):
        return _NONE
    return _template_findings(renderer, channel_type, template, part)


def _template_findings(
    renderer: Renderer, channel_type: str, template: str, part: str
) -> _Findings:
    """The problem of a template; a name it reads that its context lacks (it renders empty); a
    template it includes that does not exist (that line renders the fallback when it runs).
    Each takes ~25 ms (Jinja parses and walks the tree): once per template, not per rule."""
    unknown = [
        f"{channel_type}/{template}.{part}.j2 line {line}: `{name}` is not in the template "
        "context (it renders empty)"
        for name, line in renderer.unknown_names(channel_type, template, part)
    ]
    missing = [
        f"{channel_type}: {why} (the fallback is sent when that line runs)"
        for why in renderer.missing_references(channel_type, template, part)
    ]
    return renderer.check(channel_type, template, part), unknown, missing


def _broken_files(renderer: Renderer, locate: Locate, reported: list[Problem]) -> list[Problem]:
    """The files of templates.dir that do not compile, but for those reported at a rule."""
    where = locate(("templates", "dir"))
    return [
        Problem(where, "templates.dir", why)
        for why in renderer.broken_overrides()
        if not any(problem.message.endswith(why) for problem in reported)
    ]


def _templates_of(rule: RuleConfig) -> list[str]:
    """The templates a rule renders: its own, the digest's and the recovery's if it has them."""
    templates = [rule_template(rule)] + ([DIGEST_TEMPLATE] if rule.group_by else [])
    return templates + ([RECOVERY_TEMPLATE] if rule.update_on_recovery else [])


def dashboard_link(defaults: Defaults) -> Callable[[dict[str, Any]], str | None]:
    """The run's dashboard URL: the one Trigger.dev sent if it is an absolute http(s) URL (a
    pushed run or an alert can carry `javascript:…`, which no link or button may take), else
    defaults.dashboard_url (with the project of the alert that brought the run, else
    defaults.project_ref). A deployment event links to its deployment (deployment_link). Only
    http(s) URLs come out (web_url): None otherwise."""
    made = _made_link(defaults)

    def link(run: dict[str, Any]) -> str | None:
        return web_url(run.get("dashboardUrl")) or web_url(made(run))

    return link


def _made_link(defaults: Defaults) -> Callable[[dict[str, Any]], str | None]:
    """The link relay makes for a run from defaults.dashboard_url (see dashboard_link)."""
    pattern = defaults.dashboard_url

    def link(run: dict[str, Any]) -> str | None:
        if run.get("event", "run").startswith("deployment."):
            return deployment_link(defaults, run)
        if run.get("event", "run") != "run":  # the pattern is for runs
            return None
        ref = _alert_project_ref(run) or defaults.project_ref
        if "{project_ref}" in pattern and not ref:
            return None
        return pattern.format(  # percent-encoded: a URL, whatever a run id or task holds
            project_ref=quote(ref or "", safe=""),
            run_id=quote(str(run.get("id") or ""), safe=""),
            task=quote(str(run.get("taskIdentifier") or ""), safe=""),
        )

    return link


def _alert_project_ref(event: Mapping[str, Any]) -> str | None:
    """The project an alert webhook names (`project.ref`); None for a run that names none."""
    project = event.get("project")
    ref = project.get("ref") if isinstance(project, Mapping) else None
    return ref if isinstance(ref, str) and ref else None


def deployment_link(defaults: Defaults, event: Mapping[str, Any]) -> str | None:
    """What Trigger.dev's own deployment alerts link to (View Deployment):
    `<dashboard>/projects/v3/<project ref>/deployments/<short code>`, the dashboard being
    defaults.dashboard_url up to its `/projects/v3/` (else its scheme and host). The project ref
    is the alert's, else defaults.project_ref. None while either is unknown."""
    deployment = event.get("deployment")
    code = deployment.get("shortCode") if isinstance(deployment, Mapping) else None
    ref = _alert_project_ref(event) or defaults.project_ref
    if not (isinstance(code, str) and code and isinstance(ref, str) and ref):
        return None
    base, cut, _ = defaults.dashboard_url.partition("/projects/v3/")
    if not cut:
        url = urlsplit(defaults.dashboard_url)
        base = f"{url.scheme}://{url.netloc}"
    return f"{base}/projects/v3/{quote(ref, safe='')}/deployments/{quote(code, safe='')}"


SAMPLE_RUN: dict[str, Any] = {
    "id": "run_relaytest0000000000000000",
    "taskIdentifier": "relay-send-test",
    "status": "FAILED",
    "createdAt": "2026-01-01T00:00:00.000Z",
    "updatedAt": "2026-01-01T00:00:12.000Z",
    "durationMs": 11800,
    "costInCents": 0.04,
    "baseCostInCents": 0.0025,
    "tags": ["relay:send-test"],
    "isTest": True,
    "error": {"name": "Error", "message": "This is a test notification from relay send-test"},
}


@dataclass(frozen=True)
class DryRun:
    run_id: str
    rules: list[str]
    messages: list[tuple[str, str, Rendered]]  # (rule, channel, rendered)
    event: str = "run"  # run, deployment.failed, ...: what `relay test` heads the id with


def route_for(
    compiled: Compiled,
    name: str,
    env: ChannelEnv,
    *,
    throttled: bool = True,
    before: Route | None = None,
) -> Route:
    """Build channel `name` of the config, with its rate limit unless `throttled` is False;
    `before` is the route of that name the config being replaced ran (see `_carry_over`)."""
    settings = compiled.loaded.config.channels[name]
    kind = channel_registry.REGISTRY[settings.type]
    channel = channel_registry.build(name, settings, env)
    limit = settings.rate_limit if throttled else None
    bucket = TokenBucket(limit) if limit is not None else None
    timeout_s = settings.timeout or env.default_timeout_s
    route = Route(
        channel, kind.type, kind.parts, settings.concurrency, bucket, timeout_s, settings=settings
    )
    if before is not None:
        _carry_over(before, route)
    return route


# ChannelSettings' own options say how relay sends, not where to or as whom
_SENDING_OPTIONS = set(ChannelSettings.model_fields)


def _carry_over(before: Route, route: Route) -> None:
    """A reload rebuilds every route: a hold set by the receiver's Retry-After was lost, and
    relay called the receiver again at once inside a `Retry-After: 30`, as the token bucket
    forgot the requests just made. The same receiver (the type's own settings unchanged: at
    most timeout, concurrency, rate_limit or send_resolved differ) keeps the hold, shared with
    the draining route, and the same rate limit keeps its bucket. Its sends in flight count
    against the new concurrency until they end (`Slots`)."""
    old, new = before.settings, route.settings
    if old is None or new is None or not _same_receiver(old, new):
        return
    route.hold, route.slots = before.hold, before.slots
    if route.bucket is not None and before.bucket is not None and old.rate_limit == new.rate_limit:
        route.bucket = before.bucket


def _same_receiver(old: ChannelSettings, new: ChannelSettings) -> bool:
    if type(old) is not type(new):
        return False
    return old.model_dump(exclude=_SENDING_OPTIONS) == new.model_dump(exclude=_SENDING_OPTIONS)


def http_client() -> HttpClient:
    """A new HTTP client for channels; aiohttp is imported here, by the commands that build
    channels (`relay check` does not: it starts in half the time)."""
    from relay.channels._http import HttpClient  # noqa: PLC0415

    return HttpClient()


def dry_run(compiled: Compiled, runs: list[Run]) -> list[DryRun]:
    """Which rules match each run (as if first seen) and the messages they would send."""
    config = compiled.loaded.config
    env = ChannelEnv(http_client(), sys.stdout, config.defaults.timeout)
    link = dashboard_link(config.defaults)
    out = []
    for run in runs:
        decision = compiled.rules.decide(run, None)
        messages = []
        for match in decision.matches:
            row = Notification(
                notification_id(run.id, match.rule, match.channel),
                run.id,
                match.rule,
                match.channel,
                match.template,
                run.as_dict(),
                time.time(),
            )
            route = route_for(compiled, match.channel, env, throttled=False)
            messages.append(
                (
                    match.rule,
                    match.channel,
                    render_notification(compiled.renderer, match.channel, route, row, link),
                )
            )
        rules = list(dict.fromkeys(m.rule for m in decision.matches))
        out.append(DryRun(run.id, rules, messages, run.event))
    return out


async def send_test(compiled: Compiled, channel: str) -> str | None:
    """One real attempt through `channel` with a sample run; raises DeliveryError on failure.
    On a channel that opens incidents (PagerDuty) the trigger, once accepted, is resolved: its
    key (the receipt) is returned."""
    config = compiled.loaded.config
    if channel not in config.channels:
        known = ", ".join(sorted(config.channels)) or "none"
        raise RelayError(f"unknown channel {channel[:100]!r} (known: {known})")
    http = http_client()
    try:
        route = route_for(
            compiled,
            channel,
            ChannelEnv(http, sys.stdout, config.defaults.timeout, partial_fails=True),
            throttled=False,
        )
        run = Run.model_validate(SAMPLE_RUN)
        now = time.time()
        row = Notification(
            f"ntf_test_{int(now * 1000)}", run.id, "send-test", channel, "run", run.as_dict(), now
        )
        rendered = render_notification(
            compiled.renderer, channel, route, row, dashboard_link(config.defaults)
        )
        receipt = await route.channel.send(Outgoing(row.id, run.id, row.rule, rendered.parts, now))
        kind = channel_registry.REGISTRY[config.channels[channel].type]
        if not kind.opens_incidents or not receipt:
            return None
        await _resolve_test(route, row, receipt)
        return receipt
    finally:
        await http.close()


async def _resolve_test(route: Route, row: Notification, receipt: str) -> None:
    """Resolve the alert a send-test's trigger opened (its dedup key, PagerDuty's receipt): the
    on-call was paged, the incident closes, and the next send-test (the same sample run, the
    same key) pages again instead of joining an alert still open."""
    body = '{"event_action": "resolve"}'  # the channel sends the receipt as its dedup_key
    recovery = Recovery(row.id, receipt)
    resolve = Outgoing(row.id, row.run_id, row.rule, {"json": body}, time.time(), recovery)
    try:
        await route.channel.send(resolve)
    except DeliveryError as exc:
        raise RelayError(
            f"paged, but the resolve failed: {exc}; resolve it in PagerDuty (dedup_key {receipt})"
        ) from exc


def config_fingerprint(compiled: Compiled) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when the config file or a template changes: paths, sizes, mtimes, inodes
    (a file renamed over another, as `rsync -a` or `cp -p` then `mv` do, may keep both)."""
    paths = [Path(compiled.loaded.source.filename)]
    directory = compiled.loaded.config.templates.dir
    if directory is not None:
        paths += _files_under(directory)
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path), -1, -1, -1))
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(out)


_WHERE = {"templates": {"dir"}}  # the config's files' place on disk: not part of its digest


def config_hash(compiled: Compiled) -> int:
    """A 52-bit digest (exact as a float, so in /metrics) of the running config as relay reads
    it, its environment variables filled in, and of the files of its templates directory: two
    replicas or two reloads that differ in it run different configs. Secrets are masked before
    it is taken, so a secret changed alone does not change it (and nothing of one leaks). The
    templates directory counts by its files (their paths inside it), not by where it is: two
    replicas mounting the same files at different paths run the same config."""
    loaded = compiled.loaded
    digest = hashlib.sha256(loaded.config.model_dump_json(exclude=_WHERE).encode())
    for name, data in sorted(compiled.renderer.overrides.items()):  # the files it runs
        digest.update(b"\0" + name.encode(errors="replace") + b"\0" + data)
    return int(digest.hexdigest()[:13], 16)


def _files_under(directory: Path) -> list[Path]:
    """The files under `directory`, sorted. A directory that vanishes while listed is skipped:
    a ConfigMap update deletes the old version's directory, and rglob raised then, which ended
    the watching of the files for good."""
    found = [Path(parent, name) for parent, _, names in os.walk(directory) for name in names]
    return sorted(found)
