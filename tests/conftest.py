"""Shared test harness: real loopback servers, real SQLite, a real relay (in-process or child)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from relay.configure import Compiled, compile_config
from relay.dashboard_links import dashboard_link
from relay.dispatch import Deps
from relay.formats.trigger_alerts import parse_alert
from relay.service import Service
from relay.settings import Settings
from relay.store import Store
from relay.store.sqlite import SQLiteStore
from tests.fakes.serving import serving, until
from tests.pg import fresh_database, shared_server

# Fakes of the outside services, with their fixtures (smtp_server, slack, discord, teams,
# pagerduty), for every test module.
pytest_plugins = [
    "tests.fakes.smtp",
    "tests.fakes.slack",
    "tests.fakes.presets",
    "tests.fakes.telegram",
    "tests.fakes.googlechat",
    "tests.fakes.pushover",
    "tests.fakes.opsgenie",
]

# Tests never fail on timing: hypothesis's default 200 ms deadline per example and its
# too_slow health check both fail a correct test on a loaded machine (CI runs suites side by side).
settings.register_profile("relay", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("relay")

# The suite's files (tmp_path, the PostgreSQL clusters of tests/pg.py, the children's compiled
# modules) in memory where the machine has /dev/shm: the stores under test commit with fsync,
# which on a shared VM's disk held every test waiting (a fresh PostgreSQL database took 0.35 s,
# 0.02 s in memory). No test survives a power cut, so none needs the disk: a kill -9 leaves in
# the page cache what a commit wrote, in memory as on disk. PYTEST_DEBUG_TEMPROOT or --basetemp
# still choose. DISK stays the machine's: `disk_path` is a folder there.
DISK = Path(tempfile.gettempdir())
MEMORY = Path("/dev/shm")


def _roomy(folder: Path, least: int = 1 << 30) -> bool:
    """A folder this user can write, with `least` bytes free (a container's /dev/shm is 64 MB:
    four PostgreSQL clusters alone take more)."""
    try:
        free = os.statvfs(folder)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and free.f_bavail * free.f_frsize >= least


if _roomy(MEMORY):
    tempfile.tempdir = str(MEMORY)

REPO = Path(__file__).resolve().parents[1]
# RELAY_SLOW=1: the large sizes (more seeds, the large chaos soak, more timings); never in CI
SLOW = os.environ.get("RELAY_SLOW") == "1"
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "trigger"
OUR_ALERTS = REPO / "tests" / "fixtures" / "trigger_alerts"  # alert bodies beside the shipped
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")
# Where the relay children keep relay's compiled modules: with PYTHONDONTWRITEBYTECODE (set on
# some machines) each `python -m relay` compiled its ~50 modules again, a fifth of its CPU.
# Outside the tree, shared by the xdist workers (a .pyc is written by an atomic rename).
PYCACHE = Path(tempfile.gettempdir()) / f"relay-tests-pycache-{os.getuid()}"
# The trust store of a relay child that is given none: tests talk to loopback only, so the
# system's ~150 CA certificates are never needed, yet parsing them (aiohttp builds two contexts
# at import) costs each child 40-90 ms of its ~0.6 s of CPU. A test of TLS gives its own CA.
NO_SYSTEM_CAS = os.devnull


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a relay child: this one without RELAY_*, relay's compiled modules
    kept in PYCACHE, no system CAs (NO_SYSTEM_CAS) unless this one names some, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.setdefault("SSL_CERT_FILE", NO_SYSTEM_CAS)
    return {**env, **(extra or {})}


def alert_event(name: str) -> dict[str, Any]:
    """An alert-webhook fixture (shipped, else ours) as relay holds it, through parse_alert."""
    shipped = FIXTURES / "alert-webhooks" / f"{name}.body.json"
    path = shipped if shipped.exists() else OUR_ALERTS / f"{name}.body.json"
    run = parse_alert(json.loads(path.read_text())).run
    assert run is not None
    return run.as_dict()


@pytest.fixture
def disk_path() -> Iterator[Path]:
    """A new folder on the machine's disk, removed after the test: for what a disk's file
    system does and tmpfs (where tmp_path may be) does not, e.g. refuse a write to an open file
    made immutable (chattr +i)."""
    path = Path(tempfile.mkdtemp(prefix="relay-disk-", dir=DISK))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAY_* from the machine leaks into a test, nor a proxy (relay's HTTP follows
    HTTP_PROXY: the loopback receivers would be asked for through it)."""
    for name in list(os.environ):
        if name.startswith("RELAY_") or name.lower() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def sdk_run(name: str) -> dict[str, Any]:
    """An SDK run fixture by short name: failed, crashed, timed_out, completed, executing."""
    return json.loads((FIXTURES / "realtime-run" / "sdk" / f"run_{name}.json").read_text())


