"""The failure matrix of every delivery path, through a real `relay serve` child process.

For each path (webhook, Slack incoming webhook, Slack bot token, email over SMTP, Discord, Teams,
PagerDuty, Opsgenie, Telegram, Google Chat, Pushover), against the fake that speaks its protocol:

* refused connection, then 429 with Retry-After (SMTP: 421), then 5xx (SMTP: 451), then no answer
  past the timeout, then OK: one notification rides through all of it and arrives, the
  Retry-After honoured; a permanent refusal (4xx, SMTP 5xx) is dead after one attempt.
* kill -9 while the first sends are in flight (the fake holds them: SMTP holds the reply to
  DATA), restart, the fake answers: every notification arrives at least once, duplicates are
  only the ones in flight and carry the channel's idempotency key (webhook-id, Message-ID,
  PagerDuty dedup_key, Opsgenie alias; Slack, Discord, Teams, Telegram, Google Chat and Pushover have none), nothing dead, nothing pending.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.model import notification_id
from relay.store.sqlite import SQLiteStore
from tests.conftest import Behaviour, RelayProcess, Sink, hang, sdk_run, status
from tests.fakes.googlechat import KEY as CHAT_KEY
from tests.fakes.googlechat import TOKEN as CHAT_TOKEN
from tests.fakes.googlechat import error as chat_error
from tests.fakes.googlechat import fake_chat, webhook_path
from tests.fakes.opsgenie import API_KEY as OPSGENIE_KEY
from tests.fakes.opsgenie import FakeOpsgenie, fake_opsgenie, unprocessable
from tests.fakes.opsgenie import answer as og_answer
from tests.fakes.presets import (
    DISCORD_ID,
    DISCORD_TOKEN,
    PD_KEY,
    TEAMS_FLOW,
    TEAMS_SIG,
    fake_discord,
    fake_pagerduty,
    fake_teams,
)
from tests.fakes.pushover import TOKEN as PUSHOVER_TOKEN
from tests.fakes.pushover import USER as PUSHOVER_USER
from tests.fakes.pushover import fake_pushover, refused
from tests.fakes.serving import free_port, serving
from tests.fakes.slack import (
    TOKEN,
    WEBHOOK_PATH,
    Fake,
    Reply,
    api_error,
    fake_slack,
)
from tests.fakes.smtp import FakeSMTP, start_smtp
from tests.fakes.telegram import BOT_TOKEN, CHAT_ID, failure, fake_telegram

# the channel's timeout where one answer hangs: long enough that no answer that should arrive
# misses it on a loaded machine, short as each hang costs one in full
TIMEOUT = "1s"
HANG_S = 30.0  # a hung answer: far past TIMEOUT
HOLD_S = 60.0  # a send held open until relay is killed: past HOLD_TIMEOUT, so never retried
HOLD_TIMEOUT = "30s"
RULE, CHANNEL = "failures", "out"
CONFIG = """\
defaults:
  retry: {{max_attempts: 500, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}}
  timeout: {timeout}
  project_ref: proj_test
channels:
  out:
{channel}
    concurrency: {concurrency}
    rate_limit: {{per_second: 1000, burst: 1000}}
rules:
  - {{name: failures, match: {{status: [failure]}}, notify: [out]}}
