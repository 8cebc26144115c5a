"""Templates: golden renders of the defaults, filters, error views, fallbacks and the sandbox.

Real templates and the real Renderer, no mocks. Regenerate the golden files with
`RELAY_UPDATE_GOLDEN=1 pytest tests/test_templating.py` and review the diff.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from jinja2.exceptions import SecurityError

from relay.channels import REGISTRY
from relay.filters import duration, money, stack, status_emoji, tojson, truncate_chars
from relay.grouping import digest_context
from relay.model import Run
from relay.render_context import CONTEXT_NAMES, template_variables
from relay.render_limits import MAX_OUTPUT_CHARS, LimitExceeded, brief
from relay.template_files import shipped_templates_dir
from relay.template_probe import invalid_json
from relay.templating import (
    TEMPLATE_SUFFIX,
    RenderContext,
    Rendered,
    Renderer,
    fallback_json,
    fallback_text,
    sandbox,
)
from tests.conftest import alert_event, assert_golden

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "trigger"
GOLDEN = Path(__file__).parent / "golden"
# Read at import: the autouse fixture of conftest.py removes RELAY_* variables during tests.
FIXTURE_NAMES = ("failed", "crashed", "timed_out", "completed", "executing")
CHANNEL_PARTS = {"console": ("txt",), "webhook": ("json",)}
DEFAULT_TEMPLATES = sorted(
    (channel_type, path.name.split(".")[0], part)
    for channel_type, parts in CHANNEL_PARTS.items()
    for part in parts
    for path in (shipped_templates_dir() / channel_type).glob(f"run*.{part}{TEMPLATE_SUFFIX}")
    if not path.name.startswith("run_failed.")  # the same as run: test_run_failed_is_run
)
SECRET = "sk_live_51HxSECRETvalue"


def load_run(name: str) -> dict[str, Any]:
    """An SDK fixture run, the way relay holds it: Run.model_validate(...).as_dict()."""
    raw = json.loads((FIXTURES / "realtime-run" / "sdk" / f"run_{name}.json").read_text())
    return Run.model_validate(raw).as_dict()


def context(run: dict[str, Any], channel_type: str = "console") -> RenderContext:
    return RenderContext(
        run=run,
        rule="prod-failures",
        channel=f"team-{channel_type}",
        channel_type=channel_type,
        notification_id="ntf_0123456789abcdef01234567",
        dashboard_url=f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run.get('id')}",
    )


def render_source(
    tmp_path: Path,
    source: str,
    run: dict[str, Any] | None = None,
    channel_type: str = "console",
    part: str = "txt",
) -> Rendered:
    """Render `source` as an override template <channel_type>/t.<part>.j2."""
    (tmp_path / channel_type).mkdir(exist_ok=True)
    (tmp_path / channel_type / f"t.{part}{TEMPLATE_SUFFIX}").write_text(source)
    ctx = context(run if run is not None else load_run("failed"), channel_type)
    return Renderer(tmp_path).render(channel_type, "t", (part,), ctx)


def templates_in(folder: Path, files: dict[str, str]) -> Renderer:
    """A Renderer of the templates directory `folder` is in, with `files` written into it."""
    folder.mkdir()
    for name, source in files.items():
        (folder / name).write_text(source)
    return Renderer(folder.parent)


# ----------------------------------------------------------------------------- golden files


def test_the_default_templates_are_found() -> None:
    assert shipped_templates_dir() == REPO / "templates"
    assert {("console", "run", "txt"), ("webhook", "run", "json")} <= set(DEFAULT_TEMPLATES)


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_run_failed_is_run(channel_type: str) -> None:
    """run_failed only extends run (override it to change failures alone), so it has no
    golden files of its own: it renders exactly as run, for every channel and part."""
    parts = REGISTRY[channel_type].parts
    for fixture in FIXTURE_NAMES:
        ctx = context(load_run(fixture), channel_type)
        failed = Renderer().render(channel_type, "run_failed", parts, ctx)
        assert not failed.fallback, failed.error
        assert failed.parts == Renderer().render(channel_type, "run", parts, ctx).parts


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
@pytest.mark.parametrize(("channel_type", "name", "part"), DEFAULT_TEMPLATES)
def test_default_template_matches_golden(
    channel_type: str, name: str, part: str, fixture: str
) -> None:
    rendered = Renderer().render(
        channel_type, name, (part,), context(load_run(fixture), channel_type)
    )
    assert not rendered.fallback, rendered.error
    text = rendered.parts[part]
    if part == "json":
        orjson.loads(text)
    assert_golden(GOLDEN / channel_type / name / f"run_{fixture}.{part}", text)


@pytest.mark.parametrize(("channel_type", "part"), [("console", "txt"), ("webhook", "json")])
def test_digest_template_matches_golden(channel_type: str, part: str) -> None:
    runs = [load_run(name) for name in FIXTURE_NAMES]
    group = digest_context("grp_0123", {"taskIdentifier": "sync-customer-data"}, runs)
    ctx = replace(context(runs[-1], channel_type), notification_id="dgs_0123", group=group)
    rendered = Renderer().render(channel_type, "digest", (part,), ctx)
    assert not rendered.fallback, rendered.error
    text = rendered.parts[part]
    if part == "json":
        assert orjson.loads(text)["group"]["count"] == len(runs)
    assert_golden(GOLDEN / channel_type / "digest" / f"five_fixtures.{part}", text)


@pytest.mark.parametrize(("channel_type", "part"), [("console", "txt"), ("webhook", "json")])
def test_run_failed_reuses_run(channel_type: str, part: str) -> None:
    renderer = Renderer()
    for fixture in FIXTURE_NAMES:
        ctx = context(load_run(fixture), channel_type)
        plain = renderer.render(channel_type, "run", (part,), ctx)
        failed = renderer.render(channel_type, "run_failed", (part,), ctx)
        assert failed == plain


def test_console_reads_well() -> None:
    renderer = Renderer()
    failed = renderer.render("console", "run", ("txt",), context(load_run("failed"))).parts["txt"]
    first, *rest = failed.splitlines()
    assert first == "🔴 FAILED · sync-customer-data · run_cmuxjbf30kqkowywawhi1r8yr"
    assert "  error     Error: Stripe API responded with 429: Too Many Requests" in rest
    assert not any("node:internal" in line for line in rest)
    assert "  duration  14.9s" in rest
    assert "  rule      prod-failures" in rest
    completed = renderer.render("console", "run", ("txt",), context(load_run("completed")))
    assert completed.parts["txt"].startswith("✅ COMPLETED · send-welcome-email")
    assert "error" not in completed.parts["txt"]


def test_console_prefers_the_raw_internal_error() -> None:
    run = load_run("timed_out")
    run["error"] = {
        "type": "INTERNAL_ERROR",
        "code": "MAX_DURATION_EXCEEDED",
        "message": "Run exceeded maximum compute time (maxDuration) of 300 seconds",
    }
    text = Renderer().render("console", "run", ("txt",), context(run)).parts["txt"]
    expected = "MAX_DURATION_EXCEEDED: Run exceeded maximum compute time (maxDuration) of 300"
    assert f"  error     {expected} seconds\n" in text


def test_webhook_document() -> None:
    run = load_run("crashed")
    rendered = Renderer().render("webhook", "run", ("json",), context(run, "webhook"))
    body = orjson.loads(rendered.parts["json"])
    assert list(body) == ["id", "type", "rule", "channel", "text", "run", "error", "dashboardUrl"]
    assert body["type"] == "run.alert"
    assert body["channel"] == "team-webhook"
    assert body["run"] == run
    assert body["error"]["code"] == "TASK_PROCESS_MAYBE_OOM_KILLED"
    assert body["text"].startswith("🔴 CRASHED · render-video · run_cmaxkfbrjm6jm6gofnnqj1787: ")
    completed = orjson.loads(
        Renderer().render("webhook", "run", ("json",), context(load_run("completed"))).parts["json"]
    )
    assert completed["error"] is None


HOSTILE_MESSAGE = 'He said "hi"\n\tthen </script><script>alert(1)</script> \\ 🔥 \u2028 end'


@pytest.mark.parametrize("name", ["run", "run_failed"])
def test_webhook_json_is_valid_whatever_the_run_holds(name: str) -> None:
    run = load_run("failed")
    run["error"] = {"name": 'Err"or', "message": HOSTILE_MESSAGE, "stackTrace": HOSTILE_MESSAGE}
    run["tags"] = ['quote"tag', "new\nline"]
    run["payload"] = {"</script>": "\u0000", "emoji": "🚀"}
    rendered = Renderer().render("webhook", name, ("json",), context(run, "webhook"))
    assert not rendered.fallback, rendered.error
    body = orjson.loads(rendered.parts["json"])
    assert body["error"]["message"] == HOSTILE_MESSAGE
    assert body["run"]["payload"] == run["payload"]
    assert "\n" not in body["text"]


def test_webhook_carries_the_largest_run_intake_takes() -> None:
    # server.max_body_bytes is 1 MiB by default: such a run is no template bug
    run = load_run("failed")
    run["payload"] = {"blob": "x" * 1_000_000}
    run["error"] = {"message": "boom", "stackTrace": "    at f (a.ts:1:1)\n" * 20_000}
    rendered = Renderer().render("webhook", "run", ("json",), context(run, "webhook"))
    assert not rendered.fallback, rendered.error
    body = orjson.loads(rendered.parts["json"])
    assert body["run"]["payload"] == run["payload"] and body["type"] == "run.alert"


def test_a_fallback_stays_within_the_output_cap(tmp_path: Path) -> None:
    run = {**load_run("failed"), "payload": "p" * 2_100_000, "output": "o" * 2_100_000}
    rendered = render_source(tmp_path, "{{ run|tojson }}", run, "webhook", "json")
    assert rendered.error is not None and rendered.error.startswith("OutputTooLarge in")
    text = rendered.parts["json"]
    assert len(text) <= MAX_OUTPUT_CHARS
    body = orjson.loads(text)
    assert body["run"]["id"] == run["id"] and body["run"]["tags"] == run["tags"]
    assert body["run"]["payload"] == body["run"]["output"] == "[omitted: 2100002 bytes]"
    group = digest_context("k", {"task": "t"}, [run] * 3)
    digest = orjson.loads(fallback_json(replace(context(run, "webhook"), group=group)))
    assert [r["output"] for r in digest["group"]["runs"]] == [body["run"]["output"]] * 3
    wide = {**run, **{f"field{i}": "w" * 150 for i in range(2_000)}}  # no field too large
    group = digest_context("k", {"task": "t"}, [wide] * 30)
    text = fallback_json(replace(context(wide, "webhook"), group=group))
    digest = orjson.loads(text)
    assert len(text) <= MAX_OUTPUT_CHARS and digest["run"] is None and "runs" not in digest["group"]
    assert digest["group"]["count"] == 30 and digest["group"]["labels"] == {"task": "t"}
    assert (body["type"], digest["type"]) == ("run.alert", "run.digest")


def long_error_runs(n: int, text: str = "E") -> list[dict[str, Any]]:
    """`n` failures with ~5 KB errors: in full, 1,000 of them pass the output cap."""
    error = {"name": "Error", "message": text * 3_000, "stackTrace": "    at f (a.ts:1:1)\n" * 100}
    return [{**load_run("failed"), "id": f"run_{i:04d}", "error": error} for i in range(n)]


def webhook_digest(
    runs: list[dict[str, Any]], renderer: Renderer | None = None, limit: int | None = None
) -> Rendered:
    group = digest_context("k", {"taskIdentifier": "t"}, runs)
    ctx = replace(context(runs[-1], "webhook"), group=group, max_body_bytes=limit)
    return (renderer or Renderer()).render("webhook", "digest", ("json",), ctx)


def sized_body(rendered: Rendered, limit: int) -> dict[str, Any]:
    """The digest's body, checked to be rendered by the template and within `limit` bytes."""
    assert not rendered.fallback, rendered.error  # no template error, no fallback
    data = rendered.parts["json"].encode()
    assert len(data) <= limit
    body: dict[str, Any] = orjson.loads(data)
    return body