SDK_FIXTURES = ("failed", "crashed", "timed_out", "completed", "executing")  # sdk_run's names
EVENT_TEMPLATES = ("deployment_failed", "deployment_success", "error")
# (template, alert fixture) of the golden renders, for each channel type under
# tests/golden/<type>/<template>/: the event templates' and those of the run and digest ones
EVENT_CASES = [
    ("deployment_failed", "alert.deployment.failed"),
    ("deployment_failed", "alert.deployment.failed.preview"),
    ("deployment_failed", "legacy-v1.deployment.failed"),
    ("deployment_success", "alert.deployment.success"),
    ("deployment_success", "legacy-v1.deployment.success"),
    ("error", "alert.error"),
    ("error", "alert.error.regression"),
]
GOLDEN_CASES = [
    *EVENT_CASES,
    ("run", "alert.run.failed"),
    ("run", "alert.run.failed.crashed"),
    ("digest", "five_fixtures"),
]


def delivery_deps(compiled: Compiled, store: Store, **options: Any) -> Deps:
    """Delivery's Deps of `compiled` on `store` (its retry policy, its dashboard links), with
    `options` of Deps (clock, sleep, group_interval_of, ...)."""
    defaults = compiled.loaded.config.defaults
    return Deps(store, compiled.renderer, defaults.retry, dashboard_link(defaults), **options)


