"""The data-plane application: match a route, decide the variant, forward."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web

from proxy.access_log import AccessLog, Entry
from proxy.analysis.window import LocalObservations, Window
from proxy.config.model import IPNetwork, LatencyMeasure, Variant
from proxy.forwarding import Exchange, Target, error_response, forward
from proxy.metrics import Recorder
from proxy.rollout.controller import RolloutController
from proxy.routing import RoutingTable, decide
from proxy.routing.client_ip import client_ip

_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer started


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


class Gateway:
    """The data plane: match a route, decide the variant, forward, record.

    Built once per config; `build_app` serves it.
    """

    def __init__(
        self,
        *,
        table: RoutingTable,
        controller: RolloutController,
        recorder: Recorder,
        access_log: AccessLog | None,
        observations: LocalObservations,
        trusted_proxies: tuple[IPNetwork, ...] = (),
    ):
        self.table = table
        self.controller = controller
        self.recorder = recorder
        self.access_log = access_log
        self.trusted_proxies = trusted_proxies
        self.session: aiohttp.ClientSession | None = None
        self._targets = {
            a.route.name: {
                _STABLE: Target(a.route.name, "stable", a.route.stable),
                _CANDIDATE: Target(a.route.name, "candidate", a.route.candidate),
            }
            for a in table.routes
        }
        self._metrics = {a.route.name: recorder.route(a.route.name) for a in table.routes}
        self._windows = {
            a.route.name: (observations.windows[a.route.name], a.route.analysis.latency)
            for a in table.routes
            if a.route.analysis is not None
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request to its route's stable or candidate upstream."""
        started = time.monotonic()
        active = self.table.match(request.path)
        if active is None:
            self.recorder.unmatched.inc()
            return error_response(404, "no_route", "no route matches this path", path=request.path)
        name = active.route.name
        now = time.time()
        facts = HttpFacts(request, self.trusted_proxies)
        decision = decide(active, facts, self.controller.control(name, now))
        target = self._targets[name][decision.variant]
        metrics = self._metrics[name][target.variant]
        exchange = Exchange()
        metrics.in_flight.inc()
        try:
            assert self.session is not None, "the gateway is not running"
            return await forward(request, self.session, target, exchange)
        finally:
            metrics.in_flight.dec()
            if exchange.status == 0:
                exchange.status = CLIENT_CLOSED
            duration = time.monotonic() - started
            metrics.observe(exchange, duration)
            analysed = self._windows.get(name)
            if analysed is not None:
                self._observe(analysed, target.variant, exchange, duration)
            if self.access_log is not None:
                self.access_log.record(
                    Entry(
                        now,
                        name,
                        request.method,
                        decision,
                        exchange.status,
                        exchange.error,
                        duration,
                        exchange.ttfb,
                        request.content.total_bytes,
                        exchange.bytes_out,
                    )
                )

    @staticmethod
    def _observe(
        analysed: tuple[dict[str, Window], LatencyMeasure],
        variant: str,
        exchange: Exchange,
        duration: float,
    ) -> None:
        """Feed one finished request to its route's analysis window."""
        windows, measure = analysed
        error = exchange.error is not None or 500 <= exchange.status <= 599
        latency = duration if measure is LatencyMeasure.DURATION else exchange.ttfb
        if exchange.status == CLIENT_CLOSED:
            latency = None  # cut short by the client: says nothing about the upstream's speed
        windows[variant].add(time.time(), error, latency)

    async def _client_session(self, app: web.Application) -> AsyncIterator[None]:
        """One pooled keep-alive client for every upstream, closed on shutdown."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60)
        async with aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        ) as session:
            self.session = session
            yield
            self.session = None

    def build_app(self) -> web.Application:
        """The aiohttp application serving this gateway."""
        # Bodies are streamed, never read whole, so the server's body size limit does not apply.
        app = web.Application(handler_args={"max_field_size": 16384})
        app.cleanup_ctx.append(self._client_session)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app
