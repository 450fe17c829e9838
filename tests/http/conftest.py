"""Raw upstreams and proxies in front of them, for the HTTP conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.app.server import Server
from tests.http.peers import RawUpstream, Script, echo_requests
from tests.integration.conftest import ProxyFactory, client, proxy, start_proxy, upstreams

__all__ = ["client", "proxy", "start_proxy", "upstreams"]

UpstreamFactory = Callable[..., Awaitable[RawUpstream]]
GatewayFactory = Callable[..., Awaitable[tuple[Server, RawUpstream]]]


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


def one_route(url: str, *, upstream: str = "", extra: str = "") -> str:
    """A route for every path whose stable and candidate are both `url` (share 0: stable);
    `upstream` adds fields to both upstreams, `extra` lines to the route."""
    fields = f'url: "{url}", timeout: 10s, connect_timeout: 1s{upstream}'
    return (
        "  - name: models\n"
        '    match: {path_prefix: "/"}\n'
        f"    stable: {{{fields}}}\n"
        f"    candidate: {{{fields}}}\n"
        '    cohort: {keys: ["header:X-User-Id"], salt: "models-salt"}\n'
        "    ramp: {base: 0.0}\n" + extra
    )


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
