"""One HTTP/2 connection to an upstream (RFC 9113), carrying many requests at once, one stream
each. The `h2` library parses the frames and keeps the streams' states and the flow-control
windows; this module ties it to asyncio, `h2_stream` holds each stream's state, and `h2_client`
pools these connections.

Invariants
- A connection takes new streams only once the upstream's SETTINGS came (so its
  SETTINGS_MAX_CONCURRENT_STREAMS is known), while it holds fewer streams than that (a stream
  counts until its answer is released), and never after a GOAWAY from the upstream or once
  closed.
- DATA sent never exceeds the stream's or the connection's window, nor the upstream's frame
  size: a sender waits for WINDOW_UPDATE, and for the transport to drain.
- Received DATA is acknowledged (WINDOW_UPDATE) only as the answer's reader takes it, so a
  stream holds at most STREAM_WINDOW unread bytes and the connection CONNECTION_WINDOW; what
  arrives for a stream nobody reads any more is acknowledged at once.
- GOAWAY frames are read here, never by h2 (whose state machine would refuse every frame after
  one): the streams above its last stream id fail with `StreamRefused` (the upstream did not
  process them: safe to send again), those at or below it go on, and the connection closes
  once they are released. RST_STREAM fails its stream alone with `reset` (REFUSED_STREAM:
  `StreamRefused`); after a complete answer it only stops the request body (RFC 9113 §8.1).
- A lost connection fails every stream whose answer is not complete with `reset`; a frame h2
  refuses, or a malformed header block (`h2_malformed.malformed_answer`, checked here in one
  pass rather than by h2), fails them with `protocol`, after a GOAWAY PROTOCOL_ERROR.
- A stream released before both its directions ended is reset (CANCEL); the connection stays.
- An answer's head holds at most MAX_FIELDS fields and a status of 200-599 (1xx: interim, and
  101 a protocol error); interim heads are handed on until their fields pass MAX_HEAD bytes.
- A connection without streams for `keepalive_timeout` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame, GoAwayFrame

from proxy.http.errors import UpstreamError
from proxy.http.h2_fields import Encoder
from proxy.http.h2_malformed import malformed_answer
from proxy.http.h2_stream import Fields, H2Stream, StreamRefused
from proxy.http.upstream_connection import Interim

STREAM_WINDOW = 256 * 1024  # unread answer bytes a stream may hold (SETTINGS_INITIAL_WINDOW_SIZE)
CONNECTION_WINDOW = 16 * 1024 * 1024  # unread answer bytes over all of a connection's streams
MAX_HEAD = 64 * 1024  # an answer's header list (SETTINGS_MAX_HEADER_LIST_SIZE)
MAX_FIELDS = 100  # fields in an answer's head, or in its trailers
_DEFAULT_WINDOW = 65_535  # the connection's window before any WINDOW_UPDATE (RFC 9113 §6.9.2)
_FRAME_HEAD = 9  # bytes of a frame's header
_GOAWAY = 0x7  # the GOAWAY frame type
_SETTINGS = 0x4  # the SETTINGS frame type: the upstream's first (RFC 9113 §3.4)
_NOT_H2 = "the upstream does not speak HTTP/2 (its first bytes are no SETTINGS frame)"
_LAST_STREAM_ID = 2**31 - 1
_PSEUDO = b":"[0]


class H2UpstreamConnection(asyncio.Protocol):
    """One HTTP/2 connection to an upstream and its streams; `on_closed` is told when it
    closes (for good)."""

    def __init__(
        self,
        on_closed: Callable[[H2UpstreamConnection], None],
        keepalive_timeout: float,
        tls: bool = False,
    ):
        self._on_closed = on_closed
        self._keepalive_timeout = keepalive_timeout
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # (the request's fields are made valid by `h2_client.request_fields`)
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,  # (checked by `_feed`: see the module's rules)
        )
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.encoder = Encoder()
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = self._loop.create_future()  # the upstream's SETTINGS
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.going_away = False  # the upstream sent GOAWAY: no new streams
        self._writable = asyncio.Event()
        self._writable.set()
        self._held = b""  # the start of a frame header, or of a GOAWAY frame, not whole yet
        self._passing = 0  # bytes of the frame being passed to h2 still to come
        self._greeted = False  # the upstream's first frame came, a SETTINGS frame
        self._idle_since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's: alike, not subclasses)
        if self._tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self._broken("protocol", "the upstream did not choose h2 by ALPN")
                return
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()
        self._timer = self._loop.call_later(self._keepalive_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._held:
            data, self._held = self._held + data, b""
        size = len(data)
        at = self._passing  # where the next frame begins
        if at >= size:
            self._passing = at - size
            self._feed(data)
            return
        start = 0  # the first byte not yet given to h2
        while True:
            if size - at < _FRAME_HEAD:
                self._held, self._passing = data[at:], 0
                self._feed(data[start:at])
                return
            length = int.from_bytes(data[at : at + 3], "big")
            end = at + _FRAME_HEAD + length
            kind = data[at + 3]
            if not self._greeted:
                if kind != _SETTINGS:
                    self._broken("protocol", _NOT_H2)
                    return
                self._greeted = True
            if length > self._h2.max_inbound_frame_size:
                self._feed(data[start:at])
                self._broken("protocol", "bad HTTP/2 from the upstream: a frame too large")
                return
            if kind == _GOAWAY:
                if end > size:
                    self._held, self._passing = data[at:], 0
                    self._feed(data[start:at])
                    return
                if not self._feed(data[start:at]) or not self._goaway(data[at:end]):
                    return
                start = end
            if end >= size:
                self._passing = end - size
                self._feed(data[start:])
                return
            at = end

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken("reset", "the upstream closed the connection")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- frames in ----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> bool:
        """Give `data` (whole frames, but GOAWAY) to h2 and act on its events; False when the
        connection failed."""
        if not data:
            return True
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()  # (the GOAWAY h2 made)
            self._broken("protocol", f"bad HTTP/2 from the upstream: {exc}")
            return False
        why = _malformed(events)
        if why is not None:  # (as h2's own check would: a connection error)
            self._h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._flush()
            self._broken("protocol", f"bad HTTP/2 from the upstream: {why}")
            return False
        for event in events:
            self._handle(event)
        self._flush()
        return not self.closed

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.error is not None:  # nobody will read it
                self._acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                stream.chunks.append(event.data)
                stream.unacked += event.flow_controlled_length
                stream.wake()
        elif isinstance(event, h2.events.ResponseReceived):
            self._answer(event.stream_id, event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.error is None:
                stream.complete = True
                stream.wake()
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
                if len(stream.trailers) > MAX_FIELDS:
                    self._refuse(stream, "the answer has too many trailer fields")
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream in list(self.streams.values()):
                if stream.window is not None:
                    stream.wake()
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self._inform(event.stream_id, event.headers)
        elif isinstance(event, h2.events.StreamReset):
            self._reset_by_upstream(event.stream_id, event.error_code)

    def _answer(self, sid: int, fields: object) -> None:
        """The answer's head came: check it and hand it on."""
        stream = self.streams.get(sid)
        if stream is None:
            return
        status, headers = _split(cast(Fields, fields))
        if len(headers) > MAX_FIELDS:
            return self._refuse(stream, "the answer has too many header fields")
        if not 200 <= status <= 599:
            return self._refuse(stream, f"the upstream answered with status {status}")
        length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    return self._refuse(stream, "the answer's content-length is not a number")
                length = int(value)
        stream.status, stream.headers, stream.content_length = status, headers, length
        if not stream.head.done():
            stream.head.set_result(None)

    def _inform(self, sid: int, fields: object) -> None:
        """An interim answer (1xx) came: hand it on, but a 100 (see the module's rules)."""
        stream = self.streams.get(sid)
        if stream is None:
            return
        status, headers = _split(cast(Fields, fields))
        if status == 101:
            return self._refuse(stream, "the upstream switched protocols")
        stream.interim_bytes += sum(len(name) + len(value) + 32 for name, value in headers)
        if status != 100 and stream.interim is not None and stream.interim_bytes <= MAX_HEAD:
            stream.interim(status, b"", headers)

    def _reset_by_upstream(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if stream.complete:  # the answer stands: the upstream wants no more of the request
            stream.stopped = True
            stream.wake()
            return
        name = _code_name(code)
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            self._fail(stream, StreamRefused(f"the upstream refused the stream ({name})"))
        else:
            self._fail(stream, UpstreamError("reset", f"the upstream reset the stream ({name})"))

    def _goaway(self, frame: bytes) -> bool:
        """A GOAWAY came (see the module's rules); False when the connection is closed now
        (the GOAWAY was malformed, or no stream is left)."""
        try:
            goaway, _ = Frame.parse_frame_header(memoryview(frame[:_FRAME_HEAD]))
            goaway.parse_body(memoryview(frame[_FRAME_HEAD:]))
        except (HyperframeError, ValueError) as exc:
            self._broken("protocol", f"bad HTTP/2 from the upstream: a malformed GOAWAY ({exc})")
            return False
        assert isinstance(goaway, GoAwayFrame)
        self.going_away = True
        last, name = goaway.last_stream_id, _code_name(goaway.error_code)
        for sid, stream in list(self.streams.items()):
            if sid > last:
                self.cancel(stream, StreamRefused(f"the upstream went away ({name}) before it"))
        if not self.streams:
            self.close()
        return not self.closed

    def _refuse(self, stream: H2Stream, detail: str) -> None:
        """A stream's answer is malformed: reset it (PROTOCOL_ERROR) and fail it."""
        self.cancel(stream, UpstreamError("protocol", detail), h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def _fail(self, stream: H2Stream, error: BaseException) -> None:
        """Nothing more goes on the stream; its answer, unless complete, fails with `error`."""
        stream.stopped = True
        if not stream.complete and stream.error is None:
            stream.error = error
            if not stream.head.done():
                stream.head.set_exception(error)
                stream.head.exception()  # retrieved: the request raises it (if still waiting)
        stream.wake()

    def _broken(self, reason: str, detail: str) -> None:
        """The connection failed or went away: fail what is in flight, and close it."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.ready.done():
            before = "connect" if reason == "reset" else reason  # (nothing was sent yet)
            self.ready.set_exception(UpstreamError(before, detail))
            self.ready.exception()  # retrieved: `H2Pool` raises it, if still waiting
        for stream in self.streams.values():
            self._fail(stream, UpstreamError(reason, detail))
        self._writable.set()
        if self.transport is not None:
            self.transport.close()
        self._on_closed(self)

    # --- frames out ---------------------------------------------------------------------------

    @property
    def has_room(self) -> bool:
        """Whether a new stream may go on this connection now (see the module's rules)."""
        limit = self._h2.remote_settings.max_concurrent_streams
        return not self.closed and not self.going_away and len(self.streams) < limit

    def open(self, fields: Fields, end: bool, interim: Interim | None) -> H2Stream:
        """Start a stream with the request's header block (and END_STREAM if `end`)."""
        if self.closed:
            raise UpstreamError("reset", "the upstream closed the connection")
        sid = self._h2.get_next_available_stream_id()
        if sid >= _LAST_STREAM_ID - 2:
            self.going_away = True  # its stream ids run out: a new connection takes over
        self._h2.send_headers(sid, fields, end_stream=end)
        self._flush()
        stream = self.streams[sid] = H2Stream(sid, self._loop.create_future(), interim)
        if self._timer is not None and len(self.streams) == 1:
            self._timer.cancel()
            self._timer = None
        return stream

    def write(self, stream: H2Stream, data: bytes, start: int, end: bool) -> int:
        """Send what the windows take of `data` from `start` on (END_STREAM with its last byte if
        `end`); returns where it stopped. Raises the stream's failure; a stream stopped after a
        complete answer takes everything (and drops it)."""
        if stream.error is not None:
            raise stream.error
        size = len(data)
        if stream.stopped:
            return size
        h2c, sid = self._h2, stream.sid
        while start < size:
            room = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if room <= 0:
                break
            piece = data[start : start + room]
            start += len(piece)
            h2c.send_data(sid, piece, end_stream=end and start == size)
        else:
            if end and not size:
                h2c.end_stream(sid)
        self._flush()
        return start

    async def send(self, stream: H2Stream, data: bytes, start: int = 0, end: bool = False) -> None:
        """Send `data` from `start` on (see `write`), waiting for the windows to open and the
        transport to drain."""
        while True:
            start = self.write(stream, data, start, end)
            if start == len(data):
                break
            stream.window = self._loop.create_future()
            try:
                await stream.window
            finally:
                stream.window = None
        if not self._writable.is_set():
            await self._writable.wait()

    def take(self, stream: H2Stream) -> bytes | None:
        """The answer's body received so far (acknowledged now), b"" at its end, or None when
        there is nothing yet; raises the answer's failure."""
        chunks = stream.chunks
        if chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._acknowledge(stream.sid, stream.unacked)
            stream.unacked = 0
            return data
        if stream.complete:
            return b""
        if stream.error is not None:
            raise stream.error
        return None

    async def more(self, stream: H2Stream) -> None:
        """Wait until the answer has more, ends, or fails."""
        stream.waiter = self._loop.create_future()
        try:
            await stream.waiter
        finally:
            stream.waiter = None

    def release(self, stream: H2Stream) -> None:
        """Done with a stream: reset it if either direction is still open (see the module's
        rules), and give back what it held of the connection's window."""
        if self.streams.pop(stream.sid, None) is None:
            return
        stream.interim = None  # (it holds the client's request: not kept past the exchange)
        stream.stopped = True
        stream.chunks.clear()
        if not self.closed:
            state = self._h2.streams.get(stream.sid)
            if state is not None and not state.closed:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self._h2.reset_stream(stream.sid, h2.errors.ErrorCodes.CANCEL)
            self._acknowledge(stream.sid, stream.unacked)
            stream.unacked = 0
            self._flush()
        if not self.streams:
            if self.going_away:
                self.close()
            elif not self.closed:
                self._idle_since = self._loop.time()
                if self._timer is None:
                    self._timer = self._loop.call_later(self._keepalive_timeout, self._expire)

    def cancel(
        self, stream: H2Stream, error: BaseException, code: int = h2.errors.ErrorCodes.CANCEL
    ) -> None:
        """Reset the stream (`code`), and fail its answer, unless complete, with `error`."""
        self._fail(stream, error)
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):  # (closed already: nothing to do)
                self._h2.reset_stream(stream.sid, code)
            self._flush()

    def _acknowledge(self, sid: int, size: int) -> None:
        if size and not self.closed:
            self._h2.acknowledge_received_data(size, sid)  # (a closed stream: the connection's)
            self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- the connection's life ----------------------------------------------------------------

    def _expire(self) -> None:
        self._timer = None
        if self.streams or self.closed:
            return
        left = self._idle_since + self._keepalive_timeout - self._loop.time()
        if left <= 0:
            self.close()
        else:
            self._timer = self._loop.call_later(left, self._expire)

    def close(self) -> None:
        """Close now (with a GOAWAY): the streams still in flight fail with `reset`."""
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.close_connection()
            self._flush()
        self._broken("reset", "the connection was closed")


_HEADS = (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)


def _malformed(events: list[h2.events.Event]) -> str | None:
    """Why a header block among `events` is malformed (RFC 9113 §8.2, §8.3), or None."""
    for event in events:
        if isinstance(event, _HEADS):
            why = malformed_answer(event.headers or [], trailers=False)
        elif isinstance(event, h2.events.TrailersReceived):
            why = malformed_answer(event.headers or [], trailers=True)
        else:
            continue
        if why is not None:
            return f"a malformed header block on stream {event.stream_id}: {why}"
    return None


def _split(fields: Fields) -> tuple[int, Fields]:
    """A received header block's `:status` (0 if missing or not a number), and its fields less
    the pseudo-header fields."""
    status = 0
    headers: Fields = []
    for name, value in fields:
        if name[0] != _PSEUDO:
            headers.append((name, value))
        elif name == b":status" and value.isdigit():
            status = int(value)
    return status, headers


def _code_name(code: int) -> str:
    """An HTTP/2 error code's name (RFC 9113 §7), or its number."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"
