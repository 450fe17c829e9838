"""A lean HTTP/1.1 server for the data plane: requests parsed by llhttp (through httptools) on
asyncio protocols, answers written straight to the socket.

It does what a proxy's listener needs: keep-alive and pipelining (answered in order), request
bodies streamed with flow control, `100-continue` sent when the body is first read, answers of
known length, chunked or (for HTTP/1.0) delimited by closing, limits on the request head, an
idle timeout, handler cancellation when the client goes away, and a graceful drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import cast
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger("grayscale.listener")

MAX_TARGET = 16 * 1024  # request line target: longer is 414
MAX_FIELD = 16 * 1024  # one header line: longer is 431
MAX_HEAD = 64 * 1024  # the whole request head: larger is 431
READ_HIGH_WATER = 256 * 1024  # pause reading from the client above this much unread body
KEEPALIVE_TIMEOUT = 75.0  # an idle connection (or a request head never finished) is closed
BODY_TIMEOUT = 60.0  # longest wait for the next piece of a request body (nginx's default too)
LINGER = 2.0  # after an answer sent before its request body was read, how long to drain it

Handler = Callable[["Request"], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]  # names and values as received

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_ENCODED_SLASH = re.compile("%2[fF]")
_NO_BODY_STATUS = frozenset({204, 304})


def render(headers: list[tuple[str, str]]) -> bytes:
    """Header lines as sent: ``Name: value`` and CRLF, each."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode(
        "utf-8", "surrogateescape"
    )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class BadRequest(Exception):
    """A request refused with a 4xx: a malformed or oversized head (before any handler sees
    it), or a body that turns out malformed or stops arriving (while a handler reads it)."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class ClientGone(ConnectionResetError):
    """The client closed the connection."""


def routing_path(target: str) -> str:
    """The path a request is routed by: percent-decoded (except encoded slashes), dot segments
    resolved, without the query. The target is forwarded as received."""
    path = target.partition("?")[0]
    if not path.startswith("/"):
        # absolute-form (http://host/path) or `*`
        try:
            parsed = httptools.parse_url(target.encode("utf-8", "surrogateescape"))
        except httptools.HttpParserInvalidURLError:
            return ""  # CONNECT's authority-form: no path to route by
        path = _text(parsed.path or b"")
    if "%" in path:
        path = "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(path))
    if "/." in path:
        trailing = path.endswith(("/", "/.", "/.."))
        path = posixpath.normpath(path).replace("//", "/")
        path = path + "/" if trailing and path != "/" else path
    return path


class _Clock:
    """The Date header's value, formatted at most once a second."""

    second = -1
    value = ""

    @classmethod
    def date(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, formatdate(now, usegmt=True)
        return cls.value


class Request:
    """One request on a connection: its head, its body (read once, as it arrives), and the
    methods that answer it (`reply` whole, or `start`, `write`... `end`)."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_continue",
        "_cookies",
        "_error",
        "_framing",
        "_index",
        "_query",
        "_waiter",
        "body_bytes",
        "body_complete",
        "content_length",
        "done",
        "has_body",
        "keep_alive",
        "keys",
        "method",
        "path",
        "raw_headers",
        "raw_target",
        "remote",
        "started",
        "status",
        "target",
        "version",
    )

    def __init__(
        self,
        connection: _Connection,
        method: str,
        target: bytes,
        *,
        version: str,
        headers: RawHeaders,
        keep_alive: bool,
    ):
        self._connection = connection
        self.method = method
        self.raw_target = target  # path and query, as received
        self.target = _text(target)
        self.version = version
        self.raw_headers = headers
        self.keep_alive = keep_alive
        self.remote = connection.remote
        self.path = routing_path(self.target)
        self.keys = [name.lower() for name, _ in headers]  # header names, lower case, in order
        index: dict[bytes, bytes] = {}
        for key, (_, value) in zip(self.keys, headers, strict=True):
            if key not in index:
                index[key] = value
        self._index = index
        chunked = b"transfer-encoding" in index and any(
            b"chunked" in value.lower() for value in self.raw_values(b"transfer-encoding")
        )
        length = index.get(b"content-length")  # llhttp accepts digits only, and one length
        self.content_length = None if chunked or length is None else int(length)
        self.has_body = chunked or bool(self.content_length)
        expect = index.get(b"expect", b"").lower() == b"100-continue"
        self._continue = expect and self.has_body and version == "1.1"
        self._query: dict[str, str] | None = None
        self._cookies: dict[str, str] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.body_complete = not self.has_body
        self.body_bytes = 0
        self.started = False  # the answer's head was sent
        self.done = False  # the whole answer was sent
        self.status = 0
        self._framing = ""  # how the answer's body is sent: "length", "chunked" or "close"

    # --- what the request says ----------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        value = self._index.get(name.lower().encode("latin-1"))
        return None if value is None else _text(value)

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [_text(value) for value in self.raw_values(name.lower().encode("latin-1"))]

    def raw_values(self, key: bytes) -> list[bytes]:
        """Every value of the header whose lower-case name is `key`, as received."""
        if key not in self._index:
            return []
        pairs = zip(self.keys, self.raw_headers, strict=True)
        return [value for k, (_, value) in pairs if k == key]

    def query(self, name: str) -> str | None:
        """The first value of query parameter `name`, or None."""
        if self._query is None:
            self._query = {}
            for key, value in parse_qsl(self.target.partition("?")[2], keep_blank_values=True):
                self._query.setdefault(key, value)
        return self._query.get(name)

    def cookie(self, name: str) -> str | None:
        """The value of cookie `name`, or None."""
        if self._cookies is None:
            self._cookies = {}
            for header in self.header_values("cookie"):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(header)
                except CookieError:
                    continue
                for key, morsel in jar.items():
                    self._cookies.setdefault(key, morsel.value)
        return self._cookies.get(name)

    @property
    def raw_host(self) -> bytes | None:
        """The Host header, as received."""
        return self._index.get(b"host")

    # --- the body -----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self._connection.discarding:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish_body(self, error: Exception | None = None) -> None:
        if error is None:
            self.body_complete = True
        elif not self.body_complete and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (once: the pieces are not kept)."""
        if self._continue:
            self._continue = False
            self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        loop = asyncio.get_running_loop()
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered <= READ_HIGH_WATER // 2:
                    self._connection.resume_reading()
                yield data
            elif self.body_complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(self._connection.listener.body_timeout):
                        await self._waiter
                except TimeoutError:
                    raise BadRequest(
                        408, "request_timeout", "the request body stopped arriving"
                    ) from None
                finally:
                    self._waiter = None

    async def read(self) -> bytes:
        """The whole body."""
        if self.body_complete and not self._continue:  # all here already: no need to wait
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            self._connection.resume_reading()
            return data
        return b"".join([chunk async for chunk in self.chunks()])

    # --- the answer ---------------------------------------------------------------------------

    def _head(
        self, status: int, reason: bytes, headers: bytes, framing: bytes, keep: bool
    ) -> bytes:
        keep = keep and self._connection.keeps_alive(self)
        self.started, self.status = True, status
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"")), headers]
        parts.append(framing)
        if not keep:
            parts.append(b"Connection: close\r\n")
            self.keep_alive = False
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def reply(self, status: int, headers: bytes, body: bytes, reason: bytes = b"") -> None:
        """Send a whole answer. `headers` are rendered lines (see `render`) that do not frame the
        body: Content-Length is set here."""
        if status in _NO_BODY_STATUS:
            self._connection.write(self._head(status, reason, headers, b"", True))
        else:
            framing = b"Content-Length: %d\r\n" % len(body)
            head = self._head(status, reason, headers, framing, True)
            self._connection.write(head + body if self.method != "HEAD" else head)
        self.done = True

    def reply_json(self, status: int, document: object, headers: bytes = b"") -> None:
        """Send a JSON answer made here (with a Date header); `headers` are more rendered lines."""
        ours = render(
            [("Content-Type", "application/json; charset=utf-8"), ("Date", _Clock.date())]
        )
        self.reply(status, headers + ours, json.dumps(document).encode())

    def start(self, status: int, headers: bytes, length: int | None, reason: bytes = b"") -> None:
        """Send the head of an answer whose body follows through `write`: `length` bytes, or
        of unknown length (chunked, or up to the close for an HTTP/1.0 client). `headers` are
        rendered lines that do not frame the body."""
        keep = True
        if self.method == "HEAD" or status in _NO_BODY_STATUS:
            framing = b"" if length is None else b"Content-Length: %d\r\n" % length
            self._framing = "none"
        elif length is not None:
            framing, self._framing = b"Content-Length: %d\r\n" % length, "length"
        elif self.version == "1.1":
            framing, self._framing = b"Transfer-Encoding: chunked\r\n", "chunked"
        else:
            framing, self._framing, keep = b"", "close", False
        self._connection.write(self._head(status, reason, headers, framing, keep))

    async def write(self, data: bytes) -> None:
        """Send a piece of the answer's body; waits while the client reads slower."""
        if not data or self._framing == "none":
            return
        if self._framing == "chunked":
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._connection.send(data)

    def end(self) -> None:
        """The answer's body is complete."""
        if self._framing == "chunked":
            self._connection.write(b"0\r\n\r\n")
        self.done = True

    def abort(self) -> None:
        """Cut the client connection: an answer that cannot be completed must look incomplete."""
        self.keep_alive = False
        self._connection.close()


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one after the other."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closed = False
        self.discarding = False  # dropping the rest of an answered request's body
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()  # parsed, not yet answered; the first in progress
        self._parsing: Request | None = None  # the request whose body is arriving
        self._task: asyncio.Task[None] | None = None  # answers this connection's requests
        self._next: asyncio.Future[None] | None = None  # set while waiting for a request
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._upgraded = False
        self._refused: BadRequest | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._in_head = False
        self._head_size = 0
        self._target = bytearray()
        self._headers: RawHeaders = []

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are only alike
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.listener.connections.add(self)
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self.listener.keepalive_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or self._refused is not None:
            return
        in_head = self._in_head  # a head begun in an earlier read: count this read against it
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded = True  # not supported: the request is answered, then the line closed
            self.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if not isinstance(refused, BadRequest):
                raise
            self._refuse(refused)
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(400, "bad_request", f"malformed request: {exc}"))
        else:
            if in_head and self._in_head:
                self._head_size += len(data)
                if self._head_size > MAX_HEAD:
                    self._refuse(BadRequest(431, "head_too_large", "the request head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        self._cancel_timer()
        if self._parsing is not None:
            self._parsing._finish_body(ClientGone("the client closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._task is not None:
            self._task.cancel()  # nobody is left to answer: stop the work for this request

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head, self._head_size = True, 0
        self._target.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._target += url
        if len(self._target) > MAX_TARGET:
            raise BadRequest(414, "uri_too_long", "the request target is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._head_size += size
        if size > MAX_FIELD or self._head_size > MAX_HEAD:
            raise BadRequest(431, "header_too_large", "a request header is too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        request = Request(
            self,
            parser.get_method().decode("latin-1"),
            bytes(self._target),
            version=parser.get_http_version(),
            headers=self._headers,
            keep_alive=parser.should_keep_alive(),
        )
        self._parsing = request
        self._queue.append(request)
        if len(self._queue) > 1:
            self.pause_reading()  # pipelined: one answer at a time, in order
        elif self._next is not None:
            self._next.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing._finish_body()
            self._parsing = None
        if self.discarding:
            self.close()  # the unread body is over: the answer has been sent, close now

    # --- answering ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer the queued requests in order; between them, wait for the next one."""
        try:
            while True:
                while self._queue:
                    request = self._queue[0]
                    await self._answer(request)
                    self._queue.popleft()
                    if self.closed:
                        return
                    if not request.keep_alive:
                        self._linger_or_close(request)
                        return
                    self.resume_reading()
                if self._refused is not None:
                    self._send_refusal()
                    return
                if self.listener.closing:
                    self.close()
                    return
                self._idle_since = self._loop.time()
                self._next = self._loop.create_future()
                try:
                    await self._next
                finally:
                    self._next = None
        except (asyncio.CancelledError, ClientGone):
            return  # the client left, or the drain is over
        finally:
            self._task = None

    async def _answer(self, request: Request) -> None:
        try:
            await self.listener.handler(request)
        except (asyncio.CancelledError, ClientGone):
            raise
        except BadRequest as exc:  # the request's body turned out malformed, or stalled
            if not request.started:
                request.reply_json(exc.status, {"error": exc.error, "message": exc.message})
            else:
                request.abort()
            return
        except Exception:
            log.exception("unexpected error answering %s", request.method)
            if not request.started:
                request.reply_json(500, {"error": "internal", "message": "internal proxy error"})
            else:
                request.abort()
            return
        if not request.started:
            request.reply_json(500, {"error": "internal", "message": "no answer was made"})
        elif not request.done:
            request.abort()

    def keeps_alive(self, request: Request) -> bool:
        """Whether the connection stays open after `request`'s answer."""
        return (
            request.keep_alive
            and request.body_complete
            and not self.listener.closing
            and not self._upgraded
            and self._refused is None
        )

    def _linger_or_close(self, request: Request) -> None:
        waits_for_continue = request._continue and request.body_bytes == 0
        if request.body_complete or waits_for_continue or self._refused is not None:
            self.close()  # nothing more to read, or a client that sends nothing until told
            return
        # The answer went out before the body was read: read and drop the rest for a moment,
        # so that closing does not reset the connection before the client has the answer.
        self.discarding = True
        self.resume_reading()
        self._loop.call_later(LINGER, self.close)

    def _refuse(self, refused: BadRequest) -> None:
        self._refused = refused
        self.pause_reading()
        if self._parsing is not None:
            self._parsing._finish_body(BadRequest(400, "bad_request", refused.message))
        if self.idle:
            self._send_refusal()

    def _send_refusal(self) -> None:
        refused = self._refused
        assert refused is not None
        log.info("request refused (%d): %s", refused.status, refused.message)
        body = json.dumps({"error": refused.error, "message": refused.message}).encode()
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (refused.status, _REASONS[refused.status], len(body), body)
        )
        self.close()

    # --- transport ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """Queue bytes for the client."""
        if self.closed or self.transport is None:
            raise ClientGone("the client closed the connection")
        self.transport.write(data)

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client's side is full."""
        self.write(data)
        if self._writable is not None:
            await self._writable
            if self.closed:
                raise ClientGone("the client closed the connection")

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed and not self._upgraded:
            self._paused = False
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        """No request is being answered."""
        return self._task is None or self._next is not None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        """Close the connection if it has been idle (or sending one head) for too long."""
        timeout = self.listener.keepalive_timeout
        left = timeout if not self.idle else self._idle_since + timeout - self._loop.time()
        if left <= 0:
            self.close()
        elif not self.closed:
            self._timer = self._loop.call_later(left, self._expire)

    def close(self) -> None:
        """Close the connection (after what was written is sent)."""
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def cancel(self) -> None:
        """Stop answering: the drain is over."""
        if self._task is not None:
            self._task.cancel()
        self.close()


class Listener:
    """Serves `handler` on a TCP address until `stop`."""

    def __init__(
        self,
        handler: Handler,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
    ):
        self.handler = handler
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.connections: set[_Connection] = set()
        self.closing = False
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, close idle connections, let answers in progress finish for up to
        `drain_timeout` seconds (each connection closes after its answer), then cut the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + drain_timeout
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
        while True:
            busy = [c._task for c in self.connections if c._task is not None and not c.idle]
            remaining = deadline - asyncio.get_running_loop().time()
            if not busy or remaining <= 0:
                break
            await asyncio.wait(busy, timeout=remaining)
        for connection in list(self.connections):
            connection.cancel()
        await asyncio.sleep(0)  # let the cancelled answers unwind
