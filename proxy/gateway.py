"""The data-plane application: match a route, decide the variant, forward."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web

from proxy.config.model import IPNetwork, Variant
from proxy.forwarding import Target, error_response, forward
from proxy.routing import RoutingTable, decide
from proxy.routing.client_ip import client_ip

ROUTING = web.AppKey("routing", RoutingTable)
SESSION = web.AppKey("session", aiohttp.ClientSession)
TRUSTED_PROXIES = web.AppKey[tuple[IPNetwork, ...]]("trusted_proxies")


class HttpFacts:
    """Adapts an aiohttp request to the decision core's `RequestFacts`."""

    __slots__ = ("_request", "_trusted")

    def __init__(self, request: web.BaseRequest, trusted: tuple[IPNetwork, ...]):
        self._request = request
        self._trusted = trusted

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def client_ip(self) -> str | None:
        forwarded = self._request.headers.getall(hdrs.X_FORWARDED_FOR, ())
        return client_ip(self._request.remote, forwarded, self._trusted)

    def header(self, name: str) -> str | None:
        return self._request.headers.get(name)

    def cookie(self, name: str) -> str | None:
        return self._request.cookies.get(name)

    def query(self, name: str) -> str | None:
        return self._request.query.get(name)


async def handle(request: web.Request) -> web.StreamResponse:
    """Route one request to its route's stable or candidate upstream."""
    active = request.app[ROUTING].match(request.path)
    if active is None:
        return error_response(404, "no_route", "no route matches this path", path=request.path)
    route = active.route
    facts = HttpFacts(request, request.app[TRUSTED_PROXIES])
    decision = decide(active, facts, time.time())
    upstream = route.candidate if decision.variant is Variant.CANDIDATE else route.stable
    target = Target(route.name, decision.variant.value, upstream)
    return await forward(request, request.app[SESSION], target)


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    """One pooled keep-alive client for every upstream, closed on shutdown."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
    ) as session:
        app[SESSION] = session
        yield


def build_gateway(table: RoutingTable, trusted_proxies: tuple[IPNetwork, ...]) -> web.Application:
    """The proxy application serving `table`, believing `X-Forwarded-For` from `trusted_proxies`."""
    # Bodies are streamed, never read whole, so the server's body size limit does not apply.
    app = web.Application(handler_args={"max_field_size": 16384})
    app[ROUTING] = table
    app[TRUSTED_PROXIES] = trusted_proxies
    app.cleanup_ctx.append(_client_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
