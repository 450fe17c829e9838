"""TLS on the listeners: each connection's handshake, made with the certificate in force when
it began, before the connection's protocol sees a byte.

The handshake is driven by asyncio's own TLS protocol (`asyncio.sslproto`), set on the
connection's transport when its first bytes arrive and given those bytes: so nothing is read
before it takes over, on uvloop as on asyncio's loops, and a failed handshake is ours to count
(a server made with `create_server(ssl=...)` lets failures pass unseen).

Invariants
- A connection is handed to the protocol that `factory` makes only once its handshake is done;
  that protocol sees every byte of application data, in order.
- A handshake uses the context in force when its connection's first bytes arrived: `use` puts
  a new one in force for the handshakes to come, and never touches connections already open
  (their sessions keep their certificate).
- A failed handshake (bytes that are not TLS, no version in common, a client that refuses the
  certificate, none within HANDSHAKE_TIMEOUT) is told to `on_failure`, and its connection
  closed; nothing reaches the loop's exception handler. A connection closed before it sent a
  byte is no failure (a load balancer's TCP check). Plain HTTP on a TLS port is answered `400`
  in plain text, which the client can read.
- ALPN offers `http/1.1`, and `h2` first when the listener serves HTTP/2; the protocol chosen
  is told to `factory`, which makes the connection's protocol for it (None: the client offered
  none, which is HTTP/1.1).
- A private key is never asked a passphrase for: an encrypted key fails to load.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from typing import cast

from proxy.config.model import ListenerTls, TlsVersion

ALPN_PROTOCOLS = ["http/1.1"]  # offered by ALPN, in order of preference
ALPN_WITH_HTTP2 = ["h2", "http/1.1"]
HANDSHAKE_TIMEOUT = 10  # seconds from the connection to its handshake's end
_VERSIONS = {TlsVersion.TLS_1_2: ssl.TLSVersion.TLSv1_2, TlsVersion.TLS_1_3: ssl.TLSVersion.TLSv1_3}
_HANDSHAKE_RECORD = 0x16  # the first byte of a ClientHello
_PLAIN_BODY = json.dumps(
    {"error": "bad_request", "message": "plain HTTP sent to a TLS port: use https://"}
).encode()
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_PLAIN_BODY), _PLAIN_BODY)
)

Failure = Callable[[str | None, str], None]  # told (the client's address, what went wrong)
Factory = Callable[[str | None], asyncio.BaseProtocol]  # makes a protocol for an ALPN choice


def no_passphrase() -> bytes:
    """The passphrase offered for a private key: none (else OpenSSL would ask the terminal)."""
    return b""


def server_context(tls: ListenerTls, http2: bool = False) -> ssl.SSLContext:
    """A server context made from `tls`, offering `h2` by ALPN when `http2`, its files read now
    (`OSError` or `ssl.SSLError` when they do not load)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION  # (a client could make the proxy work for it)
    context.load_cert_chain(tls.cert_file, tls.key_file, no_passphrase)
    context.set_alpn_protocols(ALPN_WITH_HTTP2 if http2 else ALPN_PROTOCOLS)
    return context


class ServerTls:
    """A listener's TLS: the context each new handshake takes, and the handshakes under way."""

    def __init__(self, tls: ListenerTls, http2: bool = False):
        self.http2 = http2
        self.context = server_context(tls, http2)
        self.handshakes: set[TlsHandshake] = set()

    def use(self, tls: ListenerTls) -> None:
        """Read `tls`'s files again: the handshakes from now on show what they hold. When they
        do not load, the context in force stays and the error is raised."""
        self.context = server_context(tls, self.http2)

    def protocol(self, factory: Factory, on_failure: Failure) -> TlsHandshake:
        """A new connection's protocol: its handshake, then the protocol `factory` makes for
        the protocol the client and the proxy agreed by ALPN."""
        return TlsHandshake(self, factory, on_failure)

    def abort(self) -> None:
        """Cut the connections whose handshake is under way (the listener is stopping)."""
        for handshake in list(self.handshakes):
            handshake.abort()


def describe(error: BaseException) -> str:
    """What went wrong in a failed handshake, for an operator."""
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    if isinstance(error, ConnectionAbortedError):
        return f"no TLS handshake within {HANDSHAKE_TIMEOUT:.0f} s"
    if isinstance(error, ConnectionResetError) and not error.args:  # (its end of file)
        return "the client closed the connection during the TLS handshake"
    return f"TLS handshake failed: {error}"


class TlsHandshake(asyncio.Protocol):
    """A connection until its TLS handshake is done."""

    def __init__(self, tls: ServerTls, factory: Factory, on_failure: Failure):
        self._tls = tls
        self._factory = factory
        self._on_failure = on_failure
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's are only alike)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        self._tls.handshakes.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._silent)

    def data_received(self, data: bytes) -> None:
        """The connection's first bytes: a ClientHello, handed on with the transport to asyncio's
        TLS protocol (which reads them first), or plain HTTP, told to use https."""
        assert self._transport is not None and self._timer is not None
        self._timer.cancel()
        transport = self._transport
        if data[0] != _HANDSHAKE_RECORD and data[:1].isalpha():  # a request line's method
            self._fail("plain HTTP sent to the TLS port")
            transport.write(_PLAIN_HTTP_ANSWER)
            transport.close()
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_over)
        secure = SSLProtocol(
            loop,
            _Handover(self._factory),
            self._tls.context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=HANDSHAKE_TIMEOUT,  # (a client silent at the close: cut)
        )
        transport.set_protocol(secure)
        secure.connection_made(transport)
        while data:  # (as a transport gives a buffered protocol what it reads)
            buffer = secure.get_buffer(len(data))
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            secure.buffer_updated(size)
            data = data[size:]

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone before its first byte (after it, asyncio's TLS protocol has the transport)."""
        if self._timer is not None:
            self._timer.cancel()
        self._tls.handshakes.discard(self)

    def _handshake_over(self, waiter: asyncio.Future[None]) -> None:
        self._tls.handshakes.discard(self)
        error = None if waiter.cancelled() else waiter.exception()
        if error is not None:  # (else done, or closed by us)
            self._fail(describe(error))

    def _silent(self) -> None:
        """No byte came within HANDSHAKE_TIMEOUT."""
        self._fail(f"no TLS handshake within {HANDSHAKE_TIMEOUT:.0f} s")
        self.abort()

    def _fail(self, detail: str) -> None:
        self._tls.handshakes.discard(self)
        self._on_failure(self._peer, detail)

    def abort(self) -> None:
        """Cut the connection."""
        self._tls.handshakes.discard(self)
        if self._transport is not None:
            self._transport.abort()


class _Handover(asyncio.Protocol):
    """Stands for a connection's protocol during its handshake; when it is done, the protocol
    `factory` makes for the ALPN choice takes over the secure transport, before any data is
    read."""

    def __init__(self, factory: Factory):
        self._factory = factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        secure = transport.get_extra_info("ssl_object")
        protocol = self._factory(None if secure is None else secure.selected_alpn_protocol())
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
