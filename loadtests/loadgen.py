"""A Python HTTP/1.1 load generator and a fixed-answer upstream, both on raw asyncio protocols
with llhttp (through httptools): light enough that a Python proxy between them, not they, is
what limits the rate. Used by the throughput guard in the test suite, and by `bench_proxy.py`
when `wrk` or `nginx` is not installed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httptools

ANSWER = (
    b'{"model": "bench", "predictions": [{"label": "positive", "score": 0.98}], "padding": "'
    + b"x" * 120
    + b'"}'
)  # 215 bytes, like a small model's JSON answer
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)
BODY = b"a" * 300
PATH = "/v1/models/bench:predict"


class _Upstream(asyncio.Protocol):
    """Answers every request with `ANSWER`, once its body has arrived."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(_RESPONSE)


async def start_upstream(host: str = "127.0.0.1", port: int = 0) -> tuple[asyncio.Server, int]:
    """A fixed-answer upstream listening on `host:port` (0: any free port), and its port."""
    server = await asyncio.get_running_loop().create_server(_Upstream, host, port)
    return server, server.sockets[0].getsockname()[1]


@dataclass
class Result:
    """What one load run saw."""

    seconds: float
    answers: int = 0  # 200s carrying the expected answer
    errors: int = 0  # other statuses, other bodies, closed connections
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.answers / self.seconds

    def quantile(self, q: float) -> float:
        """A latency quantile in seconds (0 when nothing was answered)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _Client(asyncio.Protocol):
    """One keep-alive connection posting `BODY` with a random user id until the deadline."""

    def __init__(self, result: Result, deadline: float, host: str, expected: bytes | None):
        self.result, self.deadline, self.expected = result, deadline, expected
        self.host = host
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._sent = 0.0

    def _send(self) -> None:
        assert self.transport is not None
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"X-User-Id: user-{random.randrange(1_000_000)}\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        self._sent = time.perf_counter()
        self.transport.write(head.encode() + BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(error=True)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body.clear()
        ok = self._parser.get_status_code() == 200 and self.expected in (None, body)
        if ok:
            self.result.answers += 1
            self.result.latencies.append(time.perf_counter() - self._sent)
        else:
            self.result.errors += 1
        if time.perf_counter() < self.deadline:
            self._send()
        else:
            self._finish(error=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(error=True)

    def _finish(self, error: bool) -> None:
        if self.done.done():
            return
        if error:
            self.result.errors += 1
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


async def load(
    port: int,
    seconds: float,
    *,
    connections: int = 32,
    host: str = "127.0.0.1",
    expected: bytes | None = ANSWER,
) -> Result:
    """Post to `host:port` over `connections` keep-alive connections for `seconds`."""
    loop = asyncio.get_running_loop()
    result = Result(seconds)
    deadline = time.perf_counter() + seconds
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: _Client(result, deadline, host, expected), host, port
        )
        clients.append(client)
    started = time.perf_counter()
    await asyncio.gather(*(client.done for client in clients))
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    """`python loadtests/loadgen.py PORT`: serve the fixed-answer upstream on 127.0.0.1:PORT."""
    import sys  # noqa: PLC0415

    from proxy.runtime.event_loop import loop_factory  # noqa: PLC0415

    async def serve(port: int) -> None:
        server, _ = await start_upstream(port=port)
        async with server:
            await server.serve_forever()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
