"""relay's lifecycle as a container runtime sees it: stop and reload signals at awkward moments
(while it starts, while it drains), and start-up failures said in words."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.configure import compile_config, load
from relay.service import Service
from relay.settings import Settings
from relay.store.opening import store_name
from tests.conftest import CONSOLE_FAILURES, RelayProcess, run_python, sdk_run
from tests.fakes.serving import free_port
from tests.pg import shared_server, start_server
from tests.test_docs import healthcheck_command, stages
from tests.test_workers import namespace_init, pid_namespaces_or_skip

CONSOLE = CONSOLE_FAILURES


def _start_blocked_on_config(tmp_path: Path) -> tuple[RelayProcess, Path]:
    """`relay serve` reading its config from a FIFO: it waits there, well inside its start-up,
    until the test writes the config (when the test's open returns, relay is reading)."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = RelayProcess(fifo, tmp_path / "relay.db")
    proc.spawn()
    return proc, fifo


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_starting_is_a_clean_exit(tmp_path: Path, sig: int) -> None:
    """SIGTERM in the first half second of `relay serve` (importing, loading the config) killed
    it with 143, SIGINT with a traceback: a pod deleted right after it started. It exits 0."""
    proc, fifo = _start_blocked_on_config(tmp_path)
    with fifo.open("w") as config:  # returns once relay opened the FIFO: it is starting
        assert proc.proc is not None
        proc.proc.send_signal(sig)
        config.write(CONSOLE)
    assert proc.proc.wait(20) == 0
    assert not any("Traceback" in str(line) for line in proc.logs)
    assert any(line.get("msg") == "stopped" for line in proc.logs)


def test_the_stop_handlers_come_before_any_other_import() -> None:
    """As PID 1 (the image has no init) the kernel drops a SIGTERM that comes before its handler:
    `docker stop` in the first ~20 ms after exec waited for the SIGKILL. relay.signals imported
    logging and typing first, 12 ms of it; it now loads only what `signal` needs."""
    heavy = ("logging", "typing", "asyncio", "relay.cli")
    probe = f"import sys, relay.signals; print([m for m in {heavy!r} if m in sys.modules])"
    assert run_python(probe, dict(os.environ)).stdout.strip() == "[]"


def _caught(pid: int, sig: int) -> bool:
    """The process has a handler for `sig` (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (sig - 1)))


@pytest.mark.parametrize("delay_s", [0.0, 0.005, 0.05])
def test_as_pid_1_a_sigterm_as_soon_as_it_can_be_caught_is_a_clean_exit(
    tmp_path: Path, delay_s: float
) -> None:
    """`docker stop` right after start: relay as PID 1 of its namespace, a SIGTERM the moment
    its handler is in place (the earliest a PID 1 can hear one) or a few ms later ends it at
    once with 0, as a stop while starting does, not at the SIGKILL."""
    pid_namespaces_or_skip()
    config = tmp_path / "config.yaml"
    config.write_text(CONSOLE)
    proc = RelayProcess(config, tmp_path / "relay.db")
    proc.argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *proc.argv]
    proc.spawn()
    assert proc.proc is not None
    try:
        init = _namespace_init_when_caught(proc)
        time.sleep(delay_s)
        os.kill(init, signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    finally:
        proc.kill()
    proc.output_read()
    assert not any("Traceback" in str(line) for line in proc.logs)
    assert {"stopped", "stop requested while starting: not started"} & {
        line.get("msg") for line in proc.logs
    }


def _namespace_init_when_caught(proc: RelayProcess) -> int:
    """The namespace's PID 1 once it has its SIGTERM handler (a bounded wait)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, IndexError):
            init = namespace_init(proc)
            if _caught(init, signal.SIGTERM):
                return init
        time.sleep(0.0005)
    raise AssertionError("relay never installed its SIGTERM handler")


def test_ctrl_c_twice_while_starting_exits_at_once(tmp_path: Path) -> None:
    """Held signals were a set: two Ctrl-C presses in the first half second made one graceful
    stop, and a third was needed to exit at once, as a second does later."""
    proc, fifo = _start_blocked_on_config(tmp_path)
    assert proc.proc is not None
    with fifo.open("w") as config:  # returns once relay opened the FIFO: it is starting
        for _ in range(2):  # each interrupts relay's read of the FIFO: a handler call each
            proc.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)  # not one pending signal for both, even on a loaded machine
        config.write(CONSOLE)
    assert proc.proc.wait(60) == 128 + signal.SIGINT
    proc.wait_for_log(
        "second stop signal: exiting now; unfinished deliveries go out after the next start"
    )


