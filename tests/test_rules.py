"""The rule engine as a table: each operator, transitions, first-match-wins, the index."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.channels import settings_models
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import ConfigError
from relay.formats import parse_run
from relay.formats.electric import parse_raw_run
from relay.formats.trigger_alerts import parse_alert
from relay.grouping import lookup
from relay.model import Run, RunState
from relay.rule_compile import compile_rules
from relay.rules import RuleSet
from tests.conftest import FIXTURES, sdk_run


def ruleset(rules_yaml: str) -> RuleSet:
    text = "channels: {c: {type: console}, d: {type: console}}\nrules:\n" + rules_yaml
    loaded = parse_config(text, "c.yaml", settings_models(), {})
    rules, problems = compile_rules(loaded.config.rules, loaded.locate)
    assert not problems
    return rules


def when_problem(when: str) -> str:
    """The one problem `relay check` finds in rule `r` with this `when:` (it is at line 4)."""
    rule = {"name": "r", "when": when, "notify": ["c"]}
    text = "channels: {c: {type: console}}\nrules:\n" + yaml.safe_dump(
        [rule], sort_keys=False, width=1000
    )
    loaded = parse_config(text, "c.yaml", settings_models(), {})
    _, problems = compile_rules(loaded.config.rules, loaded.locate)
    assert [p.location for p in problems] == ["c.yaml:4"], problems
    return problems[0].message


def run(**fields: Any) -> Run:
    base: dict[str, Any] = {"id": "run_1", "taskIdentifier": "billing/charge", "status": "FAILED"}
    base.update(fields)
    return Run.model_validate(base)


def matched(rules: RuleSet, r: Run) -> list[str]:
    return [rule.name for rule in rules.evaluate(r)]


CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("status: [FAILED]", {}, True),
    ("status: [FAILED]", {"status": "COMPLETED"}, False),
    ("status: FAILED", {}, True),
    ("status: [failure]", {"status": "CRASHED"}, True),
    ("status: [failure]", {"status": "SYSTEM_FAILURE"}, True),
    ("status: [failure]", {"status": "TIMED_OUT"}, True),
    ("status: [failure]", {"status": "INTERRUPTED"}, True),
    ("status: [failure]", {"status": "EXPIRED"}, False),
    ("status: [failure]", {"status": "CANCELED"}, False),
    ("status: [FAILURE]", {"status": "CRASHED"}, True),  # `failure` in any case, as a status
    ("status: [COMPLETED_WITH_ERRORS]", {}, True),  # raw names are understood in rules too
    ("status: [EXPIRED]", {"status": "EXPIRED"}, True),
    # a status newer than relay is matched as written (and in capitals, as known ones are)
    ("status: [quarantined]", {"status": "quarantined"}, True),
    ("status: [QUARANTINED]", {"status": "QUARANTINED"}, True),
    ("status: [quarantined]", {"status": "QUARANTINED"}, True),
    ("status: [QUARANTINED]", {"status": "other"}, False),
    ("task: 'billing/*'", {}, True),
    ("task: 'billing/*'", {"taskIdentifier": "email/send"}, False),
    ("task: ['email/*', 'billing/*']", {}, True),
    ("task_regex: '^billing/(charge|refund)$'", {}, True),
    ("task_regex: 'refund'", {}, False),
    # with repeats (run by `regex` with a timeout) and without (`re`): the same answers
    ("task_regex: '^billing/.+e$'", {}, True),
    ("task_regex: 'billing/(charge)?x'", {}, False),
    ("task_regex: '(?i)^BILLING/'", {}, True),
    ("task_regex: '^(?:billing|email)/(?=c)'", {}, True),
    ("tags: {any: [env:prod, env:stg]}", {"tags": ["env:prod"]}, True),
    ("tags: {any: [env:prod]}", {"tags": ["env:dev"]}, False),
    ("tags: {all: [env:prod, vip]}", {"tags": ["env:prod"]}, False),
    ("tags: {all: [env:prod, vip]}", {"tags": ["vip", "env:prod", "x"]}, True),
    ("tags: {none: [canary]}", {"tags": ["canary"]}, False),
    ("tags: {none: [canary]}", {"tags": []}, True),
    ("cost_cents: {gt: 500}", {"costInCents": 500}, False),
    ("cost_cents: {gte: 500}", {"costInCents": 500}, True),
    ("cost_cents: {lt: 1}", {"costInCents": 0.5}, True),
    ("cost_cents: {lte: 1}", {"costInCents": 1.5}, False),
    ("cost_cents: {lte: 1}", {"costInCents": 1}, True),  # each bound at its edge
    ("cost_cents: {lt: 1}", {"costInCents": 1}, False),
    ("base_cost_cents: {gt: 0.001}", {"baseCostInCents": 0.0025}, True),
    ("duration_ms: {gt: 60000, lt: 120000}", {"durationMs": 90000}, True),
    ("duration_ms: {gt: 60000, lt: 120000}", {"durationMs": 120000}, False),
    ("is_test: false", {"isTest": True}, False),
    ("is_test: true", {"isTest": True}, True),
    (
        "metadata: {customer.tier: enterprise}",
        {"metadata": {"customer": {"tier": "enterprise"}}},
        True,
    ),
    ("metadata: {customer.tier: enterprise}", {"metadata": {"customer": {"tier": "free"}}}, False),
    ("metadata: {customer.tier: enterprise}", {"metadata": None}, False),
    ("metadata: {retries: 3}", {"metadata": {"retries": 3.0}}, True),
    ("metadata: {flag: true}", {"metadata": {"flag": 1}}, False),
    ("metadata: {a.b: 1}", {"metadata": {"a.b": 1}}, True),
    ("metadata: {p.q.r: 1}", {"metadata": {"p.q": {"r": 1}}}, True),  # a dotted key inside
    ("metadata: {items.0.sku: x}", {"metadata": {"items": [{"sku": "x"}]}}, True),
    ("metadata: {items.1: x}", {"metadata": {"items": ["x"]}}, False),
    ("metadata: {n: 5}", {"metadata": {"n": "5"}}, False),  # JSON types: "5" is no number
    # YAML 1.2 booleans: `no` is the text "no" (Norway), only true/false are booleans
    ("metadata: {region: no}", {"metadata": {"region": "no"}}, True),
    ("metadata: {region: no}", {"metadata": {"region": False}}, False),
    ("metadata: {mode: On}", {"metadata": {"mode": "On"}}, True),
    ("metadata: {flag: false}", {"metadata": {"flag": False}}, True),
    ("is_test: no", {"isTest": False}, True),  # where a boolean is wanted, yes/no still are
    ("is_test: yes", {"isTest": False}, False),
]


@pytest.mark.parametrize(("match", "fields", "expected"), CASES)
def test_match_operators(match: str, fields: dict[str, Any], expected: bool) -> None:
    rules = ruleset(f"  - name: r\n    match: {{{match}}}\n    notify: [c]\n")
    assert matched(rules, run(**fields)) == (["r"] if expected else [])


@pytest.mark.parametrize(
    ("when", "fields", "expected"),
    [
        ("run.durationMs > 60000 or 'vip' in run.tags", {"tags": ["vip"]}, True),
        ("run.durationMs > 60000 or 'vip' in run.tags", {"durationMs": 10}, False),
        ("run.metadata.step == 'fetch'", {"metadata": {"step": "fetch"}}, True),
        ("run.nope.deeper == 1", {}, False),  # undefined is falsy, never an exception
        (
            "run.error.message is string and 'Stripe' in run.error.message",
            {"error": {"message": "Stripe 429"}},
            True,
        ),
        ("(1 / 0) > 1", {}, False),  # a runtime error is no match and a log line, not a crash
        ("run[run.taskIdentifier] is defined", {"taskIdentifier": "__class__"}, False),  # sandbox
        ("metadata.step == 'fetch' and payload.n > 1", {"metadata": {"step": "fetch"}, "payload": {"n": 2}}, True),
        ("error.message is string", {"error": {"message": "boom"}}, True),
        # a missing field is none, as README says
        ("run.metadata.customer is none", {}, True),
        ("run.metadata.customer.tier == none", {"metadata": {}}, True),
        ("run.nope != none", {}, False),
        ("run.nope > 5", {}, False),  # ordering none: an error, so no match
        # the run is JSON: a key wins over a dict method of the same name
        ("run.metadata.items == 3", {"metadata": {"items": 3}}, True),
        ("run.payload.values | length == 2", {"payload": {"values": [1, 2]}}, True),
        ("run.metadata.update == 'x'", {"metadata": {"update": "x"}}, True),
        ("run.metadata.items() | list | length == 1", {"metadata": {"a": 1}}, True),
    ],
)  # fmt: skip
def test_when_expressions(when: str, fields: dict[str, Any], expected: bool) -> None:
    rules = ruleset(f'  - name: r\n    when: "{when}"\n    notify: [c]\n')
    assert matched(rules, run(**fields)) == (["r"] if expected else [])


def test_a_when_past_the_render_budget_is_stopped_as_no_match() -> None:
    """Run data can make an innocent expression quadratic: 30000 tags against a 30000-item
    allow-list held the intake for ~10 s; it is stopped after the render budget (1 s)."""
    rules = ruleset(
        "  - name: r\n    when: \"run.tags|select('in', metadata.allow)|list|length > 0\"\n"
        "    notify: [c]\n"
    )
    items = [f"t{i}" for i in range(30000)]
    assert matched(rules, run(tags=items, metadata={"allow": items[::-1]})) == []


def test_bad_when_is_a_config_problem_with_line() -> None:
    assert "invalid expression" in when_problem("run.status ==")


def test_a_when_with_an_unknown_filter_in_a_branch_is_a_problem() -> None:
    """Jinja refuses `run.id|nosuch` when compiling, but waits in `a if b else c|nosuch`."""
    when = "run.durationMs if run.isTest else run.costInCents|mony > 1"
    assert "No filter named 'mony'" in when_problem(when)


@pytest.mark.parametrize(
    ("when", "unknown"), [("runn.durationMs > 1", "runn"), ("run.x or tags | length", "tags")]
)
def test_a_when_reading_an_unknown_name_is_a_problem_not_a_silent_no_match(
    when: str, unknown: str
) -> None:
    assert f"unknown name `{unknown}`" in when_problem(when)


@pytest.mark.parametrize(
    "when", ["run.__class__.__mro__", "run['__init__'] is none", "run | attr('__dict__')"]
)
def test_a_when_reading_a_dunder_is_a_problem_not_a_silent_no_match(when: str) -> None:
    # the sandbox refuses it on every run: relay check used to say OK to a dead rule
    assert "is not allowed (the sandbox refuses `__` names)" in when_problem(when)


def test_first_match_wins_unless_continue() -> None:
    rules = ruleset(
        "  - {name: a, match: {status: [failure]}, notify: [c]}\n"
        "  - {name: b, match: {task: 'billing/*'}, notify: [c]}\n"
    )
    assert matched(rules, run()) == ["a"]
    rules = ruleset(
        "  - {name: a, match: {status: [failure]}, notify: [c], continue: true}\n"
        "  - {name: b, match: {task: 'billing/*'}, notify: [d]}\n"
        "  - {name: z, notify: [d]}\n"
    )
    assert matched(rules, run()) == ["a", "b"]
    decision = rules.decide(run(updatedAt="2026-01-01T00:00:00Z"), None)
    assert [(m.rule, m.channel) for m in decision.matches] == [("a", "c"), ("b", "d")]


def test_fires_once_per_run_under_repeats_and_reordering() -> None:
    rules = ruleset("  - {name: f, match: {status: [failure]}, notify: [c]}\n")
    t = "2026-08-20T09:14:{:02d}.000Z"
    executing = run(status="EXECUTING", updatedAt=t.format(1))
    failed = run(status="FAILED", updatedAt=t.format(5))
    state: RunState | None = None
    fired = []
    for update in (
        executing,
        failed,
        failed,
        run(status="EXECUTING", updatedAt=t.format(3)),
        failed,
    ):
        decision = rules.decide(update, state)
        fired += [m.rule for m in decision.matches]
        state = decision.state
    assert fired == ["f"]
    # an update older than the stored one is stale: it changes nothing
    stale = rules.decide(executing, state)
    assert stale.stale and stale.state == state


def test_out_of_order_arrival_fires_on_the_newest_state() -> None:
    rules = ruleset("  - {name: f, match: {status: [failure]}, notify: [c]}\n")
    failed = rules.decide(run(status="FAILED", updatedAt="2026-01-01T00:00:09Z"), None)
    assert [m.rule for m in failed.matches] == ["f"]
    late = rules.decide(run(status="EXECUTING", updatedAt="2026-01-01T00:00:01Z"), failed.state)
    assert late.stale and not late.matches


def test_an_update_as_new_as_the_stored_one_is_read() -> None:
    """Two changes within one millisecond carry the same updatedAt: only an older update is
    stale, or the failure after a same-millisecond start would never fire."""
    rules = ruleset("  - {name: f, match: {status: [failure]}, notify: [c]}\n")
    at = "2026-01-01T00:00:05.123Z"
    started = rules.decide(run(status="EXECUTING", updatedAt=at), None)
    failed = rules.decide(run(status="FAILED", updatedAt=at), started.state)
    assert not failed.stale
    assert [m.rule for m in failed.matches] == ["f"]


def test_an_alert_webhook_s_run_keeps_what_the_updates_before_it_knew() -> None:
    """An alert webhook's run carries no updatedAt, cost or duration: the state keeps the
    last update's time (so an older update after it is still stale) and its measures (its 0s
    are no value)."""
    rules = ruleset("  - {name: f, match: {status: [failure]}, notify: [c]}\n")
    known = rules.decide(
        run(status="EXECUTING", costInCents=250, durationMs=9000, updatedAt="2026-01-01T00:00:05Z"),
        None,
    ).state
    alert = Run.of_alert({"id": "run_1", "taskIdentifier": "billing/charge", "status": "FAILED"})
    after = rules.decide(alert, known)
    assert [m.rule for m in after.matches] == ["f"]
    assert (after.state.updated_at_ms, after.state.cost_cents, after.state.duration_ms) == (
        known.updated_at_ms,
        250,
        9000,
    )
    late = rules.decide(run(status="EXECUTING", updatedAt="2026-01-01T00:00:01Z"), after.state)
    assert late.stale


def test_threshold_crossed_by_a_growing_value_fires_once() -> None:
    rules = ruleset("  - {name: pricey, match: {cost_cents: {gt: 100}}, notify: [c]}\n")
    state = None
    fired = []
    for i, cost in enumerate([10, 60, 101, 150, 400]):
        update = run(status="EXECUTING", costInCents=cost, updatedAt=f"2026-01-01T00:00:0{i}Z")
        decision = rules.decide(update, state)
        fired += [(m.rule, cost) for m in decision.matches]
        state = decision.state
    assert fired == [("pricey", 101)]


def test_a_run_that_alerted_recovers_once_into_completed() -> None:
    rules = ruleset(
        "  - {name: slow, match: {status: [EXECUTING]}, notify: [c, d], update_on_recovery: true,"
        " continue: true}\n"
        "  - {name: pricey, match: {cost_cents: {gt: 100}}, notify: [c]}\n"
    )
    state: RunState | None = None
    seen = []
    for i, (status, cost) in enumerate(
        [("EXECUTING", 0), ("EXECUTING", 200), ("COMPLETED", 200), ("COMPLETED", 300)]
    ):
        update = run(status=status, costInCents=cost, updatedAt=f"2026-01-01T00:00:0{i}Z")
        decision = rules.decide(update, state)
        seen += [(i, m.rule, m.channel, m.template, m.recovery) for m in decision.matches]
        state = decision.state
    assert seen == [
        (0, "slow", "c", "run", False),
        (0, "slow", "d", "run", False),
        (1, "pricey", "c", "run", False),
        (2, "slow", "c", "recovered", True),  # pricey has no update_on_recovery
        (2, "slow", "d", "recovered", True),
    ]


@pytest.mark.parametrize(
    ("before", "after", "recovers"),
    [
        ("EXECUTING", "COMPLETED", True),
        ("FAILED", "COMPLETED", True),
        ("EXECUTING", "CANCELED", False),  # only COMPLETED is a recovery
        ("COMPLETED", "COMPLETED", False),  # no transition
    ],
)
def test_recovery_transitions(before: str, after: str, recovers: bool) -> None:
    rules = ruleset("  - {name: r, match: {}, notify: [c], update_on_recovery: true}\n")
    first = rules.decide(run(status=before, updatedAt="2026-01-01T00:00:00Z"), None)
    assert [m.recovery for m in first.matches] == [False]
    then = run(status=after, updatedAt="2026-01-01T00:00:09Z")
    assert [m.recovery for m in rules.decide(then, first.state).matches] == [True] * recovers


def test_fixtures_against_the_failure_rule() -> None:
    rules = ruleset("  - {name: f, match: {status: [failure]}, notify: [c]}\n")
    expected = {
        "failed": True,
        "crashed": True,
        "timed_out": True,
        "completed": False,
        "executing": False,
    }
    for name, fires in expected.items():
        assert bool(matched(rules, Run.model_validate(sdk_run(name)))) is fires, name


@pytest.mark.parametrize(
    ("raw", "rule_status", "fires"),
    [
        ("INTERRUPTED", "INTERRUPTED", True),
        ("INTERRUPTED", "FAILED", True),  # today's name matches as before
        ("WAITING_FOR_DEPLOY", "WAITING_FOR_DEPLOY", True),
        ("WAITING_FOR_DEPLOY", "PENDING_VERSION", True),
        ("RETRYING_AFTER_FAILURE", "REATTEMPTING", True),
        ("PAUSED", "FROZEN", True),
        ("WAITING_TO_RESUME", "FROZEN", True),
        ("EXECUTING", "REATTEMPTING", False),  # not a retry: no v3 name of its own
        ("COMPLETED_WITH_ERRORS", "INTERRUPTED", False),
    ],
)
def test_a_raw_row_matches_a_rule_in_either_status_vocabulary(
    raw: str, rule_status: str, fires: bool
) -> None:
    """SPEC §2: both vocabularies are understood. Before, a Realtime row INTERRUPTED read as
    today's FAILED only, so `status: [INTERRUPTED]` (or WAITING_FOR_DEPLOY, REATTEMPTING,
    FROZEN) never matched a row that said so in as many words; only an SDK object did."""
    rules = ruleset(f"  - {{name: r, match: {{status: [{rule_status}]}}, notify: [c]}}\n")
    row = parse_raw_run({"friendlyId": "run_x", "taskIdentifier": "t", "status": raw})
    assert matched(rules, row) == (["r"] if fires else [])


@pytest.mark.parametrize(
    ("status", "fires"),
    [
        ("CRASHED", True),
        ("completed_with_errors", True),
        ("INTERRUPTED", True),
        ("COMPLETED", False),
    ],
)
def test_a_run_posted_without_the_sdk_flags_gets_them_from_its_status(
    status: str, fires: bool
) -> None:
    """A run object built by hand (SPEC §2's field list has no `isFailed`) or an alert webhook's
    run carries no SDK flags. Before, `when: run.isFailed` read them missing, so it never
    matched such a run though it matched the same run from the SDK or a Realtime row."""
    rules = ruleset('  - {name: r, when: "run.isFailed and run.isCompleted", notify: [c]}\n')
    posted = parse_run({"id": "run_x", "taskIdentifier": "t", "status": status}, "")
    assert matched(rules, posted) == (["r"] if fires else [])
    alert = json.loads((FIXTURES / "alert-webhooks" / "alert.run.failed.body.json").read_text())
    alert["object"]["run"]["status"] = status
    from_alert = parse_alert(alert).run
    assert from_alert is not None
    assert matched(rules, from_alert) == (["r"] if fires else [])


def test_flags_a_run_carries_are_kept() -> None:
    rules = ruleset('  - {name: r, when: "run.isFailed", notify: [c]}\n')
    posted = parse_run(
        {"id": "run_x", "taskIdentifier": "t", "status": "FAILED", "isFailed": False}, ""
    )
    assert matched(rules, posted) == []


def test_index_returns_same_answer_as_a_scan() -> None:
    lines = [
        f"  - {{name: r{i}, match: {{status: [{s}], task: 't{i % 7}'}}, notify: [c], continue: true}}\n"
        for i, s in enumerate(["FAILED", "CRASHED", "COMPLETED", "failure"] * 50)
    ]
    rules = ruleset("".join(lines) + "  - {name: any, notify: [c], continue: true}\n")
    for status in ("FAILED", "CRASHED", "COMPLETED", "SOMETHING_NEW"):
        for task in ("t0", "t3", "t6", "x"):
            r = run(status=status, taskIdentifier=task)
            scanned = [
                rule.name
                for rule in rules.rules
                if (rule.statuses is None or status in rule.statuses) and rule.matches(r)
            ]
            assert matched(rules, r) == scanned


def test_lookup() -> None:
    data = {"a": {"b": {"c": 1}}, "x.y": 2}
    assert lookup(data, "a.b.c") == 1
    assert lookup(data, "x.y") == 2
    assert lookup(data, "a.z") is not None  # the missing marker, not a value


TAGS = ["a", "b", "c"]
RULE_PARTS = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["[FAILED]", "[COMPLETED]", "[failure]"]),
        "is_test": st.sampled_from(["true", "false"]),
        "tags": st.fixed_dictionaries(
            {},
            optional={
                k: st.lists(st.sampled_from(TAGS), min_size=1, max_size=2)
                for k in ("any", "all", "none")
            },
        ).filter(bool),  # `tags: {}` is refused
    },
)


def rule_yaml(i: int, parts: dict[str, Any], cont: bool) -> str:
    match = ", ".join(f"{k}: {v}" for k, v in parts.items())
    return f"  - {{name: r{i}, match: {{{match}}}, notify: [c], continue: {str(cont).lower()}}}\n"


def naive(rules: RuleSet, r: Run) -> list[str]:
    """First match wins unless `continue`, over every rule: what the index must agree with."""
    out = []
    for rule in rules.rules:
        statuses_ok = rule.statuses is None or r.status in rule.statuses
        if r.event in rule.events and statuses_ok and rule.matches(r):
            out.append(rule.name)
            if not rule.continue_:
                break
    return out


@settings(max_examples=300, deadline=None)
@example(  # a run with the second tag of a two-tag `any`
    specs=[({"tags": {"any": ["a", "b"]}}, False)], status="FAILED", tags=[["b"]], is_test=False
)
@example(  # runs with other tags after the first: candidates merged for each tag set
    specs=[({"tags": {"any": ["a"]}}, True), ({"tags": {"any": ["b"]}}, True)],
    status="FAILED",
    tags=[["a"], ["b"], ["b", "a"], ["a"], []],
    is_test=False,
)
@given(
    specs=st.lists(st.tuples(RULE_PARTS, st.booleans()), min_size=1, max_size=12),
    status=st.sampled_from(["FAILED", "COMPLETED", "CRASHED"]),
    tags=st.lists(st.lists(st.sampled_from(TAGS), max_size=3), min_size=1, max_size=4),
    is_test=st.booleans(),
)
def test_the_rule_index_agrees_with_evaluating_every_rule(
    specs: list[tuple[dict[str, Any], bool]], status: str, tags: list[list[str]], is_test: bool
) -> None:
    """One rule set, runs with one tag set after another (the index caches by both)."""
    rules = ruleset("".join(rule_yaml(i, p, c) for i, (p, c) in enumerate(specs)))
    for run_tags in tags + tags:  # each a second time: from the caches
        r = run(status=status, tags=run_tags, isTest=is_test)
        assert matched(rules, r) == naive(rules, r)


def test_check_warns_of_a_yaml_1_1_boolean_word_in_match_metadata() -> None:
    """`region: no` was the boolean false (YAML 1.1) before relay read YAML 1.2 booleans: the
    rule now matches the text, and a rule meant for false would stop firing unseen."""
    text = (
        "channels: {c: {type: console}}\nrules:\n  - name: r\n    notify: [c]\n"
        "    match: {metadata: {region: no, quoted: 'no', flag: true}, is_test: no}\n"
    )
    compiled = compile_config(parse_config(text, "c.yaml", settings_models(), env={}))
    assert [w for w in compiled.warnings if "metadata" in w] == [
        "c.yaml:5: rules[0].match.metadata.region: 'no' matches that text; for a boolean write"
        " true or false, and quote the text to silence this warning"
    ]


def test_a_failed_run_takes_run_failed_now_and_after_a_reload() -> None:
    """A rule without `template:` renders run_failed for a failed run (SPEC's override of
    failures alone), run otherwise, and a reload re-deriving a waiting row's template (the
    rule's template now) keeps run_failed for it: by the row's status, not the rule alone."""
    rules = ruleset(
        "  - {name: any, match: {status: [failure, COMPLETED]}, notify: [c]}\n"
        "  - {name: own, match: {status: [CRASHED]}, notify: [c], template: mine}\n"
    )
    for status, template in [("FAILED", "run_failed"), ("TIMED_OUT", "run_failed")]:
        assert [m.template for m in rules.decide(run(status=status), None).matches] == [template]
        assert rules.template_of("any", "c", "run", status) == template
    assert [m.template for m in rules.decide(run(status="COMPLETED"), None).matches] == ["run"]
    assert rules.template_of("any", "c", "run", "COMPLETED") == "run"
    assert rules.template_of("own", "c", "run", "CRASHED") == "mine"


def alert_run(name: str) -> Run:
    """The run relay makes of the real alert webhook body `name` (alert.deployment.failed ...)."""
    body = (FIXTURES / "alert-webhooks" / f"{name}.body.json").read_bytes()
    parsed = parse_alert(json.loads(body)).run
    assert parsed is not None
    return parsed


def test_a_rule_takes_a_list_of_events_each_rendered_with_its_own_template() -> None:
    """`event: [deployment.failed, deployment.success]` matches either (as `status` takes a
    list), each update with its own event's default template; one name still works, and an
    event outside the list is not matched."""
    rules = ruleset(
        "  - {name: deploys, match: {event: [deployment.failed, deployment.success]},"
        " notify: [c]}\n"
        "  - {name: runs, match: {event: [run, error]}, notify: [d]}\n"
        "  - {name: one, match: {event: deployment.failed}, notify: [d], continue: true}\n"
    )
    failed, deployed = alert_run("alert.deployment.failed"), alert_run("alert.deployment.success")
    got = [(m.rule, m.template) for m in rules.decide(failed, None).matches]
    assert got == [("deploys", "deployment_failed")]
    got = [(m.rule, m.template) for m in rules.decide(deployed, None).matches]
    assert got == [("deploys", "deployment_success")]
    crashed = [(m.rule, m.template) for m in rules.decide(run(status="CRASHED"), None).matches]
    assert crashed == [("runs", "run_failed")]
    assert rules.template_of("deploys", "c", "deployment.success", "DEPLOYED") == (
        "deployment_success"
    )
    assert rules.template_of("deploys", "c", "run", "FAILED") is None
    assert rules.template_of("runs", "d", "run", "COMPLETED") == "run"
    only = ruleset("  - {name: one, match: {event: deployment.failed}, notify: [d]}\n")
    assert [m.template for m in only.decide(failed, None).matches] == ["deployment_failed"]


def test_a_deployments_empty_task_matches_a_pattern_of_the_empty_string_alone() -> None:
    """A deployment has no task (README, Events): `task: "*"` matches it, as Alertmanager's
    `task=~".*"` matches an alert without the label; `task: billing/*` does not."""
    rules = ruleset(
        "  - {name: any-task, match: {event: deployment.failed, task: '*'}, notify: [c],"
        " continue: true}\n"
        "  - {name: billing, match: {event: deployment.failed, task: 'billing/*'}, notify: [c]}\n"
    )
    failed = alert_run("alert.deployment.failed")
    assert [m.rule for m in rules.decide(failed, None).matches] == ["any-task"]


def test_an_unknown_event_in_a_list_is_named_at_its_place() -> None:
    """A typo in a list of events is a `relay check` error at its line and index, not
    pydantic's "Input should be a valid string" for the whole list."""
    text = (
        "channels: {c: {type: console}}\nrules:\n  - name: r\n    notify: [c]\n"
        "    match:\n      event:\n        - deployment.failed\n        - deploy.success\n"
    )
    with pytest.raises(ConfigError) as info:
        compile_config(parse_config(text, "c.yaml", settings_models(), env={}))
    assert [str(p) for p in info.value.problems] == [
        "c.yaml:8: rules[0].match.event[1]: unknown event; use one of run, deployment.failed,"
        " deployment.success, error"
    ]


def test_the_warnings_of_a_rule_read_all_its_events() -> None:
    """A status or a filter that one of a rule's events carries is no warning (`DEPLOYED`
    beside `run`, `task` beside `deployment.failed`); one that none carries still is."""
    text = (
        "channels: {c: {type: console}}\nrules:\n"
        "  - {name: a, match: {event: [run, deployment.success], status: [FAILED, DEPLOYED]},"
        " notify: [c], continue: true}\n"
        "  - {name: b, match: {event: [run, deployment.failed], task: 'billing/*'},"
        " notify: [c]}\n"
        "  - {name: c, match: {event: [deployment.failed, error], status: DEPLOYED},"
        " notify: [c]}\n"
        "  - {name: d, match: {event: [deployment.failed, deployment.success], task: x},"
        " notify: [c]}\n"
    )
    compiled = compile_config(parse_config(text, "c.yaml", settings_models(), env={}))
    assert list(compiled.warnings) == [
        "c.yaml:5: rules[2].match.status: event deployment.failed or error carries CANCELED,"
        " FAILED, NEW_ISSUE, REGRESSION, TIMED_OUT, UNIGNORED; this rule never fires",
        "c.yaml:6: rules[3].match.task: event deployment.failed or deployment.success carries"
        " no task; this rule never fires",
    ]


def test_check_warns_of_a_recovery_from_statuses_a_run_never_leaves() -> None:
    """`update_on_recovery: true` on `status: failure` was valid and silent, and no page it
    opened was ever resolved: a FAILED or CRASHED run never completes afterwards. One status
    that is not final (EXECUTING, or one relay does not know), or no status at all, keeps the
    rule able to recover and is no warning."""
    text = (
        "channels: {c: {type: console}}\nrules:\n"
        "  - {name: a, match: {status: failure}, notify: [c], update_on_recovery: true,"
        " continue: true}\n"
        "  - {name: b, match: {status: [canceled]}, notify: [c], update_on_recovery: true,"
        " continue: true}\n"
        "  - {name: c, match: {status: [FAILED, EXECUTING]}, notify: [c],"
        " update_on_recovery: true, continue: true}\n"
        "  - {name: d, match: {status: [FAILED, NEWLY_ADDED]}, notify: [c],"
        " update_on_recovery: true, continue: true}\n"
        "  - {name: e, match: {task: x}, notify: [c], update_on_recovery: true, continue: true}\n"
        "  - {name: f, match: {status: failure}, notify: [c]}\n"
    )
    compiled = compile_config(parse_config(text, "c.yaml", settings_models(), env={}))
    recovery = [w for w in compiled.warnings if "update_on_recovery" in w]
    assert recovery == [
        "c.yaml:3: rules[0].update_on_recovery: CRASHED, FAILED, INTERRUPTED, SYSTEM_FAILURE,"
        " TIMED_OUT are final: a run in them never completes, so this rule sends no recovery",
        "c.yaml:4: rules[1].update_on_recovery: CANCELED is final: a run in it never completes,"
        " so this rule sends no recovery",
    ]
