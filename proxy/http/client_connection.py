"""One client connection of the data plane's HTTP/1.1 server: requests parsed by llhttp (through
httptools) one at a time and answered in order, answers written straight to the socket.

Invariants
- One request at a time per connection. The parser is fed no further than the end of the
  request being answered (see `framing`); what the client sent after it waits unparsed until
  that answer is complete, so pipelined requests are answered in order and a malformed request
  cannot harm the ones before it.
- A handler sees only a head that is valid HTTP/1.x (see `request`): version 1.0 or 1.1 (else
  505); at most MAX_HEAD bytes in all and MAX_FIELDS lines (431), a target of at most MAX_TARGET
  bytes (414). CONNECT is refused (405). `Upgrade` is ignored here (RFC 9110 §7.8): the request
  is served as plain HTTP, its body included, unless its handler switches protocols (a
  WebSocket: `H1Request.switch`); the connection is then a `tunnel.Tunnel`, busy until it ends.
- A refused head is answered (but a TLS handshake, which could not read the answer), then the
  connection closed: nothing after it is parsed. Each refused head is told to the listener's
  `on_refused` once, with its reason.
- Request trailers are read and dropped: never taken for headers.
- A write to a client that stops reading waits at most `send_timeout`; then the connection is
  cut, so a reader that stalls cannot hold its upstream connection.
- A connection closed by us with unread bytes lingers (reads and drops) for LINGER seconds, so
  the client is not reset before it has the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, cast

import httptools

from proxy.http import framing
from proxy.http.errors import BadRequest, ClientGone
from proxy.http.framing import CHUNKED, DONE, LENGTH, MessageBounds
from proxy.http.h2_server import PREFACE, ServerH2Connection
from proxy.http.request import REASONS, H1Request, RawHeaders, answer

if TYPE_CHECKING:
    from proxy.http.listener import Listener

log = logging.getLogger("grayscale.listener")

MAX_TARGET = 16 * 1024  # request line target: longer is 414
MAX_FIELD = 16 * 1024  # one header line: longer is 431
MAX_HEAD = 64 * 1024  # the whole request head, every byte: larger is 431
MAX_FIELDS = 100  # header lines in a head (or trailer lines): more is 431
HOLD_HIGH_WATER = 64 * 1024  # pause reading above this much sent ahead of the answer in progress
LINGER = 2.0  # after an answer sent before its request body was read, how long to drain it


# A head that carries the body of an Upgrade request to a fresh parser (see `_after_upgrade`).
_BODY_HEADS = {
    LENGTH: b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
    CHUNKED: b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
}


TLS_RECORD = b"\x16\x03"  # how a TLS handshake opens (a ClientHello): no HTTP method does
_TLS = "tls_on_clear_text"  # the refusal of a TLS handshake, which is closed, never answered
# The reason a refused head is told to `Listener.on_refused` under, by its error ("malformed"
# for any other; "http2" for the HTTP/2 preface, whatever its error).
_REASONS = {
    _TLS: "tls",
    "http_version_not_supported": "version",
    "method_not_allowed": "method",
    "uri_too_long": "too_large",
    "header_too_large": "too_large",
    "head_too_large": "too_large",
    "too_many_headers": "too_large",
}


def _refusal(
    exc: httptools.HttpParserError, raised: Exception | None, method: bytes, fed: bytes
) -> BadRequest:
    """What to answer a request the parser failed on (`raised`: what a callback raised, a
    `BadRequest`, or None for a malformed request), `fed` the bytes it was given from the
    request's start on; an exception of ours that was not one is a bug, raised again."""
    if isinstance(raised, BadRequest):
        return raised
    if isinstance(exc, httptools.HttpParserCallbackError):
        raise exc
    if isinstance(exc, httptools.HttpParserInvalidMethodError) and fed.startswith(TLS_RECORD):
        return BadRequest(400, _TLS, "a TLS handshake on the clear-text port: use http://")
    if method == b"PRI":  # the HTTP/2 connection preface
        return BadRequest(505, "http_version_not_supported", "HTTP/2 is not served: use HTTP/1.1")
    return BadRequest(400, "bad_request", f"malformed request: {exc}")


