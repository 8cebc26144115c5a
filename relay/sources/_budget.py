"""The request body bytes the ingest endpoints hold at once, bounded.

Each body is limited (server.max_body_bytes), but their number is not: 200 clients each pushing
a 1 MiB body held 200 MiB of bodies, and parsed JSON costs 10 to 20 times its size (a body of
many tiny keys or runs), so relay grew to 2 GB and a container's memory limit killed it, losing
every request in flight. A body's bytes are taken from one budget
(server.max_body_bytes_in_flight) before they are read (its Content-Length at once, a chunked
body as it arrives, a decoded body its decoded size) and given back once the request is answered.
A request they do not fit waits for room, its body unread, as a queue would: bodies are stored
within milliseconds, so concurrent batches pass one after another instead of being refused. Only
a request still without room after WAIT_S is refused (503 and Retry-After). A small body (up to
SMALL_BODY) never waits: it counts, but it passes, so that clients trickling big bodies (which
hold their share up to the body timeout) cannot stop the everyday updates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

SMALL_BODY = 64 * 1024
WAIT_S = 10.0  # a body waits this long for room before its 503


class BodyBudget:
    """Bytes held by requests in flight against a live limit. A request is always let through
    when no other holds any, so a limit below max_body_bytes still lets every body in, one at
    a time; and so is a small one (SMALL_BODY)."""

    def __init__(self, limit: Callable[[], int], wait_s: float = WAIT_S) -> None:
        self._limit = limit
        self._wait_s = wait_s
        self._waiters: list[asyncio.Future[None]] = []
        self.held = 0

    def _fits(self, more: int, own: int) -> bool:
        return self.held == own or own + more <= SMALL_BODY or self.held + more <= self._limit()

    async def _take(self, more: int, own: int) -> bool:
        """Take `more` bytes for a request holding `own`, waiting up to wait_s for room."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        while not self._fits(more, own):
            left = deadline - loop.time()
            if left <= 0:
                return False
            freed = loop.create_future()
            self._waiters.append(freed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed, left)
            with contextlib.suppress(ValueError):
                self._waiters.remove(freed)
        self.held += more
        return True

    def _give_back(self, size: int) -> None:
        self.held -= size
        waiters, self._waiters = self._waiters, []
        for freed in waiters:  # each looks again; who fits goes on
            if not freed.done():
                freed.set_result(None)

    @contextlib.contextmanager
    def hold(self) -> Iterator[Hold]:
        """One request's share, given back when the block ends."""
        held = Hold(self)
        try:
            yield held
        finally:
            if held.size:
                self._give_back(held.size)


class Hold:
    """The bytes one request holds of a BodyBudget."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    async def cover(self, size: int) -> bool:
        """Whether `size` bytes of this request fit (waiting for room a while), taking from
        the budget what they need beyond what it holds already."""
        if size <= self.size:
            return True
        more, budget = size - self.size, self._budget
        if budget._fits(more, self.size):  # most requests: no wait, no timer
            budget.held += more
        elif not await budget._take(more, self.size):
            return False
        self.size = size
        return True
