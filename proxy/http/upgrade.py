"""An upstream connection made for one request that asks to switch protocols (a WebSocket
handshake): connected, the request head sent, the answer's head read; then the connection is
handed to a `tunnel.Tunnel` (a `101`), or the answer's body is read whole and it is closed.

Invariants
- The connection is new, never taken from a pool nor put back in one; an https upstream's is
  made with its pool's TLS context (`UpstreamClient.tls`: `ca_file` or the system's
  authorities, the client certificate; made once, renewed with the files), `server_name`
  checked and sent as SNI.
- The answer's head is bounded (MAX_HEAD bytes, MAX_FIELDS lines) and must come within the
  first-byte timeout; interim answers other than `101` are read and dropped. A status outside
  100-599 is a protocol error.
- A `101` hands the connection over with the bytes that came after its head (the upstream's
  first tunnelled bytes), never parsed. Only a `101` switches.
- Any other answer is read whole, at most MAX_BODY bytes, each wait for more bounded by the
  idle timeout; it is framed as llhttp frames it, its `Transfer-Encoding` only `chunked` or
  `identity` (else a protocol error); its end is its length, its last chunk or an orderly close.
  It ends cleanly or raises `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast

import httptools

from proxy.http.client import Origin
from proxy.http.errors import UpstreamError
from proxy.http.headers import tokens
from proxy.http.upstream_connection import MAX_FIELDS, MAX_HEAD

MAX_BODY = 1024 * 1024  # the body of an answer that refuses to switch: larger is a 502
_UNTIL_CLOSE_EXEMPT = frozenset({204, 304})  # bodiless statuses (the request is a GET)


class UpgradeConnection(asyncio.Protocol):
    """The upstream's side of one upgrade request: its answer's status, reason and headers,
    then its body (`read`) or its transport (`take`)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._received = 0  # bytes before the head was complete
        self._head = False  # the final answer's head is complete
        self._switched = False  # it was a 101: what follows is not HTTP
        self._rest = bytearray()  # what came after the 101 head
        self._until_close = False  # the body ends with the connection
        self._body = bytearray()
        self._complete = False
        self._error: UpstreamError | None = None
        # What a callback raised to stop llhttp (not read from the parser error's `__context__`,
        # which a compiled build does not set alike).
        self._raised: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's are only alike)

    def data_received(self, data: bytes) -> None:
        if self._switched:
            self._rest += data  # (read before reading paused: the tunnel's)
            return
        if self._complete or self._error is not None:
            return
        if not self._head:
            self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switched = self._head = True
            self._rest += data[int(exc.args[0]) :]
            if self.transport is not None:
                self.transport.pause_reading()
        except httptools.HttpParserError as exc:
            raised, self._raised = self._raised, None
            if raised is not None:
                self._fail(raised)
            elif self.status == 101:
                self._fail(UpstreamError("protocol", "a 101 that names no protocol"))
            else:
                self._fail(UpstreamError("protocol", f"a malformed answer: {exc}"))
            return
        if not self._head and self._received > MAX_HEAD:
            self._fail(UpstreamError("protocol", "the answer's head is too large"))
        self._wake()

    def eof_received(self) -> None:
        """The upstream is done sending: the connection closes (see `connection_lost`)."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._switched or self._complete or self._error is not None:
            self._wake()
            return
        if self._head and self._until_close and exc is None:
            self._complete = True
        else:
            self._error = UpstreamError("reset", "the upstream closed the connection")
        self._wake()

    # --- httptools callbacks ------------------------------------------------------------------

    def _stop(self, exc: UpstreamError) -> UpstreamError:
        """`exc`, noted as what stops the parser: a callback raises what this returns."""
        self._raised = exc
        return exc

    def on_message_begin(self) -> None:
        self.headers = []  # (after an interim answer, the next one)

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(self.headers) > MAX_FIELDS:
            raise self._stop(UpstreamError("protocol", "the answer has too many header lines"))

    def on_headers_complete(self) -> None:
        self.status = status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            raise self._stop(UpstreamError("protocol", f"an answer with status {status}"))
        if status < 200:
            return  # an interim answer (dropped), or a 101 (its parser stops: see above)
        self._head = True
        codings = tokens([v for n, v in self.headers if n.lower() == b"transfer-encoding"])
        if codings and codings != [b"chunked"] and set(codings) != {b"identity"}:
            raise self._stop(UpstreamError("protocol", "a transfer coding that was not asked for"))
        framed = codings == [b"chunked"] or any(
            n.lower() == b"content-length" for n, _ in self.headers
        )
        self._until_close = not framed and status not in _UNTIL_CLOSE_EXEMPT

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY:
            raise self._stop(
                UpstreamError("protocol", "the answer refusing the upgrade is too large")
            )

    def on_message_complete(self) -> None:
        if self._head:
            self._complete = True

    # --- for the caller -----------------------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, within: float) -> None:
        """Wait for more of the answer, at most `within` seconds."""
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(within):
                await self._waiter
        except TimeoutError:
            raise UpstreamError("timeout", "the upstream did not answer in time") from None
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def head(self, within: float) -> None:
        """Wait for the answer's head, at most `within` seconds."""
        deadline = self._loop.time() + within
        while not self._head:
            await self._wait(deadline - self._loop.time())

    async def read(self, idle_timeout: float) -> bytes:
        """The body of an answer that is not a 101, whole."""
        while not self._complete:
            await self._wait(idle_timeout)
        return bytes(self._body)

    @property
    def switched(self) -> bool:
        """Whether the answer was a 101: the connection is now the other protocol's."""
        return self._switched

    def take(self) -> tuple[asyncio.Transport, bytes]:
        """After a 101: the transport (reading paused) and the bytes that came after the head."""
        assert self._switched and self.transport is not None
        rest, self._rest = bytes(self._rest), bytearray()
        return self.transport, rest

    def close(self) -> None:
        """Close the connection (not after `take`: it is the tunnel's then)."""
        if self.transport is None:
            return
        if self._error is not None:
            self.transport.abort()
        else:
            self.transport.close()


async def ask_upgrade(
    origin: Origin,
    head: bytes,
    *,
    tls: ssl.SSLContext | None,
    connect_timeout: float,
    first_byte_timeout: float,
) -> UpgradeConnection:
    """Connect to `origin` (a new connection, over TLS with `tls` when given), send the request
    `head` and read the answer's head; `UpstreamError` (connect, connect_timeout, timeout,
    reset, protocol) if that fails."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _, connection = await loop.create_connection(
                UpgradeConnection,
                origin.host,
                origin.port,
                ssl=tls,
                server_hostname=origin.server_name if tls is not None else None,
            )
    except TimeoutError:
        raise UpstreamError("connect_timeout", "cannot connect in time") from None
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError("connect", f"cannot connect: {exc.strerror or exc}") from None
    try:
        assert connection.transport is not None
        connection.transport.write(head)
        await connection.head(first_byte_timeout)
    except BaseException:
        connection.close()
        raise
    return connection
