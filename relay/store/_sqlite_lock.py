"""A cross-process write lock beside the database file (`<db>-writer.lock`, flock).

Several processes may write one SQLite file: `relay serve --workers N`, or a `relay dlq replay`
beside `relay serve`. SQLite's own busy handler makes a waiting writer sleep 1, 2, 5, 10 ...
up to 100 ms between tries, which showed as a p99 of over 100 ms once two processes wrote
often. The writer threads take this flock around each transaction instead, trying again every
half millisecond; the kernel releases it when a holder dies (kill -9).

Waiting is bounded: after `timeout_s` the transaction goes ahead without the lock and SQLite's
busy timeout decides, so a stopped (SIGSTOP) holder cannot block the others forever. A lock file
that cannot be opened (read-only directory) means no lock, never a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

POLL_S = 0.0005


class WriteLock:
    def __init__(self, db: Path, timeout_s: float, name: str = "writer") -> None:
        self._path = Path(f"{db}-{name}.lock")
        self._timeout_s = timeout_s
        self._fd: int | None = None

    def open(self) -> None:
        with contextlib.suppress(OSError):
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock (or, after the timeout, go on without it) for the block."""
        fd = self._fd
        if fd is None or not self._acquire(fd):
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def hold(self) -> bool:
        """Take the lock (waiting up to the timeout) and keep it until `close`."""
        return self._fd is not None and self._acquire(self._fd)

    def free(self) -> bool:
        """Whether no process holds the lock now (one that cannot be opened is free)."""
        if self._fd is None:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return True

    def _acquire(self, fd: int) -> bool:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL_S)
            except OSError:
                return False
