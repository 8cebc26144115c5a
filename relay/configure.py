"""Loading a configuration, compiling its rules and checking its templates: what `relay check`,
`relay test`, `relay send-test` and `relay serve` (at start and on reload) share. Trying one is
relay.trying's; building its channels' routes, relay.routes'."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay import channels as channel_registry
from relay.config_load import Draft, LoadedConfig, check_config, check_file, parse_config
from relay.config_rules import RuleConfig
from relay.config_warnings import config_warnings
from relay.dashboard_links import dashboard_link
from relay.errors import ConfigError, Problem, in_file_order
from relay.rendering import DIGEST_TEMPLATE
from relay.rule_compile import Locate, compile_rules, rule_template, rule_templates, when_problems
from relay.rules import RECOVERY_TEMPLATE, RuleSet
from relay.settings import Settings
from relay.template_layout import unrendered_files
from relay.template_probe import fails_always, invalid_json, sample_kinds
from relay.templating import Renderer

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


def load(
    settings: Settings, path: Path | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """The config file (its `${VAR}`s from `env`, else the environment), or the built-in
    default when none was named and none exists.

    ConfigError lists every problem of the file, and those of the expressions and templates of
    its valid rules with them, so that one `relay check` shows all there is to fix."""
    models = channel_registry.settings_models()
    target = path or settings.config
    if target.exists() or path is not None or settings.config_explicit:
        if not target.exists():
            raise ConfigError([Problem(str(target), "", "config file not found")])
        return _complete(check_file(target, models, env))
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
    variables or other problems elsewhere in it aside); None without a file. ConfigError when
    the file is there but gives no names (unreadable, not YAML)."""
    target = path or settings.config
    if not target.exists():  # a store reached from another machine: nothing to check against
        return None
    draft = check_file(target, channel_registry.settings_models())
    names = draft.names()
    if names is None and draft.problems:
        raise ConfigError(in_file_order(draft.problems))
    return names


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
        renderer = Renderer(
            draft.config.templates.dir, sole_types=channel_registry.sole_part_types()
        )
        rendered = {i: rule for i, rule in rules if all(draft.known(p) for p in _rendering(i))}
        found = _check_templates(renderer, draft.channel_types, rendered, locate, False)[0]
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
    sole = channel_registry.sole_part_types()
    renderer = Renderer(
        config.templates.dir, link=link, files=templates, checks=checks, sole_types=sole
    )
    warnings = config_warnings(loaded)
    every_rule = dict(enumerate(config.rules))
    types = {name: channel.type for name, channel in config.channels.items()}
    alerts = config.sources.trigger_alerts is not None
    found, unknown = _check_templates(renderer, types, every_rule, loaded.locate, alerts)
    found += _broken_files(renderer, loaded.locate, found)
    warnings += _unrendered_files(renderer, loaded.locate)
    if problems or found:
        raise ConfigError(in_file_order(problems + found))
    return Compiled(loaded, rules, renderer, tuple(in_file_order(warnings + unknown)))


def _check_templates(
    renderer: Renderer,
    channel_types: Mapping[str, str],
    rules: Mapping[int, RuleConfig],
    locate: Locate,
    alerts: bool,
) -> tuple[list[Problem], list[str]]:
    """Problems and warnings of the templates each rule renders for the types of its channels
    (rules by their index in the file; a name not in `channel_types` is reported elsewhere),
    tried on sample events (of alert webhooks' runs too where `alerts` come)."""
    problems: list[Problem] = []
    warnings: list[str] = []
    # most rules share a few templates
    findings: dict[tuple[str, str, str, tuple[str, ...]], _Findings] = {}
    for i, rule in rules.items():
        where = locate(("rules", i, "template"))
        types = dict.fromkeys(channel_types[n] for n in rule.notify if n in channel_types)
        for kind in (channel_registry.REGISTRY[t] for t in types):
            templates = _templates_of(rule, renderer, kind.type, kind.parts[0])
            for template, part in itertools.product(templates, kind.parts):
                key = (kind.type, template, part, sample_kinds(rule.match.event, alerts=alerts))
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


