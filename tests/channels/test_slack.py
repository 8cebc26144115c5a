"""The slack channel: settings, default templates (golden, Block Kit valid), limits, error
classification and threading — against a fake Slack on loopback, the real store and relay.

Regenerate the golden files with `RELAY_UPDATE_GOLDEN=1 pytest tests/channels/test_slack.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.channels import ChannelEnv, KeyValue, Outgoing, Recovery, settings_models
from relay.channels._http import HttpClient
from relay.channels._slack_threads import THREADS
from relay.channels.slack import SlackChannel, SlackSettings, slack_message
from relay.config import RateLimit
from relay.config_load import parse_config
from relay.errors import ConfigError, DeliveryError
from relay.model import Run
from relay.store.sqlite import SQLiteStore
from relay.templating import RenderContext, Renderer, fallback_json
from tests.conftest import RelayFactory, assert_golden, sdk_run
from tests.fakes.serving import raw_server, serving
from tests.fakes.slack import (
    FIRST_TS,
    TOKEN,
    WEBHOOK_PATH,
    FakeSlack,
    Reply,
    api_error,
    block_kit_problems,
    check_classified,
    classified,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "slack"
FIXTURE_NAMES = ("failed", "crashed", "timed_out", "completed", "executing")
SECRETS = (TOKEN, WEBHOOK_PATH.rsplit("/", 1)[1])


@pytest.fixture
def store(sqlite_store: SQLiteStore) -> SQLiteStore:
    return sqlite_store


def load_run(name: str, **extra: Any) -> dict[str, Any]:
    return Run.model_validate({**sdk_run(name), **extra}).as_dict()


def render(run: dict[str, Any], name: str = "run_failed", link: bool = True) -> str:
    url = f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{run['id']}" if link else None
    ctx = RenderContext(run, "prod-failures", "oncall", "slack", "ntf_0123456789abcdef", url)
    rendered = Renderer().render("slack", name, ("json",), ctx)
    assert not rendered.fallback, rendered.error
    return rendered.parts["json"]


def rendered_message(run: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(render(run, **kwargs))
    assert block_kit_problems(message) == []
    return message


def texts(message: dict[str, Any]) -> list[str]:
    """Every text of the message, in order (header, sections, fields, context elements)."""
    out = []
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                out.append(obj["text"])
    return out


def outgoing(part: str, run_id: str = "run_1", rule: str = "r") -> Outgoing:
    return Outgoing("ntf_1", run_id, rule, {"json": part}, 1_700_000_000.0)


def make_channel(
    slack: FakeSlack,
    http: HttpClient,
    bot: bool = False,
    state: KeyValue | None = None,
    **options: Any,
) -> SlackChannel:
    mode = (
        {"token": TOKEN, "channel": "#oncall", "api_url": slack.api_url}
        if bot
        else {"webhook_url": slack.webhook_url}
    )
    settings = SlackSettings.model_validate({"type": "slack", **mode, **options})
    return SlackChannel("oncall", settings, ChannelEnv(http, io.StringIO(), 2.0, state))


# ----------------------------------------------------------------------------- settings


def config_problems(options: str) -> list[str]:
    text = f"channels:\n  oncall: {{type: slack, {options}}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", settings_models(), env={})
    return [p.message for p in info.value.problems]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("", "a slack channel needs webhook_url, or token + channel"),
        (
            "webhook_url: https://hooks.slack.com/services/T/B/sekrit, token: xoxb-1",
            "use either webhook_url, or token + channel, not both",
        ),
        ("token: xoxb-sekrit", "token and channel go together: set both"),
        ("token: '', channel: '#oncall'", "token is empty (the bot's xoxb-… token)"),
        ("channel: '#oncall'", "token and channel go together: set both"),
        (
            "webhook_url: http://hooks.slack.com/services/T/B/sekrit",
            "webhook_url must be an https:// URL (http:// only for localhost)",
        ),
        ("webhook_url: not-a-url-sekrit", "webhook_url must be an https:// URL"),
        (
            "token: xoxb-sekrit, channel: C1, api_url: 'ftp://x'",
            "api_url must be an https:// URL (http:// only for localhost)",
        ),
        (
            "webhook_url: https://hooks.slack.com/services/T/B/sekrit, username: bot",
            "username and icon_emoji only work with token + channel",
        ),
        ("webhook_url: https://hooks.slack.com/x, nope: 1", "unknown key"),
    ],
)
def test_settings_are_checked_without_quoting_secrets(options: str, message: str) -> None:
    [problem] = config_problems(options)
    assert problem.startswith(message)
    assert "sekrit" not in problem


def test_settings_modes_and_default_rate_limit() -> None:
    hook = SlackSettings.model_validate({"type": "slack", "webhook_url": "http://127.0.0.1:9/x"})
    assert hook.rate_limit == RateLimit(per_second=1, burst=3)
    bot = SlackSettings.model_validate(
        {"type": "slack", "token": "xoxb-1", "channel": "C1", "api_url": "https://x.test/api/"}
    )
    assert bot.api_url == "https://x.test/api" and bot.webhook_url is None
    own = SlackSettings.model_validate(
        {"type": "slack", "webhook_url": "https://h.test/x", "rate_limit": {"per_minute": 20}}
    )
    assert own.rate_limit == RateLimit(per_minute=20)
    assert "xoxb-1" not in repr(bot)


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_default_template_matches_golden(fixture: str) -> None:
    name = "run"
    text = render(load_run(fixture), name)
    message = json.loads(text)
    assert block_kit_problems(message) == []
    assert slack_message(text, "-") == message  # the defaults need no clamping
    pretty = json.dumps(message, indent=2, ensure_ascii=False) + "\n"
    assert_golden(GOLDEN / name / f"run_{fixture}.json", pretty)


def test_failure_reads_well_at_3am() -> None:
    message = rendered_message(load_run("failed"))
    assert message["text"] == (
        "🔴 FAILED · sync-customer-data · run_cmuxjbf30kqkowywawhi1r8yr: "
        "Error: Stripe API responded with 429: Too Many Requests"
    )
    header, error, trace, *rest = message["blocks"]
    assert header["text"] == {
        "type": "plain_text",
        "emoji": True,
        "text": "🔴 FAILED · sync-customer-data",
    }
    assert error["text"]["text"] == "*Error*: Stripe API responded with 429: Too Many Requests"
    assert trace["text"]["text"].startswith("```at fetchInvoices (file:///src/trigger/")
    assert trace["text"]["text"].endswith("```") and "node:internal" not in trace["text"]["text"]
    context = [e["text"] for e in rest[0]["elements"]]
    assert context == [
        "`run_cmuxjbf30kqkowywawhi1r8yr`",
        "🕒 2026-08-20 09:14:22 UTC",  # Slack shows only when it was posted: late after an outage
        "⏱ 14.9s",
        "💰 $0.0005",
        "🏷 customer:cus_Q8x2LmN4, plan:pro",
        "rule *prod-failures*",
    ]
    assert '"step":"fetch-invoices"' in rest[1]["elements"][0]["text"]
    [button] = rest[2]["elements"]
    assert button["text"]["text"] == "Open run in Trigger.dev"
    assert button["url"].endswith("/runs/run_cmuxjbf30kqkowywawhi1r8yr")


def test_internal_errors_show_the_code_and_environment_when_present() -> None:
    crashed = load_run("crashed", environment={"id": "e", "type": "PRODUCTION", "slug": "prod"})
    found = texts(rendered_message(crashed, link=False))
    assert found[1] == (
        "*TASK_PROCESS_MAYBE_OOM_KILLED*: The task process was killed, most likely out of memory."
        " Try a larger machine."
    )
    assert "🌐 prod" in found and "trigger.dev internal error" not in " ".join(found)
    raw = load_run("timed_out", environment="staging")
    raw["error"] = {"type": "INTERNAL_ERROR", "code": "MAX_DURATION_EXCEEDED", "message": "300 s"}
    found = texts(rendered_message(raw))
    assert found[1] == "*MAX_DURATION_EXCEEDED*: 300 s" and "🌐 staging" in found
    assert not any(t.startswith("🌐") for t in texts(rendered_message(load_run("failed"))))


def test_completed_runs_show_cost_and_no_error() -> None:
    message = rendered_message(load_run("completed", costInCents=1234), link=False)
    header, details, _context = message["blocks"]
    assert header["text"]["text"] == "✅ COMPLETED · send-welcome-email"
    assert [f["text"] for f in details["fields"]] == ["*Cost*\n$12.34", "*Duration*\n1.5s"]
    assert all(b["type"] != "actions" for b in message["blocks"])


def test_run_data_cannot_ping_or_forge_links() -> None:
    run = load_run("failed", tags=["<!channel>"])
    run["error"] = {"name": "Error", "message": "<!here> see <https://evil.test|docs> & retry"}
    message = rendered_message(run)
    joined = json.dumps(message)
    assert "<!" not in joined and "<https://evil" not in joined
    assert "&lt;!here&gt; see &lt;https://evil.test|docs&gt; &amp; retry" in texts(message)[1]


def test_huge_runs_stay_within_slack_limits() -> None:
    stack = "Error: boom\n" + "\n".join(f"    at f{i} (<anonymous>:{i}:1)" for i in range(2000))
    run = load_run(
        "failed",
        taskIdentifier="billing/" + "very-long-task-name-" * 30,
        tags=[f"tenant:{i:05d}-" + "x" * 40 for i in range(500)],
        metadata={f"key{i}": "v" * 200 for i in range(200)},
    )
    run["error"] = {"name": "Error", "message": "m<" * 2500, "stackTrace": stack[:20_000]}
    assert len(run["error"]["stackTrace"]) == 20_000
    long_line = {**run, "error": {**run["error"], "stackTrace": "<" * 20_000}}
    for case in (run, long_line):
        text = render(case)
        message = json.loads(text)
        assert block_kit_problems(message) == []
        assert slack_message(text, "-") == message
        assert len(message["blocks"][0]["text"]["text"]) == 150
        trace = message["blocks"][2]["text"]["text"]
        assert trace.endswith("more lines```" if case is run else "&lt;…```")


# ----------------------------------------------------------------------------- the channel


ABUSIVE = {
    "text": "t" * 50_000,
    "run": {"a": 1},  # not a Slack key: dropped
    "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 500}},
        {"type": "header", "text": {"type": "plain_text", "text": "   "}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "```" + "s" * 10_000 + "```"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 3000}] * 15},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c" * 4000}] * 20},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "b" * 200},
                    "url": "https://x.test/",
                },
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "b"},
                    "url": "https://x.test/" + "u" * 3000,
                },
                {  # Slack's longest URL: kept, and one character over: dropped
                    "type": "button",
                    "text": {"type": "plain_text", "text": "b"},
                    "url": "https://x.test/" + "u" * 2985,
                },
                {"type": "button", "text": {"type": "plain_text", "text": "b"}, "url": "h" * 3001},
            ],
        },
        *[{"type": "divider", "block_id": "i" * 300}] * 60,
    ],
}


async def test_an_override_template_cannot_break_slack_limits(
    slack: FakeSlack, http: HttpClient
) -> None:
    message = slack_message(json.dumps(ABUSIVE), "-")
    assert block_kit_problems(message) == []
    assert len(message["blocks"]) == 50 and "run" not in message
    assert message["blocks"][1]["text"]["text"].endswith("s…```")
    [actions] = [block for block in message["blocks"] if block["type"] == "actions"]
    assert [len(button["url"]) for button in actions["elements"]] == [15, 3000]
    await make_channel(slack, http).send(outgoing(json.dumps(ABUSIVE)))
    assert slack.problems == [[]]


async def test_the_template_fallback_is_a_plain_text_message(
    slack: FakeSlack, http: HttpClient
) -> None:
    run = load_run("failed")
    ctx = RenderContext(run, "prod-failures", "oncall", "slack", "ntf_1", None)
    await make_channel(slack, http).send(outgoing(fallback_json(ctx)))
    [body] = slack.posted()
    assert set(body) == {"text", "unfurl_links", "unfurl_media"}
    assert body["text"].startswith("🔴 FAILED · sync-customer-data")
    await make_channel(slack, http).send(outgoing("[]"))
    assert slack.posted()[1]["text"] == "relay: rule r matched run run_1"


async def test_the_template_fallback_cannot_ping_or_forge_links(
    slack: FakeSlack, http: HttpClient, tmp_path: Path
) -> None:
    (tmp_path / "slack").mkdir()
    (tmp_path / "slack" / "broken.json.j2").write_text("{{ 1 // 0 }}")
    error = {"message": "<!channel> see <https://evil.test|the fix> & more"}
    run = load_run("failed", taskIdentifier="<!here>", error=error)
    ctx = RenderContext(run, "r", "oncall", "slack", "ntf_1", None)
    rendered = Renderer(tmp_path).render("slack", "broken", ("json",), ctx)
    assert rendered.fallback
    await make_channel(slack, http).send(outgoing(rendered.parts["json"]))
    [body] = slack.posted()
    assert "<" not in body["text"] and ">" not in body["text"]
    assert "&lt;here&gt;" not in body["text"]
    assert "&lt;!here&gt;" in body["text"]
    assert "&lt;!channel&gt; see &lt;https://evil.test|the fix&gt; &amp; more" in body["text"]


async def test_the_default_text_cannot_ping(slack: FakeSlack, http: HttpClient) -> None:
    blocks_only = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}])
    await make_channel(slack, http).send(outgoing(blocks_only, "<!channel> & <https://x|y>"))
    [body] = slack.posted()
    assert body["text"] == ("relay: rule r matched run &lt;!channel&gt; &amp; &lt;https://x|y&gt;")


def mrkdwn_objects(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Every mrkdwn text object of the message's blocks."""
    found = []
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                found.append(obj)
    return found


