"""The request body bytes the ingest endpoints hold at once, bounded.

Each body is limited (server.max_body_bytes), but their number is not: 200 clients each pushing
a 1 MiB body held 200 MiB of bodies, and parsed JSON costs 10 to 20 times its size (a body of
many tiny keys or runs), so relay grew to 2 GB and a container's memory limit killed it, losing
every request in flight. A body's bytes are taken from one budget
(server.max_body_bytes_in_flight) before they are read (its Content-Length at once, a chunked
body as it arrives, a decoded body its decoded size) and given back once the request is answered;
a request they do not fit is refused with 503 and Retry-After, its body unread. A small body
(up to SMALL_BODY) is never refused: it counts, but it passes, so that clients trickling big
bodies (which hold their share up to the body timeout) cannot stop the everyday updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

SMALL_BODY = 64 * 1024


class BodyBudget:
    """Bytes held by requests in flight against a live limit. A request is always let through
    when no other holds any, so a limit below max_body_bytes still lets every body in, one at
    a time; and so is a small one (SMALL_BODY)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.held = 0

    def _take(self, more: int, own: int) -> bool:
        alone = self.held == own
        if not alone and own + more > SMALL_BODY and self.held + more > self._limit():
            return False
        self.held += more
        return True

    @contextlib.contextmanager
    def hold(self) -> Iterator[Hold]:
        """One request's share, given back when the block ends."""
        held = Hold(self)
        try:
            yield held
        finally:
            self.held -= held.size


class Hold:
    """The bytes one request holds of a BodyBudget."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def cover(self, size: int) -> bool:
        """Whether `size` bytes of this request fit, taking from the budget what they need
        beyond what it holds already."""
        if size <= self.size:
            return True
        if not self._budget._take(size - self.size, self.size):
            return False
        self.size = size
        return True
