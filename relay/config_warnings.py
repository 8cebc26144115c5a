"""Warnings about a valid configuration: what loads and runs, and most likely does not do what
the operator meant (a rule that never fires, a token that came out empty, a feed window
Trigger.dev cuts...). `relay check` prints them and `relay serve` logs them at each load; each
names its file:line."""

from __future__ import annotations

import difflib

from relay.config import Config
from relay.config_load import LoadedConfig
from relay.config_rules import MatchConfig, RuleConfig
from relay.durations import format_duration
from relay.errors import did_you_mean
from relay.grouping import EVERY_RUN
from relay.model import Run, Timing
from relay.rule_filters import passes_filters, statuses_of
from relay.rules import Locate
from relay.statuses import EVENT_STATUSES, FAILURE_STATUSES, KNOWN_STATUSES, RAW_STATUS_MAP
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
    warnings += _unknown_statuses(config.rules, locate)
    warnings += _never_matching(config.rules, locate)
    warnings += _filtering_what_events_lack(config.rules, locate)
    warnings += _shadowed(config.rules, locate)
    warnings += _match_names_in_group_by(config.rules, locate)
    warnings += _repeat_under_group_interval(config.rules, locate)
    warnings += _yaml11_words(loaded)
    warnings += _feed_warnings(config, locate)
    warnings += _timeout_inside_long_poll(config, locate)
    warnings += _recovering_nowhere(config, locate)
    warnings += _inhibiting_nothing(config, locate)
    warnings += _empty_tokens(loaded)
    return warnings


_RUN_STATUSES = KNOWN_STATUSES | frozenset(RAW_STATUS_MAP) | FAILURE_STATUSES


