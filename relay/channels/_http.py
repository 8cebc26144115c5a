"""The one boundary where HTTP transport outcomes become DeliveryErrors: the shared client.

Statuses are classified in relay.channels._http_answers (aiohttp-free: the channels' modules,
which `relay check` imports for their settings, need no HTTP client); timeouts and connection
failures are retryable. Messages never contain the URL (webhook URLs embed secrets).

An answer's body is read to its end, up to MAX_ANSWER_BYTES (a Slack chat.postMessage answer
echoes the message, escaped: tens of KB), and arrives in pieces (TLS records of 16 KB, chunks):
one read() gives only what has come so far. Once the status is in, a body that does not end
within the attempt's timeout is kept as far as it came: the status is the outcome.

A kept-alive connection the receiver closes as idle just as it is reused (the stale keep-alive
race) fails before a byte of the answer: the receiver never took that request. It is sent again
at once, once, on a new connection, within the same try and its timeout (as browsers and curl
do): it cost an attempt, and with `max_attempts: 1` the notification went dead unseen. A failure
on a new connection, or once a byte of the answer came, stays the try's failure. A receiver that
read the request and closed without answering (it crashed) looks the same from here: it gets
the request twice, as it did when that drop was a failed try, retried at once (a network blip).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from typing import Any, NamedTuple

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection
from multidict import CIMultiDict

from relay.channels._http_answers import HttpResponse, classify_status, proxy_refused
from relay.durations import format_duration
from relay.errors import DeliveryError, network_error
from relay.outbound import USER_AGENT, Proxies, new_resolver
from relay.transport_words import transport_words

log = logging.getLogger("relay.channels")

MAX_ANSWER_BYTES = 1024 * 1024


async def _read_answer(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body to its end or its first `limit` bytes; as far as it came if it stalls past the
    timeout (the status already told the outcome)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit and (chunk := await content.read(limit - size)):
            chunks.append(chunk)
            size += len(chunk)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        pass  # a body cut short or stalled: what came is kept
    return b"".join(chunks)


class _Handler(ResponseHandler):
    """A connection's protocol that tells whether it is stale: it carried a request before
    this one, and no byte of the answer to this one has come."""

    exchanges = 0
    answered = False

    def set_response_params(self, *args: Any, **kwargs: Any) -> None:  # before each request
        self.exchanges += 1
        self.answered = False
        super().set_response_params(*args, **kwargs)

    def data_received(self, data: bytes) -> None:
        self.answered = self.answered or bool(data)
        super().data_received(data)

    @property
    def stale(self) -> bool:
        return self.exchanges > 1 and not self.answered


def _new_handler(loop: asyncio.AbstractEventLoop) -> ResponseHandler:
    return _Handler(loop)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector with _Handler for protocol: aiohttp has no public seam for it, and
    tests/channels/test_stale_connections.py fails if this one stops being used."""

    def __init__(self, *, force_close: bool) -> None:
        super().__init__(
            limit=0, ttl_dns_cache=60, force_close=force_close, resolver=new_resolver()
        )
        self._factory = functools.partial(_new_handler, loop=self._loop)


class StaleConnection(aiohttp.ServerDisconnectedError):
    """A reused connection closed or reset before a byte of the answer came."""


class _Response(aiohttp.ClientResponse):
    """Closes the connection of a 101 answer (Switching Protocols, an Upgrade aiohttp does not
    know, or none): it speaks something else now, yet aiohttp put it back in the pool, and the
    next send to that host, of any channel, waited there for an answer until its timeout.
    Raises StaleConnection for a reused connection lost before the answer began."""

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol  # released to the pool within start() when 101 has no body
        try:
            response = await super().start(connection)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            if isinstance(protocol, _Handler) and protocol.stale:
                raise StaleConnection() from exc
            raise
        if self.status == 101 and protocol is not None:
            protocol.close()  # the pool drops a closed connection when it is next taken
        return response


