"""A real HTTP/2 upstream for tests, on the `h2` library and asyncio, that answers each stream
as a test's handler says and records what it received; and a helper to ask it with `H2Client`.

A handler gets an `Exchange` per stream and can answer with headers, data in pieces (within the
client's flow-control windows), trailers or a trailers-only answer, reset the stream, send a
GOAWAY, or hold the answer back until the client resets the stream. Request bodies are
acknowledged as they arrive (the default 64 KiB windows), so a client sending more must wait
for WINDOW_UPDATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import GoAwayFrame

from proxy.http.client import Origin
from proxy.http.h2_client import H2Answer, H2Client
from proxy.http.upstream_connection import Interim
from tests.support.tls import self_signed

Fields = list[tuple[bytes, bytes]]


@dataclass
class Received:
    """One stream as the upstream received it."""

    connection: int  # which of the upstream's connections (0 for the first accepted)
    sid: int
    headers: Fields  # as received, pseudo-header fields first
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM came
    reset: int | None = None  # the client's RST_STREAM error code

    def header(self, name: bytes) -> bytes | None:
        """The value of field `name` (lower case), if it came."""
        return next((value for key, value in self.headers if key == name), None)


class Exchange:
    """One stream, for a handler to answer."""

    def __init__(self, connection: _Connection, received: Received):
        self.connection = connection
        self.received = received
        self._changed = asyncio.Event()  # data, END_STREAM, a reset or a window update came

    async def _until(self, check: Callable[[], bool]) -> None:
        while not check():
            self._changed.clear()
            await self._changed.wait()

    async def body(self) -> bytes:
        """The whole request body, once END_STREAM came."""
        await self._until(lambda: self.received.ended or self.received.reset is not None)
        return bytes(self.received.body)

    async def until_body(self, size: int) -> bytes:
        """The request body so far, once it holds more than `size` bytes, or ended."""
        await self._until(
            lambda: (
                len(self.received.body) > size
                or self.received.ended
                or self.received.reset is not None
            )
        )
        return bytes(self.received.body)

    async def until_reset(self) -> int:
        """Wait until the client resets the stream; its error code."""
        await self._until(lambda: self.received.reset is not None)
        return cast(int, self.received.reset)

    def answer(
        self, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = (), end: bool = False
    ) -> None:
        """Send the answer's head (a trailers-only answer with `end`)."""
        fields = [(b":status", b"%d" % status), *headers]
        self.connection.h2.send_headers(self.received.sid, fields, end_stream=end)
        self.connection.flush()

    async def send(self, data: bytes, end: bool = False) -> None:
        """Send body bytes within the client's windows (waiting for WINDOW_UPDATE)."""
        h2c, sid = self.connection.h2, self.received.sid
        while data:
            await self._until(
                lambda: self.received.reset is not None or h2c.local_flow_control_window(sid) > 0
            )
            if self.received.reset is not None:
                return
            size = min(len(data), h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            h2c.send_data(sid, data[:size])
            data = data[size:]
            self.connection.flush()
        if end:
            self.end()

    def end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """End the answer, with trailers if given."""
        if trailers:
            self.connection.h2.send_headers(self.received.sid, list(trailers), end_stream=True)
        else:
            self.connection.h2.end_stream(self.received.sid)
        self.connection.flush()

    def reset(self, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """Reset the stream."""
        self.connection.h2.reset_stream(self.received.sid, code)
        self.connection.flush()

    def goaway(self, last_stream_id: int, code: int = 0) -> None:
        """Send GOAWAY naming `last_stream_id` (written here: h2 would send nothing after it)."""
        self.connection.goaway(last_stream_id, code)


Handler = Callable[[Exchange], Coroutine[Any, Any, None]]


async def hello(exchange: Exchange) -> None:
    """Answer 200 with the request's method and path."""
    body = await exchange.body()
    received = exchange.received
    text = b"%s %s %d" % (received.header(b":method"), received.header(b":path"), len(body))
    exchange.answer(200, [(b"content-length", b"%d" % len(text))])
    await exchange.send(text, end=True)


async def echo(exchange: Exchange) -> None:
    """Answer with the request body, in the client's windows."""
    body = await exchange.body()
    exchange.answer(200, [(b"content-length", b"%d" % len(body))])
    await exchange.send(body, end=True)


async def hold(exchange: Exchange) -> None:
    """Never answer; wait for the client to give up on the stream."""
    await exchange.until_reset()


async def http1_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.1 server's answer to the HTTP/2 preface, for `asyncio.start_server` (the
    connection then stays open until the client closes it, so that no unread byte turns the
    close into a reset)."""
    await reader.read(24)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    while await reader.read(65536):
        pass
    writer.close()


def tls_contexts(folder: Path, alpn: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 offering `alpn`, and a client context that trusts it
    (the test is skipped without the openssl command, which makes the certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS upstream")
    cert, key = self_signed(folder)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    server.set_alpn_protocols(alpn)
    return server, ssl.create_default_context(cafile=str(cert))


async def ask(
    client: H2Client,
    upstream: H2Upstream | str,
    method: str = "GET",
    target: bytes = b"/",
    *,
    headers: bytes = b"",
    body: bytes | AsyncIterator[bytes] | None = None,
    first_byte_timeout: float = 10.0,
    send_timeout: float | None = None,
    tls: ssl.SSLContext | None = None,
    keepalive_timeout: float = 4.0,
    interim: Interim | None = None,
) -> H2Answer:
    """Send a request with `client` to `upstream` (or a URL)."""
    url = upstream if isinstance(upstream, str) else upstream.url
    return await client.request(
        Origin(url, keepalive_timeout=keepalive_timeout),
        method,
        target=target,
        headers=headers,
        body=body,
        content_length=None,
        connect_timeout=5.0,
        first_byte_timeout=first_byte_timeout,
        send_timeout=send_timeout,
        interim=interim,
        tls=tls,
    )


async def whole(answer: H2Answer) -> bytes:
    """The whole body of `answer`, which is then released."""
    try:
        return await answer.read(10.0, time.monotonic() + 10.0)
    finally:
        answer.release()


class _Connection(asyncio.Protocol):
    """One client connection to the upstream."""

    def __init__(self, upstream: H2Upstream, index: int):
        self.upstream = upstream
        self.index = index
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: upstream.max_streams},
        )
        self.transport: asyncio.Transport | None = None
        self.exchanges: dict[int, Exchange] = {}
        self.goaway_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            self._handle(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.open.discard(self)
        for exchange in self.exchanges.values():
            if exchange.received.reset is None and not exchange.received.ended:
                exchange.received.reset = -1  # (the connection went: no code)
            exchange._changed.set()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            received = Received(self.index, event.stream_id, list(event.headers))
            received.ended = event.stream_ended is not None
            self.upstream.requests.append(received)
            exchange = self.exchanges[event.stream_id] = Exchange(self, received)
            self.upstream.tasks.append(asyncio.create_task(self.upstream.handler(exchange)))
            return
        known = self.exchanges.get(getattr(event, "stream_id", 0))
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if known is not None:
                known.received.body += event.data
        elif isinstance(event, h2.events.StreamEnded) and known is not None:
            known.received.ended = True
        elif isinstance(event, h2.events.StreamReset) and known is not None:
            known.received.reset = int(event.error_code)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for each in self.exchanges.values():
                each._changed.set()
            return
        if known is not None:
            known._changed.set()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self, last_stream_id: int, code: int) -> None:
        frame = GoAwayFrame(0)
        frame.last_stream_id, frame.error_code = last_stream_id, code
        self.flush()
        if self.transport is not None:
            self.transport.write(frame.serialize())


class H2Upstream:
    """An HTTP/2 server on 127.0.0.1 answering each stream with `handler` (h2c with prior
    knowledge, or TLS with ALPN h2 when given a server context)."""

    def __init__(
        self,
        handler: Handler = hello,
        *,
        max_streams: int = 100,
        tls: ssl.SSLContext | None = None,
    ):
        self.handler = handler
        self.max_streams = max_streams
        self.tls = tls
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
        self.requests: list[Received] = []
        self.accepted = 0  # connections accepted
        self.open: set[_Connection] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None

    def _connection(self) -> _Connection:
        connection = _Connection(self, self.accepted)
        self.accepted += 1
        self.open.add(connection)
        return connection

    async def start(self) -> H2Upstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, "127.0.0.1", 0, ssl=self.tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def drop(self) -> None:
        """Cut every connection (no GOAWAY)."""
        for connection in list(self.open):
            if connection.transport is not None:
                connection.transport.abort()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
