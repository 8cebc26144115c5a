"""Group windows as a table, with a fixed clock."""

from __future__ import annotations

from relay.channels import settings_models
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.grouping import (
    digest_id,
    flushed,
    group_key,
    group_labels,
    retimed,
    schedule,
    timing_value,
    timings_changed,
)
from relay.model import GroupState, Timing

T = Timing(group_wait_s=30, group_interval_s=300, repeat_interval_s=3600)


def test_first_run_waits_group_wait_and_others_join() -> None:
    g = schedule(None, "k", 100.0, T)
    assert g.next_flush == 130.0
    g = schedule(g, "k", 110.0, T)
    assert g.next_flush == 130.0 and g.last_seen == 110.0


def test_a_reload_retimes_a_waiting_digest_as_if_its_timing_had_always_been() -> None:
    """A digest waiting when a reload changed group_wait or group_interval goes when the new
    values say, counted from its group's history (its first waiting run, its last digest),
    never before the reload."""
    short = Timing(group_wait_s=2, group_interval_s=5, repeat_interval_s=3600)
    assert retimed(None, 100.0, 103.0, short) == 103.0  # first digest: 100 + 2 is past
    assert retimed(None, 100.0, 101.0, short) == 102.0
    assert retimed(None, 100.0, 101.0, T) == 130.0  # lengthened: 100 + 30
    assert retimed(130.0, 200.0, 201.0, T) == 430.0  # last digest at 130 + 300
    assert retimed(130.0, 200.0, 201.0, short) == 202.0  # 135 was past: woke it, + 2
    assert retimed(130.0, 132.0, 133.0, short) == 135.0  # joined within the interval
    assert retimed(130.0, 430.0, 431.0, T) == 460.0  # woke it exactly at 130 + 300, as schedule


def test_a_start_retimes_only_the_rules_whose_stored_windows_changed() -> None:
    """A rule with no windows stored (new, or an older relay wrote none) has nothing waiting
    under other windows; one stored with the same windows has nothing to re-time."""
    longer = Timing(group_wait_s=60, group_interval_s=300, repeat_interval_s=3600)
    stored = {"same": timing_value(T), "changed": timing_value(T)}
    timings = {"same": T, "changed": longer, "new": longer}
    assert timings_changed(stored, timings) == {"changed": longer}
    assert timing_value(longer) != timing_value(T)
    assert timing_value(Timing(30, 300, 7200)) == timing_value(T)  # repeat_interval: not kept


def test_after_a_digest_new_runs_wait_group_interval() -> None:
    g = flushed(schedule(None, "k", 100.0, T), 130.0)
    assert g.next_flush is None and g.last_sent == 130.0 and g.last_seen == 130.0
    g = schedule(g, "k", 200.0, T)
    assert g.next_flush == 430.0  # 130 + 300
    g = flushed(g, 430.0)
    woken = schedule(g, "k", 900.0, T)  # interval already passed: group_wait, as a new group
    assert woken.next_flush == 930.0
    assert schedule(woken, "k", 905.0, T).next_flush == 930.0  # a burst, run by run: one digest


def test_a_run_joining_a_digest_already_due_waits_for_the_next_one() -> None:
    """Its digest may be on its way (claimed, being sent): the run goes group_interval later,
    as Alertmanager's do, instead of on its own right after that digest."""
    g = schedule(None, "k", 100.0, T)  # due at 130
    late = schedule(g, "k", 130.5, T)
    assert late.next_flush == 430.5 and late.last_seen == 130.5
    assert schedule(late, "k", 131.0, T).next_flush == 430.5  # the next ones join it
    assert flushed(late, 131.0).next_flush == 430.5  # the due digest went out: it stays


def test_a_run_joining_a_later_digest_already_due_waits_a_whole_interval_after_it() -> None:
    """As for the first digest, so for a later one: the group's last digest went at 130, the
    next is due at 430; a run at 430.5 goes group_interval after that one, not group_wait
    after itself as a group woken from quiet would."""
    g = schedule(flushed(schedule(None, "k", 100.0, T), 130.0), "k", 200.0, T)
    assert g.next_flush == 430.0
    assert schedule(g, "k", 430.5, T).next_flush == 730.5


