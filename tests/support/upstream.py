"""The test model server: an aiohttp app that echoes what it received, streams, stalls, fails
or resets as a test asks (`build_upstream`); and ways to serve apps on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class UpstreamProbe:
    """What a test upstream saw, and the switches a test flips."""

    name: str
    requests: int = 0
    error_rate: float = 0.0  # share of echo requests answered 500
    delay: float = 0.0  # seconds before the echo answers
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    release: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


PROBE = web.AppKey("probe", UpstreamProbe)
GZIP_BODY = gzip.compress(b"compressed answer " * 100)


async def echo(request: web.Request) -> web.Response:
    """Describe the request: method, raw path, headers, body length and digest."""
    probe = request.app[PROBE]
    probe.requests += 1
    if probe.delay:
        await asyncio.sleep(probe.delay)
    if probe.error_rate and probe.rng.random() < probe.error_rate:
        return web.json_response({"error": "injected"}, status=500)
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "upstream": probe.name,
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()},
            "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            "body_length": size,
            "body_sha256": digest.hexdigest(),
        },
        headers={"Keep-Alive": "timeout=5", "Set-Cookie": "a=1"},
    )


async def chunks(request: web.Request) -> web.StreamResponse:
    """`count` chunks, each written and drained separately."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for i in range(int(request.match_info["count"])):
        await response.write(f"chunk-{i:04d};".encode())
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    """One event, then the rest only after the test sets `release`."""
    probe = request.app[PROBE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.wait_for(probe.release.wait(), timeout=10)
    for i in range(3):
        await response.write(f"data: event-{i}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    """Answer after `seconds`."""
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.json_response({"upstream": request.app[PROBE].name})


async def endless(request: web.Request) -> web.StreamResponse:
    """Stream until the reader goes away; then record the disconnect."""
    probe = request.app[PROBE]
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        while True:
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.02)
    except (ConnectionError, asyncio.CancelledError):
        probe.disconnected.set()
        raise
    return response


async def gzipped(request: web.Request) -> web.Response:
    """A gzip-encoded answer."""
    return web.Response(body=GZIP_BODY, headers={"Content-Encoding": "gzip"})


async def reset(request: web.Request) -> web.StreamResponse:
    """Drop the connection, before answering or (`?after=N`) after N bytes of the body."""
    after = int(request.query.get("after", "-1"))
    response = web.StreamResponse()
    if after >= 0:
        await response.prepare(request)
        await response.write(b"y" * after)
        await asyncio.sleep(0.05)  # (a pause, then the cut: the bytes so far go out alone)
    assert request.transport is not None
    request.transport.close()
    return response


async def status(request: web.Request) -> web.Response:
    """Answer with the status code in the path."""
    return web.json_response({"status": "as asked"}, status=int(request.match_info["code"]))


async def bulk(request: web.Request) -> web.StreamResponse:
    """`megabytes` MiB as fast as the reader takes them."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    chunk = b"z" * (1 << 20)
    for _ in range(int(request.match_info["megabytes"])):
        await response.write(chunk)
    await response.write_eof()
    return response


async def ticks(request: web.Request) -> web.StreamResponse:
    """Server-sent events every `every` seconds for `seconds` seconds."""
    seconds, every = float(request.match_info["seconds"]), float(request.query.get("every", "0.1"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(round(seconds / every)):
        await response.write(f"data: tick-{i}\n\n".encode())
        await asyncio.sleep(every)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def build_upstream(name: str) -> web.Application:
    """A test model server called `name`."""
    app = web.Application(handler_args={"max_field_size": 16384})
    app[PROBE] = UpstreamProbe(name)
    app.router.add_route("*", "/chunks/{count}", chunks)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow/{seconds}", slow)
    app.router.add_get("/endless", endless)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/bulk/{megabytes}", bulk)
    app.router.add_get("/ticks/{seconds}", ticks)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def url_of(server: TestServer) -> str:
    """The base URL of a test server."""
    return str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def serving(*apps: web.Application) -> AsyncIterator[list[str]]:
    """Each app on a test server on 127.0.0.1: their base URLs; closed after."""
    servers = [TestServer(app, host="127.0.0.1") for app in apps]
    try:
        for server in servers:
            await server.start_server()
        yield [url_of(server) for server in servers]
    finally:
        for server in servers:
            await server.close()
