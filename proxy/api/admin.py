"""The admin API: health, readiness, status, metrics, and token-protected rollout actions.

Invariants
- Every change needs the bearer token (compared in constant time); reads need it too when
  `admin.protect_reads` is on, as the config in force says at each request.
- Only requests whose Host is an IP address, `localhost` or one of `admin.allowed_hosts` are
  served (health and readiness excepted, for probes): a web page that rebinds its own name to
  127.0.0.1 cannot read the API from an operator's browser.
- What identifies users or tokens is shown only to token holders: rollout salts (with a bucket,
  a salt narrows a user id down) appear in `/status` only for a request with the token, and the
  audit actor is a keyed hash of the token, never a plain hash that could be checked offline.
- Nothing a client sends can forge an audit line: a `reason` is capped and its control
  characters escaped.
- Every answer is strict JSON: a number that is not finite (NaN, an infinity: not JSON, and
  refused by strict parsers and browsers) is written `null`.
- No client holds the listener: a connection whose request head (or next request) has not come
  within `admin.head_timeout` is closed, a body not whole within `admin.body_timeout` is
  answered `408` and its connection closed, and beyond `admin.max_connections` open connections
  a new one is answered `503` and closed at once, so a slow or hostile client can neither hold
  the API nor take the process's file descriptors from the data plane.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from proxy.analysis.loop import Analyzer
from proxy.analysis.outcome_reports import InvalidBatch, OutcomeBook, json_number, parse_batch
from proxy.api.ui import status_page, status_page_asset
from proxy.config.model import Config, Ramp, Route
from proxy.config.reload import ReloadResult
from proxy.dataplane.ejection import Breaker
from proxy.rollout.controller import RolloutController
from proxy.rollout.machine import Action, IllegalTransition, State, Transition, forced_variant
from proxy.rollout.store import StateUnavailable
from proxy.routing import current_share
from proxy.runtime import clock
from proxy.telemetry.host_metrics import HostMetrics
from proxy.telemetry.metrics import CODE_CLASSES, CallbackCollector, Recorder

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("grayscale.admin")


MAX_REASON = 500  # characters of a `reason`
MAX_OUTCOMES_BODY = 1024 * 1024  # bytes of one POST /outcomes
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})  # for probes, whatever Host they send
_REFUSAL_LOG_INTERVAL = 60.0  # seconds between warnings that connections are being refused
_strict_dumps = partial(json.dumps, allow_nan=False)


def token_id(token: str, key: bytes) -> str:
    """How a token appears in audit lines: a keyed hash (`key` is a secret of the process or
    the deployment), so that it cannot be checked against guessed tokens."""
    return "token:" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:12]


def printable(text: str) -> str:
    """`text` with control characters (newlines included) escaped, so that it stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class _QuietBadRequests(logging.Filter):
    """aiohttp logs a malformed request (an oversized header, say) at ERROR with a traceback that
    echoes what the client sent: a client's mistake, and maybe its secrets. Told in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "admin request refused (%d): malformed", (error.code,)
            record.exc_info = record.exc_text = None
        return True


def _quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(_QuietBadRequests())


def host_allowed(host: str, names: tuple[str, ...]) -> bool:
    """Whether a request's Host (with or without a port) is an IP address, `localhost`, or one
    of `names` (lower case)."""
    if host.startswith("["):
        return "]" in host  # an IPv6 address
    name = host.rpartition(":")[0] if ":" in host else host
    name = name.lower().rstrip(".")
    if name == "localhost" or name in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def finite(data: Any) -> Any:
    """`data` (JSON-ready dicts, lists and scalars) with every float that is not finite
    replaced by None: NaN and infinities are not JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A strict JSON answer: non-finite numbers are written `null` (`finite`), and anything
    the encoder would still write as NaN or Infinity raises instead of leaving the API."""
    return web.json_response(finite(data), status=status, dumps=_strict_dumps)


def error_response(status: int, error: str, message: str, **fields: str) -> web.Response:
    """A JSON error answer: ``{"error": ..., "message": ..., **fields}``."""
    return json_answer({"error": error, "message": message, **fields}, status=status)


class _BodyLost(Exception):
    """A request body that was not whole within `admin.body_timeout`, or whose client went
    away before sending it all."""


async def _cut(request: web.Request) -> web.Response:
    """Answer `408` to a request whose body stopped arriving, and close its connection at once
    (rather than wait, as aiohttp would, for the rest of a body that is not coming). A client
    that is gone gets nothing, and leaves no traceback."""
    answer = error_response(408, "request_timeout", "the request body stopped arriving")
    answer.force_close()
    try:
        await answer.prepare(request)
        await answer.write_eof()
    except ConnectionError:
        pass  # (aiohttp sees the connection closed, and lets the answer go)
    request.protocol.force_close()  # (what was written is still sent before the close)
    return answer


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
        book: OutcomeBook,
        host: HostMetrics | None = None,
    ):
        """With `host` (one of several workers), `/metrics` and the counts in `/status` are
        those of every worker on the host."""
        self.host = host
        self.controller = controller
        self.recorder = recorder
        self.analyzer = analyzer
        self.ready = ready
        self._reload = reload
        self._breaker = breaker
        self._shadows = shadows
        self._actor_key = actor_key
        self.book = book
        self.last_reload: ReloadResult | None = None
        self.clock_error: Callable[[], str | None] = lambda: None  # (the fleet's, if any)
        self.use(config, token)
        recorder.registry.register(CallbackCollector(self._rollout_metrics))

    def use(self, config: Config, token: str | None) -> None:
        """Serve `config`, with `token` as the admin token (None: changes are refused)."""
        self.config = config
        self._token = token.encode() if token else None
        self._actor = token_id(token, self._actor_key) if token else ""
        outcomes_token = os.environ.get(config.outcomes.token_env, "")
        self._outcomes_token = outcomes_token.encode() if outcomes_token else None

    # --- access ------------------------------------------------------------------------------

    def _has_token(self, request: web.Request) -> bool:
        return self._token is not None and self._check_token(request) is None

    def _check_token(self, request: web.Request) -> web.Response | None:
        """None when the request carries the admin token; else the 401/403 answer."""
        if self._token is None:
            return error_response(
                403,
                "admin_token_not_configured",
                f"set ${self.config.admin.token_env} to enable this endpoint",
            )
        given = _bearer(request)
        if given is None:
            answer = error_response(401, "unauthorized", "send Authorization: Bearer <token>")
            answer.headers["WWW-Authenticate"] = 'Bearer realm="grayscale-admin"'
            return answer
        if not hmac.compare_digest(given, self._token):
            return error_response(403, "forbidden", "the admin token is wrong")
        return None

    def _check_outcomes_token(self, request: web.Request) -> web.Response | None:
        """None when the request carries the outcomes token (or the admin token)."""
        given = _bearer(request)
        if given is None:
            answer = error_response(401, "unauthorized", "send Authorization: Bearer <token>")
            answer.headers["WWW-Authenticate"] = 'Bearer realm="grayscale-outcomes"'
            return answer
        for token in (self._outcomes_token, self._token):
            if token is not None and hmac.compare_digest(given, token):
                return None
        if self._outcomes_token is None and self._token is None:
            return error_response(
                403,
                "outcomes_token_not_configured",
                f"set ${self.config.outcomes.token_env} to take outcomes",
            )
        return error_response(403, "forbidden", "the outcomes token is wrong")

    def _protected(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            return self._check_token(request) or await handler(request)

        return guarded

    def _read(self, handler: Handler) -> Handler:
        async def read(request: web.Request) -> web.StreamResponse:
            if self.config.admin.protect_reads:  # (the config in force: a reload may change it)
                return self._check_token(request) or await handler(request)
            return await handler(request)

        return read

    @web.middleware
    async def _host_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS or host_allowed(
            request.host, self.config.admin.allowed_hosts
        ):
            return await handler(request)
        return error_response(
            403,
            "host_not_allowed",
            f"this API answers to IP addresses, localhost and admin.allowed_hosts, "
            f"not to {printable(request.host)[:100]!r}",
        )

    # --- reads -------------------------------------------------------------------------------

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
        """Every route: state, share now, ramp, segments, last transition, request counts."""
        now = clock.now()
        privileged = self._has_token(request)
        routes = [
            self.route_status(route, now, privileged=privileged)
            for route in self.controller.routes()
        ]
        if self.host is not None:
            families = self.host.families()
            for entry in routes:
                entry["requests"] = self.host.counts(families, entry["name"])
                entry["error_rate"] = {
                    variant: _error_rate(by_class)
                    for variant, by_class in entry["requests"].items()
                }
        config = {
            "hash": self.config.digest,
            "source": self.config.source,
            "last_reload": None if self.last_reload is None else self.last_reload.to_json(),
        }
        state = {
            "backend": self.config.state.backend.value,
            "healthy": self.controller.store_error is None,
            "error": self.controller.store_error,
            "unreadable_at_start": self.controller.load_error,
            "clock_offset_seconds": round(-clock.offset(), 6),
            "clock_error": self.clock_error(),
        }
        answer = {"config": config, "state": state, "routes": routes}
        if self.host is not None:
            host = self.host
            answer["worker"] = {"index": host.index, "of": host.count, "pid": os.getpid()}
        return json_answer(answer)

    async def verdicts(self, request: web.Request) -> web.Response:
        """A route's latest verdicts, newest first, each with its inputs (sample sizes,
        estimates, bounds, thresholds), the consecutive failures and what followed."""
        name = request.match_info["name"]
        if name not in self.controller:
            return error_response(404, "unknown_route", f"no route named {printable(name)[:100]!r}")
        found = self.analyzer.verdicts(name)
        if found is None:
            return json_answer({"route": name, "analysis": False, "verdicts": []})
        return json_answer({"route": name, "analysis": True, "verdicts": found})

    async def outcomes(self, request: web.Request) -> web.Response:
        """Take outcomes the application reports: one or a list of `{request_id, name, value}`;
        200 with how many were taken and why the others were not, 422 naming bad items."""
        denied = self._check_outcomes_token(request)
        if denied is not None:
            return denied
        try:
            body = await _bounded_body(request, MAX_OUTCOMES_BODY, self.config.admin.body_timeout)
        except _BodyLost:
            return await _cut(request)
        if body is None:
            return error_response(
                413, "body_too_large", f"at most {MAX_OUTCOMES_BODY} bytes of outcomes at once"
            )
        try:
            # (a long integer is read as a float and refused as a value, not as a 500)
            document = json.loads(body, parse_int=json_number)
        except (ValueError, RecursionError):
            return error_response(400, "invalid_json", "the body is not JSON")
        try:
            reports = parse_batch(document, self.config.outcomes.max_batch)
            results = self.book.take(reports, time.time())
        except InvalidBatch as exc:
            answer = {"error": "invalid_outcomes", "message": str(exc), "errors": exc.errors[:20]}
            return json_answer(answer, status=422)
        self.recorder.count_not_taken(results)
        return json_answer(results)

    async def reload(self, request: web.Request) -> web.Response:
        """Reload the config file now: 200 with the outcome, 422 with the errors if invalid."""
        result = await self._reload("api")
        return json_answer(result.to_json(), status=422 if result.result == "invalid" else 200)

    def route_status(self, route: Route, now: float, *, privileged: bool) -> dict[str, Any]:
        """The `/status` entry of one route; its salt only for a token holder (`privileged`)."""
        name = route.name
        rollout = self.controller.rollout(name)
        control = self.controller.control(name, now)
        forced = forced_variant(rollout)
        segments: list[dict[str, Any]] = []
        for segment in route.segments:
            entry: dict[str, Any] = {"name": segment.name}
            if segment.variant is not None:
                entry["variant"] = segment.variant.value
            if forced is not None:
                entry["share"] = 1.0 if forced.value == "candidate" else 0.0
            elif segment.ramp is not None:
                entry["share"] = current_share(segment.ramp, control.started_at, control.clock)
            segments.append(entry)
        counts = self.recorder.counts(name)
        breaker = self._breaker(name)
        return {
            "name": name,
            "path_prefix": route.path_prefix,
            "state": self.controller.state(name, now).value,
            "share": self.controller.share(name, now),
            "share_override": rollout.share_override,
            "stable": route.stable.url,
            "candidate": route.candidate.url,
            "rollout": {
                "started_at": rollout.started_at,
                "run": rollout.run,
                "held_seconds": rollout.held
                + (now - rollout.frozen_at if rollout.frozen_at else 0),
                **({"salt": route.cohort.salt} if privileged else {}),
            },
            "ramp": {
                **_ramp(route.ramp),
                "reaches_max_at": None
                if forced is not None or rollout.share_override is not None
                else _reaches_max_at(route.ramp, control.started_at, control.clock, now),
            },
            "segments": segments,
            "last_transition": _transition(rollout.last),
            "history": [_transition(t) for t in reversed(rollout.history)],
            "requests": counts,
            "error_rate": {variant: _error_rate(by_class) for variant, by_class in counts.items()},
            "analysis": self.analyzer.status(route),
            "ejection": None if breaker is None else breaker.status(now),
            "shadow": self._shadows(route),
        }

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

    # --- actions -----------------------------------------------------------------------------

    def _action(self, action: Action) -> Handler:
        async def act(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if name not in self.controller:
                return error_response(404, "unknown_route", f"no route named {name!r}")
            try:
                body, problem = await _json_body(request, self.config.admin.body_timeout)
            except _BodyLost:
                return await _cut(request)
            if problem is not None:
                return problem
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                return error_response(400, "bad_request", "'reason' must be a string")
            if reason is not None and len(reason) > MAX_REASON:
                return error_response(
                    400, "bad_request", f"'reason' must be at most {MAX_REASON} characters"
                )
            if reason is not None:
                reason = printable(reason)
            share: float | None = None
            if action is Action.SET_SHARE:
                given = body.get("share")
                if (
                    isinstance(given, bool)
                    or not isinstance(given, int | float)
                    or not 0.0 <= given <= 1.0
                ):
                    return error_response(400, "bad_request", "'share' must be a number in [0, 1]")
                share = float(given)
            keep_share = body.get("keep_share", False)
            if not isinstance(keep_share, bool) or (keep_share and action is not Action.RESUME):
                return error_response(
                    400, "bad_request", "'keep_share' must be true or false, and only on resume"
                )
            try:
                outcome = await self.controller.act(
                    name,
                    action,
                    clock.now(),
                    actor=self._actor,
                    reason=reason,
                    share=share,
                    keep_share=keep_share,
                )
            except IllegalTransition as exc:
                return error_response(
                    409, "illegal_transition", str(exc), route=name, state=exc.state.value
                )
            except StateUnavailable as exc:
                return error_response(
                    503, "state_unavailable", f"{exc}; nothing was changed: try again", route=name
                )
            result = {
                "route": name,
                **(_transition(outcome.transition) or {}),
                "share": self.controller.share(name, clock.now()),
                "persisted": outcome.persisted,
            }
            if not outcome.persisted:
                result["error"] = "state_not_persisted"
                result["message"] = f"applied in this process only: {outcome.error}"
            return json_answer(result, status=200 if outcome.persisted else 500)

        return self._protected(act)

    def build_app(self) -> web.Application:
        """The admin aiohttp application."""
        _quiet_bad_requests()
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._host_guard])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self._read(self.metrics))
        app.router.add_get("/status", self._read(self.status))
        app.router.add_get("/routes/{name}/verdicts", self._read(self.verdicts))
        app.router.add_get("/ui", status_page)
        app.router.add_get("/ui/{asset}", status_page_asset)
        for path, action in (
            ("pause", Action.PAUSE),
            ("resume", Action.RESUME),
            ("promote", Action.PROMOTE),
            ("rollback", Action.ROLLBACK),
            ("share", Action.SET_SHARE),
        ):
            app.router.add_post(f"/routes/{{name}}/{path}", self._action(action))
        app.router.add_post("/reload", self._protected(self.reload))
        app.router.add_post("/outcomes", self.outcomes)
        return app


class _Connection(web.RequestHandler):
    """One admin connection, counted among the listener's open ones until it is lost."""

    def __init__(self, open_connections: set[_Connection], manager: web.Server, **options: Any):
        super().__init__(manager, **options)
        self._open = open_connections

    def connection_lost(self, exc: BaseException | None) -> None:
        self._open.discard(self)
        super().connection_lost(exc)