"""
RUN_ID = re.compile(rb"run_fm_[a-z0-9]+")


# ----------------------------------------------------------------------------- the paths


class Path_:
    """One delivery path: its channel YAML, its fake, and how to script and read that fake."""

    name = ""
    retry_after: float | None = 1.0  # the Retry-After its rate limit answer carries

    def channel(self, port: int) -> str:
        raise NotImplementedError

    def serve(self, port: int) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def script(self, *steps: str) -> None:
        """The next answers: rate_limited, server_error, hang, permanent (then OK)."""
        raise NotImplementedError

    def hold(self, on: bool) -> None:
        """Hold every request open (on), or answer at once again (off)."""
        raise NotImplementedError

    def requests(self) -> list[str]:
        """The identity of each request received, in order: the idempotency key if the channel
        has one, else the run id the message is about."""
        raise NotImplementedError

    def arrived(self) -> list[str]:
        """The identity of each message the service has (HTTP: every request that reached it,
        even one whose answer was lost; SMTP: every mail it committed)."""
        return self.requests()

    def identity(self, run_id: str) -> str:
        """What requests() says for the notification about `run_id`."""
        return run_id


def _run_of(raw: bytes) -> str:
    found = RUN_ID.search(raw)
    return found.group().decode() if found else "?"


class WebhookPath(Path_):
    name = "webhook"
    answers: dict[str, Behaviour] = {
        "rate_limited": status(429, {"Retry-After": "1"}),
        "server_error": status(503),
        "hang": hang(HANG_S),
        "permanent": status(400),
    }

    def __init__(self) -> None:
        self.sink = Sink()

    def channel(self, port: int) -> str:
        return f"    type: webhook\n    url: http://127.0.0.1:{port}/hook"

    @asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[Any]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.sink.handle)
        async with serving(app, port, access_log=None, shutdown_timeout=0.2):
            yield self.sink

    def script(self, *steps: str) -> None:
        self.sink.responses.extend(self.answers[step] for step in steps)

    def hold(self, on: bool) -> None:
        self.sink.default = hang(HOLD_S) if on else None

    def requests(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.sink.received]

    def identity(self, run_id: str) -> str:
        return notification_id(run_id, RULE, CHANNEL)


class ScriptedPath(Path_):
    """A fake of tests/fakes (Slack, Discord, Teams, PagerDuty): scripted Replies, each request
    recorded."""

    answers: dict[str, Reply]
    fake: Fake

    def script(self, *steps: str) -> None:
        self.fake.scripted.extend(self.answers[step] for step in steps)

    def hold(self, on: bool) -> None:
        self.fake.scripted.clear()
        if on:
            self.fake.scripted.extend(Reply(200, "held", delay_s=HOLD_S) for _ in range(100))

    def requests(self) -> list[str]:
        return [_run_of(call.raw) for call in self.fake.calls]

    @asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[Any]:
        async with self.start(port) as fake:
            self.fake = fake
            yield fake

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError


class SlackPath(ScriptedPath):
    def __init__(self, mode: str) -> None:
        self.name = f"slack-{mode}"
        self.mode = mode
        if mode == "webhook":
            self.answers = {
                "rate_limited": Reply(429, "rate_limited", {"Retry-After": "1"}),
                "server_error": Reply(503, "service_unavailable"),
                "hang": Reply(200, "ok", delay_s=HANG_S),
                "permanent": Reply(403, "invalid_token"),
            }
        else:
            self.answers = {
                "rate_limited": api_error("ratelimited", 429, {"Retry-After": "1"}),
                "server_error": Reply(503, "<html>503 Service Unavailable</html>"),
                "hang": Reply(200, {"ok": True, "channel": "C123", "ts": "1.1"}, delay_s=HANG_S),
                "permanent": api_error("invalid_auth"),
            }

    def channel(self, port: int) -> str:
        base = f"http://127.0.0.1:{port}"
        if self.mode == "webhook":
            return f"    type: slack\n    webhook_url: {base}{WEBHOOK_PATH}"
        return (
            f'    type: slack\n    token: {TOKEN}\n    channel: "#oncall"\n    api_url: {base}/api'
        )

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_slack(port)


class DiscordPath(ScriptedPath):
    name = "discord"
    answers = {
        "rate_limited": Reply(
            429,
            {"message": "You are being rate limited.", "retry_after": 1.0, "global": False},
            {"Retry-After": "1"},
        ),
        "server_error": Reply(502, "<html>502 Bad Gateway</html>"),
        "hang": Reply(200, {"id": "1"}, delay_s=HANG_S),
        "permanent": Reply(400, {"message": "Invalid Form Body", "code": 50035}),
    }

    def channel(self, port: int) -> str:
        url = f"http://127.0.0.1:{port}/api/webhooks/{DISCORD_ID}/{DISCORD_TOKEN}"
        return f"    type: discord\n    webhook_url: {url}"

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_discord(port)


def _flow_error(status_code: int, code: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status_code, {"error": {"code": code, "message": f"{code}."}}, headers or {})


class TeamsPath(ScriptedPath):
    name = "msteams"
    answers = {
        "rate_limited": _flow_error(429, "WorkflowTriggerIsThrottled", {"Retry-After": "1"}),
        "server_error": _flow_error(500, "InternalServerError"),
        "hang": Reply(202, "", delay_s=HANG_S),
        "permanent": _flow_error(400, "InvalidRequestContent"),
    }

    def channel(self, port: int) -> str:
        url = (
            f"http://127.0.0.1:{port}/workflows/{TEAMS_FLOW}/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sv=1.0&sig={TEAMS_SIG}"
        )
        return f"    type: msteams\n    webhook_url: '{url}'"

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_teams(port)


class PagerDutyPath(ScriptedPath):
    name = "pagerduty"
    answers = {
        "rate_limited": Reply(
            429,
            {"status": "throttle event", "message": "Requests arriving too quickly."},
            {"Retry-After": "1"},
        ),
        "server_error": Reply(500, {"status": "error", "message": "internal error"}),
        "hang": Reply(202, {"status": "success"}, delay_s=HANG_S),
        "permanent": Reply(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["'payload.summary' is missing or blank"],
            },
        ),
    }

    def channel(self, port: int) -> str:
        return (
            f"    type: pagerduty\n    routing_key: {PD_KEY}\n    api_url: http://127.0.0.1:{port}"
        )

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_pagerduty(port)

    def requests(self) -> list[str]:
        return [str(call.json().get("dedup_key")) for call in self.fake.calls]


class TelegramPath(ScriptedPath):
    """The Bot API's own answers: a 429 says when in its body (`parameters.retry_after`), with
    no Retry-After header."""

    name = "telegram"
    answers = {
        "rate_limited": failure(429, "Too Many Requests: retry after 1", retry_after=1),
        "server_error": Reply(502, "<html>502 Bad Gateway</html>"),
        "hang": Reply(200, {"ok": True, "result": {"message_id": 1}}, delay_s=HANG_S),
        "permanent": failure(400, "Bad Request: chat not found"),
    }

    def channel(self, port: int) -> str:
        return (
            f'    type: telegram\n    bot_token: "{BOT_TOKEN}"\n    chat_id: {CHAT_ID}\n'
            f"    api_url: http://127.0.0.1:{port}"
        )

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_telegram(port)


class GoogleChatPath(ScriptedPath):
    """Chat's own answers: {"error": {"code", "message", "status"}}; its 429 (the space's
    write quota) here with a Retry-After, which the channel honours when Chat sends one."""

    name = "googlechat"
    answers = {
        "rate_limited": Reply(
            429,
            {"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                       "status": "RESOURCE_EXHAUSTED"}},
            {"Retry-After": "1"},
        ),
        "server_error": chat_error(503, "The service is currently unavailable.", "UNAVAILABLE"),
        "hang": Reply(200, {"name": "spaces/S/messages/M"}, delay_s=HANG_S),
        "permanent": chat_error(404, "Requested entity was not found.", "NOT_FOUND"),
    }  # fmt: skip

    def channel(self, port: int) -> str:
        url = f"http://127.0.0.1:{port}{webhook_path()}?key={CHAT_KEY}&token={CHAT_TOKEN}"
        return f"    type: googlechat\n    webhook_url: '{url}'"

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_chat(port)


class PushoverPath(ScriptedPath):
    """Pushover's own answers: {"status": 0, "errors": [...], "request"}; its 429 (the monthly
    quota) with a Retry-After here (a proxy's), which the channel honours before the quota's
    X-Limit-App-Reset; a 5xx is tried again no sooner than 5 s, as Pushover asks."""

    name = "pushover"
    answers = {
        "rate_limited": Reply(
            429,
            {"status": 0, "errors": ["application is over its monthly limit"], "request": "r1"},
            {"Retry-After": "1", "X-Limit-App-Limit": "10000", "X-Limit-App-Remaining": "0"},
        ),
        "server_error": Reply(503, "<html>503 Service Unavailable</html>"),
        "hang": Reply(200, {"status": 1, "request": "r2"}, delay_s=HANG_S),
        "permanent": refused(400, ["user identifier is not a valid user"], user="invalid"),
    }

    def channel(self, port: int) -> str:
        return (
            f"    type: pushover\n    token: {PUSHOVER_TOKEN}\n    user_key: {PUSHOVER_USER}\n"
            f"    api_url: http://127.0.0.1:{port}"
        )

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_pushover(port)


class OpsgeniePath(ScriptedPath):
    """The Alert API's own answers: {"message", "took", "requestId"}; its 429 here with a
    Retry-After, which the channel honours (without one: backoff). Each request's identity is
    its alias, the run id: Opsgenie counts up an open alert of the same alias."""

    name = "opsgenie"
    answers = {
        "rate_limited": og_answer(429, {"Retry-After": "1"}, message="Too many requests"),
        "server_error": og_answer(503, message="Service unavailable"),
        "hang": Reply(202, {"result": "Request will be processed"}, delay_s=HANG_S),
        "permanent": unprocessable({"message": "Message can not be empty."}),
    }

    def channel(self, port: int) -> str:
        return (
            f"    type: opsgenie\n    api_key: {OPSGENIE_KEY}\n    api_url: http://127.0.0.1:{port}"
        )

    def start(self, port: int) -> AbstractAsyncContextManager[Any]:
        return fake_opsgenie(port)

    def requests(self) -> list[str]:
        return [str(call.json().get("alias")) for call in self.fake.calls]

    def arrived(self) -> list[str]:
        """The alerts Opsgenie has: one per alias, however often it was sent (each repeat
        counted up the open one, as the fake's `count` says)."""
        assert isinstance(self.fake, FakeOpsgenie)
        return list(self.fake.alerts)


class EmailPath(Path_):
    """aiosmtpd: 421 (the server sheds load) and 451 are temporary, 550 permanent; `hang` and
    `hold` keep the reply to DATA, after the whole mail was sent."""

    name = "email"
    retry_after = None  # SMTP has no Retry-After
    answers = {
        "rate_limited": "421 4.7.0 slow down",
        "server_error": "451 4.7.1 try later",
        "hang": "hang",
        "permanent": "550 5.7.1 rejected",
    }

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.held = False
        self.release = asyncio.Event()
        self.seen: list[bytes] = []  # every DATA received, answered or not
        self.fake = FakeSMTP()

    def channel(self, port: int) -> str:
        smtp = f"{{host: 127.0.0.1, port: {port}, starttls: false}}"
        return f"    type: email\n    smtp: {smtp}\n    from: relay@example.com\n    to: [a@example.com]"

    @asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[Any]:
        fake, server = await start_smtp(port=port)
        self.fake = fake
        handle_data = fake.handle_DATA

        async def data(server: Any, session: Any, envelope: Any) -> str:
            self.seen.append(envelope.original_content)
            step = self.steps.pop(0) if self.steps else ""
            if step == "hang" or self.held:
                await self.release.wait()  # a hang is never released: relay gives up
            elif step:
                return step
            return await handle_data(server, session, envelope)

        fake.handle_DATA = data  # type: ignore[method-assign]
        try:
            yield fake
        finally:
            self.release.set()
            server.close()

    def script(self, *steps: str) -> None:
        self.steps.extend(self.answers[step] for step in steps)

    def hold(self, on: bool) -> None:
        self.held = on
        if not on:  # what was held is answered 250 now: committed, its reply lost with relay
            self.release.set()

    def requests(self) -> list[str]:
        return [_message_id(data) for data in self.seen]

    def arrived(self) -> list[str]:
        return [_message_id(m.data) for m in self.fake.messages]

    def identity(self, run_id: str) -> str:
        return f"<{notification_id(run_id, RULE, CHANNEL)}@example.com>"  # from: relay@


def _message_id(data: bytes) -> str:
    found = re.search(rb"^Message-ID: (\S+)", data, re.MULTILINE | re.IGNORECASE)
    return found.group(1).decode() if found else "?"


PATHS: dict[str, Callable[[], Path_]] = {
    "webhook": WebhookPath,
    "slack-webhook": lambda: SlackPath("webhook"),
    "slack-token": lambda: SlackPath("token"),
    "email": EmailPath,
    "discord": DiscordPath,
    "msteams": TeamsPath,
    "pagerduty": PagerDutyPath,
    "telegram": TelegramPath,
    "googlechat": GoogleChatPath,
    "pushover": PushoverPath,
    "opsgenie": OpsgeniePath,
}


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> Path_:
    return PATHS[request.param]()


# ----------------------------------------------------------------------------- helpers


def failed_run(run_id: str) -> dict[str, Any]:
    return {**sdk_run("failed"), "id": run_id}


async def post(url: str, run_id: str) -> None:
    body = json.dumps(failed_run(run_id))
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/runs", data=body) as resp:
        assert resp.status == 202


async def notification(url: str, run_id: str) -> dict[str, Any]:
    ident = notification_id(run_id, RULE, CHANNEL)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/notifications/{ident}") as resp,
    ):
        assert resp.status == 200
        return dict(await resp.json())


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        if found := check():
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def settled(url: str, run_id: str, state: str) -> dict[str, Any]:
    for _ in range(1200):
        row = await notification(url, run_id)
        if row["state"] == state:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run_id} is {row['state']}, never {state}: {row}")


