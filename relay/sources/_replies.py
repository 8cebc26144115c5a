"""What every handler of relay's HTTP API answers with and how it reads a request: JSON
answers and errors, the bearer-token check, and a body read under its size limit, its
content codings undone, within its time and the in-flight budget."""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import Any

import orjson
from aiohttp import hdrs, web
from pydantic import SecretStr

from relay.errors import InputError
from relay.sources._body import (
    ACCEPT_ENCODING,
    CorruptBody,
    UnsupportedCoding,
    codings,
    decode,
)
from relay.sources._budget import Hold

BUSY_RETRY_AFTER_S = "1"  # bodies in flight are answered within moments


# a response's own rejection reason (metrics), where its status says another
REJECTION = web.ResponseKey("rejection", str)


BODY_TIMEOUT_S = 60.0


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": _utf8(message)}
    if field is not None:
        body["field"] = _utf8(field)
    return json_response(body, status, headers)


# the `field` of a 400 that blames no one field: the body as a whole (InputError's "")
WHOLE_BODY = ""


def bad_input(exc: InputError) -> web.Response:
    """400 for a body or query that has the wrong shape: `field` names where (a JSON path like
    `[3].tags[0]`), WHOLE_BODY when the body as a whole is wrong (not JSON, not an object)."""
    return error(400, exc.message, exc.field)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str) -> str:
    """`text` with what a client sent quoted in it fit for JSON: aiohttp hands a header's
    bytes that are not UTF-8 over as surrogates, which orjson refuses (a 500 for an odd
    `Content-Encoding` or `Expect`); each reads as U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


BEARER_CHALLENGE = 'Bearer realm="relay"'  # RFC 6750 §3


def unauthorized(request: web.Request) -> web.Response:
    """401 with the challenge every 401 must carry (RFC 9110 §15.5.2): RFC 6750's Bearer, and
    `error="invalid_token"` when a bearer token was sent and is wrong (§3.1; none when the
    request had none). The connection closes, so that a refused body is not read."""
    challenge = BEARER_CHALLENGE + (', error="invalid_token"' if _bearer_token(request) else "")
    return closing(
        error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": challenge})
    )


def authorized(request: web.Request, token: SecretStr | None) -> bool:
    if token is None:
        return True
    given = _bearer_token(request)
    if not given:
        return False
    # surrogateescape: a header that is not UTF-8 is compared as the bytes it was (not a 500)
    given_bytes = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given_bytes, token.get_secret_value().encode())


def _bearer_token(request: web.Request) -> str:
    """The token of the request's `Authorization: Bearer ...`, else ''."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


async def read_limited(
    request: web.Request, limit: int, hold: Hold | None = None
) -> bytes | web.Response:
    """The body with its content codings undone, or the error to answer: 413 when it is larger
    than `limit` (streamed or decoded), 400 for a body its coding cannot undo, 408 when it has
    not arrived within BODY_TIMEOUT_S (a slow client cannot hold a handler), 503 when its bytes
    (declared, streamed or decoded) found no room in the `hold`'s budget within its wait
    (sources/_budget). A refused body is not read further, and the connection then closes.
    Call it once `refuse_declared` (every handler's refusal, which also answers
    `Expect: 100-continue`) let the headers through."""
    applied = content_codings(request)
    if hold is not None and not await hold.cover(request.content_length or 0):
        return busy()
    body = await _read_raw(request, limit, hold)
    if isinstance(body, web.Response):
        return body
    try:
        decoded = decode(body, applied, limit)
    except CorruptBody as exc:
        return error(400, f"body is not valid {exc} (Content-Encoding)", WHOLE_BODY)
    if decoded is None:
        return too_large(limit)
    if hold is not None and not await hold.cover(len(decoded)):
        return busy()
    return decoded


TE_ONLY_CHUNKED = (
    "Transfer-Encoding other than chunked is not supported; send gzip as Content-Encoding"
)


def refuse_declared(request: web.Request, limit: int) -> web.Response | None:
    """The error for a body its headers already rule out (a coding relay does not know, a
    Content-Length over `limit`), else None."""
    if not _chunked_alone(request.headers.get(hdrs.TRANSFER_ENCODING)):
        return closing(error(501, TE_ONLY_CHUNKED))
    try:
        content_codings(request)
    except UnsupportedCoding as exc:
        message = f"Content-Encoding {exc} is not supported; use {ACCEPT_ENCODING} or none"
        return closing(error(415, message, headers={"Accept-Encoding": ACCEPT_ENCODING}))
    declared = request.content_length
    if declared is not None and declared > limit:
        return too_large(limit)
    return None


def _chunked_alone(value: str | None) -> bool:
    """Whether a request's Transfer-Encoding is none or `chunked` alone. aiohttp frames the body
    by the last coding and hands it over with the ones before (`gzip, chunked`) not undone, so
    it would be misread: RFC 9112 §6.1's 501 for a coding the server does not understand."""
    if value is None:
        return True
    return [c.strip(" \t").lower() for c in value.split(",") if c.strip(" \t")] == ["chunked"]


async def _read_raw(request: web.Request, limit: int, hold: Hold | None) -> bytes | web.Response:
    if request.content.is_eof():  # the whole body came with the headers: take it as it is
        return await _buffered(request, limit, hold)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    return too_large(limit)
                if hold is not None and not await hold.cover(size):
                    return busy()
                chunks.append(chunk)
    except TimeoutError:
        return closing(error(408, f"request body not received within {BODY_TIMEOUT_S:g} s"))
    except (web.RequestPayloadError, ConnectionResetError):  # broken chunks, client gone
        return closing(error(400, "request body could not be read", WHOLE_BODY))
    return b"".join(chunks)


async def _buffered(request: web.Request, limit: int, hold: Hold | None) -> bytes | web.Response:
    """A body aiohttp holds whole already (most are: a small one arrives with its headers),
    under the same limits as one read as it streams in, without a timer or a read loop."""
    try:
        body = request.content.read_nowait()
    except (web.RequestPayloadError, ConnectionResetError):
        return closing(error(400, "request body could not be read", WHOLE_BODY))
    if len(body) > limit:
        return too_large(limit)
    if hold is not None and not await hold.cover(len(body)):
        return busy()
    return body


def content_codings(request: web.Request) -> list[str]:
    """The codings the body's `Content-Encoding` lines list (several lines are one list,
    RFC 9110 §5.3), to undo; UnsupportedCoding for one relay does not know."""
    if hdrs.CONTENT_ENCODING not in request.headers:  # most bodies: asked twice a request
        return []
    return codings(",".join(request.headers.getall(hdrs.CONTENT_ENCODING, [])))


def too_large(limit: int) -> web.Response:
    return closing(error(413, f"body larger than {limit} bytes"))


def busy() -> web.Response:
    """503 for a body that found no room under server.max_body_bytes_in_flight in time."""
    message = "too many request bytes in flight; retry later"
    response = closing(error(503, message, headers={"Retry-After": BUSY_RETRY_AFTER_S}))
    response[REJECTION] = "busy"
    return response


def closing(response: web.Response) -> web.Response:
    """The response with `Connection: close`: a refused body is not read into memory; what is
    left of it is discarded for at most aiohttp's lingering time (10 s, as nginx does) so that
    the client reads the answer rather than a reset, then the connection closes."""
    response.force_close()
    return response
