"""Secrets never leak: every secret relay can hold is configured, a scenario with failures and
dead letters runs through a real child process, and everything relay says is scanned.

Secrets: server auth_token and admin_token, a webhook URL with a key in its path and query, the
webhook signing secret and a header value, a Slack bot token and a Slack webhook URL (a local
fake that refuses), a Telegram bot token (in the path of every request; a fake answering
401), a Google Chat webhook's key and token (in the query; a fake quoting the URL in its 400), a
Pushover application token and user key (in the body; a fake quoting them in its 400's errors), an Opsgenie API key (in a header; the echo test only), an SMTP password (nothing listening), the trigger_alerts secret and the
Realtime secret key (a local fake answering 401). Scanned: every stderr log line and stdout line
of `relay serve`, GET /metrics, the 401 bodies, GET /v1/dlq, /v1/notifications and
/v1/notifications/{id}, the output of relay check, dlq list (--json), history --json,
silence list --json and send-test, and the store's file.

A second test sends through every channel type to a hostile receiver that echoes what it was
sent (URL, headers, body; the SMTP AUTH line) in the error fields each channel reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import io
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from aiohttp import web

from relay.cli import main as relay_main
from relay.errors import StoreUnavailable
from relay.logs import JsonFormatter, ScrubSecrets, TextFormatter, _ScrubbingHandler
from relay.settings import Settings, libpq_file_secrets
from relay.store.opening import open_store
from tests.conftest import FIXTURES, RelayProcess, run_cli, sdk_run
from tests.fakes.serving import free_port, serving

SIGNING_KEY = b"SeCrEt-sign-1234567890-key-bytes"
SECRETS = {
    "RELAY_INGEST_TOKEN": "SeCrEt-auth-1234567890",
    "RELAY_ADMIN_TOKEN": "SeCrEt-admin-1234567890",
    "HOOK_PATH_KEY": "SeCrEt-path-1234567890",
    "HOOK_QUERY_KEY": "SeCrEt-query-1234567890",
    "HOOK_SECRET": "whsec_" + base64.b64encode(SIGNING_KEY).decode(),
    "HOOK_HEADER": "SeCrEt-header-1234567890",
    "SLACK_BOT_TOKEN": "xoxb-SeCrEt-slackbot-1234567890",
    "SLACK_HOOK_KEY": "SeCrEt-slackhook-1234567890",
    "SMTP_PASSWORD": "SeCrEt-smtp-1234567890",
    "TRIGGER_ALERT_SECRET": "SeCrEt-alerts-1234567890",
    "TRIGGER_SECRET_KEY": "tr_prod_SeCrEt-realtime-1234567890",
    "HOOK_PASSWORD": "SeCrEt-basic-1234567890",
    "DISCORD_TOKEN": "SeCrEt-discord-1234567890",
    "TEAMS_SIG": "SeCrEt-teams-1234567890",
    "PAGERDUTY_KEY": "SeCrEt-pagerduty-1234567890abcde",  # 32 characters, as PagerDuty's
    "TELEGRAM_TOKEN": "7012345678:SeCrEt-telegram-1234567890",  # in the URL's path
    "CHAT_KEY": "AIzaSy-SeCrEt-chatkey-1234567890",  # in the URL's query
    "CHAT_TOKEN": "SeCrEt-chattoken-1234567890%3D",  # as Chat writes it: `=` encoded
    "PUSHOVER_TOKEN": "SeCrEtPushoverToken12345678901",  # 30 letters and digits, as Pushover's
    "PUSHOVER_USER_KEY": "SeCrEtPushoverUserKey123456789",
    "OPSGENIE_KEY": "SeCrEt-opsgenie-1234567890",  # in the Authorization header
}
# what must never show: every value, and the parts of composite ones
NEEDLES = [
    *SECRETS.values(),
    SECRETS["HOOK_SECRET"].removeprefix("whsec_"),
    # as the wire carries them: Basic auth, SMTP AUTH PLAIN and AUTH LOGIN
    base64.b64encode(f"relay:{SECRETS['HOOK_PASSWORD']}".encode()).decode(),
    AUTH_PLAIN := base64.b64encode(f"\0relay\0{SECRETS['SMTP_PASSWORD']}".encode()).decode(),
    base64.b64encode(SECRETS["SMTP_PASSWORD"].encode()).decode(),
    "SeCrEt",  # every secret above carries it; nothing else does
]
# Nothing here hangs (the fakes answer at once, SMTP is refused), so a try's timeout is only the
# machine's speed: at 2 s a loaded CI machine timed out one hook try, which then went dead after
# its two attempts (sent 2, dead 14). 60 s is settled()'s own bound.
CONFIG = """\
server:
  auth_token: ${RELAY_INGEST_TOKEN}
  admin_token: ${RELAY_ADMIN_TOKEN}
