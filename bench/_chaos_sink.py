"""The chaos soak's hostile webhook receiver (bench/chaos.py): it answers each request at random
(200, 429 with Retry-After, 500, a hang, a reset, a refusal) and records every request with its
own clock: what was delivered, and which retries came before the Retry-After it gave. With an
`identify` lookup (bench/_chaos_peers.py) each 200 and 429 also names the relay process group
that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

RELAY_TIMEOUT_S = 1.0
# A retry that ignored Retry-After comes 0.1-2 s early (relay's own backoff); under a loaded CI
# machine the soak once saw two retries 2 and 6 ms early, not reproduced in 8 reruns of its
# seed: timers and the two processes' clocks, not a policy. 20 ms tells the two apart.
RA_TOLERANCE_S = 0.02


@dataclass
class Weights:
    ok: float = 0.45
    rate_limited: float = 0.15
    error: float = 0.12
    hang: float = 0.08
    reset: float = 0.12
    refuse: float = 0.08

    def pick(self, rng: random.Random) -> str:
        names = list(asdict(self))
        return rng.choices(names, weights=[getattr(self, n) for n in names])[0]


def _reset(request: web.BaseRequest) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), not a polite FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass(frozen=True)
class Ok:
    """A 200 the sink answered: when (its clock), to which relay process group (None: not
    known), and whether it reached relay (False: relay's try had timed out, it never read it)."""

    at: float
    group: int | None
    read: bool
    wall: float  # time.time() at `at`: beside relay's history, which tells wall-clock time


Identify = Callable[[int, int], int | None]  # (client port, sink port) -> process group


class ChaosSink:
    """The hostile webhook receiver; every request is recorded with the sink's own clock."""

    def __init__(
        self, rng: random.Random, weights: Weights, identify: Identify | None = None
    ) -> None:
        self.rng = rng
        self.weights = weights
        self.identify = identify
        self._peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, int | None] = (
            weakref.WeakKeyDictionary()
        )
        self.healthy = False
        self.port = 0
        self.requests = 0
        self.answers: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()  # id -> 200 answers
        self.oks: dict[str, list[Ok]] = {}  # id -> its 200 answers
        self.retry_after_group: dict[str, int | None] = {}  # who got the last Retry-After
        self.retry_after_until: dict[str, float] = {}
        self.retry_after_at: dict[str, float] = {}  # when the last Retry-After was given
        self.retry_afters: Counter[str] = Counter()  # id -> Retry-After answers it was held to
        self.violations: list[dict[str, Any]] = []
        self._server = web.Server(self._handle, access_log=None)
        self._listener: asyncio.Server | None = None
        self._down_until = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._server.shutdown(0.5)

    async def _refuse_for(self, seconds: float) -> None:
        """Stop listening (new connections are refused), then listen again on the same port."""
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        self._down_until = time.monotonic() + seconds
        await asyncio.sleep(seconds)
        for _ in range(50):  # the port is ours; a rebind can need a moment
            try:
                await self.start()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the sink could not listen again on its port")

    def _group(self, request: web.BaseRequest) -> int | None:
        """The relay process group at the other end of this request's connection (cached)."""
        transport = request.transport
        if self.identify is None or transport is None:
            return None
        if transport not in self._peers:
            peer = transport.get_extra_info("peername")
            self._peers[transport] = self.identify(int(peer[1]), self.port) if peer else None
        return self._peers[transport]

    @staticmethod
    async def _answer(request: web.BaseRequest, status: int, **headers: str) -> web.StreamResponse:
        """Answer `status` (no body), now: whether relay still held the connection tells after."""
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await response.write_eof()
        return response

    @staticmethod
    def _held(request: web.BaseRequest) -> bool:
        """Whether the answer was written to a connection relay still held (read it)."""
        return request.transport is not None and not request.transport.is_closing()

    async def _deliver(
        self, request: web.BaseRequest, ident: str, arrived: float
    ) -> web.StreamResponse:
        """200: delivered; recorded with the process group answered and whether relay read it
        (a try whose timeout ran out as the sink answered is retried: a duplicate, no kill's)."""
        group = self._group(request)
        self.delivered[ident] += 1
        try:
            return await self._answer(request, 200)
        finally:  # a 200 relay closed the connection on before it was written: unread, too
            ok = Ok(arrived, group, self._held(request), time.time() - (time.monotonic() - arrived))
            self.oks.setdefault(ident, []).append(ok)

    async def _rate_limit(
        self, request: web.BaseRequest, ident: str, until: float | None
    ) -> web.StreamResponse:
        """429 with Retry-After 1 or 2 s, held against the id only once written to a connection
        relay still holds: a try whose 1 s timeout ran out as the sink answered never read it
        (relay retried it as a timeout, by its own backoff: not a violation)."""
        wait = self.rng.choice((1, 2))
        group = self._group(request)
        response = await self._answer(request, 429, **{"Retry-After": str(wait)})
        if self._held(request):
            self.retry_after_at[ident] = time.monotonic()
            self.retry_afters[ident] += 1
            self.retry_after_until[ident] = max(until or 0.0, self.retry_after_at[ident] + wait)
            self.retry_after_group[ident] = group
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        self.requests += 1
        ident = request.headers.get("webhook-id", "")
        with contextlib.suppress(Exception):
            await request.read()
        until = self.retry_after_until.get(ident)
        if until is not None and arrived < until - RA_TOLERANCE_S:
            given = self.retry_after_at.get(ident, 0.0)
            self.violations.append(
                {
                    "id": ident,
                    "early_s": round(until - arrived, 4),
                    "given": given,
                    "at": arrived,
                    "wall": time.time(),  # beside relay's history, which tells wall-clock time
                    "retry_afters": self.retry_afters[ident],
                    "group": self.retry_after_group.get(ident),
                }
            )
        if self.healthy:
            kind = "ok"
        elif arrived < self._down_until:
            kind = "refused"
        else:
            kind = self.weights.pick(self.rng)
        self.answers[kind] += 1
        if kind == "ok":
            return await self._deliver(request, ident, arrived)
        if kind == "rate_limited":
            return await self._rate_limit(request, ident, until)
        if kind == "error":
            return web.Response(status=500, text="boom")
        if kind == "hang":  # past relay's timeout; the answer (if any) reaches nobody
            await asyncio.sleep(RELAY_TIMEOUT_S + self.rng.uniform(0.3, 1.0))
            return web.Response(status=504)
        if kind == "refuse":
            asyncio.get_running_loop().create_task(self._refuse_for(self.rng.uniform(0.3, 1.5)))
        _reset(request)  # reset, refuse, refused: this connection dies with an RST
        return web.Response(status=500)