def _findings(
    renderer: Renderer, channel_type: str, template: str, part: str, kinds: tuple[str, ...]
) -> _Findings:
    """_template_findings, but none for a shipped template when templates.dir overrides no
    file: it and all it reaches are relay's own, whose tests find nothing in any of them
    (test_every_shipped_template_is_found_fine); checking them cost every start and every
    `relay check` ~0.35 s of CPU. With an override, one it reaches may be the user's."""
    if not renderer.overrides and renderer.has_template(channel_type, template, part):
        return _NONE
    why, unknown, missing = _template_findings(renderer, channel_type, template, part, kinds)
    if why is not None and not _has(renderer, channel_type, template, part):
        why += _elsewhere(renderer, template)
    return why, unknown, missing


def _has(renderer: Renderer, channel_type: str, template: str, part: str) -> bool:
    """Whether the file of a template is there, readable or not (not UTF-8: its own problem)."""
    try:
        return renderer.has_template(channel_type, template, part)
    except UnicodeDecodeError:
        return True


def _elsewhere(renderer: Renderer, template: str) -> str:
    """Where a template a channel type lacks exists (`alertmanager`, a webhook body, notifying
    Slack): the types with every part of it, shipped or in templates.dir, said after "not
    found"; "" when none has it (a typo)."""
    types = [
        kind.type
        for kind in channel_registry.REGISTRY.values()
        if all(_has(renderer, kind.type, template, part) for part in kind.parts)
    ]
    return f": {template} exists for {', '.join(types)} only" if types else ""


def _template_findings(
    renderer: Renderer, channel_type: str, template: str, part: str, kinds: tuple[str, ...]
) -> _Findings:
    """The problem of a template; a name it reads that its context lacks (it renders empty); a
    template it includes that does not exist (that line renders the fallback when it runs); a
    render failing on every sample event of `kinds` (sample_kinds). Each takes ~25 ms (Jinja
    parses and walks the tree): once per template and events, not per rule."""
    unknown = [
        f"{channel_type}/{template}.{part}.j2:{line}: `{name}` is not in the template "
        "context (it renders empty)"
        for name, line in renderer.unknown_names(channel_type, template, part)
    ] + [
        f"{channel_type}/{template}.{part}.j2:{line}: `{read}` is no field of a run (it "
        f"renders empty): did you mean `{meant}`?"
        for read, line, meant in renderer.misread_fields(channel_type, template, part)
    ]
    missing = [
        f"{channel_type}: {why} (the fallback is sent when that line runs)"
        for why in renderer.missing_references(channel_type, template, part)
    ]
    problem = renderer.check(channel_type, template, part)
    tried = problem is None and not missing  # a missing include fails it: said already
    if tried and (why := fails_always(renderer, channel_type, template, part, kinds)):
        unknown.append(
            f"{channel_type}/{template}.{part}.j2 fails on every sample event relay tried for"
            f" the rule ({why}): the fallback would be sent each time"
        )
    elif (
        problem is None
        and part == "json"
        and (why := invalid_json(renderer, channel_type, template))
    ):
        unknown.append(why)
    return problem, unknown, missing


def _broken_files(renderer: Renderer, locate: Locate, reported: list[Problem]) -> list[Problem]:
    """The files of templates.dir that do not compile, but for those reported at a rule."""
    where = locate(("templates", "dir"))
    return [
        Problem(where, "templates.dir", why)
        for why in renderer.broken_overrides()
        if not any(problem.message.endswith(why) for problem in reported)
    ]


def _unrendered_files(renderer: Renderer, locate: Locate) -> list[str]:
    """Warnings of the files of templates.dir no lookup finds (relay.template_layout)."""
    if not renderer.overrides:
        return []
    where = locate(("templates", "dir"))
    parts = {kind.type: kind.parts for kind in channel_registry.REGISTRY.values()}
    found = unrendered_files(renderer.overrides, renderer.reached_by_overrides(), parts)
    return [f"{where}: templates.dir: {why}" for why in found]


def _templates_of(rule: RuleConfig, renderer: Renderer, kind: str, part: str) -> list[str]:
    """The templates a rule renders for channel type `kind`: its own, the digest's and the
    recovery's if it has them (the rule's own `<template>_digest`, if `kind` has it, ...)."""
    owns = [rule_template(rule, event) for event in dict.fromkeys(rule.match.event)]
    variants = [DIGEST_TEMPLATE] if rule.group_by is not None else []  # `[]`: one group
    variants += [RECOVERY_TEMPLATE] if rule.update_on_recovery else []
    found = [renderer.variant(kind, own, variant, part) for own in owns for variant in variants]
    return list(dict.fromkeys(rule_templates(rule) + found))
