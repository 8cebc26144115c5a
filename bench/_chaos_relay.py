"""The chaos soak's relay (bench/chaos.py): `python -m relay serve` as a child process, killed
with SIGKILL and restarted on the same SQLite store; its log read for where it listens and for
tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class RelayChild:
    """`python -m relay serve` as a child in its own process group; restarted on one store."""

    def __init__(self, workdir: Path, config: Path, workers: int = 0) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "RELAY_CONFIG": str(config),
            "RELAY_STORE_URL": f"sqlite:///{workdir / 'relay.db'}",
            "RELAY_LISTEN": "127.0.0.1:0",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_WORKERS": str(workers),
            "PYTHONPATH": str(REPO),
        }
        self.proc: subprocess.Popen[str] | None = None
        self.groups: list[int] = []  # every start's process group: orphaned workers live on
        self.url = ""
        self.starts = 0
        self.log_lines = 0
        self.exceptions: list[str] = []

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
        for line in proc.stderr:
            self.log_lines += 1
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line.rstrip()}
            if entry.get("msg") == "listening":
                self.url = f"http://{entry['host']}:{entry['port']}"
                listening.set()
            if "exc" in entry or "Traceback" in str(entry.get("raw", "")):
                self.exceptions.append(str(entry.get("msg") or entry.get("raw"))[:200])

    def kill(self, parent_only: bool = False) -> None:
        """SIGKILL, no warning: the whole process group (the child started it), or the parent
        alone (its delivery workers finish their sends, then exit, as after `kill -9 PID`)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if parent_only:
                    self.proc.kill()
                else:
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.url = ""

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
