"""Child processes of the benchmark: each in its own process group, all killed at the end.

`Children` is a context manager: whatever happens (exception, Ctrl-C, SIGTERM), leaving it sends
SIGTERM to every group it started, waits a little, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from _usage import groups_cpu_s

BENCH = Path(__file__).resolve().parent
STOP_GRACE_S = 10.0
WRAPPED_START_S = 300.0  # a process under valgrind starts some 50 times slower


class Child:
    """A started process, the lines of one of its pipes, and its CPU time."""

    def __init__(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.name = name
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=20)
        self.lines = 0
        self._found: queue.Queue[Any] = queue.Queue()

    def watch(self, stream: Any, find: Callable[[str], Any | None]) -> None:
        """Read `stream` on a thread (so the child never blocks on a full pipe); the first
        value `find` returns for a line is handed to `wait_for`."""

        def read() -> None:
            found = False
            for line in stream:
                self.lines += 1
                self.tail.append(line.rstrip())
                if not found:
                    value = find(line)
                    if value is not None:
                        found = True
                        self._found.put(value)

        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                return self._found.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
        tail = "\n  ".join(list(self.tail)[-5:])
        raise RuntimeError(f"{self.name} did not start (rc={self.proc.poll()}):\n  {tail}")

    def ended(self) -> str:
        """'' while the process runs; else its exit code and the last lines it wrote."""
        if self.proc.poll() is None:
            return ""
        tail = "\n  ".join(list(self.tail)[-8:])
        return f"{self.name} exited (rc={self.proc.returncode}):\n  {tail}"

    def cpu_s(self) -> float | None:
        """User + system CPU seconds so far of the process and everything in its process group
        (relay's worker processes too), Linux /proc."""
        if self.proc.poll() is not None:
            return None
        return groups_cpu_s({self.proc.pid})


class Children:
    def __init__(self, exit_grace_s: float = 2.0) -> None:
        self.started: list[Child] = []
        self.exit_grace_s = exit_grace_s  # per child, when leaving the context

    def __enter__(self) -> Children:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in reversed(self.started):
            self.stop(child, grace_s=self.exit_grace_s)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # own process group: killpg reaches it and only it
        )
        child = Child(name, proc)
        self.started.append(child)
        return child

    def stop(self, child: Child, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the child's group, then SIGKILL after `grace_s`; its exit code. The group is
        signalled only while its leader is not reaped: until then no other process can have
        the leader's pid, which is the group id (a reaped one may already belong to another)."""
        proc = child.proc
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            _signal_group(proc.pid, signal.SIGCONT)  # a paused child (see `pause`) can stop
            if not _exited(proc.pid, grace_s):
                _signal_group(proc.pid, signal.SIGKILL)
                _exited(proc.pid, 5.0)
            _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def bare_server(
        self, name: str, status: int, record: bool = False, wrap: Sequence[str] = ()
    ) -> tuple[Child, int]:
        """bench/bare_server.py on a free port; (child, port). `record`: see its --record;
        `wrap`: see `server`."""
        argv = [sys.executable, str(BENCH / "bare_server.py"), "0", "--status", str(status)]
        return self.server(name, argv + (["--record"] if record else []), wrap=wrap)

    def server(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> tuple[Child, int]:
        """A server that prints {"listening": PORT} on stdout once ready; (child, port).
        `wrap`: a command it runs under (valgrind ...), given more time to start."""
        child = self.spawn(name, [*wrap, *argv], env)
        child.watch(child.proc.stdout, _listening_port)
        child.watch(child.proc.stderr, lambda line: None)
        return child, int(child.wait_for(WRAPPED_START_S if wrap else 20.0))

    def relay(
        self,
        config: Path,
        db: Path | str,
        settings: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> tuple[Child, str]:
        """`python -m relay serve` on a free port of 127.0.0.1; (child, base URL). `db`: a SQLite
        file, or a store URL; `settings`: more RELAY_* variables (the machine's own are never
        passed on); `wrap`: see `server`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(settings or {})
        env.update(
            RELAY_CONFIG=str(config),
            RELAY_STORE_URL=db if isinstance(db, str) else f"sqlite:///{db}",
            RELAY_LISTEN="127.0.0.1:0",
            RELAY_LOG_FORMAT="json",
        )
        # Started beside its config, not here: `-m` puts the working directory first on the
        # path, so from a checkout's root PYTHONPATH=<another checkout> (an A/B) ran this one.
        argv = [*wrap, sys.executable, "-m", "relay", "serve"]
        child = self.spawn("relay", argv, env, config.parent)
        child.watch(child.proc.stderr, _relay_listening)
        child.watch(child.proc.stdout, lambda line: None)
        return child, str(child.wait_for(WRAPPED_START_S if wrap else 30.0))

    def run_json(self, name: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
        """Run a child to its end (at most `timeout_s`); the JSON object it printed last."""
        return self.collect_json(self.spawn(name, argv), timeout_s)

    def collect_json(self, child: Child, timeout_s: float) -> dict[str, Any]:
        """Wait for a spawned child (at most `timeout_s`); the JSON object it printed last."""
        name = child.name
        try:
            out, err = child.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(child, grace_s=self.exit_grace_s)
            raise RuntimeError(f"{name} did not finish in {timeout_s:.0f}s") from None
        if child.proc.returncode != 0:
            raise RuntimeError(f"{name} failed (rc={child.proc.returncode}): {err.strip()[-800:]}")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def load(self, url: str, options: list[str], timeout_s: float) -> dict[str, Any]:
        """bench/_load.py against `url` with these options, to its end; its JSON result."""
        return self.run_json("load generator", load_argv(url, options), timeout_s)


def run_script(main: Callable[[], int]) -> NoReturn:
    """A bench script's entry point: exit with main()'s code, or 130 after Ctrl-C/SIGTERM
    (by then `Children` has stopped every child)."""
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)


def load_argv(url: str, options: list[str]) -> list[str]:
    """The command line of the load generator (bench/_load.py)."""
    return [sys.executable, str(BENCH / "_load.py"), url, *options]


def py_spy(
    children: Children, server: Child, out: str, seconds: float, rate: int = 100
) -> Child | None:
    """`py-spy record` (raw collapsed stacks, every thread, `rate` samples a second) of `server`
    and its worker processes for `seconds` into `out`, when py-spy is on PATH or in the venv
    (bench/profile_summary.py reads it)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("# py-spy not found; not profiling", file=sys.stderr)
        return None
    duration = str(max(1, round(seconds)))
    argv = [exe, "record", "--pid", str(server.proc.pid), "--subprocesses"]
    argv += ["--duration", duration, "--rate", str(rate), "--format", "raw", "--threads"]
    argv += ["--nonblocking", "-o", out]
    spy = children.spawn("py-spy", argv)
    spy.watch(spy.proc.stdout, lambda line: None)
    spy.watch(spy.proc.stderr, lambda line: None)
    return spy


@contextlib.contextmanager
def workspace(
    prefix: str = "relay-bench-", exit_grace_s: float = 2.0
) -> Iterator[tuple[Children, Path]]:
    """Children and a temp dir for them; the children are stopped before the dir goes away."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, Children(exit_grace_s) as children:
        yield children, Path(tmp)


def pause(child: Child, paused: bool) -> None:
    """SIGSTOP (or SIGCONT) the child's process group: a server that stops answering."""
    _signal_group(child.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)


def _listening_port(line: str) -> int | None:
    try:
        return int(json.loads(line)["listening"])
    except (ValueError, KeyError, TypeError):
        return None


def _relay_listening(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if isinstance(entry, dict) and entry.get("msg") == "listening":
        return f"http://{entry['host']}:{entry['port']}"
    return None


def _exited(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for our child `pid` to exit, without reaping it (WNOWAIT)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
