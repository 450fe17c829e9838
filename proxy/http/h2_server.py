"""HTTP/2 toward clients (RFC 9113): one connection's streams, each served as one request.

The `h2` library (python-hyper's sans-IO state machine, as in httpx and hypercorn) parses the
frames and keeps the streams' states and the flow-control windows; this module ties it to
asyncio and hands each stream to the listener's handler as an `H2Request`, which answers to the
same interface as an HTTP/1.1 `Request`.

Invariants
- A stream reaches the handler only with a valid head: h2 refuses malformed header blocks,
  upper-case names and connection-specific fields (PROTOCOL_ERROR); here a stream needs
  `:method`, `:scheme` and `:path` (an origin-form path, or `*` for OPTIONS), at most one Host,
  and Host and `:authority` valid; CONNECT is refused (405). The head's bytes are bounded by
  SETTINGS_MAX_HEADER_LIST_SIZE (MAX_HEAD).
- At most `max_streams` streams are open at once (SETTINGS_MAX_CONCURRENT_STREAMS); a stream
  over the limit is refused (RST_STREAM REFUSED_STREAM) and the connection goes on.
- Where RFC 9113 asks for a stream error, only that stream is reset and the connection's other
  streams go on (`h2_state`): a malformed request (PROTOCOL_ERROR), a WINDOW_UPDATE of 0 on a
  stream. A header block that does not decode is a connection error COMPRESSION_ERROR.
- A request body is flow-controlled by what its handler takes: WINDOW_UPDATE is sent for data
  once taken, or at once for data nobody will read, so a slow handler slows the client down
  rather than filling memory (at most INITIAL_WINDOW bytes per stream wait).
- An answer's DATA never exceeds the stream's or the connection's window, nor the peer's frame
  size: what does not fit waits in the stream's queue until WINDOW_UPDATE; a writer waits for
  the queue to drain at most until its deadline, then the stream is reset.
- RST_STREAM from the client cancels that stream's handler, and with it the upstream exchange.
- Connection-specific answer fields (RFC 9113 §8.2.2) are never sent.
- On drain, GOAWAY names the last stream taken: streams in progress finish, newer ones are
  refused by the client's side; the connection closes once none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from hyperframe.frame import GoAwayFrame

from proxy.http import grpc
from proxy.http.errors import BadRequest, ClientGone
from proxy.http.h2_fields import Encoder, field
from proxy.http.h2_state import ServerH2State
from proxy.http.headers import HOP_BY_HOP, valid_host
from proxy.http.request import (
    READ_HIGH_WATER,
    RawHeaders,
    Request,
    answer,
    http_date,
    index_headers,
    render,
    routing_path,
    text,
)

if TYPE_CHECKING:
    from proxy.http.listener import Listener

log = logging.getLogger("grayscale.listener")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024  # a request's header list, as SETTINGS_MAX_HEADER_LIST_SIZE counts it
INITIAL_WINDOW = READ_HIGH_WATER  # what a client may send on a stream before its handler reads
_BODYLESS_STATUS = frozenset({204, 304})
_NOT_SENT = HOP_BY_HOP | {b"content-length", b"host"}  # (Content-Length: set here, if known)
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})


def _message(document: object) -> str:
    """The message of an error document the proxy made (its own shape, or OpenAI's)."""
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(document.get("message"), str):
            return str(document["message"])
    return "the proxy could not answer the call"


class H2Request(Request):
    """One stream: its head, its body (read once, as it arrives), and its answer."""

    __slots__ = ("_body", "_connection", "_end", "_error", "_queue", "_unacked", "_waiter", "sid")

    def __init__(self, connection: ServerH2Connection, sid: int, fields: RawHeaders):
        """Check the head (raising `BadRequest`) and take in what it says."""
        self._connection = connection
        self.sid = sid
        pseudo: dict[bytes, bytes] = {}
        headers: RawHeaders = []
        for name, value in fields:
            if name[:1] == b":":
                if name not in _PSEUDO or name in pseudo or headers:
                    raise BadRequest(400, "bad_request", "malformed pseudo-header fields")
                pseudo[name] = value
            else:
                headers.append((name, value))
        method = pseudo.get(b":method", b"").decode("latin-1")
        path = pseudo.get(b":path", b"")
        if not method or b":scheme" not in pseudo or not path:
            raise BadRequest(400, "bad_request", "a request needs :method, :scheme and :path")
        if method == "CONNECT":
            raise BadRequest(405, "method_not_allowed", "CONNECT is not served: not a proxy")
        if path[:1] != b"/" and not (path == b"*" and method == "OPTIONS"):
            raise BadRequest(400, "bad_request", "the request target must be a path")
        self.method = method
        self.version = "2"
        self.raw_headers = headers
        self.keys, self._index, self.repeats = index_headers(headers)
        authority = pseudo.get(b":authority") or self._index.get(b"host")
        if authority is not None and not valid_host(authority):
            raise BadRequest(400, "bad_host", "the authority is not a valid host[:port]")
        self.authority = authority
        self.raw_target = path
        self.target = text(path)
        self.path = routing_path(self.target)
        self.remote = connection.remote
        self.secure = connection.listener.tls is not None
        length = self._index.get(b"content-length")
        if length is not None and not length.isdigit():
            raise BadRequest(400, "bad_request", "the Content-Length is not a number")
        self.content_length = None if length is None else int(length)
        self.has_body = True  # (until END_STREAM says otherwise)
        self.body_complete = False
        self.body_bytes = 0
        self.started = self.done = False
        self.status = 0
        self._query = self._cookies = None
        self._body: list[bytes] = []
        self._unacked = 0  # flow-controlled bytes received and not yet taken
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._queue = bytearray()  # answer bytes waiting for the flow-control window
        self._end: RawHeaders | None = None  # the answer's end is queued: its trailers, or []

    # --- the body (told by the connection) ----------------------------------------------------

    def _feed(self, data: bytes, flow_controlled: int) -> None:
        self.body_bytes += len(data)
        if self.done:  # answered: nobody reads the rest
            self._connection.acknowledge(self.sid, flow_controlled)
            return
        self._body.append(data)
        self._unacked += flow_controlled
        self._wake()

    def _finish_body(self, error: Exception | None = None) -> None:
        if error is None:
            self.body_complete = True
        elif self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, deadline: float | None) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            if deadline is None:
                await self._waiter
            else:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._waiter
        finally:
            self._waiter = None

    async def chunks(self, patient: bool = False) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (once: the pieces are not kept; see
        `Request.chunks`)."""
        timeout = self._connection.listener.body_timeout
        while True:
            if self._body:
                data = b"".join(self._body)
                self._body.clear()
                self._connection.acknowledge(self.sid, self._unacked)
                self._unacked = 0
                yield data
            elif self.body_complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                try:
                    await self._wait(None if patient else time.monotonic() + timeout)
                except TimeoutError:
                    raise BadRequest(
                        408, "request_timeout", "the request body stopped arriving"
                    ) from None

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks()])

    # --- the answer ---------------------------------------------------------------------------

    def _fields(self, status: int, headers: bytes, length: int | None) -> RawHeaders:
        """The answer's header block: `:status`, the rendered `headers` less the fields HTTP/2
        does not carry, and the length when it is known."""
        fields: RawHeaders = [(b":status", b"%d" % status)]
        for line in headers.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            key = name.strip().lower()
            if key not in _NOT_SENT:
                fields.append(field(key, value.strip()))
        if length is not None and status not in _BODYLESS_STATUS:
            fields.append((b"content-length", b"%d" % length))
        return fields

    def reply(self, status: int, headers: bytes, body: bytes, reason: bytes = b"") -> None:
        """Send a whole answer (`headers`: rendered lines, as for HTTP/1.1; `reason` unused:
        HTTP/2 has none). Without a body it is one header block that ends the stream (what
        gRPC calls a trailers-only answer)."""
        if not body or self.method == "HEAD" or status in _BODYLESS_STATUS:
            self.started, self.status, self.done = True, status, True
            fields = self._fields(status, headers, len(body))
            self._connection.send_head(self.sid, fields, end_stream=True)
            self._connection.pump(self)  # (which retires the stream)
            return
        self.start(status, headers, len(body))
        if body and self.method != "HEAD" and status not in _BODYLESS_STATUS:
            self._queue += body
        self.end()

    def reply_json(self, status: int, document: object, headers: bytes = b"") -> None:
        """Send a JSON answer made here (with a Date header); `headers` are more rendered lines.
        To a gRPC call, the same is said as a gRPC status (see `grpc`)."""
        if grpc.is_call(self._index.get(b"content-type")):
            code = grpc.status_for_http(status)
            ours = grpc.trailers_only(code, _message(document))
            self.reply(200, headers + ours + b"date: %s\r\n" % http_date().encode(), b"")
            return
        ours = render([("Content-Type", "application/json; charset=utf-8"), ("Date", http_date())])
        self.reply(status, headers + ours, json.dumps(document).encode())

    def start(self, status: int, headers: bytes, length: int | None, reason: bytes = b"") -> None:
        """Send the answer's head; its body follows through `write`, then `end`."""
        self.started, self.status = True, status
        self._connection.send_head(self.sid, self._fields(status, headers, length))

    def inform(self, status: int, headers: bytes, reason: bytes = b"") -> None:
        """Send an interim (1xx) answer, unless the answer has started or the stream is gone."""
        if not self.started and self._error is None:
            self._connection.send_head(self.sid, self._fields(status, headers, None))

    async def write(self, data: bytes, deadline: float | None = None) -> None:
        """Queue a piece of the body; waits while more than READ_HIGH_WATER bytes wait for the
        client's window, until `deadline` (`time.monotonic()`) at most: then the stream is
        reset (`ClientGone`)."""
        if not data or self.method == "HEAD" or self.status in _BODYLESS_STATUS:
            return
        self._queue += data
        self._connection.pump(self)
        while len(self._queue) > READ_HIGH_WATER:
            if self._error is not None:
                raise ClientGone("the client reset the stream")
            try:
                await self._wait(deadline)
            except TimeoutError:
                log.info("client did not read the answer within the exchange's timeout: reset")
                self.abort()
                raise ClientGone("the client did not read the answer in time") from None
        if self._error is not None and isinstance(self._error, ClientGone):
            raise self._error

    def end(self, trailers: RawHeaders | None = None) -> None:
        """The answer's body is complete (`trailers`: fields sent after it)."""
        self._end = trailers or []
        self.done = True
        self._connection.pump(self)

    def abort(self) -> None:
        """Reset the stream: an answer that cannot be completed must look incomplete."""
        self.done = True
        self._connection.reset(self.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)


