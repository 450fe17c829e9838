"""The data-plane application: match a route, decide the variant, forward."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import partial

from proxy.analysis.window import LocalObservations, WindowRecorder
from proxy.config.model import (
    Config,
    Fallback,
    IPNetwork,
    Route,
    ServerConfig,
    Source,
    Upstream,
    Variant,
)
from proxy.dataplane.compare import ComparedAnswer
from proxy.dataplane.ejection import Breaker, Ejections
from proxy.dataplane.forwarding import BODY_TOO_LARGE, Exchange, Target, error_document, forward
from proxy.dataplane.limiter import Limiter
from proxy.dataplane.model_body import ReadBody
from proxy.dataplane.request_body import BodyTooLarge, read_body
from proxy.dataplane.shadow import Shadower, ShadowRequest, chosen
from proxy.dataplane.websocket import is_upgrade, tunnel
from proxy.http.client import Origin, UpstreamClient
from proxy.http.errors import BadRequest
from proxy.http.h2_client import H2Client
from proxy.http.headers import connection_named, spelled
from proxy.http.request import Request, text
from proxy.records.request_id import Minter, assignment
from proxy.records.request_outcome import FallbackReason, Observer, RequestOutcome
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import identity_of
from proxy.routing import RoutingTable, decide
from proxy.routing.client_ip import client_ip, is_trusted
from proxy.runtime import clock
from proxy.telemetry.access_log import AccessLog
from proxy.telemetry.metrics import Recorder, VariantMetrics

_STABLE, _CANDIDATE = Variant.STABLE, Variant.CANDIDATE
_EJECTED = FallbackReason.EJECTED


_FIELD_KEYS: dict[str, bytes] = {}  # header names as configured, lower case in bytes


class HttpFacts:
    """Adapts a listener request to the decision core's `RequestFacts`.

    A header named in `Connection` is hop-by-hop (RFC 9110 §7.6.1): it never reaches the
    upstream, so it is absent here too, for cohort keys and segments alike: the router and the
    upstream see the same request."""

    __slots__ = ("_hop", "_request", "_trusted")

    def __init__(self, request: Request, trusted: tuple[IPNetwork, ...]):
        self._request = request
        self._trusted = trusted
        self._hop = (
            connection_named(request.raw_values(b"connection"))
            if b"connection" in request.keys
            else frozenset()
        )

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def client_ip(self) -> str | None:
        forwarded = self._request.header_values("x-forwarded-for")
        return client_ip(self._request.remote, forwarded, self._trusted)

    def header(self, name: str) -> str | None:
        key = _FIELD_KEYS.get(name)
        if key is None:  # (names come from the config: each is lowered once)
            key = name.lower().encode("latin-1")
            if len(_FIELD_KEYS) < 1024:
                _FIELD_KEYS[name] = key
        if self._hop and spelled(key) in self._hop:
            return None
        value = self._request.field(key)
        return None if value is None else text(value)

    def repeated_key(
        self, headers: tuple[tuple[str, bytes], ...], queries: tuple[str, ...]
    ) -> str | None:
        """A cohort key sent more than once, if any: the upstream would see every one, the
        router only the first. `headers`: the header keys, each as configured and as its lower
        case name `spelled` (a header's repeats count its spellings with `_` for `-`, as CGI
        servers read them); `queries`: the query parameter keys."""
        request = self._request
        sent = request.keys
        if headers and (request.repeats or b"_" in b"".join(sent)):
            for name, key in headers:
                if key not in self._hop and sum(spelled(k) == key for k in sent) > 1:
                    return name
        for name in queries:
            if request.query_repeated(name):
                return name
        return None

    def cookie(self, name: str) -> str | None:
        return self._request.cookie(name)

    def query(self, name: str) -> str | None:
        return self._request.query(name)


@dataclass(frozen=True, slots=True)
class RouteWiring:
    """Everything a request on one route touches, bound once per config."""

    route: Route
    targets: dict[Variant, Target]
    metrics: dict[str, VariantMetrics]  # (for the requests in flight)
    breaker: Breaker | None  # None when ejection is off
    reads_body: bool  # the route reads bodies whole (it routes on or rewrites their model)
    falls_back: bool  # a candidate's request may go to stable (`fallback` is not `never`)
    fallback_on_5xx: bool  # ...and so may one the candidate answered with a 5xx
    header_keys: tuple[tuple[str, bytes], ...]  # cohort key headers, and as `spelled` names
    query_keys: tuple[str, ...]  # cohort key query parameters


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config, compiled for the data plane. A request uses the snapshot it started with."""

    config: Config
    table: RoutingTable
    routes: dict[str, RouteWiring]


