"""Reading a client's request body before (or while) an upstream is asked.

Invariants
- A body is never taken past its limit: `BodyLimit` fails at the first byte over it, and
  `read_body` refuses a declared length over it before reading anything.
- `buffered` reads at most `size` bytes (and the rest of one piece) ahead of the upstream: a
  slow client's body is read before an upstream slot is taken, a large one is streamed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.http.client import Body
from proxy.http.request import Request


class BodyTooLarge(Exception):
    """A request body is larger than `server.max_body_bytes`."""


async def read_body(request: Request, max_body: int) -> bytes:
    """The whole request body, at most `max_body` bytes (else `BodyTooLarge`)."""
    length = request.content_length
    if length is not None and length > max_body:
        raise BodyTooLarge
    if not request.has_body:
        return b""
    limit = BodyLimit(request, max_body)
    try:
        return b"".join([chunk async for chunk in limit.chunks()])
    except ValueError:
        raise BodyTooLarge from None


async def buffered(request: Request, limit: BodyLimit | None, size: int) -> Body:
    """The request body read up to `size` bytes before any upstream is asked: whole, if it ends
    by then; else its first pieces followed by the rest as it comes. Raises `ValueError` when
    it is over `limit` (a chunked body) and the client's `BadRequest` (408) when it stalls."""
    pieces = request.chunks() if limit is None else limit.chunks()
    first: list[bytes] = []
    read = 0
    while read < size:
        try:
            chunk = await anext(pieces)
        except StopAsyncIteration:
            return b"".join(first)
        first.append(chunk)
        read += len(chunk)
    return _Then(b"".join(first), pieces)


class _Then:
    """A body's first pieces read ahead (joined), then the rest as it comes. (This and `_Limited`
    are iterator classes rather than async generators, which mypyc cannot compile.)"""

    def __init__(self, first: bytes, rest: AsyncIterator[bytes]):
        self._first: bytes | None = first
        self._rest = rest

    def __aiter__(self) -> _Then:
        return self

    async def __anext__(self) -> bytes:
        first = self._first
        if first is not None:
            self._first = None
            return first
        return await anext(self._rest)


class BodyLimit:
    """A request body streamed through, failing once it passes `limit` bytes."""

    def __init__(self, request: Request, limit: int):
        self.request, self.limit, self.exceeded = request, limit, False

    def chunks(self) -> AsyncIterator[bytes]:
        return _Limited(self, self.request.chunks())


class _Limited:
    """`BodyLimit.chunks`: the request's pieces, `ValueError` once past the limit."""

    def __init__(self, limit: BodyLimit, pieces: AsyncIterator[bytes]):
        self._limit, self._pieces, self._seen = limit, pieces, 0

    def __aiter__(self) -> _Limited:
        return self

    async def __anext__(self) -> bytes:
        chunk = await anext(self._pieces)
        self._seen += len(chunk)
        if self._seen > self._limit.limit:
            self._limit.exceeded = True
            raise ValueError("request body too large")
        return chunk
