"""The Store: run state, the outbox and dead letters, behind one interface.

Engines: SQLite (embedded default, one replica). Every method is a coroutine; the engine owns
its I/O. `observe` is the durable boundary: a run's new state and the notifications it owes are
committed in one transaction before it returns, and concurrent calls share commits (group commit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from relay.errors import ConfigError, Problem
from relay.model import Decision, Notification, Run, RunState, Silence

Decide = Callable[[Run, RunState | None], Decision]


@dataclass
class Observed:
    """What observing one run update did: stale updates change nothing."""

    run_id: str
    stale: bool
    notifications: list[Notification] = field(default_factory=list)


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema; raise StoreUnavailable if it cannot."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a round trip to the store works."""

    async def observe(self, runs: Sequence[Run], decide: Decide, now: float) -> list[Observed]:
        """Apply `decide` to each run against its stored state and enqueue its matches.

        All of `runs` commit together or not at all (StoreUnavailable); other concurrent calls may
        share the same commit. Notification rows are idempotent by id. `decide` must be pure: an
        engine may call it again for the same run when it retries a transaction. A cancelled
        call may still have committed (its notifications are idempotent, so that is harmless).
        """

    async def claim(
        self, channel: str, now: float, limit: int, lease_s: float
    ) -> list[Notification]:
        """Lease up to `limit` due pending notifications of `channel`, oldest due first."""

    async def next_due(self, channel: str) -> float | None:
        """When the channel's next pending notification is due (not_before, or its lease's end)."""

    async def mark_sent(self, notification_id: str, *, now: float, attempts: int) -> None:
        """Record a successful send (only a pending row changes)."""

    async def mark_retry(
        self,
        notification_id: str,
        *,
        now: float,
        not_before: float,
        attempts: int,
        reason: str,
        error: str,
    ) -> None:
        """Keep the row pending, due again at `not_before`."""

    async def mark_dead(
        self, notification_id: str, *, now: float, attempts: int, reason: str, error: str
    ) -> None:
        """Give up: the row is kept as a dead letter, replayable."""

    async def dead_letters(self, limit: int = 1000) -> list[Notification]: ...

    async def replay(self, ids: Sequence[str] | None, now: float) -> int:
        """Move dead notifications (all if ids is None) back to pending; return how many moved."""

    async def release_leases(self) -> int:
        """Forget every lease (a single-replica engine calls this when `serve` starts)."""

    async def get(self, notification_id: str) -> Notification | None: ...

    async def counts(self) -> dict[str, int]:
        """Number of notifications by state: pending, sent, dead, muted."""

    async def add_silence(self, silence: Silence) -> None: ...

    async def silences(self, now: float, *, include_expired: bool = False) -> list[Silence]:
        """Silences not yet expired (all with include_expired), in start order."""

    async def expire_silence(self, silence_id: str, now: float) -> Silence | None:
        """End a silence now (kept for history); None if there is no such silence."""

    async def mark_muted(self, notification_id: str, *, now: float, silence_id: str) -> None:
        """A pending notification a silence now covers: recorded as muted, never sent."""

    async def kv_get(self, namespace: str, key: str) -> str | None:
        """Small durable state of a source or channel (a Realtime position, a Slack thread ts)."""

    async def kv_put(self, namespace: str, key: str, value: str, now: float) -> None:
        """Store `value` under (namespace, key), replacing what was there."""

    async def kv_delete(self, namespace: str, key: str) -> None: ...


def open_store(url: str) -> Store:
    """The engine for a RELAY_STORE_URL."""
    from relay.store.sqlite import SQLiteStore, sqlite_path  # noqa: PLC0415

    if url.startswith("sqlite:"):
        return SQLiteStore(sqlite_path(url))
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        [Problem("", "RELAY_STORE_URL", f"unsupported store scheme {scheme!r} (use sqlite:///...)")]
    )