def test_a_stop_while_postgresql_does_not_answer_is_a_clean_exit(tmp_path: Path) -> None:
    """A SIGTERM while the store opened waited for PostgreSQL's connect timeout, then relay
    exited 1 with "store open failed": a replica deleted while its database was slow."""
    silent = socket.socket()  # takes the connection, never says a word: a PostgreSQL that hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    with silent:
        config = tmp_path / "config.yaml"
        config.write_text(CONSOLE)
        port = silent.getsockname()[1]
        url = f"postgresql://relay@127.0.0.1:{port}/relay"
        proc = RelayProcess(config, tmp_path / "unused.db", {"RELAY_STORE_URL": url})
        proc.spawn()
        silent.settimeout(20)
        conn, _ = silent.accept()  # relay is opening its store
        with conn:
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.proc.wait(20) == 0, proc.logs
    proc.output_read()
    msgs = [line.get("msg") for line in proc.logs]
    assert "stop requested while starting: not started" in msgs
    assert "relay not started" not in msgs


def test_a_sighup_while_starting_does_not_kill_relay(tmp_path: Path) -> None:
    """SIGHUP's default action ended relay (129) while it started: it reloads once it runs."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = RelayProcess(fifo, tmp_path / "relay.db")
    listening = proc.spawn()
    with fifo.open("w") as config:
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        config.write(CONSOLE)
    plain = tmp_path / "plain.yaml"  # the reload reads the file again: no FIFO then
    plain.write_text(CONSOLE)
    os.replace(plain, fifo)
    assert listening.wait(20), proc.logs
    assert proc.wait_for_log("config reloaded")["trigger"] == "SIGHUP"
    assert proc.terminate() == 0


def test_a_stop_signal_stops_other_commands_as_before(tmp_path: Path) -> None:
    """Only `serve` holds the signals; `relay check` blocked on its config dies of SIGTERM."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    child = subprocess.Popen(
        [sys.executable, "-m", "relay", "check", "--config", str(fifo)],
        env=env,
        stderr=subprocess.PIPE,
    )
    # the config follows the signal: a child that held the signal would read it and pass; one
    # dead of it already leaves no reader (a broken pipe here, on a loaded machine)
    with contextlib.suppress(BrokenPipeError), fifo.open("w") as config:
        child.send_signal(signal.SIGTERM)
        config.write(CONSOLE)
    assert child.wait(20) == -signal.SIGTERM


async def test_a_reload_while_starting_leaves_no_delivery_running(tmp_path: Path) -> None:
    """A SIGHUP while the store opened started a delivery, which start() then replaced by its
    own without stopping it: its loops outlived shutdown. The reload now waits for start."""
    config = tmp_path / "config.yaml"
    config.write_text(CONSOLE)
    settings = Settings(
        config=config, listen="127.0.0.1:0", store_url=f"sqlite:///{tmp_path}/relay.db"
    )
    service = Service(settings, compile_config(load(settings)))
    reload = asyncio.create_task(service.reload("SIGHUP"))
    await service.start()
    assert await reload is True
    service.request_stop()
    await service.shutdown()
    loops = [t for t in asyncio.all_tasks() if t.get_name().startswith("delivery:")]
    assert not [t for t in loops if not t.done()]


POOL_RECONNECT_FAILS = """\
import asyncio, logging, socket
import asyncpg
from relay.logs import setup_logging

setup_logging("json", "INFO")
closed = socket.socket()
closed.bind(("127.0.0.1", 0))
port = closed.getsockname()[1]
closed.close()


async def main():
    try:
        await asyncpg.connect(host="127.0.0.1", port=port, user="relay", timeout=5)
    except OSError:  # as asyncpg's pool logs it, every 1 s doubling to 60 s, during an outage
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )


asyncio.run(main())
"""


