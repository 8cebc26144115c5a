"""Hostile templates and `when:` expressions: no escape, no hang, no dropped notification.

tests/test_templating.py renders the SSTI payloads of HOSTILE through the Renderer. Here the same
payloads (and a few more) go through rule `when:` expressions compiled by compile_rules from a
real config, and through a running relay whose override template directory holds one hostile
template per rule (those reading a `__` attribute are refused at load, as `relay check` says):
relay keeps serving, every notification goes out as the plain fallback, each
render within a time and size budget (budgets catch hangs, not slowness).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from relay.channels import settings_models
from relay.config_load import parse_config
from relay.model import Run, notification_id
from relay.rule_compile import compile_rules
from relay.sandbox import refused_names, sandbox
from relay.templating import RenderContext, Renderer, fallback_json
from tests.conftest import RelayFactory, Sink, sdk_run
from tests.test_templating import HOSTILE

# per render or evaluation, in this thread's CPU seconds (the wall clock of a loaded machine
# fails correct code): generous, it is about hangs; relay's own budget is 1 s of the same clock
BUDGET_S = 5.0
MAX_BODY_BYTES = 64 * 1024  # a fallback body for a fixture run is a few KB

EXTRA_TEMPLATES = [
    "{% for i in range(10**9) %}x{% endfor %}",
    "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100) %}{{ i }}{% endfor %}{% endfor %}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.__class__ }}",
    "{{ run.__class__.__init__.__globals__['os'].popen('id').read() }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ namespace(a=1).__dict__ }}",
    "{{ run.items() | map(attribute='__class__') | list }}",
    "{{ run|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ config }}{{ request }}{{ settings }}",
    # behind an `if`: at top level `relay check` already refuses a template not found
    "{% if run %}{% include '/etc/passwd' %}{% endif %}",
    "{% if run %}{% include '../../../../../../etc/passwd' %}{% endif %}",
    "{% if run %}{% extends 'webhook/../../../../etc/passwd' %}{% endif %}",
    "{% import 'webhook/run.json.j2' as m %}{{ m.__dict__ }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ ''.join(['a'] * 99999) * 99999 }}",
    "{{ 'x'|wordwrap(999999999) }}",
    "{{ run|tojson|replace('', 'x' * 1000) }}",
]
EXTRA_EXPRESSIONS = [
    "run.__class__.__init__.__globals__",
    "run.items.__self__.__class__",
    "(run|attr('__class__')).__subclasses__()",
    "range(10**9)|list|length > 0",
    "(range(100000)|list|string) * 100000",
    "run.payload|string|length * 10**10**10 > 1",
    "cycler(1).__init__.__globals__.os.system('id')",
    "lipsum()",
    "joiner().__call__.__globals__",
    "'{0.__class__.__mro__}'.format(run) != ''",
    "'{x.__class__}'.format_map({'x': run}) != ''",
    "'%s' * 99999999 % run",
    "'{0:>999999999}'.format(run.id)",
    "run.id.ljust(10**9)",
    "(run|tojson(indent=999999999)|length) > 10**6",  # relay's tojson indents by 2, not 1e9
    "self._TemplateReference__context.parent",
    "run.metadata.__class__ == run.__class__",
]


def expression_of(template: str) -> str:
    return template.strip().removeprefix("{{").removesuffix("}}").strip()


EXPRESSIONS = [expression_of(t) for t in HOSTILE] + EXTRA_EXPRESSIONS


def rules_config(expressions: list[str]) -> str:
    rules = "".join(
        f"  - name: hostile-{i}\n    when: |-\n      {e}\n    notify: [c]\n    continue: true\n"
        for i, e in enumerate(expressions)
    )
    return "channels: {c: {type: console}}\nrules:\n" + rules


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_hostile_when_expression_never_matches_nor_hangs(
    expression: str, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = parse_config(rules_config([expression]), "c.yaml", settings_models(), env={})
    started = time.thread_time()
    rules, problems = compile_rules(loaded.config.rules, loaded.locate)
    assert time.thread_time() - started < BUDGET_S
    if problems:  # refused at load: `relay check` names it
        assert all(p.location == "c.yaml:4" and p.message for p in problems), problems
        return
    run = Run.model_validate(sdk_run("failed"))
    for _ in range(2):  # the same compiled expression, twice: nothing leaks between runs
        started = time.thread_time()
        decision = rules.decide(run, None)
        assert time.thread_time() - started < BUDGET_S, expression
        assert decision.matches == (), expression
    logged = [r for r in caplog.records if r.getMessage().startswith("rule `when` failed")]
    assert all(getattr(r, "rule", None) == "hostile-0" for r in logged)  # errors: a warning


def loadable(expressions: list[str]) -> list[str]:
    """The expressions `relay check` accepts (the others, e.g. reading an unknown name, are
    refused at load: test_hostile_when_expression_never_matches_nor_hangs covers both)."""
    loaded = parse_config(rules_config(expressions), "c.yaml", settings_models(), env={})
    _, problems = compile_rules(loaded.config.rules, loaded.locate)
    refused = {p.path for p in problems}
    return [e for i, e in enumerate(expressions) if f"rules[{i}].when" not in refused]


def test_hostile_when_expressions_all_together_stay_fast() -> None:
    accepted = loadable(EXPRESSIONS)
    assert len(accepted) > len(EXPRESSIONS) // 2  # most get as far as running
    loaded = parse_config(rules_config(accepted), "c.yaml", settings_models(), env={})
    rules, problems = compile_rules(loaded.config.rules, loaded.locate)
    assert problems == []
    run = Run.model_validate(sdk_run("failed"))
    started = time.thread_time()
    for _ in range(20):
        assert rules.decide(run, None).matches == ()
    assert time.thread_time() - started < BUDGET_S


def refused_at_load(source: str) -> bool:
    """Whether `relay check` (and a start) refuses the template: a `__` attribute it reads."""
    env = sandbox()
    return bool(refused_names(env, env.parse(source)))


# the templates a relay loads and renders (the fallback); the others it refuses to start with
TEMPLATES = [t for t in HOSTILE + EXTRA_TEMPLATES if not refused_at_load(t)]
REFUSED = [t for t in HOSTILE + EXTRA_TEMPLATES if refused_at_load(t)]


def test_hostile_templates_reading_dunders_are_refused_at_load(tmp_path: Path) -> None:
    """They raise on every render (the sandbox refuses `__` names): `relay check` names each
    with its line, as it does in a `when:`; tests/test_templating.py renders them still."""
    assert len(TEMPLATES) > len(REFUSED) > 5
    (tmp_path / "webhook").mkdir()
    for i, source in enumerate(REFUSED):
        (tmp_path / "webhook" / f"h{i:02d}.json.j2").write_text(source)
    broken = Renderer(tmp_path).broken_overrides()
    assert [b.split(":")[0] for b in broken] == [
        f"webhook/h{i:02d}.json.j2" for i in range(len(REFUSED))
    ]
    assert all("is not allowed (the sandbox refuses `__` names)" in b for b in broken), broken


def relay_config(url: str, templates: Path) -> str:
    rules = "".join(
        f"  - name: t{i}\n    match: {{task: hostile-{i}}}\n    template: h{i}\n    notify: [hook]\n"
        for i in range(len(TEMPLATES))
    )
    guards = "".join(  # hostile `when:` rules in front: every run is evaluated against them all
        f"  - name: w{i}\n    when: |-\n      {e}\n    notify: [hook]\n    continue: true\n"
        for i, e in enumerate(loadable(EXPRESSIONS))
    )
    return f"""\