@pytest.mark.parametrize(
    ("limit", "text", "listed"),
    [
        (None, "E", 391),  # the channel's default, 1 MiB: nginx's default client_max_body_size
        (100_000, "E", 35),  # Express's JSON body-parser
        (100_000, "é😀", 35),  # bytes of UTF-8 counted, not characters
        (16 * 1024, "E", 4),  # the least max_body_bytes
        (3 * 1024 * 1024, "E", 1_000),  # the most: every run listed
    ],
)
def test_a_thousand_runs_with_long_errors_fit_the_receivers_body_limit(
    limit: int | None, text: str, listed: int
) -> None:
    # the digest listed all 1,000 runs in shares of 3,000,000 characters: 2.9 MB, which a
    # receiver taking 1 MiB answered with 413, and the whole digest went to the dead letters
    runs = long_error_runs(1_000, text)
    body = sized_body(webhook_digest(runs, limit=limit), limit or 1024 * 1024)
    readme = {"id", "type", "rule", "channel", "text", "group", "runs", "truncated"}
    assert (set(body), body["type"], body["group"]["count"]) == (readme, "run.digest", 1_000)
    assert [r["id"] for r in body["runs"]] == [r["id"] for r in runs[:listed]]
    assert body["truncated"] == 1_000 - listed  # Alertmanager's truncatedAlerts
    assert body["group"]["labels"] == {"taskIdentifier": "t"}
    for run in body["runs"]:  # each run kept, its long texts cut
        assert run["status"] == "FAILED" and run["taskIdentifier"] == runs[0]["taskIdentifier"]
        assert run["error"]["name"] == "Error" and run["error"]["message"].startswith(text * 3)
        assert run["error"]["message"].endswith("…")
    small = orjson.loads(webhook_digest(runs[:3]).parts["json"])
    assert small["runs"] == orjson.loads(orjson.dumps(runs[:3]))  # a small digest: runs whole


def test_a_digest_of_more_runs_lists_the_first_thousand_and_counts_the_rest() -> None:
    runs = long_error_runs(1_200)
    body = sized_body(webhook_digest(runs, limit=3 * 1024 * 1024), 3 * 1024 * 1024)
    assert [r["id"] for r in body["runs"]] == [r["id"] for r in runs[:1_000]]
    assert (body["group"]["count"], body["truncated"]) == (1_200, 200)


def test_a_huge_group_key_is_cut_to_keep_the_digest_within_the_limit() -> None:
    runs = long_error_runs(10)
    group = digest_context("k" * 50_000, {"taskIdentifier": "t" * 50_000}, runs)
    ctx = replace(context(runs[-1], "webhook"), group=group, max_body_bytes=100_000)
    body = sized_body(Renderer().render("webhook", "digest", ("json",), ctx), 100_000)
    assert body["group"]["key"].startswith("kkk") and body["group"]["key"].endswith("…")
    assert (len(body["runs"]) + body["truncated"], body["group"]["count"]) == (10, 10)


@pytest.mark.parametrize("limit", [None, 100_000])
def test_a_thousand_deployments_with_long_errors_fit_the_webhook_digest(limit: int | None) -> None:
    error = {"name": "BuildError", "message": "E" * 3_000, "stderr": "  at f (a.ts:1:1)\n" * 100}
    event = alert_event("alert.deployment.failed")
    events = [{**event, "id": f"deployment_{i:04d}", "error": error} for i in range(1_000)]
    group = digest_context("k", {}, events)
    ctx = replace(context(events[-1], "webhook"), group=group, max_body_bytes=limit)
    rendered = Renderer().render("webhook", "digest", ("json",), ctx)  # was: past the time budget
    body = sized_body(rendered, limit or 1024 * 1024)
    listed = [d["id"] for d in body["deployments"]]
    assert listed == [e["id"] for e in events[: len(listed)]] and len(listed) >= 35
    assert (body["type"], body["truncated"]) == ("deployment.digest", 1_000 - len(listed))
    assert {d["error"]["name"] for d in body["deployments"]} == {"BuildError"}


def test_a_digest_too_large_for_a_webhook_template_still_names_every_run(tmp_path: Path) -> None:
    # a template of the old shape, every run whole: the body passes the output cap
    source = '{"type": "run.digest", "runs": {{ group.runs|tojson }}}'
    renderer = templates_in(tmp_path / "webhook", {"digest.json.j2": source})
    runs = long_error_runs(1_000)
    rendered = webhook_digest(runs, renderer)
    assert rendered.fallback and len(rendered.parts["json"]) <= MAX_OUTPUT_CHARS
    body = orjson.loads(rendered.parts["json"])
    assert [r["id"] for r in body["group"]["runs"]] == [r["id"] for r in runs]
    assert {r["status"] for r in body["group"]["runs"]} == {"FAILED"}
    assert body["run"]["id"] == "run_0999" and body["run"]["error"].startswith("[omitted: ")
    assert (body["type"], body["group"]["count"]) == ("run.digest", 1_000)


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ({"a": 1}, 100, {"a": 1}),
        ("x" * 50, 45, "x" * 40 + "…"),  # bytes: … takes 3
        ({"id": "r", "big": "y" * 500}, 100, {"id": "r", "big": "y" * 75 + "…"}),
        ([1] * 100, 60, [1, 1]),  # weighed as fields: the cut is short, never too long
        ("x" * 50, 10, "[omitted]"),  # no room worth a cut
        ("é" * 50, 45, "é" * 20 + "…"),  # bytes of UTF-8: é takes 2
        ({"id": "r", "big": "😀" * 100}, 100, {"id": "r", "big": "😀" * 18 + "…"}),
        # weighed as fitting, written longer (its quotes): cut by a few, as a longer one, not
        # halved (1999 and 2000 characters kept 995, 2001 kept 1995)
        ("x" * 1999, 2000, "x" * 1993 + "…"),
        ("x" * 2000, 2000, "x" * 1994 + "…"),
        ("x" * 2001, 2000, "x" * 1995 + "…"),
        ({"a": "x" * 1993}, 2000, {"a": "x" * 1985 + "…"}),
    ],
)
def test_brief_fits_a_value_in_its_limit(value: Any, limit: int, expected: Any) -> None:
    cut = brief(value, limit)
    assert cut == expected
    assert cut == "[omitted]" or len(orjson.dumps(cut)) <= limit


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "run.alert"),
        ({"resolves": "ntf_1"}, "run.recovered"),
        ({"run": {"id": "x", "event": "deployment.failed"}}, "deployment.failed"),
        ({"run": {"id": "x", "event": "error"}}, "error"),
        ({"run": {"id": "x", "event": "<made up>"}}, "run.alert"),
    ],
)
def test_a_webhook_fallback_keeps_the_type_receivers_route_on(
    change: dict[str, Any], expected: str
) -> None:
    """A receiver routing on `type` got a fallback body without it, and dropped the alert."""
    ctx = replace(context(load_run("failed"), "webhook"), **change)
    assert orjson.loads(fallback_json(ctx))["type"] == expected


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("cents", "expected"),
    [
        (0.05027, "$0.0005"),
        (150, "$1.50"),
        (0, "$0.00"),
        (1, "$0.01"),
        (1.637, "$0.02"),
        (0.5, "$0.005"),
        (0.0025, "<$0.0001"),
        (-0.0025, "-<$0.0001"),  # a refund below a hundredth of a cent: still a refund
        (123456, "$1,234.56"),
        (-150, "-$1.50"),
        ("150", "$1.50"),
        (None, ""),
        (True, ""),
        ("cheap", ""),
        (float("nan"), ""),
        # in full, 1e300 cents took 400 characters
        (12_345_678_901_234_500, "$123,456,789,012,345.00"),
        (1e17, "$1e+15"),
        (1e300, "$1e+298"),
        (-1.234e20, "-$1.23e+18"),
        pytest.param(10**400, "", id="past-a-float"),  # no amount (it raised OverflowError)
    ],
)
def test_money(cents: Any, expected: str) -> None:
    assert money(cents) == expected


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (950, "950ms"),
        (14873, "14.9s"),
        (61000, "1m 1s"),
        (3723000, "1h 2m"),
        (3660000, "1h 1m"),
        (90061000, "1d 1h"),
        (0, "0ms"),
        (999.6, "1s"),
        (2000, "2s"),
        (59940, "59.9s"),  # the last tenth of a second before minutes
        (59999, "1m"),
        (120000, "2m"),
        (3600000, "1h"),
        (86400000, "1d"),
        (-1500, "-1.5s"),
        (-0.4, "0ms"),  # no sign on a zero
        (None, ""),
        ("soon", ""),
        (86_400_000 * 999_999 + 3_600_000 * 23, "999999d 23h"),
        (86_400_000 * 10**6, "1e+06d"),
        (1e300, "1.16e+292d"),  # in full, 298 characters
        (-1e300, "-1.16e+292d"),
    ],
)
def test_duration(ms: Any, expected: str) -> None:
    assert duration(ms) == expected


