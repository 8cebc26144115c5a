"""Answers of the Realtime API as the follower reads them: the body up to a cap, and the
failure reason and words of what is not an answer (the server's, scrubbed of secrets)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import orjson

from relay.logs import SCRUB


class AnswerTooLarge(Exception):
    """An answer longer than the follower reads (MAX_ANSWER_BYTES): not read to its end."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, decompressed; AnswerTooLarge once it passes `limit` bytes (declared or read)."""
    too_large = AnswerTooLarge(f"answer larger than {limit // (1024 * 1024)} MiB")
    if resp.content_length is not None and resp.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in resp.content.iter_chunked(256 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def error_reason(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else "network"


def status_reason(status: int) -> str:
    """The failure reason of an HTTP status that is not an answer (nor a 409)."""
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "server_error"
    if status == 407:  # a proxy's refusal (an http:// api_url)
        return "network"
    return "auth_error" if status in (401, 403) else "client_error"


def error_text(body: bytes) -> str:
    """The server's words for a refusal, cut short; a secret it echoes (a proxy quoting the
    Authorization header) is scrubbed before the cut, which would leave most of it unmatched."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return SCRUB.scrub(body[:4096].decode("utf-8", "replace"))[:200]
    error = data.get("error") if isinstance(data, dict) else None
    return SCRUB.scrub(str(error)[:4096])[:200] if error is not None else ""
