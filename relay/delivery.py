"""The delivery worker: one loop per channel (relay.channel_loop), so a slow or failing channel
never delays another; woken after enqueueing, stopped on shutdown, and room reserved in the
loops for rows leased at birth (Delivery.reserve).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay import holds
from relay.channel_loop import ChannelLoop
from relay.dispatch import Deps
from relay.model import Notification
from relay.outcomes import HoldEnd
from relay.sending import Route
from relay.store import BirthLease


def _filler(held: list[tuple[ChannelLoop, int]]) -> Callable[[list[Notification]], None]:
    """A birth lease's `handed`: each loop that held room gets its leased rows (none if the
    commit failed) and frees the rest of that room; exactly once per lease."""

    def fill(leased: list[Notification]) -> None:
        for loop, room in held:
            loop.take([n for n in leased if n.channel == loop.name] if leased else [], room)

    return fill


class Delivery:
    """All channel loops; `wake(channel)` after enqueueing, `stop()` on shutdown."""

    def __init__(
        self, deps: Deps, routes: dict[str, Route], repointed: frozenset[str] = frozenset()
    ) -> None:
        self.deps = deps
        self.loops = {name: ChannelLoop(name, route, deps) for name, route in routes.items()}
        self.repointed = repointed  # channels a reload pointed at another receiver

    def route(self, channel: str) -> Route | None:
        """The route channel `channel` runs on, if this delivery has it."""
        loop = self.loops.get(channel)
        return None if loop is None else loop.route

    def start(self) -> None:
        self.deps.store.delivering(self.loops)  # the others share its channels' rate limits
        for loop in self.loops.values():
            loop.start()

    async def restore_holds(self) -> None:
        """Hold the channels a receiver's Retry-After held before this start (relay.holds),
        relay_channel_held saying so; before `start`, so that no loop calls them first."""
        routes = {name: loop.route for name, loop in self.loops.items()}
        restored = await holds.restore(self.deps.store, routes, self.deps.clock())
        if self.deps.on_event is not None:
            for name, until in restored.items():
                self.deps.on_event("held", HoldEnd(name, until), "", 0)

    async def start_afresh(self) -> None:
        """After a reload, once the delivery it replaced is drained: the channels it pointed
        at another receiver owe nothing to the old one's backoffs and Retry-After (relay.holds),
        and are not held (relay_channel_held 0)."""
        for name in self.repointed:
            loop = self.loops[name]
            await holds.start_afresh(self.deps.store, name, loop.route, self.deps.clock())
            if self.deps.on_event is not None:
                self.deps.on_event("held", HoldEnd(name, 0.0), "", 0)
            loop.poke()

    def reserve(self, most: int, now: float) -> BirthLease | None:
        """Room for up to `most` rows per channel in the loops that have it, as the lease of
        the rows created `now` (till the longest of those loops' leases), which fills that room
        once the store's call is over; None when no loop has room (nothing is held)."""
        check = self.deps.clock()
        slots: dict[str, int] = {}
        held: list[tuple[ChannelLoop, int]] = []
        lease_s = 0.0
        for name, loop in self.loops.items():  # no min/max calls: this runs per request
            if room := loop.reserve(most, check):
                slots[name] = room
                held.append((loop, room))
                lease_s = loop.lease_s if loop.lease_s > lease_s else lease_s
        return BirthLease(slots, now + lease_s, _filler(held)) if held else None

    def wake(self, channel: str) -> None:
        loop = self.loops.get(channel)
        if loop is not None:
            loop.poke()

    def wake_all(self) -> None:
        for loop in self.loops.values():
            loop.poke()

    async def stop(self, grace_s: float) -> None:
        """Stop every loop (in-flight sends finish within `grace_s`), then close the channels:
        what they keep open (SMTP sessions) is ended, not dropped at exit."""
        await asyncio.gather(*(loop.stop(grace_s) for loop in self.loops.values()))
        await asyncio.gather(*(loop.route.channel.close() for loop in self.loops.values()))
