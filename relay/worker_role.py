"""A relay process's part under `relay serve --workers N` (relay.workers): everything, intake
with N children, or delivery worker i; the command line that makes a child one; which worker
owns which channel, and the name it holds leases under."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import IO

WORKER_FLAG = "--delivery-worker"
EVENTS_FLAG = "--events-fd"
CONFIG_FD_FLAG = "--config-fd"  # a file holding the parent's config: `config_payload`


@dataclass(frozen=True)
class Role:
    """This process's part: everything (workers=0), intake with `workers` children, or the
    delivery worker number `index` (its outcomes written to `events`)."""

    workers: int = 0
    index: int | None = None
    events: IO[str] | None = None

    def owned(self, channels: Collection[str]) -> list[str]:
        """The channels this process delivers."""
        if self.index is None:
            return [] if self.workers else list(channels)
        return sorted(owned(self.index, channels, self.workers))

    @property
    def holder(self) -> str:
        """How this process names itself in the leases it takes."""
        return "" if self.index is None else holder(self.index)


def holder(index: int) -> str:
    """The lease holder name of delivery worker `index` (the same for its successor, which is
    started only after the dead one's claims were released)."""
    return f"worker {index}"


def owner(channel: str, channels: Collection[str], count: int) -> int:
    """The worker that delivers `channel`: its place among the sorted channel names, mod N."""
    ordered = sorted(channels)
    return ordered.index(channel) % count if channel in ordered else 0


def owned(index: int, channels: Collection[str], count: int) -> set[str]:
    return {name for name in channels if owner(name, channels, count) == index}
