"""Bytes copied both ways, unchanged and unparsed, between a client and an upstream that
switched protocols (a WebSocket, after its `101`).

Invariants
- Each way, bytes go through unchanged and in order; what a side sent before the tunnel began
  (held by the listener after the request's head, or read with the upstream's `101`) goes first.
- Flow control: while a side's transport holds more than HIGH_WATER unsent bytes, the other
  side is not read, so a peer that reads slowly makes the proxy hold about HIGH_WATER (and one
  read) per direction, never more.
- An end of stream (FIN) from one side is passed on as one (a half-close) when both transports
  can (plain TCP); otherwise (TLS), or once both sides ended, or when either side closes or
  resets, the tunnel closes both.
- Nothing moving either way for `idle_timeout` seconds closes the tunnel; nothing else bounds
  its life but `close` (the proxy shutting down).
- On closing, bytes still queued toward a side get GRACE seconds to go, then that side is cut.
  `done` resolves when the tunnel closes. Nothing here raises into the event loop or logs above
  INFO: a peer leaving is the normal end of a tunnel.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("grayscale.tunnel")

HIGH_WATER = 64 * 1024  # bytes queued toward a side above which the other side is not read
GRACE = 5.0  # seconds a closing side has to take what is queued for it, before it is cut


class _Side(asyncio.Protocol):
    """One end of the tunnel: what it reads goes to its peer."""

    __slots__ = ("ended", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport):
        self.tunnel = tunnel
        self.transport = transport
        self.peer = self
        self.ended = False  # it sent its end of stream

    def data_received(self, data: bytes) -> None:
        self.tunnel.moved()
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        return self.tunnel.ended(self)

    def pause_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    """Copies bytes between `client` and `upstream` (transports whose protocols it takes over)
    until one closes, both end, they are silent for `idle_timeout`, or `close`."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        idle_timeout: float,
        to_client: bytes = b"",
        to_upstream: bytes = b"",
    ):
        """`to_client`, `to_upstream`: bytes sent first (the 101 head and what the upstream
        sent with it; what the client sent after its request's head)."""
        self._loop = asyncio.get_running_loop()
        self._idle_timeout = idle_timeout
        self._last = self._loop.time()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._client, self._upstream = _Side(self, client), _Side(self, upstream)
        self._client.peer, self._upstream.peer = self._upstream, self._client
        for side in (self._client, self._upstream):
            side.transport.set_write_buffer_limits(high=HIGH_WATER)
            side.transport.set_protocol(side)
        self._timer = self._loop.call_later(idle_timeout, self._expire)
        if to_client:
            client.write(to_client)
        if to_upstream:
            upstream.write(to_upstream)
        if client.is_closing() or upstream.is_closing():  # (gone before the tunnel began)
            self.close()
            return
        for side in (self._client, self._upstream):  # (the listener or the handshake paused it)
            if side.peer.transport.get_write_buffer_size() <= HIGH_WATER:
                side.transport.resume_reading()

    def moved(self) -> None:
        """Bytes went through: the tunnel is not idle."""
        self._last = self._loop.time()

    def ended(self, side: _Side) -> bool:
        """`side` sent its end of stream: pass it on where both transports can half-close (then
        True: keep `side` open for the other way), else close the tunnel."""
        peer = side.peer
        if peer.ended or not (side.transport.can_write_eof() and peer.transport.can_write_eof()):
            self.close()
            return False
        peer.transport.write_eof()
        return True

    def _expire(self) -> None:
        silent = self._loop.time() - self._last
        if silent < self._idle_timeout:
            self._timer = self._loop.call_later(self._idle_timeout - silent, self._expire)
            return
        log.info("tunnel silent for %.0f s: closed", silent)
        self.close()

    def close(self) -> None:
        """Close both sides (each gets GRACE seconds to take what is queued for it)."""
        if self.done.done():
            return
        self._timer.cancel()
        for side in (self._client, self._upstream):
            transport = side.transport
            if transport.is_closing():
                continue
            transport.close()
            if transport.get_write_buffer_size():
                self._loop.call_later(GRACE, transport.abort)
        self.done.set_result(None)