# ---------------------------------------------------------------- the sink: a real HTTP receiver

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Sink:
    """A webhook receiver on 127.0.0.1. `responses` scripts the answers (then `default`)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    responses: list[Behaviour] = field(default_factory=list)
    default: Behaviour | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(time.time(), request.path, dict(request.headers), body))
        self.arrived.set()
        index = len(self.received) - 1
        behaviour = self.responses.pop(0) if self.responses else self.default
        if behaviour is None:
            return web.Response(status=200, text="ok")
        return await behaviour(request, index)

    async def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        await until(
            lambda: len(self.received) >= count,
            self.arrived,
            timeout,
            lambda: f"sink got {len(self.received)} of {count} requests",
        )
        return self.received


def status(code: int, headers: dict[str, str] | None = None, text: str = "") -> Behaviour:
    async def respond(request: web.Request, index: int) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=text)

    return respond


def hang(seconds: float) -> Behaviour:
    async def respond(request: web.Request, index: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return respond


def held(gate: asyncio.Event, code: int = 200) -> Behaviour:
    """Answer `code` once `gate` is set: a request kept in flight until the test lets it go."""

    async def respond(request: web.Request, index: int) -> web.StreamResponse:
        await gate.wait()
        return web.Response(status=code)

    return respond


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    app = web.Application(client_max_size=16 * 1024 * 1024)  # a digest's body passes 1 MiB
    app.router.add_route("*", "/{tail:.*}", s.handle)
    async with serving(app, access_log=None, shutdown_timeout=0.2) as s.url:
        yield s


# ---------------------------------------------------------------- relay in-process


@dataclass
class Relay:
    service: Service
    url: str
    http: aiohttp.ClientSession

    async def post(self, body: Any, token: str | None = None) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.post(self.url + "/v1/runs", data=data, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


RelayFactory = Callable[..., Awaitable[Relay]]


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    """Start relay in this event loop from a YAML text; every one is shut down after the test."""
    started: list[Relay] = []

    async def start(config_text: str, db: Path | None = None) -> Relay:
        path = tmp_path / f"config{len(started)}.yaml"
        path.write_text(config_text)
        store = db or tmp_path / "relay.db"
        settings = Settings(config=path, listen="127.0.0.1:0", store_url=f"sqlite:///{store}")
        from relay.configure import load  # noqa: PLC0415

        service = Service(settings, compile_config(load(settings)))
        host, port = await service.start()
        r = Relay(service, f"http://{host}:{port}", aiohttp.ClientSession())
        started.append(r)
        return r

    yield start
    for r in started:
        await r.http.close()
        await r.service.shutdown()


# ---------------------------------------------------------------- relay as a child process


class RelayProcess:
    """`python -m relay serve` as a child; its JSON log lines and stdout are collected."""

    def __init__(self, config: Path, db: Path, env: dict[str, str] | None = None) -> None:
        self.env = child_env(
            {
                "RELAY_CONFIG": str(config),
                "RELAY_STORE_URL": f"sqlite:///{db}",
                "RELAY_LISTEN": "127.0.0.1:0",
                "RELAY_LOG_FORMAT": "json",
                **(env or {}),
            }
        )
        self.cwd: Path | None = None
        self.argv = [sys.executable, "-m", "relay", "serve"]
        self.proc: subprocess.Popen[str] | None = None
        self.readers: list[threading.Thread] = []
        self.logs: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self.url = ""

    def start(self, timeout: float = 60.0) -> RelayProcess:
        listening = self.spawn()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.05):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                self.output_read()
                raise AssertionError(f"relay did not start: {self.logs[-5:]}")
        return self

    def spawn(self) -> threading.Event:
        """The child started, its output read; the event is set once it is listening."""
        self.logs, self.stdout = [], []
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
        )
        listening = threading.Event()
        self.readers = [
            threading.Thread(target=self._read_logs, args=(listening,), daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        return listening

    def output_read(self, timeout_s: float = 30.0) -> None:
        """Once the child has exited: until the reader threads took its last lines (they end
        with its pipes; a fixed pause for them was too short on a loaded machine)."""
        for reader in self.readers:
            reader.join(timeout_s)

    def _read_logs(self, listening: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line.rstrip()}
            self.logs.append(entry)
            if entry.get("msg") == "listening":
                self.url = f"http://{entry['host']}:{entry['port']}"
                listening.set()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)

    def wait_for_log(self, msg: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The first log line with this message, once it is written."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := [e for e in self.logs if e.get("msg") == msg]:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {msg!r} in {[e.get('msg') for e in self.logs]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture(params=["sqlite", "postgres"])
async def engine_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The environment that points `relay serve` (or `relay` commands) at a fresh store of each
    engine: SQLite (relay_process's own file), PostgreSQL through tests/pg.py."""
    if request.param == "sqlite":
        yield {}
        return
    async with fresh_database(shared_server()) as url:
        yield {"RELAY_STORE_URL": url}


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    made: list[RelayProcess] = []

    def make(config_text: str, env: dict[str, str] | None = None) -> RelayProcess:
        config = tmp_path / "config.yaml"
        config.write_text(config_text)
        p = RelayProcess(config, tmp_path / "relay.db", env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` as a child process, with a clean RELAY_* environment plus `env`, `stdin` as
    its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=child_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


_IN_PROCESS = threading.Lock()  # the streams, environment and directory are the process's


def run_cli_in_process(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`relay ARGS` as run_cli runs it, but called here (relay.cli.main): for a test of what a
    command finds and says, not of the process (exit codes on a signal, the interpreter's
    start, standard input), at a few milliseconds instead of a child's half second of CPU. The
    exit code is main's answer (argparse's SystemExit: its code); stdout and stderr apart; the
    environment, directory, logging and secret scrubbing are put back after."""
    from relay.cli import main  # noqa: PLC0415
    from relay.logs import SCRUB  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with (
        _IN_PROCESS,
        _relay_environment(env),
        contextlib.chdir(cwd or Path.cwd()),
        _kept_logging(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        scrubbing = SCRUB.secrets, SCRUB._lasting
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            SCRUB.secrets, SCRUB._lasting = scrubbing
    return subprocess.CompletedProcess(["relay", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _relay_environment(extra: dict[str, str] | None) -> Iterator[None]:
    """os.environ as a relay child gets it (no RELAY_* but `extra`), put back after."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        del os.environ[name]
    os.environ.update(extra or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """The root logger's handlers and level put back after relay's setup_logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` as a child process with exactly `env`, its output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# the smallest useful config: failures to the console (shared by tests that need any relay)
CONSOLE_FAILURES = """\
channels:
  out: {type: console}
rules:
  - name: failures
    match: {status: [failure]}
    notify: [out]
"""


UPDATE_GOLDEN = os.environ.get("RELAY_UPDATE_GOLDEN") == "1"  # read before _clean_env clears it


def assert_golden(path: Path, text: str) -> None:
    """`text` equals the golden file at `path`; RELAY_UPDATE_GOLDEN=1 rewrites it first (then
    review the diff)."""
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no {path}; run the test again with RELAY_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), path


def free_text(s: str) -> str:
    return re.sub(r"\s+", " ", s)


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the HTTP app registers (HEAD, added per GET, and the
    trailing-slash twins of the intake routes left out)."""
    from relay.sources.http import HttpDeps, build_app  # noqa: PLC0415

    deps = HttpDeps(
        intake=None,  # type: ignore[arg-type]  # only the routes are looked at
        store=None,  # type: ignore[arg-type]
        auth_token=lambda: None,
        admin_token=lambda: None,
        max_body_bytes=lambda: 1024,
        max_body_bytes_in_flight=lambda: 8 * 1024 * 1024,
        ready=None,  # type: ignore[arg-type]
        clock=time.time,
    )
    routes = {
        (r.method, r.resource.canonical)
        for r in build_app(deps).router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    return {
        (m, path) for m, path in routes if not (path[1:].endswith("/") and (m, path[:-1]) in routes)
    }


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A real SQLite store on a file in the test's temp dir: opened, closed after the test."""
    store = SQLiteStore(tmp_path / "relay.db")
    await store.open()
    yield store
    await store.close()
