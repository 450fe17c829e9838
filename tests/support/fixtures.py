"""The fixtures more than one test folder uses, registered for the whole suite by
`tests/conftest.py` (`pytest_plugins`): real upstreams, proxies, a webhook receiver, a client,
a Prometheus, `grayscale serve` replicas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app.server import Server
from tests.support.configs import route_yaml
from tests.support.prometheus_server import MISSING as PROMETHEUS_MISSING
from tests.support.prometheus_server import Exporter, PrometheusServer
from tests.support.proxies import Proxies, ProxyFactory
from tests.support.replicas import ReplicaFactory, Replicas
from tests.support.upstream import build_upstream, url_of


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[TestServer, TestServer]]:
    """A running stable and candidate upstream (`tests.support.upstream.build_upstream`)."""
    stable = TestServer(build_upstream("stable"), host="127.0.0.1")
    candidate = TestServer(build_upstream("candidate"), host="127.0.0.1")
    await stable.start_server()
    await candidate.start_server()
    yield stable, candidate
    await stable.close()
    await candidate.close()


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Start proxies from YAML `routes:` bodies; all are stopped after the test."""
    proxies = Proxies()
    yield proxies.start
    await proxies.stop()


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


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client without automatic decompression or redirects."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


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
async def replicas() -> AsyncIterator[ReplicaFactory]:
    """Start `grayscale serve --config PATH` processes (with `env` added to the environment);
    all are stopped after the test."""
    started = Replicas()
    yield started.start
    await started.stop()