@pytest.mark.parametrize(
    ("value", "length", "end", "expected"),
    [
        ("hello world", 5, "…", "hell…"),
        ("hello", 5, "…", "hello"),
        ("hello world", 1, "…", "…"),
        ("hello world", 0, "…", ""),
        ("hello world", -1, "...", ""),  # below 0: as 0, not "..."[:-1]
        ("hello world", 8, "...", "hello..."),
        ("hello world", 2, "...", ".."),
        ("ab cd", 4, "…", "ab…"),
        (None, 3, "…", ""),
        (12345, 3, "…", "12…"),
        # never a letter without its accent, part of an emoji sequence or half a flag
        ("e\u0301e\u0301e\u0301", 4, "…", "e\u0301…"),
        ("ab\U0001f468\u200d\U0001f469\u200d\U0001f467", 6, "…", "ab…"),
        ("\U0001f44d\U0001f3fd\U0001f44d\U0001f3fd", 3, "…", "\U0001f44d\U0001f3fd…"),
        ("x" + "\U0001f1fa\U0001f1f8" * 3, 5, "…", "x\U0001f1fa\U0001f1f8…"),
        ("\U0001f1fa\U0001f1f8" * 3, 4, "…", "\U0001f1fa\U0001f1f8…"),
        ("\U0001f1fa\U0001f1f8" * 3, 5, "…", "\U0001f1fa\U0001f1f8" * 2 + "…"),
        ("x\u2764\ufe0fy", 3, "…", "x…"),
        ("a\u0915\u093fb", 3, "…", "a…"),  # a spacing mark (Mc): कि whole
        ("a1\u20e3b", 3, "…", "a…"),  # an enclosing mark (Me): the keycap 1⃣ whole
        ("\u05e9\u05b8\u05dc\u05d5\u05b9\u05dd", 4, "…", "\u05e9\u05b8\u05dc…"),
        ("a" + "\u0301" * 100 + "b", 50, "…", "a" + "\u0301" * 48 + "…"),  # no end: cut as is
        # its start 32 code points back is looked for no further: cut as is
        ("ab" + "e" + "\u0301" * 40, 35, "…", "abe" + "\u0301" * 31 + "…"),
        ("ab" + "e" + "\u0301" * 40, 34, "…", "ab…"),  # 31 back: found
        # the first and the last regional indicator (🇦 and 🇿) pair up too: 🇦🇺 and 🇿🇦 kept whole
        ("x\U0001f1e6\U0001f1fa\U0001f1ff\U0001f1e6", 4, "…", "x\U0001f1e6\U0001f1fa…"),
        ("x\U0001f1e6\U0001f1fa\U0001f1ff\U0001f1e6y", 5, "…", "x\U0001f1e6\U0001f1fa…"),
        ("x\U0001f1fayz", 3, "…", "x\U0001f1fa…"),  # a lone indicator: a character alone
        ("x\U0001f1fa\U0001f1f8y", 3, "…", "x…"),  # one flag after a letter: not split
        # the first and last skin tone (🏻 🏿) and tag (U+E0020, the cancel tag U+E007F) attach
        ("\U0001f44d\U0001f3fb\U0001f44d\U0001f3ffxy", 2, "…", "…"),
        ("\U0001f44d\U0001f3fb\U0001f44d\U0001f3ffxy", 4, "…", "\U0001f44d\U0001f3fb…"),
        ("\U0001f3f4\U000e0020\U000e007fxy", 3, "…", "…"),
        ("e\u0301\u0301x", 3, "…", "…"),  # the text's first character: nothing kept of it
        ("e\u0301\u0301x\u200d", 3, "…", "…"),  # nor joined to the text's last (a ZWJ)
    ],
)
def test_truncate_chars(value: Any, length: int, end: str, expected: str) -> None:
    assert truncate_chars(value, length, end) == expected


def test_truncate_chars_never_exceeds_the_limit() -> None:
    text = "x y " * 50
    for length in range(40):
        for end in ("", "…", "...", "[cut]"):
            assert len(truncate_chars(text, length, end)) <= length


def test_stack() -> None:
    trace = load_run("failed")["error"]["stackTrace"]
    assert stack(trace) == (
        "Error: Stripe API responded with 429: Too Many Requests\n"
        "    at fetchInvoices (file:///src/trigger/sync-customer-data.ts:48:11)\n"
        "    at run (file:///src/trigger/sync-customer-data.ts:22:20)"
    )
    assert stack(trace, frames_only=True) == (
        "at fetchInvoices (file:///src/trigger/sync-customer-data.ts:48:11)\n"
        "at run (file:///src/trigger/sync-customer-data.ts:22:20)"
    )
    long_trace = "Error: boom\n" + "\n".join(f"    at f{i} (a.ts:{i}:1)" for i in range(30))
    assert stack(long_trace, max_lines=3).splitlines() == [
        "Error: boom",
        "    at f0 (a.ts:0:1)",
        "    at f1 (a.ts:1:1)",
        "… 28 more lines",
    ]
    assert stack("Traceback (most recent call last):\n  File x") == (
        "Traceback (most recent call last):\n  File x"
    )
    assert stack(None) == ""
    assert stack("Error: boom\n    at f (a.ts:1:1)", max_lines=0) == "… 2 more lines"
    assert stack("Error: boom\n    at f (a.ts:1:1)", max_lines=-1) == "… 2 more lines"
    assert stack("Error: boom\n\n  \n    at f (a.ts:1:1)") == "Error: boom\n    at f (a.ts:1:1)"
    no_frames = "Error: boom\nthe cause"  # nothing to keep but the message: kept
    assert stack(no_frames, frames_only=True) == no_frames


def test_tojson_and_status_emoji() -> None:
    assert tojson({"a": [1, 2.5], "b": None, "c": "é🔥"}) == '{"a":[1,2.5],"b":null,"c":"é🔥"}'
    assert tojson({1: {"b", "a"}}) == '{"1":["a","b"]}'
    # a set in the order of its items' text, whatever the hash seed made its own order
    assert tojson({9, 10, *"hgfedcba"}) == '[10,9,"a","b","c","d","e","f","g","h"]'
    assert tojson([1], indent=2) == "[\n  1\n]"
    statuses = ("FAILED", "TIMED_OUT", "COMPLETED", "CANCELED", "DEPLOYED", "REGRESSION")
    assert [status_emoji(s) for s in statuses] == ["🔴", "🔴", "✅", "⚠️", "✅", "⚠️"]
    assert [status_emoji(s) for s in ("NEW_ISSUE", "UNIGNORED", None)] == ["🚨", "🔔", "⚠️"]


def test_filters_in_a_template(tmp_path: Path) -> None:
    source = (
        "{{ run.costInCents|money }} {{ run.durationMs|duration }} "
        "{{ run.error.message|truncate_chars(10) }} {{ run.tags|tojson }}"
    )
    rendered = render_source(tmp_path, source)
    assert rendered.parts["txt"] == '$0.0005 14.9s Stripe AP… ["customer:cus_Q8x2LmN4","plan:pro"]'


def test_tojson_of_a_filtered_sequence_is_its_items(tmp_path: Path) -> None:
    """Jinja's map and select give generators: tojson sent `"<generator object ...>"`."""
    source = (
        "{{ run.tags|map('upper')|tojson }} {{ run.tags|select('ne', 'plan:pro')|tojson }}"
        " {{ {'a': 1}.items()|tojson }}"
    )
    rendered = render_source(tmp_path, source)
    assert (
        rendered.parts["txt"]
        == '["CUSTOMER:CUS_Q8X2LMN4","PLAN:PRO"] ["customer:cus_Q8x2LmN4"] [["a",1]]'
    )


