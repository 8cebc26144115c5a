"""Group commit over one SQLite connection owned by one writer thread.

Callers submit `op(conn) -> result` functions. While the writer thread runs a batch, new ops
queue up; the next batch takes all of them and runs them in one transaction (one fsync). A failing
op fails only itself: the batch runs its ops one after the other, and once one fails, the
transaction is rolled back and the others run again, each inside its own savepoint from then on
(a savepoint per op in every batch cost as much as a statement of its own). If the commit
fails, every op of the batch fails with StoreUnavailable. sqlite3 errors never leave this module
untranslated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import StoreUnavailable
from relay.store._sqlite_lock import WriteLock
from relay.store._sqlite_thread import OwnThread

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]
# (result, None) when the op committed, (None, error) when it failed.
_Outcome = tuple[Any, BaseException | None]


NO_SPACE = "no space left on the database's file system"


def no_space(path: Path) -> bool:
    """Whether the file system of the database's directory is full (for relay's user)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def in_words(outcome: _Outcome, path: Path | None) -> _Outcome:
    """`outcome`, its failure said in words when the disk is full: sqlite says only SQLITE_FULL
    (or an SQLITE_IOERR), and the log of a relay whose volume filled up at night said `store
    commit failed: SQLITE_FULL` (also what a database at its max_page_count says)."""
    exc = outcome[1]
    kind = str(getattr(exc and exc.__cause__, "sqlite_errorname", ""))
    if path is None or not kind.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or not no_space(path):
        return outcome
    what = str(exc).removesuffix(f": {kind}")
    worded = StoreUnavailable(f"{what}: {NO_SPACE} ({kind})")
    worded.__cause__ = exc.__cause__ if exc is not None else None
    return None, worded


DAMAGED = (
    "the database file is damaged ({kind}): stop relay, move the database and its -wal and -shm"
    " files aside (kept for a recovery) and restore the last backup"
)


def unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    """StoreUnavailable naming the kind of a sqlite3 error (SQLITE_FULL, ...), never its text;
    a damaged file is said in words: relay on a truncated file (a volume copied while relay
    ran, a disk error) exited with only `store operation failed: SQLITE_CORRUPT`."""
    kind = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    said = (
        DAMAGED.format(kind=kind) if kind.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) else kind
    )
    error = StoreUnavailable(f"{what}: {said}")
    error.__cause__ = exc
    return error


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any; a failing rollback leaves nothing to do."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@dataclass
class _Job:
    op: Op[Any]
    future: asyncio.Future[Any]
    settled: Callable[[Any], None] | None = None  # see Writer.run


