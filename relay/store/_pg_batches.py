"""PostgreSQL writes that arrive together are committed together.

A write alone costs its round trips and its commit whatever its size: an observe call is five
or six (BEGIN, the run locks, the run states, the write, COMMIT), a sent mark one statement with
its commit. Single-run POSTs from many clients, or a channel's sends finishing one after the
other, paid them once each, and relay's own process was the limit, with the server idle
waiting for it. `Batches` runs at most `lanes` transactions of one kind at once; the calls that
arrive meanwhile wait for a lane and go in it together, up to `max_size` (a call alone goes at
once, as before). Each call keeps its own parameters and result. A batch that failed for what a
call brought (a value the server refused, an error of the call's own code) is tried again call
by call, so that failure is the call's own, not its batch-mates'; one that failed for the store
(down, read-only, full) fails every call at once, as each alone would after waiting for it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from relay.store._pg_errors import content_refused

C = TypeVar("C")  # a call: what one caller asked
R = TypeVar("R")  # its result

Transact = Callable[[Sequence[C]], Awaitable[Sequence[R]]]
Settled = Callable[[C, R | None], None]  # told of every call's end: its result, or None


@dataclass
class _Waiting(Generic[C, R]):
    call: C
    done: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    alone: bool = False  # tried again by itself, after its batch failed


class Batches(Generic[C, R]):
    """Runs calls by `transact` (the calls of one transaction → their results, in order) in at
    most `lanes` transactions at once, those waiting together while their `size`s fit in
    `max_size` (a larger call goes alone)."""

    def __init__(
        self,
        transact: Transact[C, R],
        *,
        lanes: int,
        max_size: int,
        size: Callable[[C], int],
        settled: Settled[C, R] | None = None,
    ) -> None:
        self._transact = transact
        self._lanes = lanes
        self._max_size = max_size
        self._size = size
        self._settled = settled
        self._running = 0
        self._waiting: deque[_Waiting[C, R]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # no call waiting or running
        self._idle.set()

    async def run(self, call: C) -> R:
        """The call's result once its transaction committed; a caller cancelled meanwhile does
        not take the others' transaction with it (nor its own: it commits, as on SQLite)."""
        waiting: _Waiting[C, R] = _Waiting(call)
        self._waiting.append(waiting)
        self._idle.clear()
        self._start()
        return await asyncio.shield(waiting.done)

    async def drained(self, timeout_s: float) -> None:
        """Once every call made so far is settled (or `timeout_s` passed): a closing store's
        queued calls hold no connection yet, and the pool's own wait would not see them."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    def _start(self) -> None:
        while self._waiting and self._running < self._lanes:
            self._running += 1
            task = asyncio.create_task(self._run(self._take()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting[C, R]]:
        """The first waiting call, and those after it while they fit (none tried alone)."""
        batch = [self._waiting.popleft()]
        size = self._size(batch[0].call)
        while not batch[0].alone and self._waiting and not self._waiting[0].alone:
            more = self._size(self._waiting[0].call)
            if size + more > self._max_size:
                break
            batch.append(self._waiting.popleft())
            size += more
        return batch

    async def _run(self, batch: list[_Waiting[C, R]]) -> None:
        try:
            results = await self._transact([waiting.call for waiting in batch])
        except asyncio.CancelledError:
            for waiting in batch:
                self._fail(waiting, None)
            raise
        except Exception as exc:  # each call gets it, or a try of its own
            if len(batch) > 1 and content_refused(exc):
                for waiting in reversed(batch):  # first in the queue, in their order
                    waiting.alone = True
                    self._waiting.appendleft(waiting)
            else:  # the store failed, not a call: each alone would wait for it again
                for waiting in batch:
                    self._fail(waiting, exc)
        else:
            for waiting, result in zip(batch, results, strict=True):
                self._succeed(waiting, result)
        finally:
            self._running -= 1
            self._start()
            if not self._running and not self._waiting:
                self._idle.set()

    def _succeed(self, waiting: _Waiting[C, R], result: R) -> None:
        if self._settled is not None:
            self._settled(waiting.call, result)
        if not waiting.done.done():
            waiting.done.set_result(result)

    def _fail(self, waiting: _Waiting[C, R], error: BaseException | None) -> None:
        """The call's error (its cancellation when None), `settled` told of no result."""
        if self._settled is not None:
            self._settled(waiting.call, None)
        if waiting.done.done():
            return
        if error is None:
            waiting.done.cancel()
        else:
            waiting.done.set_exception(error)
