"""One request of a Realtime feed (TRIGGER.md §2.2), and the wait before the next after a
failure. A request carries the SDK's headers and the feed's and the shape's query parameters,
follows no redirect (the secret key would go with it) and reads the answer to at most
MAX_ANSWER_BYTES. It times out when no byte comes for `timeout`, a live one also after
`timeout` in all and a non-live one after NON_LIVE_TIMEOUTS times it (a server trickling
bytes). A failed one is retried after retry_delay: exponential with jitter, Retry-After
honoured up to MAX_RETRY_AFTER_S."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from relay.config_sources import RealtimeConfig
from relay.outbound import Proxies
from relay.sources._answers import Response, read_capped
from relay.sources._feed import Feed, request_headers
from relay.sources._shape import Shape

# an answer is read no further than this (decompressed): Electric cuts its log into chunks of
# 10 MiB, so only a broken or hostile server sends more, and it would fill the memory
MAX_ANSWER_BYTES = 64 * 1024 * 1024


# A non-live request (a snapshot chunk, a catch-up) is not held by the server, but may be large
# and slow: up to one 10 MiB chunk, which Electric may take a while to build. No read waits
# longer than the timeout; the whole request may take this many times it (5 min at the default
# 60 s: a chunk at 35 KB/s), so a server or proxy trickling bytes cannot hold the feed forever.
NON_LIVE_TIMEOUTS = 5
MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class Timing:
    """A feed's request timeout, its backoff after failures and its pace when idle."""

    timeout_s: float = 60.0
    retry_min_s: float = 0.1
    retry_factor: float = 1.3
    retry_max_s: float = 10.0
    error_wait_s: float = 60.0
    # an answer with nothing new is asked again no sooner than this after it was asked for:
    # Electric holds a live request ~20 s, a server answering at once would be hammered
    idle_min_s: float = 0.5


def retry_delay(failures: int, timing: Timing, rand: float, retry_after: float | None) -> float:
    """Seconds before retry number `failures` (1, 2, ...): exponential, jittered by `rand`."""
    base = timing.retry_min_s * timing.retry_factor ** min(max(failures - 1, 0), 100)
    wait = min(base, timing.retry_max_s) * (0.5 + rand / 2)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER_S))
    return wait


async def feed_request(
    session: aiohttp.ClientSession,
    config: RealtimeConfig,
    feed: Feed,
    shape: Shape,
    *,
    timing: Timing,
    proxies: Proxies,
) -> Response:
    """The answer to the request that `shape` asks next of `feed`."""
    timeout_s = timing.timeout_s
    headers = request_headers(config.secret_key.get_secret_value(), config.branch)
    params = dict(sorted({**feed.params, **shape.query()}.items()))
    total = timeout_s if shape.live else timeout_s * NON_LIVE_TIMEOUTS
    timeout = aiohttp.ClientTimeout(total=total, sock_connect=timeout_s, sock_read=timeout_s)
    url = config.api_url + feed.path
    async with session.get(
        url,
        params=params,
        headers=headers,
        timeout=timeout,
        allow_redirects=False,
        proxy=proxies.for_url(url),
    ) as resp:
        body = await read_capped(resp, MAX_ANSWER_BYTES)
        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