_BUSY_BODY = _strict_dumps(
    {"error": "too_many_connections", "message": "the admin API holds admin.max_connections"}
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Refused(asyncio.Protocol):
    """A connection beyond `admin.max_connections`: told `503` and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # (uvloop's are not its subclasses)
        stream.write(_BUSY)
        stream.close()


class AdminListener:
    """The admin API's listening socket, with the limits of `admin` in the config in force
    (read as each connection opens, so a reload applies to new connections): the head and
    idle timeout (aiohttp's keep-alive timeout, which closes a connection still waiting for a
    whole request head), the body timeout (handlers read bodies within it; a body no handler
    reads is drained for at most as long after the answer), and the cap on open connections."""

    def __init__(self, admin: Admin):
        self._admin = admin
        self._runner = web.AppRunner(admin.build_app(), access_log=None, shutdown_timeout=5.0)
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._refused = 0  # connections refused since the last warning
        self._warned_at = -math.inf

    @property
    def open_connections(self) -> int:
        """How many connections are open (refused ones aside)."""
        return len(self._open)

    async def start(self, host: str, port: int, *, reuse_port: bool) -> tuple[str, int]:
        """Listen on `host`:`port`; the address bound (a port 0 is chosen by the system)."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, host, port, reuse_address=True, reuse_port=reuse_port or None
        )
        found = self._server.sockets[0].getsockname()
        return str(found[0]), int(found[1])

    async def stop(self) -> None:
        """Stop accepting, then let the requests in flight finish (for at most 5 s)."""
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()  # (which closes the connections)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self) -> asyncio.BaseProtocol:
        limits = self._admin.config.admin
        if len(self._open) >= limits.max_connections:
            self._note_refusal(limits.max_connections)
            return _Refused()
        manager = self._runner.server
        assert manager is not None  # (set up before the socket listens)
        connection = _Connection(
            self._open,
            manager,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=limits.head_timeout,
            lingering_time=limits.body_timeout,
            access_log=None,
        )
        self._open.add(connection)
        return connection

    def _note_refusal(self, cap: int) -> None:
        """Warn that connections are refused, at most once a minute, with how many."""
        self._refused += 1
        now = time.monotonic()
        if now - self._warned_at >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "the admin API holds admin.max_connections (%d): %d connection(s) refused",
                cap,
                self._refused,
            )
            self._warned_at, self._refused = now, 0


