"""Recovery (`update_on_recovery`) end to end: a run that alerted completes, and relay updates the
Slack message (chat.update), resolves the PagerDuty alert with the trigger's dedup key, or sends a
`recovered` notification — durably, once, after the alert, and never for an alert not sent.

Real relay (in process, and `relay serve` killed with SIGKILL), the fake Slack and PagerDuty, a
webhook sink, real SQLite.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay import channel_loop
from relay.channels import REGISTRY, ChannelEnv, Outgoing, Recovery, settings_models
from relay.channels._http import HttpClient
from relay.channels.discord import discord_message
from relay.channels.googlechat import chat_message
from relay.channels.msteams import teams_message
from relay.channels.opsgenie import OpsgenieSettings, opsgenie_alert
from relay.channels.pagerduty import PagerDutySettings, pagerduty_event
from relay.channels.pushover import pushover_message
from relay.channels.slack import slack_message
from relay.channels.telegram import telegram_message
from relay.config_load import parse_config
from relay.configure import compile_config
from relay.errors import ConfigError, DeliveryError
from relay.model import Run, notification_id, recovery_id
from relay.store.opening import open_store
from relay.store.sqlite import SQLiteStore
from relay.templating import RenderContext, Renderer
from tests.conftest import (
    RelayFactory,
    RelayProcess,
    Sink,
    assert_golden,
    run_cli,
    sdk_run,
    status,
)
from tests.fakes.googlechat import KEY, SPACE, chat_problems
from tests.fakes.googlechat import TOKEN as CHAT_TOKEN
from tests.fakes.opsgenie import API_KEY as OPSGENIE_KEY
from tests.fakes.presets import (
    PD_KEY,
    FakePagerDuty,
    discord_problems,
    pagerduty_problems,
    teams_problems,
)
from tests.fakes.pushover import TOKEN as PUSHOVER_TOKEN
from tests.fakes.pushover import USER as PUSHOVER_USER
from tests.fakes.pushover import pushover_problems
from tests.fakes.slack import (
    CHANNEL_ID,
    FIRST_TS,
    TOKEN,
    FakeSlack,
    Reply,
    api_error,
    block_kit_problems,
)
from tests.fakes.telegram import BOT_TOKEN, CHAT_ID, html_problems

GOLDEN = Path(__file__).parent / "golden"

RUN_ID = "run_cmy2trjs6h23sbbwrzm2jlnhj"  # the EXECUTING fixture
HEAD = """\
defaults:
  retry: {{max_attempts: 6, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: 2s
  project_ref: proj_test
{templates}
time_intervals:
  - {{name: always, time_intervals: [{{weekdays: ["monday:sunday"]}}]}}
channels:
{channels}
rules:
{rules}
"""


def config(channels: str, rules: str, templates: str = "") -> str:
    return HEAD.format(channels=channels, rules=rules, templates=templates)


def slow_rule(notify: str, extra: str = "") -> str:
    """A rule on runs still EXECUTING (e.g. a stuck sync) that follows them up when they end."""
    return (
        f"  - {{name: slow, match: {{status: [EXECUTING]}}, notify: [{notify}],"
        f" update_on_recovery: true{extra}}}\n"
    )


def executing() -> dict[str, Any]:
    return sdk_run("executing")


def completed() -> dict[str, Any]:
    run = sdk_run("executing")
    run.update(status="COMPLETED", updatedAt="2026-08-20T09:20:00.000Z", durationMs=329_000)
    return run


def ids(channel: str, rule: str = "slow") -> tuple[str, str]:
    """(the alert's id, its recovery's id) for the fixture run."""
    firing = notification_id(RUN_ID, rule, channel)
    return firing, recovery_id(firing)


async def until(check: Callable[[], Any], timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


async def state_of(r: Any, ident: str) -> str | None:
    row = await r.service.store.get(ident)
    return None if row is None else str(row.state)


# ------------------------------------------------------------------------------ config and templates


@pytest.mark.parametrize(
    "rule",
    [
        "{name: r, match: {status: [failure]}, notify: [c], update_on_recovery: true,"
        " group_by: [taskIdentifier]}",
        "{name: r, match: {event: deployment.failed}, notify: [c], update_on_recovery: true}",
    ],
)
def test_only_rules_about_single_runs_recover(rule: str) -> None:
    text = f"channels: {{c: {{type: console}}}}\nrules:\n  - {rule}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", settings_models(), {})
    [problem] = info.value.problems
    assert problem.location == "c.yaml:3" and problem.path == "rules[0].update_on_recovery"
    assert "not with `group_by` or another event" in problem.message


CHAT_URL = f"https://chat.googleapis.com/v1/spaces/{SPACE}/messages?key={KEY}&token={CHAT_TOKEN}"
EVERY_TYPE = f"""\
  console: {{type: console}}
  webhook: {{type: webhook, url: "https://example.com/hook"}}
  slack: {{type: slack, webhook_url: "https://hooks.slack.com/services/T/B/x"}}
  email: {{type: email, smtp: {{host: smtp.example.com}}, from: a@example.com, to: [b@example.com]}}
  discord: {{type: discord, webhook_url: "https://discord.com/api/webhooks/1/x"}}
  msteams: {{type: msteams, webhook_url: "https://example.com/workflows/x?sig=y"}}
  pagerduty: {{type: pagerduty, routing_key: {PD_KEY}}}
  telegram: {{type: telegram, bot_token: "{BOT_TOKEN}", chat_id: {CHAT_ID}}}
  googlechat: {{type: googlechat, webhook_url: "{CHAT_URL}"}}
  pushover: {{type: pushover, token: {PUSHOVER_TOKEN}, user_key: {PUSHOVER_USER}}}
  opsgenie: {{type: opsgenie, api_key: {OPSGENIE_KEY}}}
"""


def test_every_channel_type_has_a_recovered_template() -> None:
    text = config(EVERY_TYPE, slow_rule(", ".join(REGISTRY)))
    loaded = parse_config(text, "c.yaml", settings_models(), {})
    assert set(loaded.config.channels) == set(REGISTRY)
    assert compile_config(loaded).rules.rules[0].update_on_recovery  # relay check passes


PARTS = {t: kind.parts for t, kind in REGISTRY.items()}


@pytest.mark.parametrize("channel_type", sorted(REGISTRY))
def test_recovered_templates_match_golden(channel_type: str) -> None:
    run = Run.model_validate(completed()).as_dict()
    ctx = RenderContext(
        run,
        "slow",
        "oncall",
        channel_type,
        "ntf_0123456789abcdef01234567",
        f"https://cloud.trigger.dev/projects/v3/proj_abc123/runs/{RUN_ID}",
        resolves="ntf_89abcdef0123456789abcdef",
    )
    rendered = Renderer().render(channel_type, "recovered", PARTS[channel_type], ctx)
    assert not rendered.fallback, rendered.error
    for part, text in rendered.parts.items():
        if part == "json":
            assert _problems(channel_type, text) == []
        if part == "html" and channel_type == "telegram":
            assert html_problems(telegram_message(text, "-")[0]) == []
        assert_golden(GOLDEN / channel_type / "recovered" / f"run_completed.{part}", text)


def _problems(channel_type: str, text: str) -> list[str]:
    """Why the service would refuse what the channel sends for a rendered `recovered` part."""
    value = json.loads(text)
    if channel_type == "slack":
        assert slack_message(text, "-") == value  # no clamping needed
        return block_kit_problems(value)
    if channel_type == "discord":
        return discord_problems(discord_message(text, "-"))
    if channel_type == "msteams":
        return teams_problems(teams_message(text, "-"))
    if channel_type == "googlechat":
        return chat_problems(chat_message(text, "-")[0])
    if channel_type == "pushover":
        return pushover_problems(pushover_message(text, "-")[0])
    if channel_type == "opsgenie":
        settings_ = OpsgenieSettings.model_validate({"type": "opsgenie", "api_key": OPSGENIE_KEY})
        action, body = opsgenie_alert(text, settings_, RUN_ID, "-")
        assert (action, body["alias"]) == ("close", RUN_ID)
        return []
    if channel_type == "pagerduty":
        settings = PagerDutySettings.model_validate({"type": "pagerduty", "routing_key": PD_KEY})
        _, event = pagerduty_event(text, settings, RUN_ID, "-")
        assert event == {"event_action": "resolve", "dedup_key": RUN_ID}
        return pagerduty_problems({"routing_key": PD_KEY, **event})
    assert value["type"] == "run.recovered" and value["resolves"].startswith("ntf_")
    return []


# ------------------------------------------------------------------------------ the channels alone


def _outgoing(channel_type: str, recovers: Recovery | None = None) -> Outgoing:
    run = Run.model_validate(executing() if recovers is None else completed()).as_dict()
    name = "run" if recovers is None else "recovered"
    ctx = RenderContext(run, "slow", "oncall", channel_type, "ntf_1", None)
    parts = Renderer().render(channel_type, name, PARTS[channel_type], ctx).parts
    ident = "ntf_1" if recovers is None else "ntf_2"
    return Outgoing(ident, RUN_ID, "slow", parts, 1_700_000_000.0, recovers)


async def test_slack_receipts_updates_and_their_failures(slack: FakeSlack, tmp_path: Path) -> None:
    http, store = HttpClient(), SQLiteStore(tmp_path / "relay.db")  # the store keeps threads
    await store.open()
    try:
        bot = {"token": TOKEN, "channel": "#oncall", "api_url": slack.api_url}
        settings = REGISTRY["slack"].settings.model_validate({"type": "slack", **bot})
        env = ChannelEnv(http, io.StringIO(), 2, store)
        channel = REGISTRY["slack"].create("oncall", settings, env)
        receipt = await channel.send(_outgoing("slack"))
        assert receipt is not None and json.loads(receipt) == {
            "channel": CHANNEL_ID,
            "ts": FIRST_TS,
        }
        assert await channel.send(_outgoing("slack", Recovery("ntf_1", receipt))) is None
        assert [c.path for c in slack.calls] == ["/api/chat.postMessage", "/api/chat.update"]
        # Slack refusing the update for another reason is an error like any other
        slack.script(api_error("invalid_auth"))
        with pytest.raises(DeliveryError) as info:
            await channel.send(_outgoing("slack", Recovery("ntf_1", receipt)))
        assert (info.value.reason, info.value.retryable) == ("auth_error", False)
        # no receipt (the alert went out by webhook, or never): a new message
        assert await channel.send(_outgoing("slack", Recovery("ntf_1", None))) is not None
        assert slack.calls[-1].path == "/api/chat.postMessage"
        # a message Slack will not edit any more: the recovery goes into the thread
        slack.script(api_error("cant_update_message"))
        assert await channel.send(_outgoing("slack", Recovery("ntf_1", receipt))) is not None
        assert slack.calls[-2].path == "/api/chat.update"
        assert slack.calls[-1].json()["thread_ts"] == FIRST_TS
    finally:
        await http.close()
        await store.close()


async def test_pagerduty_receipt_is_the_key_its_answer_names(pagerduty: FakePagerDuty) -> None:
    http = HttpClient()
    try:
        options = {"type": "pagerduty", "routing_key": PD_KEY, "api_url": pagerduty.url}
        settings = REGISTRY["pagerduty"].settings.model_validate(options)
        channel = REGISTRY["pagerduty"].create("pd", settings, ChannelEnv(http, io.StringIO(), 2))
        assert await channel.send(_outgoing("pagerduty")) == RUN_ID
        resolve = _outgoing("pagerduty", Recovery("ntf_1", "pd-opened-key"))
        assert await channel.send(resolve) is None
        assert pagerduty.posted()[-1]["dedup_key"] == "pd-opened-key"
        assert await channel.send(_outgoing("pagerduty", Recovery("ntf_1", None))) is None
        assert pagerduty.posted()[-1]["dedup_key"] == RUN_ID  # the template's key
        assert pagerduty.alerts == {RUN_ID: "resolved"}
    finally:
        await http.close()


# ------------------------------------------------------------------------------ per channel


async def test_slack_updates_the_alert_in_place_once(relay: RelayFactory, slack: FakeSlack) -> None:
    channel = (
        f"  chat: {{type: slack, token: {TOKEN}, channel: '#oncall', api_url: {slack.api_url}}}"
    )
    r = await relay(config(channel, slow_rule("chat")))
    assert (await r.post(executing()))[1]["notifications"] == 1
    # the recovery is due at once, but waits until the alert is out: it needs the message's ts
    assert (await r.post(completed()))[1]["notifications"] == 1
    await slack.wait_for(2)
    firing, recovered = ids("chat")
    await until(lambda: _is(r, recovered, "sent"))
    [posted] = [c.json() for c in slack.calls if c.path.endswith("/chat.postMessage")]
    [update] = slack.updates()
    assert posted["channel"] == "#oncall"
    assert (update["channel"], update["ts"]) == (CHANNEL_ID, FIRST_TS)  # the id, not the name
    assert set(update) == {"channel", "ts", "text", "blocks", "attachments"}
    message = slack.messages[FIRST_TS]
    assert message["blocks"][0]["text"]["text"] == "✅ Recovered · sync-customer-data"
    assert message["text"].startswith("✅ COMPLETED · sync-customer-data") and "edited" in message
    assert all(p == [] for p in slack.problems)
    row = await r.service.store.get(firing)
    assert row is not None and json.loads(row.receipt or "") == {
        "channel": CHANNEL_ID,
        "ts": FIRST_TS,
    }
    # the same update again, or a later one: no second recovery
    assert (await r.post(completed()))[1]["notifications"] == 0
    later = {**completed(), "updatedAt": "2026-08-20T09:21:00.000Z"}
    assert (await r.post(later))[1]["notifications"] == 0
    await asyncio.sleep(0.3)
    assert len(slack.calls) == 2


async def test_slack_posts_the_recovery_when_the_message_is_gone(
    relay: RelayFactory, slack: FakeSlack
) -> None:
    channel = (
        f"  chat: {{type: slack, token: {TOKEN}, channel: '#oncall', api_url: {slack.api_url}}}"
    )
    r = await relay(config(channel, slow_rule("chat")))
    await r.post(executing())
    firing, recovered = ids("chat")
    await until(lambda: _is(r, firing, "sent"))
    slack.messages.clear()  # someone deleted it
    await r.post(completed())
    await until(lambda: _is(r, recovered, "sent"))
    first, update, posted = (c.json() for c in slack.calls)
    assert update["ts"] == FIRST_TS and "thread_ts" not in first
    assert "thread_ts" not in posted  # a new message: the thread's first one is gone
    assert posted["blocks"][0]["text"]["text"] == "✅ Recovered · sync-customer-data"
    assert posted["channel"] == "#oncall" and len(slack.messages) == 1


async def test_pagerduty_resolves_the_key_the_trigger_opened(
    relay: RelayFactory, pagerduty: FakePagerDuty, tmp_path: Path
) -> None:
    # a trigger template of one's own, deduplicating by task: the resolve must use that key
    (tmp_path / "tpl" / "pagerduty").mkdir(parents=True)
    (tmp_path / "tpl" / "pagerduty" / "page.json.j2").write_text(
        '{"event_action": "trigger", "dedup_key": {{ ("task/" ~ run.taskIdentifier)|tojson }},'
        ' "payload": {"summary": {{ summary|tojson }}, "source": "trigger.dev"}}'
    )
    channel = f"  pager: {{type: pagerduty, routing_key: {PD_KEY}, api_url: {pagerduty.url}}}"
    rules = slow_rule("pager", ", template: page")
    r = await relay(config(channel, rules, f"templates: {{dir: {tmp_path / 'tpl'}}}"))
    await r.post(executing())
    await r.post(completed())
    trigger, resolve = (c.json() for c in await pagerduty.wait_for(2))
    assert (trigger["event_action"], trigger["dedup_key"]) == (
        "trigger",
        "task/sync-customer-data",
    )
    assert resolve == {
        "routing_key": PD_KEY,
        "event_action": "resolve",
        "dedup_key": "task/sync-customer-data",
    }
    assert pagerduty.alerts == {"task/sync-customer-data": "resolved"}
    assert all(p == [] for p in pagerduty.problems)


async def test_webhook_hears_of_the_recovery_after_its_alert(
    relay: RelayFactory, sink: Sink
) -> None:
    sink.responses = [status(503)] * 3  # the alert goes back to the outbox for a while
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    r = await relay(config(channel, slow_rule("hook")))
    await r.post(executing())
    await sink.wait_for(3)
    await r.post(completed())  # while the alert is still owed
    got = await sink.wait_for(5)
    await asyncio.sleep(0.3)
    firing, recovered = ids("hook")
    assert [g.json()["type"] for g in got] == ["run.alert"] * 4 + ["run.recovered"]
    body = got[-1].json()
    assert body["resolves"] == got[3].headers["webhook-id"] == firing
    assert got[-1].headers["webhook-id"] == body["id"] == recovered
    assert body["run"]["status"] == "COMPLETED" and body["rule"] == "slow"
    assert body["text"] == f"✅ Recovered · sync-customer-data · {RUN_ID} is COMPLETED"


async def test_console_and_email_style_channels_get_a_recovered_message(
    relay: RelayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    r = await relay(config("  out: {type: console}", slow_rule("out")))
    await r.post(executing())
    await r.post(completed())
    await until(lambda: _is(r, ids("out")[1], "sent"))
    out = capsys.readouterr().out
    assert f"✅ RECOVERED · sync-customer-data · {RUN_ID} is COMPLETED" in out
    assert out.index("EXECUTING") < out.index("RECOVERED")


# ------------------------------------------------------------------------------ what is not resolved


async def test_nothing_to_resolve_means_no_recovery(relay: RelayFactory, sink: Sink) -> None:
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    rules = (
        "  - {name: plain, match: {task: [other], status: [EXECUTING]}, notify: [hook]}\n"
        + slow_rule("hook", ", mute_time_intervals: [always]")  # the alert is muted
    )
    r = await relay(config(channel, rules))
    other = {**executing(), "id": "run_other", "taskIdentifier": "other"}
    await r.post([executing(), other])
    done_other = {**completed(), "id": "run_other", "taskIdentifier": "other"}
    assert (await r.post([completed(), done_other]))[1]["notifications"] == 0
    await asyncio.sleep(0.3)
    assert [g.json()["run"]["id"] for g in sink.received] == ["run_other"]
    assert await state_of(r, ids("hook")[0]) == "muted"
    assert await state_of(r, ids("hook")[1]) is None


async def test_a_channel_with_send_resolved_false_hears_no_recovery(
    relay: RelayFactory, sink: Sink
) -> None:
    """Alertmanager's `send_resolved` per receiver: the rule follows up on its run, but only on
    the channels that want recoveries (here the team's hook, not the pager's)."""
    channels = (
        f'  team: {{type: webhook, url: "{sink.url}/team"}}\n'
        f'  pager: {{type: webhook, url: "{sink.url}/pager", send_resolved: false}}'
    )
    r = await relay(config(channels, slow_rule("team, pager")))
    await r.post(executing())
    assert (await r.post(completed()))[1]["notifications"] == 1
    await until(lambda: _is(r, ids("team")[1], "sent"))
    got = sorted((g.path, g.json()["type"]) for g in sink.received)
    assert got == [("/pager", "run.alert"), ("/team", "run.alert"), ("/team", "run.recovered")]
    assert await state_of(r, ids("pager")[1]) is None


async def test_a_recovery_is_muted_with_its_alert(relay: RelayFactory, sink: Sink) -> None:
    sink.responses = [status(503, {"Retry-After": "1"})]  # the alert waits in the outbox
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    r = await relay(config(channel, slow_rule("hook")))
    await r.post(executing())
    await sink.wait_for(1)
    assert (await r.post(completed()))[1]["notifications"] == 1  # owed: the alert is pending
    silence = {"matchers": {"rule": "slow"}, "ends_at": "2099-01-01T00:00:00Z"}
    async with r.http.post(r.url + "/v1/silences", json=silence) as resp:
        assert resp.status == 201
        silence_id = (await resp.json())["id"]
    firing, recovered = ids("hook")
    await until(lambda: _is(r, recovered, "muted"))
    assert await state_of(r, firing) == "muted"
    row = await r.service.store.get(recovered)
    assert row is not None and row.reason == silence_id
    assert len(sink.received) == 1


async def test_a_silence_after_the_alert_was_sent_leaves_its_recovery_to_go(
    relay: RelayFactory, sink: Sink
) -> None:
    """A recovery is never muted on its own: the channel heard the alert, so a silence made
    since (the rule's, ending later) does not keep the page open; only the alert's own fate
    (muted before it was sent) mutes its recovery."""
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    r = await relay(config(channel, slow_rule("hook")))
    await r.post(executing())
    firing, recovered = ids("hook")
    await until(lambda: _is(r, firing, "sent"))
    silence = {"matchers": {"rule": "slow"}, "ends_at": "2099-01-01T00:00:00Z"}
    async with r.http.post(r.url + "/v1/silences", json=silence) as resp:
        assert resp.status == 201
    assert (await r.post(completed()))[1]["notifications"] == 1
    await until(lambda: _is(r, recovered, "sent"))
    assert [g.json()["type"] for g in sink.received] == ["run.alert", "run.recovered"]


async def test_a_dead_page_is_not_resolved_until_it_is_replayed(
    relay: RelayFactory, pagerduty: FakePagerDuty
) -> None:
    # the trigger dies, the run completes: PagerDuty never opened the key, so no resolve goes
    # (it used to, alone); the replayed trigger opens it and its resolve follows at once
    pagerduty.script(Reply(400, {"status": "invalid event", "message": "bad", "errors": ["x"]}))
    channel = f"  pager: {{type: pagerduty, routing_key: {PD_KEY}, api_url: {pagerduty.url}}}"
    r = await relay(config(channel, slow_rule("pager")))
    firing, recovered = ids("pager")
    await r.post(executing())
    await until(lambda: _is(r, firing, "dead"))
    await r.post(completed())
    await until(lambda: _is(r, recovered, "dead"))
    assert len(pagerduty.calls) == 1
    assert [n.id for n in await r.service.store.dead_letters()] == [recovered, firing]
    assert await r.service.store.replay([firing], now=time.time()) == 1
    r.service._wake_all()
    calls = await pagerduty.wait_for(3)
    await until(lambda: _is(r, recovered, "sent"))
    assert [c.json()["event_action"] for c in calls] == ["trigger", "trigger", "resolve"]
    assert set(pagerduty.alerts.values()) == {"resolved"}
    history = [(e["kind"], e["reason"]) for e in await r.service.store.events(recovered)]
    assert history == [
        ("created", None),
        ("dead", "alert_dead"),
        ("replayed", None),
        ("sent", None),
    ]


async def test_an_alert_that_dies_while_its_recovery_waits_holds_it(
    relay: RelayFactory, sink: Sink
) -> None:
    # the run completes while the alert is retrying (its recovery waits), then the alert dies:
    # the recovery is held, not sent; a replay of every dead letter sends the alert, then it
    sink.responses = [status(503), status(400)]
    r = await relay(config(f'  hook: {{type: webhook, url: "{sink.url}/hook"}}', slow_rule("hook")))
    firing, recovered = ids("hook")
    await r.post(executing())
    await sink.wait_for(1)
    assert (await r.post(completed()))[1]["notifications"] == 1  # owed: the alert is pending
    await until(lambda: _is(r, recovered, "dead"))
    assert await state_of(r, firing) == "dead" and len(sink.received) == 2
    async with r.http.post(r.url + "/v1/dlq/replay", json={"all": True}) as resp:
        assert (await resp.json())["replayed"] == 2
    await sink.wait_for(4)
    await until(lambda: _is(r, recovered, "sent"))
    order = [req.headers["webhook-id"] for req in sink.received]
    assert order == [firing, firing, firing, recovered]


async def test_a_replayed_alert_wakes_the_recovery_waiting_for_it(
    relay: RelayFactory, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay claims the alert and its recovery together: the recovery waits for the alert,
    and goes as soon as the alert is sent. It waited out its postponement and then a delivery
    poll (a second of an on-call engineer's time): here no poll comes within the wait, so only
    the alert's send can wake it."""
    monkeypatch.setattr(channel_loop, "POLL_S", 3600.0)
    sink.responses = [status(410)]  # the alert dies at once
    r = await relay(config(f'  hook: {{type: webhook, url: "{sink.url}/hook"}}', slow_rule("hook")))
    firing, recovered = ids("hook")
    await r.post(executing())
    await until(lambda: _is(r, firing, "dead"))
    await r.post(completed())
    await until(lambda: _is(r, recovered, "dead"))  # held for its dead alert
    async with r.http.post(r.url + "/v1/dlq/replay", json={"ids": [firing]}) as resp:
        assert (await resp.json())["replayed"] == 1
    got = await sink.wait_for(3, timeout=30.0)
    assert [g.headers["webhook-id"] for g in got] == [firing, firing, recovered]


async def test_a_dead_alert_holds_its_recovery_until_it_is_replayed(
    relay_process: Callable[..., RelayProcess], sink: Sink, engine_env: dict[str, str]
) -> None:
    """The channel never heard the alert (a 410 killed it at once): no "recovered" for it (on
    PagerDuty, a resolve of a key it never opened), as Alertmanager sends no resolved for an
    alert it never notified. The recovery is held as a dead letter saying why, and `relay dlq
    replay` of the alert (here over HTTP) sends the alert, then its recovery."""
    firing, recovered = ids("hook")
    async with aiohttp.ClientSession() as http:
        proc = await _with_dead_alert(http, sink, relay_process, engine_env)
        assert (await _post(http, proc.url, completed()))["notifications"] == 1
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        async with http.get(f"{proc.url}/v1/notifications/{recovered}") as resp:
            held = await resp.json()
        assert (held["state"], held["reason"]) == ("dead", "alert_dead")
        assert f"`relay dlq replay {firing}` sends the alert, then this recovery" in held["error"]
        env = {"RELAY_STORE_URL": proc.env["RELAY_STORE_URL"]}
        listed = await asyncio.to_thread(run_cli, "history", "--run", RUN_ID, env=env)
        assert f"held, not sent: alert_dead: its alert {firing} is dead" in listed.stdout
        assert len(sink.received) == 1  # the alert's one try: no recovery went out
        async with http.post(proc.url + "/v1/dlq/replay", json={"ids": [firing]}) as resp:
            assert (await resp.json())["replayed"] == 1
        got = await sink.wait_for(3)
        await until(lambda: _state_over_http(http, proc.url, recovered, "sent"))
    assert [(g.headers["webhook-id"], g.json()["type"]) for g in got] == [
        (firing, "run.alert"),
        (firing, "run.alert"),
        (recovered, "run.recovered"),
    ]
    assert proc.terminate() == 0


async def test_a_held_recovery_whose_alert_retention_forgot_stays_held(
    relay_process: Callable[..., RelayProcess], sink: Sink, engine_env: dict[str, str]
) -> None:
    """Retention forgets the dead alert before its recovery (held later, so finished later):
    a `dlq replay --all` then finds the recovery alone. The channel still never heard the
    alert, so the recovery must not go out ("Recovered" for an alert nobody saw): it is held
    again, saying its alert is forgotten."""
    firing, recovered = ids("hook")
    async with aiohttp.ClientSession() as http:
        proc = await _with_dead_alert(http, sink, relay_process, engine_env)
        await _post(http, proc.url, completed())
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        assert await _pruned_before(proc.env["RELAY_STORE_URL"], recovered) == 1  # the alert
        async with http.post(proc.url + "/v1/dlq/replay", json={"all": True}) as resp:
            assert (await resp.json())["replayed"] == 1
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        async with http.get(f"{proc.url}/v1/notifications/{recovered}") as resp:
            held = await resp.json()
    assert (held["state"], held["reason"]) == ("dead", "alert_dead")
    assert f"its alert {firing} was dead and is forgotten (retention)" in held["error"]
    assert len(sink.received) == 1  # the alert's one try: no recovery went out
    assert proc.terminate() == 0


async def test_a_recovery_of_a_replayed_alert_retention_forgot_still_goes(
    relay_process: Callable[..., RelayProcess], sink: Sink, engine_env: dict[str, str]
) -> None:
    """Held, then its alert replayed and sent: the channel heard the alert. The recovery then
    dies on its own (a 400); retention forgets the alert, and a replay of the recovery must
    send it, as for any sent alert forgotten: an earlier hold is no reason to hold it now."""
    firing, recovered = ids("hook")
    async with aiohttp.ClientSession() as http:
        proc = await _with_dead_alert(http, sink, relay_process, engine_env)
        await _post(http, proc.url, completed())
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        sink.responses = [status(200), status(400)]  # the replayed alert goes, its recovery dies
        async with http.post(proc.url + "/v1/dlq/replay", json={"ids": [firing]}) as resp:
            assert (await resp.json())["replayed"] == 1
        await sink.wait_for(3)
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        assert await _pruned_before(proc.env["RELAY_STORE_URL"], recovered) == 1  # the alert
        async with http.post(proc.url + "/v1/dlq/replay", json={"ids": [recovered]}) as resp:
            assert (await resp.json())["replayed"] == 1
        got = await sink.wait_for(4)
        await until(lambda: _state_over_http(http, proc.url, recovered, "dead", "sent"))
        assert await _state_over_http(http, proc.url, recovered, "sent")
    assert [g.headers["webhook-id"] for g in got] == [firing, firing, recovered, recovered]
    assert proc.terminate() == 0


async def _with_dead_alert(
    http: aiohttp.ClientSession,
    sink: Sink,
    relay_process: Callable[..., RelayProcess],
    env: dict[str, str],
) -> RelayProcess:
    """`relay serve` with the webhook channel `hook`, the fixture run's alert dead (a 410
    killed it at once; later requests get 200)."""
    sink.responses = [status(410)]
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    proc = relay_process(config(channel, slow_rule("hook")), env)
    await asyncio.to_thread(proc.start)
    await _post(http, proc.url, executing())
    await until(lambda: _state_over_http(http, proc.url, ids("hook")[0], "dead"))
    return proc


async def _pruned_before(store_url: str, ident: str) -> int:
    """Retention run on the store, forgetting what finished before notification `ident`."""
    store = open_store(store_url, upgrade=False)
    await store.open()
    try:
        held_at = (await store.events(ident))[-1]["at"]  # when it finished (was held)
        assert isinstance(held_at, float)
        return await store.prune(held_at)
    finally:
        await store.close()


# ------------------------------------------------------------------------------ durability


async def test_the_recovery_survives_kill_9_and_goes_out_once(
    relay_process: Callable[..., RelayProcess], sink: Sink
) -> None:
    channel = f'  hook: {{type: webhook, url: "{sink.url}/hook"}}'
    proc = relay_process(config(channel, slow_rule("hook")))
    await asyncio.to_thread(proc.start)
    async with aiohttp.ClientSession() as http:
        assert (await _post(http, proc.url, executing()))["notifications"] == 1
        await sink.wait_for(1)
        sink.responses = [status(503, {"Retry-After": "1"})]  # the recovery is still owed…
        assert (await _post(http, proc.url, completed()))["notifications"] == 1
        await sink.wait_for(2)
        proc.kill()  # …when relay dies
        await asyncio.to_thread(proc.start)
        got = await sink.wait_for(3)
        assert (await _post(http, proc.url, completed()))["notifications"] == 0
        await asyncio.sleep(0.5)
    _, recovered = ids("hook")
    assert [g.json()["type"] for g in got] == ["run.alert", "run.recovered", "run.recovered"]
    assert {g.headers["webhook-id"] for g in got[1:]} == {recovered}
    assert len(sink.received) == 3
    assert proc.terminate() == 0


async def _is(r: Any, ident: str, state: str) -> bool:
    return await state_of(r, ident) == state


async def _state_over_http(http: aiohttp.ClientSession, url: str, ident: str, *states: str) -> bool:
    async with http.get(f"{url}/v1/notifications/{ident}") as resp:
        return resp.status == 200 and (await resp.json())["state"] in states


async def _post(http: aiohttp.ClientSession, url: str, run: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url + "/v1/runs", data=json.dumps(run)) as resp:
        assert resp.status == 202
        return dict(await resp.json())