defaults:
  retry: {{max_attempts: 3, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 5s
templates:
  dir: {templates}
channels:
  hook:
    type: webhook
    url: {url}/hook
    concurrency: 8
rules:
{guards}{rules}"""


def hostile_run(i: int) -> dict[str, Any]:
    run = sdk_run("failed")
    run["id"] = f"run_hostile_{i:03d}"
    run["taskIdentifier"] = f"hostile-{i}"
    return run


async def test_running_relay_sends_the_fallback_for_hostile_templates(
    relay: RelayFactory, sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    templates = tmp_path / "templates"
    (templates / "webhook").mkdir(parents=True)
    for i, source in enumerate(TEMPLATES):
        (templates / "webhook" / f"h{i}.json.j2").write_text(source)
    r = await relay(relay_config(sink.url, templates))
    renderer = r.service.compiled.renderer
    runs = [hostile_run(i) for i in range(len(TEMPLATES))]

    for i, raw in enumerate(runs):  # every render on its own: bounded in time, falls back
        run = Run.model_validate(raw).as_dict()
        ctx = RenderContext(run, f"t{i}", "hook", "webhook", "ntf_x", None)
        started = time.thread_time()
        rendered = renderer.render("webhook", f"h{i}", ("json",), ctx)
        took = time.thread_time() - started
        assert took < BUDGET_S, (TEMPLATES[i], took)
        assert rendered.fallback and rendered.error, (TEMPLATES[i], rendered.parts)
        assert rendered.parts["json"] == fallback_json(ctx)

    status, body = await r.post(runs)
    assert status == 202 and body["notifications"] == len(TEMPLATES), body
    received = await sink.wait_for(len(TEMPLATES), timeout=60)  # a guard: all of them, or a hang
    by_id = {got.headers["webhook-id"]: got for got in received}
    for i, raw in enumerate(runs):
        got = by_id[notification_id(raw["id"], f"t{i}", "hook")]
        assert len(got.body) < MAX_BODY_BYTES
        sent = json.loads(got.body)
        assert set(sent) == {"id", "type", "rule", "channel", "text", "run", "dashboardUrl"}, sent
        assert sent["rule"] == f"t{i}" and sent["run"]["id"] == raw["id"]
        assert sent["text"].startswith("🔴 FAILED · hostile-")
    async with r.http.get(r.url + "/healthz") as resp:
        assert resp.status == 200
    status, _ = await r.post(hostile_run(0) | {"id": "run_after"})  # still serving
    assert status == 202
    await asyncio.sleep(0)
    fallbacks = [rec for rec in caplog.records if "plain fallback" in rec.getMessage()]
    assert len(fallbacks) >= len(TEMPLATES)
    assert all(getattr(rec, "reason", None) == "template" for rec in fallbacks)
