"""Real gRPC peers for tests (grpcio's asyncio API, no generated code): an upstream server whose
behaviour per call a test controls (`GrpcPeer`, started by `start_peer`), and the client side's
method callables, all bytes in, bytes out.

The peer serves `SERVICE` with four methods, each answering with its name so that a test sees
which variant answered:

- `Unary`: `NAME:REQUEST`; fails a chosen share of calls with a chosen status (evenly spread and
  deterministic: call n fails when n * rate passes a whole number), waits `delay` first, and
  ends every call with `trailing` metadata (failures too).
- `Stream` (server streaming): the request is a count N; messages `NAME:0` … `NAME:N-1`, after
  the first waiting for `gate` when set (a test reads message 0, then opens the gate), and
  `interval` seconds between the others.
- `Collect` (client streaming): `NAME:` and the messages joined with `+`.
- `Echo` (bidirectional): each message back as `NAME:MESSAGE`, as it comes.

It also serves the standard health service (`grpc.health.v1.Health`), SERVING for the server
("") and for `SERVICE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

SERVICE = "test.Peer"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
COLLECT = f"/{SERVICE}/Collect"
ECHO = f"/{SERVICE}/Echo"

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass
class Seen:
    """One call as the peer received it."""

    method: str
    metadata: dict[str, str | bytes]  # its invocation metadata (the last value of each key)
    time_remaining: float | None  # seconds left of its deadline when it arrived (None: none)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the handler returned or was
    cancelled: bool = False  # cancelled (the caller went away or its deadline passed)
    ended_at: float = 0.0  # time.monotonic() when it ended


@dataclass
class GrpcPeer:
    """A gRPC upstream on 127.0.0.1 and the switches a test flips (read at each call)."""

    name: str
    failure_rate: float = 0.0  # share of unary calls that fail with `failure_code`
    failure_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    failure_details: str = "injected failure"
    delay: float = 0.0  # seconds each unary call waits before answering
    trailing: Metadata = ()  # trailing metadata of every unary call
    gate: asyncio.Event | None = None  # a stream waits for it after its first message
    interval: float = 0.0  # seconds between a stream's later messages
    calls: list[Seen] = field(default_factory=list)
    unary_calls: int = 0  # unary calls received (the failure pattern counts these)
    failures: int = 0  # unary calls failed on purpose
    sent: int = 0  # stream messages sent, over all streams
    server: Any = None  # the grpc.aio.Server
    port: int = 0

    @property
    def address(self) -> str:
        """host:port, as a gRPC target."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The upstream URL for a Grayscale route (h2c)."""
        return f"http://{self.address}"

    def _fails(self, index: int) -> bool:
        """Whether unary call number `index` (from 0) is one of the failures: the share is
        spread evenly, `rate` of every run of calls and no guessing."""
        rate = Fraction(self.failure_rate).limit_denominator(1000)
        return (index + 1) * rate // 1 > index * rate // 1

    def _seen(self, method: str, context: Any) -> Seen:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        remaining = context.time_remaining()
        seen = Seen(method, metadata, remaining)
        self.calls.append(seen)
        return seen

    @staticmethod
    def _end(seen: Seen, cancelled: bool) -> None:
        seen.cancelled = cancelled
        seen.ended_at = time.monotonic()
        seen.ended.set()

    async def unary(self, request: bytes, context: Any) -> bytes:
        seen = self._seen(UNARY, context)
        index = self.unary_calls
        self.unary_calls += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # (the upstream's work)
            context.set_trailing_metadata(tuple(self.trailing))
            if self._fails(index):
                self.failures += 1
                context.set_code(self.failure_code)
                context.set_details(self.failure_details)
                return b""
            return self.name.encode() + b":" + request
        except asyncio.CancelledError:
            self._end(seen, cancelled=True)
            raise
        finally:
            if not seen.ended.is_set():
                self._end(seen, cancelled=False)

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        seen = self._seen(STREAM, context)
        try:
            for i in range(int(request)):
                if i == 1 and self.gate is not None:
                    await self.gate.wait()
                elif i > 1 and self.interval:
                    await asyncio.sleep(self.interval)  # (the pace of the stream)
                self.sent += 1
                yield f"{self.name}:{i}".encode()
        except asyncio.CancelledError:
            self._end(seen, cancelled=True)
            raise
        finally:
            if not seen.ended.is_set():
                self._end(seen, cancelled=False)

    async def collect(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        seen = self._seen(COLLECT, context)
        parts = [message async for message in requests]
        self._end(seen, cancelled=False)
        return self.name.encode() + b":" + b"+".join(parts)

    async def echo(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        seen = self._seen(ECHO, context)
        async for message in requests:
            yield self.name.encode() + b":" + message
        self._end(seen, cancelled=False)

    async def stop(self) -> None:
        """Stop serving at once (calls under way are cancelled); the port then refuses."""
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


def _handlers(peer: GrpcPeer) -> Any:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(peer.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(peer.stream),
            "Collect": grpc.stream_unary_rpc_method_handler(peer.collect),
            "Echo": grpc.stream_stream_rpc_method_handler(peer.echo),
        },
    )


async def start_peer(name: str, **switches: Any) -> GrpcPeer:
    """A peer called `name` serving on a free port of 127.0.0.1 (`switches`: its fields)."""
    peer = GrpcPeer(name, **switches)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(peer),))
    checker = health.aio.HealthServicer()
    for service in ("", SERVICE):
        await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    peer.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    peer.server = server
    return peer


@dataclass
class Methods:
    """The peer's methods as callables on a client channel (bytes in, bytes out)."""

    unary: Any
    stream: Any
    collect: Any
    echo: Any

    @classmethod
    def on(cls, channel: Any) -> Methods:
        return cls(
            channel.unary_unary(UNARY),
            channel.unary_stream(STREAM),
            channel.stream_unary(COLLECT),
            channel.stream_stream(ECHO),
        )


def health_check(channel: Any, service: str = "", timeout: float = 5.0) -> Any:
    """A `grpc.health.v1.Health/Check` call for `service` on `channel` (await it: the
    HealthCheckResponse)."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)


SERVING = health_pb2.HealthCheckResponse.SERVING