def _request_parser(connection: ClientConnection) -> httptools.HttpRequestParser:
    """llhttp, strict but for the version: any HTTP/x.y parses, so that the check in
    `on_headers_complete` answers the ones not served with 505 rather than a bare 400."""
    parser = httptools.HttpRequestParser(connection)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests one at a time and answers them in order."""

    __slots__ = (
        "_body_after_head",
        "_bounds",
        "_first",
        "_fresh",
        "_headers",
        "_held",
        "_idle_since",
        "_in_head",
        "_loop",
        "_next",
        "_parsed",
        "_parser",
        "_parsing",
        "_paused",
        "_raised",
        "_request",
        "_send_timer",
        "_stopped",
        "_stopped_at",
        "_synthetic",
        "_target",
        "_task",
        "_timer",
        "_trailers",
        "_whole_head_end",
        "_writable",
        "closed",
        "discarding",
        "listener",
        "remote",
        "transport",
    )

    def __init__(self, listener: Listener):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closed = False
        self.discarding = False  # dropping the rest of an answered request's body
        self._fresh = True  # nothing received yet (an HTTP/2 preface would come first)
        self._first = b""  # the first bytes, while too few to tell
        self._loop = asyncio.get_running_loop()
        self._parser = _request_parser(self)
        self._bounds = MessageBounds()
        self._held = bytearray()  # what the client sent past the request being answered
        self._request: H1Request | None = None  # the request being answered
        self._parsing: H1Request | None = None  # the request whose body is arriving
        self._parsed: H1Request | None = None  # a head just parsed, handed on once it checks out
        self._task: asyncio.Task[None] | None = None  # answers this connection's requests
        self._next: asyncio.Future[None] | None = None  # set while waiting for a request
        self._writable: asyncio.Future[None] | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._stopped = False  # nothing more is parsed: a head was refused
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._in_head = False
        self._trailers = 0
        self._target = bytearray()
        self._headers: RawHeaders = []
        self._body_after_head = False  # a body is still to be parsed by a fresh parser
        self._synthetic = False  # parsing the head that carries it to that parser
        self._whole_head_end = 0  # parsing a whole read whose head ends here (see _whole_read)
        # What a callback raised to stop llhttp, which the parser's own error follows: kept here,
        # not read from that error's `__context__` (which a compiled build does not set alike).
        self._raised: Exception | None = None
        self._stopped_at = 0  # where the request parsed in that read ends

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are only alike
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.listener.connections.add(self)
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self.listener.keepalive_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._fresh:  # the connection's first bytes: an HTTP/2 preface, or HTTP/1.x
            data = self._first + data
            if self.listener.http2 and len(data) < 3 and PREFACE.startswith(data):
                self._first = data  # (too little to tell an HTTP/2 preface from a method)
                return
            self._fresh = False
            if self.listener.http2 and data[:3] == PREFACE[:3]:
                self._to_http2(data)
                return
        if self._bounds.mode == DONE:  # sent ahead of the answer in progress: later
            self._hold(data)
        else:
            self._consume(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        self._cancel_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
        if self._parsing is not None:
            self._parsing._finish_body(ClientGone("the client closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._task is not None:
            self._task.cancel()  # nobody is left to answer: stop the work for this request

    def _to_http2(self, data: bytes) -> None:
        """Hand the connection to HTTP/2: it opened with the preface (what is not the preface
        is refused there, as a connection error)."""
        self._cancel_timer()
        self.listener.connections.discard(self)
        assert self.transport is not None
        successor = ServerH2Connection(self.listener, self.listener.http2_max_streams)
        self.transport.set_protocol(successor)
        successor.connection_made(self.transport)
        successor.data_received(data)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()
        self._send_timer = self._loop.call_later(self.listener.send_timeout, self._send_stalled)

    def resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- parsing ------------------------------------------------------------------------------

    def _consume(self, data: bytes) -> None:
        """Parse `data`, no further than the end of the current request; hold the rest."""
        bounds = self._bounds
        start, size = 0, len(data)
        head_end = bounds.whole_head(data, MAX_HEAD)
        if head_end:
            start = self._whole_read(data, head_end)
            if start < 0:
                return
        while start < size:
            if bounds.mode == DONE:
                self._hold(data[start:])
                return
            end = bounds.piece(data, start)
            if bounds.head_bytes > MAX_HEAD:
                self._refuse(BadRequest(431, "head_too_large", "the request head is too large"))
                return
            try:
                self._parser.feed_data(framing.part(data, start, end))
            except httptools.HttpParserUpgrade:
                self._fresh_parser()
            except httptools.HttpParserError as exc:
                raised, self._raised = self._raised, None
                self._refuse(_refusal(exc, raised, self._parser.get_method(), data[start:end]))
                return
            if self._parsed is not None:  # a head was parsed, and nothing was wrong with it
                self._dispatch(self._parsed)
            start = end

    def _whole_read(self, data: bytes, head_end: int) -> int:
        """Parse a read that begins with a whole head in one go (the common case, and cheaper
        than in pieces). The parser is stopped where it would run into the next request or into
        a chunked body (whose end is not known here). Returns where parsing in pieces goes on
        (the size of `data` when all is parsed), or -1 when the request was refused."""
        self._whole_head_end = head_end
        try:
            self._parser.feed_data(data)
            if self._bounds.mode == LENGTH:
                self._bounds.left -= len(data) - head_end  # what came of the body
            goes_on = len(data)
        except httptools.HttpParserUpgrade as exc:
            self._fresh_parser()
            goes_on = int(exc.args[0])
        except httptools.HttpParserError as exc:
            raised, self._raised = self._raised, None
            if not isinstance(raised, framing.Stop) and self._bounds.mode != DONE:
                self._refuse(_refusal(exc, raised, self._parser.get_method(), data))
                return -1
            # Stopped, or a whole request followed by bytes that are not one (they wait): llhttp
            # stops only by failing, so a new parser goes on.
            self._fresh_parser()
            goes_on = self._stopped_at
        finally:
            self._whole_head_end = 0
        if self._parsed is not None:
            self._dispatch(self._parsed)
        return goes_on

    def _hold(self, data: bytes | bytearray) -> None:
        self._held += data
        if len(self._held) > HOLD_HIGH_WATER:
            self.pause_reading()

    def _fresh_parser(self) -> None:
        """Go on with a new parser: llhttp stops at the head of an Upgrade request (the upgrade
        is ignored), and when it is stopped. A body still to come is given to the new parser
        after a head of the same framing, and the requests that follow after it."""
        self._parser = _request_parser(self)
        if self._body_after_head:
            self._body_after_head = False
            self._synthetic = True
            mode, head = self._bounds.mode, _BODY_HEADS[self._bounds.mode]
            self._parser.feed_data(head % self._bounds.left if mode == LENGTH else head)

    def _dispatch(self, request: H1Request) -> None:
        self._parsed = None
        self._request = request
        if self._next is not None:
            self._next.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    def _refuse(self, refused: BadRequest) -> None:
        """Stop parsing: answer the refusal of a head now (and tell the listener), or fail the
        body of the request in progress. A TLS handshake is not answered (its client could not
        read an answer in clear text): its connection is closed."""
        self._stopped = True
        self.pause_reading()
        if self._parsed is not None:  # its head's framing turned out wrong: the whole is refused
            self._parsed = self._parsing = None
        if self._parsing is not None:  # its body is malformed: its handler answers, or did
            self._parsing._finish_body(refused)
            if self.discarding:
                self.close()
            return
        log.debug("request refused (%d): %s", refused.status, refused.message)
        preface = self._parser.get_method() == b"PRI"
        reason = "http2" if preface else _REASONS.get(refused.error, "malformed")
        self.listener.on_refused(reason, self.remote, refused.message)
        if refused.error == _TLS:
            self.close()
            return
        body = json.dumps({"error": refused.error, "message": refused.message}).encode()
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (refused.status, REASONS[refused.status], len(body), body)
        )
        self._lingering_close()

    # --- httptools callbacks ------------------------------------------------------------------

    def _stop(self, exc: Exception) -> Exception:
        """`exc`, noted as what stops the parser: a callback raises what this returns."""
        self._raised = exc
        return exc

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if self._whole_head_end and self._bounds.mode == DONE:
            raise self._stop(
                framing.Stop()
            )  # the next request: it waits until this one is answered
        self._in_head, self._trailers = True, 0
        self._target.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._target += url
        if len(self._target) > MAX_TARGET:
            raise self._stop(BadRequest(414, "uri_too_long", "the request target is too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD:
            raise self._stop(BadRequest(431, "header_too_large", "a request header is too large"))
        if self._in_head:
            self._headers.append((name, value))  # (their number is checked with the head)
        elif not self._synthetic:  # a trailer field, after a chunked body: read and dropped
            self._trailers += 1
            if self._trailers > MAX_FIELDS:
                raise self._stop(
                    BadRequest(431, "too_many_headers", "the request has too many trailers")
                )

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self._in_head = False
        if len(self._headers) > MAX_FIELDS:
            raise self._stop(
                BadRequest(431, "too_many_headers", "the request has too many header lines")
            )
        parser = self._parser
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            raise self._stop(
                BadRequest(505, "http_version_not_supported", f"HTTP/{version} is not served")
            )
        method = parser.get_method().decode("latin-1")
        if method == "CONNECT":
            raise self._stop(
                BadRequest(405, "method_not_allowed", "CONNECT is not served: not a proxy")
            )
        try:
            request = H1Request(
                self,
                method,
                bytes(self._target),
                version=version,
                headers=self._headers,
                keep_alive=parser.should_keep_alive(),
            )
        except BadRequest as exc:
            raise self._stop(exc) from None
        if request.chunked:
            self._bounds.body(CHUNKED)
        elif request.content_length:
            self._bounds.body(LENGTH, request.content_length)
        self._parsing = request if request.has_body else None
        self._parsed = request
        self._body_after_head = request.has_body and parser.should_upgrade()
        if self._whole_head_end:
            self._stopped_at = self._whole_head_end + (request.content_length or 0)
            if request.chunked and not self._body_after_head:
                self._body_after_head = True
                raise self._stop(
                    framing.Stop()
                )  # where a chunked body ends is not known: it goes in pieces

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        if self._body_after_head:
            return  # llhttp skipped the body; it is parsed next (see `_fresh_parser`)
        self._synthetic = False
        self._bounds.done()
        if self._parsing is not None:
            self._parsing._finish_body()
            self._parsing = None
        if self.discarding:
            self.close()  # the unread body is over: the answer has been sent, close now

    # --- answering ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer requests in order; between them, wait for the next one."""
        try:
            while True:
                request = self._request
                if request is None:
                    if self.listener.closing:
                        self.close()
                        return
                    self._idle_since = self._loop.time()
                    self._next = self._loop.create_future()
                    try:
                        await self._next
                    finally:
                        self._next = None
                    continue
                await self._answer(request)
                self._request = None
                if self.closed:
                    return
                if not request.keep_alive:
                    self._linger_or_close(request)
                    return
                self._next_message()
        except (asyncio.CancelledError, ClientGone):
            return  # the client left, or the drain is over
        finally:
            self._task = None

    def _next_message(self) -> None:
        """Go on with what the client sent after the request just answered."""
        self._bounds.begin()
        self.resume_reading()
        if self._held:
            held = bytes(self._held)
            self._held.clear()
            self._consume(held)

    async def _answer(self, request: H1Request) -> None:
        await answer(self.listener.handler, request)
        tunnel = request.tunnel
        if tunnel is not None:  # protocols switched: the connection is the tunnel's until it ends
            try:
                await asyncio.shield(tunnel.done)
            finally:
                tunnel.close()  # (the drain is over: cut)
                self.closed = True
                self.listener.connections.discard(self)

    def hand_over(self) -> tuple[asyncio.Transport, bytes]:
        """Give the connection up to a tunnel (`H1Request.switch`): its transport, reading
        resumed, and what the client sent after the request's head. Nothing is parsed here any
        more; the connection still counts as busy until the tunnel ends (see `_answer`)."""
        if self.closed or self.transport is None:
            raise ClientGone("the client closed the connection")
        self._cancel_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._stopped = True
        held = bytes(self._held)
        self._held.clear()
        self.resume_reading()
        return self.transport, held

    def keeps_alive(self, request: H1Request) -> bool:
        """Whether the connection stays open after `request`'s answer."""
        return (
            request.keep_alive
            and request.body_complete
            and not self.listener.closing
            and not self._stopped
        )

    def _linger_or_close(self, request: H1Request) -> None:
        waits_for_continue = request._continue and request.body_bytes == 0
        if request.body_complete or waits_for_continue or self._stopped:
            self.close()  # nothing more to read, or a client that sends nothing until told
            return
        # The answer went out before the body was read: read and drop the rest for a moment,
        # so that closing does not reset the connection before the client has the answer.
        self.discarding = True
        self.resume_reading()
        self._loop.call_later(LINGER, self.close)

    # --- transport ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """Queue bytes for the client."""
        if self.closed or self.transport is None:
            raise ClientGone("the client closed the connection")
        self.transport.write(data)

    async def send(self, data: bytes, deadline: float | None = None) -> None:
        """Write, then wait while the client's side is full (at most `send_timeout`, and until
        `deadline` on the monotonic clock, if given: then the connection is cut)."""
        self.write(data)
        if self._writable is not None:
            if deadline is None:
                await self._writable
            else:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        await asyncio.shield(self._writable)
                except TimeoutError:
                    log.info("client did not read the answer within the exchange's timeout: cut")
                    self.closed = True
                    if self.transport is not None:
                        self.transport.abort()
            if self.closed:
                raise ClientGone("the client closed the connection")

    def _send_stalled(self) -> None:
        """The client took nothing for `send_timeout`: cut it off."""
        self._send_timer = None
        log.info("client took no data for %.0f s: connection cut", self.listener.send_timeout)
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        """No request is being answered."""
        return self._request is None

    def busy(self) -> list[asyncio.Task[None]]:
        """The task answering a request now, if one is."""
        return [] if self._task is None or self.idle else [self._task]

    def drain(self) -> None:
        """Nothing to announce on HTTP/1.1: the connection closes after its answer."""

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

    def _lingering_close(self) -> None:
        """End our side once the answer is out (FIN), then read and drop what the client still
        sends for up to LINGER seconds before closing: closing with unread bytes would reset
        the connection, and the client could lose the answer (nginx's lingering close)."""
        if self.transport is None or self.closed:
            return
        self._cancel_timer()
        self.resume_reading()  # what arrives now is dropped: nothing is parsed any more
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(LINGER, self.close)

    def close(self) -> None:
        """Close the connection once what was written is sent (within `send_timeout`)."""
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            if self.transport.get_write_buffer_size() and self._send_timer is None:
                self._send_timer = self._loop.call_later(
                    self.listener.send_timeout, self.transport.abort
                )

    def cancel(self) -> None:
        """Stop answering: the drain is over."""
        if self._task is not None:
            self._task.cancel()
        self.close()
