"""Child processes of the benchmark: each in its own process group, all killed at the end.

`Children` is a context manager: whatever happens (exception, Ctrl-C, SIGTERM), leaving it sends
SIGTERM to every group it started, waits a little, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

BENCH = Path(__file__).resolve().parent
STOP_GRACE_S = 10.0


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

    def cpu_s(self) -> float | None:
        """User + system CPU seconds of the process and its threads so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Children:
    def __init__(self) -> None:
        self.started: list[Child] = []

    def __enter__(self) -> Children:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in reversed(self.started):
            self.stop(child, grace_s=2.0)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        proc = subprocess.Popen(
            argv,
            env=env,
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
        """SIGTERM the child's group, then SIGKILL after `grace_s`; its exit code."""
        proc = child.proc
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def bare_server(self, name: str, status: int) -> tuple[Child, int]:
        """bench/bare_server.py on a free port; (child, port)."""
        argv = [sys.executable, str(BENCH / "bare_server.py"), "0", "--status", str(status)]
        child = self.spawn(name, argv)
        child.watch(child.proc.stdout, _listening_port)
        child.watch(child.proc.stderr, lambda line: None)
        return child, int(child.wait_for(20.0))

    def relay(self, config: Path, db: Path) -> tuple[Child, str]:
        """`python -m relay serve` on a free port of 127.0.0.1; (child, base URL)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_CONFIG=str(config),
            RELAY_STORE_URL=f"sqlite:///{db}",
            RELAY_LISTEN="127.0.0.1:0",
            RELAY_LOG_FORMAT="json",
        )
        child = self.spawn("relay", [sys.executable, "-m", "relay", "serve"], env)
        child.watch(child.proc.stderr, _relay_listening)
        child.watch(child.proc.stdout, lambda line: None)
        return child, str(child.wait_for(30.0))


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


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far: one server, our live processes, reaped children, the machine."""

    wall_s: float
    server_s: float | None
    ours_s: float  # this process and every live child
    reaped_s: float  # children already waited for (the load generator, once it ended)
    machine_s: float | None  # every process on the machine (Linux /proc/stat)

    def shares(self, before: CpuSample) -> dict[str, float]:
        """Cores kept busy between `before` and this sample: server, load generator, others."""
        wall = max(self.wall_s - before.wall_s, 1e-9)
        out = {"gen_cpu": (self.reaped_s - before.reaped_s) / wall}
        if self.server_s is not None and before.server_s is not None:
            out["server_cpu_s"] = self.server_s - before.server_s
            out["server_cpu"] = out["server_cpu_s"] / wall
        if self.machine_s is not None and before.machine_s is not None:
            ours = self.ours_s - before.ours_s + self.reaped_s - before.reaped_s
            out["other_cpu"] = max(self.machine_s - before.machine_s - ours, 0.0) / wall
        return out


def cpu_sample(children: Children, server: Child) -> CpuSample:
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(c.cpu_s() or 0.0 for c in children.started if c.proc.poll() is None)
    return CpuSample(
        wall_s=time.monotonic(),
        server_s=server.cpu_s(),
        ours_s=me.ru_utime + me.ru_stime + live,
        reaped_s=reaped.ru_utime + reaped.ru_stime,
        machine_s=_machine_busy_s(),
    )


def _machine_busy_s() -> float | None:
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def sink_count(port: int) -> int:
    """POSTs the bare server on `port` has received so far."""
    url = f"http://127.0.0.1:{port}/count"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(json.loads(resp.read())["posts"])
