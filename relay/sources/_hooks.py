"""What a Realtime follower calls (relay.sources._follower): intake's submit, the metrics'
hooks, and its sleep."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from relay.intake import IntakeResult
from relay.model import Run

Submit = Callable[[Sequence[Run]], Awaitable[IntakeResult]]


Sleep = Callable[[float], Awaitable[None]]


# (feed key, rows submitted, lag in seconds from the newest row's updatedAt: 0 when the server
# had nothing new, None when unknown; rows the feed holds) per up-to-date answer
Observe = Callable[[str, int, float | None, int], None]


# (feed key, reason) per request that failed: timeout, network, rate_limited, server_error,
# auth_error, client_error, other (an answer that breaks the protocol)
Failed = Callable[[str, str], None]