def test_a_postgresql_outage_is_one_line_a_try_not_a_traceback() -> None:
    """During a PostgreSQL outage asyncpg's pool logged a 15-line traceback at each reconnect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    done = run_python(POOL_RECONNECT_FAILS, env)
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()
    entry = json.loads(line)
    assert entry["msg"] == "PostgreSQL unreachable: the connection pool tries again"
    assert entry["error"] == "connection refused"
    assert entry["logger"] == "asyncpg.pool" and "exc_info" not in entry


@contextlib.asynccontextmanager
async def _serving(config: Path) -> AsyncIterator[Service]:
    """A started Service on `config` (CONSOLE), stopped afterwards."""
    config.write_text(CONSOLE)
    store_url = f"sqlite:///{config.parent}/relay.db"
    settings = Settings(config=config, listen="127.0.0.1:0", store_url=store_url)
    service = Service(settings, compile_config(load(settings)))
    await service.start()
    try:
        yield service
    finally:
        service.request_stop()
        await service.shutdown()


def _reloading(service: Service) -> list[asyncio.Task[Any]]:
    return [task for task in service._tasks if task.get_name() == "reload"]


async def test_sighups_leave_nothing_behind(tmp_path: Path) -> None:
    """Each SIGHUP's reload task was kept for good: a SIGHUP every minute grew the process."""
    async with _serving(tmp_path / "config.yaml") as service:
        before = len(service._tasks)
        for _ in range(20):
            service._reload_soon()  # as SIGHUP does
            assert await asyncio.gather(*_reloading(service)) == [True]
        await asyncio.sleep(0)
        assert len(service._tasks) == before


async def test_a_burst_of_sighups_is_one_reload_reading_the_file_after_the_last(
    tmp_path: Path,
) -> None:
    """50 SIGHUPs in a second queued 50 reloads, one after the other: ~20 s of compiling and
    swapping deliveries under load, a file change waiting behind them. Those that come while
    a reload waits to start are that reload, which reads the file as it is after them; one
    that comes after the file was read has its own."""
    config = tmp_path / "config.yaml"
    async with _serving(config) as service:
        registry, labels = service.metrics.registry, {"result": "success"}

        def reloads() -> float | None:
            return registry.get_sample_value("relay_config_reloads_total", labels)

        async with service.reloads.lock:  # a reload in progress
            for _ in range(50):
                service._reload_soon()  # as SIGHUP does
            config.write_text(CONSOLE.replace("name: failures", "name: renamed"))
        assert await asyncio.gather(*_reloading(service)) == [True]
        assert reloads() == 1
        assert [rule.name for rule in service.compiled.rules.rules] == ["renamed"]
        service._reload_soon()
        assert await asyncio.gather(*_reloading(service)) == [True]
        assert reloads() == 2


# ------------------------------------------------ alive while the store is not answering yet

WAITING = "store not reachable; waiting for it"
WAITING_HEALTH = {"status": "ok", "reason": "waiting for the store"}
UNREADY = {"status": "not ready", "reason": "store unreachable"}
UNAVAILABLE = {"error": "store unavailable; retry later"}


def _relay_before_its_store(tmp_path: Path, port: int, query: str = "") -> tuple[RelayProcess, str]:
    """`relay serve` on a PostgreSQL at `port`, where nothing listens yet (or nothing it may
    use: `query` asks for a kind of server), and relay's URL."""
    config = tmp_path / "config.yaml"
    config.write_text(CONSOLE)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres{query}"
    listen = f"127.0.0.1:{free_port()}"
    env = {"RELAY_STORE_URL": url, "RELAY_LISTEN": listen}
    proc = RelayProcess(config, tmp_path / "unused.db", env)
    proc.spawn()
    return proc, f"http://{listen}"


async def _waiting(proc: RelayProcess) -> dict[str, Any]:
    """relay's first `waiting for it` line (it listens by then)."""
    line = await asyncio.to_thread(proc.wait_for_log, WAITING, 20)
    assert line["error"] == "store open failed: connection refused"
    return line


def _next_wait(proc: RelayProcess, least_s: float) -> dict[str, Any]:
    """The next `waiting for it` line whose wait is at least `least_s`, once written."""
    seen = len([e for e in proc.logs if e.get("msg") == WAITING])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waits = [e for e in proc.logs if e.get("msg") == WAITING][seen:]
        if fresh := [e for e in waits if e["retry_in_s"] >= least_s]:
            return fresh[0]
        seen += len(waits)
        time.sleep(0.02)
    raise AssertionError("no new wait for the store")


def _at(line: dict[str, Any]) -> float:
    """When relay wrote a log line, in seconds."""
    return datetime.fromisoformat(line["ts"]).timestamp()