def test_missing_fields_render_empty(tmp_path: Path) -> None:
    source = "{{ run.nope.deeper }}|{{ payload.x.y|money }}|{{ output.z|duration }}|{{ error.x }}"
    rendered = render_source(tmp_path, source, load_run("completed"))
    assert not rendered.fallback, rendered.error
    assert rendered.parts["txt"] == "|||"


@pytest.mark.parametrize(("frames", "tail"), [(12, ["at f12"]), (13, ["at f12", "… 1 more lines"])])
def test_a_stack_keeps_12_lines_by_default(tmp_path: Path, frames: int, tail: list[str]) -> None:
    trace = "\n".join(f"at f{i}" for i in range(1, frames + 1))
    run = {"error": {"stackTrace": trace}}
    rendered = render_source(tmp_path, "{{ run.error.stackTrace|stack }}", run)
    assert rendered.parts["txt"].splitlines()[11:] == tail


def test_a_missing_field_is_null_in_json(tmp_path: Path) -> None:
    rendered = render_source(tmp_path, "{{ {'a': run.nope, 'b': run.tags|first}|tojson }}")
    assert rendered.parts["txt"] == '{"a":null,"b":"customer:cus_Q8x2LmN4"}'


# ----------------------------------------------------------------------------- the error view


OOM_HINT = "The task process was killed, most likely out of memory. Try a larger machine."
OOM_KILLED_HINT = "The task process ran out of memory. Try a larger machine."
ERROR_VIEWS = [
    (  # the raw row: code and the original message
        {"type": "INTERNAL_ERROR", "code": "MAX_DURATION_EXCEEDED", "message": "Ran 300 s"},
        ("INTERNAL_ERROR", "MAX_DURATION_EXCEEDED", None, "Ran 300 s", None),
    ),
    (  # the raw row without a message: a readable hint
        {"type": "INTERNAL_ERROR", "code": "TASK_PROCESS_OOM_KILLED"},
        ("INTERNAL_ERROR", "TASK_PROCESS_OOM_KILLED", None, OOM_KILLED_HINT, None),
    ),
    (  # the SDK view keeps only the code in its message
        {"message": "trigger.dev internal error (TASK_PROCESS_MAYBE_OOM_KILLED)"},
        ("INTERNAL_ERROR", "TASK_PROCESS_MAYBE_OOM_KILLED", None, OOM_HINT, None),
    ),
    (
        {"message": "trigger.dev internal error (SOMETHING_NEW)"},
        (
            "INTERNAL_ERROR",
            "SOMETHING_NEW",
            None,
            "trigger.dev internal error (SOMETHING_NEW)",
            None,
        ),
    ),
    (
        {
            "type": "BUILT_IN_ERROR",
            "name": "TypeError",
            "message": "x is undefined",
            "stackTrace": "s",
        },
        ("BUILT_IN_ERROR", None, "TypeError", "x is undefined", "s"),
    ),
    ({"type": "STRING_ERROR", "raw": "plain"}, ("STRING_ERROR", None, None, "plain", None)),
    ({"type": "CUSTOM_ERROR", "raw": '{"a":1}'}, ("CUSTOM_ERROR", None, None, '{"a":1}', None)),
    ({"name": "Error", "message": "boom"}, (None, None, "Error", "boom", None)),
    # a shape relay does not know: its JSON, as Trigger.dev wraps an error it cannot parse
    (
        {"type": "NEW_KIND", "detail": 7},
        ("NEW_KIND", None, None, '{"type":"NEW_KIND","detail":7}', None),
    ),
    # a type alone, or a known type with its fields empty (`throw ""`, `throw undefined`):
    # nothing to show, neither an empty error line nor the error's JSON
    ({"type": "NEW_KIND"}, None),
    ({"type": "STRING_ERROR", "raw": ""}, None),
    ({"type": "CUSTOM_ERROR"}, None),
    ({"type": "BUILT_IN_ERROR", "name": "", "message": "", "stackTrace": ""}, None),
    # fields that are no text (a hook's thrown object): their JSON, never Python's repr
    (
        {"message": {"detail": "x", "n": 1}, "stackTrace": ["at a", "at b"]},
        (None, None, None, '{"detail":"x","n":1}', '["at a","at b"]'),
    ),
    (
        {"type": "CUSTOM_ERROR", "raw": {"ok": True}},
        ("CUSTOM_ERROR", None, None, '{"ok":true}', None),
    ),
    (
        {"name": "HttpError", "code": 502, "message": False},
        (None, "502", "HttpError", "false", None),
    ),
    ("just a string", (None, None, None, "just a string", None)),
    ({}, None),
    (["not", "an", "error"], None),
]


@pytest.mark.parametrize(("raw", "expected"), ERROR_VIEWS)
def test_error_view(tmp_path: Path, raw: Any, expected: tuple[Any, ...] | None) -> None:
    run = {**load_run("failed"), "error": raw}
    rendered = render_source(tmp_path, "{{ error|tojson }}", run, "webhook", "json")
    assert not rendered.fallback, rendered.error
    view = orjson.loads(rendered.parts["json"])
    if expected is None:
        assert view is None
        return
    kind, code, name, message, stack_trace = expected
    assert view == {
        "type": kind,
        "code": code,
        "name": name,
        "message": message,
        "stack": stack_trace,
    }


def test_no_error_is_null(tmp_path: Path) -> None:
    rendered = render_source(tmp_path, "{{ error|tojson }}", load_run("completed"))
    assert rendered.parts["txt"] == "null"


# ----------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("line one\n{% if %}\n", "TemplateSyntaxError in console/t.txt.j2:2"),
        ("ok\n{{ nothing_here() }}", "UndefinedError in console/t.txt.j2:2"),
        ("{{ 1 // 0 }}", "ZeroDivisionError in console/t.txt.j2:1"),
        ("{% include 'console/missing.txt.j2' %}", "TemplateNotFound in console/t.txt.j2:1"),
        (
            "{% for i in range(100000) %}{{ 'x' * 50 }}{% endfor %}",
            "OutputTooLarge in console/t.txt.j2: more than 4000000 characters",
        ),
        ("{{ 'x' * 10**9 }}", "LimitExceeded in console/t.txt.j2:1: `*` result would exceed"),
        ("{{ 9**9**9 }}", "LimitExceeded in console/t.txt.j2:1: `**` result would exceed"),
        # was Jinja's OverflowError, not the limit's words other runaway templates get
        ("{{ range(10**9) }}", "LimitExceeded in console/t.txt.j2:1: range() would exceed"),
        ("{{ range(10**30)|list }}", "LimitExceeded in console/t.txt.j2:1: range() would"),
    ],
)
def test_a_broken_template_falls_back(tmp_path: Path, source: str, kind: str) -> None:
    run = load_run("failed")
    rendered = render_source(tmp_path, source, run)
    assert rendered.fallback
    assert rendered.error is not None and rendered.error.startswith(kind)
    assert rendered.parts == {"txt": fallback_text(context(run))}


def test_errors_never_quote_run_data(tmp_path: Path) -> None:
    run = load_run("failed")
    run["error"] = {"message": "{" + SECRET + "}"}  # str.format() raises KeyError(SECRET)
    for source in ("{{ run.error.message.format() }}", "{{ run.error.message|int + [] }}"):
        rendered = render_source(tmp_path, source, run)
        assert rendered.fallback
        assert rendered.error is not None and SECRET not in rendered.error


def test_a_missing_template_falls_back_for_every_part(tmp_path: Path) -> None:
    ctx = context(load_run("failed"), "email")
    rendered = Renderer(tmp_path).render("email", "nope", ("subject", "txt", "html", "json"), ctx)
    assert rendered.fallback
    assert rendered.error == "TemplateNotFound in email/nope.subject.j2"
    text = fallback_text(ctx)
    assert rendered.parts["subject"] == rendered.parts["txt"] == text
    assert rendered.parts["html"].startswith("<pre>") and "&lt;" not in text
    assert orjson.loads(rendered.parts["json"])["text"] == text


def test_one_failing_part_fails_all_parts(tmp_path: Path) -> None:
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "t.subject.j2").write_text("Subject {{ run.id }}")
    (tmp_path / "email" / "t.html.j2").write_text("<p>{{ run.id }}</p>\n{{ 1 // 0 }}")
    ctx = context({**load_run("failed"), "taskIdentifier": "<b>task</b>"}, "email")
    rendered = Renderer(tmp_path).render("email", "t", ("subject", "html"), ctx)
    assert rendered.fallback
    assert rendered.error == "ZeroDivisionError in email/t.html.j2:2"
    assert rendered.parts["subject"] == fallback_text(ctx)
    assert "&lt;b&gt;task&lt;/b&gt;" in rendered.parts["html"]


def test_html_templates_autoescape(tmp_path: Path) -> None:
    run = {**load_run("failed"), "taskIdentifier": "<b>task</b>"}
    rendered = render_source(tmp_path, "{{ run.taskIdentifier }}", run, "email", "html")
    assert rendered.parts["html"] == "&lt;b&gt;task&lt;/b&gt;"
    plain = render_source(tmp_path, "{{ run.taskIdentifier }}", run, "email", "txt")
    assert plain.parts["txt"] == "<b>task</b>"


