"""How a Realtime follower (relay.sources._follower) answers a request that brought nothing.

Failures never stop a feed: 429/5xx/408, network errors and timeouts back off with jitter
(100 ms, times 1.3 up to 10 s, Retry-After honoured), and so does a 404 with `x-should-retry:
true` (Trigger.dev's "batch not found" for a batch not there yet, TRIGGER.md 2.1); other
400/401/403/404 are logged with the feed and status and tried again after `error_backoff` (an
operator may fix the key), and so is a 3xx,
which is not followed (the secret key would go with it) but logged with where it points. A 400
to a request with the stored handle is Electric's "shape definition and handle do not match" (it
is the shape of the branch, key or api_url followed before a reload): the feed drops it for a
snapshot at once, once; a 400 to a handle this server gave waits `error_backoff` as any other
(no snapshot after snapshot without a pause). `failed` hears of every failed request, by
reason.
"""

from __future__ import annotations

import logging
import random

from relay.outbound import origin, proxy_answered
from relay.retry_after import parse_retry_after
from relay.sources._answers import Response, error_text, status_reason
from relay.sources._feed import Feed
from relay.sources._feed_request import Timing, retry_delay
from relay.sources._hooks import Failed, Sleep
from relay.sources._messages import ShapeError
from relay.sources._shape import Shape

log = logging.getLogger("relay.realtime")
UNREADABLE_LIMIT = 3  # the same unreadable response this often: start from a new snapshot


class FeedFailures:
    """The failure part of a Follower (its base): backoff, refusals, unreadable answers."""

    feed: Feed
    _timing: Timing
    _sleep: Sleep
    _failed: Failed | None
    _failures: int  # failed requests in a row
    _unreadables: int  # responses in a row that could not be read

    async def _must_refetch(self, shape: Shape, response: Response, refetches: int) -> None:
        """A 409: a snapshot of the new handle, backed off from the second in a row."""
        old = shape.position.handle
        shape.refetch(response.headers.get("electric-handle") or f"{old}-next")
        log.info("realtime shape must be refetched", extra=self._extra())
        if refetches > 1:
            await self._retry("repeated must-refetch", None, attempt=refetches - 1)

    async def _not_taken(
        self, shape: Shape, response: Response, stored_handle: str | None
    ) -> str | None:
        """A status that brings nothing: backed off (408, 429, 5xx), a snapshot at once (a 400
        to the stored handle, once), else waited out (_refused). The stored handle that a 400
        still drops, None once one did."""
        self._count(status_reason(response.status))
        if response.status in (408, 429) or response.status >= 500 or _says_retry(response):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            await self._retry(f"HTTP {response.status}", retry_after)
        elif (
            response.status == 400
            and stored_handle is not None
            and (shape.position.handle == stored_handle)
        ):
            self._foreign_handle(shape, response)
            return None  # once: a 400 to a handle this server gave waits
        else:
            await self._refused(response)
        return stored_handle

    async def _unreadable(self, shape: Shape, error: ShapeError) -> None:
        """Ask again for a response that could not be read (the shape took none of it); the
        same one unreadable UNREADABLE_LIMIT times in a row is read anew from a snapshot of a
        new shape, rather than holding the feed up forever (intake drops what it has seen)."""
        self._unreadables += 1
        if self._unreadables >= UNREADABLE_LIMIT:
            self._unreadables = 0
            log.warning(
                "realtime responses unreadable; reading a new snapshot",
                extra=self._extra(reason=str(error)),
            )
            shape.refetch(None)
        await self._retry(str(error), None)

    async def _retry(self, reason: str, retry_after: float | None, attempt: int = 0) -> None:
        """Wait before asking again: the backoff of this many failures in a row (`attempt`
        when given: a count of its own, such as must-refetches, that answers do not reset)."""
        self._failures += 1
        attempt = attempt or self._failures
        wait = retry_delay(attempt, self._timing, random.random(), retry_after)
        log.warning(
            "realtime request failed; retrying",
            extra=self._extra(reason=reason, attempt=attempt, wait_s=round(wait, 3)),
        )
        await self._sleep(wait)

    def _foreign_handle(self, shape: Shape, response: Response) -> None:
        """A 400 to a request with the stored handle: Electric's "shape definition and handle
        do not match" when it is another shape's (the branch, key or api_url followed before a
        reload), given at every request with it. A snapshot without it, at once."""
        log.warning(
            "realtime shape handle refused; reading a new snapshot",
            extra=self._extra(handle=shape.position.handle, error=error_text(response.body)),
        )
        shape.refetch(None)

    async def _refused(self, response: Response) -> None:
        if response.status == 407:  # the proxy's (an http:// api_url), not Trigger.dev's
            await self._retry(proxy_answered(response.status), None)  # its credentials may be
            return  # fixed, with a restart, and a refusal's long wait is not the proxy's
        if 300 <= response.status < 400:
            # Not followed: the secret key would go wherever the Location points.
            log.error(
                "realtime API answered with a redirect, which relay does not follow;"
                " set sources.realtime.api_url to the address it points to",
                extra=self._extra(
                    status=response.status, location=origin(response.headers.get("location"))
                ),
            )
        else:
            log.error(
                "realtime request refused; check the secret key and the feed",
                extra=self._extra(status=response.status, error=error_text(response.body)),
            )
        await self._sleep(self._timing.error_wait_s)

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"feed": self.feed.key, **fields}

    def _count(self, reason: str) -> None:
        if self._failed is not None:
            self._failed(self.feed.key, reason)


def _says_retry(response: Response) -> bool:
    """A 404 the server marks as worth asking again (`x-should-retry: true`): Trigger.dev's
    answer for a batch that is not there yet, not a feed that is wrong."""
    return response.status == 404 and response.headers.get("x-should-retry", "").lower() == "true"