def _bearer(request: web.Request) -> bytes | None:
    """The bearer token a request carries, as the bytes received."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    # (bytes that are not UTF-8 come as surrogate escapes: compared as the bytes received)
    return given.strip().encode("utf-8", "surrogateescape")


async def _bounded_body(request: web.Request, limit: int, within: float) -> bytes | None:
    """The whole body, or None if it is longer than `limit` bytes. Raises `_BodyLost` when it
    is not whole within `within` seconds, or the client went away."""
    if (request.content_length or 0) > limit:
        return None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(within):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except (TimeoutError, ConnectionError):
        raise _BodyLost from None
    return b"".join(chunks)


async def _json_body(
    request: web.Request, within: float
) -> tuple[dict[str, Any], web.Response | None]:
    """The request's JSON object (empty when there is no body), or a 400 answer. Raises
    `_BodyLost` when the body is not whole within `within` seconds, or the client went away."""
    if not request.can_read_body:
        return {}, None
    try:
        async with asyncio.timeout(within):
            text = await request.text()  # (at most the application's client_max_size)
        body = json.loads(text)
    except (TimeoutError, ConnectionError):
        raise _BodyLost from None
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than Python goes)
        return {}, error_response(400, "bad_request", "the body must be a JSON object")
    if not isinstance(body, dict):
        return {}, error_response(400, "bad_request", "the body must be a JSON object")
    return body, None


def _ramp(ramp: Ramp) -> dict[str, Any]:
    return {
        "start": ramp.start,
        "base": ramp.base,
        "slope": ramp.slope,
        "per_seconds": ramp.per,
        "max": ramp.max,
    }


def _reaches_max_at(ramp: Ramp, started_at: float, clock: float, now: float) -> float | None:
    """When (wall time) the ramp reaches its max if it is not held or paused again; None for a
    ramp that does not grow."""
    if ramp.slope <= 0 or ramp.max <= ramp.base:
        return None
    start = ramp.start if ramp.start is not None else started_at
    return now + (start + ramp.per * (ramp.max - ramp.base) / ramp.slope - clock)


def _transition(transition: Transition | None) -> dict[str, Any] | None:
    if transition is None:
        return None
    return {
        "action": transition.action.value,
        "at": transition.at,
        "actor": transition.actor,
        "before": transition.before.value,
        "after": transition.after.value,
        "reason": transition.reason,
        "share": transition.share,
    }


def _error_rate(by_class: dict[str, int]) -> float | None:
    total = sum(by_class[c] for c in CODE_CLASSES)
    return (by_class["5xx"] + by_class["error"]) / total if total else None