def test_an_override_without_the_j2_suffix_serves_too(tmp_path: Path) -> None:
    """SPEC writes overrides as `templates/<channel type>/run_failed.*`: an operator who names
    one `webhook/run_failed.json` gets it (a `.j2` file of the name still wins), autoescaped
    like its `.j2` name when HTML."""
    run = {**load_run("failed"), "taskIdentifier": "<b>task</b>"}
    for name, source in {
        "webhook/run_failed.json": '{"mine": {{ run.taskIdentifier|tojson }}}',
        "webhook/both.json": '{"plain": true}',
        "webhook/both.json.j2": '{"j2": true}',
        "email/run_failed.html": "{{ run.taskIdentifier }}",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(source)
    renderer = Renderer(tmp_path)
    rendered = renderer.render("webhook", "run_failed", ("json",), context(run, "webhook"))
    assert json.loads(rendered.parts["json"]) == {"mine": "<b>task</b>"}
    both = renderer.render("webhook", "both", ("json",), context(run, "webhook"))
    assert json.loads(both.parts["json"]) == {"j2": True}
    html = renderer.render("email", "run_failed", ("html",), context(run, "email"))
    assert html.parts["html"] == "&lt;b&gt;task&lt;/b&gt;"
    assert renderer.has_template("webhook", "run_failed", "json")


def test_html_templates_escape_what_a_plain_text_macro_returns(tmp_path: Path) -> None:
    """A macro of a file that is not autoescaped returns text, not markup, wherever it is
    called: the HTML part escapes it (Jinja would mark it safe in an autoescaping caller)."""
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "_mine.j2").write_text("{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}")
    (tmp_path / "email" / "_mine.html.j2").write_text(
        "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}"
    )
    run = {**load_run("failed"), "taskIdentifier": "<i>task</i>"}
    source = (
        '{% import "email/_macros.j2" as m %}{% import "email/_mine.j2" as t %}'
        '{% import "email/_mine.html.j2" as h %}'
        "{{ m.first_line(run.taskIdentifier) }}|{{ t.b(run.taskIdentifier) }}|"
        "{{ h.b(run.taskIdentifier) }}"
    )
    assert render_source(tmp_path, source, run, "email", "html").parts["html"] == (
        "&lt;i&gt;task&lt;/i&gt;|&lt;b&gt;&lt;i&gt;task&lt;/i&gt;&lt;/b&gt;|<b>&lt;i&gt;task&lt;/i&gt;</b>"
    )
    text = render_source(tmp_path, source, run, "email", "txt").parts["txt"]
    assert text == "<i>task</i>|<b><i>task</i></b>|<b>&lt;i&gt;task&lt;/i&gt;</b>"


def test_invalid_json_falls_back(tmp_path: Path) -> None:
    run = load_run("failed")
    rendered = render_source(
        tmp_path, '{"text": "{{ run.error.message }}",}', run, "webhook", "json"
    )
    assert rendered.fallback
    assert rendered.error is not None and rendered.error.startswith(
        "InvalidJSON in webhook/t.json.j2"
    )
    body = orjson.loads(rendered.parts["json"])
    assert body == orjson.loads(fallback_json(context(run, "webhook")))
    assert list(body) == ["id", "type", "rule", "channel", "text", "run", "dashboardUrl"]
    assert body["run"] == run


def test_fallback_text() -> None:
    ctx = context(load_run("timed_out"))
    assert fallback_text(ctx) == (
        "🔴 TIMED_OUT · generate-report · run_cm2sztw7kk0rni01qot5nkf60: MAX_DURATION_EXCEEDED: "
        "The run exceeded its maximum compute time (maxDuration). (rule: prod-failures) "
        "https://cloud.trigger.dev/projects/v3/proj_abc123/runs/run_cm2sztw7kk0rni01qot5nkf60"
    )
    bare = RenderContext({}, "r", "c", "console", "ntf_1", None)
    assert fallback_text(bare) == "⚠️ UNKNOWN · unknown task (rule: r)"
    assert orjson.loads(fallback_json(bare))["dashboardUrl"] is None
    huge = RenderContext({"id": "run_1", "big": 2**70}, "r", "c", "webhook", "ntf_1", None)
    assert orjson.loads(fallback_json(huge))["run"] == {"id": "run_1", "big": "[omitted: not JSON]"}


def test_a_digest_fallback_counts_its_runs_and_names_its_labels_if_any() -> None:
    """A digest's fallback leads with its count and statuses, its labels only when it has some
    (no empty `[]`); a group it cannot read gives the last resort, never a failed render."""
    run = {"id": "run_1", "status": "FAILED", "taskIdentifier": "t"}
    group = {"count": 3, "by_status": {"FAILED": 3}}
    ctx = RenderContext(run, "r", "c", "console", "dgs_1", None, group=group)
    latest = "latest: 🔴 FAILED · t · run_1 (rule: r)"
    assert fallback_text(ctx) == f"3 runs: 3 FAILED (rule: r); {latest}"
    labelled = replace(ctx, group={**group, "labels": {"task": "t"}})
    assert fallback_text(labelled) == f"3 runs [task=t]: 3 FAILED (rule: r); {latest}"
    unreadable = replace(ctx, group={"by_status": [1]})  # no mapping of status to count
    assert fallback_text(unreadable) == "relay notification dgs_1 (rule: r)"


def test_a_fallback_of_exactly_the_output_cap_keeps_its_run_whole() -> None:
    """The cap is MAX_OUTPUT_CHARS bytes included: a body of exactly that size is sent as it is,
    one byte more and the run's fields over 10,000 bytes are omitted (10,000 kept)."""
    ctx = RenderContext({"id": "run_1", "x": ""}, "r", "c", "webhook", "ntf_1", None)
    pad = MAX_OUTPUT_CHARS - len(fallback_json(ctx).encode())  # bytes: "⚠️ … · …"
    text = fallback_json(replace(ctx, run={"id": "run_1", "x": "a" * pad}))
    assert len(text.encode()) == MAX_OUTPUT_CHARS and orjson.loads(text)["run"]["x"] == "a" * pad
    over = fallback_json(replace(ctx, run={"id": "run_1", "x": "a" * (pad + 1)}))
    assert orjson.loads(over)["run"]["x"] == f"[omitted: {pad + 3} bytes]"
    edge = "b" * (10_000 - 2)  # 10,000 bytes of JSON: the most a field keeps then
    slim = fallback_json(replace(ctx, run={"id": "run_1", "x": "a" * (pad + 1), "edge": edge}))
    assert orjson.loads(slim)["run"]["edge"] == edge


def test_a_deployment_fallback_names_the_deployment_not_an_unknown_task() -> None:
    deployment = {
        "id": "deployment_1",
        "event": "deployment.failed",
        "status": "FAILED",
        "taskIdentifier": "",
        "deployment": {"id": "deployment_1", "version": "20260820.2"},
    }
    ctx = RenderContext(deployment, "r", "c", "console", "ntf_1", None)
    assert fallback_text(ctx) == "🔴 FAILED · deployment 20260820.2 · deployment_1 (rule: r)"


# ----------------------------------------------------------------------------- the sandbox

HOSTILE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ self.__init__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ ''['__class__'] }}",
    "{{ run|attr('__class__') }}",
    "{{ nothing.__class__ }}",
    "{{ run.items.__self__ }}",
    "{{ 'a' * 10**9 }}",
    "{{ [0] * 10**9 }}",
    "{{ range(10**9)|list }}",
    "{{ (10**10**10) }}",
    "{{ 10 ** (10 ** 10) }}",
    "{{ (10 ** 100) * (10 ** 100) }}",
    "{{ '%999999999s' % 'a' }}",
    "{{ '%999999999s'|format('a') }}",
    "{{ '{:>999999999}'.format('a') }}",
    "{{ '{:>{w}}'.format('a', w=999999999) }}",
    "{{ 'a'.ljust(999999999) }}",
    "{{ 'a'|center(999999999) }}",
    "{{ 'a\\nb'|indent(999999999) }}",
    "{{ [1]|batch(999999999, 'x')|list }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_fall_back_quickly(tmp_path: Path, source: str) -> None:
    started = time.thread_time()  # CPU: a loaded machine's wall clock fails correct code
    rendered = render_source(tmp_path, source)
    assert time.thread_time() - started < 2
    assert rendered.fallback, rendered.parts
    assert rendered.error is not None
    assert rendered.parts["txt"] == fallback_text(context(load_run("failed")))


def _grown(start: str, step: str, then: str = "|length") -> str:
    """A template setting a value to `start`, then 7 times to `step` of it (`v`), printing it."""
    return (
        f"{{% set ns = namespace(v={start}) %}}{{% for i in range(7) %}}"
        f"{{% set ns.v = {step.replace('v', 'ns.v')} %}}{{% endfor %}}{{{{ ns.v{then} }}}}"
    )