def test_a_run_exactly_group_interval_after_the_last_digest_waits_group_wait() -> None:
    """The interval is over at 430: a run then wakes the group as a new one, group_wait later
    (the rest of its burst joins), not at once on its own."""
    g = flushed(schedule(None, "k", 100.0, T), 130.0)
    assert schedule(g, "k", 430.0, T).next_flush == 460.0
    assert schedule(g, "k", 429.0, T).next_flush == 430.0


def test_runs_arriving_together_when_a_digest_is_due_at_once_share_it() -> None:
    """One batch shares `now`: with the interval passed (or `group_wait: 0s`) the first run
    used to go alone at once and the others group_interval later."""
    at_once = Timing(group_wait_s=0, group_interval_s=300, repeat_interval_s=3600)
    first = schedule(None, "k", 100.0, at_once)
    assert schedule(first, "k", 100.0, at_once).next_flush == 100.0
    woken = schedule(flushed(first, 100.0), "k", 900.0, at_once)  # interval passed: at once
    assert schedule(woken, "k", 900.0, at_once).next_flush == 900.0


def test_a_waiting_digest_is_joined_whatever_repeat_interval_says() -> None:
    # repeat_interval shorter than group_wait used to open a new group under the waiting
    # digest: two runs 20 s apart went as two messages
    short = Timing(group_wait_s=30, group_interval_s=300, repeat_interval_s=10)
    g = schedule(schedule(None, "k", 100.0, short), "k", 120.0, short)
    assert g.next_flush == 130.0 and g.last_seen == 120.0


def test_a_quiet_group_closes_after_repeat_interval() -> None:
    g = flushed(schedule(None, "k", 100.0, T), 130.0)
    g = schedule(g, "k", 130.0 + 3600.0, T)
    assert g.next_flush == 130.0 + 3600.0 + 30.0 and g.last_sent is None


def test_a_group_stays_open_for_group_interval_whatever_repeat_interval_says() -> None:
    short = Timing(group_wait_s=30, group_interval_s=300, repeat_interval_s=10)
    g = schedule(flushed(schedule(None, "k", 100.0, short), 130.0), "k", 200.0, short)
    assert g.next_flush == 430.0 and g.last_sent == 130.0  # not 230: a new group's group_wait
    late = schedule(flushed(g, 430.0), "k", 430.0 + 300.0, short)
    assert late.next_flush == 760.0 and late.last_sent is None  # quiet that long: closed


def test_labels_and_keys() -> None:
    run = {"taskIdentifier": "t", "tags": ["a", "b"], "metadata": {"customer": {"tier": "pro"}}}
    labels = group_labels(run, ["taskIdentifier", "metadata.customer.tier", "tags", "nope.x"])
    assert labels == {
        "taskIdentifier": "t",
        "metadata.customer.tier": "pro",
        "tags": "a,b",
        "nope.x": "",
    }
    assert group_key("r", "c", labels) == group_key("r", "c", dict(reversed(list(labels.items()))))
    assert group_key("r", "c", labels) != group_key("r", "d", labels)
    assert group_labels(run, []) == {}


def test_keys_and_digest_ids_outlive_an_upgrade() -> None:
    """Stored and sent, they must read the same to the next release: a group's key (a run
    posted after the upgrade joins the digest waiting in the store, not a second one) and a
    digest's id (its webhook-id: a digest retried after the upgrade is deduplicated by the
    receiver)."""
    labels = {"taskIdentifier": "billing/charge", "tags": "a,b"}
    assert group_key("failures", "slack", labels) == "grp_5ccd125f2b694da46c409f77"
    assert digest_id(["ntf_b", "ntf_a"]) == "dgs_34119bd79404808fa0a9b4ce"
    assert digest_id(["ntf_a", "ntf_b"]) == "dgs_34119bd79404808fa0a9b4ce"


