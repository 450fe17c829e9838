"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections on asyncio protocols,
answers parsed by llhttp (through httptools).

It does what a proxy needs and nothing else: no redirects, cookies, decompression or header
normalisation; bodies pass through as bytes, both ways, with flow control.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

READ_HIGH_WATER = 256 * 1024  # pause reading from the upstream above this much unread answer
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class UpstreamError(Exception):
    """An exchange failed: `reason` is connect, timeout, reset or protocol."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


Body = bytes | AsyncIterable[bytes] | None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._writable = asyncio.Event()
        self._writable.set()
        self._timer: asyncio.TimerHandle | None = None  # checks the head deadline; lazily re-armed
        self._timer_at = 0.0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # as received
        self.content_length: int | None = None
        self.keep_alive = False
        self.complete = False
        self.received = False  # any byte of an answer
        self.sent = False  # the whole request went out (not cut short by an early answer)
        self._head: asyncio.Future[None] = self._loop.create_future()
        self._head_deadline = 0.0  # loop time by which the head must be in; 0: no exchange
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("protocol", "the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("protocol", f"bad upstream answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()
        if not self.complete and self._delimited_by_close():
            self.complete = True  # an answer without length or chunks ends when the line closes
            self._wake()
        if not self.complete:
            self._fail(UpstreamError("reset", "the upstream closed the connection"))

    def _delimited_by_close(self) -> bool:
        if not self._head.done() or self._head.exception() is not None or self._error:
            return False
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            self.content_length = int(value)  # llhttp accepts digits only
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim answer (100 Continue, 103 Early Hints): skip it
            self.content_length = None
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.complete = True
        self._wake()

    # --- exchange -----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a failure before the head is raised by `head`
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> bool:
        """Write `data`; False when the upstream's side is full (wait for `writable` then)."""
        assert self.transport is not None
        if self.closed:
            raise UpstreamError("reset", "the upstream closed the connection")
        self.transport.write(data)
        return self._writable.is_set()

    async def drained(self) -> None:
        """Wait until the upstream's side takes more, or the upstream has answered (it may not
        read the rest of a body it has answered)."""
        if self._writable.is_set() or self._head.done():
            return
        writable = self._loop.create_task(self._writable.wait())
        try:
            await asyncio.wait((writable, self._head), return_when=asyncio.FIRST_COMPLETED)
        finally:
            writable.cancel()

    async def write(self, data: bytes) -> None:
        """Write `data`, then wait while the upstream's side is full."""
        if not self.send(data):
            await self.drained()

    @property
    def head(self) -> asyncio.Future[None]:
        """Done when the answer's head is in (or with the failure that came instead)."""
        return self._head

    def expect_head_by(self, deadline: float) -> None:
        """Fail the exchange if the answer's head is not in by `deadline` (loop time).

        One timer per connection, re-armed only when it fires early: cheaper than a timer per
        request (a request sets a number)."""
        self._head_deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._check_head)

    def _check_head(self) -> None:
        self._timer = None
        if self.closed or self._head_deadline == 0.0 or self._head.done():
            return  # idle, or the head came: nothing to watch until the next exchange
        if self._loop.time() >= self._head_deadline:
            self._fail(UpstreamError("timeout", "the upstream did not answer in time"))
        else:
            self._timer_at = self._head_deadline
            self._timer = self._loop.call_at(self._head_deadline, self._check_head)

    def next_chunk(self) -> bytes | None:
        """The next piece of the body if one is here: b"" at its end, None to wait for more."""
        if self._chunks:
            data = self._chunks.popleft()
            self._buffered -= len(data)
            if self._buffered <= READ_HIGH_WATER // 2 and self.transport is not None:
                self.transport.resume_reading()
            return data
        if self.complete:
            return b""
        if self._error is not None:
            raise self._error
        return None

    def take_all(self) -> bytes:
        """Every piece of the body received so far, joined."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self.transport is not None:
            self.transport.resume_reading()
        return data

    async def more(self) -> None:
        """Wait until the body has more, ends, or fails."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def answered(self) -> bool:
        """Whether the answer's head is in (a failure before it does not count)."""
        return self._head.done() and self._head.exception() is None

    def finish(self, reusable: bool) -> None:
        """End the exchange: back to the pool when it may carry another, else closed."""
        if reusable and self.complete and self.keep_alive and self.sent and not self.closed:
            self._reset_exchange()
            self._parser = httptools.HttpResponseParser(self)
            self.pool.put(self)
        elif self.transport is not None:
            self.closed = True
            self.transport.close()