sources:
  trigger_alerts:
    secret: ${TRIGGER_ALERT_SECRET}
  realtime:
    api_url: {fake}
    secret_key: ${TRIGGER_SECRET_KEY}
    error_backoff: 1s
    feeds:
      - tags: [env:prod]
defaults:
  retry: {max_attempts: 2, max_age: 1h, min_backoff: 100ms, max_backoff: 200ms}
  timeout: 60s
channels:
  hook:
    type: webhook
    url: {fake}/hooks/${HOOK_PATH_KEY}?key=${HOOK_QUERY_KEY}
    secret: ${HOOK_SECRET}
    headers: {X-Api-Key: "${HOOK_HEADER}"}
  slack-hook:
    type: slack
    webhook_url: {fake}/services/T000/B000/${SLACK_HOOK_KEY}
  slack-bot:
    type: slack
    token: ${SLACK_BOT_TOKEN}
    channel: "#oncall"
    api_url: {fake}/api
  mail:
    type: email
    smtp: {host: 127.0.0.1, port: {smtp_port}, username: relay, password: "${SMTP_PASSWORD}"}
    from: relay@example.com
    to: [team@example.com]
  tg:
    type: telegram
    bot_token: ${TELEGRAM_TOKEN}
    chat_id: "@oncall_alerts"
    api_url: {fake}
  gchat:
    type: googlechat
    webhook_url: {fake}/v1/spaces/AAAAsecret/messages?key=${CHAT_KEY}&token=${CHAT_TOKEN}
  phone:
    type: pushover
    token: ${PUSHOVER_TOKEN}
    user_key: ${PUSHOVER_USER_KEY}
    api_url: {fake}
  ops:
    type: opsgenie
    api_key: ${OPSGENIE_KEY}
    api_url: {fake}
rules:
  - name: failures
    match: {status: [failure]}
    notify: [hook, slack-hook, slack-bot, mail, tg, gchat, phone, ops]
"""
DEAD_RUN = "run_secret_dead"
RUNS = ["run_secret_ok_1", "run_secret_ok_2", DEAD_RUN]


class Fakes:
    """Every outside service on one loopback server; records what each one was sent."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (kind, path_qs, headers)
        self.hook_calls: dict[str, int] = {}
        self.pushover_bodies: list[str] = []

    def _record(self, kind: str, request: web.Request) -> None:
        self.seen.append((kind, request.path_qs, dict(request.headers)))

    async def hook(self, request: web.Request) -> web.Response:
        self._record("hook", request)
        run_id = (await request.json())["run"]["id"]
        self.hook_calls[run_id] = self.hook_calls.get(run_id, 0) + 1
        if run_id == DEAD_RUN:
            return web.Response(status=400, text="bad payload")
        if self.hook_calls[run_id] == 1:
            return web.Response(status=503, text="try later")
        return web.Response(status=200, text="ok")

    async def slack_hook(self, request: web.Request) -> web.Response:
        self._record("slack-hook", request)
        return web.Response(status=403, text="invalid_token")

    async def slack_api(self, request: web.Request) -> web.Response:
        self._record("slack-bot", request)
        return web.json_response({"ok": False, "error": "invalid_auth"})

    async def telegram(self, request: web.Request) -> web.Response:
        self._record("telegram", request)
        return web.json_response(
            {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
        )

    async def googlechat(self, request: web.Request) -> web.Response:
        self._record("googlechat", request)  # an answer quoting the request, as a proxy might
        words = f"Invalid card in request to {request.path_qs}"
        answer = {"error": {"code": 400, "message": words, "status": "INVALID_ARGUMENT"}}
        return web.json_response(answer, status=400)

    async def pushover(self, request: web.Request) -> web.Response:
        self._record("pushover", request)  # errors quoting the body, token and user key in it
        body = await request.text()
        self.pushover_bodies.append(body)
        answer = {"user": "invalid", "errors": [f"bad request {body}"], "status": 0}
        return web.json_response({**answer, "request": "5042853c-402d"}, status=400)

    async def opsgenie(self, request: web.Request) -> web.Response:
        self._record("opsgenie", request)  # a refusal quoting the request's key, as a proxy might
        words = f"Key {request.headers.get('Authorization')} is not allowed"
        return web.json_response({"message": words, "took": 0.0, "requestId": words}, status=403)

    async def realtime(self, request: web.Request) -> web.Response:
        self._record("realtime", request)
        return web.json_response({"error": "Invalid API Key"}, status=401)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    f = Fakes()
    app = web.Application()
    app.router.add_post("/hooks/{key}", f.hook)
    app.router.add_post("/services/{rest:.*}", f.slack_hook)
    app.router.add_post("/api/chat.postMessage", f.slack_api)
    app.router.add_get("/realtime/{rest:.*}", f.realtime)
    app.router.add_post("/bot{rest:.*}", f.telegram)
    app.router.add_post("/v1/spaces/{space}/messages", f.googlechat)
    app.router.add_post("/1/messages.json", f.pushover)
    app.router.add_post("/v2/alerts", f.opsgenie)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as f.url:
        yield f


def leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle in text]