def test_labels_read_paths_as_metadata_matchers_do() -> None:
    run = {
        "id": "run_1",
        "tags": ["b", "a"],
        "metadata": {"p.q": {"r": "dotted"}, "items": [{"sku": "x"}], "a.b": 1},
    }
    paths = ["metadata.p.q.r", "metadata.items.0.sku", "metadata.a.b", "metadata.items.9"]
    assert group_labels(run, paths) == {
        "metadata.p.q.r": "dotted",  # a key with dots, not only as the last part
        "metadata.items.0.sku": "x",  # a number picks a list item
        "metadata.a.b": "1",
        "metadata.items.9": "",
    }
    # tags are a set: the same tags in another order are the same group
    assert group_labels(run, ["tags"]) == group_labels({"tags": ["a", "b"]}, ["tags"])


def test_labels_spell_values_as_json_not_python() -> None:
    run = {"metadata": {"vip": True, "plan": {"tier": "pro", "seats": 5}, "ids": [2, None]}}
    assert group_labels(run, ["metadata.vip", "metadata.plan", "metadata.ids"]) == {
        "metadata.vip": "true",  # was `True`, in every digest's title
        "metadata.plan": '{"seats":5,"tier":"pro"}',
        "metadata.ids": "2,null",
    }


def test_every_run_is_its_own_group_with_dots() -> None:
    # Alertmanager's `group_by: ['...']` groups by every label: no two alerts share a group
    one, two = {"id": "run_1", "taskIdentifier": "t"}, {"id": "run_2", "taskIdentifier": "t"}
    assert group_labels(one, ["..."]) != group_labels(two, ["..."])
    assert group_labels(one, ["..."]) == {"...": "run_1"}


def test_state_is_plain_data() -> None:
    assert GroupState("k", None, None, 1.0) == GroupState("k", None, None, 1.0)


def group_by_warnings(paths: str) -> list[str]:
    """`relay check`'s warnings about a failure rule's `group_by: [paths]`."""
    config = f"""\
channels:
  out: {{type: console}}
rules:
  - name: per-task
    match: {{status: [failure]}}
    notify: [out]
    group_by: [{paths}]
"""
    compiled = compile_config(parse_config(config, "c.yaml", settings_models(), env={}))
    return [w for w in compiled.warnings if "group_by" in w]


def test_check_warns_of_a_match_key_written_as_a_group_by_path() -> None:
    assert group_by_warnings("task, metadata.tenant, tag") == [
        "c.yaml:7: rules[0].group_by[0]: a run has no field 'task', so every run falls in one"
        " group; group_by reads the run as JSON: did you mean 'taskIdentifier'?",
        "c.yaml:7: rules[0].group_by[2]: a run has no field 'tag', so every run falls in one"
        " group; group_by reads the run as JSON: did you mean 'tags'?",
    ]


def timing_warnings(timing: str) -> list[str]:
    """`relay check`'s warnings about a digest rule with `timing` (flow mapping entries)."""
    config = f"""\
channels:
  out: {{type: console}}
rules:
  - {{name: per-task, match: {{status: [failure]}}, notify: [out], group_by: [id], {timing}}}
"""
    compiled = compile_config(parse_config(config, "c.yaml", settings_models(), env={}))
    return [w for w in compiled.warnings if "interval" in w]


def test_check_warns_of_a_repeat_interval_shorter_than_group_interval() -> None:
    """Since a shorter repeat_interval no longer shortens group_interval (530c5df), it has no
    effect: `relay check` said nothing of it; Alertmanager warns at load."""
    assert timing_warnings("group_interval: 30m, repeat_interval: 10m") == [
        "c.yaml:4: rules[0].repeat_interval 10m is shorter than group_interval 30m: it has no"
        " effect, a group is closed after group_interval of quiet at the soonest"
    ]
    assert timing_warnings("group_interval: 5h") == [  # under the default repeat_interval, 4h
        "c.yaml:4: rules[0].repeat_interval 4h (default) is shorter than group_interval 5h: it has no"
        " effect, a group is closed after group_interval of quiet at the soonest"
    ]
    assert timing_warnings("group_interval: 5m, repeat_interval: 5m") == []
    assert timing_warnings("repeat_interval: 1h") == []  # over the default group_interval, 5m