async def test_run_data_cannot_ping_by_name(slack: FakeSlack, http: HttpClient) -> None:
    # a mrkdwn text object Slack parses (verbatim: false, its default) turns a plain @here,
    # @channel or @user-group into a mention; relay sends its texts verbatim, a template's
    # explicit choice kept
    run = load_run("failed", tags=["@here"])
    run["error"] = {"name": "Error", "message": "@channel deploy broke; ask @oncall-team"}
    part = json.loads(render(run))
    part["blocks"].append(
        {"type": "section", "text": {"type": "mrkdwn", "text": "<!here>", "verbatim": False}}
    )
    await make_channel(slack, http).send(outgoing(json.dumps(part)))
    [body] = slack.posted()
    *sent, chosen = mrkdwn_objects(body)
    assert "@channel deploy broke" in json.dumps(sent) and "@here" in json.dumps(sent)
    assert all(obj["verbatim"] is True for obj in sent)
    assert chosen == {"type": "mrkdwn", "text": "<!here>", "verbatim": False}


async def test_bot_message_is_authenticated_and_threaded(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    channel = make_channel(slack, http, bot=True, state=store, icon_emoji=":rotating_light:")
    part = render(load_run("failed"))
    # concurrent sends about one run: one top-level message, the others in its thread
    await asyncio.gather(*(channel.send(outgoing(part, "run_a")) for _ in range(3)))
    await channel.send(outgoing(part, "run_b"))
    assert await store.kv_get(THREADS, "oncall:#oncall:run_a") == FIRST_TS
    first, *replies, other = slack.calls
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    body = first.json()
    assert body["channel"] == "#oncall" and body["icon_emoji"] == ":rotating_light:"
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    assert "thread_ts" not in body and "thread_ts" not in other.json()
    assert [r.json()["thread_ts"] for r in replies] == [FIRST_TS, FIRST_TS]
    assert slack.problems == [[]] * 4


async def test_a_thread_in_use_outlives_the_retention_and_an_unused_one_is_pruned(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    channel = make_channel(slack, http, bot=True, state=store)
    part = render(load_run("failed"))
    for run_id in ("run_a", "run_b"):  # both threads started at 1_700_000_000
        await channel.send(outgoing(part, run_id))
    later = dataclasses.replace(outgoing(part, "run_a"), timestamp=1_700_100_000.0)
    await channel.send(later)  # a reply in run_a's thread, days later, keeps it
    await store.prune(before=1_700_050_000.0)
    assert await store.kv_list(THREADS) == {"oncall:#oncall:run_a": FIRST_TS}


@pytest.mark.parametrize(
    "refusal", ["cannot_reply_to_message", "thread_not_found", "restricted_action_thread_locked"]
)
async def test_a_thread_that_takes_no_replies_is_started_anew(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore, refusal: str
) -> None:
    channel = make_channel(slack, http, bot=True, state=store)
    part = render(load_run("failed"))
    await channel.send(outgoing(part, "run_a"))
    slack.script(api_error(refusal))  # e.g. someone deleted the first message
    await channel.send(outgoing(part, "run_a"))
    await channel.send(outgoing(part, "run_a"))
    new_ts = await store.kv_get(THREADS, "oncall:#oncall:run_a")
    threads = [body.get("thread_ts") for body in slack.posted()]
    assert threads == [None, FIRST_TS, None, new_ts] and new_ts not in (None, FIRST_TS)


async def test_a_reply_slack_posted_at_the_top_level_starts_the_thread_anew(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    """Slack answers ok to a reply whose first message was deleted, and posts it at the top
    level: its echoed message has no thread_ts. Later replies go under that one."""
    channel = make_channel(slack, http, bot=True, state=store)
    part = render(load_run("failed"))
    await channel.send(outgoing(part, "run_a"))
    lone = {"type": "message", "text": "x", "ts": "1712345678.999000"}
    slack.script(Reply(200, {"ok": True, "channel": "C123", "ts": lone["ts"], "message": lone}))
    await channel.send(outgoing(part, "run_a"))
    await channel.send(outgoing(part, "run_a"))
    threads = [body.get("thread_ts") for body in slack.posted()]
    assert threads == [None, FIRST_TS, lone["ts"]]


async def test_a_store_outage_loses_only_the_thread_and_says_of_which_message(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The message goes out without its thread; the warnings carry the run id, rule and
    notification id, as every line about a delivery does (SPEC §6), not the channel alone."""
    await store.close()  # the store goes away: thread lookup and save fail
    channel = make_channel(slack, http, bot=True, state=store)
    await channel.send(outgoing(render(load_run("failed")), "run_a"))
    assert len(slack.posted()) == 1
    lines = [r for r in caplog.records if r.getMessage().startswith("slack thread")]
    assert [r.getMessage() for r in lines] == [
        "slack thread lookup failed",
        "slack thread not saved",
    ]
    fields = ("run_id", "rule", "channel", "notification_id")
    assert {tuple(getattr(r, f, None) for f in fields) for r in lines} == {
        ("run_a", "r", "oncall", "ntf_1")
    }


async def test_a_new_slack_channel_starts_its_own_threads(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    part = render(load_run("failed"))
    await make_channel(slack, http, bot=True, state=store).send(outgoing(part, "run_a"))
    moved = make_channel(slack, http, bot=True, state=store, channel="#oncall-2")
    await moved.send(outgoing(part, "run_a"))  # the ts of #oncall means nothing there
    await moved.send(outgoing(part, "run_a"))
    posted = [(body["channel"], body.get("thread_ts")) for body in slack.posted()]
    second_ts = "1712345678.000101"
    assert posted == [("#oncall", None), ("#oncall-2", None), ("#oncall-2", second_ts)]


async def test_a_thread_an_older_relay_started_goes_on_after_the_upgrade(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    """Relays before 2026-12-04 kept a run's thread under `<channel name>:<run id>`: the run's
    follow-up sent by this one replies in it (black-box: 00d5e10 posted the EXECUTING alert,
    HEAD then posted the FAILED one at the top level), and keeps it under today's key."""
    old_ts = "1700000000.000001"
    await store.kv_put(THREADS, "oncall:run_a", old_ts, 1.0)  # as the older relay kept it
    channel = make_channel(slack, http, bot=True, state=store)
    part = render(load_run("failed"))
    await channel.send(outgoing(part, "run_a"))
    await channel.send(outgoing(part, "run_a"))
    assert [body.get("thread_ts") for body in slack.posted()] == [old_ts, old_ts]
    assert await store.kv_get(THREADS, "oncall:#oncall:run_a") == old_ts


async def test_a_digest_reply_is_also_shown_in_the_channel(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    """A group's next digest tells of new failures, maybe days after its first: a reply seen
    only in that old thread would notify nobody. A run's follow-up stays in its thread."""
    channel = make_channel(slack, http, bot=True, state=store)
    part = render(load_run("failed"))
    digest = dataclasses.replace(outgoing(part), group_key="grp_1")
    for message in (digest, digest, outgoing(part, "run_a"), outgoing(part, "run_a")):
        await channel.send(message)
    slack.script(api_error("thread_not_found"))  # the digest thread's first message deleted
    await channel.send(digest)
    posted = [(b.get("thread_ts"), b.get("reply_broadcast")) for b in slack.posted()]
    run_ts = "1712345678.000102"
    assert posted == [
        (None, None),
        (FIRST_TS, True),
        (None, None),
        (run_ts, None),
        (FIRST_TS, True),
        (None, None),  # starts the group's thread anew: nothing to broadcast from
    ]


async def test_replicas_sending_about_one_run_at_once_start_one_thread(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    """Two processes (replicas, or delivery workers) each hold a notification of run_a: the
    one that finds no thread posts the first message; the other waits for its ts."""
    slack.post_delay_s = 0.2  # the first post is still in flight when the second send starts
    replicas = [make_channel(slack, http, bot=True, state=store) for _ in range(2)]
    part = render(load_run("failed"))
    await asyncio.gather(*(channel.send(outgoing(part, "run_a")) for channel in replicas))
    assert [body.get("thread_ts") for body in slack.posted()] == [None, FIRST_TS]
    assert await store.kv_get(THREADS, "oncall:#oncall:run_a") == FIRST_TS


async def test_when_the_first_message_fails_the_waiting_replica_starts_the_thread(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    slack.script(Reply(200, {"ok": False, "error": "channel_not_found"}, delay_s=0.2))
    replicas = [make_channel(slack, http, bot=True, state=store) for _ in range(2)]
    part = render(load_run("failed"))
    sends = (channel.send(outgoing(part, "run_a")) for channel in replicas)
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["DeliveryError", "str"]
    assert [body.get("thread_ts") for body in slack.posted()] == [None, None]
    assert await store.kv_get(THREADS, "oncall:#oncall:run_a") == FIRST_TS


async def test_a_first_message_that_failed_hands_its_thread_lease_back(
    slack: FakeSlack, http: HttpClient, store: SQLiteStore
) -> None:
    """The lease on starting a thread ends with its first message's send, failed too: its retry
    (or another replica's message) would otherwise wait out the lease, 2 timeouts and 5 s, for
    a thread nobody is starting."""
    slack.script(api_error("internal_error"))
    err = await send_error(make_channel(slack, http, bot=True, state=store))
    assert err.reason == "server_error"
    lease = f"{THREADS}:oncall:#oncall:run_1"
    assert await store.try_lead(lease, "another sender", 60.0, time.time())


async def send_error(channel: SlackChannel) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await channel.send(outgoing(render(load_run("failed"))))
    err = info.value
    assert not any(secret in str(err) for secret in SECRETS)
    return err


# what to do, said after the words Slack answers with (a first send-test meets them)
NOT_FOUND_HINT = "no channel by that name or id the bot can see; a private one must invite the bot"
WEBHOOK_ERRORS = [
    (Reply(400, "invalid_payload"), "client_error", False, None, "invalid_payload (HTTP 400)"),
    (Reply(400, "invalid_blocks"), "client_error", False, None, "invalid_blocks (HTTP 400)"),
    (Reply(400, "user_not_found"), "client_error", False, None, "user_not_found (HTTP 400)"),
    (Reply(403, "action_prohibited"), "auth_error", False, None, "action_prohibited (HTTP 403)"),
    (Reply(403, "invalid_token"), "auth_error", False, None, "invalid_token (HTTP 403)"),
    (Reply(404, "no_service"), "auth_error", False, None, "no_service (HTTP 404)"),
    (Reply(404, "no_active_hooks"), "auth_error", False, None, "no_active_hooks (HTTP 404)"),
    (
        Reply(404, "channel_not_found"),
        "client_error",
        False,
        None,
        "channel_not_found (HTTP 404): " + NOT_FOUND_HINT,
    ),
    (
        Reply(410, "channel_is_archived"),
        "client_error",
        False,
        None,
        "channel_is_archived (HTTP 410)",
    ),
    (
        Reply(429, "rate_limited", {"Retry-After": "7"}),
        "rate_limited",
        True,
        7.0,
        "rate_limited (HTTP 429)",
    ),
    (Reply(500, "rollup_error"), "server_error", True, None, "rollup_error (HTTP 500)"),
    (Reply(503, "", {"Retry-After": "30"}), "server_error", True, 30.0, "HTTP 503"),
    (  # said as the webhook channel says it: "other: HTTP 302" named no target
        Reply(302, "", {"Location": "https://hooks.slack.com/services/T0/B0/x?a=1"}),
        "other",
        False,
        None,
        "HTTP 302: redirect to https://hooks.slack.com, not followed",
    ),
    (Reply(407, ""), "network", True, None, "proxy answered HTTP 407"),
    (
        Reply(502, "<html>Bad Gateway " + SECRETS[1] + "</html>"),
        "server_error",
        True,
        None,
        "HTTP 502",
    ),
]


@classified(WEBHOOK_ERRORS)
async def test_webhook_errors_are_classified(
    slack: FakeSlack,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    slack.script(reply, reply)  # a refused layout is sent again as text: refuse it too
    err = await send_error(make_channel(slack, http))
    check_classified(err, reason, retryable, retry_after, detail)


API_ERRORS = [
    *[
        (api_error(n), "auth_error", False, None, n)
        for n in (
            "invalid_auth",
            "not_authed",
            "token_revoked",
            "account_inactive",
        )
    ],
    (
        api_error("missing_scope"),
        "auth_error",
        False,
        None,
        "missing_scope: the bot token lacks a scope: chat:write (chat:write.customize with"
        " username or icon_emoji)",
    ),
    (
        api_error("channel_not_found"),
        "client_error",
        False,
        None,
        "channel_not_found: " + NOT_FOUND_HINT,
    ),
    (
        api_error("not_in_channel"),
        "client_error",
        False,
        None,
        "not_in_channel: the bot is not in the channel: invite it (/invite @bot)",
    ),
    *[
        (api_error(n), "client_error", False, None, n)
        for n in (
            "is_archived",
            "invalid_blocks",
            "msg_too_long",
            "no_text",
        )
    ],
    *[
        (api_error(n), "server_error", True, None, n)
        for n in (
            "internal_error",
            "fatal_error",
            "service_unavailable",
            "request_timeout",
            "team_added_to_org",  # mid-migration to an Enterprise Grid: back later
        )
    ],
    (
        api_error("ratelimited", 429, {"Retry-After": "3"}),
        "rate_limited",
        True,
        3.0,
        "ratelimited (HTTP 429)",
    ),
    (
        api_error("rate_limited", 200, {"Retry-After": "2"}),
        "rate_limited",
        True,
        2.0,
        "rate_limited",
    ),
    (api_error("something_new"), "client_error", False, None, "something_new"),
    (Reply(200, {"ok": False}), "client_error", False, None, "unknown_error"),
    (Reply(200, "<html>captive portal</html>"), "other", True, None, "Slack answered without JSON"),
    (Reply(502, "<html>bad gateway</html>"), "server_error", True, None, "HTTP 502"),
    (
        Reply(401, {"ok": False, "error": "invalid_auth " + TOKEN}),
        "auth_error",
        False,
        None,
        "HTTP 401",
    ),
]


@classified(API_ERRORS)
async def test_web_api_errors_are_classified(
    slack: FakeSlack,
    http: HttpClient,
    reply: Reply,
    reason: str,
    retryable: bool,
    retry_after: float | None,
    detail: str,
) -> None:
    slack.script(reply, reply)  # a refused layout is sent again as text: refuse it too
    err = await send_error(make_channel(slack, http, bot=True))
    check_classified(err, reason, retryable, retry_after, detail)


async def test_real_answers_of_the_fake_are_classified(slack: FakeSlack, http: HttpClient) -> None:
    hook = SlackSettings.model_validate(
        {"type": "slack", "webhook_url": slack.url + "/services/T/B/revoked"}
    )
    err = await send_error(SlackChannel("oncall", hook, ChannelEnv(http, io.StringIO(), 2.0)))
    assert (err.reason, err.detail) == ("auth_error", "no_service (HTTP 404)")
    bot = SlackSettings.model_validate(
        {"type": "slack", "token": "xoxb-wrong", "channel": "C1", "api_url": slack.api_url}
    )
    err = await send_error(SlackChannel("oncall", bot, ChannelEnv(http, io.StringIO(), 2.0)))
    assert (err.reason, err.retryable, err.detail) == ("auth_error", False, "invalid_auth")
    assert "xoxb-wrong" not in str(err)


@pytest.mark.parametrize(
    "status",
    [b"101 Switching Protocols\r\nUpgrade: h2c", b"300 Multiple Choices\r\nContent-Length: 0"],
)
async def test_only_a_2xx_answer_is_a_delivery(
    slack: FakeSlack, http: HttpClient, status: bytes
) -> None:
    """An answer just outside 2xx (a 101 Switching Protocols: the connection taken over, no
    answer to come; a 300) fails the send, said as the webhook channel says it."""
    server, url = await raw_server(b"HTTP/1.1 " + status + b"\r\n\r\n")
    async with server:
        err = await send_error(make_channel(slack, http, webhook_url=f"{url}/services/T/B/x"))
    assert (err.reason, err.retryable) == ("other", False)
    assert err.detail.startswith(f"HTTP {status[:3].decode()}")


async def test_a_long_answer_arriving_in_pieces_is_read_whole(http: HttpClient) -> None:
    """Slack's chat.postMessage answer echoes the message, its non-ASCII text escaped: tens of
    KB, which come in pieces (TLS records of 16 KB). relay read only the first piece, took the
    answer for not JSON and posted the message again at each retry."""
    posts: list[bytes] = []
    echoed = "障害が発生しました " * 2000  # what Slack sends back as \uXXXX escapes
    answer = json.dumps({"ok": True, "channel": "C1", "ts": FIRST_TS, "message": {"text": echoed}})

    async def post_message(request: web.Request) -> web.StreamResponse:
        posts.append(await request.read())
        data = answer.encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), 16384):
            await response.write(data[start : start + 16384])
            await asyncio.sleep(0.01)  # the next record comes later
        return response

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", post_message)
    async with serving(app) as url:
        settings = SlackSettings.model_validate(
            {"type": "slack", "token": TOKEN, "channel": "C1", "api_url": url + "/api"}
        )
        channel = SlackChannel("oncall", settings, ChannelEnv(http, io.StringIO(), 5.0))
        receipt = await channel.send(outgoing('{"text": "run failed"}'))
    assert json.loads(receipt or "") == {"channel": "C1", "ts": FIRST_TS}
    assert len(posts) == 1


# ----------------------------------------------------------------------------- through relay


def relay_config(slack: FakeSlack, mode: str) -> str:
    channel = (
        f"webhook_url: {slack.webhook_url}"
        if mode == "webhook"
        else f"token: {TOKEN}\n    channel: C123\n    api_url: {slack.api_url}"
    )
    return f"""\
defaults:
  retry: {{max_attempts: 3, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
  project_ref: proj_test
channels:
  oncall:
    type: slack
    {channel}
    rate_limit: {{per_second: 50, burst: 10}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [oncall], continue: true}}
  - {{name: costly, match: {{cost_cents: {{gt: 0.01}}}}, notify: [oncall], continue: true}}
  - {{name: slow, match: {{duration_ms: {{gt: 60000}}}}, notify: [oncall]}}
"""


async def wait_state(r: Any, state: str, count: int = 1) -> None:
    for _ in range(600):
        if (await r.service.store.counts())[state] >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached {count} {state}")


def run_update(run_id: str, updated_at: str, **extra: Any) -> dict[str, Any]:
    return {**sdk_run("failed"), "id": run_id, "updatedAt": updated_at, **extra}


async def test_follow_ups_thread_under_the_first_message_across_restarts(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    r = await relay(relay_config(slack, "bot"))
    await r.post(run_update("run_a", "2026-08-20T09:14:22.461Z"))  # failures + costly fire
    await wait_state(r, "sent", 2)
    await r.post(run_update("run_b", "2026-08-20T09:14:22.461Z"))
    await wait_state(r, "sent", 4)
    await r.service.shutdown()
    r = await relay(relay_config(slack, "bot"))  # same store
    await r.post(run_update("run_a", "2026-08-20T09:20:00.000Z", durationMs=70_000))  # slow
    await wait_state(r, "sent", 5)
    assert all(p == [] for p in slack.problems)
    threads = [
        (b["text"].split(" · ")[2].split(":")[0], b.get("thread_ts")) for b in slack.posted()
    ]
    b_ts = "1712345678.000102"
    assert threads == [
        ("run_a", None),
        ("run_a", FIRST_TS),
        ("run_b", None),
        ("run_b", b_ts),
        ("run_a", FIRST_TS),
    ]


async def test_webhook_delivery_end_to_end(relay: RelayFactory, slack: FakeSlack) -> None:
    slack.script(Reply(429, "rate_limited", {"Retry-After": "1"}))
    r = await relay(relay_config(slack, "webhook"))
    await r.post(run_update("run_a", "2026-08-20T09:14:22.461Z", costInCents=0))
    first, second = await slack.wait_for(2)
    await wait_state(r, "sent")
    assert second.at - first.at >= 1.0
    body = second.json()
    assert slack.problems[1] == [] and body["blocks"][0]["type"] == "header"
    assert body["text"].startswith("🔴 FAILED · sync-customer-data · run_a")
    assert "channel" not in body and "thread_ts" not in body
    assert body["blocks"][-1]["elements"][0]["url"].endswith("/proj_test/runs/run_a")
    assert "authorization" not in {name.lower() for name in second.headers}  # no token here


BAD_LAYOUT = json.dumps({"text": "FAILED run_1", "blocks": [{"type": "no_such_block"}]})


@pytest.mark.parametrize("bot", [False, True])
async def test_refused_blocks_are_sent_again_as_text(
    slack: FakeSlack, http: HttpClient, bot: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack's own invalid_blocks (400 on a webhook, ok:false on the Web API) no longer kills
    the page: the text goes out alone, and the refusal is logged as an error."""
    channel = make_channel(slack, http, bot=bot)
    receipt = await channel.send(outgoing(BAD_LAYOUT))
    first, second = slack.posted()
    assert first["blocks"] == [{"type": "no_such_block"}] and slack.problems[0] != []
    assert "blocks" not in second and second["text"] == "FAILED run_1"
    assert (receipt is not None) == bot
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "invalid_blocks" in logged.getMessage()
    assert (vars(logged)["run_id"], vars(logged)["rule"], vars(logged)["channel"]) == (
        "run_1",
        "r",
        "oncall",
    )
    assert not any(s in logged.getMessage() for s in SECRETS)


@pytest.mark.parametrize("bot", [False, True])
async def test_a_refused_layout_sent_as_text_keeps_its_buttons_links(
    slack: FakeSlack, http: HttpClient, bot: bool
) -> None:
    """The text alone used to lose the run's dashboard link (the shipped templates put it in a
    button only): the page reached the on-call with nothing to click. A URL no link can hold
    is left out."""
    button = {"type": "button", "text": {"type": "plain_text", "text": "Open <run> & logs"}}
    blocks = [
        {"type": "no_such_block"},
        {"type": "actions", "elements": [{**button, "url": "https://t.example/r/1?a=1&b=2"}]},
        {"type": "actions", "elements": [{**button, "url": "javascript:alert(1)"}]},
        # no link can hold these: a space ends it, a | starts a label of the URL's choosing
        {"type": "actions", "elements": [{**button, "url": "https://t.example/a b"}]},
        {"type": "actions", "elements": [{**button, "url": "https://t.example/|forged"}]},
    ]
    await make_channel(slack, http, bot=bot).send(
        outgoing(json.dumps({"text": "FAILED run_1", "blocks": blocks}))
    )
    assert slack.posted()[1]["text"] == (
        "FAILED run_1\n<https://t.example/r/1?a=1&amp;b=2|Open &lt;run&gt; &amp; logs>"
    )


@pytest.mark.parametrize(
    ("name", "bot"),
    [
        ("invalid_blocks_format", True),
        ("invalid_attachments", True),
        ("msg_blocks_too_long", True),  # blocks each within limits, too long together
        ("too_many_attachments", True),
        ("too_many_attachments", False),
    ],
)
async def test_other_refused_layouts_are_sent_again_as_text(
    slack: FakeSlack, http: HttpClient, name: str, bot: bool
) -> None:
    slack.script(api_error(name) if bot else Reply(400, name))
    part = json.dumps({"text": "FAILED run_1", "attachments": [{"color": "#f00", "text": "x"}]})
    await make_channel(slack, http, bot=bot).send(outgoing(part))
    assert [sorted(body) for body in slack.posted()][1] == sorted(
        ["text", "unfurl_links", "unfurl_media", *(["channel"] if bot else [])]
    )


@pytest.mark.parametrize("bot", [False, True])
async def test_a_text_slack_finds_too_long_is_sent_again_cut(
    slack: FakeSlack, http: HttpClient, bot: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack documents 40,000 characters for `text` but answers msg_too_long from about 4,000
    (seratch/ChatGPT-in-Slack#102): a template's long text no longer kills the page."""
    slack.script(api_error("msg_too_long") if bot else Reply(400, "msg_too_long"))
    text = {"type": "mrkdwn", "text": "FAILED run_1", "verbatim": True}
    blocks = [{"type": "section", "text": text}]
    part = json.dumps({"text": "FAILED run_1 " + "stack line\n" * 900, "blocks": blocks})
    receipt = await make_channel(slack, http, bot=bot).send(outgoing(part))
    refused, sent = slack.posted()
    assert len(refused["text"]) > 4000 and len(sent["text"]) <= 3000
    assert sent["text"].startswith("FAILED run_1 stack line") and sent["blocks"] == blocks
    assert (receipt is not None) == bot
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "msg_too_long" in logged.getMessage()


@pytest.mark.parametrize("bot", [False, True])
async def test_a_refused_layout_is_sent_as_a_text_slack_takes(
    slack: FakeSlack, http: HttpClient, bot: bool
) -> None:
    """The text alone went at up to 40,000 characters; Slack answers msg_too_long from about
    4,000, so a long message whose blocks Slack refused failed, permanently, and the on-call was
    never told. The text alone is now cut as Slack takes it, its buttons' links kept."""
    slack.script(api_error("invalid_blocks") if bot else Reply(400, "invalid_blocks"))
    url = "https://t.example/r/1"
    blocks = [
        {"type": "no_such_block"},
        {"type": "actions", "elements": [{"type": "button", "text": {}, "url": url}] * 300},
    ]
    part = json.dumps({"text": "FAILED run_1 " + "stack line\n" * 900, "blocks": blocks})
    receipt = await make_channel(slack, http, bot=bot).send(outgoing(part))
    _, sent = slack.posted()
    assert "blocks" not in sent and sent["text"].startswith("FAILED run_1 stack line")
    assert len(sent["text"]) <= 3000 and sent["text"].endswith(f"\n<{url}|{url}>")
    assert 10 < sent["text"].count(f"\n<{url}|") < 300 and (receipt is not None) == bot


@pytest.mark.parametrize("bot", [False, True])
async def test_a_link_too_long_for_the_text_alone_leaves_out_only_itself(
    slack: FakeSlack, http: HttpClient, bot: bool
) -> None:
    slack.script(api_error("invalid_blocks") if bot else Reply(400, "invalid_blocks"))
    long_url, url = "https://t.example/" + "l" * 1400, "https://t.example/r/1"
    buttons = [{"type": "button", "text": {}, "url": u} for u in (long_url, url)]
    blocks = [{"type": "no_such_block"}, {"type": "actions", "elements": buttons}]
    await make_channel(slack, http, bot=bot).send(
        outgoing(json.dumps({"text": "FAILED run_1", "blocks": blocks}))
    )
    assert slack.posted()[1]["text"] == f"FAILED run_1\n<{url}|{url}>"


async def test_a_refused_recovery_update_clears_the_blocks(
    slack: FakeSlack, http: HttpClient
) -> None:
    channel = make_channel(slack, http, bot=True)
    receipt = await channel.send(outgoing(render(load_run("failed"))))
    recovery = Outgoing("ntf_2", "run_1", "r", {"json": BAD_LAYOUT}, 1_700_000_001.0)
    recovery = dataclasses.replace(recovery, recovers=Recovery("ntf_1", receipt))
    assert await channel.send(recovery) is None
    refused, plain = slack.updates()
    assert refused["blocks"] == [{"type": "no_such_block"}]
    assert (plain["blocks"], plain["attachments"]) == ([], [])
    assert slack.messages[FIRST_TS]["text"] == "FAILED run_1"


async def test_invalid_blocks_twice_is_dead_and_names_it(
    relay: RelayFactory, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slack.script(Reply(400, "invalid_blocks"), Reply(400, "invalid_blocks"))
    r = await relay(relay_config(slack, "webhook"))
    await r.post(run_update("run_a", "2026-08-20T09:14:22.461Z", costInCents=0))
    await wait_state(r, "dead")
    [dead] = await r.service.store.dead_letters()
    assert dead.reason == "client_error" and len(slack.calls) == 2
    assert "blocks" in slack.posted()[0] and "blocks" not in slack.posted()[1]
    assert dead.last_error is not None and "invalid_blocks (HTTP 400)" in dead.last_error
    async with r.http.get(r.url + "/v1/dlq") as resp:
        listing = await resp.text()
    assert "invalid_blocks" in listing
    assert not any(s in listing or s in dead.last_error for s in SECRETS)
    logged = " ".join(str(record.__dict__) for record in caplog.records)  # message and extras
    assert "invalid_blocks" in logged and not any(s in logged for s in SECRETS)


# 60 blocks, one a section whose text a template bug made a list, one of 5,000 characters
CHANGED = (
    '{"text": "FAILED {{ run.id }}", "blocks": ['
    '{"type": "section", "text": ["not", "a", "text object"]},'
    '{"type": "section", "text": {"type": "mrkdwn", "text": "{{ "s3cr3t-ish " * 500 }}"}}'
    '{% for i in range(58) %}, {"type": "divider"}{% endfor %}]}'
)


async def test_a_message_changed_to_fit_is_logged_once_a_while(
    relay: RelayFactory, slack: FakeSlack, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Only `relay test` said that a block was dropped or cut, or blocks past 50: in
    production a template's bug went to Slack changed, and nothing told. One warning names the
    run, rule, channel, template and the changes (never the text); the next messages of that
    template and channel within FIT_LINE_EVERY_S are not told again."""
    (tmp_path / "tpl" / "slack").mkdir(parents=True)
    (tmp_path / "tpl" / "slack" / "run.json.j2").write_text(CHANGED)
    config = f"templates: {{dir: {tmp_path / 'tpl'}}}\n" + relay_config(slack, "webhook")
    r = await relay(config)
    for run_id in ("run_a", "run_b"):
        await r.post(run_update(run_id, "2026-08-20T09:14:22.461Z", costInCents=0))
    await wait_state(r, "sent", 2)
    assert [len(body["blocks"]) for body in slack.posted()] == [50, 50]
    lines = [rec for rec in caplog.records if "changed to fit" in rec.getMessage()]
    [line] = lines
    assert line.levelno == logging.WARNING
    assert line.getMessage() == "Slack message changed to fit its limits"
    fields = vars(line)
    assert (fields["rule"], fields["channel"], fields["template"]) == (
        "failures",
        "oncall",
        "run_failed",
    )
    assert fields["run_id"] in ("run_a", "run_b")
    assert fields["changes"] == [
        "block 1 (section) dropped: nothing Slack can show",
        "block 2 (section) cut to Slack's limits",
        "blocks 52-60 dropped: Slack takes 50 blocks",
    ]
    assert "s3cr3t-ish" not in str(fields)


async def test_each_digest_group_keeps_its_own_thread(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    grouped = relay_config(slack, "bot").split("rules:")[0] + (
        "rules:\n  - name: failures\n    match: {status: [failure]}\n    notify: [oncall]\n"
        "    group_by: [taskIdentifier]\n    group_wait: 100ms\n    group_interval: 300ms\n"
    )
    r = await relay(grouped)
    at = "2026-08-20T09:14:22.461Z"

    def runs(task: str, *ids: str) -> list[dict[str, Any]]:
        return [run_update(f"run_{task}_{i}", at, taskIdentifier=task) for i in ids]

    await r.post(runs("sync", "1", "2") + runs("video", "1", "2"))  # two digests, two threads
    await wait_state(r, "sent", 4)
    await r.post(runs("sync", "3", "4") + runs("video", "3"))  # each group's follow-up
    await wait_state(r, "sent", 7)
    assert all(p == [] for p in slack.problems)
    posted = slack.posted()
    first = [b for b in posted if "thread_ts" not in b]
    follow = [b for b in posted if "thread_ts" in b]
    assert len(first) == 2 and len(follow) == 2
    for reply in follow:  # under the first digest of its own group, not the channel's first
        task = "sync" if "sync" in reply["text"] else "video"
        assert task in slack.messages[reply["thread_ts"]]["text"], (reply["text"], task)
    assert len({b["thread_ts"] for b in follow}) == 2
