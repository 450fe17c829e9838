"""Real upstream servers and a real proxy on 127.0.0.1 for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from proxy.config.loader import parse_config
from tests.integration.prometheus_server import MISSING as PROMETHEUS_MISSING
from tests.integration.prometheus_server import Exporter, PrometheusServer

ROOT = Path(__file__).resolve().parents[2]


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
        await asyncio.sleep(0.05)
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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def route_yaml(
    stable: str,
    candidate: str,
    *,
    name: str = "models",
    prefix: str = "/",
    share: float = 0.5,
    extra: str = "",
    timeout: str = "10s",
) -> str:
    """One route in YAML between two upstream URLs."""
    return (
        f"  - name: {name}\n"
        f"    match: {{path_prefix: {json.dumps(prefix)}}}\n"
        f'    stable: {{url: "{stable}", timeout: {timeout}, connect_timeout: 1s}}\n'
        f'    candidate: {{url: "{candidate}", timeout: {timeout}, connect_timeout: 1s}}\n'
        f'    cohort: {{keys: ["header:X-User-Id", "cookie:uid"], salt: "{name}-salt"}}\n'
        f"    ramp: {{base: {share}}}\n" + extra
    )


ProxyFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[TestServer, TestServer]]:
    """A running stable and candidate upstream."""
    stable = TestServer(build_upstream("stable"), host="127.0.0.1")
    candidate = TestServer(build_upstream("candidate"), host="127.0.0.1")
    await stable.start_server()
    await candidate.start_server()
    yield stable, candidate
    await stable.close()
    await candidate.close()


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


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Start proxies from YAML `routes:` bodies; all are stopped after the test."""
    servers: list[Server] = []

    async def start(routes: str, server_fields: str = "") -> Server:
        text = (
            f'server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"{server_fields}}}\n'
            "state: {backend: memory}\n"
            f"routes:\n{routes}"
        )
        server = Server(parse_config(text, "test.yaml"))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def proxy(upstreams: tuple[TestServer, TestServer], start_proxy: ProxyFactory) -> Server:
    """A proxy at share 0.5 in front of `upstreams`, for every path."""
    stable, candidate = upstreams
    return await start_proxy(route_yaml(url_of(stable), url_of(candidate)))


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver: its URL and the notifications it got."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    yield f"{url_of(receiver)}/hook", received
    await receiver.close()


@pytest.fixture(scope="session")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PrometheusServer, Exporter]]:
    """A real Prometheus scraping an exporter whose series the tests set, shared by the session
    (a first scrape takes 5 s); skipped, and listed at the end of the run, when the machine has
    no prometheus."""
    exporter = Exporter()
    server = PrometheusServer.find(tmp_path_factory.mktemp("prometheus"), [exporter.address])
    if server is None:
        exporter.close()
        pytest.skip(PROMETHEUS_MISSING)
    try:
        server.start()
        yield server, exporter
    finally:
        server.stop()
        exporter.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without automatic decompression or redirects."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    """Whether `predicate()` becomes true within `within` seconds (checked every 50 ms)."""
    for _ in range(int(within / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@dataclass
class Served:
    """A `grayscale serve` process and where it listens."""

    process: asyncio.subprocess.Process
    proxy_url: str
    admin_url: str

    async def next_line(self) -> bytes:
        """The process's next line on stderr."""
        assert self.process.stderr is not None
        return await asyncio.wait_for(self.process.stderr.readline(), timeout=20)


async def serve_subprocess(config: str | Path, *options: str) -> Served:
    """Start `grayscale serve --config CONFIG OPTIONS` and wait until it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        *options,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    served = Served(process, "", "")
    line = b""
    while b"proxy listening" not in line:
        line = await served.next_line()
    served.proxy_url, served.admin_url = re.findall(r"http://127\.0\.0\.1:\d+", line.decode())
    return served
