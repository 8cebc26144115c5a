"""The SMTP sessions an email channel keeps open between mails to its server.

One connection per mail cost a TCP (and TLS) handshake, EHLO, STARTTLS and AUTH each time, and
in an incident storm it was what servers push back on: Postfix's
smtpd_client_connection_rate_limit, Gmail's and SES's connection limits answer `421 too many
connections`, and every refused connection was a retry that opened another. A session that has
just sent a mail is kept instead, idle for at most IDLE_S (Postfix's own client caches a
session 2 s, smtp_connection_cache_time_limit), at most `limit` of them (the channel's
concurrency: one per send in flight), each used for at most MAX_MESSAGES mails and MAX_AGE_S
(Postfix's smtp_connection_reuse_time_limit), then closed with QUIT. A stop (relay's shutdown,
a reload's old channel) QUITs the idle ones at once, as Postfix's client ends its cached
sessions, for CLOSE_S at most: a connection dropped at exit, unannounced, was a session the
server held open until its own timeout, and logged as a lost connection.

Only a session whose last mail was accepted is kept: after any failure the state of the
session is unknown, and it is closed as before. A kept session the server has closed
meanwhile (its idle timeout, a 421 pushed while idle) is found out at the next mail's MAIL or
RCPT, before DATA: nothing of that mail was taken, and the channel sends it again on a new
connection in the same attempt (Client.lost_before_data).

A server that takes fewer connections at once than the channel's concurrency answers the
extra ones `421` at greeting: a send refused so waits (`wait`, within its attempt) for one of
the channel's sessions in use to be given back, instead of a retry that opens yet another;
and so many in use (`cap`) is the most it opens at once from then on, until none is in use:
each connection over the cap was one more refused (servers count those against a client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator

from relay.channels._smtp import Client

IDLE_S = 5.0
MAX_MESSAGES = 100
MAX_AGE_S = 300.0
QUIT_S = 5.0  # the most a QUIT of an idle session waits for the server's 221
CLOSE_S = 1.0  # the most a stop waits for them: a server that stopped answering delays no exit


class SmtpPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0  # sessions connected and lent to a send
        self.opening = 0  # connections sends are opening (lent once open)
        self.cap: int | None = None  # in use when the server refused one more at greeting
        self._idle: list[tuple[Client, asyncio.TimerHandle]] = []
        self._waiting: deque[asyncio.Future[Client | None]] = deque()
        self._quitting: set[asyncio.Task[None]] = set()

    def take(self) -> Client | None:
        """The session idle the shortest time that is still connected; None if there is none."""
        while self._idle:
            client, timer = self._idle.pop()
            timer.cancel()
            if client.is_connected:
                self._lend(client)
                client.again()
                return client
            client.close()
        return None

    def lend(self, client: Client) -> None:
        """`client` has just connected for a send."""
        self._lend(client)

    @contextlib.contextmanager
    def connecting(self) -> Iterator[None]:
        """A send opening a connection (lend it within): a send the server refused at greeting
        meanwhile waits for this one too. The server took it first, but its 220 can reach
        relay after the other's 421, and the refused send found nothing in use: it failed."""
        self.opening += 1
        try:
            yield
        finally:
            self.opening -= 1
            self._none_left()

    def release(self, client: Client) -> None:
        """`client` will not be kept: closed, and no longer in use."""
        if client.lent:
            client.lent, self.in_use = False, self.in_use - 1
        client.close()
        self._lift_cap()
        self._none_left()

    def _lift_cap(self) -> None:
        """None in use (closed, or kept idle): the server's cap no longer holds."""
        if self.in_use == 0:
            self.cap = None

    def _none_left(self) -> None:
        """No session in use or being opened: the sends waiting for one have none to wait for
        (they waited out their attempt's time before)."""
        if self.in_use or self.opening:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def waiting(self) -> int:
        """Sends waiting for a session in use."""
        return sum(1 for w in self._waiting if not w.done())

    def full(self) -> int:
        """As many sessions in use as the server took at once when it refused one more: that
        many (0: not so)."""
        return self.cap if self.cap is not None and self.in_use >= self.cap else 0

    def refused(self) -> None:
        """The server refused a connection at greeting: the sessions in use are its cap."""
        if self.in_use:
            self.cap = self.in_use

    def give(self, client: Client) -> bool:
        """Keep `client` (its mail just accepted) for a send waiting for one, or for the next
        mail; False if it is not to be kept (used up, or `limit` idle already): the caller
        QUITs and releases it."""
        client.messages += 1
        loop = asyncio.get_running_loop()
        used_up = client.messages >= MAX_MESSAGES or loop.time() - client.opened > MAX_AGE_S
        if used_up or not client.is_connected:
            return False
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                client.again()
                waiter.set_result(client)  # still lent: in use by the waiter now
                return True
        if len(self._idle) >= self.limit:
            return False
        self._to_idle(client)
        return True

    def _to_idle(self, client: Client) -> None:
        """`client` kept idle for the next mail (QUIT after IDLE_S)."""
        client.lent, self.in_use = False, self.in_use - 1
        self._lift_cap()
        timer = asyncio.get_running_loop().call_later(IDLE_S, self._expire, client)
        self._idle.append((client, timer))

    async def wait(self, deadline: float) -> Client | None:
        """One of the sessions in use, once its send gives it back, by the loop's `deadline`;
        None if none is in use or being opened, or none came back in time."""
        if self.in_use == 0 and self.opening == 0:
            return None
        waiter: asyncio.Future[Client | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done() and (given := waiter.result()) is not None:
                self._to_idle(given)  # given at the deadline: kept for the next send
            return None
        finally:
            waiter.cancel()  # no-op once it has its session

    def _lend(self, client: Client) -> None:
        client.lent, self.in_use = True, self.in_use + 1

    def _expire(self, client: Client) -> None:
        self._idle = [(c, t) for c, t in self._idle if c is not client]
        self._quit(client, QUIT_S)

    def _quit(self, client: Client, timeout_s: float) -> None:
        task = asyncio.get_running_loop().create_task(_quit(client, timeout_s))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def close(self) -> None:
        """QUIT every idle session, all at once, and wait for those quitting, for CLOSE_S at
        most; a session whose server has not answered by then is closed without its 221."""
        for client, timer in self._idle:
            timer.cancel()
            self._quit(client, CLOSE_S)
        self._idle = []
        quitting = list(self._quitting)
        if quitting:
            await asyncio.wait(quitting, timeout=CLOSE_S)
            for task in quitting:
                task.cancel()  # its client closed
            await asyncio.gather(*quitting, return_exceptions=True)


async def _quit(client: Client, timeout_s: float) -> None:
    try:
        with contextlib.suppress(Exception):
            await client.quit(timeout=timeout_s)
    finally:
        client.close()
