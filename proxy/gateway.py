"""The data-plane application: match a route, decide the variant, forward."""

from __future__ import annotations

import time
from dataclasses import dataclass

from proxy.access_log import AccessLog, Entry
from proxy.analysis.window import LocalObservations, Window
from proxy.config.model import (
    Config,
    Ejection,
    Fallback,
    IPNetwork,
    LatencyMeasure,
    Route,
    Upstream,
    Variant,
)
from proxy.ejection import Breaker
from proxy.forwarding import BODY_TOO_LARGE, Exchange, Limiter, Target, forward
from proxy.http.client import Origin, UpstreamClient
from proxy.http.errors import BadRequest
from proxy.http.server import Request
from proxy.metrics import ERROR_REASONS, Recorder, VariantMetrics
from proxy.rollout.controller import RolloutController
from proxy.routing import Decision, RoutingTable, decide
from proxy.routing.client_ip import client_ip, is_trusted

_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer started


class HttpFacts:
    """Adapts a listener request to the decision core's `RequestFacts`."""

    __slots__ = ("_request", "_trusted")

    def __init__(self, request: Request, trusted: tuple[IPNetwork, ...]):
        self._request = request
        self._trusted = trusted

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def client_ip(self) -> str | None:
        forwarded = self._request.header_values("x-forwarded-for")
        return client_ip(self._request.remote, forwarded, self._trusted)

    def header(self, name: str) -> str | None:
        return self._request.header(name)

    def cookie(self, name: str) -> str | None:
        return self._request.cookie(name)

    def query(self, name: str) -> str | None:
        return self._request.query(name)


