"""A rule set exercising every matcher, and which of its rules must match a generated payload,
computed from the generator's expectation (tests/payloadgen.py), not by relay's rule engine.

Every rule says `continue: true`, so the rules relay reports for a run are exactly those whose
matchers hold. The `render-*` rules notify slack, email and webhook with the default templates.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from typing import Any

from tests.payloadgen import CURRENT, FAILURE, V3, Expect

Check = Callable[[Expect], bool]


def _run(check: Check) -> Check:
    return lambda e: e.event == "run" and check(e)


def _measured(check: Check) -> Check:
    """A threshold: never met by an update without a cost or duration (an alert webhook's)."""
    return lambda e: e.event == "run" and e.measured and check(e)


def _tier(e: Expect) -> Any:
    meta = e.metadata if isinstance(e.metadata, dict) else {}
    if "customer.tier" in meta:
        return meta["customer.tier"]
    customer = meta.get("customer")
    return customer.get("tier", KeyError) if isinstance(customer, dict) else KeyError


RULES: list[tuple[str, dict[str, Any], Check]] = [
    ("failure", {"status": ["failure"]}, _run(lambda e: e.status in FAILURE)),
    *[
        (f"st-{s}", {"status": [s]}, _run(lambda e, s=s: s in (e.status, e.v3_status)))  # type: ignore[misc]
        for s in CURRENT + V3
    ],
    ("task-glob", {"task": "billing/*"}, _run(lambda e: fnmatch.fnmatchcase(e.task, "billing/*"))),
    (
        "tags-any",
        {"tags": {"any": ["env:prod", "ünï:✓"]}},
        _run(lambda e: bool({"env:prod", "ünï:✓"} & set(e.tags))),
    ),
    (
        "tags-all",
        {"tags": {"all": ["vip", "plan:pro"]}},
        _run(lambda e: {"vip", "plan:pro"} <= set(e.tags)),
    ),
    ("tags-none", {"tags": {"none": ["env:prod"]}}, _run(lambda e: "env:prod" not in e.tags)),
    ("cost-gt", {"cost_cents": {"gt": 5}}, _measured(lambda e: e.cost > 5)),
    ("base-lte", {"base_cost_cents": {"lte": 0.0025}}, _measured(lambda e: e.base_cost <= 0.0025)),
    ("dur-gte", {"duration_ms": {"gte": 60000}}, _measured(lambda e: e.duration >= 60000)),
    ("dur-lt", {"duration_ms": {"lt": 60000}}, _measured(lambda e: e.duration < 60000)),
    ("is-test", {"is_test": True}, _run(lambda e: e.is_test)),
    ("not-test", {"is_test": False}, _run(lambda e: not e.is_test)),
    (
        "meta-str",
        {"metadata": {"customer.tier": "enterprise"}},
        _run(lambda e: _tier(e) == "enterprise"),
    ),
    ("meta-true", {"metadata": {"customer.tier": True}}, _run(lambda e: _tier(e) is True)),
    (
        "meta-one",
        {"metadata": {"customer.tier": 1}},
        _run(lambda e: _tier(e) == 1 and _tier(e) is not True),
    ),
    (
        "failed-prod-test",
        {"status": ["failure"], "tags": {"any": ["env:prod"]}, "is_test": True},
        _run(lambda e: e.status in FAILURE and "env:prod" in e.tags and e.is_test),
    ),
    ("deploy-failed", {"event": "deployment.failed"}, lambda e: e.event == "deployment.failed"),
    (
        "deploy-timeout",
        {"event": "deployment.failed", "status": ["TIMED_OUT"]},
        lambda e: e.event == "deployment.failed" and e.status == "TIMED_OUT",
    ),
    ("deploy-ok", {"event": "deployment.success"}, lambda e: e.event == "deployment.success"),
    ("error-any", {"event": "error"}, lambda e: e.event == "error"),
    (
        "error-regression",
        {"event": "error", "status": ["REGRESSION"]},
        lambda e: e.event == "error" and e.status == "REGRESSION",
    ),
]
WHEN_RULE = (
    "when-long-or-vip",
    "run.durationMs > 60000 or 'vip' in run.tags",
    _run(lambda e: e.duration > 60000 or "vip" in e.tags),
)
# the digest (group_by) and recovery (update_on_recovery) templates, on all three channels
EXTRA: dict[str, dict[str, Any]] = {
    "render-digest": {"group_by": ["taskIdentifier"], "group_wait": "1s", "group_interval": "1s"},
    "render-recover": {"update_on_recovery": True},
}
# rule name, match, template (None: the event's default), check
RENDER_RULES: list[tuple[str, dict[str, Any], str | None, Check]] = [
    ("render-run", {}, None, _run(lambda e: True)),
    ("render-run-failed", {}, "run_failed", _run(lambda e: True)),
    ("render-deploy-failed", {"event": "deployment.failed"}, None, RULES[-5][2]),
    ("render-deploy-ok", {"event": "deployment.success"}, None, RULES[-3][2]),
    ("render-error", {"event": "error"}, None, RULES[-2][2]),
    (
        "render-digest",
        {"status": ["failure", "COMPLETED"]},
        None,
        _run(lambda e: e.status in FAILURE | {"COMPLETED"}),
    ),
    ("render-recover", {"status": ["failure"]}, None, RULES[0][2]),
]
RENDER_CHANNELS = ("slack", "email", "hook")


def expected_rules(e: Expect) -> list[str]:
    names = [name for name, _, check in RULES if check(e)]
    names += [WHEN_RULE[0]] if WHEN_RULE[2](e) else []
    return names + [name for name, _, _, check in RENDER_RULES if check(e)]


def rule_names() -> list[str]:
    return [r[0] for r in RULES] + [WHEN_RULE[0]] + [r[0] for r in RENDER_RULES]


def config_text(sink_url: str, smtp_port: int, secret: str, check_channel: str = "hook") -> str:
    """The config (JSON is YAML) for a relay posting to `sink_url` and SMTP on `smtp_port`."""
    fast = {"rate_limit": {"per_second": 10000, "burst": 10000}}
    rules = [
        {"name": name, "match": match, "notify": [check_channel], "continue": True}
        for name, match, _ in RULES
    ]
    rules.append(
        {"name": WHEN_RULE[0], "when": WHEN_RULE[1], "notify": [check_channel], "continue": True}
    )
    rules += [
        {
            "name": name,
            "match": match,
            "notify": list(RENDER_CHANNELS),
            "continue": True,
            **({"template": template} if template else {}),
            **EXTRA.get(name, {}),
        }
        for name, match, template, _ in RENDER_RULES
    ]
    config = {
        "sources": {"trigger_alerts": {"secret": secret}},
        "defaults": {"project_ref": "proj_abc", "retry": {"max_attempts": 2, "max_age": "1m"}},
        "channels": {
            "slack": {"type": "slack", "webhook_url": f"{sink_url}/slack", **fast},
            "hook": {"type": "webhook", "url": f"{sink_url}/hook", **fast},
            "email": {
                "type": "email",
                "smtp": {"host": "127.0.0.1", "port": smtp_port, "starttls": False},
                "from": "relay@example.com",
                "to": ["team@example.com"],
                **fast,
            },
        },
        "rules": rules,
    }
    return json.dumps(config, ensure_ascii=False, indent=1)
