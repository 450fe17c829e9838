"""Raw upstreams and proxies in front of them, for the HTTP conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.app.server import Server
from tests.support.configs import one_route
from tests.support.proxies import ProxyFactory
from tests.support.raw_peers import (
    GatewayFactory,
    RawUpstream,
    Script,
    UpstreamFactory,
    echo_requests,
)


@pytest.fixture
async def raw_upstream() -> AsyncIterator[UpstreamFactory]:
    """Start scripted raw upstreams; all are stopped after the test."""
    started: list[RawUpstream] = []

    async def start(script: Script = echo_requests) -> RawUpstream:
        upstream = await RawUpstream(script).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def gateway(raw_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> GatewayFactory:
    """A proxy whose only upstream is a raw upstream running `script`; `path` is appended to the
    upstream's URL, `upstream` adds upstream fields, `server` server fields, `extra` route lines."""

    async def start(
        script: Script = echo_requests,
        *,
        path: str = "",
        upstream: str = "",
        server: str = "",
        extra: str = "",
    ) -> tuple[Server, RawUpstream]:
        raw = await raw_upstream(script)
        routes = one_route(raw.url + path, upstream=upstream, extra=extra)
        return await start_proxy(routes, server), raw

    return start
