"""The delivery worker: one loop per channel (relay.channel_loop), so a slow or failing channel
never delays another; woken after enqueueing, stopped on shutdown, and room reserved in the
loops for rows leased at birth (Reservation).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from relay import holds
from relay.channel_loop import ChannelLoop
from relay.dispatch import Deps
from relay.model import Notification
from relay.outcomes import HoldEnd
from relay.sending import Route
from relay.store import BirthLease


@dataclass
class Reservation:
    """Room in channel loops for rows leased at birth: `slots` for the store, then `fill`."""

    slots: dict[str, int]
    loops: dict[str, ChannelLoop]
    lease_s: float

    def lease(self, now: float) -> BirthLease | None:
        """The lease for the store, which fills this room (`fill`) once its call is over."""
        return BirthLease(self.slots, now + self.lease_s, self.fill) if self.slots else None

    def fill(self, leased: list[Notification]) -> None:
        """Hand each loop its leased rows (none if the commit failed) and free the rest of the
        room it held; exactly once per reservation."""
        for name, loop in self.loops.items():
            loop.take([n for n in leased if n.channel == name] if leased else [], self.slots[name])


class Delivery:
    """All channel loops; `wake(channel)` after enqueueing, `stop()` on shutdown."""

    def __init__(self, deps: Deps, routes: dict[str, Route]) -> None:
        self.deps = deps
        self.loops = {name: ChannelLoop(name, route, deps) for name, route in routes.items()}

    def route(self, channel: str) -> Route | None:
        """The route channel `channel` runs on, if this delivery has it."""
        loop = self.loops.get(channel)
        return None if loop is None else loop.route

    def start(self) -> None:
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

    def reserve(self, most: int) -> Reservation:
        """Room for up to `most` rows per channel, leased to these loops as they are created."""
        now = self.deps.clock()
        held: dict[str, int] = {}
        loops: dict[str, ChannelLoop] = {}
        for name, loop in self.loops.items():
            if room := loop.reserve(most, now):
                held[name], loops[name] = room, loop
        lease_s = max((loop.lease_s for loop in loops.values()), default=self.deps.lease_s)
        return Reservation(held, loops, lease_s)

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
