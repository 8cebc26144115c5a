"""What every HTTP request relay makes shares, channels' and Realtime feeds' alike: the
User-Agent, the proxy the environment names, how a redirect's target is told, and where host
names are looked up (new_resolver: threads of their own, not asyncio's default executor; the
same for the SMTP channel's connections, which aiohttp does not make: HostAddresses).

Proxies: HTTP_PROXY / HTTPS_PROXY / NO_PROXY (any case), read once at start, as curl, pip and
requests read them: behind a corporate proxy every send and feed failed with a name lookup
error. A proxy written without a scheme (`proxy.corp:3128`) is an http:// one. NO_PROXY takes
urllib's forms (`*`, a name and its subdomains, `host:port`), CIDR blocks (`10.0.0.0/8`), which
curl and requests take, and Go's `*.example.com` and `[::1]`/`[::1]:8080` (Alertmanager's
operators write them), which urllib does not. A proxy of another scheme (`socks5://`) is
refused at each send, in words, and warned of at start: aiohttp would speak HTTP to it and the
failure would read as a malformed answer. ALL_PROXY is not read (its usual value is a SOCKS
proxy). Not aiohttp's trust_env: it adds a thread hop
per request and ~/.netrc credentials, which would clash with a configured Authorization header.
The answer for each scheme://host:port is kept: receivers are few, requests many.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    import aiohttp

from relay import __version__

USER_AGENT = f"relay/{__version__}"  # as Alertmanager/0.27.0: a receiver's logs tell versions

# NO_PROXY's matching (suffixes, `*`, ports) as urllib does it; public but not in typeshed
_bypass: Callable[[str, Mapping[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Block = tuple[Network, int | None]  # addresses NO_PROXY lists, and the one port if it names one


class UnsupportedProxy(ConnectionError):
    """The environment names a proxy relay cannot speak to (a SOCKS one). An OSError, not
    aiohttp's: this module is imported where no HTTP is sent (`relay check`), and what catches
    a failed connection (OSError with aiohttp's errors) catches it too."""


class Proxies:
    """The proxy each URL goes through, as the environment says (see the module)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        """`environ`: scheme → proxy URL and "no" → NO_PROXY, as urllib reads them."""
        self._by_scheme = {
            k: v if "://" in v else f"http://{v}" for k, v in environ.items() if k != "no"
        }
        no_proxy = [entry.strip() for entry in environ.get("no", "").split(",")]
        self._environ = {**environ, "no": ",".join(_names(no_proxy))}
        self._blocks = _blocks(no_proxy)
        self._known: dict[tuple[str, str, int | None], str | None] = {}

    @classmethod
    def from_env(cls) -> Proxies:
        return cls(urllib.request.getproxies_environment())

    def for_url(self, url: str) -> str | None:
        """The proxy to send `url` through: its scheme's, unless NO_PROXY lists its host."""
        if not self._by_scheme:
            return None
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        key = (parts.scheme.lower(), parts.hostname or "", port)
        if key not in self._known:
            self._known[key] = self._choose(key[0], parts)
        proxy = self._known[key]
        if proxy is not None and not _speakable(proxy):
            raise UnsupportedProxy(_unsupported(proxy))
        return proxy

    def problems(self) -> list[str]:
        """What to warn of at start: each proxy variable relay cannot use."""
        return [
            f"{scheme.upper()}_PROXY: {_unsupported(proxy)}"
            for scheme, proxy in sorted(self._by_scheme.items())
            if scheme in ("http", "https") and not _speakable(proxy)
        ]

    def _choose(self, scheme: str, parts: SplitResult) -> str | None:
        proxy = self._by_scheme.get(scheme)
        return None if proxy is None or self._bypassed(parts) else proxy

    def _bypassed(self, parts: SplitResult) -> bool:
        host = parts.hostname or ""
        with contextlib.suppress(ValueError):
            if parts.port is not None and _bypass(f"{host}:{parts.port}", self._environ):
                return True
        if _bypass(host, self._environ):
            return True
        try:
            address = ipaddress.ip_address(host)
            port = parts.port
        except ValueError:
            return False
        return any(address in net and wanted in (None, port) for net, wanted in self._blocks)


def _speakable(proxy: str) -> bool:
    return proxy[:8].lower().startswith(("http://", "https://"))


def _unsupported(proxy: str) -> str:
    return f"proxy {origin(proxy)} not supported: relay speaks to http:// and https:// proxies"


def _names(no_proxy: list[str]) -> list[str]:
    """The entries urllib matches: names (Go's `*.example.com` as `.example.com`) and `*`."""
    return [entry[1:] if entry.startswith("*.") else entry for entry in no_proxy if entry]


def _blocks(no_proxy: list[str]) -> list[Block]:
    """The CIDR blocks (`10.0.0.0/8`, `fd00::/8`) and bracketed IPv6 addresses (`[::1]`,
    `[::1]:8080`) NO_PROXY lists; other entries are urllib's to match."""
    out: list[Block] = []
    for entry in no_proxy:
        with contextlib.suppress(ValueError):
            if "/" in entry:
                out.append((ipaddress.ip_network(entry, strict=False), None))
            elif entry.startswith("["):
                address, _, port = entry[1:].partition("]")
                out.append((ipaddress.ip_network(address), int(port[1:]) if port else None))
    return out


def proxy_answered(status: int) -> str:
    """A proxy's refusal in words: its 407 (credentials) or its answer to CONNECT. Not the
    receiver's: the fix is in HTTP(S)_PROXY, so it is retried (a restart with it fixed)."""
    return f"proxy answered HTTP {status}"


MAX_HOST_CHARS = 253  # the longest DNS name


def origin(location: str | None) -> str:
    """scheme://host[:port] of a redirect's target: enough to fix a URL, without the path,
    query or user-info of the URL it points to (they may hold a token)."""
    try:
        url = urlsplit(location or "")
        host, port = url.hostname, url.port
    except ValueError:
        return ""
    if not url.scheme or not host or len(host) > MAX_HOST_CHARS:  # no host: noise, not a hint
        return ""
    host = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{host}" + (f":{port}" if port is not None else "")


class _Lookups:
    """What aiohttp's ThreadedResolver asks of its loop (getaddrinfo, getnameinfo), each call
    in a daemon thread of its own instead of asyncio's default executor. That executor has
    few threads (6 on 2 cores) and other work (the metrics' render, a reload's compile): a DNS
    server slow to answer held each for its 5-30 s, ten such hosts held them all, and sends to
    hosts it answered at once timed out waiting for a thread; at exit, Python waited for every
    lookup still running (40 s after SIGTERM). A daemon thread is not waited for, and the
    connector asks once per host at a time (aiohttp shares one lookup, and caches it 60 s)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        return await self._in_thread(socket.getaddrinfo, *args, **kwargs)

    async def getnameinfo(self, *args: Any) -> Any:
        return await self._in_thread(socket.getnameinfo, *args)

    async def _in_thread(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await in_own_thread(self._loop, call, *args, **kwargs)


async def in_own_thread(
    loop: asyncio.AbstractEventLoop, call: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """`call(*args, **kwargs)` in a daemon thread of its own, for a name lookup that may take
    seconds (see _Lookups): asyncio's default executor is neither held by it nor waited for."""
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the send was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def look_up() -> None:
        try:
            result, error = call(*args, **kwargs), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=look_up, name="relay-dns", daemon=True).start()
    return await future


