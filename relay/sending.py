"""One message to one channel: each try throttled by the channel's rate limit and stamped as
it goes out, blips retried in-process (tenacity), the outcome as `Tried`. What follows a
failure (a retry from the outbox, or dead) is relay.outcomes' (by relay.policy).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from relay import policy as pol
from relay.channels import Channel, Outgoing
from relay.config import ChannelSettings
from relay.errors import DeliveryError

log = logging.getLogger("relay.delivery")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Slots:
    """A receiver's sends in flight, shared by the channel loop sending to it and, after a
    reload, the one finishing its last sends: a reload starts the new loop at once, and with
    `concurrency: 1` it sent two more while the old loop's send was still on the wire."""

    def __init__(self) -> None:
        self.taken = 0
        self._freed: list[Callable[[], None]] = []  # the loops to tell of a slot given back

    def listen(self, freed: Callable[[], None]) -> None:
        self._freed.append(freed)

    def forget(self, freed: Callable[[], None]) -> None:
        if freed in self._freed:
            self._freed.remove(freed)

    def take(self) -> None:
        self.taken += 1

    def give(self) -> None:
        self.taken -= 1
        for freed in list(self._freed):
            freed()


@dataclass
class Route:
    """A channel and how to render for it."""

    channel: Channel
    type: str
    parts: tuple[str, ...]
    concurrency: int
    bucket: pol.TokenBucket | None
    timeout_s: float = 10.0  # of one try: the lease of a claim outlasts every quick try
    hold: pol.Hold = field(default_factory=pol.Hold)  # set by a Retry-After: no request before
    slots: Slots = field(default_factory=Slots)  # its sends in flight, of every loop sending
    outage: pol.Outage = field(default_factory=pol.Outage)  # its failures since a success
    settings: ChannelSettings | None = None  # what it was built from (a reload compares them)


@dataclass(frozen=True)
class Tried:
    """The outcome of one delivery attempt (quick retries included)."""

    tries: int  # the attempts spent: a local failure (no descriptor to connect) spends none
    error: DeliveryError | None = None
    receipt: str | None = None
    failed: tuple[str, ...] = ()  # the reason of each failed try, quick retries included
    last_failure: str | None = None  # the last failed try's error (history's `error`)
    held_s: float | None = None  # not sent: the channel is held this long still (no attempt)


class Held(Exception):
    """A request not made: the channel is held by a receiver's Retry-After for `left_s`."""

    def __init__(self, left_s: float) -> None:
        super().__init__(f"channel held for {left_s:.3f}s")
        self.left_s = left_s


class Stopped(Held):
    """A request not made: the channel loop stops (a shutdown, a reload) while the send waits
    for its turn under the rate limit or for a quick retry. Nothing is on the wire, so the rows
    go back to the outbox now (as for a hold that ends at once) rather than hold up the stop
    until its grace runs out."""

    def __init__(self) -> None:
        super().__init__(0.0)