@dataclass(frozen=True, slots=True)
class RouteWiring:
    """Everything a request on one route touches, bound once per config."""

    route: Route
    targets: dict[Variant, Target]
    metrics: dict[str, VariantMetrics]
    windows: dict[str, Window] | None  # None when the route is not analysed
    breaker: Breaker | None  # None when ejection is off


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config, compiled for the data plane. A request uses the snapshot it started with."""

    config: Config
    table: RoutingTable
    routes: dict[str, RouteWiring]


class Gateway:
    """The data plane: match a route, decide the variant, forward, record.

    `use` compiles a config into a new snapshot and swaps it in (a reload); requests in flight
    keep the one they started with. Connection limiters and ejection breakers outlive reloads.
    """

    def __init__(
        self,
        config: Config,
        controller: RolloutController,
        recorder: Recorder,
        access_log: AccessLog | None,
        observations: LocalObservations,
    ):
        self.controller = controller
        self.recorder = recorder
        self.access_log = access_log
        self.observations = observations
        self.client = UpstreamClient()
        self._limiters: dict[tuple[str, int, int], Limiter] = {}
        self._breakers: dict[tuple[str, str, Ejection], Breaker] = {}
        self.snapshot = self._compile(config)

    def use(self, config: Config) -> None:
        """Serve `config` from now on."""
        self.snapshot = self._compile(config)

    def breaker(self, route: str) -> Breaker | None:
        """The ejection breaker of `route` in the current snapshot."""
        wiring = self.snapshot.routes.get(route)
        return None if wiring is None else wiring.breaker

    def _limiter(self, upstream: Upstream) -> Limiter:
        key = (upstream.url, upstream.max_connections, upstream.max_pending)
        if key not in self._limiters:
            self._limiters[key] = Limiter(upstream.max_connections, upstream.max_pending)
        return self._limiters[key]

    def _breaker(self, route: Route) -> Breaker | None:
        if route.ejection is None:
            return None
        key = (route.name, route.candidate.url, route.ejection)
        if key not in self._breakers:
            self._breakers[key] = Breaker(route.name, route.ejection)
        return self._breakers[key]

    def _target(self, route: str, variant: Variant, upstream: Upstream) -> Target:
        return Target(
            route,
            variant.value,
            upstream,
            self._limiter(upstream),
            Origin(upstream.url, upstream.ca_file, upstream.keepalive_timeout),
        )

    def _compile(self, config: Config) -> Snapshot:
        routes = {}
        for route in config.routes:
            routes[route.name] = RouteWiring(
                route=route,
                targets={
                    _STABLE: self._target(route.name, _STABLE, route.stable),
                    _CANDIDATE: self._target(route.name, _CANDIDATE, route.candidate),
                },
                metrics=self.recorder.route(route.name),
                windows=self.observations.windows.get(route.name) if route.analysis else None,
                breaker=self._breaker(route),
            )
        return Snapshot(config, RoutingTable(config.routes), routes)

    async def handle(self, request: Request) -> None:
        """Route one request to its route's stable or candidate upstream, and answer it."""
        started = time.monotonic()
        snapshot = self.snapshot
        active = snapshot.table.match(request.path)
        if active is None:
            self.recorder.unmatched.inc()
            document = {"error": "no_route", "message": "no route matches this path"}
            return request.reply_json(404, {**document, "path": request.path})
        name = active.route.name
        wiring = snapshot.routes[name]
        route = wiring.route
        now = time.time()
        trusted_proxies = snapshot.config.server.trusted_proxies
        facts = HttpFacts(request, trusted_proxies)
        decision = decide(active, facts, self.controller.control(name, now))
        exchange = Exchange()
        stable = wiring.targets[_STABLE]
        target, fallback = stable, None
        if decision.variant is _CANDIDATE:
            if wiring.breaker is not None and wiring.breaker.ejected(now):
                exchange.fallback = "ejected"
            else:
                target = wiring.targets[_CANDIDATE]
                fallback = None if route.fallback is Fallback.NEVER else stable
        counted = wiring.metrics[target.variant]
        counted.in_flight += 1
        try:
            await forward(
                request,
                self.client,
                target,
                exchange,
                max_body=snapshot.config.server.max_body_bytes,
                trusted=bool(trusted_proxies)
                and request.remote is not None
                and is_trusted(request.remote, trusted_proxies),
                fallback=fallback,
                fallback_on_5xx=route.fallback is Fallback.ON_CONNECT_ERROR_OR_5XX,
            )
        except BadRequest as exc:  # the client's body is malformed or stalled; the listener answers
            exchange.status = exc.status
            raise
        finally:
            counted.in_flight -= 1
            duration = time.monotonic() - started
            self._record(request, wiring, decision, exchange, now=now, duration=duration)

    def _record(
        self,
        request: Request,
        wiring: RouteWiring,
        decision: Decision,
        exchange: Exchange,
        *,
        now: float,
        duration: float,
    ) -> None:
        """Count a finished request in metrics, analysis windows, the breaker and the log."""
        if exchange.status == 0:
            exchange.status = CLIENT_CLOSED
        variant = exchange.variant or decision.variant.value
        name = wiring.route.name
        wiring.metrics[variant].observe(exchange, duration)
        if exchange.fallback is not None:
            self.recorder.fallbacks.labels(name, exchange.fallback).inc()
        if exchange.first_error is not None:
            # The candidate failed before stable answered: that failure is the candidate's.
            failed = Exchange("candidate", 502, exchange.first_error)
            if exchange.first_error in ERROR_REASONS:
                wiring.metrics["candidate"].errors[exchange.first_error] += 1
            self._observe(wiring, failed, duration)
        if wiring.breaker is not None and (variant == "candidate" or exchange.first_error):
            healthy = variant == "candidate" and exchange.error is None and exchange.status < 500
            wiring.breaker.record(healthy, now)
        self._observe(wiring, exchange, duration)
        if self.access_log is not None and self.access_log.sampled():
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
                    request.body_bytes,
                    exchange.bytes_out,
                )
            )

    @staticmethod
    def _observe(wiring: RouteWiring, exchange: Exchange, duration: float) -> None:
        """Feed one finished exchange to its route's analysis window."""
        if wiring.windows is None or exchange.status == BODY_TOO_LARGE.status:
            return
        analysis = wiring.route.analysis
        assert analysis is not None
        error = exchange.error is not None or 500 <= exchange.status <= 599
        latency = duration if analysis.latency is LatencyMeasure.DURATION else exchange.ttfb
        if exchange.status == CLIENT_CLOSED:
            latency = None  # cut short by the client: says nothing about the upstream's speed
        wiring.windows[exchange.variant].add(time.time(), error, latency)
