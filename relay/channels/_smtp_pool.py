"""The SMTP sessions an email channel keeps open between mails to its server.

One connection per mail cost a TCP (and TLS) handshake, EHLO, STARTTLS and AUTH each time, and
in an incident storm it was what servers push back on: Postfix's
smtpd_client_connection_rate_limit, Gmail's and SES's connection limits answer `421 too many
connections`, and every refused connection was a retry that opened another. A session that has
just sent a mail is kept instead, idle for at most IDLE_S (Postfix's own client caches a
session 2 s, smtp_connection_cache_time_limit), at most `limit` of them (the channel's
concurrency: one per send in flight), each used for at most MAX_MESSAGES mails and MAX_AGE_S
(Postfix's smtp_connection_reuse_time_limit), then closed with QUIT.

Only a session whose last mail was accepted is kept: after any failure the state of the
session is unknown, and it is closed as before. A kept session the server has closed
meanwhile (its idle timeout, a 421 pushed while idle) is found out at the next mail's MAIL or
RCPT, before DATA: nothing of that mail was taken, and the channel sends it again on a new
connection in the same attempt (Client.lost_before_data)."""

from __future__ import annotations

import asyncio
import contextlib

from relay.channels._smtp import Client

IDLE_S = 5.0
MAX_MESSAGES = 100
MAX_AGE_S = 300.0
QUIT_S = 5.0  # the most a QUIT of an idle session waits for the server's 221


class SmtpPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._idle: list[tuple[Client, asyncio.TimerHandle]] = []
        self._quitting: set[asyncio.Task[None]] = set()

    def take(self) -> Client | None:
        """The session idle the shortest time that is still connected; None if there is none."""
        while self._idle:
            client, timer = self._idle.pop()
            timer.cancel()
            if client.is_connected:
                client.again()
                return client
            client.close()
        return None

    def give(self, client: Client) -> bool:
        """Keep `client` (its mail just accepted) for the next mail; False if it is not to be
        kept (used up, or `limit` idle already): the caller QUITs it."""
        client.messages += 1
        loop = asyncio.get_running_loop()
        used_up = client.messages >= MAX_MESSAGES or loop.time() - client.opened > MAX_AGE_S
        if used_up or len(self._idle) >= self.limit or not client.is_connected:
            return False
        timer = loop.call_later(IDLE_S, self._expire, client)
        self._idle.append((client, timer))
        return True

    def _expire(self, client: Client) -> None:
        self._idle = [(c, t) for c, t in self._idle if c is not client]
        task = asyncio.get_running_loop().create_task(_quit(client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def close(self) -> None:
        """QUIT every idle session now (`relay send-test` before it exits)."""
        idle, self._idle = self._idle, []
        for _, timer in idle:
            timer.cancel()
        await asyncio.gather(*(_quit(c) for c, _ in idle), *self._quitting)


async def _quit(client: Client) -> None:
    try:
        with contextlib.suppress(Exception):
            await client.quit(timeout=QUIT_S)
    finally:
        client.close()