class ServerH2Connection(asyncio.Protocol):
    """One HTTP/2 client connection (taken over from the HTTP/1.1 protocol after the preface,
    or chosen by ALPN): its streams, each served by the listener's handler."""

    def __init__(self, listener: Listener, max_streams: int):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.closed = False
        self._loop = asyncio.get_running_loop()
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # What we send is made valid where it is made (`H2Request._fields`: lower-case names,
            # trimmed values, no connection-specific fields), not checked again field by field.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = ServerH2State(config)
        self._h2.encoder = Encoder()
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
            },
        )
        self._streams: dict[int, H2Request] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._writable: asyncio.Future[None] | None = None
        self._draining = False
        self._last_taken = 0  # the last stream taken, as our GOAWAY said
        self._idle_since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.listener.connections.add(self)
        self._h2.initiate_connection()
        self._flush()
        self._timer = self._loop.call_later(self.listener.keepalive_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 connection error: %s", exc)
            self._flush()  # (the GOAWAY h2 made)
            self.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        gone = ClientGone("the client closed the connection")
        for request in self._streams.values():
            request._finish_body(gone)
        for task in self._tasks.values():
            task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- frames in ----------------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._begin(event.stream_id, event.headers, event.stream_ended)
        elif isinstance(event, h2.events.DataReceived):
            request = self._streams.get(event.stream_id)
            if request is None:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                request._feed(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            request = self._streams.get(event.stream_id)
            if request is not None:
                request._finish_body()
        elif isinstance(event, h2.events.StreamReset):
            self._gone(event.stream_id)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for request in list(self._streams.values()):
                self.pump(request)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _begin(self, sid: int, fields: object, ended: object) -> None:
        if self._draining and sid > self._last_taken:  # after our GOAWAY: not taken
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        try:
            request = H2Request(self, sid, cast(RawHeaders, fields))
        except BadRequest as refused:
            log.info("request refused (%d): %s", refused.status, refused.message)
            self._refuse(sid, refused)
            return
        if ended:
            request.has_body = False
            request.content_length = request.content_length or None
            request.body_complete = True
        self._streams[sid] = request
        task = self._loop.create_task(self._serve(request))
        self._tasks[sid] = task

    def _refuse(self, sid: int, refused: BadRequest) -> None:
        body = json.dumps({"error": refused.error, "message": refused.message}).encode()
        fields: RawHeaders = [
            (b":status", b"%d" % refused.status),
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        try:
            self._h2.send_headers(sid, fields)
            self._h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.H2Error:  # (no room in the window: the stream is reset instead)
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    async def _serve(self, request: H2Request) -> None:
        try:
            await answer(self.listener.handler, request)
        except (asyncio.CancelledError, ClientGone):
            pass
        finally:
            self._tasks.pop(request.sid, None)
            if not request.done:
                request.abort()
            self._retire(request)

    def _retire(self, request: H2Request) -> None:
        """Forget a stream once its handler is done and its answer is out (or reset)."""
        if request.sid in self._tasks or (request._queue or request._end is not None):
            return
        self._streams.pop(request.sid, None)
        if request._unacked:
            self.acknowledge(request.sid, request._unacked)
            request._unacked = 0
        if not self._streams:
            self._idle_since = self._loop.time()
            if self._draining:
                self.close()

    def _gone(self, sid: int) -> None:
        """The client reset the stream: stop its handler."""
        request = self._streams.pop(sid, None)
        if request is not None:
            request._error = ClientGone("the client reset the stream")
            request._queue.clear()
            request._end = None
            request._wake()
        task = self._tasks.get(sid)
        if task is not None:
            task.cancel()

    # --- frames out ---------------------------------------------------------------------------

    def send_head(self, sid: int, fields: RawHeaders, end_stream: bool = False) -> None:
        """Send a header block (a 1xx, or the answer's head; `end_stream`: the whole answer)."""
        if self.closed or sid not in self._streams:
            raise ClientGone("the client closed the stream")
        self._h2.send_headers(sid, fields, end_stream=end_stream)
        self._flush()

    def pump(self, request: H2Request) -> None:
        """Send as much of the stream's queued answer as the windows allow, and its end."""
        sid = request.sid
        if self.closed or sid not in self._streams:
            return
        queue = request._queue
        h2c = self._h2
        while queue:
            room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if room <= 0:
                break
            h2c.send_data(sid, bytes(queue[:room]))
            del queue[:room]
        if not queue and request._end is not None:
            if request._end:
                h2c.send_headers(sid, request._end, end_stream=True)
            else:
                h2c.end_stream(sid)
            request._end = None
        self._flush()
        if len(queue) <= READ_HIGH_WATER:
            request._wake()
        if not queue and request._end is None and request.done:
            self._retire(request)

    def acknowledge(self, sid: int, size: int) -> None:
        """Open the windows again for `size` bytes of a request body taken (or dropped)."""
        if size and not self.closed:
            self._h2.acknowledge_received_data(size, sid)  # (a closed stream: the connection's)
            self._flush()

    def reset(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        """Reset a stream of ours."""
        request = self._streams.get(sid)
        if request is not None:
            request._queue.clear()
            request._end = None
        if not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.reset_stream(sid, code)
            self._flush()
        if request is not None:
            self._retire(request)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # --- the connection's life ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No stream is being answered."""
        return not self._streams

    def busy(self) -> list[asyncio.Task[None]]:
        """The tasks answering streams now."""
        return list(self._tasks.values())

    def _expire(self) -> None:
        timeout = self.listener.keepalive_timeout
        left = timeout if not self.idle else self._idle_since + timeout - self._loop.time()
        if left <= 0:
            self.close()
        elif not self.closed:
            self._timer = self._loop.call_later(left, self._expire)

    def drain(self) -> None:
        """Send GOAWAY naming the last stream taken; close once the streams are answered."""
        if self._draining or self.closed:
            return
        self._draining = True
        # GOAWAY written here, not by h2: h2 would send nothing more on any stream after it.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self._last_taken = self._h2.highest_inbound_stream_id
        self._flush()
        if self.transport is not None:
            self.transport.write(goaway.serialize())
        if self.idle:
            self.close()

    def close(self) -> None:
        """Close the connection (after a GOAWAY, if none was sent)."""
        if self.closed or self.transport is None:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):  # (closed already by a peer)
            self._h2.close_connection(last_stream_id=self._h2.highest_inbound_stream_id)
            self._flush()
        self._draining = True
        self.closed = True
        self.transport.close()

    def cancel(self) -> None:
        """Stop answering: the drain is over."""
        for task in self._tasks.values():
            task.cancel()
        self.close()
