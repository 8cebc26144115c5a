"""Warnings about a valid configuration: what loads and runs, and most likely does not do what
the operator meant (a rule that never fires, a token that came out empty, a feed window
Trigger.dev cuts...). `relay check` prints them and `relay serve` logs them at each load; each
names its file:line."""

from __future__ import annotations

from relay.config import Config
from relay.config_load import LoadedConfig
from relay.config_rules import RuleConfig
from relay.durations import format_duration
from relay.errors import did_you_mean
from relay.grouping import EVERY_RUN
from relay.match_warnings import match_warnings
from relay.model import Timing
from relay.rule_compile import Locate
from relay.rule_when import when_misreads
from relay.run_fields import ALERT_TASK_FIELDS, RUN_FIELDS, meant_field
from relay.yamlconf import dotted


def config_warnings(loaded: LoadedConfig) -> list[str]:
    """Every warning about `loaded`, in the order of the checks below."""
    config, locate = loaded.config, loaded.locate
    warnings = []
    if config.templates.dir is not None and not config.templates.dir.is_dir():
        where = locate(("templates", "dir"))
        warnings.append(f"{where}: templates.dir: no such directory; the shipped templates apply")
    if not config.rules:  # valid, and most likely not what the operator meant
        warnings.append(f"{loaded.source.filename}: no rules: updates are taken in, none is sent")
    warnings += match_warnings(config.rules, locate)
    warnings += _match_names_in_group_by(config.rules, locate)
    warnings += _misread_in_when(config.rules, locate)
    warnings += _repeat_under_group_interval(config.rules, locate)
    warnings += _yaml11_words(loaded)
    warnings += _feed_warnings(config, locate)
    warnings += _timeout_inside_long_poll(config, locate)
    warnings += _recovering_nowhere(config, locate)
    warnings += _inhibiting_nothing(config, locate)
    warnings += _empty_tokens(loaded)
    return warnings


def _empty_tokens(loaded: LoadedConfig) -> list[str]:
    """Warnings for a token the file sets that came out empty (`${RELAY_INGEST_TOKEN}` set to
    ""): valid, as "unset", and the endpoints it guards then take requests from anyone."""
    server = loaded.source.data.get("server") if isinstance(loaded.source.data, dict) else None
    tokens = loaded.config.server
    guarded = {
        "auth_token": "POST /v1/runs takes updates without a token",
        "admin_token": "the admin endpoints (DLQ, silences, history) take requests without a token",
    }
    if tokens.auth_token is not None:
        del guarded["admin_token"]  # the admin endpoints use auth_token
    written = server if isinstance(server, dict) else {}
    return [
        f"{loaded.locate(('server', key))}: server.{key} is empty: {effect}"
        for key, effect in guarded.items()
        if key in written and getattr(tokens, key) is None
    ]


def _inhibiting_nothing(config: Config, locate: Locate) -> list[str]:
    """Warnings for an inhibit rule's `target_match` naming a rule or channel the file has not
    (a typo, a rule since renamed): valid, and it mutes nothing under that name."""
    known = {"rule": {rule.name for rule in config.rules}, "channel": set(config.channels)}
    out = []
    for i, inhibit in enumerate(config.inhibit_rules):
        for key, names in known.items():
            value = inhibit.target_match.get(key, [])
            for name in [value] if isinstance(value, str) else value:
                if name not in names:
                    out.append(
                        f"{locate(('inhibit_rules', i, 'target_match', key))}: inhibit_rules[{i}]"
                        f".target_match.{key}: no {key} is named {name!r}"
                        f"{did_you_mean(name, names, quoted=True)}; it mutes nothing"
                    )
    return out


def _recovering_nowhere(config: Config, locate: Locate) -> list[str]:
    """Warnings for rules with `update_on_recovery` whose channels all have `send_resolved:
    false`: valid, and no recovery is ever sent."""
    out = []
    for i, rule in enumerate(config.rules):
        channels = [config.channels.get(name) for name in rule.notify]
        if rule.update_on_recovery and all(c is not None and not c.send_resolved for c in channels):
            out.append(
                f"{locate(('rules', i, 'update_on_recovery'))}: rules[{i}].update_on_recovery:"
                " every channel of this rule has send_resolved: false; no recovery is sent"
            )
    return out


# Trigger.dev clamps a tag feed's createdAt to this (REALTIME_MAXIMUM_CREATED_AT_FILTER_AGE_IN_MS)
TRIGGER_MAX_WINDOW_S = 86400


def _feed_warnings(config: Config, locate: Locate) -> list[str]:
    """Warnings for Realtime feeds: one listed twice (followed once), and a tag feed whose
    created_at window Trigger.dev cuts to a day (runs older than that are never seen)."""
    realtime = config.sources.realtime
    out: list[str] = []
    seen: set[tuple[object, ...]] = set()
    for i, feed in enumerate(realtime.feeds if realtime is not None else ()):
        where = f"{locate(('sources', 'realtime', 'feeds', i))}: sources.realtime.feeds[{i}]"
        tags = None if feed.tags is None else frozenset(feed.tags)
        key = (tags, feed.run_id, feed.batch_id, feed.created_at if tags is not None else None)
        if key in seen:
            out.append(f"{where}: the same feed is listed before; it is followed once")
        seen.add(key)
        if tags is not None and feed.window_s > TRIGGER_MAX_WINDOW_S:
            out.append(
                f"{where}.created_at: Trigger.dev cuts the window to 1d (unless a self-hosted"
                f" server raises REALTIME_MAXIMUM_CREATED_AT_FILTER_AGE_IN_MS); older runs are"
                f" not in the feed"
            )
    return out


