"""One thread of its own for the SQLite writer, answering on the event loop.

A ThreadPoolExecutor's round trip (`run_in_executor`: a concurrent future with its condition, a
work item, the executor's locks and semaphore, an asyncio future chained to it) cost ~24 µs of
CPU on uvloop; a queue and `call_soon_threadsafe` ~10. The writer makes one per batch (about
one per commit), and intake waits on it for every update.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class OwnThread:
    """Runs the calls given to it one after the other, in order, in one thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """`fn()` run in the thread; its result or exception. A call whose caller is
        cancelled before the thread takes it up is not run."""
        if not self._thread.is_alive():
            raise RuntimeError("the thread has ended")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, loop, future))
        return await future

    def end(self, wait: bool) -> None:
        """End the thread once the calls given before are done; `wait` for that."""
        self._calls.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, loop, future = call
            if future.cancelled():  # a read of one attribute: the loop's thread sets it
                continue
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (fn(), None)
            except BaseException as exc:  # handed to the caller, as an executor does
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_answer, future, outcome)


def _answer(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    if future.done():  # cancelled meanwhile
        return
    result, error = outcome
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