class Writer:
    """The writer thread, its connection and the queue of ops waiting for the next batch."""

    def __init__(self, lock: WriteLock | None = None, path: Path | None = None) -> None:
        self._lock = lock  # between processes writing the same file; None: this one only
        self._path = path  # the database's, to say a failure for want of space in words
        self._thread: OwnThread | None = None
        self._conn: sqlite3.Connection | None = None  # used only in the writer thread
        self._pending: list[_Job] = []
        self._drainer: asyncio.Task[None] | None = None
        self._accepting = False
        self.commits = 0

    async def start(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread and open the connection with `connect`, in that thread."""
        if self._accepting:
            return
        thread = OwnThread("relay-store")
        if self._lock is not None:
            self._lock.open()
        try:  # opening migrates the schema: one process at a time
            conn = await thread.call(lambda: self._locked(connect))
        except BaseException:
            thread.end(wait=False)
            if self._lock is not None:
                self._lock.close()
            raise
        self._thread, self._conn, self._accepting = thread, conn, True

    def _locked(self, call: Callable[[], T]) -> T:
        with self._lock.held() if self._lock is not None else contextlib.nullcontext():
            return call()

    async def stop(self) -> None:
        """Refuse new ops, finish the queued ones, close the connection, end the thread."""
        self._accepting = False
        if self._drainer is not None:
            await asyncio.wait({self._drainer})
        thread, conn = self._thread, self._conn
        self._thread = self._conn = None
        if thread is None or conn is None:
            return
        try:
            await thread.call(conn.close)
        except sqlite3.Error as exc:
            raise unavailable("store close failed", exc) from exc
        finally:
            thread.end(wait=True)
            if self._lock is not None:
                self._lock.close()

    async def run(self, op: Op[T], settled: Callable[[T | None], None] | None = None) -> T:
        """Run `op` in the next batch; its result once that batch has committed. `settled` is
        called once, in the event loop's thread, with that result (None when `op` failed or
        never ran), even when the caller was cancelled meanwhile: what the op did is known."""
        if not self._accepting:
            if settled is not None:
                settled(None)
            raise StoreUnavailable("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(op, future, settled))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run batches until nothing is pending; then end (a new op starts a new drainer)."""
        jobs: list[_Job] = []
        try:
            while self._pending:
                jobs = [job for job in self._pending if not _settled_unrun(job)]
                self._pending = []
                if jobs:
                    for job, outcome in zip(jobs, await self._execute(jobs), strict=True):
                        _deliver(job, outcome)
                jobs = []
        finally:  # cancelled or broken: nobody may wait forever
            for job in jobs + self._pending:
                if not _settled_unrun(job):
                    _deliver(job, (None, StoreUnavailable("store writer stopped")))
            self._pending = []

    async def _execute(self, jobs: list[_Job]) -> list[_Outcome]:
        ops = [job.op for job in jobs]
        try:
            if self._thread is None:
                raise RuntimeError("no writer thread")
            return await self._thread.call(lambda: self._run_batch(ops))
        except Exception as exc:  # the thread is gone, or a bug outside the ops
            return [(None, unavailable("store writer failed", exc)) for _ in jobs]

    def _run_batch(self, ops: list[Op[Any]]) -> list[_Outcome]:
        """In the writer thread: run `ops` in one transaction, each in its own savepoint."""
        conn = self._conn
        if conn is None:
            return [(None, StoreUnavailable("store is closed")) for _ in ops]
        return self._locked(lambda: self._run_locked(conn, ops))

    def _run_locked(self, conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[_Outcome]:
        outcomes: list[_Outcome] = [(None, None)] * len(ops)
        todo = list(range(len(ops)))
        run: Callable[[sqlite3.Connection, Op[Any]], _Outcome] = _run_bare
        while todo:
            try:
                lost = _attempt(conn, ops, todo, outcomes, run)
            except StoreUnavailable as exc:  # BEGIN or COMMIT failed: nothing was accepted
                rollback(conn)
                for i in todo:
                    if outcomes[i][1] is None:
                        outcomes[i] = (None, _copy(exc))
                break
            except BaseException:
                rollback(conn)
                raise
            if not lost:
                self.commits += 1
                break
            # The transaction was rolled back after an op failed: run the others again, each
            # in its savepoint now, so that one more failure costs no third try.
            todo = [i for i in todo if outcomes[i][1] is None]
            run = _run_op
        return [in_words(outcome, self._path) for outcome in outcomes]


def _attempt(
    conn: sqlite3.Connection,
    ops: list[Op[Any]],
    todo: list[int],
    outcomes: list[_Outcome],
    run: Callable[[sqlite3.Connection, Op[Any]], _Outcome],
) -> bool:
    """One transaction over `todo`, each op run by `run`; True when an op's failure took the
    transaction with it (a failed bare op: rolled back here)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise unavailable("store unavailable", exc) from exc
    for i in todo:
        outcomes[i] = run(conn, ops[i])
        if outcomes[i][1] is not None and run is _run_bare:
            rollback(conn)  # its writes may be half done: undo the whole transaction
            return True
        if not conn.in_transaction:
            if outcomes[i][1] is None:  # the op ended the transaction itself: a bug, not retried
                outcomes[i] = (None, StoreUnavailable("store operation ended its transaction"))
            return True
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise unavailable("store commit failed", exc) from exc
    return False


def _run_bare(conn: sqlite3.Connection, op: Op[Any]) -> _Outcome:
    """Run one op without a savepoint: on failure the caller rolls back the transaction."""
    try:
        return op(conn), None
    except Exception as exc:
        return None, _failure(exc)


def _run_op(conn: sqlite3.Connection, op: Op[Any]) -> _Outcome:
    """Run one op inside a savepoint; on failure undo only its writes."""
    conn.execute("SAVEPOINT op")
    try:
        result = op(conn)
    except Exception as exc:
        _undo(conn)
        return None, _failure(exc)
    conn.execute("RELEASE op")
    return result, None


def _failure(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        return unavailable("store operation failed", exc)
    return exc


def _undo(conn: sqlite3.Connection) -> None:
    """Roll back to the op's savepoint; if that fails, roll back the whole transaction."""
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
    except sqlite3.Error:
        rollback(conn)


def _copy(exc: StoreUnavailable) -> StoreUnavailable:
    """A fresh exception per caller: one instance raised in many tasks grows one traceback."""
    error = StoreUnavailable(str(exc))
    error.__cause__ = exc.__cause__
    return error


def _settled_unrun(job: _Job) -> bool:
    """Whether the job's caller is gone before its op ran (it is not run then), settled so."""
    if not job.future.done():
        return False
    if job.settled is not None:
        job.settled(None)
    return True


def _deliver(job: _Job, outcome: _Outcome) -> None:
    """The outcome to the job's caller (unless cancelled meanwhile), then to its `settled`."""
    result, error = outcome
    if not job.future.done():
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)
    if job.settled is not None:
        job.settled(result if error is None else None)