def test_check_warns_of_a_misspelled_run_field_in_group_by() -> None:
    """`group_by: [taskIdentifer]` put every run in one group without a word: a run keeps
    unknown fields, so the path is valid, and no run has it."""
    warnings = group_by_warnings("taskIdentifer, metdata.tenant, taskIdentifier, version")
    assert [w.split(": did you mean ")[1] for w in warnings] == ["'taskIdentifier'?", "'metadata'?"]


def test_check_warns_of_a_group_by_path_no_run_has() -> None:
    """`group_by: [severity]`, as an Alertmanager route groups by a label, said nothing: no
    run has the field (nor a name near it), so every run fell in one group. It warns with
    the paths that group, and the metadata key the operator may have meant; a path under a
    run field (metadata, environment, runs.list's env) does not."""
    assert group_by_warnings("'...'") == []  # a group per run
    warnings = group_by_warnings("severity, metadata.severity, environment.id, env.name")
    assert warnings == [
        "c.yaml:7: rules[0].group_by[0]: a run has no field 'severity' (unless the runs posted"
        " carry one), so every run falls in one group; group by a run field (taskIdentifier,"
        " status, tags, metadata.KEY, environment.id, isTest, version): did you mean"
        " 'metadata.severity'?"
    ]


def test_check_says_a_group_is_the_rules_already_for_alertname() -> None:
    """`group_by: [alertname]`, Alertmanager's habit, was told to mean 'metadata.alertname':
    a group key holds the rule (and channel) already, so what it meant is `group_by: []`."""
    assert group_by_warnings("alertname") == [
        "c.yaml:7: rules[0].group_by[0]: a run has no field 'alertname': the rule's runs fall"
        " in one group, as with `group_by: []` (a group is one rule's already, as"
        " Alertmanager's alertname makes it); to split it, group by a run field"
        " (taskIdentifier, status, tags, metadata.KEY, environment.id, isTest, version)"
    ]
    labels = group_labels({"id": "run_1"}, ["alertname"])
    assert group_key("r", "c", labels) != group_key("other", "c", labels)


def test_check_takes_the_alert_webhook_runs_task_for_a_field() -> None:
    """A run from an alert.run.failed webhook keeps its `task` (id, filePath, version ...):
    `group_by: [task.version]` groups those runs by deployment, and was taken for `task`, the
    match key's name; `task` alone still is."""
    warnings = group_by_warnings(
        "task.version, task.filePath, organization.slug, machine, task, task.nme"
    )
    assert [w.split(": a run has no field ")[1] for w in warnings] == [
        "'task', so every run falls in one group; group_by reads the run as JSON: did you mean"
        " 'taskIdentifier'?",
        "'task.nme', so every run falls in one group; group_by reads the run as JSON: did you"
        " mean 'taskIdentifier'?",
    ]


def test_a_late_flush_keeps_group_interval_before_the_next_digest() -> None:
    # a digest due at 130 went at 600 (held back); runs that joined meanwhile were due at 430
    g = schedule(schedule(None, "k", 100.0, T), "k", 131.0, T, sending=True)
    assert g.next_flush == 431.0
    assert flushed(g, 601.0).next_flush is None  # their digest is left to the rows' not_before
    assert flushed(g, 601.0, 900.0, waiting=True).next_flush == 900.0  # 600 + group_interval
    assert flushed(g, 601.0, 900.0).next_flush is None  # nothing left waiting: none scheduled
    on_time = schedule(flushed(schedule(None, "k", 100.0, T), 130.0), "k", 140.0, T)
    assert flushed(on_time, 131.0, 429.0).next_flush == 430.0  # a later one stays as it was