def test_the_waiting_line_names_the_store_without_its_secrets() -> None:
    """The `store` of a `waiting for it` line: PostgreSQL's hosts and database, never the
    user, the password or the query (`?password=`); SQLite's file."""
    url = "postgresql://relay:p%40ss@db1:5432,db2:5433/relay?password=q&sslmode=require"
    assert store_name(url) == "db1:5432,db2:5433/relay"
    assert store_name("sqlite:////data/relay.db") == "/data/relay.db"


async def _answer(http: aiohttp.ClientSession, method: str, url: str) -> tuple[int, Any, str]:
    async with http.request(method, url, json=[] if method == "POST" else None) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def _check_waiting(http: aiohttp.ClientSession, url: str) -> None:
    """Alive, not ready, metrics saying the store is down, and every other endpoint 503 with
    Retry-After, as in an outage."""
    assert await _answer(http, "GET", url + "/healthz") == (200, WAITING_HEALTH, "")
    assert await _answer(http, "GET", url + "/readyz") == (503, UNREADY, "")
    for method, path in [("POST", "/v1/runs"), ("GET", "/v1/silences")]:
        assert await _answer(http, method, url + path) == (503, UNAVAILABLE, "5"), path
    async with http.get(url + "/metrics") as resp:  # a scrape: the target up, its store not
        assert resp.status == 200
        text = await resp.text()
    assert "\nrelay_store_up 0.0\n" in text
    # the config it loaded, not a hash of 0 (RelayConfigInconsistent beside the other replicas)
    assert "\nrelay_config_hash 0.0\n" not in text
    assert "\nrelay_config_last_reload_timestamp_seconds 0.0\n" not in text
    assert 'relay_rules_matched_total{rule="failures"} 0.0' in text  # its rules from the start
    assert await _first_line_to_expect_continue(url) == b"HTTP/1.1 503 Service Unavailable\r\n"


async def _first_line_to_expect_continue(url: str) -> bytes:
    """The first line answering a POST /v1/runs with `Expect: 100-continue`: no `100 Continue`
    asks for a body that would only be refused."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/runs HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_relay_answers_healthz_while_it_waits_for_its_store(tmp_path: Path) -> None:
    """relay listened only once PostgreSQL answered: through a database outage at boot the
    liveness probe on /healthz failed and Kubernetes restarted the pod in a loop. It listens at
    once now: /healthz 200 saying what it waits for, /readyz 503, the rest 503 + Retry-After;
    the image's HEALTHCHECK passes; a SIGTERM meanwhile still exits 0 at once. /metrics was a
    503 too (a scrape said the target was down, not its store): it answers, relay_store_up 0;
    the waiting line names the store."""
    port = free_port()
    proc, url = _relay_before_its_store(tmp_path, port)
    try:
        waiting = await _waiting(proc)
        assert waiting["store"] == f"127.0.0.1:{port}/postgres"  # which store, no user
        async with aiohttp.ClientSession() as http:
            await _check_waiting(http, url)
        assert url == f"http://{waiting['listening']}"  # where it answers, said
        probe = healthcheck_command(stages()[-1])  # the image's HEALTHCHECK: healthy
        probe[0] = sys.executable
        env = {**os.environ, "RELAY_LISTEN": url.removeprefix("http://")}
        assert subprocess.run(probe, env=env, timeout=10, check=False).returncode == 0
        assert proc.proc is not None
        waited = await asyncio.to_thread(_next_wait, proc, 1.0)  # a wait just begun, ≥ 1 s
        assert await asyncio.to_thread(proc.terminate, 20) == 0
    finally:
        proc.kill()
    await asyncio.to_thread(proc.output_read)
    msgs = [line.get("msg") for line in proc.logs]
    assert "stop requested while starting: not started" in msgs
    # at once: within the wait the stop came in (on relay's clock: a loaded machine delays
    # the exit, not the line), not after waiting it out and trying the store again
    stopped = next(
        e for e in proc.logs if e.get("msg") == "stop requested while starting: not started"
    )
    assert [e for e in proc.logs if e.get("msg") == WAITING][-1] == waited
    assert _at(stopped) < _at(waited) + waited["retry_in_s"]
    assert "relay not started" not in msgs and "listening" not in msgs


@contextlib.asynccontextmanager
async def _forwarding(port: int, to: int) -> AsyncIterator[None]:
    """127.0.0.1:`port` forwarded to 127.0.0.1:`to`: the PostgreSQL there, now at `port`."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    async with server:
        yield