def _unknown_statuses(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for a run rule's status relay does not know: most likely a typo (`FAILLED`),
    never matching; but Trigger.dev adds statuses, and incoming unknown ones are kept as they
    are, so a rule may name one before relay knows it, and it is matched as written."""
    out = []
    for i, rule in enumerate(rules):
        if "run" not in rule.match.event:
            out += _uncarried_statuses(rule, locate(("rules", i, "match", "status")), i)
            continue
        known = _RUN_STATUSES.union(*(EVENT_STATUSES.get(e, ()) for e in rule.match.event))
        for name in rule.match.status or ():
            status = name.strip().upper()
            if name.lower() == "failure" or status in known:
                continue
            hint = did_you_mean(status, KNOWN_STATUSES)
            out.append(
                f"{locate(('rules', i, 'match', 'status'))}: rules[{i}].match.status: {name!r}"
                f" is not a status relay knows{hint}; it matches only a run sent with it"
            )
    return out


def _uncarried_statuses(rule: RuleConfig, where: str, i: int) -> list[str]:
    """Warnings for each status of an event rule that its event never carries (`TIMEDOUT`
    beside `FAILED`): when none is carried, `_never_matching` says so for the whole rule."""
    carried = _carried(rule.match)
    wanted = statuses_of(rule.match.status)
    if carried is None or not wanted or not wanted & carried:
        return []
    out = []
    for name in rule.match.status or ():
        if (statuses_of([name]) or frozenset()) & carried:
            continue
        hint = did_you_mean(name.strip().upper(), carried)
        out.append(
            f"{where}: rules[{i}].match.status: {name!r} is not a status event"
            f" {' or '.join(rule.match.event)} carries{hint}; it never matches"
        )
    return out


def _never_matching(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules whose `status:` lists nothing their `event` can carry (`event: error`
    with `status: [failure]`): valid, and never firing."""
    out = []
    for i, rule in enumerate(rules):
        carried = _carried(rule.match)
        wanted = statuses_of(rule.match.status)
        if carried is not None and wanted is not None and not wanted & carried:
            out.append(
                f"{locate(('rules', i, 'match', 'status'))}: rules[{i}].match.status: event"
                f" {' or '.join(rule.match.event)} carries {', '.join(sorted(carried))}; this"
                " rule never fires"
            )
    return out


def _carried(match: MatchConfig) -> frozenset[str] | None:
    """The statuses the events of `match` carry, or None when one is `run` (any status)."""
    events = match.event
    return None if "run" in events else frozenset().union(*(EVENT_STATUSES[e] for e in events))


_NOT_IN_ALERTS = ("tags", "cost_cents", "base_cost_cents", "duration_ms", "is_test", "metadata")
# The match keys an event other than `run` has no value for: no alert webhook carries tags,
# cost, duration, metadata or a test flag, and a deployment has no task (its taskIdentifier
# is ""). A filter on them sees the event as a run without them.
_LACKED_KEYS = {
    "deployment.failed": ("task", "task_regex", *_NOT_IN_ALERTS),
    "deployment.success": ("task", "task_regex", *_NOT_IN_ALERTS),
    "error": _NOT_IN_ALERTS,
}


def _filtering_what_events_lack(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules filtering an event on a key it never carries (`event:
    deployment.failed` with `task: billing/*` or `cost_cents: {gt: 500}`) in a way no such
    event passes: valid, and never firing."""
    out = []
    for i, rule in enumerate(rules):
        events = rule.match.event
        for key in dict.fromkeys(key for event in events for key in _LACKED_KEYS.get(event, ())):
            if all(_lacked(rule.match, key, event) for event in events):
                out.append(
                    f"{locate(('rules', i, 'match', key))}: rules[{i}].match.{key}: event"
                    f" {' or '.join(events)} carries no {key}; this rule never fires"
                )
    return out


def _lacked(match: MatchConfig, key: str, event: str) -> bool:
    """Whether no update of `event` passes the filter of `match` on `key`, a value it lacks."""
    value = getattr(match, key)
    if value is None or key not in _LACKED_KEYS.get(event, ()):
        return False
    alone = MatchConfig.model_construct(event=[event], **{key: value})
    return not passes_filters(alone, Run(id="-", event=event, status=""))


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


# the match keys that do not narrow a rule down within its event, status and test flag
_BROAD_KEYS = frozenset({"event", "status", "is_test"})


def _shadowed(rules: list[RuleConfig], locate: Locate) -> list[str]:
    """Warnings for rules that never fire because a rule above them, without `continue` or
    `when`, matches every update they could (a catch-all left above the specific rules):
    the first match wins, so they silently match nothing. Only what is sure is said."""
    out = []
    stoppers = [i for i, rule in enumerate(rules) if _stops_broadly(rule)]  # few, if any
    for j, later in enumerate(rules):
        above = next((i for i in stoppers if i < j and _covers(rules[i], later)), None)
        if above is not None:
            out.append(
                f"{locate(('rules', j, 'name'))}: rules[{j}] ({later.name}): rule"
                f" {rules[above].name} above it matches every update it could and has no"
                " `continue: true`; this rule never fires"
            )
    return out


def _stops_broadly(rule: RuleConfig) -> bool:
    """Whether `rule` stops the rules below it and narrows only by event, status or test."""
    return not (
        rule.continue_ or rule.when is not None or rule.match.model_fields_set - _BROAD_KEYS
    )


def _covers(first: RuleConfig, later: RuleConfig) -> bool:
    """Whether `first` (one that stops broadly) matches every update `later` matches."""
    match, other = first.match, later.match
    statuses, wanted = statuses_of(match.status), statuses_of(other.status)
    return (
        {*other.event} <= {*match.event}
        and (statuses is None or (wanted is not None and wanted <= statuses))
        and match.is_test in (None, other.is_test)
    )


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


# `match` (and silence) keys a `group_by` path may be written with by mistake: group_by reads
# the run as JSON, where they are spelt otherwise, so every run would fall in the empty group
_RUN_FIELD_OF_MATCH_KEY = {
    "task": "taskIdentifier",
    "tag": "tags",
    "cost_cents": "costInCents",
    "base_cost_cents": "baseCostInCents",
    "duration_ms": "durationMs",
    "is_test": "isTest",
}


# the fields of a run object (SPEC §2, and the SDK's beside them: TRIGGER.md §1), which a
# `group_by` head close to but not one of is a misspelling
_RUN_FIELDS = frozenset(Run.model_fields) | {
    "version", "batchId", "friendlyId", "depth", "triggerFunction", "attemptCount",
    "isQueued", "isWaiting", "isExecuting", "isCompleted", "isFailed", "isSuccess",
    "isCancelled", "schedule", "relatedRuns", "environment", "project",
    "env",  # runs.list's {id, name}, kept beside the `environment` read from it
    # a run from Trigger.dev's alert webhooks (TRIGGER.md §3.2) keeps the alert's other parts
    "alert", "organization", "machine", "dashboardUrl", "isOutOfMemoryError",
}  # fmt: skip
# `task` is the alert webhook run's task (TRIGGER.md §3.2: alert.run.failed, and the legacy
# body's fileName); alone, it is the match key's name for taskIdentifier
_ALERT_TASK_FIELDS = frozenset(
    {"id", "filePath", "fileName", "exportName", "version", "sdkVersion", "cliVersion"}
)


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
    if _run_path(path):
        return None
    head = path.partition(".")[0]
    if head in _RUN_FIELD_OF_MATCH_KEY:
        return _RUN_FIELD_OF_MATCH_KEY[head]
    close = difflib.get_close_matches(head, _RUN_FIELDS, n=1, cutoff=0.8)
    return close[0] if close else None


def _run_path(path: str) -> bool:
    """Whether `path` starts at a field of a run (or of an alert webhook run's task)."""
    head, _, rest = path.partition(".")
    return head in _RUN_FIELDS or (head == "task" and rest.split(".")[0] in _ALERT_TASK_FIELDS)


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