class Gateway:
    """The data plane: match a route, decide the variant, forward, and hand the outcome to the
    observers (metrics, analysis windows, ejection, access log).

    `use` compiles a config into a new snapshot and swaps it in (a reload); requests in flight
    keep the one they started with. Connection limiters and ejection breakers outlive reloads.
    """

    def __init__(
        self,
        config: Config,
        controller: RolloutController,
        recorder: Recorder,
        access_log: AccessLog | None,
        *,
        observations: LocalObservations,
        minter: Minter,
    ):
        self.controller = controller
        self.minter = minter
        self.recorder = recorder
        self.client = UpstreamClient()
        self.h2 = H2Client()  # for the upstreams spoken to in HTTP/2 (`http2: true`)
        self.windows = WindowRecorder(observations)
        self.ejections = Ejections()
        observers: list[Observer] = [recorder, self.windows, self.ejections]
        if access_log is not None:
            observers.append(access_log)
        self._recorders = [observer.record for observer in observers]
        self._limiters: dict[tuple[str, int, int], Limiter] = {}
        self.shadower = Shadower(self.client, controller)
        self.shadower.on_result.append(recorder.count_shadow)
        self.snapshot = self._compile(config)

    def use(self, config: Config) -> None:
        """Serve `config` from now on."""
        self.snapshot = self._compile(config)

    def breaker(self, route: str) -> Breaker | None:
        """The ejection breaker of `route` in the current config."""
        return self.ejections.breaker(route)

    def _limiter(self, upstream: Upstream) -> Limiter:
        key = (upstream.url, upstream.max_connections, upstream.max_pending)
        if key not in self._limiters:
            self._limiters[key] = Limiter(upstream.max_connections, upstream.max_pending)
        return self._limiters[key]

    def _target(
        self, route: Route, variant: Variant, upstream: Upstream, server: ServerConfig
    ) -> Target:
        label = self.minter.label(route.name, identity_of(route))
        return Target(
            route.name,
            variant,
            upstream,
            self._limiter(upstream),
            Origin.of(upstream),
            partial(self.minter.mint, label),
            openai=route.reads_body,
            max_event_bytes=server.max_event_bytes,
            h2=self.h2 if upstream.http2 else None,
            grpc_errors=route.grpc_error_codes,
        )

    def _compile(self, config: Config) -> Snapshot:
        self.shadower.use(config.routes)
        self.windows.use(config.routes)
        self.ejections.use(config.routes)
        routes = {}
        for route in config.routes:
            routes[route.name] = RouteWiring(
                route=route,
                targets={
                    _STABLE: self._target(route, _STABLE, route.stable, config.server),
                    _CANDIDATE: self._target(route, _CANDIDATE, route.candidate, config.server),
                },
                metrics=self.recorder.route(route.name),
                breaker=self.ejections.breaker(route.name),
                reads_body=route.reads_body,
                falls_back=route.fallback is not Fallback.NEVER,
                fallback_on_5xx=route.fallback is Fallback.ON_CONNECT_ERROR_OR_5XX,
                header_keys=tuple(
                    (key.name, spelled(key.name.lower().encode("latin-1")))
                    for key in route.cohort.keys
                    if key.source is Source.HEADER
                ),
                query_keys=tuple(
                    key.name for key in route.cohort.keys if key.source is Source.QUERY
                ),
            )
        return Snapshot(config, RoutingTable(config.routes), routes)

    async def handle(self, request: Request) -> None:
        """Route one request to its route's stable or candidate upstream, and answer it."""
        started = time.monotonic()
        snapshot = self.snapshot
        table = snapshot.table
        read: ReadBody | None = None
        if table.by_model and table.needs_model(request.path):
            read = await self._read(request, snapshot.config.server, True)
            if read is None:
                return None
            if read.error is not None and read.data:
                detail = f"{read.error}; routes under this path are chosen by its model"
                document = error_document(400, "invalid_json_body", detail, openai=True)
                return request.reply_json(400, document)
        active = table.match(request.path, None if read is None else read.model)
        if active is None:
            self.recorder.count_unmatched()
            what = "this path" if read is None else "this path and model"
            document = error_document(
                404, "no_route", f"no route matches {what}", read is not None, path=request.path
            )
            return request.reply_json(404, document)
        name = active.route.name
        wiring = snapshot.routes[name]
        route = wiring.route
        if read is None and wiring.reads_body:
            read = await self._read(request, snapshot.config.server, True)
            if read is None:
                return None
        now = clock.now()
        trusted_proxies = snapshot.config.server.trusted_proxies
        facts = HttpFacts(request, trusted_proxies)
        repeated = facts.repeated_key(wiring.header_keys, wiring.query_keys)
        if repeated is not None:
            detail = f"{repeated} is sent more than once: whose request it is is ambiguous"
            return request.reply_json(400, {"error": "ambiguous_cohort_key", "message": detail})
        decision = decide(active, facts, self.controller.control(name, now))
        stable = wiring.targets[_STABLE]
        target, fallback = stable, None
        exchange = Exchange(_STABLE)
        out = wiring.breaker is not None and wiring.breaker.ejected(now)
        # (the request id says how the request was assigned: its outcomes are counted so)
        exchange.assigned, exchange.share = assignment(decision, out)
        if decision.variant is _CANDIDATE:
            if out:
                exchange.fallback = _EJECTED
            else:
                target = wiring.targets[_CANDIDATE]
                fallback = stable if wiring.falls_back else None
        shadow = route.shadow
        copying = (
            shadow is not None
            and decision.variant is _STABLE
            and request.method in shadow.methods
            and chosen(shadow, decision.key, random.random())
        )
        if copying:
            if read is None:
                read = await self._read(request, snapshot.config.server, route.reads_body)
                if read is None:
                    return None
            exchange.capture = []
        trusted = (
            bool(trusted_proxies)
            and request.remote is not None
            and is_trusted(request.remote, trusted_proxies)
        )
        counted = wiring.metrics[target.variant]
        counted.in_flight += 1
        try:
            if route.websocket and not target.upstream.http2 and is_upgrade(request):
                # (the outcome is the handshake's; the tunnel goes on after it is recorded)
                await tunnel(
                    request, self.client, target, exchange, fallback=fallback, trusted=trusted
                )
                return None
            await forward(
                request,
                self.client,
                target,
                exchange,
                max_body=snapshot.config.server.max_body_bytes,
                buffer_bytes=snapshot.config.server.request_buffer_bytes,
                trusted=trusted,
                fallback=fallback,
                fallback_on_5xx=wiring.fallback_on_5xx,
                read=read,
            )
            if copying and exchange.capture is not None and exchange.error is None:
                self._copy(request, wiring, exchange, read)
        except BadRequest as exc:  # the client's body is malformed or stalled; the listener answers
            exchange.status = exc.status
            raise
        finally:
            counted.in_flight -= 1
            outcome = RequestOutcome(
                at=now,
                route=name,
                method=request.method,
                decision=decision,
                variant=exchange.variant,
                status=exchange.status,
                error=exchange.error,
                refused=exchange.refused,
                duration=time.monotonic() - started,
                ttfb=exchange.ttfb,
                bytes_in=request.body_bytes,
                bytes_out=exchange.bytes_out,
                fallback=exchange.fallback,
                candidate_error=exchange.candidate_error,
                candidate_status=exchange.candidate_status,
                ttft=exchange.ttft,
                output_tokens=exchange.output_tokens,
                request_id=exchange.request_id,
                candidate_out=out,
                grpc_status=exchange.grpc_status,
            )
            for record in self._recorders:
                record(outcome)

    def _copy(
        self,
        request: Request,
        wiring: RouteWiring,
        exchange: Exchange,
        read: ReadBody | None,
    ) -> None:
        """Send a shadow copy of `request`, which stable answered, to the candidate."""
        if exchange.status is None or exchange.capture is None:
            return
        copy = ShadowRequest(request.method, request.raw_target, exchange.forwarded, read)
        stable = ComparedAnswer(exchange.status, b"".join(exchange.capture), exchange.event_stream)
        self.shadower.launch(wiring.route, wiring.targets[_CANDIDATE], copy, stable)

    @staticmethod
    async def _read(request: Request, server: ServerConfig, openai: bool) -> ReadBody | None:
        """The whole body, for a route that routes on or rewrites its `model` (`openai`: its
        errors in OpenAI's shape), or copies it to a shadow; None once the client has been
        answered 413."""
        try:
            return ReadBody.of(
                await read_body(request, server.max_body_bytes), server.max_json_values
            )
        except BodyTooLarge:
            failure = BODY_TOO_LARGE
            document = error_document(failure.status, failure.error, failure.detail, openai)
            request.reply_json(failure.status, document)
            return None