def new_resolver() -> aiohttp.ThreadedResolver:
    """aiohttp's resolver, looking names up in threads of their own (_Lookups)."""
    import aiohttp  # noqa: PLC0415 (here: `relay check` reads this module and no aiohttp)

    loop = asyncio.get_running_loop()
    return aiohttp.ThreadedResolver(loop=_Lookups(loop))  # type: ignore[arg-type]


AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]  # socket.getaddrinfo's rows
ADDRESSES_TTL_S = 60.0  # as the HTTP channels' connector keeps its answers (ttl_dns_cache)


class HostAddresses:
    """Host name → addresses for the connections aiohttp does not make (SMTP), as
    new_resolver looks them up for those it does: in a thread of its own (_Lookups), one
    lookup per host and port at a time (the callers that come meanwhile share it), each answer
    kept ADDRESSES_TTL_S. An address written as such (`127.0.0.1`, `::1`) is no lookup."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[AddrInfo]]] = {}

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses of `host`, TCP, in the order the system gives them; raises
        socket.gaierror as getaddrinfo does."""
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host)
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        key = (host, port)
        known = self._known.get(key)
        if known is not None and self._clock() < known[0]:
            return known[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._look_up(host, port))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(pending)  # a caller's timeout leaves it to the others

    def _settled(self, key: tuple[str, int], done: asyncio.Future[list[AddrInfo]]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # read: every caller may have timed out meanwhile

    async def _look_up(self, host: str, port: int) -> list[AddrInfo]:
        lookups = _Lookups(asyncio.get_running_loop())
        rows = await lookups.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        self._known[(host, port)] = (self._clock() + ADDRESSES_TTL_S, rows)
        return list(rows)