class _Request(NamedTuple):
    """One request as a channel asked for it, sent again as it is after a stale connection."""

    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]
    tls: ssl.SSLContext | None  # the channel's context (relay.channels._tls), else aiohttp's


def _left(deadline: float) -> float:
    """The seconds left until `deadline` (loop time); TimeoutError if none."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise TimeoutError
    return left


class HttpClient:
    """One shared aiohttp session for every HTTP channel; opened lazily, closed by the service.

    Its pool has no overall limit: each channel's `concurrency` bounds the connections that
    channel holds, and a shared cap would let hung receivers hold every connection while the
    other channels' sends wait for one (and time out).

    Requests go through the proxy the environment names (relay.outbound). A request lost to
    a stale keep-alive connection goes again through a second session whose connections are
    never reused (see the module). It keeps no cookie: one a receiver set went back with every
    later request to that host, whichever channel (and credentials) made it.
    """

    def __init__(self, user_agent: str = USER_AGENT) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}  # by force_close
        self._user_agent = user_agent
        self._proxies = Proxies.from_env()  # read once, as the rest of the environment
        for problem in self._proxies.problems():
            log.warning(problem)

    def _client(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        session = self._sessions.get(fresh)
        if session is None or session.closed:
            session = self._sessions[fresh] = aiohttp.ClientSession(
                connector=_Connector(force_close=fresh),
                headers={"User-Agent": self._user_agent},
                response_class=_Response,
                cookie_jar=aiohttp.DummyCookieJar(),  # a receiver's cookies: for no one else
            )
        return session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> HttpResponse:
        """POST once; raise a classified DeliveryError for failures, return the response if 2xx.
        `tls`: the channel's own context (relay.channels._tls), else the system store's."""
        response = await self.request("POST", url, body, headers, timeout_s, tls=tls)
        error = classify_status(response)
        if error is not None:
            raise error
        return response

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout_s: float,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> HttpResponse:
        deadline = asyncio.get_running_loop().time() + timeout_s
        asked = _Request(method, url, body, headers, tls)
        try:
            try:
                return await self._exchange(asked, timeout_s)
            except StaleConnection:
                log.debug("kept-alive connection closed as it was reused; sending on a new one")
                left = _left(deadline)  # one try within its timeout: a claim's lease counts on it
                return await self._exchange(asked, left, fresh=True)
        except TimeoutError:  # the channel's `timeout`, said: raise it, or fix the receiver?
            said = f"no answer within {format_duration(timeout_s)}"
            raise DeliveryError("timeout", retryable=True, detail=said) from None
        except (aiohttp.InvalidURL, UnicodeError):  # a host IDNA cannot encode (`hooks..x.com`),
            # a user:password not in Latin-1 (Basic auth): the same at every send
            raise DeliveryError("other", retryable=False, detail="invalid URL") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            # UnsupportedProxy too: retried, as a restart with the variable fixed sends it
            raise network_error(exc, transport_words(exc)) from None
        except aiohttp.ClientHttpProxyError as exc:  # the proxy refused to connect us
            raise proxy_refused(exc.status) from None
        except aiohttp.ClientResponseError:  # not an answer: aiohttp calls it a 400 of its own
            raise DeliveryError("other", retryable=True, detail="malformed HTTP answer") from None

    async def _exchange(
        self, asked: _Request, timeout_s: float, *, fresh: bool = False
    ) -> HttpResponse:
        async with self._client(fresh=fresh).request(
            asked.method,
            asked.url,
            data=asked.body,
            headers=asked.headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
            proxy=self._proxies.for_url(asked.url),
            ssl=True if asked.tls is None else asked.tls,
        ) as resp:
            data = await _read_answer(resp.content, MAX_ANSWER_BYTES)
            return HttpResponse(resp.status, CIMultiDict(resp.headers), data)

    async def close(self) -> None:
        open_sessions = [s for s in self._sessions.values() if not s.closed]
        for session in open_sessions:
            await session.close()
        if open_sessions:
            await asyncio.sleep(0)