# each builds ~10 million characters in one step, or doubles a value in a loop: refused before
# the step runs (or right after a step that only multiplies a few times), as one `replace` or `~`
# cannot be stopped halfway: 100x these sizes held a render for seconds and gigabytes
AMPLIFIERS = [
    "{{ ('x' * 3000)|replace('x', 'y' * 3000)|length }}",
    "{{ ('x' * 3000).replace('x', 'y' * 3000)|length }}",
    "{{ range(3000)|join('y' * 3000)|length }}",
    "{{ ('y' * 3000).join(['x'] * 3000)|length }}",
    "{{ ('\\t' * 3000).expandtabs(3000)|length }}",
    "{{ ('a\\n' * 3000)|indent('y' * 3000)|length }}",
    "{{ (['x' * 100000] * 100)|join|length }}",
    "{{ [1]|batch(3000, 'x' * 3000)|list|string|length }}",
    "{{ [1]|batch(3000, 'x' * 3000)|list|tojson|length }}",
    "{{ [1]|slice(3000, 'x' * 3000)|list|upper|length }}",
    "{% set l = ['x' * 3000] * 1000 %}{{ [l, l, l, l]|sum(start=[])|length }}",
    _grown("'x' * 100000", "v ~ v"),
    _grown("'x' * 100000", "v + v"),
    _grown("['x' * 100000]", "v + v", "|join|length"),
    _grown("'x' * 100000", "'%s%s' % (v, v)"),
    _grown("'x' * 100000", "'{0}{0}'.format(v)"),
    _grown("'\"' * 100000", "v|tojson"),
    "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}" + _grown("'x' * 100000", "twice(v)"),
    "{% set ns = namespace(v='x' * 100000) %}{% for i in range(7) %}"
    "{% set block %}{{ ns.v }}{{ ns.v }}{% endset %}{% set ns.v = block %}"
    "{% endfor %}{{ ns.v|length }}",
]


@pytest.mark.parametrize("source", AMPLIFIERS)
def test_huge_intermediate_values_are_refused(tmp_path: Path, source: str) -> None:
    rendered = render_source(tmp_path, source)
    assert rendered.fallback, rendered.parts
    assert rendered.error is not None and rendered.error.startswith("OutputTooLarge in console/t")


@pytest.mark.parametrize(
    "call",
    [
        "batch(3000, 'x' * 3000)",
        "batch(linecount=3000, fill_with='x' * 3000)",  # by name: was not looked at
        "batch(3000, fill_with='x' * 3000)",
        "slice(slices=3000, fill_with='x' * 3000)",
    ],
)
def test_a_fill_too_large_is_refused_before_it_is_made(tmp_path: Path, call: str) -> None:
    """3000 copies of a 3000-character fill, however the arguments are given: a batch made
    so and written out (`|string`) built gigabytes before the value's own limit stopped it."""
    rendered = render_source(tmp_path, "{{ [1]|" + call + "|list|length }}")
    assert rendered.error is not None and "the fill would exceed" in rendered.error


def test_large_values_within_the_limits_still_render(tmp_path: Path) -> None:
    source = (
        "{{ ('x' * 1000)|replace('x', 'yy')|length }} {{ range(1000)|join('--')|length }} "
        "{{ (['ab' * 1000] * 100)|join|length }} {{ ([{'a': 1}] * 2)|join(',', attribute='a') }} "
        "{{ (('x' * 100000) ~ ('y' * 100000))|length }} "
        "{{ ([1, 2] + [3])|tojson }} {{ 'a' ~ 1 }} {{ ('\\t' * 10).expandtabs(4)|length }}"
    )
    expected = "2000 4888 200000 1,1 200000 [1,2,3] a1 40"
    source += " {{ ([[1]] * 30000)|sum(start=[0])|length }} {{ [[1], [2]]|sum(start=[]) }}"
    expected += " 30001 [1, 2]"
    # str.join as the method; a text of many tabs is checked as such only by expandtabs
    source += " {{ '-'.join(['a', 'b']) }} {{ ('\\t' * 1000).center(5000)|length }}"
    expected += " a-b 5000"
    source += " {{ 'ab'|center(6) }}|{{ [1, 2, 3]|batch(2, 0)|list }}"  # a width-guarded filter
    expected += "   ab  |[[1, 2], [3, 0]]"
    source += " {{ ('x' * 1000)|replace('x', 'y' * 10000, 1)|length }}"  # one replaced: small
    expected += " 10999"
    assert render_source(tmp_path, source).parts["txt"] == expected


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("{{ ('x' * 3000)|replace('x', 'y' * 3000)|length }}", "replace would exceed"),
        ("{{ ('x' * 3000).replace('x', 'y' * 3000)|length }}", "replace would exceed"),
        ("{{ ('\\t' * 3000).expandtabs(3000)|length }}", "expandtabs would exceed"),
        ("{{ ('a\\n' * 3000)|indent('y' * 3000)|length }}", "indent would exceed"),
        # small items, a large separator: the gaps count too
        ("{{ (['x'] * 3000)|join('y' * 3000)|length }}", "the result would exceed"),
        (
            "{{ range(2000)|map('string')|map('center', 3000)|join|length }}",
            "the result would exceed",
        ),
    ],
)
def test_an_amplifier_is_refused_before_it_runs(tmp_path: Path, source: str, words: str) -> None:
    """In its own words: not by the limit of the value it built (gigabytes at 100x)."""
    rendered = render_source(tmp_path, source)
    assert rendered.error is not None and words in rendered.error


CPU_BURNERS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% for a in [1] * 50000 recursive %}{{ loop([2] * 50000) if a == 1 }}{% endfor %}",
    "{{ range(99999)|select('in', range(99999)|list)|list|length }}",
    "{{ range(99999)|map('string')|reject('in', range(99999)|map('string')|list)|list }}",
    # fewer iterations than the loop's look at the clock: each step looks itself
    "{% set l = range(20000)|list %}{% for i in range(255) %}{% set x = l + l %}{% endfor %}",
    "{% set l = range(20000)|list %}{% for i in range(255) %}{{ l|unique|list|length }}"
    "{% endfor %}",
    # a body of large scans: each item, comparison and test looks at the clock
    "{% set l = range(100000)|list %}{% set m = l|list %}{% for i in range(255) %}"
    + "{{ 'x' in l }}{{ l == m }}" * 4
    + "{% endfor %}",
]


_BIG_TEXT = "{% set s = 'ab' * 50000 %}{% set s = " + " ~ ".join(["s"] * 30) + " %}"
MEMORY_BURNERS = [  # each step within its limits; together ~70-100 MB, ~1 GB given a second
    "{% set l = range(100000)|list %}{% set all = [" + "l|list, " * 30 + "] %}{{ all|length }}",
    "{% set l = range(100000)|list %}{% set all = [" + "l[1:], " * 30 + "] %}{{ all|length }}",
    _BIG_TEXT + "{% set all = [" + "s ~ 'x', " * 22 + "] %}{{ all|length }}",
    _BIG_TEXT + "{% set all = [" + "s.encode(), " * 22 + "] %}{{ all|length }}",
    _BIG_TEXT + "{% for i in range(22) %}{% set _ %}{{ s }}{% endset %}{% endfor %}",
    _BIG_TEXT + "{% set ns = namespace(t='', keep=[]) %}{% for i in range(22) %}"
    "{% set ns.t = s ~ i %}{% set ns.keep = ns.keep + [ns.t] %}{% endfor %}",
]


@pytest.mark.parametrize(
    ("source", "budget_s", "error"),
    [
        *((source, 0.05, "RenderTimeout") for source in CPU_BURNERS),
        *((source, 60.0, "OutputTooLarge") for source in MEMORY_BURNERS),
    ],
)
def test_runaway_templates_give_the_fallback(
    tmp_path: Path, source: str, budget_s: float, error: str
) -> None:
    """Endless ones are stopped by the clock; those that fill the memory step by step, each
    step within its limits, by what the render built in total."""
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "t.txt.j2").write_text(source)
    ctx = context(load_run("failed"))
    rendered = Renderer(tmp_path, budget_s=budget_s).render("console", "t", ("txt",), ctx)
    assert rendered.fallback
    assert rendered.error is not None and rendered.error.startswith(f"{error} in console/t")
    assert rendered.parts["txt"] == fallback_text(ctx)


class _Waiting:
    """Items that come slowly without using the CPU: as a render thread waiting for the
    interpreter lock, or a process waiting for a core, sees the wall clock go on."""

    def __iter__(self) -> Iterator[str]:
        for tag in ("a", "b", "c", "d", "e"):
            time.sleep(0.03)
            yield tag


def test_the_budget_counts_the_renders_cpu_not_its_waiting(tmp_path: Path) -> None:
    """0.15 s of waiting against a 0.05 s budget: a busy relay (the event loop holding the
    lock) gave the fallback for a template that had hardly started."""
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "t.txt.j2").write_text("{% for t in run.tags %}{{ t }}{% endfor %}")
    ctx = context({**load_run("failed"), "tags": _Waiting()})
    renderer = Renderer(tmp_path, budget_s=0.05)
    rendered = renderer.render("console", "t", ("txt",), ctx)
    assert rendered.error is None and rendered.parts["txt"] == "abcde"
    # the event loop's own try counts the wall clock: it bounds how long the loop is held
    on_loop = renderer.render("console", "t", ("txt",), ctx, wall_s=0.05)
    assert on_loop.timed_out and on_loop.fallback


def test_a_text_built_up_in_a_namespace_counts_once(tmp_path: Path) -> None:
    """`{% set ns.text = ns.text ~ line %}`, Jinja's way to build a text in a loop, was charged
    every copy: 2,000 runs or 1 MiB of metadata (0.1 s to render) passed MAX_BUILT_CHARS."""
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "t.txt.j2").write_text(
        "{% set ns = namespace(text='', lines=[]) %}{% for k, v in run.metadata|dictsort %}"
        "{% set ns.text = ns.text ~ k ~ '=' ~ v ~ '\\n' %}{% set ns.lines = ns.lines + [k] %}"
        "{% endfor %}{{ ns.lines|length }} {{ ns.text|length }}"
    )
    run = {**load_run("failed"), "metadata": {f"key{i:04d}": "v" * 200 for i in range(4000)}}
    rendered = Renderer(tmp_path, budget_s=60).render("console", "t", ("txt",), context(run))
    assert rendered.error is None and rendered.parts["txt"] == "4000 836000"


