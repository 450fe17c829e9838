"""The data-plane application: match a route, decide the variant, forward."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web

from proxy.access_log import AccessLog, Entry
from proxy.analysis.window import LocalObservations, Window
from proxy.config.model import Config, IPNetwork, LatencyMeasure, Variant
from proxy.forwarding import Exchange, Target, error_response, forward
from proxy.metrics import Recorder, VariantMetrics
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


@dataclass(frozen=True, slots=True)
class RouteWiring:
    """Everything a request on one route touches, bound once per config."""

    targets: dict[Variant, Target]
    metrics: dict[str, VariantMetrics]
    windows: dict[str, Window] | None  # None when the route is not analysed
    latency: LatencyMeasure


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config, compiled for the data plane. A request uses the snapshot it started with."""

    config: Config
    table: RoutingTable
    routes: dict[str, RouteWiring]

    @classmethod
    def build(cls, config: Config, recorder: Recorder, observations: LocalObservations) -> Snapshot:
        """Compile `config`; metric children and analysis windows come from their owners."""
        routes = {}
        for route in config.routes:
            analysis = route.analysis
            routes[route.name] = RouteWiring(
                targets={
                    _STABLE: Target(route.name, "stable", route.stable),
                    _CANDIDATE: Target(route.name, "candidate", route.candidate),
                },
                metrics=recorder.route(route.name),
                windows=observations.windows.get(route.name) if analysis else None,
                latency=analysis.latency if analysis else LatencyMeasure.DURATION,
            )
        return cls(config, RoutingTable(config.routes), routes)


class Gateway:
    """The data plane: match a route, decide the variant, forward, record.

    `snapshot` can be replaced at any time (a config reload); `build_app` serves the gateway.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        controller: RolloutController,
        recorder: Recorder,
        access_log: AccessLog | None,
    ):
        self.snapshot = snapshot
        self.controller = controller
        self.recorder = recorder
        self.access_log = access_log
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request to its route's stable or candidate upstream."""
        started = time.monotonic()
        snapshot = self.snapshot
        active = snapshot.table.match(request.path)
        if active is None:
            self.recorder.unmatched.inc()
            return error_response(404, "no_route", "no route matches this path", path=request.path)
        name = active.route.name
        wiring = snapshot.routes[name]
        now = time.time()
        facts = HttpFacts(request, snapshot.config.server.trusted_proxies)
        decision = decide(active, facts, self.controller.control(name, now))
        target = wiring.targets[decision.variant]
        metrics = wiring.metrics[target.variant]
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
            if wiring.windows is not None:
                self._observe(wiring, target.variant, exchange, duration)
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
    def _observe(wiring: RouteWiring, variant: str, exchange: Exchange, duration: float) -> None:
        """Feed one finished request to its route's analysis window."""
        assert wiring.windows is not None
        error = exchange.error is not None or 500 <= exchange.status <= 599
        latency = duration if wiring.latency is LatencyMeasure.DURATION else exchange.ttfb
        if exchange.status == CLIENT_CLOSED:
            latency = None  # cut short by the client: says nothing about the upstream's speed
        wiring.windows[variant].add(time.time(), error, latency)

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
