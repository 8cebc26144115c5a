"""A failed HTTP connection or exchange in words that name no URL, for every outbound client:
the channels' shared client (relay.channels._http) and the Realtime feeds
(relay.sources._follower), which say a failure alike and neither of which may import the
other's private modules."""

from __future__ import annotations

import aiohttp

from relay.errors import tls_failure, wire_failure
from relay.outbound import UnsupportedProxy


def transport_words(exc: BaseException) -> str:
    """A failed connection or exchange in words that name no URL ("connection refused",
    "TLS: certificate not trusted"), prefixed "proxy: " when it was the proxy's connection
    that failed: an operator looked at the receiver while HTTP(S)_PROXY named a proxy that was
    down."""
    if isinstance(exc, UnsupportedProxy):
        return str(exc)
    words = tls_failure(exc) or wire_failure(exc) or _payload_failure(exc) or type(exc).__name__
    return f"proxy: {words}" if isinstance(exc, aiohttp.ClientProxyConnectionError) else words


def _payload_failure(exc: BaseException) -> str | None:
    """A body that broke off (the connection closed before its Content-Length or last chunk)
    or whose coding cannot be undone: aiohttp says only "ClientPayloadError"."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer cut short or not decodable"
    return None