async def test_relay_serves_on_the_same_socket_once_its_store_answers(tmp_path: Path) -> None:
    """Once PostgreSQL answers, relay serves on the socket it answered health on: no moment in
    which a connection is refused, an update taken (202) and delivered."""
    pg = shared_server()
    port = free_port()
    proc, url = _relay_before_its_store(tmp_path, port)
    try:
        await _waiting(proc)
        async with aiohttp.ClientSession() as http:
            await _check_waiting(http, url)
            async with _forwarding(port, pg.port):
                while not any(line.get("msg") == "listening" for line in proc.logs):
                    status, _, _ = await _answer(http, "GET", url + "/healthz")  # never refused
                    assert status == 200
                    assert proc.proc is not None and proc.proc.poll() is None, proc.logs[-3:]
                    await asyncio.sleep(0.02)
                assert proc.url == url
                assert await _answer(http, "GET", url + "/healthz") == (200, {"status": "ok"}, "")
                assert await _answer(http, "GET", url + "/readyz") == (200, {"status": "ready"}, "")
                run = {**sdk_run("failed"), "id": f"run_late_{os.getpid()}_{time.time_ns()}"}
                async with http.post(url + "/v1/runs", json=[run]) as resp:
                    assert resp.status == 202, await resp.text()
                for _ in range(200):  # bounded: the console line, within 10 s
                    if any(run["id"] in line for line in proc.stdout):
                        break
                    await asyncio.sleep(0.05)
                assert any(run["id"] in line for line in proc.stdout), proc.stdout
                assert await asyncio.to_thread(proc.terminate, 20) == 0
    finally:
        proc.kill()


async def test_relay_waits_out_a_failover_at_start(tmp_path: Path) -> None:
    """A URL with target_session_attrs=read-write meeting a standby (a failover under way:
    the old primary gone, the replica not promoted yet) ended the start, exit 1 `relay not
    started` (asyncpg's TargetServerAttributeNotMatched was taken for a refusal to fix). relay
    waits it out as it waits for a server not reachable, the line saying why, and serves once
    the standby is promoted."""
    standby = await asyncio.to_thread(start_server, standby=True)
    try:
        proc, url = _relay_before_its_store(
            tmp_path, standby.port, "?target_session_attrs=read-write"
        )
        try:
            line = await asyncio.to_thread(proc.wait_for_log, WAITING, 20)
            assert line["error"] == (
                "store open failed: no server of the URL's hosts is of the kind"
                " target_session_attrs asks for: TargetServerAttributeNotMatched"
            )
            await asyncio.to_thread(standby.promote)
            await asyncio.to_thread(proc.wait_for_log, "listening", 20)
            async with aiohttp.ClientSession() as http:
                assert await _answer(http, "GET", url + "/readyz") == (200, {"status": "ready"}, "")
            assert await asyncio.to_thread(proc.terminate, 20) == 0
        finally:
            proc.kill()
    finally:
        await asyncio.to_thread(standby.destroy)
    assert "relay not started" not in [line.get("msg") for line in proc.logs]


def ipv6_or_skip() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")


@pytest.mark.parametrize("every", ["*", ""])
async def test_the_listening_line_names_every_address_relay_listens_on(
    relay_process: Callable[..., RelayProcess], every: str
) -> None:
    """RELAY_LISTEN=*:PORT listens on every IPv4 and IPv6 address, and the line said only
    `0.0.0.0` (the first socket's): an operator looking for IPv6 read that there was none.
    `:PORT` too, as Go's listeners (Alertmanager's `:9093`) read it: it was IPv4 alone."""
    ipv6_or_skip()
    port = free_port()
    proc = relay_process(CONSOLE_FAILURES, {"RELAY_LISTEN": f"{every}:{port}"})
    await asyncio.to_thread(proc.start)
    [line] = [e for e in proc.logs if e.get("msg") == "listening"]
    assert sorted(line["addresses"]) == [f"0.0.0.0:{port}", f"[::]:{port}"]
    assert (line["host"], line["port"]) == ("0.0.0.0", port)  # the first, as before
    async with aiohttp.ClientSession() as http:
        for url in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 200, url