# How long Trigger.dev holds a quiet live request: Electric 20 s, the native backend 20 s ±15 %
LONG_POLL_HOLD_S = 23.0


def _timeout_inside_long_poll(config: Config, locate: Locate) -> list[str]:
    """A Realtime `timeout` the server's long-poll hold outlasts: every quiet live request
    fails by timeout (a warning line, an error counted, a backoff before the next request)."""
    realtime = config.sources.realtime
    if realtime is None or realtime.timeout > LONG_POLL_HOLD_S:
        return []
    where = locate(("sources", "realtime", "timeout"))
    return [
        f"{where}: sources.realtime.timeout: Trigger.dev holds a quiet live request about 20 s"
        " (up to 23 s); a timeout this short ends each one as a failed request (a warning, an"
        " error counted, a backoff before the next)"
    ]


def _repeat_under_group_interval(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for a digest rule whose `repeat_interval` (as written, or the default) is
    shorter than its `group_interval`: valid, and it has no effect, a group is closed only
    after `group_interval` of quiet (Alertmanager warns of it at load the same way)."""
    default = Timing()
    out = []
    for i, rule in enumerate(rules):
        if rule.group_by is None or (rule.repeat_interval, rule.group_interval) == (None, None):
            continue
        repeat = default.repeat_interval_s if rule.repeat_interval is None else rule.repeat_interval
        group = default.group_interval_s if rule.group_interval is None else rule.group_interval
        if repeat < group:
            written = rule.repeat_interval is not None
            key, default_ = ("repeat_interval", "") if written else ("group_interval", " (default)")
            out.append(
                f"{locate(('rules', i, key))}: rules[{i}].repeat_interval {format_duration(repeat)}"
                f"{default_} is shorter than group_interval {format_duration(group)}: it has no"
                " effect, a group is closed after group_interval of quiet at the soonest"
            )
    return out


def _misread_in_when(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for `when: run.costInCent > 100`: valid, the field reads as nothing (metadata
    is free-form: only a name close to a run field's is taken for a misspelling)."""
    return [
        f"{locate(('rules', i, 'when'))}: rules[{i}].when: `{read}` is no field of a run"
        f" (it reads as nothing): did you mean `{meant}`?"
        for i, rule in enumerate(rules)
        if rule.when
        for read, meant in when_misreads(rule.when)
    ]


def _match_names_in_group_by(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for `group_by: [task]`, `[taskIdentifer]`, `[alertname]` or `[severity]`
    (Alertmanager's habits): valid (a run keeps unknown fields), and one group, with the paths
    that group."""
    out = []
    for i, rule in enumerate(rules):
        if "run" not in rule.match.event:
            continue
        for j, path in enumerate(rule.group_by or ()):
            where = f"{locate(('rules', i, 'group_by', j))}: rules[{i}].group_by[{j}]: a run has"
            field = _meant_field(path)
            if path == "alertname":  # Alertmanager's habit: its rule's name
                out.append(
                    f"{where} no field 'alertname': the rule's runs fall in one group, as with"
                    " `group_by: []` (a group is one rule's already, as Alertmanager's alertname"
                    f" makes it); to split it, group by a run field ({_GROUPING_FIELDS})"
                )
            elif field is not None:
                out.append(
                    f"{where} no field {path!r}, so every run falls in one group; group_by reads"
                    f" the run as JSON: did you mean {field!r}?"
                )
            elif path != EVERY_RUN and not _run_path(path):
                out.append(
                    f"{where} no field {path!r} (unless the runs posted carry one), so every run"
                    f" falls in one group; group by a run field ({_GROUPING_FIELDS}): did you"
                    f" mean 'metadata.{path}'?"
                )
    return out


# what a group_by usefully names, for the warning of a path no run has
_GROUPING_FIELDS = "taskIdentifier, status, tags, metadata.KEY, environment.id, isTest, version"


def _meant_field(path: str) -> str | None:
    """The run field a group_by path's first part names by a match key's name, or misspelled;
    `task` too, unless the path reads the alert webhook run's task (`task.version`)."""
    return None if _run_path(path) else meant_field(path.partition(".")[0])


def _run_path(path: str) -> bool:
    """Whether `path` starts at a field of a run (or of an alert webhook run's task)."""
    head, _, rest = path.partition(".")
    return head in RUN_FIELDS or (head == "task" and rest.split(".")[0] in ALERT_TASK_FIELDS)


def _yaml11_words(loaded: LoadedConfig) -> list[str]:
    """Warnings for `match.metadata` values like `region: no`: the text "no" since YAML 1.2
    reading, a boolean to YAML 1.1 (and to relay before): a rule meant for `false` would no
    longer fire."""
    out = []
    for path in sorted(loaded.source.yaml11_words, key=str):
        if len(path) == 5 and path[0] == "rules" and path[2:4] == ("match", "metadata"):
            where = f"{loaded.locate(path)}: {dotted(path)}"
            word = loaded.config.rules[int(path[1])].match.metadata or {}
            out.append(
                f"{where}: {word.get(str(path[4]))!r} matches that text; for a boolean write"
                " true or false, and quote the text to silence this warning"
            )
    return out