class Answer:
    """An upstream's answer: status, headers, and a body read with `chunks` or `read`."""

    def __init__(self, connection: _Connection, method: str):
        self._connection = connection
        self.status = connection.status
        self.reason = connection.reason
        self.headers = connection.headers
        self.content_length = connection.content_length
        self._head_only = method == "HEAD" or self.status in (204, 304)

    async def chunks(self, idle_timeout: float, deadline: float) -> AsyncIterator[bytes]:
        """The body as it arrives. `idle_timeout` bounds the silence between two pieces, and
        `deadline` (`time.monotonic()`) the whole answer."""
        if self._head_only:
            return
        connection = self._connection
        while True:
            data = connection.next_chunk()
            if data is None:  # nothing here yet: wait, but not for ever
                wait = min(idle_timeout, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(wait):
                        await connection.more()
                except TimeoutError:
                    raise UpstreamError("timeout", "the upstream did not answer in time") from None
                continue
            if not data:
                return
            yield data

    async def read(self, idle_timeout: float, deadline: float) -> bytes:
        """The whole body."""
        if self._head_only:
            return b""
        if self._connection.complete:  # all here already: no need to wait
            return self._connection.take_all()
        return b"".join([chunk async for chunk in self.chunks(idle_timeout, deadline)])

    @property
    def complete(self) -> bool:
        """Whether the whole answer was received."""
        return self._head_only or self._connection.complete

    def release(self) -> None:
        """Done with the answer: a fully read answer's connection is reused."""
        # A HEAD answer's connection is not reused: the parser would wait for a body.
        self._connection.finish(reusable=self.complete and not self._head_only)


class Pool:
    """Idle keep-alive connections to one upstream origin."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None):
        self.host, self.port, self.tls = host, port, tls
        self._idle: list[_Connection] = []

    def put(self, connection: _Connection) -> None:
        connection.reused = True
        self._idle.append(connection)

    def idle(self) -> _Connection | None:
        """An idle connection, if one is open."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        return None

    async def connect(self, connect_timeout: float) -> _Connection:
        """A new connection."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            raise UpstreamError("connect_timeout", "cannot connect in time") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect: {exc.strerror or exc}") from None
        return protocol

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()


class Origin:
    """A parsed upstream base URL: where to connect, the Host header, a path prefix, and for
    https the authorities that may vouch for its certificate (`ca_file`, else the system's)."""

    def __init__(self, url: str, ca_file: str | None = None):
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.ca_file = ca_file
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default else f"{host}:{self.port}"
        try:
            host_bytes = self.host_header.encode("idna")  # an IDN host as punycode
        except UnicodeError:
            host_bytes = self.host_header.encode("utf-8", "surrogateescape")
        self.host_line = b"Host: %s\r\n" % host_bytes
        self.prefix = parts.path.rstrip("/")
        self.raw_prefix = self.prefix.encode("utf-8", "surrogateescape")


class UpstreamClient:
    """Sends requests to upstreams over pooled keep-alive connections."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int, bool, str | None], Pool] = {}

    def _pool(self, origin: Origin) -> Pool:
        key = (origin.host, origin.port, origin.tls, origin.ca_file)
        pool = self._pools.get(key)
        if pool is None:
            tls = ssl.create_default_context(cafile=origin.ca_file) if origin.tls else None
            pool = self._pools[key] = Pool(origin.host, origin.port, tls)
        return pool

    async def request(
        self,
        origin: Origin,
        method: str,
        *,
        target: bytes,
        headers: bytes,
        body: Body,
        content_length: int | None,
        connect_timeout: float,
        first_byte_timeout: float,
    ) -> Answer:
        """Send a request and wait for the answer's head.

        `first_byte_timeout` bounds sending the request and waiting for the answer's head.
        `target` is the path and query, sent as given; `headers` are header lines (``Name: value``
        and CRLF each) that must not frame the body: this sets Content-Length (or chunked
        encoding for a body of unknown length). A request whose reused connection turns out to be
        closed is sent once more on a new connection when its body can be sent again (none, or
        bytes).
        """
        if isinstance(body, bytes):
            framing = b"Content-Length: %d\r\n" % len(body)
        elif body is not None:
            framing = (
                b"Transfer-Encoding: chunked\r\n"
                if content_length is None
                else b"Content-Length: %d\r\n" % content_length
            )
        else:
            framing = b"" if method in BODYLESS_METHODS else b"Content-Length: 0\r\n"
        head = b"%s %s%s HTTP/1.1\r\n%s%s%s\r\n" % (
            method.encode("latin-1"),
            origin.raw_prefix,
            target,
            origin.host_line,
            framing,
            headers,
        )
        pool = self._pool(origin)
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            connection = pool.idle() or await pool.connect(connect_timeout)
            connection.expect_head_by(loop.time() + first_byte_timeout)
            try:
                if body is None or isinstance(body, bytes):
                    if not connection.send(head + body if body else head):
                        await connection.drained()
                    connection.sent = True
                else:
                    await self._stream(connection, head, body, content_length)
                await connection.head
            except UpstreamError as exc:
                if connection.answered():
                    # The upstream answered, then closed while the body was still on its way
                    # (a 413, a 401): its answer is the one to pass on.
                    return Answer(connection, method)
                connection.finish(reusable=False)
                stale = connection.reused and not connection.received and exc.reason == "reset"
                if attempt == 0 and stale and not isinstance(body, AsyncIterable):
                    continue  # the upstream had closed this idle connection: try a fresh one
                raise
            except BaseException:
                connection.finish(reusable=False)
                raise
            return Answer(connection, method)
        raise AssertionError("unreachable")

    @staticmethod
    async def _stream(
        connection: _Connection, head: bytes, body: AsyncIterable[bytes], content_length: int | None
    ) -> None:
        """Send the head, then the body as it comes, until it ends or the upstream answers."""
        await connection.write(head)
        chunked = content_length is None
        async for chunk in body:
            if connection.answered():
                return  # answered before the whole body went: the rest is not sent
            if chunk:
                await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if connection.answered():
            return
        if chunked:
            await connection.write(b"0\r\n\r\n")
        connection.sent = True

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
