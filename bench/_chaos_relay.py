"""The chaos soak's relays (bench/chaos.py): `python -m relay serve` as child processes on one
store, killed with SIGKILL and restarted; their logs read for where they listen, tracebacks and
takeovers of a stopped replica's notifications.

One child on a SQLite file, or `--replicas N` children on one PostgreSQL database: the `Fleet`.
Every start is a new process group; a kill is remembered with its group and time (`Kill`), so
that the soak can tell a duplicate or an early retry a kill made from one nothing explains.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAKEOVER = "taking over notifications of a stopped replica"
HEARTBEAT_LATE = "replica heartbeat not recorded: store unavailable"


@dataclass(frozen=True)
class Kill:
    """SIGKILL of process group `group` at `at` (time.monotonic()); `parent_only`: its parent
    alone, its delivery workers lived on to finish their sends."""

    at: float
    group: int
    parent_only: bool

    def may_have_lost(self, group: int | None, before: float) -> bool:
        """Whether this kill can have kept `group` from recording, by `before`, what it was
        answered (a 200, a 429): `group` was killed by then. Answered before the kill, it may
        not have committed it yet; "answered" after (the sink stamps a request when it reads
        it, the kill may come between relay's write and that), it never read the answer; its
        parent alone killed, its orphaned workers finish sends nobody records."""
        return group == self.group and self.at <= before


class RelayChild:
    """`python -m relay serve` as a child in its own process group; restarted on one store."""

    def __init__(
        self,
        config: Path,
        store_url: str,
        workers: int = 0,
        log_dir: Path | None = None,
        **env: str,
    ) -> None:
        self.log_dir = log_dir  # each start's log kept there as relay-<pid>.log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "RELAY_CONFIG": str(config),
            "RELAY_STORE_URL": store_url,
            "RELAY_LISTEN": "127.0.0.1:0",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_WORKERS": str(workers),
            "PYTHONPATH": str(REPO),
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.groups: list[int] = []  # every start's process group: orphaned workers live on
        self.url = ""
        self.starts = 0
        self.log_lines = 0
        self.exceptions: list[str] = []
        self.logged: Counter[str] = Counter()  # takeovers (rows), late heartbeats

    def start(self, timeout_s: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.starts += 1
        self.groups.append(self.proc.pid)
        listening = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, listening), daemon=True).start()
        if not listening.wait(timeout_s):
            self.kill()
            raise RuntimeError("relay did not start listening in time")

    def _read(self, proc: subprocess.Popen[str], listening: threading.Event) -> None:
        assert proc.stderr is not None
        with contextlib.ExitStack() as stack:
            keep = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                keep = stack.enter_context((self.log_dir / f"relay-{proc.pid}.log").open("w"))
            for line in proc.stderr:
                if keep is not None:
                    keep.write(line)
                self._note(line, listening)

    def _note(self, line: str, listening: threading.Event) -> None:
        """What the soak reads in a log line: where relay listens, takeovers, tracebacks."""
        self.log_lines += 1
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {"raw": line.rstrip()}
        msg = entry.get("msg")
        if msg == "listening":
            self.url = f"http://{entry['host']}:{entry['port']}"
            listening.set()
        elif msg == TAKEOVER:
            self.logged["taken_over"] += int(entry.get("count", 0))
        elif msg == HEARTBEAT_LATE:
            self.logged["heartbeat_late"] += 1
        if "exc" in entry or "Traceback" in str(entry.get("raw", "")):
            self.exceptions.append(str(msg or entry.get("raw"))[:200])

    def kill(self, parent_only: bool = False) -> Kill | None:
        """SIGKILL, no warning: the whole process group (the child started it), or the parent
        alone (its delivery workers finish their sends, then exit, as after `kill -9 PID`)."""
        done = None
        if self.proc is not None and self.proc.poll() is None:
            done = Kill(time.monotonic(), self.proc.pid, parent_only)
            with contextlib.suppress(ProcessLookupError):
                if parent_only:
                    self.proc.kill()
                else:
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.url = ""
        return done

    def kill_all(self) -> None:
        """SIGKILL every process group started, the orphaned workers of `kill(parent_only)` too."""
        self.kill()
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    def terminate(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


class Fleet:
    """The replicas on one store (one on SQLite); `url()` is a load balancer's pick."""

    def __init__(self, children: list[RelayChild], rng: random.Random) -> None:
        self.children = children
        self.rng = rng
        self.kills: list[Kill] = []

    def url(self, prefer: int | None = None) -> str:
        """Replica `prefer`'s URL while it listens, else a random listening one ('' if none)."""
        if prefer is not None and self.children[prefer].url:
            return self.children[prefer].url
        live = [c.url for c in self.children if c.url]
        return self.rng.choice(live) if live else ""

    def victims(self, mode: str) -> list[RelayChild]:
        """Whom a round kills: `one` replica, `some` (2 to N-1, one when N is 2), `all`; the
        SQLite modes (`group`, `parent`) kill the one relay."""
        n = len(self.children)
        count = {"one": 1, "all": n, "some": self.rng.randint(min(2, n - 1), max(1, n - 1))}
        return self.rng.sample(self.children, count.get(mode, 1))

    def kill(self, child: RelayChild, parent_only: bool = False) -> None:
        done = child.kill(parent_only)
        if done is not None:
            self.kills.append(done)

    def start(self) -> None:
        for child in self.children:
            child.start()

    def stop(self) -> None:
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.kill_all()

    def groups(self) -> set[int]:
        return {g for c in self.children for g in c.groups}

    @property
    def exceptions(self) -> list[str]:
        return [e for c in self.children for e in c.exceptions]

    def logged(self) -> Counter[str]:
        return sum((c.logged for c in self.children), Counter())