def test_a_long_run_of_scans_is_stopped(tmp_path: Path) -> None:
    """No loop: each comparison and test looks at the clock (a scan of a large list takes a
    millisecond; a template of many of them held the event loop past its budget)."""
    (tmp_path / "console").mkdir()
    source = "{% set l = range(100000)|list %}" + "{{ 'x' in l }}{{ 'x' is in l }}" * 200
    (tmp_path / "console" / "t.txt.j2").write_text(source)
    renderer, ctx = Renderer(tmp_path, budget_s=0.05), context(load_run("failed"))
    renderer.render("console", "t", ("txt",), ctx)  # compiles it: the next render only runs it
    rendered = renderer.render("console", "t", ("txt",), ctx)
    assert rendered.error is not None and rendered.error.startswith("RenderTimeout in console/t")


def test_loops_behave_as_in_jinja_within_the_budget(tmp_path: Path) -> None:
    source = (
        "{% for i in range(3) %}{{ loop.length }}{{ loop.revindex }}{% endfor %}|"
        "{% for x in [0, 1, 2] if x %}{{ x }}{% else %}none{% endfor %}|"
        "{% for x in run.missing %}{{ x }}{% else %}empty{% endfor %}|"
        "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}|"
        "{% for n in [{'v': 1, 'c': [{'v': 2}]}] recursive %}{{ n.v }}{{ loop(n.c) if n.c }}"
        "{% endfor %}"
    )
    assert render_source(tmp_path, source).parts["txt"] == "333231|12|empty|a=1|12"


def test_dunder_keys_of_data_stay_readable(tmp_path: Path) -> None:
    run = {**load_run("failed"), "payload": {"__typename": "Invoice"}}
    rendered = render_source(tmp_path, "{{ payload.__typename }} {{ payload['__typename'] }}", run)
    assert rendered.parts["txt"] == "Invoice Invoice"


def test_reasonable_arithmetic_still_works(tmp_path: Path) -> None:
    source = (
        "{{ '-' * 20 }} {{ 2 ** 10 }} {{ 3 * 4 }} {{ '%5.1f' % 3.14159 }} {{ '{:>6}'.format('x') }}"
    )
    rendered = render_source(tmp_path, source)
    assert rendered.parts["txt"] == "-------------------- 1024 12   3.1      x"


def test_sandbox_expressions() -> None:
    run = load_run("failed")
    env = sandbox()
    check = env.compile_expression("run.durationMs > 10000 and 'plan:pro' in run.tags")
    assert check(run=run) is True
    missing = env.compile_expression("run.metadata.customer.tier == 'enterprise'")
    assert missing(run=run) is False
    assert env.compile_expression("run.costInCents|money")(run=run) == "$0.0005"
    for source in ("run.__class__", "'a' * 10**9", "cycler.__init__.__globals__"):
        with pytest.raises(SecurityError):
            env.compile_expression(source)(run=run)
    assert sandbox() is not env


# README's sandbox limits, in its numbers (not relay's constants: a changed one fails here)
MAX_SEQUENCE_LEN, MAX_INT_BITS, MAX_WIDTH, MAX_VALUE_CHARS = 100_000, 128, 100_000, 4_000_000
HALF = MAX_VALUE_CHARS // 2


@pytest.mark.parametrize(
    ("source", "values"),
    [  # each limit README names, reached and not passed: the step runs
        ("'a' * n", {"n": MAX_SEQUENCE_LEN}),
        ("[0] * n", {"n": MAX_SEQUENCE_LEN}),
        ("range(n)|length", {"n": MAX_SEQUENCE_LEN}),
        ("2 ** n", {"n": MAX_INT_BITS}),
        ("a * b", {"a": 2**64, "b": 2**63}),  # 65 + 64 bits: at most 128 in the product
        ("'x'|center(n)|length", {"n": MAX_WIDTH}),
        ("a + b", {"a": "a" * HALF, "b": "b" * HALF}),
        ("a|lower|length", {"a": "A" * MAX_VALUE_CHARS}),
    ],
)
def test_a_step_at_a_sandbox_limit_runs(source: str, values: dict[str, Any]) -> None:
    assert sandbox().compile_expression(source)(**values) is not None


@pytest.mark.parametrize(
    ("source", "values"),
    [  # ...and one past it is refused
        ("'a' * n", {"n": MAX_SEQUENCE_LEN + 1}),
        ("n * [0]", {"n": MAX_SEQUENCE_LEN + 1}),
        ("range(n)|length", {"n": MAX_SEQUENCE_LEN + 1}),
        ("range(n)|length", {"n": 10**30}),  # more than an index can count
        ("2 ** n", {"n": MAX_INT_BITS + 1}),
        ("a * b", {"a": 2**64, "b": 2**64}),
        ("'x'|center(n)|length", {"n": MAX_WIDTH + 1}),
        ("a + b", {"a": "a" * HALF, "b": "b" * (HALF + 1)}),
        ("a|lower|length", {"a": "A" * (MAX_VALUE_CHARS + 1)}),
    ],
)
def test_a_step_past_a_sandbox_limit_is_refused(source: str, values: dict[str, Any]) -> None:
    with pytest.raises(LimitExceeded):
        sandbox().compile_expression(source)(**values)


# ----------------------------------------------------------------------------- lookup and check


def test_override_dir_beats_shipped(tmp_path: Path) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "run.txt.j2").write_text("OVERRIDE {{ run.id }}")
    renderer = Renderer(tmp_path)
    ctx = context(load_run("failed"))
    assert renderer.render("console", "run", ("txt",), ctx).parts["txt"] == (
        "OVERRIDE run_cmuxjbf30kqkowywawhi1r8yr"
    )
    # the shipped run_failed extends console/run.txt.j2 by name, so it picks the override up
    assert renderer.render("console", "run_failed", ("txt",), ctx).parts["txt"] == (
        "OVERRIDE run_cmuxjbf30kqkowywawhi1r8yr"
    )
    # other templates still come from the shipped directory
    webhook = renderer.render("webhook", "run", ("json",), context(load_run("failed"), "webhook"))
    assert not webhook.fallback


def test_overrides_render_as_they_were_read(tmp_path: Path) -> None:
    """The running config's templates are the files as they were when it was read: one edited
    since (a reload refused it, or a reload of it is to come) rendered from the disk the first
    time it was used, and a delivery worker renders the files its parent read."""
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "run.txt.j2").write_text("READ {{ run.id }}")
    renderer = Renderer(tmp_path)
    (tmp_path / "console" / "run.txt.j2").write_text("{{ broken")
    ctx = context(load_run("failed"))
    want = "READ run_cmuxjbf30kqkowywawhi1r8yr"
    assert renderer.render("console", "run", ("txt",), ctx).parts["txt"] == want
    assert renderer.broken_overrides() == []
    files = {"console/run.txt.j2": b"SENT {{ run.id }}"}
    worker = Renderer(tmp_path, files=files)
    assert worker.render("console", "run", ("txt",), ctx).parts["txt"].startswith("SENT ")


def test_has_template(tmp_path: Path) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "custom.json.j2").write_text("{}")
    renderer = Renderer(tmp_path)
    assert renderer.has_template("console", "run", "txt")
    assert renderer.has_template("slack", "custom", "json")
    assert not renderer.has_template("console", "run", "html")
    assert not renderer.has_template("console", "../console/run", "txt")
    assert not Renderer(tmp_path / "absent").has_template("slack", "custom", "json")


def test_check(tmp_path: Path) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "bad.txt.j2").write_text("one\ntwo\n{% for x in %}\n")
    renderer = Renderer(tmp_path)
    for channel_type, name, part in DEFAULT_TEMPLATES:
        assert renderer.check(channel_type, name, part) is None
    problem = renderer.check("console", "bad", "txt")
    assert problem is not None and problem.startswith("console/bad.txt.j2:3: ")
    assert renderer.check("console", "nope", "txt") == "template console/nope.txt.j2 not found"


def test_check_compiles_what_a_template_imports_includes_or_extends(tmp_path: Path) -> None:
    """A broken override of a partial (slack/_macros.j2, imported by the shipped slack/run)
    makes every Slack message fall back: `relay check` names it; an optional include may be
    absent."""
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "_macros.j2").write_text("{% macro md(x) %}\n{{ x }\n")
    (tmp_path / "slack" / "mine.json.j2").write_text(
        '{% include "slack/absent.j2" ignore missing %}{"text": "x"}'
    )
    renderer = Renderer(tmp_path)
    problem = renderer.check("slack", "run", "json")
    assert problem is not None and problem.startswith("slack/_macros.j2:2: "), problem
    assert renderer.check("slack", "mine", "json") is None
    assert renderer.check("console", "run", "txt") is None


