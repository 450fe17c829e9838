"""The data plane's HTTP/1.1 server: a TCP listener whose connections (`client_connection`)
hand each checked request (`request`) to one handler.

It does what a proxy's listener needs: keep-alive and pipelining (answered in order), request
bodies streamed with flow control, `100-continue` sent when the body is first read, answers of
known length, chunked or (for HTTP/1.0) delimited by closing, limits on the request head, idle,
body and send timeouts, handler cancellation when the client goes away, and a graceful drain.

With `tls`, every connection is TLS (see `tls`): its handshake comes first, with the
certificate in force as it begins, and with `http2` ALPN offers `h2` before `http/1.1`.

Invariants
- `stop` stops accepting at once, closes idle connections (and cuts those still in their TLS
  handshake), lets answers in progress finish for at most the drain timeout, then cancels the
  rest: it never waits longer.
- Each connection or request head refused before a handler sees it is told to `on_refused`
  once, with one of REFUSAL_REASONS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.http.client_connection import ClientConnection
from proxy.http.h2_server import ServerH2Connection
from proxy.http.request import Handler
from proxy.http.tls import ServerTls

HTTP2_MAX_STREAMS = 100  # streams open at once on one HTTP/2 connection (nginx's default too)
KEEPALIVE_TIMEOUT = 75.0  # an idle connection (or a request head never finished) is closed
BODY_TIMEOUT = 60.0  # longest wait for the next piece of a request body (nginx's default too)
SEND_TIMEOUT = 60.0  # longest wait for a client to take more of an answer (nginx's default too)
# Why a connection or a request head was refused before any handler saw it: an HTTP/2 preface
# while HTTP/2 is off, a TLS handshake on the clear-text port, an HTTP version not served, a
# malformed head, one too large, a method not served (CONNECT), a failed TLS handshake.
REFUSAL_REASONS = ("http2", "tls", "version", "malformed", "too_large", "method", "tls_handshake")
Refused = Callable[[str, str | None, str], None]  # told (reason, the client's address, detail)


def unheard(reason: str, peer: str | None, detail: str) -> None:
    """Where refusals go when nobody listens for them."""


class Listener:
    """Serves `handler` on a TCP address until `stop`: HTTP/1.x, and HTTP/2 when `http2` is on
    (a connection that opens with the HTTP/2 preface is handed to `h2_server`)."""

    def __init__(
        self,
        handler: Handler,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        *,
        http2: bool = False,
        http2_max_streams: int = HTTP2_MAX_STREAMS,
        tls: ServerTls | None = None,
        on_refused: Refused = unheard,
    ):
        """`tls`: the listener's TLS (None: clear text); `on_refused`: told of each refusal."""
        self.handler = handler
        self.tls = tls
        self.on_refused = on_refused
        self.http2 = http2  # serve HTTP/2 with prior knowledge (the preface) on this port
        self.http2_max_streams = http2_max_streams
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.connections: set[ClientConnection | ServerH2Connection] = set()
        self.closing = False
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        """Bind and start accepting (`reuse_port`: alongside other processes on that port)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection if self.tls is None else self._secure_connection,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])

    def use_http2(self, on: bool, max_streams: int) -> None:
        """Serve HTTP/2 (with `max_streams` streams at once) on the connections opened from now
        on, or not. Turned off, the HTTP/2 connections open are sent GOAWAY: their streams in
        progress finish, then they close, and their clients come back over HTTP/1.1."""
        was, self.http2, self.http2_max_streams = self.http2, on, max_streams
        if was and not on:
            for connection in list(self.connections):
                if isinstance(connection, ServerH2Connection):
                    connection.drain()

    def _connection(self) -> ClientConnection:
        return ClientConnection(self)

    def _negotiated(self, alpn: str | None) -> ClientConnection | ServerH2Connection:
        """The protocol of a TLS connection, as ALPN chose: HTTP/2, or else HTTP/1.x."""
        if alpn == "h2" and self.http2:
            return ServerH2Connection(self, self.http2_max_streams)
        return ClientConnection(self)

    def _secure_connection(self) -> asyncio.BaseProtocol:
        assert self.tls is not None
        return self.tls.protocol(self._negotiated, self._handshake_failed)

    def _handshake_failed(self, peer: str | None, detail: str) -> None:
        self.on_refused("tls_handshake", peer, detail)

    async def stop(self, drain_timeout: float) -> None:
        """Stop accepting, close idle connections, let answers in progress finish for up to
        `drain_timeout` seconds (each connection closes after its answer), then cut the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self.tls is not None:
            self.tls.abort()
        deadline = asyncio.get_running_loop().time() + drain_timeout
        for connection in list(self.connections):
            if connection.idle:
                connection.close()
            else:
                connection.drain()
        while True:
            busy = [task for c in self.connections for task in c.busy()]
            remaining = deadline - asyncio.get_running_loop().time()
            if not busy or remaining <= 0:
                break
            await asyncio.wait(busy, timeout=remaining)
        for connection in list(self.connections):
            connection.cancel()
        await asyncio.sleep(0)  # let the cancelled answers unwind
