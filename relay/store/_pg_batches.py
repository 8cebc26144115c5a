"""Store.observe on PostgreSQL: calls that arrive together are committed together.

An observe call is one transaction of five or six round trips (BEGIN, the run locks, the run
states, the write, COMMIT) whatever its size, so single-run POSTs from many clients paid them
once each, and relay's own process was the limit: ~3.5 times SQLite's CPU a request, with the
server idle in transaction, waiting for relay. At most LANES transactions run at once; the calls
that arrive meanwhile wait for a lane and go in it together, as one transaction of up to
MAX_RUNS runs (a call alone goes at once, as before). Each call keeps its own `decide` (the
rules and mutes of its time), lease and result. A batch that failed for what a call brought (a
value the server refused, an error of the call's own rules) is tried again call by call, so
that failure is the call's own, not its batch-mates'; one that failed for the store (down,
read-only, full) fails every call at once, as each alone would after waiting for it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from relay.model import Decision, Run, RunState
from relay.store import BirthLease, Decide, Observed
from relay.store._engines import hand_over
from relay.store._pg_errors import content_refused
from relay.store._pg_observe import lease_at_birth, observe

LANES = 4  # transactions of observe at once, of the pool's 10 connections
MAX_RUNS = 1000  # runs of the calls that go together (a larger call goes alone)


@dataclass
class Call:
    """One caller's observe: its runs, how to decide them, its time and its birth lease."""

    runs: list[Run]
    decide: Decide
    now: float
    lease: BirthLease | None
    done: asyncio.Future[list[Observed]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    alone: bool = False  # tried again by itself, after its batch failed


Transact = Callable[[Sequence[Call]], Awaitable[list[list[Observed]]]]


class ObserveBatches:
    """Runs observe calls in at most `lanes` transactions at once, those waiting together."""

    def __init__(self, transact: Transact, lanes: int = LANES, max_runs: int = MAX_RUNS) -> None:
        self._transact = transact
        self._lanes = lanes
        self._max_runs = max_runs
        self._running = 0
        self._waiting: deque[Call] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # no call waiting or running
        self._idle.set()

    async def observe(
        self, runs: Sequence[Run], decide: Decide, now: float, lease: BirthLease | None
    ) -> list[Observed]:
        """The call's result once its transaction committed; a caller cancelled meanwhile does
        not take the others' transaction with it (nor its own: it commits, as on SQLite)."""
        call = Call(list(runs), decide, now, lease)
        self._waiting.append(call)
        self._idle.clear()
        self._start()
        return await asyncio.shield(call.done)

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

    def _take(self) -> list[Call]:
        """The first waiting call, and those after it while they fit (none tried alone)."""
        batch = [self._waiting.popleft()]
        size = len(batch[0].runs)
        while not batch[0].alone and self._waiting and not self._waiting[0].alone:
            if size + len(self._waiting[0].runs) > self._max_runs:
                break
            batch.append(self._waiting.popleft())
            size += len(batch[-1].runs)
        return batch

    async def _run(self, batch: list[Call]) -> None:
        try:
            results = await self._transact(batch)
        except asyncio.CancelledError:
            for call in batch:
                _settle(call, None, None)
            raise
        except Exception as exc:  # each call gets it, or a try of its own
            if len(batch) > 1 and content_refused(exc):
                for call in reversed(batch):  # first in the queue, in their order
                    call.alone = True
                    self._waiting.appendleft(call)
            else:  # the store failed, not a call: each alone would wait for it again
                for call in batch:
                    _settle(call, None, exc)
        else:
            for call, observed in zip(batch, results, strict=True):
                _settle(call, observed, None)
        finally:
            self._running -= 1
            self._start()
            if not self._running and not self._waiting:
                self._idle.set()


def _settle(call: Call, observed: list[Observed] | None, error: BaseException | None) -> None:
    """The call's result (or error, or cancellation when both are None), and its lease told."""
    if call.lease is not None:
        hand_over(call.lease, observed)
    if call.done.done():
        return
    if observed is not None:
        call.done.set_result(observed)
    elif error is not None:
        call.done.set_exception(error)
    else:
        call.done.cancel()


async def observe_calls(
    conn: asyncpg.Connection, calls: Sequence[Call], holder: str
) -> list[list[Observed]]:
    """Inside the caller's transaction: every call's runs observed at once (each decided by its
    own call), then each call's birth lease taken; each call's Observed, in order. The write's
    time is the latest call's (they arrived within one transaction's time)."""
    deciders = {id(run): call.decide for call in calls for run in call.runs}

    def decide(run: Run, previous: RunState | None) -> Decision:
        return deciders[id(run)](run, previous)

    runs = [run for call in calls for run in call.runs]
    now = max(call.now for call in calls)
    observed = await observe(conn, runs, decide, now)
    results: list[list[Observed]] = []
    for call in calls:
        part, observed = observed[: len(call.runs)], observed[len(call.runs) :]
        results.append(await lease_at_birth(conn, part, call.lease, holder, call.now))
    return results