class Scan:
    """Collects every text relay produced, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> None:
        assert text is not None
        self.texts.append((where, text))

    def assert_clean(self) -> None:
        found = {where: leaks(text) for where, text in self.texts if leaks(text)}
        assert not found, found


def sign_alert(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def settled(http: aiohttp.ClientSession, url: str, admin: dict[str, str]) -> list[Any]:
    """The notifications once none is pending (every channel sent or gave up)."""
    deadline = time.monotonic() + 60
    while True:
        async with http.get(url + "/v1/notifications", headers=admin) as resp:
            assert resp.status == 200
            rows = (await resp.json())["notifications"]
        states = [row["state"] for row in rows]
        if len(rows) == (len(RUNS) + 1) * 8 and "pending" not in states:  # + the alert's run
            return list(rows)
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.2)


async def test_no_secret_appears_anywhere(
    relay_process: Callable[..., RelayProcess], fakes: Fakes, tmp_path: Path
) -> None:
    config_text = (
        CONFIG.replace("{fake}", fakes.url).replace("{smtp_port}", str(free_port()))
    )  # fmt: skip
    proc = relay_process(config_text, SECRETS)
    config_path, db = tmp_path / "config.yaml", tmp_path / "relay.db"
    await asyncio.to_thread(proc.start)
    scan = Scan()
    token = {"Authorization": f"Bearer {SECRETS['RELAY_INGEST_TOKEN']}"}
    admin = {"Authorization": f"Bearer {SECRETS['RELAY_ADMIN_TOKEN']}"}
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
            async with http.request(method, proc.url + path, **kwargs) as resp:
                text = await resp.text()
                scan.add(f"{method} {path} {resp.status}", text + json.dumps(dict(resp.headers)))
                assert resp.status == expect, (method, path, resp.status, text)
                return json.loads(text) if "json" in resp.content_type else text

        runs = [sdk_run("failed") | {"id": run_id} for run_id in RUNS]
        await call("POST", "/v1/runs", 202, json=runs, headers=token)
        # refusals: no token, a wrong one, the ingest token on admin endpoints, a bad signature
        await call("POST", "/v1/runs", 401, json=runs)
        wrong = {"Authorization": f"Bearer {SECRETS['RELAY_ADMIN_TOKEN']}x"}
        await call("POST", "/v1/runs", 401, json=runs, headers=wrong)
        await call("GET", "/v1/dlq", 401, headers=token)
        await call("GET", "/v1/notifications", 401)
        await call("POST", "/v1/dlq/replay", 401, headers=token)
        alert = (FIXTURES / "alert-webhooks" / "alert.run.failed.body.json").read_bytes()
        bad = {"x-trigger-signature-hmacsha256": sign_alert(alert, "not-the-secret")}
        await call("POST", "/v1/trigger/alerts", 401, data=alert, headers=bad)
        good = {
            "x-trigger-signature-hmacsha256": sign_alert(alert, SECRETS["TRIGGER_ALERT_SECRET"])
        }
        await call("POST", "/v1/trigger/alerts", 202, data=alert, headers=good)

        rows = await settled(http, proc.url, admin)
        by_state: dict[str, int] = {}
        for row in rows:
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
        # hook: 3 sent after a 503 (2 runs, the alert's run), 1 dead (400); Slack, SMTP,
        # Telegram, Google Chat, Pushover, Opsgenie: dead
        assert by_state == {"sent": 3, "dead": 29}, " ".join(
            f"{row['run_id']}:{row['state']}:{row['reason']}:{row['attempts']}"
            for row in rows
            if row["channel"] == "hook"
        )
        dead = await call("GET", "/v1/dlq", 200, headers=admin)
        assert len(dead["dead"]) == 29
        assert {d["reason"] for d in dead["dead"]} == {"client_error", "auth_error", "network"}
        for row in rows:
            await call("GET", f"/v1/notifications/{row['id']}", 200, headers=admin)
        await call("GET", "/v1/notifications?state=dead", 200, headers=admin)
        await call("GET", "/metrics", 200)
        await call("GET", "/readyz", 200)
        replay = await call("POST", f"/v1/dlq/{dead['dead'][0]['id']}/replay", 200, headers=admin)
        assert replay == {"replayed": 1}
        await asyncio.sleep(1.0)  # the realtime feed keeps getting 401s meanwhile

    env = {**SECRETS, "RELAY_STORE_URL": f"sqlite:///{db}"}
    commands = [
        ("check",),
        ("dlq", "list"),
        ("dlq", "list", "--json"),
        ("history", "--json"),
        ("silence", "list", "--json"),
        ("send-test", "slack-hook"),
        ("send-test", "mail"),
        ("send-test", "tg"),
        ("send-test", "gchat"),
        ("send-test", "phone"),
        ("send-test", "ops"),
    ]
    results = await asyncio.gather(
        *(asyncio.to_thread(run_cli, *a, "--config", str(config_path), env=env) for a in commands)
    )
    for args, done in zip(commands, results, strict=True):
        scan.add(f"relay {' '.join(args)}", done.stdout + done.stderr)
        expected = 1 if args[0] == "send-test" else 0
        assert done.returncode == expected, (args, done.stdout, done.stderr)
    assert await asyncio.to_thread(proc.terminate) == 0
    await asyncio.to_thread(proc.output_read)

    for entry in proc.logs:
        scan.add("serve stderr", json.dumps(entry, ensure_ascii=False))
    scan.add("serve stdout", "".join(proc.stdout))
    # the store's pages: an outbox row keeps its channel's name, not the channel's secrets
    stored = {f.name: f.read_bytes().decode("latin-1") for f in tmp_path.glob("relay.db*")}
    assert any(DEAD_RUN in text for text in stored.values()), list(stored)
    for name, text in stored.items():
        scan.add(name, text)
    # the scan is meaningful: the secrets were really in use...
    kinds = {kind for kind, _, _ in fakes.seen}
    assert kinds == {
        "hook", "slack-hook", "slack-bot", "realtime", "telegram", "googlechat", "pushover",
        "opsgenie",
    }  # fmt: skip
    ops = next(s for s in fakes.seen if s[0] == "opsgenie")
    assert ops[2]["Authorization"] == f"GenieKey {SECRETS['OPSGENIE_KEY']}"
    assert all(
        SECRETS["PUSHOVER_TOKEN"] in body and SECRETS["PUSHOVER_USER_KEY"] in body
        for body in fakes.pushover_bodies
    )
    chat = next(s for s in fakes.seen if s[0] == "googlechat")
    assert SECRETS["CHAT_KEY"] in chat[1] and SECRETS["CHAT_TOKEN"] in chat[1]
    telegram = next(s for s in fakes.seen if s[0] == "telegram")
    assert telegram[1] == f"/bot{SECRETS['TELEGRAM_TOKEN']}/sendMessage"
    hook = next(s for s in fakes.seen if s[0] == "hook")
    assert SECRETS["HOOK_PATH_KEY"] in hook[1] and SECRETS["HOOK_QUERY_KEY"] in hook[1]
    assert hook[2]["X-Api-Key"] == SECRETS["HOOK_HEADER"] and hook[2]["webhook-signature"]
    bot = next(s for s in fakes.seen if s[0] == "slack-bot")
    assert bot[2]["Authorization"] == f"Bearer {SECRETS['SLACK_BOT_TOKEN']}"
    realtime = next(s for s in fakes.seen if s[0] == "realtime")
    assert realtime[2]["Authorization"] == f"Bearer {SECRETS['TRIGGER_SECRET_KEY']}"
    # ...and what relay said is about them (failures named), yet carries none of them
    said = " ".join(text for _, text in scan.texts)
    for word in ("auth_error", "invalid_auth", "network", "HTTP 400", "realtime request refused"):
        assert word in said, word
    assert len(proc.logs) > 20
    assert leaks(f"<{SECRETS['SMTP_PASSWORD']}>") and not leaks("***")  # the scan can see
    scan.assert_clean()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_secret_is_scrubbed_in_the_forms_a_line_writes_it(fmt: str) -> None:
    """A password with a quote or backslash is escaped in a JSON line, and a token in a URL is
    percent-encoded: the scrubber matched only the literal value, so those forms went out."""
    secret = 'Xq"Zk\\Wv Yj/+1'
    scrub = ScrubSecrets()
    scrub.set([secret])
    handler = _ScrubbingHandler(scrub)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    record = logging.makeLogRecord({"msg": "refused %s", "args": (secret,), "levelname": "ERROR"})
    record.__dict__.update(
        url=f"https://h/x?key={quote_plus(secret)}&k2={quote(secret, safe='')}",
        problems=[secret],
    )
    line = handler.format(record)
    assert "***" in line
    assert not any(part in line for part in ("Xq", "Zk", "Wv", "Yj")), line


def test_a_secret_that_reads_like_json_leaves_the_json_line_whole() -> None:
    """A webhook header value such as `null`, `true` or `8080` is a secret too: replaced in the
    formatted line, it turned `"group":null` into `"group":***`, a line no JSON reader takes."""
    scrub = ScrubSecrets()
    scrub.set(["null", "true", "8080", "warning"])
    handler = _ScrubbingHandler(scrub)
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("refused by h:8080")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.makeLogRecord(
        {"msg": "sent to %s", "args": ("h:8080",), "levelname": "WARNING", "exc_info": exc_info}
    )
    record.__dict__.update(group=None, retryable=True, port=8080, tags=("null-island",))
    line = json.loads(handler.format(record))
    assert (line["level"], line["group"], line["retryable"], line["port"]) == (
        "warning",
        None,
        True,
        8080,
    )
    assert (line["msg"], line["tags"]) == ("sent to h:***", ["***-island"])
    assert "refused by h:***" in line["exc"] and "8080" not in line["exc"]


def test_the_store_password_is_scrubbed_through_every_config() -> None:
    """RELAY_STORE_URL's password is the environment's, not the config's: it stays on the
    scrub list when a reload replaces the config's secrets (percent-decoded, as libpq reads it)."""
    settings = Settings(store_url="postgresql://relay:pg%2FPw-Zq81@127.0.0.1:5432/relay")
    assert settings.secrets() == ["pg/Pw-Zq81"]
    scrub = ScrubSecrets()
    scrub.lasting(settings.secrets())
    scrub.set(["config-secret-1"])
    scrub.set(["config-secret-2"])  # a reload
    said = scrub.scrub("pg/Pw-Zq81 pg%2FPw-Zq81 config-secret-1 config-secret-2")
    assert said == "*** *** config-secret-1 ***"
    assert Settings(store_url="sqlite:///data/relay.db").secrets() == []


