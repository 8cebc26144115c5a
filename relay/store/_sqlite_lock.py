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
        if _lock_now(self._fd) is not None:
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


class ServeLock:
    """`<db>-serve.lock`: held by the one `relay serve` of a database file from its start to its
    exit (the kernel frees it at a kill -9). A second one started meanwhile (a rolling update,
    `docker compose up` on the same volume) waits for it instead of freeing the first one's
    leases and sending what that one has in flight once more. Its delivery workers and the
    store commands (dlq, history, silence) never take it; `relay migrate` takes it while it
    migrates, and refuses an older schema while a relay serve holds it."""

    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}-serve.lock")
        self._db = db
        self._fd: int | None = None
        self._made: list[Path] = []  # the lock file and the directories open() created
        self._held = False

    def open(self) -> OSError | None:
        """Open (create) the file; the error if it cannot be (a read-only directory)."""
        made = [self.path, *(d for d in self.path.parents if not d.exists())]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            made = []
            try:
                self._fd = os.open(self.path, os.O_RDWR, 0o600)
            except OSError as exc:
                return exc
        except OSError as exc:
            return exc
        self._made = made
        return None

    def take(self) -> bool:
        """Whether the lock is this process's now; False while another process holds it. A
        lock that cannot be taken for another reason (no flock on the file system) is no lock:
        True, as if there were none."""
        self._held = self._fd is None or not isinstance(_lock_now(self._fd), BlockingIOError)
        return self._held

    def undo(self) -> None:
        """Close it after a start that failed; held, and the database file never made (a full
        disk), remove the lock file and the directories open() made: left behind, the next
        start found a directory of relay's with nothing in it but the lock."""
        try:
            if self._held and self._made and not self._db.exists():
                self.path.unlink(missing_ok=True)
                for directory in self._made[1:]:  # the deepest first
                    with contextlib.suppress(OSError):
                        directory.rmdir()  # only an empty one
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lock_now(fd: int) -> OSError | None:
    """Take the flock without waiting; why not (BlockingIOError: another process holds it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc
    return None
