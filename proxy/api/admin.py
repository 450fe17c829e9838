"""The admin application: health, readiness, metrics, status and the routes' verdicts and
timelines (the reads), the status page, and the changes (`proxy.api.actions`).

Invariants
- Who may call what is `proxy.api.access`'s: every change needs the admin token, reads need it
  while `admin.protect_reads` is on, and only allowed Host names are served.
- What identifies users or tokens is shown only to token holders: rollout salts appear in
  `/status` only for a request with the token (`proxy.api.status`).
- Every answer is strict JSON (`proxy.api.answers`).
- Reads change nothing: a read endpoint only reports what the controller, the counters and the
  analysis hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from proxy.analysis.analyzer import Analyzer
from proxy.analysis.outcome_reports import ReportedOutcomes
from proxy.api.access import Access
from proxy.api.actions import Actions
from proxy.api.answers import json_answer, unknown_route
from proxy.api.status import StatusParts, status_document
from proxy.api.ui import status_page, status_page_asset
from proxy.config.model import Config, Route
from proxy.config.reload import ReloadResult
from proxy.dataplane.ejection import Breaker
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import State
from proxy.runtime import clock
from proxy.telemetry.host_metrics import HostMetrics
from proxy.telemetry.metrics import CallbackCollector, Recorder


class Admin:
    """The admin application's handlers and what they read."""

    def __init__(
        self,
        *,
        config: Config,
        controller: RolloutController,
        recorder: Recorder,
        analyzer: Analyzer,
        ready: asyncio.Event,
        token: str | None,
        reload: Callable[[str], Awaitable[ReloadResult]],
        breaker: Callable[[str], Breaker | None],
        shadows: Callable[[Route], dict[str, Any] | None],
        actor_key: bytes,
        book: ReportedOutcomes,
        host: HostMetrics | None = None,
    ):
        """With `host` (one of several workers), `/metrics` and the counts in `/status` are
        those of every worker on the host."""
        self.host = host
        self.controller = controller
        self.recorder = recorder
        self.analyzer = analyzer
        self.ready = ready
        self._breaker = breaker
        self.access = Access(config, token, actor_key)
        self.actions = Actions(self.access, controller, recorder, book, reload)
        self.parts = StatusParts(controller, recorder, analyzer, breaker, shadows, host)
        self.last_reload: ReloadResult | None = None
        self.clock_error: Callable[[], str | None] = lambda: None  # (the fleet's, if any)
        recorder.registry.register(CallbackCollector(self._rollout_metrics))

    @property
    def config(self) -> Config:
        """The config in force."""
        return self.access.config

    def use(self, config: Config, token: str | None) -> None:
        """Serve `config`, with `token` as the admin token (None: changes are refused)."""
        self.access.use(config, token)

    def build_app(self) -> web.Application:
        """The admin aiohttp application."""
        read = self.access.read
        app = web.Application(client_max_size=64 * 1024, middlewares=[self.access.host_guard])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", read(self.metrics))
        app.router.add_get("/status", read(self.status))
        app.router.add_get("/routes/{name}/verdicts", read(self.verdicts))
        app.router.add_get("/routes/{name}/timeline", read(self.timeline))
        app.router.add_get("/ui", status_page)
        app.router.add_get("/ui/{asset}", status_page_asset)
        self.actions.add_routes(app)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive and its event loop answers."""
        return json_answer({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """The config is loaded and the proxy listener accepts connections. A state store that
        cannot be reached is reported but leaves the process ready: it serves on the last known
        state."""
        store = "healthy" if self.controller.store_error is None else "unavailable"
        if self.ready.is_set():
            return json_answer({"status": "ready", "state_store": store})
        return json_answer({"status": "not ready", "state_store": store}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of every metric."""
        if self.host is not None:
            body = self.host.exposition()
        else:
            body = generate_latest(self.recorder.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        """Every route: state, share now, ramp, segments, last transition, request counts
        (`proxy.api.status`)."""
        document = status_document(
            self.parts,
            self.config,
            now=clock.now(),
            privileged=self.access.has_token(request),
            last_reload=self.last_reload,
            clock_error=self.clock_error(),
        )
        return json_answer(document)

    async def verdicts(self, request: web.Request) -> web.Response:
        """A route's latest verdicts, newest first, each with its inputs (sample sizes,
        estimates, bounds, thresholds), the consecutive failures and what followed."""
        name = request.match_info["name"]
        if name not in self.controller:
            return unknown_route(name)
        found = self.analyzer.verdicts(name)
        if found is None:
            return json_answer({"route": name, "analysis": False, "verdicts": []})
        return json_answer({"route": name, "analysis": True, "verdicts": found})

    async def timeline(self, request: web.Request) -> web.Response:
        """A route's last hour of analysis rounds, oldest first: each round's share, state and
        word, and per variant its requests, errors and latency quantile
        (`proxy.analysis.timeline`)."""
        name = request.match_info["name"]
        if name not in self.controller:
            return unknown_route(name)
        found = self.analyzer.timeline(name)
        if found is None:
            return json_answer({"route": name, "analysis": False, "points": []})
        return json_answer({"route": name, "analysis": True, **found})

    def _rollout_metrics(self) -> Iterable[GaugeMetricFamily]:
        now = clock.now()
        share = GaugeMetricFamily(
            "grayscale_candidate_share",
            "The candidate's share now (0..1), after pauses, overrides and rollbacks.",
            labels=("route",),
        )
        state = GaugeMetricFamily(
            "grayscale_rollout_state", "The rollout's state (one-hot).", labels=("route", "state")
        )
        for route in self.controller.routes():
            share.add_metric((route.name,), self.controller.share(route.name, now))
            current = self.controller.state(route.name, now)
            for option in State:
                state.add_metric((route.name, option.value), 1.0 if option is current else 0.0)
        holding = GaugeMetricFamily(
            "grayscale_analysis_holding",
            "1 while the analysis holds the ramp (too little data, or failing).",
            labels=("route",),
        )
        for name in self.analyzer.routes:
            holding.add_metric((name,), 1.0 if self.controller.holding(name) else 0.0)
        ejected = GaugeMetricFamily(
            "grayscale_candidate_ejected",
            "1 while the candidate is ejected after consecutive errors (its traffic on stable).",
            labels=("route",),
        )
        for route in self.controller.routes():
            breaker = self._breaker(route.name)
            if breaker is not None:
                ejected.add_metric((route.name,), 1.0 if breaker.ejected(now) else 0.0)
        healthy = GaugeMetricFamily(
            "grayscale_state_store_healthy",
            "1 when the rollout state store answers and its last write worked.",
        )
        healthy.add_metric((), 0.0 if self.controller.store_error else 1.0)
        info = GaugeMetricFamily(
            "grayscale_config_info", "The loaded config's hash.", labels=("hash",)
        )
        info.add_metric((self.config.digest,), 1.0)
        skew = GaugeMetricFamily(
            "grayscale_clock_offset_seconds",
            "How far this host's clock is ahead of the fleet's (Redis's); 0 without a fleet.",
        )
        skew.add_metric((), -clock.offset())
        return (share, state, holding, ejected, healthy, info, skew)