QUERY_URL = (
    "postgresql://relay@127.0.0.1:{port}/relay?sslmode=require"
    "&password=Qp%2FSecret-1&sslpassword=Kp-Secret-2{more}"
)


def test_a_store_password_in_the_url_query_is_scrubbed_too() -> None:
    """libpq and asyncpg take the password from `?password=` and the TLS key's from
    `?sslpassword=` as well: the scrubber knew only the one before the `@`, so a line quoting
    either (the URL, a driver's message) went out as it was."""
    settings = Settings(store_url=QUERY_URL.format(port=5432, more=""))
    assert settings.secrets() == ["Qp/Secret-1", "Kp-Secret-2"]
    scrub = ScrubSecrets()
    scrub.lasting(settings.secrets())
    said = scrub.scrub(f"{settings.store_url} Qp/Secret-1")
    assert (
        said
        == "postgresql://relay@127.0.0.1:5432/relay?sslmode=require&password=***&sslpassword=*** ***"
    )


@pytest.mark.parametrize(
    ("args", "more", "said"),
    [
        (("serve",), "&sslcert=/nonexistent/client.crt", "store open failed: TLS"),
        (("dlq", "list"), "&port=0", "RELAY_STORE_URL: port parameter"),
    ],
)
def test_a_store_url_error_never_shows_a_query_password(
    args: tuple[str, ...], more: str, said: str, tmp_path: Path
) -> None:
    """A store that cannot be opened (a TLS file missing) or a URL refused (a bad port) is
    said without the passwords of the URL's query."""
    url = QUERY_URL.format(port=free_port(), more=more)
    env = {"RELAY_STORE_URL": url, "RELAY_LISTEN": "127.0.0.1:0"}
    done = run_cli(*args, env=env, cwd=tmp_path)
    assert done.returncode != 0 and said in done.stderr
    for secret in ("Qp", "Secret-1", "Kp-Secret-2"):
        assert secret not in done.stderr + done.stdout


