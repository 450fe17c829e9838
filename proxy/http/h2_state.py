"""The server side's HTTP/2 state machine: h2's, with RFC 9113's stream errors kept to their
stream.

h2 turns every stream error RFC 9113 names into a connection error, which §5.4.1 allows but
which ends every other stream of the connection.

Invariants
- A malformed request (a header block that breaks RFC 9113 §8.2 or §8.3, checked here in one
  pass by `h2_malformed` rather than by h2's slower chain of checks; a Content-Length its DATA
  does not match) resets only its stream with PROTOCOL_ERROR, and is told to the connection as
  a `StreamReset` in place of the stream's other events; refused DATA goes back to the
  connection's window.
- A WINDOW_UPDATE of 0 on an open stream resets that stream (§6.9); on an idle one it is a
  connection error.
- A stream over SETTINGS_MAX_CONCURRENT_STREAMS gets REFUSED_STREAM, its header block decoded
  all the same so that the HPACK context stays in step (§5.1.2).
- A header block that does not decode is a connection error COMPRESSION_ERROR (§4.3).
"""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
from h2.frame_buffer import FrameBuffer
from hpack import HPACKError, OversizedHeaderListError
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from proxy.http.h2_malformed import malformed

log = logging.getLogger("grayscale.listener")


class _Frames(FrameBuffer):
    """h2's frame buffer, but a WINDOW_UPDATE of 0 on a stream comes out as a frame (hyperframe
    refuses it, and h2 would make that a connection error, where RFC 9113 §6.9 asks for a
    stream error)."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 13 and data[3] == 0x8 and data[:3] == b"\x00\x00\x04":
            sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            if sid and not int.from_bytes(data[9:13], "big") & 0x7FFFFFFF:
                del data[:13]
                frame = self._update_header_buffer(WindowUpdateFrame(sid))  # (mid-block: error)
                return frame if frame is not None else self.__next__()
        return super().__next__()


class ServerH2State(h2.connection.H2Connection):
    """h2's connection, with RFC 9113's stream errors kept to their stream (h2 makes each of
    them a connection error, which RFC 9113 §5.4.1 allows but which would end every other
    stream of the connection): see the module's invariants."""

    def __init__(self, config: h2.config.H2Configuration):
        config.validate_inbound_headers = False  # (checked by `_checked` instead)
        super().__init__(config=config)
        self.incoming_buffer = _Frames(server=True)

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        sid = frame.stream_id
        if isinstance(frame, WindowUpdateFrame) and sid and not frame.window_increment:
            if not self._open(sid):  # (an idle stream: a connection error)
                raise h2.exceptions.ProtocolError("WINDOW_UPDATE of 0 on a stream not open")
            return self._stream_error(sid, "WINDOW_UPDATE of 0 on the stream")
        try:
            events = super()._receive_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            return self._refuse(frame)
        except h2.exceptions.InvalidBodyLengthError as exc:
            if not self._open(sid):
                raise
            if isinstance(frame, DataFrame):  # (not told to the listener: back to the window)
                self.acknowledge_received_data(frame.flow_controlled_length, sid)
            return self._stream_error(sid, str(exc))
        except h2.exceptions.ProtocolError as exc:
            cause = exc.__cause__
            if isinstance(cause, HPACKError) and not isinstance(cause, OversizedHeaderListError):
                exc.error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR  # (RFC 9113 §4.3)
                raise
            refused = type(exc) is h2.exceptions.ProtocolError and isinstance(frame, HeadersFrame)
            if refused and self._open(sid):  # (decoded, then refused by h2: §8.1.1)
                return self._stream_error(sid, str(exc))
            raise
        return self._checked(events) if isinstance(frame, HeadersFrame) else events

    def _checked(self, events: list[h2.events.Event]) -> list[h2.events.Event]:
        """A header block's events, with a malformed request's (or trailers') replaced by the
        reset of its stream."""
        for event in events:
            if isinstance(event, h2.events.RequestReceived | h2.events.TrailersReceived):
                trailers = isinstance(event, h2.events.TrailersReceived)
                why = malformed(event.headers or [], trailers)
                if why is not None:
                    sid = event.stream_id
                    if not self._open(sid):  # (trailers that closed it: as h2 would have)
                        raise h2.exceptions.ProtocolError(f"malformed request: {why}")
                    kept = [e for e in events if getattr(e, "stream_id", None) != sid]
                    return kept + self._stream_error(sid, f"malformed request: {why}")
        return events

    def _open(self, sid: int) -> bool:
        stream = self.streams.get(sid)
        return stream is not None and not stream.closed

    def _stream_error(self, sid: int, why: str) -> list[h2.events.Event]:
        """Reset stream `sid` with PROTOCOL_ERROR, and tell the listener it is gone."""
        log.info("HTTP/2 stream error on stream %d: %s", sid, why)
        self.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        return [h2.events.StreamReset(stream_id=sid, error_code=1, remote_reset=False)]

    def _refuse(self, frame: Frame) -> list[h2.events.Event]:
        """A new stream over SETTINGS_MAX_CONCURRENT_STREAMS: refused, and its header block
        decoded all the same, to keep the HPACK context (RFC 9113 §5.1.2)."""
        sid = frame.stream_id
        if not isinstance(frame, HeadersFrame) or sid % 2 == 0:
            raise h2.exceptions.ProtocolError("a new stream must have an odd id")
        if sid <= self.highest_inbound_stream_id:
            raise h2.exceptions.StreamIDTooLowError(sid, self.highest_inbound_stream_id)
        try:
            self.decoder.decode(frame.data, raw=True)
        except HPACKError as exc:
            error = h2.exceptions.ProtocolError(f"Error decoding header block: {exc}")
            error.error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR
            raise error from exc
        self.highest_inbound_stream_id = sid
        self._closed_streams[sid] = h2.stream.StreamClosedBy.SEND_RST_STREAM
        refused = RstStreamFrame(sid)
        refused.error_code = h2.errors.ErrorCodes.REFUSED_STREAM
        self._prepare_for_sending([refused])
        log.info("HTTP/2 stream %d refused: over the streams' limit", sid)
        return []