def retries(proc: RelayProcess, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in proc.logs
        if e.get("msg") == "delivery failed; will retry" and e.get("reason") == reason
    ]


async def final_counts(db: Path) -> dict[str, int]:
    store = SQLiteStore(db)
    await store.open()
    try:
        return await store.counts()
    finally:
        await store.close()


# ----------------------------------------------------------------------------- the matrix


async def test_refused_rate_limited_5xx_timeout_then_ok_and_permanent_is_dead(
    path: Path_, relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    port = free_port()
    config = CONFIG.format(channel=path.channel(port), concurrency=1, timeout=TIMEOUT)
    proc = relay_process(config)
    await asyncio.to_thread(proc.start)
    await post(proc.url, "run_fm_a")
    await until(lambda: retries(proc, "network"), "a refused connection is retried")

    async with path.serve(port):
        path.script("rate_limited", "server_error", "hang")
        row = await settled(proc.url, "run_fm_a", "sent")
        want = path.identity("run_fm_a")
        assert path.requests() == [want] * 4  # 429, 5xx, the hang, then OK: the same id
        assert path.arrived()[-1:] == [want]
        if path.retry_after is not None:  # the wait the receiver asked for, and no shorter
            [limited] = retries(proc, "rate_limited")
            assert limited["retry_in_s"] >= path.retry_after
            calls = _arrival_times(path)
            assert calls[1] - calls[0] >= path.retry_after
        assert retries(proc, "timeout")
        assert not [e for e in proc.logs if e.get("msg") == "notification dead"]

        path.script("permanent")
        await post(proc.url, "run_fm_b")
        dead = await settled(proc.url, "run_fm_b", "dead")
        assert dead["attempts"] == 1  # a permanent refusal is not retried
        assert path.requests().count(path.identity("run_fm_b")) == 1
    assert row["attempts"] >= 4
    assert proc.terminate() == 0
    assert await final_counts(tmp_path / "relay.db") == {
        "pending": 0,
        "sent": 1,
        "dead": 1,
        "muted": 0,
    }


def _arrival_times(path: Path_) -> list[float]:
    if isinstance(path, WebhookPath):
        return [r.at for r in path.sink.received]
    assert isinstance(path, ScriptedPath)
    return [call.at for call in path.fake.calls]


async def test_kill_9_mid_flight_then_restart_delivers_each_at_least_once(
    path: Path_, relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    concurrency, count = 2, 5
    port = free_port()
    async with path.serve(port):
        config = CONFIG.format(
            channel=path.channel(port), concurrency=concurrency, timeout=HOLD_TIMEOUT
        )
        proc = relay_process(config)
        path.hold(True)
        await asyncio.to_thread(proc.start)
        run_ids = [f"run_fm_k{i}" for i in range(count)]
        for run_id in run_ids:
            await post(proc.url, run_id)
        await until(lambda: len(path.requests()) >= concurrency, "the first sends are in flight")
        proc.kill()
        in_flight = set(path.requests())
        assert len(in_flight) == concurrency

        path.hold(False)  # the held ones are answered now, to a relay that is gone
        await asyncio.to_thread(proc.start)
        want = {path.identity(run_id) for run_id in run_ids}
        await until(lambda: want <= set(path.arrived()), "every notification arrives")
        for run_id in run_ids:
            await settled(proc.url, run_id, "sent")
        copies = Counter(path.arrived())
        assert set(copies) == want
        twice = {key for key, n in copies.items() if n > 1}
        assert twice <= in_flight and max(copies.values()) <= 2, copies
        assert proc.terminate() == 0
    assert await final_counts(tmp_path / "relay.db") == {
        "pending": 0,
        "sent": count,
        "dead": 0,
        "muted": 0,
    }
