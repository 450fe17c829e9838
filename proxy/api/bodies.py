"""Request bodies of the admin API, read within `admin.body_timeout`.

Invariants
- No client holds a handler: a body not whole within the time given raises `BodyLost`, and the
  handler answers with `cut`: `408`, and the connection closed at once (rather than wait, as
  aiohttp would, for the rest of a body that is not coming).
- A body is never read past its limit: a longer one is refused before or as it arrives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy.api.answers import error_response


class BodyLost(Exception):
    """A request body that was not whole within `admin.body_timeout`, or whose client went
    away before sending it all."""


async def cut(request: web.Request) -> web.Response:
    """Answer `408` to a request whose body stopped arriving, and close its connection at once.
    A client that is gone gets nothing, and leaves no traceback."""
    answer = error_response(408, "request_timeout", "the request body stopped arriving")
    answer.force_close()
    try:
        await answer.prepare(request)
        await answer.write_eof()
    except ConnectionError:
        pass  # (aiohttp sees the connection closed, and lets the answer go)
    request.protocol.force_close()  # (what was written is still sent before the close)
    return answer


async def bounded_body(request: web.Request, limit: int, within: float) -> bytes | None:
    """The whole body, or None if it is longer than `limit` bytes. Raises `BodyLost` when it
    is not whole within `within` seconds, or the client went away."""
    if (request.content_length or 0) > limit:
        return None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except (TimeoutError, ConnectionError):
        raise BodyLost from None
    return b"".join(chunks)


async def json_body(
    request: web.Request, within: float
) -> tuple[dict[str, Any], web.Response | None]:
    """The request's JSON object (empty when there is no body), or a 400 answer. Raises
    `BodyLost` when the body is not whole within `within` seconds, or the client went away."""
    if not request.can_read_body:
        return {}, None
    try:
        async with asyncio.timeout(within):
            text = await request.text()  # (at most the application's client_max_size)
        body = json.loads(text)
    except (TimeoutError, ConnectionError):
        raise BodyLost from None
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than Python goes)
        return {}, error_response(400, "bad_request", "the body must be a JSON object")
    if not isinstance(body, dict):
        return {}, error_response(400, "bad_request", "the body must be a JSON object")
    return body, None