PG_ENV_SECRETS = {"PGPASSWORD": "Pg-Env-Secret-1", "PGSSLPASSWORD": "Pg-Env-Secret-2"}


def _pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


async def _pg_echoing_password(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A PostgreSQL server (protocol 3) that asks for a cleartext password, then refuses it
    quoting it in its ErrorResponse, as a misconfigured proxy might: the line relay logs of
    the failure carries the password it sent."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:  # an SSLRequest (answered N) first, or the StartupMessage
            size = int.from_bytes(await reader.readexactly(4), "big")
            code = int.from_bytes((await reader.readexactly(size - 4))[:4], "big")
            if code != 80877103:
                break
            writer.write(b"N")
        writer.write(_pg_message(b"R", (3).to_bytes(4, "big")))  # AuthenticationCleartextPassword
        await reader.readexactly(1)  # p: PasswordMessage
        size = int.from_bytes(await reader.readexactly(4), "big")
        password = (await reader.readexactly(size - 4)).rstrip(b"\0")
        fields = [b"SFATAL", b"VFATAL", b"C28P01", b"Mpassword " + password + b" refused"]
        writer.write(_pg_message(b"E", b"".join(f + b"\0" for f in fields) + b"\0"))
        await writer.drain()
    writer.close()


async def _failure_logged(password: str, query: str = "") -> tuple[str, str]:
    """The store's URL (`query` added) at a server echoing the password it gets, and the log
    line of the open's failure with its cause, as relay's scrubbing handler writes it."""
    server = await asyncio.start_server(_pg_echoing_password, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql://relay@127.0.0.1:{port}/relay?sslmode=disable{query}"
    scrub = ScrubSecrets()
    scrub.lasting(Settings(store_url=url).secrets())  # as relay.cli.main does
    handler = _ScrubbingHandler(scrub)
    handler.setStream(io.StringIO())
    handler.setFormatter(JsonFormatter())
    async with server:
        with pytest.raises(StoreUnavailable) as failed:
            await open_store(url).open()
    assert password in repr(failed.value.__cause__)  # what the server said
    record = logging.makeLogRecord({"msg": "store failed", "levelname": "ERROR"})
    record.exc_info = (StoreUnavailable, failed.value, failed.value.__traceback__)
    return url, handler.format(record)


async def test_libpq_environment_passwords_are_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg (as libpq) takes the store's password from PGPASSWORD when the URL has none
    (libpq the TLS key's from PGSSLPASSWORD): neither was on the scrub list, so a connection
    failure logged with its cause (a traceback: "outcome not recorded", "replica heartbeat
    failed") quoting the password went to the log as it was."""
    for name, value in PG_ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    url, line = await _failure_logged(PG_ENV_SECRETS["PGPASSWORD"])
    assert "password *** refused" in line, line
    assert not [s for s in PG_ENV_SECRETS.values() if s in line]
    assert Settings(store_url="sqlite:///data/relay.db").secrets() == []  # PostgreSQL's alone
    env = {"RELAY_STORE_URL": url, **PG_ENV_SECRETS}  # and a command never says it at all
    done = await asyncio.to_thread(run_cli, "dlq", "list", env=env, cwd=tmp_path)
    assert done.returncode == 1 and not [s for s in PG_ENV_SECRETS.values() if s in done.stderr]


FILE_SECRET = "Pg-File-Secret-3"


def _libpq_files(tmp_path: Path, how: str) -> tuple[str, dict[str, str]]:
    """The query and environment by which asyncpg finds FILE_SECRET in a file: a password file
    (PGPASSFILE, as ~/.pgpass) or a connection service file (`?service=`, PGSERVICEFILE)."""
    if how == "pgpass":
        path = tmp_path / "pgpass"
        path.write_text(f"*:*:*:relay:{FILE_SECRET}\n")
        path.chmod(0o600)  # asyncpg (as libpq) ignores a file others may read
        return "", {"PGPASSFILE": str(path)}
    path = tmp_path / "pg_service.conf"
    path.write_text(f"[relay]\npassword={FILE_SECRET}\n")
    return "&service=relay", {"PGSERVICEFILE": str(path)}


def test_each_password_of_the_password_file_is_read_as_libpq_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password is all after the fourth `:` (a `:` in it too), escapes kept and undone;
    comments, empty passwords and lines of fewer fields are no passwords, and no crash."""
    path = tmp_path / "pgpass"
    lines = [
        "#h:*:*:u:commented",
        "not a line",
        "*:*:*:relay:sec:ret",
        "h:1:db:u:",
        r"h:*:*:u:a\:b",
    ]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("PGPASSFILE", str(path))
    assert sorted(libpq_file_secrets("postgresql://relay@h/db")) == ["a:b", r"a\:b", "sec:ret"]


@pytest.mark.parametrize("how", ["pgpass", "service"])
async def test_passwords_from_libpq_files_are_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """asyncpg reads the store's password from ~/.pgpass (PGPASSFILE) or a service file
    (`?service=`, PGSERVICEFILE) as well: neither was on the scrub list, so a failure logged
    with its cause (the server quoting the password) carried it as it was."""
    query, env = _libpq_files(tmp_path, how)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, line = await _failure_logged(FILE_SECRET, query)
    assert "password *** refused" in line and FILE_SECRET not in line, line


@pytest.mark.parametrize("named", [True, False], ids=["PGSERVICEFILE", "home"])
def test_a_malformed_service_file_is_said_without_its_lines(tmp_path: Path, named: bool) -> None:
    """A service file configparser cannot read (a line before any [section]) ended `relay
    serve` in a traceback quoting that line: the password in it, on stderr. Now exit 1, a
    `relay not started` line naming the file (its path, and whether PGSERVICEFILE named it:
    the variable alone left which file was read to guess), none of its text."""
    path = tmp_path / ("pg_service.conf" if named else ".pg_service.conf")
    path.write_text(f"password={FILE_SECRET}\n[relay]\nhost=127.0.0.1\n")
    url = f"postgresql://relay@127.0.0.1:{free_port()}/relay?service=relay"
    env = {"RELAY_STORE_URL": url, "RELAY_LISTEN": "127.0.0.1:0"}
    env |= {"PGSERVICEFILE": str(path)} if named else {"HOME": str(tmp_path)}
    said = f"connection service file {path} (PGSERVICEFILE{'' if named else ' unset'})"
    for args in (["serve"], ["dlq", "list"]):
        done = run_cli(*args, env=env, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert FILE_SECRET not in done.stderr + done.stdout and "Traceback" not in done.stderr
        assert said in done.stderr, done.stderr


# one config a channel: send-test checks every template of the config's channel types
ECHO_CHANNELS = {
    "hook": """type: webhook
    url: http://relay:${HOOK_PASSWORD}@127.0.0.1:{port}/hooks/${HOOK_PATH_KEY}?key=${HOOK_QUERY_KEY}
    secret: ${HOOK_SECRET}
    headers: {X-Api-Key: "${HOOK_HEADER}"}""",
    "slack-hook": """type: slack
    webhook_url: {fake}/services/T000/B000/${SLACK_HOOK_KEY}""",
    "slack-bot": """type: slack
    token: ${SLACK_BOT_TOKEN}
    channel: "#oncall"
    api_url: {fake}/api""",
    "discord": """type: discord
    webhook_url: {fake}/api/webhooks/123456/${DISCORD_TOKEN}""",
    "teams": """type: msteams
    webhook_url: {fake}/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=${TEAMS_SIG}""",
    "pagerduty": """type: pagerduty
    routing_key: ${PAGERDUTY_KEY}
    api_url: {fake}""",
    "telegram": """type: telegram
    bot_token: ${TELEGRAM_TOKEN}
    chat_id: -1001234567890
    api_url: {fake}""",
    "googlechat": """type: googlechat
    webhook_url: {fake}/v1/spaces/AAAA/messages?key=${CHAT_KEY}&token=${CHAT_TOKEN}""",
    "pushover": """type: pushover
    token: ${PUSHOVER_TOKEN}
    user_key: ${PUSHOVER_USER_KEY}
    api_url: {fake}""",
    "opsgenie": """type: opsgenie
    api_key: ${OPSGENIE_KEY}
    api_url: {fake}""",
    "mail": """type: email
    smtp: {host: 127.0.0.1, port: {smtp_port}, starttls: false, username: relay, password: "${SMTP_PASSWORD}"}
    from: relay@example.com
    to: [team@example.com]""",
}
ECHO_CONFIG = """\
defaults:
  timeout: 5s
channels:
  {name}:
    {channel}
rules:
  - name: failures
    match: {status: [failure]}
    notify: [{name}]
"""


class Echo:
    """A receiver that quotes what it was sent (URL, every header, the body) in the error
    fields each channel reads from an answer, as a debugging proxy or a careless API does."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def _said(self, text: str) -> str:
        self.heard.append(text)
        return text

    async def http(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode("utf-8", "replace")
        echo = self._said(" ".join([request.path_qs, *request.headers.values(), body]))
        path = request.path
        if path.startswith("/api/chat."):
            return web.json_response({"ok": False, "error": echo})
        if "/webhooks/" in path:  # Discord, at its API v10
            errors = {echo: {"_errors": [{"code": "BASE_TYPE_BAD", "message": echo}]}}
            return web.json_response({"code": 50035, "message": echo, "errors": errors}, status=400)
        if path.startswith("/workflows/"):
            return web.json_response({"error": {"code": echo, "message": echo}}, status=400)
        if path.startswith("/v2/alerts"):  # Opsgenie: the key in the Authorization header
            answer = {"message": echo, "errors": {echo: echo}, "requestId": echo}
            return web.json_response(answer, status=422)
        if path.startswith("/v2/"):
            answer = {"status": "invalid event", "message": echo, "errors": [echo]}
            return web.json_response(answer, status=400)
        if path.startswith("/v1/spaces/"):  # Google Chat: key and token in the query
            error = {"code": 400, "message": echo, "status": "INVALID_ARGUMENT"}
            return web.json_response({"error": error}, status=400)
        if path.startswith("/1/"):  # Pushover: token and user key in the body
            answer = {"user": "invalid", "token": echo, "errors": [echo], "request": echo}
            return web.json_response({**answer, "status": 0}, status=400)
        if path.startswith("/bot"):  # Telegram's Bot API: the token is in the path
            refused = {"ok": False, "error_code": 400, "description": echo}
            return web.json_response(refused, status=400)
        return web.Response(status=400, text=echo)  # the webhook's and Slack webhook's plain text

    async def smtp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 echo ESMTP\r\n")
        while line := (await reader.readline()).decode("ascii", "replace").strip():
            if line.upper().startswith(("EHLO", "HELO")):
                writer.write(b"250-echo\r\n250 AUTH PLAIN LOGIN\r\n")
            elif line.upper().startswith("QUIT"):
                writer.write(b"221 bye\r\n")
            else:  # AUTH PLAIN <base64 of \0user\0password>, or anything else
                writer.write(f"535 5.7.8 refused: {self._said(line)}\r\n".encode())
            await writer.drain()
        writer.close()


def send_tests(configs: dict[str, Path]) -> dict[str, tuple[int, str]]:
    """`relay send-test` to each channel, in this process: (exit code, what it said)."""
    said = {}
    for name, config in configs.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = relay_main(["send-test", name, "--config", str(config)])
        said[name] = (code, out.getvalue() + err.getvalue())
    return said


def echo_configs(directory: Path, fill: dict[str, str]) -> dict[str, Path]:
    configs = {}
    for name, channel in ECHO_CHANNELS.items():
        text = ECHO_CONFIG.replace("{name}", name).replace("{channel}", channel)
        configs[name] = directory / f"{name}.yaml"
        configs[name].write_text(functools.reduce(lambda t, kv: t.replace(*kv), fill.items(), text))
    return configs


async def test_a_receiver_echoing_the_request_learns_nothing_from_what_relay_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What relay says of a failed send (send-test's words; the same go to the logs, the store
    and /v1/dlq) names the failure, not the answer: the answer may quote the secrets."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    echo = Echo()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo.http)
    smtp = await asyncio.start_server(echo.smtp, "127.0.0.1", 0)
    smtp_port = smtp.sockets[0].getsockname()[1]
    async with smtp, serving(app, access_log=None, shutdown_timeout=0.2) as url:
        fill = {"{fake}": url, "{port}": url.rsplit(":", 1)[1], "{smtp_port}": str(smtp_port)}
        said = await asyncio.to_thread(send_tests, echo_configs(tmp_path, fill))
    assert {code for code, _ in said.values()} == {1}, said
    # the scan is meaningful: every channel's secret went out and came back in an answer...
    heard = " ".join(echo.heard)
    sent = ["HOOK_PATH_KEY", "HOOK_HEADER", "SLACK_BOT_TOKEN", "SLACK_HOOK_KEY", "DISCORD_TOKEN"]
    sent += ["TEAMS_SIG", "PAGERDUTY_KEY", "TELEGRAM_TOKEN", "CHAT_KEY", "CHAT_TOKEN"]
    sent += ["OPSGENIE_KEY"]
    for name in [*sent, "PUSHOVER_TOKEN", "PUSHOVER_USER_KEY"]:
        assert SECRETS[name] in heard, name
    assert AUTH_PLAIN in heard  # the SMTP password
    # ...and relay names each failure, quoting none of it
    assert "SMTP 535" in said["mail"][1] and "HTTP 400" in said["hook"][1], said
    found = {name: leaks(text) for name, (_, text) in said.items() if leaks(text)}
    assert not found, (found, said)


def test_a_secret_run_into_its_key_is_not_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`{password:hunter2}`, the space after the colon forgotten, is one key `password:hunter2`
    of a flow mapping: relay check named that key whole ("channels.mail.smtp.password:hunter2:
    unknown key"), and so every problem under it, a webhook header's too."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "channels:\n"
        "  mail:\n"
        "    type: email\n"
        f"    smtp: {{host: 127.0.0.1, username: relay, password:{SECRETS['SMTP_PASSWORD']}}}\n"
        "    from: relay@example.com\n"
        "    to: [team@example.com]\n"
        "  hook:\n"
        "    type: webhook\n"
        "    url: https://example.com/hook\n"
        f"    headers: {{X-Api-Key:{SECRETS['HOOK_HEADER']}}}\n"
        "rules:\n"
        "  - {name: all, match: {status: [failure]}, notify: [mail, hook]}\n"
    )
    assert relay_main(["check", str(config)]) == 1
    said = "".join(capsys.readouterr())
    assert "config.yaml:4: channels.mail.smtp.password:…: unknown key" in said, said
    assert "config.yaml:10: channels.hook.headers.X-Api-Key:…: " in said, said
    assert not leaks(said), said