class Sender:
    """Sends through one channel's route; `max_attempts` is the retry policy's, which the
    quick retries of one attempt never pass."""

    def __init__(
        self,
        name: str,
        route: Route,
        *,
        clock: Clock,
        sleep: Sleep,
        rng: random.Random,
        max_attempts: int,
        stop: asyncio.Event | None = None,
        took: Callable[[float], None] | None = None,
    ) -> None:
        self.name = name
        self.route = route
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.max_attempts = max_attempts
        self.stop = stop if stop is not None else asyncio.Event()  # set: waits end (Stopped)
        self.took = took if took is not None else _untimed  # the seconds of each request made

    async def attempt(self, outgoing: Outgoing, attempts: int) -> Tried:
        """Send with in-process retries, each try throttled."""
        try:
            budget = pol.quick_budget(attempts, self.max_attempts)
            return await self._send(outgoing, budget)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a channel bug: retry, never drop
            log.exception("channel raised unexpectedly", extra=self._outgoing_extra(outgoing))
            error = DeliveryError("other", retryable=True, detail=type(exc).__name__)
            return Tried(1, error, failed=(error.reason,))

    def _outgoing_extra(self, outgoing: Outgoing) -> dict[str, object]:
        return {
            "run_id": outgoing.run_id or None,  # "" for a digest of several runs
            "rule": outgoing.rule,
            "channel": self.name,
            "notification_id": outgoing.notification_id,
            "group": outgoing.group_key,
        }

    async def _cleared(self) -> float:
        """The time a request may go at: its token of the rate limit taken and waited for,
        the channel not held. Else Held (Stopped: the loop stops meanwhile), the token given
        back, as no request is made (the limit would be slower after; a reload keeps the
        bucket)."""
        bucket = self.route.bucket
        try:
            if bucket is not None:
                await self._wait(bucket.reserve(self.clock()))
            now = self.clock()
            left_s = self.route.hold.left_s(now)
            if left_s > 0:
                raise Held(left_s)
        except Held:
            if bucket is not None:
                bucket.give_back()
            raise
        return now

    async def _wait(self, seconds: float) -> None:
        """Sleep `seconds` (a turn under the rate limit, a quick retry's backoff), unless the
        stop comes first: then Stopped. Such a wait ran out the whole shutdown grace."""
        if seconds > 0 and not self.stop.is_set():
            stop = asyncio.ensure_future(self.stop.wait())
            sleep = asyncio.ensure_future(self.sleep(seconds))
            try:
                await asyncio.wait({stop, sleep}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                sleep.cancel()
        if self.stop.is_set():
            raise Stopped

    async def _send(self, outgoing: Outgoing, budget: int) -> Tried:
        """Send, retrying blips in-process: the tries made and the final error or receipt. The
        first try is made directly (nearly every send succeeds at once: setting up a retry
        loop for each cost more CPU than rendering the message); tenacity takes the rest."""
        try:
            return Tried(1, None, await self._send_once(outgoing))
        except Held as held:  # no try made: the rows go back as they were (Stopped: now)
            return Tried(0, held_s=held.left_s)
        except DeliveryError as err:
            if budget <= 1 or not pol.is_blip(err):
                return Tried(_spent(1, [err]), err, failed=(err.reason,))
            failures = [err]
        tries = 1
        receipt: str | None = None

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            err = exc if isinstance(exc, DeliveryError) else None
            return pol.quick_wait_s(1 + state.attempt_number, err, self.rng)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(budget - 1),
            wait=wait,
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and pol.is_blip(e)),
            sleep=self._wait,
            reraise=True,
        )
        try:
            await self._wait(pol.quick_wait_s(1, failures[0], self.rng))
            async for attempt in retrying:
                with attempt:
                    tries += 1
                    receipt = await self._try(outgoing, failures)
        except DeliveryError as err:
            return Tried(_spent(tries, failures), err, failed=_reasons(failures))
        except Held:  # the try not made is no try: the last failure stands, due after the hold
            # or, stopped (Stopped) while a quick retry waited, at the outbox's backoff
            return Tried(_spent(len(failures), failures), failures[-1], failed=_reasons(failures))
        spent = _spent(tries, failures)
        return Tried(spent, None, receipt, _reasons(failures), str(failures[-1]))

    async def _try(self, outgoing: Outgoing, failures: list[DeliveryError]) -> str | None:
        try:
            return await self._send_once(outgoing)
        except DeliveryError as err:
            failures.append(err)
            raise

    async def _send_once(self, outgoing: Outgoing) -> str | None:
        """One request: it takes a token of the rate limit (a retry is a request too), and it
        is stamped when it goes out, not when rendered: a send that waited for the rate limit
        would carry a stale webhook-timestamp, which Standard Webhooks receivers refuse after
        5 minutes. None goes while the channel is held (Held), and a Retry-After holds it.
        Its duration is told (`took`) whatever came of it, a timeout's or a refused
        connection's too; not that of a wait for the rate limit or a hold (no request), nor of
        a local failure (errors.network_error: nothing went out) or a send cut by a stop."""
        now = await self._cleared()
        message = outgoing.stamped(now)
        start = time.perf_counter()
        try:
            receipt = await self.route.channel.send(message)
        except DeliveryError as err:
            if not err.local:
                self.took(time.perf_counter() - start)
            self._tell_failed_try(outgoing, err)
            if err.retryable and err.retry_after:
                self._hold(outgoing, err.retry_after)
            raise
        except Exception:  # a channel bug (Sender.attempt: an attempt all the same)
            self.took(time.perf_counter() - start)
            raise
        self.took(time.perf_counter() - start)
        return receipt

    def _tell_failed_try(self, outgoing: Outgoing, err: DeliveryError) -> None:
        """A DEBUG line for each failed try: the quick retries of a blip share the outcome's
        one line (`delivery failed; will retry`, `failed_tries` on `notification sent`),
        and at DEBUG an operator sees what each of them met."""
        if log.isEnabledFor(logging.DEBUG):
            extra = {**self._outgoing_extra(outgoing), "reason": err.reason, "error": str(err)}
            log.debug("try failed", extra=extra)

    def _hold(self, outgoing: Outgoing, seconds: float) -> None:
        """The receiver asked for a pause: the channel's other sends wait it out too."""
        if self.route.hold.extend(self.clock(), seconds):
            extra = {**self._outgoing_extra(outgoing), "hold_s": round(seconds, 3)}
            log.warning("channel held: the receiver asked to wait (Retry-After)", extra=extra)


def _untimed(seconds: float) -> None:
    """A sender's `took` where nothing records request durations."""


def _spent(tries: int, failures: list[DeliveryError]) -> int:
    """The attempts `tries` spent: a local failure (errors.network_error) is none."""
    return tries - sum(err.local for err in failures)


def _reasons(failures: list[DeliveryError]) -> tuple[str, ...]:
    return tuple(err.reason for err in failures)
