"""Long reads on a connection and a thread of their own, beside the writer.

A 10,000-row history page took ~300 ms on the writer thread, and every ingest commit waited
behind it. In WAL mode a reader sees the last commit and blocks no writer, so the reads that
no write of the same operation depends on (history pages, a notification's events, the
dead-letter list) run here. Each read is its own statement in autocommit mode: it starts after
the caller's earlier writes committed (Writer.run returns once they did), so it sees them.

The connection may not write (PRAGMA query_only) and is opened after the writer's, on the file
the writer opened and migrated; sqlite3 errors leave this module as StoreUnavailable, as the
writer's do.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from relay.errors import StoreUnavailable
from relay.store._sqlite_writer import rollback, unavailable

T = TypeVar("T")


class Reader:
    """The reader thread and its connection; reads run one at a time, in the order asked."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only in the reader thread

    async def start(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Start the thread and open the connection with `connect`, in that thread."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store-read")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def stop(self) -> None:
        """Refuse new reads, let the queued ones finish, close the connection, end the thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:  # queued behind the reads already submitted: they finish first
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=True)

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op(conn)` in the reader thread; what it returns, or StoreUnavailable."""
        executor = self._executor
        if executor is None:
            raise StoreUnavailable("store is closed")
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, self._read, op)
        except RuntimeError as exc:  # shut down meanwhile
            raise StoreUnavailable("store is closed") from exc
        return await future

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("store is closed")
        try:
            return op(conn)
        except sqlite3.Error as exc:
            raise unavailable("store operation failed", exc) from exc
        finally:
            rollback(conn)  # a read transaction left open would pin the WAL

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except sqlite3.Error as exc:
            raise unavailable("store close failed", exc) from exc