def test_check_finds_a_template_that_reaches_itself_on_every_render(tmp_path: Path) -> None:
    """a extends b extends a, or a top-level include or import of itself: every render is a
    RecursionError and the fallback, and `relay check` said OK. One behind an `if` may stop."""
    renderer = templates_in(
        tmp_path / "webhook",
        {
            "a.json.j2": '{% extends "webhook/b.json.j2" %}',
            "b.json.j2": '{% import "webhook/_m.j2" as m %}{% extends "webhook/a.json.j2" %}',
            "_m.j2": "{% macro x() %}{% endmacro %}",
            "self.json.j2": '{"a": 1}\n{% include "webhook/self.json.j2" %}',
            "tree.json.j2": (
                '{% if run.child %}{% include "webhook/tree.json.j2" %}{% endif %}{"a": 1}'
            ),
        },
    )
    assert renderer.check("webhook", "a", "json") == (
        "webhook/b.json.j2:1: it reaches itself on every render "
        "(webhook/a.json.j2 → webhook/b.json.j2 → webhook/a.json.j2)"
    )
    assert renderer.check("webhook", "self", "json") == (
        "webhook/self.json.j2:2: it reaches itself on every render "
        "(webhook/self.json.j2 → webhook/self.json.j2)"
    )
    assert renderer.check("webhook", "tree", "json") is None
    assert renderer.render("webhook", "tree", ("json",), context(load_run("failed"))).error is None
    # the names check follows each reference once: a loop is no endless walk
    assert renderer.unknown_names("webhook", "tree", "json") == []
    assert renderer.unknown_names("webhook", "a", "json") == []


def test_an_unknown_filter_is_a_check_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "run.txt.j2").write_text("one\n{{ run.id | no_such_filter }}\n")
    renderer = Renderer(tmp_path)
    assert renderer.check("console", "run", "txt") == (
        "console/run.txt.j2:2: No filter named 'no_such_filter'."
    )
    assert renderer.unknown_names("console", "run", "txt") == []


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (
            "{% if error %}\n{{ error.message|truncte(100) }}\n{% endif %}",
            "No filter named 'truncte'.",
        ),
        ("{{ 'x' if run.tags else run.id|mony }}\n", "No filter named 'mony'."),
        ("{% if run.tags is sequense %}x{% endif %}\n", "No test named 'sequense'."),
        ("{% if run %}{% filter uper %}x{% endfilter %}{% endif %}\n", "No filter named 'uper'."),
    ],
)
def test_an_unknown_filter_in_a_branch_is_a_check_problem(
    tmp_path: Path, source: str, why: str
) -> None:
    """Jinja waits for the line to run before refusing an unknown filter or test inside an `if`:
    relay check said OK, and the rule sent the fallback whenever the branch was taken."""
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "run.txt.j2").write_text(source)
    (tmp_path / "console" / "unused.txt.j2").write_text(source)
    renderer = Renderer(tmp_path)
    line = 2 if source.startswith("{% if error %}") else 1
    assert renderer.check("console", "run", "txt") == f"console/run.txt.j2:{line}: {why}"
    assert f"console/unused.txt.j2:{line}: {why}" in renderer.broken_overrides()


def test_every_shipped_template_uses_only_known_filters_and_tests() -> None:
    renderer = Renderer()
    for path in sorted(shipped_templates_dir().rglob("*.j2")):
        channel_type, file = path.relative_to(shipped_templates_dir()).parts
        name, part = file.removesuffix(".j2").rsplit(".", 1) if file.count(".") > 1 else (file, "")
        if part:
            assert renderer.check(channel_type, name, part) is None, path


def test_the_dashboard_url_filter_links_any_run(tmp_path: Path) -> None:
    (tmp_path / "console").mkdir()
    (tmp_path / "console" / "t.txt.j2").write_text(
        "{% for r in group.runs %}{{ r|dashboard_url }} {% endfor %}[{{ none|dashboard_url }}]"
    )
    runs = [{"id": "run_1"}, {"id": "run_2", "dashboardUrl": "https://own.test/2"}]
    ctx = replace(context(runs[0]), group=digest_context("k", {}, runs))
    renderer = Renderer(tmp_path, link=lambda run: run.get("dashboardUrl") or f"/r/{run['id']}")
    assert renderer.render("console", "t", ("txt",), ctx).parts["txt"] == (
        "/r/run_1 https://own.test/2 []"
    )
    assert Renderer(tmp_path).render("console", "t", ("txt",), ctx).parts["txt"] == "  []"


def test_a_none_prints_as_nothing_not_the_word() -> None:
    """`{{ dashboard_url }}` without a project_ref, `{{ run.finishedAt }}` of a running run:
    messages read "None"; JSON through tojson still says null."""
    source = "{{ a }}|{{ run.finishedAt }}|{{ a|tojson }}|{{ 0 }}|{{ false }}"
    rendered = sandbox().from_string(source).render(a=None, run={"finishedAt": None})
    assert rendered == "||null|0|False"


def test_check_follows_extends_includes_and_imports(tmp_path: Path) -> None:
    files = {
        "base.txt.j2": "one\n{% block b %}{% endblock %}\n{{ oops( }}\n",
        "child.txt.j2": '{% extends "console/base.txt.j2" %}{% block b %}x{% endblock %}',
        "inc.txt.j2": 'a\n{% if run.tags %}{% include "console/gone.txt.j2" %}{% endif %}',
        "imp.txt.j2": '{% from "console/_m.j2" import m %}{% import "console/_m.j2" as n %}',
        "_m.j2": '{% macro m() %}{% include "console/child.txt.j2" %}{% endmacro %}',
        "fine.txt.j2": (
            '{% include "console/gone.txt.j2" ignore missing %}{% include run.id %}'
            '{% include ["console/gone.txt.j2", "console/run.txt.j2"] %}'
        ),
        "loop.txt.j2": '{% include "console/loop.txt.j2" %}',
    }
    renderer = templates_in(tmp_path / "console", files)
    for channel_type in REGISTRY:
        for path in (shipped_templates_dir() / channel_type).glob(f"[!_]*{TEMPLATE_SUFFIX}"):
            name, part = path.name.split(".")[:2]
            assert renderer.check(channel_type, name, part) is None, path
    syntax = "console/base.txt.j2:3: unexpected '}', expected ')'"
    assert renderer.check("console", "child", "txt") == syntax
    assert renderer.check("console", "imp", "txt") == syntax
    missing = "console/inc.txt.j2:2: template console/gone.txt.j2 not found"
    assert renderer.check("console", "inc", "txt") is None  # Jinja looks it up when it runs
    assert renderer.missing_references("console", "inc", "txt") == [missing]
    for name in ("fine", "loop", "child"):
        assert renderer.check("console", name, "txt") in (None, syntax) or name == "loop"
        assert renderer.missing_references("console", name, "txt") == []
    assert renderer.check("console", "loop", "txt") == (
        "console/loop.txt.j2:1: it reaches itself on every render "
        "(console/loop.txt.j2 → console/loop.txt.j2)"
    )


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ('{% extends "console/gone.txt.j2" %}{% block b %}x{% endblock %}', "mine.txt.j2:1"),
        ('one\n{% include "console/gone.txt.j2" %}', "mine.txt.j2:2"),
        ('{% import "console/gone.txt.j2" as m %}{{ m.x() }}', "mine.txt.j2:1"),
        ('{% from "console/gone.txt.j2" import x %}{{ x() }}', "mine.txt.j2:1"),
        ('{% extends "console/base.txt.j2" %}', "base.txt.j2:2"),
    ],
)
def test_check_refuses_a_template_every_render_of_which_needs_one_that_is_missing(
    tmp_path: Path, source: str, where: str
) -> None:
    """A top-level extends, include or import of a template that does not exist runs on every
    render: every message was the fallback, and `relay check` said OK with a warning."""
    renderer = templates_in(
        tmp_path / "console",
        {"mine.txt.j2": source, "base.txt.j2": 'x\n{% include "console/gone.txt.j2" %}'},
    )
    rendered = renderer.render("console", "mine", ("txt",), context(load_run("failed")))
    assert rendered.fallback and rendered.error is not None
    assert rendered.error.startswith("TemplateNotFound"), rendered.error
    assert renderer.check("console", "mine", "txt") == (
        f"console/{where}: template console/gone.txt.j2 not found (every render needs it)"
    )


def test_the_names_relay_check_knows_are_the_context() -> None:
    assert (
        set(template_variables(RenderContext({}, "r", "c", "console", "ntf_1", None)))
        == CONTEXT_NAMES
    )


def test_errors_name_an_override_without_j2_as_its_file_is_named(tmp_path: Path) -> None:
    """`webhook/mine.json` serves as `webhook/mine.json.j2`; its errors named the `.j2` file,
    which the operator looks for in vain."""
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / "mine.json").write_text('{"a": 1,\n "b": {{ run.id.__class__ }}}')
    (tmp_path / "webhook" / "broken.json").write_text('{"a": {{ run.id }\n}')
    renderer = Renderer(tmp_path)
    rendered = renderer.render("webhook", "mine", ("json",), context(load_run("failed"), "webhook"))
    assert rendered.fallback and rendered.error == "SecurityError in webhook/mine.json:2"
    assert renderer.check("webhook", "broken", "json") == ("webhook/broken.json:1: unexpected '}'")


def test_invalid_json_names_an_override_without_j2_as_its_file_is_named(tmp_path: Path) -> None:
    """The output checks (InvalidJSON, a Slack message with nothing to show) named the `.j2`
    file a `.j2`-less override serves as; relay check's probe for hand-quoted values too."""
    (tmp_path / "webhook").mkdir()
    (tmp_path / "webhook" / "mine.json").write_text('{"title": "{{ run.error.message }}"}')
    renderer = Renderer(tmp_path)
    assert invalid_json(renderer, "webhook", "mine") == (
        "webhook/mine.json renders invalid JSON (output line 1 column 15) when run data holds "
        "a quote, a backslash or a line break: write each value through tojson, not inside quotes"
    )
