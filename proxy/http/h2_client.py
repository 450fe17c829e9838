"""An HTTP/2 client for upstreams (gRPC and h2 model servers): many requests at once over one
connection per origin, each on its own stream, with the interface of the HTTP/1.1
`UpstreamClient` (`request` returns an answer with `status`, `headers`, `chunks`, `read`,
`release`), plus the answer's `trailers`.

Cleartext upstreams (`http://`) are spoken to in h2c with prior knowledge; `https://` ones over
TLS, with ALPN `h2` (the connection fails with `protocol` if the upstream chooses otherwise).

Invariants
- Per origin (host, port, TLS context, keep-alive timeout) there is one pool; a new stream goes
  on its oldest connection with room (see `h2_upstream_connection`), and only when every
  connection is full (or going away) is another one opened: at most one connect is under way
  per pool at a time, and requests that find no room wait for it.
- The request's header block carries `:method`, `:scheme`, `:authority` (the origin's Host),
  `:path` (the origin's path prefix and the target), `te: trailers`, a `content-length` when
  the body's length is known, and the given fields with lower-case names, less those HTTP/2
  forbids (RFC 9113 §8.2.2: hop-by-hop fields and those `Connection` names; Host, as
  `:authority`; Content-Length, set here).
- A request is sent again (once; after a GOAWAY, on another connection) only when the upstream
  did not process it (`StreamRefused`: GOAWAY above its stream, or REFUSED_STREAM) and its body
  can be sent again (none, or bytes): RFC 9113 §8.7 makes this safe for any method. A streamed
  body is never sent twice; the error then says `retryable`.
- The request body is sent alongside the answer (HTTP/2 is full duplex): `request` returns at
  the answer's head even if the body is still going (a gRPC bidirectional stream), and the
  answer's release stops it. A body that fails after the head fails the answer with its own
  exception.
- `first_byte_timeout` bounds sending and waiting for the answer's head; for a streamed body,
  `send_timeout` (if given) bounds the sending, and the first-byte timer starts once it is all
  sent. A request whose body was still arriving from the client at the send timeout fails with
  `request_timeout`; one waiting for the upstream's window, with `timeout`. Either resets only
  its stream.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator

from proxy.http.client import BODYLESS_METHODS, Body, Origin, client_context, renewed_context
from proxy.http.errors import UpstreamError
from proxy.http.h2_fields import field
from proxy.http.h2_stream import Fields, H2Stream, StreamRefused
from proxy.http.h2_upstream_connection import H2UpstreamConnection
from proxy.http.headers import HOP_BY_HOP, connection_named
from proxy.http.pool import KEEPALIVE_TIMEOUT
from proxy.http.upstream_connection import Interim

_NOT_SENT = HOP_BY_HOP | {b"host", b"content-length"}
_AUTHORITIES = 1024  # Host values remembered as `:authority` bytes (one per upstream origin)
_authorities: dict[str, bytes] = {}
_ALPN = ["h2"]  # what a TLS connection to an HTTP/2 upstream offers


class H2Answer:
    """An upstream's answer on one stream: status, headers, a body read with `chunks` or `read`,
    and the trailers that ended it."""

    __slots__ = ("_connection", "_sender", "_stream", "content_length", "headers", "status")

    reason = b""  # HTTP/2 has no reason phrase

    def __init__(
        self,
        connection: H2UpstreamConnection,
        stream: H2Stream,
        sender: asyncio.Task[None] | None,
    ):
        self._connection, self._stream, self._sender = connection, stream, sender
        self.status = stream.status
        self.headers = stream.headers  # lower-case names, no pseudo-header fields
        self.content_length = stream.content_length

    async def chunks(self, idle_timeout: float, deadline: float) -> AsyncIterator[bytes]:
        """The body as it arrives, each piece acknowledged to the upstream as it is handed on.
        `idle_timeout` bounds the silence between two pieces, and `deadline`
        (`time.monotonic()`) the whole answer."""
        connection, stream = self._connection, self._stream
        while True:
            data = connection.take(stream)
            if data is None:
                wait = min(idle_timeout, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(wait):
                        await connection.more(stream)
                except TimeoutError:
                    raise UpstreamError("timeout", "the upstream did not answer in time") from None
                continue
            if not data:
                return
            yield data

    async def read(self, idle_timeout: float, deadline: float) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks(idle_timeout, deadline)])

    @property
    def complete(self) -> bool:
        """Whether the whole answer was received."""
        return self._stream.complete

    @property
    def trailers(self) -> Fields:
        """The fields of the header block that ended the answer after its body (gRPC's
        `grpc-status`, `grpc-message`); empty without one. A trailers-only answer (one header
        block, with END_STREAM) has its fields in `headers`."""
        return self._stream.trailers

    def release(self) -> None:
        """Done with the answer: its stream is reset (CANCEL) unless it ended both ways."""
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._connection.release(self._stream)


class H2Pool:
    """The HTTP/2 connections to one upstream origin (see the module's rules)."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        server_name: str | None = None,
    ):
        """`server_name`: the name a TLS upstream's certificate is checked for (and sent as
        SNI); `host` unless given."""
        self.host, self.port, self.tls = host, port, tls
        self.server_name = server_name or host
        self.keepalive_timeout = keepalive_timeout
        self._connections: list[H2UpstreamConnection] = []  # oldest first
        self._connecting: asyncio.Task[H2UpstreamConnection] | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()

    async def connection(self, connect_timeout: float) -> H2UpstreamConnection:
        """A connection with room for one more stream: an open one, else a new one."""
        while True:
            for connection in self._connections:
                if connection.has_room:
                    return connection
            connecting = self._connecting
            if connecting is None:
                connecting = self._loop.create_task(self._connect(connect_timeout))
                connecting.add_done_callback(self._connected)
                self._connecting = connecting
            try:
                fresh = await asyncio.shield(connecting)
            except UpstreamError as exc:  # (each waiter raises its own copy)
                raise UpstreamError(exc.reason, exc.detail) from None
            if fresh.has_room:
                return fresh
            if not fresh.streams:  # (else others filled it: connect again)
                if fresh.closed or fresh.going_away:
                    raise UpstreamError("connect", "the upstream closed the connection at once")
                raise UpstreamError("protocol", "the upstream takes no streams")

    async def _connect(self, connect_timeout: float) -> H2UpstreamConnection:
        connection: H2UpstreamConnection | None = None
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await self._loop.create_connection(
                    lambda: H2UpstreamConnection(
                        self._forget, self.keepalive_timeout, self.tls is not None
                    ),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.server_name if self.tls else None,
                )
                await asyncio.shield(connection.ready)  # the upstream's SETTINGS
        except TimeoutError:
            if connection is not None:
                connection.close()
            raise UpstreamError("connect_timeout", "cannot connect in time") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect: {exc.strerror or exc}") from None
        if self._closed:  # (closed while connecting)
            connection.close()
            raise UpstreamError("connect", "the client was closed")
        self._connections.append(connection)
        return connection

    def _connected(self, task: asyncio.Task[H2UpstreamConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone

    def _forget(self, connection: H2UpstreamConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    def close(self) -> None:
        """Close every connection; the streams still in flight fail with `reset`."""
        self._closed = True
        for connection in list(self._connections):
            connection.close()


class H2Client:
    """Sends requests to upstreams over HTTP/2, many streams to a connection."""

    def __init__(self) -> None:
        self._pools: dict[tuple[object, ...], H2Pool] = {}
        self._secure: list[tuple[Origin, H2Pool]] = []  # https pools with contexts made here

    def pool(self, origin: Origin, tls: ssl.SSLContext | None = None) -> H2Pool:
        """The pool for `origin`; for https, over `tls` (ALPN set to h2 on it: a context given
        here is then for HTTP/2 only), else over one made from the origin's authorities and
        client certificate (`client.client_context`), read when the pool is made."""
        key = (origin.key, tls)
        pool = self._pools.get(key)
        if pool is None:
            context: ssl.SSLContext | None = None
            if tls is not None:
                context = tls
                context.set_alpn_protocols(_ALPN)
            elif origin.tls:
                context = client_context(origin, _ALPN)
            pool = self._pools[key] = H2Pool(
                origin.host, origin.port, context, origin.keepalive_timeout, origin.server_name
            )
            if origin.tls and tls is None:
                self._secure.append((origin, pool))
        return pool

    def renew_tls(self) -> None:
        """Read the https upstreams' certificate files again, for the connections made from
        now on (as `UpstreamClient.renew_tls`; a pool whose files no longer load keeps its
        context, and says so)."""
        for origin, pool in self._secure:
            pool.tls = renewed_context(origin, _ALPN) or pool.tls

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
        send_timeout: float | None = None,
        interim: Interim | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> H2Answer:
        """Send a request on a stream and wait for the answer's head.

        As `UpstreamClient.request` (see the module's rules for the timeouts, and for when a
        request is sent again): `target` is the path and query, `headers` rendered header
        lines (``Name: value`` and CRLF each) that do not frame the body, `interim` is told of
        each interim answer (1xx) but 100. `tls`: the context for an https origin (see
        `pool`)."""
        fields = request_fields(
            origin,
            method,
            target=target,
            headers=headers,
            body=body,
            content_length=content_length,
        )
        pool = self.pool(origin, tls)
        replayable = body is None or isinstance(body, bytes)
        for attempt in range(2):
            connection = await pool.connection(connect_timeout)
            try:
                return await _exchange(
                    connection,
                    fields,
                    body,
                    first_byte_timeout=first_byte_timeout,
                    send_timeout=send_timeout,
                    interim=interim,
                )
            except StreamRefused:
                if attempt or not replayable:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every connection."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._secure.clear()


def request_fields(
    origin: Origin,
    method: str,
    *,
    target: bytes,
    headers: bytes,
    body: Body,
    content_length: int | None,
) -> Fields:
    """The request's header block (see the module's rules)."""
    authority = _authorities.get(origin.host_header)
    if authority is None:
        try:
            authority = origin.host_header.encode("idna")  # an IDN host as punycode
        except UnicodeError:
            authority = origin.host_header.encode("utf-8", "surrogateescape")
        if len(_authorities) < _AUTHORITIES:
            _authorities[origin.host_header] = authority
    fields: Fields = [
        (b":method", method.encode("latin-1")),
        (b":scheme", b"https" if origin.tls else b"http"),
        (b":authority", authority),
        (b":path", origin.raw_prefix + target or b"/"),
    ]
    lines: Fields = []
    named: list[bytes] = []
    for line in headers.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon:
            key = name.strip().lower()
            lines.append(field(key, value.strip(b" \t")))
            if key == b"connection":
                named.append(value)
    dropped = _NOT_SENT | connection_named(named) if named else _NOT_SENT
    fields.extend(field for field in lines if field[0] not in dropped)
    fields.append((b"te", b"trailers"))
    if isinstance(body, bytes):
        length: int | None = len(body)
    elif body is not None:
        length = content_length
    else:
        length = None if method in BODYLESS_METHODS else 0
    if length is not None:
        fields.append((b"content-length", b"%d" % length))
    return fields


async def _exchange(
    connection: H2UpstreamConnection,
    fields: Fields,
    body: Body,
    *,
    first_byte_timeout: float,
    send_timeout: float | None,
    interim: Interim | None,
) -> H2Answer:
    """Open a stream, send the request on it, and wait for the answer's head."""
    stream = connection.open(fields, not body, interim)
    sender: asyncio.Task[None] | None = None
    try:
        if isinstance(body, bytes):
            sent = connection.write(stream, body, 0, True) if body else 0
            if sent < len(body):  # (the rest waits for the windows)
                sender = asyncio.create_task(connection.send(stream, body, sent, True))
        elif body is not None:
            sender = asyncio.create_task(_send_stream(connection, stream, body))
        if sender is not None:
            sender.add_done_callback(_retrieve)
        await _head(stream, sender, first_byte_timeout, send_timeout, body)
    except BaseException:
        if sender is not None:
            sender.cancel()
        connection.release(stream)
        raise
    return H2Answer(connection, stream, sender)


async def _send_stream(
    connection: H2UpstreamConnection, stream: H2Stream, body: AsyncIterable[bytes]
) -> None:
    """Send a body as it comes from the client, then END_STREAM. A failure of the body fails
    the stream with it, and resets it."""
    try:
        stream.awaiting_body = True
        async for chunk in body:
            stream.awaiting_body = False
            if chunk:
                await connection.send(stream, chunk)
            stream.awaiting_body = True
        stream.awaiting_body = False
        await connection.send(stream, b"", end=True)
    except UpstreamError:
        raise  # (the stream's own failure)
    except Exception as exc:
        connection.cancel(stream, exc)
        raise


async def _head(
    stream: H2Stream,
    sender: asyncio.Task[None] | None,
    first_byte_timeout: float,
    send_timeout: float | None,
    body: Body,
) -> None:
    """Wait for the answer's head within the timeouts (see the module's rules)."""
    head = stream.head
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_byte_timeout
    if sender is not None:
        streamed = not isinstance(body, bytes)
        sending = send_timeout if streamed and send_timeout is not None else first_byte_timeout
        await asyncio.wait((head, sender), timeout=sending, return_when=asyncio.FIRST_COMPLETED)
        if not head.done():
            if not sender.done():
                if stream.awaiting_body:
                    raise UpstreamError(
                        "request_timeout", "the request body was still arriving at the timeout"
                    )
                raise UpstreamError("timeout", "the upstream did not take the request in time")
            sender.result()  # (raises its failure)
            if streamed:
                deadline = loop.time() + first_byte_timeout
    if not head.done():
        await asyncio.wait((head,), timeout=deadline - loop.time())
        if not head.done():
            raise UpstreamError("timeout", "the upstream did not answer in time")
    head.result()  # (raises its failure)


def _retrieve(task: asyncio.Task[None]) -> None:
    """A sender's failure is the request's, or after the head the answer's (see
    `_send_stream`): nothing to log."""
    if not task.cancelled():
        task.exception()
