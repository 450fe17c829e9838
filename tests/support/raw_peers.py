"""Raw peers for testing the proxy's HTTP code the way h11 and httpcore test theirs.

`RawUpstream` is a TCP server on 127.0.0.1 that does exactly what a test script tells it, byte
for byte, and records every byte each connection received; what it received is parsed by h11,
an HTTP/1.1 implementation independent of ours. `RawClient` is a client on a plain socket that
sends bytes as given and reads answers off the wire, noting whether each ended cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import h11

from proxy.app.server import Server


class Fields:
    """Header fields as (lower-case name, value) pairs, looked up by name."""

    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (lower case)."""
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        """The only value of header `name`, or None; fails when it appears twice."""
        values = self.values(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


@dataclass
class Received(Fields):
    """One request as h11 parsed it out of the bytes an upstream connection received."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower case, values as sent
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)


def parse_requests(data: bytes) -> tuple[list[Received], bytes]:
    """The complete requests at the start of `data` (parsed by h11), and the bytes after them."""
    requests: list[Received] = []
    while data:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        connection.receive_data(data)
        head: h11.Request | None = None
        body, trailers = bytearray(), []
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return requests, data
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                trailers = [(n.decode(), v.decode("latin-1")) for n, v in event.headers]
                break
        assert head is not None
        requests.append(
            Received(
                head.method.decode(),
                head.target.decode("latin-1"),
                [(n.decode(), v.decode("latin-1")) for n, v in head.headers],
                bytes(body),
                trailers,
            )
        )
        data = connection.trailing_data[0]  # what h11 did not consume: the next request
    return requests, b""


class PeerConnection(asyncio.Protocol):
    """One connection to a `RawUpstream`: the bytes it received, and ways to answer."""

    def __init__(self, upstream: RawUpstream):
        self.upstream = upstream
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()  # the proxy closed the connection (or its side of it)
        self._arrived = asyncio.Event()
        self._taken = 0  # requests already handed to the script
        self._parsed: list[Received] = []  # the complete requests parsed so far...
        self._consumed = 0  # ...from this many bytes of `received`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upstream.connections.append(self)
        self.upstream.start_script(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._arrived.set()

    def eof_received(self) -> bool:
        self.closed.set()  # the proxy closed its side: nothing more will come
        self._arrived.set()
        return True  # keep ours open: the script decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self._arrived.set()

    @property
    def requests(self) -> list[Received]:
        """The complete requests received so far."""
        return list(self._parse())

    def _parse(self) -> list[Received]:
        """The complete requests received so far, each parsed once (a request is parsed on its
        own, so parsing on from the end of the last one finds what parsing it all would)."""
        if len(self.received) > self._consumed:
            found, rest = parse_requests(bytes(self.received[self._consumed :]))
            self._parsed += found
            self._consumed = len(self.received) - len(rest)
        return self._parsed

    async def until(self, predicate: Callable[[bytes], bool], within: float = 5.0) -> None:
        """Wait until the bytes received satisfy `predicate`."""
        async with asyncio.timeout(within):
            while not predicate(bytes(self.received)):
                if self.closed.is_set():
                    raise ConnectionError("the proxy closed the connection")
                self._arrived.clear()
                await self._arrived.wait()

    async def head(self, within: float = 5.0) -> bytes:
        """Wait for the head of the next request (without its body): the bytes up to it."""
        await self.until(lambda data: data.count(b"\r\n\r\n") > self._taken, within)
        self._taken += 1
        return bytes(self.received)

    async def request(self, within: float = 5.0) -> Received:
        """Wait for the next complete request."""
        index = self._taken
        await self.until(lambda data: len(self._parse()) > index, within)
        self._taken += 1
        return self._parse()[index]

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """An orderly close (FIN) once what was sent is out."""
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Close with a reset (RST), as a crashed server or a cut line does."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


Script = Callable[[PeerConnection, int], Coroutine[Any, Any, None]]


def answer(body: bytes = b"ok", status: int = 200, headers: bytes = b"") -> bytes:
    """A whole answer framed by Content-Length."""
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


async def answer_each(connection: PeerConnection, reply: Callable[[Received], bytes]) -> None:
    """Send `reply(request)` for each request, until the connection closes."""
    while True:
        try:
            request = await connection.request(within=30)
        except (ConnectionError, TimeoutError):
            return
        connection.send(reply(request))


async def echo_requests(connection: PeerConnection, index: int) -> None:
    """Answer each request with a body naming its method and target, keep-alive."""
    await answer_each(connection, lambda r: answer(f"{r.method} {r.target}".encode()))


class RawUpstream:
    """A scripted upstream: `script(connection, index)` runs for each connection accepted."""

    def __init__(self, script: Script = echo_requests):
        self.script = script
        self.connections: list[PeerConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._accepted = asyncio.Event()
        self.url = ""

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: PeerConnection(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def start_script(self, connection: PeerConnection) -> None:
        index = len(self.connections) - 1
        self._accepted.set()
        self._tasks.append(asyncio.get_running_loop().create_task(self.script(connection, index)))

    async def connection(self, index: int, within: float = 5.0) -> PeerConnection:
        """The `index`-th connection accepted, once it is."""
        async with asyncio.timeout(within):
            while len(self.connections) <= index:
                self._accepted.clear()
                await self._accepted.wait()
        return self.connections[index]

    @property
    def requests(self) -> list[Received]:
        """Every complete request received, on every connection, in connection order."""
        return [request for c in self.connections for request in c.requests]

    @property
    def received(self) -> bytes:
        """Every byte received, on every connection."""
        return b"".join(bytes(c.received) for c in self.connections)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class Answer(Fields):
    """An answer as a client read it off the wire."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # names lower case
    body: bytes
    clean: bool  # the answer's framing ended properly (length reached, last chunk, or a close)


class RawClient:
    """A client on a plain TCP connection: writes bytes as given, reads answers off the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 24)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, *, head_request: bool = False, within: float = 5.0) -> Answer:
        """The next answer (the interim 1xx ones skipped)."""
        async with asyncio.timeout(within):
            while True:
                answer = await self._read(head_request)
                if not 100 <= answer.status < 200:
                    return answer

    async def _read(self, head_request: bool) -> Answer:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = ([*lines[0].split(" ", 2), ""])[:3]
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        fields = dict(headers)
        code = int(status)
        if head_request or code in (204, 304) or 100 <= code < 200:
            return Answer(code, reason, headers, b"", True)
        if "transfer-encoding" in fields:
            chunks, clean = bytearray(), False
            try:
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await self.reader.readexactly(size + 2)
                    if size == 0:
                        if chunk != b"\r\n":  # trailer lines, then the blank line
                            await self.reader.readuntil(b"\r\n\r\n")
                        clean = True
                        break
                    chunks += chunk[:-2]
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            return Answer(code, reason, headers, bytes(chunks), clean)
        if "content-length" in fields:
            try:
                body = await self.reader.readexactly(int(fields["content-length"]))
            except asyncio.IncompleteReadError as exc:
                return Answer(code, reason, headers, exc.partial, False)
            return Answer(code, reason, headers, body, True)
        try:
            rest = await self.reader.read()
        except ConnectionError:
            return Answer(code, reason, headers, b"", False)
        return Answer(code, reason, headers, rest, True)

    async def closed(self, within: float = 5.0) -> bool:
        """Whether the proxy closes the connection (without sending anything more)."""
        try:
            async with asyncio.timeout(within):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


UpstreamFactory = Callable[..., Awaitable[RawUpstream]]  # (script=echo_requests)
GatewayFactory = Callable[..., Awaitable[tuple[Server, RawUpstream]]]  # (script, *, path, ...)
